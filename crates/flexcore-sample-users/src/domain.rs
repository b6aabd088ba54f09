//! The sample domain's rules from the seed: users with a unique, validated email address.
//! Pure: no I/O, no runtime.
//!
//! Email uniqueness is itself an aggregate, [`EmailReservation`], whose stream
//! (`email-{address}`) is claimed in the same atomic append as the user's event: two concurrent
//! requests for one address can never both succeed, and no read model is consulted.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

use flexcore_domain::{Aggregate, DomainError, DomainEvent};

/// The longest email address accepted (RFC 5321's path limit).
const MAX_EMAIL_LEN: usize = 254;

/// A syntactically valid email address, normalised to lower case.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Email(String);

impl Email {
    /// Validates and normalises an address.
    pub fn parse(raw: &str) -> Result<Self, DomainError> {
        let address = raw.trim().to_lowercase();
        let invalid = |why: &str| DomainError::validation(format!("invalid email '{raw}': {why}"));
        if address.is_empty() {
            return Err(DomainError::validation("email is required"));
        }
        if address.len() > MAX_EMAIL_LEN {
            return Err(invalid("longer than 254 characters"));
        }
        if address.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(invalid("contains whitespace"));
        }
        let Some((local, domain)) = address.split_once('@') else {
            return Err(invalid("missing '@'"));
        };
        if local.is_empty() || local.len() > 64 {
            return Err(invalid("the part before '@' must be 1 to 64 characters"));
        }
        if domain.contains('@') {
            return Err(invalid("more than one '@'"));
        }
        let labels: Vec<&str> = domain.split('.').collect();
        if labels.len() < 2
            || labels.iter().any(|l| {
                l.is_empty()
                    || l.starts_with('-')
                    || l.ends_with('-')
                    || !l.chars().all(|c| c.is_alphanumeric() || c == '-')
            })
        {
            return Err(invalid("the domain must be like 'example.com'"));
        }
        Ok(Self(address))
    }

    /// The normalised address.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for Email {
    type Error = DomainError;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<Email> for String {
    fn from(email: Email) -> Self {
        email.0
    }
}

/// A user's state, rebuilt from its stream `user-{id}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct User {
    /// The user's id; `None` until `user.created`.
    pub id: Option<Uuid>,
    /// The current email address.
    pub email: Option<Email>,
    /// Free-form profile data.
    pub profile: Map<String, Value>,
}

/// Commands a [`User`] handles.
#[derive(Debug, Clone, PartialEq)]
pub enum UserCommand {
    /// Registers a new user.
    Create {
        /// The id chosen for the user (its stream is `user-{id}`).
        user_id: Uuid,
        /// The address to register.
        email: Email,
        /// Free-form profile data.
        profile: Map<String, Value>,
    },
    /// Changes the user's email address; no event when it does not change.
    ChangeEmail {
        /// The new address.
        email: Email,
    },
}

/// Events of the [`User`] aggregate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum UserEvent {
    /// A user was registered.
    #[serde(rename = "user.created")]
    Created {
        /// The new user's id.
        user_id: Uuid,
        /// The registered address.
        email: Email,
        /// Free-form profile data.
        #[serde(default)]
        profile: Map<String, Value>,
    },
    /// A user's address changed.
    #[serde(rename = "user.email_changed")]
    EmailChanged {
        /// The user.
        user_id: Uuid,
        /// The previous address.
        old_email: Email,
        /// The new address.
        new_email: Email,
    },
}

impl DomainEvent for UserEvent {
    fn event_type(&self) -> &'static str {
        match self {
            Self::Created { .. } => "user.created",
            Self::EmailChanged { .. } => "user.email_changed",
        }
    }
}

impl Aggregate for User {
    const TYPE: &'static str = "user";
    type Command = UserCommand;
    type Event = UserEvent;

