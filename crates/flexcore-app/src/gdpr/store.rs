//! The crypto-shredding decorator of the event store, and the subject export.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use flexcore_domain::{EventEnvelope, EventId, ExpectedVersion, RawJson, StreamId};
use serde_json::Value;
use tokio::sync::watch;

use super::{
    DataKey, ENCRYPTED_FIELD, PersonalData, PersonalDataPolicy, REDACTED, SubjectKey, SubjectKeys,
};
use crate::store::{
    AllSlice, AppendResult, EventAppender, EventFilter, EventReader, EventStore, ReadAll,
    ReadStream, Snapshot, SnapshotStore, StreamAdmin, StreamSlice, StreamWrite,
};
use crate::{Error, Result};

/// How many events one export page scans.
const EXPORT_SCAN: usize = 1_000;

/// An event store whose declared personal fields are stored sealed with the subject's data
/// key, and read back opened — or as [`REDACTED`] once the subject was forgotten.
///
/// Events of undeclared types pass through untouched (reading them costs one map lookup of
/// the event type). Values stored before their type was declared stay as they were (events are
/// immutable): declare personal data before writing it.
pub struct ShreddingStore {
    inner: Arc<dyn EventStore>,
    keys: Arc<dyn SubjectKeys>,
    policy: RwLock<Arc<PersonalDataPolicy>>,
}

/// One page of a subject's export.
#[derive(Debug, Clone)]
pub struct ExportPage {
    /// The subject's events of the page, opened (or redacted), in log order.
    pub events: Vec<EventEnvelope>,
    /// Where the next page starts.
    pub next_position: u64,
    /// Whether the scan reached the end of the log.
    pub finished: bool,
}

impl ShreddingStore {
    /// Wraps `inner`, sealing what `policy` declares with keys from `keys`.
    pub fn new(
        inner: Arc<dyn EventStore>,
        keys: Arc<dyn SubjectKeys>,
        policy: PersonalDataPolicy,
    ) -> Self {
        Self {
            inner,
            keys,
            policy: RwLock::new(Arc::new(policy)),
        }
    }

