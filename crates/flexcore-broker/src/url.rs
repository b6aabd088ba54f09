//! Broker URLs: the driver's own URL plus our query parameters.

use std::collections::BTreeMap;
use std::time::Duration;

use url::Url;

use crate::error::{BrokerError, Result};
use crate::inbound::InboundOptions;

/// A parsed broker URL whose query parameters are taken one by one; what is left goes to the
/// driver (RabbitMQ and Redis accept their own parameters) or is refused (NATS).
#[derive(Debug, Clone)]
pub(crate) struct BrokerUrl {
    url: Url,
    params: BTreeMap<String, String>,
}

impl BrokerUrl {
    pub(crate) fn parse(text: &str) -> Result<Self> {
        let url =
            Url::parse(text).map_err(|e| BrokerError::InvalidUrl(format!("'{text}': {e}")))?;
        let params = url.query_pairs().into_owned().collect();
        Ok(Self { url, params })
    }

    pub(crate) fn scheme(&self) -> &str {
        self.url.scheme()
    }

    pub(crate) fn take(&mut self, key: &str) -> Option<String> {
        self.params.remove(key).filter(|v| !v.is_empty())
    }

    pub(crate) fn take_or(&mut self, key: &str, default: &str) -> String {
        self.take(key).unwrap_or_else(|| default.to_owned())
    }

    pub(crate) fn take_number<T: std::str::FromStr>(&mut self, key: &str) -> Result<Option<T>> {
        self.take(key)
            .map(|v| {
                v.parse().map_err(|_| {
                    BrokerError::InvalidUrl(format!("parameter {key}='{v}' is not a number"))
                })
            })
            .transpose()
    }

    pub(crate) fn take_millis(&mut self, key: &str) -> Result<Option<Duration>> {
        Ok(self.take_number::<u64>(key)?.map(Duration::from_millis))
    }

    /// Takes the inbound gateway's common parameters.
    pub(crate) fn take_inbound_options(&mut self) -> Result<InboundOptions> {
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

    /// Refuses parameters nobody took.
    pub(crate) fn reject_unknown(&self) -> Result<()> {
        match self.params.keys().next() {
            None => Ok(()),
            Some(key) => Err(BrokerError::InvalidUrl(format!(
                "unknown parameter '{key}' in {}://{}",
                self.url.scheme(),
                self.url.host_str().unwrap_or_default()
            ))),
        }
    }

    /// The URL for the driver: ours without the parameters already taken.
    pub(crate) fn driver_url(&self) -> String {
        let mut url = self.url.clone();
        if self.params.is_empty() {
            url.set_query(None);
        } else {
            url.query_pairs_mut().clear().extend_pairs(&self.params);
        }
        url.to_string()
    }

    /// `host:port` (with the scheme's default port), for drivers that take addresses.
    pub(crate) fn host_port(&self, default_port: u16) -> String {
        format!(
            "{}:{}",
            self.url.host_str().unwrap_or("127.0.0.1"),
            self.url.port().unwrap_or(default_port)
        )
    }

    pub(crate) fn username(&self) -> Option<String> {
        Some(self.url.username())
            .filter(|u| !u.is_empty())
            .map(str::to_owned)
    }

    pub(crate) fn password(&self) -> Option<String> {
        self.url.password().map(str::to_owned)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_parameters_are_taken_and_the_rest_passes_through() {
        let mut url =
            BrokerUrl::parse("amqp://guest:guest@127.0.0.1:5672/%2f?exchange=x&heartbeat=10")
                .unwrap();
        assert_eq!(url.take("exchange").as_deref(), Some("x"));
        assert_eq!(
            url.driver_url(),
            "amqp://guest:guest@127.0.0.1:5672/%2f?heartbeat=10"
        );
        assert!(url.reject_unknown().is_err());
        assert_eq!(url.take_number::<u32>("heartbeat").unwrap(), Some(10));
        assert_eq!(url.driver_url(), "amqp://guest:guest@127.0.0.1:5672/%2f");
        assert!(
            BrokerUrl::parse("redis://h/?n=x")
                .unwrap()
                .take_number::<u32>("n")
                .is_err()
        );
    }
}
