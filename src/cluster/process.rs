//! Scheduler and executor processes: stock Ballista, configured with the voxel codecs, Ballista's session
//! defaults, and runtimes whose object stores are created from the URL on first use.
//!
//! Tasks are pulled: executors ask the scheduler for work (`PullStaged`), so an executor listens only for Arrow
//! Flight (shuffle and result fetches). Ballista 55's push mode starts an executor gRPC service (where the
//! scheduler launches tasks) with no hook for checking callers; in pull mode it is never started. The scheduler's
//! gRPC service and the executors' Flight services are assembled here from Ballista's own services, behind the
//! cluster token check ([`super::auth`]).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use arrow_flight::flight_service_server::FlightServiceServer;
use ballista_core::config::TaskSchedulingPolicy;
use ballista_core::error::BallistaError;
use ballista_core::serde::protobuf::scheduler_grpc_server::SchedulerGrpcServer;
use ballista_core::utils::{GrpcServerConfig, create_grpc_server};
use ballista_core::{ConfigProducer, RuntimeProducer};
use ballista_executor::ArrowFlightServerProvider;
use ballista_executor::executor_process::{ExecutorProcessConfig, start_executor_process};
use ballista_executor::flight_service::BallistaFlightService;
use ballista_executor::shutdown::Shutdown;
use ballista_scheduler::cluster::BallistaCluster;
use ballista_scheduler::config::SchedulerConfig;
use ballista_scheduler::scheduler_process::create_scheduler;
use ballista_scheduler::scheduler_server::SchedulerServer;
use datafusion::common::Result as DfResult;
use datafusion::execution::SessionStateBuilder;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::execution::session_state::SessionState;
use datafusion::prelude::SessionConfig;
use datafusion_proto::protobuf::{LogicalPlanNode, PhysicalPlanNode};
use tokio::task::JoinHandle;

use crate::error::{Result, VoxelError};
use crate::table::stores::LazyStoreRegistry;
use crate::table::with_voxels;

use super::auth::{ClusterToken, TokenCheck, check_bind, endpoint_override};
use super::tls::{ClientTls, ServerTls};
use super::{VoxelLogicalCodec, VoxelPhysicalCodec, ballista_config};

fn ballista_error(what: &str, e: impl std::fmt::Display) -> VoxelError {
    VoxelError::Invalid(format!("{what}: {e}"))
}

/// How `voxelscan scheduler` runs.
#[derive(Debug, Clone)]
pub struct SchedulerSettings {
    /// Address the gRPC service listens on.
    pub bind: SocketAddr,
    /// Host name others reach this scheduler by (default `localhost`).
    pub external_host: Option<String>,
    /// Seconds without a heartbeat after which an executor counts as lost and its tasks are run elsewhere.
    pub executor_timeout_seconds: u64,
    /// The cluster's shared secret (required to listen on a non-loopback address).
    pub token: Option<ClusterToken>,
    /// Serve TLS with this certificate.
    pub server_tls: Option<ServerTls>,
    /// Connect to executors with TLS, trusting this CA.
    pub client_tls: Option<Arc<ClientTls>>,
}

impl SchedulerSettings {
    pub fn new(bind: SocketAddr) -> SchedulerSettings {
        SchedulerSettings {
            bind,
            external_host: None,
            executor_timeout_seconds: SchedulerConfig::default().executor_timeout_seconds,
            token: None,
            server_tls: None,
            client_tls: None,
        }
    }
}

/// A session-config producer: Ballista's defaults, the voxel codecs and the endpoint override that makes every
/// gRPC/Flight client Ballista creates from a session (shuffle reads, result fetches) carry the token and use TLS.
fn config_producer(token: Option<ClusterToken>, tls: Option<Arc<ClientTls>>) -> ConfigProducer {
    Arc::new(move || super::with_client_security(ballista_config(), token.as_ref(), tls.as_ref()))
}

