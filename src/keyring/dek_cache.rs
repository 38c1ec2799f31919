//! The unwrapped-DEK cache: saves the unwrap (a KEK lookup and an AES-GCM open) and the key
//! schedule of a subject DEK on hot reads and writes. It never decides whether a subject
//! exists: callers read the subject record from the store first, and look a DEK up by the
//! exact wrapped bytes that record holds.
//!
//! An entry is found only by (tenant, subject, DEK version, wrapped DEK): the wrap names the
//! KEK version and carries a fresh random nonce, so a DEK that was re-wrapped, replaced at its
//! usage limit, or belongs to a subject re-created after an erasure never matches an old
//! entry, also when another vault node made the change. What this node does itself it also
//! invalidates explicitly (erasure, DEK replacement, tenant rotation and re-wrap, root
//! rotation, shred), so the key material leaves memory at once rather than at eviction.
//!
//! Bounded by a number of entries (one DEK version each); a full cache evicts with the CLOCK
//! algorithm (an entry used since the hand last passed gets a second chance). An evicted or
//! invalidated entry drops its `Arc<Key<Dek>>`: when the last user is done the key bytes are
//! zeroized and its prepared cipher overwritten (`crypto::Key`). Capacity 0 disables it.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::crypto::{Dek, Key, Sealed};
use crate::domain::{SubjectId, TenantId};

/// Reports each lookup (hit or miss) to whoever counts them (the service's metrics).
pub type LookupObserver = Box<dyn Fn(bool) + Send + Sync>;

/// Hits, misses and size of the cache.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DekCacheStats {
    pub hits: u64,
    pub misses: u64,
    pub entries: usize,
    pub capacity: usize,
}

impl DekCacheStats {
    /// Hits over lookups, or `None` before the first lookup.
    pub fn hit_rate(&self) -> Option<f64> {
        let lookups = self.hits + self.misses;
        (lookups > 0).then(|| self.hits as f64 / lookups as f64)
    }
}

/// One cached DEK version of a subject. No `Debug`: it holds a key.
struct Slot {
    dek_version: u32,
    /// The wrap this key was unwrapped from, as stored (KEK version, nonce, ciphertext).
    wrapped: Vec<u8>,
    key: Arc<Key<Dek>>,
    /// Used since the CLOCK hand last passed.
    referenced: bool,
    /// When the key was unwrapped into the cache (`forget_older_than`).
    cached_at: Instant,
}

#[derive(Default)]
struct Inner {
    tenants: HashMap<TenantId, HashMap<SubjectId, Vec<Slot>>>,
    /// The CLOCK: every cached (tenant, subject, DEK version) once, plus ids of entries
    /// invalidated since the last compaction (skipped when the hand reaches them).
    clock: VecDeque<(TenantId, SubjectId, u32)>,
    entries: usize,
    /// Bumped by every invalidation: an unwrap that started before one does not insert.
    generation: u64,
}

/// A ticket taken before a miss is unwrapped; `insert` refuses it if an invalidation
/// happened since.
#[derive(Clone, Copy, Debug)]
pub struct Ticket(u64);

pub struct DekCache {
    capacity: usize,
    inner: Mutex<Inner>,
    hits: AtomicU64,
    misses: AtomicU64,
    observer: Option<LookupObserver>,
}

