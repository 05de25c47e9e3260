//! The HTTP API beside a [`Stack`]'s gateway, with its own lifecycle (so that a
//! test can "restart" the API and lose its memory), one-line requests to it, and
//! [`ApiStack`]: the API tests' setup in one call.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use serde_json::{Value, json};
use warren_keys::{SandboxId, TokenSigner};

use super::{RunnerProc, Stack};
use crate::{Client, Target};

/// The HTTP API on a [`Stack`]'s gateway, with a reqwest client for it.
pub struct Api {
    pub base: String,
    pub state: Arc<warren_gateway::api::ApiState>,
    pub http: reqwest::Client,
    server: tokio::task::JoinHandle<()>,
    reconciler: tokio::task::JoinHandle<()>,
}

impl Drop for Api {
    fn drop(&mut self) {
        self.server.abort();
        self.reconciler.abort();
    }
}

/// One HTTP exchange, read whole.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub request_id: Option<String>,
    pub content_type: Option<String>,
    pub text: String,
}

impl Reply {
    /// The body as JSON (`null` if it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.text).unwrap_or(serde_json::Value::Null)
    }

    /// `error.code` of an error reply.
    pub fn error_code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }
}

impl Stack {
    /// Starts the HTTP API on 127.0.0.1 (a free port), sharing this stack's store,
    /// runner hub, token signer and host key; the reconciler runs every
    /// `reconcile_every`.
    pub fn api(&self, reconcile_every: Duration) -> Result<Api> {
        use warren_gateway::api;
        self.rt.block_on(async {
            let key = warren_keys::load_or_generate_host_key(&self.data_dir().join("host_key"))?;
            let host_key_line =
                russh::keys::PublicKey::new(key.public_key().key_data().clone(), "")
                    .to_openssh()?;
            let signer = TokenSigner::load_or_generate(&self.data_dir().join("token_signer"))?;
            let mut lifecycle = warren_gateway::lifecycle::Lifecycle::new(
                self.store.clone(),
                self.hub.clone(),
                Arc::new(signer),
                "127.0.0.1".into(),
                self.ssh_port,
                host_key_line,
            );
            lifecycle.live = self.live.clone();
            lifecycle.recordings = self.recordings.clone();
            let state = Arc::new(api::ApiState::over(Arc::new(lifecycle)));
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            let base = format!("http://{}", listener.local_addr()?);
            let router = api::router(state.clone());
            let server = tokio::spawn(async move {
                let _ = api::serve(listener, router).await;
            });
            let reconciler = warren_gateway::lifecycle::spawn_reconciler(
                state.lifecycle.clone(),
                reconcile_every,
            );
            let http = reqwest::Client::builder()
                .timeout(Duration::from_secs(90))
                .build()?;
            anyhow::Ok(Api {
                base,
                state,
                http,
                server,
                reconciler,
            })
        })
    }

    /// An admin account made through the store; returns its API key.
    pub fn admin(&self, name: &str) -> Result<String> {
        self.rt.block_on(async {
            let user = self.store.create_user(name, true).await?;
            let key = self.store.create_api_key(&user.id, "test").await?;
            anyhow::Ok(key.secret.expose().to_owned())
        })
    }

    /// One request to `api`: `body` is sent as JSON when given.
    pub fn call(
        &self,
        api: &Api,
        method: &str,
        path: &str,
        key: Option<&str>,
        body: Option<serde_json::Value>,
    ) -> Result<Reply> {
        let mut request = api.http.request(
            reqwest::Method::from_bytes(method.as_bytes())?,
            format!("{}{path}", api.base),
        );
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        self.send(request)
    }

    /// Sends a request built by hand (raw bodies, odd headers).
    pub fn send(&self, request: reqwest::RequestBuilder) -> Result<Reply> {
        self.rt.block_on(async {
            let response = request.send().await?;
            let header = |name: &str| {
                response
                    .headers()
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned)
            };
            let request_id = header("x-request-id");
            let content_type = header("content-type");
            let status = response.status().as_u16();
            let text = response.text().await?;
            anyhow::Ok(Reply {
                status,
                request_id,
                content_type,
                text,
            })
        })
    }
}

/// A user made through the API by an admin, with an SSH key registered.
pub struct Account {
    /// The user's API key.
    pub key: String,
    /// The user's SSH identity (aimed at nothing yet: see [`ApiStack::ssh`]).
    pub client: Client,
}

/// The API tests' stack: the in-process gateway, at most one process runner `r1`,
/// the HTTP API and an admin's API key. It is a [`Stack`] (deref) with one-line
/// requests (`get`, `post`, `delete`) and a helper per setup the tests repeat.
pub struct ApiStack {
    pub stack: Stack,
    r1: Option<RunnerProc>,
    pub api: Api,
    /// The API key of the admin `root`.
    pub admin: String,
}

impl std::ops::Deref for ApiStack {
    type Target = Stack;

    fn deref(&self) -> &Stack {
        &self.stack
    }
}

impl ApiStack {
    /// A stack with a runner `r1` (started with `runner_args` added), the API
    /// reconciling every `reconcile_every`, and an admin.
    pub fn start(runner_args: &[&str], reconcile_every: Duration) -> Result<ApiStack> {
        let stack = Stack::start()?;
        let runner = stack.runner_with("r1", runner_args)?;
        ApiStack::over(stack, Some(runner), reconcile_every, None)
    }

    /// The same without a runner (tests that start one later, or need none).
    pub fn without_runner(reconcile_every: Duration) -> Result<ApiStack> {
        ApiStack::over(Stack::start()?, None, reconcile_every, None)
    }

