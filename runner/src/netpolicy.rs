//! Network rules for a Docker sandbox, as iptables (and ip6tables) rules on the
//! runner host.
//!
//! Each sandbox's bridge gets a known interface name ([`bridge_name`]) and two chains
//! of its own, in both address families:
//!
//! - `WARREN-<id>`, jumped to from `DOCKER-USER` for what the sandbox sends through
//!   the host (the internet, other hosts). Link-local destinations (169.254.0.0/16,
//!   where clouds and container platforms serve metadata and credentials; fe80::/10
//!   and fd00:ec2::254 in IPv6) are always dropped. With [`NetworkPolicy::All`] the
//!   rest passes on to Docker's own rules; with [`NetworkPolicy::Allow`] only the
//!   CIDRs and replies to connections already made do, the rest is dropped.
//! - `WARREN-<id>-H`, jumped to from `INPUT`, for what the sandbox sends to the host
//!   itself (the bridge's gateway address or any other of the host's addresses):
//!   dropped, except replies and the TCP ports of [`HostAccess`].
//!
//! Passing a chain means `RETURN`, never `ACCEPT`: the host's own firewall still
//! applies. Docker's embedded DNS server (127.0.0.11) lives in the container's own
//! network namespace, so dropping `INPUT` leaves name resolution alone. Docker
//! isolates its networks too; the `wr-+` rule does not rely on it.
//!
//! IPv6 rules are installed whenever `ip6tables` works on the host, whether or not the
//! bridge carries IPv6 (Docker's default is not); without it they are skipped.
//! [`rules`] builds the argument lists, [`apply`] runs them, [`remove`] undoes them.

use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result, bail};
use tokio::process::Command;
use warren_keys::SandboxId;

use crate::protocol::NetworkPolicy;
use crate::protocol::validate::parse_cidr;

