//! Native moments of stored values per group: count, sum, sum of squares, min and max, over the value arrays of a
//! scan's pieces (zero-copy mapped buffers where the file allows), in loops the compiler vectorises. The scan
//! aggregate ([`super::scan_aggregate`]) and the fused atlas join ([`super::join_aggregate`], through [`Folded`]) turn
//! them into each DataFusion accumulator's own state and merge that into DataFusion's accumulators, so final values
//! and emitted partial states stay DataFusion's.
//!
//! Groups come as runs of a piece's elements ([`Run`]): one group for a whole run (no keys, or keys constant over
//! it), consecutive groups (a per-voxel map: `sum[g + x] += v[x]`), or groups a fixed step apart (the fallback).
//!
//! Integers of 8 and 16 bits keep exact `i64` sums and sums of squares (the variance from them is exact up to the
//! final division, more accurate than Welford's update); wider integers and floats keep `f64` sums of differences
//! from a per-group shift (the group's first value), which avoids the cancellation of plain sums of squares.
//! Integer `sum` keeps a wrapping `i64` sum, as DataFusion's own sum of `Int64`/`UInt64` does.

use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, ArrowPrimitiveType, Float64Array, Int64Array, PrimitiveArray, UInt64Array,
};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{
    DataType, Float32Type, Float64Type, Int8Type, Int16Type, Int32Type, Int64Type, UInt8Type,
    UInt16Type, UInt32Type, UInt64Type,
};
use datafusion::common::{DataFusionError, Result as DfResult};
use datafusion::logical_expr::GroupsAccumulator;

/// A run of a piece's elements (`at..at + len`, in storage order) and their groups: element `x` of the run is in
/// group `group + x × step` (`step` 0: one group for the run; 1: consecutive groups).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    pub at: usize,
    pub len: usize,
    pub group: usize,
    pub step: usize,
}

/// A stored element type the kernel reads.
pub trait Stored: datafusion::arrow::datatypes::ArrowNativeType + PartialOrd {
    type Arrow: ArrowPrimitiveType<Native = Self>;
    /// Starting values of min and max.
    const HIGHEST: Self;
    const LOWEST: Self;
    /// An integer type.
    const INT: bool;
    /// 8- and 16-bit integers: exact `i64` sums of squares.
    const SMALL_INT: bool;
    /// Elements a partition adds before its `i64` sums could overflow: the state is then merged into DataFusion's
    /// accumulators and restarted.
    const FLUSH_ROWS: u64;
    /// The value as an integer (wrapping for `u64` beyond `i64::MAX`, as a wrapping sum wants; 0 for floats).
    fn int(self) -> i64;
    fn float(self) -> f64;
    /// Finite (always for integers).
    fn finite(self) -> bool;
    /// Σ `int()` of `v` (wrapping for 64-bit types). 8- and 16-bit types sum blocks in `i32` lanes (four times the
    /// lanes of `i64` in a vector register), exact because a block's sum cannot leave `i32`.
    #[inline(always)]
    fn sum_ints(v: &[Self]) -> i64 {
        v.iter().fold(0i64, |a, &x| a.wrapping_add(x.int()))
    }
}

/// Block sums in `i32` for narrow integers: `BLOCK` values of magnitude at most 2^16 stay within `i32`.
macro_rules! narrow_sum {
    ($block:expr) => {
        #[inline(always)]
        fn sum_ints(v: &[Self]) -> i64 {
            v.chunks($block)
                .map(|c| i64::from(c.iter().map(|&x| x as i32).sum::<i32>()))
                .sum()
        }
    };
}

macro_rules! stored_int {
    ($t:ty, $arrow:ty, $small:expr, $flush:expr) => {
        stored_int!($t, $arrow, $small, $flush, );
    };
    ($t:ty, $arrow:ty, $small:expr, $flush:expr, $($sum:tt)*) => {
        impl Stored for $t {
            type Arrow = $arrow;
            const HIGHEST: Self = <$t>::MAX;
            const LOWEST: Self = <$t>::MIN;
            const INT: bool = true;
            const SMALL_INT: bool = $small;
            const FLUSH_ROWS: u64 = $flush;
            #[inline(always)]
            fn int(self) -> i64 {
                self as i64
            }
            #[inline(always)]
            fn float(self) -> f64 {
                self as f64
            }
            #[inline(always)]
            fn finite(self) -> bool {
                true
            }
            $($sum)*
        }
    };
}

