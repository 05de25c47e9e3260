//! The rules as data: what each policy installs, and what [`repair`] and [`removal`]
//! change, checked against a small model of a filter table.

#![allow(clippy::unwrap_used)]

use super::*;

fn id() -> SandboxId {
    SandboxId::parse("sbx-abcdefghijkl").unwrap()
}

fn allow(cidrs: &[&str]) -> NetworkPolicy {
    NetworkPolicy::Allow {
        cidrs: cidrs.iter().map(|s| (*s).to_owned()).collect(),
    }
}

fn lines(rules: &[Vec<String>]) -> Vec<String> {
    rules.iter().map(|r| r.join(" ")).collect()
}

/// A filter table as `iptables` keeps it: chains in order of creation, each with its
/// rules (the words after `-A CHAIN`).
#[derive(Default)]
struct Table {
    chains: Vec<(String, Vec<Vec<String>>)>,
}

impl Table {
    /// A host as Docker leaves it: `DOCKER-USER` first in `FORWARD`, returning.
    fn docker() -> Table {
        let mut t = Table::default();
        for chain in ["INPUT", "FORWARD", "OUTPUT"] {
            t.chains.push((chain.to_owned(), vec![]));
        }
        t.run(&[
            argv(&["-N", "DOCKER-USER"]),
            argv(&["-A", "FORWARD", "-j", "DOCKER-USER"]),
            argv(&["-A", "DOCKER-USER", "-j", "RETURN"]),
            argv(&["-A", "INPUT", "-i", "lo", "-j", "ACCEPT"]),
        ]);
        t
    }

    fn chain(&mut self, name: &str) -> &mut Vec<Vec<String>> {
        let at = self.chains.iter().position(|(n, _)| n == name);
        &mut self.chains[at.unwrap_or_else(|| panic!("no chain {name}"))].1
    }

    /// Runs commands as one restore batch does (`-N` of an existing chain flushes it).
    fn run(&mut self, rules: &[Vec<String>]) {
        for rule in rules {
            let words: Vec<String> = rule[2..].to_vec();
            match rule[0].as_str() {
                "-N" => match self.chains.iter_mut().find(|(n, _)| *n == rule[1]) {
                    Some((_, rules)) => rules.clear(),
                    None => self.chains.push((rule[1].clone(), vec![])),
                },
                "-A" => self.chain(&rule[1]).push(words),
                "-I" => {
                    let at: usize = words[0].parse().unwrap();
                    self.chain(&rule[1]).insert(at - 1, words[1..].to_vec());
                }
                "-D" => {
                    let chain = self.chain(&rule[1]);
                    let at = chain.iter().position(|r| *r == words).unwrap();
                    chain.remove(at);
                }
                "-F" => self.chain(&rule[1]).clear(),
                "-X" => {
                    let name = rule[1].clone();
                    assert!(self.chain(&name).is_empty(), "-X of a chain with rules");
                    self.chains.retain(|(n, _)| *n != name);
                }
                other => panic!("unexpected {other}"),
            }
        }
    }

    /// As `iptables -S` prints it.
    fn listing(&self) -> String {
        let mut out = Vec::new();
        let builtin = ["INPUT", "FORWARD", "OUTPUT"];
        for (name, _) in &self.chains {
            if builtin.contains(&name.as_str()) {
                out.push(format!("-P {name} ACCEPT"));
            } else {
                out.push(format!("-N {name}"));
            }
        }
        for (name, rules) in &self.chains {
            for r in rules {
                out.push(format!("-A {name} {}", r.join(" ")));
            }
        }
        out.join("\n")
    }

    fn rules_of(&self, name: &str) -> Vec<String> {
        let chain = self.chains.iter().find(|(n, _)| n == name).unwrap();
        chain.1.iter().map(|r| r.join(" ")).collect()
    }

    fn has(&self, name: &str) -> bool {
        self.chains.iter().any(|(n, _)| n == name)
    }
}

