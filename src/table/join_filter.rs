//! Dynamic filters (a hash join's build-side key bounds and key sets, TopK's threshold) as per-axis index sets.
//!
//! DataFusion hands the scan physical expressions whose value is filled in while the query runs
//! (`DynamicFilterPhysicalExpr`). The scan snapshots them when it opens a slab and turns what they imply about
//! coordinate columns into one [`IndexSet`] per axis: every row passing the filter has its coordinates inside the
//! product of those sets, so the slab is narrowed to them (or skipped) before any byte is read. The sets are a
//! superset of the filter; the join (or TopK) still applies it exactly, so pruning never changes an answer.
//!
//! Shapes understood: `AND`/`OR` of comparisons between an axis column (possibly cast) and a literal, `IN` lists on
//! one axis column or on `struct(i, j, k)` (the key sets of small build sides), `CASE … THEN f0 … ELSE f` (the per-
//! partition filters of a partitioned join: the union of the branches), boolean literals and `IS NULL` of an axis
//! (coordinates are never NULL). Anything else implies nothing.

use std::sync::Arc;

use datafusion::arrow::array::{Array, StructArray};
use datafusion::common::ScalarValue;
use datafusion::logical_expr::Operator;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::ScalarFunctionExpr;
use datafusion::physical_expr::expressions::{
    BinaryExpr, CaseExpr, CastExpr, Column, InListExpr, IsNullExpr, Literal, TryCastExpr,
};
use datafusion::physical_expr_common::physical_expr::snapshot_physical_expr;

use super::index_set::IndexSet;
use super::predicate::UNIVERSE;

/// What a filter implies about each axis: `None` means nothing is implied (every index may pass).
type Implied = Vec<Option<IndexSet>>;

/// The scan's columns: coordinate names in axis order, and the file's shape (to decode linear voxel keys).
pub struct Cx<'a> {
    pub axes: &'a [&'a str],
    pub shape: &'a [u64],
    /// The columns may be NULL (`grid_i, grid_j, grid_k` outside the other grid); coordinates never are.
    pub nullable: bool,
}

/// Per axis: the indices a row of a file passing all of `filters` (as they stand now) can have. `None` for an axis
/// about which nothing is known. A filter that cannot be snapshotted implies nothing.
pub fn implied_axis_sets(filters: &[Arc<dyn PhysicalExpr>], cx: &Cx) -> Implied {
    let mut out: Implied = vec![None; cx.axes.len()];
    for f in filters {
        let Ok(now) = snapshot_physical_expr(Arc::clone(f)) else {
            continue;
        };
        out = and(out, implied(&now, cx));
    }
    out
}

fn nothing(n: usize) -> Implied {
    vec![None; n]
}

fn none_pass(n: usize) -> Implied {
    vec![Some(IndexSet::empty()); n]
}

fn and(a: Implied, b: Implied) -> Implied {
    a.into_iter()
        .zip(b)
        .map(|(x, y)| match (x, y) {
            (Some(x), Some(y)) => Some(x.intersect(&y)),
            (x, None) => x,
            (None, y) => y,
        })
        .collect()
}

/// Rows passing `a OR b` lie in the union of the two products, hence in the product of the per-axis unions — except
/// when one side rules out every row, which then contributes nothing.
fn or(a: Implied, b: Implied) -> Implied {
    let empty = |v: &Implied| v.iter().any(|s| s.as_ref().is_some_and(IndexSet::is_empty));
    if empty(&a) {
        return b;
    }
    if empty(&b) {
        return a;
    }
    a.into_iter()
        .zip(b)
        .map(|(x, y)| match (x, y) {
            (Some(x), Some(y)) => Some(x.union(&y)),
            _ => None,
        })
        .collect()
}

fn only(axis: usize, set: IndexSet, n: usize) -> Implied {
    let mut out = nothing(n);
    out[axis] = Some(set);
    out
}

