//! Image headers: NIfTI-1/2 (single files and `.hdr`/`.img` pairs), Analyze 7.5 with its SPM99/SPM2 variants,
//! MGH/MGZ, NumPy `.npy` and headerless raw files, each parsed into one [`ImageHeader`] that says where the
//! array lives and how nibabel would read it (reference §4).
//!
//! ```text
//! path ─► detect (magic first, name second; gzip by magic) ─► nifti1 | nifti2 | analyze | mgh | npy ─► ImageHeader
//! spec ─► raw ───────────────────────────────────────────────────────────────────────────────────────► ImageHeader
//! ```
//!
//! Headers are read by streaming: only the header bytes are read (decompressed for `.gz`), except for a 4-D
//! MGH, whose TR sits in a footer after the data. Decisions where nibabel is odd or silent:
//! * a single-file NIfTI with `vox_offset == 0` is read from byte 0 as nibabel does (reference Q12);
//! * `dim[0]` outside 0..=7 (after the byte-order guess) is an error; nibabel slices `dim` with it;
//! * the data file must exist, and an uncompressed one must hold `offset + data bytes` (`VoxelError::Truncated`),
//!   where nibabel fails only when the data are read;
//! * a NIfTI-2 file with a CIFTI-2 intent code loads as `Nifti2Image` (nibabel makes a `Cifti2Image`).

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use crate::dtype::DType;
use crate::error::{Result, VoxelError};
use crate::location::Location;

pub(crate) use crate::layout::NO_SCALING;
pub use crate::layout::{ArrayLayout, Factor, Order};

pub mod affine;
pub mod analyze;
pub mod detect;
mod fault;
mod fields;
pub mod mgh;
pub mod nifti1;
pub mod nifti2;
pub mod npy;
pub mod raw;
mod source;

pub use affine::{Affine, WorldMeta};
pub use fault::HeaderFault;
pub use raw::parse_raw_spec;

use source::{PartsSource, SliceSource, Source, StreamSource};

/// The image class nibabel would load a file as (plus `npy` and `raw`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Format {
    Nifti1Image,
    Nifti1Pair,
    Nifti2Image,
    Nifti2Pair,
    Spm2Analyze,
    Spm99Analyze,
    Analyze,
    Mgh,
    Npy,
    Raw,
}

impl Format {
    pub const ALL: [Format; 10] = [
        Format::Nifti1Image,
        Format::Nifti1Pair,
        Format::Nifti2Image,
        Format::Nifti2Pair,
        Format::Spm2Analyze,
        Format::Spm99Analyze,
        Format::Analyze,
        Format::Mgh,
        Format::Npy,
        Format::Raw,
    ];

    /// nibabel's class name (`"Nifti1Image"`, `"Spm2AnalyzeImage"`, `"MGHImage"`, ...), `"npy"` or `"raw"`.
    pub fn name(&self) -> &'static str {
        match self {
            Format::Nifti1Image => "Nifti1Image",
            Format::Nifti1Pair => "Nifti1Pair",
            Format::Nifti2Image => "Nifti2Image",
            Format::Nifti2Pair => "Nifti2Pair",
            Format::Spm2Analyze => "Spm2AnalyzeImage",
            Format::Spm99Analyze => "Spm99AnalyzeImage",
            Format::Analyze => "AnalyzeImage",
            Format::Mgh => "MGHImage",
            Format::Npy => "npy",
            Format::Raw => "raw",
        }
    }

    /// Header and data in separate `.hdr` / `.img` files.
    pub fn is_pair(&self) -> bool {
        matches!(
            self,
            Format::Nifti1Pair
                | Format::Nifti2Pair
                | Format::Spm2Analyze
                | Format::Spm99Analyze
                | Format::Analyze
        )
    }
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// How the data file is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Compression {
    None,
    Gzip,
}

/// Everything needed to read an image's array, and its geometry.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageHeader {
    pub format: Format,
    /// Where the array is in the data file and how it reads.
    pub layout: ArrayLayout,
    pub affine: Affine,
    pub zooms: Vec<f64>,
    /// The affine's space and the time unit (see [`WorldMeta`]).
    pub world: WorldMeta,
    /// Where the header was read from: a local path or an object URL.
    pub header_file: Location,
    /// Same as `header_file` except for `.hdr`/`.img` pairs.
    pub data_file: Location,
    /// Compression of the data file.
    pub compression: Compression,
    /// Bytes of the (decompressed) header file the parser consumed (diagnostics).
    pub header_bytes: u64,
}

impl ImageHeader {
    pub fn ndim(&self) -> usize {
        self.layout.ndim()
    }

    /// The data file's path, or an error for data that are not in a local file (an object).
    pub fn data_path(&self) -> Result<&Path> {
        self.data_file.as_path().ok_or_else(|| {
            VoxelError::Invalid(format!(
                "{}: the data are not in a local file",
                self.data_file
            ))
        })
    }
}

/// What a format parser produces; file names and compression are added by [`assemble`].
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Parsed {
    pub format: Format,
    pub layout: ArrayLayout,
    pub affine: Affine,
    pub zooms: Vec<f64>,
    pub world: WorldMeta,
    pub header_bytes: u64,
}

