//! bench-gateway: OpenSSH's sshd, warren-agent direct, and the same agent through the
//! gateway's front door and a runner's reverse tunnel, side by side in one run.
//!
//! ```text
//! cargo run --release -p warren-tests --bin bench-gateway [-- --size-mib 1024 --sessions 1000 --runs 20]
//! ```
//!
//! The gateway path is the real thing, as separate processes: `warren-gateway serve`
//! (release), one `warren-runner run` (release, process backend) joined to it, and the
//! sandbox agent that runner started. The benchmark sets the stack up through the
//! gateway's data directory: an in-process `RunnerHub` on the runner port takes the
//! runner's join and the sandbox's `Create`, then shuts down, and the real gateway
//! binary takes over the port; the runner reconnects by itself and its agent keeps
//! running. So the gateway's memory is that process's own.
//!
//! Measures with the real OpenSSH clients, cipher aes256-gcm: scp and sftp throughput
//! both ways (checksums verified), `cat` over exec both ways, `ssh host true`, the
//! keystroke echo on a PTY (plain, and through a persistent session), memory with 1
//! and N idle sessions, and the agent's memory per detached persistent session. Prints a Markdown
//! table (stdout) with the ratios to direct sshd and the issue's targets; progress goes
//! to stderr. Needs root (sshd logs in the current user) and a tmpfs at /dev/shm.

use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use warren_gateway::store::{NewSandbox, SandboxState, Store};
use warren_gateway::tunnel::RunnerHub;
use warren_keys::{SandboxId, TokenSigner};
use warren_runner::protocol::{Request, Response};
use warren_tests::bench::{
    CIPHER, KEYS, MEASUREMENTS, Memory, Scores, Server, Workload, cell, conditions, connect_rows,
    keystroke_row, measure, memory_of, memory_rows, mib, ratio, throughput_rows,
};
use warren_tests::bench_persistent::{self, DETACHED_SESSIONS};
use warren_tests::util::{self, wait_until};
use warren_tests::{Agent, Client, Cmd, Profile, Running, Sshd, Target, build_bin};

/// Long enough for any run; the processes are killed when the benchmark ends.
const FOREVER: Duration = Duration::from_secs(24 * 3600);

struct Options {
    size_mib: u64,
    sessions: usize,
    runs: usize,
    dir: PathBuf,
    /// Only these measurements (`--only scp,cat`); all when empty.
    only: Vec<String>,
}

impl Options {
    fn parse() -> Result<Options> {
        let mut o = Options {
            size_mib: 1024,
            sessions: 1000,
            runs: 20,
            dir: PathBuf::from("/dev/shm"),
            only: Vec::new(),
        };
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            let mut value = || args.next().with_context(|| format!("{arg} needs a value"));
            match arg.as_str() {
                "--size-mib" => o.size_mib = value()?.parse()?,
                "--sessions" => o.sessions = value()?.parse()?,
                "--runs" => o.runs = value()?.parse()?,
                "--dir" => o.dir = value()?.into(),
                "--only" => {
                    o.only = value()?.split(',').map(str::to_owned).collect();
                    if let Some(bad) = o.only.iter().find(|m| !MEASUREMENTS.contains(&m.as_str())) {
                        bail!(
                            "unknown measurement {bad:?} (one of {})",
                            MEASUREMENTS.join(",")
                        );
                    }
                }
                "-h" | "--help" => {
                    println!(
                        "bench-gateway [--size-mib N (1024)] [--sessions N (1000)] [--runs N (20)] \
                         [--dir DIR (/dev/shm)] [--only {} (all)]",
                        MEASUREMENTS.join(",")
                    );
                    std::process::exit(0);
                }
                other => bail!("unknown argument {other:?} (try --help)"),
            }
        }
        ensure!(
            o.size_mib > 0 && o.runs > 0 && o.sessions > 0,
            "sizes and counts must be positive"
        );
        Ok(o)
    }

    /// Whether measurement `name` (one of [`MEASUREMENTS`]) is to run.
    fn wants(&self, name: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|m| m == name)
    }
}

