//! `warren sync ./dir <id>:/path`: makes a sandbox directory hold a local tree.
//! Stages: discovering (the local walk) → indexing (the remote listing, the plan,
//! chunk hashes where sizes say a file may be equal or resumable) → uploading →
//! verifying (listing again) → done. Interrupted anywhere, running it again
//! resumes: equal files are skipped and a large file's temp part keeps the chunks
//! that made it.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use futures::StreamExt;
use futures::stream::FuturesUnordered;

use crate::batch::{self, SmallFile};
use crate::chunks::{self, Ask, Chunks};
use crate::connect::{Connection, Endpoint};
use crate::error::SyncError;
use crate::plan::{self, Send};
use crate::progress::{self, Event, Events, Op, Stage, Tracker};
use crate::remote::{Listing, Sftp, join};
use crate::tree::{self, Kind, Tree, part_name};
use crate::upload::{self, FileJob, WINDOW_REQUESTS};

#[derive(Clone, Debug)]
pub struct SeedOptions {
    pub source: PathBuf,
    /// The sandbox directory (absolute, or relative to the user's home).
    pub target: String,
    pub excludes: Vec<String>,
    pub delete: bool,
    pub dry_run: bool,
    /// The agent binary in the sandbox, for chunk hashes and small files; `None`:
    /// the session's own (`WARREN_AGENT`).
    pub agent_path: Option<String>,
}

impl SeedOptions {
    pub fn new(source: impl Into<PathBuf>, target: impl Into<String>) -> SeedOptions {
        SeedOptions {
            source: source.into(),
            target: target.into(),
            excludes: Vec::new(),
            delete: false,
            dry_run: false,
            agent_path: None,
        }
    }
}

/// What a seed did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SeedSummary {
    pub files_total: u64,
    pub bytes_total: u64,
    pub files_sent: u64,
    /// Bytes written over SFTP (chunks a remote copy already had are not counted).
    pub bytes_sent: u64,
    pub files_skipped: u64,
    pub deleted: u64,
    pub refused_links: Vec<String>,
}

/// Files sent (or directories made or set) at once: each a few requests, all
/// pipelined on one session.
const FILE_CONCURRENCY: usize = 64;

