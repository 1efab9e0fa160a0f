//! An atlas join and its GROUP BY in one pass (DuckDB's perfect hash join and perfect aggregate, fused).
//! [`JoinAggregateExec`] stands in for an `AggregateExec` (`Partial` or `Single`, or the [`DenseAggregateExec`]
//! made of one) over an inner `CollectLeft` hash join on coordinates whose probe side is a voxel scan:
//!
//! ```text
//! AggregateExec  gby=[a.value, b.t], aggr=[avg(b.value)]          JoinAggregateExec (keeps the aggregate below)
//!   (projections)                                        ─►        build: voxel → slot of its group key (a.value)
//!     HashJoinExec CollectLeft on (b.i, b.j, b.k) = (a.i, …)       probe: value pieces of the scan, narrowed to the
//!       build (atlas …)   probe: DataSourceExec(VoxelSource)              build's box (or exactly its voxels)
//! ```
//!
//! The build side is collected once for all partitions into a dense table over the box of its coordinates: each
//! voxel holds the slot of its build-side group key (keys interned by DataFusion's own group-values table, so any
//! type and NULL — a group, as in SQL — work). A row of the probe scan (a value at a voxel and time, never its
//! coordinate columns) goes to group `slot × P + probe offset`, where the probe offset numbers the probe-side keys
//! (`t`, or coordinates) over their planned ranges (extent P); rows at voxels without a slot are dropped from the
//! piece (in runs) before any work on them. The aggregates are DataFusion's `GroupsAccumulator`s, so the emitted
//! rows (state or final values) are those of the aggregate replaced.
//!
//! When the build side lists a voxel twice (an inner join would then count the probe row twice), its box is over
//! [`MAX_BOX_VOXELS`] or its groups over the dense budget, the node runs the aggregate it replaced instead: answers
//! never depend on it. `SET voxelscan.fused_joins = false` turns the rule ([`JoinAggregateRule`]) off.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, BooleanBufferBuilder, Int64Array, RecordBatch,
    UInt64Array,
};
use datafusion::arrow::compute::filter_record_batch;
use datafusion::arrow::compute::{cast, take};
use datafusion::arrow::datatypes::{DataType, Field, Int64Type, Schema, SchemaRef};
use datafusion::common::ScalarValue;
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{DataFusionError, JoinSide, JoinType, NullEquality, Result as DfResult};
use datafusion::datasource::physical_plan::FileScanConfig;
use datafusion::execution::memory_pool::MemoryConsumer;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::{EmitTo, GroupsAccumulator, Operator};
use datafusion::physical_expr::expressions::{
    BinaryExpr, CastExpr, Column, InListExpr, Literal, lit,
};
use datafusion::physical_expr::{EquivalenceProperties, Partitioning, PhysicalExpr};
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::aggregates::group_values::new_group_values;
use datafusion::physical_plan::aggregates::order::GroupOrdering;
use datafusion::physical_plan::aggregates::{AggregateExec, AggregateMode, AggregateOutputMode};
use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType, reset_plan_states};
use datafusion::physical_plan::joins::{HashJoinExec, PartitionMode};
use datafusion::physical_plan::metrics::{
    BaselineMetrics, Count, ExecutionPlanMetricsSet, MetricBuilder, MetricsSet,
};
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::repartition::RepartitionExec;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties, collect,
};
use futures::{StreamExt, TryStreamExt};

use super::aggregate::{
    DenseAggregateExec, KeyRange, batch_of, emit_groups, filled, slices, state_bytes_per_group,
};
use super::aggregate_rule::{MAX_GROUPS, state_limit};
use super::config::VoxelscanOptions;
use super::layout::piece_len;
use super::moments::{Folded, Run as MomentRun, Stat};
use super::scan::{ValuePiece, VoxelSource};
use super::scan_aggregate::{
    FileKey, ScanColumn, axis_ranges, group_names, moment_stats, on_values, per_file_text, rebased,
    scan_below, shape_supported, shared_arguments, substitute, voxel_scan,
};
use super::schema::{AXIS_NAMES, value_fields};
use crate::formats::{Compression, Order};

/// Largest box of build-side voxels addressed directly (4 bytes each: 64 MiB).
pub const MAX_BOX_VOXELS: u64 = 1 << 24;

/// Build sides of at most this many voxels are read exactly (their key list narrows the probe scan), larger ones by
/// their box.
const MAX_LISTED_VOXELS: usize = 1 << 16;

/// A build side is read voxel by voxel (not by its box) only when its box holds more than this many times its voxels.
const SPARSE_BOX: u64 = 4;

/// Rows handed to the accumulators at once.
const CHUNK_ROWS: usize = 1 << 16;

/// A voxel of the box without a build row.
const NO_SLOT: u32 = u32::MAX;

/// Added to a box index for a coordinate outside the box: any sum with it is past the box's end.
const OUTSIDE: usize = 1 << 48;

/// Where a group key of the aggregate comes from.
#[derive(Debug, Clone, Copy)]
enum KeyFrom {
    /// The n-th build-side key expression.
    Build(usize),
    /// The n-th probe-side key (a coordinate of the scan).
    Probe(usize),
    /// The n-th per-file key of the probe scan (`file`, BIDS entities, …).
    File(usize),
}

/// What the rule found below the aggregate: everything the node needs besides the aggregate itself.
#[derive(Debug)]
struct Fused {
    /// The join's build side (left), collected once.
    build: Arc<dyn ExecutionPlan>,
    /// Per join key pair: the build-side coordinate (an expression over the build side's rows) and the scan axis it
    /// equals.
    build_coords: Vec<Arc<dyn PhysicalExpr>>,
    join_axes: Vec<usize>,
    /// The voxel scan of the probe side.
    scan: Arc<dyn ExecutionPlan>,
    /// Per group key of the aggregate, where it comes from.
    keys: Vec<KeyFrom>,
    /// Build-side group keys, over the build side's rows.
    build_keys: Vec<Arc<dyn PhysicalExpr>>,
    /// Probe-side group keys: scan axis, planned range, stride within the probe offset.
    probe_axes: Vec<usize>,
    probe_ranges: Vec<KeyRange>,
    probe_strides: Vec<usize>,
    /// Combinations of the probe-side keys (1 without any).
    probe_extent: usize,
    /// Per-file keys of the probe scan, their strides among their combinations and the number of combinations
    /// (1 without any): the slowest part of a group's index, `combination × build slots × probe_extent`.
    file_keys: Vec<FileKey>,
    file_strides: Vec<usize>,
    file_extent: usize,
    /// The aggregates' arguments over a batch of the scan's value columns.
    args: Vec<Vec<Arc<dyn PhysicalExpr>>>,
    value_schema: SchemaRef,
    /// Per aggregate, the state the native moments kernel makes for it; `None` when some aggregate is not one it
    /// computes (DataFusion's accumulators then see every kept row).
    stats: Option<Vec<Stat>>,
    /// Per scan axis, the largest length any file of the scan has on it.
    grid: Vec<u64>,
    /// Some file is gzip-compressed: its reader decompresses forward from seek points, so a box (or voxel list)
    /// costs a re-decompression per row; such scans are narrowed on the slowest join axis only (whole planes).
    compressed: bool,
    /// The join axis the files' layout varies slowest along.
    slowest_join_axis: usize,
}

/// The build side, collected: a direct table from voxel to group slot, or the reason the node falls back.
#[derive(Debug)]
enum Build {
    Dense(BuildTable),
    /// Why, and a fresh copy of the aggregate replaced (the original's build side was already run), which every
    /// partition runs instead.
    Fallback(String, Arc<dyn ExecutionPlan>),
}

#[derive(Debug)]
struct BuildTable {
    /// Per join axis, the box of the build side's voxels (inclusive), and row-major strides within it.
    lo: Vec<u64>,
    hi: Vec<u64>,
    strides: Vec<usize>,
    /// Box voxel → slot (`NO_SLOT`: no build row).
    slots: Vec<u32>,
    /// The distinct build-side keys, one column per build key, row n is slot n (one row without build keys).
    key_values: Vec<ArrayRef>,
    slot_count: usize,
    /// The build side's voxels, when few enough to read exactly: their linear keys over `grid`.
    listed: Option<Vec<i64>>,
    /// Per row of the box along the first join axis: its runs of voxels with one slot.
    rows: RowRuns,
}

