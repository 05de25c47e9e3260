//! What a repository's devcontainer.json needs of the Docker backend: a place on
//! the host to read the file from the repository, the image's own env, and its
//! lifecycle commands run in the sandbox as the session user. The policy (which
//! keys, in what order) is in [`crate::devsetup`].

use super::*;

/// Output kept of one lifecycle command (its tail).
const KEPT_OUTPUT: usize = 16 * 1024;

impl DockerBackend {
    /// A scratch place on the runner host, out of every sandbox's reach, for
    /// reading one file of `id`'s repository ([`git::read_file_at`]).
    pub fn devcontainer_place(&self, id: &SandboxId) -> git::PushPlace<'_> {
        git::PushPlace {
            scratch: self.run_dir.join(format!(".devcontainer-{id}")),
            agent_bin: &self.agent_bin,
        }
    }

    /// Where the runner keeps what `id`'s later starts need of its devcontainer
    /// (runner-owned, never mounted into the sandbox).
    pub fn devcontainer_state(&self, id: &SandboxId) -> PathBuf {
        self.run_dir.join(format!(".devcontainer-{id}.json"))
    }

    /// The `ENV` lines of the image `spec` would run (after its checks).
    pub async fn image_env(&self, spec: &SandboxSpec) -> crate::Result<BTreeMap<String, String>> {
        let info = self.image_info(spec).await?;
        Ok(info
            .config
            .and_then(|c| c.env)
            .unwrap_or_default()
            .iter()
            .filter_map(|line| line.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect())
    }

    /// Runs `argv` in `/workspace` as the session user with the container's env
    /// (what a session sees); returns the exit code and the tail of
    /// stdout and stderr as they came.
    pub async fn run_in_workspace(&self, id: &SandboxId, argv: &[String]) -> Result<(i64, String)> {
        let user = self.session_user(id)?;
        let exec = self
            .docker
            .create_exec(
                &container_name(id),
                CreateExecOptions {
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    user: Some(user),
                    cmd: Some(argv.to_vec()),
                    working_dir: Some(WORKSPACE.to_owned()),
                    ..Default::default()
                },
            )
            .await
            .context("docker exec")?;
        let mut output = Vec::new();
        if let StartExecResults::Attached {
            output: mut out, ..
        } = self.docker.start_exec(&exec.id, None).await?
        {
            while let Some(chunk) = out.next().await {
                match chunk? {
                    LogOutput::StdOut { message } | LogOutput::StdErr { message } => {
                        output.extend_from_slice(&message);
                        if output.len() > 2 * KEPT_OUTPUT {
                            output.drain(..output.len() - KEPT_OUTPUT);
                        }
                    }
                    _ => {}
                }
            }
        }
        let code = self.exit_code(&exec.id).await?;
        Ok((code, String::from_utf8_lossy(&output).into_owned()))
    }
}
