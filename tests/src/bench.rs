//! Measurements shared by the benchmark binaries (`bench-agent`, `bench-gateway`):
//! throughput of scp, sftp and `cat` over exec, connection time and keystroke echo,
//! each against any server an OpenSSH client can reach.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

use crate::util::{self, PasswdEntry, sha256sum, wait_until};
use crate::{Client, Running, shell_quote};

mod table;
pub use table::*;

/// The cipher every benchmark client uses, so servers compare like for like.
pub const CIPHER: &str = "aes256-gcm@openssh.com";
/// The key exchange every benchmark client uses: OpenSSH's default sntrup761 hybrid
/// costs the client ~100 ms more, and not every server offers it.
pub const KEX: &str = "curve25519-sha256";

/// `client` with the benchmarks' cipher and key exchange.
pub fn bench_client(client: Client) -> Client {
    client
        .with_option(format!("Ciphers={CIPHER}"))
        .with_option(format!("KexAlgorithms={KEX}"))
}
/// How long one bulk transfer may take.
pub const BULK: Duration = Duration::from_secs(900);

/// A server under measurement, as the measurements see it.
pub trait Endpoint {
    fn name(&self) -> &str;
    fn client(&self) -> &Client;
    /// Scratch directory on the server side (same machine).
    fn dir(&self) -> &Path;
}

/// Run one measurement; on failure say why on stderr and carry on.
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

/// The mean, p50 and p90 of `runs` connections running `true`, in ms.
pub fn connect_times(s: &impl Endpoint, runs: usize) -> Result<(f64, f64, f64)> {
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
    let p90 = times[(times.len() * 9 / 10).min(times.len() - 1)];
    Ok((mean, p50, p90))
}

/// Median time from typing a key to seeing its echo, on `ssh -tt host cat`.
pub fn keystroke_p50(s: &impl Endpoint, keys: usize) -> Result<f64> {
    keystroke_p50_of(s.client(), keys)
}

/// [`keystroke_p50`] for `client` (a plain login, or a persistent session's).
pub fn keystroke_p50_of(client: &Client, keys: usize) -> Result<f64> {
    // The remote prints READY once the session runs, by which time ssh has put the
    // local terminal in raw mode: from then on every echo comes from the server's PTY.
    let mut pty = client.ssh_on_pty(&["-tt"], "echo RE''ADY; exec cat", "xterm", 24, 80)?;
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

/// Reads a streamed stdout ([`Cmd::stream_stdout`]) to its end; the bytes read.
pub fn drain_stdout(running: &mut Running) -> Result<u64> {
    let mut stdout = running.take_stdout().context("stdout")?;
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = stdout.read(&mut buf)?;
        if n == 0 {
            return Ok(total);
        }
        total += n as u64;
    }
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
    let total = drain_stdout(&mut ssh)?;
    ssh.wait()?.success()?;
    let elapsed = started.elapsed();
    ensure!(
        total == bytes,
        "cat download read {total} bytes, not {bytes}"
    );
    Ok(elapsed)
}

/// One server under test: how to reach it and how to weigh it.
pub struct Server<'a> {
    pub name: &'static str,
    /// Tells this server's idle-session `sleep`s from the others' (see
    /// [`idle_sessions`]): unique per server in one run.
    pub id: usize,
    pub client: Client,
    pub memory: Box<dyn Fn() -> Memory + 'a>,
    /// Counts the CPU time of the server's processes and all they fork (the far
    /// end's `cat` included), for [`Cost`]; `None` where no cgroup could be made.
    pub cpu: Option<util::CpuGroup>,
    /// Scratch directory on the server side (same machine).
    pub dir: PathBuf,
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

/// A server's memory at one moment, in KiB.
#[derive(Clone, Copy, Default)]
pub struct Memory {
    pub rss_kib: u64,
    pub pss_kib: u64,
    /// What serves the sessions behind the server but is not counted above (through
    /// the gateway: the runner and its sandbox agent); 0 where there is nothing.
    pub backend_rss_kib: u64,
}

/// The memory of these processes together (a process that is gone counts 0).
pub fn memory_of(pids: &[u32]) -> Memory {
    let mut m = Memory::default();
    for &pid in pids {
        m.rss_kib += util::rss_kib(pid).unwrap_or(0);
        m.pss_kib += util::pss_kib(pid).unwrap_or(0);
    }
    m
}

/// A cgroup holding `pids` (and what they fork), or `None`, said on stderr, where
/// one cannot be made (not root, no cgroup file system).
pub fn cpu_group(name: &str, pids: &[u32]) -> Option<util::CpuGroup> {
    let made = util::CpuGroup::new(name).and_then(|group| {
        for &pid in pids {
            group.add(pid)?;
        }
        Ok(group)
    });
    made.map_err(|e| eprintln!("{name}: no CPU figures: {e:#}"))
        .ok()
}

/// What one transfer cost: the server side's CPU per GiB moved, and how busy the
/// whole machine was meanwhile (clients included). When the machine is saturated,
/// throughput is the cores divided by everyone's CPU per byte, so this says where
/// the ceiling is.
#[derive(Clone, Copy)]
pub struct Cost {
    pub server_cpu_s_per_gib: f64,
    pub busy_pct: f64,
}

