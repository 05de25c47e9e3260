//! After create: stop, delete, list, the create-time env, keepalive, the idle
//! reaper, and adopting what a previous runner start left.

use super::*;

impl DockerBackend {
    /// Stops the container gracefully (SIGTERM, SIGKILL after 10 s), keeping its
    /// workspace. Stopping a stopped sandbox is fine; an unknown one is an error.
    pub async fn stop(&self, id: &SandboxId) -> Result<()> {
        self.stop_for(id, "").await
    }

    /// Stops the sandbox, remembering `reason` (empty: a user's request) for
    /// [`list`](Self::list).
    async fn stop_for(&self, id: &SandboxId, reason: &str) -> Result<()> {
        if self.sandbox_run_dir(id).is_dir() {
            self.mark(id, STOPPED_MARKER, reason.as_bytes())?;
        }
        match self
            .docker
            .stop_container(
                &container_name(id),
                Some(StopContainerOptions {
                    t: Some(STOP_GRACE_SECS),
                    ..Default::default()
                }),
            )
            .await
        {
            Ok(()) => {}
            Err(e) if is_not_found(&e) => bail!("unknown sandbox {id}"),
            // 304: already stopped.
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 304, ..
            }) => {}
            Err(e) => return Err(e).context("stopping the container"),
        }
        let _ = fs::remove_file(self.sandbox_run_dir(id).join(AGENT_SOCKET));
        // A stopped sandbox holds no mount and no loop device.
        self.unmount_disk(&self.objects_slot(id)).await?;
        tracing::info!(sandbox = %id, "sandbox stopped");
        Ok(())
    }

    /// Stops the sandbox at once (SIGKILL, no grace), remembering `reason`.
    pub(super) async fn kill_for(&self, id: &SandboxId, reason: &str) -> Result<()> {
        if self.sandbox_run_dir(id).is_dir() {
            self.mark(id, STOPPED_MARKER, reason.as_bytes())?;
        }
        let kill = self
            .docker
            .kill_container(
                &container_name(id),
                Some(bollard::query_parameters::KillContainerOptions {
                    signal: "SIGKILL".into(),
                }),
            )
            .await;
        if let Err(e) = kill {
            tracing::debug!(sandbox = %id, error = %e, "killing the container");
        }
        self.stop_for(id, reason).await
    }

    /// Removes the container, its disk, network and run directory.
    pub async fn delete(&self, id: &SandboxId) -> Result<()> {
        let dir = self.sandbox_run_dir(id);
        let known = dir.is_dir()
            || self
                .docker
                .inspect_container(&container_name(id), None)
                .await
                .is_ok();
        if !known {
            bail!("unknown sandbox {id}");
        }
        // The marker makes a delete that a crash interrupts finish at the next start.
        self.mark(id, DELETING_MARKER, b"")?;
        self.remove_all(id).await?;
        tracing::info!(sandbox = %id, "sandbox deleted");
        Ok(())
    }

    /// Removes everything of `id` (a sandbox, or a pool member's or spare's slot);
    /// a sandbox claimed from the pool has its member's objects, one made on a
    /// spare the spare's network (and a disk keyed by the spare's slot).
    pub(super) async fn remove_all(&self, id: &SandboxId) -> Result<()> {
        let slot = self.slot_of(id);
        let objects = self.objects_slot(id);
        // A claim interrupted before the rename left the member's name.
        for name in [container_name(id), container_name(&slot)] {
            match self
                .docker
                .remove_container(
                    &name,
                    Some(RemoveContainerOptions {
                        force: true,
                        v: true,
                        ..Default::default()
                    }),
                )
                .await
            {
                Ok(()) => {}
                Err(e) if is_not_found(&e) => {}
                Err(e) => return Err(e).context("removing the container"),
            }
        }
        self.remove_disk(&objects).await?;
        // A sandbox made before disks had a workspace volume.
        match self
            .docker
            .remove_volume(
                &volume_name(&objects),
                Some(RemoveVolumeOptions { force: true }),
            )
            .await
        {
            Ok(()) => {}
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(e).context("removing the workspace volume"),
        }
        match self.docker.remove_network(&network_name(&objects)).await {
            Ok(()) => {}
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(e).context("removing the network"),
        }
        netpolicy::remove(&objects).await;
        // remove_dir_all does not follow links, whatever the container left there.
        // The sandbox's own markers (its slot among them) go last.
        let dirs = [
            self.run_dir.join(slot.as_str()),
            self.private_dir(&slot),
            self.private_dir(&objects),
            self.private_dir(id),
        ];
        for dir in dirs {
            match fs::remove_dir_all(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).with_context(|| format!("removing {}", dir.display())),
            }
        }
        Ok(())
    }

    /// Docker's filter for the objects this runner made.
    fn runner_filter(&self) -> HashMap<String, Vec<String>> {
        HashMap::from([(
            "label".to_owned(),
            vec![format!("{LABEL_RUNNER}={}", self.runner)],
        )])
    }

    /// This runner's containers: all of them, or only the running ones.
    pub(super) async fn containers(
        &self,
        all: bool,
    ) -> Result<Vec<bollard::models::ContainerSummary>> {
        self.docker
            .list_containers(Some(ListContainersOptions {
                all,
                filters: Some(self.runner_filter()),
                ..Default::default()
            }))
            .await
            .context("listing containers")
    }

    /// Every sandbox container of this runner, running or not. One that stopped on
    /// its own says why: `oom` (the kernel killed its agent) or `exited`.
    pub async fn list(&self) -> Result<Vec<SandboxStatus>> {
        let containers = self.containers(true).await?;
        let mut out = Vec::new();
        for c in containers {
            let Some(id) = self.sandbox_of(c.labels.as_ref()) else {
                continue;
            };
            if self.marked(&id, DELETING_MARKER) {
                continue;
            }
            // Paused only for a snapshot's capture (see `snapshot`): still running.
            let running = matches!(
                c.state,
                Some(
                    bollard::models::ContainerSummaryStateEnum::RUNNING
                        | bollard::models::ContainerSummaryStateEnum::PAUSED
                )
            );
            let stopped_reason = if running {
                None
            } else {
                self.stopped_reason(&id).await
            };
            out.push(SandboxStatus {
                sandbox: id,
                running,
                stopped_reason,
            });
        }
        out.sort_by(|a, b| a.sandbox.cmp(&b.sandbox));
        Ok(out)
    }

    async fn stopped_reason(&self, id: &SandboxId) -> Option<String> {
        let state = self
            .docker
            .inspect_container(&container_name(id), None)
            .await
            .ok()?
            .state?;
        if state.oom_killed == Some(true) {
            return Some("oom".into());
        }
        if let Ok(reason) = fs::read_to_string(self.private_dir(id).join(STOPPED_MARKER)) {
            return (!reason.is_empty()).then_some(reason);
        }
        (state.started_at.is_some()).then(|| "exited".into())
    }

    /// The environment given at create: the entries of the container's config that
    /// `WARREN_PASS_ENV` names (Docker keeps the config across stops and runner
    /// restarts).
    pub async fn env(&self, id: &SandboxId) -> Result<BTreeMap<String, Secret>> {
        let info = match self
            .docker
            .inspect_container(&container_name(id), None)
            .await
        {
            Ok(info) => info,
            Err(e) if is_not_found(&e) => bail!("unknown sandbox {id}"),
            Err(e) => return Err(e).context("asking the Docker engine"),
        };
        let config = info.config.unwrap_or_default();
        let ours = config
            .labels
            .as_ref()
            .and_then(|l| l.get(LABEL_RUNNER))
            .is_some_and(|r| *r == self.runner);
        if !ours {
            bail!("unknown sandbox {id}");
        }
        if let Some(env) = self.claimed_env(id)? {
            return Ok(env);
        }
        Ok(passed_env(&config.env.unwrap_or_default()))
    }

    /// Counts as activity (the API's keepalive).
    pub async fn keepalive(&self, id: &SandboxId) -> Result<()> {
        let dir = self.sandbox_run_dir(id);
        if !dir.is_dir() {
            bail!("unknown sandbox {id}");
        }
        write_file(&dir.join("activity"), b"")
    }

    /// Stops every running sandbox that has been idle for longer than its idle
    /// timeout: no session data, nothing running (the agent's activity file) and no
    /// keepalive. Returns the sandboxes it stopped.
    pub async fn reap_idle(&self) -> Result<Vec<SandboxId>> {
        let running = self.containers(false).await?;
        let mut stopped = Vec::new();
        for c in running {
            let Some(id) = self.sandbox_of(c.labels.as_ref()) else {
                continue;
            };
            let labels = c.labels.unwrap_or_default();
            let timeout = labels
                .get(LABEL_IDLE_TIMEOUT)
                .and_then(|v| v.parse::<u64>().ok())
                .map_or(self.defaults.idle_timeout, Duration::from_secs);
            if timeout.is_zero() {
                continue;
            }
            // No activity file yet: the agent is starting; its first tick writes one.
            let Ok(idle_for) = hostile::modified(&self.sandbox_run_dir(&id), "activity")
                .map(|t| t.elapsed().unwrap_or_default())
            else {
                continue;
            };
            if idle_for > timeout {
                tracing::info!(sandbox = %id, ?idle_for, "stopping an idle sandbox");
                self.stop_for(&id, "idle").await?;
                stopped.push(id);
            }
        }
        Ok(stopped)
    }

    /// At runner start: removes what belongs to deleted sandboxes (a delete the
    /// runner did not finish, or objects whose run directory is gone) and the pool
    /// members nobody claimed (the pool is filled afresh), and reports the running
    /// sandboxes it adopts.
    pub async fn adopt(&self) -> Result<Vec<SandboxId>> {
        let filter = self.runner_filter();
        let mut labelled: Vec<Option<HashMap<String, String>>> = Vec::new();
        let containers = self.containers(true).await?;
        labelled.extend(containers.iter().map(|c| c.labels.clone()));
        let volumes = self
            .docker
            .list_volumes(Some(ListVolumesOptions {
                filters: Some(filter.clone()),
            }))
            .await?;
        labelled.extend(
            volumes
                .volumes
                .unwrap_or_default()
                .into_iter()
                .map(|v| Some(v.labels)),
        );
        let networks = self
            .docker
            .list_networks(Some(ListNetworksOptions {
                filters: Some(filter),
            }))
            .await?;
        labelled.extend(networks.into_iter().map(|n| n.labels));
        let members: std::collections::BTreeSet<SandboxId> = labelled
            .iter()
            .filter_map(|l| self.unclaimed_member(l.as_ref()))
            .collect();
        for slot in &members {
            tracing::info!(slot = %slot, "removing an unclaimed pool member");
            if let Err(e) = self.remove_all(slot).await {
                tracing::warn!(slot = %slot, error = %format!("{e:#}"), "could not remove");
            }
        }
        let ids: std::collections::BTreeSet<SandboxId> = labelled
            .iter()
            .filter_map(|l| self.sandbox_of(l.as_ref()))
            .collect();
        let mut adopted = Vec::new();
        // The slots whose disks stay, and of those the ones to mount.
        let mut live = std::collections::BTreeSet::new();
        let mut mounted = std::collections::BTreeSet::new();
        for id in ids {
            let dir = self.sandbox_run_dir(&id);
            if !dir.is_dir() || self.marked(&id, DELETING_MARKER) {
                tracing::info!(sandbox = %id, "removing the remains of a deleted sandbox");
                if let Err(e) = self.remove_all(&id).await {
                    tracing::warn!(sandbox = %id, error = %format!("{e:#}"), "could not remove");
                }
                continue;
            }
            let running = containers.iter().any(|c| {
                self.sandbox_of(c.labels.as_ref()).as_ref() == Some(&id)
                    && c.state == Some(bollard::models::ContainerSummaryStateEnum::RUNNING)
            });
            live.insert(self.objects_slot(&id));
            if running {
                mounted.insert(self.objects_slot(&id));
                tracing::info!(sandbox = %id, "adopted a running sandbox");
                adopted.push(id);
            }
        }
        self.reconcile_disks(&mounted, &live).await;
        Ok(adopted)
    }
}