// Squares of 8-bit values are below 2^16 and of 16-bit values below 2^32: 2^46 and 2^30 of them fit an i64 with
// room to spare. 32-bit values below 2^32 sum into an i64 for 2^30 elements. 64-bit sums wrap as DataFusion's do.
stored_int!(i8, Int8Type, true, 1 << 46, narrow_sum!(1 << 16););
stored_int!(u8, UInt8Type, true, 1 << 46, narrow_sum!(1 << 16););
stored_int!(i16, Int16Type, true, 1 << 30, narrow_sum!(1 << 15););
stored_int!(u16, UInt16Type, true, 1 << 30, narrow_sum!(1 << 15););
stored_int!(i32, Int32Type, false, 1 << 30);
stored_int!(u32, UInt32Type, false, 1 << 30);
stored_int!(i64, Int64Type, false, u64::MAX);
stored_int!(u64, UInt64Type, false, u64::MAX);

macro_rules! stored_float {
    ($t:ty, $arrow:ty) => {
        impl Stored for $t {
            type Arrow = $arrow;
            const HIGHEST: Self = <$t>::INFINITY;
            const LOWEST: Self = <$t>::NEG_INFINITY;
            const INT: bool = false;
            const SMALL_INT: bool = false;
            const FLUSH_ROWS: u64 = u64::MAX;
            #[inline(always)]
            fn int(self) -> i64 {
                0
            }
            #[inline(always)]
            fn float(self) -> f64 {
                self as f64
            }
            #[inline(always)]
            fn finite(self) -> bool {
                self.is_finite()
            }
        }
    };
}

stored_float!(f32, Float32Type);
stored_float!(f64, Float64Type);

/// What one aggregate needs from the moments, and the state it becomes (DataFusion's `state_fields()` order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stat {
    /// `count`: `[Int64 count]`.
    Count,
    /// `sum` of an integer column: `[Int64 | UInt64 sum]` (wrapping, as DataFusion's).
    SumInt(DataType),
    /// `sum` of a float (or a cast to float): `[Float64 sum]`.
    SumFloat,
    /// `avg`: `[UInt64 count, Float64 sum]`.
    Avg,
    /// `var`, `var_pop`, `stddev`, `stddev_pop`: `[UInt64 count, Float64 mean, Float64 m2]`.
    Variance,
    /// `min` / `max`: `[the argument's type]`.
    Min(DataType),
    Max(DataType),
}

/// Which per-group statistics to keep.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Needs {
    /// Exact (8/16-bit) or wrapping integer sum.
    pub isum: bool,
    /// Exact integer sum of squares (8/16-bit integers).
    pub isq: bool,
    /// Plain float sum.
    pub fsum: bool,
    /// Shifted float sums for the variance.
    pub dev: bool,
    pub min: bool,
    pub max: bool,
}

impl Needs {
    /// What `stats` need for element type `T`.
    pub fn of<T: Stored>(stats: &[Stat]) -> Needs {
        let mut n = Needs::default();
        for s in stats {
            match s {
                Stat::Count => {}
                Stat::SumInt(_) => n.isum = true,
                Stat::SumFloat | Stat::Avg if T::SMALL_INT => n.isum = true,
                Stat::SumFloat | Stat::Avg => n.fsum = true,
                Stat::Variance if T::SMALL_INT => {
                    n.isum = true;
                    n.isq = true;
                }
                Stat::Variance => n.dev = true,
                Stat::Min(_) => n.min = true,
                Stat::Max(_) => n.max = true,
            }
        }
        n
    }
}

/// Per-group moments of one partition (struct of arrays; only the needed ones are allocated).
#[derive(Debug)]
pub struct Moments<T: Stored> {
    needs: Needs,
    count: Vec<u64>,
    isum: Vec<i64>,
    isq: Vec<i64>,
    fsum: Vec<f64>,
    shift: Vec<f64>,
    dsum: Vec<f64>,
    dsq: Vec<f64>,
    min: Vec<T>,
    max: Vec<T>,
    /// Elements added since the last reset.
    rows: u64,
}

