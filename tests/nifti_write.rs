//! `COPY … TO 'x.nii[.gz]' STORED AS NIFTI` and `voxelscan export … --format nifti`, end to end through the CLI:
//! random images written by nibabel come back equal (array, dtype, affine, codes, zooms, and every header field
//! nibabel would keep from the template), tSNR and mean maps equal numpy's, sparse results get the fill, nibabel's
//! own slope/intercept for `'scale' 'auto'`, bad input exits 2 and leaves nothing under the target name, and a
//! written `.nii.gz` is read by voxelscan through the index written with it.
//!
//! Needs a Python with nibabel and numpy: `$VOXELSCAN_PYTHON`, default `.venv/bin/python` in the repository.
#![cfg(feature = "sql")]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use common::{check_error_run, check_ok_run, repo_root, run_cli};

fn python() -> PathBuf {
    let python = match std::env::var_os("VOXELSCAN_PYTHON") {
        Some(p) => PathBuf::from(p),
        None => repo_root().join(".venv/bin/python"),
    };
    let probe = Command::new(&python)
        .args(["-c", "import nibabel, numpy"])
        .output();
    match probe {
        Ok(out) if out.status.success() => python,
        _ => panic!(
            "tests/nifti_write.rs needs nibabel and numpy in {} (run `.ci/run` once, or point VOXELSCAN_PYTHON at \
             a Python that has them)",
            python.display()
        ),
    }
}

/// Run the oracle script; its stdout is one JSON value.
fn oracle(args: &[&str]) -> Value {
    let script = repo_root().join("tests/nifti_write_oracle.py");
    let out = Command::new(python())
        .arg(script)
        .args(args)
        .output()
        .expect("start python");
    assert!(
        out.status.success(),
        "oracle {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("oracle JSON")
}

fn check(mode: &str, src: &Path, out: &Path, extra: &[&str]) -> Value {
    let mut args = vec!["check", mode, src.to_str().unwrap(), out.to_str().unwrap()];
    args.extend_from_slice(extra);
    let v = oracle(&args);
    assert_eq!(v["ok"], Value::Bool(true), "{mode} {}: {v}", src.display());
    v
}

fn s(x: impl AsRef<str>) -> String {
    x.as_ref().to_string()
}

fn sql(dir: &Path, table: &Path, statement: &str) -> common::Run {
    run_cli(
        dir,
        &[
            s("sql"),
            s("-t"),
            format!("t={}", table.display()),
            s(statement),
        ],
    )
}

/// A random 4-D float64 source (made by nibabel) for the map tests.
fn bold(dir: &Path) -> PathBuf {
    let cases = oracle(&["make", dir.to_str().unwrap(), "77", "8"]);
    let four_d = cases
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["shape"].as_array().unwrap().len() == 4)
        .expect("a 4-D case");
    PathBuf::from(four_d["path"].as_str().unwrap())
}

#[test]
fn random_images_round_trip_through_copy() {
    let dir = tempfile::tempdir().unwrap();
    let mut checked = 0;
    for seed in [1u64, 2, 3] {
        let cases = oracle(&["make", dir.path().to_str().unwrap(), &seed.to_string(), "8"]);
        for (n, case) in cases.as_array().unwrap().iter().enumerate() {
            let src = PathBuf::from(case["path"].as_str().unwrap());
            let out = dir.path().join(format!(
                "out{seed}-{n}.nii{}",
                if n % 2 == 0 { ".gz" } else { "" }
            ));
            let run = sql(
                dir.path(),
                &src,
                &format!(
                    "COPY (SELECT * FROM t ORDER BY value) TO '{}' STORED AS NIFTI",
                    out.display()
                ),
            );
            check_ok_run(&run).unwrap_or_else(|e| panic!("{}: {e}", src.display()));
            check("same", &src, &out, &[]);
            checked += 1;
        }
    }
    assert_eq!(checked, 24);
}

#[test]
fn tsnr_and_mean_maps_equal_numpys() {
    let dir = tempfile::tempdir().unwrap();
    let src = bold(dir.path());
    for (mode, expr) in [
        ("mean", "avg(value)"),
        ("tsnr", "avg(value) / stddev(value)"),
    ] {
        let out = dir.path().join(format!("{mode}.nii.gz"));
        let run = sql(
            dir.path(),
            &src,
            &format!(
                "COPY (SELECT i, j, k, {expr} AS m FROM t GROUP BY i, j, k) TO '{}' STORED AS NIFTI",
                out.display()
            ),
        );
        check_ok_run(&run).unwrap();
        check(mode, &src, &out, &[]);
    }
}

