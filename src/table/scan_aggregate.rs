//! Aggregates computed inside the voxel scan. [`ScanAggregateExec`] stands in for an `AggregateExec` (`Partial` or
//! `Single`) that sits directly on a voxel scan (through projections and round-robin repartitions only) when its group
//! keys are plain coordinate columns and its aggregates' arguments are expressions of the value column. It reads the
//! scan's slabs through the scan's own read path (same pushdown, same metrics) as value pieces only: a row's group is
//! the linear index of its grouped coordinates, computed from the piece's box (never materialising `i, j, k`), and the
//! aggregates are DataFusion's own `GroupsAccumulator`s (plain `Accumulator`s without keys), so answers and emitted
//! state are exactly those of the node replaced. The rule choosing it is [`ScanAggregateRule`]
//! (`SET voxelscan.scan_aggregates = false` turns it off).

use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, Int64Array, RecordBatch, UInt64Array};
use datafusion::arrow::compute::{cast, max, min, take};
use datafusion::arrow::datatypes::{DataType, Field, Int64Type, Schema, SchemaRef};
use datafusion::common::ScalarValue;
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{DataFusionError, Result as DfResult};
use datafusion::datasource::physical_plan::FileScanConfig;
use datafusion::datasource::source::DataSourceExec;
use datafusion::execution::memory_pool::MemoryConsumer;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::{Accumulator, EmitTo, GroupsAccumulator};
use datafusion::physical_expr::aggregate::AggregateFunctionExpr;
use datafusion::physical_expr::expressions::{CastExpr, Column, Literal, TryCastExpr};
use datafusion::physical_expr::{EquivalenceProperties, Partitioning, PhysicalExpr};
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::aggregates::group_values::new_group_values;
use datafusion::physical_plan::aggregates::order::GroupOrdering;
use datafusion::physical_plan::aggregates::{
    AggregateExec, AggregateMode, AggregateOutputMode, PhysicalGroupBy,
};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::metrics::{
    BaselineMetrics, Count, ExecutionPlanMetricsSet, MetricBuilder, MetricsSet,
};
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::repartition::RepartitionExec;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, InputOrderMode, PlanProperties,
};
use futures::StreamExt;

use super::aggregate::{
    DenseAggregateExec, KeyRange, batch_of, emit_groups, filled, group_count, slices,
    state_bytes_per_group,
};
use super::aggregate_rule::{MAX_GROUPS, state_limit};
use super::config::VoxelscanOptions;
use super::layout::piece_len;
use super::moments::{Kernel, Run, Stat, kernel};
use super::scan::{ValuePiece, VoxelSource, table_to_values};
use super::schema::value_fields;
use crate::formats::Order;

/// Rows handed to the accumulators at once: a piece's cast arguments stay in cache.
const CHUNK_ROWS: usize = 1 << 16;

/// What a column of the voxel scan's output is.
#[derive(Debug, Clone)]
pub(super) enum ScanColumn {
    /// A coordinate: the file axis.
    Axis(usize),
    /// A value column or an expression of value columns only (the scan may hold a pushed-down projection such as
    /// `CAST(value AS Float64)`), over a batch of the value columns.
    Value(Arc<dyn PhysicalExpr>),
    /// A per-file column (`file`, BIDS entities, `world_space`, `tr`): its index among the table's partition
    /// columns.
    PerFile(usize),
    /// Anything else (millimetre columns, computed projections).
    Other,
}

/// The scan's config, source and the meaning of each of its output columns, when `plan` is a voxel scan.
pub(super) fn voxel_scan(
    plan: &dyn ExecutionPlan,
) -> Option<(&FileScanConfig, &VoxelSource, Vec<ScanColumn>)> {
    let exec = plan.downcast_ref::<DataSourceExec>()?;
    let config = exec.data_source().downcast_ref::<FileScanConfig>()?;
    let source = config.file_source().downcast_ref::<VoxelSource>()?;
    let spec = source.spec();
    let ndim = spec.files.first().map_or(0, |f| f.ndim());
    let values = value_fields(spec.scalar).len();
    let projection = datafusion::datasource::physical_plan::FileSource::projection(source)?;
    let value_schema = Schema::new(value_fields(spec.scalar));
    let file_columns = datafusion::datasource::physical_plan::FileSource::table_schema(source)
        .file_schema()
        .fields()
        .len();
    let columns = projection
        .iter()
        .map(
            |p| match p.expr.downcast_ref::<Column>().map(Column::index) {
                Some(c) if c < ndim => ScanColumn::Axis(c),
                Some(c) if c >= file_columns => ScanColumn::PerFile(c - file_columns),
                _ => match table_to_values(&p.expr, ndim, values, &value_schema) {
                    Some(e) => ScanColumn::Value(e),
                    None => ScanColumn::Other,
                },
            },
        )
        .collect();
    Some((config, source, columns))
}

/// A group key that is a per-file column of the scan ([`ScanColumn::PerFile`]): the column's distinct values over the
/// files the scan reads (two files may share a `sub`), numbered by DataFusion's own group-values table (so NULL is a
/// value like any other, as in SQL), and each file's slot among them.
#[derive(Debug, Clone)]
pub(super) struct FileKey {
    /// The column's name (for EXPLAIN).
    pub name: String,
    /// The distinct values, of the column's type: value n is slot n.
    pub values: ArrayRef,
    /// Per file of the scan's spec (by [`ValuePiece::file_index`]): its slot, `None` for a file the scan does not read.
    pub slots: Vec<Option<u32>>,
}

impl FileKey {
    /// The per-file column `column` (an index among the table's partition columns) over the files of `config`'s
    /// groups (every partition's), `None` when no file is read or a file lacks the column's value.
    pub(super) fn new(
        config: &FileScanConfig,
        source: &VoxelSource,
        column: usize,
    ) -> DfResult<Option<FileKey>> {
        let table_schema = datafusion::datasource::physical_plan::FileSource::table_schema(source);
        let Some(field) = table_schema.table_partition_cols().get(column) else {
            return Ok(None);
        };
        let spec = source.spec();
        // Each file's value, from the partitioned files (a file cut into slabs carries it in each).
        let mut per_file: Vec<Option<ScalarValue>> = vec![None; spec.files.len()];
        for pf in config.file_groups.iter().flat_map(|g| g.iter()) {
            let Some(k) = spec.file_index(pf.object_meta.location.as_ref()) else {
                return Ok(None);
            };
            let Some(v) = pf.partition_values.get(column) else {
                return Ok(None);
            };
            per_file[k] = Some(v.clone());
        }
        let read: Vec<usize> = (0..per_file.len())
            .filter(|&k| per_file[k].is_some())
            .collect();
        if read.is_empty() {
            return Ok(None);
        }
        let column_values =
            ScalarValue::iter_to_array(read.iter().filter_map(|&k| per_file[k].clone()))?;
        let key_schema = Arc::new(Schema::new(vec![Field::new(
            field.name(),
            column_values.data_type().clone(),
            true,
        )]));
        let mut interner = new_group_values(key_schema, &GroupOrdering::None)?;
        let mut ids = Vec::new();
        interner.intern(&[column_values], &mut ids)?;
        let Some(values) = interner.emit(EmitTo::All)?.into_iter().next() else {
            return Ok(None);
        };
        let mut slots = vec![None; spec.files.len()];
        for (&k, &id) in read.iter().zip(&ids) {
            slots[k] = Some(u32::try_from(id).map_err(|_| {
                DataFusionError::Internal("per-file key: too many distinct values".into())
            })?);
        }
        Ok(Some(FileKey {
            name: field.name().clone(),
            values,
            slots,
        }))
    }

