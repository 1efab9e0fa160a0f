//! Atlas joins (issue 12, "Measured"): the mean of every region of a generated 100-region int16 atlas at every time
//! point of the 96×96×60×300 int16 BOLD (`synth::bench_image`), and the same for one region, by the whole
//! `voxelscan sql` process against nilearn (`NiftiLabelsMasker(atlas, strategy="mean")`) and a numpy expert route
//! (`np.asarray(dataobj)`, voxels sorted by label, `np.add.reduceat`) as whole Python processes
//! (`benches/atlas_python.py`), in the same run. Printed: wall time of each process (median and best), the
//! in-process time the Python script measures (load + compute, imports excluded), peak RSS of each process
//! (`wait4`), the ratios the issue sets targets for, and for one region the bytes voxelscan read from the BOLD
//! (`EXPLAIN ANALYZE`) against the region's bounding box. Answers are compared through a checksum (the sum of all
//! means) and the number of (label, t) rows. On `.nii` and on `.nii.gz` with a warm index; on `.nii` also with
//! voxelscan's dense paths off.
//!
//! `cargo bench --features ballista --bench atlas` (release). `VOXELSCAN_BENCH_RUNS` (default 3);
//! `VOXELSCAN_BENCH_QUICK=1`: a 48×48×30×60 image, one run. Under `cargo test --all-targets` (no `--bench`
//! argument) it runs once on a tiny image as a check of its own logic (answers must agree).

mod common;

use common::{Measured, data_dir, measure, python};

use std::path::Path;
use std::process::Command;

use voxelscan::synth;

const SHAPE: [usize; 4] = [96, 96, 60, 300];
const QUICK: [usize; 4] = [48, 48, 30, 60];
const TINY: [usize; 4] = [12, 10, 8, 5];
const REGIONS: usize = 100;
/// The region of the one-region query.
const ONE: i16 = 7;

const ALL_SQL: &str = "SELECT count(*) AS n, sum(mean) AS s FROM (\
     SELECT a.value AS label, b.t, avg(b.value) AS mean \
     FROM bold b JOIN atlas a ON b.i = a.i AND b.j = a.j AND b.k = a.k \
     WHERE a.value > 0 GROUP BY a.value, b.t)";

fn one_sql() -> String {
    format!(
        "SELECT count(*) AS n, sum(mean) AS s FROM (\
         SELECT b.t, avg(b.value) AS mean \
         FROM bold b JOIN atlas a ON b.i = a.i AND b.j = a.j AND b.k = a.k \
         WHERE a.value = {ONE} GROUP BY b.t)"
    )
}

/// A 100-region atlas on the first three axes of `shape`: inside an ellipsoid filling the grid, each voxel takes the
/// label (1..=100) of the nearest of 100 reproducible random seed points; outside it, 0. Regions of a few thousand
/// voxels of irregular shape, like a parcellation's.
fn write_atlas(path: &Path, shape: &[usize]) -> Vec<i16> {
    let [ni, nj, nk] = [shape[0], shape[1], shape[2]];
    let centre = [ni as f64 / 2.0, nj as f64 / 2.0, nk as f64 / 2.0];
    let inside = |p: [f64; 3]| {
        (0..3)
            .map(|a| ((p[a] - centre[a]) / (centre[a] * 0.95)).powi(2))
            .sum::<f64>()
            <= 1.0
    };
    let bytes = synth::random_i16_le(3 * REGIONS * 64, 7, 0, 10_000);
    let mut random = bytes
        .chunks_exact(2)
        .map(|b| f64::from(i16::from_le_bytes([b[0], b[1]])) / 10_000.0);
    let mut seeds = Vec::with_capacity(REGIONS);
    while seeds.len() < REGIONS {
        let Some(u) = random.next() else { break };
        let (v, w) = (random.next().unwrap_or(0.5), random.next().unwrap_or(0.5));
        let p = [u * ni as f64, v * nj as f64, w * nk as f64];
        if inside(p) {
            seeds.push(p);
        }
    }
    assert_eq!(seeds.len(), REGIONS, "not enough seed points");
    let mut labels = vec![0i16; ni * nj * nk];
    for k in 0..nk {
        for j in 0..nj {
            for i in 0..ni {
                let p = [i as f64, j as f64, k as f64];
                if !inside(p) {
                    continue;
                }
                let d2 = |s: &[f64; 3]| (0..3).map(|a| (s[a] - p[a]).powi(2)).sum::<f64>();
                let nearest = (0..REGIONS)
                    .min_by(|&a, &b| d2(&seeds[a]).total_cmp(&d2(&seeds[b])))
                    .unwrap_or(0);
                labels[i + ni * (j + nj * k)] = nearest as i16 + 1;
            }
        }
    }
    let data: Vec<u8> = labels.iter().flat_map(|v| v.to_le_bytes()).collect();
    synth::write_i16_nifti1(path, &shape[..3], &data).expect("write atlas");
    labels
}

