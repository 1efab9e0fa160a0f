//! SQL over small generated images: pushdown, statistics, registration paths, bad input.
// The SQL front needs the `sql` feature (on by default).
#![cfg(feature = "sql")]

mod common;

use std::collections::HashMap;
use std::path::Path;

use datafusion::arrow::util::pretty::pretty_format_batches;
use datafusion::prelude::{SessionConfig, SessionContext};
use voxelscan::dtype::{ByteOrder, DType, Scalar};
use voxelscan::proxy::{ArrayProxy, ProxyOptions};
use voxelscan::synth::{write_i16_nifti1, write_nifti1};
use voxelscan::table::{register_proxy, register_voxels, session_context};

use common::sql::{collect_sql as run, run_measured};

/// A 4×3×2×5 int16 NIfTI whose voxel (i,j,k,t) holds i + 10j + 100k + 1000t.
fn small_nifti(dir: &Path, name: &str, slope: f32, inter: f32) -> String {
    let shape = [4usize, 3, 2, 5];
    let mut data = Vec::new();
    for t in 0..5i16 {
        for k in 0..2i16 {
            for j in 0..3i16 {
                for i in 0..4i16 {
                    data.extend_from_slice(&(i + 10 * j + 100 * k + 1000 * t).to_le_bytes());
                }
            }
        }
    }
    let path = dir.join(name);
    write_nifti1(
        &path,
        &shape,
        DType::new(Scalar::I16, ByteOrder::Little),
        slope,
        inter,
        &data,
        name.ends_with(".gz"),
    )
    .unwrap();
    path.display().to_string()
}

/// `small_nifti`'s a.nii registered as table `v` in a two-partition context.
fn small_table(dir: &Path) -> SessionContext {
    let p = small_nifti(dir, "a.nii", 0.0, 0.0);
    let ctx = ctx(2);
    register_voxels(&ctx, "v", &p, &HashMap::new()).unwrap();
    ctx
}

fn ctx(partitions: usize) -> SessionContext {
    session_context(
        SessionConfig::new()
            .with_target_partitions(partitions)
            .with_batch_size(7),
    )
}

async fn text(ctx: &SessionContext, sql: &str) -> String {
    pretty_format_batches(&run(ctx, sql).await)
        .unwrap()
        .to_string()
}

async fn scalar_i64(ctx: &SessionContext, sql: &str) -> i64 {
    let b = run(ctx, sql).await;
    let col = b[0].column(0);
    datafusion::arrow::compute::cast(col, &datafusion::arrow::datatypes::DataType::Int64)
        .unwrap()
        .as_any()
        .downcast_ref::<datafusion::arrow::array::Int64Array>()
        .unwrap()
        .value(0)
}

#[tokio::test]
async fn coordinates_and_values_line_up() {
    let dir = tempfile::tempdir().unwrap();
    let p = small_nifti(dir.path(), "a.nii", 0.0, 0.0);
    for parts in [1, 3] {
        let ctx = ctx(parts);
        register_voxels(&ctx, "v", &p, &HashMap::new()).unwrap();
        let bad = scalar_i64(
            &ctx,
            "SELECT count(*) FROM v WHERE value <> i + 10*j + 100*k + 1000*t",
        )
        .await;
        assert_eq!(bad, 0);
        assert_eq!(scalar_i64(&ctx, "SELECT count(*) FROM v").await, 120);
        assert_eq!(
            scalar_i64(&ctx, "SELECT sum(value) FROM v WHERE t = 2 AND k = 1").await,
            (0..4)
                .map(|i| (0..3).map(|j| i + 10 * j + 100 + 2000).sum::<i64>())
                .sum::<i64>()
        );
        assert_eq!(
            scalar_i64(
                &ctx,
                "SELECT count(*) FROM v WHERE i IN (0, 3, 7) AND t NOT IN (1, 2)"
            )
            .await,
            2 * 3 * 2 * 3
        );
        assert_eq!(
            scalar_i64(
                &ctx,
                "SELECT count(*) FROM v WHERE i > 1.5 AND NOT (j BETWEEN 1 AND 1)"
            )
            .await,
            2 * 2 * 2 * 5
        );
        assert_eq!(
            scalar_i64(&ctx, "SELECT count(*) FROM v WHERE (i + j) % 2 = 0").await,
            60
        );
        assert_eq!(
            scalar_i64(&ctx, "SELECT count(*) FROM v WHERE i = 99").await,
            0
        );
        let s = text(
            &ctx,
            "SELECT t, value FROM v WHERE i = 1 AND j = 2 AND k = 0 ORDER BY t",
        )
        .await;
        assert!(s.contains("| 4 | 4021  |"), "{s}");
        let n = run(&ctx, "SELECT * FROM v WHERE k = 1 LIMIT 3").await;
        assert_eq!(n.iter().map(|b| b.num_rows()).sum::<usize>(), 3);
    }
}

