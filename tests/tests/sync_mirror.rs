//! `warren mirror` end to end on the Docker backend: a gateway, a Docker runner, a
//! busybox sandbox, and the library logging in through the front door with the
//! owner's API key, as the CLI does. A mirror follows a program in the sandbox and
//! survives an outage; and a hostile sandbox cannot reach past the mirrored
//! directory (the last section).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Result, ensure};
use warren_sync::{Event, MirrorOptions, Stage};
use warren_tests::stack::docker_ok;
use warren_tests::sync::{Fixture, fixture, read_tree};
use warren_tests::{Cmd, util};

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

/// The OSC 52 name of the issue: it would write "hello" to the clipboard.
const OSC52: &str = "\x1b]52;c;aGVsbG8=\x07";

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

/// The attack and its relatives, by the sandbox user and by container
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
    // 250 nested directories, each its own change: slow on a busy machine.
    wait_for("the deep link", Duration::from_secs(150), || {
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
