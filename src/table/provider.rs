//! The table provider: one array file, or many files of the same number of axes, as one lazily scanned table.
//!
//! `supports_filters_pushdown` classifies each conjunct ([`super::predicate`]); `scan` intersects the exact ones into
//! per-file selections, cuts them into slabs and partitions ([`super::layout`]) and returns a `DataSourceExec` over
//! a `FileScanConfig` with exact statistics (so `count(*)` is answered without reading).

use std::collections::HashSet;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{
    Array, ArrayRef, BooleanArray, Int64Array, RecordBatch, RecordBatchOptions, UInt64Array,
};
use datafusion::arrow::datatypes::{Field, Schema, SchemaRef};
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::Column;
use datafusion::common::pruning::PruningStatistics;
use datafusion::common::stats::Precision;
use datafusion::common::{
    ColumnStatistics, DFSchema, DataFusionError, Result as DfResult, ScalarValue, Statistics,
};
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::object_store::ObjectStoreUrl;
use datafusion::datasource::physical_plan::{FileGroup, FileScanConfigBuilder, FileSource};
use datafusion::datasource::source::DataSourceExec;
use datafusion::datasource::table_schema::TableSchema;
use datafusion::logical_expr::expr_rewriter::unnormalize_col;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown, TableType};
use datafusion::physical_optimizer::pruning::{PruningPredicate, PruningPredicateBuilder};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::empty::EmptyExec;
use datafusion::physical_plan::metrics::MetricBuilder;

use crate::dtype::Scalar;
use crate::error::{Result, VoxelError};
use crate::proxy::ArrayProxy;

use super::files::{TableFiles, TableOptions, VoxelFile, file_value_scalar};
use super::index_set::IndexSet;
use super::layout::{Selection, Slab, byte_span, group_slabs, slabs_of};
use super::predicate::{FilterColumns, FilterKind, UNIVERSE};
use super::scan::{ScanSpec, VoxelSource, object_path};
use super::schema::{AXIS_NAMES, FILE_COLUMN, common_scalar, file_column_type, file_schema};
use super::{bids, world};

/// Selected bytes per slab are aimed at this range (more slabs than partitions, so groups balance).
const SLAB_MIN_BYTES: u64 = 1 << 20;
const SLAB_MAX_BYTES: u64 = 64 << 20;
/// At most about this many slabs per scan, whatever the files claim (a proxy over an endless handle can claim 2^62
/// bytes).
const MAX_SLABS: u64 = 1 << 16;

/// A table of voxels over one or more image files.
#[derive(Debug)]
pub struct VoxelTable {
    name: String,
    files: Vec<Arc<VoxelFile>>,
    multi: bool,
    opts: TableOptions,
    scalar: Scalar,
    table_schema: TableSchema,
    columns: FilterColumns,
    /// Per file: the values of the per-file columns (`file`, BIDS entities, `world_space`, `tr`), in schema order.
    per_file: Vec<Vec<ScalarValue>>,
}

impl VoxelTable {
    /// A table over `locations` (files, directories, globs), read as `opts` say. `name` is used in messages.
    pub fn open(name: &str, locations: &[String], opts: TableOptions) -> Result<VoxelTable> {
        let tf = TableFiles::open(locations, &opts).map_err(|e| e.in_table(name))?;
        VoxelTable::from_files(name, tf.files, tf.multi, opts)
    }

    /// A single-file table over an existing proxy (also one over an open handle).
    pub fn from_proxy(name: &str, proxy: ArrayProxy, opts: TableOptions) -> Result<VoxelTable> {
        let label = proxy.location();
        let file = VoxelFile::from_proxy(label, proxy).map_err(|e| e.in_table(name))?;
        VoxelTable::from_files(name, vec![file], false, opts)
    }

