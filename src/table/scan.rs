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
use std::sync::Arc;

use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{DataFusionError, Result as DfResult};
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::physical_plan::{
    FileOpenFuture, FileOpener, FileScanConfig, FileSource,
};
use datafusion::datasource::projection::{ProjectionOpener, SplitProjection};
use datafusion::datasource::table_schema::TableSchema;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::projection::ProjectionExprs;
use datafusion::physical_plan::DisplayFormatType;
use datafusion::physical_plan::metrics::{ExecutionPlanMetricsSet, MetricBuilder};
use futures::{StreamExt, TryStreamExt};
use object_store::ObjectStore;

use crate::dtype::Scalar;
use crate::error::VoxelError;
use crate::io::local::MmapMode;

use super::files::VoxelFile;
use super::layout::{Selection, slab_selection, slow_axis, slow_range_of};
use super::read::{Output, PIECE_ELEMENTS, ScanMetrics, SlabReader};
use super::schema::ValueMode;

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
}

impl VoxelSource {
    pub fn new(spec: Arc<ScanSpec>, table_schema: TableSchema) -> VoxelSource {
        VoxelSource {
            spec,
            projection: SplitProjection::unprojected(&table_schema),
            table_schema,
            metrics: ExecutionPlanMetricsSet::new(),
            batch_size: None,
        }
    }

    pub fn spec(&self) -> &Arc<ScanSpec> {
        &self.spec
    }
}

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
        let columns = self.projection.file_indices.clone();
        let out = Output {
            schema: Arc::new(file_schema.project(&columns)?),
            columns,
            ndim: self.spec.files.first().map_or(0, |f| f.ndim()),
            mode: self.spec.mode,
            scalar: self.spec.scalar,
            batch_size: self.batch_size.unwrap_or(8192),
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
        let opener = VoxelOpener {
            spec: Arc::clone(&self.spec),
            out: Arc::new(out),
            metrics,
            budget: base
                .limit
                .map_or(PIECE_ELEMENTS, |l| (l as u64).clamp(1, PIECE_ELEMENTS)),
        };
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
        f.write_str("]")
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
        datafusion::physical_plan::apply_expression_roots(self.projection.source.iter(), f)
    }
}

/// Opens slabs for one partition.
struct VoxelOpener {
    spec: Arc<ScanSpec>,
    out: Arc<Output>,
    metrics: ScanMetrics,
    budget: u64,
}

impl VoxelOpener {
    fn reader(&self, pf: &PartitionedFile) -> Result<SlabReader, DataFusionError> {
        let spec = &self.spec;
        let location = pf.object_meta.location.to_string();
        let idx = *spec
            .by_path
            .get(&location)
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
        Ok(SlabReader::new(
            Arc::clone(file),
            &slab,
            Arc::clone(&self.out),
            self.metrics.clone(),
            self.budget,
            spec.mmap,
            slow,
        ))
    }
}

impl FileOpener for VoxelOpener {
    fn open(&self, pf: PartitionedFile) -> DfResult<FileOpenFuture> {
        let reader = self.reader(&pf)?;
        let spec = Arc::clone(&self.spec);
        let stream = futures::stream::try_unfold(reader, move |mut reader| {
            let spec = Arc::clone(&spec);
            async move {
                let (reader, next) = tokio::task::spawn_blocking(move || {
                    let next = reader.next_piece();
                    (reader, next)
                })
                .await
                .map_err(|e| DataFusionError::ExecutionJoin(Box::new(e)))?;
                match next {
                    Ok(Some(batches)) => Ok(Some((batches, reader))),
                    Ok(None) => Ok(None),
                    Err(e) => Err(spec.error(VoxelError::in_file(e, reader_name(&reader)))),
                }
            }
        })
        .map_ok(|batches| futures::stream::iter(batches.into_iter().map(Ok)))
        .try_flatten();
        Ok(Box::pin(async move { Ok(stream.boxed()) }))
    }
}

fn reader_name(r: &SlabReader) -> String {
    r.file_name().to_string()
}
