//! A cache whose entries are valid for one change generation (see [`Store::generation`]):
//! any invalidating write, here or (on PostgreSQL) on another replica, retires them all.

use std::hash::Hash;

use dashmap::DashMap;

/// A bounded map of values stamped with the generation they were read at. Hashed with foldhash:
/// keys are ids and verified tokens (hundreds of characters, looked up on every request), not
/// text an attacker picks freely.
pub struct GenCache<K, V> {
    map: DashMap<K, (u64, V), foldhash::fast::RandomState>,
    capacity: usize,
}

impl<K: Eq + Hash, V: Clone> GenCache<K, V> {
    pub fn new(capacity: usize) -> Self {
        Self {
            map: DashMap::default(),
            capacity,
        }
    }

    /// The value read at `generation`, if still current.
    pub fn get<Q>(&self, key: &Q, generation: u64) -> Option<V>
    where
        K: std::borrow::Borrow<Q>,
        Q: Eq + Hash + ?Sized,
    {
        self.map
            .get(key)
            .filter(|e| e.0 == generation)
            .map(|e| e.1.clone())
    }

    /// Stores a value read at `generation`. A full cache starts over rather than grow.
    pub fn put(&self, key: K, generation: u64, value: V) {
        if self.map.len() >= self.capacity {
            self.map.clear();
        }
        self.map.insert(key, (generation, value));
    }

    /// The value read at `generation`, or the one `make` builds, stored for that generation.
    /// Callers racing on one key all get the same value (one entry lock, no await inside).
    pub fn get_or_insert_with(&self, key: K, generation: u64, make: impl FnOnce() -> V) -> V {
        if self.map.len() >= self.capacity && !self.map.contains_key(&key) {
            self.map.clear();
        }
        match self.map.entry(key) {
            dashmap::Entry::Occupied(mut e) => {
                if e.get().0 != generation {
                    e.insert((generation, make()));
                }
                e.get().1.clone()
            }
            dashmap::Entry::Vacant(e) => e.insert((generation, make())).1.clone(),
        }
    }

    /// Removes the entry for `key` if `stale` says its value is outdated.
    pub fn remove_if(&self, key: &K, stale: impl FnOnce(&V) -> bool) {
        self.map.remove_if(key, |_, (_, v)| stale(v));
    }
}

impl<K: Eq + Hash, V: Clone> Default for GenCache<K, V> {
    fn default() -> Self {
        Self::new(100_000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_live_for_one_generation() {
        let c: GenCache<String, u32> = GenCache::new(2);
        c.put("a".into(), 1, 10);
        assert_eq!(c.get("a", 1), Some(10));
        assert_eq!(c.get("a", 2), None);
        c.put("b".into(), 1, 20);
        c.put("c".into(), 1, 30); // full: starts over
        assert_eq!(c.get("a", 1), None);
        assert_eq!(c.get("c", 1), Some(30));
    }

    #[test]
    fn get_or_insert_keeps_the_current_value_and_replaces_an_old_one() {
        let c: GenCache<&str, u32> = GenCache::new(10);
        assert_eq!(c.get_or_insert_with("a", 1, || 10), 10);
        assert_eq!(c.get_or_insert_with("a", 1, || 11), 10);
        assert_eq!(c.get_or_insert_with("a", 2, || 12), 12);
        c.remove_if(&"a", |v| *v == 10); // not the current value: kept
        assert_eq!(c.get("a", 2), Some(12));
        c.remove_if(&"a", |v| *v == 12);
        assert_eq!(c.get("a", 2), None);
    }
}
