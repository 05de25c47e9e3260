//! The `Sshd` fixture: Debian's OpenSSH server with a throwaway configuration, as the
//! yardstick the agent is compared against (benchmark, and tests that check the agent
//! behaves as sshd does).
//!
//! It listens on a free high loopback port, with its own host key and an
//! authorized_keys file in a tempdir, no PAM, no pid file. It logs in the user the
//! tests run as (normally root), so it needs to run as root. The benchmarks use
//! [`Sshd::start_clean`] instead: a dedicated user whose home holds empty rc files,
//! so that a login costs what sshd costs, not what someone's `.bashrc` costs.

use std::fs::{self, OpenOptions};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tempfile::TempDir;

use crate::client::{Client, Target};
use crate::process::{Cmd, Running};
use crate::util::{self, PasswdEntry, current_user, free_port, wait_until};

pub const SSHD_PATH: &str = "/usr/sbin/sshd";
pub const SFTP_SERVER_PATH: &str = "/usr/lib/openssh/sftp-server";
/// The dedicated user [`Sshd::start_clean`] logs in, and its home.
pub const CLEAN_USER: &str = "warren-bench";
const CLEAN_HOME: &str = "/var/lib/warren-bench";

/// A running `sshd -D -e -f <throwaway config>`.
pub struct Sshd {
    process: Option<Running>,
    port: u16,
    user: PasswdEntry,
    authorized_keys: PathBuf,
    dir: TempDir,
}

impl Sshd {
    /// Whether sshd can run here (installed, and we are root).
    pub fn available() -> bool {
        Path::new(SSHD_PATH).is_file() && util::running_as_root()
    }

    /// sshd logging in the user the tests run as.
    pub fn start() -> Result<Sshd> {
        Sshd::start_for(current_user()?)
    }

    /// sshd logging in [`CLEAN_USER`] (created with useradd if missing), whose shell
    /// is bash, like root's, and whose home is reset to empty `.bashrc`, `.profile`
    /// and `.bash_logout` on every start (sshd makes bash read `.bashrc` even for
    /// `ssh host true`).
    pub fn start_clean() -> Result<Sshd> {
        Sshd::start_for(clean_user()?)
    }

    fn start_for(user: PasswdEntry) -> Result<Sshd> {
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
        // A non-root user's sshd reads the keys file as that user.
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755))?;
        fs::set_permissions(&authorized_keys, fs::Permissions::from_mode(0o644))?;
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
        Target::new("127.0.0.1", self.port, &self.user.name)
    }

    /// The user this sshd logs in.
    pub fn user(&self) -> &PasswdEntry {
        &self.user
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
            process.kill_tree();
        }
    }
}

/// [`CLEAN_USER`], created if missing, with a freshly emptied home.
pub fn clean_user() -> Result<PasswdEntry> {
    let find = || {
        fs::read_to_string("/etc/passwd").map(|p| {
            p.lines()
                .filter_map(PasswdEntry::parse)
                .find(|e| e.name == CLEAN_USER)
        })
    };
    if find()?.is_none() {
        Cmd::new("useradd")
            .args(["--system", "--no-create-home", "--shell", "/bin/bash"])
            .args(["--home-dir", CLEAN_HOME, CLEAN_USER])
            .run()?
            .success()
            .context("useradd (needs root)")?;
    }
    // useradd leaves the password locked ('!'), and sshd without PAM refuses locked
    // accounts even for key logins; '*' is "no password" without the lock.
    Cmd::new("usermod")
        .args(["-p", "*", CLEAN_USER])
        .run()?
        .success()
        .context("usermod -p '*'")?;
    let user = find()?.with_context(|| format!("{CLEAN_USER} is not in /etc/passwd"))?;
    let home = user.home.as_path();
    if home.exists() {
        fs::remove_dir_all(home).with_context(|| format!("emptying {}", home.display()))?;
    }
    fs::create_dir_all(home)?;
    for rc in [".bashrc", ".profile", ".bash_logout"] {
        fs::write(home.join(rc), "")?;
    }
    chown_tree(home, user.uid, user.gid)?;
    Ok(user)
}

/// chown `path` and everything under it.
pub fn chown_tree(path: &Path, uid: u32, gid: u32) -> Result<()> {
    std::os::unix::fs::chown(path, Some(uid), Some(gid))
        .with_context(|| format!("chown {}", path.display()))?;
    if path.is_dir() {
        for entry in fs::read_dir(path)? {
            chown_tree(&entry?.path(), uid, gid)?;
        }
    }
    Ok(())
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
