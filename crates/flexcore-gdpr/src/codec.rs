//! AES-256-GCM (ring) for data keys and personal fields, and the master key.

use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use flexcore_app::gdpr::DataKey;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};

use crate::GdprError;

/// The first byte of every sealed value and wrapped key: the format (AES-256-GCM, random
/// 96-bit nonce, 128-bit tag).
const FORMAT_V1: u8 = 1;

/// The length of a key in bytes.
const KEY_LEN: usize = 32;

/// The tag's length in bytes.
const TAG_LEN: usize = 16;

/// Prefixes the associated data of a wrapped key, so a wrapped key never opens as a field.
const WRAP_CONTEXT: &[u8] = b"flexcore/subject-key/v1\0";

/// An AES-256-GCM key with a random nonce per message.
struct Aead {
    key: LessSafeKey,
    random: SystemRandom,
}

impl Aead {
    fn new(bytes: &[u8; KEY_LEN]) -> Self {
        let key = UnboundKey::new(&AES_256_GCM, bytes).expect("a 32-byte AES-256 key");
        Self {
            key: LessSafeKey::new(key),
            random: SystemRandom::new(),
        }
    }

    /// `0x01 ‖ nonce ‖ ciphertext ‖ tag`.
    fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, GdprError> {
        let mut nonce = [0u8; NONCE_LEN];
        self.random
            .fill(&mut nonce)
            .map_err(|_| GdprError::Random)?;
        let mut sealed = Vec::with_capacity(1 + NONCE_LEN + plaintext.len() + TAG_LEN);
        sealed.push(FORMAT_V1);
        sealed.extend_from_slice(&nonce);
        let mut in_out = plaintext.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut in_out,
            )
            .map_err(|_| GdprError::Random)?;
        sealed.extend_from_slice(&in_out);
        Ok(sealed)
    }

    fn open(&self, aad: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
        if sealed.len() < 1 + NONCE_LEN + TAG_LEN || sealed[0] != FORMAT_V1 {
            return None;
        }
        let nonce = Nonce::try_assume_unique_for_key(&sealed[1..=NONCE_LEN]).ok()?;
        let mut in_out = sealed[1 + NONCE_LEN..].to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(aad), &mut in_out)
            .ok()?;
        Some(plain.to_vec())
    }
}

/// The master key: wraps and unwraps the data keys. Read from a file; never shown.
pub struct MasterKey(Aead);

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(…)")
    }
}

impl MasterKey {
    /// A master key from its 32 bytes.
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        Self(Aead::new(&bytes))
    }

    /// Reads a master key file: exactly 32 raw bytes, or 64 hex digits, or the base64 of 32
    /// bytes (surrounding whitespace ignored for the text forms).
    pub fn from_file(path: &Path) -> Result<Self, GdprError> {
        let content =
            std::fs::read(path).map_err(|e| GdprError::MasterKeyFile(path.to_path_buf(), e))?;
        Self::parse(&content).ok_or_else(|| GdprError::MasterKeyFormat(path.to_path_buf()))
    }

    /// Parses the content of a master key file (see [`MasterKey::from_file`]).
    fn parse(content: &[u8]) -> Option<Self> {
        if let Ok(raw) = <[u8; KEY_LEN]>::try_from(content) {
            return Some(Self::from_bytes(raw));
        }
        let text = std::str::from_utf8(content).ok()?.trim();
        let decoded = if text.len() == 2 * KEY_LEN && text.bytes().all(|b| b.is_ascii_hexdigit()) {
            (0..KEY_LEN)
                .map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok())
                .collect::<Option<Vec<u8>>>()?
        } else {
            STANDARD.decode(text).ok()?
        };
        <[u8; KEY_LEN]>::try_from(decoded.as_slice())
            .ok()
            .map(Self::from_bytes)
    }

    /// A fresh random data key for `subject`, and its wrapped form to store.
    pub(crate) fn new_data_key(
        &self,
        subject: &str,
    ) -> Result<(DataKeyCipher, Vec<u8>), GdprError> {
        let mut bytes = [0u8; KEY_LEN];
        self.0
            .random
            .fill(&mut bytes)
            .map_err(|_| GdprError::Random)?;
        let wrapped = self.0.seal(&wrap_aad(subject), &bytes)?;
        Ok((DataKeyCipher(Aead::new(&bytes)), wrapped))
    }

    /// Unwraps a stored data key of `subject`.
    pub(crate) fn unwrap_data_key(
        &self,
        subject: &str,
        wrapped: &[u8],
    ) -> Result<DataKeyCipher, GdprError> {
        let bytes = self
            .0
            .open(&wrap_aad(subject), wrapped)
            .and_then(|plain| <[u8; KEY_LEN]>::try_from(plain.as_slice()).ok())
            .ok_or_else(|| GdprError::WrongMasterKey(subject.to_owned()))?;
        Ok(DataKeyCipher(Aead::new(&bytes)))
    }
}

