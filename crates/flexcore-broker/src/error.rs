//! The broker crate's one error type, converted to [`flexcore_app::Error`] at its edge.

/// Everything that can go wrong talking to a broker.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BrokerError {
    /// A broker URL (or one of its parameters) is not valid.
    #[error("invalid broker url: {0}")]
    InvalidUrl(String),
    /// RabbitMQ (AMQP 0-9-1) failed.
    #[error("rabbitmq: {0}")]
    Amqp(#[from] lapin::Error),
    /// Redis failed.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// NATS or JetStream failed.
    #[error("nats: {0}")]
    Nats(String),
    /// The broker refused a message (a negative publisher confirm, an unroutable message).
    #[error("{broker} refused message {message_id}: {reason}")]
    Refused {
        /// Which broker.
        broker: &'static str,
        /// The refused message's id (the event id, for the outbox).
        message_id: String,
        /// What the broker said.
        reason: String,
    },
    /// The broker did not answer in time.
    #[error("{0} timed out")]
    Timeout(String),
    /// A TLS file named on the URL cannot be used.
    #[error(transparent)]
    Tls(#[from] flexcore_tls::TlsError),
    /// A message could not be encoded or decoded.
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
}

/// The broker crate's result type.
pub type Result<T, E = BrokerError> = std::result::Result<T, E>;

impl BrokerError {
    /// Whether retrying later may succeed (the broker was unreachable, slow or refused for now),
    /// as opposed to a configuration or encoding mistake.
    pub fn is_transient(&self) -> bool {
        !matches!(self, Self::InvalidUrl(_) | Self::Tls(_) | Self::Json(_))
    }

    pub(crate) fn nats(error: impl std::fmt::Display) -> Self {
        Self::Nats(error.to_string())
    }
}

impl From<BrokerError> for flexcore_app::Error {
    fn from(error: BrokerError) -> Self {
        match error {
            BrokerError::InvalidUrl(_) | BrokerError::Tls(_) => {
                flexcore_app::Error::validation(error.to_string())
            }
            BrokerError::Json(_) => flexcore_app::Error::internal(error.to_string()),
            _ => flexcore_app::Error::unavailable(error.to_string()),
        }
    }
}
