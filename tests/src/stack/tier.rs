//! A gateway tier as operators run it: several `warren-gateway serve` processes on
//! one PostgreSQL store (a fresh schema of the test server at
//! `WARREN_TEST_POSTGRES_URL`, or of a server the test owns and may restart),
//! sharing keys through one cluster secret file, and `warren-runner` processes
//! (Docker or process backend, [`super::tier_runners`]), each joined through a
//! different gateway. Gateways can be killed, stopped cleanly and started again on
//! their own data directory and ports. Set up with the operator's commands, as
//! [`super::ServedStack`] is.

use std::cell::RefCell;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use tempfile::TempDir;
use warren_keys::SandboxId;
use warren_store::RunnerId;

use super::in_process::join_runner;
use super::served::{join_token, output_of};
use super::tier_runners::{Binaries, TierRunner, spawn_runner};
use crate::util::{free_port, prerequisite};
use crate::{ChildGuard, Client, Cmd, Profile, Target};

pub use super::tier_runners::TierBackend;

const POSTGRES_URL_VAR: &str = "WARREN_TEST_POSTGRES_URL";

/// What [`TierStack::start`] starts.
pub struct TierSpec {
    pub gateways: usize,
    pub runners: usize,
    pub backend: TierBackend,
    /// The PostgreSQL server the tier's schema is made in; `WARREN_TEST_POSTGRES_URL`
    /// when `None`.
    pub postgres: Option<String>,
    /// The build of the gateways, runners and agents.
    pub profile: Profile,
    /// The processes' log filter when `RUST_LOG` is not set.
    pub log_filter: &'static str,
}

/// One gateway of the tier: its own data directory and ports (SSH, runners, HTTP).
pub struct TierGateway {
    pub data: TempDir,
    pub ports: [u16; 3],
    child: Option<ChildGuard>,
    pub log: PathBuf,
}

impl TierGateway {
    pub fn ssh_port(&self) -> u16 {
        self.ports[0]
    }

    pub fn runner_address(&self) -> String {
        format!("127.0.0.1:{}", self.ports[1])
    }

    pub fn http_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.ports[2])
    }

    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| c.try_wait().is_none())
    }

    /// The process's id while it runs (for its memory and descriptors in /proc).
    pub fn pid(&mut self) -> Option<u32> {
        self.is_running()
            .then(|| self.child.as_ref().map(ChildGuard::pid))
            .flatten()
    }
}

/// Where the tier's store lives: a schema of its own, dropped at the end.
struct Schema {
    admin_url: String,
    name: String,
    url: String,
}

impl Schema {
    fn create(admin_url: &str) -> Result<Schema> {
        // Ids are lowercase base32: a valid unquoted identifier.
        let name = format!("tier_{}", &SandboxId::generate().as_str()[4..]);
        psql(admin_url, &format!("CREATE SCHEMA {name}"))?;
        let sep = if admin_url.contains('?') { '&' } else { '?' };
        let url = format!("{admin_url}{sep}options=-c%20search_path%3D{name}");
        Ok(Schema {
            admin_url: admin_url.to_owned(),
            name,
            url,
        })
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        let _ = psql(
            &self.admin_url,
            &format!("DROP SCHEMA IF EXISTS {} CASCADE", self.name),
        );
    }
}

fn psql(url: &str, sql: &str) -> Result<()> {
    Cmd::new("psql")
        .args([url, "-v", "ON_ERROR_STOP=1", "-q", "-c", sql])
        .timeout(Duration::from_secs(30))
        .run()?
        .success()
        .context("psql")?;
    Ok(())
}

/// Gateways on one PostgreSQL store and runners with a tunnel to each; a user
/// `alice` (admin) whose key `client` holds. Removes the runners' sandboxes and the
/// schema when dropped.
pub struct TierStack {
    pub rt: tokio::runtime::Runtime,
    pub gateways: Vec<TierGateway>,
    pub runners: Vec<TierRunner>,
    pub client: Client,
    pub api_key: String,
    spec: TierSpec,
    bins: Binaries,
    work: TempDir,
    schema: Schema,
    made: RefCell<Vec<SandboxId>>,
    http: reqwest::Client,
}

