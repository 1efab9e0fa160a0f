//! Differential SQL tests: random images (shapes, dtypes, byte orders, scaling) and random predicates, answered by
//! this crate's table provider and by nibabel + numpy (`tests/sql_oracle.py`); plus bytes-read checks for
//! selective queries through the scan's metrics.
//!
//! Needs the project's Python (`VOXELSCAN_PYTHON`, else `.venv/bin/python`, which `.ci/run` creates): without it
//! the test fails, it does not skip.
// The SQL front needs the `sql` feature (on by default).
#![cfg(feature = "sql")]

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, RecordBatch};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::DataType;
use datafusion::datasource::source::DataSourceExec;
use datafusion::physical_plan::{ExecutionPlan, collect};
use datafusion::prelude::{SessionConfig, SessionContext};
use serde_json::{Value, json};
use voxelscan::dtype::{ByteOrder, DType, Scalar};
use voxelscan::synth::write_nifti1;
use voxelscan::table::{register_voxels, session_context};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[self.below(v.len() as u64) as usize]
    }
}

fn python() -> PathBuf {
    let p = std::env::var_os("VOXELSCAN_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python"));
    assert!(
        p.exists(),
        "{} is missing: run .ci/run (or make .venv with numpy and nibabel) before this test",
        p.display()
    );
    p
}

const AXES: [&str; 4] = ["i", "j", "k", "t"];

/// A predicate on coordinates (and sometimes values), as SQL and as numpy.
fn predicate(rng: &mut Rng, shape: &[usize], depth: u32) -> (String, String) {
    let ndim = shape.len();
    let a = rng.below(ndim as u64) as usize;
    let n = shape[a] as i64;
    let v = |rng: &mut Rng| rng.below(n as u64 + 3) as i64 - 1;
    let (col, idx) = (AXES[a], format!("I[{a}]"));
    if depth > 0 && rng.below(3) == 0 {
        let (l, lp) = predicate(rng, shape, depth - 1);
        let (r, rp) = predicate(rng, shape, depth - 1);
        return match rng.below(3) {
            0 => (format!("({l} AND {r})"), format!("({lp} & {rp})")),
            1 => (format!("({l} OR {r})"), format!("({lp} | {rp})")),
            _ => (format!("(NOT {l})"), format!("(~{lp})")),
        };
    }
    match rng.below(7) {
        0 | 1 => {
            let op = *rng.pick(&["=", "<>", "<", "<=", ">", ">="]);
            let x = v(rng);
            let py = if op == "=" {
                "=="
            } else if op == "<>" {
                "!="
            } else {
                op
            };
            if rng.below(2) == 0 {
                (format!("{col} {op} {x}"), format!("({idx} {py} {x})"))
            } else {
                let flipped = match op {
                    "<" => ">",
                    "<=" => ">=",
                    ">" => "<",
                    ">=" => "<=",
                    o => o,
                };
                (format!("{x} {flipped} {col}"), format!("({idx} {py} {x})"))
            }
        }
        2 => {
            let (lo, hi) = (v(rng), v(rng));
            if rng.below(2) == 0 {
                (
                    format!("{col} BETWEEN {lo} AND {hi}"),
                    format!("(({idx} >= {lo}) & ({idx} <= {hi}))"),
                )
            } else {
                (
                    format!("{col} NOT BETWEEN {lo} AND {hi}"),
                    format!("(({idx} < {lo}) | ({idx} > {hi}))"),
                )
            }
        }
        3 => {
            let items: Vec<i64> = (0..1 + rng.below(5)).map(|_| v(rng)).collect();
            let list = items
                .iter()
                .map(|x| x.to_string())
                .collect::<Vec<_>>()
                .join(", ");
            if rng.below(2) == 0 {
                (
                    format!("{col} IN ({list})"),
                    format!("np.isin({idx}, [{list}])"),
                )
            } else {
                (
                    format!("{col} NOT IN ({list})"),
                    format!("(~np.isin({idx}, [{list}]))"),
                )
            }
        }
        4 => {
            let x = v(rng) as f64 + 0.5;
            (format!("{col} > {x}"), format!("({idx} > {x})"))
        }
        5 => {
            let b = AXES[rng.below(ndim as u64) as usize];
            let bi = format!("I[{}]", AXES.iter().position(|c| *c == b).unwrap_or(0));
            (
                format!("({col} + {b}) % 2 = 0"),
                format!("((({idx} + {bi}) % 2) == 0)"),
            )
        }
        _ => ("value > 0".to_string(), "(A > 0)".to_string()),
    }
}

