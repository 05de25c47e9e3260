//! Snapshots and forks (issue 26) on the Docker backend, end to end through the
//! HTTP API and real `ssh`: a sandbox with a file installed into its root file
//! system and a commit plus uncommitted work in its workspace is snapshotted and
//! forked; every fork sees all of it, keeps its writes to itself and is on its own
//! branch; the source keeps serving; the snapshot outlives its source; another
//! account can neither see nor use it; bad requests get a 4xx and leave nothing.
//! One shared stack.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use serde_json::{Value, json};
use warren_keys::SandboxId;
use warren_tests::Client;
use warren_tests::stack::{Api, DockerStack, Reply, Stack, docker_ok, image};

/// The image (with git).
const BASE: &str = "warren-base:latest";

struct Env<'a> {
    d: &'a DockerStack,
    api: Api,
    alice: String,
    bob: String,
}

impl Env<'_> {
    fn call(&self, key: &str, method: &str, path: &str, body: Option<Value>) -> Result<Reply> {
        self.d.stack.call(&self.api, method, path, Some(key), body)
    }

    fn ssh(&self, id: &str) -> Client {
        self.d
            .client
            .clone()
            .with_target(self.d.stack.target(&SandboxId::parse(id).unwrap()))
    }

    /// Alice's sandboxes that are not deleted.
    fn live(&self) -> Result<Vec<String>> {
        let list = self.call(&self.alice, "GET", "/v1/sandboxes", None)?.json();
        Ok(list["sandboxes"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s["id"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default())
    }
}

fn expect(reply: &Reply, status: u16, what: &str) -> Result<Value> {
    ensure!(
        reply.status == status,
        "{what}: {} {}",
        reply.status,
        reply.text
    );
    Ok(if reply.text.is_empty() {
        Value::Null
    } else {
        reply.json()
    })
}

/// What a sandbox's shell sees of the source's preparation, one line each (the
/// last: what root removed from the image, a file and a directory's old contents,
/// is gone).
const LOOK: &str = "warren-hello; cat /workspace/a.txt /workspace/b.txt; \
    git -C /workspace rev-parse --abbrev-ref HEAD; git -C /workspace log --format=%s; \
    wc -c < /workspace/ten-mib; test ! -e /etc/issue && ls -A /usr/share/doc/bash";

#[test]
fn snapshots_and_forks() -> Result<()> {
    let Some(d) = DockerStack::start(&["--disk-mb", "512"])? else {
        return Ok(());
    };
    image("build-base")?;
    // Dropping the stack removes the snapshots' images and mounts too.
    scenario(&d)
}

fn scenario(d: &DockerStack) -> Result<()> {
    let stack = &d.stack;
    let api = stack.api(Duration::from_secs(1))?;
    let (alice, bob) = stack.rt.block_on(async {
        let alice = stack.store.create_api_key(&d.owner.id, "fork").await?;
        let bob = stack.store.create_user("bob", false).await?;
        let bob = stack.store.create_api_key(&bob.id, "fork").await?;
        anyhow::Ok((
            alice.secret.expose().to_owned(),
            bob.secret.expose().to_owned(),
        ))
    })?;
    let e = Env { d, api, alice, bob };

    // The source: a file installed into its root file system (by container root,
    // as a package manager would), a commit, uncommitted work and 10 MiB of data.
    let plain_began = Instant::now();
    let made = e.call(
        &e.alice,
        "POST",
        "/v1/sandboxes",
        Some(json!({"image": BASE})),
    )?;
    let source = expect(&made, 201, "create the source")?["id"]
        .as_str()
        .unwrap()
        .to_owned();
    e.ssh(&source).exec("true").run()?.success()?;
    let plain_create = plain_began.elapsed();
    docker_ok(&[
        "exec",
        "-u",
        "0",
        &format!("warren-{source}"),
        "sh",
        "-c",
        "printf '#!/bin/sh\\necho installed\\n' > /usr/local/bin/warren-hello && \
         chmod 755 /usr/local/bin/warren-hello && rm /etc/issue && \
         rm -r /usr/share/doc/bash && mkdir /usr/share/doc/bash && \
         touch /usr/share/doc/bash/only",
    ])?;
    e.ssh(&source)
        .exec(
            "cd /workspace && git init -q && git config user.email t@example.com && \
             git config user.name T && echo one > a.txt && git add a.txt && \
             git commit -qm first && echo dirty > b.txt && \
             head -c 10485760 /dev/urandom > ten-mib",
        )
        .run()?
        .success()?;
    let seen = e.ssh(&source).exec(LOOK).run()?.success()?;
    let source_branch = seen
        .stdout_str()
        .lines()
        .nth(3)
        .unwrap_or_default()
        .to_owned();

    // A snapshot, with how long the source was frozen.
    let snap = e.call(
        &e.alice,
        "POST",
        &format!("/v1/sandboxes/{source}/snapshots"),
        Some(json!({"name": "prepared"})),
    )?;
    let snap = expect(&snap, 201, "snapshot")?;
    let snapshot = snap["id"].as_str().unwrap().to_owned();
    ensure!(snapshot.starts_with("snp_"), "{snap}");
    let frozen_ms = snap["frozen_ms"].as_u64().unwrap_or(u64::MAX);
    eprintln!(
        "snapshot of 10 MiB changed: frozen {frozen_ms} ms, {} bytes",
        snap["size_bytes"]
    );
    let listed = e.call(&e.alice, "GET", "/v1/snapshots", None)?.json();
    ensure!(
        listed["snapshots"][0]["id"] == snapshot.as_str(),
        "listed: {listed}"
    );

    // Three forks, while the source keeps serving.
    let began = Instant::now();
    let forked = e.call(
        &e.alice,
        "POST",
        &format!("/v1/sandboxes/{source}/fork"),
        Some(json!({"count": 3})),
    )?;
    let forked_in = began.elapsed();
    let forked = expect(&forked, 201, "fork")?;
    let forks: Vec<String> = forked["sandboxes"]
        .as_array()
        .context("sandboxes")?
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_owned())
        .collect();
    ensure!(forks.len() == 3, "{forked}");
    for (i, fork) in forks.iter().enumerate() {
        let out = e.ssh(fork).exec(LOOK).run()?.success()?;
        if i == 0 {
            eprintln!(
                "3 forks: answered in {:?}, first ssh after {:?} (a plain create and ssh: {plain_create:?})",
                forked_in,
                began.elapsed()
            );
        }
        let text = out.stdout_str();
        let lines: Vec<&str> = text.lines().collect();
        ensure!(
            lines.first() == Some(&"installed")
                && lines.get(1) == Some(&"one")
                && lines.get(2) == Some(&"dirty")
                && lines.get(3) == Some(&format!("warren/{fork}").as_str())
                && lines.get(4) == Some(&"first")
                && lines.get(5).map(|l| l.trim()) == Some("10485760")
                && lines.get(6) == Some(&"only"),
            "fork {fork} sees:\n{out}"
        );
        e.ssh(fork)
            .exec(&format!(
                "echo {fork} > /workspace/own && echo {fork} > /tmp/own && \
                 git -C /workspace add -A && git -C /workspace commit -qm {fork}"
            ))
            .run()?
            .success()?;
    }
    // Each fork's writes are its own.
    for fork in &forks {
        let out = e
            .ssh(fork)
            .exec("cat /workspace/own /tmp/own; git -C /workspace log --format=%s | head -n1")
            .run()?
            .success()?;
        ensure!(
            out.stdout_str().lines().all(|l| l == fork),
            "fork {fork}:\n{out}"
        );
    }
    let out = e.ssh(&source).exec(LOOK).run()?.success()?;
    ensure!(
        out.stdout_str() == seen.stdout_str(),
        "the source changed:\n{out}\nwas\n{seen}"
    );
    ensure!(
        e.ssh(&source)
            .exec("test -e /workspace/own")
            .run()?
            .success()
            .is_err(),
        "a fork's write reached the source"
    );
    ensure!(source_branch != "warren/", "{seen}");

    // Another account sees nothing of it and cannot use it.
    let bobs = e.call(&e.bob, "GET", "/v1/snapshots", None)?.json();
    ensure!(
        bobs["snapshots"].as_array().is_some_and(Vec::is_empty),
        "{bobs}"
    );
    for (method, path, body) in [
        ("GET", format!("/v1/snapshots/{snapshot}"), None),
        ("DELETE", format!("/v1/snapshots/{snapshot}"), None),
        (
            "POST",
            "/v1/sandboxes".to_owned(),
            Some(json!({"snapshot": snapshot})),
        ),
        (
            "POST",
            format!("/v1/sandboxes/{source}/fork"),
            Some(json!({"count": 1})),
        ),
        ("POST", format!("/v1/sandboxes/{source}/snapshots"), None),
    ] {
        let reply = e.call(&e.bob, method, &path, body)?;
        expect(&reply, 404, &format!("bob: {method} {path}"))?;
    }

    // Bad requests: a 4xx each, and nothing made.
    let before = e.live()?;
    let unknown = SandboxId::generate();
    for (path, body, status) in [
        (
            format!("/v1/sandboxes/{source}/fork"),
            json!({"count": 0}),
            422,
        ),
        (
            format!("/v1/sandboxes/{source}/fork"),
            json!({"count": 1000}),
            422,
        ),
        (
            format!("/v1/sandboxes/{source}/fork"),
            json!({"count": 2, "branch_prefix": "bad..name"}),
            422,
        ),
        (
            format!("/v1/sandboxes/{unknown}/fork"),
            json!({"count": 1}),
            404,
        ),
        (format!("/v1/sandboxes/{unknown}/snapshots"), json!({}), 404),
        (
            "/v1/sandboxes".to_owned(),
            json!({"snapshot": "snp_aaaaaaaaaaaaaaaa"}),
            404,
        ),
        (
            "/v1/sandboxes".to_owned(),
            json!({"snapshot": "nonsense"}),
            404,
        ),
        (
            "/v1/sandboxes".to_owned(),
            json!({"snapshot": snapshot, "image": BASE}),
            422,
        ),
    ] {
        let reply = e.call(&e.alice, "POST", &path, Some(body.clone()))?;
        expect(&reply, status, &format!("POST {path} {body}"))?;
    }
    // A stopped source.
    let stopped = e.call(
        &e.alice,
        "POST",
        "/v1/sandboxes",
        Some(json!({"image": BASE})),
    )?;
    let stopped = expect(&stopped, 201, "create")?["id"]
        .as_str()
        .unwrap()
        .to_owned();
    expect(
        &e.call(
            &e.alice,
            "POST",
            &format!("/v1/sandboxes/{stopped}/stop"),
            None,
        )?,
        200,
        "stop",
    )?;
    let reply = e.call(
        &e.alice,
        "POST",
        &format!("/v1/sandboxes/{stopped}/fork"),
        Some(json!({"count": 1})),
    )?;
    expect(&reply, 409, "fork a stopped sandbox")?;
    expect(
        &e.call(
            &e.alice,
            "DELETE",
            &format!("/v1/sandboxes/{stopped}"),
            None,
        )?,
        204,
        "delete",
    )?;
    let after = e.live()?;
    ensure!(
        before == after,
        "bad requests left sandboxes: {before:?} -> {after:?}"
    );
    let snapshots = e.call(&e.alice, "GET", "/v1/snapshots", None)?.json();
    ensure!(
        snapshots["snapshots"].as_array().map(Vec::len) == Some(1),
        "only the named snapshot is left (a fork's goes with it): {snapshots}"
    );

    // The snapshot outlives its source.
    expect(
        &e.call(&e.alice, "DELETE", &format!("/v1/sandboxes/{source}"), None)?,
        204,
        "delete the source",
    )?;
    for fork in &forks {
        e.ssh(fork).exec("cat /workspace/a.txt").run()?.success()?;
    }
    let made = e.call(
        &e.alice,
        "POST",
        "/v1/sandboxes",
        Some(json!({"snapshot": snapshot, "env": {"EXTRA": "yes"}})),
    )?;
    let again = expect(&made, 201, "create from the snapshot")?["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let out = e
        .ssh(&again)
        .exec(&format!("{LOOK}; echo $EXTRA"))
        .run()?
        .success()?;
    ensure!(
        out.stdout_str().starts_with("installed\none\ndirty\n")
            && out.stdout_str().trim_end().ends_with("yes"),
        "from the snapshot after its source's delete:\n{out}"
    );

    // Deleting the snapshot leaves its sandboxes working; its storage goes with
    // the last of them.
    expect(
        &e.call(
            &e.alice,
            "DELETE",
            &format!("/v1/snapshots/{snapshot}"),
            None,
        )?,
        204,
        "delete the snapshot",
    )?;
    expect(
        &e.call(&e.alice, "GET", &format!("/v1/snapshots/{snapshot}"), None)?,
        404,
        "a deleted snapshot",
    )?;
    e.ssh(&again)
        .exec("cat /workspace/a.txt")
        .run()?
        .success()?;
    let snapshot_dir = e.d.runner.listen_dir().join(".snapshots").join(&snapshot);
    ensure!(
        snapshot_dir.is_dir(),
        "the snapshot's storage went while in use"
    );
    for id in forks.iter().chain([&again]) {
        expect(
            &e.call(&e.alice, "DELETE", &format!("/v1/sandboxes/{id}"), None)?,
            204,
            "delete a fork",
        )?;
    }
    ensure!(
        !snapshot_dir.exists(),
        "the snapshot's storage is still there after its last sandbox"
    );
    let images = docker_ok(&[
        "image",
        "ls",
        "-q",
        "--filter",
        &format!("label=org.warren.snapshot={snapshot}"),
    ])?;
    ensure!(images.is_empty(), "its image is left: {images}");
    Ok(())
}

/// Bytes a file holds on the host's disk.
fn allocated(path: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).map_or(0, |m| m.blocks() * 512)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

/// The targets, measured beside a plain create of the same image:
/// `cargo nextest run -p warren-tests --test fork --run-ignored only`.
#[test]
#[ignore = "a benchmark: minutes, and 1 GiB of disk"]
fn fork_bench() -> Result<()> {
    let Some(d) = DockerStack::start(&["--disk-mb", "512"])? else {
        return Ok(());
    };
    image("build-base")?;
    // Dropping the stack removes the snapshots' images and mounts too.
    bench(&d)
}

fn bench(d: &DockerStack) -> Result<()> {
    let stack = &d.stack;
    let api = stack.api(Duration::from_secs(1))?;
    let alice = stack.rt.block_on(async {
        let key = stack.store.create_api_key(&d.owner.id, "bench").await?;
        anyhow::Ok(key.secret.expose().to_owned())
    })?;
    let e = Env {
        d,
        api,
        bob: String::new(),
        alice,
    };
    let create = |body: Value| -> Result<String> {
        let made = e.call(&e.alice, "POST", "/v1/sandboxes", Some(body))?;
        Ok(expect(&made, 201, "create")?["id"]
            .as_str()
            .unwrap()
            .to_owned())
    };
    let delete = |id: &str| -> Result<()> {
        expect(
            &e.call(&e.alice, "DELETE", &format!("/v1/sandboxes/{id}"), None)?,
            204,
            "delete",
        )?;
        Ok(())
    };
    const RUNS: usize = 5;
    // The machine is shared: how busy it was goes beside the figures.
    let load = || std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load_before = load();
    // A plain create of the same image, to first `ssh true`.
    let mut plain = Vec::new();
    for _ in 0..RUNS {
        let began = Instant::now();
        let id = create(json!({"image": BASE}))?;
        e.ssh(&id).exec("true").run()?.success()?;
        plain.push(began.elapsed());
        delete(&id)?;
    }
    // A source with ~10 MiB changed.
    let source = create(json!({"image": BASE}))?;
    e.ssh(&source)
        .exec("head -c 10485760 /dev/urandom > /workspace/ten-mib")
        .run()?
        .success()?;
    let fork_of = |count: u32| -> Result<(Vec<String>, u64, Duration)> {
        let began = Instant::now();
        let forked = e.call(
            &e.alice,
            "POST",
            &format!("/v1/sandboxes/{source}/fork"),
            Some(json!({"count": count})),
        )?;
        let forked = expect(&forked, 201, "fork")?;
        let ids: Vec<String> = forked["sandboxes"]
            .as_array()
            .context("sandboxes")?
            .iter()
            .map(|s| s["id"].as_str().unwrap().to_owned())
            .collect();
        let clients: Vec<Client> = ids.iter().map(|id| e.ssh(id)).collect();
        std::thread::scope(|s| {
            let runs: Vec<_> = clients
                .into_iter()
                .map(|c| s.spawn(move || c.exec("true").run()?.success().map(|_| ())))
                .collect();
            for run in runs {
                run.join()
                    .map_err(|_| anyhow::anyhow!("an ssh thread panicked"))??;
            }
            anyhow::Ok(())
        })?;
        Ok((
            ids,
            forked["frozen_ms"].as_u64().unwrap_or(0),
            began.elapsed(),
        ))
    };
    let mut one = Vec::new();
    let mut frozen_small = Vec::new();
    for _ in 0..RUNS {
        let (ids, frozen, took) = fork_of(1)?;
        one.push(took);
        frozen_small.push(Duration::from_millis(frozen));
        for id in &ids {
            delete(id)?;
        }
    }
    let (ids, _, four) = fork_of(4)?;
    for id in &ids {
        delete(id)?;
    }
    delete(&source)?;
    // A source with a 1 GiB workspace: the freeze, and the disk 4 forks take.
    let big = create(json!({"image": BASE, "disk_mb": 1280}))?;
    e.ssh(&big)
        .exec("head -c 1073741824 /dev/urandom > /workspace/one-gib")
        .timeout(Duration::from_secs(600))
        .run()?
        .success()?;
    let began = Instant::now();
    let forked = e.call(
        &e.alice,
        "POST",
        &format!("/v1/sandboxes/{big}/fork"),
        Some(json!({"count": 4})),
    )?;
    let forked_big = began.elapsed();
    let forked = expect(&forked, 201, "fork 1 GiB")?;
    let frozen_big = forked["frozen_ms"].as_u64().unwrap_or(0);
    let snapshot = forked["snapshot"]["id"].as_str().unwrap().to_owned();
    let ids: Vec<String> = forked["sandboxes"]
        .as_array()
        .context("sandboxes")?
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_owned())
        .collect();
    for id in &ids {
        e.ssh(id)
            .exec("wc -c < /workspace/one-gib")
            .run()?
            .success()?;
    }
    let listen = d.runner.listen_dir();
    let mut disk = allocated(&listen.join(".snapshots").join(&snapshot).join("disk.img"));
    for id in &ids {
        disk += allocated(&listen.join(".disks").join(format!("{id}.img")));
    }
    let layer: u64 = docker_ok(&[
        "image",
        "inspect",
        "--format",
        "{{.Size}}",
        &format!("warren-snapshot:{snapshot}"),
    ])
    .ok()
    .and_then(|s| s.parse().ok())
    .unwrap_or(0);
    let base_size: u64 = docker_ok(&["image", "inspect", "--format", "{{.Size}}", BASE])
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let mib = |b: u64| b as f64 / f64::from(1 << 20);
    println!(
        "load average (1, 5, 15 min) before: {}, after: {}",
        load_before.trim(),
        load().trim()
    );
    println!("| measure | target | measured |");
    println!("|---|---|---|");
    println!(
        "| plain create of {BASE} → first `ssh true`, p50 of {RUNS} | (reference) | {:.2} s |",
        median(plain).as_secs_f64()
    );
    println!(
        "| fork of a sandbox with 10 MiB changed → first `ssh <fork> true`, p50 of {RUNS} | < 1 s | {:.2} s |",
        median(one).as_secs_f64()
    );
    println!(
        "| 4 forks at once → all four answer `ssh true` | < 3 s | {:.2} s |",
        four.as_secs_f64()
    );
    println!(
        "| source frozen during a snapshot, 10 MiB changed (p50) / 1 GiB workspace | < 0.5 s / report | {:.2} s / {:.2} s |",
        median(frozen_small).as_secs_f64(),
        frozen_big as f64 / 1000.0
    );
    println!(
        "| disk used by 4 forks of a sandbox with a 1 GiB workspace (snapshot copy + 4 fork disks + root layer) | < 1.5 GiB | {:.0} MiB (4 forks made and answering in {:.1} s) |",
        mib(disk + layer.saturating_sub(base_size)),
        forked_big.as_secs_f64()
    );
    for id in ids.iter().chain([&big]) {
        delete(id)?;
    }
    // Where the runner's time went (its lines with each phase's milliseconds).
    let log = std::fs::read_to_string(&d.runner.log).unwrap_or_default();
    let phases = [
        "snapshot taken",
        "snapshot image loaded",
        "created from a snapshot",
        "prepared_ms",
    ];
    for line in log.lines().filter(|l| phases.iter().any(|p| l.contains(p))) {
        println!("{line}");
    }
    Ok(())
}

