//! Bounds on what logged-in users hold at once, like sshd's MaxSessions and
//! Teleport's `max_connections`: connections and channels per account and per
//! sandbox. Without them one account (or the bearer of one sandbox token) could
//! open connections and channels, each with its buffers and a leg to an agent,
//! until the gateway ran out of descriptors or memory for everyone.
//!
//! Not here: connections that have not logged in yet ([`super::limiter`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use warren_keys::SandboxId;
use warren_store::{User, UserId};

use super::PreauthLimits;

/// How many of each a logged-in user may hold at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionLimits {
    /// Logged-in SSH connections of one account (relay, jump host and console alike).
    pub connections_per_account: usize,
    /// Relay-mode connections to one sandbox, whoever logged in (owner, shared
    /// users, token bearers).
    pub connections_per_sandbox: usize,
    /// Open channels (sessions, `-L` forwards, `-J` jumps) of one account.
    pub channels_per_account: usize,
    /// Open channels into one sandbox, a jump to it included.
    pub channels_per_sandbox: usize,
}

impl SessionLimits {
    /// Room for an orchestrator running a hundred agents under one account, each
    /// with a few channels, and no more: past these a leak or a flood is more
    /// likely than a user. Sandboxes get the same (most have one owner).
    pub const DEFAULT: SessionLimits = SessionLimits {
        connections_per_account: 256,
        connections_per_sandbox: 256,
        channels_per_account: 1024,
        channels_per_sandbox: 1024,
    };
}

impl Default for SessionLimits {
    fn default() -> SessionLimits {
        SessionLimits::DEFAULT
    }
}

/// The front door's bounds as flags of `warren-gateway serve` and `warren up`.
#[derive(Debug, Clone, clap::Args)]
pub struct AdmissionArgs {
    /// SSH connections from one address (an IPv4 address, an IPv6 /64) that may be
    /// logging in at once; more wait their turn (up to 4 times as many).
    #[arg(long, default_value_t = PreauthLimits::FRONT_DOOR.per_address as u32, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub max_logins_per_address: u32,
    /// Logged-in SSH connections one account may hold at once.
    #[arg(long, default_value_t = SessionLimits::DEFAULT.connections_per_account as u32, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections_per_account: u32,
    /// SSH connections to one sandbox at once (relay mode, whoever logged in).
    #[arg(long, default_value_t = SessionLimits::DEFAULT.connections_per_sandbox as u32, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections_per_sandbox: u32,
    /// Open SSH channels (sessions, forwards, jumps) one account may hold at once.
    #[arg(long, default_value_t = SessionLimits::DEFAULT.channels_per_account as u32, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_channels_per_account: u32,
    /// Open SSH channels into one sandbox at once.
    #[arg(long, default_value_t = SessionLimits::DEFAULT.channels_per_sandbox as u32, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_channels_per_sandbox: u32,
}

impl AdmissionArgs {
    /// The front door's bounds before login.
    pub fn preauth(&self) -> PreauthLimits {
        let per_address = usize::try_from(self.max_logins_per_address).unwrap_or(usize::MAX);
        let front = PreauthLimits::FRONT_DOOR;
        PreauthLimits {
            per_address,
            total: front.total.max(per_address),
            backlog_per_address: per_address * 4,
            backlog: front.backlog.max(per_address * 4),
            ..front
        }
    }

    /// The bounds after login.
    pub fn limits(&self) -> SessionLimits {
        let n = |v: u32| usize::try_from(v).unwrap_or(usize::MAX);
        SessionLimits {
            connections_per_account: n(self.max_connections_per_account),
            connections_per_sandbox: n(self.max_connections_per_sandbox),
            channels_per_account: n(self.max_channels_per_account),
            channels_per_sandbox: n(self.max_channels_per_sandbox),
        }
    }
}

/// Who holds a place.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Holder {
    Account(UserId),
    Sandbox(SandboxId),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Connection,
    Channel,
}

#[derive(Default)]
struct Held {
    connections: usize,
    channels: usize,
}

impl Held {
    fn of(&mut self, kind: Kind) -> &mut usize {
        match kind {
            Kind::Connection => &mut self.connections,
            Kind::Channel => &mut self.channels,
        }
    }
}

/// What every logged-in connection of the front door counts against.
pub struct SessionBounds {
    limits: SessionLimits,
    /// Only holders with something held are here.
    held: Mutex<HashMap<Holder, Held>>,
}

/// Why a connection or channel was refused; the text is shown to the user.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("too many {what} {whose} (at most {limit} at once); close some and try again")]
pub struct Refused {
    what: &'static str,
    whose: String,
    limit: usize,
}

/// A place held, given back when dropped.
pub struct Permit {
    bounds: Arc<SessionBounds>,
    kind: Kind,
    holders: Vec<Holder>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut held = crate::unpoisoned(&self.bounds.held);
        for holder in &self.holders {
            if let Some(h) = held.get_mut(holder) {
                let n = h.of(self.kind);
                *n = n.saturating_sub(1);
                if h.connections == 0 && h.channels == 0 {
                    held.remove(holder);
                }
            }
        }
    }
}

