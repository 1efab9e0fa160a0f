//! Pictures of sections (`voxelscan view`): one 2-D section of an image, or the three orthogonal sections through a
//! voxel side by side, read through the proxy's slicing (only the section's bytes), windowed, coloured, optionally
//! with a second image overlaid, laid out the way nilearn's `plot_anat` shows them (see [`orient`]).
//!
//! Layout of the picture (all sizes in pixels, `N` the scale): each section is `columns × N` by `rows × N` (with
//! `aspect_mm`, each axis's N is multiplied by its voxel size over the smallest voxel size drawn, and the product
//! rounded), framed by a [`MARGIN`] on every side that holds the orientation letters; sections stand side by side,
//! top aligned; a [`CAPTION`] strip along the bottom holds the coordinate. So a picture is
//! `Σ (columns·N + 2·MARGIN)` wide and `max(rows·N) + 2·MARGIN + CAPTION` high.

pub mod canvas;
pub mod colour;
pub mod orient;
mod overlay;

use ndarray::{Array2, Ix2};

use crate::dtype::Scalar;
use crate::error::{Result, VoxelError};
use crate::formats::{Affine, Format, ImageHeader};
use crate::proxy::{ArrayProxy, ProxyOptions};
use crate::slicer::{AxisSel, Index, SliceSpec, canonical_slice};
use canvas::{BLACK, Canvas, GLYPH, WHITE};
use colour::{Colormap, Window};
use orient::{AxisDir, Placement, Plane};
use overlay::{Layer, sample_overlay};

/// Frame around each section, holding the orientation letters.
pub const MARGIN: usize = 12;
/// Strip along the bottom of the picture holding the coordinate.
pub const CAPTION: usize = 12;
/// With no `--scale`, sections are enlarged to at least this many pixels on their longer side...
pub const AUTO_SIDE: usize = 256;
/// ...by at most this factor.
pub const AUTO_SCALE_MAX: usize = 8;
/// The largest `--scale`.
pub const MAX_SCALE: usize = 64;

const AXIS_NAMES: [&str; 7] = ["i", "j", "k", "t", "u", "v", "w"];

/// An image to draw from: its proxy and, for formats with spatial metadata, its voxel-to-world affine.
#[derive(Debug)]
pub struct Image {
    pub proxy: ArrayProxy,
    /// `None` for npy and raw arrays (drawn as if the affine were the identity, without orientation letters).
    pub affine: Option<Affine>,
    pub location: String,
}

impl Image {
    /// Open a path or URL (any location `ArrayProxy::open_location` takes; `raw` as for `--raw`), reading its
    /// header once.
    pub fn open(location: &str, raw: Option<&str>, opts: ProxyOptions) -> Result<Image> {
        use crate::location::{Location, StoreOptions, open_image};
        let image = open_image(&Location::parse(location)?, raw, &StoreOptions::default())?;
        let header = image.header.clone();
        let proxy = image.into_proxy(opts)?;
        Ok(Image::new(proxy, &header, location))
    }

    pub fn new(proxy: ArrayProxy, header: &ImageHeader, location: &str) -> Image {
        let spatial = !matches!(header.format, Format::Npy | Format::Raw);
        Image {
            proxy,
            affine: spatial.then_some(header.affine),
            location: location.to_string(),
        }
    }

    fn affine_or_identity(&self) -> Affine {
        self.affine.unwrap_or(crate::formats::affine::IDENTITY)
    }

    /// The world direction of each of the first three voxel axes.
    fn directions(&self) -> [Option<AxisDir>; 3] {
        orient::io_orientation(&self.affine_or_identity())
    }

    /// The voxel axis (of the first three) that runs along `world`; the axis of that number when none does.
    fn axis_along(&self, world: usize) -> usize {
        let dirs = self.directions();
        (0..3)
            .find(|&a| dirs[a].is_some_and(|d| d.world == world))
            .unwrap_or(world)
    }