/// The scheduler's session: Ballista's (its optimizer rules and functions) plus the voxel factories and a runtime
/// with lazily created object stores. The scheduler reads no file: tables arrive as facts ([`super::wire`]).
fn scheduler_session(config: SessionConfig) -> DfResult<SessionState> {
    let state = ballista_core::utils::default_session_builder(config)?;
    let builder =
        SessionStateBuilder::new_from_existing(state).with_runtime_env(super::runtime_env(None)?);
    Ok(with_voxels(builder).build())
}

/// Ballista's scheduler configuration for `settings`, with this crate's codecs and session.
pub fn scheduler_config(settings: &SchedulerSettings) -> SchedulerConfig {
    let defaults = SchedulerConfig::default();
    // Ballista warns unless expiry is checked more often than the timeout.
    let expire_every = defaults
        .expire_dead_executor_interval_seconds
        .min(settings.executor_timeout_seconds.saturating_sub(1).max(1));
    SchedulerConfig {
        bind_host: settings.bind.ip().to_string(),
        bind_port: settings.bind.port(),
        external_host: settings
            .external_host
            .clone()
            .unwrap_or(defaults.external_host.clone()),
        executor_timeout_seconds: settings.executor_timeout_seconds,
        expire_dead_executor_interval_seconds: expire_every,
        no_executors_grace_period_seconds: settings.executor_timeout_seconds,
        scheduling_policy: TaskSchedulingPolicy::PullStaged,
        override_logical_codec: Some(Arc::new(VoxelLogicalCodec::default())),
        override_physical_codec: Some(Arc::new(VoxelPhysicalCodec::default())),
        override_config_producer: Some(config_producer(
            settings.token.clone(),
            settings.client_tls.clone(),
        )),
        override_session_builder: Some(Arc::new(scheduler_session)),
        override_create_grpc_client_endpoint: endpoint_override(
            settings.token.as_ref(),
            settings.client_tls.as_ref(),
        ),
        ..defaults
    }
}

/// A scheduler serving in the background of this process.
pub struct SchedulerHandle {
    server: SchedulerServer<LogicalPlanNode, PhysicalPlanNode>,
    addr: SocketAddr,
    task: JoinHandle<Result<()>>,
}

impl SchedulerHandle {
    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The ids of the executors registered now (an executor stays listed until it stops or times out).
    pub async fn executors(&self) -> Result<Vec<String>> {
        let state = self
            .server
            .state
            .executor_manager
            .get_executors_state()
            .await
            .map_err(|e| ballista_error("listing executors", e))?;
        let mut ids: Vec<String> = state.into_iter().map(|(meta, _, _)| meta.id).collect();
        ids.sort();
        Ok(ids)
    }

    /// Wait until the service ends (it runs until the process ends unless it fails).
    pub async fn join(self) -> Result<()> {
        self.task
            .await
            .map_err(|e| ballista_error("scheduler service", e))?
    }

    /// Stop serving.
    pub fn abort(&self) {
        self.task.abort();
    }
}

/// Start a scheduler serving on `listener`, in the background, without a token (only on a loopback address).
pub async fn start_scheduler(
    listener: tokio::net::TcpListener,
    config: SchedulerConfig,
) -> Result<SchedulerHandle> {
    start_scheduler_with(listener, config, None, None).await
}

/// Start a scheduler serving on `listener`, in the background; with a token, every call must carry it (without
/// one, `listener` must be on a loopback address); with `tls`, over TLS.
pub async fn start_scheduler_with(
    listener: tokio::net::TcpListener,
    config: SchedulerConfig,
    token: Option<ClusterToken>,
    tls: Option<ServerTls>,
) -> Result<SchedulerHandle> {
    let addr = listener
        .local_addr()
        .map_err(|e| ballista_error("scheduler address", e))?;
    check_bind(&addr.ip().to_string(), addr.port(), token.as_ref())?;
    config
        .validate()
        .map_err(|e| ballista_error("scheduler configuration", e))?;
    let cluster = BallistaCluster::new_from_config(&config)
        .await
        .map_err(|e| ballista_error("scheduler state", e))?;
    let server = create_scheduler::<LogicalPlanNode, PhysicalPlanNode>(cluster, Arc::new(config))
        .await
        .map_err(|e| ballista_error("starting the scheduler", e))?;
    let check = TokenCheck::new(token);
    let task = match tls {
        None => tokio::spawn(serve_scheduler(listener, server.clone(), check)),
        Some(tls) => tokio::spawn(serve_scheduler_tls(listener, server.clone(), check, tls)),
    };
    Ok(SchedulerHandle { server, addr, task })
}