/// Runs of equal slots along the rows of a box (regions are mostly convex: a row crosses few of them).
#[derive(Debug, Default)]
struct RowRuns {
    /// Row r's runs are `runs[offsets[r]..offsets[r + 1]]`.
    offsets: Vec<usize>,
    /// (first voxel within the row, voxels, slot).
    runs: Vec<(u64, u64, u32)>,
}

impl RowRuns {
    fn new(slots: &[u32], row_len: usize) -> Self {
        let mut out = RowRuns::default();
        for row in slots.chunks(row_len.max(1)) {
            out.offsets.push(out.runs.len());
            let mut x = 0;
            while x < row.len() {
                let s = row[x];
                let start = x;
                while x < row.len() && row[x] == s {
                    x += 1;
                }
                if s != NO_SLOT {
                    out.runs.push((start as u64, (x - start) as u64, s));
                }
            }
        }
        out.offsets.push(out.runs.len());
        out
    }

    fn row(&self, r: usize) -> &[(u64, u64, u32)] {
        match (self.offsets.get(r), self.offsets.get(r + 1)) {
            (Some(&a), Some(&b)) => &self.runs[a..b],
            _ => &[],
        }
    }
}

impl BuildTable {
    fn box_text(&self, fused: &Fused) -> String {
        let parts: Vec<String> = fused
            .join_axes
            .iter()
            .zip(self.lo.iter().zip(&self.hi))
            .map(|(&a, (lo, hi))| format!("{} {lo}..={hi}", AXIS_NAMES.get(a).unwrap_or(&"?")))
            .collect();
        // With per-file keys the groups and their factors are shown with the keys.
        let groups = if fused.file_keys.is_empty() {
            format!(
                ", groups={}",
                self.slot_count.saturating_mul(fused.probe_extent)
            )
        } else {
            String::new()
        };
        format!(
            "build_box=[{}], build_groups={}{groups}{}",
            parts.join(", "),
            self.slot_count,
            match probe_read(fused, self) {
                ProbeRead::CompressedPlanes => ", read=planes (compressed)",
                ProbeRead::Listed => ", read=listed voxels",
                ProbeRead::FilledPlanes => ", read=planes (the box fills them)",
                ProbeRead::Box => ", read=box",
            }
        )
    }
}

/// An aggregate over an atlas-style join, computed in one pass over the probe scan (see the module comment).
#[derive(Debug)]
pub struct JoinAggregateExec {
    /// The aggregate replaced, over the join (run as it is when the build side does not fit a direct table).
    inner: AggregateExec,
    fused: Arc<Fused>,
    /// The collected build side, shared by all partitions of this node.
    build: Arc<tokio::sync::OnceCell<Arc<Build>>>,
    /// Estimated state bytes per group (for the memory reservation).
    bytes_per_group: usize,
    properties: Arc<PlanProperties>,
    metrics: ExecutionPlanMetricsSet,
}

impl JoinAggregateExec {
    /// `agg` as a fused join-aggregate, or `None` when its shape is not one this node computes.
    pub fn try_new(agg: AggregateExec) -> DfResult<Option<Self>> {
        let Some(fused) = analyse(&agg)? else {
            return Ok(None);
        };
        let partitions = fused.scan.properties().partitioning.partition_count();
        if agg.mode() == &AggregateMode::Single && partitions != 1 {
            return Ok(None);
        }
        let properties = PlanProperties::new(
            EquivalenceProperties::new(agg.schema()),
            Partitioning::UnknownPartitioning(partitions),
            EmissionType::Final,
            Boundedness::Bounded,
        );
        Ok(Some(JoinAggregateExec {
            bytes_per_group: state_bytes_per_group(&agg),
            inner: agg,
            fused: Arc::new(fused),
            build: Arc::new(tokio::sync::OnceCell::new()),
            properties: Arc::new(properties),
            metrics: ExecutionPlanMetricsSet::new(),
        }))
    }

    /// The aggregate this node computes (over the join it replaces).
    pub fn aggregate(&self) -> &AggregateExec {
        &self.inner
    }
}

