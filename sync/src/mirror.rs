//! `warren mirror <id>:/path ./dir`: the sandbox's tree kept in a local directory.
//! A first full pull, then the agent's watcher (`warren-agent watch`, over an exec
//! channel) streams changes, applied in revision order, each file through a temp
//! file and an atomic rename. The sandbox wins conflicts (`--backup` keeps a
//! locally modified file beside it); local files that cannot be written are
//! retried with backoff and reported, without stopping the others. A dropped
//! connection (a gateway restart, the network) is retried by itself; on reconnect a
//! full rescan catches up before the mirror is live again.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::chunks::{self, shell_quote};
use crate::connect::{Connection, Endpoint};
use crate::download;
use crate::error::SyncError;
use crate::local::{self, LocalError};
use crate::progress::{Event, Events, Op, Stage};
use crate::remote::{Sftp, is_missing, join};
use crate::tree::{Kind, part_target};

#[derive(Clone, Debug)]
pub struct MirrorOptions {
    /// The sandbox directory.
    pub source: String,
    pub target: PathBuf,
    pub backup: bool,
    /// The agent binary in the sandbox, for its watcher; `None`: the session's
    /// own (`WARREN_AGENT`).
    pub agent_path: Option<String>,
}

impl MirrorOptions {
    pub fn new(source: impl Into<String>, target: impl Into<PathBuf>) -> MirrorOptions {
        MirrorOptions {
            source: source.into(),
            target: target.into(),
            backup: false,
            agent_path: None,
        }
    }
}

/// One change from the watcher.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Change {
    Ready,
    Written(String),
    Deleted(String),
    Moved(String, String),
    Overflow,
}

fn parse(record: &[u8]) -> Option<(u64, Change)> {
    let text = std::str::from_utf8(record).ok()?;
    let mut fields = text.split('\t');
    let rev = fields.next()?.parse().ok()?;
    let change = match fields.next()? {
        "S" => Change::Ready,
        "W" => Change::Written(fields.next()?.to_owned()),
        "D" => Change::Deleted(fields.next()?.to_owned()),
        "M" => Change::Moved(fields.next()?.to_owned(), fields.next()?.to_owned()),
        "O" => Change::Overflow,
        _ => return None,
    };
    Some((rev, change))
}

/// What the mirror keeps across reconnects.
#[derive(Default)]
struct State {
    /// What the mirror last wrote at each path (size, mtime): a local file that no
    /// longer matches was modified locally.
    written: HashMap<String, (u64, i64)>,
    /// Paths that could not be written, with their next try and attempt count.
    failed: BTreeMap<String, (Instant, u32)>,
    applied: u64,
    last_rev: u64,
}

const RETRY_FIRST: Duration = Duration::from_millis(200);
const RETRY_MAX: Duration = Duration::from_secs(10);
const RECONNECT_MAX: Duration = Duration::from_secs(10);

/// Runs until `stop` resolves (or a non-network error). Progress and status go to
/// `events`.
pub async fn mirror(
    endpoint: &Endpoint,
    options: &MirrorOptions,
    events: Events,
    stop: impl std::future::Future<Output = ()>,
) -> Result<(), SyncError> {
    std::fs::create_dir_all(&options.target)
        .map_err(|e| SyncError::Local(options.target.clone(), e))?;
    let mut state = State::default();
    let mut backoff = Duration::from_millis(500);
    tokio::pin!(stop);
    loop {
        let run = session(endpoint, options, &mut state, &events);
        let result = tokio::select! {
            r = run => r,
            () = &mut stop => return Ok(()),
        };
        match result {
            Ok(()) => return Ok(()),
            // Only a sandbox that refuses us or a target that is not a directory
            // stops a mirror; anything else is retried over a new connection.
            Err(e) if !matches!(e, SyncError::Refused(_) | SyncError::NotADirectory(_)) => {
                let _ = events.send(Event::Warning {
                    message: format!("disconnected ({e}); reconnecting"),
                });
            }
            Err(e) => return Err(e),
        }
        status(&events, Stage::Reconnecting, &state, 0);
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            () = &mut stop => return Ok(()),
        }
        backoff = (backoff * 2).min(RECONNECT_MAX);
    }
}