    pub fn from_files(
        name: &str,
        mut files: Vec<VoxelFile>,
        multi: bool,
        mut opts: TableOptions,
    ) -> Result<VoxelTable> {
        let world = resolve_world(&mut files, &opts).map_err(|e| e.in_table(name))?;
        opts.world = Some(world);
        apply_grid_option(&mut files, &opts).map_err(|e| e.in_table(name))?;
        let scalars = files
            .iter()
            .map(|f| file_value_scalar(f, opts.mode))
            .collect::<Result<Vec<_>>>()
            .map_err(|e| e.in_table(name))?;
        let scalar = common_scalar(&scalars).map_err(|e| e.in_table(name))?;
        check_axes(&files).map_err(|e| e.in_table(name))?;
        let ndim = files.first().map_or(0, VoxelFile::ndim);
        let mut fs = file_schema(ndim, scalar).map_err(|e| e.in_table(name))?;
        if world {
            let mut fields: Vec<Field> = fs.fields().iter().map(|f| f.as_ref().clone()).collect();
            fields.extend(world::world_fields());
            if opts.grid.is_some() {
                fields.extend(world::grid_fields());
            }
            fs = Arc::new(Schema::new(fields));
        }
        let (partition_cols, per_file) = per_file_columns(&files, multi, world);
        let per_file_names: Vec<String> = partition_cols
            .iter()
            .map(|f| f.name().clone())
            .filter(|n| n != FILE_COLUMN)
            .collect();
        let axes = (0..ndim)
            .map(|a| {
                let longest = files
                    .iter()
                    .map(|f| f.layout.shape[a] as u64)
                    .max()
                    .unwrap_or(0);
                (AXIS_NAMES[a].to_string(), longest)
            })
            .collect();
        Ok(VoxelTable {
            name: name.to_string(),
            files: files.into_iter().map(Arc::new).collect(),
            multi,
            opts,
            scalar,
            table_schema: TableSchema::builder(fs)
                .with_table_partition_cols(partition_cols)
                .build(),
            columns: FilterColumns {
                axes,
                file: multi.then(|| FILE_COLUMN.to_string()),
                per_file: per_file_names,
                world,
            },
            per_file,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn files(&self) -> &[Arc<VoxelFile>] {
        &self.files
    }

    pub fn is_multi_file(&self) -> bool {
        self.multi
    }

    pub fn options(&self) -> &TableOptions {
        &self.opts
    }

    /// The element type of the value column(s).
    pub fn value_scalar(&self) -> Scalar {
        self.scalar
    }

    fn ndim(&self) -> usize {
        self.columns.axes.len()
    }

    /// Intersect the exact coordinate filters into one set per axis.
    fn axis_sets(&self, filters: &[Expr]) -> Vec<IndexSet> {
        let mut sets = vec![IndexSet::full(UNIVERSE); self.ndim()];
        for f in filters {
            if let FilterKind::Axis { axis, set } = self.columns.classify(f) {
                sets[axis] = sets[axis].intersect(&set);
            }
        }
        sets
    }

    /// Which files pass the filters on the `file` column (evaluated once per file).
    fn file_mask(&self, state: &dyn Session, filters: &[Expr]) -> DfResult<Vec<bool>> {
        let mut keep = vec![true; self.files.len()];
        let file_filters: Vec<&Expr> = filters
            .iter()
            .filter(|f| self.columns.classify(f) == FilterKind::File)
            .collect();
        if file_filters.is_empty() {
            return Ok(keep);
        }
        let batch = self.per_file_batch()?;
        let df_schema = DFSchema::try_from(batch.schema())?;
        for f in file_filters {
            let phys = state.create_physical_expr(unnormalize_col(f.clone()), &df_schema)?;
            let result = phys.evaluate(&batch)?.into_array(batch.num_rows())?;
            let pass = result
                .as_any()
                .downcast_ref::<BooleanArray>()
                .ok_or_else(|| DataFusionError::Plan(format!("filter {f} is not boolean")))?;
            for (k, keep) in keep.iter_mut().enumerate() {
                *keep &= pass.is_valid(k) && pass.value(k);
            }
        }
        Ok(keep)
    }

    /// One row per file: the per-file columns, for evaluating filters on them.
    fn per_file_batch(&self) -> DfResult<RecordBatch> {
        let schema = Arc::new(Schema::new(
            self.table_schema
                .table_partition_cols()
                .iter()
                .map(|f| f.as_ref().clone())
                .collect::<Vec<_>>(),
        ));
        let columns = (0..schema.fields().len())
            .map(|c| ScalarValue::iter_to_array(self.per_file.iter().map(|row| row[c].clone())))
            .collect::<DfResult<Vec<_>>>()?;
        let opts = RecordBatchOptions::new().with_row_count(Some(self.files.len()));
        Ok(RecordBatch::try_new_with_options(schema, columns, &opts)?)
    }

    /// Per file: the selection to read, or `None` when nothing of it is selected. `world` holds the filters on
    /// `x, y, z`, turned into a box per file.
    fn selections(
        &self,
        sets: &[IndexSet],
        keep: &[bool],
        world: &[world::WorldFilter],
    ) -> Vec<Option<Selection>> {
        self.files
            .iter()
            .zip(keep)
            .map(|(f, &keep)| {
                let mut axes: Vec<IndexSet> = sets
                    .iter()
                    .zip(&f.layout.shape)
                    .map(|(s, &n)| s.clamp(n as u64))
                    .collect();
                if !world.is_empty() {
                    let boxes = world::file_sets(world, f)?;
                    for (a, b) in axes.iter_mut().zip(boxes) {
                        *a = a.intersect(&b);
                    }
                }
                let sel = Selection { axes };
                (keep && !sel.is_empty()).then_some(sel)
            })
            .collect()
    }

    /// The filters on `x, y, z` analysed.
    fn world_filters(&self, filters: &[Expr]) -> Vec<world::WorldFilter> {
        filters
            .iter()
            .filter(|f| self.columns.classify(f) == FilterKind::World)
            .map(world::analyse)
            .collect()
    }

    /// A filter on `x, y, z` is exact when it is a plain comparison and every file's affine is axis-aligned.
    fn world_pushdown(&self, f: &Expr) -> TableProviderFilterPushDown {
        let exact = world::analyse(f).exact
            && self
                .files
                .iter()
                .all(|file| world::axis_permutation(&file.affine).is_some());
        if exact {
            TableProviderFilterPushDown::Exact
        } else {
            TableProviderFilterPushDown::Inexact
        }
    }

    fn partitioned_file(&self, slab: &Slab, sel: &Selection) -> DfResult<PartitionedFile> {
        let f = &self.files[slab.file];
        let mut pf = PartitionedFile::new(object_path(f), f.fingerprint.size);
        if let Some(r) = &slab.slow {
            let span = byte_span(f, Some(r));
            let (s, e) = (i64::try_from(span.start), i64::try_from(span.end));
            let (Ok(s), Ok(e)) = (s, e) else {
                return Err(DataFusionError::Plan(format!(
                    "{}: byte range beyond i64",
                    f.name
                )));
            };
            pf = pf.with_range(s, e);
        }
        if !self.per_file[slab.file].is_empty() {
            pf = pf.with_partition_values(self.per_file[slab.file].clone());
        }
        let slab_sel = super::layout::slab_selection(
            sel,
            super::layout::slow_axis(f.ndim(), f.layout.order),
            slab.slow.as_ref(),
        );
        Ok(pf.with_statistics(Arc::new(self.file_statistics(&slab_sel))))
    }

    /// Exact statistics of a selection over the file columns: rows, and min/max/distinct of each coordinate.
    fn file_statistics(&self, sel: &Selection) -> Statistics {
        let fs = self.table_schema.file_schema();
        let rows = usize::try_from(sel.rows()).unwrap_or(usize::MAX);
        let mut cols: Vec<ColumnStatistics> = sel
            .axes
            .iter()
            .map(|s| {
                let exact = |v: Option<u64>| {
                    v.map_or(Precision::Absent, |v| {
                        Precision::Exact(ScalarValue::Int64(Some(v as i64)))
                    })
                };
                ColumnStatistics::new_unknown()
                    .with_null_count(Precision::Exact(0))
                    .with_min_value(exact(s.min()))
                    .with_max_value(exact(s.max()))
                    .with_distinct_count(Precision::Exact(s.count() as usize))
            })
            .collect();
        // Value and x, y, z columns are never null; grid_i, grid_j, grid_k are outside the other grid, and an
        // exact null count of 0 would let DataFusion answer `count(grid_i)` from statistics wrongly.
        for field in fs.fields().iter().skip(cols.len()) {
            let stats = ColumnStatistics::new_unknown();
            cols.push(if field.is_nullable() {
                stats
            } else {
                stats.with_null_count(Precision::Exact(0))
            });
        }
        let width = self.ndim() * 8 + self.scalar.size();
        // `count(*)` answered from statistics is an Int64: beyond i64::MAX rows the count is not exact (and the
        // scan refuses such a table, see `check_row_count`).
        let num_rows = if rows as u64 > i64::MAX as u64 {
            Precision::Inexact(rows)
        } else {
            Precision::Exact(rows)
        };
        Statistics {
            num_rows,
            total_byte_size: Precision::Inexact(rows.saturating_mul(width)),
            column_statistics: cols,
        }
    }

    /// Statistics of a group or the whole scan from its files' (all exact, so the merge is exact).
    fn merged_statistics(files: &[&PartitionedFile], schema: &Schema) -> DfResult<Statistics> {
        let stats = files.iter().filter_map(|f| f.statistics.as_deref());
        Statistics::try_merge_iter(stats, schema)
    }

    fn target_slab_bytes(selected: u64, partitions: usize) -> u64 {
        let target =
            (selected / (partitions as u64 * 4).max(1)).clamp(SLAB_MIN_BYTES, SLAB_MAX_BYTES);
        // Beyond 4 TiB selected, slabs grow instead of multiplying: the plan holds every slab.
        target.max(selected.div_ceil(MAX_SLABS))
    }

    /// The file groups of a scan, with statistics on every file and group.
    fn file_groups(
        &self,
        sels: &[Option<Selection>],
        partitions: usize,
        pruning: &[PruningPredicate],
        skipped: &mut usize,
    ) -> DfResult<Vec<FileGroup>> {
        check_row_count(&self.name, sels)?;
        let selected: u64 = self
            .files
            .iter()
            .zip(sels)
            .filter_map(|(f, s)| Some(s.as_ref()?.rows().saturating_mul(f.itemsize())))
            .fold(0u64, u64::saturating_add);
        let target = Self::target_slab_bytes(selected, partitions);
        let mut slabs = Vec::new();
        for (k, (f, s)) in self.files.iter().zip(sels).enumerate() {
            if let Some(s) = s {
                slabs.extend(slabs_of(k, f, s, target));
            }
        }
        if !pruning.is_empty() {
            slabs = self.prune_slabs(slabs, sels, pruning, skipped);
        }
        let schema = self.table_schema.table_schema();
        let mut groups = Vec::new();
        for run in group_slabs(slabs, partitions) {
            let files = run
                .iter()
                .map(|slab| {
                    let sel = sels[slab.file]
                        .as_ref()
                        .ok_or_else(|| DataFusionError::Internal("slab of a pruned file".into()))?;
                    self.partitioned_file(slab, sel)
                })
                .collect::<DfResult<Vec<_>>>()?;
            let stats = Self::merged_statistics(&files.iter().collect::<Vec<_>>(), schema)?;
            groups.push(FileGroup::new(files).with_statistics(Arc::new(stats)));
        }
        Ok(groups)
    }
}

impl VoxelTable {
    /// Inexact filters on coordinates as predicates over slab statistics (exact coordinate min/max), so slabs that
    /// cannot hold a passing row are not read. One predicate per filter, so that a filter the statistics cannot
    /// decide does not take the others with it; each such filter is counted in `skipped` and logged.
    fn pruning_predicates(
        &self,
        state: &dyn Session,
        filters: &[Expr],
        skipped: &mut usize,
    ) -> Vec<PruningPredicate> {
        let schema = self.table_schema.table_schema();
        let mut predicates = Vec::new();
        for f in filters {
            if self.columns.classify(f) != FilterKind::Inexact {
                continue;
            }
            match pruning_predicate(state, f, schema) {
                Ok(p) => predicates.push(p),
                Err(why) => {
                    *skipped += 1;
                    log::debug!("table {}: filter {f} prunes no slabs: {why}", self.name);
                }
            }
        }
        predicates
    }

    /// Keep the slabs no predicate rules out. A predicate that fails to evaluate prunes nothing: counted in
    /// `skipped` and logged.
    fn prune_slabs(
        &self,
        slabs: Vec<Slab>,
        sels: &[Option<Selection>],
        predicates: &[PruningPredicate],
        skipped: &mut usize,
    ) -> Vec<Slab> {
        let stats = self.slab_statistics(&slabs, sels);
        let mut keep = vec![true; slabs.len()];
        for p in predicates {
            match p.prune(&stats) {
                Ok(pass) => keep.iter_mut().zip(pass).for_each(|(k, pass)| *k &= pass),
                Err(e) => {
                    *skipped += 1;
                    log::debug!(
                        "table {}: pruning predicate {} prunes no slabs: {e}",
                        self.name,
                        p.predicate_expr()
                    );
                }
            }
        }
        slabs
            .into_iter()
            .zip(keep)
            .filter_map(|(s, k)| k.then_some(s))
            .collect()
    }

    /// The exact coordinate bounds and row count of every slab.
    fn slab_statistics<'a>(
        &'a self,
        slabs: &[Slab],
        sels: &[Option<Selection>],
    ) -> SlabStatistics<'a> {
        let bounds = slabs
            .iter()
            .map(|slab| {
                let f = &self.files[slab.file];
                let Some(sel) = sels[slab.file].as_ref() else {
                    return Vec::new();
                };
                let s = super::layout::slab_selection(
                    sel,
                    super::layout::slow_axis(f.ndim(), f.layout.order),
                    slab.slow.as_ref(),
                );
                s.axes
                    .iter()
                    .map(|a| (a.min().unwrap_or(0) as i64, a.max().unwrap_or(0) as i64))
                    .collect()
            })
            .collect();
        SlabStatistics {
            names: &self.columns.axes,
            bounds,
            rows: slabs.iter().map(|s| s.rows).collect(),
        }
    }
}

/// One filter as a predicate over slab statistics, or why it cannot prune.
fn pruning_predicate(
    state: &dyn Session,
    filter: &Expr,
    schema: &SchemaRef,
) -> DfResult<PruningPredicate> {
    let df_schema = DFSchema::try_from(Arc::clone(schema))?;
    let phys = state.create_physical_expr(unnormalize_col(filter.clone()), &df_schema)?;
    let p = PruningPredicateBuilder::new()
        .with_file_schema(Arc::clone(schema))
        .try_build(phys)?;
    if p.always_true() {
        return Err(DataFusionError::Plan(
            "coordinate bounds cannot decide it (DataFusion filters the rows)".into(),
        ));
    }
    Ok(p)
}

/// Slabs as pruning containers: exact min/max of every coordinate, no nulls.
struct SlabStatistics<'a> {
    names: &'a [(String, u64)],
    bounds: Vec<Vec<(i64, i64)>>,
    rows: Vec<u64>,
}

