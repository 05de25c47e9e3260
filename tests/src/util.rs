//! Small helpers the tests and the benchmark share: ports, files, checksums,
//! /proc readings and a TCP echo server.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};

/// A loopback TCP port that was free a moment ago.
pub fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// Poll `check` every 50 ms until it returns true or `timeout` passes.
pub fn wait_until(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if check() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// Polls `done` every 100 ms until it says yes (an error with `what` after
/// `timeout`; `done`'s own error at once).
pub fn wait_for(
    what: &str,
    timeout: Duration,
    mut done: impl FnMut() -> Result<bool>,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if done()? {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(100));
    }
}

/// Lower-case hex SHA-256 of some bytes.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// Lower-case hex SHA-256 of a file's contents.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

/// A streaming SHA-256 for data read from a pipe.
#[derive(Default)]
pub struct Hasher {
    inner: Sha256,
    len: u64,
}

impl Hasher {
    pub fn update(&mut self, bytes: &[u8]) {
        self.inner.update(bytes);
        self.len += bytes.len() as u64;
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn finish(self) -> String {
        hex(&self.inner.finalize())
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `len` bytes from the kernel's random source.
pub fn random_bytes(len: usize) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    File::open("/dev/urandom")?.read_exact(&mut buf)?;
    Ok(buf)
}

/// Write a file of `len` random bytes; returns its SHA-256.
pub fn random_file(path: &Path, len: u64) -> Result<String> {
    let mut src = File::open("/dev/urandom")?;
    let mut out = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        src.read_exact(&mut buf[..n])?;
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n])?;
        left -= n as u64;
    }
    out.sync_all().ok();
    Ok(hex(&hasher.finalize()))
}

/// One field (in kB) of /proc/<pid>/status, e.g. "VmRSS" or "VmHWM".
pub fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|line| {
        let rest = line.strip_prefix(field)?.strip_prefix(':')?;
        rest.trim().trim_end_matches("kB").trim().parse().ok()
    })
}

/// Resident set size of a process, in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    proc_status_kib(pid, "VmRSS")
}

/// Proportional set size (shared pages split among their users), in KiB.
pub fn pss_kib(pid: u32) -> Option<u64> {
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    rollup.lines().find_map(|line| {
        let rest = line.strip_prefix("Pss:")?;
        rest.trim().trim_end_matches("kB").trim().parse().ok()
    })
}

/// A process's parent pid and command name, from /proc/<pid>/stat.
pub fn proc_parent_and_comm(pid: u32) -> Option<(u32, String)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat[open + 1..close].to_owned();
    let ppid = stat[close + 2..].split_whitespace().nth(1)?.parse().ok()?;
    Some((ppid, comm))
}

/// A cgroup that counts the CPU time of the processes put in it and of everything
/// they fork from then on, exited or not (cgroup v1's cpuacct, or v2). Removed when
/// dropped, its processes moved back to the root group.
pub struct CpuGroup {
    dir: PathBuf,
    root: PathBuf,
    v1: bool,
}

impl CpuGroup {
    /// A new group named after `name` and this process (needs root).
    pub fn new(name: &str) -> Result<CpuGroup> {
        let v1 = Path::new("/sys/fs/cgroup/cpuacct/cpuacct.usage").is_file();
        let root = PathBuf::from(if v1 {
            "/sys/fs/cgroup/cpuacct"
        } else {
            "/sys/fs/cgroup"
        });
        let dir = root.join(format!("warren-bench-{name}-{}", std::process::id()));
        std::fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(CpuGroup { dir, root, v1 })
    }

    /// Moves process `pid` (all its threads) into the group.
    pub fn add(&self, pid: u32) -> Result<()> {
        std::fs::write(self.dir.join("cgroup.procs"), pid.to_string())
            .with_context(|| format!("moving {pid} into {}", self.dir.display()))
    }

