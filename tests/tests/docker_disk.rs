//! A sandbox's disk quota (`disk_mb`) on the Docker backend, end to end through the
//! HTTP API: writes beyond it fail (ENOSPC) in /workspace and /var/tmp for the
//! sandbox user and for container root, a writable layer over it gets the sandbox
//! stopped (`disk_quota`), the runner's disk holds only the quota, a neighbour keeps
//! working, capacity counts quotas, a file deleted while open counts too, an
//! image's VOLUME is on the sandbox's disk, and stop/start/delete leave no mount or
//! loop device behind. One stack, `dd` with large blocks.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use serde_json::json;
use warren_keys::SandboxId;
use warren_tests::Client;
use warren_tests::stack::Reply;
use warren_tests::stack::{DockerStack, docker, docker_ok};
use warren_tests::util::wait_until;

const BUSYBOX: &str = "warren-busybox:latest";
/// 3 GiB in 4 MiB blocks: three times the quota under test.
const DD_3G: &str = "bs=4M count=768";
/// For the writable layer, which the watcher measures each second: more than a
/// fast writer can put there in the seconds a stop takes.
const DD_6G: &str = "bs=4M count=1536";

/// The mounts and loop devices of the disks of `slots`.
fn disk_traces(listen: &Path, slots: &[String]) -> Result<Vec<String>> {
    let disks = listen.join(".disks").display().to_string();
    let mounts = std::fs::read_to_string("/proc/self/mountinfo")?;
    let loops = warren_tests::Cmd::new("losetup")
        .args(["-a"])
        .run()?
        .success()?;
    Ok(mounts
        .lines()
        .chain(loops.stdout_str().lines())
        .filter(|l| l.contains(&disks) && slots.iter().any(|s| l.contains(s.as_str())))
        .map(str::to_owned)
        .collect())
}

/// The host directory behind a sandbox's /workspace (`<listen>/.disks/<slot>/workspace`).
fn workspace_source(id: &str) -> Result<PathBuf> {
    Ok(PathBuf::from(docker_ok(&[
        "inspect",
        "--format",
        "{{range .Mounts}}{{if eq .Destination \"/workspace\"}}{{.Source}}{{end}}{{end}}",
        &format!("warren-{id}"),
    ])?))
}

/// What the disk image behind `workspace` holds of the runner host's disk, in MiB.
fn image_allocated_mb(workspace: &Path) -> Result<u64> {
    let mount = workspace.parent().context("a mount point")?;
    let image = mount.with_extension("img");
    let blocks = std::fs::metadata(&image)
        .with_context(|| image.display().to_string())?
        .blocks();
    Ok((blocks * 512) >> 20)
}

/// `dd` of 3 GiB to `path` must fail for lack of space.
fn fills_up(out: &warren_tests::Output, who: &str, path: &str) -> Result<()> {
    ensure!(
        out.code() != Some(0) && out.to_string().contains("No space left on device"),
        "{who} wrote 3 GiB to {path}:\n{out}"
    );
    Ok(())
}

fn as_root(id: &str, command: &str) -> Result<warren_tests::Output> {
    docker(&[
        "exec",
        "-u",
        "0",
        &format!("warren-{id}"),
        "sh",
        "-c",
        command,
    ])
}

