//! The `process` backend: a sandbox is a `warren-agent serve` child process with its
//! own work directory on the runner host. NO ISOLATION: sessions run as the runner's
//! user, with its files and network. It exists so the whole gateway → tunnel →
//! agent path runs and is tested without Docker.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::process::{Child, Command};
use tokio::sync::Mutex;
use warren_keys::SandboxId;

use crate::git;
use crate::protocol::{RepoSpec, SandboxSpec, SandboxStatus, Secret};

/// How long a stopped agent gets between SIGTERM and SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// How long a new agent may take to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(15);
/// The repository's checkout inside a sandbox's directory (sandboxes without a
/// repository start in the directory itself).
const WORKSPACE_DIR: &str = "workspace";

pub struct ProcessBackend {
    sandboxes_dir: PathBuf,
    listen_dir: PathBuf,
    agent_bin: PathBuf,
    running: Mutex<HashMap<SandboxId, Child>>,
    /// Each sandbox's create-time environment, for [`Self::env`]; kept while the
    /// sandbox exists (stopped too), in memory only.
    envs: std::sync::Mutex<HashMap<SandboxId, BTreeMap<String, Secret>>>,
    /// Passed to agents (`--session-detached-ttl-s`).
    session_detached_ttl: Option<std::time::Duration>,
}

impl ProcessBackend {
    /// Agents end persistent sessions nobody attached for `ttl`.
    pub fn with_session_detached_ttl(mut self, ttl: Option<std::time::Duration>) -> Self {
        self.session_detached_ttl = ttl;
        self
    }

    /// Sandboxes get work directories under `sandboxes_dir` and agent sockets in
    /// `listen_dir` (both created 0700).
    pub fn new(sandboxes_dir: PathBuf, listen_dir: PathBuf, agent_bin: PathBuf) -> Result<Self> {
        for dir in [&sandboxes_dir, &listen_dir] {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .with_context(|| format!("creating {}", dir.display()))?;
        }
        tracing::warn!(
            "the process backend gives sandboxes NO ISOLATION: every sandbox runs as this \
             runner's user, with its files and network; use it for development and tests only"
        );
        Ok(ProcessBackend {
            sandboxes_dir,
            listen_dir,
            agent_bin,
            session_detached_ttl: None,
            running: Mutex::new(HashMap::new()),
            envs: std::sync::Mutex::default(),
        })
    }

    pub(crate) fn sandbox_dir(&self, id: &SandboxId) -> PathBuf {
        self.sandboxes_dir.join(id.as_str())
    }

    fn socket(&self, id: &SandboxId) -> PathBuf {
        self.listen_dir.join(format!("{}.sock", id.as_str()))
    }

    /// The agent socket of a running sandbox.
    pub async fn agent_socket(&self, id: &SandboxId) -> Option<PathBuf> {
        let mut running = self.running.lock().await;
        let alive = match running.get_mut(id) {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => return None,
        };
        if !alive {
            running.remove(id);
            return None;
        }
        Some(self.socket(id))
    }

    /// Starts the sandbox's agent (creating its directory), or, if it is running,
    /// updates its authorized keys. Returns once the agent accepts connections.
    pub async fn create(
        &self,
        id: &SandboxId,
        token_key: &str,
        authorized_keys: &[String],
        spec: &SandboxSpec,
    ) -> crate::Result<()> {
        super::validate_spec(spec)?;
        Ok(self.start(id, token_key, authorized_keys, spec).await?)
    }

