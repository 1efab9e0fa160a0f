//! Random access into gzip files: a seek-point index over the DEFLATE stream (the zran technique of zlib's
//! `examples/zran.c`, as indexed_gzip uses it).
//!
//! DEFLATE has no random access: a block may copy from anywhere in the 32 KiB of output before it. But at the start
//! of any block, the decoder state is just (input bit position, last 32 KiB of output). A [`SeekPoint`] records
//! exactly that every `span` bytes of output (default [`DEFAULT_SPAN`], 1 MiB); to read `[offset, offset + len)`,
//! decompression restarts from the last point at or before `offset` (a raw inflate primed with the point's bits and
//! preset with its window) and discards at most `span` bytes plus one block before reaching `offset`.
//!
//! Points are taken by a [`GzIndexBuilder`] riding along with an ordinary forward pass ([`GzCursor::recording`]): the
//! pass inflates with `Z_BLOCK`, so zlib stops at every block boundary and reports it in `data_type` (bit 7 = at a
//! block boundary, bit 6 = after the last block, bits 0–2 = unused bits of the last input byte), and the window is
//! read back with `inflateGetDictionary`. A query that reads the file anyway builds the index for free.
//! The same passes also record [`Mark`]s: block boundaries every [`MARK_SPAN`] bytes or so, without a window (17
//! bytes each). A short read far from its seek point decompresses from the nearest mark instead, twice, with the
//! unknown window filled once with `0x00` and once with `0xFF` bytes: every output byte is a literal or a copy of an
//! earlier byte, so a byte that comes out the same both times does not depend on the window and is exact; if any
//! byte asked for differs, the read falls back to the seek point (the technique of rapidgzip's two-stage decoding,
//! done with two ordinary inflates). On noise-like data almost every such read succeeds and costs a few KiB instead
//! of half a span.
//!
//! Multi-member files (concatenated gzip members) work: at a member's end the cursor checks its trailer (in gzip
//! mode zlib verifies CRC-32 and length; a pass started from a point skips the partial member's trailer), skips zero
//! padding as Python's gzip does, and restarts on the next member's header; a member's first point has an empty or
//! short window, since nothing before a member can be referenced.
//!
//! Inflate comes from `libz-rs-sys` (zlib-rs behind zlib's C API): the only pure-Rust inflate that offers
//! `inflatePrime`, `inflateSetDictionary`, `inflateGetDictionary` and `Z_BLOCK` with zlib's `data_type` bits.
//!
//! # Index file (version 2, little-endian)
//!
//! ```text
//! magic "VXGZIDX\0" | version u32 | flags u32 (bit 0: complete) | gz size u64 | gz mtime ns i64 |
//! crc32 of the gz file's first 64 KiB u32 | span u64 | covered_out u64 | total_out u64 | points u32 |
//! per point: out u64, in u64, bits u8, window kind u8 (0 raw, 1 raw-deflate), window len u32, stored len u32, bytes |
//! marks u32 | per mark: out u64, in u64, bits u8 |
//! crc32 of everything before it u32
//! ```
//!
//! Loading checks all of it (magic, version, the identity of the gz file, the checksum, every point's bounds and
//! order, each window's length); anything off is an [`IndexRejected`] and the caller rebuilds.

use std::ffi::c_int;
use std::fmt;
use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use super::cursor::{GzCursor, GzIndexBuilder};
use crate::error::{Result, VoxelError};
use crate::io::ReadStats;

/// Default distance between seek points in uncompressed bytes: a random read decompresses at most about this much
/// before reaching its data.
pub const DEFAULT_SPAN: u64 = 1 << 20;
/// DEFLATE's window: the most output a block can refer back to.
pub const WINDOW_SIZE: usize = 32 * 1024;
/// How much of the start of a gz file is hashed into its identity.
pub const HEAD_HASH_LEN: usize = 64 * 1024;

const MAGIC: &[u8; 8] = b"VXGZIDX\0";
const VERSION: u32 = 2;
/// Least distance in decompressed bytes between two [`Mark`]s (each is taken at the first block boundary after it).
pub const MARK_SPAN: u64 = 16 * 1024;
const MARK_LEN: usize = 8 + 8 + 1;
const FLAG_COMPLETE: u32 = 1;
const HEADER_LEN: usize = 8 + 4 + 4 + 8 + 8 + 4 + 8 + 8 + 8 + 4;
const POINT_HEAD_LEN: usize = 8 + 8 + 1 + 1 + 4 + 4;
/// Compressed bytes read per `pread`.
pub(super) const INPUT_CHUNK: usize = 128 * 1024;
/// zlib `windowBits`: gzip header and trailer, or a bare deflate stream (used when restarting at a point).
pub(super) const GZIP_BITS: c_int = 31;
pub(super) const RAW_BITS: c_int = -15;

/// Positional reads of compressed bytes: a local file, an in-memory buffer, an object in a store.
pub trait ReadAt: Send + Sync {
    /// Read up to `buf.len()` bytes at `offset` (possibly fewer before the end); 0 means end of data.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize>;

    /// What the reads cost so far (bytes fetched, requests) where that is not simply the bytes asked for, as with
    /// ranged requests to a store; `None` otherwise.
    fn fetched(&self) -> Option<ReadStats> {
        None
    }
}

impl<T: ReadAt + ?Sized> ReadAt for &T {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
        (**self).read_at(buf, offset)
    }

    fn fetched(&self) -> Option<ReadStats> {
        (**self).fetched()
    }
}

impl ReadAt for File {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
        std::os::unix::fs::FileExt::read_at(self, buf, offset)
    }
}

impl ReadAt for Vec<u8> {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(self.len());
        let n = buf.len().min(self.len() - start);
        buf[..n].copy_from_slice(&self[start..start + n]);
        Ok(n)
    }
}

/// Which gz file an index belongs to: size, modification time and a hash of the first 64 KiB, all three checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileIdentity {
    pub size: u64,
    /// Modification time in nanoseconds since the Unix epoch (negative before it).
    pub mtime_ns: i64,
    /// CRC-32 of the first `min(size, 64 KiB)` bytes.
    pub head_crc: u32,
}

