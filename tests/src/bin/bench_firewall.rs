//! bench-firewall: what the runner's firewall rules cost every packet the host
//! receives, at 100 and 500 sandboxes, for the layout before the shared chains (one
//! jump per sandbox in `INPUT`) and for the shared chains, same run.
//!
//! ```text
//! cargo run --release -p warren-tests --bin bench-firewall [-- --round-trips 20000 --sandboxes 100,500]
//! ```
//!
//! Needs root and iptables; touches only rules it makes (chains named `WARREN-BENCH…`
//! and fake sandboxes' rules, removed at the end). The packet: a one-byte TCP round
//! trip on loopback, which walks `INPUT` on each side like any packet for the host
//! (a sandbox's own packets are the shared chains' few rules either way). Also times
//! `netpolicy::apply` of one sandbox with an allow-list, at each count, in the
//! shared layout. Prints a Markdown table on stdout; progress on stderr.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use warren_keys::SandboxId;
use warren_runner::netpolicy::{self, HostAccess};
use warren_runner::protocol::NetworkPolicy;
use warren_tests::Cmd;

/// The chain the old layout's per-sandbox jumps lead to (one chain: what is
/// measured is the walk over the jumps, which every packet makes).
const OLD_CHAIN: &str = "WARREN-BENCH-H";

struct Options {
    round_trips: usize,
    sandboxes: Vec<usize>,
}

impl Options {
    fn parse() -> Result<Options> {
        let mut o = Options {
            round_trips: 20_000,
            sandboxes: vec![100, 500],
        };
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            let mut value = || args.next().with_context(|| format!("{arg} needs a value"));
            match arg.as_str() {
                "--round-trips" => o.round_trips = value()?.parse()?,
                "--sandboxes" => {
                    o.sandboxes = value()?
                        .split(',')
                        .map(str::parse)
                        .collect::<Result<_, _>>()?
                }
                "-h" | "--help" => {
                    println!("bench-firewall [--round-trips N (20000)] [--sandboxes 100,500]");
                    std::process::exit(0);
                }
                other => bail!("unknown argument {other:?} (try --help)"),
            }
        }
        ensure!(o.round_trips >= 100, "--round-trips must be at least 100");
        Ok(o)
    }
}

/// A one-byte ping-pong over loopback TCP: the round trips' p50 and p99 in µs.
fn round_trips(n: usize) -> Result<(f64, f64)> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let echo = std::thread::spawn(move || -> std::io::Result<()> {
        let (mut s, _) = listener.accept()?;
        s.set_nodelay(true)?;
        let mut b = [0u8; 1];
        while s.read(&mut b)? == 1 {
            s.write_all(&b)?;
        }
        Ok(())
    });
    let mut c = TcpStream::connect(addr)?;
    c.set_nodelay(true)?;
    let mut b = [7u8; 1];
    let mut times = Vec::with_capacity(n);
    for i in 0..n + n / 10 {
        let t = Instant::now();
        c.write_all(&b)?;
        c.read_exact(&mut b)?;
        // The first tenth warms up.
        if i >= n / 10 {
            times.push(t.elapsed());
        }
    }
    drop(c);
    let _ = echo.join();
    times.sort();
    let at = |q: f64| times[((times.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e6;
    Ok((at(0.5), at(0.99)))
}

fn restore(batch: &str) -> Result<()> {
    Cmd::new("iptables-restore")
        .args(["-w", "--noflush"])
        .stdin(batch.as_bytes().to_vec())
        .run()?
        .success()
        .context("iptables-restore")?;
    Ok(())
}

/// The old layout for `ids`: a jump per sandbox bridge, first in `INPUT`.
fn old_layout(ids: &[SandboxId], install: bool) -> Result<()> {
    let mut batch = String::from("*filter\n");
    if install {
        batch.push_str(&format!(":{OLD_CHAIN} - [0:0]\n-A {OLD_CHAIN} -j DROP\n"));
    }
    for id in ids {
        let op = if install { "-I INPUT 1" } else { "-D INPUT" };
        batch.push_str(&format!(
            "{op} -i {} -j {OLD_CHAIN}\n",
            netpolicy::bridge_name(id)
        ));
    }
    batch.push_str("COMMIT\n");
    restore(&batch)?;
    if !install {
        let _ = Cmd::new("iptables").args(["-w", "-F", OLD_CHAIN]).run();
        let _ = Cmd::new("iptables").args(["-w", "-X", OLD_CHAIN]).run();
    }
    Ok(())
}

fn input_rules() -> usize {
    Cmd::new("iptables")
        .args(["-w", "-S", "INPUT"])
        .run()
        .map(|o| {
            o.stdout_str()
                .lines()
                .filter(|l| l.starts_with("-A "))
                .count()
        })
        .unwrap_or(0)
}

fn main() -> Result<()> {
    let o = Options::parse()?;
    // SAFETY: geteuid cannot fail.
    ensure!(unsafe { libc::geteuid() } == 0, "bench-firewall needs root");
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(netpolicy::ensure_shared())?;
    let max = o.sandboxes.iter().copied().max().unwrap_or(0);
    let ids: Vec<SandboxId> = (0..max).map(|_| SandboxId::generate()).collect();
    let allow = NetworkPolicy::Allow {
        cidrs: vec!["10.99.0.0/16".into()],
    };
    let mut rows = Vec::new();
    let base_rules = input_rules();
    eprintln!("baseline ({base_rules} rules in INPUT)…");
    let (p50, p99) = round_trips(o.round_trips)?;
    rows.push(("no sandboxes".to_owned(), p50, p99, base_rules, None));
    let mut made = 0;
    let result = (|| -> Result<()> {
        for &n in &o.sandboxes {
            // The shared layout with n sandboxes, a tenth of them with an allow-list
            // (their own chains and gotos); the apply of one more timed.
            while made < n {
                let policy = if made % 10 == 0 {
                    &allow
                } else {
                    &NetworkPolicy::All
                };
                rt.block_on(netpolicy::apply(&ids[made], policy, &HostAccess::default()))?;
                made += 1;
            }
            let extra = SandboxId::generate();
            let t = Instant::now();
            rt.block_on(netpolicy::apply(&extra, &allow, &HostAccess::default()))?;
            let apply = t.elapsed();
            rt.block_on(netpolicy::remove(&extra));
            eprintln!("shared chains, {n} sandboxes…");
            let (p50, p99) = round_trips(o.round_trips)?;
            rows.push((
                format!("{n} sandboxes, shared chains"),
                p50,
                p99,
                input_rules(),
                Some(apply),
            ));
            // The layout before: one jump per sandbox in INPUT.
            eprintln!("one jump per sandbox, {n} sandboxes…");
            old_layout(&ids[..n], true)?;
            let measured = round_trips(o.round_trips);
            let rules = input_rules();
            old_layout(&ids[..n], false)?;
            let (p50, p99) = measured?;
            rows.push((
                format!("{n} sandboxes, a jump each in INPUT (before)"),
                p50,
                p99,
                rules,
                None,
            ));
        }
        Ok(())
    })();
    for id in &ids[..made] {
        rt.block_on(netpolicy::remove(id));
    }
    result?;

    println!(
        "| layout | rules in INPUT | loopback round trip p50 / p99 | apply of one allow-list sandbox |"
    );
    println!("|---|---:|---:|---:|");
    for (what, p50, p99, rules, apply) in rows {
        let apply = apply.map_or_else(String::new, |d: Duration| {
            format!("{:.1} ms", d.as_secs_f64() * 1e3)
        });
        println!("| {what} | {rules} | {p50:.1} / {p99:.1} µs | {apply} |");
    }
    Ok(())
}
