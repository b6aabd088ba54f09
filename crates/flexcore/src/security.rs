//! The security settings of `flexcore serve` (`[auth]`, `[api_keys.NAME]`, `[roles.NAME]`,
//! `[rate_limit]` and the `FLEXCORE_JWT_*` variables of SPEC §9), the [`Gatekeeper`] and
//! [`Policy`] they make, the refusal to expose an unauthenticated server, and
//! `flexcore token …`.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use flexcore_app::security::{Gatekeeper, Patterns, Policy, RolePermissions, RouteClass};
use flexcore_auth::{ApiKeyEntry, ApiKeys, Bucket, Credentials, JwtSettings, TokenBuckets};
use serde::Deserialize;

use crate::config::ConfigError;

/// The security flags and variables of `flexcore serve` (the rest lives in the file).
#[derive(Debug, Clone, Default, Args)]
pub struct AuthArgs {
    /// Turns JWT authentication on with this HS256 secret (at least 32 bytes).
    #[arg(long, env = "FLEXCORE_JWT_HS256_SECRET", hide_env_values = true)]
    pub jwt_hs256_secret: Option<String>,
    /// Turns JWT authentication on with the HS256 secret in this file.
    #[arg(long, env = "FLEXCORE_JWT_HS256_SECRET_FILE")]
    pub jwt_hs256_secret_file: Option<PathBuf>,
    /// Comma-separated PEM files of RS256 / ES256 / EdDSA verification keys.
    #[arg(long, env = "FLEXCORE_JWT_PUBLIC_KEYS")]
    pub jwt_public_keys: Option<String>,
    /// A local JWKS file of verification keys, re-read when it changes.
    #[arg(long, env = "FLEXCORE_JWT_JWKS_FILE")]
    pub jwks_file: Option<PathBuf>,
    /// The `iss` every token must carry.
    #[arg(long, env = "FLEXCORE_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,
    /// The `aud` every token must carry.
    #[arg(long, env = "FLEXCORE_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,
    /// Allows listening on a non-loopback address without authentication.
    #[arg(long)]
    pub insecure_allow_unauthenticated: bool,
    /// TLS for HTTP and gRPC: the certificate chain (PEM); reloaded when it changes.
    #[arg(long, env = "FLEXCORE_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// TLS: the private key (PEM).
    #[arg(long, env = "FLEXCORE_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// TLS: require client certificates signed by this CA (PEM); they authenticate.
    #[arg(long, env = "FLEXCORE_TLS_CLIENT_CA")]
    pub tls_client_ca: Option<PathBuf>,
}

/// `[tls]` in the file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TlsFile {
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    client_ca: Option<PathBuf>,
    #[serde(default)]
    client_roles: BTreeMap<String, Vec<String>>,
}

/// `[auth]` in the file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AuthFile {
    jwt_hs256_secret: Option<String>,
    jwt_hs256_secret_file: Option<PathBuf>,
    jwt_public_keys: Option<Vec<PathBuf>>,
    jwks_file: Option<PathBuf>,
    issuer: Option<String>,
    audience: Option<String>,
    roles_claim: Option<String>,
    tenant_claim: Option<String>,
    leeway_secs: Option<u64>,
}

/// `[api_keys.NAME]` in the file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ApiKeyFile {
    sha256: String,
    #[serde(default)]
    roles: Vec<String>,
    tenant: Option<String>,
    #[serde(default)]
    revoked: bool,
}

/// `[roles.NAME]` in the file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RoleFile {
    #[serde(default)]
    commands: Vec<String>,
    #[serde(default)]
    queries: Vec<String>,
    #[serde(default)]
    streams_read: Vec<String>,
    #[serde(default)]
    streams_append: Vec<String>,
    #[serde(default)]
    admin: bool,
}

/// One token bucket in the file.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct BucketFile {
    per_second: f64,
    burst: u32,
}

/// `[rate_limit]` in the file: the default bucket and per-class overrides.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RateLimitFile {
    per_second: Option<f64>,
    burst: Option<u32>,
    commands: Option<BucketFile>,
    queries: Option<BucketFile>,
    reads: Option<BucketFile>,
    live: Option<BucketFile>,
}

