//! Issue 15's Python measurement: `voxelscan.load(p).dataobj[...]` against `nibabel.load(p).dataobj[...]` in one
//! Python process, on the slicing bench's images (generated here by the same generator), plus nilearn's
//! `NiftiLabelsMasker` through both loaders. The timing is `benches/python_proxy.py`'s; this target makes the images
//! and runs it with the venv's Python (`VOXELSCAN_PYTHON`, else `.venv/bin/python`), so the figures are those of the
//! wheel installed there (README "Python": build it in release).
//!
//! `cargo bench --bench python` (`VOXELSCAN_BENCH_QUICK=1` for fewer repetitions;
//! `VOXELSCAN_BENCH_JSON=FILE` keeps the JSON). nibabel with indexed_gzip is timed when `indexed_gzip` is importable
//! (`pip install --target DIR indexed_gzip`, then `PYTHONPATH=DIR`: the project's venv stays without it).

mod common;

use std::path::Path;
use std::process::Command;

use common::{data_dir, python, slicing_images};

fn main() {
    // `cargo bench` passes --bench; under `cargo test --all-targets` only check that it builds and starts.
    if !std::env::args().any(|a| a == "--bench") {
        println!("python benchmark: run with `cargo bench --bench python`");
        return;
    }
    let py = python();
    let importable = Command::new(&py)
        .args(["-c", "import voxelscan, nibabel, nilearn"])
        .status()
        .is_ok_and(|s| s.success());
    if !importable {
        eprintln!(
            "{} cannot import voxelscan, nibabel and nilearn: build and install the wheel first (README \"Python\")",
            py.display()
        );
        return;
    }
    let files = slicing_images(&data_dir());
    let mut cmd = Command::new(&py);
    cmd.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/python_proxy.py"));
    if std::env::var_os("VOXELSCAN_BENCH_QUICK").is_some() {
        cmd.arg("--quick");
    }
    if let Some(json) = std::env::var_os("VOXELSCAN_BENCH_JSON") {
        cmd.arg("--json").arg(json);
    }
    for (name, path) in &files {
        cmd.arg(format!("{name}={}", path.display()));
    }
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", py.display()));
    // A non-zero status means an answer differed from nibabel's (printed above), or the script failed.
    assert!(
        status.success(),
        "benches/python_proxy.py failed ({status})"
    );
}