    /// Number of distinct values (the key's extent in the group numbering).
    pub(super) fn extent(&self) -> usize {
        self.values.len()
    }

    /// The smallest and largest value of an integer column (`run`, `echo`, …), `None` for other types or when every
    /// value is NULL: exact bounds of the key's output, for a dense aggregate above.
    pub(super) fn integer_bounds(&self) -> Option<(i64, i64)> {
        if !self.values.data_type().is_integer() {
            return None;
        }
        let wide = cast(&self.values, &DataType::Int64).ok()?;
        let wide = wide.as_primitive::<Int64Type>();
        Some((min(wide)?, max(wide)?))
    }

    /// The slot of the piece's file.
    pub(super) fn slot(&self, p: &ValuePiece) -> DfResult<usize> {
        match self.slots.get(p.file_index) {
            Some(Some(s)) => Ok(*s as usize),
            _ => Err(DataFusionError::Internal(format!(
                "per-file key {}: file {} was not planned for",
                self.name, p.file.name
            ))),
        }
    }
}

/// Where a group key of [`ScanAggregateExec`] comes from.
#[derive(Debug, Clone, Copy)]
enum KeyOf {
    /// The n-th coordinate key (`axes[n]`, `ranges[n]`).
    Axis(usize),
    /// The n-th per-file key.
    File(usize),
}

/// One `Partial` or `Single` aggregate computed over the value pieces of the voxel scan below it.
#[derive(Debug)]
pub struct ScanAggregateExec {
    /// The aggregate computed, re-based directly on the scan (keys and arguments in the scan's columns).
    inner: AggregateExec,
    /// Per group key, where it comes from.
    keys: Vec<KeyOf>,
    /// Per coordinate key, its file axis.
    axes: Vec<usize>,
    /// Per coordinate key, the coordinates the scan's selections span on its axis.
    ranges: Vec<KeyRange>,
    /// Strides of the coordinate keys in the groups' internal numbering: the key on the file's fastest axis has
    /// stride 1, so a per-voxel map's groups follow the storage order (runs of consecutive groups for the kernel).
    strides: Vec<u64>,
    /// Per-file keys (`file`, `sub`, …) and their strides, slower than every coordinate key: a piece's file adds one
    /// constant to all its groups.
    file_keys: Vec<FileKey>,
    file_strides: Vec<u64>,
    /// Per group key, its slots as a range (a per-file key's: `0..extent`) and its stride in the internal numbering.
    key_ranges: Vec<KeyRange>,
    key_strides: Vec<u64>,
    /// Row-major strides of the keys (the last key fastest): the order groups are emitted in.
    emit_strides: Vec<u64>,
    groups: usize,
    /// Per aggregate, what the native moments kernel turns into its state; `None` when some aggregate is not one
    /// the kernel computes (DataFusion's accumulators then see every row).
    stats: Option<Vec<Stat>>,
    /// Estimated bytes of one partition's state.
    state_bytes: usize,
    /// The aggregates' arguments over a batch holding only the value columns.
    args: Vec<Vec<Arc<dyn PhysicalExpr>>>,
    value_schema: SchemaRef,
    properties: Arc<PlanProperties>,
    metrics: ExecutionPlanMetricsSet,
}

impl ScanAggregateExec {
    /// `agg` (directly over a voxel scan) computed in the scan, or `None` when its shape is not one this node
    /// computes (keys other than coordinates, arguments other than the value, modes other than Partial/Single…).
    pub fn try_new(agg: AggregateExec) -> DfResult<Option<Self>> {
        if !shape_supported(&agg) {
            return Ok(None);
        }
        let Some((config, source, columns)) = voxel_scan(agg.input().as_ref()) else {
            return Ok(None);
        };
        if config.limit.is_some() {
            return Ok(None);
        }
        let mut keys = Vec::new();
        let mut axes = Vec::new();
        let mut file_keys = Vec::new();
        for (expr, _) in agg.group_expr().expr() {
            match expr
                .downcast_ref::<Column>()
                .map(|c| columns.get(c.index()))
            {
                Some(Some(ScanColumn::Axis(a))) => {
                    keys.push(KeyOf::Axis(axes.len()));
                    axes.push(*a);
                }
                Some(Some(ScanColumn::PerFile(c))) => match FileKey::new(config, source, *c)? {
                    Some(k) => {
                        keys.push(KeyOf::File(file_keys.len()));
                        file_keys.push(k);
                    }
                    None => return Ok(None),
                },
                _ => return Ok(None),
            }
        }
        let spec = source.spec();
        let value_schema = Arc::new(Schema::new(value_fields(spec.scalar)));
        let mut args = Vec::new();
        for a in agg.aggr_expr() {
            let mut exprs = Vec::new();
            for e in a.expressions() {
                match on_values(&e, &columns)? {
                    Some(e) => exprs.push(e),
                    None => return Ok(None),
                }
            }
            args.push(exprs);
        }
        let Some(ranges) = axis_ranges(spec, &axes) else {
            return Ok(None);
        };
        let order = spec.files.first().map_or(Order::F, |f| f.layout.order);
        let strides = layout_strides(&axes, &ranges, order);
        // Per-file keys are slower than all coordinate keys.
        let Some(mut stride) = group_count(&ranges) else {
            return Ok(None);
        };
        let mut file_strides = Vec::with_capacity(file_keys.len());
        for k in &file_keys {
            file_strides.push(stride);
            match stride.checked_mul(k.extent() as u64) {
                Some(s) => stride = s,
                None => return Ok(None),
            }
        }
        let Ok(groups) = usize::try_from(stride) else {
            return Ok(None);
        };
        let (key_ranges, key_strides): (Vec<KeyRange>, Vec<u64>) = keys
            .iter()
            .map(|&k| match k {
                KeyOf::Axis(n) => (ranges[n], strides[n]),
                KeyOf::File(n) => (
                    KeyRange {
                        min: 0,
                        max: file_keys[n].extent() as i64 - 1,
                        nullable: false,
                        mapped: false,
                    },
                    file_strides[n],
                ),
            })
            .unzip();
        let mut emit_strides = vec![1u64; key_ranges.len()];
        for k in (0..key_ranges.len().saturating_sub(1)).rev() {
            emit_strides[k] = emit_strides[k + 1] * key_ranges[k + 1].slots().unwrap_or(1);
        }
        let stats = moment_stats(&agg, &args, &value_schema);
        let partitions = agg.input().properties().partitioning.partition_count();
        if agg.mode() == &AggregateMode::Single && partitions != 1 {
            return Ok(None);
        }
        let properties = PlanProperties::new(
            EquivalenceProperties::new(agg.schema()),
            Partitioning::UnknownPartitioning(partitions),
            EmissionType::Final,
            Boundedness::Bounded,
        );
        let state_bytes = groups.saturating_mul(state_bytes_per_group(&agg));
        Ok(Some(ScanAggregateExec {
            inner: agg,
            keys,
            axes,
            ranges,
            strides,
            file_keys,
            file_strides,
            key_ranges,
            key_strides,
            emit_strides,
            groups,
            stats,
            state_bytes,
            args,
            value_schema,
            properties: Arc::new(properties),
            metrics: ExecutionPlanMetricsSet::new(),
        }))
    }

