//! bench-scale: many sandboxes on one runner, all logged in to at once; and bursts
//! of creates and logins from one client host through `warren up`.
//!
//! ```text
//! cargo run --release -p warren-tests --bin bench-scale [-- --sandboxes 100 --memory-mb 64 --rounds 3
//!     --burst-creates 12 --burst-concurrent 16 (--scale-only | --bursts-only)]
//! ```
//!
//! The real processes (`warren_tests::stack`): `warren-gateway serve`, one `warren-runner
//! run --backend docker` with the static agent, and `--sandboxes` containers from the
//! busybox image (`--memory-mb` each, the default network policy unless `--network
//! none`). Then, `--rounds` times, one `ssh <id>@gateway true` per sandbox, all started
//! at once; every one must succeed. In one round all clients come from one address
//! (127.0.0.1), as a client host or a NAT would: the front door queues logins past its
//! per-address bound rather than refusing them. In the others each client binds its
//! own loopback source address (127.0.1.x, a few per address), as users behind
//! different addresses would.
//!
//! Then the bursts, against the release `warren up` on Docker (its default image and
//! warm pool, the gateway reaching the local agents in process), beside `docker run
//! --rm IMAGE true` timed in the same run, one after another and `--burst-concurrent`
//! at once (the floors of a cold start and of a burst of them): with the pool
//! ready, `--burst-creates` creates through the API one after another, each timed to
//! its first successful `ssh <id>@gateway true`; then, the pool ready again,
//! `--burst-concurrent` creates at once, each timed the same way (all must answer).
//!
//! Prints Markdown tables (stdout): connect time p50/p95/max over the logins (each
//! one's whole `ssh … true`, key exchange and exit included), from one address and
//! from many, the RSS of the gateway and the runner before and after, the containers'
//! memory from their cgroups (v1 or v2), and the bursts' p50/p95 beside the floor. As
//! root, with a Docker engine; without one it fails.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use warren_runner::protocol::{NetworkPolicy, SandboxSpec};
use warren_tests::bench::bench_client;
use warren_tests::stack::{
    Backend, GatewayStack, Stack, StackOptions, Up, UpStack, docker_agent_and_image,
    docker_run_floor, docker_run_floor_at_once, home_for,
};
use warren_tests::util::{self, container_memory_kib};
use warren_tests::{Client, Cmd, Running, Target};

/// `warren up`'s default image: what its pool keeps and a create without one gets.
const UP_IMAGE: &str = "warren-base:latest";
/// The bursts' sandboxes' disk quota (`warren up --disk-mb`).
const BURST_DISK_MB: u64 = 256;
/// `warren up --pool-size`'s default.
const UP_POOL_SIZE: usize = 6;

struct Options {
    sandboxes: usize,
    memory_mb: u64,
    rounds: usize,
    image: String,
    network_none: bool,
    create_concurrency: usize,
    /// A static agent already built (else `scripts/build-static-agent` builds one).
    agent_bin: Option<std::path::PathBuf>,
    burst_creates: usize,
    burst_concurrent: usize,
    /// `warren up --pool-size` (its default when not given).
    pool_size: Option<usize>,
    /// More arguments for `warren up` (`--up-arg=--pool-max=12`).
    up_args: Vec<String>,
    /// The creates at once only once the pool shrank back to its minimum (about a
    /// minute after the creates back to back), not as soon as it has that many.
    at_once_from_minimum: bool,
    scale: bool,
    bursts: bool,
}

