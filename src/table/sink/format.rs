//! The DataFusion glue of `COPY … STORED AS NIFTI`: the format factory, the file format, the sink that writes
//! (and uploads) the image, and the analyzer rule that carries `COPY` options.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::Session;
use datafusion::common::{DataFusionError, GetExt, Result as DfResult, Statistics, not_impl_err};
use datafusion::datasource::file_format::file_compression_type::FileCompressionType;
use datafusion::datasource::file_format::{FileFormat, FileFormatFactory};
use datafusion::datasource::listing::ListingTableUrl;
use datafusion::datasource::physical_plan::{FileScanConfig, FileSinkConfig, FileSource};
use datafusion::datasource::sink::{DataSink, DataSinkExec};
use datafusion::datasource::table_schema::TableSchema;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::LexRequirement;
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan};
use futures::StreamExt;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt};

use crate::dtype::Scalar;
use crate::error::{Result, VoxelError};

use super::volume::Volumes;

use super::*;

/// `STORED AS NIFTI` for `COPY … TO`: the factory DataFusion finds by format name ("nifti", or "nii").
#[derive(Debug, Clone)]
pub struct NiftiFormatFactory {
    name: &'static str,
    options: NiftiWriteOptions,
}

impl NiftiFormatFactory {
    /// The factory registered as `name` ([`FORMAT_NAME`] or [`EXTENSION_NAME`]).
    pub fn new(name: &'static str) -> NiftiFormatFactory {
        NiftiFormatFactory {
            name,
            options: NiftiWriteOptions::default(),
        }
    }

    /// A factory registered as `name` whose formats start from `options` (decoded plans).
    pub fn named(name: &str, options: NiftiWriteOptions) -> NiftiFormatFactory {
        let name = if name == EXTENSION_NAME {
            EXTENSION_NAME
        } else {
            FORMAT_NAME
        };
        NiftiFormatFactory { name, options }
    }

    /// A factory whose formats start from `options` (the CLI's `export`).
    pub fn with_options(options: NiftiWriteOptions) -> NiftiFormatFactory {
        NiftiFormatFactory {
            name: FORMAT_NAME,
            options,
        }
    }

    pub fn options(&self) -> &NiftiWriteOptions {
        &self.options
    }
}

impl GetExt for NiftiFormatFactory {
    fn get_ext(&self) -> String {
        self.name.to_string()
    }
}

impl FileFormatFactory for NiftiFormatFactory {
    fn create(
        &self,
        _state: &dyn Session,
        format_options: &HashMap<String, String>,
    ) -> DfResult<Arc<dyn FileFormat>> {
        let given = NiftiWriteOptions::parse(format_options).map_err(plan_err)?;
        let mut options = self.options.clone();
        merge(&mut options, given);
        Ok(Arc::new(NiftiFormat { options }))
    }

    fn default(&self) -> Arc<dyn FileFormat> {
        Arc::new(NiftiFormat {
            options: self.options.clone(),
        })
    }
}

pub(super) fn merge(base: &mut NiftiWriteOptions, given: NiftiWriteOptions) {
    base.like = given.like.or(base.like.take());
    base.value = given.value.or(base.value.take());
    base.fill = given.fill.or(base.fill.take());
    base.dtype = given.dtype.or(base.dtype.take());
    base.scale_auto |= given.scale_auto;
    base.store.entries.extend(given.store.entries);
}

/// The NIfTI output format (writing only: images are read through `CREATE EXTERNAL TABLE … STORED AS NIFTI`).
#[derive(Debug, Clone)]
pub struct NiftiFormat {
    options: NiftiWriteOptions,
}

#[async_trait]
impl FileFormat for NiftiFormat {
    fn get_ext(&self) -> String {
        EXTENSION_NAME.to_string()
    }

    fn get_ext_with_compression(&self, c: &FileCompressionType) -> DfResult<String> {
        Ok(format!("{EXTENSION_NAME}{}", c.get_ext()))
    }

    fn compression_type(&self) -> Option<FileCompressionType> {
        None
    }

    async fn infer_schema(
        &self,
        _state: &dyn Session,
        _store: &Arc<dyn ObjectStore>,
        _objects: &[ObjectMeta],
    ) -> DfResult<SchemaRef> {
        not_impl_err!(
            "the NIFTI file format only writes; read images with CREATE EXTERNAL TABLE … STORED AS NIFTI"
        )
    }

    async fn infer_stats(
        &self,
        _state: &dyn Session,
        _store: &Arc<dyn ObjectStore>,
        _table_schema: SchemaRef,
        _object: &ObjectMeta,
    ) -> DfResult<Statistics> {
        not_impl_err!("the NIFTI file format only writes")
    }

