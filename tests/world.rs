//! The millimetre columns `x, y, z` against nibabel: every voxel's `apply_affine(img.affine, ijk)` for NIfTI-1/2
//! (sform only, qform only, both, neither, oblique, flipped), MGH and Analyze images with random affines
//! (`tests/py/world_oracle.py` writes them), predicates and spheres on `x, y, z` against numpy over the full grid,
//! the bytes such a scan reads, and the per-file columns `world_space` and `tr`.
#![cfg(feature = "sql")]

mod common;

use std::collections::HashMap;

use datafusion::arrow::array::{Array, Float64Array, RecordBatch, StringArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::DataType;
use datafusion::prelude::{SessionConfig, SessionContext};
use serde_json::Value;
use voxelscan::table::{register_voxels, session_context};

fn ctx() -> SessionContext {
    session_context(SessionConfig::new().with_target_partitions(2))
}

/// The oracle's images, written into `dir`, and its answers.
fn oracle(dir: &std::path::Path) -> Vec<Value> {
    let out = common::run_python("tests/py/world_oracle.py", &[dir]);
    let v: Value = serde_json::from_str(&out).expect("the oracle prints JSON");
    v.as_array().expect("a list of images").clone()
}

use common::sql::run_measured as run;

/// Column `c` of all batches as f64 (nulls as NaN).
fn column(batches: &[RecordBatch], c: usize) -> Vec<f64> {
    let mut out = Vec::new();
    for b in batches {
        let a = cast(b.column(c), &DataType::Float64).expect("numeric column");
        let a = a.as_any().downcast_ref::<Float64Array>().expect("f64");
        out.extend((0..a.len()).map(|r| if a.is_null(r) { f64::NAN } else { a.value(r) }));
    }
    out
}

fn strings(batches: &[RecordBatch], c: usize) -> Vec<Option<String>> {
    let mut out = Vec::new();
    for b in batches {
        let a = cast(b.column(c), &DataType::Utf8).expect("text column");
        let a = a.as_any().downcast_ref::<StringArray>().expect("utf8");
        out.extend((0..a.len()).map(|r| (!a.is_null(r)).then(|| a.value(r).to_string())));
    }
    out
}

fn is_aligned(name: &str) -> bool {
    name.contains("flipped") || name.starts_with("analyze") || name.contains("neither")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xyz_equal_nibabel_apply_affine() {
    // The columns are there without any option for images with an affine.
    let dir = tempfile::tempdir().unwrap();
    let images = oracle(dir.path());
    assert!(images.len() >= 10);
    let ctx = ctx();
    for img in &images {
        let name = img["name"].as_str().unwrap();
        let path = dir.path().join(name);
        let ndim = img["shape"].as_array().unwrap().len();
        let first = if ndim > 3 { "WHERE t = 0" } else { "" };
        let sql = format!(
            "SELECT x, y, z, world_space, tr FROM voxels('{}') {first} ORDER BY i, j, k",
            path.display()
        );
        let (b, _, _) = run(&ctx, &sql).await;
        let want = img["xyz"].as_array().unwrap();
        let got: Vec<Vec<f64>> = (0..3).map(|c| column(&b, c)).collect();
        assert_eq!(got[0].len(), want.len(), "{name}: rows");
        for (n, w) in want.iter().enumerate() {
            for (c, col) in got.iter().enumerate() {
                let w = w[c].as_f64().unwrap();
                assert!(
                    (col[n] - w).abs() <= 1e-6,
                    "{name}: voxel {n} axis {c}: {} vs nibabel {w}",
                    col[n]
                );
            }
        }
        let space = strings(&b, 3);
        assert_eq!(
            space[0].as_deref(),
            img["space"].as_str(),
            "{name}: world_space"
        );
        let tr = column(&b, 4)[0];
        match img["tr"].as_f64() {
            Some(want) => assert!((tr - want).abs() < 1e-9, "{name}: tr {tr} vs {want}"),
            None => assert!(
                tr.is_nan(),
                "{name}: tr {tr} for an image without a time axis"
            ),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mm_predicates_and_spheres_equal_numpy_and_read_only_their_box() {
    let dir = tempfile::tempdir().unwrap();
    let images = oracle(dir.path());
    let ctx = ctx();
    let mut checked = 0;
    for img in &images {
        let name = img["name"].as_str().unwrap();
        let path = dir.path().join(name);
        for q in img["queries"].as_array().unwrap() {
            let pred = q["sql"].as_str().unwrap();
            let sql = format!(
                "SELECT count(*), sum(CAST(value AS DOUBLE)) FROM voxels('{}', 'world', 'true') WHERE {pred}",
                path.display()
            );
            let (b, bytes, plan) = run(&ctx, &sql).await;
            let count = column(&b, 0)[0];
            let sum = column(&b, 1)[0];
            let want_count = q["count"].as_f64().unwrap();
            let want_sum = q["sum"].as_f64().unwrap();
            assert_eq!(count, want_count, "{name}: {pred}");
            if want_count > 0.0 {
                assert!(
                    (sum - want_sum).abs() <= 1e-9 * want_sum.abs().max(1.0),
                    "{name}: {pred}: {sum} vs {want_sum}"
                );
            }
            let box_bytes = q["box_bytes"].as_u64().unwrap() as usize;
            if !name.ends_with(".gz") && !name.ends_with(".mgh") {
                assert!(
                    bytes <= box_bytes,
                    "{name}: {pred}: read {bytes} bytes, the box holds {box_bytes}"
                );
            }
            // Plain comparisons on an axis-aligned image are answered by the scan alone.
            if is_aligned(name) && !pred.contains('*') && !pred.contains("power") {
                assert!(!plan.contains("FilterExec"), "{name}: {pred}: {plan}");
            }
            checked += 1;
        }
    }
    assert!(checked >= 50, "{checked}");
}

/// A table over several files with different affines: each row's x, y, z come through its own file's affine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_file_tables_use_each_files_affine() {
    let dir = tempfile::tempdir().unwrap();
    let images = oracle(dir.path());
    let ctx = ctx();
    let glob = dir.path().join("n*.nii");
    let opts = HashMap::from([("world".to_string(), "true".to_string())]);
    register_voxels(&ctx, "t", &glob.display().to_string(), &opts).expect("register");
    let (b, _, _) = run(
        &ctx,
        "SELECT file, sum(x), sum(y), sum(z), count(*) FROM t GROUP BY file ORDER BY file",
    )
    .await;
    let files = strings(&b, 0);
    let sums: Vec<Vec<f64>> = (1..4).map(|c| column(&b, c)).collect();
    let mut seen = 0;
    for img in &images {
        let name = img["name"].as_str().unwrap();
        if !(name.starts_with('n') && name.ends_with(".nii")) {
            continue;
        }
        let row = files
            .iter()
            .position(|f| f.as_deref().is_some_and(|f| f.ends_with(name)))
            .unwrap_or_else(|| panic!("{name} not in {files:?}"));
        let want = img["xyz"].as_array().unwrap();
        for (c, sum) in sums.iter().enumerate() {
            let w: f64 = want.iter().map(|p| p[c].as_f64().unwrap()).sum();
            assert!(
                (sum[row] - w).abs() <= 1e-6 * want.len() as f64,
                "{name} axis {c}"
            );
        }
        seen += 1;
    }
    assert!(seen >= 6, "{seen}");
}

/// npy and raw arrays have x, y, z only with an `affine` option; a bad one is a clear error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn npy_takes_an_affine_option() {
    let dir = tempfile::tempdir().unwrap();
    let npy = dir.path().join("a.npy");
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    let mut header = "{'descr': '<i2', 'fortran_order': False, 'shape': (3, 4, 2), }".to_string();
    while !(10 + header.len() + 1).is_multiple_of(64) {
        header.push(' ');
    }
    header.push('\n');
    bytes.extend((header.len() as u16).to_le_bytes());
    bytes.extend(header.as_bytes());
    bytes.extend((0..24i16).flat_map(|v| v.to_le_bytes()));
    std::fs::write(&npy, bytes).unwrap();
    let ctx = ctx();
    let p = npy.display();
    let (b, _, _) = run(
        &ctx,
        &format!("SELECT i, j, k, x, y, z FROM voxels('{p}', 'affine', '2 0 0 -10, 0 3 0 5, 0 0 -1 7') ORDER BY i, j, k"),
    )
    .await;
    let (i, j, k) = (column(&b, 0), column(&b, 1), column(&b, 2));
    let (x, y, z) = (column(&b, 3), column(&b, 4), column(&b, 5));
    assert_eq!(x.len(), 24);
    for (n, ((i, j), k)) in i.iter().zip(&j).zip(&k).enumerate() {
        assert_eq!(x[n], 2.0 * i - 10.0);
        assert_eq!(y[n], 3.0 * j + 5.0);
        assert_eq!(z[n], 7.0 - k);
    }
    let (b, _, plan) = run(&ctx, &format!("SELECT count(*) FROM voxels('{p}', 'affine', '2 0 0 -10, 0 3 0 5, 0 0 -1 7') WHERE x >= -8 AND z < 7")).await;
    assert_eq!(column(&b, 0)[0], 2.0 * 4.0 * 1.0, "{plan}");
    for (opts, why) in [
        ("'world', 'true'", "has no affine"),
        ("'affine', '1 2 3'", "12 (three rows) or 16"),
        ("'affine', '1 0 0 0 0 1 0 0 0 0 0 0'", "singular"),
    ] {
        let e =
            common::sql::error_text(&ctx, &format!("SELECT x FROM voxels('{p}', {opts})")).await;
        assert!(e.contains(why), "{opts}: {e}");
    }
    // Without the option the table is as before: no x column.
    let e = ctx
        .sql(&format!("SELECT x FROM voxels('{p}')"))
        .await
        .err()
        .map(|e| e.to_string());
    assert!(e.is_some_and(|e| e.contains('x')));
    // A directory mixing that npy (no affine) with a NIfTI image: no millimetre columns unless asked for, and asked
    // for ('world' 'true') an error naming the npy file.
    let nii = dir.path().join("b.nii");
    let data: Vec<u8> = (0..24i16).flat_map(|v| v.to_le_bytes()).collect();
    voxelscan::synth::write_i16_nifti1(&nii, &[3, 4, 2], &data).unwrap();
    let d = dir.path().display();
    let (b, _, _) = run(&ctx, &format!("SELECT count(*) FROM voxels('{d}/*')")).await;
    assert_eq!(column(&b, 0)[0], 48.0);
    let e = common::sql::error_text(&ctx, &format!("SELECT x FROM voxels('{d}/*')")).await;
    assert!(e.contains('x'), "{e}");
    let e = common::sql::error_text(
        &ctx,
        &format!("SELECT x FROM voxels('{d}/*', 'world', 'true')"),
    )
    .await;
    assert!(e.contains("a.npy") && e.contains("has no affine"), "{e}");
    let (b, _, _) = run(&ctx, &format!("SELECT count(x) FROM voxels('{d}/*.nii')")).await;
    assert_eq!(column(&b, 0)[0], 24.0);
}

/// An atlas at 2 mm and a run at 3 mm joined through the run's nearest atlas voxels (`grid_i, grid_j, grid_k` of
/// the option `grid`) equal nilearn's `NiftiLabelsMasker(atlas, resampling_target="data")`, the atlas covering
/// less than the run; filters on the grid columns keep the run's scan inside the atlas.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_grid_join_equals_nilearn_labels_masker() {
    let dir = tempfile::tempdir().unwrap();
    let want: Value = serde_json::from_str(&common::run_python(
        "tests/py/grid_oracle.py",
        &[dir.path()],
    ))
    .expect("JSON");
    let labels: Vec<i64> = want["labels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect();
    let signals = want["signals"].as_array().unwrap();
    let ctx = ctx();
    let d = dir.path().display();
    for ddl in [
        format!("CREATE EXTERNAL TABLE atlas STORED AS NIFTI LOCATION '{d}/atlas_2mm.nii'"),
        format!(
            "CREATE EXTERNAL TABLE run STORED AS NIFTI LOCATION '{d}/run_3mm.nii' OPTIONS ('grid' '{d}/atlas_2mm.nii')"
        ),
    ] {
        run(&ctx, &ddl).await;
    }
    let join = "SELECT r.t, a.value AS label, avg(r.value) FROM run r JOIN atlas a \
                ON a.i = r.grid_i AND a.j = r.grid_j AND a.k = r.grid_k WHERE a.value <> 0";
    let full_bytes = 22 * 20 * 14 * 5 * 2;
    for (extra, bounded) in [
        ("", false),
        (
            " AND r.grid_i IS NOT NULL AND r.grid_j IS NOT NULL AND r.grid_k BETWEEN 2 AND 13",
            true,
        ),
    ] {
        let sql = format!("{join}{extra} GROUP BY r.t, a.value ORDER BY r.t, label");
        let (b, bytes, _) = run(&ctx, &sql).await;
        let (t, label, mean) = (column(&b, 0), column(&b, 1), column(&b, 2));
        assert_eq!(t.len(), signals.len() * labels.len(), "{sql}");
        for ((t, label), mean) in t.iter().zip(&label).zip(&mean) {
            let col = labels
                .iter()
                .position(|&l| l as f64 == *label)
                .expect("a label nilearn has");
            let w = signals[*t as usize][col].as_f64().unwrap();
            assert!(
                (mean - w).abs() <= 1e-5 * w.abs().max(1.0),
                "t={t} label {label}: {mean} vs nilearn {w}"
            );
        }
        if bounded {
            assert!(
                bytes < full_bytes / 2 + 22 * 20 * 14 * 2,
                "read {bytes} of the run's {full_bytes} bytes"
            );
        }
    }
    // `count(grid_i)` alone is answered from the scan's statistics: the grid columns are NULL outside the atlas,
    // so their null count must not be claimed to be 0.
    let (counted, _, _) = run(&ctx, "SELECT count(grid_i) FROM run").await;
    let (inside, _, _) = run(
        &ctx,
        "SELECT sum(CASE WHEN grid_i IS NULL THEN 0 ELSE 1 END) FROM run",
    )
    .await;
    let (counted, inside) = (column(&counted, 0), column(&inside, 0));
    assert_eq!(counted, inside);
    assert!(
        inside[0] > 0.0 && inside[0] < (22 * 20 * 14 * 5) as f64,
        "{inside:?}"
    );
}

/// The bytes read by the scans of `plan` whose description mentions `file`.
fn bytes_of(
    plan: &std::sync::Arc<dyn datafusion::physical_plan::ExecutionPlan>,
    file: &str,
) -> usize {
    let line = datafusion::physical_plan::displayable(plan.as_ref())
        .one_line()
        .to_string();
    let own = if plan.children().is_empty() && line.contains(file) {
        plan.metrics()
            .and_then(|m| m.sum_by_name("bytes_read"))
            .map_or(0, |v| v.as_usize())
    } else {
        0
    };
    own + plan
        .children()
        .into_iter()
        .map(|c| bytes_of(c, file))
        .sum::<usize>()
}

/// A join on the grid columns with no filter of its own on the run: the hash join's run-time filter on
/// `grid_i, grid_j, grid_k` (the atlas's non-zero voxels) narrows the run's scan to the run voxels around the
/// atlas's non-zero box, through the grid map; the answer equals nilearn's. With dense joins on and off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_grid_join_reads_only_the_atlas_box_at_run_time() {
    let dir = tempfile::tempdir().unwrap();
    let want: Value = serde_json::from_str(&common::run_python(
        "tests/py/grid_oracle.py",
        &[dir.path()],
    ))
    .expect("JSON");
    let small = &want["small"];
    let labels: Vec<i64> = small["labels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect();
    let signals = small["signals"].as_array().unwrap();
    let box_bytes = small["box_bytes"].as_u64().unwrap() as usize;
    let full_bytes = 22 * 20 * 14 * 5 * 2;
    assert!(box_bytes * 10 < full_bytes, "the fixture's box is small");
    let d = dir.path().display();
    for dense in ["true", "false"] {
        let ctx = ctx();
        for ddl in [
            format!("SET voxelscan.dense_joins = {dense}"),
            format!(
                "CREATE EXTERNAL TABLE atlas STORED AS NIFTI LOCATION '{d}/atlas_small_2mm.nii'"
            ),
            format!(
                "CREATE EXTERNAL TABLE run STORED AS NIFTI LOCATION '{d}/run_3mm.nii' \
                 OPTIONS ('grid' '{d}/atlas_small_2mm.nii')"
            ),
        ] {
            run(&ctx, &ddl).await;
        }
        let sql = "SELECT r.t, a.value AS label, avg(r.value) FROM run r JOIN atlas a \
                   ON a.i = r.grid_i AND a.j = r.grid_j AND a.k = r.grid_k WHERE a.value <> 0 \
                   GROUP BY r.t, a.value ORDER BY r.t, label";
        let plan = common::sql::physical_plan(&ctx, sql).await;
        let b = datafusion::physical_plan::collect(plan.clone(), ctx.task_ctx())
            .await
            .unwrap();
        let (t, label, mean) = (column(&b, 0), column(&b, 1), column(&b, 2));
        assert_eq!(t.len(), signals.len() * labels.len(), "dense {dense}");
        for ((t, label), mean) in t.iter().zip(&label).zip(&mean) {
            let col = labels
                .iter()
                .position(|&l| l as f64 == *label)
                .expect("a label nilearn has");
            let w = signals[*t as usize][col].as_f64().unwrap();
            assert!(
                (mean - w).abs() <= 1e-5 * w.abs().max(1.0),
                "dense {dense}: t={t} label {label}: {mean} vs nilearn {w}"
            );
        }
        let read = bytes_of(&plan, "run_3mm");
        assert!(
            read > 0 && read <= box_bytes,
            "dense {dense}: the run's scan read {read} bytes; the box around the atlas is {box_bytes} of {full_bytes}\n{}",
            datafusion::physical_plan::displayable(plan.as_ref()).indent(true)
        );
    }
}

/// `voxel_to_mm` equals nibabel's `apply_affine` and `x, y, z`; `mm_to_voxel` takes each voxel centre back to its
/// voxel, a point 0.4 of the way to the next voxel on i to the nearer one, and a point one voxel before the grid to
/// NULL — for every oracle image (oblique, flipped, qform/sform, MGH, Analyze).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mm_functions_equal_nibabel() {
    let dir = tempfile::tempdir().unwrap();
    let images = oracle(dir.path());
    let ctx = ctx();
    for img in &images {
        let name = img["name"].as_str().unwrap();
        let p = dir.path().join(name).display().to_string();
        let ndim = img["shape"].as_array().unwrap().len();
        let (first, first_a, first_b) = if ndim > 3 {
            ("WHERE t = 0", "AND a.t = 0", "AND b.t = 0")
        } else {
            ("", "", "")
        };
        let sql = format!(
            "SELECT i, j, k, voxel_to_mm('{p}', i, j, k)['x'], voxel_to_mm('{p}', i, j, k)['y'], \
             voxel_to_mm('{p}', i, j, k)['z'], mm_to_voxel('{p}', x, y, z)['i'], \
             mm_to_voxel('{p}', x, y, z)['j'], mm_to_voxel('{p}', x, y, z)['k'] \
             FROM voxels('{p}') {first} ORDER BY i, j, k"
        );
        let (b, _, _) = run(&ctx, &sql).await;
        let want = img["xyz"].as_array().unwrap();
        let got: Vec<Vec<f64>> = (0..9).map(|c| column(&b, c)).collect();
        assert_eq!(got[0].len(), want.len(), "{name}: rows");
        for (n, w) in want.iter().enumerate() {
            for c in 0..3 {
                let w = w[c].as_f64().unwrap();
                assert!(
                    (got[3 + c][n] - w).abs() <= 1e-6,
                    "{name}: voxel {n}: voxel_to_mm axis {c}: {} vs nibabel {w}",
                    got[3 + c][n]
                );
                assert_eq!(
                    got[6 + c][n],
                    got[c][n],
                    "{name}: voxel {n}: mm_to_voxel axis {c}"
                );
            }
        }
        let near = format!(
            "SELECT a.i, a.j, a.k, mm_to_voxel('{p}', 0.6 * a.x + 0.4 * b.x, 0.6 * a.y + 0.4 * b.y, \
             0.6 * a.z + 0.4 * b.z) AS v, mm_to_voxel('{p}', 2 * a.x - b.x, 2 * a.y - b.y, 2 * a.z - b.z) AS before \
             FROM voxels('{p}') a JOIN voxels('{p}') b ON b.i = a.i + 1 AND b.j = a.j AND b.k = a.k {first_a} {first_b}"
        );
        let sql = format!(
            "SELECT count(*), sum(CASE WHEN v['i'] = i AND v['j'] = j AND v['k'] = k THEN 1 ELSE 0 END), \
             sum(CASE WHEN i = 0 THEN 1 ELSE 0 END), \
             sum(CASE WHEN i = 0 AND before IS NULL THEN 1 ELSE 0 END) FROM ({near})"
        );
        let (b, _, _) = run(&ctx, &sql).await;
        let counts: Vec<f64> = (0..4).map(|c| column(&b, c)[0]).collect();
        assert!(counts[0] > 0.0, "{name}: no neighbours");
        assert_eq!(counts[1], counts[0], "{name}: nearest voxels");
        assert_eq!(
            counts[3], counts[2],
            "{name}: points before the grid are NULL"
        );
    }
}

/// The CLI's `sql -t` and `CREATE EXTERNAL TABLE` give `x, y, z` without any option; `'world' 'false'` removes them.
#[test]
fn cli_tables_have_millimetres_by_default() {
    let dir = tempfile::tempdir().unwrap();
    let images = oracle(dir.path());
    let img = images
        .iter()
        .find(|i| i["name"].as_str().is_some_and(|n| n.ends_with(".nii")))
        .expect("a NIfTI image");
    let p = dir.path().join(img["name"].as_str().unwrap());
    let p = p.display();
    let bin = env!("CARGO_BIN_EXE_voxelscan");
    let sql = |args: &[&str]| {
        let out = std::process::Command::new(bin)
            .arg("sql")
            .args(args)
            .output()
            .expect("voxelscan runs");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let first = &img["xyz"][0];
    let t = format!("img={p}");
    let (code, out, err) = sql(&[
        "-t",
        &t,
        "SELECT i, j, k, x, y, z FROM img ORDER BY i, j, k LIMIT 1",
    ]);
    assert_eq!(code, Some(0), "{err}");
    for c in 0..3 {
        let w = first[c].as_f64().unwrap();
        let shown = format!("{w}");
        let digits = &shown[..shown.len().min(6)];
        assert!(out.contains(digits), "x/y/z {w} not in\n{out}");
    }
    let ddl = format!(
        "CREATE EXTERNAL TABLE a STORED AS NIFTI LOCATION '{p}'; SELECT count(x), min(world_space) FROM a"
    );
    let (code, out, err) = sql(&[&ddl]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains(img["space"].as_str().unwrap_or("unknown")),
        "{out}"
    );
    let ddl = format!(
        "CREATE EXTERNAL TABLE a STORED AS NIFTI LOCATION '{p}' OPTIONS ('world' 'false'); SELECT x FROM a"
    );
    let (code, _, err) = sql(&[&ddl]);
    assert_ne!(code, Some(0));
    assert!(err.contains('x'), "{err}");
}
