//! `voxelscan index PATH…`: build the gzip seek-point indexes of compressed images ahead of time, so that later
//! slices and queries decompress only what they need.

use std::io::IsTerminal;
use std::path::PathBuf;

use indicatif::{ProgressBar, ProgressStyle};

use super::{CliError, CliResult};
use voxelscan::formats::{Compression, read_header};
use voxelscan::io::gzip::{GzipOptions, GzipSource};

#[derive(Debug, clap::Args)]
pub struct IndexArgs {
    /// Compressed images (.nii.gz, .mgz, .hdr with .img.gz, …). Uncompressed ones are reported and skipped.
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    /// Distance between seek points in decompressed bytes (a random read decompresses at most about this much).
    #[arg(long, value_name = "BYTES")]
    pub span: Option<u64>,
    /// Directory for the index files (default: a hidden sidecar next to each file, else the user cache directory;
    /// also settable with VOXELSCAN_INDEX_CACHE).
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
}

pub fn run(args: IndexArgs) -> CliResult {
    let mut opts = GzipOptions::from_env();
    if !opts.use_index {
        return Err(CliError(
            "VOXELSCAN_NO_INDEX is set: indexes are disabled".into(),
        ));
    }
    if let Some(span) = args.span {
        if span == 0 {
            return Err(CliError("--span must be positive".into()));
        }
        opts.span = span;
    }
    if args.cache_dir.is_some() {
        opts.cache_dir = args.cache_dir.clone();
    }
    for path in &args.paths {
        let header = read_header(path)?;
        if header.compression != Compression::Gzip {
            println!("{}: not gzip-compressed, nothing to index", path.display());
            continue;
        }
        let data = header.data_path()?;
        let size = std::fs::metadata(data)
            .map_err(|e| voxelscan::error::VoxelError::io(data, e))?
            .len();
        let bar = progress_bar(size, data.display().to_string());
        let source = GzipSource::with_options(data, opts.clone())?;
        let (index, written) = source.build_index(|n| bar.set_position(n))?;
        bar.finish_and_clear();
        let place = match written {
            Some(p) => p.display().to_string(),
            // One seek point (a stream shorter than a span) needs no index file: reads start at the start anyway.
            None if index.points().len() < 2 => "not needed (one seek point)".to_string(),
            // Building an index nobody can use is a failure of this command, not a note.
            None => return Err(not_written(data, &opts)),
        };
        println!(
            "{}: {} seek points over {} bytes, index {}",
            data.display(),
            index.points().len(),
            index.total_out().unwrap_or(index.covered_out()),
            place
        );
    }
    Ok(())
}

fn not_written(data: &std::path::Path, opts: &GzipOptions) -> CliError {
    let tried: Vec<String> = voxelscan::io::gzip::sidecar::index_locations(data, opts)
        .iter()
        .map(|p| p.path.display().to_string())
        .collect();
    CliError(format!(
        "{}: the index could not be written (tried {})",
        data.display(),
        tried.join(", ")
    ))
}

fn progress_bar(len: u64, name: String) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    if let Ok(style) = ProgressStyle::with_template("{msg} [{bar:40}] {bytes}/{total_bytes} {eta}")
    {
        bar.set_style(style);
    }
    bar.set_message(name);
    bar
}
