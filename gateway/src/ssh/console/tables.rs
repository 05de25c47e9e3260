//! The console's tables: what `list`, `shares` and `sessions` print for a person.

use warren_store::Sandbox;

use crate::escape::field;
use crate::lifecycle::shares::ShareNames;
use crate::views::SessionView;

pub(super) fn sandbox_table(sandboxes: &[Sandbox]) -> String {
    let mut text = format!("{:<26} {:<9} {:<24} {}\n", "ID", "STATE", "IMAGE", "REPO");
    for s in sandboxes {
        text.push_str(&format!(
            "{:<26} {:<9} {:<24} {}\n",
            s.id,
            s.state,
            field(&s.image),
            field(s.repo.as_deref().unwrap_or("-"))
        ));
    }
    text
}

/// One account a line, `*` after those who get the sandbox's secrets.
pub(super) fn share_table(names: &ShareNames) -> String {
    let mut text = String::new();
    for name in &names.users {
        let secrets = if names.with_secrets.contains(name) {
            " *"
        } else {
            ""
        };
        text.push_str(&format!("{}{secrets}\n", field(name)));
    }
    text
}

pub(super) fn session_table(sessions: &[SessionView]) -> String {
    let mut text = format!(
        "{:<26} {:<22} {:>11} {:>11} {:>11} {}\n",
        "ID", "SOURCE", "STARTED", "IN", "OUT", "EXIT"
    );
    for s in sessions {
        text.push_str(&format!(
            "{:<26} {:<22} {:>11} {:>11} {:>11} {}\n",
            s.id,
            s.source,
            s.started_at,
            s.bytes_in,
            s.bytes_out,
            field(
                s.exit
                    .as_deref()
                    .unwrap_or(if s.ended_at.is_some() { "-" } else { "open" })
            )
        ));
        for c in &s.channels {
            let what = match &c.command {
                // Typed by whoever logged in (a shared user, code in the sandbox).
                Some(command) => format!("{} {}", c.kind, field(command)),
                None => c.kind.clone(),
            };
            let mut notes = Vec::new();
            if c.terminal {
                notes.push("tty");
            }
            if c.recorded {
                notes.push("recorded");
            }
            text.push_str(&format!(
                "  #{:<3} {:<40} {:>11} {:>11} {} {}\n",
                c.seq,
                what,
                c.bytes_in,
                c.bytes_out,
                field(
                    c.exit
                        .as_deref()
                        .unwrap_or(if c.ended_at.is_some() { "-" } else { "open" })
                ),
                notes.join(",")
            ));
        }
    }
    text
}
