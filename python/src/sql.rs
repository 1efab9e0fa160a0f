//! SQL from Python. Two routes:
//!
//! * into a DataFusion Python session through the FFI capsules (`__datafusion_table_provider__`,
//!   `__datafusion_table_function__`, `__datafusion_table_provider_factory__`), each taking the session so that
//!   plans travel with its logical codec;
//! * [`run_sql`]: a voxelscan session run here, the last statement's rows handed over as an Arrow C stream
//!   (`__arrow_c_stream__`), batch by batch as pyarrow pulls them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use arrow::array::RecordBatchReader;
use arrow::datatypes::SchemaRef;
use arrow::error::ArrowError;
use arrow::ffi_stream::FFI_ArrowArrayStream;
use arrow::record_batch::RecordBatch;
use datafusion::catalog::{TableFunctionImpl, TableProvider, TableProviderFactory};
use datafusion::execution::SendableRecordBatchStream;
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion::sql::parser::DFParser;
use datafusion_ffi::proto::logical_extension_codec::FFI_LogicalExtensionCodec;
use datafusion_ffi::table_provider::FFI_TableProvider;
use datafusion_ffi::table_provider_factory::FFI_TableProviderFactory;
use datafusion_ffi::udtf::FFI_TableFunction;
use futures::StreamExt;
use pyo3::exceptions::{PyImportError, PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyCapsule, PyCapsuleMethods};
use tokio::runtime::{Handle, Runtime};
use voxelscan::table::register::{VoxelTableFactory, VoxelsFunction, session_context};
use voxelscan::table::{FormatKind, VoxelTable};

use crate::errors::to_py;
use crate::guard;

/// The DataFusion major version of the FFI structs in this build (datafusion-ffi's own version).
pub const DATAFUSION_MAJOR: u64 = 55;

/// One runtime for the whole process: scans started from Python sessions and [`run_sql`] run on it.
fn runtime() -> PyResult<&'static Runtime> {
    static RUNTIME: OnceLock<Result<Runtime, String>> = OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .thread_name("voxelscan")
                .build()
                .map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| {
            PyRuntimeError::new_err(format!("voxelscan: cannot start the async runtime: {e}"))
        })
}

fn handle() -> PyResult<Handle> {
    Ok(runtime()?.handle().clone())
}

/// Refuse to hand a capsule to a `datafusion` package of another major version: the FFI structs' layout is only
/// stable within a major version and nothing else checks it (a mismatch crashes the interpreter).
fn check_datafusion_version(py: Python<'_>) -> PyResult<()> {
    let found: String = py
        .import("datafusion")
        .and_then(|m| m.getattr("__version__"))
        .and_then(|v| v.extract())
        .map_err(|e| {
            PyImportError::new_err(format!("voxelscan needs the datafusion package: {e}"))
        })?;
    let major = found.split('.').next().and_then(|m| m.parse::<u64>().ok());
    if major != Some(DATAFUSION_MAJOR) || datafusion_ffi::version() != DATAFUSION_MAJOR {
        return Err(PyImportError::new_err(format!(
            "voxelscan was built for DataFusion {DATAFUSION_MAJOR} (datafusion-ffi {}), but the installed datafusion \
             Python package is {found}: install datafusion=={DATAFUSION_MAJOR}.* (pip install 'datafusion>={DATAFUSION_MAJOR},<{}')",
            datafusion_ffi::version(),
            DATAFUSION_MAJOR + 1
        )));
    }
    Ok(())
}

/// The session's logical codec: the session object offers it as `__datafusion_logical_extension_codec__()`, or
/// the argument is that capsule already.
fn session_codec(session: &Bound<'_, PyAny>) -> PyResult<FFI_LogicalExtensionCodec> {
    const ATTR: &str = "__datafusion_logical_extension_codec__";
    let obj = if session.hasattr(ATTR)? {
        session.getattr(ATTR)?.call0()?
    } else {
        session.clone()
    };
    let capsule = obj.cast::<PyCapsule>().map_err(|_| {
        PyValueError::new_err(
            "expected a DataFusion SessionContext (or its datafusion_logical_extension_codec capsule) as the session",
        )
    })?;
    let ptr = capsule
        .pointer_checked(Some(c"datafusion_logical_extension_codec"))?
        .cast::<FFI_LogicalExtensionCodec>();
    // SAFETY: the capsule's name was checked to be datafusion_logical_extension_codec, which datafusion-python
    // (same major version, checked before) only gives to a live FFI_LogicalExtensionCodec; it is cloned at once
    // while the capsule is held.
    let codec = unsafe { ptr.as_ref() };
    Ok(codec.clone())
}

/// A voxel table (file, directory, glob or URL; options as in `CREATE EXTERNAL TABLE … OPTIONS`).
#[pyclass(module = "voxelscan._voxelscan", frozen)]
pub struct Table {
    inner: Arc<VoxelTable>,
}

