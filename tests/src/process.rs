//! Child processes that can never hang a test.
//!
//! Every process started here runs in its own process group, has a deadline, and is
//! killed (the whole group) when its handle is dropped. Output is captured by
//! background threads so a chatty child never blocks on a full pipe.
//!
//! Not for long-lived servers with a readiness protocol: those are fixtures
//! (`Agent`, `Sshd`) built on [`Running`].

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::io::{Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// Default deadline for one command.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// A command to run with a deadline. Built like [`std::process::Command`].
pub struct Cmd {
    program: OsString,
    args: Vec<OsString>,
    envs: Vec<(OsString, Option<OsString>)>,
    dir: Option<std::path::PathBuf>,
    stdin: StdinMode,
    stream_stdout: bool,
    timeout: Duration,
}

enum StdinMode {
    Null,
    Bytes(Vec<u8>),
    Piped,
}

impl Cmd {
    pub fn new(program: impl AsRef<OsStr>) -> Self {
        Self {
            program: program.as_ref().to_owned(),
            args: Vec::new(),
            envs: Vec::new(),
            dir: None,
            stdin: StdinMode::Null,
            stream_stdout: false,
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// `sh -c <script>`: for pipelines, exactly as a person would type them.
    pub fn shell(script: impl AsRef<str>) -> Self {
        Self::new("sh").arg("-c").arg(script.as_ref())
    }

    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.envs
            .push((key.as_ref().to_owned(), Some(value.as_ref().to_owned())));
        self
    }

    pub fn env_remove(mut self, key: impl AsRef<OsStr>) -> Self {
        self.envs.push((key.as_ref().to_owned(), None));
        self
    }

    pub fn current_dir(mut self, dir: impl AsRef<Path>) -> Self {
        self.dir = Some(dir.as_ref().to_owned());
        self
    }

    /// Feed these bytes on stdin, then close it (EOF).
    pub fn stdin(mut self, bytes: impl Into<Vec<u8>>) -> Self {
        self.stdin = StdinMode::Bytes(bytes.into());
        self
    }

    /// Keep stdin as a pipe the caller writes to ([`Running::take_stdin`]).
    pub fn stdin_piped(mut self) -> Self {
        self.stdin = StdinMode::Piped;
        self
    }

    /// Do not capture stdout; the caller reads it ([`Running::take_stdout`]).
    pub fn stream_stdout(mut self) -> Self {
        self.stream_stdout = true;
        self
    }

    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The command line, shell-quoted, for messages.
    pub fn display(&self) -> String {
        std::iter::once(&self.program)
            .chain(&self.args)
            .map(|a| shell_quote(&a.to_string_lossy()))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Run to completion (or to the deadline, which is an error).
    pub fn run(self) -> Result<Output> {
        let timeout = self.timeout;
        self.spawn()?.wait_timeout(timeout)
    }

    /// Start in the background. The deadline applies to [`Running::wait`].
    pub fn spawn(self) -> Result<Running> {
        let display = self.display();
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args).process_group(0);
        for (k, v) in &self.envs {
            match v {
                Some(v) => cmd.env(k, v),
                None => cmd.env_remove(k),
            };
        }
        if let Some(dir) = &self.dir {
            cmd.current_dir(dir);
        }
        cmd.stdin(match self.stdin {
            StdinMode::Null => Stdio::null(),
            StdinMode::Bytes(_) | StdinMode::Piped => Stdio::piped(),
        });
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let child = cmd.spawn().with_context(|| format!("spawning {display}"))?;
        let mut running = Running::from_child(child, display, self.timeout);
        if self.stream_stdout {
            running.stdout.close();
        } else {
            running.capture_stdout();
        }
        if let StdinMode::Bytes(bytes) = self.stdin
            && let Some(mut stdin) = running.stdin.take()
        {
            thread::spawn(move || {
                // A child that exits early closes the pipe: not our error to report.
                let _ = stdin.write_all(&bytes);
            });
        }
        Ok(running)
    }
}

impl fmt::Debug for Cmd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.display())
    }
}

/// Quote for a POSIX shell (the one `warren sync` uses).
pub use warren_sync::shell_quote;

/// What a finished command left behind.
#[derive(Clone)]
pub struct Output {
    pub command: String,
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub elapsed: Duration,
}

impl Output {
    /// The exit code, or `None` when killed by a signal.
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    pub fn signal(&self) -> Option<i32> {
        self.status.signal()
    }

    pub fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    pub fn stderr_str(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }

    /// Stdout with surrounding whitespace trimmed.
    pub fn stdout_trimmed(&self) -> String {
        self.stdout_str().trim().to_owned()
    }

    /// Fail with the command, status and both streams unless it exited 0.
    pub fn success(self) -> Result<Self> {
        if self.status.success() {
            Ok(self)
        } else {
            bail!("command failed:\n{self}")
        }
    }
}

impl fmt::Display for Output {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "$ {}", self.command)?;
        writeln!(f, "status: {} after {:?}", self.status, self.elapsed)?;
        writeln!(f, "stdout: {}", truncate(&self.stdout, 4000))?;
        write!(f, "stderr: {}", truncate(&self.stderr, 4000))
    }
}