/// The node's analysis of `agg`, or `None` when it does not have the shape of the module comment.
fn analyse(agg: &AggregateExec) -> DfResult<Option<Fused>> {
    if !shape_supported(agg) || agg.group_expr().expr().is_empty() {
        return Ok(None);
    }
    let Some((join, above)) = join_below(agg.input()) else {
        return Ok(None);
    };
    if join.join_type() != &JoinType::Inner
        || join.partition_mode() != &PartitionMode::CollectLeft
        || join.null_equality() != NullEquality::NullEqualsNothing
        || join.null_aware
    {
        return Ok(None);
    }
    // The voxel scan is the probe side, usually the join's right; DataFusion may have swapped a small image to the
    // left (collected once), the other side then being the one collected (an inner join is symmetric).
    let (probe_side, build_plan, found) = match scan_below(join.right()) {
        Some(found) => (JoinSide::Right, join.left(), found),
        None => match single_scan_below(join.left()) {
            Some(found) => (JoinSide::Left, join.right(), found),
            None => return Ok(None),
        },
    };
    let (scan, probe_projections) = found;
    let Some((config, source, columns)) = voxel_scan(scan.as_ref()) else {
        return Ok(None);
    };
    if config.limit.is_some() {
        return Ok(None);
    }
    let left_len = join.left().schema().fields().len();
    // An expression over the aggregate's input, as one over the join's build or probe side.
    let to_side =
        |e: &Arc<dyn PhysicalExpr>| -> DfResult<Option<(JoinSide, Arc<dyn PhysicalExpr>)>> {
            let e = above
                .iter()
                .try_fold(Arc::clone(e), |e, p| substitute(&e, p))?;
            join_side(&e, join, left_len)
        };
    // A probe-side expression as the scan axis it is, if it is one.
    let probe_axis = |e: &Arc<dyn PhysicalExpr>| -> DfResult<Option<usize>> {
        let e = probe_projections
            .iter()
            .try_fold(Arc::clone(e), |e, p| substitute(&e, p))?;
        Ok(scan_axis(&e, &columns))
    };
    let Some(pairs) = key_pairs(join)? else {
        return Ok(None);
    };
    let mut build_coords = Vec::new();
    let mut join_axes = Vec::new();
    let oriented = |(l, r): &Pair| match probe_side {
        JoinSide::Left => (Arc::clone(r), Arc::clone(l)),
        _ => (Arc::clone(l), Arc::clone(r)),
    };
    for (l, r) in pairs.iter().map(oriented) {
        match probe_axis(&r)? {
            Some(a) if !join_axes.contains(&a) => {
                join_axes.push(a);
                build_coords.push(l);
            }
            _ => return Ok(None),
        }
    }
    if let Some(filter) = join.filter()
        && !filter_is_equalities(filter, &pairs)
    {
        return Ok(None);
    }
    let mut keys = Vec::new();
    let mut build_keys = Vec::new();
    let mut probe_axes = Vec::new();
    let mut file_keys = Vec::new();
    for (e, _) in agg.group_expr().expr() {
        match to_side(e)? {
            Some((side, e)) if side != probe_side && side != JoinSide::None => {
                keys.push(KeyFrom::Build(build_keys.len()));
                build_keys.push(e);
            }
            Some((side, e)) if side == probe_side => {
                if let Some(a) = probe_axis(&e)? {
                    keys.push(KeyFrom::Probe(probe_axes.len()));
                    probe_axes.push(a);
                    continue;
                }
                let over_scan = probe_projections
                    .iter()
                    .try_fold(e, |e, p| substitute(&e, p))?;
                let per_file = match over_scan
                    .downcast_ref::<Column>()
                    .map(|c| columns.get(c.index()))
                {
                    Some(Some(ScanColumn::PerFile(c))) => FileKey::new(config, source, *c)?,
                    _ => None,
                };
                match per_file {
                    Some(k) => {
                        keys.push(KeyFrom::File(file_keys.len()));
                        file_keys.push(k);
                    }
                    None => return Ok(None),
                }
            }
            _ => return Ok(None),
        }
    }
    let mut args = Vec::new();
    for a in agg.aggr_expr() {
        let mut exprs = Vec::new();
        for e in a.expressions() {
            let over_probe = match to_side(&e)? {
                Some((side, e)) if side == probe_side => e,
                // No column at all (`count(*)`'s literal): the same over the probe side.
                Some((JoinSide::None, e)) => e,
                _ => return Ok(None),
            };
            let over_scan = probe_projections
                .iter()
                .try_fold(over_probe, |e, p| substitute(&e, p))?;
            match on_values(&over_scan, &columns)? {
                Some(v) => exprs.push(v),
                None => return Ok(None),
            }
        }
        args.push(exprs);
    }
    let spec = source.spec();
    let Some(probe_ranges) = axis_ranges(spec, &probe_axes) else {
        return Ok(None);
    };
    let mut probe_strides = vec![1usize; probe_ranges.len()];
    let mut probe_extent = 1usize;
    for k in (0..probe_ranges.len()).rev() {
        probe_strides[k] = probe_extent;
        let slots = probe_ranges[k]
            .slots()
            .and_then(|s| usize::try_from(s).ok());
        match slots.and_then(|s| probe_extent.checked_mul(s)) {
            Some(e) if e as u64 <= MAX_GROUPS => probe_extent = e,
            _ => return Ok(None),
        }
    }
    // Per-file keys: their combinations count against the same budget as the probe keys'.
    let mut file_strides = vec![1usize; file_keys.len()];
    let mut file_extent = 1usize;
    for k in (0..file_keys.len()).rev() {
        file_strides[k] = file_extent;
        match file_extent.checked_mul(file_keys[k].extent()) {
            Some(e) if (e as u64).saturating_mul(probe_extent as u64) <= MAX_GROUPS => {
                file_extent = e
            }
            _ => return Ok(None),
        }
    }
    let ndim = spec.files.first().map_or(0, |f| f.ndim());
    let compressed = spec
        .files
        .iter()
        .any(|f| f.compression == Compression::Gzip);
    let slowest_join_axis = match spec.files.first().map(|f| f.layout.order) {
        Some(Order::C) => join_axes.iter().min(),
        _ => join_axes.iter().max(),
    }
    .copied()
    .unwrap_or(0);
    let grid = (0..ndim)
        .map(|a| {
            spec.files
                .iter()
                .map(|f| f.layout.shape.get(a).map_or(0, |&n| n as u64))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let value_schema = Arc::new(Schema::new(value_fields(spec.scalar)));
    let stats = moment_stats(agg, &args, &value_schema);
    Ok(Some(Fused {
        build: Arc::clone(build_plan),
        build_coords,
        join_axes,
        scan: Arc::clone(&scan),
        keys,
        build_keys,
        probe_axes,
        probe_ranges,
        probe_strides,
        probe_extent,
        file_keys,
        file_strides,
        file_extent,
        args,
        value_schema,
        stats,
        grid,
        compressed,
        slowest_join_axis,
    }))
}

/// The voxel scan under a join's collected side: [`scan_below`], also through the merge of its partitions.
fn single_scan_below(
    plan: &Arc<dyn ExecutionPlan>,
) -> Option<super::scan_aggregate::ScanAndProjections> {
    match plan.downcast_ref::<CoalescePartitionsExec>() {
        Some(c) if c.fetch().is_none() => scan_below(c.input()),
        Some(_) => None,
        None => scan_below(plan),
    }
}

/// The hash join under `plan` through projections and round-robin repartitions (nothing that drops or adds rows),
/// with the projections met on the way (top first).
fn join_below(
    plan: &Arc<dyn ExecutionPlan>,
) -> Option<(&HashJoinExec, Vec<Arc<dyn ExecutionPlan>>)> {
    let mut node = plan;
    let mut projections = Vec::new();
    loop {
        if let Some(j) = node.downcast_ref::<HashJoinExec>() {
            return Some((j, projections));
        }
        if let Some(p) = node.downcast_ref::<ProjectionExec>() {
            projections.push(Arc::clone(node));
            node = p.input();
            continue;
        }
        let r = node.downcast_ref::<RepartitionExec>()?;
        if !matches!(r.partitioning(), Partitioning::RoundRobinBatch(_)) || r.preserve_order() {
            return None;
        }
        node = r.input();
    }
}

/// `expr` over the join's output as an expression over one side's columns: which side (`None` when it reads no
/// column), or `None` when it reads both.
fn join_side(
    expr: &Arc<dyn PhysicalExpr>,
    join: &HashJoinExec,
    left_len: usize,
) -> DfResult<Option<(JoinSide, Arc<dyn PhysicalExpr>)>> {
    let mut side = JoinSide::None;
    let mut mixed = false;
    let out = Arc::clone(expr).transform_up(|e| {
        let Some(c) = e.downcast_ref::<Column>() else {
            return Ok(Transformed::no(e));
        };
        let at = match &join.projection {
            Some(p) => p.get(c.index()).copied(),
            None => Some(c.index()),
        };
        let Some(at) = at else {
            mixed = true;
            return Ok(Transformed::new(e, false, TreeNodeRecursion::Stop));
        };
        let (this, index, schema) = if at < left_len {
            (JoinSide::Left, at, join.left().schema())
        } else {
            (JoinSide::Right, at - left_len, join.right().schema())
        };
        if side != JoinSide::None && side != this {
            mixed = true;
        }
        side = this;
        let name = schema.field(index).name().clone();
        Ok(Transformed::yes(
            Arc::new(Column::new(&name, index)) as Arc<dyn PhysicalExpr>
        ))
    })?;
    Ok((!mixed).then_some((side, out.data)))
}

/// A probe-side expression (over the scan's output) naming a coordinate: the column, or a cast of it to `Int64`.
fn scan_axis(expr: &Arc<dyn PhysicalExpr>, columns: &[ScanColumn]) -> Option<usize> {
    let col = match expr.downcast_ref::<CastExpr>() {
        Some(c) if c.cast_type() == &DataType::Int64 => c.expr(),
        Some(_) => return None,
        None => expr,
    };
    match columns.get(col.downcast_ref::<Column>()?.index())? {
        ScanColumn::Axis(a) => Some(*a),
        _ => None,
    }
}

/// The join's key pairs (build expression, probe expression), one per coordinate: the equalities as they are, or
/// taken back out of the dense-join rule's linear key `Σ (CAST(c AS BIGINT) - lo) × stride` (same strides on both
/// sides).
type Pair = (Arc<dyn PhysicalExpr>, Arc<dyn PhysicalExpr>);

fn key_pairs(join: &HashJoinExec) -> DfResult<Option<Vec<Pair>>> {
    let on = join.on();
    if on.len() != 1 {
        return Ok(Some(
            on.iter()
                .map(|(l, r)| (Arc::clone(l), Arc::clone(r)))
                .collect(),
        ));
    }
    let (l, r) = &on[0];
    let (Some(lt), Some(rt)) = (linear_terms(l), linear_terms(r)) else {
        // One plain equality (a single coordinate).
        return Ok(Some(vec![(Arc::clone(l), Arc::clone(r))]));
    };
    if lt.len() != rt.len() {
        return Ok(None);
    }
    let mut pairs = Vec::new();
    for (le, ls, llo) in &lt {
        match rt.iter().find(|(_, rs, rlo)| rs == ls && rlo == llo) {
            Some((re, _, _)) => pairs.push((Arc::clone(le), Arc::clone(re))),
            None => return Ok(None),
        }
    }
    Ok(Some(pairs))
}

/// One term of a linear key: the cast column, its stride and its `lo`.
type Term = (Arc<dyn PhysicalExpr>, i64, i64);

/// The terms `(CAST(c AS BIGINT) - lo) × stride` of a linear key, as (the cast column, stride, lo); `None` when
/// `expr` is not such a sum of at least two terms.
fn linear_terms(expr: &Arc<dyn PhysicalExpr>) -> Option<Vec<Term>> {
    fn term(e: &Arc<dyn PhysicalExpr>) -> Option<Term> {
        let (e, stride) = match e.downcast_ref::<BinaryExpr>() {
            Some(b) if b.op() == &Operator::Multiply => (b.left(), literal_i64(b.right())?),
            _ => (e, 1),
        };
        let (e, lo) = match e.downcast_ref::<BinaryExpr>() {
            Some(b) if b.op() == &Operator::Minus => (b.left(), literal_i64(b.right())?),
            _ => (e, 0),
        };
        let cast = e.downcast_ref::<CastExpr>()?;
        cast.expr().downcast_ref::<Column>()?;
        Some((Arc::clone(e), stride, lo))
    }
    fn sum(e: &Arc<dyn PhysicalExpr>, out: &mut Vec<Term>) -> Option<()> {
        match e.downcast_ref::<BinaryExpr>() {
            Some(b) if b.op() == &Operator::Plus => {
                sum(b.left(), out)?;
                sum(b.right(), out)
            }
            _ => {
                out.push(term(e)?);
                Some(())
            }
        }
    }
    let mut out = Vec::new();
    sum(expr, &mut out)?;
    (out.len() >= 2).then_some(out)
}

fn literal_i64(e: &Arc<dyn PhysicalExpr>) -> Option<i64> {
    match e.downcast_ref::<Literal>()?.value() {
        ScalarValue::Int64(Some(v)) => Some(*v),
        _ => None,
    }
}

/// The join's filter is only the equalities of its key pairs (as the dense-join rule writes them): implied by the
/// node's own matching on every coordinate.
fn filter_is_equalities(
    filter: &datafusion::physical_plan::joins::utils::JoinFilter,
    pairs: &[Pair],
) -> bool {
    let column_of = |e: &Arc<dyn PhysicalExpr>| -> Option<usize> {
        let e = match e.downcast_ref::<CastExpr>() {
            Some(c) => c.expr(),
            None => e,
        };
        e.downcast_ref::<Column>().map(Column::index)
    };
    let wanted: Vec<(usize, usize)> = pairs
        .iter()
        .filter_map(|(l, r)| Some((column_of(l)?, column_of(r)?)))
        .collect();
    let indices = filter.column_indices();
    let side_column = |e: &Arc<dyn PhysicalExpr>| {
        let c = e.downcast_ref::<Column>()?;
        let ci = indices.get(c.index())?;
        Some((ci.side, ci.index))
    };
    let mut conjuncts = vec![Arc::clone(filter.expression())];
    while let Some(e) = conjuncts.pop() {
        let Some(b) = e.downcast_ref::<BinaryExpr>() else {
            return false;
        };
        match b.op() {
            Operator::And => {
                conjuncts.push(Arc::clone(b.left()));
                conjuncts.push(Arc::clone(b.right()));
            }
            Operator::Eq => {
                let pair = match (side_column(b.left()), side_column(b.right())) {
                    (Some((JoinSide::Left, l)), Some((JoinSide::Right, r)))
                    | (Some((JoinSide::Right, r)), Some((JoinSide::Left, l))) => (l, r),
                    _ => return false,
                };
                if !wanted.contains(&pair) {
                    return false;
                }
            }
            _ => return false,
        }
    }
    true
}

impl DisplayAs for JoinAggregateExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        let fused = &self.fused;
        let keys: Vec<String> = self
            .inner
            .group_expr()
            .expr()
            .iter()
            .zip(&fused.keys)
            .map(|((_, name), from)| match from {
                KeyFrom::Build(_) => format!("{name} (build)"),
                KeyFrom::Probe(n) => {
                    let r = fused.probe_ranges[*n];
                    format!("{name}@[{}, {}]", r.min, r.max)
                }
                KeyFrom::File(n) => per_file_text(name, &fused.file_keys[*n]),
            })
            .collect();
        let on: Vec<&str> = fused
            .join_axes
            .iter()
            .map(|&a| *AXIS_NAMES.get(a).unwrap_or(&"?"))
            .collect();
        let aggs: Vec<&str> = self.inner.aggr_expr().iter().map(|a| a.name()).collect();
        write!(
            f,
            "JoinAggregateExec: mode={:?}, gby=[{}], aggr=[{}], on=[{}]",
            self.inner.mode(),
            keys.join(", "),
            aggs.join(", "),
            on.join(", ")
        )?;
        if !fused.file_keys.is_empty() {
            // The groups and their factors (the build keys' slots known once collected): `file×label×t=3×100×300`.
            let names = group_names(&self.inner);
            let built = match self.build.get().map(Arc::as_ref) {
                Some(Build::Dense(t)) => Some(t.slot_count),
                _ => None,
            };
            let slots: Vec<String> = fused
                .keys
                .iter()
                .map(|from| match from {
                    KeyFrom::Build(_) => built.map_or("?".to_string(), |s| s.to_string()),
                    KeyFrom::Probe(n) => fused.probe_ranges[*n].slots().unwrap_or(1).to_string(),
                    KeyFrom::File(n) => fused.file_keys[*n].extent().to_string(),
                })
                .collect();
            write!(f, ", groups={}={}", names.join("×"), slots.join("×"))?;
            if let Some(s) = built {
                let total = s
                    .saturating_mul(fused.probe_extent)
                    .saturating_mul(fused.file_extent);
                write!(f, "={total}")?;
            }
        }
        match self.build.get().map(Arc::as_ref) {
            Some(Build::Dense(t)) => write!(f, ", {}", t.box_text(fused)),
            Some(Build::Fallback(why, _)) => write!(f, ", fallback=({why})"),
            None => write!(f, ", build=not yet collected"),
        }
    }
}

