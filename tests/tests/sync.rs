//! `warren sync` (warren-sync's `seed`) end to end on the Docker backend, the
//! user's path: a gateway, a Docker runner, a busybox sandbox, and the library
//! logging in through the front door with the owner's API key, as the CLI does.
//! The result is checked file by file from inside the sandbox (a `tar` of the
//! target, read through `ssh`): contents, modes, mtimes, links. And `warren mirror`
//! against a hostile sandbox (the last section).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use common::docker::{DockerStack, docker_ok};
use warren_keys::SandboxId;
use warren_runner::protocol::SandboxSpec;
use warren_sync::{Credential, Endpoint, Event, MirrorOptions, SeedOptions, SeedSummary, Stage};
use warren_tests::{Client, Cmd, util};

const BUSYBOX: &str = "warren-busybox:latest";

struct Fixture {
    stack: DockerStack,
    id: SandboxId,
    client: Client,
    endpoint: Endpoint,
    api_key: String,
}

fn fixture() -> Result<Option<Fixture>> {
    let Some(stack) = DockerStack::start(&[])? else {
        return Ok(None);
    };
    let (id, client) = stack.sandbox(SandboxSpec {
        image: Some(BUSYBOX.into()),
        ..SandboxSpec::default()
    })?;
    let key = stack
        .stack
        .rt
        .block_on(stack.stack.store.create_api_key(&stack.owner.id, "sync"))?;
    let endpoint = endpoint(&stack, &id, key.secret.expose());
    Ok(Some(Fixture {
        stack,
        id,
        client,
        endpoint,
        api_key: key.secret.expose().to_owned(),
    }))
}

fn endpoint(stack: &DockerStack, id: &SandboxId, api_key: &str) -> Endpoint {
    Endpoint {
        host: "127.0.0.1".into(),
        port: stack.stack.ssh_port,
        sandbox: id.as_str().to_owned(),
        credential: Credential::Password(warren_sync::Secret::new(api_key)),
        host_keys: vec![stack.stack.host_key.clone()],
    }
}

/// A host key that is not the gateway's.
fn other_key() -> russh::keys::PublicKey {
    let dir = tempfile::TempDir::new().unwrap();
    warren_keys::load_or_generate_host_key(&dir.path().join("other"))
        .unwrap()
        .public_key()
        .clone()
}

/// Runs a seed and collects its events.
fn seed(f: &Fixture, options: &SeedOptions) -> Result<(SeedSummary, Vec<Event>)> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let summary = f
        .stack
        .stack
        .rt
        .block_on(warren_sync::seed(&f.endpoint, options, tx))?;
    let mut events = Vec::new();
    while let Ok(e) = rx.try_recv() {
        events.push(e);
    }
    Ok((summary, events))
}

/// A deterministic pseudo-random byte stream (xorshift), so files differ.
fn bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn set_mtime(path: &Path, secs: i64) {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    let times = [
        libc::timespec {
            tv_sec: secs,
            tv_nsec: 0,
        },
        libc::timespec {
            tv_sec: secs,
            tv_nsec: 0,
        },
    ];
    // SAFETY: a valid C string and two timespecs; AT_SYMLINK_NOFOLLOW touches links themselves.
    let rc = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    assert_eq!(rc, 0, "utimensat {}", path.display());
}

/// A project: `dirs × per_dir` small files of varied sizes and modes, one large
/// file, links in and out of the tree, and a `.gitignore`d build directory.
fn make_tree(root: &Path, dirs: usize, per_dir: usize, large: usize) {
    for d in 0..dirs {
        let dir = root.join(format!("src/mod{d:02}"));
        std::fs::create_dir_all(&dir).unwrap();
        for i in 0..per_dir {
            let p = dir.join(format!("file{i:03}.rs"));
            std::fs::write(&p, bytes((d * 1000 + i) as u64, (i * 37) % 3000)).unwrap();
            if i % 10 == 0 {
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
            }
            set_mtime(&p, 1_600_000_000 + (d * 1000 + i) as i64);
        }
    }
    std::fs::write(root.join("big.bin"), bytes(7, large)).unwrap();
    std::fs::write(root.join(".gitignore"), "target/\n*.log\n").unwrap();
    std::fs::create_dir_all(root.join("target/debug")).unwrap();
    std::fs::write(root.join("target/debug/huge"), b"not sent").unwrap();
    std::fs::write(root.join("noise.log"), b"not sent").unwrap();
    std::fs::write(root.join("secret.env"), b"excluded").unwrap();
    std::os::unix::fs::symlink("src/mod00/file001.rs", root.join("link-in")).unwrap();
    std::os::unix::fs::symlink("../../etc/passwd", root.join("src/link-out")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", root.join("link-abs")).unwrap();
    std::fs::create_dir_all(root.join("empty/dir")).unwrap();
    std::fs::set_permissions(root.join("empty"), std::fs::Permissions::from_mode(0o750)).unwrap();
}

#[derive(Debug, PartialEq, Eq)]
enum Node {
    File { mode: u32, mtime: i64, sha: String },
    Dir { mode: u32 },
    Link(String),
}

/// Everything under `root` as sync should keep it.
fn read_tree(root: &Path) -> BTreeMap<String, Node> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let rel = path
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let node = if meta.file_type().is_symlink() {
                Node::Link(
                    std::fs::read_link(&path)
                        .unwrap()
                        .to_string_lossy()
                        .into_owned(),
                )
            } else if meta.is_dir() {
                stack.push(path.clone());
                Node::Dir {
                    mode: meta.mode() & 0o7777,
                }
            } else {
                Node::File {
                    mode: meta.mode() & 0o7777,
                    mtime: meta.mtime(),
                    sha: warren_tests::util::sha256_file(&path).unwrap(),
                }
            };
            out.insert(rel, node);
        }
    }
    out
}

/// The sandbox's `dir`, fetched with `tar` through ssh and unpacked locally.
fn fetch(c: &Client, dir: &str) -> Result<tempfile::TempDir> {
    let out = tempfile::TempDir::new()?;
    let t = c.target();
    let script = format!(
        "{} {}@{} 'tar -C {dir} -cf - .' | tar -C {} -xpf -",
        c.ssh_command_line(),
        t.user,
        t.host,
        out.path().display()
    );
    Cmd::shell(&script)
        .timeout(Duration::from_secs(300))
        .run()?
        .success()?;
    Ok(out)
}

fn options(source: &Path, target: &str) -> SeedOptions {
    let mut o = SeedOptions::new(source, target);
    o.excludes = vec!["*.env".into()];
    o
}

