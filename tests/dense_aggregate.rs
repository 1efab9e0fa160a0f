//! Dense group-bys on coordinate keys (`DenseAggregateExec`): every query is answered with the dense path and again
//! with `SET voxelscan.dense_aggregates = false` (DataFusion's hash aggregate), and the answers must agree; EXPLAIN
//! shows which was chosen; the tSNR map is checked against numpy (`tests/py/tsnr_oracle.py`, the venv's Python).
//!
//! Floats are compared within 1e-9 relative: the final merge of partial states follows the order partitions arrive
//! in, which differs between runs of DataFusion's own aggregate too. Everything else must be equal.
#![cfg(feature = "sql")]

mod common;

use std::collections::HashMap;
use std::path::Path;

use datafusion::common::ScalarValue;
use datafusion::prelude::{SessionConfig, SessionContext};
use voxelscan::dtype::{DType, Scalar};
use voxelscan::synth::{random_i16_le, write_nifti1};
use voxelscan::table::{register_voxels, session_context};

/// 48×40×16×24 int16 (two slabs, so two partitions: Partial and FinalPartitioned nodes), scaled by 0.5 and +10.
const SHAPE: [usize; 4] = [48, 40, 16, 24];

fn image(path: &Path, shape: &[usize], seed: u64, slope: f32, inter: f32) {
    let n = shape.iter().product();
    let data = random_i16_le(n, seed, -300, 4000);
    write_nifti1(
        path,
        shape,
        DType::native(Scalar::I16),
        slope,
        inter,
        &data,
        false,
    )
    .unwrap();
}

/// `img` (scaled, float32 values), `raw` (the same file unscaled: int16 values), `small` (a 6×5×4×3 image) and
/// `many` (a directory of three runs) in one context of `partitions` target partitions.
async fn context(dir: &Path, partitions: usize) -> SessionContext {
    let main = dir.join("bold.nii");
    if !main.exists() {
        image(&main, &SHAPE, 7, 0.5, 10.0);
        image(&dir.join("small.nii"), &[6, 5, 4, 3], 3, 1.0, 0.0);
        std::fs::create_dir_all(dir.join("runs")).unwrap();
        for s in 0..3 {
            image(
                &dir.join(format!("runs/run{s}.nii")),
                &[8, 6, 5, 4 + s as usize],
                11 + s,
                1.0,
                0.0,
            );
        }
    }
    let ctx = session_context(SessionConfig::new().with_target_partitions(partitions));
    // These tests are about the dense node: aggregates over the scan would otherwise be computed in the scan
    // (tests/scan_aggregate.rs).
    run(&ctx, "SET voxelscan.scan_aggregates = false").await;
    let none = HashMap::new();
    let unscaled = HashMap::from([("scaling".to_string(), "false".to_string())]);
    let p = |n: &str| dir.join(n).to_string_lossy().into_owned();
    register_voxels(&ctx, "img", &p("bold.nii"), &none).unwrap();
    register_voxels(&ctx, "raw", &p("bold.nii"), &unscaled).unwrap();
    register_voxels(&ctx, "small", &p("small.nii"), &none).unwrap();
    register_voxels(&ctx, "many", &p("runs"), &none).unwrap();
    ctx
}

use common::sql::{as_f64, assert_same, cells, collect_sql as run, explain, same_cell, tempdir};

async fn set_dense(ctx: &SessionContext, on: bool) {
    run(ctx, &format!("SET voxelscan.dense_aggregates = {on}")).await;
}

/// Run `sql` dense and not; assert the same answer and that the dense node was (or was not) chosen. Returns the
/// number of rows.
async fn check(ctx: &SessionContext, sql: &str, dense_expected: bool) -> usize {
    set_dense(ctx, true).await;
    let plan = explain(ctx, sql).await;
    assert_eq!(
        plan.contains("DenseAggregateExec"),
        dense_expected,
        "{sql}: dense node expected: {dense_expected}\n{plan}"
    );
    let dense = cells(&run(ctx, sql).await);
    set_dense(ctx, false).await;
    let plan_off = explain(ctx, sql).await;
    assert!(
        !plan_off.contains("DenseAggregateExec"),
        "{sql}\n{plan_off}"
    );
    let hashed = cells(&run(ctx, sql).await);
    set_dense(ctx, true).await;
    assert_same(sql, "dense vs hash", &dense, &hashed);
    dense.1.len()
}

