//! The physical scan: DataFusion's `DataSourceExec` over a `FileScanConfig` whose file source is [`VoxelSource`].
//! One `PartitionedFile` per slab (its byte range is the slab's real span in the file), one file group per
//! partition. This is the kind of scan Ballista can restrict to each task's partitions (reference notes §6.5, §8).
//!
//! ```text
//! VoxelSource (config: files, selections, value mode)  ─create_file_opener─►  VoxelOpener (per partition)
//!   └ open(PartitionedFile) → slab of one file ─► SlabReader (blocking thread): pieces → read_raw → decode → batches
//! ```

use std::collections::HashMap;
use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use datafusion::arrow::datatypes::Schema;
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{DataFusionError, Result as DfResult};
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::physical_plan::{
    FileOpenFuture, FileOpener, FileScanConfig, FileSource,
};
use datafusion::datasource::projection::{ProjectionOpener, SplitProjection};
use datafusion::datasource::table_schema::TableSchema;
use datafusion::logical_expr::Operator;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::expressions::{BinaryExpr, Column, DynamicFilterTracking};
use datafusion::physical_expr::projection::ProjectionExprs;
use datafusion::physical_expr_common::physical_expr::is_volatile;
use datafusion::physical_plan::DisplayFormatType;
use datafusion::physical_plan::filter_pushdown::{FilterPushdownPropagation, PushedDown};
use datafusion::physical_plan::metrics::{Count, ExecutionPlanMetricsSet, MetricBuilder};
use futures::{StreamExt, TryStreamExt};
use object_store::ObjectStore;

use crate::dtype::Scalar;
use crate::error::VoxelError;
use crate::formats::Compression;
use crate::io::local::MmapMode;

use super::files::VoxelFile;
use super::index_set::IndexSet;
use super::join_filter::{Cx, implied_axis_sets, listed_voxels};
use super::layout::{Piece, Selection, slab_selection, slow_axis, slow_range_of};
use super::read::{Output, PIECE_ELEMENTS, ScanMetrics, SlabReader};
use super::schema::{AXIS_NAMES, ValueMode};
use super::world::{GRID_COLUMNS, GridMap, grid_ranges};

/// Everything a scan needs to know about its table, shared by the source and its openers.
#[derive(Debug)]
pub struct ScanSpec {
    /// Table name, for messages.
    pub table: String,
    pub files: Vec<Arc<VoxelFile>>,
    /// Per file: what to read (`None`: pruned, not read).
    pub selections: Vec<Option<Selection>>,
    pub mode: ValueMode,
    pub scalar: Scalar,
    pub mmap: MmapMode,
    /// Object-store path of each file's data → its index.
    by_path: HashMap<String, usize>,
}

/// The object-store path a local data file is known by in `PartitionedFile`s.
/// (A URL `s3://bucket/key` is known as `s3/bucket/key`: the scan reads through its own stores, not DataFusion's.)
pub fn object_path(f: &VoxelFile) -> String {
    let name = match &f.data {
        crate::location::Location::Path(p) => std::path::absolute(p)
            .unwrap_or_else(|_| p.clone())
            .to_string_lossy()
            .into_owned(),
        other => other.display().replacen("://", "/", 1),
    };
    object_store::path::Path::from(name.as_str()).to_string()
}

impl ScanSpec {
    pub fn new(
        table: String,
        files: Vec<Arc<VoxelFile>>,
        selections: Vec<Option<Selection>>,
        mode: ValueMode,
        scalar: Scalar,
        mmap: MmapMode,
    ) -> ScanSpec {
        let by_path = files
            .iter()
            .enumerate()
            .map(|(k, f)| (object_path(f), k))
            .collect();
        ScanSpec {
            table,
            files,
            selections,
            mode,
            scalar,
            mmap,
            by_path,
        }
    }

    /// The index in [`Self::files`] of the file a `PartitionedFile` at `location` reads.
    pub fn file_index(&self, location: &str) -> Option<usize> {
        self.by_path.get(location).copied()
    }

    fn error(&self, e: impl fmt::Display) -> DataFusionError {
        match EXECUTOR_LABEL.get() {
            Some(label) => DataFusionError::Execution(format!(
                "table {}: {e} (on executor {label})",
                self.table
            )),
            None => DataFusionError::Execution(format!("table {}: {e}", self.table)),
        }
    }
}

