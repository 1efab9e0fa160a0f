//! Writing results back to images (issue 14): the tSNR map (`avg(value) / stddev(value)` per voxel) of a generated
//! 96×96×60×300 int16 BOLD written as `.nii.gz`, by the whole `voxelscan sql` process (`COPY … STORED AS NIFTI`)
//! against a whole Python process doing the same with numpy + nibabel (`nib.save`), in the same run: wall time
//! (best and median) and peak RSS of each process (`wait4`), and the two maps compared (max relative difference).
//!
//! `cargo bench --bench nifti_write` (release). `VOXELSCAN_BENCH_SMALL=1`: a 32×32×16×50 image; `VOXELSCAN_BENCH_RUNS`
//! (default 3). Under `cargo test --all-targets` (no `--bench` argument) it runs once on a tiny image as a check
//! of its own logic (the two maps must agree within 1e-6), printing nothing else.

mod common;

use common::{Measured, measure, python};

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use voxelscan::dtype::{DType, Scalar};
use voxelscan::synth::{random_i16_le, write_nifti1};

const SHAPE: [usize; 4] = [96, 96, 60, 300];
const SMALL: [usize; 4] = [32, 32, 16, 50];
const TINY: [usize; 4] = [6, 5, 4, 8];

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/nifti_write.py")
}

fn image(path: &Path, shape: [usize; 4]) {
    let n = shape.iter().product();
    let data = random_i16_le(n, 14, 0, 4000);
    write_nifti1(
        path,
        &shape,
        DType::native(Scalar::I16),
        1.0,
        0.0,
        &data,
        false,
    )
    .unwrap();
}

fn voxelscan(src: &Path, out: &Path) -> Measured {
    let _ = std::fs::remove_file(out);
    measure(Command::new(env!("CARGO_BIN_EXE_voxelscan")).args([
        "sql".to_string(),
        "-t".to_string(),
        format!("bold={}", src.display()),
        format!(
            "COPY (SELECT i, j, k, avg(value) / stddev(value) AS tsnr FROM bold GROUP BY i, j, k) TO '{}' STORED AS NIFTI",
            out.display()
        ),
    ]))
}

fn nibabel(src: &Path, out: &Path) -> Measured {
    let _ = std::fs::remove_file(out);
    measure(Command::new(python()).arg(script()).arg(src).arg(out))
}

fn compare(a: &Path, b: &Path) -> serde_json::Value {
    let m = measure(
        Command::new(python())
            .arg(script())
            .arg("--compare")
            .arg(a)
            .arg(b),
    );
    serde_json::from_str(&m.stdout).expect("compare JSON")
}

fn stats(times: &mut [Duration]) -> (f64, f64) {
    times.sort();
    (times[0].as_secs_f64(), times[times.len() / 2].as_secs_f64())
}

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let shape = match (bench, std::env::var_os("VOXELSCAN_BENCH_SMALL").is_some()) {
        (false, _) => TINY,
        (true, true) => SMALL,
        (true, false) => SHAPE,
    };
    let runs: usize = match bench {
        false => 1,
        true => std::env::var("VOXELSCAN_BENCH_RUNS")
            .ok()
            .and_then(|r| r.parse().ok())
            .unwrap_or(3),
    };
    let dir = std::env::temp_dir().join(format!(
        "voxelscan-bench-nifti-write-{}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let src = dir.join("bold.nii");
    image(&src, shape);
    let (ours, theirs) = (
        dir.join("tsnr_voxelscan.nii.gz"),
        dir.join("tsnr_nibabel.nii.gz"),
    );
    // A warm-up of each (page cache, Python imports), then alternating measured runs.
    voxelscan(&src, &ours);
    nibabel(&src, &theirs);
    let (mut vt, mut nt) = (Vec::new(), Vec::new());
    let (mut v_rss, mut n_rss) = (0u64, 0u64);
    let mut inner = String::new();
    for _ in 0..runs {
        let v = voxelscan(&src, &ours);
        vt.push(v.wall);
        v_rss = v_rss.max(v.peak_rss);
        let n = nibabel(&src, &theirs);
        nt.push(n.wall);
        n_rss = n_rss.max(n.peak_rss);
        inner = n.stdout;
    }
    let cmp = compare(&ours, &theirs);
    let max_rel = cmp["max_rel"].as_f64().unwrap_or(f64::INFINITY);
    assert!(
        max_rel <= 1e-6 && cmp["same_nonfinite"] == serde_json::Value::Bool(true),
        "the two tSNR maps differ: {cmp}"
    );
    let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    let sizes = (size(&ours), size(&theirs));
    let _ = std::fs::remove_dir_all(&dir);
    if !bench {
        return;
    }
    let (vb, vm) = stats(&mut vt);
    let (nb, nm) = stats(&mut nt);
    println!(
        "tSNR map of a {shape:?} int16 image written as .nii.gz, whole process, {runs} runs after a warm-up"
    );
    println!("| writer | best | median | peak RSS |");
    println!("|---|---:|---:|---:|");
    println!(
        "| voxelscan sql (COPY … STORED AS NIFTI) | {vb:.3} s | {vm:.3} s | {:.1} MiB |",
        v_rss as f64 / 1048576.0
    );
    println!(
        "| python: numpy + nib.save | {nb:.3} s | {nm:.3} s | {:.1} MiB |",
        n_rss as f64 / 1048576.0
    );
    println!("nibabel / voxelscan (best): {:.2}x", nb / vb);
    println!("python in-process split (last run): {inner}");
    println!(
        "maps agree: max relative difference {max_rel:e}; output sizes {} / {} bytes",
        sizes.0, sizes.1
    );
}
