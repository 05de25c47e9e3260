//! Activity for the runner's idle reaper, published as the mtime of a file.
//!
//! A sandbox is active while bytes flow through a session (either way), or while
//! something runs: any process below the agent other than an idle login shell (a
//! shell at its prompt, with no children) or an idle SFTP server. A client that
//! merely stays connected keeps nothing awake — SSH keepalives are not session
//! data — while `sleep 3600` or a background build does.
//!
//! Every [`TICK`] the agent touches the file if it saw activity since the last
//! tick, so the runner reads "last active" with one `stat`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// How often activity is published.
pub const TICK: Duration = Duration::from_secs(5);

static SAW_DATA: AtomicBool = AtomicBool::new(false);

/// Notes that session data passed (cheap: one relaxed store).
pub fn touch() {
    SAW_DATA.store(true, Ordering::Relaxed);
}

/// Publishes activity to `path` until the process ends.
pub fn spawn_publisher(path: PathBuf) {
    tokio::spawn(async move {
        let me = std::process::id();
        let _ = write(&path);
        let mut tick = tokio::time::interval(TICK);
        loop {
            tick.tick().await;
            let data = SAW_DATA.swap(false, Ordering::Relaxed);
            let busy = data
                || tokio::task::spawn_blocking(move || something_runs(me))
                    .await
                    .unwrap_or(true);
            if busy && let Err(e) = write(&path) {
                tracing::debug!(error = %e, "cannot publish activity");
            }
        }
    });
}

fn write(path: &Path) -> std::io::Result<()> {
    std::fs::write(path, b"")
}

/// One process as /proc shows it.
struct Proc {
    ppid: u32,
    /// argv[0] starts with '-' (a login shell, as the agent starts them).
    login_shell: bool,
    sftp_server: bool,
}

fn read_proc(pid: u32) -> Option<Proc> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces: parse after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let ppid = rest.split(' ').nth(1)?.parse().ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let mut args = cmdline.split(|b| *b == 0);
    let argv0 = args.next().unwrap_or_default();
    let argv1 = args.next().unwrap_or_default();
    Some(Proc {
        ppid,
        login_shell: argv0.starts_with(b"-"),
        sftp_server: argv1 == b"sftp-server",
    })
}

/// Whether any process below `agent` does something: anything but login shells and
/// SFTP servers without children.
fn something_runs(agent: u32) -> bool {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return true; // cannot tell: never reap on a guess
    };
    let procs: HashMap<u32, Proc> = entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| Some((pid, read_proc(pid)?)))
        .collect();
    let below_agent = |mut pid: u32| {
        for _ in 0..64 {
            match procs.get(&pid) {
                Some(p) if p.ppid == agent => return true,
                Some(p) if p.ppid > 1 => pid = p.ppid,
                _ => return false,
            }
        }
        false
    };
    procs.iter().any(|(pid, p)| {
        if *pid == agent || !below_agent(*pid) {
            return false;
        }
        let has_children = procs.values().any(|c| c.ppid == *pid);
        !((p.login_shell || p.sftp_server) && !has_children)
    })
}

#[cfg(test)]
#[allow(clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn a_child_that_runs_counts() {
        let me = std::process::id();
        assert!(!something_runs(me));
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .expect("sleep");
        assert!(something_runs(me));
        let _ = child.kill();
        let _ = child.wait();
        assert!(!something_runs(me));
    }
}