/// A window query keeps the table's coordinates (the window node appends its result after them): the grid is
/// found without `like`.
#[test]
fn a_window_query_keeps_the_grid() {
    let dir = tempfile::tempdir().unwrap();
    let src = bold(dir.path());
    let out = dir.path().join("demeaned.nii");
    let run = sql(
        dir.path(),
        &src,
        &format!(
            "COPY (SELECT i, j, k, t, value - avg(value) OVER (PARTITION BY i, j, k) AS d FROM t) TO '{}' STORED AS NIFTI",
            out.display()
        ),
    );
    check_ok_run(&run).unwrap();
    check("demean", &src, &out, &[]);
}

#[test]
fn sparse_results_get_the_fill() {
    let dir = tempfile::tempdir().unwrap();
    let src = bold(dir.path());
    for fill in ["nan", "-1"] {
        let out = dir.path().join(format!("sparse{fill}.nii"));
        let run = sql(
            dir.path(),
            &src,
            &format!(
                "COPY (SELECT i, j, k, CAST(value AS DOUBLE) AS v FROM t WHERE t = 0 AND value > 100) TO '{}' \
                 STORED AS NIFTI OPTIONS ('fill' '{fill}')",
                out.display()
            ),
        );
        check_ok_run(&run).unwrap();
        let v = check("sparse", &src, &out, &["100", fill]);
        assert!(v["kept"].as_u64().unwrap() > 0, "{v}");
    }
}

#[test]
fn auto_scaling_takes_nibabels_slope_and_intercept() {
    let dir = tempfile::tempdir().unwrap();
    let src = bold(dir.path());
    for dtype in ["int16", "uint8", "int8"] {
        let out = dir.path().join(format!("scaled-{dtype}.nii"));
        let run = sql(
            dir.path(),
            &src,
            &format!(
                "COPY (SELECT i, j, k, CAST(value AS DOUBLE) * 1.37 - 20 AS v FROM t WHERE t = 0) TO '{}' \
                 STORED AS NIFTI OPTIONS ('dtype' '{dtype}', 'scale' 'auto')",
                out.display()
            ),
        );
        check_ok_run(&run).unwrap();
        // The oracle scales SRC[..., 0] itself: give it the same transformed values through a float source.
        let same_values = dir.path().join(format!("values-{dtype}.nii"));
        let run = sql(
            dir.path(),
            &src,
            &format!(
                "COPY (SELECT i, j, k, t, CAST(value AS DOUBLE) * 1.37 - 20 AS v FROM t WHERE t = 0) TO '{}' \
                 STORED AS NIFTI",
                same_values.display()
            ),
        );
        check_ok_run(&run).unwrap();
        let v = check("scaled", &same_values, &out, &[dtype]);
        // The same stored integers as nibabel's own write, not just within one step.
        assert_eq!(
            v["stored_differ"].as_u64(),
            Some(0),
            "scale auto {dtype}: {v}"
        );
    }
}

