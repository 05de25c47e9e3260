//! What the CLI shows of a sandbox's devcontainer.json: the runner's report
//! (keys skipped, lifecycle commands' outcomes and output) after a create, and
//! the ports it asks to forward as `LocalForward` lines in `warren config-ssh`.
//! Both come from the sandbox's events; what is in them is the sandbox's own
//! text, so it is printed with control characters escaped.

use warren_api::EventList;
use warren_client::Client;
use warren_runner::devsetup::FORWARD_NOTE;

/// The most ports one sandbox gets in the SSH config.
const MAX_FORWARDS: usize = 32;

/// The ports of the newest forwardPorts note in `events`: the number that starts
/// each `, `-separated item, 1024 and up (a lower one could not be bound on your
/// side without root, and should not be).
pub fn forward_ports(events: &EventList) -> Vec<u16> {
    let Some(list) = events
        .events
        .iter()
        .rev()
        .find_map(|e| e.reason.strip_prefix(FORWARD_NOTE))
    else {
        return Vec::new();
    };
    let mut ports: Vec<u16> = Vec::new();
    for item in list.lines().next().unwrap_or("").split(", ") {
        let digits: String = item.chars().take_while(char::is_ascii_digit).collect();
        if let Ok(port) = digits.parse::<u16>()
            && port >= 1024
            && !ports.contains(&port)
            && ports.len() < MAX_FORWARDS
        {
            ports.push(port);
        }
    }
    ports
}

/// `LocalForward` lines for a Host block: each port on your machine's loopback to
/// the same port on the sandbox's.
pub fn local_forwards(ports: &[u16]) -> String {
    ports
        .iter()
        .map(|p| format!("    LocalForward 127.0.0.1:{p} 127.0.0.1:{p}\n"))
        .collect()
}

/// Prints the devcontainer lines of `id`'s events to stderr, as the runner wrote
/// them (a command's output indented under its line). Nothing when there are none.
pub async fn print_report(api: &Client, id: &str) -> anyhow::Result<()> {
    let events = api.events(id).await?;
    for event in &events.events {
        let Some(text) = event.reason.strip_prefix("devcontainer: ") else {
            continue;
        };
        let mut lines = text.lines();
        if let Some(first) = lines.next() {
            eprintln!("devcontainer: {}", escaped(first));
        }
        for line in lines {
            eprintln!("  | {}", escaped(line));
        }
    }
    Ok(())
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
    use warren_api::EventView;

    use super::*;

    fn events(reasons: &[&str]) -> EventList {
        EventList {
            events: reasons
                .iter()
                .enumerate()
                .map(|(i, r)| EventView {
                    seq: u32::try_from(i).unwrap_or(0),
                    at: 0,
                    from: None,
                    to: "running".into(),
                    reason: (*r).to_owned(),
                })
                .collect(),
        }
    }

    #[test]
    fn forwards_come_from_the_newest_note() {
        let list = events(&[
            "devcontainer: forwardPorts 9999",
            "devcontainer: postCreateCommand done; output:\ndevcontainer: forwardPorts 22",
            "devcontainer: forwardPorts 3000 (Web app), 8080, 80, 3000, 70000, x",
            "devcontainer: some forwardPorts ignored (…): db:5432",
        ]);
        assert_eq!(forward_ports(&list), [3000, 8080]);
        assert_eq!(
            local_forwards(&[3000]),
            "    LocalForward 127.0.0.1:3000 127.0.0.1:3000\n"
        );
        assert!(forward_ports(&events(&["created"])).is_empty());
        assert_eq!(escaped("a\x1b[2Jb\u{7}"), "a\\x1b[2Jb\\x07");
    }
}
