//! A memory of the sandbox pages listed since the last sandbox write, so that the
//! most frequent read (`GET /v1/sandboxes`, which clients and dashboards poll) does
//! not cost a query while nothing changed.
//!
//! For: [`Store::list_sandboxes`](super::Store::list_sandboxes) only. Every write to
//! the `sandboxes` table goes through this store (a create or a state change), and
//! each one, committed or not, empties the memory and bumps its generation, so a
//! page read before the write cannot be stored after it. Pages also expire after
//! [`TTL`], which bounds how stale a page can be where something else writes the
//! database. Another gateway's writes arrive as events (`events`:
//! `SandboxesChanged`), which empty the memory here too.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::model::SandboxPage;

/// How long a page is believed without asking the database again.
pub const TTL: Duration = Duration::from_secs(2);
/// Beyond this many pages the memory starts over (it only bounds memory: one
/// entry per owner and cursor that was listed since the last write).
const MAX_ENTRIES: usize = 4096;

/// Which page: the owner, the page size, whether deleted sandboxes are included,
/// and where it continues (the cursor's created-at seconds and id; the first page
/// starts past every row).
pub type PageKey = (String, u32, bool, i64, String);

struct Entry {
    page: Arc<SandboxPage>,
    stored_at: Instant,
}

#[derive(Default)]
pub struct PageCache {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    pages: HashMap<PageKey, Entry>,
    /// Bumped by every write, so a page read from the database before a write
    /// is not stored after it.
    generation: u64,
}

impl std::fmt::Debug for PageCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PageCache").finish_non_exhaustive()
    }
}

impl PageCache {
    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave a half-written entry behind.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The page for `key` if it was read since the last write, less than [`TTL`] ago.
    pub fn get(&self, key: &PageKey) -> Option<Arc<SandboxPage>> {
        let inner = self.inner();
        let entry = inner.pages.get(key)?;
        (entry.stored_at.elapsed() < TTL).then(|| entry.page.clone())
    }

    /// Where writes stand; pass it to [`PageCache::put`] after reading the database.
    pub fn generation(&self) -> u64 {
        self.inner().generation
    }

    /// Remembers `page`, read from the database when writes stood at `generation`
    /// (nothing is stored if a write came since).
    pub fn put(&self, key: PageKey, page: Arc<SandboxPage>, generation: u64) {
        let mut inner = self.inner();
        if inner.generation != generation {
            return;
        }
        if inner.pages.len() >= MAX_ENTRIES {
            inner.pages.clear();
        }
        inner.pages.insert(
            key,
            Entry {
                page,
                stored_at: Instant::now(),
            },
        );
    }

    /// A sandbox row changed (or may have): forget every page.
    pub fn invalidate(&self) {
        let mut inner = self.inner();
        inner.generation += 1;
        inner.pages.clear();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn key(owner: &str) -> PageKey {
        (owner.to_owned(), 50, false, i64::MAX, String::new())
    }

    fn page() -> Arc<SandboxPage> {
        Arc::new(SandboxPage::new(Vec::new(), None))
    }

    #[test]
    fn remembers_until_a_write() {
        let cache = PageCache::default();
        cache.put(key("alice"), page(), cache.generation());
        assert!(cache.get(&key("alice")).is_some());
        assert!(cache.get(&key("bob")).is_none());
        cache.invalidate();
        assert!(cache.get(&key("alice")).is_none());
    }

    #[test]
    fn a_page_read_before_a_write_is_not_stored() {
        let cache = PageCache::default();
        let before = cache.generation();
        cache.invalidate();
        cache.put(key("alice"), page(), before);
        assert!(cache.get(&key("alice")).is_none());
    }
}
