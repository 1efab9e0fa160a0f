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
use std::sync::{Arc, RwLock};

use crate::error::{Result, VoxelError};
use crate::io::{ByteSource, ReadStats};
use crate::plan::Segment;
use index::{
    DEFAULT_SPAN, FileIdentity, GzCursor, GzIndex, GzIndexBuilder, Mark, PassRecord, ReadAt,
    SeekPoint, max_index_len,
};

pub mod cache;
pub mod index;
#[cfg(feature = "remote")]
pub mod remote;
pub mod stream;

pub use cache::SpanCache;
use cache::{Cover, MAX_ENTRY};

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

/// The index state of one stream: replaced wholesale (copy-on-write) when a pass teaches it something.
struct State {
    identity: FileIdentity,
    index: Arc<GzIndex>,
    /// `covered_out` of the last index written or loaded (to decide when a partial index is worth writing again).
    stored_covered: u64,
    stored_at: Option<PathBuf>,
}

/// The seek-point index, data cache and read planning of one gzip stream, whatever holds its compressed bytes (a
/// local file in [`GzipSource`], an object in a store in [`remote`]). `Send + Sync`; reads run in parallel.
pub struct GzEngine {
    location: String,
    options: GzipOptions,
    state: RwLock<State>,
    data_cache: Option<Arc<SpanCache>>,
    /// Where index files are loaded from and written to, in order of preference (empty: kept in memory only).
    index_paths: Vec<IndexPlace>,
    /// Permission bits of written index files, and whose index files are loaded.
    access: IndexAccess,
    /// With the stream's identity, the key of its data in the data cache (a canonical path or a URL).
    cache_name: String,
}

impl fmt::Debug for GzEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let index = self.index();
        f.debug_struct("GzEngine")
            .field("location", &self.location)
            .field("options", &self.options)
            .field("points", &index.points().len())
            .field("covered_out", &index.covered_out())
            .field("total_out", &index.total_out())
            .finish()
    }
}

impl GzEngine {
    /// An engine for the stream `identity` at `location`, with the first index in `index_paths` that matches it
    /// (and `access` allows).
    pub fn new(
        location: String,
        cache_name: String,
        index_paths: Vec<IndexPlace>,
        access: IndexAccess,
        options: GzipOptions,
        identity: FileIdentity,
    ) -> Result<GzEngine> {
        let data_cache = options.data_cache.resolve()?;
        let state = initial_state(&index_paths, &access, &options, identity);
        Ok(GzEngine {
            location,
            options,
            state: RwLock::new(state),
            data_cache,
            index_paths,
            access,
            cache_name,
        })
    }

    pub fn location(&self) -> &str {
        &self.location
    }

    pub fn options(&self) -> &GzipOptions {
        &self.options
    }

    /// The current index (possibly partial or empty).
    pub fn index(&self) -> Arc<GzIndex> {
        Arc::clone(&self.read_state().index)
    }

    /// Where the index was last loaded from or written to.
    pub fn index_path(&self) -> Option<PathBuf> {
        self.read_state().stored_at.clone()
    }

    /// The identity the current index belongs to.
    pub fn identity(&self) -> FileIdentity {
        self.read_state().identity
    }

    /// The data cache reads go through, if any.
    pub fn data_cache(&self) -> Option<&Arc<SpanCache>> {
        self.data_cache.as_ref()
    }

    /// Start over for a replaced stream: its identity, and whatever stored index matches it.
    pub fn reset(&self, identity: FileIdentity) {
        let mut state = self.write_state();
        if state.identity != identity {
            *state = initial_state(&self.index_paths, &self.access, &self.options, identity);
        }
    }

    /// Complete the index (one pass from its last point to the end) and write it; returns it with where it was
    /// written (`None` when it could not be, or is not worth writing). `progress` gets compressed bytes consumed.
    pub fn build_index(
        &self,
        src: &dyn RunSource,
        identity: FileIdentity,
        progress: impl FnMut(u64),
    ) -> Result<(Arc<GzIndex>, Option<PathBuf>)> {
        let index = self.index();
        if !index.is_complete() {
            let record = self.complete_pass(src, &index, progress)?;
            self.absorb(record, identity);
        }
        let index = self.index();
        let written = self.write_index(true);
        Ok((index, written))
    }

    fn complete_pass(
        &self,
        src: &dyn RunSource,
        index: &GzIndex,
        mut progress: impl FnMut(u64),
    ) -> Result<PassRecord> {
        let start = index.last_point();
        let whole_rest = input_start(start)..self.read_state().identity.size;
        let reader = src.reader(std::slice::from_ref(&whole_rest))?;
        let mut cursor = cursor_at(&*reader, &self.location, start)?.recording(
            GzIndexBuilder::after(start.map(|p| p.out), self.options.span),
        );
        cursor.drain(&mut progress)?;
        cursor
            .into_record()
            .ok_or_else(|| VoxelError::Invalid("recording pass without a builder".into()))
    }

    /// Fill `out` with `segments` of the stream `identity`, reading compressed bytes from `src`: what the data
    /// cache holds is copied, the rest decompressed through the index (or in one forward pass without one).
    pub fn read(
        &self,
        src: &dyn RunSource,
        identity: FileIdentity,
        segments: &[Segment],
        out: &mut [u8],
    ) -> Result<ReadStats> {
        check_segments(&self.location, segments, out.len())?;
        if out.is_empty() {
            return Ok(ReadStats {
                segments: segments.len() as u64,
                ..ReadStats::default()
            });
        }
        let cache = self
            .data_cache
            .as_deref()
            .map(|c| (c, self.cache_key(&identity)));
        let pieces = match &cache {
            Some((c, key)) => take_cached(c, key, segments, out),
            None => pieces_of(segments),
        };
        let mut stats = if self.options.use_index {
            self.indexed_read(src, identity, segments, pieces, out, cache)?
        } else if pieces.is_empty() {
            ReadStats::default()
        } else {
            let sink = cache.map(|(c, key)| {
                CacheSink::new(c, key, Arc::new(GzIndex::new(1)), self.options.span)
            });
            self.forward_pass(src, pieces, out, sink.as_ref())?
        };
        stats.segments = segments.len() as u64;
        stats.bytes_delivered = out.len() as u64;
        Ok(stats)
    }

    /// The data cache's key for this stream as `identity` describes it: a replaced file has another key.
    fn cache_key(&self, identity: &FileIdentity) -> Arc<str> {
        let FileIdentity {
            size,
            mtime_ns,
            head_crc,
        } = identity;
        Arc::from(format!(
            "{}\0{size}:{mtime_ns}:{head_crc:08x}",
            self.cache_name
        ))
    }

