//! What a sandbox's container is: its labels, its limits, and the hardened
//! configuration it is created with (capabilities, mounts, the agent as its
//! entrypoint, the environment that tells the agent who it serves).

use super::*;

/// Capabilities the agent keeps: switching to the sandbox user (SETUID, SETGID),
/// giving it the workspace and the agent-forwarding socket (CHOWN), and signalling
/// its sessions (KILL). Sessions run as that user and so have none (CapEff 0).
const AGENT_CAPS: [&str; 4] = ["CHOWN", "SETUID", "SETGID", "KILL"];

/// What a new container is made of.
pub(super) struct NewContainer<'a> {
    pub(super) id: &'a SandboxId,
    pub(super) serves: Serves<'a>,
    pub(super) image: &'a str,
    pub(super) image_user: Option<&'a str>,
    /// Mounts for the volumes the image declares (on the sandbox's disk).
    pub(super) volumes: Vec<Mount>,
    pub(super) spec: &'a SandboxSpec,
    pub(super) network_mode: String,
    pub(super) labels: HashMap<String, String>,
}

impl DockerBackend {
    pub(super) fn labels(&self, id: &SandboxId) -> HashMap<String, String> {
        HashMap::from([
            (LABEL_SANDBOX.to_owned(), id.as_str().to_owned()),
            (LABEL_RUNNER.to_owned(), self.runner.clone()),
        ])
    }

    /// The memory (bytes), CPU (nano-CPUs) and pids limits of a sandbox of `spec`.
    pub(super) fn limits(&self, spec: &SandboxSpec) -> (i64, i64, i64) {
        let d = &self.defaults;
        let memory = i64::try_from(spec.memory_mb.unwrap_or(d.memory_mb))
            .unwrap_or(i64::MAX / (1 << 20))
            * (1 << 20);
        let nano_cpus = i64::from(spec.millicpus.unwrap_or(d.millicpus)) * 1_000_000;
        let pids = i64::from(spec.pids_limit.unwrap_or(d.pids_limit));
        (memory, nano_cpus, pids)
    }

    /// The workspace again at a devcontainer.json's `workspaceFolder` outside
    /// `/workspace` (the same directory of the sandbox's disk), so the repository is
    /// where its tools expect it.
    fn workdir_mount(&self, id: &SandboxId, spec: &SandboxSpec) -> Option<Mount> {
        let target = spec.workdir.as_deref()?;
        if target == WORKSPACE || target.starts_with(&format!("{WORKSPACE}/")) {
            return None;
        }
        let workspace = self
            .disk_mounts(&self.objects_slot(id))
            .into_iter()
            .find(|m| m.target.as_deref() == Some(WORKSPACE))?;
        Some(Mount {
            target: Some(target.to_owned()),
            ..workspace
        })
    }

    pub(super) fn container_config(&self, new: NewContainer<'_>) -> ContainerCreateBody {
        let NewContainer {
            id,
            serves,
            image,
            image_user,
            volumes,
            spec,
            network_mode,
            labels,
        } = new;
        let d = &self.defaults;
        let (memory, nano_cpus, pids) = self.limits(spec);
        let files = i64::from(d.open_files);
        let mut env = match serves {
            Serves::Sandbox { token_key } | Serves::Fork { token_key, .. } => vec![
                format!("WARREN_SANDBOX_ID={}", id.as_str()),
                format!("WARREN_TOKEN_KEY={token_key}"),
            ],
            Serves::Pool => vec![format!(
                "WARREN_IDENTITY_FILE={RUN_MOUNT}/{}",
                pool::IDENTITY
            )],
        };
        env.extend([
            format!("WARREN_AGENT_LISTEN=unix:{RUN_MOUNT}/agent.sock"),
            format!("WARREN_AGENT_HOST_KEY={RUN_MOUNT}/host_key"),
            format!("WARREN_AUTHORIZED_KEYS={RUN_MOUNT}/authorized_keys"),
            format!("WARREN_USER_FILE={RUN_MOUNT}/user"),
            format!("WARREN_ACTIVITY_FILE={RUN_MOUNT}/activity"),
            // A devcontainer.json's user wins over the image's `USER`.
            format!(
                "WARREN_SANDBOX_USER={}",
                spec.user.as_deref().or(image_user).unwrap_or("auto")
            ),
            format!(
                "WARREN_WORKDIR={}",
                spec.workdir.as_deref().unwrap_or(WORKSPACE)
            ),
            "WARREN_OWN_WORKDIR=true".to_owned(),
            // Reached only through the runner's encrypted tunnel.
            "WARREN_AGENT_ALLOW_UNENCRYPTED=true".to_owned(),
        ]);
        if let Some(ttl) = self.session_detached_ttl {
            env.push(format!("WARREN_SESSION_DETACHED_TTL_S={}", ttl.as_secs()));
        }
        if !spec.env.is_empty() {
            let names: Vec<&str> = spec.env.keys().map(String::as_str).collect();
            env.push(format!("WARREN_PASS_ENV={}", names.join(",")));
            env.extend(spec.env.iter().map(|(k, v)| format!("{k}={}", v.expose())));
        }
        let agent = self.agent_bin.display();
        let run = self.sandbox_run_dir(id);
        let host_config = HostConfig {
            binds: Some(vec![
                format!("{agent}:{AGENT_MOUNT}:ro"),
                format!("{agent}:{ASKPASS_MOUNT}:ro"),
                format!("{}:{RUN_MOUNT}:rw", run.display()),
            ]),
            // /workspace, /tmp, /var/tmp and the image's volumes: directories of
            // the sandbox's disk.
            mounts: Some(
                self.disk_mounts(&self.objects_slot(id))
                    .into_iter()
                    .chain(self.workdir_mount(id, spec))
                    .chain(volumes)
                    .collect(),
            ),
            network_mode: Some(network_mode),
            privileged: Some(false),
            cap_drop: Some(vec!["ALL".into()]),
            cap_add: Some(AGENT_CAPS.iter().map(|c| (*c).to_owned()).collect()),
            security_opt: Some(vec!["no-new-privileges:true".into()]),
            memory: Some(memory),
            memory_swap: Some(memory),
            nano_cpus: Some(nano_cpus),
            pids_limit: Some(pids),
            ulimits: Some(vec![ResourcesUlimits {
                name: Some("nofile".into()),
                soft: Some(files),
                hard: Some(files),
            }]),
            readonly_rootfs: Some(spec.read_only_root),
            // The agent's stderr is the container's log, and container root can
            // write to it: bounded to 2 files of 1 MiB.
            log_config: Some(HostConfigLogConfig {
                typ: Some("json-file".into()),
                config: Some(HashMap::from([
                    ("max-size".to_owned(), "1m".to_owned()),
                    ("max-file".to_owned(), "2".to_owned()),
                ])),
            }),
            runtime: self.defaults.runtime.clone(),
            init: Some(false),
            ..Default::default()
        };
        ContainerCreateBody {
            image: Some(image.to_owned()),
            hostname: Some(id.as_str().to_owned()),
            user: Some("0:0".into()),
            entrypoint: Some(vec![AGENT_MOUNT.into(), "serve".into()]),
            cmd: Some(vec![]),
            env: Some(env),
            working_dir: Some("/".into()),
            labels: Some(labels),
            stop_signal: Some("SIGTERM".into()),
            host_config: Some(host_config),
            ..Default::default()
        }
    }
}
