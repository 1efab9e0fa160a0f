//! The command-line front: argument parsing and dispatch only; each subcommand lives in its own file.

use std::fmt;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use voxelscan::error::VoxelError;

#[cfg(feature = "ballista")]
pub mod cluster;
#[cfg(feature = "sql")]
pub mod export;
mod index;
mod info;
mod slice;
#[cfg(feature = "sql")]
pub mod sql;
mod view;

/// SQL over the voxels of neuroimaging files, read lazily and exactly as nibabel would.
#[derive(Debug, Parser)]
#[command(name = "voxelscan", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print an image's header facts as one JSON object.
    Info(info::InfoArgs),
    /// Write `proxy[SPEC]` (numpy basic indexing) to a .npy file.
    Slice(slice::SliceArgs),
    /// Draw a 2-D section (or the three sections through a voxel) as a PNG picture.
    View(view::ViewArgs),
    /// Build gzip seek-point indexes for compressed images ahead of time.
    Index(index::IndexArgs),
    /// Run SQL statements over image tables (interactive prompt without a statement).
    #[cfg(feature = "sql")]
    Sql(sql::SqlArgs),
    /// Export an image (or a query over it) to Parquet, or to one NIfTI image.
    #[cfg(feature = "sql")]
    Export(export::ExportArgs),
    /// Start a Ballista scheduler for distributed queries (`voxelscan sql --cluster`).
    #[cfg(feature = "ballista")]
    Scheduler(cluster::SchedulerArgs),
    /// Start a Ballista executor that runs a scheduler's voxel tasks.
    #[cfg(feature = "ballista")]
    Executor(cluster::ExecutorArgs),
}

/// A failure to report: printed as one `error: …` line, exit status 2.
#[derive(Debug)]
pub struct CliError(pub String);

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<VoxelError> for CliError {
    fn from(e: VoxelError) -> Self {
        CliError(e.to_string())
    }
}

/// Query errors print as DataFusion words them (`Error during planning: …`, `Execution error: …`).
#[cfg(feature = "sql")]
impl From<datafusion::error::DataFusionError> for CliError {
    fn from(e: datafusion::error::DataFusionError) -> Self {
        CliError(e.to_string())
    }
}

impl From<std::io::Error> for CliError {
    fn from(e: std::io::Error) -> Self {
        CliError(e.to_string())
    }
}

pub type CliResult = Result<(), CliError>;

/// Entry point of the `voxelscan` binary.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            // --help / --version
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => return fail(&CliError(clap_message(&e))),
    };
    let result = match cli.command {
        Command::Info(a) => info::run(a),
        Command::Slice(a) => slice::run(a),
        Command::View(a) => view::run(a),
        #[cfg(feature = "sql")]
        Command::Sql(a) => sql::run(a),
        #[cfg(feature = "sql")]
        Command::Export(a) => export::run(a),
        Command::Index(a) => index::run(a),
        #[cfg(feature = "ballista")]
        Command::Scheduler(a) => cluster::run_scheduler(a),
        #[cfg(feature = "ballista")]
        Command::Executor(a) => cluster::run_executor(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

/// clap's first message line, without its own `error: ` prefix and usage block.
fn clap_message(e: &clap::Error) -> String {
    let text = e.to_string();
    let message: Vec<&str> = text
        .lines()
        .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let joined = message.join(" ");
    let joined = joined.trim_start_matches("error:").trim();
    if joined.is_empty() {
        "invalid arguments".to_string()
    } else {
        joined.to_string()
    }
}

fn fail(e: &CliError) -> ExitCode {
    let one_line = e.0.split_whitespace().collect::<Vec<_>>().join(" ");
    eprintln!("error: {one_line}");
    ExitCode::from(2)
}

/// Options shared by commands that open an image.
#[derive(Debug, Clone, clap::Args)]
pub struct OpenArgs {
    /// Read PATH as a headerless raw array: 'shape=2,3,4;dtype=<i2;offset=16;slope=2.0;inter=1.0;order=C'
    /// (slope/inter as 'f4:2.5' for a float32 factor).
    #[arg(long, value_name = "SPEC")]
    pub raw: Option<String>,
    /// Memory-map uncompressed files: c (copy-on-write, default), r (read-only) or off.
    #[arg(long, value_name = "MODE", default_value = "c")]
    pub mmap: voxelscan::io::local::MmapMode,
    /// Keep one file handle open for all reads instead of opening the file per read.
    #[arg(long)]
    pub keep_file_open: bool,
}

impl OpenArgs {
    /// A proxy over a path, a `file://` URL or (with the `remote` feature) an object-store or HTTP URL.
    pub fn open(&self, path: &std::path::Path) -> Result<voxelscan::proxy::ArrayProxy, VoxelError> {
        let opts = voxelscan::proxy::ProxyOptions {
            mmap: self.mmap,
            keep_file_open: self.keep_file_open,
            ..Default::default()
        };
        self.image(path)?.into_proxy(opts)
    }

    /// The image at a path, a `file://` URL or (with the `remote` feature) an object-store or HTTP URL.
    pub fn image(
        &self,
        path: &std::path::Path,
    ) -> Result<voxelscan::location::OpenImage, VoxelError> {
        use voxelscan::location::{Location, StoreOptions, open_image};
        let location = Location::parse(&path.to_string_lossy())?;
        open_image(&location, self.raw.as_deref(), &StoreOptions::default())
    }
}

/// `--stats`: what this process read, on standard error (stdout stays the command's output). For object storage
/// `requests` are GET/HEAD/LIST requests and `bytes_fetched` the bytes received; locally, reads and bytes read.
pub fn print_stats() {
    let t = voxelscan::io::totals();
    eprintln!(
        "stats: requests={} bytes_fetched={} bytes_used={} segments={}",
        t.requests, t.bytes_read, t.bytes_delivered, t.segments
    );
}
