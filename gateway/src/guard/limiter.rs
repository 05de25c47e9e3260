//! Per source address limits on the SSH endpoints:
//!
//! - [`FailureLimiter`] slows password and key guessing: after too many failed logins
//!   in a window, new connections from that address are dropped until it passes.
//! - [`PreauthGate`] bounds the connections that have not logged in yet, per source
//!   address and in all (sshd's MaxStartups): a flood from one address cannot take
//!   the places of everyone else. Past the bound a connection may wait in a bounded
//!   queue for a place (like a listen backlog), so a burst of logins from one busy
//!   host is served in turn rather than dropped.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const WINDOW: Duration = Duration::from_secs(60);
const MAX_FAILURES: u32 = 30;
/// Addresses remembered at most, so a scan cannot grow the table without bound.
const MAX_ADDRESSES: usize = 10_000;

/// Failed logins counted by every limiter of this process (SSH front door, runner
/// joins, API keys), for `/metrics`.
static FAILURES_TOTAL: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// How many logins failed in this process so far.
pub fn failures_total() -> u64 {
    FAILURES_TOTAL.load(std::sync::atomic::Ordering::Relaxed)
}

#[derive(Default)]
pub struct FailureLimiter {
    failures: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

impl FailureLimiter {
    pub fn failed(&self, ip: IpAddr) {
        FAILURES_TOTAL.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let Ok(mut map) = self.failures.lock() else {
            return;
        };
        let now = Instant::now();
        if map.len() >= MAX_ADDRESSES && !map.contains_key(&ip) {
            map.retain(|_, (since, _)| now.duration_since(*since) < WINDOW);
            // Every entry still inside its window: forget one to make room, the one
            // with the fewest failures (the oldest of those), so that many addresses
            // failing once cannot wash out an address that is blocked.
            if map.len() >= MAX_ADDRESSES
                && let Some(evict) = map
                    .iter()
                    .min_by_key(|(_, (since, n))| (*n, *since))
                    .map(|(ip, _)| *ip)
            {
                map.remove(&evict);
            }
        }
        let entry = map.entry(ip).or_insert((now, 0));
        if now.duration_since(entry.0) >= WINDOW {
            *entry = (now, 0);
        }
        entry.1 = entry.1.saturating_add(1);
    }

    pub fn allows(&self, ip: IpAddr) -> bool {
        let Ok(map) = self.failures.lock() else {
            return true;
        };
        map.get(&ip)
            .is_none_or(|(since, n)| *n < MAX_FAILURES || since.elapsed() >= WINDOW)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        crate::unpoisoned(&self.failures).len()
    }
}

/// How often a refused flood is logged at warn level, at most (the count of refused
/// connections since the last warning goes with it; the others are at debug).
const REFUSAL_WARN_EVERY: Duration = Duration::from_secs(10);

/// Where a connection comes from, for the per address bound: an IPv4 address, or an
/// IPv6 /64 (what one host or one customer of a provider usually has).
fn source(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        v4 => v4,
    }
}

/// Why [`PreauthGate::admit`] refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Full {
    /// This source address has its share of unauthenticated connections.
    Address,
    /// Every place for an unauthenticated connection is taken.
    Total,
}

/// A connection waiting for a place, and how it is told it has one.
struct Waiter {
    id: u64,
    source: IpAddr,
    granted: tokio::sync::oneshot::Sender<()>,
}

#[derive(Default)]
struct GateState {
    total: usize,
    /// Only sources with a connection are here, so this holds `total` entries at most.
    per_source: HashMap<IpAddr, usize>,
    /// Connections waiting for a place, first come first served among those whose
    /// source has room; and how many of them are from each source.
    waiting: VecDeque<Waiter>,
    waiting_per_source: HashMap<IpAddr, usize>,
    next_waiter: u64,
    refused_since_warning: u64,
    last_warning: Option<Instant>,
}

impl GateState {
    fn held_by(&self, source: &IpAddr) -> usize {
        self.per_source.get(source).copied().unwrap_or(0)
    }

    fn take(&mut self, source: IpAddr) {
        self.total += 1;
        *self.per_source.entry(source).or_insert(0) += 1;
    }

    fn give_back(&mut self, source: IpAddr) {
        self.total = self.total.saturating_sub(1);
        if let Some(n) = self.per_source.get_mut(&source) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_source.remove(&source);
            }
        }
    }

    fn unqueue(&mut self, at: usize) -> Option<Waiter> {
        let waiter = self.waiting.remove(at)?;
        if let Some(n) = self.waiting_per_source.get_mut(&waiter.source) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.waiting_per_source.remove(&waiter.source);
            }
        }
        Some(waiter)
    }
}