/// Over TLS: the same service served by tonic from the TLS connections (without the peer address that axum
/// would add: Ballista needs it only for executors that register without a host name, and ours always give one).
async fn serve_scheduler_tls(
    listener: tokio::net::TcpListener,
    server: SchedulerServer<LogicalPlanNode, PhysicalPlanNode>,
    check: TokenCheck,
    tls: ServerTls,
) -> Result<()> {
    let config = server.state.config.clone();
    let grpc = SchedulerGrpcServer::new(server)
        .max_encoding_message_size(config.grpc_server_max_encoding_message_size as usize)
        .max_decoding_message_size(config.grpc_server_max_decoding_message_size as usize);
    create_grpc_server(&GrpcServerConfig::default())
        .add_service(tonic::service::interceptor::InterceptedService::new(
            grpc, check,
        ))
        .serve_with_incoming(tls.incoming(listener))
        .await
        .map_err(|e| ballista_error("scheduler service", e))
}

/// The scheduler's gRPC service behind the token check, served as Ballista serves it (axum, with the peer's
/// address, which Ballista reads when an executor registers without a host name). Ballista's REST API is not
/// built, and the embedded Flight proxy stays off (clients fetch results from the executors).
async fn serve_scheduler(
    listener: tokio::net::TcpListener,
    server: SchedulerServer<LogicalPlanNode, PhysicalPlanNode>,
    check: TokenCheck,
) -> Result<()> {
    let config = server.state.config.clone();
    let grpc = SchedulerGrpcServer::new(server)
        .max_encoding_message_size(config.grpc_server_max_encoding_message_size as usize)
        .max_decoding_message_size(config.grpc_server_max_decoding_message_size as usize);
    let mut routes = tonic::service::RoutesBuilder::default();
    routes.add_service(tonic::service::interceptor::InterceptedService::new(
        grpc, check,
    ));
    let app = routes
        .routes()
        .into_axum_router()
        .into_make_service_with_connect_info::<SocketAddr>();
    axum::serve(listener, app)
        .await
        .map_err(|e| ballista_error("scheduler service", e))
}

/// `voxelscan scheduler`: listen on `settings.bind` and serve until the process ends.
pub async fn run_scheduler(settings: &SchedulerSettings) -> Result<()> {
    let bind = settings.bind;
    check_bind(&bind.ip().to_string(), bind.port(), settings.token.as_ref())?;
    let listener = tokio::net::TcpListener::bind(bind)
        .await
        .map_err(|e| ballista_error(&format!("cannot listen on {bind}"), e))?;
    start_scheduler_with(
        listener,
        scheduler_config(settings),
        settings.token.clone(),
        settings.server_tls.clone(),
    )
    .await?
    .join()
    .await
}

/// How `voxelscan executor` runs.
#[derive(Debug, Clone)]
pub struct ExecutorSettings {
    pub scheduler_host: String,
    pub scheduler_port: u16,
    /// Address the executor's services listen on.
    pub bind_host: String,
    /// Host name the scheduler and other executors reach this one by (default: `bind_host`).
    pub external_host: Option<String>,
    /// Arrow Flight port (shuffle data and results are fetched from here).
    pub flight_port: u16,
    /// Not used: tasks are pulled from the scheduler, and the executor registers its Flight port as its gRPC port
    /// (see [`executor_config`]).
    pub grpc_port: u16,
    /// Task slots: partitions run at once.
    pub concurrency: usize,
    /// Shuffle files and spills (default: a new private directory under the system's temporary directory,
    /// removed when the executor ends).
    pub work_dir: Option<PathBuf>,
    /// Seconds between heartbeats to the scheduler.
    pub heartbeat_seconds: u64,
    /// The cluster's shared secret (required to listen on a non-loopback address).
    pub token: Option<ClusterToken>,
    /// Serve Flight over TLS with this certificate.
    pub server_tls: Option<ServerTls>,
    /// Connect to the scheduler and other executors with TLS, trusting this CA.
    pub client_tls: Option<Arc<ClientTls>>,
}

