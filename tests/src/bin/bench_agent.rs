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

use std::path::{Path, PathBuf};
use std::thread;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use warren_tests::bench::{
    CIPHER, Endpoint, attempt, cat_down, cat_up, connect_times, keystroke_p50, rate, scp_down,
    scp_up, sftp_down, sftp_up,
};
use warren_tests::util::{self, sha256sum, wait_until};
use warren_tests::{Agent, Client, Cmd, Profile, Running, Sshd, build_bin};

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

/// One server under test: how to reach it and how to weigh it.
struct Server<'a> {
    name: &'static str,
    client: Client,
    memory: Box<dyn Fn() -> Memory + 'a>,
    /// Scratch directory on the server side (same machine).
    dir: PathBuf,
}

impl Endpoint for Server<'_> {
    fn name(&self) -> &str {
        self.name
    }
    fn client(&self) -> &Client {
        &self.client
    }
    fn dir(&self) -> &Path {
        &self.dir
    }
}

#[derive(Clone, Copy, Default)]
struct Memory {
    rss_kib: u64,
    pss_kib: u64,
}

fn memory_of(pids: &[u32]) -> Memory {
    let mut m = Memory::default();
    for &pid in pids {
        m.rss_kib += util::rss_kib(pid).unwrap_or(0);
        m.pss_kib += util::pss_kib(pid).unwrap_or(0);
    }
    m
}

/// What one server scored.
#[derive(Default)]
struct Scores {
    scp_up: f64,
    scp_down: f64,
    sftp_up: f64,
    sftp_down: f64,
    cat_up: f64,
    cat_down: f64,
    true_mean_ms: f64,
    true_p50_ms: f64,
    key_p50_ms: f64,
    idle: Memory,
    one: Option<Memory>,
    many: Option<Memory>,
}

fn main() -> Result<()> {
    let opts = Options::parse()?;
    ensure!(
        util::running_as_root(),
        "run as root: sshd must log in the current user"
    );
    let agent_bin = match &opts.agent_bin {
        Some(p) => p.clone(),
        None => {
            eprintln!("building warren-agent (release)…");
            build_bin("warren-agent", "warren-agent", Profile::Release)?
        }
    };
    let work = tempfile::Builder::new()
        .prefix("warren-bench-")
        .tempdir_in(&opts.dir)
        .with_context(|| format!("creating a scratch dir in {}", opts.dir.display()))?;
    let bytes = opts.size_mib << 20;
    let source = work.path().join("source.bin");
    eprintln!("writing {} MiB of random data…", opts.size_mib);
    util::random_file(&source, bytes)?;
    let source_sum = sha256sum(&source)?;

    let sshd = Sshd::start()?;
    let sshd_client = sshd.client()?.with_option(format!("Ciphers={CIPHER}"));
    let agent = Agent::builder()
        .binary(&agent_bin)
        .env("RUST_LOG", "warn")
        .quiet()
        .start()?;
    let agent_client = agent.client()?.with_option(format!("Ciphers={CIPHER}"));

    let mut servers = Vec::new();
    for (name, client) in [("sshd", sshd_client), ("warren-agent", agent_client)] {
        let dir = work.path().join(name);
        std::fs::create_dir(&dir)?;
        servers.push(Server {
            name,
            client,
            dir,
            memory: if name == "sshd" {
                Box::new(|| memory_of(&sshd.server_pids()))
            } else {
                Box::new(|| memory_of(&[agent.pid()]))
            },
        });
    }

    let mut scores: Vec<Scores> = servers.iter().map(|_| Scores::default()).collect();
    // Idle memory first, before any session has touched either server.
    for (s, score) in servers.iter().zip(&mut scores) {
        score.idle = (s.memory)();
    }
    // Interleave the servers per measurement so drift (thermal, page cache) hits both.
    // A measurement that fails is reported on stderr and shown as n/a.
    for (s, score) in servers.iter().zip(&mut scores) {
        eprintln!("{}: ssh host true × {}", s.name, opts.runs);
        (score.true_mean_ms, score.true_p50_ms) =
            attempt(s, "ssh host true", || connect_times(s, opts.runs))
                .unwrap_or((f64::NAN, f64::NAN));
    }
    for (s, score) in servers.iter().zip(&mut scores) {
        eprintln!("{}: keystroke echo on a PTY", s.name);
        score.key_p50_ms =
            attempt(s, "keystroke echo", || keystroke_p50(s, 200)).unwrap_or(f64::NAN);
    }
    for (s, score) in servers.iter().zip(&mut scores) {
        eprintln!("{}: scp", s.name);
        score.scp_up = rate(s, "scp upload", bytes, || scp_up(s, &source, &source_sum));
        score.scp_down = rate(s, "scp download", bytes, || {
            scp_down(s, &source, &source_sum, &work)
        });
    }
    for (s, score) in servers.iter().zip(&mut scores) {
        eprintln!("{}: sftp", s.name);
        score.sftp_up = rate(s, "sftp upload", bytes, || sftp_up(s, &source, &source_sum));
        score.sftp_down = rate(s, "sftp download", bytes, || {
            sftp_down(s, &source, &source_sum, &work)
        });
    }
    for (s, score) in servers.iter().zip(&mut scores) {
        eprintln!("{}: cat over exec", s.name);
        score.cat_up = rate(s, "cat upload", bytes, || cat_up(s, bytes));
        score.cat_down = rate(s, "cat download", bytes, || cat_down(s, &source, bytes));
    }
    for (s, score) in servers.iter().zip(&mut scores) {
        eprintln!(
            "{}: memory with 1 and {} idle sessions",
            s.name, opts.sessions
        );
        if let Some((one, many)) = attempt(s, "idle sessions", || idle_sessions(s, opts.sessions)) {
            (score.one, score.many) = (Some(one), Some(many));
        }
    }

    print_table(&opts, &scores);
    Ok(())
}

