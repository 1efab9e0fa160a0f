//! From pushed-down filters to per-axis index sets (reference notes §3.3–3.5).
//!
//! A filter that mentions exactly one coordinate column and is built from comparisons with literals (`=`, `!=`,
//! `<`, `<=`, `>`, `>=`, `BETWEEN`, `IN`, `IS [NOT] DISTINCT FROM`), `NOT`, `AND`, `OR`, `IS [NOT] NULL` and exact
//! casts of the column becomes an [`IndexSet`]: the scan then produces exactly the rows that pass, so the filter is
//! `Exact`. A filter on the `file` column alone is evaluated once per file and is exact too. Other filters that only
//! mention coordinates (and `file`) are `Inexact`; anything touching a value column is `Unsupported`.
//!
//! Sets are computed over a universe of `0..UNIVERSE` and clamped to each file's axis length afterwards, so one
//! conversion serves files of different shapes (`NOT`/`!=` complement within the universe, which clamping turns
//! into the complement within the axis).

use std::collections::HashSet;

use datafusion::arrow::datatypes::DataType;
use datafusion::logical_expr::{Between, BinaryExpr, Expr, Operator, TableProviderFilterPushDown};
use datafusion::scalar::ScalarValue;

use super::index_set::IndexSet;

/// Every set is a subset of `0..UNIVERSE` (far beyond any axis a file can hold).
pub const UNIVERSE: u64 = 1 << 62;

/// The column names a table has, for deciding what a filter touches.
#[derive(Debug, Clone)]
pub struct FilterColumns {
    /// Coordinate names in axis order, with the longest extent of each axis over all files.
    pub axes: Vec<(String, u64)>,
    /// The name of the per-file column, when the table has one.
    pub file: Option<String>,
    /// Other columns with one value per file (BIDS entities, `world_space`, `tr`): filtered like `file`.
    pub per_file: Vec<String>,
    /// Whether the table has the millimetre columns `x, y, z`.
    pub world: bool,
}

/// What one pushed filter is, for the scan.
#[derive(Debug, Clone, PartialEq)]
pub enum FilterKind {
    /// Exactly the rows whose coordinate on `axis` lies in the set.
    Axis { axis: usize, set: IndexSet },
    /// A condition on the `file` column only: evaluated per file.
    File,
    /// A condition on `x, y, z` only: a per-file box through the inverse affine (exact or not: see
    /// [`super::world`]; `Inexact` unless the table says otherwise).
    World,
    /// Coordinates (and maybe `file`) only, but not convertible: DataFusion filters the rows.
    Inexact,
    /// Touches a value column, or nothing of this table.
    Unsupported,
}

impl FilterKind {
    pub fn pushdown(&self) -> TableProviderFilterPushDown {
        match self {
            FilterKind::Axis { .. } | FilterKind::File => TableProviderFilterPushDown::Exact,
            FilterKind::Inexact | FilterKind::World => TableProviderFilterPushDown::Inexact,
            FilterKind::Unsupported => TableProviderFilterPushDown::Unsupported,
        }
    }
}

impl FilterColumns {
    fn axis(&self, name: &str) -> Option<usize> {
        self.axes.iter().position(|(n, _)| n == name)
    }

    /// Classify one conjunct.
    pub fn classify(&self, expr: &Expr) -> FilterKind {
        let names: HashSet<&str> = expr
            .column_refs()
            .into_iter()
            .map(|c| c.name.as_str())
            .collect();
        let is_file =
            |n: &str| self.file.as_deref() == Some(n) || self.per_file.iter().any(|p| p == n);
        let is_world = |n: &str| {
            self.world
                && (super::world::WORLD_COLUMNS.contains(&n)
                    || super::world::GRID_COLUMNS.contains(&n))
        };
        let known = |n: &str| self.axis(n).is_some() || is_file(n) || is_world(n);
        if names.is_empty() || names.iter().any(|n| !known(n)) {
            return FilterKind::Unsupported;
        }
        if names.iter().all(|n| is_file(n)) {
            return FilterKind::File;
        }
        if names.iter().all(|n| is_world(n)) {
            return FilterKind::World;
        }
        if names.len() == 1
            && let Some(axis) = names.iter().next().and_then(|n| self.axis(n))
        {
            let (name, len) = &self.axes[axis];
            if let Some(set) = index_set(expr, name, *len) {
                return FilterKind::Axis { axis, set };
            }
        }
        FilterKind::Inexact
    }
}

