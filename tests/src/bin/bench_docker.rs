//! bench-docker: how fast a Docker sandbox is ready, and what idle sandboxes cost.
//!
//! One gateway (in-process: store, runner hub, SSH front door), one `warren-runner
//! run --backend docker` (release) with the static agent, the real `ssh` client.
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
//! --pool 2 --image warren-busybox:latest --runner-log warn,warren_runner=debug]` (as
//! root, with a Docker engine; `--runner-log` prints the runner's log at the end,
//! where `made` lines say where each create's time went).

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use warren_gateway::server::{self, Gateway, Listen};
use warren_keys::SandboxId;
use warren_runner::protocol::{Request, Response, SandboxSpec};
use warren_store::{NewSandbox, SandboxState, Store};
use warren_tests::util::{self, container_memory_kib, wait_until};
use warren_tests::{Client, Cmd, Profile, Target, build_bin};

const FOREVER: Duration = Duration::from_secs(24 * 3600);

struct Options {
    creates: usize,
    idle: usize,
    pool: usize,
    image: String,
    /// `RUST_LOG` for the runner; its log is printed at the end when given.
    runner_log: Option<String>,
}

fn options() -> Result<Options> {
    let mut o = Options {
        creates: 20,
        idle: 50,
        pool: 2,
        image: "warren-busybox:latest".into(),
        runner_log: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().context("a flag needs a value");
        match arg.as_str() {
            "--creates" => o.creates = value()?.parse()?,
            "--idle" => o.idle = value()?.parse()?,
            "--pool" => o.pool = value()?.parse::<usize>()?.max(1),
            "--image" => o.image = value()?,
            "--runner-log" => o.runner_log = Some(value()?),
            other => bail!("unknown argument {other}"),
        }
    }
    Ok(o)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// `docker run --rm IMAGE true`, timed `n` times: the floor a cold create is held to.
fn docker_run_baseline(image: &str, n: usize) -> Result<Vec<Duration>> {
    let mut times = Vec::new();
    for _ in 0..n {
        let started = Instant::now();
        Cmd::new("docker")
            .args(["run", "--rm", image, "true"])
            .timeout(Duration::from_secs(60))
            .run()?
            .success()?;
        times.push(started.elapsed());
    }
    times.sort();
    Ok(times)
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

/// The runner's pool members waiting to be claimed: containers still named after
/// their slot whose agent has set up its user (`<run dir>/<slot>/user`).
fn waiting_members(runner: &str, run_dir: &std::path::Path) -> usize {
    let Ok(out) = Cmd::new("docker")
        .args([
            "ps",
            "--filter",
            &format!("label=org.warren.runner={runner}"),
        ])
        .args(["--filter", "label=org.warren.pool", "--format"])
        .arg("{{.Names}} {{.Label \"org.warren.sandbox\"}}")
        .run()
    else {
        return 0;
    };
    out.stdout_str()
        .lines()
        .filter_map(|l| l.split_once(' '))
        .filter(|(name, slot)| {
            *name == format!("warren-{slot}") && run_dir.join(slot).join("user").is_file()
        })
        .count()
}

fn main() -> Result<()> {
    let opts = options()?;
    ensure!(
        util::running_as_root(),
        "bench-docker needs root (the docker backend does)"
    );
    eprintln!("building the runner (release) and the static agent…");
    let runner_bin = build_bin("warren-runner", "warren-runner", Profile::Release)?;
    let agent = warren_tests::stack::docker_agent_and_image(&opts.image)?;

    let work = tempfile::TempDir::new()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let client = Client::new(Target::new("127.0.0.1", 1, "x"))?;
    let key = russh::keys::PublicKey::from_openssh(client.public_key().trim())?;
    let (store, hub, verifier, user, ssh_port) = rt.block_on(async {
        let data = work.path().join("gateway");
        std::fs::create_dir(&data)?;
        let store = Store::open_in_data_dir(&data).await?;
        let listen = Listen::loopback();
        // The bench makes sandboxes through the tunnel itself: no reconciler.
        let options = server::Options {
            reconcile_every: None,
            ..server::Options::default()
        };
        let gateway = Gateway::bind_with(store.clone(), &data, listen, options).await?;
        let verifier = gateway.signer.verifier().to_base64();
        let hub = gateway.hub.clone();
        let port = gateway.ssh_addr.port();
        tokio::spawn(gateway.serve(std::future::pending()));
        let user = store.create_user("bench", false).await?;
        store.add_ssh_key(&user.id, "bench", &key).await?;
        anyhow::Ok((store, hub, verifier, user, port))
    })?;
    let token = rt.block_on(store.create_join_token(Duration::from_secs(600)))?;
    let runner_data = work.path().join("runner");
    Cmd::new(&runner_bin)
        .args([
            "join",
            "--gateway",
            &hub.local_addr().to_string(),
            "--token",
        ])
        .arg(token.secret.expose())
        .args(["--fingerprint", hub.fingerprint(), "--name", "bench"])
        .arg("--data-dir")
        .arg(&runner_data)
        .run()?
        .success()?;
    let start_runner = |pool: Option<String>, spares: usize| {
        let mut cmd = Cmd::new(&runner_bin)
            .args(["run", "--backend", "docker", "--data-dir"])
            .arg(&runner_data)
            .arg("--agent-bin")
            .arg(&agent)
            .env("RUST_LOG", opts.runner_log.as_deref().unwrap_or("warn"))
            .timeout(FOREVER);
        if let Some(pool) = pool {
            cmd = cmd.args(["--pool", &pool]);
        }
        cmd = cmd.args(["--spare-networks", &spares.to_string()]);
        cmd.spawn()
    };
    let mut runner = start_runner(None, 0)?;
    let runner_id = rt
        .block_on(store.list_runners())?
        .into_iter()
        .find(|r| r.name == "bench")
        .context("the runner did not join")?
        .id;
    ensure!(
        wait_until(Duration::from_secs(60), || hub.is_online(&runner_id)),
        "the runner never came online:\n{}",
        runner.stderr().contents_str()
    );

    let mut made = Vec::new();
    let create = |id: &SandboxId| -> Result<()> {
        rt.block_on(async {
            store
                .create_sandbox(&NewSandbox {
                    id: id.clone(),
                    owner_id: user.id.clone(),
                    runner_id: Some(runner_id.clone()),
                    image: opts.image.clone(),
                    repo: None,
                    branch: None,
                    forward_agent: false,
                    cpus: 1.0,
                    memory_mb: 512,
                    idle_timeout_s: None,
                    ttl_s: None,
                    disk_mb: None,
                })
                .await?;
            let spec = SandboxSpec {
                image: Some(opts.image.clone()),
                millicpus: Some(1000),
                memory_mb: Some(1024),
                ..SandboxSpec::default()
            };
            let out = hub
                .control(
                    &runner_id,
                    &Request::Create {
                        sandbox: id.clone(),
                        token_key: verifier.clone(),
                        authorized_keys: vec![],
                        spec,
                    },
                )
                .await?;
            ensure!(out == Response::Ok, "create: {out:?}");
            store
                .set_sandbox_state(id, SandboxState::Running, "bench")
                .await?;
            anyhow::Ok(())
        })
    };

    let delete = |id: &SandboxId| {
        let _ = rt.block_on(hub.control(
            &runner_id,
            &Request::Delete {
                sandbox: id.clone(),
            },
        ));
    };
    // Create → first `ssh true`, one sandbox at a time; also how long the create
    // request alone took.
    let create_and_login = |made: &mut Vec<SandboxId>| -> Result<(Duration, Duration)> {
        let id = SandboxId::generate();
        let c = client
            .clone()
            .with_target(Target::new("127.0.0.1", ssh_port, id.as_str()));
        let started = Instant::now();
        create(&id)?;
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
    let run_dir = runner_data.join("sandboxes");

    let result = (|| -> Result<()> {
        let baseline = docker_run_baseline(&opts.image, opts.creates)?;
        let mut cold = Vec::new();
        let mut cold_requests = Vec::new();
        for _ in 0..opts.creates {
            let (request, login) = create_and_login(&mut made)?;
            cold_requests.push(request);
            cold.push(login);
        }
        cold.sort();
        cold_requests.sort();
        let cold_log = runner.stderr().contents_str();
        // Removes what `made` holds and starts the runner again with other flags.
        let restart = |runner: &mut warren_tests::Running,
                       made: &mut Vec<SandboxId>,
                       pool: Option<String>,
                       spares: usize|
         -> Result<()> {
            for id in made.drain(..) {
                delete(&id);
            }
            Cmd::new("kill")
                .args(["-9", &runner.pid().to_string()])
                .run()?;
            ensure!(
                wait_until(Duration::from_secs(30), || !hub.is_online(&runner_id)),
                "the runner stayed online"
            );
            *runner = start_runner(pool, spares)?;
            Ok(())
        };
        // The same cold creates with networks made ahead (the runner's default).
        restart(&mut runner, &mut made, None, SPARES)?;
        let mut spared = Vec::new();
        for _ in 0..opts.creates {
            ensure!(
                wait_until(Duration::from_secs(60), || hub.is_online(&runner_id)
                    && ready_spares(runner_id.as_str(), &run_dir) == SPARES),
                "the spare networks were not made:\n{}",
                runner.stderr().contents_str()
            );
            spared.push(create_and_login(&mut made)?.1);
        }
        spared.sort();
        let spare_log = runner.stderr().contents_str();
        // The same creates from a warm pool: the runner again, with one.
        restart(
            &mut runner,
            &mut made,
            Some(format!("{}={}", opts.image, opts.pool)),
            SPARES,
        )?;
        let mut warm = Vec::new();
        for _ in 0..opts.creates {
            ensure!(
                wait_until(Duration::from_secs(120), || hub.is_online(&runner_id)
                    && waiting_members(runner_id.as_str(), &run_dir) == opts.pool),
                "the pool did not fill:\n{}",
                runner.stderr().contents_str()
            );
            warm.push(create_and_login(&mut made)?.1);
        }
        warm.sort();
        let latencies = &cold;
        // Up to M idle sandboxes in all.
        while made.len() < opts.idle {
            let id = SandboxId::generate();
            create(&id)?;
            made.push(id);
        }
        std::thread::sleep(Duration::from_secs(5));
        let runner_rss = util::rss_kib(runner.pid()).unwrap_or(0);
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
        if opts.runner_log.is_some() {
            println!("\n## the runner's log, cold creates\n\n{cold_log}");
            println!("\n## the runner's log, cold creates on spares\n\n{spare_log}");
        }
        Ok(())
    })();

    eprintln!("removing {} sandboxes…", made.len());
    for id in &made {
        delete(id);
    }
    // A clean stop removes the pool's members.
    let _ = Cmd::new("kill").arg(runner.pid().to_string()).run();
    wait_until(Duration::from_secs(30), || {
        waiting_members(runner_id.as_str(), &run_dir) == 0
    });
    drop(runner);
    result
}