/// Convert dims to a shape: no negative entries, and an array size (with `offset`) that fits in 64 bits.
pub(crate) fn checked_shape(
    path: &Path,
    dims: &[i64],
    dtype: DType,
    offset: u64,
) -> Result<Vec<usize>> {
    let shape = dims
        .iter()
        .map(|&d| usize::try_from(d))
        .collect::<Result<Vec<usize>, _>>()
        .map_err(|_| {
            VoxelError::header_field(
                path,
                "dim",
                format!("{dims:?}"),
                format!("negative dimension in shape {dims:?}"),
            )
        })?;
    if ArrayLayout::new(shape.clone(), dtype)
        .with_offset(offset)
        .checked_end()
        .is_none()
    {
        return Err(VoxelError::header_field(
            path,
            "dim",
            format!("{dims:?}"),
            format!("shape {dims:?} of {dtype} at offset {offset} is too large (size overflows)"),
        ));
    }
    Ok(shape)
}

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
const BZIP2_MAGIC: &[u8] = b"BZh";
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];
/// Cap on what `parse_header_bytes` decompresses from a gzip prefix.
const MAX_PREFIX_INFLATE: u64 = 64 << 20;

/// Read the header of an image file: format detected by magic first, file name second; `.gz` (any case, or
/// any gzip content) decompressed by streaming just the header bytes. For a pair, `path` may name either the
/// `.hdr` or the `.img`. The data file must exist; an uncompressed one must be long enough.
pub fn read_header(path: &Path) -> Result<ImageHeader> {
    read_header_impl(path, None)
}

/// Read a header as a given image class, as `nib.<Class>.load(path)` would (e.g. a plain Analyze pair as
/// `Spm99Analyze`, which `read_header` loads as `Spm2Analyze` like `nib.load`).
pub fn read_header_as(path: &Path, format: Format) -> Result<ImageHeader> {
    if format == Format::Raw {
        return Err(VoxelError::Invalid(format!(
            "{}: a raw file needs a spec (parse_raw_spec)",
            path.display()
        )));
    }
    read_header_impl(path, Some(format))
}

fn read_header_impl(path: &Path, forced: Option<Format>) -> Result<ImageHeader> {
    let header_path = detect::header_path_for(path);
    let file = File::open(&header_path).map_err(|e| VoxelError::io(&header_path, e))?;
    let len = file
        .metadata()
        .map_err(|e| VoxelError::io(&header_path, e))?
        .len();
    if len == 0 {
        return Err(VoxelError::header(&header_path, "empty file"));
    }
    let mut reader = BufReader::new(file);
    let head = reader
        .fill_buf()
        .map_err(|e| VoxelError::io(&header_path, e))?
        .to_vec();
    let compression = container(&head, &header_path)?;
    let parsed = match compression {
        Compression::Gzip => {
            let mut src =
                StreamSource::new(flate2::bufread::MultiGzDecoder::new(reader), &header_path);
            parse_source(&mut src, &header_path, forced)?
        }
        Compression::None => {
            let mut src = StreamSource::new(reader, &header_path);
            parse_source(&mut src, &header_path, forced)?
        }
    };
    let header = assemble(parsed, &Location::Path(header_path), compression)?;
    check_data_file(&header)?;
    Ok(header)
}

/// Parse a header from a bounded prefix of the header file as stored (for object storage): gzip content is
/// decompressed here. When the prefix is too short this returns `VoxelError::Truncated { expected, actual }`:
/// fetch at least `expected` bytes (counted in decompressed bytes for gzip: fetch a longer compressed prefix)
/// and retry, or call [`parse_header_file`] with the whole file if it is shorter than that. The data file is
/// not checked.
pub fn parse_header_bytes(bytes: &[u8], path_hint: &Path) -> Result<ImageHeader> {
    parse_bytes(bytes, path_hint, false).map(|(h, _)| h)
}

/// Parse a header from the entire header file as stored (decompressing gzip content). For single-file formats
/// the data section is checked against the bytes given; pair data files are not touched.
pub fn parse_header_file(bytes: &[u8], path_hint: &Path) -> Result<ImageHeader> {
    let (header, content_len) = parse_bytes(bytes, path_hint, true)?;
    if !header.format.is_pair() {
        check_data_len(&header, content_len)?;
    }
    Ok(header)
}

/// Parse a header from parts of the header file's content (decompressed already), for readers that fetch byte
/// ranges: `head` from byte 0, optionally `tail = (offset, bytes)` further on (an MGH footer), and the content's
/// length when known. A read of bytes not given is `VoxelError::Truncated { expected, .. }`: fetch them and
/// retry. `compression` is how the file is stored; `hint` names the image (a pair by either half). Neither the
/// data nor its length is checked.
pub fn parse_header_parts(
    head: &[u8],
    tail: Option<(u64, &[u8])>,
    content_len: Option<u64>,
    hint: &Location,
    compression: Compression,
) -> Result<ImageHeader> {
    let header_name = detect::header_path_for(&hint.name());
    if content_len == Some(0) {
        return Err(VoxelError::header(&header_name, "empty file"));
    }
    let mut src = PartsSource::new(head, tail, content_len, &header_name);
    let parsed = parse_source(&mut src, &header_name, None)?;
    assemble(parsed, &hint.renamed(&header_name)?, compression)
}

