//! The sandbox's watcher (`warren-agent watch` on an exec channel), as the mirror
//! reads it: NUL-terminated `REV TAB OP TAB PATH` records parsed into [`Change`]s,
//! drained by a task of their own into a bounded [`Inbox`], where a flood becomes one
//! rescan. Everything here is from the sandbox, so every record is bounded.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::error::SyncError;

/// One change from the watcher.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Change {
    Ready,
    Written(String),
    Deleted(String),
    Moved(String, String),
    Overflow,
}

fn parse(record: &[u8]) -> Option<(u64, Change)> {
    let text = std::str::from_utf8(record).ok()?;
    let mut fields = text.split('\t');
    let rev = fields.next()?.parse().ok()?;
    let change = match fields.next()? {
        "S" => Change::Ready,
        "W" => Change::Written(fields.next()?.to_owned()),
        "D" => Change::Deleted(fields.next()?.to_owned()),
        "M" => Change::Moved(fields.next()?.to_owned(), fields.next()?.to_owned()),
        "O" => Change::Overflow,
        _ => return None,
    };
    Some((rev, change))
}

/// Longest record the watcher may send (two paths of PATH_MAX and change).
const MAX_RECORD: usize = 2 * crate::remote::MAX_PATH + 64;

/// Changes waiting to be applied, at most this many: past it they are dropped
/// for one full rescan, which covers them all.
pub(super) const MAX_PENDING: usize = 50_000;

/// Changes the session takes from the inbox at once.
const TAKE_AT_ONCE: usize = 256;

#[derive(Default)]
struct Records {
    buf: Vec<u8>,
}

impl Records {
    /// The next whole record; an error once more than [`MAX_RECORD`] bytes came
    /// without one ending.
    fn pop(&mut self) -> Result<Option<(u64, Change)>, SyncError> {
        loop {
            let Some(end) = self.buf.iter().position(|b| *b == 0) else {
                if self.buf.len() > MAX_RECORD {
                    return Err(SyncError::TooLarge {
                        what: "a record from the watcher",
                        limit: MAX_RECORD,
                    });
                }
                return Ok(None);
            };
            let record: Vec<u8> = self.buf.drain(..=end).collect();
            if end <= MAX_RECORD
                && let Some(parsed) = parse(&record[..end])
            {
                return Ok(Some(parsed));
            }
        }
    }
}

/// What the watcher sent and the session has not taken yet.
#[derive(Default)]
struct Pending {
    changes: VecDeque<Change>,
    last_rev: u64,
    /// An overflow is queued: the rescan it makes covers everything after it.
    rescan: bool,
    ended: Option<SyncError>,
}

impl Pending {
    fn push(&mut self, rev: u64, change: Change) {
        self.last_rev = self.last_rev.max(rev);
        if change == Change::Ready {
            // Once per watcher: what the session waits for before its first pull.
            self.changes.push_back(change);
            return;
        }
        if self.rescan {
            return;
        }
        if change == Change::Overflow || self.changes.len() >= MAX_PENDING {
            let ready = self.changes.contains(&Change::Ready);
            self.changes.clear();
            if ready {
                self.changes.push_back(Change::Ready);
            }
            self.changes.push_back(Change::Overflow);
            self.rescan = true;
            return;
        }
        self.changes.push_back(change);
    }
}

#[derive(Default)]
pub(super) struct Inbox {
    pending: Mutex<Pending>,
    ready: tokio::sync::Notify,
}

impl Inbox {
    fn with<T>(&self, f: impl FnOnce(&mut Pending) -> T) -> T {
        let mut pending = match self.pending.lock() {
            Ok(p) => p,
            Err(poisoned) => poisoned.into_inner(),
        };
        f(&mut pending)
    }

