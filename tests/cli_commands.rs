//! `voxelscan index` (the sidecars it builds are what later reads use; `--span`; its errors) and the error contract
//! (exit status 2, one stderr line starting `error:`) of `export`, `index`, `scheduler`, `executor` and
//! `sql --cluster` against a scheduler nobody listens for; and that `.ci/run` runs the README's test command.

mod common;

#[cfg(feature = "ballista")]
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Run, check_error_run, check_ok_run, voxelscan_bin};
use voxelscan::dtype::{DType, Scalar};
use voxelscan::synth::{random_i16_le, write_nifti1};

/// `voxelscan ARGS` in `dir`, with none of the `VOXELSCAN_*` knobs of the caller's environment, the user cache
/// directory inside `dir` (so nothing lands in `~/.cache`), `env` added; killed after `limit`.
fn run_in(dir: &Path, args: &[&str], env: &[(&str, &str)], limit: Duration) -> Run {
    let out_path = dir.join(".stdout");
    let err_path = dir.join(".stderr");
    let (Ok(out), Ok(err)) = (
        std::fs::File::create(&out_path),
        std::fs::File::create(&err_path),
    ) else {
        panic!("cannot create output files in {}", dir.display());
    };
    let mut cmd = Command::new(voxelscan_bin());
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("VOXELSCAN_") {
            cmd.env_remove(key);
        }
    }
    let mut child = cmd
        .args(args)
        .env("XDG_CACHE_HOME", dir.join(".cache"))
        .envs(env.iter().copied())
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .expect("start voxelscan");
    let started = Instant::now();
    let code = loop {
        if let Some(status) = child.try_wait().expect("wait for voxelscan") {
            break status.code();
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("voxelscan {args:?} still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Run {
        code,
        stdout: std::fs::read_to_string(&out_path).unwrap_or_default(),
        stderr: std::fs::read_to_string(&err_path).unwrap_or_default(),
    }
}

fn run(dir: &Path, args: &[&str]) -> Run {
    run_in(dir, args, &[], Duration::from_secs(120))
}

/// Exit 2 with one `error:` line that contains every one of `needles`.
fn assert_fails(run: &Run, needles: &[&str], what: &str) {
    if let Err(e) = check_error_run(run) {
        panic!("{what}: {e}");
    }
    for needle in needles {
        assert!(
            run.stderr.contains(needle),
            "{what}: '{needle}' not in {:?}",
            run.stderr
        );
    }
}

fn assert_ok(run: &Run, what: &str) {
    if let Err(e) = check_ok_run(run) {
        panic!("{what}: {e}");
    }
}

/// A gzip NIfTI of noise (incompressible: the compressed stream is about as long as the data), 2 MiB of int16.
fn noisy_gz(path: &Path) {
    let shape = [64, 64, 32, 8];
    let n: usize = shape.iter().product();
    let data = random_i16_le(n, 11, i16::MIN, i16::MAX);
    write_nifti1(
        path,
        &shape,
        DType::native(Scalar::I16),
        0.0,
        0.0,
        &data,
        true,
    )
    .expect("write");
}

/// `N seek points` from `voxelscan index`'s report line.
fn seek_points(stdout: &str) -> usize {
    stdout
        .split_whitespace()
        .collect::<Vec<_>>()
        .windows(3)
        .find(|w| w[1] == "seek" && w[2] == "points")
        .and_then(|w| w[0].parse().ok())
        .unwrap_or_else(|| panic!("no 'N seek points' in {stdout:?}"))
}

/// `bytes_fetched=N` of a `--stats` line.
fn bytes_fetched(stderr: &str) -> u64 {
    stderr
        .split_whitespace()
        .find_map(|w| w.strip_prefix("bytes_fetched="))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no bytes_fetched= in {stderr:?}"))
}

fn sidecar(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!(".{name}.vxidx"))
}

#[test]
fn index_builds_the_sidecar_later_reads_use() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    noisy_gz(&d.join("a.nii.gz"));
    std::fs::copy(d.join("a.nii.gz"), d.join("b.nii.gz")).expect("copy");
    let gz_size = std::fs::metadata(d.join("a.nii.gz")).expect("size").len();

    let r = run(d, &["index", "--span", "65536", "a.nii.gz"]);
    assert_ok(&r, "index a.nii.gz");
    assert!(
        r.stdout.contains("a.nii.gz") && r.stdout.contains(".a.nii.gz.vxidx"),
        "{}",
        r.stdout
    );
    // 2 MiB of data, a point at the first block boundary at least 64 KiB on: 16 to 33 points.
    let points = seek_points(&r.stdout);
    assert!((16..=34).contains(&points), "{points} seek points");
    let index = std::fs::read(sidecar(d, "a.nii.gz")).expect("the sidecar exists");

    // The last volume: through the index, about a span of compressed bytes; b (no index) decompresses from the
    // start, i.e. reads nearly the whole file.
    let indexed = run(
        d,
        &["slice", "a.nii.gz", "..., -1", "-o", "a.npy", "--stats"],
    );
    assert_ok(&indexed, "slice a.nii.gz");
    let plain = run_in(
        d,
        &["slice", "b.nii.gz", "..., -1", "-o", "b.npy", "--stats"],
        &[("VOXELSCAN_NO_INDEX", "1")],
        Duration::from_secs(120),
    );
    assert_ok(&plain, "slice b.nii.gz");
    let (with, without) = (bytes_fetched(&indexed.stderr), bytes_fetched(&plain.stderr));
    assert!(
        without > gz_size * 3 / 4,
        "without an index: {without} of {gz_size} bytes"
    );
    assert!(
        with < gz_size / 4,
        "with the index: {with} of {gz_size} bytes (without: {without})"
    );
    assert_eq!(
        std::fs::read(d.join("a.npy")).expect("a.npy"),
        std::fs::read(d.join("b.npy")).expect("b.npy"),
        "the same volume"
    );
    // The read used the index as it was: not rebuilt, not rewritten.
    assert_eq!(
        std::fs::read(sidecar(d, "a.nii.gz")).expect("sidecar"),
        index
    );
}

