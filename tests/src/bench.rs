//! Measurements shared by the benchmark binaries (`bench-agent`, `bench-gateway`):
//! throughput of scp, sftp and `cat` over exec, connection time and keystroke echo,
//! each against any server an OpenSSH client can reach.

use std::io::{Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};

use crate::util::{self, sha256sum};
use crate::{Client, shell_quote};

/// The cipher every benchmark client uses, so servers compare like for like.
pub const CIPHER: &str = "aes256-gcm@openssh.com";
/// How long one bulk transfer may take.
pub const BULK: Duration = Duration::from_secs(900);

/// A server under measurement, as the measurements see it.
pub trait Endpoint {
    fn name(&self) -> &str;
    fn client(&self) -> &Client;
    /// Scratch directory on the server side (same machine).
    fn dir(&self) -> &Path;
}

pub fn attempt<T>(s: &impl Endpoint, what: &str, f: impl FnOnce() -> Result<T>) -> Option<T> {
    match f() {
        Ok(v) => Some(v),
        Err(e) => {
            let text = format!("{e:#}");
            let short: String = text.lines().take(12).collect::<Vec<_>>().join("\n  ");
            eprintln!("  {} {what} FAILED: {short}", s.name());
            None
        }
    }
}

pub fn rate(
    s: &impl Endpoint,
    what: &str,
    bytes: u64,
    f: impl FnOnce() -> Result<Duration>,
) -> f64 {
    attempt(s, what, f).map_or(f64::NAN, |elapsed| mib_per_s(bytes, elapsed))
}

pub fn mib_per_s(bytes: u64, elapsed: Duration) -> f64 {
    bytes as f64 / (1 << 20) as f64 / elapsed.as_secs_f64()
}

pub fn check_file(path: &Path, want_sum: &str, what: &str) -> Result<()> {
    let got = sha256sum(path)?;
    ensure!(
        got == want_sum,
        "{what}: checksum mismatch ({got} != {want_sum})"
    );
    std::fs::remove_file(path)?;
    Ok(())
}

pub fn connect_times(s: &impl Endpoint, runs: usize) -> Result<(f64, f64)> {
    // One warm-up connection (page cache, key loading) that does not count.
    s.client().exec("true").run()?.success()?;
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let out = s.client().exec("true").run()?.success()?;
        times.push(out.elapsed.as_secs_f64() * 1000.0);
    }
    times.sort_by(f64::total_cmp);
    let mean = times.iter().sum::<f64>() / times.len() as f64;
    let p50 = times[times.len() / 2];
    Ok((mean, p50))
}

/// Median time from typing a key to seeing its echo, on `ssh -tt host cat`.
pub fn keystroke_p50(s: &impl Endpoint, keys: usize) -> Result<f64> {
    // The remote prints READY once the session runs, by which time ssh has put the
    // local terminal in raw mode: from then on every echo comes from the server's PTY.
    let mut pty = s
        .client()
        .ssh_on_pty(&["-tt"], "echo RE''ADY; exec cat", "xterm", 24, 80)?;
    let t = Duration::from_secs(10);
    pty.expect("READY", t)?;
    let mut times = Vec::with_capacity(keys);
    for i in 0..keys + 10 {
        let key = [b'a' + (i % 26) as u8];
        let started = Instant::now();
        pty.send(key)?;
        pty.expect(std::str::from_utf8(&key)?, t)?;
        if i >= 10 {
            times.push(started.elapsed().as_secs_f64() * 1000.0);
        }
    }
    pty.send("\x04")?;
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

pub fn scp_up(s: &impl Endpoint, source: &Path, sum: &str) -> Result<Duration> {
    let dest = s.dir().join("scp-up.bin");
    let out = s
        .client()
        .scp(&[], &[&source.to_string_lossy(), &s.client().remote(&dest)])
        .timeout(BULK)
        .run()?
        .success()?;
    check_file(&dest, sum, "scp upload")?;
    Ok(out.elapsed)
}

pub fn scp_down(
    s: &impl Endpoint,
    source: &Path,
    sum: &str,
    work: &tempfile::TempDir,
) -> Result<Duration> {
    let dest = work.path().join("scp-down.bin");
    let out = s
        .client()
        .scp(&[], &[&s.client().remote(source), &dest.to_string_lossy()])
        .timeout(BULK)
        .run()?
        .success()?;
    check_file(&dest, sum, "scp download")?;
    Ok(out.elapsed)
}

pub fn sftp_up(s: &impl Endpoint, source: &Path, sum: &str) -> Result<Duration> {
    let dest = s.dir().join("sftp-up.bin");
    let batch = format!(
        "put {} {}\n",
        shell_quote(&source.to_string_lossy()),
        shell_quote(&dest.to_string_lossy())
    );
    let out = s
        .client()
        .sftp(&["-b", "-"])
        .stdin(batch)
        .timeout(BULK)
        .run()?
        .success()?;
    check_file(&dest, sum, "sftp upload")?;
    Ok(out.elapsed)
}

pub fn sftp_down(
    s: &impl Endpoint,
    source: &Path,
    sum: &str,
    work: &tempfile::TempDir,
) -> Result<Duration> {
    let dest = work.path().join("sftp-down.bin");
    let batch = format!(
        "get {} {}\n",
        shell_quote(&source.to_string_lossy()),
        shell_quote(&dest.to_string_lossy())
    );
    let out = s
        .client()
        .sftp(&["-b", "-"])
        .stdin(batch)
        .timeout(BULK)
        .run()?
        .success()?;
    check_file(&dest, sum, "sftp download")?;
    Ok(out.elapsed)
}

/// `ssh host 'cat > file'` fed `bytes` from memory.
pub fn cat_up(s: &impl Endpoint, bytes: u64) -> Result<Duration> {
    let dest = s.dir().join("cat-up.bin");
    let block = util::random_bytes(1 << 20)?;
    let started = Instant::now();
    let mut ssh = s
        .client()
        .exec(&format!("cat > {}", shell_quote(&dest.to_string_lossy())))
        .stdin_piped()
        .timeout(BULK)
        .spawn()?;
    let mut stdin = ssh.take_stdin().context("stdin")?;
    let mut left = bytes;
    while left > 0 {
        let n = left.min(block.len() as u64) as usize;
        stdin.write_all(&block[..n])?;
        left -= n as u64;
    }
    drop(stdin);
    ssh.wait()?.success()?;
    let elapsed = started.elapsed();
    let len = std::fs::metadata(&dest)?.len();
    ensure!(len == bytes, "cat upload wrote {len} bytes, not {bytes}");
    std::fs::remove_file(&dest)?;
    Ok(elapsed)
}

/// `ssh host 'cat file'` read to the end.
pub fn cat_down(s: &impl Endpoint, source: &Path, bytes: u64) -> Result<Duration> {
    let started = Instant::now();
    let mut ssh = s
        .client()
        .exec(&format!("cat {}", shell_quote(&source.to_string_lossy())))
        .stream_stdout()
        .timeout(BULK)
        .spawn()?;
    let mut stdout = ssh.take_stdout().context("stdout")?;
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = stdout.read(&mut buf)?;
        if n == 0 {
            break;
        }
        total += n as u64;
    }
    ssh.wait()?.success()?;
    let elapsed = started.elapsed();
    ensure!(
        total == bytes,
        "cat download read {total} bytes, not {bytes}"
    );
    Ok(elapsed)
}
