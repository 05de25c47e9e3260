//! A typed client of Warren's HTTP API: one method per endpoint, answering with
//! [`warren_api`]'s views, so a field renamed in the API fails to compile here.
//!
//! ```no_run
//! # async fn demo() -> Result<(), warren_client::Error> {
//! let api = warren_client::Client::builder("http://127.0.0.1:8080", "wk_...").build()?;
//! let created = api.create_sandbox(&warren_api::CreateSandbox::default()).await?;
//! println!("ssh -p {} {}@{}", created.sandbox.ssh.port, created.sandbox.id, created.sandbox.ssh.host);
//! # Ok(()) }
//! ```
//!
//! A refusal is [`Error::Api`], with the API's [`ErrorCode`], message and request id.
//! The API key is sent as a bearer token and never shown in an error.

use std::time::Duration;

use reqwest::{Method, StatusCode, Url};
use serde::Serialize;
use serde::de::DeserializeOwned;
pub use warren_api;
use warren_api::{
    ApiKeyList, CreatePullRequest, CreateSandbox, CreatedApiKey, CreatedSandbox, CreatedUser,
    ErrorBody, ErrorCode, EventList, ForkSandbox, ForkedView, Health, ListSandboxes,
    MergePullRequest, MergedView, NewApiKey, NewShare, NewSshKey, NewToken, NewUser,
    PullRequestView, RecordingQuery, RunnerList, SandboxList, SandboxView, SessionList, ShareList,
    SnapshotList, SnapshotView, SshKeyList, SshKeyView, TakeSnapshot,
};

/// How long one call may take by default (a create pulls its image first).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

/// What a call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The API refused or failed the request, in its error shape.
    #[error("{message} (HTTP {status})")]
    Api {
        status: u16,
        code: ErrorCode,
        message: String,
        /// The `x-request-id` the gateway logged it under.
        request_id: String,
    },
    /// A non-2xx answer that is not the API's error shape (a proxy's page, or a
    /// code this client does not know); `body` is its text, cut short.
    #[error("{body} (HTTP {status})")]
    Http { status: u16, body: String },
    /// The API could not be reached: refused, timed out, or its certificate is not
    /// trusted (`untrusted_certificate`).
    #[error("cannot reach the Warren API at {url}{}", if *.untrusted_certificate {
        " (a gateway with a self-signed certificate: `warren login --cacert <its cert.pem>`, or WARREN_CACERT)"
    } else { "" })]
    Unreachable {
        url: String,
        untrusted_certificate: bool,
        #[source]
        source: reqwest::Error,
    },
    /// A 2xx answer that is not the JSON expected.
    #[error("the API answered something that is not the expected JSON")]
    Decode(#[source] serde_json::Error),
    /// The base URL is not an http(s) URL.
    #[error("{0:?} is not an http:// or https:// URL")]
    BadUrl(String),
    /// A CA certificate that is not PEM.
    #[error("not a PEM certificate")]
    Certificate,
    /// The HTTP client could not be set up.
    #[error("cannot set up the HTTP client")]
    Setup(#[source] reqwest::Error),
}

impl Error {
    /// The API's error code, if the API answered with one.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Error::Api { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// The HTTP status, if the API answered at all.
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Api { status, .. } | Error::Http { status, .. } => Some(*status),
            _ => None,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Sets up a [`Client`]: the API's base URL, an API key, and optionally extra
/// trusted roots and a timeout.
pub struct ClientBuilder {
    url: String,
    api_key: String,
    roots: Vec<reqwest::Certificate>,
    timeout: Duration,
}

impl ClientBuilder {
    /// Also trusts this PEM certificate (a gateway's self-signed one) for HTTPS,
    /// besides the built-in roots.
    /// (Every certificate of a PEM bundle.)
    pub fn ca_certificate_pem(mut self, pem: &[u8]) -> Result<ClientBuilder> {
        let certificates =
            reqwest::Certificate::from_pem_bundle(pem).map_err(|_| Error::Certificate)?;
        if certificates.is_empty() {
            return Err(Error::Certificate);
        }
        self.roots.extend(certificates);
        Ok(self)
    }

    /// How long one call may take (default [`DEFAULT_TIMEOUT`]).
    pub fn timeout(mut self, timeout: Duration) -> ClientBuilder {
        self.timeout = timeout;
        self
    }

    pub fn build(self) -> Result<Client> {
        let base = Url::parse(&self.url)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && !u.cannot_be_a_base())
            .ok_or_else(|| Error::BadUrl(self.url.clone()))?;
        let mut http = reqwest::Client::builder()
            .timeout(self.timeout)
            .user_agent(concat!("warren-client/", env!("CARGO_PKG_VERSION")));
        for root in self.roots {
            http = http.add_root_certificate(root);
        }
        Ok(Client {
            http: http.build().map_err(Error::Setup)?,
            shown_url: self.url.trim_end_matches('/').to_owned(),
            base,
            api_key: self.api_key,
        })
    }
}

/// Warren's HTTP API, as one account (its API key).
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: Url,
    /// The URL as given, for messages.
    shown_url: String,
    api_key: String,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("url", &self.shown_url)
            .field("api_key", &"<redacted>")
            .finish()
    }
}

