//! Distributed queries on Apache Ballista: the same SQL over voxels, planned by a scheduler and read by executors.
//!
//! ```text
//! client (voxelscan sql --cluster)     DDL and table functions run here: VoxelTable from the headers
//!   └ logical plan ─ VoxelLogicalCodec ─► scheduler (voxelscan scheduler)
//!        VoxelTable rebuilt from its facts (no I/O) ─► scan(): slabs ─► file groups ─► stages and tasks
//!        each task's plan keeps only its partitions ─ VoxelPhysicalCodec ─► executors (voxelscan executor)
//!             DataSourceExec(FileScanConfig + VoxelSource) ─► reads its slabs' byte ranges from shared storage
//! ```
//!
//! What every node must share: the image files at the same absolute path (a shared filesystem) or the same URL,
//! and, for object storage, the credentials in each executor's environment. Client, scheduler and
//! executors must run the same voxelscan version (the wire format is versioned, [`wire`]). Every call between them
//! carries the cluster's shared secret when one is set ([`auth`]); a process refuses to listen on a non-loopback
//! address without one.

pub mod auth;
pub mod codec;
pub mod process;
pub mod tls;
pub mod wire;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ballista::prelude::{SessionConfigExt, SessionContextExt};
use datafusion::common::{DataFusionError, Result as DfResult};
use datafusion::execution::SessionStateBuilder;
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use datafusion::execution::session_state::SessionState;
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::{SessionConfig, SessionContext};

use crate::table::stores::LazyStoreRegistry;
use crate::table::{register_voxel_formats, with_voxels};

pub use auth::ClusterToken;
pub use codec::{VoxelLogicalCodec, VoxelPhysicalCodec};
pub use process::{
    ExecutorSettings, SchedulerHandle, SchedulerSettings, WorkDir, executor_config, run_executor,
    run_scheduler, scheduler_config, start_scheduler, start_scheduler_with,
};
pub use tls::{ClientTls, ServerTls};

/// `config` with the voxel codecs installed (Ballista reads them from the session config).
pub fn with_codecs(config: SessionConfig) -> SessionConfig {
    config
        .with_ballista_logical_extension_codec(Arc::new(VoxelLogicalCodec::default()))
        .with_ballista_physical_extension_codec(Arc::new(VoxelPhysicalCodec::default()))
}

/// Ballista's session defaults with the voxel codecs.
pub fn ballista_config() -> SessionConfig {
    // With voxelscan's settings, so `SET voxelscan.…` reaches the executors' sessions.
    crate::table::config::with_voxelscan_options(with_codecs(SessionConfig::new_with_ballista()))
}

/// `config` whose gRPC and Flight clients (to the scheduler, result fetches from executors) carry `token`;
/// unchanged without one. For `remote_context` on a cluster that has a token.
pub fn with_token(config: SessionConfig, token: Option<&ClusterToken>) -> SessionConfig {
    with_client_security(config, token, None)
}

/// `config` whose gRPC and Flight clients carry `token` and connect with TLS trusting `tls`'s CA (either may be
/// absent).
pub fn with_client_security(
    config: SessionConfig,
    token: Option<&ClusterToken>,
    tls: Option<&Arc<ClientTls>>,
) -> SessionConfig {
    match auth::endpoint_override(token, tls) {
        Some(f) => config.with_ballista_override_create_grpc_client_endpoint(f),
        None => config,
    }
}

/// A runtime whose object stores are created on first use from the URL and the environment
/// ([`LazyStoreRegistry`]: `COPY … TO 's3://…'`, Parquet tables in stores); spill files go to `temp_dir`. (Voxel
/// scans of URLs read through the table's own stores, configured by its options and the environment.)
pub fn runtime_env(temp_dir: Option<&Path>) -> DfResult<Arc<RuntimeEnv>> {
    let mut builder =
        RuntimeEnvBuilder::new().with_object_store_registry(Arc::new(LazyStoreRegistry::new()));
    if let Some(dir) = temp_dir {
        builder = builder.with_temp_file_path(dir);
    }
    builder.build_arc()
}

/// The client's session state: DataFusion's defaults, the voxel factories, the codecs and lazy object stores.
/// `config` is upgraded to a Ballista config if it is not one already, and given voxelscan's settings: a client's
/// `SET voxelscan.…` then travels with its queries to the scheduler and the executors' tasks.
pub fn session_state(config: SessionConfig) -> DfResult<SessionState> {
    let config =
        crate::table::config::with_voxelscan_options(with_codecs(config.upgrade_for_ballista()));
    let builder = SessionStateBuilder::new()
        .with_default_features()
        .with_config(config)
        .with_runtime_env(runtime_env(None)?);
    Ok(with_voxels(builder).build())
}