    /// The aggregate this node computes, directly over the scan.
    pub fn aggregate(&self) -> &AggregateExec {
        &self.inner
    }

    /// The bounds of output column `col` when it is a coordinate key or an integer per-file key (`None` for other
    /// per-file keys and aggregates).
    pub fn key_bounds(&self, col: usize) -> Option<(i64, i64)> {
        match self.keys.get(col)? {
            KeyOf::Axis(n) => self.ranges.get(*n).map(|r| (r.min, r.max)),
            KeyOf::File(n) => self.file_keys.get(*n)?.integer_bounds(),
        }
    }

    /// Number of directly indexed groups (1 without keys).
    pub fn groups(&self) -> usize {
        self.groups
    }

    /// The voxel scan this node reads.
    fn scan(&self) -> DfResult<(&FileScanConfig, &VoxelSource)> {
        voxel_scan(self.inner.input().as_ref())
            .map(|(c, s, _)| (c, s))
            .ok_or_else(|| DataFusionError::Internal("scan aggregate without a voxel scan".into()))
    }
}

/// Strides of the keys with the key on the file's fastest axis first (stride 1), then the next-fastest, and so on:
/// the internal group numbering follows storage order.
fn layout_strides(axes: &[usize], ranges: &[KeyRange], order: Order) -> Vec<u64> {
    let mut keys: Vec<usize> = (0..axes.len()).collect();
    match order {
        Order::F => keys.sort_by_key(|&k| axes[k]),
        Order::C => keys.sort_by_key(|&k| std::cmp::Reverse(axes[k])),
    }
    let mut strides = vec![1u64; axes.len()];
    let mut s = 1u64;
    for k in keys {
        strides[k] = s;
        s = s.saturating_mul(ranges[k].slots().unwrap_or(1));
    }
    strides
}

/// What an aggregate argument is, for the kernel.
enum Argument {
    /// The value column, or a cast of it that keeps every value and its order; the type the aggregate sees.
    Value(DataType),
    /// A non-NULL literal (`count(*)` counts `1`).
    Constant,
}

/// `expr` (over the value batch) as an [`Argument`], `None` for anything else.
fn argument(expr: &Arc<dyn PhysicalExpr>, value: &DataType) -> Option<Argument> {
    if let Some(c) = expr.downcast_ref::<Column>() {
        return (c.index() == 0).then(|| Argument::Value(value.clone()));
    }
    if let Some(l) = expr.downcast_ref::<Literal>() {
        return (!l.value().is_null()).then_some(Argument::Constant);
    }
    let (inner, to) = if let Some(c) = expr.downcast_ref::<CastExpr>() {
        (c.expr(), c.cast_type())
    } else if let Some(c) = expr.downcast_ref::<TryCastExpr>() {
        (c.expr(), c.cast_type())
    } else {
        return None;
    };
    let Argument::Value(from) = argument(inner, value)? else {
        return None;
    };
    lossless_cast(&from, to).then(|| Argument::Value(to.clone()))
}

/// Casts the kernel folds in: to the same type, to `Float64` (monotone; sums of the cast values are what the moments
/// give), to `Int64` from a type it holds, to `UInt64` from an unsigned type.
fn lossless_cast(from: &DataType, to: &DataType) -> bool {
    use DataType::*;
    from == to
        || (matches!(to, Float64) && from.is_numeric())
        || (matches!(to, Int64) && matches!(from, Int8 | Int16 | Int32 | UInt8 | UInt16 | UInt32))
        || (matches!(to, UInt64) && matches!(from, UInt8 | UInt16 | UInt32))
}

/// Per aggregate, the [`Stat`] the moments kernel produces for it; `None` unless every aggregate is one: count, sum,
/// avg, min, max, var, var_pop, stddev, stddev_pop of the single real value column, with DataFusion's usual state.
pub(super) fn moment_stats(
    agg: &AggregateExec,
    args: &[Vec<Arc<dyn PhysicalExpr>>],
    value_schema: &Schema,
) -> Option<Vec<Stat>> {
    let [value] = value_schema.fields().as_ref() else {
        return None;
    };
    let value = value.data_type();
    if !value.is_numeric() {
        return None;
    }
    agg.aggr_expr()
        .iter()
        .zip(args)
        .map(|(a, args)| {
            let [arg] = args.as_slice() else {
                return None;
            };
            let arg = argument(arg, value)?;
            let fields = a.state_fields().ok()?;
            let types: Vec<&DataType> = fields.iter().map(|f| f.data_type()).collect();
            use DataType::*;
            match (a.fun().name(), arg, types.as_slice()) {
                ("count", _, [Int64]) => Some(Stat::Count),
                ("sum", Argument::Value(_), [t @ (Int64 | UInt64)]) if value.is_integer() => {
                    Some(Stat::SumInt((*t).clone()))
                }
                ("sum", Argument::Value(_), [Float64]) => Some(Stat::SumFloat),
                ("avg", Argument::Value(_), [UInt64, Float64]) => Some(Stat::Avg),
                (
                    "var" | "var_pop" | "stddev" | "stddev_pop",
                    Argument::Value(_),
                    [UInt64, Float64, Float64],
                ) => Some(Stat::Variance),
                ("min", Argument::Value(t), [s]) if t == **s => Some(Stat::Min(t)),
                ("max", Argument::Value(t), [s]) if t == **s => Some(Stat::Max(t)),
                _ => None,
            }
        })
        .collect()
}

/// Plain aggregates (Partial or Single) with a `GroupsAccumulator`, no DISTINCT, ordering, FILTER or grouping sets.
pub(super) fn shape_supported(agg: &AggregateExec) -> bool {
    matches!(agg.mode(), AggregateMode::Partial | AggregateMode::Single)
        && agg.group_expr().is_single()
        && agg.limit_options().is_none()
        && matches!(agg.input_order_mode(), InputOrderMode::Linear)
        && agg.filter_expr().iter().all(Option::is_none)
        && agg.aggr_expr().iter().all(|a| {
            !a.is_distinct() && a.order_bys().is_empty() && a.groups_accumulator_supported()
        })
}

