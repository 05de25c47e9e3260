//! The rules themselves, as argument lists for `iptables -w` (and `ip6tables -w`),
//! and what to change given a listing (`iptables -S`). Pure: [`super`] runs them.
//!
//! Every rule is written as `iptables -S` prints it back (`RELATED,ESTABLISHED`,
//! ICMPv6 types by number), so a listing compares with them line for line.

use anyhow::{Context, Result, bail};
use warren_keys::SandboxId;

use crate::protocol::NetworkPolicy;
use crate::protocol::validate::parse_cidr;

/// The shared chain for what any sandbox sends to the host itself (from `INPUT`).
pub const HOST_CHAIN: &str = "WARREN-HOST";
/// The shared chain for what any sandbox sends through the host (from `DOCKER-USER`).
pub const FORWARD_CHAIN: &str = "WARREN-FORWARD";
/// The comment on each shared chain's last rule: the version of their layout. A
/// chain whose rules differ from this version's (an older runner's, or cut short)
/// is made again.
pub const MARKER: &str = "warren-netpolicy-2";
/// Every sandbox bridge ([`bridge_name`]), as an interface match.
const BRIDGES: &str = "wr-+";

/// The link-local address cloud providers serve instance metadata (and credentials) on.
pub const METADATA_ADDRESS: &str = "169.254.169.254/32";
/// All of IPv4 link-local: metadata services, ECS's credentials endpoint (169.254.170.2)
/// and whatever else a platform serves there.
pub const LINK_LOCAL_V4: &str = "169.254.0.0/16";
/// IPv6 link-local.
pub const LINK_LOCAL_V6: &str = "fe80::/10";
/// EC2's instance metadata service over IPv6.
pub const METADATA_ADDRESS_V6: &str = "fd00:ec2::254/128";

const REPLIES: [&str; 4] = ["-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED"];

/// What of the runner host itself a sandbox may reach; by default nothing but replies.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostAccess {
    /// TCP ports on the host's own addresses (not link-local ones) that sandboxes may
    /// connect to, e.g. a package cache the operator runs on the host.
    pub tcp_ports: Vec<u16>,
}

/// An iptables address family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub(super) fn program(self) -> &'static str {
        match self {
            Family::V4 => "iptables",
            Family::V6 => "ip6tables",
        }
    }

    fn link_local(self) -> &'static [&'static str] {
        match self {
            // The metadata address is in the /16; its own rule says so explicitly.
            Family::V4 => &[METADATA_ADDRESS, LINK_LOCAL_V4],
            Family::V6 => &[LINK_LOCAL_V6, METADATA_ADDRESS_V6],
        }
    }
}

fn short(id: &SandboxId) -> &str {
    id.as_str().trim_start_matches("sbx-")
}

/// The bridge interface of the sandbox's network (at most 15 characters).
pub fn bridge_name(id: &SandboxId) -> String {
    format!("wr-{}", short(id))
}

/// The sandbox's own chain for what it sends through the host (an allow-list).
pub fn forward_chain(id: &SandboxId) -> String {
    format!("WARREN-{}", short(id))
}

/// The sandbox's own chain for what it sends to the host itself (open host ports).
pub fn host_chain(id: &SandboxId) -> String {
    format!("WARREN-{}-H", short(id))
}

fn argv(parts: &[&str]) -> Vec<String> {
    parts.iter().map(|s| (*s).to_owned()).collect()
}

/// The rule jumping from `parent` to the shared `chain`, as `iptables -S` lists it.
pub fn jump_line(parent: &str, chain: &str) -> String {
    format!("-A {parent} -i {BRIDGES} -j {chain}")
}

/// The chain through the host: link-local and every sandbox bridge dropped; for an
/// allow-list, then only replies and its CIDRs (IPv4 only: in IPv6 an allow-list
/// lets nothing new out), the rest dropped.
fn forward_body(chain: &str, family: Family, policy: &NetworkPolicy) -> Result<Vec<Vec<String>>> {
    let mut out = Vec::new();
    for dst in family.link_local() {
        out.push(argv(&["-A", chain, "-d", dst, "-j", "DROP"]));
    }
    // Never into another sandbox's bridge, whatever Docker's own isolation chains
    // are doing at the moment (one CI run saw a sandbox fetch a page from another).
    out.push(argv(&["-A", chain, "-o", BRIDGES, "-j", "DROP"]));
    if let NetworkPolicy::Allow { cidrs } = policy {
        let mut replies = argv(&["-A", chain]);
        replies.extend(argv(&REPLIES));
        replies.extend(argv(&["-j", "RETURN"]));
        out.push(replies);
        for cidr in cidrs {
            // Checked in both families, so a bad list fails whatever the host has.
            let net = parse_cidr(cidr).context("network.cidrs")?;
            if family == Family::V4 {
                out.push(argv(&["-A", chain, "-d", &net.to_string(), "-j", "RETURN"]));
            }
        }
        out.push(argv(&["-A", chain, "-j", "DROP"]));
    }
    Ok(out)
}