/// A context whose queries run on an in-process Ballista scheduler and executor (with
/// `ballista.standalone.parallelism` task slots): the whole distributed path, in one process.
pub async fn standalone_context(config: SessionConfig) -> DfResult<SessionContext> {
    let ctx = SessionContext::standalone_with_state(session_state(config)?).await?;
    register_voxel_formats(&ctx);
    Ok(ctx)
}

/// How long [`remote_context`] waits for the scheduler to accept a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A context whose queries run on the Ballista cluster at `url` (`df://HOST:PORT`). Fails when nothing accepts
/// connections there.
pub async fn remote_context(url: &str, config: SessionConfig) -> DfResult<SessionContext> {
    let addr = scheduler_address(url)?;
    let reach = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(&addr));
    match reach.await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => {
            return Err(DataFusionError::Configuration(format!(
                "cannot reach the Ballista scheduler at {url} ({addr}): {e}"
            )));
        }
        Err(_) => {
            return Err(DataFusionError::Configuration(format!(
                "cannot reach the Ballista scheduler at {url} ({addr}): no answer within {}s",
                CONNECT_TIMEOUT.as_secs()
            )));
        }
    }
    let ctx = SessionContext::remote_with_state(url, session_state(config)?).await?;
    register_voxel_formats(&ctx);
    Ok(ctx)
}

/// `COPY … TO 'relative/path'` runs on the executors, whose working directories are not the client's: a relative
/// local target becomes absolute against the client's working directory, as table locations do. URLs and absolute
/// paths are left alone, and so is every other plan.
pub fn absolute_copy_target(plan: LogicalPlan) -> DfResult<LogicalPlan> {
    match plan {
        LogicalPlan::Copy(mut copy)
            if !copy.output_url.contains("://") && !copy.output_url.starts_with('/') =>
        {
            let cwd = std::env::current_dir().map_err(|e| {
                DataFusionError::Execution(format!(
                    "COPY TO '{}': cannot resolve a relative path: {e}",
                    copy.output_url
                ))
            })?;
            // Joined as text: a trailing '/' (write a directory) must survive.
            copy.output_url = format!("{}/{}", cwd.display(), copy.output_url);
            Ok(LogicalPlan::Copy(copy))
        }
        other => Ok(other),
    }
}

/// `HOST:PORT` of a `df://HOST:PORT` URL (port 50050 when left out, as Ballista does).
pub fn scheduler_address(url: &str) -> DfResult<String> {
    let bad = |why: &str| {
        DataFusionError::Configuration(format!(
            "cluster URL '{url}' {why}: expected df://HOST:PORT"
        ))
    };
    let parsed = url::Url::parse(url).map_err(|e| bad(&e.to_string()))?;
    if parsed.scheme() != "df" {
        return Err(bad("has the wrong scheme"));
    }
    let host = parsed.host_str().ok_or_else(|| bad("has no host"))?;
    Ok(format!("{host}:{}", parsed.port().unwrap_or(50050)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scheduler_urls() {
        assert_eq!(
            scheduler_address("df://127.0.0.1:1234").unwrap(),
            "127.0.0.1:1234"
        );
        assert_eq!(
            scheduler_address("df://localhost").unwrap(),
            "localhost:50050"
        );
        let e = scheduler_address("http://localhost:1").unwrap_err();
        assert!(e.to_string().contains("wrong scheme"), "{e}");
        assert!(scheduler_address("df:nohost").is_err());
        assert!(scheduler_address("localhost:50050").is_err());
    }

    #[tokio::test]
    async fn relative_copy_targets_become_absolute() {
        let ctx = SessionContext::new();
        let cwd = std::env::current_dir().unwrap().display().to_string();
        for (target, want) in [
            ("out/", format!("{cwd}/out/")),
            ("x.parquet", format!("{cwd}/x.parquet")),
            ("/abs/x.parquet", "/abs/x.parquet".to_string()),
            ("s3://bucket/x.parquet", "s3://bucket/x.parquet".to_string()),
        ] {
            let sql = format!("COPY (SELECT 1 AS a) TO '{target}' STORED AS PARQUET");
            let plan = ctx.state().create_logical_plan(&sql).await.unwrap();
            match absolute_copy_target(plan).unwrap() {
                LogicalPlan::Copy(c) => assert_eq!(c.output_url, want),
                other => panic!("not a copy: {other}"),
            }
        }
        let plan = ctx.state().create_logical_plan("SELECT 1").await.unwrap();
        let same = absolute_copy_target(plan.clone()).unwrap();
        assert_eq!(same, plan);
    }

    #[tokio::test]
    async fn an_unreachable_scheduler_is_a_clear_error() {
        // A port just released: nothing listens there.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let Err(e) = remote_context(&format!("df://127.0.0.1:{port}"), SessionConfig::new()).await
        else {
            panic!("connected to a closed port");
        };
        assert!(
            e.to_string()
                .contains("cannot reach the Ballista scheduler"),
            "{e}"
        );
    }
}