impl FileIdentity {
    /// The identity of an open file (`location` for error messages).
    pub fn of(file: &File, location: &str) -> Result<FileIdentity> {
        let meta = file.metadata().map_err(|e| VoxelError::io(location, e))?;
        let (_, mtime_ns) = FileIdentity::of_metadata(&meta).ok_or_else(|| {
            VoxelError::header(location, "the file system gives no modification time")
        })?;
        let mut head =
            vec![0u8; HEAD_HASH_LEN.min(usize::try_from(meta.len()).unwrap_or(HEAD_HASH_LEN))];
        read_full_at(file, &mut head, 0).map_err(|e| VoxelError::io(location, e))?;
        Ok(FileIdentity {
            size: meta.len(),
            mtime_ns,
            head_crc: zlib_rs::crc32::crc32(0, &head),
        })
    }
}

impl FileIdentity {
    /// The cheap part of an identity: (size, modification time in ns), `None` without a modification time.
    pub fn of_metadata(meta: &std::fs::Metadata) -> Option<(u64, i64)> {
        let modified = meta.modified().ok()?;
        let mtime_ns = match modified.duration_since(UNIX_EPOCH) {
            Ok(d) => i64::try_from(d.as_nanos()).unwrap_or(i64::MAX),
            Err(e) => -i64::try_from(e.duration().as_nanos()).unwrap_or(i64::MAX),
        };
        Some((meta.len(), mtime_ns))
    }
}

/// Fill `buf` from `offset`, stopping early only at end of data; returns the bytes read.
pub(super) fn read_full_at(
    src: &(impl ReadAt + ?Sized),
    buf: &mut [u8],
    offset: u64,
) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match src.read_at(&mut buf[got..], offset + got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// Where decompression can restart: the start of a DEFLATE block.
#[derive(Clone)]
pub struct SeekPoint {
    /// Offset in the decompressed data.
    pub out: u64,
    /// Offset in the gz file of the first byte wholly inside the block.
    pub input: u64,
    /// How many high bits of the byte before `input` belong to the block (0–7).
    pub bits: u8,
    /// Up to 32 KiB of decompressed data just before `out` (less at the start of a gzip member).
    window: Window,
}

/// A point's window: in memory, or in a loaded index file's map — stored raw (used in place) or deflated
/// (inflated the first time the point is used, so that loading an index costs no inflation of windows a read does
/// not need).
#[derive(Clone)]
enum Window {
    Owned(Arc<[u8]>),
    Mapped(Arc<memmap2::Mmap>, std::ops::Range<usize>),
    Packed(Arc<PackedWindow>),
}

struct PackedWindow {
    map: Arc<memmap2::Mmap>,
    stored: std::ops::Range<usize>,
    len: usize,
    inflated: std::sync::OnceLock<Option<Box<[u8]>>>,
}

impl SeekPoint {
    /// A point known by other means than a recording pass (a writer that flushed its compressor there).
    pub fn new(out: u64, input: u64, bits: u8, window: Vec<u8>) -> SeekPoint {
        SeekPoint {
            out,
            input,
            bits,
            window: Window::Owned(window.into()),
        }
    }

    /// The window; an error only for a deflated window of a loaded index file that does not inflate to its stated
    /// length (the file's checksum matched, so only a crafted file does that).
    pub fn window(&self) -> Result<&[u8], IndexRejected> {
        match &self.window {
            Window::Owned(w) => Ok(w),
            Window::Mapped(map, range) => Ok(&map[range.clone()]),
            Window::Packed(p) => p
                .inflated
                .get_or_init(|| {
                    let stored = p.map.get(p.stored.clone())?;
                    inflate_window(stored, p.len).ok().map(Vec::into_boxed_slice)
                })
                .as_deref()
                .ok_or_else(|| {
                    IndexRejected::Malformed(format!(
                        "the window of the point at output offset {} does not inflate to its length",
                        self.out
                    ))
                }),
        }
    }

    /// The window's length (known without inflating it).
    pub fn window_len(&self) -> usize {
        match &self.window {
            Window::Owned(w) => w.len(),
            Window::Mapped(_, range) => range.len(),
            Window::Packed(p) => p.len,
        }
    }
}

impl fmt::Debug for SeekPoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SeekPoint")
            .field("out", &self.out)
            .field("input", &self.input)
            .field("bits", &self.bits)
            .field("window_len", &self.window_len())
            .finish()
    }
}

/// Points are equal when they restart at the same place with the same window bytes, however those are held.
impl PartialEq for SeekPoint {
    fn eq(&self, other: &SeekPoint) -> bool {
        (self.out, self.input, self.bits) == (other.out, other.input, other.bits)
            && match (self.window(), other.window()) {
                (Ok(a), Ok(b)) => a == b,
                _ => false,
            }
    }
}

impl Eq for SeekPoint {}

/// A block boundary without its window: decompression can restart there, but bytes that copy from before it are
/// unknown (see the module docs for how reads use marks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mark {
    /// Offset in the decompressed data.
    pub out: u64,
    /// Offset in the gz file of the first byte wholly inside the block.
    pub input: u64,
    /// How many high bits of the byte before `input` belong to the block (0–7).
    pub bits: u8,
}

/// Why a stored index was not used. Every case means "absent": the caller rebuilds it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IndexRejected {
    #[error("no index file")]
    Missing,
    #[error("cannot read the index file: {0}")]
    Unreadable(String),
    #[error("not a voxelscan gzip index (bad magic)")]
    BadMagic,
    #[error("index format version {0}, expected {VERSION}")]
    Version(u32),
    #[error("index file is truncated")]
    Truncated,
    #[error("index checksum mismatch (corrupt)")]
    Checksum,
    #[error("index is stale: the gz file's {0} changed")]
    Stale(&'static str),
    #[error("index is malformed: {0}")]
    Malformed(String),
    #[error("the index file is {0}")]
    NotRegular(&'static str),
    #[error(
        "the index file has {len} bytes, more than the {max} an index of this gz file can have"
    )]
    TooLarge { len: u64, max: u64 },
    #[error("the index file belongs to user {0}, neither this user nor the gz file's owner")]
    Untrusted(u32),
}

/// The seek points of one gzip stream, complete up to `covered_out` decompressed bytes (the whole stream once the
/// total size is known). A partial index is extended by later passes that go past `covered_out`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GzIndex {
    span: u64,
    points: Vec<SeekPoint>,
    marks: Vec<Mark>,
    covered_out: u64,
    total_out: Option<u64>,
}

/// What one recording pass learnt, merged into an index with [`GzIndex::absorb`].
#[derive(Debug, Clone)]
pub struct PassRecord {
    pub(super) points: Vec<SeekPoint>,
    pub(super) marks: Vec<Mark>,
    pub(super) reached_out: u64,
    pub(super) total_out: Option<u64>,
}