#[test]
fn disk_quota_holds_for_the_user_and_container_root() -> Result<()> {
    let Some(d) = DockerStack::start(&[
        "--disk-mb",
        "512",
        "--capacity-disk-mb",
        "3072",
        "--pool",
        "warren-busybox:latest=1",
    ])?
    else {
        return Ok(());
    };
    let stack = &d.stack;
    let api = stack.api(Duration::from_secs(1))?;
    let key = stack.rt.block_on(async {
        let key = stack.store.create_api_key(&d.owner.id, "disk").await?;
        anyhow::Ok(key.secret.expose().to_owned())
    })?;
    let call = |method: &str, path: &str, body: Option<serde_json::Value>| -> Result<Reply> {
        stack.call(&api, method, path, Some(&key), body)
    };
    let count = || -> Result<usize> {
        let list = call("GET", "/v1/sandboxes", None)?;
        Ok(list.json()["sandboxes"].as_array().map_or(0, Vec::len))
    };
    let quota_stopped = |id: &str| {
        d.status(&SandboxId::parse(id).unwrap())
            .ok()
            .flatten()
            .is_some_and(|s| !s.running && s.stopped_reason.as_deref() == Some("disk_quota"))
    };
    let ssh = |id: &str| -> Client {
        d.client
            .clone()
            .with_target(stack.target(&SandboxId::parse(id).unwrap()))
    };

    // Bad values are refused and make nothing.
    for bad in [
        json!(0),
        json!(255),
        json!(1_048_577),
        json!(-1),
        json!(1.5),
        json!("1024"),
    ] {
        let reply = call(
            "POST",
            "/v1/sandboxes",
            Some(json!({"image": BUSYBOX, "disk_mb": bad})),
        )?;
        ensure!(
            (400..500).contains(&reply.status),
            "disk_mb {bad}: {} {}",
            reply.status,
            reply.text
        );
    }
    ensure!(count()? == 0, "a refused create left a sandbox");
    d.wait_for_pool(1, "before the creates")?;

    // Two sandboxes: one asks for 1 GiB, the other gets the runner's default.
    let made = call(
        "POST",
        "/v1/sandboxes",
        Some(json!({"image": BUSYBOX, "disk_mb": 1024})),
    )?;
    ensure!(made.status == 201, "create: {}", made.text);
    let a = made.json()["id"].as_str().unwrap().to_owned();
    let made = call("POST", "/v1/sandboxes", Some(json!({"image": BUSYBOX})))?;
    ensure!(made.status == 201, "create: {}", made.text);
    let b = made.json()["id"].as_str().unwrap().to_owned();
    let shown = call("GET", &format!("/v1/sandboxes/{a}"), None)?.json();
    ensure!(shown["disk_mb"] == 1024, "{shown}");
    let shown = call("GET", &format!("/v1/sandboxes/{b}"), None)?.json();
    ensure!(shown["disk_mb"] == 512, "the runner's default: {shown}");
    // The pool's member has the default quota: only the default claims it.
    let ids = [&a, &b].map(|id| SandboxId::parse(id).unwrap());
    ensure!(
        !d.claimed(&ids[0])? && d.claimed(&ids[1])?,
        "another quota must be a cold create, the default a claim"
    );
    // The disks' slots (a claimed or spare-made sandbox has its slot's).
    let slots: Vec<String> = [&a, &b]
        .into_iter()
        .map(|id| {
            let source = workspace_source(id)?;
            let slot = source.parent().and_then(Path::file_name).context("slot")?;
            Ok(slot.to_string_lossy().into_owned())
        })
        .collect::<Result<_>>()?;

    // 1536 of 3072 MiB are held: 2048 more do not fit.
    let refused = call(
        "POST",
        "/v1/sandboxes",
        Some(json!({"image": BUSYBOX, "disk_mb": 2048})),
    )?;
    ensure!(
        refused.status == 503
            && refused.error_code() == "no_capacity"
            && refused.text.contains("disk"),
        "{} {}",
        refused.status,
        refused.text
    );
    ensure!(count()? == 2, "a create without room left a sandbox");

    // The quota holds in /workspace and /var/tmp, as the user and as container root.
    let ua = ssh(&a);
    let ub = ssh(&b);
    let workspace = workspace_source(&a)?;
    let began = Instant::now();
    let out = ua
        .exec(&format!("dd if=/dev/zero of=/workspace/f {DD_3G}"))
        .timeout(Duration::from_secs(300))
        .run()?;
    fills_up(&out, "the sandbox user", "/workspace")?;
    let filled_in = began.elapsed();
    fills_up(
        &as_root(&a, &format!("dd if=/dev/zero of=/var/tmp/g {DD_3G}"))?,
        "container root",
        "/var/tmp",
    )?;
    // Meanwhile the neighbour works.
    let out = ub
        .exec("echo fine > /workspace/n && cat /workspace/n && df -m /workspace | tail -n1")
        .run()?
        .success()?;
    let size: u64 = out
        .stdout_str()
        .lines()
        .nth(1)
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(u64::MAX);
    ensure!(
        out.stdout_str().starts_with("fine") && size <= 512,
        "the neighbour (512 MiB):\n{out}"
    );
    // Each removes its own (sticky /var/tmp; container root has no DAC override).
    ua.exec("rm -f /workspace/f").run()?.success()?;
    as_root(&a, "rm -f /var/tmp/g")?.success()?;
    let out = ua
        .exec(&format!("dd if=/dev/zero of=/var/tmp/f {DD_3G}"))
        .timeout(Duration::from_secs(300))
        .run()?;
    fills_up(&out, "the sandbox user", "/var/tmp")?;
    // Container root has no DAC override: it writes where the user lets it.
    ua.exec("rm -f /var/tmp/f && mkdir -m 777 /workspace/open")
        .run()?
        .success()?;
    fills_up(
        &as_root(&a, &format!("dd if=/dev/zero of=/workspace/open/g {DD_3G}"))?,
        "container root",
        "/workspace",
    )?;
    // Sticky scratch directories, as usual.
    let out = ua.exec("stat -c %a /tmp /var/tmp").run()?.success()?;
    ensure!(
        out.stdout_str().split_whitespace().all(|m| m == "1777"),
        "{out}"
    );
    let held = image_allocated_mb(&workspace)?;
    ensure!(
        held <= 1024,
        "the disk of a 1024 MiB quota holds {held} MiB"
    );
    eprintln!("filled 1 GiB in {filled_in:?}; the disk holds {held} MiB of the host's");

    // Container root writing into the writable layer: stopped within seconds.
    let writer = std::thread::spawn({
        let a = a.clone();
        move || as_root(&a, &format!("dd if=/dev/zero of=/big {DD_6G}"))
    });
    let began = Instant::now();
    let stopped = wait_until(Duration::from_secs(30), || quota_stopped(&a));
    let stopped_in = began.elapsed();
    let _ = writer.join();
    ensure!(stopped, "not stopped for its quota:\n{}", d.runner_log());
    let upper = docker_ok(&[
        "inspect",
        "--format",
        "{{.GraphDriver.Data.UpperDir}}",
        &format!("warren-{a}"),
    ])?;
    let du = warren_tests::Cmd::new("du").args(["-sm", &upper]).run()?;
    let layer: u64 = du
        .stdout_str()
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .context("du")?;
    eprintln!("a layer over the quota was stopped after {stopped_in:?}; it holds {layer} MiB");
    // Measured (every second), so a writer gets a second or so of its speed past
    // the quota: on a quiet machine dd writes the layer at about 1 GiB/s. It is
    // stopped long before its 6 GiB; never the host.
    ensure!(
        held + layer < 1024 + 2560,
        "a 1024 MiB quota let {held} + {layer} MiB through"
    );
    let reported = wait_until(Duration::from_secs(20), || {
        call("GET", &format!("/v1/sandboxes/{a}/events"), None)
            .is_ok_and(|r| r.text.contains("disk_quota"))
    });
    ensure!(reported, "the API does not say disk_quota");

    // Stop and start leave exactly the running sandbox's mount; the workspace stays.
    let listen = d.runner.listen_dir().to_owned();
    ensure!(call("POST", &format!("/v1/sandboxes/{b}/stop"), None)?.status == 200);
    let traces = disk_traces(&listen, &slots)?;
    ensure!(traces.is_empty(), "stopped sandboxes hold: {traces:#?}");
    ensure!(call("POST", &format!("/v1/sandboxes/{b}/start"), None)?.status == 200);
    let traces = disk_traces(&listen, &slots)?;
    ensure!(
        traces
            .iter()
            .filter(|l| !l.starts_with("/dev/loop"))
            .count()
            == 1,
        "one running sandbox: {traces:#?}"
    );
    let out = ub.exec("cat /workspace/n").run()?.success()?;
    ensure!(out.stdout_trimmed() == "fine", "{out}");

    // A file deleted while open holds its blocks where no walk finds them: the
    // sandbox user writes through one in its home (on the writable layer).
    let home = ub.exec("echo $HOME").run()?.success()?;
    let home = home.stdout_trimmed();
    ensure!(
        home.starts_with('/') && !home.starts_with("/workspace") && !home.starts_with("/tmp"),
        "the sandbox user's home must be on the writable layer: {home}"
    );
    let writer = std::thread::spawn({
        let ub = ub.clone();
        move || {
            ub.exec(&format!(
                "exec 3>\"$HOME/held\"; rm \"$HOME/held\"; dd if=/dev/zero {DD_3G} >&3; sleep 90"
            ))
            .timeout(Duration::from_secs(120))
            .run()
        }
    });
    let stopped = wait_until(Duration::from_secs(60), || quota_stopped(&b));
    let written = writer.join();
    ensure!(
        stopped,
        "a deleted open file was not counted ({written:?}):\n{}",
        d.runner_log()
    );

    // Delete leaves nothing: no mount, no loop device, no image.
    for id in [&a, &b] {
        ensure!(call("DELETE", &format!("/v1/sandboxes/{id}"), None)?.status < 300);
    }
    let traces = disk_traces(&listen, &slots)?;
    ensure!(traces.is_empty(), "deleted sandboxes hold: {traces:#?}");
    let left: Vec<_> = std::fs::read_dir(listen.join(".disks"))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| slots.iter().any(|s| name.starts_with(s.as_str())))
        .collect();
    ensure!(left.is_empty(), "left in .disks: {left:?}");

    // An image's VOLUME is on the sandbox's disk, seeded from the image as Docker
    // seeds a volume, and goes with the sandbox.
    let _image = VolumeImage::build()?;
    let made = call(
        "POST",
        "/v1/sandboxes",
        Some(json!({"image": VolumeImage::TAG, "disk_mb": 256})),
    )?;
    ensure!(made.status == 201, "create: {}", made.text);
    let v = made.json()["id"].as_str().unwrap().to_owned();
    let slot = workspace_source(&v)?
        .parent()
        .and_then(Path::file_name)
        .context("slot")?
        .to_string_lossy()
        .into_owned();
    let volumes = || {
        docker_ok(&[
            "volume",
            "ls",
            "-q",
            "--filter",
            &format!("name=warren-{slot}-volume-"),
        ])
    };
    ensure!(!volumes()?.is_empty(), "no volume of the sandbox's own");
    let uv = ssh(&v);
    let out = uv
        .exec("cat /data/seed && stat -c %a /data")
        .run()?
        .success()?;
    ensure!(
        out.stdout_str() == "seed\n1777\n",
        "not seeded from the image:\n{out}"
    );
    let out = uv
        .exec(&format!("dd if=/dev/zero of=/data/f {DD_3G}"))
        .timeout(Duration::from_secs(300))
        .run()?;
    fills_up(&out, "the sandbox user", "an image's volume")?;
    // Stop releases the disk (the volume's mount too); start brings it back.
    ensure!(call("POST", &format!("/v1/sandboxes/{v}/stop"), None)?.status == 200);
    let traces = disk_traces(&listen, std::slice::from_ref(&slot))?;
    let volume_mounts: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")?
        .lines()
        .filter(|l| l.contains(&format!("warren-{slot}-volume-")))
        .map(str::to_owned)
        .collect();
    ensure!(
        traces.is_empty(),
        "a stopped sandbox with a volume holds: {traces:#?}; its volumes' mounts: {volume_mounts:#?}"
    );
    ensure!(call("POST", &format!("/v1/sandboxes/{v}/start"), None)?.status == 200);
    let out = uv.exec("cat /data/seed && rm /data/f").run()?.success()?;
    ensure!(out.stdout_trimmed() == "seed", "{out}");
    ensure!(call("DELETE", &format!("/v1/sandboxes/{v}"), None)?.status < 300);
    ensure!(volumes()?.is_empty(), "the volume outlived its sandbox");
    let traces = disk_traces(&listen, std::slice::from_ref(&slot))?;
    ensure!(
        traces.is_empty(),
        "a deleted sandbox with a volume holds: {traces:#?}"
    );
    Ok(())
}

/// An image declaring a volume (seeded, sticky), built on the busybox image
/// without a registry; its tag goes when dropped.
struct VolumeImage;

impl VolumeImage {
    const TAG: &str = "warren-disktest-volume:latest";

    fn build() -> Result<VolumeImage> {
        let dir = tempfile::tempdir()?;
        std::fs::write(
            dir.path().join("Dockerfile"),
            format!(
                "FROM {BUSYBOX}\nRUN mkdir /data && echo seed > /data/seed && chmod 1777 /data\n\
                 VOLUME /data\n"
            ),
        )?;
        warren_tests::Cmd::new("docker")
            .env("DOCKER_BUILDKIT", "0")
            .args(["build", "-q", "-t", Self::TAG])
            .arg(dir.path())
            .timeout(Duration::from_secs(120))
            .run()?
            .success()
            .context("docker build")?;
        Ok(VolumeImage)
    }
}

impl Drop for VolumeImage {
    fn drop(&mut self) {
        let _ = docker(&["rmi", "-f", Self::TAG]);
    }
}
