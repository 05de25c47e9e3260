//! Running a client on a real terminal: a pseudo-terminal whose master the test holds,
//! so it can type, read what a person would see, and resize the window (which sends
//! the client SIGWINCH, as a terminal emulator does).

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::process::{ChildGuard, SharedBuf};

/// A process on the slave side of a fresh pty, as session leader with it as its
/// controlling terminal. Killed on drop.
pub struct Pty {
    master: File,
    output: SharedBuf,
    reaper: ChildGuard,
}

impl Pty {
    /// Start `program args…` on a pty of `rows`×`cols` with extra environment.
    pub fn spawn(
        program: &str,
        args: &[String],
        envs: &[(&str, &str)],
        rows: u16,
        cols: u16,
    ) -> Result<Pty> {
        let (master, slave) = open_pty(rows, cols)?;
        let mut cmd = Command::new(program);
        cmd.args(args);
        for (k, v) in envs {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::from(slave.try_clone()?))
            .stdout(Stdio::from(slave.try_clone()?))
            .stderr(Stdio::from(slave));
        // SAFETY: the closure only calls async-signal-safe functions (setsid, ioctl)
        // between fork and exec, and touches no memory of the parent.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::ioctl(0, libc::TIOCSCTTY as _, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().with_context(|| format!("spawning {program}"))?;
        let master = File::from(master);
        let output = SharedBuf::default();
        output.fill_from(master.try_clone()?);
        Ok(Pty {
            master,
            output,
            reaper: ChildGuard::new(child),
        })
    }

    /// Type these bytes.
    pub fn send(&mut self, bytes: impl AsRef<[u8]>) -> Result<()> {
        self.master.write_all(bytes.as_ref())?;
        self.master.flush()?;
        Ok(())
    }

    /// Wait for `text` on the screen; returns everything shown up to and including it.
    pub fn expect(&self, text: &str, timeout: Duration) -> Result<String> {
        let seen = self.output.wait_for(text.as_bytes(), timeout)?;
        Ok(String::from_utf8_lossy(&seen).into_owned())
    }

    /// Everything shown and not yet consumed by [`Pty::expect`].
    pub fn pending_output(&self) -> String {
        String::from_utf8_lossy(&self.output.contents()).into_owned()
    }

    /// Change the window size, as a terminal emulator does when its window is resized.
    pub fn resize(&self, rows: u16, cols: u16) -> Result<()> {
        let ws = winsize(rows, cols);
        // SAFETY: TIOCSWINSZ reads one `winsize` from the pointer, which is valid.
        let rc = unsafe { libc::ioctl(self.master.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
        if rc < 0 {
            bail!("TIOCSWINSZ: {}", std::io::Error::last_os_error());
        }
        Ok(())
    }

    pub fn pid(&self) -> u32 {
        self.reaper.pid()
    }

    /// Wait for the process to exit.
    pub fn wait(&mut self, timeout: Duration) -> Result<ExitStatus> {
        match self.reaper.wait(timeout) {
            Some(status) => Ok(status),
            None => bail!(
                "still running after {timeout:?}; screen:\n{}",
                self.pending_output()
            ),
        }
    }
}

impl Drop for Pty {
    fn drop(&mut self) {
        self.reaper.kill(Duration::ZERO);
    }
}

fn winsize(rows: u16, cols: u16) -> libc::winsize {
    libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    }
}

fn open_pty(rows: u16, cols: u16) -> Result<(OwnedFd, OwnedFd)> {
    let mut master = -1;
    let mut slave = -1;
    let ws = winsize(rows, cols);
    // SAFETY: openpty writes two fds to the valid out-pointers; name and termios may be
    // null; the winsize pointer is valid for reads.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            &ws,
        )
    };
    if rc < 0 {
        bail!("openpty: {}", std::io::Error::last_os_error());
    }
    // SAFETY: openpty succeeded, so both are fresh fds we now own.
    let fds = unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
    for fd in [&fds.0, &fds.1] {
        // SAFETY: fcntl on an fd we own.
        unsafe {
            libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC);
        }
    }
    Ok(fds)
}
