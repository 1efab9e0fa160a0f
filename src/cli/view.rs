//! `voxelscan view IMAGE [SPEC] -o slice.png`: a picture of a section (or of the three sections through a voxel),
//! drawn by `voxelscan::render`.

use std::path::PathBuf;

use super::{CliError, CliResult, OpenArgs};
use voxelscan::proxy::ProxyOptions;
use voxelscan::render::colour::{Colormap, Window};
use voxelscan::render::{Image, Overlay, Request, ViewOptions, render};
use voxelscan::slicer::SliceSpec;

#[derive(Debug, clap::Args)]
pub struct ViewArgs {
    /// Image file, or a URL (s3://, gs://, az://, abfss://, http(s)://, file://).
    pub path: PathBuf,
    /// numpy basic indexing leaving a 2-D section (":, :, 30", "..., 30, 150"), or an integer for every axis (the
    /// three sections through that voxel). Default: the middle axial section of the first volume.
    #[arg(allow_hyphen_values = true)]
    pub spec: Option<String>,
    /// Output PNG file.
    #[arg(short = 'o', long = "output", value_name = "OUT.png")]
    pub output: PathBuf,
    /// The sagittal, coronal and axial sections through voxel I,J,K side by side (further indices pick the
    /// volume: I,J,K,T).
    #[arg(long, value_name = "I,J,K[,T…]", conflicts_with = "spec")]
    pub at: Option<String>,
    /// Radiological convention: the subject's right on the image's left (default: neurological, as nilearn).
    #[arg(long)]
    pub radiological: bool,
    /// Display window LO,HI (default: 2nd-98th percentile of the non-zero values drawn).
    #[arg(long, value_name = "LO,HI", allow_hyphen_values = true)]
    pub window: Option<String>,
    /// Colour map: gray, viridis, magma, inferno, plasma, cividis, turbo, rdbu_r, rdbu, spectral.
    #[arg(long, value_name = "NAME", default_value = "gray")]
    pub cmap: String,
    /// Enlarge each voxel to N×N pixels (default: enough for 256 pixels on the longest side, at most 8).
    #[arg(long, value_name = "N")]
    pub scale: Option<usize>,
    /// voxel: every voxel N×N pixels; mm: spatial sections in millimetres as nilearn draws them (a voxel N pixels
    /// per smallest voxel size along each axis, nearest neighbour).
    #[arg(long, value_name = "voxel|mm", default_value = "voxel", value_parser = ["voxel", "mm"])]
    pub aspect: String,
    /// An image drawn over the sections (a statistical map, a mask), resampled to the nearest voxel through both
    /// affines.
    #[arg(long, value_name = "STAT.nii")]
    pub overlay: Option<PathBuf>,
    /// Overlay voxels with |value| <= X are transparent.
    #[arg(
        long,
        value_name = "X",
        default_value_t = 0.0,
        requires = "overlay",
        allow_hyphen_values = true
    )]
    pub threshold: f64,
    /// Overlay opacity, 0 to 1.
    #[arg(
        long,
        value_name = "A",
        default_value_t = 1.0,
        requires = "overlay",
        allow_hyphen_values = true
    )]
    pub alpha: f64,
    /// Overlay colour map, spanning -max|value| to +max|value| (names as for --cmap).
    #[arg(
        long,
        value_name = "NAME",
        default_value = "rdbu_r",
        requires = "overlay"
    )]
    pub overlay_cmap: String,
    /// Print the requests made and bytes fetched to standard error.
    #[arg(long)]
    pub stats: bool,
    #[command(flatten)]
    pub open: OpenArgs,
}

pub fn run(args: ViewArgs) -> CliResult {
    check_output_name(&args.output)?;
    let request = request(&args)?;
    let mut opts = ViewOptions {
        radiological: args.radiological,
        window: args
            .window
            .as_deref()
            .map(str::parse::<Window>)
            .transpose()?,
        cmap: args.cmap.parse::<Colormap>()?,
        scale: args.scale,
        aspect_mm: args.aspect == "mm",
        overlay: None,
    };
    if let Some(path) = &args.overlay {
        opts.overlay = Some(overlay(&args, path)?);
    }
    let proxy_opts = ProxyOptions {
        mmap: args.open.mmap,
        keep_file_open: args.open.keep_file_open,
        ..Default::default()
    };
    let image = Image::open(
        &args.path.to_string_lossy(),
        args.open.raw.as_deref(),
        proxy_opts,
    )?;
    let picture = render(&image, &request, &opts)?;
    picture.canvas.save_png(&args.output)?;
    eprintln!(
        "{}: {}; {}x{} px, scale {}",
        args.output.display(),
        picture.description,
        picture.canvas.width(),
        picture.canvas.height(),
        picture.scale
    );
    if args.stats {
        super::print_stats();
    }
    Ok(())
}

fn request(args: &ViewArgs) -> Result<Request, CliError> {
    if let Some(at) = &args.at {
        let point = at
            .split(',')
            .map(|s| s.trim().parse::<usize>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| {
                CliError(format!(
                    "--at {at:?}: expected voxel indices I,J,K[,T…] (non-negative integers)"
                ))
            })?;
        return Ok(Request::Point(point));
    }
    match &args.spec {
        Some(spec) => Ok(Request::Spec(SliceSpec::parse(spec)?)),
        None => Ok(Request::Middle),
    }
}

fn overlay(args: &ViewArgs, path: &std::path::Path) -> Result<Overlay, CliError> {
    if !(args.threshold.is_finite() && args.threshold >= 0.0) {
        return Err(CliError(format!(
            "--threshold {}: must be a finite number >= 0",
            args.threshold
        )));
    }
    if !(0.0..=1.0).contains(&args.alpha) {
        return Err(CliError(format!(
            "--alpha {}: must be between 0 and 1",
            args.alpha
        )));
    }
    let cmap = args.overlay_cmap.parse::<Colormap>()?;
    let image = Image::open(&path.to_string_lossy(), None, ProxyOptions::default())?;
    Ok(Overlay {
        image,
        threshold: args.threshold,
        alpha: args.alpha,
        cmap,
    })
}

/// The picture is a PNG: an output named for another format (`slice.jpg`) would get PNG bytes under a lying name.
fn check_output_name(out: &std::path::Path) -> CliResult {
    match out
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
    {
        Some(ext) if ext != "png" => Err(CliError(format!(
            "{}: view writes PNG pictures; name the output .png",
            out.display()
        ))),
        _ => Ok(()),
    }
}
