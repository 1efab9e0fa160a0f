//! `voxelscan sql`: register image tables, run SQL statements, print results as a table, CSV, JSON or NDJSON; with
//! no statement, an interactive prompt with history.

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion::sql::parser::DFParser;

use super::{CliError, CliResult};
use voxelscan::table::{register_voxels, session_context};

/// Output formats of query results.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    /// An aligned text table.
    Table,
    /// A header row, then one line per row; floats printed so that they parse back to the same value.
    Csv,
    /// One JSON array of row objects per query.
    Json,
    /// One JSON object per row and line.
    Ndjson,
}

/// Run SQL over image files.
///
/// Tables: `-t NAME=LOCATION` registers a file, a directory or a glob (quote it) as table NAME, the format detected
/// from the name and magic. Columns: `i, j, k, t, u, v, w` (Int64, one per axis), then `value`; a directory or glob
/// adds a `file` column. `CREATE EXTERNAL TABLE t STORED AS NIFTI|ANALYZE|MGH|NPY|RAW|VOXELS LOCATION '…'` and
/// `SELECT … FROM voxels('path')` work too, and so does `COPY (SELECT …) TO 'out.parquet'`.
#[derive(Debug, clap::Args)]
pub struct SqlArgs {
    /// Register a table: NAME=LOCATION (a file, a directory or a glob). Repeatable.
    #[arg(short = 't', long = "table", value_name = "NAME=LOCATION")]
    pub tables: Vec<String>,
    /// How to print query results.
    #[arg(long, value_enum, default_value = "table")]
    pub format: OutputFormat,
    /// Write results to this file instead of standard output.
    #[arg(short = 'o', long = "output", value_name = "OUT")]
    pub output: Option<PathBuf>,
    /// Print the requests made and bytes fetched (all tables, headers included) to standard error at the end.
    #[arg(long)]
    pub stats: bool,
    /// Run the statements on a Ballista cluster (`voxelscan scheduler`); tables are registered here and read by
    /// the cluster's executors, which must see the files at the same paths.
    #[cfg(feature = "ballista")]
    #[arg(long, value_name = "df://HOST:PORT")]
    pub cluster: Option<String>,
    /// File holding the cluster's shared secret (mode 0600), instead of `VOXELSCAN_CLUSTER_TOKEN`.
    #[cfg(feature = "ballista")]
    #[arg(long, value_name = "FILE", requires = "cluster")]
    pub token_file: Option<PathBuf>,
    /// Connect to the cluster with TLS, trusting only this CA (PEM).
    #[cfg(feature = "ballista")]
    #[arg(long, value_name = "PEM", requires = "cluster")]
    pub tls_ca: Option<PathBuf>,
    /// Statements separated by `;`. Without them, an interactive prompt starts.
    #[arg(allow_hyphen_values = true)]
    pub statements: Option<String>,
}

pub fn run(args: SqlArgs) -> CliResult {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError(format!("cannot start the runtime: {e}")))?;
    rt.block_on(run_async(args))
}

async fn run_async(args: SqlArgs) -> CliResult {
    let ctx = context(&args).await?;
    for spec in &args.tables {
        let (name, location) = spec
            .split_once('=')
            .filter(|(n, l)| !n.is_empty() && !l.is_empty())
            .ok_or_else(|| CliError(format!("-t expects NAME=LOCATION, got '{spec}'")))?;
        register_voxels(&ctx, name, location, &HashMap::new())?;
    }
    let mut out: Box<dyn Write> = match &args.output {
        Some(p) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(p).map_err(|e| CliError(format!("{}: {e}", p.display())))?,
        )),
        None => Box::new(std::io::stdout().lock()),
    };
    match &args.statements {
        Some(sql) => run_statements(&ctx, sql, args.format, &mut out).await?,
        None => interactive(&ctx, args.format, &mut out).await?,
    }
    out.flush()
        .map_err(|e| CliError(format!("writing results: {e}")))?;
    if args.stats {
        super::print_stats();
    }
    Ok(())
}

/// A local context, or one whose queries run on the cluster named by `--cluster`.
#[cfg_attr(not(feature = "ballista"), allow(unused_variables))]
async fn context(args: &SqlArgs) -> Result<SessionContext, CliError> {
    let config = SessionConfig::new().with_information_schema(true);
    #[cfg(feature = "ballista")]
    if let Some(url) = &args.cluster {
        let token = voxelscan::cluster::ClusterToken::resolve(args.token_file.as_deref())?;
        let tls = super::cluster::client_tls(args.tls_ca.as_deref())?;
        let config = voxelscan::cluster::with_client_security(config, token.as_ref(), tls.as_ref());
        return voxelscan::cluster::remote_context(url, config)
            .await
            .map_err(CliError::from);
    }
    Ok(session_context(config))
}

