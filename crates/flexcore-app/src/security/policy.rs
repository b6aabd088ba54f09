//! Role-based access control: roles name what their holders may do, a principal may do what
//! any of its roles allows, and nothing else.

use std::collections::HashMap;
use std::fmt;

use flexcore_domain::{DomainError, StreamId};

use super::Principal;
use crate::{Error, Result};

/// A name or a pattern from the config: `*` alone matches every name, `prefix*` every name
/// that starts with `prefix`, anything else exactly that name. A `*` anywhere but at the end
/// is refused, so `user-*` can never match more than its authors meant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pattern {
    /// `*`: every name.
    Any,
    /// `prefix*`: names starting with the prefix (the prefix itself included).
    Prefix(String),
    /// A name, matched exactly.
    Exact(String),
}

impl Pattern {
    /// Parses one pattern; `Err` explains what is wrong with it.
    pub fn parse(text: &str) -> std::result::Result<Self, String> {
        let body = text.strip_suffix('*');
        if body.unwrap_or(text).contains('*') {
            return Err(format!(
                "'{text}': '*' may only end a pattern (e.g. 'user-*') or stand alone"
            ));
        }
        Ok(match body {
            Some("") => Self::Any,
            Some(prefix) => Self::Prefix(prefix.to_owned()),
            None if text.is_empty() => return Err("an empty pattern matches nothing".into()),
            None => Self::Exact(text.to_owned()),
        })
    }

    /// Whether `name` matches.
    pub fn matches(&self, name: &str) -> bool {
        match self {
            Self::Any => true,
            Self::Prefix(prefix) => name.starts_with(prefix.as_str()),
            Self::Exact(exact) => name == exact,
        }
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Any => f.write_str("*"),
            Self::Prefix(prefix) => write!(f, "{prefix}*"),
            Self::Exact(exact) => f.write_str(exact),
        }
    }
}

/// A list of patterns; a name is allowed when any matches. Empty allows nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Patterns(Vec<Pattern>);

impl Patterns {
    /// Parses every pattern; `Err` names the first bad one.
    pub fn parse<S: AsRef<str>>(texts: &[S]) -> std::result::Result<Self, String> {
        texts
            .iter()
            .map(|text| Pattern::parse(text.as_ref()))
            .collect::<std::result::Result<_, _>>()
            .map(Self)
    }

    /// Whether any pattern matches `name`.
    pub fn matches(&self, name: &str) -> bool {
        self.0.iter().any(|pattern| pattern.matches(name))
    }

    /// Whether no pattern is listed (nothing is allowed).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// What the holders of one role may do (`[roles.NAME]` in `flexcore.toml`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RolePermissions {
    /// Command types they may send.
    pub commands: Patterns,
    /// Query types they may ask.
    pub queries: Patterns,
    /// Streams they may read raw, in the global log and in live subscriptions.
    pub streams_read: Patterns,
    /// Streams they may append to raw.
    pub streams_append: Patterns,
    /// Whether they may run operator actions (projection rebuilds, dead-letter retry/skip,
    /// GDPR export and forget).
    pub admin: bool,
}

/// Something a principal asks to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action<'a> {
    /// Send a command of this type.
    Command(&'a str),
    /// Ask a query of this type.
    Query(&'a str),
    /// Read this stream's events.
    ReadStream(&'a StreamId),
    /// Append to this stream.
    Append(&'a StreamId),
    /// An operator action, named for the audit log.
    Admin(&'a str),
}

impl Action<'_> {
    /// The verb, for audit records.
    pub fn verb(&self) -> &'static str {
        match self {
            Self::Command(_) => "send_command",
            Self::Query(_) => "ask_query",
            Self::ReadStream(_) => "read_stream",
            Self::Append(_) => "append",
            Self::Admin(_) => "admin",
        }
    }

    /// What the action is on, for audit records.
    pub fn target(&self) -> &str {
        match self {
            Self::Command(name) | Self::Query(name) | Self::Admin(name) => name,
            Self::ReadStream(stream) | Self::Append(stream) => stream.as_str(),
        }
    }
}

impl fmt::Display for Action<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Command(name) => write!(f, "send command '{name}'"),
            Self::Query(name) => write!(f, "ask query '{name}'"),
            Self::ReadStream(stream) => write!(f, "read stream '{stream}'"),
            Self::Append(stream) => write!(f, "append to stream '{stream}'"),
            Self::Admin(name) => write!(f, "run the operator action '{name}'"),
        }
    }
}

