//! Statement templates resolved to one generation's physical table names.

use std::collections::HashMap;

use super::{Generation, resolve_tables};

/// A follower's statement templates with their `{table}` names resolved to its generation's
/// physical names, each resolved once: a projection emits a few distinct templates, many times.
pub(super) struct ResolvedTemplates {
    tables: Vec<&'static str>,
    generation: u32,
    resolved: HashMap<String, String>,
}

impl ResolvedTemplates {
    pub(super) fn new(tables: Vec<&'static str>, generation: Generation) -> Self {
        Self {
            tables,
            generation: generation.number,
            resolved: HashMap::new(),
        }
    }

    /// `template` with physical table names.
    pub(super) fn resolve(&mut self, template: &str) -> String {
        if let Some(sql) = self.resolved.get(template) {
            return sql.clone();
        }
        let sql = resolve_tables(template, &self.tables, self.generation);
        // Bounded: a projection that builds its SQL from event data would grow this forever.
        if self.resolved.len() < MAX_RESOLVED_TEMPLATES {
            self.resolved.insert(template.to_owned(), sql.clone());
        }
        sql
    }
}

/// How many distinct statement templates a follower remembers resolved.
const MAX_RESOLVED_TEMPLATES: usize = 256;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_resolve_like_resolve_tables_and_stay_bounded() {
        let generation = Generation {
            number: 3,
            version: 1,
        };
        let mut templates = ResolvedTemplates::new(vec!["users", "emails"], generation);
        let sql = "INSERT INTO {users} (id) SELECT id FROM {emails} WHERE id = $1";
        for _ in 0..2 {
            assert_eq!(
                templates.resolve(sql),
                "INSERT INTO rm_users_3 (id) SELECT id FROM rm_emails_3 WHERE id = $1"
            );
        }
        for n in 0..2 * MAX_RESOLVED_TEMPLATES {
            let resolved = templates.resolve(&format!("DELETE FROM {{users}} WHERE n = {n}"));
            assert_eq!(resolved, format!("DELETE FROM rm_users_3 WHERE n = {n}"));
        }
        assert_eq!(templates.resolved.len(), MAX_RESOLVED_TEMPLATES);
    }
}
