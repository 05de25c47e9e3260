//! bench-docker: how fast a Docker sandbox is ready, and what idle sandboxes cost.
//!
//! One gateway (in-process: store, runner hub, SSH front door), one `warren-runner
//! run --backend docker` (release) with the static agent, both from
//! `warren_tests::stack` (`Stack::builder().release().docker(…)`), the real `ssh`
//! client.
//! Prints, all measured in the same run:
//! - the baseline: `docker run --rm IMAGE true`, p50 and p95 over N runs;
//! - cold: create → first successful `ssh <id>@gateway true`, p50 and p95 over N
//!   sandboxes (from an image already on the runner; the runner has no pool and
//!   `--spare-networks 0`), with the create request's own share;
//! - cold on spares: the same with the runner's default 2 networks made ahead (the
//!   bench waits for them to be made again between creates);
//! - warm: the same with the runner restarted with `--pool IMAGE=P`, each create a
//!   claim (the bench waits for the pool to refill between creates);
//! - with M idle sandboxes: the runner's RSS and each container's memory (cgroup
//!   usage and its anonymous part, read from cgroup v1 or v2).
//!
//! Creates ask for the gateway's default limits (1 CPU, 1024 MiB), as the API does.
//!
//! `cargo run --release -p warren-tests --bin bench-docker [-- --creates 20 --idle 50
//! --pool 2 --image warren-busybox:latest --runner-log]` (as root, with a Docker
//! engine; `--runner-log` prints the runner's log at the end, where the Docker
//! backend's `made` debug lines say where each create's time went).

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use warren_keys::SandboxId;
use warren_runner::protocol::{Request, SandboxSpec};
use warren_tests::Cmd;
use warren_tests::stack::{DockerStack, Stack, docker_run_floor};
use warren_tests::util::{self, container_memory_kib, wait_until};

struct Options {
    creates: usize,
    idle: usize,
    pool: usize,
    image: String,
    /// Print the runner's log at the end.
    runner_log: bool,
}