/// The process backend keeps no snapshots: a snapshot or a fork of its sandbox is a
/// 409 saying so, and leaves nothing behind.
#[test]
fn the_process_backend_refuses_snapshots_and_forks() -> Result<()> {
    let stack = Stack::start()?;
    let _runner = stack.runner("r1")?;
    let api = stack.api(Duration::from_secs(1))?;
    let key = stack.admin("root")?;
    let made = stack.call(&api, "POST", "/v1/sandboxes", Some(&key), Some(json!({})))?;
    let id = expect(&made, 201, "create")?["id"]
        .as_str()
        .unwrap()
        .to_owned();
    for (path, body) in [
        (format!("/v1/sandboxes/{id}/snapshots"), json!({})),
        (format!("/v1/sandboxes/{id}/fork"), json!({"count": 2})),
    ] {
        let reply = stack.call(&api, "POST", &path, Some(&key), Some(body))?;
        expect(&reply, 409, &path)?;
        ensure!(
            reply.error_code() == "conflict" && reply.text.contains("process backend"),
            "{path}: {}",
            reply.text
        );
    }
    let snapshots = stack
        .call(&api, "GET", "/v1/snapshots", Some(&key), None)?
        .json();
    ensure!(
        snapshots["snapshots"].as_array().is_some_and(Vec::is_empty),
        "{snapshots}"
    );
    let list = stack
        .call(&api, "GET", "/v1/sandboxes", Some(&key), None)?
        .json();
    ensure!(
        list["sandboxes"].as_array().map(Vec::len) == Some(1),
        "a refused fork left a sandbox: {list}"
    );
    Ok(())
}