/// Who reads, when this process is a cluster executor: scan errors name it, since Ballista's own error for a
/// failed task does not say where it ran.
static EXECUTOR_LABEL: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Name this process's executor (its id and address) in scan errors; set once, by a process that runs exactly one
/// executor (`voxelscan executor`). Later calls are ignored.
pub fn set_executor_label(label: String) {
    let _ = EXECUTOR_LABEL.set(label);
}

/// The table's `FileSource`: configuration only (files, selections, projection, metrics).
#[derive(Debug, Clone)]
pub struct VoxelSource {
    spec: Arc<ScanSpec>,
    table_schema: TableSchema,
    projection: SplitProjection,
    metrics: ExecutionPlanMetricsSet,
    batch_size: Option<usize>,
    /// Dynamic filters pushed by joins and TopK (filled in while the query runs): snapshotted when a slab is
    /// opened, their coordinate parts narrow it before it is read. Not sent to cluster executors (they only prune).
    dynamic: Vec<Arc<dyn PhysicalExpr>>,
    /// The filters on `value` alone above the scan (over a batch of the value columns), evaluated on each piece's
    /// values before any coordinate is made: rows they drop get no coordinates (an atlas's region, a mask's
    /// voxels). The `FilterExec` above stays and decides: this only spares it rows it would drop.
    value_filter: Option<Arc<dyn PhysicalExpr>>,
}

impl VoxelSource {
    pub fn new(spec: Arc<ScanSpec>, table_schema: TableSchema) -> VoxelSource {
        VoxelSource {
            spec,
            projection: SplitProjection::unprojected(&table_schema),
            table_schema,
            metrics: ExecutionPlanMetricsSet::new(),
            batch_size: None,
            dynamic: Vec::new(),
            value_filter: None,
        }
    }

    pub fn spec(&self) -> &Arc<ScanSpec> {
        &self.spec
    }

    /// The filter on `value` evaluated in the scan (over a batch of the value columns), if any.
    pub fn value_filter(&self) -> Option<&Arc<dyn PhysicalExpr>> {
        self.value_filter.as_ref()
    }

    /// This source with `filter` (over a batch of the value columns) evaluated in the scan.
    pub fn with_value_filter(mut self, filter: Option<Arc<dyn PhysicalExpr>>) -> VoxelSource {
        self.value_filter = filter;
        self
    }

    /// `filter` (over the table's columns) as a filter over a batch of the value columns, when it reads nothing else.
    fn on_values_only(&self, filter: &Arc<dyn PhysicalExpr>) -> Option<Arc<dyn PhysicalExpr>> {
        let ndim = self.spec.files.first().map_or(0, |f| f.ndim());
        let fields = super::schema::value_fields(self.spec.scalar);
        let reads_a_column = datafusion::physical_expr::utils::collect_columns(filter)
            .into_iter()
            .next()
            .is_some();
        // A volatile filter (`value < random()`) evaluated twice would keep the rows of two draws, not of one.
        if !reads_a_column || is_volatile(filter) {
            return None;
        }
        let values = fields.len();
        table_to_values(filter, ndim, values, &Schema::new(fields))
    }

    /// An opener of `partition`'s slabs producing the file columns `columns`, counting into the scan's metrics.
    fn opener(
        &self,
        base: &FileScanConfig,
        partition: usize,
        columns: Vec<usize>,
    ) -> DfResult<VoxelOpener> {
        let file_schema = self.table_schema.file_schema();
        let out = Output {
            schema: Arc::new(file_schema.project(&columns)?),
            columns,
            ndim: self.spec.files.first().map_or(0, |f| f.ndim()),
            mode: self.spec.mode,
            scalar: self.spec.scalar,
            batch_size: self.batch_size.unwrap_or(8192),
            value_filter: self.value_filter.clone(),
        };
        let m = |name: &'static str| MetricBuilder::new(&self.metrics).counter(name, partition);
        let t = |name: &'static str| MetricBuilder::new(&self.metrics).subset_time(name, partition);
        let metrics = ScanMetrics {
            bytes_read: m("bytes_read"),
            segments_read: m("segments_read"),
            requests: m("requests"),
            pieces_read: m("pieces_read"),
            read_time: t("read_time"),
            decode_time: t("decode_time"),
        };
        Ok(VoxelOpener {
            spec: Arc::clone(&self.spec),
            out: Arc::new(out),
            metrics,
            dynamic: Arc::new(self.dynamic.clone()),
            pruned: DynamicPruning {
                bytes: m("dynamic_filter_bytes_skipped"),
                slabs: m("dynamic_filter_slabs_skipped"),
            },
            budget: base
                .limit
                .map_or(PIECE_ELEMENTS, |l| (l as u64).clamp(1, PIECE_ELEMENTS)),
            read_ahead: base.limit.is_none(),
        })
    }