/// Metrics of the node (besides the scan's own, which count the bytes read and skipped).
#[derive(Clone)]
struct Counters {
    build_rows: Count,
    build_groups: Count,
    box_voxels: Count,
    fallbacks: Count,
    /// Rows the native moments kernel took (the rest went through DataFusion's accumulators).
    moment_rows: Count,
}

impl ExecutionPlan for JoinAggregateExec {
    fn name(&self) -> &str {
        "JoinAggregateExec"
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
                "join aggregate: one child expected".into(),
            ));
        };
        let inner = rebased(&self.inner, Arc::clone(child))?;
        // A child no longer of the shape: the aggregate as it was (the same answer).
        Ok(match JoinAggregateExec::try_new(inner.clone())? {
            Some(n) => Arc::new(n),
            None => Arc::new(inner),
        })
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> DfResult<SendableRecordBatchStream> {
        let counters = Counters {
            build_rows: MetricBuilder::new(&self.metrics).counter("build_rows", partition),
            build_groups: MetricBuilder::new(&self.metrics).counter("build_groups", partition),
            box_voxels: MetricBuilder::new(&self.metrics).counter("build_box_voxels", partition),
            fallbacks: MetricBuilder::new(&self.metrics).counter("fallbacks", partition),
            moment_rows: MetricBuilder::new(&self.metrics).counter("moment_rows", partition),
        };
        let baseline = BaselineMetrics::new(&self.metrics, partition);
        let run = Run {
            fused: Arc::clone(&self.fused),
            inner: Arc::new(self.inner.clone()),
            cell: Arc::clone(&self.build),
            bytes_per_group: self.bytes_per_group,
            schema: self.schema(),
            final_output: self.inner.mode().output_mode() == AggregateOutputMode::Final,
        };
        let schema = self.schema();
        let out =
            futures::stream::once(run.stream(partition, context, counters, baseline)).try_flatten();
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

/// One partition's run (owned parts of the node).
struct Run {
    fused: Arc<Fused>,
    inner: Arc<AggregateExec>,
    cell: Arc<tokio::sync::OnceCell<Arc<Build>>>,
    bytes_per_group: usize,
    schema: SchemaRef,
    final_output: bool,
}

impl Run {
    async fn stream(
        self,
        partition: usize,
        context: Arc<TaskContext>,
        counters: Counters,
        baseline: BaselineMetrics,
    ) -> DfResult<SendableRecordBatchStream> {
        let build = self
            .cell
            .get_or_try_init(|| async {
                let b = collect_build(&self.fused, &context, self.bytes_per_group).await?;
                counters.build_rows.add(b.1);
                let b = match b.0 {
                    Ok(t) => {
                        counters.build_groups.add(t.slot_count);
                        counters.box_voxels.add(t.slots.len());
                        Build::Dense(t)
                    }
                    Err(why) => {
                        let fresh = Arc::clone(&self.inner) as Arc<dyn ExecutionPlan>;
                        Build::Fallback(why, reset_plan_states(fresh)?)
                    }
                };
                Ok::<_, DataFusionError>(Arc::new(b))
            })
            .await?;
        let table = match build.as_ref() {
            Build::Dense(t) => t,
            Build::Fallback(_, plan) => {
                counters.fallbacks.add(1);
                return plan.execute(partition, context);
            }
        };
        let groups = table.slot_count * self.fused.probe_extent * self.fused.file_extent;
        let reservation = MemoryConsumer::new(format!("JoinAggregateExec[{partition}]"))
            .register(context.memory_pool());
        reservation.try_grow(groups.saturating_mul(self.bytes_per_group))?;
        let mut state = State::new(&self, groups, counters.moment_rows.clone())?;
        let (config, source) = scan_parts(self.fused.scan.as_ref())?;
        let mut pieces =
            source.value_pieces_within(config, partition, narrowing(&self.fused, table)?)?;
        let timer = baseline.elapsed_compute().clone();
        while let Some(p) = pieces.next().await {
            let p = p?;
            let _t = timer.timer();
            state.update(&p, table)?;
        }
        let batch = {
            let _t = timer.timer();
            state.emit(&self, table)?
        };
        drop(reservation);
        baseline.record_output(batch.num_rows());
        let size = context.session_config().batch_size().max(1);
        let batches = slices(batch, size);
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            Arc::clone(&self.schema),
            futures::stream::iter(batches.into_iter().map(Ok)),
        )))
    }
}

