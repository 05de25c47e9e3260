//! The `Client` fixture: the real OpenSSH `ssh`, `scp`, `sftp` and `rsync` with a
//! throwaway identity, pointed at any SSH server (agent, gateway, sshd).
//!
//! Every command is built with `-F /dev/null` and options that make the client
//! deterministic and non-interactive: no known_hosts, no host-key prompts, a connect
//! timeout, and exactly one authentication method — the client's own key (BatchMode)
//! or a password (a sandbox token) given through `SSH_ASKPASS`, never a terminal.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use tempfile::TempDir;

use crate::process::{Cmd, shell_quote};
use crate::pty::Pty;

/// Where to connect: host, port and SSH user name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub host: String,
    pub port: u16,
    pub user: String,
}

impl Target {
    pub fn new(host: impl Into<String>, port: u16, user: impl Into<String>) -> Self {
        Self {
            host: host.into(),
            port,
            user: user.into(),
        }
    }
}

#[derive(Clone, Debug)]
enum Auth {
    /// The client's own ed25519 key, and nothing else.
    Key,
    /// A password from a 0600 file, handed over by an askpass script.
    Password { askpass: PathBuf },
}

/// A throwaway OpenSSH client identity and the commands that use it. Clones share
/// the identity (and its directory, removed with the last clone).
#[derive(Clone)]
pub struct Client {
    dir: std::sync::Arc<TempDir>,
    key: PathBuf,
    public_key: String,
    target: Target,
    auth: Auth,
    extra: Vec<String>,
}

