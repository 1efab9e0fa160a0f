//! The engine of a gzip stream: its index state, and reads served by decompression runs from seek points and
//! marks (planned by [`super::runs`], served piece by piece by [`super::serve`]).

use std::fmt;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use super::cursor::{GzCursor, GzIndexBuilder};
use super::index::{FileIdentity, GzIndex, PassRecord, ReadAt, SeekPoint, max_index_len};
use super::runs::*;
use super::serve::*;
use super::sidecar::*;
use super::*;
use crate::error::{Result, VoxelError};
use crate::io::ReadStats;
use crate::plan::Segment;

/// The index state of one stream: replaced wholesale (copy-on-write) when a pass teaches it something.
pub(super) struct State {
    pub(super) identity: FileIdentity,
    pub(super) index: Arc<GzIndex>,
    /// `covered_out` of the last index written or loaded (to decide when a partial index is worth writing again).
    pub(super) stored_covered: u64,
    pub(super) stored_at: Option<PathBuf>,
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

/// A fresh state for `identity`, with the first stored index that matches it (or an empty one). Index files are
/// read only up to the size an index of this stream can have ([`max_index_len`]).
pub(super) fn initial_state(
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

/// When a recording pass may run on to the end to complete the index.
#[derive(Debug, Clone, Copy)]
pub(super) struct TailPolicy {
    pub(super) file_size: u64,
    pub(super) span: u64,
}

pub(super) struct RunDone {
    pub(super) stats: ReadStats,
    pub(super) record: Option<PassRecord>,
}

/// Execute `runs` into `out`, on up to `threads` threads (contiguous groups of runs of about equal work).
pub(super) fn run_all(
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

pub(super) fn panicked(location: &str) -> VoxelError {
    VoxelError::Invalid(format!("{location}: a decompression thread panicked"))
}

/// Execute runs in order, through one reader planned for all of them; `out` starts at output offset `base`. Returns
/// what recording runs learnt, and what reading cost.
pub(super) fn run_group(
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

pub(super) fn cursor_at<'a>(
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
pub(super) fn execute(
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
