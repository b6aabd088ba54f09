//! One security setup for every gateway's tests: a test HS256 secret, tokens signed with it,
//! API keys, and the roles the abuse and RBAC tests rely on.
//!
//! | role | commands | queries | streams_read | streams_append | admin |
//! |---|---|---|---|---|---|
//! | `writer` | `create_user` | — | `user-*` | `user-*` | no |
//! | `reader` | — | `*` | `user-*` | — | no |
//! | `operator` | — | — | — | — | yes |
//! | `all` | `*` | `*` | `*` | `*` | yes |

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use flexcore_app::security::{Gatekeeper, Patterns, Policy, RolePermissions};
use flexcore_auth::{ApiKeyEntry, ApiKeys, Bucket, Credentials, JwtSettings, TokenVerifier};

/// The HS256 secret the test gate verifies with.
pub const TEST_SECRET: &[u8] = b"flexcore test secret, 32+ bytes long";

/// An API key the test gate knows, for the principal `ci` with the `writer` role.
pub const TEST_API_KEY: &str = "fck_test_writer_key";

/// A revoked API key (principal `old-ci`).
pub const REVOKED_API_KEY: &str = "fck_test_revoked_key";

fn patterns(texts: &[&str]) -> Patterns {
    Patterns::parse(texts).expect("valid test patterns")
}

/// The test policy (see the module docs).
pub fn test_policy() -> Arc<Policy> {
    let role = |commands: &[&str], queries: &[&str], read: &[&str], append: &[&str], admin| {
        RolePermissions {
            commands: patterns(commands),
            queries: patterns(queries),
            streams_read: patterns(read),
            streams_append: patterns(append),
            admin,
        }
    };
    Arc::new(Policy::new(HashMap::from([
        (
            "writer".to_owned(),
            role(&["create_user"], &[], &["user-*"], &["user-*"], false),
        ),
        (
            "reader".to_owned(),
            role(&[], &["*"], &["user-*"], &[], false),
        ),
        ("operator".to_owned(), role(&[], &[], &[], &[], true)),
        ("all".to_owned(), role(&["*"], &["*"], &["*"], &["*"], true)),
    ])))
}

/// A gate with authentication on (tokens signed with [`TEST_SECRET`], the test API keys) and
/// the [`test_policy`]; with `rate_limit`, every route class gets that bucket.
pub fn test_gate(rate_limit: Option<Bucket>) -> (Arc<Gatekeeper>, Arc<Policy>) {
    let tokens = TokenVerifier::new(JwtSettings {
        hs256_secret: Some(TEST_SECRET.to_vec()),
        ..JwtSettings::default()
    })
    .expect("the test secret is long enough");
    let key = |name: &str, key: &str, revoked| ApiKeyEntry {
        name: name.to_owned(),
        sha256: flexcore_auth::hash_api_key(key),
        roles: vec!["writer".to_owned()],
        tenant: None,
        revoked,
    };
    let api_keys = ApiKeys::new(vec![
        key("ci", TEST_API_KEY, false),
        key("old-ci", REVOKED_API_KEY, true),
    ])
    .expect("valid test keys");
    let policy = test_policy();
    let mut gate = Gatekeeper::open().with_authentication(
        Arc::new(Credentials::new(Some(tokens), api_keys)),
        Arc::clone(&policy),
    );
    if let Some(bucket) = rate_limit {
        gate = gate.with_rate_limits(Arc::new(
            flexcore_auth::TokenBuckets::new(|_| Some(bucket)).expect("a valid bucket"),
        ));
    }
    (Arc::new(gate), policy)
}

/// A token for `sub` with `roles`, valid for an hour, signed with [`TEST_SECRET`].
pub fn token(sub: &str, roles: &[&str]) -> String {
    let roles: Vec<String> = roles.iter().map(|r| (*r).to_owned()).collect();
    flexcore_auth::mint_hs256(
        TEST_SECRET,
        sub,
        &roles,
        Duration::from_secs(3600),
        serde_json::Map::new(),
    )
    .expect("a test token")
}

/// A token signed with another secret (a forgery).
pub fn forged_token(sub: &str, roles: &[&str]) -> String {
    let roles: Vec<String> = roles.iter().map(|r| (*r).to_owned()).collect();
    flexcore_auth::mint_hs256(
        b"not the server's secret, but 32+ bytes",
        sub,
        &roles,
        Duration::from_secs(3600),
        serde_json::Map::new(),
    )
    .expect("a test token")
}