/// `expr` (over the scan's output) over a batch of the value columns only; `None` when it reads anything else.
pub(super) fn on_values(
    expr: &Arc<dyn PhysicalExpr>,
    columns: &[ScanColumn],
) -> DfResult<Option<Arc<dyn PhysicalExpr>>> {
    let mut ok = true;
    let out = Arc::clone(expr).transform_up(|e| {
        let Some(c) = e.downcast_ref::<Column>() else {
            return Ok(Transformed::no(e));
        };
        match columns.get(c.index()) {
            Some(ScanColumn::Value(v)) => Ok(Transformed::yes(Arc::clone(v))),
            _ => {
                ok = false;
                Ok(Transformed::new(e, false, TreeNodeRecursion::Stop))
            }
        }
    })?;
    Ok(ok.then_some(out.data))
}

/// Per grouped axis, the smallest and largest coordinate any file's selection has on it; `None` when no file is
/// read (nothing to group: DataFusion's plan is as good).
pub(super) fn axis_ranges(spec: &super::scan::ScanSpec, axes: &[usize]) -> Option<Vec<KeyRange>> {
    let chosen: Vec<_> = spec
        .selections
        .iter()
        .flatten()
        .filter(|s| !s.is_empty())
        .collect();
    if chosen.is_empty() && !axes.is_empty() {
        return None;
    }
    axes.iter()
        .map(|&a| {
            let lo = chosen.iter().filter_map(|s| s.axes.get(a)?.min()).min()?;
            let hi = chosen.iter().filter_map(|s| s.axes.get(a)?.max()).max()?;
            Some(KeyRange {
                min: i64::try_from(lo).ok()?,
                max: i64::try_from(hi).ok()?,
                nullable: false,
                mapped: false,
            })
        })
        .collect()
}

/// A per-file key for EXPLAIN: `file@per-file(3 values)`.
pub(super) fn per_file_text(name: &str, key: &FileKey) -> String {
    format!("{name}@per-file({} values)", key.extent())
}

/// The group count and its factors for EXPLAIN: `file×label×t=3×100×300=90000`.
fn groups_text(names: &[&str], slots: &[u64], groups: usize) -> String {
    let factors: Vec<String> = slots.iter().map(u64::to_string).collect();
    format!("{}={}={groups}", names.join("×"), factors.join("×"))
}

/// The names of `agg`'s group keys, for EXPLAIN.
pub(super) fn group_names(agg: &AggregateExec) -> Vec<&str> {
    agg.group_expr()
        .expr()
        .iter()
        .map(|(_, name)| name.as_str())
        .collect()
}

impl DisplayAs for ScanAggregateExec {
    fn fmt_as(&self, t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        let names = group_names(&self.inner);
        let keys: Vec<String> = names
            .iter()
            .zip(&self.keys)
            .map(|(name, k)| match *k {
                KeyOf::Axis(n) => {
                    format!("{name}@[{}, {}]", self.ranges[n].min, self.ranges[n].max)
                }
                KeyOf::File(n) => per_file_text(name, &self.file_keys[n]),
            })
            .collect();
        let aggs: Vec<&str> = self.inner.aggr_expr().iter().map(|a| a.name()).collect();
        write!(
            f,
            "ScanAggregateExec: mode={:?}, gby=[{}], aggr=[{}], groups=",
            self.inner.mode(),
            keys.join(", "),
            aggs.join(", "),
        )?;
        if self.file_keys.is_empty() {
            write!(f, "{}", self.groups)?;
        } else {
            let slots: Vec<u64> = self
                .key_ranges
                .iter()
                .map(|r| r.slots().unwrap_or(1))
                .collect();
            write!(f, "{}", groups_text(&names, &slots, self.groups))?;
        }
        if let DisplayFormatType::Verbose = t {
            write!(f, ", state_bytes={}", self.state_bytes)?;
        }
        Ok(())
    }
}

