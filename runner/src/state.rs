//! What a runner keeps in its data dir: its own key, the gateway's pinned host key,
//! and its identity (runner id, gateway address) from joining.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

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

/// Writes `bytes` to `path` (0600) through a temp file and a rename.
pub fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let _ = fs::remove_file(&tmp);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
