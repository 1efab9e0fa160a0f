//! Voxel queries on Apache Ballista: in the standalone mode (in-process scheduler and executor) with Ballista's
//! default packing of partitions into tasks and with one partition per task; on an in-process cluster of a real
//! scheduler and two executors over gRPC (the `queries/` suite through `voxelscan sql --cluster`, identical
//! results, tasks on both executors); on a cluster of `voxelscan executor` processes one of which is killed during
//! a query; and with a file that the executors cannot read. Every cluster here has a token (`TOKEN`), as a
//! multi-machine cluster must: callers without it are refused.
//!
//! Data: multi-file tables with many slabs. Values are multiples of 0.5 (int16 scaled by 0.5, +10), so float sums
//! are exact in any order and distributed answers can be compared with DataFusion's text for text.
#![cfg(feature = "ballista")]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ballista::prelude::SessionConfigExt;
use ballista_core::JobId;
use ballista_executor::execution_engine::{
    DefaultExecutionEngine, ExecutionEngine, QueryStageExecutor,
};
use common::certs::make_certificates;
use common::servers::{Garage, Nginx};
use common::{atlas_fixtures, label_image, pattern_image};
use datafusion::arrow::util::pretty::pretty_format_batches;
use datafusion::common::Result as DfResult;
use datafusion::datasource::physical_plan::FileScanConfig;
use datafusion::datasource::source::DataSourceExec;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::{SessionConfig, SessionContext};
use voxelscan::cluster::{
    ClientTls, ClusterToken, ExecutorSettings, SchedulerHandle, SchedulerSettings, ServerTls,
    executor_config, remote_context, run_executor, scheduler_config, standalone_context,
    start_scheduler_with, with_client_security, with_token,
};
use voxelscan::table::aggregate_engine::DenseAggregateEngine;
use voxelscan::table::{VoxelSource, session_context};

/// Three runs of 8, 3.75 and 5 MiB: with 4 partitions the scan has 17 slabs in 4 groups.
const BIG: [[usize; 4]; 3] = [[64, 64, 16, 64], [64, 48, 16, 40], [32, 64, 16, 80]];

fn big_runs(dir: &Path) -> String {
    let runs = dir.join("big");
    std::fs::create_dir_all(&runs).unwrap();
    for (n, shape) in BIG.iter().enumerate() {
        pattern_image(&runs.join(format!("run-{n}.nii")), *shape, n);
    }
    runs.display().to_string()
}

fn big_voxels() -> usize {
    BIG.iter().map(|s| s.iter().product::<usize>()).sum()
}

/// Queries that read every kind of scan: full, exact coordinate filters (several ranges), inexact filters
/// (a FilterExec above the scan), file pruning, a limit. Each makes the scan read values (`count(*)` alone would
/// be answered from the exact statistics). The groupings on `file` hash-shuffle it between executors (it used to
/// be a `Dictionary(UInt16, Utf8)` column, which Ballista 55's shuffle handed back as text and the query failed).
const BIG_QUERIES: [&str; 7] = [
    "SELECT count(value) AS n, sum(value) AS s, sum(t) AS st, min(value) AS lo, max(value) AS hi FROM big",
    "SELECT file, t, count(value) AS n, sum(value) AS s FROM big GROUP BY file, t ORDER BY file, t",
    "SELECT file, count(value) AS n, sum(value) AS s FROM big WHERE t BETWEEN 5 AND 50 AND k IN (1, 7, 9, 12) GROUP BY file ORDER BY file",
    "SELECT k, count(value) AS n, sum(value) AS s FROM big WHERE (i + j) % 7 = 0 GROUP BY k ORDER BY k",
    "SELECT count(value) AS n, sum(value) AS s FROM big WHERE file LIKE '%run-1%' OR j = 3",
    "SELECT count(*) AS n FROM (SELECT value FROM big WHERE j = 3 LIMIT 1000)",
    FILE_T_AVG,
];

/// The per-file, per-volume mean (the benchmark's query, `benches/ballista.rs`).
const FILE_T_AVG: &str = "SELECT file, t, avg(value) FROM big GROUP BY file, t ORDER BY file, t";

async fn text(ctx: &SessionContext, sql: &str) -> DfResult<String> {
    let batches = ctx.sql(sql).await?.collect().await?;
    Ok(pretty_format_batches(&batches)?.to_string())
}