    /// The value pieces of `partition` of the scan `base` (whose source this is): the same slabs, pushdown, dynamic
    /// narrowing and metrics as its record batches, but only the value columns, each piece with its box and file,
    /// so a consumer can place rows by layout arithmetic instead of coordinate columns ([`super::scan_aggregate`]).
    pub fn value_pieces(
        &self,
        base: &FileScanConfig,
        partition: usize,
    ) -> DfResult<futures::stream::BoxStream<'static, DfResult<ValuePiece>>> {
        let ndim = self.spec.files.first().map_or(0, |f| f.ndim());
        let values = super::schema::value_fields(self.spec.scalar).len();
        let opener = Arc::new(self.opener(base, partition, (ndim..ndim + values).collect())?);
        let files: Vec<PartitionedFile> = base
            .file_groups
            .get(partition)
            .map(|g| g.iter().cloned().collect())
            .unwrap_or_default();
        let slabs = futures::stream::iter(files).map(move |pf| {
            let opener = Arc::clone(&opener);
            async move { opener.value_slab(pf) }
        });
        // The next slab is opened (its reader started) while this one is consumed: value pieces are stored values,
        // often the mapped file itself, so a second slab in flight costs little memory and hides its start (mapping
        // it, a gzip seek) behind this slab's aggregation.
        Ok(slabs.buffered(2).try_flatten().boxed())
    }

    /// [`Self::value_pieces`] narrowed further by `filters` (coordinate bounds, a key list on a linear voxel key),
    /// read like the dynamic filters are: a consumer that knows which voxels it needs ([`super::join_aggregate`])
    /// reads only their box, or exactly them. Same metrics as the scan.
    pub fn value_pieces_within(
        &self,
        base: &FileScanConfig,
        partition: usize,
        filters: Vec<Arc<dyn PhysicalExpr>>,
    ) -> DfResult<futures::stream::BoxStream<'static, DfResult<ValuePiece>>> {
        let mut narrowed = self.clone();
        narrowed.dynamic.extend(filters);
        narrowed.value_pieces(base, partition)
    }
}

/// `expr` over the scan's table columns as an expression over the value columns only; `None` when it reads a
/// coordinate, `file` or a millimetre column.
pub(super) fn table_to_values(
    expr: &Arc<dyn PhysicalExpr>,
    ndim: usize,
    values: usize,
    value_schema: &Schema,
) -> Option<Arc<dyn PhysicalExpr>> {
    let mut ok = true;
    let out = Arc::clone(expr)
        .transform_up(|e| {
            let Some(c) = e.downcast_ref::<Column>() else {
                return Ok(Transformed::no(e));
            };
            match c.index().checked_sub(ndim).filter(|&v| v < values) {
                Some(v) => {
                    let name = value_schema.field(v).name();
                    Ok(Transformed::yes(
                        Arc::new(Column::new(name, v)) as Arc<dyn PhysicalExpr>
                    ))
                }
                None => {
                    ok = false;
                    Ok(Transformed::new(e, false, TreeNodeRecursion::Stop))
                }
            }
        })
        .ok()?;
    ok.then_some(out.data)
}

/// Characters of a dynamic filter `EXPLAIN` shows.
const EXPLAIN_FILTER_CHARS: usize = 600;

/// Files listed by `EXPLAIN` before the rest is summarised.
const EXPLAIN_FILES: usize = 16;

impl FileSource for VoxelSource {
    fn create_file_opener(
        &self,
        _store: Arc<dyn ObjectStore>,
        base: &FileScanConfig,
        partition: usize,
    ) -> DfResult<Arc<dyn FileOpener>> {
        let file_schema = self.table_schema.file_schema();
        let opener = self.opener(base, partition, self.projection.file_indices.clone())?;
        ProjectionOpener::try_new(self.projection.clone(), Arc::new(opener), file_schema)
    }

