//! Millimetre columns: `x, y, z` (Float64) are each voxel centre through its file's affine (nibabel's `img.affine`),
//! computed from the batch's `i, j, k` only when projected. Filters on them become per-file index boxes through
//! the inverse affine:
//!
//! - comparisons, `BETWEEN` and `AND`s of them on one of `x, y, z`: when every file's affine is axis-aligned (a
//!   permutation of the voxel axes with scales) the box holds exactly the passing voxels — the bound is checked
//!   against the column's own arithmetic — and the filter is `Exact`;
//! - spheres `(x - a)*(x - a) + (y - b)*(y - b) + (z - c)*(z - c) <= r*r` (also `power(x - a, 2)`, `<`, any subset
//!   of the three terms), other affines, and other filters on `x, y, z` alone: a conservative box, `Inexact`.
//!
//! The columns exist by default when every file has an affine (its header's, or the `affine` option's for npy/raw
//! files); `world 'false'` removes them, `world 'true'` requires them. With them come two per-file columns: `world_space` (the NIfTI xform code's name of the space the affine
//! maps into: `unknown`, `scanner`, `aligned`, `talairach`, `mni`, `template`; null for npy/raw) and `tr` (the
//! repetition time in seconds: the fourth zoom in the header's time unit; null for images without a time axis).

use std::ops::Range;
use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, Float64Array, Int64Array};
use datafusion::arrow::datatypes::{DataType, Field};
use datafusion::logical_expr::{Between, BinaryExpr, Expr, Operator};
use datafusion::scalar::ScalarValue;

use crate::error::{Result, VoxelError};
use crate::formats::affine::{Affine, IDENTITY, inverse3, row_apply};
use crate::formats::{Format, Order};

use super::files::VoxelFile;
use super::index_set::IndexSet;
use super::layout::coordinates;

/// The millimetre columns, in affine row order.
pub const WORLD_COLUMNS: [&str; 3] = ["x", "y", "z"];
/// The nearest voxel of another image's grid (option `grid`), in affine row order.
pub const GRID_COLUMNS: [&str; 3] = ["grid_i", "grid_j", "grid_k"];
/// The per-file space name column.
pub const SPACE_COLUMN: &str = "world_space";
/// The per-file repetition time column (seconds).
pub const TR_COLUMN: &str = "tr";

/// Whether `name` is one of the columns this module adds (`x, y, z`, `grid_i, grid_j, grid_k`, `world_space`, `tr`):
/// never a voxel value, and not part of an export's default columns.
pub fn is_world_column(name: &str) -> bool {
    WORLD_COLUMNS.contains(&name)
        || GRID_COLUMNS.contains(&name)
        || name == SPACE_COLUMN
        || name == TR_COLUMN
}

/// `x, y, z`: Float64, never null.
pub fn world_fields() -> Vec<Field> {
    WORLD_COLUMNS
        .iter()
        .map(|n| Field::new(*n, DataType::Float64, false))
        .collect()
}

/// `grid_i, grid_j, grid_k`: Int64, null outside the other grid.
pub fn grid_fields() -> Vec<Field> {
    GRID_COLUMNS
        .iter()
        .map(|n| Field::new(*n, DataType::Int64, true))
        .collect()
}

/// From one file's voxels to the nearest voxel of another image's grid (table option `grid`): `round(G⁻¹ · A ·
/// (i, j, k, 1))`, rounding halves up (scipy's order-0 `affine_transform`, which nilearn's nearest resampling
/// uses), null outside `0..shape` on any axis.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct GridMap {
    /// Voxel of this file → continuous voxel coordinates of the grid (three rows of a 4×4).
    pub matrix: [[f64; 4]; 3],
    pub shape: [u64; 3],
}

impl GridMap {
    /// `None` when the grid's affine is singular.
    pub fn new(affine: &Affine, grid_affine: &Affine, grid_shape: &[usize]) -> Option<GridMap> {
        let inv = inverse3(grid_affine)?;
        let mut matrix = [[0.0; 4]; 3];
        for (m, row) in matrix.iter_mut().zip(inv) {
            for (c, cell) in m.iter_mut().enumerate() {
                let shift = if c == 3 { 1.0 } else { 0.0 };
                *cell = (0..3)
                    .map(|k| row[k] * (affine[k][c] - shift * grid_affine[k][3]))
                    .sum();
            }
        }
        let shape = std::array::from_fn(|a| grid_shape.get(a).map_or(1, |&n| n as u64));
        Some(GridMap { matrix, shape })
    }