async fn must(ctx: &SessionContext, sql: &str) -> String {
    text(ctx, sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

async fn register_big(ctx: &SessionContext, runs: &str) {
    must(
        ctx,
        &format!("CREATE EXTERNAL TABLE big STORED AS NIFTI LOCATION '{runs}/'"),
    )
    .await;
}

/// DataFusion's own answers (4 partitions), and a check that the scan really has several partitions.
async fn local_answers(runs: &str) -> Vec<String> {
    let ctx = session_context(SessionConfig::new().with_target_partitions(4));
    register_big(&ctx, runs).await;
    let plan = must(&ctx, "EXPLAIN SELECT sum(value) FROM big").await;
    assert!(plan.contains("file_groups={4 groups"), "{plan}");
    let mut out = Vec::new();
    for q in BIG_QUERIES {
        out.push(must(&ctx, q).await);
    }
    assert!(
        out[0].contains(&format!("| {} ", big_voxels())),
        "{}",
        out[0]
    );
    out
}

async fn check_big(ctx: &SessionContext, want: &[String], how: &str) {
    for (q, want) in BIG_QUERIES.iter().zip(want) {
        assert_eq!(&must(ctx, q).await, want, "{how}: {q}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn standalone_answers_equal_datafusion_with_any_task_packing() {
    let dir = tempfile::tempdir().unwrap();
    let runs = big_runs(dir.path());
    let want = local_answers(&runs).await;
    // 4 partitions on 2 task slots: Ballista packs 2 partitions into a task by default; a scan that is not
    // restricted to each task's partitions would return every row twice.
    for per_task in [None, Some(1)] {
        let mut config = SessionConfig::new_with_ballista()
            .with_target_partitions(4)
            .with_ballista_standalone_parallelism(2);
        if let Some(n) = per_task {
            config = config.set_usize("ballista.scheduler.max_partitions_per_task", n);
        }
        let ctx = standalone_context(config).await.unwrap();
        register_big(&ctx, &runs).await;
        check_big(
            &ctx,
            &want,
            &format!("max_partitions_per_task={per_task:?}"),
        )
        .await;
    }
}

// ---------------------------------------------------------------------------------------------------------------
// An in-process cluster: a real scheduler and executors talking gRPC and Arrow Flight on loopback.

/// One task as an executor saw it.
#[derive(Debug, Clone)]
struct TaskSeen {
    executor: String,
    job: String,
    /// Voxel-scan partitions in the task's plan (0 for stages that read shuffles only).
    scan_partitions: usize,
    /// Dense aggregate nodes in the task's plan.
    dense_aggregates: usize,
    /// Scan aggregate nodes in the task's plan.
    scan_aggregates: usize,
    /// Fused join-aggregate nodes in the task's plan.
    join_aggregates: usize,
    /// Voxel scans in the task's plan that filter values before making coordinates (`value_filter=`).
    value_filters: usize,
}

/// Ballista's execution engine, noting every task it is given.
struct Recorder {
    executor: String,
    seen: Arc<Mutex<Vec<TaskSeen>>>,
    inner: DefaultExecutionEngine,
}

fn scan_partitions(plan: &Arc<dyn ExecutionPlan>) -> usize {
    let here = plan
        .downcast_ref::<DataSourceExec>()
        .and_then(|e| e.data_source().downcast_ref::<FileScanConfig>())
        .filter(|c| c.file_source().downcast_ref::<VoxelSource>().is_some())
        .map_or(0, |c| c.file_groups.len());
    here + plan
        .children()
        .into_iter()
        .map(scan_partitions)
        .sum::<usize>()
}

/// Voxel scans in `plan` carrying a value filter (it came through the codec with the task).
fn value_filters(plan: &Arc<dyn ExecutionPlan>) -> usize {
    let here = plan
        .downcast_ref::<DataSourceExec>()
        .and_then(|e| e.data_source().downcast_ref::<FileScanConfig>())
        .and_then(|c| c.file_source().downcast_ref::<VoxelSource>())
        .is_some_and(|s| s.value_filter().is_some());
    usize::from(here)
        + plan
            .children()
            .into_iter()
            .map(value_filters)
            .sum::<usize>()
}

fn dense_aggregates(plan: &Arc<dyn ExecutionPlan>) -> usize {
    nodes_named(plan, "DenseAggregateExec")
}

fn nodes_named(plan: &Arc<dyn ExecutionPlan>, name: &str) -> usize {
    let here = usize::from(plan.name() == name);
    here + plan
        .children()
        .into_iter()
        .map(|c| nodes_named(c, name))
        .sum::<usize>()
}

impl ExecutionEngine for Recorder {
    fn create_query_stage_exec(
        &self,
        job_id: JobId,
        stage_id: usize,
        task_id: usize,
        partitions: Vec<usize>,
        plan: Arc<dyn ExecutionPlan>,
        work_dir: &str,
        config: &SessionConfig,
    ) -> DfResult<Arc<dyn QueryStageExecutor>> {
        if let Ok(mut seen) = self.seen.lock() {
            seen.push(TaskSeen {
                executor: self.executor.clone(),
                job: format!("{job_id:?}"),
                scan_partitions: scan_partitions(&plan),
                dense_aggregates: dense_aggregates(&plan),
                scan_aggregates: nodes_named(&plan, "ScanAggregateExec"),
                join_aggregates: nodes_named(&plan, "JoinAggregateExec"),
                value_filters: value_filters(&plan),
            });
        }
        self.inner.create_query_stage_exec(
            job_id, stage_id, task_id, partitions, plan, work_dir, config,
        )
    }
}

/// The test clusters' shared secret.
const TOKEN: &str = "test-cluster-token-0123456789";

fn token() -> ClusterToken {
    ClusterToken::new(TOKEN).unwrap()
}

/// A client context on the cluster at `url`, carrying the token.
async fn client(url: &str, config: SessionConfig) -> SessionContext {
    remote_context(url, with_token(config, Some(&token())))
        .await
        .unwrap()
}

/// A port nothing listens on right now (executors bind it at once and fail if it was taken since: callers retry).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Cluster {
    scheduler: SchedulerHandle,
    url: String,
    seen: Arc<Mutex<Vec<TaskSeen>>>,
}

async fn wait_for_executors(scheduler: &SchedulerHandle, want: usize) -> Vec<String> {
    let start = Instant::now();
    loop {
        let ids = scheduler.executors().await.unwrap();
        if ids.len() == want {
            return ids;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "executors registered: {ids:?}, expected {want}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn start_scheduler_here(executor_timeout: u64) -> (SchedulerHandle, String) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut settings = SchedulerSettings::new(addr);
    settings.executor_timeout_seconds = executor_timeout;
    settings.token = Some(token());
    let scheduler =
        start_scheduler_with(listener, scheduler_config(&settings), Some(token()), None)
            .await
            .unwrap();
    (scheduler, format!("df://127.0.0.1:{}", addr.port()))
}

/// Ballista's configuration for an in-process executor of the scheduler on `port`, on a free port: a port taken
/// between picking and binding fails `executor_config` at once (it binds), and another is tried.
fn in_process_executor(
    port: u16,
    work_dir: PathBuf,
    slots: usize,
    token: Option<ClusterToken>,
) -> ballista_executor::executor_process::ExecutorProcessConfig {
    let mut last = String::new();
    for _ in 0..5 {
        let mut s = ExecutorSettings::new("127.0.0.1", port);
        s.bind_host = "127.0.0.1".into();
        s.flight_port = free_port();
        s.grpc_port = free_port();
        s.concurrency = slots;
        s.work_dir = Some(work_dir.clone());
        s.token = token.clone();
        match executor_config(&s) {
            Ok(config) => return config,
            Err(e) if e.to_string().contains("cannot listen on") => last = e.to_string(),
            Err(e) => panic!("executor config: {e}"),
        }
    }
    panic!("no free port for an executor after 5 tries: {last}");
}

async fn start_cluster(work: &Path, executors: usize, slots: usize) -> Cluster {
    let (scheduler, url) = start_scheduler_here(180).await;
    let port = scheduler.addr().port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    for n in 0..executors {
        let work_dir = work.join(format!("executor-{n}"));
        let mut config = in_process_executor(port, work_dir, slots, Some(token()));
        config.executor_id = format!("executor-{n}");
        // As `executor_config`'s engine (dense aggregates put into each stage plan), recording each task.
        config.override_execution_engine =
            Some(Arc::new(DenseAggregateEngine::new(Arc::new(Recorder {
                executor: config.executor_id.clone(),
                seen: Arc::clone(&seen),
                inner: DefaultExecutionEngine::new(),
            }))));
        tokio::spawn(run_executor(config));
    }
    let ids = wait_for_executors(&scheduler, executors).await;
    assert_eq!(
        ids,
        (0..executors)
            .map(|n| format!("executor-{n}"))
            .collect::<Vec<_>>()
    );
    Cluster {
        scheduler,
        url,
        seen,
    }
}

impl Cluster {
    fn take_seen(&self) -> Vec<TaskSeen> {
        std::mem::take(&mut *self.seen.lock().unwrap())
    }
}

/// Where the `queries/` fixtures live. Local files are used from the working directory of the client, exactly
/// as `tests/queries.rs` runs them; with a URL prefix (object storage) the statements' image locations become
/// URLs with `options` (an `OPTIONS (…)` clause: the store settings travel with the tables to the executors), and
/// the prefix is taken out of the output again (the `file` column names what was matched). Parquet exports stay
/// local to the client.
struct QueryData {
    dir: PathBuf,
    prefix: Option<String>,
    options: String,
}

impl QueryData {
    /// The fixtures of `tests/queries.rs`, in `dir`.
    fn local(dir: &Path) -> QueryData {
        std::fs::create_dir_all(dir).unwrap();
        pattern_image(&dir.join("bold.nii"), [8, 8, 4, 6], 0);
        std::fs::create_dir_all(dir.join("runs")).unwrap();
        pattern_image(&dir.join("runs/run-01.nii"), [8, 8, 4, 6], 0);
        pattern_image(&dir.join("runs/run-02.nii"), [6, 6, 4, 3], 0);
        pattern_image(&dir.join("runs/run-03.nii"), [8, 8, 4, 2], 0);
        common::bids_fixture(dir);
        atlas_fixtures(dir);
        QueryData {
            dir: dir.to_path_buf(),
            prefix: None,
            options: String::new(),
        }
    }

    /// The same fixtures uploaded to the test's S3 server (Garage) under `key_prefix`.
    fn s3(dir: &Path, key_prefix: &str) -> QueryData {
        let local = QueryData::local(dir);
        let g = Garage::shared();
        for name in [
            "bold.nii",
            "runs/run-01.nii",
            "runs/run-02.nii",
            "runs/run-03.nii",
        ] {
            g.put(
                &format!("{key_prefix}/{name}"),
                &std::fs::read(dir.join(name)).unwrap(),
            );
        }
        // The cost model's settings travel too: one GET at a time on a "slow" link merges every read of a scan into
        // GETs of up to 64 KiB, and the answers stay the local ones.
        let options = format!(
            " OPTIONS ('aws.endpoint' '{}', 'aws.region' '{}', 'aws.access_key_id' '{}', \
             'aws.secret_access_key' '{}', 'aws.allow_http' 'true', 'remote.rtt' '1s', \
             'remote.bandwidth' '10M', 'remote.concurrency' '1', 'remote.max_request' '64K')",
            g.endpoint(),
            g.region(),
            g.access_key_id(),
            g.secret_access_key()
        );
        QueryData {
            prefix: Some(g.url_of(key_prefix)),
            options,
            ..local
        }
    }

    fn statements(&self, sql: &str) -> String {
        match &self.prefix {
            None => sql.to_string(),
            Some(p) => ["bold.nii", "runs/"]
                .iter()
                .fold(sql.to_string(), |s, rel| {
                    s.replace(
                        &format!("LOCATION '{rel}'"),
                        &format!("LOCATION '{p}/{rel}'{}", self.options),
                    )
                }),
        }
    }

    fn output(&self, out: &str) -> String {
        match &self.prefix {
            None => out.to_string(),
            Some(p) => out.replace(&format!("{p}/"), ""),
        }
    }
}

/// `voxelscan sql --cluster URL --format csv` on every `queries/*.sql`; each output must equal the expected CSV
/// (the local answers).
async fn run_query_suite(url: &str, data: &QueryData) {
    for sql_path in common::query_files() {
        let sql = data.statements(&std::fs::read_to_string(&sql_path).unwrap());
        let (url, dir) = (url.to_string(), data.dir.clone());
        let out = tokio::task::spawn_blocking(move || {
            Command::new(env!("CARGO_BIN_EXE_voxelscan"))
                .args(["sql", "--cluster", &url, "--format", "csv", &sql])
                .env("VOXELSCAN_CLUSTER_TOKEN", TOKEN)
                .current_dir(dir)
                .output()
                .unwrap()
        })
        .await
        .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{}: {stderr}", sql_path.display());
        let want = std::fs::read_to_string(sql_path.with_extension("csv")).unwrap();
        let got = data.output(&String::from_utf8_lossy(&out.stdout));
        assert_eq!(got, want, "{}", sql_path.display());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 6)]
async fn a_two_executor_cluster_gives_the_local_answers() {
    let dir = tempfile::tempdir().unwrap();
    let runs = big_runs(dir.path());
    let want = local_answers(&runs).await;
    let cluster = start_cluster(dir.path(), 2, 2).await;

    // The example queries, through the CLI.
    let data = QueryData::local(&dir.path().join("queries"));
    run_query_suite(&cluster.url, &data).await;
    assert!(
        data.dir.join("bold_t0.parquet").is_file(),
        "COPY wrote on the executors, relative to the client"
    );

    // The big multi-file table, with 8 partitions on 4 task slots.
    let config = SessionConfig::new_with_ballista().with_target_partitions(8);
    let ctx = client(&cluster.url, config).await;
    register_big(&ctx, &runs).await;
    let plan = must(&ctx, "EXPLAIN SELECT sum(value) FROM big").await;
    assert!(plan.contains("file_groups={8 groups"), "{plan}");
    cluster.take_seen();
    check_big(&ctx, &want, "two executors").await;

    // Evidence from the executors: the full scan (first query) ran as tasks on both executors, and its 8
    // partitions were each read exactly once (no task read partitions of another).
    cluster.take_seen();
    must(&ctx, BIG_QUERIES[0]).await;
    let scans: Vec<TaskSeen> = cluster
        .take_seen()
        .into_iter()
        .filter(|t| t.scan_partitions > 0)
        .collect();
    let on = |e: &str| scans.iter().filter(|t| t.executor == e).count();
    eprintln!(
        "scan tasks: executor-0 {}, executor-1 {}: {scans:?}",
        on("executor-0"),
        on("executor-1")
    );
    assert!(on("executor-0") > 0 && on("executor-1") > 0, "{scans:?}");
    assert_eq!(
        scans.iter().map(|t| t.scan_partitions).sum::<usize>(),
        8,
        "{scans:?}"
    );
    assert!(scans.iter().all(|t| t.job == scans[0].job));

    // GROUP BY file, t: `file` crosses the hash shuffle. Scan tasks and shuffle-reading tasks ran on both
    // executors, so some of the final stage's input came from the other executor over Arrow Flight. `file` is a
    // per-file key: every scanning task aggregated in its scan, and the answer is DataFusion's own (nodes off).
    let plain = session_context(SessionConfig::new().with_target_partitions(4));
    must(&plain, "SET voxelscan.scan_aggregates = false").await;
    must(&plain, "SET voxelscan.dense_aggregates = false").await;
    register_big(&plain, &runs).await;
    let own = must(&plain, FILE_T_AVG).await;
    assert!(
        !must(&plain, &format!("EXPLAIN {FILE_T_AVG}"))
            .await
            .contains("ScanAggregateExec")
    );
    assert_eq!(own, want[BIG_QUERIES.len() - 1], "{FILE_T_AVG}: nodes off");
    cluster.take_seen();
    assert_eq!(must(&ctx, FILE_T_AVG).await, own, "{FILE_T_AVG}");
    let seen = cluster.take_seen();
    assert!(
        seen.iter()
            .filter(|t| t.scan_partitions > 0)
            .all(|t| t.scan_aggregates > 0),
        "{FILE_T_AVG}: aggregated in every scanning task: {seen:?}"
    );
    let ran = |e: &str, scan: bool| {
        seen.iter()
            .any(|t| t.executor == e && (t.scan_partitions > 0) == scan)
    };
    for scan in [true, false] {
        assert!(
            ran("executor-0", scan) && ran("executor-1", scan),
            "scan tasks {scan}: {seen:?}"
        );
    }

    // A file the executors cannot read (it is gone after registration): the error names the path.
    let msg = query_a_gone_file(&ctx, dir.path()).await;
    eprintln!("unreadable file: {msg}");
    cluster.scheduler.abort();
}

/// Dense group-bys (`DenseAggregateExec`, partial on the scan's executors, final after the shuffle) on two
/// executors with one partition per task: the exact answers of DataFusion's hash aggregate run locally.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dense_group_bys_on_two_executors() {
    let dir = tempfile::tempdir().unwrap();
    let runs = big_runs(dir.path());
    // Values are multiples of 0.5: sums, and so averages, are exact in any order.
    let queries = [
        "SELECT t, count(*) AS n, sum(value) AS s, avg(value) AS a, min(value) AS lo, max(value) AS hi \
         FROM big GROUP BY t ORDER BY t",
        "SELECT i, j, k, count(*) AS n, sum(value) AS s, avg(value) AS a FROM big WHERE j < 40 \
         GROUP BY i, j, k ORDER BY i, j, k",
        // A filter the scan cannot take: the partial aggregate is dense, not in the scan.
        "SELECT t, count(*) AS n, sum(value) AS s FROM big WHERE (i + j) % 7 = 0 GROUP BY t ORDER BY t",
        // A 16-bit label-like key × k × t: 65 536 × 1 280 slots, so the label is mapped (values numbered as they
        // appear).
        "SELECT CAST(CAST(value * 2 AS INT) % 20 AS SMALLINT) AS lab, k, t, count(*) AS n, sum(value) AS s \
         FROM big WHERE j < 8 GROUP BY CAST(CAST(value * 2 AS INT) % 20 AS SMALLINT), k, t ORDER BY lab, k, t",
    ];
    let local = session_context(SessionConfig::new().with_target_partitions(4));
    register_big(&local, &runs).await;
    must(&local, "SET voxelscan.dense_aggregates = false").await;
    let mut want = Vec::new();
    for q in queries {
        want.push(must(&local, q).await);
    }
    let cluster = start_cluster(dir.path(), 2, 2).await;
    let config = SessionConfig::new_with_ballista()
        .with_target_partitions(4)
        .set_usize("ballista.scheduler.max_partitions_per_task", 1);
    let ctx = client(&cluster.url, config).await;
    register_big(&ctx, &runs).await;
    for (q, want) in queries.iter().zip(&want) {
        cluster.take_seen();
        assert_eq!(&must(&ctx, q).await, want, "{q}");
        let seen = cluster.take_seen();
        // Partial aggregates directly over a scan are computed in it (`ScanAggregateExec`, next test); the
        // filtered query's are dense.
        let filtered = q.contains("% 7");
        let dense_on = |e: &str| {
            seen.iter()
                .filter(|t| t.executor == e)
                .map(|t| t.dense_aggregates + if filtered { 0 } else { t.scan_aggregates })
                .sum::<usize>()
        };
        assert!(
            dense_on("executor-0") > 0 && dense_on("executor-1") > 0,
            "{q}: dense aggregates on both executors: {seen:?}"
        );
    }
    cluster.scheduler.abort();
}

/// Aggregates computed in the scan (`ScanAggregateExec`, put into each scan stage by the executors) on two
/// executors with one partition per task: the exact answers of DataFusion's own aggregate run locally.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scan_aggregates_on_two_executors() {
    let dir = tempfile::tempdir().unwrap();
    let runs = big_runs(dir.path());
    // Values are multiples of 0.5: sums, and so averages, are exact in any order.
    let queries = [
        "SELECT avg(value) AS a, count(*) AS n, sum(value) AS s, min(value) AS lo, max(value) AS hi FROM big",
        "SELECT t, count(*) AS n, sum(value) AS s, avg(value) AS a, max(value) AS hi FROM big \
         GROUP BY t ORDER BY t",
        "SELECT i, j, k, count(*) AS n, sum(value) AS s, avg(value) AS a FROM big WHERE j < 40 \
         GROUP BY i, j, k ORDER BY i, j, k",
    ];
    let local = session_context(SessionConfig::new().with_target_partitions(4));
    register_big(&local, &runs).await;
    must(&local, "SET voxelscan.scan_aggregates = false").await;
    must(&local, "SET voxelscan.dense_aggregates = false").await;
    let mut want = Vec::new();
    for q in queries {
        want.push(must(&local, q).await);
    }
    let cluster = start_cluster(dir.path(), 2, 2).await;
    let config = SessionConfig::new_with_ballista()
        .with_target_partitions(4)
        .set_usize("ballista.scheduler.max_partitions_per_task", 1);
    let ctx = client(&cluster.url, config).await;
    register_big(&ctx, &runs).await;
    for (q, want) in queries.iter().zip(&want) {
        cluster.take_seen();
        assert_eq!(&must(&ctx, q).await, want, "{q}");
        let seen = cluster.take_seen();
        // Which executor runs which task is the scheduler's choice (one may take them all on a busy machine):
        // every task that scanned must have aggregated in its scan.
        let scanning: Vec<_> = seen.iter().filter(|t| t.scan_partitions > 0).collect();
        assert!(
            !scanning.is_empty() && scanning.iter().all(|t| t.scan_aggregates > 0),
            "{q}: scan aggregates in every scanning task: {seen:?}"
        );
    }
    // A filter on values runs in the executors' scans too (its expression travels in the scan's wire).
    let few = "SELECT file, i, j, k, t, value FROM big WHERE value > 59.5 AND t = 3 \
               ORDER BY file, i, j, k, t";
    let want_few = must(&local, few).await;
    assert!(want_few.lines().count() > 10, "{want_few}");
    cluster.take_seen();
    assert_eq!(must(&ctx, few).await, want_few, "{few}");
    let seen = cluster.take_seen();
    let scanning: Vec<_> = seen.iter().filter(|t| t.scan_partitions > 0).collect();
    assert!(
        !scanning.is_empty() && scanning.iter().all(|t| t.value_filters > 0),
        "value filters in every scanning task: {seen:?}"
    );
    // A client's `SET voxelscan.…` travels with its tasks: the executors then leave the aggregate to DataFusion.
    must(&ctx, "SET voxelscan.scan_aggregates = false").await;
    cluster.take_seen();
    assert_eq!(&must(&ctx, queries[0]).await, &want[0], "setting off");
    let seen = cluster.take_seen();
    assert!(
        seen.iter().any(|t| t.scan_partitions > 0) && seen.iter().all(|t| t.scan_aggregates == 0),
        "no scan aggregate with the setting off: {seen:?}"
    );
    cluster.scheduler.abort();
}

/// The atlas queries: every region's mean per volume, one region's, and a mask's voxels.
const ATLAS_QUERIES: [&str; 3] = [
    "SELECT a.value AS label, b.t, avg(b.value) AS mean, count(*) AS n FROM bold b JOIN atlas a \
     ON b.i = a.i AND b.j = a.j AND b.k = a.k WHERE a.value > 0 GROUP BY a.value, b.t ORDER BY label, b.t",
    "SELECT b.t, avg(b.value) AS mean, count(*) AS n FROM bold b JOIN atlas a \
     ON b.i = a.i AND b.j = a.j AND b.k = a.k WHERE a.value = 7 GROUP BY b.t ORDER BY b.t",
    "SELECT count(*) AS n, sum(b.value) AS s FROM bold b JOIN atlas a \
     ON b.i = a.i AND b.j = a.j AND b.k = a.k WHERE a.value % 2 = 1",
];

async fn register_atlas(ctx: &SessionContext, dir: &Path) {
    for (name, file) in [("bold", "bold.nii"), ("atlas", "atlas.nii")] {
        let location = dir.join(file).display().to_string();
        must(
            ctx,
            &format!("CREATE EXTERNAL TABLE {name} STORED AS NIFTI LOCATION '{location}'"),
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 6)]
async fn atlas_joins_on_two_executors_one_partition_per_task() {
    let dir = tempfile::tempdir().unwrap();
    // 16 MiB of int16 in 48×40×16×160, and 12 box regions on its grid.
    pattern_image(&dir.path().join("bold.nii"), [48, 40, 16, 160], 3);
    label_image(&dir.path().join("atlas.nii"), [48, 40, 16], |i, j, k| {
        (1 + i / 16 + 3 * (j / 20) + 6 * (k / 8)) as i16
    });
    let mut want = Vec::new();
    for dense in ["true", "false"] {
        let ctx = session_context(SessionConfig::new().with_target_partitions(4));
        must(&ctx, &format!("SET voxelscan.dense_joins = {dense}")).await;
        register_atlas(&ctx, dir.path()).await;
        let mut answers = Vec::new();
        for q in ATLAS_QUERIES {
            answers.push(must(&ctx, q).await);
        }
        if want.is_empty() {
            want = answers;
        } else {
            assert_eq!(answers, want, "dense_joins = false");
        }
    }
    assert!(want[0].contains("| 12    | 159 |"), "{}", want[0]);
    let cluster = start_cluster(dir.path(), 2, 2).await;
    let config = SessionConfig::new_with_ballista()
        .with_target_partitions(4)
        .set_usize("ballista.scheduler.max_partitions_per_task", 1);
    let ctx = client(&cluster.url, config).await;
    register_atlas(&ctx, dir.path()).await;
    cluster.take_seen();
    for (q, want) in ATLAS_QUERIES.iter().zip(&want) {
        assert_eq!(&must(&ctx, q).await, want, "{q}");
    }
    let seen = cluster.take_seen();
    for e in ["executor-0", "executor-1"] {
        assert!(
            seen.iter()
                .any(|t| t.executor == e && t.scan_partitions > 0),
            "{seen:?}"
        );
    }
    cluster.scheduler.abort();
}

async fn register_runs(ctx: &SessionContext, dir: &Path) {
    let location = dir.join("runs").display().to_string();
    must(
        ctx,
        &format!("CREATE EXTERNAL TABLE runs STORED AS NIFTI LOCATION '{location}/'"),
    )
    .await;
}

/// The fused join-aggregate (`JoinAggregateExec`, put into each probe stage by the executors) on two executors with
/// one partition per task: the exact local answers of DataFusion's own join and aggregate, with the node on and off.
#[tokio::test(flavor = "multi_thread", worker_threads = 6)]
async fn fused_join_aggregates_on_two_executors() {
    let dir = tempfile::tempdir().unwrap();
    pattern_image(&dir.path().join("bold.nii"), [48, 40, 16, 160], 3);
    label_image(&dir.path().join("atlas.nii"), [48, 40, 16], |i, j, k| {
        ((i * 7 + j * 3 + k) % 13) as i16
    });
    // Several runs of different lengths against the one atlas.
    std::fs::create_dir_all(dir.path().join("runs")).unwrap();
    for (n, t) in [40, 24, 32].into_iter().enumerate() {
        let path = dir.path().join(format!("runs/sub-{n:02}_bold.nii"));
        pattern_image(&path, [48, 40, 16, t], 5 + n);
    }
    let queries = [
        ATLAS_QUERIES[0],
        ATLAS_QUERIES[1],
        "SELECT a.value % 3 AS g, b.k, sum(b.value) AS s, count(*) AS n, min(b.value) AS lo FROM bold b \
         JOIN atlas a ON b.i = a.i AND b.j = a.j AND b.k = a.k WHERE a.value > 2 \
         GROUP BY a.value % 3, b.k ORDER BY g, b.k",
        // `file` and `sub` are per-file keys of the probe scan: still one fused pass.
        "SELECT b.file, a.value AS label, b.t, avg(b.value) AS mean, count(*) AS n FROM runs b JOIN atlas a \
         ON b.i = a.i AND b.j = a.j AND b.k = a.k WHERE a.value > 0 GROUP BY b.file, a.value, b.t \
         ORDER BY b.file, label, b.t",
        "SELECT b.t, b.sub, a.value AS label, sum(b.value) AS s FROM runs b JOIN atlas a \
         ON b.i = a.i AND b.j = a.j AND b.k = a.k WHERE a.value BETWEEN 2 AND 5 GROUP BY b.t, b.sub, a.value \
         ORDER BY b.t, b.sub, label",
    ];
    let local = session_context(SessionConfig::new().with_target_partitions(4));
    for off in [
        "fused_joins",
        "dense_joins",
        "dense_aggregates",
        "scan_aggregates",
    ] {
        must(&local, &format!("SET voxelscan.{off} = false")).await;
    }
    register_atlas(&local, dir.path()).await;
    register_runs(&local, dir.path()).await;
    let mut want = Vec::new();
    for q in queries {
        want.push(must(&local, q).await);
    }
    assert!(
        want[3].contains("sub-02_bold.nii | 12    | 31 |"),
        "{}",
        want[3]
    );
    let cluster = start_cluster(dir.path(), 2, 2).await;
    for fused in [true, false] {
        let config = SessionConfig::new_with_ballista()
            .with_target_partitions(4)
            .set_usize("ballista.scheduler.max_partitions_per_task", 1);
        let ctx = client(&cluster.url, config).await;
        must(&ctx, &format!("SET voxelscan.fused_joins = {fused}")).await;
        register_atlas(&ctx, dir.path()).await;
        register_runs(&ctx, dir.path()).await;
        for (q, want) in queries.iter().zip(&want) {
            cluster.take_seen();
            assert_eq!(&must(&ctx, q).await, want, "{q} (fused_joins = {fused})");
            let seen = cluster.take_seen();
            // The executors put the node into every stage that joins the scan (their own rule run); the
            // client's `SET voxelscan.…` does not reach that run, so only the answer is checked with it off.
            let scanning: Vec<_> = seen.iter().filter(|t| t.scan_partitions > 0).collect();
            assert!(
                !fused || scanning.iter().all(|t| t.join_aggregates > 0),
                "{q}: a fused join-aggregate in every scanning task: {seen:?}"
            );
        }
    }
    cluster.scheduler.abort();
}

/// The millimetre columns (there by default), `voxel_to_mm` / `mm_to_voxel` (folded at planning or evaluated per
/// row) and a join on the grid columns of option `grid` (its run-time narrowing) give the local answers on a cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 6)]
async fn world_columns_and_functions_on_two_executors() {
    let dir = tempfile::tempdir().unwrap();
    pattern_image(&dir.path().join("bold.nii"), [24, 20, 8, 6], 5);
    label_image(&dir.path().join("atlas.nii"), [24, 20, 8], |i, j, k| {
        if (8..12).contains(&i) && (4..9).contains(&j) && k > 2 {
            (1 + i % 2) as i16
        } else {
            0
        }
    });
    let d = dir.path().display();
    let setup = [
        format!("CREATE EXTERNAL TABLE bold STORED AS NIFTI LOCATION '{d}/bold.nii'"),
        format!("CREATE EXTERNAL TABLE atlas STORED AS NIFTI LOCATION '{d}/atlas.nii'"),
        format!(
            "CREATE EXTERNAL TABLE gbold STORED AS NIFTI LOCATION '{d}/bold.nii' OPTIONS ('grid' '{d}/atlas.nii')"
        ),
    ];
    let queries = [
        "SELECT i, j, k, t, x, y, z, world_space, tr FROM bold WHERE t = 1 AND x BETWEEN 2 AND 5 AND y < 3 \
         ORDER BY i, j, k"
            .to_string(),
        format!(
            "SELECT count(*), sum(value) FROM bold WHERE i = mm_to_voxel('{d}/atlas.nii', 3.2, 4.6, 2)['i'] \
             AND j = mm_to_voxel('{d}/atlas.nii', 3.2, 4.6, 2)['j']"
        ),
        format!(
            "SELECT t, voxel_to_mm('{d}/atlas.nii', i, j, k)['x'] AS mx, count(*), sum(value) FROM bold \
             WHERE k = 1 AND mm_to_voxel('{d}/atlas.nii', x, y, z)['j'] < 4 GROUP BY t, mx ORDER BY t, mx"
        ),
        "SELECT a.value, g.t, count(*), avg(g.value) FROM gbold g JOIN atlas a ON a.i = g.grid_i \
         AND a.j = g.grid_j AND a.k = g.grid_k WHERE a.value <> 0 GROUP BY a.value, g.t ORDER BY a.value, g.t"
            .to_string(),
    ];
    let local = session_context(SessionConfig::new().with_target_partitions(4));
    for q in &setup {
        must(&local, q).await;
    }
    let mut want = Vec::new();
    for q in &queries {
        want.push(must(&local, q).await);
    }
    assert!(want[0].contains("scanner"), "{}", want[0]);
    let cluster = start_cluster(dir.path(), 2, 2).await;
    let config = SessionConfig::new_with_ballista().with_target_partitions(4);
    let ctx = client(&cluster.url, config).await;
    for q in &setup {
        must(&ctx, q).await;
    }
    for (q, want) in queries.iter().zip(&want) {
        assert_eq!(&must(&ctx, q).await, want, "{q}");
    }
    cluster.scheduler.abort();
}

/// Register table `gone` over a file, delete the file, query it: the error, which must name the table and the path.
async fn query_a_gone_file(ctx: &SessionContext, dir: &Path) -> String {
    let gone = dir.join("gone.nii");
    pattern_image(&gone, [8, 8, 4, 6], 0);
    must(
        ctx,
        &format!(
            "CREATE EXTERNAL TABLE gone STORED AS NIFTI LOCATION '{}'",
            gone.display()
        ),
    )
    .await;
    std::fs::remove_file(&gone).unwrap();
    let msg = text(ctx, "SELECT sum(value) FROM gone")
        .await
        .unwrap_err()
        .to_string();
    assert!(msg.contains("table gone"), "{msg}");
    assert!(msg.contains(&gone.display().to_string()), "{msg}");
    assert!(msg.contains("No such file"), "{msg}");
    msg
}

// ---------------------------------------------------------------------------------------------------------------
// Faults: `voxelscan executor` processes, one killed (SIGKILL) while a multi-task query runs.

/// A `voxelscan executor` process; killed when dropped.
struct ExecutorProcess {
    child: Child,
    work_dir: PathBuf,
}

impl Drop for ExecutorProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How a test executor process gets the token.
#[derive(Clone, Copy)]
enum TokenBy {
    Env,
    File,
}

/// Start a `voxelscan executor` for the scheduler and wait until it has registered (`want` executors in all). A
/// free port taken before the executor binds it ends the process at once (it binds before registering), and it
/// is started again on other ports.
async fn spawn_executor(
    scheduler: &SchedulerHandle,
    want: usize,
    work_dir: PathBuf,
    log: &Path,
    token_by: TokenBy,
    extra_args: &[&Path],
) -> ExecutorProcess {
    std::fs::create_dir_all(&work_dir).unwrap();
    let token_file = log.with_extension("token");
    {
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&token_file)
            .unwrap();
        std::io::Write::write_all(&mut f, format!("{TOKEN}\n").as_bytes()).unwrap();
    }
    for _attempt in 0..5 {
        let mut command = Command::new(env!("CARGO_BIN_EXE_voxelscan"));
        command
            .args([
                "executor",
                "--scheduler",
                &format!("127.0.0.1:{}", scheduler.addr().port()),
            ])
            .args(["--bind", &format!("127.0.0.1:{}", free_port())])
            .args(["--grpc-port", &free_port().to_string()])
            .args(["--concurrency", "1", "--heartbeat", "1"])
            .arg("--work-dir")
            .arg(&work_dir)
            .args(extra_args)
            .env_remove("VOXELSCAN_CLUSTER_TOKEN")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap());
        match token_by {
            TokenBy::Env => command.env("VOXELSCAN_CLUSTER_TOKEN", TOKEN),
            TokenBy::File => command.arg("--token-file").arg(&token_file),
        };
        let mut process = ExecutorProcess {
            child: command.spawn().unwrap(),
            work_dir: work_dir.clone(),
        };
        let start = Instant::now();
        loop {
            if let Some(status) = process.child.try_wait().unwrap() {
                let text = std::fs::read_to_string(log).unwrap_or_default();
                assert!(
                    text.contains("cannot listen on"),
                    "executor ended ({status}): {text}"
                );
                break; // the port was taken: again, on others
            }
            if scheduler.executors().await.unwrap().len() >= want {
                return process;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "the executor did not register: {}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    panic!("no executor started after 5 tries");
}

/// Files under `dir` (shuffle output appears there once the executor has finished a task).
fn files_under(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .map(|e| {
            let p = e.path();
            if p.is_dir() { files_under(&p) } else { 1 }
        })
        .sum()
}

/// A TCP proxy in front of nginx that holds every request (`GET `) made once `closed()` is true, until
/// [`GateProxy::open`]: the scan cannot finish while the gate is shut, whatever the machine's speed.
struct GateProxy {
    port: u16,
    held: Arc<std::sync::atomic::AtomicUsize>,
    opened: Arc<std::sync::atomic::AtomicBool>,
}

impl GateProxy {
    fn start(upstream: u16, closed: impl Fn() -> bool + Send + Sync + 'static) -> GateProxy {
        use std::io::{Read, Write};
        use std::net::{Shutdown, TcpListener, TcpStream};
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let held = Arc::new(AtomicUsize::new(0));
        let opened = Arc::new(AtomicBool::new(false));
        let closed = Arc::new(closed);
        let (h, o) = (Arc::clone(&held), Arc::clone(&opened));
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(mut client) = client else { continue };
                let Ok(mut server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                };
                let (Ok(mut client_r), Ok(mut server_w)) = (client.try_clone(), server.try_clone())
                else {
                    continue;
                };
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut server, &mut client);
                    let _ = client.shutdown(Shutdown::Both);
                });
                let (held, opened, closed) = (Arc::clone(&h), Arc::clone(&o), Arc::clone(&closed));
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        let n = match client_r.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        let request = buf[..n].windows(4).any(|w| w == b"GET ");
                        if request && !opened.load(Ordering::SeqCst) && closed() {
                            held.fetch_add(1, Ordering::SeqCst);
                            while !opened.load(Ordering::SeqCst) {
                                std::thread::sleep(Duration::from_millis(5));
                            }
                        }
                        if server_w.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = server_w.shutdown(Shutdown::Both);
                });
            }
        });
        GateProxy { port, held, opened }
    }

    fn held(&self) -> usize {
        self.held.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn open(&self) {
        self.opened.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// What Ballista 55 does (observed, and asserted here): the scheduler notices the dead executor (its shuffle
/// fetches fail, its heartbeats stop; it is dropped from the executor list), runs its tasks again on the executor
/// left, and the query returns the exact answer.
///
/// The kill lands mid-scan by construction: the image is read over HTTP through [`GateProxy`], which holds every
/// request made after executor 0 has finished a task (its shuffle output exists only there), until executor 0 is
/// dead. So the query cannot finish before the kill.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_executor_killed_during_a_query() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("killed.nii");
    pattern_image(&image, [64, 64, 32, 64], 1);
    let query = "SELECT t, count(value) AS n, sum(value) AS s FROM big GROUP BY t ORDER BY t";
    let local = session_context(SessionConfig::new().with_target_partitions(4));
    must(
        &local,
        &format!(
            "CREATE EXTERNAL TABLE big STORED AS NIFTI LOCATION '{}'",
            image.display()
        ),
    )
    .await;
    let want = must(&local, query).await;

    let nginx = Nginx::shared();
    let name = format!("ballista-kill-{}.nii", std::process::id());
    nginx.put(&name, &std::fs::read(&image).unwrap());
    let (scheduler, url) = start_scheduler_here(3).await;
    let mut executors = Vec::new();
    for n in 0..2 {
        let process = spawn_executor(
            &scheduler,
            n + 1,
            dir.path().join(format!("work-{n}")),
            &dir.path().join(format!("executor-{n}.log")),
            if n == 0 { TokenBy::Env } else { TokenBy::File },
            &[],
        )
        .await;
        executors.push(process);
    }
    let before = scheduler.executors().await.unwrap();
    assert_eq!(before.len(), 2, "{before:?}");
    let work0 = executors[0].work_dir.clone();
    let gate = GateProxy::start(nginx.port(), move || files_under(&work0) > 0);

    // One-partition scan tasks on 2 slots, one GET at a time.
    let config = SessionConfig::new_with_ballista()
        .with_target_partitions(16)
        .set_usize("ballista.scheduler.max_partitions_per_task", 1);
    let ctx = client(&url, config).await;
    must(
        &ctx,
        &format!(
            "CREATE EXTERNAL TABLE big STORED AS NIFTI LOCATION 'http://127.0.0.1:{}/{name}' \
             OPTIONS ('remote.concurrency' '1')",
            gate.port
        ),
    )
    .await;
    let plan = must(&ctx, &format!("EXPLAIN {query}")).await;
    assert!(plan.contains("file_groups={16 groups"), "{plan}");
    let query = tokio::spawn(async move { text(&ctx, query).await });

    // Executor 0 has finished a task and some task waits at the gate: the query cannot end now.
    let start = Instant::now();
    while gate.held() == 0 {
        assert!(
            !query.is_finished(),
            "the query ended before the gate closed (executor 0 finished no task before the others ended)"
        );
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "no request reached the gate (executor 0 finished no task)"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!query.is_finished(), "the query ended with the gate shut");
    executors[0].child.kill().unwrap();
    executors[0].child.wait().unwrap();
    gate.open();
    let outcome = tokio::time::timeout(Duration::from_secs(180), query)
        .await
        .expect("the query neither finished nor failed within 180 s")
        .unwrap();
    // The scheduler drops the dead executor once a fetch fails, or at the latest after its timeout (3 s).
    let mut after = scheduler.executors().await.unwrap();
    let waited = Instant::now();
    while after.len() > 1 && waited.elapsed() < Duration::from_secs(20) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        after = scheduler.executors().await.unwrap();
    }
    eprintln!(
        "requests held at the gate: {}; executors before {before:?}, after {after:?}; outcome: {}",
        gate.held(),
        match &outcome {
            Ok(_) => "answer".to_string(),
            Err(e) => format!("error: {e}"),
        }
    );
    match outcome {
        Ok(got) => assert_eq!(got, want, "a retried query must give the exact answer"),
        Err(e) => panic!("the query failed: {e}"),
    }
    assert_eq!(after.len(), 1, "{after:?}");
    // The cluster goes on with the executor that is left.
    let dir2 = dir.path().join("after");
    std::fs::create_dir_all(&dir2).unwrap();
    let runs = big_runs(&dir2);
    let ctx = client(&url, SessionConfig::new_with_ballista()).await;
    register_big(&ctx, &runs).await;
    let local = local_answers(&runs).await;
    assert_eq!(must(&ctx, BIG_QUERIES[0]).await, local[0]);
    drop(executors);
    scheduler.abort();
}