impl Default for Cost {
    fn default() -> Cost {
        Cost {
            server_cpu_s_per_gib: f64::NAN,
            busy_pct: f64::NAN,
        }
    }
}

/// Runs `transfer` (which moves `bytes` and returns MiB/s, NaN when it failed) and
/// weighs it.
pub fn costed(s: &Server, bytes: u64, transfer: impl FnOnce() -> f64) -> (f64, Cost) {
    let usage = || s.cpu.as_ref().and_then(util::CpuGroup::usage);
    let (cpu_before, machine_before) = (usage(), util::machine_cpu());
    let rate = transfer();
    let (cpu_after, machine_after) = (usage(), util::machine_cpu());
    if !rate.is_finite() {
        return (rate, Cost::default());
    }
    let server_cpu = match (cpu_before, cpu_after) {
        (Some(before), Some(after)) => after.saturating_sub(before).as_secs_f64(),
        _ => f64::NAN,
    };
    let busy_pct = match (machine_before, machine_after) {
        (Some((b0, t0)), Some((b1, t1))) if t1 > t0 => 100.0 * (b1 - b0) as f64 / (t1 - t0) as f64,
        _ => f64::NAN,
    };
    let gib = bytes as f64 / f64::from(1u32 << 30);
    (
        rate,
        Cost {
            server_cpu_s_per_gib: server_cpu / gib,
            busy_pct,
        },
    )
}

/// What one server scored (NaN, shown as n/a: not measured).
pub struct Scores {
    pub scp_up: f64,
    pub scp_down: f64,
    pub sftp_up: f64,
    pub sftp_down: f64,
    pub cat_up: f64,
    pub cat_down: f64,
    pub cat_up_cost: Cost,
    pub cat_down_cost: Cost,
    pub true_mean_ms: f64,
    pub true_p50_ms: f64,
    pub true_p90_ms: f64,
    pub key_p50_ms: f64,
    pub idle: Memory,
    pub one: Option<Memory>,
    pub many: Option<Memory>,
}

impl Default for Scores {
    fn default() -> Scores {
        Scores {
            scp_up: f64::NAN,
            scp_down: f64::NAN,
            sftp_up: f64::NAN,
            sftp_down: f64::NAN,
            cat_up: f64::NAN,
            cat_down: f64::NAN,
            cat_up_cost: Cost::default(),
            cat_down_cost: Cost::default(),
            true_mean_ms: f64::NAN,
            true_p50_ms: f64::NAN,
            true_p90_ms: f64::NAN,
            key_p50_ms: f64::NAN,
            idle: Memory::default(),
            one: None,
            many: None,
        }
    }
}

/// The measurements [`measure`] knows, by the names a benchmark's `--only` picks
/// (`sessions`, persistent sessions, is bench-gateway's own: see `bench_persistent`).
pub const MEASUREMENTS: &[&str] = &["true", "keys", "scp", "sftp", "cat", "memory", "sessions"];

/// How many keystrokes the echo measurement times (after 10 for warm-up).
pub const KEYS: usize = 200;

/// The file every transfer moves, in a scratch directory that also holds the
/// servers' own directories; all of it goes when this is dropped.
pub struct Workload {
    pub work: tempfile::TempDir,
    pub source: PathBuf,
    pub source_sum: String,
    pub bytes: u64,
}

impl Workload {
    /// `size_mib` of random data in a new scratch directory under `dir` (a tmpfs, so
    /// that no disk sets the pace).
    pub fn write(dir: &Path, size_mib: u64) -> Result<Workload> {
        let work = tempfile::Builder::new()
            .prefix("warren-bench-")
            .tempdir_in(dir)
            .with_context(|| format!("creating a scratch dir in {}", dir.display()))?;
        // The reference sshd logs in an unprivileged user, who reads the source file.
        std::fs::set_permissions(work.path(), std::fs::Permissions::from_mode(0o755))?;
        let bytes = size_mib << 20;
        let source = work.path().join("source.bin");
        eprintln!("writing {size_mib} MiB of random data…");
        util::random_file(&source, bytes)?;
        let source_sum = sha256sum(&source)?;
        Ok(Workload {
            work,
            source,
            source_sum,
            bytes,
        })
    }

    /// A new scratch directory for the server `name`.
    pub fn server_dir(&self, name: &str) -> Result<PathBuf> {
        let dir = self.work.path().join(name);
        std::fs::create_dir(&dir)?;
        Ok(dir)
    }

    /// A new scratch directory for the server `name`, owned by the user it logs in.
    pub fn server_dir_for(&self, name: &str, user: &PasswdEntry) -> Result<PathBuf> {
        let dir = self.server_dir(name)?;
        std::os::unix::fs::chown(&dir, Some(user.uid), Some(user.gid))?;
        Ok(dir)
    }
}

