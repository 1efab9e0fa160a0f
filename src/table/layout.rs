//! How a scan is cut up: per-file selections (one [`IndexSet`] per axis) → slabs (runs of indices along the
//! slowest stored axis; one `PartitionedFile` each, with its real byte span) → partitions (runs of consecutive
//! slabs) → pieces (boxes of at most a budget of elements, each one call of the read planner).
//!
//! All pure arithmetic: the opener maps a `PartitionedFile`'s byte range back to its slab with
//! [`slow_range_of`], so nothing but the byte range has to travel with the file (it survives serialization).

use std::fmt;
use std::ops::Range;

use crate::formats::{Compression, Order};

use super::files::VoxelFile;
use super::index_set::IndexSet;

/// What the scan reads from one file: one index set per axis, within the file's shape.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Selection {
    pub axes: Vec<IndexSet>,
}

impl Selection {
    pub fn full(shape: &[usize]) -> Selection {
        Selection {
            axes: shape.iter().map(|&n| IndexSet::full(n as u64)).collect(),
        }
    }

    /// Rows the selection yields (1 for a 0-d array); saturates at `u64::MAX` (only a hand-made selection can get
    /// there: a registered file's size fits in 64 bits).
    pub fn rows(&self) -> u64 {
        self.axes
            .iter()
            .fold(1u64, |acc, s| acc.saturating_mul(s.count()))
    }

    pub fn is_empty(&self) -> bool {
        self.rows() == 0
    }
}

/// numpy-like: `[0:96, 0:96, 30, 0:300]`; an axis with several ranges prints them joined by `|`.
impl fmt::Display for Selection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[")?;
        for (k, s) in self.axes.iter().enumerate() {
            if k > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{s}")?;
        }
        f.write_str("]")
    }
}

/// The axis whose index changes slowest in the file: the last for F order, the first for C order.
pub fn slow_axis(ndim: usize, order: Order) -> Option<usize> {
    match (ndim, order) {
        (0, _) => None,
        (n, Order::F) => Some(n - 1),
        (_, Order::C) => Some(0),
    }
}

/// Bytes between consecutive indices of the slow axis.
fn slow_stride(f: &VoxelFile, slow: usize) -> u64 {
    let inner: u64 = f
        .layout
        .shape
        .iter()
        .enumerate()
        .filter(|&(a, _)| a != slow)
        .fold(1u64, |acc, (_, &n)| acc.saturating_mul(n as u64));
    inner.saturating_mul(f.itemsize())
}

/// A run of slow-axis indices of one file (the whole selection when `slow` is `None`: gzip and 0-d files).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slab {
    pub file: usize,
    pub slow: Option<Range<u64>>,
    pub rows: u64,
    /// Bytes of the selected elements (what the slab strictly needs).
    pub bytes: u64,
}

/// Cut one file's selection into slabs of about `target_bytes` of selected data (at least one slow index each).
/// 0-d arrays are one slab, and so are gzip files without a seek-point index (a stream without one is read in one
/// forward pass); an indexed gzip file is cut like any other, each slab starting from the seek point before it.
pub fn slabs_of(file: usize, f: &VoxelFile, sel: &Selection, target_bytes: u64) -> Vec<Slab> {
    let whole = |rows: u64| Slab {
        file,
        slow: None,
        rows,
        bytes: rows.saturating_mul(f.itemsize()),
    };
    if sel.is_empty() {
        return Vec::new();
    }
    let slow = match slow_axis(f.ndim(), f.layout.order) {
        Some(a) if splittable(f) => a,
        _ => return vec![whole(sel.rows())],
    };
    let inner_rows: u64 = sel
        .axes
        .iter()
        .enumerate()
        .filter(|&(a, _)| a != slow)
        .fold(1u64, |acc, (_, s)| acc.saturating_mul(s.count()));
    let per_index = inner_rows.saturating_mul(f.itemsize());
    let step = (target_bytes / per_index.max(1)).max(1);
    let mut out = Vec::new();
    for r in sel.axes[slow].ranges() {
        let mut lo = r.start;
        while lo < r.end {
            let hi = lo.saturating_add(step).min(r.end);
            out.push(Slab {
                file,
                slow: Some(lo..hi),
                rows: (hi - lo).saturating_mul(inner_rows),
                bytes: (hi - lo).saturating_mul(per_index),
            });
            lo = hi;
        }
    }
    out
}