impl fmt::Debug for Output {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

fn truncate(bytes: &[u8], max: usize) -> String {
    if bytes.len() <= max {
        String::from_utf8_lossy(bytes).into_owned()
    } else {
        format!(
            "{}… ({} bytes in all)",
            String::from_utf8_lossy(&bytes[..max]),
            bytes.len()
        )
    }
}

/// A growing byte buffer filled by a reader thread, which others can wait on.
#[derive(Clone, Default)]
pub struct SharedBuf {
    inner: Arc<(Mutex<BufState>, Condvar)>,
}

#[derive(Default)]
struct BufState {
    data: Vec<u8>,
    closed: bool,
    /// Keep at most this many bytes (the tail); 0 = unbounded.
    limit: usize,
    dropped: usize,
}

impl SharedBuf {
    /// A buffer keeping only the last `limit` bytes.
    pub fn bounded(limit: usize) -> Self {
        let buf = Self::default();
        buf.lock().limit = limit;
        buf
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BufState> {
        match self.inner.0.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Copy everything from `reader` into the buffer on a background thread.
    pub fn fill_from(&self, mut reader: impl Read + Send + 'static) -> thread::JoinHandle<()> {
        let buf = self.clone();
        thread::spawn(move || {
            let mut chunk = vec![0u8; 64 * 1024];
            loop {
                match reader.read(&mut chunk) {
                    Ok(0) => break,
                    Ok(n) => buf.push(&chunk[..n]),
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    // EIO is how a pty master reports that the slave side closed.
                    Err(_) => break,
                }
            }
            buf.close();
        })
    }

    pub fn push(&self, bytes: &[u8]) {
        let mut s = self.lock();
        s.data.extend_from_slice(bytes);
        if s.limit > 0 && s.data.len() > s.limit {
            let excess = s.data.len() - s.limit;
            s.data.drain(..excess);
            s.dropped += excess;
        }
        self.inner.1.notify_all();
    }

    fn close(&self) {
        self.lock().closed = true;
        self.inner.1.notify_all();
    }

    pub fn contents(&self) -> Vec<u8> {
        self.lock().data.clone()
    }

    pub fn contents_str(&self) -> String {
        let s = self.lock();
        let text = String::from_utf8_lossy(&s.data).into_owned();
        if s.dropped > 0 {
            format!("[… {} earlier bytes dropped]\n{text}", s.dropped)
        } else {
            text
        }
    }

    /// Wait up to `timeout` for `needle`, then remove and return everything up to
    /// and including it (so the next wait looks only at later output).
    pub fn wait_for(&self, needle: &[u8], timeout: Duration) -> Result<Vec<u8>> {
        let deadline = Instant::now() + timeout;
        let mut s = self.lock();
        loop {
            if let Some(pos) = find(&s.data, needle) {
                let end = pos + needle.len();
                return Ok(s.data.drain(..end).collect());
            }
            if s.closed {
                bail!(
                    "stream closed before {:?} appeared; got:\n{}",
                    String::from_utf8_lossy(needle),
                    String::from_utf8_lossy(&s.data)
                );
            }
            let now = Instant::now();
            if now >= deadline {
                bail!(
                    "timed out after {timeout:?} waiting for {:?}; got:\n{}",
                    String::from_utf8_lossy(needle),
                    String::from_utf8_lossy(&s.data)
                );
            }
            s = match self.inner.1.wait_timeout(s, deadline - now) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
    }

    /// Wait until the writer side has closed (EOF), up to `timeout`.
    pub fn wait_closed(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut s = self.lock();
        while !s.closed {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            s = match self.inner.1.wait_timeout(s, deadline - now) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
        true
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return Some(0);
    }
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// A process group leader we own: reaped by a waiter thread, killed on drop.
pub(crate) struct Reaper {
    pid: u32,
    status: Option<ExitStatus>,
    rx: Receiver<std::io::Result<ExitStatus>>,
}

impl Reaper {
    pub(crate) fn new(mut child: Child) -> Self {
        let pid = child.id();
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let _ = tx.send(child.wait());
        });
        Self {
            pid,
            status: None,
            rx,
        }
    }

    pub(crate) fn pid(&self) -> u32 {
        self.pid
    }

    pub(crate) fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.status.is_none()
            && let Ok(Ok(status)) = self.rx.try_recv()
        {
            self.status = Some(status);
        }
        self.status
    }

    /// Wait up to `timeout`; `None` if still running.
    pub(crate) fn wait(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if self.status.is_none() {
            match self.rx.recv_timeout(timeout) {
                Ok(Ok(status)) => self.status = Some(status),
                Ok(Err(_)) | Err(RecvTimeoutError::Disconnected) => {
                    // wait() failed: treat as gone.
                    self.status = Some(ExitStatus::from_raw(0xff00));
                }
                Err(RecvTimeoutError::Timeout) => {}
            }
        }
        self.status
    }

    /// Signal the whole process group (if the leader has not been reaped yet).
    pub(crate) fn signal_group(&mut self, signal: i32) {
        if self.try_wait().is_none() {
            // SAFETY: kill(2) has no memory-safety preconditions; the group id is the
            // pid of a child we spawned with process_group(0) and have not reaped.
            unsafe {
                libc::kill(-(self.pid as i32), signal);
            }
        }
    }

    /// SIGTERM, a grace period, then SIGKILL; waits for the leader.
    pub(crate) fn kill(&mut self, grace: Duration) -> Option<ExitStatus> {
        if self.try_wait().is_some() {
            return self.status;
        }
        if grace > Duration::ZERO {
            self.signal_group(libc::SIGTERM);
            if self.wait(grace).is_some() {
                return self.status;
            }
        }
        self.signal_group(libc::SIGKILL);
        self.wait(Duration::from_secs(10))
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        self.kill(Duration::ZERO);
    }
}

/// A started command. Dropping it kills its process group.
pub struct Running {
    reaper: Reaper,
    display: String,
    timeout: Duration,
    started: Instant,
    stdin: Option<ChildStdin>,
    stdout_pipe: Option<ChildStdout>,
    stdout: SharedBuf,
    stderr: SharedBuf,
    readers: Vec<thread::JoinHandle<()>>,
}

impl Running {
    fn from_child(mut child: Child, display: String, timeout: Duration) -> Self {
        let stdin = child.stdin.take();
        let stdout_pipe = child.stdout.take();
        let stderr = SharedBuf::default();
        let mut readers = Vec::new();
        if let Some(pipe) = child.stderr.take() {
            readers.push(stderr.fill_from(pipe));
        }
        Self {
            reaper: Reaper::new(child),
            display,
            timeout,
            started: Instant::now(),
            stdin,
            stdout_pipe,
            stdout: SharedBuf::default(),
            stderr,
            readers,
        }
    }

    fn capture_stdout(&mut self) {
        if let Some(pipe) = self.stdout_pipe.take() {
            self.readers.push(self.stdout.fill_from(pipe));
        }
    }

    pub fn pid(&self) -> u32 {
        self.reaper.pid()
    }

    pub fn command(&self) -> &str {
        &self.display
    }

    /// The stdin pipe (with [`Cmd::stdin_piped`]). Drop it to send EOF.
    pub fn take_stdin(&mut self) -> Option<ChildStdin> {
        self.stdin.take()
    }

    /// The stdout pipe (with [`Cmd::stream_stdout`]).
    pub fn take_stdout(&mut self) -> Option<ChildStdout> {
        self.stdout_pipe.take()
    }

    /// Captured stdout so far (a live view).
    pub fn stdout(&self) -> &SharedBuf {
        &self.stdout
    }

    /// Captured stderr so far (a live view).
    pub fn stderr(&self) -> &SharedBuf {
        &self.stderr
    }

    /// The exit status if it has exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.reaper.try_wait()
    }

    pub fn signal(&mut self, signal: i32) {
        self.reaper.signal_group(signal);
    }

    /// Wait for exit within the command's own deadline.
    pub fn wait(self) -> Result<Output> {
        let timeout = self.timeout.saturating_sub(self.started.elapsed());
        self.wait_timeout(timeout)
    }

    /// Wait for exit; past `timeout` kill the group and fail with what it printed.
    pub fn wait_timeout(mut self, timeout: Duration) -> Result<Output> {
        drop(self.stdin.take());
        let status = match self.reaper.wait(timeout) {
            Some(status) => status,
            None => {
                self.reaper.kill(Duration::from_millis(200));
                self.join_readers();
                bail!(
                    "timed out after {timeout:?}: {}\nstdout: {}\nstderr: {}",
                    self.display,
                    self.stdout.contents_str(),
                    self.stderr.contents_str()
                );
            }
        };
        self.join_readers();
        Ok(Output {
            command: self.display.clone(),
            status,
            stdout: self.stdout.contents(),
            stderr: self.stderr.contents(),
            elapsed: self.started.elapsed(),
        })
    }

    /// Terminate (SIGTERM, then SIGKILL) and collect what it printed.
    pub fn kill(mut self) -> Output {
        let status = self
            .reaper
            .kill(Duration::from_secs(2))
            .unwrap_or(ExitStatus::from_raw(libc::SIGKILL));
        self.join_readers();
        Output {
            command: self.display.clone(),
            status,
            stdout: self.stdout.contents(),
            stderr: self.stderr.contents(),
            elapsed: self.started.elapsed(),
        }
    }

    fn join_readers(&mut self) {
        // Grandchildren can hold the pipes open; don't wait for them forever.
        let deadline = Instant::now() + Duration::from_secs(5);
        for buf in [&self.stdout, &self.stderr] {
            buf.wait_closed(deadline.saturating_duration_since(Instant::now()));
        }
        self.readers.retain(|h| !h.is_finished());
    }
}

impl fmt::Debug for Running {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Running(pid {}: {})", self.pid(), self.display)
    }
}