/// Places for connections that have not logged in yet: `per_address` from one
/// source, `total` in all. A place is a [`PreauthSlot`], given back when dropped.
/// Past those, up to `backlog_per_address` from one source and `backlog` in all
/// may wait for a place ([`PreauthGate::admit_or_queue`]).
pub struct PreauthGate {
    per_address: usize,
    total: usize,
    backlog_per_address: usize,
    backlog: usize,
    /// Where the warnings are from ("SSH", "runner port").
    what: &'static str,
    state: Mutex<GateState>,
}

/// A place now, or a place in the queue.
pub enum Admission {
    Now(PreauthSlot),
    Queued(Ticket),
}

impl PreauthGate {
    /// A gate without a queue: past the bounds, connections are refused.
    pub fn new(per_address: usize, total: usize, what: &'static str) -> Arc<PreauthGate> {
        PreauthGate::with_backlog(per_address, total, 0, 0, what)
    }

    /// A gate where, past the bounds, `backlog_per_address` connections from one
    /// source and `backlog` in all may wait for a place.
    pub fn with_backlog(
        per_address: usize,
        total: usize,
        backlog_per_address: usize,
        backlog: usize,
        what: &'static str,
    ) -> Arc<PreauthGate> {
        Arc::new(PreauthGate {
            per_address,
            total,
            backlog_per_address,
            backlog,
            what,
            state: Mutex::new(GateState::default()),
        })
    }

    /// A place for a new connection from `ip`, or why there is none. A refusal is
    /// logged here (at warn level at most once per [`REFUSAL_WARN_EVERY`]).
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<PreauthSlot, Full> {
        match self.admit_inner(ip, false)? {
            Admission::Now(slot) => Ok(slot),
            // Not asked for; never made.
            Admission::Queued(_) => Err(Full::Total),
        }
    }

    /// [`admit`](Self::admit), but past the bounds the connection waits in the
    /// queue if its source and the queue have room; refused only past those too.
    pub fn admit_or_queue(self: &Arc<Self>, ip: IpAddr) -> Result<Admission, Full> {
        self.admit_inner(ip, true)
    }

    fn admit_inner(self: &Arc<Self>, ip: IpAddr, queue: bool) -> Result<Admission, Full> {
        let source = source(ip);
        let mut state = crate::unpoisoned(&self.state);
        let from_source = state.held_by(&source);
        let full = if from_source >= self.per_address {
            Full::Address
        } else if state.total >= self.total {
            Full::Total
        } else {
            state.take(source);
            return Ok(Admission::Now(self.slot(source)));
        };
        let queued_from_source = state.waiting_per_source.get(&source).copied().unwrap_or(0);
        if queue
            && queued_from_source < self.backlog_per_address
            && state.waiting.len() < self.backlog
        {
            let (granted, wait) = tokio::sync::oneshot::channel();
            let id = state.next_waiter;
            state.next_waiter += 1;
            state.waiting.push_back(Waiter {
                id,
                source,
                granted,
            });
            *state.waiting_per_source.entry(source).or_insert(0) += 1;
            return Ok(Admission::Queued(Ticket {
                gate: self.clone(),
                id,
                source,
                wait,
                done: false,
            }));
        }
        state.refused_since_warning += 1;
        let now = Instant::now();
        let warn = state
            .last_warning
            .is_none_or(|last| now.duration_since(last) >= REFUSAL_WARN_EVERY);
        let refused = state.refused_since_warning;
        if warn {
            state.last_warning = Some(now);
            state.refused_since_warning = 0;
        }
        let total = state.total;
        drop(state);
        let reason = match full {
            Full::Address => "too many unauthenticated connections from this address",
            Full::Total => "too many unauthenticated connections",
        };
        if warn {
            tracing::warn!(
                %ip, unauthenticated = total, refused, what = self.what,
                "{reason}; new connections are dropped"
            );
        } else {
            tracing::debug!(%ip, what = self.what, "{reason}; dropped");
        }
        Err(full)
    }

    /// Unauthenticated connections now: in all, and from `ip`'s source.
    #[cfg(test)]
    fn held(&self, ip: IpAddr) -> (usize, usize) {
        let state = crate::unpoisoned(&self.state);
        let from = state.per_source.get(&source(ip)).copied().unwrap_or(0);
        (state.total, from)
    }

    /// Connections waiting now (tests).
    #[cfg(test)]
    fn queued(&self) -> usize {
        crate::unpoisoned(&self.state).waiting.len()
    }

