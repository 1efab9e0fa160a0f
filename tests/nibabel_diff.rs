//! Differential test against nibabel itself: `tests/py/gen_cases.py` writes randomized images of every format ×
//! dtype × byte order × scaling × order × shape (with odd offsets, gzip variants and bad files) together with
//! nibabel's answers; every case is run through the built `voxelscan` binary and compared bit for bit.
//!
//! Needs a Python with nibabel and numpy: `$VOXELSCAN_PYTHON`, default `.venv/bin/python` in the repository
//! (`.ci/run` makes it). Without it the test fails — it never passes silently.
//!
//! Knobs: `VOXELSCAN_DIFF_SEEDS=1,2,3` (which seeds), `VOXELSCAN_DIFF_COUNT=N` (images per seed),
//! `VOXELSCAN_DIFF_KEEP=DIR` (generate into DIR and keep it, e.g. to reproduce a failure by hand). A seed list or
//! count that does not parse fails the test, and every generated image must have given cases that all ran.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use common::{
    check_error_run, check_ok_run, compare_info, compare_npy, read_npy, run_cli, shell_line,
};
use serde_json::Value;

/// Seeds 0..=2 with 160 images each walk through all of the generator's ~470 format/dtype/order combinations.
const DEFAULT_SEEDS: &[u64] = &[0, 1, 2];
const DEFAULT_COUNT: usize = 160;
/// Affine and zooms are derived from float32 header fields: agree to this relative tolerance.
const GEOMETRY_TOL: f64 = 1e-6;

struct Case {
    seed: u64,
    dir: PathBuf,
    id: String,
    desc: String,
    args: Vec<String>,
    expect: Value,
}

#[test]
fn voxelscan_matches_nibabel() {
    let python = python_with_nibabel();
    let seeds = env_seeds().unwrap_or_else(|e| panic!("{e}"));
    let count = env_count().unwrap_or_else(|e| panic!("{e}"));
    let (root, guard) = work_dir();
    let started = Instant::now();
    let mut cases = Vec::new();
    for &seed in &seeds {
        let dir = root.join(format!("seed{seed}"));
        generate(&python, seed, count, &dir);
        let seed_cases = load_manifest(seed, &dir);
        check_every_image_has_cases(seed, count, &seed_cases).unwrap_or_else(|e| panic!("{e}"));
        cases.extend(seed_cases);
    }
    let generated = started.elapsed();
    let out_dir = root.join("out");
    std::fs::create_dir_all(&out_dir).expect("create output dir");
    let (ran, failures) = run_all(&cases, &out_dir);
    // A case skipped by the runner would pass unseen: every generated case must have run.
    assert_eq!(ran, cases.len(), "only {ran} of {} cases ran", cases.len());
    eprintln!(
        "nibabel_diff: {} cases from seeds {seeds:?} × {count} images: generated in {:.1?}, ran in {:.1?}",
        cases.len(),
        generated,
        started.elapsed() - generated
    );
    if !failures.is_empty() {
        let mut report = format!(
            "{} of {} cases differ from nibabel (files kept in {}; regenerate one seed with \
             `{} tests/py/gen_cases.py --seed N --count {count} --out DIR`, then run the shown command in DIR/seedN):\n",
            failures.len(),
            cases.len(),
            root.display(),
            python.display()
        );
        for f in &failures {
            report.push_str(f);
            report.push('\n');
        }
        if std::env::var_os("VOXELSCAN_DIFF_KEEP").is_none() {
            std::mem::forget(guard); // keep the files for reproduction
        }
        panic!("{report}");
    }
}