#[tokio::test]
async fn every_aggregate_by_t_agrees_with_the_hash_aggregate() {
    let dir = tempdir("dense_every");
    for partitions in [1, 2] {
        let ctx = context(dir.path(), partitions).await;
        let n = check(
            &ctx,
            "SELECT t, avg(value) AS a, sum(value) AS s, min(value) AS lo, max(value) AS hi, count(*) AS n, \
             count(value) AS nv, var_samp(value) AS vs, var_pop(value) AS vp, stddev(value) AS sd, \
             stddev_pop(value) AS sdp, median(value) AS med FROM img GROUP BY t ORDER BY t",
            true,
        )
        .await;
        assert_eq!(n, SHAPE[3]);
        check(
            &ctx,
            "SELECT t, sum(value) AS s, min(value) AS lo, max(value) AS hi, bit_and(value) AS ba, \
             bit_or(value) AS bo, bit_xor(value) AS bx, bool_and(value > 0) AS pos, bool_or(value > 3990) AS big, \
             avg(value) AS a FROM raw GROUP BY t ORDER BY t",
            true,
        )
        .await;
        check(
            &ctx,
            "SELECT k, corr(value, i) AS c, approx_distinct(CAST(value AS INT)) AS ad FROM raw GROUP BY k ORDER BY k",
            true,
        )
        .await;
        // Aggregates without a GroupsAccumulator leave the whole node to DataFusion.
        check(
            &ctx,
            "SELECT k, avg(value) AS a, covar_samp(value, j) AS cs, regr_slope(value, t) AS rs FROM raw \
             GROUP BY k ORDER BY k",
            false,
        )
        .await;
    }
}

#[tokio::test]
async fn per_voxel_maps_and_mixed_keys_agree() {
    let dir = tempdir("dense_voxel");
    let ctx = context(dir.path(), 2).await;
    let n = check(
        &ctx,
        "SELECT i, j, k, avg(value) / stddev(value) AS tsnr FROM img GROUP BY i, j, k ORDER BY i, j, k",
        true,
    )
    .await;
    assert_eq!(n, SHAPE[0] * SHAPE[1] * SHAPE[2]);
    check(
        &ctx,
        "SELECT k, t, avg(value) AS a, count(*) AS n FROM img WHERE i BETWEEN 3 AND 20 AND t >= 5 \
         GROUP BY t, k ORDER BY k, t",
        true,
    )
    .await;
    // A key that is not a plain column stays with DataFusion.
    check(
        &ctx,
        "SELECT t % 3 AS r, avg(value) AS a FROM img GROUP BY t % 3 ORDER BY r",
        false,
    )
    .await;
}

#[tokio::test]
async fn nulls_empty_inputs_casts_having_and_fallbacks() {
    let dir = tempdir("dense_nulls");
    let ctx = context(dir.path(), 2).await;
    // NULL values from a CASE: they are not counted, and all-NULL groups give NULL.
    check(
        &ctx,
        "SELECT t, avg(CASE WHEN i > 40 THEN value END) AS a, count(CASE WHEN t < 3 THEN value END) AS n, \
         max(CASE WHEN t = 2 THEN value END) AS m FROM img GROUP BY t ORDER BY t",
        true,
    )
    .await;
    // NULL keys from an outer join: a group of their own.
    let n = check(
        &ctx,
        "SELECT s.k AS sk, count(*) AS n, sum(b.value) AS v FROM small b LEFT JOIN \
         (SELECT i, j, k, t FROM small WHERE k < 2 AND t = 0) s ON b.i = s.i AND b.j = s.j AND b.k = s.k \
         AND b.t = s.t GROUP BY s.k ORDER BY sk NULLS LAST",
        true,
    )
    .await;
    assert_eq!(n, 3);
    // Empty inputs: pruned at plan time, and filtered away at run time.
    assert_eq!(
        check(
            &ctx,
            "SELECT t, avg(value) FROM img WHERE t > 100 GROUP BY t",
            false
        )
        .await,
        0
    );
    assert_eq!(
        check(
            &ctx,
            "SELECT t, avg(value), count(*) FROM img WHERE value < -1e9 GROUP BY t",
            true
        )
        .await,
        0
    );
    // Keys cast from the Int64 coordinates.
    check(
        &ctx,
        "SELECT CAST(t AS INT) AS t32, CAST(k AS SMALLINT) AS k16, arrow_cast(j, 'UInt8') AS j8, \
         sum(value) AS s FROM img GROUP BY CAST(t AS INT), CAST(k AS SMALLINT), arrow_cast(j, 'UInt8') \
         ORDER BY t32, k16, j8",
        true,
    )
    .await;
    // A label-like 16-bit key without statistics: its type's range.
    check(
        &ctx,
        "SELECT r.value AS label, count(*) AS n FROM raw r WHERE r.t = 0 AND r.value < 50 GROUP BY r.value \
         ORDER BY label",
        true,
    )
    .await;
    // HAVING and ORDER BY on an aggregate.
    check(
        &ctx,
        "SELECT t, k, avg(value) AS a FROM img GROUP BY t, k HAVING avg(value) > 1005 ORDER BY a DESC, t, k",
        true,
    )
    .await;
    // One DISTINCT aggregate: DataFusion rewrites it into a GROUP BY t, k below a GROUP BY t, both dense.
    check(
        &ctx,
        "SELECT t, count(DISTINCT k) AS dk FROM img GROUP BY t ORDER BY t",
        true,
    )
    .await;
    // Two DISTINCT aggregates stay DISTINCT: DataFusion's own aggregate.
    check(
        &ctx,
        "SELECT t, count(DISTINCT k) AS dk, sum(DISTINCT j) AS sj FROM img GROUP BY t ORDER BY t",
        false,
    )
    .await;
    // FILTER clauses.
    check(
        &ctx,
        "SELECT t, sum(value) FILTER (WHERE i < 10) AS s, count(*) FILTER (WHERE value > 1000) AS n \
         FROM img GROUP BY t ORDER BY t",
        true,
    )
    .await;
}

