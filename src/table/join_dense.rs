//! Dense joins on coordinate keys: a physical optimizer rule that turns a hash join on several integer keys with
//! small known ranges on the build side (`b.i = a.i AND b.j = a.j AND b.k = a.k`) into a join on one linear voxel key
//! `(i - i0) + ni·(j - j0) + ni·nj·(k - k0)`, which DataFusion's `HashJoinExec` addresses directly (its perfect-hash
//! `ArrayMap` path for one dense integer key) instead of hashing three columns per row. The original equalities
//! stay as the join's filter, so the answer never depends on the key (a probe key outside the build side's ranges
//! can share a linear key with a build row only to be rejected by the filter; NULL keys give a NULL linear key and
//! match nothing, as before).
//!
//! The rule runs after DataFusion's own rules (the join's mode, distribution and dynamic filter are DataFusion's
//! choices, made on the original keys) and only with `voxelscan.dense_joins` on.
//!
//! The hash join's dynamic filter is then on the linear key: its bounds give the slowest key axis, its key list
//! (small build sides) the exact voxels — [`super::join_filter`] decodes both for the probe's voxel scan.

use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::common::Statistics;
use datafusion::common::config::ConfigOptions;
use datafusion::common::stats::Precision;
use datafusion::common::tree_node::{Transformed, TransformedResult, TreeNode};
use datafusion::common::{JoinSide, NullEquality, Result as DfResult, ScalarValue};
use datafusion::datasource::physical_plan::FileScanConfig;
use datafusion::datasource::source::DataSourceExec;
use datafusion::execution::SessionStateBuilder;
use datafusion::logical_expr::Operator;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::expressions::{BinaryExpr, CastExpr, Column, lit};
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::Partitioning;
use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
use datafusion::physical_plan::execution_plan::InvariantLevel;
use datafusion::physical_plan::filter::FilterExec;
use datafusion::physical_plan::joins::utils::{ColumnIndex, JoinFilter};
use datafusion::physical_plan::joins::{HashJoinExec, PartitionMode};
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::repartition::RepartitionExec;
use datafusion::physical_plan::union::InterleaveExec;
use datafusion::physical_plan::{ExecutionPlan, StatisticsArgs, StatisticsContext};
use datafusion::prelude::SessionConfig;

use super::config::VoxelscanOptions;
use super::scan::VoxelSource;

/// Largest product of the key extents turned into one key (beyond it the build keys are too sparse for a direct map).
const MAX_KEY_SPACE: i64 = 1 << 32;

/// Join settings of a voxel session, each changed only while it is at DataFusion's default:
/// - a hash join's build keys reach the probe scan as a list (from which the voxel scan reads exactly those voxels)
///   up to 65 536 keys (DataFusion: 150), an atlas region's size;
/// - build sides up to 32 MiB or 4 Mi rows (DataFusion: 1 MiB, 128 Ki rows) are collected once and shared by every
///   probe partition: an atlas (a few MiB) is then joined to a run without repartitioning the run's voxels.
pub fn tune(config: &mut SessionConfig) {
    let o = &mut config.options_mut().optimizer;
    if o.hash_join_single_partition_threshold == 1024 * 1024 {
        o.hash_join_single_partition_threshold = 32 << 20;
    }
    if o.hash_join_single_partition_threshold_rows == 128 * 1024 {
        o.hash_join_single_partition_threshold_rows = 4 << 20;
    }
    if o.hash_join_inlist_pushdown_max_distinct_values == 150 {
        o.hash_join_inlist_pushdown_max_distinct_values = 1 << 16;
    }
    if o.hash_join_inlist_pushdown_max_size == 128 * 1024 {
        o.hash_join_inlist_pushdown_max_size = 1 << 20;
    }
}