    /// The grid voxel nearest to voxel `ijk`, or `None` outside the grid.
    pub fn nearest(&self, ijk: [f64; 3]) -> Option<[i64; 3]> {
        let mut out = [0i64; 3];
        for ((o, row), n) in out.iter_mut().zip(&self.matrix).zip(self.shape) {
            let g = (row_apply(row, ijk) + 0.5).floor();
            // NaN is outside too.
            if !(0.0..n as f64).contains(&g) {
                return None;
            }
            *o = g as i64;
        }
        Some(out)
    }

    fn as_affine(&self) -> Affine {
        let mut a = IDENTITY;
        a[..3].copy_from_slice(&self.matrix);
        a
    }
}

/// `world_space` and `tr`: per file, nullable.
pub fn per_file_fields() -> Vec<Field> {
    vec![
        Field::new(SPACE_COLUMN, DataType::Utf8, true),
        Field::new(TR_COLUMN, DataType::Float64, true),
    ]
}

/// One file's `world_space` and `tr`.
pub fn per_file_values(f: &VoxelFile) -> Vec<ScalarValue> {
    vec![
        ScalarValue::Utf8(f.world.space().map(str::to_string)),
        ScalarValue::Float64(f.world.repetition_time(&f.zooms, f.ndim())),
    ]
}

/// Whether the file's format carries an affine of its own.
pub fn has_own_affine(f: &VoxelFile) -> bool {
    f.world.space_code.is_some() && !matches!(f.format, Format::Npy | Format::Raw)
}

/// Parse the `affine` table option: 12 or 16 numbers, row-major (the first three rows of the 4×4 matrix, or all
/// four with `0 0 0 1` last), separated by commas, semicolons, spaces or brackets.
pub fn parse_affine(text: &str) -> Result<Affine> {
    let bad = |what: String| VoxelError::Invalid(format!("option 'affine' '{text}': {what}"));
    let numbers = text
        .split(|c: char| c == ',' || c == ';' || c == '[' || c == ']' || c.is_whitespace())
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<f64>()
                .ok()
                .filter(|v| v.is_finite())
                .ok_or_else(|| bad(format!("'{s}' is not a finite number")))
        })
        .collect::<Result<Vec<f64>>>()?;
    if numbers.len() != 12 && numbers.len() != 16 {
        return Err(bad(format!(
            "{} numbers; give 12 (three rows) or 16 (four rows), row-major",
            numbers.len()
        )));
    }
    if numbers.len() == 16 && numbers[12..] != [0.0, 0.0, 0.0, 1.0] {
        return Err(bad("the fourth row must be 0 0 0 1".into()));
    }
    let mut a = IDENTITY;
    for (k, v) in numbers.iter().take(12).enumerate() {
        a[k / 4][k % 4] = *v;
    }
    if inverse3(&a).is_none() {
        return Err(bad("the matrix is singular".into()));
    }
    Ok(a)
}

/// The `i, j, k` coordinates of rows `from..from + len` of `piece`; `None` for an axis the piece lacks.
fn first_three_coordinates(
    piece: &[Range<u64>],
    order: Order,
    from: u64,
    len: usize,
) -> Vec<Option<Vec<i64>>> {
    (0..3)
        .map(|a| (a < piece.len()).then(|| coordinates(piece, order, a, from, len)))
        .collect()
}

/// Coordinate `a` of row `n` as f64: 0 for a missing axis.
fn coordinate_at(coords: &[Option<Vec<i64>>], a: usize, n: usize) -> f64 {
    coords[a]
        .as_ref()
        .and_then(|c| c.get(n))
        .map_or(0.0, |&v| v as f64)
}

/// Column `row` (0 = x) for rows `from..from + len` of `piece`: `affine[row] · (i, j, k, 1)`, missing axes 0.
pub fn world_array(
    affine: &Affine,
    row: usize,
    piece: &[Range<u64>],
    order: Order,
    from: u64,
    len: usize,
) -> ArrayRef {
    let coords = first_three_coordinates(piece, order, from, len);
    let at = |a: usize, n: usize| coordinate_at(&coords, a, n);
    let r = &affine[row];
    Arc::new(Float64Array::from_iter_values(
        (0..len).map(|n| row_apply(r, [at(0, n), at(1, n), at(2, n)])),
    ))
}

