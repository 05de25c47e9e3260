//! bench-tier: a gateway tier at scale — several `warren-gateway serve` processes
//! on one PostgreSQL, many `warren-runner` processes (process backend) with a
//! tunnel to each gateway, many sandboxes spread over them, and one `ssh
//! <id>@gateway true` per sandbox, all started at once and spread over the
//! gateways (issue 29).
//!
//! ```text
//! cargo run --release -p warren-tests --bin bench-tier [-- --gateways 3 --runners 50
//!     --sandboxes 500 --create-concurrency 8 --rounds 1 --debug]
//! ```
//!
//! The store is a fresh schema in the server at `WARREN_TEST_POSTGRES_URL`, or in
//! a private one this bench starts (scripts/test-postgres). The processes are the
//! release build (`--debug`: the debug build, for a quick check without a release
//! build). The sandboxes are created through the HTTP API, through each gateway in
//! turn (placement spreads them over the runners). Each client binds its own
//! loopback source address (127.0.1.x, four per address), as users behind
//! different addresses would, so no address waits at the front door's per-address
//! bound. Every login must succeed.
//!
//! Prints a Markdown table (stdout): connect time p50/p95/max (each one's whole `ssh
//! … true`, key exchange and exit included) over all logins and per gateway, beside
//! the same login alone (ten in a row through each gateway, before the storm), each
//! gateway's RSS and open descriptors (/proc) before, at their peak during (sampled
//! every 50 ms) and after the logins, and the runners' total RSS.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use warren_keys::SandboxId;
use warren_tests::bench::bench_client;
use warren_tests::stack::{PrivatePostgres, Stack, TierStack};
use warren_tests::{Running, util};

/// Logins one at a time through each gateway, the floor beside the storm.
const ALONE: usize = 10;

/// bench-tier's flags (the defaults are the full run of issue 29).
#[derive(clap::Parser)]
struct Options {
    /// `warren-gateway serve` processes on the one PostgreSQL.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..))]
    gateways: u64,
    /// `warren-runner run --backend process` processes.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..))]
    runners: u64,
    /// Sandboxes, and so concurrent logins per round.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u64).range(1..=250_000))]
    sandboxes: u64,
    /// Creates in flight at once.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..))]
    create_concurrency: u64,
    /// Rounds of logins.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    rounds: u64,
    /// The debug build of the processes (a quick check without a release build).
    #[arg(long)]
    debug: bool,
}

/// What /proc says of one gateway: RSS in MiB and open descriptors.
#[derive(Clone, Copy, Default)]
struct Footprint {
    rss_mib: f64,
    fds: usize,
}

fn footprint(pid: Option<u32>) -> Footprint {
    let Some(pid) = pid else {
        return Footprint::default();
    };
    Footprint {
        rss_mib: util::rss_kib(pid).unwrap_or(0) as f64 / 1024.0,
        fds: std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count),
    }
}

/// The most each of `pids` held (RSS and descriptors, each at its own peak) while
/// `work` ran, sampled every 50 ms.
fn peak_while<T>(pids: &[Option<u32>], work: impl FnOnce() -> T) -> (T, Vec<Footprint>) {
    let done = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| {
        let sampler = scope.spawn(|| {
            let mut peak = vec![Footprint::default(); pids.len()];
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                for (p, pid) in peak.iter_mut().zip(pids) {
                    let now = footprint(*pid);
                    p.rss_mib = p.rss_mib.max(now.rss_mib);
                    p.fds = p.fds.max(now.fds);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            peak
        });
        let result = work();
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        (result, sampler.join().unwrap_or_default())
    })
}

fn gateways_footprint(tier: &mut TierStack) -> Vec<Footprint> {
    tier.gateways
        .iter_mut()
        .map(|g| footprint(g.pid()))
        .collect()
}

fn runners_rss_mib(tier: &TierStack) -> f64 {
    let kib: u64 = tier
        .runners
        .iter()
        .map(|r| util::rss_kib(r.pid()).unwrap_or(0))
        .sum();
    kib as f64 / 1024.0
}