/// The indices of column `col` (an axis of at most `max_len` elements) for which `expr` is true, or `None` when
/// `expr` is not of a supported shape.
pub fn index_set(expr: &Expr, col: &str, max_len: u64) -> Option<IndexSet> {
    let set = |e: &Expr| index_set(e, col, max_len);
    match expr {
        Expr::BinaryExpr(BinaryExpr { left, op, right }) => match op {
            Operator::And => Some(set(left)?.intersect(&set(right)?)),
            Operator::Or => Some(set(left)?.union(&set(right)?)),
            _ => comparison(left, *op, right, col, max_len),
        },
        Expr::Not(inner) => Some(set(inner)?.complement(UNIVERSE)),
        Expr::Between(Between {
            expr,
            negated,
            low,
            high,
        }) => {
            is_column(expr, col, max_len).then_some(())?;
            let lo = bound(literal(low)?, Operator::GtEq)?;
            let hi = bound(literal(high)?, Operator::LtEq)?;
            let inside = lo.intersect(&hi);
            Some(if *negated {
                inside.complement(UNIVERSE)
            } else {
                inside
            })
        }
        Expr::InList(list) => {
            is_column(&list.expr, col, max_len).then_some(())?;
            let mut members = IndexSet::empty();
            for item in &list.list {
                members = members.union(&bound(literal(item)?, Operator::Eq)?);
            }
            Some(if list.negated {
                members.complement(UNIVERSE)
            } else {
                members
            })
        }
        // Coordinates are never null.
        Expr::IsNotNull(inner) if is_column(inner, col, max_len) => Some(IndexSet::full(UNIVERSE)),
        Expr::IsNull(inner) if is_column(inner, col, max_len) => Some(IndexSet::empty()),
        Expr::Literal(ScalarValue::Boolean(Some(b)), _) => Some(if *b {
            IndexSet::full(UNIVERSE)
        } else {
            IndexSet::empty()
        }),
        _ => None,
    }
}

/// `col op literal` or `literal op col`.
fn comparison(
    left: &Expr,
    op: Operator,
    right: &Expr,
    col: &str,
    max_len: u64,
) -> Option<IndexSet> {
    let (lit, op) = if is_column(left, col, max_len) {
        (literal(right)?, op)
    } else if is_column(right, col, max_len) {
        (literal(left)?, op.swap()?)
    } else {
        return None;
    };
    match op {
        Operator::NotEq | Operator::IsDistinctFrom => {
            Some(bound(lit, Operator::Eq)?.complement(UNIVERSE))
        }
        Operator::IsNotDistinctFrom => bound(lit, Operator::Eq),
        _ => bound(lit, op),
    }
}

/// The column itself, or a cast of it to a type that holds every index of the axis exactly.
fn is_column(expr: &Expr, col: &str, max_len: u64) -> bool {
    match expr {
        Expr::Column(c) => c.name == col,
        Expr::Cast(c) => {
            exact_cast(c.field.data_type(), max_len) && is_column(&c.expr, col, max_len)
        }
        Expr::TryCast(c) => {
            exact_cast(c.field.data_type(), max_len) && is_column(&c.expr, col, max_len)
        }
        _ => false,
    }
}

/// Can `ty` represent `0..max_len` without loss (so comparing after the cast is comparing the index)?
fn exact_cast(ty: &DataType, max_len: u64) -> bool {
    let fits = |limit: u64| max_len <= limit;
    match ty {
        DataType::Int8 => fits(1 << 7),
        DataType::Int16 => fits(1 << 15),
        DataType::Int32 => fits(1 << 31),
        DataType::Int64 | DataType::UInt64 => true,
        DataType::UInt8 => fits(1 << 8),
        DataType::UInt16 => fits(1 << 16),
        DataType::UInt32 => fits(1 << 32),
        DataType::Float16 => fits(1 << 11),
        DataType::Float32 => fits(1 << 24),
        DataType::Float64 => fits(1 << 53),
        DataType::Decimal128(p, s) | DataType::Decimal256(p, s) => {
            let digits = i32::from(*p) - i32::from(*s);
            (0..=18).contains(&digits) && fits(10u64.pow(digits as u32)) || digits > 18
        }
        _ => false,
    }
}

/// A non-null numeric literal as a real number: `floor`, `ceil` (saturated far outside the universe) and whether it
/// is an integer.
#[derive(Debug, Clone, Copy)]
struct Real {
    floor: i128,
    ceil: i128,
    integral: bool,
}

/// Far outside `0..UNIVERSE` on either side.
const FAR: i128 = 1 << 100;

fn literal(expr: &Expr) -> Option<Real> {
    let Expr::Literal(v, _) = expr else {
        return None;
    };
    let int = |x: i128| {
        Some(Real {
            floor: x,
            ceil: x,
            integral: true,
        })
    };
    match v {
        ScalarValue::Int8(Some(x)) => int((*x).into()),
        ScalarValue::Int16(Some(x)) => int((*x).into()),
        ScalarValue::Int32(Some(x)) => int((*x).into()),
        ScalarValue::Int64(Some(x)) => int((*x).into()),
        ScalarValue::UInt8(Some(x)) => int((*x).into()),
        ScalarValue::UInt16(Some(x)) => int((*x).into()),
        ScalarValue::UInt32(Some(x)) => int((*x).into()),
        ScalarValue::UInt64(Some(x)) => int((*x).into()),
        ScalarValue::Float16(Some(x)) => float(x.to_f64()),
        ScalarValue::Float32(Some(x)) => float(f64::from(*x)),
        ScalarValue::Float64(Some(x)) => float(*x),
        ScalarValue::Decimal128(Some(x), _, s) => decimal(*x, *s),
        _ => None,
    }
}