fn implied(expr: &Arc<dyn PhysicalExpr>, cx: &Cx) -> Implied {
    let n = cx.axes.len();
    if let Some(b) = expr.downcast_ref::<BinaryExpr>() {
        return match b.op() {
            Operator::And => and(implied(b.left(), cx), implied(b.right(), cx)),
            Operator::Or => or(implied(b.left(), cx), implied(b.right(), cx)),
            op => comparison(b.left(), *op, b.right(), cx).unwrap_or_else(|| nothing(n)),
        };
    }
    if let Some(l) = expr.downcast_ref::<Literal>() {
        return match l.value() {
            ScalarValue::Boolean(Some(true)) => nothing(n),
            ScalarValue::Boolean(_) => none_pass(n),
            _ => nothing(n),
        };
    }
    if let Some(c) = expr.downcast_ref::<CaseExpr>() {
        let branches = c
            .when_then_expr()
            .iter()
            .map(|(_, then)| then)
            .chain(c.else_expr());
        // No ELSE: unmatched rows get NULL, which filters them out.
        return branches.fold(none_pass(n), |acc, e| or(acc, implied(e, cx)));
    }
    if let Some(list) = expr.downcast_ref::<InListExpr>() {
        return in_list(list, cx).unwrap_or_else(|| nothing(n));
    }
    if let Some(is_null) = expr.downcast_ref::<IsNullExpr>()
        && !cx.nullable
        && axis_of(is_null.arg(), cx).is_some()
    {
        return none_pass(n);
    }
    nothing(n)
}

/// The axis a (possibly cast) column expression names. Casts are kept only to integer or float types, which hold
/// every coordinate value exactly enough for the bounds below (a coordinate is below 2^62).
fn axis_of(expr: &Arc<dyn PhysicalExpr>, cx: &Cx) -> Option<usize> {
    if let Some(c) = expr.downcast_ref::<Column>() {
        return cx.axes.iter().position(|a| *a == c.name());
    }
    let (inner, ty) = if let Some(c) = expr.downcast_ref::<CastExpr>() {
        (c.expr(), c.cast_type())
    } else if let Some(c) = expr.downcast_ref::<TryCastExpr>() {
        (c.expr(), c.cast_type())
    } else {
        return None;
    };
    // A narrowing cast wraps or fails: only widening-or-equal integer casts and float casts keep order.
    let keeps = matches!(
        ty,
        datafusion::arrow::datatypes::DataType::Int64
            | datafusion::arrow::datatypes::DataType::Float64
            | datafusion::arrow::datatypes::DataType::Decimal128(..)
    );
    if keeps { axis_of(inner, cx) } else { None }
}

/// A literal as a real number, when it is one.
fn number(v: &ScalarValue) -> Option<f64> {
    if v.is_null() {
        return None;
    }
    match v {
        ScalarValue::Float64(Some(x)) => Some(*x),
        ScalarValue::Float32(Some(x)) => Some(f64::from(*x)),
        _ => {
            let as_i = v
                .cast_to(&datafusion::arrow::datatypes::DataType::Int64)
                .ok()?;
            match as_i {
                ScalarValue::Int64(Some(x)) => Some(x as f64),
                _ => None,
            }
        }
    }
}

/// `column op literal` (either way round) as a set on the column's axis.
fn comparison(
    left: &Arc<dyn PhysicalExpr>,
    op: Operator,
    right: &Arc<dyn PhysicalExpr>,
    cx: &Cx,
) -> Option<Implied> {
    let n = cx.axes.len();
    let (key, value, op) = match right.downcast_ref::<Literal>() {
        Some(l) => (left, l.value(), op),
        None => (right, left.downcast_ref::<Literal>()?.value(), op.swap()?),
    };
    let axis = match axis_of(key, cx) {
        Some(a) => a,
        None => return linear_bound(&Linear::of(key, cx)?, value, op, cx),
    };
    // Comparing with NULL passes no row.
    if value.is_null() {
        return matches!(
            op,
            Operator::Eq | Operator::Lt | Operator::LtEq | Operator::Gt | Operator::GtEq
        )
        .then(|| none_pass(n));
    }
    let v = number(value)?;
    Some(only(axis, bound(v, op)?, n))
}

/// The integers `x` with `x op v`, within `0..UNIVERSE`.
fn bound(v: f64, op: Operator) -> Option<IndexSet> {
    if v.is_nan() {
        return None;
    }
    let clamp = |x: f64| x.clamp(0.0, UNIVERSE as f64) as u64;
    let from = |lo: f64| IndexSet::range(clamp(lo)..UNIVERSE);
    let upto = |hi: f64| {
        if hi < 0.0 {
            IndexSet::empty()
        } else {
            IndexSet::range(0..clamp(hi).saturating_add(1).min(UNIVERSE))
        }
    };
    Some(match op {
        Operator::GtEq => from(v.ceil()),
        Operator::Gt => from(v.floor() + 1.0),
        Operator::LtEq => upto(v.floor()),
        Operator::Lt => upto(v.ceil() - 1.0),
        Operator::Eq if v.fract() == 0.0 && (0.0..UNIVERSE as f64).contains(&v) => {
            IndexSet::range(v as u64..v as u64 + 1)
        }
        Operator::Eq => IndexSet::empty(),
        _ => return None,
    })
}

