//! Command interceptors: code a module runs before a command type's handler, whichever module
//! owns that type — to enrich the payload, check it, or refuse the command (a plugin's
//! `before_command` hook).
//!
//! The [`Intercepted`] decorator runs the interceptors of a command's type in registration
//! order (module order, then the order each module registered them); each gets the command the
//! previous one returned. A refusal stops the command: nothing is written. Interceptors may
//! change the payload, never the command type (the handler is chosen by it, and authorization
//! already checked it).

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;

use crate::command::{Command, CommandBus, CommandContext, CommandOutcome};
use crate::{Error, Result};

/// Sees a command before its handler.
#[async_trait]
pub trait CommandInterceptor: Send + Sync {
    /// The command to hand on (the same, or with an enriched payload), or the error that
    /// refuses it.
    async fn intercept(&self, ctx: &CommandContext, command: Command) -> Result<Command>;
}

/// The interceptors of every command type, in the order they run.
#[derive(Clone, Default)]
pub struct Interceptors {
    by_type: HashMap<String, Vec<Arc<dyn CommandInterceptor>>>,
}

impl Interceptors {
    /// No interceptors.
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs `interceptor` for commands of `command_type`, after those added before.
    pub fn add(
        &mut self,
        command_type: impl Into<String>,
        interceptor: Arc<dyn CommandInterceptor>,
    ) {
        self.by_type
            .entry(command_type.into())
            .or_default()
            .push(interceptor);
    }

    /// Appends every interceptor of `other`, after this one's.
    pub fn extend(&mut self, other: Interceptors) {
        for (command_type, interceptors) in other.by_type {
            self.by_type
                .entry(command_type)
                .or_default()
                .extend(interceptors);
        }
    }

    /// Whether no command type has an interceptor.
    pub fn is_empty(&self) -> bool {
        self.by_type.is_empty()
    }

    /// The command types that have interceptors.
    pub fn command_types(&self) -> Vec<&str> {
        let mut types: Vec<&str> = self.by_type.keys().map(String::as_str).collect();
        types.sort_unstable();
        types
    }
}

/// A command bus that runs [`Interceptors`] before the inner bus (attached with
/// [`crate::command::CommandBusExt::with_interceptors`]).
pub struct Intercepted<B> {
    inner: B,
    interceptors: Interceptors,
}

impl<B> Intercepted<B> {
    /// `inner` behind `interceptors`.
    pub fn new(inner: B, interceptors: Interceptors) -> Self {
        Self {
            inner,
            interceptors,
        }
    }
}

#[async_trait]
impl<B: CommandBus> CommandBus for Intercepted<B> {
    async fn send(&self, ctx: &CommandContext, command: &Command) -> Result<CommandOutcome> {
        let Some(interceptors) = self.interceptors.by_type.get(&command.command_type) else {
            return self.inner.send(ctx, command).await;
        };
        let mut current = command.clone();
        for interceptor in interceptors {
            current = interceptor.intercept(ctx, current).await?;
            if current.command_type != command.command_type {
                return Err(Error::internal(format!(
                    "an interceptor of '{}' changed the command type to '{}'",
                    command.command_type, current.command_type
                )));
            }
        }
        self.inner.send(ctx, &current).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;
    use crate::command::CommandBusExt;
    use serde_json::{Value, json};
    use std::sync::Mutex;

    /// Records the payloads it is sent.
    #[derive(Default)]
    struct Recording(Mutex<Vec<Value>>);

    #[async_trait]
    impl CommandBus for &Recording {
        async fn send(&self, _ctx: &CommandContext, command: &Command) -> Result<CommandOutcome> {
            self.0.lock().unwrap().push(command.payload.clone());
            Err(Error::unavailable("recorded"))
        }
    }

    /// Appends its mark to the payload's `trail`, or refuses when the payload says so.
    struct Marking(&'static str);

    #[async_trait]
    impl CommandInterceptor for Marking {
        async fn intercept(&self, _ctx: &CommandContext, mut command: Command) -> Result<Command> {
            if command.payload["refuse"] == json!(self.0) {
                return Err(Error::validation(format!("{} refuses", self.0)));
            }
            let trail = command.payload["trail"].as_str().unwrap_or("").to_owned();
            command.payload["trail"] = json!(format!("{trail}{}", self.0));
            Ok(command)
        }
    }

    fn command(payload: Value) -> Command {
        Command {
            command_type: "create_user".into(),
            payload,
        }
    }

    #[tokio::test]
    async fn interceptors_run_in_order_and_hand_on_what_they_return() {
        let inner = Recording::default();
        let mut interceptors = Interceptors::new();
        interceptors.add("create_user", Arc::new(Marking("a")));
        let mut later = Interceptors::new();
        later.add("create_user", Arc::new(Marking("b")));
        interceptors.extend(later);
        let bus = (&inner).with_interceptors(interceptors);
        let ctx = CommandContext::default();
        let _ = bus.send(&ctx, &command(json!({}))).await;
        let _ = bus
            .send(
                &ctx,
                &Command {
                    command_type: "other".into(),
                    payload: json!({}),
                },
            )
            .await;
        assert_eq!(
            *inner.0.lock().unwrap(),
            [json!({"trail": "ab"}), json!({})]
        );
    }

    #[tokio::test]
    async fn a_refusal_stops_the_command() {
        let inner = Recording::default();
        let mut interceptors = Interceptors::new();
        interceptors.add("create_user", Arc::new(Marking("a")));
        interceptors.add("create_user", Arc::new(Marking("b")));
        let bus = (&inner).with_interceptors(interceptors);
        let refused = bus
            .send(&CommandContext::default(), &command(json!({"refuse": "b"})))
            .await
            .unwrap_err();
        assert_eq!(refused.kind(), ErrorKind::Validation);
        assert!(inner.0.lock().unwrap().is_empty(), "the handler never ran");
    }

    #[tokio::test]
    async fn an_interceptor_may_not_change_the_command_type() {
        struct Renaming;
        #[async_trait]
        impl CommandInterceptor for Renaming {
            async fn intercept(&self, _: &CommandContext, mut command: Command) -> Result<Command> {
                command.command_type = "delete_everything".into();
                Ok(command)
            }
        }
        let inner = Recording::default();
        let mut interceptors = Interceptors::new();
        interceptors.add("create_user", Arc::new(Renaming));
        let bus = (&inner).with_interceptors(interceptors);
        let error = bus
            .send(&CommandContext::default(), &command(json!({})))
            .await
            .unwrap_err();
        assert_eq!(error.kind(), ErrorKind::Internal);
        assert!(inner.0.lock().unwrap().is_empty());
    }
}
