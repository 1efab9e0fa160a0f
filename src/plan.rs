//! From a canonical slice to the bytes to read and what to do with them: nibabel's `fileslice.calc_slicedefs`
//! (reference §3.4–3.8, §3.11) with numpy-correct bounds.
//!
//! ```text
//! CanonicalSlice ─► per-axis "want" (fastest axis first) ─► optimize_read_slicers (gap heuristic)
//!     ─► read selections ─► slicers2segments ─► Segments (file order)        ─► io reads them into one buffer
//!     └► post selections (per read axis)     ─► ReadPlan::gather(buffer) ─► the numpy result, C or F layout
//! ```
//!
//! The heuristic, per axis from the fastest while every faster axis is read whole: read the whole axis when that
//! skips at most `skip_threshold` bytes, or the contiguous span from the first to the last wanted element when
//! stepping through it costs at most `skip_threshold` bytes per step, otherwise only the wanted elements. The slowest
//! axis is never widened to the whole axis. Reversed slices are read forwards and reversed in memory.
//!
//! Differences from nibabel, all deliberate: bounds are numpy's (the slicer rejects out-of-range integers and clamps
//! slices, §8 Q1/Q2); a selection with no elements gives no segments and an empty result of the right shape
//! (Q6/Q8); the threshold is a parameter (Q7); and a slice with a positive step is known by its first element, step
//! and count, so its span ends just after its last element, where nibabel uses the slice's `stop` (for `0:8:3`
//! nibabel's contiguous read is 8 elements, here 7).

use crate::error::{Result, VoxelError};
use crate::slicer::{AxisSel, CanonicalSlice};

pub use crate::layout::Order;

/// A range of file bytes: `len` bytes from `offset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Segment {
    pub offset: u64,
    pub len: u64,
}

/// nibabel's `SKIP_THRESH`: the most bytes worth reading and throwing away to save a seek, for local files.
pub const SKIP_THRESHOLD: u64 = 256;

/// What to read for a slice of an array stored in a file, and how to turn the bytes read into the result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadPlan {
    segments: Vec<Segment>,
    read_bytes: u64,
    read_shape: Vec<usize>,
    out_shape: Vec<usize>,
    /// The in-memory selection applied to the read buffer, one entry per read axis in axis order
    /// (nibabel's post slicers): `Index` drops the axis, `Range` is over the read axis.
    post: Vec<AxisSel>,
    itemsize: usize,
    /// Byte position in the read buffer of the first result element.
    base: usize,
    /// The result's axes in axis order (new axes and dropped axes left out): length and byte step in the buffer.
    axes: Vec<(usize, isize)>,
}

impl ReadPlan {
    /// Plan the read of `slice` from an array of `shape` with `itemsize`-byte elements stored from byte `offset`
    /// in `order`. `skip_threshold` is the heuristic's gap in bytes ([`SKIP_THRESHOLD`] for local files).
    pub fn new(
        slice: &CanonicalSlice,
        shape: &[usize],
        itemsize: usize,
        offset: u64,
        order: Order,
        skip_threshold: u64,
    ) -> Result<ReadPlan> {
        check_slice(slice, shape)?;
        let item = check_size(shape, itemsize, offset)?;
        let out_shape = slice.out_shape();
        let real: Vec<AxisSel> = slice.real_axes().copied().collect();
        if real
            .iter()
            .any(|sel| matches!(sel, AxisSel::Range { len: 0, .. }))
        {
            return Ok(ReadPlan::empty(slice, out_shape, itemsize));
        }
        // nibabel works fastest axis first: reverse C-ordered arrays.
        let fast: Vec<usize> = match order {
            Order::F => (0..real.len()).collect(),
            Order::C => (0..real.len()).rev().collect(),
        };
        let dims: Vec<u64> = fast.iter().map(|&k| to_u64(shape[k])).collect();
        let wants = fast
            .iter()
            .map(|&k| want_of(real[k]))
            .collect::<Result<Vec<_>>>()?;
        let heuristic =
            |w: Want, dim: u64, stride: u64| threshold_heuristic(w, dim, stride, skip_threshold);
        let (reads_fast, posts_fast) = optimize_read_slicers(&wants, &dims, item, &heuristic)?;
        let segments = slicers2segments(&reads_fast, &dims, offset, item)?;
        // Back to axis order.
        let mut reads = vec![ReadSel::All; real.len()];
        let mut posts = vec![PostSel::All; real.len()];
        for (j, &k) in fast.iter().enumerate() {
            reads[k] = reads_fast[j];
            posts[k] = posts_fast[j];
        }
        let read_bytes = segments.iter().map(|s| s.len).sum();
        let read_shape = read_shape(slice, &reads, shape)?;
        let PostLayout { post, base, axes } = post_layout(&reads, &posts, shape, order, itemsize)?;
        Ok(ReadPlan {
            segments,
            read_bytes,
            read_shape,
            out_shape,
            post,
            itemsize,
            base,
            axes,
        })
    }

    /// A selection without elements: nothing to read.
    fn empty(slice: &CanonicalSlice, out_shape: Vec<usize>, itemsize: usize) -> ReadPlan {
        let lens: Vec<usize> = slice
            .real_axes()
            .filter_map(|sel| match *sel {
                AxisSel::Range { len, .. } => Some(len),
                _ => None,
            })
            .collect();
        ReadPlan {
            segments: Vec::new(),
            read_bytes: 0,
            read_shape: out_shape.clone(),
            post: lens
                .iter()
                .map(|&len| AxisSel::Range {
                    start: 0,
                    step: 1,
                    len,
                })
                .collect(),
            axes: lens.iter().map(|&len| (len, itemsize as isize)).collect(),
            out_shape,
            itemsize,
            base: 0,
        }
    }

    /// The file byte ranges to read, in increasing file order, never overlapping.
    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    /// Sum of the segment lengths: the size of the buffer [`ReadPlan::gather`] expects.
    pub fn read_bytes(&self) -> u64 {
        self.read_bytes
    }

    /// Shape of the buffer the segments fill, in axis order (nibabel's `read_shape`, new axes as 1); the buffer
    /// itself is laid out in the storage order.
    pub fn read_shape(&self) -> &[usize] {
        &self.read_shape
    }

    /// The numpy result shape.
    pub fn out_shape(&self) -> &[usize] {
        &self.out_shape
    }

    /// From the concatenated bytes of all segments (`read_bytes()` long), the result's elements (copied verbatim,
    /// `itemsize` bytes each) laid out in `out_order` over `out_shape()`.
    /// True when the bytes read already are the result laid out in `out_order`, so [`ReadPlan::gather`] would only
    /// copy them: callers can read straight into the result buffer.
    pub fn is_identity(&self, out_order: Order) -> bool {
        let count = self.out_shape.iter().product::<usize>();
        let Some(bytes) = count.checked_mul(self.itemsize) else {
            return false;
        };
        if self.base != 0 || to_u64(bytes) != self.read_bytes {
            return false;
        }
        let dims = fused_dims(&self.axes, out_order);
        count <= 1 || (dims.len() == 1 && dims[0].1 == self.itemsize as isize)
    }

    pub fn gather(&self, read_buf: &[u8], out_order: Order) -> Result<Vec<u8>> {
        if to_u64(read_buf.len()) != self.read_bytes {
            return Err(VoxelError::Invalid(format!(
                "read buffer holds {} bytes but the plan reads {}",
                read_buf.len(),
                self.read_bytes
            )));
        }
        let count = self.out_shape.iter().product::<usize>();
        let Some(out_bytes) = count.checked_mul(self.itemsize).filter(|&n| n > 0) else {
            return Ok(Vec::new());
        };
        let dims = fused_dims(&self.axes, out_order);
        let mut out = Vec::new();
        out.try_reserve_exact(out_bytes).map_err(|e| {
            VoxelError::Invalid(format!(
                "the result would need {out_bytes} bytes: the allocation failed ({e})"
            ))
        })?;
        out.resize(out_bytes, 0);
        let copier = Copier {
            src: read_buf,
            item: self.itemsize,
        };
        // Every element lies inside the buffer by construction; the copies still check instead of panicking.
        match transpose_axis(&dims, self.itemsize) {
            Some(s) => copier.tiled(self.base, &dims, s, &mut out)?,
            None => copier.runs(self.base, &dims, &mut out)?,
        }
        Ok(out)
    }
}