/// Bytes of the BOLD inside the bounding box of `label`'s voxels (all time points).
fn bounding_box_bytes(labels: &[i16], shape: &[usize], label: i16) -> u64 {
    let [ni, nj] = [shape[0], shape[1]];
    let (mut lo, mut hi) = ([usize::MAX; 3], [0usize; 3]);
    for (n, _) in labels.iter().enumerate().filter(|(_, v)| **v == label) {
        let ijk = [n % ni, (n / ni) % nj, n / (ni * nj)];
        for a in 0..3 {
            lo[a] = lo[a].min(ijk[a]);
            hi[a] = hi[a].max(ijk[a]);
        }
    }
    (0..3).map(|a| (hi[a] + 1 - lo[a]) as u64).product::<u64>() * shape[3] as u64 * 2
}

fn voxelscan_cmd(bold: &Path, atlas: &Path, statements: String) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_voxelscan"));
    c.args([
        "sql".to_string(),
        "--format".to_string(),
        "csv".to_string(),
        "-t".to_string(),
        format!("bold={}", bold.display()),
        "-t".to_string(),
        format!("atlas={}", atlas.display()),
        statements,
    ]);
    c
}

/// voxelscan's dense join and aggregate off: DataFusion's hash join and hash aggregate.
const DENSE_OFF: (&str, &str) = (
    "voxelscan, dense paths off",
    "SET voxelscan.dense_joins = false; SET voxelscan.dense_aggregates = false; ",
);
/// The join's key list not pushed to the scan (only its key bounds): the scan reads the atlas's bounding box.
const NO_KEY_LIST: (&str, &str) = (
    "voxelscan, no key list pushed to the scan",
    "SET datafusion.optimizer.hash_join_inlist_pushdown_max_distinct_values = 0; ",
);

/// The answer `n,s` of the last line of a CSV result (n: rows, s: sum of the means; an empty sum is 0).
fn answer(stdout: &str) -> (u64, f64) {
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.contains(',') && !l.starts_with('n'))
        .unwrap_or_else(|| panic!("no answer in {stdout:?}"));
    let (n, s) = line.split_once(',').expect("n,s");
    (n.parse().expect("n"), s.parse().unwrap_or(0.0))
}

fn voxelscan(bold: &Path, atlas: &Path, sql: &str, settings: &str) -> (Measured, u64, f64) {
    let m = measure(&mut voxelscan_cmd(bold, atlas, format!("{settings}{sql}")));
    let (n, s) = answer(&m.stdout);
    (m, n, s)
}

/// Bytes the BOLD scan read for `sql`, from `EXPLAIN ANALYZE` (the `bytes_read` of the scan naming the BOLD file).
fn bold_bytes_read(bold: &Path, atlas: &Path, sql: &str) -> u64 {
    let m = measure(&mut voxelscan_cmd(
        bold,
        atlas,
        format!("EXPLAIN ANALYZE {sql}"),
    ));
    let name = bold
        .file_name()
        .and_then(|n| n.to_str())
        .expect("bold name");
    m.stdout
        .lines()
        .filter(|l| l.contains("DataSourceExec") && l.contains(name))
        .filter_map(|l| count(&l[l.find("bytes_read=")? + "bytes_read=".len()..]))
        .sum()
}

/// A count as DataFusion's metrics print it: `1234`, `138.2 K`, `1.01 B` (four significant digits at most).
fn count(text: &str) -> Option<u64> {
    let end = text.find([',', ']']).unwrap_or(text.len());
    let (number, unit) = match text[..end].trim().split_once(' ') {
        Some((n, u)) => (n, u),
        None => (text[..end].trim(), ""),
    };
    let scale = match unit {
        "" => 1e0,
        "K" => 1e3,
        "M" => 1e6,
        "B" => 1e9,
        "T" => 1e12,
        _ => return None,
    };
    Some((number.parse::<f64>().ok()? * scale).round() as u64)
}