/// Whether a slab of `f` can start anywhere: uncompressed, or a local gzip file with an index built ahead (by
/// `voxelscan index` or an earlier read).
fn splittable(f: &VoxelFile) -> bool {
    match (&f.compression, &f.data) {
        (Compression::None, _) => true,
        (Compression::Gzip, crate::location::Location::Path(p)) => crate::io::gzip::index_exists(p),
        (Compression::Gzip, _) => false,
    }
}

/// The file bytes a slab spans: whole slow-axis planes from `lo` to `hi` (the whole data for a `None` slab).
pub fn byte_span(f: &VoxelFile, slow: Option<&Range<u64>>) -> Range<u64> {
    match (slow, slow_axis(f.ndim(), f.layout.order)) {
        // Registered files were checked to end within 64 bits; saturating keeps a hand-made one from wrapping.
        (Some(r), Some(a)) => {
            let stride = slow_stride(f, a);
            let at = |i: u64| f.layout.offset.saturating_add(i.saturating_mul(stride));
            at(r.start)..at(r.end)
        }
        _ => {
            let len = f
                .layout
                .shape
                .iter()
                .fold(f.itemsize(), |acc, &n| acc.saturating_mul(n as u64));
            f.layout.offset..f.layout.offset.saturating_add(len)
        }
    }
}

/// The slow-axis indices a byte span (made by [`byte_span`]) stands for; `None` when it is not such a span.
pub fn slow_range_of(f: &VoxelFile, span: Range<u64>) -> Option<Range<u64>> {
    let a = slow_axis(f.ndim(), f.layout.order)?;
    let stride = slow_stride(f, a);
    let (s, e) = (
        span.start.checked_sub(f.layout.offset)?,
        span.end.checked_sub(f.layout.offset)?,
    );
    if stride == 0 || s % stride != 0 || e % stride != 0 || s > e {
        return None;
    }
    let r = s / stride..e / stride;
    (r.end <= f.layout.shape[a] as u64).then_some(r)
}

/// Split slabs (in file order) into at most `n` runs of consecutive slabs with about equal selected bytes.
pub fn group_slabs(slabs: Vec<Slab>, n: usize) -> Vec<Vec<Slab>> {
    let n = n.max(1) as u128;
    let weight = |s: &Slab| u128::from(s.bytes.max(1));
    let total: u128 = slabs.iter().map(weight).sum();
    let mut groups: Vec<Vec<Slab>> = Vec::new();
    let mut before = 0u128;
    let mut current = None;
    for s in slabs {
        let w = weight(&s);
        // The group of a slab is decided by where its middle falls.
        let g = ((2 * before + w) * n / (2 * total.max(1))).min(n - 1);
        before += w;
        if current != Some(g) {
            groups.push(Vec::new());
            current = Some(g);
        }
        if let Some(last) = groups.last_mut() {
            last.push(s);
        }
    }
    groups
}

/// The selection of one slab: the file's selection with the slow axis cut to the slab.
pub fn slab_selection(
    sel: &Selection,
    slow_axis: Option<usize>,
    slow: Option<&Range<u64>>,
) -> Selection {
    let mut out = sel.clone();
    if let (Some(a), Some(r)) = (slow_axis, slow) {
        out.axes[a] = out.axes[a].intersect(&IndexSet::range(r.clone()));
    }
    out
}

/// A box of step-1 ranges, one per axis.
pub type Piece = Vec<Range<u64>>;