/// Unit ranges of the non-negative integer values in `values` (others can match no coordinate).
fn points(values: impl Iterator<Item = Option<f64>>) -> IndexSet {
    let ranges = values
        .flatten()
        .filter(|v| v.fract() == 0.0 && (0.0..UNIVERSE as f64).contains(v))
        .map(|v| v as u64..v as u64 + 1)
        .collect();
    IndexSet::from_ranges(ranges)
}

/// `col IN (…)` or `struct(c1, c2, …) IN (struct literals)`, not negated.
fn in_list(list: &InListExpr, cx: &Cx) -> Option<Implied> {
    if list.negated() {
        return None;
    }
    let n = cx.axes.len();
    let literals: Vec<&ScalarValue> = list
        .list()
        .iter()
        .map(|e| e.downcast_ref::<Literal>().map(Literal::value))
        .collect::<Option<_>>()?;
    if let Some(axis) = axis_of(list.expr(), cx) {
        return Some(only(axis, points(literals.iter().map(|v| number(v))), n));
    }
    if let Some(key) = Linear::of(list.expr(), cx) {
        return key.decode_all(&literals, cx);
    }
    let func = list.expr().downcast_ref::<ScalarFunctionExpr>()?;
    if func.name() != "struct" {
        return None;
    }
    let mut out = nothing(n);
    for (field, arg) in func.args().iter().enumerate() {
        let Some(axis) = axis_of(arg, cx) else {
            continue;
        };
        let values = literals.iter().map(|v| struct_field(v, field));
        out[axis] = Some(points(values));
    }
    Some(out)
}

/// Field `k` of a one-row struct literal, as a number.
fn struct_field(v: &ScalarValue, k: usize) -> Option<f64> {
    let ScalarValue::Struct(s) = v else {
        return None;
    };
    let s: &StructArray = s.as_ref();
    if s.is_null(0) {
        return None;
    }
    let col = s.columns().get(k)?;
    number(&ScalarValue::try_from_array(col.as_ref(), 0).ok()?)
}

/// The voxels a key list among `filters` names: a conjunct `key IN (…)` on a linear voxel key (a small hash-join
/// build side), as the key's axes (fastest first) and each voxel's coordinates on them. `None` when no filter lists
/// keys that way.
pub fn listed_voxels(
    filters: &[Arc<dyn PhysicalExpr>],
    cx: &Cx,
) -> Option<(Vec<usize>, Vec<Vec<u64>>)> {
    filters
        .iter()
        .find_map(|f| listed(&snapshot_physical_expr(Arc::clone(f)).ok()?, cx))
}

/// The voxels `e` lists: from an `IN` list on a linear key, either side of an `AND`, or every branch of a `CASE`
/// (a partitioned join's per-partition lists; a `false` branch lists none).
fn listed(e: &Arc<dyn PhysicalExpr>, cx: &Cx) -> Option<(Vec<usize>, Vec<Vec<u64>>)> {
    if let Some(b) = e.downcast_ref::<BinaryExpr>() {
        return match b.op() {
            Operator::And => listed(b.left(), cx).or_else(|| listed(b.right(), cx)),
            _ => None,
        };
    }
    if let Some(c) = e.downcast_ref::<CaseExpr>() {
        let branches = c
            .when_then_expr()
            .iter()
            .map(|(_, then)| then)
            .chain(c.else_expr());
        let mut all: Option<(Vec<usize>, Vec<Vec<u64>>)> = None;
        for branch in branches {
            let none = branch.downcast_ref::<Literal>().is_some_and(|l| {
                matches!(
                    l.value(),
                    ScalarValue::Boolean(Some(false)) | ScalarValue::Boolean(None)
                )
            });
            if none {
                continue;
            }
            let (axes, voxels) = listed(branch, cx)?;
            match &mut all {
                Some((a, v)) if *a == axes => v.extend(voxels),
                Some(_) => return None,
                None => all = Some((axes, voxels)),
            }
        }
        return all;
    }
    let list = e.downcast_ref::<InListExpr>()?;
    if list.negated() {
        return None;
    }
    let key = Linear::of(list.expr(), cx)?;
    let mut voxels = Vec::with_capacity(list.len());
    for item in list.list() {
        let Some(k) = number(item.downcast_ref::<Literal>()?.value()) else {
            continue;
        };
        if k.fract() == 0.0
            && let Some(v) = key.decode(k as i64, cx)
        {
            voxels.push(v.into_iter().map(|(_, x)| x).collect());
        }
    }
    Some((key.terms.iter().map(|&(a, _)| a).collect(), voxels))
}

