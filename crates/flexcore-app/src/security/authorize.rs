//! The policy applied as middleware: on the command and query buses, and on the store ports
//! the gateways read and append through. HTTP, gRPC and the message gateway share these, so
//! one policy holds everywhere.

use std::sync::Arc;

use async_trait::async_trait;
use flexcore_domain::{DomainError, ExpectedVersion, StreamId};
use serde_json::Value;
use tokio::sync::watch;

use super::policy::{Action, Policy, forbidden};
use super::{Principal, audit};
use crate::command::{Command, CommandBus, CommandContext, CommandOutcome};
use crate::query::{Query, QueryBus, QueryContext};
use crate::store::{
    AllSlice, AppendResult, EventAppender, EventReader, EventStore, ReadAll, ReadStream, Snapshot,
    SnapshotStore, StreamAdmin, StreamSlice, StreamWrite,
};
use crate::{Error, Result};

/// The error of a request that reached a guarded port without a principal: the gateways
/// authenticate first, so this is a wiring mistake or an internal caller without identity.
fn unauthenticated() -> Error {
    Error::Domain(DomainError::Unauthorized(
        "a credential is required".to_owned(),
    ))
}

/// `Ok` when `principal` may do `action`; otherwise the denial is audited and refused.
fn check(policy: &Policy, principal: Option<&Principal>, action: Action<'_>) -> Result<()> {
    let Some(principal) = principal else {
        audit::denied(None, None, action.verb(), action.target(), "no principal");
        return Err(unauthenticated());
    };
    policy.check(principal, action).inspect_err(|_| {
        audit::denied(
            Some(principal),
            None,
            action.verb(),
            action.target(),
            "forbidden by policy",
        );
    })
}

/// A command bus that sends only the commands the caller's roles allow.
pub struct AuthorizedCommands<B> {
    inner: B,
    policy: Arc<Policy>,
}

impl<B> AuthorizedCommands<B> {
    /// Guards `inner` with `policy`.
    pub fn new(inner: B, policy: Arc<Policy>) -> Self {
        Self { inner, policy }
    }
}

#[async_trait]
impl<B: CommandBus> CommandBus for AuthorizedCommands<B> {
    async fn send(&self, ctx: &CommandContext, command: &Command) -> Result<CommandOutcome> {
        check(
            &self.policy,
            ctx.principal.as_deref(),
            Action::Command(&command.command_type),
        )?;
        self.inner.send(ctx, command).await
    }
}

/// A query bus that answers only the queries the caller's roles allow.
pub struct AuthorizedQueries<B> {
    inner: B,
    policy: Arc<Policy>,
}

impl<B> AuthorizedQueries<B> {
    /// Guards `inner` with `policy`.
    pub fn new(inner: B, policy: Arc<Policy>) -> Self {
        Self { inner, policy }
    }
}

#[async_trait]
impl<B: QueryBus> QueryBus for AuthorizedQueries<B> {
    async fn ask(&self, ctx: &QueryContext, query: &Query) -> Result<Value> {
        check(
            &self.policy,
            ctx.principal.as_deref(),
            Action::Query(&query.query_type),
        )?;
        self.inner.ask(ctx, query).await
    }
}

/// The event store as one principal may use it: appends and stream reads only where its roles
/// allow, the global log filtered down to the streams it may read, stream deletion only for
/// operators. Made per request by the gateways; cheap (two `Arc`s).
pub struct AuthorizedStore {
    inner: Arc<dyn EventStore>,
    policy: Arc<Policy>,
    principal: Arc<Principal>,
}

impl AuthorizedStore {
    /// `inner` as `principal` may use it under `policy`.
    pub fn new(inner: Arc<dyn EventStore>, policy: Arc<Policy>, principal: Arc<Principal>) -> Self {
        Self {
            inner,
            policy,
            principal,
        }
    }

    fn check(&self, action: Action<'_>) -> Result<()> {
        check(&self.policy, Some(&self.principal), action)
    }
}

#[async_trait]
impl EventAppender for AuthorizedStore {
    async fn append_atomic(&self, writes: Vec<StreamWrite>) -> Result<AppendResult> {
        for write in &writes {
            self.check(Action::Append(&write.stream_id))?;
        }
        self.inner.append_atomic(writes).await
    }
}

#[async_trait]
impl EventReader for AuthorizedStore {
    async fn read_stream(&self, request: ReadStream) -> Result<StreamSlice> {
        self.check(Action::ReadStream(&request.stream_id))?;
        self.inner.read_stream(request).await
    }

    async fn read_all(&self, request: ReadAll) -> Result<AllSlice> {
        if !self.policy.reads_any_stream(&self.principal) {
            audit::denied(
                Some(&self.principal),
                None,
                "read_all",
                "$all",
                "forbidden by policy",
            );
            return Err(forbidden(&self.principal, &"read the global log"));
        }
        let mut slice = self.inner.read_all(request).await?;
        // `next_position` stays: the reader moves past what it may not see.
        slice.events.retain(|event| {
            self.policy
                .allows(&self.principal, Action::ReadStream(&event.stream_id))
        });
        Ok(slice)
    }

    fn head(&self) -> watch::Receiver<u64> {
        self.inner.head()
    }

    async fn ping(&self) -> Result<()> {
        self.inner.ping().await
    }
}

#[async_trait]
impl SnapshotStore for AuthorizedStore {
    async fn save_snapshot(&self, snapshot: Snapshot) -> Result<()> {
        self.check(Action::Append(&snapshot.stream_id))?;
        self.inner.save_snapshot(snapshot).await
    }

    async fn load_snapshot(&self, stream_id: &StreamId) -> Result<Option<Snapshot>> {
        self.check(Action::ReadStream(stream_id))?;
        self.inner.load_snapshot(stream_id).await
    }
}

#[async_trait]
impl StreamAdmin for AuthorizedStore {
    async fn delete_stream(&self, stream_id: &StreamId, expected: ExpectedVersion) -> Result<()> {
        self.check(Action::Admin("delete_stream"))?;
        self.inner.delete_stream(stream_id, expected).await
    }

    async fn truncate_before(&self, stream_id: &StreamId, version: u64) -> Result<()> {
        self.check(Action::Admin("truncate_stream"))?;
        self.inner.truncate_before(stream_id, version).await
    }
}