fn zeroed<V: Copy>(groups: usize, on: bool, v: V) -> DfResult<Vec<V>> {
    if !on {
        return Ok(Vec::new());
    }
    super::aggregate::filled(groups, v, "moments")
}

impl<T: Stored> Moments<T> {
    pub fn new(groups: usize, needs: Needs) -> DfResult<Self> {
        Ok(Moments {
            needs,
            count: zeroed(groups, true, 0)?,
            isum: zeroed(groups, needs.isum, 0)?,
            isq: zeroed(groups, needs.isq, 0)?,
            fsum: zeroed(groups, needs.fsum, 0.0)?,
            shift: zeroed(groups, needs.dev, 0.0)?,
            dsum: zeroed(groups, needs.dev, 0.0)?,
            dsq: zeroed(groups, needs.dev, 0.0)?,
            min: zeroed(groups, needs.min, T::HIGHEST)?,
            max: zeroed(groups, needs.max, T::LOWEST)?,
            rows: 0,
        })
    }

    /// Elements added since the last reset.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Back to no rows (after the state was merged elsewhere).
    pub fn reset(&mut self) {
        self.count.fill(0);
        self.isum.fill(0);
        self.isq.fill(0);
        self.fsum.fill(0.0);
        self.shift.fill(0.0);
        self.dsum.fill(0.0);
        self.dsq.fill(0.0);
        self.min.fill(T::HIGHEST);
        self.max.fill(T::LOWEST);
        self.rows = 0;
    }

    /// Add `values` (the run's elements) to the run's groups. The caller checked the groups are in range.
    #[inline(always)]
    pub fn add(&mut self, values: &[T], run: Run) {
        self.rows += values.len() as u64;
        match run.step {
            0 => self.add_one(values, run.group),
            1 => self.add_consecutive(values, run.group),
            s => self.add_strided(values, run.group, s),
        }
    }

    /// Every value into group `g`: reductions first, then one update of the group.
    #[inline(always)]
    fn add_one(&mut self, v: &[T], g: usize) {
        let Some(&first) = v.first() else {
            return;
        };
        let fresh = self.count[g] == 0;
        self.count[g] += v.len() as u64;
        let n = self.needs;
        if n.isum {
            self.isum[g] = self.isum[g].wrapping_add(T::sum_ints(v));
        }
        if n.isq {
            self.isq[g] += v.iter().map(|&x| x.int() * x.int()).sum::<i64>();
        }
        if n.fsum {
            self.fsum[g] += v.iter().map(|&x| x.float()).sum::<f64>();
        }
        if n.dev {
            if fresh {
                self.shift[g] = first.float();
            }
            let c = self.shift[g];
            self.dsum[g] += v.iter().map(|&x| x.float() - c).sum::<f64>();
            self.dsq[g] += v
                .iter()
                .map(|&x| {
                    let d = x.float() - c;
                    d * d
                })
                .sum::<f64>();
        }
        if n.min {
            let m = v.iter().fold(T::HIGHEST, |a, &x| if x < a { x } else { a });
            if m < self.min[g] {
                self.min[g] = m;
            }
        }
        if n.max {
            let m = v.iter().fold(T::LOWEST, |a, &x| if x > a { x } else { a });
            if m > self.max[g] {
                self.max[g] = m;
            }
        }
    }