impl PassRecord {
    pub fn reached_out(&self) -> u64 {
        self.reached_out
    }

    pub fn total_out(&self) -> Option<u64> {
        self.total_out
    }
}

impl GzIndex {
    /// An empty index (nothing known yet) with points every `span` bytes (at least 1).
    pub fn new(span: u64) -> GzIndex {
        GzIndex {
            span: span.max(1),
            points: Vec::new(),
            marks: Vec::new(),
            covered_out: 0,
            total_out: None,
        }
    }

    /// The complete index of a stream of `total_out` bytes whose points (in order) are known already, as a
    /// compressor that flushes at span boundaries knows them.
    pub fn complete(span: u64, points: Vec<SeekPoint>, total_out: u64) -> GzIndex {
        GzIndex {
            span: span.max(1),
            points,
            marks: Vec::new(),
            covered_out: total_out,
            total_out: Some(total_out),
        }
    }

    /// Build the complete index in one forward pass (for `voxelscan index`); `progress` gets the compressed bytes
    /// consumed so far, about every 16 MiB of output.
    pub fn build(
        src: &dyn ReadAt,
        location: &str,
        span: u64,
        mut progress: impl FnMut(u64),
    ) -> Result<GzIndex> {
        let mut cursor =
            GzCursor::from_start(src, location)?.recording(GzIndexBuilder::after(None, span));
        cursor.drain(&mut progress)?;
        let mut index = GzIndex::new(span);
        if let Some(record) = cursor.into_record() {
            index.absorb(record);
        }
        Ok(index)
    }

    pub fn span(&self) -> u64 {
        self.span
    }

    pub fn points(&self) -> &[SeekPoint] {
        &self.points
    }

    pub fn marks(&self) -> &[Mark] {
        &self.marks
    }

    /// The marks in the decompressed range `(after, upto]`.
    pub fn marks_within(&self, after: u64, upto: u64) -> &[Mark] {
        let from = self.marks.partition_point(|m| m.out <= after);
        let to = self.marks.partition_point(|m| m.out <= upto).max(from);
        &self.marks[from..to]
    }

    /// Decompressed bytes up to which the points are known.
    pub fn covered_out(&self) -> u64 {
        self.covered_out
    }

    /// Size of the decompressed data, once a pass has reached the end.
    pub fn total_out(&self) -> Option<u64> {
        self.total_out
    }

    pub fn is_complete(&self) -> bool {
        self.total_out.is_some()
    }

    /// The last point at or before decompressed `offset` (`None`: start from the beginning of the file).
    pub fn point_at_or_before(&self, offset: u64) -> Option<&SeekPoint> {
        let after = self.points.partition_point(|p| p.out <= offset);
        after.checked_sub(1).and_then(|i| self.points.get(i))
    }

    /// The last point (where a pass extending the index starts).
    pub fn last_point(&self) -> Option<&SeekPoint> {
        self.points.last()
    }

    /// Merge what a recording pass learnt; returns whether the index grew. Passes are deterministic (same block
    /// boundaries, same spacing rule from the same last point), so points past the current last one are appended.
    pub fn absorb(&mut self, record: PassRecord) -> bool {
        let before = (
            self.points.len(),
            self.marks.len(),
            self.covered_out,
            self.total_out,
        );
        let last = self.points.last().map(|p| p.out);
        self.points.extend(
            record
                .points
                .into_iter()
                .filter(|p| last.is_none_or(|l| p.out > l)),
        );
        let last_mark = self.marks.last().map(|m| m.out);
        self.marks.extend(
            record
                .marks
                .into_iter()
                .filter(|m| last_mark.is_none_or(|l| m.out > l)),
        );
        self.covered_out = self.covered_out.max(record.reached_out);
        if let Some(total) = record.total_out {
            self.total_out = Some(total);
            self.covered_out = total;
        }
        before
            != (
                self.points.len(),
                self.marks.len(),
                self.covered_out,
                self.total_out,
            )
    }

    /// The index file's bytes for the gz file `id`.
    pub fn to_bytes(&self, id: &FileIdentity) -> Vec<u8> {
        let mut b = Vec::with_capacity(
            HEADER_LEN
                + self.points.len() * (POINT_HEAD_LEN + WINDOW_SIZE)
                + 4
                + self.marks.len() * MARK_LEN
                + 4,
        );
        b.extend_from_slice(MAGIC);
        b.extend_from_slice(&VERSION.to_le_bytes());
        b.extend_from_slice(&(if self.is_complete() { FLAG_COMPLETE } else { 0 }).to_le_bytes());
        b.extend_from_slice(&id.size.to_le_bytes());
        b.extend_from_slice(&id.mtime_ns.to_le_bytes());
        b.extend_from_slice(&id.head_crc.to_le_bytes());
        b.extend_from_slice(&self.span.to_le_bytes());
        b.extend_from_slice(&self.covered_out.to_le_bytes());
        b.extend_from_slice(&self.total_out.unwrap_or(0).to_le_bytes());
        b.extend_from_slice(&(self.points.len() as u32).to_le_bytes());
        // Windows are stored deflated when the data has redundancy; when a sample window does not shrink by a
        // quarter (noise-like data), compressing all of them would cost time for nothing, so they are stored raw.
        let sample = self
            .points
            .iter()
            .filter(|p| p.window_len() == WINDOW_SIZE)
            .find_map(|p| p.window().ok());
        let pack =
            sample.is_none_or(|w| deflate_window(w).is_some_and(|d| d.len() * 4 <= w.len() * 3));
        for p in &self.points {
            write_point(&mut b, p, pack);
        }
        b.extend_from_slice(&(self.marks.len() as u32).to_le_bytes());
        for m in &self.marks {
            b.extend_from_slice(&m.out.to_le_bytes());
            b.extend_from_slice(&m.input.to_le_bytes());
            b.push(m.bits);
        }
        let crc = zlib_rs::crc32::crc32(0, &b);
        b.extend_from_slice(&crc.to_le_bytes());
        b
    }

    /// Parse and verify an index file's bytes against the gz file `id` (windows copied out of `bytes`).
    pub fn from_bytes(bytes: &[u8], id: &FileIdentity) -> Result<GzIndex, IndexRejected> {
        let r = verified_body(bytes)?;
        parse_body(r, id, Backing::Copied)
    }