fn status(events: &Events, state: Stage, s: &State, pending: u64) {
    let _ = events.send(Event::Status {
        state,
        pending,
        failed: s.failed.len() as u64,
        applied: s.applied,
    });
}

async fn session(
    endpoint: &Endpoint,
    options: &MirrorOptions,
    state: &mut State,
    events: &Events,
) -> Result<(), SyncError> {
    let conn = Connection::open(endpoint).await?;
    let sftp = conn.sftp().await?;
    let root = sftp
        .raw()
        .realpath(options.source.as_str())
        .await
        .map_err(SyncError::remote("realpath", &options.source))?
        .files
        .into_iter()
        .next()
        .map(|f| f.filename)
        .ok_or_else(|| SyncError::NotADirectory(options.source.clone()))?;
    // The watcher first, so nothing that changes during the pull is missed.
    let command = format!(
        "{} watch {}",
        chunks::agent_word(options.agent_path.as_deref()),
        shell_quote(&root)
    );
    let watcher = conn.exec_channel(&command).await?;
    // Its own task drains the channel always, so its queue never fills while
    // changes are being applied (a full channel queue stalls the whole connection).
    let (records_tx, mut records) = tokio::sync::mpsc::unbounded_channel();
    let reader = tokio::spawn(read_records(watcher, records_tx));
    let _reader = AbortOnDrop(reader);
    let mut queue: VecDeque<Change> = VecDeque::new();
    loop {
        match next(&mut records).await? {
            (_, Change::Ready) => break,
            (_, other) => queue.push_back(other),
        }
    }
    status(events, Stage::CatchingUp, state, 0);
    let ctx = Ctx {
        sftp: &sftp,
        root: &root,
        target: &options.target,
        backup: options.backup,
        events,
    };
    full_pull(&ctx, state).await?;
    status(events, Stage::Live, state, queue.len() as u64);
    loop {
        while let Some(change) = queue.pop_front() {
            apply(&ctx, state, change).await?;
        }
        retry_due(&ctx, state).await?;
        status(events, Stage::Live, state, 0);
        let wait = state
            .failed
            .values()
            .map(|(at, _)| at.saturating_duration_since(Instant::now()))
            .min()
            .unwrap_or(Duration::from_secs(3600));
        tokio::select! {
            record = next(&mut records) => {
                let (rev, change) = record?;
                state.last_rev = rev;
                queue.push_back(change);
                // Whatever else is already there goes in the same round.
                while let Ok(Ok(more)) = records.try_recv() {
                    state.last_rev = more.0;
                    queue.push_back(more.1);
                }
            }
            () = tokio::time::sleep(wait) => {}
        }
    }
}

#[derive(Default)]
struct Records {
    buf: Vec<u8>,
}

impl Records {
    fn pop(&mut self) -> Option<(u64, Change)> {
        loop {
            let end = self.buf.iter().position(|b| *b == 0)?;
            let record: Vec<u8> = self.buf.drain(..=end).collect();
            if let Some(parsed) = parse(&record[..end]) {
                return Some(parsed);
            }
        }
    }
}

type Record = Result<(u64, Change), SyncError>;

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn next(records: &mut tokio::sync::mpsc::UnboundedReceiver<Record>) -> Record {
    records
        .recv()
        .await
        .unwrap_or(Err(SyncError::Ssh(russh::Error::Disconnect)))
}

