//! Ballista's extension codecs with the voxel table and its scan added.
//!
//! The client encodes the logical plan (the [`VoxelTable`] as its registration facts), the scheduler decodes it,
//! plans the scan and encodes each task's physical plan (the `DataSourceExec` whose file source is a
//! [`VoxelSource`]: DataFusion's own `FileScanExecConf` for file groups, byte ranges, statistics, projection and
//! limit, plus the scan's file facts and selections), and the executors decode that. Everything that is not ours
//! goes to Ballista's codecs unchanged; ours is recognised by a magic prefix ([`super::wire`]).

use std::collections::HashSet;
use std::sync::Arc;

use ballista_core::serde::{BallistaLogicalExtensionCodec, BallistaPhysicalExtensionCodec};
use datafusion::arrow::datatypes::{Schema, SchemaRef};
use datafusion::catalog::TableProvider;
use datafusion::common::{DataFusionError, Result as DfResult, TableReference};
use datafusion::datasource::file_format::FileFormatFactory;
use datafusion::datasource::physical_plan::FileScanConfig;
use datafusion::datasource::source::DataSourceExec;
use datafusion::execution::TaskContext;
use datafusion::logical_expr::{
    AggregateUDF, Extension, HigherOrderUDF, LogicalPlan, ScalarUDF, WindowUDF,
};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr_common::physical_expr::proto_decode::PhysicalExprDecodeCtx;
use datafusion::physical_expr_common::physical_expr::proto_encode::PhysicalExprEncodeCtx;
use datafusion::physical_plan::ExecutionPlan;
use datafusion_proto::logical_plan::LogicalExtensionCodec;
use datafusion_proto::physical_plan::from_proto::parse_protobuf_file_scan_config;
use datafusion_proto::physical_plan::to_proto::serialize_file_scan_config;
use datafusion_proto::physical_plan::{
    PhysicalExtensionCodec, PhysicalPlanDecodeContext, PhysicalProtoConverterExtension,
};
use datafusion_proto::protobuf::FileScanExecConf;
use prost::Message;

use crate::table::aggregate::DenseAggregateExec;
use crate::table::join_aggregate::JoinAggregateExec;
use crate::table::scan::object_path;
use crate::table::scan_aggregate::ScanAggregateExec;
use crate::table::sink::NiftiFormatFactory;
use crate::table::{VoxelSource, VoxelTable};

use super::wire::{ScanWire, TableWire};

/// Ballista's logical codec plus [`VoxelTable`] providers.
#[derive(Debug, Default)]
pub struct VoxelLogicalCodec {
    inner: BallistaLogicalExtensionCodec,
}

impl LogicalExtensionCodec for VoxelLogicalCodec {
    fn try_decode(
        &self,
        buf: &[u8],
        inputs: &[LogicalPlan],
        ctx: &TaskContext,
    ) -> DfResult<Extension> {
        self.inner.try_decode(buf, inputs, ctx)
    }

    fn try_encode(&self, node: &Extension, buf: &mut Vec<u8>) -> DfResult<()> {
        self.inner.try_encode(node, buf)
    }

    fn try_decode_table_provider(
        &self,
        buf: &[u8],
        table_ref: &TableReference,
        schema: SchemaRef,
        ctx: &TaskContext,
    ) -> DfResult<Arc<dyn TableProvider>> {
        let Some(wire) = TableWire::decode(buf) else {
            return self
                .inner
                .try_decode_table_provider(buf, table_ref, schema, ctx);
        };
        let table = wire.and_then(TableWire::into_table)?;
        // The plan carries the schema the client saw; a different one means client and scheduler disagree.
        if table.schema().fields() != schema.fields() {
            return Err(DataFusionError::Plan(format!(
                "table {table_ref}: the decoded voxel table has columns {} but the plan expects {}; \
                 run the same voxelscan version everywhere",
                table.schema(),
                schema
            )));
        }
        Ok(Arc::new(table))
    }

    fn try_encode_table_provider(
        &self,
        table_ref: &TableReference,
        node: Arc<dyn TableProvider>,
        buf: &mut Vec<u8>,
    ) -> DfResult<()> {
        match node.downcast_ref::<VoxelTable>() {
            Some(table) => Ok(TableWire::from_table(table).and_then(|w| w.encode(buf))?),
            None => self.inner.try_encode_table_provider(table_ref, node, buf),
        }
    }

    fn try_decode_file_format(
        &self,
        buf: &[u8],
        ctx: &TaskContext,
    ) -> DfResult<Arc<dyn FileFormatFactory>> {
        match nifti_wire::decode_format(buf) {
            Some(factory) => factory,
            None => self.inner.try_decode_file_format(buf, ctx),
        }
    }

    fn try_encode_file_format(
        &self,
        buf: &mut Vec<u8>,
        node: Arc<dyn FileFormatFactory>,
    ) -> DfResult<()> {
        match node.downcast_ref::<NiftiFormatFactory>() {
            Some(factory) => nifti_wire::encode_format(factory, buf),
            None => self.inner.try_encode_file_format(buf, node),
        }
    }

    fn try_decode_udf(&self, name: &str, buf: &[u8]) -> DfResult<Arc<ScalarUDF>> {
        self.inner.try_decode_udf(name, buf)
    }

    fn try_encode_udf(&self, node: &ScalarUDF, buf: &mut Vec<u8>) -> DfResult<()> {
        self.inner.try_encode_udf(node, buf)
    }

    fn try_decode_higher_order_function(
        &self,
        name: &str,
        buf: &[u8],
    ) -> DfResult<Arc<HigherOrderUDF>> {
        self.inner.try_decode_higher_order_function(name, buf)
    }

    fn try_encode_higher_order_function(
        &self,
        node: &HigherOrderUDF,
        buf: &mut Vec<u8>,
    ) -> DfResult<()> {
        self.inner.try_encode_higher_order_function(node, buf)
    }

    fn try_decode_udaf(&self, name: &str, buf: &[u8]) -> DfResult<Arc<AggregateUDF>> {
        self.inner.try_decode_udaf(name, buf)
    }

    fn try_encode_udaf(&self, node: &AggregateUDF, buf: &mut Vec<u8>) -> DfResult<()> {
        self.inner.try_encode_udaf(node, buf)
    }

    fn try_decode_udwf(&self, name: &str, buf: &[u8]) -> DfResult<Arc<WindowUDF>> {
        self.inner.try_decode_udwf(name, buf)
    }

    fn try_encode_udwf(&self, node: &WindowUDF, buf: &mut Vec<u8>) -> DfResult<()> {
        self.inner.try_encode_udwf(node, buf)
    }
}

/// Ballista's physical codec plus voxel scans (`DataSourceExec` over a `FileScanConfig` with a [`VoxelSource`]).
#[derive(Debug, Default)]
pub struct VoxelPhysicalCodec {
    inner: BallistaPhysicalExtensionCodec,
}

/// The scan's config and source when `node` is a voxel scan.
fn voxel_scan(node: &dyn ExecutionPlan) -> Option<(&FileScanConfig, &VoxelSource)> {
    let exec = node.downcast_ref::<DataSourceExec>()?;
    let config = exec.data_source().downcast_ref::<FileScanConfig>()?;
    let source = config.file_source().downcast_ref::<VoxelSource>()?;
    Some((config, source))
}

