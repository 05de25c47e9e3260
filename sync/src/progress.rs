//! Progress as a stream of events: what the CLI draws (a bar, or JSON lines) and
//! what a program reads. The library counts; callers decide how to show it.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::mpsc;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    Discovering,
    Indexing,
    Uploading,
    Downloading,
    Verifying,
    Done,
    /// A mirror applying changes as they happen.
    Live,
    /// A mirror rescanning after a (re)connect.
    CatchingUp,
    Reconnecting,
}

/// Where a transfer is: one event per line in `--progress json`.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Progress {
    pub stage: Stage,
    pub percent: f64,
    pub files_done: u64,
    pub files_total: u64,
    pub bytes_done: u64,
    pub bytes_total: u64,
    pub bytes_per_s: f64,
    pub eta_s: Option<f64>,
    pub current: Option<String>,
}

/// What a change did (or, in a dry run, would do).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    Upload,
    Download,
    Mkdir,
    Link,
    Delete,
    Backup,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    Progress(Progress),
    /// One change, reported in dry runs and by the mirror.
    Change {
        op: Op,
        path: String,
    },
    /// Something skipped or retried that does not stop the run.
    Warning {
        message: String,
    },
    /// A mirror's state line: `live`, `catching_up`, `reconnecting`, with counts.
    Status {
        state: Stage,
        pending: u64,
        failed: u64,
        applied: u64,
    },
}

pub type Events = mpsc::UnboundedSender<Event>;

/// Counters shared by the tasks of one stage, turned into [`Progress`] events by a
/// ticker (so many small files make a few events, not one each).
pub struct Tracker {
    stage: Stage,
    started: Instant,
    files_total: u64,
    bytes_total: u64,
    files_done: AtomicU64,
    bytes_done: AtomicU64,
    current: Mutex<Option<String>>,
    events: Events,
}

/// How often a running stage reports.
pub const TICK: Duration = Duration::from_millis(200);

impl Tracker {
    pub fn new(events: Events, stage: Stage, files_total: u64, bytes_total: u64) -> Tracker {
        Tracker {
            stage,
            started: Instant::now(),
            files_total,
            bytes_total,
            files_done: AtomicU64::new(0),
            bytes_done: AtomicU64::new(0),
            current: Mutex::new(None),
            events,
        }
    }

    pub fn add_bytes(&self, n: u64) {
        self.bytes_done.fetch_add(n, Ordering::Relaxed);
    }

    pub fn file_done(&self) {
        self.files_done.fetch_add(1, Ordering::Relaxed);
    }

    pub fn set_current(&self, path: &str) {
        if let Ok(mut current) = self.current.lock() {
            *current = Some(path.to_owned());
        }
    }

    pub fn snapshot(&self) -> Progress {
        let files_done = self.files_done.load(Ordering::Relaxed);
        let bytes_done = self.bytes_done.load(Ordering::Relaxed);
        let elapsed = self.started.elapsed().as_secs_f64().max(1e-3);
        let bytes_per_s = bytes_done as f64 / elapsed;
        let percent = if self.bytes_total > 0 {
            100.0 * bytes_done as f64 / self.bytes_total as f64
        } else if self.files_total > 0 {
            100.0 * files_done as f64 / self.files_total as f64
        } else {
            100.0
        };
        let eta_s = (bytes_per_s > 0.0)
            .then(|| self.bytes_total.saturating_sub(bytes_done) as f64 / bytes_per_s);
        Progress {
            stage: self.stage,
            percent: percent.min(100.0),
            files_done,
            files_total: self.files_total,
            bytes_done,
            bytes_total: self.bytes_total,
            bytes_per_s,
            eta_s,
            current: self.current.lock().ok().and_then(|c| c.clone()),
        }
    }

    pub fn report(&self) {
        let _ = self.events.send(Event::Progress(self.snapshot()));
    }
}

/// Sends one progress event for a stage that has no byte counts of its own.
pub fn stage(events: &Events, stage: Stage, files_done: u64, files_total: u64, bytes: u64) {
    let _ = events.send(Event::Progress(Progress {
        stage,
        percent: if stage == Stage::Done { 100.0 } else { 0.0 },
        files_done,
        files_total,
        bytes_done: bytes,
        bytes_total: bytes,
        bytes_per_s: 0.0,
        eta_s: None,
        current: None,
    }));
}

/// Reports `tracker` every [`TICK`] until the returned guard is dropped.
pub fn tick(tracker: std::sync::Arc<Tracker>) -> TickGuard {
    let task = tokio::spawn(async move {
        let mut interval = tokio::time::interval(TICK);
        loop {
            interval.tick().await;
            tracker.report();
        }
    });
    TickGuard(task)
}

pub struct TickGuard(tokio::task::JoinHandle<()>);

impl Drop for TickGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}
