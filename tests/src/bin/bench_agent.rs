//! bench-agent: warren-agent beside OpenSSH's sshd, same machine, same run, same client.
//!
//! ```text
//! cargo run --release -p warren-tests --bin bench-agent [-- --size-mib 1024 --sessions 100 --runs 20]
//! ```
//!
//! Starts Debian's sshd (throwaway config, high loopback port) and a release build of
//! warren-agent, then measures with the real OpenSSH clients, cipher aes256-gcm for
//! both: scp and sftp throughput up and down, `cat` over exec both ways, the time of
//! `ssh host true`, and the server's resident memory idle, with 1 and with N idle
//! sessions. Prints a Markdown table (stdout) to paste into the README; progress goes
//! to stderr. Needs root (sshd logs in the current user) and a tmpfs at /dev/shm.

use std::path::PathBuf;

use anyhow::{Context, Result, bail, ensure};
use warren_tests::bench::{
    Scores, Server, Workload, bench_client, cell, conditions, connect_rows, cost_rows, cpu_group,
    keystroke_row, measure, memory_of, memory_rows, mib, ratio, throughput_rows,
};
use warren_tests::util;
use warren_tests::{Agent, Profile, Sshd, build_bin};

struct Options {
    size_mib: u64,
    sessions: usize,
    runs: usize,
    agent_bin: Option<PathBuf>,
    dir: PathBuf,
}

impl Options {
    fn parse() -> Result<Options> {
        let mut o = Options {
            size_mib: 1024,
            sessions: 100,
            runs: 20,
            agent_bin: None,
            dir: PathBuf::from("/dev/shm"),
        };
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            let mut value = || args.next().with_context(|| format!("{arg} needs a value"));
            match arg.as_str() {
                "--size-mib" => o.size_mib = value()?.parse()?,
                "--sessions" => o.sessions = value()?.parse()?,
                "--runs" => o.runs = value()?.parse()?,
                "--agent-bin" => o.agent_bin = Some(value()?.into()),
                "--dir" => o.dir = value()?.into(),
                "-h" | "--help" => {
                    println!(
                        "bench-agent [--size-mib N (1024)] [--sessions N (100)] [--runs N (20)] \
                         [--agent-bin PATH] [--dir DIR (/dev/shm)]"
                    );
                    std::process::exit(0);
                }
                other => bail!("unknown argument {other:?} (try --help)"),
            }
        }
        ensure!(
            o.size_mib > 0 && o.runs > 0,
            "sizes and counts must be positive"
        );
        Ok(o)
    }
}

fn main() -> Result<()> {
    let opts = Options::parse()?;
    ensure!(
        util::running_as_root(),
        "run as root: sshd logs in a dedicated user that useradd creates"
    );
    let agent_bin = match &opts.agent_bin {
        Some(p) => p.clone(),
        None => {
            eprintln!("building warren-agent (release)…");
            build_bin("warren-agent", "warren-agent", Profile::Release)?
        }
    };
    let load = Workload::write(&opts.dir, opts.size_mib)?;

    let sshd = Sshd::start_clean()?;
    let sshd_client = bench_client(sshd.client()?);
    let agent = Agent::builder()
        .binary(&agent_bin)
        .env("RUST_LOG", "warn")
        .quiet()
        .start()?;
    let agent_client = bench_client(agent.client()?);

    let mut servers = Vec::new();
    for (id, (name, client)) in [("sshd", sshd_client), ("warren-agent", agent_client)]
        .into_iter()
        .enumerate()
    {
        servers.push(Server {
            name,
            id,
            client,
            dir: if name == "sshd" {
                load.server_dir_for(name, sshd.user())?
            } else {
                load.server_dir(name)?
            },
            memory: if name == "sshd" {
                Box::new(|| memory_of(&sshd.server_pids()))
            } else {
                Box::new(|| memory_of(&[agent.pid()]))
            },
            cpu: cpu_group(
                name,
                &[if name == "sshd" {
                    sshd.pid()
                } else {
                    agent.pid()
                }],
            ),
        });
    }

    let scores = measure(&servers, &load, opts.runs, opts.sessions, |_| true);
    print_table(&opts, &scores);
    Ok(())
}

fn print_table(opts: &Options, scores: &[Scores]) {
    let (sshd, agent) = (&scores[0], &scores[1]);
    println!("{}\n", conditions(&opts.dir));
    println!("| Measure | OpenSSH sshd | warren-agent | agent / sshd |");
    println!("|---|---:|---:|---:|");
    let row = |name: String, a: f64, b: f64, unit: &str, decimals: usize| {
        println!(
            "| {name} | {} | {} | {} |",
            cell(a, unit, decimals),
            cell(b, unit, decimals),
            ratio(a, b)
        );
    };
    for (label, pick) in throughput_rows(opts.size_mib) {
        row(label, pick(sshd), pick(agent), "MiB/s", 0);
    }
    for (label, unit, decimals, pick) in cost_rows() {
        row(label.into(), pick(sshd), pick(agent), unit, decimals);
    }
    for (label, pick) in connect_rows(opts.runs) {
        row(label, pick(sshd), pick(agent), "ms", 1);
    }
    row(keystroke_row(), sshd.key_p50_ms, agent.key_p50_ms, "ms", 2);
    for (label, pick) in memory_rows(opts.sessions) {
        row(label, mib(pick(sshd)), mib(pick(agent)), "MiB", 1);
    }
    println!(
        "\nsshd's memory is the sum over the listener and its per-connection processes \
         (not the sessions' own `sleep`); the agent's is its one process. PSS splits \
         shared pages among the processes that map them."
    );
}
