//! The one shared cache: bounded in bytes, thread-safe, least-recently-used eviction, counted.
//!
//! Values are created empty under the lock and filled by their users outside it (a decoded
//! chunk decodes itself on demand), so a slow fill never blocks unrelated lookups, and concurrent
//! users of one key share one value. An evicted value stays alive until its last user drops it.

use std::any::Any;
use std::sync::OnceLock;

use crate::sync::atomic::{AtomicU64, Ordering};
use crate::sync::{Arc, Mutex, MutexGuard};

use lru::LruCache;

use crate::error::Result;

/// Identifies one cached value: `owner` is an id from [`new_owner_id`], `index` is the owner's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Key {
    /// Who owns the value (a stream, a database log).
    pub owner: u64,
    /// Which of the owner's values.
    pub index: u64,
}

/// A fresh owner id, unique in this process.
pub fn new_owner_id() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

struct Slot {
    value: Arc<dyn Any + Send + Sync>,
    cost: u64,
}

struct Inner {
    lru: LruCache<Key, Slot>,
    used: u64,
}

/// What [`Cache::get_or_build`] does with a failed build.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnFailure {
    /// Keep the error in the cell: every user gets it until the cache drops the cell (for
    /// builds that would fail the same way again, at a high cost).
    Remember,
    /// Drop the cell, so the next user builds again (users already waiting get the error).
    Retry,
}

/// A cache value built once, by its first user, outside the cache's lock.
pub struct Built<T> {
    once: OnceLock<Result<T>>,
}

impl<T> Default for Built<T> {
    fn default() -> Self {
        Built {
            once: OnceLock::new(),
        }
    }
}

impl<T> Built<T> {
    /// The built value; always there in a cell [`Cache::get_or_build`] returned.
    pub fn value(&self) -> Option<&T> {
        self.once.get()?.as_ref().ok()
    }
}

/// Counters of a [`Cache`], for logs and benchmarks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Lookups that found their value.
    pub hits: u64,
    /// Lookups that had to create it.
    pub misses: u64,
    /// Values dropped to stay within the capacity.
    pub evictions: u64,
    /// Bytes currently charged.
    pub used: u64,
    /// The bound in bytes.
    pub capacity: u64,
}

/// A byte-bounded LRU map from [`Key`] to shared values of any type.
pub struct Cache {
    inner: Mutex<Inner>,
    capacity: u64,
    hits: AtomicU64,
    misses: AtomicU64,
    evictions: AtomicU64,
}