/// The security sections of the file.
#[derive(Debug, Default)]
pub(crate) struct SecurityFile {
    pub auth: Option<AuthFile>,
    pub api_keys: Option<BTreeMap<String, ApiKeyFile>>,
    pub roles: Option<BTreeMap<String, RoleFile>>,
    pub rate_limit: Option<RateLimitFile>,
    pub tls: Option<TlsFile>,
}

/// A secret: compared and cloned, never shown.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl Secret {
    /// The secret's bytes.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

/// The effective security settings.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SecuritySettings {
    /// The HS256 secret (from the variable, the file key or a secret file).
    pub hs256_secret: Option<Secret>,
    /// The file the secret was read from, if any.
    pub hs256_secret_file: Option<PathBuf>,
    /// PEM verification keys.
    pub public_keys: Vec<PathBuf>,
    /// A JWKS file of verification keys.
    pub jwks_file: Option<PathBuf>,
    /// The required `iss`.
    pub issuer: Option<String>,
    /// The required `aud`.
    pub audience: Option<String>,
    /// The claim with the role names.
    pub roles_claim: String,
    /// The claim with the tenant.
    pub tenant_claim: String,
    /// Clock-skew tolerance on `exp` / `nbf`, in seconds.
    pub leeway_secs: u64,
    /// Service API keys.
    pub api_keys: Vec<ApiKeyEntry>,
    /// Role name → permissions.
    pub roles: BTreeMap<String, RolePermissions>,
    /// Token buckets per route class (a class without one is not limited).
    pub rate_limits: BTreeMap<&'static str, (f64, u32)>,
    /// Whether a non-loopback bind without authentication is allowed.
    pub insecure_allow_unauthenticated: bool,
    /// TLS for HTTP and gRPC (`None`: plaintext).
    pub tls: Option<flexcore_auth::tls::TlsFiles>,
}

impl SecuritySettings {
    /// Whether requests need a credential.
    pub fn authentication_on(&self) -> bool {
        self.hs256_secret.is_some()
            || !self.public_keys.is_empty()
            || self.jwks_file.is_some()
            || !self.api_keys.is_empty()
            || self.tls.as_ref().is_some_and(|tls| tls.client_ca.is_some())
    }

    /// The `[auth]` table as `flexcore config show` prints it: the secret itself never (only
    /// the file it comes from), keys and claims as configured.
    pub fn effective(&self) -> serde_json::Value {
        serde_json::json!({
            "jwt_hs256_secret_file": self.hs256_secret_file,
            "jwt_public_keys": self.public_keys,
            "jwks_file": self.jwks_file,
            "issuer": self.issuer,
            "audience": self.audience,
            "roles_claim": self.roles_claim,
            "tenant_claim": self.tenant_claim,
            "leeway_secs": self.leeway_secs,
        })
    }

    /// The `[tls]` table as `flexcore config show` prints it (paths only).
    pub fn effective_tls(&self) -> serde_json::Value {
        match &self.tls {
            Some(tls) => serde_json::json!({
                "cert": tls.cert, "key": tls.key, "client_ca": tls.client_ca,
            }),
            None => serde_json::Value::Null,
        }
    }
}

fn invalid(key: &'static str, value: impl Into<String>, expected: &'static str) -> ConfigError {
    ConfigError::Invalid {
        key,
        value: value.into(),
        expected,
    }
}

fn relative(dir: Option<&Path>, path: PathBuf) -> PathBuf {
    match dir {
        Some(dir) if path.is_relative() => dir.join(path),
        _ => path,
    }
}

