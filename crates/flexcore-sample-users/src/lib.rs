//! The sample domain from the seed — users with a unique, validated email address — as a
//! FlexCore domain module. `flexcore serve` loads it by default (module `users`).
//!
//! * [`domain`]: the `User` and `EmailReservation` aggregates and the `Email` value object
//!   (pure rules, tested with the given/when/then kit);
//! * [`commands`]: `create_user {email, profile?}` and `change_email {user_id, email}`; email
//!   uniqueness is claimed atomically in the same append as the user's event;
//! * [`read_model`]: the `users` projection, `get_user` / `list_users`, their cache policy;
//! * [`welcome`]: the welcome notifier, a durable consumer of `user.created`.
//!
//! [`UsersModule`] plugs all of it into the engine through the
//! [`DomainModule`] contract, like any other domain.

pub mod commands;
pub mod domain;
pub mod read_model;
pub mod welcome;

use std::sync::Arc;

use async_trait::async_trait;
use flexcore_app::Result;
use flexcore_app::durable::DurableOptions;
use flexcore_app::module::{
    DomainModule, DurableConsumerSpec, ModuleContext, ModuleRegistry, ReadSideDeclaration,
};

use flexcore_app::gdpr::PersonalData;

use crate::read_model::UsersProjection;
use crate::welcome::WelcomeNotifier;

/// The sample users domain as a module.
#[derive(Debug, Clone, Copy, Default)]
pub struct UsersModule;

impl UsersModule {
    /// The module's name in the configuration (`modules = ["users"]`).
    pub const NAME: &'static str = "users";
}

/// The personal data of the sample's events, all about the user (`/user_id`): addresses and
/// profiles are sealed per user when crypto-shredding is on, and read as
/// [`flexcore_app::gdpr::REDACTED`] once the user is forgotten.
///
/// The reservation streams (`email-{address}`, events `email.reserved` / `email.released`)
/// are not declared: their stream id is the address itself, which sealing the data cannot
/// hide, and a reservation must stay decodable to keep addresses unique.
pub fn personal_data() -> Vec<PersonalData> {
    let declare = |event_type: &str, fields: &[&str]| {
        PersonalData::new(event_type, "/user_id", fields.iter().copied())
            .expect("the sample's declarations are valid")
    };
    vec![
        declare("user.created", &["/email", "/profile"]),
        declare("user.email_changed", &["/old_email", "/new_email"]),
        declare("notification.welcome_queued", &["/email"]),
    ]
}

#[async_trait]
impl DomainModule for UsersModule {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn declare(&self, read_side: &mut ReadSideDeclaration) -> Result<()> {
        read_side
            .projection(Arc::new(UsersProjection))
            .cache_policy(read_model::cache_policy());
        Ok(())
    }

    fn personal_data(&self) -> Vec<PersonalData> {
        personal_data()
    }

    async fn register(&self, engine: &ModuleContext, registry: &mut ModuleRegistry) -> Result<()> {
        for (command_type, handler) in commands::command_handlers(engine.repository.clone()) {
            registry.command(command_type, handler);
        }
        let users = engine.projections.read_model(UsersProjection::NAME)?;
        for (query_type, handler) in read_model::query_handlers(users) {
            registry.query(query_type, handler);
        }
        registry.durable_consumer(DurableConsumerSpec {
            name: WelcomeNotifier::NAME.to_owned(),
            handler: Arc::new(WelcomeNotifier::new(Arc::clone(&engine.store) as Arc<_>)),
            options: DurableOptions {
                filter: WelcomeNotifier::filter(),
                ..DurableOptions::default()
            },
        });
        Ok(())
    }
}
