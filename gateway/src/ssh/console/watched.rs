//! `new --repo` watched as it goes: the create is made without waiting for it, and
//! its devcontainer lines (the clone, the build, each lifecycle command and its
//! output) are printed as they become the sandbox's events. It ends with the
//! sandbox running, or with why its create failed (the failing step, its exit
//! status and last lines).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc::UnboundedSender;
use warren_store::{SandboxState, User};

use crate::escape;
use crate::lifecycle::{CreateSandbox, Created, Error, Lifecycle};

/// How often the sandbox is looked at while it is created.
const POLL_EVERY: Duration = Duration::from_millis(400);
/// The longest a create is watched (the runner has 180 s for one).
const WATCH_AT_MOST: Duration = Duration::from_secs(600);

/// Creates `body` for `user`, sending each devcontainer line to `progress` as
/// it appears.
pub(super) async fn watched_create(
    lc: &Arc<Lifecycle>,
    user: &User,
    mut body: CreateSandbox,
    progress: &UnboundedSender<String>,
) -> Result<Created, Error> {
    body.wait = Some(false);
    let created = lc.create(user, body).await?;
    let id = created.sandbox.id.as_str().to_owned();
    let began = Instant::now();
    let mut shown = 0;
    loop {
        let sandbox = lc.store.get_sandbox(&created.sandbox.id).await?;
        let events = lc.events(user, &id).await?;
        let from = shown;
        for event in events.iter().filter(|e| e.seq >= from) {
            shown = event.seq + 1;
            if let Some(text) = event.reason.strip_prefix("devcontainer: ") {
                let _ = progress.send(shown_line(text));
            }
        }
        match sandbox.state {
            SandboxState::Creating if began.elapsed() < WATCH_AT_MOST => {}
            SandboxState::Creating => {
                return Err(Error::runner(format!(
                    "{id} is still being created; `ls` shows when it runs"
                )));
            }
            SandboxState::Running => {
                return Ok(Created {
                    sandbox,
                    token: created.token,
                });
            }
            _ => {
                let why = events
                    .iter()
                    .rev()
                    .find_map(|e| e.reason.strip_prefix("create failed: "))
                    .unwrap_or("its events say why");
                return Err(Error::runner(format!(
                    "the create of {id} failed: {}",
                    escape::output(why)
                )));
            }
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
}

/// A devcontainer line as the runner wrote it, a command's output indented under
/// it, control characters escaped.
fn shown_line(text: &str) -> String {
    let mut lines = text.lines();
    let mut out = format!(
        "devcontainer: {}\n",
        escape::field(lines.next().unwrap_or(""))
    );
    for line in lines {
        out.push_str(&format!("  | {}\n", escape::field(line)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_indented_and_inert() {
        assert_eq!(
            shown_line("postCreateCommand output:\na\x1b[2J\nb"),
            "devcontainer: postCreateCommand output:\n  | a\\u001b[2J\n  | b\n"
        );
    }
}