/// A file a `voxelscan executor` cannot read (gone after registration on the client): the query fails naming the
/// table, the path and the executor (its id and address).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unreadable_file_is_named_with_the_executor() {
    let dir = tempfile::tempdir().unwrap();
    let (scheduler, url) = start_scheduler_here(10).await;
    let executor = spawn_executor(
        &scheduler,
        1,
        dir.path().join("work"),
        &dir.path().join("executor.log"),
        TokenBy::Env,
        &[],
    )
    .await;
    let ids = scheduler.executors().await.unwrap();
    let ctx = client(&url, SessionConfig::new_with_ballista()).await;
    let msg = query_a_gone_file(&ctx, dir.path()).await;
    eprintln!("unreadable file on an executor process: {msg}");
    assert!(
        msg.contains(&format!("on executor {}", ids[0])),
        "{msg} (executors {ids:?})"
    );
    drop(executor);
    scheduler.abort();
}

// ---------------------------------------------------------------------------------------------------------------
// The token: callers without it are refused by the scheduler and by the executors' Flight services.

/// A client without the token, or with another one, is refused by the scheduler: through the library and through
/// `voxelscan sql --cluster` (exit status 2 and a message saying how to give the token).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_without_the_token_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = start_cluster(dir.path(), 1, 1).await;
    let image = dir.path().join("a.nii");
    pattern_image(&image, [8, 8, 4, 6], 0);
    let ddl = format!(
        "CREATE EXTERNAL TABLE a STORED AS NIFTI LOCATION '{}'",
        image.display()
    );
    let query = "SELECT count(value) FROM a";
    let wrong = ClusterToken::new("another-token-0123456789").unwrap();
    for (how, token) in [("no token", None), ("a wrong token", Some(&wrong))] {
        let config = with_token(SessionConfig::new_with_ballista(), token);
        let refused = async {
            let ctx = remote_context(&cluster.url, config).await?;
            text(&ctx, &ddl).await?;
            text(&ctx, query).await
        }
        .await;
        let msg = match refused {
            Ok(out) => panic!("{how}: the scheduler answered: {out}"),
            Err(e) => e.to_string(),
        };
        assert!(
            msg.contains("Unauthenticated") || msg.contains("token"),
            "{how}: {msg}"
        );
        eprintln!("{how}: {msg}");
    }
    // With the token: the answer.
    let ctx = client(&cluster.url, SessionConfig::new_with_ballista()).await;
    must(&ctx, &ddl).await;
    assert!(must(&ctx, query).await.contains("| 1536 "));

    // The CLI without the token.
    let url = cluster.url.clone();
    let sql = format!("{ddl}; {query}");
    let out = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_voxelscan"))
            .args(["sql", "--cluster", &url, &sql])
            .env_remove("VOXELSCAN_CLUSTER_TOKEN")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("error:") && stderr.contains("token"),
        "{stderr}"
    );
    cluster.scheduler.abort();
}