    /// The CPU time used in the group so far.
    pub fn usage(&self) -> Option<Duration> {
        if self.v1 {
            let ns = std::fs::read_to_string(self.dir.join("cpuacct.usage")).ok()?;
            Some(Duration::from_nanos(ns.trim().parse().ok()?))
        } else {
            let stat = std::fs::read_to_string(self.dir.join("cpu.stat")).ok()?;
            let us = stat
                .lines()
                .find_map(|l| l.strip_prefix("usage_usec "))?
                .trim()
                .parse()
                .ok()?;
            Some(Duration::from_micros(us))
        }
    }
}

impl Drop for CpuGroup {
    fn drop(&mut self) {
        if let Ok(procs) = std::fs::read_to_string(self.dir.join("cgroup.procs")) {
            for pid in procs.lines() {
                let _ = std::fs::write(self.root.join("cgroup.procs"), pid);
            }
        }
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// The machine's CPU time so far as (busy, total) jiffies, from /proc/stat's first
/// line (idle and iowait are the idle part).
pub fn machine_cpu() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let fields: Vec<u64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .take(8)
        .filter_map(|f| f.parse().ok())
        .collect();
    let total: u64 = fields.iter().sum();
    let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

/// All live descendants of `root` (children, grandchildren, …), with their names.
pub fn descendants(root: u32) -> Vec<(u32, String)> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let procs: Vec<(u32, u32, String)> = entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let (ppid, comm) = proc_parent_and_comm(pid)?;
            Some((pid, ppid, comm))
        })
        .collect();
    let mut found = Vec::new();
    let mut frontier = vec![root];
    while let Some(parent) = frontier.pop() {
        for (pid, ppid, comm) in &procs {
            if *ppid == parent {
                found.push((*pid, comm.clone()));
                frontier.push(*pid);
            }
        }
    }
    found
}

/// SIGKILL every descendant of `root` (not `root` itself).
pub fn kill_descendants(root: u32) {
    for (pid, _) in descendants(root) {
        // SAFETY: kill(2) has no memory-safety preconditions.
        unsafe {
            libc::kill(pid as i32, libc::SIGKILL);
        }
    }
}

/// Descendants of `root` that are zombies (exited, never reaped by their parent).
pub fn zombies(root: u32) -> Vec<(u32, String)> {
    descendants(root)
        .into_iter()
        .filter(|(pid, _)| {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
                stat.rfind(')')
                    .and_then(|i| stat.get(i + 2..i + 3))
                    .is_some_and(|state| state == "Z")
            })
        })
        .collect()
}

/// Whether a process exists (and is not a zombie).
pub fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rfind(')')
            .and_then(|i| stat[i + 2..].chars().next())
            .is_some_and(|state| state != 'Z' && state != 'X'),
        Err(_) => false,
    }
}

/// The user this process runs as: (name, uid, home, shell), from /etc/passwd.
pub fn current_user() -> Result<PasswdEntry> {
    let uid = std::fs::metadata("/proc/self")?.uid();
    let passwd = std::fs::read_to_string("/etc/passwd")?;
    passwd
        .lines()
        .filter_map(PasswdEntry::parse)
        .find(|e| e.uid == uid)
        .with_context(|| format!("uid {uid} not in /etc/passwd"))
}

/// Whether the tests run as root (needed for privilege-drop tests and sshd).
pub fn running_as_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// Whether a test whose `need` is unmet may run: on a developer's machine it is
/// skipped with a note; in CI (`CI` set) it fails, because CI must not skip silently.
pub fn prerequisite(met: bool, need: &str) -> anyhow::Result<bool> {
    if met {
        return Ok(true);
    }
    if std::env::var_os("CI").is_some() {
        anyhow::bail!("CI must provide this: {need}");
    }
    eprintln!("skipped: needs {need}");
    Ok(false)
}

/// One line of /etc/passwd.
#[derive(Clone, Debug)]
pub struct PasswdEntry {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
    pub shell: PathBuf,
}

impl PasswdEntry {
    pub fn parse(line: &str) -> Option<Self> {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() < 7 {
            return None;
        }
        Some(Self {
            name: f[0].to_owned(),
            uid: f[2].parse().ok()?,
            gid: f[3].parse().ok()?,
            home: PathBuf::from(f[5]),
            shell: PathBuf::from(f[6]),
        })
    }
}

