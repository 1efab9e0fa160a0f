//! The physical optimizer rule that puts [`DenseAggregateExec`] in place of `AggregateExec` nodes whose group keys
//! all have known, small integer ranges (`SET voxelscan.dense_aggregates = false` turns it off).
//!
//! Where a key's range comes from, walking down from the aggregate's input:
//! - through projections, filters, repartitions, coalesces, sorts, limits and hash joins (their output values of a
//!   column are a subset of an input's) to a node with **exact** statistics for it: a voxel scan's coordinates,
//!   another dense aggregate's keys, any source with exact min/max (a join's own output statistics are estimates,
//!   so the walk goes through the join to its inputs); an integer per-file column of a voxel scan (`run`, `echo`)
//!   by its values over the files the scan reads;
//! - integer casts of such a column keep the range when it fits the target type;
//! - otherwise, for 8- and 16-bit integer keys (label images), the type's whole range: its slots are few enough.
//!
//! A 16-bit key known only by its type is *mapped* (its values numbered as they appear, groups allocated per value
//! seen; see [`super::aggregate`]); so is, when all keys' groups are too many to allocate up front, the widest key of
//! at most 65 537 slots, if the other keys' groups fit on their own.
//!
//! A key whose range is unknown at plan time leaves the aggregate to DataFusion, as do DISTINCT, ordered aggregates,
//! grouping sets, aggregates without a `GroupsAccumulator`, TopK aggregation and sorted (streaming) input. So does a
//! dense state above [`MAX_GROUPS`] groups or the memory limit ([`state_limit`]), or far sparser than the input rows.

use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Schema};
use datafusion::common::config::ConfigOptions;
use datafusion::common::stats::Precision;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{JoinType, Result as DfResult, ScalarValue};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::expressions::{CastExpr, Column};
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::aggregates::{AggregateExec, AggregateMode};
use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
use datafusion::physical_plan::filter::FilterExec;
use datafusion::physical_plan::joins::HashJoinExec;
use datafusion::physical_plan::limit::{GlobalLimitExec, LocalLimitExec};
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::repartition::RepartitionExec;
use datafusion::physical_plan::sorts::sort::SortExec;
use datafusion::physical_plan::sorts::sort_preserving_merge::SortPreservingMergeExec;
use datafusion::physical_plan::{ExecutionPlan, InputOrderMode, StatisticsArgs, StatisticsContext};

use super::aggregate::{
    DenseAggregateExec, KeyRange, MAX_MAPPED_SLOTS, block_count, state_bytes_per_group,
};
use super::config::VoxelscanOptions;
use super::scan_aggregate::{FileKey, ScanAggregateExec, ScanColumn, voxel_scan};

/// At most this many dense groups per node (DuckDB's perfect hash aggregate stops at a similar size).
pub const MAX_GROUPS: u64 = 1 << 24;

/// How much deeper than the aggregate the range walk looks.
const MAX_DEPTH: usize = 32;

/// The dense-aggregate rule.
#[derive(Debug, Default)]
pub struct DenseAggregateRule;