impl TierStack {
    /// `Stack::builder().tier(g, r)` and the like: `None` when PostgreSQL (or, for
    /// Docker runners, Docker or root) is missing outside CI (the test is then
    /// skipped).
    pub(super) fn start(spec: TierSpec) -> Result<Option<TierStack>> {
        let admin_url = match &spec.postgres {
            Some(url) => url.clone(),
            None => std::env::var(POSTGRES_URL_VAR).unwrap_or_default(),
        };
        if !prerequisite(
            !admin_url.is_empty(),
            "a PostgreSQL server (scripts/test-postgres, its URL in WARREN_TEST_POSTGRES_URL)",
        )? {
            return Ok(None);
        }
        let t0 = Instant::now();
        let Some(bins) = Binaries::for_tier(spec.backend, spec.profile, spec.runners)? else {
            return Ok(None);
        };
        eprintln!("tier: binaries (and image) ready in {:?}", t0.elapsed());
        let (gateways, runners) = (spec.gateways, spec.runners);
        let schema = Schema::create(&admin_url)?;
        let work = TempDir::new()?;
        let secret = work.path().join("cluster-secret");
        std::fs::write(
            &secret,
            crate::util::sha256_hex(&crate::util::random_bytes(32)?),
        )?;
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600))?;
        let client = Client::new(Target::new("127.0.0.1", 22, "x"))?;
        let public_key = work.path().join("alice.pub");
        std::fs::write(&public_key, client.public_key())?;

        let mut tier = TierStack {
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?,
            gateways: Vec::new(),
            runners: Vec::new(),
            client,
            api_key: String::new(),
            spec,
            bins,
            work,
            schema,
            made: RefCell::default(),
            http: reqwest::Client::new(),
        };
        for _ in 0..gateways {
            let ports = [free_port()?, free_port()?, free_port()?];
            let data = TempDir::new()?;
            let log = data.path().join("gateway.log");
            tier.gateways.push(TierGateway {
                data,
                ports,
                child: None,
                log,
            });
        }
        // The operator's commands, on the shared store.
        let added = output_of(tier.operator(0).args(["add-user", "alice", "--admin"]))?;
        tier.api_key = added
            .split_whitespace()
            .find(|w| w.starts_with("wk_"))
            .context("no API key printed")?
            .to_owned();
        output_of(
            tier.operator(0)
                .args(["add-ssh-key", "alice"])
                .arg(&public_key),
        )?;
        // Every gateway at once: the first to store the tier's keys wins.
        for i in 0..gateways {
            tier.start_gateway(i)?;
        }
        for i in 0..gateways {
            tier.wait_http(i)?;
        }
        for r in 0..runners {
            // Each runner joins through another gateway and learns the rest.
            let through = r % gateways;
            let (token, fingerprint) = join_token(tier.operator(through).args([
                "join-token",
                "--gateway",
                &tier.gateways[through].runner_address(),
            ]))?;
            let data = TempDir::new()?;
            let listen = TempDir::new()?;
            let name = format!("r{r}");
            let id = join_runner(
                &tier.bins.runner,
                &tier.gateways[through].runner_address(),
                &token,
                &fingerprint,
                &name,
                data.path(),
            )?;
            let log = data.path().join("runner.log");
            let child = spawn_runner(
                &tier.bins,
                tier.log_filter(),
                data.path(),
                listen.path(),
                r,
                &log,
            )?;
            tier.runners.push(TierRunner {
                child,
                data,
                listen,
                id,
                log,
                backend: tier.spec.backend,
            });
        }
        eprintln!("tier: gateways and runners started in {:?}", t0.elapsed());
        for i in 0..gateways {
            tier.wait_ready(i)?;
        }
        Ok(Some(tier))
    }

    /// `warren-gateway` on gateway `i`'s data directory and the shared store.
    fn operator(&self, i: usize) -> Command {
        let mut cmd = Command::new(&self.bins.gateway);
        cmd.arg("--data-dir")
            .arg(self.gateways[i].data.path())
            .arg("--database-url")
            .arg(&self.schema.url)
            .arg("--cluster-secret-file")
            .arg(self.secret_file())
            .stdin(Stdio::null());
        cmd
    }

    /// `RUST_LOG` if set, else the spec's filter.
    fn log_filter(&self) -> String {
        std::env::var("RUST_LOG").unwrap_or_else(|_| self.spec.log_filter.to_owned())
    }

    pub fn secret_file(&self) -> PathBuf {
        self.work.path().join("cluster-secret")
    }

    /// The shared store's URL (for a test that starts a gateway by hand, e.g.
    /// with a wrong secret).
    pub fn database_url(&self) -> &str {
        &self.schema.url
    }

    /// Starts gateway `i` (again) on its data directory and ports.
    pub fn start_gateway(&mut self, i: usize) -> Result<()> {
        let g = &self.gateways[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&g.log)?;
        let mut cmd = self.operator(i);
        cmd.args([
            "serve",
            "--ssh-listen",
            &format!("127.0.0.1:{}", g.ports[0]),
        ])
        .args(["--runner-listen", &g.runner_address()])
        .args(["--http-listen", &format!("127.0.0.1:{}", g.ports[2])])
        .env("RUST_LOG", self.log_filter())
        .stdout(Stdio::null())
        .stderr(log);
        let child = ChildGuard::spawn(&mut cmd)?;
        self.gateways[i].child = Some(child);
        Ok(())
    }

    /// Starts one more gateway on the shared store (ports and a data directory of
    /// its own); returns its index once every runner has a tunnel to it.
    pub fn add_gateway(&mut self) -> Result<usize> {
        let ports = [free_port()?, free_port()?, free_port()?];
        let data = TempDir::new()?;
        let log = data.path().join("gateway.log");
        self.gateways.push(TierGateway {
            data,
            ports,
            child: None,
            log,
        });
        let i = self.gateways.len() - 1;
        self.start_gateway(i)?;
        self.wait_ready(i)?;
        Ok(i)
    }

    /// Whether any runner's log has a line with `what` and `gateway` in it.
    pub fn runner_logged(&self, what: &str, gateway: usize) -> bool {
        let address = self.gateways[gateway].runner_address();
        self.runners.iter().any(|r| {
            std::fs::read_to_string(&r.log)
                .unwrap_or_default()
                .lines()
                .any(|l| l.contains(what) && l.contains(&address))
        })
    }

    /// `kill -9` of gateway `i`: its connections drop, nothing is cleaned up.
    pub fn kill_gateway(&mut self, i: usize) {
        if let Some(mut child) = self.gateways[i].child.take() {
            child.kill(Duration::ZERO);
        }
    }

    /// Stops gateway `i` as an operator does (SIGTERM): it leaves the tier.
    pub fn stop_gateway(&mut self, i: usize) -> Result<()> {
        if let Some(mut child) = self.gateways[i].child.take() {
            child.signal_group(libc::SIGTERM);
            if child.wait(Duration::from_secs(15)).is_none() {
                child.kill(Duration::ZERO);
                bail!("gateway {i} did not stop within 15 s of SIGTERM");
            }
        }
        Ok(())
    }

    fn health(&self, i: usize, ready: bool) -> Result<(u16, serde_json::Value)> {
        let url = format!(
            "{}/healthz{}",
            self.gateways[i].http_url(),
            if ready { "?ready" } else { "" }
        );
        self.rt.block_on(async {
            let r = self
                .http
                .get(&url)
                .timeout(Duration::from_secs(5))
                .send()
                .await?;
            let status = r.status().as_u16();
            anyhow::Ok((status, r.json::<serde_json::Value>().await?))
        })
    }

    /// `GET /healthz?ready` of gateway `i`: its status and body.
    pub fn readiness(&self, i: usize) -> Result<(u16, serde_json::Value)> {
        self.health(i, true)
    }

    fn wait_http(&mut self, i: usize) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if matches!(self.health(i, false), Ok((200, _))) {
                return Ok(());
            }
            if !self.gateways[i].is_running() || Instant::now() > deadline {
                bail!("gateway {i} did not serve:\n{}", self.gateway_log(i));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until gateway `i` serves and every runner has a tunnel to it (its
    /// readiness says so).
    pub fn wait_ready(&mut self, i: usize) -> Result<()> {
        self.wait_http(i)?;
        let want = self.runners.len() as u64;
        if want == 0 {
            return Ok(());
        }
        let deadline = Instant::now() + Duration::from_secs(45);
        loop {
            if let Ok((200, body)) = self.readiness(i)
                && body["runners"].as_u64() == Some(want)
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                let logs: Vec<String> = self
                    .runners
                    .iter()
                    .map(|r| std::fs::read_to_string(&r.log).unwrap_or_default())
                    .collect();
                bail!(
                    "gateway {i} never had all {want} runners: {:?}\n{}\nrunners:\n{}",
                    self.readiness(i).ok(),
                    self.gateway_log(i),
                    logs.join("\n---\n")
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn gateway_log(&self, i: usize) -> String {
        std::fs::read_to_string(&self.gateways[i].log).unwrap_or_default()
    }

    /// One API call to gateway `i` as alice: status and JSON body.
    pub fn call(
        &self,
        i: usize,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<(u16, serde_json::Value)> {
        let url = format!("{}{path}", self.gateways[i].http_url());
        self.rt.block_on(async {
            let method = reqwest::Method::from_bytes(method.as_bytes())?;
            let mut req = self
                .http
                .request(method, &url)
                .bearer_auth(&self.api_key)
                .timeout(Duration::from_secs(120));
            if let Some(body) = body {
                req = req.json(&body);
            }
            let r = req.send().await?;
            let status = r.status().as_u16();
            let text = r.text().await?;
            let body = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
            anyhow::Ok((status, body))
        })
    }

    /// Creates a sandbox through gateway `i`: its id, runner and token.
    pub fn create(&self, i: usize) -> Result<(SandboxId, RunnerId, String)> {
        let (status, body) = self.call(i, "POST", "/v1/sandboxes", Some(serde_json::json!({})))?;
        ensure!(status == 201, "create through gateway {i}: {status} {body}");
        let id = SandboxId::parse(body["id"].as_str().context("no id")?)?;
        self.made.borrow_mut().push(id.clone());
        let runner = RunnerId::parse(body["runner_id"].as_str().context("no runner_id")?)?;
        let token = body["token"].as_str().context("no token")?.to_owned();
        Ok((id, runner, token))
    }

    /// Creates `n` sandboxes through the gateways in turn, `at_once` in flight at
    /// once: each one's id and runner.
    pub fn create_many(&self, n: usize, at_once: usize) -> Result<Vec<(SandboxId, RunnerId)>> {
        let urls: Vec<String> = self
            .gateways
            .iter()
            .map(|g| format!("{}/v1/sandboxes", g.http_url()))
            .collect();
        let made = self.rt.block_on(async {
            let permits = Arc::new(tokio::sync::Semaphore::new(at_once.max(1)));
            let mut tasks = tokio::task::JoinSet::new();
            for i in 0..n {
                let permit = permits.clone().acquire_owned().await?;
                let request = self
                    .http
                    .post(&urls[i % urls.len()])
                    .bearer_auth(&self.api_key)
                    .json(&serde_json::json!({}))
                    .timeout(Duration::from_secs(120));
                tasks.spawn(async move {
                    let _permit = permit;
                    let reply = request.send().await?;
                    let status = reply.status().as_u16();
                    let body: serde_json::Value = reply.json().await?;
                    ensure!(status == 201, "create {i}: {status} {body}");
                    let id = SandboxId::parse(body["id"].as_str().context("no id")?)?;
                    let runner =
                        RunnerId::parse(body["runner_id"].as_str().context("no runner_id")?)?;
                    anyhow::Ok((id, runner))
                });
            }
            let mut made = Vec::with_capacity(n);
            let mut failed = Vec::new();
            while let Some(done) = tasks.join_next().await {
                match done? {
                    Ok(one) => made.push(one),
                    Err(e) => failed.push(format!("{e:#}")),
                }
            }
            anyhow::Ok((made, failed))
        });
        let (made, failed) = made?;
        self.made
            .borrow_mut()
            .extend(made.iter().map(|(id, _)| id.clone()));
        ensure!(
            failed.is_empty(),
            "{} of {n} creates failed: {failed:#?}",
            failed.len()
        );
        Ok(made)
    }

    /// The sandbox ids gateway `i` lists for alice.
    pub fn listed(&self, i: usize) -> Result<Vec<String>> {
        let (status, body) = self.call(i, "GET", "/v1/sandboxes", None)?;
        ensure!(status == 200, "list through gateway {i}: {status} {body}");
        Ok(body["sandboxes"]
            .as_array()
            .context("no sandboxes")?
            .iter()
            .filter_map(|s| s["id"].as_str().map(str::to_owned))
            .collect())
    }

    /// alice's client logging in to `sandbox` through gateway `i` (relay mode).
    pub fn relay(&self, i: usize, sandbox: &SandboxId) -> Client {
        self.client.clone().with_target(Target::new(
            "127.0.0.1",
            self.gateways[i].ssh_port(),
            sandbox.as_str(),
        ))
    }

    /// alice's client reaching `sandbox` with gateway `i` as the jump host (`-J`,
    /// spelled as its ProxyCommand so the hop gets the client's throwaway options).
    pub fn jump(&self, i: usize, sandbox: &SandboxId) -> Client {
        let hop = format!(
            "ProxyCommand=ssh -F /dev/null -o UserKnownHostsFile=/dev/null \
             -o StrictHostKeyChecking=no -o LogLevel=ERROR -o BatchMode=yes \
             -o IdentitiesOnly=yes -i {} -p {} -W %h:%p alice@127.0.0.1",
            self.client.key_path().display(),
            self.gateways[i].ssh_port()
        );
        self.client
            .clone()
            .with_target(Target::new(sandbox.as_str(), 22, sandbox.as_str()))
            .with_option(hop)
    }
}

impl Drop for TierStack {
    fn drop(&mut self) {
        for r in &mut self.runners {
            r.stop();
        }
        for r in &self.runners {
            r.remove_objects(&self.rt, &self.made.borrow());
        }
        for i in 0..self.gateways.len() {
            self.kill_gateway(i);
        }
    }
}