impl Options {
    fn parse() -> Result<Options> {
        let mut o = Options {
            sandboxes: 100,
            memory_mb: 64,
            rounds: 3,
            image: "warren-busybox:latest".into(),
            network_none: false,
            create_concurrency: 4,
            agent_bin: None,
            burst_creates: 12,
            burst_concurrent: 16,
            pool_size: None,
            up_args: Vec::new(),
            at_once_from_minimum: false,
            scale: true,
            bursts: true,
        };
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            let mut value = || args.next().with_context(|| format!("{arg} needs a value"));
            match arg.as_str() {
                "--sandboxes" => o.sandboxes = value()?.parse()?,
                "--memory-mb" => o.memory_mb = value()?.parse()?,
                "--rounds" => o.rounds = value()?.parse()?,
                "--image" => o.image = value()?,
                "--create-concurrency" => o.create_concurrency = value()?.parse()?,
                "--agent-bin" => o.agent_bin = Some(value()?.into()),
                "--burst-creates" => o.burst_creates = value()?.parse()?,
                "--burst-concurrent" => o.burst_concurrent = value()?.parse()?,
                "--pool-size" => o.pool_size = Some(value()?.parse()?),
                "--up-arg" => o.up_args.push(value()?),
                "--at-once-from-minimum" => o.at_once_from_minimum = true,
                "--scale-only" => o.bursts = false,
                "--bursts-only" => o.scale = false,
                "--network" => match value()?.as_str() {
                    "none" => o.network_none = true,
                    "all" => o.network_none = false,
                    other => bail!("--network all|none, not {other:?}"),
                },
                "-h" | "--help" => {
                    println!(
                        "bench-scale [--sandboxes N (100)] [--memory-mb M (64)] [--rounds R (3)] \
                         [--image IMAGE (warren-busybox:latest)] [--network all|none (all)] \
                         [--create-concurrency N (4)] [--agent-bin STATIC_AGENT] \
                         [--burst-creates N (12)] [--burst-concurrent N (16)] \
                         [--pool-size N (warren up's)] [--up-arg ARG]... \
                         [--at-once-from-minimum] \
                         [--scale-only | --bursts-only]"
                    );
                    std::process::exit(0);
                }
                other => bail!("unknown argument {other:?} (try --help)"),
            }
        }
        ensure!(
            o.sandboxes > 0
                && o.rounds > 0
                && o.create_concurrency > 0
                && o.burst_creates > 0
                && o.burst_concurrent > 0,
            "counts must be positive"
        );
        Ok(o)
    }
}

fn docker_available() -> bool {
    Cmd::new("docker")
        .args(["version", "--format", "{{.Server.APIVersion}}"])
        .run()
        .is_ok_and(|o| o.status.success())
}

/// The machine's load average over 1, 5 and 15 minutes (`/proc/loadavg`).
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// The value at fraction `p` of sorted `v`.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// The gateway's and the runner's RSS, in MiB.
fn rss_mib(stack: &GatewayStack) -> (f64, f64) {
    let mib = |pid| util::rss_kib(pid).unwrap_or(0) as f64 / 1024.0;
    (mib(stack.gateway.pid()), mib(stack.runner.pid()))
}

/// One round: `ssh <id>@gateway true` for every sandbox at once, all from 127.0.0.1
/// if `one_address`, else a few per address; each one's milliseconds.
fn storm(stack: &GatewayStack, client: &Client, one_address: bool) -> Result<Vec<f64>> {
    let started = Instant::now();
    let sessions: Vec<Running> = (0..stack.sandboxes.len())
        .map(|i| {
            let source = if one_address {
                "127.0.0.1".to_owned()
            } else {
                format!("127.0.1.{}", i / 4 + 1)
            };
            stack
                .client(client, i)
                .with_option(format!("BindAddress={source}"))
                .exec("true")
                .timeout(Duration::from_secs(120))
                .spawn()
        })
        .collect::<Result<_>>()?;
    let times = util::logins_succeeded(sessions, |i| stack.sandboxes[i].to_string(), started)?;
    Ok(times.into_iter().map(|(_, ms)| ms).collect())
}

/// Every container's cgroup memory (usage, anonymous), in KiB.
fn container_memory(stack: &GatewayStack) -> Result<Vec<(u64, u64)>> {
    let names: Vec<String> = stack
        .sandboxes
        .iter()
        .map(|id| format!("warren-{id}"))
        .collect();
    let out = Cmd::new("docker")
        .args(["inspect", "--format", "{{.Id}}"])
        .args(&names)
        .timeout(Duration::from_secs(120))
        .run()?
        .success()?;
    let found: Vec<(u64, u64)> = out
        .stdout_str()
        .lines()
        .filter_map(|id| container_memory_kib(id.trim()))
        .collect();
    ensure!(
        found.len() == stack.sandboxes.len(),
        "cgroup memory found for {} of {} containers",
        found.len(),
        stack.sandboxes.len()
    );
    Ok(found)
}

