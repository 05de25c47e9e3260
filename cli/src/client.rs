//! The CLI's side of the HTTP API: where it is, the key, and typed calls.

use std::path::PathBuf;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use serde_json::Value;

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
}

pub struct Api {
    http: reqwest::Client,
    url: String,
    key: String,
}

impl Api {
    pub fn new(config: &Config) -> anyhow::Result<Api> {
        let mut http = reqwest::Client::builder().timeout(std::time::Duration::from_secs(600));
        if let Some(path) = &config.ca_cert {
            let pem = std::fs::read(path)
                .with_context(|| format!("reading the CA certificate {}", path.display()))?;
            let cert = reqwest::Certificate::from_pem(&pem)
                .with_context(|| format!("{} is not a PEM certificate", path.display()))?;
            http = http.add_root_certificate(cert);
        }
        Ok(Api {
            http: http.build()?,
            url: config.url.trim_end_matches('/').to_owned(),
            key: config.api_key.clone(),
        })
    }

    /// One call; a non-2xx answer becomes an error carrying the API's message.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<String> {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(&self.key);
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.map_err(|e| {
            // reqwest names the URL (never the key); the cause says what failed.
            let untrusted =
                std::iter::successors(Some(&e as &dyn std::error::Error), |e| e.source())
                    .any(|cause| cause.to_string().contains("certificate"));
            let hint = if untrusted {
                " (a gateway with a self-signed certificate: `warren login --cacert \
                 <its cert.pem>`, or WARREN_CACERT)"
            } else {
                ""
            };
            anyhow::Error::new(e)
                .context(format!("cannot reach the Warren API at {}{hint}", self.url))
        })?;
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        if !status.is_success() {
            let message = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
                .unwrap_or(text);
            bail!("{message} (HTTP {})", status.as_u16());
        }
        Ok(text)
    }

    pub async fn json(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<Value> {
        let text = self.call(method, path, body).await?;
        if text.is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&text).context("the API answered something that is not JSON")
    }
}
