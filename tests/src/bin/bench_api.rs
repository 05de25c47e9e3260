//! bench-api: the HTTP API under load — read latency with many concurrent clients,
//! and sandbox creates per minute through a real runner.
//!
//! ```text
//! cargo run --release -p warren-tests --bin bench-api [-- --clients 200 --seconds 10 --sandboxes 100 --creates 60 --create-concurrency 8]
//! ```
//!
//! The gateway runs in this process (`warren_tests::stack`, its own 2-thread runtime):
//! the SQLite store in a temporary data directory, the runner hub, the API router
//! served in plain HTTP and over TLS (a self-signed identity from `warren_keys::tls`)
//! on 127.0.0.1, and the reconciler. One real `warren-runner run` (release, process
//! backend) joins it.
//! The store is seeded with `--sandboxes` running sandboxes (rows only, no runner)
//! owned by one user, so reads have data.
//!
//! `--clients` concurrent clients (reqwest, keep-alive, a second 2-thread runtime)
//! hammer `GET /v1/sandboxes` (the first page, 50 items) and `GET /v1/sandboxes/{id}`
//! for `--seconds` each, after one second of warm-up; then `--creates` sandboxes are
//! made through `POST /v1/sandboxes`, `--create-concurrency` at a time (each a real
//! agent process started by the runner), and deleted again, in waves of the runner's
//! capacity (16); the create rate counts the time spent creating only. Prints a Markdown table
//! (stdout) with p50/p99 latency and throughput; progress goes to stderr. The issue's
//! target: p99 under 50 ms for reads on SQLite.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use warren_gateway::api;
use warren_gateway::tunnel::DEFAULT_RUNNER_CAPACITY;
use warren_keys::SandboxId;
use warren_store::{NewSandbox, SandboxState};
use warren_tests::stack::{Api, Stack};
use warren_tests::util;

/// How often the API's reconciler asks the runner for its sandboxes (as `serve`).
const RECONCILE_EVERY: Duration = Duration::from_secs(10);

struct Options {
    clients: usize,
    seconds: u64,
    sandboxes: usize,
    creates: usize,
    create_concurrency: usize,
    https: bool,
}

impl Options {
    fn parse() -> Result<Options> {
        let mut o = Options {
            clients: 200,
            seconds: 10,
            sandboxes: 100,
            creates: 60,
            create_concurrency: 8,
            https: true,
        };
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            let mut value = || args.next().with_context(|| format!("{arg} needs a value"));
            match arg.as_str() {
                "--clients" => o.clients = value()?.parse()?,
                "--seconds" => o.seconds = value()?.parse()?,
                "--sandboxes" => o.sandboxes = value()?.parse()?,
                "--creates" => o.creates = value()?.parse()?,
                "--create-concurrency" => o.create_concurrency = value()?.parse()?,
                "--no-https" => o.https = false,
                "-h" | "--help" => {
                    println!(
                        "bench-api [--clients N (200)] [--seconds S (10)] [--sandboxes N (100)] \
                         [--creates N (60)] [--create-concurrency N (8)] [--no-https]"
                    );
                    std::process::exit(0);
                }
                other => bail!("unknown argument {other:?} (try --help)"),
            }
        }
        ensure!(
            o.clients > 0 && o.seconds > 0 && o.sandboxes > 0 && o.create_concurrency > 0,
            "counts must be positive"
        );
        Ok(o)
    }
}

/// The gateway's API as the clients reach it.
struct Gateway {
    http: String,
    https: String,
    cert_pem: Vec<u8>,
    api_key: String,
    seeded: Vec<SandboxId>,
}

