//! Starting a session's program as the sandbox user, the way sshd does.
//!
//! Every session gets its own process session (`setsid`), a clean environment
//! (HOME, USER, LOGNAME, SHELL, PATH, WARREN_AGENT, plus what the client was
//! allowed to set) and, when the agent runs as root, the sandbox user's uid, gid
//! and groups.

use std::ffi::{CString, OsString};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::process::Stdio;

use tokio::process::Command;

use crate::user::SandboxUser;

/// What a session runs.
#[derive(Clone)]
pub enum Program {
    /// The user's login shell, interactive (`ssh host`).
    LoginShell,
    /// A command line handed to `$SHELL -c` (`ssh host cmd`), as the client's bytes.
    Command(Vec<u8>),
    /// The agent's own SFTP server mode, run as the user.
    SftpServer,
}

impl std::fmt::Debug for Program {
    /// Command lines can carry secrets, so logs only say what kind of program ran.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Program::LoginShell => "login shell",
            Program::Command(_) => "command",
            Program::SftpServer => "sftp",
        })
    }
}

/// Credentials to switch to in the child, when the agent may.
#[derive(Debug, Clone)]
struct Credentials {
    uid: libc::uid_t,
    gid: libc::gid_t,
    groups: Vec<libc::gid_t>,
}

/// Everything needed to start a session's program.
#[derive(Debug, Clone)]
pub struct Launch<'a> {
    pub user: &'a SandboxUser,
    /// Switch to the user's uid/gid/groups (only possible when the agent is root).
    pub switch_user: bool,
    pub workdir: &'a Path,
    /// Session variables on top of the login ones (TERM, LANG, SSH_AUTH_SOCK, ...).
    pub env: &'a [(String, String)],
}

/// sshd's default PATH for ordinary users and for root (Debian's values).
fn default_path(uid: u32) -> &'static str {
    if uid == 0 {
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    } else {
        "/usr/local/bin:/usr/bin:/bin:/usr/games"
    }
}

/// This agent's binary, for `WARREN_AGENT`: clients run its helpers (`chunks`,
/// `unpack`, `watch`) from it, wherever the backend put it. Read at start-up
/// ([`remember_agent_binary`]): once the file is replaced (an upgrade in place),
/// `/proc/self/exe` names it `… (deleted)`, which would run nothing.
fn agent_binary() -> Option<&'static Path> {
    AGENT_BINARY
        .get_or_init(|| {
            std::env::current_exe()
                .ok()
                .filter(|p| !p.as_os_str().as_bytes().ends_with(b" (deleted)"))
        })
        .as_deref()
}

static AGENT_BINARY: std::sync::OnceLock<Option<std::path::PathBuf>> = std::sync::OnceLock::new();

/// Records this agent's binary while it is still the file that was started.
pub fn remember_agent_binary() {
    agent_binary();
}

impl Launch<'_> {
    fn login_env(&self) -> Vec<(OsString, OsString)> {
        let user = self.user;
        let mut env: Vec<(OsString, OsString)> = vec![
            ("HOME".into(), user.home.clone().into()),
            ("USER".into(), user.name.clone().into()),
            ("LOGNAME".into(), user.name.clone().into()),
            ("SHELL".into(), user.shell.clone().into()),
            ("PATH".into(), default_path(user.uid).into()),
        ];
        if let Some(binary) = agent_binary() {
            env.push(("WARREN_AGENT".into(), binary.into()));
        }
        for (name, value) in self.env {
            env.retain(|(n, _)| n != name.as_str());
            env.push((name.into(), value.into()));
        }
        env
    }

    /// A command for `program`, with stdio left for the caller to set.
    pub fn command(&self, program: &Program) -> std::io::Result<Command> {
        let shell = &self.user.shell;
        let mut cmd = match program {
            Program::LoginShell => {
                let mut cmd = Command::new(shell);
                // A leading '-' in argv[0] makes it a login shell, as sshd does.
                cmd.arg0(login_argv0(shell));
                cmd
            }
            Program::Command(line) => {
                let mut cmd = Command::new(shell);
                cmd.arg("-c").arg(std::ffi::OsStr::from_bytes(line));
                cmd
            }
            Program::SftpServer => {
                // Our own binary; /proc/self/exe still names it after an upgrade in place.
                let mut cmd = Command::new("/proc/self/exe");
                cmd.arg("sftp-server");
                cmd
            }
        };
        cmd.env_clear().envs(self.login_env()).kill_on_drop(false);
        let creds = self.switch_user.then(|| Credentials {
            uid: self.user.uid,
            gid: self.user.gid,
            groups: self.user.groups.clone(),
        });
        let dirs = self.working_dirs()?;
        // SAFETY: the closure runs between fork and exec and only calls
        // async-signal-safe functions on memory allocated before the fork.
        unsafe {
            cmd.pre_exec(move || enter_session(creds.as_ref(), &dirs));
        }
        Ok(cmd)
    }

    /// Where the session starts, in order of preference: the workdir, the home
    /// directory, `/`. Tried after the switch to the user, as sshd does, so the
    /// user's own permissions decide.
    fn working_dirs(&self) -> std::io::Result<Vec<CString>> {
        [self.workdir, self.user.home.as_path(), Path::new("/")]
            .iter()
            .map(|dir| CString::new(dir.as_os_str().as_bytes()).map_err(std::io::Error::other))
            .collect()
    }

    /// Spawns `program` with pipes for stdin, stdout and stderr.
    pub fn spawn_piped(&self, program: &Program) -> std::io::Result<tokio::process::Child> {
        let mut cmd = self.command(program)?;
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd.spawn()
    }

    /// Spawns `program` on the terminal whose slave side is `tty`, making it the
    /// controlling terminal of the new process session.
    pub fn spawn_on_tty(
        &self,
        program: &Program,
        tty: &OwnedFd,
    ) -> std::io::Result<tokio::process::Child> {
        let mut cmd = self.command(program)?;
        cmd.stdin(Stdio::from(tty.try_clone()?))
            .stdout(Stdio::from(tty.try_clone()?))
            .stderr(Stdio::from(tty.try_clone()?));
        // SAFETY: ioctl on fd 0, which is the tty after the stdio dup2s; async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                if libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cmd.spawn()
    }
}

fn login_argv0(shell: &Path) -> OsString {
    let base = shell
        .file_name()
        .map_or_else(|| OsString::from("sh"), |n| n.to_owned());
    let mut argv0 = OsString::from("-");
    argv0.push(base);
    argv0
}

/// Runs in the child between fork and exec: a new process session, then the
/// user's groups, gid and uid, in that order (the uid last, while we may still
/// change the others), then the first working directory the user may enter.
fn enter_session(creds: Option<&Credentials>, dirs: &[CString]) -> std::io::Result<()> {
    // SAFETY: plain syscalls on values owned by the caller, valid across fork.
    unsafe {
        if libc::setsid() < 0 {
            return Err(std::io::Error::last_os_error());
        }
        if let Some(creds) = creds
            && (libc::setgroups(creds.groups.len(), creds.groups.as_ptr()) < 0
                || libc::setgid(creds.gid) < 0
                || libc::setuid(creds.uid) < 0)
        {
            return Err(std::io::Error::last_os_error());
        }
        for dir in dirs {
            if libc::chdir(dir.as_ptr()) == 0 {
                break;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn login_shell_argv0_has_a_dash() {
        assert_eq!(login_argv0(Path::new("/bin/bash")), "-bash");
        assert_eq!(login_argv0(Path::new("/")), "-sh");
    }
}