#[test]
fn a_seed_sends_a_real_tree_and_a_second_run_sends_nothing() -> Result<()> {
    let Some(f) = fixture()? else { return Ok(()) };
    let src = tempfile::TempDir::new()?;
    // A few thousand files and a large one.
    make_tree(src.path(), 30, 100, 48 << 20);

    // Whoever answers must be the gateway: no pinned key, or another key, sends
    // nothing (a stand-in server would be handed the login and the tree).
    for (pinned, what) in [
        (vec![], "no pinned key"),
        (vec![other_key()], "another host key"),
    ] {
        let endpoint = Endpoint {
            host_keys: pinned,
            ..f.endpoint.clone()
        };
        let options = options(src.path(), "/workspace/proj");
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        let refused = f
            .stack
            .stack
            .rt
            .block_on(warren_sync::seed(&endpoint, &options, tx));
        ensure!(refused.is_err(), "{what}: the seed went ahead");
        eprintln!("{what}: {}", refused.err().unwrap());
    }

    let (first, events) = seed(&f, &options(src.path(), "/workspace/proj"))?;
    ensure!(
        first.files_sent == 3002 && first.files_skipped == 0,
        "{first:?}"
    );
    ensure!(first.refused_links.len() == 2, "{first:?}");
    let stages: Vec<Stage> = events
        .iter()
        .filter_map(|e| match e {
            Event::Progress(p) => Some(p.stage),
            _ => None,
        })
        .fold(Vec::new(), |mut v, s| {
            if v.last() != Some(&s) {
                v.push(s);
            }
            v
        });
    ensure!(
        stages
            == [
                Stage::Discovering,
                Stage::Indexing,
                Stage::Uploading,
                Stage::Verifying,
                Stage::Done
            ],
        "stages: {stages:?}"
    );

    let got = read_tree(fetch(&f.client, "/workspace/proj")?.path());
    let mut want = read_tree(src.path());
    for gone in [
        "target",
        "target/debug",
        "target/debug/huge",
        "noise.log",
        "secret.env",
        "src/link-out",
        "link-abs",
    ] {
        want.remove(gone).unwrap();
    }
    let differ: Vec<_> = want
        .iter()
        .filter(|(k, v)| got.get(*k) != Some(v))
        .map(|(k, v)| format!("{k}: want {v:?} got {:?}", got.get(k)))
        .take(5)
        .collect();
    ensure!(differ.is_empty(), "differences: {differ:#?}");
    ensure!(
        got.len() == want.len(),
        "extra files: {} vs {}",
        got.len(),
        want.len()
    );
    // Nothing half-written is left under a temp name.
    ensure!(!got.keys().any(|k| k.ends_with(".warren-part")));

    // The small files went through the agent's unpack streams; a sandbox without
    // the helper gets the same tree over SFTP alone.
    let mut plain = options(src.path(), "/workspace/plain");
    plain.agent_path = Some("/no/such/warren-agent".into());
    let (over_sftp, _) = seed(&f, &plain)?;
    ensure!(over_sftp.files_sent == 3002, "{over_sftp:?}");
    ensure!(
        read_tree(fetch(&f.client, "/workspace/plain")?.path()) == got,
        "the tree sent over SFTP alone differs"
    );

    // Again: everything is equal, nothing is sent.
    let (again, _) = seed(&f, &options(src.path(), "/workspace/proj"))?;
    ensure!(again.files_sent == 0 && again.bytes_sent == 0, "{again:?}");

    // Touched but unchanged (mtime only): hashed, not sent; a changed chunk in the
    // large file: only that chunk goes.
    set_mtime(&src.path().join("src/mod01/file005.rs"), 1_700_000_000);
    {
        use std::os::unix::fs::FileExt;
        let big = std::fs::OpenOptions::new()
            .write(true)
            .open(src.path().join("big.bin"))?;
        big.write_all_at(b"changed in the middle", 20 << 20)?;
    }
    let (patched, _) = seed(&f, &options(src.path(), "/workspace/proj"))?;
    ensure!(
        patched.files_sent == 1 && patched.bytes_sent <= 1 << 20,
        "only one chunk of big.bin should go: {patched:?}"
    );
    let got = read_tree(fetch(&f.client, "/workspace/proj")?.path());
    ensure!(got.get("big.bin") == read_tree(src.path()).get("big.bin"));
    ensure!(got.get("src/mod01/file005.rs") == read_tree(src.path()).get("src/mod01/file005.rs"));

    // --delete makes the target exactly the source; -n only lists.
    std::fs::remove_dir_all(src.path().join("src/mod02"))?;
    std::fs::remove_file(src.path().join("link-in"))?;
    let mut dry = options(src.path(), "/workspace/proj");
    dry.delete = true;
    dry.dry_run = true;
    let (listed, events) = seed(&f, &dry)?;
    let deletes = events
        .iter()
        .filter(|e| {
            matches!(
                e,
                Event::Change {
                    op: warren_sync::Op::Delete,
                    ..
                }
            )
        })
        .count();
    ensure!(
        deletes == 102 && listed.deleted == 102,
        "{listed:?} {deletes}"
    );
    ensure!(
        fetch(&f.client, "/workspace/proj")?
            .path()
            .join("src/mod02")
            .exists(),
        "a dry run changed the target"
    );
    let mut delete = options(src.path(), "/workspace/proj");
    delete.delete = true;
    let (deleted, _) = seed(&f, &delete)?;
    ensure!(deleted.deleted == 102, "{deleted:?}");
    let got = read_tree(fetch(&f.client, "/workspace/proj")?.path());
    ensure!(!got.contains_key("src/mod02") && !got.contains_key("link-in"));

    // A source that is not there is an error, and the target it named is not made
    // (the connection is opened while the source is read).
    let missing = src.path().join("not-here");
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    let failed = f.stack.stack.rt.block_on(warren_sync::seed(
        &f.endpoint,
        &options(&missing, "/workspace/never"),
        tx,
    ));
    let message = failed.err().map(|e| e.to_string()).unwrap_or_default();
    ensure!(
        message.contains("not-here"),
        "a missing source: {message:?}"
    );
    let made = f.client.exec("test -e /workspace/never").run()?;
    ensure!(
        made.code() == Some(1),
        "a failed seed made its target: {made}"
    );
    Ok(())
}

#[test]
fn a_seed_cut_midway_resumes_without_sending_much_again() -> Result<()> {
    let Some(f) = fixture()? else { return Ok(()) };
    let src = tempfile::TempDir::new()?;
    make_tree(src.path(), 4, 50, 64 << 20);
    let total: u64 = 64 << 20;

    // Cut the connection when about half is sent, as a kill or a network drop would.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let options = options(src.path(), "/workspace/r");
    let cut = f.stack.stack.rt.block_on(async {
        let run = warren_sync::seed(&f.endpoint, &options, tx);
        tokio::pin!(run);
        loop {
            tokio::select! {
                done = &mut run => break done.map(|_| false),
                Some(event) = rx.recv() => {
                    if let Event::Progress(p) = event
                        && p.stage == Stage::Uploading
                        && p.bytes_done > total / 2
                    {
                        break Ok(true);
                    }
                }
            }
        }
    })?;
    ensure!(cut, "the seed finished before it could be cut");
    // The final name never holds a partial file.
    let listing = f
        .client
        .exec("ls -la /workspace/r; ls -l /workspace/r/big.bin 2>&1")
        .run()?;
    ensure!(
        listing.stdout_str().contains("No such file"),
        "big.bin visible before it is complete:\n{listing}"
    );

    let (resumed, _) = seed(&f, &options)?;
    let again = resumed.bytes_sent as f64 / resumed.bytes_total as f64;
    eprintln!(
        "resume sent {} of {} bytes again ({:.1}%)",
        resumed.bytes_sent,
        resumed.bytes_total,
        again * 100.0
    );
    ensure!(
        again < 0.6,
        "resume sent {:.0}% again: {resumed:?}",
        again * 100.0
    );
    let got = read_tree(fetch(&f.client, "/workspace/r")?.path());
    ensure!(got.get("big.bin") == read_tree(src.path()).get("big.bin"));
    Ok(())
}

