//! The ports a sandbox's devcontainer.json forwards, as the runner notes them in
//! the sandbox's events (`devcontainer: forwardPorts 3000 (Web), 8080`) and the
//! gateway reads them back for its SSH config's `LocalForward` lines. The note is
//! in a history the sandbox's own output also reaches, so only the newest note
//! that starts a reason counts, and only its first line.

/// How the note listing the ports to forward starts.
pub const FORWARD_NOTE: &str = "devcontainer: forwardPorts ";
/// The most ports one sandbox forwards.
pub const MAX_FORWARDS: usize = 32;

/// The ports of the newest forwardPorts note among `reasons` (oldest first): the
/// number that starts each `, `-separated item, 1024 and up (a lower one could not
/// be bound on a user's side without root, and should not be).
pub fn forward_ports<'a>(reasons: impl DoubleEndedIterator<Item = &'a str>) -> Vec<u16> {
    let Some(list) = reasons.rev().find_map(|r| r.strip_prefix(FORWARD_NOTE)) else {
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

/// `LocalForward` lines for a Host block: each port on the user's loopback to the
/// same port on the sandbox's.
pub fn local_forwards(ports: &[u16]) -> String {
    ports
        .iter()
        .map(|p| format!("    LocalForward 127.0.0.1:{p} 127.0.0.1:{p}\n"))
        .collect()
}

/// The ports of the `LocalForward` lines of an SSH config (what `warren ssh`
/// turns into `-L` options).
pub fn ports_of_config(config: &str) -> Vec<u16> {
    let mut ports: Vec<u16> = Vec::new();
    for line in config.lines() {
        let mut words = line.split_whitespace();
        if !words
            .next()
            .is_some_and(|w| w.eq_ignore_ascii_case("LocalForward"))
        {
            continue;
        }
        let port = words
            .next()
            .and_then(|bind| bind.rsplit(':').next())
            .and_then(|p| p.parse::<u16>().ok());
        if let Some(port) = port
            && port >= 1024
            && !ports.contains(&port)
            && ports.len() < MAX_FORWARDS
        {
            ports.push(port);
        }
    }
    ports
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwards_come_from_the_newest_note() {
        let reasons = [
            "devcontainer: forwardPorts 9999",
            "devcontainer: postCreateCommand done; output:\ndevcontainer: forwardPorts 22",
            "devcontainer: forwardPorts 3000 (Web app), 8080, 80, 3000, 70000, x",
            "devcontainer: some forwardPorts ignored (…): db:5432",
        ];
        assert_eq!(forward_ports(reasons.into_iter()), [3000, 8080]);
        assert!(forward_ports(["created"].into_iter()).is_empty());
        let lines = local_forwards(&[3000, 8080]);
        assert_eq!(
            lines,
            "    LocalForward 127.0.0.1:3000 127.0.0.1:3000\n    \
             LocalForward 127.0.0.1:8080 127.0.0.1:8080\n"
        );
        let config = format!("Host sbx\n    Port 2222\n{lines}    # LocalForward 9 x\n");
        assert_eq!(ports_of_config(&config), [3000, 8080]);
    }
}
