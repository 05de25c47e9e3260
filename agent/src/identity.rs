//! The identity of a pooled agent: a warm-pool container starts before its sandbox
//! exists, so its agent sets up the user, host key and workspace, then waits for the
//! runner to write `identity` into the run directory (the sandbox id, the token key,
//! the create-time env). It listens only once it has one: until then nobody can log
//! in, and it reads the file once, so nothing written there later changes who it is.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use serde::Deserialize;

/// How often a waiting agent looks for its identity when it cannot be told (no
/// inotify): the claim's latency is at most this much more than a cold start's.
const POLL: Duration = Duration::from_millis(3);
/// With inotify, it looks this often anyway, in case an event was lost (a queue
/// overflow): an idle pool member wakes rarely instead of 300 times a second.
const RECHECK: Duration = Duration::from_secs(1);
/// The largest identity file read (the env is bounded by the API's body limit).
const MAX_BYTES: u64 = 4 << 20;

/// What the runner says at claim (`runner/src/backend/docker/pool.rs` writes it).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Identity {
    pub sandbox_id: String,
    pub token_key: String,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("sandbox_id", &self.sandbox_id)
            .field("env", &self.env.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// Waits for `path`, reads it once and removes it (its env holds secrets). It
/// sleeps on inotify for the file's directory (the runner's rename into it wakes
/// it); where inotify is not to be had, it polls.
pub async fn wait_for(path: &Path) -> Result<Identity> {
    tracing::info!(path = %path.display(), "pooled: waiting for an identity");
    // Watching starts before the first look, so a file that comes in between is
    // seen either way.
    let mut watch = path.parent().and_then(|dir| match DirWatch::new(dir) {
        Ok(watch) => Some(watch),
        Err(e) => {
            tracing::warn!(error = %e, "no inotify: polling for the identity");
            None
        }
    });
    loop {
        match read(path) {
            Ok(Some(identity)) => {
                let _ = std::fs::remove_file(path);
                tracing::info!(sandbox = %identity.sandbox_id, "claimed");
                return Ok(identity);
            }
            Ok(None) => {
                let woken = match &mut watch {
                    Some(watch) => tokio::time::timeout(RECHECK, watch.changed()).await,
                    None => {
                        tokio::time::sleep(POLL).await;
                        Ok(Ok(()))
                    }
                };
                // A watch that fails would wake at once every time: poll instead.
                if let Ok(Err(e)) = woken {
                    tracing::warn!(error = %e, "inotify failed: polling for the identity");
                    watch = None;
                }
            }
            Err(e) => {
                let _ = std::fs::remove_file(path);
                return Err(e);
            }
        }
    }
}

/// An inotify watch on a directory for files written or moved into it.
struct DirWatch {
    fd: tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>,
}

impl DirWatch {
    fn new(dir: &Path) -> std::io::Result<DirWatch> {
        use std::os::fd::FromRawFd;
        use std::os::unix::ffi::OsStrExt;
        // SAFETY: plain syscall; the fd returned is checked and then owned.
        let raw = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        if raw < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `raw` is a new descriptor nothing else owns.
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(raw) };
        let dir = std::ffi::CString::new(dir.as_os_str().as_bytes())
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
        let mask = libc::IN_MOVED_TO | libc::IN_CLOSE_WRITE | libc::IN_CREATE;
        // SAFETY: `fd` is an inotify descriptor and `dir` a NUL-terminated path.
        if unsafe { libc::inotify_add_watch(raw, dir.as_ptr(), mask) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` is owned here and stays open as long as the AsyncFd.
        let fd = unsafe { tokio::io::unix::AsyncFd::register(fd) }.map_err(std::io::Error::from)?;
        Ok(DirWatch { fd })
    }

    /// Returns once something changed in the directory (its events read and
    /// dropped: the caller looks for itself).
    async fn changed(&mut self) -> std::io::Result<()> {
        use std::os::fd::AsRawFd;
        loop {
            let mut ready = self.fd.readable().await?;
            let mut events = [0u8; 4096];
            // SAFETY: reads into a buffer of the length given.
            let n = unsafe {
                libc::read(
                    self.fd.get_ref().as_raw_fd(),
                    events.as_mut_ptr().cast(),
                    events.len(),
                )
            };
            if n > 0 {
                return Ok(());
            }
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::WouldBlock {
                return Err(e);
            }
            ready.clear_ready();
        }
    }
}

/// The identity at `path`, or `None` while there is none. The runner writes it
/// through a temporary file and a rename, so a file that exists is whole.
fn read(path: &Path) -> Result<Option<Identity>> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path);
    let file = match file {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
    };
    let mut text = Vec::new();
    file.take(MAX_BYTES)
        .read_to_end(&mut text)
        .with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_slice(&text)
        .map(Some)
        .with_context(|| format!("{} is not an identity", path.display()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_identity_is_read_once_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("identity");
        let waiting = tokio::spawn({
            let path = path.clone();
            async move { wait_for(&path).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished(), "no identity yet");
        std::fs::write(
            &path,
            r#"{"sandbox_id":"sbx-x","token_key":"k","env":{"A":"b"}}"#,
        )
        .unwrap();
        let identity = waiting.await.unwrap().unwrap();
        assert_eq!(identity.sandbox_id, "sbx-x");
        assert_eq!(identity.env.get("A").map(String::as_str), Some("b"));
        assert!(!path.exists(), "removed after reading");
        assert!(!format!("{identity:?}").contains("token_key"));
    }

    #[tokio::test]
    async fn a_file_renamed_into_the_directory_wakes_the_watch() {
        let dir = tempfile::tempdir().unwrap();
        let mut watch = DirWatch::new(dir.path()).unwrap();
        let quiet = tokio::time::timeout(Duration::from_millis(50), watch.changed()).await;
        assert!(quiet.is_err(), "nothing happened yet");
        // As the runner writes it: a temporary file elsewhere, renamed in.
        let elsewhere = tempfile::tempdir_in(dir.path().parent().unwrap()).unwrap();
        let tmp = elsewhere.path().join("identity.tmp");
        std::fs::write(&tmp, "{}").unwrap();
        std::fs::rename(&tmp, dir.path().join("identity")).unwrap();
        let woken = tokio::time::timeout(Duration::from_secs(10), watch.changed()).await;
        assert!(
            matches!(woken, Ok(Ok(()))),
            "woken by the rename: {woken:?}"
        );
    }

    #[tokio::test]
    async fn a_bad_identity_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("identity");
        std::fs::write(&path, "{").unwrap();
        assert!(wait_for(&path).await.is_err());
    }
}