    fn read_state(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write_state(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Merge the points of a pass made over the stream `identity`; write the index when it became complete or grew
    /// enough. A pass over a file that has been replaced since is dropped.
    fn absorb(&self, record: PassRecord, identity: FileIdentity) {
        let worth_writing = {
            let mut state = self.write_state();
            if state.identity != identity {
                return;
            }
            let mut index = GzIndex::clone(&state.index);
            if !index.absorb(record) {
                return;
            }
            state.index = Arc::new(index);
            let grown = state
                .index
                .covered_out()
                .saturating_sub(state.stored_covered);
            state.index.is_complete() || grown >= SAVE_EVERY_SPANS.saturating_mul(self.options.span)
        };
        if worth_writing {
            self.write_index(false);
        }
    }

    /// Write the current index to the first location that accepts it; `None` if none did or it is too small to
    /// be worth it. `force` writes even if nothing changed since the last write.
    fn write_index(&self, force: bool) -> Option<PathBuf> {
        if !self.options.use_index {
            return None;
        }
        let (index, identity, stored_covered) = {
            let s = self.read_state();
            (Arc::clone(&s.index), s.identity, s.stored_covered)
        };
        if index.points().len() < 2
            || (!force && index.covered_out() <= stored_covered && stored_covered > 0)
        {
            return None;
        }
        let saved = save_index(&index, &self.index_paths, &identity, self.access.mode)?;
        let mut s = self.write_state();
        s.stored_covered = s.stored_covered.max(index.covered_out());
        s.stored_at = Some(saved.clone());
        Some(saved)
    }

    fn forward_pass(
        &self,
        src: &dyn RunSource,
        pieces: Vec<Piece>,
        out: &mut [u8],
        sink: Option<&CacheSink<'_>>,
    ) -> Result<ReadStats> {
        let mut run = Run {
            start: None,
            record: false,
            pieces,
            input: 0..0,
            marks: Vec::new(),
        };
        let size = self.read_state().identity.size;
        run.input = input_range(&run, &GzIndex::new(1), size);
        let (_, stats) = run_group(src, &self.location, &[run], out, 0, None, sink)?;
        Ok(stats)
    }

    /// Serve `pieces` (the parts of `segments` not found in the data cache) through the index.
    fn indexed_read(
        &self,
        src: &dyn RunSource,
        identity: FileIdentity,
        segments: &[Segment],
        pieces: Vec<Piece>,
        out: &mut [u8],
        cache: Option<(&SpanCache, Arc<str>)>,
    ) -> Result<ReadStats> {
        let index = {
            let s = self.read_state();
            // Another thread may have seen the file replaced meanwhile: never mix indexes of two files.
            if s.identity == identity {
                Arc::clone(&s.index)
            } else {
                Arc::new(GzIndex::new(self.options.span))
            }
        };
        if let (Some(total), Some(last)) = (index.total_out(), segments.last()) {
            let end = last.offset.saturating_add(last.len);
            if end > total {
                return Err(VoxelError::Truncated {
                    path: self.location.clone(),
                    expected: end,
                    actual: total,
                });
            }
        }
        if pieces.is_empty() {
            return Ok(ReadStats::default());
        }
        let mut runs = plan_runs(&index, pieces);
        if self.options.threads > 1 {
            runs = runs
                .into_iter()
                .flat_map(|r| split_at_points(r, &index))
                .collect();
        }
        for run in &mut runs {
            run.input = input_range(run, &index, identity.size);
            if src.probes_marks() && !run.record {
                run.marks = index.marks_within(run.start_out(), run.end()).to_vec();
            }
        }
        let tail = Some(TailPolicy {
            file_size: identity.size,
            span: self.options.span,
        });
        let sink = cache.map(|(cache, key)| CacheSink::new(cache, key, index, self.options.span));
        let (records, stats) = run_all(
            src,
            &self.location,
            &runs,
            out,
            self.options.threads,
            tail,
            sink.as_ref(),
        )?;
        for record in records {
            self.absorb(record, identity);
        }
        Ok(stats)
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

/// Where an index file may be loaded from and written to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexPlace {
    pub path: PathBuf,
    /// In a cache directory (created `0700`; used only while it is a directory of this user that others cannot
    /// write to), rather than beside the gz file.
    pub in_cache_dir: bool,
}

impl IndexPlace {
    /// A file in a cache directory.
    pub fn cache(path: PathBuf) -> IndexPlace {
        IndexPlace {
            path,
            in_cache_dir: true,
        }
    }
}

/// Candidate index file locations, in order of preference: the sidecar in the directory where `path` itself
/// lives (not when `path` or a directory on it is a symbolic link: never beside a link's target, in a directory
/// that may be someone else's), then the user cache directory; only the cache directory when `options.cache_dir` names one.
pub fn index_locations(path: &Path, options: &GzipOptions) -> Vec<IndexPlace> {
    let canonical = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let name = canonical
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let key = cache_file_name(canonical.as_os_str().as_encoded_bytes(), &name);
    if let Some(dir) = &options.cache_dir {
        return vec![IndexPlace::cache(dir.join(key))];
    }
    let mut out = Vec::new();
    // A sidecar only when no symbolic link is on the way to the file (the file itself or any directory above it):
    // otherwise "where the path lives" would be a link target's directory.
    let direct = std::path::absolute(path).is_ok_and(|a| a == canonical);
    if direct && let Some(dir) = canonical.parent() {
        out.push(IndexPlace {
            path: dir.join(format!(".{name}.{INDEX_EXTENSION}")),
            in_cache_dir: false,
        });
    }
    if let Some(dir) = user_cache_dir() {
        out.push(IndexPlace::cache(dir.join(key)));
    }
    out
}

/// Who may read the index files an engine writes, and whose files it loads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexAccess {
    /// Permission bits of written index files (no wider than the gz file's own).
    pub mode: u32,
    /// Index files are loaded only when owned by one of these users (this user and the gz file's owner).
    pub owners: Vec<u32>,
}

impl IndexAccess {
    /// Private to this user: for objects in stores, whose permissions are not known.
    pub fn private() -> IndexAccess {
        IndexAccess {
            mode: 0o600,
            owners: vec![current_uid()],
        }
    }
}

/// Permission bits for an index of a file with `mode` and group `gid`: the file's own, without execute bits, and
/// without group bits when the index will belong to another group (ours) than the file's, whose members might not
/// have been able to read the file.
pub fn index_mode(mode: u32, gid: u32) -> u32 {
    // SAFETY: getegid has no preconditions and cannot fail.
    let ours = unsafe { libc::getegid() };
    let mode = mode & 0o666;
    if gid == ours { mode } else { mode & !0o070 }
}

fn current_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Save `index` at the first of `places` that accepts it (a cache directory only while [`cache_dir_usable`]), with
/// permission bits `mode`; where it went, or `None` if nowhere did.
pub fn save_index(
    index: &GzIndex,
    places: &[IndexPlace],
    identity: &FileIdentity,
    mode: u32,
) -> Option<PathBuf> {
    places.iter().find_map(|place| {
        let usable = !place.in_cache_dir || cache_dir_usable(&place.path, true);
        (usable && index.save(&place.path, identity, mode).is_ok()).then(|| place.path.clone())
    })
}

/// Whether the directory of the cache file `path` may be used: a directory owned by this user that others cannot
/// write to (so nobody else can plant or swap index files in it). With `create`, a missing one is made `0700`.
pub fn cache_dir_usable(path: &Path, create: bool) -> bool {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    let Some(dir) = path.parent() else {
        return false;
    };
    if create && !dir.exists() {
        let _ = std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir);
    }
    let me = current_uid();
    std::fs::metadata(dir).is_ok_and(|m| m.is_dir() && m.uid() == me && m.mode() & 0o002 == 0)
}

/// `<crc32><adler32>-<name>.vxidx`: an index file name in a cache directory for the stream called `id` (a canonical
/// path or a URL); `name` keeps it readable.
pub fn cache_file_name(id: &[u8], name: &str) -> String {
    format!(
        "{:08x}{:08x}-{name}.{INDEX_EXTENSION}",
        zlib_rs::crc32::crc32(0, id),
        zlib_rs::adler32::adler32(1, id)
    )
}

/// `$XDG_CACHE_HOME/voxelscan` (when absolute), else `$HOME/.cache/voxelscan`.
pub fn user_cache_dir() -> Option<PathBuf> {
    let xdg = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute());
    let base = xdg.or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("voxelscan"))
}

/// A fresh state for `identity`, with the first stored index that matches it (or an empty one). Index files are
/// read only up to the size an index of this stream can have ([`max_index_len`]).
fn initial_state(
    paths: &[IndexPlace],
    access: &IndexAccess,
    options: &GzipOptions,
    identity: FileIdentity,
) -> State {
    let fresh = |index| State {
        identity,
        index: Arc::new(index),
        stored_covered: 0,
        stored_at: None,
    };
    if !options.use_index {
        return fresh(GzIndex::new(options.span));
    }
    let max_len = max_index_len(identity.size, options.span);
    for place in paths {
        if place.in_cache_dir && !cache_dir_usable(&place.path, false) {
            continue;
        }
        let candidate = &place.path;
        match GzIndex::load_owned(candidate, &identity, max_len, &access.owners) {
            // An index coarser than asked for is rebuilt; a finer one is fine.
            Ok(index) if index.span() <= options.span => {
                let covered = index.covered_out();
                return State {
                    identity,
                    index: Arc::new(index),
                    stored_covered: covered,
                    stored_at: Some(candidate.clone()),
                };
            }
            _ => {}
        }
    }
    fresh(GzIndex::new(options.span))
}

fn check_segments(location: &str, segments: &[Segment], out_len: usize) -> Result<()> {
    let mut total: u64 = 0;
    let mut prev_end = 0u64;
    for s in segments {
        let end = s.offset.checked_add(s.len);
        if s.offset < prev_end || end.is_none() {
            return Err(VoxelError::Invalid(format!(
                "{location}: segments must be sorted and disjoint (segment at offset {})",
                s.offset
            )));
        }
        prev_end = end.unwrap_or(u64::MAX);
        total = total.saturating_add(s.len);
    }
    if total != out_len as u64 {
        return Err(VoxelError::Invalid(format!(
            "{location}: read buffer of {out_len} bytes for {total} planned bytes"
        )));
    }
    Ok(())
}

/// Part of a segment: decompressed range `[offset, offset + len)` goes to `out[out_at..]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Piece {
    offset: u64,
    len: u64,
    out_at: usize,
}

impl Piece {
    fn end(&self) -> u64 {
        self.offset + self.len
    }
}

/// One decompression pass: from `start` (`None`: the start of the file) through `pieces`, in order.
#[derive(Debug, Clone)]
struct Run {
    start: Option<SeekPoint>,
    record: bool,
    pieces: Vec<Piece>,
    /// The compressed bytes the run is expected to read (its end exact when a seek point follows the run, else
    /// estimated).
    input: Range<u64>,
    /// Window-free block boundaries after `start` and up to the run's end, from which short pieces far from
    /// `start` may be probed.
    marks: Vec<Mark>,
}

impl Run {
    fn start_out(&self) -> u64 {
        self.start.as_ref().map_or(0, |p| p.out)
    }

    fn end(&self) -> u64 {
        self.pieces.last().map_or(self.start_out(), Piece::end)
    }

    /// Decompressed bytes this run goes through.
    fn work(&self) -> u64 {
        self.end() - self.start_out()
    }

    /// The part of the output buffer this run writes: `[first.out_at, last.out_at + last.len)`.
    fn out_range(&self) -> (usize, usize) {
        match (self.pieces.first(), self.pieces.last()) {
            (Some(a), Some(b)) => (a.out_at, b.out_at + b.len as usize),
            _ => (0, 0),
        }
    }
}

