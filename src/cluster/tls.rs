//! TLS for the cluster's gRPC and Arrow Flight traffic, with rustls (the build object_store already uses).
//!
//! Servers (the scheduler's gRPC service, each executor's Flight service) terminate TLS themselves when given a
//! certificate and key. Clients are Ballista's own tonic channels, which Ballista connects itself; this build's
//! tonic has no TLS of its own (turning tonic's TLS on would change the features of the rustls that object_store
//! and DataFusion are built with). So a client with a CA file sends each channel through a local tunnel: the
//! endpoint hook points the channel at `127.0.0.1:PORT`, where a task of this process opens a TLS connection to
//! the real server (verified against the CA, by the host name the channel was made for) and copies bytes both
//! ways. The cluster token still travels inside, in each request.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tonic::transport::Endpoint;
use tonic::transport::server::{Connected, TcpConnectInfo};

use crate::error::{Result, VoxelError};

/// How long a TLS handshake may take before the connection is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn tls_error(path: &Path, what: &str, e: impl std::fmt::Display) -> VoxelError {
    VoxelError::Invalid(format!("{}: {what}: {e}", path.display()))
}

/// The certificates of a PEM file (at least one).
fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| tls_error(path, "cannot read certificates", e))?
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| tls_error(path, "bad PEM certificate", e))?;
    if certs.is_empty() {
        return Err(tls_error(
            path,
            "no certificate",
            "the file holds no CERTIFICATE block",
        ));
    }
    Ok(certs)
}

/// A server's TLS: its certificate chain and key.
#[derive(Clone)]
pub struct ServerTls {
    acceptor: TlsAcceptor,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServerTls")
    }
}

impl ServerTls {
    /// TLS with the certificate chain in `cert` and the private key in `key` (PEM files).
    pub fn load(cert: &Path, key: &Path) -> Result<ServerTls> {
        let chain = certificates(cert)?;
        let key_der = PrivateKeyDer::from_pem_file(key)
            .map_err(|e| tls_error(key, "cannot read the private key", e))?;
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| tls_error(cert, "TLS setup", e))?
            .with_no_client_auth()
            .with_single_cert(chain, key_der)
            .map_err(|e| tls_error(cert, "certificate and key do not go together", e))?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(ServerTls {
            acceptor: TlsAcceptor::from(Arc::new(config)),
        })
    }

    /// The TLS connections accepted on `listener`. Handshakes run side by side (one slow peer holds up no other)
    /// and each has [`HANDSHAKE_TIMEOUT`]; failed ones are dropped.
    pub fn incoming(
        &self,
        listener: TcpListener,
    ) -> impl Stream<Item = std::io::Result<TlsIo>> + Send + 'static {
        let (tx, rx) = tokio::sync::mpsc::channel::<TlsIo>(64);
        let acceptor = self.acceptor.clone();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    // Out of descriptors and the like: let the condition pass.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let _ = tcp.set_nodelay(true);
                let (acceptor, out) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp));
                    if let Ok(Ok(stream)) = handshake.await {
                        let _ = out.send(TlsIo(stream)).await;
                    }
                });
                if tx.is_closed() {
                    return;
                }
            }
        });
        futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|io| (Ok(io), rx))
        })
    }
}

/// A server-side TLS connection, as tonic serves it.
pub struct TlsIo(tokio_rustls::server::TlsStream<TcpStream>);

impl Connected for TlsIo {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        let tcp = self.0.get_ref().0;
        TcpConnectInfo {
            local_addr: tcp.local_addr().ok(),
            remote_addr: tcp.peer_addr().ok(),
        }
    }
}

impl AsyncRead for TlsIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
}

/// A client's TLS: the CA that servers' certificates must chain to, and the tunnels opened so far.
pub struct ClientTls {
    connector: TlsConnector,
    /// Server `host:port` → the local end of its tunnel.
    tunnels: Mutex<HashMap<(String, u16), SocketAddr>>,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientTls")
    }
}

/// The tunnels' own runtime (one thread), alive as long as the process: a tunnel must outlive whichever runtime
/// first asked for it.
fn tunnel_runtime() -> Result<&'static tokio::runtime::Runtime> {
    static RUNTIME: OnceLock<std::io::Result<tokio::runtime::Runtime>> = OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .thread_name("voxelscan-tls")
                .enable_all()
                .build()
        })
        .as_ref()
        .map_err(|e| VoxelError::Invalid(format!("cannot start the TLS tunnel runtime: {e}")))
}