fn scan_parts(plan: &dyn ExecutionPlan) -> DfResult<(&FileScanConfig, &VoxelSource)> {
    voxel_scan(plan)
        .map(|(c, s, _)| (c, s))
        .ok_or_else(|| DataFusionError::Internal("join aggregate without a voxel scan".into()))
}

/// Collect the build side: every partition of it, into the direct table (or the reason not to use one).
async fn collect_build(
    fused: &Fused,
    context: &Arc<TaskContext>,
    bytes_per_group: usize,
) -> DfResult<(Result<BuildTable, String>, usize)> {
    let batches = collect(Arc::clone(&fused.build), Arc::clone(context)).await?;
    let rows = batches.iter().map(RecordBatch::num_rows).sum();
    Ok((build_table(fused, &batches, bytes_per_group)?, rows))
}

/// The direct table of the build side's rows `batches` (or the reason not to use one).
fn build_table(
    fused: &Fused,
    batches: &[RecordBatch],
    bytes_per_group: usize,
) -> DfResult<Result<BuildTable, String>> {
    let build = &fused.build;
    let key_fields: Vec<Field> = fused
        .build_keys
        .iter()
        .enumerate()
        .map(|(n, e)| {
            Ok(Field::new(
                format!("k{n}"),
                e.data_type(&build.schema())?,
                true,
            ))
        })
        .collect::<DfResult<_>>()?;
    let mut interner = if key_fields.is_empty() {
        None
    } else {
        Some(new_group_values(
            Arc::new(Schema::new(key_fields)),
            &GroupOrdering::None,
        )?)
    };
    // Every build row with all coordinates inside the probe grid: its coordinates and slot.
    let dims = fused.join_axes.len();
    let mut coords: Vec<u64> = Vec::new();
    let mut row_slots: Vec<u32> = Vec::new();
    let mut ids = Vec::new();
    for batch in batches {
        let n = batch.num_rows();
        let cs = fused
            .build_coords
            .iter()
            .map(|e| {
                let a = e.evaluate(batch)?.into_array(n)?;
                Ok(cast(&a, &DataType::Int64)?)
            })
            .collect::<DfResult<Vec<ArrayRef>>>()?;
        let cs: Vec<&datafusion::arrow::array::PrimitiveArray<Int64Type>> =
            cs.iter().map(|a| a.as_primitive::<Int64Type>()).collect();
        ids.clear();
        match &mut interner {
            Some(g) => {
                let keys = fused
                    .build_keys
                    .iter()
                    .map(|e| e.evaluate(batch)?.into_array(n))
                    .collect::<DfResult<Vec<_>>>()?;
                g.intern(&keys, &mut ids)?;
            }
            None => ids.resize(n, 0),
        }
        'rows: for (row, &id) in ids.iter().enumerate() {
            let start = coords.len();
            for (k, c) in cs.iter().enumerate() {
                // A NULL coordinate matches nothing; one outside the grid matches no voxel.
                let x = if c.is_null(row) { -1 } else { c.value(row) };
                match u64::try_from(x) {
                    Ok(x) if x < fused.grid[fused.join_axes[k]] => coords.push(x),
                    _ => {
                        coords.truncate(start);
                        continue 'rows;
                    }
                }
            }
            let slot = u32::try_from(id).map_err(|_| {
                DataFusionError::Internal("join aggregate: too many build keys".into())
            })?;
            row_slots.push(slot);
        }
    }
    let slot_count = match &interner {
        Some(g) => g.len(),
        None => 1,
    };
    let key_values = match interner.as_mut() {
        Some(g) => g.emit(EmitTo::All)?,
        None => Vec::new(),
    };
    if row_slots.is_empty() {
        // No build voxel: no row of the join, no group.
        return Ok(Ok(BuildTable {
            lo: vec![0; dims],
            hi: vec![0; dims],
            strides: vec![0; dims],
            slots: Vec::new(),
            key_values,
            slot_count: 0,
            listed: Some(Vec::new()),
            rows: RowRuns::default(),
        }));
    }
    let mut lo = vec![u64::MAX; dims];
    let mut hi = vec![0u64; dims];
    for v in coords.chunks_exact(dims.max(1)) {
        for k in 0..dims {
            lo[k] = lo[k].min(v[k]);
            hi[k] = hi[k].max(v[k]);
        }
    }
    let mut strides = vec![1usize; dims];
    let mut volume = 1u64;
    for k in 0..dims {
        strides[k] = volume as usize;
        volume = volume.saturating_mul(hi[k] - lo[k] + 1);
    }
    if volume > MAX_BOX_VOXELS {
        return Ok(Err(format!(
            "build box of {volume} voxels over {MAX_BOX_VOXELS}"
        )));
    }
    let groups = (slot_count as u64)
        .saturating_mul(fused.probe_extent as u64)
        .saturating_mul(fused.file_extent as u64);
    let state = groups
        .saturating_mul(bytes_per_group as u64)
        .saturating_mul(
            fused
                .scan
                .properties()
                .partitioning
                .partition_count()
                .max(1) as u64,
        );
    if groups > MAX_GROUPS || state > state_limit() {
        return Ok(Err(format!("{groups} groups over the dense budget")));
    }
    let mut slots = vec![NO_SLOT; volume as usize];
    for (v, &slot) in coords.chunks_exact(dims.max(1)).zip(&row_slots) {
        let at: usize = (0..dims)
            .map(|k| (v[k] - lo[k]) as usize * strides[k])
            .sum();
        if slots[at] != NO_SLOT {
            return Ok(Err("a voxel appears twice on the build side".into()));
        }
        slots[at] = slot;
    }
    // A compact region is read faster as its box (one reader per slab) than voxel by voxel (a reader per plane).
    let sparse = (row_slots.len() as u64).saturating_mul(SPARSE_BOX) < volume;
    let listed = (sparse && row_slots.len() <= MAX_LISTED_VOXELS).then(|| {
        let grid_strides = grid_strides(fused);
        coords
            .chunks_exact(dims.max(1))
            .map(|v| (0..dims).map(|k| v[k] as i64 * grid_strides[k]).sum())
            .collect()
    });
    let rows = RowRuns::new(&slots, (hi[0] - lo[0] + 1) as usize);
    Ok(Ok(BuildTable {
        lo,
        hi,
        strides,
        slots,
        key_values,
        slot_count,
        listed,
        rows,
    }))
}

/// Strides of a linear key over the join axes on the probe grid (the first join axis fastest), as the voxel scan
/// decodes them.
fn grid_strides(fused: &Fused) -> Vec<i64> {
    let mut out = Vec::with_capacity(fused.join_axes.len());
    let mut s = 1i64;
    for &a in &fused.join_axes {
        out.push(s);
        s = s.saturating_mul(fused.grid[a] as i64);
    }
    out
}

/// Filters narrowing the probe scan to the build side: its box on every join axis, and its voxels as a key list
/// on a linear key when few.
fn narrowing(fused: &Fused, table: &BuildTable) -> DfResult<Vec<Arc<dyn PhysicalExpr>>> {
    let col = |a: usize| -> Arc<dyn PhysicalExpr> {
        Arc::new(Column::new(AXIS_NAMES.get(a).copied().unwrap_or("?"), a))
    };
    if table.slot_count == 0 {
        return Ok(vec![lit(false)]);
    }
    let read = probe_read(fused, table);
    let planes = matches!(read, ProbeRead::CompressedPlanes | ProbeRead::FilledPlanes);
    let mut out: Vec<Arc<dyn PhysicalExpr>> = Vec::new();
    for (k, &a) in fused.join_axes.iter().enumerate() {
        if planes && a != fused.slowest_join_axis {
            continue;
        }
        let range = |op, v: u64| -> Arc<dyn PhysicalExpr> {
            Arc::new(BinaryExpr::new(col(a), op, lit(v as i64)))
        };
        out.push(range(Operator::GtEq, table.lo[k]));
        out.push(range(Operator::LtEq, table.hi[k]));
    }
    if let (ProbeRead::Listed, Some(keys)) = (read, &table.listed) {
        let strides = grid_strides(fused);
        let key = fused
            .join_axes
            .iter()
            .zip(&strides)
            .map(|(&a, &s)| -> Arc<dyn PhysicalExpr> {
                if s == 1 {
                    col(a)
                } else {
                    Arc::new(BinaryExpr::new(col(a), Operator::Multiply, lit(s)))
                }
            })
            .reduce(|x, y| Arc::new(BinaryExpr::new(x, Operator::Plus, y)))
            .unwrap_or_else(|| lit(0i64));
        let ndim = fused.grid.len();
        let schema = Schema::new(
            (0..ndim)
                .map(|a| {
                    Field::new(
                        AXIS_NAMES.get(a).copied().unwrap_or("?"),
                        DataType::Int64,
                        false,
                    )
                })
                .collect::<Vec<_>>(),
        );
        let array: ArrayRef = Arc::new(Int64Array::from(keys.clone()));
        out.push(Arc::new(InListExpr::try_new_from_array(
            key, array, false, &schema,
        )?));
    }
    Ok(out)
}