/// An executor without the token (or with another) never registers; one with it does. And a Flight call to an
/// executor without the token is refused: shuffle data and results are not for anyone who reaches the port.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_executor_without_the_token_cannot_register() {
    use arrow_flight::flight_service_client::FlightServiceClient;
    let dir = tempfile::tempdir().unwrap();
    let (scheduler, _url) = start_scheduler_here(10).await;
    let port = scheduler.addr().port();
    let wrong = ClusterToken::new("another-token-0123456789").unwrap();
    let mut tasks = Vec::new();
    for (n, token) in [None, Some(wrong)].into_iter().enumerate() {
        let config = in_process_executor(port, dir.path().join(format!("w{n}")), 1, token);
        tasks.push(tokio::spawn(run_executor(config)));
    }
    // Both fail at once, saying why.
    for t in tasks.drain(..) {
        let ended = tokio::time::timeout(Duration::from_secs(30), t)
            .await
            .expect("an executor without the token kept running")
            .unwrap();
        let msg = ended
            .expect_err("an executor without the token ran")
            .to_string();
        assert!(msg.contains("refused this executor"), "{msg}");
        eprintln!("{msg}");
    }
    assert_eq!(scheduler.executors().await.unwrap(), Vec::<String>::new());

    let config = in_process_executor(port, dir.path().join("ok"), 1, Some(token()));
    let flight_port = config.port;
    tasks.push(tokio::spawn(run_executor(config)));
    assert_eq!(wait_for_executors(&scheduler, 1).await.len(), 1);

    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{flight_port}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
    let mut flight = FlightServiceClient::new(channel);
    let e = flight
        .do_get(arrow_flight::Ticket::new("anything"))
        .await
        .expect_err("a Flight call without the token was served");
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e}");
    for t in &tasks {
        t.abort();
    }
    scheduler.abort();
}