    /// The API over `stack`, with `runner` as `r1`, and `admin`'s API key (made
    /// through the store when `None`).
    pub(super) fn over(
        stack: Stack,
        runner: Option<RunnerProc>,
        reconcile_every: Duration,
        admin: Option<String>,
    ) -> Result<ApiStack> {
        let api = stack.api(reconcile_every)?;
        let admin = match admin {
            Some(admin) => admin,
            None => stack.admin("root")?,
        };
        Ok(ApiStack {
            stack,
            r1: runner,
            api,
            admin,
        })
    }

    /// The runner `r1` the stack started with.
    pub fn r1(&self) -> Result<&RunnerProc> {
        self.r1
            .as_ref()
            .context("this stack started without a runner")
    }

    /// One request with `key`'s bearer: `body` is sent as JSON when given.
    pub fn call(
        &self,
        method: &str,
        path: &str,
        key: Option<&str>,
        body: Option<Value>,
    ) -> Result<Reply> {
        self.stack.call(&self.api, method, path, key, body)
    }

    pub fn get(&self, path: &str, key: &str) -> Result<Reply> {
        self.call("GET", path, Some(key), None)
    }

    pub fn post(&self, path: &str, key: &str, body: Value) -> Result<Reply> {
        self.call("POST", path, Some(key), Some(body))
    }

    /// A POST without a body.
    pub fn post_empty(&self, path: &str, key: &str) -> Result<Reply> {
        self.call("POST", path, Some(key), None)
    }

    pub fn delete(&self, path: &str, key: &str) -> Result<Reply> {
        self.call("DELETE", path, Some(key), None)
    }

    /// A user `name` made by the admin, with an SSH key added through the API.
    pub fn account(&self, name: &str) -> Result<Account> {
        let made = self.post("/v1/users", &self.admin, json!({"name": name}))?;
        ensure!(made.status == 201, "create user {name}: {made:?}");
        let key = made.json()["api_key"]
            .as_str()
            .context("api_key")?
            .to_owned();
        let client = Client::new(Target::new("127.0.0.1", self.ssh_port, "x"))?;
        let added = self.post(
            "/v1/ssh-keys",
            &key,
            json!({"name": "laptop", "public_key": client.public_key()}),
        )?;
        ensure!(added.status == 201, "add ssh key: {added:?}");
        Ok(Account { key, client })
    }

    /// A sandbox created with `key` from `body`; its view.
    pub fn create_sandbox(&self, key: &str, body: Value) -> Result<Value> {
        let made = self.post("/v1/sandboxes", key, body)?;
        ensure!(made.status == 201, "create sandbox: {made:?}");
        Ok(made.json())
    }

    /// A sandbox of `owner`'s with the default options; its id.
    pub fn sandbox_of(&self, owner: &Account) -> Result<String> {
        let made = self.create_sandbox(&owner.key, json!({}))?;
        Ok(made["id"].as_str().context("id")?.to_owned())
    }

    /// Shares sandbox `id` (of `owner`'s) with `user`, secrets as `body` says.
    pub fn share(&self, owner: &Account, id: &str, body: Value) -> Result<Reply> {
        self.post(&format!("/v1/sandboxes/{id}/shares"), &owner.key, body)
    }

    /// `account`'s SSH identity aimed at sandbox `id` through the front door.
    pub fn ssh(&self, account: &Account, id: &str) -> Result<Client> {
        let sandbox = SandboxId::parse(id)?;
        Ok(account.client.clone().with_target(self.target(&sandbox)))
    }

    /// The `state` of sandbox `id` as `key` sees it.
    pub fn state_of(&self, key: &str, id: &str) -> Result<String> {
        let got = self.get(&format!("/v1/sandboxes/{id}"), key)?;
        ensure!(got.status == 200, "get {id}: {got:?}");
        Ok(got.json()["state"].as_str().unwrap_or_default().to_owned())
    }

    /// Every sandbox `key` sees, deleted ones included, as `"id":"state"` lines.
    pub fn sandbox_states(&self, key: &str) -> Result<Vec<String>> {
        let got = self.get("/v1/sandboxes?include_deleted=true", key)?;
        ensure!(got.status == 200, "list: {got:?}");
        Ok(got.json()["sandboxes"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|s| format!("{}:{}", s["id"], s["state"]))
                    .collect()
            })
            .unwrap_or_default())
    }

    /// The events of sandbox `id` as `key` sees them.
    pub fn events_of(&self, key: &str, id: &str) -> Result<Vec<Value>> {
        let got = self.get(&format!("/v1/sandboxes/{id}/events"), key)?;
        ensure!(got.status == 200, "events {id}: {got:?}");
        Ok(got.json()["events"].as_array().cloned().unwrap_or_default())
    }
}

/// Every error reply has the one shape, and its request id is the header's.
pub fn check_error(reply: &Reply, status: u16, code: &str) -> Result<()> {
    ensure!(
        reply.status == status,
        "expected {status} {code}: {reply:?}"
    );
    let body = reply.json();
    ensure!(body["error"]["code"] == code, "expected {code}: {reply:?}");
    ensure!(
        body["error"]["message"].is_string(),
        "no message: {reply:?}"
    );
    let id = body["error"]["request_id"].as_str().unwrap_or_default();
    ensure!(
        !id.is_empty() && reply.request_id.as_deref() == Some(id),
        "request ids differ: {reply:?}"
    );
    Ok(())
}