/// A 16-bit key whose whole range times the other keys' groups is too many to allocate up front (65 536 × 16 × 24
/// = 25 M > 2^24): its values are numbered as they appear (`mapped`), first, in the middle or NULL-able.
#[tokio::test]
async fn wide_label_keys_are_mapped_and_agree() {
    let dir = tempdir("dense_mapped");
    let ctx = context(dir.path(), 2).await;
    for (sql, rows) in [
        (
            "SELECT r.value AS label, r.k, r.t, avg(r.i) AS a, count(*) AS n, max(r.j) AS m FROM raw r \
             WHERE r.value < 40 GROUP BY r.value, r.k, r.t ORDER BY label, r.k, r.t",
            None,
        ),
        (
            "SELECT r.k, r.value AS label, r.t, sum(r.i) AS s, var_pop(r.j) AS v FROM raw r \
             WHERE r.value < 40 GROUP BY r.k, r.value, r.t ORDER BY r.k, label, r.t",
            None,
        ),
        (
            "SELECT r.t, r.k, CAST(nullif(r.value, -290) AS SMALLINT) AS label, count(*) AS n FROM raw r \
             WHERE r.value < -280 GROUP BY r.t, r.k, CAST(nullif(r.value, -290) AS SMALLINT) \
             ORDER BY r.t, r.k, label NULLS FIRST",
            None,
        ),
        // No rows at all: no blocks allocated, no groups out.
        (
            "SELECT r.value AS label, r.k, r.t, count(*) FROM raw r WHERE r.value > 5000 \
             GROUP BY r.value, r.k, r.t",
            Some(0),
        ),
    ] {
        set_dense(&ctx, true).await;
        let plan = explain(&ctx, sql).await;
        assert!(
            plan.contains(" mapped") && plan.contains("per mapped value"),
            "{sql}\n{plan}"
        );
        let n = check(&ctx, sql, true).await;
        if let Some(want) = rows {
            assert_eq!(n, want, "{sql}");
        } else {
            assert!(n > 100, "{sql}: {n} rows");
        }
    }
    let plan = explain(
        &ctx,
        "SELECT r.value AS label, r.k, r.t, count(*) FROM raw r GROUP BY r.value, r.k, r.t",
    )
    .await;
    assert!(
        plan.contains("gby=[value@[-32768, 32767] mapped, k@[0, 15], t@[0, 23]]")
            && plan.contains("groups=384 per mapped value"),
        "{plan}"
    );
}