    /// Value `x` into group `g + x`: one pass per statistic over the value run and the groups' slices.
    #[inline(always)]
    fn add_consecutive(&mut self, v: &[T], g: usize) {
        let r = g..g + v.len();
        let n = self.needs;
        if n.dev {
            // A group's first value is its shift (before the counts move).
            for ((s, &c), &x) in self.shift[r.clone()]
                .iter_mut()
                .zip(&self.count[r.clone()])
                .zip(v)
            {
                if c == 0 {
                    *s = x.float();
                }
            }
        }
        for c in &mut self.count[r.clone()] {
            *c += 1;
        }
        if n.isum {
            for (s, &x) in self.isum[r.clone()].iter_mut().zip(v) {
                *s = s.wrapping_add(x.int());
            }
        }
        if n.isq {
            for (s, &x) in self.isq[r.clone()].iter_mut().zip(v) {
                *s += x.int() * x.int();
            }
        }
        if n.fsum {
            for (s, &x) in self.fsum[r.clone()].iter_mut().zip(v) {
                *s += x.float();
            }
        }
        if n.dev {
            let groups = self.dsum[r.clone()]
                .iter_mut()
                .zip(&mut self.dsq[r.clone()])
                .zip(&self.shift[r.clone()]);
            for (((s, q), &c), &x) in groups.zip(v) {
                let d = x.float() - c;
                *s += d;
                *q += d * d;
            }
        }
        if n.min {
            for (m, &x) in self.min[r.clone()].iter_mut().zip(v) {
                if x < *m {
                    *m = x;
                }
            }
        }
        if n.max {
            for (m, &x) in self.max[r].iter_mut().zip(v) {
                if x > *m {
                    *m = x;
                }
            }
        }
    }

    /// Value `x` into group `g + x × step` (no vectorisation; rare layouts only).
    #[inline(always)]
    fn add_strided(&mut self, v: &[T], g: usize, step: usize) {
        let n = self.needs;
        for (k, &x) in v.iter().enumerate() {
            let g = g + k * step;
            if n.dev && self.count[g] == 0 {
                self.shift[g] = x.float();
            }
            self.count[g] += 1;
            if n.isum {
                self.isum[g] = self.isum[g].wrapping_add(x.int());
            }
            if n.isq {
                self.isq[g] += x.int() * x.int();
            }
            if n.fsum {
                self.fsum[g] += x.float();
            }
            if n.dev {
                let d = x.float() - self.shift[g];
                self.dsum[g] += d;
                self.dsq[g] += d * d;
            }
            if n.min && x < self.min[g] {
                self.min[g] = x;
            }
            if n.max && x > self.max[g] {
                self.max[g] = x;
            }
        }
    }

    /// The groups that have rows, ascending.
    pub fn touched(&self) -> Vec<usize> {
        self.count
            .iter()
            .enumerate()
            .filter_map(|(g, &c)| (c > 0).then_some(g))
            .collect()
    }

    /// Sum of group `g` as a float: exact integer sums where kept.
    fn float_sum(&self, g: usize) -> f64 {
        if T::SMALL_INT {
            self.isum[g] as f64
        } else {
            self.fsum[g]
        }
    }

    /// Mean and sum of squared deviations of group `g` (which has rows).
    fn mean_m2(&self, g: usize) -> (f64, f64) {
        let n = self.count[g];
        if T::SMALL_INT {
            let (s, q) = (i128::from(self.isum[g]), i128::from(self.isq[g]));
            let n = i128::from(n);
            // n·m2 = n·Σx² − (Σx)², exactly in integers.
            let nm2 = n * q - s * s;
            (s as f64 / n as f64, nm2 as f64 / n as f64)
        } else {
            let (c, s, q) = (self.shift[g], self.dsum[g], self.dsq[g]);
            let nf = n as f64;
            (c + s / nf, (q - s * s / nf).max(0.0))
        }
    }