/// A scheduler or executor asked to listen on a non-loopback address without a token refuses, saying how to set
/// one (before binding anything).
#[test]
fn non_loopback_addresses_without_a_token_are_refused() {
    for args in [
        vec!["scheduler", "--bind", "0.0.0.0:0"],
        vec![
            "executor",
            "--scheduler",
            "127.0.0.1:1",
            "--bind",
            "0.0.0.0:0",
        ],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_voxelscan"))
            .args(&args)
            .env_remove("VOXELSCAN_CLUSTER_TOKEN")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains("refusing to listen on 0.0.0.0:0")
                && stderr.contains("VOXELSCAN_CLUSTER_TOKEN")
                && stderr.contains("--token-file"),
            "{args:?}: {stderr}"
        );
    }
}

/// The `queries/` suite with its images in S3 (the test's Garage): the executors read them with ranged GETs, using
/// the store settings the tables carry.
#[tokio::test(flavor = "multi_thread", worker_threads = 6)]
async fn a_two_executor_cluster_reads_images_from_s3() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = start_cluster(dir.path(), 2, 2).await;
    let data_dir = dir.path().join("queries");
    let data = tokio::task::spawn_blocking(move || QueryData::s3(&data_dir, "ballista-queries"))
        .await
        .unwrap();
    run_query_suite(&cluster.url, &data).await;
    let scans: Vec<TaskSeen> = cluster
        .take_seen()
        .into_iter()
        .filter(|t| t.scan_partitions > 0)
        .collect();
    assert!(!scans.is_empty());

    // The credentials in the tables' OPTIONS reach the executors (the suite read the objects with them) but show
    // in no plan: EXPLAIN of a distributed query over the same store.
    let ctx = client(&cluster.url, SessionConfig::new_with_ballista()).await;
    let location = format!("{}/bold.nii", data.prefix.clone().unwrap());
    must(
        &ctx,
        &format!(
            "CREATE EXTERNAL TABLE s3bold STORED AS NIFTI LOCATION '{location}'{}",
            data.options
        ),
    )
    .await;
    let g = Garage::shared();
    for explain in ["EXPLAIN", "EXPLAIN VERBOSE", "EXPLAIN ANALYZE"] {
        let plan = must(
            &ctx,
            &format!("{explain} SELECT t, sum(value) FROM s3bold GROUP BY t"),
        )
        .await;
        assert!(plan.contains("table=s3bold"), "{plan}");
        for secret in [g.secret_access_key(), g.access_key_id()] {
            assert!(
                !plan.contains(secret),
                "{explain} shows a credential:\n{plan}"
            );
        }
    }
    cluster.scheduler.abort();
}

