//! GDPR tools: crypto-shredding of personal fields and export of everything about a subject.
//!
//! * [`PersonalData`] declares, per event type, which field names the data subject (a JSON
//!   pointer, e.g. `/user_id`) and which fields are personal (`/email`, `/profile`). The
//!   configuration and domain modules ([`crate::module::DomainModule::personal_data`]) declare
//!   them; [`PersonalDataPolicy`] holds them all.
//! * [`ShreddingStore`] is an event-store decorator: on append it replaces every declared
//!   personal field by `{"$enc": "<sealed>"}`, sealed with the subject's data key; on read it
//!   opens them again, or replaces them by [`REDACTED`] once the subject was forgotten. Every
//!   reader of the log — stream reads, `read_all`, hence subscriptions, projections, durable
//!   consumers and outbox relays — goes through it, so none ever sees a forgotten value, while
//!   the stored events never change and every projection can still be rebuilt.
//! * [`SubjectKeys`] is the port of the key vault (the data keys, one per subject) and
//!   [`KeyTable`] the port of the table that keeps them, wrapped by a master key. The
//!   cryptography lives in an adapter (`flexcore-gdpr`); this module only moves sealed text.
//!
//! See `docs/adr/0008-crypto-shredding.md`.

mod memory;
mod policy;
mod store;

pub use memory::InMemoryKeyTable;
pub use policy::{PersonalData, PersonalDataPolicy};
pub use store::{ExportPage, ShreddingStore};

use std::sync::Arc;

use async_trait::async_trait;

use crate::Result;

/// What a personal field of a forgotten subject reads as: a stable marker, the same in every
/// read, subscription, projection and outbox message.
pub const REDACTED: &str = "[forgotten]";

/// The key of the JSON object that replaces a personal field in the stored event:
/// `{"$enc": "<sealed>"}`.
pub const ENCRYPTED_FIELD: &str = "$enc";

/// A subject's data key, able to seal and open personal fields.
///
/// `aad` (associated data) binds a sealed value to its place — the event id and the field's
/// pointer — so a sealed value copied into another event or field does not open.
pub trait DataKey: Send + Sync {
    /// Seals `plaintext` into printable text.
    fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Result<String>;

    /// Opens what [`DataKey::seal`] made with the same `aad`; `None` when the text is
    /// malformed or fails authentication (tampered, moved, or sealed with another key).
    fn open(&self, aad: &[u8], sealed: &str) -> Option<Vec<u8>>;
}

/// What the vault knows about a subject's key.
#[derive(Clone)]
pub enum SubjectKey {
    /// The subject's data key.
    Active(Arc<dyn DataKey>),
    /// The subject was forgotten: its key is destroyed, its personal fields read as
    /// [`REDACTED`].
    Forgotten,
    /// The subject never had a key.
    Absent,
}

/// The key vault: one data key per subject.
#[async_trait]
pub trait SubjectKeys: Send + Sync {
    /// The subject's key, created (and stored) on first use. A forgotten subject gets none:
    /// a validation error, so that new personal data never makes a forgotten subject
    /// readable again.
    async fn get_or_create(&self, subject: &str) -> Result<Arc<dyn DataKey>>;

    /// The subject's key as it stands.
    async fn get(&self, subject: &str) -> Result<SubjectKey>;

    /// Destroys the subject's key (for good: a tombstone stays). Answers whether a key
    /// existed.
    async fn forget(&self, subject: &str) -> Result<bool>;
}

/// A row of the key table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoredKey {
    /// The data key, wrapped (encrypted) by the master key.
    Wrapped(Vec<u8>),
    /// The subject was forgotten: the wrapped key is gone, a tombstone stays.
    Forgotten,
}

/// The table of wrapped data keys (`subject_keys`), kept by the event store's backend.
#[async_trait]
pub trait KeyTable: Send + Sync {
    /// The subject's row, if any.
    async fn load(&self, subject: &str) -> Result<Option<StoredKey>>;

    /// Stores a wrapped key unless the subject already has a row, and returns the row that is
    /// stored (another node's key that won the race, or a tombstone). Durable when it returns.
    async fn insert(&self, subject: &str, wrapped: &[u8]) -> Result<StoredKey>;

    /// Deletes the subject's wrapped key and leaves a tombstone (also for a subject that had
    /// no key yet). Answers whether a wrapped key was deleted.
    async fn forget(&self, subject: &str) -> Result<bool>;

    /// Any one stored wrapped key with its subject, to check the master key at start.
    async fn any_wrapped(&self) -> Result<Option<(String, Vec<u8>)>>;
}
