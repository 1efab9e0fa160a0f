//! BIDS entity columns against bids2table (`tests/py/bids_oracle.py` writes a tree with sessions, runs, echoes,
//! extra entities and stray non-BIDS images, and reports what bids2table parses from each name): the columns a
//! table over the tree gets, their values per file, and filters on them dropping files before any I/O.
#![cfg(feature = "sql")]

mod common;

use std::collections::HashMap;

use datafusion::arrow::array::{Array, RecordBatch};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::DataType;
use datafusion::prelude::SessionConfig;
use serde_json::Value;
use voxelscan::table::{register_voxels, session_context};

fn oracle(dir: &std::path::Path) -> Value {
    serde_json::from_str(&common::run_python("tests/py/bids_oracle.py", &[dir]))
        .expect("the oracle prints JSON")
}

use common::sql::run_measured as run;

/// Every cell as JSON: strings, integers, floats, null.
fn cells(batches: &[RecordBatch]) -> Vec<Vec<Value>> {
    let mut rows = Vec::new();
    for b in batches {
        for r in 0..b.num_rows() {
            let row = b
                .columns()
                .iter()
                .map(|c| {
                    if c.is_null(r) {
                        return Value::Null;
                    }
                    match c.data_type() {
                        DataType::Utf8 => {
                            let s = cast(c, &DataType::Utf8).unwrap();
                            let s = s
                                .as_any()
                                .downcast_ref::<datafusion::arrow::array::StringArray>();
                            Value::from(s.unwrap().value(r))
                        }
                        DataType::Int32 | DataType::Int64 => {
                            let v = cast(c, &DataType::Int64).unwrap();
                            let v = v
                                .as_any()
                                .downcast_ref::<datafusion::arrow::array::Int64Array>();
                            Value::from(v.unwrap().value(r))
                        }
                        _ => {
                            let v = cast(c, &DataType::Float64).unwrap();
                            let v = v
                                .as_any()
                                .downcast_ref::<datafusion::arrow::array::Float64Array>();
                            Value::from(v.unwrap().value(r))
                        }
                    }
                })
                .collect();
            rows.push(row);
        }
    }
    rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entity_columns_equal_bids2table() {
    let dir = tempfile::tempdir().unwrap();
    let want = oracle(dir.path());
    let ctx = session_context(SessionConfig::new().with_target_partitions(2));
    let glob = dir.path().join("ds/**/*.nii*");
    register_voxels(&ctx, "t", &glob.display().to_string(), &HashMap::new()).expect("register");
    let schema = ctx.table("t").await.unwrap().schema().as_arrow().clone();
    let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    let start = names
        .iter()
        .position(|n| *n == "file")
        .expect("a file column")
        + 1;
    let columns: Vec<&str> = want["columns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    // The entities sit between `file` and the per-file millimetre columns (`world_space`, `tr`).
    let end = names
        .iter()
        .position(|n| *n == "world_space")
        .expect("a world_space column");
    assert_eq!(&names[start..end], columns.as_slice(), "entity columns");
    for (name, ty) in [
        ("run", DataType::Int32),
        ("echo", DataType::Int32),
        ("sub", DataType::Utf8),
    ] {
        assert_eq!(
            schema.field_with_name(name).unwrap().data_type(),
            &ty,
            "{name}"
        );
    }
    let sql = format!(
        "SELECT file, {} FROM t WHERE i = 0 AND j = 0 AND k = 0 AND t = 0 ORDER BY file",
        columns.join(", ")
    );
    let (b, _, _) = run(&ctx, &sql).await;
    let rows = cells(&b);
    let files = want["files"].as_array().unwrap();
    assert_eq!(rows.len(), files.len());
    for f in files {
        let path = f["path"].as_str().unwrap();
        let row = rows
            .iter()
            .find(|r| r[0].as_str() == Some(path))
            .unwrap_or_else(|| panic!("{path} not in the table"));
        for (c, name) in columns.iter().enumerate() {
            let expected = f["entities"].get(*name).cloned().unwrap_or(Value::Null);
            assert_eq!(row[c + 1], expected, "{path}: {name}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entity_filters_drop_files_before_reading() {
    let dir = tempfile::tempdir().unwrap();
    let want = oracle(dir.path());
    let ctx = session_context(SessionConfig::new().with_target_partitions(2));
    let glob = dir.path().join("ds/**/*.nii*");
    register_voxels(&ctx, "t", &glob.display().to_string(), &HashMap::new()).expect("register");
    let files = want["files"].as_array().unwrap();
    type Check = fn(&Value) -> bool;
    let cases: [(&str, Check); 4] = [
        ("sub = '01' AND run = 1", |e| {
            e["sub"] == "01" && e["run"] == 1
        }),
        ("echo = 2", |e| e["echo"] == 2),
        ("datatype = 'func' AND task <> 'rest'", |e| {
            e["datatype"] == "func" && e["task"].as_str().is_some_and(|t| t != "rest")
        }),
        ("suffix IS NULL", |e| e.get("suffix").is_none()),
    ];
    for (pred, pick) in cases {
        let chosen: Vec<&Value> = files.iter().filter(|f| pick(&f["entities"])).collect();
        assert!(!chosen.is_empty(), "{pred} picks nothing");
        let sum: f64 = chosen.iter().map(|f| f["sum"].as_f64().unwrap()).sum();
        let bytes: u64 = chosen.iter().map(|f| f["nbytes"].as_u64().unwrap()).sum();
        let (b, read, plan) = run(
            &ctx,
            &format!("SELECT sum(CAST(value AS DOUBLE)), count(DISTINCT file) FROM t WHERE {pred}"),
        )
        .await;
        let got = cells(&b);
        assert_eq!(got[0][0].as_f64(), Some(sum), "{pred}");
        assert_eq!(got[0][1].as_i64(), Some(chosen.len() as i64), "{pred}");
        assert_eq!(read as u64, bytes, "{pred}: bytes read");
        assert!(!plan.contains("FilterExec"), "{pred}: {plan}");
    }
    // Names that are not BIDS: no entity columns, no error.
    let stray = dir.path().join("ds/**/[ns][oc][ta]*.nii");
    register_voxels(&ctx, "s", &stray.display().to_string(), &HashMap::new()).expect("register");
    let schema = ctx.table("s").await.unwrap().schema().as_arrow().clone();
    let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    assert_eq!(
        names,
        [
            "i",
            "j",
            "k",
            "t",
            "value",
            "x",
            "y",
            "z",
            "file",
            "world_space",
            "tr"
        ]
    );
}
