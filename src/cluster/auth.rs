//! The cluster's shared secret: every gRPC and Arrow Flight call between client, scheduler and executors carries
//! it, and the scheduler's and executors' services refuse a call without it (`Unauthenticated`).
//!
//! How it travels: Ballista 55 creates most of its gRPC clients itself and gives one hook on each, the tonic
//! `Endpoint` (`override_create_grpc_client_endpoint`, in the scheduler's and executor's configs and in every
//! session config). The only per-request header an `Endpoint` can set is `user-agent`, so the token rides there as
//! `voxelscan-token/TOKEN`; the services check it in a tonic interceptor (constant-time comparison) and drop the
//! header before Ballista sees the request. The token is read from `VOXELSCAN_CLUSTER_TOKEN` or a file
//! (`--token-file`), never from the command line (which other users can read through `ps`).

use std::fmt;
use std::io::Read;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::sync::Arc;

use ballista_core::extension::EndpointOverrideFn;
use subtle::ConstantTimeEq;
use tonic::transport::Endpoint;
use tonic::{Request, Status};

use super::tls::ClientTls;
use crate::error::{Result, VoxelError};

/// The environment variable holding the token.
pub const TOKEN_ENV: &str = "VOXELSCAN_CLUSTER_TOKEN";

/// What precedes the token in the `user-agent` header.
const CARRIER: &str = "voxelscan-token/";

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Shortest token accepted: a guessable secret is no secret.
const MIN_LEN: usize = 16;
/// Longest token accepted (and the most read from a token file).
const MAX_LEN: usize = 1024;

/// How to give a token, for error messages.
pub const HOW_TO_SET: &str = "set VOXELSCAN_CLUSTER_TOKEN or give --token-file FILE (the same secret of at least \
     16 printable characters on the scheduler, every executor and every client)";

/// The shared secret. Its `Debug` shows no part of it.
#[derive(Clone)]
pub struct ClusterToken(Arc<str>);

impl fmt::Debug for ClusterToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClusterToken(<redacted>)")
    }
}

impl ClusterToken {
    /// A token from text: 16 to 1024 printable ASCII characters without spaces (it must fit an HTTP header).
    pub fn new(text: &str) -> Result<ClusterToken> {
        let bad = |why: &str| VoxelError::Invalid(format!("cluster token {why}"));
        if text.len() < MIN_LEN {
            return Err(bad(&format!("is shorter than {MIN_LEN} characters")));
        }
        if text.len() > MAX_LEN {
            return Err(bad(&format!("is longer than {MAX_LEN} characters")));
        }
        if !text.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(bad(
                "must be printable ASCII without spaces (e.g. from `openssl rand -hex 32`)",
            ));
        }
        Ok(ClusterToken(text.into()))
    }

    /// The token in `path` (one line; surrounding whitespace is ignored). The file must be a regular file that
    /// only its owner can read or write (mode 0600 or 0400), like an ssh key.
    pub fn from_file(path: &Path) -> Result<ClusterToken> {
        use std::os::unix::fs::PermissionsExt;
        let in_file = |e: VoxelError| e.in_file(path);
        let file = std::fs::File::open(path).map_err(|e| VoxelError::io(path, e))?;
        let meta = file.metadata().map_err(|e| VoxelError::io(path, e))?;
        if !meta.is_file() {
            return Err(in_file(VoxelError::Invalid(
                "the token file is not a regular file".into(),
            )));
        }
        if meta.permissions().mode() & 0o077 != 0 {
            return Err(in_file(VoxelError::Invalid(format!(
                "the token file is readable or writable by others (mode {:o}): chmod 600 it",
                meta.permissions().mode() & 0o777
            ))));
        }
        let mut text = String::new();
        file.take(MAX_LEN as u64 + 64)
            .read_to_string(&mut text)
            .map_err(|e| VoxelError::io(path, e))?;
        ClusterToken::new(text.trim()).map_err(in_file)
    }

    /// The token in `VOXELSCAN_CLUSTER_TOKEN`, if it is set and not empty.
    pub fn from_env() -> Result<Option<ClusterToken>> {
        match std::env::var(TOKEN_ENV) {
            Ok(text) if !text.trim().is_empty() => ClusterToken::new(text.trim())
                .map(Some)
                .map_err(|e| VoxelError::Invalid(format!("{TOKEN_ENV}: {e}"))),
            Ok(_) | Err(std::env::VarError::NotPresent) => Ok(None),
            Err(std::env::VarError::NotUnicode(_)) => Err(VoxelError::Invalid(format!(
                "{TOKEN_ENV} is not valid text"
            ))),
        }
    }

    /// The token from `file` when one is given, else from the environment.
    pub fn resolve(file: Option<&Path>) -> Result<Option<ClusterToken>> {
        match file {
            Some(path) => ClusterToken::from_file(path).map(Some),
            None => ClusterToken::from_env(),
        }
    }

    /// The `user-agent` value that carries this token.
    fn user_agent(&self) -> String {
        format!("{CARRIER}{}", self.0)
    }

    /// Whether `offered` is this token, in time independent of where they differ.
    fn accepts(&self, offered: &[u8]) -> bool {
        bool::from(self.0.as_bytes().ct_eq(offered))
    }
}