/// The API of `stack`'s gateway in plain HTTP (`api`), and the same router over TLS
/// on a second listener; `sandboxes` running sandboxes seeded in the store (rows
/// only, owned by one user, so reads have data).
fn serve_api(stack: &Stack, api: &Api, sandboxes: usize) -> Result<Gateway> {
    let dir = stack.data_dir();
    let store = stack.store.clone();
    let state = api.state.clone();
    let http = api.base.clone();
    stack.rt.block_on(async move {
        let identity = warren_keys::tls::load_or_generate_tls_identity(&dir, &[])?;
        let cert_pem = std::fs::read(identity.cert_path())?;
        let tls = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let https = format!("https://{}", tls.local_addr()?);
        tokio::spawn(api::tls::serve_tls(tls, api::router(state), identity));

        let user = store.create_user("bench", false).await?;
        let api_key = store
            .create_api_key(&user.id, "bench")
            .await?
            .secret
            .expose()
            .to_owned();
        let mut seeded = Vec::with_capacity(sandboxes);
        for _ in 0..sandboxes {
            let id = SandboxId::generate();
            store
                .create_sandbox(&NewSandbox {
                    id: id.clone(),
                    owner_id: user.id.clone(),
                    runner_id: None,
                    image: "default".into(),
                    repo: Some("https://github.com/example/repo.git".into()),
                    branch: Some("main".into()),
                    forward_agent: false,
                    cpus: 1.0,
                    memory_mb: 512,
                    idle_timeout_s: Some(3600),
                    ttl_s: None,
                    disk_mb: None,
                })
                .await?;
            store
                .set_sandbox_state(&id, SandboxState::Running, "seeded by bench-api")
                .await?;
            seeded.push(id);
        }
        anyhow::Ok(Gateway {
            http,
            https,
            cert_pem,
            api_key,
            seeded,
        })
    })
}

/// What one measurement gave.
struct Measured {
    what: String,
    latencies: Vec<Duration>,
    errors: usize,
    elapsed: Duration,
}

impl Measured {
    fn percentile(&self, p: usize) -> f64 {
        if self.latencies.is_empty() {
            return f64::NAN;
        }
        let i = (self.latencies.len() * p / 100).min(self.latencies.len() - 1);
        self.latencies[i].as_secs_f64() * 1000.0
    }

    fn max(&self) -> f64 {
        self.latencies
            .last()
            .map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0)
    }

    fn per_second(&self) -> f64 {
        self.latencies.len() as f64 / self.elapsed.as_secs_f64()
    }
}

/// `clients` tasks sending `GET`s to `urls` (each client walks its own way through
/// them) for one second of warm-up, then `seconds` measured.
async fn hammer(
    what: String,
    http: &reqwest::Client,
    key: &str,
    urls: Vec<String>,
    clients: usize,
    seconds: u64,
) -> Result<Measured> {
    let urls = Arc::new(urls);
    let key: Arc<str> = key.into();
    let measure_from = Instant::now() + Duration::from_secs(1);
    let end = measure_from + Duration::from_secs(seconds);
    let mut tasks = tokio::task::JoinSet::new();
    for client in 0..clients {
        let (http, urls, key) = (http.clone(), urls.clone(), key.clone());
        tasks.spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = 0usize;
            let mut i = client;
            while Instant::now() < end {
                let url = &urls[i % urls.len()];
                i += clients;
                let started = Instant::now();
                let ok = match http.get(url).bearer_auth(&*key).send().await {
                    Ok(response) => {
                        let status = response.status();
                        response.bytes().await.is_ok() && status == reqwest::StatusCode::OK
                    }
                    Err(_) => false,
                };
                let latency = started.elapsed();
                if started >= measure_from {
                    if ok {
                        latencies.push(latency);
                    } else {
                        errors += 1;
                    }
                }
            }
            (latencies, errors)
        });
    }
    let mut measured = Measured {
        what,
        latencies: Vec::new(),
        errors: 0,
        elapsed: Duration::ZERO,
    };
    while let Some(done) = tasks.join_next().await {
        let (latencies, errors) = done?;
        measured.latencies.extend(latencies);
        measured.errors += errors;
    }
    measured.elapsed = measure_from.elapsed();
    measured.latencies.sort();
    Ok(measured)
}

