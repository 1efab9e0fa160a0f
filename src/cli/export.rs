//! `voxelscan export`: an image (or a query over it) to Parquet, with the source header in the key-value metadata,
//! or to one NIfTI image (`--format nifti`, or an output named `.nii`/`.nii.gz`).

use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use datafusion::catalog::TableProvider;
use datafusion::common::config::TableParquetOptions;
use datafusion::common::stats::Precision;
use datafusion::datasource::file_format::format_as_file_type;
use datafusion::datasource::file_format::parquet::ParquetFormatFactory;
use datafusion::datasource::source::DataSourceExec;
use datafusion::logical_expr::LogicalPlanBuilder;
use datafusion::physical_plan::{ExecutionPlan, collect};
use datafusion::prelude::SessionConfig;

use super::{CliError, CliResult};
use voxelscan::formats::Format;
use voxelscan::table::sink::{NiftiFormatFactory, NiftiWriteOptions};
use voxelscan::table::world::is_world_column;
use voxelscan::table::{FormatKind, TableOptions, VoxelTable, session_context};

/// The table name `--sql` queries use.
pub const EXPORT_TABLE: &str = "t";

/// Export voxels to Parquet (zstd, row groups of 1Mi rows).
///
/// LOCATION (a file, a directory or a glob) is registered as table `t`, with columns `i, j, k, t, u, v, w`, `value`
/// (and `file` for a directory or glob; `x, y, z`, `world_space`, `tr` when asked for); `--sql` is a query over `t`
/// (default: every column but the millimetre ones). OUT is one
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
    /// Output format: parquet, or nifti (one image; the default when OUT ends in .nii or .nii.gz).
    #[arg(long, value_name = "FORMAT")]
    pub format: Option<ExportFormat>,
    /// NIfTI: the image whose grid (shape, affine, codes, zooms) the output takes (default: LOCATION's, when it is
    /// one image with a header).
    #[arg(long, value_name = "IMAGE")]
    pub like: Option<String>,
    /// NIfTI: the value column (default: the only non-coordinate column, or `value`).
    #[arg(long, value_name = "COL")]
    pub value: Option<String>,
    /// NIfTI: the value of voxels without a row (default 0; nan for float output).
    #[arg(long, value_name = "X")]
    pub fill: Option<String>,
    /// NIfTI: the output dtype (numpy name; default from the value column's type).
    #[arg(long, value_name = "DTYPE")]
    pub dtype: Option<String>,
    /// NIfTI: `auto` scales float values into an integer dtype as nibabel would; `none` (default) writes exactly.
    #[arg(long, value_name = "MODE")]
    pub scale: Option<String>,
}

/// What `export` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ExportFormat {
    Parquet,
    Nifti,
}

impl ExportArgs {
    /// The format asked for, else the one the output name implies (Parquet unless it ends in .nii/.nii.gz).
    pub fn resolved_format(&self) -> ExportFormat {
        self.format.unwrap_or_else(|| {
            let name = self.out.to_string_lossy().to_ascii_lowercase();
            if name.ends_with(".nii") || name.ends_with(".nii.gz") {
                ExportFormat::Nifti
            } else {
                ExportFormat::Parquet
            }
        })
    }

    /// The NIfTI options given as flags (the same keys as `COPY … OPTIONS`).
    fn nifti_options(&self) -> Result<Option<HashMap<String, String>>, CliError> {
        let flags = [
            ("like", &self.like),
            ("value", &self.value),
            ("fill", &self.fill),
            ("dtype", &self.dtype),
            ("scale", &self.scale),
        ];
        let given: HashMap<String, String> = flags
            .iter()
            .filter_map(|(k, v)| v.as_ref().map(|v| (k.to_string(), v.clone())))
            .collect();
        match self.resolved_format() {
            ExportFormat::Nifti => {
                if !self.partition_by.is_empty() {
                    return Err(CliError(
                        "--partition-by does not apply to NIfTI output (one image is written)"
                            .into(),
                    ));
                }
                Ok(Some(given))
            }
            ExportFormat::Parquet if !given.is_empty() => Err(CliError(format!(
                "--{} applies to NIfTI output only (--format nifti, or an output named .nii/.nii.gz)",
                flags
                    .iter()
                    .find(|(_, v)| v.is_some())
                    .map_or("like", |(k, _)| k)
            ))),
            ExportFormat::Parquet => Ok(None),
        }
    }
}

