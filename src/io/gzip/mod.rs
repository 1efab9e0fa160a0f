//! `GzipSource`: a [`ByteSource`] over a gzip file (`.nii.gz`, `.img.gz`, `.mgz`, …) that reads through a seek-point
//! index ([`index`]) when it has one and builds it while reading when it has not.
//!
//! # How a read is served
//!
//! The planned segments of one `read_segments` call are grouped into *runs*: a run starts at a seek point (or at the
//! start of the file) and serves, in one decompression pass, every segment up to where restarting at a later point
//! would be cheaper than decompressing on. Thousands of tiny segments between two points cost one pass, not one each.
//! Small segments are cut out of 128 KiB decompressed chunks; large ones are decompressed straight into the caller's
//! buffer.
//!
//! Without an index (the first read of a file), everything is one forward pass from the start of the file that also
//! records seek points. The index is *partial* until some pass reaches the end: a later read past the covered part
//! resumes from the last point and extends it. A recording pass that has served its segments runs on to the end when
//! at most a quarter of the compressed file is left (so reading most of a file completes its index; a slice near the
//! start does not pay for the rest).
//!
//! With `threads > 1` ([`GzipOptions::threads`]), runs are also cut at every seek point inside them and decompressed
//! in parallel; independent `read_segments` calls (DataFusion partitions) always run in parallel: no lock is held
//! while decompressing.
//!
//! # Where indexes are kept
//!
//! - `VOXELSCAN_NO_INDEX=1`: no index at all; every read is one forward pass from the start of the file.
//! - `VOXELSCAN_INDEX_CACHE=DIR`: index files go to `DIR/<key>.vxidx` only.
//! - Otherwise, a hidden sidecar next to the file, `.<file name>.vxidx` (e.g. `.sub-01_bold.nii.gz.vxidx`; hidden
//!   so that BIDS validators, `ls` and `*.nii.gz` globs do not see it), when that directory is writable; else
//!   `$XDG_CACHE_HOME/voxelscan/<key>.vxidx` or `~/.cache/voxelscan/<key>.vxidx`. A file opened through a
//!   symbolic link gets no sidecar (the link's target may sit in someone else's directory): its index goes to the
//!   cache directory.
//!
//! `<key>` is `<crc32><adler32>-<file name>` of the file's canonical path. Loading tries the sidecar, then the cache
//! directory; an index is used only if it matches the gz file's size, modification time and first 64 KiB and its
//! checksum holds, otherwise it is ignored and overwritten. Indexes are written atomically (temporary file +
//! rename) when a pass completes the index or extends a partial one by at least 8 spans, and only for files with at
//! least two seek points (smaller files are one span anyway).
//!
//! Index files are private as the data they hold (windows of decompressed voxels): written with the gz file's
//! permission bits (execute bits dropped; a `0600` image gets a `0600` index) through a temporary file created
//! with `O_EXCL` under an unpredictable name, renamed into place (a planted symbolic link is replaced, never written
//! through). A cache directory is created `0700` and used only while it is this user's and not world-writable.
//! Loading opens with `O_NOFOLLOW | O_NONBLOCK` and reads only a regular file owned by this user or the gz file's
//! owner, no longer than an index of this gz file can be ([`max_index_len`]); a link, FIFO, device, someone else's
//! or oversized file is ignored and the index rebuilt.
//!
//! # Decompressed data kept in memory
//!
//! With [`DataCache::Shared`] (what [`GzipOptions::from_env`] gives) or [`DataCache::Own`], the bytes a read asks
//! for (with gaps of up to 64 KiB between them) are also kept in a [`SpanCache`], cut at seek points: a read first
//! takes what the cache holds and decompresses only the rest, so repeated and overlapping reads (the same volume
//! twice, another query over the same file) cost a copy. What a pass only goes through on its way (the part of a
//! span before the data) is not kept: it would cost page faults on every first read and rarely pays. The shared cache is one per process (`VOXELSCAN_GZIP_CACHE` bytes, default 256 MiB, `0`: off), keyed by
//! the file's canonical path and identity, so every source over the same file shares it.

use std::fmt;
use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{Result, VoxelError};
use crate::io::{ByteSource, ReadStats};
use crate::plan::Segment;
use cursor::GzCursor;
use index::{DEFAULT_SPAN, FileIdentity, GzIndex, ReadAt};

pub mod cache;
pub mod cursor;
mod engine;
pub mod index;
mod inflate;
#[cfg(feature = "remote")]
pub mod remote;
mod runs;
mod serve;
pub mod sidecar;
pub mod stream;

pub use cache::SpanCache;
pub use engine::GzEngine;
use sidecar::{IndexAccess, current_uid, index_locations, index_mode};

/// Disables index use when set to `1` (or `true`/`yes`).
pub const ENV_NO_INDEX: &str = "VOXELSCAN_NO_INDEX";
/// A directory that replaces the sidecar/cache-directory choice for index files.
pub const ENV_INDEX_CACHE: &str = "VOXELSCAN_INDEX_CACHE";
/// File name extension of index files.
pub const INDEX_EXTENSION: &str = "vxidx";

