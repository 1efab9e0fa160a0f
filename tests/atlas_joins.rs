//! Atlas, mask and coordinate joins against nilearn and against DataFusion's own join.
//!
//! - `NiftiLabelsMasker(atlas, strategy=S).fit_transform(run)` equals
//!   `SELECT label, t, AGG(value) … JOIN atlas … GROUP BY label, t` within 1e-5 relative for every strategy
//!   (mean→avg, median→median, sum, minimum→min, maximum→max, variance→var_pop, standard_deviation→stddev_pop), on
//!   random runs (dtypes, scaling, `.nii.gz`) and atlases written by `tests/atlas_oracle.py`.
//! - `NiftiMasker(mask).fit_transform(run)` equals the mask join's values `ORDER BY t, i, j, k` (nilearn's voxel order
//!   is C order of (i, j, k) within each volume).
//! - `GROUP BY file, label, t` over several runs against one atlas equals nilearn per run, for every strategy (one
//!   fused pass, `file` a per-file key); over BIDS-named runs (lengths differ, a `.nii.gz` among `.nii`, a run on a
//!   smaller grid) `GROUP BY file, …` and `GROUP BY sub, …` (a subject's runs one group) equal numpy.
//! - Joins with a CSV table of coordinates (NULLs, duplicates, keys outside the grid, INT keys cast to BIGINT, empty
//!   build sides; inner, semi and anti) give what DataFusion's own join gives over a copy of the voxels in memory.
//! - The one-region join reads no more than the region's bounding box (the hash join's dynamic filter).
//!
//! Every query runs under each of [`SETTINGS`] and must give the same answer.
//!
//! Needs the project's Python with nilearn (`VOXELSCAN_PYTHON`, else `.venv/bin/python`): without it the test fails.
// The SQL front needs the `sql` feature (on by default).
#![cfg(feature = "sql")]

mod common;

use std::path::Path;
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, Float64Array, RecordBatch, StringArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::DataType;
use datafusion::datasource::source::DataSourceExec;
use datafusion::physical_plan::display::DisplayableExecutionPlan;
use datafusion::physical_plan::{ExecutionPlan, collect, displayable};
use datafusion::prelude::{SessionConfig, SessionContext};
use serde_json::Value;
use voxelscan::table::session_context;

/// Settings a query's answer must not depend on: the fused join-aggregate off, voxelscan's dense paths off, no
/// dynamic filter at all, and partitioned joins (both sides hashed) where DataFusion would collect the small side.
const SETTINGS: [&[&str]; 5] = [
    &[],
    &["SET voxelscan.fused_joins = false"],
    &[
        "SET voxelscan.dense_joins = false",
        "SET voxelscan.dense_aggregates = false",
    ],
    &["SET datafusion.optimizer.enable_dynamic_filter_pushdown = false"],
    &[
        "SET datafusion.optimizer.hash_join_single_partition_threshold = 0",
        "SET datafusion.optimizer.hash_join_single_partition_threshold_rows = 0",
    ],
];

/// nilearn's strategies and the SQL aggregate giving each. Values are cast to DOUBLE as nilearn reads them
/// (`get_fdata`), so an integer median is not truncated to the column's type.
const STRATEGIES: [(&str, &str); 7] = [
    ("mean", "avg"),
    ("median", "median"),
    ("sum", "sum"),
    ("minimum", "min"),
    ("maximum", "max"),
    ("variance", "var_pop"),
    ("standard_deviation", "stddev_pop"),
];

/// One cell of a result, for comparisons.
#[derive(Debug, Clone, PartialEq)]
enum Cell {
    Null,
    Num(f64),
    Text(String),
}

fn cell(a: &ArrayRef, row: usize) -> Cell {
    if a.is_null(row) {
        return Cell::Null;
    }
    if let Ok(f) = cast(a, &DataType::Float64)
        && a.data_type().is_numeric()
    {
        let f = f.as_any().downcast_ref::<Float64Array>().unwrap();
        return Cell::Num(f.value(row));
    }
    let s = cast(a, &DataType::Utf8).unwrap();
    Cell::Text(
        s.as_any()
            .downcast_ref::<StringArray>()
            .unwrap()
            .value(row)
            .to_string(),
    )
}

fn to_rows(batches: &[RecordBatch]) -> Vec<Vec<Cell>> {
    batches
        .iter()
        .flat_map(|b| {
            (0..b.num_rows()).map(move |r| b.columns().iter().map(|c| cell(c, r)).collect())
        })
        .collect()
}