    fn slot(self: &Arc<Self>, source: IpAddr) -> PreauthSlot {
        PreauthSlot {
            gate: self.clone(),
            source,
            released: AtomicBool::new(false),
        }
    }

    fn release(&self, source: IpAddr) {
        let mut state = crate::unpoisoned(&self.state);
        state.give_back(source);
        self.hand_over(&mut state);
    }

    /// Gives free places to the waiting connections, oldest first among those whose
    /// source has room.
    fn hand_over(&self, state: &mut GateState) {
        while state.total < self.total {
            let per_address = self.per_address;
            let Some(at) = state
                .waiting
                .iter()
                .position(|w| state.held_by(&w.source) < per_address)
            else {
                return;
            };
            let Some(waiter) = state.unqueue(at) else {
                return;
            };
            state.take(waiter.source);
            if waiter.granted.send(()).is_err() {
                // Its ticket is gone (it removes itself first, so this is only a
                // ticket leaked without its drop): the place is free again.
                state.give_back(waiter.source);
            }
        }
    }
}

/// A connection's place in the queue of a [`PreauthGate`]; [`Ticket::wait`] turns
/// it into a place at the gate. Dropped, it leaves the queue (or gives back the
/// place it was handed and did not take up).
pub struct Ticket {
    gate: Arc<PreauthGate>,
    id: u64,
    source: IpAddr,
    wait: tokio::sync::oneshot::Receiver<()>,
    /// Turned into a slot: nothing to give back.
    done: bool,
}