/// Derived column `row` of a file: 0..3 are `x, y, z`, 3..6 `grid_i, grid_j, grid_k`.
pub fn derived_array(
    f: &VoxelFile,
    row: usize,
    piece: &[Range<u64>],
    from: u64,
    len: usize,
) -> Result<ArrayRef> {
    if row < 3 {
        return Ok(world_array(
            &f.affine,
            row,
            piece,
            f.layout.order,
            from,
            len,
        ));
    }
    let grid = f.grid.as_ref().ok_or_else(|| {
        VoxelError::Invalid(format!("{}: no grid to map to (option 'grid')", f.name))
    })?;
    let axis = row - 3;
    let coords = first_three_coordinates(piece, f.layout.order, from, len);
    let at = |a: usize, n: usize| coordinate_at(&coords, a, n);
    Ok(Arc::new(Int64Array::from_iter((0..len).map(|n| {
        grid.nearest([at(0, n), at(1, n), at(2, n)])
            .and_then(|g| g.get(axis).copied())
    }))))
}

/// Bounds on one millimetre column.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Interval {
    pub lo: f64,
    pub lo_open: bool,
    pub hi: f64,
    pub hi_open: bool,
}

impl Interval {
    pub const FULL: Interval = Interval {
        lo: f64::NEG_INFINITY,
        lo_open: false,
        hi: f64::INFINITY,
        hi_open: false,
    };

    fn intersect(self, o: Interval) -> Interval {
        let (lo, lo_open) = if o.lo > self.lo || (o.lo == self.lo && o.lo_open) {
            (o.lo, o.lo_open)
        } else {
            (self.lo, self.lo_open)
        };
        let (hi, hi_open) = if o.hi < self.hi || (o.hi == self.hi && o.hi_open) {
            (o.hi, o.hi_open)
        } else {
            (self.hi, self.hi_open)
        };
        Interval {
            lo,
            lo_open,
            hi,
            hi_open,
        }
    }

    fn contains(&self, v: f64) -> bool {
        let above = if self.lo_open {
            v > self.lo
        } else {
            v >= self.lo
        };
        let below = if self.hi_open {
            v < self.hi
        } else {
            v <= self.hi
        };
        above && below
    }

    fn is_empty(&self) -> bool {
        self.lo > self.hi || (self.lo == self.hi && (self.lo_open || self.hi_open))
    }
}

/// What one filter on `x, y, z` says: a millimetre box, and whether the box is the filter exactly.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WorldFilter {
    pub bounds: [Interval; 3],
    /// Bounds on the continuous grid coordinates behind `grid_i, grid_j, grid_k` (option `grid`).
    pub grid: [Interval; 3],
    /// A filter on a grid column: rows outside the grid (nulls) cannot pass.
    pub grid_used: bool,
    /// Comparisons/BETWEEN (and ANDs of them) only: passing rows are exactly those inside the box.
    pub exact: bool,
}

impl WorldFilter {
    const NONE: WorldFilter = WorldFilter {
        bounds: [Interval::FULL; 3],
        grid: [Interval::FULL; 3],
        grid_used: false,
        exact: false,
    };

    fn on(axis: usize, iv: Interval, exact: bool) -> WorldFilter {
        let mut bounds = [Interval::FULL; 3];
        bounds[axis] = iv;
        WorldFilter {
            bounds,
            exact,
            ..WorldFilter::NONE
        }
    }

    fn on_grid(axis: usize, iv: Interval) -> WorldFilter {
        let mut grid = [Interval::FULL; 3];
        grid[axis] = iv;
        WorldFilter {
            grid,
            grid_used: true,
            ..WorldFilter::NONE
        }
    }

    fn and(self, o: WorldFilter) -> WorldFilter {
        WorldFilter {
            bounds: std::array::from_fn(|a| self.bounds[a].intersect(o.bounds[a])),
            grid: std::array::from_fn(|a| self.grid[a].intersect(o.grid[a])),
            grid_used: self.grid_used || o.grid_used,
            exact: self.exact && o.exact,
        }
    }
}