/// Run every statement of `sql` in order, printing the rows of those that return any columns.
pub async fn run_statements(
    ctx: &SessionContext,
    sql: &str,
    format: OutputFormat,
    out: &mut dyn Write,
) -> CliResult {
    let statements = DFParser::parse_sql(sql)?;
    for statement in statements {
        let state = ctx.state();
        let plan = state.statement_to_plan(statement).await?;
        // COPY's target is written by the cluster's executors: relative paths are this process's.
        #[cfg(feature = "ballista")]
        let plan = voxelscan::cluster::absolute_copy_target(plan)?;
        let df = ctx.execute_logical_plan(plan).await?;
        let schema: SchemaRef = df.schema().inner().clone();
        let batches = df.collect().await?;
        if !schema.fields().is_empty() {
            write_results(&schema, &batches, format, out)?;
        }
    }
    Ok(())
}

/// Print one result set.
pub fn write_results(
    schema: &SchemaRef,
    batches: &[RecordBatch],
    format: OutputFormat,
    out: &mut dyn Write,
) -> CliResult {
    let io = |e: std::io::Error| CliError(format!("writing results: {e}"));
    let arrow = |e: datafusion::arrow::error::ArrowError| CliError(format!("writing results: {e}"));
    match format {
        OutputFormat::Table => {
            let text = datafusion::arrow::util::pretty::pretty_format_batches_with_schema(
                schema.clone(),
                batches,
            )
            .map_err(arrow)?;
            writeln!(out, "{text}").map_err(io)?;
        }
        OutputFormat::Csv => {
            let mut w = datafusion::arrow::csv::WriterBuilder::new()
                .with_header(true)
                .build(&mut *out);
            if batches.is_empty() {
                w.write(&RecordBatch::new_empty(schema.clone()))
                    .map_err(arrow)?;
            }
            for b in batches {
                w.write(b).map_err(arrow)?;
            }
        }
        OutputFormat::Json => {
            let mut w = datafusion::arrow::json::ArrayWriter::new(&mut *out);
            let refs: Vec<&RecordBatch> = batches.iter().collect();
            w.write_batches(&refs).map_err(arrow)?;
            w.finish().map_err(arrow)?;
            if batches.iter().all(|b| b.num_rows() == 0) {
                write!(out, "[]").map_err(io)?;
            }
            writeln!(out).map_err(io)?;
        }
        OutputFormat::Ndjson => {
            let mut w = datafusion::arrow::json::LineDelimitedWriter::new(&mut *out);
            let refs: Vec<&RecordBatch> = batches.iter().collect();
            w.write_batches(&refs).map_err(arrow)?;
            w.finish().map_err(arrow)?;
        }
    }
    Ok(())
}

/// The prompt: statements end with `;`; `\q`, `quit` or end of input leave. History in `~/.voxelscan_history`.
async fn interactive(ctx: &SessionContext, format: OutputFormat, out: &mut dyn Write) -> CliResult {
    let mut rl = rustyline::DefaultEditor::new()
        .map_err(|e| CliError(format!("cannot start the prompt: {e}")))?;
    let history = std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".voxelscan_history"));
    if let Some(h) = &history {
        let _ = rl.load_history(h);
    }
    let mut pending = String::new();
    loop {
        let prompt = if pending.is_empty() {
            "voxelscan> "
        } else {
            "        -> "
        };
        let line = match rl.readline(prompt) {
            Ok(l) => l,
            Err(rustyline::error::ReadlineError::Interrupted) => {
                pending.clear();
                continue;
            }
            Err(_) => break,
        };
        let trimmed = line.trim();
        if pending.is_empty() && matches!(trimmed, "\\q" | "quit" | "exit") {
            break;
        }
        if trimmed.is_empty() {
            continue;
        }
        pending.push_str(&line);
        pending.push('\n');
        if !trimmed.ends_with(';') {
            continue;
        }
        let _ = rl.add_history_entry(pending.trim());
        if let Err(e) = run_statements(ctx, &pending, format, out).await {
            eprintln!(
                "error: {}",
                e.0.split_whitespace().collect::<Vec<_>>().join(" ")
            );
        }
        let _ = out.flush();
        pending.clear();
    }
    if let Some(h) = &history {
        let _ = rl.save_history(h);
    }
    Ok(())
}