    /// One number per voxel is drawn (complex: the real part); RGB and RGBA voxels are refused.
    fn check_drawable(&self) -> Result<()> {
        if matches!(self.proxy.dtype().scalar, Scalar::Rgb24 | Scalar::Rgba32) {
            return Err(VoxelError::Unsupported {
                path: self.location.clone(),
                what: "drawing RGB/RGBA voxels (view draws one value per voxel)".into(),
            });
        }
        Ok(())
    }

    /// The length in mm of a step along voxel axis `axis` (1 for axes past the third, for images without an
    /// affine, and for a zero column).
    fn voxel_size(&self, axis: usize) -> f64 {
        let Some(a) = self.affine.filter(|_| axis < 3) else {
            return 1.0;
        };
        let size = (0..3).map(|r| a[r][axis] * a[r][axis]).sum::<f64>().sqrt();
        if size > 0.0 && size.is_finite() {
            size
        } else {
            1.0
        }
    }

    /// World (mm) coordinates of a voxel (its first three indices).
    fn world(&self, voxel: &[usize]) -> [f64; 3] {
        let a = self.affine_or_identity();
        let v = |k: usize| voxel.get(k).map_or(0.0, |&i| i as f64);
        std::array::from_fn(|r| a[r][0] * v(0) + a[r][1] * v(1) + a[r][2] * v(2) + a[r][3])
    }

    fn in_file(&self, e: VoxelError) -> VoxelError {
        e.in_file(&self.location)
    }
}

/// Which sections to draw.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    /// The middle section across the axis that runs most nearly inferior–superior (axial), first volume.
    Middle,
    /// numpy basic indexing leaving two axes; or an integer for every axis, which names a voxel (as `Point`).
    Spec(SliceSpec),
    /// The sagittal, coronal and axial sections through this voxel; indices past the given ones are 0.
    Point(Vec<usize>),
}

/// A second image drawn over the sections.
#[derive(Debug)]
pub struct Overlay {
    pub image: Image,
    /// Voxels with `|value| <= threshold` (and NaN) are transparent, as nilearn masks them.
    pub threshold: f64,
    /// Opacity of the overlay's colours, 0 to 1.
    pub alpha: f64,
    /// Spans `-max|value|` to `+max|value|` of the drawn overlay voxels.
    pub cmap: Colormap,
}

#[derive(Debug)]
pub struct ViewOptions {
    /// Mirror left and right (the subject's right on the image's left).
    pub radiological: bool,
    /// `None`: the default window of the drawn values ([`Window::from_values`]).
    pub window: Option<Window>,
    pub cmap: Colormap,
    /// `None`: the smallest factor making the largest section [`AUTO_SIDE`] pixels, at most [`AUTO_SCALE_MAX`].
    pub scale: Option<usize>,
    /// Draw spatial sections in millimetres (nilearn's aspect): along each axis a voxel takes `N × its size / the
    /// smallest voxel size` pixels (nearest neighbour), instead of N × N pixels.
    pub aspect_mm: bool,
    pub overlay: Option<Overlay>,
}

impl Default for ViewOptions {
    fn default() -> Self {
        ViewOptions {
            radiological: false,
            window: None,
            cmap: Colormap::gray(),
            scale: None,
            aspect_mm: false,
            overlay: None,
        }
    }
}

/// A drawn picture and what it shows.
#[derive(Debug)]
pub struct Picture {
    pub canvas: Canvas,
    pub window: Window,
    pub scale: usize,
    /// One line saying which sections, where (voxel and mm), with which window.
    pub description: String,
}

/// One section to read: its spec, and where its elements `[a, b]` sit in the array.
#[derive(Debug, Clone)]
struct Section {
    spec: SliceSpec,
    /// The voxel index of element `[0, 0]`.
    origin: Vec<usize>,
    /// For each of the two section axes: (array axis, step, length).
    axes: [(usize, isize, usize); 2],
    placement: Placement,
    /// Pixels per element along each section axis (the scale, or more for larger voxels with `aspect_mm`).
    pixels: [f64; 2],
}

impl Section {
    fn shape(&self) -> [usize; 2] {
        [self.axes[0].2, self.axes[1].2]
    }

