//! Idempotency keys: a client that retries a command with the same `Idempotency-Key` gets the
//! first answer back and nothing is executed twice.
//!
//! [`Idempotent`] decorates a [`CommandBus`]. The first request with a key runs; requests with
//! the same key that arrive while it runs wait for it; later ones are answered from memory. The
//! key is bound to the command type and body: the same key with another command is refused
//! with a validation error that says so. Answers are kept for `ttl` and at most `capacity`
//! keys (oldest first out). Failures that a retry could fix (unavailable, internal, a lost
//! concurrency race) are not remembered, so a retry runs again.
//!
//! The table lives in the process: after a restart a key is new again. Events themselves are
//! protected across restarts by their ids (`event_id` re-sends are idempotent in every store).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::sync::watch;

use crate::command::{Command, CommandBus, CommandContext, CommandOutcome};
use crate::{Error, ErrorKind, Result};

/// The longest idempotency key accepted.
pub const MAX_KEY_LEN: usize = 255;

type Answer = std::result::Result<CommandOutcome, (ErrorKind, String)>;

enum Entry {
    /// The first request is still running; wait on this.
    Running(watch::Receiver<Option<Answer>>),
    /// The first request's answer.
    Done(Answer),
}

struct Slot {
    fingerprint: String,
    entry: Entry,
    at: Instant,
}

#[derive(Default)]
struct Table {
    slots: HashMap<String, Slot>,
    order: VecDeque<(String, Instant)>,
}

/// A command bus that honours idempotency keys (see the module docs).
pub struct Idempotent<B> {
    inner: B,
    table: Arc<Mutex<Table>>,
    ttl: Duration,
    capacity: usize,
}

impl<B> Idempotent<B> {
    /// Remembers answers for `ttl`, for at most `capacity` keys.
    pub fn new(inner: B, ttl: Duration, capacity: usize) -> Self {
        Self {
            inner,
            table: Arc::default(),
            ttl,
            capacity: capacity.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn fingerprint(command: &Command) -> String {
    // `Value` objects serialise with sorted keys: equal bodies give equal text.
    format!("{}\n{}", command.command_type, command.payload)
}

/// The first request's answer, again (its `command_id` included).
fn replay(answer: &Answer) -> Result<CommandOutcome> {
    match answer {
        Ok(outcome) => Ok(outcome.clone()),
        Err((kind, message)) => Err(rebuild(*kind, message)),
    }
}

/// Rebuilds a remembered rejection with the same kind (and so the same HTTP/gRPC status).
fn rebuild(kind: ErrorKind, message: &str) -> Error {
    use flexcore_domain::DomainError as D;
    match kind {
        ErrorKind::Validation => D::Validation(message.to_owned()).into(),
        ErrorKind::Conflict => D::AlreadyExists(message.to_owned()).into(),
        ErrorKind::Contended => Error::Contended(message.to_owned()),
        ErrorKind::NotFound => D::NotFound(message.to_owned()).into(),
        ErrorKind::Unauthorized => D::Unauthorized(message.to_owned()).into(),
        ErrorKind::Forbidden => D::Forbidden(message.to_owned()).into(),
        ErrorKind::Unavailable | ErrorKind::RateLimited => Error::unavailable(message.to_owned()),
        ErrorKind::Internal => Error::internal(message.to_owned()),
    }
}

/// Whether an answer is final (worth remembering) or a retry could change it.
fn is_final(result: &Result<CommandOutcome>) -> bool {
    match result {
        Ok(_) => true,
        Err(e) => !e.is_wrong_expected_version() && !e.is_transient(),
    }
}

#[async_trait]
impl<B: CommandBus> CommandBus for Idempotent<B> {
    async fn send(&self, ctx: &CommandContext, command: &Command) -> Result<CommandOutcome> {
        let Some(key) = ctx.idempotency_key.as_deref() else {
            return self.inner.send(ctx, command).await;
        };
        if key.is_empty() || key.len() > MAX_KEY_LEN || key.chars().any(char::is_control) {
            return Err(Error::validation(format!(
                "an idempotency key is 1 to {MAX_KEY_LEN} printable characters"
            )));
        }
        // Keys are per principal: one client's key never answers with another's outcome.
        let slot_key = match ctx.principal.as_deref() {
            Some(principal) => format!("{}\n{key}", principal.subject),
            None => key.to_owned(),
        };
        let fingerprint = fingerprint(command);
        let publish = {
            let mut table = self.lock();
            let now = Instant::now();
            while let Some((oldest, at)) = table.order.front().cloned() {
                if now.duration_since(at) < self.ttl && table.order.len() <= self.capacity {
                    break;
                }
                table.order.pop_front();
                if table.slots.get(&oldest).is_some_and(|s| s.at == at) {
                    table.slots.remove(&oldest);
                }
            }
            match table.slots.get(&slot_key) {
                Some(slot) if slot.fingerprint != fingerprint => {
                    return Err(Error::validation(format!(
                        "idempotency key '{key}' was already used with a different command; \
                         use a new key for a new command"
                    )));
                }
                Some(Slot {
                    entry: Entry::Done(answer),
                    ..
                }) => return replay(answer),
                Some(Slot {
                    entry: Entry::Running(running),
                    ..
                }) => Err(running.clone()),
                None => {
                    let (sender, receiver) = watch::channel(None);
                    table.slots.insert(
                        slot_key.clone(),
                        Slot {
                            fingerprint,
                            entry: Entry::Running(receiver),
                            at: now,
                        },
                    );
                    table.order.push_back((slot_key.clone(), now));
                    Ok(sender)
                }
            }
        };
        let sender = match publish {
            Ok(sender) => sender,
            Err(mut running) => {
                // Someone else runs this key: wait for their answer.
                let answer = running
                    .wait_for(Option::is_some)
                    .await
                    .map_err(|_| {
                        Error::unavailable("the first request with this key was abandoned; retry")
                    })?
                    .clone()
                    .expect("waited for Some");
                return replay(&answer);
            }
        };
        let result = self.inner.send(ctx, command).await;
        let answer: Answer = match &result {
            Ok(outcome) => Ok(outcome.clone()),
            Err(e) => Err((e.kind(), e.to_string())),
        };
        {
            let mut table = self.lock();
            if is_final(&result) {
                if let Some(slot) = table.slots.get_mut(&slot_key) {
                    slot.entry = Entry::Done(answer.clone());
                }
            } else {
                table.slots.remove(&slot_key);
            }
        }
        // Waiters get this answer either way (they asked at the same time as this attempt).
        let _ = sender.send(Some(answer));
        result
    }
}
