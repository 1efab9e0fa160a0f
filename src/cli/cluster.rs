//! `voxelscan scheduler` and `voxelscan executor`: the processes of a Ballista cluster that runs voxel queries
//! (`voxelscan sql --cluster df://HOST:PORT`).

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{CliError, CliResult};
use voxelscan::cluster::{ClientTls, ClusterToken, ExecutorSettings, SchedulerSettings, ServerTls};

/// Start a Ballista scheduler that plans voxel queries.
///
/// Clients connect with `voxelscan sql --cluster df://HOST:PORT`, executors with `voxelscan executor --scheduler
/// HOST:PORT`. Runs until interrupted. With a cluster token (`VOXELSCAN_CLUSTER_TOKEN` or `--token-file`), every
/// call must carry it; without one, only a loopback address can be used.
#[derive(Debug, clap::Args)]
pub struct SchedulerArgs {
    /// Address to listen on (an address other machines reach, e.g. 0.0.0.0:PORT, needs a cluster token).
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:50050")]
    pub bind: String,
    /// Host name executors and clients reach this scheduler by.
    #[arg(long, value_name = "HOST")]
    pub external_host: Option<String>,
    /// Seconds without a heartbeat after which an executor counts as lost (its tasks then run elsewhere).
    #[arg(long, value_name = "SECS", default_value_t = 180)]
    pub executor_timeout: u64,
    #[command(flatten)]
    pub security: SecurityArgs,
}

/// Start a Ballista executor that reads voxels for a scheduler's tasks.
///
/// The image files must be readable at the same path (or URL) as on the client; object-store credentials come
/// from this process's environment (`AWS_*`, …). Runs until interrupted or stopped by the scheduler.
#[derive(Debug, clap::Args)]
pub struct ExecutorArgs {
    /// The scheduler to register with.
    #[arg(long, value_name = "HOST:PORT")]
    pub scheduler: String,
    /// Task slots: partitions this executor runs at once (default: the number of cores).
    #[arg(long, value_name = "N")]
    pub concurrency: Option<usize>,
    /// Address of this executor's data (Arrow Flight) service; an address other machines reach (e.g.
    /// 0.0.0.0:PORT) needs a cluster token.
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:50051")]
    pub bind: String,
    /// Not used any more (accepted for old scripts): this executor pulls its tasks from the scheduler and listens
    /// only on its --bind port.
    #[arg(long, value_name = "PORT")]
    pub grpc_port: Option<u16>,
    /// Host name the scheduler and other executors reach this executor by (default: the --bind host).
    #[arg(long, value_name = "HOST")]
    pub external_host: Option<String>,
    /// Directory for shuffle files and spills, created with mode 0700 if missing (default: a new private
    /// directory under the system's temporary directory, removed when the executor stops).
    #[arg(long, value_name = "DIR")]
    pub work_dir: Option<PathBuf>,
    /// Seconds between heartbeats to the scheduler.
    #[arg(long, value_name = "SECS", default_value_t = 60)]
    pub heartbeat: u64,
    #[command(flatten)]
    pub security: SecurityArgs,
}

/// What [`SecurityArgs`] resolve to: the token, TLS to serve, TLS to connect with.
type Security = (
    Option<ClusterToken>,
    Option<ServerTls>,
    Option<Arc<ClientTls>>,
);

/// The cluster token and TLS flags, the same on `scheduler` and `executor`.
#[derive(Debug, clap::Args)]
pub struct SecurityArgs {
    /// File holding the cluster's shared secret (mode 0600), instead of `VOXELSCAN_CLUSTER_TOKEN`.
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// Serve TLS with this certificate chain (PEM; the names or addresses others reach this process by).
    #[arg(long, value_name = "PEM", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Connect to other cluster processes with TLS, trusting only this CA (PEM).
    #[arg(long, value_name = "PEM")]
    pub tls_ca: Option<PathBuf>,
}

impl SecurityArgs {
    /// The token, server TLS and client TLS these flags (and `VOXELSCAN_CLUSTER_TOKEN`) give.
    fn resolve(&self) -> Result<Security, CliError> {
        Ok((
            ClusterToken::resolve(self.token_file.as_deref())?,
            server_tls(self.tls_cert.as_deref(), self.tls_key.as_deref())?,
            client_tls(self.tls_ca.as_deref())?,
        ))
    }
}

