//! Recordings of the terminal sessions the gateway relays: each session channel
//! with a PTY is written as an asciicast v2 file, output with its timing, window
//! changes, and what the user typed if the policy says so.
//!
//! Files live under `<data-dir>/recordings/<ssh-session-id>/<channel>.cast` (0600),
//! one per recorded channel of an SSH session; the session's audit rows (the store)
//! say whose they are. A sweeper deletes recordings older than the retention.
//! Jump mode is end to end encrypted and cannot be recorded: a policy that requires
//! recording refuses it.
//!
//! Writing happens in a task per recording, fed by a bounded queue: the relay hands
//! over a reference-counted chunk and goes on; a full queue (a disk slower than the
//! session) slows the session down rather than losing its record.

pub mod asciicast;
pub mod replay;

use std::collections::HashSet;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use self::asciicast::{Code, Header, Utf8Stream};
use crate::store::SshSessionId;

/// What the gateway records, and for how long it keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordingPolicy {
    /// Record terminal sessions at all.
    pub enabled: bool,
    /// Also record what users type. Off by default: passwords typed at prompts
    /// would be kept in the clear.
    pub input: bool,
    /// Refuse what cannot be recorded: jump mode (`ssh -J`), and a terminal session
    /// whose recording cannot be written (a full disk ends it).
    pub required: bool,
    /// How long a recording is kept after its last write.
    pub retention: Duration,
}

impl Default for RecordingPolicy {
    fn default() -> RecordingPolicy {
        RecordingPolicy {
            enabled: true,
            input: false,
            required: false,
            retention: Duration::from_secs(30 * 24 * 3600),
        }
    }
}

/// The recording policy as command-line flags (`warren-gateway serve`, `warren up`).
#[derive(Debug, Clone, clap::Args)]
pub struct RecordingArgs {
    /// Record no terminal sessions.
    #[arg(long, conflicts_with_all = ["record_input", "require_recording"])]
    pub no_recording: bool,
    /// Also record what users type in terminal sessions (passwords typed at
    /// prompts included).
    #[arg(long)]
    pub record_input: bool,
    /// Refuse what cannot be recorded: jump mode (ssh -J), and terminal sessions
    /// when their recording cannot be written.
    #[arg(long)]
    pub require_recording: bool,
    /// Delete recordings this long after their last write: 90d, 12h, 30m, 45s.
    #[arg(long, default_value = "30d", value_parser = parse_age)]
    pub recording_retention: Duration,
}

impl RecordingArgs {
    pub fn policy(&self) -> RecordingPolicy {
        RecordingPolicy {
            enabled: !self.no_recording,
            input: self.record_input,
            required: self.require_recording,
            retention: self.recording_retention,
        }
    }
}