/// Elements in a box.
pub fn piece_len(p: &[Range<u64>]) -> u64 {
    p.iter().map(|r| r.end - r.start).product()
}

/// The boxes covering `sel`, each of at most `budget` elements (a single element may still exceed nothing), in
/// storage order as far as the selection allows: slow-axis runs outermost, axes split from slow to fast.
///
/// Lazy: a header may claim an array of 2^45 elements, so the pieces are made one at a time as the scan reads them
/// (a gzip slab ending early then stops the scan after its first piece, holding one piece in memory).
pub fn pieces(sel: &Selection, order: Order, budget: u64) -> Pieces {
    let ndim = sel.axes.len();
    let slow_to_fast: Vec<usize> = match order {
        Order::F => (0..ndim).rev().collect(),
        Order::C => (0..ndim).collect(),
    };
    let ranges: Vec<Vec<Range<u64>>> = slow_to_fast
        .iter()
        .map(|&a| sel.axes[a].ranges().to_vec())
        .collect();
    let first = ranges.iter().all(|r| !r.is_empty()).then(|| vec![0; ndim]);
    Pieces {
        ranges,
        slow_to_fast,
        budget: budget.max(1),
        next_box: first,
        current: None,
    }
}

/// The pieces of a selection, made on demand (see [`pieces`]).
#[derive(Debug, Clone)]
pub struct Pieces {
    /// Each axis's ranges, slowest axis first.
    ranges: Vec<Vec<Range<u64>>>,
    slow_to_fast: Vec<usize>,
    budget: u64,
    /// Per axis (slowest first), which of its ranges the next box takes; `None` when every box was started.
    next_box: Option<Vec<usize>>,
    /// The box being cut into pieces.
    current: Option<BoxCuts>,
}

impl Iterator for Pieces {
    type Item = Piece;

    fn next(&mut self) -> Option<Piece> {
        loop {
            if let Some(p) = self.current.as_mut().and_then(BoxCuts::next) {
                return Some(p);
            }
            let which = self.next_box.take()?;
            let mut b: Piece = vec![0..0; which.len()];
            for (k, &a) in self.slow_to_fast.iter().enumerate() {
                b[a] = self.ranges[k][which[k]].clone();
            }
            self.next_box = advance_box(&self.ranges, which);
            self.current = Some(BoxCuts::new(b, &self.slow_to_fast, self.budget));
        }
    }
}

/// The box after `which` (fastest axis's range changing first), or `None` after the last.
fn advance_box(ranges: &[Vec<Range<u64>>], mut which: Vec<usize>) -> Option<Vec<usize>> {
    for k in (0..which.len()).rev() {
        which[k] += 1;
        if which[k] < ranges[k].len() {
            return Some(which);
        }
        which[k] = 0;
    }
    None
}

/// One box cut into pieces of at most `budget` elements: the slowest axes taken one index at a time until the
/// faster ones fit the budget, the next axis in runs of `step` indices, the faster axes whole.
#[derive(Debug, Clone)]
struct BoxCuts {
    b: Piece,
    /// The cut axes, slowest first: all but the last one index at a time, the last `step` indices at a time.
    cut: Vec<usize>,
    step: u64,
    /// Start of the next piece along each cut axis; `None` when the box is done.
    at: Option<Vec<u64>>,
}

impl BoxCuts {
    fn new(b: Piece, slow_to_fast: &[usize], budget: u64) -> BoxCuts {
        let whole = |b: &Piece| BoxCuts {
            at: Some(Vec::new()),
            b: b.clone(),
            cut: Vec::new(),
            step: 1,
        };
        if piece_len(&b) <= budget {
            return whole(&b);
        }
        // The first axis (from the slowest) whose faster axes together fit the budget is cut in runs; the slower
        // ones index by index.
        for k in 0..slow_to_fast.len() {
            let inner = slow_to_fast[k + 1..]
                .iter()
                .try_fold(1u64, |acc, &x| acc.checked_mul(b[x].end - b[x].start))
                .unwrap_or(u64::MAX);
            if inner <= budget {
                let cut = slow_to_fast[..=k].to_vec();
                let at = cut.iter().map(|&x| b[x].start).collect();
                return BoxCuts {
                    step: (budget / inner.max(1)).max(1),
                    at: Some(at),
                    cut,
                    b,
                };
            }
        }
        whole(&b)
    }
}