/// The Python to generate cases with; fails the test (with the fix) when it or nibabel is missing.
fn python_with_nibabel() -> PathBuf {
    let python = match std::env::var_os("VOXELSCAN_PYTHON") {
        Some(p) => PathBuf::from(p),
        None => common::repo_root().join(".venv/bin/python"),
    };
    let how = "run `.ci/run` once, or set it up by hand: `python3 -m venv .venv && .venv/bin/pip install -r \
               tests/py/requirements.txt` (or point VOXELSCAN_PYTHON at a Python that has nibabel and numpy)";
    let probe = Command::new(&python)
        .args(["-c", "import nibabel, numpy"])
        .output();
    match probe {
        Ok(out) if out.status.success() => python,
        Ok(out) => panic!(
            "the nibabel differential test needs nibabel and numpy in {}: {}\n{how}",
            python.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(e) => panic!(
            "the nibabel differential test needs a Python at {} ({e})\n{how}",
            python.display()
        ),
    }
}

/// `VOXELSCAN_DIFF_SEEDS`, else the default seeds. Anything that is not a comma-separated list of at least one
/// whole number is an error: a typo must not run zero cases and pass.
fn env_seeds() -> Result<Vec<u64>, String> {
    match std::env::var("VOXELSCAN_DIFF_SEEDS") {
        Ok(text) => parse_seeds(&text),
        Err(std::env::VarError::NotPresent) => Ok(DEFAULT_SEEDS.to_vec()),
        Err(e) => Err(format!("VOXELSCAN_DIFF_SEEDS: {e}")),
    }
}

fn parse_seeds(text: &str) -> Result<Vec<u64>, String> {
    let seeds = text
        .split(',')
        .map(|s| {
            s.trim().parse::<u64>().map_err(|_| {
                format!(
                    "VOXELSCAN_DIFF_SEEDS='{text}': '{}' is not a seed (a whole number)",
                    s.trim()
                )
            })
        })
        .collect::<Result<Vec<u64>, String>>()?;
    if seeds.is_empty() {
        return Err(format!("VOXELSCAN_DIFF_SEEDS='{text}' names no seed"));
    }
    Ok(seeds)
}

/// `VOXELSCAN_DIFF_COUNT` (images per seed, at least 1), else the default.
fn env_count() -> Result<usize, String> {
    match std::env::var("VOXELSCAN_DIFF_COUNT") {
        Ok(text) => match text.trim().parse::<usize>() {
            Ok(n) if n >= 1 => Ok(n),
            _ => Err(format!(
                "VOXELSCAN_DIFF_COUNT='{text}' is not a number of images (1 or more)"
            )),
        },
        Err(std::env::VarError::NotPresent) => Ok(DEFAULT_COUNT),
        Err(e) => Err(format!("VOXELSCAN_DIFF_COUNT: {e}")),
    }
}

/// The minimum that must have been generated for one seed: cases from each of its `count` images (ids
/// `SEED/NNN/…`; the fixed bad-file cases are `SEED/bad/…`).
fn check_every_image_has_cases(seed: u64, count: usize, cases: &[Case]) -> Result<(), String> {
    let mut images = std::collections::BTreeSet::new();
    for case in cases {
        let mut parts = case.id.split('/');
        if let (Some(s), Some(image)) = (parts.next(), parts.next())
            && s == seed.to_string()
            && image.parse::<usize>().is_ok()
        {
            images.insert(image.to_string());
        }
    }
    if images.len() < count {
        return Err(format!(
            "seed {seed}: cases for {} of {count} generated images ({} cases in all)",
            images.len(),
            cases.len()
        ));
    }
    Ok(())
}

/// Where the cases go: `$VOXELSCAN_DIFF_KEEP`, or a temporary directory (the guard deletes it).
fn work_dir() -> (PathBuf, Option<tempfile::TempDir>) {
    if let Some(dir) = std::env::var_os("VOXELSCAN_DIFF_KEEP") {
        let dir = PathBuf::from(dir);
        std::fs::create_dir_all(&dir).expect("create VOXELSCAN_DIFF_KEEP");
        return (dir, None);
    }
    let tmp = tempfile::Builder::new()
        .prefix("voxelscan-nibabel-diff")
        .tempdir()
        .expect("tempdir");
    (tmp.path().to_path_buf(), Some(tmp))
}

fn generate(python: &Path, seed: u64, count: usize, dir: &Path) {
    let script = common::repo_root().join("tests/py/gen_cases.py");
    let out = Command::new(python)
        .arg(&script)
        .args([
            "--seed",
            &seed.to_string(),
            "--count",
            &count.to_string(),
            "--out",
        ])
        .arg(dir)
        .output()
        .expect("run gen_cases.py");
    assert!(
        out.status.success(),
        "gen_cases.py failed for seed {seed}:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn load_manifest(seed: u64, dir: &Path) -> Vec<Case> {
    let text = std::fs::read_to_string(dir.join("manifest.json")).expect("read manifest.json");
    let manifest: Value = serde_json::from_str(&text).expect("manifest.json is JSON");
    let cases = manifest["cases"].as_array().expect("manifest has cases");
    assert!(
        !cases.is_empty(),
        "seed {seed}: the generator produced no cases"
    );
    cases
        .iter()
        .map(|c| Case {
            seed,
            dir: dir.to_path_buf(),
            id: c["id"].as_str().unwrap_or("?").to_string(),
            desc: c["desc"].as_str().unwrap_or("").to_string(),
            args: c["args"]
                .as_array()
                .expect("case args")
                .iter()
                .map(|a| a.as_str().expect("string arg").to_string())
                .collect(),
            expect: c["expect"].clone(),
        })
        .collect()
}

/// Run every case on a few threads; return how many ran and one compact report per failure, in case order.
fn run_all(cases: &[Case], out_dir: &Path) -> (usize, Vec<String>) {
    let next = AtomicUsize::new(0);
    let ran = AtomicUsize::new(0);
    let failures = Mutex::new(Vec::new());
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .clamp(2, 4);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(case) = cases.get(i) else { break };
                    if let Err(why) = run_case(case, &out_dir.join(format!("{i}.npy"))) {
                        failures.lock().unwrap().push((i, report(case, &why)));
                    }
                    ran.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
    });
    let mut failures = failures.into_inner().unwrap();
    failures.sort();
    (
        ran.into_inner(),
        failures.into_iter().map(|(_, r)| r).collect(),
    )
}