/// Run one measurement; on failure say why on stderr and carry on.
/// Memory with 1, then `n`, sessions that each run `sleep 600` and sit idle.
fn idle_sessions(s: &Server, n: usize) -> Result<(Memory, Memory)> {
    let marker = format!("sleep {}", 600 + n);
    let held = |sessions: &Vec<Running>| -> usize {
        let _ = sessions;
        count_processes(&marker)
    };
    let mut sessions: Vec<Running> = Vec::new();
    let open = |sessions: &mut Vec<Running>| -> Result<()> {
        sessions.push(
            s.client
                .ssh(&["-T", "-n"], &marker)
                .timeout(Duration::from_secs(3600))
                .spawn()?,
        );
        Ok(())
    };
    open(&mut sessions)?;
    ensure!(
        wait_until(Duration::from_secs(30), || held(&sessions) >= 1),
        "the first session did not start"
    );
    thread::sleep(Duration::from_secs(1));
    let one = (s.memory)();
    while sessions.len() < n {
        // Batches of 10, so neither server sees a connection storm.
        let batch = (n - sessions.len()).min(10);
        for _ in 0..batch {
            open(&mut sessions)?;
        }
        let want = sessions.len();
        if !wait_until(Duration::from_secs(60), || held(&sessions) >= want) {
            bail!(
                "{}: only {} of {want} sessions came up",
                s.name,
                held(&sessions)
            );
        }
    }
    thread::sleep(Duration::from_secs(2));
    let many = (s.memory)();
    for session in sessions {
        session.kill();
    }
    wait_until(Duration::from_secs(30), || count_processes(&marker) == 0);
    Ok((one, many))
}

/// How many processes run exactly this command line.
fn count_processes(cmdline: &str) -> usize {
    let want: Vec<u8> = cmdline.replace(' ', "\0").into_bytes();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    entries
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.parse::<u32>().is_ok())
        })
        .filter(|e| {
            std::fs::read(e.path().join("cmdline"))
                .is_ok_and(|c| c.strip_suffix(b"\0").unwrap_or(&c) == want.as_slice())
        })
        .count()
}

fn print_table(opts: &Options, scores: &[Scores]) {
    let (sshd, agent) = (&scores[0], &scores[1]);
    let size = opts.size_mib;
    let cores = thread::available_parallelism().map_or(0, |n| n.get());
    let openssh = Cmd::new("ssh")
        .arg("-V")
        .run()
        .map(|o| o.stderr_str().trim().to_owned())
        .unwrap_or_default();
    println!(
        "Loopback, {cores} cores, {openssh}, cipher {CIPHER}, files on {}. \
         Throughput includes connection setup.\n",
        opts.dir.display()
    );
    println!("| Measure | OpenSSH sshd | warren-agent | agent / sshd |");
    println!("|---|---:|---:|---:|");
    let row = |name: String, a: f64, b: f64, unit: &str, decimals: usize| {
        let cell = |v: f64| {
            if v.is_finite() {
                format!("{v:.decimals$} {unit}")
            } else {
                "n/a".to_owned()
            }
        };
        let ratio = b / a;
        let ratio = if ratio.is_finite() {
            format!("{ratio:.2}")
        } else {
            "n/a".to_owned()
        };
        println!("| {name} | {} | {} | {ratio} |", cell(a), cell(b));
    };
    let rate = |name: &str, a: f64, b: f64| row(format!("{name} ({size} MiB)"), a, b, "MiB/s", 0);
    rate("scp upload", sshd.scp_up, agent.scp_up);
    rate("scp download", sshd.scp_down, agent.scp_down);
    rate("sftp upload", sshd.sftp_up, agent.sftp_up);
    rate("sftp download", sshd.sftp_down, agent.sftp_down);
    rate("`cat` over exec, upload", sshd.cat_up, agent.cat_up);
    rate("`cat` over exec, download", sshd.cat_down, agent.cat_down);
    let runs = opts.runs;
    row(
        format!("`ssh host true`, mean of {runs}"),
        sshd.true_mean_ms,
        agent.true_mean_ms,
        "ms",
        1,
    );
    row(
        format!("`ssh host true`, p50 of {runs}"),
        sshd.true_p50_ms,
        agent.true_p50_ms,
        "ms",
        1,
    );
    row(
        "keystroke echo on a PTY, p50 of 200".to_owned(),
        sshd.key_p50_ms,
        agent.key_p50_ms,
        "ms",
        2,
    );
    let mib = |k: Option<u64>| k.map_or(f64::NAN, |k| k as f64 / 1024.0);
    let n = opts.sessions;
    type Pick = fn(&Scores) -> Option<u64>;
    let rows: [(String, Pick); 4] = [
        ("RSS, idle (no session)".into(), |m| Some(m.idle.rss_kib)),
        ("RSS, 1 idle session".into(), |m| m.one.map(|m| m.rss_kib)),
        (format!("RSS, {n} idle sessions"), |m| {
            m.many.map(|m| m.rss_kib)
        }),
        (format!("PSS, {n} idle sessions"), |m| {
            m.many.map(|m| m.pss_kib)
        }),
    ];
    for (label, pick) in rows {
        row(label, mib(pick(sshd)), mib(pick(agent)), "MiB", 1);
    }
    println!(
        "\nsshd's memory is the sum over the listener and its per-connection processes \
         (not the sessions' own `sleep`); the agent's is its one process. PSS splits \
         shared pages among the processes that map them."
    );
}
