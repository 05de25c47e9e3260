//! bench-gateway: OpenSSH's sshd, a sandbox agent through the gateway's front door
//! and a runner's reverse tunnel, and one through `warren up`'s in-process path,
//! side by side in one run (and, with `--with-agent`, the agent direct).
//!
//! ```text
//! cargo run --release -p warren-tests --bin bench-gateway [-- --size-mib 1024 --sessions 1000 --runs 20]
//! ```
//!
//! The gateway path is the real thing, as separate processes (`warren_tests::stack`):
//! `warren-gateway serve` (release), one `warren-runner run` (release, process backend)
//! joined to it, and the sandbox agent that runner started. So the gateway's memory is
//! that process's own. The one-machine path is `warren up --process-backend` (release):
//! the gateway and the runner in one process, the gateway opening the local agent's
//! socket in process (no tunnel); its sandbox is made through its API.
//!
//! Like with like: every client uses aes256-gcm and curve25519-sha256, and sshd logs in
//! a dedicated user with empty rc files. Measures with the real OpenSSH clients: scp
//! and sftp throughput both ways (checksums verified), `cat` over exec both ways, `ssh host true`, the
//! keystroke echo on a PTY, and memory with 1 and N idle sessions. Prints a Markdown
//! table (stdout) with the ratios to sshd and issue 15's targets; progress goes to
//! stderr. Needs root (useradd, sshd) and a tmpfs at /dev/shm.

use std::path::PathBuf;

use anyhow::{Context, Result, bail, ensure};
use warren_tests::bench::KEYS;
use warren_tests::bench::{
    MEASUREMENTS, Memory, Scores, Server, Workload, bench_client, cell, conditions, connect_rows,
    cost_rows, cpu_group, keystroke_row, measure, memory_of, memory_rows, mib, ratio,
    throughput_rows,
};
use warren_tests::bench_persistent::{self, DETACHED_SESSIONS};
use warren_tests::stack::{Backend, Stack, StackOptions, Up, home_for};
use warren_tests::util;
use warren_tests::{Agent, CLEAN_USER, Profile, Sshd, build_bin};

