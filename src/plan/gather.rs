//! Copying the elements of a read buffer into the result: runs of contiguous elements, or tiles for transposes.

use super::*;
use crate::error::Result;

/// Below this many elements along both axes a tiled transpose is not worth it.
pub(super) const MIN_TILED: usize = 8;

/// When the result's fastest axis is strided in the buffer but another axis is contiguous there (a layout change,
/// e.g. F storage to C output), that other axis: copying tile by tile then keeps both sides in cache.
pub(super) fn transpose_axis(dims: &[(usize, isize)], item: usize) -> Option<usize> {
    let &(n0, step0) = dims.first()?;
    if n0 < MIN_TILED || step0.unsigned_abs() == item {
        return None;
    }
    (1..dims.len()).find(|&k| dims[k].1.unsigned_abs() == item && dims[k].0 >= MIN_TILED)
}

/// The result's axes fastest first for `order`, length-1 axes dropped and axes that continue each other fused.
pub(super) fn fused_dims(axes: &[(usize, isize)], order: Order) -> Vec<(usize, isize)> {
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
pub(super) struct Copier<'a> {
    pub(super) src: &'a [u8],
    pub(super) item: usize,
}

/// Odometer over the outer axes of a copy: (length, source step, destination step) per axis, fastest first.
/// Yields the source and destination byte positions of every combination of their indices.
pub(super) struct Odometer<'a> {
    pub(super) axes: &'a [(usize, isize, usize)],
    pub(super) counters: Vec<usize>,
    pub(super) src: isize,
    pub(super) dst: usize,
    pub(super) done: bool,
}

impl<'a> Odometer<'a> {
    pub(super) fn new(axes: &'a [(usize, isize, usize)], src: isize, dst: usize) -> Odometer<'a> {
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
    pub(super) fn runs(&self, base: usize, dims: &[(usize, isize)], out: &mut [u8]) -> Result<()> {
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
    pub(super) fn strided<const N: usize>(
        &self,
        mut at: isize,
        step: isize,
        dst: &mut [u8],
    ) -> Result<()> {
        let n = if N == 0 { self.item } else { N };
        for chunk in dst.chunks_exact_mut(n) {
            chunk.copy_from_slice(self.element(at, n)?);
            at += step;
        }
        Ok(())
    }

    pub(super) fn element(&self, at: isize, n: usize) -> Result<&[u8]> {
        let from = to_index(at)?;
        self.src.get(from..from + n).ok_or_else(out_of_buffer)
    }

    /// A layout change: the result's fastest axis (0) is strided in the buffer and axis `s` is contiguous there.
    /// Copy in square tiles over those two axes so that both the reads and the writes of a tile stay in cache.
    pub(super) fn tiled(
        &self,
        base: usize,
        dims: &[(usize, isize)],
        s: usize,
        out: &mut [u8],
    ) -> Result<()> {
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

    pub(super) fn tile<const N: usize>(
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
pub(super) struct TilePair {
    pub(super) n0: usize,
    pub(super) src0: isize,
    pub(super) ns: usize,
    pub(super) srcs: isize,
    pub(super) dsts: usize,
}

/// Destination byte steps of the result's axes (fastest first, contiguous).
pub(super) fn dst_steps(dims: &[(usize, isize)], item: usize) -> Vec<usize> {
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
pub(super) fn outer_axes(
    dims: &[(usize, isize)],
    item: usize,
    skip: &[usize],
) -> Vec<(usize, isize, usize)> {
    let steps = dst_steps(dims, item);
    (0..dims.len())
        .filter(|k| !skip.contains(k))
        .map(|k| (dims[k].0, dims[k].1, steps[k]))
        .collect()
}