/// The header, and the length of the (decompressed) content it was parsed from.
fn parse_bytes(bytes: &[u8], path_hint: &Path, whole: bool) -> Result<(ImageHeader, u64)> {
    let header_path = detect::header_path_for(path_hint);
    if bytes.is_empty() && whole {
        return Err(VoxelError::header(&header_path, "empty file"));
    }
    let compression = container(bytes, &header_path)?;
    let (content, complete) = match compression {
        Compression::Gzip => {
            let cap = if whole { u64::MAX } else { MAX_PREFIX_INFLATE };
            gunzip(bytes, cap, &header_path)?
        }
        Compression::None => (bytes.to_vec(), whole),
    };
    let mut src = SliceSource::new(&content, complete, &header_path);
    let parsed = parse_source(&mut src, &header_path, None)?;
    Ok((
        assemble(parsed, &Location::Path(header_path), compression)?,
        content.len() as u64,
    ))
}

/// Decompress (a prefix of) a gzip stream: the bytes and whether the stream ended within `bytes`.
fn gunzip(bytes: &[u8], cap: u64, path: &Path) -> Result<(Vec<u8>, bool)> {
    let mut out = Vec::new();
    let mut dec = flate2::bufread::MultiGzDecoder::new(bytes).take(cap);
    match dec.read_to_end(&mut out) {
        Ok(_) => {
            let complete = (out.len() as u64) < cap;
            Ok((out, complete))
        }
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok((out, false)),
        Err(e) => Err(VoxelError::header(
            path,
            format!("corrupt gzip stream: {e}"),
        )),
    }
}

/// Whether the stored bytes are gzip (by magic; a `.gz`/`.mgz` name whose content is not gzip is an error, as
/// in nibabel); other compressors are recognised and refused.
pub(crate) fn container(head: &[u8], path: &Path) -> Result<Compression> {
    if head.starts_with(&GZIP_MAGIC) {
        Ok(Compression::Gzip)
    } else if detect::compression_by_name(path) == Compression::Gzip {
        Err(VoxelError::header(
            path,
            "the name says gzip but the content is not a gzip stream",
        ))
    } else if head.starts_with(&ZSTD_MAGIC)
        || (head.starts_with(BZIP2_MAGIC) && detect::has_suffix(path, ".bz2"))
    {
        Err(VoxelError::Unsupported {
            path: path.display().to_string(),
            what: "bzip2/zstd compressed files (only gzip is read)".into(),
        })
    } else {
        Ok(Compression::None)
    }
}

/// Detect (unless forced) and run the format's parser.
fn parse_source(src: &mut dyn Source, path: &Path, forced: Option<Format>) -> Result<Parsed> {
    let format = match forced {
        Some(f) => f,
        None => detect::detect(src, path)?,
    };
    match format {
        Format::Nifti1Image | Format::Nifti1Pair => {
            nifti1::parse(src, format == Format::Nifti1Image)
        }
        Format::Nifti2Image | Format::Nifti2Pair => {
            nifti2::parse(src, format == Format::Nifti2Image)
        }
        Format::Spm2Analyze => analyze::parse(src, analyze::Variant::Spm2),
        Format::Spm99Analyze => analyze::parse(src, analyze::Variant::Spm99),
        Format::Analyze => analyze::parse(src, analyze::Variant::Analyze),
        Format::Mgh => mgh::parse(src),
        Format::Npy => npy::parse(src),
        Format::Raw => Err(VoxelError::Invalid(format!(
            "{}: a raw file needs a spec (parse_raw_spec)",
            path.display()
        ))),
    }
}

/// Attach file names: a pair's data file is the `.img` beside the `.hdr` (nibabel's naming rules); a single
/// file holds its own data, compressed like its header.
fn assemble(p: Parsed, header: &Location, header_compression: Compression) -> Result<ImageHeader> {
    let header_path = &header.name();
    let (data_file, compression) = if p.format.is_pair() {
        let data = detect::pair_data_path(header_path).ok_or_else(|| {
            let msg = match p.format {
                Format::Nifti1Pair | Format::Nifti2Pair => {
                    format!("a {} header (pair magic) needs a .hdr/.img file name to find its data", p.format.name())
                }
                _ => "cannot work out the file type: no NIfTI magic, and an Analyze header needs a .hdr/.img pair"
                    .to_string(),
            };
            VoxelError::header(header_path, msg)
        })?;
        let c = detect::compression_by_name(&data);
        (header.renamed(&data)?, c)
    } else {
        (header.clone(), header_compression)
    };
    Ok(ImageHeader {
        format: p.format,
        layout: p.layout,
        affine: p.affine,
        zooms: p.zooms,
        world: p.world,
        header_file: header.clone(),
        data_file,
        compression,
        header_bytes: p.header_bytes,
    })
}

