//! Images in object storage and on HTTP servers, against real servers started by the test (Garage for S3, nginx
//! for HTTP; `.ci/run` installs both): the fixtures' slices and generated images' SQL answers over `s3://` and
//! `http://` equal the local ones; selective reads fetch only what they need; faults give errors naming the URL.
#![cfg(feature = "sql")]

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::servers::{Garage, Nginx};
use common::{compare_npy, read_npy, run_cli};
use datafusion::arrow::util::pretty::pretty_format_batches;
use datafusion::prelude::{SessionConfig, SessionContext};
use voxelscan::dtype::{ByteOrder, DType, Scalar};
use voxelscan::io::remote::StoreOptions;
use voxelscan::proxy::{ArrayProxy, ProxyOptions};
use voxelscan::slicer::SliceSpec;
use voxelscan::synth::{random_i16_le, write_nifti1};
use voxelscan::table::{register_voxels, session_context};

fn fixtures_dir() -> PathBuf {
    common::repo_root().join("tests/data/nibabel")
}

fn fixture_names() -> Vec<String> {
    let text =
        std::fs::read_to_string(fixtures_dir().join("expected.json")).expect("expected.json");
    let map: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(&text).expect("expected.json is an object");
    map.keys().cloned().collect()
}

/// Store options reaching the test Garage (what `OPTIONS ('aws.…' …)` would give).
fn garage_options(g: &Garage) -> StoreOptions {
    let mut o = StoreOptions::default();
    for (k, v) in [
        ("aws.endpoint", g.endpoint()),
        ("aws.region", g.region().to_string()),
        ("aws.access_key_id", g.access_key_id().to_string()),
        ("aws.secret_access_key", g.secret_access_key().to_string()),
        ("aws.allow_http", "true".to_string()),
    ] {
        o.insert(k, &v).expect("valid option");
    }
    o
}

fn option_map(o: &StoreOptions) -> HashMap<String, String> {
    o.entries.clone().into_iter().collect()
}

/// Upload every fixture to Garage (under `prefix/`) and to the shared nginx; returns (s3 urls, http urls) by name.
fn publish_fixtures(prefix: &str) -> Vec<(String, String, String)> {
    let (g, n) = (Garage::shared(), Nginx::shared());
    let mut out = Vec::new();
    for name in fixture_names() {
        let bytes = std::fs::read(fixtures_dir().join(&name)).expect("fixture");
        let key = format!("{prefix}/{name}");
        g.put(&key, &bytes);
        n.put(&key, &bytes);
        out.push((name, g.url_of(&key), n.url_of(&key)));
    }
    out
}

const SPECS: &[&str] = &[
    "",
    "0",
    "-1",
    "..., 1",
    "1:4, ::2",
    "::-3, 2",
    "..., None, 0",
    ":, :, 3:1:-1",
];

fn slice_bytes(p: &ArrayProxy, spec: &str) -> Result<(String, Vec<usize>, Vec<u8>), String> {
    let spec = SliceSpec::parse(spec).map_err(|e| e.to_string())?;
    let a = p.slice(&spec).map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    a.write_npy(&mut buf).map_err(|e| e.to_string())?;
    Ok((a.dtype.numpy_str(), a.shape.clone(), buf))
}

#[test]
fn fixture_slices_over_s3_and_http_equal_local() {
    let g = Garage::shared();
    let store = garage_options(g);
    let mut checked = 0;
    for (name, s3, http) in publish_fixtures("fixtures") {
        let local = ArrayProxy::open(&fixtures_dir().join(&name), ProxyOptions::default())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        for url in [&s3, &http] {
            let remote = ArrayProxy::open_location(url, None, ProxyOptions::default(), &store)
                .unwrap_or_else(|e| panic!("{url}: {e}"));
            assert_eq!(remote.shape(), local.shape(), "{url}");
            assert_eq!(remote.dtype(), local.dtype(), "{url}");
            for spec in SPECS {
                let want = slice_bytes(&local, spec);
                let got = slice_bytes(&remote, spec);
                match (&want, &got) {
                    (Ok(w), Ok(g)) => assert!(w == g, "{url}[{spec}] differs from the local read"),
                    (Err(_), Err(_)) => {}
                    _ => panic!("{url}[{spec}]: local {want:?} vs remote {got:?}"),
                }
                checked += 1;
            }
        }
    }
    assert!(checked >= 7 * 2 * SPECS.len());
}

