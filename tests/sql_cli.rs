//! `voxelscan sql` / `voxelscan export` contract and bad input: output formats (CSV floats round-trip), Parquet
//! metadata, one-line errors with exit status 2 naming the table and the file, empty results outside the array.
// The SQL front needs the `sql` feature (on by default).
#![cfg(feature = "sql")]

use std::path::Path;
use std::process::{Command, Output};

use voxelscan::dtype::{DType, Scalar};
use voxelscan::synth::{write_i16_nifti1, write_nifti1};

fn voxelscan(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_voxelscan"))
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap()
}

fn ok(dir: &Path, args: &[&str]) -> String {
    let o = voxelscan(dir, args);
    assert!(
        o.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

fn fails(dir: &Path, args: &[&str]) -> String {
    let o = voxelscan(dir, args);
    assert_eq!(o.status.code(), Some(2), "{args:?} should fail");
    let err = String::from_utf8(o.stderr).unwrap();
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(err.starts_with("error: "), "{err}");
    err
}

/// 5×4×3 float64 voxels with awkward values (i/3 + j·1e-7 …), and an int16 copy.
fn fixtures(dir: &Path) {
    let mut f64s = Vec::new();
    let mut i16s = Vec::new();
    for k in 0..3 {
        for j in 0..4 {
            for i in 0..5 {
                let v = i as f64 / 3.0 + j as f64 * 1e-7 - k as f64 * 1e300;
                f64s.extend_from_slice(&v.to_le_bytes());
                i16s.extend_from_slice(&((i + 10 * j + 100 * k) as i16).to_le_bytes());
            }
        }
    }
    write_nifti1(
        &dir.join("f.nii"),
        &[5, 4, 3],
        DType::native(Scalar::F64),
        0.0,
        0.0,
        &f64s,
        false,
    )
    .unwrap();
    write_nifti1(
        &dir.join("s.nii"),
        &[5, 4, 3],
        DType::native(Scalar::I16),
        0.0,
        0.0,
        &i16s,
        false,
    )
    .unwrap();
    write_nifti1(
        &dir.join("s.nii.gz"),
        &[5, 4, 3],
        DType::native(Scalar::I16),
        0.0,
        0.0,
        &i16s,
        true,
    )
    .unwrap();
}

#[test]
fn csv_floats_round_trip_and_formats_agree() {
    let dir = tempfile::tempdir().unwrap();
    fixtures(dir.path());
    let csv = ok(
        dir.path(),
        &[
            "sql",
            "-t",
            "f=f.nii",
            "--format",
            "csv",
            "SELECT i, j, k, value FROM f",
        ],
    );
    let mut lines = csv.lines();
    assert_eq!(lines.next(), Some("i,j,k,value"));
    let mut n = 0;
    for line in lines {
        let p: Vec<&str> = line.split(',').collect();
        let (i, j, k): (f64, f64, f64) = (
            p[0].parse().unwrap(),
            p[1].parse().unwrap(),
            p[2].parse().unwrap(),
        );
        let want = i / 3.0 + j * 1e-7 - k * 1e300;
        assert_eq!(
            p[3].parse::<f64>().unwrap().to_bits(),
            want.to_bits(),
            "{line}"
        );
        n += 1;
    }
    assert_eq!(n, 60);
    let json = ok(
        dir.path(),
        &[
            "sql",
            "-t",
            "s=s.nii",
            "--format",
            "json",
            "SELECT i, value FROM s WHERE j = 1 AND k = 2 ORDER BY i",
        ],
    );
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v[4], serde_json::json!({"i": 4, "value": 214}));
    let nd = ok(
        dir.path(),
        &[
            "sql",
            "-t",
            "s=s.nii",
            "--format",
            "ndjson",
            "SELECT count(*) AS n FROM s; SELECT max(value) AS m FROM s",
        ],
    );
    assert_eq!(nd, "{\"n\":60}\n{\"m\":234}\n");
    let table = ok(
        dir.path(),
        &["sql", "-t", "s=s.nii", "SELECT sum(value) AS total FROM s"],
    );
    assert!(table.contains("| 7020  |"), "{table}");
    let out = dir.path().join("out.csv");
    ok(
        dir.path(),
        &[
            "sql",
            "-t",
            "g=s.nii.gz",
            "--format",
            "csv",
            "-o",
            "out.csv",
            "SELECT sum(value) AS total FROM g WHERE k = 1",
        ],
    );
    assert_eq!(std::fs::read_to_string(out).unwrap(), "total\n2340\n");
}

#[test]
fn export_writes_parquet_with_the_header() {
    let dir = tempfile::tempdir().unwrap();
    fixtures(dir.path());
    ok(dir.path(), &["export", "s.nii", "s.parquet"]);
    ok(
        dir.path(),
        &[
            "export",
            "s.nii",
            "part",
            "--sql",
            "SELECT k, value FROM t WHERE i = 0",
            "--partition-by",
            "k",
        ],
    );
    let check = ok(
        dir.path(),
        &[
            "sql",
            "--format",
            "csv",
            "CREATE EXTERNAL TABLE p STORED AS PARQUET LOCATION 's.parquet'; SELECT count(*) AS n, sum(value) AS s FROM p;",
        ],
    );
    assert!(check.starts_with("n,s\n60,7020\n"), "{check}");
    // The default export keeps the stored columns: no x, y, z, world_space, tr; `--sql` can still select them.
    let columns = ok(
        dir.path(),
        &[
            "sql",
            "--format",
            "csv",
            "CREATE EXTERNAL TABLE p STORED AS PARQUET LOCATION 's.parquet'; SELECT * FROM p LIMIT 1;",
        ],
    );
    assert!(columns.starts_with("i,j,k,value\n"), "{columns}");
    ok(
        dir.path(),
        &[
            "export",
            "s.nii",
            "mm.parquet",
            "--sql",
            "SELECT i, x FROM t",
        ],
    );
    let mm = ok(
        dir.path(),
        &[
            "sql",
            "--format",
            "csv",
            "CREATE EXTERNAL TABLE m STORED AS PARQUET LOCATION 'mm.parquet'; SELECT count(x) AS n FROM m;",
        ],
    );
    assert!(mm.starts_with("n\n60\n"), "{mm}");
    let bytes = std::fs::read(dir.path().join("s.parquet")).unwrap();
    let text = String::from_utf8_lossy(&bytes);
    for key in [
        "voxelscan.header",
        "shape",
        "dtype",
        "affine",
        "slope",
        "inter",
        "offset",
    ] {
        assert!(text.contains(key), "metadata key {key} missing");
    }
    assert!(
        text.contains("[5,4,3]") && text.contains("<i2"),
        "header values missing"
    );
    assert!(dir.path().join("part/k=2").is_dir());
}

#[test]
fn bad_input_gives_one_line_errors() {
    let dir = tempfile::tempdir().unwrap();
    fixtures(dir.path());
    let d = dir.path();
    let e = fails(d, &["sql", "-t", "x=missing/*.nii", "SELECT 1"]);
    assert!(e.contains("matches no image file"), "{e}");
    let e = fails(
        d,
        &[
            "sql",
            "CREATE EXTERNAL TABLE x STORED AS NIFTI LOCATION 's.nii' OPTIONS ('colour' 'red')",
        ],
    );
    assert!(
        e.contains("table x") && e.contains("unknown option 'colour'"),
        "{e}"
    );
    let e = fails(
        d,
        &[
            "sql",
            "CREATE EXTERNAL TABLE x STORED AS MGH LOCATION 's.nii'",
        ],
    );
    assert!(e.contains("s.nii") && e.contains("not MGH"), "{e}");
    let e = fails(
        d,
        &[
            "sql",
            "CREATE EXTERNAL TABLE x STORED AS RAW LOCATION 's.nii' OPTIONS ('shape' '100,100', 'dtype' '<f8')",
        ],
    );
    assert!(e.contains("table x") && e.contains("s.nii"), "{e}");
    let e = fails(
        d,
        &[
            "sql",
            "CREATE EXTERNAL TABLE x STORED AS NIFTI LOCATION 's.nii'; SELECT * FROM x WHERE nosuch = 1",
        ],
    );
    assert!(e.contains("nosuch"), "{e}");
    fails(d, &["sql", "-t", "bad", "SELECT 1"]);
    // Outside the array: an empty result, not an error.
    let out = ok(
        d,
        &[
            "sql",
            "-t",
            "s=s.nii",
            "--format",
            "csv",
            "SELECT count(*) AS n, sum(value) AS v FROM s WHERE i = 50 OR k < 0",
        ],
    );
    assert_eq!(out, "n,v\n0,\n");
    // RAW tables: a spec over the NIfTI's data gives its values.
    let raw = ok(
        d,
        &[
            "sql",
            "--format",
            "csv",
            "CREATE EXTERNAL TABLE r STORED AS RAW LOCATION 's.nii' OPTIONS ('shape' '5,4,3', 'dtype' '<i2', 'offset' '352'); SELECT sum(value) AS s FROM r",
        ],
    );
    assert_eq!(raw, "s\n7020\n");
}

#[tokio::test]
async fn files_changed_after_registration_are_refused() {
    use voxelscan::table::{register_voxels, session_context};
    let dir = tempfile::tempdir().unwrap();
    fixtures(dir.path());
    let p = dir.path().join("s.nii");
    let ctx = session_context(datafusion::prelude::SessionConfig::new());
    register_voxels(&ctx, "s", &p.display().to_string(), &Default::default()).unwrap();
    let full = std::fs::read(&p).unwrap();
    std::fs::write(&p, &full[..full.len() - 10]).unwrap();
    let err = ctx
        .sql("SELECT sum(value) FROM s")
        .await
        .unwrap()
        .collect()
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("table s") && err.contains("s.nii"), "{err}");
    // Coordinates alone never read voxels, so they still answer.
    let n = ctx
        .sql("SELECT count(*) FROM s")
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    assert_eq!(n[0].num_rows(), 1);
}

