//! Dense (perfect-hash) aggregation: GROUP BY on integer keys whose ranges are known at plan time aggregates into
//! directly indexed groups. The group of a row is the linear index of its keys within their ranges (first key
//! slowest), so no key is hashed or compared; each aggregate is DataFusion's own `GroupsAccumulator`, so answers are
//! DataFusion's. DuckDB's perfect hash aggregate is the model.
//!
//! A key whose range is wide but holds few distinct values (an int16 label column: 65 536 possible labels, a hundred
//! used) can instead be **mapped**: its values are numbered in order of first appearance through a direct table of
//! its slots, and the group of a row is `ordinal × (groups of the other keys) + their linear index`, so state is
//! allocated per value seen, block by block (DuckDB does the same for its perfect hash aggregate's wide keys through
//! a dictionary). At most one key per node is mapped.
//!
//! [`DenseAggregateExec`] stands in for one `AggregateExec` node (any mode but `PartialReduce`): same schema, same
//! partitioning and input requirements, same answers. A `Partial` node emits the state of the groups it saw, a
//! `Final` node merges such states, a `Single` node does both. The rule choosing it is in
//! [`super::aggregate_rule`].

use std::fmt;
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, Int64Array, PrimitiveArray, RecordBatch, UInt64Array,
};
use datafusion::arrow::compute::{cast, take};
use datafusion::arrow::datatypes::{DataType, Int64Type, SchemaRef};
use datafusion::common::{DataFusionError, Result as DfResult};
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryReservation};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::{EmitTo, GroupsAccumulator};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::InputDistributionRequirements;
use datafusion::physical_plan::aggregates::{
    AggregateExec, AggregateInputMode, AggregateOutputMode, aggregate_expressions,
};
use datafusion::physical_plan::execution_plan::{ChildrenPropertiesMode, ReplaceChildrenOptions};
use datafusion::physical_plan::metrics::{BaselineMetrics, ExecutionPlanMetricsSet, MetricsSet};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties};
use futures::StreamExt;

/// The values one group key can take: `min..=max`, plus NULL when the key is nullable (NULL is the last slot).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KeyRange {
    pub min: i64,
    pub max: i64,
    pub nullable: bool,
    /// The key's slots are numbered in order of first appearance at run time (groups allocated per value seen)
    /// instead of all being allocated up front. At most [`MAX_MAPPED_SLOTS`] slots.
    #[serde(default)]
    pub mapped: bool,
}

/// The most slots a mapped key may have: its direct table (4 bytes a slot) stays at 256 KiB, an int16 or uint16
/// column's whole range plus NULL.
pub const MAX_MAPPED_SLOTS: u64 = (1 << 16) + 1;

impl KeyRange {
    /// Number of directly indexed slots: the values, plus one for NULL. `None` when it does not fit a `u64`.
    pub fn slots(&self) -> Option<u64> {
        let width = u64::try_from(i128::from(self.max) - i128::from(self.min)).ok()?;
        width.checked_add(1 + u64::from(self.nullable))
    }
}

/// The number of groups of `ranges` (product of slots), `None` on overflow or an empty range.
pub fn group_count(ranges: &[KeyRange]) -> Option<u64> {
    ranges
        .iter()
        .try_fold(1u64, |acc, r| acc.checked_mul(r.slots()?))
}

/// The groups of one value of the mapped key: the product of the other keys' slots (all of them when none is
/// mapped).
pub fn block_count(ranges: &[KeyRange]) -> Option<u64> {
    ranges
        .iter()
        .filter(|r| !r.mapped)
        .try_fold(1u64, |acc, r| acc.checked_mul(r.slots()?))
}

/// One `AggregateExec` computed into directly indexed groups.
#[derive(Debug)]
pub struct DenseAggregateExec {
    /// The aggregate this replaces: mode, keys, aggregates, filters, schema and input.
    inner: AggregateExec,
    ranges: Vec<KeyRange>,
    /// Row-major strides of the unmapped keys' slots (the last key fastest); a mapped key's stride is `block`.
    strides: Vec<u64>,
    /// The groups allocated per value of the mapped key: all groups when no key is mapped.
    block: usize,
    /// The most groups: all of them allocated up front when no key is mapped.
    groups: usize,
    /// Estimated bytes of one partition's dense state (of one block when a key is mapped).
    state_bytes: usize,
    metrics: ExecutionPlanMetricsSet,
}

