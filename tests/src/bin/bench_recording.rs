//! bench-recording: what recording a terminal session costs (issue 13).
//!
//! ```text
//! cargo run --release -p warren-tests --bin bench-recording [-- --size-mib 512 --runs 3]
//! ```
//!
//! Two in-process gateway front doors, alike but for the recording policy (off; on
//! with the default policy, output only), each in front of a release warren-agent.
//! `ssh -tt <sandbox>@gateway cat FILE` of a text file (log-like lines) is read to
//! its end through each in turn, alternating, so both see the same machine; the
//! table gives the median throughput of each and the recording's cost. The file
//! sits in /dev/shm and recordings in a temporary directory on the data disk.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use warren_gateway::recordings::RecordingPolicy;
use warren_tests::bench::{bench_client, drain_stdout, mib_per_s};
use warren_tests::stack::{DirectGateway, Stack};
use warren_tests::{Agent, Client, Profile, build_bin, shell_quote};

#[derive(clap::Parser)]
#[command(about = "What recording a terminal session costs: cat in a PTY, recording off and on")]
struct Options {
    /// The text file's size.
    #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u64).range(1..))]
    size_mib: u64,
    /// Measured runs of each (after one warm-up).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..))]
    runs: u64,
    /// Where the text file goes.
    #[arg(long, default_value = "/dev/shm")]
    dir: PathBuf,
}

/// A file of `mib` MiB of log-like text lines.
fn write_text(path: &Path, mib: u64) -> Result<u64> {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut written = 0u64;
    let mut n = 0u64;
    while written < mib << 20 {
        let line = format!(
            "{n:>10} compiling crate-{:04} v0.{}.{} (/work/src/module_{:03}.rs) ... ok \u{2713}\n",
            n % 9973,
            n % 17,
            n % 101,
            n % 617
        );
        out.write_all(line.as_bytes())?;
        written += line.len() as u64;
        n += 1;
    }
    out.flush()?;
    Ok(written)
}

/// A gateway (recording by `policy`) with one release agent behind it, and a
/// client that reaches the agent's sandbox through it.
struct Door {
    name: &'static str,
    gateway: DirectGateway,
    _agent: Agent,
    client: Client,
}

fn door(name: &'static str, policy: Option<RecordingPolicy>, agent_bin: &Path) -> Result<Door> {
    let builder = match policy {
        Some(policy) => Stack::builder().recording(policy),
        None => Stack::builder().no_recording(),
    };
    let gateway = builder.direct()?;
    let agent = Agent::builder()
        .binary(agent_bin)
        .signer_file(gateway.signer_file())
        .env("RUST_LOG", "warn")
        .quiet()
        .start()?;
    let id = agent.sandbox_id().clone();
    let client = bench_client(Client::new(gateway.target(id.as_str()))?);
    let owner = gateway.user_with_key("bench", &client)?;
    let addr: SocketAddr = agent.listen_addr().parse()?;
    gateway.sandbox(&id, &owner, Some(addr))?;
    Ok(Door {
        name,
        gateway,
        _agent: agent,
        client,
    })
}

/// `ssh -tt host cat FILE`, read to the end; the time, and the bytes the terminal
/// gave (its line discipline turns each `\n` into `\r\n`).
fn cat_on_pty(client: &Client, file: &Path) -> Result<(Duration, u64)> {
    let started = Instant::now();
    let mut ssh = client
        .ssh(
            &["-tt"],
            &format!(
                "stty raw -echo; cat {}",
                shell_quote(&file.to_string_lossy())
            ),
        )
        .stream_stdout()
        .timeout(Duration::from_secs(600))
        .spawn()?;
    let total = drain_stdout(&mut ssh)?;
    ssh.wait()?.success()?;
    Ok((started.elapsed(), total))
}

fn recordings_bytes(gateway: &DirectGateway) -> u64 {
    fn walk(dir: &Path) -> u64 {
        std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| match e.metadata() {
                Ok(m) if m.is_dir() => walk(&e.path()),
                Ok(m) => m.len(),
                Err(_) => 0,
            })
            .sum()
    }
    walk(&gateway.data_dir().join("recordings"))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> Result<()> {
    let opts = <Options as clap::Parser>::parse();
    eprintln!("building warren-agent (release)…");
    let agent_bin = build_bin("warren-agent", "warren-agent", Profile::Release)?;
    let work = tempfile::Builder::new()
        .prefix("warren-bench-recording-")
        .tempdir_in(&opts.dir)?;
    let file = work.path().join("build.log");
    let size = write_text(&file, opts.size_mib)?;
    eprintln!("{} MiB of text in {}", size >> 20, file.display());

    let doors = [
        door("recording off", None, &agent_bin)?,
        door("recording on", Some(RecordingPolicy::default()), &agent_bin)?,
    ];
    // Warm both (connections, page cache), not counted.
    for d in &doors {
        cat_on_pty(&d.client, &file)?;
    }
    let mut rates = [Vec::new(), Vec::new()];
    for run in 0..opts.runs {
        for (i, d) in doors.iter().enumerate() {
            let (took, bytes) = cat_on_pty(&d.client, &file)?;
            ensure!(
                bytes >= size,
                "{}: the terminal gave {bytes} of {size}",
                d.name
            );
            let rate = mib_per_s(size, took);
            eprintln!("run {run}: {}: {rate:.0} MiB/s ({took:.2?})", d.name);
            rates[i].push(rate);
        }
    }
    let [off, on] = rates.map(median);
    let cost = (off - on) / off * 100.0;
    let kept = recordings_bytes(&doors[1].gateway);
    println!(
        "\n| `cat` of {} MiB of text in a PTY, via gateway (median of {}) | MiB/s |",
        opts.size_mib, opts.runs
    );
    println!("|---|---:|");
    println!("| recording off | {off:.0} |");
    println!("| recording on (asciicast, output only) | {on:.0} |");
    println!("| cost of recording | {cost:.1}% (target < 10%) |");
    println!(
        "| recordings written | {} MiB for {} sessions of {} MiB |",
        kept >> 20,
        opts.runs + 1,
        opts.size_mib
    );
    Ok(())
}