fn wrap_aad(subject: &str) -> Vec<u8> {
    [WRAP_CONTEXT, subject.as_bytes()].concat()
}

/// A subject's data key: seals personal fields into base64url text.
pub struct DataKeyCipher(Aead);

impl std::fmt::Debug for DataKeyCipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataKeyCipher(…)")
    }
}

impl DataKey for DataKeyCipher {
    fn seal(&self, aad: &[u8], plaintext: &[u8]) -> flexcore_app::Result<String> {
        Ok(URL_SAFE_NO_PAD.encode(self.0.seal(aad, plaintext)?))
    }

    fn open(&self, aad: &[u8], sealed: &str) -> Option<Vec<u8>> {
        self.0.open(aad, &URL_SAFE_NO_PAD.decode(sealed).ok()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn master(seed: u8) -> MasterKey {
        MasterKey::from_bytes([seed; KEY_LEN])
    }

    #[test]
    fn a_sealed_field_opens_only_with_its_key_and_its_place() {
        let (key, _) = master(1).new_data_key("u1").unwrap();
        let sealed = key.seal(b"event-1/email", b"\"ann@example.com\"").unwrap();
        assert!(!sealed.contains("ann"), "{sealed}");
        assert_eq!(
            key.open(b"event-1/email", &sealed).unwrap(),
            b"\"ann@example.com\""
        );
        let again = key.seal(b"event-1/email", b"\"ann@example.com\"").unwrap();
        assert_ne!(sealed, again, "a fresh nonce per value");
        assert!(key.open(b"event-2/email", &sealed).is_none(), "moved event");
        assert!(key.open(b"event-1/name", &sealed).is_none(), "moved field");
        let (other, _) = master(1).new_data_key("u2").unwrap();
        assert!(other.open(b"event-1/email", &sealed).is_none(), "other key");
        let mut bytes = URL_SAFE_NO_PAD.decode(&sealed).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        assert!(
            key.open(b"event-1/email", &URL_SAFE_NO_PAD.encode(&bytes))
                .is_none(),
            "tampered"
        );
        for garbage in ["", "not base64!", "AQ", &URL_SAFE_NO_PAD.encode([2u8; 40])] {
            assert!(key.open(b"event-1/email", garbage).is_none(), "{garbage}");
        }
    }

    #[test]
    fn data_keys_unwrap_with_their_master_key_and_subject_only() {
        let (key, wrapped) = master(1).new_data_key("u1").unwrap();
        assert_eq!(wrapped.len(), 1 + NONCE_LEN + KEY_LEN + TAG_LEN);
        let sealed = key.seal(b"a", b"1").unwrap();
        let unwrapped = master(1).unwrap_data_key("u1", &wrapped).unwrap();
        assert_eq!(unwrapped.open(b"a", &sealed).unwrap(), b"1");
        let wrong = master(2).unwrap_data_key("u1", &wrapped).unwrap_err();
        assert!(matches!(wrong, GdprError::WrongMasterKey(ref s) if s == "u1"));
        assert!(master(1).unwrap_data_key("u2", &wrapped).is_err());
    }

    #[test]
    fn master_key_files_hold_raw_hex_or_base64_bytes() {
        let bytes: Vec<u8> = (0..32).collect();
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let b64 = STANDARD.encode(&bytes);
        let (_, wrapped) = MasterKey::parse(&bytes).unwrap().new_data_key("s").unwrap();
        for form in [
            hex.clone().into_bytes(),
            format!("{hex}\n").into_bytes(),
            format!("{}\n", hex.to_uppercase()).into_bytes(),
            b64.clone().into_bytes(),
            format!("  {b64}\n").into_bytes(),
        ] {
            let key = MasterKey::parse(&form).expect("a valid form");
            assert!(key.unwrap_data_key("s", &wrapped).is_ok());
        }
        let bad: [&[u8]; 5] = [b"", b"short", &[0u8; 31], &[0u8; 33], &hex.as_bytes()[..62]];
        for bad in bad {
            assert!(MasterKey::parse(bad).is_none());
        }
        let dir = tempfile::tempdir().unwrap();
        let missing = MasterKey::from_file(&dir.path().join("nope")).unwrap_err();
        assert!(matches!(missing, GdprError::MasterKeyFile(..)));
        let path = dir.path().join("bad.key");
        std::fs::write(&path, "not a key").unwrap();
        let format = MasterKey::from_file(&path).unwrap_err();
        assert!(format.to_string().contains("32 bytes"), "{format}");
    }
}
