//! nibabel's slicer optimisation (`fileslice`): per-axis wants → read selections (the gap heuristic), the
//! segments they read, and the selections applied in memory afterwards.

use super::*;
use crate::error::{Result, VoxelError};
use crate::slicer::{AxisSel, CanonicalSlice};

/// nibabel's per-axis request after canonicalisation: an integer, or a slice filled by `fill_slicer`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Want {
    Int(u64),
    Slice(Filled),
}

/// A filled slice: `start`, `stop` (`None` only for a negative step running past index 0), non-zero `step`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Filled {
    pub(super) start: u64,
    pub(super) stop: Option<u64>,
    pub(super) step: i128,
}

impl Filled {
    pub(super) const fn new(start: u64, stop: Option<u64>, step: i128) -> Filled {
        Filled { start, stop, step }
    }

    /// The slice as a first/step/count progression, ending right after its last element (len ≥ 1).
    pub(super) fn from_range(start: usize, step: isize, len: usize) -> Result<Filled> {
        let (start, len, step) = (to_u64(start), to_u64(len), step as i128);
        let last = i128::from(start) + i128::from(len.saturating_sub(1)) * step;
        let stop = if step > 0 {
            Some(u64::try_from(last + 1).map_err(|_| overflow("a slice end"))?)
        } else if last == 0 {
            None
        } else {
            Some(u64::try_from(last - 1).map_err(|_| overflow("a slice end"))?)
        };
        Ok(Filled::new(start, stop, step))
    }

    /// Number of elements (nibabel's `_full_slicer_len`).
    pub(super) fn len(self) -> u64 {
        let stop = self.stop.map_or(-1, i128::from);
        let gap = stop - i128::from(self.start);
        if gap == 0 || (gap > 0) != (self.step > 0) {
            return 0;
        }
        let n = (gap.abs() + self.step.abs() - 1) / self.step.abs();
        u64::try_from(n).unwrap_or(u64::MAX)
    }

    /// The same elements with a positive step (nibabel's `_positive_slice`); `stop` is then one past the largest.
    pub(super) fn positive(self) -> Filled {
        if self.step > 0 {
            return self;
        }
        let n = self.len();
        if n == 0 {
            return Filled::new(self.start, Some(self.start), -self.step);
        }
        let end = i128::from(self.start) + i128::from(n - 1) * self.step;
        let end = u64::try_from(end).unwrap_or(0);
        Filled::new(end, Some(self.start.saturating_add(1)), -self.step)
    }

    pub(super) fn is_full(self, dim: u64) -> bool {
        self == Filled::new(0, Some(dim), 1)
    }
}

pub(super) fn want_of(sel: AxisSel) -> Result<Want> {
    match sel {
        AxisSel::Index(i) => Ok(Want::Int(to_u64(i))),
        AxisSel::Range { start, step, len } => {
            Filled::from_range(start, step, len).map(Want::Slice)
        }
        AxisSel::NewAxis => Err(VoxelError::Internal(
            "a new axis where a real one was expected".into(),
        )),
    }
}

/// The heuristic's answer for one axis (nibabel's `'full'` / `'contiguous'`; `None` reads only what is wanted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Action {
    Full,
    Contiguous,
}

/// nibabel's `threshold_heuristic`; `stride` is the byte distance between neighbours along this axis.
pub(super) fn threshold_heuristic(want: Want, dim: u64, stride: u64, skip: u64) -> Option<Action> {
    match want {
        Want::Int(_) => {
            let gap = dim.saturating_sub(1).checked_mul(stride)?;
            (gap <= skip).then_some(Action::Full)
        }
        Want::Slice(f) => {
            let step_bytes = f.step.abs().checked_mul(i128::from(stride))?;
            if step_bytes > i128::from(skip) {
                return None;
            }
            let pos = f.positive();
            let read_len = pos.stop.unwrap_or(pos.start).saturating_sub(pos.start);
            match dim.saturating_sub(read_len).checked_mul(stride) {
                Some(gap) if gap <= skip => Some(Action::Full),
                _ => Some(Action::Contiguous),
            }
        }
    }
}

/// What to read along one axis (always forwards).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ReadSel {
    /// The whole axis (nibabel's `slice(None)`).
    All,
    Int(u64),
    /// A slice with a positive step.
    Slice(Filled),
}

/// What to apply afterwards along the read axis (nibabel's post slicer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum PostSel {
    /// `slice(None)`.
    All,
    /// The axis was read with an integer and is gone.
    Dropped,
    Int(u64),
    /// The original filled slice, over a wholly read axis.
    Slice(Filled),
    /// `slice(None, None, step)`.
    Step(i128),
}

pub(super) type Heuristic<'a> = &'a dyn Fn(Want, u64, u64) -> Option<Action>;

