//! Slicing benchmark of issue 2: voxelscan's proxy vs nibabel (in-process, measured in the same run by
//! `benches/nibabel_slicing.py` when the repo's `.venv` exists), warm page cache, medians of repeated runs.
//!
//! `cargo bench --bench slicing` (set VOXELSCAN_BENCH_QUICK=1 for fewer repetitions).

mod common;

use common::{data_dir, slicing_images};

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use voxelscan::proxy::{ArrayProxy, ProxyOptions};
use voxelscan::slicer::SliceSpec;

struct Case {
    file: &'static str,
    label: &'static str,
    spec: &'static str,
}

const CASES: &[Case] = &[
    Case {
        file: "t1",
        label: "axial [:, :, 88]",
        spec: ":, :, 88",
    },
    Case {
        file: "t1",
        label: "sagittal [128]",
        spec: "128",
    },
    Case {
        file: "t1",
        label: "coronal [:, 128]",
        spec: ":, 128",
    },
    Case {
        file: "t1",
        label: "full scaled to_array()",
        spec: "",
    },
    Case {
        file: "bold",
        label: "one volume [..., 150]",
        spec: "..., 150",
    },
    Case {
        file: "bold",
        label: "time series [48, 48, 30, :]",
        spec: "48, 48, 30, :",
    },
];

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn time_it(reps: usize, mut f: impl FnMut()) -> Duration {
    f(); // warm
    median(
        (0..reps)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed()
            })
            .collect(),
    )
}

fn nibabel_times(files: &[(String, PathBuf)], quick: bool) -> Option<serde_json::Value> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let py = std::env::var("VOXELSCAN_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root.join(".venv/bin/python"));
    if !py.exists() {
        eprintln!(
            "(no {}: nibabel column skipped; run .ci/run once to create the venv)",
            py.display()
        );
        return None;
    }
    let mut cmd = Command::new(py);
    cmd.arg(root.join("benches/nibabel_slicing.py"));
    if quick {
        cmd.arg("--quick");
    }
    for (name, path) in files {
        cmd.arg(format!("{name}={}", path.display()));
    }
    let out = cmd.output().ok()?;
    if !out.status.success() {
        eprintln!(
            "nibabel timing failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        return None;
    }
    serde_json::from_slice(&out.stdout).ok()
}

fn main() {
    // `cargo bench` passes --bench; under `cargo test --all-targets` only check that it builds and starts.
    if !std::env::args().any(|a| a == "--bench") {
        println!("slicing benchmark: run with `cargo bench --bench slicing`");
        return;
    }
    let quick = std::env::var("VOXELSCAN_BENCH_QUICK").is_ok();
    let dir = data_dir();
    let files = slicing_images(&dir);
    let nib = nibabel_times(&files, quick);
    println!("| image | slice | voxelscan | nibabel | nibabel / voxelscan |");
    println!("|---|---|---:|---:|---:|");
    for (name, path) in &files {
        let proxy = ArrayProxy::open(path, ProxyOptions::default()).expect("open bench image");
        let gz = name.ends_with(".gz");
        for case in CASES
            .iter()
            .filter(|c| name.trim_end_matches(".gz") == c.file)
        {
            if gz && case.spec.is_empty() && case.file == "bold" {
                continue;
            }
            let spec = SliceSpec::parse(case.spec).expect("bench spec");
            let reps = match (gz, quick) {
                (true, _) => 3,
                (false, true) => 5,
                (false, false) => 25,
            };
            let t = time_it(reps, || {
                std::hint::black_box(proxy.slice(&spec).expect("slice"));
            });
            let nib_t = nib
                .as_ref()
                .and_then(|j| j.get(name.as_str()))
                .and_then(|j| j.get(case.spec))
                .and_then(|v| v.as_f64());
            let ours = t.as_secs_f64() * 1e3;
            match nib_t {
                Some(n) => println!(
                    "| {name} | {} | {ours:.3} ms | {:.3} ms | {:.1}× |",
                    case.label,
                    n * 1e3,
                    n * 1e3 / ours
                ),
                None => println!("| {name} | {} | {ours:.3} ms | – | – |", case.label),
            }
        }
    }
    memcpy_anchor(&dir);
}

/// The "plain memory copy of the same bytes" anchor for the full T1 read (unscaled bytes and scaled f64 output).
fn memcpy_anchor(dir: &Path) {
    let path = dir.join("t1.nii");
    let proxy = ArrayProxy::open(&path, ProxyOptions::default()).expect("open t1");
    let bytes = proxy.byte_len().expect("len") as usize;
    let src = vec![1u8; bytes];
    let mut dst = vec![0u8; bytes];
    let copy = time_it(25, || {
        dst.copy_from_slice(std::hint::black_box(&src));
        std::hint::black_box(&dst);
    });
    let src8 = vec![1u8; bytes * 4];
    let mut dst8 = vec![0u8; bytes * 4];
    let copy8 = time_it(25, || {
        dst8.copy_from_slice(std::hint::black_box(&src8));
        std::hint::black_box(&dst8);
    });
    let unscaled = time_it(25, || {
        std::hint::black_box(proxy.get_unscaled().expect("read"));
    });
    let scaled = time_it(25, || {
        std::hint::black_box(proxy.to_array().expect("read"));
    });
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!();
    println!("| full T1 read | time | ratio to memcpy of the same bytes |");
    println!("|---|---:|---:|");
    println!(
        "| memcpy {} MB (int16 bytes) | {:.3} ms | 1.0× |",
        bytes / 1_000_000,
        ms(copy)
    );
    println!(
        "| get_unscaled() → int16 | {:.3} ms | {:.2}× |",
        ms(unscaled),
        ms(unscaled) / ms(copy)
    );
    println!(
        "| memcpy {} MB (float64 bytes) | {:.3} ms | 1.0× |",
        bytes * 4 / 1_000_000,
        ms(copy8)
    );
    println!(
        "| to_array() → scaled float64 | {:.3} ms | {:.2}× of the f64 memcpy |",
        ms(scaled),
        ms(scaled) / ms(copy8)
    );
}
