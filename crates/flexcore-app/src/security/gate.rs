//! The [`Gatekeeper`]: what every gateway asks before it lets a request in. It authenticates
//! the credential a request presents, admits it under the rate limits of its route class,
//! audits every refusal, and hands out the store as the principal may use it.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flexcore_domain::DomainError;

use super::authorize::AuthorizedStore;
use super::policy::{Action, Policy};
use super::{Principal, audit};
use crate::store::EventStore;
use crate::{Error, Result};

/// A credential as a request presents it.
#[derive(Clone, Copy)]
pub enum Credential<'a> {
    /// A bearer token (`Authorization: Bearer …`).
    Bearer(&'a str),
    /// An API key (`X-API-Key: …`).
    ApiKey(&'a str),
}

impl fmt::Debug for Credential<'_> {
    /// Never shows the secret.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Bearer(_) => f.write_str("Bearer(…)"),
            Self::ApiKey(_) => f.write_str("ApiKey(…)"),
        }
    }
}

/// Why a credential was refused, for the client's 401 and the audit record. Never contains
/// the credential itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct AuthFailure(pub String);

/// Turns credentials into principals (JWT verification, API keys): an adapter supplies it.
pub trait Authenticator: Send + Sync {
    /// The principal `credential` proves, or why it proves nothing.
    fn authenticate(
        &self,
        credential: Credential<'_>,
    ) -> std::result::Result<Principal, AuthFailure>;
}

/// The class of a route, each with its own token bucket per client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RouteClass {
    /// Commands and raw appends: writes.
    Commands,
    /// Queries.
    Queries,
    /// Stream and global-log reads, operator reads.
    Reads,
    /// Live subscriptions.
    Live,
}

impl RouteClass {
    /// Every class.
    pub const ALL: [Self; 4] = [Self::Commands, Self::Queries, Self::Reads, Self::Live];

    /// The lower-case name (`[rate_limit.NAME]`, the metric's `class` label).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Commands => "commands",
            Self::Queries => "queries",
            Self::Reads => "reads",
            Self::Live => "live",
        }
    }
}

/// Rate limits per client and route class: an adapter (token buckets) supplies it.
pub trait Admission: Send + Sync {
    /// `Ok` when `client` may make one more request of `class` now; otherwise how long until
    /// it may.
    fn admit(&self, class: RouteClass, client: &str) -> std::result::Result<(), Duration>;
}

/// What one request presents at the gate.
#[derive(Debug, Default, Clone, Copy)]
pub struct Presented<'a> {
    /// A principal the transport already proved (a verified TLS client certificate).
    pub principal: Option<&'a Arc<Principal>>,
    /// The credential in the request's headers or metadata, if any.
    pub credential: Option<Credential<'a>>,
    /// A live-subscription ticket (see [`Gatekeeper::issue_ticket`]).
    pub ticket: Option<&'a str>,
    /// Whether the request carried an `Authorization` header that is not a bearer token.
    pub malformed_authorization: bool,
    /// The client's address, for anonymous rate limits and audit records.
    pub client: Option<&'a str>,
    /// What the request asks for (e.g. `POST /v1/commands/create_user`), for audit records.
    pub action: &'a str,
}

impl<'a> Presented<'a> {
    /// What a request presents in its `authorization` value (a bearer token; any other shape,
    /// or a value that is not text, passed as `""`, counts as malformed) and its API-key value,
    /// for `action`.
    pub fn credentials(
        authorization: Option<&'a str>,
        api_key: Option<&'a str>,
        action: &'a str,
    ) -> Self {
        let bearer = authorization.and_then(bearer_token);
        Self {
            credential: bearer
                .map(Credential::Bearer)
                .or(api_key.map(Credential::ApiKey)),
            malformed_authorization: authorization.is_some() && bearer.is_none(),
            action,
            ..Self::default()
        }
    }
}

/// Parses an `Authorization` header value: the token of `Bearer <token>` (scheme in any case),
/// `None` for any other scheme or shape.
pub fn bearer_token(header: &str) -> Option<&str> {
    let (scheme, token) = header.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty() && !token.contains(' '))
        .then_some(token)
}

/// How long a live-subscription ticket may be redeemed.
pub const TICKET_TTL: Duration = Duration::from_secs(30);