/// Resolves the security settings: flags/variables over the file; file paths are relative to
/// the config file.
pub(crate) fn resolve(
    args: AuthArgs,
    file: SecurityFile,
    file_dir: Option<&Path>,
) -> Result<SecuritySettings, ConfigError> {
    let auth = file.auth.unwrap_or_default();
    let secret_file = args
        .jwt_hs256_secret_file
        .or(auth.jwt_hs256_secret_file.map(|p| relative(file_dir, p)));
    let hs256_secret = match (
        args.jwt_hs256_secret.or(auth.jwt_hs256_secret),
        &secret_file,
    ) {
        (Some(_), Some(_)) => {
            return Err(invalid(
                "jwt_hs256_secret",
                "***",
                "either jwt_hs256_secret or jwt_hs256_secret_file, not both",
            ));
        }
        (Some(secret), None) => Some(secret.into_bytes()),
        (None, Some(path)) => {
            let bytes = std::fs::read(path).map_err(|source| ConfigError::Read {
                path: path.clone(),
                source,
            })?;
            // A trailing newline is the editor's, not the secret's.
            let trimmed = bytes.trim_ascii_end().to_vec();
            Some(trimmed)
        }
        (None, None) => None,
    };
    if let Some(secret) = &hs256_secret
        && secret.len() < 32
    {
        return Err(invalid(
            "jwt_hs256_secret",
            format!("*** ({} bytes)", secret.len()),
            "a secret of at least 32 bytes",
        ));
    }
    let public_keys = match args.jwt_public_keys {
        Some(list) => list
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(PathBuf::from)
            .collect(),
        None => auth
            .jwt_public_keys
            .unwrap_or_default()
            .into_iter()
            .map(|p| relative(file_dir, p))
            .collect(),
    };
    let jwks_file = args
        .jwks_file
        .or(auth.jwks_file.map(|p| relative(file_dir, p)));
    let api_keys = file
        .api_keys
        .unwrap_or_default()
        .into_iter()
        .map(|(name, key)| ApiKeyEntry {
            name,
            sha256: key.sha256,
            roles: key.roles,
            tenant: key.tenant,
            revoked: key.revoked,
        })
        .collect();
    let mut roles = BTreeMap::new();
    for (name, role) in file.roles.unwrap_or_default() {
        let parse = |list: &[String]| {
            Patterns::parse(list).map_err(|why| ConfigError::Parse {
                path: PathBuf::from(format!("[roles.{name}]")),
                message: why,
            })
        };
        roles.insert(
            name.clone(),
            RolePermissions {
                commands: parse(&role.commands)?,
                queries: parse(&role.queries)?,
                streams_read: parse(&role.streams_read)?,
                streams_append: parse(&role.streams_append)?,
                admin: role.admin,
            },
        );
    }
    let rate = file.rate_limit.unwrap_or_default();
    let default = match (rate.per_second, rate.burst) {
        (Some(per_second), burst) => Some(BucketFile {
            per_second,
            burst: burst.unwrap_or_else(|| per_second.ceil().max(1.0) as u32),
        }),
        (None, Some(_)) => {
            return Err(invalid(
                "rate_limit.burst",
                "set",
                "rate_limit.per_second beside rate_limit.burst",
            ));
        }
        (None, None) => None,
    };
    let mut rate_limits = BTreeMap::new();
    for (class, bucket) in [
        (RouteClass::Commands, rate.commands),
        (RouteClass::Queries, rate.queries),
        (RouteClass::Reads, rate.reads),
        (RouteClass::Live, rate.live),
    ] {
        if let Some(bucket) = bucket.or(default) {
            if !(bucket.per_second.is_finite() && bucket.per_second > 0.0) || bucket.burst == 0 {
                return Err(invalid(
                    "rate_limit",
                    format!(
                        "{}: per_second {} burst {}",
                        class.as_str(),
                        bucket.per_second,
                        bucket.burst
                    ),
                    "per_second > 0 and burst ≥ 1",
                ));
            }
            rate_limits.insert(class.as_str(), (bucket.per_second, bucket.burst));
        }
    }
    let tls_file = file.tls.unwrap_or_default();
    let cert = args
        .tls_cert
        .or(tls_file.cert.map(|p| relative(file_dir, p)));
    let key = args.tls_key.or(tls_file.key.map(|p| relative(file_dir, p)));
    let client_ca = args
        .tls_client_ca
        .or(tls_file.client_ca.map(|p| relative(file_dir, p)));
    let tls = match (cert, key) {
        (Some(cert), Some(key)) => Some(flexcore_auth::tls::TlsFiles {
            cert,
            key,
            client_ca,
            client_roles: tls_file.client_roles,
        }),
        (None, None) if client_ca.is_none() => None,
        _ => {
            return Err(invalid(
                "tls",
                "incomplete",
                "both [tls] cert and key (FLEXCORE_TLS_CERT, FLEXCORE_TLS_KEY); client_ca needs them",
            ));
        }
    };
    Ok(SecuritySettings {
        tls,
        hs256_secret: hs256_secret.map(Secret),
        hs256_secret_file: secret_file,
        public_keys,
        jwks_file,
        issuer: args.jwt_issuer.or(auth.issuer).filter(|s| !s.is_empty()),
        audience: args
            .jwt_audience
            .or(auth.audience)
            .filter(|s| !s.is_empty()),
        roles_claim: auth.roles_claim.unwrap_or_else(|| "roles".into()),
        tenant_claim: auth.tenant_claim.unwrap_or_else(|| "tenant".into()),
        leeway_secs: auth
            .leeway_secs
            .unwrap_or(flexcore_auth::DEFAULT_LEEWAY.as_secs()),
        api_keys,
        roles,
        rate_limits,
        insecure_allow_unauthenticated: args.insecure_allow_unauthenticated,
    })
}

