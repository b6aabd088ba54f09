//! The sample domain's read model: the `users` table, the `get_user` / `list_users` queries
//! it answers, and their query-cache policy.
//!
//! Both queries are read-your-writes capable through the engine: a `min_position` parameter
//! (or header) becomes [`QueryContext::min_position`], and [`ReadModel::query`] waits for it.

use std::sync::Arc;

use async_trait::async_trait;
use flexcore_app::projection::{Changes, Projection, ReadModel, SqlValue};
use flexcore_app::query::{QueryContext, QueryHandler};
use flexcore_app::query_cache::CachePolicy;
use flexcore_app::store::EventFilter;
use flexcore_app::{Error, Result};
use flexcore_domain::{Aggregate, DomainError, EventEnvelope};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use uuid::Uuid;

use crate::domain::User;

/// The largest `page_size` of `list_users`.
pub const MAX_PAGE_SIZE: u64 = 500;

/// Projects `user.created` and `user.email_changed` into the `users` table.
pub struct UsersProjection;

impl UsersProjection {
    /// The projection's name, also the name of its read model.
    pub const NAME: &'static str = "users";
}

impl Projection for UsersProjection {
    fn name(&self) -> &str {
        Self::NAME
    }

    /// 2: no index on `email` (no query can use one: `email_contains` is a substring match;
    /// uniqueness lives in the event store's reservation streams). Its random keys dirtied a
    /// leaf page per user in every commit; the other keys grow at the right edge.
    fn version(&self) -> u32 {
        2
    }

    fn tables(&self) -> Vec<&'static str> {
        vec!["users"]
    }

    fn schema(&self) -> Vec<String> {
        vec![
            "CREATE TABLE {users} (
                user_id TEXT PRIMARY KEY,
                email TEXT NOT NULL,
                profile TEXT NOT NULL,
                version BIGINT NOT NULL,
                created_position BIGINT NOT NULL,
                created_at TEXT NOT NULL,
                updated_at TEXT NOT NULL
            )"
            .into(),
            "CREATE INDEX {users}_by_created ON {users} (created_position)".into(),
        ]
    }

    fn filter(&self) -> EventFilter {
        EventFilter {
            category: Some("user".into()),
            ..EventFilter::default()
        }
    }

    fn apply(&self, event: &EventEnvelope, changes: &mut Changes) -> Result<()> {
        if !matches!(
            event.event_type.as_str(),
            "user.created" | "user.email_changed"
        ) {
            return Ok(());
        }
        let at = event
            .recorded_at
            .format(&time::format_description::well_known::Rfc3339)
            .map_err(|e| Error::internal(format!("cannot format a timestamp: {e}")))?;
        // Decoded leniently, not through `UserEvent`: once a user is forgotten, its personal
        // fields read as the redaction marker (`flexcore_app::gdpr::REDACTED`), which the
        // `Email` value object refuses, and a rebuild must still go through.
        let undecodable = |e: serde_json::Error| {
            Error::Domain(DomainError::validation(format!(
                "cannot decode event {} of type '{}': {e}",
                event.event_id, event.event_type
            )))
        };
        if event.event_type == "user.created" {
            let created: CreatedRow = event.data.decode().map_err(undecodable)?;
            let profile = match created.profile {
                None | Some(Value::Null) => Value::Object(Map::new()),
                Some(profile) => profile,
            };
            changes.execute(
                "INSERT INTO {users} (user_id, email, profile, version, created_position, created_at, updated_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $6)
                 ON CONFLICT (user_id) DO NOTHING",
                vec![
                    created.user_id.to_string().into(),
                    created.email.into(),
                    profile.to_string().into(),
                    event.stream_version.into(),
                    event.global_position.into(),
                    at.into(),
                ],
            );
        } else {
            let changed: EmailChangedRow = event.data.decode().map_err(undecodable)?;
            changes.execute(
                "UPDATE {users} SET email = $2, version = $3, updated_at = $4 WHERE user_id = $1",
                vec![
                    changed.user_id.to_string().into(),
                    changed.new_email.into(),
                    event.stream_version.into(),
                    at.into(),
                ],
            );
        }
        Ok(())
    }
}

/// What the projection reads of `user.created` (an email is any text: it may be redacted).
#[derive(Deserialize)]
struct CreatedRow {
    user_id: Uuid,
    email: String,
    #[serde(default)]
    profile: Option<Value>,
}

/// What the projection reads of `user.email_changed`.
#[derive(Deserialize)]
struct EmailChangedRow {
    user_id: Uuid,
    new_email: String,
}