/// The token carried in a `user-agent` value (tonic appends its own `tonic/x.y` after ours).
fn offered_token(user_agent: &[u8]) -> Option<&[u8]> {
    user_agent
        .split(|b| *b == b' ')
        .find_map(|part| part.strip_prefix(CARRIER.as_bytes()))
}

/// The check every service runs before a call: with a token, the call must carry it; without one (a loopback-only
/// cluster), every call passes.
#[derive(Clone, Debug, Default)]
pub struct TokenCheck(Option<ClusterToken>);

impl TokenCheck {
    pub fn new(token: Option<ClusterToken>) -> TokenCheck {
        TokenCheck(token)
    }
}

impl tonic::service::Interceptor for TokenCheck {
    fn call(&mut self, mut request: Request<()>) -> std::result::Result<Request<()>, Status> {
        let Some(token) = &self.0 else {
            return Ok(request);
        };
        let offered = request
            .metadata()
            .get("user-agent")
            .and_then(|v| offered_token(v.as_bytes()).map(<[u8]>::to_vec));
        match offered {
            Some(t) if token.accepts(&t) => {
                // Ballista never sees (or logs) the secret.
                request.metadata_mut().remove("user-agent");
                Ok(request)
            }
            Some(_) => Err(Status::unauthenticated(
                "wrong voxelscan cluster token (VOXELSCAN_CLUSTER_TOKEN or --token-file)",
            )),
            None => Err(Status::unauthenticated(format!(
                "this voxelscan cluster requires a token: {HOW_TO_SET}"
            ))),
        }
    }
}

/// What Ballista applies to every gRPC/Flight client endpoint it creates: with TLS, the tunnel to the server
/// ([`super::tls`]); with a token, the token in the `user-agent` header. `None` when there is neither.
pub fn endpoint_override(
    token: Option<&ClusterToken>,
    tls: Option<&Arc<ClientTls>>,
) -> Option<EndpointOverrideFn> {
    if token.is_none() && tls.is_none() {
        return None;
    }
    let user_agent = token.map(ClusterToken::user_agent);
    let tls = tls.cloned();
    Some(Arc::new(
        move |endpoint: Endpoint| -> std::result::Result<Endpoint, BoxError> {
            let endpoint = match &tls {
                Some(tls) => tls.tunnel(endpoint)?,
                None => endpoint,
            };
            match &user_agent {
                Some(ua) => Ok(endpoint.user_agent(ua.clone())?),
                None => Ok(endpoint),
            }
        },
    ))
}