    /// The state arrays of `stat` for `groups` (each with rows), typed as `fields` (DataFusion's state fields).
    pub fn state(&self, stat: &Stat, groups: &[usize]) -> DfResult<Vec<ArrayRef>> {
        let counts = || UInt64Array::from_iter_values(groups.iter().map(|&g| self.count[g]));
        let out: Vec<ArrayRef> = match stat {
            Stat::Count => vec![Arc::new(Int64Array::from_iter_values(
                groups.iter().map(|&g| self.count[g] as i64),
            ))],
            Stat::SumInt(DataType::UInt64) => vec![Arc::new(UInt64Array::from_iter_values(
                groups.iter().map(|&g| self.isum[g] as u64),
            ))],
            Stat::SumInt(DataType::Int64) => vec![Arc::new(Int64Array::from_iter_values(
                groups.iter().map(|&g| self.isum[g]),
            ))],
            Stat::SumInt(t) => {
                return Err(DataFusionError::Internal(format!(
                    "scan aggregate: integer sum state of type {t}"
                )));
            }
            Stat::SumFloat => vec![Arc::new(Float64Array::from_iter_values(
                groups.iter().map(|&g| self.float_sum(g)),
            ))],
            Stat::Avg => vec![
                Arc::new(counts()),
                Arc::new(Float64Array::from_iter_values(
                    groups.iter().map(|&g| self.float_sum(g)),
                )),
            ],
            Stat::Variance => {
                let (mean, m2): (Vec<f64>, Vec<f64>) =
                    groups.iter().map(|&g| self.mean_m2(g)).unzip();
                vec![
                    Arc::new(counts()),
                    Arc::new(Float64Array::from(mean)),
                    Arc::new(Float64Array::from(m2)),
                ]
            }
            Stat::Min(t) => vec![self.extreme(&self.min, groups, t)?],
            Stat::Max(t) => vec![self.extreme(&self.max, groups, t)?],
        };
        Ok(out)
    }

    /// Per-group minima or maxima as an array of `to` (casts are monotone: the extreme of the cast values).
    fn extreme(&self, of: &[T], groups: &[usize], to: &DataType) -> DfResult<ArrayRef> {
        let a: ArrayRef = Arc::new(PrimitiveArray::<T::Arrow>::from_iter_values(
            groups.iter().map(|&g| of[g]),
        ));
        if a.data_type() == to {
            Ok(a)
        } else {
            Ok(cast(&a, to)?)
        }
    }
}

/// Moments of one element type behind one interface (the table's value type is known only at run time).
pub trait Kernel: Send {
    /// Add a piece's value array over `runs`; `false` (nothing added) when the kernel does not apply to it: another
    /// type, or non-finite floats (DataFusion's NaN and infinity semantics then apply through its own path).
    fn add_piece(&mut self, values: &ArrayRef, runs: &[Run]) -> bool;
    /// Elements added since the last reset.
    fn rows(&self) -> u64;
    /// The element count after which the state must be merged and reset.
    fn flush_rows(&self) -> u64;
    fn touched(&self) -> Vec<usize>;
    fn state(&self, stat: &Stat, groups: &[usize]) -> DfResult<Vec<ArrayRef>>;
    fn reset(&mut self);
}

impl<T: Stored> Kernel for Moments<T> {
    fn add_piece(&mut self, values: &ArrayRef, runs: &[Run]) -> bool {
        let Some(a) = values.as_any().downcast_ref::<PrimitiveArray<T::Arrow>>() else {
            return false;
        };
        if a.null_count() > 0 {
            return false;
        }
        let v = a.values().as_ref();
        if !T::INT && !v.iter().all(|x| x.finite()) {
            return false;
        }
        let groups = self.count.len();
        let fits = runs.iter().all(|r| {
            r.at + r.len <= v.len() && (r.len == 0 || r.group + (r.len - 1) * r.step < groups)
        });
        if !fits {
            return false;
        }
        add_runs(self, v, runs);
        true
    }

    fn rows(&self) -> u64 {
        self.rows
    }

    fn flush_rows(&self) -> u64 {
        T::FLUSH_ROWS
    }

    fn touched(&self) -> Vec<usize> {
        Moments::touched(self)
    }

    fn state(&self, stat: &Stat, groups: &[usize]) -> DfResult<Vec<ArrayRef>> {
        Moments::state(self, stat, groups)
    }

    fn reset(&mut self) {
        Moments::reset(self)
    }
}

/// Every run of `v` into `m`: in a copy of the loops compiled for AVX2 where the processor has it (twice the lanes
/// of the baseline's SSE2 for the widening sums and the min/max), else in the baseline's.
fn add_runs<T: Stored>(m: &mut Moments<T>, v: &[T], runs: &[Run]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the processor was just seen to support AVX2, the one feature the function is compiled for.
        unsafe { add_runs_avx2(m, v, runs) };
        return;
    }
    add_runs_inline(m, v, runs);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn add_runs_avx2<T: Stored>(m: &mut Moments<T>, v: &[T], runs: &[Run]) {
    add_runs_inline(m, v, runs);
}

