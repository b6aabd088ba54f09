//! The sample domain's command handlers: `create_user`, `change_email` (its queries answer
//! from the `users` read model: [`crate::projection::users`]).
//!
//! Email uniqueness is enforced by claiming the address's reservation stream in the same
//! atomic append as the user's event; a concurrent claim fails its expectation, the retry
//! middleware re-runs the command, and the re-run sees the address taken (409).

use std::sync::Arc;

use async_trait::async_trait;
use flexcore_domain::users::{
    Email, EmailReservation, ReservationCommand, User, UserCommand, UserEvent,
};
use flexcore_domain::{
    Aggregate, DomainError, DomainEvent, EventEnvelope, EventId, ExpectedVersion, NewEvent,
    RawJson, StreamId,
};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::command::{CommandContext, CommandHandler, CommandRouter};
use crate::event_bus::EventHandler;
use crate::repository::{Loaded, Repository};
use crate::store::{EventAppender, EventFilter, StreamWriteResult};
use crate::{Error, Result};

/// Registers the sample domain's command handlers.
pub fn register_commands(commands: &mut CommandRouter, repository: Repository) -> Result<()> {
    let handlers = Arc::new(UserHandlers { repository });
    commands.register("create_user", Arc::new(CreateUser(Arc::clone(&handlers))))?;
    commands.register("change_email", Arc::new(ChangeEmail(handlers)))?;
    Ok(())
}

struct UserHandlers {
    repository: Repository,
}

/// `create_user {email, profile?}`.
struct CreateUser(Arc<UserHandlers>);

/// `change_email {user_id, email}`.
struct ChangeEmail(Arc<UserHandlers>);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateUserPayload {
    email: String,
    #[serde(default)]
    profile: Option<Map<String, Value>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ChangeEmailPayload {
    user_id: Uuid,
    email: String,
}

fn parse<T: DeserializeOwned>(what: &str, value: &Value) -> Result<T> {
    T::deserialize(value).map_err(|e| Error::validation(format!("invalid {what}: {e}")))
}

#[async_trait]
impl CommandHandler for CreateUser {
    async fn handle(&self, ctx: &CommandContext, payload: &Value) -> Result<StreamWriteResult> {
        let payload: CreateUserPayload = parse("create_user command", payload)?;
        let email = Email::parse(&payload.email)?;
        let user_id = Uuid::now_v7();
        let metadata = ctx.event_metadata();
        let repo = &self.0.repository;

        let profile = payload.profile.unwrap_or_default();
        // Most addresses were never claimed: claim with `no_stream` first, without reading the
        // reservation stream. Only when that expectation fails (the address is taken, or was
        // released earlier) is the reservation loaded and the claim decided on its state; the
        // append's expectation keeps the check atomic either way.
        let optimistic = Loaded::<EmailReservation>::new_instance(email.as_str())?;
        let reservation_stream = optimistic.stream_id.clone();
        match create(repo, user_id, &email, &profile, optimistic, &metadata).await {
            Err(Error::Domain(DomainError::WrongExpectedVersion { stream_id, .. }))
                if stream_id == reservation_stream.as_str() =>
            {
                let reservation = repo.load::<EmailReservation>(email.as_str()).await?;
                create(repo, user_id, &email, &profile, reservation, &metadata).await
            }
            other => other,
        }
    }
}

/// Appends `user.created` for a new user id together with the claim of its address, decided
/// on `reservation`.
async fn create(
    repo: &Repository,
    user_id: Uuid,
    email: &Email,
    profile: &Map<String, Value>,
    reservation: Loaded<EmailReservation>,
    metadata: &flexcore_domain::EventMetadata,
) -> Result<StreamWriteResult> {
    // A fresh UUIDv7: its stream cannot exist, so it is not read (the append still expects
    // `no_stream`).
    let user = Loaded::<User>::new_instance(&user_id.to_string())?;
    let (_, reserve) = reservation.decide(
        &ReservationCommand::Reserve {
            email: email.clone(),
            user_id,
        },
        metadata,
    )?;
    let (state, create) = user.decide(
        &UserCommand::Create {
            user_id,
            email: email.clone(),
            profile: profile.clone(),
        },
        metadata,
    )?;
    let result = repo.store().append_atomic(vec![create, reserve]).await?;
    let user_write = first_stream(result.streams)?;
    repo.maybe_snapshot(&state, user.version, &user_write).await;
    Ok(user_write)
}

#[async_trait]
impl CommandHandler for ChangeEmail {
    async fn handle(&self, ctx: &CommandContext, payload: &Value) -> Result<StreamWriteResult> {
        let payload: ChangeEmailPayload = parse("change_email command", payload)?;
        let email = Email::parse(&payload.email)?;
        let metadata = ctx.event_metadata();
        let repo = &self.0.repository;

        let user = repo.load::<User>(&payload.user_id.to_string()).await?;
        let Some(old_email) = user.state.email.clone() else {
            return Err(
                DomainError::NotFound(format!("user {} does not exist", payload.user_id)).into(),
            );
        };
        let (state, change) = user.decide(
            &UserCommand::ChangeEmail {
                email: email.clone(),
            },
            &metadata,
        )?;
        if change.events.is_empty() {
            return Ok(StreamWriteResult {
                stream_id: user.stream_id,
                current_version: user.version,
                events: Vec::new(),
            });
        }
        let new_reservation = repo.load::<EmailReservation>(email.as_str()).await?;
        let (_, reserve) = new_reservation.decide(
            &ReservationCommand::Reserve {
                email,
                user_id: payload.user_id,
            },
            &metadata,
        )?;
        let old_reservation = repo.load::<EmailReservation>(old_email.as_str()).await?;
        let (_, release) = old_reservation.decide(
            &ReservationCommand::Release {
                email: old_email,
                user_id: payload.user_id,
            },
            &metadata,
        )?;
        let result = repo
            .store()
            .append_atomic(vec![change, reserve, release])
            .await?;
        let user_write = first_stream(result.streams)?;
        repo.maybe_snapshot(&state, user.version, &user_write).await;
        Ok(user_write)
    }
}

fn first_stream(streams: Vec<StreamWriteResult>) -> Result<StreamWriteResult> {
    streams
        .into_iter()
        .next()
        .ok_or_else(|| Error::Internal("append returned no stream result".into()))
}

/// The sample domain's query-cache policy (see [`crate::query_cache`]): `get_user {user_id}`
/// depends on the tag `user:{id}`, `list_users` on `users`; every event of a stream
/// `user-{id}` invalidates both `users` and `user:{id}`.
///
/// A query that carries `min_position` is not cached: it asks to wait for a projection
/// position, which a cached answer cannot promise.
pub fn cache_policy() -> crate::query_cache::CachePolicy {
    fn waits(params: &Value) -> bool {
        params.get("min_position").is_some_and(|p| !p.is_null())
    }
    crate::query_cache::CachePolicy::new()
        .cache("get_user", |params| {
            if waits(params) {
                return None;
            }
            let id: Uuid = params.get("user_id")?.as_str()?.parse().ok()?;
            Some(vec![format!("user:{id}")])
        })
        .cache("list_users", |params| {
            (!waits(params)).then(|| vec!["users".to_owned()])
        })
        .invalidate(|event| match event.stream_id.as_str().split_once('-') {
            Some((category, id)) if category == User::TYPE => {
                vec!["users".to_owned(), format!("user:{id}")]
            }
            _ => Vec::new(),
        })
}

/// The sample domain's side effect, run as a durable consumer (see [`crate::durable`]): every
/// `user.created` queues a welcome notification, the event `notification.welcome_queued` on
/// the stream `notification-{user_id}`.
///
/// Delivery is at least once, so the handler is idempotent: the notification's event id is
/// derived from the `user.created` event's id, and the store answers a re-sent event id with
/// the original result, writing nothing.
pub struct WelcomeNotifier {
    store: Arc<dyn EventAppender>,
}

impl WelcomeNotifier {
    /// The consumer's name.
    pub const NAME: &'static str = "welcome";