fn pieces_of(segments: &[Segment]) -> Vec<Piece> {
    let mut out_at = 0usize;
    let mut pieces = Vec::with_capacity(segments.len());
    for s in segments {
        if s.len > 0 {
            pieces.push(Piece {
                offset: s.offset,
                len: s.len,
                out_at,
            });
        }
        out_at += s.len as usize;
    }
    pieces
}

/// Group segments into runs: a segment joins the current run unless the index has a point after where that run
/// already is and at or before the segment. Segments past what the index covers go to one run that extends it from
/// its last point.
fn plan_runs(index: &GzIndex, pieces: Vec<Piece>) -> Vec<Run> {
    let mut runs: Vec<Run> = Vec::new();
    for piece in pieces {
        // Past the covered part, the run records points (those it finds again before the index's last point are
        // dropped when merged).
        let beyond = !index.is_complete() && piece.end() > index.covered_out();
        let start = index.point_at_or_before(piece.offset);
        let start_out = start.map_or(0, |p| p.out);
        if let Some(run) = runs.last_mut() {
            // A recording run goes on through everything; another one until a later point is closer.
            if run.record || start_out <= run.end() {
                run.record |= beyond;
                run.pieces.push(piece);
                continue;
            }
        }
        runs.push(Run {
            start: start.cloned(),
            record: beyond,
            pieces: vec![piece],
            input: 0..0,
            marks: Vec::new(),
        });
    }
    runs
}

/// Cut a (non-recording) run at every seek point inside its pieces, so the parts can run in parallel.
fn split_at_points(run: Run, index: &GzIndex) -> Vec<Run> {
    if run.record {
        return vec![run];
    }
    let points = index.points();
    let mut out = Vec::new();
    let mut cur = Run {
        start: run.start.clone(),
        record: false,
        pieces: Vec::new(),
        input: 0..0,
        marks: Vec::new(),
    };
    for piece in run.pieces {
        let (mut offset, mut out_at) = (piece.offset, piece.out_at);
        let first = points.partition_point(|p| p.out <= offset);
        for q in points[first..].iter().take_while(|q| q.out < piece.end()) {
            let len = q.out - offset;
            cur.pieces.push(Piece {
                offset,
                len,
                out_at,
            });
            out.push(std::mem::replace(
                &mut cur,
                Run {
                    start: Some(q.clone()),
                    record: false,
                    pieces: Vec::new(),
                    input: 0..0,
                    marks: Vec::new(),
                },
            ));
            offset = q.out;
            out_at += len as usize;
        }
        cur.pieces.push(Piece {
            offset,
            len: piece.end() - offset,
            out_at,
        });
    }
    out.push(cur);
    out.retain(|r| !r.pieces.is_empty() && r.pieces.iter().any(|p| p.len > 0));
    out
}

/// The compressed offset a pass from `start` reads first (the byte holding a point's leading bits).
fn input_start(start: Option<&SeekPoint>) -> u64 {
    start.map_or(0, |p| p.input.saturating_sub(u64::from(p.bits > 0)))
}

/// The compressed bytes a run reads, in a file of `size` compressed bytes: from its start point to the first seek
/// point at or after its last byte (a pass that has produced `p.out` bytes has consumed input up to `p.input`); the
/// end of the file after the index's last point; else (no point after it yet, or a recording run, which may go on)
/// an estimate from the compression ratio the index has seen (1 when it has seen none).
fn input_range(run: &Run, index: &GzIndex, size: u64) -> Range<u64> {
    let from = input_start(run.start.as_ref()).min(size);
    let end = run.end();
    let points = index.points();
    if !run.record {
        match points.get(points.partition_point(|p| p.out < end)) {
            Some(p) => return from..p.input.clamp(from, size),
            None if index.is_complete() => return from..size,
            None => {}
        }
    }
    let ratio = points
        .last()
        .filter(|p| p.out > 0)
        .map_or(1.0, |p| p.input as f64 / p.out as f64);
    let guess = (end - run.start_out()) as f64 * ratio * 1.1;
    let to = from
        .saturating_add(guess as u64)
        .saturating_add(INPUT_SLACK);
    from..to.min(size)
}

/// When a recording pass may run on to the end to complete the index.
#[derive(Debug, Clone, Copy)]
struct TailPolicy {
    file_size: u64,
    span: u64,
}

struct RunDone {
    stats: ReadStats,
    record: Option<PassRecord>,
}

/// Execute `runs` into `out`, on up to `threads` threads (contiguous groups of runs of about equal work).
fn run_all(
    src: &dyn RunSource,
    location: &str,
    runs: &[Run],
    out: &mut [u8],
    threads: usize,
    tail: Option<TailPolicy>,
    sink: Option<&CacheSink<'_>>,
) -> Result<(Vec<PassRecord>, ReadStats)> {
    let groups = group_runs(runs, threads.max(1));
    if groups.len() <= 1 {
        return run_group(src, location, runs, out, 0, tail, sink);
    }
    // Hand each group the disjoint part of `out` its runs write.
    let mut parts = Vec::with_capacity(groups.len());
    let mut rest = out;
    let mut consumed = 0usize;
    for g in &groups {
        let (_, end) = g.last().map_or((0, consumed), |r| r.out_range());
        let (head, tail_part) = rest.split_at_mut(end - consumed);
        parts.push((g, head, consumed));
        rest = tail_part;
        consumed = end;
    }
    let results: Vec<Result<(Vec<PassRecord>, ReadStats)>> = std::thread::scope(|scope| {
        let handles: Vec<_> = parts
            .into_iter()
            .map(|(g, part, base)| {
                scope.spawn(move || run_group(src, location, g, part, base, tail, sink))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err(panicked(location))))
            .collect()
    });
    let (mut records, mut stats) = (Vec::new(), ReadStats::default());
    for r in results {
        let (rec, st) = r?;
        records.extend(rec);
        stats.add(st);
    }
    Ok((records, stats))
}

fn panicked(location: &str) -> VoxelError {
    VoxelError::Invalid(format!("{location}: a decompression thread panicked"))
}

/// Split runs into at most `threads` contiguous groups of roughly equal work.
fn group_runs(runs: &[Run], threads: usize) -> Vec<&[Run]> {
    let total: u64 = runs.iter().map(Run::work).sum();
    let target = total.div_ceil(threads as u64).max(1);
    let mut groups = Vec::new();
    let (mut start, mut acc) = (0usize, 0u64);
    for (i, r) in runs.iter().enumerate() {
        acc += r.work();
        if acc >= target && groups.len() + 1 < threads {
            groups.push(&runs[start..=i]);
            start = i + 1;
            acc = 0;
        }
    }
    if start < runs.len() {
        groups.push(&runs[start..]);
    }
    groups
}

/// Execute runs in order, through one reader planned for all of them; `out` starts at output offset `base`. Returns
/// what recording runs learnt, and what reading cost.
fn run_group(
    src: &dyn RunSource,
    location: &str,
    runs: &[Run],
    out: &mut [u8],
    base: usize,
    tail: Option<TailPolicy>,
    sink: Option<&CacheSink<'_>>,
) -> Result<(Vec<PassRecord>, ReadStats)> {
    let plan: Vec<Range<u64>> = runs.iter().map(|r| r.input.clone()).collect();
    let reader = src.reader(&plan)?;
    let mut scratch = vec![0u8; CHUNK];
    let mut records = Vec::new();
    let mut consumed = ReadStats::default();
    for run in runs {
        let (a, b) = run.out_range();
        let shifted: Vec<Piece> = run
            .pieces
            .iter()
            .map(|p| Piece {
                out_at: p.out_at - a,
                ..*p
            })
            .collect();
        let local = Run {
            pieces: shifted,
            ..run.clone()
        };
        let done = execute(
            &*reader,
            location,
            &local,
            &mut out[a - base..b - base],
            &mut scratch,
            tail,
            sink,
        )?;
        consumed.add(done.stats);
        records.extend(done.record);
    }
    // A reader that fetches (a store) knows what the runs really cost; a local file costs what was consumed.
    Ok((records, reader.fetched().unwrap_or(consumed)))
}

fn cursor_at<'a>(
    src: &'a dyn ReadAt,
    location: &'a str,
    start: Option<&SeekPoint>,
) -> Result<GzCursor<'a>> {
    match start {
        Some(p) => GzCursor::from_point(src, location, p),
        None => GzCursor::from_start(src, location),
    }
}