/// The table after [`repair`] on it, in `family`.
fn repaired(mut t: Table, family: Family) -> Table {
    let parent = forward_parent(family, &t.listing());
    let changes = repair(&t.listing(), family, parent);
    t.run(&changes);
    t
}

#[test]
fn names_fit_the_kernel_limits() {
    let id = SandboxId::generate();
    assert!(bridge_name(&id).len() <= 15);
    assert!(forward_chain(&id).len() <= 28);
    assert!(host_chain(&id).len() <= 28);
    assert!(FORWARD_CHAIN.len() <= 28 && HOST_CHAIN.len() <= 28);
}

#[test]
fn the_shared_chains_drop_link_local_other_bridges_and_the_host() {
    assert_eq!(
        lines(&shared_rules(FORWARD_CHAIN, Family::V4)),
        [
            "-A WARREN-FORWARD -d 169.254.169.254/32 -j DROP",
            "-A WARREN-FORWARD -d 169.254.0.0/16 -j DROP",
            "-A WARREN-FORWARD -o wr-+ -m comment --comment warren-netpolicy-2 -j DROP",
        ]
    );
    assert_eq!(
        lines(&shared_rules(HOST_CHAIN, Family::V4)),
        [
            "-A WARREN-HOST -d 169.254.169.254/32 -j DROP",
            "-A WARREN-HOST -d 169.254.0.0/16 -j DROP",
            "-A WARREN-HOST -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN",
            "-A WARREN-HOST -m comment --comment warren-netpolicy-2 -j DROP",
        ]
    );
    assert_eq!(
        lines(&shared_rules(HOST_CHAIN, Family::V6)),
        [
            "-A WARREN-HOST -p ipv6-icmp -m icmp6 --icmpv6-type 135 -j RETURN",
            "-A WARREN-HOST -p ipv6-icmp -m icmp6 --icmpv6-type 136 -j RETURN",
            "-A WARREN-HOST -d fe80::/10 -j DROP",
            "-A WARREN-HOST -d fd00:ec2::254/128 -j DROP",
            "-A WARREN-HOST -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN",
            "-A WARREN-HOST -m comment --comment warren-netpolicy-2 -j DROP",
        ]
    );
}

#[test]
fn a_default_sandbox_needs_no_rules_of_its_own() {
    for family in [Family::V4, Family::V6] {
        let r = sandbox_rules(&id(), &NetworkPolicy::All, &HostAccess::default(), family);
        assert!(r.unwrap().is_empty());
    }
}

#[test]
fn host_ports_get_a_host_chain_reached_by_a_goto() {
    let host = HostAccess {
        tcp_ports: vec![3128, 8080, 3128],
    };
    let r = lines(&sandbox_rules(&id(), &NetworkPolicy::All, &host, Family::V4).unwrap());
    assert_eq!(
        r,
        [
            "-N WARREN-abcdefghijkl-H",
            "-A WARREN-abcdefghijkl-H -d 169.254.169.254/32 -j DROP",
            "-A WARREN-abcdefghijkl-H -d 169.254.0.0/16 -j DROP",
            "-A WARREN-abcdefghijkl-H -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN",
            "-A WARREN-abcdefghijkl-H -p tcp --dport 3128 -j RETURN",
            "-A WARREN-abcdefghijkl-H -p tcp --dport 8080 -j RETURN",
            "-A WARREN-abcdefghijkl-H -j DROP",
            "-I WARREN-HOST 1 -i wr-abcdefghijkl -g WARREN-abcdefghijkl-H",
        ]
    );
    let zero = HostAccess { tcp_ports: vec![0] };
    assert!(sandbox_rules(&id(), &NetworkPolicy::All, &zero, Family::V4).is_err());
}