    fn table_schema(&self) -> &TableSchema {
        &self.table_schema
    }

    fn with_batch_size(&self, batch_size: usize) -> Arc<dyn FileSource> {
        Arc::new(VoxelSource {
            batch_size: Some(batch_size),
            ..self.clone()
        })
    }

    fn metrics(&self) -> &ExecutionPlanMetricsSet {
        &self.metrics
    }

    fn file_type(&self) -> &str {
        "voxels"
    }

    /// `EXPLAIN` shows the pushed selection of every file, e.g. `slices=[a.nii[0:96, 0:96, 30, 0:300]]`.
    fn fmt_extra(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        let mode = match self.spec.mode {
            ValueMode::Scaled => "scaled".to_string(),
            ValueMode::Unscaled => "unscaled".to_string(),
            ValueMode::As(s) => format!("as {}", s.name()),
        };
        write!(f, ", table={}, values={mode}, slices=[", self.spec.table)?;
        let chosen = self
            .spec
            .files
            .iter()
            .zip(&self.spec.selections)
            .filter_map(|(file, s)| Some((file, s.as_ref()?)));
        let total = chosen.clone().count();
        for (k, (file, sel)) in chosen.take(EXPLAIN_FILES).enumerate() {
            if k > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{}{sel}", file.name)?;
        }
        if total > EXPLAIN_FILES {
            write!(f, ", … {} more", total - EXPLAIN_FILES)?;
        }
        f.write_str("]")?;
        if let Some(v) = &self.value_filter {
            write!(f, ", value_filter={v}")?;
        }
        for (k, d) in self.dynamic.iter().enumerate() {
            f.write_str(if k == 0 { ", dynamic_filter=" } else { " AND " })?;
            // A build side's key list can hold thousands of keys: show its start.
            let text = d.to_string();
            match text.char_indices().nth(EXPLAIN_FILTER_CHARS) {
                Some((cut, _)) => write!(f, "{} … ({} characters)", &text[..cut], text.len())?,
                None => f.write_str(&text)?,
            }
        }
        Ok(())
    }

    /// Dynamic filters (hash-join build sides, TopK) are kept to narrow slabs at open; none is applied exactly
    /// (the join or TopK still filters), so every filter is reported as not pushed. Static filters were already
    /// turned into selections at planning.
    fn try_pushdown_filters(
        &self,
        filters: Vec<Arc<dyn PhysicalExpr>>,
        _config: &ConfigOptions,
    ) -> DfResult<FilterPushdownPropagation<Arc<dyn FileSource>>> {
        // Every filter stays above the scan (`No`): dynamic filters only narrow what is read, value filters only
        // spare the filter above rows it would drop.
        let verdicts = vec![PushedDown::No; filters.len()];
        let (dynamic, fixed): (Vec<_>, Vec<_>) = filters
            .into_iter()
            .partition(|f| DynamicFilterTracking::classify(f).contains_dynamic_filter());
        let on_values: Vec<_> = fixed
            .iter()
            .filter_map(|f| self.on_values_only(f))
            .collect();
        if dynamic.is_empty() && on_values.is_empty() {
            return Ok(FilterPushdownPropagation::with_parent_pushdown_result(
                verdicts,
            ));
        }
        let mut source = self.clone();
        source.dynamic.extend(dynamic);
        source.value_filter = on_values
            .into_iter()
            .chain(self.value_filter.clone())
            .reduce(|a, b| Arc::new(BinaryExpr::new(a, Operator::And, b)));
        Ok(
            FilterPushdownPropagation::with_parent_pushdown_result(verdicts)
                .with_updated_node(Arc::new(source)),
        )
    }

    /// Partitions are whole slabs chosen at planning time; byte-range splitting would cut them.
    fn supports_repartitioning(&self) -> bool {
        false
    }

    fn try_pushdown_projection(
        &self,
        projection: &ProjectionExprs,
    ) -> DfResult<Option<Arc<dyn FileSource>>> {
        let mut source = self.clone();
        source.projection = SplitProjection::new(
            self.table_schema.file_schema(),
            &self.projection.source.try_merge(projection)?,
        );
        Ok(Some(Arc::new(source)))
    }