/// Gaps between asked-for pieces up to this long are kept in the data cache with them (fewer, larger entries).
const KEEP_GAP: u64 = 64 * 1024;
/// Added to estimated compressed run ends (gzip trailers, headers of following members).
const INPUT_SLACK: u64 = 64 * 1024;
/// Decompressed chunk size for cutting out small segments.
const CHUNK: usize = 128 * 1024;
/// What starting a probe from a mark costs beyond its decompression, in decompressed bytes (two inflate set-ups
/// with a 32 KiB window each): a probe is tried only when it saves more than this.
const PROBE_OVERHEAD: u64 = 64 * 1024;
/// Compressed bytes a probe reads at a time (it usually needs a few KiB).
const PROBE_INPUT_CHUNK: usize = 16 * 1024;
/// Segments at least this long are decompressed straight into the output.
const DIRECT_MIN: u64 = 32 * 1024;
/// A partial index is written again once it covers this many more spans.
const SAVE_EVERY_SPANS: u64 = 8;

/// Options of a [`GzipSource`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GzipOptions {
    /// Distance between seek points in decompressed bytes ([`DEFAULT_SPAN`], 1 MiB).
    pub span: u64,
    /// Use (load, build, save) a seek-point index. `false`: every read is one forward pass.
    pub use_index: bool,
    /// Where index files live: `None` for the default (sidecar, else the user cache directory).
    pub cache_dir: Option<PathBuf>,
    /// Keep one open handle for the source's lifetime (`true`) or open the file for each read.
    pub keep_open: bool,
    /// Threads one `read_segments` call may use (1: decompress in the caller's thread only).
    pub threads: usize,
    /// Where decompressed data is kept for later reads.
    pub data_cache: DataCache,
}

/// Which in-memory cache of decompressed data a [`GzipSource`] uses.
#[derive(Debug, Clone, Default)]
pub enum DataCache {
    /// None: every read decompresses what it needs.
    #[default]
    Off,
    /// The process-wide cache ([`SpanCache::shared`], sized by `VOXELSCAN_GZIP_CACHE`).
    Shared,
    /// A cache of the caller's (shared with whichever sources are given the same one).
    Own(Arc<SpanCache>),
}

impl PartialEq for DataCache {
    /// `Own` caches are equal when they are the same cache.
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (DataCache::Off, DataCache::Off) | (DataCache::Shared, DataCache::Shared) => true,
            (DataCache::Own(a), DataCache::Own(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

impl Eq for DataCache {}

impl DataCache {
    /// The cache this choice means (`None` for `Off` and for a shared cache sized 0).
    pub fn resolve(&self) -> Result<Option<Arc<SpanCache>>> {
        match self {
            DataCache::Off => Ok(None),
            DataCache::Shared => SpanCache::shared(),
            DataCache::Own(c) => Ok(Some(Arc::clone(c))),
        }
    }
}

impl Default for GzipOptions {
    /// Indexing on, default cache locations, one handle, one thread, no data cache; environment variables are not
    /// read.
    fn default() -> Self {
        GzipOptions {
            span: DEFAULT_SPAN,
            use_index: true,
            cache_dir: None,
            keep_open: true,
            threads: 1,
            data_cache: DataCache::Off,
        }
    }
}

impl GzipOptions {
    /// The defaults with `VOXELSCAN_NO_INDEX` and `VOXELSCAN_INDEX_CACHE` applied, and the process-wide data cache
    /// (sized by `VOXELSCAN_GZIP_CACHE` when the first source opens).
    pub fn from_env() -> GzipOptions {
        let no_index = std::env::var(ENV_NO_INDEX)
            .map(|v| matches!(v.trim().to_ascii_lowercase().as_str(), "1" | "true" | "yes"))
            .unwrap_or(false);
        let cache_dir = std::env::var_os(ENV_INDEX_CACHE)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from);
        GzipOptions {
            use_index: !no_index,
            cache_dir,
            data_cache: DataCache::Shared,
            ..GzipOptions::default()
        }
    }
}

/// Where the compressed bytes of decompression runs come from: a local file as it is, an object in a store through
/// a reader that requests the planned ranges.
pub trait RunSource: Sync {
    /// A reader for runs executed one after the other that read about the compressed ranges `plan` (in order; each
    /// starts at a run's first byte and ends where it is expected to stop). Reads elsewhere must still be served: a
    /// run may need bytes past its planned end.
    fn reader(&self, plan: &[Range<u64>]) -> Result<Box<dyn ReadAt + '_>>;

    /// Whether short reads may probe from window-free marks (see [`index`]): true where re-reading a few
    /// KiB of compressed bytes is cheap.
    fn probes_marks(&self) -> bool {
        true
    }
}

impl RunSource for File {
    fn reader(&self, _plan: &[Range<u64>]) -> Result<Box<dyn ReadAt + '_>> {
        Ok(Box::new(self))
    }
}

impl RunSource for Vec<u8> {
    fn reader(&self, _plan: &[Range<u64>]) -> Result<Box<dyn ReadAt + '_>> {
        Ok(Box::new(self))
    }
}

