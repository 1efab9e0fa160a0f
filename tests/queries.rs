//! Runs every `queries/*.sql` through `voxelscan sql --format csv` against generated fixtures and compares the
//! output with `queries/<name>.csv` (set `VOXELSCAN_BLESS=1` to rewrite the expected files).
//!
//! Fixtures (made in a temporary directory that is the working directory of the queries): `bold.nii`, an
//! 8×8×4×6 int16 NIfTI scaled by 0.5 and +10 whose stored voxel (i, j, k, t) is (7i + 3j + 5k + 11t) mod 101, and
//! `runs/run-0{1,2,3}.nii`, the same pattern in shapes 8×8×4×6, 6×6×4×3 and 8×8×4×2.
// The SQL front needs the `sql` feature (on by default).
#![cfg(feature = "sql")]

use std::path::Path;
use std::process::Command;

mod common;
use common::pattern_image;

#[test]
fn example_queries_give_their_expected_output() {
    let dir = tempfile::tempdir().unwrap();
    pattern_image(&dir.path().join("bold.nii"), [8, 8, 4, 6], 0);
    std::fs::create_dir(dir.path().join("runs")).unwrap();
    pattern_image(&dir.path().join("runs/run-01.nii"), [8, 8, 4, 6], 0);
    pattern_image(&dir.path().join("runs/run-02.nii"), [6, 6, 4, 3], 0);
    pattern_image(&dir.path().join("runs/run-03.nii"), [8, 8, 4, 2], 0);
    let queries = Path::new(env!("CARGO_MANIFEST_DIR")).join("queries");
    let mut names: Vec<_> = std::fs::read_dir(&queries)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "sql"))
        .collect();
    names.sort();
    assert!(names.len() >= 6, "queries/ should hold the example queries");
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