impl ClientTls {
    /// Trust the certificates in `ca` (PEM) and no others.
    pub fn load(ca: &Path) -> Result<Arc<ClientTls>> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in certificates(ca)? {
            roots
                .add(cert)
                .map_err(|e| tls_error(ca, "not a usable CA certificate", e))?;
        }
        let mut config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| tls_error(ca, "TLS setup", e))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Arc::new(ClientTls {
            connector: TlsConnector::from(Arc::new(config)),
            tunnels: Mutex::new(HashMap::new()),
        }))
    }

    /// `endpoint` (made by Ballista for `http://HOST:PORT`) redirected through the TLS tunnel to `HOST:PORT`.
    /// Ballista's settings of the endpoint are made again on the new one (timeouts, keep-alive, windows).
    pub fn tunnel(&self, endpoint: Endpoint) -> std::result::Result<Endpoint, BoxError> {
        let uri = endpoint.uri();
        let host = uri
            .host()
            .ok_or_else(|| format!("no host in {uri}"))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = uri.port_u16().unwrap_or(443);
        let local = self.local_end(&host, port)?;
        Ok(Endpoint::from_shared(format!("http://{local}"))?
            .connect_timeout(Duration::from_secs(20))
            .tcp_nodelay(true)
            .tcp_keepalive(Some(Duration::from_secs(3600)))
            .http2_keep_alive_interval(Duration::from_secs(300))
            .keep_alive_timeout(Duration::from_secs(20))
            .keep_alive_while_idle(true)
            .initial_connection_window_size(Some(64 << 20))
            .initial_stream_window_size(Some(16 << 20)))
    }

    /// The local end of the tunnel to `host:port`, opened on first use.
    fn local_end(&self, host: &str, port: u16) -> std::result::Result<SocketAddr, BoxError> {
        let mut tunnels = self
            .tunnels
            .lock()
            .map_err(|_| "the TLS tunnel table is poisoned")?;
        if let Some(addr) = tunnels.get(&(host.to_string(), port)) {
            return Ok(*addr);
        }
        let name = ServerName::try_from(host.to_string())
            .map_err(|e| format!("'{host}' cannot be checked against a certificate: {e}"))?;
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let (connector, server) = (self.connector.clone(), (host.to_string(), port));
        tunnel_runtime()?.spawn(async move {
            let Ok(listener) = TcpListener::from_std(listener) else {
                return;
            };
            while let Ok((local, _)) = listener.accept().await {
                let (connector, name, server) = (connector.clone(), name.clone(), server.clone());
                tokio::spawn(async move {
                    if let Err(e) = carry(local, &connector, name, &server).await {
                        eprintln!(
                            "voxelscan: TLS connection to {}:{}: {e}",
                            server.0, server.1
                        );
                    }
                });
            }
        });
        tunnels.insert((host.to_string(), port), addr);
        Ok(addr)
    }
}

/// One tunnelled connection: TLS to the server, then bytes both ways until either side closes.
async fn carry(
    mut local: TcpStream,
    connector: &TlsConnector,
    name: ServerName<'static>,
    server: &(String, u16),
) -> std::io::Result<()> {
    local.set_nodelay(true)?;
    let remote = TcpStream::connect((server.0.as_str(), server.1)).await?;
    remote.set_nodelay(true)?;
    let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, connector.connect(name, remote));
    let mut tls = handshake.await.map_err(|_| {
        std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake timed out")
    })??;
    tokio::io::copy_bidirectional(&mut local, &mut tls).await?;
    Ok(())
}

// Test certificates, shared with tests/ballista.rs.
#[cfg(test)]
#[path = "../../tests/common/certs.rs"]
mod certs;

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    use super::certs::make_certificates;

    #[test]
    fn bad_files_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let e = ClientTls::load(&empty).err().unwrap().to_string();
        assert!(
            e.contains("empty.pem") && e.contains("no certificate"),
            "{e}"
        );
        let e = ServerTls::load(&dir.path().join("missing.pem"), &empty)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("missing.pem"), "{e}");
        let (ca, cert, key) = make_certificates(dir.path());
        assert!(ClientTls::load(&ca).is_ok());
        assert!(ServerTls::load(&cert, &key).is_ok());
        // A key that is not the certificate's.
        let e = ServerTls::load(&cert, &dir.path().join("ca-key.pem"))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("do not go together"), "{e}");
    }

    /// Bytes through a tunnel reach a TLS server and come back; a client trusting another CA gets nothing.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn tunnels_carry_bytes_over_verified_tls() {
        use futures::StreamExt;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let dir = tempfile::tempdir().unwrap();
        let (ca, cert, key) = make_certificates(dir.path());
        let server = ServerTls::load(&cert, &key).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut incoming = Box::pin(server.incoming(listener));
        tokio::spawn(async move {
            while let Some(Ok(mut io)) = incoming.next().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 5];
                    if io.read_exact(&mut buf).await.is_ok() {
                        let _ = io.write_all(&buf.map(|b| b.to_ascii_uppercase())).await;
                        let _ = io.flush().await;
                    }
                });
            }
        });
        let client = ClientTls::load(&ca).unwrap();
        let endpoint = Endpoint::from_shared(format!("http://127.0.0.1:{port}")).unwrap();
        let local = client.tunnel(endpoint).unwrap().uri().clone();
        assert_eq!(local.host(), Some("127.0.0.1"));
        assert_ne!(local.port_u16(), Some(port));
        let mut s = TcpStream::connect(("127.0.0.1", local.port_u16().unwrap()))
            .await
            .unwrap();
        s.write_all(b"hello").await.unwrap();
        let mut back = [0u8; 5];
        s.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"HELLO");

        // Another CA: the handshake fails, the local connection is closed without a byte.
        let other = tempfile::tempdir().unwrap();
        let (other_ca, _, _) = make_certificates(other.path());
        let stranger = ClientTls::load(&other_ca).unwrap();
        let endpoint = Endpoint::from_shared(format!("http://127.0.0.1:{port}")).unwrap();
        let local = stranger.tunnel(endpoint).unwrap().uri().clone();
        let mut s = TcpStream::connect(("127.0.0.1", local.port_u16().unwrap()))
            .await
            .unwrap();
        let _ = s.write_all(b"hello").await;
        let mut buf = Vec::new();
        let n = s.read_to_end(&mut buf).await.unwrap_or(0);
        assert_eq!(n, 0, "{buf:?}");
    }
}