pub async fn seed(
    endpoint: &Endpoint,
    options: &SeedOptions,
    events: Events,
) -> Result<SeedSummary, SyncError> {
    progress::stage(&events, Stage::Discovering, 0, 0, 0);
    let scan = {
        let (root, excludes, events) = (
            options.source.clone(),
            options.excludes.clone(),
            events.clone(),
        );
        async move {
            let mut last = std::time::Instant::now();
            tokio::task::spawn_blocking(move || {
                tree::scan(&root, &excludes, |files, bytes| {
                    if last.elapsed() >= progress::TICK {
                        last = std::time::Instant::now();
                        progress::stage(&events, Stage::Discovering, 0, files, bytes);
                    }
                })
            })
            .await
            .map_err(|_| SyncError::Cancelled)?
        }
    };
    // The connection and the target's listing change nothing, so they are made
    // while the local tree is read; a target to create waits for the scan, so that
    // a bad source leaves the sandbox as it was.
    let remote = async {
        let conn = Connection::open(endpoint).await?;
        let sftp = conn.sftp().await?;
        let root = resolve_root(&sftp, &options.target, true).await?;
        let listing = match &root {
            Some(root) => sftp.list(root).await?,
            None => Listing::default(),
        };
        Ok::<_, SyncError>((conn, sftp, root, listing))
    };
    // A bad source is told at once, not after the connection.
    let (scan, (conn, sftp, root, listing)) = tokio::try_join!(scan, remote)?;
    let sftp = &sftp;
    for link in &scan.refused_links {
        let _ = events.send(Event::Warning {
            message: format!("{link}: a link out of the tree, not sent"),
        });
    }
    let (files_total, bytes_total) = totals(&scan.tree);
    let mut summary = SeedSummary {
        files_total,
        bytes_total,
        refused_links: scan.refused_links.clone(),
        ..SeedSummary::default()
    };

    progress::stage(&events, Stage::Indexing, 0, files_total, bytes_total);
    // A target that is not there yet is made now (or, in a dry run, stays absent).
    let root = match root {
        None => resolve_root(sftp, &options.target, options.dry_run).await?,
        found => found,
    };
    let mut plan = plan::plan(&scan.tree, &listing, options.delete);
    summary.files_skipped = plan.skipped;

    if options.dry_run {
        report_dry_run(&events, &plan);
        summary.files_sent = plan.files.len() as u64;
        summary.deleted = plan.remove.len() as u64;
        progress::stage(&events, Stage::Done, files_total, files_total, bytes_total);
        conn.close().await;
        return Ok(summary);
    }
    let Some(root) = root else {
        return Err(SyncError::NotADirectory(options.target.clone()));
    };

    // Hashes decide what "maybe equal" and resumable files still need.
    let Hashed {
        have: chunked,
        mine: local_hashes,
    } = hash_candidates(&conn, options, &root, &scan.tree, &mut plan).await;
    summary.files_skipped = plan.skipped;

    let sending: u64 = plan
        .files
        .iter()
        .filter_map(|(p, _)| match scan.tree.get(p) {
            Some(Kind::File { size, .. }) => Some(*size),
            _ => None,
        })
        .sum();
    let tracker = Arc::new(Tracker::new(
        events.clone(),
        Stage::Uploading,
        plan.files.len() as u64,
        sending,
    ));
    let ticker = progress::tick(tracker.clone());

    for (path, kind) in &plan.remove {
        let full = join(&root, path);
        match kind {
            Kind::Dir { .. } => sftp.remove_dir(&full).await?,
            _ => sftp.remove_file(&full).await?,
        }
        summary.deleted += 1;
    }
    for part in &plan.stale_parts {
        sftp.remove_file(&join(&root, part)).await?;
    }
    make_dirs(sftp, &root, &plan.mkdirs).await?;

    // Small files with nothing to resume go in streams; the rest, and any file a
    // stream did not land, over SFTP.
    let small: Vec<SmallFile> = plan
        .files
        .iter()
        .filter(|(path, _)| !chunked.contains_key(path))
        .filter_map(|(path, _)| match scan.tree.get(path) {
            Some(Kind::File { size, mode, mtime }) if *size < plan::CHUNKED_FROM => {
                Some(SmallFile {
                    path: path.clone(),
                    local: tree::local_path(&options.source, path),
                    remote: join(&root, path),
                    part: join(&root, &part_name(path)),
                    mode: *mode,
                    mtime: *mtime,
                    size: *size,
                })
            }
            _ => None,
        })
        .collect();
    let landed = batch::send(&conn, options.agent_path.as_deref(), &small, &tracker).await;
    let mut done = std::collections::HashSet::new();
    for (file, ok) in small.iter().zip(landed) {
        if ok {
            summary.files_sent += 1;
            summary.bytes_sent += file.size;
            done.insert(file.path.as_str());
        }
    }
    let over_sftp = plan
        .files
        .iter()
        .filter(|(path, _)| !done.contains(path.as_str()));

    let window = Arc::new(tokio::sync::Semaphore::new(WINDOW_REQUESTS));
    let mut jobs = futures::stream::iter(over_sftp.map(|(path, _)| {
        let (window, tracker) = (&window, &tracker);
        let have = chunked.get(path).cloned();
        let mine = local_hashes.get(path).cloned();
        let (root, source) = (&root, &options.source);
        let kind = scan.tree.get(path).cloned();
        async move {
            let Some(Kind::File { mode, mtime, .. }) = kind else {
                return Ok(upload::Sent::default());
            };
            tracker.set_current(path);
            let local = tree::local_path(source, path);
            upload::send_file(
                sftp,
                window,
                tracker,
                FileJob {
                    local: &local,
                    remote: join(root, path),
                    part: join(root, &part_name(path)),
                    mode,
                    mtime,
                    have,
                    mine,
                },
            )
            .await
        }
    }))
    .buffer_unordered(FILE_CONCURRENCY);
    while let Some(sent) = jobs.next().await {
        summary.bytes_sent += sent?.bytes;
        summary.files_sent += 1;
    }
    drop(jobs);
    let mut links = FuturesUnordered::new();
    for (path, target) in &plan.links {
        let full = join(&root, path);
        links.push(async move { sftp.symlink(&full, target).await });
    }
    while let Some(done) = links.next().await {
        done?;
    }
    drop(links);
    let mut touches = FuturesUnordered::new();
    for path in &plan.touch {
        if let Some(Kind::File { mode, mtime, .. }) = scan.tree.get(path) {
            let full = join(&root, path);
            touches.push(async move { sftp.set_mode_mtime(&full, *mode, *mtime).await });
        }
    }
    while let Some(done) = touches.next().await {
        done?;
    }
    drop(touches);
    tracker.report();
    drop(ticker);

    progress::stage(
        &events,
        Stage::Verifying,
        files_total,
        files_total,
        bytes_total,
    );
    // A run that wrote nothing is checked against the listing it began with.
    let listing = if plan.changes_nothing() {
        listing
    } else {
        sftp.list(&root).await?
    };
    verify(sftp, &root, &scan.tree, &listing).await?;
    progress::stage(&events, Stage::Done, files_total, files_total, bytes_total);
    conn.close().await;
    Ok(summary)
}