impl SlabStatistics<'_> {
    fn axis(&self, column: &Column) -> Option<usize> {
        self.names.iter().position(|(n, _)| *n == column.name)
    }

    fn column(&self, column: &Column, pick: fn((i64, i64)) -> i64) -> Option<ArrayRef> {
        let a = self.axis(column)?;
        let values = self.bounds.iter().map(|b| b.get(a).map(|&x| pick(x)));
        Some(Arc::new(Int64Array::from_iter(values)))
    }
}

impl PruningStatistics for SlabStatistics<'_> {
    fn min_values(&self, column: &Column) -> Option<ArrayRef> {
        self.column(column, |(lo, _)| lo)
    }

    fn max_values(&self, column: &Column) -> Option<ArrayRef> {
        self.column(column, |(_, hi)| hi)
    }

    fn num_containers(&self) -> usize {
        self.bounds.len()
    }

    fn null_counts(&self, column: &Column) -> Option<ArrayRef> {
        self.axis(column)?;
        Some(Arc::new(UInt64Array::from(vec![0u64; self.bounds.len()])))
    }

    fn row_counts(&self) -> Option<ArrayRef> {
        Some(Arc::new(UInt64Array::from(self.rows.clone())))
    }

    fn contained(&self, _column: &Column, _values: &HashSet<ScalarValue>) -> Option<BooleanArray> {
        None
    }
}

