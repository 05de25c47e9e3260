//! A Docker runner's image allow-list, end to end: against the machine's real Docker
//! engine, an image of the operator's that is not allowed (`acme-private`, a tag of
//! the busybox image) is refused exactly like a missing one and leaves nothing
//! behind, Warren's own images work by default, and `--allow-image acme-*` lets the
//! private one in (and replaces the defaults). In CI a missing engine is a failure,
//! not a skip.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use common::{RunnerProc, Stack};
use warren_keys::SandboxId;
use warren_runner::protocol::{Request, Response, SandboxSpec};
use warren_tests::util::{self, prerequisite};
use warren_tests::{Cmd, workspace_root};

const BUSYBOX: &str = "warren-busybox:latest";

fn docker(args: &[&str]) -> Result<warren_tests::Output> {
    Cmd::new("docker")
        .args(args.iter().copied())
        .timeout(Duration::from_secs(120))
        .run()
}

fn docker_ok(args: &[&str]) -> Result<String> {
    Ok(docker(args)?.success()?.stdout_trimmed().to_owned())
}

fn docker_available() -> bool {
    docker(&["version", "--format", "{{.Server.APIVersion}}"]).is_ok_and(|o| o.code() == Some(0))
}

/// Builds an image with its `images/` script (a no-op when it exists).
fn image(script: &str) -> Result<()> {
    Cmd::new(workspace_root().join("images").join(script))
        .timeout(Duration::from_secs(1800))
        .run()?
        .success()
        .with_context(|| format!("images/{script}"))?;
    Ok(())
}

fn static_agent() -> Result<PathBuf> {
    let out = Cmd::new(workspace_root().join("scripts/build-static-agent"))
        .timeout(Duration::from_secs(900))
        .run()?
        .success()
        .context("scripts/build-static-agent")?;
    Ok(workspace_root()
        .join(out.stdout_str().trim())
        .canonicalize()?)
}

/// A gateway and one Docker runner. Removes every Docker object of the runner when
/// dropped. (A trimmed copy of the one in `docker.rs`.)
struct DockerStack {
    stack: Stack,
    runner: RunnerProc,
    args: Vec<String>,
}

impl DockerStack {
    /// `None` when Docker (or root) is missing outside CI (the test is then skipped).
    fn start(extra: &[&str]) -> Result<Option<DockerStack>> {
        if !prerequisite(docker_available(), "a Docker engine")? {
            return Ok(None);
        }
        if !prerequisite(
            util::running_as_root(),
            "root (the docker backend needs it)",
        )? {
            return Ok(None);
        }
        let agent = static_agent()?;
        image("build-busybox")?;
        let stack = Stack::start()?;
        let mut args = vec![
            "--backend".to_owned(),
            "docker".to_owned(),
            "--agent-bin".to_owned(),
            agent.to_string_lossy().into_owned(),
        ];
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let runner = stack.runner_with("docker", &argv)?;
        Ok(Some(DockerStack {
            stack,
            runner,
            args,
        }))
    }

    fn control(&self, request: Request) -> Result<Response> {
        self.stack
            .rt
            .block_on(self.stack.hub.control(&self.runner.id, &request))
            .map_err(Into::into)
    }

    /// Restarts the runner with `extra` in place of the arguments it was started with.
    fn restart_runner(&mut self, extra: &[&str]) -> Result<()> {
        self.args.truncate(4);
        self.args.extend(extra.iter().map(|s| (*s).to_owned()));
        let argv: Vec<&str> = self.args.iter().map(String::as_str).collect();
        self.stack.restart(&mut self.runner, &argv)
    }

    fn check(&self, image: Option<&str>) -> Result<Response> {
        self.control(Request::Check { spec: spec(image) })
    }

    fn create(&self, id: &SandboxId, image: &str) -> Result<Response> {
        self.control(Request::Create {
            sandbox: id.clone(),
            token_key: self.stack.verifier.clone(),
            authorized_keys: vec![],
            spec: spec(Some(image)),
        })
    }
}

impl Drop for DockerStack {
    fn drop(&mut self) {
        self.runner.kill();
        let label = format!("label=org.warren.runner={}", self.runner.id);
        for (list, rm) in [
            (
                vec!["ps", "-aq", "--filter", &label],
                vec!["rm", "-f", "-v"],
            ),
            (
                vec!["volume", "ls", "-q", "--filter", &label],
                vec!["volume", "rm", "-f"],
            ),
            (
                vec!["network", "ls", "-q", "--filter", &label],
                vec!["network", "rm"],
            ),
        ] {
            let Ok(ids) = docker_ok(&list) else { continue };
            for id in ids.split_whitespace() {
                let mut argv = rm.clone();
                argv.push(id);
                let _ = docker(&argv);
            }
        }
    }
}

/// A local image tag, removed (only the tag) when dropped.
struct Tag(String);

impl Drop for Tag {
    fn drop(&mut self) {
        let _ = docker(&["rmi", &self.0]);
    }
}

fn spec(image: Option<&str>) -> SandboxSpec {
    SandboxSpec {
        image: image.map(Into::into),
        ..SandboxSpec::default()
    }
}