impl DenseAggregateExec {
    /// `inner` over directly indexed groups of its keys' `ranges` (one per group key).
    pub fn try_new(inner: AggregateExec, ranges: Vec<KeyRange>) -> DfResult<Self> {
        let keys = inner.group_expr().expr().len();
        if ranges.len() != keys || keys == 0 || !inner.group_expr().is_single() {
            return Err(DataFusionError::Internal(format!(
                "dense aggregate: {} key ranges for {keys} plain group keys",
                ranges.len()
            )));
        }
        let mapped = ranges.iter().filter(|r| r.mapped).count();
        if mapped > 1
            || ranges
                .iter()
                .any(|r| r.mapped && r.slots().is_none_or(|s| s > MAX_MAPPED_SLOTS))
        {
            return Err(DataFusionError::Internal(format!(
                "dense aggregate: {mapped} mapped keys (at most one, of at most {MAX_MAPPED_SLOTS} slots)"
            )));
        }
        let overflow = || DataFusionError::Internal("dense aggregate: key ranges overflow".into());
        let groups = group_count(&ranges)
            .and_then(|g| usize::try_from(g).ok())
            .ok_or_else(overflow)?;
        let block = block_count(&ranges)
            .and_then(|g| usize::try_from(g).ok())
            .ok_or_else(overflow)?;
        let mut strides = vec![1u64; ranges.len()];
        let mut stride = 1u64;
        for k in (0..ranges.len()).rev() {
            if ranges[k].mapped {
                continue;
            }
            strides[k] = stride;
            // Cannot overflow: the product of all slots fits (checked above).
            stride *= ranges[k].slots().unwrap_or(1);
        }
        if let Some(k) = ranges.iter().position(|r| r.mapped) {
            strides[k] = block as u64;
        }
        let state_bytes = block.saturating_mul(state_bytes_per_group(&inner));
        Ok(DenseAggregateExec {
            inner,
            ranges,
            strides,
            block,
            groups,
            state_bytes,
            metrics: ExecutionPlanMetricsSet::new(),
        })
    }

    /// The aggregate node this one computes.
    pub fn aggregate(&self) -> &AggregateExec {
        &self.inner
    }

    pub fn ranges(&self) -> &[KeyRange] {
        &self.ranges
    }

    /// Number of directly indexed groups (the most, when a key is mapped).
    pub fn groups(&self) -> usize {
        self.groups
    }

    /// Whether one key is mapped (its groups allocated per value seen).
    pub fn is_mapped(&self) -> bool {
        self.ranges.iter().any(|r| r.mapped)
    }
}

/// Estimated bytes per group of `agg`'s accumulators (fixed-width state fields by width, others at 32 bytes),
/// plus the group's "seen" flag.
pub fn state_bytes_per_group(agg: &AggregateExec) -> usize {
    let fields: usize = agg
        .aggr_expr()
        .iter()
        .map(|a| {
            a.state_fields().map_or(32, |fs| {
                fs.iter()
                    .map(|f| f.data_type().primitive_width().unwrap_or(32))
                    .sum()
            })
        })
        .sum();
    fields + 1
}

impl DisplayAs for DenseAggregateExec {
    fn fmt_as(&self, t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        let keys: Vec<String> = self
            .inner
            .group_expr()
            .expr()
            .iter()
            .zip(&self.ranges)
            .map(|((_, name), r)| {
                let null = if r.nullable { "+null" } else { "" };
                let mapped = if r.mapped { " mapped" } else { "" };
                format!("{name}@[{}, {}]{null}{mapped}", r.min, r.max)
            })
            .collect();
        let aggs: Vec<&str> = self.inner.aggr_expr().iter().map(|a| a.name()).collect();
        let groups = match self.is_mapped() {
            true => format!("{} per mapped value", self.block),
            false => self.groups.to_string(),
        };
        write!(
            f,
            "DenseAggregateExec: mode={:?}, gby=[{}], aggr=[{}], groups={groups}",
            self.inner.mode(),
            keys.join(", "),
            aggs.join(", "),
        )?;
        if let DisplayFormatType::Verbose = t {
            write!(f, ", state_bytes={}", self.state_bytes)?;
        }
        Ok(())
    }
}

