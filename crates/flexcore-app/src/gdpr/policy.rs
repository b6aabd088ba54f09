//! Which fields of which event types are personal, and whose.

use std::collections::HashMap;
use std::sync::Arc;

use crate::{Error, Result};

/// The personal data of one event type: the field naming the data subject and the personal
/// fields, all as JSON pointers (RFC 6901) into the event's data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PersonalData {
    /// The event type, e.g. `user.created`.
    pub event_type: String,
    /// Where the subject's id is, e.g. `/user_id` (a string or a number; stays in clear).
    pub subject: String,
    /// The personal fields, e.g. `/email`, `/profile`; a field may hold any JSON value, and a
    /// field an event does not have is skipped.
    pub fields: Vec<String>,
}

impl PersonalData {
    /// A checked declaration: pointers start with `/`, there is at least one personal field,
    /// and the subject field is neither a personal field nor inside or around one (it must
    /// stay readable to find the key).
    pub fn new(
        event_type: impl Into<String>,
        subject: impl Into<String>,
        fields: impl IntoIterator<Item = impl Into<String>>,
    ) -> Result<Self> {
        let declared = Self {
            event_type: event_type.into(),
            subject: subject.into(),
            fields: fields.into_iter().map(Into::into).collect(),
        };
        declared.check()?;
        Ok(declared)
    }

    fn check(&self) -> Result<()> {
        let wrong = |why: String| {
            Err(Error::Configuration(format!(
                "personal data of '{}': {why}",
                self.event_type
            )))
        };
        if self.event_type.trim().is_empty() {
            return Err(Error::Configuration(
                "personal data declared for an empty event type".into(),
            ));
        }
        if self.fields.is_empty() {
            return wrong("no personal field is declared".into());
        }
        for pointer in std::iter::once(&self.subject).chain(&self.fields) {
            if !pointer.starts_with('/') {
                return wrong(format!(
                    "'{pointer}' is not a JSON pointer to a field (e.g. \"/email\")"
                ));
            }
        }
        for field in &self.fields {
            if overlaps(field, &self.subject) {
                return wrong(format!(
                    "the subject field '{}' cannot be inside or around the personal field \
                     '{field}': it must stay in clear to find the subject's key",
                    self.subject
                ));
            }
        }
        for (index, field) in self.fields.iter().enumerate() {
            if let Some(other) = self.fields[index + 1..].iter().find(|o| overlaps(field, o)) {
                return wrong(format!(
                    "the personal fields '{field}' and '{other}' overlap"
                ));
            }
        }
        Ok(())
    }
}

/// Whether one pointer equals the other or points inside it.
fn overlaps(a: &str, b: &str) -> bool {
    let inside = |outer: &str, inner: &str| {
        inner
            .strip_prefix(outer)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    };
    inside(a, b) || inside(b, a)
}

/// Every declaration, by event type.
#[derive(Debug, Clone, Default)]
pub struct PersonalDataPolicy {
    by_type: HashMap<String, Arc<PersonalData>>,
}

impl PersonalDataPolicy {
    /// No personal data declared.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a declaration. Declaring an event type again the same way is harmless; declaring
    /// it differently is a configuration error naming `origin` (e.g. the module).
    pub fn declare(&mut self, declared: PersonalData, origin: &str) -> Result<()> {
        declared.check()?;
        match self.by_type.get(&declared.event_type) {
            Some(existing) if **existing != declared => Err(Error::Configuration(format!(
                "personal data of '{}' is declared twice, differently (the second time by {origin})",
                declared.event_type
            ))),
            Some(_) => Ok(()),
            None => {
                self.by_type
                    .insert(declared.event_type.clone(), Arc::new(declared));
                Ok(())
            }
        }
    }

    /// Adds a declaration that replaces any earlier one of its event type (the configuration
    /// overrides what modules declare).
    pub fn overrule(&mut self, declared: PersonalData) -> Result<()> {
        declared.check()?;
        self.by_type
            .insert(declared.event_type.clone(), Arc::new(declared));
        Ok(())
    }

    /// Merges another policy in: `other`'s declarations are added unless this policy already
    /// declares their event type (what is here wins).
    pub fn merged_under(mut self, other: &PersonalDataPolicy) -> Self {
        for (event_type, declared) in &other.by_type {
            self.by_type
                .entry(event_type.clone())
                .or_insert_with(|| Arc::clone(declared));
        }
        self
    }

    /// The declaration of an event type.
    pub fn get(&self, event_type: &str) -> Option<&Arc<PersonalData>> {
        self.by_type.get(event_type)
    }

    /// Whether nothing is declared.
    pub fn is_empty(&self) -> bool {
        self.by_type.is_empty()
    }

    /// The declared event types, sorted.
    pub fn event_types(&self) -> Vec<&str> {
        let mut types: Vec<&str> = self.by_type.keys().map(String::as_str).collect();
        types.sort_unstable();
        types
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declarations_are_checked() {
        assert!(PersonalData::new("user.created", "/user_id", ["/email", "/profile"]).is_ok());
        assert!(PersonalData::new("t", "/id", Vec::<String>::new()).is_err());
        assert!(PersonalData::new("t", "id", ["/email"]).is_err());
        assert!(PersonalData::new("t", "/id", ["email"]).is_err());
        assert!(PersonalData::new("t", "/user/id", ["/user"]).is_err());
        assert!(PersonalData::new("t", "/user", ["/user/email"]).is_err());
        assert!(PersonalData::new("t", "/id", ["/id"]).is_err());
        assert!(PersonalData::new("t", "/id", ["/a", "/a/b"]).is_err());
        assert!(PersonalData::new("t", "/id", ["/identity"]).is_ok());
        assert!(PersonalData::new("", "/id", ["/a"]).is_err());
    }

    #[test]
    fn a_conflicting_declaration_is_refused_and_the_configuration_overrules() {
        let mut policy = PersonalDataPolicy::new();
        let created = PersonalData::new("user.created", "/user_id", ["/email"]).unwrap();
        policy.declare(created.clone(), "users").unwrap();
        policy.declare(created, "users").unwrap();
        let other = PersonalData::new("user.created", "/user_id", ["/profile"]).unwrap();
        let error = policy.declare(other.clone(), "python").unwrap_err();
        assert!(error.to_string().contains("python"), "{error}");
        policy.overrule(other.clone()).unwrap();
        assert_eq!(**policy.get("user.created").unwrap(), other);

        let mut config = PersonalDataPolicy::new();
        config
            .declare(
                PersonalData::new("user.created", "/id", ["/name"]).unwrap(),
                "config",
            )
            .unwrap();
        let mut modules = PersonalDataPolicy::new();
        modules
            .declare(
                PersonalData::new("user.renamed", "/id", ["/name"]).unwrap(),
                "users",
            )
            .unwrap();
        modules
            .declare(
                PersonalData::new("user.created", "/user_id", ["/email"]).unwrap(),
                "users",
            )
            .unwrap();
        let merged = config.merged_under(&modules);
        assert_eq!(merged.event_types(), ["user.created", "user.renamed"]);
        assert_eq!(merged.get("user.created").unwrap().subject, "/id");
    }
}