/// `get_user` and `list_users`, answered from the `users` read model, by query type.
pub fn query_handlers(users: ReadModel) -> [(&'static str, Arc<dyn QueryHandler>); 2] {
    let users = Arc::new(users);
    [
        ("get_user", Arc::new(GetUser(Arc::clone(&users)))),
        ("list_users", Arc::new(ListUsers(users))),
    ]
}

/// `get_user {user_id}`.
struct GetUser(Arc<ReadModel>);

/// `list_users {page?, page_size?, email_contains?}`.
struct ListUsers(Arc<ReadModel>);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GetUserParams {
    user_id: Uuid,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListUsersParams {
    #[serde(default = "first_page")]
    page: u64,
    #[serde(default = "default_page_size")]
    page_size: u64,
    #[serde(default)]
    email_contains: Option<String>,
}

fn first_page() -> u64 {
    1
}

fn default_page_size() -> u64 {
    20
}

const COLUMNS: &str = "user_id, email, profile, version, created_at, updated_at";

#[async_trait]
impl QueryHandler for GetUser {
    async fn handle(&self, ctx: &QueryContext, params: &Value) -> Result<Value> {
        let params: GetUserParams = parse("get_user", params)?;
        let rows = self
            .0
            .query(
                ctx,
                &format!("SELECT {COLUMNS} FROM {{users}} WHERE user_id = $1"),
                vec![params.user_id.to_string().into()],
            )
            .await?;
        let row = rows.into_iter().next().ok_or_else(|| {
            DomainError::NotFound(format!("user {} does not exist", params.user_id))
        })?;
        user_json(row)
    }
}

#[async_trait]
impl QueryHandler for ListUsers {
    async fn handle(&self, ctx: &QueryContext, params: &Value) -> Result<Value> {
        let params: ListUsersParams = parse("list_users", params)?;
        if params.page == 0 {
            return Err(Error::validation("page starts at 1"));
        }
        if params.page_size == 0 || params.page_size > MAX_PAGE_SIZE {
            return Err(Error::validation(format!(
                "page_size must be between 1 and {MAX_PAGE_SIZE}"
            )));
        }
        let (filter, mut args) = match &params.email_contains {
            Some(needle) => (
                "WHERE email LIKE $1 ESCAPE '\\'",
                vec![SqlValue::Text(format!(
                    "%{}%",
                    escape_like(&needle.to_lowercase())
                ))],
            ),
            None => ("", Vec::new()),
        };
        let total = self
            .0
            .query(
                ctx,
                &format!("SELECT COUNT(*) FROM {{users}} {filter}"),
                args.clone(),
            )
            .await?
            .first()
            .and_then(|row| row.first())
            .and_then(SqlValue::as_i64)
            .unwrap_or(0);
        let limit_at = args.len() + 1;
        args.push(SqlValue::from(params.page_size));
        args.push(SqlValue::from(
            (params.page - 1).saturating_mul(params.page_size),
        ));
        let rows = self
            .0
            .query(
                // The count above already waited for the context's position.
                &QueryContext::default(),
                &format!(
                    "SELECT {COLUMNS} FROM {{users}} {filter} ORDER BY created_position LIMIT ${limit_at} OFFSET ${}",
                    limit_at + 1
                ),
                args,
            )
            .await?;
        let users = rows
            .into_iter()
            .map(user_json)
            .collect::<Result<Vec<_>>>()?;
        Ok(json!({
            "users": users,
            "page": params.page,
            "page_size": params.page_size,
            "total": total,
        }))
    }
}

/// The sample domain's query-cache policy (see [`flexcore_app::query_cache`]): `get_user {user_id}`
/// depends on the tag `user:{id}`, `list_users` on `users`; every event of a stream
/// `user-{id}` invalidates both `users` and `user:{id}`.
/// (A read-your-writes query is never answered from the cache: the engine sees to that.)
pub fn cache_policy() -> CachePolicy {
    CachePolicy::new()
        .cache("get_user", |params| {
            let id: Uuid = params.get("user_id")?.as_str()?.parse().ok()?;
            Some(vec![format!("user:{id}")])
        })
        .cache("list_users", |_| Some(vec!["users".to_owned()]))
        .invalidate(|event| match event.stream_id.as_str().split_once('-') {
            Some((category, id)) if category == User::TYPE => {
                vec!["users".to_owned(), format!("user:{id}")]
            }
            _ => Vec::new(),
        })
}

/// Escapes `%`, `_` and `\` for a `LIKE … ESCAPE '\'` pattern.
fn escape_like(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '%' | '_' | '\\') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

fn user_json(row: Vec<SqlValue>) -> Result<Value> {
    let text = |i: usize| -> Result<&str> {
        row.get(i)
            .and_then(SqlValue::as_str)
            .ok_or_else(|| Error::internal(format!("users read model: column {i} is not text")))
    };
    let user_id = text(0)?;
    // An object, or the redaction marker (a JSON string) once the user is forgotten.
    let profile: Value = serde_json::from_str(text(2)?)
        .map_err(|e| Error::internal(format!("users read model: bad profile JSON: {e}")))?;
    Ok(json!({
        "user_id": user_id,
        "email": text(1)?,
        "profile": profile,
        "version": row.get(3).and_then(SqlValue::as_i64),
        "stream_id": format!("user-{user_id}"),
        "created_at": text(4)?,
        "updated_at": text(5)?,
    }))
}

fn parse<T: serde::de::DeserializeOwned>(what: &str, params: &Value) -> Result<T> {
    serde_json::from_value(params.clone())
        .map_err(|e| Error::validation(format!("invalid {what} query: {e}")))
}
