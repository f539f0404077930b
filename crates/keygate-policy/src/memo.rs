//! A bounded memo per (principal, action, target): looked up without allocating, shared
//! between threads behind a read-write lock, emptied whole when full.

use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasher, Hash, Hasher, RandomState};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::{Action, Principal, Target};

/// Entries kept before the memo starts over.
pub const CAPACITY: usize = 4_096;

/// What one (principal, action, target) computed once, for as long as its owner lives.
pub struct Memo<V> {
    /// Keyed per memo, so that nobody can choose keys that collide.
    hasher: RandomState,
    entries: RwLock<Entries<V>>,
}

struct Entries<V> {
    by_hash: HashMap<u64, Vec<(Key, Arc<V>)>>,
    len: usize,
}

struct Key {
    principal: Principal,
    action: Action,
    target: Target,
}

impl Key {
    fn is(&self, principal: &Principal, action: Action, target: &Target) -> bool {
        self.action == action && self.principal == *principal && self.target == *target
    }
}

impl<V> Memo<V> {
    pub fn new() -> Self {
        Self {
            hasher: RandomState::new(),
            entries: RwLock::new(Entries {
                by_hash: HashMap::new(),
                len: 0,
            }),
        }
    }

    /// The value for the key, computed by `make` the first time (and again after the memo
    /// started over). `make` runs without the lock held.
    pub fn get_or_make(
        &self,
        principal: &Principal,
        action: Action,
        target: &Target,
        make: impl FnOnce() -> V,
    ) -> Arc<V> {
        let hash = self.hash(principal, action, target);
        if let Some(found) = self.read().find(hash, principal, action, target) {
            return found;
        }
        let made = Arc::new(make());
        let mut entries = self.write();
        if let Some(found) = entries.find(hash, principal, action, target) {
            return found;
        }
        if entries.len >= CAPACITY {
            entries.by_hash.clear();
            entries.len = 0;
        }
        let key = Key {
            principal: principal.clone(),
            action,
            target: target.clone(),
        };
        entries
            .by_hash
            .entry(hash)
            .or_default()
            .push((key, Arc::clone(&made)));
        entries.len += 1;
        made
    }

    /// How many entries the memo holds.
    pub fn len(&self) -> usize {
        self.read().len
    }

    fn hash(&self, principal: &Principal, action: Action, target: &Target) -> u64 {
        let mut h = self.hasher.build_hasher();
        principal.id.hash(&mut h);
        principal.email.hash(&mut h);
        principal.role.hash(&mut h);
        action.as_str().hash(&mut h);
        target.name.hash(&mut h);
        target.integration.slug.hash(&mut h);
        target.integration.host.hash(&mut h);
        target.application.hash(&mut h);
        let a = target.annotations;
        [
            a.read_only_hint,
            a.destructive_hint,
            a.idempotent_hint,
            a.open_world_hint,
        ]
        .hash(&mut h);
        h.finish()
    }

    fn read(&self) -> RwLockReadGuard<'_, Entries<V>> {
        // Entries are only ever added whole: a panic elsewhere leaves them consistent.
        self.entries.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, Entries<V>> {
        self.entries.write().unwrap_or_else(PoisonError::into_inner)
    }
}

impl<V> Entries<V> {
    fn find(
        &self,
        hash: u64,
        principal: &Principal,
        action: Action,
        target: &Target,
    ) -> Option<Arc<V>> {
        self.by_hash
            .get(&hash)?
            .iter()
            .find(|(key, _)| key.is(principal, action, target))
            .map(|(_, value)| Arc::clone(value))
    }
}

impl<V> fmt::Debug for Memo<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Memo").field("len", &self.len()).finish()
    }
}
