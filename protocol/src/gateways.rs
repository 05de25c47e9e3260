//! The gateway set of a tier, as a gateway tells its runners
//! ([`crate::Request::Gateways`]): every live gateway's runner endpoint, so a
//! runner holds a tunnel to each and any gateway reaches any runner directly.
//!
//! A runner checks what it is told ([`GatewaySet::check`]) before it dials
//! anything: a bounded number of entries, each a plain HOST:PORT.

use serde::{Deserialize, Serialize};

/// At most this many gateways in a set.
pub const MAX_GATEWAYS: usize = 64;
/// Longest gateway id or address accepted.
const MAX_FIELD_LEN: usize = 255;

/// One gateway of the tier.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct GatewayEntry {
    /// The gateway's id in the store (random per start).
    pub id: String,
    /// Its runners' endpoint, HOST:PORT as runners reach it.
    pub runner_address: String,
}

/// Every live gateway, and which one is speaking.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewaySet {
    /// The id of the gateway that sent the set.
    pub this: String,
    pub gateways: Vec<GatewayEntry>,
}

impl GatewaySet {
    /// Why the set cannot be followed, if it cannot: too many entries, or an id or
    /// address that is empty, too long, or not HOST:PORT.
    pub fn check(&self) -> Result<(), String> {
        if self.gateways.len() > MAX_GATEWAYS {
            return Err(format!("more than {MAX_GATEWAYS} gateways"));
        }
        check_field("gateway id", &self.this)?;
        for g in &self.gateways {
            check_field("gateway id", &g.id)?;
            check_field("gateway address", &g.runner_address)?;
            let port = g
                .runner_address
                .rsplit_once(':')
                .filter(|(host, _)| !host.is_empty())
                .and_then(|(_, port)| port.parse::<u16>().ok());
            if port.is_none_or(|p| p == 0) {
                return Err("a gateway address is not HOST:PORT".into());
            }
        }
        Ok(())
    }
}

fn check_field(what: &str, value: &str) -> Result<(), String> {
    if value.is_empty()
        || value.len() > MAX_FIELD_LEN
        || value.chars().any(|c| c.is_control() || c.is_whitespace())
    {
        return Err(format!("a {what} is empty, too long or has spaces"));
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::Request;

    fn set(addresses: &[&str]) -> GatewaySet {
        GatewaySet {
            this: "gw-a".into(),
            gateways: addresses
                .iter()
                .enumerate()
                .map(|(i, a)| GatewayEntry {
                    id: format!("gw-{i}"),
                    runner_address: (*a).into(),
                })
                .collect(),
        }
    }

    #[test]
    fn wire_format_and_checks() {
        let req = Request::Gateways(set(&["127.0.0.1:2223", "gw2.example:2223", "[::1]:9"]));
        let line = serde_json::to_string(&req).unwrap();
        assert!(
            line.starts_with(r#"{"op":"gateways","this":"gw-a","gateways":[{"id":"gw-0","#),
            "{line}"
        );
        let Request::Gateways(back) = serde_json::from_str::<Request>(&line).unwrap() else {
            panic!("not gateways");
        };
        back.check().unwrap();
        for bad in ["", "host", ":22", "h:0", "h:99999", "h :1", "a\n:1"] {
            assert!(set(&[bad]).check().is_err(), "{bad:?}");
        }
        let many: Vec<String> = (0..65).map(|i| format!("h{i}:1")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        assert!(set(&many).check().is_err());
    }
}
