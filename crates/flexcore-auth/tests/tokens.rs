//! JWT verification against forged and well-formed tokens, with the test keys in `keys/`
//! (throwaway keys made with openssl for these tests only).

use std::path::PathBuf;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use flexcore_auth::{JwtSettings, TokenVerifier};
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

const SECRET: &[u8] = b"an HS256 test secret of 32+ bytes!!";

fn key_file(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/keys")
        .join(name)
}

fn private(name: &str, alg: Algorithm) -> EncodingKey {
    let pem = std::fs::read(key_file(name)).unwrap();
    match alg {
        Algorithm::RS256 => EncodingKey::from_rsa_pem(&pem).unwrap(),
        Algorithm::ES256 => EncodingKey::from_ec_pem(&pem).unwrap(),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(&pem).unwrap(),
        other => panic!("no test key for {other:?}"),
    }
}

fn now() -> i64 {
    jsonwebtoken::get_current_timestamp() as i64
}

fn claims(extra: Value) -> Value {
    let mut claims = json!({"sub": "ann", "roles": ["writer"], "exp": now() + 600});
    claims
        .as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    claims
}

fn sign(alg: Algorithm, key: &EncodingKey, kid: Option<&str>, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, key).unwrap()
}

fn hs256(claims: &Value) -> String {
    sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(SECRET),
        None,
        claims,
    )
}

fn verifier(settings: JwtSettings) -> TokenVerifier {
    TokenVerifier::new(settings).unwrap()
}

fn with_secret() -> JwtSettings {
    JwtSettings {
        hs256_secret: Some(SECRET.to_vec()),
        ..JwtSettings::default()
    }
}

fn refusal(verifier: &TokenVerifier, token: &str) -> String {
    verifier.verify(token).expect_err("refused").0
}

#[test]
fn an_hs256_token_proves_its_subject_roles_and_tenant() {
    let verifier = verifier(with_secret());
    let principal = verifier
        .verify(&hs256(&claims(json!({"tenant": "acme"}))))
        .unwrap();
    assert_eq!(principal.subject, "ann");
    assert_eq!(principal.roles, ["writer"]);
    assert_eq!(principal.tenant.as_deref(), Some("acme"));
}

#[test]
fn public_keys_of_every_family_verify_their_own_tokens() {
    let verifier = verifier(JwtSettings {
        public_key_files: vec![key_file("rsa.pub"), key_file("ec.pub"), key_file("ed.pub")],
        ..JwtSettings::default()
    });
    for (alg, key) in [
        (Algorithm::RS256, "rsa.key"),
        (Algorithm::ES256, "ec.key"),
        (Algorithm::EdDSA, "ed.key"),
    ] {
        let token = sign(alg, &private(key, alg), None, &claims(json!({})));
        assert_eq!(verifier.verify(&token).unwrap().subject, "ann", "{alg:?}");
    }
    let foreign = sign(
        Algorithm::RS256,
        &private("rsa2.key", Algorithm::RS256),
        None,
        &claims(json!({})),
    );
    assert!(refusal(&verifier, &foreign).contains("signature is invalid"));
}

#[test]
fn forged_tokens_are_refused() {
    let verifier = verifier(JwtSettings {
        public_key_files: vec![key_file("rsa.pub")],
        ..with_secret()
    });
    let good = hs256(&claims(json!({})));
    // A wrong signature: the last character of the signature changed.
    let mut tampered = good.clone();
    let last = tampered.pop().unwrap();
    tampered.push(if last == 'A' { 'B' } else { 'A' });
    assert!(verifier.verify(&tampered).is_err());
    // Claims swapped under a valid signature.
    let parts: Vec<&str> = good.split('.').collect();
    let admin = URL_SAFE_NO_PAD.encode(claims(json!({"roles": ["admin"]})).to_string());
    assert!(
        verifier
            .verify(&format!("{}.{admin}.{}", parts[0], parts[2]))
            .is_err()
    );
    // `alg: none`, with and without a signature part.
    let none = URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#);
    let body = URL_SAFE_NO_PAD.encode(claims(json!({})).to_string());
    for token in [
        format!("{none}.{body}."),
        format!("{none}.{body}.{}", parts[2]),
    ] {
        assert!(refusal(&verifier, &token).contains("algorithm is not accepted"));
    }
    // HS256 "signed" with the RSA public key as the secret (algorithm confusion).
    let public_pem = std::fs::read(key_file("rsa.pub")).unwrap();
    let confused = sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(&public_pem),
        None,
        &claims(json!({})),
    );
    assert!(refusal(&verifier, &confused).contains("signature is invalid"));
    // An algorithm no configured key speaks.
    let es = sign(
        Algorithm::ES256,
        &private("ec.key", Algorithm::ES256),
        None,
        &claims(json!({})),
    );
    assert!(refusal(&verifier, &es).contains("no configured key verifies ES256"));
    for garbage in ["", "abc", "a.b.c", "Bearer x"] {
        assert!(verifier.verify(garbage).is_err(), "{garbage}");
    }
}