/// The CLI over URLs, configured only by the standard environment variables: `info` equals the local answer and
/// `slice` equals nibabel's recorded answers.
#[test]
fn cli_info_and_slice_over_urls_match_nibabel() {
    let g = Garage::shared();
    let published = publish_fixtures("cli");
    let text =
        std::fs::read_to_string(fixtures_dir().join("expected.json")).expect("expected.json");
    let expected: serde_json::Value = serde_json::from_str(&text).expect("json");
    let tmp = tempfile::tempdir().expect("tempdir");
    for (name, s3, http) in published {
        let local = run_cli(&fixtures_dir(), &["info".into(), name.clone()]);
        assert_eq!(local.code, Some(0), "{}", local.stderr);
        for url in [&s3, &http] {
            let info = run_env(&["info", url], &g.env());
            assert_eq!(info.code, Some(0), "{url}: {}", info.stderr);
            assert_eq!(info.stdout, local.stdout, "{url}");
            for s in expected[&name]["slices"]
                .as_array()
                .expect("slices")
                .iter()
                .take(4)
            {
                let spec = s["spec"].as_str().expect("spec");
                let out = tmp.path().join("out.npy");
                let out_s = out.display().to_string();
                let run = run_env(&["slice", url, spec, "-o", &out_s, "--stats"], &g.env());
                assert_eq!(run.code, Some(0), "{url}[{spec}]: {}", run.stderr);
                assert!(run.stderr.contains("stats: requests="), "{}", run.stderr);
                let want =
                    read_npy(&fixtures_dir().join(s["npy"].as_str().expect("npy"))).expect("npy");
                let got = read_npy(&out).expect("output npy");
                compare_npy(&want, &got).unwrap_or_else(|e| panic!("{url}[{spec}]: {e}"));
            }
        }
    }
}

