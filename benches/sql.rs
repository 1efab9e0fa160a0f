//! SQL benchmark of issue 3: the six queries Q1–Q6 on a generated 96×96×60×300 int16 NIfTI, answered by this
//! crate's table provider and by DataFusion over the Parquet export of the same voxels, in the same process, warm
//! page cache, best of a few runs. Prints times, ratios and bytes read, plus a plain memory pass over the same bytes.
//!
//! `cargo bench --bench sql` (only measures under `cargo bench`; `cargo test --all-targets` just builds it).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use datafusion::datasource::source::DataSourceExec;
use datafusion::physical_plan::{ExecutionPlan, collect};
use datafusion::prelude::{ParquetReadOptions, SessionConfig, SessionContext};
use voxelscan::synth::{random_i16_le, write_i16_nifti1};
use voxelscan::table::{register_voxels, session_context};

const SHAPE: [usize; 4] = [96, 96, 60, 300];

const QUERIES: [(&str, &str); 6] = [
    ("Q1", "SELECT avg(value) FROM {} "),
    ("Q2", "SELECT avg(value) FROM {} WHERE t = 150"),
    (
        "Q3",
        "SELECT t, value FROM {} WHERE i = 48 AND j = 48 AND k = 30",
    ),
    ("Q4", "SELECT t, avg(value) FROM {} WHERE k = 30 GROUP BY t"),
    ("Q5", "SELECT k, avg(value) FROM {} WHERE t < 10 GROUP BY k"),
    ("Q6", "SELECT count(*) FROM {} WHERE value > 2900"),
];

fn scan_metric(plan: &Arc<dyn ExecutionPlan>, names: &[&str]) -> usize {
    let own = if plan.downcast_ref::<DataSourceExec>().is_some() {
        let m = plan.metrics();
        names
            .iter()
            .filter_map(|n| m.as_ref()?.sum_by_name(n))
            .map(|v| v.as_usize())
            .sum()
    } else {
        0
    };
    own + plan
        .children()
        .iter()
        .map(|c| scan_metric(c, names))
        .sum::<usize>()
}

/// Best time of `runs` executions, and the bytes the scan read in the last one.
async fn time(ctx: &SessionContext, sql: &str, runs: usize) -> (Duration, usize, usize) {
    let mut best = Duration::MAX;
    let (mut bytes, mut rows) = (0, 0);
    for _ in 0..runs {
        let start = Instant::now();
        let plan = ctx
            .sql(sql)
            .await
            .unwrap()
            .create_physical_plan()
            .await
            .unwrap();
        let out = collect(Arc::clone(&plan), ctx.task_ctx()).await.unwrap();
        best = best.min(start.elapsed());
        bytes = scan_metric(&plan, &["bytes_read", "bytes_scanned"]);
        rows = out.iter().map(|b| b.num_rows()).sum();
    }
    (best, bytes, rows)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let runs = if std::env::var_os("VOXELSCAN_BENCH_QUICK").is_some() {
        2
    } else {
        5
    };
    let dir = tempfile::tempdir().unwrap();
    let nii = dir.path().join("bold.nii");
    let n: usize = SHAPE.iter().product();
    let data = random_i16_le(n, 42, 0, 4000);
    write_i16_nifti1(&nii, &SHAPE, &data).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let ctx = session_context(SessionConfig::new());
        register_voxels(&ctx, "v", &nii.display().to_string(), &HashMap::new()).unwrap();
        let pq = dir.path().join("bold.parquet");
        let start = Instant::now();
        // The stored columns, as `export` writes them (not the millimetre ones `SELECT *` now includes).
        let copy = format!("COPY (SELECT i, j, k, t, value FROM v) TO '{}' STORED AS PARQUET", pq.display());
        ctx.sql(&copy).await.unwrap().collect().await.unwrap();
        let pq_size = std::fs::metadata(&pq).map(|m| m.len()).unwrap_or(0);
        println!(
            "image {SHAPE:?} int16: {} MiB; Parquet export (zstd) {} MiB in {:.1} s",
            data.len() >> 20,
            pq_size >> 20,
            start.elapsed().as_secs_f64()
        );
        ctx.register_parquet("p", pq.display().to_string(), ParquetReadOptions::default()).await.unwrap();
        // A plain pass over the same bytes in memory (page cache → memory is not counted: the data is already there).
        let mut mem = Duration::MAX;
        for _ in 0..runs {
            let start = Instant::now();
            let s: i64 = data.chunks_exact(2).map(|c| i64::from(i16::from_le_bytes([c[0], c[1]]))).sum();
            std::hint::black_box(s);
            mem = mem.min(start.elapsed());
        }
        println!("plain memory pass (sum of {n} int16): {:.1} ms", ms(mem));
        println!("| query | voxelscan ms | parquet ms | parquet/voxelscan | voxelscan bytes read | parquet bytes scanned | rows |");
        println!("|---|---|---|---|---|---|---|");
        for (name, q) in QUERIES {
            let (tv, bv, rows) = time(&ctx, &q.replace("{}", "v"), runs).await;
            let (tp, bp, _) = time(&ctx, &q.replace("{}", "p"), runs).await;
            println!(
                "| {name} | {:.2} | {:.2} | {:.1}× | {bv} | {bp} | {rows} |",
                ms(tv),
                ms(tp),
                tp.as_secs_f64() / tv.as_secs_f64()
            );
        }
    });
}