/// A TCP echo server on 127.0.0.1, stopped on drop.
pub struct EchoServer {
    port: u16,
    stop: Arc<AtomicBool>,
}

impl EchoServer {
    pub fn start() -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        thread::spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(mut conn) = conn else { continue };
                thread::spawn(move || {
                    let mut buf = [0u8; 16 * 1024];
                    loop {
                        match conn.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                if conn.write_all(&buf[..n]).is_err() {
                                    break;
                                }
                            }
                        }
                    }
                    let _ = conn.shutdown(Shutdown::Write);
                });
            }
        });
        Ok(Self { port, stop })
    }

    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// Connect to 127.0.0.1:`port`, send `payload`, half-close, and read the reply to EOF.
pub fn tcp_roundtrip(port: u16, payload: &[u8], timeout: Duration) -> Result<Vec<u8>> {
    let mut conn = TcpStream::connect(("127.0.0.1", port))
        .with_context(|| format!("connecting to 127.0.0.1:{port}"))?;
    conn.set_read_timeout(Some(timeout))?;
    conn.set_write_timeout(Some(timeout))?;
    let writer = {
        let mut conn = conn.try_clone()?;
        let payload = payload.to_vec();
        thread::spawn(move || -> std::io::Result<()> {
            conn.write_all(&payload)?;
            conn.shutdown(Shutdown::Write)
        })
    };
    let mut reply = Vec::new();
    conn.read_to_end(&mut reply)
        .with_context(|| format!("reading from 127.0.0.1:{port}"))?;
    match writer.join() {
        Ok(Ok(())) => {}
        Ok(Err(e)) => bail!("writing to 127.0.0.1:{port}: {e}"),
        Err(_) => bail!("writer thread panicked"),
    }
    Ok(reply)
}

/// SHA-256 of a local file by the system's `sha256sum` (fast in debug builds too).
pub fn sha256sum(path: &Path) -> Result<String> {
    let out = crate::process::Cmd::new("sha256sum")
        .arg(path)
        .timeout(Duration::from_secs(300))
        .run()?
        .success()?;
    first_word(&out.stdout_str())
}

/// The first whitespace-separated word of `text` (a checksum from `sha256sum`).
pub fn first_word(text: &str) -> Result<String> {
    text.split_whitespace()
        .next()
        .map(str::to_owned)
        .with_context(|| format!("no output in {text:?}"))
}

/// One entry of a directory tree, as compared after a round-trip.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct TreeEntry {
    pub path: String,
    /// `f` file, `d` directory, `l` symlink.
    pub kind: char,
    pub mode: u32,
    /// File: size and SHA-256; symlink: its target.
    pub content: String,
    /// Modification time in whole seconds (files only; directories change as they fill).
    pub mtime: Option<i64>,
}

/// Every entry under `root` (not `root` itself), sorted by path.
pub fn tree(root: &Path) -> Result<Vec<TreeEntry>> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<TreeEntry>) -> Result<()> {
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let path = entry.path();
            let meta = std::fs::symlink_metadata(&path)?;
            let rel = path.strip_prefix(root)?.to_string_lossy().into_owned();
            let ft = meta.file_type();
            let (kind, content, mtime) = if ft.is_symlink() {
                (
                    'l',
                    std::fs::read_link(&path)?.to_string_lossy().into_owned(),
                    None,
                )
            } else if ft.is_dir() {
                walk(root, &path, out)?;
                ('d', String::new(), None)
            } else {
                let bytes = std::fs::read(&path)?;
                (
                    'f',
                    format!("{} {}", bytes.len(), sha256_hex(&bytes)),
                    Some(meta.mtime()),
                )
            };
            out.push(TreeEntry {
                path: rel,
                kind,
                mode: meta.mode() & 0o7777,
                content,
                mtime,
            });
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(root, root, &mut out)?;
    out.sort();
    Ok(out)
}

