//! The control requests the lifecycle makes of runners, each answer matched here
//! once: a refusal with a code becomes the matching [`Error`], anything unexpected a
//! runner error naming it.

use warren_protocol::{Request, Response as RunnerResponse, SandboxSpec};
use warren_store::{RunnerId, Sandbox, SandboxState};

use super::placement::{Demand, Disk, room_on};
use super::{Error, ErrorCode, Lifecycle, Result};

/// At most this many notes of one create or start become events.
const MAX_NOTES: usize = 64;
/// And each at most this long.
const MAX_NOTE_CHARS: usize = 4096;

/// Asks `runner` whether it could create `spec` (its image is there, its fields
/// pass) before anything is stored. A runner too old to know `check` is let be.
pub(super) async fn check_on_runner(
    lc: &Lifecycle,
    runner: &RunnerId,
    spec: &SandboxSpec,
) -> Result<(), Error> {
    let request = Request::Check { spec: spec.clone() };
    match lc.hub.control(runner, &request).await? {
        RunnerResponse::Ok => Ok(()),
        RunnerResponse::Refused { code, message } if code == ErrorCode::ImageNotFound.as_str() => {
            Err(Error::new(ErrorCode::ImageNotFound, message))
        }
        RunnerResponse::Refused { message, .. } => Err(Error::invalid(message)),
        RunnerResponse::Error { message } if message.contains("unknown variant") => Ok(()),
        RunnerResponse::Error { message } => Err(Error::runner(message)),
        other => Err(Error::runner(format!(
            "unexpected answer from the runner: {other:?}"
        ))),
    }
}

/// Asks the sandbox's runner to create (or restart) it; on success the sandbox goes
/// to `running` with `reason`. A runner's refusal moves a `creating` sandbox to
/// `failed` and is a 502 carrying the runner's message.
pub(super) async fn run_on_runner(
    lc: &Lifecycle,
    sandbox: &Sandbox,
    spec: SandboxSpec,
    reason: &str,
) -> Result<Sandbox, Error> {
    let Some(runner) = &sandbox.runner_id else {
        return Err(Error::conflict("the sandbox has no runner"));
    };
    let live = spec.progress.then(|| note_progress(lc, sandbox));
    let request = Request::Create {
        sandbox: sandbox.id.clone(),
        token_key: lc.signer.verifier().to_base64(),
        authorized_keys: super::agent_keys::for_sandbox(lc, &sandbox.id).await,
        spec,
    };
    let answer = match live {
        Some((sink, writer)) => {
            let answer = lc.hub.control_reporting(runner, &request, Some(sink)).await;
            // Every progress line is an event before the state changes.
            let _ = writer.await;
            answer
        }
        None => lc.hub.control(runner, &request).await,
    };
    let failure = match answer {
        Ok(warren_protocol::Response::Ok) => {
            return Ok(lc
                .store
                .set_sandbox_state(&sandbox.id, SandboxState::Running, reason)
                .await?);
        }
        // Lines from the runner (a devcontainer.json's doings): events after the
        // state change, each bounded (they carry the sandbox's output).
        Ok(RunnerResponse::Notes {
            notes,
            millicpus,
            memory_mb,
        }) => 'made: {
            if let Err(no_room) = room_for_requirements(lc, runner, sandbox, memory_mb).await {
                break 'made no_room;
            }
            if (millicpus.is_some() || memory_mb.is_some())
                && let Err(e) = record_limits(lc, sandbox, millicpus, memory_mb).await
            {
                // The sandbox runs with them all the same; the store shows the old.
                tracing::warn!(sandbox = %sandbox.id, "recording its devcontainer limits: {}", e.message);
            }
            let running = lc
                .store
                .set_sandbox_state(&sandbox.id, SandboxState::Running, reason)
                .await?;
            for note in notes.iter().take(MAX_NOTES) {
                let note: String = note.chars().take(MAX_NOTE_CHARS).collect();
                lc.store.note_sandbox_event(&sandbox.id, &note).await?;
            }
            return Ok(running);
        }
        Ok(RunnerResponse::Error { message }) => Error::runner(message),
        Ok(RunnerResponse::Refused { code, message })
            if code == ErrorCode::ImageNotFound.as_str() =>
        {
            Error::new(ErrorCode::ImageNotFound, message)
        }
        Ok(RunnerResponse::Refused { message, .. }) => Error::invalid(message),
        Ok(other) => Error::runner(format!("unexpected answer from the runner: {other:?}")),
        Err(e) => Error::from(e),
    };
    if sandbox.state == SandboxState::Creating {
        let reason = format!("create failed: {}", failure.message);
        if let Err(e) = lc
            .store
            .set_sandbox_state(&sandbox.id, SandboxState::Failed, &reason)
            .await
        {
            tracing::warn!(sandbox = %sandbox.id, "recording a failed create: {e}");
        }
    }
    Err(failure)
}