    /// Parse and verify a mapped index file against the gz file `id`: its checksum and every point's and mark's
    /// place as in [`GzIndex::from_bytes`], but raw windows stay in the map (used in place) and deflated ones are
    /// inflated when their point is first used — loading touches the file once, for its checksum.
    pub fn from_map(map: Arc<memmap2::Mmap>, id: &FileIdentity) -> Result<GzIndex, IndexRejected> {
        let r = verified_body(&map)?;
        parse_body(r, id, Backing::Mapped(&map))
    }

    /// Write the index for `id` to `path` atomically: a temporary file created with `O_EXCL` under an
    /// unpredictable name in the same directory, with permissions `mode` (the caller passes no more than the gz
    /// file's own), then renamed over `path`. A rename replaces a symbolic link at `path` itself and never writes
    /// through it; anything at `path` that is not a regular file or a link (a directory, a FIFO) is left alone and
    /// the save fails.
    pub fn save(&self, path: &Path, id: &FileIdentity, mode: u32) -> std::io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut tmp = tempfile::Builder::new()
            .prefix(&format!(".{name}."))
            .suffix(".tmp")
            .permissions(std::fs::Permissions::from_mode(mode & 0o666))
            .tempfile_in(dir)?;
        // No fsync: a file cut short by a crash fails its checksum on load and is rebuilt, never used.
        tmp.write_all(&self.to_bytes(id))?;
        match std::fs::symlink_metadata(path) {
            Ok(m) if !m.file_type().is_file() && !m.file_type().is_symlink() => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    format!("{} exists and is not a regular file", path.display()),
                ));
            }
            _ => {}
        }
        // On failure the temporary file is removed when `tmp` drops.
        tmp.persist(path).map(|_| ()).map_err(|e| e.error)
    }

    /// Read and verify the index at `path` for the gz file `id`: only a regular file (opened without following a
    /// symbolic link, and without blocking on a FIFO) of at most `max_len` bytes (see [`max_index_len`]).
    pub fn load(path: &Path, id: &FileIdentity, max_len: u64) -> Result<GzIndex, IndexRejected> {
        GzIndex::load_owned(path, id, max_len, &[])
    }

    /// [`GzIndex::load`], and only a file owned by one of `owners` (any owner when empty): an index planted by
    /// someone else in a shared directory would decode into wrong voxels.
    pub fn load_owned(
        path: &Path,
        id: &FileIdentity,
        max_len: u64,
        owners: &[u32],
    ) -> Result<GzIndex, IndexRejected> {
        use std::os::unix::fs::MetadataExt;
        use std::os::unix::fs::OpenOptionsExt;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(path);
        let file = match file {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(IndexRejected::Missing);
            }
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
                return Err(IndexRejected::NotRegular("a symbolic link"));
            }
            Err(e) => return Err(IndexRejected::Unreadable(e.to_string())),
        };
        let meta = file
            .metadata()
            .map_err(|e| IndexRejected::Unreadable(e.to_string()))?;
        if !meta.file_type().is_file() {
            return Err(IndexRejected::NotRegular(
                "not a regular file (a FIFO, device, socket or directory)",
            ));
        }
        if !owners.is_empty() && !owners.contains(&meta.uid()) {
            return Err(IndexRejected::Untrusted(meta.uid()));
        }
        if meta.len() > max_len {
            return Err(IndexRejected::TooLarge {
                len: meta.len(),
                max: max_len,
            });
        }
        if meta.len() == 0 {
            return Err(IndexRejected::Truncated);
        }
        // SAFETY: the map is read only. It is of a regular file of this user or the image's owner that voxelscan
        // never rewrites in place (indexes are replaced by rename, which leaves this inode as it is); its length
        // was checked against the cap above, and the map covers what the file held at this moment. Only the
        // owner truncating the file in place while it is in use could invalidate it (a fault, not wrong data).
        let map = unsafe { memmap2::Mmap::map(&file) }
            .map_err(|e| IndexRejected::Unreadable(e.to_string()))?;
        if map.len() as u64 > max_len {
            return Err(IndexRejected::TooLarge {
                len: map.len() as u64,
                max: max_len,
            });
        }
        GzIndex::from_map(Arc::new(map), id)
    }
}

/// DEFLATE's largest expansion: a 258-byte match coded in 2 bits gives at most 1032 output bytes per input byte.
const MAX_DEFLATE_RATIO: u64 = 1032;

/// The largest index file a gz file of `gz_size` compressed bytes can have with points every `span` bytes:
/// its decompressed size is at most `1032 × gz_size`; each point (at most one per `span` of that, and at most one
/// per compressed byte, since points sit at block boundaries) takes its 26-byte head and a window of up to 32 KiB;
/// each mark (at most one per 16 KiB of output, and one per compressed byte) 17 bytes; plus the fixed header and
/// the two counts and checksum. A longer file is not an index of this gz file and is not read.
pub fn max_index_len(gz_size: u64, span: u64) -> u64 {
    let max_out = gz_size.saturating_mul(MAX_DEFLATE_RATIO);
    let per_byte = gz_size.saturating_add(1);
    let points = (max_out / span.max(1)).saturating_add(2).min(per_byte);
    let marks = (max_out / MARK_SPAN).saturating_add(2).min(per_byte);
    let fixed = (HEADER_LEN + 4 + 4 + 4) as u64;
    points
        .saturating_mul((POINT_HEAD_LEN + WINDOW_SIZE) as u64)
        .saturating_add(marks.saturating_mul(MARK_LEN as u64))
        .saturating_add(fixed)
}

fn write_point(b: &mut Vec<u8>, p: &SeekPoint, pack: bool) {
    b.extend_from_slice(&p.out.to_le_bytes());
    b.extend_from_slice(&p.input.to_le_bytes());
    b.push(p.bits);
    // A window loaded deflated is written as it was stored, without inflating it.
    if let Window::Packed(w) = &p.window
        && let Some(stored) = w.map.get(w.stored.clone())
    {
        b.push(1);
        b.extend_from_slice(&(w.len as u32).to_le_bytes());
        b.extend_from_slice(&(stored.len() as u32).to_le_bytes());
        b.extend_from_slice(stored);
        return;
    }
    let window = p.window().unwrap_or_default();
    let packed = pack
        .then(|| deflate_window(window))
        .flatten()
        .filter(|d| d.len() < window.len());
    b.push(u8::from(packed.is_some()));
    b.extend_from_slice(&(window.len() as u32).to_le_bytes());
    let stored: &[u8] = packed.as_deref().unwrap_or(window);
    b.extend_from_slice(&(stored.len() as u32).to_le_bytes());
    b.extend_from_slice(stored);
}

