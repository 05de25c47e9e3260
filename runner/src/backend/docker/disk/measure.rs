//! The measured half of a sandbox's disk quota: every [`WATCH_EVERY`] what its disk
//! holds, its writable layer and run directory (walked on the host, links not
//! followed) and the deleted files its processes hold, against its quota; a sandbox
//! over it, or that cannot be measured, is stopped with reason [`DISK_QUOTA`].

use super::*;

/// Bytes in use on the file system at `path` (`statvfs`).
fn used_bytes(path: &Path) -> io::Result<u64> {
    let (total, free, _) = statvfs(path)?;
    Ok(total.saturating_sub(free))
}

/// What the trees at `roots` take on disk, without following links: each entry's
/// blocks, at least [`MIN_ENTRY`]. Stops counting once past `limit`. Entries that
/// vanish during the walk are skipped; any other error is returned (the caller
/// counts an unmeasurable tree as over its quota).
pub(super) fn tree_usage(roots: &[PathBuf], limit: u64) -> io::Result<u64> {
    let mut total = 0u64;
    let mut dirs: Vec<PathBuf> = Vec::new();
    for root in roots {
        match fs::symlink_metadata(root) {
            Ok(m) if m.is_dir() => dirs.push(root.clone()),
            Ok(m) => total = total.saturating_add(entry_size(&m)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    while let Some(dir) = dirs.pop() {
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        total = total.saturating_add(MIN_ENTRY);
        for entry in entries {
            let entry = entry?;
            // DirEntry::metadata does not follow links.
            let meta = match entry.metadata() {
                Ok(m) => m,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            if meta.is_dir() {
                dirs.push(entry.path());
            } else {
                total = total.saturating_add(entry_size(&meta));
            }
            if total > limit {
                return Ok(total);
            }
        }
    }
    Ok(total)
}

fn entry_size(meta: &fs::Metadata) -> u64 {
    meta.blocks().saturating_mul(512).max(MIN_ENTRY)
}

/// Where a running container writes outside its disk, on the host.
#[derive(Clone, Debug)]
pub(in crate::backend::docker) struct Layer {
    /// Its writable layer.
    upper: PathBuf,
    /// The cgroup holding its processes.
    cgroup: PathBuf,
}

/// What a sandbox takes of the host's disk, counting until past `limit`: its disk
/// (what the file system at `mount` holds), its writable `layer` and `run`
/// directory, and the deleted files its processes still hold.
fn measure(layer: &Layer, mount: &Path, run: PathBuf, limit: u64) -> io::Result<u64> {
    let (disk, own_dev) = if is_mounted(mount) {
        (used_bytes(mount)?, Some(fs::metadata(mount)?.dev()))
    } else {
        (0, None)
    };
    let mut used = disk.saturating_add(tree_usage(
        &[layer.upper.clone(), run],
        limit.saturating_sub(disk),
    )?);
    if used <= limit {
        let held = held::deleted_held(&layer.cgroup, own_dev, limit.saturating_sub(used))?;
        if held > 0 {
            tracing::debug!(cgroup = %layer.cgroup.display(), held, "deleted files held open");
        }
        used = used.saturating_add(held);
    }
    Ok(used)
}

impl DockerBackend {
    /// Kills every running sandbox whose disk and writable layer together exceed
    /// its quota, stopped with reason [`DISK_QUOTA`]. Returns those it stopped.
    pub async fn enforce_disk_quotas(&self) -> Result<Vec<SandboxId>> {
        let running = self.containers(false).await?;
        // Forget the layers of containers that are gone.
        self.upper_dirs()
            .retain(|container, _| running.iter().any(|c| c.id.as_deref() == Some(container)));
        let mut stopped = Vec::new();
        for c in running {
            let Some(id) = self.sandbox_of(c.labels.as_ref()) else {
                continue;
            };
            let Some(quota) = c
                .labels
                .as_ref()
                .and_then(|l| l.get(LABEL_DISK_MB))
                .and_then(|v| v.parse::<u64>().ok())
            else {
                continue;
            };
            let limit = quota.saturating_mul(1 << 20);
            let Some(container) = c.id.clone() else {
                continue;
            };
            let mount = self.disk_mount(&self.objects_slot(&id));
            let run = self.sandbox_run_dir(&id);
            let measured = match self.layer(&container).await {
                Ok(layer) => {
                    tokio::task::spawn_blocking(move || measure(&layer, &mount, run, limit))
                        .await
                        .context("measuring a sandbox's disk")?
                }
                Err(e) => Err(e),
            };
            let over = match measured {
                Ok(used) if used <= limit => continue,
                Ok(used) => format!("{} MiB of {quota} MiB", used >> 20),
                // One that stopped meanwhile (its cgroup or process gone) is not
                // over anything.
                Err(_) if !self.still_running(&container).await => continue,
                // Fail closed: what cannot be measured may be anything.
                Err(e) => format!("its disk use cannot be measured ({e})"),
            };
            tracing::warn!(sandbox = %id, usage = %over, "over its disk quota: stopping it");
            // One sandbox that cannot be stopped must not shield the others.
            match self.kill_for(&id, DISK_QUOTA).await {
                Ok(()) => stopped.push(id),
                Err(e) => tracing::error!(
                    sandbox = %id,
                    error = %format!("{e:#}"),
                    "stopping a sandbox over its disk quota"
                ),
            }
        }
        Ok(stopped)
    }

    /// Where the container's writable layer and cgroup are on the host
    /// (remembered: neither changes while the container exists).
    async fn layer(&self, container: &str) -> io::Result<Layer> {
        if let Some(layer) = self.upper_dirs().get(container) {
            return Ok(layer.clone());
        }
        let unknown = |what: &str| io::Error::other(format!("its {what} is unknown"));
        let info = self
            .docker
            .inspect_container(container, None)
            .await
            .map_err(|e| io::Error::other(format!("inspecting its container: {e}")))?;
        let upper = info
            .graph_driver
            .as_ref()
            .and_then(|g| g.data.get("UpperDir"))
            .map(PathBuf::from)
            .ok_or_else(|| unknown("writable layer"))?;
        let pid = info
            .state
            .as_ref()
            .and_then(|s| s.pid)
            .filter(|p| *p > 0)
            .ok_or_else(|| unknown("first process"))?;
        let cgroup = held::cgroup_dir(pid)?.ok_or_else(|| unknown("cgroup"))?;
        let layer = Layer { upper, cgroup };
        self.upper_dirs()
            .insert(container.to_owned(), layer.clone());
        Ok(layer)
    }

    /// Whether the container still runs (an engine that cannot say: yes).
    async fn still_running(&self, container: &str) -> bool {
        match self.docker.inspect_container(container, None).await {
            Ok(info) => info.state.and_then(|s| s.running).unwrap_or(true),
            Err(e) => !is_not_found(&e),
        }
    }

    fn upper_dirs(&self) -> std::sync::MutexGuard<'_, HashMap<String, Layer>> {
        self.upper_dirs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn trees_are_measured_without_following_links() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("t");
        fs::create_dir_all(root.join("a/b")).unwrap();
        fs::write(root.join("a/b/f"), vec![1u8; 100_000]).unwrap();
        for i in 0..10 {
            fs::write(root.join(format!("e{i}")), b"").unwrap();
        }
        // A link to something big counts as a link.
        std::os::unix::fs::symlink("/usr", root.join("usr")).unwrap();
        let used = tree_usage(std::slice::from_ref(&root), u64::MAX).unwrap();
        assert!(used >= 100_000 + 11 * MIN_ENTRY, "{used}");
        assert!(used < 1 << 20, "{used}");
        // Past the limit the walk stops early.
        assert!(tree_usage(&[root], 10_000).unwrap() > 10_000);
        assert_eq!(tree_usage(&[dir.path().join("none")], 1).unwrap(), 0);
    }
}
