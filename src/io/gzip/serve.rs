//! Serving the pieces of one run from a decompression pass: probing from marks, copying into the caller's
//! buffer, keeping what was asked for in the data cache.

use std::ops::Range;
use std::sync::Arc;

use super::cache::{Cover, MAX_ENTRY};
use super::cursor::GzCursor;
use super::index::{GzIndex, Mark, ReadAt, WINDOW_SIZE};
use super::runs::*;
use super::*;
use crate::error::{Result, VoxelError};
use crate::io::ReadStats;
use crate::plan::Segment;

/// Serve what pieces of `run` can be served by probing from a mark (into `out`, and into the data cache); returns
/// the pieces left for the run's seek point. The pieces between two marks are probed together (one pass from the
/// mark before them serves them all), when the mark lies past where the run's pass would be anyway and decompressing
/// from it twice is cheaper than getting there from that position. Pieces dense enough that probing every stretch
/// between marks would cost more than one pass through the run are all left to the pass (a box's rows, say).
pub(super) fn probe_pieces(
    src: &dyn ReadAt,
    location: &str,
    run: &Run,
    out: &mut [u8],
    sink: Option<&CacheSink<'_>>,
    stats: &mut ReadStats,
) -> Vec<Piece> {
    let groups = mark_groups(run);
    if groups.iter().map(|g| probe_cost(run, g)).sum::<u64>() >= run.work() {
        return run.pieces.clone();
    }
    let mut rest = Vec::with_capacity(run.pieces.len());
    // Where the pass from the run's seek point will have got to before the next group.
    let mut pass_at = run.start_out();
    for group in groups {
        let first = group.first;
        let before = &run.marks[..run.marks.partition_point(|m| m.out <= first.offset)];
        let mut pending: Vec<Piece> = group.pieces.to_vec();
        for m in probe_marks(before, first.offset) {
            let Some(end) = pending.last().map(Piece::end) else {
                break;
            };
            if !(m.out > pass_at && 2 * (end - m.out) + PROBE_OVERHEAD < end - pass_at) {
                break;
            }
            pending = serve_probed(src, location, m, pending, out, sink, stats);
        }
        if let Some(last) = pending.last() {
            pass_at = last.end();
        }
        rest.extend(pending);
    }
    rest
}

/// Consecutive pieces of a run that start after the same mark (or before the first).
struct MarkGroup<'a> {
    first: Piece,
    pieces: &'a [Piece],
}

fn mark_groups(run: &Run) -> Vec<MarkGroup<'_>> {
    let mut groups = Vec::new();
    let mut rest = run.pieces.as_slice();
    while let Some(&first) = rest.first() {
        let next_mark = run
            .marks
            .get(run.marks.partition_point(|m| m.out <= first.offset))
            .map_or(u64::MAX, |m| m.out);
        let n = rest.partition_point(|p| p.offset < next_mark).max(1);
        groups.push(MarkGroup {
            first,
            pieces: &rest[..n],
        });
        rest = &rest[n..];
    }
    groups
}

/// What probing `group` from its nearest mark costs, in decompressed bytes (its overhead counted as bytes).
fn probe_cost(run: &Run, group: &MarkGroup) -> u64 {
    let from = run.marks[..run.marks.partition_point(|m| m.out <= group.first.offset)]
        .last()
        .map_or(run.start_out(), |m| m.out);
    let end = group.pieces.last().map_or(from, Piece::end);
    2 * (end - from) + PROBE_OVERHEAD
}

/// Probe `pieces` (all after `mark`) from it in one pass per fill, serve those whose bytes do not depend on the
/// window before the mark, and return the others.
fn serve_probed(
    src: &dyn ReadAt,
    location: &str,
    mark: Mark,
    pieces: Vec<Piece>,
    out: &mut [u8],
    sink: Option<&CacheSink<'_>>,
    stats: &mut ReadStats,
) -> Vec<Piece> {
    let (Some(first), Some(last)) = (pieces.first(), pieces.last()) else {
        return pieces;
    };
    let span = Piece {
        offset: first.offset,
        len: last.end() - first.offset,
        out_at: 0,
    };
    let Some((zeros, ones)) = probe(src, location, mark, &span, stats) else {
        return pieces;
    };
    let mut left = Vec::new();
    for p in pieces {
        let at = (p.offset - span.offset) as usize..(p.end() - span.offset) as usize;
        if zeros[at.clone()] != ones[at.clone()] {
            left.push(p);
            continue;
        }
        out[p.out_at..p.out_at + at.len()].copy_from_slice(&zeros[at.clone()]);
        if let Some(sink) = sink {
            sink.cache.insert(&sink.key, p.offset, zeros[at].to_vec());
        }
    }
    left
}

/// The marks to probe a piece at `offset` from, nearest first (`before`: the marks at or before it): the nearest
/// one; then, should the piece copy from the unknown window before it, the last mark a whole window
/// ([`WINDOW_SIZE`]) before the piece, from which no single copy can reach past the start, only a chain of copies
/// (on data compressed hard, as zlib's level 9 does, a quarter of the pieces next to a mark copy from before it;
/// retrying a window earlier costs a few times a probe, the seek point half a span); then one more window back.
fn probe_marks(before: &[Mark], offset: u64) -> impl Iterator<Item = Mark> + '_ {
    let nearest = before.last().copied();
    let back = |windows: u64| {
        let limit = offset.checked_sub(windows * WINDOW_SIZE as u64)?;
        let at = before.partition_point(|m| m.out <= limit);
        at.checked_sub(1).map(|i| before[i])
    };
    let earlier = back(1).filter(|m| nearest.is_some_and(|n| m.out < n.out));
    let earliest = back(2).filter(|m| earlier.is_some_and(|e| m.out < e.out));
    [nearest, earlier, earliest].into_iter().flatten()
}

/// Decompress from `mark` to the end of `piece` twice, the unknown window filled with `0x00` and then `0xFF`: the
/// piece's bytes both ways (a byte that agrees does not depend on the window). Errors give `None`: the pass from the
/// seek point then reads the same bytes again and reports them.
pub(super) fn probe(
    src: &dyn ReadAt,
    location: &str,
    mark: Mark,
    piece: &Piece,
    stats: &mut ReadStats,
) -> Option<(Vec<u8>, Vec<u8>)> {
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
    Some((zeros, ones))
}

/// Where a read keeps what it decompresses: the data cache, the file's key there, and where to cut entries (at the
/// index's seek points, so that later reads starting at a point find whole entries).
pub(super) struct CacheSink<'a> {
    pub(super) cache: &'a SpanCache,
    pub(super) key: Arc<str>,
    pub(super) index: Arc<GzIndex>,
    /// Entry length where no seek point is known (past the index's coverage, or without an index).
    pub(super) step: u64,
}

impl<'a> CacheSink<'a> {
    pub(super) fn new(
        cache: &'a SpanCache,
        key: Arc<str>,
        index: Arc<GzIndex>,
        span: u64,
    ) -> CacheSink<'a> {
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
pub(super) fn take_cached(
    cache: &SpanCache,
    key: &str,
    segments: &[Segment],
    out: &mut [u8],
) -> Vec<Piece> {
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
pub(super) fn serve_and_keep(
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
pub(super) fn kept_stretches(pieces: &[Piece]) -> Vec<Range<u64>> {
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
pub(super) fn copy_pieces(
    pieces: &[Piece],
    mut next: usize,
    pos: u64,
    data: &[u8],
    out: &mut [u8],
) -> usize {
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
pub(super) fn serve_pieces(
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
