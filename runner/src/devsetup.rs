//! A create that follows the repository's devcontainer.json (Docker backend).
//!
//! The file is read on the runner host from the repository itself (one shallow
//! commit in a private scratch directory, never checked out, nothing of it run
//! here) before the container is made, so its `image` and env can shape the
//! container. Its lifecycle commands then run in the sandbox, as the session user,
//! in the workspace: `onCreateCommand`, `updateContentCommand`, `postCreateCommand`
//! once, then `postStartCommand`, which runs again at every later start. A failing
//! command stops the ones after it and leaves the sandbox running so it can be
//! fixed. What happened comes back to the gateway as notes for the sandbox's
//! events.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use warren_keys::SandboxId;

use crate::backend::Backend;
use crate::backend::docker::DockerBackend;
use crate::devcontainer::{self, Command, Context, DevContainer};
use crate::protocol::{Response, SandboxSpec, Secret};
use crate::{Error, Result, git};

/// Where the repository is in a Docker sandbox.
const WORKSPACE: &str = "/workspace";
/// Longest wait for the one file from the repository.
const FETCH_TIMEOUT: Duration = Duration::from_secs(20);
/// How long into a create or start its lifecycle commands may still run: the
/// gateway waits 180 s for the whole answer to a devcontainer create (60 s for
/// others, whose postStartCommand gets less).
const STEPS_DEADLINE: Duration = Duration::from_secs(150);
/// The same for a start the gateway sends without `devcontainer` (after its own
/// restart, it knows no more), which it waits 60 s for.
const PLAIN_STEPS_DEADLINE: Duration = Duration::from_secs(40);
/// The note for a repository whose devcontainer.json could not be fetched.
const NOT_READ: &str =
    "devcontainer: the repository could not be read for a devcontainer.json; defaults used";
/// Lines of a command's output kept in its note.
const NOTE_LINES: usize = 15;
/// Characters of a command's output kept in its note.
const NOTE_CHARS: usize = 2000;

/// What a sandbox's later starts need of its devcontainer.json.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Kept {
    #[serde(default)]
    post_start: Option<Command>,
}

/// Creates (or restarts) `id` as the tunnel's `create` asks; on Docker, with a
/// repository and `spec.devcontainer`, following its devcontainer.json.
pub async fn create(
    backend: &Backend,
    id: &SandboxId,
    token_key: &str,
    authorized_keys: &[String],
    spec: &SandboxSpec,
) -> Result<Response> {
    let deadline = Instant::now()
        + if spec.devcontainer {
            STEPS_DEADLINE
        } else {
            PLAIN_STEPS_DEADLINE
        };
    let Backend::Docker(docker) = backend else {
        backend.create(id, token_key, authorized_keys, spec).await?;
        return Ok(Response::Ok);
    };
    // A start of a sandbox that exists (its file was read, or looked for, at its
    // create): its postStartCommand if it has one, nothing read again.
    if spec.devcontainer || docker.devcontainer_state(id).exists() {
        let known = backend.list().await?.into_iter().find(|s| &s.sandbox == id);
        if let Some(status) = known {
            backend.create(id, token_key, authorized_keys, spec).await?;
            let mut notes = Vec::new();
            if !status.running {
                started(docker, id, deadline, &mut notes).await;
            }
            return Ok(answer(notes));
        }
    }
    let mut spec = spec.clone();
    let mut notes = Vec::new();
    let found = if spec.devcontainer {
        prepare(backend, docker, id, &mut spec, &mut notes).await?
    } else {
        None
    };
    backend
        .create(id, token_key, authorized_keys, &spec)
        .await?;
    if let Some(dc) = found {
        keep(docker, id, &dc);
        let steps: Vec<(&str, &Command)> = devcontainer::CREATE_STEPS
            .iter()
            .chain([&devcontainer::START_STEP])
            .filter_map(|step| dc.step(step).map(|c| (*step, c)))
            .collect();
        run_steps(docker, id, &steps, deadline, &mut notes).await;
    }
    Ok(answer(notes))
}

