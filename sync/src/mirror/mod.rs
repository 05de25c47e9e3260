//! `warren mirror <id>:/path ./dir`: the sandbox's tree kept in a local directory.
//! A first full pull, then the agent's watcher (`warren-agent watch`, over an exec
//! channel) streams changes, applied in revision order, each file through a temp
//! file and an atomic rename. The sandbox wins conflicts (`--backup` keeps a
//! locally modified file beside it); local files that cannot be written are
//! retried with backoff and reported, without stopping the others. A dropped
//! connection (a gateway restart, the network) is retried by itself; on reconnect a
//! full rescan catches up before the mirror is live again.
//!
//! Everything from the sandbox is hostile: names, link texts, sizes, the
//! watcher's stream. Every local write goes through [`LocalDir`] (no path
//! outside the directory, none through a link); links are made only when they
//! keep [`link_stays_beneath`]; a file is read no further than its listed size;
//! the watcher's records and the queue of changes are bounded (a flood becomes
//! one full rescan).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::chunks;
use crate::connect::{Connection, Endpoint};
use crate::download;
use crate::error::SyncError;
use crate::local::{LocalDir, LocalError, Type};
use crate::progress::{Event, Events, Op, Stage};
use crate::remote::{Sftp, is_missing, join};
use crate::shell::shell_quote;
use crate::tree::{Kind, has_part_component, link_stays_beneath};

mod watcher;

use watcher::{AbortOnDrop, Change, Inbox, MAX_PENDING, read_records};

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
    let local =
        LocalDir::open(&options.target).map_err(|e| SyncError::Local(options.target.clone(), e))?;
    let mut state = State::default();
    let mut backoff = Duration::from_millis(500);
    tokio::pin!(stop);
    loop {
        let run = session(endpoint, options, &local, &mut state, &events);
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
    local: &LocalDir,
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
    // changes are being applied (a full channel queue stalls the whole connection);
    // what it drains waits in a bounded inbox.
    let inbox = Arc::new(Inbox::default());
    let reader = tokio::spawn(read_records(watcher, inbox.clone()));
    let _reader = AbortOnDrop(reader);
    let mut queue: VecDeque<Change> = VecDeque::new();
    while !queue.contains(&Change::Ready) {
        queue.extend(inbox.take(None).await?.0);
        if queue.len() > MAX_PENDING {
            // A watcher that floods before it is ready: the pull covers it all.
            queue.retain(|c| *c == Change::Ready);
        }
    }
    queue.retain(|c| *c != Change::Ready);
    status(events, Stage::CatchingUp, state, 0);
    let ctx = Ctx {
        sftp: &sftp,
        root: &root,
        local,
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
        let (changes, rev) = inbox.take(Some(wait)).await?;
        state.last_rev = state.last_rev.max(rev);
        queue.extend(changes);
    }
}

struct Ctx<'a> {
    sftp: &'a Sftp,
    root: &'a str,
    local: &'a LocalDir,
    backup: bool,
    events: &'a Events,
}

/// Everything in the sandbox copied where it differs; local extras removed.
async fn full_pull(ctx: &Ctx<'_>, state: &mut State) -> Result<(), SyncError> {
    let listing = ctx.sftp.list(ctx.root).await?;
    let here = ctx.local.tree().unwrap_or_default();
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
    let mut extras: Vec<&String> = here
        .keys()
        .filter(|k| !listing.tree.contains_key(*k))
        .collect();
    extras.sort_by(|a, b| b.cmp(a));
    for rel in extras {
        apply_local(ctx, state, rel, |local| {
            local.remove(rel)?;
            Ok(Op::Delete)
        });
    }
    Ok(())
}

