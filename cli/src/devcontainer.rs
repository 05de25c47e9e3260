//! What the CLI shows of a create from a repository while it goes: the clone,
//! the build, the devcontainer.json's keys skipped and its lifecycle commands
//! with their output, from the sandbox's events as they appear. What is in them
//! is the sandbox's own text, so it is printed with control characters escaped.

use warren_client::Client;

/// How often a create being watched is asked about.
const POLL_EVERY: std::time::Duration = std::time::Duration::from_millis(400);
/// The longest a create is watched (the gateway gives a devcontainer create 180 s).
const WATCH_AT_MOST: std::time::Duration = std::time::Duration::from_secs(600);

/// Watches a create made with `wait: false` until the sandbox runs, printing its
/// devcontainer lines (the clone, the build, each lifecycle command and its
/// output) to stderr as they appear; a create that fails ends with its reason
/// (the failing step, its exit status and last lines) and an error.
pub async fn watch_create(api: &Client, id: &str) -> anyhow::Result<warren_api::SandboxView> {
    let began = std::time::Instant::now();
    let mut shown = 0u32;
    loop {
        let sandbox = api.get_sandbox(id).await?;
        let events = api.events(id).await?;
        let from = shown;
        for event in events.events.iter().filter(|e| e.seq >= from) {
            shown = event.seq + 1;
            print_line(&event.reason);
        }
        match sandbox.state.as_str() {
            "creating" if began.elapsed() < WATCH_AT_MOST => {}
            "creating" => {
                anyhow::bail!("{id} is still being created; `warren list` shows when it runs")
            }
            "running" => return Ok(sandbox),
            _ => {
                let why = events
                    .events
                    .iter()
                    .rev()
                    .find_map(|e| e.reason.strip_prefix("create failed: "))
                    .unwrap_or("see `GET /v1/sandboxes/{id}/events`");
                eprintln!("the create failed:");
                for line in why.lines() {
                    eprintln!("  {}", escaped(line));
                }
                anyhow::bail!("sandbox {id} was not created");
            }
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
}

/// A devcontainer line of the events as the runner wrote it (a command's output
/// indented under its line); other lines are not shown.
fn print_line(reason: &str) {
    let Some(text) = reason.strip_prefix("devcontainer: ") else {
        return;
    };
    let mut lines = text.lines();
    if let Some(first) = lines.next() {
        eprintln!("devcontainer: {}", escaped(first));
    }
    for line in lines {
        eprintln!("  | {}", escaped(line));
    }
}

/// `text` with control characters shown as `\x1b`-style escapes.
fn escaped(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_control() {
                format!("\\x{:02x}", u32::from(c))
            } else {
                c.to_string()
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_shown_escaped() {
        assert_eq!(escaped("a\x1b[2Jb\u{7}"), "a\\x1b[2Jb\\x07");
    }
}