/// `90d`, `12h`, `30m`, `45s` (or plain seconds).
pub fn parse_age(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => text.split_at(at),
        None => (text, "s"),
    };
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?}: a number and d, h, m or s (e.g. 30d)"))?;
    let unit_s = match unit {
        "d" => 86_400,
        "h" => 3_600,
        "m" => 60,
        "s" => 1,
        _ => return Err(format!("{text:?}: the unit is d, h, m or s (e.g. 30d)")),
    };
    match n.checked_mul(unit_s) {
        Some(0) | None => Err(format!("{text:?}: more than zero, at most centuries")),
        Some(s) => Ok(Duration::from_secs(s)),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RecordingError {
    #[error("no such recording")]
    NotFound,
    #[error("recordings are off on this gateway")]
    Off,
    #[error("recording {0}: {1}")]
    Io(PathBuf, std::io::Error),
}

/// The gateway's recordings: where they go, the policy, and those being written.
#[derive(Debug)]
pub struct Recordings {
    dir: Option<PathBuf>,
    policy: RecordingPolicy,
    /// Recordings being written (the sweeper leaves them alone).
    active: Active,
}

type Active = Arc<Mutex<HashSet<PathBuf>>>;

/// Events queued per recording before the session waits for the disk.
const QUEUE: usize = 256;
/// Bytes of encoded events gathered before a write.
const BATCH: usize = 1 << 20;

impl Recordings {
    /// Records nothing (gateways in tests that do not look at recordings).
    pub fn off() -> Recordings {
        Recordings {
            dir: None,
            policy: RecordingPolicy {
                enabled: false,
                ..RecordingPolicy::default()
            },
            active: Active::default(),
        }
    }

    /// Recordings under `data_dir/recordings`, by `policy`.
    pub fn in_data_dir(data_dir: &Path, policy: RecordingPolicy) -> Recordings {
        Recordings {
            dir: Some(data_dir.join("recordings")),
            policy,
            active: Active::default(),
        }
    }

    pub fn policy(&self) -> &RecordingPolicy {
        &self.policy
    }

    /// Whether terminal sessions are recorded.
    pub fn records(&self) -> bool {
        self.policy.enabled && self.dir.is_some()
    }

    fn session_dir(&self, session: &SshSessionId) -> Option<PathBuf> {
        // Session ids are generated (letters, digits, `_`): safe as a file name.
        Some(self.dir.as_ref()?.join(session.as_str()))
    }

    fn path(&self, session: &SshSessionId, channel: u32) -> Option<PathBuf> {
        Some(self.session_dir(session)?.join(format!("{channel}.cast")))
    }

    /// Starts recording channel `channel` of `session`: writes `header` and returns
    /// the handle the relay feeds.
    pub fn start(
        &self,
        session: &SshSessionId,
        channel: u32,
        header: &Header,
    ) -> Result<Recorder, RecordingError> {
        let (Some(dir), Some(path)) = (self.session_dir(session), self.path(session, channel))
        else {
            return Err(RecordingError::Off);
        };
        let io = |e| RecordingError::Io(path.clone(), e);
        create_private_dir(self.dir.as_deref().unwrap_or(&dir)).map_err(io)?;
        create_private_dir(&dir).map_err(io)?;
        let mut file = {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .map_err(io)?
        };
        file.write_all(header.line().as_bytes()).map_err(io)?;
        crate::unpoisoned(&self.active).insert(path.clone());
        let (tx, rx) = mpsc::channel(QUEUE);
        let failed = Arc::new(AtomicBool::new(false));
        let writer = Writer {
            file: tokio::fs::File::from_std(file),
            path,
            failed: failed.clone(),
            active: self.active.clone(),
        };
        tokio::spawn(writer.run(rx));
        Ok(Recorder {
            tx,
            started: Instant::now(),
            failed,
            input: self.policy.input,
            stop_on_failure: self.policy.required,
        })
    }

    /// The recorded channels of `session`, in order.
    pub fn channels(&self, session: &SshSessionId) -> Vec<u32> {
        let Some(dir) = self.session_dir(session) else {
            return Vec::new();
        };
        let Ok(entries) = std::fs::read_dir(dir) else {
            return Vec::new();
        };
        let mut channels: Vec<u32> = entries
            .filter_map(|e| {
                let name = e.ok()?.file_name();
                name.to_str()?.strip_suffix(".cast")?.parse().ok()
            })
            .collect();
        channels.sort_unstable();
        channels
    }

    /// Opens a recording to read it.
    pub async fn open(
        &self,
        session: &SshSessionId,
        channel: u32,
    ) -> Result<tokio::fs::File, RecordingError> {
        let path = self.path(session, channel).ok_or(RecordingError::Off)?;
        match tokio::fs::File::open(&path).await {
            Ok(file) => Ok(file),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(RecordingError::NotFound),
            Err(e) => Err(RecordingError::Io(path, e)),
        }
    }

    /// Deletes recordings last written before `now - retention` (not those being
    /// written), and session folders left empty; returns how many it deleted.
    pub fn sweep(&self, now: SystemTime) -> usize {
        let Some(root) = &self.dir else { return 0 };
        let Ok(sessions) = std::fs::read_dir(root) else {
            return 0;
        };
        let active = crate::unpoisoned(&self.active).clone();
        let mut deleted = 0;
        for session in sessions.flatten() {
            let dir = session.path();
            let Ok(files) = std::fs::read_dir(&dir) else {
                continue;
            };
            for file in files.flatten() {
                let path = file.path();
                let old = file
                    .metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|written| now.duration_since(written).ok())
                    .is_some_and(|age| age > self.policy.retention);
                if old && !active.contains(&path) {
                    match std::fs::remove_file(&path) {
                        Ok(()) => deleted += 1,
                        Err(e) => tracing::warn!(path = %path.display(), error = %e,
                            "cannot delete an expired recording"),
                    }
                }
            }
            // Fails (and stays) while it still holds recordings.
            let _ = std::fs::remove_dir(&dir);
        }
        deleted
    }

    /// Sweeps now and then: a tenth of the retention, between a second and ten
    /// minutes.
    pub fn spawn_sweeper(self: Arc<Self>) -> tokio::task::JoinHandle<()> {
        let every =
            (self.policy.retention / 10).clamp(Duration::from_secs(1), Duration::from_secs(600));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                let me = self.clone();
                let deleted = tokio::task::spawn_blocking(move || me.sweep(SystemTime::now()))
                    .await
                    .unwrap_or(0);
                if deleted > 0 {
                    tracing::info!(deleted, "expired recordings deleted");
                }
            }
        })
    }
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

enum Event {
    Output(Duration, Bytes),
    Input(Duration, Bytes),
    Resize(Duration, u32, u32),
}

