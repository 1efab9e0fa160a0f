//! Opening remote images: header fetches sized by the name and capped per format, then what the header says
//! is missing.

use std::ops::Range;
use std::path::Path;

use bytes::Bytes;

use super::object::*;
use super::options::*;
use super::*;
use crate::error::{Result, VoxelError};
use crate::formats::{self, Compression, ImageHeader};
use crate::location::{Location, ObjectUrl};

/// An image in object storage: its parsed header and the object holding its data.
#[derive(Debug, Clone)]
pub struct RemoteImage {
    pub header: ImageHeader,
    pub data: RemoteObject,
}

/// The first GET's length: just the header the name promises, so that a small query fetches little more than
/// it needs (NIfTI-1/Analyze 348 bytes + the extension flag, MGH 284, npy's usual 128; gzip: a few KiB that
/// decompress to more than any header). A longer header costs one more GET.
pub(super) fn header_prefix(url: &str) -> u64 {
    use formats::detect::{NameKind, name_kind};
    let path = Path::new(url);
    if formats::detect::compression_by_name(path) == Compression::Gzip {
        return 4096;
    }
    match name_kind(path) {
        NameKind::Nii | NameKind::Hdr | NameKind::Img => 352,
        NameKind::Mgh => 284,
        NameKind::Npy => 128,
        _ => HEADER_PREFIX,
    }
}

/// Most compressed bytes fetched to find a gzip-compressed header.
pub(super) const MAX_GZIP_HEADER_FETCH: u64 = 64 << 20;
/// Most bytes a NIfTI-1/2 header may take with its extensions (up to `vox_offset`; a pair's to the end of the
/// `.hdr`), in decompressed bytes.
pub const MAX_NIFTI_HEADER: u64 = 64 << 20;
/// Most bytes an npy header may take: magic, version, a 4-byte length field and numpy's 10,000-byte limit.
pub const MAX_NPY_HEADER: u64 = 12 + formats::npy::MAX_HEADER_LEN as u64;
/// Most bytes decompressed from a gzip object while reading its header (a 4-D MGH's footer after its data, the
/// length check of a whole small object): never more than the header claims, and never more than this.
pub const MAX_HEADER_INFLATE: u64 = 256 << 20;
/// Decompressed bytes looked at first in a gzip object (more only when the header asks).
pub(super) const FIRST_LOOK: u64 = 1024;

/// The format of a header as its first bytes tell it, for the cap on the bytes it may ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum HeaderKind {
    Nifti1,
    Nifti2,
    Mgh,
    Npy,
    Analyze,
    Unknown,
}

impl HeaderKind {
    /// The kind the first bytes show; `Unknown` (capped at [`HEADER_PREFIX`], enough to tell) while too few
    /// bytes are there to tell a NIfTI-1 from an Analyze header.
    pub(super) fn of(head: &[u8]) -> HeaderKind {
        let at = |r: Range<usize>| head.get(r).unwrap_or_default();
        let sizeof_hdr = |n: i32| at(0..4) == n.to_le_bytes() || at(0..4) == n.to_be_bytes();
        if head.starts_with(formats::npy::MAGIC) {
            HeaderKind::Npy
        } else if at(344..348) == b"n+1\0" || at(344..348) == b"ni1\0" {
            HeaderKind::Nifti1
        } else if at(4..8) == b"n+2\0" || at(4..8) == b"ni2\0" || sizeof_hdr(540) {
            HeaderKind::Nifti2
        } else if at(0..4) == 1i32.to_be_bytes() {
            HeaderKind::Mgh
        } else if sizeof_hdr(348) && head.len() >= 348 {
            HeaderKind::Analyze
        } else {
            HeaderKind::Unknown
        }
    }

    /// Most (decompressed) bytes from the start of the file the header may need. An MGH's 4-D footer lies after
    /// its data and is fetched on its own, outside this cap.
    pub(super) fn cap(self) -> u64 {
        match self {
            HeaderKind::Nifti1 | HeaderKind::Nifti2 => MAX_NIFTI_HEADER,
            HeaderKind::Mgh => formats::mgh::DATA_OFFSET,
            HeaderKind::Npy => MAX_NPY_HEADER,
            HeaderKind::Analyze => formats::nifti1::HEADER_SIZE as u64,
            HeaderKind::Unknown => HEADER_PREFIX,
        }
    }