/// `HOST:PORT` split at the last colon (the host may be a name; `[::1]:50050` keeps its brackets off).
fn host_port(s: &str, what: &str) -> Result<(String, u16), CliError> {
    let bad = || CliError(format!("{what} '{s}' is not HOST:PORT"));
    let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(bad());
    }
    Ok((host.to_string(), port))
}

/// The server TLS of `--tls-cert` and `--tls-key` (clap makes sure both or neither are given).
fn server_tls(cert: Option<&Path>, key: Option<&Path>) -> Result<Option<ServerTls>, CliError> {
    match (cert, key) {
        (Some(cert), Some(key)) => Ok(Some(ServerTls::load(cert, key)?)),
        _ => Ok(None),
    }
}

/// The client TLS of `--tls-ca`.
pub fn client_tls(ca: Option<&Path>) -> Result<Option<Arc<ClientTls>>, CliError> {
    ca.map(ClientTls::load).transpose().map_err(CliError::from)
}

fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError(format!("cannot start the runtime: {e}")))
}

fn resolve(s: &str) -> Result<SocketAddr, CliError> {
    let addrs = s
        .to_socket_addrs()
        .map_err(|e| CliError(format!("--bind '{s}': {e}")))?;
    addrs
        .into_iter()
        .next()
        .ok_or_else(|| CliError(format!("--bind '{s}' resolves to no address")))
}

pub fn run_scheduler(args: SchedulerArgs) -> CliResult {
    host_port(&args.bind, "--bind")?;
    let mut settings = SchedulerSettings::new(resolve(&args.bind)?);
    settings.external_host = args.external_host;
    settings.executor_timeout_seconds = args.executor_timeout.max(1);
    (settings.token, settings.server_tls, settings.client_tls) = args.security.resolve()?;
    let bind = settings.bind;
    voxelscan::cluster::auth::check_bind(
        &bind.ip().to_string(),
        bind.port(),
        settings.token.as_ref(),
    )?;
    eprintln!(
        "voxelscan scheduler listening on {} (clients: voxelscan sql --cluster df://{}:{})",
        settings.bind,
        settings
            .external_host
            .as_deref()
            .unwrap_or(&settings.bind.ip().to_string()),
        settings.bind.port()
    );
    runtime()?.block_on(voxelscan::cluster::run_scheduler(&settings))?;
    Ok(())
}

pub fn run_executor(args: ExecutorArgs) -> CliResult {
    let (scheduler_host, scheduler_port) = host_port(&args.scheduler, "--scheduler")?;
    let (bind_host, flight_port) = host_port(&args.bind, "--bind")?;
    let mut settings = ExecutorSettings::new(&scheduler_host, scheduler_port);
    settings.bind_host = bind_host;
    settings.flight_port = flight_port;
    settings.grpc_port = args.grpc_port.unwrap_or(flight_port);
    settings.external_host = args.external_host;
    settings.work_dir = args.work_dir;
    settings.heartbeat_seconds = args.heartbeat.max(1);
    (settings.token, settings.server_tls, settings.client_tls) = args.security.resolve()?;
    if let Some(n) = args.concurrency {
        if n == 0 {
            return Err(CliError("--concurrency must be at least 1".into()));
        }
        settings.concurrency = n;
    }
    let config = voxelscan::cluster::executor_config(&settings)?;
    eprintln!(
        "voxelscan executor {} on {}:{} (gRPC {}), {} task slots, scheduler {}:{}, work dir {}",
        config.executor_id,
        settings.bind_host,
        flight_port,
        config.grpc_port,
        config.vcores,
        scheduler_host,
        scheduler_port,
        config.work_dir.as_deref().unwrap_or("?")
    );
    let host = settings
        .external_host
        .clone()
        .unwrap_or_else(|| settings.bind_host.clone());
    voxelscan::table::scan::set_executor_label(format!(
        "{} at {host}:{}",
        config.executor_id, config.grpc_port
    ));
    runtime()?.block_on(voxelscan::cluster::run_executor(config))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_ports() {
        assert_eq!(host_port("a.b:1", "x").unwrap(), ("a.b".to_string(), 1));
        assert_eq!(
            host_port("[::1]:50050", "x").unwrap(),
            ("::1".to_string(), 50050)
        );
        assert!(host_port("a.b", "x").is_err());
        assert!(host_port(":1", "x").is_err());
        let e = host_port("h:99999", "--scheduler").unwrap_err();
        assert!(
            e.0.contains("--scheduler 'h:99999' is not HOST:PORT"),
            "{}",
            e.0
        );
    }
}
