//! [`SchemaChecked`]: the command-bus decorator that checks payloads against their schemas.

use async_trait::async_trait;

use super::PayloadSchemas;
use crate::Result;
use crate::command::{Command, CommandBus, CommandContext, CommandOutcome};

/// Refuses a command whose payload does not match the schema of its type, before any handler
/// (or retry, or idempotency bookkeeping inside it) runs; commands of a type without a schema
/// pass unchecked.
pub struct SchemaChecked<B> {
    inner: B,
    schemas: PayloadSchemas,
}

impl<B> SchemaChecked<B> {
    /// Checks the commands sent to `inner` against `schemas` (by command type).
    pub fn new(inner: B, schemas: PayloadSchemas) -> Self {
        Self { inner, schemas }
    }
}

#[async_trait]
impl<B: CommandBus> CommandBus for SchemaChecked<B> {
    async fn send(&self, ctx: &CommandContext, command: &Command) -> Result<CommandOutcome> {
        self.schemas
            .check(&command.command_type, &command.payload, || {
                format!("command '{}'", command.command_type)
            })?;
        self.inner.send(ctx, command).await
    }
}