/// nibabel's `optimize_slicer`: what to read along one axis and what to apply to it afterwards.
pub(super) fn optimize_slicer(
    want: Want,
    dim: u64,
    all_full: bool,
    is_slowest: bool,
    stride: u64,
    heuristic: Heuristic,
) -> Result<(ReadSel, PostSel)> {
    if let Want::Slice(f) = want {
        if f.is_full(dim) {
            return Ok((ReadSel::All, PostSel::All));
        }
        if dim > 0 && f == Filled::new(dim - 1, None, -1) {
            return Ok((ReadSel::All, PostSel::Step(-1)));
        }
    }
    if all_full {
        let mut action = heuristic(want, dim, stride);
        if matches!(want, Want::Int(_)) && action == Some(Action::Contiguous) {
            return Err(VoxelError::Internal(
                "int index cannot be contiguous".into(),
            ));
        }
        // Reading all of the slowest axis only adds bytes at the end; it never merges reads.
        if is_slowest && action == Some(Action::Full) {
            action = match want {
                Want::Int(_) => None,
                Want::Slice(_) => Some(Action::Contiguous),
            };
        }
        match (action, want) {
            (Some(Action::Full), Want::Int(i)) => return Ok((ReadSel::All, PostSel::Int(i))),
            (Some(Action::Full), Want::Slice(f)) => return Ok((ReadSel::All, PostSel::Slice(f))),
            (Some(Action::Contiguous), Want::Slice(f)) if f.step.abs() != 1 => {
                let pos = f.positive();
                return Ok((
                    ReadSel::Slice(Filled::new(pos.start, pos.stop, 1)),
                    PostSel::Step(f.step),
                ));
            }
            _ => {}
        }
    }
    Ok(match want {
        Want::Int(i) => (ReadSel::Int(i), PostSel::Dropped),
        Want::Slice(f) if f.step > 0 => (ReadSel::Slice(f), PostSel::All),
        Want::Slice(f) => (ReadSel::Slice(f.positive()), PostSel::Step(-1)),
    })
}

/// nibabel's `optimize_read_slicers` over the real axes, fastest first (`dims` likewise).
pub(super) fn optimize_read_slicers(
    wants: &[Want],
    dims: &[u64],
    itemsize: u64,
    heuristic: Heuristic,
) -> Result<(Vec<ReadSel>, Vec<PostSel>)> {
    let mut stride = itemsize;
    let mut all_full = true;
    let mut reads = Vec::with_capacity(wants.len());
    let mut posts = Vec::with_capacity(wants.len());
    for (k, (&want, &dim)) in wants.iter().zip(dims).enumerate() {
        let is_slowest = k + 1 == wants.len();
        let (read, post) = optimize_slicer(want, dim, all_full, is_slowest, stride, heuristic)?;
        all_full &= read == ReadSel::All;
        reads.push(read);
        posts.push(post);
        stride = stride.saturating_mul(dim);
    }
    Ok((reads, posts))
}

/// nibabel's `slicers2segments`: read selections (fastest first) → byte segments in file order. Adjacent segments
/// are not merged (that is the byte source's business, see [`crate::io::ranges`]).
pub(super) fn slicers2segments(
    reads: &[ReadSel],
    dims: &[u64],
    offset: u64,
    itemsize: u64,
) -> Result<Vec<Segment>> {
    let mut segs = vec![Segment {
        offset,
        len: itemsize,
    }];
    let mut stride = itemsize;
    let mut all_full = true;
    for (&read, &dim) in reads.iter().zip(dims) {
        let add = |a: u64, b: u64| a.checked_add(b).ok_or_else(|| overflow("a segment offset"));
        let mul = |a: u64, b: u64| a.checked_mul(b).ok_or_else(|| overflow("a segment offset"));
        let f = match read {
            ReadSel::Int(i) => {
                let shift = mul(stride, i)?;
                for s in &mut segs {
                    s.offset = add(s.offset, shift)?;
                }
                all_full = false;
                stride = mul(stride, dim)?;
                continue;
            }
            ReadSel::All => Filled::new(0, Some(dim), 1),
            ReadSel::Slice(f) => f,
        };
        match segs.as_mut_slice() {
            // Everything faster is whole: the single block grows.
            [block] if all_full && f.step == 1 => {
                block.offset = add(block.offset, mul(stride, f.start)?)?;
                block.len = mul(block.len, f.len())?;
            }
            _ => segs = replicate(&segs, f, stride)?,
        }
        all_full &= f.is_full(dim);
        stride = mul(stride, dim)?;
    }
    Ok(segs)
}

/// One copy of every segment per selected index `j` of `f` (outer loop), shifted by `stride * j`.
pub(super) fn replicate(segs: &[Segment], f: Filled, stride: u64) -> Result<Vec<Segment>> {
    let n = usize::try_from(f.len()).map_err(|_| overflow("the segment count"))?;
    let count = n
        .checked_mul(segs.len())
        .ok_or_else(|| overflow("the segment count"))?;
    let mut out = Vec::new();
    out.try_reserve_exact(count)
        .map_err(|_| VoxelError::Invalid(format!("cannot hold {count} read segments in memory")))?;
    let step = u64::try_from(f.step).map_err(|_| overflow("a slice step"))?;
    for k in 0..to_u64(n) {
        let j = f.start + k * step;
        let shift = stride
            .checked_mul(j)
            .ok_or_else(|| overflow("a segment offset"))?;
        for s in segs {
            let offset = s
                .offset
                .checked_add(shift)
                .ok_or_else(|| overflow("a segment offset"))?;
            out.push(Segment { offset, len: s.len });
        }
    }
    Ok(out)
}

