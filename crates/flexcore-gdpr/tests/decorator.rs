//! The shredding decorator over the in-memory store: what passes through untouched, what is
//! refused, what the vault caches.

use std::sync::Arc;

use flexcore_app::gdpr::{
    InMemoryKeyTable, KeyTable, PersonalData, PersonalDataPolicy, REDACTED, ShreddingStore,
    StoredKey, SubjectKeys,
};
use flexcore_app::store::{EventReader, EventStore, InMemoryStore, ReadAll, ReadStream};
use flexcore_app::{ErrorKind, store::EventAppender};
use flexcore_domain::{ExpectedVersion, NewEvent, RawJson, StreamId};
use flexcore_gdpr::{KeyVault, MasterKey, VaultOptions};
use serde_json::{Value, json};

fn event(event_type: &str, data: &str) -> NewEvent {
    NewEvent::new(event_type, RawJson::from_string(data.to_owned()).unwrap()).unwrap()
}

async fn shredding(table: Arc<InMemoryKeyTable>) -> (Arc<dyn EventStore>, ShreddingStore) {
    let inner: Arc<dyn EventStore> = Arc::new(InMemoryStore::new());
    let vault = KeyVault::open(
        table as Arc<dyn KeyTable>,
        MasterKey::from_bytes([3; 32]),
        VaultOptions::default(),
    )
    .await
    .unwrap();
    let mut policy = PersonalDataPolicy::new();
    policy
        .declare(
            PersonalData::new("patient.admitted", "/patient/id", ["/name", "/notes/0"]).unwrap(),
            "test",
        )
        .unwrap();
    let store = ShreddingStore::new(
        Arc::clone(&inner),
        Arc::new(vault) as Arc<dyn SubjectKeys>,
        policy,
    );
    (inner, store)
}

async fn read_all(reader: &dyn EventReader) -> Vec<Value> {
    reader
        .read_all(ReadAll {
            from_position: 0,
            limit: 100,
            ..ReadAll::default()
        })
        .await
        .unwrap()
        .events
        .iter()
        .map(|e| e.data.decode().unwrap())
        .collect()
}

#[tokio::test]
async fn undeclared_events_pass_through_byte_for_byte_and_subjects_may_be_numbers() {
    let table = Arc::new(InMemoryKeyTable::new());
    let (inner, store) = shredding(Arc::clone(&table)).await;
    let stream = StreamId::new("ward-1").unwrap();
    let verbatim = r#"{"name":  "not personal here",   "n": [1, 2]}"#;
    store
        .append(
            stream.clone(),
            ExpectedVersion::Any,
            vec![
                event("ward.opened", verbatim),
                event(
                    "patient.admitted",
                    r#"{"patient": {"id": 17}, "name": "Zoe", "notes": ["asthma", "x"], "bed": 4}"#,
                ),
                // No personal field present: stored as it is, no key needed.
                event("patient.admitted", r#"{"bed": 5}"#),
            ],
        )
        .await
        .unwrap();
    let stored = inner
        .read_stream(ReadStream::forward(stream.clone()))
        .await
        .unwrap()
        .events;
    assert_eq!(stored[0].data.get(), verbatim);
    assert_eq!(stored[2].data.get(), r#"{"bed": 5}"#);
    let sealed: Value = stored[1].data.decode().unwrap();
    assert!(sealed["name"]["$enc"].is_string(), "{sealed}");
    assert!(sealed["notes"][0]["$enc"].is_string(), "{sealed}");
    assert_eq!(sealed["notes"][1], "x");
    assert_eq!(sealed["patient"]["id"], 17);
    assert!(matches!(
        table.load("17").await.unwrap(),
        Some(StoredKey::Wrapped(_))
    ));

    let read = read_all(&store).await;
    assert_eq!(read[0], json!({"name": "not personal here", "n": [1, 2]}));
    assert_eq!(read[1]["name"], "Zoe");
    assert_eq!(read[1]["notes"], json!(["asthma", "x"]));

    assert!(store.forget("17").await.unwrap());
    let read = read_all(&store).await;
    assert_eq!(read[1]["name"], REDACTED);
    assert_eq!(read[1]["notes"], json!([REDACTED, "x"]));
    assert_eq!(read[1]["bed"], 4);
}

#[tokio::test]
async fn personal_data_without_a_subject_is_refused_and_forgetting_first_blocks_keys() {
    let table = Arc::new(InMemoryKeyTable::new());
    let (_, store) = shredding(Arc::clone(&table)).await;
    let stream = StreamId::new("ward-2").unwrap();
    for data in [
        r#"{"name": "Zoe"}"#,
        r#"{"patient": {"id": true}, "name": "Zoe"}"#,
    ] {
        let refused = store
            .append(
                stream.clone(),
                ExpectedVersion::Any,
                vec![event("patient.admitted", data)],
            )
            .await
            .unwrap_err();
        assert_eq!(refused.kind(), ErrorKind::Validation, "{refused}");
    }
    // Forgetting a subject that never had a key leaves a tombstone: no key is ever made.
    assert!(!store.forget("99").await.unwrap());
    assert_eq!(table.load("99").await.unwrap(), Some(StoredKey::Forgotten));
    let refused = store
        .append(
            stream,
            ExpectedVersion::Any,
            vec![event(
                "patient.admitted",
                r#"{"patient": {"id": "99"}, "name": "Y"}"#,
            )],
        )
        .await
        .unwrap_err();
    assert_eq!(refused.kind(), ErrorKind::Validation);
    assert!(refused.to_string().contains("forgotten"), "{refused}");
}

#[tokio::test]
async fn keys_are_cached_and_a_forget_on_another_node_waits_for_the_cache_to_expire() {
    let table = Arc::new(InMemoryKeyTable::new());
    let vault = |ttl_ms| {
        KeyVault::open(
            Arc::clone(&table) as Arc<dyn KeyTable>,
            MasterKey::from_bytes([3; 32]),
            VaultOptions {
                cache_ttl: std::time::Duration::from_millis(ttl_ms),
                ..VaultOptions::default()
            },
        )
    };
    let (this, other) = (vault(60_000).await.unwrap(), vault(200).await.unwrap());
    let key = this.get_or_create("s").await.unwrap();
    let sealed = key.seal(b"aad", b"secret").unwrap();
    let cached = other.get_or_create("s").await.unwrap();
    assert_eq!(cached.open(b"aad", &sealed).unwrap(), b"secret", "same key");
    // Forgotten through `this`: `other` still has the key cached, until its TTL passes.
    assert!(this.forget("s").await.unwrap());
    assert!(matches!(
        this.get("s").await.unwrap(),
        flexcore_app::gdpr::SubjectKey::Forgotten
    ));
    assert!(matches!(
        other.get("s").await.unwrap(),
        flexcore_app::gdpr::SubjectKey::Active(_)
    ));
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    assert!(matches!(
        other.get("s").await.unwrap(),
        flexcore_app::gdpr::SubjectKey::Forgotten
    ));
    assert!(matches!(
        this.get("nobody").await.unwrap(),
        flexcore_app::gdpr::SubjectKey::Absent
    ));
}
