//! Recordings of the terminal sessions the gateway relays: each session channel
//! with a PTY is written as an asciicast v2 file, output with its timing, window
//! changes, and what the user typed if the policy says so.
//!
//! Files live under `<data-dir>/recordings/<ssh-session-id>/<channel>.cast` (0600),
//! or under `--recording-dir`, one per recorded channel of an SSH session; the
//! session's audit rows (the store) say whose they are. A sweeper deletes
//! recordings older than the retention. Jump mode is end to end encrypted and
//! cannot be recorded: a policy that requires recording refuses it.
//!
//! A sandbox chooses how much it prints, so the disk they take is bounded, in bytes
//! on disk: each recording by `--recording-max-size` (then cut, with a final marker
//! event saying why), all of them by `--recording-max-total` (the oldest finished
//! ones deleted first), and recording stops while their file system has less than
//! `--recording-min-free` left, so that it never fills the disk the store is on
//! ([`space`]). A recording that stops is a session no longer recorded: with
//! `--require-recording` that session ends, and new terminal sessions are refused
//! until there is room again.
//!
//! Writing happens in a task per recording, fed by a bounded queue: the relay hands
//! over a reference-counted chunk and goes on; a full queue (a disk slower than the
//! session) slows the session down rather than losing its record. Once a recording
//! has stopped, the session's output no longer goes to it.

pub mod asciicast;
pub mod filter;
mod policy;
pub mod replay;
pub mod space;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use warren_store::{SshSessionId, Store};

pub use self::policy::{RecordingArgs, RecordingPolicy, parse_age, parse_size};

use self::asciicast::{Code, Header, Utf8Stream};
use self::space::{Shortage, Size, Space};

#[derive(Debug, thiserror::Error)]
pub enum RecordingError {
    #[error("no such recording")]
    NotFound,
    #[error("recordings are off on this gateway")]
    Off,
    #[error("recording {0}: {1}")]
    Io(PathBuf, std::io::Error),
    #[error("{0}")]
    NoRoom(Shortage),
}

/// The gateway's recordings: where they go, the policy, and the disk they use.
#[derive(Debug)]
pub struct Recordings {
    /// `None`: recordings are off.
    space: Option<Arc<Space>>,
    policy: RecordingPolicy,
    /// Where finished recordings are copied so that every gateway of the tier
    /// serves them (PostgreSQL only; see `warren_store`'s `recordings`).
    archive: Option<Store>,
}

/// Events queued per recording before the session waits for the disk.
const QUEUE: usize = 256;
/// Bytes of encoded events gathered before a write.
const BATCH: usize = 1 << 20;
/// Room kept at the end of a recording for the marker that says it was cut.
const MARKER_ROOM: u64 = 512;
/// The most of a command line or title a recording's header keeps.
const HEADER_TEXT: usize = 1024;

impl Recordings {
    /// Records nothing (gateways in tests that do not look at recordings).
    pub fn off() -> Recordings {
        Recordings {
            space: None,
            policy: RecordingPolicy {
                enabled: false,
                ..RecordingPolicy::default()
            },
            archive: None,
        }
    }

    /// Recordings under `data_dir/recordings` (or the policy's folder), by
    /// `policy`; those already there are counted.
    pub fn in_data_dir(data_dir: &Path, policy: RecordingPolicy) -> Recordings {
        let root = policy
            .dir
            .clone()
            .unwrap_or_else(|| data_dir.join("recordings"));
        Recordings {
            space: Some(Arc::new(Space::new(
                root,
                policy.max_total,
                policy.min_free,
            ))),
            policy,
            archive: None,
        }
    }

    /// Finished recordings are copied into `store`, and read from it when this
    /// gateway has no file (another gateway recorded the session).
    pub fn archived_in(mut self, store: Store) -> Recordings {
        self.archive = Some(store);
        self
    }

    /// The store finished recordings are copied into, if any.
    pub fn archive(&self) -> Option<&Store> {
        self.archive.as_ref()
    }

    pub fn policy(&self) -> &RecordingPolicy {
        &self.policy
    }

    /// Whether terminal sessions are recorded.
    pub fn records(&self) -> bool {
        self.policy.enabled && self.space.is_some()
    }

    /// Bytes all recordings take on disk, as counted.
    pub fn total_size(&self) -> u64 {
        self.space.as_ref().map_or(0, |s| s.total())
    }

