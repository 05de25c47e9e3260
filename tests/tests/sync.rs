//! `warren sync` (warren-sync's `seed`) end to end on the Docker backend, the
//! user's path: a gateway, a Docker runner, a busybox sandbox, and the library
//! logging in through the front door with the owner's API key, as the CLI does.
//! The result is checked file by file from inside the sandbox (a `tar` of the
//! target, read through `ssh`): contents, modes, mtimes, links. And `warren mirror`
//! against a hostile sandbox (the last section).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use warren_runner::protocol::SandboxSpec;
use warren_sync::{Endpoint, Event, SeedOptions, SeedSummary, Stage};
use warren_tests::Cmd;
use warren_tests::stack::DockerStack;
use warren_tests::sync::{
    Fixture, bytes, endpoint, fetch, fixture, make_tree, options, other_key, read_tree, seed,
    set_mtime,
};

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
    warren_tests::stack::image("build-base")?;
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