// ---------------------------------------------------------------------------------------------------------------
// TLS: a scheduler and executors serving TLS, every client (the test, the executors) trusting the test CA.

/// Every channel over TLS (client to scheduler, executors to scheduler, Flight fetches of results and shuffles
/// between the two executors): the local answers. A client that speaks plain gRPC to the TLS scheduler gets none.
#[tokio::test(flavor = "multi_thread", worker_threads = 6)]
async fn a_cluster_over_tls_gives_the_local_answers() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    let (ca, cert, key) = make_certificates(&certs);
    let server_tls = ServerTls::load(&cert, &key).unwrap();
    let client_tls = ClientTls::load(&ca).unwrap();
    let runs = big_runs(dir.path());
    let want = local_answers(&runs).await;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut settings = SchedulerSettings::new(addr);
    settings.token = Some(token());
    settings.client_tls = Some(Arc::clone(&client_tls));
    let scheduler = start_scheduler_with(
        listener,
        scheduler_config(&settings),
        Some(token()),
        Some(server_tls.clone()),
    )
    .await
    .unwrap();
    let url = format!("df://127.0.0.1:{}", addr.port());
    let mut tasks = Vec::new();
    for n in 0..2 {
        let mut config = None;
        for _ in 0..5 {
            let mut s = ExecutorSettings::new("127.0.0.1", addr.port());
            s.bind_host = "127.0.0.1".into();
            s.flight_port = free_port();
            s.grpc_port = free_port();
            s.concurrency = 2;
            s.work_dir = Some(dir.path().join(format!("tls-executor-{n}")));
            s.token = Some(token());
            s.server_tls = Some(server_tls.clone());
            s.client_tls = Some(Arc::clone(&client_tls));
            if let Ok(c) = executor_config(&s) {
                config = Some(c);
                break;
            }
        }
        tasks.push(tokio::spawn(run_executor(config.expect("no free port"))));
    }
    wait_for_executors(&scheduler, 2).await;

    let config = with_client_security(
        SessionConfig::new_with_ballista().with_target_partitions(8),
        Some(&token()),
        Some(&client_tls),
    );
    let ctx = remote_context(&url, config).await.unwrap();
    register_big(&ctx, &runs).await;
    check_big(&ctx, &want, "over TLS").await;

    // Plain gRPC to the TLS scheduler: no answer.
    let plain = with_token(SessionConfig::new_with_ballista(), Some(&token()));
    let refused = async {
        let ctx = remote_context(&url, plain).await?;
        register_big(&ctx, &runs).await;
        text(&ctx, BIG_QUERIES[0]).await
    };
    let outcome = tokio::time::timeout(Duration::from_secs(60), refused).await;
    match outcome {
        Ok(Ok(out)) => panic!("a plain client was answered: {out}"),
        Ok(Err(e)) => eprintln!("plain client: {e}"),
        Err(_) => eprintln!("plain client: no answer within 60 s"),
    }
    for t in &tasks {
        t.abort();
    }
    scheduler.abort();
}

