//! The control requests the lifecycle makes of runners, each answer matched here
//! once: a refusal with a code becomes the matching [`Error`], anything unexpected a
//! runner error naming it.

use warren_protocol::{Request, Response as RunnerResponse, SandboxSpec};
use warren_store::{RunnerId, Sandbox, SandboxState};

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
    let request = Request::Create {
        sandbox: sandbox.id.clone(),
        token_key: lc.signer.verifier().to_base64(),
        authorized_keys: super::agent_keys::for_sandbox(lc, &sandbox.id).await,
        spec,
    };
    let failure = match lc.hub.control(runner, &request).await {
        Ok(warren_protocol::Response::Ok) => {
            return Ok(lc
                .store
                .set_sandbox_state(&sandbox.id, SandboxState::Running, reason)
                .await?);
        }
        // Lines from the runner (a devcontainer.json's doings): events after the
        // state change, each bounded (they carry the sandbox's output).
        Ok(RunnerResponse::Notes { notes }) => {
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