/// A TCP relay in front of the gateway's SSH port that can go down (every
/// connection cut, the port refusing) and come back on the same port: what a
/// mirror sees of a gateway restart.
struct Outage {
    port: u16,
    upstream: u16,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Outage {
    fn start(rt: &tokio::runtime::Runtime, upstream: u16) -> Result<Outage> {
        let port = warren_tests::util::free_port()?;
        let mut o = Outage {
            port,
            upstream,
            task: None,
        };
        o.up(rt)?;
        Ok(o)
    }

    fn up(&mut self, rt: &tokio::runtime::Runtime) -> Result<()> {
        let listener = rt.block_on(tokio::net::TcpListener::bind(("127.0.0.1", self.port)))?;
        let upstream = self.upstream;
        self.task = Some(rt.spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((mut inbound, _)) = listener.accept().await {
                conns.spawn(async move {
                    if let Ok(mut out) =
                        tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await
                    {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                    }
                });
            }
        }));
        Ok(())
    }

    /// Cuts every connection (the JoinSet goes with the task) and closes the port.
    fn down(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

fn wait_for(what: &str, limit: Duration, mut check: impl FnMut() -> bool) -> Result<()> {
    ensure!(
        warren_tests::util::wait_until(limit, &mut check),
        "timed out waiting for {what}"
    );
    Ok(())
}

#[test]
fn a_mirror_follows_a_program_in_the_sandbox_retries_a_locked_file_and_survives_an_outage()
-> Result<()> {
    let Some(mut f) = fixture()? else {
        return Ok(());
    };
    let c = f.client.clone();
    c.exec("mkdir -p /workspace/m/sub && echo one > /workspace/m/a.txt && echo two > /workspace/m/sub/b.txt && ln -s a.txt /workspace/m/link")
        .run()?
        .success()?;
    let local = tempfile::TempDir::new()?;
    let dst = local.path().to_owned();
    let mut outage = Outage::start(&f.stack.stack.rt, f.stack.stack.ssh_port)?;
    f.endpoint.port = outage.port;

    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let events = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = events.clone();
    f.stack.stack.rt.spawn(async move {
        while let Some(e) = rx.recv().await {
            seen.lock().unwrap().push(e);
        }
    });
    let options = warren_sync::MirrorOptions::new("/workspace/m", &dst);
    let endpoint = f.endpoint.clone();
    let mirror = f.stack.stack.rt.spawn(async move {
        warren_sync::mirror(&endpoint, &options, tx, async {
            let _ = stop_rx.await;
        })
        .await
    });
    let read = |p: &str| std::fs::read_to_string(dst.join(p)).unwrap_or_default();

    wait_for("the first pull", Duration::from_secs(30), || {
        read("a.txt") == "one\n" && read("sub/b.txt") == "two\n"
    })?;
    ensure!(std::fs::read_link(dst.join("link"))? == Path::new("a.txt"));

    // A program's creates, edits, renames and deletes.
    c.exec(
        "cd /workspace/m && echo new > c.txt && echo edited >> a.txt && mv sub/b.txt sub/renamed.txt \
         && mkdir -p d/e && echo deep > d/e/f.txt && mv d d2 && rm c.txt && chmod 700 a.txt",
    )
    .run()?
    .success()?;
    let shown = events.clone();
    let dump = move || {
        let mut lines: Vec<String> = shown
            .lock()
            .unwrap()
            .iter()
            .map(|e| format!("{e:?}"))
            .collect();
        lines.truncate(200);
        lines.join("\n")
    };
    let waited = wait_for("the program's changes", Duration::from_secs(45), || {
        read("a.txt") == "one\nedited\n"
            && read("sub/renamed.txt") == "two\n"
            && !dst.join("sub/b.txt").exists()
            && read("d2/e/f.txt") == "deep\n"
            && !dst.join("d").exists()
            && !dst.join("c.txt").exists()
    });
    if waited.is_err() {
        let tree: Vec<String> = read_tree(&dst).keys().cloned().collect();
        anyhow::bail!(
            "the program's changes did not arrive; local: {tree:?}\nevents:\n{}",
            dump()
        );
    }
    let mode = std::fs::metadata(dst.join("a.txt"))?.mode() & 0o777;
    ensure!(mode == 0o700, "mode {mode:o}");

    // A locally locked file (immutable: even root cannot replace it) is retried
    // and reported, the others keep flowing, and it lands once unlocked.
    std::fs::write(dst.join("locked.txt"), "local")?;
    Cmd::new("chattr")
        .args(["+i"])
        .arg(dst.join("locked.txt"))
        .run()?
        .success()?;
    c.exec("cd /workspace/m && echo sandbox > locked.txt && echo after > after.txt")
        .run()?
        .success()?;
    wait_for(
        "the other file despite the lock",
        Duration::from_secs(20),
        || read("after.txt") == "after\n",
    )?;
    wait_for("a retry reported", Duration::from_secs(10), || {
        events.lock().unwrap().iter().any(|e| matches!(e,
            Event::Warning { message } if message.contains("locked.txt") && message.contains("retrying")))
    })?;
    ensure!(read("locked.txt") == "local");
    Cmd::new("chattr")
        .args(["-i"])
        .arg(dst.join("locked.txt"))
        .run()?
        .success()?;
    wait_for(
        "the locked file once unlocked",
        Duration::from_secs(20),
        || read("locked.txt") == "sandbox\n",
    )?;

    // The gateway goes away and comes back: changes made meanwhile arrive.
    outage.down();
    std::thread::sleep(Duration::from_secs(1));
    c.exec("cd /workspace/m && echo while-down > down.txt && rm after.txt")
        .run()?
        .success()?;
    std::thread::sleep(Duration::from_secs(2));
    outage.up(&f.stack.stack.rt)?;
    wait_for(
        "catching up after the outage",
        Duration::from_secs(40),
        || read("down.txt") == "while-down\n" && !dst.join("after.txt").exists(),
    )?;
    c.exec("echo live-again > /workspace/m/again.txt")
        .run()?
        .success()?;
    wait_for("live again", Duration::from_secs(20), || {
        read("again.txt") == "live-again\n"
    })?;
    let states: Vec<Stage> = events
        .lock()
        .unwrap()
        .iter()
        .filter_map(|e| match e {
            Event::Status { state, .. } => Some(*state),
            _ => None,
        })
        .collect();
    ensure!(
        states.contains(&Stage::Reconnecting) && states.contains(&Stage::CatchingUp),
        "states: {states:?}"
    );
    let _ = stop_tx.send(());
    f.stack.stack.rt.block_on(mirror)??;
    Ok(())
}

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn timed<T>(f: impl FnOnce() -> Result<T>) -> Result<(T, Duration)> {
    let started = std::time::Instant::now();
    let out = f()?;
    Ok((out, started.elapsed()))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// The benchmark beside rsync over the same gateway path, in the same run (a base
/// sandbox: it has rsync). Not part of the suite; run it with release binaries, as
/// in production (the tests' own runner is a debug build, slow enough to set both
/// sides' pace): `cargo build --release -p warren-runner`, then
/// `WARREN_TEST_BIN_DIR=target/release cargo nextest run --release -p warren-tests
/// --test sync --run-ignored only --no-capture bench_sync_beside_rsync`
/// (`WARREN_BENCH_BIG_MIB`, default 1024; `WARREN_BENCH_SMALL`, default 5000 files).
#[test]
#[ignore = "a benchmark: prints figures"]
fn bench_sync_beside_rsync() -> Result<()> {
    let Some(stack) = DockerStack::start(&[])? else {
        bail_missing()?;
        return Ok(());
    };
    common::docker::image("build-base")?;
    let (id, c) = stack.sandbox(SandboxSpec {
        image: Some("warren-base:latest".into()),
        ..SandboxSpec::default()
    })?;
    let key = stack
        .stack
        .rt
        .block_on(stack.stack.store.create_api_key(&stack.owner.id, "bench"))?;
    let f = Fixture {
        endpoint: endpoint(&stack, &id, key.secret.expose()),
        stack,
        id,
        client: c.clone(),
        api_key: key.secret.expose().to_owned(),
    };
    let small = env_or("WARREN_BENCH_SMALL", 5000) as usize;
    let big_mib = env_or("WARREN_BENCH_BIG_MIB", 1024);
    let mut rows = Vec::new();

    // Many small files.
    let tree = tempfile::TempDir::new()?;
    make_tree(tree.path(), small.div_ceil(100), 100, 0);
    let (rsync_small, (_, ours_small)) = race(&f, tree.path(), "small")?;
    let (rsync_noop, (_, ours_noop)) = race(&f, tree.path(), "small")?;
    rows.push((format!("seed {small} small files"), rsync_small, ours_small));
    rows.push(("re-run, nothing changed".to_owned(), rsync_noop, ours_noop));
    drop(tree);

    // One large file.
    let big = tempfile::TempDir::new()?;
    {
        use std::io::Write;
        let mut file = std::fs::File::create(big.path().join("big.bin"))?;
        for i in 0..big_mib {
            file.write_all(&bytes(i, 1 << 20))?;
        }
    }
    let (rsync_big, (whole, ours_big)) = race(&f, big.path(), "big")?;
    rows.push((format!("seed one {big_mib} MiB file"), rsync_big, ours_big));

    // One chunk changed in the large file.
    {
        use std::os::unix::fs::FileExt;
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(big.path().join("big.bin"))?;
        file.write_all_at(b"a change", (big_mib << 20) / 2)?;
    }
    let (rsync_patch, (patch, ours_patch)) = race(&f, big.path(), "big")?;
    rows.push((
        "one chunk changed in it".to_owned(),
        rsync_patch,
        ours_patch,
    ));

    // Resume: cut at half, then the same command again.
    let options = SeedOptions::new(big.path(), "/workspace/ws-resume");
    let total = big_mib << 20;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let started = std::time::Instant::now();
    // What the sandbox had acknowledged when the run was cut: the resumed run
    // must send the rest, and anything beyond the rest is sent again.
    let acked = f.stack.stack.rt.block_on(async {
        let run = warren_sync::seed(&f.endpoint, &options, tx);
        tokio::pin!(run);
        loop {
            tokio::select! {
                _ = &mut run => break total,
                Some(Event::Progress(p)) = rx.recv() => {
                    if p.stage == Stage::Uploading && p.bytes_done > total / 2 { break p.bytes_done }
                }
            }
        }
    });
    let cut_after = started.elapsed();
    let ((resumed, _), resume_time) = timed(|| seed(&f, &options))?;

    // Mirror latency: 100 writes in the sandbox, each stamped with its time.
    let local = tempfile::TempDir::new()?;
    c.exec("mkdir -p /workspace/lat").run()?.success()?;
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let endpoint = f.endpoint.clone();
    let mopts = warren_sync::MirrorOptions::new("/workspace/lat", local.path());
    let mirror = f.stack.stack.rt.spawn(async move {
        warren_sync::mirror(&endpoint, &mopts, tx, async {
            let _ = stop_rx.await;
        })
        .await
    });
    std::thread::sleep(Duration::from_secs(2));
    let writer = c
        .exec("cd /workspace/lat && for i in $(seq 1 100); do date +%s%N > .t && mv .t f$i; sleep 0.05; done")
        .spawn()?;
    let mut latencies = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let mut next = 1;
    while next <= 100 && std::time::Instant::now() < deadline {
        let path = local.path().join(format!("f{next}"));
        if let Ok(text) = std::fs::read_to_string(&path)
            && let Ok(written) = text.trim().parse::<u128>()
        {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_nanos();
            latencies.push(Duration::from_nanos(now.saturating_sub(written) as u64));
            next += 1;
            continue;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let _ = writer.wait_timeout(Duration::from_secs(30));
    let _ = stop_tx.send(());
    let _ = f.stack.stack.rt.block_on(mirror);
    latencies.sort();

    // The watcher's memory on a 100k-file tree.
    let files = env_or("WARREN_BENCH_WATCH_FILES", 100_000);
    let rss = c
        .exec(&format!(
            "mkdir -p /workspace/w && cd /workspace/w && for d in $(seq 1 {dirs}); do mkdir d$d; \
             (cd d$d && seq 1 1000 | xargs touch); done; \
             /.warren/bin/warren-agent watch /workspace/w > /tmp/w.out & pid=$!; \
             while [ ! -s /tmp/w.out ]; do sleep 0.1; done; grep VmRSS /proc/$pid/status; \
             find /workspace/w -type d | wc -l; kill $pid",
            dirs = files / 1000
        ))
        .timeout(Duration::from_secs(900))
        .run()?
        .success()?
        .stdout_str();

    println!("\n| case | rsync | warren sync | ratio |");
    println!("|---|---|---|---|");
    for (name, rsync, ours) in &rows {
        println!(
            "| {name} | {:.2} s | {:.2} s | {:.2}× |",
            rsync.as_secs_f64(),
            ours.as_secs_f64(),
            ours.as_secs_f64() / rsync.as_secs_f64()
        );
    }
    println!(
        "\nlarge file seed sent {} bytes; the one-chunk change sent {} bytes",
        whole.bytes_sent, patch.bytes_sent
    );
    let missing = total.saturating_sub(acked);
    let again = resumed.bytes_sent.saturating_sub(missing);
    println!(
        "resume: cut after {:.2} s with {acked} of {total} bytes acknowledged; the resumed run took \
         {:.2} s and sent {} bytes: the {missing} missing and {again} sent again ({:.2}% of the file)",
        cut_after.as_secs_f64(),
        resume_time.as_secs_f64(),
        resumed.bytes_sent,
        100.0 * again as f64 / total.max(1) as f64
    );
    if latencies.is_empty() {
        println!("mirror latency: no change arrived");
    } else {
        println!(
            "mirror latency over {} changes: p50 {:.0} ms, p95 {:.0} ms",
            latencies.len(),
            percentile(&latencies, 0.5).as_secs_f64() * 1000.0,
            percentile(&latencies, 0.95).as_secs_f64() * 1000.0
        );
    }
    println!(
        "watcher on {files} files: {}",
        rss.split_whitespace().collect::<Vec<_>>().join(" ")
    );
    Ok(())
}

/// `rsync -a src/ rs-NAME/` through the gateway, then a seed of `src` into
/// `ws-NAME`: their times, and what the seed sent.
fn race(f: &Fixture, src: &Path, name: &str) -> Result<(Duration, (SeedSummary, Duration))> {
    let c = &f.client;
    // Each starts with nothing left to write back from the one before (sync(2) is
    // the whole machine's), so neither pays for the other's disk writes.
    let settle = || {
        c.exec("sync")
            .timeout(Duration::from_secs(600))
            .run()?
            .success()
    };
    settle()?;
    // rsync's ssh with the cipher our side negotiates (OpenSSH's first choice is
    // ChaCha20-Poly1305), so that both pay the same for their encryption.
    let aes = c.clone().with_option("Ciphers=aes256-gcm@openssh.com");
    let (_, rsync) = timed(|| {
        aes.rsync(
            &["-a"],
            &[
                &format!("{}/", src.display()),
                &c.remote(format!("/workspace/rs-{name}/")),
            ],
        )
        .timeout(Duration::from_secs(3600))
        .run()?
        .success()
    })?;
    settle()?;
    let options = SeedOptions::new(src, format!("/workspace/ws-{name}"));
    let ((summary, stages), ours) = timed(|| seed_by_stage(f, &options))?;
    println!(
        "{name}: rsync {:.2} s, ours {:.2} s: {}",
        rsync.as_secs_f64(),
        ours.as_secs_f64(),
        stages
            .iter()
            .map(|(stage, took)| format!("{stage:?} {:.0} ms", took.as_secs_f64() * 1000.0))
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok((rsync, (summary, ours)))
}

/// A seed, and how long it spent in each stage (from one stage's first event to
/// the next one's).
fn seed_by_stage(
    f: &Fixture,
    options: &SeedOptions,
) -> Result<(SeedSummary, Vec<(Stage, Duration)>)> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let started = std::time::Instant::now();
    let (summary, mut marks) = f.stack.stack.rt.block_on(async {
        let record = async {
            let mut marks: Vec<(Stage, std::time::Instant)> = Vec::new();
            while let Some(event) = rx.recv().await {
                if let Event::Progress(p) = event
                    && marks.last().is_none_or(|(s, _)| *s != p.stage)
                {
                    marks.push((p.stage, std::time::Instant::now()));
                }
            }
            marks
        };
        tokio::join!(warren_sync::seed(&f.endpoint, options, tx), record)
    });
    let summary = summary?;
    let ended = std::time::Instant::now();
    marks.insert(0, (Stage::Discovering, started));
    let stages = marks
        .iter()
        .zip(marks.iter().skip(1).map(|(_, at)| *at).chain([ended]))
        .map(|((stage, from), to)| (*stage, to.duration_since(*from)))
        .filter(|(stage, _)| *stage != Stage::Done)
        .collect::<Vec<_>>();
    // The first mark is the seed's own Discovering event, right after the start.
    let mut merged: Vec<(Stage, Duration)> = Vec::new();
    for (stage, took) in stages {
        match merged.last_mut() {
            Some((s, t)) if *s == stage => *t += took,
            _ => merged.push((stage, took)),
        }
    }
    Ok((summary, merged))
}

fn bail_missing() -> Result<()> {
    anyhow::bail!("the benchmark needs Docker and root")
}

/// The CLI as a person runs it, in a real terminal (tmux): `warren sync` finds the
/// sandbox through the API, pins the gateway's key, logs in with the API key and
/// draws its bar; Ctrl-C mid-upload stops it, and the same command again finishes
/// without sending what had landed. The screen is printed (the README's picture
/// comes from here).
#[test]
fn the_cli_draws_its_progress_in_a_terminal_and_resumes_after_ctrl_c() -> Result<()> {
    let Some(f) = fixture()? else { return Ok(()) };
    let api = f.stack.stack.api(Duration::from_secs(3600))?;
    let key = f
        .stack
        .stack
        .rt
        .block_on(f.stack.stack.store.create_api_key(&f.stack.owner.id, "cli"))?;
    let src = tempfile::TempDir::new()?;
    make_tree(src.path(), 10, 100, 256 << 20);
    let socket = format!("warren-sync-test-{}", std::process::id());
    let tmux = |args: &[&str]| {
        Cmd::new("tmux")
            .args(["-L", &socket])
            .args(args.iter().copied())
            .run()
    };
    let sync = format!(
        "{} sync {} {}:/workspace/cli",
        warren_tests::build_bin("warren-cli", "warren", warren_tests::Profile::Debug)?.display(),
        src.path().display(),
        f.endpoint.sandbox
    );
    // A trap (not an ignored signal, which the CLI would inherit) keeps the shell
    // going after Ctrl-C ends the first run.
    let command = format!(
        "trap 'echo interrupted' INT; export WARREN_URL={} WARREN_API_KEY={}; \
         {sync}; echo exit=$?; {sync}; echo again=$?; sleep 60",
        api.base,
        key.secret.expose(),
    );
    tmux(&[
        "new-session",
        "-d",
        "-s",
        "s",
        "-x",
        "130",
        "-y",
        "8",
        &command,
    ])?
    .success()?;
    let screen = || {
        tmux(&["capture-pane", "-p", "-t", "s"])
            .map(|o| o.stdout_str())
            .unwrap_or_default()
    };
    // Ctrl-C once the bar is midway.
    let mut moving = String::new();
    let mut last = String::new();
    let cut_or_done = warren_tests::util::wait_until(Duration::from_secs(150), || {
        last = screen();
        // The percent is right-aligned after the bar: `]  42%`.
        let percent = last
            .split_once("] ")
            .and_then(|(_, rest)| rest.split_once('%'))
            .and_then(|(p, _)| p.trim().parse::<u32>().ok());
        if last.contains("uploading") && percent.is_some_and(|p| (30..=70).contains(&p)) {
            moving = last.clone();
            return true;
        }
        last.contains("exit=")
    });
    ensure!(cut_or_done, "the CLI drew no bar midway:\n{last}");
    // Still running? (Ctrl-C after the first run ended would stop the second.)
    if !moving.is_empty() && !screen().contains("exit=") {
        tmux(&["send-keys", "-t", "s", "C-c"])?.success()?;
    } else {
        moving.clear();
    }
    let finished = warren_tests::util::wait_until(Duration::from_secs(150), || {
        last = screen();
        last.contains("again=")
    });
    let all = tmux(&["capture-pane", "-p", "-S", "-", "-t", "s"])?.stdout_str();
    let _ = tmux(&["kill-server"]);
    println!("while uploading:\n{moving}\nat the end:\n{last}");
    ensure!(
        finished && all.contains("again=0"),
        "the second run did not finish well:\n{all}"
    );
    // `sent N of M files (…), K unchanged, 0 removed` from the second run.
    let summary = all
        .lines()
        .rfind(|l| l.starts_with("sent "))
        .with_context(|| format!("no summary:\n{all}"))?;
    let numbers: Vec<u64> = summary
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|w| w.parse().ok())
        .collect();
    let (sent, unchanged) = (numbers[0], numbers[numbers.len() - 2]);
    if moving.is_empty() {
        // The first run finished before it could be cut: nothing is left to send.
        ensure!(all.contains("exit=0"), "the first run failed:\n{all}");
        ensure!(sent == 0, "a finished seed sent again: {summary}");
    } else {
        ensure!(
            all.contains("exit=130"),
            "Ctrl-C did not stop the first run:\n{all}"
        );
        // What landed is not sent again: less than the large file's 256 MiB.
        let mib = summary
            .split_once('(')
            .and_then(|(_, rest)| rest.split_once(')'))
            .and_then(|(size, _)| size.split_once(' '))
            .and_then(|(n, unit)| {
                let scale = match unit {
                    "B" => 1.0 / 1048576.0,
                    "KiB" => 1.0 / 1024.0,
                    "MiB" => 1.0,
                    _ => return None,
                };
                n.parse::<f64>().ok().map(|n| n * scale)
            });
        ensure!(
            unchanged > 0 && sent < 1003 && mib.is_some_and(|m| m < 256.0),
            "the run after Ctrl-C sent everything again: {summary}"
        );
    }
    Ok(())
}

// `warren mirror` against a hostile sandbox, on the Docker backend: what the
// sandbox user and container root can put in the mirrored tree (links through
// links, part-named links, setuid bits, a file turned into `/dev/zero`, names with
// terminal escapes) and what a hostile watcher can send (a flood, a record without
// end). Nothing may change outside the local directory, no link in it may resolve
// outside it, writes and memory stay bounded, and the CLI prints sandbox names
// escaped.

/// The OSC 52 name of the issue: it would write "hello" to the clipboard.
const OSC52: &str = "\x1b]52;c;aGVsbG8=\x07";

impl Fixture {
    /// A shell command as the sandbox user.
    fn user(&self, script: &str) -> Result<()> {
        self.client.exec(script).run()?.success()?;
        Ok(())
    }

    /// A shell command as root in the container.
    fn root(&self, script: &str) -> Result<()> {
        docker_ok(&[
            "exec",
            "-u",
            "0",
            &format!("warren-{}", self.id),
            "sh",
            "-c",
            script,
        ])?;
        Ok(())
    }

    /// Starts a mirror in the background; its events are collected.
    fn mirror(&self, options: MirrorOptions) -> Mirror {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let events = Arc::new(Mutex::new(Vec::new()));
        let seen = events.clone();
        self.stack.stack.rt.spawn(async move {
            while let Some(e) = rx.recv().await {
                seen.lock().unwrap().push(e);
            }
        });
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let endpoint = self.endpoint.clone();
        let task = self.stack.stack.rt.spawn(async move {
            warren_sync::mirror(&endpoint, &options, tx, async {
                let _ = stop_rx.await;
            })
            .await
        });
        Mirror {
            events,
            stop: Some(stop),
            task: Some(task),
        }
    }
}

struct Mirror {
    events: Arc<Mutex<Vec<Event>>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), warren_sync::SyncError>>>,
}

impl Mirror {
    fn warned(&self, what: &[&str]) -> bool {
        self.events.lock().unwrap().iter().any(
            |e| matches!(e, Event::Warning { message } if what.iter().all(|w| message.contains(w))),
        )
    }

    fn warnings(&self) -> String {
        let events = self.events.lock().unwrap();
        let lines: Vec<String> = events
            .iter()
            .filter_map(|e| match e {
                Event::Warning { message } => Some(format!("{message:?}")),
                _ => None,
            })
            .take(60)
            .collect();
        lines.join("\n")
    }

    fn stop(mut self, rt: &tokio::runtime::Runtime) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ =
                rt.block_on(async { tokio::time::timeout(Duration::from_secs(20), task).await });
        }
    }
}