    fn session_dir(&self, session: &SshSessionId) -> Option<PathBuf> {
        // Session ids are generated (letters, digits, `_`): safe as a file name.
        Some(self.space.as_ref()?.root().join(session.as_str()))
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
        let (Some(space), Some(dir), Some(path)) = (
            self.space.clone(),
            self.session_dir(session),
            self.path(session, channel),
        ) else {
            return Err(RecordingError::Off);
        };
        let mut header = header.clone();
        for text in [&mut header.command, &mut header.title]
            .into_iter()
            .flatten()
        {
            truncate(text, HEADER_TEXT);
        }
        let account = header.account.clone().unwrap_or_default();
        let header = header.line();
        // Deletes the oldest if the total is over (file system work, as below).
        space
            .make_room(header.len() as u64 + MARKER_ROOM, &account)
            .map_err(RecordingError::NoRoom)?;
        // Active from here: a scan leaves its folder alone.
        space.begin(path.clone(), &account);
        let created = (|| {
            create_private_dir(space.root())?;
            create_private_dir(&dir)?;
            use std::os::unix::fs::OpenOptionsExt;
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)?;
            file.write_all(header.as_bytes())?;
            Ok::<_, std::io::Error>(file)
        })();
        let file = match created {
            Ok(file) => file,
            Err(e) => {
                space.end(&path);
                return Err(RecordingError::Io(path, e));
            }
        };
        space.wrote(header.len() as u64, &account);
        let (tx, rx) = mpsc::channel(QUEUE);
        let failed = Arc::new(AtomicBool::new(false));
        let writer = Writer {
            file: tokio::fs::File::from_std(file),
            path,
            failed: failed.clone(),
            space,
            account,
            written: header.len() as u64,
            max_size: self.policy.max_size,
            archive: self
                .archive
                .clone()
                .map(|store| (store, session.clone(), channel)),
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
    /// written), then the oldest if all of them are over the total, and session
    /// folders left empty; returns how many it deleted.
    pub fn sweep(&self, now: SystemTime) -> usize {
        match &self.space {
            Some(space) => space.sweep(now, self.policy.retention),
            None => 0,
        }
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

/// Copies the finished recording at `path` into `store`, a piece at a time.
async fn archive(
    store: &Store,
    session: &SshSessionId,
    channel: u32,
    path: &Path,
) -> anyhow::Result<()> {
    use tokio::io::AsyncReadExt;
    let mut file = tokio::fs::File::open(path).await?;
    let mut piece = vec![0u8; warren_store::RECORDING_CHUNK];
    for seq in 0u32.. {
        let mut filled = 0;
        while filled < piece.len() {
            let n = file.read(&mut piece[filled..]).await?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        if filled == 0 && seq > 0 {
            break;
        }
        store
            .put_recording_chunk(session, channel, seq, &piece[..filled])
            .await?;
        if filled < piece.len() {
            break;
        }
    }
    Ok(())
}

/// Cuts `text` to at most `max` bytes, at a character's boundary.
fn truncate(text: &mut String, max: usize) {
    if text.len() > max {
        let mut at = max;
        while !text.is_char_boundary(at) {
            at -= 1;
        }
        text.truncate(at);
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
        // A recording that stopped (cut, or the disk failed) takes nothing more.
        let ok = !self.failed.load(Ordering::Relaxed) && self.tx.send(event).await.is_ok();
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
    /// Set once nothing more is written (cut, or a write failed).
    failed: Arc<AtomicBool>,
    space: Arc<Space>,
    /// Whose share it counts in.
    account: String,
    /// Bytes in the file.
    written: u64,
    max_size: u64,
    /// Where the finished file is copied, as which session's channel.
    archive: Option<(Store, SshSessionId, u32)>,
}

impl Writer {
    async fn run(mut self, mut rx: mpsc::Receiver<Event>) {
        let (mut output, mut input) = (Utf8Stream::default(), Utf8Stream::default());
        let mut batch = Vec::with_capacity(64 * 1024);
        let mut last = Duration::ZERO;
        while let Some(event) = rx.recv().await {
            if self.stopped() {
                // Events queued before the stop: let the session go on.
                continue;
            }
            let mut next = Some(event);
            // Gather what is queued, so a busy session is written in large pieces.
            while let Some(event) = next.take() {
                last = encode(&mut batch, event, &mut output, &mut input);
                if batch.len() < BATCH {
                    next = rx.try_recv().ok();
                }
            }
            self.write(&mut batch, last).await;
        }
        let (out_rest, in_rest) = (output.finish(), input.finish());
        if !out_rest.is_empty() {
            asciicast::push_event(&mut batch, last, Code::Output, &out_rest);
        }
        if !in_rest.is_empty() {
            asciicast::push_event(&mut batch, last, Code::Input, &in_rest);
        }
        self.write(&mut batch, last).await;
        if let Err(e) = self.file.flush().await {
            self.fail(&e);
        }
        // Finished: the oldest may be deleted, and the sweeper deletes it once old.
        self.space.end(&self.path);
        if let Some((store, session, channel)) = &self.archive
            && let Err(e) = archive(store, session, *channel, &self.path).await
        {
            tracing::warn!(%session, channel, "cannot copy a recording into the store: {e}");
        }
    }

    fn stopped(&self) -> bool {
        self.failed.load(Ordering::Relaxed)
    }

    /// Writes `batch` (whole event lines), or what of it fits before the recording
    /// is cut, then the marker saying why.
    async fn write(&mut self, batch: &mut Vec<u8>, at: Duration) {
        if batch.is_empty() || self.stopped() {
            batch.clear();
            return;
        }
        let room = self
            .max_size
            .saturating_sub(self.written.saturating_add(MARKER_ROOM));
        let (keep, mut cut) = if batch.len() as u64 <= room {
            (batch.len(), None)
        } else {
            // The events that fit whole, and the start of the next one.
            let room = usize::try_from(room).unwrap_or(usize::MAX);
            let whole = batch[..room]
                .iter()
                .rposition(|&b| b == b'\n')
                .map_or(0, |i| i + 1);
            let next_end = batch[whole..]
                .iter()
                .position(|&b| b == b'\n')
                .map_or(batch.len(), |i| whole + i + 1);
            let part = asciicast::cut_event(&batch[whole..next_end], room - whole);
            batch.truncate(whole);
            batch.extend_from_slice(&part.unwrap_or_default());
            let why = format!(
                "recording cut: it reached its size limit of {} (--recording-max-size); \
                 the session went on unrecorded",
                Size(self.max_size)
            );
            (batch.len(), Some(why))
        };
        let (space, account) = (self.space.clone(), self.account.clone());
        let need = keep as u64;
        let fits = tokio::task::spawn_blocking(move || space.make_room(need, &account))
            .await
            .unwrap_or(Ok(()));
        let keep = match fits {
            Ok(()) => keep,
            Err(shortage) => {
                cut = Some(format!(
                    "recording stopped: {shortage}; the session went on unrecorded"
                ));
                0
            }
        };
        batch.truncate(keep);
        if let Some(why) = &cut {
            asciicast::push_event(batch, at, Code::Marker, why);
        }
        match self.file.write_all(batch).await {
            Ok(()) => {
                self.written += batch.len() as u64;
                self.space.wrote(batch.len() as u64, &self.account);
            }
            Err(e) => self.fail(&e),
        }
        batch.clear();
        if let Some(why) = cut {
            self.failed.store(true, Ordering::Relaxed);
            tracing::warn!(path = %self.path.display(), "{why}");
        }
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

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn nothing_starts_under_the_free_space_floor() {
        let dir = tempfile::tempdir().unwrap();
        let policy = RecordingPolicy {
            min_free: u64::MAX / 4,
            ..RecordingPolicy::default()
        };
        let recordings = Recordings::in_data_dir(dir.path(), policy);
        let started = recordings.start(&SshSessionId::generate(), 1, &Header::new(80, 24, 0));
        let Err(RecordingError::NoRoom(shortage)) = started else {
            panic!("a recording started with no room");
        };
        assert!(shortage.to_string().contains("--recording-min-free"));
        assert!(!dir.path().join("recordings").exists());
    }

    /// Waits until the recording at `path` ends with a marker.
    async fn cut(path: &Path) -> String {
        for _ in 0..500 {
            let text = std::fs::read_to_string(path).unwrap();
            if text.lines().last().is_some_and(|l| l.contains("\"m\"")) {
                return text;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("{} never cut", path.display());
    }

    #[tokio::test]
    async fn a_flood_is_cut_at_the_size_and_the_oldest_go_for_the_total() {
        let dir = tempfile::tempdir().unwrap();
        let policy = RecordingPolicy {
            max_size: 64 << 10,
            max_total: 150 << 10,
            min_free: 0,
            ..RecordingPolicy::default()
        };
        let recordings = Recordings::in_data_dir(dir.path(), policy);
        let header = Header::new(80, 24, 0);
        let nuls = Bytes::from(vec![0u8; 5000]);
        let mut paths = Vec::new();
        for _ in 0..3 {
            let session = SshSessionId::generate();
            let recorder = recordings.start(&session, 1, &header).unwrap();
            // 200 KB of NULs: 1.2 MB as asciicast.
            for _ in 0..40 {
                assert!(recorder.output(&nuls).await);
            }
            let path = recordings.path(&session, 1).unwrap();
            let text = cut(&path).await;
            drop(recorder);
            let size = text.len() as u64;
            assert!((63 << 10..=64 << 10).contains(&size), "{size} bytes");
            let lines: Vec<&str> = text.lines().skip(1).collect();
            let (last, events) = lines.split_last().unwrap();
            let marker = asciicast::parse_event(last, 0).unwrap();
            assert!(marker.data.contains("recording cut"), "{marker:?}");
            for line in events {
                let event = asciicast::parse_event(line, 0).unwrap();
                assert!(event.code == "o" && event.data.chars().all(|c| c == '\0'));
            }
            paths.push(path);
            // The writer finishes once every handle is gone.
            for _ in 0..500 {
                if !recordings
                    .space
                    .as_ref()
                    .unwrap()
                    .is_active(paths.last().unwrap())
                {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        // Three recordings of 64 KiB do not fit in 150: the first went.
        assert!(!paths[0].exists() && paths[1].exists() && paths[2].exists());
        assert!(recordings.total_size() <= 150 << 10);
    }
}