/// Analyse one filter that mentions only `x, y, z`.
pub fn analyse(expr: &Expr) -> WorldFilter {
    match expr {
        Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
            if *op == Operator::And {
                return analyse(left).and(analyse(right));
            }
            if let Some(f) = comparison(left, *op, right) {
                return f;
            }
            if let Some(f) = grid_comparison(left, *op, right) {
                return f;
            }
            sphere(left, *op, right).unwrap_or(WorldFilter::NONE)
        }
        Expr::Between(Between {
            expr,
            negated: false,
            low,
            high,
        }) if grid_axis(expr).is_some() => match (grid_axis(expr), number(low), number(high)) {
            (Some(a), Some(lo), Some(hi)) => {
                WorldFilter::on_grid(a, rounded(lo.ceil(), hi.floor()))
            }
            _ => WorldFilter::NONE,
        },
        Expr::IsNotNull(inner) => match grid_axis(inner) {
            Some(a) => WorldFilter::on_grid(a, Interval::FULL),
            None => WorldFilter::NONE,
        },
        Expr::Between(Between {
            expr,
            negated: false,
            low,
            high,
        }) => match (world_axis(expr), number(low), number(high)) {
            (Some(a), Some(lo), Some(hi)) => WorldFilter::on(
                a,
                Interval {
                    lo,
                    lo_open: false,
                    hi,
                    hi_open: false,
                },
                true,
            ),
            _ => WorldFilter::NONE,
        },
        _ => WorldFilter::NONE,
    }
}

fn grid_axis(e: &Expr) -> Option<usize> {
    match e {
        Expr::Column(c) => GRID_COLUMNS.iter().position(|n| *n == c.name),
        _ => None,
    }
}

/// The continuous grid coordinates whose nearest index lies in `lo..=hi` (closed: a conservative box).
fn rounded(lo: f64, hi: f64) -> Interval {
    Interval {
        lo: lo - 0.5,
        lo_open: false,
        hi: hi + 0.5,
        hi_open: false,
    }
}

/// `grid_col op number` or mirrored, as bounds on the continuous grid coordinate.
fn grid_comparison(left: &Expr, op: Operator, right: &Expr) -> Option<WorldFilter> {
    let (axis, v, op) = match (grid_axis(left), grid_axis(right)) {
        (Some(a), None) => (a, number(right)?, op),
        (None, Some(a)) => (a, number(left)?, op.swap()?),
        _ => return None,
    };
    let inf = f64::INFINITY;
    let iv = match op {
        Operator::Lt => rounded(-inf, v.ceil() - 1.0),
        Operator::LtEq => rounded(-inf, v.floor()),
        Operator::Gt => rounded(v.floor() + 1.0, inf),
        Operator::GtEq => rounded(v.ceil(), inf),
        Operator::Eq => rounded(v.ceil(), v.floor()),
        _ => return None,
    };
    Some(WorldFilter::on_grid(axis, iv))
}

fn world_axis(e: &Expr) -> Option<usize> {
    match e {
        Expr::Column(c) => WORLD_COLUMNS.iter().position(|n| *n == c.name),
        _ => None,
    }
}

/// A finite numeric literal (NaN and infinities are left to DataFusion).
fn number(e: &Expr) -> Option<f64> {
    let v = match e {
        Expr::Literal(v, _) => v,
        Expr::Negative(inner) => return number(inner).map(|v| -v),
        _ => return None,
    };
    let x = match v {
        ScalarValue::Int8(Some(x)) => f64::from(*x),
        ScalarValue::Int16(Some(x)) => f64::from(*x),
        ScalarValue::Int32(Some(x)) => f64::from(*x),
        ScalarValue::Int64(Some(x)) => *x as f64,
        ScalarValue::UInt8(Some(x)) => f64::from(*x),
        ScalarValue::UInt16(Some(x)) => f64::from(*x),
        ScalarValue::UInt32(Some(x)) => f64::from(*x),
        ScalarValue::UInt64(Some(x)) => *x as f64,
        ScalarValue::Float32(Some(x)) => f64::from(*x),
        ScalarValue::Float64(Some(x)) => *x,
        _ => return None,
    };
    x.is_finite().then_some(x)
}

/// `col op number` or `number op col`.
fn comparison(left: &Expr, op: Operator, right: &Expr) -> Option<WorldFilter> {
    let (axis, v, op) = match (world_axis(left), world_axis(right)) {
        (Some(a), None) => (a, number(right)?, op),
        (None, Some(a)) => (a, number(left)?, op.swap()?),
        _ => return None,
    };
    let below = |open| Interval {
        hi: v,
        hi_open: open,
        ..Interval::FULL
    };
    let above = |open| Interval {
        lo: v,
        lo_open: open,
        ..Interval::FULL
    };
    let iv = match op {
        Operator::Lt => below(true),
        Operator::LtEq => below(false),
        Operator::Gt => above(true),
        Operator::GtEq => above(false),
        Operator::Eq => below(false).intersect(above(false)),
        _ => return None,
    };
    Some(WorldFilter::on(axis, iv, true))
}

