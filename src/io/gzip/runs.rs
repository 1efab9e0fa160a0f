//! The run planner: which decompression passes serve a read. Pure functions over the index and the planned
//! segments, no I/O.

use std::ops::Range;

use super::index::{GzIndex, Mark, SeekPoint};
use super::*;
use crate::error::{Result, VoxelError};
use crate::plan::Segment;

pub(super) fn check_segments(location: &str, segments: &[Segment], out_len: usize) -> Result<()> {
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
pub(super) struct Piece {
    pub(super) offset: u64,
    pub(super) len: u64,
    pub(super) out_at: usize,
}

impl Piece {
    pub(super) fn end(&self) -> u64 {
        self.offset + self.len
    }
}

/// One decompression pass: from `start` (`None`: the start of the file) through `pieces`, in order.
#[derive(Debug, Clone)]
pub(super) struct Run {
    pub(super) start: Option<SeekPoint>,
    pub(super) record: bool,
    pub(super) pieces: Vec<Piece>,
    /// The compressed bytes the run is expected to read (its end exact when a seek point follows the run, else
    /// estimated).
    pub(super) input: Range<u64>,
    /// Window-free block boundaries after `start` and up to the run's end, from which short pieces far from
    /// `start` may be probed.
    pub(super) marks: Vec<Mark>,
}

impl Run {
    pub(super) fn start_out(&self) -> u64 {
        self.start.as_ref().map_or(0, |p| p.out)
    }

    pub(super) fn end(&self) -> u64 {
        self.pieces.last().map_or(self.start_out(), Piece::end)
    }

    /// Decompressed bytes this run goes through.
    pub(super) fn work(&self) -> u64 {
        self.end() - self.start_out()
    }

    /// The part of the output buffer this run writes: `[first.out_at, last.out_at + last.len)`.
    pub(super) fn out_range(&self) -> (usize, usize) {
        match (self.pieces.first(), self.pieces.last()) {
            (Some(a), Some(b)) => (a.out_at, b.out_at + b.len as usize),
            _ => (0, 0),
        }
    }
}

pub(super) fn pieces_of(segments: &[Segment]) -> Vec<Piece> {
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
pub(super) fn plan_runs(index: &GzIndex, pieces: Vec<Piece>) -> Vec<Run> {
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
pub(super) fn split_at_points(run: Run, index: &GzIndex) -> Vec<Run> {
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
pub(super) fn input_start(start: Option<&SeekPoint>) -> u64 {
    start.map_or(0, |p| p.input.saturating_sub(u64::from(p.bits > 0)))
}

/// The compressed bytes a run reads, in a file of `size` compressed bytes: from its start point to the first seek
/// point at or after its last byte (a pass that has produced `p.out` bytes has consumed input up to `p.input`); the
/// end of the file after the index's last point; else (no point after it yet, or a recording run, which may go on)
/// an estimate from the compression ratio the index has seen (1 when it has seen none).
pub(super) fn input_range(run: &Run, index: &GzIndex, size: u64) -> Range<u64> {
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

/// Split runs into at most `threads` contiguous groups of roughly equal work.
pub(super) fn group_runs(runs: &[Run], threads: usize) -> Vec<&[Run]> {
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

#[cfg(test)]
mod tests {
    use super::super::index::PassRecord;
    use super::*;

    /// An index with points at each of `outs` (compressed offset = out / 2), covering `covered` bytes, complete
    /// with `total`.
    fn index(outs: &[u64], covered: u64, total: Option<u64>) -> GzIndex {
        let mut index = GzIndex::new(100);
        index.absorb(PassRecord {
            points: outs
                .iter()
                .map(|&o| SeekPoint::new(o, o / 2, 0, Vec::new()))
                .collect(),
            marks: Vec::new(),
            reached_out: covered,
            total_out: total,
        });
        index
    }

    fn segs(list: &[(u64, u64)]) -> Vec<Segment> {
        list.iter()
            .map(|&(offset, len)| Segment { offset, len })
            .collect()
    }

    /// (start point's out, [(offset, len, out_at)]) of each run.
    fn shape(runs: &[Run]) -> Vec<(u64, Vec<(u64, u64, usize)>)> {
        runs.iter()
            .map(|r| {
                let pieces = r
                    .pieces
                    .iter()
                    .map(|p| (p.offset, p.len, p.out_at))
                    .collect();
                (r.start_out(), pieces)
            })
            .collect()
    }

    #[test]
    fn pieces_keep_their_place_in_the_output_and_skip_empty_segments() {
        let p = pieces_of(&segs(&[(5, 3), (20, 0), (30, 4)]));
        assert_eq!(
            p.iter()
                .map(|p| (p.offset, p.len, p.out_at))
                .collect::<Vec<_>>(),
            [(5, 3, 0), (30, 4, 3)]
        );
    }

    #[test]
    fn a_run_goes_on_until_a_later_point_is_closer() {
        let idx = index(&[100, 200, 300], 400, Some(400));
        let pieces = pieces_of(&segs(&[
            (10, 10),
            (30, 10),
            (150, 10),
            (170, 10),
            (350, 10),
        ]));
        let runs = plan_runs(&idx, pieces);
        assert_eq!(
            shape(&runs),
            [
                (0, vec![(10, 10, 0), (30, 10, 10)]),
                (100, vec![(150, 10, 20), (170, 10, 30)]),
                (300, vec![(350, 10, 40)]),
            ]
        );
        assert!(runs.iter().all(|r| !r.record));
    }

    #[test]
    fn reads_past_the_covered_part_record_in_one_run() {
        let idx = index(&[100], 200, None);
        let runs = plan_runs(&idx, pieces_of(&segs(&[(150, 10), (250, 10), (900, 10)])));
        assert_eq!(
            shape(&runs),
            [(100, vec![(150, 10, 0), (250, 10, 10), (900, 10, 20)])]
        );
        assert!(runs[0].record);
        // The input a recording run reads is estimated from the ratio seen (1/2 here), clipped to the file.
        let r = input_range(&runs[0], &idx, 10_000);
        assert_eq!(r.start, 50);
        assert!(r.end > 50 + (910 - 100) / 2 && r.end <= 10_000, "{r:?}");
    }

    #[test]
    fn runs_are_cut_at_every_point_inside_them_for_threads() {
        let idx = index(&[100, 200], 300, Some(300));
        let runs = plan_runs(&idx, pieces_of(&segs(&[(50, 200)])));
        assert_eq!(runs.len(), 1);
        let split: Vec<Run> = runs
            .into_iter()
            .flat_map(|r| split_at_points(r, &idx))
            .collect();
        assert_eq!(
            shape(&split),
            [
                (0, vec![(50, 50, 0)]),
                (100, vec![(100, 100, 50)]),
                (200, vec![(200, 50, 150)]),
            ]
        );
        // A run with a point after it reads up to that point's input; the last one to the end of the file.
        assert_eq!(input_range(&split[0], &idx, 1000), 0..50);
        assert_eq!(input_range(&split[2], &idx, 1000), 100..1000);
        // Two threads: contiguous groups of about equal work.
        let groups = group_runs(&split, 2);
        assert_eq!(groups.iter().map(|g| g.len()).collect::<Vec<_>>(), [2, 1]);
    }

    #[test]
    fn segments_must_be_sorted_disjoint_and_fill_the_buffer() {
        assert!(check_segments("f", &segs(&[(0, 4), (4, 4)]), 8).is_ok());
        assert!(check_segments("f", &segs(&[(4, 4), (0, 4)]), 8).is_err());
        assert!(check_segments("f", &segs(&[(0, 4), (2, 4)]), 8).is_err());
        assert!(check_segments("f", &segs(&[(0, 4)]), 8).is_err());
    }
}
