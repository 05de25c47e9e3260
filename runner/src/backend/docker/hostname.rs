//! A running container's hostname, changed from the host: a claimed pool member takes
//! its sandbox's id as a cold sandbox has it. The agent cannot (no CAP_SYS_ADMIN), so
//! the runner joins the container's UTS namespace on a thread of its own, which ends
//! right after, and rewrites the `/etc/hostname` and `/etc/hosts` Docker keeps for the
//! container. Under a runtime with its own kernel (gVisor) the namespace is not the
//! sandbox's: the files change, `uname -n` does not.

use std::os::fd::AsRawFd;

use super::*;

/// Where the container runs and Docker's files for it (from an inspect).
#[derive(Clone)]
pub(super) struct Host {
    pub pid: i64,
    pub hostname_path: Option<String>,
    pub hosts_path: Option<String>,
}

impl Host {
    pub(super) fn of(info: &bollard::models::ContainerInspectResponse) -> Option<Host> {
        Some(Host {
            pid: info.state.as_ref()?.pid.filter(|p| *p > 0)?,
            hostname_path: info.hostname_path.clone(),
            hosts_path: info.hosts_path.clone(),
        })
    }
}

/// Renames the host `old` → `new` in the container.
pub(super) async fn rename(host: Host, old: &str, new: &str) -> Result<()> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let name = new.to_owned();
    let pid = host.pid;
    std::thread::Builder::new()
        .name("set-hostname".into())
        .spawn(move || {
            let _ = tx.send(set_in_namespace(pid, &name));
        })
        .context("starting a thread")?;
    rx.await.context("the hostname thread ended")??;
    if let Some(path) = &host.hostname_path {
        overwrite(path, &format!("{new}\n"))?;
    }
    if let Some(path) = &host.hosts_path {
        let hosts = fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
        overwrite(path, &hosts.replace(old, new))?;
    }
    Ok(())
}

/// Rewrites Docker's file in place: the container has this very inode bind-mounted,
/// so a new file renamed over it would not be seen.
fn overwrite(path: &str, text: &str) -> Result<()> {
    use std::io::Write;
    fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .with_context(|| format!("writing {path}"))
}

/// On this thread only: joins `pid`'s UTS namespace and sets its hostname. The
/// thread must end afterwards (it stays in that namespace).
fn set_in_namespace(pid: i64, name: &str) -> Result<()> {
    let ns = fs::File::open(format!("/proc/{pid}/ns/uts"))
        .with_context(|| format!("opening the UTS namespace of {pid}"))?;
    // SAFETY: setns on a descriptor we own, for this thread only (CLONE_NEWUTS is
    // allowed in a multi-threaded process).
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWUTS) } != 0 {
        return Err(std::io::Error::last_os_error()).context("entering the UTS namespace");
    }
    // SAFETY: a valid pointer and its length.
    if unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) } != 0 {
        return Err(std::io::Error::last_os_error()).context("sethostname");
    }
    Ok(())
}
