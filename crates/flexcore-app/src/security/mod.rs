//! Who is calling, and what they may do: the engine's security concepts, free of any token
//! format or transport.
//!
//! * [`Principal`]: an authenticated caller (subject, roles, tenant), made by a gateway from a
//!   credential and carried in the command and query contexts; every event written on its
//!   behalf names it in `metadata.actor`;
//! * [`Policy`]: roles → allowed commands, queries, stream patterns and operator actions,
//!   applied as middleware on the buses ([`AuthorizedCommands`], [`AuthorizedQueries`]) and the
//!   store ports ([`AuthorizedStore`]);
//! * [`Gatekeeper`]: authenticates a request's credential through an [`Authenticator`] (an
//!   adapter: JWT, API keys), admits it under the rate limits of an [`Admission`], and audits
//!   every refusal ([`audit`]).
//!
//! Gateways hand a principal to the rest of a request through their request extensions
//! (`Arc<Principal>`): a TLS client certificate, a bearer token or an API key all end there.

use std::fmt;

use flexcore_domain::Actor;

/// How a principal proved who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuthMethod {
    /// A signed JWT bearer token.
    Token,
    /// A named API key from the config.
    ApiKey,
    /// A TLS client certificate signed by the configured client CA.
    ClientCertificate,
    /// The engine itself (internal work such as durable consumers), never a client.
    System,
}

impl AuthMethod {
    /// A short lower-case name for logs and audit records.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Token => "token",
            Self::ApiKey => "api_key",
            Self::ClientCertificate => "client_certificate",
            Self::System => "system",
        }
    }
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Principal {
    /// Who: the token's `sub`, the API key's name, the certificate's common name.
    pub subject: String,
    /// The role names the authorization policy looks up.
    pub roles: Vec<String>,
    /// The tenant the caller acts in, if any.
    pub tenant: Option<String>,
    /// How the caller proved it.
    pub method: AuthMethod,
}

impl Principal {
    /// A principal with `subject` and `roles`, proved by `method`, in no tenant.
    pub fn new(subject: impl Into<String>, roles: Vec<String>, method: AuthMethod) -> Self {
        Self {
            subject: subject.into(),
            roles,
            tenant: None,
            method,
        }
    }

    /// The `actor` that events written on this principal's behalf carry.
    pub fn actor(&self) -> Actor {
        Actor {
            sub: self.subject.clone(),
            roles: self.roles.clone(),
        }
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.subject, self.method.as_str())
    }
}

pub mod audit;
mod authorize;
mod gate;
mod policy;

pub use authorize::{AuthorizedCommands, AuthorizedQueries, AuthorizedStore};
pub use gate::{
    Admission, AuthFailure, Authenticator, Credential, Gatekeeper, Presented, RouteClass,
    TICKET_TTL, Ticket, bearer_token,
};
pub use policy::{Action, Pattern, Patterns, Policy, RolePermissions};