/// The roles of a deployment: who may do what. Role names a token carries but the policy does
/// not know allow nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    roles: HashMap<String, RolePermissions>,
}

impl Policy {
    /// A policy of these roles.
    pub fn new(roles: HashMap<String, RolePermissions>) -> Self {
        Self { roles }
    }

    /// The permissions of the roles `principal` holds and the policy knows.
    fn granted<'p>(
        &'p self,
        principal: &'p Principal,
    ) -> impl Iterator<Item = &'p RolePermissions> {
        principal
            .roles
            .iter()
            .filter_map(|role| self.roles.get(role))
    }

    /// Whether `principal` may do `action`.
    pub fn allows(&self, principal: &Principal, action: Action<'_>) -> bool {
        self.granted(principal).any(|role| match action {
            Action::Command(name) => role.commands.matches(name),
            Action::Query(name) => role.queries.matches(name),
            Action::ReadStream(stream) => role.streams_read.matches(stream.as_str()),
            Action::Append(stream) => role.streams_append.matches(stream.as_str()),
            Action::Admin(_) => role.admin,
        })
    }

    /// Whether `principal` may read at least some streams (a read of the global log then
    /// shows only those).
    pub fn reads_any_stream(&self, principal: &Principal) -> bool {
        self.granted(principal)
            .any(|role| !role.streams_read.is_empty())
    }

    /// `Ok` when `principal` may do `action`, else a `forbidden` error naming both.
    pub fn check(&self, principal: &Principal, action: Action<'_>) -> Result<()> {
        if self.allows(principal, action) {
            Ok(())
        } else {
            Err(forbidden(principal, &action))
        }
    }
}

/// The `forbidden` error of `principal` asking for `action`.
pub(crate) fn forbidden(principal: &Principal, action: &dyn fmt::Display) -> Error {
    Error::Domain(DomainError::Forbidden(format!(
        "'{}' may not {action}",
        principal.subject
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::security::AuthMethod;

    fn patterns(texts: &[&str]) -> Patterns {
        Patterns::parse(texts).unwrap()
    }

    fn stream(id: &str) -> StreamId {
        StreamId::new(id).unwrap()
    }

    #[test]
    fn patterns_match_exactly_by_prefix_or_all() {
        let set = patterns(&["user-*", "audit"]);
        assert!(set.matches("user-1"));
        assert!(set.matches("user-"));
        assert!(set.matches("audit"));
        assert!(!set.matches("audit-2"), "an exact name is not a prefix");
        assert!(!set.matches("users"), "'user-*' does not reach 'users'");
        assert!(patterns(&["*"]).matches("anything"));
        assert!(!Patterns::default().matches("x"), "empty allows nothing");
        for bad in ["us*er", "*-admin", "**", ""] {
            assert!(Pattern::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_principal_gets_the_union_of_its_known_roles() {
        let policy = Policy::new(HashMap::from([
            (
                "writer".to_owned(),
                RolePermissions {
                    commands: patterns(&["create_user"]),
                    streams_append: patterns(&["user-*"]),
                    ..Default::default()
                },
            ),
            (
                "reader".to_owned(),
                RolePermissions {
                    queries: patterns(&["*"]),
                    streams_read: patterns(&["user-*"]),
                    ..Default::default()
                },
            ),
        ]));
        let both = Principal::new(
            "ann",
            vec!["writer".into(), "reader".into(), "ghost".into()],
            AuthMethod::Token,
        );
        assert!(policy.allows(&both, Action::Command("create_user")));
        assert!(policy.allows(&both, Action::Query("list_users")));
        assert!(policy.allows(&both, Action::Append(&stream("user-1"))));
        assert!(!policy.allows(&both, Action::Command("change_email")));
        assert!(!policy.allows(&both, Action::Admin("rebuild")));
        assert!(!policy.allows(&both, Action::ReadStream(&stream("order-1"))));
        let error = policy
            .check(&both, Action::Command("change_email"))
            .unwrap_err();
        assert_eq!(error.kind(), crate::ErrorKind::Forbidden);
        assert!(
            error
                .to_string()
                .contains("'ann' may not send command 'change_email'")
        );
        let nobody = Principal::new("bob", vec!["ghost".into()], AuthMethod::Token);
        assert!(!policy.reads_any_stream(&nobody));
        assert!(policy.reads_any_stream(&both));
    }
}
