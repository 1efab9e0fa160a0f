//! The three ways to register a voxel table: `CREATE EXTERNAL TABLE … STORED AS NIFTI|ANALYZE|MGH|NPY|RAW|VOXELS`,
//! the table function `voxels('path', 'key', 'value', …)`, and the Rust functions below. Sessions also get the
//! scalar functions `voxel_to_mm` and `mm_to_voxel` (see [`super::functions`]).

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::catalog::{
    Session, TableFunctionArgs, TableFunctionImpl, TableProvider, TableProviderFactory,
};
use datafusion::common::{DataFusionError, Result as DfResult, ScalarValue};
use datafusion::execution::context::SessionContext;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::logical_expr::{CreateExternalTable, Expr};
use datafusion::prelude::SessionConfig;

use crate::error::{Result, VoxelError};
use crate::proxy::ArrayProxy;

use super::files::{FormatKind, TableOptions, options_from_map};
use super::provider::VoxelTable;
use super::stores::LazyStoreRegistry;

/// Name of the table function.
pub const TABLE_FUNCTION: &str = "voxels";

/// `CREATE EXTERNAL TABLE … STORED AS <kind>`: one factory per format name.
#[derive(Debug, Clone, Copy)]
pub struct VoxelTableFactory {
    pub kind: FormatKind,
}

#[async_trait]
impl TableProviderFactory for VoxelTableFactory {
    async fn create(
        &self,
        _state: &dyn Session,
        cmd: &CreateExternalTable,
    ) -> DfResult<Arc<dyn TableProvider>> {
        let name = cmd.name.to_string();
        if !cmd.table_partition_cols.is_empty() {
            return Err(DataFusionError::Plan(format!(
                "table {name}: PARTITIONED BY is not supported for {} tables (use a glob or a directory; the `file` column tells files apart)",
                self.kind.name()
            )));
        }
        let opts = options_from_map(self.kind, &cmd.options).map_err(|e| e.in_table(&name))?;
        let locations = cmd.locations.clone();
        let table = tokio::task::spawn_blocking(move || VoxelTable::open(&name, &locations, opts))
            .await
            .map_err(|e| DataFusionError::ExecutionJoin(Box::new(e)))??;
        check_declared_columns(&table, cmd)?;
        Ok(Arc::new(table))
    }
}

/// Columns given in the DDL must be exactly the table's (names and types); none at all means "infer".
fn check_declared_columns(table: &VoxelTable, cmd: &CreateExternalTable) -> DfResult<()> {
    let declared = cmd.schema.fields();
    if declared.is_empty() {
        return Ok(());
    }
    let actual = table.schema();
    let same = declared.len() == actual.fields().len()
        && declared
            .iter()
            .zip(actual.fields())
            .all(|(d, a)| d.name() == a.name() && d.data_type() == a.data_type());
    if !same {
        let show = |fs: Vec<String>| fs.join(", ");
        return Err(DataFusionError::Plan(format!(
            "table {}: declared columns ({}) do not match the image's ({}); leave the column list out to infer it",
            cmd.name,
            show(
                declared
                    .iter()
                    .map(|f| format!("{} {}", f.name(), f.data_type()))
                    .collect()
            ),
            show(
                actual
                    .fields()
                    .iter()
                    .map(|f| format!("{} {}", f.name(), f.data_type()))
                    .collect()
            ),
        )));
    }
    Ok(())
}

/// `SELECT … FROM voxels('path' [, 'option', 'value']…)`: path is a file, directory or glob; options as for
/// `CREATE EXTERNAL TABLE` (plus `'format', 'nifti'` to insist on a format).
#[derive(Debug, Default)]
pub struct VoxelsFunction;

impl TableFunctionImpl for VoxelsFunction {
    fn call_with_args(&self, args: TableFunctionArgs) -> DfResult<Arc<dyn TableProvider>> {
        let strings = args
            .exprs()
            .iter()
            .map(string_arg)
            .collect::<DfResult<Vec<String>>>()?;
        let (path, rest) = strings
            .split_first()
            .ok_or_else(|| DataFusionError::Plan("voxels(): needs a path".into()))?;
        if rest.len() % 2 != 0 {
            return Err(DataFusionError::Plan(
                "voxels(): options come in pairs: voxels('path', 'key', 'value', …)".into(),
            ));
        }
        let mut kind = FormatKind::Any;
        let mut pairs = Vec::new();
        for kv in rest.chunks(2) {
            if kv[0].eq_ignore_ascii_case("format") {
                kind = FormatKind::parse(&kv[1]).ok_or_else(|| {
                    DataFusionError::Plan(format!("voxels(): unknown format '{}'", kv[1]))
                })?;
            } else {
                pairs.push((kv[0].as_str(), kv[1].as_str()));
            }
        }
        let name = format!("voxels('{path}')");
        let opts = TableOptions::parse(kind, pairs).map_err(|e| e.in_table(&name))?;
        let table = VoxelTable::open(&name, std::slice::from_ref(path), opts)?;
        Ok(Arc::new(table))
    }
}