impl Ticket {
    /// Waits until the connection has a place, or `deadline`.
    pub async fn wait(mut self, deadline: tokio::time::Instant) -> Option<PreauthSlot> {
        match tokio::time::timeout_at(deadline, &mut self.wait).await {
            Ok(Ok(())) => {
                self.done = true;
                Some(self.gate.slot(self.source))
            }
            _ => None,
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let mut state = crate::unpoisoned(&self.gate.state);
        if let Some(at) = state.waiting.iter().position(|w| w.id == self.id) {
            state.unqueue(at);
        } else {
            // Handed a place (under this lock, before now) that it never took.
            state.give_back(self.source);
            self.gate.hand_over(&mut state);
        }
    }
}

/// One unauthenticated connection's place at a [`PreauthGate`], given back once:
/// when the connection logs in ([`PreauthSlot::release`]) or when it is dropped.
pub struct PreauthSlot {
    gate: Arc<PreauthGate>,
    source: IpAddr,
    released: AtomicBool,
}

impl PreauthSlot {
    /// Gives the place back now (the connection logged in); dropping it later does
    /// nothing more.
    pub fn release(&self) {
        if !self.released.swap(true, Ordering::AcqRel) {
            self.gate.release(self.source);
        }
    }
}

impl Drop for PreauthSlot {
    fn drop(&mut self) {
        self.release();
    }
}

#[cfg(test)]
#[allow(clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn too_many_failures_block_an_address_only() {
        let limiter = FailureLimiter::default();
        let bad: IpAddr = "192.0.2.1".parse().unwrap_or(IpAddr::from([0, 0, 0, 0]));
        let good: IpAddr = "192.0.2.2".parse().unwrap_or(IpAddr::from([0, 0, 0, 0]));
        for _ in 0..MAX_FAILURES {
            assert!(limiter.allows(bad));
            limiter.failed(bad);
        }
        assert!(!limiter.allows(bad));
        assert!(limiter.allows(good));
    }

    fn nth_address(i: usize) -> IpAddr {
        let i = u32::try_from(i).unwrap_or(u32::MAX);
        IpAddr::from((0x0a00_0000_u32 | i).to_be_bytes())
    }

    #[test]
    fn the_failure_table_stays_bounded_when_every_entry_is_recent() {
        let limiter = FailureLimiter::default();
        let blocked = IpAddr::from([192, 0, 2, 1]);
        for _ in 0..MAX_FAILURES {
            limiter.failed(blocked);
        }
        // A scan: many more addresses than the table holds, all within the window.
        for i in 0..MAX_ADDRESSES + 2_000 {
            limiter.failed(nth_address(i));
            assert!(limiter.len() <= MAX_ADDRESSES);
        }
        assert_eq!(limiter.len(), MAX_ADDRESSES);
        // The addresses with the fewest failures made room, not the blocked one.
        assert!(!limiter.allows(blocked));
        // A known address failing again takes no room.
        limiter.failed(blocked);
        assert_eq!(limiter.len(), MAX_ADDRESSES);
    }

    #[test]
    fn the_gate_bounds_each_address_and_the_total() {
        let gate = PreauthGate::new(2, 3, "test");
        let a = IpAddr::from([192, 0, 2, 1]);
        let b = IpAddr::from([192, 0, 2, 2]);
        let c = IpAddr::from([192, 0, 2, 3]);
        let a1 = gate.admit(a);
        let a2 = gate.admit(a);
        assert!(a1.is_ok() && a2.is_ok());
        assert_eq!(gate.admit(a).err(), Some(Full::Address));
        let b1 = gate.admit(b);
        assert!(b1.is_ok());
        assert_eq!(gate.admit(c).err(), Some(Full::Total));
        assert_eq!(gate.held(a), (3, 2));
        // Released once only, by release() and drop alike.
        if let Ok(slot) = &a1 {
            slot.release();
            slot.release();
        }
        assert_eq!(gate.held(a), (2, 1));
        drop(a1);
        assert_eq!(gate.held(a), (2, 1));
        let c1 = gate.admit(c);
        assert!(c1.is_ok());
        drop((a2, b1, c1));
        assert_eq!(gate.held(a), (0, 0));
        assert!(crate::unpoisoned(&gate.state).per_source.is_empty());
    }

    #[tokio::test]
    async fn past_the_bounds_connections_wait_their_turn() {
        let gate = PreauthGate::with_backlog(1, 2, 2, 3, "test");
        let a = IpAddr::from([192, 0, 2, 1]);
        let b = IpAddr::from([192, 0, 2, 2]);
        let c = IpAddr::from([192, 0, 2, 3]);
        let soon = || tokio::time::Instant::now() + Duration::from_secs(5);
        let Ok(Admission::Now(a1)) = gate.admit_or_queue(a) else {
            panic!("a place for the first")
        };
        // a's bound is 1: the next two from a wait, the third is refused.
        let Ok(Admission::Queued(a2)) = gate.admit_or_queue(a) else {
            panic!("a queue place")
        };
        let Ok(Admission::Queued(a3)) = gate.admit_or_queue(a) else {
            panic!("a queue place")
        };
        assert_eq!(gate.admit_or_queue(a).err(), Some(Full::Address));
        // Another address still gets the last place, then waits in the last queue place.
        let Ok(Admission::Now(b1)) = gate.admit_or_queue(b) else {
            panic!("b's place")
        };
        let Ok(Admission::Queued(c1)) = gate.admit_or_queue(c) else {
            panic!("c waits")
        };
        assert_eq!(gate.admit_or_queue(c).err(), Some(Full::Total));
        assert_eq!(gate.queued(), 3);
        // b leaves: c (the oldest that fits; a is at its own bound) gets the place.
        drop(b1);
        let c1 = c1.wait(soon()).await.expect("c's turn");
        assert_eq!(gate.held(c), (2, 1));
        // a's first leaves: a's next in line gets it, the one after still waits.
        drop(a1);
        let a2 = a2.wait(soon()).await.expect("a's turn");
        let late = tokio::time::Instant::now() + Duration::from_millis(50);
        assert!(a3.wait(late).await.is_none(), "no place was free");
        assert_eq!(gate.queued(), 0);
        // A place handed to a ticket dropped before taking it goes to the next.
        let Ok(Admission::Queued(a4)) = gate.admit_or_queue(a) else {
            panic!("a queue place")
        };
        let Ok(Admission::Queued(a5)) = gate.admit_or_queue(a) else {
            panic!("a queue place")
        };
        drop(a2);
        drop(a4);
        let a5 = a5.wait(soon()).await.expect("a5 gets a4's place");
        drop((a5, c1));
        assert_eq!(gate.held(a), (0, 0));
        assert_eq!(gate.queued(), 0);
        // Without a backlog nothing waits.
        let plain = PreauthGate::new(1, 1, "test");
        let _p = plain.admit(a);
        assert_eq!(plain.admit_or_queue(a).err(), Some(Full::Address));
    }

    #[test]
    fn an_ipv6_source_is_its_64() {
        let gate = PreauthGate::new(1, 10, "test");
        let one: IpAddr = "2001:db8:1:2::1".parse().unwrap_or(IpAddr::from([0; 16]));
        let same: IpAddr = "2001:db8:1:2:ffff::9"
            .parse()
            .unwrap_or(IpAddr::from([0; 16]));
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap_or(IpAddr::from([0; 16]));
        let _held = gate.admit(one);
        assert_eq!(gate.admit(same).err(), Some(Full::Address));
        assert!(gate.admit(other).is_ok());
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap_or(IpAddr::from([0; 16]));
        let _v4 = gate.admit(IpAddr::from([192, 0, 2, 1]));
        assert_eq!(gate.admit(mapped).err(), Some(Full::Address));
    }
}