/// Every entry under `root`, links not followed.
fn walk(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(path.clone());
            }
            out.push(path);
        }
    }
    out
}

/// What must hold of a local directory whatever the sandbox did: every link
/// resolves inside it (or nowhere), no part-named entry and no setuid, setgid or
/// sticky bit is left, and the canaries beside it are untouched.
fn check_contained(base: &Path, local: &Path) -> Result<()> {
    let root = local.canonicalize()?;
    for path in walk(local) {
        let meta = std::fs::symlink_metadata(&path)?;
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        ensure!(
            !name.ends_with(".warren-part"),
            "a part-named entry was left: {}",
            path.display()
        );
        if meta.file_type().is_symlink() {
            if let Ok(real) = path.canonicalize() {
                ensure!(
                    real.starts_with(&root),
                    "{} resolves out of the mirror, to {}",
                    path.display(),
                    real.display()
                );
            }
        } else {
            ensure!(
                meta.mode() & 0o7000 == 0,
                "{} has mode {:o}",
                path.display(),
                meta.mode()
            );
        }
    }
    ensure!(std::fs::read_to_string(base.join(".bashrc"))? == "canary\n");
    ensure!(std::fs::read_to_string(base.join("outside/keep"))? == "keep\n");
    let beside: Vec<PathBuf> = walk(base)
        .into_iter()
        .filter(|p| !p.starts_with(local))
        .collect();
    ensure!(
        beside.len() == 3,
        "something appeared beside the mirror: {beside:?}"
    );
    Ok(())
}