/// One run: decompress from its start through its pieces into `out` (piece `out_at`s are relative to `out`).
fn execute(
    src: &dyn ReadAt,
    location: &str,
    run: &Run,
    out: &mut [u8],
    scratch: &mut [u8],
    tail: Option<TailPolicy>,
    sink: Option<&CacheSink<'_>>,
) -> Result<RunDone> {
    let mut stats = ReadStats::default();
    let probed;
    let pieces = if run.marks.is_empty() {
        &run.pieces
    } else {
        probed = probe_pieces(src, location, run, out, sink, &mut stats);
        &probed
    };
    if pieces.is_empty() {
        return Ok(RunDone {
            stats,
            record: None,
        });
    }
    let mut cursor = cursor_at(src, location, run.start.as_ref())?;
    if run.record {
        let span = tail.map_or(index::DEFAULT_SPAN, |t| t.span);
        cursor = cursor.recording(GzIndexBuilder::after(
            run.start.as_ref().map(|p| p.out),
            span,
        ));
    }
    match sink {
        Some(sink) => serve_and_keep(&mut cursor, pieces, out, scratch, sink)?,
        None => serve_pieces(&mut cursor, pieces, out, scratch)?,
    }
    if let Some(t) = tail.filter(|_| run.record && !cursor.is_finished()) {
        let left = t.file_size.saturating_sub(cursor.compressed_pos());
        if left <= t.file_size / 4 {
            // Completing the index is a bonus: the data asked for is already served, so a failure here only
            // means the index stays partial (points recorded so far are still right).
            let _ = cursor.skip_to_end(scratch);
        }
    }
    stats.add(ReadStats {
        bytes_read: cursor.compressed_read(),
        requests: 1,
        ..ReadStats::default()
    });
    Ok(RunDone {
        stats,
        record: cursor.into_record(),
    })
}

/// Serve what pieces of `run` can be served by probing from a mark (into `out`, and into the data cache); returns
/// the pieces left for the run's seek point. A piece is probed when the nearest mark before it lies past where the
/// run's pass would be anyway and decompressing from it twice is cheaper than getting there from that position.
fn probe_pieces(
    src: &dyn ReadAt,
    location: &str,
    run: &Run,
    out: &mut [u8],
    sink: Option<&CacheSink<'_>>,
    stats: &mut ReadStats,
) -> Vec<Piece> {
    let mut rest = Vec::with_capacity(run.pieces.len());
    // Where the pass from the run's seek point will have got to before the next piece.
    let mut pass_at = run.start_out();
    for p in &run.pieces {
        let mark = run.marks[..run.marks.partition_point(|m| m.out <= p.offset)].last();
        let worth = mark.filter(|m| {
            m.out > pass_at && 2 * (p.end() - m.out) + PROBE_OVERHEAD < p.end() - pass_at
        });
        let served = worth.and_then(|m| probe(src, location, *m, p, stats));
        match served {
            Some(data) => {
                out[p.out_at..p.out_at + data.len()].copy_from_slice(&data);
                if let Some(sink) = sink {
                    sink.cache.insert(&sink.key, p.offset, data);
                }
            }
            None => {
                rest.push(*p);
                pass_at = p.end();
            }
        }
    }
    rest
}

/// Decompress from `mark` to the end of `piece` twice, the unknown window filled with `0x00` and then `0xFF`; the
/// piece's bytes when they agree (then none of them depends on the window), else `None`. Errors also give `None`:
/// the pass from the seek point then reads the same bytes again and reports them.
fn probe(
    src: &dyn ReadAt,
    location: &str,
    mark: Mark,
    piece: &Piece,
    stats: &mut ReadStats,
) -> Option<Vec<u8>> {
    let lead = piece.offset - mark.out;
    let mut decode = |fill: u8| -> Option<Vec<u8>> {
        let mut cursor = GzCursor::from_mark(src, location, mark, fill)
            .ok()?
            .input_chunk(PROBE_INPUT_CHUNK);
        let mut scratch = vec![0u8; (lead as usize).min(CHUNK)];
        let made = cursor.skip(lead, &mut scratch).and_then(|()| {
            let mut v = Vec::new();
            cursor
                .read_exact_into(&mut v, piece.len as usize)
                .map(|()| v)
        });
        stats.add(ReadStats {
            bytes_read: cursor.compressed_read(),
            requests: 1,
            ..ReadStats::default()
        });
        made.ok()
    };
    let zeros = decode(0x00)?;
    let ones = decode(0xFF)?;
    (zeros == ones).then_some(zeros)
}

/// Where a read keeps what it decompresses: the data cache, the file's key there, and where to cut entries (at the
/// index's seek points, so that later reads starting at a point find whole entries).
struct CacheSink<'a> {
    cache: &'a SpanCache,
    key: Arc<str>,
    index: Arc<GzIndex>,
    /// Entry length where no seek point is known (past the index's coverage, or without an index).
    step: u64,
}