#[test]
fn an_allow_list_drops_link_local_and_bridges_before_its_cidrs_return() {
    let policy = allow(&["10.0.0.0/8", "169.254.0.0/16", "1.2.3.4/32"]);
    let r = lines(&sandbox_rules(&id(), &policy, &HostAccess::default(), Family::V4).unwrap());
    assert_eq!(
        r,
        [
            "-N WARREN-abcdefghijkl",
            "-A WARREN-abcdefghijkl -d 169.254.169.254/32 -j DROP",
            "-A WARREN-abcdefghijkl -d 169.254.0.0/16 -j DROP",
            "-A WARREN-abcdefghijkl -o wr-+ -j DROP",
            "-A WARREN-abcdefghijkl -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN",
            "-A WARREN-abcdefghijkl -d 10.0.0.0/8 -j RETURN",
            "-A WARREN-abcdefghijkl -d 169.254.0.0/16 -j RETURN",
            "-A WARREN-abcdefghijkl -d 1.2.3.4/32 -j RETURN",
            "-A WARREN-abcdefghijkl -j DROP",
            "-I WARREN-FORWARD 1 -i wr-abcdefghijkl -g WARREN-abcdefghijkl",
        ]
    );
    // In IPv6 the IPv4 CIDRs open nothing: replies only.
    let r = lines(
        &sandbox_rules(
            &id(),
            &allow(&["0.0.0.0/0"]),
            &HostAccess::default(),
            Family::V6,
        )
        .unwrap(),
    );
    assert!(r.contains(&"-A WARREN-abcdefghijkl -j DROP".to_owned()));
    assert!(!r.iter().any(|l| l.contains("0.0.0.0/0")));
    // A bad CIDR fails the whole list in either family, before anything runs.
    for family in [Family::V4, Family::V6] {
        let bad = allow(&["10.0.0.0/8 -j ACCEPT"]);
        assert!(sandbox_rules(&id(), &bad, &HostAccess::default(), family).is_err());
    }
}

#[test]
fn a_sandboxs_chains_are_filled_before_the_gotos_lead_to_them() {
    for family in [Family::V4, Family::V6] {
        let host = HostAccess {
            tcp_ports: vec![22],
        };
        let r = sandbox_rules(&id(), &allow(&["10.0.0.0/8"]), &host, family).unwrap();
        let first_goto = r.iter().position(|a| a[0] == "-I").unwrap();
        assert!(r[..first_goto].iter().all(|a| a[0] == "-N" || a[0] == "-A"));
        assert_eq!(r.len() - first_goto, 2);
        for chain in [forward_chain(&id()), host_chain(&id())] {
            let last = r.iter().rev().find(|a| a[0] == "-A" && a[1] == chain);
            assert_eq!(last.unwrap().join(" "), format!("-A {chain} -j DROP"));
        }
    }
}

#[test]
fn repair_makes_the_shared_chains_and_their_jumps_first_then_nothing() {
    let t = repaired(Table::docker(), Family::V4);
    assert_eq!(
        t.rules_of("INPUT")[0],
        "-i wr-+ -j WARREN-HOST",
        "{}",
        t.listing()
    );
    assert_eq!(t.rules_of("DOCKER-USER")[0], "-i wr-+ -j WARREN-FORWARD");
    assert!(t.listing().contains(&jump_line("INPUT", HOST_CHAIN)));
    let parent = forward_parent(Family::V4, &t.listing());
    assert!(repair(&t.listing(), Family::V4, parent).is_empty());

    // IPv6 without Docker's DOCKER-USER: the forward chain hangs off FORWARD.
    let mut bare = Table::default();
    for chain in ["INPUT", "FORWARD", "OUTPUT"] {
        bare.chains.push((chain.to_owned(), vec![]));
    }
    let t = repaired(bare, Family::V6);
    assert!(!t.has("DOCKER-USER"));
    assert_eq!(t.rules_of("FORWARD")[0], "-i wr-+ -j WARREN-FORWARD");
    assert!(repair(&t.listing(), Family::V6, "FORWARD").is_empty());

    // IPv4 without DOCKER-USER (Docker not started yet): made, as Docker would.
    let mut bare = Table::default();
    for chain in ["INPUT", "FORWARD", "OUTPUT"] {
        bare.chains.push((chain.to_owned(), vec![]));
    }
    let t = repaired(bare, Family::V4);
    assert_eq!(t.rules_of("FORWARD")[0], "-j DOCKER-USER");
    assert_eq!(t.rules_of("DOCKER-USER")[0], "-i wr-+ -j WARREN-FORWARD");
}

