//! Row contents, not only counts: `LIMIT`/`OFFSET` under an inexact filter (`i + j < 10`) on one file, on a
//! multi-file table, on `.nii.gz` and over HTTP (nginx), each checked against the same query without the limit;
//! and one table over files of six dtypes and scale factors (`value` becomes `Float64`) checked voxel by
//! voxel against nibabel + numpy (`tests/py/mixed_oracle.py`).
#![cfg(feature = "sql")]

mod common;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use common::servers::Nginx;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::util::display::array_value_to_string;
use datafusion::prelude::{SessionConfig, SessionContext};
use serde_json::Value;
use voxelscan::dtype::{ByteOrder, DType, Scalar};
use voxelscan::synth::{random_i16_le, write_nifti1};
use voxelscan::table::{register_voxels, session_context};

/// A 4-D int16 image with random values, scaled by 0.5 and +10; `.gz` names are compressed. Returns its bytes.
fn image(path: &Path, shape: &[usize], seed: u64) -> Vec<u8> {
    let n: usize = shape.iter().product();
    let data = random_i16_le(n, seed, -3000, 3000);
    let gz = path.extension().is_some_and(|e| e == "gz");
    write_nifti1(
        path,
        shape,
        DType::new(Scalar::I16, ByteOrder::Little),
        0.5,
        10.0,
        &data,
        gz,
    )
    .expect("write image");
    std::fs::read(path).expect("read back")
}

fn context(partitions: usize) -> SessionContext {
    session_context(
        SessionConfig::new()
            .with_target_partitions(partitions)
            .with_batch_size(7),
    )
}

/// Every row of the answer as text, column by column.
async fn rows(ctx: &SessionContext, sql: &str) -> Vec<Vec<String>> {
    let batches: Vec<RecordBatch> = common::sql::collect_sql(ctx, sql).await;
    let mut out = Vec::new();
    for b in &batches {
        for r in 0..b.num_rows() {
            let row = b
                .columns()
                .iter()
                .map(|c| array_value_to_string(c, r).expect("format a value"))
                .collect();
            out.push(row);
        }
    }
    out
}

/// (limit, offset) pairs, from the plain to the edge cases: past the end, straddling it, zero.
fn windows(total: usize) -> Vec<(usize, usize)> {
    vec![
        (5, 0),
        (7, 3),
        (1, total / 2),
        (20, total.saturating_sub(10)),
        (10, total + 5),
        (0, 0),
        (total + 100, 0),
    ]
}