fn main() -> Result<()> {
    let opts = Options::parse()?;
    ensure!(
        util::running_as_root(),
        "bench-scale needs root (the docker backend does)"
    );
    ensure!(docker_available(), "bench-scale needs a Docker engine");
    let nofile = util::raise_nofile()?;
    let client = bench_client(Client::new(Target::new("127.0.0.1", 1, "x"))?);
    if opts.scale {
        scale(&opts, &client, nofile)?;
    }
    if opts.bursts {
        bursts(&opts, &client)?;
    }
    Ok(())
}

/// `--sandboxes` on one runner, logged in to all at once, `--rounds` times.
fn scale(opts: &Options, client: &Client, nofile: u64) -> Result<()> {
    eprintln!("open-files limit {nofile}; building the static agent and the image…");
    let agent = match &opts.agent_bin {
        Some(path) => path.clone(),
        None => docker_agent_and_image(&opts.image)?,
    };
    let work = tempfile::Builder::new()
        .prefix("warren-bench-scale-")
        .tempdir()?;
    let spec = SandboxSpec {
        memory_mb: Some(opts.memory_mb),
        network: if opts.network_none {
            NetworkPolicy::None
        } else {
            NetworkPolicy::All
        },
        ..SandboxSpec::default()
    };
    eprintln!("starting the stack with {} sandboxes…", opts.sandboxes);
    let started = Instant::now();
    let stack = Stack::builder().processes(
        work.path(),
        client,
        StackOptions {
            backend: Backend::Docker {
                agent,
                image: opts.image.clone(),
            },
            sandboxes: opts.sandboxes,
            spec,
            create_concurrency: opts.create_concurrency,
        },
    )?;
    let setup = started.elapsed();
    std::thread::sleep(Duration::from_secs(3));
    let (gw_before, runner_before) = rss_mib(&stack);

    // The first round from one address, as one client host; the others from many.
    let mut one = Vec::new();
    let mut many = Vec::new();
    for round in 1..=opts.rounds {
        let one_address = round == 1;
        eprintln!(
            "round {round}: {} concurrent `ssh <id>@gateway true` from {}",
            opts.sandboxes,
            if one_address {
                "one address"
            } else {
                "many addresses"
            }
        );
        let times = storm(&stack, client, one_address)?;
        if one_address {
            one.extend(times);
        } else {
            many.extend(times);
        }
    }
    std::thread::sleep(Duration::from_secs(2));
    let (gw_after, runner_after) = rss_mib(&stack);
    let mut memory = container_memory(&stack)?;
    one.sort_by(f64::total_cmp);
    many.sort_by(f64::total_cmp);

    let n = opts.sandboxes;
    let kib_to_mib = |k: u64| k as f64 / 1024.0;
    let sum = |f: fn(&(u64, u64)) -> u64, m: &[(u64, u64)]| kib_to_mib(m.iter().map(f).sum());
    let (usage_total, anon_total) = (sum(|m| m.0, &memory), sum(|m| m.1, &memory));
    memory.sort_unstable();
    let usage_max = kib_to_mib(memory.last().map_or(0, |m| m.0));
    println!(
        "\n## bench-scale: {n} sandboxes ({}, {} MiB each, network {}) on one Docker runner\n",
        opts.image,
        opts.memory_mb,
        if opts.network_none { "none" } else { "all" }
    );
    println!(
        "{} cores, load average {}; set up (creates, {} at a time) in {:.0} s. Each login is \
         a whole `ssh <id>@gateway true` (curve25519-sha256, aes256-gcm), {n} started at \
         once; round 1 from one address, {} more from many.\n",
        std::thread::available_parallelism().map_or(0, |c| c.get()),
        load_average(),
        opts.create_concurrency,
        setup.as_secs_f64(),
        opts.rounds - 1
    );
    println!("| measure | value |");
    println!("|---|---:|");
    println!(
        "| logins that succeeded | {} of {} |",
        one.len() + many.len(),
        n * opts.rounds
    );
    let row = |what: &str, times: &[f64]| {
        if times.is_empty() {
            return;
        }
        println!(
            "| {what}: connect time p50 / p95 / max | {:.0} / {:.0} / {:.0} ms |",
            percentile(times, 0.5),
            percentile(times, 0.95),
            percentile(times, 1.0)
        );
    };
    row(&format!("{n} at once from one address"), &one);
    row(&format!("{n} at once from many addresses"), &many);
    println!(
        "| gateway RSS, {n} sandboxes idle / after the logins | {gw_before:.1} / {gw_after:.1} MiB |"
    );
    println!(
        "| runner RSS, {n} sandboxes idle / after the logins | {runner_before:.1} / {runner_after:.1} MiB |"
    );
    println!(
        "| containers' memory (cgroup usage), total / mean / max | {usage_total:.0} / {:.1} / {usage_max:.1} MiB |",
        usage_total / n as f64
    );
    println!(
        "| containers' anonymous memory, total / mean | {anon_total:.0} / {:.1} MiB |",
        anon_total / n as f64
    );
    eprintln!("removing {n} sandboxes…");
    drop(stack);
    Ok(())
}