fn report(case: &Case, why: &str) -> String {
    let shown: Vec<String> = case
        .args
        .iter()
        .map(|a| {
            if a == "{out}" {
                "OUT.npy".into()
            } else {
                a.clone()
            }
        })
        .collect();
    format!(
        "[seed {} case {}] {}\n    $ {}\n    {}",
        case.seed,
        case.id,
        case.desc,
        shell_line(&shown),
        why
    )
}

fn run_case(case: &Case, out: &Path) -> Result<(), String> {
    let _ = std::fs::remove_file(out);
    let args: Vec<String> = case
        .args
        .iter()
        .map(|a| {
            if a == "{out}" {
                out.to_string_lossy().into_owned()
            } else {
                a.clone()
            }
        })
        .collect();
    let run = run_cli(&case.dir, &args);
    match case.expect["kind"].as_str() {
        Some("error") => check_error_run(&run).map_err(|e| {
            format!(
                "{e} (expected an error: {})",
                case.expect["why"].as_str().unwrap_or("?")
            )
        }),
        Some("info") => {
            check_ok_run(&run)?;
            compare_info(&case.expect["info"], &run.stdout, GEOMETRY_TOL)
        }
        Some("npy") => {
            check_ok_run(&run)?;
            let rel = case.expect["npy"]
                .as_str()
                .ok_or("manifest: npy path missing")?;
            let expected = read_npy(&case.dir.join(rel))?;
            let actual = read_npy(out)?;
            compare_npy(&expected, &actual)
        }
        other => Err(format!("manifest: unknown expectation {other:?}")),
    }
}

#[test]
fn seed_lists_are_parsed_strictly() {
    assert_eq!(parse_seeds("4"), Ok(vec![4]));
    assert_eq!(parse_seeds(" 1, 2 ,3"), Ok(vec![1, 2, 3]));
    for bad in ["", "one", "1,,2", "1;2", "-1", "1, x"] {
        let err = parse_seeds(bad).expect_err(bad);
        assert!(err.contains("VOXELSCAN_DIFF_SEEDS"), "{bad}: {err}");
    }
}
