//! Aggregates computed inside the voxel scan (`ScanAggregateExec`): every query runs with the node and again with
//! `SET voxelscan.scan_aggregates = false` and `voxelscan.dense_aggregates = false` (DataFusion's own aggregate), and
//! the answers (and bytes read) must agree; EXPLAIN shows the node exactly where it is expected. Value types int16,
//! uint8, float32, scaled int16 and big-endian int16; `.nii`, `.nii.gz`, a C-order `.npy` and a multi-file table.
//!
//! Floats are compared within 1e-9 relative (partial states merge in the order partitions finish).
#![cfg(feature = "sql")]

mod common;

use std::collections::HashMap;
use std::path::Path;

use datafusion::common::ScalarValue;
use datafusion::prelude::{SessionConfig, SessionContext};
use voxelscan::dtype::{ByteOrder, DType, Scalar};
use voxelscan::synth::{random_i16_le, write_nifti1};
use voxelscan::table::{register_voxels, session_context};

use common::sql::{
    Cells, as_f64, assert_same, cells, collect_sql as run, explain, run_measured, tempdir,
};

/// 14×12×10×9 (F order): two slabs, so two partitions when asked for.
const SHAPE: [usize; 4] = [14, 12, 10, 9];

fn n() -> usize {
    SHAPE.iter().product()
}

/// A minimal C-order `.npy` (version 1.0) of int16 little-endian values.
fn write_npy(path: &Path, shape: &[usize], data: &[u8]) {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let mut header = format!(
        "{{'descr': '<i2', 'fortran_order': False, 'shape': ({},), }}",
        dims.join(", ")
    );
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend_from_slice(data);
    std::fs::write(path, bytes).unwrap();
}

/// Every fixture table, registered in a context of `partitions` target partitions.
async fn context(dir: &Path, partitions: usize) -> SessionContext {
    let p = |name: &str| dir.join(name);
    if !p("i16.nii").exists() {
        let le = random_i16_le(n(), 7, -300, 4000);
        let native = DType::new(Scalar::I16, ByteOrder::Little);
        write_nifti1(&p("i16.nii"), &SHAPE, native, 1.0, 0.0, &le, false).unwrap();
        write_nifti1(&p("scaled.nii"), &SHAPE, native, 0.5, 10.0, &le, false).unwrap();
        write_nifti1(&p("i16.nii.gz"), &SHAPE, native, 1.0, 0.0, &le, true).unwrap();
        let be: Vec<u8> = le.chunks(2).flat_map(|c| [c[1], c[0]]).collect();
        let big = DType::new(Scalar::I16, ByteOrder::Big);
        write_nifti1(&p("big.nii"), &SHAPE, big, 1.0, 0.0, &be, false).unwrap();
        let u8s: Vec<u8> = le.chunks(2).map(|c| c[0]).collect();
        write_nifti1(
            &p("u8.nii"),
            &SHAPE,
            DType::native(Scalar::U8),
            1.0,
            0.0,
            &u8s,
            false,
        )
        .unwrap();
        let f32s: Vec<u8> = le
            .chunks(2)
            .flat_map(|c| (f32::from(i16::from_le_bytes([c[0], c[1]])) / 7.0).to_ne_bytes())
            .collect();
        write_nifti1(
            &p("f32.nii"),
            &SHAPE,
            DType::native(Scalar::F32),
            1.0,
            0.0,
            &f32s,
            false,
        )
        .unwrap();
        write_npy(&p("c.npy"), &SHAPE, &le);
        std::fs::create_dir_all(p("runs")).unwrap();
        for s in 0..3u64 {
            let shape = [6, 5, 4, 3 + s as usize];
            let data = random_i16_le(shape.iter().product(), 11 + s, -50, 900);
            write_nifti1(
                &p(&format!("runs/r{s}.nii")),
                &shape,
                native,
                1.0,
                0.0,
                &data,
                false,
            )
            .unwrap();
        }
        // BIDS-named runs of different lengths (two of one subject, one gzipped) and a file that is not BIDS-named
        // (its entities NULL).
        std::fs::create_dir_all(p("bids")).unwrap();
        for (s, name) in [
            "sub-01_task-rest_run-1_bold.nii",
            "sub-01_task-rest_run-2_bold.nii.gz",
            "sub-02_task-rest_run-1_bold.nii",
            "extra.nii",
        ]
        .iter()
        .enumerate()
        {
            let shape = [5, 4, 3, 2 + s];
            let data = random_i16_le(shape.iter().product(), 21 + s as u64, -50, 900);
            let gz = name.ends_with(".gz");
            write_nifti1(
                &p(&format!("bids/{name}")),
                &shape,
                native,
                1.0,
                0.0,
                &data,
                gz,
            )
            .unwrap();
        }
    }
    let ctx = session_context(SessionConfig::new().with_target_partitions(partitions));
    let none = HashMap::new();
    let path = |name: &str| p(name).to_string_lossy().into_owned();
    for (table, file) in [
        ("i16", "i16.nii"),
        ("scaled", "scaled.nii"),
        ("gz", "i16.nii.gz"),
        ("big", "big.nii"),
        ("u8", "u8.nii"),
        ("f32", "f32.nii"),
        ("c", "c.npy"),
        ("runs", "runs"),
        ("bids", "bids"),
    ] {
        register_voxels(&ctx, table, &path(file), &none).unwrap();
    }
    let world = HashMap::from([("world".to_string(), "true".to_string())]);
    register_voxels(&ctx, "runs_mm", &path("runs"), &world).unwrap();
    let unscaled = HashMap::from([("scaling".to_string(), "false".to_string())]);
    register_voxels(&ctx, "stored", &path("scaled.nii"), &unscaled).unwrap();
    ctx
}