/// One stack for all of it: the CLI's output, the attacks on the tree, the
/// hostile watchers.
#[test]
fn a_hostile_sandbox_cannot_reach_past_the_mirrored_directory() -> Result<()> {
    let Some(f) = fixture()? else { return Ok(()) };
    the_cli_prints_sandbox_names_escaped(&f)?;
    let base = tempfile::TempDir::new()?;
    let local = base.path().join("w");
    links_and_parts_stay_inside(&f, base.path(), &local)?;
    hostile_watchers_are_bounded(&f, base.path(), &local)
}

/// The issue's attack and its relatives, by the sandbox user and by container
/// root, on the first pull and live: `../` through links, a part-named link, links
/// that move to a shallower depth, setuid files, a file that becomes `/dev/zero`.
fn links_and_parts_stay_inside(f: &Fixture, base: &Path, local: &Path) -> Result<()> {
    // As the sandbox user, before the mirror starts (the first pull).
    f.user(
        "mkdir -p /workspace/m && chmod 777 /workspace/m && cd /workspace/m && mkdir d && ln -s .. d/u \
         && ln -s d/u/../.bashrc .x.warren-part && echo evil > x \
         && mkdir -p a/b && ln -s ../.. a/b/up && ln -s a/b/up/../../.bashrc y \
         && ln -s ../../.. deep && ln -s /etc abs && mkdir .z.warren-part && echo z > .z.warren-part/f \
         && ln -s / .q.warren-part && echo s > suid && chmod 6755 suid \
         && mkdir -p node_modules/.bin node_modules/tool && echo t > node_modules/tool/cli \
         && ln -s ../tool/cli node_modules/.bin/cli \
         && for i in $(seq 1000 2999); do echo $i > n$i; done && head -c 1000 /dev/urandom > zz",
    )?;
    // As container root (no CAP_DAC_OVERRIDE: in the directory the user opened to
    // it): the same through a root-owned directory, and root's setuid file.
    f.root(
        "cd /workspace/m && mkdir r && ln -s .. r/u && ln -s r/u/../.bashrc .r.warren-part \
         && echo evil > rr && echo s > rootsuid && chmod 4755 rootsuid",
    )?;
    // Root, once the mirror's watcher runs (so the listing is taken): `zz` becomes
    // a link to /dev/zero before the pull reaches it (2,000 files come first).
    let name = format!("warren-{}", f.id);
    docker_ok(&[
        "exec",
        "-d",
        "-u",
        "0",
        &name,
        "sh",
        "-c",
        "while ! ps | grep -q '[w]atch /workspace/m'; do usleep 50000; done; \
         usleep 300000; ln -sf /dev/zero /workspace/m/zz",
    ])?;

    std::fs::write(base.join(".bashrc"), "canary\n")?;
    std::fs::create_dir(base.join("outside"))?;
    std::fs::write(base.join("outside/keep"), "keep\n")?;
    let m = f.mirror(MirrorOptions::new("/workspace/m", local));
    let read = |p: &str| std::fs::read_to_string(local.join(p)).unwrap_or_default();
    let pulled = wait_for("the first pull", Duration::from_secs(90), || {
        read("x") == "evil\n" && read("rr") == "evil\n" && read("n2999") == "2999\n"
    });
    if pulled.is_err() {
        anyhow::bail!("the first pull did not finish:\n{}", m.warnings());
    }
    // The link that keeps the rule is made; the others are not, and say so.
    ensure!(std::fs::read_link(local.join("node_modules/.bin/cli"))? == Path::new("../tool/cli"));
    ensure!(read("node_modules/.bin/cli") == "t\n");
    ensure!(std::fs::read_link(local.join("d/u"))? == Path::new(".."));
    for refused in [
        "y",
        "deep",
        "abs",
        ".x.warren-part",
        ".q.warren-part",
        ".z.warren-part",
    ] {
        ensure!(
            std::fs::symlink_metadata(local.join(refused)).is_err(),
            "{refused} was made"
        );
    }
    wait_for("the refusals reported", Duration::from_secs(10), || {
        m.warned(&["y: a link that may resolve out of the tree"])
            && m.warned(&["abs: a link that may resolve out of the tree (-> /etc)"])
    })?;
    ensure!(std::fs::metadata(local.join("suid"))?.permissions().mode() & 0o7777 == 0o755);
    ensure!(
        std::fs::metadata(local.join("rootsuid"))?
            .permissions()
            .mode()
            & 0o7777
            == 0o755
    );
    // `zz` became /dev/zero after it was listed: not read at all, or at most its
    // listed 1000 bytes; then its link is refused.
    let handled = wait_for("zz handled", Duration::from_secs(30), || {
        std::fs::symlink_metadata(local.join("zz")).is_err()
            && m.warned(&["zz: a link that may resolve out of the tree (-> /dev/zero)"])
    });
    if handled.is_err() {
        let there = f.client.exec("ls -la /workspace/m/zz").run()?.stdout_str();
        anyhow::bail!(
            "zz: {there}; local {:?}; warnings:\n{}",
            std::fs::symlink_metadata(local.join("zz")).map(|m| m.len()),
            m.warnings()
        );
    }
    println!(
        "zz was {}",
        if m.warned(&["zz: not a regular file when opened"]) {
            "opened as /dev/zero and refused (not a regular file)"
        } else {
            "seen as a link first"
        }
    );
    check_contained(base, local)?;

    // Live, through the watcher: the same attack again, by the user and by root,
    // and a move that would take a link's `..`s past the root.
    f.user(
        "cd /workspace/m && mkdir e && ln -s .. e/u && ln -s e/u/../.bashrc .x2.warren-part \
         && echo evil > x2 && ln -s e/u/../.bashrc x3 && mkdir -p m1/m2 && ln -s ../../d m1/m2/ok \
         && echo 1 > m1/m2/file",
    )?;
    f.root(
        "cd /workspace/m && ln -s r/u/../.bashrc .rr.warren-part && echo evil > rr2 \
         && ln -sf /dev/zero n1000 && echo s > suid2 && chmod 7777 suid2",
    )?;
    wait_for("the live changes", Duration::from_secs(30), || {
        read("x2") == "evil\n" && read("rr2") == "evil\n" && read("m1/m2/file") == "1\n"
    })?;
    ensure!(std::fs::read_link(local.join("m1/m2/ok"))? == Path::new("../../d"));
    f.user("cd /workspace/m && mv m1/m2 m2top && echo after > after")?;
    wait_for("the move", Duration::from_secs(30), || {
        read("m2top/file") == "1\n" && read("after") == "after\n"
    })?;
    wait_for("n1000 and suid2", Duration::from_secs(20), || {
        std::fs::symlink_metadata(local.join("n1000")).is_err() && read("suid2") == "s\n"
    })?;
    ensure!(
        std::fs::symlink_metadata(local.join("m2top/ok")).is_err(),
        "a link moved to where its ../.. leaves the tree was kept"
    );
    ensure!(std::fs::symlink_metadata(local.join("x3")).is_err());
    ensure!(std::fs::metadata(local.join("suid2"))?.permissions().mode() & 0o7777 == 0o777);
    // A link 250 levels deep with 250 `..`s (inside), moved deeper (to past the
    // 256 levels the mirror walks), then shallower than it began: once there its
    // `..`s leave the tree, and nothing of it past the cut-off is trusted unread.
    f.user(
        "cd /workspace/m && d=$(printf 'd/%.0s' $(seq 248)) && mkdir -p p/q/$d \
         && ln -s $(printf '../%.0s' $(seq 250))x p/q/${d}l && mkdir -p p/s1/s2/s3/s4/s5/s6/s7",
    )?;
    let deep = format!("{}l", "d/".repeat(248));
    wait_for("the deep link", Duration::from_secs(60), || {
        std::fs::symlink_metadata(local.join("p/q").join(&deep)).is_ok()
            && local.join("p/s1/s2/s3/s4/s5/s6/s7").is_dir()
    })?;
    f.user("cd /workspace/m && mv p/q p/s1/s2/s3/s4/s5/s6/s7/q")?;
    wait_for("the move down", Duration::from_secs(30), || {
        !local.join("p/q").exists() && local.join("p/s1/s2/s3/s4/s5/s6/s7/q/d").is_dir()
    })?;
    f.user("cd /workspace/m && mv p/s1/s2/s3/s4/s5/s6/s7/q up1 && echo after > after2")?;
    wait_for("the move up", Duration::from_secs(60), || {
        read("after2") == "after\n" && local.join("up1/d/d").is_dir()
    })?;
    ensure!(
        std::fs::symlink_metadata(local.join("up1").join(&deep)).is_err(),
        "a link moved up from past the walked depth was kept, pointing out of the tree"
    );
    f.user("rm -rf /workspace/m/up1 /workspace/m/p")?;
    wait_for("the deep tree gone", Duration::from_secs(60), || {
        !local.join("up1").exists() && !local.join("p").exists()
    })?;
    check_contained(base, local)?;
    m.stop(&f.stack.stack.rt);
    Ok(())
}