/// Below this many elements along both axes a tiled transpose is not worth it.
const MIN_TILED: usize = 8;

/// When the result's fastest axis is strided in the buffer but another axis is contiguous there (a layout change,
/// e.g. F storage to C output), that other axis: copying tile by tile then keeps both sides in cache.
fn transpose_axis(dims: &[(usize, isize)], item: usize) -> Option<usize> {
    let &(n0, step0) = dims.first()?;
    if n0 < MIN_TILED || step0.unsigned_abs() == item {
        return None;
    }
    (1..dims.len()).find(|&k| dims[k].1.unsigned_abs() == item && dims[k].0 >= MIN_TILED)
}

/// The result's axes fastest first for `order`, length-1 axes dropped and axes that continue each other fused.
fn fused_dims(axes: &[(usize, isize)], order: Order) -> Vec<(usize, isize)> {
    let ordered: Box<dyn Iterator<Item = &(usize, isize)>> = match order {
        Order::F => Box::new(axes.iter()),
        Order::C => Box::new(axes.iter().rev()),
    };
    let mut dims: Vec<(usize, isize)> = Vec::with_capacity(axes.len());
    for &(len, step) in ordered.filter(|(len, _)| *len != 1) {
        match dims.last_mut() {
            Some((l0, s0))
                if isize::try_from(*l0).ok().and_then(|l| s0.checked_mul(l)) == Some(step) =>
            {
                *l0 *= len
            }
            _ => dims.push((len, step)),
        }
    }
    dims
}

/// Copies elements of `item` bytes from the read buffer `src` into the result.
struct Copier<'a> {
    src: &'a [u8],
    item: usize,
}

/// Odometer over the outer axes of a copy: (length, source step, destination step) per axis, fastest first.
/// Yields the source and destination byte positions of every combination of their indices.
struct Odometer<'a> {
    axes: &'a [(usize, isize, usize)],
    counters: Vec<usize>,
    src: isize,
    dst: usize,
    done: bool,
}

impl<'a> Odometer<'a> {
    fn new(axes: &'a [(usize, isize, usize)], src: isize, dst: usize) -> Odometer<'a> {
        Odometer {
            axes,
            counters: vec![0; axes.len()],
            src,
            dst,
            done: false,
        }
    }
}

impl Iterator for Odometer<'_> {
    type Item = (isize, usize);

    fn next(&mut self) -> Option<(isize, usize)> {
        if self.done {
            return None;
        }
        let here = (self.src, self.dst);
        self.done = true;
        for (count, &(len, src_step, dst_step)) in self.counters.iter_mut().zip(self.axes) {
            *count += 1;
            self.src += src_step;
            self.dst += dst_step;
            if *count < len {
                self.done = false;
                break;
            }
            *count = 0;
            self.src -= src_step * len as isize;
            self.dst -= dst_step * len;
        }
        Some(here)
    }
}

impl Copier<'_> {
    /// The result as runs along its fastest axis: one `copy_from_slice` per run when the run is contiguous in
    /// the buffer, else one fixed-size copy per element.
    fn runs(&self, base: usize, dims: &[(usize, isize)], out: &mut [u8]) -> Result<()> {
        let (run_len, run_step) = dims.first().copied().unwrap_or((1, self.item as isize));
        let run_bytes = run_len * self.item;
        let outer = outer_axes(dims, self.item, &[0]);
        let starts = Odometer::new(&outer, base as isize, 0);
        for ((src, _), dst) in starts.zip(out.chunks_exact_mut(run_bytes)) {
            if run_step == self.item as isize {
                dst.copy_from_slice(
                    self.src
                        .get(to_index(src)?..)
                        .and_then(|s| s.get(..run_bytes))
                        .ok_or_else(out_of_buffer)?,
                );
                continue;
            }
            // Fixed sizes let the compiler turn each element copy into one load and one store.
            match self.item {
                1 => self.strided::<1>(src, run_step, dst)?,
                2 => self.strided::<2>(src, run_step, dst)?,
                4 => self.strided::<4>(src, run_step, dst)?,
                8 => self.strided::<8>(src, run_step, dst)?,
                16 => self.strided::<16>(src, run_step, dst)?,
                _ => self.strided::<0>(src, run_step, dst)?,
            }
        }
        Ok(())
    }

    /// Elements `step` bytes apart from `at`, written contiguously into `dst` (`N` = item size, 0 = any size).
    fn strided<const N: usize>(&self, mut at: isize, step: isize, dst: &mut [u8]) -> Result<()> {
        let n = if N == 0 { self.item } else { N };
        for chunk in dst.chunks_exact_mut(n) {
            chunk.copy_from_slice(self.element(at, n)?);
            at += step;
        }
        Ok(())
    }

    fn element(&self, at: isize, n: usize) -> Result<&[u8]> {
        let from = to_index(at)?;
        self.src.get(from..from + n).ok_or_else(out_of_buffer)
    }

    /// A layout change: the result's fastest axis (0) is strided in the buffer and axis `s` is contiguous there.
    /// Copy in square tiles over those two axes so that both the reads and the writes of a tile stay in cache.
    fn tiled(&self, base: usize, dims: &[(usize, isize)], s: usize, out: &mut [u8]) -> Result<()> {
        let outer = outer_axes(dims, self.item, &[0, s]);
        let dst_steps = dst_steps(dims, self.item);
        let pair = TilePair {
            n0: dims[0].0,
            src0: dims[0].1,
            ns: dims[s].0,
            srcs: dims[s].1,
            dsts: dst_steps[s],
        };
        for (src, dst) in Odometer::new(&outer, base as isize, 0) {
            match self.item {
                1 => self.tile::<1>(src, dst, &pair, out)?,
                2 => self.tile::<2>(src, dst, &pair, out)?,
                4 => self.tile::<4>(src, dst, &pair, out)?,
                8 => self.tile::<8>(src, dst, &pair, out)?,
                16 => self.tile::<16>(src, dst, &pair, out)?,
                _ => self.tile::<0>(src, dst, &pair, out)?,
            }
        }
        Ok(())
    }

    fn tile<const N: usize>(
        &self,
        src: isize,
        dst: usize,
        p: &TilePair,
        out: &mut [u8],
    ) -> Result<()> {
        let n = if N == 0 { self.item } else { N };
        // About 8 KiB of each side per tile.
        let side = match n {
            1 | 2 => 64,
            3..=8 => 32,
            _ => 16,
        };
        for s0 in (0..p.ns).step_by(side) {
            for t0 in (0..p.n0).step_by(side) {
                let t1 = (t0 + side).min(p.n0);
                for i in s0..(s0 + side).min(p.ns) {
                    let mut from = src + i as isize * p.srcs + t0 as isize * p.src0;
                    let row = dst + i * p.dsts + t0 * n;
                    let row = out
                        .get_mut(row..row + (t1 - t0) * n)
                        .ok_or_else(out_of_buffer)?;
                    for chunk in row.chunks_exact_mut(n) {
                        chunk.copy_from_slice(self.element(from, n)?);
                        from += p.src0;
                    }
                }
            }
        }
        Ok(())
    }
}

/// The two axes of a tiled copy: the result's fastest (length, source step) and the buffer's contiguous one
/// (length, source step, destination step).
struct TilePair {
    n0: usize,
    src0: isize,
    ns: usize,
    srcs: isize,
    dsts: usize,
}

/// Destination byte steps of the result's axes (fastest first, contiguous).
fn dst_steps(dims: &[(usize, isize)], item: usize) -> Vec<usize> {
    let mut acc = item;
    dims.iter()
        .map(|&(len, _)| {
            let step = acc;
            acc *= len;
            step
        })
        .collect()
}

/// The axes of `dims` not in `skip`, as (length, source step, destination step) for an [`Odometer`].
fn outer_axes(dims: &[(usize, isize)], item: usize, skip: &[usize]) -> Vec<(usize, isize, usize)> {
    let steps = dst_steps(dims, item);
    (0..dims.len())
        .filter(|k| !skip.contains(k))
        .map(|k| (dims[k].0, dims[k].1, steps[k]))
        .collect()
}

