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
use crate::protocol::{Response, RunnerCapacity, SandboxSpec, Secret};
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
/// How the note listing the ports to forward starts; the gateway's SSH config
/// turns it into `LocalForward` lines (the numbers before each `, `).
pub use crate::protocol::forwards::FORWARD_NOTE;
/// Lines of a command's output kept in its note.
const NOTE_LINES: usize = 15;
/// Characters of a command's output kept in its note.
const NOTE_CHARS: usize = 2000;

/// What a sandbox's later starts need of its devcontainer.json.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Kept {
    #[serde(default)]
    post_start: Option<Command>,
    /// Where its lifecycle commands run (default `/workspace`).
    #[serde(default)]
    workdir: Option<String>,
}

mod limits;
pub(crate) mod progress;

pub use progress::Notes;

/// A file that was followed: its settings, where its commands run, and the
/// limits its `hostRequirements` set.
struct Followed {
    dc: DevContainer,
    workdir: String,
    limits: limits::Chosen,
}

/// Creates (or restarts) `id` as the tunnel's `create` asks; on Docker, with a
/// repository and `spec.devcontainer`, following its devcontainer.json.
pub async fn create(
    backend: &Backend,
    id: &SandboxId,
    token_key: &str,
    authorized_keys: &[String],
    spec: &SandboxSpec,
    capacity: RunnerCapacity,
    live: Option<tokio::sync::mpsc::UnboundedSender<String>>,
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
            let mut notes = Notes::new(live);
            if !status.running {
                started(docker, id, deadline, &mut notes).await;
            }
            return Ok(answer(notes, limits::Chosen::default()));
        }
    }
    let mut spec = spec.clone();
    let mut notes = Notes::new(live);
    let found = if spec.devcontainer {
        prepare(
            backend, docker, id, &mut spec, capacity, deadline, &mut notes,
        )
        .await?
    } else {
        None
    };
    if notes.is_live()
        && let Some(repo) = &spec.repo
    {
        notes.push(format!(
            "devcontainer: starting the sandbox and cloning {}",
            repo_name(&repo.url)
        ));
    }
    backend
        .create(id, token_key, authorized_keys, &spec)
        .await?;
    let mut chosen = limits::Chosen::default();
    if let Some(Followed {
        dc,
        workdir,
        limits,
    }) = found
    {
        chosen = limits;
        keep(docker, id, &dc, &workdir);
        let steps: Vec<(&str, &Command)> = devcontainer::CREATE_STEPS
            .iter()
            .chain([&devcontainer::START_STEP])
            .filter_map(|step| dc.step(step).map(|c| (*step, c)))
            .collect();
        run_steps(docker, id, &steps, &workdir, deadline, &mut notes).await;
    }
    Ok(answer(notes, chosen))
}

/// Forgets what `id`'s starts needed (on delete).
pub fn forget(backend: &Backend, id: &SandboxId) {
    if let Backend::Docker(docker) = backend {
        let _ = std::fs::remove_file(docker.devcontainer_state(id));
    }
}

fn answer(notes: Notes, limits: limits::Chosen) -> Response {
    let notes = notes.into_kept();
    if notes.is_empty() && limits == limits::Chosen::default() {
        Response::Ok
    } else {
        Response::Notes {
            notes,
            millicpus: limits.millicpus,
            memory_mb: limits.memory_mb,
        }
    }
}