/// `sum of squares <= r²` (or `<`, or mirrored): each term's column lies within `centre ± r`.
fn sphere(left: &Expr, op: Operator, right: &Expr) -> Option<WorldFilter> {
    let (sum, r2) = match op {
        Operator::Lt | Operator::LtEq => (left, number(right)?),
        Operator::Gt | Operator::GtEq => (right, number(left)?),
        _ => return None,
    };
    if r2 < 0.0 {
        return None;
    }
    let mut terms = Vec::new();
    squares(sum, &mut terms)?;
    // Slack for the rounding of the squares and their sum: a voxel the float sphere test passes is inside.
    let r = r2.sqrt() * (1.0 + 1e-9) + 1e-9;
    let mut f = WorldFilter {
        exact: false,
        ..WorldFilter::NONE
    };
    for (axis, centre) in terms {
        let iv = Interval {
            lo: centre - r - centre.abs() * 1e-12,
            lo_open: false,
            hi: centre + r + centre.abs() * 1e-12,
            hi_open: false,
        };
        f.bounds[axis] = f.bounds[axis].intersect(iv);
    }
    Some(f)
}

/// The (axis, centre) of each `(col - c)²` term of a sum.
fn squares(e: &Expr, out: &mut Vec<(usize, f64)>) -> Option<()> {
    match e {
        Expr::BinaryExpr(BinaryExpr {
            left,
            op: Operator::Plus,
            right,
        }) => {
            squares(left, out)?;
            squares(right, out)
        }
        Expr::BinaryExpr(BinaryExpr {
            left,
            op: Operator::Multiply,
            right,
        }) if left == right => {
            out.push(offset(left)?);
            Some(())
        }
        Expr::ScalarFunction(f)
            if matches!(f.name(), "power" | "pow")
                && f.args.len() == 2
                && number(&f.args[1]) == Some(2.0) =>
        {
            out.push(offset(&f.args[0])?);
            Some(())
        }
        _ => None,
    }
}

/// `col`, `col - c`, `c - col` or `col + c` as (axis, centre).
fn offset(e: &Expr) -> Option<(usize, f64)> {
    if let Some(a) = world_axis(e) {
        return Some((a, 0.0));
    }
    let Expr::BinaryExpr(BinaryExpr { left, op, right }) = e else {
        return None;
    };
    match (op, world_axis(left), world_axis(right)) {
        (Operator::Minus, Some(a), None) => Some((a, number(right)?)),
        (Operator::Minus, None, Some(a)) => Some((a, number(left)?)),
        (Operator::Plus, Some(a), None) => Some((a, -number(right)?)),
        (Operator::Plus, None, Some(a)) => Some((a, -number(left)?)),
        _ => None,
    }
}

/// For an axis-aligned affine: the voxel axis each of x, y, z moves with.
pub fn axis_permutation(a: &Affine) -> Option<[usize; 3]> {
    if a.iter().take(3).flatten().any(|v| !v.is_finite()) {
        return None;
    }
    let mut perm = [0usize; 3];
    for (r, slot) in perm.iter_mut().enumerate() {
        let mut nonzero = (0..3).filter(|&c| a[r][c] != 0.0);
        *slot = nonzero.next()?;
        if nonzero.next().is_some() {
            return None;
        }
    }
    let distinct = perm[0] != perm[1] && perm[1] != perm[2] && perm[0] != perm[2];
    distinct.then_some(perm)
}