/// `(process, in-process seconds, rows, checksum)` of a Python route.
fn python_route(bold: &Path, atlas: &Path, route: &str, which: &str) -> (Measured, f64, u64, f64) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/atlas_python.py");
    let m = measure(
        Command::new(python())
            .arg(script)
            .arg(bold)
            .arg(atlas)
            .arg(route)
            .arg(which),
    );
    let v: serde_json::Value = serde_json::from_str(m.stdout.trim()).expect("python JSON");
    let secs = v["seconds"].as_f64().expect("seconds");
    let n = v["rows"].as_u64().expect("rows");
    let s = v["checksum"].as_f64().expect("checksum");
    (m, secs, n, s)
}

fn agree(what: &str, a: (u64, f64), b: (u64, f64)) {
    assert_eq!(a.0, b.0, "{what}: row counts differ");
    assert!(
        (a.1 - b.1).abs() <= 1e-7 * a.1.abs().max(b.1.abs()).max(1.0),
        "{what}: checksums differ: {} vs {}",
        a.1,
        b.1
    );
}

fn median(mut v: Vec<f64>) -> (f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2], v[0])
}

fn mib(b: u64) -> f64 {
    b as f64 / (1u64 << 20) as f64
}

/// Times of one route over the runs: whole-process wall (median, best), in-process seconds (median), peak RSS.
#[derive(Default)]
struct Times {
    wall: Vec<f64>,
    inner: Vec<f64>,
    rss: u64,
}

impl Times {
    fn add(&mut self, m: &Measured, inner: Option<f64>) {
        self.wall.push(m.wall.as_secs_f64());
        self.inner.extend(inner);
        self.rss = self.rss.max(m.peak_rss);
    }

    fn cell(&self) -> String {
        let (med, best) = median(self.wall.clone());
        match self.inner.is_empty() {
            true => format!("{med:.2} ({best:.2})"),
            false => format!(
                "{med:.2} ({best:.2}); in process {:.2}",
                median(self.inner.clone()).0
            ),
        }
    }

    fn wall(&self) -> f64 {
        median(self.wall.clone()).0
    }

    fn inner(&self) -> f64 {
        median(self.inner.clone()).0
    }
}

/// All regions on `bold`: voxelscan (as it is, and under each of `variants`' settings), nilearn and numpy; one table
/// row each. Returns nilearn's in-process time, the yardstick of the one-region target.
fn all_regions(
    label: &str,
    bold: &Path,
    atlas: &Path,
    runs: usize,
    variants: &[(&str, &str)],
) -> f64 {
    let (mut vs, mut nl, mut np) = (Times::default(), Times::default(), Times::default());
    let mut vv: Vec<Times> = variants.iter().map(|_| Times::default()).collect();
    for _ in 0..runs {
        let (m, n, s) = voxelscan(bold, atlas, ALL_SQL, "");
        vs.add(&m, None);
        let (p, secs, pn, ps) = python_route(bold, atlas, "nilearn", "all");
        agree("all regions: voxelscan vs nilearn", (n, s), (pn, ps));
        nl.add(&p, Some(secs));
        let (p, secs, pn, ps) = python_route(bold, atlas, "numpy", "all");
        agree("all regions: voxelscan vs numpy", (n, s), (pn, ps));
        np.add(&p, Some(secs));
        for ((name, settings), t) in variants.iter().zip(&mut vv) {
            let (m, vn, vs) = voxelscan(bold, atlas, ALL_SQL, settings);
            agree(name, (n, s), (vn, vs));
            t.add(&m, None);
        }
    }
    println!(
        "| all regions, mean | {label} | voxelscan | {} | {:.0} | {:.3}× nilearn in process (≤ 0.25), {:.2}× numpy \
         in process (≤ 1.0) |",
        vs.cell(),
        mib(vs.rss),
        vs.wall() / nl.inner(),
        vs.wall() / np.inner()
    );
    for ((name, _), t) in variants.iter().zip(&vv) {
        println!(
            "| all regions, mean | {label} | {name} | {} | {:.0} | {:.3}× nilearn in process, {:.2}× numpy |",
            t.cell(),
            mib(t.rss),
            t.wall() / nl.inner(),
            t.wall() / np.inner()
        );
    }
    for (route, t) in [("nilearn", &nl), ("numpy", &np)] {
        println!(
            "| all regions, mean | {label} | {route} | {} | {:.0} | |",
            t.cell(),
            mib(t.rss)
        );
    }
    nl.inner()
}

