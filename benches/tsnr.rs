//! Dense group-bys (issue 12 item 3) and in-scan aggregates (issue 17): the per-voxel tSNR map (`GROUP BY i, j, k`,
//! 553 K groups over 166 M rows), the mean of every volume (`GROUP BY t`) and the mean of the whole run
//! (`avg(value)`) of the generated 96×96×60×300 int16 BOLD (`synth::bench_image`), by the
//! whole `voxelscan sql` process against a whole Python process doing the same with numpy on
//! `np.asarray(img.dataobj)` (`benches/tsnr_numpy.py`), in the same run: wall time (median and best) and peak RSS of
//! each process (`wait4`), the answers compared through a checksum (the sum of the map). On `.nii` with the
//! aggregate computed in the scan (the default), with only the dense aggregate (`SET voxelscan.scan_aggregates =
//! false`) and with DataFusion's hash aggregate (both off), and on `.nii.gz` with a warm index.
//!
//! `cargo bench --bench tsnr` (release). `VOXELSCAN_BENCH_RUNS` (default 3). Under `cargo test --all-targets` (no
//! `--bench` argument) it runs once on a tiny image as a check of its own logic (answers must agree).

mod common;

use common::{Measured, data_dir, measure, python};

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use voxelscan::synth;

const SHAPE: [usize; 4] = [96, 96, 60, 300];
const TINY: [usize; 4] = [6, 5, 4, 8];

/// (name, numpy case, SQL over table `bold` returning `n, s`: the number of groups and the sum of the results).
const CASES: [(&str, &str, &str); 3] = [
    (
        "mean of the run (no keys)",
        "mean",
        "SELECT count(*) AS n, sum(m) AS s FROM (SELECT avg(value) AS m FROM bold)",
    ),
    (
        "tSNR map (GROUP BY i, j, k)",
        "tsnr",
        "SELECT count(*) AS n, sum(tsnr) AS s FROM \
         (SELECT i, j, k, avg(value) / stddev(value) AS tsnr FROM bold GROUP BY i, j, k)",
    ),
    (
        "mean per volume (GROUP BY t)",
        "mean_t",
        "SELECT count(*) AS n, sum(m) AS s FROM (SELECT t, avg(value) AS m FROM bold GROUP BY t)",
    ),
];

/// The plan paths measured: a label and the settings that choose it.
const PATHS: [(&str, &str); 3] = [
    ("scan aggregate", ""),
    (
        "dense (scan off)",
        "SET voxelscan.scan_aggregates = false; ",
    ),
    (
        "hash (both off)",
        "SET voxelscan.scan_aggregates = false; SET voxelscan.dense_aggregates = false; ",
    ),
];

fn voxelscan(image: &Path, sql: &str, settings: &str) -> (Measured, u64, f64) {
    let statements = format!("{settings}{sql}");
    let m = measure(Command::new(env!("CARGO_BIN_EXE_voxelscan")).args([
        "sql".to_string(),
        "--format".to_string(),
        "csv".to_string(),
        "-t".to_string(),
        format!("bold={}", image.display()),
        statements,
    ]));
    // The last line is the answer `n,s` (a SET prints nothing in CSV but may print an empty result).
    let line = m
        .stdout
        .lines()
        .rev()
        .find(|l| l.contains(',') && !l.starts_with('n'))
        .unwrap_or_else(|| panic!("no answer in {:?}", m.stdout))
        .to_string();
    let (n, s) = line.split_once(',').expect("n,s");
    let (n, s) = (n.parse().expect("n"), s.parse().expect("s"));
    (m, n, s)
}

fn numpy(image: &Path, case: &str) -> (Measured, u64, f64) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/tsnr_numpy.py");
    let m = measure(Command::new(python()).arg(script).arg(image).arg(case));
    let v: serde_json::Value = serde_json::from_str(m.stdout.trim()).expect("numpy JSON");
    let n = v["rows"].as_u64().expect("rows");
    let s = v["checksum"].as_f64().expect("checksum");
    (m, n, s)
}

fn agree(what: &str, a: (u64, f64), b: (u64, f64)) {
    assert_eq!(a.0, b.0, "{what}: group counts differ");
    assert!(
        (a.1 - b.1).abs() <= 1e-9 * a.1.abs().max(b.1.abs()).max(1.0),
        "{what}: checksums differ: {} vs {}",
        a.1,
        b.1
    );
}

fn median(mut v: Vec<Duration>) -> (f64, f64) {
    v.sort();
    (v[v.len() / 2].as_secs_f64(), v[0].as_secs_f64())
}

fn mib(b: u64) -> f64 {
    b as f64 / (1u64 << 20) as f64
}

/// One row of the table: voxelscan (on one plan path) against numpy on `image`, `runs` times each.
fn row(label: &str, image: &Path, case: (&str, &str, &str), path: (&str, &str), runs: usize) {
    let (mode, settings) = path;
    let (name, np_case, sql) = case;
    let (mut vt, mut nt) = (Vec::new(), Vec::new());
    let (mut vr, mut nr) = (0, 0);
    for _ in 0..runs {
        let (m, n, s) = voxelscan(image, sql, settings);
        let (p, pn, ps) = numpy(image, np_case);
        agree(name, (n, s), (pn, ps));
        vt.push(m.wall);
        nt.push(p.wall);
        vr = vr.max(m.peak_rss);
        nr = nr.max(p.peak_rss);
    }
    let (v_med, v_best) = median(vt);
    let (n_med, n_best) = median(nt);
    println!(
        "| {name} | {label} | {mode} | {v_med:.2} ({v_best:.2}) | {:.0} | {n_med:.2} ({n_best:.2}) | {:.0} | {:.2}× |",
        mib(vr),
        mib(nr),
        v_med / n_med
    );
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        // A check of the bench's own logic on a tiny image: both sides must give the same answers.
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("tiny.nii");
        synth::bench_image(&path, &TINY, 1.0, 0.0, false).expect("tiny image");
        for (name, np_case, sql) in CASES {
            let (_, pn, ps) = numpy(&path, np_case);
            for (_, settings) in PATHS {
                let (_, n, s) = voxelscan(&path, sql, settings);
                agree(name, (n, s), (pn, ps));
            }
        }
        return;
    }
    let runs = std::env::var("VOXELSCAN_BENCH_RUNS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(3usize)
        .max(1);
    let dir = data_dir();
    let nii = dir.join("bold.nii");
    let gz = dir.join("bold.nii.gz");
    synth::bench_image(&nii, &SHAPE, 1.0, 0.0, false).expect("write bench image");
    synth::bench_image(&gz, &SHAPE, 1.0, 0.0, true).expect("write bench image");
    // Warm the gzip index (built once, then loaded by every later process).
    measure(Command::new(env!("CARGO_BIN_EXE_voxelscan")).args(["index".as_ref(), gz.as_os_str()]));
    println!(
        "{SHAPE:?} int16, {runs} runs each, whole processes; times in s: median (best); peak RSS in MiB"
    );
    println!(
        "| query | file | voxelscan path | voxelscan s | voxelscan RSS | numpy s | numpy RSS | voxelscan / numpy |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    // `VOXELSCAN_BENCH_PATHS=1` measures the default path only (the hash aggregate takes minutes).
    let paths = std::env::var("VOXELSCAN_BENCH_PATHS")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(PATHS.len())
        .clamp(1, PATHS.len());
    for case in CASES {
        for path in &PATHS[..paths] {
            row(".nii", &nii, case, *path, runs);
        }
        row(".nii.gz, warm index", &gz, case, PATHS[0], runs);
    }
}