/// Add the rule to `builder` once. DataFusion appends a builder's rules to its own, so it runs last: distribution
/// and sorting were chosen on the original keys (the rows are partitioned on them, which stays right for the linear
/// key), and the join's dynamic filter was already handed to the probe scan.
pub fn add_rule(builder: &mut SessionStateBuilder) {
    let rules = builder
        .physical_optimizer_rules()
        .get_or_insert_with(Vec::new);
    if rules.iter().all(|r| r.name() != DenseVoxelJoin.name()) {
        rules.push(Arc::new(DenseVoxelJoin));
    }
}

/// The rule (see the module comment).
#[derive(Debug, Default)]
pub struct DenseVoxelJoin;

impl PhysicalOptimizerRule for DenseVoxelJoin {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        config: &ConfigOptions,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        if !VoxelscanOptions::from_config(config).dense_joins {
            return Ok(plan);
        }
        let rewritten = Arc::clone(&plan)
            .transform_up(|p| match p.downcast_ref::<HashJoinExec>() {
                Some(join) => Ok(match dense(join)? {
                    Some(new) => Transformed::yes(new),
                    None => Transformed::no(p),
                }),
                None => Ok(Transformed::no(p)),
            })
            .data()?;
        // A join above a rehashed one may have relied on its output being hashed on the original keys (two joins
        // on the same keys share one partitioning): then keep DataFusion's plan.
        Ok(if executable(&rewritten) {
            rewritten
        } else {
            plan
        })
    }

    fn name(&self) -> &str {
        "voxelscan_dense_join"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// Every node's invariants hold for execution (children co-partitioned where a node needs them to be), and no
/// union interleaves partitions by their hashing (which a rehashed side would no longer share).
fn executable(plan: &Arc<dyn ExecutionPlan>) -> bool {
    plan.downcast_ref::<InterleaveExec>().is_none()
        && plan.check_invariants(InvariantLevel::Executable).is_ok()
        && plan.children().into_iter().all(executable)
}

/// One key pair: the columns, and the range `lo..=hi` the linear key gives room to: the build side's range, widened
/// to the probe side's when that is known and to 0 below (so a voxel scan on the probe side can decode the key, see
/// [`super::join_filter`]).
struct KeyPair {
    left: Column,
    right: Column,
    lo: i64,
    hi: i64,
    /// Both sides' keys are coordinates of voxel scans (through filters, projections and repartitions), whose
    /// exact ranges `lo..=hi` covers: no key can fall outside it.
    guaranteed: bool,
}

/// The join on one linear key, when `join` qualifies.
fn dense(join: &HashJoinExec) -> DfResult<Option<Arc<dyn ExecutionPlan>>> {
    if join.on().len() < 2
        || join.filter().is_some()
        || join.null_equality() != NullEquality::NullEqualsNothing
        || join.null_aware
    {
        return Ok(None);
    }
    let Some(pairs) = key_pairs(join)? else {
        return Ok(None);
    };
    let mut stride = 1i64;
    let mut strides = Vec::with_capacity(pairs.len());
    for p in &pairs {
        strides.push(stride);
        let extent = p.hi.checked_sub(p.lo).and_then(|e| e.checked_add(1));
        stride = match extent.and_then(|e| stride.checked_mul(e)) {
            Some(s) if s <= MAX_KEY_SPACE => s,
            _ => return Ok(None),
        };
    }
    let key = |side: JoinSide| -> Arc<dyn PhysicalExpr> {
        let terms = pairs.iter().zip(&strides).map(|(p, &s)| {
            let col = match side {
                JoinSide::Left => p.left.clone(),
                _ => p.right.clone(),
            };
            term(col, p.lo, s)
        });
        terms
            .reduce(|a, b| Arc::new(BinaryExpr::new(a, Operator::Plus, b)))
            .unwrap_or_else(|| lit(0i64))
    };
    let on = vec![(key(JoinSide::Left), key(JoinSide::Right))];
    // A partitioned join needs both sides hashed on its key: hash them on the linear key instead.
    let children = match join.partition_mode() {
        PartitionMode::Partitioned => {
            let (Some(l), Some(r)) = (
                rehash(join.left(), &on[0].0),
                rehash(join.right(), &on[0].1),
            ) else {
                return Ok(None);
            };
            vec![l?, r?]
        }
        _ => vec![Arc::clone(join.left()), Arc::clone(join.right())],
    };
    // Keys known to lie within the ranges make the linear key one-to-one: the equalities are then implied.
    let filter = if pairs.iter().all(|p| p.guaranteed) {
        None
    } else {
        Some(equalities(join, &pairs)?)
    };
    let new = join
        .builder()
        .with_on(on)
        .with_filter(filter)
        .with_new_children(children)?
        .build_exec()?;
    Ok(Some(new))
}

/// `plan` hash-partitioned on `key` instead, when it is a hash repartition.
fn rehash(
    plan: &Arc<dyn ExecutionPlan>,
    key: &Arc<dyn PhysicalExpr>,
) -> Option<DfResult<Arc<dyn ExecutionPlan>>> {
    let r = plan.downcast_ref::<RepartitionExec>()?;
    let Partitioning::Hash(_, n) = r.partitioning() else {
        return None;
    };
    let made = RepartitionExec::try_new(
        Arc::clone(r.input()),
        Partitioning::Hash(vec![Arc::clone(key)], *n),
    );
    Some(made.map(|m| {
        let m = if r.preserve_order() {
            m.with_preserve_order()
        } else {
            m
        };
        Arc::new(m) as Arc<dyn ExecutionPlan>
    }))
}

/// `(CAST(col AS BIGINT) - lo) * stride`, with the neutral parts left out.
fn term(col: Column, lo: i64, stride: i64) -> Arc<dyn PhysicalExpr> {
    let mut e: Arc<dyn PhysicalExpr> =
        Arc::new(CastExpr::new(Arc::new(col), DataType::Int64, None));
    if lo != 0 {
        e = Arc::new(BinaryExpr::new(e, Operator::Minus, lit(lo)));
    }
    if stride != 1 {
        e = Arc::new(BinaryExpr::new(e, Operator::Multiply, lit(stride)));
    }
    e
}

/// The key pairs, when every key is an integer column on both sides and the build side knows each key's range.
fn key_pairs(join: &HashJoinExec) -> DfResult<Option<Vec<KeyPair>>> {
    let (left, right) = (join.left().schema(), join.right().schema());
    let stats = stats_of(join.left())?;
    let probe = stats_of(join.right())?;
    let mut pairs = Vec::new();
    for (l, r) in join.on() {
        let (Some(lc), Some(rc)) = (l.downcast_ref::<Column>(), r.downcast_ref::<Column>()) else {
            return Ok(None);
        };
        let small_int = |t: &DataType| {
            matches!(
                t,
                DataType::Int8
                    | DataType::Int16
                    | DataType::Int32
                    | DataType::Int64
                    | DataType::UInt8
                    | DataType::UInt16
                    | DataType::UInt32
            )
        };
        if !small_int(left.field(lc.index()).data_type())
            || !small_int(right.field(rc.index()).data_type())
        {
            return Ok(None);
        }
        let Some(cs) = stats.column_statistics.get(lc.index()) else {
            return Ok(None);
        };
        let (Some(lo), Some(hi)) = (
            cs.min_value.get_value().and_then(as_i64),
            cs.max_value.get_value().and_then(as_i64),
        ) else {
            return Ok(None);
        };
        if hi < lo {
            return Ok(None);
        }
        let (mut lo, mut hi) = (lo.min(0), hi);
        let traced = |plan: &Arc<dyn ExecutionPlan>, col: &Column| scan_bounds(plan, col.index());
        let (tl, tr) = (traced(join.left(), lc), traced(join.right(), rc));
        if let Some(ps) = probe.column_statistics.get(rc.index()) {
            if let Some(p) = ps.min_value.get_value().and_then(as_i64) {
                lo = lo.min(p);
            }
            if let Some(p) = ps.max_value.get_value().and_then(as_i64) {
                hi = hi.max(p);
            }
        }
        let within = |t: Option<(i64, i64)>| t.is_some_and(|(a, b)| lo <= a && b <= hi);
        pairs.push(KeyPair {
            left: lc.clone(),
            right: rc.clone(),
            lo,
            hi,
            guaranteed: within(tl) && within(tr),
        });
    }
    Ok(Some(pairs))
}

/// The exact range of column `col` of `plan` when it is a coordinate read by a voxel scan and only passed along
/// (filtered, projected as is, repartitioned) on the way up; `None` otherwise.
fn scan_bounds(plan: &Arc<dyn ExecutionPlan>, col: usize) -> Option<(i64, i64)> {
    if let Some(scan) = plan.downcast_ref::<DataSourceExec>() {
        let config = scan.data_source().downcast_ref::<FileScanConfig>()?;
        config.file_source().downcast_ref::<VoxelSource>()?;
        let stats = stats_of(plan).ok()?;
        let cs = stats.column_statistics.get(col)?;
        let (Precision::Exact(lo), Precision::Exact(hi)) = (&cs.min_value, &cs.max_value) else {
            return None;
        };
        return Some((as_i64(lo)?, as_i64(hi)?));
    }
    if let Some(f) = plan.downcast_ref::<FilterExec>() {
        let col = match f.projection() {
            Some(p) => *p.get(col)?,
            None => col,
        };
        return scan_bounds(f.input(), col);
    }
    if let Some(p) = plan.downcast_ref::<ProjectionExec>() {
        let c = p.expr().get(col)?.expr.downcast_ref::<Column>()?;
        return scan_bounds(p.input(), c.index());
    }
    let passes = plan.downcast_ref::<RepartitionExec>().is_some()
        || plan.downcast_ref::<CoalescePartitionsExec>().is_some();
    match plan.children().as_slice() {
        [input] if passes => scan_bounds(input, col),
        _ => None,
    }
}

fn stats_of(plan: &Arc<dyn ExecutionPlan>) -> DfResult<Arc<Statistics>> {
    StatisticsContext::new().compute(plan.as_ref(), &StatisticsArgs::new())
}

fn as_i64(v: &ScalarValue) -> Option<i64> {
    match v.cast_to(&DataType::Int64).ok()? {
        ScalarValue::Int64(Some(x)) => Some(x),
        _ => None,
    }
}

/// The original equalities as a join filter over `[left keys…, right keys…]`.
fn equalities(join: &HashJoinExec, pairs: &[KeyPair]) -> DfResult<JoinFilter> {
    let (left, right) = (join.left().schema(), join.right().schema());
    let n = pairs.len();
    let mut fields = Vec::with_capacity(2 * n);
    let mut indices = Vec::with_capacity(2 * n);
    for (side, schema) in [(JoinSide::Left, &left), (JoinSide::Right, &right)] {
        for (k, p) in pairs.iter().enumerate() {
            let col = if side == JoinSide::Left {
                &p.left
            } else {
                &p.right
            };
            let f = schema.field(col.index());
            let name = format!(
                "{}_{k}_{}",
                f.name(),
                if side == JoinSide::Left { "l" } else { "r" }
            );
            fields.push(Field::new(name, f.data_type().clone(), f.is_nullable()));
            indices.push(ColumnIndex {
                index: col.index(),
                side,
            });
        }
    }
    let schema = Arc::new(Schema::new(fields));
    let eq = (0..n).map(|k| -> Arc<dyn PhysicalExpr> {
        let l = Arc::new(Column::new(schema.field(k).name(), k));
        let r = Arc::new(Column::new(schema.field(n + k).name(), n + k));
        Arc::new(BinaryExpr::new(l, Operator::Eq, r))
    });
    let expr = eq
        .reduce(|a, b| Arc::new(BinaryExpr::new(a, Operator::And, b)))
        .unwrap_or_else(|| lit(true));
    Ok(JoinFilter::new(expr, indices, schema))
}
