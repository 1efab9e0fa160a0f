//! Runs every `queries/*.sql` through `voxelscan sql --format csv` against generated fixtures and compares the
//! output with `queries/<name>.csv` (set `VOXELSCAN_BLESS=1` to rewrite the expected files). The expected files are
//! written by the code under test, so a second test checks each of them against an independent answer: nibabel +
//! numpy through the test venv (`tests/py/queries_oracle.py`, which knows what each query means).
//!
//! Fixtures (made in a temporary directory that is the working directory of the queries): `bold.nii`, an
//! 8×8×4×6 int16 NIfTI scaled by 0.5 and +10 whose stored voxel (i, j, k, t) is (7i + 3j + 5k + 11t) mod 101, and
//! `runs/run-0{1,2,3}.nii`, the same pattern in shapes 8×8×4×6, 6×6×4×3 and 8×8×4×2; on bold's grid `atlas.nii`
//! (int16 labels `i / 3 + 3 * (j / 4)`, 0 the background) and `mask.nii` (1 where `(i + 2j + k) % 3 == 0`); and
//! `peaks.csv`, three named coordinates.
// The SQL front needs the `sql` feature (on by default).
#![cfg(feature = "sql")]

use std::process::Command;

mod common;
use common::{atlas_fixtures, bids_fixture, pattern_image, run_python};
use serde_json::Value;

/// The fixtures the queries run against (see the module comment).
fn fixtures() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    pattern_image(&dir.path().join("bold.nii"), [8, 8, 4, 6], 0);
    std::fs::create_dir(dir.path().join("runs")).unwrap();
    pattern_image(&dir.path().join("runs/run-01.nii"), [8, 8, 4, 6], 0);
    pattern_image(&dir.path().join("runs/run-02.nii"), [6, 6, 4, 3], 0);
    pattern_image(&dir.path().join("runs/run-03.nii"), [8, 8, 4, 2], 0);
    bids_fixture(dir.path());
    atlas_fixtures(dir.path());
    dir
}

#[test]
fn example_queries_give_their_expected_output() {
    let dir = fixtures();
    let names = common::query_files();
    let bless = std::env::var_os("VOXELSCAN_BLESS").is_some();
    for sql_path in names {
        let sql = std::fs::read_to_string(&sql_path).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_voxelscan"))
            .args(["sql", "--format", "csv", &sql])
            .current_dir(dir.path())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{}: {stderr}", sql_path.display());
        let got = String::from_utf8(out.stdout).unwrap();
        let expected_path = sql_path.with_extension("csv");
        if bless {
            std::fs::write(&expected_path, &got).unwrap();
            continue;
        }
        let want = std::fs::read_to_string(&expected_path).unwrap_or_else(|e| {
            panic!(
                "{}: {e} (run with VOXELSCAN_BLESS=1 once)",
                expected_path.display()
            )
        });
        assert_eq!(got, want, "{}", sql_path.display());
    }
}

/// Relative tolerance for numbers: the CSV prints the shortest text that parses back to DataFusion's float, which
/// may sum in another order than numpy.
const REL_TOL: f64 = 1e-9;

#[test]
fn expected_outputs_agree_with_numpy() {
    let dir = fixtures();
    let answers: Value =
        serde_json::from_str(&run_python("tests/py/queries_oracle.py", &[dir.path()]))
            .expect("the oracle prints one JSON object");
    let mut checked = 0;
    for sql_path in common::query_files() {
        let name = sql_path.file_stem().unwrap().to_string_lossy().into_owned();
        let sections = answers[&name].as_array().unwrap_or_else(|| {
            panic!("queries/{name}.sql has no answer in tests/py/queries_oracle.py: add one")
        });
        let csv_path = sql_path.with_extension("csv");
        let csv = std::fs::read_to_string(&csv_path)
            .unwrap_or_else(|e| panic!("{}: {e}", csv_path.display()));
        if let Err(why) = compare_sections(&csv, sections) {
            panic!("{}: {why}\n--- csv:\n{csv}", csv_path.display());
        }
        checked += 1;
    }
    assert!(checked >= 6, "checked {checked} queries");
}

/// The CSV text is the sections' header lines and rows, one after the other, and nothing else.
fn compare_sections(csv: &str, sections: &[Value]) -> Result<(), String> {
    let mut lines = csv.lines();
    for (n, section) in sections.iter().enumerate() {
        let columns: Vec<&str> = section["columns"]
            .as_array()
            .ok_or("oracle section without columns")?
            .iter()
            .filter_map(Value::as_str)
            .collect();
        let header = lines.next().ok_or(format!("section {n}: missing"))?;
        if header != columns.join(",") {
            return Err(format!(
                "section {n}: header '{header}', numpy's query has {columns:?}"
            ));
        }
        let rows = section["rows"]
            .as_array()
            .ok_or("oracle section without rows")?;
        for (r, want) in rows.iter().enumerate() {
            let line = lines
                .next()
                .ok_or(format!("section {n}: {r} rows, numpy has {}", rows.len()))?;
            let want = want.as_array().ok_or("oracle row is not a list")?;
            let fields: Vec<&str> = line.split(',').collect();
            if fields.len() != want.len() {
                return Err(format!("section {n} row {r}: '{line}' vs numpy {want:?}"));
            }
            for (field, w) in fields.iter().zip(want) {
                if !same_field(field, w) {
                    return Err(format!(
                        "section {n} row {r}: '{field}' in '{line}', numpy says {w}"
                    ));
                }
            }
        }
    }
    match lines.next() {
        None => Ok(()),
        Some(extra) => Err(format!("more lines than numpy's answer, from '{extra}'")),
    }
}

fn same_field(field: &str, want: &Value) -> bool {
    match want {
        Value::String(s) => field == s,
        Value::Number(n) => match (field.parse::<f64>(), n.as_f64()) {
            (Ok(got), Some(w)) => (got - w).abs() <= REL_TOL * w.abs().max(1.0),
            _ => false,
        },
        _ => false,
    }
}

#[test]
fn section_comparison_catches_differences() {
    let sections: Vec<Value> = serde_json::from_str(
        r#"[{"columns": ["t", "mean"], "rows": [[0, 31.25], [1, 36.75]]}, {"columns": ["n"], "rows": [[2]]}]"#,
    )
    .unwrap();
    assert!(compare_sections("t,mean\n0,31.25\n1,36.75\nn\n2\n", &sections).is_ok());
    for bad in [
        "t,mean\n0,31.25\n1,36.76\nn\n2\n",
        "t,avg\n0,31.25\n1,36.75\nn\n2\n",
        "t,mean\n0,31.25\nn\n2\n",
        "t,mean\n0,31.25\n1,36.75\nn\n2\n3\n",
        "t,mean\n0,31.25\n1,36.75\n",
    ] {
        assert!(compare_sections(bad, &sections).is_err(), "{bad:?}");
    }
}