impl PhysicalOptimizerRule for DenseAggregateRule {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        config: &ConfigOptions,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        if !VoxelscanOptions::from_config(config).dense_aggregates {
            return Ok(plan);
        }
        let limit = state_limit();
        plan.transform_up(|node| {
            let Some(agg) = node.downcast_ref::<AggregateExec>() else {
                return Ok(Transformed::no(node));
            };
            match dense_version(agg, limit)? {
                Some(dense) => Ok(Transformed::yes(Arc::new(dense) as Arc<dyn ExecutionPlan>)),
                None => Ok(Transformed::no(node)),
            }
        })
        .map(|t| t.data)
    }

    fn name(&self) -> &str {
        "dense_aggregate"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// The most bytes of dense state all partitions of one node may hold: an eighth of the result budget
/// ([`crate::memory::result_budget`]: physical memory, an address-space limit or `VOXELSCAN_MAX_RESULT_BYTES`).
pub fn state_limit() -> u64 {
    crate::memory::result_budget().map_or(1 << 30, |b| b / 8)
}

/// `agg` as a dense aggregate, or `None` when it must stay as it is.
fn dense_version(agg: &AggregateExec, limit: u64) -> DfResult<Option<DenseAggregateExec>> {
    if !shape_supported(agg) {
        return Ok(None);
    }
    let input = agg.input();
    let schema = input.schema();
    let mut ranges = Vec::new();
    for (expr, _) in agg.group_expr().expr() {
        match key_range(input, expr, &schema) {
            Some(r) => ranges.push(r),
            None => return Ok(None),
        }
    }
    // At most one key is mapped: the first 16-bit key known only by its type.
    let mut mapped = false;
    for r in &mut ranges {
        r.mapped &= !mapped;
        mapped |= r.mapped;
    }
    if !fits(agg, block_count(&ranges), limit) {
        // Too many slots to allocate up front: number the widest key's values as they appear instead (an int16
        // label column: 65 536 slots, a hundred used), if the other keys' groups fit on their own.
        let Some(wide) = widest_mappable(&ranges).filter(|_| !mapped) else {
            return Ok(None);
        };
        ranges[wide].mapped = true;
        if !fits(agg, block_count(&ranges), limit) {
            return Ok(None);
        }
    }
    DenseAggregateExec::try_new(agg.clone(), ranges).map(Some)
}

/// Whether `groups` dense groups (all of a node's, or one block of a mapped key's) are within [`MAX_GROUPS`], the
/// state limit over all partitions, and not far sparser than the input rows.
fn fits(agg: &AggregateExec, groups: Option<u64>, limit: u64) -> bool {
    let Some(groups) = groups.filter(|&g| g <= MAX_GROUPS) else {
        return false;
    };
    let input = agg.input();
    let partitions = input.properties().partitioning.partition_count().max(1) as u64;
    let bytes = groups
        .saturating_mul(state_bytes_per_group(agg) as u64)
        .saturating_mul(partitions);
    bytes <= limit && !too_sparse(input, groups)
}

/// The key with the most slots, when it has more than one and no more than [`MAX_MAPPED_SLOTS`].
fn widest_mappable(ranges: &[KeyRange]) -> Option<usize> {
    let (k, slots) = ranges
        .iter()
        .enumerate()
        .filter_map(|(k, r)| Some((k, r.slots()?)))
        .max_by_key(|&(_, s)| s)?;
    (slots > 1 && slots <= MAX_MAPPED_SLOTS).then_some(k)
}

/// Plain GROUP BY with aggregates that all have a `GroupsAccumulator`, nothing order-dependent.
fn shape_supported(agg: &AggregateExec) -> bool {
    let group_by = agg.group_expr();
    !matches!(agg.mode(), AggregateMode::PartialReduce)
        && group_by.is_single()
        && !group_by.expr().is_empty()
        && agg.limit_options().is_none()
        && matches!(agg.input_order_mode(), InputOrderMode::Linear)
        && agg.properties().output_ordering().is_none()
        && agg.aggr_expr().iter().all(|a| {
            !a.is_distinct() && a.order_bys().is_empty() && a.groups_accumulator_supported()
        })
}

/// Far more dense groups than input rows: most slots would stay empty and hashing is cheaper.
fn too_sparse(input: &Arc<dyn ExecutionPlan>, groups: u64) -> bool {
    let Ok(stats) = StatisticsContext::new().compute(input.as_ref(), &StatisticsArgs::new()) else {
        return false;
    };
    match stats.num_rows {
        Precision::Exact(n) | Precision::Inexact(n) => groups > (n as u64).saturating_mul(4) + 4096,
        Precision::Absent => false,
    }
}

/// The range of group key `expr` over `input` (whose schema is `schema`).
pub fn key_range(
    input: &Arc<dyn ExecutionPlan>,
    expr: &Arc<dyn PhysicalExpr>,
    schema: &Schema,
) -> Option<KeyRange> {
    let ty = expr.data_type(schema).ok()?;
    if !is_integer(&ty) {
        return None;
    }
    let nullable = expr.nullable(schema).ok()?;
    let (min, max, by_type) = match expr_bounds(input, expr, 0) {
        Some((min, max)) => (min, max, false),
        None => {
            let (min, max) = type_bounds(&ty)?;
            (min, max, true)
        }
    };
    // A 16-bit key known only by its type (an atlas's labels: 65 536 slots, a hundred used) is mapped: groups
    // are allocated for the values that occur, not for the whole type.
    let mapped = by_type && max - min >= 1 << 8;
    (min <= max).then_some(KeyRange {
        min,
        max,
        nullable,
        mapped,
    })
}

fn is_integer(ty: &DataType) -> bool {
    matches!(
        ty,
        DataType::Int8
            | DataType::Int16
            | DataType::Int32
            | DataType::Int64
            | DataType::UInt8
            | DataType::UInt16
            | DataType::UInt32
            | DataType::UInt64
    )
}

/// The whole range of a small integer type (label images are usually 8 or 16 bits).
fn type_bounds(ty: &DataType) -> Option<(i64, i64)> {
    match ty {
        DataType::Int8 => Some((i8::MIN.into(), i8::MAX.into())),
        DataType::UInt8 => Some((0, u8::MAX.into())),
        DataType::Int16 => Some((i16::MIN.into(), i16::MAX.into())),
        DataType::UInt16 => Some((0, u16::MAX.into())),
        _ => None,
    }
}

/// The values `ty` can hold, as i64 bounds (`None` for non-integers).
fn type_limits(ty: &DataType) -> Option<(i128, i128)> {
    Some(match ty {
        DataType::Int8 => (i8::MIN.into(), i8::MAX.into()),
        DataType::Int16 => (i16::MIN.into(), i16::MAX.into()),
        DataType::Int32 => (i32::MIN.into(), i32::MAX.into()),
        DataType::Int64 => (i64::MIN.into(), i64::MAX.into()),
        DataType::UInt8 => (0, u8::MAX.into()),
        DataType::UInt16 => (0, u16::MAX.into()),
        DataType::UInt32 => (0, u32::MAX.into()),
        DataType::UInt64 => (0, u64::MAX.into()),
        _ => return None,
    })
}

/// Bounds of an expression's values: a column's, or a cast's of one when they fit the target type.
fn expr_bounds(
    plan: &Arc<dyn ExecutionPlan>,
    expr: &Arc<dyn PhysicalExpr>,
    depth: usize,
) -> Option<(i64, i64)> {
    if depth > MAX_DEPTH {
        return None;
    }
    if let Some(c) = expr.downcast_ref::<Column>() {
        return column_bounds(plan, c.index(), depth + 1);
    }
    if let Some(c) = expr.downcast_ref::<CastExpr>() {
        let (min, max) = expr_bounds(plan, c.expr(), depth + 1)?;
        let (lo, hi) = type_limits(c.cast_type())?;
        return (lo <= min.into() && i128::from(max) <= hi).then_some((min, max));
    }
    None
}

/// Bounds of column `col` of `plan`'s output.
fn column_bounds(plan: &Arc<dyn ExecutionPlan>, col: usize, depth: usize) -> Option<(i64, i64)> {
    if depth > MAX_DEPTH {
        return None;
    }
    if let Some(d) = plan.downcast_ref::<DenseAggregateExec>() {
        return d.ranges().get(col).map(|r| (r.min, r.max));
    }
    if let Some(s) = plan.downcast_ref::<ScanAggregateExec>() {
        return s.key_bounds(col);
    }
    if let Some(a) = plan.downcast_ref::<AggregateExec>() {
        let group_by = a.group_expr();
        if !group_by.is_single() {
            return None;
        }
        let (e, _) = group_by.expr().get(col)?;
        return expr_bounds(a.input(), e, depth);
    }
    if let Some(p) = plan.downcast_ref::<ProjectionExec>() {
        return expr_bounds(p.input(), &p.expr().get(col)?.expr, depth);
    }
    if let Some(f) = plan.downcast_ref::<FilterExec>() {
        let col = match f.projection() {
            Some(p) => *p.get(col)?,
            None => col,
        };
        return column_bounds(f.input(), col, depth + 1);
    }
    if let Some(j) = plan.downcast_ref::<HashJoinExec>() {
        return join_bounds(j, col, depth);
    }
    if is_pass_through(plan) {
        let child = plan.children().into_iter().next()?;
        return column_bounds(child, col, depth + 1);
    }
    per_file_bounds(plan, col).or_else(|| exact_statistics(plan, col))
}

/// Bounds of an integer per-file column of a voxel scan (`run`, `echo`, …): the smallest and largest value over the
/// files it reads.
fn per_file_bounds(plan: &Arc<dyn ExecutionPlan>, col: usize) -> Option<(i64, i64)> {
    let (config, source, columns) = voxel_scan(plan.as_ref())?;
    let ScanColumn::PerFile(c) = columns.get(col)? else {
        return None;
    };
    FileKey::new(config, source, *c).ok()??.integer_bounds()
}

/// Nodes whose output rows are (a subset of) their single input's, columns unchanged.
fn is_pass_through(plan: &Arc<dyn ExecutionPlan>) -> bool {
    plan.downcast_ref::<RepartitionExec>().is_some()
        || plan.downcast_ref::<CoalescePartitionsExec>().is_some()
        || plan.downcast_ref::<SortExec>().is_some()
        || plan.downcast_ref::<SortPreservingMergeExec>().is_some()
        || plan.downcast_ref::<GlobalLimitExec>().is_some()
        || plan.downcast_ref::<LocalLimitExec>().is_some()
}

/// A hash join's output column comes from one input; its non-null values are that input's (NULLs of outer joins
/// are accounted for by the key's nullability).
fn join_bounds(j: &HashJoinExec, col: usize, depth: usize) -> Option<(i64, i64)> {
    let col = match &j.projection {
        Some(p) => *p.get(col)?,
        None => col,
    };
    let left_width = j.left().schema().fields().len();
    let from_right_only = matches!(
        j.join_type(),
        JoinType::RightSemi | JoinType::RightAnti | JoinType::RightMark
    );
    let from_left_only = matches!(
        j.join_type(),
        JoinType::LeftSemi | JoinType::LeftAnti | JoinType::LeftMark
    );
    if from_right_only {
        return column_bounds(j.right(), col, depth + 1);
    }
    if col < left_width {
        return column_bounds(j.left(), col, depth + 1);
    }
    if from_left_only {
        // The mark column of a mark join is boolean: never a dense key.
        return None;
    }
    column_bounds(j.right(), col - left_width, depth + 1)
}

/// Exact min/max from the plan's statistics (a voxel scan's coordinates have them).
fn exact_statistics(plan: &Arc<dyn ExecutionPlan>, col: usize) -> Option<(i64, i64)> {
    let stats = StatisticsContext::new()
        .compute(plan.as_ref(), &StatisticsArgs::new())
        .ok()?;
    let c = stats.column_statistics.get(col)?;
    match (&c.min_value, &c.max_value) {
        (Precision::Exact(lo), Precision::Exact(hi)) => Some((as_i64(lo)?, as_i64(hi)?)),
        _ => None,
    }
}

fn as_i64(v: &ScalarValue) -> Option<i64> {
    match v {
        ScalarValue::Int8(Some(x)) => Some((*x).into()),
        ScalarValue::Int16(Some(x)) => Some((*x).into()),
        ScalarValue::Int32(Some(x)) => Some((*x).into()),
        ScalarValue::Int64(Some(x)) => Some(*x),
        ScalarValue::UInt8(Some(x)) => Some((*x).into()),
        ScalarValue::UInt16(Some(x)) => Some((*x).into()),
        ScalarValue::UInt32(Some(x)) => Some((*x).into()),
        ScalarValue::UInt64(Some(x)) => i64::try_from(*x).ok(),
        _ => None,
    }
}