/// The command line over TLS: a `voxelscan executor` process with `--tls-cert`, `--tls-key`, `--tls-ca` and
/// `--token-file`, and `voxelscan sql --cluster … --token-file … --tls-ca …`: the local answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_command_line_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    let (ca, cert, key) = make_certificates(&certs);
    let image = dir.path().join("a.nii");
    pattern_image(&image, [16, 16, 8, 12], 2);
    let sql = format!(
        "CREATE EXTERNAL TABLE a STORED AS NIFTI LOCATION '{}'; \
         SELECT t, count(value) AS n, sum(value) AS s FROM a GROUP BY t ORDER BY t",
        image.display()
    );
    let cli = |args: Vec<String>| {
        let out = Command::new(env!("CARGO_BIN_EXE_voxelscan"))
            .args(args)
            .env_remove("VOXELSCAN_CLUSTER_TOKEN")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(out.status.success(), "{stderr}");
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let want = cli(vec![
        "sql".into(),
        "--format".into(),
        "csv".into(),
        sql.clone(),
    ]);

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut settings = SchedulerSettings::new(addr);
    settings.token = Some(token());
    let scheduler = start_scheduler_with(
        listener,
        scheduler_config(&settings),
        Some(token()),
        Some(ServerTls::load(&cert, &key).unwrap()),
    )
    .await
    .unwrap();
    let log = dir.path().join("executor.log");
    let flags = [
        Path::new("--tls-cert"),
        &cert,
        Path::new("--tls-key"),
        &key,
        Path::new("--tls-ca"),
        &ca,
    ];
    let executor = spawn_executor(
        &scheduler,
        1,
        dir.path().join("work"),
        &log,
        TokenBy::File,
        &flags,
    )
    .await;
    let token_file = log.with_extension("token");
    let args: Vec<String> = [
        "sql",
        "--cluster",
        &format!("df://127.0.0.1:{}", addr.port()),
        "--format",
        "csv",
    ]
    .iter()
    .map(|a| a.to_string())
    .chain([
        "--token-file".into(),
        token_file.display().to_string(),
        "--tls-ca".into(),
        ca.display().to_string(),
        sql,
    ])
    .collect();
    let got = tokio::task::spawn_blocking(move || cli(args))
        .await
        .unwrap();
    assert_eq!(got, want);
    assert_eq!(want.lines().count(), 13, "{want}");
    drop(executor);
    scheduler.abort();
}

