//! A throwaway certificate authority made at test time (rcgen): server and client
//! certificates as PEM files, for TLS and mTLS tests; a TLS-terminating proxy that puts a
//! local plain service (PostgreSQL, Redis, RabbitMQ) behind TLS; and a gRPC client channel
//! over rustls.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};

/// A test CA: it signs certificates and writes them as PEM files.
pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A certificate and its key, as PEM files.
#[derive(Debug, Clone)]
pub struct CertFiles {
    /// The certificate (PEM).
    pub cert: PathBuf,
    /// The private key (PEM).
    pub key: PathBuf,
}

impl TestCa {
    /// A new self-signed CA called `name`.
    pub fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().expect("a CA key");
        Self {
            issuer: CertifiedIssuer::self_signed(params, key).expect("a self-signed CA"),
        }
    }

    /// Writes the CA's certificate to `dir/<file>` and returns its path.
    pub fn write_ca(&self, dir: &Path, file: &str) -> PathBuf {
        let path = dir.join(file);
        std::fs::write(&path, self.issuer.pem()).expect("write the CA");
        path
    }

    /// Issues a certificate with common name `common_name` and subject alternative names
    /// `names`, written as `dir/<stem>.crt` and `dir/<stem>.key`.
    pub fn issue(&self, dir: &Path, stem: &str, common_name: &str, names: &[&str]) -> CertFiles {
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut params = CertificateParams::new(names).expect("certificate params");
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        let key = KeyPair::generate().expect("a key");
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("a signed certificate");
        let files = CertFiles {
            cert: dir.join(format!("{stem}.crt")),
            key: dir.join(format!("{stem}.key")),
        };
        std::fs::write(&files.cert, cert.pem()).expect("write the certificate");
        std::fs::write(&files.key, key.serialize_pem()).expect("write the key");
        files
    }
}

/// A test CA with a server certificate for `localhost` and `127.0.0.1`, in a temporary
/// directory kept as long as the value lives.
pub struct TestPki {
    /// The CA that signed the server certificate.
    pub ca: TestCa,
    /// The CA's certificate (PEM): what clients trust.
    pub ca_file: PathBuf,
    /// The server's certificate and key.
    pub server: CertFiles,
    /// The directory the files are in.
    pub dir: tempfile::TempDir,
}

impl TestPki {
    /// A new CA and server certificate.
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let ca = TestCa::new("FlexCore test CA");
        let ca_file = ca.write_ca(dir.path(), "ca.pem");
        let server = ca.issue(
            dir.path(),
            "server",
            "localhost",
            &["localhost", "127.0.0.1"],
        );
        Self {
            ca,
            ca_file,
            server,
            dir,
        }
    }

    /// A client certificate with common name `name`, signed by the CA.
    pub fn client(&self, name: &str) -> CertFiles {
        self.ca.issue(self.dir.path(), name, name, &[])
    }
}

impl Default for TestPki {
    fn default() -> Self {
        Self::new()
    }
}

/// What a [`TlsProxy`] asks of its clients and how the protocol starts.
#[derive(Debug, Clone)]
pub struct TlsProxyOptions {
    /// The server certificate the proxy presents.
    pub server: CertFiles,
    /// With it, clients must present a certificate signed by this CA.
    pub client_ca: Option<PathBuf>,
    /// PostgreSQL asks for TLS with an `SSLRequest` before the handshake; the proxy answers
    /// it (`S`) and the service behind sees a plain connection.
    pub postgres: bool,
}

/// A TLS-terminating proxy in front of a plain service on this machine: clients speak TLS to
/// it, the service behind sees plain TCP. It counts the TLS sessions it completed, so a test
/// can show its traffic was encrypted.
pub struct TlsProxy {
    port: u16,
    sessions: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

/// PostgreSQL's `SSLRequest`: length 8, code 80877103.
const POSTGRES_SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];

impl TlsProxy {
    /// Listens on a free port of `127.0.0.1` and forwards to `target` (`host:port`).
    pub async fn start(target: &str, options: TlsProxyOptions) -> Self {
        flexcore_tls::install_crypto_provider();
        let config = Arc::new(proxy_config(&options));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the TLS proxy");
        let port = listener.local_addr().expect("its address").port();
        let sessions = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&sessions);
        let target = target.to_owned();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let acceptor = tokio_rustls::TlsAcceptor::from(Arc::clone(&config));
                let (target, counted, postgres) =
                    (target.clone(), Arc::clone(&counted), options.postgres);
                tokio::spawn(async move {
                    let _ = relay(client, acceptor, &target, &counted, postgres).await;
                });
            }
        });
        Self {
            port,
            sessions,
            task,
        }
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The TLS sessions it completed so far.
    pub fn sessions(&self) -> usize {
        self.sessions.load(Ordering::SeqCst)
    }
}