fn deflate_window(window: &[u8]) -> Option<Vec<u8>> {
    let mut c = flate2::Compress::new(flate2::Compression::fast(), false);
    let mut out = Vec::with_capacity(window.len() + 64);
    match c.compress_vec(window, &mut out, flate2::FlushCompress::Finish) {
        Ok(flate2::Status::StreamEnd) => Some(out),
        _ => None,
    }
}

fn inflate_window(stored: &[u8], len: usize) -> Result<Vec<u8>, IndexRejected> {
    let mut d = flate2::Decompress::new(false);
    let mut out = Vec::with_capacity(len);
    let bad = || IndexRejected::Malformed("a window does not decompress to its length".into());
    match d.decompress_vec(stored, &mut out, flate2::FlushDecompress::Finish) {
        Ok(flate2::Status::StreamEnd) if out.len() == len => Ok(out),
        _ => Err(bad()),
    }
}

/// The body of an index file (all but its checksum) after checking its magic, version and checksum, as a reader
/// positioned after the version.
fn verified_body(bytes: &[u8]) -> Result<Reader<'_>, IndexRejected> {
    if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
        return Err(if bytes.len() < MAGIC.len() {
            IndexRejected::Truncated
        } else {
            IndexRejected::BadMagic
        });
    }
    let mut r = Reader {
        bytes,
        pos: MAGIC.len(),
    };
    let version = r.u32()?;
    if version != VERSION {
        return Err(IndexRejected::Version(version));
    }
    let body_len = bytes.len().checked_sub(4).ok_or(IndexRejected::Truncated)?;
    if body_len < HEADER_LEN {
        return Err(IndexRejected::Truncated);
    }
    let stored_crc = u32::from_le_bytes(
        bytes[body_len..]
            .try_into()
            .map_err(|_| IndexRejected::Truncated)?,
    );
    if zlib_rs::crc32::crc32(0, &bytes[..body_len]) != stored_crc {
        return Err(IndexRejected::Checksum);
    }
    Ok(Reader {
        bytes: &bytes[..body_len],
        pos: r.pos,
    })
}

/// Where parsed windows live: copied out of the bytes, or left in the index file's map.
#[derive(Clone, Copy)]
enum Backing<'a> {
    Copied,
    Mapped(&'a Arc<memmap2::Mmap>),
}

/// Little-endian field reader over a verified body; running out of bytes means a truncated file.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], IndexRejected> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.bytes.len())
            .ok_or(IndexRejected::Truncated)?;
        let s = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8, IndexRejected> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, IndexRejected> {
        Ok(u32::from_le_bytes(
            self.take(4)?
                .try_into()
                .map_err(|_| IndexRejected::Truncated)?,
        ))
    }

    fn u64(&mut self) -> Result<u64, IndexRejected> {
        Ok(u64::from_le_bytes(
            self.take(8)?
                .try_into()
                .map_err(|_| IndexRejected::Truncated)?,
        ))
    }
}

fn parse_body(
    mut r: Reader<'_>,
    id: &FileIdentity,
    backing: Backing<'_>,
) -> Result<GzIndex, IndexRejected> {
    let flags = r.u32()?;
    let size = r.u64()?;
    let mtime_ns = r.u64()? as i64;
    let head_crc = r.u32()?;
    if size != id.size {
        return Err(IndexRejected::Stale("size"));
    }
    if mtime_ns != id.mtime_ns {
        return Err(IndexRejected::Stale("modification time"));
    }
    if head_crc != id.head_crc {
        return Err(IndexRejected::Stale("first 64 KiB"));
    }
    let span = r.u64()?;
    let covered_out = r.u64()?;
    let total = r.u64()?;
    let count = r.u32()?;
    let malformed = |m: &str| IndexRejected::Malformed(m.to_string());
    if span == 0 || flags & !FLAG_COMPLETE != 0 {
        return Err(malformed("bad span or flags"));
    }
    let total_out = (flags & FLAG_COMPLETE != 0).then_some(total);
    if total_out.is_some_and(|t| t != covered_out) {
        return Err(malformed(
            "complete index whose coverage is not the total size",
        ));
    }
    let mut points: Vec<SeekPoint> = Vec::new();
    for _ in 0..count {
        let p = parse_point(&mut r, size, backing)?;
        if points
            .last()
            .is_some_and(|q| q.out >= p.out || q.input > p.input)
            || p.out > covered_out
        {
            return Err(malformed("points out of order or past the covered range"));
        }
        points.push(p);
    }
    let marks = parse_marks(&mut r, size, covered_out)?;
    if r.pos != r.bytes.len() {
        return Err(malformed("trailing bytes after the marks"));
    }
    Ok(GzIndex {
        span,
        points,
        marks,
        covered_out,
        total_out,
    })
}

fn parse_marks(
    r: &mut Reader<'_>,
    gz_size: u64,
    covered_out: u64,
) -> Result<Vec<Mark>, IndexRejected> {
    let count = r.u32()? as usize;
    if count > r.bytes.len().saturating_sub(r.pos) / MARK_LEN {
        return Err(IndexRejected::Truncated);
    }
    let mut marks: Vec<Mark> = Vec::with_capacity(count);
    for _ in 0..count {
        let m = Mark {
            out: r.u64()?,
            input: r.u64()?,
            bits: r.u8()?,
        };
        let misplaced = m.bits > 7
            || (m.bits > 0 && m.input == 0)
            || m.input > gz_size
            || m.out > covered_out
            || marks
                .last()
                .is_some_and(|q| q.out >= m.out || q.input > m.input);
        if misplaced {
            return Err(IndexRejected::Malformed(format!(
                "mark at output offset {} is out of order or bounds",
                m.out
            )));
        }
        marks.push(m);
    }
    Ok(marks)
}

fn parse_point(
    r: &mut Reader<'_>,
    gz_size: u64,
    backing: Backing<'_>,
) -> Result<SeekPoint, IndexRejected> {
    let out = r.u64()?;
    let input = r.u64()?;
    let bits = r.u8()?;
    let kind = r.u8()?;
    let len = r.u32()? as usize;
    let stored_len = r.u32()? as usize;
    if bits > 7 || (bits > 0 && input == 0) || input > gz_size || len > WINDOW_SIZE || kind > 1 {
        return Err(IndexRejected::Malformed(format!(
            "point at output offset {out} is out of bounds"
        )));
    }
    let at = r.pos;
    let stored = r.take(stored_len)?;
    if kind == 0 && stored_len != len {
        return Err(IndexRejected::Malformed(
            "raw window of the wrong length".into(),
        ));
    }
    let window = match (kind, backing) {
        (0, Backing::Copied) => Window::Owned(Arc::from(stored)),
        (0, Backing::Mapped(map)) => Window::Mapped(Arc::clone(map), at..at + len),
        (_, Backing::Copied) => Window::Owned(inflate_window(stored, len)?.into()),
        (_, Backing::Mapped(map)) => Window::Packed(Arc::new(PackedWindow {
            map: Arc::clone(map),
            stored: at..at + stored_len,
            len,
            inflated: std::sync::OnceLock::new(),
        })),
    };
    Ok(SeekPoint {
        out,
        input,
        bits,
        window,
    })
}

