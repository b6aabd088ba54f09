//! The crypto-shredding scenario, run end to end against every backend.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use flexcore_app::command::{Command, CommandBus, CommandContext, CommandRouter};
use flexcore_app::gdpr::{KeyTable, PersonalDataPolicy, REDACTED, ShreddingStore, SubjectKeys};
use flexcore_app::projection::{Projections, ProjectionsHandle, ReadModelStore};
use flexcore_app::query::{Query, QueryBus, QueryContext, QueryRouter};
use flexcore_app::repository::Repository;
use flexcore_app::store::{EventAppender, EventReader, EventStore, ReadStream};
use flexcore_app::subscription::{Subscription, SubscriptionOptions};
use flexcore_app::{ErrorKind, Result};
use flexcore_domain::{
    Actor, EventEnvelope, EventId, EventMetadata, ExpectedVersion, NewEvent, RawJson, StreamId,
};
use flexcore_gdpr::{KeyVault, MasterKey, VaultOptions};
use flexcore_sample_users::commands::command_handlers;
use flexcore_sample_users::read_model::{UsersProjection, query_handlers};
use serde_json::{Value, json};
use tokio::sync::watch;

/// What the scenario needs from a backend beyond its ports: the stored bytes, to prove they
/// hold no plaintext and to tamper with them.
#[async_trait]
pub trait RawAccess: Send + Sync {
    /// The stored data of an event, as text.
    async fn stored_data(&self, event_id: EventId) -> String;
    /// Overwrites the stored data of an event.
    async fn overwrite_data(&self, event_id: EventId, data: &str);
    /// Every wrapped key stored, as bytes.
    async fn wrapped_keys(&self) -> Vec<Vec<u8>>;
}

/// A backend under test.
pub struct Backend {
    pub store: Arc<dyn EventStore>,
    pub keys: Arc<dyn KeyTable>,
    pub read_models: Arc<dyn ReadModelStore>,
    pub raw: Box<dyn RawAccess>,
}

fn master() -> MasterKey {
    MasterKey::from_bytes([7; 32])
}

fn policy() -> PersonalDataPolicy {
    let mut policy = PersonalDataPolicy::new();
    for declared in flexcore_sample_users::personal_data() {
        policy.declare(declared, "users").unwrap();
    }
    policy
}

struct Node {
    store: Arc<ShreddingStore>,
    commands: CommandRouter,
    queries: QueryRouter,
    projections: ProjectionsHandle,
    stop: watch::Sender<bool>,
}

impl Node {
    async fn send(&self, command_type: &str, payload: Value) -> Result<(String, u64)> {
        let command = Command {
            command_type: command_type.into(),
            payload,
        };
        let outcome = self
            .commands
            .send(&CommandContext::default(), &command)
            .await?;
        Ok((
            outcome
                .stream_id
                .as_str()
                .trim_start_matches("user-")
                .to_owned(),
            outcome.events.last().map_or(0, |e| e.global_position),
        ))
    }

    async fn user(&self, user_id: &str, min_position: u64) -> Value {
        let query = Query {
            query_type: "get_user".into(),
            params: json!({"user_id": user_id, "min_position": min_position}),
        };
        self.queries
            .ask(&QueryContext::default(), &query)
            .await
            .unwrap()
    }

    async fn stream(&self, user_id: &str) -> Result<Vec<EventEnvelope>> {
        let stream = StreamId::new(format!("user-{user_id}")).unwrap();
        Ok(self
            .store
            .read_stream(ReadStream::forward(stream))
            .await?
            .events)
    }

    async fn export(&self, subject: &str) -> Vec<EventEnvelope> {
        let (mut events, mut from) = (Vec::new(), 0);
        loop {
            let page = self.store.export_page(subject, from).await.unwrap();
            events.extend(page.events);
            if page.finished {
                return events;
            }
            from = page.next_position;
        }
    }
}

async fn start(backend: &Backend) -> Node {
    let vault = KeyVault::open(Arc::clone(&backend.keys), master(), VaultOptions::default())
        .await
        .unwrap();
    let store = Arc::new(ShreddingStore::new(
        Arc::clone(&backend.store),
        Arc::new(vault) as Arc<dyn SubjectKeys>,
        policy(),
    ));
    let (stop, shutdown) = watch::channel(false);
    let mut projections = Projections::new(
        Arc::clone(&backend.read_models),
        Arc::clone(&store) as Arc<dyn EventReader>,
    )
    .with_page_size(50);
    projections.register(Arc::new(UsersProjection)).unwrap();
    let projections = projections.start(shutdown).await.unwrap();
    let mut commands = CommandRouter::new();
    for (command_type, handler) in
        command_handlers(Repository::new(Arc::clone(&store) as Arc<dyn EventStore>))
    {
        commands.register(command_type, handler).unwrap();
    }
    let mut queries = QueryRouter::new();
    for (query_type, handler) in query_handlers(projections.read_model("users").unwrap()) {
        queries.register(query_type, handler).unwrap();
    }
    Node {
        store,
        commands,
        queries,
        projections,
        stop,
    }
}