async fn set(ctx: &SessionContext, scan: bool, dense: bool) {
    run(ctx, &format!("SET voxelscan.scan_aggregates = {scan}")).await;
    run(ctx, &format!("SET voxelscan.dense_aggregates = {dense}")).await;
}

/// Run `sql` with the scan aggregate, with only the dense aggregate and with neither; assert the node was (or was
/// not) chosen, the answers agree and the scans read the same bytes. Returns the rows.
async fn check(ctx: &SessionContext, sql: &str, expected: bool) -> Cells {
    set(ctx, true, true).await;
    let plan = explain(ctx, sql).await;
    assert_eq!(
        plan.contains("ScanAggregateExec"),
        expected,
        "{sql}: scan aggregate expected: {expected}\n{plan}"
    );
    let (batches, bytes_on, _) = run_measured(ctx, sql).await;
    let on = cells(&batches);
    set(ctx, false, true).await;
    assert!(
        !explain(ctx, sql).await.contains("ScanAggregateExec"),
        "{sql}"
    );
    let dense = cells(&run(ctx, sql).await);
    set(ctx, false, false).await;
    let (batches, bytes_off, _) = run_measured(ctx, sql).await;
    let plain = cells(&batches);
    set(ctx, true, true).await;
    assert_same(sql, "scan vs DataFusion", &on, &plain);
    assert_same(sql, "dense vs DataFusion", &dense, &plain);
    // A gzip file's decompressed data is cached in the process: the later run reads less (or nothing).
    let cached = sql.contains("FROM gz") && bytes_off <= bytes_on;
    assert!(
        bytes_on == bytes_off || cached,
        "{sql}: bytes read differ: {bytes_on} vs {bytes_off}"
    );
    on
}

const AGGREGATES: &str = "avg(value) AS a, sum(value) AS s, min(value) AS lo, max(value) AS hi, \
    count(value) AS nv, count(*) AS n, var_samp(value) AS vs, var_pop(value) AS vp, stddev(value) AS sd, \
    stddev_pop(value) AS sdp, avg(value * 2 + 1) AS a2";

const KEYS: [&str; 5] = ["", "t", "i, j, k", "k", "i, t"];

fn query(table: &str, keys: &str, filter: &str) -> String {
    let filter = if filter.is_empty() {
        String::new()
    } else {
        format!(" WHERE {filter}")
    };
    if keys.is_empty() {
        format!("SELECT {AGGREGATES} FROM {table}{filter}")
    } else {
        format!("SELECT {keys}, {AGGREGATES} FROM {table}{filter} GROUP BY {keys} ORDER BY {keys}")
    }
}