// ---------------------------------------------------------------------------------------------------------------
// NIfTI output (issue 14): `COPY … STORED AS NIFTI` runs its sink on an executor (the codecs carry it) and writes
// the same image as a local session.

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn copy_to_nifti_on_ballista_writes_the_local_image() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("bold.nii");
    pattern_image(&src, [6, 5, 4, 9], 3);
    let copy = |out: &Path| {
        format!(
            "COPY (SELECT i, j, k, avg(value) / stddev(value) AS tsnr FROM b GROUP BY i, j, k) TO '{}' STORED AS NIFTI",
            out.display()
        )
    };
    let ddl = format!(
        "CREATE EXTERNAL TABLE b STORED AS NIFTI LOCATION '{}'",
        src.display()
    );
    let local = session_context(SessionConfig::new().with_target_partitions(4));
    must(&local, &ddl).await;
    let want = dir.path().join("local.nii.gz");
    must(&local, &copy(&want)).await;

    let config = SessionConfig::new_with_ballista()
        .with_target_partitions(4)
        .with_ballista_standalone_parallelism(2);
    let ctx = standalone_context(config).await.unwrap();
    must(&ctx, &ddl).await;
    let got = dir.path().join("cluster.nii.gz");
    let shown = must(&ctx, &copy(&got)).await;
    assert!(shown.contains("120"), "rows written: {shown}");
    let read = |p: &Path| {
        let proxy = voxelscan::ArrayProxy::open(p, Default::default()).unwrap();
        assert_eq!(proxy.shape(), &[6, 5, 4]);
        proxy.to_array().unwrap().to_f64_c_order().unwrap()
    };
    // The same voxels, up to the order in which partial variances are merged (the cluster's final stage takes them
    // in shuffle order: a last-bit difference, 4e-16 here).
    let (g, w) = (read(&got), read(&want));
    assert_eq!(g.len(), w.len());
    for (a, b) in g.iter().zip(&w) {
        assert!((a - b).abs() <= 1e-12 * b.abs(), "cluster {a} vs local {b}");
    }

    // OPTIONS travel with the format to the executor (DataFusion's plan protobuf drops a COPY's own options): the
    // dtype and the fill are applied there; an unknown option is an error, never a file written with defaults.
    let with = dir.path().join("options.nii");
    let q = format!(
        "COPY (SELECT i, j, k, value FROM b WHERE t = 0 AND i < 3) TO '{}' STORED AS NIFTI \
         OPTIONS ('dtype' 'float32', 'fill' '-1')",
        with.display()
    );
    must(&ctx, &q).await;
    let proxy = voxelscan::ArrayProxy::open(&with, Default::default()).unwrap();
    assert!(
        proxy.dtype().to_string().ends_with("f4"),
        "{}",
        proxy.dtype()
    );
    let values = proxy.to_array().unwrap().to_f64_c_order().unwrap();
    assert_eq!(values[[5, 0, 0]], -1.0);
    let bad = dir.path().join("bad.nii");
    let q = format!(
        "COPY (SELECT i, j, k, value FROM b WHERE t = 0) TO '{}' STORED AS NIFTI \
         OPTIONS ('dtype' 'float32', 'colour' 'red')",
        bad.display()
    );
    let e = text(&ctx, &q)
        .await
        .expect_err("an unknown option was accepted");
    assert!(e.to_string().contains("unknown option"), "{e}");
    assert!(!bad.exists());
}
