//! The static agent needs nothing from its image: it serves `ssh` and `sftp` as PID 1
//! of a container whose whole filesystem is busybox, a passwd file and a home. Needs
//! a Docker engine (in CI a missing engine is a failure) and Debian's busybox-static.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::os::unix::fs::{chown, symlink};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use warren_tests::Cmd;
use warren_tests::util;
use warren_tests::workspace_root;
use warren_tests::{Client, Target};

const IMAGE: &str = "warren-test-busybox:latest";

fn docker_available() -> bool {
    Cmd::new("docker")
        .args(["version", "--format", "{{.Server.APIVersion}}"])
        .timeout(Duration::from_secs(20))
        .run()
        .is_ok_and(|out| out.code() == Some(0))
}

/// Builds the static agent (a no-op when it is up to date) and returns its path.
fn static_agent() -> Result<PathBuf> {
    let out = Cmd::new(workspace_root().join("scripts/build-static-agent"))
        .timeout(Duration::from_secs(900))
        .run()?
        .success()
        .context("scripts/build-static-agent")?;
    // The script prints a path relative to the workspace (or CARGO_TARGET_DIR's own).
    let path = workspace_root().join(out.stdout_str().trim());
    path.canonicalize()
        .with_context(|| format!("no static agent at {}", path.display()))
}

/// A busybox-only root filesystem imported as an image: no libc, no bash, no NSS.
fn busybox_image(scratch: &Path) -> Result<()> {
    let root = scratch.join("rootfs");
    for dir in [
        "bin",
        "etc",
        "home/sandbox",
        "tmp",
        "proc",
        "dev",
        "sys",
        "warren",
    ] {
        fs::create_dir_all(root.join(dir))?;
    }
    fs::copy("/bin/busybox", root.join("bin/busybox"))
        .context("busybox-static is needed: apt-get install busybox-static")?;
    for applet in ["sh", "ls", "cat", "id", "echo", "sleep"] {
        symlink("busybox", root.join("bin").join(applet))?;
    }
    // bash is named on purpose: the agent falls back to /bin/sh when the image lacks it.
    fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nsandbox:x:1000:1000::/home/sandbox:/bin/bash\n",
    )?;
    fs::write(root.join("etc/group"), "root:x:0:\nsandbox:x:1000:\n")?;
    chown(root.join("home/sandbox"), Some(1000), Some(1000))?;
    let tar = scratch.join("rootfs.tar");
    Cmd::new("tar")
        .arg("-C")
        .arg(&root)
        .arg("-cf")
        .arg(&tar)
        .arg(".")
        .run()?
        .success()?;
    // The previous run's image goes first, or every run would leave one dangling.
    let _ = Cmd::new("docker").args(["rmi", "-f", IMAGE]).run();
    Cmd::new("docker")
        .args(["import", &tar.to_string_lossy(), IMAGE])
        .timeout(Duration::from_secs(120))
        .run()?
        .success()
        .context("docker import")?;
    Ok(())
}

/// Removes the container however the test ends.
struct Container(String);

impl Drop for Container {
    fn drop(&mut self) {
        let _ = Cmd::new("docker").args(["rm", "-f", &self.0]).run();
    }
}

#[test]
fn static_agent_serves_ssh_and_sftp_in_a_busybox_only_container() -> Result<()> {
    if !util::prerequisite(docker_available(), "a Docker engine")? {
        return Ok(());
    }
    let agent = static_agent()?;
    let scratch = tempfile::Builder::new()
        .prefix("warren-busybox-")
        .tempdir()?;
    busybox_image(scratch.path())?;

    let mounted = scratch.path().join("mounted");
    fs::create_dir_all(&mounted)?;
    fs::copy(&agent, mounted.join("warren-agent"))?;
    let port = util::free_port()?;
    let mut client = Client::new(Target::new("127.0.0.1", port, "sbx-busybox"))?;
    fs::write(mounted.join("authorized_keys"), client.public_key())?;

    let name = format!("warren-test-{}", std::process::id());
    let out = Cmd::new("docker")
        .args(["run", "-d", "--name", &name, "-p"])
        .arg(format!("127.0.0.1:{port}:2222"))
        .arg("-v")
        .arg(format!("{}:/warren:ro", mounted.display()))
        .args([
            IMAGE,
            "/warren/warren-agent",
            "serve",
            "--sandbox-id=sbx-busybox",
        ])
        .args(["--listen=0.0.0.0:2222", "--host-key=/tmp/host_key"])
        .args([
            "--authorized-keys=/warren/authorized_keys",
            "--user=sandbox",
        ])
        .timeout(Duration::from_secs(60))
        .run()?;
    let _container = Container(name.clone());
    out.success().context("docker run")?;

    let ready = util::wait_until(Duration::from_secs(20), || {
        Cmd::new("docker")
            .args(["logs", &name])
            .run()
            .is_ok_and(|o| o.stdout_str().contains("listening on"))
    });
    ensure!(ready, "the agent did not come up in the container");
    client = client.with_option("ConnectTimeout=20");

    let out = client
        .exec("cat /proc/1/comm; id -u; echo $SHELL $HOME")
        .run()?
        .success()?;
    ensure!(
        out.stdout_str() == "warren-agent\n1000\n/bin/sh /home/sandbox\n",
        "unexpected session in the container:\n{out}"
    );

    let local = scratch.path().join("up.bin");
    fs::write(&local, util::random_bytes(1 << 20)?)?;
    let batch = scratch.path().join("batch");
    fs::write(
        &batch,
        format!(
            "put {} /home/sandbox/up.bin\nls -l /home/sandbox\n",
            local.display()
        ),
    )?;
    let out = client
        .sftp(&["-b", &batch.to_string_lossy()])
        .run()?
        .success()?;
    ensure!(
        out.stdout_str().contains("up.bin"),
        "sftp in the container:\n{out}"
    );
    let out = client
        .exec("ls -ln /home/sandbox/up.bin")
        .run()?
        .success()?;
    ensure!(
        out.stdout_str().contains(" 1000 ") && out.stdout_str().contains("1048576"),
        "the uploaded file is not the user's, or not whole:\n{out}"
    );
    Ok(())
}