/// Forgets what `id`'s starts needed (on delete).
pub fn forget(backend: &Backend, id: &SandboxId) {
    if let Backend::Docker(docker) = backend {
        let _ = std::fs::remove_file(docker.devcontainer_state(id));
    }
}

fn answer(notes: Vec<String>) -> Response {
    if notes.is_empty() {
        Response::Ok
    } else {
        Response::Notes { notes }
    }
}

/// Reads and applies the repository's devcontainer.json to `spec` (image, env),
/// noting what it skips. `None`: there is none, or it cannot be used (noted); an
/// image or env the runner refuses is a refusal of the create.
async fn prepare(
    backend: &Backend,
    docker: &DockerBackend,
    id: &SandboxId,
    spec: &mut SandboxSpec,
    notes: &mut Vec<String>,
) -> Result<Option<DevContainer>> {
    let Some(repo) = spec.repo.clone() else {
        return Ok(None);
    };
    if spec.image.is_some() {
        return Ok(None);
    }
    let place = docker.devcontainer_place(id);
    let read = git::read_file_at(
        &place,
        &repo.url,
        repo.base.as_deref(),
        &devcontainer::PATHS,
        repo.token.as_ref().map(Secret::expose),
        devcontainer::MAX_FILE_BYTES,
    );
    let (path, text) = match tokio::time::timeout(FETCH_TIMEOUT, read).await {
        Ok(Ok(Some(found))) => found,
        Ok(Ok(None)) => return Ok(None),
        Ok(Err(Error::Refused { message, .. })) => {
            notes.push(format!("devcontainer: not read: {message}"));
            return Ok(None);
        }
        // The read goes out from the runner host: what went wrong stays in its log,
        // so a tenant's URL cannot make the events a probe of the host's network.
        Ok(Err(e)) => {
            tracing::info!(sandbox = %id, "reading its devcontainer.json: {e:#}");
            notes.push(NOT_READ.to_owned());
            return Ok(None);
        }
        Err(_) => {
            tracing::info!(sandbox = %id, "reading its devcontainer.json: timed out");
            notes.push(NOT_READ.to_owned());
            return Ok(None);
        }
    };
    let (mut dc, report) = match devcontainer::parse(&text) {
        Ok(parsed) => parsed,
        Err(e) => {
            notes.push(format!(
                "devcontainer: {path}: {e}; the sandbox uses the defaults"
            ));
            return Ok(None);
        }
    };
    notes.push(format!("devcontainer: following {path}"));
    notes.extend(report.lines());
    if let Some(image) = &dc.image {
        spec.image = Some(image.clone());
    }
    let image_env = docker
        .image_env(spec)
        .await
        .map_err(|e| from_devcontainer(&path, e))?;
    let local_env: BTreeMap<String, String> = spec
        .env
        .iter()
        .map(|(k, v)| (k.clone(), v.expose().to_owned()))
        .collect();
    dc.resolve(&Context {
        local_env: &local_env,
        image_env: &image_env,
        workspace: WORKSPACE,
    });
    // The request's own env wins over the file's.
    let file_env = dc.container_env.iter().chain(
        dc.remote_env
            .iter()
            .filter_map(|(k, v)| Some((k, v.as_ref()?))),
    );
    for (name, value) in file_env {
        spec.env
            .entry(name.clone())
            .or_insert_with(|| Secret::new(value.clone()));
    }
    backend
        .check(spec)
        .await
        .map_err(|e| from_devcontainer(&path, e))?;
    Ok(Some(dc))
}

/// A refusal caused by the file says so.
fn from_devcontainer(path: &str, e: Error) -> Error {
    match e {
        Error::Refused { code, message } => Error::Refused {
            code,
            message: format!("{path}: {message}"),
        },
        other => other,
    }
}

