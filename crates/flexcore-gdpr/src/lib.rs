//! FlexCore's crypto-shredding adapter: the cryptography behind [`flexcore_app::gdpr`].
//!
//! * [`MasterKey`]: 32 bytes from a file (raw, 64 hex digits or base64); it wraps the data keys.
//! * [`KeyVault`]: the [`SubjectKeys`] port over a store's [`KeyTable`]: one random AES-256
//!   data key per subject, stored wrapped (AES-256-GCM under the master key, bound to the
//!   subject), unwrapped keys cached in memory for [`VaultOptions::cache_ttl`].
//! * The sealed form of a personal field: `base64url(0x01 ‖ nonce(12) ‖ AES-256-GCM ciphertext
//!   ‖ tag(16))`, with a random nonce per value and the event id and field pointer as
//!   associated data (see [`flexcore_app::gdpr::DataKey`]).
//!
//! Everything uses `ring` (already the TLS provider's crypto): no second crypto stack. Key
//! material never appears in errors or logs.

mod codec;
mod error;
mod vault;

pub use codec::{DataKeyCipher, MasterKey};
pub use error::GdprError;
pub use vault::{KeyVault, VaultOptions};

#[doc(no_inline)]
pub use flexcore_app::gdpr::{KeyTable, SubjectKeys};
