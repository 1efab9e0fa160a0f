//! Where the grid comes from when `like` is not given: the physical input plan must read exactly one voxel
//! table of one file, and every coordinate column of its output must be that table's column of the same name,
//! unchanged (passed through projections, filters, sorts, repartitions, limits, window aggregates, and aggregates
//! as a plain GROUP BY key). Anything else (a computed `i`, a join, two tables) needs `like`.

use std::sync::Arc;

use datafusion::datasource::physical_plan::FileScanConfig;
use datafusion::datasource::source::DataSourceExec;
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::aggregates::AggregateExec;
use datafusion::physical_plan::filter::FilterExec;
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::windows::{BoundedWindowAggExec, WindowAggExec};

use crate::io::remote::StoreOptions;
use crate::table::VoxelSource;

/// The voxel scan of a plan node, if it is one.
fn voxel_source(plan: &dyn ExecutionPlan) -> Option<&VoxelSource> {
    let exec = plan.downcast_ref::<DataSourceExec>()?;
    let config = exec.data_source().downcast_ref::<FileScanConfig>()?;
    config.file_source().downcast_ref::<VoxelSource>()
}

fn collect_scans<'a>(plan: &'a Arc<dyn ExecutionPlan>, out: &mut Vec<&'a VoxelSource>) {
    if let Some(s) = voxel_source(plan.as_ref()) {
        out.push(s);
    }
    for c in plan.children() {
        collect_scans(c, out);
    }
}

/// The name of the scan column that output column `idx` of `plan` is, unchanged; `None` if it is computed.
fn origin(plan: &Arc<dyn ExecutionPlan>, idx: usize) -> Option<String> {
    if let Some(p) = plan.downcast_ref::<ProjectionExec>() {
        let col = p.expr().get(idx)?.expr.downcast_ref::<Column>()?;
        return origin(p.input(), col.index());
    }
    if let Some(f) = plan.downcast_ref::<FilterExec>() {
        let at = match f.projection() {
            Some(p) => *p.get(idx)?,
            None => idx,
        };
        return origin(f.input(), at);
    }
    let aggregate = plan.downcast_ref::<AggregateExec>().or_else(|| {
        plan.downcast_ref::<crate::table::aggregate::DenseAggregateExec>()
            .map(|d| d.aggregate())
    });
    if let Some(a) = aggregate {
        let groups = a.group_expr();
        if groups.has_grouping_set() {
            return None;
        }
        let col = groups.expr().get(idx)?.0.downcast_ref::<Column>()?;
        return origin(a.input(), col.index());
    }
    if voxel_source(plan.as_ref()).is_some() {
        return Some(plan.schema().fields().get(idx)?.name().clone());
    }
    // Nodes that pass their single input's columns through as they are (sorts, repartitions, limits, …), and
    // window aggregates, which append their results after them.
    let window = plan.is::<BoundedWindowAggExec>() || plan.is::<WindowAggExec>();
    match plan.children().as_slice() {
        [child] if child.schema().fields() == plan.schema().fields() => origin(child, idx),
        [child] if window && idx < child.schema().fields().len() => origin(child, idx),
        _ => None,
    }
}

/// The location (and store options) of the one image `plan` reads with its coordinates unchanged, or why not.
pub fn grid_source(
    plan: &Arc<dyn ExecutionPlan>,
    coords: &[String],
) -> Result<(String, StoreOptions), String> {
    let mut scans = Vec::new();
    collect_scans(plan, &mut scans);
    let scan = match scans.as_slice() {
        [one] => *one,
        [] => return Err("the query reads no voxel table".into()),
        more => return Err(format!("the query reads {} voxel tables", more.len())),
    };
    let schema = plan.schema();
    for name in coords {
        let idx = schema
            .index_of(name)
            .map_err(|_| format!("there is no column {name}"))?;
        if origin(plan, idx).as_deref() != Some(name.as_str()) {
            return Err(format!(
                "column {name} is not the table's {name} passed through unchanged"
            ));
        }
    }
    let spec = scan.spec();
    match spec.files.as_slice() {
        [file] => Ok((file.data.display(), file.store.clone())),
        files => Err(format!(
            "table {} has {} files (the grid must come from one)",
            spec.table,
            files.len()
        )),
    }
}