impl<'a> CacheSink<'a> {
    fn new(cache: &'a SpanCache, key: Arc<str>, index: Arc<GzIndex>, span: u64) -> CacheSink<'a> {
        CacheSink {
            cache,
            key,
            index,
            step: span.clamp(1, MAX_ENTRY),
        }
    }

    /// Where the entry starting at `pos` ends: the next seek point when it is at most [`MAX_ENTRY`] away, else
    /// `step` bytes on. Always after `pos`.
    fn next_cut(&self, pos: u64) -> u64 {
        let points = self.index.points();
        let next = points.partition_point(|p| p.out <= pos);
        let limit = pos.saturating_add(MAX_ENTRY);
        points
            .get(next)
            .map(|p| p.out)
            .filter(|&q| q <= limit)
            .unwrap_or(pos.saturating_add(self.step))
    }
}

/// Copy what the data cache holds of `segments` into `out`; the rest, as pieces to decompress.
fn take_cached(cache: &SpanCache, key: &str, segments: &[Segment], out: &mut [u8]) -> Vec<Piece> {
    let mut missing = Vec::new();
    let mut covers = Vec::new();
    let mut out_at = 0usize;
    for s in segments.iter().filter(|s| s.len > 0) {
        covers.clear();
        cache.cover(key, s.offset, s.len, &mut covers);
        for c in &covers {
            match c {
                Cover::Hit {
                    offset,
                    data,
                    at,
                    len,
                } => {
                    let dst = out_at + (offset - s.offset) as usize;
                    out[dst..dst + len].copy_from_slice(&data[*at..at + len]);
                }
                Cover::Miss { offset, len } => missing.push(Piece {
                    offset: *offset,
                    len: *len,
                    out_at: out_at + (offset - s.offset) as usize,
                }),
            }
        }
        out_at += s.len as usize;
    }
    missing
}

/// Serve sorted pieces from a cursor, keeping what they asked for (and gaps of at most [`KEEP_GAP`] between them)
/// in cache entries cut by `sink`, and copying the pieces out of them. What lies between kept stretches is
/// decompressed into `scratch` and dropped: filling memory with data nobody asked for (the half span before each
/// voxel of a time series, 150 MB on the benchmark image) costs page faults on every first read and rarely pays.
fn serve_and_keep(
    cursor: &mut GzCursor<'_>,
    pieces: &[Piece],
    out: &mut [u8],
    scratch: &mut [u8],
    sink: &CacheSink<'_>,
) -> Result<()> {
    let mut next = 0;
    for stretch in kept_stretches(pieces) {
        let pos = cursor.out_pos();
        if pos < stretch.start {
            cursor.skip(stretch.start - pos, scratch)?;
        }
        let mut at = cursor.out_pos();
        while at < stretch.end {
            let cut = sink.next_cut(at).min(stretch.end);
            let len = (cut - at) as usize;
            let mut entry = sink.cache.buffer(len);
            cursor.read_exact_into(&mut entry, len)?;
            next = copy_pieces(pieces, next, at, &entry, out);
            sink.cache.insert(&sink.key, at, entry);
            at = cut;
        }
    }
    Ok(())
}

/// The decompressed ranges worth keeping for sorted `pieces`: the pieces, joined across gaps of at most
/// [`KEEP_GAP`].
fn kept_stretches(pieces: &[Piece]) -> Vec<Range<u64>> {
    let mut out: Vec<Range<u64>> = Vec::new();
    for p in pieces.iter().filter(|p| p.len > 0) {
        match out.last_mut() {
            Some(last) if p.offset <= last.end.saturating_add(KEEP_GAP) => {
                last.end = last.end.max(p.end());
            }
            _ => out.push(p.offset..p.end()),
        }
    }
    out
}

/// Copy the parts of `pieces[next..]` that lie in `data` (decompressed bytes at `pos`) into `out`; returns the first
/// piece not wholly served yet.
fn copy_pieces(pieces: &[Piece], mut next: usize, pos: u64, data: &[u8], out: &mut [u8]) -> usize {
    let end = pos + data.len() as u64;
    while let Some(p) = pieces.get(next) {
        if p.offset >= end {
            break;
        }
        let (from, to) = (p.offset.max(pos), p.end().min(end));
        if from < to {
            let dst = p.out_at + (from - p.offset) as usize;
            out[dst..dst + (to - from) as usize]
                .copy_from_slice(&data[(from - pos) as usize..(to - pos) as usize]);
        }
        if p.end() > end {
            break;
        }
        next += 1;
    }
    next
}

/// Serve sorted pieces from a cursor: big pieces straight into `out`, small ones cut from decompressed chunks.
fn serve_pieces(
    cursor: &mut GzCursor<'_>,
    pieces: &[Piece],
    out: &mut [u8],
    scratch: &mut [u8],
) -> Result<()> {
    let Some(run_end) = pieces.last().map(Piece::end) else {
        return Ok(());
    };
    let mut i = 0;
    // Bytes of pieces[i] already delivered.
    let mut done = 0u64;
    while i < pieces.len() {
        let p = pieces[i];
        let (need_at, rem) = (p.offset + done, p.len - done);
        let pos = cursor.out_pos();
        if pos > need_at {
            return Err(VoxelError::Invalid(format!(
                "internal: a gzip run starts at {pos}, after its data at {need_at}"
            )));
        }
        if pos == need_at && rem >= DIRECT_MIN {
            let at = p.out_at + done as usize;
            cursor.read_exact(&mut out[at..at + rem as usize])?;
            (i, done) = (i + 1, 0);
            continue;
        }
        let mut chunk_end = (pos + scratch.len() as u64).min(run_end);
        if pos < need_at && rem >= DIRECT_MIN {
            chunk_end = chunk_end.min(need_at);
        }
        let n = (chunk_end - pos) as usize;
        cursor.read_exact(&mut scratch[..n])?;
        // Copy what this chunk holds of the pieces from i on.
        while i < pieces.len() {
            let p = pieces[i];
            let from = (p.offset + done).max(pos);
            let to = p.end().min(chunk_end);
            if from >= chunk_end {
                break;
            }
            let dst = p.out_at + (from - p.offset) as usize;
            let len = (to - from) as usize;
            out[dst..dst + len]
                .copy_from_slice(&scratch[(from - pos) as usize..(to - pos) as usize]);
            done = to - p.offset;
            if done < p.len {
                break;
            }
            (i, done) = (i + 1, 0);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::Compression;
    use flate2::write::GzEncoder;
    use std::io::Write;

    fn gz(data: &[u8], level: u32) -> Vec<u8> {
        let mut e = GzEncoder::new(Vec::new(), Compression::new(level));
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn data(n: usize) -> Vec<u8> {
        let mut x = 0x1234_5678_9abc_def0u64;
        (0..n)
            .map(|i| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                if i % 2 == 0 {
                    (x % 32) as u8
                } else {
                    (i / 1000) as u8
                }
            })
            .collect()
    }

    fn opts(cache: &Path) -> GzipOptions {
        GzipOptions {
            span: 64 * 1024,
            cache_dir: Some(cache.to_path_buf()),
            ..GzipOptions::default()
        }
    }

    fn seg(offset: u64, len: u64) -> Segment {
        Segment { offset, len }
    }

    fn read(src: &GzipSource, segs: &[Segment]) -> Result<(Vec<u8>, ReadStats)> {
        let mut out = vec![0u8; segs.iter().map(|s| s.len as usize).sum()];
        let stats = src.read_segments(segs, &mut out)?;
        Ok((out, stats))
    }

    fn expect(d: &[u8], segs: &[Segment]) -> Vec<u8> {
        segs.iter()
            .flat_map(|s| d[s.offset as usize..(s.offset + s.len) as usize].to_vec())
            .collect()
    }

    fn setup(n: usize) -> (tempfile::TempDir, PathBuf, Vec<u8>) {
        let dir = tempfile::tempdir().unwrap();
        let d = data(n);
        let path = dir.path().join("img.nii.gz");
        std::fs::write(&path, gz(&d, 6)).unwrap();
        (dir, path, d)
    }

    /// Bytes with no redundancy, as random voxel data: nearly every byte a literal.
    fn noise(n: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect()
    }

    fn indexed(path: &Path, dir: &Path, span: u64) -> GzipSource {
        let o = GzipOptions {
            span,
            cache_dir: Some(dir.join("cache")),
            data_cache: DataCache::Off,
            ..GzipOptions::default()
        };
        let src = GzipSource::with_options(path, o).unwrap();
        src.build_index(|_| {}).unwrap();
        src
    }

    #[test]
    fn short_reads_far_from_points_are_probed_from_marks() {
        let dir = tempfile::tempdir().unwrap();
        let d = noise(3 << 20, 11);
        let path = dir.path().join("noise.nii.gz");
        std::fs::write(&path, gz(&d, 6)).unwrap();
        let src = indexed(&path, dir.path(), 1 << 20);
        let marks = src.index().marks().len();
        assert!(marks > 60, "{marks} marks");
        // Two bytes just before the second point: from the first point that is ~1 MiB of compressed input.
        let at = (1 << 20) - 1000;
        let (got, stats) = read(&src, &[seg(at, 2)]).unwrap();
        assert_eq!(got, &d[at as usize..at as usize + 2]);
        assert!(stats.bytes_read < 200_000, "{stats:?}");
        // A time series: one short read per "volume".
        let segs: Vec<Segment> = (0..40).map(|v| seg(v * 70_001 + 12_345, 2)).collect();
        let (got, stats) = read(&src, &segs).unwrap();
        assert_eq!(got, expect(&d, &segs));
        assert!(stats.bytes_read < 40 * 150_000, "{stats:?}");
    }

    #[test]
    fn probes_that_meet_copies_from_before_their_mark_fall_back_exactly() {
        // Noise, then noise whose every 64 bytes start with 16 bytes copied from 20,000 bytes before: a probe for
        // those bytes from a mark less than 20,000 bytes before them depends on the unknown window.
        let dir = tempfile::tempdir().unwrap();
        let mut d = noise(1 << 20, 5);
        let fresh = noise(1 << 20, 9);
        for (k, chunk) in fresh.chunks(64).enumerate() {
            let at = d.len();
            if k % 2 == 0 {
                d.extend_from_within(at - 20_000..at - 20_000 + 16);
                d.extend_from_slice(&chunk[16..]);
            } else {
                d.extend_from_slice(chunk);
            }
        }
        d.extend(noise(300_000, 13));
        let path = dir.path().join("rep.nii.gz");
        std::fs::write(&path, gz(&d, 6)).unwrap();
        let src = indexed(&path, dir.path(), 1 << 20);
        let segs: Vec<Segment> = (0..30)
            .map(|k| seg((1 << 20) + 100_096 + k * 30_080, 3))
            .chain((0..10).map(|k| seg(700_000 + k * 30_011, 1)))
            .collect();
        let mut fell_back = 0;
        for s in &segs {
            let (got, stats) = read(&src, std::slice::from_ref(s)).unwrap();
            assert_eq!(got, expect(&d, std::slice::from_ref(s)), "at {s:?}");
            // Two probe passes, then the pass from the seek point.
            fell_back += usize::from(stats.requests == 3);
        }
        assert!(fell_back >= 10, "{fell_back} reads fell back");
        let mut sorted = segs.clone();
        sorted.sort_by_key(|s| s.offset);
        assert_eq!(read(&src, &sorted).unwrap().0, expect(&d, &sorted));
    }

    #[test]
    fn cold_full_read_builds_and_writes_the_index_then_warm_reads_use_it() {
        let (dir, path, d) = setup(1_500_000);
        let cache = dir.path().join("cache");
        let src = GzipSource::with_options(&path, opts(&cache)).unwrap();
        let all = [seg(0, d.len() as u64)];
        let (got, stats) = read(&src, &all).unwrap();
        assert_eq!(got, d);
        assert_eq!(stats.requests, 1);
        assert!(src.index().is_complete());
        let written = src.index_path().expect("index written");
        assert!(written.starts_with(&cache), "{written:?}");

        let warm = GzipSource::with_options(&path, opts(&cache)).unwrap();
        assert_eq!(warm.uncompressed_size(), Some(d.len() as u64));
        let segs = [seg(1_400_000, 10), seg(1_400_100, 5)];
        let (got, stats) = read(&warm, &segs).unwrap();
        assert_eq!(got, expect(&d, &segs));
        assert!(
            stats.bytes_read < 200_000,
            "read from a nearby point: {stats:?}"
        );
    }

    #[test]
    fn many_tiny_segments_are_one_pass_per_span() {
        let (dir, path, d) = setup(600_000);
        let src = GzipSource::with_options(&path, opts(dir.path())).unwrap();
        let segs: Vec<Segment> = (0..5000).map(|k| seg(k * 113 + 7, 2)).collect();
        let (got, stats) = read(&src, &segs).unwrap();
        assert_eq!(got, expect(&d, &segs));
        assert_eq!(stats.requests, 1, "cold: one forward pass");
        let (got, stats) = read(&src, &segs).unwrap();
        assert_eq!(got, expect(&d, &segs));
        assert!(
            stats.requests <= 10,
            "warm: one run per point at most: {stats:?}"
        );
    }

    #[test]
    fn partial_index_is_extended_by_later_reads() {
        let (dir, path, d) = setup(2_000_000);
        let src = GzipSource::with_options(&path, opts(dir.path())).unwrap();
        let (got, _) = read(&src, &[seg(300_000, 100)]).unwrap();
        assert_eq!(got, &d[300_000..300_100]);
        let idx = src.index();
        assert!(
            !idx.is_complete() && idx.covered_out() >= 300_100 && idx.covered_out() < 1_000_000
        );
        let (got, _) = read(&src, &[seg(100_000, 10), seg(1_990_000, 10_000)]).unwrap();
        assert_eq!(got, expect(&d, &[seg(100_000, 10), seg(1_990_000, 10_000)]));
        assert!(src.index().is_complete());
    }

    #[test]
    fn a_segment_reaching_past_the_covered_part_starts_at_its_own_point() {
        let (dir, path, d) = setup(3_000_000);
        let src = GzipSource::with_options(&path, opts(dir.path())).unwrap();
        read(&src, &[seg(600_000, 10)]).unwrap();
        let covered = src.index().covered_out();
        let segs = [seg(100_000, 5), seg(200_000, covered + 300_000 - 200_000)];
        let (got, _) = read(&src, &segs).unwrap();
        assert_eq!(got, expect(&d, &segs));
        let outs: Vec<u64> = src.index().points().iter().map(|p| p.out).collect();
        assert!(outs.windows(2).all(|w| w[0] < w[1]), "{outs:?}");
        assert!(src.index().covered_out() >= covered + 300_000);
    }

    #[test]
    fn truncated_and_corrupt_gzip_files_name_the_file() {
        let (dir, path, d) = setup(500_000);
        let bytes = std::fs::read(&path).unwrap();
        let cut = dir.path().join("cut.nii.gz");
        std::fs::write(&cut, &bytes[..bytes.len() * 2 / 3]).unwrap();
        let bad = dir.path().join("bad.nii.gz");
        let mut b = bytes.clone();
        for x in &mut b[1000..1100] {
            *x = !*x;
        }
        std::fs::write(&bad, &b).unwrap();
        let all = [seg(0, d.len() as u64)];
        let err = read(
            &GzipSource::with_options(&cut, opts(dir.path())).unwrap(),
            &all,
        )
        .unwrap_err();
        assert!(
            matches!(err, VoxelError::Truncated { .. }) && err.to_string().contains("cut.nii.gz"),
            "{err}"
        );
        let err = read(
            &GzipSource::with_options(&bad, opts(dir.path())).unwrap(),
            &all,
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("bad.nii.gz") && err.to_string().contains("corrupt"),
            "{err}"
        );
        assert!(read_prefix(&cut, 100).is_ok());
    }

    #[test]
    fn threads_split_runs_at_points() {
        let (dir, path, d) = setup(1_000_000);
        let src = GzipSource::with_options(
            &path,
            GzipOptions {
                threads: 3,
                ..opts(dir.path())
            },
        )
        .unwrap();
        src.build_index(|_| {}).unwrap();
        let segs = [seg(5, 700_000), seg(800_000, 3), seg(900_000, 100_000)];
        let (got, stats) = read(&src, &segs).unwrap();
        assert_eq!(got, expect(&d, &segs));
        assert!(stats.requests > 3, "{stats:?}");
    }

    #[test]
    fn past_the_end_is_truncated_cold_and_warm() {
        let (dir, path, d) = setup(200_000);
        let n = d.len() as u64;
        for _ in 0..2 {
            let src = GzipSource::with_options(&path, opts(dir.path())).unwrap();
            let err = read(&src, &[seg(n - 5, 10)]).unwrap_err();
            assert!(matches!(err, VoxelError::Truncated { .. }), "{err}");
            assert!(err.to_string().contains("img.nii.gz"), "{err}");
            src.build_index(|_| {}).unwrap();
        }
    }

    #[test]
    fn stale_index_is_ignored_and_rebuilt() {
        let (dir, path, d) = setup(400_000);
        let o = opts(&dir.path().join("c"));
        GzipSource::with_options(&path, o.clone())
            .unwrap()
            .build_index(|_| {})
            .unwrap();
        // Same size, different content and mtime: the old index must not be used.
        let mut d2 = d.clone();
        d2.reverse();
        std::fs::write(&path, gz(&d2, 6)).unwrap();
        let src = GzipSource::with_options(&path, o).unwrap();
        assert_eq!(src.index().points().len(), 0);
        let (got, _) = read(&src, &[seg(350_000, 1000)]).unwrap();
        assert_eq!(got, &d2[350_000..351_000]);
    }

    #[test]
    fn corrupt_index_file_is_ignored() {
        let (dir, path, d) = setup(400_000);
        let o = opts(&dir.path().join("c"));
        let (_, written) = GzipSource::with_options(&path, o.clone())
            .unwrap()
            .build_index(|_| {})
            .unwrap();
        let written = written.unwrap();
        let mut bytes = std::fs::read(&written).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 1;
        std::fs::write(&written, &bytes).unwrap();
        let src = GzipSource::with_options(&path, o.clone()).unwrap();
        assert_eq!(src.index().points().len(), 0);
        std::fs::write(&written, &bytes[..mid]).unwrap();
        let src = GzipSource::with_options(&path, o).unwrap();
        assert_eq!(src.index().points().len(), 0);
        let (got, _) = read(&src, &[seg(399_000, 1000)]).unwrap();
        assert_eq!(got, &d[399_000..]);
    }

    #[test]
    fn sidecar_is_preferred_and_no_index_disables_it() {
        let (dir, path, d) = setup(300_000);
        let o = GzipOptions {
            span: 64 * 1024,
            ..GzipOptions::default()
        };
        let (_, written) = GzipSource::with_options(&path, o.clone())
            .unwrap()
            .build_index(|_| {})
            .unwrap();
        assert_eq!(
            written.unwrap(),
            dir.path().canonicalize().unwrap().join(".img.nii.gz.vxidx")
        );
        let off = GzipSource::with_options(
            &path,
            GzipOptions {
                use_index: false,
                ..o
            },
        )
        .unwrap();
        assert_eq!(off.index().points().len(), 0);
        let (got, stats) = read(&off, &[seg(10, 10), seg(250_000, 10)]).unwrap();
        assert_eq!(got, expect(&d, &[seg(10, 10), seg(250_000, 10)]));
        assert_eq!(stats.requests, 1);
    }

    fn mode_of(path: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        std::fs::symlink_metadata(path)
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    }

    fn sidecar_of(dir: &Path) -> PathBuf {
        dir.canonicalize().unwrap().join(".img.nii.gz.vxidx")
    }

    fn span_64k() -> GzipOptions {
        GzipOptions {
            span: 64 * 1024,
            ..GzipOptions::default()
        }
    }

    #[test]
    fn a_private_file_gets_a_private_sidecar() {
        use std::os::unix::fs::PermissionsExt;
        let (dir, path, _) = setup(300_000);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let (_, written) = GzipSource::with_options(&path, span_64k())
            .unwrap()
            .build_index(|_| {})
            .unwrap();
        assert_eq!(written.as_deref(), Some(sidecar_of(dir.path()).as_path()));
        assert_eq!(mode_of(&sidecar_of(dir.path())), 0o600);
        // A cache directory is created private too.
        let cache = dir.path().join("new/cache");
        let (_, written) = GzipSource::with_options(&path, opts(&cache))
            .unwrap()
            .build_index(|_| {})
            .unwrap();
        assert!(written.unwrap().starts_with(&cache));
        assert_eq!(mode_of(&cache), 0o700);
    }

    #[test]
    fn a_symlinked_file_gets_its_index_in_the_cache_dir_not_beside_the_target() {
        let (dir, path, d) = setup(300_000);
        let links = tempfile::tempdir().unwrap();
        let link = links.path().join("link.nii.gz");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        let places = index_locations(&link, &GzipOptions::default());
        assert!(places.iter().all(|p| p.in_cache_dir), "{places:?}");
        let cache = links.path().join("cache");
        let src = GzipSource::with_options(&link, opts(&cache)).unwrap();
        let (_, written) = src.build_index(|_| {}).unwrap();
        assert!(written.unwrap().starts_with(&cache));
        assert_eq!(read(&src, &[seg(1000, 10)]).unwrap().0, &d[1000..1010]);
        let beside: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(beside, vec![std::ffi::OsString::from("img.nii.gz")]);
        // A link higher up (to the file's directory) is a link target's directory too.
        let ldir = links.path().join("ldir");
        std::os::unix::fs::symlink(dir.path(), &ldir).unwrap();
        let places = index_locations(&ldir.join("img.nii.gz"), &GzipOptions::default());
        assert!(places.iter().all(|p| p.in_cache_dir), "{places:?}");
        // The file itself, not a link: its sidecar comes first.
        assert!(!index_locations(&path, &GzipOptions::default())[0].in_cache_dir);
    }

    #[test]
    fn a_cache_dir_of_someone_else_or_open_to_all_is_not_used() {
        use std::os::unix::fs::PermissionsExt;
        let (dir, path, _) = setup(300_000);
        let open = dir.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        let (_, written) = GzipSource::with_options(&path, opts(&open))
            .unwrap()
            .build_index(|_| {})
            .unwrap();
        assert_eq!(written, None);
        assert_eq!(std::fs::read_dir(&open).unwrap().count(), 0);
    }

    /// Open `path` on another thread; the index it loaded, or a panic if opening takes over 10 s (a hang).
    fn open_within_timeout(path: &Path, o: GzipOptions) -> Arc<GzIndex> {
        let (tx, rx) = std::sync::mpsc::channel();
        let p = path.to_path_buf();
        std::thread::spawn(move || {
            let _ = tx.send(GzipSource::with_options(&p, o).map(|s| s.index()));
        });
        rx.recv_timeout(std::time::Duration::from_secs(10))
            .expect("opening hung on the sidecar")
            .unwrap()
    }

    #[test]
    fn fifo_device_and_oversized_sidecars_are_ignored() {
        let (dir, path, d) = setup(300_000);
        let sidecar = sidecar_of(dir.path());
        // A FIFO nobody writes to: ignored without blocking.
        let c = std::ffi::CString::new(sidecar.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: `c` is a valid NUL-terminated path for the duration of the call.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        assert_eq!(open_within_timeout(&path, span_64k()).points().len(), 0);
        std::fs::remove_file(&sidecar).unwrap();
        // A link to /dev/zero: ignored, then replaced by a real index (the device is not written).
        std::os::unix::fs::symlink("/dev/zero", &sidecar).unwrap();
        let src = GzipSource::with_options(&path, span_64k()).unwrap();
        assert_eq!(src.index().points().len(), 0);
        let (_, written) = src.build_index(|_| {}).unwrap();
        assert_eq!(written.as_deref(), Some(sidecar.as_path()));
        assert!(std::fs::symlink_metadata(&sidecar).unwrap().is_file());
        let good = std::fs::read(&sidecar).unwrap();
        assert!(open_within_timeout(&path, span_64k()).points().len() >= 2);
        // Longer than any index of this file can be (a sparse 1 TiB file): ignored without being read.
        std::fs::File::options()
            .write(true)
            .open(&sidecar)
            .unwrap()
            .set_len(1 << 40)
            .unwrap();
        assert_eq!(open_within_timeout(&path, span_64k()).points().len(), 0);
        // Just over the cap, with a valid index at its start: still ignored.
        let id = FileIdentity::of(&File::open(&path).unwrap(), "img").unwrap();
        let cap = max_index_len(id.size, 64 * 1024);
        std::fs::write(&sidecar, &good).unwrap();
        std::fs::File::options()
            .write(true)
            .open(&sidecar)
            .unwrap()
            .set_len(cap + 1)
            .unwrap();
        assert_eq!(open_within_timeout(&path, span_64k()).points().len(), 0);
        std::fs::write(&sidecar, good).unwrap();
        let src = GzipSource::with_options(&path, span_64k()).unwrap();
        assert!(src.index().points().len() >= 2);
        assert_eq!(
            read(&src, &[seg(250_000, 10)]).unwrap().0,
            &d[250_000..250_010]
        );
    }

    #[test]
    fn reopened_handles_notice_a_replaced_file() {
        let (dir, path, d) = setup(300_000);
        let src = GzipSource::with_options(
            &path,
            GzipOptions {
                keep_open: false,
                ..opts(dir.path())
            },
        )
        .unwrap();
        src.build_index(|_| {}).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        let d2: Vec<u8> = d.iter().map(|b| b.wrapping_add(1)).collect();
        std::fs::write(&path, gz(&d2, 1)).unwrap();
        let (got, _) = read(&src, &[seg(200_000, 100)]).unwrap();
        assert_eq!(got, &d2[200_000..200_100]);
    }

    #[test]
    fn read_prefix_and_bad_segments() {
        let (_dir, path, d) = setup(100_000);
        assert_eq!(read_prefix(&path, 348).unwrap(), &d[..348]);
        assert_eq!(read_prefix(&path, 200_000).unwrap(), d);
        let src = GzipSource::with_options(&path, GzipOptions::default()).unwrap();
        let mut out = vec![0u8; 4];
        assert!(
            src.read_segments(&[seg(10, 2), seg(5, 2)], &mut out)
                .is_err()
        );
        assert!(src.read_segments(&[seg(10, 2)], &mut out).is_err());
    }

    /// A gzip member written by zlib-rs with `level` and `strategy`, sync-flushed at `cuts` (empty stored blocks).
    fn member(data: &[u8], level: i32, strategy: i32, cuts: &[usize]) -> Vec<u8> {
        use zlib_rs::{DeflateConfig, DeflateFlush, Method, Strategy};
        let config = DeflateConfig {
            level,
            method: Method::Deflated,
            window_bits: 31,
            mem_level: 8,
            strategy: Strategy::try_from(strategy).unwrap(),
        };
        let mut d = zlib_rs::Deflate::new_with_config(config);
        let mut out = vec![0u8; zlib_rs::compress_bound(data.len()) + 1024 + 16 * cuts.len()];
        let mut ends: Vec<usize> = cuts.iter().map(|&c| c.min(data.len())).collect();
        ends.sort();
        ends.push(data.len());
        for (k, &end) in ends.iter().enumerate() {
            let flush = if k + 1 == ends.len() {
                DeflateFlush::Finish
            } else {
                DeflateFlush::SyncFlush
            };
            let (i, o) = (d.total_in() as usize, d.total_out() as usize);
            let status = d.compress(&data[i..end], &mut out[o..], flush).unwrap();
            assert!(d.total_in() as usize == end, "deflate took all input");
            if flush == DeflateFlush::Finish {
                assert_eq!(status, zlib_rs::Status::StreamEnd);
            }
        }
        out.truncate(d.total_out() as usize);
        out
    }

    /// Reproducible test data mixing incompressible noise (stored blocks), runs and low-entropy bytes.
    fn mixed(seed: u64, n: usize) -> Vec<u8> {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let kind = next() % 3;
            let len = (next() % 40_000) as usize + 1;
            for _ in 0..len.min(n - out.len()) {
                let r = next();
                out.push(match kind {
                    0 => r as u8,
                    1 => (out.len() / 97) as u8,
                    _ => (r % 7) as u8,
                });
            }
        }
        out
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(24))]

        /// Random reads through the index (cold, warm in memory, loaded from disk, and on 2 threads) equal the same
        /// slices of the full decompression, including offsets on block and member boundaries and the last byte.
        #[test]
        fn indexed_reads_equal_full_decompression(
            seed in proptest::prelude::any::<u64>(),
            members in proptest::collection::vec((0usize..400_000, 0i32..=9, 0i32..=4, 0usize..4), 1..4),
            span in proptest::sample::select(vec![1_000u64, 20_000, 65_536, 1 << 20]),
            reads in proptest::collection::vec((0.0f64..1.0, 0u64..70_000), 1..12),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("p.nii.gz");
            let (mut file, mut whole, mut boundaries) = (Vec::new(), Vec::new(), Vec::new());
            for (k, &(n, level, strategy, flushes)) in members.iter().enumerate() {
                let data = mixed(seed ^ k as u64, n);
                let cuts: Vec<usize> = (1..=flushes).map(|f| n * f / (flushes + 1)).collect();
                file.extend(member(&data, level, strategy, &cuts));
                boundaries.push(whole.len() as u64);
                whole.extend(data);
            }
            std::fs::write(&path, &file).unwrap();
            let total = whole.len() as u64;
            let o = GzipOptions { span, cache_dir: Some(dir.path().join("c")), ..GzipOptions::default() };
            let index = GzIndex::build(&file, "p.nii.gz", span, |_| {}).unwrap();
            proptest::prop_assert_eq!(index.total_out(), Some(total));

            let mut offsets: Vec<(u64, u64)> = reads.iter().map(|&(f, len)| ((f * total as f64) as u64, len)).collect();
            offsets.extend(index.points().iter().map(|p| (p.out, 300)));
            offsets.extend(index.marks().iter().step_by(7).map(|m| (m.out, 300)));
            offsets.extend(index.marks().iter().step_by(5).map(|m| (m.out.saturating_sub(1), 2)));
            offsets.extend(boundaries.iter().map(|&b| (b, 5000)));
            offsets.extend(boundaries.iter().filter(|&&b| b > 0).map(|&b| (b - 1, 2)));
            offsets.push((total.saturating_sub(1), 1));
            let segs: Vec<Segment> = offsets
                .iter()
                .filter(|&&(off, _)| off < total)
                .map(|&(off, len)| seg(off, len.max(1).min(total - off)))
                .collect();

            let cold = GzipSource::with_options(&path, o.clone()).unwrap();
            let two = GzipSource::with_options(&path, GzipOptions { threads: 2, ..o.clone() }).unwrap();
            for s in &segs {
                let want = expect(&whole, std::slice::from_ref(s));
                proptest::prop_assert_eq!(&read(&cold, std::slice::from_ref(s)).unwrap().0, &want, "at {:?}", s);
            }
            cold.build_index(|_| {}).unwrap();
            let warm = GzipSource::with_options(&path, o).unwrap();
            // Every segment alone, then all of them sorted and merged into one call.
            for s in &segs {
                let want = expect(&whole, std::slice::from_ref(s));
                proptest::prop_assert_eq!(&read(&warm, std::slice::from_ref(s)).unwrap().0, &want, "at {:?}", s);
            }
            let mut sorted = segs.clone();
            sorted.sort_by_key(|s| s.offset);
            let mut disjoint: Vec<Segment> = Vec::new();
            for s in sorted {
                if disjoint.last().is_none_or(|l| s.offset >= l.offset + l.len) {
                    disjoint.push(s);
                }
            }
            let want = expect(&whole, &disjoint);
            proptest::prop_assert_eq!(&read(&warm, &disjoint).unwrap().0, &want);
            proptest::prop_assert_eq!(&read(&two, &disjoint).unwrap().0, &want);
            proptest::prop_assert_eq!(&read(&two, &[seg(0, total)]).unwrap().0, &whole);
        }
    }

    fn cached(cache: &Path, data_cache: &Arc<SpanCache>) -> GzipOptions {
        GzipOptions {
            data_cache: DataCache::Own(Arc::clone(data_cache)),
            ..opts(cache)
        }
    }

    #[test]
    fn repeated_and_overlapping_reads_come_from_the_data_cache() {
        let (dir, path, d) = setup(1_000_000);
        let c = Arc::new(SpanCache::new(64 << 20));
        let src = GzipSource::with_options(&path, cached(dir.path(), &c)).unwrap();
        src.build_index(|_| {}).unwrap();
        let vol = [seg(300_000, 200_000)];
        let (got, first) = read(&src, &vol).unwrap();
        assert_eq!(got, expect(&d, &vol));
        assert!(first.bytes_read > 0 && first.requests > 0, "{first:?}");
        let (got, again) = read(&src, &vol).unwrap();
        assert_eq!(got, expect(&d, &vol));
        assert_eq!((again.bytes_read, again.requests), (0, 0), "{again:?}");
        assert_eq!(again.bytes_delivered, 200_000);
        // Another source over the same file shares the cache; a read overlapping the cached part decompresses
        // only from the point before its uncached end.
        let other = GzipSource::with_options(&path, cached(dir.path(), &c)).unwrap();
        let overlap = [seg(250_000, 10), seg(450_000, 100_000)];
        let (got, stats) = read(&other, &overlap).unwrap();
        assert_eq!(got, expect(&d, &overlap));
        assert_eq!(
            stats.requests, 2,
            "two runs: before and after the cached part"
        );
        assert!(c.stats().hit_bytes >= 250_000, "{:?}", c.stats());
        // A source without the cache still decompresses.
        let plain = GzipSource::with_options(&path, opts(dir.path())).unwrap();
        assert!(read(&plain, &vol).unwrap().1.bytes_read > 0);
    }

    #[test]
    fn the_data_cache_serves_cold_and_unindexed_reads_too() {
        let (dir, path, d) = setup(700_000);
        let c = Arc::new(SpanCache::new(64 << 20));
        for use_index in [true, false] {
            c.clear();
            let o = GzipOptions {
                use_index,
                ..cached(&dir.path().join(format!("c{use_index}")), &c)
            };
            let src = GzipSource::with_options(&path, o).unwrap();
            let segs = [seg(10, 5), seg(500_000, 100)];
            let (got, stats) = read(&src, &segs).unwrap();
            assert_eq!((got, stats.requests), (expect(&d, &segs), 1));
            // What was asked for is kept; what the pass went through between the segments is not.
            let inside = [seg(12, 2), seg(500_050, 50)];
            let (got, stats) = read(&src, &inside).unwrap();
            assert_eq!((got, stats.requests), (expect(&d, &inside), 0));
            let between = [seg(200_000, 1000)];
            let (got, stats) = read(&src, &between).unwrap();
            assert_eq!((got, stats.requests), (expect(&d, &between), 1));
        }
    }

    #[test]
    fn a_replaced_file_never_hits_the_old_files_data() {
        let (dir, path, d) = setup(300_000);
        let c = Arc::new(SpanCache::new(64 << 20));
        let o = GzipOptions {
            keep_open: false,
            ..cached(dir.path(), &c)
        };
        let src = GzipSource::with_options(&path, o.clone()).unwrap();
        assert_eq!(read(&src, &[seg(1000, 100)]).unwrap().0, &d[1000..1100]);
        std::thread::sleep(std::time::Duration::from_millis(20));
        let d2: Vec<u8> = d.iter().map(|b| b.wrapping_add(3)).collect();
        std::fs::write(&path, gz(&d2, 4)).unwrap();
        assert_eq!(read(&src, &[seg(1000, 100)]).unwrap().0, &d2[1000..1100]);
        let fresh = GzipSource::with_options(&path, o).unwrap();
        assert_eq!(read(&fresh, &[seg(1000, 100)]).unwrap().0, &d2[1000..1100]);
    }

    #[test]
    fn a_small_data_cache_evicts_and_stays_exact() {
        let (dir, path, d) = setup(400_000);
        let c = Arc::new(SpanCache::new(100_000));
        let o = GzipOptions {
            span: 20_000,
            ..cached(dir.path(), &c)
        };
        let src = GzipSource::with_options(&path, o).unwrap();
        let all = [seg(0, d.len() as u64)];
        assert_eq!(read(&src, &all).unwrap().0, d);
        let s = c.stats();
        assert!(s.evictions > 0 && s.used <= 100_000, "{s:?}");
        // The tail is still cached, the start is not: a read across both is exact.
        let (got, stats) = read(&src, &[seg(390_000, 10_000)]).unwrap();
        assert!(got == d[390_000..] && stats.requests == 0, "{stats:?}");
        let across = [seg(5, 10), seg(150_000, 240_000)];
        let (got, stats) = read(&src, &across).unwrap();
        assert!(
            got == expect(&d, &across) && stats.requests == 2,
            "{stats:?}"
        );
        // What that read decompressed last is what is cached now.
        let (got, stats) = read(&src, &[seg(280_000, 10_000)]).unwrap();
        assert!(
            got == d[280_000..290_000] && stats.requests == 0,
            "{stats:?}"
        );
        assert!(c.stats().used <= 100_000);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(16))]