impl ExecutionPlan for DenseAggregateExec {
    fn name(&self) -> &str {
        "DenseAggregateExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        self.inner.properties()
    }

    fn input_distribution_requirements(&self) -> InputDistributionRequirements {
        self.inner.input_distribution_requirements()
    }

    fn benefits_from_input_partitioning(&self) -> Vec<bool> {
        self.inner.benefits_from_input_partitioning()
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![self.inner.input()]
    }

    fn replace_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
        options: ReplaceChildrenOptions,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let inner = Arc::new(self.inner.clone()).replace_children(children, options)?;
        let inner = inner
            .downcast_ref::<AggregateExec>()
            .ok_or_else(|| DataFusionError::Internal("dense aggregate lost its node".into()))?
            .clone();
        Ok(Arc::new(DenseAggregateExec::try_new(
            inner,
            self.ranges.clone(),
        )?))
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        self.replace_children(
            children,
            ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute),
        )
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> DfResult<SendableRecordBatchStream> {
        let input = self
            .inner
            .input()
            .execute(partition, Arc::clone(&context))?;
        let reservation = MemoryConsumer::new(format!("DenseAggregateExec[{partition}]"))
            .register(context.memory_pool());
        reservation.try_grow(self.state_bytes)?;
        let state = DenseState::new(self, reservation)?;
        let baseline = BaselineMetrics::new(&self.metrics, partition);
        let batch_size = context.session_config().batch_size().max(1);
        let schema = self.schema();
        let out = futures::stream::once(async move {
            let timer = baseline.elapsed_compute().clone();
            let batch = state.run(input, timer).await?;
            baseline.record_output(batch.num_rows());
            Ok::<_, DataFusionError>(batch)
        })
        .map(move |r| match r {
            Ok(batch) => {
                futures::stream::iter(slices(batch, batch_size).into_iter().map(Ok)).left_stream()
            }
            Err(e) => futures::stream::once(async move { Err(e) }).right_stream(),
        })
        .flatten();
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, out)))
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }

    fn apply_expressions(
        &self,
        f: &mut dyn FnMut(
            &Arc<dyn PhysicalExpr>,
        ) -> DfResult<datafusion::common::tree_node::TreeNodeRecursion>,
    ) -> DfResult<datafusion::common::tree_node::TreeNodeRecursion> {
        self.inner.apply_expressions(f)
    }
}

/// `batch` cut into zero-copy slices of at most `size` rows.
pub(crate) fn slices(batch: RecordBatch, size: usize) -> Vec<RecordBatch> {
    let n = batch.num_rows();
    if n == 0 {
        // As DataFusion's aggregate: no groups, no batch.
        return Vec::new();
    }
    if n <= size {
        return vec![batch];
    }
    (0..n)
        .step_by(size)
        .map(|s| batch.slice(s, size.min(n - s)))
        .collect()
}

/// One partition's accumulators over all dense groups, and which groups had rows.
struct DenseState {
    schema: SchemaRef,
    keys: Vec<Arc<dyn PhysicalExpr>>,
    ranges: Vec<KeyRange>,
    strides: Vec<u64>,
    /// Groups allocated so far (all of them when no key is mapped; a multiple of `block` otherwise).
    groups: usize,
    block: usize,
    /// The mapped key's direct table (slot → ordinal, `u32::MAX` for a value not seen yet) and each ordinal's slot.
    ordinals: Vec<u32>,
    slots_seen: Vec<u64>,
    /// Bytes of state one block adds (reserved as blocks are allocated).
    block_bytes: usize,
    raw_input: bool,
    final_output: bool,
    /// The distinct argument expressions of all aggregates (`avg(x)` and `stddev(x)` share the cast of `x`), and
    /// for each aggregate the indices of its arguments among them.
    unique_args: Vec<Arc<dyn PhysicalExpr>>,
    args: Vec<Vec<usize>>,
    filters: Vec<Option<Arc<dyn PhysicalExpr>>>,
    accumulators: Vec<Box<dyn GroupsAccumulator>>,
    seen: Vec<bool>,
    indices: Vec<usize>,
    any_rows: bool,
    reservation: MemoryReservation,
}

