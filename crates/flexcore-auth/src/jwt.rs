//! JWT bearer tokens: signature, algorithm and claims checks, keys from the config.
//!
//! Each key accepts only the algorithms of its own family (an HS256 secret only HS256, an RSA
//! key only RS*/PS*, an EC key ES256/ES384, an Ed25519 key EdDSA), so a token signed "HS256"
//! with an RSA public key as the secret (algorithm confusion) finds no key, and `alg: none` is
//! not an algorithm at all.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use flexcore_app::security::{AuthFailure, AuthMethod, Principal};
use jsonwebtoken::errors::ErrorKind as JwtErrorKind;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};

use crate::AuthError;
use crate::verified::{self, VerifiedTokens};

/// How often the JWKS file is checked for changes, at most.
const JWKS_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// The default leeway on `exp` and `nbf`.
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(30);

/// Where the verification keys come from and what a token must claim.
#[derive(Clone)]
pub struct JwtSettings {
    /// The HS256 shared secret.
    pub hs256_secret: Option<Vec<u8>>,
    /// PEM files of RS256 / ES256 / EdDSA public keys.
    pub public_key_files: Vec<PathBuf>,
    /// A local JWKS file, re-read when it changes (key rotation).
    pub jwks_file: Option<PathBuf>,
    /// The required `iss`, when set.
    pub issuer: Option<String>,
    /// The required `aud`, when set.
    pub audience: Option<String>,
    /// The claim holding the role names (an array of strings).
    pub roles_claim: String,
    /// The claim holding the tenant (a string), if any.
    pub tenant_claim: String,
    /// How much clock skew `exp` and `nbf` tolerate.
    pub leeway: Duration,
}

impl std::fmt::Debug for JwtSettings {
    /// Never shows the secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtSettings")
            .field("hs256_secret", &self.hs256_secret.as_ref().map(|_| "***"))
            .field("public_key_files", &self.public_key_files)
            .field("jwks_file", &self.jwks_file)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("roles_claim", &self.roles_claim)
            .field("leeway", &self.leeway)
            .finish()
    }
}

impl Default for JwtSettings {
    fn default() -> Self {
        Self {
            hs256_secret: None,
            public_key_files: Vec::new(),
            jwks_file: None,
            issuer: None,
            audience: None,
            roles_claim: "roles".to_owned(),
            tenant_claim: "tenant".to_owned(),
            leeway: DEFAULT_LEEWAY,
        }
    }
}

impl JwtSettings {
    /// Whether any key is configured (JWT authentication is on).
    pub fn has_keys(&self) -> bool {
        self.hs256_secret.is_some() || !self.public_key_files.is_empty() || self.jwks_file.is_some()
    }
}

/// One verification key and the algorithms it may verify.
struct VerificationKey {
    kid: Option<String>,
    algorithms: Vec<Algorithm>,
    key: DecodingKey,
}

impl VerificationKey {
    fn fits(&self, alg: Algorithm, kid: Option<&str>) -> bool {
        self.algorithms.contains(&alg)
            && match (kid, self.kid.as_deref()) {
                (Some(wanted), Some(own)) => wanted == own,
                _ => true,
            }
    }
}

/// The JWKS file's keys and the file state they were read from.
struct JwksKeys {
    path: PathBuf,
    modified: Option<SystemTime>,
    keys: Vec<VerificationKey>,
}

/// Verifies JWT bearer tokens (see the module docs).
pub struct TokenVerifier {
    settings: JwtSettings,
    static_keys: Vec<VerificationKey>,
    jwks: Option<RwLock<JwksKeys>>,
    last_jwks_check: Mutex<Instant>,
    jwks_check_interval: Duration,
    verified: VerifiedTokens,
}

impl std::fmt::Debug for TokenVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenVerifier")
            .field("settings", &self.settings)
            .finish()
    }
}