/// A linear voxel key `Σ stride·axis` (as [`super::join_dense`] writes it), decodable on a file whose shape fits its
/// strides: sorted by stride, the first is 1 and each next one is a multiple of the previous, at least the previous
/// axis's length apart. Then every voxel of the file has its own key and a key names at most one voxel.
struct Linear {
    /// (axis, stride), strides ascending.
    terms: Vec<(usize, i64)>,
}

impl Linear {
    fn of(expr: &Arc<dyn PhysicalExpr>, cx: &Cx) -> Option<Linear> {
        let (mut terms, constant) = linear_terms(expr, cx)?;
        if constant != 0 || terms.is_empty() {
            return None;
        }
        terms.sort_by_key(|&(_, s)| s);
        let mut expect = 1i64;
        for (n, &(axis, s)) in terms.iter().enumerate() {
            if s != expect && !(n > 0 && s >= expect && s % terms[n - 1].1 == 0) {
                return None;
            }
            let len = i64::try_from(*cx.shape.get(axis)?).ok()?;
            expect = s.checked_mul(len)?;
        }
        let distinct = terms
            .iter()
            .enumerate()
            .all(|(n, x)| terms[n + 1..].iter().all(|y| y.0 != x.0));
        distinct.then_some(Linear { terms })
    }

    /// The voxel a key names, if any.
    fn decode(&self, key: i64, cx: &Cx) -> Option<Vec<(usize, u64)>> {
        if key < 0 {
            return None;
        }
        let mut out = Vec::with_capacity(self.terms.len());
        for (n, &(axis, s)) in self.terms.iter().enumerate() {
            let digit = match self.terms.get(n + 1) {
                Some(&(_, next)) => (key / s) % (next / s),
                None => key / s,
            };
            let digit = u64::try_from(digit).ok()?;
            if digit >= *cx.shape.get(axis)? {
                return None;
            }
            out.push((axis, digit));
        }
        Some(out)
    }

    /// Per axis: the coordinates of the voxels the listed keys name.
    fn decode_all(&self, keys: &[&ScalarValue], cx: &Cx) -> Option<Implied> {
        let mut per_axis: Vec<Vec<std::ops::Range<u64>>> = vec![Vec::new(); cx.axes.len()];
        for v in keys {
            let Some(key) = number(v).filter(|k| k.fract() == 0.0) else {
                continue;
            };
            if let Some(voxel) = self.decode(key as i64, cx) {
                for (axis, x) in voxel {
                    per_axis[axis].push(x..x + 1);
                }
            }
        }
        let mut out = nothing(cx.axes.len());
        for &(axis, _) in &self.terms {
            out[axis] = Some(IndexSet::from_ranges(std::mem::take(&mut per_axis[axis])));
        }
        Some(out)
    }
}

/// `key op value` on a linear key: a bound on the key bounds its slowest axis (the others stay within their strides).
fn linear_bound(key: &Linear, value: &ScalarValue, op: Operator, cx: &Cx) -> Option<Implied> {
    let n = cx.axes.len();
    if value.is_null() {
        return Some(none_pass(n));
    }
    let &(axis, s) = key.terms.last()?;
    let keys = bound(number(value)?, op)?;
    let slow = match (op, keys.min(), keys.max()) {
        (_, None, _) => IndexSet::empty(),
        (Operator::Gt | Operator::GtEq, Some(lo), _) => IndexSet::range(lo / s as u64..UNIVERSE),
        (Operator::Lt | Operator::LtEq | Operator::Eq, Some(lo), Some(hi)) => {
            IndexSet::range(lo / s as u64..hi / s as u64 + 1)
        }
        _ => return None,
    };
    Some(only(axis, slow, n))
}