        /// Reads through a small shared data cache equal the full decompression: repeated, overlapping, partly
        /// cached and partly not, after evictions, cold (no index yet) and warm, on one and two threads, and from
        /// two threads at once.
        #[test]
        fn cached_reads_equal_full_decompression(
            seed in proptest::prelude::any::<u64>(),
            members in proptest::collection::vec((1usize..300_000, 0i32..=9), 1..3),
            span in proptest::sample::select(vec![5_000u64, 40_000, 1 << 20]),
            budget in proptest::sample::select(vec![30_000u64, 200_000, 64 << 20]),
            batches in proptest::collection::vec(
                proptest::collection::vec((0.0f64..1.0, 1u64..90_000), 1..6), 2..8),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("c.nii.gz");
            let (mut file, mut whole) = (Vec::new(), Vec::new());
            for (k, &(n, level)) in members.iter().enumerate() {
                let data = mixed(seed ^ k as u64, n);
                file.extend(member(&data, level, 0, &[n / 3]));
                whole.extend(data);
            }
            std::fs::write(&path, &file).unwrap();
            let total = whole.len() as u64;
            let c = Arc::new(SpanCache::new(budget));
            let o = GzipOptions { span, ..cached(&dir.path().join("i"), &c) };
            let one = GzipSource::with_options(&path, o.clone()).unwrap();
            let two = GzipSource::with_options(&path, GzipOptions { threads: 2, ..o }).unwrap();
            let as_segments = |batch: &[(f64, u64)]| -> Vec<Segment> {
                let mut segs: Vec<Segment> = batch
                    .iter()
                    .map(|&(f, len)| {
                        let off = ((f * total as f64) as u64).min(total - 1);
                        seg(off, len.min(total - off))
                    })
                    .collect();
                segs.sort_by_key(|s| s.offset);
                let mut disjoint: Vec<Segment> = Vec::new();
                for s in segs {
                    if disjoint.last().is_none_or(|l| s.offset >= l.offset + l.len) {
                        disjoint.push(s);
                    }
                }
                disjoint
            };
            let all: Vec<Vec<Segment>> = batches.iter().map(|b| as_segments(b)).collect();
            // In turn, each batch twice (the repeat is served at least partly from memory) through alternating
            // sources.
            for (k, segs) in all.iter().enumerate() {
                let src = if k % 2 == 0 { &one } else { &two };
                for _ in 0..2 {
                    proptest::prop_assert_eq!(&read(src, segs).unwrap().0, &expect(&whole, segs));
                    proptest::prop_assert!(c.stats().used <= budget);
                }
            }
            // Two threads at once, each over all batches in opposite orders.
            let results: Vec<bool> = std::thread::scope(|s| {
                let handles: Vec<_> = [(&one, false), (&two, true)]
                    .into_iter()
                    .map(|(src, rev)| {
                        let (all, whole) = (&all, &whole);
                        s.spawn(move || {
                            let mut order: Vec<&Vec<Segment>> = all.iter().collect();
                            if rev {
                                order.reverse();
                            }
                            order.into_iter().all(|segs| read(src, segs).unwrap().0 == expect(whole, segs))
                        })
                    })
                    .collect();
                handles.into_iter().map(|h| h.join().unwrap()).collect()
            });
            proptest::prop_assert_eq!(results, vec![true, true]);
            proptest::prop_assert!(c.stats().used <= budget);
            proptest::prop_assert_eq!(&read(&two, &[seg(0, total)]).unwrap().0, &whole);
            if budget > 1 << 20 {
                proptest::prop_assert!(c.stats().hit_bytes > 0, "{:?}", c.stats());
            }
        }
    }

    #[test]
    fn source_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<GzipSource>();
    }
}