/// The index sets (one per axis of `f`) that hold every voxel passing all `filters`; `None` when none can pass.
/// Exact for an axis-aligned affine and exact filters.
pub fn file_sets(filters: &[WorldFilter], f: &VoxelFile) -> Option<Vec<IndexSet>> {
    let mut full: Vec<IndexSet> = f
        .layout
        .shape
        .iter()
        .map(|&n| IndexSet::full(n as u64))
        .collect();
    let bounds: [Interval; 3] = std::array::from_fn(|a| {
        filters
            .iter()
            .fold(Interval::FULL, |acc, w| acc.intersect(w.bounds[a]))
    });
    if bounds.iter().any(Interval::is_empty) {
        return None;
    }
    if bounds.iter().any(|b| *b != Interval::FULL) {
        let ranges = match axis_permutation(&f.affine) {
            Some(perm) => aligned_ranges(&f.affine, perm, &bounds, &f.layout.shape)?,
            None => oblique_ranges(&f.affine, &bounds, &f.layout.shape)?,
        };
        for (set, r) in full.iter_mut().zip(ranges) {
            *set = set.intersect(&IndexSet::range(r));
        }
    }
    if let (Some(grid), true) = (&f.grid, filters.iter().any(|w| w.grid_used)) {
        // Rows outside the grid are null there and pass no filter on it.
        let bounds: [Interval; 3] = std::array::from_fn(|a| {
            filters
                .iter()
                .fold(rounded(0.0, grid.shape[a] as f64 - 1.0), |acc, w| {
                    acc.intersect(w.grid[a])
                })
        });
        if bounds.iter().any(Interval::is_empty) {
            return None;
        }
        let ranges = oblique_ranges(&grid.as_affine(), &bounds, &f.layout.shape)?;
        for (set, r) in full.iter_mut().zip(ranges) {
            *set = set.intersect(&IndexSet::range(r));
        }
    }
    Some(full)
}

/// The voxel box of a file (shape `shape`) holding every voxel whose nearest grid voxel lies in `sets` (per grid
/// axis; `None`: any index). Rows outside the grid are null there and pass no comparison, so the grid's extent
/// bounds each axis too. `None` when no voxel can pass. Used for the dynamic filters of a join on the grid columns.
pub fn grid_ranges(
    grid: &GridMap,
    sets: &[Option<IndexSet>],
    shape: &[usize],
) -> Option<Vec<Range<u64>>> {
    let mut bounds = [Interval::FULL; 3];
    for (a, b) in bounds.iter_mut().enumerate() {
        let last = grid.shape[a] as f64 - 1.0;
        *b = match sets.get(a).and_then(Option::as_ref) {
            Some(set) => {
                let (lo, hi) = (set.min()?, set.max()?);
                rounded((lo as f64).max(0.0), (hi as f64).min(last))
            }
            None => rounded(0.0, last),
        };
        if b.is_empty() {
            return None;
        }
    }
    oblique_ranges(&grid.as_affine(), &bounds, shape)
}

/// Axis-aligned: on voxel axis `perm[r]` the passing indices are one run, found by binary search on the column's
/// own arithmetic (monotone in the index).
fn aligned_ranges(
    a: &Affine,
    perm: [usize; 3],
    bounds: &[Interval; 3],
    shape: &[usize],
) -> Option<Vec<Range<u64>>> {
    let mut out: Vec<Range<u64>> = shape.iter().map(|&n| 0..n as u64).collect();
    for (r, &axis) in perm.iter().enumerate() {
        let value = |i: u64| {
            let mut ijk = [0.0; 3];
            ijk[axis] = i as f64;
            row_apply(&a[r], ijk)
        };
        let iv = bounds[r];
        let Some(n) = shape.get(axis).map(|&n| n as u64) else {
            // The image has no such axis: every voxel sits at index 0 on it.
            iv.contains(value(0)).then_some(())?;
            continue;
        };
        let increasing = a[r][axis] > 0.0;
        // Passing indices are contiguous: [first passing of the lower bound, last passing of the upper bound].
        let lower_ok = |i: u64| {
            let v = value(i);
            if iv.lo_open { v > iv.lo } else { v >= iv.lo }
        };
        let upper_ok = |i: u64| {
            let v = value(i);
            if iv.hi_open { v < iv.hi } else { v <= iv.hi }
        };
        let range = if increasing {
            partition_point(n, |i| !lower_ok(i))..partition_point(n, upper_ok)
        } else {
            partition_point(n, |i| !upper_ok(i))..partition_point(n, lower_ok)
        };
        if range.start >= range.end {
            return None;
        }
        out[axis] = range;
    }
    Some(out)
}

/// The first index in `0..n` where `pred` turns false (`pred` true then false).
fn partition_point(n: u64, pred: impl Fn(u64) -> bool) -> u64 {
    let (mut lo, mut hi) = (0u64, n);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if pred(mid) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    lo
}

/// Corner `c` (0..8) of the box `lo..hi`: bit `d` of `c` picks the high side on axis `d`.
fn corner(lo: [f64; 3], hi: [f64; 3], c: usize) -> [f64; 3] {
    std::array::from_fn(|d| if (c >> d) & 1 == 0 { lo[d] } else { hi[d] })
}

