//! bench-gateway: OpenSSH's sshd and a sandbox agent through the gateway's front door
//! and a runner's reverse tunnel, side by side in one run (and, with `--with-agent`,
//! the agent direct).
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
//! Like with like: every client uses aes256-gcm and curve25519-sha256, and sshd logs in
//! a dedicated user with empty rc files. Measures with the real OpenSSH clients: scp and sftp throughput
//! both ways (checksums verified), `cat` over exec both ways, `ssh host true`, the
//! keystroke echo on a PTY, and memory with 1 and N idle sessions. Prints a Markdown
//! table (stdout) with the ratios to sshd and issue 15's targets; progress goes to
//! stderr. Needs root (useradd, sshd) and a tmpfs at /dev/shm.

use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use warren_gateway::store::{NewSandbox, SandboxState, Store};
use warren_gateway::tunnel::RunnerHub;
use warren_keys::{SandboxId, TokenSigner};
use warren_runner::protocol::{Request, Response};
use warren_tests::bench::{
    MEASUREMENTS, Memory, Scores, Server, Workload, bench_client, cell, conditions, connect_rows,
    keystroke_row, measure, memory_of, memory_rows, mib, ratio, throughput_rows,
};
use warren_tests::util::{self, wait_until};
use warren_tests::{Agent, CLEAN_USER, Client, Cmd, Profile, Running, Sshd, Target, build_bin};

/// Long enough for any run; the processes are killed when the benchmark ends.
const FOREVER: Duration = Duration::from_secs(24 * 3600);

struct Options {
    size_mib: u64,
    sessions: usize,
    runs: usize,
    dir: PathBuf,
    /// Only these measurements (`--only scp,cat`); all when empty.
    only: Vec<String>,
    /// Also measure the sandbox agent directly (`--with-agent`).
    with_agent: bool,
}