struct Out {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl From<std::process::Output> for Out {
    fn from(out: std::process::Output) -> Out {
        Out {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

fn run_env(args: &[&str], env: &[(String, String)]) -> Out {
    let out = std::process::Command::new(common::voxelscan_bin())
        .args(args)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env("VOXELSCAN_REMOTE_RETRIES", "2")
        .output()
        .expect("run voxelscan");
    Out::from(out)
}

/// A 4-D int16 NIfTI with random values and scaling; `gz` compresses it.
fn make_image(dir: &Path, name: &str, shape: &[usize], seed: u64) -> (PathBuf, Vec<u8>) {
    let n: usize = shape.iter().product();
    let data = random_i16_le(n, seed, -3000, 3000);
    let path = dir.join(name);
    write_nifti1(
        &path,
        shape,
        DType::new(Scalar::I16, ByteOrder::Little),
        0.5,
        10.0,
        &data,
        name.ends_with(".gz"),
    )
    .expect("write image");
    let bytes = std::fs::read(&path).expect("read back");
    (path, bytes)
}

fn ctx() -> SessionContext {
    session_context(
        SessionConfig::new()
            .with_target_partitions(3)
            .with_batch_size(1000),
    )
}

async fn answer(ctx: &SessionContext, sql: &str) -> String {
    let batches = common::sql::collect_sql(ctx, sql).await;
    pretty_format_batches(&batches).expect("format").to_string()
}

const QUERIES: &[&str] = &[
    "SELECT count(*), sum(value), min(value), max(value) FROM img",
    "SELECT t, avg(value) AS m FROM img GROUP BY t ORDER BY t",
    "SELECT value FROM img WHERE i = 3 AND j = 4 AND k = 2 ORDER BY t",
    "SELECT k, count(*), sum(value) FROM img WHERE i BETWEEN 2 AND 9 AND j IN (1, 5, 7) AND t != 2 GROUP BY k ORDER BY k",
    "SELECT i, j, value FROM img WHERE k = 1 AND t = 3 AND value > 200 ORDER BY i, j LIMIT 20",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_over_s3_and_http_equals_local() {
    let g = Garage::shared();
    let n = Nginx::shared();
    let store = option_map(&garage_options(g));
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, seed) in [("sql_a.nii", 1), ("sql_b.nii.gz", 2)] {
        let (path, bytes) = make_image(dir.path(), name, &[12, 9, 4, 5], seed);
        g.put(&format!("sql/{name}"), &bytes);
        n.put(&format!("sql/{name}"), &bytes);
        let local = ctx();
        register_voxels(&local, "img", &path.display().to_string(), &HashMap::new())
            .expect("local");
        for url in [
            g.url_of(&format!("sql/{name}")),
            n.url_of(&format!("sql/{name}")),
        ] {
            let remote = ctx();
            register_voxels(&remote, "img", &url, &store).unwrap_or_else(|e| panic!("{url}: {e}"));
            for q in QUERIES {
                assert_eq!(
                    answer(&remote, q).await,
                    answer(&local, q).await,
                    "{url}: {q}"
                );
            }
        }
    }
}

/// A glob over a bucket prefix is one multi-file table; `CREATE EXTERNAL TABLE` takes the store options.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn glob_over_a_prefix_and_create_external_table() {
    let g = Garage::shared();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut local_sum = 0f64;
    for (k, name) in ["sub-01_bold.nii", "sub-02_bold.nii", "sub-03_T1w.nii"]
        .iter()
        .enumerate()
    {
        let (path, bytes) = make_image(dir.path(), name, &[5, 4, 3, 2], 10 + k as u64);
        g.put(&format!("bids/{name}"), &bytes);
        if name.contains("bold") {
            let c = ctx();
            register_voxels(&c, "x", &path.display().to_string(), &HashMap::new()).expect("local");
            let s = answer(&c, "SELECT sum(value) FROM x").await;
            local_sum += s
                .lines()
                .nth(3)
                .and_then(|l| l.trim_matches(['|', ' ']).parse::<f64>().ok())
                .expect("sum");
        }
    }
    let opts = garage_options(g);
    let options: Vec<String> = opts
        .entries
        .iter()
        .map(|(k, v)| format!("'{k}' '{v}'"))
        .collect();
    let c = ctx();
    let ddl = format!(
        "CREATE EXTERNAL TABLE runs STORED AS NIFTI LOCATION '{}' OPTIONS ({})",
        g.url_of("bids/sub-*_bold.nii"),
        options.join(", ")
    );
    c.sql(&ddl)
        .await
        .expect("create")
        .collect()
        .await
        .expect("create");
    let files = answer(
        &c,
        "SELECT file, count(*) FROM runs GROUP BY file ORDER BY file",
    )
    .await;
    assert!(
        files.contains("s3://")
            && files.contains("sub-01_bold.nii")
            && files.contains("sub-02_bold.nii"),
        "{files}"
    );
    assert!(!files.contains("T1w"), "{files}");
    let s = answer(&c, "SELECT sum(value) FROM runs").await;
    let got: f64 = s
        .lines()
        .nth(3)
        .and_then(|l| l.trim_matches(['|', ' ']).parse().ok())
        .expect("sum");
    assert_eq!(got, local_sum);
    let none = format!(
        "CREATE EXTERNAL TABLE nothing STORED AS NIFTI LOCATION '{}' OPTIONS ({})",
        g.url_of("bids/nomatch-*.nii"),
        options.join(", ")
    );
    let e = common::sql::error_text(&c, &none).await;
    assert!(e.contains("matches no image file"), "{e}");
}

/// Object keys are percent-decoded as URLs are (RFC 3986), not as form data: in `x+y%20z.nii` the `+` is a plus
/// sign and `%20` a space, for one object and for a glob (a key `x y z.nii` beside it is not matched).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plus_and_percent_escapes_in_object_keys() {
    let g = Garage::shared();
    let dir = tempfile::tempdir().expect("tempdir");
    let (plus, plus_bytes) = make_image(dir.path(), "plus.nii", &[4, 3, 2, 2], 31);
    let (_, space_bytes) = make_image(dir.path(), "space.nii", &[4, 3, 2, 3], 32);
    g.put("keys/x+y z.nii", &plus_bytes);
    g.put("keys/x y z.nii", &space_bytes);
    let opts = garage_options(g);
    let url = g.url_of("keys/x+y%20z.nii");
    let p = ArrayProxy::open_location(&url, None, ProxyOptions::default(), &opts)
        .unwrap_or_else(|e| panic!("{url}: {e}"));
    assert_eq!(p.shape(), &[4, 3, 2, 2]);
    let local = ArrayProxy::open(&plus, ProxyOptions::default()).expect("local");
    assert_eq!(slice_bytes(&p, ""), slice_bytes(&local, ""));
    let c = ctx();
    let glob = g.url_of("keys/x+y%20*.nii");
    register_voxels(&c, "k", &glob, &option_map(&opts)).unwrap_or_else(|e| panic!("{glob}: {e}"));
    let files = answer(&c, "SELECT file, count(*) AS n FROM k GROUP BY file").await;
    assert!(
        files.contains("x+y z.nii") && files.contains("| 48 "),
        "{files}"
    );
    assert!(!files.contains("x y z.nii"), "{files}");
}

/// Selective reads with the over-read bound of 25 % (`remote.overread`, the behaviour before the cost model): bytes
/// fetched ≤ 1.25 × the bytes the answer needs (plus the header GET), GETs ≤ planned segments — counted by nginx
/// itself.
#[test]
fn selective_reads_fetch_only_what_they_need() {
    let n = Nginx::shared();
    let dir = tempfile::tempdir().expect("tempdir");
    let shape = [64usize, 48, 20, 8];
    let (_, bytes) = make_image(dir.path(), "sel.nii", &shape, 7);
    n.put("sel/sel.nii", &bytes);
    let url = n.url_of("sel/sel.nii");
    let uri = "/sel/sel.nii";
    let cases: &[(&str, u64, u64)] = &[
        // (spec, bytes needed, planned segments)
        ("3, 4, 5, :", 8 * 2, 8),            // a voxel's time series
        (":, :, :, 6", 64 * 48 * 20 * 2, 1), // one volume
        ("10:20, 5:15, 2:5, 1", 10 * 10 * 3 * 2, 30), // an ROI box
        ("..., 3:5", 64 * 48 * 20 * 2 * 2, 1), // two volumes
        ("::2, 7, 4, 0", 32 * 2, 32),        // strided row
    ];
    let mut store = StoreOptions::default();
    store.insert("remote.overread", "0.25").expect("option");
    for &(spec, needed, segments) in cases {
        let before = n.log_of(uri).len();
        let p =
            ArrayProxy::open_location(&url, None, ProxyOptions::default(), &store).expect("open");
        let header_reqs = n.log_of(uri).len() - before;
        assert_eq!(header_reqs, 1, "{spec}: the header takes one GET");
        let header_bytes: u64 = n.log_of(uri)[before..].iter().map(|r| r.bytes).sum();
        assert!(
            header_bytes <= 352,
            "{spec}: header GET of {header_bytes} bytes"
        );
        slice_bytes(&p, spec).expect("slice");
        let reqs = &n.log_of(uri)[before + 1..];
        let fetched: u64 = reqs.iter().map(|r| r.bytes).sum();
        assert!(
            reqs.iter().all(|r| r.method == "GET" && r.status == 206),
            "{spec}: {reqs:?}"
        );
        assert!(
            reqs.len() as u64 <= segments,
            "{spec}: {} GETs for {segments} segments",
            reqs.len()
        );
        assert!(
            fetched as f64 <= 1.25 * needed as f64,
            "{spec}: fetched {fetched} for {needed}"
        );
        assert!(
            fetched >= needed,
            "{spec}: fetched {fetched} < needed {needed}"
        );
        let st = p.stats();
        assert_eq!(
            (st.bytes_read, st.requests),
            (fetched, reqs.len() as u64),
            "{spec}"
        );
    }
}

/// GETs and bytes of one slice of `url` (after its header GET), counted by nginx, and the slice's `.npy` bytes.
fn counted_slice(
    n: &Nginx,
    uri: &str,
    url: &str,
    store: &StoreOptions,
    spec: &str,
) -> (usize, u64, Vec<u8>) {
    let p = ArrayProxy::open_location(url, None, ProxyOptions::default(), store).expect("open");
    let before = n.log_of(uri).len();
    let (_, _, npy) = slice_bytes(&p, spec).expect("slice");
    let reqs = &n.log_of(uri)[before..];
    assert!(
        reqs.iter().all(|r| r.method == "GET" && r.status == 206),
        "{spec}: {reqs:?}"
    );
    (reqs.len(), reqs.iter().map(|r| r.bytes).sum(), npy)
}

/// Reads by cost (fixed S3-like model: 25 ms round trips, 85 MB/s): an ROI box of 128 rows of 32 bytes is one GET
/// where the 25 % over-read bound of before takes dozens, with the same answer; a voxel's time series stays one
/// GET per point (92 KB apart, not worth reading through); `remote.max_request` caps what a GET reads through.
#[test]
fn reads_by_cost_take_few_gets_for_the_same_answer() {
    let n = Nginx::shared();
    let dir = tempfile::tempdir().expect("tempdir");
    let shape = [48usize, 40, 24, 30];
    let (path, bytes) = make_image(dir.path(), "cost.nii", &shape, 11);
    n.put("cost/cost.nii", &bytes);
    let (url, uri) = (n.url_of("cost/cost.nii"), "/cost/cost.nii");
    let local = ArrayProxy::open(&path, ProxyOptions::default()).expect("local");
    let with = |pairs: &[(&str, &str)]| {
        let mut o = StoreOptions::default();
        for (k, v) in [("remote.rtt", "25"), ("remote.bandwidth", "85000000")]
            .iter()
            .chain(pairs)
        {
            o.insert(k, v).expect("option");
        }
        o
    };
    let by_cost = with(&[]);
    let old = with(&[("remote.overread", "0.25")]);
    let capped = with(&[("remote.max_request", "2048")]);
    let roi = "10:26, 8:24, 4:12, 20";
    let want = slice_bytes(&local, roi).expect("local slice").2;
    let (gets, fetched, got) = counted_slice(n, uri, &url, &by_cost, roi);
    assert_eq!(got, want, "{roi} by cost");
    // One GET from the box's first row to its last: 7 slices of 3 840 bytes and 16 rows of 96 bytes, minus the
    // 64 bytes after the last row.
    assert_eq!(
        (gets, fetched),
        (1, 7 * 48 * 40 * 2 + 16 * 96 - 64),
        "{roi} by cost"
    );
    let (old_gets, old_fetched, got) = counted_slice(n, uri, &url, &old, roi);
    assert_eq!(got, want, "{roi} with the over-read bound");
    assert!(
        old_gets >= 50 && old_fetched as f64 <= 1.25 * (128 * 32) as f64,
        "{old_gets} GETs, {old_fetched} bytes"
    );
    let (capped_gets, capped_fetched, got) = counted_slice(n, uri, &url, &capped, roi);
    assert_eq!(got, want, "{roi} with 2 KiB requests");
    // One GET per slice (16 rows: 1 504 bytes); slices 3.8 KB apart cannot join under the cap.
    assert_eq!(
        (capped_gets, capped_fetched),
        (8, 8 * (16 * 96 - 64)),
        "{roi} capped"
    );
    let series = "5, 6, 7, :";
    let want = slice_bytes(&local, series).expect("local slice").2;
    for store in [&by_cost, &old] {
        let (gets, fetched, got) = counted_slice(n, uri, &url, store, series);
        assert_eq!(got, want, "{series}");
        assert_eq!((gets, fetched), (30, 60), "{series}");
    }
    // One GET at a time on a slow link (a round trip worth far more than 92 KB): the whole series in one GET.
    let slow = with(&[("remote.rtt", "1000"), ("remote.concurrency", "1")]);
    let (gets, fetched, got) = counted_slice(n, uri, &url, &slow, series);
    assert_eq!(got, want, "{series} on a slow link");
    let stride = (48 * 40 * 24 * 2) as u64;
    assert_eq!(
        (gets, fetched),
        (1, 29 * stride + 2),
        "{series} on a slow link"
    );
}

/// Without `remote.rtt`, the model's round trip is learned from the store's responses: behind a proxy holding each
/// request 60 ms, the estimate moves from the 25 ms default to about 60 ms, and the next plan uses it.
#[test]
fn the_round_trip_is_learned_from_responses() {
    let n = Nginx::shared();
    let dir = tempfile::tempdir().expect("tempdir");
    let (_, bytes) = make_image(dir.path(), "learn.nii", &[16, 16, 8, 12], 5);
    n.put("learn/learn.nii", &bytes);
    let port = common::servers::latency_proxy(n.port(), std::time::Duration::from_millis(60));
    let url = format!("http://127.0.0.1:{port}/learn/learn.nii");
    let store = StoreOptions::default();
    let (object, _) = voxelscan::io::remote::RemoteObject::open(&url, &store, 352).expect("open");
    assert_eq!(
        object.link().estimate().rtt,
        voxelscan::io::remote::DEFAULT_RTT
    );
    let source = voxelscan::io::remote::RemoteSource::new(object.clone());
    let segments = [voxelscan::plan::Segment {
        offset: 352,
        len: 512,
    }];
    let mut out = vec![0u8; 512];
    for _ in 0..10 {
        voxelscan::io::ByteSource::read_segments(&source, &segments, &mut out).expect("read");
    }
    assert_eq!(out, bytes[352..864]);
    let rtt = object.link().estimate().rtt;
    assert!((0.055..0.5).contains(&rtt), "learned {rtt} s");
    let model = object
        .coalesce(4)
        .expect("policy")
        .cost
        .expect("a cost model");
    assert_eq!(model.rtt, rtt);
}

/// `EXPLAIN ANALYZE` shows the scan's requests and bytes; `--stats` prints the process totals.
#[test]
fn explain_analyze_and_stats_show_requests_and_bytes() {
    let n = Nginx::shared();
    let dir = tempfile::tempdir().expect("tempdir");
    let (_, bytes) = make_image(dir.path(), "ea.nii", &[16, 16, 8, 4], 3);
    n.put("ea/ea.nii", &bytes);
    let url = n.url_of("ea/ea.nii");
    let sql = "EXPLAIN ANALYZE SELECT avg(value) FROM v WHERE t = 2";
    let run = run_env(&["sql", "-t", &format!("v={url}"), "--stats", sql], &[]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert!(run.stdout.contains("requests="), "{}", run.stdout);
    assert!(run.stdout.contains("bytes_read="), "{}", run.stdout);
    let stats = run
        .stderr
        .lines()
        .find(|l| l.starts_with("stats: "))
        .expect("stats line");
    let fields: HashMap<&str, u64> = stats["stats: ".len()..]
        .split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k, v.parse().expect("number")))
        .collect();
    let log: Vec<_> = n.log_of("/ea/ea.nii");
    assert_eq!(fields["requests"], log.len() as u64, "{stats} vs {log:?}");
    assert_eq!(
        fields["bytes_fetched"],
        log.iter().map(|r| r.bytes).sum::<u64>(),
        "{stats}"
    );
}

// ---- faults ------------------------------------------------------------------------------------------------------

fn expect_error(r: Result<impl std::fmt::Debug, voxelscan::VoxelError>, url: &str, what: &str) {
    match r {
        Ok(v) => panic!("{url}: expected an error ({what}), got {v:?}"),
        Err(e) => {
            let text = e.to_string();
            assert!(text.contains(url), "error does not name {url}: {text}");
            assert!(
                text.to_lowercase().contains(what),
                "error does not say '{what}': {text}"
            );
        }
    }
}

#[test]
fn missing_object_and_denied_key_are_clear_errors() {
    let g = Garage::shared();
    let url = g.url_of("nowhere/missing.nii");
    let r = ArrayProxy::open_location(&url, None, ProxyOptions::default(), &garage_options(g));
    expect_error(r.map(|_| ()), &url, "not found");
    g.put(
        "denied/a.nii",
        &std::fs::read(fixtures_dir().join("anatomical.nii")).expect("fixture"),
    );
    let stranger = g.create_key("stranger");
    let mut o = garage_options(g);
    o.insert("aws.access_key_id", &stranger.id).expect("opt");
    o.insert("aws.secret_access_key", &stranger.secret)
        .expect("opt");
    let url = g.url_of("denied/a.nii");
    let r = ArrayProxy::open_location(&url, None, ProxyOptions::default(), &o);
    expect_error(r.map(|_| ()), &url, "denied");
    // The CLI says the same in one line, exit 2.
    let run = run_env(&["info", &url], &g.env_with(&stranger));
    assert_eq!(run.code, Some(2));
    assert!(
        run.stderr.starts_with("error: ") && run.stderr.contains(&url),
        "{}",
        run.stderr
    );
}

#[test]
fn truncated_and_replaced_objects_are_detected() {
    let g = Garage::shared();
    let n = Nginx::shared();
    let full = std::fs::read(fixtures_dir().join("functional.nii")).expect("fixture");
    let short = &full[..full.len() / 2];
    g.put("faults/short.nii", short);
    n.put("faults/short.nii", short);
    for url in [g.url_of("faults/short.nii"), n.url_of("faults/short.nii")] {
        let r = ArrayProxy::open_location(&url, None, ProxyOptions::default(), &garage_options(g));
        expect_error(r.map(|_| ()), &url, "truncated");
    }
    // Replaced after opening (same size, other bytes): reads are pinned to the ETag seen at open.
    g.put("faults/swap.nii", &full);
    let url = g.url_of("faults/swap.nii");
    let p = ArrayProxy::open_location(&url, None, ProxyOptions::default(), &garage_options(g))
        .expect("open");
    let mut other = full.clone();
    if let Some(b) = other.last_mut() {
        *b ^= 0xff;
    }
    g.put("faults/swap.nii", &other);
    let r = p.slice(&SliceSpec::parse("..., 0").expect("spec"));
    expect_error(r, &url, "changed");
}

/// A TCP proxy in front of nginx that stops nginx when it sees the `stop_at`-th request go by (before forwarding
/// it), then drops that connection: the server dies mid-query at a set point, however fast or slow the machine is.
struct StoppingProxy {
    port: u16,
}

impl StoppingProxy {
    fn start(nginx: Arc<Nginx>, stop_at: usize) -> StoppingProxy {
        use std::io::{Read, Write};
        use std::net::{Shutdown, TcpListener, TcpStream};
        use std::sync::atomic::{AtomicUsize, Ordering};
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let seen = Arc::new(AtomicUsize::new(0));
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(mut client) = client else { continue };
                let Ok(mut server) = TcpStream::connect(("127.0.0.1", nginx.port())) else {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                };
                let (Ok(mut client_r), Ok(mut server_w)) = (client.try_clone(), server.try_clone())
                else {
                    continue;
                };
                // Server to client: copied as is.
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut server, &mut client);
                    let _ = client.shutdown(Shutdown::Both);
                });
                // Client to server: requests counted (they have no bodies: every "GET " starts one).
                let (seen, nginx) = (Arc::clone(&seen), Arc::clone(&nginx));
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        let n = match client_r.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        let gets = buf[..n].windows(4).filter(|w| w == b"GET ").count();
                        if gets > 0 && seen.fetch_add(gets, Ordering::SeqCst) + gets >= stop_at {
                            nginx.stop();
                            break;
                        }
                        if server_w.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = server_w.shutdown(Shutdown::Both);
                    let _ = client_r.shutdown(Shutdown::Both);
                });
            }
        });
        StoppingProxy { port }
    }

    fn url_of(&self, name: &str) -> String {
        format!("http://127.0.0.1:{}/{name}", self.port)
    }
}