#[inline(always)]
fn add_runs_inline<T: Stored>(m: &mut Moments<T>, v: &[T], runs: &[Run]) {
    for r in runs {
        m.add(&v[r.at..r.at + r.len], *r);
    }
}

/// A kernel for values of `ty` keeping what `stats` need, or `None` for a type it does not read.
pub fn kernel(ty: &DataType, stats: &[Stat], groups: usize) -> DfResult<Option<Box<dyn Kernel>>> {
    fn make<T: Stored>(stats: &[Stat], groups: usize) -> DfResult<Option<Box<dyn Kernel>>> {
        Ok(Some(Box::new(Moments::<T>::new(
            groups,
            Needs::of::<T>(stats),
        )?)))
    }
    match ty {
        DataType::Int8 => make::<i8>(stats, groups),
        DataType::UInt8 => make::<u8>(stats, groups),
        DataType::Int16 => make::<i16>(stats, groups),
        DataType::UInt16 => make::<u16>(stats, groups),
        DataType::Int32 => make::<i32>(stats, groups),
        DataType::UInt32 => make::<u32>(stats, groups),
        DataType::Int64 => make::<i64>(stats, groups),
        DataType::UInt64 => make::<u64>(stats, groups),
        DataType::Float32 => make::<f32>(stats, groups),
        DataType::Float64 => make::<f64>(stats, groups),
        _ => Ok(None),
    }
}

/// A kernel for the aggregates of a grouped node, folded into their DataFusion `GroupsAccumulator`s: before its
/// integer sums could overflow and at the end (so emitted states and final values stay DataFusion's).
pub struct Folded {
    kernel: Box<dyn Kernel>,
    /// Per aggregate, the state the moments become.
    stats: Vec<Stat>,
    groups: usize,
}

impl Folded {
    /// Moments of values of `ty` for `stats` over `groups` groups; `None` for a type the kernel does not read.
    pub fn new(ty: &DataType, stats: &[Stat], groups: usize) -> DfResult<Option<Folded>> {
        Ok(kernel(ty, stats, groups.max(1))?.map(|kernel| Folded {
            kernel,
            stats: stats.to_vec(),
            groups,
        }))
    }

    /// Add `values` over `runs` (`n` elements in all); `false`, with nothing added, when the kernel does not read
    /// them (the caller then hands the rows to `accumulators` itself).
    pub fn add(
        &mut self,
        values: &ArrayRef,
        runs: &[Run],
        n: usize,
        accumulators: &mut [Box<dyn GroupsAccumulator>],
    ) -> DfResult<bool> {
        if self.kernel.rows().saturating_add(n as u64) > self.kernel.flush_rows() {
            self.fold(accumulators)?;
        }
        Ok(self.kernel.add_piece(values, runs))
    }

    /// The moments merged into `accumulators` (one per aggregate, in order), then restarted.
    pub fn fold(&mut self, accumulators: &mut [Box<dyn GroupsAccumulator>]) -> DfResult<()> {
        let k = &mut self.kernel;
        if k.rows() == 0 {
            return Ok(());
        }
        let touched = k.touched();
        if !touched.is_empty() {
            for (acc, stat) in accumulators.iter_mut().zip(&self.stats) {
                acc.merge_batch(&k.state(stat, &touched)?, &touched, self.groups)?;
            }
        }
        k.reset();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// xorshift64*: reproducible values without a dependency.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
    }

    /// Reference moments of one group from its values: count, f64 sum, mean, m2 (two-pass in f64), min, max.
    fn reference<T: Stored>(v: &[T]) -> (u64, f64, f64, f64, T, T) {
        let n = v.len() as f64;
        let sum: f64 = v.iter().map(|x| x.float()).sum();
        let mean = sum / n;
        let m2: f64 = v.iter().map(|x| (x.float() - mean).powi(2)).sum();
        let min = v
            .iter()
            .copied()
            .fold(T::HIGHEST, |a, x| if x < a { x } else { a });
        let max = v
            .iter()
            .copied()
            .fold(T::LOWEST, |a, x| if x > a { x } else { a });
        (v.len() as u64, sum, mean, m2, min, max)
    }

