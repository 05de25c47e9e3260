//! The `Sshd` fixture: Debian's OpenSSH server with a throwaway configuration, as the
//! yardstick the agent is compared against (benchmark, and tests that check the agent
//! behaves as sshd does).
//!
//! It listens on a free high loopback port, with its own host key and an
//! authorized_keys file in a tempdir, no PAM, no pid file. It logs in the user the
//! tests run as (normally root), so it needs to run as root.

use std::fs::{self, OpenOptions};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tempfile::TempDir;

use crate::client::{Client, Target};
use crate::process::{Cmd, Running};
use crate::util::{self, current_user, free_port, wait_until};

pub const SSHD_PATH: &str = "/usr/sbin/sshd";
pub const SFTP_SERVER_PATH: &str = "/usr/lib/openssh/sftp-server";

/// A running `sshd -D -e -f <throwaway config>`.
pub struct Sshd {
    process: Option<Running>,
    port: u16,
    user: String,
    authorized_keys: PathBuf,
    dir: TempDir,
}

impl Sshd {
    /// Whether sshd can run here (installed, and we are root).
    pub fn available() -> bool {
        Path::new(SSHD_PATH).is_file() && util::running_as_root()
    }

    pub fn start() -> Result<Sshd> {
        if !Path::new(SSHD_PATH).is_file() {
            bail!("{SSHD_PATH} is missing: apt-get install openssh-server");
        }
        // The privilege-separation directory Debian's sshd insists on.
        fs::create_dir_all("/run/sshd").context("creating /run/sshd")?;
        let dir = tempfile::Builder::new().prefix("warren-sshd-").tempdir()?;
        let host_key = dir.path().join("ssh_host_ed25519_key");
        Cmd::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(&host_key)
            .run()?
            .success()?;
        let authorized_keys = dir.path().join("authorized_keys");
        fs::write(&authorized_keys, "")?;
        let user = current_user()?.name;
        let mut last_err = None;
        // The port was free a moment ago; another process may take it first.
        for _ in 0..5 {
            let port = free_port()?;
            let config = dir.path().join("sshd_config");
            fs::write(
                &config,
                format!(
                    "Port {port}\n\
                     ListenAddress 127.0.0.1\n\
                     HostKey {host_key}\n\
                     AuthorizedKeysFile {authorized_keys}\n\
                     PidFile none\n\
                     UsePAM no\n\
                     StrictModes no\n\
                     PermitRootLogin prohibit-password\n\
                     PasswordAuthentication no\n\
                     KbdInteractiveAuthentication no\n\
                     AllowAgentForwarding yes\n\
                     AllowTcpForwarding yes\n\
                     X11Forwarding no\n\
                     PrintMotd no\n\
                     PrintLastLog no\n\
                     MaxStartups 1000\n\
                     MaxSessions 100\n\
                     AcceptEnv LANG LC_*\n\
                     LogLevel ERROR\n\
                     Subsystem sftp {SFTP_SERVER_PATH}\n",
                    host_key = host_key.display(),
                    authorized_keys = authorized_keys.display(),
                ),
            )?;
            let mut process = Cmd::new(SSHD_PATH)
                .args(["-D", "-e", "-f"])
                .arg(&config)
                .timeout(Duration::from_secs(24 * 3600))
                .spawn()?;
            let ready = wait_until(Duration::from_secs(10), || {
                banner_ok(port) || process.try_wait().is_some()
            });
            if ready && process.try_wait().is_none() {
                return Ok(Sshd {
                    process: Some(process),
                    port,
                    user,
                    authorized_keys,
                    dir,
                });
            }
            let out = process.kill();
            last_err = Some(anyhow::anyhow!("sshd did not come up:\n{out}"));
        }
        Err(last_err.unwrap_or_else(|| anyhow::anyhow!("sshd did not come up")))
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn target(&self) -> Target {
        Target::new("127.0.0.1", self.port, &self.user)
    }

    pub fn authorize(&self, public_key: &str) -> Result<()> {
        let mut f = OpenOptions::new()
            .append(true)
            .open(&self.authorized_keys)?;
        writeln!(f, "{}", public_key.trim())?;
        Ok(())
    }

    /// A client with a fresh key that this sshd authorizes.
    pub fn client(&self) -> Result<Client> {
        let client = Client::new(self.target())?;
        self.authorize(client.public_key())?;
        Ok(client)
    }

    /// The listener's pid.
    pub fn pid(&self) -> u32 {
        self.process.as_ref().map_or(0, Running::pid)
    }

    /// The listener and every per-connection sshd process under it (not the users'
    /// own processes): pid list.
    pub fn server_pids(&self) -> Vec<u32> {
        let mut pids = vec![self.pid()];
        pids.extend(
            util::descendants(self.pid())
                .into_iter()
                .filter(|(_, comm)| comm == "sshd")
                .map(|(pid, _)| pid),
        );
        pids
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// What sshd logged (errors only).
    pub fn log(&self) -> String {
        self.process
            .as_ref()
            .map(|p| p.stderr().contents_str())
            .unwrap_or_default()
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        if let Some(process) = self.process.take() {
            let pid = process.pid();
            let children: Vec<u32> = util::descendants(pid).into_iter().map(|d| d.0).collect();
            drop(process);
            for child in children {
                // SAFETY: kill(2) has no memory-safety preconditions.
                unsafe {
                    libc::kill(child as i32, libc::SIGKILL);
                }
            }
        }
    }
}

/// Whether an SSH server answers with its banner on 127.0.0.1:`port`.
fn banner_ok(port: u16) -> bool {
    let Ok(mut conn) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
    let mut buf = [0u8; 8];
    conn.read_exact(&mut buf).is_ok() && buf.starts_with(b"SSH-2.0")
}