/// A one-use, short-lived ticket that opens a live subscription (for clients such as browser
/// `EventSource` that cannot send headers; tokens never travel in URLs).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Ticket {
    /// The ticket, for the `ticket` query parameter.
    pub ticket: String,
    /// Seconds until it expires.
    pub expires_in: u64,
}

#[derive(Default)]
struct Tickets {
    open: Mutex<HashMap<String, (Arc<Principal>, Instant)>>,
}

impl Tickets {
    fn issue(&self, principal: Arc<Principal>) -> Ticket {
        let ticket = format!(
            "{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        );
        let now = Instant::now();
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.retain(|_, (_, expires)| *expires > now);
        open.insert(ticket.clone(), (principal, now + TICKET_TTL));
        Ticket {
            ticket,
            expires_in: TICKET_TTL.as_secs(),
        }
    }

    /// The ticket's principal; the ticket is used up.
    fn redeem(&self, ticket: &str) -> Option<Arc<Principal>> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let (principal, expires) = open.remove(ticket)?;
        (expires > Instant::now()).then_some(principal)
    }
}

struct Authentication {
    authenticator: Arc<dyn Authenticator>,
    policy: Arc<Policy>,
}

/// The gate every gateway asks first (see the module docs). Without authentication it lets
/// everyone in (anonymous, no principal) and still applies the rate limits, per client address.
#[derive(Default)]
pub struct Gatekeeper {
    authentication: Option<Authentication>,
    admission: Option<Arc<dyn Admission>>,
    tickets: Tickets,
}

impl fmt::Debug for Gatekeeper {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Gatekeeper")
            .field("authentication", &self.authentication.is_some())
            .field("rate_limits", &self.admission.is_some())
            .finish()
    }
}

fn unauthorized(reason: impl Into<String>) -> Error {
    Error::Domain(DomainError::Unauthorized(reason.into()))
}

impl Gatekeeper {
    /// No authentication, no rate limits: the embedded default.
    pub fn open() -> Self {
        Self::default()
    }

    /// Requires a credential that `authenticator` accepts, and applies `policy`.
    pub fn with_authentication(
        mut self,
        authenticator: Arc<dyn Authenticator>,
        policy: Arc<Policy>,
    ) -> Self {
        self.authentication = Some(Authentication {
            authenticator,
            policy,
        });
        self
    }

    /// Applies `admission`'s rate limits.
    pub fn with_rate_limits(mut self, admission: Arc<dyn Admission>) -> Self {
        self.admission = Some(admission);
        self
    }

    /// Whether requests need a credential.
    pub fn requires_authentication(&self) -> bool {
        self.authentication.is_some()
    }

    /// The authorization policy, when authentication is on.
    pub fn policy(&self) -> Option<&Arc<Policy>> {
        self.authentication.as_ref().map(|auth| &auth.policy)
    }

    /// The principal a request proves: `Ok(None)` when authentication is off (a presented
    /// transport principal is still passed on), `Err` (401, audited) when it is on and the
    /// request proves nobody.
    pub fn authenticate(&self, presented: &Presented<'_>) -> Result<Option<Arc<Principal>>> {
        let Some(auth) = &self.authentication else {
            return Ok(presented.principal.cloned());
        };
        let refuse = |reason: &str| {
            audit::denied(
                None,
                presented.client,
                presented.action,
                presented.action,
                reason,
            );
            unauthorized(reason)
        };
        if let Some(principal) = presented.principal {
            return Ok(Some(Arc::clone(principal)));
        }
        if presented.malformed_authorization {
            return Err(refuse("the Authorization header is not 'Bearer <token>'"));
        }
        if let Some(credential) = presented.credential {
            return match auth.authenticator.authenticate(credential) {
                Ok(principal) => Ok(Some(Arc::new(principal))),
                Err(AuthFailure(reason)) => Err(refuse(&reason)),
            };
        }
        if let Some(ticket) = presented.ticket {
            return match self.tickets.redeem(ticket) {
                Some(principal) => Ok(Some(principal)),
                None => Err(refuse("the ticket is unknown, used or expired")),
            };
        }
        Err(refuse("a credential is required"))
    }