struct Case {
    path: String,
    mode: &'static str,
    sql_pred: String,
    py_pred: String,
    group: Option<usize>,
}

/// Random data bytes for `n` elements of `dtype`, in its byte order.
fn data(rng: &mut Rng, dtype: DType, n: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(n * dtype.size());
    for _ in 0..n {
        let r = rng.next();
        let le: Vec<u8> = match dtype.scalar {
            Scalar::U8 => vec![(r % 256) as u8],
            Scalar::I8 => vec![(r % 256) as u8],
            Scalar::I16 => ((r % 2000) as i16 - 1000).to_le_bytes().to_vec(),
            Scalar::U16 => ((r % 60000) as u16).to_le_bytes().to_vec(),
            Scalar::I32 => ((r % 200_000) as i32 - 100_000).to_le_bytes().to_vec(),
            Scalar::F32 => ((r % 100_000) as f32 / 7.0 - 5000.0).to_le_bytes().to_vec(),
            _ => ((r % 100_000) as f64 / 3.0 - 10000.0)
                .to_le_bytes()
                .to_vec(),
        };
        if dtype.order == ByteOrder::Big {
            out.extend(le.iter().rev());
        } else {
            out.extend(le);
        }
    }
    out
}

fn make_cases(dir: &Path, count: usize) -> Vec<Case> {
    let mut rng = Rng(0x5eed_1234_abcd);
    let dtypes = [
        DType::new(Scalar::U8, ByteOrder::Little),
        DType::new(Scalar::I8, ByteOrder::Little),
        DType::new(Scalar::I16, ByteOrder::Little),
        DType::new(Scalar::I16, ByteOrder::Big),
        DType::new(Scalar::U16, ByteOrder::Little),
        DType::new(Scalar::I32, ByteOrder::Big),
        DType::new(Scalar::F32, ByteOrder::Little),
        DType::new(Scalar::F32, ByteOrder::Big),
        DType::new(Scalar::F64, ByteOrder::Little),
    ];
    let mut cases = Vec::new();
    for c in 0..count {
        let ndim = 1 + rng.below(4) as usize;
        let shape: Vec<usize> = (0..ndim).map(|_| 1 + rng.below(7) as usize).collect();
        let dtype = *rng.pick(&dtypes);
        let (slope, inter) = match rng.below(3) {
            0 => (0.0, 0.0),
            1 => (1.0, 0.0),
            _ => (0.5 + rng.below(8) as f32 / 4.0, rng.below(5) as f32 - 2.0),
        };
        let n: usize = shape.iter().product();
        // Every fourth image is gzip-compressed.
        let gz = c % 4 == 3;
        let path = dir.join(format!("case{c}.nii{}", if gz { ".gz" } else { "" }));
        write_nifti1(
            &path,
            &shape,
            dtype,
            slope,
            inter,
            &data(&mut rng, dtype, n),
            gz,
        )
        .unwrap();
        let mode = *rng.pick(&["scaled", "scaled", "unscaled", "float32"]);
        let (sql_pred, py_pred) = predicate(&mut rng, &shape, 2);
        let group = (rng.below(3) == 0).then(|| rng.below(ndim as u64) as usize);
        cases.push(Case {
            path: path.display().to_string(),
            mode,
            sql_pred,
            py_pred,
            group,
        });
    }
    cases
}

/// Random cases per test (each a fresh image and predicate).
const CASES: usize = 120;
/// What a run must have checked at least.
const MIN_CASES: usize = 100;

fn oracle(dir: &Path, cases: &[Case]) -> Vec<Value> {
    let input: Vec<Value> = cases
        .iter()
        .map(|c| json!({"path": c.path, "mode": c.mode, "pred": c.py_pred, "group": c.group}))
        .collect();
    let file = dir.join("cases.json");
    std::fs::write(&file, serde_json::to_vec(&input).unwrap()).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sql_oracle.py");
    let out = Command::new(python())
        .arg(script)
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "oracle failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn options(mode: &str) -> HashMap<String, String> {
    match mode {
        "unscaled" => HashMap::from([("scaling".to_string(), "false".to_string())]),
        "float32" => HashMap::from([("value_type".to_string(), "float32".to_string())]),
        _ => HashMap::new(),
    }
}