/// Retries `ssh <id>@gateway true` until it works (a minute at most).
fn first_ssh_true(c: &Client, started: Instant) -> Result<()> {
    loop {
        let out = c.exec("true").timeout(Duration::from_secs(30)).run()?;
        if out.status.success() {
            return Ok(());
        }
        ensure!(
            started.elapsed() < Duration::from_secs(60),
            "no `ssh true` within a minute: {out}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until `want` members of `up`'s pool are ready.
fn pool_ready(up: &UpStack, want: usize) -> Result<()> {
    let ready = util::wait_until(Duration::from_secs(180), || {
        up.pool_waiting().unwrap_or(0) >= want
    });
    ensure!(
        ready,
        "the warm pool has {} ready, not {want}",
        up.pool_waiting()?
    );
    Ok(())
}

/// Creates back to back and at once through `warren up`, beside `docker run`.
fn bursts(opts: &Options, client: &Client) -> Result<()> {
    eprintln!(
        "`docker run --rm {UP_IMAGE} true`, {} times…",
        opts.burst_creates
    );
    docker_agent_and_image(UP_IMAGE)?;
    let floor: Vec<f64> = docker_run_floor(UP_IMAGE, opts.burst_creates)?
        .iter()
        .map(|d| d.as_secs_f64() * 1000.0)
        .collect();
    eprintln!(
        "`docker run --rm {UP_IMAGE} true`, {} at once…",
        opts.burst_concurrent
    );
    let floor_at_once: Vec<f64> = docker_run_floor_at_once(UP_IMAGE, opts.burst_concurrent)?
        .iter()
        .map(|d| d.as_secs_f64() * 1000.0)
        .collect();
    eprintln!("starting `warren up` (release, Docker)…");
    let home = home_for(client)?;
    let data = tempfile::TempDir::new()?;
    // Small disk quotas, so that the bursts' sandboxes fit in the disk `up` counts
    // its capacity against (4 GiB each by default).
    let mut args = vec!["--disk-mb".to_owned(), BURST_DISK_MB.to_string()];
    if let Some(n) = opts.pool_size {
        args.extend(["--pool-size".to_owned(), n.to_string()]);
    }
    args.extend(opts.up_args.iter().cloned());
    let up = Stack::builder().up(Up {
        args,
        ..Up::new(home.path(), data.path())?
    })?;
    let pool = opts.pool_size.unwrap_or(UP_POOL_SIZE);
    pool_ready(&up, pool)?;
    let pool_serial = up.pool_waiting()?;
    eprintln!(
        "{} creates back to back ({pool_serial} waiting in the pool)…",
        opts.burst_creates
    );
    let mut serial = Vec::new();
    for _ in 0..opts.burst_creates {
        let started = Instant::now();
        let id = up.create(&serde_json::json!({}))?;
        first_ssh_true(&up.client(client, &id), started)?;
        serial.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    let in_order = serial
        .iter()
        .map(|ms| format!("{ms:.0}"))
        .collect::<Vec<_>>()
        .join(", ");
    serial.sort_by(f64::total_cmp);
    up.rt.block_on(up.api.delete_all())?;
    pool_ready(&up, pool)?;
    if opts.at_once_from_minimum {
        // `warren up` remembers creates for a minute; on the way up the pool
        // passes through its minimum too.
        eprintln!("waiting for the pool to shrink back to {pool}…");
        let demand_forgotten = Instant::now() + Duration::from_secs(65);
        let shrunk = util::wait_until(Duration::from_secs(240), || {
            Instant::now() > demand_forgotten && up.pool_waiting().is_ok_and(|n| n == pool)
        });
        ensure!(shrunk, "the pool did not shrink back to {pool}");
    }
    let pool_at_once = up.pool_waiting()?;
    eprintln!(
        "{} creates at once ({pool_at_once} waiting in the pool)…",
        opts.burst_concurrent
    );
    let at_once: Vec<Result<f64>> = std::thread::scope(|scope| {
        let (api, rt, port) = (&up.api, up.rt.handle(), up.ports[0]);
        let tasks: Vec<_> = (0..opts.burst_concurrent)
            .map(|_| {
                scope.spawn(move || {
                    let started = Instant::now();
                    let id = rt.block_on(api.create(&serde_json::json!({})))?;
                    let c = client
                        .clone()
                        .with_target(Target::new("127.0.0.1", port, &id));
                    first_ssh_true(&c, started)?;
                    Ok(started.elapsed().as_secs_f64() * 1000.0)
                })
            })
            .collect();
        tasks
            .into_iter()
            .map(|t| {
                t.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("panicked")))
            })
            .collect()
    });
    let failures: Vec<String> = at_once
        .iter()
        .filter_map(|r| r.as_ref().err().map(|e| format!("{e:#}")))
        .collect();
    let mut at_once: Vec<f64> = at_once.into_iter().filter_map(Result::ok).collect();
    at_once.sort_by(f64::total_cmp);
    let ms = |v: &[f64], p| {
        if v.is_empty() {
            "n/a".to_owned()
        } else {
            format!("{:.0}", percentile(v, p))
        }
    };
    println!(
        "\n## bench-scale: bursts through `warren up` (Docker, {UP_IMAGE}, pool of {pool}, \
         --disk-mb {BURST_DISK_MB}{})\n",
        opts.up_args
            .iter()
            .map(|a| format!(" {a}"))
            .collect::<String>()
    );
    println!(
        "{} cores, load average {}; each create is `POST /v1/sandboxes` then `ssh <id>@gateway \
         true` retried until it works, all from one address; the floors are `docker run --rm \
         {UP_IMAGE} true` in the same run, one after another and all at once. Waiting in the pool when each burst began: \
         {pool_serial} and {pool_at_once}.\n",
        std::thread::available_parallelism().map_or(0, |c| c.get()),
        load_average()
    );
    println!("| measure | p50 | p95 | succeeded | target |");
    println!("|---|---:|---:|---:|---|");
    println!(
        "| floor: `docker run --rm {UP_IMAGE} true` ({}) | {} ms | {} ms | | |",
        floor.len(),
        ms(&floor, 0.5),
        ms(&floor, 0.95)
    );
    println!(
        "| {} creates back to back → first `ssh true` | {} ms | {} ms | {} of {} | p50 < 150 ms, p95 < 300 ms |",
        opts.burst_creates,
        ms(&serial, 0.5),
        ms(&serial, 0.95),
        serial.len(),
        opts.burst_creates
    );
    println!(
        "| floor: `docker run --rm {UP_IMAGE} true`, {} at once | {} ms | {} ms | | |",
        floor_at_once.len(),
        ms(&floor_at_once, 0.5),
        ms(&floor_at_once, 0.95)
    );
    println!(
        "| {} creates at once → each answers `ssh true` | {} ms | {} ms | {} of {} | all, p95 < 2 s |",
        opts.burst_concurrent,
        ms(&at_once, 0.5),
        ms(&at_once, 0.95),
        at_once.len(),
        opts.burst_concurrent
    );
    println!("\nThe creates back to back, in order (ms): {in_order}.");
    if !failures.is_empty() {
        println!("\nFailed creates:\n\n{}", failures.join("\n"));
    }
    eprintln!("removing the bursts' sandboxes and stopping `warren up`…");
    drop(up);
    Ok(())
}