/// `count` requests made by `concurrency` workers; `request(i)` sends the `i`th and
/// says whether it succeeded (with what it returned).
async fn batch<F, Fut>(
    what: String,
    count: usize,
    concurrency: usize,
    request: F,
) -> Result<(Measured, Vec<Option<String>>)>
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Option<String>> + Send,
{
    let request = Arc::new(request);
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..concurrency.min(count.max(1)) {
        let (request, next) = (request.clone(), next.clone());
        tasks.spawn(async move {
            let mut done = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    break;
                }
                let t = Instant::now();
                let result = request(i).await;
                done.push((i, t.elapsed(), result));
            }
            done
        });
    }
    let mut results = vec![None; count];
    let mut measured = Measured {
        what,
        latencies: Vec::new(),
        errors: 0,
        elapsed: Duration::ZERO,
    };
    while let Some(done) = tasks.join_next().await {
        for (i, latency, result) in done? {
            match result {
                Some(r) => {
                    measured.latencies.push(latency);
                    results[i] = Some(r);
                }
                None => measured.errors += 1,
            }
        }
    }
    measured.elapsed = started.elapsed();
    measured.latencies.sort();
    Ok((measured, results))
}

/// Creates `count` sandboxes and deletes them again, in waves of at most the
/// runner's capacity (the gateway places no more on one runner).
async fn create_and_delete(
    http: &reqwest::Client,
    base: &str,
    key: &str,
    count: usize,
    concurrency: usize,
) -> Result<(Measured, Measured)> {
    let wave = DEFAULT_RUNNER_CAPACITY as usize;
    let mut created = Measured {
        what: format!(
            "`POST /v1/sandboxes` (process backend, {concurrency} at a time, waves of {wave})"
        ),
        latencies: Vec::new(),
        errors: 0,
        elapsed: Duration::ZERO,
    };
    let mut deleted = Measured {
        what: format!("`DELETE /v1/sandboxes/{{id}}` ({concurrency} at a time)"),
        latencies: Vec::new(),
        errors: 0,
        elapsed: Duration::ZERO,
    };
    let mut left = count;
    while left > 0 {
        let n = left.min(wave);
        left -= n;
        let (made, ids) = create_wave(http, base, key, n, concurrency).await?;
        created.latencies.extend(made.latencies);
        created.errors += made.errors;
        created.elapsed += made.elapsed;
        let gone = delete_wave(http, base, key, ids, concurrency).await?;
        deleted.latencies.extend(gone.latencies);
        deleted.errors += gone.errors;
        deleted.elapsed += gone.elapsed;
    }
    created.latencies.sort();
    deleted.latencies.sort();
    Ok((created, deleted))
}

async fn create_wave(
    http: &reqwest::Client,
    base: &str,
    key: &str,
    count: usize,
    concurrency: usize,
) -> Result<(Measured, Vec<String>)> {
    let (client, url, k) = (http.clone(), format!("{base}/v1/sandboxes"), key.to_owned());
    let (created, ids) = batch(String::new(), count, concurrency, move |_| {
        let request = client
            .post(&url)
            .bearer_auth(&k)
            .json(&serde_json::json!({}));
        async move {
            let response = request.send().await.ok()?;
            if response.status() != reqwest::StatusCode::CREATED {
                let status = response.status();
                let text = response.text().await.unwrap_or_default();
                eprintln!("  create: {status} {text}");
                return None;
            }
            let body: serde_json::Value = response.json().await.ok()?;
            body["id"].as_str().map(str::to_owned)
        }
    })
    .await?;
    Ok((created, ids.into_iter().flatten().collect()))
}

async fn delete_wave(
    http: &reqwest::Client,
    base: &str,
    key: &str,
    ids: Vec<String>,
    concurrency: usize,
) -> Result<Measured> {
    let (client, base, k) = (http.clone(), base.to_owned(), key.to_owned());
    let ids = Arc::new(ids);
    let to_delete = ids.clone();
    let (deleted, _) = batch(String::new(), ids.len(), concurrency, move |i| {
        let request = client
            .delete(format!("{base}/v1/sandboxes/{}", to_delete[i]))
            .bearer_auth(&k);
        async move {
            let response = request.send().await.ok()?;
            let status = response.status();
            if !status.is_success() {
                eprintln!("  delete: {status}");
                return None;
            }
            Some(status.to_string())
        }
    })
    .await?;
    Ok(deleted)
}