fn f64_at(a: &ArrayRef, row: usize) -> Option<f64> {
    if a.is_null(row) {
        return None;
    }
    let f = cast(a, &DataType::Float64).unwrap();
    Some(
        f.as_any()
            .downcast_ref::<datafusion::arrow::array::Float64Array>()
            .unwrap()
            .value(row),
    )
}

fn close(got: Option<f64>, want: &Value, what: &str, case: &Case) {
    let want = want.as_f64();
    match (got, want) {
        (None, None) => {}
        (Some(g), Some(w)) => {
            let tol = 1e-9 * w.abs().max(1.0);
            assert!(
                (g - w).abs() <= tol,
                "{what}: {g} vs numpy {w} for {} WHERE {}",
                case.path,
                case.sql_pred
            );
        }
        _ => panic!(
            "{what}: {got:?} vs numpy {want:?} for {} WHERE {}",
            case.path, case.sql_pred
        ),
    }
}

use common::sql::collect_sql as rows;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_matches_numpy() {
    let dir = tempfile::tempdir().unwrap();
    let cases = make_cases(dir.path(), CASES);
    let answers = oracle(dir.path(), &cases);
    check_cases(&cases, &answers, |_, case| {
        (case.path.clone(), options(case.mode))
    })
    .await;
}

/// The same cases with every image in the S3-compatible test server (Garage), read by ranged GETs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_matches_numpy_over_s3() {
    let dir = tempfile::tempdir().unwrap();
    let cases = make_cases(dir.path(), CASES);
    let answers = oracle(dir.path(), &cases);
    let g = common::servers::Garage::shared();
    let store = [
        ("aws.endpoint", g.endpoint()),
        ("aws.region", g.region().to_string()),
        ("aws.access_key_id", g.access_key_id().to_string()),
        ("aws.secret_access_key", g.secret_access_key().to_string()),
    ];
    check_cases(&cases, &answers, |k, case| {
        let name = format!("sql_numpy/{k}-{}", file_name(&case.path));
        g.put(&name, &std::fs::read(&case.path).unwrap());
        let mut opts = options(case.mode);
        opts.extend(store.iter().map(|(k, v)| (k.to_string(), v.clone())));
        (g.url_of(&name), opts)
    })
    .await;
}

/// The same cases served by nginx over HTTP (Range requests).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_matches_numpy_over_http() {
    let dir = tempfile::tempdir().unwrap();
    let cases = make_cases(dir.path(), CASES);
    let answers = oracle(dir.path(), &cases);
    let n = common::servers::Nginx::shared();
    check_cases(&cases, &answers, |k, case| {
        let name = format!("sql_numpy/{k}-{}", file_name(&case.path));
        n.put(&name, &std::fs::read(&case.path).unwrap());
        (n.url_of(&name), options(case.mode))
    })
    .await;
}