#[tokio::test]
async fn every_aggregate_key_and_value_type_agrees_with_datafusion() {
    let dir = tempdir("scanagg_types");
    for partitions in [1, 2] {
        let ctx = context(dir.path(), partitions).await;
        for table in ["i16", "u8", "f32", "scaled", "big", "stored", "gz", "c"] {
            for keys in KEYS {
                let rows = check(&ctx, &query(table, keys, ""), true).await;
                let groups = match keys {
                    "" => 1,
                    "t" => SHAPE[3],
                    "i, j, k" => SHAPE[0] * SHAPE[1] * SHAPE[2],
                    "k" => SHAPE[2],
                    _ => SHAPE[0] * SHAPE[3],
                };
                assert_eq!(rows.1.len(), groups, "{table} by {keys}");
            }
        }
    }
}

#[tokio::test]
async fn integer_only_aggregates_and_shared_arguments() {
    let dir = tempdir("scanagg_int");
    let ctx = context(dir.path(), 2).await;
    check(
        &ctx,
        "SELECT t, bit_and(value) AS ba, bit_or(value) AS bo, bit_xor(value) AS bx, bool_and(value > 0) AS p, \
         bool_or(value > 3990) AS b, avg(value) / stddev(value) AS tsnr FROM i16 GROUP BY t ORDER BY t",
        true,
    )
    .await;
    // NULLs from the argument expression: not counted; all-NULL groups are NULL.
    check(
        &ctx,
        "SELECT t, avg(CASE WHEN value > 3000 THEN value END) AS a, count(CASE WHEN value < -290 THEN 1 END) AS n, \
         max(CASE WHEN value > 100000 THEN value END) AS m FROM i16 GROUP BY t ORDER BY t",
        true,
    )
    .await;
}

#[tokio::test]
async fn filters_decide_whether_the_scan_aggregates() {
    let dir = tempdir("scanagg_filters");
    let ctx = context(dir.path(), 2).await;
    for keys in KEYS {
        // Exact boxes and time ranges are the scan's own selection.
        check(
            &ctx,
            &query(
                "i16",
                keys,
                "i BETWEEN 2 AND 9 AND k < 3 AND j IN (1, 4, 5)",
            ),
            true,
        )
        .await;
        check(&ctx, &query("scaled", keys, "t >= 2 AND t < 5"), true).await;
        check(&ctx, &query("gz", keys, "t = 7 AND i > 10"), true).await;
        // A value filter is not: the rows must be filtered first.
        check(&ctx, &query("i16", keys, "value > 100"), false).await;
        check(&ctx, &query("i16", keys, "i + j < 9"), false).await;
    }
    // A selection with nothing in it (no scan is planned at all): count 0 and NULL avg without keys, no rows
    // with keys.
    let empty = check(&ctx, &query("i16", "", "t > 100"), false).await;
    assert_eq!(empty.1.len(), 1);
    assert_eq!(empty.1[0][5], ScalarValue::Int64(Some(0)));
    assert!(empty.1[0][0].is_null());
    for keys in ["t", "i, j, k"] {
        let rows = check(&ctx, &query("i16", keys, "t > 100"), false).await;
        assert!(rows.1.is_empty());
    }
    // Filtered to nothing at run time: DataFusion's answers too.
    let none = check(&ctx, &query("i16", "", "value < -100000"), false).await;
    assert_eq!(none.1[0][5], ScalarValue::Int64(Some(0)));
}

