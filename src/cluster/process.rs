//! Scheduler and executor processes: stock Ballista, configured with the voxel codecs, Ballista's session
//! defaults, and runtimes whose object stores are created from the URL on first use.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use ballista_core::RuntimeProducer;
use ballista_executor::executor_process::{ExecutorProcessConfig, start_executor_process};
use ballista_scheduler::cluster::BallistaCluster;
use ballista_scheduler::config::SchedulerConfig;
use ballista_scheduler::scheduler_process::{create_scheduler, start_grpc_service_with_listener};
use ballista_scheduler::scheduler_server::SchedulerServer;
use datafusion::common::Result as DfResult;
use datafusion::execution::SessionStateBuilder;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::execution::session_state::SessionState;
use datafusion::prelude::SessionConfig;
use datafusion_proto::protobuf::{LogicalPlanNode, PhysicalPlanNode};
use tokio::task::JoinHandle;

use crate::error::{Result, VoxelError};
use crate::table::with_voxels;

use crate::table::stores::LazyStoreRegistry;

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
}

impl SchedulerSettings {
    pub fn new(bind: SocketAddr) -> SchedulerSettings {
        SchedulerSettings {
            bind,
            external_host: None,
            executor_timeout_seconds: SchedulerConfig::default().executor_timeout_seconds,
        }
    }
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
        override_logical_codec: Some(Arc::new(VoxelLogicalCodec::default())),
        override_physical_codec: Some(Arc::new(VoxelPhysicalCodec::default())),
        override_config_producer: Some(Arc::new(ballista_config)),
        override_session_builder: Some(Arc::new(scheduler_session)),
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

/// Start a scheduler serving on `listener`, in the background.
pub async fn start_scheduler(
    listener: tokio::net::TcpListener,
    config: SchedulerConfig,
) -> Result<SchedulerHandle> {
    let addr = listener
        .local_addr()
        .map_err(|e| ballista_error("scheduler address", e))?;
    config
        .validate()
        .map_err(|e| ballista_error("scheduler configuration", e))?;
    let cluster = BallistaCluster::new_from_config(&config)
        .await
        .map_err(|e| ballista_error("scheduler state", e))?;
    let server = create_scheduler::<LogicalPlanNode, PhysicalPlanNode>(cluster, Arc::new(config))
        .await
        .map_err(|e| ballista_error("starting the scheduler", e))?;
    let serving = server.clone();
    let task = tokio::spawn(async move {
        start_grpc_service_with_listener(listener, serving)
            .await
            .map_err(|e| ballista_error("scheduler service", e))
    });
    Ok(SchedulerHandle { server, addr, task })
}

/// `voxelscan scheduler`: listen on `settings.bind` and serve until the process ends.
pub async fn run_scheduler(settings: &SchedulerSettings) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(settings.bind)
        .await
        .map_err(|e| ballista_error(&format!("cannot listen on {}", settings.bind), e))?;
    start_scheduler(listener, scheduler_config(settings))
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
    /// Arrow Flight port (shuffle data is fetched from here).
    pub flight_port: u16,
    /// gRPC port (the scheduler launches tasks here).
    pub grpc_port: u16,
    /// Task slots: partitions run at once.
    pub concurrency: usize,
    /// Shuffle files and spills (default: a new directory under the system's temporary directory).
    pub work_dir: Option<PathBuf>,
    /// Seconds between heartbeats to the scheduler.
    pub heartbeat_seconds: u64,
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
        }
    }
}

/// A runtime producer sharing one registry of lazily created stores across tasks (so S3 clients are reused).
fn runtime_producer(work_dir: PathBuf) -> RuntimeProducer {
    let stores = Arc::new(LazyStoreRegistry::new());
    Arc::new(move |_config: &SessionConfig| {
        RuntimeEnvBuilder::new()
            .with_object_store_registry(Arc::clone(&stores) as _)
            .with_temp_file_path(&work_dir)
            .build_arc()
    })
}

/// Ballista's executor configuration for `settings`, with this crate's codecs and runtime. Creates the work
/// directory.
pub fn executor_config(settings: &ExecutorSettings) -> Result<ExecutorProcessConfig> {
    let work_dir = match &settings.work_dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!(
            "voxelscan-executor-{}-{}",
            std::process::id(),
            settings.grpc_port
        )),
    };
    std::fs::create_dir_all(&work_dir).map_err(|e| VoxelError::io(&work_dir, e))?;
    let work_dir_str = work_dir.to_str().ok_or_else(|| {
        VoxelError::Invalid(format!(
            "{}: the work directory must be a UTF-8 path",
            work_dir.display()
        ))
    })?;
    Ok(ExecutorProcessConfig {
        scheduler_host: settings.scheduler_host.clone(),
        scheduler_port: settings.scheduler_port,
        bind_host: settings.bind_host.clone(),
        external_host: settings
            .external_host
            .clone()
            .or_else(|| Some(settings.bind_host.clone())),
        port: settings.flight_port,
        grpc_port: settings.grpc_port,
        vcores: settings.concurrency.max(1),
        work_dir: Some(work_dir_str.to_string()),
        executor_heartbeat_interval_seconds: settings.heartbeat_seconds.max(1),
        override_logical_codec: Some(Arc::new(VoxelLogicalCodec::default())),
        override_physical_codec: Some(Arc::new(VoxelPhysicalCodec::default())),
        override_config_producer: Some(Arc::new(ballista_config)),
        override_runtime_producer: Some(runtime_producer(work_dir)),
        ..Default::default()
    })
}

/// Run an executor until it is stopped (Ctrl-C, SIGTERM, or the scheduler asks it to).
pub async fn run_executor(config: ExecutorProcessConfig) -> Result<()> {
    let scheduler = format!("{}:{}", config.scheduler_host, config.scheduler_port);
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

        let dir = tempfile::tempdir().unwrap();
        let mut e = ExecutorSettings::new("sched", 50123);
        e.work_dir = Some(dir.path().join("work"));
        e.concurrency = 0;
        let c = executor_config(&e).unwrap();
        assert_eq!(
            (c.scheduler_host.as_str(), c.scheduler_port, c.vcores),
            ("sched", 50123, 1)
        );
        assert!(dir.path().join("work").is_dir());
        let runtime = (c.override_runtime_producer.unwrap())(&SessionConfig::new()).unwrap();
        let url = datafusion::execution::object_store::ObjectStoreUrl::local_filesystem();
        assert!(runtime.object_store(&url).is_ok());
    }
}