impl Client {
    /// A client with a fresh ed25519 key (`ssh-keygen -t ed25519 -N ''`), using it to log in.
    pub fn new(target: Target) -> Result<Client> {
        let dir = tempfile::Builder::new()
            .prefix("warren-client-")
            .tempdir()?;
        let key = dir.path().join("id_ed25519");
        Cmd::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "warren-test", "-f"])
            .arg(&key)
            .run()?
            .success()
            .context("ssh-keygen")?;
        let public_key = fs::read_to_string(key.with_extension("pub"))?
            .trim()
            .to_owned();
        Ok(Client {
            dir: std::sync::Arc::new(dir),
            key,
            public_key,
            target,
            auth: Auth::Key,
            extra: Vec::new(),
        })
    }

    /// Log in with this password (e.g. a sandbox token) instead of the key.
    pub fn with_password(mut self, password: &str) -> Result<Client> {
        let secret = self.dir.path().join("password");
        fs::write(&secret, password)?;
        fs::set_permissions(&secret, fs::Permissions::from_mode(0o600))?;
        let askpass = self.dir.path().join("askpass");
        fs::write(
            &askpass,
            format!(
                "#!/bin/sh\nexec cat {}\n",
                shell_quote(&secret.to_string_lossy())
            ),
        )?;
        fs::set_permissions(&askpass, fs::Permissions::from_mode(0o700))?;
        self.auth = Auth::Password { askpass };
        Ok(self)
    }

    /// Log in with the key again (after `with_password`).
    pub fn with_key(mut self) -> Client {
        self.auth = Auth::Key;
        self
    }

    /// The same identity aimed elsewhere (e.g. the gateway instead of the agent).
    pub fn with_target(mut self, target: Target) -> Client {
        self.target = target;
        self
    }

    /// Add `-o <option>` to every command (e.g. `Ciphers=aes256-gcm@openssh.com`).
    pub fn with_option(mut self, option: impl Into<String>) -> Client {
        self.extra.push(option.into());
        self
    }

    pub fn target(&self) -> &Target {
        &self.target
    }

    /// The public key line (`ssh-ed25519 AAAA… warren-test`).
    pub fn public_key(&self) -> &str {
        &self.public_key
    }

    pub fn key_path(&self) -> &Path {
        &self.key
    }

    /// A scratch directory that lives as long as the client.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `host:path` as scp, sftp and rsync take it.
    pub fn remote(&self, path: impl AsRef<Path>) -> String {
        format!("{}:{}", self.target.host, path.as_ref().display())
    }

    /// The options shared by ssh, scp and sftp (no port: its flag differs).
    fn common_options(&self) -> Vec<String> {
        let mut o: Vec<String> = vec!["-F".into(), "/dev/null".into()];
        let mut opt = |s: &str| {
            o.push("-o".into());
            o.push(s.into());
        };
        opt("UserKnownHostsFile=/dev/null");
        opt("GlobalKnownHostsFile=/dev/null");
        opt("StrictHostKeyChecking=no");
        opt("UpdateHostKeys=no");
        opt("ConnectTimeout=10");
        opt("LogLevel=ERROR");
        opt(&format!("User={}", self.target.user));
        match &self.auth {
            Auth::Key => {
                opt("BatchMode=yes");
                opt("PreferredAuthentications=publickey");
                opt("PasswordAuthentication=no");
                opt("KbdInteractiveAuthentication=no");
                opt("IdentitiesOnly=yes");
                opt(&format!("IdentityFile={}", self.key.display()));
            }
            Auth::Password { .. } => {
                opt("BatchMode=no");
                opt("PreferredAuthentications=password");
                opt("PubkeyAuthentication=no");
                opt("KbdInteractiveAuthentication=no");
                opt("NumberOfPasswordPrompts=1");
            }
        }
        for extra in &self.extra {
            opt(extra);
        }
        o
    }

    fn with_auth_env(&self, cmd: Cmd) -> Cmd {
        let cmd = cmd.env_remove("SSH_AUTH_SOCK").env_remove("SSH_AGENT_PID");
        match &self.auth {
            Auth::Key => cmd.env_remove("SSH_ASKPASS"),
            Auth::Password { askpass } => cmd
                .env("SSH_ASKPASS", askpass)
                .env("SSH_ASKPASS_REQUIRE", "force")
                .env("DISPLAY", ":0"),
        }
    }

    /// The ssh options (everything but the destination and command).
    pub fn ssh_args(&self) -> Vec<String> {
        let mut args = self.common_options();
        args.push("-p".into());
        args.push(self.target.port.to_string());
        args
    }

    /// `ssh <options> <extra…> host [remote_command]`. An empty `remote` runs none
    /// (a login shell, or nothing with `-N`).
    pub fn ssh(&self, extra: &[&str], remote: &str) -> Cmd {
        let mut cmd = Cmd::new("ssh")
            .args(self.ssh_args())
            .args(extra)
            .arg(&self.target.host);
        if !remote.is_empty() {
            cmd = cmd.arg(remote);
        }
        self.with_auth_env(cmd)
    }

    /// `ssh … host [remote]` on a fresh terminal of `rows`×`cols` with `TERM=term`
    /// (add `-tt` to `extra` to request a PTY even for a command).
    pub fn ssh_on_pty(
        &self,
        extra: &[&str],
        remote: &str,
        term: &str,
        rows: u16,
        cols: u16,
    ) -> Result<Pty> {
        let mut args = self.ssh_args();
        args.extend(extra.iter().map(|s| s.to_string()));
        args.push(self.target.host.clone());
        if !remote.is_empty() {
            args.push(remote.to_owned());
        }
        let askpass;
        let mut envs = vec![("TERM", term)];
        if let Auth::Password { askpass: path } = &self.auth {
            askpass = path.to_string_lossy().into_owned();
            envs.extend([
                ("SSH_ASKPASS", askpass.as_str()),
                ("SSH_ASKPASS_REQUIRE", "force"),
                ("DISPLAY", ":0"),
            ]);
        }
        Pty::spawn("ssh", &args, &envs, rows, cols)
    }

    /// `ssh host <remote>`: the everyday exec.
    pub fn exec(&self, remote: &str) -> Cmd {
        self.ssh(&[], remote)
    }

    /// `scp <options> -P port <extra…> <paths…>`; name remote paths with [`Client::remote`].
    pub fn scp(&self, extra: &[&str], paths: &[&str]) -> Cmd {
        let cmd = Cmd::new("scp")
            .args(self.common_options())
            .arg("-P")
            .arg(self.target.port.to_string())
            .args(extra)
            .args(paths);
        self.with_auth_env(cmd)
    }

    /// `sftp <options> -P port <extra…> host` (pass `-b <file>` or feed stdin).
    pub fn sftp(&self, extra: &[&str]) -> Cmd {
        let cmd = Cmd::new("sftp")
            .args(self.common_options())
            .arg("-P")
            .arg(self.target.port.to_string())
            .args(extra)
            .arg(&self.target.host);
        self.with_auth_env(cmd)
    }

    /// The `ssh …` command line (shell-quoted), for `rsync -e` or a shell pipeline.
    pub fn ssh_command_line(&self) -> String {
        std::iter::once("ssh".to_owned())
            .chain(self.ssh_args())
            .map(|a| shell_quote(&a))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// `rsync -e '<ssh…>' <extra…> <paths…>`.
    pub fn rsync(&self, extra: &[&str], paths: &[&str]) -> Cmd {
        let cmd = Cmd::new("rsync")
            .arg("-e")
            .arg(self.ssh_command_line())
            .args(extra)
            .args(paths);
        self.with_auth_env(cmd)
    }

    /// A shell pipeline in which `{ssh}` stands for this client's `ssh … host`, e.g.
    /// `client.pipeline("tar c . | {ssh} 'tar x -C dst'")`.
    pub fn pipeline(&self, script: &str) -> Cmd {
        let ssh = format!(
            "{} {}",
            self.ssh_command_line(),
            shell_quote(&self.target.host)
        );
        self.with_auth_env(Cmd::shell(script.replace("{ssh}", &ssh)))
    }
}