/// The bounding box of the box `lo..hi`'s corners mapped by `f`.
fn mapped_box(
    lo: [f64; 3],
    hi: [f64; 3],
    f: impl Fn([f64; 3]) -> [f64; 3],
) -> ([f64; 3], [f64; 3]) {
    let mut out = ([f64::INFINITY; 3], [f64::NEG_INFINITY; 3]);
    for c in 0..8 {
        let p = f(corner(lo, hi, c));
        for ((l, h), v) in out.0.iter_mut().zip(out.1.iter_mut()).zip(p) {
            *l = l.min(v);
            *h = h.max(v);
        }
    }
    out
}

/// Any affine: the box is clipped to the grid's millimetre extent, its corners taken back to voxel space, and the
/// voxel box around them (padded) kept.
fn oblique_ranges(a: &Affine, bounds: &[Interval; 3], shape: &[usize]) -> Option<Vec<Range<u64>>> {
    let full: Vec<Range<u64>> = shape.iter().map(|&n| 0..n as u64).collect();
    let Some(inv) = inverse3(a) else {
        return Some(full);
    };
    let extent = |axis: usize| match shape.get(axis) {
        Some(&n) => (-0.5, n as f64 - 0.5),
        None => (0.0, 0.0),
    };
    // The grid's millimetre bounding box, cut down to the filters' box.
    let (mut mm_lo, mut mm_hi) = mapped_box(
        std::array::from_fn(|d| extent(d).0),
        std::array::from_fn(|d| extent(d).1),
        |v| std::array::from_fn(|r| row_apply(&a[r], v)),
    );
    for ((lo, hi), b) in mm_lo.iter_mut().zip(mm_hi.iter_mut()).zip(bounds) {
        *lo = lo.max(b.lo);
        *hi = hi.min(b.hi);
        if *lo > *hi {
            return None;
        }
        if !lo.is_finite() || !hi.is_finite() {
            return Some(full);
        }
    }
    let (vlo, vhi) = mapped_box(mm_lo, mm_hi, |p| {
        let d: [f64; 3] = std::array::from_fn(|r| p[r] - a[r][3]);
        inv.map(|row| row[0] * d[0] + row[1] * d[1] + row[2] * d[2])
    });
    let mut out = full;
    for (axis, (lo, hi)) in vlo.into_iter().zip(vhi).enumerate() {
        let pad = 1e-6 * (1.0 + lo.abs().max(hi.abs()));
        let (lo, hi) = ((lo - pad).ceil(), (hi + pad).floor());
        match (shape.get(axis), out.get_mut(axis)) {
            (Some(&n), Some(range)) => {
                let start = lo.max(0.0);
                let end = (hi + 1.0).min(n as f64);
                if start >= end {
                    return None;
                }
                *range = start as u64..end as u64;
            }
            _ if lo > 0.0 || hi < 0.0 => return None,
            _ => {}
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::prelude::{col, lit};

    fn interval(lo: f64, hi: f64) -> Interval {
        Interval {
            lo,
            lo_open: false,
            hi,
            hi_open: false,
        }
    }

    #[test]
    fn affine_option_syntax() {
        let a = parse_affine("2,0,0,-10, 0,2,0,-20; 0 0 2 -30").unwrap();
        assert_eq!(a[2], [0.0, 0.0, 2.0, -30.0]);
        assert_eq!(a[3], [0.0, 0.0, 0.0, 1.0]);
        assert!(parse_affine("[[1,0,0,0],[0,1,0,0],[0,0,1,0],[0,0,0,1]]").is_ok());
        assert!(parse_affine("1 0 0 0 0 1 0 0 0 0 1 0 1 0 0 1").is_err());
        assert!(parse_affine("1 2 3").is_err());
        assert!(parse_affine("1 0 0 0 0 1 0 0 0 0 0 0").is_err());
        assert!(parse_affine("1 0 0 0 0 1 0 0 0 0 1 nan").is_err());
    }

    #[test]
    fn comparisons_between_and_spheres() {
        let f = analyse(&col("x").gt_eq(lit(2.0)).and(col("x").lt(lit(5))));
        assert!(f.exact);
        assert_eq!(f.bounds[0].lo, 2.0);
        assert!(f.bounds[0].hi_open);
        let b = analyse(&col("z").between(lit(-1.0), lit(1.0)));
        assert!(b.exact && b.bounds[2] == interval(-1.0, 1.0));
        let term = |c: &str, v: f64| (col(c) - lit(v)) * (col(c) - lit(v));
        let s = analyse(&(term("x", 10.0) + term("y", -4.0) + term("z", 0.0)).lt_eq(lit(36.0)));
        assert!(!s.exact);
        assert!((s.bounds[0].lo - 4.0).abs() < 1e-6 && (s.bounds[1].hi - 2.0).abs() < 1e-6);
        assert_eq!(analyse(&col("x").not_eq(lit(1.0))), WorldFilter::NONE);
    }

    #[test]
    fn aligned_boxes_are_exact_and_flips_work() {
        // x = -2 i + 10, y = 3 k, z = j - 1 (a permutation with a flip).
        let a = [
            [-2.0, 0.0, 0.0, 10.0],
            [0.0, 0.0, 3.0, 0.0],
            [0.0, 1.0, 0.0, -1.0],
            [0.0, 0.0, 0.0, 1.0],
        ];
        assert_eq!(axis_permutation(&a), Some([0, 2, 1]));
        let mut bounds = [Interval::FULL; 3];
        bounds[0] = interval(1.0, 6.0); // i in 2..=4
        bounds[1] = Interval {
            lo: 3.0,
            lo_open: true,
            ..Interval::FULL
        }; // k >= 2
        let r = aligned_ranges(&a, [0, 2, 1], &bounds, &[10, 10, 10]).unwrap();
        assert_eq!(r, vec![2..5, 0..10, 2..10]);
        bounds[2] = interval(100.0, 200.0);
        assert!(aligned_ranges(&a, [0, 2, 1], &bounds, &[10, 10, 10]).is_none());
    }

    #[test]
    fn oblique_boxes_hold_the_passing_voxels() {
        let (c, s) = (0.8f64, 0.6f64);
        let a = [
            [2.0 * c, -2.0 * s, 0.0, 5.0],
            [2.0 * s, 2.0 * c, 0.0, -3.0],
            [0.0, 0.0, 2.0, 1.0],
            [0.0, 0.0, 0.0, 1.0],
        ];
        let mut bounds = [Interval::FULL; 3];
        bounds[0] = interval(4.0, 12.0);
        bounds[2] = interval(3.0, 9.0);
        let shape = [12usize, 12, 8];
        let r = oblique_ranges(&a, &bounds, &shape).unwrap();
        for i in 0..12u64 {
            for j in 0..12u64 {
                for k in 0..8u64 {
                    let w = crate::formats::affine::apply(&a, [i as f64, j as f64, k as f64]);
                    if bounds.iter().zip(w).all(|(b, v)| b.contains(v)) {
                        assert!(r[0].contains(&i) && r[1].contains(&j) && r[2].contains(&k));
                    }
                }
            }
        }
        assert!(r[2] == (1..5));
    }

    #[test]
    fn grid_maps_round_halves_up_and_null_outside() {
        // This file: 3 mm voxels from -3; the grid: 2 mm voxels from 0, 5 along each axis.
        let a = [
            [3.0, 0.0, 0.0, -3.0],
            [0.0, 3.0, 0.0, -3.0],
            [0.0, 0.0, 3.0, -3.0],
            [0.0, 0.0, 0.0, 1.0],
        ];
        let g = [
            [2.0, 0.0, 0.0, 0.0],
            [0.0, 2.0, 0.0, 0.0],
            [0.0, 0.0, 2.0, 0.0],
            [0.0, 0.0, 0.0, 1.0],
        ];
        let m = GridMap::new(&a, &g, &[5, 5, 5]).unwrap();
        // Voxel 1 is at 0 mm (grid 0.0); voxel 2 at 3 mm (grid 1.5, a half: up to 2); voxel 0 at -3 mm (grid -1.5).
        assert_eq!(m.nearest([1.0, 2.0, 3.0]), Some([0, 2, 3]));
        assert_eq!(m.nearest([0.0, 1.0, 1.0]), None);
        assert_eq!(m.nearest([4.0, 1.0, 1.0]), None); // 9 mm: grid 4.5 rounds to 5, outside
        let mut singular = IDENTITY;
        singular[1][1] = 0.0;
        assert!(GridMap::new(&a, &singular, &[5, 5, 5]).is_none());
        // Filters on grid columns are bounds on the continuous coordinate.
        let f = analyse(&col("grid_i").between(lit(1), lit(3)));
        assert!(f.grid_used && !f.exact);
        assert_eq!((f.grid[0].lo, f.grid[0].hi), (0.5, 3.5));
    }
}