/// The data file exists; uncompressed, it holds at least `offset + data bytes`; gzip-compressed, it is long enough
/// to expand to that many bytes at all (deflate's densest code).
pub(crate) fn check_data_file(h: &ImageHeader) -> Result<()> {
    let Some(path) = h.data_file.as_path() else {
        return Ok(());
    };
    let meta = std::fs::metadata(path).map_err(|e| VoxelError::io(path, e))?;
    match h.compression {
        Compression::None => check_data_len(h, meta.len()),
        Compression::Gzip => check_inflatable(h, meta.len()),
    }
}

/// Deflate emits at most 258 bytes per 2 bits of input (a length-258 match whose length and distance codes are one
/// bit each): 1032 bytes per compressed byte; gzip members only add overhead. A little slack for the first literal.
const MAX_DEFLATE_RATIO: u64 = 1032;
const DEFLATE_SLACK: u64 = 4096;

/// A gzip file of `compressed` bytes cannot hold more than `compressed * 1032` bytes, however it was made: a header
/// claiming more describes data that is not there (a truncated file or a lying header). Refusing it here keeps
/// every later step from sizing anything from the claim.
fn check_inflatable(h: &ImageHeader, compressed: u64) -> Result<()> {
    let expected = h.layout.end();
    let most = compressed
        .saturating_mul(MAX_DEFLATE_RATIO)
        .saturating_add(DEFLATE_SLACK);
    if expected > most {
        return Err(VoxelError::header(
            h.data_file.name(),
            format!(
                "file is truncated or the header is wrong: it claims {expected} bytes of data, but {compressed} \
                 gzip-compressed bytes expand to at most {most}"
            ),
        ));
    }
    Ok(())
}

fn check_data_len(h: &ImageHeader, actual: u64) -> Result<()> {
    let expected = h.layout.end();
    if actual < expected {
        return Err(VoxelError::Truncated {
            path: h.data_file.display(),
            expected,
            actual,
        });
    }
    Ok(())
}

/// Run every parser on arbitrary bytes (prefix and whole-file modes, every format forced, the raw spec and npy
/// header grammars). For fuzzing: it must return, never panic. A test helper, not API (the `testing` feature).
#[cfg(any(test, feature = "testing"))]
pub fn fuzz_parse(bytes: &[u8]) {
    for hint in [
        "f.nii", "f.hdr", "f.img.gz", "f.mgh", "f.mgz", "f.npy", "f.nii.gz", "f",
    ] {
        let hint = Path::new(hint);
        let _ = parse_header_bytes(bytes, hint);
        let _ = parse_header_file(bytes, hint);
    }
    let hint = Path::new("f.hdr");
    for format in Format::ALL {
        for whole in [false, true] {
            let mut src = SliceSource::new(bytes, whole, hint);
            let _ = parse_source(&mut src, hint, Some(format));
        }
    }
    let text = String::from_utf8_lossy(bytes);
    let _ = raw::parse_spec(&text, Path::new("f.raw"));
    let _ = npy::parse_header_text(&text, Path::new("f.npy"));
}