/// Coordinate filters become index sets within `0..UNIVERSE` (2^62): a longer axis would be cut short silently,
/// so it is refused (only a proxy over an endless handle can claim one; a file that long cannot exist).
fn check_axes(files: &[VoxelFile]) -> Result<()> {
    for f in files {
        if let Some(&n) = f.layout.shape.iter().find(|&&n| n as u64 > UNIVERSE) {
            return Err(VoxelError::Invalid(format!(
                "{}: an axis of {n} elements is longer than a table can index ({UNIVERSE})",
                f.name
            )));
        }
    }
    Ok(())
}

/// A scan yields at most `i64::MAX` rows: `count(*)` and the row counts of SQL are 64-bit signed, and a larger count
/// would wrap negative.
fn check_row_count(table: &str, sels: &[Option<Selection>]) -> DfResult<()> {
    let rows = sels
        .iter()
        .flatten()
        .fold(0u128, |acc, s| acc + u128::from(s.rows()));
    if rows > i64::MAX as u128 {
        return Err(DataFusionError::Plan(format!(
            "table {table}: the scan selects {rows} rows, more than a 64-bit count can hold ({})",
            i64::MAX
        )));
    }
    Ok(())
}

/// Whether the table has the millimetre columns, setting the affine of npy/raw files from the `affine` option.
/// Unasked (`world` not given), they are there when every file has an affine: a table mixing npy/raw files without
/// an `affine` option and images with headers has none (its rows could not all have x, y, z). `world 'true'` insists.
fn resolve_world(files: &mut [VoxelFile], opts: &TableOptions) -> Result<bool> {
    let asked = match opts.world {
        Some(false) => return Ok(false),
        Some(true) => true,
        None => false,
    };
    if opts.affine.is_none() && !asked {
        return Ok(files.iter().all(world::has_own_affine));
    }
    for f in files.iter_mut() {
        match (opts.affine, world::has_own_affine(f)) {
            (Some(_), true) => {
                return Err(VoxelError::Invalid(format!(
                    "{}: option 'affine' is for npy and raw files; this {} file has its own affine",
                    f.name,
                    f.format.name()
                )));
            }
            (Some(a), false) => f.affine = a,
            (None, true) => {}
            (None, false) => {
                return Err(VoxelError::Invalid(format!(
                    "{}: a {} file has no affine; give one with option 'affine' (12 or 16 numbers, row-major) \
                     for the x, y, z columns",
                    f.name,
                    f.format.name()
                )));
            }
        }
    }
    Ok(true)
}