#[test]
fn index_span_sets_the_seek_point_distance() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    noisy_gz(&d.join("a.nii.gz"));
    let mut seen = Vec::new();
    for span in ["262144", "65536"] {
        let r = run(d, &["index", "--span", span, "a.nii.gz"]);
        assert_ok(&r, span);
        let size = std::fs::metadata(sidecar(d, "a.nii.gz"))
            .expect("sidecar")
            .len();
        seen.push((seek_points(&r.stdout), size));
    }
    let ((coarse, coarse_size), (fine, fine_size)) = (seen[0], seen[1]);
    // 2 MiB + header: points at block boundaries at least a span apart, so at most 9 at 256 KiB and about 4× as
    // many at 64 KiB; each keeps a 32 KiB window.
    assert!((4..=10).contains(&coarse), "{coarse} points at 256 KiB");
    assert!(
        fine >= 3 * coarse && fine <= 4 * coarse + 4,
        "{fine} points at 64 KiB, {coarse} at 256 KiB"
    );
    assert!(
        fine_size > 3 * coarse_size,
        "{fine_size} vs {coarse_size} bytes"
    );
    // An index finer than asked for is good enough: a coarser request keeps it (no rebuild to fewer points).
    let r = run(d, &["slice", "a.nii.gz", "0", "-o", "o.npy"]);
    assert_ok(&r, "slice");
    assert_eq!(
        std::fs::metadata(sidecar(d, "a.nii.gz"))
            .expect("sidecar")
            .len(),
        fine_size
    );
}

#[test]
fn index_errors_exit_2() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    noisy_gz(&d.join("a.nii.gz"));
    assert_fails(
        &run(d, &["index", "missing.nii.gz"]),
        &["missing.nii.gz"],
        "missing file",
    );
    // Named as gzip, but plain NIfTI bytes inside.
    let plain = d.join("plain.nii");
    write_nifti1(
        &plain,
        &[4, 4, 4],
        DType::native(Scalar::I16),
        0.0,
        0.0,
        &random_i16_le(64, 3, -9, 9),
        false,
    )
    .expect("write");
    std::fs::copy(&plain, d.join("fake.nii.gz")).expect("copy");
    assert_fails(
        &run(d, &["index", "fake.nii.gz"]),
        &["fake.nii.gz"],
        "not gzip inside",
    );
    // An uncompressed image has nothing to index: reported, not an error (the command's documented behaviour).
    let r = run(d, &["index", "plain.nii"]);
    assert_ok(&r, "uncompressed");
    assert!(r.stdout.contains("not gzip-compressed"), "{}", r.stdout);
    // Nowhere to write: the cache directory would have to be created below a regular file.
    std::fs::write(d.join("file"), b"x").expect("write");
    assert_fails(
        &run(d, &["index", "--cache-dir", "file/indexes", "a.nii.gz"]),
        &["a.nii.gz", "file/indexes"],
        "unwritable cache directory",
    );
    assert_fails(
        &run(d, &["index", "--span", "0", "a.nii.gz"]),
        &["--span"],
        "zero span",
    );
    assert_fails(
        &run_in(
            d,
            &["index", "a.nii.gz"],
            &[("VOXELSCAN_NO_INDEX", "1")],
            Duration::from_secs(60),
        ),
        &["VOXELSCAN_NO_INDEX"],
        "indexes disabled",
    );
    assert_fails(&run(d, &["index"]), &[], "no file");
}

/// A temporary directory holding `s.nii`, a small int16 image.
#[cfg(feature = "sql")]
fn small_image_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    write_nifti1(
        &dir.path().join("s.nii"),
        &[5, 4, 3],
        DType::native(Scalar::I16),
        0.0,
        0.0,
        &random_i16_le(60, 5, -9, 9),
        false,
    )
    .expect("write");
    dir
}