    fn close(a: f64, b: f64, what: &str) {
        let scale = a.abs().max(b.abs()).max(1e-300);
        assert!(
            (a - b).abs() / scale < 1e-12 || (a - b).abs() < 1e-9,
            "{what}: {a} vs {b}"
        );
    }

    /// Every run shape over random values of `T` gives each group's reference moments and the DataFusion state
    /// layout; `make` draws a value.
    fn check<T: Stored + std::fmt::Debug>(make: impl Fn(&mut Rng) -> T) {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let groups = 40;
        let values: Vec<T> = (0..600).map(|_| make(&mut rng)).collect();
        // Same-group runs, consecutive runs, strided runs; group 39 stays empty.
        let runs = [
            Run {
                at: 0,
                len: 100,
                group: 3,
                step: 0,
            },
            Run {
                at: 100,
                len: 30,
                group: 0,
                step: 1,
            },
            Run {
                at: 130,
                len: 30,
                group: 0,
                step: 1,
            },
            Run {
                at: 160,
                len: 13,
                group: 1,
                step: 3,
            },
            Run {
                at: 173,
                len: 427,
                group: 38,
                step: 0,
            },
        ];
        let mut per_group: Vec<Vec<T>> = vec![Vec::new(); groups];
        for r in &runs {
            for x in 0..r.len {
                per_group[r.group + x * r.step].push(values[r.at + x]);
            }
        }
        let stats = [
            Stat::Count,
            Stat::Avg,
            Stat::Variance,
            Stat::SumFloat,
            Stat::Min(<T::Arrow as ArrowPrimitiveType>::DATA_TYPE),
            Stat::Max(DataType::Float64),
        ];
        let mut stats = stats.to_vec();
        if T::INT {
            stats.push(Stat::SumInt(DataType::Int64));
        }
        let ty = <T::Arrow as ArrowPrimitiveType>::DATA_TYPE;
        let mut k = kernel(&ty, &stats, groups).unwrap().unwrap();
        let array: ArrayRef =
            Arc::new(PrimitiveArray::<T::Arrow>::from_iter_values(values.clone()));
        assert!(k.add_piece(&array, &runs));
        assert_eq!(k.rows(), 600);
        // The baseline loops (the ones a processor without AVX2 runs) give the very same state: no float sum is
        // reordered by either copy.
        let mut baseline = Moments::<T>::new(groups, Needs::of::<T>(&stats)).unwrap();
        add_runs_inline(&mut baseline, &values, &runs);
        for s in &stats {
            let t = k.touched();
            assert_eq!(
                baseline.state(s, &t).unwrap(),
                k.state(s, &t).unwrap(),
                "{s:?}"
            );
        }
        let touched = k.touched();
        let want: Vec<usize> = (0..groups).filter(|&g| !per_group[g].is_empty()).collect();
        assert_eq!(touched, want);
        assert!(!touched.contains(&39));
        let state: Vec<Vec<ArrayRef>> = stats
            .iter()
            .map(|s| k.state(s, &touched).unwrap())
            .collect();
        for (row, &g) in touched.iter().enumerate() {
            let (n, sum, mean, m2, min, max) = reference(&per_group[g]);
            let f = |a: &ArrayRef| {
                a.as_any()
                    .downcast_ref::<Float64Array>()
                    .unwrap()
                    .value(row)
            };
            let u = |a: &ArrayRef| a.as_any().downcast_ref::<UInt64Array>().unwrap().value(row);
            let i = |a: &ArrayRef| a.as_any().downcast_ref::<Int64Array>().unwrap().value(row);
            assert_eq!(i(&state[0][0]), n as i64);
            assert_eq!(u(&state[1][0]), n);
            close(f(&state[1][1]), sum, "avg sum");
            assert_eq!(u(&state[2][0]), n);
            close(f(&state[2][1]), mean, "mean");
            close(f(&state[2][2]), m2, "m2");
            close(f(&state[3][0]), sum, "sum");
            let mins = state[4][0]
                .as_any()
                .downcast_ref::<PrimitiveArray<T::Arrow>>()
                .unwrap();
            assert_eq!(mins.value(row), min);
            assert_eq!(f(&state[5][0]), max.float());
            if T::INT {
                let exact: i128 = per_group[g].iter().map(|x| i128::from(x.int())).sum();
                assert_eq!(i(&state[6][0]), exact as i64);
            }
        }
        k.reset();
        assert_eq!(k.rows(), 0);
        assert!(k.touched().is_empty());
    }