#[tokio::test]
async fn explain_shows_slices_and_count_uses_statistics() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = small_table(dir.path());
    let plan = text(&ctx, "EXPLAIN SELECT value FROM v WHERE k = 1 AND t < 2").await;
    assert!(plan.contains("a.nii[0:4, 0:3, 1, 0:2]"), "{plan}");
    assert!(!plan.contains("FilterExec"), "{plan}");
    let plan = text(&ctx, "EXPLAIN SELECT count(*) FROM v WHERE k = 1").await;
    assert!(
        !plan.contains("DataSourceExec"),
        "count(*) should come from statistics: {plan}"
    );
    let plan = text(&ctx, "EXPLAIN ANALYZE SELECT sum(value) FROM v WHERE t = 3").await;
    assert!(plan.contains("bytes_read=48"), "{plan}");
}

/// Filters the slab statistics cannot decide are counted, never silently dropped: EXPLAIN ANALYZE shows
/// `pruning_skipped`, and the rows are still exactly those that pass.
#[tokio::test]
async fn pruning_that_cannot_be_applied_is_counted() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = small_table(dir.path());
    let analyze = |filter: &str| format!("EXPLAIN ANALYZE SELECT sum(value) FROM v WHERE {filter}");
    // Exact filters become the selection; an inexact one on coordinate bounds prunes slabs: nothing skipped.
    for filter in ["t = 3", "t < 2 OR j > 100"] {
        let plan = text(&ctx, &analyze(filter)).await;
        assert!(plan.contains("pruning_skipped=0"), "{filter}: {plan}");
    }
    // Neither an index set nor a bound on any coordinate: one filter skipped, then two.
    let plan = text(&ctx, &analyze("i % 2 = 0")).await;
    assert!(plan.contains("pruning_skipped=1"), "{plan}");
    let plan = text(&ctx, &analyze("i % 2 = 0 AND (i + j) % 3 = 1")).await;
    assert!(plan.contains("pruning_skipped=2"), "{plan}");
    let even = "SELECT count(*) FROM v WHERE i % 2 = 0";
    assert_eq!(scalar_i64(&ctx, even).await, 60);
}

/// A file big enough for several slabs per partition: every row still carries its own voxel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_slabs_many_partitions() {
    let dir = tempfile::tempdir().unwrap();
    let shape = [64usize, 48, 20, 40];
    let mut data = Vec::with_capacity(shape.iter().product::<usize>() * 2);
    for t in 0..40i32 {
        for k in 0..20i32 {
            for j in 0..48i32 {
                for i in 0..64i32 {
                    data.extend_from_slice(
                        &(((i + 3 * j + 5 * k + 7 * t) % 1000) as i16).to_le_bytes(),
                    );
                }
            }
        }
    }
    let path = dir.path().join("big.nii");
    write_i16_nifti1(&path, &shape, &data).unwrap();
    let p = path.display().to_string();
    for parts in [1, 2, 4] {
        let ctx = session_context(SessionConfig::new().with_target_partitions(parts));
        register_voxels(&ctx, "v", &p, &HashMap::new()).unwrap();
        let plan = text(&ctx, "EXPLAIN SELECT sum(value) FROM v").await;
        assert!(plan.contains("DataSourceExec"), "{plan}");
        let bad = "SELECT count(*) FROM v WHERE value <> (i + 3*j + 5*k + 7*t) % 1000";
        assert_eq!(scalar_i64(&ctx, bad).await, 0, "{parts} partitions");
        assert_eq!(
            scalar_i64(
                &ctx,
                "SELECT count(*) FROM (SELECT DISTINCT i, j, k, t FROM v)"
            )
            .await,
            64 * 48 * 20 * 40
        );
        let sel = "SELECT count(*) FROM v WHERE t IN (3, 17, 39) AND j < 7 AND value <> (i + 3*j + 5*k + 7*t) % 1000";
        assert_eq!(scalar_i64(&ctx, sel).await, 0);
        assert_eq!(
            scalar_i64(
                &ctx,
                "SELECT count(*) FROM v WHERE t IN (3, 17, 39) AND j < 7"
            )
            .await,
            3 * 7 * 64 * 20
        );
        // An inexact filter (two columns under OR) still prunes slabs by their coordinate bounds.
        let q = "SELECT count(*) FROM v WHERE t < 2 OR j > 100";
        assert_eq!(scalar_i64(&ctx, q).await, 2 * 64 * 48 * 20);
        let (_, read, _) = run_measured(&ctx, q).await;
        let plan = format!("{plan:?}");
        assert!(
            read < 64 * 48 * 20 * 40 * 2 / 2,
            "{parts} partitions: read {read}: {plan}"
        );
    }
}