    fn projection(&self) -> Option<&ProjectionExprs> {
        Some(&self.projection.source)
    }

    fn apply_expressions(
        &self,
        f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DfResult<TreeNodeRecursion>,
    ) -> DfResult<TreeNodeRecursion> {
        // The dynamic filters are listed too: a hash join only fills its filter in when a consumer below it holds it.
        use datafusion::physical_plan::apply_expression_roots;
        if apply_expression_roots(self.projection.source.iter(), f)? == TreeNodeRecursion::Stop {
            return Ok(TreeNodeRecursion::Stop);
        }
        apply_expression_roots(self.dynamic.iter(), f)
    }
}

/// What dynamic filters saved: bytes of selected voxels not read, slabs not opened at all.
#[derive(Clone)]
struct DynamicPruning {
    bytes: Count,
    slabs: Count,
}

/// Opens slabs for one partition.
#[derive(Clone)]
struct VoxelOpener {
    spec: Arc<ScanSpec>,
    out: Arc<Output>,
    metrics: ScanMetrics,
    budget: u64,
    /// Pieces are read ahead of their consumer; not under a `LIMIT`, which must read no piece it does not return.
    read_ahead: bool,
    dynamic: Arc<Vec<Arc<dyn PhysicalExpr>>>,
    pruned: DynamicPruning,
}

/// One slab to read: its file, selection and run of slow-axis indices.
struct SlabPlan {
    file: Arc<VoxelFile>,
    sel: Selection,
    slow: Option<std::ops::Range<u64>>,
    /// When a join listed its keys: the exact voxels, as disjoint parts of `sel` read one after the other.
    parts: Option<Vec<Selection>>,
}

impl SlabPlan {
    /// Bounds the dynamic filters put on `grid_i, grid_j, grid_k` (a join on another image's grid), taken back to
    /// this file's voxels through the grid map: the same conservative box as a static filter on them.
    fn narrow_to_grid(&mut self, grid: &GridMap, dynamic: &[Arc<dyn PhysicalExpr>]) {
        let cx = Cx {
            axes: &GRID_COLUMNS,
            shape: &grid.shape,
            nullable: true,
        };
        let sets = implied_axis_sets(dynamic, &cx);
        if sets.iter().all(Option::is_none) {
            return;
        }
        let Some(ranges) = grid_ranges(grid, &sets, &self.file.layout.shape) else {
            self.sel
                .axes
                .iter_mut()
                .for_each(|a| *a = IndexSet::empty());
            return;
        };
        for (have, r) in self.sel.axes.iter_mut().zip(ranges) {
            *have = have.intersect(&IndexSet::range(r));
        }
    }

    /// Narrowed to what the dynamic filters (as they stand now) let through; `None` when nothing is left.
    fn narrowed(
        mut self,
        dynamic: &[Arc<dyn PhysicalExpr>],
        pruned: &DynamicPruning,
    ) -> Option<SlabPlan> {
        if dynamic.is_empty() {
            return Some(self);
        }
        let ndim = self.file.ndim();
        let names = AXIS_NAMES.get(..ndim).unwrap_or(&AXIS_NAMES);
        let before = self.sel.rows();
        let shape: Vec<u64> = self.file.layout.shape.iter().map(|&n| n as u64).collect();
        let cx = Cx {
            axes: names,
            shape: &shape,
            nullable: false,
        };
        for (axis, set) in implied_axis_sets(dynamic, &cx).into_iter().enumerate() {
            if let (Some(set), Some(have)) = (set, self.sel.axes.get_mut(axis)) {
                *have = have.intersect(&set);
            }
        }
        if let Some(grid) = self.file.grid {
            self.narrow_to_grid(&grid, dynamic);
        }
        // A compressed file is read forward: one reader over the narrowed box inflates the span once, where a
        // reader per part would each inflate again from its nearest seek point (one pass per plane).
        self.parts = match self.file.compression {
            Compression::None => listed_voxels(dynamic, &cx)
                .and_then(|(axes, voxels)| exact_parts(&self.sel, &axes, &voxels)),
            Compression::Gzip => None,
        };
        let after = match &self.parts {
            Some(parts) => parts.iter().map(Selection::rows).sum(),
            None => self.sel.rows(),
        };
        let skipped = before - after.min(before);
        pruned.bytes.add(
            usize::try_from(skipped.saturating_mul(self.file.itemsize())).unwrap_or(usize::MAX),
        );
        if after == 0 {
            pruned.slabs.add(1);
            return None;
        }
        // Map and read only the slow-axis run still selected.
        if let (Some(slow), Some(a)) = (&mut self.slow, slow_axis(ndim, self.file.layout.order))
            && let (Some(lo), Some(hi)) = (self.sel.axes[a].min(), self.sel.axes[a].max())
        {
            *slow = lo..hi + 1;
        }
        Some(self)
    }
}

