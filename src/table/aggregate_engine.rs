//! Dense aggregates on Ballista executors. Ballista 55's adaptive planner (on by default) plans each stage with its
//! own fixed list of physical optimizer rules, so the scheduler's [`DenseAggregateRule`] never sees the plans that
//! run. Each executor therefore applies the rule to every stage plan it is given, before running it: the partial
//! aggregates over the voxel scans (where the rows are) become dense; a final aggregate over a shuffle read has no
//! known key ranges and stays DataFusion's (it sees one row per group and partial task).

use std::sync::Arc;

use ballista_core::JobId;
use ballista_executor::execution_engine::{ExecutionEngine, QueryStageExecutor};
use datafusion::common::Result as DfResult;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::SessionConfig;

use super::aggregate_rule::DenseAggregateRule;
use super::join_aggregate::JoinAggregateRule;
use super::scan_aggregate::ScanAggregateRule;

/// An execution engine that puts dense aggregates into each stage plan, then hands it to `inner`.
pub struct DenseAggregateEngine {
    inner: Arc<dyn ExecutionEngine>,
}

impl DenseAggregateEngine {
    pub fn new(inner: Arc<dyn ExecutionEngine>) -> Self {
        DenseAggregateEngine { inner }
    }
}

impl ExecutionEngine for DenseAggregateEngine {
    fn create_query_stage_exec(
        &self,
        job_id: JobId,
        stage_id: usize,
        task_id: usize,
        partitions: Vec<usize>,
        plan: Arc<dyn ExecutionPlan>,
        work_dir: &str,
        config: &SessionConfig,
    ) -> DfResult<Arc<dyn QueryStageExecutor>> {
        let plan = DenseAggregateRule.optimize(plan, config.options())?;
        let plan = JoinAggregateRule.optimize(plan, config.options())?;
        let plan = ScanAggregateRule.optimize(plan, config.options())?;
        self.inner.create_query_stage_exec(
            job_id, stage_id, task_id, partitions, plan, work_dir, config,
        )
    }
}