/// The relay's handle on one recording; the file is closed when every clone is
/// dropped.
#[derive(Clone)]
pub struct Recorder {
    tx: mpsc::Sender<Event>,
    started: Instant,
    failed: Arc<AtomicBool>,
    input: bool,
    stop_on_failure: bool,
}

impl Recorder {
    /// Records output from the sandbox. `false`: the session must end (its
    /// recording is required and cannot be written).
    pub async fn output(&self, data: &Bytes) -> bool {
        self.send(Event::Output(self.started.elapsed(), data.clone()))
            .await
    }

    /// Records what the user typed, if the policy records input.
    pub async fn input(&self, data: &Bytes) -> bool {
        if !self.input {
            return true;
        }
        self.send(Event::Input(self.started.elapsed(), data.clone()))
            .await
    }

    pub async fn resize(&self, cols: u32, rows: u32) {
        let _ = self
            .send(Event::Resize(self.started.elapsed(), cols, rows))
            .await;
    }

    async fn send(&self, event: Event) -> bool {
        let sent = self.tx.send(event).await.is_ok();
        let ok = sent && !self.failed.load(Ordering::Relaxed);
        ok || !self.stop_on_failure
    }
}

/// Where a channel's recording goes once its terminal session starts; the relay's
/// tasks start before that, so they hold the slot.
pub type RecorderSlot = Arc<OnceLock<Recorder>>;

/// One direction of a channel, as the pipe sees it.
#[derive(Clone)]
pub struct Tap {
    slot: RecorderSlot,
    code: Code,
}

impl Tap {
    pub fn output(slot: &RecorderSlot) -> Tap {
        Tap {
            slot: slot.clone(),
            code: Code::Output,
        }
    }

    pub fn input(slot: &RecorderSlot) -> Tap {
        Tap {
            slot: slot.clone(),
            code: Code::Input,
        }
    }

    /// Records `data` if the channel is being recorded; `false` ends the session.
    pub async fn observe(&self, data: &Bytes) -> bool {
        match (self.slot.get(), self.code) {
            (None, _) => true,
            (Some(r), Code::Input) => r.input(data).await,
            (Some(r), _) => r.output(data).await,
        }
    }
}

struct Writer {
    file: tokio::fs::File,
    path: PathBuf,
    failed: Arc<AtomicBool>,
    active: Active,
}

impl Writer {
    async fn run(mut self, mut rx: mpsc::Receiver<Event>) {
        let (mut output, mut input) = (Utf8Stream::default(), Utf8Stream::default());
        let mut batch = Vec::with_capacity(64 * 1024);
        let mut last = Duration::ZERO;
        while let Some(event) = rx.recv().await {
            let mut next = Some(event);
            // Gather what is queued, so a busy session is written in large pieces.
            while let Some(event) = next.take() {
                last = encode(&mut batch, event, &mut output, &mut input);
                if batch.len() < BATCH {
                    next = rx.try_recv().ok();
                }
            }
            self.write(&mut batch).await;
        }
        let (out_rest, in_rest) = (output.finish(), input.finish());
        if !out_rest.is_empty() {
            asciicast::push_event(&mut batch, last, Code::Output, &out_rest);
        }
        if !in_rest.is_empty() {
            asciicast::push_event(&mut batch, last, Code::Input, &in_rest);
        }
        self.write(&mut batch).await;
        if let Err(e) = self.file.flush().await {
            self.fail(&e);
        }
        // Finished: the sweeper may delete it once it is old.
        crate::unpoisoned(&self.active).remove(&self.path);
    }

    async fn write(&mut self, batch: &mut Vec<u8>) {
        if !batch.is_empty()
            && !self.failed.load(Ordering::Relaxed)
            && let Err(e) = self.file.write_all(batch).await
        {
            self.fail(&e);
        }
        batch.clear();
    }

    fn fail(&self, e: &std::io::Error) {
        if !self.failed.swap(true, Ordering::Relaxed) {
            tracing::warn!(path = %self.path.display(), error = %e,
                "cannot write a session recording; the rest of the session is not recorded");
        }
    }
}

fn encode(
    batch: &mut Vec<u8>,
    event: Event,
    output: &mut Utf8Stream,
    input: &mut Utf8Stream,
) -> Duration {
    match event {
        Event::Output(at, data) => {
            asciicast::push_chunk(batch, at, Code::Output, output, &data);
            at
        }
        Event::Input(at, data) => {
            asciicast::push_chunk(batch, at, Code::Input, input, &data);
            at
        }
        Event::Resize(at, cols, rows) => {
            asciicast::push_event(batch, at, Code::Resize, &format!("{cols}x{rows}"));
            at
        }
    }
}