/// The `n`-th client's source address: four clients per loopback address.
fn source_address(n: usize) -> String {
    let a = n / 4;
    format!("127.0.{}.{}", 1 + a / 250, 1 + a % 250)
}

/// One round: `ssh <id>@gateway true` for every sandbox at once, the n-th through
/// gateway n mod the tier's size; each one's gateway and milliseconds.
fn storm(tier: &TierStack, sandboxes: &[SandboxId]) -> Result<Vec<(usize, f64)>> {
    let gateways = tier.gateways.len();
    let started = Instant::now();
    let sessions: Vec<Running> = sandboxes
        .iter()
        .enumerate()
        .map(|(n, id)| {
            bench_client(tier.relay(n % gateways, id))
                .with_option(format!("BindAddress={}", source_address(n)))
                .exec("true")
                .timeout(Duration::from_secs(300))
                .spawn()
        })
        .collect::<Result<_>>()?;
    eprintln!(
        "  {} clients started in {:.1} s",
        sessions.len(),
        started.elapsed().as_secs_f64()
    );
    let times = util::logins_succeeded(
        sessions,
        |n| format!("{} via gateway {}", sandboxes[n], n % gateways),
        started,
    )?;
    Ok(times
        .into_iter()
        .map(|(n, ms)| (n % gateways, ms))
        .collect())
}

/// The floor beside the storm: `ssh <id>@gateway true` alone, `per_gateway` times
/// in a row through each gateway; milliseconds.
fn one_at_a_time(
    tier: &TierStack,
    sandboxes: &[SandboxId],
    per_gateway: usize,
) -> Result<Vec<f64>> {
    let mut times = Vec::new();
    for g in 0..tier.gateways.len() {
        for i in 0..per_gateway {
            let out = bench_client(tier.relay(g, &sandboxes[i % sandboxes.len()]))
                .exec("true")
                .timeout(Duration::from_secs(60))
                .run()?
                .success()?;
            times.push(out.elapsed.as_secs_f64() * 1000.0);
        }
    }
    Ok(times)
}

/// p50 / p95 / max of `times` (milliseconds), as a table cell.
fn spread(mut times: Vec<f64>) -> String {
    if times.is_empty() {
        return "n/a".into();
    }
    times.sort_by(f64::total_cmp);
    let at = |p: f64| times[((times.len() - 1) as f64 * p).round() as usize];
    format!("{:.0} / {:.0} / {:.0} ms", at(0.5), at(0.95), at(1.0))
}