/// Parts a slab is read in at most: each part is a reader of its own (its own map of the slab, its own pieces).
const MAX_PARTS: usize = 32;

/// `sel` cut to `voxels` (coordinates on `axes`, fastest first), as disjoint parts in file order: exactly the voxels
/// (one part per row of the fast axis) when they lie on at most [`MAX_PARTS`] rows, else plane by plane of the
/// slowest key axis (the rows and columns each plane has), else `None` (the slab's selection as it is).
fn exact_parts(sel: &Selection, axes: &[usize], voxels: &[Vec<u64>]) -> Option<Vec<Selection>> {
    let rows = group(voxels, axes.len().saturating_sub(1));
    if rows.len() <= MAX_PARTS {
        return Some(parts(sel, axes, rows));
    }
    let planes = group(voxels, 1);
    (planes.len() <= MAX_PARTS).then(|| parts(sel, axes, planes))
}

/// Key (slow coordinates, slowest first) → per fast axis, the coordinates there.
type Groups = std::collections::BTreeMap<Vec<u64>, Vec<Vec<Range<u64>>>>;

/// Voxels grouped on their last `slow` coordinates (slowest first, so groups follow the file order); each group
/// holds, per remaining axis, the coordinates its voxels have.
fn group(voxels: &[Vec<u64>], slow: usize) -> Groups {
    let mut out = Groups::new();
    for v in voxels {
        let fast = v.len().saturating_sub(slow);
        let key = v[fast..].iter().rev().copied().collect();
        let entry = out.entry(key).or_insert_with(|| vec![Vec::new(); fast]);
        for (axis, &x) in v[..fast].iter().enumerate() {
            entry[axis].push(x..x + 1);
        }
    }
    out
}

/// One part of `sel` per group: the group's coordinates on the fast axes, its key on the slow ones.
fn parts(sel: &Selection, axes: &[usize], groups: Groups) -> Vec<Selection> {
    groups
        .into_iter()
        .filter_map(|(key, fast)| {
            let mut part = sel.clone();
            let n_fast = fast.len();
            for (&axis, ranges) in axes.iter().zip(fast) {
                part.axes[axis] = part.axes[axis].intersect(&IndexSet::from_ranges(ranges));
            }
            for (&axis, &x) in axes[n_fast..].iter().rev().zip(&key) {
                part.axes[axis] = part.axes[axis].intersect(&IndexSet::range(x..x + 1));
            }
            (!part.is_empty()).then_some(part)
        })
        .collect()
}

impl VoxelOpener {
    fn slab(&self, pf: &PartitionedFile) -> Result<SlabPlan, DataFusionError> {
        let spec = &self.spec;
        let location = pf.object_meta.location.to_string();
        let idx = spec
            .file_index(&location)
            .ok_or_else(|| spec.error(format!("/{location} is not a file of this table")))?;
        let file = &spec.files[idx];
        let sel = spec.selections[idx]
            .as_ref()
            .ok_or_else(|| spec.error(format!("{}: file was pruned but scheduled", file.name)))?;
        let slow = match &pf.range {
            None => None,
            Some(r) => {
                let span = u64::try_from(r.start).ok().zip(u64::try_from(r.end).ok());
                let range = span.and_then(|(s, e)| slow_range_of(file, s..e));
                Some(range.ok_or_else(|| {
                    spec.error(format!(
                        "{}: byte range {}..{} is not a slab",
                        file.name, r.start, r.end
                    ))
                })?)
            }
        };
        let slab = slab_selection(
            sel,
            slow_axis(file.ndim(), file.layout.order),
            slow.as_ref(),
        );
        Ok(SlabPlan {
            file: Arc::clone(file),
            sel: slab,
            slow,
            parts: None,
        })
    }
}

