//! A 6 mm sphere's mean time series on the 96×96×60×300 int16 benchmark image (`synth::bench_image`): voxelscan's
//! SQL (the sphere written as a sum of squares on `x, y, z`, pushed down to its bounding box) against nilearn's
//! `NiftiSpheresMasker` on the same file in the same run (`benches/nilearn_spheres.py` through `.venv/bin/python`
//! or `$VOXELSCAN_PYTHON`). Prints best and median times, bytes read, the ratio, and checks that the two series
//! agree (within 1e-5 relative).
//!
//! `cargo bench --features ballista --bench world` (measures in whatever profile it is built in; the numbers in the
//! README say which).

mod common;

use common::python;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use datafusion::arrow::array::{Array, Float64Array};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::DataType;
use datafusion::physical_plan::{ExecutionPlan, collect};
use datafusion::prelude::SessionConfig;
use voxelscan::synth;
use voxelscan::table::{register_voxels, session_context};

const SHAPE: [usize; 4] = [96, 96, 60, 300];
/// The seed in millimetres (the benchmark image's affine is the identity) and the radius.
const SEED: [f64; 3] = [48.3, 40.7, 30.2];
const RADIUS: f64 = 6.0;
const RUNS: usize = 5;

fn scan_bytes(plan: &Arc<dyn ExecutionPlan>) -> usize {
    let own = plan
        .metrics()
        .and_then(|m| m.sum_by_name("bytes_read"))
        .map_or(0, |v| v.as_usize());
    own + plan.children().into_iter().map(scan_bytes).sum::<usize>()
}

fn query() -> String {
    let [a, b, c] = SEED;
    format!(
        "SELECT t, avg(value) AS mean FROM bold \
         WHERE (x - {a})*(x - {a}) + (y - {b})*(y - {b}) + (z - {c})*(z - {c}) <= {} GROUP BY t ORDER BY t",
        RADIUS * RADIUS
    )
}

/// One run: (seconds, bytes read, series).
async fn voxelscan_run(path: &Path) -> (f64, usize, Vec<f64>) {
    let start = Instant::now();
    let ctx = session_context(SessionConfig::new());
    let opts = [("world".to_string(), "true".to_string())].into();
    register_voxels(&ctx, "bold", &path.display().to_string(), &opts).expect("register");
    let plan = ctx
        .sql(&query())
        .await
        .expect("sql")
        .create_physical_plan()
        .await
        .expect("plan");
    let batches = collect(Arc::clone(&plan), ctx.task_ctx())
        .await
        .expect("run");
    let seconds = start.elapsed().as_secs_f64();
    let mut series = Vec::new();
    for b in &batches {
        let m = cast(b.column(1), &DataType::Float64).expect("f64");
        let m = m.as_any().downcast_ref::<Float64Array>().expect("f64");
        series.extend((0..m.len()).map(|r| m.value(r)));
    }
    (seconds, scan_bytes(&plan), series)
}

fn main() {
    let dir = synth::bench_data_dir().expect("bench data dir");
    let path = dir.join("bold_96x96x60x300.nii");
    synth::bench_image(&path, &SHAPE, 1.0, 0.0, false).expect("bench image");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let mut times = Vec::new();
    let (mut bytes, mut series) = (0, Vec::new());
    rt.block_on(voxelscan_run(&path)); // warm-up (page cache)
    for _ in 0..RUNS {
        let (s, b, v) = rt.block_on(voxelscan_run(&path));
        times.push(s);
        (bytes, series) = (b, v);
    }
    times.sort_by(f64::total_cmp);
    let out = Command::new(python())
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/nilearn_spheres.py"))
        .arg(&path)
        .args(SEED.map(|v| v.to_string()))
        .arg(RADIUS.to_string())
        .output()
        .expect("run nilearn_spheres.py");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let nilearn: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let theirs: Vec<f64> = nilearn["series"]
        .as_array()
        .expect("series")
        .iter()
        .filter_map(serde_json::Value::as_f64)
        .collect();
    assert_eq!(series.len(), theirs.len(), "time points");
    for (t, (a, b)) in series.iter().zip(&theirs).enumerate() {
        assert!(
            (a - b).abs() <= 1e-5 * b.abs().max(1.0),
            "t={t}: {a} vs nilearn {b}"
        );
    }
    let ours = times[0];
    let best = nilearn["seconds"].as_f64().unwrap_or(f64::NAN);
    let file_bytes = SHAPE.iter().product::<usize>() * 2;
    println!("6 mm sphere mean time series, 96x96x60x300 int16, {RUNS} runs after a warm-up");
    println!(
        "voxelscan: best {:.2} ms, median {:.2} ms, {bytes} bytes read of {file_bytes} ({:.3}%)",
        ours * 1e3,
        times[RUNS / 2] * 1e3,
        100.0 * bytes as f64 / file_bytes as f64
    );
    println!(
        "nilearn NiftiSpheresMasker: best {:.1} ms, median {:.1} ms ({})",
        best * 1e3,
        nilearn["median"].as_f64().unwrap_or(f64::NAN) * 1e3,
        nilearn["versions"]
    );
    println!("voxelscan / nilearn: {:.4}x (target <= 0.02x)", ours / best);
}