fn hostile_watchers_are_bounded(f: &Fixture, base: &Path, local: &Path) -> Result<()> {
    // A watcher that floods (container root can make the session's watcher any
    // program): the queue collapses into rescans and memory stays bounded; one
    // that sends a record without end is cut off.
    let scripts = [
        (
            "/tmp/flood",
            "#!/bin/sh\nprintf '1\\tS\\000'\nseq 2 999999999 | sed 's/^.*$/&\tW\tf&/' | tr '\\n' '\\000'\n",
        ),
        (
            "/tmp/endless",
            "#!/bin/sh\nprintf '1\\tS\\000'\ntr '\\000' a < /dev/zero\n",
        ),
    ];
    for (path, script) in scripts {
        f.client
            .exec(&format!("cat > {path} && chmod +x {path}"))
            .stdin(script.as_bytes().to_vec())
            .run()?
            .success()?;
    }
    let rss = || {
        std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmRSS:"))
                    .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            })
            .unwrap_or(0)
            / 1024
    };
    for (agent, expect) in [
        ("/tmp/flood", "rescanning"),
        ("/tmp/endless", "a record from the watcher"),
    ] {
        let before = rss();
        let mut options = MirrorOptions::new("/workspace/m", local);
        options.agent_path = Some(agent.into());
        let m = f.mirror(options);
        let warned = wait_for(expect, Duration::from_secs(60), || m.warned(&[expect]));
        if warned.is_err() {
            anyhow::bail!("{agent}: no warning {expect:?}:\n{}", m.warnings());
        }
        // Ten seconds more of it.
        let mut peak = 0;
        for _ in 0..20 {
            std::thread::sleep(Duration::from_millis(500));
            peak = peak.max(rss());
        }
        m.stop(&f.stack.stack.rt);
        println!("{agent}: RSS {before} MiB before, {peak} MiB at most while it ran");
        ensure!(
            peak < before + 256,
            "{agent}: memory grew from {before} to {peak} MiB"
        );
    }
    check_contained(base, local)?;
    Ok(())
}