    async fn create_physical_plan(
        &self,
        _state: &dyn Session,
        _conf: FileScanConfig,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        not_impl_err!(
            "the NIFTI file format only writes; read images with CREATE EXTERNAL TABLE … STORED AS NIFTI"
        )
    }

    async fn create_writer_physical_plan(
        &self,
        input: Arc<dyn ExecutionPlan>,
        _state: &dyn Session,
        conf: FileSinkConfig,
        order_requirements: Option<LexRequirement>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        if !conf.table_partition_cols.is_empty() {
            return Err(plan_err(
                "PARTITIONED BY is not supported (one image is written)",
            ));
        }
        let target = conf
            .table_paths
            .first()
            .cloned()
            .ok_or_else(|| plan_err("no target"))?;
        let options = self.options.clone();
        let schema = Arc::clone(&conf.output_schema);
        let original = conf.original_url.clone();
        let plan = Arc::clone(&input);
        // Reading the template is blocking I/O (and may use the object-store client's own runtime).
        let spec = tokio::task::spawn_blocking(move || {
            SinkSpec::resolve(&target, &original, &schema, &options, Some(&plan))
        })
        .await
        .map_err(|e| DataFusionError::ExecutionJoin(Box::new(e)))?
        .map_err(plan_err)?;
        let sink = NiftiSink::new(spec, Arc::clone(&conf.output_schema));
        Ok(Arc::new(DataSinkExec::new(
            input,
            Arc::new(sink),
            order_requirements,
        )))
    }

    fn file_source(&self, table_schema: TableSchema) -> Arc<dyn FileSource> {
        // Never used to read (create_physical_plan refuses); the voxel source with no files is the honest answer.
        let spec = crate::table::scan::ScanSpec::new(
            "nifti output".into(),
            Vec::new(),
            Vec::new(),
            crate::table::ValueMode::Scaled,
            Scalar::F64,
            crate::io::local::MmapMode::default(),
        );
        Arc::new(crate::table::VoxelSource::new(Arc::new(spec), table_schema))
    }
}

/// The `DataSink` that writes one NIfTI image.
#[derive(Debug, Clone)]
pub struct NiftiSink {
    spec: SinkSpec,
    schema: SchemaRef,
}

impl NiftiSink {
    pub fn new(spec: SinkSpec, schema: SchemaRef) -> NiftiSink {
        NiftiSink { spec, schema }
    }

    pub fn spec(&self) -> &SinkSpec {
        &self.spec
    }

    async fn write(
        &self,
        mut data: SendableRecordBatchStream,
        context: &Arc<TaskContext>,
    ) -> DfResult<u64> {
        let spec = &self.spec;
        let err = |e: VoxelError| exec_err(&spec.target, e);
        let dir = match &spec.local {
            Some(path) => path
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
                .map_or_else(|| PathBuf::from("."), Path::to_path_buf),
            None => std::env::temp_dir(),
        };
        let mut vols = Volumes::new(
            spec.grid.spatial(),
            spec.has_t,
            spec.kind,
            &dir,
            &spec.grid.source,
        )
        .map_err(err)?;
        while let Some(batch) = data.next().await {
            spec.ingest(&mut vols, &batch?).map_err(err)?;
        }
        let rows = vols.rows();
        let owned = spec.clone();
        let dir2 = dir.clone();
        let mut out = tokio::task::spawn_blocking(move || owned.write_file(vols, &dir2))
            .await
            .map_err(|e| DataFusionError::ExecutionJoin(Box::new(e)))?
            .map_err(err)?;
        match &spec.local {
            Some(path) => {
                let path = path.clone();
                tokio::task::spawn_blocking(move || out.commit_local(&path))
                    .await
                    .map_err(|e| DataFusionError::ExecutionJoin(Box::new(e)))?
                    .map_err(err)?;
            }
            None => {
                let index = out.finish().map_err(err)?;
                upload(&spec.target, out.path(), index, context)
                    .await
                    .map_err(err)?;
            }
        }
        Ok(rows)
    }
}