/// The gate every gateway asks, the policy the buses apply (`None`: authentication off), and
/// TLS.
pub struct Security {
    /// Authentication and rate limits for the gateways.
    pub gate: Arc<Gatekeeper>,
    /// The RBAC policy, when authentication is on.
    pub policy: Option<Arc<Policy>>,
    /// TLS for both gateways, when configured.
    pub tls: Option<Arc<flexcore_auth::tls::ServerTls>>,
}

impl Security {
    /// The gateways' TLS (HTTP and gRPC share the `[tls]` files), when configured.
    pub fn gateway_tls(&self) -> Option<flexcore_listener::GatewayTls> {
        let tls = self.tls.as_ref()?;
        let (config, principal) = (Arc::clone(tls), Arc::clone(tls));
        Some(flexcore_listener::GatewayTls {
            config: Arc::new(move || config.config()),
            client_principal: Arc::new(move |leaf| principal.client_principal(leaf)),
        })
    }
}

/// Builds the gatekeeper and policy; unreadable keys and bad API-key entries fail here.
pub fn build(settings: &SecuritySettings) -> anyhow::Result<Security> {
    let mut gate = Gatekeeper::open();
    let mut policy = None;
    if settings.authentication_on() {
        let jwt = JwtSettings {
            hs256_secret: settings.hs256_secret.as_ref().map(|s| s.expose().to_vec()),
            public_key_files: settings.public_keys.clone(),
            jwks_file: settings.jwks_file.clone(),
            issuer: settings.issuer.clone(),
            audience: settings.audience.clone(),
            roles_claim: settings.roles_claim.clone(),
            tenant_claim: settings.tenant_claim.clone(),
            leeway: Duration::from_secs(settings.leeway_secs),
        };
        let tokens = jwt
            .has_keys()
            .then(|| flexcore_auth::TokenVerifier::new(jwt))
            .transpose()
            .context("cannot load the JWT verification keys")?;
        let api_keys = ApiKeys::new(settings.api_keys.clone()).context("invalid [api_keys]")?;
        let roles: HashMap<_, _> = settings.roles.clone().into_iter().collect();
        let rules = Arc::new(Policy::new(roles));
        gate = gate.with_authentication(
            Arc::new(Credentials::new(tokens, api_keys)),
            Arc::clone(&rules),
        );
        policy = Some(rules);
    } else if !settings.roles.is_empty() {
        tracing::warn!("[roles] are configured but authentication is off: they have no effect");
    }
    if !settings.rate_limits.is_empty() {
        let limits = settings.rate_limits.clone();
        let buckets = TokenBuckets::new(|class| {
            limits
                .get(class.as_str())
                .map(|&(per_second, burst)| Bucket { per_second, burst })
        })
        .context("invalid [rate_limit]")?;
        gate = gate.with_rate_limits(Arc::new(buckets));
    }
    let tls = settings
        .tls
        .clone()
        .map(flexcore_auth::tls::ServerTls::load)
        .transpose()
        .context("cannot load the TLS files")?
        .map(Arc::new);
    Ok(Security {
        gate: Arc::new(gate),
        policy,
        tls,
    })
}