impl Iterator for BoxCuts {
    type Item = Piece;

    fn next(&mut self) -> Option<Piece> {
        let at = self.at.take()?;
        let mut piece = self.b.clone();
        let last = self.cut.len().checked_sub(1);
        for (k, (&a, &lo)) in self.cut.iter().zip(&at).enumerate() {
            let len = if Some(k) == last { self.step } else { 1 };
            piece[a] = lo..lo.saturating_add(len).min(self.b[a].end);
        }
        // Odometer: the last cut axis moves by `step`, the others by one.
        let mut next = at;
        for k in (0..next.len()).rev() {
            let a = self.cut[k];
            let len = if Some(k) == last { self.step } else { 1 };
            next[k] = next[k].saturating_add(len);
            if next[k] < self.b[a].end {
                self.at = Some(next);
                return Some(piece);
            }
            next[k] = self.b[a].start;
        }
        Some(piece)
    }
}

/// Linear positions `from..from + n` of a box laid out with `order` (F: axis 0 fastest), as the coordinates of
/// `axis`.
pub fn coordinates(
    piece: &[Range<u64>],
    order: Order,
    axis: usize,
    from: u64,
    n: usize,
) -> Vec<i64> {
    let stride: u64 = match order {
        Order::F => piece[..axis].iter().map(|r| r.end - r.start).product(),
        Order::C => piece[axis + 1..].iter().map(|r| r.end - r.start).product(),
    };
    let (start, len) = (piece[axis].start, piece[axis].end - piece[axis].start);
    let mut out = Vec::with_capacity(n);
    if len == 0 || stride == 0 {
        return out;
    }
    let end = from + n as u64;
    let mut q = from;
    if stride == 1 {
        while q < end {
            let idx = q % len;
            let run = (len - idx).min(end - q);
            out.extend((start + idx..start + idx + run).map(|x| x as i64));
            q += run;
        }
        return out;
    }
    while q < end {
        let block = q / stride;
        let value = (start + block % len) as i64;
        let run_end = ((block + 1) * stride).min(end);
        out.extend(std::iter::repeat_n(value, (run_end - q) as usize));
        q = run_end;
    }
    out
}