impl Options {
    fn parse() -> Result<Options> {
        let mut o = Options {
            size_mib: 1024,
            sessions: 1000,
            runs: 20,
            dir: PathBuf::from("/dev/shm"),
            only: Vec::new(),
            with_agent: false,
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
                "--with-agent" => o.with_agent = true,
                "-h" | "--help" => {
                    println!(
                        "bench-gateway [--size-mib N (1024)] [--sessions N (1000)] [--runs N (20)] \
                         [--dir DIR (/dev/shm)] [--only {} (all)] [--with-agent]",
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
        "run as root: sshd logs in a dedicated user that useradd creates"
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

    let sshd = Sshd::start_clean()?;
    let sshd_client = bench_client(sshd.client()?);
    let agent = Agent::builder()
        .binary(&agent_bin)
        .env("RUST_LOG", "warn")
        .quiet()
        .start()?;
    let agent_client = bench_client(agent.client()?);
    eprintln!("starting the gateway stack…");
    let stack = GatewayStack::start(load.work.path(), &agent_client)?;
    let gateway_client = stack.client(&agent_client);
    let (gateway_pid, runner_pid) = (stack.gateway.pid(), stack.runner.pid());

    let mut contenders = vec![("sshd", sshd_client), ("gateway", gateway_client)];
    if opts.with_agent {
        contenders.push(("warren-agent", agent_client));
    }
    let mut servers = Vec::new();
    for (id, (name, client)) in contenders.into_iter().enumerate() {
        let memory: Box<dyn Fn() -> Memory> = match name {
            "sshd" => Box::new(|| memory_of(&sshd.server_pids())),
            "warren-agent" => Box::new(|| memory_of(&[agent.pid()])),
            _ => Box::new(move || Memory {
                backend_rss_kib: runner_rss_kib(runner_pid),
                ..memory_of(&[gateway_pid])
            }),
        };
        let dir = match name {
            "sshd" => load.server_dir_for(name, sshd.user())?,
            _ => load.server_dir(name)?,
        };
        servers.push(Server {
            name,
            id,
            client,
            dir,
            memory,
        });
    }

    let scores = measure(&servers, &load, opts.runs, opts.sessions, |m| opts.wants(m));
    print_table(&opts, &scores);
    drop(servers);
    drop(stack);
    Ok(())
}

/// The issue's targets for the gateway column (issue 15).
const THROUGHPUT_TARGET: f64 = 0.90;
const MEMORY_TARGET_MIB: f64 = 100.0;
const MEMORY_TARGET_SESSIONS: usize = 1000;

fn print_table(opts: &Options, scores: &[Scores]) {
    let (sshd, gw, agent) = (&scores[0], &scores[1], scores.get(2));
    println!(
        "{} Gateway path: `warren-gateway serve` → runner tunnel → `warren-runner` → \
         sandbox agent (all release builds). sshd logs in `{CLEAN_USER}` (bash, empty rc \
         files); the sandbox agent runs bash without rc files.\n",
        conditions(&opts.dir)
    );
    let agent_head = if agent.is_some() {
        " warren-agent direct | agent ÷ sshd |"
    } else {
        ""
    };
    println!(
        "| Measure | OpenSSH sshd | via gateway + runner | gateway ÷ sshd | target |{agent_head}"
    );
    let agent_rule = if agent.is_some() { "---:|---:|" } else { "" };
    println!("|---|---:|---:|---:|---|{agent_rule}");
    let verdict = |met: Option<bool>| match met {
        Some(true) => "✅",
        Some(false) => "❌",
        None => "?",
    };
    let known = |v: f64| v.is_finite().then_some(v);
    let row =
        |name: String, s: f64, g: f64, a: f64, unit: &str, decimals: usize, target: String| {
            let agent_cells = if agent.is_some() {
                format!(" {} | {} |", cell(a, unit, decimals), ratio(s, a))
            } else {
                String::new()
            };
            println!(
                "| {name} | {} | {} | {} | {target} |{agent_cells}",
                cell(s, unit, decimals),
                cell(g, unit, decimals),
                ratio(s, g),
            );
        };
    let pick_agent = |pick: &dyn Fn(&Scores) -> f64| agent.map_or(f64::NAN, pick);
    for (label, pick) in throughput_rows(opts.size_mib) {
        let (s, g) = (pick(sshd), pick(gw));
        let met = known(s)
            .zip(known(g))
            .map(|(s, g)| g >= THROUGHPUT_TARGET * s);
        let target = format!("≥ {THROUGHPUT_TARGET:.2} × sshd {}", verdict(met));
        row(label, s, g, pick_agent(&pick), "MiB/s", 0, target);
    }
    for (label, pick) in connect_rows(opts.runs) {
        row(
            label,
            pick(sshd),
            pick(gw),
            pick_agent(&pick),
            "ms",
            1,
            String::new(),
        );
    }
    let added = known(sshd.key_p50_ms)
        .zip(known(gw.key_p50_ms))
        .map_or("n/a".to_owned(), |(s, g)| format!("{:+.2} ms", g - s));
    row(
        keystroke_row(),
        sshd.key_p50_ms,
        gw.key_p50_ms,
        pick_agent(&|s: &Scores| s.key_p50_ms),
        "ms",
        2,
        format!("added by the gateway: {added}"),
    );
    let n = opts.sessions;
    for (i, (label, pick)) in memory_rows(n).into_iter().enumerate() {
        let target = if i == 2 {
            let met = mib(pick(gw)) < MEMORY_TARGET_MIB;
            if n == MEMORY_TARGET_SESSIONS {
                format!("gateway < {MEMORY_TARGET_MIB} MiB {}", verdict(Some(met)))
            } else {
                format!("(target is at {MEMORY_TARGET_SESSIONS} sessions)")
            }
        } else {
            String::new()
        };
        row(
            label,
            mib(pick(sshd)),
            mib(pick(gw)),
            agent.map_or(f64::NAN, |a| mib(pick(a))),
            "MiB",
            1,
            target,
        );
    }
    row(
        format!("runner + sandbox agent RSS, {n} idle sessions"),
        f64::NAN,
        mib(gw.many.map(|m| m.backend_rss_kib)),
        f64::NAN,
        "MiB",
        1,
        "(behind the gateway; not in its row)".to_owned(),
    );
    println!(
        "\nsshd's memory is the sum over the listener and its per-connection processes \
         (not the sessions' own `sleep`); the gateway column's is the `warren-gateway` \
         process alone (the runner and the sandbox agent behind it are the last row). PSS \
         splits shared pages among the processes that map them."
    );
}