    /// A notifier appending to `store`.
    pub fn new(store: Arc<dyn EventAppender>) -> Self {
        Self { store }
    }

    /// The events it reads.
    pub fn filter() -> EventFilter {
        EventFilter {
            type_prefix: Some("user.created".into()),
            ..EventFilter::default()
        }
    }
}

#[async_trait]
impl EventHandler for WelcomeNotifier {
    async fn handle(&self, event: &EventEnvelope) -> Result<()> {
        if event.event_type != "user.created" {
            return Ok(());
        }
        let UserEvent::Created { user_id, email, .. } = UserEvent::from_envelope(event)? else {
            return Ok(());
        };
        let data = serde_json::json!({
            "user_id": user_id,
            "email": email,
            "source_event_id": event.event_id,
        });
        let notice = NewEvent::new("notification.welcome_queued", RawJson::from_value(&data))?
            .with_id(notice_id(event.event_id));
        self.store
            .append(
                StreamId::new(format!("notification-{user_id}"))?,
                ExpectedVersion::Any,
                vec![notice],
            )
            .await?;
        Ok(())
    }
}

/// The welcome notice's id for a `user.created` event: stable, so a re-delivery appends
/// nothing new. A UUIDv8 keeping the source id's first six bytes (a UUIDv7's millisecond
/// timestamp) and salting the rest: distinct from the source id and from every other notice,
/// and, like the ids the store assigns, increasing with time, so the store's event-id index
/// grows at its right edge instead of taking each notice at a random page.
fn notice_id(source: EventId) -> EventId {
    let mut bytes = *source.0.as_bytes();
    for (byte, salt) in bytes[6..].iter_mut().zip(b"welcome-notice") {
        *byte ^= salt;
    }
    EventId(Uuid::new_v8(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notice_ids_are_stable_distinct_and_ordered_like_their_sources() {
        let sources: Vec<EventId> = (0..1000).map(|_| EventId(Uuid::now_v7())).collect();
        let notices: Vec<EventId> = sources.iter().map(|s| notice_id(*s)).collect();
        assert_eq!(notice_id(sources[0]), notices[0], "stable");
        let distinct: std::collections::HashSet<_> = sources
            .iter()
            .chain(notices.iter())
            .map(|id| id.0)
            .collect();
        assert_eq!(
            distinct.len(),
            2000,
            "no notice id equals a source id or another notice id"
        );
        for (source, notice) in sources.iter().zip(&notices) {
            assert_eq!(notice.0.get_version_num(), 8);
            assert_eq!(source.0.as_bytes()[..6], notice.0.as_bytes()[..6]);
        }
        for pair in sources.windows(2).zip(notices.windows(2)) {
            let (s, n) = pair;
            if s[0].0.as_bytes()[..6] < s[1].0.as_bytes()[..6] {
                assert!(
                    n[0].0.as_bytes() < n[1].0.as_bytes(),
                    "a later source, a later notice"
                );
            }
        }
    }
}