fn string_arg(e: &Expr) -> DfResult<String> {
    match e {
        Expr::Literal(
            ScalarValue::Utf8(Some(s))
            | ScalarValue::LargeUtf8(Some(s))
            | ScalarValue::Utf8View(Some(s)),
            _,
        ) => Ok(s.clone()),
        Expr::Literal(v, _) if !v.is_null() => Ok(v.to_string()),
        other => Err(DataFusionError::Plan(format!(
            "voxels(): arguments must be literals, got {other}"
        ))),
    }
}

/// A session builder with every voxel factory, the NIfTI writer's file formats (`COPY … STORED AS NIFTI`) and the
/// `voxels` table function added.
pub fn with_voxels(builder: SessionStateBuilder) -> SessionStateBuilder {
    let mut b = builder;
    let mut config = super::config::with_voxelscan_options(b.config().take().unwrap_or_default());
    super::join_dense::tune(&mut config);
    *b.config() = Some(config);
    for (name, kind) in FormatKind::ALL {
        b = b.with_table_factory(name.to_string(), Arc::new(VoxelTableFactory { kind }));
    }
    b.file_formats()
        .get_or_insert_with(Vec::new)
        .extend(super::sink::format_factories());
    super::join_dense::add_rule(&mut b);
    b.scalar_functions()
        .get_or_insert_with(Vec::new)
        .extend(super::functions::world_functions());
    b.with_analyzer_rule(Arc::new(super::sink::NiftiCopyOptions))
        .with_physical_optimizer_rule(Arc::new(super::aggregate_rule::DenseAggregateRule))
        .with_physical_optimizer_rule(Arc::new(super::join_aggregate::JoinAggregateRule))
        .with_physical_optimizer_rule(Arc::new(super::scan_aggregate::ScanAggregateRule))
}

/// A `SessionContext` with DataFusion's defaults plus the voxel factories and the `voxels()` function.
pub fn session_context(config: SessionConfig) -> SessionContext {
    let runtime = RuntimeEnvBuilder::new()
        .with_object_store_registry(Arc::new(LazyStoreRegistry::new()))
        .build_arc();
    let mut builder = SessionStateBuilder::new()
        .with_default_features()
        .with_config(config);
    // Building a runtime only fails on a bad disk-manager or memory-pool setup, which this one has none of.
    if let Ok(rt) = runtime {
        builder = builder.with_runtime_env(rt);
    }
    let state = with_voxels(builder).build();
    let ctx = SessionContext::new_with_state(state);
    ctx.register_udtf(TABLE_FUNCTION, Arc::new(VoxelsFunction));
    ctx
}

/// Add the voxel factories and the table function to an existing context.
pub fn register_voxel_formats(ctx: &SessionContext) {
    {
        let state_ref = ctx.state_ref();
        let mut state = state_ref.write();
        let options = state.config_mut().options_mut();
        if options
            .extensions
            .get::<super::config::VoxelscanOptions>()
            .is_none()
        {
            options
                .extensions
                .insert(super::config::VoxelscanOptions::default());
        }
        for (name, kind) in FormatKind::ALL {
            state
                .table_factories_mut()
                .insert(name.to_string(), Arc::new(VoxelTableFactory { kind }));
        }
        for format in super::sink::format_factories() {
            // Only fails for an existing format when not overwriting; ours replace any earlier registration.
            let _ = state.register_file_format(format, true);
        }
    }
    ctx.add_analyzer_rule(Arc::new(super::sink::NiftiCopyOptions));
    ctx.register_udtf(TABLE_FUNCTION, Arc::new(VoxelsFunction));
    for f in super::functions::world_functions() {
        ctx.register_udf(f.as_ref().clone());
    }
}

/// Register `location` (file, directory, glob) as table `name`; `options` as in `OPTIONS (…)` (keys such as
/// `scaling`, `value_type`, or a raw spec's `shape`, `dtype`, …). The format is detected.
pub fn register_voxels(
    ctx: &SessionContext,
    name: &str,
    location: &str,
    options: &HashMap<String, String>,
) -> Result<()> {
    let opts = options_from_map(FormatKind::Any, options).map_err(|e| e.in_table(name))?;
    let table = VoxelTable::open(name, &[location.to_string()], opts)?;
    register(ctx, name, table)
}

/// Register an existing proxy as table `name`.
pub fn register_proxy(
    ctx: &SessionContext,
    name: &str,
    proxy: ArrayProxy,
    options: &HashMap<String, String>,
) -> Result<()> {
    let opts = options_from_map(FormatKind::Any, options).map_err(|e| e.in_table(name))?;
    if opts.raw.is_some() {
        let e = VoxelError::Invalid("a proxy already has its spec; give no raw options".into());
        return Err(e.in_table(name));
    }
    let table = VoxelTable::from_proxy(name, proxy, opts)?;
    register(ctx, name, table)
}

fn register(ctx: &SessionContext, name: &str, table: VoxelTable) -> Result<()> {
    ctx.register_table(name, Arc::new(table))
        .map(|_| ())
        .map_err(|e| VoxelError::Invalid(format!("table {name}: {e}")))
}