#[cfg(feature = "sql")]
#[test]
fn export_errors_exit_2() {
    let dir = small_image_dir();
    let d = dir.path();
    assert_fails(
        &run(d, &["export", "missing.nii", "o.parquet"]),
        &["missing.nii"],
        "missing location",
    );
    assert_fails(
        &run(d, &["export", "none-*.nii", "o.parquet"]),
        &["none-*.nii"],
        "glob matching nothing",
    );
    assert_fails(
        &run(
            d,
            &[
                "export",
                "s.nii",
                "o.parquet",
                "--sql",
                "SELEC value FROM t",
            ],
        ),
        &["SELEC"],
        "SQL syntax error",
    );
    assert_fails(
        &run(
            d,
            &[
                "export",
                "s.nii",
                "o.parquet",
                "--sql",
                "SELECT nosuch FROM t",
            ],
        ),
        &["nosuch"],
        "unknown column",
    );
    std::fs::write(d.join("file"), b"x").expect("write");
    let r = run(d, &["export", "s.nii", "file/o.parquet"]);
    assert_fails(&r, &[], "output below a regular file");
    assert!(
        r.stderr.contains("file/o.parquet") || r.stderr.contains("Not a directory"),
        "the error should say where or why: {}",
        r.stderr
    );
}

/// A 127.0.0.1 port nobody listens on (just released by the OS).
#[cfg(feature = "ballista")]
fn closed_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("address").port()
}

#[cfg(feature = "ballista")]
#[test]
fn sql_against_an_unreachable_scheduler_fails_quickly() {
    let dir = small_image_dir();
    let d = dir.path();
    let cluster = format!("df://127.0.0.1:{}", closed_port());
    let started = Instant::now();
    let r = run_in(
        d,
        &[
            "sql",
            "--cluster",
            &cluster,
            "-t",
            "s=s.nii",
            "SELECT count(*) FROM s",
        ],
        &[],
        Duration::from_secs(60),
    );
    assert_fails(&r, &["cannot reach", &cluster], "unreachable scheduler");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );
    assert!(r.stdout.is_empty(), "no answer expected: {}", r.stdout);
}

#[cfg(feature = "ballista")]
#[test]
fn scheduler_and_executor_bad_flags_exit_2() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let quick = |args: &[&str]| run_in(d, args, &[], Duration::from_secs(30));
    // (No host names: resolving one could leave the machine.)
    for bind in ["nonsense", "127.0.0.1", "127.0.0.1:99999", ":50050"] {
        assert_fails(
            &quick(&["scheduler", "--bind", bind]),
            &[bind],
            &format!("scheduler --bind {bind}"),
        );
        assert_fails(
            &quick(&["executor", "--scheduler", "127.0.0.1:50050", "--bind", bind]),
            &[],
            &format!("executor --bind {bind}"),
        );
    }
    for scheduler in ["nonsense", "127.0.0.1", "127.0.0.1:port", "127.0.0.1:70000"] {
        assert_fails(
            &quick(&["executor", "--scheduler", scheduler]),
            &[scheduler],
            &format!("executor --scheduler {scheduler}"),
        );
    }
    assert_fails(
        &quick(&["executor"]),
        &["--scheduler"],
        "executor without --scheduler",
    );
    assert_fails(
        &quick(&[
            "executor",
            "--scheduler",
            "127.0.0.1:50050",
            "--concurrency",
            "0",
        ]),
        &["--concurrency"],
        "zero task slots",
    );
    assert_fails(
        &quick(&["scheduler", "--executor-timeout", "soon"]),
        &["soon"],
        "non-numeric timeout",
    );
    // A port already taken: the scheduler cannot listen and says so, exit 2 (after its start-up banner line, which
    // it prints before binding).
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("address").to_string();
    let r = quick(&["scheduler", "--bind", &addr]);
    assert_eq!(r.code, Some(2), "scheduler on a taken port: {}", r.stderr);
    let last = r.stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("error: ") && last.contains(&addr),
        "scheduler on a taken port: {}",
        r.stderr
    );
}

/// `.ci/run` runs the README's test command, with `--no-fail-fast` (one failing binary must not hide the others from
/// the closing count), and clears the `VOXELSCAN_*` knobs before it.
#[test]
fn ci_runs_the_readme_test_command() {
    let root = common::repo_root();
    let ci = std::fs::read_to_string(root.join(".ci/run")).expect(".ci/run");
    let readme = std::fs::read_to_string(root.join("README.md")).expect("README.md");
    let line = ci
        .lines()
        .find_map(|l| l.strip_prefix("TEST_CMD=("))
        .and_then(|l| l.strip_suffix(')'))
        .expect(".ci/run sets TEST_CMD=(…)");
    assert!(line.contains("--no-fail-fast"), "TEST_CMD: {line}");
    assert!(line.contains("--features ballista"), "TEST_CMD: {line}");
    assert!(
        readme.contains(&format!("`{line}`")),
        "the README does not give .ci/run's test command `{line}`"
    );
    let clear = ci
        .find("unset \"$var\"")
        .expect(".ci/run unsets the VOXELSCAN_* variables");
    let run = ci
        .find("\"${TEST_CMD[@]}\"")
        .expect(".ci/run runs TEST_CMD");
    assert!(clear < run, "the variables are cleared after the tests ran");
    assert!(ci.contains("grep '^VOXELSCAN_'"), "{ci}");
}