#[tokio::test]
async fn multi_file_tables_and_keys_the_scan_does_not_know() {
    let dir = tempdir("scanagg_multi");
    let ctx = context(dir.path(), 2).await;
    // `file` is a per-file key: grouped in the scan, alone or among coordinates, in any order.
    let rows = check(
        &ctx,
        "SELECT file, t, avg(value) AS a, count(*) AS n FROM runs GROUP BY file, t ORDER BY file, t",
        true,
    )
    .await;
    assert_eq!(rows.1.len(), 3 + 4 + 5);
    let rows = check(
        &ctx,
        "SELECT file, count(*) AS n, sum(value) AS s, stddev(value) AS sd FROM runs GROUP BY file ORDER BY file",
        true,
    )
    .await;
    assert_eq!(rows.1.len(), 3);
    check(
        &ctx,
        "SELECT k, file, i, max(value) AS m, median(value) AS med FROM runs GROUP BY k, file, i \
         ORDER BY k, file, i",
        true,
    )
    .await;
    check(
        &ctx,
        "SELECT t, file, avg(value) AS a FROM runs WHERE t >= 1 AND (file LIKE '%r1%' OR file LIKE '%r2%') \
         GROUP BY t, file ORDER BY t, file",
        true,
    )
    .await;
    // EXPLAIN shows the per-file key and the shape of the groups.
    let plan = explain(
        &ctx,
        "SELECT file, t, avg(value) AS a FROM runs GROUP BY file, t",
    )
    .await;
    assert!(
        plan.contains("gby=[file@per-file(3 values), t@[0, 4]]")
            && plan.contains("groups=file×t=3×5=15"),
        "{plan}"
    );
    // One partition: the node's Single mode.
    let one = context(dir.path(), 1).await;
    for sql in [
        "SELECT file, t, avg(value) AS a, count(*) AS n FROM runs GROUP BY file, t ORDER BY file, t",
        "SELECT sub, run, var_pop(value) AS v FROM bids GROUP BY sub, run ORDER BY sub, run",
    ] {
        check(&one, sql, true).await;
    }
    // BIDS keys: two runs of one subject are one group; a file that is not BIDS-named is the NULL group.
    let rows = check(
        &ctx,
        "SELECT sub, t, avg(value) AS a, count(*) AS n FROM bids GROUP BY sub, t ORDER BY sub, t",
        true,
    )
    .await;
    assert_eq!(
        rows.1.len(),
        3 + 4 + 5,
        "sub-01 (t < 3), sub-02 (t < 4), NULL (t < 5)"
    );
    let rows = check(
        &ctx,
        "SELECT run, sub, count(*) AS n, avg(value) AS a FROM bids GROUP BY run, sub ORDER BY run, sub",
        true,
    )
    .await;
    assert_eq!(rows.1.len(), 4);
    // `run` is an integer per-file key with exact bounds (NULL too): the final aggregate above is dense.
    let sql =
        "SELECT run, t, sum(value) AS s, count(*) AS n FROM bids GROUP BY run, t ORDER BY run, t";
    let plan = explain(&ctx, sql).await;
    assert!(
        plan.contains("ScanAggregateExec: mode=Partial, gby=[run@per-file(3 values), t@[0, 4]]")
            && plan.contains(
                "DenseAggregateExec: mode=FinalPartitioned, gby=[run@[1, 2]+null, t@[0, 4]]"
            ),
        "{plan}"
    );
    let rows = check(&ctx, sql, true).await;
    assert_eq!(
        rows.1.len(),
        4 + 3 + 5,
        "run 1 (t < 4), run 2 (t < 3), NULL (t < 5)"
    );
    check(
        &ctx,
        "SELECT task, file, j, min(value) AS m FROM bids GROUP BY task, file, j ORDER BY task, file, j",
        true,
    )
    .await;
    // Per-file world columns are keys too; millimetre columns and expressions over `file` are not.
    check(
        &ctx,
        "SELECT world_space, tr, t, avg(value) AS a FROM runs_mm GROUP BY world_space, tr, t ORDER BY t",
        true,
    )
    .await;
    check(
        &ctx,
        "SELECT x, avg(value) AS a FROM runs_mm GROUP BY x ORDER BY x",
        false,
    )
    .await;
    check(
        &ctx,
        "SELECT upper(file) AS f, t, avg(value) AS a FROM runs GROUP BY upper(file), t ORDER BY f, t",
        false,
    )
    .await;
    check(
        &ctx,
        "SELECT length(file) AS f, avg(value) AS a FROM runs GROUP BY length(file) ORDER BY f",
        false,
    )
    .await;
    // Coordinates over files of different lengths: the union of their ranges.
    let rows = check(
        &ctx,
        "SELECT t, avg(value) AS a, count(*) AS n, sum(value) AS s FROM runs GROUP BY t ORDER BY t",
        true,
    )
    .await;
    assert_eq!(rows.1.len(), 5);
    check(
        &ctx,
        "SELECT i, k, max(value) AS m FROM runs GROUP BY i, k ORDER BY i, k",
        true,
    )
    .await;
    check(
        &ctx,
        "SELECT count(*) AS n, avg(value) AS a FROM runs",
        true,
    )
    .await;
    // Arguments or keys other than the value and coordinates.
    check(
        &ctx,
        "SELECT k, avg(value + i) AS a FROM i16 GROUP BY k ORDER BY k",
        false,
    )
    .await;
    check(
        &ctx,
        "SELECT t % 3 AS r, avg(value) AS a FROM i16 GROUP BY t % 3 ORDER BY r",
        false,
    )
    .await;
    check(
        &ctx,
        "SELECT t, count(DISTINCT value) AS d FROM u8 GROUP BY t ORDER BY t",
        false,
    )
    .await;
    check(
        &ctx,
        "SELECT t, sum(value) FILTER (WHERE value > 0) AS s FROM i16 GROUP BY t ORDER BY t",
        false,
    )
    .await;
    // median has a GroupsAccumulator in DataFusion 55: computed in the scan too.
    check(
        &ctx,
        "SELECT t, median(value) AS m FROM i16 GROUP BY t ORDER BY t",
        true,
    )
    .await;
}