#[pyfunction]
#[pyo3(signature = (locations, options = None, name = "voxels"))]
pub fn table(
    py: Python<'_>,
    locations: Vec<String>,
    options: Option<HashMap<String, String>>,
    name: &str,
) -> PyResult<Table> {
    let options = options.unwrap_or_default();
    py.detach(|| guard("table", || open_table(name, &locations, &options)))
        .map(|t| Table { inner: Arc::new(t) })
}

fn open_table(
    name: &str,
    locations: &[String],
    options: &HashMap<String, String>,
) -> PyResult<VoxelTable> {
    let opts =
        voxelscan::table::files::options_from_map(FormatKind::Any, options).map_err(to_py)?;
    VoxelTable::open(name, locations, opts).map_err(to_py)
}

#[pymethods]
impl Table {
    /// The table's Arrow schema as text (`i: Int64, …`).
    #[getter]
    fn schema(&self) -> String {
        self.inner
            .schema()
            .fields()
            .iter()
            .map(|f| format!("{}: {}", f.name(), f.data_type()))
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn __datafusion_table_provider__<'py>(
        &self,
        py: Python<'py>,
        session: Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyCapsule>> {
        check_datafusion_version(py)?;
        let codec = session_codec(&session)?;
        let provider: Arc<dyn TableProvider> = self.inner.clone();
        let ffi = FFI_TableProvider::new_with_ffi_codec(provider, true, Some(handle()?), codec);
        PyCapsule::new_with_value(py, ffi, c"datafusion_table_provider")
    }
}

/// The `voxels('path', 'key', 'value', …)` table function.
#[pyclass(module = "voxelscan._voxelscan", frozen)]
pub struct TableFunction {}

#[pymethods]
impl TableFunction {
    #[new]
    fn new() -> Self {
        TableFunction {}
    }

    fn __datafusion_table_function__<'py>(
        &self,
        py: Python<'py>,
        session: Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyCapsule>> {
        check_datafusion_version(py)?;
        let codec = session_codec(&session)?;
        let udtf: Arc<dyn TableFunctionImpl> = Arc::new(VoxelsFunction);
        let ffi = FFI_TableFunction::new_with_ffi_codec(udtf, Some(handle()?), codec);
        PyCapsule::new_with_value(py, ffi, c"datafusion_table_function")
    }
}

/// `CREATE EXTERNAL TABLE … STORED AS <format>` for one format name (NIFTI, ANALYZE, MGH, NPY, RAW, VOXELS).
#[pyclass(module = "voxelscan._voxelscan", frozen)]
pub struct TableFactory {
    kind: FormatKind,
}

#[pymethods]
impl TableFactory {
    #[new]
    #[pyo3(signature = (format = "VOXELS"))]
    fn new(format: &str) -> PyResult<Self> {
        FormatKind::parse(format)
            .map(|kind| TableFactory { kind })
            .ok_or_else(|| {
                let known: Vec<&str> = FormatKind::ALL.iter().map(|(n, _)| *n).collect();
                PyValueError::new_err(format!(
                    "unknown voxel format {format:?} (known: {})",
                    known.join(", ")
                ))
            })
    }

    fn __datafusion_table_provider_factory__<'py>(
        &self,
        py: Python<'py>,
        session: Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyCapsule>> {
        check_datafusion_version(py)?;
        let codec = session_codec(&session)?;
        let handle = handle()?;
        let factory: Arc<dyn TableProviderFactory + Send> = Arc::new(InRuntimeFactory {
            inner: VoxelTableFactory { kind: self.kind },
            handle: handle.clone(),
        });
        let ffi = FFI_TableProviderFactory::new_with_ffi_codec(factory, Some(handle), codec);
        PyCapsule::new_with_value(py, ffi, c"datafusion_table_provider_factory")
    }
}

/// The voxel factory as the FFI calls it: the host polls `create` outside any tokio runtime, but opening a table
/// uses `spawn_blocking`; each poll runs inside our runtime's context, and a panic becomes an error.
#[derive(Debug)]
struct InRuntimeFactory {
    inner: VoxelTableFactory,
    handle: Handle,
}

#[async_trait::async_trait]
impl TableProviderFactory for InRuntimeFactory {
    async fn create(
        &self,
        state: &dyn datafusion::catalog::Session,
        cmd: &datafusion::logical_expr::CreateExternalTable,
    ) -> datafusion::error::Result<Arc<dyn TableProvider>> {
        InRuntime {
            handle: &self.handle,
            fut: self.inner.create(state, cmd),
        }
        .await
    }
}

/// The factory's future, polled inside a runtime's context, with panics turned into DataFusion errors.
type CreateFuture<'a> = std::pin::Pin<
    Box<
        dyn std::future::Future<Output = datafusion::error::Result<Arc<dyn TableProvider>>>
            + Send
            + 'a,
    >,
>;

struct InRuntime<'a> {
    handle: &'a Handle,
    fut: CreateFuture<'a>,
}

