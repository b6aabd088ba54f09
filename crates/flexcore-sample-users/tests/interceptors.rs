//! A module that intercepts another module's command type, through the module contract and
//! the buses wired as the server wires them: it enriches the payload the owner's handler gets,
//! and its refusal writes nothing.

use std::sync::Arc;

use async_trait::async_trait;
use flexcore_app::command::{Command, CommandContext};
use flexcore_app::intercept::CommandInterceptor;
use flexcore_app::module::{DomainModule, ModuleContext, ModuleRegistry};
use flexcore_app::store::{EventFilter, EventStore, InMemoryStore, ReadAll};
use flexcore_app::{Error, ErrorKind, Result};
use flexcore_sample_users::UsersModule;
use flexcore_test_support::module_buses;
use serde_json::json;

/// Refuses addresses at `blocked.example` and records where a user came from.
struct SignupGuard;

#[async_trait]
impl CommandInterceptor for SignupGuard {
    async fn intercept(&self, _ctx: &CommandContext, mut command: Command) -> Result<Command> {
        let email = command.payload["email"].as_str().unwrap_or_default();
        if email.ends_with("@blocked.example") {
            return Err(Error::validation(
                "sign-ups from blocked.example are closed",
            ));
        }
        command.payload["profile"]["source"] = json!("signup-guard");
        Ok(command)
    }
}

struct GuardModule;

#[async_trait]
impl DomainModule for GuardModule {
    fn name(&self) -> &str {
        "guard"
    }

    async fn register(&self, _engine: &ModuleContext, registry: &mut ModuleRegistry) -> Result<()> {
        registry.intercept("create_user", Arc::new(SignupGuard));
        Ok(())
    }
}

#[tokio::test]
async fn another_module_enriches_and_refuses_create_user() {
    let store: Arc<dyn EventStore> = Arc::new(InMemoryStore::new());
    let (commands, _queries) = module_buses(
        Arc::clone(&store),
        vec![
            Arc::new(UsersModule) as Arc<dyn DomainModule>,
            Arc::new(GuardModule),
        ],
    );
    let ctx = CommandContext::default();
    let create = |email: &str| Command {
        command_type: "create_user".into(),
        payload: json!({ "email": email, "profile": {"name": "Ann"} }),
    };

    let refused = commands
        .send(&ctx, &create("ann@blocked.example"))
        .await
        .unwrap_err();
    assert_eq!(refused.kind(), ErrorKind::Validation);
    let all = ReadAll {
        from_position: 0,
        limit: 100,
        filter: EventFilter::default(),
    };
    assert!(
        store.read_all(all.clone()).await.unwrap().events.is_empty(),
        "nothing written"
    );

    commands
        .send(&ctx, &create("ann@example.com"))
        .await
        .unwrap();
    let events = store.read_all(all).await.unwrap().events;
    let created = events
        .iter()
        .find(|e| e.event_type == "user.created")
        .expect("user.created");
    let data: serde_json::Value = serde_json::from_str(created.data.get()).unwrap();
    assert_eq!(
        data["profile"],
        json!({"name": "Ann", "source": "signup-guard"})
    );
}