/// A session with the tables of `setup` registered and `settings` applied.
async fn session(setup: &[String], settings: &[&str]) -> SessionContext {
    let ctx = session_context(SessionConfig::new().with_target_partitions(2));
    for s in setup
        .iter()
        .map(String::as_str)
        .chain(settings.iter().copied())
    {
        ctx.sql(s)
            .await
            .unwrap_or_else(|e| panic!("{s}: {e}"))
            .collect()
            .await
            .unwrap_or_else(|e| panic!("{s}: {e}"));
    }
    ctx
}

async fn query(ctx: &SessionContext, sql: &str) -> Vec<Vec<Cell>> {
    let batches = common::sql::collect_sql(ctx, sql).await;
    to_rows(&batches)
}

/// The answer of `sql` under every setting of [`SETTINGS`], checked to be the same each time.
async fn answer(setup: &[String], sql: &str) -> Vec<Vec<Cell>> {
    let mut first: Option<Vec<Vec<Cell>>> = None;
    for settings in SETTINGS {
        let got = query(&session(setup, settings).await, sql).await;
        match &first {
            None => first = Some(got),
            Some(want) => assert_close_rows(&got, want, &format!("{sql} under {settings:?}")),
        }
    }
    first.unwrap()
}

fn close(got: f64, want: f64) -> bool {
    (got - want).abs() <= 1e-5 * got.abs().max(want.abs()) + 1e-9
}

fn assert_close_rows(got: &[Vec<Cell>], want: &[Vec<Cell>], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: row counts differ");
    for (n, (g, w)) in got.iter().zip(want).enumerate() {
        let same = g.len() == w.len()
            && g.iter().zip(w).all(|(a, b)| match (a, b) {
                (Cell::Num(a), Cell::Num(b)) => close(*a, *b),
                _ => a == b,
            });
        assert!(same, "{what}: row {n}: {g:?} vs {w:?}");
    }
}

/// nilearn's rows as cells (numbers, or strings for file names).
fn json_rows(v: &Value) -> Vec<Vec<Cell>> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|row| {
            row.as_array()
                .unwrap()
                .iter()
                .map(|x| match x {
                    Value::String(s) => Cell::Text(s.clone()),
                    Value::Null => Cell::Null,
                    x => Cell::Num(x.as_f64().unwrap()),
                })
                .collect()
        })
        .collect()
}

fn create(name: &str, location: &str) -> String {
    format!("CREATE EXTERNAL TABLE {name} STORED AS NIFTI LOCATION '{location}'")
}

fn oracle(dir: &Path, seed: u64, cases: usize) -> Value {
    let out = common::run_python(
        "tests/atlas_oracle.py",
        &[
            dir,
            Path::new(&seed.to_string()),
            Path::new(&cases.to_string()),
        ],
    );
    serde_json::from_str(&out).unwrap()
}