#[cfg(test)]
mod tests {
    use super::super::cursor::*;
    use super::*;
    use flate2::Compression;
    use flate2::write::GzEncoder;

    fn gz(data: &[u8], level: u32) -> Vec<u8> {
        let mut e = GzEncoder::new(Vec::new(), Compression::new(level));
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn noisy(n: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..n)
            .map(|i| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                if i % 3 == 0 {
                    (x % 16) as u8
                } else {
                    (i / 7) as u8
                }
            })
            .collect()
    }

    fn id() -> FileIdentity {
        FileIdentity {
            size: 1 << 40,
            mtime_ns: 99,
            head_crc: 7,
        }
    }

    fn built(data: &[u8], span: u64) -> (Vec<u8>, GzIndex) {
        let file = gz(data, 6);
        let index = GzIndex::build(&file, "t.gz", span, |_| {}).unwrap();
        (file, index)
    }

    #[test]
    fn build_records_points_every_span_and_the_total() {
        let data = noisy(3_000_000, 1);
        let (_, index) = built(&data, 256 * 1024);
        assert_eq!(index.total_out(), Some(data.len() as u64));
        let outs: Vec<u64> = index.points().iter().map(|p| p.out).collect();
        assert_eq!(outs[0], 0);
        assert!(outs.len() >= 9, "{outs:?}");
        assert!(
            outs.windows(2).all(|w| w[1] - w[0] >= 256 * 1024),
            "{outs:?}"
        );
        for p in index.points() {
            let from = p.out.saturating_sub(WINDOW_SIZE as u64) as usize;
            assert_eq!(p.window().unwrap(), &data[from..p.out as usize]);
        }
    }

    #[test]
    fn every_point_restarts_decompression() {
        let data = noisy(2_000_000, 2);
        let (file, index) = built(&data, 100_000);
        for p in index.points() {
            let mut c = GzCursor::from_point(&file, "t.gz", p).unwrap();
            let mut buf = vec![0u8; 5000.min(data.len() - p.out as usize)];
            c.read_exact(&mut buf).unwrap();
            assert_eq!(
                buf,
                &data[p.out as usize..p.out as usize + buf.len()],
                "point at {}",
                p.out
            );
        }
    }

    #[test]
    fn marks_restart_decompression_exactly_where_the_two_fills_agree() {
        let data = noisy(2_000_000, 4);
        let (file, index) = built(&data, 1 << 20);
        let outs: Vec<u64> = index.marks().iter().map(|m| m.out).collect();
        assert!(outs.len() >= 30, "{}", outs.len());
        assert!(
            outs.windows(2).all(|w| w[1] - w[0] >= MARK_SPAN),
            "{outs:?}"
        );
        let mut agreed = 0usize;
        for m in index.marks().iter().step_by(3) {
            let n = 40_000.min(data.len() - m.out as usize);
            let decode = |fill: u8| {
                let mut c = GzCursor::from_mark(&file, "t.gz", *m, fill).unwrap();
                let mut buf = vec![0u8; n];
                c.read_exact(&mut buf).unwrap();
                buf
            };
            let (zeros, ones) = (decode(0x00), decode(0xFF));
            let truth = &data[m.out as usize..m.out as usize + n];
            for k in 0..n {
                if zeros[k] == ones[k] {
                    assert_eq!(zeros[k], truth[k], "mark at {}, byte {k}", m.out);
                    agreed += 1;
                }
            }
        }
        assert!(agreed > 0);
    }

    #[test]
    fn misplaced_marks_are_malformed() {
        let (_, index) = built(&noisy(400_000, 6), 100_000);
        let mut bad = index.clone();
        bad.marks.swap(1, 2);
        let bytes = bad.to_bytes(&id());
        assert!(matches!(
            GzIndex::from_bytes(&bytes, &id()),
            Err(IndexRejected::Malformed(_))
        ));
        let mut bad = index;
        if let Some(m) = bad.marks.last_mut() {
            m.out = bad.covered_out + 1;
        }
        assert!(matches!(
            GzIndex::from_bytes(&bad.to_bytes(&id()), &id()),
            Err(IndexRejected::Malformed(_))
        ));
    }

    #[test]
    fn serialization_round_trips() {
        let (_, index) = built(&noisy(1_500_000, 3), 200_000);
        let bytes = index.to_bytes(&id());
        assert_eq!(GzIndex::from_bytes(&bytes, &id()).unwrap(), index);
    }

    /// A loaded index file is mapped: raw windows are used in place, deflated ones inflated when their point is
    /// first used; either way the points equal the built ones and restart decompression. A deflated window that
    /// does not inflate (a crafted file with a valid checksum) fails the read that uses it, naming the index.
    #[test]
    fn a_loaded_index_is_mapped_and_inflates_windows_on_use() {
        let dir = tempfile::tempdir().unwrap();
        // Noise in 4 bits of each byte: windows deflate to about half.
        let low = |seed| -> Vec<u8> { noisy(1_500_000, seed).iter().map(|b| b & 0x0F).collect() };
        for (data, packed) in [(noisy(1_500_000, 8), false), (low(9), true)] {
            let (gz_bytes, index) = built(&data, 200_000);
            let path = dir.path().join("i.vxidx");
            index.save(&path, &id(), 0o600).unwrap();
            let loaded = GzIndex::load(&path, &id(), u64::MAX).unwrap();
            let kinds: Vec<bool> = loaded.points()[1..]
                .iter()
                .map(|p| match &p.window {
                    Window::Packed(w) => w.inflated.get().is_none(),
                    Window::Mapped(..) => false,
                    Window::Owned(_) => panic!("a loaded window was copied"),
                })
                .collect();
            assert!(kinds.iter().all(|&k| k == packed), "{kinds:?}");
            assert_eq!(loaded, index);
            let p = &loaded.points()[2];
            let mut cursor = GzCursor::from_point(&gz_bytes, "i.gz", p).unwrap();
            let mut got = Vec::new();
            cursor.read_exact_into(&mut got, 1000).unwrap();
            assert_eq!(got, data[p.out as usize..p.out as usize + 1000]);
            // Written again, a deflated window is copied as stored.
            assert_eq!(loaded.to_bytes(&id()), index.to_bytes(&id()));
        }
        // A deflated window whose stored bytes are garbage, checksum recomputed: loads, fails on use.
        let (gz_bytes, index) = built(&low(10), 200_000);
        let mut bytes = index.to_bytes(&id());
        let first_stored = HEADER_LEN + POINT_HEAD_LEN;
        let second_head = first_stored + index.points()[0].window_len();
        let stored_len = u32::from_le_bytes(
            bytes[second_head + 22..second_head + 26]
                .try_into()
                .unwrap(),
        ) as usize;
        assert_eq!(
            bytes[second_head + 17],
            1,
            "the second point's window is deflated"
        );
        bytes[second_head + 26..second_head + 26 + stored_len].fill(0xAB);
        let body = bytes.len() - 4;
        let crc = zlib_rs::crc32::crc32(0, &bytes[..body]);
        bytes[body..].copy_from_slice(&crc.to_le_bytes());
        let path = dir.path().join("bad.vxidx");
        std::fs::write(&path, &bytes).unwrap();
        let loaded = GzIndex::load(&path, &id(), u64::MAX).unwrap();
        let err = GzCursor::from_point(&gz_bytes, "b.gz", &loaded.points()[1])
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("b.gz") && err.contains("index"), "{err}");
    }

    #[test]
    fn stale_index_is_rejected_for_each_identity_field() {
        let (_, index) = built(&noisy(300_000, 4), 100_000);
        let bytes = index.to_bytes(&id());
        let cases = [
            (FileIdentity { size: 1, ..id() }, "size"),
            (
                FileIdentity {
                    mtime_ns: 1,
                    ..id()
                },
                "modification time",
            ),
            (
                FileIdentity {
                    head_crc: 1,
                    ..id()
                },
                "first 64 KiB",
            ),
        ];
        for (other, what) in cases {
            assert_eq!(
                GzIndex::from_bytes(&bytes, &other),
                Err(IndexRejected::Stale(what))
            );
        }
    }

    #[test]
    fn truncated_and_corrupt_index_is_rejected() {
        let (_, index) = built(&noisy(300_000, 5), 100_000);
        let bytes = index.to_bytes(&id());
        for cut in [0, 5, 20, HEADER_LEN, bytes.len() / 2, bytes.len() - 1] {
            assert!(
                GzIndex::from_bytes(&bytes[..cut], &id()).is_err(),
                "cut at {cut}"
            );
        }
        for at in [12, HEADER_LEN + 3, bytes.len() / 2, bytes.len() - 2] {
            let mut bad = bytes.clone();
            bad[at] ^= 0x10;
            assert_eq!(
                GzIndex::from_bytes(&bad, &id()),
                Err(IndexRejected::Checksum),
                "flip at {at}"
            );
        }
        let mut bad = bytes.clone();
        bad[0] = b'X';
        assert_eq!(
            GzIndex::from_bytes(&bad, &id()),
            Err(IndexRejected::BadMagic)
        );
        let mut bad = bytes;
        bad[8] = 9;
        assert_eq!(
            GzIndex::from_bytes(&bad, &id()),
            Err(IndexRejected::Version(9))
        );
    }

    #[test]
    fn save_is_atomic_and_load_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.vxidx");
        assert_eq!(
            GzIndex::load(&path, &id(), u64::MAX),
            Err(IndexRejected::Missing)
        );
        let (_, index) = built(&noisy(400_000, 6), 100_000);
        index.save(&path, &id(), 0o644).unwrap();
        assert_eq!(GzIndex::load(&path, &id(), u64::MAX).unwrap(), index);
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            names,
            vec![std::ffi::OsString::from("x.vxidx")],
            "no temporary file left behind"
        );
    }

    fn mode_of(path: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        std::fs::symlink_metadata(path)
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    }

    #[test]
    fn saved_index_is_no_wider_than_the_mode_asked() {
        let dir = tempfile::tempdir().unwrap();
        let (_, index) = built(&noisy(300_000, 6), 100_000);
        let path = dir.path().join("private.vxidx");
        index.save(&path, &id(), 0o600).unwrap();
        assert_eq!(mode_of(&path), 0o600);
        // Execute bits never carry over; the umask may only narrow the rest.
        index.save(&path, &id(), 0o750).unwrap();
        assert_eq!(mode_of(&path) & !0o640, 0, "{:o}", mode_of(&path));
    }

    #[test]
    fn save_replaces_a_planted_symlink_and_leaves_its_target_alone() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("victim");
        std::fs::write(&target, b"precious").unwrap();
        let path = dir.path().join("x.vxidx");
        std::os::unix::fs::symlink(&target, &path).unwrap();
        let (_, index) = built(&noisy(300_000, 7), 100_000);
        index.save(&path, &id(), 0o600).unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"precious");
        assert!(
            std::fs::symlink_metadata(&path)
                .unwrap()
                .file_type()
                .is_file()
        );
        assert_eq!(GzIndex::load(&path, &id(), u64::MAX).unwrap(), index);
        // A directory (or FIFO) at the name is not replaced.
        let blocked = dir.path().join("d.vxidx");
        std::fs::create_dir(&blocked).unwrap();
        assert!(index.save(&blocked, &id(), 0o600).is_err());
        assert!(blocked.is_dir());
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".tmp"))
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }

    #[test]
    fn load_refuses_links_fifos_devices_and_oversized_files() {
        let dir = tempfile::tempdir().unwrap();
        let (_, index) = built(&noisy(300_000, 8), 100_000);
        let real = dir.path().join("real.vxidx");
        index.save(&real, &id(), 0o600).unwrap();
        let link = dir.path().join("link.vxidx");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        assert!(matches!(
            GzIndex::load(&link, &id(), u64::MAX),
            Err(IndexRejected::NotRegular(_))
        ));
        let zero = dir.path().join("zero.vxidx");
        std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
        assert!(matches!(
            GzIndex::load(&zero, &id(), u64::MAX),
            Err(IndexRejected::NotRegular(_))
        ));
        // A FIFO with no writer: opening it must not block (the test thread would hang otherwise).
        let fifo = dir.path().join("fifo.vxidx");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: `c` is a valid NUL-terminated path for the duration of the call.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let (tx, rx) = std::sync::mpsc::channel();
        let f = fifo.clone();
        std::thread::spawn(move || tx.send(GzIndex::load(&f, &id(), u64::MAX)));
        let got = rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("loading a FIFO index hung");
        assert!(matches!(got, Err(IndexRejected::NotRegular(_))), "{got:?}");
        // Owned by someone not trusted: ignored.
        let uid = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(&real).unwrap());
        assert_eq!(
            GzIndex::load_owned(&real, &id(), u64::MAX, &[uid.wrapping_add(1)]),
            Err(IndexRejected::Untrusted(uid))
        );
        assert!(GzIndex::load_owned(&real, &id(), u64::MAX, &[uid.wrapping_add(1), uid]).is_ok());
        // Over the cap: rejected from its size, without reading it (a sparse 1 TiB file).
        let len = std::fs::metadata(&real).unwrap().len();
        assert!(matches!(
            GzIndex::load(&real, &id(), len - 1),
            Err(IndexRejected::TooLarge { .. })
        ));
        let huge = dir.path().join("huge.vxidx");
        std::fs::File::create(&huge)
            .unwrap()
            .set_len(1 << 40)
            .unwrap();
        assert!(matches!(
            GzIndex::load(&huge, &id(), max_index_len(1 << 20, DEFAULT_SPAN)),
            Err(IndexRejected::TooLarge { .. })
        ));
    }

    #[test]
    fn real_indexes_fit_the_cap_of_their_gz_file() {
        for (data, span) in [
            (noisy(2_000_000, 9), 1000u64),
            (vec![0u8; 5_000_000], 4096),
            (noisy(500_000, 10), DEFAULT_SPAN),
        ] {
            let (file, index) = built(&data, span);
            let len = index.to_bytes(&id()).len() as u64;
            let cap = max_index_len(file.len() as u64, span);
            assert!(len <= cap, "{len} > {cap} (span {span})");
        }
        assert_eq!(max_index_len(u64::MAX, 1), u64::MAX);
    }

    /// Hands out at most `max` bytes per read, as a store's range reader does at the end of its range.
    struct Trickle {
        data: Vec<u8>,
        max: usize,
    }

    impl ReadAt for Trickle {
        fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
            let n = buf.len().min(self.max);
            self.data.read_at(&mut buf[..n], offset)
        }
    }

    #[test]
    fn short_reads_decompress_the_same_from_the_start_and_from_points() {
        let data = noisy(400_000, 11);
        let (file, index) = built(&data, 50_000);
        for max in [1, 7, 4096] {
            let src = Trickle {
                data: file.clone(),
                max,
            };
            let mut all = vec![0u8; data.len()];
            GzCursor::from_start(&src, "t.gz")
                .unwrap()
                .read_exact(&mut all)
                .unwrap();
            assert!(all == data, "from the start, {max} bytes per read");
            let p = &index.points()[index.points().len() / 2];
            let mut part = vec![0u8; 1000];
            GzCursor::from_point(&src, "t.gz", p)
                .unwrap()
                .read_exact(&mut part)
                .unwrap();
            assert!(
                part == data[p.out as usize..p.out as usize + 1000],
                "from a point, {max} bytes per read"
            );
        }
        let cut = Trickle {
            data: file[..file.len() / 2].to_vec(),
            max: 999,
        };
        let err = GzCursor::from_start(&cut, "cut.gz")
            .unwrap()
            .read_exact(&mut vec![0u8; data.len()])
            .unwrap_err();
        assert!(err.to_string().contains("cut.gz"), "{err}");
    }

    #[test]
    fn read_exact_into_appends_without_zeroing_first() {
        let data = noisy(300_000, 12);
        let (file, index) = built(&data, 60_000);
        let p = &index.points()[1];
        let mut v = b"head".to_vec();
        let mut c = GzCursor::from_point(&file, "t.gz", p).unwrap();
        c.read_exact_into(&mut v, 100_000).unwrap();
        assert!(v.len() == 100_004 && v[..4] == *b"head");
        assert!(v[4..] == data[p.out as usize..p.out as usize + 100_000]);
        let rest = data.len() - p.out as usize - 100_000;
        let err = c.read_exact_into(&mut v, rest + 1).unwrap_err();
        assert!(matches!(err, VoxelError::Truncated { .. }), "{err}");
        assert_eq!(v.len(), 100_004 + rest, "what was made is kept");
    }

    #[test]
    fn multi_member_with_zero_padding_decompresses_whole() {
        let (a, b) = (noisy(70_000, 7), noisy(50_000, 8));
        let mut file = gz(&a, 1);
        file.extend(gz(&[], 6));
        file.extend(gz(&b, 9));
        file.extend([0u8; 10]);
        let index = GzIndex::build(&file, "m.gz", 10_000, |_| {}).unwrap();
        assert_eq!(index.total_out(), Some(120_000));
        let mut all = vec![0u8; 120_000];
        GzCursor::from_start(&file, "m.gz")
            .unwrap()
            .read_exact(&mut all)
            .unwrap();
        assert_eq!(&all[..70_000], &a[..]);
        assert_eq!(&all[70_000..], &b[..]);
    }

    #[test]
    fn truncated_and_corrupt_streams_name_the_file() {
        let data = noisy(200_000, 9);
        let file = gz(&data, 6);
        let mut out = vec![0u8; data.len()];
        let cut = &file[..file.len() / 2];
        let err = GzCursor::from_start(&cut.to_vec(), "cut.nii.gz")
            .unwrap()
            .read_exact(&mut out)
            .unwrap_err();
        assert!(
            err.to_string().contains("cut.nii.gz") && err.to_string().contains("truncated"),
            "{err}"
        );
        let mut bad = file.clone();
        for b in &mut bad[100..140] {
            *b ^= 0x5a;
        }
        let err = GzCursor::from_start(&bad, "bad.nii.gz")
            .unwrap()
            .read_exact(&mut out)
            .unwrap_err();
        assert!(
            err.to_string().contains("bad.nii.gz") && err.to_string().contains("corrupt"),
            "{err}"
        );
        let mut garbage = file;
        garbage.extend(b"not gzip");
        let err = GzCursor::from_start(&garbage, "g.gz")
            .unwrap()
            .skip_to_end(&mut out)
            .unwrap_err();
        assert!(err.to_string().contains("g.gz"), "{err}");
    }
}