/// The runner and the agents it started (not the sessions' own processes).
fn runner_rss_kib(runner: u32) -> u64 {
    let agents = util::descendants(runner)
        .into_iter()
        .filter(|(_, comm)| comm.starts_with("warren-"))
        .map(|(pid, _)| pid);
    std::iter::once(runner)
        .chain(agents)
        .map(|pid| util::rss_kib(pid).unwrap_or(0))
        .sum()
}

/// Raise the soft open-files limit to the hard one: 1,000 sessions hold thousands
/// of pipes and sockets here, in the gateway, the runner and the agent (which
/// inherit the limit).
fn raise_nofile() -> Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local rlimit.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    ensure!(rc == 0, "getrlimit: {}", std::io::Error::last_os_error());
    lim.rlim_cur = lim.rlim_max;
    // SAFETY: as above.
    let rc = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) };
    ensure!(rc == 0, "setrlimit: {}", std::io::Error::last_os_error());
    Ok(lim.rlim_cur)
}

/// The gateway path: `warren-gateway serve` and one `warren-runner run` as processes.
struct GatewayStack {
    // Killed (process groups and all) when dropped, runner first.
    runner: Running,
    gateway: Running,
    ssh_port: u16,
    sandbox: SandboxId,
}

impl Drop for GatewayStack {
    fn drop(&mut self) {
        // The sandbox agents are in the runner's process group, but make sure.
        util::kill_descendants(self.runner.pid());
    }
}