    fn apply(&mut self, event: &UserEvent) {
        match event {
            UserEvent::Created {
                user_id,
                email,
                profile,
            } => {
                self.id = Some(*user_id);
                self.email = Some(email.clone());
                self.profile = profile.clone();
            }
            UserEvent::EmailChanged { new_email, .. } => self.email = Some(new_email.clone()),
        }
    }

    fn handle(&self, command: &UserCommand) -> Result<Vec<UserEvent>, DomainError> {
        match (command, self.id) {
            (UserCommand::Create { user_id, .. }, Some(_)) => Err(DomainError::AlreadyExists(
                format!("user {user_id} already exists"),
            )),
            (
                UserCommand::Create {
                    user_id,
                    email,
                    profile,
                },
                None,
            ) => Ok(vec![UserEvent::Created {
                user_id: *user_id,
                email: email.clone(),
                profile: profile.clone(),
            }]),
            (UserCommand::ChangeEmail { .. }, None) => {
                Err(DomainError::NotFound("user does not exist".to_owned()))
            }
            (UserCommand::ChangeEmail { email }, Some(user_id)) => {
                match &self.email {
                    Some(current) if current == email => Ok(vec![]),
                    current => Ok(vec![UserEvent::EmailChanged {
                        user_id,
                        // A created user always has an address; `apply` guarantees it.
                        old_email: current.clone().unwrap_or_else(|| email.clone()),
                        new_email: email.clone(),
                    }]),
                }
            }
        }
    }
}

/// Who holds an email address, rebuilt from its stream `email-{address}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EmailReservation {
    /// The user holding the address, if any.
    pub holder: Option<Uuid>,
}

/// Commands an [`EmailReservation`] handles.
#[derive(Debug, Clone, PartialEq)]
pub enum ReservationCommand {
    /// Claims the address for a user; a conflict when someone else holds it.
    Reserve {
        /// The address (the reservation's identity).
        email: Email,
        /// The claimant.
        user_id: Uuid,
    },
    /// Gives the address up; nothing happens unless this user holds it.
    Release {
        /// The address.
        email: Email,
        /// The user giving it up.
        user_id: Uuid,
    },
}

/// Events of the [`EmailReservation`] aggregate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum ReservationEvent {
    /// A user claimed the address.
    #[serde(rename = "email.reserved")]
    Reserved {
        /// The address.
        email: Email,
        /// The user now holding it.
        user_id: Uuid,
    },
    /// The holder gave the address up.
    #[serde(rename = "email.released")]
    Released {
        /// The address.
        email: Email,
        /// The user who held it.
        user_id: Uuid,
    },
}

impl DomainEvent for ReservationEvent {
    fn event_type(&self) -> &'static str {
        match self {
            Self::Reserved { .. } => "email.reserved",
            Self::Released { .. } => "email.released",
        }
    }
}

impl Aggregate for EmailReservation {
    const TYPE: &'static str = "email";
    type Command = ReservationCommand;
    type Event = ReservationEvent;

    fn apply(&mut self, event: &ReservationEvent) {
        self.holder = match event {
            ReservationEvent::Reserved { user_id, .. } => Some(*user_id),
            ReservationEvent::Released { .. } => None,
        };
    }

    fn handle(&self, command: &ReservationCommand) -> Result<Vec<ReservationEvent>, DomainError> {
        match command {
            ReservationCommand::Reserve { email, user_id } => match self.holder {
                Some(holder) if holder == *user_id => Ok(vec![]),
                Some(_) => Err(DomainError::AlreadyExists(format!(
                    "email {email} is already in use"
                ))),
                None => Ok(vec![ReservationEvent::Reserved {
                    email: email.clone(),
                    user_id: *user_id,
                }]),
            },
            ReservationCommand::Release { email, user_id } => match self.holder {
                Some(holder) if holder == *user_id => Ok(vec![ReservationEvent::Released {
                    email: email.clone(),
                    user_id: *user_id,
                }]),
                _ => Ok(vec![]),
            },
        }
    }
}