impl std::fmt::Debug for DekCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DekCache")
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl DekCache {
    pub fn new(capacity: usize, observer: Option<LookupObserver>) -> Self {
        Self {
            capacity,
            inner: Mutex::new(Inner::default()),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            observer,
        }
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // The map stays consistent even if a holder panicked: every edit is a single step.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn count(&self, hit: bool) {
        let counter = if hit { &self.hits } else { &self.misses };
        counter.fetch_add(1, Ordering::Relaxed);
        if let Some(observe) = &self.observer {
            observe(hit);
        }
    }

    /// The DEK of `dek_version` unwrapped from exactly `wrapped`, if cached. On a miss,
    /// returns the ticket to insert it with once unwrapped.
    pub fn get(
        &self, tenant: &TenantId, subject: &SubjectId, dek_version: u32, wrapped: &Sealed,
    ) -> Result<Arc<Key<Dek>>, Ticket> {
        if self.capacity == 0 {
            self.count(false);
            return Err(Ticket(0));
        }
        let wrapped = wrapped.encode();
        let mut inner = self.lock();
        let found = inner
            .tenants
            .get_mut(tenant)
            .and_then(|subjects| subjects.get_mut(subject))
            .and_then(|slots| {
                slots
                    .iter_mut()
                    .find(|s| s.dek_version == dek_version && s.wrapped == wrapped)
            })
            .map(|slot| {
                slot.referenced = true;
                slot.key.clone()
            });
        let ticket = Ticket(inner.generation);
        drop(inner);
        self.count(found.is_some());
        found.ok_or(ticket)
    }

    /// Caches `key`, unwrapped from `wrapped`, unless an invalidation happened since `ticket`
    /// was taken. Replaces an entry for the same DEK version (its wrap is obsolete).
    pub fn insert(
        &self, ticket: Ticket, tenant: &TenantId, subject: &SubjectId, wrapped: &Sealed,
        key: Arc<Key<Dek>>,
    ) {
        if self.capacity == 0 {
            return;
        }
        let mut guard = self.lock();
        let inner = &mut *guard;
        if inner.generation != ticket.0 {
            return;
        }
        let dek_version = key.version();
        let slots = inner
            .tenants
            .entry(tenant.clone())
            .or_default()
            .entry(subject.clone())
            .or_default();
        let slot = Slot {
            dek_version,
            wrapped: wrapped.encode(),
            key,
            referenced: false,
            cached_at: Instant::now(),
        };
        if let Some(old) = slots.iter_mut().find(|s| s.dek_version == dek_version) {
            *old = slot;
            return;
        }
        slots.push(slot);
        inner.entries += 1;
        inner
            .clock
            .push_back((tenant.clone(), subject.clone(), dek_version));
        while inner.entries > self.capacity {
            if !inner.evict_one() {
                break;
            }
        }
        if inner.clock.len() > 2 * self.capacity + 64 {
            inner.compact();
        }
    }

    /// Drops every cached DEK of one subject (erased, or its DEK replaced).
    pub fn forget_subject(&self, tenant: &TenantId, subject: &SubjectId) {
        let mut inner = self.lock();
        inner.generation += 1;
        let removed = inner
            .tenants
            .get_mut(tenant)
            .and_then(|subjects| subjects.remove(subject))
            .map_or(0, |slots| slots.len());
        inner.entries -= removed;
        if inner.tenants.get(tenant).is_some_and(HashMap::is_empty) {
            inner.tenants.remove(tenant);
        }
    }

    /// Drops every cached DEK of a tenant (its KEK rotated or re-wrapped, or shredded).
    pub fn forget_tenant(&self, tenant: &TenantId) {
        let mut inner = self.lock();
        inner.generation += 1;
        let removed = inner
            .tenants
            .remove(tenant)
            .map_or(0, |subjects| subjects.values().map(Vec::len).sum());
        inner.entries -= removed;
    }

    /// Drops every entry unwrapped more than `max_age` ago, used or not. On a store shared
    /// by several nodes this bounds how long a DEK that another node erased stays in this
    /// node's memory. Returns how many were dropped.
    pub fn forget_older_than(&self, max_age: Duration) -> usize {
        let Some(cutoff) = Instant::now().checked_sub(max_age) else {
            return 0;
        };
        let mut guard = self.lock();
        let inner = &mut *guard;
        let mut removed = 0;
        inner.tenants.retain(|_, subjects| {
            subjects.retain(|_, slots| {
                let before = slots.len();
                slots.retain(|slot| slot.cached_at > cutoff);
                removed += before - slots.len();
                !slots.is_empty()
            });
            !subjects.is_empty()
        });
        inner.entries -= removed;
        removed
    }

    /// Drops every cached DEK (the root key was rotated).
    pub fn forget_all(&self) {
        let mut inner = self.lock();
        inner.generation += 1;
        inner.tenants.clear();
        inner.clock.clear();
        inner.entries = 0;
    }

    pub fn stats(&self) -> DekCacheStats {
        DekCacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            entries: self.lock().entries,
            capacity: self.capacity,
        }
    }
}