impl GatewayStack {
    fn start(work: &Path, client: &Client) -> Result<GatewayStack> {
        eprintln!("building warren-gateway and warren-runner (release)…");
        let gateway_bin = build_bin("warren-gateway", "warren-gateway", Profile::Release)?;
        let runner_bin = build_bin("warren-runner", "warren-runner", Profile::Release)?;
        let agent_bin = build_bin("warren-agent", "warren-agent", Profile::Release)?;
        let data = work.join("gateway-data");
        let runner_data = work.join("runner-data");
        let runner_sockets = work.join("runner-sockets");
        for d in [&data, &runner_data, &runner_sockets] {
            std::fs::create_dir(d)?;
        }
        let runner_port = util::free_port()?;
        let ssh_port = util::free_port()?;
        let runner_addr = format!("127.0.0.1:{runner_port}");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;

        // Phase 1: an in-process hub on the gateway's data dir and runner port.
        let key = russh::keys::PublicKey::from_openssh(client.public_key().trim())?;
        let (store, hub, verifier, user, token) = rt.block_on(async {
            let store = Store::open_in_data_dir(&data).await?;
            let host_key = warren_keys::load_or_generate_host_key(&data.join("host_key"))?;
            let signer = TokenSigner::load_or_generate(&data.join("token_signer"))?;
            let verifier = signer.verifier().to_base64();
            let hub = RunnerHub::bind(store.clone(), host_key, runner_addr.parse()?).await?;
            let user = store.create_user("bench", false).await?;
            store.add_ssh_key(&user.id, "bench", &key).await?;
            let token = store.create_join_token(Duration::from_secs(600)).await?;
            anyhow::Ok((store, hub, verifier, user, token))
        })?;
        Cmd::new(&runner_bin)
            .args(["join", "--gateway", &runner_addr, "--token"])
            .arg(token.secret.expose())
            .args(["--fingerprint", hub.fingerprint(), "--name", "bench"])
            .arg("--data-dir")
            .arg(&runner_data)
            .timeout(Duration::from_secs(60))
            .run()?
            .success()
            .context("warren-runner join")?;
        let runner = Cmd::new(&runner_bin)
            .args(["run", "--backend", "process", "--data-dir"])
            .arg(&runner_data)
            .arg("--listen-dir")
            .arg(&runner_sockets)
            .env("WARREN_AGENT_BIN", &agent_bin)
            .env("RUST_LOG", "warn")
            .timeout(FOREVER)
            .spawn()?;
        let runner_id = rt
            .block_on(store.list_runners())?
            .into_iter()
            .find(|r| r.name == "bench")
            .context("the joined runner is not in the store")?
            .id;
        ensure!(
            wait_until(Duration::from_secs(30), || hub.is_online(&runner_id)),
            "the runner never came online:\n{}",
            runner.stderr().contents_str()
        );
        let sandbox = SandboxId::generate();
        rt.block_on(async {
            store
                .create_sandbox(&NewSandbox {
                    id: sandbox.clone(),
                    owner_id: user.id.clone(),
                    runner_id: Some(runner_id.clone()),
                    image: "process".into(),
                    repo: None,
                    branch: None,
                    cpus: 1.0,
                    memory_mb: 512,
                    idle_timeout_s: None,
                    ttl_s: None,
                })
                .await?;
            let created = hub
                .control(
                    &runner_id,
                    &Request::Create {
                        sandbox: sandbox.clone(),
                        token_key: verifier.clone(),
                        authorized_keys: vec![],
                        spec: Default::default(),
                    },
                )
                .await?;
            ensure!(created == Response::Ok, "create: {created:?}");
            store
                .set_sandbox_state(&sandbox, SandboxState::Running, "bench")
                .await?;
            hub.shutdown().await;
            store.close().await;
            anyhow::Ok(())
        })?;
        drop(rt);

        // Phase 2: the real gateway on the same data dir and ports.
        let gateway = Cmd::new(&gateway_bin)
            .arg("--data-dir")
            .arg(&data)
            .args(["serve", "--ssh-listen", &format!("127.0.0.1:{ssh_port}")])
            .args(["--runner-listen", &runner_addr])
            .env("RUST_LOG", "warn")
            .timeout(FOREVER)
            .spawn()?;
        let mut stack = GatewayStack {
            runner,
            gateway,
            ssh_port,
            sandbox,
        };
        let probe = stack.client(client);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let out = probe.exec("true").timeout(Duration::from_secs(20)).run()?;
            if out.status.success() {
                break;
            }
            if let Some(status) = stack.gateway.try_wait() {
                bail!(
                    "warren-gateway exited ({status}):\n{}",
                    stack.gateway.stderr().contents_str()
                );
            }
            ensure!(
                Instant::now() < deadline,
                "no session through the gateway within 60 s:\n{out}\ngateway: {}\nrunner: {}",
                stack.gateway.stderr().contents_str(),
                stack.runner.stderr().contents_str()
            );
            thread::sleep(Duration::from_millis(250));
        }
        Ok(stack)
    }

    fn client(&self, client: &Client) -> Client {
        client.clone().with_target(Target::new(
            "127.0.0.1",
            self.ssh_port,
            self.sandbox.as_str(),
        ))
    }
}