impl SessionBounds {
    pub fn new(limits: SessionLimits) -> Arc<SessionBounds> {
        Arc::new(SessionBounds {
            limits,
            held: Mutex::new(HashMap::new()),
        })
    }

    /// A place for a logged-in connection of `account` (none for a token login)
    /// to `sandbox` (none for an account login).
    pub fn connection(
        self: &Arc<Self>,
        account: Option<&User>,
        sandbox: Option<&SandboxId>,
    ) -> Result<Permit, Refused> {
        self.take(Kind::Connection, account, sandbox)
    }

    /// A place for a channel of `account`'s connection, into `sandbox` if it
    /// reaches one.
    pub fn channel(
        self: &Arc<Self>,
        account: Option<&User>,
        sandbox: Option<&SandboxId>,
    ) -> Result<Permit, Refused> {
        self.take(Kind::Channel, account, sandbox)
    }

    fn take(
        self: &Arc<Self>,
        kind: Kind,
        account: Option<&User>,
        sandbox: Option<&SandboxId>,
    ) -> Result<Permit, Refused> {
        let (what, per_account, per_sandbox) = match kind {
            Kind::Connection => (
                "connections",
                self.limits.connections_per_account,
                self.limits.connections_per_sandbox,
            ),
            Kind::Channel => (
                "channels",
                self.limits.channels_per_account,
                self.limits.channels_per_sandbox,
            ),
        };
        let wanted = account
            .map(|u| {
                let whose = format!("for account {}", u.name);
                (Holder::Account(u.id.clone()), per_account, whose)
            })
            .into_iter()
            .chain(sandbox.map(|s| {
                let whose = format!("to sandbox {s}");
                (Holder::Sandbox(s.clone()), per_sandbox, whose)
            }));
        let mut held = crate::unpoisoned(&self.held);
        let mut holders = Vec::with_capacity(2);
        for (holder, limit, whose) in wanted {
            let now = held.get_mut(&holder).map_or(0, |h| *h.of(kind));
            if now >= limit {
                // Give back what this call took so far.
                drop(held);
                drop(Permit {
                    bounds: self.clone(),
                    kind,
                    holders,
                });
                tracing::info!(what, whose, limit, "refused: at the bound");
                return Err(Refused { what, whose, limit });
            }
            *held.entry(holder.clone()).or_default().of(kind) += 1;
            holders.push(holder);
        }
        Ok(Permit {
            bounds: self.clone(),
            kind,
            holders,
        })
    }

    /// Connections and channels held by `account` now (tests).
    #[cfg(test)]
    fn of_account(&self, account: &UserId) -> (usize, usize) {
        let held = crate::unpoisoned(&self.held);
        held.get(&Holder::Account(account.clone()))
            .map_or((0, 0), |h| (h.connections, h.channels))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn user(name: &str) -> User {
        User {
            id: UserId::generate(),
            name: name.to_owned(),
            is_admin: false,
            created_at: warren_store::Timestamp::now(),
        }
    }

    #[test]
    fn each_account_and_sandbox_has_its_own_bound() {
        let bounds = SessionBounds::new(SessionLimits {
            connections_per_account: 2,
            connections_per_sandbox: 3,
            channels_per_account: 1,
            channels_per_sandbox: 1,
        });
        let (alice, bob) = (user("alice"), user("bob"));
        let (one, two) = (SandboxId::generate(), SandboxId::generate());
        let a1 = bounds.connection(Some(&alice), Some(&one)).unwrap();
        let _a2 = bounds.connection(Some(&alice), None).unwrap();
        let refused = bounds.connection(Some(&alice), Some(&two)).err().unwrap();
        assert_eq!(
            refused.to_string(),
            "too many connections for account alice (at most 2 at once); close some and try again"
        );
        // The refusal took nothing: sandbox two is still empty.
        assert!(bounds.connection(None, Some(&two)).is_ok());
        // Bob is not alice; sandbox one has room for two more.
        let _b = bounds.connection(Some(&bob), Some(&one)).unwrap();
        let _t = bounds.connection(None, Some(&one)).unwrap();
        let full = bounds.connection(None, Some(&one)).err().unwrap();
        assert!(full.to_string().contains(&format!("to sandbox {one}")));
        drop(a1);
        assert_eq!(bounds.of_account(&alice.id), (1, 0));
        assert!(bounds.connection(Some(&alice), Some(&two)).is_ok());
        // Channels are counted apart from connections.
        let c = bounds.channel(Some(&alice), Some(&one)).unwrap();
        assert!(bounds.channel(Some(&bob), Some(&one)).is_err());
        assert!(bounds.channel(Some(&alice), Some(&two)).is_err());
        drop(c);
        assert!(bounds.channel(Some(&bob), Some(&one)).is_ok());
        assert_eq!(bounds.of_account(&alice.id), (1, 0));
    }
}