pub fn run(args: ExportArgs) -> CliResult {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError(format!("cannot start the runtime: {e}")))?;
    let progress = std::io::stderr().is_terminal();
    match args.nifti_options()? {
        Some(options) => rt.block_on(export_nifti(
            &args.location,
            &args.out,
            args.sql.as_deref(),
            &options,
            progress,
        )),
        None => rt.block_on(export(
            &args.location,
            &args.out,
            args.sql.as_deref(),
            &args.partition_by,
            progress,
        )),
    }
    .map(|_| ())
}

/// Every voxel with the table's columns except the millimetre ones (`x, y, z`, `world_space`, `tr`), which
/// `--sql` can still select: an export holds what the image stores, the affine is in the metadata.
fn default_query(table: &VoxelTable) -> String {
    let columns: Vec<String> = table
        .schema()
        .fields()
        .iter()
        .map(|f| f.name())
        .filter(|n| !is_world_column(n))
        .map(|n| format!("\"{}\"", n.replace('"', "\"\"")))
        .collect();
    format!("SELECT {} FROM {EXPORT_TABLE}", columns.join(", "))
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
    let default_query = default_query(&table);
    ctx.register_table(EXPORT_TABLE, Arc::new(table))?;
    let df = ctx.sql(sql.unwrap_or(&default_query)).await?;
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
    .and_then(|b| b.build())?;
    run_copy(&state, &copy, progress).await
}

/// Run the query over LOCATION (table `t`) into one NIfTI image at `out`; `options` as in `COPY … OPTIONS`.
pub async fn export_nifti(
    location: &str,
    out: &std::path::Path,
    sql: Option<&str>,
    options: &HashMap<String, String>,
    progress: bool,
) -> Result<u64, CliError> {
    let ctx = session_context(SessionConfig::new());
    let table = VoxelTable::open(
        EXPORT_TABLE,
        &[location.to_string()],
        TableOptions::new(FormatKind::Any),
    )?;
    // Without --like, one source image with a header lends its grid (as the flag's help says), so queries that
    // compute coordinates still find one.
    let mut options = options.clone();
    if let [file] = table.files()
        && !matches!(file.format, Format::Npy | Format::Raw)
    {
        options
            .entry("like".to_string())
            .or_insert_with(|| file.name.clone());
    }
    let default_query = default_query(&table);
    ctx.register_table(EXPORT_TABLE, Arc::new(table))?;
    let opts = NiftiWriteOptions::parse(&options)?;
    let df = ctx.sql(sql.unwrap_or(&default_query)).await?;
    let (state, plan) = df.into_parts();
    let file_type = format_as_file_type(Arc::new(NiftiFormatFactory::with_options(opts)));
    let path = out
        .to_str()
        .ok_or_else(|| CliError(format!("{}: not a UTF-8 path", out.display())))?;
    let copy =
        LogicalPlanBuilder::copy_to(plan, path.to_string(), file_type, HashMap::new(), vec![])
            .and_then(|b| b.build())?;
    run_copy(&state, &copy, progress).await
}

/// Plan and run a COPY; returns the number of rows written.
async fn run_copy(
    state: &datafusion::execution::session_state::SessionState,
    copy: &datafusion::logical_expr::LogicalPlan,
    progress: bool,
) -> Result<u64, CliError> {
    let physical = state.create_physical_plan(copy).await?;
    let bar = progress.then(|| progress_bar(&physical));
    let result = collect(Arc::clone(&physical), state.task_ctx()).await;
    if let Some((bar, ticker)) = bar {
        ticker.abort();
        bar.finish_and_clear();
    }
    let batches = result?;
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