impl VoxelPhysicalCodec {
    fn encode_scan(
        &self,
        config: &FileScanConfig,
        source: &VoxelSource,
        buf: &mut Vec<u8>,
        converter: &dyn PhysicalProtoConverterExtension,
    ) -> DfResult<()> {
        let proto = serialize_file_scan_config(config, self, converter)?;
        // A task's plan holds only its own partitions: send the facts of the files those read, not the table's all.
        let paths: HashSet<String> = config
            .file_groups
            .iter()
            .flat_map(|g| g.iter())
            .map(|pf| pf.object_meta.location.to_string())
            .collect();
        let mut wire = ScanWire::from_spec(source.spec(), |f| paths.contains(&object_path(f)))?;
        if let Some(filter) = source.value_filter() {
            wire.value_filter = Some(
                converter
                    .physical_expr_to_proto(filter, self)?
                    .encode_to_vec(),
            );
        }
        Ok(wire.encode(&proto.encode_to_vec(), buf)?)
    }

    fn decode_scan(
        &self,
        mut wire: ScanWire,
        proto_bytes: &[u8],
        ctx: &TaskContext,
        converter: &dyn PhysicalProtoConverterExtension,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let proto = FileScanExecConf::decode(proto_bytes).map_err(|e| {
            DataFusionError::Internal(format!("decoding a voxel scan's file scan config: {e}"))
        })?;
        let filter = wire.value_filter.take();
        let spec = wire.into_spec()?;
        let table_schema = FileScanConfig::parse_table_schema_from_proto(&proto)?;
        let decode_ctx = PhysicalPlanDecodeContext::new(ctx, self);
        let value_filter = match filter {
            Some(bytes) => {
                let node = datafusion_proto::protobuf::PhysicalExprNode::decode(bytes.as_slice())
                    .map_err(|e| {
                    DataFusionError::Internal(format!("decoding a voxel scan's value filter: {e}"))
                })?;
                let values = Schema::new(crate::table::schema::value_fields(spec.scalar));
                Some(converter.proto_to_physical_expr(&node, &values, &decode_ctx)?)
            }
            None => None,
        };
        let source = VoxelSource::new(Arc::new(spec), table_schema).with_value_filter(value_filter);
        let config =
            parse_protobuf_file_scan_config(&proto, &decode_ctx, converter, Arc::new(source))?;
        Ok(DataSourceExec::from_data_source(config))
    }
}

impl PhysicalExtensionCodec for VoxelPhysicalCodec {
    fn try_decode(
        &self,
        buf: &[u8],
        inputs: &[Arc<dyn ExecutionPlan>],
        ctx: &TaskContext,
        converter: &dyn PhysicalProtoConverterExtension,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        if let Some(sink) = nifti_wire::decode_sink(buf, inputs) {
            return sink;
        }
        if let Some(dense) = dense_wire::decode(buf, inputs, ctx, self, converter) {
            return dense;
        }
        if let Some(agg) =
            aggregate_wire::decode(aggregate_wire::SCAN, buf, inputs, ctx, self, converter)
        {
            let node = ScanAggregateExec::try_new(agg?)?.ok_or_else(|| {
                let why = "the aggregate cannot be computed in its input scan";
                aggregate_wire::error(aggregate_wire::SCAN, why)
            })?;
            return Ok(Arc::new(node));
        }
        if let Some(agg) =
            aggregate_wire::decode(aggregate_wire::JOIN, buf, inputs, ctx, self, converter)
        {
            // A child no longer of the node's shape decodes as the plain aggregate (the same answer).
            let agg = agg?;
            return Ok(match JoinAggregateExec::try_new(agg.clone())? {
                Some(fused) => Arc::new(fused),
                None => Arc::new(agg),
            });
        }
        match ScanWire::decode(buf) {
            Some(decoded) => {
                let (wire, rest) = decoded?;
                self.decode_scan(wire, rest, ctx, converter)
            }
            None => self.inner.try_decode(buf, inputs, ctx, converter),
        }
    }

    fn try_encode(
        &self,
        node: Arc<dyn ExecutionPlan>,
        buf: &mut Vec<u8>,
        converter: &dyn PhysicalProtoConverterExtension,
    ) -> DfResult<()> {
        if let Some(sink) = nifti_wire::nifti_sink(node.as_ref()) {
            return nifti_wire::encode_sink(sink, buf);
        }
        if let Some(dense) = node.downcast_ref::<DenseAggregateExec>() {
            return dense_wire::encode(dense, buf, self, converter);
        }
        if let Some(n) = node.downcast_ref::<ScanAggregateExec>() {
            let prefix = aggregate_wire::SCAN;
            return aggregate_wire::encode(prefix, n.aggregate(), buf, self, converter);
        }
        if let Some(n) = node.downcast_ref::<JoinAggregateExec>() {
            let prefix = aggregate_wire::JOIN;
            return aggregate_wire::encode(prefix, n.aggregate(), buf, self, converter);
        }
        match voxel_scan(node.as_ref()) {
            Some((config, source)) => self.encode_scan(config, source, buf, converter),
            None => self.inner.try_encode(node, buf, converter),
        }
    }

    fn try_decode_udf(&self, name: &str, buf: &[u8]) -> DfResult<Arc<ScalarUDF>> {
        self.inner.try_decode_udf(name, buf)
    }

    fn try_encode_udf(&self, node: &ScalarUDF, buf: &mut Vec<u8>) -> DfResult<()> {
        self.inner.try_encode_udf(node, buf)
    }

    fn try_decode_higher_order_function(
        &self,
        name: &str,
        buf: &[u8],
    ) -> DfResult<Arc<HigherOrderUDF>> {
        self.inner.try_decode_higher_order_function(name, buf)
    }

    fn try_encode_higher_order_function(
        &self,
        node: &HigherOrderUDF,
        buf: &mut Vec<u8>,
    ) -> DfResult<()> {
        self.inner.try_encode_higher_order_function(node, buf)
    }

    fn try_decode_expr(
        &self,
        buf: &[u8],
        inputs: &[Arc<dyn PhysicalExpr>],
        ctx: &PhysicalExprDecodeCtx<'_>,
    ) -> DfResult<Arc<dyn PhysicalExpr>> {
        self.inner.try_decode_expr(buf, inputs, ctx)
    }

    fn try_encode_expr(
        &self,
        node: &Arc<dyn PhysicalExpr>,
        buf: &mut Vec<u8>,
        ctx: &PhysicalExprEncodeCtx<'_>,
    ) -> DfResult<()> {
        self.inner.try_encode_expr(node, buf, ctx)
    }

    fn try_decode_udaf(&self, name: &str, buf: &[u8]) -> DfResult<Arc<AggregateUDF>> {
        self.inner.try_decode_udaf(name, buf)
    }

    fn try_encode_udaf(&self, node: &AggregateUDF, buf: &mut Vec<u8>) -> DfResult<()> {
        self.inner.try_encode_udaf(node, buf)
    }

    fn try_decode_udwf(&self, name: &str, buf: &[u8]) -> DfResult<Arc<WindowUDF>> {
        self.inner.try_decode_udwf(name, buf)
    }

    fn try_encode_udwf(&self, node: &WindowUDF, buf: &mut Vec<u8>) -> DfResult<()> {
        self.inner.try_encode_udwf(node, buf)
    }
}