    /// Admits one request of `class` under the rate limits of its principal (or, anonymous, of
    /// its client address); `Err` (429, audited, counted) when its bucket is empty.
    pub fn admit(
        &self,
        class: RouteClass,
        principal: Option<&Principal>,
        client: Option<&str>,
    ) -> Result<()> {
        let Some(admission) = &self.admission else {
            return Ok(());
        };
        let key = match (principal, client) {
            (Some(principal), _) => format!("p:{}", principal.subject),
            (None, Some(client)) => format!("ip:{client}"),
            (None, None) => "anonymous".to_owned(),
        };
        admission.admit(class, &key).map_err(|retry_after| {
            metrics::counter!("flexcore_rate_limited_total", "class" => class.as_str())
                .increment(1);
            audit::denied(
                principal,
                client,
                class.as_str(),
                class.as_str(),
                "rate limited",
            );
            Error::RateLimited { class, retry_after }
        })
    }

    /// The event store as `principal` may use it (unchanged when authentication is off).
    pub fn store_for(
        &self,
        store: &Arc<dyn EventStore>,
        principal: Option<&Arc<Principal>>,
    ) -> Result<Arc<dyn EventStore>> {
        let Some(auth) = &self.authentication else {
            return Ok(Arc::clone(store));
        };
        let principal = principal.ok_or_else(|| unauthorized("a credential is required"))?;
        Ok(Arc::new(AuthorizedStore::new(
            Arc::clone(store),
            Arc::clone(&auth.policy),
            Arc::clone(principal),
        )))
    }

    /// `Ok` when `principal` may run the operator action `name` (always, without
    /// authentication); refusals are audited.
    pub fn check_admin(&self, principal: Option<&Principal>, name: &str) -> Result<()> {
        let Some(auth) = &self.authentication else {
            return Ok(());
        };
        let principal = principal.ok_or_else(|| unauthorized("a credential is required"))?;
        auth.policy
            .check(principal, Action::Admin(name))
            .inspect_err(|_| {
                audit::denied(Some(principal), None, "admin", name, "forbidden by policy");
            })
    }

    /// A one-use ticket (valid [`TICKET_TTL`]) that opens a live subscription as `principal`.
    pub fn issue_ticket(&self, principal: Arc<Principal>) -> Ticket {
        self.tickets.issue(principal)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::security::AuthMethod;

    struct OneToken;

    impl Authenticator for OneToken {
        fn authenticate(
            &self,
            credential: Credential<'_>,
        ) -> std::result::Result<Principal, AuthFailure> {
            match credential {
                Credential::Bearer("good") => {
                    Ok(Principal::new("ann", vec!["r".into()], AuthMethod::Token))
                }
                _ => Err(AuthFailure("invalid signature".into())),
            }
        }
    }

    fn gate() -> Gatekeeper {
        Gatekeeper::open().with_authentication(Arc::new(OneToken), Arc::default())
    }

    #[test]
    fn bearer_tokens_are_parsed_strictly() {
        assert_eq!(bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(bearer_token("bearer  abc "), Some("abc"));
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(bearer_token("Bearer"), None);
        assert_eq!(bearer_token("Bearer a b"), None);
    }

    #[test]
    fn the_gate_needs_a_good_credential_when_authentication_is_on() {
        let gate = gate();
        let with = |credential| Presented {
            credential,
            action: "test",
            ..Presented::default()
        };
        let ann = gate
            .authenticate(&with(Some(Credential::Bearer("good"))))
            .unwrap()
            .unwrap();
        assert_eq!(ann.subject, "ann");
        for presented in [with(None), with(Some(Credential::Bearer("forged")))] {
            let error = gate.authenticate(&presented).unwrap_err();
            assert_eq!(error.kind(), crate::ErrorKind::Unauthorized);
        }
        let open = Gatekeeper::open();
        assert_eq!(open.authenticate(&with(None)).unwrap(), None);
    }

    #[test]
    fn tickets_open_once_and_only_their_principal() {
        let gate = gate();
        let ann = Arc::new(Principal::new("ann", vec![], AuthMethod::Token));
        let ticket = gate.issue_ticket(Arc::clone(&ann));
        let presented = Presented {
            ticket: Some(&ticket.ticket),
            action: "live",
            ..Presented::default()
        };
        assert_eq!(gate.authenticate(&presented).unwrap(), Some(ann));
        assert!(
            gate.authenticate(&presented).is_err(),
            "a ticket is used up"
        );
    }
}