const JOIN: &str = "b JOIN atlas a ON b.i = a.i AND b.j = a.j AND b.k = a.k";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn labels_and_mask_joins_equal_nilearn() {
    let dir = tempfile::tempdir().unwrap();
    let answers = oracle(dir.path(), 12, 5);
    for case in answers["cases"].as_array().unwrap() {
        let setup = [
            create("bold", case["run"].as_str().unwrap()),
            create("atlas", case["atlas"].as_str().unwrap()),
            create("mask", case["mask"].as_str().unwrap()),
        ];
        let what = format!("{} ({})", case["run"], case["dtype"]);
        for (strategy, agg) in STRATEGIES {
            let sql = format!(
                "SELECT a.value AS label, b.t, {agg}(CAST(b.value AS DOUBLE)) AS v FROM bold {JOIN} \
                 WHERE a.value <> 0 GROUP BY a.value, b.t ORDER BY label, b.t"
            );
            // Every strategy has a GroupsAccumulator: the join and the label × t GROUP BY are one fused pass.
            let ctx = session(&setup, &[]).await;
            let plan = common::sql::physical_plan(&ctx, &sql).await;
            let shown = displayable(plan.as_ref()).indent(true).to_string();
            assert!(shown.contains("JoinAggregateExec: mode=Partial"), "{shown}");
            if strategy == "mean" {
                // Without it, the label × t GROUP BY over the join is a dense aggregate (the int16 labels' range,
                // or their values mapped as they appear).
                let ctx = session(&setup, &["SET voxelscan.fused_joins = false"]).await;
                let plan = common::sql::physical_plan(&ctx, &sql).await;
                let shown = displayable(plan.as_ref()).indent(true).to_string();
                assert!(
                    shown.contains("DenseAggregateExec: mode=Partial")
                        && !shown.contains("JoinAggregateExec"),
                    "{shown}"
                );
            }
            let got = answer(&setup, &sql).await;
            let want = json_rows(&case["labels"][strategy]);
            assert_close_rows(&got, &want, &format!("{what}: strategy {strategy}"));
        }
        // nilearn's voxel order: C order of (i, j, k) within each volume.
        let sql = "SELECT CAST(b.value AS DOUBLE) FROM bold b JOIN mask m \
                   ON b.i = m.i AND b.j = m.j AND b.k = m.k WHERE m.value <> 0 ORDER BY b.t, b.i, b.j, b.k";
        let got = answer(&setup, sql).await;
        let want: Vec<Vec<Cell>> = case["mask_values"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|volume| volume.as_array().unwrap().iter())
            .map(|x| vec![Cell::Num(x.as_f64().unwrap())])
            .collect();
        assert_close_rows(&got, &want, &format!("{what}: NiftiMasker"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_against_one_atlas_equal_nilearn_per_run() {
    let dir = tempfile::tempdir().unwrap();
    let answers = oracle(dir.path(), 5, 0);
    let multi = &answers["multi"];
    let atlas = multi["atlas"].as_str().unwrap();
    let setup = [
        create("runs", multi["runs"].as_str().unwrap()),
        create("atlas", atlas),
    ];
    for (strategy, agg) in STRATEGIES {
        let sql = format!(
            "SELECT b.file, a.value AS label, b.t, {agg}(CAST(b.value AS DOUBLE)) FROM runs {JOIN} \
             WHERE a.value > 0 GROUP BY b.file, a.value, b.t ORDER BY b.file, label, b.t"
        );
        assert_fused(&setup, &sql, "file@per-file(3 values)").await;
        if strategy == "mean" {
            // Once run, EXPLAIN shows the groups and their factors (the atlas has three labels).
            let (shown, _) = ran(&session(&setup, &[]).await, &sql).await;
            assert!(
                shown.contains("groups=file×value×t=3×3×5=45, build_box="),
                "{shown}"
            );
        }
        let got = file_names(answer(&setup, &sql).await);
        let want = json_rows(&multi["strategies"][strategy]);
        assert_close_rows(&got, &want, &format!("runs × atlas, strategy {strategy}"));
    }
    // BIDS-named runs: two of sub-01 (lengths differ, one gzipped), one of sub-02, one of sub-03 on a smaller grid,
    // and a file that is not BIDS-named (its `sub` NULL, a group of its own).
    let bids = &multi["bids"];
    let setup = [
        create("runs", bids["dir"].as_str().unwrap()),
        create("atlas", atlas),
    ];
    let sql = format!(
        "SELECT b.file, a.value AS label, b.t, avg(b.value) FROM runs {JOIN} WHERE a.value > 0 \
         GROUP BY b.file, a.value, b.t ORDER BY b.file, label, b.t"
    );
    assert_fused(&setup, &sql, "file@per-file(5 values)").await;
    let want = json_rows(&bids["by_file"]);
    let got = file_names(answer(&setup, &sql).await);
    assert_close_rows(&got, &want, "BIDS runs × atlas by file");
    // Two runs of one subject are one group: their voxels at each t averaged together.
    let sql = format!(
        "SELECT b.sub, a.value AS label, b.t, avg(CAST(b.value AS DOUBLE)) FROM runs {JOIN} WHERE a.value > 0 \
         GROUP BY b.sub, a.value, b.t ORDER BY b.sub, label, b.t"
    );
    assert_fused(&setup, &sql, "sub@per-file(4 values)").await;
    let got = answer(&setup, &sql).await;
    assert_close_rows(
        &got,
        &json_rows(&bids["by_sub"]),
        "BIDS runs × atlas by subject",
    );
    // One region: sub-03's grid has no voxel in its box, so no group of it.
    let sql = format!(
        "SELECT b.file, b.t, avg(b.value) FROM runs {JOIN} WHERE a.value = 2 \
         GROUP BY b.file, b.t ORDER BY b.file, b.t"
    );
    assert_fused(&setup, &sql, "file@per-file(5 values)").await;
    let got = file_names(answer(&setup, &sql).await);
    let want: Vec<Vec<Cell>> = want
        .iter()
        .filter(|r| r[1] == Cell::Num(2.0))
        .map(|r| vec![r[0].clone(), r[2].clone(), r[3].clone()])
        .collect();
    assert!(
        !want.is_empty()
            && !want
                .iter()
                .any(|r| r[0] == Cell::Text("sub-03_task-rest_run-1_bold.nii".into())),
        "{want:?}"
    );
    assert_close_rows(&got, &want, "BIDS runs × region 2");
}

/// `file` is the path as matched: its name, for comparing with the oracle's.
fn file_names(mut rows: Vec<Vec<Cell>>) -> Vec<Vec<Cell>> {
    for row in &mut rows {
        for c in row.iter_mut() {
            if let Cell::Text(path) = c
                && path.contains('/')
            {
                *c = Cell::Text(path.rsplit('/').next().unwrap().to_string());
            }
        }
    }
    rows
}

/// `sql` is one fused join-aggregate pass with the per-file key `key` (EXPLAIN shows it), and a hash join without
/// `voxelscan.fused_joins`.
async fn assert_fused(setup: &[String], sql: &str, key: &str) {
    let ctx = session(setup, &[]).await;
    let plan = common::sql::physical_plan(&ctx, sql).await;
    let shown = displayable(plan.as_ref()).indent(true).to_string();
    assert!(
        shown.contains("JoinAggregateExec: mode=Partial") && shown.contains(key),
        "{sql}: {shown}"
    );
    let ctx = session(setup, &["SET voxelscan.fused_joins = false"]).await;
    let plan = common::sql::physical_plan(&ctx, sql).await;
    let shown = displayable(plan.as_ref()).indent(true).to_string();
    assert!(!shown.contains("JoinAggregateExec"), "{sql}: {shown}");
}

/// Coordinates with NULLs, duplicates and keys outside the 6×5×4 grid, as INT (cast to BIGINT by the join).
const PEAKS: &str = "i,j,k,name\n\
    1,2,3,a\n1,2,3,a\n0,0,0,b\n5,4,3,c\n6,0,0,out\n-1,2,2,neg\n,1,1,nul\n2,,1,nul\n3,3,3,d\n2,4,1,e\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinate_joins_equal_datafusions_own() {
    let dir = tempfile::tempdir().unwrap();
    let answers = oracle(dir.path(), 3, 0);
    let runs = answers["multi"]["runs"].as_str().unwrap();
    let run = format!("{runs}sub-02_bold.nii");
    let peaks = dir.path().join("peaks.csv");
    std::fs::write(&peaks, PEAKS).unwrap();
    let peaks_table = format!(
        "CREATE EXTERNAL TABLE peaks (i INT, j INT, k INT, name VARCHAR) STORED AS CSV LOCATION '{}' \
         OPTIONS ('format.has_header' 'true')",
        peaks.display()
    );
    let atlas = answers["multi"]["atlas"].as_str().unwrap();
    let setup = [create("bold", &run), peaks_table, create("atlas", atlas)];
    // The same voxels as tables in memory: DataFusion's join, no voxel scan below it.
    let mut own_setup = setup.to_vec();
    own_setup.push("CREATE TABLE copy AS SELECT * FROM bold".to_string());
    own_setup.push("CREATE TABLE atlas_copy AS SELECT * FROM atlas".to_string());
    let on = "b.i = p.i AND b.j = p.j AND b.k = p.k";
    let queries = [
        format!(
            "SELECT p.name, b.t, count(*), sum(b.value) FROM {{T}} b JOIN peaks p ON {on} \
             GROUP BY p.name, b.t ORDER BY p.name, b.t"
        ),
        format!(
            "SELECT count(*), sum(b.value) FROM {{T}} b JOIN peaks p ON {on} WHERE p.name = 'none'"
        ),
        format!(
            "SELECT b.i, b.j, b.k, b.t FROM {{T}} b WHERE EXISTS (SELECT 1 FROM peaks p WHERE {on}) \
             ORDER BY b.i, b.j, b.k, b.t"
        ),
        format!(
            "SELECT count(*), sum(b.value) FROM {{T}} b WHERE NOT EXISTS (SELECT 1 FROM peaks p WHERE {on})"
        ),
        format!(
            "SELECT b.i, b.j, b.k, b.value FROM {{T}} b LEFT SEMI JOIN peaks p ON {on} \
             WHERE b.t = 1 ORDER BY b.i, b.j, b.k"
        ),
        format!(
            "SELECT count(*) FROM {{T}} b RIGHT JOIN peaks p ON {on} AND b.t = 0 WHERE b.i IS NULL"
        ),
    ];
    // Voxel tables on both sides (the dense join) in every join type, and TopK's dynamic filter.
    let on = "b.i = a.i AND b.j = a.j AND b.k = a.k";
    let voxel_queries = [
        format!(
            "SELECT count(*), count(a.value), sum(b.value) FROM {{T}} b LEFT JOIN {{A}} a ON {on} AND a.value = 2"
        ),
        format!(
            "SELECT count(*), count(b.value) FROM {{T}} b RIGHT JOIN {{A}} a ON {on} AND b.t = 9"
        ),
        format!(
            "SELECT count(*), sum(b.value) FROM {{T}} b FULL JOIN {{A}} a ON {on} AND b.t = 1 AND a.value = 3"
        ),
        format!(
            "SELECT b.t, count(*) FROM {{T}} b WHERE EXISTS (SELECT 1 FROM {{A}} a WHERE {on} AND a.value = 3) \
             GROUP BY b.t ORDER BY b.t"
        ),
        format!(
            "SELECT count(*), sum(b.value) FROM {{T}} b WHERE NOT EXISTS (SELECT 1 FROM {{A}} a WHERE {on} AND a.value > 1)"
        ),
        format!("SELECT count(*) FROM {{A}} a LEFT SEMI JOIN {{T}} b ON {on} AND b.value > 40"),
        // Two joins on the same keys: partitioned, they share one hash partitioning.
        format!(
            "SELECT count(*), sum(b.value) FROM {{T}} b JOIN {{A}} a ON {on} \
             JOIN {{A}} a2 ON a2.i = b.i AND a2.j = b.j AND a2.k = b.k WHERE a.value = 2 AND a2.value < 5"
        ),
        "SELECT i, j, k, t, value FROM {T} ORDER BY k DESC, j, i, t LIMIT 7".to_string(),
        "SELECT t, value FROM {T} WHERE value > 30 ORDER BY value DESC, i, j, k, t LIMIT 5"
            .to_string(),
    ];
    for q in queries.iter().chain(&voxel_queries) {
        let ours = answer(&setup, &q.replace("{T}", "bold").replace("{A}", "atlas")).await;
        let own = answer(
            &own_setup,
            &q.replace("{T}", "copy").replace("{A}", "atlas_copy"),
        )
        .await;
        assert_close_rows(&ours, &own, q);
        assert!(!ours.is_empty(), "{q}: no rows at all");
    }
}

/// Sum a metric over the scans of table `table` in a plan.
fn scan_metric(plan: &Arc<dyn ExecutionPlan>, table: &str, name: &str) -> usize {
    let own = match plan.downcast_ref::<DataSourceExec>() {
        Some(_)
            if displayable(plan.as_ref())
                .one_line()
                .to_string()
                .contains(&format!("table={table},")) =>
        {
            plan.metrics()
                .and_then(|m| m.sum_by_name(name))
                .map_or(0, |v| v.as_usize())
        }
        _ => 0,
    };
    own + plan
        .children()
        .iter()
        .map(|c| scan_metric(c, table, name))
        .sum::<usize>()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_region_reads_only_its_bounding_box() {
    let dir = tempfile::tempdir().unwrap();
    let answers = oracle(dir.path(), 9, 0);
    let multi = &answers["multi"];
    let runs = multi["runs"].as_str().unwrap();
    let setup = [
        create("bold", &format!("{runs}sub-02_bold.nii")),
        create("atlas", multi["atlas"].as_str().unwrap()),
    ];
    let ctx = session(&setup, &[]).await;
    let bbox = query(
        &ctx,
        "SELECT (max(i) - min(i) + 1) * (max(j) - min(j) + 1) * (max(k) - min(k) + 1) FROM atlas WHERE value = 2",
    )
    .await;
    let Cell::Num(bbox_voxels) = bbox[0][0] else {
        panic!("no bounding box: {bbox:?}")
    };
    // sub-02 is 6×5×4×5 int16.
    let bbox_bytes = bbox_voxels as usize * 5 * 2;
    let sql = format!(
        "SELECT b.t, avg(b.value) FROM bold {JOIN} WHERE a.value = 2 GROUP BY b.t ORDER BY b.t"
    );
    let plan = common::sql::physical_plan(&ctx, &sql).await;
    let explained = displayable(plan.as_ref()).indent(true).to_string();
    assert!(
        explained.contains("dynamic_filter=DynamicFilter"),
        "the scan shows no dynamic filter: {explained}"
    );
    // The dense join: one linear key, no equalities left to filter (both sides are voxel scans).
    assert!(
        explained.contains("on=[(CAST(i@") && !explained.contains("filter=i_0_l"),
        "no dense join: {explained}"
    );
    assert!(
        explained.contains("JoinAggregateExec: mode=Partial, gby=[t@[0, 4]]"),
        "no fused join-aggregate: {explained}"
    );
    let out = collect(Arc::clone(&plan), ctx.task_ctx()).await.unwrap();
    assert_eq!(to_rows(&out).len(), 5);
    let read = scan_metric(&plan, "bold", "bytes_read");
    let skipped = scan_metric(&plan, "bold", "dynamic_filter_bytes_skipped");
    assert!(
        read <= bbox_bytes,
        "read {read} bytes, the region's bounding box is {bbox_bytes}"
    );
    assert_eq!(
        read + skipped,
        6 * 5 * 4 * 5 * 2,
        "read + skipped = the run"
    );
    // A scattered region (label 1 of a random atlas): the join lists its keys, the scan reads exactly its voxels.
    let voxels = query(&ctx, "SELECT count(*) FROM atlas WHERE value = 1").await;
    let Cell::Num(voxels) = voxels[0][0] else {
        panic!("{voxels:?}")
    };
    let scattered = "SELECT b.t, sum(b.value) FROM bold b JOIN atlas a ON b.i = a.i AND b.j = a.j AND b.k = a.k \
                     WHERE a.value = 1 GROUP BY b.t";
    let plan = common::sql::physical_plan(&ctx, scattered).await;
    collect(Arc::clone(&plan), ctx.task_ctx()).await.unwrap();
    assert_eq!(
        scan_metric(&plan, "bold", "bytes_read"),
        voxels as usize * 5 * 2,
        "exactly the region's voxels"
    );
    // Without dynamic filters the fused join-aggregate still narrows the scan to the build side's voxels (it
    // collects them itself); without it too, the whole run is read (the checks above mean something).
    let no_dynamic = "SET datafusion.optimizer.enable_dynamic_filter_pushdown = false";
    let ctx = session(&setup, &[no_dynamic]).await;
    let plan = common::sql::physical_plan(&ctx, &sql).await;
    let fused = collect(Arc::clone(&plan), ctx.task_ctx()).await.unwrap();
    assert_close_rows(&to_rows(&fused), &to_rows(&out), "dynamic filters off");
    assert!(scan_metric(&plan, "bold", "bytes_read") <= bbox_bytes);
    let ctx = session(&setup, &[no_dynamic, "SET voxelscan.fused_joins = false"]).await;
    let plan = common::sql::physical_plan(&ctx, &sql).await;
    let off = collect(Arc::clone(&plan), ctx.task_ctx()).await.unwrap();
    assert_close_rows(
        &to_rows(&off),
        &to_rows(&out),
        "dynamic filters and fusion off",
    );
    assert_eq!(scan_metric(&plan, "bold", "bytes_read"), 6 * 5 * 4 * 5 * 2);
}

/// A scattered key list on a `.nii.gz` run: read forward in one pass per slab (a reader per listed plane would inflate
/// from a seek point again for each), with the same answer as on the `.nii` copy, which reads exactly the voxels.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listed_keys_on_gzip_runs_are_read_forward() {
    let dir = tempfile::tempdir().unwrap();
    let shape = [12, 10, 8, 6];
    let (nii, gz) = (dir.path().join("run.nii"), dir.path().join("run.nii.gz"));
    voxelscan::synth::bench_image(&nii, &shape, 1.0, 0.0, false).unwrap();
    voxelscan::synth::bench_image(&gz, &shape, 1.0, 0.0, true).unwrap();
    // The build side: the voxels of volume 0 above a high value (scattered over many rows and every plane).
    let sql = "SELECT b.t, b.i, b.j, b.k, b.value FROM bold b JOIN mask m ON b.i = m.i AND b.j = m.j AND b.k = m.k \
               WHERE m.t = 0 AND m.value > 3800 ORDER BY b.t, b.i, b.j, b.k";
    let mut runs = Vec::new();
    for run in [&nii, &gz] {
        let setup = [
            create("bold", run.to_str().unwrap()),
            create("mask", nii.to_str().unwrap()),
        ];
        let ctx = session(&setup, &[]).await;
        let plan = common::sql::physical_plan(&ctx, sql).await;
        let rows = to_rows(&collect(Arc::clone(&plan), ctx.task_ctx()).await.unwrap());
        runs.push((rows, scan_metric(&plan, "bold", "pieces_read")));
    }
    let [(plain, plain_pieces), (gzip, gzip_pieces)] = [runs.remove(0), runs.remove(0)];
    assert!(
        plain.len() > 6 * 8,
        "too few listed voxels to mean anything: {}",
        plain.len()
    );
    assert_eq!(gzip, plain, "the .nii.gz run answers as its .nii copy");
    assert!(
        gzip_pieces < plain_pieces,
        "the .nii reads listed planes as parts ({plain_pieces} pieces), the .nii.gz forward ({gzip_pieces})"
    );
}

/// Coordinates without duplicates: NULL coordinates, keys outside the 6×5×4 grid, NULL names (a group of their own).
const DISTINCT_PEAKS: &str = "i,j,k,name\n\
    1,2,3,a\n0,0,0,b\n5,4,3,\n6,0,0,out\n-1,2,2,neg\n,1,1,nul\n3,3,3,a\n2,4,1,\n4,1,2,c\n";

/// The plan of `sql` after running it, with its metrics, as `EXPLAIN ANALYZE` shows it.
async fn ran(ctx: &SessionContext, sql: &str) -> (String, Vec<Vec<Cell>>) {
    let plan = common::sql::physical_plan(ctx, sql).await;
    let out = collect(Arc::clone(&plan), ctx.task_ctx()).await.unwrap();
    (
        DisplayableExecutionPlan::with_metrics(plan.as_ref())
            .indent(true)
            .to_string(),
        to_rows(&out),
    )
}

/// The `moment_rows` metric of the fused node in a plan shown with its metrics (0 when absent).
fn moment_rows(shown: &str) -> f64 {
    let Some((_, rest)) = shown.split_once("moment_rows=") else {
        return 0.0;
    };
    let figure: String = rest
        .chars()
        .take_while(|c| !matches!(c, ',' | ']'))
        .collect();
    let (number, unit) = figure.split_once(' ').unwrap_or((figure.as_str(), ""));
    let scale = match unit {
        "K" => 1e3,
        "M" => 1e6,
        "B" => 1e9,
        _ => 1.0,
    };
    number.parse::<f64>().unwrap_or(0.0) * scale
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fused_join_aggregates_equal_datafusions_own() {
    let dir = tempfile::tempdir().unwrap();
    let answers = oracle(dir.path(), 4, 0);
    let runs = answers["multi"]["runs"].as_str().unwrap();
    let run = format!("{runs}sub-02_bold.nii");
    let atlas = answers["multi"]["atlas"].as_str().unwrap();
    let csv = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        format!(
            "CREATE EXTERNAL TABLE {} (i INT, j INT, k INT, name VARCHAR) STORED AS CSV LOCATION '{}' \
             OPTIONS ('format.has_header' 'true')",
            name.trim_end_matches(".csv"),
            path.display()
        )
    };
    let setup = [
        create("bold", &run),
        create("atlas", atlas),
        create("runs", runs),
        csv("peaks.csv", DISTINCT_PEAKS),
        csv("dups.csv", PEAKS),
        "CREATE TABLE empty (i BIGINT, j BIGINT, k BIGINT, name VARCHAR)".to_string(),
    ];
    let mut own_setup = setup.to_vec();
    own_setup.push("CREATE TABLE copy AS SELECT * FROM bold".to_string());
    own_setup.push("CREATE TABLE atlas_copy AS SELECT * FROM atlas".to_string());
    own_setup.push("CREATE TABLE runs_copy AS SELECT * FROM runs".to_string());
    let on = |p: &str| format!("b.i = {p}.i AND b.j = {p}.j AND b.k = {p}.k");
    // (query, what the fused node must do: "dense", "fallback", "absent", or "any" when DataFusion decides)
    let cases = [
        (
            format!(
                "SELECT p.name, b.t, count(*), sum(b.value), avg(b.value), min(b.value) FROM {{T}} b \
                 JOIN peaks p ON {} GROUP BY p.name, b.t ORDER BY p.name NULLS FIRST, b.t",
                on("p")
            ),
            "dense",
        ),
        (
            format!(
                "SELECT b.i, b.j, b.k, count(*), max(b.value) FROM {{T}} b JOIN peaks p ON {} \
                 GROUP BY b.i, b.j, b.k ORDER BY b.i, b.j, b.k",
                on("p")
            ),
            "dense",
        ),
        (
            format!(
                "SELECT b.t, p.name, b.k, stddev_pop(CAST(b.value AS DOUBLE)), var_samp(b.value) FROM {{T}} b \
                 JOIN peaks p ON {} WHERE p.name IS NOT NULL GROUP BY b.t, p.name, b.k ORDER BY b.t, p.name, b.k",
                on("p")
            ),
            "dense",
        ),
        // A voxel listed twice: each probe row counts twice, as in DataFusion's join (the node falls back).
        (
            format!(
                "SELECT p.name, b.t, count(*), sum(b.value) FROM {{T}} b JOIN dups p ON {} \
                 GROUP BY p.name, b.t ORDER BY p.name NULLS FIRST, b.t",
                on("p")
            ),
            "fallback",
        ),
        // Empty build sides: nothing matches, no group.
        (
            format!(
                "SELECT p.name, b.t, count(*) FROM {{T}} b JOIN peaks p ON {} WHERE p.name = 'none' \
                 GROUP BY p.name, b.t",
                on("p")
            ),
            // A constant key makes the aggregate's input ordered on it: DataFusion's own aggregate keeps that.
            "any",
        ),
        (
            format!(
                "SELECT e.name, b.t, sum(b.value) FROM {{T}} b JOIN empty e ON {} GROUP BY e.name, b.t",
                on("e")
            ),
            "dense",
        ),
        // Build keys as expressions of the atlas' values, and regions by a label condition.
        (
            format!(
                "SELECT a.value % 2 AS odd, b.t, avg(b.value), count(*) FROM {{T}} b JOIN {{A}} a ON {} \
                 WHERE a.value > 0 GROUP BY a.value % 2, b.t ORDER BY odd, b.t",
                on("a")
            ),
            "dense",
        ),
        // The whole grid as the build side, label 0 included.
        (
            format!(
                "SELECT a.value, sum(b.value), count(*) FROM {{T}} b JOIN {{A}} a ON {} \
                 GROUP BY a.value ORDER BY a.value",
                on("a")
            ),
            "dense",
        ),
        // Several runs against one atlas: without `file` keys the runs' rows add up; with them, one group each.
        (
            format!(
                "SELECT a.value AS label, b.t, avg(b.value), count(*) FROM {{R}} b JOIN {{A}} a ON {} \
                 WHERE a.value > 0 GROUP BY a.value, b.t ORDER BY label, b.t",
                on("a")
            ),
            "dense",
        ),
        (
            format!(
                "SELECT b.file, a.value AS label, b.t, sum(b.value) FROM {{R}} b JOIN {{A}} a ON {} \
                 WHERE a.value > 0 GROUP BY b.file, a.value, b.t ORDER BY b.file, label, b.t",
                on("a")
            ),
            "dense",
        ),
        // An expression over `file` is not a per-file key: DataFusion's join and aggregate.
        (
            format!(
                "SELECT upper(b.file) AS f, a.value AS label, count(*) FROM {{R}} b JOIN {{A}} a ON {} \
                 WHERE a.value > 0 GROUP BY upper(b.file), a.value ORDER BY f, label",
                on("a")
            ),
            "absent",
        ),
    ];
    for (q, expect) in &cases {
        let sql = q
            .replace("{T}", "bold")
            .replace("{A}", "atlas")
            .replace("{R}", "runs");
        let ours = answer(&setup, &sql).await;
        let own = answer(
            &own_setup,
            &q.replace("{T}", "copy")
                .replace("{A}", "atlas_copy")
                .replace("{R}", "runs_copy"),
        )
        .await;
        assert_close_rows(&ours, &own, &sql);
        let (shown, rows) = ran(&session(&setup, &[]).await, &sql).await;
        assert_close_rows(&rows, &own, &sql);
        match *expect {
            "dense" => {
                assert!(
                    shown.contains("JoinAggregateExec: mode=Partial")
                        && shown.contains("build_box="),
                    "{sql}: {shown}"
                );
                // Every aggregate here is one the native moments compute: the kept rows went to them.
                if !sql.contains("JOIN empty") {
                    assert!(moment_rows(&shown) > 0.0, "{sql}: {shown}");
                }
                // The whole grid as the build side: read as whole planes (mapped, not gathered row by row).
                if sql.contains("GROUP BY a.value ORDER BY a.value") {
                    assert!(
                        shown.contains("read=planes (the box fills them)"),
                        "{sql}: {shown}"
                    );
                }
            }
            "fallback" => assert!(
                shown.contains("fallback=(a voxel appears twice"),
                "{sql}: {shown}"
            ),
            "absent" => assert!(!shown.contains("JoinAggregateExec"), "{sql}: {shown}"),
            _ => {}
        }
        if !sql.contains("'none'") && !sql.contains("JOIN empty") {
            assert!(!ours.is_empty(), "{sql}: no rows at all");
        }
    }
}