/// How the probe reads the build's box.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ProbeRead {
    /// Whole planes across the slowest join axis: a gzip reader decompresses forward from seek points anyway.
    CompressedPlanes,
    /// Only the voxels the build lists (a small scattered region, on a grid of several join axes).
    Listed,
    /// Whole planes across the slowest join axis, the box filling most of each ([`fills_planes`]).
    FilledPlanes,
    /// The box's rows.
    Box,
}

fn probe_read(fused: &Fused, table: &BuildTable) -> ProbeRead {
    if fused.compressed {
        ProbeRead::CompressedPlanes
    } else if table.listed.is_some() && fused.join_axes.len() > 1 {
        ProbeRead::Listed
    } else if fills_planes(fused, table) {
        ProbeRead::FilledPlanes
    } else {
        ProbeRead::Box
    }
}

/// Whether the build's box covers most of each plane across the slowest join axis (a whole-brain atlas): the probe
/// then reads whole planes, which come straight from a mapped file (contiguous pieces, no copy) where a box's rows
/// would be gathered one by one, and the rows outside the box cost nothing (no run reaches them).
fn fills_planes(fused: &Fused, table: &BuildTable) -> bool {
    let (mut inside, mut plane) = (1u64, 1u64);
    for (k, &a) in fused.join_axes.iter().enumerate() {
        if a == fused.slowest_join_axis {
            continue;
        }
        inside = inside.saturating_mul(table.hi[k] - table.lo[k] + 1);
        plane = plane.saturating_mul(fused.grid.get(a).copied().unwrap_or(1).max(1));
    }
    inside.saturating_mul(PLANE_FILL) >= plane
}

/// A box whose rows cover at least 1/`PLANE_FILL` of each plane is read by whole planes.
const PLANE_FILL: u64 = 2;

/// One partition's accumulators.
struct State {
    fused: Arc<Fused>,
    accumulators: Vec<Box<dyn GroupsAccumulator>>,
    /// Groups with rows.
    seen: Vec<bool>,
    /// Which elements of the current piece are at voxels with a build row.
    keep: BooleanBufferBuilder,
    groups: usize,
    indices: Vec<usize>,
    unique_args: Vec<Arc<dyn PhysicalExpr>>,
    args: Vec<Vec<usize>>,
    value_schema: SchemaRef,
    /// The native moments, when every aggregate is one they compute: kept rows go to them in runs of one group.
    moments: Option<Folded>,
    moment_runs: Vec<MomentRun>,
    moment_rows: Count,
}

/// What [`State::index`] makes of a piece.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Placed {
    /// Runs of elements and their groups, for the moments kernel.
    Runs,
    /// Every kept element's group and the selection mask, for DataFusion's accumulators.
    Rows,
}

impl State {
    fn new(run: &Run, groups: usize, moment_rows: Count) -> DfResult<Self> {
        let seen = filled(groups, false, "join aggregate")?;
        let (unique_args, args) = shared_arguments(&run.fused.args);
        let moments = match (&run.fused.stats, run.fused.value_schema.fields().first()) {
            (Some(stats), Some(value)) => Folded::new(value.data_type(), stats, groups)?,
            _ => None,
        };
        Ok(State {
            fused: Arc::clone(&run.fused),
            accumulators: run
                .inner
                .aggr_expr()
                .iter()
                .map(|a| a.create_groups_accumulator())
                .collect::<DfResult<_>>()?,
            seen,
            keep: BooleanBufferBuilder::new(0),
            groups,
            indices: Vec::new(),
            unique_args,
            args,
            value_schema: Arc::clone(&run.fused.value_schema),
            moments,
            moment_runs: Vec::new(),
            moment_rows,
        })
    }

    fn update(&mut self, p: &ValuePiece, table: &BuildTable) -> DfResult<()> {
        let n = usize::try_from(piece_len(&p.piece))
            .map_err(|_| DataFusionError::Internal("piece beyond the address space".into()))?;
        if n == 0 || self.groups == 0 {
            return Ok(());
        }
        if p.values.iter().any(|v| v.len() != n) {
            return Err(DataFusionError::Internal(format!(
                "join aggregate: {} values for a piece of {n}",
                p.values.first().map_or(0, |v| v.len())
            )));
        }
        if self.moments.is_some() {
            let kept = self.index(p, table, Placed::Runs)?;
            if kept == 0 || self.add_moments(p, kept)? {
                return Ok(());
            }
        }
        let kept = self.index(p, table, Placed::Rows)?;
        if kept == 0 {
            return Ok(());
        }
        let batch = RecordBatch::try_new(Arc::clone(&self.value_schema), p.values.clone())?;
        // Rows at voxels without a build row are dropped before any work on them (the join would drop them).
        let batch = if kept == n {
            batch
        } else {
            let keep = BooleanArray::new(self.keep.finish(), None);
            filter_record_batch(&batch, &keep)?
        };
        let mut from = 0;
        while from < kept {
            let len = CHUNK_ROWS.min(kept - from);
            self.update_chunk(&batch.slice(from, len), from)?;
            from += len;
        }
        Ok(())
    }

    /// The piece's kept runs added to the native moments; `false` when the kernel does not read them (floats with
    /// NaN, say), and DataFusion's accumulators must see the rows.
    fn add_moments(&mut self, p: &ValuePiece, kept: usize) -> DfResult<bool> {
        let (Some(m), [values]) = (&mut self.moments, p.values.as_slice()) else {
            return Ok(false);
        };
        let added = m.add(values, &self.moment_runs, kept, &mut self.accumulators)?;
        if added {
            self.moment_rows.add(kept);
        }
        Ok(added)
    }