#[test]
fn bad_input_exits_2_and_leaves_nothing_under_the_target() {
    let dir = tempfile::tempdir().unwrap();
    let src = bold(dir.path());
    let target = dir.path().join("bad.nii.gz");
    let t = target.display();
    let cases = [
        (
            format!("COPY (SELECT i, j, value FROM t) TO '{t}' STORED AS NIFTI"),
            "missing coordinate column k",
        ),
        (
            format!("COPY (SELECT i, j, k, value FROM t) TO '{t}' STORED AS NIFTI"),
            "two rows for voxel",
        ),
        (
            format!(
                "COPY (SELECT i - 1 AS i, j, k, value FROM t WHERE t = 0) TO '{t}' STORED AS NIFTI OPTIONS ('like' '{}')",
                src.display()
            ),
            "outside the grid",
        ),
        (
            format!(
                "COPY (SELECT i + 100 AS i, j, k, CAST(NULL AS DOUBLE) AS value FROM t WHERE t = 0) TO '{t}' STORED AS NIFTI OPTIONS ('like' '{}')",
                src.display()
            ),
            "outside the grid",
        ),
        (
            format!(
                "COPY (SELECT i, j, k, value FROM t WHERE t = 0) TO '{t}' STORED AS NIFTI OPTIONS ('dtype' 'float32', 'scale' 'auto')"
            ),
            "float dtype",
        ),
        (
            format!(
                "COPY (SELECT i * 2 AS i, j, k, value FROM t WHERE t = 0) TO '{t}' STORED AS NIFTI"
            ),
            "'like'",
        ),
        (
            format!("COPY (SELECT i, j, k, 'x' AS v FROM t WHERE t = 0) TO '{t}' STORED AS NIFTI"),
            "not numeric",
        ),
        (
            format!(
                "COPY (SELECT * FROM t) TO '{t}' STORED AS NIFTI OPTIONS ('like' '{}/missing.nii')",
                dir.path().display()
            ),
            "missing.nii",
        ),
        (
            format!(
                "COPY (SELECT CASE WHEN i = 1 THEN NULL ELSE i END AS i, j, k, value FROM t WHERE t = 0) TO '{t}' STORED AS NIFTI OPTIONS ('like' '{}')",
                src.display()
            ),
            "NULL i coordinate",
        ),
        (
            format!(
                "COPY (SELECT * FROM t) TO '{}/out/' STORED AS NIFTI",
                dir.path().display()
            ),
            "*.nii",
        ),
    ];
    std::fs::write(&target, b"keep me").unwrap();
    for (statement, want) in cases {
        let run = sql(dir.path(), &src, &statement);
        check_error_run(&run).unwrap_or_else(|e| panic!("{statement}: {e}"));
        assert!(run.stderr.contains(want), "{statement}\n{}", run.stderr);
        assert_eq!(std::fs::read(&target).unwrap(), b"keep me", "{statement}");
        let stray: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".tmp"))
            .collect();
        assert!(stray.is_empty(), "{statement}: left {stray:?}");
    }
    // A failed write to a new name leaves no file at all.
    let fresh = dir.path().join("fresh.nii");
    let run = sql(
        dir.path(),
        &src,
        &format!(
            "COPY (SELECT i, j, k, value FROM t) TO '{}' STORED AS NIFTI",
            fresh.display()
        ),
    );
    check_error_run(&run).unwrap();
    assert!(!fresh.exists());
}

#[test]
fn export_writes_nifti_by_name_or_flag_and_the_gz_reads_through_its_index() {
    let dir = tempfile::tempdir().unwrap();
    let src = bold(dir.path());
    let out = dir.path().join("copy.nii.gz");
    let run = run_cli(
        dir.path(),
        &[
            s("export"),
            src.display().to_string(),
            out.display().to_string(),
        ],
    );
    check_ok_run(&run).unwrap();
    check("same", &src, &out, &[]);
    // The index was written with the file, next to it, and voxelscan reads a slice equal to nibabel's.
    assert!(dir.path().join(".copy.nii.gz.vxidx").exists());
    let npy = dir.path().join("last.npy");
    let run = run_cli(
        dir.path(),
        &[
            s("slice"),
            out.display().to_string(),
            s("..., -1"),
            s("-o"),
            npy.display().to_string(),
        ],
    );
    check_ok_run(&run).unwrap();
    let want = dir.path().join("want.npy");
    let status = Command::new(python())
        .args([
            "-c",
            "import sys, nibabel as nib, numpy as np; np.save(sys.argv[2], np.asarray(nib.load(sys.argv[1]).dataobj[..., -1]))",
            out.to_str().unwrap(),
            want.to_str().unwrap(),
        ])
        .status()
        .unwrap();
    assert!(status.success());
    let (a, b) = (
        common::read_npy(&want).unwrap(),
        common::read_npy(&npy).unwrap(),
    );
    common::compare_npy(&a, &b).unwrap();

    // --format nifti with a query and a dtype; --partition-by and NIfTI flags on Parquet are refused.
    let mean = dir.path().join("mean_map");
    let run = run_cli(
        dir.path(),
        &[
            s("export"),
            src.display().to_string(),
            mean.display().to_string(),
            s("--format"),
            s("nifti"),
            s("--sql"),
            s("SELECT i, j, k, avg(value) AS m FROM t GROUP BY i, j, k"),
        ],
    );
    check_error_run(&run).unwrap(); // the name must end in .nii/.nii.gz
    let mean = dir.path().join("mean.nii");
    let run = run_cli(
        dir.path(),
        &[
            s("export"),
            src.display().to_string(),
            mean.display().to_string(),
            s("--sql"),
            s("SELECT i, j, k, avg(value) AS m FROM t GROUP BY i, j, k"),
        ],
    );
    check_ok_run(&run).unwrap();
    check("mean", &src, &mean, &[]);
    for bad in [
        vec![s("--partition-by"), s("t")],
        vec![s("--format"), s("parquet"), s("--dtype"), s("int16")],
    ] {
        let mut args = vec![
            s("export"),
            src.display().to_string(),
            dir.path().join("x.nii").display().to_string(),
        ];
        args.extend(bad);
        let run = run_cli(dir.path(), &args);
        check_error_run(&run).unwrap();
    }
}