/// The `grid` option: each file's map to that image's grid, read from its header once (a table rebuilt from a
/// plan already has the maps).
fn apply_grid_option(files: &mut [VoxelFile], opts: &TableOptions) -> Result<()> {
    let Some(location) = &opts.grid else {
        return Ok(());
    };
    if files.iter().all(|f| f.grid.is_some()) {
        return Ok(());
    }
    let mut grid_opts = TableOptions::new(super::FormatKind::Any);
    grid_opts.store = opts.store.clone();
    let grid = TableFiles::open(std::slice::from_ref(location), &grid_opts)?;
    let g = match grid.files.as_slice() {
        [g] if !grid.multi && world::has_own_affine(g) => g,
        _ => {
            return Err(VoxelError::Invalid(format!(
                "option 'grid' '{location}': name one image with an affine (NIfTI, Analyze, MGH)"
            )));
        }
    };
    for f in files.iter_mut() {
        f.grid = Some(
            world::GridMap::new(&f.affine, &g.affine, &g.layout.shape).ok_or_else(|| {
                VoxelError::Invalid(format!(
                    "option 'grid' '{location}': its affine is singular"
                ))
            })?,
        );
    }
    Ok(())
}

/// The per-file columns and each file's values: `file` (multi-file tables), the BIDS entities (multi-file tables
/// of BIDS-named files), `world_space` and `tr` (with `world`).
fn per_file_columns(
    files: &[VoxelFile],
    multi: bool,
    world: bool,
) -> (Vec<Arc<Field>>, Vec<Vec<ScalarValue>>) {
    let mut fields = Vec::new();
    let mut values: Vec<Vec<ScalarValue>> = vec![Vec::new(); files.len()];
    if multi {
        fields.push(Field::new(FILE_COLUMN, file_column_type(), false));
        for (row, f) in values.iter_mut().zip(files) {
            row.push(ScalarValue::Utf8(Some(f.name.clone())));
        }
        let names: Vec<&str> = files.iter().map(|f| f.name.as_str()).collect();
        let (bids_fields, bids_values) = bids::columns(&names);
        fields.extend(bids_fields);
        for (row, v) in values.iter_mut().zip(bids_values) {
            row.extend(v);
        }
    }
    if world {
        fields.extend(world::per_file_fields());
        for (row, f) in values.iter_mut().zip(files) {
            row.extend(world::per_file_values(f));
        }
    }
    (fields.into_iter().map(Arc::new).collect(), values)
}