/// A small tree of files worth round-tripping: nested directories, binary and empty
/// files, odd modes, a name with spaces, a symlink, fixed mtimes.
pub fn sample_tree(root: &Path) -> Result<()> {
    use std::os::unix::fs::{PermissionsExt, symlink};
    let mkfile = |rel: &str, bytes: &[u8], mode: u32, mtime: u64| -> Result<()> {
        let path = root.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&path, bytes)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))?;
        let file = File::options().write(true).open(&path)?;
        file.set_modified(std::time::UNIX_EPOCH + Duration::from_secs(mtime))?;
        Ok(())
    };
    mkfile(
        "README.txt",
        b"hello from the sandbox tests\n",
        0o644,
        1_000_000_000,
    )?;
    mkfile(
        "bin/tool.sh",
        b"#!/bin/sh\necho tool\n",
        0o755,
        1_100_000_000,
    )?;
    mkfile(
        "data/random.bin",
        &random_bytes(300_000)?,
        0o600,
        1_200_000_000,
    )?;
    mkfile("data/empty", b"", 0o640, 1_300_000_000)?;
    mkfile(
        "deep/a/b/c/name with spaces.txt",
        b"spaces\n",
        0o644,
        1_400_000_000,
    )?;
    symlink("../README.txt", root.join("data/link-to-readme"))?;
    Ok(())
}

/// A container's memory from its cgroup: (usage, anonymous) in KiB. cgroup v1
/// (`memory.usage_in_bytes`, `rss` in memory.stat) or v2 (`memory.current`, `anon`).
pub fn container_memory_kib(container_id: &str) -> Option<(u64, u64)> {
    let v1 = PathBuf::from(format!("/sys/fs/cgroup/memory/docker/{container_id}"));
    let v2 = [
        format!("/sys/fs/cgroup/system.slice/docker-{container_id}.scope"),
        format!("/sys/fs/cgroup/docker/{container_id}"),
    ]
    .into_iter()
    .map(PathBuf::from)
    .find(|p| p.is_dir());
    let (usage_file, stat_file, anon_key) = if v1.is_dir() {
        (
            v1.join("memory.usage_in_bytes"),
            v1.join("memory.stat"),
            "rss",
        )
    } else {
        let v2 = v2?;
        (v2.join("memory.current"), v2.join("memory.stat"), "anon")
    };
    let usage: u64 = std::fs::read_to_string(usage_file)
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let stat = std::fs::read_to_string(stat_file).ok()?;
    let anon = stat.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == anon_key).then(|| v.trim().parse::<u64>().ok())?
    })?;
    Some((usage / 1024, anon / 1024))
}

/// Raise the soft open-files limit to the hard one: 1,000 sessions hold thousands
/// of pipes and sockets here, in the gateway, the runner and the agent (which
/// inherit the limit).
pub fn raise_nofile() -> Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local rlimit.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    anyhow::ensure!(rc == 0, "getrlimit: {}", std::io::Error::last_os_error());
    lim.rlim_cur = lim.rlim_max;
    // SAFETY: as above.
    let rc = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) };
    anyhow::ensure!(rc == 0, "setrlimit: {}", std::io::Error::last_os_error());
    Ok(lim.rlim_cur)
}

/// Waits for every one of `sessions` (logins started at once at `started`); each
/// successful one's index and milliseconds, or an error listing every failed one,
/// named by `name(index)`.
pub fn logins_succeeded(
    sessions: Vec<crate::Running>,
    name: impl Fn(usize) -> String,
    started: Instant,
) -> Result<Vec<(usize, f64)>> {
    let total = sessions.len();
    let mut times = Vec::with_capacity(total);
    let mut failures = Vec::new();
    for (i, session) in sessions.into_iter().enumerate() {
        let out = session.wait()?;
        if out.status.success() {
            times.push((i, out.elapsed.as_secs_f64() * 1000.0));
        } else {
            failures.push(format!("{}: {out}", name(i)));
        }
    }
    anyhow::ensure!(
        failures.is_empty(),
        "{} of {total} logins failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    eprintln!(
        "  {} logins in {:.1} s",
        times.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(times)
}
