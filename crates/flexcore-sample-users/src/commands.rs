//! The sample domain's command handlers: `create_user`, `change_email` (its queries answer
//! from the `users` read model: [`crate::read_model`]).
//!
//! Email uniqueness is enforced by claiming the address's reservation stream in the same
//! atomic append as the user's event; a concurrent claim fails its expectation, the retry
//! middleware re-runs the command, and the re-run sees the address taken (409).

use std::sync::Arc;

use async_trait::async_trait;
use flexcore_app::command::{CommandContext, CommandHandler};
use flexcore_app::repository::{Loaded, Repository};
use flexcore_app::store::StreamWriteResult;
use flexcore_app::{Error, Result};
use flexcore_domain::DomainError;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::domain::{Email, EmailReservation, ReservationCommand, User, UserCommand};

/// The sample domain's command handlers, by command type.
pub fn command_handlers(repository: Repository) -> [(&'static str, Arc<dyn CommandHandler>); 2] {
    let handlers = Arc::new(UserHandlers { repository });
    [
        ("create_user", Arc::new(CreateUser(Arc::clone(&handlers)))),
        ("change_email", Arc::new(ChangeEmail(handlers))),
    ]
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
/// on `reservation`, in one atomic two-stream append: the write `create_user` makes.
///
/// Public so that `flexcore-bench gateway` can drive exactly this write straight into a store
/// (its `store` baseline) instead of rebuilding it by hand.
pub async fn create(
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
        .ok_or_else(|| Error::internal("append returned no stream result"))
}