fn to_index(at: isize) -> Result<usize> {
    usize::try_from(at).map_err(|_| out_of_buffer())
}

fn out_of_buffer() -> VoxelError {
    VoxelError::Invalid("internal error: gather stepped outside the read buffer".into())
}

fn to_u64(n: usize) -> u64 {
    // usize is at most 64 bits on every supported target.
    n as u64
}

fn overflow(what: &str) -> VoxelError {
    VoxelError::Invalid(format!("{what} does not fit in 64 bits"))
}

/// The slice must have one selection per axis, each inside its axis (a `CanonicalSlice` can be built by hand).
fn check_slice(slice: &CanonicalSlice, shape: &[usize]) -> Result<()> {
    let n_real = slice.real_axes().count();
    if n_real != shape.len() {
        return Err(VoxelError::Slice(format!(
            "the slice has {n_real} axes but the array is {}-dimensional",
            shape.len()
        )));
    }
    for (axis, (sel, &dim)) in slice.real_axes().zip(shape).enumerate() {
        let inside = match *sel {
            AxisSel::Index(i) => i < dim,
            AxisSel::Range { len: 0, .. } => true,
            AxisSel::Range { start, step, len } => {
                let last = i128::try_from(start).unwrap_or(i128::MAX)
                    + i128::try_from(len - 1).unwrap_or(i128::MAX) * step as i128;
                step != 0
                    && start < dim
                    && (0..i128::try_from(dim).unwrap_or(i128::MAX)).contains(&last)
            }
            AxisSel::NewAxis => true,
        };
        if !inside {
            return Err(VoxelError::Slice(format!(
                "selection {sel:?} is out of bounds for axis {axis} with size {dim}"
            )));
        }
    }
    Ok(())
}

/// The array must fit in a 64-bit file: `offset + itemsize * prod(shape)` without overflow. Returns the item size.
fn check_size(shape: &[usize], itemsize: usize, offset: u64) -> Result<u64> {
    if itemsize == 0 {
        return Err(VoxelError::Invalid(
            "element size must be at least one byte".into(),
        ));
    }
    let bytes = shape
        .iter()
        .try_fold(to_u64(itemsize), |acc, &d| acc.checked_mul(to_u64(d)))
        .and_then(|b| b.checked_add(offset).map(|_| b));
    let bytes = bytes
        .ok_or_else(|| overflow(&format!("an array of shape {shape:?} at offset {offset}")))?;
    // The read buffer must also be addressable in memory.
    usize::try_from(bytes).map_err(|_| overflow(&format!("an array of {bytes} bytes")))?;
    Ok(to_u64(itemsize))
}

/// nibabel's per-axis request after canonicalisation: an integer, or a slice filled by `fill_slicer`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Want {
    Int(u64),
    Slice(Filled),
}

/// A filled slice: `start`, `stop` (`None` only for a negative step running past index 0), non-zero `step`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Filled {
    start: u64,
    stop: Option<u64>,
    step: i128,
}

impl Filled {
    const fn new(start: u64, stop: Option<u64>, step: i128) -> Filled {
        Filled { start, stop, step }
    }