/// At most this many progress lines of one create or start become events.
const MAX_PROGRESS: usize = 400;

/// Where a create's progress lines go: a task that makes each an event of
/// `sandbox` as it comes (bounded like notes: they carry the sandbox's output),
/// done when the sender is dropped.
fn note_progress(
    lc: &Lifecycle,
    sandbox: &Sandbox,
) -> (
    tokio::sync::mpsc::UnboundedSender<String>,
    tokio::task::JoinHandle<()>,
) {
    let (sink, mut lines) = tokio::sync::mpsc::unbounded_channel::<String>();
    let store = lc.store.clone();
    let id = sandbox.id.clone();
    let writer = tokio::spawn(async move {
        let mut written = 0;
        while let Some(line) = lines.recv().await {
            if written == MAX_PROGRESS {
                continue;
            }
            written += 1;
            let line: String = line.chars().take(MAX_NOTE_CHARS).collect();
            if let Err(e) = store.note_sandbox_event(&id, &line).await {
                tracing::warn!(sandbox = %id, "noting a create's progress: {e}");
            }
        }
    });
    (sink, writer)
}

/// A create admitted with the default memory that its devcontainer.json's
/// `hostRequirements` raised must still fit what its runner has free (the runner
/// checks only what one sandbox may have); if not, the create fails as one that
/// named that memory would have.
async fn room_for_requirements(
    lc: &Lifecycle,
    runner: &RunnerId,
    sandbox: &Sandbox,
    memory_mb: Option<u64>,
) -> Result<(), Error> {
    let Some(wanted) = memory_mb else {
        return Ok(());
    };
    let extra = wanted.saturating_sub(u64::from(sandbox.memory_mb));
    if sandbox.state != SandboxState::Creating || extra == 0 {
        return Ok(());
    }
    let demand = Demand {
        // This one is counted already, with the memory it was admitted with.
        sandboxes: 0,
        memory_mb: extra,
        millicpus: 0,
        disk: Disk::Held,
    };
    room_on(lc, runner, demand).await.map_err(|e| {
        Error::new(
            ErrorCode::NoCapacity,
            format!(
                "its devcontainer.json's hostRequirements ask for {wanted} MiB of memory, \
                 {extra} MiB more than the default: {}",
                e.message
            ),
        )
    })
}

/// The limits a runner gave `sandbox` from its devcontainer.json's
/// `hostRequirements` (where the create named none) become its own, in the store
/// and in the spec later starts send.
async fn record_limits(
    lc: &Lifecycle,
    sandbox: &Sandbox,
    millicpus: Option<u32>,
    memory_mb: Option<u64>,
) -> Result<(), Error> {
    let cpus = millicpus.map_or(sandbox.cpus, |m| f64::from(m) / 1000.0);
    let memory = memory_mb
        .and_then(|m| u32::try_from(m).ok())
        .unwrap_or(sandbox.memory_mb);
    lc.store
        .set_sandbox_limits(&sandbox.id, cpus, memory)
        .await?;
    if let Some(spec) = lc.specs().get_mut(&sandbox.id) {
        spec.millicpus = millicpus.or(spec.millicpus);
        spec.memory_mb = memory_mb.or(spec.memory_mb);
    }
    Ok(())
}

/// One control request that must answer `ok`.
pub(super) async fn expect_ok(
    lc: &Lifecycle,
    runner: &RunnerId,
    request: Request,
) -> Result<(), Error> {
    match lc.hub.control(runner, &request).await? {
        warren_protocol::Response::Ok => Ok(()),
        warren_protocol::Response::Error { message } => Err(Error::runner(message)),
        other => Err(Error::runner(format!(
            "unexpected answer from the runner: {other:?}"
        ))),
    }
}
