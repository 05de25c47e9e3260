//! The CLI's login: where the HTTP API is and the key (`warren login` saves them),
//! and a [`warren_client::Client`] for it.

use std::path::PathBuf;

use anyhow::Context;
use serde::{Deserialize, Serialize};
use warren_client::Client;

/// What `warren login` saves (0600): the API's URL and an API key.
#[derive(Serialize, Deserialize)]
pub struct Config {
    pub url: String,
    pub api_key: String,
    /// A PEM certificate to trust for the API's HTTPS (a gateway's self-signed
    /// one), besides the system's roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_cert: Option<PathBuf>,
}

pub fn config_path() -> PathBuf {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("warren").join("config.json")
}

impl Config {
    /// `WARREN_URL`/`WARREN_API_KEY` (with `WARREN_CACERT`) win over the saved file.
    pub fn load() -> anyhow::Result<Config> {
        if let (Ok(url), Ok(api_key)) =
            (std::env::var("WARREN_URL"), std::env::var("WARREN_API_KEY"))
        {
            return Ok(Config {
                url,
                api_key,
                ca_cert: std::env::var_os("WARREN_CACERT").map(PathBuf::from),
            });
        }
        let path = config_path();
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "not logged in ({} is missing): run `warren login` or `warren up`",
                path.display()
            )
        })?;
        serde_json::from_str(&text).with_context(|| format!("{} is not valid", path.display()))
    }

    pub fn save(&self) -> anyhow::Result<PathBuf> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let path = config_path();
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let tmp = path.with_extension("tmp");
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("writing {}", tmp.display()))?;
        file.write_all(serde_json::to_string_pretty(self)?.as_bytes())?;
        std::fs::rename(&tmp, &path)?;
        Ok(path)
    }

    /// A client of the API this config names (trusting its `ca_cert` too).
    pub fn client(&self) -> anyhow::Result<Client> {
        let mut builder = Client::builder(&self.url, &self.api_key);
        if let Some(path) = &self.ca_cert {
            let pem = std::fs::read(path)
                .with_context(|| format!("reading the CA certificate {}", path.display()))?;
            builder = builder
                .ca_certificate_pem(&pem)
                .with_context(|| format!("{} is not a PEM certificate", path.display()))?;
        }
        Ok(builder.build()?)
    }
}