/// The decoded value columns of one piece of a slab, with the piece's box and file.
pub struct ValuePiece {
    pub file: Arc<VoxelFile>,
    /// The index of `file` in the scan's file list ([`ScanSpec::files`]): what its per-file columns are looked up by.
    pub file_index: usize,
    pub piece: Piece,
    pub values: Vec<datafusion::arrow::array::ArrayRef>,
}

impl VoxelOpener {
    /// One slab's value pieces (see [`VoxelSource::value_pieces`]).
    fn value_slab(
        &self,
        pf: PartitionedFile,
    ) -> DfResult<futures::stream::BoxStream<'static, DfResult<ValuePiece>>> {
        let Some(plan) = self.slab(&pf)?.narrowed(&self.dynamic, &self.pruned) else {
            return Ok(futures::stream::empty().boxed());
        };
        let spec = Arc::clone(&self.spec);
        let location = pf.object_meta.location.to_string();
        let file_index = spec
            .file_index(&location)
            .ok_or_else(|| spec.error(format!("/{location} is not a file of this table")))?;
        let ahead = self.read_ahead;
        let mut readers = self.readers(plan).map(move |reader| {
            let file = Arc::clone(reader.file());
            reader_stream(reader, Arc::clone(&spec), ahead, SlabReader::next_values).map_ok(
                move |(piece, values)| ValuePiece {
                    file: Arc::clone(&file),
                    file_index,
                    piece,
                    values,
                },
            )
        });
        // The first reader starts now: a slab opened ahead (see `value_pieces`) is mapped or inflated while the
        // previous slab's last pieces are aggregated.
        let first = readers.next();
        Ok(futures::stream::iter(first.into_iter().chain(readers))
            .flatten()
            .boxed())
    }

    /// One reader per part of `plan` (the slab's selection when the dynamic filters listed no voxels), in file order.
    fn readers(&self, plan: SlabPlan) -> impl Iterator<Item = SlabReader> + Send + 'static {
        let parts = plan.parts.unwrap_or_else(|| vec![plan.sel]);
        let (file, slow, mmap) = (plan.file, plan.slow, self.spec.mmap);
        let (out, metrics, budget) = (Arc::clone(&self.out), self.metrics.clone(), self.budget);
        parts.into_iter().map(move |part| {
            SlabReader::new(
                Arc::clone(&file),
                &part,
                Arc::clone(&out),
                metrics.clone(),
                budget,
                mmap,
                slow.clone(),
            )
        })
    }
}

/// What `next` takes from `reader` piece by piece, read ahead on one blocking thread: the next piece is read (a slab
/// mapped, a gzip run inflated, values decoded) while the consumer works on the current one, and a piece costs a
/// channel hand-off, not a blocking task of its own. At most [`READ_AHEAD`] pieces wait in the channel, so a
/// partition holds the consumer's piece, the waiting ones and the one being read. Without `ahead` (a `LIMIT`), each
/// piece is read only when the consumer asks for it. A reader's error names its file.
fn reader_stream<T: Send + 'static>(
    mut reader: SlabReader,
    spec: Arc<ScanSpec>,
    ahead: bool,
    next: fn(&mut SlabReader) -> crate::error::Result<Option<T>>,
) -> futures::stream::BoxStream<'static, DfResult<T>> {
    if !ahead {
        return on_demand(reader, spec, next);
    }
    let (tx, rx) = tokio::sync::mpsc::channel(READ_AHEAD);
    let producer = tokio::task::spawn_blocking(move || {
        loop {
            let got = match next(&mut reader) {
                Ok(Some(item)) => Ok(item),
                Ok(None) => return,
                Err(e) => Err(spec.error(VoxelError::in_file(e, reader_name(&reader)))),
            };
            let failed = got.is_err();
            // A dropped consumer (a LIMIT met, a query cancelled) ends the reading.
            if tx.blocking_send(got).is_err() || failed {
                return;
            }
        }
    });
    futures::stream::unfold((rx, Some(producer)), |(mut rx, mut producer)| async move {
        if let Some(item) = rx.recv().await {
            return Some((item, (rx, producer)));
        }
        // The reader is done or died: a panic on its thread is an error, not a short result.
        let ended = producer.take()?.await;
        match ended {
            Ok(()) => None,
            Err(e) => Some((Err(DataFusionError::ExecutionJoin(Box::new(e))), (rx, None))),
        }
    })
    .boxed()
}