#[tokio::test]
async fn explain_names_the_node_and_the_settings_turn_it_off() {
    let dir = tempdir("scanagg_explain");
    let ctx = context(dir.path(), 2).await;
    let sql = "SELECT t, avg(value) FROM i16 WHERE t < 5 GROUP BY t";
    let plan = explain(&ctx, sql).await;
    assert!(
        plan.contains(
            "ScanAggregateExec: mode=Partial, gby=[t@[0, 4]], aggr=[avg(i16.value)], groups=5"
        ),
        "{plan}"
    );
    // The final aggregate above it still knows the key ranges: dense.
    assert!(
        plan.contains("DenseAggregateExec: mode=FinalPartitioned"),
        "{plan}"
    );
    let plan = explain(&ctx, "SELECT avg(value) FROM i16").await;
    assert!(
        plan.contains("ScanAggregateExec: mode=Partial, gby=[], aggr=[avg(i16.value)], groups=1"),
        "{plan}"
    );
    set(&ctx, false, true).await;
    let plan = explain(&ctx, sql).await;
    assert!(plan.contains("DenseAggregateExec: mode=Partial"), "{plan}");
    set(&ctx, false, false).await;
    let plan = explain(&ctx, sql).await;
    assert!(
        !plan.contains("ScanAggregateExec") && !plan.contains("Dense"),
        "{plan}"
    );
    // Only the scan aggregate off and the dense one on is one setting each: both are documented settings.
    run(&ctx, "SET voxelscan.scan_aggregates = true").await;
    let plan = explain(&ctx, sql).await;
    assert!(plan.contains("ScanAggregateExec"), "{plan}");
}

#[tokio::test]
async fn the_tsnr_map_equals_numpy() {
    // Scaled (float64 values: the kernel's shifted sums) and stored int16 (its exact integer sums).
    for (slope, inter) in [(0.25, -3.0), (1.0, 0.0)] {
        tsnr_against_numpy(slope, inter).await;
    }
}

