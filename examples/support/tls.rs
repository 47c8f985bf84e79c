//! TLS for the gateway example and the loopback tests, with rustls on the
//! `ring` provider: terminating HTTPS and WSS in front of the proxy
//! (`--tls-cert`/`--tls-key`), speaking TLS to `https://` backends with the
//! platform's roots or a given CA (`--upstream-ca`), and the test side:
//! certificates made at run time, a TLS backend, TLS clients.
//!
//! tower-lb links no TLS library: the gateway accepts and handshakes here,
//! then hands each TLS stream to `tower_lb::proxy::serve_connection`, and
//! the upstream's connector is hyper-rustls' wrapped around hyper-util's
//! `HttpConnector`, given to `tower_lb::proxy::Upstream::from_client`.
#![allow(dead_code)]

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tower::Service;

/// The upstream client of a gateway that may have `https://` backends.
pub type TlsUpstream =
    tower_lb::proxy::Upstream<tower_lb::proxy::RequestBody, HttpsConnector<HttpConnector>>;

/// A client will not wait longer than this for the TLS handshake: a
/// connection that opens and says nothing holds no task for long.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The server side of `--tls-cert FILE --tls-key FILE`: a PEM certificate
/// chain (leaf first) and its PEM private key (PKCS#8, PKCS#1 or SEC1).
pub fn server_config_from_files(
    cert: &Path,
    key: &Path,
) -> Result<Arc<rustls::ServerConfig>, String> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("--tls-cert {}: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!(
            "--tls-cert {}: no CERTIFICATE in the file",
            cert.display()
        ));
    }
    let key_der = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("--tls-key {}: {e}", key.display()))?;
    server_config(chain, key_der).map_err(|e| format!("--tls-cert/--tls-key: {e}"))
}

/// A server configuration for HTTP/1.1 (ALPN `http/1.1`: the proxy speaks
/// HTTP/1.1, and WebSocket upgrades are HTTP/1.1).
pub fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<rustls::ServerConfig>, rustls::Error> {
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Serves `stack` over TLS on `listener`: each connection is handshaken
/// (within [`HANDSHAKE_TIMEOUT`]) and then served by tower-lb's
/// `serve_connection`, so requests carry the client's address and errors
/// become safe responses, as on plain HTTP. Errors go to stderr.
pub async fn serve_proxy_tls<S, B>(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    stack: S,
) where
    S: Service<
            Request<tower_lb::proxy::RequestBody>,
            Response = Response<B>,
            Error = tower_lb::Error,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: hyper::body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let acceptor = TlsAcceptor::from(config);
    loop {
        let (stream, peer) = tower_lb::proxy::accept(&listener).await;
        let acceptor = acceptor.clone();
        let stack = stack.clone();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => return eprintln!("TLS handshake with {peer} failed: {e}"),
                Err(_) => return eprintln!("TLS handshake with {peer} timed out"),
            };
            let _ = tower_lb::proxy::serve_connection(
                TokioIo::new(tls),
                peer,
                stack,
                |error: &tower_lb::Error, peer| eprintln!("proxy error for {peer}: {error}"),
            )
            .await;
        });
    }
}

/// The roots the gateway trusts for `https://` backends: the CA
/// certificates in `ca` (`--upstream-ca FILE`, PEM), or else the
/// platform's. Without either, `https://` backends cannot be verified,
/// which is an error only when one is configured (`need_roots`).
pub fn upstream_roots(
    ca: Option<&Path>,
    need_roots: bool,
) -> Result<rustls::RootCertStore, String> {
    let mut roots = rustls::RootCertStore::empty();
    if let Some(ca) = ca {
        let certs = CertificateDer::pem_file_iter(ca)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .map_err(|e| format!("--upstream-ca {}: {e}", ca.display()))?;
        let (added, _) = roots.add_parsable_certificates(certs);
        if added == 0 {
            return Err(format!(
                "--upstream-ca {}: no usable CERTIFICATE in the file",
                ca.display()
            ));
        }
        return Ok(roots);
    }
    let platform = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(platform.certs);
    if roots.is_empty() && need_roots {
        return Err(
            "no platform CA certificates found for the https:// backends; pass --upstream-ca FILE"
                .into(),
        );
    }
    Ok(roots)
}