/// Reads the watcher's records until its channel ends; the end is an error (the
/// session then reconnects).
async fn read_records(
    mut channel: russh::Channel<russh::client::Msg>,
    tx: tokio::sync::mpsc::UnboundedSender<Record>,
) {
    let mut records = Records::default();
    loop {
        while let Some(record) = records.pop() {
            if tx.send(Ok(record)).is_err() {
                return;
            }
        }
        match channel.wait().await {
            Some(russh::ChannelMsg::Data { data }) => records.buf.extend_from_slice(&data),
            Some(russh::ChannelMsg::ExitStatus { exit_status }) if exit_status != 0 => {
                let message = format!("the watcher exited with {exit_status}");
                let _ = tx.send(Err(SyncError::Helper(message)));
                return;
            }
            Some(_) => {}
            None => {
                let _ = tx.send(Err(SyncError::Ssh(russh::Error::Disconnect)));
                return;
            }
        }
    }
}

struct Ctx<'a> {
    sftp: &'a Sftp,
    root: &'a str,
    target: &'a Path,
    backup: bool,
    events: &'a Events,
}

/// Everything in the sandbox copied where it differs; local extras removed.
async fn full_pull(ctx: &Ctx<'_>, state: &mut State) -> Result<(), SyncError> {
    let listing = ctx.sftp.list(ctx.root).await?;
    let local = local_tree(ctx.target);
    let total = listing.tree.len() as u64;
    let mut done = 0;
    // What changed while no watcher ran may have kept its size and second (SFTP's
    // mtimes are whole seconds): files as new as the newest copy held are pulled
    // again rather than trusted.
    let since = state.written.values().map(|(_, mtime)| *mtime).max();
    for (rel, kind) in &listing.tree {
        let changed = matches!((kind, since), (Kind::File { mtime, .. }, Some(n)) if *mtime >= n);
        put(ctx, state, rel, kind.clone(), changed).await?;
        done += 1;
        if done % 256 == 0 {
            crate::progress::stage(ctx.events, Stage::Downloading, done, total, 0);
        }
    }
    let mut extras: Vec<&String> = local
        .keys()
        .filter(|k| !listing.tree.contains_key(*k))
        .collect();
    extras.sort_by(|a, b| b.cmp(a));
    for rel in extras {
        apply_local(ctx, state, rel, |path| {
            local::remove(path)?;
            Ok(Op::Delete)
        });
    }
    Ok(())
}

/// The local tree as (size, mtime) per path, for the first pull's comparison.
fn local_tree(root: &Path) -> BTreeMap<String, Kind> {
    let mut out = BTreeMap::new();
    let mut stack = vec![(root.to_owned(), String::new())];
    while let Some((dir, rel)) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            let child = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            if part_target(&child).is_some() || child.ends_with(".warren-backup") {
                continue;
            }
            let Ok(meta) = entry.metadata() else { continue };
            use std::os::unix::fs::MetadataExt;
            let kind = if meta.file_type().is_symlink() {
                Kind::Symlink {
                    target: String::new(),
                }
            } else if meta.is_dir() {
                stack.push((entry.path(), child.clone()));
                Kind::Dir {
                    mode: meta.mode() & 0o7777,
                    mtime: meta.mtime(),
                }
            } else {
                Kind::File {
                    size: meta.len(),
                    mtime: meta.mtime(),
                    mode: meta.mode() & 0o7777,
                }
            };
            out.insert(child, kind);
        }
    }
    out
}