fn main() -> Result<()> {
    let opts = Options::parse()?;
    util::raise_nofile()?;
    eprintln!(
        "starting the gateway (SQLite, {} seeded sandboxes)…",
        opts.sandboxes
    );
    // The gateway in-process (its own 2-thread runtime), its API beside it with the
    // reconciler asking the runner for `List` every 10 s, as `warren-gateway serve`
    // runs it.
    let stack = Stack::builder().release().start()?;
    let api = stack.api(RECONCILE_EVERY)?;
    let gw = serve_api(&stack, &api, opts.sandboxes)?;
    eprintln!("joining a runner (process backend, release)…");
    let runner = stack.runner("bench")?;

    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("clients")
        .enable_all()
        .build()?;
    let results = client_rt.block_on(async {
        let timeout = Duration::from_secs(60);
        let plain = reqwest::Client::builder().timeout(timeout).build()?;
        let tls = reqwest::Client::builder()
            .timeout(timeout)
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(&gw.cert_pem)?)
            .build()?;
        let mut results = Vec::new();
        let mut schemes = vec![("HTTP", &gw.http, &plain)];
        if opts.https {
            schemes.push(("HTTPS", &gw.https, &tls));
        }
        for (scheme, base, http) in schemes {
            // One request first: the scheme works at all (and, for TLS, verifies).
            http.get(format!("{base}/healthz"))
                .send()
                .await
                .and_then(|r| r.error_for_status())
                .with_context(|| format!("{scheme} {base}/healthz"))?;
            eprintln!(
                "{scheme}: {} clients, GET /v1/sandboxes for {} s…",
                opts.clients, opts.seconds
            );
            results.push(
                hammer(
                    format!("`GET /v1/sandboxes` (page of 50), {scheme}"),
                    http,
                    &gw.api_key,
                    vec![format!("{base}/v1/sandboxes")],
                    opts.clients,
                    opts.seconds,
                )
                .await?,
            );
            eprintln!(
                "{scheme}: {} clients, GET /v1/sandboxes/{{id}} for {} s…",
                opts.clients, opts.seconds
            );
            let urls = gw
                .seeded
                .iter()
                .map(|id| format!("{base}/v1/sandboxes/{id}"))
                .collect();
            results.push(
                hammer(
                    format!("`GET /v1/sandboxes/{{id}}`, {scheme}"),
                    http,
                    &gw.api_key,
                    urls,
                    opts.clients,
                    opts.seconds,
                )
                .await?,
            );
        }
        if opts.creates > 0 {
            eprintln!(
                "creating {} sandboxes, {} at a time, then deleting them…",
                opts.creates, opts.create_concurrency
            );
            let (created, deleted) = create_and_delete(
                &plain,
                &gw.http,
                &gw.api_key,
                opts.creates,
                opts.create_concurrency,
            )
            .await?;
            results.push(created);
            results.push(deleted);
        }
        anyhow::Ok(results)
    })?;
    drop(runner);
    print_table(&opts, &results);
    Ok(())
}

fn print_table(opts: &Options, results: &[Measured]) {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "Loopback, {cores} cores; gateway in-process (SQLite in a temp dir, 2 worker threads), \
         clients in a second 2-thread runtime of the same process; {} concurrent keep-alive \
         clients, {} s per read measure after 1 s of warm-up; {} seeded sandboxes; creates \
         through one `warren-runner` (process backend, release).",
        opts.clients, opts.seconds, opts.sandboxes
    );
    println!();
    println!("| Measure | requests | errors | rate | p50 | p99 | max |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for m in results {
        let rate = if m.what.starts_with("`GET") {
            format!("{:.0} req/s", m.per_second())
        } else {
            format!("{:.0} /min", m.per_second() * 60.0)
        };
        println!(
            "| {} | {} | {} | {rate} | {:.1} ms | {:.1} ms | {:.1} ms |",
            m.what,
            m.latencies.len(),
            m.errors,
            m.percentile(50),
            m.percentile(99),
            m.max()
        );
    }
    let reads: Vec<&Measured> = results
        .iter()
        .filter(|m| m.what.starts_with("`GET"))
        .collect();
    let worst = reads
        .iter()
        .map(|m| m.percentile(99))
        .fold(f64::NAN, f64::max);
    println!();
    println!(
        "Target: read p99 under 50 ms on SQLite — worst read p99 {worst:.1} ms: {}.",
        if worst < 50.0 { "met" } else { "not met" }
    );
}
