//! bench-scale: many sandboxes on one runner, all logged in to at once.
//!
//! ```text
//! cargo run --release -p warren-tests --bin bench-scale [-- --sandboxes 100 --memory-mb 64 --rounds 3]
//! ```
//!
//! The real processes (`warren_tests::stack`): `warren-gateway serve`, one `warren-runner
//! run --backend docker` with the static agent, and `--sandboxes` containers from the
//! busybox image (`--memory-mb` each, the default network policy unless `--network
//! none`). Then, `--rounds` times, one `ssh <id>@gateway true` per sandbox, all started
//! at once; every one must succeed. Each client binds its own loopback source address
//! (127.0.1.x, a few per address), as users behind different addresses would: the
//! front door admits at most 10 unauthenticated connections per address.
//!
//! Prints a Markdown table (stdout): connect time p50/p95/max over all logins (each
//! one's whole `ssh … true`, key exchange and exit included), the RSS of the gateway
//! and the runner before and after, and the containers' memory from their cgroups (v1
//! or v2). As root, with a Docker engine; without one it fails.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use warren_runner::protocol::{NetworkPolicy, SandboxSpec};
use warren_tests::bench::bench_client;
use warren_tests::stack::{Backend, GatewayStack, StackOptions, docker_agent_and_image};
use warren_tests::util::{self, container_memory_kib};
use warren_tests::{Client, Cmd, Running, Target};

struct Options {
    sandboxes: usize,
    memory_mb: u64,
    rounds: usize,
    image: String,
    network_none: bool,
    create_concurrency: usize,
    /// A static agent already built (else `scripts/build-static-agent` builds one).
    agent_bin: Option<std::path::PathBuf>,
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
                "--network" => match value()?.as_str() {
                    "none" => o.network_none = true,
                    "all" => o.network_none = false,
                    other => bail!("--network all|none, not {other:?}"),
                },
                "-h" | "--help" => {
                    println!(
                        "bench-scale [--sandboxes N (100)] [--memory-mb M (64)] [--rounds R (3)] \
                         [--image IMAGE (warren-busybox:latest)] [--network all|none (all)] \
                         [--create-concurrency N (4)] [--agent-bin STATIC_AGENT]"
                    );
                    std::process::exit(0);
                }
                other => bail!("unknown argument {other:?} (try --help)"),
            }
        }
        ensure!(
            o.sandboxes > 0 && o.rounds > 0 && o.create_concurrency > 0,
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

/// One round: `ssh <id>@gateway true` for every sandbox at once; each one's seconds.
fn storm(stack: &GatewayStack, client: &Client) -> Result<Vec<f64>> {
    let started = Instant::now();
    let sessions: Vec<Running> = (0..stack.sandboxes.len())
        .map(|i| {
            // A few clients per source address (the front door's per-address bound).
            let source = format!("127.0.1.{}", i / 4 + 1);
            stack
                .client(client, i)
                .with_option(format!("BindAddress={source}"))
                .exec("true")
                .timeout(Duration::from_secs(120))
                .spawn()
        })
        .collect::<Result<_>>()?;
    let mut times = Vec::with_capacity(sessions.len());
    let mut failures = Vec::new();
    for (i, session) in sessions.into_iter().enumerate() {
        let out = session.wait()?;
        if out.status.success() {
            times.push(out.elapsed.as_secs_f64() * 1000.0);
        } else {
            failures.push(format!("{}: {out}", stack.sandboxes[i]));
        }
    }
    ensure!(
        failures.is_empty(),
        "{} of {} logins failed:\n{}",
        failures.len(),
        stack.sandboxes.len(),
        failures.join("\n")
    );
    eprintln!(
        "  {} logins in {:.1} s",
        times.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(times)
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
    eprintln!("open-files limit {nofile}; building the static agent and the image…");
    let agent = match &opts.agent_bin {
        Some(path) => path.clone(),
        None => docker_agent_and_image(&opts.image)?,
    };
    let work = tempfile::Builder::new()
        .prefix("warren-bench-scale-")
        .tempdir()?;
    let client = bench_client(Client::new(Target::new("127.0.0.1", 1, "x"))?);
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
    let stack = GatewayStack::start(
        work.path(),
        &client,
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

    let mut times = Vec::new();
    for round in 1..=opts.rounds {
        eprintln!(
            "round {round}: {} concurrent `ssh <id>@gateway true`",
            opts.sandboxes
        );
        times.extend(storm(&stack, &client)?);
    }
    std::thread::sleep(Duration::from_secs(2));
    let (gw_after, runner_after) = rss_mib(&stack);
    let mut memory = container_memory(&stack)?;
    times.sort_by(f64::total_cmp);

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
        "{} cores; set up (creates, {} at a time) in {:.0} s. Each login is a whole \
         `ssh <id>@gateway true` (curve25519-sha256, aes256-gcm), {n} started at once, \
         {} rounds.\n",
        std::thread::available_parallelism().map_or(0, |c| c.get()),
        opts.create_concurrency,
        setup.as_secs_f64(),
        opts.rounds
    );
    println!("| measure | value |");
    println!("|---|---:|");
    println!(
        "| logins that succeeded | {} of {} |",
        times.len(),
        n * opts.rounds
    );
    for (label, p) in [("p50", 0.5), ("p95", 0.95), ("max", 1.0)] {
        println!(
            "| connect time, {label} | {:.0} ms |",
            percentile(&times, p)
        );
    }
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
