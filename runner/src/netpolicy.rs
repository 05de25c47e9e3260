//! Outbound network rules for a Docker sandbox, as iptables rules on the runner host.
//!
//! Each sandbox's bridge gets a known interface name ([`bridge_name`]) and a chain of
//! its own (`WARREN-<12 chars of the id>`), jumped to from `DOCKER-USER` (traffic the
//! host forwards: the internet, other hosts) and from `INPUT` (the host itself). The
//! chain always drops the cloud metadata address; an allow-list then returns only
//! for its CIDRs (and replies to connections already made) and drops the rest.
//! Separate bridges already keep sandboxes apart: Docker isolates its networks.

use std::net::Ipv4Addr;

use anyhow::{Context, Result, bail};
use tokio::process::Command;
use warren_keys::SandboxId;

use crate::protocol::NetworkPolicy;

/// The link-local address cloud providers serve instance metadata (and credentials) on.
pub const METADATA_ADDRESS: &str = "169.254.169.254/32";

fn short(id: &SandboxId) -> &str {
    id.as_str().trim_start_matches("sbx-")
}

/// The bridge interface of the sandbox's network (at most 15 characters).
pub fn bridge_name(id: &SandboxId) -> String {
    format!("wr-{}", short(id))
}

fn chain_name(id: &SandboxId) -> String {
    format!("WARREN-{}", short(id))
}

/// Parses `a.b.c.d/n` (or a bare address, meaning /32).
pub fn parse_cidr(text: &str) -> Result<(Ipv4Addr, u8)> {
    let (addr, bits) = text.split_once('/').unwrap_or((text, "32"));
    let addr: Ipv4Addr = addr
        .parse()
        .with_context(|| format!("invalid CIDR {text:?}"))?;
    let bits: u8 = bits
        .parse()
        .ok()
        .filter(|b| *b <= 32)
        .with_context(|| format!("invalid CIDR {text:?}"))?;
    Ok((addr, bits))
}

async fn iptables(args: &[&str]) -> Result<bool> {
    let out = Command::new("iptables")
        .arg("-w")
        .args(args)
        .output()
        .await
        .context("running iptables (the docker backend needs it)")?;
    Ok(out.status.success())
}

async fn must(args: &[&str]) -> Result<()> {
    if !iptables(args).await? {
        bail!("iptables {} failed", args.join(" "));
    }
    Ok(())
}

/// Installs the sandbox's rules (replacing any left from before).
pub async fn apply(id: &SandboxId, policy: &NetworkPolicy) -> Result<()> {
    remove(id).await;
    let chain = chain_name(id);
    let bridge = bridge_name(id);
    must(&["-N", &chain]).await?;
    must(&["-A", &chain, "-d", METADATA_ADDRESS, "-j", "DROP"]).await?;
    if let NetworkPolicy::Allow { cidrs } = policy {
        must(&[
            "-A",
            &chain,
            "-m",
            "conntrack",
            "--ctstate",
            "ESTABLISHED,RELATED",
            "-j",
            "RETURN",
        ])
        .await?;
        for cidr in cidrs {
            let (addr, bits) = parse_cidr(cidr)?;
            let cidr = format!("{addr}/{bits}");
            must(&["-A", &chain, "-d", &cidr, "-j", "RETURN"]).await?;
        }
        must(&["-A", &chain, "-j", "DROP"]).await?;
    }
    // Docker makes DOCKER-USER when it starts; be robust to a host where it has not.
    if !iptables(&["-L", "DOCKER-USER", "-n"]).await? {
        must(&["-N", "DOCKER-USER"]).await?;
        must(&["-I", "FORWARD", "-j", "DOCKER-USER"]).await?;
    }
    must(&["-I", "DOCKER-USER", "-i", &bridge, "-j", &chain]).await?;
    must(&["-I", "INPUT", "-i", &bridge, "-j", &chain]).await?;
    Ok(())
}

/// Removes the sandbox's rules; a no-op when there are none.
pub async fn remove(id: &SandboxId) {
    let chain = chain_name(id);
    let bridge = bridge_name(id);
    for parent in ["DOCKER-USER", "INPUT"] {
        while matches!(
            iptables(&["-D", parent, "-i", &bridge, "-j", &chain]).await,
            Ok(true)
        ) {}
    }
    let _ = iptables(&["-F", &chain]).await;
    let _ = iptables(&["-X", &chain]).await;
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_the_kernel_limits() {
        let id = SandboxId::generate();
        assert!(bridge_name(&id).len() <= 15);
        assert!(chain_name(&id).len() <= 28);
    }

    #[test]
    fn cidrs() {
        assert_eq!(
            parse_cidr("10.0.0.0/8").unwrap(),
            (Ipv4Addr::new(10, 0, 0, 0), 8)
        );
        assert_eq!(parse_cidr("1.2.3.4").unwrap().1, 32);
        assert!(parse_cidr("10.0.0.0/33").is_err());
        assert!(parse_cidr("-j ACCEPT").is_err());
        assert!(parse_cidr("::1/128").is_err());
    }
}
