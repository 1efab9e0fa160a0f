//! `voxelscan export`: an image (or a query over it) to Parquet, with the source header in the key-value metadata.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use datafusion::common::config::TableParquetOptions;
use datafusion::common::stats::Precision;
use datafusion::datasource::file_format::format_as_file_type;
use datafusion::datasource::file_format::parquet::ParquetFormatFactory;
use datafusion::datasource::source::DataSourceExec;
use datafusion::error::DataFusionError;
use datafusion::logical_expr::LogicalPlanBuilder;
use datafusion::physical_plan::{ExecutionPlan, collect};
use datafusion::prelude::SessionConfig;

use super::{CliError, CliResult};
use crate::table::{FormatKind, TableOptions, VoxelTable, session_context};

/// The table name `--sql` queries use.
pub const EXPORT_TABLE: &str = "t";

/// Export voxels to Parquet (zstd, row groups of 1Mi rows).
///
/// LOCATION (a file, a directory or a glob) is registered as table `t`, with columns `i, j, k, t, u, v, w`, `value`
/// (and `file` for a directory or glob); `--sql` is a query over `t` (default `SELECT * FROM t`). OUT is one
/// Parquet file, or a directory of Hive partitions (`OUT/COL=…/…parquet`) with `--partition-by`. The key-value
/// metadata holds each source file's header: `voxelscan.header` (a JSON array of objects with file, format, shape,
/// dtype, offset, slope, inter, order, affine, zooms) and, for a single source file, the same fields as separate
/// keys (`shape`, `dtype`, `offset`, `slope`, `inter`, `affine`, `file`).
#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    /// Image file, directory or glob.
    pub location: String,
    /// Output Parquet file (or directory, with --partition-by).
    pub out: PathBuf,
    /// Query over table `t` to export instead of every voxel.
    #[arg(long, value_name = "QUERY")]
    pub sql: Option<String>,
    /// Write Hive-style partitions by this column. Repeatable.
    #[arg(long = "partition-by", value_name = "COL")]
    pub partition_by: Vec<String>,
}

fn df_err(e: DataFusionError) -> CliError {
    CliError(e.to_string())
}

pub fn run(args: ExportArgs) -> CliResult {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError(format!("cannot start the runtime: {e}")))?;
    rt.block_on(export(
        &args.location,
        &args.out,
        args.sql.as_deref(),
        &args.partition_by,
        std::io::stderr().is_terminal(),
    ))
    .map(|_| ())
}

/// Parquet writer options: zstd(3), 1Mi-row groups, the header metadata.
pub fn parquet_options(table: &VoxelTable) -> TableParquetOptions {
    let mut opts = TableParquetOptions::default();
    opts.global.compression = Some("zstd(3)".into());
    opts.global.max_row_group_size = 1 << 20;
    for (k, v) in header_metadata(table) {
        opts.key_value_metadata.insert(k, Some(v));
    }
    opts
}

/// `voxelscan.header` for every table, plus per-field keys for a single-file table.
pub fn header_metadata(table: &VoxelTable) -> HashMap<String, String> {
    let headers: Vec<serde_json::Value> = table.files().iter().map(|f| f.header_json()).collect();
    let mut meta = HashMap::new();
    if let [single] = headers.as_slice()
        && let Some(obj) = single.as_object()
    {
        for key in [
            "shape", "dtype", "offset", "slope", "inter", "affine", "file", "format", "order",
            "zooms",
        ] {
            if let Some(v) = obj.get(key) {
                let text = v.as_str().map_or_else(|| v.to_string(), str::to_string);
                meta.insert(key.to_string(), text);
            }
        }
    }
    meta.insert(
        "voxelscan.header".into(),
        serde_json::Value::Array(headers).to_string(),
    );
    meta
}

/// Run the export; returns the number of rows written.
pub async fn export(
    location: &str,
    out: &std::path::Path,
    sql: Option<&str>,
    partition_by: &[String],
    progress: bool,
) -> Result<u64, CliError> {
    let ctx = session_context(SessionConfig::new());
    let table = VoxelTable::open(
        EXPORT_TABLE,
        &[location.to_string()],
        TableOptions::new(FormatKind::Any),
    )?;
    let options = parquet_options(&table);
    ctx.register_table(EXPORT_TABLE, Arc::new(table))
        .map_err(df_err)?;
    let query = sql.unwrap_or("SELECT * FROM t");
    let df = ctx.sql(query).await.map_err(df_err)?;
    let (state, plan) = df.into_parts();
    let file_type = format_as_file_type(Arc::new(ParquetFormatFactory::new_with_options(options)));
    let mut sink_options = HashMap::new();
    sink_options.insert(
        "single_file_output".to_string(),
        partition_by.is_empty().to_string(),
    );
    let path = out
        .to_str()
        .ok_or_else(|| CliError(format!("{}: not a UTF-8 path", out.display())))?;
    let copy = LogicalPlanBuilder::copy_to(
        plan,
        path.to_string(),
        file_type,
        sink_options,
        partition_by.to_vec(),
    )
    .and_then(|b| b.build())
    .map_err(df_err)?;
    let physical = state.create_physical_plan(&copy).await.map_err(df_err)?;
    let bar = progress.then(|| progress_bar(&physical));
    let result = collect(Arc::clone(&physical), state.task_ctx()).await;
    if let Some((bar, ticker)) = bar {
        ticker.abort();
        bar.finish_and_clear();
    }
    let batches = result.map_err(df_err)?;
    let count = batches
        .first()
        .and_then(|b| {
            b.column(0)
                .as_any()
                .downcast_ref::<datafusion::arrow::array::UInt64Array>()
                .map(|a| a.value(0))
        })
        .unwrap_or(0);
    Ok(count)
}

/// A bar over the rows the scans will produce (exact from their statistics), advanced from their live metrics.
fn progress_bar(
    plan: &Arc<dyn ExecutionPlan>,
) -> (indicatif::ProgressBar, tokio::task::JoinHandle<()>) {
    let mut scans = Vec::new();
    collect_scans(plan, &mut scans);
    let total: u64 = scans
        .iter()
        .filter_map(|s| s.downcast_ref::<DataSourceExec>())
        .map(|s| {
            match s
                .data_source()
                .partition_statistics(None)
                .map(|st| st.num_rows)
            {
                Ok(Precision::Exact(n) | Precision::Inexact(n)) => n as u64,
                _ => 0,
            }
        })
        .sum();
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} exporting [{bar:40}] {pos}/{len} voxels ({eta})",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let b = bar.clone();
    let ticker = tokio::spawn(async move {
        loop {
            let rows: usize = scans
                .iter()
                .filter_map(|s| s.metrics())
                .filter_map(|m| m.output_rows())
                .sum();
            b.set_position(rows as u64);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    (bar, ticker)
}

fn collect_scans(plan: &Arc<dyn ExecutionPlan>, out: &mut Vec<Arc<dyn ExecutionPlan>>) {
    if plan.downcast_ref::<DataSourceExec>().is_some() {
        out.push(Arc::clone(plan));
    }
    for c in plan.children() {
        collect_scans(c, out);
    }
}