/// Every measurement that `wants` (given a name of [`MEASUREMENTS`]), on every
/// server, with `runs` connections timed and `sessions` idle sessions weighed.
/// Idle memory comes first, before the measurements' sessions touch any server;
/// then the servers take turns per measurement, so drift (thermal, page cache) hits
/// all. A measurement that fails is reported on stderr and scores NaN (n/a).
pub fn measure(
    servers: &[Server],
    load: &Workload,
    runs: usize,
    sessions: usize,
    wants: impl Fn(&str) -> bool,
) -> Vec<Scores> {
    let (bytes, source, sum, work) = (load.bytes, &load.source, &load.source_sum, &load.work);
    let mut scores: Vec<Scores> = servers.iter().map(|_| Scores::default()).collect();
    for (s, score) in servers.iter().zip(&mut scores) {
        score.idle = (s.memory)();
    }
    if wants("true") {
        for (s, score) in servers.iter().zip(&mut scores) {
            eprintln!("{}: ssh host true × {runs}", s.name);
            (score.true_mean_ms, score.true_p50_ms, score.true_p90_ms) = attempt(
                s,
                "ssh host true",
                || connect_times(s, runs),
            )
            .unwrap_or((f64::NAN, f64::NAN, f64::NAN));
        }
    }
    if wants("keys") {
        for (s, score) in servers.iter().zip(&mut scores) {
            eprintln!("{}: keystroke echo on a PTY", s.name);
            score.key_p50_ms =
                attempt(s, "keystroke echo", || keystroke_p50(s, KEYS)).unwrap_or(f64::NAN);
        }
    }
    if wants("scp") {
        for (s, score) in servers.iter().zip(&mut scores) {
            eprintln!("{}: scp", s.name);
            score.scp_up = rate(s, "scp upload", bytes, || scp_up(s, source, sum));
            score.scp_down = rate(s, "scp download", bytes, || scp_down(s, source, sum, work));
        }
    }
    if wants("sftp") {
        for (s, score) in servers.iter().zip(&mut scores) {
            eprintln!("{}: sftp", s.name);
            score.sftp_up = rate(s, "sftp upload", bytes, || sftp_up(s, source, sum));
            score.sftp_down = rate(s, "sftp download", bytes, || {
                sftp_down(s, source, sum, work)
            });
        }
    }
    if wants("cat") {
        for (s, score) in servers.iter().zip(&mut scores) {
            eprintln!("{}: cat over exec", s.name);
            (score.cat_up, score.cat_up_cost) = costed(s, bytes, || {
                rate(s, "cat upload", bytes, || cat_up(s, bytes))
            });
            (score.cat_down, score.cat_down_cost) = costed(s, bytes, || {
                rate(s, "cat download", bytes, || cat_down(s, source, bytes))
            });
        }
    }
    if wants("memory") {
        for (s, score) in servers.iter().zip(&mut scores) {
            eprintln!("{}: memory with 1 and {sessions} idle sessions", s.name);
            if let Some((one, many)) = attempt(s, "idle sessions", || idle_sessions(s, sessions)) {
                (score.one, score.many) = (Some(one), Some(many));
            }
        }
    }
    scores
}

/// Memory with 1, then `n`, sessions that each run a `sleep` and sit idle.
pub fn idle_sessions(s: &Server, n: usize) -> Result<(Memory, Memory)> {
    // A marker of this server's own: a server's leftover `sleep`s (sshd does not
    // kill them when the client goes) must not count for the next one.
    let marker = format!("sleep {}", 600 + n + s.id);
    let held = || count_processes(&marker);
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
        wait_until(Duration::from_secs(30), || held() >= 1),
        "the first session did not start"
    );
    thread::sleep(Duration::from_secs(1));
    let one = (s.memory)();
    while sessions.len() < n {
        // Batches of 10, so no server sees a connection storm.
        let batch = (n - sessions.len()).min(10);
        for _ in 0..batch {
            open(&mut sessions)?;
        }
        let want = sessions.len();
        if !wait_until(Duration::from_secs(60), || held() >= want) {
            bail!("{}: only {} of {want} sessions came up", s.name, held());
        }
    }
    thread::sleep(Duration::from_secs(2));
    let many = (s.memory)();
    for session in sessions {
        session.kill();
    }
    if !wait_until(Duration::from_secs(30), || held() == 0) {
        eprintln!(
            "  {}: {} `{marker}` outlived their sessions; killed",
            s.name,
            held()
        );
        // Left alive, a thousand of them halve sshd's throughput in later runs.
        for pid in processes(&marker) {
            // SAFETY: kill(2) on a pid read from /proc; at worst it has gone.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
    Ok((one, many))
}

/// How many processes run exactly this command line.
pub fn count_processes(cmdline: &str) -> usize {
    processes(cmdline).len()
}

/// The processes that run exactly this command line.
fn processes(cmdline: &str) -> Vec<i32> {
    let want: Vec<u8> = cmdline.replace(' ', "\0").into_bytes();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let pid = e.file_name().to_str()?.parse::<i32>().ok()?;
            let line = std::fs::read(e.path().join("cmdline")).ok()?;
            (line.strip_suffix(b"\0").unwrap_or(&line) == want.as_slice()).then_some(pid)
        })
        .collect()
}