fn main() -> Result<()> {
    let opts = Options::parse()?;
    ensure!(
        util::running_as_root(),
        "run as root: sshd must log in the current user"
    );
    let nofile = raise_nofile()?;
    if (nofile as usize) < opts.sessions * 6 {
        eprintln!(
            "warning: the open-files limit is {nofile}; {} sessions may not fit",
            opts.sessions
        );
    }
    eprintln!("building warren-agent (release)…");
    let agent_bin = build_bin("warren-agent", "warren-agent", Profile::Release)?;
    let load = Workload::write(&opts.dir, opts.size_mib)?;

    let sshd = Sshd::start()?;
    let sshd_client = sshd.client()?.with_option(format!("Ciphers={CIPHER}"));
    let agent = Agent::builder()
        .binary(&agent_bin)
        .env("RUST_LOG", "warn")
        .quiet()
        .start()?;
    let agent_client = agent.client()?.with_option(format!("Ciphers={CIPHER}"));
    eprintln!("starting the gateway stack…");
    let stack = GatewayStack::start(load.work.path(), &agent_client)?;
    let gateway_client = stack.client(&agent_client);
    let (gateway_pid, runner_pid) = (stack.gateway.pid(), stack.runner.pid());

    let mut servers = Vec::new();
    for (id, (name, client)) in [
        ("sshd", sshd_client),
        ("warren-agent", agent_client),
        ("gateway", gateway_client),
    ]
    .into_iter()
    .enumerate()
    {
        let memory: Box<dyn Fn() -> Memory> = match name {
            "sshd" => Box::new(|| memory_of(&sshd.server_pids())),
            "warren-agent" => Box::new(|| memory_of(&[agent.pid()])),
            _ => Box::new(move || Memory {
                backend_rss_kib: runner_rss_kib(runner_pid),
                ..memory_of(&[gateway_pid])
            }),
        };
        servers.push(Server {
            name,
            id,
            client,
            dir: load.server_dir(name)?,
            memory,
        });
    }

    let scores = measure(&servers, &load, opts.runs, opts.sessions, |m| opts.wants(m));
    let sessions = if opts.wants("sessions") {
        persistent_figures(&servers[1..])
    } else {
        Vec::new()
    };
    print_table(&opts, &scores, &sessions);
    drop(servers);
    drop(stack);
    Ok(())
}

/// Persistent sessions' figures for the agent direct and the gateway path.
#[derive(Clone, Copy)]
struct SessionFigures {
    key_p50_ms: f64,
    detached_kib: f64,
}

fn persistent_figures(servers: &[Server]) -> Vec<SessionFigures> {
    servers
        .iter()
        .map(|s| {
            eprintln!("{}: keystroke echo through a persistent session", s.name);
            let key_p50_ms = bench_persistent::keystroke_p50(s, KEYS).unwrap_or_else(|e| {
                eprintln!("  {}: persistent keystroke echo failed: {e:#}", s.name);
                f64::NAN
            });
            eprintln!(
                "{}: memory of {DETACHED_SESSIONS} detached sessions",
                s.name
            );
            let detached_kib = bench_persistent::detached_session_kib(s, DETACHED_SESSIONS)
                .unwrap_or_else(|e| {
                    eprintln!("  {}: detached sessions failed: {e:#}", s.name);
                    f64::NAN
                });
            SessionFigures {
                key_p50_ms,
                detached_kib,
            }
        })
        .collect()
}