impl std::future::Future for InRuntime<'_> {
    type Output = datafusion::error::Result<Arc<dyn TableProvider>>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let this = &mut *self;
        let _entered = this.handle.enter();
        let fut = this.fut.as_mut();
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| fut.poll(cx))) {
            Ok(poll) => poll,
            Err(_) => std::task::Poll::Ready(Err(datafusion::error::DataFusionError::Execution(
                "voxelscan: internal error while creating the table".into(),
            ))),
        }
    }
}

/// Run `query` (one or more statements) in a voxelscan session with `tables` registered (name → locations);
/// the last statement's rows come back as a stream.
#[pyfunction]
#[pyo3(signature = (query, tables = None, options = None))]
pub fn run_sql(
    py: Python<'_>,
    query: &str,
    tables: Option<HashMap<String, Vec<String>>>,
    options: Option<HashMap<String, String>>,
) -> PyResult<ArrowStream> {
    let tables = tables.unwrap_or_default();
    let options = options.unwrap_or_default();
    let rt = runtime()?;
    let stream = py.detach(|| {
        guard("sql", || {
            let ctx = session_context(SessionConfig::new().with_information_schema(true));
            for (name, locations) in &tables {
                let table = open_table(name, locations, &options)?;
                ctx.register_table(name.as_str(), Arc::new(table))
                    .map_err(|e| PyValueError::new_err(format!("table {name}: {e}")))?;
            }
            rt.block_on(execute(&ctx, query))
        })
    })?;
    Ok(ArrowStream {
        stream: Mutex::new(Some(FFI_ArrowArrayStream::new(Box::new(BatchReader {
            schema: stream.schema(),
            stream,
            handle: rt.handle().clone(),
        })))),
    })
}

async fn execute(ctx: &SessionContext, query: &str) -> PyResult<SendableRecordBatchStream> {
    let sql_err =
        |e: datafusion::error::DataFusionError| PyValueError::new_err(format!("SQL: {e}"));
    let statements =
        DFParser::parse_sql(query).map_err(|e| PyValueError::new_err(format!("SQL: {e}")))?;
    let count = statements.len();
    if count == 0 {
        return Err(PyValueError::new_err("SQL: no statement given"));
    }
    for (n, statement) in statements.into_iter().enumerate() {
        let plan = ctx
            .state()
            .statement_to_plan(statement)
            .await
            .map_err(sql_err)?;
        let df = ctx.execute_logical_plan(plan).await.map_err(sql_err)?;
        if n + 1 == count {
            return df.execute_stream().await.map_err(sql_err);
        }
        df.collect().await.map_err(sql_err)?;
    }
    Err(PyValueError::new_err("SQL: no statement given"))
}

/// A DataFusion stream read synchronously, one batch per `next()`, for the Arrow C stream.
struct BatchReader {
    schema: SchemaRef,
    stream: SendableRecordBatchStream,
    handle: Handle,
}

impl Iterator for BatchReader {
    type Item = Result<RecordBatch, ArrowError>;

    fn next(&mut self) -> Option<Self::Item> {
        let stream = &mut self.stream;
        let next = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.handle.block_on(stream.next())
        }));
        match next {
            Ok(item) => item.map(|r| r.map_err(|e| ArrowError::ExternalError(Box::new(e)))),
            Err(_) => Some(Err(ArrowError::ComputeError(
                "voxelscan: internal error while reading the query's results".into(),
            ))),
        }
    }
}

impl RecordBatchReader for BatchReader {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }
}

/// Query results as an Arrow C stream (PyCapsule interface): `pyarrow.table(s)`, `pyarrow.RecordBatchReader
/// .from_stream(s)`, polars and others read it without converting rows in Python. It can be consumed once.
#[pyclass(module = "voxelscan._voxelscan", frozen)]
pub struct ArrowStream {
    stream: Mutex<Option<FFI_ArrowArrayStream>>,
}

#[pymethods]
impl ArrowStream {
    #[pyo3(signature = (requested_schema = None))]
    fn __arrow_c_stream__<'py>(
        &self,
        py: Python<'py>,
        requested_schema: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyCapsule>> {
        // The interface allows a producer to ignore the requested schema; the consumer casts if it must.
        let _ = requested_schema;
        let stream = self
            .stream
            .lock()
            .map_err(|_| PyRuntimeError::new_err("voxelscan: result stream poisoned"))?
            .take()
            .ok_or_else(|| PyValueError::new_err("this result stream has already been consumed"))?;
        PyCapsule::new_with_value(py, stream, c"arrow_array_stream")
    }
}