impl DenseState {
    fn new(exec: &DenseAggregateExec, reservation: MemoryReservation) -> DfResult<Self> {
        let agg = &exec.inner;
        let group_by = agg.group_expr();
        let raw_input = agg.mode().input_mode() == AggregateInputMode::Raw;
        let accumulators = agg
            .aggr_expr()
            .iter()
            .map(|a| a.create_groups_accumulator())
            .collect::<DfResult<Vec<_>>>()?;
        let filters = if raw_input {
            agg.filter_expr().to_vec()
        } else {
            vec![None; agg.aggr_expr().len()]
        };
        // A mapped key allocates its groups block by block, as its values appear.
        let (groups, ordinals) = match exec.ranges.iter().find(|r| r.mapped) {
            Some(r) => (0, vec![u32::MAX; r.slots().unwrap_or(0) as usize]),
            None => (exec.groups, Vec::new()),
        };
        let seen = filled(groups, false, "dense aggregate")?;
        let (unique_args, args) = shared_arguments(aggregate_expressions(
            agg.aggr_expr(),
            agg.mode(),
            group_by.num_group_exprs(),
        )?);
        Ok(DenseState {
            schema: agg.schema(),
            keys: group_by.expr().iter().map(|(e, _)| Arc::clone(e)).collect(),
            ranges: exec.ranges.clone(),
            strides: exec.strides.clone(),
            groups,
            block: exec.block,
            ordinals,
            slots_seen: Vec::new(),
            block_bytes: exec.state_bytes,
            raw_input,
            final_output: agg.mode().output_mode() == AggregateOutputMode::Final,
            unique_args,
            args,
            filters,
            accumulators,
            seen,
            indices: Vec::new(),
            any_rows: false,
            reservation,
        })
    }

    async fn run(
        mut self,
        mut input: SendableRecordBatchStream,
        timer: datafusion::physical_plan::metrics::Time,
    ) -> DfResult<RecordBatch> {
        while let Some(batch) = input.next().await {
            let batch = batch?;
            let _t = timer.timer();
            self.update(&batch)?;
        }
        let _t = timer.timer();
        self.emit()
    }