/// Pieces a slab reader may have ready ahead of its consumer.
const READ_AHEAD: usize = 1;

/// [`reader_stream`] reading each piece on a blocking thread only when the consumer asks for it.
fn on_demand<T: Send + 'static>(
    reader: SlabReader,
    spec: Arc<ScanSpec>,
    next: fn(&mut SlabReader) -> crate::error::Result<Option<T>>,
) -> futures::stream::BoxStream<'static, DfResult<T>> {
    futures::stream::try_unfold(reader, move |mut reader| {
        let spec = Arc::clone(&spec);
        async move {
            let (reader, got) = tokio::task::spawn_blocking(move || {
                let got = next(&mut reader);
                (reader, got)
            })
            .await
            .map_err(|e| DataFusionError::ExecutionJoin(Box::new(e)))?;
            match got {
                Ok(Some(item)) => Ok(Some((item, reader))),
                Ok(None) => Ok(None),
                Err(e) => Err(spec.error(VoxelError::in_file(e, reader_name(&reader)))),
            }
        }
    })
    .boxed()
}

impl FileOpener for VoxelOpener {
    fn open(&self, pf: PartitionedFile) -> DfResult<FileOpenFuture> {
        let plan = self.slab(&pf)?;
        let opener = self.clone();
        Ok(Box::pin(async move {
            // Snapshotted when the stream is first polled: a hash join polls its probe side only after its build
            // side is collected and its filter updated (CollectLeft; Partitioned once every partition has
            // reported), so by then the filter is complete wherever the plan lets it be.
            let Some(plan) = plan.narrowed(&opener.dynamic, &opener.pruned) else {
                return Ok(futures::stream::empty().boxed());
            };
            let (spec, ahead) = (Arc::clone(&opener.spec), opener.read_ahead);
            let readers = opener.readers(plan).map(move |reader| {
                reader_stream(reader, Arc::clone(&spec), ahead, SlabReader::next_piece)
                    .map_ok(|batches| futures::stream::iter(batches.into_iter().map(Ok)))
                    .try_flatten()
            });
            Ok(futures::stream::iter(readers).flatten().boxed())
        }))
    }
}

fn reader_name(r: &SlabReader) -> String {
    r.file_name().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listed_voxels_are_read_by_rows_or_by_planes() {
        let sel = Selection {
            axes: vec![
                IndexSet::range(0..10),
                IndexSet::range(0..8),
                IndexSet::range(0..6),
                IndexSet::range(0..5),
            ],
        };
        let axes = [0, 1, 2];
        // Few rows: exactly the voxels, one part per (j, k) row, in file order.
        let few = vec![vec![9, 7, 5], vec![3, 2, 1], vec![4, 2, 1]];
        let parts = exact_parts(&sel, &axes, &few).unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].axes[0], IndexSet::range(3..5));
        assert_eq!(parts[0].axes[2], IndexSet::range(1..2));
        assert_eq!(parts.iter().map(Selection::rows).sum::<u64>(), 3 * 5);
        // 40 rows: plane by plane (k), each plane the rows and columns it has.
        let many: Vec<Vec<u64>> = (0..8u64)
            .flat_map(|j| (0..5u64).map(move |k| vec![j % 3, j, k]))
            .collect();
        let parts = exact_parts(&sel, &axes, &many).unwrap();
        assert_eq!(parts.len(), 5);
        assert!(parts.iter().all(|p| p.rows() == 3 * 8 * 5));
        // More planes than parts allowed: the selection as it is.
        let planes: Vec<Vec<u64>> = (0..40u64).map(|k| vec![0, 0, k]).collect();
        let wide = Selection {
            axes: vec![
                IndexSet::range(0..10),
                IndexSet::range(0..8),
                IndexSet::range(0..60),
                IndexSet::range(0..5),
            ],
        };
        assert!(exact_parts(&wide, &axes, &planes).is_none());
    }
}