/// The `NAME=value` entries of a container's environment that its
/// `WARREN_PASS_ENV` list names: the create request's env, without Warren's own.
fn passed_env(entries: &[String]) -> BTreeMap<String, Secret> {
    let pairs = entries.iter().filter_map(|e| e.split_once('='));
    let Some((_, names)) = pairs.clone().find(|(k, _)| *k == "WARREN_PASS_ENV") else {
        return BTreeMap::new();
    };
    let names: Vec<&str> = names.split(',').filter(|n| !n.is_empty()).collect();
    pairs
        .filter(|(k, _)| names.contains(k))
        .map(|(k, v)| (k.to_owned(), Secret::new(v)))
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn passed_env_is_the_named_entries_only() {
        let entries: Vec<String> = [
            "WARREN_TOKEN_KEY=k",
            "WARREN_PASS_ENV=GITHUB_TOKEN,EMPTY,URL",
            "GITHUB_TOKEN=ghp_x",
            "EMPTY=",
            "URL=a=b",
            "PATH=/bin",
        ]
        .map(String::from)
        .into();
        let env = passed_env(&entries);
        assert_eq!(
            env.into_iter()
                .map(|(k, v)| (k, v.expose().to_owned()))
                .collect::<Vec<_>>(),
            [("EMPTY", ""), ("GITHUB_TOKEN", "ghp_x"), ("URL", "a=b")]
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
        );
        assert!(passed_env(&["A=b".to_owned()]).is_empty());
    }
}