    /// Everything waiting, once something is (or `wait` has passed); the end of
    /// the watcher once all before it is taken.
    pub(super) async fn take(
        &self,
        wait: Option<Duration>,
    ) -> Result<(Vec<Change>, u64), SyncError> {
        let deadline = wait.map(|w| tokio::time::Instant::now() + w);
        loop {
            let notified = self.ready.notified();
            let taken = self.with(|p| {
                if !p.changes.is_empty() {
                    // A few at a time, so an overflow behind them is seen soon.
                    let n = p.changes.len().min(TAKE_AT_ONCE);
                    let taken = p.changes.drain(..n).collect();
                    if p.changes.is_empty() {
                        p.rescan = false;
                    }
                    return Some(Ok((taken, p.last_rev)));
                }
                p.ended.take().map(Err)
            });
            if let Some(taken) = taken {
                return taken;
            }
            match deadline {
                Some(at) => {
                    if tokio::time::timeout_at(at, notified).await.is_err() {
                        return Ok((Vec::new(), self.with(|p| p.last_rev)));
                    }
                }
                None => notified.await,
            }
        }
    }

    fn push(&self, rev: u64, change: Change) {
        self.with(|p| p.push(rev, change));
        self.ready.notify_one();
    }

    fn end(&self, e: SyncError) {
        self.with(|p| p.ended = Some(e));
        self.ready.notify_one();
    }
}

pub(super) struct AbortOnDrop(pub(super) tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Reads the watcher's records until its channel ends; the end is an error (the
/// session then reconnects).
pub(super) async fn read_records(
    mut channel: russh::Channel<russh::client::Msg>,
    inbox: Arc<Inbox>,
) {
    let mut records = Records::default();
    loop {
        loop {
            match records.pop() {
                Ok(Some((rev, change))) => inbox.push(rev, change),
                Ok(None) => break,
                Err(e) => return inbox.end(e),
            }
        }
        match channel.wait().await {
            Some(russh::ChannelMsg::Data { data }) => records.buf.extend_from_slice(&data),
            Some(russh::ChannelMsg::ExitStatus { exit_status }) if exit_status != 0 => {
                let message = format!("the watcher exited with {exit_status}");
                return inbox.end(SyncError::Helper(message));
            }
            Some(_) => {}
            None => return inbox.end(SyncError::Ssh(russh::Error::Disconnect)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_parse() {
        assert_eq!(parse(b"1\tS"), Some((1, Change::Ready)));
        assert_eq!(
            parse(b"7\tW\ta/b"),
            Some((7, Change::Written("a/b".into())))
        );
        assert_eq!(
            parse(b"8\tM\ta\tb"),
            Some((8, Change::Moved("a".into(), "b".into())))
        );
        assert_eq!(parse(b"x\tW\ta"), None);
        let mut r = Records {
            buf: b"1\tS\x002\tD\tx\x003\tW".to_vec(),
        };
        assert_eq!(r.pop().ok(), Some(Some((1, Change::Ready))));
        assert_eq!(r.pop().ok(), Some(Some((2, Change::Deleted("x".into())))));
        assert_eq!(r.pop().ok(), Some(None));
    }

    #[test]
    fn a_record_without_end_is_bounded() {
        let mut r = Records {
            buf: vec![b'a'; MAX_RECORD],
        };
        assert!(matches!(r.pop(), Ok(None)));
        r.buf.push(b'a');
        assert!(matches!(r.pop(), Err(SyncError::TooLarge { .. })));
    }

    #[test]
    fn a_flood_of_changes_becomes_one_rescan() {
        let mut p = Pending::default();
        p.push(1, Change::Ready);
        for rev in 2..(MAX_PENDING as u64 * 3) {
            p.push(rev, Change::Written(format!("f{rev}")));
        }
        assert_eq!(
            p.changes.iter().cloned().collect::<Vec<_>>(),
            vec![Change::Ready, Change::Overflow]
        );
        assert_eq!(p.last_rev, MAX_PENDING as u64 * 3 - 1);
        // Once taken, changes queue again.
        p.changes.clear();
        p.rescan = false;
        p.push(9, Change::Deleted("x".into()));
        assert_eq!(p.changes.len(), 1);
    }
}