#[test]
fn repair_moves_a_jump_back_first_and_drops_its_copies() {
    let mut t = repaired(Table::docker(), Family::V4);
    // A host firewall reloaded above it, and a second copy appended.
    t.run(&[
        argv(&["-I", "INPUT", "1", "-s", "10.0.0.0/8", "-j", "ACCEPT"]),
        argv(&["-A", "INPUT", "-i", "wr-+", "-j", HOST_CHAIN]),
    ]);
    let t = repaired(t, Family::V4);
    let input = t.rules_of("INPUT");
    assert_eq!(input[0], "-i wr-+ -j WARREN-HOST");
    assert_eq!(input.iter().filter(|r| r.contains(HOST_CHAIN)).count(), 1);
    assert!(repair(&t.listing(), Family::V4, "DOCKER-USER").is_empty());
}

#[test]
fn repair_remakes_a_changed_chain_keeping_the_sandboxes_gotos() {
    let mut t = repaired(Table::docker(), Family::V4);
    let host = HostAccess {
        tcp_ports: vec![3128],
    };
    t.run(&sandbox_rules(&id(), &NetworkPolicy::All, &host, Family::V4).unwrap());
    // An older layout's rules (no marker), or a chain someone flushed by hand.
    t.run(&[argv(&[
        "-D",
        HOST_CHAIN,
        "-m",
        "comment",
        "--comment",
        MARKER,
        "-j",
        "DROP",
    ])]);
    t.run(&[argv(&["-A", HOST_CHAIN, "-j", "DROP"])]);
    let t = repaired(t, Family::V4);
    let chain = t.rules_of(HOST_CHAIN);
    assert_eq!(chain[0], "-i wr-abcdefghijkl -g WARREN-abcdefghijkl-H");
    assert_eq!(
        chain[1..],
        lines(&shared_rules(HOST_CHAIN, Family::V4))
            .iter()
            .map(|l| l.trim_start_matches("-A WARREN-HOST ").to_owned())
            .collect::<Vec<_>>()[..]
    );
    // The legacy iptables prints the comment quoted: still the same rule.
    let quoted = t.listing().replace(MARKER, &format!("\"{MARKER}\""));
    assert!(repair(&quoted, Family::V4, "DOCKER-USER").is_empty());
}

#[test]
fn removal_undoes_a_sandboxs_own_rules_and_only_its_own() {
    let other = SandboxId::parse("sbx-zzzzzzzzzzzz").unwrap();
    let host = HostAccess {
        tcp_ports: vec![3128],
    };
    let mut t = repaired(Table::docker(), Family::V4);
    for sandbox in [id(), other.clone()] {
        t.run(&sandbox_rules(&sandbox, &allow(&["10.0.0.0/8"]), &host, Family::V4).unwrap());
    }
    // A jump left by an earlier version (one per sandbox in INPUT).
    t.run(&[argv(&[
        "-A",
        "INPUT",
        "-i",
        "wr-abcdefghijkl",
        "-j",
        "WARREN-abcdefghijkl-H",
    ])]);
    let before = t.listing();
    let undo = removal(&id(), &before);
    assert_eq!(
        lines(&undo),
        [
            "-D INPUT -i wr-abcdefghijkl -j WARREN-abcdefghijkl-H",
            "-D WARREN-FORWARD -i wr-abcdefghijkl -g WARREN-abcdefghijkl",
            "-D WARREN-HOST -i wr-abcdefghijkl -g WARREN-abcdefghijkl-H",
            "-F WARREN-abcdefghijkl",
            "-F WARREN-abcdefghijkl-H",
            "-X WARREN-abcdefghijkl",
            "-X WARREN-abcdefghijkl-H",
        ]
    );
    t.run(&undo);
    let after = t.listing();
    assert!(!after.contains("abcdefghijkl"), "{after}");
    assert!(after.contains("-g WARREN-zzzzzzzzzzzz-H"));
    // The shared chains are untouched, and nothing is left to do.
    assert!(repair(&after, Family::V4, "DOCKER-USER").is_empty());
    assert!(removal(&id(), &after).is_empty());
}