fn data(event: &EventEnvelope) -> Value {
    event.data.decode().unwrap()
}

/// Personal events are sealed at rest and open on read; export finds a subject's events;
/// after `forget` every reader sees the marker, other subjects are untouched, a rebuilt
/// projection shows the marker, and the forgotten subject takes no new personal data.
pub async fn personal_fields_are_sealed_exported_and_shredded(backend: Backend) {
    let node = start(&backend).await;
    let (ann, _) = node
        .send(
            "create_user",
            json!({"email": "ann@example.com", "profile": {"name": "Ann Example"}}),
        )
        .await
        .unwrap();
    let (ann, _) = (ann, ());
    node.send(
        "change_email",
        json!({"user_id": ann, "email": "ann.new@example.com"}),
    )
    .await
    .unwrap();
    let (bob, _) = node
        .send(
            "create_user",
            json!({"email": "bob@example.com", "profile": {"name": "Bob"}}),
        )
        .await
        .unwrap();
    // An event Ann wrote about something else: exported through metadata.actor.
    let order = NewEvent::new("order.placed", RawJson::from_value(&json!({"total": 42})))
        .unwrap()
        .with_metadata(EventMetadata {
            actor: Some(Actor::subject(ann.clone())),
            ..EventMetadata::default()
        });
    let placed = node
        .store
        .append(
            StreamId::new("order-1").unwrap(),
            ExpectedVersion::NoStream,
            vec![order],
        )
        .await
        .unwrap();
    let last = placed.last_position().unwrap();

    // Reads open the sealed fields.
    let events = node.stream(&ann).await.unwrap();
    assert_eq!(events.len(), 2);
    assert_eq!(data(&events[0])["email"], "ann@example.com");
    assert_eq!(data(&events[0])["profile"], json!({"name": "Ann Example"}));
    assert_eq!(data(&events[0])["user_id"], ann.as_str());
    assert_eq!(data(&events[1])["old_email"], "ann@example.com");
    assert_eq!(data(&events[1])["new_email"], "ann.new@example.com");

    // At rest: no plaintext, in the events or among the wrapped keys.
    for event in &events {
        let stored = backend.raw.stored_data(event.event_id).await;
        assert!(stored.contains("$enc"), "{stored}");
        assert!(!stored.contains("ann"), "plaintext at rest: {stored}");
        assert!(!stored.contains("Example"), "plaintext at rest: {stored}");
        assert!(
            stored.contains(&ann),
            "the subject id stays in clear: {stored}"
        );
    }
    let wrapped = backend.raw.wrapped_keys().await;
    assert_eq!(wrapped.len(), 2, "one key per subject");
    assert!(
        wrapped.iter().all(|k| k.len() == 61),
        "wrapped 32-byte keys"
    );

    // Export: Ann's own events and the one she wrote, opened; nothing of Bob's.
    let exported = node.export(&ann).await;
    let types: Vec<&str> = exported.iter().map(|e| e.event_type.as_str()).collect();
    assert_eq!(
        types,
        ["user.created", "user.email_changed", "order.placed"]
    );
    assert_eq!(data(&exported[0])["email"], "ann@example.com");
    assert_eq!(node.export(&bob).await.len(), 1);
    assert!(node.export("nobody").await.is_empty());

    // The projection sees the plaintext.
    assert_eq!(node.user(&ann, last).await["email"], "ann.new@example.com");

    // Forget Ann.
    assert!(node.store.forget(&ann).await.unwrap(), "a key existed");
    assert!(!node.store.forget(&ann).await.unwrap(), "already forgotten");
    let events = node.stream(&ann).await.unwrap();
    assert_eq!(data(&events[0])["email"], REDACTED);
    assert_eq!(data(&events[0])["profile"], REDACTED);
    assert_eq!(data(&events[0])["user_id"], ann.as_str(), "ids stay");
    assert_eq!(data(&events[1])["new_email"], REDACTED);
    assert_eq!(
        data(&node.stream(&bob).await.unwrap()[0])["email"],
        "bob@example.com"
    );
    let exported = node.export(&ann).await;
    assert_eq!(exported.len(), 3, "still found, redacted");
    assert_eq!(data(&exported[1])["old_email"], REDACTED);
    assert_eq!(data(&exported[2])["total"], 42, "undeclared data untouched");

    // A subscription from the start (what projections, consumers and relays read) sees the
    // marker too.
    let mut subscription = Subscription::new(
        Arc::clone(&node.store) as Arc<dyn EventReader>,
        0,
        SubscriptionOptions::default(),
    );
    let mut seen = Vec::new();
    while let Some(event) = subscription
        .next_timeout(Duration::from_millis(200))
        .await
        .unwrap()
    {
        seen.push(event);
    }
    let created: Vec<Value> = seen
        .iter()
        .filter(|e| e.event_type == "user.created")
        .map(data)
        .collect();
    assert_eq!(created.len(), 2);
    assert_eq!(created[0]["email"], REDACTED);
    assert_eq!(created[1]["email"], "bob@example.com");

    // A forgotten subject takes no new personal data, through the domain or a raw append.
    let refused = node
        .send(
            "change_email",
            json!({"user_id": ann, "email": "ann.back@example.com"}),
        )
        .await
        .unwrap_err();
    assert_eq!(refused.kind(), ErrorKind::Validation, "{refused}");
    let again = NewEvent::new(
        "user.email_changed",
        RawJson::from_value(&json!({
            "user_id": ann, "old_email": "x@example.com", "new_email": "y@example.com"
        })),
    )
    .unwrap();
    let refused = node
        .store
        .append(
            StreamId::new(format!("user-{ann}")).unwrap(),
            ExpectedVersion::Any,
            vec![again],
        )
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("forgotten"), "{refused}");
    assert_eq!(
        backend.raw.wrapped_keys().await.len(),
        1,
        "Ann's key is gone"
    );

    // Rebuild the projection after the forget: it goes through, with the marker.
    let generation = node.projections.rebuild("users").await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let status = node.projections.status_of("users").unwrap();
        if status.live.is_some_and(|g| g.number == generation.number) {
            break;
        }
        assert!(status.error.is_none(), "{status:?}");
        assert!(tokio::time::Instant::now() < deadline, "{status:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let user = node.user(&ann, last).await;
    assert_eq!(user["email"], REDACTED);
    assert_eq!(user["profile"], REDACTED);
    assert_eq!(node.user(&bob, last).await["email"], "bob@example.com");
    let _ = node.stop.send(true);

    // A wrong master key stops the vault from opening, clearly.
    let wrong = KeyVault::open(
        Arc::clone(&backend.keys),
        MasterKey::from_bytes([8; 32]),
        VaultOptions::default(),
    )
    .await
    .err()
    .expect("a wrong master key is refused");
    assert!(
        wrong
            .to_string()
            .contains("does not unwrap with the configured master key"),
        "{wrong}"
    );

    // Tampering with a sealed value is reported, not taken for a forgotten subject.
    let bob_created = node.stream(&bob).await.unwrap().remove(0);
    let stored: Value =
        serde_json::from_str(&backend.raw.stored_data(bob_created.event_id).await).unwrap();
    let mut tampered = stored.clone();
    let sealed = stored["email"]["$enc"].as_str().unwrap();
    let flipped = if sealed.ends_with('A') { 'B' } else { 'A' };
    tampered["email"]["$enc"] = json!(format!("{}{flipped}", &sealed[..sealed.len() - 1]));
    backend
        .raw
        .overwrite_data(bob_created.event_id, &tampered.to_string())
        .await;
    let error = node.stream(&bob).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Internal);
    assert!(
        error.to_string().contains("fails authentication"),
        "{error}"
    );
    // Swapping a sealed value into another event does not open either.
    let mut swapped = stored.clone();
    let ann_created = node.stream(&ann).await.unwrap().remove(0);
    let ann_stored: Value =
        serde_json::from_str(&backend.raw.stored_data(ann_created.event_id).await).unwrap();
    swapped["profile"] = ann_stored["profile"].clone();
    backend
        .raw
        .overwrite_data(bob_created.event_id, &swapped.to_string())
        .await;
    let error = node.stream(&bob).await.unwrap_err();
    assert!(
        error.to_string().contains("fails authentication"),
        "{error}"
    );
}