/// The chain to the host itself: dropped, except replies and `ports` (never on
/// link-local addresses); neighbour discovery kept in IPv6.
fn host_body(chain: &str, family: Family, ports: &[u16]) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    if family == Family::V6 {
        // Neighbour solicitation and advertisement: without them an IPv6 sandbox
        // cannot find its gateway. The kernel answers them; no service is behind it.
        for kind in ["135", "136"] {
            out.push(argv(&[
                "-A",
                chain,
                "-p",
                "ipv6-icmp",
                "-m",
                "icmp6",
                "--icmpv6-type",
                kind,
                "-j",
                "RETURN",
            ]));
        }
    }
    for dst in family.link_local() {
        out.push(argv(&["-A", chain, "-d", dst, "-j", "DROP"]));
    }
    let mut replies = argv(&["-A", chain]);
    replies.extend(argv(&REPLIES));
    replies.extend(argv(&["-j", "RETURN"]));
    out.push(replies);
    for port in ports {
        out.push(argv(&[
            "-A",
            chain,
            "-p",
            "tcp",
            "--dport",
            &port.to_string(),
            "-j",
            "RETURN",
        ]));
    }
    out.push(argv(&["-A", chain, "-j", "DROP"]));
    out
}

/// The rules of the shared `chain` ([`FORWARD_CHAIN`] or [`HOST_CHAIN`]) in `family`,
/// without the gotos of sandboxes that have chains of their own; the last carries
/// [`MARKER`].
pub fn shared_rules(chain: &str, family: Family) -> Vec<Vec<String>> {
    let mut rules = if chain == FORWARD_CHAIN {
        // The default policy has no list to get wrong.
        forward_body(chain, family, &NetworkPolicy::All).unwrap_or_default()
    } else {
        host_body(chain, family, &[])
    };
    if let Some(last) = rules.last_mut() {
        let at = last.len() - 2;
        last.splice(at..at, argv(&["-m", "comment", "--comment", MARKER]));
    }
    rules
}

/// The rules of a sandbox whose policy or host access differs from the shared
/// chains' (an allow-list, open host ports), in the order to run them: its chains
/// made and filled, then the gotos to them, first in the shared chains. Empty for
/// the default. Pure: [`super::apply`] runs them.
pub fn sandbox_rules(
    id: &SandboxId,
    policy: &NetworkPolicy,
    host: &HostAccess,
    family: Family,
) -> Result<Vec<Vec<String>>> {
    let mut ports = Vec::new();
    for &port in &host.tcp_ports {
        if port == 0 {
            bail!("host TCP port 0 is not a port");
        }
        if !ports.contains(&port) {
            ports.push(port);
        }
    }
    let bridge = bridge_name(id);
    let mut chains = Vec::new();
    let mut gotos = Vec::new();
    if matches!(policy, NetworkPolicy::Allow { .. }) {
        let chain = forward_chain(id);
        chains.push(argv(&["-N", &chain]));
        chains.extend(forward_body(&chain, family, policy)?);
        gotos.push(argv(&[
            "-I",
            FORWARD_CHAIN,
            "1",
            "-i",
            &bridge,
            "-g",
            &chain,
        ]));
    }
    if !ports.is_empty() {
        let chain = host_chain(id);
        chains.push(argv(&["-N", &chain]));
        chains.extend(host_body(&chain, family, &ports));
        gotos.push(argv(&["-I", HOST_CHAIN, "1", "-i", &bridge, "-g", &chain]));
    }
    // The gotos last, so no packet meets a half-filled chain.
    chains.extend(gotos);
    Ok(chains)
}

/// A listing's rules, each as its words (quotes dropped: the legacy iptables prints
/// comments quoted).
fn parse(listing: &str) -> Vec<Vec<String>> {
    listing
        .lines()
        .map(|line| {
            line.split_whitespace()
                .map(|w| w.trim_matches('"').to_owned())
                .collect()
        })
        .collect()
}

fn has_chain(listing: &[Vec<String>], chain: &str) -> bool {
    listing
        .iter()
        .any(|w| w.len() == 2 && w[0] == "-N" && w[1] == chain)
}

fn appended_to<'a>(
    listing: &'a [Vec<String>],
    chain: &'a str,
) -> impl Iterator<Item = &'a Vec<String>> {
    listing
        .iter()
        .filter(move |w| w.len() > 2 && w[0] == "-A" && w[1] == chain)
}

fn is_goto(rule: &[String]) -> bool {
    rule.iter().any(|w| w == "-g")
}

/// The parent of [`FORWARD_CHAIN`] in `family`: `DOCKER-USER`, made by Docker when it
/// starts (and by [`repair`] for IPv4 when it has not), or `FORWARD` in IPv6 when
/// Docker's IPv6 support is off.
pub fn forward_parent(family: Family, listing: &str) -> &'static str {
    if family == Family::V6 && !has_chain(&parse(listing), "DOCKER-USER") {
        "FORWARD"
    } else {
        "DOCKER-USER"
    }
}