fn options() -> Result<Options> {
    let mut o = Options {
        creates: 20,
        idle: 50,
        pool: 2,
        image: "warren-busybox:latest".into(),
        runner_log: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().context("a flag needs a value");
        match arg.as_str() {
            "--creates" => o.creates = value()?.parse()?,
            "--idle" => o.idle = value()?.parse()?,
            "--pool" => o.pool = value()?.parse::<usize>()?.max(1),
            "--image" => o.image = value()?,
            "--runner-log" => o.runner_log = true,
            other => bail!("unknown argument {other}"),
        }
    }
    Ok(o)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// The runner's default number of spare networks (`--spare-networks`).
const SPARES: usize = 2;

/// The runner's spare networks nobody took: its networks labelled as spares whose
/// slot has no `claimed` marker.
fn ready_spares(runner: &str, run_dir: &std::path::Path) -> usize {
    let Ok(out) = Cmd::new("docker")
        .args(["network", "ls", "--filter"])
        .arg(format!("label=org.warren.runner={runner}"))
        .args(["--filter", "label=org.warren.pool=spare", "--format"])
        .arg("{{.Label \"org.warren.sandbox\"}}")
        .run()
    else {
        return 0;
    };
    out.stdout_str()
        .lines()
        .filter(|slot| !run_dir.join(".runner").join(slot).join("claimed").exists())
        .count()
}

fn main() -> Result<()> {
    let opts = options()?;
    ensure!(
        util::running_as_root(),
        "bench-docker needs root (the docker backend does)"
    );
    eprintln!("building the runner (release), the static agent and the image…");
    warren_tests::stack::docker_agent_and_image(&opts.image)?;
    // The gateway in-process and one Docker runner (release), no pool and no
    // networks made ahead; the bench makes sandboxes through the tunnel itself.
    let mut stack = Stack::builder()
        .release()
        .docker(&["--spare-networks", "0"])?
        .context("bench-docker needs a Docker engine")?;
    let run_dir = stack.runner.listen_dir().to_owned();
    let runner_id = stack.runner.id.clone();
    let spec = SandboxSpec {
        image: Some(opts.image.clone()),
        millicpus: Some(1000),
        memory_mb: Some(1024),
        ..SandboxSpec::default()
    };
    let mut made = Vec::new();
    let delete = |stack: &DockerStack, id: &SandboxId| {
        let _ = stack.control(Request::Delete {
            sandbox: id.clone(),
        });
    };
    // Create → first `ssh true`, one sandbox at a time; also how long the create
    // request alone took.
    let create_and_login =
        |stack: &DockerStack, made: &mut Vec<SandboxId>| -> Result<(Duration, Duration)> {
            let started = Instant::now();
            let (id, c) = stack.sandbox(spec.clone())?;
            let created = started.elapsed();
            made.push(id);
            loop {
                let out = c.exec("true").timeout(Duration::from_secs(20)).run()?;
                if out.status.success() {
                    break;
                }
                ensure!(started.elapsed() < Duration::from_secs(60), "no ssh: {out}");
            }
            Ok((created, started.elapsed()))
        };

    let result = (|| -> Result<()> {
        let baseline = docker_run_floor(&opts.image, opts.creates)?;
        let mut cold = Vec::new();
        let mut cold_requests = Vec::new();
        for _ in 0..opts.creates {
            let (request, login) = create_and_login(&stack, &mut made)?;
            cold_requests.push(request);
            cold.push(login);
        }
        cold.sort();
        cold_requests.sort();
        let cold_log = stack.runner_log();
        // Removes what `made` holds and starts the runner again with other flags.
        let restart = |stack: &mut DockerStack, made: &mut Vec<SandboxId>, extra: &[&str]| {
            for id in made.drain(..) {
                delete(stack, &id);
            }
            stack.restart_runner_with(extra)
        };
        // The same cold creates with networks made ahead (the runner's default).
        restart(&mut stack, &mut made, &[])?;
        let mut spared = Vec::new();
        for _ in 0..opts.creates {
            ensure!(
                wait_until(Duration::from_secs(60), || {
                    ready_spares(runner_id.as_str(), &run_dir) == SPARES
                }),
                "the spare networks were not made:\n{}",
                stack.runner_log()
            );
            spared.push(create_and_login(&stack, &mut made)?.1);
        }
        spared.sort();
        let spare_log = stack.runner_log().split_off(cold_log.len());
        // The same creates from a warm pool: the runner again, with one.
        let pool = format!("{}={}", opts.image, opts.pool);
        restart(&mut stack, &mut made, &["--pool", &pool])?;
        let mut warm = Vec::new();
        for i in 0..opts.creates {
            stack.wait_for_pool(opts.pool, &format!("before warm create {i}"))?;
            warm.push(create_and_login(&stack, &mut made)?.1);
        }
        warm.sort();
        let latencies = &cold;
        // Up to M idle sandboxes in all.
        while made.len() < opts.idle {
            made.push(stack.sandbox(spec.clone())?.0);
        }
        std::thread::sleep(Duration::from_secs(5));
        let runner_rss = util::rss_kib(stack.runner.pid()).unwrap_or(0);
        let mut usages = Vec::new();
        let mut anons = Vec::new();
        for id in &made {
            let cid = Cmd::new("docker")
                .args(["inspect", "--format", "{{.Id}}", &format!("warren-{id}")])
                .run()?
                .success()?
                .stdout_trimmed()
                .to_owned();
            if let Some((usage, anon)) = container_memory_kib(&cid) {
                usages.push(usage);
                anons.push(anon);
            }
        }
        ensure!(!usages.is_empty(), "no container cgroup memory found");
        usages.sort_unstable();
        anons.sort_unstable();
        let mean = |v: &[u64]| v.iter().sum::<u64>() as f64 / v.len() as f64 / 1024.0;
        let max = |v: &[u64]| *v.last().unwrap_or(&0) as f64 / 1024.0;
        println!(
            "\n## bench-docker ({}, Docker backend through the gateway)\n",
            opts.image
        );
        let ms = |v: &[Duration], p| percentile(v, p).as_millis();
        println!(
            "| measure ({} each) | p50 | p95 | target |",
            latencies.len()
        );
        println!("|---|---|---|---|");
        println!(
            "| baseline: `docker run --rm {} true` | {} ms | {} ms | |",
            opts.image,
            ms(&baseline, 0.5),
            ms(&baseline, 0.95)
        );
        println!(
            "| cold create, no networks made ahead → first `ssh true` | {} ms | {} ms | ({:.2}× baseline) |",
            ms(latencies, 0.5),
            ms(latencies, 0.95),
            ms(latencies, 0.5) as f64 / ms(&baseline, 0.5).max(1) as f64
        );
        println!(
            "| … of which the create request (the runner's create) | {} ms | {} ms | |",
            ms(&cold_requests, 0.5),
            ms(&cold_requests, 0.95)
        );
        println!(
            "| cold create, {SPARES} networks made ahead → first `ssh true` | {} ms | {} ms | ≤ 1.3× baseline ({:.2}× here) |",
            ms(&spared, 0.5),
            ms(&spared, 0.95),
            ms(&spared, 0.5) as f64 / ms(&baseline, 0.5).max(1) as f64
        );
        println!(
            "| warm-pool create → first `ssh true` (pool of {}) | {} ms | {} ms | p50 < 150 ms, p95 < 300 ms |",
            opts.pool,
            ms(&warm, 0.5),
            ms(&warm, 0.95)
        );
        println!("\n| measure | value | target |");
        println!("|---|---|---|");
        println!(
            "| idle container memory, mean / max (cgroup usage, {} sandboxes) | {:.1} / {:.1} MiB | < 30 MB |",
            usages.len(),
            mean(&usages),
            max(&usages)
        );
        println!(
            "| idle container memory, anonymous part, mean / max | {:.1} / {:.1} MiB | |",
            mean(&anons),
            max(&anons)
        );
        println!(
            "| runner RSS with {} sandboxes | {:.1} MiB | |",
            made.len(),
            runner_rss as f64 / 1024.0
        );
        if opts.runner_log {
            println!("\n## the runner's log, cold creates\n\n{cold_log}");
            println!("\n## the runner's log, cold creates on spares\n\n{spare_log}");
        }
        Ok(())
    })();

    eprintln!("removing {} sandboxes…", made.len());
    for id in &made {
        delete(&stack, id);
    }
    // The stack removes the rest (the pool's members) when dropped.
    drop(stack);
    result
}