/// Reads and applies the repository's devcontainer.json to `spec` (image, env,
/// user, workspace folder, limits), noting what it skips. `None`: there is none, or
/// it cannot be used (noted); an image, env or user the runner refuses, or host
/// requirements beyond what it allows, are a refusal of the create.
async fn prepare(
    backend: &Backend,
    docker: &DockerBackend,
    id: &SandboxId,
    spec: &mut SandboxSpec,
    capacity: RunnerCapacity,
    deadline: Instant,
    notes: &mut Notes,
) -> Result<Option<Followed>> {
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
    let local_env: BTreeMap<String, String> = spec
        .env
        .iter()
        .map(|(k, v)| (k.clone(), v.expose().to_owned()))
        .collect();
    if let Some(image) = &dc.image {
        spec.image = Some(image.clone());
        if dc.build.is_some() || dc.docker_file.is_some() {
            notes.push(
                "devcontainer: build ignored: the file names an image, which is used".to_owned(),
            );
        }
    } else if let Some(build) = dc.build_spec() {
        if docker.allows_builds() {
            let image = crate::devbuild::build(
                docker, id, &repo, &path, &build, &local_env, deadline, notes,
            )
            .await
            .map_err(|e| from_devcontainer(&path, e))?;
            spec.image = Some(image);
            spec.built = true;
        } else {
            notes.push(
                "devcontainer: build refused: image builds are off on this runner (its operator \
                 allows them with --allow-builds); the default image is used"
                    .to_owned(),
            );
        }
    }
    let image_env = docker
        .image_env(spec)
        .await
        .map_err(|e| from_devcontainer(&path, e))?;
    let repo_name = repo_name(&repo.url);
    let mut cx = Context {
        local_env: &local_env,
        image_env: &image_env,
        workspace: WORKSPACE,
        repo_name: &repo_name,
    };
    let workdir = workspace_folder(&dc, &cx, spec, notes);
    cx.workspace = &workdir;
    dc.resolve(&cx);
    let limits =
        limits::apply(&dc, spec, capacity, notes).map_err(|e| from_devcontainer(&path, e))?;
    session_user(docker, id, &dc, spec, notes)
        .await
        .map_err(|e| from_devcontainer(&path, e))?;
    forwards(&dc, notes);
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
    Ok(Some(Followed {
        dc,
        workdir,
        limits,
    }))
}

/// The repository's name: the URL's last part, without `.git` (made plain).
fn repo_name(url: &str) -> String {
    let last = url.trim_end_matches('/').rsplit('/').next().unwrap_or("");
    let name = devcontainer::plain(last.trim_end_matches(".git"), 64).replace([' ', ':', '/'], "");
    if name.is_empty() || name.starts_with('.') {
        "workspace".to_owned()
    } else {
        name
    }
}

/// Where the lifecycle commands run (and `${containerWorkspaceFolder}`):
/// `workspaceFolder` if it is usable. Outside `/workspace` the workspace is also
/// mounted there and sessions start there (`spec.workdir`); inside it, only the
/// commands run there; a folder Warren cannot use is noted and `/workspace` kept.
fn workspace_folder(
    dc: &DevContainer,
    cx: &Context<'_>,
    spec: &mut SandboxSpec,
    notes: &mut Notes,
) -> String {
    let Some(folder) = dc.workspace_folder(cx) else {
        return WORKSPACE.to_owned();
    };
    if folder == WORKSPACE {
        return folder;
    }
    if let Some(inside) = folder.strip_prefix(&format!("{WORKSPACE}/")) {
        let plain = inside
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != ".." && devcontainer::plain(c, 255) == c);
        if plain && folder.len() <= 200 {
            notes.push(format!(
                "devcontainer: workspaceFolder {folder}: lifecycle commands run there; \
                 logins start in {WORKSPACE}"
            ));
            return folder;
        }
    } else if warren_protocol::validate::workdir(&folder).is_ok() {
        notes.push(format!(
            "devcontainer: workspaceFolder {folder}: the workspace is there too, and \
             logins start there"
        ));
        spec.workdir = Some(folder.clone());
        return folder;
    }
    notes.push(format!(
        "devcontainer: workspaceFolder {:?} refused: it must be an absolute path of plain \
         names outside the system's directories; {WORKSPACE} is used",
        devcontainer::plain(&folder, 80)
    ));
    WORKSPACE.to_owned()
}

/// `remoteUser` (else `containerUser`): looked up in the image's own
/// `/etc/passwd`. Not there refuses the create; uid or gid 0 there is noted as
/// refused and the default user kept.
async fn session_user(
    docker: &DockerBackend,
    id: &SandboxId,
    dc: &DevContainer,
    spec: &mut SandboxSpec,
    notes: &mut Notes,
) -> Result<()> {
    let (key, wanted) = match (&dc.remote_user, &dc.container_user) {
        (Some(u), _) => ("remoteUser", u),
        (None, Some(u)) => ("containerUser", u),
        (None, None) => return Ok(()),
    };
    let shown = devcontainer::plain(wanted, 40);
    let image = spec
        .image
        .clone()
        .unwrap_or_else(|| docker.default_image().to_owned());
    let passwd = docker.image_passwd(id, &image).await?;
    let Some(account) = crate::backend::docker::find_account(&passwd, wanted.trim()) else {
        return Err(Error::refused(
            "invalid_spec",
            format!("{key} {shown:?} is not an account of the image {image} (its /etc/passwd)"),
        ));
    };
    if account.uid == 0 || account.gid == 0 {
        notes.push(format!(
            "devcontainer: {key} refused: {shown:?} is uid or gid 0 in the image, and sessions \
             never run as root; the sandbox's own user is used"
        ));
        return Ok(());
    }
    if warren_protocol::validate::user(&account.name).is_err() {
        return Err(Error::refused(
            "invalid_spec",
            format!("{key} {shown:?}: the image's account name is not one Warren uses"),
        ));
    }
    notes.push(format!(
        "devcontainer: sessions run as {} (uid {})",
        account.name, account.uid
    ));
    spec.user = Some(account.name);
    Ok(())
}

