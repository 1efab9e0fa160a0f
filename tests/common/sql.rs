//! Running SQL in the tests: collecting a query's batches, and the bytes its scans read; EXPLAIN text; answers as
//! cells compared with float rounding allowed.
use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::util::display::array_value_to_string;
use datafusion::common::ScalarValue;
use datafusion::physical_plan::{ExecutionPlan, collect, displayable};
use datafusion::prelude::SessionContext;

/// All batches of `sql`, panicking with the query and the error on failure.
pub async fn collect_sql(ctx: &SessionContext, sql: &str) -> Vec<RecordBatch> {
    ctx.sql(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .collect()
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// Run `sql`; its batches, the bytes its scans read and the indented physical plan.
pub async fn run_measured(ctx: &SessionContext, sql: &str) -> (Vec<RecordBatch>, usize, String) {
    let df = ctx.sql(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    let plan = df
        .create_physical_plan()
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    let batches = collect(Arc::clone(&plan), ctx.task_ctx())
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    let text = displayable(plan.as_ref()).indent(true).to_string();
    (batches, scan_bytes(&plan), text)
}

/// The `bytes_read` metric summed over the plan's nodes.
pub fn scan_bytes(plan: &Arc<dyn ExecutionPlan>) -> usize {
    let own = plan
        .metrics()
        .and_then(|m| m.sum_by_name("bytes_read"))
        .map_or(0, |v| v.as_usize());
    own + plan.children().into_iter().map(scan_bytes).sum::<usize>()
}

/// The error `sql` fails with, at planning or at execution; empty when it succeeds.
pub async fn error_text(ctx: &SessionContext, sql: &str) -> String {
    match ctx.sql(sql).await {
        Ok(df) => df
            .collect()
            .await
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default(),
        Err(e) => e.to_string(),
    }
}

/// The physical plan of `sql`, not yet executed.
pub async fn physical_plan(ctx: &SessionContext, sql: &str) -> Arc<dyn ExecutionPlan> {
    ctx.sql(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .create_physical_plan()
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// The text of `EXPLAIN sql`, a line per cell.
pub async fn explain(ctx: &SessionContext, sql: &str) -> String {
    let mut text = String::new();
    for b in collect_sql(ctx, &format!("EXPLAIN {sql}")).await {
        for r in 0..b.num_rows() {
            for c in 0..b.num_columns() {
                text.push_str(&array_value_to_string(b.column(c), r).unwrap());
                text.push('\n');
            }
        }
    }
    text
}

/// An answer: its column names and types (so they are compared too), then its rows of cells.
pub type Cells = (Vec<String>, Vec<Vec<ScalarValue>>);

pub fn cells(batches: &[RecordBatch]) -> Cells {
    let header = batches.first().map_or_else(Vec::new, |b| {
        b.schema()
            .fields()
            .iter()
            .map(|f| format!("{} {}", f.name(), f.data_type()))
            .collect()
    });
    let mut rows = Vec::new();
    for b in batches {
        for r in 0..b.num_rows() {
            rows.push(
                (0..b.num_columns())
                    .map(|c| ScalarValue::try_from_array(b.column(c), r).unwrap())
                    .collect(),
            );
        }
    }
    (header, rows)
}

/// A float cell as f64 (`None` for other types and NULLs).
pub fn as_f64(v: &ScalarValue) -> Option<f64> {
    match v {
        ScalarValue::Float64(Some(x)) => Some(*x),
        ScalarValue::Float32(Some(x)) => Some(f64::from(*x)),
        _ => None,
    }
}

/// Equal cells: NaN equals NaN, floats within 1e-9 relative (partial states merge in the order partitions
/// arrive), everything else exactly.
pub fn same_cell(a: &ScalarValue, b: &ScalarValue) -> bool {
    match (as_f64(a), as_f64(b)) {
        (Some(x), Some(y)) => {
            (x.is_nan() && y.is_nan())
                || x == y
                || (x - y).abs() <= 1e-9 * x.abs().max(y.abs()).max(1.0)
        }
        _ => a == b,
    }
}

/// Asserts two answers to `sql` agree ([`same_cell`] for every cell); `what` names the pair in the message.
pub fn assert_same(sql: &str, what: &str, a: &Cells, b: &Cells) {
    assert_eq!(a.0, b.0, "{sql}: columns differ ({what})");
    assert_eq!(a.1.len(), b.1.len(), "{sql}: row counts differ ({what})");
    for (r, (x, y)) in a.1.iter().zip(&b.1).enumerate() {
        assert!(
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| same_cell(p, q)),
            "{sql}: row {r} differs ({what}): {x:?} vs {y:?}"
        );
    }
}

/// A temporary directory named after its test.
pub fn tempdir(name: &str) -> tempfile::TempDir {
    tempfile::Builder::new().prefix(name).tempdir().unwrap()
}