async fn tsnr_against_numpy(slope: f32, inter: f32) {
    let dir = tempdir("scanagg_tsnr");
    let path = dir.path().join("bold.nii");
    let shape = [12, 10, 6, 30];
    let data = random_i16_le(shape.iter().product(), 5, -300, 4000);
    write_nifti1(
        &path,
        &shape,
        DType::native(Scalar::I16),
        slope,
        inter,
        &data,
        false,
    )
    .unwrap();
    let ctx = session_context(SessionConfig::new().with_target_partitions(2));
    register_voxels(&ctx, "bold", &path.to_string_lossy(), &HashMap::new()).unwrap();
    let sql = "SELECT i, j, k, avg(value) / stddev(value) AS tsnr FROM bold GROUP BY i, j, k ORDER BY i, j, k";
    assert!(explain(&ctx, sql).await.contains("ScanAggregateExec"));
    let (taken, (_, rows)) = moment_rows(&ctx, sql).await;
    assert_eq!(
        taken,
        shape.iter().product::<usize>(),
        "the moments kernel took every row"
    );
    let expected = common::run_python("tests/py/tsnr_oracle.py", &[&path]);
    let lines: Vec<&str> = expected.lines().collect();
    assert_eq!(rows.len(), lines.len());
    for (row, line) in rows.iter().zip(&lines) {
        let parts: Vec<&str> = line.split(' ').collect();
        let key: Vec<String> = row[..3].iter().map(|v| v.to_string()).collect();
        assert_eq!(key, parts[..3], "{line}");
        let want: f64 = parts[3].parse().unwrap();
        let got = as_f64(&row[3]).unwrap();
        assert!(
            (got - want).abs() <= 1e-12 * want.abs(),
            "{line}: got {got}"
        );
    }
}

/// The aggregates the native moments kernel computes (no other aggregate in the query, so it applies).
const MOMENTS: &str = "count(*) AS n, count(value) AS nv, sum(value) AS s, avg(value) AS a, min(value) AS lo, \
    max(value) AS hi, var_samp(value) AS vs, var_pop(value) AS vp, stddev(value) AS sd, stddev_pop(value) AS sdp";

/// xorshift64*: reproducible random values.
fn xorshift(state: &mut u64) -> u64 {
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    state.wrapping_mul(0x2545_f491_4f6c_dd1d)
}

/// `n` random values of `scalar` in `order` bytes (offset away from zero so variances test cancellation); floats
/// get a NaN in every 97th element when `nan`.
fn random_values(scalar: Scalar, order: ByteOrder, n: usize, seed: u64, nan: bool) -> Vec<u8> {
    let mut s = seed | 1;
    let mut out = Vec::new();
    for e in 0..n {
        let r = xorshift(&mut s);
        macro_rules! put {
            ($v:expr) => {{
                let v = $v;
                out.extend_from_slice(&match order {
                    ByteOrder::Big => v.to_be_bytes(),
                    _ => v.to_le_bytes(),
                });
            }};
        }
        let hole = nan && e % 97 == 5;
        match scalar {
            Scalar::U8 => put!(r as u8),
            Scalar::I8 => put!(r as i8),
            Scalar::U16 => put!(r as u16),
            Scalar::I16 => put!(r as i16),
            Scalar::U32 => put!(3_000_000_000u32 + (r % 1_000_000) as u32),
            Scalar::I32 => put!(-2_000_000_000i32 + (r % 5_000_000) as i32),
            Scalar::U64 => put!((1u64 << 40) + (r >> 30)),
            Scalar::I64 => put!(-(1i64 << 41) + (r >> 28) as i64),
            Scalar::F32 => put!(if hole {
                f32::NAN
            } else {
                1000.0 + (r % 100_000) as f32 / 37.0
            }),
            Scalar::F64 => put!(if hole {
                f64::NAN
            } else {
                -5e8 + (r % 1_000_000_007) as f64 / 13.0
            }),
            other => panic!("no random {other:?}"),
        }
    }
    out
}

fn moments_query(table: &str, keys: &str) -> String {
    if keys.is_empty() {
        format!("SELECT {MOMENTS} FROM {table}")
    } else {
        format!("SELECT {keys}, {MOMENTS} FROM {table} GROUP BY {keys} ORDER BY {keys}")
    }
}

/// Rows the moments kernel took in running `sql` (the `moment_rows` metric), and the rows.
async fn moment_rows(ctx: &SessionContext, sql: &str) -> (usize, Cells) {
    fn sum(plan: &std::sync::Arc<dyn datafusion::physical_plan::ExecutionPlan>) -> usize {
        let own = plan
            .metrics()
            .and_then(|m| m.sum_by_name("moment_rows"))
            .map_or(0, |v| v.as_usize());
        own + plan.children().into_iter().map(sum).sum::<usize>()
    }
    let plan = common::sql::physical_plan(ctx, sql).await;
    let batches = datafusion::physical_plan::collect(plan.clone(), ctx.task_ctx())
        .await
        .unwrap();
    (sum(&plan), cells(&batches))
}