    /// Where the piece's elements at voxels with a build row go, marking their groups seen: as runs of one group
    /// into `moment_runs` ([`Placed::Runs`]), or each element's group into `indices` and which elements those are
    /// into `keep` ([`Placed::Rows`]). Returns the number of such elements.
    fn index(&mut self, p: &ValuePiece, table: &BuildTable, placed: Placed) -> DfResult<usize> {
        let piece = &p.piece;
        let fused_terms = &axis_terms(piece, &self.fused, table)?;
        let fast_to_slow: Vec<usize> = match p.file.layout.order {
            Order::F => (0..piece.len()).collect(),
            Order::C => (0..piece.len()).rev().collect(),
        };
        // The piece's file: its combination of per-file keys, the slowest part of every group of the piece.
        let mut combination = 0usize;
        for (k, stride) in self.fused.file_keys.iter().zip(&self.fused.file_strides) {
            combination += k.slot(p)? * stride;
        }
        let file_base = combination * table.slot_count * self.fused.probe_extent;
        let (slots, seen) = (&table.slots, &mut self.seen);
        let extent = self.fused.probe_extent;
        let out = &mut self.indices;
        out.clear();
        self.keep.truncate(0);
        let moment_runs = &mut self.moment_runs;
        moment_runs.clear();
        let by_rows = placed == Placed::Rows;
        let mut kept = 0usize;
        let mut runs = Runs::new(&mut self.keep);
        let Some((&fast, outer)) = fast_to_slow.split_first() else {
            // A 0-d array: one element, at the one voxel.
            return Ok(match slots.first() {
                Some(&s) if s != NO_SLOT => {
                    let g = file_base + s as usize * extent;
                    out.push(g);
                    moment_runs.push(MomentRun {
                        at: 0,
                        len: 1,
                        group: g,
                        step: 0,
                    });
                    seen[g] = true;
                    1
                }
                _ => 0,
            });
        };
        let (box_fast, probe_fast) = (&fused_terms[fast].0, &fused_terms[fast].1);
        // The fast axis is the first join axis and no probe key: a row of the piece is a row of the box, placed
        // run by run.
        let by_runs =
            self.fused.join_axes.first() == Some(&fast) && probe_fast.iter().all(|&q| q == 0);
        let row_len = (table.hi[0] - table.lo[0] + 1) as usize;
        let span = piece[fast].clone();
        let mut at = vec![0usize; outer.len()];
        let mut last = usize::MAX;
        // The piece's element at the start of the current row.
        let mut row_at = 0usize;
        loop {
            let base_box: usize = outer
                .iter()
                .zip(&at)
                .map(|(&a, &x)| fused_terms[a].0[x])
                .sum();
            let base_probe: usize = file_base
                + outer
                    .iter()
                    .zip(&at)
                    .map(|(&a, &x)| fused_terms[a].1[x])
                    .sum::<usize>();
            if by_runs {
                if base_box >= OUTSIDE {
                    if by_rows {
                        runs.push_n(false, box_fast.len());
                    }
                } else {
                    let mut pos = span.start;
                    for &(start, len, s) in table.rows.row(base_box / row_len) {
                        let a = (table.lo[0] + start).max(span.start);
                        let b = (table.lo[0] + start + len).min(span.end);
                        if a >= b {
                            continue;
                        }
                        let g = s as usize * extent + base_probe;
                        seen[g] = true;
                        let len = (b - a) as usize;
                        kept += len;
                        if by_rows {
                            runs.push_n(false, (a - pos) as usize);
                            out.extend(std::iter::repeat_n(g, len));
                            runs.push_n(true, len);
                        } else {
                            let at = row_at + (a - span.start) as usize;
                            moment_runs.push(MomentRun {
                                at,
                                len,
                                group: g,
                                step: 0,
                            });
                        }
                        pos = b;
                    }
                    if by_rows {
                        runs.push_n(false, (span.end - pos) as usize);
                    }
                }
            } else {
                for (x, (b, q)) in box_fast.iter().zip(probe_fast).enumerate() {
                    match slots.get(base_box + b) {
                        Some(&s) if s != NO_SLOT => {
                            let g = s as usize * extent + base_probe + q;
                            // Neighbouring voxels mostly share a group: mark it once per run.
                            if g != last {
                                seen[g] = true;
                                last = g;
                            }
                            kept += 1;
                            if by_rows {
                                out.push(g);
                                runs.push(true);
                            } else {
                                extend_run(moment_runs, row_at + x, g);
                            }
                        }
                        _ if by_rows => runs.push(false),
                        _ => {}
                    }
                }
            }
            row_at += box_fast.len();
            let mut k = 0;
            loop {
                let Some(&a) = outer.get(k) else {
                    runs.finish();
                    return Ok(kept);
                };
                at[k] += 1;
                if at[k] < fused_terms[a].0.len() {
                    break;
                }
                at[k] = 0;
                k += 1;
            }
        }
    }

    fn update_chunk(&mut self, batch: &RecordBatch, from: usize) -> DfResult<()> {
        let n = batch.num_rows();
        let evaluated = self
            .unique_args
            .iter()
            .map(|e| e.evaluate(batch)?.into_array(n))
            .collect::<DfResult<Vec<_>>>()?;
        let idx = &self.indices[from..from + n];
        for (k, acc) in self.accumulators.iter_mut().enumerate() {
            let values: Vec<ArrayRef> = self.args[k]
                .iter()
                .map(|&a| Arc::clone(&evaluated[a]))
                .collect();
            acc.update_batch(&values, idx, None, self.groups)?;
        }
        Ok(())
    }

    fn emit(mut self, run: &Run, table: &BuildTable) -> DfResult<RecordBatch> {
        if let Some(m) = &mut self.moments {
            m.fold(&mut self.accumulators)?;
        }
        let chosen: Vec<u64> = self
            .seen
            .iter()
            .enumerate()
            .filter_map(|(g, &s)| s.then_some(g as u64))
            .collect();
        if chosen.is_empty() {
            return Ok(RecordBatch::new_empty(Arc::clone(&run.schema)));
        }
        let fused = &run.fused;
        let extent = fused.probe_extent as u64;
        let build_slots = (table.slot_count as u64).max(1);
        let slot_idx =
            UInt64Array::from_iter_values(chosen.iter().map(|&g| (g / extent) % build_slots));
        let combination = |g: u64| g / extent / build_slots;
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(run.schema.fields().len());
        for from in &fused.keys {
            match *from {
                KeyFrom::Build(n) => columns.push(take(&table.key_values[n], &slot_idx, None)?),
                KeyFrom::File(n) => {
                    let key = &fused.file_keys[n];
                    let stride = fused.file_strides[n] as u64;
                    let values = key.extent().max(1) as u64;
                    let idx = UInt64Array::from_iter_values(
                        chosen.iter().map(|&g| (combination(g) / stride) % values),
                    );
                    columns.push(take(&key.values, &idx, None)?);
                }
                KeyFrom::Probe(n) => {
                    let r = fused.probe_ranges[n];
                    let slots = r.slots().unwrap_or(1);
                    let stride = fused.probe_strides[n] as u64;
                    let keys = Int64Array::from_iter_values(
                        chosen
                            .iter()
                            .map(|&g| r.min + (((g % extent) / stride) % slots) as i64),
                    );
                    columns.push(Arc::new(keys));
                }
            }
        }
        emit_groups(
            &mut self.accumulators,
            run.final_output,
            chosen,
            &mut columns,
        )?;
        batch_of(&run.schema, columns)
    }
}

/// Element `at` of a piece, in group `g`, appended to `runs`: it extends the last run when it follows it in the same
/// group (step 0) or the next one (step 1, a probe key on the fast axis).
fn extend_run(runs: &mut Vec<MomentRun>, at: usize, g: usize) {
    if let Some(r) = runs.last_mut()
        && r.at + r.len == at
    {
        if r.step == 0 && r.group == g {
            r.len += 1;
            return;
        }
        if (r.len == 1 || r.step == 1) && r.group + r.len == g {
            r.step = 1;
            r.len += 1;
            return;
        }
    }
    runs.push(MomentRun {
        at,
        len: 1,
        group: g,
        step: 0,
    });
}

/// A selection mask appended in runs (elements at voxels with a build row come in runs along the fast axis).
struct Runs<'a> {
    mask: &'a mut BooleanBufferBuilder,
    value: bool,
    len: usize,
}

impl<'a> Runs<'a> {
    fn new(mask: &'a mut BooleanBufferBuilder) -> Self {
        Runs {
            mask,
            value: false,
            len: 0,
        }
    }

    fn push(&mut self, v: bool) {
        self.push_n(v, 1);
    }

    fn push_n(&mut self, v: bool, n: usize) {
        if n == 0 {
            return;
        }
        if v != self.value {
            self.mask.append_n(self.len, self.value);
            self.value = v;
            self.len = 0;
        }
        self.len += n;
    }

    fn finish(&mut self) {
        self.mask.append_n(self.len, self.value);
        self.len = 0;
    }
}

/// Per axis of `piece`, over its range on that axis: what a coordinate adds to the voxel's index in the build box
/// ([`OUTSIDE`] when it is outside the box; 0 on axes that are not joined) and to the probe offset (0 on axes that
/// are not probe keys). A probe key coordinate outside its planned range is an error.
fn axis_terms(
    piece: &[Range<u64>],
    fused: &Fused,
    table: &BuildTable,
) -> DfResult<Vec<(Vec<usize>, Vec<usize>)>> {
    piece
        .iter()
        .enumerate()
        .map(|(axis, r)| {
            let joined = fused.join_axes.iter().position(|&a| a == axis);
            let boxed = r
                .clone()
                .map(|x| match joined {
                    Some(k) if (table.lo[k]..=table.hi[k]).contains(&x) => {
                        (x - table.lo[k]) as usize * table.strides[k]
                    }
                    Some(_) => OUTSIDE,
                    None => 0,
                })
                .collect();
            let mut probe = vec![0usize; (r.end - r.start) as usize];
            for (n, _) in fused
                .probe_axes
                .iter()
                .enumerate()
                .filter(|(_, a)| **a == axis)
            {
                let range = fused.probe_ranges[n];
                for (slot, x) in probe.iter_mut().zip(r.clone()) {
                    let d = i64::try_from(x).ok().and_then(|x| x.checked_sub(range.min));
                    match d {
                        Some(d) if d >= 0 && d <= range.max - range.min => {
                            *slot += d as usize * fused.probe_strides[n];
                        }
                        _ => {
                            return Err(DataFusionError::Internal(format!(
                                "join aggregate: coordinate {x} outside its planned range [{}, {}]",
                                range.min, range.max
                            )));
                        }
                    }
                }
            }
            Ok((boxed, probe))
        })
        .collect()
}