/// Refuses to serve an unauthenticated API beyond this machine (SPEC §9), unless the operator
/// said so explicitly; says loudly that authentication is off either way.
pub fn check_exposure(settings: &SecuritySettings, addrs: &[SocketAddr]) -> anyhow::Result<()> {
    if settings.authentication_on() {
        return Ok(());
    }
    let exposed: Vec<String> = addrs
        .iter()
        .filter(|addr| !addr.ip().is_loopback())
        .map(ToString::to_string)
        .collect();
    if !exposed.is_empty() && !settings.insecure_allow_unauthenticated {
        anyhow::bail!(
            "refusing to listen on {} without authentication: configure [auth] (e.g. \
             FLEXCORE_JWT_HS256_SECRET_FILE) or pass --insecure-allow-unauthenticated",
            exposed.join(", ")
        );
    }
    tracing::warn!(
        exposed = ?exposed,
        "authentication is OFF: every client may send any command (embedded default)"
    );
    Ok(())
}

/// `flexcore token …`.
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Makes a development token signed with the configured HS256 secret.
    Mint(Box<MintArgs>),
    /// Makes a new random API key and prints it with the config entry holding its hash.
    ApiKey {
        /// The key's name (the principal's subject).
        #[arg(long)]
        name: String,
        /// Comma-separated role names.
        #[arg(long, default_value = "")]
        roles: String,
    },
}

/// `flexcore token mint`.
#[derive(Debug, Args)]
pub struct MintArgs {
    /// The token's subject (`sub`).
    #[arg(long)]
    pub sub: String,
    /// Comma-separated role names.
    #[arg(long, default_value = "")]
    pub roles: String,
    /// The tenant claim, if any.
    #[arg(long)]
    pub tenant: Option<String>,
    /// How long the token is valid, in seconds.
    #[arg(long, default_value_t = 3600)]
    pub ttl_secs: u64,
    /// Where the secret comes from: the same settings as `serve`.
    #[command(flatten)]
    pub settings: crate::cli::ServeArgs,
}

fn role_list(roles: &str) -> Vec<String> {
    roles
        .split(',')
        .map(str::trim)
        .filter(|r| !r.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Runs `flexcore token …`, printing to stdout.
pub fn run_token(command: TokenCommand) -> anyhow::Result<()> {
    match command {
        TokenCommand::Mint(args) => {
            let settings = crate::config::Settings::resolve(args.settings)?;
            let secret = settings.security.hs256_secret.as_ref().context(
                "no HS256 secret is configured (FLEXCORE_JWT_HS256_SECRET[_FILE] or [auth] \
                 jwt_hs256_secret[_FILE])",
            )?;
            let mut extra = serde_json::Map::new();
            if let Some(tenant) = args.tenant {
                extra.insert(settings.security.tenant_claim.clone(), tenant.into());
            }
            if let Some(issuer) = &settings.security.issuer {
                extra.insert("iss".into(), issuer.clone().into());
            }
            if let Some(audience) = &settings.security.audience {
                extra.insert("aud".into(), audience.clone().into());
            }
            let mut claims_roles = role_list(&args.roles);
            if settings.security.roles_claim != "roles" {
                extra.insert(
                    settings.security.roles_claim.clone(),
                    std::mem::take(&mut claims_roles).into(),
                );
            }
            let token = flexcore_auth::mint_hs256(
                secret.expose(),
                &args.sub,
                &claims_roles,
                Duration::from_secs(args.ttl_secs),
                extra,
            )?;
            println!("{token}");
        }
        TokenCommand::ApiKey { name, roles } => {
            let (key, hash) = flexcore_auth::new_api_key();
            println!("{key}");
            eprintln!(
                "\n# Add to flexcore.toml (the key itself is shown once, above):\n\
                 [api_keys.{name}]\nsha256 = \"{hash}\"\nroles = {:?}",
                role_list(&roles)
            );
        }
    }
    Ok(())
}