fn float(x: f64) -> Option<Real> {
    if x.is_nan() {
        // Arrow orders NaN above every number; not worth modelling.
        return None;
    }
    let clamp = |y: f64| {
        if y >= FAR as f64 {
            FAR
        } else if y <= -(FAR as f64) {
            -FAR
        } else {
            y as i128
        }
    };
    Some(Real {
        floor: clamp(x.floor()),
        ceil: clamp(x.ceil()),
        integral: x.is_finite() && x.fract() == 0.0,
    })
}

fn decimal(x: i128, scale: i8) -> Option<Real> {
    if scale <= 0 {
        let v = 10i128
            .checked_pow(u32::from(scale.unsigned_abs()))
            .and_then(|m| x.checked_mul(m));
        let v = v.unwrap_or(if x < 0 { -FAR } else { FAR }).clamp(-FAR, FAR);
        return Some(Real {
            floor: v,
            ceil: v,
            integral: true,
        });
    }
    let m = 10i128.checked_pow(u32::from(scale.unsigned_abs()))?;
    let floor = x.div_euclid(m);
    let integral = x.rem_euclid(m) == 0;
    Some(Real {
        floor,
        ceil: if integral { floor } else { floor + 1 },
        integral,
    })
}

/// `{ c in 0..UNIVERSE : c op lit }`.
fn bound(lit: Real, op: Operator) -> Option<IndexSet> {
    let span = |lo: i128, hi: i128| {
        let clip = |x: i128| x.clamp(0, UNIVERSE as i128) as u64;
        IndexSet::range(clip(lo)..clip(hi))
    };
    Some(match op {
        Operator::Eq if lit.integral => span(lit.floor, lit.floor + 1),
        Operator::Eq => IndexSet::empty(),
        Operator::Lt => span(0, lit.ceil),
        Operator::LtEq => span(0, lit.floor + 1),
        Operator::Gt => span(lit.floor + 1, FAR),
        Operator::GtEq => span(lit.ceil, FAR),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::logical_expr::{col, lit};
    use proptest::prelude::*;
    use std::ops::Not;

    fn columns() -> FilterColumns {
        FilterColumns {
            axes: vec![("i".into(), 10), ("j".into(), 10)],
            file: Some("file".into()),
            per_file: Vec::new(),
            world: false,
        }
    }

    fn set(e: &Expr) -> Option<IndexSet> {
        index_set(e, "i", 10).map(|s| s.clamp(10))
    }

    #[test]
    fn shapes_the_optimizer_hands_over() {
        assert_eq!(set(&col("i").eq(lit(5i64))).unwrap().to_string(), "5");
        assert_eq!(set(&lit(5i64).lt(col("i"))).unwrap().to_string(), "6:10");
        assert_eq!(
            set(&col("i").between(lit(3i64), lit(6i64)))
                .unwrap()
                .to_string(),
            "3:7"
        );
        assert_eq!(
            set(&col("i").not_between(lit(3i64), lit(6i64)))
                .unwrap()
                .to_string(),
            "0:3|7:10"
        );
        assert_eq!(
            set(&col("i").in_list(vec![lit(1i64), lit(7i64), lit(8i64)], false))
                .unwrap()
                .to_string(),
            "1|7:9"
        );
        assert_eq!(
            set(&col("i").in_list(vec![lit(1i64)], true))
                .unwrap()
                .to_string(),
            "0|2:10"
        );
        assert_eq!(
            set(&col("i").not_eq(lit(0i64))).unwrap().to_string(),
            "1:10"
        );
        assert_eq!(
            set(&col("i").gt(lit(2.5f64)).not()).unwrap().to_string(),
            "0:3"
        );
        let cast = Expr::Cast(datafusion::logical_expr::Cast::new(
            Box::new(col("i")),
            DataType::Float64,
        ));
        assert_eq!(
            set(&cast.clone().gt(lit(2.5f64))).unwrap().to_string(),
            "3:10"
        );
        assert_eq!(
            set(&cast.lt_eq(lit(f64::INFINITY))).unwrap().to_string(),
            "0:10"
        );
        assert_eq!(set(&col("i").lt(lit(-3i64))).unwrap().to_string(), "[]");
        assert_eq!(
            set(&col("i").gt(lit(100_000i64))).unwrap().to_string(),
            "[]"
        );
        assert!(set(&col("i").eq(lit(ScalarValue::Int64(None)))).is_none());
        assert!(set(&col("i").gt(lit(f64::NAN))).is_none());
        assert!(set(&(col("i") + lit(1i64)).eq(lit(5i64))).is_none());
    }

    #[test]
    fn classification() {
        let c = columns();
        assert!(matches!(
            c.classify(&col("i").eq(lit(1i64))),
            FilterKind::Axis { axis: 0, .. }
        ));
        assert!(matches!(
            c.classify(&col("j").gt(lit(1i64))),
            FilterKind::Axis { axis: 1, .. }
        ));
        assert_eq!(c.classify(&col("file").like(lit("%a%"))), FilterKind::File);
        assert_eq!(
            c.classify(&col("i").eq(lit(1i64)).or(col("j").eq(lit(2i64)))),
            FilterKind::Inexact
        );
        assert_eq!(
            c.classify(&(col("i") % lit(2i64)).eq(lit(0i64))),
            FilterKind::Inexact
        );
        assert_eq!(
            c.classify(&col("i").eq(lit(1i64)).or(col("file").eq(lit("x")))),
            FilterKind::Inexact
        );
        assert_eq!(
            c.classify(&col("value").gt(lit(1i64))),
            FilterKind::Unsupported
        );
        assert_eq!(
            c.classify(&col("value").gt(col("i"))),
            FilterKind::Unsupported
        );
    }

    /// A random predicate tree over `i`, built from the shapes the converter claims to handle.
    fn arb_pred() -> impl Strategy<Value = Expr> {
        let ops = prop::sample::select(vec![
            Operator::Eq,
            Operator::NotEq,
            Operator::Lt,
            Operator::LtEq,
            Operator::Gt,
            Operator::GtEq,
        ]);
        let leaf = prop_oneof![
            (ops.clone(), -3i64..14, any::<bool>()).prop_map(|(op, v, flip)| if flip {
                Expr::BinaryExpr(BinaryExpr::new(Box::new(lit(v)), op, Box::new(col("i"))))
            } else {
                Expr::BinaryExpr(BinaryExpr::new(Box::new(col("i")), op, Box::new(lit(v))))
            }),
            (ops, -30i32..140).prop_map(|(op, v)| {
                let c = Expr::Cast(datafusion::logical_expr::Cast::new(
                    Box::new(col("i")),
                    DataType::Float64,
                ));
                Expr::BinaryExpr(BinaryExpr::new(
                    Box::new(c),
                    op,
                    Box::new(lit(f64::from(v) / 10.0)),
                ))
            }),
            (-3i64..14, -3i64..14, any::<bool>()).prop_map(|(a, b, neg)| if neg {
                col("i").not_between(lit(a), lit(b))
            } else {
                col("i").between(lit(a), lit(b))
            }),
            (prop::collection::vec(-2i64..12, 0..6), any::<bool>())
                .prop_map(|(v, neg)| col("i").in_list(v.into_iter().map(lit).collect(), neg)),
        ];
        leaf.prop_recursive(3, 16, 2, |inner| {
            prop_oneof![
                (inner.clone(), inner.clone()).prop_map(|(a, b)| a.and(b)),
                (inner.clone(), inner.clone()).prop_map(|(a, b)| a.or(b)),
                inner.prop_map(|a| a.not()),
            ]
        })
    }

    /// Brute force: DataFusion evaluates the predicate on every index.
    fn evaluate(e: &Expr, n: i64) -> Vec<bool> {
        use datafusion::arrow::array::{Array, BooleanArray, Int64Array, RecordBatch};
        use datafusion::arrow::datatypes::{Field, Schema};
        use datafusion::common::DFSchema;
        use std::sync::Arc;
        let schema = Arc::new(Schema::new(vec![Field::new("i", DataType::Int64, false)]));
        let df = DFSchema::try_from(Arc::clone(&schema)).unwrap();
        let state = datafusion::prelude::SessionContext::new().state();
        let phys = state.create_physical_expr(e.clone(), &df).unwrap();
        let batch =
            RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from_iter_values(0..n))])
                .unwrap();
        let out = phys
            .evaluate(&batch)
            .unwrap()
            .into_array(n as usize)
            .unwrap();
        let b = out.as_any().downcast_ref::<BooleanArray>().unwrap();
        (0..n as usize)
            .map(|k| b.is_valid(k) && b.value(k))
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]
        #[test]
        fn conversion_matches_brute_force(e in arb_pred()) {
            let n = 10;
            let got = index_set(&e, "i", n as u64).expect("every generated shape converts").clamp(n as u64);
            let want = evaluate(&e, n);
            for (k, w) in want.iter().enumerate() {
                prop_assert_eq!(got.contains(k as u64), *w, "index {} of {}", k, e);
            }
        }
    }
}