#[cfg(test)]
pub(crate) mod test_util;

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::path::PathBuf;

    use super::test_util::{HeaderBuilder, mgh_file};
    use super::*;
    use crate::dtype::{ByteOrder, Scalar};

    fn fixture_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/nibabel")
    }

    fn gz(bytes: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
        e.write_all(bytes).unwrap();
        e.finish().unwrap()
    }

    /// What nibabel 5.4.2 reports for `img.header.get_zooms()` (hard-coded from a one-off run).
    fn nibabel_zooms(name: &str) -> Vec<f64> {
        match name {
            "anatomical.nii" => vec![2.0, 2.0, 2.0],
            "example4d.nii.gz" | "example_nifti2.nii.gz" => {
                vec![2.0, 2.0, 2.1999990940093994, 2000.0]
            }
            "functional.nii" => vec![4.0, 4.0, 8.0, 2.0],
            "reoriented_anat_moved.nii" => vec![4.0, 4.0, 4.0],
            "standard.nii.gz" => vec![1.0, 3.0, 2.0],
            "test.mgz" => vec![1.0, 1.0, 1.0, 2.0],
            other => panic!("no zooms for {other}"),
        }
    }

    #[test]
    fn real_fixtures_match_nibabel() {
        let text = std::fs::read_to_string(fixture_dir().join("expected.json")).unwrap();
        let expected: serde_json::Value = serde_json::from_str(&text).unwrap();
        let files = expected.as_object().unwrap();
        assert_eq!(files.len(), 7);
        for (name, want) in files {
            let path = fixture_dir().join(name);
            let h = read_header(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(h.format.name(), want["format"], "{name}");
            let shape: Vec<usize> = want["shape"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_u64().unwrap() as usize)
                .collect();
            assert_eq!(h.layout.shape, shape, "{name}");
            assert_eq!(h.layout.dtype.numpy_str(), want["dtype"], "{name}");
            assert_eq!(h.layout.offset, want["offset"].as_u64().unwrap(), "{name}");
            assert_eq!(
                h.layout.slope.value(),
                want["slope"].as_f64().unwrap(),
                "{name}"
            );
            assert_eq!(
                h.layout.inter.value(),
                want["inter"].as_f64().unwrap(),
                "{name}"
            );
            for (r, row) in want["affine"].as_array().unwrap().iter().enumerate() {
                for (c, v) in row.as_array().unwrap().iter().enumerate() {
                    let v = v.as_f64().unwrap();
                    assert!(
                        (h.affine[r][c] - v).abs() < 1e-5,
                        "{name} affine[{r}][{c}] {} vs {v}",
                        h.affine[r][c]
                    );
                }
            }
            assert_eq!(h.zooms, nibabel_zooms(name), "{name}");
            assert_eq!(h.layout.order, Order::F);
            assert_eq!(
                (h.header_file.as_path(), h.data_file.as_path()),
                (Some(path.as_path()), Some(path.as_path()))
            );
            let gzipped = name.ends_with(".gz") || name.ends_with(".mgz");
            assert_eq!(
                h.compression,
                if gzipped {
                    Compression::Gzip
                } else {
                    Compression::None
                }
            );
            // The same header from the bytes, whole or as growing prefixes.
            let bytes = std::fs::read(&path).unwrap();
            let from_file = parse_header_file(&bytes, &path).unwrap();
            assert_eq!(from_file, h, "{name}");
            assert_eq!(parse_by_prefixes(&bytes, &path), h, "{name}");
        }
        // Extensions in example4d.nii.gz end at vox_offset 416.
        let h = read_header(&fixture_dir().join("example4d.nii.gz")).unwrap();
        assert_eq!(h.header_bytes, 416);
        // functional.nii is the scaled one: float64 factors widened from the float32 fields.
        let h = read_header(&fixture_dir().join("functional.nii")).unwrap();
        for f in [h.layout.slope, h.layout.inter] {
            assert!(
                matches!(f, Factor::F64(v) if v == f64::from(v as f32) && v != 0.0 && v != 1.0),
                "{f:?}"
            );
        }
    }

    /// An object-storage style loop: fetch 64 bytes, then as many as the parser asks for (doubling for gzip).
    fn parse_by_prefixes(bytes: &[u8], path: &Path) -> ImageHeader {
        let mut n = 64.min(bytes.len());
        loop {
            match parse_header_bytes(&bytes[..n], path) {
                Ok(h) => return h,
                Err(VoxelError::Truncated {
                    expected, actual, ..
                }) => {
                    assert!(expected > actual, "no progress: {expected} <= {actual}");
                    assert!(
                        n < bytes.len(),
                        "prefix parsing wants more than the whole file"
                    );
                    let want = if bytes.starts_with(&GZIP_MAGIC) {
                        n * 2
                    } else {
                        expected as usize
                    };
                    n = want.min(bytes.len());
                }
                Err(e) => panic!("{}: {e}", path.display()),
            }
        }
    }

    fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }

    #[test]
    fn pairs_find_their_other_half() {
        let dir = tempfile::tempdir().unwrap();
        let hdr = HeaderBuilder::nifti1(ByteOrder::Big, &[2, 3], 4, false)
            .vox_offset(8.0)
            .build();
        let data = vec![7u8; 8 + 12];
        for (h, i) in [("a.hdr", "a.img"), ("B.HDR", "B.IMG")] {
            let hp = write(dir.path(), h, &hdr);
            let ip = write(dir.path(), i, &data);
            for open in [&hp, &ip] {
                let got = read_header(open).unwrap();
                assert_eq!(got.format, Format::Nifti1Pair);
                assert_eq!(
                    (got.header_file.as_path(), got.data_file.as_path()),
                    (Some(hp.as_path()), Some(ip.as_path()))
                );
                assert_eq!((got.layout.offset, got.compression), (8, Compression::None));
                assert_eq!(got.layout.dtype.numpy_str(), ">i2");
            }
        }
        // Gzipped pair, upper-case suffix: the .img.GZ is gzip by name.
        let hp = write(dir.path(), "c.hdr.GZ", &gz(&hdr));
        let ip = write(dir.path(), "c.img.GZ", &gz(&data));
        let got = read_header(&ip).unwrap();
        assert_eq!(
            (got.header_file.as_path(), got.data_file.as_path()),
            (Some(hp.as_path()), Some(ip.as_path()))
        );
        assert_eq!(got.compression, Compression::Gzip);
        // A missing .img is an error naming it.
        write(dir.path(), "d.hdr", &hdr);
        let e = read_header(&dir.path().join("d.hdr"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("d.img"), "{e}");
        // A missing .hdr when opening the .img.
        write(dir.path(), "e.img", &data);
        let e = read_header(&dir.path().join("e.img"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("e.hdr"), "{e}");
        // A short .img: truncated, naming the data file with expected vs actual.
        write(dir.path(), "f.hdr", &hdr);
        write(dir.path(), "f.img", &data[..15]);
        match read_header(&dir.path().join("f.hdr")) {
            Err(VoxelError::Truncated {
                path,
                expected,
                actual,
            }) => {
                assert!(path.ends_with("f.img"), "{path}");
                assert_eq!((expected, actual), (20, 15));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn analyze_pairs_load_as_spm2_unless_asked() {
        let dir = tempfile::tempdir().unwrap();
        let hdr = HeaderBuilder::analyze(ByteOrder::Little, &[2, 2], 2)
            .f32_at(112, 0.5)
            .f32_at(116, 3.0)
            .build();
        let hp = write(dir.path(), "s.hdr", &hdr);
        write(dir.path(), "s.img", &[1, 2, 3, 4]);
        let h = read_header(&hp).unwrap();
        assert_eq!(h.format, Format::Spm2Analyze);
        assert_eq!(h.format.name(), "Spm2AnalyzeImage");
        assert_eq!(
            (h.layout.slope, h.layout.inter),
            (Factor::F64(0.5), Factor::F64(3.0))
        );
        let h = read_header_as(&hp, Format::Spm99Analyze).unwrap();
        assert_eq!(
            (h.format.name(), h.layout.slope, h.layout.inter),
            ("Spm99AnalyzeImage", Factor::F32(0.5), Factor::F64(0.0))
        );
        let h = read_header_as(&hp, Format::Analyze).unwrap();
        assert_eq!(
            (h.format.name(), h.layout.slope, h.layout.inter),
            ("AnalyzeImage", Factor::F64(1.0), Factor::F64(0.0))
        );
        assert!(read_header_as(&hp, Format::Raw).is_err());
        // An Analyze header under a name that cannot have a pair.
        let odd = write(dir.path(), "s.nii", &hdr);
        let e = read_header(&odd).unwrap_err().to_string();
        assert!(
            e.contains("s.nii") && e.contains("no NIfTI magic") && e.contains(".hdr/.img"),
            "{e}"
        );
    }

    #[test]
    fn gzip_claims_beyond_deflates_reach_are_refused_when_opened() {
        let dir = tempfile::tempdir().unwrap();
        // 1 KiB of gzip claiming 32767³ int16 voxels: no deflate stream this short expands that far.
        let huge = HeaderBuilder::nifti1(ByteOrder::Little, &[32767, 32767, 32767], 4, true)
            .single_file(&[], &[0u8; 1024]);
        let e = read_header(&write(dir.path(), "big.nii.gz", &gz(&huge)))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("big.nii.gz") || e.contains("/big.nii.gz:"),
            "{e}"
        );
        assert!(e.contains("claims 70362301923678 bytes"), "{e}");
        assert!(e.contains("expand to at most"), "{e}");
        // The densest real stream (zeros) is within the bound: 4 MiB of zeros behind a header that says so.
        let zeros = HeaderBuilder::nifti1(ByteOrder::Little, &[1024, 1024, 4], 2, true)
            .single_file(&[], &vec![0u8; 4 << 20]);
        let packed = flate2::Compression::best();
        let mut e = flate2::write::GzEncoder::new(Vec::new(), packed);
        e.write_all(&zeros).unwrap();
        let dense = e.finish().unwrap();
        assert!((dense.len() as u64) * MAX_DEFLATE_RATIO >= zeros.len() as u64);
        let h = read_header(&write(dir.path(), "zeros.nii.gz", &dense)).unwrap();
        assert_eq!(h.layout.shape, [1024, 1024, 4]);
    }

    #[test]
    fn single_files_plain_and_gzip() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..24).collect();
        let file = HeaderBuilder::nifti1(ByteOrder::Little, &[2, 3, 4], 2, true)
            .scaling(2.0, 1.0)
            .single_file(&[], &data);
        let plain = write(dir.path(), "x.nii", &file);
        let h = read_header(&plain).unwrap();
        assert_eq!(
            (h.format, h.layout.offset, h.compression),
            (Format::Nifti1Image, 352, Compression::None)
        );
        assert_eq!(
            (h.layout.slope, h.layout.inter),
            (Factor::F64(2.0), Factor::F64(1.0))
        );
        for name in ["x.nii.gz", "X.NII.GZ", "gz_without_suffix.nii"] {
            let p = write(dir.path(), name, &gz(&file));
            let g = read_header(&p).unwrap();
            assert_eq!(g.compression, Compression::Gzip, "{name}");
            assert_eq!(
                (g.layout.shape.clone(), g.layout.offset, g.affine),
                (h.layout.shape.clone(), h.layout.offset, h.affine)
            );
        }
        // Data section one byte short.
        let short = write(dir.path(), "short.nii", &file[..file.len() - 1]);
        assert!(matches!(
            read_header(&short),
            Err(VoxelError::Truncated {
                expected: 376,
                actual: 375,
                ..
            })
        ));
        // An offset past the end of the file.
        let far = HeaderBuilder::nifti1(ByteOrder::Little, &[1], 2, true)
            .vox_offset(5000.0)
            .single_file(&[], &[]);
        let far = write(dir.path(), "far.nii", &far[..400]);
        assert!(matches!(
            read_header(&far),
            Err(VoxelError::Truncated {
                expected: 5001,
                actual: 400,
                ..
            })
        ));
        // vox_offset 0 in a single file: data from byte 0, as nibabel reads it (reference Q12).
        let zero = HeaderBuilder::nifti1(ByteOrder::Little, &[4], 2, true)
            .vox_offset(0.0)
            .single_file(&[], &[]);
        assert_eq!(
            read_header(&write(dir.path(), "zero.nii", &zero))
                .unwrap()
                .layout
                .offset,
            0
        );
        // Empty, unknown, corrupt gzip, other compressors, missing.
        let e = read_header(&write(dir.path(), "empty.nii", &[]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("empty.nii") && e.contains("empty"), "{e}");
        let e = read_header(&write(dir.path(), "junk.nii", &[9u8; 600]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("junk.nii") && e.contains("cannot work out"),
            "{e}"
        );
        let mut bad_gz = gz(&file);
        let mid = bad_gz.len() / 2;
        bad_gz.truncate(mid);
        let e = read_header(&write(dir.path(), "cut.nii.gz", &bad_gz))
            .unwrap_err()
            .to_string();
        assert!(e.contains("cut.nii.gz"), "{e}");
        let mut corrupt = gz(&file);
        for b in corrupt.iter_mut().skip(12).take(30) {
            *b ^= 0x5a;
        }
        let e = read_header(&write(dir.path(), "bad.nii.gz", &corrupt))
            .unwrap_err()
            .to_string();
        assert!(e.contains("bad.nii.gz"), "{e}");
        let e = read_header(&write(dir.path(), "plain.nii.gz", &file))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("plain.nii.gz") && e.contains("not a gzip"),
            "{e}"
        );
        let zst = write(dir.path(), "x.nii.zst", &[0x28, 0xb5, 0x2f, 0xfd, 0, 0]);
        assert!(matches!(
            read_header(&zst),
            Err(VoxelError::Unsupported { .. })
        ));
        let e = read_header(&dir.path().join("missing.nii"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing.nii"), "{e}");
    }

    #[test]
    fn mgz_footer_is_read_by_streaming() {
        let dir = tempfile::tempdir().unwrap();
        let mdc = [[-1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]];
        let mut f = mgh_file([4, 4, 4, 3], 3, 1, [1.0, 1.0, 2.0], mdc, [0.0; 3]);
        f.extend(vec![0u8; 4 * 4 * 4 * 3 * 4]);
        f.extend_from_slice(&1500f32.to_be_bytes());
        f.extend_from_slice(&[0; 16]);
        let p = write(dir.path(), "t.mgz", &gz(&f));
        let h = read_header(&p).unwrap();
        assert_eq!((h.format, h.compression), (Format::Mgh, Compression::Gzip));
        assert_eq!(h.zooms, vec![1.0, 1.0, 2.0, 1500.0]);
        let plain = write(dir.path(), "t.mgh", &f);
        assert_eq!(read_header(&plain).unwrap().zooms, h.zooms);
        // Cut inside the data: the streamed footer read finds the data truncated.
        let cut = write(dir.path(), "cut.mgz", &gz(&f[..1000]));
        match read_header(&cut) {
            Err(VoxelError::Truncated {
                path,
                expected,
                actual,
            }) => {
                assert!(path.ends_with("cut.mgz"));
                assert_eq!((expected, actual), (284 + 768, 1000));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn npy_files() {
        let dir = tempfile::tempdir().unwrap();
        let mut out = Vec::new();
        npy::write_npy(
            &mut out,
            DType::new(Scalar::F32, ByteOrder::Big),
            &[3, 2],
            true,
            &[0u8; 24],
        )
        .unwrap();
        let p = write(dir.path(), "a.npy", &out);
        let h = read_header(&p).unwrap();
        assert_eq!(
            (h.format.name(), h.layout.order, h.layout.offset),
            ("npy", Order::F, 128)
        );
        assert_eq!(h.layout.dtype.numpy_str(), ">f4");
        let short = write(dir.path(), "b.npy", &out[..out.len() - 4]);
        assert!(matches!(
            read_header(&short),
            Err(VoxelError::Truncated {
                expected: 152,
                actual: 148,
                ..
            })
        ));
    }

    #[test]
    fn prefix_errors_always_ask_for_more() {
        // One 16-byte extension filling [352, 368) exactly (nibabel reads on while 16 bytes of room remain).
        let file = HeaderBuilder::nifti1(ByteOrder::Big, &[2, 2], 2, true)
            .vox_offset(368.0)
            .single_file(&[(6, b"hello")], &[0; 4]);
        let p = Path::new("p.nii");
        for n in 0..file.len() {
            match parse_header_bytes(&file[..n], p) {
                Ok(h) => assert!(n >= 368, "parsed from {n} bytes: {h:?}"),
                Err(VoxelError::Truncated {
                    expected, actual, ..
                }) => {
                    assert!(
                        expected > actual && actual == n as u64,
                        "{n}: {expected} {actual}"
                    )
                }
                Err(e) => panic!("{n}: {e}"),
            }
        }
        assert_eq!(parse_header_file(&file, p).unwrap().layout.offset, 368);
        assert!(parse_header_file(&file[..200], p).is_err());
        assert!(matches!(
            parse_header_file(&file[..369], p),
            Err(VoxelError::Truncated { expected: 372, .. })
        ));
        // Room for another extension left empty: nibabel reads a zero esize there and fails; so do we.
        let gap = HeaderBuilder::nifti1(ByteOrder::Big, &[2, 2], 2, true)
            .vox_offset(400.0)
            .single_file(&[(6, b"hello")], &[0; 4]);
        let e = parse_header_file(&gap, p).unwrap_err().to_string();
        assert!(e.contains("invalid size 0"), "{e}");
    }

    #[test]
    fn header_errors_name_the_field_and_value() {
        let fault = |bytes: &[u8], name: &str| match parse_header_file(bytes, Path::new(name)) {
            Err(VoxelError::Header { path, fault }) => (path, fault),
            other => panic!("{other:?}"),
        };
        let bad_code =
            HeaderBuilder::nifti1(ByteOrder::Little, &[2], 3, true).single_file(&[], &[0; 2]);
        let (path, f) = fault(&bad_code, "d.nii");
        assert_eq!(path, "d.nii");
        assert_eq!((f.field, f.value.as_deref()), (Some("datatype"), Some("3")));
        assert_eq!(f.to_string(), "data code 3 not recognized");
        let analyze = HeaderBuilder::analyze(ByteOrder::Big, &[2], 255).build();
        let (_, f) = fault(&analyze, "a.hdr");
        assert_eq!(
            (f.field, f.value.as_deref()),
            (Some("datatype"), Some("255"))
        );
        assert!(f.problem.contains("Analyze 'none'"), "{f}");
        let negative =
            HeaderBuilder::nifti1(ByteOrder::Little, &[2, -3], 2, true).single_file(&[], &[]);
        let (_, f) = fault(&negative, "n.nii");
        assert_eq!(
            (f.field, f.value.as_deref()),
            (Some("dim"), Some("[2, -3]"))
        );
        assert_eq!(f.to_string(), "negative dimension in shape [2, -3]");
        let e = parse_header_file(&[], Path::new("e.nii")).unwrap_err();
        match &e {
            VoxelError::Header { fault, .. } => {
                assert_eq!((fault.field, fault.value.as_ref()), (None, None))
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(e.to_string(), "e.nii: empty file");
    }

    #[test]
    fn fuzz_parse_survives_known_inputs() {
        fuzz_parse(&[]);
        fuzz_parse(b"\x93NUMPY\x01\x00\x05\x00{'a':");
        fuzz_parse(&gz(b"not an image at all"));
        let file = HeaderBuilder::nifti2(ByteOrder::Little, &[3, 3], 16, true)
            .single_file(&[(4, b"x")], &[0; 36]);
        fuzz_parse(&file);
        fuzz_parse(b"shape=2,3;dtype=<i2;offset=4");
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        fn seeds() -> Vec<Vec<u8>> {
            let mdc = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]];
            let mut npy_file = Vec::new();
            npy::write_npy(
                &mut npy_file,
                DType::native(Scalar::I16),
                &[2, 2],
                false,
                &[0; 8],
            )
            .unwrap();
            vec![
                HeaderBuilder::nifti1(ByteOrder::Little, &[2, 3, 4], 4, true)
                    .qform(1, [0.1, 0.2, 0.3], [1.0, 2.0, 3.0])
                    .vox_offset(368.0)
                    .single_file(&[(6, b"ext")], &[0; 48]),
                HeaderBuilder::nifti1(ByteOrder::Big, &[-1, 1, 1], 16, false).build(),
                HeaderBuilder::nifti2(ByteOrder::Big, &[2, 3], 64, true)
                    .sform(1, [[1.0; 4]; 3])
                    .single_file(&[], &[0; 48]),
                HeaderBuilder::analyze(ByteOrder::Little, &[4, 4], 2)
                    .i16_at(253, 2)
                    .build(),
                mgh_file([2, 2, 2, 2], 3, 1, [1.0; 3], mdc, [0.0; 3]),
                npy_file,
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(300))]

            #[test]
            fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..1200)) {
                fuzz_parse(&bytes);
            }

            #[test]
            fn mutated_headers_never_panic(
                seed in 0usize..6,
                edits in proptest::collection::vec((any::<proptest::sample::Index>(), any::<u8>()), 1..12),
                cut in any::<proptest::sample::Index>(),
                compress in any::<bool>(),
            ) {
                let mut bytes = seeds()[seed].clone();
                for (at, v) in edits {
                    let i = at.index(bytes.len());
                    bytes[i] = v;
                }
                let keep = cut.index(bytes.len() + 1);
                bytes.truncate(keep.max(bytes.len() / 2));
                let input = if compress { gz(&bytes) } else { bytes };
                fuzz_parse(&input);
            }

            #[test]
            fn prefixes_of_valid_headers_parse_or_ask_for_more(seed in 0usize..6, n in 0usize..600) {
                let bytes = seeds()[seed].clone();
                let n = n.min(bytes.len());
                let hint = Path::new(["a.nii", "a.hdr", "a.nii", "a.hdr", "a.mgh", "a.npy"][seed]);
                match parse_header_bytes(&bytes[..n], hint) {
                    Ok(_) => {}
                    Err(VoxelError::Truncated { expected, actual, .. }) => prop_assert!(expected > actual),
                    Err(e) => prop_assert!(false, "{}", e),
                }
            }
        }
    }
}