    #[test]
    fn moments_of_every_stored_type() {
        check(|r| r.next() as u8);
        check(|r| r.next() as i8);
        check(|r| r.next() as u16);
        check(|r| r.next() as i16);
        // Offsets far from zero: the variance must not lose digits to cancellation.
        check(|r| 1_000_000 + (r.next() % 1000) as u32);
        check(|r| -2_000_000_000 + (r.next() % 100_000) as i32);
        check(|r| (r.next() >> 20) as i64 - (1 << 43));
        check(|r| r.next() >> 12);
        check(|r| 1e4 + (r.next() % 1_000_000) as f32 / 997.0);
        check(|r| -3e9 + (r.next() % 1_000_000_007) as f64 / 13.0);
    }

    /// 16-bit extremes: exact integer sums of squares over many values, and the variance of a constant is 0.
    #[test]
    fn exact_small_integer_variance() {
        let v: Vec<i16> = (0..10_000)
            .map(|x| if x % 2 == 0 { i16::MIN } else { i16::MAX })
            .collect();
        let c: Vec<u16> = vec![u16::MAX; 5000];
        let mut m = Moments::<i16>::new(1, Needs::of::<i16>(&[Stat::Variance])).unwrap();
        m.add(
            &v,
            Run {
                at: 0,
                len: v.len(),
                group: 0,
                step: 0,
            },
        );
        let (mean, m2) = m.mean_m2(0);
        assert_eq!(mean, -0.5);
        assert_eq!(m2, 10_000.0 * 32767.5f64.powi(2));
        let mut m = Moments::<u16>::new(2, Needs::of::<u16>(&[Stat::Variance])).unwrap();
        m.add(
            &c,
            Run {
                at: 0,
                len: c.len(),
                group: 1,
                step: 0,
            },
        );
        assert_eq!(m.mean_m2(1), (65535.0, 0.0));
    }

    /// Pieces the kernel must leave to DataFusion: NaN or infinite floats, another type, runs beyond the groups.
    #[test]
    fn refuses_what_it_does_not_compute() {
        let mut k = kernel(&DataType::Float64, &[Stat::Max(DataType::Float64)], 4)
            .unwrap()
            .unwrap();
        let run = [Run {
            at: 0,
            len: 3,
            group: 0,
            step: 0,
        }];
        let nan: ArrayRef = Arc::new(Float64Array::from(vec![1.0, f64::NAN, 2.0]));
        let inf: ArrayRef = Arc::new(Float64Array::from(vec![1.0, f64::INFINITY, 2.0]));
        let ints: ArrayRef = Arc::new(Int64Array::from(vec![1, 2, 3]));
        let ok: ArrayRef = Arc::new(Float64Array::from(vec![1.0, 5.0, 2.0]));
        assert!(!k.add_piece(&nan, &run));
        assert!(!k.add_piece(&inf, &run));
        assert!(!k.add_piece(&ints, &run));
        assert!(!k.add_piece(
            &ok,
            &[Run {
                at: 0,
                len: 3,
                group: 2,
                step: 1
            }]
        ));
        assert!(!k.add_piece(
            &ok,
            &[Run {
                at: 1,
                len: 3,
                group: 0,
                step: 0
            }]
        ));
        assert_eq!(k.rows(), 0);
        assert!(k.add_piece(
            &ok,
            &[Run {
                at: 0,
                len: 3,
                group: 1,
                step: 1
            }]
        ));
        let s = k
            .state(&Stat::Max(DataType::Float64), &k.touched())
            .unwrap();
        assert_eq!(s[0].len(), 3);
        assert!(
            kernel(&DataType::Utf8, &[Stat::Count], 1)
                .unwrap()
                .is_none()
        );
    }
}