fn main() -> Result<()> {
    let opts = <Options as clap::Parser>::parse();
    let (gateways, runners) = (opts.gateways as usize, opts.runners as usize);
    let rounds = opts.rounds as usize;
    let nofile = util::raise_nofile()?;
    // The bench's own server unless the tests' one is named.
    let private = match std::env::var("WARREN_TEST_POSTGRES_URL") {
        Ok(url) if !url.is_empty() => None,
        _ => Some(PrivatePostgres::start()?.context("PostgreSQL is not installed")?),
    };
    let mut builder = Stack::builder();
    if let Some(pg) = &private {
        builder = builder.on_postgres(&pg.url);
    }
    if !opts.debug {
        builder = builder.release();
    }
    eprintln!(
        "open-files limit {nofile}; starting {} gateways and {} runners ({} build)…",
        opts.gateways,
        opts.runners,
        if opts.debug { "debug" } else { "release" }
    );
    let started = Instant::now();
    let mut tier = builder
        .process_tier(gateways, runners)?
        .context("the tier needs PostgreSQL")?;
    let tier_up = started.elapsed();
    eprintln!(
        "tier up in {:.1} s; creating {} sandboxes…",
        tier_up.as_secs_f64(),
        opts.sandboxes
    );
    let created = Instant::now();
    let made = tier.create_many(opts.sandboxes as usize, opts.create_concurrency as usize)?;
    let create_time = created.elapsed();
    let mut per_runner = std::collections::HashMap::new();
    for (_, runner) in &made {
        *per_runner.entry(runner.clone()).or_insert(0usize) += 1;
    }
    let fullest = per_runner.values().max().copied().unwrap_or(0);
    let emptiest = if per_runner.len() < runners {
        0
    } else {
        per_runner.values().min().copied().unwrap_or(0)
    };
    let sandboxes: Vec<SandboxId> = made.into_iter().map(|(id, _)| id).collect();
    eprintln!(
        "{} sandboxes in {:.1} s ({emptiest}–{fullest} per runner)",
        sandboxes.len(),
        create_time.as_secs_f64()
    );
    std::thread::sleep(Duration::from_secs(3));
    let before = gateways_footprint(&mut tier);
    let runners_before = runners_rss_mib(&tier);

    // One warm-up login per gateway, then the floor.
    one_at_a_time(&tier, &sandboxes, 1)?;
    let alone = one_at_a_time(&tier, &sandboxes, ALONE)?;
    let pids: Vec<Option<u32>> = tier.gateways.iter_mut().map(|g| g.pid()).collect();
    let (times, peak) = peak_while(&pids, || -> Result<Vec<(usize, f64)>> {
        let mut times = Vec::new();
        for round in 1..=rounds {
            eprintln!(
                "round {round}: {} concurrent `ssh <id>@gateway true` over {} gateways",
                sandboxes.len(),
                opts.gateways
            );
            times.extend(storm(&tier, &sandboxes)?);
        }
        Ok(times)
    });
    let times = times?;
    std::thread::sleep(Duration::from_secs(2));
    let after = gateways_footprint(&mut tier);
    let runners_after = runners_rss_mib(&tier);

    let n = sandboxes.len();
    println!(
        "\n## bench-tier: {} gateways on one PostgreSQL, {} process-backend runners, {n} \
         sandboxes\n",
        opts.gateways, opts.runners
    );
    println!(
        "{} cores, load average {}; {} build; tier up in {:.0} s, {n} creates through the \
         API ({} at a time, the gateways in turn) in {:.0} s, {emptiest}–{fullest} sandboxes \
         per runner. Each login is a whole `ssh <id>@gateway true` (curve25519-sha256, \
         aes256-gcm), {n} started at once, the n-th through gateway n mod {}, four clients \
         per source address; {} round(s).\n",
        std::thread::available_parallelism().map_or(0, |c| c.get()),
        std::fs::read_to_string("/proc/loadavg")
            .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
            .unwrap_or_default(),
        if opts.debug { "debug" } else { "release" },
        tier_up.as_secs_f64(),
        opts.create_concurrency,
        create_time.as_secs_f64(),
        opts.gateways,
        opts.rounds
    );
    println!("| measure | value |");
    println!("|---|---:|");
    println!(
        "| logins that succeeded | {} of {} |",
        times.len(),
        n * rounds
    );
    println!(
        "| {n} at once: connect time p50 / p95 / max | {} |",
        spread(times.iter().map(|t| t.1).collect())
    );
    println!(
        "| beside it, one at a time ({ALONE} in a row through each gateway): p50 / p95 / max | {} |",
        spread(alone)
    );
    for g in 0..gateways {
        let mine: Vec<f64> = times.iter().filter(|t| t.0 == g).map(|t| t.1).collect();
        println!(
            "| gateway {g}: {} logins, p50 / p95 / max | {} |",
            mine.len(),
            spread(mine)
        );
    }
    for (g, ((b, p), a)) in before.iter().zip(&peak).zip(&after).enumerate() {
        println!(
            "| gateway {g}: RSS before / peak during / after the logins | {:.1} / {:.1} / {:.1} MiB |",
            b.rss_mib, p.rss_mib, a.rss_mib
        );
        println!(
            "| gateway {g}: open descriptors before / peak during / after | {} / {} / {} |",
            b.fds, p.fds, a.fds
        );
    }
    println!(
        "| {} runners' RSS, total before / after | {runners_before:.0} / {runners_after:.0} MiB |",
        opts.runners
    );
    eprintln!("stopping the tier…");
    drop(tier);
    drop(private);
    Ok(())
}