/// A request body, or none.
enum Body<'a, B> {
    None,
    Json(&'a B),
}

const NO_BODY: Body<'static, ()> = Body::None;

impl Client {
    pub fn builder(url: impl Into<String>, api_key: impl Into<String>) -> ClientBuilder {
        ClientBuilder {
            url: url.into(),
            api_key: api_key.into(),
            roots: Vec::new(),
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// The API's base URL, as given.
    pub fn url(&self) -> &str {
        &self.shown_url
    }

    /// `base` + the path segments (each escaped: an id cannot add a segment).
    fn url_of(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        url
    }

    /// One call: the answer's body on 2xx, the API's error otherwise.
    async fn send<B: Serialize>(
        &self,
        method: Method,
        url: Url,
        body: Body<'_, B>,
    ) -> Result<reqwest::Response> {
        let mut request = self.http.request(method, url).bearer_auth(&self.api_key);
        if let Body::Json(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.map_err(|source| {
            // reqwest names the URL (never the key); the cause says what failed.
            let untrusted_certificate =
                std::iter::successors(Some(&source as &dyn std::error::Error), |e| e.source())
                    .any(|cause| cause.to_string().contains("certificate"));
            Error::Unreachable {
                url: self.shown_url.clone(),
                untrusted_certificate,
                source,
            }
        })?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let text = response.text().await.unwrap_or_default();
        Err(error_of(status, &text))
    }

    fn unreadable(&self, source: reqwest::Error) -> Error {
        Error::Unreachable {
            url: self.shown_url.clone(),
            untrusted_certificate: false,
            source,
        }
    }

    async fn json_at<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        url: Url,
        body: Body<'_, B>,
    ) -> Result<T> {
        let response = self.send(method, url, body).await?;
        let bytes = response.bytes().await.map_err(|e| self.unreadable(e))?;
        serde_json::from_slice(&bytes).map_err(Error::Decode)
    }

    async fn json<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        segments: &[&str],
        body: Body<'_, B>,
    ) -> Result<T> {
        self.json_at(method, self.url_of(segments), body).await
    }

    async fn text_at(&self, url: Url) -> Result<String> {
        let response = self.send(Method::GET, url, NO_BODY).await?;
        response.text().await.map_err(|e| self.unreadable(e))
    }

    async fn text(&self, segments: &[&str]) -> Result<String> {
        self.text_at(self.url_of(segments)).await
    }

    async fn empty<B: Serialize>(
        &self,
        method: Method,
        segments: &[&str],
        body: Body<'_, B>,
    ) -> Result<()> {
        self.send(method, self.url_of(segments), body).await?;
        Ok(())
    }

    // --- meta

    /// `GET /healthz` (no key needed).
    pub async fn health(&self) -> Result<Health> {
        self.json(Method::GET, &["healthz"], NO_BODY).await
    }

    // --- sandboxes

    /// `POST /v1/sandboxes`: creates a sandbox; its token is shown only here.
    pub async fn create_sandbox(&self, request: &CreateSandbox) -> Result<CreatedSandbox> {
        self.json(Method::POST, &["v1", "sandboxes"], Body::Json(request))
            .await
    }

    /// `GET /v1/sandboxes`: a page of your sandboxes, newest first.
    pub async fn list_sandboxes(&self, query: &ListSandboxes) -> Result<SandboxList> {
        let mut url = self.url_of(&["v1", "sandboxes"]);
        {
            let mut pairs = url.query_pairs_mut();
            if let Some(limit) = query.limit {
                pairs.append_pair("limit", &limit.to_string());
            }
            if let Some(cursor) = &query.cursor {
                pairs.append_pair("cursor", cursor);
            }
            if query.include_deleted {
                pairs.append_pair("include_deleted", "true");
            }
        }
        if url.query() == Some("") {
            url.set_query(None);
        }
        self.json_at(Method::GET, url, NO_BODY).await
    }

    /// Every page of [`Client::list_sandboxes`].
    pub async fn all_sandboxes(&self, include_deleted: bool) -> Result<Vec<SandboxView>> {
        let mut query = ListSandboxes {
            limit: Some(500),
            cursor: None,
            include_deleted,
        };
        let mut all = Vec::new();
        loop {
            let page = self.list_sandboxes(&query).await?;
            all.extend(page.sandboxes);
            match page.next_cursor {
                Some(next) => query.cursor = Some(next),
                None => return Ok(all),
            }
        }
    }

    /// `GET /v1/sandboxes/{id}`.
    pub async fn get_sandbox(&self, id: &str) -> Result<SandboxView> {
        self.json(Method::GET, &["v1", "sandboxes", id], NO_BODY)
            .await
    }

    /// `POST /v1/sandboxes/{id}/stop`: keeps its workspace.
    pub async fn stop_sandbox(&self, id: &str) -> Result<SandboxView> {
        self.json(Method::POST, &["v1", "sandboxes", id, "stop"], NO_BODY)
            .await
    }

    /// `POST /v1/sandboxes/{id}/start`.
    pub async fn start_sandbox(&self, id: &str) -> Result<SandboxView> {
        self.json(Method::POST, &["v1", "sandboxes", id, "start"], NO_BODY)
            .await
    }

    /// `DELETE /v1/sandboxes/{id}`: the sandbox and its workspace.
    pub async fn delete_sandbox(&self, id: &str) -> Result<()> {
        self.empty(Method::DELETE, &["v1", "sandboxes", id], NO_BODY)
            .await
    }

    /// `POST /v1/sandboxes/{id}/keepalive`: counts as activity.
    pub async fn keepalive(&self, id: &str) -> Result<()> {
        self.empty(Method::POST, &["v1", "sandboxes", id, "keepalive"], NO_BODY)
            .await
    }

    /// `POST /v1/sandboxes/{id}/token`: a new token; every earlier one is refused.
    pub async fn rotate_token(&self, id: &str) -> Result<NewToken> {
        self.json(Method::POST, &["v1", "sandboxes", id, "token"], NO_BODY)
            .await
    }

    /// `GET /v1/sandboxes/{id}/events`: its lifecycle changes, oldest first.
    pub async fn events(&self, id: &str) -> Result<EventList> {
        self.json(Method::GET, &["v1", "sandboxes", id, "events"], NO_BODY)
            .await
    }

    /// `GET /v1/sandboxes/{id}/ssh-config`: an OpenSSH `Host` block.
    pub async fn ssh_config(&self, id: &str) -> Result<String> {
        self.text(&["v1", "sandboxes", id, "ssh-config"]).await
    }

    /// `GET /v1/sandboxes/{id}/sessions`: its SSH sessions, oldest first.
    pub async fn sessions(&self, id: &str) -> Result<SessionList> {
        self.json(Method::GET, &["v1", "sandboxes", id, "sessions"], NO_BODY)
            .await
    }

    /// `GET /v1/sessions/{id}/recording`: asciicast v2 text.
    pub async fn recording(&self, session: &str, query: &RecordingQuery) -> Result<String> {
        let mut url = self.url_of(&["v1", "sessions", session, "recording"]);
        if let Some(channel) = query.channel {
            url.query_pairs_mut()
                .append_pair("channel", &channel.to_string());
        }
        self.text_at(url).await
    }

    // --- sharing

    /// `POST /v1/sandboxes/{id}/shares`.
    pub async fn share(&self, id: &str, request: &NewShare) -> Result<ShareList> {
        self.json(
            Method::POST,
            &["v1", "sandboxes", id, "shares"],
            Body::Json(request),
        )
        .await
    }

    /// `GET /v1/sandboxes/{id}/shares`.
    pub async fn shares(&self, id: &str) -> Result<ShareList> {
        self.json(Method::GET, &["v1", "sandboxes", id, "shares"], NO_BODY)
            .await
    }

    /// `DELETE /v1/sandboxes/{id}/shares/{user}`.
    pub async fn unshare(&self, id: &str, user: &str) -> Result<()> {
        self.empty(
            Method::DELETE,
            &["v1", "sandboxes", id, "shares", user],
            NO_BODY,
        )
        .await
    }

    // --- pull requests

    /// `POST /v1/sandboxes/{id}/pull-requests`: commits, pushes, opens one.
    pub async fn create_pull_request(
        &self,
        id: &str,
        request: &CreatePullRequest,
    ) -> Result<PullRequestView> {
        self.json(
            Method::POST,
            &["v1", "sandboxes", id, "pull-requests"],
            Body::Json(request),
        )
        .await
    }

    /// `POST /v1/sandboxes/{id}/pull-requests/{number}/merge`.
    pub async fn merge_pull_request(
        &self,
        id: &str,
        number: u64,
        request: &MergePullRequest,
    ) -> Result<MergedView> {
        let number = number.to_string();
        self.json(
            Method::POST,
            &["v1", "sandboxes", id, "pull-requests", &number, "merge"],
            Body::Json(request),
        )
        .await
    }

    // --- snapshots and forks

    /// `POST /v1/sandboxes/{id}/snapshots`: its file system, captured while it is
    /// frozen for `frozen_ms`.
    pub async fn create_snapshot(&self, id: &str, request: &TakeSnapshot) -> Result<SnapshotView> {
        self.json(
            Method::POST,
            &["v1", "sandboxes", id, "snapshots"],
            Body::Json(request),
        )
        .await
    }

    /// `GET /v1/snapshots`: yours (an admin's: everyone's), newest first.
    pub async fn snapshots(&self) -> Result<SnapshotList> {
        self.json(Method::GET, &["v1", "snapshots"], NO_BODY).await
    }

    /// `GET /v1/snapshots/{id}`.
    pub async fn get_snapshot(&self, id: &str) -> Result<SnapshotView> {
        self.json(Method::GET, &["v1", "snapshots", id], NO_BODY)
            .await
    }

    /// `DELETE /v1/snapshots/{id}`: sandboxes made from it keep running.
    pub async fn delete_snapshot(&self, id: &str) -> Result<()> {
        self.empty(Method::DELETE, &["v1", "snapshots", id], NO_BODY)
            .await
    }

    /// `POST /v1/sandboxes/{id}/fork`: the new sandboxes, each with its token
    /// (shown only here).
    pub async fn fork_sandbox(&self, id: &str, request: &ForkSandbox) -> Result<ForkedView> {
        self.json(
            Method::POST,
            &["v1", "sandboxes", id, "fork"],
            Body::Json(request),
        )
        .await
    }

    // --- keys and accounts

    /// `GET /v1/host-keys`: the gateway's SSH host key as known_hosts lines.
    pub async fn host_keys(&self) -> Result<String> {
        self.text(&["v1", "host-keys"]).await
    }

    /// `POST /v1/ssh-keys`.
    pub async fn add_ssh_key(&self, request: &NewSshKey) -> Result<SshKeyView> {
        self.json(Method::POST, &["v1", "ssh-keys"], Body::Json(request))
            .await
    }

    /// `GET /v1/ssh-keys`.
    pub async fn ssh_keys(&self) -> Result<SshKeyList> {
        self.json(Method::GET, &["v1", "ssh-keys"], NO_BODY).await
    }

    /// `DELETE /v1/ssh-keys/{id}`.
    pub async fn delete_ssh_key(&self, id: &str) -> Result<()> {
        self.empty(Method::DELETE, &["v1", "ssh-keys", id], NO_BODY)
            .await
    }

    /// `POST /v1/api-keys`: the key is shown only here.
    pub async fn create_api_key(&self, request: &NewApiKey) -> Result<CreatedApiKey> {
        self.json(Method::POST, &["v1", "api-keys"], Body::Json(request))
            .await
    }

    /// `GET /v1/api-keys`.
    pub async fn api_keys(&self) -> Result<ApiKeyList> {
        self.json(Method::GET, &["v1", "api-keys"], NO_BODY).await
    }

    /// `DELETE /v1/api-keys/{id}`.
    pub async fn revoke_api_key(&self, id: &str) -> Result<()> {
        self.empty(Method::DELETE, &["v1", "api-keys", id], NO_BODY)
            .await
    }

    /// `POST /v1/users` (admins): the account's first API key is shown only here.
    pub async fn create_user(&self, request: &NewUser) -> Result<CreatedUser> {
        self.json(Method::POST, &["v1", "users"], Body::Json(request))
            .await
    }

    /// `GET /v1/runners` (admins).
    pub async fn runners(&self) -> Result<RunnerList> {
        self.json(Method::GET, &["v1", "runners"], NO_BODY).await
    }
}

/// The most of a non-API error body kept in [`Error::Http`].
const MAX_SHOWN_BODY: usize = 512;

/// The error shape with any code (a newer gateway's).
#[derive(serde::Deserialize)]
struct LooseErrorBody {
    error: LooseErrorDetail,
}

#[derive(serde::Deserialize)]
struct LooseErrorDetail {
    message: String,
}

/// A non-2xx answer as an [`Error`].
fn error_of(status: StatusCode, text: &str) -> Error {
    match serde_json::from_str::<ErrorBody>(text) {
        Ok(ErrorBody { error }) => Error::Api {
            status: status.as_u16(),
            code: error.code,
            message: error.message,
            request_id: error.request_id,
        },
        Err(_) => {
            // A code this client does not know still has the API's message.
            let message = serde_json::from_str::<LooseErrorBody>(text)
                .ok()
                .map(|b| b.error.message);
            let mut body = message.unwrap_or_else(|| text.trim().to_owned());
            if let Some((cut, _)) = body.char_indices().nth(MAX_SHOWN_BODY) {
                body.truncate(cut);
            }
            Error::Http {
                status: status.as_u16(),
                body,
            }
        }
    }
}

#[cfg(test)]
mod tests;
