//! Real images from nibabel's test data (`tests/data/nibabel/`, see its README for attribution) and nibabel's
//! answers for them (`expected.json`, `expected/*.npy`): `voxelscan info` and `voxelscan slice` must reproduce
//! every answer, whatever the reading options. No Python needed.

mod common;

use std::path::PathBuf;

use common::{check_ok_run, compare_npy, read_npy, run_cli, shell_line};
use serde_json::Value;

/// expected.json rounds the affine to 6 decimals.
const AFFINE_TOL: f64 = 1e-6;

/// Reading options that must not change any answer.
const OPTION_SETS: &[&[&str]] = &[
    &[],
    &["--mmap", "off"],
    &["--mmap", "r", "--keep-file-open"],
];

fn data_dir() -> PathBuf {
    common::repo_root().join("tests/data/nibabel")
}

fn expected() -> serde_json::Map<String, Value> {
    let path = data_dir().join("expected.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    match serde_json::from_str(&text) {
        Ok(Value::Object(map)) => map,
        other => panic!("{}: not a JSON object: {other:?}", path.display()),
    }
}

#[test]
fn every_fixture_is_checked() {
    let exp = expected();
    assert_eq!(
        exp.len(),
        7,
        "expected.json lists the seven images of the README"
    );
    for name in exp.keys() {
        assert!(
            data_dir().join(name).is_file(),
            "{name} listed in expected.json but missing"
        );
    }
}

#[test]
fn info_matches_nibabel() {
    let mut problems = Vec::new();
    for (name, want) in expected() {
        for opts in OPTION_SETS {
            let mut args = vec!["info".to_string(), name.clone()];
            args.extend(opts.iter().map(|s| s.to_string()));
            let run = run_cli(&data_dir(), &args);
            if let Err(e) = check_ok_run(&run).and_then(|_| check_info(&want, &run.stdout)) {
                problems.push(format!("{name}: $ {}\n    {e}", shell_line(&args)));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "{} info mismatches:\n{}",
        problems.len(),
        problems.join("\n")
    );
}

fn check_info(want: &Value, stdout: &str) -> Result<(), String> {
    let got: Value = serde_json::from_str(stdout.trim())
        .map_err(|e| format!("stdout is not JSON ({e}): {stdout}"))?;
    let mut bad = Vec::new();
    for key in ["format", "shape", "dtype", "scaled_dtype", "offset"] {
        if got.get(key) != want.get(key) {
            bad.push(format!("{key}: expected {}, got {}", want[key], got[key]));
        }
    }
    for key in ["slope", "inter"] {
        let (w, g) = (want[key].as_f64(), got.get(key).and_then(Value::as_f64));
        if w != g {
            bad.push(format!(
                "{key}: expected {}, got {:?}",
                want[key],
                got.get(key)
            ));
        }
    }
    if got.get("order").and_then(Value::as_str) != Some("F") {
        bad.push(format!("order: expected \"F\", got {:?}", got.get("order")));
    }
    let affine_ok = match (want["affine"].as_array(), got.get("affine").and_then(Value::as_array)) {
        (Some(w), Some(g)) if w.len() == 4 && g.len() == 4 => w.iter().zip(g).all(|(wr, gr)| {
            match (wr.as_array(), gr.as_array()) {
                (Some(wr), Some(gr)) if wr.len() == 4 && gr.len() == 4 => wr.iter().zip(gr).all(|(a, b)| {
                    matches!((a.as_f64(), b.as_f64()), (Some(a), Some(b)) if (a - b).abs() <= AFFINE_TOL)
                }),
                _ => false,
            }
        }),
        _ => false,
    };
    if !affine_ok {
        bad.push(format!(
            "affine: expected {}, got {:?}",
            want["affine"],
            got.get("affine")
        ));
    }
    let zooms_ok = got.get("zooms").and_then(Value::as_array).is_some_and(|z| {
        z.len() == want["shape"].as_array().map_or(0, Vec::len) && z.iter().all(|v| v.is_number())
    });
    if !zooms_ok {
        bad.push(format!(
            "zooms: one number per axis expected, got {:?}",
            got.get("zooms")
        ));
    }
    if bad.is_empty() {
        Ok(())
    } else {
        Err(bad.join("; "))
    }
}

#[test]
fn slices_match_nibabel() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = tmp.path().join("out.npy");
    let mut problems = Vec::new();
    let mut checked = 0;
    for (name, want) in expected() {
        let slices = want["slices"].as_array().expect("slices");
        for s in slices {
            let spec = s["spec"].as_str().expect("spec");
            let npy = data_dir().join(s["npy"].as_str().expect("npy"));
            let exp = read_npy(&npy).unwrap_or_else(|e| panic!("{e}"));
            for opts in OPTION_SETS {
                let mut args: Vec<String> =
                    vec!["slice".into(), name.clone(), spec.into(), "-o".into()];
                args.push(out.to_string_lossy().into_owned());
                args.extend(opts.iter().map(|s| s.to_string()));
                let _ = std::fs::remove_file(&out);
                let run = run_cli(&data_dir(), &args);
                let verdict = check_ok_run(&run)
                    .and_then(|_| read_npy(&out))
                    .and_then(|got| compare_npy(&exp, &got));
                if let Err(e) = verdict {
                    let mut shown = args.clone();
                    shown[4] = "OUT.npy".into();
                    problems.push(format!(
                        "{name} [{spec}]: $ {}\n    {e}",
                        shell_line(&shown)
                    ));
                }
                checked += 1;
            }
        }
    }
    assert!(checked > 100, "only {checked} slice checks ran");
    assert!(
        problems.is_empty(),
        "{} slice mismatches:\n{}",
        problems.len(),
        problems.join("\n")
    );
}

/// The sum of the whole scaled array, as nibabel computed it (float64, numpy's pairwise sum: compare loosely).
#[test]
fn full_sums_match_nibabel() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = tmp.path().join("full.npy");
    let mut problems = Vec::new();
    for (name, want) in expected() {
        let args: Vec<String> = vec![
            "slice".into(),
            name.clone(),
            "".into(),
            "-o".into(),
            out.to_string_lossy().into_owned(),
        ];
        let run = run_cli(&data_dir(), &args);
        let verdict = check_ok_run(&run)
            .and_then(|_| read_npy(&out))
            .and_then(|got| {
                if got.shape.iter().map(|&d| d as u64).collect::<Vec<_>>()
                    != want["shape"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .filter_map(Value::as_u64)
                        .collect::<Vec<_>>()
                {
                    return Err(format!("full array has shape {:?}", got.shape));
                }
                let values = common::to_f64(&got).ok_or("not numeric")?;
                let sum: f64 = values.iter().sum();
                let expected_sum = want["full_sum"].as_f64().ok_or("no full_sum")?;
                if (sum - expected_sum).abs() <= 1e-9 * expected_sum.abs().max(1.0) {
                    Ok(())
                } else {
                    Err(format!("sum {sum} != nibabel's {expected_sum}"))
                }
            });
        if let Err(e) = verdict {
            problems.push(format!("{name}: {e}"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