    fn update(&mut self, batch: &RecordBatch) -> DfResult<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        self.group_indices(batch)?;
        for &g in &self.indices {
            self.seen[g] = true;
        }
        self.any_rows = true;
        let evaluated = self
            .unique_args
            .iter()
            .map(|e| e.evaluate(batch)?.into_array(batch.num_rows()))
            .collect::<DfResult<Vec<_>>>()?;
        for (k, acc) in self.accumulators.iter_mut().enumerate() {
            let values: Vec<ArrayRef> = self.args[k]
                .iter()
                .map(|&a| Arc::clone(&evaluated[a]))
                .collect();
            if self.raw_input {
                let filter = match &self.filters[k] {
                    Some(f) => Some(f.evaluate(batch)?.into_array(batch.num_rows())?),
                    None => None,
                };
                let filter = filter.as_ref().map(|f| f.as_boolean());
                acc.update_batch(&values, &self.indices, filter, self.groups)?;
            } else {
                acc.merge_batch(&values, &self.indices, self.groups)?;
            }
        }
        Ok(())
    }

    /// The linear group index of every row of `batch` into `self.indices`; new values of a mapped key get their
    /// blocks of groups.
    fn group_indices(&mut self, batch: &RecordBatch) -> DfResult<()> {
        let n = batch.num_rows();
        self.indices.clear();
        self.indices.resize(n, 0);
        for k in 0..self.keys.len() {
            let array = self.keys[k].evaluate(batch)?.into_array(n)?;
            let array = match array.data_type() {
                DataType::Int64 => array,
                _ => cast(&array, &DataType::Int64)?,
            };
            let values = array.as_primitive::<Int64Type>();
            if self.ranges[k].mapped {
                self.add_mapped(values, self.ranges[k])?;
            } else {
                add_digits(&mut self.indices, values, self.ranges[k], self.strides[k])?;
            }
        }
        Ok(())
    }

    /// Add `block × ordinal(value)` to each row's index, numbering values not seen before and growing the state.
    fn add_mapped(&mut self, values: &PrimitiveArray<Int64Type>, range: KeyRange) -> DfResult<()> {
        let mut digits = vec![0usize; values.len()];
        add_digits(&mut digits, values, range, 1)?;
        for (slot, d) in self.indices.iter_mut().zip(digits) {
            let mut ordinal = self.ordinals[d];
            if ordinal == u32::MAX {
                // A table of at most MAX_MAPPED_SLOTS entries: the ordinal fits a u32.
                ordinal = self.slots_seen.len() as u32;
                self.ordinals[d] = ordinal;
                self.slots_seen.push(d as u64);
            }
            *slot += ordinal as usize * self.block;
        }
        let groups = self.slots_seen.len() * self.block;
        if groups > self.groups {
            let blocks = (groups - self.groups) / self.block.max(1);
            self.reservation.try_grow(blocks * self.block_bytes)?;
            self.seen.resize(groups, false);
            self.groups = groups;
        }
        Ok(())
    }

    /// The groups that had rows: their keys, then each aggregate's value (or state, for a partial node).
    fn emit(mut self) -> DfResult<RecordBatch> {
        if !self.any_rows {
            return Ok(RecordBatch::new_empty(self.schema));
        }
        let chosen: Vec<u64> = self
            .seen
            .iter()
            .enumerate()
            .filter_map(|(g, &s)| s.then_some(g as u64))
            .collect();
        let mut columns = Vec::with_capacity(self.schema.fields().len());
        for (k, range) in self.ranges.iter().enumerate() {
            let slots = range.slots().unwrap_or(1);
            let values = Int64Array::from_iter(chosen.iter().map(|&g| {
                // An unmapped key's stride divides the block, so the mapped ordinal (g / block) drops out.
                let digit = match range.mapped {
                    true => self.slots_seen[(g / self.strides[k]) as usize],
                    false => (g / self.strides[k]) % slots,
                };
                (!range.nullable || digit + 1 < slots).then_some(range.min + digit as i64)
            }));
            let ty = self.schema.field(k).data_type();
            columns.push(cast(&values, ty)?);
        }
        emit_groups(
            &mut self.accumulators,
            self.final_output,
            chosen,
            &mut columns,
        )?;
        batch_of(&self.schema, columns)
    }
}

/// Each accumulator's output for the groups `chosen` (final values, or the partial state to merge later), appended
/// to `columns`: the accumulators hold every dense group, only those with rows are kept.
pub(super) fn emit_groups(
    accumulators: &mut [Box<dyn GroupsAccumulator>],
    final_output: bool,
    chosen: Vec<u64>,
    columns: &mut Vec<ArrayRef>,
) -> DfResult<()> {
    let take_idx = UInt64Array::from(chosen);
    for acc in accumulators {
        let arrays = if final_output {
            vec![acc.evaluate(EmitTo::All)?]
        } else {
            acc.state(EmitTo::All)?
        };
        for a in arrays {
            columns.push(take(&a, &take_idx, None)?);
        }
    }
    Ok(())
}

/// `n` copies of `v`, or an error naming `node` when the allocator refuses them (a group count is sized from the
/// data, so it is checked, never assumed).
pub(super) fn filled<V: Clone>(n: usize, v: V, node: &str) -> DfResult<Vec<V>> {
    let mut out = Vec::new();
    out.try_reserve_exact(n).map_err(|e| {
        DataFusionError::ResourcesExhausted(format!("{node}: {n} groups cannot be allocated ({e})"))
    })?;
    out.resize(n, v);
    Ok(out)
}

/// `columns` as a batch of `schema`, each cast to its field's type where it differs: the schema's types (a key cast
/// back from Int64, an aggregate's declared type) rule.
pub(super) fn batch_of(schema: &SchemaRef, columns: Vec<ArrayRef>) -> DfResult<RecordBatch> {
    let columns = columns
        .into_iter()
        .zip(schema.fields())
        .map(|(c, f)| {
            if c.data_type() == f.data_type() {
                Ok(c)
            } else {
                cast(&c, f.data_type()).map_err(DataFusionError::from)
            }
        })
        .collect::<DfResult<Vec<ArrayRef>>>()?;
    Ok(RecordBatch::try_new(Arc::clone(schema), columns)?)
}