/// What brings the shared chains of `family` to this version's rules, given a
/// listing: a chain missing or holding other rules is made again (in a batch, the
/// `-N` flushes it) with the gotos it held; a sandbox's own jump from a parent (the
/// layout before) becomes a goto from the shared chain; a jump missing or not first
/// in its parent is (re)inserted first. Empty when all is in place.
pub fn repair(listing: &str, family: Family, parent: &str) -> Vec<Vec<String>> {
    let listing = parse(listing);
    let mut out = Vec::new();
    for chain in [FORWARD_CHAIN, HOST_CHAIN] {
        let want = shared_rules(chain, family);
        let present = has_chain(&listing, chain);
        let (gotos, rest): (Vec<&Vec<String>>, Vec<&Vec<String>>) =
            appended_to(&listing, chain).partition(|r| is_goto(r));
        if present && rest.iter().copied().eq(want.iter()) {
            continue;
        }
        out.push(argv(&["-N", chain]));
        out.extend(gotos.into_iter().cloned());
        out.extend(want);
    }
    if parent == "DOCKER-USER" && !has_chain(&listing, parent) {
        out.push(argv(&["-N", parent]));
        out.push(argv(&["-I", "FORWARD", "1", "-j", parent]));
    }
    for (parent, chain) in [(parent, FORWARD_CHAIN), ("INPUT", HOST_CHAIN)] {
        // A sandbox made by a runner before the shared chains has a jump of its own
        // in the parent, which the shared chain (first) would now overrule: it
        // becomes a goto from the shared chain, as this version makes them.
        for rule in appended_to(&listing, parent) {
            if let [_, _, i, bridge, j, own] = rule.as_slice()
                && i == "-i"
                && j == "-j"
                && bridge.starts_with("wr-")
                && bridge != BRIDGES
                && own.starts_with("WARREN-")
                && own != chain
            {
                out.push(argv(&["-D", parent, "-i", bridge, "-j", own]));
                out.push(argv(&["-I", chain, "1", "-i", bridge, "-g", own]));
            }
        }
        let jump = argv(&["-A", parent, "-i", BRIDGES, "-j", chain]);
        let rules: Vec<&Vec<String>> = appended_to(&listing, parent).collect();
        let copies = rules.iter().filter(|r| ***r == jump).count();
        if copies == 1 && rules.first() == Some(&&jump) {
            continue;
        }
        for _ in 0..copies {
            out.push(argv(&["-D", parent, "-i", BRIDGES, "-j", chain]));
        }
        out.push(argv(&["-I", parent, "1", "-i", BRIDGES, "-j", chain]));
    }
    out
}

/// The commands that undo a sandbox's own rules, given a listing: each rule leading
/// to one of its chains (`-j` or `-g`, from any chain) deleted, then its chains
/// flushed and deleted. Also undoes the per-sandbox jumps from `INPUT` and
/// `DOCKER-USER` of earlier versions.
pub fn removal(id: &SandboxId, listing: &str) -> Vec<Vec<String>> {
    let chains = [forward_chain(id), host_chain(id)];
    let ours = |name: &str| chains.iter().any(|c| c == name);
    let mut jumps = Vec::new();
    let mut present = Vec::new();
    for words in parse(listing) {
        match words.as_slice() {
            [n, chain] if n == "-N" && ours(chain) => present.push(chain.clone()),
            [a, parent, rest @ ..]
                if a == "-A"
                    && !ours(parent)
                    && rest
                        .windows(2)
                        .any(|w| (w[0] == "-j" || w[0] == "-g") && ours(&w[1])) =>
            {
                let mut args = argv(&["-D", parent]);
                args.extend(rest.iter().cloned());
                jumps.push(args);
            }
            _ => {}
        }
    }
    let mut out = jumps;
    for chain in &present {
        out.push(argv(&["-F", chain]));
    }
    for chain in &present {
        out.push(argv(&["-X", chain]));
    }
    out
}

/// The rules as one `iptables-restore --noflush` batch for the filter table: chain
/// creations first, as its `:CHAIN` lines (which also flush a chain that exists),
/// then the rest as written, in order.
pub fn restore_batch(rules: &[Vec<String>]) -> String {
    let mut batch = String::from("*filter\n");
    for rule in rules {
        if let [n, chain] = rule.as_slice()
            && n == "-N"
        {
            batch.push_str(&format!(":{chain} - [0:0]\n"));
        }
    }
    for rule in rules {
        if !matches!(rule.as_slice(), [n, _] if n == "-N") {
            batch.push_str(&rule.join(" "));
            batch.push('\n');
        }
    }
    batch.push_str("COMMIT\n");
    batch
}

#[cfg(test)]
#[path = "rules_tests.rs"]
mod tests;
