//! URLs of the services FlexCore connects to (PostgreSQL, Redis, RabbitMQ, NATS), which carry
//! FlexCore's own query parameters (`schema=`, `prefix=`, `exchange=`, …) beside the driver's.
//!
//! [`ServiceUrl`] takes our parameters out one by one; what is left goes to the driver exactly
//! as it was written (not re-encoded), or is refused where the driver takes none.

use std::time::Duration;

/// A service URL that is not valid, or a parameter of it that is not.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidUrl(pub String);

impl From<InvalidUrl> for crate::Error {
    fn from(error: InvalidUrl) -> Self {
        crate::Error::validation(format!("invalid url: {error}"))
    }
}

/// One `key=value` of the query string: as written, and decoded.
#[derive(Debug, Clone)]
struct Param {
    raw: String,
    key: String,
    value: String,
}

/// A parsed service URL whose query parameters are taken one by one.
#[derive(Debug, Clone)]
pub struct ServiceUrl {
    url: url::Url,
    /// Everything before `?`, as written.
    base: String,
    params: Vec<Param>,
}

impl ServiceUrl {
    /// Parses `text` (any scheme with an authority, e.g. `redis://host:6379/0?prefix=x`).
    pub fn parse(text: &str) -> Result<Self, InvalidUrl> {
        let url = url::Url::parse(text)
            .map_err(|e| InvalidUrl(format!("'{}': {e}", mask_password(text))))?;
        let (base, query) = text.split_once('?').unwrap_or((text, ""));
        let params = query
            .split('&')
            .filter(|pair| !pair.is_empty())
            .map(|pair| {
                let mut decoded = url::form_urlencoded::parse(pair.as_bytes());
                let (key, value) = decoded.next().unwrap_or_default();
                Param {
                    raw: pair.to_owned(),
                    key: key.into_owned(),
                    value: value.into_owned(),
                }
            })
            .collect();
        Ok(Self {
            url,
            base: base.to_owned(),
            params,
        })
    }

    /// The scheme, e.g. `postgres`.
    pub fn scheme(&self) -> &str {
        self.url.scheme()
    }

    /// Takes parameter `key` out (the last one when repeated); an empty value counts as absent.
    pub fn take(&mut self, key: &str) -> Option<String> {
        let mut value = None;
        self.params.retain(|param| {
            if param.key == key {
                value = Some(param.value.clone());
                false
            } else {
                true
            }
        });
        value.filter(|v| !v.is_empty())
    }

    /// [`ServiceUrl::take`], or `default`.
    pub fn take_or(&mut self, key: &str, default: &str) -> String {
        self.take(key).unwrap_or_else(|| default.to_owned())
    }

    /// Takes a numeric parameter; a value that is not a number is an error naming it.
    pub fn take_number<T: std::str::FromStr>(
        &mut self,
        key: &str,
    ) -> Result<Option<T>, InvalidUrl> {
        self.take(key)
            .map(|v| {
                v.parse()
                    .map_err(|_| InvalidUrl(format!("parameter {key}='{v}' is not a number")))
            })
            .transpose()
    }

    /// Takes a parameter in milliseconds.
    pub fn take_millis(&mut self, key: &str) -> Result<Option<Duration>, InvalidUrl> {
        Ok(self.take_number::<u64>(key)?.map(Duration::from_millis))
    }

    /// Refuses parameters nobody took (for drivers that take none).
    pub fn reject_unknown(&self) -> Result<(), InvalidUrl> {
        match self.params.first() {
            None => Ok(()),
            Some(param) => Err(InvalidUrl(format!(
                "unknown parameter '{}' in {}://{}",
                param.key,
                self.url.scheme(),
                self.url.host_str().unwrap_or_default()
            ))),
        }
    }

    /// The URL for the driver: as written, without the parameters already taken.
    pub fn driver_url(&self) -> String {
        if self.params.is_empty() {
            return self.base.clone();
        }
        let rest: Vec<&str> = self.params.iter().map(|p| p.raw.as_str()).collect();
        format!("{}?{}", self.base, rest.join("&"))
    }

    /// `host:port` (with `default_port` when none is given), for drivers that take addresses.
    pub fn host_port(&self, default_port: u16) -> String {
        format!(
            "{}:{}",
            self.url.host_str().unwrap_or("127.0.0.1"),
            self.url.port().unwrap_or(default_port)
        )
    }

    /// The user name, if any.
    pub fn username(&self) -> Option<String> {
        Some(self.url.username())
            .filter(|u| !u.is_empty())
            .map(str::to_owned)
    }

    /// The password, if any.
    pub fn password(&self) -> Option<String> {
        self.url.password().map(str::to_owned)
    }
}

/// `url` with its password replaced by `****`, for logs and error messages.
pub fn mask_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let Some((credentials, host)) = rest.split_once('@') else {
        return url.to_owned();
    };
    match credentials.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:****@{host}"),
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_parameters_are_taken_and_the_rest_passes_through_as_written() {
        let mut url = ServiceUrl::parse(
            "postgres://u@h/db?connect_timeout=3&schema=b&options=-c%20x%3Dy&sslmode=disable",
        )
        .unwrap();
        assert_eq!(url.take("schema").as_deref(), Some("b"));
        assert_eq!(
            url.driver_url(),
            "postgres://u@h/db?connect_timeout=3&options=-c%20x%3Dy&sslmode=disable"
        );
        assert!(url.reject_unknown().is_err());
        assert_eq!(url.take_number::<u32>("connect_timeout").unwrap(), Some(3));
        assert_eq!(url.take("options").as_deref(), Some("-c x=y"), "decoded");
        assert_eq!(url.take("sslmode").as_deref(), Some("disable"));
        assert_eq!(url.driver_url(), "postgres://u@h/db");
        assert!(url.reject_unknown().is_ok());

        let mut url = ServiceUrl::parse("redis://h/?prefix=").unwrap();
        assert_eq!(url.take("prefix"), None, "empty is absent");
        assert_eq!(url.driver_url(), "redis://h/");
        let error = ServiceUrl::parse("redis://h/?n=x")
            .unwrap()
            .take_number::<u32>("n")
            .unwrap_err();
        assert_eq!(error.to_string(), "parameter n='x' is not a number");
        assert!(ServiceUrl::parse("not a url").is_err());
    }

    #[test]
    fn addresses_and_credentials() {
        let url = ServiceUrl::parse("nats://me:secret@broker:4333").unwrap();
        assert_eq!(url.host_port(4222), "broker:4333");
        assert_eq!(url.username().as_deref(), Some("me"));
        assert_eq!(url.password().as_deref(), Some("secret"));
        let url = ServiceUrl::parse("nats://broker").unwrap();
        assert_eq!(url.host_port(4222), "broker:4222");
        assert_eq!(url.username(), None);
    }

    #[test]
    fn passwords_are_masked() {
        assert_eq!(
            mask_password("postgres://u:secret@h/db"),
            "postgres://u:****@h/db"
        );
        assert_eq!(mask_password("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(mask_password("sqlite://./x.db"), "sqlite://./x.db");
        assert!(
            !ServiceUrl::parse("amqp://u:secret@[::1")
                .unwrap_err()
                .to_string()
                .contains("secret")
        );
    }
}
