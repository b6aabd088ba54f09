//! API keys for service clients: named, revocable, kept in the config only as SHA-256 hashes.
//!
//! A key is `fck_` followed by 64 hex digits (256 random bits), so a fast hash is enough: there
//! is nothing to guess from a hash of that much randomness. `flexcore token api-key` makes one.

use std::collections::HashMap;

use flexcore_app::security::{AuthFailure, AuthMethod, Principal};
use sha2::{Digest, Sha256};

use crate::AuthError;

/// The prefix of every API key (it tells secret scanners and people what the string is).
pub const API_KEY_PREFIX: &str = "fck_";

/// One configured key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeyEntry {
    /// The key's name: the principal's subject.
    pub name: String,
    /// The SHA-256 of the key, as 64 lower-case hex digits.
    pub sha256: String,
    /// The roles its holder gets.
    pub roles: Vec<String>,
    /// The tenant its holder acts in, if any.
    pub tenant: Option<String>,
    /// A revoked key is refused (and named in the audit record).
    pub revoked: bool,
}

/// The configured keys, by hash.
#[derive(Debug, Default)]
pub struct ApiKeys {
    by_hash: HashMap<String, ApiKeyEntry>,
}

/// The SHA-256 of `key` as lower-case hex.
pub fn hash_api_key(key: &str) -> String {
    Sha256::digest(key.as_bytes())
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// A new random API key and its hash (for the config).
pub fn new_api_key() -> (String, String) {
    let mut random = [0u8; 32];
    getrandom::fill(&mut random).expect("the operating system's random source works");
    let key = format!(
        "{API_KEY_PREFIX}{}",
        random
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    );
    let hash = hash_api_key(&key);
    (key, hash)
}

impl ApiKeys {
    /// The keys `entries` describe; a malformed hash or a hash listed twice is refused.
    pub fn new(entries: Vec<ApiKeyEntry>) -> Result<Self, AuthError> {
        let mut by_hash = HashMap::with_capacity(entries.len());
        for entry in entries {
            let valid = entry.sha256.len() == 64
                && entry
                    .sha256
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase());
            if !valid {
                return Err(AuthError::ApiKey(format!(
                    "api key '{}': sha256 must be 64 lower-case hex digits",
                    entry.name
                )));
            }
            if let Some(other) = by_hash.insert(entry.sha256.clone(), entry) {
                return Err(AuthError::ApiKey(format!(
                    "api key '{}': its hash is listed twice",
                    other.name
                )));
            }
        }
        Ok(Self { by_hash })
    }

    /// Whether no key is configured.
    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty()
    }

    /// The principal `key` proves.
    pub fn verify(&self, key: &str) -> Result<Principal, AuthFailure> {
        let entry = self
            .by_hash
            .get(&hash_api_key(key))
            .ok_or_else(|| AuthFailure("the API key is not known".into()))?;
        if entry.revoked {
            return Err(AuthFailure(format!(
                "the API key '{}' is revoked",
                entry.name
            )));
        }
        Ok(Principal {
            tenant: entry.tenant.clone(),
            ..Principal::new(entry.name.clone(), entry.roles.clone(), AuthMethod::ApiKey)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_verify_by_hash_and_revocation_holds() {
        let (good, good_hash) = new_api_key();
        let (revoked, revoked_hash) = new_api_key();
        assert!(good.starts_with(API_KEY_PREFIX) && good.len() == 68);
        let keys = ApiKeys::new(vec![
            ApiKeyEntry {
                name: "ci".into(),
                sha256: good_hash,
                roles: vec!["writer".into()],
                tenant: None,
                revoked: false,
            },
            ApiKeyEntry {
                name: "old".into(),
                sha256: revoked_hash,
                roles: vec![],
                tenant: None,
                revoked: true,
            },
        ])
        .unwrap();
        let principal = keys.verify(&good).unwrap();
        assert_eq!(
            (principal.subject.as_str(), principal.method),
            ("ci", AuthMethod::ApiKey)
        );
        assert_eq!(principal.roles, ["writer"]);
        assert!(
            keys.verify(&revoked)
                .unwrap_err()
                .0
                .contains("'old' is revoked")
        );
        assert!(keys.verify("fck_guess").is_err());
    }

    #[test]
    fn malformed_hashes_are_refused() {
        let entry = |sha256: &str| ApiKeyEntry {
            name: "x".into(),
            sha256: sha256.into(),
            roles: vec![],
            tenant: None,
            revoked: false,
        };
        assert!(ApiKeys::new(vec![entry("abc")]).is_err());
        assert!(ApiKeys::new(vec![entry(&"A".repeat(64))]).is_err());
        let hash = hash_api_key("k");
        assert!(ApiKeys::new(vec![entry(&hash), entry(&hash)]).is_err());
    }
}
