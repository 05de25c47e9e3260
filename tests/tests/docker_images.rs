//! A Docker runner's image allow-list, end to end: against the machine's real Docker
//! engine, an image of the operator's that is not allowed (`acme-private`, a tag of
//! the busybox image) is refused exactly like a missing one and leaves nothing
//! behind, Warren's own images work by default, and `--allow-image acme-*` lets the
//! private one in (and replaces the defaults). In CI a missing engine is a failure,
//! not a skip.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use anyhow::{Result, bail, ensure};
use warren_keys::SandboxId;
use warren_runner::protocol::{Request, Response, SandboxSpec};
use warren_tests::stack::{DockerStack, docker, docker_ok};

const BUSYBOX: &str = "warren-busybox:latest";

fn check(d: &DockerStack, image: Option<&str>) -> Result<Response> {
    d.control(Request::Check { spec: spec(image) })
}

fn create(d: &DockerStack, id: &SandboxId, image: &str) -> Result<Response> {
    d.control(Request::Create {
        sandbox: id.clone(),
        token_key: d.stack.verifier.clone(),
        authorized_keys: vec![],
        spec: spec(Some(image)),
    })
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
    let refused = not_found(&check(&d, Some(&private))?)?;
    let absent = not_found(&check(&d, Some(&missing))?)?;
    ensure!(
        refused.replace(&private, "X") == absent.replace(&missing, "X"),
        "a refused image is told apart from a missing one:\n{refused}\n{absent}"
    );
    ensure!(refused.contains("warren-*"), "{refused}");
    let id = SandboxId::generate();
    not_found(&create(&d, &id, &private)?)?;
    ensure!(!anything_of(&id)?, "a refused create left something behind");
    // An allowed name is not a way around: the engine also finds images by id, and
    // a hex id matches no `warren-*`.
    let busybox_id = docker_ok(&["image", "inspect", "--format", "{{.Id}}", BUSYBOX])?;
    let short = busybox_id.trim_start_matches("sha256:")[..12].to_owned();
    not_found(&check(&d, Some(&short))?)?;

    // Warren's own image works.
    ensure!(matches!(check(&d, Some(BUSYBOX))?, Response::Ok));
    let ok = SandboxId::generate();
    let out = create(&d, &ok, BUSYBOX)?;
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
    d.restart_runner_with(&[
        "--default-image",
        BUSYBOX,
        "--allow-image",
        "acme-*",
        "--allow-image",
        &secret_short,
    ])?;
    ensure!(matches!(check(&d, Some(&private))?, Response::Ok));
    ensure!(matches!(check(&d, None)?, Response::Ok));
    ensure!(matches!(check(&d, Some(BUSYBOX))?, Response::Ok));
    let refused = not_found(&check(&d, Some("warren-base:latest"))?)?;
    ensure!(refused.contains("acme-*"), "{refused}");
    not_found(&check(&d, Some(&secret_short))?)?;
    let sid = SandboxId::generate();
    not_found(&create(&d, &sid, &secret_short)?)?;
    ensure!(
        !anything_of(&sid)?,
        "a refused create left something behind"
    );

    let id = SandboxId::generate();
    let out = create(&d, &id, &private)?;
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