/// Keeps what later starts need; a failure only costs them their
/// postStartCommand (noted in the log).
fn keep(docker: &DockerBackend, id: &SandboxId, dc: &DevContainer) {
    let kept = Kept {
        post_start: dc.post_start_command.clone(),
    };
    let written = serde_json::to_vec(&kept)
        .map_err(anyhow::Error::from)
        .and_then(|json| crate::state::write_file(&docker.devcontainer_state(id), &json));
    if let Err(e) = written {
        tracing::warn!(sandbox = %id, "keeping its devcontainer settings: {e:#}");
    }
}

/// A stopped sandbox was started again: its postStartCommand, if it has one.
async fn started(
    docker: &DockerBackend,
    id: &SandboxId,
    deadline: Instant,
    notes: &mut Vec<String>,
) {
    let Ok(json) = std::fs::read(docker.devcontainer_state(id)) else {
        return;
    };
    let kept: Kept = match serde_json::from_slice(&json) {
        Ok(kept) => kept,
        Err(e) => {
            tracing::warn!(sandbox = %id, "its devcontainer settings: {e}");
            return;
        }
    };
    if let Some(command) = &kept.post_start {
        run_steps(
            docker,
            id,
            &[(devcontainer::START_STEP, command)],
            deadline,
            notes,
        )
        .await;
    }
}

/// Runs `steps` in order, one note each; stops at the first that fails.
async fn run_steps(
    docker: &DockerBackend,
    id: &SandboxId,
    steps: &[(&str, &Command)],
    deadline: Instant,
    notes: &mut Vec<String>,
) {
    for (step, command) in steps {
        for (name, argv) in command.argvs() {
            let label = if name.is_empty() {
                (*step).to_owned()
            } else {
                format!("{step} ({name})")
            };
            let left = deadline.saturating_duration_since(Instant::now());
            let ran = tokio::time::timeout(left, docker.run_in_workspace(id, &argv)).await;
            let (note, done) = match ran {
                Ok(Ok((0, out))) => (format!("devcontainer: {label} done{}", tail(&out)), true),
                Ok(Ok((code, out))) => (
                    format!(
                        "devcontainer: {label} failed (exit {code}); the sandbox is left \
                         running so it can be fixed{}",
                        tail(&out)
                    ),
                    false,
                ),
                Ok(Err(e)) => (format!("devcontainer: {label} could not run: {e:#}"), false),
                Err(_) => (
                    format!(
                        "devcontainer: {label} still running when the create stopped \
                         waiting; left running, its outcome is not known"
                    ),
                    false,
                ),
            };
            notes.push(note);
            if !done {
                return;
            }
        }
    }
}

/// The last lines of a command's output for a note, with control characters
/// (other than newlines) made harmless: the output is the sandbox's.
fn tail(out: &str) -> String {
    let lines: Vec<&str> = out.lines().filter(|l| !l.trim().is_empty()).collect();
    if lines.is_empty() {
        return String::new();
    }
    let kept = lines[lines.len().saturating_sub(NOTE_LINES)..].join("\n");
    let start = kept
        .char_indices()
        .rev()
        .nth(NOTE_CHARS)
        .map_or(0, |(i, _)| i);
    let clean: String = kept[start..]
        .chars()
        .map(|c| {
            if c == '\n' || !c.is_control() {
                c
            } else {
                '\u{fffd}'
            }
        })
        .collect();
    format!("; output:\n{clean}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tails_are_short_and_inert() {
        assert_eq!(tail(""), "");
        let many: String = (1..=40).map(|i| format!("line {i}\n")).collect();
        let t = tail(&many);
        assert!(t.starts_with("; output:\nline 26\n"), "{t}");
        assert!(t.ends_with("line 40"));
        assert_eq!(tail("a\x1b[2Jb\r\n"), "; output:\na\u{fffd}[2Jb");
        assert!(tail(&"x".repeat(10_000)).len() < NOTE_CHARS + 20);
    }
}