#[tokio::test]
async fn multi_file_tables_group_by_file_and_t() {
    let dir = tempdir("dense_multi");
    let ctx = context(dir.path(), 2).await;
    // The text key `file` has no integer range: no dense node...
    let by_file = "SELECT file, t, avg(value) AS a, count(*) AS n FROM many GROUP BY file, t ORDER BY file, t";
    let n = check(&ctx, by_file, false).await;
    assert_eq!(n, 4 + 5 + 6);
    // ...but it is a per-file key, which the scan aggregate groups by: the same answer as DataFusion's aggregate.
    run(&ctx, "SET voxelscan.scan_aggregates = true").await;
    let plan = explain(&ctx, by_file).await;
    assert!(
        plan.contains("ScanAggregateExec") && plan.contains("file@per-file(3 values)"),
        "{plan}"
    );
    let in_scan = cells(&run(&ctx, by_file).await);
    run(&ctx, "SET voxelscan.scan_aggregates = false").await;
    set_dense(&ctx, false).await;
    let plan = explain(&ctx, by_file).await;
    assert!(!plan.contains("ScanAggregateExec"), "{plan}");
    let hashed = cells(&run(&ctx, by_file).await);
    set_dense(&ctx, true).await;
    assert_eq!(in_scan.0, hashed.0);
    assert_eq!(in_scan.1.len(), hashed.1.len());
    for (a, b) in in_scan.1.iter().zip(&hashed.1) {
        assert!(
            a.iter().zip(b).all(|(x, y)| same_cell(x, y)),
            "{a:?} vs {b:?}"
        );
    }
    let n = check(
        &ctx,
        "SELECT t, avg(value) AS a, count(*) AS n, min(file) AS f FROM many GROUP BY t ORDER BY t",
        true,
    )
    .await;
    assert_eq!(n, 6);
}

#[tokio::test]
async fn explain_names_the_dense_node_with_its_ranges() {
    let dir = tempdir("dense_explain");
    let ctx = context(dir.path(), 2).await;
    let plan = explain(
        &ctx,
        "SELECT t, avg(value) FROM img WHERE t < 10 GROUP BY t",
    )
    .await;
    assert!(
        plan.contains("DenseAggregateExec: mode=Partial, gby=[t@[0, 9]]"),
        "{plan}"
    );
    assert!(
        plan.contains("DenseAggregateExec: mode=FinalPartitioned"),
        "{plan}"
    );
    set_dense(&ctx, false).await;
    let plan = explain(
        &ctx,
        "SELECT t, avg(value) FROM img WHERE t < 10 GROUP BY t",
    )
    .await;
    assert!(
        plan.contains("AggregateExec") && !plan.contains("Dense"),
        "{plan}"
    );
}

#[tokio::test]
async fn the_tsnr_map_equals_numpy() {
    let dir = tempdir("dense_tsnr");
    let path = dir.path().join("bold.nii");
    image(&path, &[12, 10, 6, 30], 5, 0.25, -3.0);
    let ctx = session_context(SessionConfig::new().with_target_partitions(2));
    run(&ctx, "SET voxelscan.scan_aggregates = false").await;
    register_voxels(&ctx, "bold", &path.to_string_lossy(), &HashMap::new()).unwrap();
    let sql = "SELECT i, j, k, avg(value) / stddev(value) AS tsnr FROM bold GROUP BY i, j, k ORDER BY i, j, k";
    assert!(explain(&ctx, sql).await.contains("DenseAggregateExec"));
    let batches = run(&ctx, sql).await;
    let (_, rows) = cells(&batches);
    let expected = common::run_python("tests/py/tsnr_oracle.py", &[&path]);
    let lines: Vec<&str> = expected.lines().collect();
    assert_eq!(rows.len(), lines.len());
    for (row, line) in rows.iter().zip(&lines) {
        let parts: Vec<&str> = line.split(' ').collect();
        let key: Vec<String> = row[..3].iter().map(|v| v.to_string()).collect();
        assert_eq!(key, parts[..3], "{line}");
        let want: f64 = parts[3].parse().unwrap();
        let got = as_f64(&row[3]).unwrap();
        assert!((got - want).abs() <= 1e-9 * want.abs(), "{line}: got {got}");
    }
}

#[test]
fn cells_differ_only_by_float_rounding() {
    // NaN equals NaN, floats within 1e-9 relative, everything else exactly.
    assert!(same_cell(
        &ScalarValue::Float64(Some(f64::NAN)),
        &ScalarValue::Float64(Some(f64::NAN))
    ));
    assert!(!same_cell(
        &ScalarValue::Int64(Some(1)),
        &ScalarValue::Int64(Some(2))
    ));
    assert!(same_cell(
        &ScalarValue::Float64(Some(1.0)),
        &ScalarValue::Float64(Some(1.0 + 1e-12))
    ));
}