    pub(super) fn name(self) -> &'static str {
        match self {
            HeaderKind::Nifti1 => "NIfTI-1",
            HeaderKind::Nifti2 => "NIfTI-2",
            HeaderKind::Mgh => "MGH",
            HeaderKind::Npy => "npy",
            HeaderKind::Analyze => "Analyze",
            HeaderKind::Unknown => "unrecognised",
        }
    }
}

/// Where a single-file NIfTI's extensions end (its `vox_offset`), so that all of them come in one request.
pub(super) fn nifti_extensions_end(head: &[u8], kind: HeaderKind) -> Option<u64> {
    let field = |r: Range<usize>| head.get(r);
    match kind {
        HeaderKind::Nifti1 if field(344..348)? == b"n+1\0" => {
            let raw: [u8; 4] = field(108..112)?.try_into().ok()?;
            let little = field(0..4)? == 348i32.to_le_bytes();
            let v = if little {
                f32::from_le_bytes(raw)
            } else {
                f32::from_be_bytes(raw)
            };
            (v.is_finite() && v >= 0.0).then_some(v as u64)
        }
        HeaderKind::Nifti2 if field(4..8)? == b"n+2\0" => {
            let raw: [u8; 8] = field(168..176)?.try_into().ok()?;
            let little = field(0..4)? == 540i32.to_le_bytes();
            let v = if little {
                i64::from_le_bytes(raw)
            } else {
                i64::from_be_bytes(raw)
            };
            u64::try_from(v).ok()
        }
        _ => None,
    }
}

/// Read an image's header from object storage: one ranged GET of the first bytes its name suggests, then only
/// what the header says is missing (the rest of its extensions in one GET, a 4-D MGH's footer), never more than
/// its format's cap; a pair's data object is checked with a HEAD request.
pub fn open_image(url: &str, opts: &StoreOptions) -> Result<RemoteImage> {
    let hint = Location::Object(ObjectUrl::parse(url)?);
    let header_url = formats::detect::header_path_for(&hint.name())
        .to_string_lossy()
        .into_owned();
    let (object, first) = RemoteObject::open(&header_url, opts, header_prefix(&header_url))?;
    let header = HeaderFetch::new(&object, first.to_vec()).parse(&hint)?;
    let data = if header.format.is_pair() {
        RemoteObject::head(&header.data_file.display(), opts)?
    } else {
        object
    };
    if header.compression == Compression::None {
        data.check_within(header.layout.end())?;
    }
    Ok(RemoteImage { header, data })
}

/// The bytes of a header object fetched so far: `raw` from byte 0 as stored (gzip or not), and a stretch further
/// on for an MGH footer (stored bytes for a plain object; for gzip, the decompressed range to keep).
pub(super) struct HeaderFetch<'a> {
    pub(super) object: &'a RemoteObject,
    /// Requests made after the first.
    pub(super) requests: u64,
    pub(super) raw: Vec<u8>,
    pub(super) gz: bool,
    pub(super) plain_tail: Option<(u64, Vec<u8>)>,
    pub(super) gz_tail: Option<Range<u64>>,
}

/// What the parser is given: the start of the content, a stretch further on, the content's length if known.
pub(super) struct View {
    pub(super) head: Vec<u8>,
    pub(super) tail: Option<(u64, Vec<u8>)>,
    pub(super) len: Option<u64>,
}