async fn apply(ctx: &Ctx<'_>, state: &mut State, change: Change) -> Result<(), SyncError> {
    match change {
        Change::Ready => Ok(()),
        Change::Overflow => {
            warn(
                ctx,
                "the sandbox changed faster than the mirror keeps up with; rescanning".into(),
            );
            full_pull(ctx, state).await
        }
        Change::Written(rel) => written(ctx, state, &rel, true).await,
        Change::Deleted(rel) => {
            state.written.remove(&rel);
            apply_local(ctx, state, &rel, |local| {
                local.remove(&rel)?;
                Ok(Op::Delete)
            });
            Ok(())
        }
        Change::Moved(from, to) => {
            let moved = may_move_here(ctx.local, &from, &to)
                && ctx.local.rename(&from, &to).unwrap_or(false);
            if !moved {
                // Not moved here (a move to a shallower place, a link that would
                // point out from its new depth, or a failed rename): what was
                // there goes, and `to` is pulled, each link judged as it comes.
                // Should that pull fail (a listing too big), `to` is left
                // incomplete, never holding a link that points out.
                let _ = ctx.local.remove(&from);
            }
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

/// Whether the local `from` may simply be renamed to `to`: only when that
/// cannot make any link under it shallower (a link's `..`s are counted from its
/// depth), and, as a second check, when every link found under it keeps the
/// link rule at `to` (any part that cannot be read: no). Otherwise the caller
/// removes it and pulls `to` afresh, which never relies on reading it all.
fn may_move_here(local: &LocalDir, from: &str, to: &str) -> bool {
    let depth = |rel: &str| rel.split('/').count();
    if depth(to) < depth(from) {
        return false;
    }
    match local.links_under(from) {
        Ok(links) => links
            .iter()
            .all(|(sub, target)| link_stays_beneath(&format!("{to}{sub}"), target)),
        Err(_) => false,
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
    if has_part_component(rel) {
        return Ok(());
    }
    if !crate::local::is_plain(rel) {
        // Checked before the sandbox is asked about it (`../../etc` would list
        // the sandbox's /etc only to refuse each name).
        warn(ctx, format!("{rel}: not a plain relative path; ignored"));
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
            apply_local(ctx, state, rel, |local| {
                local.remove(rel)?;
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
    let here = match ctx.local.stat(rel) {
        Ok(here) => here,
        Err(e) => {
            fail(ctx, state, rel, e);
            return Ok(());
        }
    };
    match kind {
        Kind::Dir { mode, .. } => {
            apply_local(ctx, state, rel, |local| {
                local.dir(rel, mode).map(|()| Op::Mkdir)
            });
        }
        Kind::Symlink { target } => {
            if !link_stays_beneath(rel, &target) {
                // Not made; nor is anything left at its name.
                if here.is_some() {
                    let _ = ctx.local.remove(rel);
                }
                warn(
                    ctx,
                    format!(
                        "{rel}: a link that may resolve out of the tree (-> {target}), not made"
                    ),
                );
                return Ok(());
            }
            if ctx.local.read_link(rel).as_deref() != Some(target.as_str()) {
                apply_local(ctx, state, rel, |local| {
                    local.link(rel, &target).map(|()| Op::Link)
                });
            }
        }
        Kind::File { size, mtime, mode } => {
            let is_file = here.filter(|m| m.kind == Type::File);
            if !changed && is_file.is_some_and(|m| m.size == size && m.mtime == mtime) {
                state.written.insert(rel.to_owned(), (size, mtime));
                return Ok(());
            }
            let modified_here =
                is_file.is_some_and(|m| state.written.get(rel) != Some(&(m.size, m.mtime)));
            let part = match ctx.local.part(rel) {
                Ok(part) => part,
                Err(e) => {
                    fail(ctx, state, rel, e);
                    return Ok(());
                }
            };
            match download::fetch(ctx.sftp, &join(ctx.root, rel), part.file(), size).await {
                Ok(_) => {}
                // Gone again before it could be read: its removal is the next record.
                Err(SyncError::Remote { source, .. }) if is_missing(&source) => return Ok(()),
                Err(e @ SyncError::NotRegular(_)) => {
                    warn(ctx, e.to_string());
                    return Ok(());
                }
                Err(SyncError::Local(_, e)) => {
                    fail(ctx, state, rel, LocalError::Io(e));
                    return Ok(());
                }
                Err(e) => return Err(e),
            }
            if ctx.backup && modified_here {
                match ctx.local.backup(rel) {
                    Ok(to) => {
                        let _ = ctx.events.send(Event::Change {
                            op: Op::Backup,
                            path: to,
                        });
                    }
                    Err(e) => {
                        fail(ctx, state, rel, e);
                        return Ok(());
                    }
                }
            }
            match part.commit(mode, mtime) {
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
    change: impl FnOnce(&LocalDir) -> Result<Op, LocalError>,
) {
    match change(ctx.local) {
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
    fn a_move_never_carries_a_link_out_of_the_tree() {
        let base = std::env::temp_dir().join(format!("warren-sync-move-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        // A link past the depth the mirror walks, keeping the rule where it is
        // (302 `..`s at depth 302) but not once `a/b` becomes `c`.
        let deep = base.join("a/b").join(vec!["d"; 300].join("/"));
        std::fs::create_dir_all(&deep).unwrap_or_else(|e| panic!("{e}"));
        let target = format!("{}x", "../".repeat(302));
        std::os::unix::fs::symlink(&target, deep.join("l")).unwrap_or_else(|e| panic!("{e}"));
        std::fs::create_dir_all(base.join("e/f")).unwrap_or_else(|e| panic!("{e}"));
        std::os::unix::fs::symlink("../x", base.join("e/f/l")).unwrap_or_else(|e| panic!("{e}"));
        let local = LocalDir::open(&base).unwrap_or_else(|e| panic!("{e}"));

        assert!(local.links_under("a/b").is_err(), "a part it cannot walk");
        assert!(!may_move_here(&local, "a/b", "c"));
        assert!(!may_move_here(&local, "a/b", "c/d"), "not readable in full");
        // Shallower: refused even with no link in sight; deeper or level: moved.
        assert!(!may_move_here(&local, "e/f", "g"));
        assert!(may_move_here(&local, "e/f", "g/h"));
        assert!(may_move_here(&local, "e/f", "g/h/i"));
        let _ = std::fs::remove_dir_all(&base);
    }
}