/// `COPY … STORED AS NIFTI` on a cluster: the file format (logical plan, client → scheduler) and the
/// `DataSinkExec` with a [`NiftiSink`] (physical plan, scheduler → executor), as magic-prefixed JSON. The sink
/// carries everything resolved at planning (grid, columns, dtype), so executors read no template.
mod nifti_wire {
    use super::*;
    use crate::table::sink::{NiftiSink, NiftiWriteOptions, SinkSpec};
    use datafusion::common::GetExt;
    use datafusion::datasource::sink::DataSinkExec;

    const FORMAT_MAGIC: &[u8] = b"voxelscan.nifti-format:";
    const SINK_MAGIC: &[u8] = b"voxelscan.nifti-sink:";

    fn json_err(what: &str, e: serde_json::Error) -> DataFusionError {
        DataFusionError::Internal(format!("decoding a NIfTI {what}: {e}"))
    }

    /// Serialising our own types into memory fails only if they break serde's rules: a bug.
    fn encode_err(what: &str, e: serde_json::Error) -> DataFusionError {
        DataFusionError::Internal(format!("encoding a NIfTI {what}: {e}"))
    }

    #[derive(serde::Serialize, serde::Deserialize)]
    struct FormatWire {
        name: String,
        options: NiftiWriteOptions,
    }

    pub fn encode_format(factory: &NiftiFormatFactory, buf: &mut Vec<u8>) -> DfResult<()> {
        let wire = FormatWire {
            name: factory.get_ext(),
            options: factory.options().clone(),
        };
        buf.extend_from_slice(FORMAT_MAGIC);
        serde_json::to_writer(buf, &wire).map_err(|e| encode_err("file format", e))
    }

    pub fn decode_format(buf: &[u8]) -> Option<DfResult<Arc<dyn FileFormatFactory>>> {
        let json = buf.strip_prefix(FORMAT_MAGIC)?;
        Some(
            serde_json::from_slice::<FormatWire>(json)
                .map_err(|e| json_err("file format", e))
                .map(|w| {
                    Arc::new(NiftiFormatFactory::named(&w.name, w.options))
                        as Arc<dyn FileFormatFactory>
                }),
        )
    }

    pub fn nifti_sink(node: &dyn ExecutionPlan) -> Option<&NiftiSink> {
        let exec = node.downcast_ref::<DataSinkExec>()?;
        (exec.sink() as &dyn std::any::Any).downcast_ref::<NiftiSink>()
    }

    pub fn encode_sink(sink: &NiftiSink, buf: &mut Vec<u8>) -> DfResult<()> {
        buf.extend_from_slice(SINK_MAGIC);
        serde_json::to_writer(buf, sink.spec()).map_err(|e| encode_err("sink", e))
    }

    pub fn decode_sink(
        buf: &[u8],
        inputs: &[Arc<dyn ExecutionPlan>],
    ) -> Option<DfResult<Arc<dyn ExecutionPlan>>> {
        let json = buf.strip_prefix(SINK_MAGIC)?;
        Some(sink_exec(json, inputs))
    }

    fn sink_exec(
        json: &[u8],
        inputs: &[Arc<dyn ExecutionPlan>],
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let spec: SinkSpec = serde_json::from_slice(json).map_err(|e| json_err("sink", e))?;
        let [input] = inputs else {
            return Err(DataFusionError::Internal(format!(
                "a NIfTI sink has one input, got {}",
                inputs.len()
            )));
        };
        let sink = NiftiSink::new(spec, input.schema());
        Ok(Arc::new(DataSinkExec::new(
            Arc::clone(input),
            Arc::new(sink),
            None,
        )))
    }
}

/// A [`DenseAggregateExec`]: its key ranges as JSON, then the `AggregateExec` it computes as DataFusion's own
/// protobuf (over an empty input of the same schema: the real input is the node's child, encoded on its own).
mod dense_wire {
    use super::*;
    use crate::table::aggregate::KeyRange;
    use datafusion::physical_plan::aggregates::AggregateExec;
    use datafusion::physical_plan::empty::EmptyExec;
    use datafusion::physical_plan::execution_plan::{
        ChildrenPropertiesMode, ReplaceChildrenOptions,
    };
    use datafusion_proto::protobuf::PhysicalPlanNode;

    const MAGIC: &[u8] = b"voxelscan.dense-aggregate:";

    fn recompute() -> ReplaceChildrenOptions {
        ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute)
    }

    fn error(what: impl std::fmt::Display) -> DataFusionError {
        DataFusionError::Internal(format!("decoding a dense aggregate: {what}"))
    }

    pub fn encode(
        dense: &DenseAggregateExec,
        buf: &mut Vec<u8>,
        codec: &dyn PhysicalExtensionCodec,
        converter: &dyn PhysicalProtoConverterExtension,
    ) -> DfResult<()> {
        let agg = dense.aggregate();
        let empty: Arc<dyn ExecutionPlan> = Arc::new(EmptyExec::new(agg.input().schema()));
        let node = Arc::new(agg.clone()).replace_children(vec![empty], recompute())?;
        let proto = converter.execution_plan_to_proto(&node, codec)?;
        let ranges = serde_json::to_vec(dense.ranges())
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
        let len = u32::try_from(ranges.len()).map_err(|_| error("key ranges too long"))?;
        buf.extend_from_slice(MAGIC);
        buf.extend_from_slice(&len.to_le_bytes());
        buf.extend_from_slice(&ranges);
        buf.extend_from_slice(&proto.encode_to_vec());
        Ok(())
    }

    pub fn decode(
        buf: &[u8],
        inputs: &[Arc<dyn ExecutionPlan>],
        ctx: &TaskContext,
        codec: &dyn PhysicalExtensionCodec,
        converter: &dyn PhysicalProtoConverterExtension,
    ) -> Option<DfResult<Arc<dyn ExecutionPlan>>> {
        let rest = buf.strip_prefix(MAGIC)?;
        Some(decode_node(rest, inputs, ctx, codec, converter))
    }

    fn decode_node(
        rest: &[u8],
        inputs: &[Arc<dyn ExecutionPlan>],
        ctx: &TaskContext,
        codec: &dyn PhysicalExtensionCodec,
        converter: &dyn PhysicalProtoConverterExtension,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let [input] = inputs else {
            return Err(error(format!("one input expected, got {}", inputs.len())));
        };
        let (len, rest) = rest
            .split_first_chunk::<4>()
            .ok_or_else(|| error("truncated"))?;
        let len = u32::from_le_bytes(*len) as usize;
        if rest.len() < len {
            return Err(error("truncated key ranges"));
        }
        let (json, proto) = rest.split_at(len);
        let ranges: Vec<KeyRange> = serde_json::from_slice(json).map_err(error)?;
        let proto = PhysicalPlanNode::decode(proto).map_err(error)?;
        let decode_ctx = PhysicalPlanDecodeContext::new(ctx, codec);
        let node = converter.proto_to_execution_plan(&proto, &decode_ctx)?;
        let node = node.replace_children(vec![Arc::clone(input)], recompute())?;
        let agg = node
            .downcast_ref::<AggregateExec>()
            .ok_or_else(|| error("not an aggregate"))?;
        Ok(Arc::new(DenseAggregateExec::try_new(agg.clone(), ranges)?))
    }
}