/// A gzip file read through a seek-point index. `Send + Sync`; reads from several threads run in parallel.
pub struct GzipSource {
    path: PathBuf,
    file: Option<Arc<File>>,
    engine: GzEngine,
}

impl fmt::Debug for GzipSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GzipSource")
            .field("engine", &self.engine)
            .finish()
    }
}

/// Whether an index file of `path` lies where [`GzipSource::open`] looks for one (its validity is checked when it is
/// loaded). With one, a read may start at any seek point; without, the first read builds it in a forward pass.
pub fn index_exists(path: &Path) -> bool {
    let options = GzipOptions::from_env();
    options.use_index
        && index_locations(path, &options)
            .iter()
            .any(|place| place.path.is_file())
}

impl GzipSource {
    /// Open `path` with [`GzipOptions::from_env`].
    pub fn open(path: &Path) -> Result<GzipSource> {
        GzipSource::with_options(path, GzipOptions::from_env())
    }

    /// Open `path`, loading a cached index when one matches the file.
    pub fn with_options(path: &Path, options: GzipOptions) -> Result<GzipSource> {
        use std::os::unix::fs::MetadataExt;
        let location = path.display().to_string();
        let file = File::open(path).map_err(|e| VoxelError::io(path, e))?;
        let identity = FileIdentity::of(&file, &location)?;
        let meta = file.metadata().map_err(|e| VoxelError::io(path, e))?;
        let access = IndexAccess {
            mode: index_mode(meta.mode(), meta.gid()),
            owners: vec![current_uid(), meta.uid()],
        };
        let index_paths = if options.use_index {
            index_locations(path, &options)
        } else {
            Vec::new()
        };
        let canonical = std::fs::canonicalize(path)
            .unwrap_or_else(|_| path.to_path_buf())
            .display()
            .to_string();
        let keep = options.keep_open;
        let engine = GzEngine::new(location, canonical, index_paths, access, options, identity)?;
        Ok(GzipSource {
            path: path.to_path_buf(),
            file: keep.then(|| Arc::new(file)),
            engine,
        })
    }

    pub fn options(&self) -> &GzipOptions {
        self.engine.options()
    }

    /// The current index (possibly partial or empty).
    pub fn index(&self) -> Arc<GzIndex> {
        self.engine.index()
    }

    /// Where the index was last loaded from or written to.
    pub fn index_path(&self) -> Option<PathBuf> {
        self.engine.index_path()
    }

    /// Size of the decompressed data, when a complete index knows it.
    pub fn uncompressed_size(&self) -> Option<u64> {
        self.index().total_out()
    }

    /// The data cache this source reads through and inserts into, if any.
    pub fn data_cache(&self) -> Option<&Arc<SpanCache>> {
        self.engine.data_cache()
    }

    /// Complete the index (one pass from its last point to the end), write it, and return it with where it was
    /// written (`None` when it could not be, or is not worth writing). `progress` gets compressed bytes consumed.
    pub fn build_index(
        &self,
        progress: impl FnMut(u64),
    ) -> Result<(Arc<GzIndex>, Option<PathBuf>)> {
        let (file, identity) = self.file_handle()?;
        self.engine.build_index(file.as_ref(), identity, progress)
    }

    /// The handle to read from; a fresh handle is checked against the identity the index belongs to, and a changed
    /// file starts over with a new identity (and whatever index matches it).
    fn file_handle(&self) -> Result<(Arc<File>, FileIdentity)> {
        let known = self.engine.identity();
        if let Some(f) = &self.file {
            return Ok((Arc::clone(f), known));
        }
        let file = File::open(&self.path).map_err(|e| VoxelError::io(&self.path, e))?;
        let meta = file.metadata().map_err(|e| VoxelError::io(&self.path, e))?;
        let quick = FileIdentity::of_metadata(&meta);
        if quick != Some((known.size, known.mtime_ns)) {
            let identity = FileIdentity::of(&file, self.engine.location())?;
            self.engine.reset(identity);
            return Ok((Arc::new(file), identity));
        }
        Ok((Arc::new(file), known))
    }
}

impl ByteSource for GzipSource {
    fn location(&self) -> &str {
        self.engine.location()
    }

    /// `None`: the decompressed size is not known without reading (see [`GzipSource::uncompressed_size`]).
    fn size(&self) -> Result<Option<u64>> {
        Ok(None)
    }

    fn read_segments(&self, segments: &[Segment], out: &mut [u8]) -> Result<ReadStats> {
        let (file, identity) = self.file_handle()?;
        self.engine.read(file.as_ref(), identity, segments, out)
    }
}

/// The first `n` decompressed bytes of the gzip file at `path` (fewer only when the data is shorter), for header
/// parsing. Corrupt or truncated compressed data is an error naming the file.
pub fn read_prefix(path: &Path, n: usize) -> Result<Vec<u8>> {
    let location = path.display().to_string();
    let file = File::open(path).map_err(|e| VoxelError::io(path, e))?;
    let mut cursor = GzCursor::from_start(&file, &location)?;
    let mut out = vec![0u8; n];
    let got = cursor.fill(&mut out)?;
    out.truncate(got);
    Ok(out)
}

#[cfg(test)]
mod tests;