    /// (rows, columns) of pixels the section takes on screen.
    fn screen_pixels(&self) -> (usize, usize) {
        let (rows, cols) = self.placement.screen_shape(self.shape());
        let h = self.placement.horizontal;
        let span = |n: usize, px: f64| ((n as f64 * px).round() as usize).max(1);
        (span(rows, self.pixels[1 - h]), span(cols, self.pixels[h]))
    }

    /// The voxel index of element `[a, b]`.
    fn voxel(&self, element: [usize; 2]) -> Vec<usize> {
        let mut v = self.origin.clone();
        for (&(axis, step, _), &e) in self.axes.iter().zip(&element) {
            // In range by construction: the canonical slice's elements lie inside the axis.
            v[axis] = (v[axis] as isize + step * e as isize) as usize;
        }
        v
    }

    /// The integer-indexed axes, as `k=30 t=0`.
    fn fixed_text(&self) -> String {
        let free = [self.axes[0].0, self.axes[1].0];
        self.origin
            .iter()
            .enumerate()
            .filter(|(axis, _)| !free.contains(axis))
            .map(|(axis, i)| format!("{}={i}", AXIS_NAMES.get(axis).copied().unwrap_or("?")))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// Read, colour and lay out the sections `request` names.
pub fn render(image: &Image, request: &Request, opts: &ViewOptions) -> Result<Picture> {
    image.check_drawable()?;
    let (mut sections, point) = plan(image, request, opts.radiological)?;
    let scale = match opts.scale {
        Some(s) if (1..=MAX_SCALE).contains(&s) => s,
        Some(s) => {
            return Err(VoxelError::Invalid(format!(
                "scale {s}: must be 1 to {MAX_SCALE}"
            )));
        }
        None => auto_scale(&sections),
    };
    set_pixels(image, &mut sections, scale, opts.aspect_mm);
    let (width, height) = picture_size(&sections);
    canvas::check_size(width, height)?;
    let values = sections
        .iter()
        .map(|s| read_section(image, s))
        .collect::<Result<Vec<_>>>()?;
    let window = opts
        .window
        .unwrap_or_else(|| Window::from_values(values.iter().flat_map(|v| v.iter().copied())));
    let overlay = match &opts.overlay {
        Some(o) => Some(sample_overlay(image, &sections, o)?),
        None => None,
    };
    let mut canvas = Canvas::new(width, height, BLACK)?;
    let mut x0 = 0;
    for (n, section) in sections.iter().enumerate() {
        let layer = overlay.as_ref().map(|layer| Layer {
            values: &layer.values[n],
            overlay: layer.overlay,
            max_abs: layer.max_abs,
        });
        draw_section(
            &mut canvas,
            x0,
            section,
            &values[n],
            window,
            opts.cmap,
            layer,
        );
        if let Some(voxel) = &point {
            let element = section.axes.map(|(axis, _, _)| voxel[axis]);
            draw_ticks(&mut canvas, x0, section, element);
        }
        let (_, cols) = section.screen_pixels();
        x0 += cols + 2 * MARGIN;
    }
    let (caption, description) = describe(image, &sections, point.as_deref());
    canvas.text(2, height - CAPTION + (CAPTION - GLYPH) / 2, &caption, WHITE);
    let mut description = format!(
        "{description}; window {}",
        describe_window(window, opts.window.is_some())
    );
    // The overlay's colours span ±(its largest |value| drawn): say so, or equal colours could not be compared.
    if let Some(layer) = &overlay {
        description.push_str(&format!(
            "; overlay colours ±{}",
            significant(layer.max_abs)
        ));
    }
    Ok(Picture {
        canvas,
        window,
        scale,
        description,
    })
}

/// The sections to draw, and the voxel when they are the three through a point.
fn plan(
    image: &Image,
    request: &Request,
    radiological: bool,
) -> Result<(Vec<Section>, Option<Vec<usize>>)> {
    let shape = image.proxy.shape().to_vec();
    let spec = match request {
        Request::Spec(spec) => spec.clone(),
        Request::Middle => middle_spec(image)?,
        Request::Point(p) => return point_sections(image, p, radiological),
    };
    let canon = canonical_slice(&spec, &shape).map_err(|e| image.in_file(e))?;
    if canon.items.iter().any(|i| matches!(i, AxisSel::NewAxis)) {
        return Err(image.in_file(VoxelError::Slice(format!(
            "\"{spec}\": None (np.newaxis) adds an axis; a picture shows two of the image's own axes"
        ))));
    }
    let mut origin = Vec::with_capacity(shape.len());
    let mut free = Vec::new();
    for (axis, item) in canon.items.iter().enumerate() {
        match *item {
            AxisSel::Index(i) => origin.push(i),
            AxisSel::Range { start, step, len } => {
                origin.push(start);
                free.push((axis, step, len));
            }
            AxisSel::NewAxis => {}
        }
    }
    match free.as_slice() {
        [] => point_sections(image, &origin, radiological),
        &[a, b] => {
            if a.2 == 0 || b.2 == 0 {
                return Err(image.in_file(VoxelError::Slice(format!(
                    "\"{spec}\" leaves an empty section of shape {:?}",
                    canon.out_shape()
                ))));
            }
            let section = section(image, spec, origin, [a, b], radiological);
            Ok((vec![section], None))
        }
        _ => Err(image.in_file(VoxelError::Slice(format!(
            "\"{spec}\" leaves {} {} (shape {:?}); a picture needs 2, or an integer for every axis for the \
             three sections through that voxel",
            free.len(),
            if free.len() == 1 { "axis" } else { "axes" },
            canon.out_shape()
        )))),
    }
}

fn section(
    image: &Image,
    spec: SliceSpec,
    origin: Vec<usize>,
    axes: [(usize, isize, usize); 2],
    radiological: bool,
) -> Section {
    let dirs = image.directions();
    let dir = |(axis, step, _): (usize, isize, usize)| {
        let d = dirs.get(axis).copied().flatten()?;
        Some(if step < 0 { d.reversed() } else { d })
    };
    let placement = Placement::new(
        [dir(axes[0]), dir(axes[1])],
        radiological,
        image.affine.is_some(),
    );
    Section {
        spec,
        origin,
        axes,
        placement,
        pixels: [1.0; 2],
    }
}

/// The middle axial section of the first volume (`[:, :, n//2, 0, …]` for an RAS image); a 2-D image whole.
fn middle_spec(image: &Image) -> Result<SliceSpec> {
    let shape = image.proxy.shape();
    if shape.len() < 2 {
        return Err(image.in_file(VoxelError::Invalid(format!(
            "a {}-D array has no 2-D section",
            shape.len()
        ))));
    }
    if shape.len() == 2 {
        return Ok(SliceSpec::all());
    }
    let axial = image.axis_along(2);
    let items = shape
        .iter()
        .enumerate()
        .map(|(axis, &n)| match axis {
            a if a == axial => Index::Int((n / 2) as i64),
            a if a < 3 => Index::FULL,
            _ => Index::Int(0),
        })
        .collect();
    Ok(SliceSpec(items))
}

/// The sagittal, coronal and axial sections through voxel `point` (missing trailing indices are 0).
fn point_sections(
    image: &Image,
    point: &[usize],
    radiological: bool,
) -> Result<(Vec<Section>, Option<Vec<usize>>)> {
    let shape = image.proxy.shape();
    let bad = |msg: String| Err(image.in_file(VoxelError::Invalid(msg)));
    if shape.len() < 3 {
        return bad(format!(
            "three sections through a voxel need a 3-D image; this one is {}-D",
            shape.len()
        ));
    }
    if point.len() < 3 || point.len() > shape.len() {
        return bad(format!(
            "voxel {point:?}: give 3 to {} indices (I,J,K[,T…])",
            shape.len()
        ));
    }
    let mut voxel = point.to_vec();
    voxel.resize(shape.len(), 0);
    if let Some(axis) = (0..shape.len()).find(|&a| voxel[a] >= shape[a]) {
        return bad(format!(
            "voxel {point:?}: index {} is out of range for axis {axis} of size {}",
            voxel[axis], shape[axis]
        ));
    }
    let sections = Plane::ORTHO
        .iter()
        .map(|plane| {
            let fixed = image.axis_along(plane.fixed_world());
            let free: Vec<usize> = (0..3).filter(|&a| a != fixed).collect();
            let items = voxel
                .iter()
                .enumerate()
                .map(|(axis, &i)| {
                    if free.contains(&axis) {
                        Index::FULL
                    } else {
                        Index::Int(i as i64)
                    }
                })
                .collect();
            let mut origin = voxel.clone();
            for &a in &free {
                origin[a] = 0;
            }
            let axes = [(free[0], 1, shape[free[0]]), (free[1], 1, shape[free[1]])];
            section(image, SliceSpec(items), origin, axes, radiological)
        })
        .collect();
    Ok((sections, Some(voxel)))
}

fn auto_scale(sections: &[Section]) -> usize {
    let side = sections
        .iter()
        .flat_map(|s| s.shape())
        .max()
        .unwrap_or(1)
        .max(1);
    AUTO_SIDE.div_ceil(side).clamp(1, AUTO_SCALE_MAX)
}

/// Pixels per element: `scale` along every axis; with `aspect_mm`, spatial sections' axes scaled by their voxel
/// size over the smallest voxel size drawn (so that every section is in the same millimetres).
fn set_pixels(image: &Image, sections: &mut [Section], scale: usize, aspect_mm: bool) {
    let scale = scale as f64;
    let mm = |s: &Section, k: usize| image.voxel_size(s.axes[k].0);
    let smallest = sections
        .iter()
        .filter(|s| aspect_mm && s.placement.plane.is_some())
        .flat_map(|s| [mm(s, 0), mm(s, 1)])
        .fold(f64::INFINITY, f64::min);
    for s in sections.iter_mut() {
        s.pixels = if aspect_mm && s.placement.plane.is_some() && smallest.is_finite() {
            [scale * mm(s, 0) / smallest, scale * mm(s, 1) / smallest]
        } else {
            [scale; 2]
        };
    }
}

/// (width, height) of the picture; saturating, so that an absurd size is refused by `check_size`.
fn picture_size(sections: &[Section]) -> (usize, usize) {
    let mut width = 0usize;
    let mut height = 0usize;
    for s in sections {
        let (rows, cols) = s.screen_pixels();
        width = width.saturating_add(cols.saturating_add(2 * MARGIN));
        height = height.max(rows);
    }
    (width, height.saturating_add(2 * MARGIN + CAPTION))
}

/// The section's values as f64 (scaled as nibabel scales them; complex: real part).
fn read_section(image: &Image, section: &Section) -> Result<Array2<f64>> {
    let array = image
        .proxy
        .slice(&section.spec)
        .map_err(|e| image.in_file(e))?;
    // The float64 copies (the cast, its C-order layout, the window's sorted values) are the picture's big
    // buffers: refuse them before allocating, as any read sized from a header is.
    let voxels = array.shape.iter().map(|&d| d as u64).product::<u64>();
    crate::memory::check(
        &image.location,
        "the section as float64",
        crate::memory::bytes_of(voxels, 3 * 8),
    )?;
    array
        .to_f64_c_order()
        .and_then(|a| {
            a.into_dimensionality::<Ix2>()
                .map_err(|e| VoxelError::Invalid(format!("section is not 2-D: {e}")))
        })
        .map_err(|e| image.in_file(e))
}

/// Paint one section (and its letters) into the frame whose left edge is at `x0`.
fn draw_section(
    canvas: &mut Canvas,
    x0: usize,
    section: &Section,
    values: &Array2<f64>,
    window: Window,
    cmap: Colormap,
    overlay: Option<Layer<'_, &Array2<f64>>>,
) {
    let shape = section.shape();
    let p = &section.placement;
    let (rows, cols) = p.screen_shape(shape);
    // Each element's colour once, in screen order; then every pixel takes its element's (nearest neighbour).
    let mut colours = Vec::with_capacity(rows * cols);
    for row in 0..rows {
        for col in 0..cols {
            let [a, b] = p.element_at(shape, row, col);
            let v = values[[a, b]];
            let mut colour = if v.is_nan() {
                BLACK
            } else {
                cmap.colour(window.level(v))
            };
            if let Some(layer) = &overlay {
                let (o, ov) = (layer.values[[a, b]], layer.overlay);
                if o.is_finite() && o.abs() > ov.threshold && layer.max_abs > 0.0 {
                    let top = ov.cmap.colour((o / layer.max_abs + 1.0) / 2.0);
                    colour = blend(colour, top, ov.alpha);
                }
            }
            colours.push(colour);
        }
    }
    let (h, w) = section.screen_pixels();
    let [px_h, px_v] = [p.horizontal, 1 - p.horizontal].map(|k| section.pixels[k]);
    let element = |pixel: usize, px: f64, n: usize| ((pixel as f64 / px) as usize).min(n - 1);
    for y in 0..h {
        let row = element(y, px_v, rows);
        for x in 0..w {
            let col = element(x, px_h, cols);
            canvas.set(x0 + MARGIN + x, MARGIN + y, colours[row * cols + col]);
        }
    }
    let pad = (MARGIN - GLYPH) / 2;
    let mid_y = (MARGIN + h / 2).saturating_sub(GLYPH / 2);
    let mid_x = (x0 + MARGIN + w / 2).saturating_sub(GLYPH / 2);
    let spots = [
        (x0 + pad, mid_y),
        (x0 + MARGIN + w + pad, mid_y),
        (mid_x, pad),
        (mid_x, MARGIN + h + pad),
    ];
    for (label, (x, y)) in p.labels.iter().zip(spots) {
        if let Some(c) = label {
            canvas.text(x, y, &c.to_string(), WHITE);
        }
    }
}

/// Length and colour of the ticks that point at the voxel the three sections go through.
const TICK: usize = 3;
const TICK_COLOUR: [u8; 3] = [255, 64, 64];

/// Ticks in the frame around a section, at the row and column of `element` (nilearn draws a cross over the image
/// instead; ticks leave the voxels visible).
fn draw_ticks(canvas: &mut Canvas, x0: usize, section: &Section, element: [usize; 2]) {
    let p = &section.placement;
    let (row, col) = p.screen_of(section.shape(), element);
    let (h, w) = section.screen_pixels();
    let [px_h, px_v] = [p.horizontal, 1 - p.horizontal].map(|k| section.pixels[k]);
    let x = x0 + MARGIN + ((col as f64 + 0.5) * px_h) as usize;
    let y = MARGIN + ((row as f64 + 0.5) * px_v) as usize;
    for d in 1..=TICK {
        canvas.set(x, MARGIN - d, TICK_COLOUR);
        canvas.set(x, MARGIN + h - 1 + d, TICK_COLOUR);
        canvas.set(x0 + MARGIN - d, y, TICK_COLOUR);
        canvas.set(x0 + MARGIN + w - 1 + d, y, TICK_COLOUR);
    }
}

fn blend(under: [u8; 3], over: [u8; 3], alpha: f64) -> [u8; 3] {
    std::array::from_fn(|k| {
        (f64::from(under[k]) * (1.0 - alpha) + f64::from(over[k]) * alpha).round() as u8
    })
}

/// `LO to HI`, and where the window came from when it was not given.
fn describe_window(window: Window, given: bool) -> String {
    let range = format!("{} to {}", significant(window.lo), significant(window.hi));
    if given {
        return range;
    }
    let (lo, hi) = colour::DEFAULT_PERCENTILES;
    format!("{range} (percentiles {lo} and {hi} of the non-zero values)")
}

/// `v` with about 5 significant digits, trailing zeros dropped (`2989.6`, `0.0012346`, `-40`).
fn significant(v: f64) -> String {
    if v == 0.0 || !v.is_finite() {
        return v.to_string();
    }
    let magnitude = v.abs().log10().floor() as i32;
    let decimals = (4 - magnitude).clamp(0, 15) as usize;
    let text = format!("{v:.decimals$}");
    if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        text
    }
}

/// (caption on the picture, description for the terminal).
fn describe(image: &Image, sections: &[Section], point: Option<&[usize]>) -> (String, String) {
    let mm = |w: [f64; 3]| format!("({:.1}, {:.1}, {:.1})", w[0], w[1], w[2]);
    if let Some(voxel) = point {
        let w = image.world(voxel);
        let ijk = voxel
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",");
        let parts: Vec<String> = sections
            .iter()
            .map(|s| {
                let name = s.placement.plane.map_or("section", Plane::name);
                format!("{name} [{}]", s.spec)
            })
            .collect();
        let spatial = image
            .affine
            .map_or(String::new(), |_| format!(" = {} mm", mm(w)));
        return (
            format!("({ijk}){}", spatial.replace(", ", ",")),
            format!("voxel ({ijk}){spatial}: {}", parts.join(", ")),
        );
    }
    let s = &sections[0];
    let fixed = s.fixed_text();
    let name = s.placement.plane.map_or("section", Plane::name);
    let centre = s.voxel([s.axes[0].2 / 2, s.axes[1].2 / 2]);
    let (caption_mm, text_mm) = match (s.placement.plane, image.affine) {
        (Some(plane), Some(_)) => {
            let axis = plane.fixed_world();
            let v = image.world(&centre)[axis];
            let letter = ["x", "y", "z"][axis];
            (
                format!(" {letter}={v:.1}mm"),
                format!(" at {letter} = {v:.2} mm"),
            )
        }
        _ => (String::new(), String::new()),
    };
    (
        format!("{fixed}{caption_mm}"),
        format!("{name} [{}] ({fixed}){text_mm}", s.spec),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section_with(axes: [(usize, isize, usize); 2], placement: Placement) -> Section {
        Section {
            spec: SliceSpec::all(),
            origin: vec![1, 2, 3],
            axes,
            placement,
            pixels: [1.0; 2],
        }
    }

    #[test]
    fn voxels_of_a_stepped_section() {
        let s = section_with([(0, 2, 3), (2, -1, 4)], Placement::PLAIN);
        assert_eq!(s.voxel([0, 0]), vec![1, 2, 3]);
        assert_eq!(s.voxel([2, 3]), vec![5, 2, 0]);
        assert_eq!(s.fixed_text(), "j=2");
    }

    #[test]
    fn sizes_and_scale() {
        let s = section_with([(0, 1, 96), (1, 1, 60)], Placement::PLAIN);
        assert_eq!(auto_scale(std::slice::from_ref(&s)), 3);
        let mut s2 = s.clone();
        s2.pixels = [2.0; 2];
        assert_eq!(picture_size(&[s2.clone(), s2]), (2 * (120 + 24), 192 + 36));
        // 1.5 pixels per element down 96 elements, 2.5 across 60 (PLAIN: axis 1 across).
        let mut s3 = s.clone();
        s3.pixels = [1.5, 2.5];
        assert_eq!(s3.screen_pixels(), (144, 150));
        let tiny = section_with([(0, 1, 2), (1, 1, 2)], Placement::PLAIN);
        assert_eq!(auto_scale(&[tiny]), AUTO_SCALE_MAX);
    }

    #[test]
    fn numbers_for_people() {
        assert_eq!(significant(2989.6359772729875), "2989.6");
        assert_eq!(significant(12740.92), "12741");
        assert_eq!(significant(0.00123456), "0.0012346");
        assert_eq!(significant(-40.0), "-40");
        assert_eq!(significant(0.0), "0");
    }

    #[test]
    fn blending() {
        assert_eq!(blend([0, 0, 0], [200, 100, 50], 1.0), [200, 100, 50]);
        assert_eq!(blend([100, 100, 100], [200, 0, 50], 0.5), [150, 50, 75]);
    }
}