/// Nodes standing in for an aggregate ([`ScanAggregateExec`], [`JoinAggregateExec`]): after the node's prefix, the
/// aggregate it computes as DataFusion's own protobuf over an empty input of its child's schema; the child (the voxel
/// scan, or the join subtree) is encoded on its own. Everything else is derived again from the decoded child (a
/// task's scan holds only its own files).
mod aggregate_wire {
    use super::*;
    use datafusion::physical_plan::aggregates::AggregateExec;
    use datafusion::physical_plan::empty::EmptyExec;
    use datafusion::physical_plan::execution_plan::{
        ChildrenPropertiesMode, ReplaceChildrenOptions,
    };
    use datafusion_proto::protobuf::PhysicalPlanNode;

    pub const SCAN: &[u8] = b"voxelscan.scan-aggregate:";
    pub const JOIN: &[u8] = b"voxelscan.join-aggregate:";

    fn recompute() -> ReplaceChildrenOptions {
        ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute)
    }

    /// An error decoding the node of `prefix` ("decoding a scan aggregate: …").
    pub fn error(prefix: &[u8], what: impl std::fmt::Display) -> DataFusionError {
        let name = String::from_utf8_lossy(prefix);
        let name = name.trim_start_matches("voxelscan.").trim_end_matches(':');
        DataFusionError::Internal(format!("decoding a {}: {what}", name.replace('-', " ")))
    }

    pub fn encode(
        prefix: &[u8],
        agg: &AggregateExec,
        buf: &mut Vec<u8>,
        codec: &dyn PhysicalExtensionCodec,
        converter: &dyn PhysicalProtoConverterExtension,
    ) -> DfResult<()> {
        let empty: Arc<dyn ExecutionPlan> = Arc::new(EmptyExec::new(agg.input().schema()));
        let plain = Arc::new(agg.clone()).replace_children(vec![empty], recompute())?;
        let proto = converter.execution_plan_to_proto(&plain, codec)?;
        buf.extend_from_slice(prefix);
        buf.extend_from_slice(&proto.encode_to_vec());
        Ok(())
    }

    /// The aggregate `buf` holds after `prefix`, over the one decoded child in `inputs`; `None` when `buf` is not
    /// such a node.
    pub fn decode(
        prefix: &[u8],
        buf: &[u8],
        inputs: &[Arc<dyn ExecutionPlan>],
        ctx: &TaskContext,
        codec: &dyn PhysicalExtensionCodec,
        converter: &dyn PhysicalProtoConverterExtension,
    ) -> Option<DfResult<AggregateExec>> {
        let rest = buf.strip_prefix(prefix)?;
        Some(decode_aggregate(
            prefix, rest, inputs, ctx, codec, converter,
        ))
    }

    fn decode_aggregate(
        prefix: &[u8],
        proto: &[u8],
        inputs: &[Arc<dyn ExecutionPlan>],
        ctx: &TaskContext,
        codec: &dyn PhysicalExtensionCodec,
        converter: &dyn PhysicalProtoConverterExtension,
    ) -> DfResult<AggregateExec> {
        let [input] = inputs else {
            let got = inputs.len();
            return Err(error(prefix, format!("one input expected, got {got}")));
        };
        let proto = PhysicalPlanNode::decode(proto).map_err(|e| error(prefix, e))?;
        let decode_ctx = PhysicalPlanDecodeContext::new(ctx, codec);
        let node = converter.proto_to_execution_plan(&proto, &decode_ctx)?;
        let node = node.replace_children(vec![Arc::clone(input)], recompute())?;
        node.downcast_ref::<AggregateExec>()
            .cloned()
            .ok_or_else(|| error(prefix, "not an aggregate"))
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use datafusion::arrow::util::pretty::pretty_format_batches;
    use datafusion::common::stats::Precision;
    use datafusion::datasource::physical_plan::FileScanConfigBuilder;
    use datafusion::physical_plan::{collect, displayable};
    use datafusion::prelude::{SessionConfig, SessionContext};
    use datafusion_proto::bytes::{
        logical_plan_from_bytes_with_extension_codec, logical_plan_to_bytes_with_extension_codec,
        physical_plan_from_bytes_with_extension_codec, physical_plan_to_bytes_with_extension_codec,
    };

    use super::*;
    use crate::dtype::{ByteOrder, DType, Scalar};
    use crate::synth::write_nifti1;
    use crate::table::session_context;

    /// A 4-D int16 image whose stored voxel (i,j,k,t) is (3i + 5j + 7k + 11t) mod 97, scaled by 0.5 and +10.
    fn image(path: &Path, shape: [usize; 4], order: ByteOrder, gzip: bool) {
        let dtype = DType::new(Scalar::I16, order);
        let mut data = Vec::new();
        for t in 0..shape[3] {
            for k in 0..shape[2] {
                for j in 0..shape[1] {
                    for i in 0..shape[0] {
                        let v = ((3 * i + 5 * j + 7 * k + 11 * t) % 97) as i16;
                        data.extend_from_slice(&match order {
                            ByteOrder::Little => v.to_le_bytes(),
                            ByteOrder::Big => v.to_be_bytes(),
                        });
                    }
                }
            }
        }
        write_nifti1(path, &shape, dtype, 0.5, 10.0, &data, gzip).unwrap();
    }

    /// Files for every kind of table, and a context with one table of each kind.
    async fn tables(dir: &Path) -> SessionContext {
        std::fs::create_dir(dir.join("runs")).unwrap();
        image(&dir.join("a.nii"), [6, 5, 4, 7], ByteOrder::Big, false);
        image(
            &dir.join("runs/r1.nii"),
            [6, 5, 4, 3],
            ByteOrder::Little,
            false,
        );
        image(
            &dir.join("runs/r2.nii"),
            [4, 4, 4, 5],
            ByteOrder::Little,
            false,
        );
        image(
            &dir.join("runs/r3.nii.gz"),
            [3, 3, 2, 2],
            ByteOrder::Little,
            true,
        );
        // A raw file: 16 bytes of preamble, then 3×4×5 little-endian u16 in C order.
        let mut raw = vec![0u8; 16];
        for v in 0..60u16 {
            raw.extend_from_slice(&(v * 3).to_le_bytes());
        }
        std::fs::write(dir.join("cube.bin"), raw).unwrap();
        // Small batches and several partitions: many slabs, groups and batches even for small files.
        let ctx = session_context(
            SessionConfig::new()
                .with_target_partitions(3)
                .with_batch_size(17),
        );
        let d = dir.display();
        for ddl in [
            format!("CREATE EXTERNAL TABLE a STORED AS NIFTI LOCATION '{d}/a.nii'"),
            format!(
                "CREATE EXTERNAL TABLE a_raw STORED AS NIFTI LOCATION '{d}/a.nii' OPTIONS ('scaling' 'false', 'mmap' 'off')"
            ),
            format!(
                "CREATE EXTERNAL TABLE a_f32 STORED AS VOXELS LOCATION '{d}/a.nii' OPTIONS ('value_type' 'float32')"
            ),
            format!("CREATE EXTERNAL TABLE runs STORED AS NIFTI LOCATION '{d}/runs/'"),
            format!(
                "CREATE EXTERNAL TABLE cube STORED AS RAW LOCATION '{d}/cube.bin' \
                 OPTIONS ('shape' '3,4,5', 'dtype' '<u2', 'offset' '16', 'order' 'C', 'slope' '2', 'inter' '-1')"
            ),
        ] {
            ctx.sql(&ddl).await.unwrap().collect().await.unwrap();
        }
        ctx
    }

    async fn physical(ctx: &SessionContext, sql: &str) -> Arc<dyn ExecutionPlan> {
        ctx.sql(sql)
            .await
            .unwrap()
            .create_physical_plan()
            .await
            .unwrap()
    }

    fn shown(plan: &Arc<dyn ExecutionPlan>) -> String {
        displayable(plan.as_ref())
            .set_show_statistics(true)
            .indent(true)
            .to_string()
    }

    async fn rows(plan: Arc<dyn ExecutionPlan>, ctx: &SessionContext) -> String {
        let batches = collect(plan, ctx.task_ctx()).await.unwrap();
        pretty_format_batches(&batches).unwrap().to_string()
    }

    /// Logical and physical plans of `sql` survive the codecs: same plan text (file groups, byte ranges,
    /// statistics, projection, limit, selections) and the same rows.
    async fn round_trip(ctx: &SessionContext, sql: &str) {
        let logical = ctx.sql(sql).await.unwrap().into_optimized_plan().unwrap();
        let lcodec = VoxelLogicalCodec::default();
        let bytes = logical_plan_to_bytes_with_extension_codec(&logical, &lcodec).unwrap();
        let back =
            logical_plan_from_bytes_with_extension_codec(&bytes, &ctx.task_ctx(), &lcodec).unwrap();
        // A table scan's fetch is not part of DataFusion's protobuf (the Limit above it is, and the receiver's
        // optimizer pushes it down again: the physical plans below are compared in full).
        let without_fetch = |plan: &LogicalPlan| {
            let text = plan.display_indent_schema().to_string();
            text.lines()
                .map(|l| match (l.contains("TableScan:"), l.find(", fetch=")) {
                    (true, Some(at)) => {
                        let end = l[at + 2..].find([',', ' ']).map_or(l.len(), |e| at + 2 + e);
                        format!("{}{}", &l[..at], &l[end..])
                    }
                    _ => l.to_string(),
                })
                .collect::<Vec<_>>()
                .join("\n")
        };
        assert_eq!(without_fetch(&back), without_fetch(&logical), "{sql}");
        let physical = ctx.state().create_physical_plan(&logical).await.unwrap();
        let from_decoded = ctx.state().create_physical_plan(&back).await.unwrap();
        assert_eq!(shown(&from_decoded), shown(&physical), "{sql}");

        let pcodec = VoxelPhysicalCodec::default();
        let bytes = physical_plan_to_bytes_with_extension_codec(physical.clone(), &pcodec).unwrap();
        let decoded =
            physical_plan_from_bytes_with_extension_codec(&bytes, &ctx.task_ctx(), &pcodec)
                .unwrap();
        assert_eq!(shown(&decoded), shown(&physical), "{sql}");
        let want = rows(physical, ctx).await;
        assert!(
            want.lines().count() > 4,
            "{sql}: the query should return rows:\n{want}"
        );
        assert_eq!(rows(decoded, ctx).await, want, "{sql}");
        assert_eq!(rows(from_decoded, ctx).await, want, "{sql}");
    }

    #[tokio::test]
    async fn dense_aggregates_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = tables(dir.path()).await;
        for sql in [
            // Integer values: sums are exact whatever order partial states merge in, so rows compare exactly.
            "SELECT t, avg(value), max(value), count(*) FROM a_raw GROUP BY t ORDER BY t",
            "SELECT i, j, k, avg(value), min(value) FROM a_raw GROUP BY i, j, k ORDER BY i, j, k",
            "SELECT CAST(k AS INT) AS k, sum(value) FILTER (WHERE t > 2) FROM a_raw GROUP BY CAST(k AS INT) ORDER BY k",
            // 65 536 int16 values × 840 voxels and volumes: the value key is mapped (shown, so compared below).
            "SELECT value, i, j, k, t, count(*) FROM a_raw GROUP BY value, i, j, k, t ORDER BY value, i, j, k, t",
        ] {
            let plan = physical(&ctx, sql).await;
            assert!(shown(&plan).contains("DenseAggregateExec"), "{sql}");
            if sql.starts_with("SELECT value") {
                assert!(shown(&plan).contains(" mapped"), "{sql}");
            }
            round_trip(&ctx, sql).await;
        }
        let pcodec = VoxelPhysicalCodec::default();
        let converter = datafusion_proto::physical_plan::DefaultPhysicalProtoConverter {};
        let e = pcodec
            .try_decode(
                b"voxelscan.dense-aggregate:\x05",
                &[],
                &ctx.task_ctx(),
                &converter,
            )
            .unwrap_err();
        assert!(e.to_string().contains("dense aggregate"), "{e}");
    }

    #[tokio::test]
    async fn join_aggregates_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = tables(dir.path()).await;
        for sql in [
            "SELECT r.value AS v, b.t, sum(b.value), count(*), max(b.value) FROM a b JOIN a_raw r \
             ON b.i = r.i AND b.j = r.j AND b.k = r.k WHERE r.t = 0 AND r.value > 40 GROUP BY r.value, b.t \
             ORDER BY v, b.t",
            "SELECT b.k, count(*), sum(b.value) FROM a b JOIN a_raw r \
             ON b.i = r.i AND b.j = r.j AND b.k = r.k WHERE r.t = 1 GROUP BY b.k ORDER BY b.k",
            // Per-file keys of a multi-file probe (runs of different grids and lengths, one gzipped).
            "SELECT b.file, r.value AS v, b.t, sum(b.value), count(*) FROM runs b JOIN a_raw r \
             ON b.i = r.i AND b.j = r.j AND b.k = r.k WHERE r.t = 0 AND r.value > 40 \
             GROUP BY b.file, r.value, b.t ORDER BY b.file, v, b.t",
        ] {
            let plan = physical(&ctx, sql).await;
            assert!(
                shown(&plan).contains("JoinAggregateExec"),
                "{}",
                shown(&plan)
            );
            // The join's dynamic filter is not sent (executors only prune with it): the rest is the same plan.
            let no_dynamic = |p: &Arc<dyn ExecutionPlan>| {
                shown(p).replace(", dynamic_filter=DynamicFilter [ empty ]", "")
            };
            let pcodec = VoxelPhysicalCodec::default();
            let bytes = physical_plan_to_bytes_with_extension_codec(plan.clone(), &pcodec).unwrap();
            let decoded =
                physical_plan_from_bytes_with_extension_codec(&bytes, &ctx.task_ctx(), &pcodec)
                    .unwrap();
            assert_eq!(no_dynamic(&decoded), no_dynamic(&plan), "{sql}");
            let want = rows(plan, &ctx).await;
            assert!(want.lines().count() > 4, "{sql}: {want}");
            assert_eq!(rows(decoded, &ctx).await, want, "{sql}");
            // The same answer as DataFusion's own join and aggregate.
            ctx.sql("SET voxelscan.fused_joins = false").await.unwrap();
            let plain = physical(&ctx, sql).await;
            assert!(!shown(&plain).contains("JoinAggregateExec"));
            assert_eq!(rows(plain, &ctx).await, want, "{sql}");
            ctx.sql("SET voxelscan.fused_joins = true").await.unwrap();
        }
        let pcodec = VoxelPhysicalCodec::default();
        let converter = datafusion_proto::physical_plan::DefaultPhysicalProtoConverter {};
        let e = pcodec
            .try_decode(
                b"voxelscan.join-aggregate:\x05",
                &[],
                &ctx.task_ctx(),
                &converter,
            )
            .unwrap_err();
        assert!(e.to_string().contains("join aggregate"), "{e}");
    }

    #[tokio::test]
    async fn scan_aggregates_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = tables(dir.path()).await;
        for sql in [
            "SELECT t, avg(value), max(value), count(*) FROM a_raw GROUP BY t ORDER BY t",
            "SELECT i, j, k, sum(value), min(value) FROM a_raw GROUP BY i, j, k ORDER BY i, j, k",
            "SELECT k, count(value), sum(value * 2) FROM a_raw WHERE t > 2 GROUP BY k ORDER BY k",
            "SELECT count(*), min(value), max(value), sum(value), avg(value) FROM a_raw",
            // Per-file keys, alone and among coordinates.
            "SELECT file, count(*), sum(value) FROM runs GROUP BY file ORDER BY file",
            "SELECT k, file, t, avg(value), max(value) FROM runs GROUP BY k, file, t ORDER BY k, file, t",
        ] {
            let plan = physical(&ctx, sql).await;
            assert!(shown(&plan).contains("ScanAggregateExec"), "{sql}");
            round_trip(&ctx, sql).await;
        }
        let pcodec = VoxelPhysicalCodec::default();
        let converter = datafusion_proto::physical_plan::DefaultPhysicalProtoConverter {};
        let e = pcodec
            .try_decode(
                b"voxelscan.scan-aggregate:\x05",
                &[],
                &ctx.task_ctx(),
                &converter,
            )
            .unwrap_err();
        assert!(e.to_string().contains("scan aggregate"), "{e}");
    }

    #[tokio::test]
    async fn tables_and_scans_round_trip_with_every_option() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = tables(dir.path()).await;
        for sql in [
            "SELECT t, sum(value), count(*) FROM a GROUP BY t ORDER BY t",
            "SELECT i, j, k, t, value FROM a WHERE i BETWEEN 1 AND 3 AND k IN (0, 2, 3) AND t > 4 ORDER BY t, k, j, i",
            "SELECT value FROM a WHERE j = 2 LIMIT 9",
            "SELECT k, min(value), max(value) FROM a_raw WHERE i + j < 4 GROUP BY k ORDER BY k",
            "SELECT t, sum(value) FROM a_f32 WHERE t <> 3 GROUP BY t ORDER BY t",
            "SELECT file, t, count(value), sum(value) FROM runs GROUP BY file, t ORDER BY file, t",
            "SELECT file, i, j, k, value FROM runs WHERE file LIKE '%r2%' AND i = 1 AND t = 4 ORDER BY k, j",
            "SELECT file, count(*) FROM runs WHERE file LIKE '%.gz' OR k = 1 GROUP BY file ORDER BY file",
            "SELECT i, j, k, value FROM cube WHERE j >= 1 ORDER BY i, j, k",
            "SELECT t, avg(value) FROM voxels('runs/r1.nii', 'scaling', 'false') GROUP BY t ORDER BY t",
            // A filter on `value` alone, evaluated in the scan (`value_filter=` must survive the codec).
            "SELECT i, j, k, t, value FROM a WHERE value > 20 AND CAST(value AS BIGINT) % 3 <> 0 ORDER BY t, k, j, i",
            "SELECT file, i, value FROM runs WHERE value < 30 ORDER BY file, i, value",
        ] {
            let sql = sql.replace("'runs/", &format!("'{}/runs/", dir.path().display()));
            round_trip(&ctx, &sql).await;
        }
        let physical = physical(&ctx, "SELECT i, value FROM a WHERE value > 20").await;
        assert!(
            shown(&physical).contains("value_filter="),
            "{}",
            shown(&physical)
        );
    }

    /// Millimetre columns and per-file columns survive both codecs: `world`, the `affine` of a raw file, x/y/z
    /// predicates (exact and boxed), `world_space`, `tr`.
    #[tokio::test]
    async fn world_columns_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = tables(dir.path()).await;
        let d = dir.path().display();
        for ddl in [
            format!(
                "CREATE EXTERNAL TABLE w STORED AS NIFTI LOCATION '{d}/a.nii' OPTIONS ('world' 'true')"
            ),
            format!(
                "CREATE EXTERNAL TABLE wruns STORED AS NIFTI LOCATION '{d}/runs/' OPTIONS ('world' 'true')"
            ),
            format!(
                "CREATE EXTERNAL TABLE wgrid STORED AS NIFTI LOCATION '{d}/runs/' OPTIONS ('grid' '{d}/a.nii')"
            ),
            format!(
                "CREATE EXTERNAL TABLE wcube STORED AS RAW LOCATION '{d}/cube.bin' OPTIONS ('shape' '3,4,5', \
                 'dtype' '<u2', 'offset' '16', 'order' 'C', 'affine' '0 2 0 -3, -1 0 0 4, 0.5 0 1 0.25')"
            ),
        ] {
            ctx.sql(&ddl).await.unwrap().collect().await.unwrap();
        }
        for name in ["w", "wruns", "wcube", "wgrid"] {
            let (sent, got) = provider_round_trip(&ctx, name).await;
            assert_eq!(got.schema(), sent.schema(), "{name}");
            assert_eq!(
                TableWire::from_table(&got).unwrap(),
                TableWire::from_table(&sent).unwrap(),
                "{name}"
            );
            assert_eq!(sent.options().world, Some(true));
        }
        for sql in [
            "SELECT i, j, k, x, y, z, world_space, tr FROM w WHERE t = 1 AND x < 0.5 ORDER BY i, j, k",
            "SELECT count(*), sum(value) FROM w WHERE (x - 1)*(x - 1) + (y + 1)*(y + 1) + power(z, 2) <= 4",
            "SELECT file, avg(x), sum(value) FROM wruns WHERE y BETWEEN -1 AND 1 GROUP BY file ORDER BY file",
            "SELECT i, j, k, x, y, z, value FROM wcube WHERE z > 1 ORDER BY i, j, k",
            "SELECT file, grid_i, count(*), sum(value) FROM wgrid WHERE grid_k IS NOT NULL AND grid_j < 3 \
             GROUP BY file, grid_i ORDER BY file, grid_i",
        ] {
            round_trip(&ctx, sql).await;
        }
    }

    /// A dense join (one linear key, both sides rehashed on it when partitioned) ships to executors: the decoded plan
    /// is the same but for the scans' dynamic filters, which stay with the process that planned them.
    #[tokio::test]
    async fn dense_joins_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = tables(dir.path()).await;
        let sql = "SELECT b.t, sum(b.value), count(*) FROM a b JOIN a_raw r \
                   ON b.i = r.i AND b.j = r.j AND b.k = r.k AND b.t = r.t WHERE r.value > 40 GROUP BY b.t ORDER BY b.t";
        let no_dynamic = |p: &Arc<dyn ExecutionPlan>| {
            shown(p).replace(", dynamic_filter=DynamicFilter [ empty ]", "")
        };
        for rows_threshold in ["1000000", "0"] {
            ctx.sql(&format!(
                "SET datafusion.optimizer.hash_join_single_partition_threshold_rows = {rows_threshold}"
            ))
            .await
            .unwrap();
            ctx.sql(&format!(
                "SET datafusion.optimizer.hash_join_single_partition_threshold = {rows_threshold}"
            ))
            .await
            .unwrap();
            let physical = physical(&ctx, sql).await;
            assert!(
                shown(&physical).contains("on=[(CAST(i@"),
                "{}",
                shown(&physical)
            );
            let rehashed = shown(&physical).contains("partitioning=Hash([CAST(i@");
            assert_eq!(rehashed, rows_threshold == "0", "{}", shown(&physical));
            let pcodec = VoxelPhysicalCodec::default();
            let bytes =
                physical_plan_to_bytes_with_extension_codec(physical.clone(), &pcodec).unwrap();
            let decoded =
                physical_plan_from_bytes_with_extension_codec(&bytes, &ctx.task_ctx(), &pcodec)
                    .unwrap();
            assert_eq!(no_dynamic(&decoded), no_dynamic(&physical));
            let want = rows(physical, &ctx).await;
            assert!(want.lines().count() > 4, "{want}");
            assert_eq!(rows(decoded, &ctx).await, want);
        }
    }

    /// Object-store options of every kind: each `remote.*` key and credentials (which must reach the executors).
    const STORE_OPTIONS: &str = "'remote.gap' '4096', 'remote.overread' '0.5', 'remote.concurrency' '3', \
         'remote.rtt' '30ms', 'remote.bandwidth' '80M', 'remote.max_request' '4M', 'remote.retries' '2', 'remote.timeout' '7', 'aws.region' 'garage', 'aws.endpoint' 'http://127.0.0.1:1', \
         'aws.access_key_id' 'GKidValue', 'aws.secret_access_key' 'SeCrEtVaLuE', 'aws.session_token' 'SeSsIoN', \
         'aws.allow_http' 'true'";

    /// A table's provider through the logical codec and back.
    async fn provider_round_trip(ctx: &SessionContext, name: &str) -> (VoxelTable, VoxelTable) {
        let provider = ctx.table_provider(name).await.unwrap();
        let codec = VoxelLogicalCodec::default();
        let table_ref = TableReference::bare(name);
        let mut buf = Vec::new();
        codec
            .try_encode_table_provider(&table_ref, Arc::clone(&provider), &mut buf)
            .unwrap();
        let back = codec
            .try_decode_table_provider(&buf, &table_ref, provider.schema(), &ctx.task_ctx())
            .unwrap();
        let sent = provider.downcast_ref::<VoxelTable>().unwrap();
        let got = back.downcast_ref::<VoxelTable>().unwrap();
        let again = |t: &VoxelTable| TableWire::from_table(t).unwrap().into_table().unwrap();
        (again(sent), again(got))
    }

    #[tokio::test]
    async fn every_option_and_value_type_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = tables(dir.path()).await;
        let a = format!("{}/a.nii", dir.path().display());
        let mut option_sets = vec![
            format!("'scaling' 'false', {STORE_OPTIONS}"),
            STORE_OPTIONS.to_string(),
        ];
        for mmap in ["off", "c", "r"] {
            option_sets.push(format!("'mmap' '{mmap}'"));
        }
        for ty in [
            "uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64", "int64", "float16",
            "float32", "float64",
        ] {
            option_sets.push(format!("'value_type' '{ty}', 'remote.retries' '1'"));
        }
        for (n, options) in option_sets.iter().enumerate() {
            let name = format!("t{n}");
            let ddl = format!(
                "CREATE EXTERNAL TABLE {name} STORED AS NIFTI LOCATION '{a}' OPTIONS ({options})"
            );
            ctx.sql(&ddl)
                .await
                .unwrap_or_else(|e| panic!("{ddl}: {e}"))
                .collect()
                .await
                .unwrap();
            let (sent, got) = provider_round_trip(&ctx, &name).await;
            let (sent, got) = (
                TableWire::from_table(&sent).unwrap(),
                TableWire::from_table(&got).unwrap(),
            );
            assert_eq!(got, sent, "{options}");
            assert!(!sent.options.store.is_empty() || !options.contains("remote."));
            round_trip(
                &ctx,
                &format!("SELECT t, sum(value), count(*) FROM {name} GROUP BY t ORDER BY t"),
            )
            .await;
        }
        // The credentials arrived (an executor needs them to reach the store) ...
        let (_, got) = provider_round_trip(&ctx, "t1").await;
        let store = &got.options().store.entries;
        assert_eq!(store["aws.secret_access_key"], "SeCrEtVaLuE");
        assert_eq!(store["remote.overread"], "0.5");
        assert_eq!(store["remote.rtt"], "30ms");
        assert_eq!(store.len(), 14);
    }

    /// Secrets from `OPTIONS` appear in no display of the table, its scan or the plans: EXPLAIN (plain and
    /// verbose), `Debug` of the provider, of the physical plan and of the decoded scan.
    #[tokio::test]
    async fn secrets_are_redacted_from_every_display() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = tables(dir.path()).await;
        let a = format!("{}/a.nii", dir.path().display());
        let ddl = format!(
            "CREATE EXTERNAL TABLE s STORED AS NIFTI LOCATION '{a}' OPTIONS ({STORE_OPTIONS})"
        );
        ctx.sql(&ddl).await.unwrap().collect().await.unwrap();
        let secrets = ["SeCrEtVaLuE", "GKidValue", "SeSsIoN"];
        let clean = |what: &str, text: &str| {
            for s in secrets {
                assert!(!text.contains(s), "{what} shows {s}:\n{text}");
            }
        };
        let sql = "SELECT t, sum(value) FROM s WHERE k = 1 GROUP BY t";
        for explain in ["EXPLAIN", "EXPLAIN VERBOSE", "EXPLAIN ANALYZE"] {
            let batches = ctx
                .sql(&format!("{explain} {sql}"))
                .await
                .unwrap()
                .collect()
                .await
                .unwrap();
            let text = pretty_format_batches(&batches).unwrap().to_string();
            assert!(text.contains("table=s"), "{text}");
            clean(explain, &text);
        }
        let provider = ctx.table_provider("s").await.unwrap();
        let table = format!("{provider:?}");
        assert!(
            table.contains("aws.secret_access_key") && table.contains("<redacted>"),
            "{table}"
        );
        clean("Debug of the table", &table);
        let logical = ctx.sql(sql).await.unwrap().into_optimized_plan().unwrap();
        clean(
            "the logical plan",
            &format!("{logical:?}\n{}", logical.display_indent()),
        );
        let physical = ctx.state().create_physical_plan(&logical).await.unwrap();
        clean(
            "the physical plan",
            &format!("{physical:?}\n{}", shown(&physical)),
        );
        let pcodec = VoxelPhysicalCodec::default();
        let bytes = physical_plan_to_bytes_with_extension_codec(physical, &pcodec).unwrap();
        let decoded =
            physical_plan_from_bytes_with_extension_codec(&bytes, &ctx.task_ctx(), &pcodec)
                .unwrap();
        clean("the decoded plan", &format!("{decoded:?}"));
        // ... while the plan sent to the scheduler carries them (see README, "Security and limits"). (A scan of a
        // local file carries no store options; one of an object carries them to the executors.)
        let lcodec = VoxelLogicalCodec::default();
        let sent = logical_plan_to_bytes_with_extension_codec(&logical, &lcodec).unwrap();
        assert!(sent.windows(11).any(|w| w == b"SeCrEtVaLuE"));
    }

    #[tokio::test]
    async fn a_task_gets_the_facts_of_its_own_files_only() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = tables(dir.path()).await;
        let sql = "SELECT file, value FROM runs";
        let logical = ctx.sql(sql).await.unwrap().into_optimized_plan().unwrap();
        let physical = ctx.state().create_physical_plan(&logical).await.unwrap();
        let (config, _) = voxel_scan(physical.as_ref()).expect("a bare voxel scan");
        let groups = config.file_groups.clone();
        assert!(groups.len() >= 2, "{}", shown(&physical));
        let pcodec = VoxelPhysicalCodec::default();
        for (p, group) in groups.into_iter().enumerate() {
            // What Ballista's scheduler does before it ships a task: keep only the task's partitions.
            let restricted = FileScanConfigBuilder::from(config.clone())
                .with_file_groups(vec![group.clone()])
                .build();
            let task: Arc<dyn ExecutionPlan> = DataSourceExec::from_data_source(restricted);
            let bytes = physical_plan_to_bytes_with_extension_codec(task.clone(), &pcodec).unwrap();
            let decoded =
                physical_plan_from_bytes_with_extension_codec(&bytes, &ctx.task_ctx(), &pcodec)
                    .unwrap();
            let (_, source) = voxel_scan(decoded.as_ref()).unwrap();
            let mut names: Vec<&str> = source
                .spec()
                .files
                .iter()
                .map(|f| f.name.as_str())
                .collect();
            names.dedup();
            let mut want: Vec<String> = group
                .iter()
                .map(|pf| pf.object_meta.location.to_string())
                .collect();
            want.dedup();
            assert_eq!(
                names.len(),
                want.len(),
                "partition {p}: {names:?} vs {want:?}"
            );
            let one = |plan: Arc<dyn ExecutionPlan>, part: usize| {
                let ctx = ctx.task_ctx();
                async move {
                    let s = plan.execute(part, ctx).unwrap();
                    let batches: Vec<_> = futures::TryStreamExt::try_collect(s).await.unwrap();
                    pretty_format_batches(&batches).unwrap().to_string()
                }
            };
            // (The unrestricted plan cannot serve as the reference: run alone, one of its partitions steals the
            // files of its idle siblings.)
            let got = one(decoded, 0).await;
            assert_eq!(got, one(task, 0).await, "partition {p}");
            let rows = group.file_statistics(None).map(|s| s.num_rows);
            let lines = got.lines().count().saturating_sub(4);
            assert_eq!(rows, Some(Precision::Exact(lines)), "partition {p}");
        }
    }

    #[test]
    fn other_nodes_go_to_ballista() {
        let pcodec = VoxelPhysicalCodec::default();
        let e = pcodec
            .try_decode(
                b"\x08\x01",
                &[],
                &SessionContext::new().task_ctx(),
                &datafusion_proto::physical_plan::DefaultPhysicalProtoConverter {},
            )
            .unwrap_err();
        assert!(!e.to_string().contains("voxel"), "{e}");
        let lcodec = VoxelLogicalCodec::default();
        let schema = Arc::new(datafusion::arrow::datatypes::Schema::empty());
        let e = lcodec
            .try_decode_table_provider(
                b"xyz",
                &"t".into(),
                schema,
                &SessionContext::new().task_ctx(),
            )
            .unwrap_err();
        assert!(!e.to_string().contains("voxel"), "{e}");
    }

    #[tokio::test]
    async fn a_table_over_an_open_handle_cannot_be_sent() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.nii");
        image(&path, [2, 2, 2, 2], ByteOrder::Little, false);
        let header = crate::formats::read_header(&path).unwrap();
        let file = Arc::new(std::fs::File::open(&path).unwrap());
        let handle = crate::proxy::DataFile::Handle {
            file,
            name: "fd".into(),
        };
        let proxy =
            crate::proxy::ArrayProxy::new(handle, &header.layout, Default::default()).unwrap();
        let ctx = session_context(SessionConfig::new());
        crate::table::register_proxy(&ctx, "h", proxy, &Default::default()).unwrap();
        let logical = ctx
            .sql("SELECT sum(value) FROM h")
            .await
            .unwrap()
            .into_optimized_plan()
            .unwrap();
        let e = logical_plan_to_bytes_with_extension_codec(&logical, &VoxelLogicalCodec::default())
            .unwrap_err();
        assert!(e.to_string().contains("open file handle"), "{e}");
        // The same proxy over its path can be sent: the executors open the path.
        let proxy = crate::proxy::ArrayProxy::open(&path, Default::default()).unwrap();
        crate::table::register_proxy(&ctx, "p", proxy, &Default::default()).unwrap();
        round_trip(&ctx, "SELECT t, sum(value) FROM p GROUP BY t ORDER BY t").await;
    }

    #[tokio::test]
    async fn a_nifti_copy_survives_both_codecs_and_writes_the_same_file() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = tables(dir.path()).await;
        let out = dir.path().join("mean.nii.gz");
        let sql = format!(
            "COPY (SELECT i, j, k, avg(value) AS m FROM a WHERE i > 0 GROUP BY i, j, k) TO '{}' STORED AS NIFTI OPTIONS ('fill' '-1', 'dtype' 'float32')",
            out.display()
        );
        let logical = ctx.sql(&sql).await.unwrap().into_optimized_plan().unwrap();
        let lcodec = VoxelLogicalCodec::default();
        let bytes = logical_plan_to_bytes_with_extension_codec(&logical, &lcodec).unwrap();
        let back =
            logical_plan_from_bytes_with_extension_codec(&bytes, &ctx.task_ctx(), &lcodec).unwrap();
        // DataFusion's protobuf drops a COPY's options; the analyzer put them into the file format, which travels.
        let without_options = |plan: &LogicalPlan| {
            let text = plan.display_indent().to_string();
            let cut = text.find(" options: (").unwrap_or(0);
            let end = text.find('\n').unwrap_or(text.len());
            format!("{}{}", &text[..cut], &text[end..])
        };
        assert_eq!(without_options(&back), without_options(&logical));
        let LogicalPlan::Copy(copy) = &back else {
            panic!("not a COPY: {back}")
        };
        let factory =
            datafusion::datasource::file_format::file_type_to_format(&copy.file_type).unwrap();
        let nifti = factory.downcast_ref::<NiftiFormatFactory>().unwrap();
        assert_eq!(nifti.options().dtype.as_deref(), Some("float32"));
        assert_eq!(nifti.options().fill.as_deref(), Some("-1"));
        let physical = ctx.state().create_physical_plan(&back).await.unwrap();
        assert!(
            shown(&physical).contains("NiftiSink"),
            "{}",
            shown(&physical)
        );
        let pcodec = VoxelPhysicalCodec::default();
        let bytes = physical_plan_to_bytes_with_extension_codec(physical.clone(), &pcodec).unwrap();
        let decoded =
            physical_plan_from_bytes_with_extension_codec(&bytes, &ctx.task_ctx(), &pcodec)
                .unwrap();
        assert_eq!(shown(&decoded), shown(&physical));
        collect(physical, ctx.task_ctx()).await.unwrap();
        let first = std::fs::read(&out).unwrap();
        std::fs::remove_file(&out).unwrap();
        let batches = collect(decoded, ctx.task_ctx()).await.unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), first);
        let written = batches[0]
            .column(0)
            .as_any()
            .downcast_ref::<datafusion::arrow::array::UInt64Array>()
            .unwrap()
            .value(0);
        assert_eq!(written, 5 * 5 * 4);
        let proxy = crate::ArrayProxy::open(&out, Default::default()).unwrap();
        assert_eq!(proxy.shape(), &[6, 5, 4]);
    }
}
