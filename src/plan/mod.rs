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

mod gather;
mod slicers;
#[cfg(test)]
mod tests;

use gather::*;
use slicers::*;

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
            post: lens.iter().map(|&len| AxisSel::whole(len)).collect(),
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

fn to_index(at: isize) -> Result<usize> {
    usize::try_from(at).map_err(|_| out_of_buffer())
}

fn out_of_buffer() -> VoxelError {
    VoxelError::Internal("gather stepped outside the read buffer".into())
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
