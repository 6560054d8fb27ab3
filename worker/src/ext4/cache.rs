//! Bounded, sharded LRU caches: one for metadata blocks (`Arc<[u8]>` by
//! block number, bounded in bytes), one for parsed inodes (bounded in
//! entries). Each shard has its own mutex, held only for map updates,
//! never across I/O, so FUSE threads rarely contend.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

const SHARDS: usize = 16;

/// Default block cache budget.
pub(crate) const DEFAULT_BLOCK_CACHE_BYTES: usize = 32 << 20;
/// Default number of cached inodes.
pub(crate) const DEFAULT_INODE_CACHE_ENTRIES: usize = 16384;

struct Entry<V> {
    value: V,
    cost: usize,
    stamp: u64,
}

struct Shard<V> {
    map: HashMap<u64, Entry<V>>,
    /// stamp -> key, oldest first.
    order: BTreeMap<u64, u64>,
    used: usize,
    next_stamp: u64,
}

impl<V: Clone> Shard<V> {
    fn new() -> Self {
        Shard {
            map: HashMap::new(),
            order: BTreeMap::new(),
            used: 0,
            next_stamp: 0,
        }
    }

    fn touch(&mut self, key: u64) -> Option<V> {
        let stamp = self.next_stamp;
        let e = self.map.get_mut(&key)?;
        self.order.remove(&e.stamp);
        e.stamp = stamp;
        self.order.insert(stamp, key);
        self.next_stamp = self.next_stamp.wrapping_add(1);
        Some(e.value.clone())
    }

    fn insert(&mut self, key: u64, value: V, cost: usize, budget: usize) {
        self.remove(key);
        let stamp = self.next_stamp;
        self.next_stamp = self.next_stamp.wrapping_add(1);
        self.map.insert(key, Entry { value, cost, stamp });
        self.order.insert(stamp, key);
        self.used = self.used.saturating_add(cost);
        while self.used > budget && self.map.len() > 1 {
            let Some((_, old)) = self.order.pop_first() else {
                break;
            };
            if let Some(e) = self.map.remove(&old) {
                self.used = self.used.saturating_sub(e.cost);
            }
        }
    }

    fn remove(&mut self, key: u64) {
        if let Some(e) = self.map.remove(&key) {
            self.order.remove(&e.stamp);
            self.used = self.used.saturating_sub(e.cost);
        }
    }
}

/// A sharded LRU map from u64 keys to cheaply clonable values.
///
/// Two kinds of insert: writers (a commit, a data write) `insert`/`remove`
/// the truth; readers that missed `fill` with what they read from the
/// device. A reader's copy may already be stale when it arrives (a commit
/// ran meanwhile), so every writer bumps `generation` first, and a fill
/// only lands if no writer ran since the reader took its `fill_ticket`
/// (checked under the shard lock, so a fill can never overwrite newer
/// contents).
pub(crate) struct Lru<V> {
    shards: Vec<Mutex<Shard<V>>>,
    budget_per_shard: usize,
    generation: AtomicU64,
}

impl<V: Clone> Lru<V> {
    /// A cache holding at most about `budget` cost units in total.
    pub(crate) fn new(budget: usize) -> Self {
        Lru {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::new())).collect(),
            budget_per_shard: (budget / SHARDS).max(1),
            generation: AtomicU64::new(0),
        }
    }

    fn shard(&self, key: u64) -> Option<MutexGuard<'_, Shard<V>>> {
        // Fibonacci hashing spreads sequential block numbers over shards.
        let h = key.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 60;
        let idx = usize::try_from(h).unwrap_or(0) % SHARDS;
        self.shards
            .get(idx)
            .map(|m| m.lock().unwrap_or_else(|e| e.into_inner()))
    }

    pub(crate) fn get(&self, key: u64) -> Option<V> {
        self.shard(key)?.touch(key)
    }

    /// Stores the current contents of `key` (a writer's insert).
    pub(crate) fn insert(&self, key: u64, value: V, cost: usize) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        if let Some(mut s) = self.shard(key) {
            s.insert(key, value, cost, self.budget_per_shard);
        }
    }

    /// Drops `key` (a writer's invalidation).
    pub(crate) fn remove(&self, key: u64) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        if let Some(mut s) = self.shard(key) {
            s.remove(key);
        }
    }

    /// Taken by a reader before it reads what it will `fill`.
    pub(crate) fn fill_ticket(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// A reader's insert: lands only if no writer inserted or removed
    /// anything since `ticket` was taken.
    pub(crate) fn fill(&self, key: u64, value: V, cost: usize, ticket: u64) {
        if let Some(mut s) = self.shard(key)
            && self.generation.load(Ordering::SeqCst) == ticket
        {
            s.insert(key, value, cost, self.budget_per_shard);
        }
    }

    /// Total cost currently held (for tests and statistics).
    #[cfg(test)]
    pub(crate) fn used(&self) -> usize {
        self.shards
            .iter()
            .map(|m| m.lock().unwrap_or_else(|e| e.into_inner()).used)
            .sum()
    }
}

/// Metadata block cache: block number -> contents.
pub(crate) type BlockCache = Lru<Arc<[u8]>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_fill_never_overwrites_a_writer() {
        let c: Lru<u32> = Lru::new(1 << 20);
        // A reader takes its ticket, a commit stores new contents, then the
        // reader's (stale) copy arrives: the commit's contents stay.
        let t = c.fill_ticket();
        c.insert(7, 2, 1);
        c.fill(7, 1, 1, t);
        assert_eq!(c.get(7), Some(2));
        // Same after an invalidation: the stale copy is not cached.
        let t = c.fill_ticket();
        c.remove(7);
        c.fill(7, 1, 1, t);
        assert_eq!(c.get(7), None);
        // With no writer in between, a fill lands.
        let t = c.fill_ticket();
        c.fill(7, 3, 1, t);
        assert_eq!(c.get(7), Some(3));
    }

    #[test]
    fn evicts_least_recently_used() {
        let c: Lru<u32> = Lru::new(SHARDS * 3);
        // Keys landing in the same shard: find four.
        let shard_of = |k: u64| (k.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 60) as usize % SHARDS;
        let keys: Vec<u64> = (0..1000).filter(|&k| shard_of(k) == 0).take(4).collect();
        for (i, &k) in keys.iter().take(3).enumerate() {
            c.insert(k, i as u32, 1);
        }
        assert_eq!(c.get(keys[0]), Some(0)); // keys[1] is now the oldest
        c.insert(keys[3], 3, 1);
        assert_eq!(c.get(keys[1]), None);
        assert_eq!(c.get(keys[0]), Some(0));
        assert_eq!(c.get(keys[2]), Some(2));
        assert_eq!(c.get(keys[3]), Some(3));
        assert_eq!(c.used(), 3);
        c.remove(keys[3]);
        assert_eq!(c.get(keys[3]), None);
        assert_eq!(c.used(), 2);
    }

    #[test]
    fn bounded_memory() {
        let c: BlockCache = Lru::new(64 * 1024);
        for k in 0..1000u64 {
            c.insert(k, Arc::from(vec![0u8; 1024]), 1024);
        }
        assert!(c.used() <= 64 * 1024, "{}", c.used());
        // Replacing a key does not double count.
        c.insert(5, Arc::from(vec![1u8; 1024]), 1024);
        c.insert(5, Arc::from(vec![2u8; 1024]), 1024);
        assert_eq!(c.get(5).unwrap()[0], 2);
    }
}