impl ExecutorSettings {
    pub fn new(scheduler_host: &str, scheduler_port: u16) -> ExecutorSettings {
        let defaults = ExecutorProcessConfig::default();
        ExecutorSettings {
            scheduler_host: scheduler_host.to_string(),
            scheduler_port,
            bind_host: defaults.bind_host.clone(),
            external_host: None,
            flight_port: defaults.port,
            grpc_port: defaults.grpc_port,
            concurrency: std::thread::available_parallelism().map_or(1, |n| n.get()),
            work_dir: None,
            heartbeat_seconds: defaults.executor_heartbeat_interval_seconds,
            token: None,
            server_tls: None,
            client_tls: None,
        }
    }
}

/// The executor's work directory: the one asked for (created private if missing), or a new private one with an
/// unpredictable name, removed when the last holder of the returned guard drops it.
pub struct WorkDir {
    path: PathBuf,
    /// Ours to remove (None: the operator's directory, left alone).
    _ours: Option<tempfile::TempDir>,
}

/// Shuffle files are other jobs' data: an existing work directory must be a directory of this user that nobody
/// else can write to (they could plant or swap files in it), else it is refused.
fn check_private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::symlink_metadata(dir).map_err(|e| VoxelError::io(dir, e))?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if !meta.is_dir() || meta.uid() != me || meta.mode() & 0o022 != 0 {
        return Err(VoxelError::Invalid(format!(
            "{}: a work directory must be a directory of this user that others cannot write to (chmod 700 it, or \
             leave --work-dir out for a private temporary one)",
            dir.display()
        )));
    }
    Ok(())
}