/// The message of an `image_not_found` refusal.
fn not_found(out: &Response) -> Result<String> {
    match out {
        Response::Refused { code, message }
            if code == "image_not_found" && message.contains("is not on this runner") =>
        {
            Ok(message.clone())
        }
        other => bail!("expected an image_not_found refusal, got {other:?}"),
    }
}

/// Whether any Docker object of sandbox `id` exists.
fn anything_of(id: &SandboxId) -> Result<bool> {
    let name = format!("warren-{id}");
    for args in [
        vec!["container", "inspect", name.as_str()],
        vec!["network", "inspect", name.as_str()],
        vec!["volume", "inspect", &format!("{name}-workspace")],
    ] {
        if docker(&args)?.code() == Some(0) {
            return Ok(true);
        }
    }
    Ok(false)
}

#[test]
fn only_allowed_images_run_and_a_refused_one_looks_missing() -> Result<()> {
    let Some(mut d) = DockerStack::start(&[])? else {
        return Ok(());
    };
    // The operator's private image: the busybox image under another name (with the
    // process id, so that runs of this test on one engine do not race).
    let private = format!("acme-private:{}", std::process::id());
    docker_ok(&["tag", BUSYBOX, &private])?;
    let _tag = Tag(private.clone());
    let missing = format!("acme-missing:{}", std::process::id());

    // Default allow-list: refused before and at create, like a missing image, and
    // nothing is made.
    let refused = not_found(&d.check(Some(&private))?)?;
    let absent = not_found(&d.check(Some(&missing))?)?;
    ensure!(
        refused.replace(&private, "X") == absent.replace(&missing, "X"),
        "a refused image is told apart from a missing one:\n{refused}\n{absent}"
    );
    ensure!(refused.contains("warren-*"), "{refused}");
    let id = SandboxId::generate();
    not_found(&d.create(&id, &private)?)?;
    ensure!(!anything_of(&id)?, "a refused create left something behind");
    // An allowed name is not a way around: the engine also finds images by id, and
    // a hex id matches no `warren-*`.
    let busybox_id = docker_ok(&["image", "inspect", "--format", "{{.Id}}", BUSYBOX])?;
    let short = busybox_id.trim_start_matches("sha256:")[..12].to_owned();
    not_found(&d.check(Some(&short))?)?;

    // Warren's own image works.
    ensure!(matches!(d.check(Some(BUSYBOX))?, Response::Ok));
    let ok = SandboxId::generate();
    let out = d.create(&ok, BUSYBOX)?;
    ensure!(matches!(out, Response::Ok), "{out:?}");
    ensure!(anything_of(&ok)?);
    let out = d.control(Request::Delete {
        sandbox: ok.clone(),
    })?;
    ensure!(matches!(out, Response::Ok), "{out:?}");

    // A private image of its own (no allowed name) that an allowed pattern names by
    // its id: found by the engine, and still refused like a missing one.
    let secret = format!("secret-private:{}", std::process::id());
    let tmp = format!("warren-images-{}", std::process::id());
    let _ = docker(&["rm", "-f", &tmp]);
    docker_ok(&["create", "--name", &tmp, BUSYBOX, "true"])?;
    let committed = docker_ok(&[
        "commit",
        "--change",
        "LABEL org.example.private=1",
        &tmp,
        &secret,
    ]);
    let _ = docker(&["rm", "-f", &tmp]);
    committed?;
    let _secret_tag = Tag(secret.clone());
    let secret_id = docker_ok(&["image", "inspect", "--format", "{{.Id}}", &secret])?;
    let secret_short = secret_id.trim_start_matches("sha256:")[..12].to_owned();

    // `--allow-image acme-*`: the private image runs; the list replaces the
    // defaults, but the default image stays allowed.
    d.restart_runner(&[
        "--default-image",
        BUSYBOX,
        "--allow-image",
        "acme-*",
        "--allow-image",
        &secret_short,
    ])?;
    ensure!(matches!(d.check(Some(&private))?, Response::Ok));
    ensure!(matches!(d.check(None)?, Response::Ok));
    ensure!(matches!(d.check(Some(BUSYBOX))?, Response::Ok));
    let refused = not_found(&d.check(Some("warren-base:latest"))?)?;
    ensure!(refused.contains("acme-*"), "{refused}");
    not_found(&d.check(Some(&secret_short))?)?;
    let sid = SandboxId::generate();
    not_found(&d.create(&sid, &secret_short)?)?;
    ensure!(
        !anything_of(&sid)?,
        "a refused create left something behind"
    );

    let id = SandboxId::generate();
    let out = d.create(&id, &private)?;
    ensure!(matches!(out, Response::Ok), "{out:?}");
    let image = docker_ok(&[
        "inspect",
        "--format",
        "{{.Config.Image}}",
        &format!("warren-{id}"),
    ])?;
    ensure!(image == private, "the container runs {image}");
    let out = d.control(Request::Delete {
        sandbox: id.clone(),
    })?;
    ensure!(matches!(out, Response::Ok), "{out:?}");
    ensure!(
        !anything_of(&id)?,
        "a deleted sandbox left something behind"
    );
    Ok(())
}
