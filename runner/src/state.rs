//! What a runner keeps in its data dir: its own key, the gateway's pinned host key,
//! and its identity (runner id, gateway address) from joining.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result};
use russh::keys::{PrivateKey, PublicKey};
use serde::{Deserialize, Serialize};

/// The runner's ed25519 key (OpenSSH format, 0600).
pub const KEY_FILE: &str = "runner_key";
/// The gateway's host key, pinned at join (one OpenSSH public key line).
pub const GATEWAY_KEY_FILE: &str = "gateway_host_key.pub";
/// The runner's identity, written at join.
pub const IDENTITY_FILE: &str = "runner.json";
/// Sandbox work directories live under this.
pub const SANDBOXES_DIR: &str = "sandboxes";

/// What joining gave the runner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub runner_id: String,
    pub name: String,
    /// HOST:PORT of the gateway's runner endpoint.
    pub gateway: String,
}

/// A runner's data dir.
#[derive(Debug, Clone)]
pub struct DataDir {
    root: PathBuf,
}

impl DataDir {
    /// Creates the directory (0700) if needed.
    pub fn open(root: &Path) -> Result<DataDir> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(root)
            .with_context(|| format!("creating data dir {}", root.display()))?;
        Ok(DataDir {
            root: root.to_owned(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn sandboxes(&self) -> PathBuf {
        self.root.join(SANDBOXES_DIR)
    }

    /// The runner's key, generated (ed25519, 0600) on first use.
    pub fn key(&self) -> Result<PrivateKey> {
        Ok(warren_keys::load_or_generate_host_key(
            &self.root.join(KEY_FILE),
        )?)
    }

    pub fn save_identity(&self, identity: &Identity, gateway_key: &PublicKey) -> Result<()> {
        let line = gateway_key.to_openssh().context("encoding gateway key")?;
        write_file(
            &self.root.join(GATEWAY_KEY_FILE),
            format!("{line}\n").as_bytes(),
        )?;
        let json = serde_json::to_vec_pretty(identity)?;
        write_file(&self.root.join(IDENTITY_FILE), &json)
    }

    /// The identity and pinned gateway key; an error saying to join first if absent.
    pub fn load_identity(&self) -> Result<(Identity, PublicKey)> {
        let path = self.root.join(IDENTITY_FILE);
        let json = fs::read(&path).with_context(|| {
            format!(
                "reading {} (has this runner joined? run `warren-runner join` first)",
                path.display()
            )
        })?;
        let identity: Identity =
            serde_json::from_slice(&json).with_context(|| format!("parsing {}", path.display()))?;
        let key_path = self.root.join(GATEWAY_KEY_FILE);
        let line = fs::read_to_string(&key_path)
            .with_context(|| format!("reading {}", key_path.display()))?;
        let key = PublicKey::from_openssh(line.trim())
            .with_context(|| format!("parsing {}", key_path.display()))?;
        Ok((identity, key))
    }
}

/// Writes `bytes` to `path` (0600) through a temp file and a rename. Writers may
/// race (a create and a key sync both write `authorized_keys`): each has a temp
/// file of its own and the last rename wins, whole.
pub fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let mut name = path.file_name().unwrap_or_default().to_owned();
    name.push(format!(".{}.{n}.tmp", std::process::id()));
    let tmp = path.with_file_name(name);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    let written = f
        .write_all(bytes)
        .and_then(|()| f.sync_all())
        .and_then(|()| fs::rename(&tmp, path));
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written.with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn racing_writers_leave_one_whole_file_and_no_temp_files() {
        let dir = tempfile::TempDir::new().unwrap();
        let path = dir.path().join("authorized_keys");
        let writers: Vec<_> = (0..8u8)
            .map(|w| {
                let path = path.clone();
                std::thread::spawn(move || {
                    for _ in 0..50 {
                        write_file(&path, &[w; 4096]).unwrap();
                    }
                })
            })
            .collect();
        for w in writers {
            w.join().unwrap();
        }
        let bytes = fs::read(&path).unwrap();
        assert_eq!(bytes.len(), 4096);
        assert!(bytes.iter().all(|b| *b == bytes[0]), "a torn file");
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["authorized_keys"]);
    }
}