/// The rule putting [`JoinAggregateExec`] in place of aggregates over atlas-style joins (after the dense-join and
/// dense-aggregate rules; `SET voxelscan.fused_joins = false` turns it off).
#[derive(Debug, Default)]
pub struct JoinAggregateRule;

impl PhysicalOptimizerRule for JoinAggregateRule {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        config: &ConfigOptions,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        if !VoxelscanOptions::from_config(config).fused_joins {
            return Ok(plan);
        }
        plan.transform_up(|node| {
            let agg = match node.downcast_ref::<AggregateExec>() {
                Some(a) => a,
                None => match node.downcast_ref::<DenseAggregateExec>() {
                    Some(d) => d.aggregate(),
                    None => return Ok(Transformed::no(node)),
                },
            };
            match JoinAggregateExec::try_new(agg.clone())? {
                Some(n) => Ok(Transformed::yes(Arc::new(n) as Arc<dyn ExecutionPlan>)),
                None => Ok(Transformed::no(node)),
            }
        })
        .map(|t| t.data)
    }

    fn name(&self) -> &str {
        "voxelscan_fused_join_aggregate"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Int32Array, StringArray};
    use datafusion::physical_plan::empty::EmptyExec;

    fn col(name: &str, index: usize) -> Arc<dyn PhysicalExpr> {
        Arc::new(Column::new(name, index))
    }

    /// A fused plan whose build side has columns (i, j, k: Int32, name: Utf8), joined on i, j, k of a 5×4×3 grid,
    /// grouped by name.
    fn fused() -> Fused {
        let schema = Arc::new(Schema::new(vec![
            Field::new("i", DataType::Int32, true),
            Field::new("j", DataType::Int32, true),
            Field::new("k", DataType::Int32, true),
            Field::new("name", DataType::Utf8, true),
        ]));
        Fused {
            build: Arc::new(EmptyExec::new(Arc::clone(&schema))),
            build_coords: vec![col("i", 0), col("j", 1), col("k", 2)],
            join_axes: vec![0, 1, 2],
            scan: Arc::new(EmptyExec::new(schema)),
            keys: vec![KeyFrom::Build(0)],
            build_keys: vec![col("name", 3)],
            probe_axes: Vec::new(),
            probe_ranges: Vec::new(),
            probe_strides: Vec::new(),
            probe_extent: 1,
            file_keys: Vec::new(),
            file_strides: Vec::new(),
            file_extent: 1,
            args: Vec::new(),
            value_schema: Arc::new(Schema::empty()),
            stats: None,
            grid: vec![5, 4, 3, 7],
            compressed: false,
            slowest_join_axis: 2,
        }
    }

    fn rows(fused: &Fused, coords: &[[Option<i32>; 3]], names: &[Option<&str>]) -> RecordBatch {
        let column = |a: usize| -> ArrayRef {
            Arc::new(coords.iter().map(|c| c[a]).collect::<Int32Array>())
        };
        RecordBatch::try_new(
            fused.build.schema(),
            vec![
                column(0),
                column(1),
                column(2),
                Arc::new(names.iter().copied().collect::<StringArray>()),
            ],
        )
        .unwrap()
    }

    #[test]
    fn the_build_table_addresses_voxels_and_numbers_keys() {
        let f = fused();
        let batch = rows(
            &f,
            &[
                [Some(1), Some(2), Some(0)],
                [Some(4), Some(1), Some(2)],
                [None, Some(1), Some(1)], // NULL coordinate: matches nothing
                [Some(5), Some(0), Some(0)], // outside the grid
                [Some(-1), Some(0), Some(0)],
                [Some(2), Some(2), Some(1)],
            ],
            &[Some("a"), None, Some("b"), Some("c"), Some("d"), Some("a")],
        );
        let t = build_table(&f, &[batch], 8).unwrap().unwrap();
        assert_eq!((t.lo.clone(), t.hi.clone()), (vec![1, 1, 0], vec![4, 2, 2]));
        assert_eq!(t.strides, vec![1, 4, 8]);
        // Keys interned as met: "a", NULL (a group of its own), "b" (its row dropped, its key still numbered).
        let keys = t.key_values[0].as_string::<i32>();
        assert_eq!(keys.len(), t.slot_count);
        let slot = |i: u64, j: u64, k: u64| t.slots[((i - 1) + 4 * (j - 1) + 8 * k) as usize];
        assert_eq!(keys.value(slot(1, 2, 0) as usize), "a");
        assert_eq!(slot(2, 2, 1), slot(1, 2, 0));
        assert!(keys.is_null(slot(4, 1, 2) as usize));
        assert_eq!(t.slots.iter().filter(|&&s| s != NO_SLOT).count(), 3);
        // Few voxels: listed as linear keys on the grid (5, 4, 3).
        let mut listed = t.listed.clone().unwrap();
        listed.sort_unstable();
        assert_eq!(listed, vec![1 + 5 * 2, 2 + 5 * 2 + 20, 4 + 5 + 40]);
        let filters = narrowing(&f, &t).unwrap();
        assert_eq!(
            filters.len(),
            7,
            "a box bound per side and axis, and the key list"
        );
    }

    #[test]
    fn a_voxel_listed_twice_or_no_voxel_at_all() {
        let f = fused();
        let twice = rows(
            &f,
            &[[Some(1), Some(2), Some(0)], [Some(1), Some(2), Some(0)]],
            &[Some("a"), Some("a")],
        );
        let why = build_table(&f, &[twice], 8).unwrap().unwrap_err();
        assert!(why.contains("appears twice"), "{why}");
        let none = rows(&f, &[[None, Some(1), Some(1)]], &[Some("a")]);
        let t = build_table(&f, &[none], 8).unwrap().unwrap();
        assert_eq!(t.slot_count, 0);
        assert!(t.slots.is_empty());
    }

    #[test]
    fn linear_keys_are_taken_back_apart() {
        // As the dense-join rule writes them: (CAST(c AS BIGINT) - lo) × stride, summed.
        let cast = |c: Arc<dyn PhysicalExpr>| -> Arc<dyn PhysicalExpr> {
            Arc::new(CastExpr::new(c, DataType::Int64, None))
        };
        let term = |e: Arc<dyn PhysicalExpr>, lo: i64, stride: i64| -> Arc<dyn PhysicalExpr> {
            let e = if lo == 0 {
                e
            } else {
                Arc::new(BinaryExpr::new(e, Operator::Minus, lit(lo)))
            };
            if stride == 1 {
                e
            } else {
                Arc::new(BinaryExpr::new(e, Operator::Multiply, lit(stride)))
            }
        };
        let key: Arc<dyn PhysicalExpr> = Arc::new(BinaryExpr::new(
            Arc::new(BinaryExpr::new(
                term(cast(col("i", 0)), 0, 1),
                Operator::Plus,
                term(cast(col("j", 1)), -2, 6),
            )),
            Operator::Plus,
            term(cast(col("k", 2)), 0, 30),
        ));
        let terms = linear_terms(&key).unwrap();
        let got: Vec<(String, i64, i64)> = terms
            .iter()
            .map(|(e, s, lo)| (e.to_string(), *s, *lo))
            .collect();
        assert_eq!(
            got,
            vec![
                ("CAST(i@0 AS Int64)".to_string(), 1, 0),
                ("CAST(j@1 AS Int64)".to_string(), 6, -2),
                ("CAST(k@2 AS Int64)".to_string(), 30, 0),
            ]
        );
        assert!(linear_terms(&cast(col("i", 0))).is_none(), "one plain key");
    }

    #[test]
    fn runs_make_the_selection_mask() {
        let mut mask = BooleanBufferBuilder::new(0);
        let pattern = [false, false, true, true, true, false, true, false, false];
        let mut runs = Runs::new(&mut mask);
        for &v in &pattern {
            runs.push(v);
        }
        runs.finish();
        let bits = mask.finish();
        assert_eq!(bits.iter().collect::<Vec<_>>(), pattern);
    }
}