impl Cache {
    /// A cache holding at most `capacity` bytes of values.
    pub fn new(capacity: u64) -> Arc<Cache> {
        Arc::new(Cache {
            inner: Mutex::new(Inner {
                lru: LruCache::unbounded(),
                used: 0,
            }),
            capacity,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the map inconsistent (every update is one
        // call into LruCache), so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The value under `key`, created by `make` and charged `cost` bytes when absent.
    pub fn get_or_insert<T, F>(&self, key: Key, cost: u64, make: F) -> Arc<T>
    where
        T: Any + Send + Sync,
        F: FnOnce() -> T,
    {
        let mut inner = self.lock();
        if let Some(slot) = inner.lru.get(&key)
            && let Ok(v) = Arc::clone(&slot.value).downcast::<T>()
        {
            self.hits.fetch_add(1, Ordering::Relaxed);
            return v;
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        if let Some(old) = inner.lru.pop(&key) {
            inner.used -= old.cost;
        }
        // Room is made before the value: what the evicted values free (a decoded frame's
        // buffer) is there for `make` to reuse.
        inner.used += cost;
        self.evict(&mut inner, key);
        let value = Arc::new(make());
        let any: Arc<dyn Any + Send + Sync> = value.clone();
        inner.lru.put(key, Slot { value: any, cost });
        value
    }

    /// The value under `key` when the cache holds one of type `T` (a hit, marked recently
    /// used); `None` creates nothing.
    pub fn get<T: Any + Send + Sync>(&self, key: Key) -> Option<Arc<T>> {
        let mut inner = self.lock();
        let value = Arc::clone(&inner.lru.get(&key)?.value)
            .downcast::<T>()
            .ok()?;
        self.hits.fetch_add(1, Ordering::Relaxed);
        Some(value)
    }

    /// The cell under `key`, built by its first user with `build` (outside the cache's lock;
    /// other users of the key wait for that one build) and from then on charged the cost `build`
    /// returned. A failed build is handled as `on_failure` says.
    pub fn get_or_build<T, F>(
        &self,
        key: Key,
        on_failure: OnFailure,
        build: F,
    ) -> Result<Arc<Built<T>>>
    where
        T: Any + Send + Sync,
        F: FnOnce() -> Result<(T, u64)>,
    {
        let cell = self.get_or_insert(key, 0, Built::<T>::default);
        let mut cost = None;
        let built = cell.once.get_or_init(|| {
            build().map(|(value, c)| {
                cost = Some(c);
                value
            })
        });
        if let Err(e) = built {
            let e = e.clone();
            if on_failure == OnFailure::Retry {
                self.remove(key);
            }
            return Err(e);
        }
        // Only the user that built it knows the cost; the others find it charged.
        if let Some(c) = cost {
            self.set_cost(key, c);
        }
        Ok(cell)
    }

    /// Whether the cache holds a value under `key` (neither counted nor marked as used).
    pub fn contains(&self, key: Key) -> bool {
        self.lock().lru.contains(&key)
    }

    /// Marks the value under `key` as recently used.
    pub fn touch(&self, key: Key) {
        self.lock().lru.promote(&key);
    }

    /// Changes what the value under `key` is charged, e.g. once a rebuilt file's size is known.
    pub fn set_cost(&self, key: Key, cost: u64) {
        let mut inner = self.lock();
        let Some(slot) = inner.lru.peek_mut(&key) else {
            return;
        };
        let old = std::mem::replace(&mut slot.cost, cost);
        inner.used = inner.used - old + cost;
        self.evict(&mut inner, key);
    }

    /// Drops the value under `key` (e.g. after its fill failed, so the next user retries).
    pub fn remove(&self, key: Key) {
        let mut inner = self.lock();
        if let Some(slot) = inner.lru.pop(&key) {
            inner.used -= slot.cost;
        }
    }

    fn evict(&self, inner: &mut Inner, keep: Key) {
        while inner.used > self.capacity && !inner.lru.is_empty() {
            let Some((k, slot)) = inner.lru.pop_lru() else {
                break;
            };
            if k == keep {
                // The newest value alone exceeds the bound: keep it (its users need it) and stop.
                inner.lru.put(k, slot);
                inner.lru.promote(&k);
                break;
            }
            inner.used -= slot.cost;
            self.evictions.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The bound in bytes.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Current counters.
    pub fn stats(&self) -> CacheStats {
        let used = self.lock().used;
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            evictions: self.evictions.load(Ordering::Relaxed),
            used,
            capacity: self.capacity,
        }
    }
}

/// Default capacity: 256 MiB.
pub const DEFAULT_CAPACITY: u64 = 256 << 20;

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: u64) -> Key {
        Key { owner: 7, index: i }
    }

    #[test]
    fn evicts_least_recently_used_beyond_capacity() {
        let c = Cache::new(100);
        let a = c.get_or_insert(key(1), 40, || 1u32);
        let _ = c.get_or_insert(key(2), 40, || 2u32);
        // Touch 1 so that 2 is the least recently used.
        assert_eq!(*c.get_or_insert(key(1), 40, || 99u32), *a);
        let _ = c.get_or_insert(key(3), 40, || 3u32);
        let s = c.stats();
        assert_eq!((s.hits, s.misses, s.evictions, s.used), (1, 3, 1, 80));
        // 2 was evicted: asking again creates it anew.
        assert_eq!(*c.get_or_insert(key(2), 40, || 22u32), 22);
    }

    #[test]
    fn room_is_made_before_the_new_value_is() {
        use std::sync::atomic::AtomicBool;
        struct Flag(std::sync::Arc<AtomicBool>);
        impl Drop for Flag {
            fn drop(&mut self) {
                self.0.store(true, std::sync::atomic::Ordering::SeqCst);
            }
        }
        let c = Cache::new(100);
        let dropped = std::sync::Arc::new(AtomicBool::new(false));
        drop(c.get_or_insert(key(1), 80, || Flag(dropped.clone())));
        let seen = c.get_or_insert(key(2), 80, || {
            dropped.load(std::sync::atomic::Ordering::SeqCst)
        });
        assert!(
            *seen,
            "the evicted value was alive while the new one was made"
        );
        assert_eq!(c.stats().used, 80);
    }

    #[test]
    fn a_value_larger_than_the_cache_is_kept_alone() {
        let c = Cache::new(10);
        let _ = c.get_or_insert(key(1), 5, || 1u8);
        let big = c.get_or_insert(key(2), 50, || 2u8);
        assert_eq!(*big, 2);
        let s = c.stats();
        assert_eq!((s.evictions, s.used), (1, 50));
    }

    #[test]
    fn a_value_is_built_once_and_charged_its_cost() {
        let c = Cache::new(100);
        let mut builds = 0;
        for _ in 0..3 {
            let cell = c
                .get_or_build(key(1), OnFailure::Remember, || {
                    builds += 1;
                    Ok((7u32, 30))
                })
                .unwrap();
            assert_eq!(cell.value(), Some(&7));
        }
        assert_eq!((builds, c.stats().used), (1, 30));
    }

    #[test]
    fn failed_builds_are_remembered_or_retried_as_asked() {
        let c = Cache::new(100);
        let fail = || Err::<(u32, u64), _>(crate::error::Error::not_found("boom"));
        assert!(c.get_or_build(key(1), OnFailure::Remember, fail).is_err());
        // Remembered: the second build never runs.
        let again = c.get_or_build(key(1), OnFailure::Remember, || Ok((1u32, 5)));
        assert!(again.is_err());
        assert!(c.get_or_build(key(2), OnFailure::Retry, fail).is_err());
        // Retried: the next user builds anew.
        let cell = c
            .get_or_build(key(2), OnFailure::Retry, || Ok((2u32, 5)))
            .unwrap();
        assert_eq!(cell.value(), Some(&2));
        assert_eq!(c.stats().used, 5);
    }

    #[test]
    fn cost_updates_are_charged() {
        let c = Cache::new(100);
        let _ = c.get_or_insert(key(1), 0, || 1u8);
        c.set_cost(key(1), 60);
        assert_eq!(c.stats().used, 60);
        assert!(c.contains(key(1)) && !c.contains(key(2)));
        c.remove(key(1));
        assert_eq!(c.stats().used, 0);
        assert!(!c.contains(key(1)));
        assert_eq!(c.stats().hits, 0);
    }
}

/// The cache explored under many thread schedules (`cargo test --features shuttle`).
#[cfg(all(test, feature = "shuttle"))]
mod shuttle_tests {
    use super::*;
    use shuttle::thread;

    fn key(i: u64) -> Key {
        Key { owner: 9, index: i }
    }

    /// What the cache charges equals the costs of what it holds, within the bound unless one
    /// value alone exceeds it, and every call is counted once.
    fn check(c: &Cache, calls: u64) {
        let inner = c.lock();
        let held: u64 = inner.lru.iter().map(|(_, s)| s.cost).sum();
        assert_eq!(
            inner.used, held,
            "charged bytes drifted from the values held"
        );
        assert!(
            inner.used <= c.capacity || inner.lru.len() == 1,
            "bound exceeded"
        );
        drop(inner);
        let s = c.stats();
        assert_eq!(s.hits + s.misses, calls);
    }

    #[test]
    fn shuttle_concurrent_users_share_values_and_the_bound_holds() {
        shuttle::check_random(
            || {
                let c = Cache::new(100);
                let threads: Vec<_> = (0..3u64)
                    .map(|t| {
                        let c = Arc::clone(&c);
                        thread::spawn(move || {
                            // Every user of key 1 sees the value made for key 1.
                            assert_eq!(*c.get_or_insert(key(1), 30, || 1u64), 1);
                            assert_eq!(*c.get_or_insert(key(10 + t), 40, || 10 + t), 10 + t);
                            c.set_cost(key(10 + t), 50);
                            c.touch(key(1));
                            if t == 2 {
                                c.remove(key(1));
                            }
                            assert_eq!(*c.get_or_insert(key(1), 30, || 1u64), 1);
                        })
                    })
                    .collect();
                for t in threads {
                    t.join().unwrap();
                }
                check(&c, 9);
            },
            2000,
        );
    }

    #[test]
    fn shuttle_one_value_larger_than_the_cache_stays_alone() {
        shuttle::check_random(
            || {
                let c = Cache::new(10);
                let a = {
                    let c = Arc::clone(&c);
                    thread::spawn(move || *c.get_or_insert(key(1), 50, || 5u8))
                };
                let b = {
                    let c = Arc::clone(&c);
                    thread::spawn(move || *c.get_or_insert(key(2), 4, || 6u8))
                };
                assert_eq!((a.join().unwrap(), b.join().unwrap()), (5, 6));
                check(&c, 2);
            },
            1000,
        );
    }
}