fn totals(tree: &Tree) -> (u64, u64) {
    tree.values().fold((0, 0), |(f, b), k| match k {
        Kind::File { size, .. } => (f + 1, b + size),
        _ => (f, b),
    })
}

/// The target's absolute path, made when missing (`None` in a dry run where it
/// is missing: everything would be new).
async fn resolve_root(
    sftp: &Sftp,
    target: &str,
    dry_run: bool,
) -> Result<Option<String>, SyncError> {
    let target = if target.is_empty() { "." } else { target };
    match sftp.lstat(target).await? {
        Some(Kind::Dir { .. }) => {}
        Some(_) => return Err(SyncError::NotADirectory(target.to_owned())),
        None if dry_run => return Ok(None),
        None => sftp.mkdir_all(target).await?,
    }
    let name = sftp
        .raw()
        .realpath(target)
        .await
        .map_err(SyncError::remote("realpath", target))?;
    Ok(name.files.into_iter().next().map(|f| f.filename))
}

fn report_dry_run(events: &Events, plan: &plan::Plan) {
    let send = |op, path: &str| {
        let _ = events.send(Event::Change {
            op,
            path: path.to_owned(),
        });
    };
    for (path, _) in &plan.remove {
        send(Op::Delete, path);
    }
    for (path, _) in &plan.mkdirs {
        send(Op::Mkdir, path);
    }
    for (path, _) in &plan.files {
        send(Op::Upload, path);
    }
    for (path, _) in &plan.links {
        send(Op::Link, path);
    }
}

/// What the chunk hashes said about the files still to send.
#[derive(Default)]
struct Hashed {
    /// What each kept (resumed or seeded) part in the sandbox holds.
    have: HashMap<String, Chunks>,
    /// The local file's own hashes where they were already computed (a patch),
    /// so that sending it reads only the chunks that differ.
    mine: HashMap<String, Chunks>,
}

/// Asks the sandbox for chunk hashes of files whose sizes say they may be equal
/// (then dropped from the plan when they are) or resumable (their part kept, or
/// seeded from the old copy). Without the helper, everything is sent whole.
async fn hash_candidates(
    conn: &Connection,
    options: &SeedOptions,
    root: &str,
    local: &Tree,
    plan: &mut plan::Plan,
) -> Hashed {
    let maybe: Vec<String> = plan
        .files
        .iter()
        .filter(|(_, s)| *s == Send::MaybeEqual)
        .map(|(p, _)| p.clone())
        .collect();
    let asks: Vec<Ask> = maybe
        .iter()
        .map(|p| Ask {
            path: join(root, p),
            seed: None,
        })
        .collect();
    // The local copies are hashed while the sandbox hashes its own.
    let local_paths: Vec<PathBuf> = maybe
        .iter()
        .map(|p| tree::local_path(&options.source, p))
        .collect();
    let local_hashes = tokio::task::spawn_blocking(move || {
        local_paths
            .iter()
            .map(|p| chunks::local(p).ok())
            .collect::<Vec<_>>()
    });
    let (answers, local_hashes) = tokio::join!(
        chunks::remote(conn, options.agent_path.as_deref(), &asks),
        local_hashes
    );
    let Ok(answers) = answers else {
        tracing::debug!("no chunk helper in the sandbox: sending changed files whole");
        return Hashed::default();
    };
    let local_hashes = local_hashes.unwrap_or_default();
    let mut equal = std::collections::HashSet::new();
    let mut patch = HashMap::new();
    for ((path, answer), mine) in maybe.iter().zip(answers).zip(local_hashes) {
        let (Some(remote), Some(mine)) = (answer, mine) else {
            continue;
        };
        if mine == remote {
            equal.insert(path.clone());
        } else if mine.size >= plan::CHUNKED_FROM {
            patch.insert(path.clone(), mine);
        }
    }
    plan.files.retain(|(p, _)| !equal.contains(p));
    plan.skipped += equal.len() as u64;
    plan.touch.extend(equal);

    // Parts to resume, and parts to seed from the old copy for a patch.
    let mut asks = Vec::new();
    let mut names = Vec::new();
    for (path, send) in &plan.files {
        let seed = match send {
            Send::Chunked { resume_part: true } => None,
            Send::Chunked { resume_part: false } => Some(join(root, path)),
            _ if patch.contains_key(path) => Some(join(root, path)),
            _ => continue,
        };
        asks.push(Ask {
            path: join(root, &part_name(path)),
            seed,
        });
        names.push(path.clone());
    }
    let mut hashed = Hashed::default();
    if let Ok(answers) = chunks::remote(conn, options.agent_path.as_deref(), &asks).await {
        for (path, answer) in names.into_iter().zip(answers) {
            if let (Some(chunks), Some(Kind::File { .. })) = (answer, local.get(&path)) {
                if let Some(mine) = patch.remove(&path) {
                    hashed.mine.insert(path.clone(), mine);
                }
                hashed.have.insert(path, chunks);
            }
        }
    }
    hashed
}