#[async_trait]
impl TableProvider for VoxelTable {
    fn schema(&self) -> SchemaRef {
        Arc::clone(self.table_schema.table_schema())
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> DfResult<Vec<TableProviderFilterPushDown>> {
        Ok(filters
            .iter()
            .map(|f| match self.columns.classify(f) {
                FilterKind::World => self.world_pushdown(f),
                kind => kind.pushdown(),
            })
            .collect())
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let sets = self.axis_sets(filters);
        let keep = self.file_mask(state, filters)?;
        let sels = self.selections(&sets, &keep, &self.world_filters(filters));
        let partitions = state.config().target_partitions().max(1);
        let mut pruning_skipped = 0;
        let pruning = self.pruning_predicates(state, filters, &mut pruning_skipped);
        let groups = self.file_groups(&sels, partitions, &pruning, &mut pruning_skipped)?;
        if groups.is_empty() {
            let schema = match projection {
                Some(p) => Arc::new(self.schema().project(p)?),
                None => self.schema(),
            };
            return Ok(Arc::new(EmptyExec::new(schema)));
        }
        let all: Vec<&PartitionedFile> = groups.iter().flat_map(|g| g.iter()).collect();
        let stats = Self::merged_statistics(&all, self.table_schema.table_schema())?;
        let spec = ScanSpec::new(
            self.name.clone(),
            self.files.clone(),
            sels,
            self.opts.mode,
            self.scalar,
            self.opts.mmap,
        );
        let source = VoxelSource::new(Arc::new(spec), self.table_schema.clone());
        // Filters that could not prune slabs, shown by EXPLAIN ANALYZE (the plan-time count, so a global counter).
        MetricBuilder::new(source.metrics())
            .global_counter("pruning_skipped")
            .add(pruning_skipped);
        let config =
            FileScanConfigBuilder::new(ObjectStoreUrl::local_filesystem(), Arc::new(source))
                .with_file_groups(groups)
                .with_projection_indices(projection.cloned())?
                .with_limit(limit)
                .with_statistics(stats)
                .build();
        Ok(DataSourceExec::from_data_source(config))
    }
}
