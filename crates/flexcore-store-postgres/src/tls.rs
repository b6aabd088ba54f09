//! TLS for the store's connections, from libpq's URL parameters: `sslmode`, `sslrootcert`,
//! `sslcert` and `sslkey`.
//!
//! | `sslmode` | connection |
//! |---|---|
//! | absent, `disable`, `allow`, `prefer` | plain TCP |
//! | `require`, `verify-full` | TLS; the server's certificate chains to `sslrootcert` (else the system's roots) and names the host |
//! | `verify-ca` | TLS; the certificate chains to the CA, its names are not checked |
//!
//! Unlike libpq, `require` verifies the server too: FlexCore never sends credentials over a
//! connection whose peer it has not checked. `sslcert` with `sslkey` presents a client
//! certificate.

use std::path::PathBuf;

use flexcore_app::service_url::ServiceUrl;
use flexcore_tls::{ClientTlsFiles, HostnameCheck};
use tokio_postgres::config::SslMode;
use tokio_postgres::{Client, NoTls};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::PostgresError;

/// What the store connects to, and how.
pub(crate) struct Endpoint {
    /// The driver's configuration.
    pub pg: tokio_postgres::Config,
    /// TLS, when the URL's `sslmode` asks for it.
    pub tls: Option<MakeRustlsConnect>,
}

/// The URL without the TLS parameters, and the TLS they ask for.
pub(crate) fn split_url(
    url: &str,
) -> Result<(String, Option<(ClientTlsFiles, HostnameCheck)>), PostgresError> {
    // The key=value form (`host=… dbname=…`) carries no TLS parameters FlexCore handles.
    if !url.contains("://") {
        return Ok((url.to_owned(), None));
    }
    let invalid = |e: flexcore_app::service_url::InvalidUrl| {
        PostgresError::Config(format!("invalid postgresql url: {e}"))
    };
    let mut parsed = ServiceUrl::parse(url).map_err(invalid)?;
    let mode = parsed.take("sslmode");
    let files = ClientTlsFiles {
        ca_file: parsed.take("sslrootcert").map(PathBuf::from),
        cert_file: parsed.take("sslcert").map(PathBuf::from),
        key_file: parsed.take("sslkey").map(PathBuf::from),
    }
    .checked()
    .map_err(|_| PostgresError::Config("sslcert needs sslkey, and sslkey needs sslcert".into()))?;
    let hostname = match mode.as_deref() {
        None | Some("disable" | "allow" | "prefer") => {
            if !files.is_empty() {
                return Err(PostgresError::Config(
                    "sslrootcert, sslcert and sslkey need sslmode=require, verify-ca or verify-full"
                        .into(),
                ));
            }
            return Ok((parsed.driver_url(), None));
        }
        Some("require" | "verify-full") => HostnameCheck::Verify,
        Some("verify-ca") => HostnameCheck::Skip,
        Some(other) => {
            return Err(PostgresError::Config(format!(
                "sslmode '{other}' is not one of disable, allow, prefer, require, verify-ca, \
                 verify-full"
            )));
        }
    };
    Ok((parsed.driver_url(), Some((files, hostname))))
}

impl Endpoint {
    /// The endpoint a store URL names (its TLS files read now: a missing one fails here).
    pub(crate) fn parse(url: &str) -> Result<Self, PostgresError> {
        let (driver_url, tls) = split_url(url)?;
        let mut pg: tokio_postgres::Config = driver_url
            .parse()
            .map_err(|e| PostgresError::Config(format!("invalid postgresql url: {e}")))?;
        let tls = match tls {
            None => None,
            Some((files, hostname)) => {
                pg.ssl_mode(SslMode::Require);
                let config = files
                    .client_config(hostname)
                    .map_err(|e| PostgresError::Config(e.to_string()))?;
                Some(MakeRustlsConnect::new(config))
            }
        };
        Ok(Self { pg, tls })
    }

    /// Opens one connection outside the pool (migrations, clean-up); its I/O runs on a task.
    pub(crate) async fn connect(&self) -> Result<Client, PostgresError> {
        fn drive<S, T>((client, connection): (Client, tokio_postgres::Connection<S, T>)) -> Client
        where
            S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
            T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
        {
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::debug!(error = %e, "postgresql maintenance connection ended");
                }
            });
            client
        }
        Ok(match &self.tls {
            None => drive(self.pg.connect(NoTls).await?),
            Some(tls) => drive(self.pg.connect(tls.clone()).await?),
        })
    }

    /// The connection pool's manager for this endpoint.
    pub(crate) fn manager(
        self,
        config: deadpool_postgres::ManagerConfig,
    ) -> deadpool_postgres::Manager {
        match self.tls {
            None => deadpool_postgres::Manager::from_config(self.pg, NoTls, config),
            Some(tls) => deadpool_postgres::Manager::from_config(self.pg, tls, config),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_parameters_leave_the_driver_url() {
        let (url, tls) =
            split_url("postgres://u@h/db?sslmode=verify-ca&sslrootcert=/ca.pem&connect_timeout=3")
                .unwrap();
        assert_eq!(url, "postgres://u@h/db?connect_timeout=3");
        let (files, hostname) = tls.unwrap();
        assert_eq!(files.ca_file, Some(PathBuf::from("/ca.pem")));
        assert_eq!(hostname, HostnameCheck::Skip);
        let (_, tls) = split_url("postgres://h/db?sslmode=require").unwrap();
        assert_eq!(tls.unwrap().1, HostnameCheck::Verify);
    }

    #[test]
    fn plain_modes_stay_plain_and_bad_combinations_are_refused() {
        for url in [
            "postgres://h/db",
            "postgres://h/db?sslmode=disable",
            "host=h dbname=db",
        ] {
            assert!(split_url(url).unwrap().1.is_none(), "{url}");
        }
        for url in [
            "postgres://h/db?sslmode=sometimes",
            "postgres://h/db?sslrootcert=/ca.pem",
            "postgres://h/db?sslmode=require&sslcert=/c.pem",
        ] {
            assert!(split_url(url).is_err(), "{url}");
        }
    }

    #[test]
    fn a_missing_ca_file_fails_when_the_endpoint_is_built() {
        let error = Endpoint::parse("postgres://h/db?sslmode=verify-full&sslrootcert=/nowhere.pem")
            .err()
            .unwrap();
        assert!(error.to_string().contains("/nowhere.pem"), "{error}");
    }
}
