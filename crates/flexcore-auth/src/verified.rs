//! Tokens already verified: a client sends the same bearer token with every request, and
//! checking its signature again (tens of microseconds for RS256 or ES256) and parsing its
//! claims again would cost more than the request. A token seen again while it is valid gets
//! the principal it proved; it is never trusted past its `exp` or before its `nbf` (with the
//! leeway), and the whole cache is dropped when the keys change.

use std::collections::HashMap;
use std::sync::RwLock;

use flexcore_app::security::Principal;

/// The most tokens remembered; when full, expired ones go, and if none had, all of them.
pub(crate) const CAPACITY: usize = 10_000;

/// What a verified token proved, and when (Unix seconds, leeway applied) it may be used.
#[derive(Clone)]
struct Verified {
    principal: Principal,
    valid_from: u64,
    valid_until: u64,
}

/// Verified tokens by their text.
pub(crate) struct VerifiedTokens {
    entries: RwLock<HashMap<Box<str>, Verified>>,
    capacity: usize,
}

impl VerifiedTokens {
    /// An empty cache of at most `capacity` tokens.
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            entries: RwLock::new(HashMap::new()),
            capacity,
        }
    }

    /// The principal `token` proved, if it was verified and is valid at `now`.
    pub(crate) fn get(&self, token: &str, now: u64) -> Option<Principal> {
        let entries = self.entries.read().unwrap_or_else(|p| p.into_inner());
        entries
            .get(token)
            .filter(|v| v.valid_from <= now && now <= v.valid_until)
            .map(|v| v.principal.clone())
    }

    /// Remembers that `token` proved `principal` from `valid_from` to `valid_until`.
    pub(crate) fn insert(
        &self,
        token: &str,
        principal: Principal,
        valid_from: u64,
        valid_until: u64,
        now: u64,
    ) {
        let mut entries = self.entries.write().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= self.capacity {
            entries.retain(|_, v| now <= v.valid_until);
            if entries.len() >= self.capacity {
                entries.clear();
            }
        }
        entries.insert(
            token.into(),
            Verified {
                principal,
                valid_from,
                valid_until,
            },
        );
    }

    /// Forgets every token (the keys changed: what they verified may no longer hold).
    pub(crate) fn clear(&self) {
        self.entries
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    /// How many tokens are remembered.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.read().unwrap_or_else(|p| p.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flexcore_app::security::AuthMethod;

    fn ann() -> Principal {
        Principal::new("ann", vec!["writer".into()], AuthMethod::Token)
    }

    #[test]
    fn a_token_is_used_only_within_its_validity() {
        let cache = VerifiedTokens::new(8);
        cache.insert("t", ann(), 100, 200, 150);
        assert!(cache.get("t", 99).is_none(), "before nbf");
        assert_eq!(cache.get("t", 100).unwrap().subject, "ann");
        assert!(cache.get("t", 200).is_some());
        assert!(cache.get("t", 201).is_none(), "after exp");
        assert!(cache.get("other", 150).is_none());
        cache.clear();
        assert!(cache.get("t", 150).is_none());
    }

    #[test]
    fn a_full_cache_drops_expired_tokens_first_and_stays_bounded() {
        let cache = VerifiedTokens::new(3);
        cache.insert("old", ann(), 0, 10, 5);
        cache.insert("a", ann(), 0, 1000, 5);
        cache.insert("b", ann(), 0, 1000, 5);
        cache.insert("c", ann(), 0, 1000, 50);
        assert!(cache.get("old", 50).is_none());
        assert!(cache.get("a", 50).is_some(), "a live token survives");
        assert_eq!(cache.len(), 3);
        cache.insert("d", ann(), 0, 1000, 50);
        assert_eq!(cache.len(), 1, "nothing expired: the cache starts over");
    }
}