async fn apply(ctx: &Ctx<'_>, state: &mut State, change: Change) -> Result<(), SyncError> {
    match change {
        Change::Ready => Ok(()),
        Change::Overflow => full_pull(ctx, state).await,
        Change::Written(rel) => written(ctx, state, &rel, true).await,
        Change::Deleted(rel) => {
            state.written.remove(&rel);
            apply_local(ctx, state, &rel, |path| {
                local::remove(path)?;
                Ok(Op::Delete)
            });
            Ok(())
        }
        Change::Moved(from, to) => {
            let moved = match (
                local::resolve(ctx.target, &from),
                local::resolve(ctx.target, &to),
            ) {
                (Ok(a), Ok(b)) if std::fs::symlink_metadata(&a).is_ok() => {
                    local::make_parents(&b).is_ok() && std::fs::rename(&a, &b).is_ok()
                }
                _ => false,
            };
            if let Some(w) = state.written.remove(&from) {
                state.written.insert(to.clone(), w);
            }
            if moved {
                state.applied += 1;
                let _ = ctx.events.send(Event::Change {
                    op: Op::Download,
                    path: to.clone(),
                });
            }
            // Whatever the rename did, what is there now is the truth (a moved
            // file is not pulled again when it matches).
            written(ctx, state, &to, false).await
        }
    }
}

/// Brings `rel` in line with what the sandbox has there now; `changed`: the
/// sandbox wrote it, so a file is pulled even if its size and mtime match.
async fn written(
    ctx: &Ctx<'_>,
    state: &mut State,
    rel: &str,
    changed: bool,
) -> Result<(), SyncError> {
    if part_target(rel).is_some() {
        return Ok(());
    }
    let full = join(ctx.root, rel);
    let kind = match ctx.sftp.lstat(&full).await? {
        Some(Kind::Symlink { .. }) => {
            let name = ctx.sftp.raw().readlink(full.as_str()).await;
            match name.ok().and_then(|n| n.files.into_iter().next()) {
                Some(f) => Some(Kind::Symlink { target: f.filename }),
                None => return Ok(()),
            }
        }
        other => other,
    };
    match kind {
        None => {
            apply_local(ctx, state, rel, |path| {
                local::remove(path)?;
                Ok(Op::Delete)
            });
            Ok(())
        }
        Some(kind @ Kind::Dir { .. }) => {
            put(ctx, state, rel, kind, false).await?;
            // What was in a directory moved in or made before its watch came: pulled now.
            let listing = match ctx.sftp.list(&full).await {
                Ok(listing) => listing,
                Err(SyncError::Remote { source, .. }) if is_missing(&source) => return Ok(()),
                Err(e) => return Err(e),
            };
            for (sub, kind) in listing.tree {
                put(ctx, state, &format!("{rel}/{sub}"), kind, false).await?;
            }
            Ok(())
        }
        Some(kind) => put(ctx, state, rel, kind, changed).await,
    }
}

/// Makes the local `rel` what `kind` says, downloading a file that differs (or,
/// when `changed`, one whose size and mtime match).
async fn put(
    ctx: &Ctx<'_>,
    state: &mut State,
    rel: &str,
    kind: Kind,
    changed: bool,
) -> Result<(), SyncError> {
    let path = match local::resolve(ctx.target, rel) {
        Ok(p) => p,
        Err(e) => {
            warn(ctx, format!("{rel}: {e}"));
            return Ok(());
        }
    };
    match kind {
        Kind::Dir { mode, .. } => {
            apply_local(ctx, state, rel, |p| local::dir(p, mode).map(|()| Op::Mkdir));
            let _ = path;
        }
        Kind::Symlink { target } => {
            if !crate::tree::stays_inside(Path::new(rel), Path::new(&target)) {
                warn(ctx, format!("{rel}: a link out of the tree, not mirrored"));
                return Ok(());
            }
            let same = std::fs::read_link(&path).is_ok_and(|t| t == Path::new(&target));
            if !same {
                apply_local(ctx, state, rel, |p| {
                    local::link(p, &target).map(|()| Op::Link)
                });
            }
        }
        Kind::File { size, mtime, mode } => {
            use std::os::unix::fs::MetadataExt;
            let here = std::fs::symlink_metadata(&path).ok();
            if !changed
                && here
                    .as_ref()
                    .is_some_and(|m| m.is_file() && m.len() == size && m.mtime() == mtime)
            {
                state.written.insert(rel.to_owned(), (size, mtime));
                return Ok(());
            }
            let modified_here = here.as_ref().is_some_and(|m| {
                m.is_file() && state.written.get(rel) != Some(&(m.len(), m.mtime()))
            });
            if let Err(e) = local::make_parents(&path) {
                fail(ctx, state, rel, e);
                return Ok(());
            }
            let part = local::part_of(&path);
            match download::fetch(ctx.sftp, &join(ctx.root, rel), &part).await {
                Ok(_) => {}
                // Gone again before it could be read: its removal is the next record.
                Err(SyncError::Remote { source, .. }) if is_missing(&source) => return Ok(()),
                Err(e) => return Err(e),
            }
            if ctx.backup && modified_here {
                match local::backup(&path) {
                    Ok(to) => {
                        let _ = ctx.events.send(Event::Change {
                            op: Op::Backup,
                            path: to.display().to_string(),
                        });
                    }
                    Err(e) => {
                        let _ = std::fs::remove_file(&part);
                        fail(ctx, state, rel, e);
                        return Ok(());
                    }
                }
            }
            match local::commit(&part, &path, mode, mtime) {
                Ok(()) => {
                    state.written.insert(rel.to_owned(), (size, mtime));
                    state.failed.remove(rel);
                    state.applied += 1;
                    let _ = ctx.events.send(Event::Change {
                        op: Op::Download,
                        path: rel.to_owned(),
                    });
                }
                Err(e) => fail(ctx, state, rel, e),
            }
        }
    }
    Ok(())
}