/// nibabel's `read_shape` in axis order: read lengths of the axes not read by an integer, new axes as 1.
pub(super) fn read_shape(
    slice: &CanonicalSlice,
    reads: &[ReadSel],
    shape: &[usize],
) -> Result<Vec<usize>> {
    let mut out = Vec::with_capacity(slice.items.len());
    let mut axis = 0;
    for item in &slice.items {
        if matches!(item, AxisSel::NewAxis) {
            out.push(1);
            continue;
        }
        match (reads.get(axis), shape.get(axis)) {
            (Some(ReadSel::All), Some(&dim)) => out.push(dim),
            (Some(ReadSel::Slice(f)), _) => {
                out.push(usize::try_from(f.len()).map_err(|_| overflow("a read length"))?)
            }
            _ => {}
        }
        axis += 1;
    }
    Ok(out)
}

/// The post selections and where the result's elements sit in the read buffer.
pub(super) struct PostLayout {
    /// The post selections as `AxisSel`s over the read axes.
    pub(super) post: Vec<AxisSel>,
    /// Byte position of the first element.
    pub(super) base: usize,
    /// Per result axis (length, byte step).
    pub(super) axes: Vec<(usize, isize)>,
}

/// Resolve the post slicers against the read buffer laid out in `order`.
pub(super) fn post_layout(
    reads: &[ReadSel],
    posts: &[PostSel],
    shape: &[usize],
    order: Order,
    itemsize: usize,
) -> Result<PostLayout> {
    let read_len = |k: usize| -> Result<Option<usize>> {
        Ok(match reads[k] {
            ReadSel::Int(_) => None,
            ReadSel::All => Some(shape[k]),
            ReadSel::Slice(f) => {
                Some(usize::try_from(f.len()).map_err(|_| overflow("a read length"))?)
            }
        })
    };
    // Byte strides of the read buffer, which is laid out in the storage order.
    let mut strides = vec![0isize; reads.len()];
    let mut stride = isize::try_from(itemsize).map_err(|_| overflow("the element size"))?;
    let fast: Vec<usize> = match order {
        Order::F => (0..reads.len()).collect(),
        Order::C => (0..reads.len()).rev().collect(),
    };
    for &k in &fast {
        if let Some(len) = read_len(k)? {
            strides[k] = stride;
            stride = isize::try_from(len)
                .ok()
                .and_then(|l| stride.checked_mul(l))
                .ok_or_else(|| overflow("a stride"))?;
        }
    }
    let mut post = Vec::new();
    let mut base = 0isize;
    let mut axes = Vec::new();
    for k in 0..reads.len() {
        let Some(len) = read_len(k)? else { continue };
        let sel = post_sel(posts[k], len)?;
        post.push(sel);
        let (first, step, n) = match sel {
            AxisSel::Index(i) => (i, 0, None),
            AxisSel::Range { start, step, len } => (start, step, Some(len)),
            AxisSel::NewAxis => (0, 0, None),
        };
        // In range: `first` is an element of a read axis, so first * stride is inside the buffer.
        base += first as isize * strides[k];
        if let Some(n) = n {
            axes.push((n, step * strides[k]));
        }
    }
    let base = usize::try_from(base).map_err(|_| overflow("a buffer position"))?;
    Ok(PostLayout { post, base, axes })
}

/// A post slicer over a read axis of `len` elements as an `AxisSel`.
pub(super) fn post_sel(post: PostSel, len: usize) -> Result<AxisSel> {
    let bad = || VoxelError::Internal("post selection outside the read axis".into());
    let count = |step: i128| {
        usize::try_from((i128::from(to_u64(len)) + step.abs() - 1) / step.abs()).map_err(|_| bad())
    };
    Ok(match post {
        PostSel::All => AxisSel::whole(len),
        PostSel::Dropped => return Err(bad()),
        PostSel::Int(i) => AxisSel::Index(usize::try_from(i).map_err(|_| bad())?),
        PostSel::Slice(f) => AxisSel::Range {
            start: usize::try_from(f.start).map_err(|_| bad())?,
            step: isize::try_from(f.step).map_err(|_| bad())?,
            len: usize::try_from(f.len()).map_err(|_| bad())?,
        },
        PostSel::Step(step) => AxisSel::Range {
            start: if step > 0 { 0 } else { len.saturating_sub(1) },
            step: isize::try_from(step).map_err(|_| bad())?,
            len: count(step)?,
        },
    })
}