/// The coordinate on `axis` of each of the piece's elements `rows` (indices into the piece in `order`), as
/// [`coordinates`] gives it for a range of them.
pub fn coordinates_at(piece: &[Range<u64>], order: Order, axis: usize, rows: &[u32]) -> Vec<i64> {
    let stride: u64 = match order {
        Order::F => piece[..axis].iter().map(|r| r.end - r.start).product(),
        Order::C => piece[axis + 1..].iter().map(|r| r.end - r.start).product(),
    };
    let (start, len) = (piece[axis].start, piece[axis].end - piece[axis].start);
    if len == 0 || stride == 0 {
        return Vec::new();
    }
    rows.iter()
        .map(|&q| (start + (u64::from(q) / stride) % len) as i64)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dtype::{DType, Scalar};
    use proptest::prelude::*;

    fn file(shape: &[usize], order: Order, compression: Compression) -> VoxelFile {
        VoxelFile {
            name: "f.nii".into(),
            data: crate::location::Location::Path("f.nii".into()),
            format: crate::formats::Format::Raw,
            layout: crate::layout::ArrayLayout::new(shape.to_vec(), DType::native(Scalar::I16))
                .with_offset(352)
                .with_order(order),
            compression,
            affine: crate::formats::affine::IDENTITY,
            zooms: vec![1.0; shape.len()],
            world: Default::default(),
            grid: None,
            fingerprint: Default::default(),
            proxy: None,
            store: Default::default(),
        }
    }

    #[test]
    fn slabs_cover_the_slow_axis_with_real_spans() {
        let f = file(&[4, 5, 6], Order::F, Compression::None);
        let mut sel = Selection::full(&f.layout.shape);
        sel.axes[2] = IndexSet::from_ranges(vec![0..2, 3..6]);
        let slabs = slabs_of(0, &f, &sel, 2 * 4 * 5 * 2);
        let runs: Vec<_> = slabs.iter().map(|s| s.slow.clone().unwrap()).collect();
        assert_eq!(runs, [0..2, 3..5, 5..6]);
        assert_eq!(slabs.iter().map(|s| s.rows).sum::<u64>(), sel.rows());
        let span = byte_span(&f, Some(&(3..5)));
        assert_eq!(span, 352 + 3 * 40..352 + 5 * 40);
        assert_eq!(slow_range_of(&f, span), Some(3..5));
        assert_eq!(slow_range_of(&f, 353..400), None);
        let gz = file(&[4, 5, 6], Order::F, Compression::Gzip);
        assert_eq!(slabs_of(0, &gz, &sel, 1).len(), 1);
    }

    #[test]
    fn groups_are_contiguous_and_balanced() {
        let slabs: Vec<Slab> = (0..10)
            .map(|k| Slab {
                file: 0,
                slow: Some(k..k + 1),
                rows: 1,
                bytes: 10,
            })
            .collect();
        let groups = group_slabs(slabs.clone(), 3);
        assert_eq!(groups.len(), 3);
        assert_eq!(groups.iter().map(Vec::len).collect::<Vec<_>>(), [3, 4, 3]);
        assert_eq!(groups.concat(), slabs);
        assert_eq!(group_slabs(slabs[..2].to_vec(), 8).len(), 2);
        assert!(group_slabs(Vec::new(), 4).is_empty());
    }

    /// Every selected element is in exactly one piece, pieces respect the budget, and coordinates enumerate the
    /// piece in storage order.
    fn check_pieces(shape: &[usize], sets: &[Vec<Range<u64>>], order: Order, budget: u64) {
        let sel = Selection {
            axes: sets
                .iter()
                .map(|r| IndexSet::from_ranges(r.clone()))
                .collect(),
        };
        let ps: Vec<Piece> = pieces(&sel, order, budget).collect();
        assert_eq!(
            ps,
            eager_pieces(&sel, order, budget),
            "lazy and eager cuts differ"
        );
        let mut seen = std::collections::HashSet::new();
        for p in &ps {
            let n = piece_len(p);
            assert!(
                n <= budget || p.iter().all(|r| r.end - r.start <= 1),
                "{p:?} > {budget}"
            );
            let cols: Vec<Vec<i64>> = (0..shape.len())
                .map(|a| coordinates(p, order, a, 0, n as usize))
                .collect();
            for q in 0..n as usize {
                let coord: Vec<i64> = cols.iter().map(|c| c[q]).collect();
                assert!(
                    coord
                        .iter()
                        .zip(&sel.axes)
                        .all(|(&c, s)| s.contains(c as u64))
                );
                assert!(seen.insert(coord), "element twice");
            }
            // Storage order: the fastest axis changes first.
            if n >= 2 {
                let fast = if order == Order::F {
                    0
                } else {
                    shape.len() - 1
                };
                if p[fast].end - p[fast].start >= 2 {
                    assert_eq!(cols[fast][1], cols[fast][0] + 1);
                }
            }
            // A window of the coordinates equals the same window of the whole.
            if n >= 3 {
                for (a, col) in cols.iter().enumerate() {
                    assert_eq!(
                        coordinates(p, order, a, 1, n as usize - 2),
                        col[1..n as usize - 1]
                    );
                }
            }
        }
        assert_eq!(seen.len() as u64, sel.rows());
    }

    /// The cuts as they were made before pieces became lazy (all boxes, then each split recursively): the lazy
    /// iterator must give exactly these, in this order.
    fn eager_pieces(sel: &Selection, order: Order, budget: u64) -> Vec<Piece> {
        let ndim = sel.axes.len();
        let slow_to_fast: Vec<usize> = match order {
            Order::F => (0..ndim).rev().collect(),
            Order::C => (0..ndim).collect(),
        };
        let mut boxes: Vec<Piece> = vec![vec![0..0; ndim]];
        for &a in &slow_to_fast {
            let mut next = Vec::new();
            for b in &boxes {
                for r in sel.axes[a].ranges() {
                    let mut nb = b.clone();
                    nb[a] = r.clone();
                    next.push(nb);
                }
            }
            boxes = next;
        }
        let mut out = Vec::new();
        for b in boxes {
            split_box(b, &slow_to_fast, budget.max(1), &mut out);
        }
        out
    }

    fn split_box(b: Piece, slow_to_fast: &[usize], budget: u64, out: &mut Vec<Piece>) {
        let Some((&a, faster)) = slow_to_fast.split_first() else {
            out.push(b);
            return;
        };
        if piece_len(&b) <= budget {
            out.push(b);
            return;
        }
        let inner: u64 = faster.iter().map(|&x| b[x].end - b[x].start).product();
        let step = (budget / inner.max(1)).max(1);
        let r = b[a].clone();
        let mut lo = r.start;
        while lo < r.end {
            let hi = (lo + step).min(r.end);
            let mut nb = b.clone();
            nb[a] = lo..hi;
            if step == 1 && inner > budget {
                split_box(nb, faster, budget, out);
            } else {
                out.push(nb);
            }
            lo = hi;
        }
    }

    #[test]
    fn pieces_of_a_huge_claim_come_one_at_a_time() {
        // 32767³ elements: the eager cut held 35 million pieces at once.
        let sel = Selection::full(&[32767, 32767, 32767]);
        let mut ps = pieces(&sel, Order::F, 1 << 20);
        assert_eq!(ps.next(), Some(vec![0..32767, 0..32, 0..1]));
        assert_eq!(ps.next(), Some(vec![0..32767, 32..64, 0..1]));
        let c = pieces(&Selection::full(&[3, 1 << 40]), Order::C, 1 << 20);
        assert_eq!(c.take(2).count(), 2);
        let zero_d = pieces(&Selection::full(&[]), Order::F, 1);
        assert_eq!(zero_d.collect::<Vec<_>>(), vec![Vec::<Range<u64>>::new()]);
        let empty = Selection {
            axes: vec![IndexSet::full(4), IndexSet::empty()],
        };
        assert_eq!(pieces(&empty, Order::F, 1).count(), 0);
    }

    proptest! {
        #[test]
        fn pieces_cover_the_selection(
            dims in prop::collection::vec(1usize..6, 1..4),
            cuts in prop::collection::vec((0u64..6, 0u64..6, 0u64..6), 4),
            c_order in any::<bool>(),
            budget in 1u64..40,
        ) {
            let sets: Vec<Vec<Range<u64>>> = dims.iter().zip(&cuts).map(|(&n, &(a, b, c))| {
                let n = n as u64;
                vec![a.min(n)..b.min(n), c.min(n)..n]
            }).collect();
            check_pieces(&dims, &sets, if c_order { Order::C } else { Order::F }, budget);
        }
    }

    #[test]
    fn selection_prints_like_a_slice() {
        let mut sel = Selection::full(&[96, 96, 60, 300]);
        sel.axes[2] = IndexSet::range(30..31);
        sel.axes[0] = IndexSet::from_ranges(vec![0..3, 5..6]);
        assert_eq!(sel.to_string(), "[0:3|5, 0:96, 30, 0:300]");
    }
}