/// The CLI as a person runs it: a sandbox name carrying OSC 52 (and the mirror's
/// warning about it) reaches the terminal escaped, never as raw control bytes.
fn the_cli_prints_sandbox_names_escaped(f: &Fixture) -> Result<()> {
    let api = f.stack.stack.api(Duration::from_secs(3600))?;
    f.user(&format!(
        "mkdir -p /workspace/t && cd /workspace/t && echo ok > plain && ln -s /etc \"$(printf '{}')\"",
        OSC52.replace('\x1b', "\\033").replace('\x07', "\\007")
    ))?;
    let local = tempfile::TempDir::new()?;
    let bin = warren_tests::build_bin("warren-cli", "warren", warren_tests::Profile::Debug)?;
    let mut child = std::process::Command::new(&bin)
        .args(["mirror", "--progress", "none"])
        .arg(format!("{}:/workspace/t", f.endpoint.sandbox))
        .arg(local.path())
        .env("WARREN_URL", &api.base)
        .env("WARREN_API_KEY", &f.api_key)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let mut stderr = child.stderr.take().unwrap();
    let output = Arc::new(Mutex::new(Vec::new()));
    let sink = output.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stderr.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock().unwrap().extend_from_slice(&buf[..n]);
        }
    });
    let escaped = "\\x1b]52;c;aGVsbG8=\\x07";
    let seen = util::wait_until(Duration::from_secs(60), || {
        String::from_utf8_lossy(&output.lock().unwrap()).contains(escaped)
            && local.path().join("plain").exists()
    });
    let _ = child.kill();
    let _ = child.wait();
    let out = output.lock().unwrap().clone();
    let text = String::from_utf8_lossy(&out);
    println!("the CLI printed:\n{text}");
    ensure!(seen, "no escaped name in the CLI's output:\n{text:?}");
    ensure!(
        !out.iter().any(|b| *b == 0x1b || *b == 0x07),
        "raw control bytes reached the terminal: {text:?}"
    );
    ensure!(std::fs::read_to_string(local.path().join("plain"))? == "ok\n");

    // `warren sync` the other way: a dry run with `--delete` names what it would
    // remove in the sandbox, the OSC 52 link among them.
    let empty = tempfile::TempDir::new()?;
    let dry = Cmd::new(&bin)
        .args(["sync", "-n", "--delete", "--progress", "none"])
        .arg(empty.path())
        .arg(format!("{}:/workspace/t", f.endpoint.sandbox))
        .env("WARREN_URL", &api.base)
        .env("WARREN_API_KEY", &f.api_key)
        .timeout(Duration::from_secs(60))
        .run()?
        .success()?;
    let text = dry.stderr_str();
    println!("the dry run printed:\n{text}");
    ensure!(
        text.contains(&format!("delete  {escaped}")),
        "no escaped name in the dry run: {text:?}"
    );
    ensure!(
        !dry.stderr.iter().any(|b| *b == 0x1b || *b == 0x07),
        "raw control bytes reached the terminal: {text:?}"
    );
    Ok(())
}