/// `COPY … TO 's3://…'`: uploaded through the session's object stores (Garage), with the index saved under the new
/// object's URL, size and ETag; the object reads back through voxelscan equal to the local copy.
#[test]
fn copy_to_an_object_store_uploads_the_image_and_its_index() {
    let g = common::servers::Garage::shared();
    let dir = tempfile::tempdir().unwrap();
    // 2.6 MB of random int16: the written .nii.gz has seek points at 1 and 2 MiB.
    let src = dir.path().join("big.nii");
    let shape = [64, 64, 32, 10];
    let data = voxelscan::synth::random_i16_le(shape.iter().product(), 5, 0, 4000);
    let dtype = voxelscan::dtype::DType::native(voxelscan::dtype::Scalar::I16);
    voxelscan::synth::write_nifti1(&src, &shape, dtype, 1.0, 0.0, &data, false).unwrap();
    let cache = dir.path().join("cache");
    let url = g.url_of("nifti_write/copy.nii.gz");
    let cli = |args: &[String]| {
        let out = Command::new(common::voxelscan_bin())
            .args(args)
            .envs(g.env())
            .env("XDG_CACHE_HOME", &cache)
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    cli(&[
        s("sql"),
        s("-t"),
        format!("t={}", src.display()),
        format!("COPY (SELECT * FROM t) TO '{url}' STORED AS NIFTI"),
    ]);
    let indexes: Vec<_> = std::fs::read_dir(cache.join("voxelscan"))
        .map(|d| d.map(|e| e.unwrap().file_name()).collect())
        .unwrap_or_default();
    assert_eq!(indexes.len(), 1, "one index in the cache: {indexes:?}");
    let (remote, local) = (dir.path().join("remote.npy"), dir.path().join("local.npy"));
    let stats = cli(&[
        s("slice"),
        url.clone(),
        s("..., -1"),
        s("-o"),
        remote.display().to_string(),
        s("--stats"),
    ]);
    cli(&[
        s("slice"),
        src.display().to_string(),
        s("..., -1"),
        s("-o"),
        local.display().to_string(),
    ]);
    // With the index written at upload, the last volume is fetched from the seek point before it, not from byte
    // 0 (random data hardly compresses: a read from the start would fetch about 2 MB).
    let fetched: u64 = stats
        .split_whitespace()
        .find_map(|w| w.strip_prefix("bytes_fetched="))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no bytes_fetched in {stats}"));
    eprintln!("slice of the uploaded image: {}", stats.trim());
    assert!(fetched < data.len() as u64 / 2, "{stats}");
    let (a, b) = (
        common::read_npy(&local).unwrap(),
        common::read_npy(&remote).unwrap(),
    );
    // The written image is little-endian; compare the values, whatever the source's byte order.
    assert_eq!(common::to_f64(&a), common::to_f64(&b));

    // The new object as the grid of another write (`like` over a URL: a gzip NIfTI-1 header fetched and inflated).
    let map = dir.path().join("map.nii");
    cli(&[
        s("sql"),
        s("-t"),
        format!("t={}", src.display()),
        format!(
            "COPY (SELECT i * 1 AS i, j, k, max(value) AS m FROM t GROUP BY i, j, k) TO '{}' STORED AS NIFTI \
             OPTIONS ('like' '{url}')",
            map.display()
        ),
    ]);
    let proxy = voxelscan::ArrayProxy::open(&map, Default::default()).unwrap();
    assert_eq!(proxy.shape(), &[64, 64, 32]);
}
