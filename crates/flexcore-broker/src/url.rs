//! Broker URLs: the driver's own URL plus our query parameters ([`ServiceUrl`]), and the
//! inbound gateway's common parameters.

use flexcore_app::service_url::{InvalidUrl, ServiceUrl};

use crate::error::{BrokerError, Result};
use crate::inbound::InboundOptions;

/// A broker URL whose query parameters are taken one by one; what is left goes to the driver
/// (RabbitMQ and Redis accept their own parameters) or is refused (NATS).
pub(crate) type BrokerUrl = ServiceUrl;

impl From<InvalidUrl> for BrokerError {
    fn from(error: InvalidUrl) -> Self {
        BrokerError::InvalidUrl(error.0)
    }
}

/// The inbound gateway's parameters on a broker URL.
pub(crate) trait InboundParams {
    /// Takes the inbound gateway's common parameters.
    fn take_inbound_options(&mut self) -> Result<InboundOptions>;
}

impl InboundParams for ServiceUrl {
    fn take_inbound_options(&mut self) -> Result<InboundOptions> {
        let mut options = InboundOptions::default();
        if let Some(n) = self.take_number("max_attempts")? {
            options.max_attempts = n;
        }
        if let Some(d) = self.take_millis("retry_delay_ms")? {
            options.retry_delay = d;
        }
        if let Some(d) = self.take_millis("claim_idle_ms")? {
            options.claim_idle = d;
        }
        if let Some(n) = self.take_number::<usize>("concurrency")? {
            options.concurrency = n.max(1);
        }
        if let Some(d) = self.take_millis("shutdown_grace_ms")? {
            options.shutdown_grace = d;
        }
        Ok(options)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inbound_options_come_from_the_url_and_bad_numbers_are_invalid_urls() {
        let mut url = BrokerUrl::parse(
            "amqp://h/%2f?queue=q&max_attempts=3&retry_delay_ms=250&concurrency=0&heartbeat=10",
        )
        .unwrap();
        let options = url.take_inbound_options().unwrap();
        assert_eq!(options.max_attempts, 3);
        assert_eq!(options.retry_delay, std::time::Duration::from_millis(250));
        assert_eq!(options.concurrency, 1, "at least one");
        assert_eq!(url.driver_url(), "amqp://h/%2f?queue=q&heartbeat=10");
        let mut bad = BrokerUrl::parse("redis://h/?max_attempts=x").unwrap();
        assert!(matches!(
            bad.take_inbound_options(),
            Err(BrokerError::InvalidUrl(_))
        ));
    }
}