/// nginx killed while a query runs: the query fails with an error naming the URL, no partial answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_stopped_mid_query_fails_the_query() {
    let root = tempfile::tempdir().expect("tempdir");
    let nginx = Arc::new(Nginx::start(root.path()));
    let dir = tempfile::tempdir().expect("tempdir");
    // 96 MiB of int16 in one partition, one GET at a time: the scan needs about 50 sequential GETs; nginx is
    // stopped as the 5th data GET (after the header's) goes out.
    let (_, bytes) = make_image(dir.path(), "big.nii", &[128, 128, 64, 48], 5);
    nginx.put("big.nii", &bytes);
    let proxy = StoppingProxy::start(Arc::clone(&nginx), 6);
    let url = proxy.url_of("big.nii");
    let c = session_context(SessionConfig::new().with_target_partitions(1));
    let mut store = HashMap::new();
    store.insert("remote.retries".to_string(), "1".to_string());
    store.insert("remote.concurrency".to_string(), "1".to_string());
    register_voxels(&c, "big", &url, &store).expect("register");
    let df = c
        .sql("SELECT t, sum(value) FROM big GROUP BY t")
        .await
        .expect("plan");
    let r = df.collect().await;
    match r {
        Ok(b) => {
            // nginx was stopped with most of the scan's GETs still to come: an answer would be made up.
            let rows: usize = b.iter().map(|b| b.num_rows()).sum();
            let gets = nginx.log_of("/big.nii").len();
            panic!("query finished ({rows} rows) although nginx was stopped after {gets} GETs");
        }
        Err(e) => {
            let text = e.to_string();
            assert!(text.contains(&url), "error does not name the URL: {text}");
        }
    }
    // A fresh read after the server is gone: a clear error, quickly (connection refused is retried, then fails).
    let t0 = std::time::Instant::now();
    let r = ArrayProxy::open_location(
        &url,
        None,
        ProxyOptions::default(),
        &StoreOptions::default(),
    );
    expect_error(r.map(|_| ()), &url, "");
    assert!(t0.elapsed().as_secs() < 60);
}