/// One note listing the ports to forward (`warren config-ssh` reads it), and one
/// for those left out.
fn forwards(dc: &DevContainer, notes: &mut Notes) {
    let (kept, skipped) = dc.forwards();
    if !kept.is_empty() {
        let list: Vec<String> = kept
            .iter()
            .map(|f| match &f.label {
                Some(label) => format!("{} ({label})", f.port),
                None => f.port.to_string(),
            })
            .collect();
        notes.push(format!("{FORWARD_NOTE}{}", list.join(", ")));
    }
    if !skipped.is_empty() {
        // Not starting with FORWARD_NOTE: only the ports to forward do.
        notes.push(format!(
            "devcontainer: some forwardPorts ignored (only the sandbox's own ports are \
             forwarded, a number or localhost:N, at most {}): {}",
            devcontainer::MAX_PORTS,
            skipped.join(", ")
        ));
    }
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
fn keep(docker: &DockerBackend, id: &SandboxId, dc: &DevContainer, workdir: &str) {
    let kept = Kept {
        post_start: dc.post_start_command.clone(),
        workdir: Some(workdir.to_owned()),
    };
    let written = serde_json::to_vec(&kept)
        .map_err(anyhow::Error::from)
        .and_then(|json| crate::state::write_file(&docker.devcontainer_state(id), &json));
    if let Err(e) = written {
        tracing::warn!(sandbox = %id, "keeping its devcontainer settings: {e:#}");
    }
}

/// A stopped sandbox was started again: its postStartCommand, if it has one.
async fn started(docker: &DockerBackend, id: &SandboxId, deadline: Instant, notes: &mut Notes) {
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
        let workdir = kept.workdir.as_deref().unwrap_or(WORKSPACE);
        run_steps(
            docker,
            id,
            &[(devcontainer::START_STEP, command)],
            workdir,
            deadline,
            notes,
        )
        .await;
    }
}

/// Runs `steps` in order, one note each; stops at the first that fails. Where
/// notes are live each is announced as it starts and its output sent while it
/// runs, so a success's note leaves the output out; a failure's keeps its last
/// lines.
async fn run_steps(
    docker: &DockerBackend,
    id: &SandboxId,
    steps: &[(&str, &Command)],
    workdir: &str,
    deadline: Instant,
    notes: &mut Notes,
) {
    for (step, command) in steps {
        for (name, argv) in command.argvs() {
            let label = if name.is_empty() {
                (*step).to_owned()
            } else {
                format!("{step} ({name})")
            };
            let left = deadline.saturating_duration_since(Instant::now());
            if notes.is_live() {
                notes.push(format!("devcontainer: {label} running"));
            }
            let mut output = progress::Output::new(&label, notes);
            let mut feed = |bytes: &[u8]| output.feed(bytes);
            let ran =
                tokio::time::timeout(left, docker.run_in(id, &argv, workdir, &mut feed)).await;
            output.finish();
            let (note, done) = match ran {
                Ok(Ok((0, _))) if notes.is_live() => (format!("devcontainer: {label} done"), true),
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
pub(crate) fn tail(out: &str) -> String {
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
    format!("; output:\n{}", harmless(&kept[start..]))
}

/// `text` with control characters other than newlines replaced (U+FFFD), for text
/// a sandbox or its build wrote that ends up in a note or an error message.
pub(crate) fn harmless(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c == '\n' || !c.is_control() {
                c
            } else {
                '\u{fffd}'
            }
        })
        .collect()
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