fn file_name(path: &str) -> String {
    Path::new(path)
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Answer every case through the table provider at the location `locate` gives, and compare with numpy's answer.
async fn check_cases(
    cases: &[Case],
    answers: &[Value],
    locate: impl Fn(usize, &Case) -> (String, HashMap<String, String>),
) {
    // zip() would stop at the shorter list: an oracle that answered fewer cases must fail, not check fewer.
    assert_eq!(
        answers.len(),
        cases.len(),
        "the oracle answered {} of {} cases",
        answers.len(),
        cases.len()
    );
    assert!(cases.len() >= MIN_CASES, "only {} cases", cases.len());
    for (k, (case, want)) in cases.iter().zip(answers).enumerate() {
        let ctx = session_context(
            SessionConfig::new()
                .with_target_partitions(1 + k % 3)
                .with_batch_size(5),
        );
        let (location, opts) = locate(k, case);
        register_voxels(&ctx, "v", &location, &opts).unwrap_or_else(|e| panic!("{location}: {e}"));
        let p = &case.sql_pred;
        match case.group {
            Some(g) => {
                let a = AXES[g];
                let sql = format!(
                    "SELECT {a}, count(*), sum(value) FROM v WHERE {p} GROUP BY {a} ORDER BY {a}"
                );
                let got: Vec<(f64, f64, f64)> = rows(&ctx, &sql)
                    .await
                    .iter()
                    .flat_map(|b| {
                        (0..b.num_rows()).map(|r| {
                            let f = |c: usize| f64_at(b.column(c), r).unwrap_or(f64::NAN);
                            (f(0), f(1), f(2))
                        })
                    })
                    .collect();
                let groups = want["groups"].as_array().unwrap();
                assert_eq!(got.len(), groups.len(), "{sql} on {}", case.path);
                for (g, w) in got.iter().zip(groups) {
                    assert_eq!(g.0, w[0].as_f64().unwrap(), "{sql}");
                    assert_eq!(g.1, w[1].as_f64().unwrap(), "{sql}");
                    close(Some(g.2), &w[2], "group sum", case);
                }
            }
            None => {
                let sql = format!(
                    "SELECT count(*), sum(value), min(value), max(value), avg(value) FROM v WHERE {p}"
                );
                let b = rows(&ctx, &sql).await;
                let b = &b[0];
                assert_eq!(
                    f64_at(b.column(0), 0),
                    want["count"].as_f64(),
                    "{sql} on {}",
                    case.path
                );
                close(f64_at(b.column(1), 0), &want["sum"], "sum", case);
                close(f64_at(b.column(2), 0), &want["min"], "min", case);
                close(f64_at(b.column(3), 0), &want["max"], "max", case);
                close(f64_at(b.column(4), 0), &want["mean"], "avg", case);
            }
        }
    }
}

/// Sum a metric over every scan in a plan.
fn scan_metric(plan: &Arc<dyn ExecutionPlan>, name: &str) -> usize {
    let own = if plan.downcast_ref::<DataSourceExec>().is_some() {
        plan.metrics()
            .and_then(|m| m.sum_by_name(name))
            .map_or(0, |v| v.as_usize())
    } else {
        0
    };
    own + plan
        .children()
        .iter()
        .map(|c| scan_metric(c, name))
        .sum::<usize>()
}

async fn bytes_read(ctx: &SessionContext, sql: &str) -> (usize, Vec<RecordBatch>) {
    let df = ctx.sql(sql).await.unwrap();
    let plan = df.create_physical_plan().await.unwrap();
    let out = collect(Arc::clone(&plan), ctx.task_ctx()).await.unwrap();
    (scan_metric(&plan, "bytes_read"), out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn selective_queries_read_only_what_they_need() {
    let dir = tempfile::tempdir().unwrap();
    let shape = [20usize, 16, 12, 10];
    let n: usize = shape.iter().product();
    let path = dir.path().join("four_d.nii");
    let mut rng = Rng(7);
    write_nifti1(
        &path,
        &shape,
        DType::new(Scalar::I16, ByteOrder::Little),
        0.0,
        0.0,
        &data(&mut rng, DType::native(Scalar::I16), n),
        false,
    )
    .unwrap();
    let ctx = session_context(SessionConfig::new().with_target_partitions(2));
    register_voxels(&ctx, "v", &path.display().to_string(), &HashMap::new()).unwrap();
    // (query, voxels strictly needed)
    let checks = [
        ("SELECT sum(value) FROM v WHERE t = 4", 20 * 16 * 12),
        (
            "SELECT sum(value) FROM v WHERE i = 3 AND j = 5 AND k = 7",
            10,
        ),
        ("SELECT sum(value) FROM v WHERE i = 7", 16 * 12 * 10),
        (
            "SELECT sum(value) FROM v WHERE k BETWEEN 2 AND 4 AND t IN (1, 8)",
            20 * 16 * 3 * 2,
        ),
        (
            "SELECT sum(value) FROM v WHERE i < 3 AND j > 10 AND t <> 0",
            3 * 5 * 12 * 9,
        ),
        (
            "SELECT t, avg(value) FROM v WHERE k = 6 GROUP BY t",
            20 * 16 * 10,
        ),
        ("SELECT count(*) FROM v WHERE i = 2", 0),
        ("SELECT i, j, k, t FROM v WHERE t = 1", 0),
        ("SELECT sum(value) FROM v WHERE i = 500", 0),
    ];
    for (sql, voxels) in checks {
        let (read, _) = bytes_read(&ctx, sql).await;
        let needed = voxels * 2;
        assert!(
            read as f64 <= 1.1 * needed as f64,
            "{sql}: read {read} bytes, needs {needed}"
        );
        assert!(read >= needed, "{sql}: read {read} bytes, needs {needed}");
    }
    // LIMIT stops reading early: each partition reads at most the limit.
    let (read, out) = bytes_read(&ctx, "SELECT value FROM v WHERE k = 3 LIMIT 5").await;
    assert_eq!(out.iter().map(|b| b.num_rows()).sum::<usize>(), 5);
    assert!(read <= 2 * 5 * 2, "LIMIT 5 read {read} bytes");
}