#[tokio::test]
async fn many_files_as_one_table() {
    use voxelscan::table::{register_voxels, session_context};
    let dir = tempfile::tempdir().unwrap();
    let sub = dir.path().join("runs");
    std::fs::create_dir(&sub).unwrap();
    for (name, shape) in [
        ("a.nii", [2usize, 3, 4]),
        ("b.nii", [3, 3, 2]),
        ("c.nii", [1, 1, 5]),
    ] {
        let n: usize = shape.iter().product();
        let data: Vec<u8> = (0..n as i16).flat_map(|v| v.to_le_bytes()).collect();
        write_i16_nifti1(&sub.join(name), &shape, &data).unwrap();
    }
    let ctx = session_context(datafusion::prelude::SessionConfig::new().with_target_partitions(2));
    let glob = format!("{}/*.nii", sub.display());
    register_voxels(&ctx, "r", &glob, &Default::default()).unwrap();
    let sql = "SELECT count(*) AS n, sum(value) AS s FROM r WHERE file LIKE '%b.nii' AND k = 1";
    let b = ctx.sql(sql).await.unwrap().collect().await.unwrap();
    let text = datafusion::arrow::util::pretty::pretty_format_batches(&b)
        .unwrap()
        .to_string();
    assert!(text.contains("| 9 | 117 |"), "{text}");
    let plan = ctx
        .sql(&format!("EXPLAIN {sql}"))
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let plan = datafusion::arrow::util::pretty::pretty_format_batches(&plan)
        .unwrap()
        .to_string();
    assert!(
        plan.contains("b.nii[0:3, 0:3, 1]") && !plan.contains("a.nii["),
        "{plan}"
    );
    write_nifti1(
        &sub.join("d.nii"),
        &[2, 2],
        DType::native(Scalar::I16),
        0.0,
        0.0,
        &[0; 8],
        false,
    )
    .unwrap();
    let e = register_voxels(&ctx, "bad", &glob, &Default::default())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("d.nii") && e.contains("same number of axes"),
        "{e}"
    );
}