    /// The slice as a first/step/count progression, ending right after its last element (len ≥ 1).
    fn from_range(start: usize, step: isize, len: usize) -> Result<Filled> {
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
    fn len(self) -> u64 {
        let stop = self.stop.map_or(-1, i128::from);
        let gap = stop - i128::from(self.start);
        if gap == 0 || (gap > 0) != (self.step > 0) {
            return 0;
        }
        let n = (gap.abs() + self.step.abs() - 1) / self.step.abs();
        u64::try_from(n).unwrap_or(u64::MAX)
    }

    /// The same elements with a positive step (nibabel's `_positive_slice`); `stop` is then one past the largest.
    fn positive(self) -> Filled {
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

    fn is_full(self, dim: u64) -> bool {
        self == Filled::new(0, Some(dim), 1)
    }
}

fn want_of(sel: AxisSel) -> Result<Want> {
    match sel {
        AxisSel::Index(i) => Ok(Want::Int(to_u64(i))),
        AxisSel::Range { start, step, len } => {
            Filled::from_range(start, step, len).map(Want::Slice)
        }
        AxisSel::NewAxis => Err(VoxelError::Invalid(
            "internal error: a new axis where a real one was expected".into(),
        )),
    }
}

/// The heuristic's answer for one axis (nibabel's `'full'` / `'contiguous'`; `None` reads only what is wanted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Full,
    Contiguous,
}

/// nibabel's `threshold_heuristic`; `stride` is the byte distance between neighbours along this axis.
fn threshold_heuristic(want: Want, dim: u64, stride: u64, skip: u64) -> Option<Action> {
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
enum ReadSel {
    /// The whole axis (nibabel's `slice(None)`).
    All,
    Int(u64),
    /// A slice with a positive step.
    Slice(Filled),
}

/// What to apply afterwards along the read axis (nibabel's post slicer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PostSel {
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

type Heuristic<'a> = &'a dyn Fn(Want, u64, u64) -> Option<Action>;

/// nibabel's `optimize_slicer`: what to read along one axis and what to apply to it afterwards.
fn optimize_slicer(
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
            return Err(VoxelError::Invalid(
                "internal error: int index cannot be contiguous".into(),
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
fn optimize_read_slicers(
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
/// are not merged (that is the byte source's business, see [`merge_segments`]).
fn slicers2segments(
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
fn replicate(segs: &[Segment], f: Filled, stride: u64) -> Result<Vec<Segment>> {
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
fn read_shape(slice: &CanonicalSlice, reads: &[ReadSel], shape: &[usize]) -> Result<Vec<usize>> {
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
struct PostLayout {
    /// The post selections as `AxisSel`s over the read axes.
    post: Vec<AxisSel>,
    /// Byte position of the first element.
    base: usize,
    /// Per result axis (length, byte step).
    axes: Vec<(usize, isize)>,
}

/// Resolve the post slicers against the read buffer laid out in `order`.
fn post_layout(
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
fn post_sel(post: PostSel, len: usize) -> Result<AxisSel> {
    let bad = || VoxelError::Invalid("internal error: post selection outside the read axis".into());
    let count = |step: i128| {
        usize::try_from((i128::from(to_u64(len)) + step.abs() - 1) / step.abs()).map_err(|_| bad())
    };
    Ok(match post {
        PostSel::All => AxisSel::Range {
            start: 0,
            step: 1,
            len,
        },
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

/// Coalesce segments whose gap is at most `max_gap` bytes (for remote storage, where a request costs more than
/// reading ~1 MiB extra). Each result is the merged byte range and, for every input segment it covers (in input
/// order), that segment's (position inside the merged range, length). Segments are merged only with the run just
/// before them, so the input order is kept: concatenating the parts of all results in order gives back the input
/// segments in order. Works for any input; sorted non-overlapping input (as [`ReadPlan::segments`]) gives the
/// fewest merged ranges.
pub fn merge_segments(segs: &[Segment], max_gap: u64) -> Vec<(Segment, Vec<(u64, u64)>)> {
    let mut out: Vec<(Segment, Vec<(u64, u64)>)> = Vec::new();
    for s in segs {
        if let Some((merged, parts)) = out.last_mut() {
            let end = merged.offset.saturating_add(merged.len);
            if s.offset >= merged.offset && s.offset <= end.saturating_add(max_gap) {
                parts.push((s.offset - merged.offset, s.len));
                merged.len = end.max(s.offset.saturating_add(s.len)) - merged.offset;
                continue;
            }
        }
        out.push((*s, vec![(0, s.len)]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::slicer::{SliceSpec, canonical_slice};
    use proptest::prelude::*;

    const ALWAYS: Heuristic<'static> = &|_, _, _| Some(Action::Full);
    const NEVER: Heuristic<'static> = &|_, _, _| None;
    const PARTIAL: Heuristic<'static> = &|_, _, _| Some(Action::Contiguous);

    /// A filled nibabel slice.
    fn fs(start: u64, stop: Option<u64>, step: i128) -> Filled {
        Filled::new(start, stop, step)
    }

    fn ws(start: u64, stop: Option<u64>, step: i128) -> Want {
        Want::Slice(fs(start, stop, step))
    }

    fn rs(start: u64, stop: u64, step: i128) -> ReadSel {
        ReadSel::Slice(fs(start, Some(stop), step))
    }

    fn range(start: usize, step: isize, len: usize) -> AxisSel {
        AxisSel::Range { start, step, len }
    }

    fn all(len: usize) -> AxisSel {
        range(0, 1, len)
    }

    fn plan(
        spec: &str,
        shape: &[usize],
        itemsize: usize,
        offset: u64,
        order: Order,
        skip: u64,
    ) -> ReadPlan {
        let slice = canonical_slice(&SliceSpec::parse(spec).unwrap(), shape).unwrap();
        ReadPlan::new(&slice, shape, itemsize, offset, order, skip).unwrap()
    }

    fn segs(p: &ReadPlan) -> Vec<(u64, u64)> {
        p.segments().iter().map(|s| (s.offset, s.len)).collect()
    }

    /// A file of `offset` junk bytes, then the array (every element's bytes derived from its storage index, so
    /// that nearly all elements differ), then some junk.
    fn simulated_file(shape: &[usize], itemsize: usize, offset: usize) -> Vec<u8> {
        let n: usize = shape.iter().product();
        let mut file = vec![0xEE; offset + n * itemsize + 7];
        for (e, chunk) in file[offset..offset + n * itemsize]
            .chunks_exact_mut(itemsize)
            .enumerate()
        {
            let v = ((e as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ e as u64).to_le_bytes();
            for (k, byte) in chunk.iter_mut().enumerate() {
                *byte = if k < 8 { v[k] } else { k as u8 ^ e as u8 };
            }
        }
        file
    }

    /// What a byte source does: the segments' bytes, concatenated.
    fn read_segments(file: &[u8], p: &ReadPlan) -> Vec<u8> {
        let mut buf = Vec::new();
        for s in p.segments() {
            buf.extend_from_slice(&file[s.offset as usize..(s.offset + s.len) as usize]);
        }
        assert_eq!(buf.len() as u64, p.read_bytes());
        buf
    }

    /// numpy's answer, from the canonical slice by a plain walk over the result's coordinates.
    fn expected(
        file: &[u8],
        (offset, itemsize): (usize, usize),
        slice: &CanonicalSlice,
        shape: &[usize],
        storage: Order,
        out: Order,
    ) -> Vec<u8> {
        let lists: Vec<(Vec<usize>, bool)> = slice
            .real_axes()
            .map(|sel| match *sel {
                AxisSel::Index(i) => (vec![i], false),
                AxisSel::Range { start, step, len } => (
                    (0..len)
                        .map(|k| (start as isize + k as isize * step) as usize)
                        .collect(),
                    true,
                ),
                AxisSel::NewAxis => unreachable!(),
            })
            .collect();
        let n = shape.len();
        let strides: Vec<usize> = (0..n)
            .map(|k| match storage {
                Order::F => shape[..k].iter().product(),
                Order::C => shape[k + 1..].iter().product(),
            })
            .collect();
        // Kept axes in the order the output walks them, fastest last.
        let mut walk: Vec<usize> = (0..n).filter(|&k| lists[k].1).collect();
        if out == Order::F {
            walk.reverse();
        }
        let fixed: usize = (0..n)
            .filter(|&k| !lists[k].1)
            .map(|k| lists[k].0[0] * strides[k])
            .sum();
        let mut flat = vec![fixed];
        for &k in &walk {
            let stride = strides[k];
            flat = flat
                .iter()
                .flat_map(|&f| lists[k].0.iter().map(move |&i| f + i * stride))
                .collect();
        }
        if lists.iter().any(|(l, _)| l.is_empty()) {
            flat.clear();
        }
        let mut bytes = Vec::with_capacity(flat.len() * itemsize);
        for e in flat {
            bytes.extend_from_slice(&file[offset + e * itemsize..][..itemsize]);
        }
        bytes
    }

    fn check_against_numpy(
        spec: &str,
        shape: &[usize],
        itemsize: usize,
        offset: usize,
        order: Order,
        skip: u64,
    ) {
        let slice = canonical_slice(&SliceSpec::parse(spec).unwrap(), shape).unwrap();
        let p = ReadPlan::new(&slice, shape, itemsize, offset as u64, order, skip).unwrap();
        type FileKey = (Vec<usize>, usize, usize);
        thread_local! {
            // Building the (64, 64, 30, 10) file once per test instead of once per spec keeps debug runs short.
            static FILES: std::cell::RefCell<Vec<(FileKey, std::rc::Rc<Vec<u8>>)>> =
                const { std::cell::RefCell::new(Vec::new()) };
        }
        let key = (shape.to_vec(), itemsize, offset);
        let file = FILES.with_borrow_mut(|files| {
            if let Some((_, f)) = files.iter().find(|(k, _)| *k == key) {
                return std::rc::Rc::clone(f);
            }
            let f = std::rc::Rc::new(simulated_file(shape, itemsize, offset));
            files.push((key, std::rc::Rc::clone(&f)));
            f
        });
        let buf = read_segments(&file, &p);
        for out in [Order::C, Order::F] {
            let got = p.gather(&buf, out).unwrap();
            assert_eq!(
                got,
                expected(&file, (offset, itemsize), &slice, shape, order, out),
                "{spec} on {shape:?} {order} -> {out}"
            );
        }
        assert_eq!(p.out_shape(), slice.out_shape().as_slice());
    }

    #[test]
    fn order_parses_and_prints() {
        assert_eq!("F".parse::<Order>().unwrap(), Order::F);
        assert_eq!("f".parse::<Order>().unwrap(), Order::F);
        assert_eq!("C".parse::<Order>().unwrap(), Order::C);
        assert_eq!("c".parse::<Order>().unwrap(), Order::C);
        for bad in ["", "CF", "A", " C", "K"] {
            let err = bad.parse::<Order>().unwrap_err().to_string();
            assert!(err.contains("order should be one of 'C', 'F'"), "{err}");
        }
        assert_eq!(Order::F.to_string(), "F");
        assert_eq!(Order::C.to_string(), "C");
    }

    #[test]
    fn slice_length_and_positive_form() {
        // §3.3 _full_slicer_len / slice2len on filled slices (n = 10).
        assert_eq!(fs(1, Some(10), 3).len(), 3);
        assert_eq!(fs(0, Some(10), 3).len(), 4);
        assert_eq!(fs(9, None, -3).len(), 4);
        assert_eq!(fs(9, Some(0), -3).len(), 3);
        assert_eq!(fs(9, Some(1), -1).len(), 8);
        assert_eq!(fs(9, Some(6), -1).len(), 3);
        assert_eq!(fs(3, Some(2), 1).len(), 0);
        assert_eq!(fs(2, Some(3), -1).len(), 0);
        // §3.3 _positive_slice.
        assert_eq!(fs(4, None, -2).positive(), fs(0, Some(5), 2));
        assert_eq!(fs(4, None, -1).positive(), fs(0, Some(5), 1));
        assert_eq!(fs(4, Some(1), -1).positive(), fs(2, Some(5), 1));
        assert_eq!(fs(4, Some(1), -2).positive(), fs(2, Some(5), 2));
        assert_eq!(fs(1, Some(5), 2).positive(), fs(1, Some(5), 2));
        // The canonical progression as a filled slice: tight end, None past zero.
        assert_eq!(Filled::from_range(0, 1, 10).unwrap(), fs(0, Some(10), 1));
        assert_eq!(Filled::from_range(9, -1, 10).unwrap(), fs(9, None, -1));
        assert_eq!(Filled::from_range(9, -1, 9).unwrap(), fs(9, Some(0), -1));
        assert_eq!(Filled::from_range(0, 3, 3).unwrap(), fs(0, Some(7), 3));
        assert_eq!(Filled::from_range(9, -3, 4).unwrap(), fs(9, None, -3));
    }

    #[test]
    fn threshold_heuristic_vectors() {
        // §3.4.
        use Action::{Contiguous, Full};
        assert_eq!(threshold_heuristic(Want::Int(1), 9, 1, 8), Some(Full));
        assert_eq!(threshold_heuristic(Want::Int(1), 9, 1, 7), None);
        assert_eq!(threshold_heuristic(Want::Int(1), 9, 2, 16), Some(Full));
        assert_eq!(threshold_heuristic(Want::Int(1), 9, 2, 15), None);
        assert_eq!(threshold_heuristic(ws(0, Some(9), 1), 9, 2, 2), Some(Full));
        assert_eq!(threshold_heuristic(ws(0, Some(9), 1), 9, 2, 1), None);
        assert_eq!(threshold_heuristic(ws(0, Some(9), 2), 9, 2, 3), None);
        assert_eq!(threshold_heuristic(ws(8, None, -1), 9, 2, 2), Some(Full));
        assert_eq!(
            threshold_heuristic(ws(2, Some(9), 1), 9, 2, 2),
            Some(Contiguous)
        );
        assert_eq!(threshold_heuristic(ws(2, Some(9), 1), 9, 2, 1), None);
        assert_eq!(threshold_heuristic(ws(2, Some(9), 1), 9, 2, 4), Some(Full));
        assert_eq!(
            threshold_heuristic(ws(2, Some(9), 1), 9, 2, 3),
            Some(Contiguous)
        );
        // Absurd sizes saturate instead of overflowing.
        assert_eq!(
            threshold_heuristic(Want::Int(0), u64::MAX, u64::MAX, u64::MAX),
            None
        );
        assert_eq!(
            threshold_heuristic(ws(0, Some(1), i128::from(i64::MIN)), 10, u64::MAX, u64::MAX),
            None
        );
    }

    #[test]
    fn optimize_slicer_vectors() {
        // §3.5: dim 10, stride 4.
        let opt = |w: Want, all_full: bool, slowest: bool, h: Heuristic| {
            optimize_slicer(w, 10, all_full, slowest, 4, h)
        };
        for h in [ALWAYS, NEVER, PARTIAL] {
            for (all_full, slowest) in [(false, false), (true, false), (true, true), (false, true)]
            {
                assert_eq!(
                    opt(ws(0, Some(10), 1), all_full, slowest, h).unwrap(),
                    (ReadSel::All, PostSel::All)
                );
                assert_eq!(
                    opt(ws(9, None, -1), all_full, slowest, h).unwrap(),
                    (ReadSel::All, PostSel::Step(-1))
                );
            }
        }
        let s9 = ws(0, Some(9), 1);
        assert_eq!(
            opt(s9, false, false, ALWAYS).unwrap(),
            (rs(0, 9, 1), PostSel::All)
        );
        assert_eq!(
            opt(s9, true, false, ALWAYS).unwrap(),
            (ReadSel::All, PostSel::Slice(fs(0, Some(9), 1)))
        );
        assert_eq!(
            opt(s9, true, true, ALWAYS).unwrap(),
            (rs(0, 9, 1), PostSel::All)
        );
        assert_eq!(
            opt(s9, true, false, NEVER).unwrap(),
            (rs(0, 9, 1), PostSel::All)
        );
        assert_eq!(
            opt(ws(1, Some(10), 1), true, false, NEVER).unwrap(),
            (rs(1, 10, 1), PostSel::All)
        );
        assert_eq!(
            opt(ws(8, None, -1), false, false, NEVER).unwrap(),
            (rs(0, 9, 1), PostSel::Step(-1))
        );
        assert_eq!(
            opt(ws(8, None, -1), true, false, ALWAYS).unwrap(),
            (ReadSel::All, PostSel::Slice(fs(8, None, -1)))
        );
        assert_eq!(
            opt(ws(9, Some(0), -1), false, false, NEVER).unwrap(),
            (rs(1, 10, 1), PostSel::Step(-1))
        );
        let s2 = ws(0, Some(10), 2);
        assert_eq!(
            opt(s2, false, false, NEVER).unwrap(),
            (rs(0, 10, 2), PostSel::All)
        );
        assert_eq!(
            opt(s2, true, false, NEVER).unwrap(),
            (rs(0, 10, 2), PostSel::All)
        );
        assert_eq!(
            opt(s2, true, false, ALWAYS).unwrap(),
            (ReadSel::All, PostSel::Slice(fs(0, Some(10), 2)))
        );
        assert_eq!(
            opt(s2, false, false, ALWAYS).unwrap(),
            (rs(0, 10, 2), PostSel::All)
        );
        assert_eq!(
            opt(s2, true, true, ALWAYS).unwrap(),
            (rs(0, 10, 1), PostSel::Step(2))
        );
        let back2 = ws(9, None, -2);
        assert_eq!(
            opt(back2, false, false, NEVER).unwrap(),
            (rs(1, 10, 2), PostSel::Step(-1))
        );
        assert_eq!(
            opt(back2, true, false, ALWAYS).unwrap(),
            (ReadSel::All, PostSel::Slice(fs(9, None, -2)))
        );
        assert_eq!(
            opt(ws(2, Some(8), 2), false, false, NEVER).unwrap(),
            (rs(2, 8, 2), PostSel::All)
        );
        assert_eq!(
            opt(ws(2, Some(8), 2), true, false, PARTIAL).unwrap(),
            (rs(2, 8, 1), PostSel::Step(2))
        );
        assert_eq!(
            opt(Want::Int(0), true, false, NEVER).unwrap(),
            (ReadSel::Int(0), PostSel::Dropped)
        );
        assert_eq!(
            opt(Want::Int(9), true, false, NEVER).unwrap(),
            (ReadSel::Int(9), PostSel::Dropped)
        );
        assert!(
            opt(Want::Int(0), true, false, PARTIAL)
                .unwrap_err()
                .to_string()
                .contains("int index cannot be contiguous")
        );
        assert_eq!(
            opt(Want::Int(0), true, false, ALWAYS).unwrap(),
            (ReadSel::All, PostSel::Int(0))
        );
        assert_eq!(
            opt(Want::Int(0), true, true, ALWAYS).unwrap(),
            (ReadSel::Int(0), PostSel::Dropped)
        );
        // A reversed step-2 slice read contiguously: forwards, then stepped backwards.
        assert_eq!(
            opt(ws(8, Some(1), -3), true, false, PARTIAL).unwrap(),
            (rs(2, 9, 1), PostSel::Step(-3))
        );
    }

    #[test]
    fn optimize_read_slicers_vectors() {
        // §3.6, itemsize 4; axes fastest first (F order).
        let ors = |wants: &[Want], dims: &[u64], h: Heuristic| {
            optimize_read_slicers(wants, dims, 4, h).unwrap()
        };
        let full = |n: u64| ws(0, Some(n), 1);
        use PostSel as P;
        use ReadSel as R;
        assert_eq!(
            ors(&[Want::Int(1)], &[10], NEVER),
            (vec![R::Int(1)], vec![P::Dropped])
        );
        assert_eq!(
            ors(&[ws(0, Some(9), 1)], &[10], ALWAYS),
            (vec![rs(0, 9, 1)], vec![P::All])
        );
        assert_eq!(
            ors(&[ws(0, Some(9), 2)], &[10], ALWAYS),
            (vec![rs(0, 9, 1)], vec![P::Step(2)])
        );
        assert_eq!(
            ors(&[ws(0, Some(9), 1), full(6)], &[10, 6], ALWAYS),
            (
                vec![R::All, R::All],
                vec![P::Slice(fs(0, Some(9), 1)), P::All]
            )
        );
        assert_eq!(
            ors(&[full(10), ws(0, Some(5), 1)], &[10, 6], ALWAYS),
            (vec![R::All, rs(0, 5, 1)], vec![P::All, P::All])
        );
        assert_eq!(
            ors(&[ws(0, Some(9), 3), full(6)], &[10, 6], ALWAYS),
            (
                vec![R::All, R::All],
                vec![P::Slice(fs(0, Some(9), 3)), P::All]
            )
        );
        assert_eq!(
            ors(&[ws(0, Some(9), 3), full(6)], &[10, 6], PARTIAL),
            (vec![rs(0, 9, 1), R::All], vec![P::Step(3), P::All])
        );
        assert_eq!(
            ors(&[full(10), ws(0, Some(5), 2)], &[10, 6], ALWAYS),
            (vec![R::All, rs(0, 5, 1)], vec![P::All, P::Step(2)])
        );
        assert_eq!(
            ors(&[full(10), Want::Int(1)], &[10, 6], ALWAYS),
            (vec![R::All, R::Int(1)], vec![P::All, P::Dropped])
        );
        assert_eq!(
            ors(
                &[Want::Int(1), Want::Int(2), Want::Int(3)],
                &[2, 3, 4],
                ALWAYS
            ),
            (
                vec![R::All, R::All, R::Int(3)],
                vec![P::Int(1), P::Int(2), P::Dropped]
            )
        );
    }

    #[test]
    fn slicers2segments_vectors() {
        // §3.7, offset 7, itemsize 4.
        let s2s = |reads: &[ReadSel], dims: &[u64]| -> Vec<(u64, u64)> {
            slicers2segments(reads, dims, 7, 4)
                .unwrap()
                .iter()
                .map(|s| (s.offset, s.len))
                .collect()
        };
        use ReadSel::{All, Int};
        assert_eq!(s2s(&[Int(0)], &[10]), vec![(7, 4)]);
        assert_eq!(s2s(&[Int(0), Int(1)], &[10, 6]), vec![(47, 4)]);
        // The reference prints 7 + 40 + 960 here; nibabel 5.4.2 itself returns 527 (2 * 240 for the third axis).
        assert_eq!(
            s2s(&[Int(0), Int(1), Int(2)], &[10, 6, 4]),
            vec![(7 + 40 + 480, 4)]
        );
        assert_eq!(s2s(&[All], &[10]), vec![(7, 40)]);
        assert_eq!(
            s2s(&[Int(0), All], &[10, 6]),
            (0..6).map(|i| (7 + 40 * i, 4)).collect::<Vec<_>>()
        );
        assert_eq!(s2s(&[All, Int(0)], &[10, 6]), vec![(7, 40)]);
        assert_eq!(s2s(&[All, All], &[10, 6]), vec![(7, 240)]);
        assert_eq!(s2s(&[All, All, Int(2)], &[10, 6, 4]), vec![(7 + 480, 240)]);
        // A strided fast axis, then a contiguous slow one: one copy per slow index.
        assert_eq!(
            s2s(&[rs(1, 6, 2), rs(2, 4, 1)], &[10, 6]),
            vec![(91, 4), (99, 4), (107, 4), (131, 4), (139, 4), (147, 4)]
        );
        assert!(slicers2segments(&[Int(3)], &[10], u64::MAX - 8, 4).is_err());
    }

    #[test]
    fn calc_slicedefs_vectors() {
        // §3.8, itemsize 4, offset 7; `_never` is threshold 0 and `_always` the largest threshold here.
        let (never, always) = (0, u64::MAX);
        let p = plan("1", &[10], 4, 7, Order::F, never);
        assert_eq!(
            (segs(&p), p.read_shape(), p.post.clone()),
            (vec![(11, 4)], &[][..], vec![])
        );
        let p = plan(":", &[10], 4, 7, Order::F, never);
        assert_eq!(
            (segs(&p), p.read_shape(), p.post.clone()),
            (vec![(7, 40)], &[10][..], vec![all(10)])
        );
        let p = plan(":9", &[10], 4, 7, Order::F, never);
        assert_eq!((segs(&p), p.read_shape()), (vec![(7, 36)], &[9][..]));
        let p = plan("1:9", &[10], 4, 7, Order::F, never);
        assert_eq!((segs(&p), p.read_shape()), (vec![(11, 32)], &[8][..]));
        let p = plan("0", &[10, 6], 4, 7, Order::F, never);
        assert_eq!(
            segs(&p),
            (0..6).map(|i| (7 + 40 * i, 4)).collect::<Vec<_>>()
        );
        assert_eq!(p.read_shape(), &[6]);
        let p = plan("0", &[10, 6], 4, 7, Order::C, never);
        assert_eq!((segs(&p), p.read_shape()), (vec![(7, 24)], &[6][..]));
        let p = plan("1, 1:5", &[10, 6], 4, 7, Order::F, never);
        assert_eq!(
            (segs(&p), p.read_shape()),
            (vec![(51, 4), (91, 4), (131, 4), (171, 4)], &[4][..])
        );
        let p = plan("1, 1:5", &[10, 6], 4, 7, Order::C, never);
        assert_eq!((segs(&p), p.read_shape()), (vec![(35, 16)], &[4][..]));
        let p = plan(":, 1:5", &[10, 6], 4, 7, Order::F, never);
        assert_eq!((segs(&p), p.read_shape()), (vec![(47, 160)], &[10, 4][..]));
        let p = plan("1, :", &[10, 6], 4, 7, Order::F, always);
        assert_eq!((segs(&p), p.read_shape()), (vec![(7, 240)], &[10, 6][..]));
        assert_eq!(p.post, vec![AxisSel::Index(1), all(6)]);
        let p = plan(":, 1", &[10, 6], 4, 7, Order::F, always);
        assert_eq!(
            (segs(&p), p.read_shape(), p.post.clone()),
            (vec![(47, 40)], &[10][..], vec![all(10)])
        );
        // §3.6 with the threshold heuristic: 39 vs 40 bytes on (10, 6, 2).
        let p = plan(":9, :, :", &[10, 6, 2], 4, 0, Order::F, 39);
        assert_eq!(
            (segs(&p), p.read_shape()),
            (vec![(0, 480)], &[10, 6, 2][..])
        );
        assert_eq!(p.post, vec![range(0, 1, 9), all(6), all(2)]);
        let p = plan(":, :5, :", &[10, 6, 2], 4, 0, Order::F, 39);
        assert_eq!(
            (segs(&p), p.read_shape()),
            (vec![(0, 200), (240, 200)], &[10, 5, 2][..])
        );
        let p = plan(":, :5, :", &[10, 6, 2], 4, 0, Order::F, 40);
        assert_eq!(
            (segs(&p), p.read_shape()),
            (vec![(0, 480)], &[10, 6, 2][..])
        );
        assert_eq!(p.post, vec![all(10), range(0, 1, 5), all(2)]);
    }

    #[test]
    fn default_heuristic_vectors_4d() {
        // §3.8 "additional vectors": (64, 64, 30, 10) int16 at 352.
        let shape = [64, 64, 30, 10];
        let f = |spec: &str| plan(spec, &shape, 2, 352, Order::F, SKIP_THRESHOLD);
        let p = f("..., 0");
        assert_eq!(
            (segs(&p), p.read_shape()),
            (vec![(352, 245_760)], &[64, 64, 30][..])
        );
        let p = f(":, :, 15, :");
        assert_eq!(
            segs(&p),
            (0..10)
                .map(|t| (123_232 + 245_760 * t, 8192))
                .collect::<Vec<_>>()
        );
        let p = f("32, 32, 15, :");
        let want: Vec<(u64, u64)> = (0..10)
            .map(|t| (352 + 32 * 128 + 15 * 8192 + 245_760 * t, 128))
            .collect();
        assert_eq!((segs(&p), p.read_shape()), (want, &[64, 10][..]));
        assert_eq!(p.post, vec![AxisSel::Index(32), all(10)]);
        let p = f("10:20, 10:12, 5, 0");
        assert_eq!(
            (segs(&p), p.read_shape()),
            (vec![(42_592, 256)], &[64, 2][..])
        );
        assert_eq!(p.post, vec![range(10, 1, 10), all(2)]);
        let p = f("::2, :, 0, 0");
        assert_eq!(
            (segs(&p), p.read_shape()),
            (vec![(352, 8192)], &[64, 64][..])
        );
        assert_eq!(p.post, vec![range(0, 2, 32), all(64)]);
        let p = f("0:64:200");
        assert_eq!(p.segments().len(), 19_200);
        assert!(p.segments().iter().all(|s| s.len == 2));
        assert_eq!(p.out_shape(), &[1, 64, 30, 10]);
        // The same array in C order.
        let c = |spec: &str| plan(spec, &shape, 2, 352, Order::C, SKIP_THRESHOLD);
        let p = c("..., 0");
        assert_eq!(
            (segs(&p), p.read_shape()),
            (vec![(352, 2_457_600)], &shape[..])
        );
        assert_eq!(p.post, vec![all(64), all(64), all(30), AxisSel::Index(0)]);
        let p = c("0");
        assert_eq!(
            (segs(&p), p.read_shape()),
            (vec![(352, 38_400)], &[64, 30, 10][..])
        );
        // (256, 156, 256) float32 F, the issue #558 shapes.
        let shape = [256, 156, 256];
        let f = |spec: &str| plan(spec, &shape, 4, 352, Order::F, SKIP_THRESHOLD);
        let p = f("0");
        assert_eq!(p.segments().len(), 39_936);
        assert!(p.segments().iter().all(|s| s.len == 4));
        let p = f(":, 0");
        assert_eq!(p.segments().len(), 256);
        assert!(p.segments().iter().all(|s| s.len == 1024));
        assert_eq!(segs(&f("..., 0")), vec![(352, 256 * 156 * 4)]);
        let p = f("::2");
        assert_eq!(segs(&p), vec![(352, 256 * 156 * 256 * 4)]);
        assert_eq!(p.post, vec![range(0, 2, 128), all(156), all(256)]);
    }

    #[test]
    fn vectors_give_numpy_results() {
        for order in [Order::F, Order::C] {
            for skip in [0, SKIP_THRESHOLD, u64::MAX] {
                for spec in [
                    "1", ":", ":9", "1:9", "::-1", "8::-3", "0", "1, 1:5", ":, 1:5", "1, :",
                    ":, 1", "-1, ::-2",
                ] {
                    let shape: &[usize] = if spec.contains(',') || spec == "0" {
                        &[10, 6]
                    } else {
                        &[10]
                    };
                    check_against_numpy(spec, shape, 4, 7, order, skip);
                }
                for spec in [
                    "..., 0",
                    ":, :, 15, :",
                    "32, 32, 15, :",
                    "10:20, 10:12, 5, 0",
                    "::2, :, 0, 0",
                    "0:64:200",
                ] {
                    check_against_numpy(spec, &[64, 64, 30, 10], 2, 352, order, skip);
                }
            }
        }
    }

    #[test]
    fn zero_size_selections_read_nothing() {
        // Q8: nibabel fails with mmap(-1, 0) here.
        let p = plan("0:0, ::2", &[1000, 5], 8, 0, Order::F, SKIP_THRESHOLD);
        assert!(p.segments().is_empty());
        assert_eq!(p.read_bytes(), 0);
        assert_eq!(p.out_shape(), &[0, 3]);
        assert_eq!(p.read_shape(), &[0, 3]);
        assert_eq!(p.gather(&[], Order::C).unwrap(), Vec::<u8>::new());
        // Q6: zero-size arrays keep their shape; out-of-range integers still fail first.
        for (spec, shape, out) in [
            ("", &[0usize, 3][..], &[0usize, 3][..]),
            ("None, ..., 1", &[4, 0, 2], &[1, 4, 0]),
            ("5:, 0", &[3, 2], &[0]),
            ("::-1, 3:1", &[3, 4], &[3, 0]),
        ] {
            for order in [Order::F, Order::C] {
                let p = plan(spec, shape, 2, 9, order, SKIP_THRESHOLD);
                assert!(p.segments().is_empty() && p.read_bytes() == 0, "{spec}");
                assert_eq!(p.out_shape(), out, "{spec}");
                assert_eq!(p.gather(&[], Order::F).unwrap(), Vec::<u8>::new());
            }
        }
        let slice = CanonicalSlice {
            items: vec![AxisSel::Index(3), range(0, 1, 0)],
        };
        assert!(ReadPlan::new(&slice, &[3, 0], 2, 0, Order::F, 0).is_err());
    }

    #[test]
    fn zero_dimensional_arrays_hold_one_element() {
        for spec in ["", "...", "None", "None, ..., None"] {
            let p = plan(spec, &[], 8, 100, Order::F, SKIP_THRESHOLD);
            assert_eq!(segs(&p), vec![(100, 8)]);
            let bytes: Vec<u8> = (0..8).collect();
            assert_eq!(p.gather(&bytes, Order::C).unwrap(), bytes);
            check_against_numpy(spec, &[], 8, 3, Order::C, 0);
        }
    }

    #[test]
    fn bad_requests_are_errors_not_panics() {
        let full = CanonicalSlice::full(&[10, 10]);
        let err = |r: Result<ReadPlan>| r.unwrap_err().to_string();
        assert!(
            err(ReadPlan::new(&full, &[10], 2, 0, Order::F, 0))
                .contains("2 axes but the array is 1-dimensional")
        );
        assert!(err(ReadPlan::new(&full, &[10, 10], 0, 0, Order::F, 0)).contains("element size"));
        let huge = [usize::MAX, 2];
        assert!(
            err(ReadPlan::new(
                &CanonicalSlice::full(&huge),
                &huge,
                1,
                0,
                Order::F,
                0
            ))
            .contains("does not fit")
        );
        assert!(
            err(ReadPlan::new(
                &full,
                &[10, 10],
                8,
                u64::MAX - 10,
                Order::F,
                0
            ))
            .contains("does not fit")
        );
        let big = [1usize << 40, 1 << 30];
        assert!(ReadPlan::new(&CanonicalSlice::full(&big), &big, 2, 0, Order::C, 0).is_err());
        // Hand-built selections outside the array.
        for items in [
            vec![AxisSel::Index(10), all(10)],
            vec![range(5, 1, 6), all(10)],
            vec![range(5, -1, 7), all(10)],
            vec![range(0, 0, 2), all(10)],
            vec![range(usize::MAX, isize::MAX, usize::MAX), all(10)],
        ] {
            let slice = CanonicalSlice { items };
            assert!(
                err(ReadPlan::new(&slice, &[10, 10], 2, 0, Order::F, 0)).contains("out of bounds")
            );
        }
        let from_ranges = CanonicalSlice::from_ranges(&[0..11, 0..10]);
        assert!(ReadPlan::new(&from_ranges, &[10, 10], 2, 0, Order::F, 0).is_err());
        // A buffer of the wrong size.
        let p = plan("1:3", &[10], 2, 0, Order::F, 0);
        assert!(
            p.gather(&[0; 3], Order::C)
                .unwrap_err()
                .to_string()
                .contains("read buffer holds 3 bytes")
        );
    }

    #[test]
    fn from_ranges_boxes_read_like_slices() {
        let shape = [7, 5, 3];
        let slice = CanonicalSlice::from_ranges(&[2..6, 1..5, 0..3]);
        let p = ReadPlan::new(&slice, &shape, 4, 16, Order::F, SKIP_THRESHOLD).unwrap();
        let spec = canonical_slice(&SliceSpec::parse("2:6, 1:5, 0:3").unwrap(), &shape).unwrap();
        assert_eq!(
            p,
            ReadPlan::new(&spec, &shape, 4, 16, Order::F, SKIP_THRESHOLD).unwrap()
        );
        check_against_numpy("2:6, 1:5", &shape, 4, 16, Order::C, 0);
    }

    #[test]
    fn identity_plans_need_no_gather() {
        let id = |spec: &str, shape: &[usize], order: Order, out: Order| {
            plan(spec, shape, 2, 352, order, SKIP_THRESHOLD).is_identity(out)
        };
        assert!(id("", &[4, 5, 6], Order::F, Order::F));
        assert!(id("..., 3", &[4, 5, 6], Order::F, Order::F));
        assert!(id("None, :, :, 1", &[4, 5, 6], Order::F, Order::F));
        assert!(!id("..., 3", &[4, 5, 6], Order::F, Order::C));
        assert!(!id("::-1", &[4, 5, 6], Order::F, Order::F));
        assert!(!id("1", &[4, 5, 6], Order::F, Order::F));
        assert!(id("1", &[4, 5, 6], Order::C, Order::C));
    }

    #[test]
    fn gather_fuses_contiguous_runs() {
        // A whole array in storage order is one run; a row-wise box in C order has runs as long as its rows.
        let p = plan("", &[4, 5, 6], 2, 0, Order::C, SKIP_THRESHOLD);
        assert_eq!(fused_dims(&p.axes, Order::C), vec![(120, 2)]);
        assert_eq!(
            fused_dims(&p.axes, Order::F),
            vec![(4, 60), (5, 12), (6, 2)]
        );
        let p = plan("1:3, :, 2:5", &[4, 5, 6], 2, 0, Order::C, u64::MAX);
        assert_eq!(fused_dims(&p.axes, Order::C), vec![(3, 2), (10, 12)]);
        let p = plan("None, 1, ::-1", &[4, 5], 1, 0, Order::C, 0);
        assert_eq!(fused_dims(&p.axes, Order::C), vec![(5, -1)]);
    }

    #[test]
    fn layout_changes_copy_in_tiles() {
        // F storage to C output (and back) goes through the tiled copy; check it on shapes larger than a tile.
        let p = plan("", &[70, 9, 65], 2, 0, Order::F, SKIP_THRESHOLD);
        let dims = fused_dims(&p.axes, Order::C);
        assert_eq!(dims, vec![(65, 1260), (9, 140), (70, 2)]);
        assert_eq!(transpose_axis(&dims, 2), Some(2));
        assert_eq!(transpose_axis(&fused_dims(&p.axes, Order::F), 2), None);
        for itemsize in [1, 2, 3, 4, 8, 16] {
            for order in [Order::F, Order::C] {
                for spec in [
                    "",
                    "::-1",
                    "3:68:2, 4, ::-3",
                    "None, 1:, ::-1, 7:",
                    "..., ::-1, None",
                    "-1, :, :",
                ] {
                    check_against_numpy(spec, &[70, 9, 65], itemsize, 5, order, SKIP_THRESHOLD);
                }
            }
        }
    }

    #[test]
    fn merge_segments_examples() {
        let s = |offset, len| Segment { offset, len };
        assert!(merge_segments(&[], 10).is_empty());
        let segs = [s(0, 4), s(4, 4), s(10, 2), s(100, 1)];
        assert_eq!(
            merge_segments(&segs, 0),
            vec![
                (s(0, 8), vec![(0, 4), (4, 4)]),
                (s(10, 2), vec![(0, 2)]),
                (s(100, 1), vec![(0, 1)])
            ]
        );
        assert_eq!(
            merge_segments(&segs, 2),
            vec![
                (s(0, 12), vec![(0, 4), (4, 4), (10, 2)]),
                (s(100, 1), vec![(0, 1)])
            ]
        );
        assert_eq!(
            merge_segments(&segs, 88),
            vec![(s(0, 101), vec![(0, 4), (4, 4), (10, 2), (100, 1)])]
        );
        // Out of order or overlapping input stays correct.
        assert_eq!(
            merge_segments(&[s(10, 5), s(0, 2), s(12, 10), s(13, 1)], 1_000_000),
            vec![
                (s(10, 5), vec![(0, 5)]),
                (s(0, 22), vec![(0, 2), (12, 10), (13, 1)])
            ]
        );
        assert_eq!(
            merge_segments(&[s(u64::MAX - 1, 5), s(u64::MAX, 0)], u64::MAX).len(),
            1
        );
    }

    fn spec_strategy() -> impl Strategy<Value = SliceSpec> {
        use crate::slicer::Index;
        let bound = prop_oneof![Just(None), (-8i64..8).prop_map(Some)];
        let step = prop_oneof![
            Just(None),
            (-4i64..5)
                .prop_filter("non-zero", |s| *s != 0)
                .prop_map(Some)
        ];
        let index = prop_oneof![
            3 => (-6i64..6).prop_map(Index::Int),
            6 => (bound.clone(), bound, step).prop_map(|(start, stop, step)| Index::Slice { start, stop, step }),
            1 => Just(Index::Ellipsis),
            1 => Just(Index::NewAxis),
        ];
        prop::collection::vec(index, 0..7).prop_map(SliceSpec)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3000))]

        #[test]
        fn plans_give_numpy_results(
            shape in prop::collection::vec(0usize..7, 0..6),
            spec in spec_strategy(),
            itemsize in prop::sample::select(vec![1usize, 2, 3, 4, 8, 16]),
            offset in 0usize..40,
            order in prop::sample::select(vec![Order::F, Order::C]),
            skip in prop::sample::select(vec![0u64, 1, 3, 7, 16, 64, 256, 4096, u64::MAX]),
        ) {
            let Ok(slice) = canonical_slice(&spec, &shape) else { return Ok(()) };
            let p = ReadPlan::new(&slice, &shape, itemsize, offset as u64, order, skip).unwrap();
            // Segments: in file order, disjoint, inside the array, summing to the read buffer.
            let data = offset as u64..(offset + itemsize * shape.iter().product::<usize>()) as u64;
            for w in p.segments().windows(2) {
                prop_assert!(w[0].offset + w[0].len <= w[1].offset, "{:?}", p.segments());
            }
            for s in p.segments() {
                prop_assert!(s.len > 0 && data.start <= s.offset && s.offset + s.len <= data.end);
            }
            prop_assert_eq!(p.read_bytes(), (p.read_shape().iter().product::<usize>() * itemsize) as u64);
            let out_count: usize = slice.out_shape().iter().product();
            prop_assert!(p.read_bytes() >= (out_count * itemsize) as u64);
            if out_count == 0 {
                prop_assert!(p.segments().is_empty());
            }
            let file = simulated_file(&shape, itemsize, offset);
            let buf = read_segments(&file, &p);
            for out in [Order::C, Order::F] {
                let got = p.gather(&buf, out).unwrap();
                prop_assert_eq!(got, expected(&file, (offset, itemsize), &slice, &shape, order, out), "{} on {:?}", spec, shape);
            }
            prop_assert_eq!(p.out_shape().to_vec(), slice.out_shape());
        }

        #[test]
        fn larger_plans_give_numpy_results(
            shape in prop::collection::vec(0usize..40, 1..4),
            spec in spec_strategy(),
            itemsize in prop::sample::select(vec![1usize, 2, 3, 8]),
            order in prop::sample::select(vec![Order::F, Order::C]),
            skip in prop::sample::select(vec![0u64, 64, 256, u64::MAX]),
        ) {
            let Ok(slice) = canonical_slice(&spec, &shape) else { return Ok(()) };
            let p = ReadPlan::new(&slice, &shape, itemsize, 11, order, skip).unwrap();
            let file = simulated_file(&shape, itemsize, 11);
            let buf = read_segments(&file, &p);
            for out in [Order::C, Order::F] {
                let want = expected(&file, (11, itemsize), &slice, &shape, order, out);
                prop_assert_eq!(p.gather(&buf, out).unwrap(), want);
            }
        }

        #[test]
        fn merge_segments_matches_naive(
            raw in prop::collection::vec((0u64..200, 0u64..20), 0..30),
            max_gap in prop::sample::select(vec![0u64, 1, 5, 30, 1 << 20]),
            sorted in any::<bool>(),
        ) {
            let mut segs: Vec<Segment> = raw.iter().map(|&(offset, len)| Segment { offset, len }).collect();
            if sorted {
                // Non-overlapping and increasing, as a ReadPlan produces.
                let mut at = 0;
                for s in &mut segs {
                    s.offset += at;
                    at = s.offset + s.len;
                }
            }
            let file: Vec<u8> = (0..8000u32).map(|i| (i * 7 + i / 256) as u8).collect();
            let merged = merge_segments(&segs, max_gap);
            // Concatenating the parts gives the segments back, in order, with their bytes.
            let parts: Vec<Vec<u8>> = merged
                .iter()
                .flat_map(|(m, parts)| {
                    let block = &file[m.offset as usize..(m.offset + m.len) as usize];
                    parts.iter().map(move |&(at, len)| block[at as usize..(at + len) as usize].to_vec())
                })
                .collect();
            let want: Vec<Vec<u8>> =
                segs.iter().map(|s| file[s.offset as usize..(s.offset + s.len) as usize].to_vec()).collect();
            prop_assert_eq!(parts, want);
            // Each merged range is exactly the hull of its parts.
            for (m, parts) in &merged {
                prop_assert_eq!(parts.iter().map(|p| p.0).min(), Some(0));
                prop_assert_eq!(parts.iter().map(|p| p.0 + p.1).max(), Some(m.len));
            }
            if sorted {
                // The naive rule: a new range starts exactly where the gap to the previous segment exceeds max_gap.
                let mut starts = 0;
                for (k, s) in segs.iter().enumerate() {
                    if k == 0 || s.offset - (segs[k - 1].offset + segs[k - 1].len) > max_gap {
                        starts += 1;
                    }
                }
                prop_assert_eq!(merged.len(), starts);
                for w in merged.windows(2) {
                    prop_assert!(w[1].0.offset > w[0].0.offset + w[0].0.len + max_gap);
                }
            }
        }
    }
}