/// Each aggregate's argument expressions as indices into one list of distinct expressions.
fn shared_arguments(
    per_aggregate: Vec<Vec<Arc<dyn PhysicalExpr>>>,
) -> (Vec<Arc<dyn PhysicalExpr>>, Vec<Vec<usize>>) {
    let mut unique: Vec<Arc<dyn PhysicalExpr>> = Vec::new();
    let ids = per_aggregate
        .into_iter()
        .map(|exprs| {
            exprs
                .into_iter()
                .map(
                    |e| match unique.iter().position(|u| u.as_ref() == e.as_ref()) {
                        Some(p) => p,
                        None => {
                            unique.push(e);
                            unique.len() - 1
                        }
                    },
                )
                .collect()
        })
        .collect();
    (unique, ids)
}

/// Add `stride × slot(value)` to each row's index; a value outside `range` is an error (the plan's ranges were
/// wrong), never a wrong group.
fn add_digits(
    indices: &mut [usize],
    values: &PrimitiveArray<Int64Type>,
    range: KeyRange,
    stride: u64,
) -> DfResult<()> {
    let width = (range.max as i128 - range.min as i128) as u64;
    let stride = stride as usize;
    let out_of_range = |v: i64| {
        DataFusionError::Execution(format!(
            "dense aggregate: key value {v} outside its planned range [{}, {}] (SET voxelscan.dense_aggregates = false \
             to work around, and report it)",
            range.min, range.max
        ))
    };
    if values.null_count() == 0 {
        for (slot, &v) in indices.iter_mut().zip(values.values().iter()) {
            let d = v.wrapping_sub(range.min) as u64;
            if d > width {
                return Err(out_of_range(v));
            }
            *slot += d as usize * stride;
        }
        return Ok(());
    }
    if !range.nullable {
        return Err(DataFusionError::Execution(
            "dense aggregate: NULL in a key planned as never null".into(),
        ));
    }
    let null_digit = (width + 1) as usize;
    for (slot, v) in indices.iter_mut().zip(values.iter()) {
        let d = match v {
            None => null_digit,
            Some(v) => {
                let d = v.wrapping_sub(range.min) as u64;
                if d > width {
                    return Err(out_of_range(v));
                }
                d as usize
            }
        };
        *slot += d * stride;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(min: i64, max: i64, nullable: bool) -> KeyRange {
        KeyRange {
            min,
            max,
            nullable,
            mapped: false,
        }
    }

    #[test]
    fn slots_and_group_counts() {
        assert_eq!(range(0, 95, false).slots(), Some(96));
        assert_eq!(range(-3, 3, true).slots(), Some(8));
        assert_eq!(range(i64::MIN, i64::MAX, false).slots(), None);
        let tsnr = [
            range(0, 95, false),
            range(0, 95, false),
            range(0, 59, false),
        ];
        assert_eq!(group_count(&tsnr), Some(96 * 96 * 60));
        let huge = [range(0, i64::MAX - 1, false), range(0, 3, false)];
        assert_eq!(group_count(&huge), None);
    }

    #[test]
    fn digits_follow_the_strides_and_refuse_what_the_plan_did_not_expect() {
        let mut idx = vec![0usize; 3];
        let k = PrimitiveArray::<Int64Type>::from(vec![5, 6, 7]);
        add_digits(&mut idx, &k, range(5, 7, false), 10).unwrap();
        assert_eq!(idx, [0, 10, 20]);
        let nulls = PrimitiveArray::<Int64Type>::from(vec![Some(1), None, Some(0)]);
        add_digits(&mut idx, &nulls, range(0, 1, true), 1).unwrap();
        assert_eq!(idx, [1, 12, 20]);
        let e = add_digits(&mut idx, &k, range(5, 6, false), 1).unwrap_err();
        assert!(e.to_string().contains("key value 7 outside"), "{e}");
        let e = add_digits(&mut idx, &nulls, range(0, 1, false), 1).unwrap_err();
        assert!(e.to_string().contains("NULL"), "{e}");
    }
}