impl Drop for TlsProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn proxy_config(options: &TlsProxyOptions) -> rustls::ServerConfig {
    let builder = rustls::ServerConfig::builder_with_provider(flexcore_tls::provider())
        .with_safe_default_protocol_versions()
        .expect("TLS versions");
    let builder = match &options.client_ca {
        Some(ca) => {
            let roots = flexcore_tls::root_store(ca).expect("the client CA");
            builder.with_client_cert_verifier(
                rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    flexcore_tls::provider(),
                )
                .build()
                .expect("a client verifier"),
            )
        }
        None => builder.with_no_client_auth(),
    };
    builder
        .with_single_cert(
            flexcore_tls::certificates(&options.server.cert).expect("the server certificate"),
            flexcore_tls::private_key(&options.server.key).expect("the server key"),
        )
        .expect("a server configuration")
}

async fn relay(
    mut client: tokio::net::TcpStream,
    acceptor: tokio_rustls::TlsAcceptor,
    target: &str,
    sessions: &AtomicUsize,
    postgres: bool,
) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    if postgres {
        let mut request = [0_u8; 8];
        client.read_exact(&mut request).await?;
        if request != POSTGRES_SSL_REQUEST {
            // A client that does not ask for TLS gets nothing from a TLS proxy.
            return Ok(());
        }
        client.write_all(b"S").await?;
    }
    let mut tls = acceptor.accept(client).await?;
    sessions.fetch_add(1, Ordering::SeqCst);
    let mut service = tokio::net::TcpStream::connect(target).await?;
    tokio::io::copy_bidirectional(&mut tls, &mut service).await?;
    Ok(())
}

/// A rustls client configuration that trusts the CA certificate in `ca` (PEM), presents
/// `identity` when given, and offers `h2` by ALPN (what a gRPC client offers).
pub fn client_config(ca: &Path, identity: Option<&CertFiles>) -> rustls::ClientConfig {
    let files = flexcore_tls::ClientTlsFiles {
        ca_file: Some(ca.to_owned()),
        cert_file: identity.map(|files| files.cert.clone()),
        key_file: identity.map(|files| files.key.clone()),
    };
    let mut config = files
        .client_config(flexcore_tls::HostnameCheck::Verify)
        .expect("a client configuration");
    config.alpn_protocols = vec![b"h2".to_vec()];
    config
}

/// A gRPC channel to `server`, over TLS with `tls` when given (the server's certificate must
/// name its IP address), its TCP connection made from the address `source`.
///
/// tonic's own TLS features stay off in this workspace (they would bring a second crypto
/// provider), so the channel gets its connections from a connector doing TCP and rustls.
pub async fn grpc_channel(
    server: std::net::SocketAddr,
    source: std::net::IpAddr,
    tls: Option<rustls::ClientConfig>,
) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    use std::pin::Pin;
    use tokio::io::{AsyncRead, AsyncWrite};

    trait Transport: AsyncRead + AsyncWrite + Send {}
    impl<T: AsyncRead + AsyncWrite + Send> Transport for T {}

    let tls = tls.map(|config| tokio_rustls::TlsConnector::from(std::sync::Arc::new(config)));
    let connector = tower::service_fn(move |_: tonic::codegen::http::Uri| {
        let tls = tls.clone();
        async move {
            let socket = tokio::net::TcpSocket::new_v4()?;
            socket.bind(std::net::SocketAddr::new(source, 0))?;
            let tcp = socket.connect(server).await?;
            tcp.set_nodelay(true)?;
            let transport: Pin<Box<dyn Transport>> = match tls {
                None => Box::pin(tcp),
                Some(tls) => {
                    let name = rustls::pki_types::ServerName::IpAddress(server.ip().into());
                    Box::pin(tls.connect(name, tcp).await?)
                }
            };
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(transport))
        }
    });
    tonic::transport::Endpoint::from_shared(format!("http://{server}"))
        .expect("a valid URI")
        .connect_timeout(std::time::Duration::from_secs(5))
        .connect_with_connector(connector)
        .await
}