    /// The declarations in force.
    pub fn policy(&self) -> Arc<PersonalDataPolicy> {
        Arc::clone(&self.policy.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Adds declarations made after the store was opened (the domain modules'), under the
    /// ones already in force (the configuration's win).
    pub fn declare(&self, more: &PersonalDataPolicy) {
        let mut policy = self.policy.write().unwrap_or_else(|p| p.into_inner());
        *policy = Arc::new((**policy).clone().merged_under(more));
    }

    /// The store underneath, whose events hold the sealed values.
    pub fn inner(&self) -> &Arc<dyn EventStore> {
        &self.inner
    }

    /// Forgets a subject: destroys its data key, so its personal fields read as [`REDACTED`]
    /// everywhere from now on and it can take no new personal data. Answers whether a key
    /// existed.
    pub async fn forget(&self, subject: &str) -> Result<bool> {
        let existed = self.keys.forget(subject).await?;
        tracing::info!(
            subject,
            existed,
            "gdpr: subject forgotten, its data key destroyed"
        );
        Ok(existed)
    }

    /// Scans one page of the global log from `from_position` for the subject's events: those
    /// whose `metadata.actor.sub` is the subject, or whose declared subject field names it.
    pub async fn export_page(&self, subject: &str, from_position: u64) -> Result<ExportPage> {
        let slice = self
            .inner
            .read_all(ReadAll {
                from_position,
                limit: EXPORT_SCAN,
                filter: EventFilter::default(),
            })
            .await?;
        let finished = slice.events.len() < EXPORT_SCAN;
        let policy = self.policy();
        let mut events: Vec<EventEnvelope> = slice
            .events
            .into_iter()
            .filter(|event| concerns(event, subject, &policy))
            .collect();
        self.reveal(&mut events).await?;
        Ok(ExportPage {
            events,
            next_position: slice.next_position,
            finished,
        })
    }

    /// Seals the declared fields of every event of `writes`.
    async fn seal(&self, writes: &mut [StreamWrite]) -> Result<()> {
        let policy = self.policy();
        if policy.is_empty() {
            return Ok(());
        }
        let mut keys: HashMap<String, Arc<dyn DataKey>> = HashMap::new();
        for event in writes.iter_mut().flat_map(|w| w.events.iter_mut()) {
            let Some(declared) = policy.get(&event.event_type) else {
                continue;
            };
            let mut data: Value = event
                .data
                .decode()
                .map_err(|e| Error::validation(format!("event data is not valid JSON: {e}")))?;
            if !declared.fields.iter().any(|f| data.pointer(f).is_some()) {
                continue;
            }
            let subject = subject_of(&data, declared).ok_or_else(|| {
                Error::validation(format!(
                    "events of type '{}' carry personal data and must name their subject at '{}' \
                     (a string or a number)",
                    event.event_type, declared.subject
                ))
            })?;
            let key = match keys.get(&subject) {
                Some(key) => Arc::clone(key),
                None => {
                    let key = self.keys.get_or_create(&subject).await?;
                    keys.insert(subject, Arc::clone(&key));
                    key
                }
            };
            for field in &declared.fields {
                if let Some(slot) = data.pointer_mut(field) {
                    let plain = serde_json::to_vec(slot)
                        .map_err(|e| Error::internal_from("cannot encode a personal field", e))?;
                    let sealed = key.seal(&aad(event.event_id, field), &plain)?;
                    *slot = serde_json::json!({ ENCRYPTED_FIELD: sealed });
                }
            }
            event.data = RawJson::from_value(&data);
        }
        Ok(())
    }

    /// Opens (or redacts) the sealed fields of declared events, in place.
    async fn reveal(&self, events: &mut [EventEnvelope]) -> Result<()> {
        let policy = self.policy();
        if policy.is_empty() {
            return Ok(());
        }
        let mut keys: HashMap<String, SubjectKey> = HashMap::new();
        for event in events.iter_mut() {
            let Some(declared) = policy.get(&event.event_type) else {
                continue;
            };
            // Only sealed events need parsing: a stored sealed value always contains this key.
            if !event.data.get().contains(ENCRYPTED_FIELD) {
                continue;
            }
            let mut data: Value = event.data.decode().map_err(|e| {
                Error::internal_from(format!("stored event {} is not JSON", event.event_id), e)
            })?;
            let subject = subject_of(&data, declared);
            let mut changed = false;
            for field in &declared.fields {
                let Some(slot) = data.pointer_mut(field) else {
                    continue;
                };
                let Some(sealed) = sealed_text(slot) else {
                    continue;
                };
                let subject = subject.as_deref().ok_or_else(|| {
                    Error::internal(format!(
                        "event {} holds sealed fields but no subject at '{}'",
                        event.event_id, declared.subject
                    ))
                })?;
                let key = match keys.get(subject) {
                    Some(key) => key.clone(),
                    None => {
                        let key = self.keys.get(subject).await?;
                        keys.insert(subject.to_owned(), key.clone());
                        key
                    }
                };
                *slot = match key {
                    SubjectKey::Active(key) => {
                        let plain = key
                            .open(&aad(event.event_id, field), sealed)
                            .ok_or_else(|| tampered(event, field))?;
                        serde_json::from_slice(&plain).map_err(|_| tampered(event, field))?
                    }
                    SubjectKey::Forgotten => Value::String(REDACTED.to_owned()),
                    SubjectKey::Absent => {
                        return Err(Error::internal(format!(
                            "event {} holds a sealed field '{field}' but its subject has no data \
                             key (was the key table lost or restored from an older backup?)",
                            event.event_id
                        )));
                    }
                };
                changed = true;
            }
            if changed {
                event.data = RawJson::from_value(&data);
            }
        }
        Ok(())
    }
}

/// The subject's id an event's data names, as text.
fn subject_of(data: &Value, declared: &PersonalData) -> Option<String> {
    match data.pointer(&declared.subject)? {
        Value::String(subject) => Some(subject.clone()),
        Value::Number(number) => Some(number.to_string()),
        _ => None,
    }
}

/// The sealed text of a `{"$enc": "…"}` value.
fn sealed_text(value: &Value) -> Option<&str> {
    match value {
        Value::Object(object) if object.len() == 1 => object.get(ENCRYPTED_FIELD)?.as_str(),
        _ => None,
    }
}

/// The associated data of a sealed field: the event id and the field's pointer.
fn aad(event_id: EventId, field: &str) -> Vec<u8> {
    let mut aad = Vec::with_capacity(16 + field.len());
    aad.extend_from_slice(event_id.0.as_bytes());
    aad.extend_from_slice(field.as_bytes());
    aad
}

/// The error for a sealed field that does not open with its subject's key.
fn tampered(event: &EventEnvelope, field: &str) -> Error {
    Error::internal(format!(
        "the sealed field '{field}' of event {} fails authentication: the stored value was \
         altered or moved, or the data key does not belong to it",
        event.event_id
    ))
}

/// Whether an event concerns the subject: written by it, or naming it as its data subject.
fn concerns(event: &EventEnvelope, subject: &str, policy: &PersonalDataPolicy) -> bool {
    let by_actor = event.metadata.get().contains("actor")
        && event
            .decode_metadata()
            .ok()
            .and_then(|metadata| metadata.actor)
            .is_some_and(|actor| actor.sub == subject);
    by_actor
        || policy.get(&event.event_type).is_some_and(|declared| {
            event
                .data
                .decode::<Value>()
                .ok()
                .and_then(|data| subject_of(&data, declared))
                .is_some_and(|named| named == subject)
        })
}

#[async_trait]
impl EventAppender for ShreddingStore {
    async fn append_atomic(&self, mut writes: Vec<StreamWrite>) -> Result<AppendResult> {
        self.seal(&mut writes).await?;
        self.inner.append_atomic(writes).await
    }
}

#[async_trait]
impl EventReader for ShreddingStore {
    async fn read_stream(&self, request: ReadStream) -> Result<StreamSlice> {
        let mut slice = self.inner.read_stream(request).await?;
        self.reveal(&mut slice.events).await?;
        Ok(slice)
    }

    async fn read_all(&self, request: ReadAll) -> Result<AllSlice> {
        let mut slice = self.inner.read_all(request).await?;
        self.reveal(&mut slice.events).await?;
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
impl SnapshotStore for ShreddingStore {
    async fn save_snapshot(&self, snapshot: Snapshot) -> Result<()> {
        self.inner.save_snapshot(snapshot).await
    }

    async fn load_snapshot(&self, stream_id: &StreamId) -> Result<Option<Snapshot>> {
        self.inner.load_snapshot(stream_id).await
    }
}

#[async_trait]
impl StreamAdmin for ShreddingStore {
    async fn delete_stream(&self, stream_id: &StreamId, expected: ExpectedVersion) -> Result<()> {
        self.inner.delete_stream(stream_id, expected).await
    }

    async fn truncate_before(&self, stream_id: &StreamId, version: u64) -> Result<()> {
        self.inner.truncate_before(stream_id, version).await
    }
}