impl Inner {
    /// Advances the CLOCK hand until it evicts one entry. False if the cache is empty.
    fn evict_one(&mut self) -> bool {
        while let Some((tenant, subject, version)) = self.clock.pop_front() {
            let Some(slots) = self
                .tenants
                .get_mut(&tenant)
                .and_then(|subjects| subjects.get_mut(&subject))
            else {
                continue;
            };
            let Some(at) = slots.iter().position(|s| s.dek_version == version) else {
                continue;
            };
            if slots[at].referenced {
                slots[at].referenced = false;
                self.clock.push_back((tenant, subject, version));
                continue;
            }
            slots.swap_remove(at);
            self.entries -= 1;
            if slots.is_empty() {
                if let Some(subjects) = self.tenants.get_mut(&tenant) {
                    subjects.remove(&subject);
                    if subjects.is_empty() {
                        self.tenants.remove(&tenant);
                    }
                }
            }
            return true;
        }
        false
    }

    /// Drops the ids of invalidated entries from the CLOCK, and second ids of an entry
    /// that was invalidated and cached again.
    fn compact(&mut self) {
        let tenants = &self.tenants;
        let mut seen = HashSet::new();
        self.clock.retain(|(t, s, v)| {
            let live = tenants
                .get(t)
                .and_then(|subjects| subjects.get(s))
                .is_some_and(|slots| slots.iter().any(|slot| slot.dek_version == *v));
            live && seen.insert((t.clone(), s.clone(), *v))
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::{Aad, Kek};

    fn ids(t: &str, s: &str) -> (TenantId, SubjectId) {
        (
            TenantId::parse(t).expect("tenant"),
            SubjectId::parse(s).expect("subject"),
        )
    }

    /// A DEK of `version` and a wrap of it.
    fn dek(version: u32) -> (Sealed, Arc<Key<Dek>>) {
        let kek: Key<Kek> = Key::generate(1).expect("rng");
        let dek: Key<Dek> = Key::generate(version).expect("rng");
        let wrapped = kek.wrap(&dek, &Aad::new("test")).expect("wrap");
        (wrapped, Arc::new(dek))
    }

    #[test]
    fn an_insert_after_an_invalidation_is_refused() {
        let cache = DekCache::new(8, None);
        let (t, s) = ids("acme", "alice");
        let (wrapped, key) = dek(1);
        let Err(ticket) = cache.get(&t, &s, 1, &wrapped) else {
            panic!("empty cache hit");
        };
        // An erasure of anyone between the miss and the insert voids the ticket.
        cache.forget_subject(&t, &SubjectId::parse("bob").expect("id"));
        cache.insert(ticket, &t, &s, &wrapped, key.clone());
        assert_eq!(cache.stats().entries, 0);
        let Err(ticket) = cache.get(&t, &s, 1, &wrapped) else {
            panic!("refused insert was cached");
        };
        cache.insert(ticket, &t, &s, &wrapped, key);
        assert!(cache.get(&t, &s, 1, &wrapped).is_ok());
        // Same version, another wrap: a miss.
        let (other, _) = dek(1);
        assert!(cache.get(&t, &s, 1, &other).is_err());
        assert!(cache.get(&t, &s, 2, &wrapped).is_err());
        assert_eq!(
            cache.stats(),
            DekCacheStats {
                hits: 1,
                misses: 4,
                entries: 1,
                capacity: 8
            }
        );
    }

    #[test]
    fn the_clock_stays_bounded_when_entries_come_and_go() {
        let cache = DekCache::new(4, None);
        let (t, s) = ids("acme", "alice");
        for _ in 0..1000 {
            let (wrapped, key) = dek(1);
            let Err(ticket) = cache.get(&t, &s, 1, &wrapped) else {
                panic!("hit on a fresh wrap");
            };
            cache.insert(ticket, &t, &s, &wrapped, key);
            cache.forget_subject(&t, &s);
        }
        assert_eq!(cache.stats().entries, 0);
        assert!(cache.lock().clock.len() <= 2 * 4 + 64);
    }

    #[test]
    fn debug_shows_counts_only() {
        let cache = DekCache::new(2, None);
        let (t, s) = ids("acme", "alice");
        let (wrapped, key) = dek(1);
        let secret = key.secret_hex();
        let Err(ticket) = cache.get(&t, &s, 1, &wrapped) else {
            panic!("hit");
        };
        cache.insert(ticket, &t, &s, &wrapped, key);
        let shown = format!("{cache:?}");
        assert!(shown.contains("entries: 1"), "{shown}");
        assert!(!shown.contains(secret.as_str()) && !shown.contains("alice"));
    }
}