/// Cells equal, floats within `rel` relative (NaN equals NaN).
fn assert_close(sql: &str, a: &Cells, b: &Cells, rel: f64) {
    assert_eq!(a.0, b.0, "{sql}");
    assert_eq!(a.1.len(), b.1.len(), "{sql}");
    for (r, (x, y)) in a.1.iter().flatten().zip(b.1.iter().flatten()).enumerate() {
        let row = r / a.0.len().max(1);
        let ok = match (as_f64(x), as_f64(y)) {
            (Some(p), Some(q)) => {
                (p.is_nan() && q.is_nan()) || p == q || (p - q).abs() <= rel * p.abs().max(q.abs())
            }
            _ => x == y,
        };
        assert!(ok, "{sql}: {x:?} vs {y:?}\n{:?}\n{:?}", a.1[row], b.1[row]);
    }
}

/// Every stored type (native and big-endian, scaled and not, floats with and without NaN), every group pattern:
/// the kernel takes the rows (or, for pieces with NaN, leaves them to DataFusion) and the answers equal those of
/// DataFusion's own aggregate within 1e-12 relative.
#[tokio::test]
async fn the_moments_kernel_agrees_on_every_stored_type() {
    let dir = tempdir("scanagg_moments");
    let shape = [14, 12, 10, 9];
    let n: usize = shape.iter().product();
    let ctx = session_context(SessionConfig::new().with_target_partitions(2));
    let none = HashMap::new();
    let mut tables = Vec::new();
    // Every type the moments kernel reads: the integers, then float32 and float64 (not float16).
    let scalars = Scalar::ALL
        .into_iter()
        .filter(|s| s.is_integer() || matches!(s, Scalar::F32 | Scalar::F64));
    for (seed, scalar) in scalars.enumerate() {
        for order in [ByteOrder::Little, ByteOrder::Big] {
            let scaled = [(1.0, 0.0), (-0.5, 3.0)];
            for (s, (slope, inter)) in scaled.into_iter().enumerate() {
                // NaN only unscaled. (DataFusion's own min/max over NaN-bearing floats depend on batch boundaries,
                // so they differ between plans whatever the kernel does; those tables skip min and max below.)
                let nan = matches!(scalar, Scalar::F32 | Scalar::F64) && s == 0;
                let name = format!("{scalar:?}_{order:?}_{s}").to_lowercase();
                let path = dir.path().join(format!("{name}.nii"));
                let data = random_values(scalar, order, n, 31 + seed as u64, nan);
                let dtype = DType::new(scalar, order);
                write_nifti1(&path, &shape, dtype, slope, inter, &data, false).unwrap();
                register_voxels(&ctx, &name, &path.to_string_lossy(), &none).unwrap();
                tables.push((name, nan));
            }
        }
    }
    for (table, nan) in &tables {
        for keys in ["", "t", "k, t", "i, j, k", "j"] {
            let mut sql = moments_query(table, keys);
            if *nan {
                sql = sql.replace(" min(value) AS lo, max(value) AS hi,", "");
            }
            set(&ctx, true, true).await;
            let (taken, on) = moment_rows(&ctx, &sql).await;
            if *nan {
                assert!(
                    taken < n,
                    "{sql}: pieces with NaN go to DataFusion ({taken})"
                );
            } else {
                assert_eq!(taken, n, "{sql}: the kernel took every row");
            }
            set(&ctx, false, false).await;
            let (none, off) = moment_rows(&ctx, &sql).await;
            assert_eq!(none, 0);
            // DataFusion's Welford update loses about n·ε·|mean|/σ relative; the wide types here have |mean|/σ up to
            // 10^4 (the kernel's exact or shifted sums do not), so they are held to 1e-10.
            let narrow = ["u8", "i8", "u16", "i16", "f32"]
                .iter()
                .any(|p| table.starts_with(p));
            assert_close(&sql, &on, &off, if narrow { 1e-12 } else { 1e-10 });
        }
    }
}