impl WorkDir {
    /// `asked`, created with mode 0700 (and missing parents) if it does not exist, or a new
    /// `voxelscan-executor-XXXXXX` directory (mode 0700) under the system's temporary directory.
    pub fn create(asked: Option<&Path>) -> Result<WorkDir> {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        match asked {
            Some(dir) => {
                let existed = dir.exists();
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(dir)
                    .map_err(|e| VoxelError::io(dir, e))?;
                if !existed {
                    // Whatever the umask made of it.
                    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                        .map_err(|e| VoxelError::io(dir, e))?;
                }
                check_private_dir(dir)?;
                Ok(WorkDir {
                    path: dir.to_path_buf(),
                    _ours: None,
                })
            }
            None => {
                // A random suffix, created exclusively (mkdir fails on an existing name), mode 0700.
                let temp = tempfile::Builder::new()
                    .prefix("voxelscan-executor-")
                    .permissions(std::fs::Permissions::from_mode(0o700))
                    .tempdir()
                    .map_err(|e| VoxelError::io(std::env::temp_dir(), e))?;
                Ok(WorkDir {
                    path: temp.path().to_path_buf(),
                    _ours: Some(temp),
                })
            }
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// A runtime producer sharing one registry of lazily created stores across tasks (so S3 clients are reused). It
/// holds the work directory: a directory of ours is removed when the executor (and so the producer) is dropped.
fn runtime_producer(work_dir: Arc<WorkDir>) -> RuntimeProducer {
    let stores = Arc::new(LazyStoreRegistry::new());
    Arc::new(move |_config: &SessionConfig| {
        RuntimeEnvBuilder::new()
            .with_object_store_registry(Arc::clone(&stores) as _)
            .with_temp_file_path(work_dir.path())
            .build_arc()
    })
}

/// Ballista's Arrow Flight service (shuffle and result fetches) behind the token check, served on `listener`,
/// which was bound before the executor registered (a port that cannot be had fails the executor before the
/// scheduler hears of it).
fn flight_service(
    listener: std::net::TcpListener,
    check: TokenCheck,
    tls: Option<ServerTls>,
    max_message_size: (usize, usize),
) -> Arc<ArrowFlightServerProvider> {
    let listener = Mutex::new(Some(listener));
    Arc::new(
        move |work_dir: String,
              _addr: SocketAddr,
              mut shutdown: Shutdown,
              grpc: GrpcServerConfig| {
            let listener = listener.lock().ok().and_then(|mut l| l.take());
            let (check, tls) = (check.clone(), tls.clone());
            tokio::spawn(async move {
                let listener = listener.ok_or_else(|| {
                    BallistaError::General("the Flight service was started twice".into())
                })?;
                let listener = tokio::net::TcpListener::from_std(listener)?;
                let (encoding, decoding) = max_message_size;
                let service = FlightServiceServer::new(BallistaFlightService::new(work_dir))
                    .max_encoding_message_size(encoding)
                    .max_decoding_message_size(decoding);
                let router = create_grpc_server(&grpc).add_service(
                    tonic::service::interceptor::InterceptedService::new(service, check),
                );
                let served = match tls {
                    Some(tls) => {
                        router
                            .serve_with_incoming_shutdown(tls.incoming(listener), shutdown.recv())
                            .await
                    }
                    None => {
                        let incoming = tonic::transport::server::TcpIncoming::from(listener)
                            .with_nodelay(Some(true))
                            .with_keepalive(Some(std::time::Duration::from_secs(
                                grpc.tcp_keepalive_seconds,
                            )));
                        router
                            .serve_with_incoming_shutdown(incoming, shutdown.recv())
                            .await
                    }
                };
                served.map_err(BallistaError::TonicError)
            })
        },
    )
}

/// Bind the executor's Flight port now (non-blocking, for tokio).
fn bind_flight(host: &str, port: u16) -> Result<std::net::TcpListener> {
    let where_ = format!("{host}:{port}");
    let listener = std::net::TcpListener::bind((host, port))
        .map_err(|e| ballista_error(&format!("cannot listen on {where_}"), e))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| ballista_error(&format!("cannot listen on {where_}"), e))?;
    Ok(listener)
}

/// Ballista's executor configuration for `settings`, with this crate's codecs, runtime, token check and pulled
/// tasks. Creates the work directory and binds the Flight port (so an address in use fails here, before the
/// executor registers). Refuses a non-loopback address without a token.
pub fn executor_config(settings: &ExecutorSettings) -> Result<ExecutorProcessConfig> {
    check_bind(
        &settings.bind_host,
        settings.flight_port,
        settings.token.as_ref(),
    )?;
    let work_dir = Arc::new(WorkDir::create(settings.work_dir.as_deref())?);
    let work_dir_str = work_dir
        .path()
        .to_str()
        .ok_or_else(|| {
            VoxelError::Invalid(format!(
                "{}: the work directory must be a UTF-8 path",
                work_dir.path().display()
            ))
        })?
        .to_string();
    let defaults = ExecutorProcessConfig::default();
    let flight = flight_service(
        bind_flight(&settings.bind_host, settings.flight_port)?,
        TokenCheck::new(settings.token.clone()),
        settings.server_tls.clone(),
        (
            defaults.grpc_max_encoding_message_size as usize,
            defaults.grpc_max_decoding_message_size as usize,
        ),
    );
    Ok(ExecutorProcessConfig {
        scheduler_host: settings.scheduler_host.clone(),
        scheduler_port: settings.scheduler_port,
        bind_host: settings.bind_host.clone(),
        external_host: settings
            .external_host
            .clone()
            .or_else(|| Some(settings.bind_host.clone())),
        port: settings.flight_port,
        // The scheduler still calls an executor's gRPC port now and then in pull mode (cancelling tasks,
        // stopping a lost executor), with the token. Nothing of ours listens on a gRPC port, and the token must not
        // go to whatever else might: those calls go to this executor's own Flight service, which checks the token
        // and answers that it has no such method.
        grpc_port: settings.flight_port,
        vcores: settings.concurrency.max(1),
        work_dir: Some(work_dir_str),
        executor_heartbeat_interval_seconds: settings.heartbeat_seconds.max(1),
        task_scheduling_policy: TaskSchedulingPolicy::PullStaged,
        override_logical_codec: Some(Arc::new(VoxelLogicalCodec::default())),
        override_physical_codec: Some(Arc::new(VoxelPhysicalCodec::default())),
        override_config_producer: Some(config_producer(
            settings.token.clone(),
            settings.client_tls.clone(),
        )),
        override_runtime_producer: Some(runtime_producer(work_dir)),
        override_execution_engine: Some(dense_engine()),
        override_arrow_flight_service: Some(flight),
        override_create_grpc_client_endpoint: endpoint_override(
            settings.token.as_ref(),
            settings.client_tls.as_ref(),
        ),
        ..defaults
    })
}

/// DataFusion's engine with dense aggregates put into each stage plan ([`DenseAggregateEngine`]). (Ballista's
/// own default adds a pool of Flight clients for shuffle reads, which it does not export: each read connects anew.)
pub fn dense_engine() -> Arc<dyn ballista_executor::execution_engine::ExecutionEngine> {
    Arc::new(crate::table::aggregate_engine::DenseAggregateEngine::new(
        Arc::new(ballista_executor::execution_engine::DefaultExecutionEngine::new()),
    ))
}

/// Ask the scheduler one harmless question (a job's status) through the endpoint the executor will use: a
/// refused token or a failed TLS handshake is reported now. (Ballista's executor would go on polling and being
/// refused, with nothing but a log line nobody sees.)
async fn check_scheduler_accepts(config: &ExecutorProcessConfig, scheduler: &str) -> Result<()> {
    use ballista_core::serde::protobuf::GetJobStatusParams;
    use ballista_core::serde::protobuf::scheduler_grpc_client::SchedulerGrpcClient;
    let refused = |e: &dyn std::fmt::Display| ballista_error(&format!("scheduler {scheduler}"), e);
    let mut endpoint = tonic::transport::Endpoint::from_shared(format!("http://{scheduler}"))
        .map_err(|e| refused(&e))?
        .connect_timeout(std::time::Duration::from_secs(20));
    if let Some(customize) = &config.override_create_grpc_client_endpoint {
        endpoint = customize(endpoint).map_err(|e| refused(&e))?;
    }
    let channel = endpoint.connect().await.map_err(|e| {
        ballista_error(
            &format!("cannot reach the scheduler at {scheduler}"),
            with_sources(&e),
        )
    })?;
    let question = GetJobStatusParams {
        job_id: "voxelscan-executor-check".into(),
    };
    match SchedulerGrpcClient::new(channel)
        .get_job_status(question)
        .await
    {
        Err(status) if status.code() == tonic::Code::Unauthenticated => Err(ballista_error(
            &format!("the scheduler {scheduler} refused this executor"),
            status.message(),
        )),
        // An unknown job, or its status: the scheduler listened.
        _ => Ok(()),
    }
}

/// An error with the errors under it (tonic's say only "transport error" themselves).
fn with_sources(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(&format!(": {c}"));
        cause = c.source();
    }
    text
}

/// Run an executor until it is stopped (Ctrl-C, SIGTERM, or the scheduler asks it to). Fails at once when the
/// scheduler refuses its token.
pub async fn run_executor(config: ExecutorProcessConfig) -> Result<()> {
    let scheduler = format!("{}:{}", config.scheduler_host, config.scheduler_port);
    check_scheduler_accepts(&config, &scheduler).await?;
    start_executor_process(Arc::new(config))
        .await
        .map_err(|e| ballista_error(&format!("executor (scheduler {scheduler})"), e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ballista::prelude::SessionConfigExt;

    #[test]
    fn configs_carry_the_codecs_and_settings() {
        let mut s = SchedulerSettings::new("127.0.0.1:50123".parse().unwrap());
        s.executor_timeout_seconds = 5;
        let c = scheduler_config(&s);
        assert_eq!((c.bind_host.as_str(), c.bind_port), ("127.0.0.1", 50123));
        assert!(c.expire_dead_executor_interval_seconds < 5);
        let logical = c.override_logical_codec.unwrap();
        assert!((logical.as_ref() as &dyn std::any::Any).is::<VoxelLogicalCodec>());
        let producer = c.override_config_producer.unwrap();
        let physical = producer().ballista_physical_extension_codec();
        assert!((physical.as_ref() as &dyn std::any::Any).is::<VoxelPhysicalCodec>());

        assert!(matches!(
            c.scheduling_policy,
            TaskSchedulingPolicy::PullStaged
        ));

        let dir = tempfile::tempdir().unwrap();
        let mut e = ExecutorSettings::new("sched", 50123);
        e.work_dir = Some(dir.path().join("work"));
        e.concurrency = 0;
        e.flight_port = 0;
        let c = executor_config(&e).unwrap();
        assert_eq!(
            (c.scheduler_host.as_str(), c.scheduler_port, c.vcores),
            ("sched", 50123, 1)
        );
        assert!(matches!(
            c.task_scheduling_policy,
            TaskSchedulingPolicy::PullStaged
        ));
        assert_eq!(
            c.grpc_port, c.port,
            "the scheduler's calls must reach our Flight service"
        );
        assert!(dir.path().join("work").is_dir());
        let runtime = (c.override_runtime_producer.unwrap())(&SessionConfig::new()).unwrap();
        let url = datafusion::execution::object_store::ObjectStoreUrl::local_filesystem();
        assert!(runtime.object_store(&url).is_ok());
    }

    fn mode(path: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn work_dirs_are_private() {
        // Ours: 0700, a random name, gone when dropped.
        let a = WorkDir::create(None).unwrap();
        let b = WorkDir::create(None).unwrap();
        assert_ne!(a.path(), b.path());
        let name = a.path().file_name().unwrap().to_string_lossy().to_string();
        assert!(
            name.starts_with("voxelscan-executor-") && name.len() > 19,
            "{name}"
        );
        assert!(!name.contains(&std::process::id().to_string()), "{name}");
        assert_eq!(mode(a.path()), 0o700);
        let gone = a.path().to_path_buf();
        drop(a);
        assert!(!gone.exists());
        // The operator's: created 0700 with its parents, left in place.
        let dir = tempfile::tempdir().unwrap();
        let asked = dir.path().join("x/work");
        let w = WorkDir::create(Some(&asked)).unwrap();
        assert_eq!(mode(&asked), 0o700);
        drop(w);
        assert!(asked.is_dir());
        // An existing one that others can write to is refused, naming it.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&asked, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = WorkDir::create(Some(&asked)).err().unwrap().to_string();
        assert!(e.contains("work/") || e.contains("work:"), "{e}");
        assert!(e.contains("others cannot write"), "{e}");

        // The default work dir of an executor config lives as long as the config.
        let mut e = ExecutorSettings::new("127.0.0.1", 1);
        e.flight_port = 0;
        let c = executor_config(&e).unwrap();
        let work = PathBuf::from(c.work_dir.clone().unwrap());
        assert_eq!(mode(&work), 0o700);
        drop(c);
        assert!(!work.exists(), "{}", work.display());
    }

    #[test]
    fn non_loopback_addresses_need_a_token() {
        // Refused before anything is bound.
        let mut e = ExecutorSettings::new("127.0.0.1", 1);
        e.bind_host = "0.0.0.0".into();
        e.flight_port = 0;
        let msg = executor_config(&e).err().unwrap().to_string();
        assert!(
            msg.contains("refusing to listen on 0.0.0.0:0") && msg.contains("--token-file"),
            "{msg}"
        );
    }

    #[test]
    fn an_address_in_use_fails_the_executor_config() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut e = ExecutorSettings::new("127.0.0.1", 1);
        e.flight_port = taken.local_addr().unwrap().port();
        let msg = executor_config(&e).err().unwrap().to_string();
        assert!(msg.contains("cannot listen on 127.0.0.1:"), "{msg}");
    }
}