/// The link-local address cloud providers serve instance metadata (and credentials) on.
pub const METADATA_ADDRESS: &str = "169.254.169.254/32";
/// All of IPv4 link-local: metadata services, ECS's credentials endpoint (169.254.170.2)
/// and whatever else a platform serves there.
pub const LINK_LOCAL_V4: &str = "169.254.0.0/16";
/// IPv6 link-local.
pub const LINK_LOCAL_V6: &str = "fe80::/10";
/// EC2's instance metadata service over IPv6.
pub const METADATA_ADDRESS_V6: &str = "fd00:ec2::254/128";

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
    fn program(self) -> &'static str {
        match self {
            Family::V4 => "iptables",
            Family::V6 => "ip6tables",
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

/// The chain for what the sandbox sends through the host (from `DOCKER-USER`).
pub fn forward_chain(id: &SandboxId) -> String {
    format!("WARREN-{}", short(id))
}

/// The chain for what the sandbox sends to the host itself (from `INPUT`).
pub fn host_chain(id: &SandboxId) -> String {
    format!("WARREN-{}-H", short(id))
}

fn argv(parts: &[&str]) -> Vec<String> {
    parts.iter().map(|s| (*s).to_owned()).collect()
}

const REPLIES: [&str; 4] = ["-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED"];

/// The rules of one sandbox in one family, in the order to run them (each an argument
/// list for `iptables -w` / `ip6tables -w`): both chains created and filled, then the
/// jumps to them, inserted first in `forward_parent` (`DOCKER-USER`, or `FORWARD` where
/// that does not exist) and `INPUT`. Pure: [`apply`] runs them.
pub fn rules(
    id: &SandboxId,
    policy: &NetworkPolicy,
    host: &HostAccess,
    family: Family,
    forward_parent: &str,
) -> Result<Vec<Vec<String>>> {
    let fwd = forward_chain(id);
    let hst = host_chain(id);
    let bridge = bridge_name(id);
    let link_local: &[&str] = match family {
        // The metadata address is in the /16; its own rule says so explicitly.
        Family::V4 => &[METADATA_ADDRESS, LINK_LOCAL_V4],
        Family::V6 => &[LINK_LOCAL_V6, METADATA_ADDRESS_V6],
    };
    let mut ports = Vec::new();
    for &port in &host.tcp_ports {
        if port == 0 {
            bail!("host TCP port 0 is not a port");
        }
        if !ports.contains(&port) {
            ports.push(port);
        }
    }
    let mut out = Vec::new();

    // Through the host.
    out.push(argv(&["-N", &fwd]));
    for dst in link_local {
        out.push(argv(&["-A", &fwd, "-d", dst, "-j", "DROP"]));
    }
    // Never into another sandbox's bridge, whatever Docker's own isolation chains
    // are doing at the moment (one CI run saw a sandbox fetch a page from another).
    out.push(argv(&["-A", &fwd, "-o", "wr-+", "-j", "DROP"]));
    if let NetworkPolicy::Allow { cidrs } = policy {
        let mut replies = argv(&["-A", &fwd]);
        replies.extend(argv(&REPLIES));
        replies.extend(argv(&["-j", "RETURN"]));
        out.push(replies);
        // The CIDRs are IPv4: in IPv6, an allow-list lets nothing new out.
        if family == Family::V4 {
            for cidr in cidrs {
                let net = parse_cidr(cidr).context("network.cidrs")?;
                out.push(argv(&["-A", &fwd, "-d", &net.to_string(), "-j", "RETURN"]));
            }
        }
        out.push(argv(&["-A", &fwd, "-j", "DROP"]));
    }

    // To the host itself.
    out.push(argv(&["-N", &hst]));
    if family == Family::V6 {
        // Neighbour discovery: without it an IPv6 sandbox cannot find its gateway.
        // The kernel answers it; no service is behind it.
        for kind in ["neighbour-solicitation", "neighbour-advertisement"] {
            out.push(argv(&[
                "-A",
                &hst,
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
    for dst in link_local {
        out.push(argv(&["-A", &hst, "-d", dst, "-j", "DROP"]));
    }
    let mut replies = argv(&["-A", &hst]);
    replies.extend(argv(&REPLIES));
    replies.extend(argv(&["-j", "RETURN"]));
    out.push(replies);
    for port in ports {
        out.push(argv(&[
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
    out.push(argv(&["-A", &hst, "-j", "DROP"]));

    // The jumps last, so no packet meets a half-filled chain.
    out.push(argv(&["-I", forward_parent, "-i", &bridge, "-j", &fwd]));
    out.push(argv(&["-I", "INPUT", "-i", &bridge, "-j", &hst]));
    Ok(out)
}

/// Runs `iptables -w ARGS` (or ip6tables); `Ok(None)` on success, `Ok(Some(stderr))`
/// when it ran and failed, `Err` when it could not run.
async fn run(family: Family, args: &[String]) -> Result<Option<String>> {
    let out = Command::new(family.program())
        .arg("-w")
        .args(args)
        .output()
        .await
        .with_context(|| format!("running {} (the docker backend needs it)", family.program()))?;
    if out.status.success() {
        Ok(None)
    } else {
        Ok(Some(String::from_utf8_lossy(&out.stderr).trim().to_owned()))
    }
}

async fn ok(family: Family, args: &[&str]) -> bool {
    matches!(run(family, &argv(args)).await, Ok(None))
}

async fn must(family: Family, args: &[String]) -> Result<()> {
    if let Some(stderr) = run(family, args).await? {
        bail!("{} {} failed: {stderr}", family.program(), args.join(" "));
    }
    Ok(())
}

/// Whether ip6tables runs here (installed, and the kernel has IPv6 filtering).
async fn ipv6_available() -> bool {
    static WARNED: AtomicBool = AtomicBool::new(false);
    let ok = ok(Family::V6, &["-n", "-L", "INPUT"]).await;
    if !ok && !WARNED.swap(true, Ordering::Relaxed) {
        tracing::warn!(
            "ip6tables is missing or IPv6 is off: sandbox networks get IPv4 rules only \
             (their bridges carry no IPv6 unless Docker is set up for it)"
        );
    }
    ok
}

/// The rules as one `iptables-restore --noflush` batch for the filter table: chain
/// creations as its `:CHAIN` lines, the rest as written. Pure.
fn restore_batch(rules: &[Vec<String>]) -> String {
    let mut batch = String::from("*filter\n");
    for rule in rules {
        match rule.as_slice() {
            [n, chain] if n == "-N" => batch.push_str(&format!(":{chain} - [0:0]\n")),
            _ => {
                batch.push_str(&rule.join(" "));
                batch.push('\n');
            }
        }
    }
    batch.push_str("COMMIT\n");
    batch
}

/// Installs `rules` with one `iptables-restore --noflush` (or ip6tables-restore):
/// one process instead of one per rule, and the kernel takes the whole batch or
/// none of it.
async fn restore(family: Family, rules: &[Vec<String>]) -> Result<()> {
    use tokio::io::AsyncWriteExt;
    let program = match family {
        Family::V4 => "iptables-restore",
        Family::V6 => "ip6tables-restore",
    };
    let mut child = Command::new(program)
        .args(["-w", "--noflush"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("running {program} (the docker backend needs it)"))?;
    let mut stdin = child.stdin.take().context("no stdin")?;
    stdin.write_all(restore_batch(rules).as_bytes()).await?;
    drop(stdin);
    let out = child.wait_with_output().await?;
    if !out.status.success() {
        bail!(
            "{program} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Installs the sandbox's rules (replacing any left from before), one batch per
/// family. On failure, removes what it installed.
pub async fn apply(id: &SandboxId, policy: &NetworkPolicy, host: &HostAccess) -> Result<()> {
    remove(id).await;
    let installed = async {
        // Docker makes DOCKER-USER when it starts; be robust to a host where it has not.
        if !ok(Family::V4, &["-n", "-L", "DOCKER-USER"]).await {
            must(Family::V4, &argv(&["-N", "DOCKER-USER"])).await?;
            must(Family::V4, &argv(&["-I", "FORWARD", "-j", "DOCKER-USER"])).await?;
        }
        restore(
            Family::V4,
            &rules(id, policy, host, Family::V4, "DOCKER-USER")?,
        )
        .await?;
        if ipv6_available().await {
            // Docker makes the IPv6 DOCKER-USER only when its ip6tables support is on.
            let parent = if ok(Family::V6, &["-n", "-L", "DOCKER-USER"]).await {
                "DOCKER-USER"
            } else {
                "FORWARD"
            };
            restore(Family::V6, &rules(id, policy, host, Family::V6, parent)?).await?;
        }
        anyhow::Ok(())
    }
    .await;
    if installed.is_err() {
        remove(id).await;
    }
    installed
}

/// The commands that undo a sandbox's rules, given `iptables -S` output: each rule
/// jumping to one of its chains deleted, then each of its chains flushed and deleted.
/// Also undoes the layout of earlier versions (one chain, jumped to from `INPUT` too).
fn removal(id: &SandboxId, listing: &str) -> Vec<Vec<String>> {
    let chains = [forward_chain(id), host_chain(id)];
    let mut jumps = Vec::new();
    let mut present = Vec::new();
    for line in listing.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["-N", chain] if chains.iter().any(|c| c == chain) => present.push(*chain),
            ["-A", parent, rest @ ..]
                if !chains.iter().any(|c| c == parent)
                    && rest
                        .windows(2)
                        .any(|w| w[0] == "-j" && chains.iter().any(|c| c == w[1])) =>
            {
                let mut args = argv(&["-D", parent]);
                args.extend(argv(rest));
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

/// Removes the sandbox's rules, IPv4 and IPv6; a no-op when there are none.
pub async fn remove(id: &SandboxId) {
    for family in [Family::V4, Family::V6] {
        let Ok(out) = Command::new(family.program())
            .args(["-w", "-S"])
            .output()
            .await
        else {
            continue;
        };
        if !out.status.success() {
            continue;
        }
        let listing = String::from_utf8_lossy(&out.stdout);
        for args in removal(id, &listing) {
            if let Ok(Some(stderr)) = run(family, &args).await {
                tracing::warn!(sandbox = %id, %stderr, "{} {}", family.program(), args.join(" "));
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn id() -> SandboxId {
        SandboxId::parse("sbx-abcdefghijkl").unwrap()
    }

    /// The rules as `iptables -S` would print them, one a line.
    fn lines(rules: &[Vec<String>]) -> Vec<String> {
        rules.iter().map(|r| r.join(" ")).collect()
    }

    fn allow(cidrs: &[&str]) -> NetworkPolicy {
        NetworkPolicy::Allow {
            cidrs: cidrs.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    /// The default policy's IPv4 rules for [`id`].
    fn default_v4() -> Vec<Vec<String>> {
        rules(
            &id(),
            &NetworkPolicy::All,
            &HostAccess::default(),
            Family::V4,
            "DOCKER-USER",
        )
        .unwrap()
    }

    #[test]
    fn a_batch_makes_the_chains_then_fills_them_in_order() {
        let r = default_v4();
        let batch = restore_batch(&r);
        let lines: Vec<&str> = batch.lines().collect();
        assert_eq!(lines.first(), Some(&"*filter"));
        assert_eq!(lines.last(), Some(&"COMMIT"));
        assert_eq!(lines[1], ":WARREN-abcdefghijkl - [0:0]");
        assert!(lines.contains(&":WARREN-abcdefghijkl-H - [0:0]"));
        assert_eq!(
            lines[lines.len() - 2],
            "-I INPUT -i wr-abcdefghijkl -j WARREN-abcdefghijkl-H"
        );
        assert_eq!(lines.len(), r.len() + 2);
    }

    #[test]
    fn names_fit_the_kernel_limits() {
        let id = SandboxId::generate();
        assert!(bridge_name(&id).len() <= 15);
        assert!(forward_chain(&id).len() <= 28);
        assert!(host_chain(&id).len() <= 28);
    }

    #[test]
    fn default_policy_drops_link_local_and_the_host() {
        let r = default_v4();
        assert_eq!(
            lines(&r),
            [
                "-N WARREN-abcdefghijkl",
                "-A WARREN-abcdefghijkl -d 169.254.169.254/32 -j DROP",
                "-A WARREN-abcdefghijkl -d 169.254.0.0/16 -j DROP",
                "-A WARREN-abcdefghijkl -o wr-+ -j DROP",
                "-N WARREN-abcdefghijkl-H",
                "-A WARREN-abcdefghijkl-H -d 169.254.169.254/32 -j DROP",
                "-A WARREN-abcdefghijkl-H -d 169.254.0.0/16 -j DROP",
                "-A WARREN-abcdefghijkl-H -m conntrack --ctstate ESTABLISHED,RELATED -j RETURN",
                "-A WARREN-abcdefghijkl-H -j DROP",
                "-I DOCKER-USER -i wr-abcdefghijkl -j WARREN-abcdefghijkl",
                "-I INPUT -i wr-abcdefghijkl -j WARREN-abcdefghijkl-H",
            ]
        );
    }

    #[test]
    fn host_ports_pass_after_link_local_is_dropped_and_before_the_final_drop() {
        let host = HostAccess {
            tcp_ports: vec![3128, 8080, 3128],
        };
        let r =
            lines(&rules(&id(), &NetworkPolicy::All, &host, Family::V4, "DOCKER-USER").unwrap());
        let at = |rule: &str| r.iter().position(|l| l == rule).unwrap();
        let p1 = at("-A WARREN-abcdefghijkl-H -p tcp --dport 3128 -j RETURN");
        let p2 = at("-A WARREN-abcdefghijkl-H -p tcp --dport 8080 -j RETURN");
        assert!(at("-A WARREN-abcdefghijkl-H -d 169.254.0.0/16 -j DROP") < p1);
        assert!(p1 < p2 && p2 < at("-A WARREN-abcdefghijkl-H -j DROP"));
        assert_eq!(r.iter().filter(|l| l.contains("3128")).count(), 1);
        // Ports open the host only, never the way through it.
        assert!(
            !r.iter()
                .any(|l| l.contains("--dport") && !l.contains("-H "))
        );
        assert!(
            rules(
                &id(),
                &NetworkPolicy::All,
                &HostAccess { tcp_ports: vec![0] },
                Family::V4,
                "DOCKER-USER"
            )
            .is_err()
        );
    }

    #[test]
    fn allow_list_drops_link_local_before_its_cidrs_return() {
        let r = lines(
            &rules(
                &id(),
                &allow(&["10.0.0.0/8", "169.254.0.0/16", "1.2.3.4/32"]),
                &HostAccess::default(),
                Family::V4,
                "DOCKER-USER",
            )
            .unwrap(),
        );
        let fwd: Vec<&str> = r
            .iter()
            .map(String::as_str)
            .filter(|l| l.starts_with("-A WARREN-abcdefghijkl "))
            .collect();
        assert_eq!(
            fwd,
            [
                "-A WARREN-abcdefghijkl -d 169.254.169.254/32 -j DROP",
                "-A WARREN-abcdefghijkl -d 169.254.0.0/16 -j DROP",
                "-A WARREN-abcdefghijkl -o wr-+ -j DROP",
                "-A WARREN-abcdefghijkl -m conntrack --ctstate ESTABLISHED,RELATED -j RETURN",
                "-A WARREN-abcdefghijkl -d 10.0.0.0/8 -j RETURN",
                "-A WARREN-abcdefghijkl -d 169.254.0.0/16 -j RETURN",
                "-A WARREN-abcdefghijkl -d 1.2.3.4/32 -j RETURN",
                "-A WARREN-abcdefghijkl -j DROP",
            ]
        );
        // The host stays closed whatever the CIDRs cover.
        assert!(r.contains(&"-A WARREN-abcdefghijkl-H -j DROP".to_owned()));
        assert!(!r.iter().any(|l| l.contains("-H -d 10.0.0.0/8")));
        // A bad CIDR fails the whole list, before anything runs.
        assert!(
            rules(
                &id(),
                &allow(&["10.0.0.0/8 -j ACCEPT"]),
                &HostAccess::default(),
                Family::V4,
                "DOCKER-USER"
            )
            .is_err()
        );
    }

    #[test]
    fn ipv6_drops_link_local_metadata_and_the_host_but_keeps_neighbour_discovery() {
        let host = HostAccess {
            tcp_ports: vec![3128],
        };
        let r = lines(&rules(&id(), &NetworkPolicy::All, &host, Family::V6, "FORWARD").unwrap());
        assert_eq!(
            r,
            [
                "-N WARREN-abcdefghijkl",
                "-A WARREN-abcdefghijkl -d fe80::/10 -j DROP",
                "-A WARREN-abcdefghijkl -d fd00:ec2::254/128 -j DROP",
                "-A WARREN-abcdefghijkl -o wr-+ -j DROP",
                "-N WARREN-abcdefghijkl-H",
                "-A WARREN-abcdefghijkl-H -p ipv6-icmp -m icmp6 --icmpv6-type neighbour-solicitation -j RETURN",
                "-A WARREN-abcdefghijkl-H -p ipv6-icmp -m icmp6 --icmpv6-type neighbour-advertisement -j RETURN",
                "-A WARREN-abcdefghijkl-H -d fe80::/10 -j DROP",
                "-A WARREN-abcdefghijkl-H -d fd00:ec2::254/128 -j DROP",
                "-A WARREN-abcdefghijkl-H -m conntrack --ctstate ESTABLISHED,RELATED -j RETURN",
                "-A WARREN-abcdefghijkl-H -p tcp --dport 3128 -j RETURN",
                "-A WARREN-abcdefghijkl-H -j DROP",
                "-I FORWARD -i wr-abcdefghijkl -j WARREN-abcdefghijkl",
                "-I INPUT -i wr-abcdefghijkl -j WARREN-abcdefghijkl-H",
            ]
        );
        // IPv4 CIDRs open nothing in IPv6: replies only.
        let r = lines(
            &rules(
                &id(),
                &allow(&["0.0.0.0/0"]),
                &HostAccess::default(),
                Family::V6,
                "DOCKER-USER",
            )
            .unwrap(),
        );
        let fwd: Vec<&str> = r
            .iter()
            .map(String::as_str)
            .filter(|l| l.starts_with("-A WARREN-abcdefghijkl "))
            .collect();
        assert_eq!(
            fwd,
            [
                "-A WARREN-abcdefghijkl -d fe80::/10 -j DROP",
                "-A WARREN-abcdefghijkl -d fd00:ec2::254/128 -j DROP",
                "-A WARREN-abcdefghijkl -o wr-+ -j DROP",
                "-A WARREN-abcdefghijkl -m conntrack --ctstate ESTABLISHED,RELATED -j RETURN",
                "-A WARREN-abcdefghijkl -j DROP",
            ]
        );
    }

    #[test]
    fn chains_are_filled_before_anything_jumps_to_them() {
        for family in [Family::V4, Family::V6] {
            let r = rules(
                &id(),
                &allow(&["10.0.0.0/8"]),
                &HostAccess {
                    tcp_ports: vec![22],
                },
                family,
                "DOCKER-USER",
            )
            .unwrap();
            let first_jump = r.iter().position(|a| a[0] == "-I").unwrap();
            assert!(r[..first_jump].iter().all(|a| a[0] == "-N" || a[0] == "-A"));
            assert!(r[first_jump..].iter().all(|a| a[0] == "-I"));
            assert_eq!(r.len() - first_jump, 2);
            // Each chain ends in its final verdict.
            for chain in [forward_chain(&id()), host_chain(&id())] {
                let last = r.iter().rev().find(|a| a[0] == "-A" && a[1] == chain);
                assert_eq!(last.unwrap().join(" "), format!("-A {chain} -j DROP"));
            }
        }
    }

    #[test]
    fn removal_undoes_every_rule_and_only_the_sandboxes_own() {
        let id = id();
        let other = SandboxId::parse("sbx-zzzzzzzzzzzz").unwrap();
        let host = HostAccess {
            tcp_ports: vec![3128],
        };
        // A listing as `iptables -S` prints it after apply, with a neighbour's rules,
        // Docker's, and a jump left by an earlier version (INPUT to the forward chain).
        let mut listing = vec![
            "-P INPUT ACCEPT".to_owned(),
            "-N DOCKER-USER".to_owned(),
            "-A FORWARD -j DOCKER-USER".to_owned(),
            "-A INPUT -i wr-abcdefghijkl -j WARREN-abcdefghijkl".to_owned(),
        ];
        for (sandbox, parent) in [(&id, "DOCKER-USER"), (&other, "DOCKER-USER")] {
            let r = rules(sandbox, &NetworkPolicy::All, &host, Family::V4, parent).unwrap();
            listing.extend(lines(&r).into_iter().map(|l| l.replacen("-I", "-A", 1)));
        }
        let undo = lines(&removal(&id, &listing.join("\n")));
        assert_eq!(
            undo,
            [
                "-D INPUT -i wr-abcdefghijkl -j WARREN-abcdefghijkl",
                "-D DOCKER-USER -i wr-abcdefghijkl -j WARREN-abcdefghijkl",
                "-D INPUT -i wr-abcdefghijkl -j WARREN-abcdefghijkl-H",
                "-F WARREN-abcdefghijkl",
                "-F WARREN-abcdefghijkl-H",
                "-X WARREN-abcdefghijkl",
                "-X WARREN-abcdefghijkl-H",
            ]
        );
        // Nothing there: nothing to do.
        assert!(removal(&id, "-P INPUT ACCEPT\n-N DOCKER-USER\n").is_empty());
    }
}