fn read(path: &Path) -> Result<Vec<u8>, AuthError> {
    std::fs::read(path).map_err(|source| AuthError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Reads one PEM public key: RSA, EC or Ed25519, whichever it is.
fn pem_key(path: &Path) -> Result<VerificationKey, AuthError> {
    let pem = read(path)?;
    let (key, algorithms) = if let Ok(key) = DecodingKey::from_rsa_pem(&pem) {
        (
            key,
            vec![
                Algorithm::RS256,
                Algorithm::RS384,
                Algorithm::RS512,
                Algorithm::PS256,
            ],
        )
    } else if let Ok(key) = DecodingKey::from_ec_pem(&pem) {
        (key, vec![Algorithm::ES256, Algorithm::ES384])
    } else if let Ok(key) = DecodingKey::from_ed_pem(&pem) {
        (key, vec![Algorithm::EdDSA])
    } else {
        return Err(AuthError::Key {
            path: path.to_owned(),
            message: "not a PEM RSA, EC or Ed25519 public key".into(),
        });
    };
    Ok(VerificationKey {
        kid: None,
        algorithms,
        key,
    })
}

/// Reads a JWKS file's public keys (symmetric keys are refused: a JWKS publishes public keys).
fn jwks_keys(path: &Path) -> Result<JwksKeys, AuthError> {
    let modified = std::fs::metadata(path).and_then(|m| m.modified()).ok();
    let text = read(path)?;
    let invalid = |message: String| AuthError::Key {
        path: path.to_owned(),
        message,
    };
    let set: JwkSet =
        serde_json::from_slice(&text).map_err(|e| invalid(format!("not a JWKS document: {e}")))?;
    let mut keys = Vec::with_capacity(set.keys.len());
    for jwk in &set.keys {
        let kid = jwk.common.key_id.clone();
        let name = kid.as_deref().unwrap_or("(no kid)");
        let key = DecodingKey::from_jwk(jwk).map_err(|e| invalid(format!("key {name}: {e}")))?;
        let family = key.family();
        if family == jsonwebtoken::AlgorithmFamily::Hmac {
            return Err(invalid(format!(
                "key {name}: symmetric keys do not belong in a JWKS"
            )));
        }
        let algorithms = match jwk.common.key_algorithm {
            Some(alg) => {
                let alg =
                    Algorithm::try_from(alg).map_err(|e| invalid(format!("key {name}: {e}")))?;
                if !family.algorithms().contains(&alg) {
                    return Err(invalid(format!(
                        "key {name}: alg does not fit the key type"
                    )));
                }
                vec![alg]
            }
            None => family.algorithms().to_vec(),
        };
        keys.push(VerificationKey {
            kid,
            algorithms,
            key,
        });
    }
    Ok(JwksKeys {
        path: path.to_owned(),
        modified,
        keys,
    })
}

fn reason(error: &jsonwebtoken::errors::Error) -> String {
    match error.kind() {
        JwtErrorKind::ExpiredSignature => "the token has expired".into(),
        JwtErrorKind::ImmatureSignature => "the token is not valid yet (nbf)".into(),
        JwtErrorKind::InvalidIssuer => "the token's issuer (iss) is not accepted".into(),
        JwtErrorKind::InvalidAudience => "the token's audience (aud) is not accepted".into(),
        JwtErrorKind::InvalidSignature => "the token's signature is invalid".into(),
        JwtErrorKind::MissingRequiredClaim(claim) => format!("the token lacks the '{claim}' claim"),
        JwtErrorKind::InvalidClaimFormat(claim) => {
            format!("the token's '{claim}' claim is ill-typed")
        }
        _ => "the token is malformed".into(),
    }
}

impl TokenVerifier {
    /// Loads every configured key; an unreadable or invalid key fails with its file named.
    pub fn new(settings: JwtSettings) -> Result<Self, AuthError> {
        let mut static_keys = Vec::new();
        if let Some(secret) = &settings.hs256_secret {
            if secret.len() < 32 {
                return Err(AuthError::WeakSecret(secret.len()));
            }
            static_keys.push(VerificationKey {
                kid: None,
                algorithms: vec![Algorithm::HS256],
                key: DecodingKey::from_secret(secret),
            });
        }
        for path in &settings.public_key_files {
            static_keys.push(pem_key(path)?);
        }
        let jwks = settings
            .jwks_file
            .as_deref()
            .map(jwks_keys)
            .transpose()?
            .map(RwLock::new);
        Ok(Self {
            settings,
            static_keys,
            jwks,
            last_jwks_check: Mutex::new(Instant::now()),
            jwks_check_interval: JWKS_CHECK_INTERVAL,
            verified: VerifiedTokens::new(verified::CAPACITY),
        })
    }

    /// Checks the JWKS file for changes at most every `interval` (default one second).
    pub fn with_jwks_check_interval(mut self, interval: Duration) -> Self {
        self.jwks_check_interval = interval;
        self
    }

    /// Re-reads the JWKS file when it changed (checked at most once a second). A broken new
    /// file keeps the old keys and is logged.
    fn refresh_jwks(&self) {
        let Some(jwks) = &self.jwks else { return };
        {
            let mut last = self
                .last_jwks_check
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if last.elapsed() < self.jwks_check_interval {
                return;
            }
            *last = Instant::now();
        }
        let (path, known) = {
            let current = jwks.read().unwrap_or_else(|p| p.into_inner());
            (current.path.clone(), current.modified)
        };
        let modified = std::fs::metadata(&path).and_then(|m| m.modified()).ok();
        if modified == known {
            return;
        }
        match jwks_keys(&path) {
            Ok(fresh) => {
                tracing::info!(path = %path.display(), keys = fresh.keys.len(), "JWKS file reloaded");
                *jwks.write().unwrap_or_else(|p| p.into_inner()) = fresh;
                // A key may be gone: tokens it verified must be checked again.
                self.verified.clear();
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot reload the JWKS file; keeping the previous keys");
                jwks.write().unwrap_or_else(|p| p.into_inner()).modified = modified;
            }
        }
    }

    fn validation(&self, alg: Algorithm) -> Validation {
        let mut validation = Validation::new(alg);
        validation.leeway = self.settings.leeway.as_secs();
        validation.validate_nbf = true;
        validation.validate_exp = true;
        validation.set_required_spec_claims(&["exp", "sub"]);
        match &self.settings.audience {
            Some(audience) => validation.set_audience(&[audience]),
            None => validation.validate_aud = false,
        }
        if let Some(issuer) = &self.settings.issuer {
            validation.set_issuer(&[issuer]);
        }
        validation
    }

    /// The principal a token proves (see the module docs for what is checked). A token
    /// verified before and still valid is answered from memory.
    pub fn verify(&self, token: &str) -> Result<Principal, AuthFailure> {
        self.refresh_jwks();
        let now = jsonwebtoken::get_current_timestamp();
        if let Some(principal) = self.verified.get(token, now) {
            return Ok(principal);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| {
            AuthFailure("the token is malformed or its algorithm is not accepted".into())
        })?;
        let validation = self.validation(header.alg);
        let kid = header.kid.as_deref();
        let jwks = self
            .jwks
            .as_ref()
            .map(|j| j.read().unwrap_or_else(|p| p.into_inner()));
        let jwks_keys = jwks.iter().flat_map(|j| j.keys.iter());
        let mut tried = false;
        for key in self.static_keys.iter().chain(jwks_keys) {
            if !key.fits(header.alg, kid) {
                continue;
            }
            tried = true;
            match jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, &validation) {
                Ok(data) => {
                    let leeway = self.settings.leeway.as_secs();
                    let seconds = |name: &str, round: fn(f64) -> f64| {
                        let value = data.claims.get(name)?;
                        value
                            .as_u64()
                            .or_else(|| value.as_f64().map(|f| round(f) as u64))
                    };
                    // Rounded towards the shorter validity: `exp` down, `nbf` up.
                    let exp = seconds("exp", f64::floor);
                    let nbf = seconds("nbf", f64::ceil).unwrap_or(0);
                    let principal = self.principal(data.claims)?;
                    if let Some(exp) = exp {
                        self.verified.insert(
                            token,
                            principal.clone(),
                            nbf.saturating_sub(leeway),
                            exp.saturating_add(leeway),
                            now,
                        );
                    }
                    return Ok(principal);
                }
                // Another key may have signed it (rotation): try the rest.
                Err(e) if *e.kind() == JwtErrorKind::InvalidSignature => continue,
                Err(e) => return Err(AuthFailure(reason(&e))),
            }
        }
        Err(AuthFailure(if tried {
            "the token's signature is invalid".into()
        } else {
            format!("no configured key verifies {:?} tokens", header.alg)
        }))
    }

    fn principal(&self, claims: Map<String, Value>) -> Result<Principal, AuthFailure> {
        let subject = match claims.get("sub") {
            Some(Value::String(sub)) if !sub.is_empty() => sub.clone(),
            _ => {
                return Err(AuthFailure(
                    "the token's 'sub' claim must be a non-empty string".into(),
                ));
            }
        };
        let claim = &self.settings.roles_claim;
        let roles = match claims.get(claim) {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) => items
                .iter()
                .map(|item| item.as_str().map(str::to_owned))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| {
                    AuthFailure(format!(
                        "the token's '{claim}' claim must be an array of strings"
                    ))
                })?,
            Some(_) => {
                return Err(AuthFailure(format!(
                    "the token's '{claim}' claim must be an array of strings"
                )));
            }
        };
        let tenant = match claims.get(&self.settings.tenant_claim) {
            None | Some(Value::Null) => None,
            Some(Value::String(tenant)) => Some(tenant.clone()),
            Some(_) => {
                return Err(AuthFailure(format!(
                    "the token's '{}' claim must be a string",
                    self.settings.tenant_claim
                )));
            }
        };
        Ok(Principal {
            tenant,
            ..Principal::new(subject, roles, AuthMethod::Token)
        })
    }
}

/// Makes an HS256 token for `subject` with `roles`, valid for `ttl` (development and tests:
/// `flexcore token mint`).
pub fn mint_hs256(
    secret: &[u8],
    subject: &str,
    roles: &[String],
    ttl: Duration,
    extra: Map<String, Value>,
) -> Result<String, AuthError> {
    let now = jsonwebtoken::get_current_timestamp();
    let mut claims = extra;
    claims.insert("sub".into(), Value::from(subject));
    claims.insert("roles".into(), Value::from(roles.to_vec()));
    claims.insert("iat".into(), Value::from(now));
    claims.insert("exp".into(), Value::from(now + ttl.as_secs()));
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret),
    )
    .map_err(|e| AuthError::Mint(e.to_string()))
}
