//! `voxelscan info PATH`: one JSON object with the facts nibabel reports for the image.

use std::path::PathBuf;

use serde::Serialize;

use super::{CliResult, OpenArgs};
use voxelscan::formats::Format;

#[derive(Debug, clap::Args)]
pub struct InfoArgs {
    /// Image file (NIfTI-1/2 .nii/.hdr, Analyze .hdr, MGH .mgh/.mgz, .npy, raw with --raw; .gz accepted), or a URL:
    /// s3://, gs://, az://, abfss://, http(s)://, file://.
    pub path: PathBuf,
    #[command(flatten)]
    pub open: OpenArgs,
}

/// The contract's field names and order.
#[derive(Debug, Serialize)]
struct Info {
    format: &'static str,
    shape: Vec<usize>,
    dtype: String,
    scaled_dtype: String,
    offset: u64,
    #[serde(serialize_with = "factor")]
    slope: f64,
    #[serde(serialize_with = "factor")]
    inter: f64,
    order: String,
    /// `null` for formats without spatial metadata (npy, raw).
    affine: Option<[[f64; 4]; 4]>,
    zooms: Option<Vec<f64>>,
    /// The space the affine maps into: the NIfTI xform code's name of the transform nibabel's `img.affine` uses
    /// (`unknown`, `scanner`, `aligned`, `talairach`, `mni`, `template`); `scanner` for MGH, `unknown` for
    /// Analyze; `null` for npy and raw.
    space: Option<&'static str>,
}

/// A scale factor as a JSON number, or — JSON has no NaN or infinity, and serde_json would print `null` for all
/// three, losing the sign and NaN-ness — the strings `"nan"`, `"inf"`, `"-inf"` (as `--raw` specs spell them).
fn factor<S: serde::Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
    if v.is_nan() {
        s.serialize_str("nan")
    } else if v.is_infinite() {
        s.serialize_str(if *v > 0.0 { "inf" } else { "-inf" })
    } else {
        s.serialize_f64(*v)
    }
}

pub fn run(args: InfoArgs) -> CliResult {
    let image = args.open.image(&args.path)?;
    let header = image.header.clone();
    let proxy = image.into_proxy(Default::default())?;
    let spatial = !matches!(header.format, Format::Npy | Format::Raw);
    let info = Info {
        format: header.format.name(),
        shape: proxy.shape().to_vec(),
        dtype: proxy.dtype().numpy_str(),
        scaled_dtype: proxy.scaled_dtype()?.numpy_str(),
        offset: proxy.offset(),
        slope: proxy.slope().value(),
        inter: proxy.inter().value(),
        order: proxy.order().to_string(),
        affine: spatial.then_some(header.affine),
        zooms: spatial.then(|| header.zooms.clone()),
        space: header.world.space().filter(|_| spatial),
    };
    let text = serde_json::to_string(&info).map_err(|e| super::CliError(e.to_string()))?;
    println!("{text}");
    Ok(())
}