struct Options {
    size_mib: u64,
    sessions: usize,
    runs: usize,
    dir: PathBuf,
    /// Only these measurements (`--only scp,cat`); all when empty.
    only: Vec<String>,
    /// Also measure the sandbox agent directly (`--with-agent`).
    with_agent: bool,
    /// Leave out the gateway + runner stack (`--without-tunnel`): sshd and `warren up`.
    without_tunnel: bool,
    /// Measure nothing: print each server's ssh command line and wait for stdin to
    /// close (`--serve`), to profile a transfer by hand.
    serve: bool,
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
            without_tunnel: false,
            serve: false,
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
                "--without-tunnel" => o.without_tunnel = true,
                "--serve" => o.serve = true,
                "-h" | "--help" => {
                    println!(
                        "bench-gateway [--size-mib N (1024)] [--sessions N (1000)] [--runs N (20)] \
                         [--dir DIR (/dev/shm)] [--only {} (all)] [--with-agent] \
                         [--without-tunnel] [--serve]",
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
    util::rss_kib(runner).unwrap_or(0) + agents_rss_kib(runner)
}

/// The agents `parent` started (not the sessions' own processes).
fn agents_rss_kib(parent: u32) -> u64 {
    util::descendants(parent)
        .into_iter()
        .filter(|(_, comm)| comm.starts_with("warren-"))
        .map(|(pid, _)| util::rss_kib(pid).unwrap_or(0))
        .sum()
}

fn main() -> Result<()> {
    let opts = Options::parse()?;
    ensure!(
        util::running_as_root(),
        "run as root: sshd logs in a dedicated user that useradd creates"
    );
    let nofile = util::raise_nofile()?;
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
    let stack = if opts.without_tunnel {
        None
    } else {
        eprintln!("starting the gateway stack…");
        Some(Stack::builder().processes(
            load.work.path(),
            &agent_client,
            StackOptions {
                backend: Backend::Process,
                sandboxes: 1,
                spec: Default::default(),
                create_concurrency: 1,
            },
        )?)
    };
    let (gateway_pid, runner_pid) = stack
        .as_ref()
        .map_or((0, 0), |s| (s.gateway.pid(), s.runner.pid()));
    eprintln!("starting `warren up --process-backend`…");
    let up_home = home_for(&agent_client)?;
    let up_data = tempfile::TempDir::new()?;
    let up = Stack::builder().up(Up {
        process_backend: true,
        ..Up::new(up_home.path(), up_data.path())?
    })?;
    let up_sandbox = up.create(&serde_json::json!({}))?;
    let up_client = up.client(&agent_client, &up_sandbox);
    let up_pid = up.pid();

    let mut contenders = vec![("sshd", sshd_client)];
    if let Some(stack) = &stack {
        contenders.push(("gateway", stack.client(&agent_client, 0)));
    }
    contenders.push(("warren up", up_client));
    if opts.with_agent {
        contenders.push(("warren-agent", agent_client));
    }
    let mut servers = Vec::new();
    for (id, (name, client)) in contenders.into_iter().enumerate() {
        let memory: Box<dyn Fn() -> Memory> = match name {
            "sshd" => Box::new(|| memory_of(&sshd.server_pids())),
            "warren-agent" => Box::new(|| memory_of(&[agent.pid()])),
            "warren up" => Box::new(move || Memory {
                backend_rss_kib: agents_rss_kib(up_pid),
                ..memory_of(&[up_pid])
            }),
            _ => Box::new(move || Memory {
                backend_rss_kib: runner_rss_kib(runner_pid),
                ..memory_of(&[gateway_pid])
            }),
        };
        // The gateway path's server side is three processes: the gateway, the
        // runner and the agent the runner started (with the programs it runs).
        let cpu = match name {
            "sshd" => cpu_group(name, &[sshd.pid()]),
            "warren-agent" => cpu_group(name, &[agent.pid()]),
            "warren up" => {
                let mut pids = vec![up_pid];
                pids.extend(util::descendants(up_pid).into_iter().map(|(pid, _)| pid));
                cpu_group(name, &pids)
            }
            _ => {
                let mut pids = vec![gateway_pid, runner_pid];
                pids.extend(
                    util::descendants(runner_pid)
                        .into_iter()
                        .map(|(pid, _)| pid),
                );
                cpu_group(name, &pids)
            }
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
            cpu,
        });
    }

    if opts.serve {
        for s in &servers {
            println!("{}: {}", s.name, s.client.ssh_command_line());
        }
        println!(
            "(scratch: {}) close stdin to stop",
            load.work.path().display()
        );
        std::io::copy(&mut std::io::stdin(), &mut std::io::sink())?;
        return Ok(());
    }
    let mut scores = measure(&servers, &load, opts.runs, opts.sessions, |m| opts.wants(m));
    if stack.is_none() {
        // The table's gateway column stays empty (n/a).
        scores.insert(1, Scores::default());
    }
    print_table(&opts, &scores);
    if stack.is_some() && opts.wants("sessions") {
        print_persistent(&servers[1], scores[1].key_p50_ms);
    }
    drop(servers);
    drop(up);
    drop(stack);
    Ok(())
}

/// Persistent sessions through the gateway (issue 13): keystroke echo beside the
/// plain session's of the same run, and the agent's memory per detached session.
fn print_persistent(gateway: &Server, plain_key_p50_ms: f64) {
    eprintln!("gateway: keystroke echo through a persistent session");
    let key = bench_persistent::keystroke_p50(gateway, KEYS).unwrap_or_else(|e| {
        eprintln!("  persistent keystroke echo failed: {e:#}");
        f64::NAN
    });
    eprintln!("gateway: memory of {DETACHED_SESSIONS} detached sessions");
    let detached_kib = bench_persistent::detached_session_kib(gateway, DETACHED_SESSIONS)
        .unwrap_or_else(|e| {
            eprintln!("  detached sessions failed: {e:#}");
            f64::NAN
        });
    println!("\n| Persistent sessions (via gateway) | plain | persistent | added | target |");
    println!("|---|---:|---:|---:|---|");
    println!(
        "| keystroke echo p50 of {KEYS} | {plain_key_p50_ms:.2} ms | {key:.2} ms | {:+.2} ms | < 0.2 ms added |",
        key - plain_key_p50_ms
    );
    println!(
        "| agent RSS per detached session ({DETACHED_SESSIONS}) | | {:.2} MiB | | < 1 MiB |",
        detached_kib / 1024.0
    );
}

/// The issue's targets for the gateway column (issue 15).
const THROUGHPUT_TARGET: f64 = 0.90;
const MEMORY_TARGET_MIB: f64 = 100.0;
const MEMORY_TARGET_SESSIONS: usize = 1000;

fn print_table(opts: &Options, scores: &[Scores]) {
    let (sshd, gw) = (&scores[0], &scores[1]);
    // Columns beside the gateway's, each with its ratio to sshd: `warren up`'s
    // in-process path, and the agent direct with `--with-agent`.
    let extras: Vec<(&str, &Scores)> = ["via `warren up` (in process)", "warren-agent direct"]
        .into_iter()
        .zip(&scores[2..])
        .collect();
    println!(
        "{} Gateway path: `warren-gateway serve` → runner tunnel → `warren-runner` → \
         sandbox agent (all release builds); `warren up`: the gateway and the runner in one \
         process, the agent's socket opened in process (`--process-backend`). sshd logs in \
         `{CLEAN_USER}` (bash, empty rc files); the sandbox agents run bash without rc files.\n",
        conditions(&opts.dir)
    );
    let extra_head: String = extras
        .iter()
        .map(|(name, _)| format!(" {name} | ÷ sshd |"))
        .collect();
    println!(
        "| Measure | OpenSSH sshd | via gateway + runner | gateway ÷ sshd | target |{extra_head}"
    );
    println!(
        "|---|---:|---:|---:|---|{}",
        "---:|---:|".repeat(extras.len())
    );
    let verdict = |met: Option<bool>| match met {
        Some(true) => "✅",
        Some(false) => "❌",
        None => "?",
    };
    let known = |v: f64| v.is_finite().then_some(v);
    let row = |name: String,
               pick: &dyn Fn(&Scores) -> f64,
               unit: &str,
               decimals: usize,
               target: String| {
        let (s, g) = (pick(sshd), pick(gw));
        let extra_cells: String = extras
            .iter()
            .map(|(_, e)| {
                format!(
                    " {} | {} |",
                    cell(pick(e), unit, decimals),
                    ratio(s, pick(e))
                )
            })
            .collect();
        println!(
            "| {name} | {} | {} | {} | {target} |{extra_cells}",
            cell(s, unit, decimals),
            cell(g, unit, decimals),
            ratio(s, g),
        );
    };
    for (label, pick) in throughput_rows(opts.size_mib) {
        let (s, g) = (pick(sshd), pick(gw));
        let met = known(s)
            .zip(known(g))
            .map(|(s, g)| g >= THROUGHPUT_TARGET * s);
        let target = format!("≥ {THROUGHPUT_TARGET:.2} × sshd {}", verdict(met));
        row(label, &pick, "MiB/s", 0, target);
    }
    for (label, unit, decimals, pick) in cost_rows() {
        row(label.into(), &pick, unit, decimals, String::new());
    }
    for (label, pick) in connect_rows(opts.runs) {
        row(label, &pick, "ms", 1, String::new());
    }
    let added = known(sshd.key_p50_ms)
        .zip(known(gw.key_p50_ms))
        .map_or("n/a".to_owned(), |(s, g)| format!("{:+.2} ms", g - s));
    row(
        keystroke_row(),
        &|s: &Scores| s.key_p50_ms,
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
        row(label, &|s: &Scores| mib(pick(s)), "MiB", 1, target);
    }
    row(
        format!("runner + sandbox agent RSS, {n} idle sessions"),
        &|s: &Scores| {
            if std::ptr::eq(s, sshd) {
                f64::NAN
            } else {
                mib(s.many.map(|m| m.backend_rss_kib))
            }
        },
        "MiB",
        1,
        "(behind the gateway; not in its row)".to_owned(),
    );
    println!(
        "\nsshd's memory is the sum over the listener and its per-connection processes \
         (not the sessions' own `sleep`); the gateway column's is the `warren-gateway` \
         process alone (the runner and the sandbox agent behind it are the last row), \
         `warren up`'s its one process (gateway and runner; its agent is the last row). \
         PSS splits shared pages among the processes that map them."
    );
}