// ---- transient failures ------------------------------------------------------------------------------------------

/// How [`FlakyProxy`] fails a request.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Fault {
    /// `503 Service Unavailable`, no body.
    Unavailable,
    /// The connection closed without any response.
    Dropped,
    /// nginx's response with only half of its body, then the connection closed.
    Cut,
}

/// An HTTP proxy on 127.0.0.1 in front of nginx, one request per connection (it asks nginx for
/// `Connection: close`, so the client opens a new connection for each request): request number `n` (from 0, in
/// arrival order) fails as `fault(n)` says, or is forwarded untouched. Counts requests and injected faults.
struct FlakyProxy {
    port: u16,
    requests: Arc<std::sync::atomic::AtomicUsize>,
    faults: Arc<std::sync::atomic::AtomicUsize>,
}

impl FlakyProxy {
    fn start(
        nginx_port: u16,
        fault: impl Fn(usize) -> Option<Fault> + Send + Sync + 'static,
    ) -> FlakyProxy {
        use std::net::TcpListener;
        use std::sync::atomic::AtomicUsize;
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let requests = Arc::new(AtomicUsize::new(0));
        let faults = Arc::new(AtomicUsize::new(0));
        let fault = Arc::new(fault);
        let (r, f) = (Arc::clone(&requests), Arc::clone(&faults));
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                let (r, f, fault) = (Arc::clone(&r), Arc::clone(&f), Arc::clone(&fault));
                std::thread::spawn(move || serve_one(client, nginx_port, &r, &f, &*fault));
            }
        });
        FlakyProxy {
            port,
            requests,
            faults,
        }
    }

    fn url_of(&self, name: &str) -> String {
        format!("http://127.0.0.1:{}/{name}", self.port)
    }

    fn requests(&self) -> usize {
        self.requests.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn faults(&self) -> usize {
        self.faults.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// One connection of [`FlakyProxy`]: read the request head, then fail it or forward it.
fn serve_one(
    mut client: std::net::TcpStream,
    nginx_port: u16,
    requests: &std::sync::atomic::AtomicUsize,
    faults: &std::sync::atomic::AtomicUsize,
    fault: &(dyn Fn(usize) -> Option<Fault> + Send + Sync),
) {
    use std::io::{Read, Write};
    use std::net::{Shutdown, TcpStream};
    use std::sync::atomic::Ordering;
    let Some(head) = read_head(&mut client) else {
        return; // a connection opened and closed without a request (a pool probe)
    };
    let n = requests.fetch_add(1, Ordering::SeqCst);
    let chosen = fault(n);
    if chosen.is_some() {
        faults.fetch_add(1, Ordering::SeqCst);
    }
    match chosen {
        Some(Fault::Unavailable) => {
            let _ = client.write_all(
                b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
        }
        Some(Fault::Dropped) => {}
        None | Some(Fault::Cut) => {
            let Ok(mut server) = TcpStream::connect(("127.0.0.1", nginx_port)) else {
                let _ = client.shutdown(Shutdown::Both);
                return;
            };
            let mut response = Vec::new();
            if server.write_all(&close_after(&head)).is_err()
                || server.read_to_end(&mut response).is_err()
            {
                let _ = client.shutdown(Shutdown::Both);
                return;
            }
            if chosen == Some(Fault::Cut) {
                let body_at = find(&response, b"\r\n\r\n").map_or(response.len(), |p| p + 4);
                response.truncate(body_at + (response.len() - body_at) / 2);
            }
            let _ = client.write_all(&response);
        }
    }
    let _ = client.shutdown(Shutdown::Both);
}

/// The request head (up to the blank line); requests here are GET/HEAD without bodies.
fn read_head(client: &mut std::net::TcpStream) -> Option<Vec<u8>> {
    use std::io::Read;
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while find(&head, b"\r\n\r\n").is_none() {
        match client.read(&mut buf) {
            Ok(0) | Err(_) => return None,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
        if head.len() > 64 * 1024 {
            return None;
        }
    }
    Some(head)
}

/// The head with any `Connection:` header replaced by `Connection: close`.
fn close_after(head: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(head);
    let mut out = String::new();
    for line in text.split("\r\n").filter(|l| !l.is_empty()) {
        if !line.to_ascii_lowercase().starts_with("connection:") {
            out.push_str(line);
            out.push_str("\r\n");
        }
    }
    out.push_str("Connection: close\r\n\r\n");
    out.into_bytes()
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// `voxelscan ARGS` with `VOXELSCAN_REMOTE_RETRIES=retries` (and one GET at a time, so the order of requests, and
/// with it which ones fail, is the same on every run).
fn run_with_retries(args: &[&str], retries: u32) -> Out {
    let out = std::process::Command::new(common::voxelscan_bin())
        .args(args)
        .env("VOXELSCAN_REMOTE_RETRIES", retries.to_string())
        .env("VOXELSCAN_REMOTE_CONCURRENCY", "1")
        .output()
        .expect("run voxelscan");
    Out::from(out)
}

/// Requests that fail once each (the header's first GET, then data GETs) are retried, and the answer is the exact
/// bytes of the local read — for a plain and a gzip object, for every kind of fault.
#[test]
fn transient_failures_are_retried_and_give_the_exact_bytes() {
    let n = Nginx::shared();
    let dir = tempfile::tempdir().expect("tempdir");
    for name in ["flaky_a.nii", "flaky_b.nii.gz"] {
        let (path, bytes) = make_image(dir.path(), name, &[12, 9, 4, 5], 21);
        n.put(&format!("flaky/{name}"), &bytes);
        let local_out = dir.path().join("local.npy");
        for spec in ["", "..., 3", "2:7, ::-2, 1"] {
            let local = run_with_retries(
                &[
                    "slice",
                    &path.display().to_string(),
                    spec,
                    "-o",
                    &local_out.display().to_string(),
                ],
                0,
            );
            assert_eq!(
                local.code,
                Some(0),
                "local {name}[{spec}]: {}",
                local.stderr
            );
            for fault in [Fault::Unavailable, Fault::Dropped, Fault::Cut] {
                // Requests 0 and 2 fail: the first try of the header and the first try of a data read.
                let proxy =
                    FlakyProxy::start(n.port(), move |k| (k == 0 || k == 2).then_some(fault));
                let url = proxy.url_of(&format!("flaky/{name}"));
                let out = dir.path().join("remote.npy");
                let run =
                    run_with_retries(&["slice", &url, spec, "-o", &out.display().to_string()], 3);
                assert_eq!(
                    run.code,
                    Some(0),
                    "{url}[{spec}] with {fault:?}: {}",
                    run.stderr
                );
                assert_eq!(
                    proxy.faults(),
                    2,
                    "{url}[{spec}] {fault:?}: {} requests",
                    proxy.requests()
                );
                let want = read_npy(&local_out).expect("local npy");
                let got = read_npy(&out).expect("remote npy");
                if let Err(e) = compare_npy(&want, &got) {
                    panic!("{url}[{spec}] with {fault:?}: {e}");
                }
            }
        }
    }
}

/// A server that keeps failing: `remote.retries` retries (so retries + 1 tries of the first request), then one
/// `error:` line naming the URL.
#[test]
fn persistent_failures_end_in_an_error_after_the_retries() {
    let n = Nginx::shared();
    let dir = tempfile::tempdir().expect("tempdir");
    let (_, bytes) = make_image(dir.path(), "down.nii", &[6, 5, 4, 3], 22);
    n.put("flaky/down.nii", &bytes);
    for fault in [Fault::Unavailable, Fault::Dropped] {
        for retries in [0, 2] {
            let proxy = FlakyProxy::start(n.port(), move |_| Some(fault));
            let url = proxy.url_of("flaky/down.nii");
            let run = run_with_retries(&["info", &url], retries);
            assert_eq!(run.code, Some(2), "{fault:?}: {}", run.stderr);
            let lines: Vec<&str> = run.stderr.lines().collect();
            assert_eq!(lines.len(), 1, "one line: {}", run.stderr);
            assert!(
                lines[0].starts_with("error: ") && lines[0].contains(&url),
                "{}",
                run.stderr
            );
            assert_eq!(
                proxy.requests(),
                retries as usize + 1,
                "{fault:?} with remote.retries={retries}: {}",
                run.stderr
            );
        }
    }
}