/// Upload the finished temporary file to the target URL through the session's object stores; save its gzip index
/// under the new object's URL, size and ETag.
pub(super) async fn upload(
    target: &str,
    file: &Path,
    index: Option<(
        crate::io::gzip::index::GzIndex,
        crate::io::gzip::GzipOptions,
    )>,
    context: &Arc<TaskContext>,
) -> Result<()> {
    use std::io::Read;
    let remote_err = |msg: String| VoxelError::Remote {
        url: target.to_string(),
        msg,
    };
    let url = ListingTableUrl::parse(target).map_err(|e| remote_err(e.to_string()))?;
    let store = context
        .runtime_env()
        .object_store(url.object_store())
        .map_err(|e| remote_err(e.to_string()))?;
    let location = url.prefix().clone();
    let upload = store
        .put_multipart(&location)
        .await
        .map_err(|e| remote_err(e.to_string()))?;
    let mut writer = object_store::WriteMultipart::new_with_chunk_size(upload, 8 << 20);
    let mut f = std::fs::File::open(file).map_err(|e| VoxelError::io(file, e))?;
    let mut buf = vec![0u8; 8 << 20];
    let mut size = 0u64;
    loop {
        let n = match f.read(&mut buf) {
            Ok(n) => n,
            Err(e) => {
                let _ = writer.abort().await;
                return Err(VoxelError::io(file, e));
            }
        };
        if n == 0 {
            break;
        }
        size += n as u64;
        if let Err(e) = writer.wait_for_capacity(4).await {
            let _ = writer.abort().await;
            return Err(remote_err(e.to_string()));
        }
        writer.write(&buf[..n]);
    }
    let put = writer
        .finish()
        .await
        .map_err(|e| remote_err(e.to_string()))?;
    if let Some((index, options)) = index {
        let id = crate::io::gzip::remote::object_identity(target, size, put.e_tag.as_deref());
        // Like any object's index: private, in the cache directory.
        if let Some(path) = crate::io::gzip::remote::index_location(target, &options) {
            let place = crate::io::gzip::sidecar::IndexPlace::cache(path);
            let _ = crate::io::gzip::sidecar::save_index(&index, &[place], &id, 0o600);
        }
    }
    Ok(())
}

impl DisplayAs for NiftiSink {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "NiftiSink: target={} grid={} dtype={}",
            self.spec.target,
            self.spec.grid.source,
            self.spec.scalar.name()
        )
    }
}

#[async_trait]
impl DataSink for NiftiSink {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    async fn write_all(
        &self,
        data: SendableRecordBatchStream,
        context: &Arc<TaskContext>,
    ) -> DfResult<u64> {
        self.write(data, context).await
    }
}

/// Puts a `COPY … STORED AS NIFTI`'s OPTIONS into its file type. DataFusion's plan protobuf drops a COPY's options
/// (only the file format travels, through the codec), so on Ballista they would not reach the scheduler; carried
/// by the format, they do. Options that do not parse are a planning error.
#[derive(Debug, Default)]
pub struct NiftiCopyOptions;

impl datafusion::optimizer::AnalyzerRule for NiftiCopyOptions {
    fn analyze(
        &self,
        plan: datafusion::logical_expr::LogicalPlan,
        _config: &datafusion::common::config::ConfigOptions,
    ) -> DfResult<datafusion::logical_expr::LogicalPlan> {
        use datafusion::common::tree_node::{Transformed, TreeNode};
        use datafusion::datasource::file_format::{file_type_to_format, format_as_file_type};
        use datafusion::logical_expr::LogicalPlan;
        plan.transform_down(|node| {
            let LogicalPlan::Copy(mut copy) = node else {
                return Ok(Transformed::no(node));
            };
            let Some(nifti) = file_type_to_format(&copy.file_type)
                .ok()
                .and_then(|f| f.downcast_ref::<NiftiFormatFactory>().cloned())
            else {
                return Ok(Transformed::no(LogicalPlan::Copy(copy)));
            };
            // Options that do not parse are an error here: left in place they would be dropped on the way to a
            // cluster, and the file written with defaults.
            let given = NiftiWriteOptions::parse(&copy.options).map_err(plan_err)?;
            let mut options = nifti.options.clone();
            merge(&mut options, given);
            let carried = (options != nifti.options).then_some(NiftiFormatFactory {
                name: nifti.name,
                options,
            });
            match carried {
                Some(factory) => {
                    copy.file_type = format_as_file_type(Arc::new(factory));
                    Ok(Transformed::yes(LogicalPlan::Copy(copy)))
                }
                None => Ok(Transformed::no(LogicalPlan::Copy(copy))),
            }
        })
        .map(|t| t.data)
    }

    fn name(&self) -> &str {
        "nifti_copy_options"
    }
}

/// The file formats to register in a session: `nifti` and `nii`.
pub fn format_factories() -> Vec<Arc<dyn FileFormatFactory>> {
    vec![
        Arc::new(NiftiFormatFactory::new(FORMAT_NAME)),
        Arc::new(NiftiFormatFactory::new(EXTENSION_NAME)),
    ]
}
