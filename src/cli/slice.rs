//! `voxelscan slice PATH SPEC -o OUT.npy`: `np.asarray(img.dataobj[SPEC])`, written as .npy.

use std::path::PathBuf;

use super::{CliResult, OpenArgs};
use voxelscan::dtype::DType;
use voxelscan::slicer::SliceSpec;

#[derive(Debug, clap::Args)]
pub struct SliceArgs {
    /// Image file, or a URL (s3://, gs://, az://, abfss://, http(s)://, file://).
    pub path: PathBuf,
    /// numpy basic-indexing spec, Python syntax: "10:20, ::-2, ..., None", "-1", "" (whole array).
    #[arg(allow_hyphen_values = true)]
    pub spec: String,
    /// Output .npy file.
    #[arg(short = 'o', long = "output", value_name = "OUT.npy")]
    pub output: PathBuf,
    /// Stored values without scaling (nibabel's get_unscaled()[SPEC]).
    #[arg(long, conflicts_with = "dtype")]
    pub unscaled: bool,
    /// Output dtype, as np.asarray(img.dataobj, dtype=DT)[SPEC] (e.g. float32, <f4, >i2).
    #[arg(long, value_name = "DT")]
    pub dtype: Option<String>,
    /// Print the requests made and bytes fetched to standard error.
    #[arg(long)]
    pub stats: bool,
    #[command(flatten)]
    pub open: OpenArgs,
}

pub fn run(args: SliceArgs) -> CliResult {
    let spec = SliceSpec::parse(&args.spec)?;
    let dtype = args.dtype.as_deref().map(DType::parse).transpose()?;
    let proxy = args.open.open(&args.path)?;
    let array = match (args.unscaled, dtype) {
        (true, _) => proxy.get_unscaled_slice(&spec)?,
        (false, Some(dt)) => proxy.slice_as(&spec, dt)?,
        (false, None) => proxy.slice(&spec)?,
    };
    array.save_npy(&args.output)?;
    if args.stats {
        super::print_stats();
    }
    Ok(())
}