fn print_table(opts: &Options, scores: &[Scores], sessions: &[SessionFigures]) {
    let (sshd, agent, gw) = (&scores[0], &scores[1], &scores[2]);
    println!(
        "{} Gateway path: `warren-gateway serve` → runner tunnel → `warren-runner` → \
         sandbox agent (all release builds).\n",
        conditions(&opts.dir)
    );
    println!(
        "| Measure | OpenSSH sshd | warren-agent direct | via gateway + runner | agent / sshd | \
         gateway / sshd | target (via gateway) |"
    );
    println!("|---|---:|---:|---:|---:|---:|---|");
    let verdict = |met: Option<bool>| match met {
        Some(true) => "✅",
        Some(false) => "❌",
        None => "?",
    };
    let known = |v: f64| v.is_finite().then_some(v);
    let row =
        |name: String, s: f64, a: f64, g: f64, unit: &str, decimals: usize, target: String| {
            println!(
                "| {name} | {} | {} | {} | {} | {} | {target} |",
                cell(s, unit, decimals),
                cell(a, unit, decimals),
                cell(g, unit, decimals),
                ratio(s, a),
                ratio(s, g),
            );
        };
    for (label, pick) in throughput_rows(opts.size_mib) {
        let (s, a, g) = (pick(sshd), pick(agent), pick(gw));
        let met = known(s).zip(known(g)).map(|(s, g)| g >= 0.7 * s);
        let target = format!("≥ 0.70 × sshd {}", verdict(met));
        row(label, s, a, g, "MiB/s", 0, target);
    }
    for (label, pick) in connect_rows(opts.runs) {
        let (s, a, g) = (pick(sshd), pick(agent), pick(gw));
        let met = known(s).zip(known(g)).map(|(s, g)| g <= 2.0 * s);
        row(
            label,
            s,
            a,
            g,
            "ms",
            1,
            format!("≤ 2 × sshd {}", verdict(met)),
        );
    }
    let added = |base: f64| {
        known(base)
            .zip(known(gw.key_p50_ms))
            .map_or("n/a".to_owned(), |(b, g)| format!("{:+.2} ms", g - b))
    };
    let met = known(sshd.key_p50_ms)
        .zip(known(gw.key_p50_ms))
        .map(|(s, g)| g - s < 1.0);
    row(
        keystroke_row(),
        sshd.key_p50_ms,
        agent.key_p50_ms,
        gw.key_p50_ms,
        "ms",
        2,
        format!(
            "added < 1 ms {} ({} vs sshd, {} vs agent)",
            verdict(met),
            added(sshd.key_p50_ms),
            added(agent.key_p50_ms)
        ),
    );
    if let [direct, via] = sessions {
        let added = |plain: f64, persistent: f64| {
            known(plain)
                .zip(known(persistent))
                .map(|(p, s)| (s - p, s - p < 0.2))
        };
        let (a_added, g_added) = (
            added(agent.key_p50_ms, direct.key_p50_ms),
            added(gw.key_p50_ms, via.key_p50_ms),
        );
        let shown =
            |a: Option<(f64, bool)>| a.map_or("n/a".to_owned(), |(d, _)| format!("{d:+.2} ms"));
        row(
            format!("keystroke echo, persistent session, p50 of {KEYS}"),
            f64::NAN,
            direct.key_p50_ms,
            via.key_p50_ms,
            "ms",
            2,
            format!(
                "added < 0.2 ms vs plain {} ({} via gateway, {} direct)",
                verdict(g_added.map(|(_, ok)| ok)),
                shown(g_added),
                shown(a_added)
            ),
        );
        let met = known(via.detached_kib).map(|k| k < 1024.0);
        row(
            format!("agent RSS per detached persistent session ({DETACHED_SESSIONS})"),
            f64::NAN,
            direct.detached_kib / 1024.0,
            via.detached_kib / 1024.0,
            "MiB",
            2,
            format!("< 1 MiB beyond its programs {}", verdict(met)),
        );
    }
    let n = opts.sessions;
    for (i, (label, pick)) in memory_rows(n).into_iter().enumerate() {
        let target = if i == 2 {
            let met = pick(gw).map(|k| k < 200 * 1024 && n >= 1000);
            let met = if n < 1000 { None } else { met };
            format!(
                "gateway < 200 MB at 1,000 sessions {}",
                if n < 1000 {
                    "(not measured at 1,000)"
                } else {
                    verdict(met)
                }
            )
        } else {
            String::new()
        };
        row(
            label,
            mib(pick(sshd)),
            mib(pick(agent)),
            mib(pick(gw)),
            "MiB",
            1,
            target,
        );
    }
    row(
        format!("runner + sandbox agent RSS, {n} idle sessions"),
        f64::NAN,
        f64::NAN,
        mib(gw.many.map(|m| m.backend_rss_kib)),
        "MiB",
        1,
        "(not the gateway's)".to_owned(),
    );
    println!(
        "\nsshd's memory is the sum over the listener and its per-connection processes \
         (not the sessions' own `sleep`); the direct agent's is its one process; the \
         gateway column's is the `warren-gateway` process alone (the runner and the \
         sandbox agent behind it are the last row). PSS splits shared pages among the \
         processes that map them."
    );
}