/// Refuse to listen on a non-loopback address without a token: anyone who reaches the port could run plans as
/// this process's user.
pub fn check_bind(host: &str, port: u16, token: Option<&ClusterToken>) -> Result<()> {
    if token.is_some() || is_loopback(host, port) {
        return Ok(());
    }
    Err(VoxelError::Invalid(format!(
        "refusing to listen on {host}:{port} (not a loopback address) without a cluster token: any host that \
         reaches the port could run queries as this user. {HOW_TO_SET}"
    )))
}

/// Whether every address `host` resolves to is a loopback address (a name that does not resolve is not).
fn is_loopback(host: &str, port: u16) -> bool {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return ip.is_loopback();
    }
    match (host, port).to_socket_addrs() {
        Ok(addrs) => {
            let addrs: Vec<SocketAddr> = addrs.collect();
            !addrs.is_empty() && addrs.iter().all(|a| a.ip().is_loopback())
        }
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::service::Interceptor;

    const GOOD: &str = "0123456789abcdef0123";

    fn call_with(
        check: &mut TokenCheck,
        user_agent: Option<&str>,
    ) -> std::result::Result<(), Status> {
        let mut request = Request::new(());
        if let Some(ua) = user_agent {
            request
                .metadata_mut()
                .insert("user-agent", ua.parse().unwrap());
        }
        check.call(request).map(|r| {
            assert!(
                r.metadata().get("user-agent").is_none(),
                "the token header must not reach Ballista"
            );
        })
    }

    #[test]
    fn tokens_are_checked() {
        let token = ClusterToken::new(GOOD).unwrap();
        let mut check = TokenCheck::new(Some(token.clone()));
        let ua = format!("{} tonic/0.14.9", token.user_agent());
        assert!(call_with(&mut check, Some(&ua)).is_ok());
        for bad in [
            None,
            Some("tonic/0.14.9"),
            Some("voxelscan-token/0123456789abcdef012 tonic/0.14.9"),
            Some("voxelscan-token/0123456789abcdef01234 tonic/0.14.9"),
            Some("voxelscan-token/"),
        ] {
            let e = call_with(&mut check, bad).unwrap_err();
            assert_eq!(e.code(), tonic::Code::Unauthenticated, "{bad:?}");
        }
        let e = call_with(&mut check, None).unwrap_err();
        assert!(e.message().contains("VOXELSCAN_CLUSTER_TOKEN"), "{e}");
        // No token configured: everything passes.
        assert!(call_with(&mut TokenCheck::new(None), None).is_ok());
    }

    #[test]
    fn token_text_rules() {
        assert!(ClusterToken::new(GOOD).is_ok());
        for bad in ["short", "0123456789abcdef 0123", "0123456789abcdef\n0123"] {
            assert!(ClusterToken::new(bad).is_err(), "{bad:?}");
        }
        assert!(ClusterToken::new(&"x".repeat(MAX_LEN + 1)).is_err());
        let shown = format!("{:?}", ClusterToken::new(GOOD).unwrap());
        assert!(!shown.contains("0123"), "{shown}");
    }

    #[test]
    fn token_files_must_be_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, format!("{GOOD}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = ClusterToken::from_file(&path).unwrap_err().to_string();
        assert!(e.contains("chmod 600") && e.contains("token"), "{e}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let token = ClusterToken::from_file(&path).unwrap();
        assert!(token.accepts(GOOD.as_bytes()));
        let e = ClusterToken::from_file(dir.path()).unwrap_err().to_string();
        assert!(e.contains("not a regular file"), "{e}");
    }

    #[test]
    fn non_loopback_binds_need_a_token() {
        let token = ClusterToken::new(GOOD).unwrap();
        for host in ["127.0.0.1", "::1", "localhost", "127.0.0.2"] {
            assert!(check_bind(host, 50050, None).is_ok(), "{host}");
        }
        for host in ["0.0.0.0", "::", "192.168.1.10"] {
            let e = check_bind(host, 50050, None).unwrap_err().to_string();
            assert!(
                e.contains("refusing to listen") && e.contains("VOXELSCAN_CLUSTER_TOKEN"),
                "{e}"
            );
            assert!(check_bind(host, 50050, Some(&token)).is_ok());
        }
    }
}
