//! Commands in a sandbox's container as its user: the create-time clone and the
//! API's commit-and-push, with a token reaching git only through the exec's env.

use super::*;

impl DockerBackend {
    /// Clones `repo` into the workspace as the sandbox user and checks out its
    /// branch. A token goes to git only through the exec's environment and the
    /// askpass helper: never into the workspace, the container's config or logs.
    pub(super) async fn clone_repo(&self, id: &SandboxId, repo: &RepoSpec) -> Result<()> {
        let user = self.session_user(id)?;
        let mut clone = vec![
            "git",
            "-c",
            "core.hooksPath=/dev/null",
            "-c",
            "core.fsmonitor=false",
            "clone",
            "--quiet",
        ];
        if let Some(base) = &repo.base {
            clone.extend(["--branch", base.as_str()]);
        }
        clone.extend(["--", repo.url.as_str(), WORKSPACE]);
        self.exec_as(id, &user, &clone, repo.token.as_ref().map(Secret::expose))
            .await
            .with_context(|| format!("cloning {}", redact_url(&repo.url)))?;
        self.exec_as(
            id,
            &user,
            &[
                "git",
                "-C",
                WORKSPACE,
                "checkout",
                "--quiet",
                "-b",
                &repo.branch,
            ],
            None,
        )
        .await
        .with_context(|| format!("checking out branch {}", repo.branch))?;
        Ok(())
    }

    /// Runs `argv` in the sandbox as `user` and fails with its stderr unless it
    /// exits 0.
    pub async fn exec_as(
        &self,
        id: &SandboxId,
        user: &str,
        argv: &[&str],
        git_password: Option<&str>,
    ) -> Result<String> {
        let out = self
            .exec_output(id, user, argv, git_password, "/", None)
            .await?;
        let code = out.code;
        if code != 0 {
            let mut message = out.stderr.trim().to_owned();
            if let Some(password) = git_password {
                message = message.replace(password, "<redacted>");
            }
            if message.contains("executable file not found") || code == 126 || code == 127 {
                bail!("{} is not in the image (exit {code}): {message}", argv[0]);
            }
            bail!("exit {code}: {message}");
        }
        Ok(out.stdout)
    }

    /// Runs `argv` in the sandbox as `user` in `working_dir` and returns its exit
    /// code and output, whatever the code (the environment as [`Self::exec_as`]'s).
    /// Its stdout goes to `file` if one is given (the output's `stdout` is then
    /// empty).
    pub async fn exec_output(
        &self,
        id: &SandboxId,
        user: &str,
        argv: &[&str],
        git_password: Option<&str>,
        working_dir: &str,
        mut file: Option<&mut git::BoundedFile>,
    ) -> Result<git::GitOutput> {
        let mut env = vec![
            format!("GIT_ASKPASS={ASKPASS_MOUNT}"),
            "GIT_TERMINAL_PROMPT=0".to_owned(),
            "HOME=/tmp".to_owned(),
            "PATH=/usr/local/bin:/usr/bin:/bin".to_owned(),
        ];
        if let Some(password) = git_password {
            env.push(format!("WARREN_GIT_PASSWORD={password}"));
        }
        // An exec inherits the container's environment, the create request's
        // secrets included: blank them, so that nothing git runs in the workspace
        // (which every session user can shape) sees them.
        env.extend(
            self.env(id)
                .await?
                .into_keys()
                .map(|name| format!("{name}=")),
        );
        let exec = self
            .docker
            .create_exec(
                &container_name(id),
                CreateExecOptions {
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    user: Some(user.to_owned()),
                    env: Some(env),
                    cmd: Some(argv.iter().map(|s| (*s).to_owned()).collect()),
                    working_dir: Some(working_dir.to_owned()),
                    ..Default::default()
                },
            )
            .await
            .context("docker exec")?;
        let mut stdout = Vec::new();
        let mut stderr = Vec::new();
        if let StartExecResults::Attached { mut output, .. } =
            self.docker.start_exec(&exec.id, None).await?
        {
            while let Some(chunk) = output.next().await {
                match chunk? {
                    LogOutput::StdOut { message } => match file.as_mut() {
                        Some(file) => file.write(&message).await?,
                        None => stdout.extend_from_slice(&message),
                    },
                    LogOutput::StdErr { message } => stderr.extend_from_slice(&message),
                    _ => {}
                }
            }
        }
        let code = self.exit_code(&exec.id).await?;
        Ok(git::GitOutput {
            code,
            stdout: String::from_utf8_lossy(&stdout).into_owned(),
            stderr: String::from_utf8_lossy(&stderr).into_owned(),
        })
    }

    /// The exit code of a finished exec (-1 if the engine does not say).
    pub(super) async fn exit_code(&self, exec: &str) -> Result<i64> {
        Ok(self
            .docker
            .inspect_exec(exec)
            .await?
            .exit_code
            .unwrap_or(-1))
    }

    /// Commits the workspace's changes as the sandbox user and pushes them (see
    /// [`git::commit_and_push`]); the sandbox must be running.
    pub async fn commit_and_push(
        &self,
        id: &SandboxId,
        req: &git::CommitPush<'_>,
    ) -> crate::Result<git::Pushed> {
        let user = self
            .session_user(id)
            .with_context(|| format!("unknown or never started sandbox {id}"))?;
        let exec = ContainerGit {
            backend: self,
            id,
            user,
        };
        // The push itself runs here on the host, never in the container (which
        // only hands over a bundle): never mounted, as `.runner`.
        let place = git::PushPlace {
            scratch: self.run_dir.join(format!(".push-{id}")),
            agent_bin: &self.agent_bin,
        };
        git::commit_and_push(&exec, &place, req).await
    }
}

/// Git in a sandbox's container, as its user, in `/workspace`.
struct ContainerGit<'a> {
    backend: &'a DockerBackend,
    id: &'a SandboxId,
    user: String,
}

impl git::GitExec for ContainerGit<'_> {
    async fn git(&self, args: &[&str], password: Option<&str>) -> Result<git::GitOutput> {
        // The workspace's own hooks and fsmonitor never run here: they are the
        // session users' to write, and this git may hold the push token.
        let mut argv = vec![
            "git",
            "-c",
            "core.hooksPath=/dev/null",
            "-c",
            "core.fsmonitor=false",
        ];
        argv.extend_from_slice(args);
        self.backend
            .exec_output(self.id, &self.user, &argv, password, WORKSPACE, None)
            .await
    }

    async fn git_to_file(
        &self,
        args: &[&str],
        out: &mut git::BoundedFile,
    ) -> Result<git::GitOutput> {
        let mut argv = vec!["git"];
        argv.extend_from_slice(args);
        self.backend
            .exec_output(self.id, &self.user, &argv, None, WORKSPACE, Some(out))
            .await
    }
}

/// A URL with any `user:password@` removed, for messages.
fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}<redacted>@{}", &url[..scheme + 3], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_their_credentials() {
        assert_eq!(
            redact_url("https://x:secret@github.com/a/b"),
            "https://<redacted>@github.com/a/b"
        );
        assert_eq!(
            redact_url("https://github.com/a/b"),
            "https://github.com/a/b"
        );
    }
}