impl<'a> HeaderFetch<'a> {
    pub(super) fn new(object: &'a RemoteObject, raw: Vec<u8>) -> HeaderFetch<'a> {
        let gz = raw.starts_with(&[0x1f, 0x8b]);
        HeaderFetch {
            object,
            requests: 0,
            raw,
            gz,
            plain_tail: None,
            gz_tail: None,
        }
    }

    pub(super) fn url(&self) -> &str {
        self.object.url()
    }

    pub(super) fn get(&mut self, range: Range<u64>) -> Result<Bytes> {
        self.requests += 1;
        self.object.get_range_blocking(range)
    }

    pub(super) fn whole(&self) -> bool {
        self.raw.len() as u64 >= self.object.size
    }

    /// Parse, fetching what the parser asks for until it has enough, within the format's cap.
    pub(super) fn parse(&mut self, hint: &Location) -> Result<ImageHeader> {
        let header_path = formats::detect::header_path_for(&hint.name());
        let compression = formats::container(&self.raw, &header_path)?;
        let mut want = 0u64;
        loop {
            let view = self.view(want)?;
            let kind = HeaderKind::of(&view.head);
            let tail = view.tail.as_ref().map(|(at, b)| (*at, b.as_slice()));
            let expected =
                match formats::parse_header_parts(&view.head, tail, view.len, hint, compression) {
                    Ok(header) => {
                        self.check_gz_length(&header)?;
                        return Ok(header);
                    }
                    Err(VoxelError::Truncated { expected, .. })
                        if view.len.is_none_or(|n| expected <= n) =>
                    {
                        expected
                    }
                    Err(e) => return Err(e),
                };
            let before = (want, self.raw.len(), self.has_tail());
            if kind == HeaderKind::Mgh && expected > kind.cap() && !self.has_tail() {
                self.fetch_footer(expected)?;
            } else if expected > kind.cap() {
                return Err(VoxelError::header(
                    self.url(),
                    format!(
                        "the {} header asks for {expected} bytes, more than the {}-byte limit for its format",
                        kind.name(),
                        kind.cap()
                    ),
                ));
            } else {
                want = expected.max(self.extensions_end(&view.head, kind, expected));
                if !self.gz {
                    self.fetch_plain(want)?;
                }
            }
            if before == (want, self.raw.len(), self.has_tail()) {
                return Err(VoxelError::header(
                    self.url(),
                    format!("the header asks for byte {expected} again after it was fetched"),
                ));
            }
        }
    }

    /// How far to fetch when a NIfTI header asks for `expected` bytes: to its `vox_offset` when that lies further,
    /// else (a pair's extensions, or a `vox_offset` inside the header) to the end of the object, so that every
    /// extension comes at once; within the cap.
    pub(super) fn extensions_end(&self, head: &[u8], kind: HeaderKind, expected: u64) -> u64 {
        if !matches!(kind, HeaderKind::Nifti1 | HeaderKind::Nifti2) {
            return expected;
        }
        let to_end = if self.gz {
            kind.cap()
        } else {
            self.object.size
        };
        nifti_extensions_end(head, kind)
            .filter(|&v| v >= expected)
            .unwrap_or(to_end)
            .min(kind.cap())
    }

    pub(super) fn has_tail(&self) -> bool {
        self.plain_tail.is_some() || self.gz_tail.is_some()
    }

    /// The content the parser sees when it has asked for `want` bytes from the start.
    pub(super) fn view(&mut self, want: u64) -> Result<View> {
        if !self.gz {
            return Ok(View {
                head: self.raw.clone(),
                tail: self.plain_tail.clone(),
                len: Some(self.object.size),
            });
        }
        let keep = want.clamp(FIRST_LOOK, MAX_NIFTI_HEADER);
        loop {
            let stop = self.gz_tail.as_ref().map_or(keep, |t| t.end.max(keep));
            let inflated = inflate(&self.raw, keep, self.gz_tail.clone(), stop, self.url())?;
            let whole = self.whole();
            if inflated.out >= stop || whole {
                // A whole object that ends (or is cut) before `stop` has just the bytes it gave.
                let len = (whole && inflated.out < stop).then_some(inflated.out);
                let tail = self.gz_tail.as_ref().map(|t| (t.start, inflated.tail));
                return Ok(View {
                    head: inflated.head,
                    tail,
                    len,
                });
            }
            self.fetch_more_gz()?;
        }
    }

    /// Append the stored bytes up to `want` (one ranged GET of exactly what is missing).
    pub(super) fn fetch_plain(&mut self, want: u64) -> Result<()> {
        let have = self.raw.len() as u64;
        let end = want.min(self.object.size);
        if end > have {
            let more = self.get(have..end)?;
            self.raw.extend_from_slice(&more);
        }
        Ok(())
    }

    /// Append more compressed bytes (the prefix grows fourfold), at most [`MAX_GZIP_HEADER_FETCH`] in all.
    pub(super) fn fetch_more_gz(&mut self) -> Result<()> {
        let have = self.raw.len() as u64;
        if have >= MAX_GZIP_HEADER_FETCH {
            return Err(VoxelError::header(
                self.url(),
                "header not found in the first 64 MiB",
            ));
        }
        let end = (have.max(1) * 4)
            .min(MAX_GZIP_HEADER_FETCH)
            .min(self.object.size);
        let more = self.get(have..end)?;
        self.raw.extend_from_slice(&more);
        Ok(())
    }

    /// A 4-D MGH's footer, asked for as the bytes ending at `expected`: one ranged GET of it from a plain object;
    /// from a gzip object, the rest of the object in one GET (at most [`MAX_GZIP_HEADER_FETCH`] in all),
    /// decompressed up to the footer's end (within [`MAX_HEADER_INFLATE`]) keeping only the footer.
    pub(super) fn fetch_footer(&mut self, expected: u64) -> Result<()> {
        let at = expected.saturating_sub(formats::mgh::FOOTER_SIZE as u64);
        if !self.gz {
            let end = expected.min(self.object.size);
            let bytes = if at < end {
                self.get(at..end)?.to_vec()
            } else {
                Vec::new()
            };
            self.plain_tail = Some((at, bytes));
            return Ok(());
        }
        if expected > MAX_HEADER_INFLATE {
            return Err(VoxelError::header(
                self.url(),
                format!(
                    "the MGH footer lies {expected} decompressed bytes in, past the {MAX_HEADER_INFLATE}-byte limit for reading a header from a compressed object"
                ),
            ));
        }
        let (have, size) = (self.raw.len() as u64, self.object.size);
        if size > MAX_GZIP_HEADER_FETCH {
            return Err(VoxelError::header(
                self.url(),
                "a compressed 4-D MGH's footer can be read only from an object of at most 64 MiB",
            ));
        }
        if have < size {
            let rest = self.get(have..size)?;
            self.raw.extend_from_slice(&rest);
        }
        self.gz_tail = Some(at..expected);
        Ok(())
    }

    /// A whole small gzip object fetched for its header: its content must hold the data the header claims
    /// (checked by decompressing up to that claim, at most [`MAX_HEADER_INFLATE`] bytes, keeping none).
    pub(super) fn check_gz_length(&self, header: &ImageHeader) -> Result<()> {
        if !self.gz || !self.whole() || header.format.is_pair() {
            return Ok(());
        }
        let claimed = header.layout.end();
        let stop = claimed.min(MAX_HEADER_INFLATE);
        let inflated = inflate(&self.raw, 0, None, stop, self.url())?;
        if inflated.out < stop {
            return Err(VoxelError::Truncated {
                path: self.url().to_string(),
                expected: claimed,
                actual: inflated.out,
            });
        }
        Ok(())
    }
}

/// What decompressing a gzip prefix gave: its first bytes, a kept stretch, and how many bytes came out.
#[derive(Default)]
pub(super) struct Inflated {
    pub(super) head: Vec<u8>,
    pub(super) tail: Vec<u8>,
    pub(super) out: u64,
}

/// Decompress the gzip bytes `raw` (all members) until `stop` bytes came out or the input ends (a cut stream
/// just ends), keeping the first `keep` bytes and the stretch `tail`. `stop` is the bound: a stream that would
/// expand further (a gzip bomb) is never decompressed past it, and nothing between the kept parts is stored.
pub(super) fn inflate(
    raw: &[u8],
    keep: u64,
    tail: Option<Range<u64>>,
    stop: u64,
    url: &str,
) -> Result<Inflated> {
    use std::io::Read;
    let mut dec = flate2::bufread::MultiGzDecoder::new(raw);
    let mut buf = vec![0u8; 64 * 1024];
    let mut r = Inflated::default();
    while r.out < stop {
        let room = usize::try_from(stop - r.out).map_or(buf.len(), |n| n.min(buf.len()));
        let n = match dec.read(&mut buf[..room]) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) => {
                return Err(VoxelError::header(url, format!("corrupt gzip stream: {e}")));
            }
        };
        let (start, end) = (r.out, r.out + n as u64);
        if start < keep {
            r.head
                .extend_from_slice(&buf[..(keep.min(end) - start) as usize]);
        }
        if let Some(t) = &tail {
            let (lo, hi) = (t.start.max(start), t.end.min(end));
            if lo < hi {
                r.tail
                    .extend_from_slice(&buf[(lo - start) as usize..(hi - start) as usize]);
            }
        }
        r.out = end;
    }
    Ok(r)
}

/// A headerless raw array in object storage, described by a spec (no header request; a HEAD for size and ETag).
pub fn open_raw(url: &str, spec: &str, opts: &StoreOptions) -> Result<RemoteImage> {
    let object = Location::Object(ObjectUrl::parse(url)?);
    let header = formats::ImageHeader {
        header_file: object.clone(),
        data_file: object,
        ..formats::raw::parse_spec(spec, Path::new(url))?
    };
    let data = RemoteObject::head(url, opts)?;
    if header.compression == Compression::None {
        data.check_within(header.layout.end())?;
    }
    Ok(RemoteImage { header, data })
}

impl RemoteObject {
    /// A ranged GET outside data reads (a longer header prefix), counted in the process totals.
    pub(super) fn get_range_blocking(&self, range: Range<u64>) -> Result<Bytes> {
        let bytes = block_on(self.get_range(range))??;
        count(1, bytes.len() as u64);
        Ok(bytes)
    }
}