/// The table `v` at `location`: ordered `LIMIT … OFFSET …` answers are exactly the slice of the full ordered
/// answer; unordered ones are the right number of distinct rows of the full answer.
async fn check_limits(location: &str, options: &HashMap<String, String>, multi_file: bool) {
    let keys = if multi_file {
        "file, i, j, k, t"
    } else {
        "i, j, k, t"
    };
    let filter = "i + j < 10 AND value > 0";
    for partitions in [1, 3] {
        let ctx = context(partitions);
        register_voxels(&ctx, "v", location, options).unwrap_or_else(|e| panic!("{location}: {e}"));
        let base = format!("SELECT {keys}, value FROM v WHERE {filter}");
        let full = rows(&ctx, &format!("{base} ORDER BY {keys}")).await;
        assert!(
            full.len() > 40,
            "{location}: only {} rows pass the filter",
            full.len()
        );
        let mut seen = std::collections::HashSet::new();
        for row in &full {
            assert!(
                seen.insert(row.clone()),
                "{location}: duplicate row {row:?}"
            );
        }
        let mut checked = 0;
        for (limit, offset) in windows(full.len()) {
            let want: Vec<Vec<String>> = full.iter().skip(offset).take(limit).cloned().collect();
            let what =
                format!("{location} ({partitions} partitions) LIMIT {limit} OFFSET {offset}");
            let sql = format!("{base} ORDER BY {keys} LIMIT {limit} OFFSET {offset}");
            assert_eq!(rows(&ctx, &sql).await, want, "{what}, ordered");
            // Without ORDER BY any rows may come, but they must be rows of the answer, each once, as many as asked.
            let sql = format!("{base} LIMIT {limit} OFFSET {offset}");
            let got = rows(&ctx, &sql).await;
            assert_eq!(got.len(), want.len(), "{what}, unordered: row count");
            let distinct: std::collections::HashSet<_> = got.iter().collect();
            assert_eq!(
                distinct.len(),
                got.len(),
                "{what}, unordered: repeated rows"
            );
            for row in &got {
                assert!(
                    seen.contains(row),
                    "{what}, unordered: {row:?} is not in the answer"
                );
            }
            checked += 1;
        }
        assert_eq!(checked, windows(full.len()).len());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limit_offset_rows_on_one_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("a.nii");
    image(&path, &[12, 9, 4, 5], 1);
    check_limits(&path.display().to_string(), &HashMap::new(), false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limit_offset_rows_on_many_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let runs = dir.path().join("runs");
    std::fs::create_dir(&runs).expect("mkdir");
    image(&runs.join("run-1.nii"), &[12, 9, 4, 5], 2);
    image(&runs.join("run-2.nii"), &[6, 11, 3, 2], 3);
    image(&runs.join("run-3.nii.gz"), &[8, 8, 2, 3], 4);
    check_limits(&format!("{}/run-*", runs.display()), &HashMap::new(), true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limit_offset_rows_on_gzip() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("a.nii.gz");
    image(&path, &[12, 9, 4, 5], 5);
    check_limits(&path.display().to_string(), &HashMap::new(), false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limit_offset_rows_over_http() {
    let dir = tempfile::tempdir().expect("tempdir");
    let n = Nginx::shared();
    for (name, seed) in [("limits/a.nii", 6), ("limits/a.nii.gz", 7)] {
        let bytes = image(
            &dir.path().join(name.replace('/', "_")),
            &[12, 9, 4, 5],
            seed,
        );
        n.put(name, &bytes);
        check_limits(&n.url_of(name), &HashMap::new(), false).await;
    }
}

// ---- mixed dtypes --------------------------------------------------------------------------------------------------

/// One file of the mixed table: name, dtype, slope, intercept, shape, and its stored values (as f64, exact).
struct Mixed {
    name: &'static str,
    dtype: DType,
    slope: f32,
    inter: f32,
    shape: [usize; 3],
}

fn mixed_files() -> Vec<Mixed> {
    let le = ByteOrder::Little;
    vec![
        // Unscaled uint8: value is UInt8 alone.
        Mixed {
            name: "a_u8.nii",
            dtype: DType::new(Scalar::U8, le),
            slope: 0.0,
            inter: 0.0,
            shape: [4, 3, 2],
        },
        // Scaled int16 (nibabel: float32 for these factors).
        Mixed {
            name: "b_i16.nii",
            dtype: DType::new(Scalar::I16, le),
            slope: 0.25,
            inter: -3.0,
            shape: [5, 3, 2],
        },
        // Big-endian int32 with a factor that is not a power of two.
        Mixed {
            name: "c_i32.nii.gz",
            dtype: DType::new(Scalar::I32, ByteOrder::Big),
            slope: 0.1,
            inter: 7.5,
            shape: [3, 4, 3],
        },
        // float32, unscaled.
        Mixed {
            name: "d_f32.nii",
            dtype: DType::new(Scalar::F32, le),
            slope: 0.0,
            inter: 0.0,
            shape: [2, 2, 2],
        },
        // float64 with a slope.
        Mixed {
            name: "e_f64.nii",
            dtype: DType::new(Scalar::F64, le),
            slope: 3.0,
            inter: 1.0,
            shape: [3, 3, 1],
        },
        // Big-endian int16, unscaled: value is Int16 alone.
        Mixed {
            name: "f_i16.nii",
            dtype: DType::new(Scalar::I16, ByteOrder::Big),
            slope: 1.0,
            inter: 0.0,
            shape: [2, 5, 3],
        },
    ]
}

/// Stored bytes for `n` values of `dtype`: small integers (exact in every type), negative ones where signed.
fn stored(dtype: DType, n: usize, seed: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for x in 0..n {
        let v =
            ((x * 37 + seed * 11) % 251) as i64 - if dtype.scalar == Scalar::U8 { 0 } else { 100 };
        let le: Vec<u8> = match dtype.scalar {
            Scalar::U8 => vec![v as u8],
            Scalar::I16 => (v as i16).to_le_bytes().to_vec(),
            Scalar::I32 => (v as i32 * 1000 + 3).to_le_bytes().to_vec(),
            Scalar::F32 => (v as f32 / 8.0).to_le_bytes().to_vec(),
            _ => (v as f64 / 3.0).to_le_bytes().to_vec(),
        };
        if dtype.order == ByteOrder::Big {
            out.extend(le.iter().rev());
        } else {
            out.extend(le);
        }
    }
    out
}

/// Parse `voxelscan sql --format csv` output (one query) into header and rows.
fn parse_csv(text: &str) -> (Vec<String>, Vec<Vec<String>>) {
    let mut lines = text.lines();
    let header = lines
        .next()
        .unwrap_or_default()
        .split(',')
        .map(str::to_string)
        .collect();
    let rows = lines
        .map(|l| l.split(',').map(str::to_string).collect())
        .collect();
    (header, rows)
}

#[test]
fn mixed_dtypes_and_scale_factors_in_one_table_match_numpy() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    std::fs::create_dir(d.join("mixed")).expect("mkdir");
    for (seed, f) in mixed_files().iter().enumerate() {
        let n: usize = f.shape.iter().product();
        write_nifti1(
            &d.join("mixed").join(f.name),
            &f.shape,
            f.dtype,
            f.slope,
            f.inter,
            &stored(f.dtype, n, seed),
            f.name.ends_with(".gz"),
        )
        .expect("write");
    }
    let oracle: Value = serde_json::from_str(&common::run_python(
        "tests/py/mixed_oracle.py",
        &[&d.join("mixed")],
    ))
    .expect("the oracle prints JSON");
    let files = oracle.as_object().expect("one entry per file");
    assert_eq!(files.len(), mixed_files().len());
    // The files really differ in their scaled types (else this tests nothing).
    let dtypes: std::collections::BTreeSet<&str> =
        files.values().filter_map(|f| f["dtype"].as_str()).collect();
    assert!(dtypes.len() >= 4, "scaled dtypes {dtypes:?}");

    let cli = |sql: &str| {
        let run = common::run_cli(
            d,
            &[
                "sql".into(),
                "--format".into(),
                "csv".into(),
                "-t".into(),
                "m=mixed/*".into(),
                sql.into(),
            ],
        );
        common::check_ok_run(&run).unwrap_or_else(|e| panic!("{sql}: {e}"));
        parse_csv(&run.stdout)
    };
    let (header, types) = cli("SELECT arrow_typeof(value) AS type FROM m LIMIT 1");
    assert_eq!(
        (header, types),
        (vec!["type".to_string()], vec![vec!["Float64".to_string()]])
    );

    // Every voxel of every file, against numpy's np.asarray(img.dataobj) widened to float64.
    let (header, voxels) = cli("SELECT file, i, j, k, value FROM m ORDER BY file, i, j, k");
    assert_eq!(header, ["file", "i", "j", "k", "value"]);
    let mut want: BTreeMap<(String, [usize; 3]), f64> = BTreeMap::new();
    for (name, f) in files {
        for v in f["voxels"].as_array().expect("voxels") {
            let idx = |a: usize| v[a].as_u64().expect("index") as usize;
            want.insert(
                (format!("mixed/{name}"), [idx(0), idx(1), idx(2)]),
                v[3].as_f64().expect("value"),
            );
        }
    }
    assert_eq!(voxels.len(), want.len(), "voxel count");
    for row in &voxels {
        let idx = |a: usize| row[a].parse::<usize>().expect("index");
        let key = (row[0].clone(), [idx(1), idx(2), idx(3)]);
        let got: f64 = row[4].parse().expect("a number");
        let w = want
            .get(&key)
            .unwrap_or_else(|| panic!("{key:?} is not a voxel numpy knows"));
        assert!(got == *w, "{key:?}: {got} vs numpy {w}");
    }

    // Per-file aggregates over the widened values.
    let (header, stats) = cli(
        "SELECT file, count(*) AS n, sum(value) AS s, min(value) AS lo, max(value) AS hi, avg(value) AS mean \
         FROM m GROUP BY file ORDER BY file",
    );
    assert_eq!(header, ["file", "n", "s", "lo", "hi", "mean"]);
    assert_eq!(stats.len(), files.len());
    for row in &stats {
        let name = row[0].strip_prefix("mixed/").expect("file column");
        let f = &files[name];
        assert_eq!(
            row[1].parse::<u64>().ok(),
            f["count"].as_u64(),
            "{name} count"
        );
        for (col, key) in [(2, "sum"), (3, "min"), (4, "max"), (5, "mean")] {
            let got: f64 = row[col].parse().expect("a number");
            let w = f[key].as_f64().expect("oracle number");
            assert!(
                (got - w).abs() <= 1e-9 * w.abs().max(1.0),
                "{name} {key}: {got} vs numpy {w}"
            );
        }
    }
}

/// Filters on `value` alone are evaluated in the scan before coordinates are made (`value_filter=` in `EXPLAIN`), and
/// answers are DataFusion's own on a copy of the rows: scaled values, NULLs from the filter, casts, conjunctions with
/// coordinate filters, a filter keeping every row or none, on one file, many files and `.nii.gz`; with millimetre
/// columns projected the rows are filtered above the scan only. `LIMIT` still stops early.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn value_filters_run_in_the_scan_and_agree_with_datafusion() {
    let dir = tempfile::tempdir().unwrap();
    let shape = [9, 7, 5, 4];
    image(&dir.path().join("a.nii"), &shape, 3);
    image(&dir.path().join("b.nii.gz"), &shape, 4);
    let ctx = context(2);
    for (name, location) in [
        ("one", dir.path().join("a.nii")),
        ("gz", dir.path().join("b.nii.gz")),
        ("many", dir.path().to_path_buf()),
    ] {
        register_voxels(&ctx, name, location.to_str().unwrap(), &HashMap::new()).unwrap();
        ctx.sql(&format!("CREATE TABLE {name}_copy AS SELECT * FROM {name}"))
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        for filter in [
            "value > 900",
            "value = 10.5 OR value < -1400",
            "CAST(value AS BIGINT) % 7 = 0",
            "value / (value - 10.5) > 1",
            "value > 900 AND i < 4",
            "value > -100000",
            "value > 100000",
            "NOT (value BETWEEN -1000 AND 1000)",
        ] {
            let sql = |t: &str| format!("SELECT * FROM {t} WHERE {filter}");
            let mut ours = rows(&ctx, &sql(name)).await;
            let mut own = rows(&ctx, &sql(&format!("{name}_copy"))).await;
            ours.sort();
            own.sort();
            assert_eq!(ours.len(), own.len(), "{name}: {filter}");
            assert!(ours == own, "{name}: {filter}: the rows differ");
            let plan = common::sql::physical_plan(&ctx, &sql(name)).await;
            let shown = datafusion::physical_plan::displayable(plan.as_ref())
                .indent(true)
                .to_string();
            assert!(shown.contains("value_filter="), "{name}: {filter}: {shown}");
        }
    }
    // A volatile filter stays above the scan only: evaluated twice it would keep the rows of two draws.
    let plan =
        common::sql::physical_plan(&ctx, "SELECT i FROM one WHERE value < random() * 3000").await;
    let shown = datafusion::physical_plan::displayable(plan.as_ref())
        .indent(true)
        .to_string();
    assert!(!shown.contains("value_filter="), "{shown}");
    // The region of a value: few rows of many, each with its coordinates.
    let few = rows(
        &ctx,
        "SELECT i, j, k, t FROM one WHERE value > 1490 ORDER BY 1, 2, 3, 4",
    )
    .await;
    let own = rows(
        &ctx,
        "SELECT i, j, k, t FROM one_copy WHERE value > 1490 ORDER BY 1, 2, 3, 4",
    )
    .await;
    assert_eq!(few, own);
    assert!(
        !few.is_empty() && few.len() < 9 * 7 * 5 * 4 / 4,
        "{}",
        few.len()
    );
    // Millimetre columns are made per batch range: such scans are filtered above the scan only, same answers.
    let world = HashMap::from([("world".to_string(), "true".to_string())]);
    let path = dir.path().join("a.nii");
    register_voxels(&ctx, "w", path.to_str().unwrap(), &world).unwrap();
    ctx.sql("CREATE TABLE w_copy AS SELECT * FROM w")
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let q = "SELECT i, j, k, t, x, y, z, value FROM {} WHERE value > 900 ORDER BY 1, 2, 3, 4";
    let mm = rows(&ctx, &q.replace("{}", "w")).await;
    assert_eq!(mm, rows(&ctx, &q.replace("{}", "w_copy")).await);
    assert!(!mm.is_empty());
    // LIMIT reads no piece it does not return, value filter or not.
    let limited = rows(&ctx, "SELECT i, value FROM one WHERE value > 0 LIMIT 3").await;
    assert_eq!(limited.len(), 3);
}