#[tokio::test]
async fn options_table_function_and_record_layouts() {
    let dir = tempfile::tempdir().unwrap();
    let p = small_nifti(dir.path(), "scaled.nii", 2.0, 1.0);
    let ctx = ctx(2);
    // Scaled (float64: nibabel reads NIfTI factors as Python floats), unscaled, and cast values.
    let q = |opts: &str| {
        format!(
            "SELECT arrow_typeof(value) AS ty, max(value) AS m FROM voxels('{p}'{opts}) GROUP BY ty"
        )
    };
    let s = text(&ctx, &q("")).await;
    assert!(s.contains("Float64") && s.contains("8247.0"), "{s}");
    let s = text(&ctx, &q(", 'scaling', 'false'")).await;
    assert!(s.contains("Int16") && s.contains("4123"), "{s}");
    let s = text(&ctx, &q(", 'value_type', 'float32'")).await;
    assert!(s.contains("Float32") && s.contains("8247.0"), "{s}");
    let create = format!(
        "CREATE EXTERNAL TABLE u STORED AS NIFTI LOCATION '{p}' OPTIONS ('Scaling' 'false')"
    );
    run(&ctx, &create).await;
    assert_eq!(scalar_i64(&ctx, "SELECT max(value) FROM u").await, 4123);
    let declared =
        format!("CREATE EXTERNAL TABLE d (i BIGINT, x DOUBLE) STORED AS NIFTI LOCATION '{p}'");
    let e = ctx.sql(&declared).await.unwrap_err().to_string();
    assert!(e.contains("declared columns"), "{e}");

    // complex64: value_re / value_im.
    let c: Vec<u8> = (0..6)
        .flat_map(|v: i32| [(v as f32).to_le_bytes(), (-(v as f32)).to_le_bytes()].concat())
        .collect();
    let cp = dir.path().join("c.nii");
    write_nifti1(
        &cp,
        &[2, 3],
        DType::native(Scalar::C64),
        0.0,
        0.0,
        &c,
        false,
    )
    .unwrap();
    let s = text(
        &ctx,
        &format!(
            "SELECT i, j, value_re, value_im FROM voxels('{}') WHERE i = 1 AND j = 2",
            cp.display()
        ),
    )
    .await;
    assert!(s.contains("| 1 | 2 | 5.0      | -5.0     |"), "{s}");
    // RGB24: value_r, value_g, value_b.
    let rgb: Vec<u8> = (0..4u8).flat_map(|v| [v, 10 + v, 20 + v]).collect();
    let rp = dir.path().join("rgb.nii");
    write_nifti1(
        &rp,
        &[4],
        DType::native(Scalar::Rgb24),
        0.0,
        0.0,
        &rgb,
        false,
    )
    .unwrap();
    let s = text(
        &ctx,
        &format!(
            "SELECT value_r, value_g, value_b FROM voxels('{}') WHERE i = 3",
            rp.display()
        ),
    )
    .await;
    assert!(s.contains("| 3       | 13      | 23      |"), "{s}");
}

/// Partitions reading through one registered proxy: each reports what its own reads cost, so `EXPLAIN ANALYZE`'s
/// `bytes_read` adds up to the array's bytes once, however many partitions share the proxy (and the mapped path of
/// files opened by name reports the same).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_sharing_a_proxy_count_their_own_reads() {
    let dir = tempfile::tempdir().unwrap();
    let shape = [32usize, 24, 20, 16];
    let data: Vec<u8> = (0..shape.iter().product::<usize>())
        .flat_map(|n| ((n % 1000) as i16).to_le_bytes())
        .collect();
    let path = dir.path().join("shared.nii");
    write_i16_nifti1(&path, &shape, &data).unwrap();
    let want = data.len();
    for (mmap, by_proxy) in [("off", true), ("on", true), ("on", false)] {
        for parts in [1, 4] {
            let ctx = session_context(SessionConfig::new().with_target_partitions(parts));
            let opts = HashMap::from([("mmap".to_string(), mmap.to_string())]);
            if by_proxy {
                let proxy = ArrayProxy::open(&path, ProxyOptions::default()).unwrap();
                register_proxy(&ctx, "v", proxy, &opts).unwrap();
            } else {
                register_voxels(&ctx, "v", &path.display().to_string(), &opts).unwrap();
            }
            let (_, read, _) = run_measured(&ctx, "SELECT sum(value) FROM v").await;
            assert_eq!(
                read, want,
                "mmap {mmap}, proxy {by_proxy}, {parts} partitions"
            );
        }
    }
}