/// `items` grouped by the depth of their path, shallowest first.
fn levels<T>(items: impl IntoIterator<Item = T>, path: impl Fn(&T) -> &str) -> Vec<Vec<T>> {
    let mut by_depth: std::collections::BTreeMap<usize, Vec<T>> = Default::default();
    for item in items {
        by_depth
            .entry(path(&item).matches('/').count())
            .or_default()
            .push(item);
    }
    by_depth.into_values().collect()
}

async fn make_dirs(sftp: &Sftp, root: &str, dirs: &[(String, u32)]) -> Result<(), SyncError> {
    // Level by level: every directory of one depth at once, parents made before.
    for level in levels(dirs, |(path, _)| path.as_str()) {
        let mut made = futures::stream::iter(level.iter().map(|(path, _)| {
            let full = join(root, path);
            // 0700 while it fills; the verify stage gives it its own mode.
            async move { sftp.mkdir(&full, 0o700).await }
        }))
        .buffer_unordered(FILE_CONCURRENCY);
        while let Some(done) = made.next().await {
            done?;
        }
    }
    Ok(())
}

/// Checks the target's listing: every local entry must be there with its size,
/// mtime, mode or link text. Directory modes and mtimes are set here, last, deepest
/// level first, since writing into a directory changes its mtime.
async fn verify(sftp: &Sftp, root: &str, local: &Tree, listing: &Listing) -> Result<(), SyncError> {
    let dirs: Vec<_> = local
        .iter()
        .filter_map(|(path, kind)| match (kind, listing.tree.get(path)) {
            (Kind::Dir { mode, mtime }, Some(Kind::Dir { mode: m, mtime: t }))
                if (mode, mtime) != (m, t) =>
            {
                Some((path, *mode, *mtime))
            }
            _ => None,
        })
        .collect();
    // A level at a time, deepest first (a parent made unsearchable must not hide
    // its children yet); the directories of one level all at once.
    for level in levels(dirs, |(path, _, _)| path.as_str()).into_iter().rev() {
        let mut set =
            futures::stream::iter(level.into_iter().map(|(path, mode, mtime)| async move {
                sftp.set_mode_mtime(&join(root, path), mode, mtime).await
            }))
            .buffer_unordered(FILE_CONCURRENCY);
        while let Some(done) = set.next().await {
            done?;
        }
    }
    let mut wrong = Vec::new();
    for (path, kind) in local {
        let there = listing.tree.get(path);
        let ok = match (kind, there) {
            (Kind::Dir { .. }, Some(Kind::Dir { .. })) => true,
            (a @ Kind::File { .. }, Some(b @ Kind::File { .. })) => a == b,
            (Kind::Symlink { target }, Some(Kind::Symlink { target: t })) => target == t,
            _ => false,
        };
        if !ok {
            wrong.push(format!("{path}: want {kind:?}, found {there:?}"));
        }
    }
    if wrong.is_empty() {
        Ok(())
    } else {
        let n = wrong.len();
        wrong.truncate(5);
        Err(SyncError::Verify(format!(
            "{n} entries differ: {}",
            wrong.join("; ")
        )))
    }
}