    async fn start(
        &self,
        id: &SandboxId,
        token_key: &str,
        authorized_keys: &[String],
        spec: &SandboxSpec,
    ) -> Result<()> {
        warren_keys::TokenVerifier::from_base64(token_key).context("invalid token_key")?;
        let dir = self.sandbox_dir(id);
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .with_context(|| format!("creating {}", dir.display()))?;
        let workdir = match &spec.repo {
            Some(repo) => self.clone_repo(id, repo).await?,
            None if self.workspace(id).is_dir() => self.workspace(id),
            None => dir.clone(),
        };
        let keys_file = super::write_authorized_keys(&dir, authorized_keys)?;
        let mut running = self.running.lock().await;
        if let Some(child) = running.get_mut(id) {
            if matches!(child.try_wait(), Ok(None)) {
                return Ok(());
            }
            running.remove(id);
        }
        let socket = self.socket(id);
        let _ = fs::remove_file(&socket);
        let mut child = Command::new(&self.agent_bin)
            .arg("serve")
            .arg("--sandbox-id")
            .arg(id.as_str())
            .arg("--listen")
            .arg(format!("unix:{}", socket.display()))
            // Reached only through the encrypted tunnel: see the agent's flag.
            .arg("--allow-unencrypted")
            // One argument with `=`: the key is URL-safe base64 and may start with
            // '-', which as a separate argument clap takes for a flag (1 in 64).
            .arg(format!("--token-key={token_key}"))
            .arg("--authorized-keys")
            .arg(&keys_file)
            .arg("--host-key")
            .arg(dir.join("host_key"))
            .arg("--workdir")
            .arg(&workdir)
            .args(
                self.session_detached_ttl
                    .map(|ttl| format!("--session-detached-ttl-s={}", ttl.as_secs())),
            )
            .env(
                "WARREN_PASS_ENV",
                spec.env.keys().cloned().collect::<Vec<_>>().join(","),
            )
            .envs(spec.env.iter().map(|(k, v)| (k, v.expose())))
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", self.agent_bin.display()))?;
        let deadline = tokio::time::Instant::now() + START_TIMEOUT;
        loop {
            if tokio::net::UnixStream::connect(&socket).await.is_ok() {
                break;
            }
            if let Ok(Some(status)) = child.try_wait() {
                bail!("the agent exited at start ({status})");
            }
            if tokio::time::Instant::now() > deadline {
                let _ = child.kill().await;
                bail!("the agent did not start listening within {START_TIMEOUT:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tracing::info!(sandbox = %id, pid = child.id(), "sandbox started");
        running.insert(id.clone(), child);
        self.envs().insert(id.clone(), spec.env.clone());
        Ok(())
    }

    fn envs(&self) -> std::sync::MutexGuard<'_, HashMap<SandboxId, BTreeMap<String, Secret>>> {
        match self.envs.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// The environment the sandbox's agent was last started with; empty for a
    /// sandbox this runner process has not started (its memory is all there is).
    pub async fn env(&self, id: &SandboxId) -> Result<BTreeMap<String, Secret>> {
        if let Some(env) = self.envs().get(id) {
            return Ok(env.clone());
        }
        if !self.sandbox_dir(id).is_dir() {
            bail!("unknown sandbox {id}");
        }
        Ok(BTreeMap::new())
    }

    /// Where a sandbox's repository is cloned (and its sessions start).
    fn workspace(&self, id: &SandboxId) -> PathBuf {
        self.sandbox_dir(id).join(WORKSPACE_DIR)
    }

    /// The askpass helper: a symlink named `askpass` to the agent binary (which
    /// answers git's prompts from `WARREN_GIT_PASSWORD` when called by that name),
    /// in the sandbox's directory.
    fn askpass(&self, id: &SandboxId) -> Result<PathBuf> {
        let link = self.sandbox_dir(id).join("askpass");
        let target = fs::canonicalize(&self.agent_bin)
            .with_context(|| format!("finding {}", self.agent_bin.display()))?;
        if fs::read_link(&link).ok().as_deref() != Some(target.as_path()) {
            let _ = fs::remove_file(&link);
            std::os::unix::fs::symlink(&target, &link)
                .with_context(|| format!("creating {}", link.display()))?;
        }
        Ok(link)
    }

    /// Clones `repo` into the sandbox's workspace (once: a restart keeps the
    /// workspace as it is) as the runner's user; returns the workspace.
    async fn clone_repo(&self, id: &SandboxId, repo: &RepoSpec) -> Result<PathBuf> {
        let workspace = self.workspace(id);
        if workspace.is_dir() {
            return Ok(workspace);
        }
        let exec = HostGit {
            cwd: self.sandbox_dir(id),
            askpass: self.askpass(id)?,
        };
        let dest = workspace.to_string_lossy().into_owned();
        let cloned = git::clone(
            &exec,
            &repo.url,
            &dest,
            repo.base.as_deref(),
            &repo.branch,
            repo.token.as_ref().map(Secret::expose),
        )
        .await;
        if let Err(e) = cloned {
            let _ = fs::remove_dir_all(&workspace);
            return Err(e.context(format!("cloning {}", git::redact(&repo.url, None))));
        }
        Ok(workspace)
    }

    /// Commits the workspace's changes and pushes them (see [`git::commit_and_push`]).
    pub async fn commit_and_push(
        &self,
        id: &SandboxId,
        req: &git::CommitPush<'_>,
    ) -> crate::Result<git::Pushed> {
        if !self.sandbox_dir(id).is_dir() {
            return Err(crate::Error::failed(format_args!("unknown sandbox {id}")));
        }
        let workspace = self.workspace(id);
        if !workspace.is_dir() {
            return Err(crate::Error::refused(
                "no_repo",
                "the sandbox has no repository",
            ));
        }
        let exec = HostGit {
            cwd: workspace,
            askpass: self.askpass(id)?,
        };
        // Beside the sandboxes' directories (a name no sandbox id has).
        let place = git::PushPlace {
            scratch: self.sandboxes_dir.join(format!(".push-{id}")),
            agent_bin: &self.agent_bin,
        };
        git::commit_and_push(&exec, &place, req).await
    }

    /// Stops the sandbox's agent (SIGTERM, SIGKILL after 5 s), keeping its work
    /// directory. Stopping a stopped sandbox is fine; an unknown one is an error.
    pub async fn stop(&self, id: &SandboxId) -> Result<()> {
        let child = self.running.lock().await.remove(id);
        match child {
            Some(child) => stop_child(child).await,
            None if self.sandbox_dir(id).is_dir() => {}
            None => bail!("unknown sandbox {id}"),
        }
        let _ = fs::remove_file(self.socket(id));
        tracing::info!(sandbox = %id, "sandbox stopped");
        Ok(())
    }

    /// Stops the sandbox and removes its work directory.
    pub async fn delete(&self, id: &SandboxId) -> Result<()> {
        self.stop(id).await?;
        let dir = self.sandbox_dir(id);
        fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
        self.envs().remove(id);
        tracing::info!(sandbox = %id, "sandbox deleted");
        Ok(())
    }

    /// Every sandbox with a work directory, running or not.
    pub async fn list(&self) -> Result<Vec<SandboxStatus>> {
        let mut running = self.running.lock().await;
        running.retain(|_, child| matches!(child.try_wait(), Ok(None)));
        let mut out = Vec::new();
        let entries = match fs::read_dir(&self.sandboxes_dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(e.into()),
        };
        for entry in entries {
            let entry = entry?;
            let Some(id) = entry
                .file_name()
                .to_str()
                .and_then(|n| SandboxId::parse(n).ok())
            else {
                continue;
            };
            out.push(SandboxStatus {
                running: running.contains_key(&id),
                sandbox: id,
                stopped_reason: None,
            });
        }
        out.sort_by(|a, b| a.sandbox.cmp(&b.sandbox));
        Ok(out)
    }

    /// Stops every running sandbox (at runner shutdown).
    pub async fn stop_all(&self) {
        let children: Vec<_> = self.running.lock().await.drain().collect();
        for (id, child) in children {
            stop_child(child).await;
            let _ = fs::remove_file(self.socket(&id));
        }
    }
}

/// Git on the runner host, as the runner's user, in `cwd`.
struct HostGit {
    cwd: PathBuf,
    askpass: PathBuf,
}

impl HostGit {
    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("git");
        cmd.args(args)
            .current_dir(&self.cwd)
            .env("GIT_ASKPASS", &self.askpass)
            .env("GIT_TERMINAL_PROMPT", "0")
            .env_remove("WARREN_GIT_PASSWORD")
            .env_remove("SSH_ASKPASS")
            .env_remove("GIT_DIR")
            .env_remove("GIT_WORK_TREE")
            .env_remove("GIT_INDEX_FILE")
            .stdin(Stdio::null())
            .kill_on_drop(true);
        cmd
    }
}

impl git::GitExec for HostGit {
    async fn git(&self, args: &[&str], password: Option<&str>) -> Result<git::GitOutput> {
        let mut cmd = self.command(args);
        if let Some(password) = password {
            cmd.env("WARREN_GIT_PASSWORD", password);
        }
        let out = cmd.output().await.context("running git")?;
        Ok(git::GitOutput {
            code: out.status.code().map_or(-1, i64::from),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }

    async fn git_to_file(
        &self,
        args: &[&str],
        out: &mut git::BoundedFile,
    ) -> Result<git::GitOutput> {
        use tokio::io::AsyncReadExt;
        let mut cmd = self.command(args);
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().context("running git")?;
        let mut stdout = child.stdout.take().context("git's stdout")?;
        let mut stderr = child.stderr.take().context("git's stderr")?;
        let errors = tokio::spawn(async move {
            let mut text = Vec::new();
            let _ = (&mut stderr).take(64 * 1024).read_to_end(&mut text).await;
            text
        });
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            let n = stdout.read(&mut chunk).await?;
            if n == 0 {
                break;
            }
            out.write(&chunk[..n]).await?;
        }
        let status = child.wait().await?;
        let stderr = errors.await.unwrap_or_default();
        Ok(git::GitOutput {
            code: status.code().map_or(-1, i64::from),
            stdout: String::new(),
            stderr: String::from_utf8_lossy(&stderr).into_owned(),
        })
    }
}

async fn stop_child(mut child: Child) {
    if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
        // SAFETY: kill(2) with a pid we own and a valid signal has no memory effects.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
    }
    if tokio::time::timeout(STOP_GRACE, child.wait())
        .await
        .is_err()
    {
        let _ = child.kill().await;
    }
}

/// The agent binary: `explicit` (from --agent-bin / WARREN_AGENT_BIN) or
/// `warren-agent` next to this executable. Always absolute: the Docker backend
/// mounts it, and the engine takes a relative path for a volume's name.
pub fn find_agent_bin(explicit: Option<&Path>) -> Result<PathBuf> {
    if let Some(path) = explicit {
        let path = std::path::absolute(path)
            .with_context(|| format!("finding the agent binary {}", path.display()))?;
        if !path.is_file() {
            bail!("no agent binary at {} (--agent-bin)", path.display());
        }
        return Ok(path);
    }
    let exe = std::env::current_exe().context("finding this executable")?;
    let path = exe.with_file_name("warren-agent");
    if !path.is_file() {
        bail!(
            "no warren-agent next to {} (give --agent-bin or WARREN_AGENT_BIN)",
            exe.display()
        );
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn an_explicit_agent_binary_is_made_absolute_and_must_exist() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("warren-agent"), b"").unwrap();
        let relative = pathdiff(dir.path().join("warren-agent"));
        let found = find_agent_bin(Some(&relative)).unwrap();
        assert!(found.is_absolute(), "{}", found.display());
        assert!(found.is_file());
        let missing = find_agent_bin(Some(Path::new("no/such/warren-agent"))).unwrap_err();
        assert!(
            format!("{missing:#}").contains("no agent binary at /"),
            "{missing:#}"
        );
    }

    /// `path` relative to the working directory (through `..` as needed).
    fn pathdiff(path: PathBuf) -> PathBuf {
        let cwd = std::env::current_dir().unwrap();
        let up = cwd.components().count() - 1;
        let mut relative = PathBuf::new();
        for _ in 0..up {
            relative.push("..");
        }
        relative.join(path.strip_prefix("/").unwrap())
    }
}
