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

/// How often a waiting agent looks for its identity: the claim's latency is at most
/// this much more than a cold start's handoff.
const POLL: Duration = Duration::from_millis(3);
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

/// Waits for `path`, reads it once and removes it (its env holds secrets).
pub async fn wait_for(path: &Path) -> Result<Identity> {
    tracing::info!(path = %path.display(), "pooled: waiting for an identity");
    loop {
        match read(path) {
            Ok(Some(identity)) => {
                let _ = std::fs::remove_file(path);
                tracing::info!(sandbox = %identity.sandbox_id, "claimed");
                return Ok(identity);
            }
            Ok(None) => tokio::time::sleep(POLL).await,
            Err(e) => {
                let _ = std::fs::remove_file(path);
                return Err(e);
            }
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
    async fn a_bad_identity_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("identity");
        std::fs::write(&path, "{").unwrap();
        assert!(wait_for(&path).await.is_err());
    }
}