/// The proxy's upstream client, speaking plain HTTP to `http://` backends
/// and TLS (verified against `roots`, SNI from the backend's host) to
/// `https://` ones.
pub fn upstream(roots: rustls::RootCertStore) -> Result<TlsUpstream, String> {
    upstream_with(roots, None)
}

/// [`upstream`] for any request body (the retry layer's replayable one),
/// with a connect timeout (`proxy_connect_timeout`) covering the TCP
/// connect; the TLS handshake is part of the response-head wait.
pub fn upstream_with<B>(
    roots: rustls::RootCertStore,
    connect_timeout: Option<Duration>,
) -> Result<tower_lb::proxy::Upstream<B, HttpsConnector<HttpConnector>>, String>
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
{
    let config = client_config(roots).map_err(|e| format!("upstream TLS: {e}"))?;
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    http.set_connect_timeout(connect_timeout);
    // The TLS connector sees the URI's scheme; the plain one must let it.
    http.enforce_http(false);
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config((*config).clone())
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Ok(tower_lb::proxy::Upstream::from_client(
        Client::builder(TokioExecutor::new()).build(connector),
    ))
}

/// A client configuration trusting `roots`.
pub fn client_config(
    roots: rustls::RootCertStore,
) -> Result<Arc<rustls::ClientConfig>, rustls::Error> {
    Ok(Arc::new(
        rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth(),
    ))
}

/// A self-signed certificate for `localhost` and 127.0.0.1, made now:
/// (certificate PEM, private key PEM). Tests write nothing that expires.
pub fn self_signed() -> (String, String) {
    let made =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .expect("rcgen makes a certificate for fixed names");
    (made.cert.pem(), made.signing_key.serialize_pem())
}

/// A server configuration from a certificate for `localhost` and
/// 127.0.0.1 made now, and that certificate's PEM (a client's root).
pub fn loopback_identity() -> (Arc<rustls::ServerConfig>, String) {
    let (cert_pem, key_pem) = self_signed();
    let cert = CertificateDer::from_pem_slice(cert_pem.as_bytes()).expect("rcgen's PEM parses");
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).expect("rcgen's PEM parses");
    (
        server_config(vec![cert], key).expect("rcgen's key matches its certificate"),
        cert_pem,
    )
}

/// The certificates of `pem` as roots.
pub fn roots_from_pem(pem: &str) -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
        roots
            .add(cert.expect("the PEM parses"))
            .expect("the certificate is valid");
    }
    roots
}

/// A server configuration and a client configuration that trusts it, from
/// a certificate made now.
pub fn loopback_pair() -> (Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>) {
    let (server, cert_pem) = loopback_identity();
    let client =
        client_config(roots_from_pem(&cert_pem)).expect("ring supports the default versions");
    (server, client)
}

/// Opens a TLS connection to `addr` (server name `localhost`) from the
/// local address `from` (any of 127.0.0.0/8 on Linux).
pub async fn tls_connect(
    addr: SocketAddr,
    from: IpAddr,
    config: Arc<rustls::ClientConfig>,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, BoxError> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(from, 0))?;
    let stream = socket.connect(addr).await?;
    let name = ServerName::try_from("localhost")?;
    Ok(TlsConnector::from(config).connect(name, stream).await?)
}

/// A WebSocket over TLS (`wss://localhost/play`) to `proxy`, from `from`,
/// with an optional `Cookie` header: the TLS handshake here, then
/// tungstenite's client handshake over the TLS stream. Returns the stream
/// and the `101` response (with any `Set-Cookie`).
pub async fn wss_connect(
    proxy: SocketAddr,
    from: IpAddr,
    cookie: Option<&str>,
    config: Arc<rustls::ClientConfig>,
) -> Result<
    (
        tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<TcpStream>>,
        tokio_tungstenite::tungstenite::handshake::client::Response,
    ),
    BoxError,
> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;

    let tls = tls_connect(proxy, from, config).await?;
    let mut request = format!("wss://localhost:{}/play", proxy.port()).into_client_request()?;
    if let Some(cookie) = cookie {
        request
            .headers_mut()
            .insert(http::header::COOKIE, cookie.parse()?);
    }
    Ok(tokio_tungstenite::client_async(request, tls).await?)
}

/// The gateway's `--demo` client: plain HTTP, or HTTPS to a gateway whose
/// certificate is `tls_cert` (trusted as a root as well as the platform's,
/// so that a self-signed one works).
pub type DemoClient = Client<HttpsConnector<HttpConnector>, http_body_util::Full<bytes::Bytes>>;

/// See [`DemoClient`].
pub fn demo_client(tls_cert: Option<&Path>) -> Result<DemoClient, String> {
    let mut roots = upstream_roots(None, false)?;
    if let Some(cert) = tls_cert {
        let certs = CertificateDer::pem_file_iter(cert)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .map_err(|e| format!("--tls-cert {}: {e}", cert.display()))?;
        roots.add_parsable_certificates(certs);
    }
    let config = client_config(roots).map_err(|e| format!("demo client TLS: {e}"))?;
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config((*config).clone())
        .https_or_http()
        .enable_http1()
        .build();
    Ok(Client::builder(TokioExecutor::new()).build(connector))
}

/// A client's stream, plain TCP or TLS.
pub trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

/// A boxed [`Io`]: one type for `ws://` and `wss://` connections.
pub type BoxedIo = Box<dyn Io>;

/// [`super::ws_connect`] (`tls` = `None`) or [`wss_connect`], as one type.
pub async fn ws_connect_any(
    proxy: SocketAddr,
    from: IpAddr,
    cookie: Option<&str>,
    tls: Option<Arc<rustls::ClientConfig>>,
) -> Result<
    (
        tokio_tungstenite::WebSocketStream<BoxedIo>,
        tokio_tungstenite::tungstenite::handshake::client::Response,
    ),
    BoxError,
> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;

    let (stream, url): (BoxedIo, String) = match tls {
        Some(config) => (
            Box::new(tls_connect(proxy, from, config).await?),
            format!("wss://localhost:{}/play", proxy.port()),
        ),
        None => {
            let socket = tokio::net::TcpSocket::new_v4()?;
            socket.bind(SocketAddr::new(from, 0))?;
            (
                Box::new(socket.connect(proxy).await?),
                format!("ws://{proxy}/play"),
            )
        }
    };
    let mut request = url.into_client_request()?;
    if let Some(cookie) = cookie {
        request
            .headers_mut()
            .insert(http::header::COOKIE, cookie.parse()?);
    }
    Ok(tokio_tungstenite::client_async(request, stream).await?)
}

/// An HTTPS client (HTTP/1.1) trusting `config`'s roots, for talking to a
/// TLS gateway.
pub fn https_client(
    config: Arc<rustls::ClientConfig>,
) -> Client<HttpsConnector<HttpConnector>, http_body_util::Full<bytes::Bytes>> {
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config((*config).clone())
        .https_only()
        .enable_http1()
        .build();
    Client::builder(TokioExecutor::new()).build(connector)
}

/// Starts an HTTPS backend on an ephemeral loopback port: the plain
/// backend of [`super::spawn_backend`], behind a TLS terminator of its own.
pub async fn spawn_tls_backend(
    name: &str,
    config: Arc<rustls::ServerConfig>,
) -> std::io::Result<SocketAddr> {
    let plain = super::spawn_backend(name).await?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let acceptor = TlsAcceptor::from(config);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(stream).await else {
                    return;
                };
                let Ok(mut inner) = TcpStream::connect(plain).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut inner).await;
            });
        }
    });
    Ok(addr)
}
