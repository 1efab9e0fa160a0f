//! Byte sources: where the bytes of an image come from. One trait, several places (local file by mmap or
//! positional reads, a gzip stream, later object storage). The read planner decides *which* bytes; a source only
//! fetches them, coalescing as suits the medium.

use std::fmt::Debug;
use std::path::Path;
use std::sync::Arc;

use crate::error::Result;
use crate::plan::Segment;

pub mod gzip;
pub mod local;
pub mod mapped;
pub mod ranges;
#[cfg(feature = "remote")]
pub mod redact;
#[cfg(feature = "remote")]
pub mod remote;

/// What one read cost, for `EXPLAIN ANALYZE`, `--stats` and the bytes-read assertions in tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReadStats {
    /// Bytes taken from the medium (compressed bytes for gzip, bytes fetched for remote stores).
    pub bytes_read: u64,
    /// Bytes delivered to the caller (sum of the segment lengths).
    pub bytes_delivered: u64,
    /// Planned segments served.
    pub segments: u64,
    /// Physical requests issued (reads, GETs, decompression passes).
    pub requests: u64,
}

impl ReadStats {
    pub fn add(&mut self, other: ReadStats) {
        self.bytes_read += other.bytes_read;
        self.bytes_delivered += other.bytes_delivered;
        self.segments += other.segments;
        self.requests += other.requests;
    }
}

/// Everything read by this process so far (data reads through proxies, plus remote header and listing
/// requests): what `--stats` prints.
pub fn totals() -> ReadStats {
    TOTALS.lock().map(|t| *t).unwrap_or_default()
}

/// Add to the process totals.
pub fn record(stats: ReadStats) {
    if let Ok(mut t) = TOTALS.lock() {
        t.add(stats);
    }
}

static TOTALS: std::sync::Mutex<ReadStats> = std::sync::Mutex::new(ReadStats {
    bytes_read: 0,
    bytes_delivered: 0,
    segments: 0,
    requests: 0,
});

/// A readable, immutable run of bytes. How segments are coalesced into requests is the source's own policy (none
/// for local files; a gap and over-read budget for stores; runs between seek points for gzip), through the one
/// range merger [`ranges::merge_ranges`] where ranges are merged; callers only say which bytes they need.
pub trait ByteSource: Send + Sync + Debug {
    /// Path or URL, for error messages.
    fn location(&self) -> &str;

    /// Total length when known without reading the data (not for compressed streams).
    fn size(&self) -> Result<Option<u64>>;

    /// Fill `out` with the bytes of `segments`, concatenated in the order given. Segments are sorted by offset and do
    /// not overlap; `out.len()` equals the sum of their lengths. A segment past the end of the data is an error
    /// (`VoxelError::Truncated`), never a short or zero-filled result.
    fn read_segments(&self, segments: &[Segment], out: &mut [u8]) -> Result<ReadStats>;
}

/// The byte source for a gzip-compressed file at `path`: random access through a seek-point index (`gzip`), with
/// the process-wide data cache when `data_cache` (and `VOXELSCAN_GZIP_CACHE` gives it room).
pub fn gzip_source(path: &Path, keep_open: bool, data_cache: bool) -> Result<Arc<dyn ByteSource>> {
    // Large reads decompress runs between index points on all cores.
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut options = gzip::GzipOptions {
        keep_open,
        threads,
        ..gzip::GzipOptions::from_env()
    };
    if !data_cache {
        options.data_cache = gzip::DataCache::Off;
    }
    Ok(Arc::new(gzip::GzipSource::with_options(path, options)?))
}