#[test]
fn time_and_addressing_claims_are_checked_with_a_small_leeway() {
    let verifier = verifier(JwtSettings {
        issuer: Some("https://issuer.test".into()),
        audience: Some("flexcore".into()),
        leeway: Duration::from_secs(30),
        ..with_secret()
    });
    let addressed = |extra: Value| {
        let mut base = json!({"iss": "https://issuer.test", "aud": "flexcore"});
        base.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        hs256(&claims(base))
    };
    assert!(verifier.verify(&addressed(json!({}))).is_ok());
    assert!(
        verifier
            .verify(&addressed(json!({"exp": now() - 10})))
            .is_ok(),
        "within leeway"
    );
    assert!(refusal(&verifier, &addressed(json!({"exp": now() - 120}))).contains("expired"));
    assert!(refusal(&verifier, &addressed(json!({"nbf": now() + 120}))).contains("not valid yet"));
    assert!(refusal(&verifier, &addressed(json!({"aud": "someone-else"}))).contains("audience"));
    assert!(refusal(&verifier, &addressed(json!({"iss": "https://evil.test"}))).contains("issuer"));
    let no_exp = hs256(&json!({"sub": "ann", "iss": "https://issuer.test", "aud": "flexcore"}));
    assert!(refusal(&verifier, &no_exp).contains("'exp'"));
    assert!(refusal(&verifier, &addressed(json!({"roles": "admin"}))).contains("array of strings"));
    assert!(refusal(&verifier, &addressed(json!({"sub": ""}))).contains("'sub'"));
}

#[test]
fn a_token_answered_from_memory_still_expires() {
    let verifier = verifier(JwtSettings {
        leeway: Duration::ZERO,
        ..with_secret()
    });
    let short = hs256(&claims(json!({"exp": now() + 1})));
    assert!(verifier.verify(&short).is_ok());
    assert!(verifier.verify(&short).is_ok(), "remembered");
    std::thread::sleep(Duration::from_millis(2100));
    assert!(refusal(&verifier, &short).contains("expired"));
}

#[test]
fn a_jwks_file_is_reread_when_keys_rotate() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jwks.json");
    let jwks = |kid: &str, key: &str| {
        let mut jwk =
            Jwk::from_encoding_key(&private(key, Algorithm::RS256), Algorithm::RS256).unwrap();
        jwk.common.key_id = Some(kid.into());
        serde_json::to_string(&JwkSet { keys: vec![jwk] }).unwrap()
    };
    std::fs::write(&path, jwks("k1", "rsa.key")).unwrap();
    let verifier = TokenVerifier::new(JwtSettings {
        jwks_file: Some(path.clone()),
        ..JwtSettings::default()
    })
    .unwrap()
    .with_jwks_check_interval(Duration::ZERO);
    let token = |kid: &str, key: &str| {
        sign(
            Algorithm::RS256,
            &private(key, Algorithm::RS256),
            Some(kid),
            &claims(json!({})),
        )
    };
    // The same token each time: after the first check it is answered from memory, which must
    // not outlive the key that verified it.
    let signed_by_k1 = token("k1", "rsa.key");
    assert!(verifier.verify(&signed_by_k1).is_ok());
    assert!(verifier.verify(&signed_by_k1).is_ok());
    assert!(verifier.verify(&token("k2", "rsa2.key")).is_err());

    // Rotation: the file now publishes k2 only. A later modification time marks the change.
    std::fs::write(&path, jwks("k2", "rsa2.key")).unwrap();
    let later = std::time::SystemTime::now() + Duration::from_secs(5);
    std::fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_modified(later)
        .unwrap();
    assert!(verifier.verify(&token("k2", "rsa2.key")).is_ok());
    assert!(
        verifier.verify(&signed_by_k1).is_err(),
        "a rotated-out key's token is refused, even after it was accepted"
    );

    // A broken file keeps the keys already loaded.
    std::fs::write(&path, "{not json").unwrap();
    let later = later + Duration::from_secs(5);
    std::fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_modified(later)
        .unwrap();
    assert!(verifier.verify(&token("k2", "rsa2.key")).is_ok());
}

#[test]
fn unusable_key_settings_fail_with_the_file_named() {
    let short = TokenVerifier::new(JwtSettings {
        hs256_secret: Some(b"short".to_vec()),
        ..JwtSettings::default()
    })
    .unwrap_err();
    assert!(short.to_string().contains("at least 32"));
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.pem");
    std::fs::write(&bad, "not a key").unwrap();
    let error = TokenVerifier::new(JwtSettings {
        public_key_files: vec![bad.clone()],
        ..JwtSettings::default()
    })
    .unwrap_err();
    assert!(error.to_string().contains("bad.pem"), "{error}");
    let missing = TokenVerifier::new(JwtSettings {
        jwks_file: Some(dir.path().join("missing.json")),
        ..JwtSettings::default()
    })
    .unwrap_err();
    assert!(missing.to_string().contains("missing.json"), "{missing}");
}