#[test]
fn a_batch_declares_its_chains_then_runs_the_rules_in_order() {
    let host = HostAccess {
        tcp_ports: vec![22],
    };
    let r = sandbox_rules(&id(), &allow(&["10.0.0.0/8"]), &host, Family::V4).unwrap();
    let batch = restore_batch(&r);
    let lines: Vec<&str> = batch.lines().collect();
    assert_eq!(lines[0], "*filter");
    assert_eq!(lines[1], ":WARREN-abcdefghijkl - [0:0]");
    assert_eq!(lines[2], ":WARREN-abcdefghijkl-H - [0:0]");
    assert!(lines[3..lines.len() - 1].iter().all(|l| l.starts_with('-')));
    assert_eq!(lines.last(), Some(&"COMMIT"));
    assert_eq!(lines.len(), r.len() + 2);
}

#[test]
fn repair_turns_the_old_layouts_jumps_into_gotos() {
    // A host upgraded under running sandboxes: each had jumps of its own in INPUT
    // and DOCKER-USER (one with open host ports), and no shared chains yet.
    let mut t = Table::docker();
    let host = HostAccess {
        tcp_ports: vec![3128],
    };
    let other = SandboxId::parse("sbx-zzzzzzzzzzzz").unwrap();
    for (sandbox, host) in [(id(), &host), (other, &HostAccess::default())] {
        let (fwd, hst) = (forward_chain(&sandbox), host_chain(&sandbox));
        let bridge = bridge_name(&sandbox);
        let mut own = vec![
            argv(&["-N", &fwd]),
            argv(&["-A", &fwd, "-o", "wr-+", "-j", "DROP"]),
        ];
        own.push(argv(&["-N", &hst]));
        for port in &host.tcp_ports {
            own.push(argv(&[
                "-A",
                &hst,
                "-p",
                "tcp",
                "--dport",
                &port.to_string(),
                "-j",
                "RETURN",
            ]));
        }
        own.push(argv(&["-A", &hst, "-j", "DROP"]));
        own.push(argv(&["-I", "DOCKER-USER", "1", "-i", &bridge, "-j", &fwd]));
        own.push(argv(&["-I", "INPUT", "1", "-i", &bridge, "-j", &hst]));
        t.run(&own);
    }
    let t = repaired(t, Family::V4);
    let input = t.rules_of("INPUT");
    assert_eq!(input[0], "-i wr-+ -j WARREN-HOST", "{}", t.listing());
    assert!(!input.iter().any(|r| r.contains("wr-abcdefghijkl")));
    let host_chain_rules = t.rules_of(HOST_CHAIN);
    assert!(host_chain_rules.contains(&"-i wr-abcdefghijkl -g WARREN-abcdefghijkl-H".to_owned()));
    assert!(host_chain_rules.contains(&"-i wr-zzzzzzzzzzzz -g WARREN-zzzzzzzzzzzz-H".to_owned()));
    let fwd = t.rules_of(FORWARD_CHAIN);
    assert!(fwd.contains(&"-i wr-abcdefghijkl -g WARREN-abcdefghijkl".to_owned()));
    assert!(
        !t.rules_of("DOCKER-USER")
            .iter()
            .any(|r| r.contains("wr-abcdefghijkl"))
    );
    // Done once; then a delete of the sandbox finds its gotos.
    assert!(repair(&t.listing(), Family::V4, "DOCKER-USER").is_empty());
    let mut t = t;
    t.run(&removal(&id(), &t.listing()));
    assert!(!t.listing().contains("abcdefghijkl"));
}