/// Runs a local change at `rel`, recording a failure for retry instead of stopping.
fn apply_local(
    ctx: &Ctx<'_>,
    state: &mut State,
    rel: &str,
    change: impl FnOnce(&Path) -> Result<Op, LocalError>,
) {
    let result = local::resolve(ctx.target, rel).and_then(|p| change(&p));
    match result {
        Ok(op) => {
            state.failed.remove(rel);
            state.applied += 1;
            let _ = ctx.events.send(Event::Change {
                op,
                path: rel.to_owned(),
            });
        }
        Err(e) => fail(ctx, state, rel, e),
    }
}

fn fail(ctx: &Ctx<'_>, state: &mut State, rel: &str, e: LocalError) {
    if !e.is_retryable() {
        warn(ctx, format!("{rel}: {e}"));
        return;
    }
    let attempts = state.failed.get(rel).map_or(0, |(_, n)| *n) + 1;
    let delay = (RETRY_FIRST * 2u32.saturating_pow(attempts - 1)).min(RETRY_MAX);
    state
        .failed
        .insert(rel.to_owned(), (Instant::now() + delay, attempts));
    warn(ctx, format!("{rel}: {e} (retrying in {delay:?})"));
}

fn warn(ctx: &Ctx<'_>, message: String) {
    let _ = ctx.events.send(Event::Warning { message });
}

async fn retry_due(ctx: &Ctx<'_>, state: &mut State) -> Result<(), SyncError> {
    let now = Instant::now();
    let due: Vec<String> = state
        .failed
        .iter()
        .filter(|(_, (at, _))| *at <= now)
        .map(|(p, _)| p.clone())
        .collect();
    for rel in due {
        written(ctx, state, &rel, true).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_parse() {
        assert_eq!(parse(b"1\tS"), Some((1, Change::Ready)));
        assert_eq!(
            parse(b"7\tW\ta/b"),
            Some((7, Change::Written("a/b".into())))
        );
        assert_eq!(
            parse(b"8\tM\ta\tb"),
            Some((8, Change::Moved("a".into(), "b".into())))
        );
        assert_eq!(parse(b"x\tW\ta"), None);
        let mut r = Records {
            buf: b"1\tS\x002\tD\tx\x003\tW".to_vec(),
        };
        assert_eq!(r.pop(), Some((1, Change::Ready)));
        assert_eq!(r.pop(), Some((2, Change::Deleted("x".into()))));
        assert_eq!(r.pop(), None);
    }
}