/// `expr` as `Σ stride·axis + constant`, over axis columns (possibly cast), integer literals, `+`, `-` and `*` by a
/// literal.
fn linear_terms(expr: &Arc<dyn PhysicalExpr>, cx: &Cx) -> Option<(Vec<(usize, i64)>, i64)> {
    if let Some(axis) = axis_of(expr, cx) {
        return Some((vec![(axis, 1)], 0));
    }
    if let Some(l) = expr.downcast_ref::<Literal>() {
        let v = number(l.value())?;
        return (v.fract() == 0.0 && v.abs() < 9e15).then_some((Vec::new(), v as i64));
    }
    let b = expr.downcast_ref::<BinaryExpr>()?;
    let (l, r) = (linear_terms(b.left(), cx)?, linear_terms(b.right(), cx)?);
    match b.op() {
        Operator::Plus => Some(([l.0, r.0].concat(), l.1.checked_add(r.1)?)),
        Operator::Minus if r.0.is_empty() => Some((l.0, l.1.checked_sub(r.1)?)),
        Operator::Multiply if r.0.is_empty() || l.0.is_empty() => {
            let ((terms, c), m) = if r.0.is_empty() { (l, r.1) } else { (r, l.1) };
            let terms = terms
                .into_iter()
                .map(|(a, s)| Some((a, s.checked_mul(m)?)))
                .collect::<Option<Vec<_>>>()?;
            Some((terms, c.checked_mul(m)?))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::datatypes::DataType;
    use datafusion::physical_expr::expressions::{DynamicFilterPhysicalExpr, lit};

    const AXES: [&str; 4] = ["i", "j", "k", "t"];
    const SHAPE: [u64; 4] = [10, 8, 6, 5];

    fn cx() -> Cx<'static> {
        Cx {
            axes: &AXES,
            shape: &SHAPE,
            nullable: false,
        }
    }

    /// `i + 10 j + 80 k`, the key join_dense writes for a 10×8×6 grid.
    fn key() -> Arc<dyn PhysicalExpr> {
        let j = bin(col("j"), Operator::Multiply, lit(10i64));
        let k = bin(col("k"), Operator::Multiply, lit(80i64));
        bin(bin(col("i"), Operator::Plus, j), Operator::Plus, k)
    }

    #[test]
    fn linear_keys_decode_to_voxels() {
        let schema = datafusion::arrow::datatypes::Schema::new(
            AXES.iter()
                .map(|a| datafusion::arrow::datatypes::Field::new(*a, DataType::Int64, false))
                .collect::<Vec<_>>(),
        );
        // (3, 2, 1) = 103 and (9, 7, 5) = 479; -4 and 480 name no voxel.
        let keys = vec![lit(103i64), lit(479i64), lit(-4i64), lit(480i64)];
        let e = InListExpr::try_new(key(), keys, false, &schema).unwrap();
        let s = sets(Arc::new(e));
        assert_eq!(s[0], Some(IndexSet::from_ranges(vec![3..4, 9..10])));
        assert_eq!(s[1], Some(IndexSet::from_ranges(vec![2..3, 7..8])));
        assert_eq!(s[2], Some(IndexSet::from_ranges(vec![1..2, 5..6])));
        assert_eq!(s[3], None);
        // Bounds on the key bound k.
        let e = bin(
            bin(key(), Operator::GtEq, lit(103i64)),
            Operator::And,
            bin(key(), Operator::LtEq, lit(250i64)),
        );
        let s = sets(e);
        assert_eq!(s[2], Some(IndexSet::range(1..4)));
        assert_eq!(s[0], None);
        let listed = InListExpr::try_new(
            key(),
            vec![lit(103i64), lit(479i64), lit(-4i64)],
            false,
            &schema,
        )
        .unwrap();
        let bounds = bin(key(), Operator::GtEq, lit(0i64));
        let both = bin(bounds, Operator::And, Arc::new(listed));
        let (axes, voxels) = listed_voxels(&[both], &cx()).unwrap();
        assert_eq!(axes, vec![0, 1, 2]);
        assert_eq!(voxels, vec![vec![3, 2, 1], vec![9, 7, 5]]);
        // A key whose strides do not fit the file (j's stride below i's length) is not decoded.
        let narrow = bin(
            col("i"),
            Operator::Plus,
            bin(col("j"), Operator::Multiply, lit(5i64)),
        );
        let e = InListExpr::try_new(narrow, vec![lit(7i64)], false, &schema).unwrap();
        assert_eq!(sets(Arc::new(e)), nothing(4));
    }

    fn col(name: &str) -> Arc<dyn PhysicalExpr> {
        let idx = AXES.iter().position(|a| *a == name).unwrap_or(9);
        Arc::new(Column::new(name, idx))
    }

    fn bin(
        l: Arc<dyn PhysicalExpr>,
        op: Operator,
        r: Arc<dyn PhysicalExpr>,
    ) -> Arc<dyn PhysicalExpr> {
        Arc::new(BinaryExpr::new(l, op, r))
    }

    fn between(c: &str, lo: i64, hi: i64) -> Arc<dyn PhysicalExpr> {
        bin(
            bin(col(c), Operator::GtEq, lit(lo)),
            Operator::And,
            bin(col(c), Operator::LtEq, lit(hi)),
        )
    }

    fn sets(e: Arc<dyn PhysicalExpr>) -> Implied {
        implied_axis_sets(&[e], &cx())
    }

    #[test]
    fn join_bounds_become_boxes() {
        let e = bin(between("i", 3, 5), Operator::And, between("k", 0, 0));
        let s = sets(e);
        assert_eq!(s[0], Some(IndexSet::range(3..6)));
        assert_eq!(s[1], None);
        assert_eq!(s[2], Some(IndexSet::range(0..1)));
        // Negative and fractional bounds.
        let s = sets(bin(
            bin(col("j"), Operator::Gt, lit(-2.5f64)),
            Operator::And,
            bin(col("j"), Operator::Lt, lit(2.5f64)),
        ));
        assert_eq!(s[1], Some(IndexSet::range(0..3)));
    }

    #[test]
    fn or_and_case_take_unions() {
        let e = bin(between("i", 1, 2), Operator::Or, between("i", 7, 8));
        assert_eq!(sets(e)[0], Some(IndexSet::from_ranges(vec![1..3, 7..9])));
        // One side on another axis: nothing known about either.
        let e = bin(between("i", 1, 2), Operator::Or, between("j", 7, 8));
        assert_eq!(sets(e), nothing(4));
        // A side that passes nothing contributes nothing.
        let e = bin(lit(false), Operator::Or, between("t", 4, 4));
        assert_eq!(sets(e)[3], Some(IndexSet::range(4..5)));
        let case = CaseExpr::try_new(
            Some(col("t")),
            vec![
                (lit(0i64), between("i", 1, 1)),
                (lit(1i64), between("i", 5, 5)),
            ],
            Some(lit(false)),
        )
        .unwrap();
        assert_eq!(
            sets(Arc::new(case))[0],
            Some(IndexSet::from_ranges(vec![1..2, 5..6]))
        );
    }

    #[test]
    fn in_lists_on_one_axis_and_on_structs() {
        let schema = datafusion::arrow::datatypes::Schema::new(
            AXES.iter()
                .map(|a| datafusion::arrow::datatypes::Field::new(*a, DataType::Int64, false))
                .collect::<Vec<_>>(),
        );
        let e = InListExpr::try_new(
            col("k"),
            vec![lit(4i64), lit(2i64), lit(-1i64)],
            false,
            &schema,
        )
        .unwrap();
        assert_eq!(
            sets(Arc::new(e))[2],
            Some(IndexSet::from_ranges(vec![2..3, 4..5]))
        );
        let negated = InListExpr::try_new(col("k"), vec![lit(4i64)], true, &schema).unwrap();
        assert_eq!(sets(Arc::new(negated)), nothing(4));
    }

    #[test]
    fn dynamic_filters_are_read_as_they_stand() {
        let dynamic = Arc::new(DynamicFilterPhysicalExpr::new(vec![col("i")], lit(true)));
        let as_expr: Arc<dyn PhysicalExpr> = dynamic.clone();
        assert_eq!(
            implied_axis_sets(&[Arc::clone(&as_expr)], &cx()),
            nothing(4)
        );
        dynamic.update(between("i", 10, 12)).unwrap();
        assert_eq!(
            implied_axis_sets(&[as_expr], &cx())[0],
            Some(IndexSet::range(10..13))
        );
        let none = implied_axis_sets(&[lit(false)], &cx());
        assert!(
            none.iter()
                .all(|s| s.as_ref().is_some_and(IndexSet::is_empty))
        );
    }

    #[test]
    fn null_comparisons_and_is_null_pass_nothing() {
        let e = bin(col("i"), Operator::Eq, lit(ScalarValue::Int64(None)));
        assert_eq!(sets(e)[0], Some(IndexSet::empty()));
        let e = bin(
            between("i", 1, 1),
            Operator::Or,
            Arc::new(IsNullExpr::new(col("i"))),
        );
        assert_eq!(sets(e)[0], Some(IndexSet::range(1..2)));
        // A value column constrains no axis.
        let e = bin(col("value"), Operator::Eq, lit(3i64));
        assert_eq!(sets(e), nothing(4));
    }
}