impl ExecutionPlan for ScanAggregateExec {
    fn name(&self) -> &str {
        "ScanAggregateExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![self.inner.input()]
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let [child] = children.as_slice() else {
            return Err(DataFusionError::Internal(
                "scan aggregate: one child expected".into(),
            ));
        };
        let inner = rebased(&self.inner, Arc::clone(child))?;
        ScanAggregateExec::try_new(inner)?
            .map(|n| Arc::new(n) as Arc<dyn ExecutionPlan>)
            .ok_or_else(|| {
                DataFusionError::Internal(
                    "scan aggregate: the new child is not a voxel scan".into(),
                )
            })
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> DfResult<SendableRecordBatchStream> {
        let (config, source) = self.scan()?;
        let pieces = source.value_pieces(config, partition)?;
        let reservation = MemoryConsumer::new(format!("ScanAggregateExec[{partition}]"))
            .register(context.memory_pool());
        reservation.try_grow(self.state_bytes)?;
        let mut state = State::new(self)?;
        // Rows the native moments kernel took (the rest went through DataFusion's accumulators).
        state.moment_rows =
            Some(MetricBuilder::new(&self.metrics).counter("moment_rows", partition));
        let baseline = BaselineMetrics::new(&self.metrics, partition);
        let batch_size = context.session_config().batch_size().max(1);
        let schema = self.schema();
        let out = futures::stream::once(async move {
            let _keep = reservation;
            let timer = baseline.elapsed_compute().clone();
            let mut pieces = pieces;
            while let Some(p) = pieces.next().await {
                let p = p?;
                let _t = timer.timer();
                state.update(&p)?;
            }
            let _t = timer.timer();
            let batch = state.emit()?;
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
        f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DfResult<TreeNodeRecursion>,
    ) -> DfResult<TreeNodeRecursion> {
        self.inner.apply_expressions(f)
    }
}

/// `agg` with `input` as its input (same expressions: `input` has the same schema).
pub(super) fn rebased(
    agg: &AggregateExec,
    input: Arc<dyn ExecutionPlan>,
) -> DfResult<AggregateExec> {
    let schema = input.schema();
    AggregateExec::try_new(
        *agg.mode(),
        agg.group_expr().clone(),
        agg.aggr_expr().to_vec(),
        agg.filter_expr().to_vec(),
        input,
        schema,
    )
}

/// The accumulators of one partition.
enum Accumulators {
    /// No group keys: DataFusion's plain accumulators (one group, vectorised updates).
    Plain(Vec<Box<dyn Accumulator>>),
    Grouped {
        accumulators: Vec<Box<dyn GroupsAccumulator>>,
        seen: Vec<bool>,
        indices: Vec<usize>,
    },
}

/// One partition's aggregation state.
struct State {
    schema: SchemaRef,
    value_schema: SchemaRef,
    keys: Vec<KeyOf>,
    axes: Vec<usize>,
    ranges: Vec<KeyRange>,
    strides: Vec<u64>,
    file_keys: Vec<FileKey>,
    file_strides: Vec<u64>,
    key_ranges: Vec<KeyRange>,
    key_strides: Vec<u64>,
    emit_strides: Vec<u64>,
    groups: usize,
    final_output: bool,
    /// The native moments and, per aggregate, the state they become (see [`super::moments`]).
    kernel: Option<(Box<dyn Kernel>, Vec<Stat>)>,
    runs: Vec<Run>,
    moment_rows: Option<Count>,
    /// The distinct argument expressions, and per aggregate the indices of its arguments among them.
    unique_args: Vec<Arc<dyn PhysicalExpr>>,
    args: Vec<Vec<usize>>,
    accumulators: Accumulators,
}

impl State {
    fn new(exec: &ScanAggregateExec) -> DfResult<Self> {
        let aggs = exec.inner.aggr_expr();
        let accumulators = if exec.keys.is_empty() {
            Accumulators::Plain(
                aggs.iter()
                    .map(|a| a.create_accumulator())
                    .collect::<DfResult<_>>()?,
            )
        } else {
            let seen = filled(exec.groups, false, "scan aggregate")?;
            Accumulators::Grouped {
                accumulators: aggs
                    .iter()
                    .map(|a| a.create_groups_accumulator())
                    .collect::<DfResult<_>>()?,
                seen,
                indices: Vec::new(),
            }
        };
        let (unique_args, args) = shared_arguments(&exec.args);
        let kernel = match &exec.stats {
            Some(stats) => kernel(
                exec.value_schema.field(0).data_type(),
                stats,
                exec.groups.max(1),
            )?
            .map(|k| (k, stats.clone())),
            None => None,
        };
        Ok(State {
            schema: exec.inner.schema(),
            value_schema: Arc::clone(&exec.value_schema),
            keys: exec.keys.clone(),
            axes: exec.axes.clone(),
            ranges: exec.ranges.clone(),
            strides: exec.strides.clone(),
            file_keys: exec.file_keys.clone(),
            file_strides: exec.file_strides.clone(),
            key_ranges: exec.key_ranges.clone(),
            key_strides: exec.key_strides.clone(),
            emit_strides: exec.emit_strides.clone(),
            groups: exec.groups,
            final_output: exec.inner.mode().output_mode() == AggregateOutputMode::Final,
            kernel,
            runs: Vec::new(),
            moment_rows: None,
            unique_args,
            args,
            accumulators,
        })
    }

    fn update(&mut self, p: &ValuePiece) -> DfResult<()> {
        let n = usize::try_from(piece_len(&p.piece))
            .map_err(|_| DataFusionError::Internal("piece beyond the address space".into()))?;
        if n == 0 {
            return Ok(());
        }
        if p.values.iter().any(|v| v.len() != n) {
            return Err(DataFusionError::Internal(format!(
                "scan aggregate: {} values for a piece of {n}",
                p.values.first().map_or(0, |v| v.len())
            )));
        }
        self.runs.clear();
        // What the piece's file adds to each of its groups (its per-file keys' slots).
        let mut file_offset = 0usize;
        for (k, stride) in self.file_keys.iter().zip(&self.file_strides) {
            file_offset += k.slot(p)? * *stride as usize;
        }
        if self.axes.is_empty() {
            self.runs.push(Run {
                at: 0,
                len: n,
                group: file_offset,
                step: 0,
            });
        } else {
            runs(
                &p.piece,
                p.file.layout.order,
                &self.axes,
                &self.ranges,
                &self.strides,
                &mut self.runs,
            )?;
            for r in &mut self.runs {
                r.group += file_offset;
            }
        }
        if let Accumulators::Grouped { seen, .. } = &mut self.accumulators {
            mark_runs(&self.runs, seen);
        }
        if self.update_moments(p, n)? {
            return Ok(());
        }
        let batch = RecordBatch::try_new(Arc::clone(&self.value_schema), p.values.clone())?;
        if let Accumulators::Grouped { indices, .. } = &mut self.accumulators {
            indices_of_runs(&self.runs, indices);
        }
        let mut from = 0;
        while from < n {
            let len = CHUNK_ROWS.min(n - from);
            self.update_chunk(&batch.slice(from, len), from)?;
            from += len;
        }
        Ok(())
    }

    /// The piece added to the native moments; `false` when the kernel does not apply (no kernel for this query, or
    /// a piece it does not read, e.g. floats with NaN) and DataFusion's accumulators must see its rows.
    fn update_moments(&mut self, p: &ValuePiece, n: usize) -> DfResult<bool> {
        let Some((k, _)) = &self.kernel else {
            return Ok(false);
        };
        let [values] = p.values.as_slice() else {
            return Ok(false);
        };
        if k.rows().saturating_add(n as u64) > k.flush_rows() {
            self.flush()?;
        }
        let Some((k, _)) = &mut self.kernel else {
            return Ok(false);
        };
        let added = k.add_piece(values, &self.runs);
        if let (true, Some(m)) = (added, &self.moment_rows) {
            m.add(n);
        }
        Ok(added)
    }

    /// The moments turned into each aggregate's state and merged into DataFusion's accumulators, then restarted.
    fn flush(&mut self) -> DfResult<()> {
        let Some((k, stats)) = &mut self.kernel else {
            return Ok(());
        };
        if k.rows() == 0 {
            return Ok(());
        }
        let touched = k.touched();
        if !touched.is_empty() {
            match &mut self.accumulators {
                Accumulators::Plain(accs) => {
                    for (acc, stat) in accs.iter_mut().zip(stats.iter()) {
                        acc.merge_batch(&k.state(stat, &touched)?)?;
                    }
                }
                Accumulators::Grouped { accumulators, .. } => {
                    for (acc, stat) in accumulators.iter_mut().zip(stats.iter()) {
                        acc.merge_batch(&k.state(stat, &touched)?, &touched, self.groups)?;
                    }
                }
            }
        }
        k.reset();
        Ok(())
    }

    fn update_chunk(&mut self, batch: &RecordBatch, from: usize) -> DfResult<()> {
        let n = batch.num_rows();
        let evaluated = self
            .unique_args
            .iter()
            .map(|e| e.evaluate(batch)?.into_array(n))
            .collect::<DfResult<Vec<_>>>()?;
        let args = &self.args;
        let values = |k: usize| -> Vec<ArrayRef> {
            args[k].iter().map(|&a| Arc::clone(&evaluated[a])).collect()
        };
        match &mut self.accumulators {
            Accumulators::Plain(accs) => {
                for (k, acc) in accs.iter_mut().enumerate() {
                    acc.update_batch(&values(k))?;
                }
            }
            Accumulators::Grouped {
                accumulators,
                indices,
                ..
            } => {
                let idx = &indices[from..from + n];
                for (k, acc) in accumulators.iter_mut().enumerate() {
                    acc.update_batch(&values(k), idx, None, self.groups)?;
                }
            }
        }
        Ok(())
    }

    /// Without keys: one row (as DataFusion's aggregate, even over no rows). With keys: the groups that had rows.
    fn emit(mut self) -> DfResult<RecordBatch> {
        self.flush()?;
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(self.schema.fields().len());
        match self.accumulators {
            Accumulators::Plain(accs) => {
                for mut acc in accs {
                    if self.final_output {
                        columns.push(acc.evaluate()?.to_array()?);
                    } else {
                        for s in acc.state()? {
                            columns.push(s.to_array()?);
                        }
                    }
                }
            }
            Accumulators::Grouped {
                mut accumulators,
                seen,
                ..
            } => {
                let chosen = emitted_groups(
                    &seen,
                    &self.key_ranges,
                    &self.key_strides,
                    &self.emit_strides,
                );
                if chosen.is_empty() {
                    return Ok(RecordBatch::new_empty(self.schema));
                }
                for (k, range) in self.key_ranges.iter().enumerate() {
                    let slots = range.slots().unwrap_or(1);
                    let slot = |g: u64| (g / self.key_strides[k]) % slots;
                    match self.keys[k] {
                        KeyOf::Axis(_) => {
                            let keys = Int64Array::from_iter_values(
                                chosen.iter().map(|&g| range.min + slot(g) as i64),
                            );
                            columns.push(Arc::new(keys));
                        }
                        KeyOf::File(n) => {
                            let idx =
                                UInt64Array::from_iter_values(chosen.iter().map(|&g| slot(g)));
                            columns.push(take(&self.file_keys[n].values, &idx, None)?);
                        }
                    }
                }
                emit_groups(&mut accumulators, self.final_output, chosen, &mut columns)?;
            }
        }
        batch_of(&self.schema, columns)
    }
}

/// Each aggregate's argument expressions as indices into one list of distinct expressions (`avg(x)` and
/// `stddev(x)` share the cast of `x`).
pub(super) fn shared_arguments(
    per_aggregate: &[Vec<Arc<dyn PhysicalExpr>>],
) -> (Vec<Arc<dyn PhysicalExpr>>, Vec<Vec<usize>>) {
    let mut unique: Vec<Arc<dyn PhysicalExpr>> = Vec::new();
    let ids = per_aggregate
        .iter()
        .map(|exprs| {
            exprs
                .iter()
                .map(
                    |e| match unique.iter().position(|u| u.as_ref() == e.as_ref()) {
                        Some(p) => p,
                        None => {
                            unique.push(Arc::clone(e));
                            unique.len() - 1
                        }
                    },
                )
                .collect()
        })
        .collect();
    (unique, ids)
}

/// Per file axis, what one coordinate adds to a row's group index: `(x - min) × stride` on grouped axes, 0
/// elsewhere; as a table over the piece's range of that axis. A coordinate outside the planned range is an error.
fn axis_terms(
    piece: &[Range<u64>],
    axes: &[usize],
    ranges: &[KeyRange],
    strides: &[u64],
) -> DfResult<Vec<Vec<usize>>> {
    piece
        .iter()
        .enumerate()
        .map(|(axis, r)| {
            let len = (r.end - r.start) as usize;
            let Some(k) = axes.iter().position(|&a| a == axis) else {
                return Ok(vec![0; len]);
            };
            let range = ranges[k];
            (r.start..r.end)
                .map(|x| {
                    let d = i64::try_from(x).ok().and_then(|x| x.checked_sub(range.min));
                    match d {
                        Some(d) if d >= 0 && d <= range.max - range.min => {
                            Ok(d as usize * strides[k] as usize)
                        }
                        _ => Err(DataFusionError::Internal(format!(
                            "scan aggregate: coordinate {x} outside its planned range [{}, {}]",
                            range.min, range.max
                        ))),
                    }
                })
                .collect()
        })
        .collect()
}

/// Every element's group, from the runs of its piece (which cover the piece in storage order).
fn indices_of_runs(runs: &[Run], out: &mut Vec<usize>) {
    out.clear();
    for r in runs {
        match r.step {
            0 => out.extend(std::iter::repeat_n(r.group, r.len)),
            step => out.extend((0..r.len).map(|x| r.group + x * step)),
        }
    }
}

/// The groups `seen` marks, as internal group indices, in the row-major order of the keys (the last key fastest):
/// the order rows are emitted in, whatever the internal numbering.
fn emitted_groups(
    seen: &[bool],
    ranges: &[KeyRange],
    strides: &[u64],
    emit_strides: &[u64],
) -> Vec<u64> {
    if strides == emit_strides {
        return seen
            .iter()
            .enumerate()
            .filter_map(|(g, &s)| s.then_some(g as u64))
            .collect();
    }
    let slots: Vec<u64> = ranges.iter().map(|r| r.slots().unwrap_or(1)).collect();
    (0..seen.len() as u64)
        .map(|r| {
            (0..slots.len())
                .map(|k| (r / emit_strides[k]) % slots[k] * strides[k])
                .sum::<u64>()
        })
        .filter(|&g| seen.get(g as usize).copied().unwrap_or(false))
        .collect()
}

/// The runs of `piece` (a box laid out in `order`) for the moments kernel: the fastest axes that are not grouped make
/// one run a group; a grouped fastest axis makes runs of consecutive groups (extended over the next axes while the
/// groups stay consecutive), or of groups a stride apart when its key is not the fastest. Axes of length 1 only
/// add to the group.
fn runs(
    piece: &[Range<u64>],
    order: Order,
    axes: &[usize],
    ranges: &[KeyRange],
    strides: &[u64],
    out: &mut Vec<Run>,
) -> DfResult<()> {
    out.clear();
    if piece.iter().any(|r| r.is_empty()) {
        return Ok(());
    }
    let terms = axis_terms(piece, axes, ranges, strides)?;
    let fast_to_slow: Vec<usize> = match order {
        Order::F => (0..piece.len()).collect(),
        Order::C => (0..piece.len()).rev().collect(),
    };
    // Length-1 axes: a constant term.
    let base: usize = fast_to_slow
        .iter()
        .filter(|&&a| terms[a].len() == 1)
        .map(|&a| terms[a][0])
        .sum();
    let active: Vec<usize> = fast_to_slow
        .into_iter()
        .filter(|&a| terms[a].len() > 1)
        .collect();
    let Some(&first) = active.first() else {
        out.push(Run {
            at: 0,
            len: 1,
            group: base,
            step: 0,
        });
        return Ok(());
    };
    let stride_of = |a: usize| {
        axes.iter()
            .position(|&x| x == a)
            .map(|k| strides[k] as usize)
    };
    let step = stride_of(first).unwrap_or(0);
    let mut len = terms[first].len();
    let mut inner = 1;
    while let Some(&a) = active.get(inner) {
        let extends = match stride_of(a) {
            None => step == 0,
            Some(s) => step == 1 && s == len,
        };
        if !extends {
            break;
        }
        len *= terms[a].len();
        inner += 1;
    }
    let start: usize = active[..inner].iter().map(|&a| terms[a][0]).sum();
    let outer = &active[inner..];
    let mut at = vec![0usize; outer.len()];
    let mut offset = 0;
    loop {
        let group = base
            + start
            + outer
                .iter()
                .zip(&at)
                .map(|(&a, &x)| terms[a][x])
                .sum::<usize>();
        out.push(Run {
            at: offset,
            len,
            group,
            step,
        });
        offset += len;
        let mut k = 0;
        loop {
            let Some(&a) = outer.get(k) else {
                return Ok(());
            };
            at[k] += 1;
            if at[k] < terms[a].len() {
                break;
            }
            at[k] = 0;
            k += 1;
        }
    }
}

/// Mark the groups of `runs` (a piece's elements: each run's groups have rows).
fn mark_runs(runs: &[Run], seen: &mut [bool]) {
    for r in runs.iter().filter(|r| r.len > 0) {
        match r.step {
            0 => {
                if let Some(s) = seen.get_mut(r.group) {
                    *s = true;
                }
            }
            1 => {
                let end = (r.group + r.len).min(seen.len());
                if let Some(s) = seen.get_mut(r.group..end) {
                    s.fill(true);
                }
            }
            step => {
                for x in 0..r.len {
                    if let Some(s) = seen.get_mut(r.group + x * step) {
                        *s = true;
                    }
                }
            }
        }
    }
}

/// The rule putting [`ScanAggregateExec`] in place of aggregates over voxel scans.
#[derive(Debug, Default)]
pub struct ScanAggregateRule;

impl PhysicalOptimizerRule for ScanAggregateRule {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        config: &ConfigOptions,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        if !VoxelscanOptions::from_config(config).scan_aggregates {
            return Ok(plan);
        }
        let limit = state_limit();
        plan.transform_up(|node| {
            let agg = match node.downcast_ref::<AggregateExec>() {
                Some(a) => a,
                None => match node.downcast_ref::<DenseAggregateExec>() {
                    Some(d) => d.aggregate(),
                    None => return Ok(Transformed::no(node)),
                },
            };
            match in_scan(agg, limit)? {
                Some(n) => Ok(Transformed::yes(Arc::new(n) as Arc<dyn ExecutionPlan>)),
                None => Ok(Transformed::no(node)),
            }
        })
        .map(|t| t.data)
    }

    fn name(&self) -> &str {
        "scan_aggregate"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// `agg` computed in the voxel scan below it, or `None` when it must stay as it is.
fn in_scan(agg: &AggregateExec, limit: u64) -> DfResult<Option<ScanAggregateExec>> {
    if !shape_supported(agg) {
        return Ok(None);
    }
    let Some((scan, rewrite)) = scan_below(agg.input()) else {
        return Ok(None);
    };
    let through = |e: &Arc<dyn PhysicalExpr>| {
        rewrite
            .iter()
            .try_fold(Arc::clone(e), |e, p| substitute(&e, p))
    };
    let keys = agg
        .group_expr()
        .expr()
        .iter()
        .map(|(e, name)| Ok((through(e)?, name.clone())))
        .collect::<DfResult<Vec<_>>>()?;
    let mut aggs = Vec::with_capacity(agg.aggr_expr().len());
    for a in agg.aggr_expr() {
        let args = a
            .expressions()
            .iter()
            .map(through)
            .collect::<DfResult<Vec<_>>>()?;
        match a.with_new_expressions(args, Vec::new()) {
            Some(a) => aggs.push(Arc::new(a) as Arc<AggregateFunctionExpr>),
            None => return Ok(None),
        }
    }
    let schema = scan.schema();
    let Ok(direct) = AggregateExec::try_new(
        *agg.mode(),
        PhysicalGroupBy::new_single(keys),
        aggs,
        agg.filter_expr().to_vec(),
        Arc::clone(&scan),
        schema,
    ) else {
        return Ok(None);
    };
    // The plan above must not notice: same columns, types and nullability.
    if !same_fields(&direct.schema(), &agg.schema()) {
        return Ok(None);
    }
    let Some(node) = ScanAggregateExec::try_new(direct)? else {
        return Ok(None);
    };
    let partitions = node.properties.partitioning.partition_count().max(1) as u64;
    let bytes = (node.groups as u64)
        .saturating_mul(state_bytes_per_group(&node.inner) as u64)
        .saturating_mul(partitions);
    if node.groups as u64 > MAX_GROUPS || bytes > limit {
        return Ok(None);
    }
    Ok(Some(node))
}

pub(super) fn same_fields(a: &Schema, b: &Schema) -> bool {
    a.fields().len() == b.fields().len()
        && a.fields().iter().zip(b.fields()).all(|(x, y)| {
            x.name() == y.name()
                && x.data_type() == y.data_type()
                && x.is_nullable() == y.is_nullable()
        })
}

/// A voxel scan and the projections above it (top first).
pub(super) type ScanAndProjections = (Arc<dyn ExecutionPlan>, Vec<Arc<dyn ExecutionPlan>>);

/// The voxel scan under `plan` through projections and round-robin repartitions (nothing that drops or adds rows),
/// with the projections met on the way, top first.
pub(super) fn scan_below(plan: &Arc<dyn ExecutionPlan>) -> Option<ScanAndProjections> {
    let mut node = Arc::clone(plan);
    let mut projections = Vec::new();
    loop {
        if voxel_scan(node.as_ref()).is_some() {
            return Some((node, projections));
        }
        let next = if let Some(p) = node.downcast_ref::<ProjectionExec>() {
            projections.push(Arc::clone(&node));
            Arc::clone(p.input())
        } else if let Some(r) = node.downcast_ref::<RepartitionExec>() {
            if !matches!(r.partitioning(), Partitioning::RoundRobinBatch(_)) || r.preserve_order() {
                return None;
            }
            Arc::clone(r.input())
        } else {
            return None;
        };
        node = next;
    }
}

/// `expr` over a projection's output, as an expression over its input.
pub(super) fn substitute(
    expr: &Arc<dyn PhysicalExpr>,
    projection: &Arc<dyn ExecutionPlan>,
) -> DfResult<Arc<dyn PhysicalExpr>> {
    let Some(p) = projection.downcast_ref::<ProjectionExec>() else {
        return Ok(Arc::clone(expr));
    };
    Arc::clone(expr)
        .transform_up(|e| {
            let Some(c) = e.downcast_ref::<Column>() else {
                return Ok(Transformed::no(e));
            };
            let p = p.expr().get(c.index()).ok_or_else(|| {
                DataFusionError::Internal(format!("projection has no column {}", c.index()))
            })?;
            Ok(Transformed::yes(Arc::clone(&p.expr)))
        })
        .map(|t| t.data)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(min: i64, max: i64) -> KeyRange {
        KeyRange {
            min,
            max,
            nullable: false,
            mapped: false,
        }
    }

    /// The group index of every element of `piece` (a box laid out in `order`) into `out`, by an odometer over its
    /// coordinates: the independent reference the runs are checked against.
    fn group_indices(
        piece: &[Range<u64>],
        order: Order,
        axes: &[usize],
        ranges: &[KeyRange],
        strides: &[u64],
        out: &mut Vec<usize>,
    ) -> DfResult<()> {
        let terms = axis_terms(piece, axes, ranges, strides)?;
        // Axes fastest first.
        let fast_to_slow: Vec<usize> = match order {
            Order::F => (0..piece.len()).collect(),
            Order::C => (0..piece.len()).rev().collect(),
        };
        out.clear();
        let Some((&fast, outer)) = fast_to_slow.split_first() else {
            // A 0-d array: one element.
            out.push(0);
            return Ok(());
        };
        let inner = &terms[fast];
        let mut at = vec![0usize; outer.len()];
        loop {
            let base: usize = outer.iter().zip(&at).map(|(&a, &x)| terms[a][x]).sum();
            out.extend(inner.iter().map(|&t| base + t));
            // Odometer over the outer axes, the next-fastest first.
            let mut k = 0;
            loop {
                let Some(&a) = outer.get(k) else {
                    return Ok(());
                };
                at[k] += 1;
                if at[k] < terms[a].len() {
                    break;
                }
                at[k] = 0;
                k += 1;
            }
        }
    }

    /// Group indices from the box arithmetic equal those from explicit coordinates, in both orders.
    #[test]
    fn group_indices_follow_the_layout() {
        let piece = vec![2..5, 1..3, 0..4];
        // GROUP BY k (axis 2), i (axis 0): ranges cover more than the piece.
        let axes = [2, 0];
        let ranges = [range(0, 5), range(1, 6)];
        let strides = [6u64, 1];
        for order in [Order::F, Order::C] {
            let mut got = Vec::new();
            group_indices(&piece, order, &axes, &ranges, &strides, &mut got).unwrap();
            let n = piece_len(&piece) as usize;
            let coords: Vec<Vec<i64>> = (0..3)
                .map(|a| super::super::layout::coordinates(&piece, order, a, 0, n))
                .collect();
            let want: Vec<usize> = (0..n)
                .map(|r| (coords[2][r] as usize) * 6 + (coords[0][r] as usize - 1))
                .collect();
            assert_eq!(got, want, "{order:?}");
            let mut seen = vec![false; 36];
            let mut piece_runs = Vec::new();
            runs(&piece, order, &axes, &ranges, &strides, &mut piece_runs).unwrap();
            mark_runs(&piece_runs, &mut seen);
            let mut marked: Vec<usize> = (0..36).filter(|&g| seen[g]).collect();
            let mut expected = want.clone();
            expected.sort_unstable();
            expected.dedup();
            marked.sort_unstable();
            assert_eq!(marked, expected);
        }
        let mut out = Vec::new();
        let e = group_indices(&piece, Order::F, &[0], &[range(3, 4)], &[1], &mut out).unwrap_err();
        assert!(e.to_string().contains("outside its planned range"), "{e}");
        let e = runs(
            &piece,
            Order::F,
            &[0],
            &[range(3, 4)],
            &[1],
            &mut Vec::new(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("outside its planned range"), "{e}");
    }

    /// Runs give every element the group `group_indices` gives it, for every key set, both orders and layout or
    /// row-major strides (same-group, consecutive and strided runs), and as few runs as the layout allows.
    #[test]
    fn runs_cover_the_piece_with_its_groups() {
        let piece = vec![0..4, 2..5, 0..1, 1..4];
        let full = [range(0, 3), range(0, 5), range(0, 0), range(0, 6)];
        let key_sets: [&[usize]; 6] = [&[0, 1, 2], &[3], &[2, 3], &[1], &[0, 3], &[1, 0]];
        for order in [Order::F, Order::C] {
            for axes in key_sets {
                let ranges: Vec<KeyRange> = axes.iter().map(|&a| full[a]).collect();
                let mut row_major = vec![1u64; axes.len()];
                for k in (0..axes.len().saturating_sub(1)).rev() {
                    row_major[k] = row_major[k + 1] * ranges[k + 1].slots().unwrap();
                }
                for strides in [layout_strides(axes, &ranges, order), row_major] {
                    let mut want = Vec::new();
                    group_indices(&piece, order, axes, &ranges, &strides, &mut want).unwrap();
                    let mut got = Vec::new();
                    runs(&piece, order, axes, &ranges, &strides, &mut got).unwrap();
                    let mut at = 0;
                    let mut per_element = Vec::new();
                    for r in &got {
                        assert_eq!(r.at, at, "{order:?} {axes:?}");
                        per_element.extend((0..r.len).map(|x| r.group + x * r.step));
                        at += r.len;
                    }
                    assert_eq!(per_element, want, "{order:?} {axes:?} {strides:?} {got:?}");
                    let mut from_runs = Vec::new();
                    indices_of_runs(&got, &mut from_runs);
                    assert_eq!(from_runs, want, "{order:?} {axes:?} {strides:?}");
                }
            }
        }
        // A per-voxel map of a whole F-order volume is one run of consecutive groups; GROUP BY t a run per volume.
        let volume = vec![0..4, 0..3, 0..2, 5..7];
        let axes = [0, 1, 2];
        let ranges = [range(0, 3), range(0, 2), range(0, 1)];
        let strides = layout_strides(&axes, &ranges, Order::F);
        let mut got = Vec::new();
        runs(&volume, Order::F, &axes, &ranges, &strides, &mut got).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!((got[0].len, got[0].step, got[1].group), (24, 1, 0));
        runs(&volume, Order::F, &[3], &[range(0, 9)], &[1], &mut got).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!((got[1].len, got[1].step, got[1].group), (24, 0, 6));
    }

    /// Emission follows the keys' row-major order whatever the internal numbering.
    #[test]
    fn emitted_groups_follow_the_key_order() {
        let ranges = [range(0, 1), range(0, 2)];
        // Internal: key 0 fastest (stride 1), key 1 stride 2; row-major: key 1 fastest.
        let seen = vec![true; 6];
        let got = emitted_groups(&seen, &ranges, &[1, 2], &[3, 1]);
        assert_eq!(got, vec![0, 2, 4, 1, 3, 5]);
        let mut seen = seen;
        seen[2] = false;
        assert_eq!(
            emitted_groups(&seen, &ranges, &[1, 2], &[3, 1]),
            vec![0, 4, 1, 3, 5]
        );
    }
}