/// One region on `bold`: voxelscan against numpy (bounding box read by nibabel's proxy), and the bytes read.
fn one_region(label: &str, bold: &Path, atlas: &Path, runs: usize, box_bytes: u64, nilearn: f64) {
    let sql = one_sql();
    let (mut vs, mut np) = (Times::default(), Times::default());
    for _ in 0..runs {
        let (m, n, s) = voxelscan(bold, atlas, &sql, "");
        vs.add(&m, None);
        let (p, secs, _, ps) = python_route(bold, atlas, "numpy", &ONE.to_string());
        // voxelscan gives one row per t (n of them); numpy one series of the same length.
        agree("one region: voxelscan vs numpy", (n, s), (n, ps));
        np.add(&p, Some(secs));
    }
    let read = bold_bytes_read(bold, atlas, &sql);
    println!(
        "| region {ONE}, mean | {label} | voxelscan | {} | {:.0} | {:.4}× nilearn's all regions in process (≤ 0.02); \
         read {:.2} MB, bounding box {:.2} MB |",
        vs.cell(),
        mib(vs.rss),
        vs.wall() / nilearn,
        read as f64 / 1e6,
        box_bytes as f64 / 1e6
    );
    println!(
        "| region {ONE}, mean | {label} | numpy (bounding box) | {} | {:.0} | |",
        np.cell(),
        mib(np.rss)
    );
}

fn env_flag(name: &str) -> bool {
    std::env::var_os(name).is_some_and(|v| !v.is_empty() && v != "0")
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        // A check of the bench's own logic on a tiny image: every route must give the same answers.
        let dir = tempfile::tempdir().expect("temp dir");
        let bold = dir.path().join("bold.nii");
        let atlas = dir.path().join("atlas.nii");
        synth::bench_image(&bold, &TINY, 1.0, 0.0, false).expect("tiny image");
        write_atlas(&atlas, &TINY);
        let (_, n, s) = voxelscan(&bold, &atlas, ALL_SQL, "");
        for (name, settings) in [DENSE_OFF, NO_KEY_LIST] {
            let (_, vn, vs) = voxelscan(&bold, &atlas, ALL_SQL, settings);
            agree(name, (n, s), (vn, vs));
        }
        for route in ["nilearn", "numpy"] {
            let (_, _, pn, ps) = python_route(&bold, &atlas, route, "all");
            agree(route, (n, s), (pn, ps));
        }
        let (_, n, s) = voxelscan(&bold, &atlas, &one_sql(), "");
        let (_, _, _, ps) = python_route(&bold, &atlas, "numpy", &ONE.to_string());
        agree("one region", (n, s), (n, ps));
        assert!(bold_bytes_read(&bold, &atlas, &one_sql()) > 0);
        return;
    }
    let quick = env_flag("VOXELSCAN_BENCH_QUICK");
    let shape = if quick { QUICK } else { SHAPE };
    let runs = match quick {
        true => 1,
        false => std::env::var("VOXELSCAN_BENCH_RUNS")
            .ok()
            .and_then(|r| r.parse().ok())
            .unwrap_or(3usize)
            .max(1),
    };
    let dir = data_dir();
    let stem = if quick { "atlas-quick-" } else { "" };
    let nii = dir.join(format!("{stem}bold.nii"));
    let gz = dir.join(format!("{stem}bold.nii.gz"));
    let atlas = dir.join(format!("{stem}atlas100.nii"));
    synth::bench_image(&nii, &shape, 1.0, 0.0, false).expect("write bench image");
    synth::bench_image(&gz, &shape, 1.0, 0.0, true).expect("write bench image");
    let labels = write_atlas(&atlas, &shape);
    let box_bytes = bounding_box_bytes(&labels, &shape, ONE);
    // Warm the gzip index (built once, then loaded by every later process).
    measure(Command::new(env!("CARGO_BIN_EXE_voxelscan")).args(["index".as_ref(), gz.as_os_str()]));
    println!(
        "{shape:?} int16 + a {REGIONS}-region int16 atlas ({} labelled voxels), {runs} runs each; whole-process \
         wall s: median (best); Python's in-process s (load + compute, median); peak RSS MiB; ratios are \
         voxelscan's whole process against Python's in-process figure",
        labels.iter().filter(|&&v| v > 0).count()
    );
    println!("| query | file | route | s | peak RSS MiB | against the targets |");
    println!("|---|---|---|---|---:|---|");
    let nilearn = all_regions(".nii", &nii, &atlas, runs, &[DENSE_OFF, NO_KEY_LIST]);
    one_region(".nii", &nii, &atlas, runs, box_bytes, nilearn);
    let nilearn = all_regions(".nii.gz, warm index", &gz, &atlas, runs, &[NO_KEY_LIST]);
    one_region(".nii.gz, warm index", &gz, &atlas, runs, box_bytes, nilearn);
}
