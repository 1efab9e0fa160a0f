//! Issue 14 benchmark: `voxelscan view` of one axial section (`[:, :, 30, T]`) of the 96×96×60×300 int16 `.nii.gz`
//! (about 280 MB of random data, the image `benches/gzip_index.rs` generates) with a warm seek-point index, against
//! nilearn's `plot_anat` of the same section saved to PNG (`benches/nilearn_view.py`, through `.venv/bin/python` or
//! `VOXELSCAN_PYTHON`; it needs matplotlib, which the test venv does not have: `.venv/bin/pip install matplotlib`).
//!
//! Timed: in-process (open + read the section + draw + PNG encode; a new volume each time, so the decompressed-data
//! cache never helps, and the same volume again, which it does) and whole process (`voxelscan view …` started
//! and waited for; nilearn: `python nilearn_view.py --once`, imports included). Medians; a summary at the end.
//!
//! `cargo bench --bench view` (VOXELSCAN_BENCH_QUICK=1 for fewer repetitions).

mod common;

use common::{data_dir, ensure_bold_gz, python};

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use voxelscan::proxy::ProxyOptions;
use voxelscan::render::{Image, Request, ViewOptions, render};
use voxelscan::slicer::SliceSpec;

const SHAPE: [usize; 4] = [96, 96, 60, 300];
const K: usize = 30;
const FIRST_T: usize = 100;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn spec(t: usize) -> String {
    format!(":, :, {K}, {t}")
}

/// Open, read, draw and encode the section of volume `t`, in this process.
fn in_process(image_path: &Path, t: usize) -> Duration {
    let start = Instant::now();
    let image = Image::open(&image_path.to_string_lossy(), None, ProxyOptions::default())
        .expect("open bench image");
    let request = Request::Spec(SliceSpec::parse(&spec(t)).expect("spec"));
    let picture = render(&image, &request, &ViewOptions::default()).expect("render");
    let png = picture.canvas.to_png().expect("png");
    let took = start.elapsed();
    assert!(png.len() > 1000);
    took
}

/// `voxelscan view IMAGE ":, :, 30, T" -o OUT.png`, started and waited for.
fn whole_process(image_path: &Path, t: usize, out: &Path) -> Duration {
    let start = Instant::now();
    let status = Command::new(env!("CARGO_BIN_EXE_voxelscan"))
        .arg("view")
        .arg(image_path)
        .arg(spec(t))
        .arg("-o")
        .arg(out)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("start voxelscan");
    let took = start.elapsed();
    assert!(status.success(), "voxelscan view failed");
    took
}

/// nilearn's figures: (in-process median in seconds as the script reports it, whole-process wall time), or why not.
fn nilearn(image_path: &Path, out: &Path) -> Result<(f64, Duration, String), String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/nilearn_view.py");
    let py = python();
    let run = |extra: &[&str]| {
        Command::new(&py)
            .arg(&script)
            .arg(image_path)
            .arg(K.to_string())
            .arg(FIRST_T.to_string())
            .arg(out)
            .args(extra)
            .output()
            .map_err(|e| format!("{}: {e}", py.display()))
    };
    let output = run(&[])?;
    if !output.status.success() {
        return Err(String::from_utf8_lossy(&output.stderr).trim().to_string());
    }
    let json: serde_json::Value = serde_json::from_slice(&output.stdout)
        .map_err(|e| format!("nilearn_view.py output: {e}"))?;
    let inproc = json["plot_anat"].as_f64().ok_or("no plot_anat time")?;
    let versions = json["versions"].to_string();
    let mut walls = Vec::new();
    for _ in 0..3 {
        let start = Instant::now();
        let o = run(&["--once"])?;
        walls.push(start.elapsed());
        if !o.status.success() {
            return Err(String::from_utf8_lossy(&o.stderr).trim().to_string());
        }
    }
    Ok((inproc, median(walls), versions))
}

fn line(label: &str, took: Duration) {
    println!("  {label:<50}{took:>10.2?}");
}

fn main() {
    // `cargo bench` passes --bench; under `cargo test --all-targets` only check that it builds and starts (the
    // benchmark generates a 280 MB image).
    if !std::env::args().any(|a| a == "--bench") {
        println!("view benchmark: run with `cargo bench --bench view`");
        return;
    }
    let quick = std::env::var_os("VOXELSCAN_BENCH_QUICK").is_some();
    let reps = if quick { 5 } else { 21 };
    let dir = data_dir();
    let image = ensure_bold_gz(&dir, &SHAPE);
    eprintln!("warming the seek-point index of {}", image.display());
    let status = Command::new(env!("CARGO_BIN_EXE_voxelscan"))
        .arg("index")
        .arg(&image)
        .status()
        .expect("start voxelscan index");
    assert!(status.success(), "voxelscan index failed");
    let out = dir.join("view-bench.png");

    let fresh = median((0..reps).map(|n| in_process(&image, FIRST_T + n)).collect());
    let repeated = {
        in_process(&image, FIRST_T);
        median((0..reps).map(|_| in_process(&image, FIRST_T)).collect())
    };
    let process = median(
        (0..reps)
            .map(|n| whole_process(&image, FIRST_T + 50 + n, &out))
            .collect(),
    );
    let size = std::fs::metadata(&image).map(|m| m.len()).unwrap_or(0);
    println!(
        "view benchmark: axial section [:, :, {K}, T] of {} ({:.0} MB .nii.gz, warm index), medians of {reps}",
        image.display(),
        size as f64 / 1e6
    );
    line("voxelscan in-process, a new volume each time", fresh);
    line("voxelscan in-process, the same volume again", repeated);
    line("voxelscan view, whole process", process);
    match nilearn(&image, &dir.join("view-bench-nilearn.png")) {
        Ok((inproc, wall, versions)) => {
            let inproc = Duration::from_secs_f64(inproc);
            line("nilearn plot_anat, in-process (load, plot, save)", inproc);
            line("nilearn plot_anat, whole process (with imports)", wall);
            println!(
                "  ratios: in-process {:.0}x, whole process {:.0}x  ({versions})",
                inproc.as_secs_f64() / fresh.as_secs_f64(),
                wall.as_secs_f64() / process.as_secs_f64()
            );
        }
        Err(why) => println!("  nilearn side skipped: {why}"),
    }
}
