//! Ballista benchmark: the 96×96×60×300 int16 benchmark image replicated as 16 objects in the S3-compatible
//! server of the tests (Garage), and `SELECT file, t, avg(value) FROM runs GROUP BY file, t` run through
//! `voxelscan sql --cluster` on one executor, then on two, each a `voxelscan executor --concurrency 1` process
//! pinned to a core of its own (`taskset`). Prints the best and median wall time of each configuration, the rows,
//! the bytes the executors fetched from Garage and the speed-up ratio; both configurations must give the same
//! answer.
//!
//! `cargo bench --features ballista --bench ballista` (only measures under `cargo bench`; Cargo builds the
//! `voxelscan` binary next to the bench with the same profile and features; needs Garage, as the tests do).
//!
//! * Every configuration gets a fresh in-process scheduler (the real Ballista scheduler of `voxelscan scheduler`)
//!   and its own executor processes; the timed runs start once the scheduler lists all of them, after one
//!   untimed warm-up run.
//! * The time is the whole `voxelscan sql --cluster` client: start, table registration (a listing and one header
//!   read per object, straight from Garage) and the query with `target_partitions = 16`.
//! * The executors reach Garage through a byte-counting TCP proxy in this process (response bytes, HTTP headers
//!   included). The proxy, Garage, the scheduler and the client are not pinned and share the cores with the
//!   executors. `VOXELSCAN_BENCH_DIRECT=1` lets the executors talk to Garage directly (no byte counts).
//! * The 16 objects are one upload and 15 server-side copies (Garage stores the blocks once).
//! * `VOXELSCAN_BENCH_FILES=N` replicates N objects instead of 16, `VOXELSCAN_BENCH_SMALL=1` uses a 48×48×30×40
//!   image (a quick end-to-end check, e.g. in the debug profile).

#[path = "../tests/common/servers.rs"]
#[allow(dead_code)]
mod servers;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use object_store::ObjectStoreExt;
use object_store::path::Path as ObjectPath;
use servers::Garage;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use voxelscan::cluster::{SchedulerHandle, SchedulerSettings, scheduler_config, start_scheduler};
use voxelscan::synth;

const SHAPE: [usize; 4] = [96, 96, 60, 300];
const SMALL_SHAPE: [usize; 4] = [48, 48, 30, 40];
const FILES: usize = 16;
/// Key prefix of the replicated objects in the Garage bucket.
const PREFIX: &str = "ballista-bench";
const QUERY: &str = "SELECT file, t, avg(value) FROM runs GROUP BY file, t";
const PARTITIONS: usize = 16;
/// Timed runs per configuration (after one warm-up run).
const RUNS: usize = 3;

fn env_flag(name: &str) -> bool {
    std::env::var_os(name).is_some_and(|v| !v.is_empty() && v != "0")
}

fn env_count(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Err(_) => default,
        Ok(v) => match v.parse::<usize>() {
            Ok(n) if n > 0 => n,
            _ => {
                eprintln!("{name}={v}: expected a positive whole number");
                std::process::exit(2);
            }
        },
    }
}

/// The benchmark image (random int16 values in 0..4096, unscaled), generated once per shape.
fn image(dir: &Path, shape: [usize; 4]) -> PathBuf {
    let [x, y, z, t] = shape;
    let path = dir.join(format!("bold-{x}x{y}x{z}x{t}.nii"));
    synth::bench_image(&path, &shape, 1.0, 0.0, false).expect("write bench image");
    path
}

/// `files` objects `PREFIX/run-NN.nii` with the bytes of `image`: one upload, then server-side copies.
fn replicate(garage: &Garage, image: &Path, files: usize) {
    let key = |n: usize| format!("{PREFIX}/run-{n:02}.nii");
    let bytes = std::fs::read(image).expect("read bench image");
    garage.put(&key(1), &bytes);
    drop(bytes);
    let store = garage.store();
    let from = ObjectPath::from(key(1));
    for n in 2..=files {
        let to = ObjectPath::from(key(n));
        if let Err(e) = servers::block_on(store.copy(&from, &to)) {
            panic!("copying {from} to {to} in Garage: {e}");
        }
    }
}

/// Forward 127.0.0.1:(returned port) to `target`, counting the bytes the target sends back.
fn counting_proxy(rt: &tokio::runtime::Runtime, target: u16, received: Arc<AtomicU64>) -> u16 {
    let listener = rt
        .block_on(TcpListener::bind("127.0.0.1:0"))
        .expect("bind proxy");
    let port = listener.local_addr().expect("proxy address").port();
    rt.spawn(async move {
        loop {
            let Ok((client, _)) = listener.accept().await else {
                continue;
            };
            let received = Arc::clone(&received);
            tokio::spawn(async move {
                if let Ok(server) = TcpStream::connect(("127.0.0.1", target)).await {
                    pipe(client, server, received).await;
                }
            });
        }
    });
    port
}

async fn pipe(client: TcpStream, server: TcpStream, received: Arc<AtomicU64>) {
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let up = async move {
        let _ = tokio::io::copy(&mut cr, &mut sw).await;
        let _ = sw.shutdown().await;
    };
    let down = async move {
        let mut buf = vec![0u8; 256 << 10];
        while let Ok(n) = sr.read(&mut buf).await {
            if n == 0 {
                break;
            }
            received.fetch_add(n as u64, Ordering::Relaxed);
            if cw.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
        let _ = cw.shutdown().await;
    };
    tokio::join!(up, down);
}

/// Whether executors can be pinned to cores 0 and 1 with `taskset`.
fn can_pin() -> bool {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let taskset = Command::new("taskset")
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !taskset {
        println!("note: `taskset` not found: executors are not pinned to cores");
    } else if cores < 2 {
        println!("note: {cores} core available: executors are not pinned to cores");
    }
    taskset && cores >= 2
}

/// A port nothing listens on right now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// A `voxelscan executor` process; killed when dropped.
struct Executor {
    child: Child,
    log: PathBuf,
}

impl Drop for Executor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_executor(
    n: usize,
    scheduler_port: u16,
    pin: bool,
    env: &[(String, String)],
    work: &Path,
) -> Executor {
    let work_dir = work.join(format!("executor-{n}"));
    std::fs::create_dir_all(&work_dir).expect("executor work dir");
    let log = work.join(format!("executor-{n}.log"));
    let bin = env!("CARGO_BIN_EXE_voxelscan");
    let mut cmd = if pin {
        let mut c = Command::new("taskset");
        c.args(["-c", &n.to_string(), bin]);
        c
    } else {
        Command::new(bin)
    };
    let child = cmd
        .args(["executor", "--scheduler"])
        .arg(format!("127.0.0.1:{scheduler_port}"))
        .args(["--bind", &format!("127.0.0.1:{}", free_port())])
        .args(["--grpc-port", &free_port().to_string()])
        .args(["--concurrency", "1"])
        .arg("--work-dir")
        .arg(&work_dir)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("executor log"))
        .spawn()
        .expect("start voxelscan executor");
    Executor { child, log }
}

async fn wait_for_executors(scheduler: &SchedulerHandle, want: usize, executors: &[Executor]) {
    let start = Instant::now();
    loop {
        let ids = scheduler.executors().await.expect("list executors");
        if ids.len() == want {
            return;
        }
        if start.elapsed() > Duration::from_secs(120) {
            let logs: Vec<String> = executors
                .iter()
                .map(|e| std::fs::read_to_string(&e.log).unwrap_or_default())
                .collect();
            panic!(
                "executors registered: {ids:?}, expected {want}\n{}",
                logs.join("\n---\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One `voxelscan sql --cluster` run.
struct Run {
    time: Duration,
    /// Response bytes from Garage to the executors during the run.
    bytes: u64,
    /// The CSV rows, sorted (the query has no ORDER BY).
    rows: Vec<String>,
}

fn run_query(url: &str, location: &str, env: &[(String, String)], received: &AtomicU64) -> Run {
    let statements = format!("SET datafusion.execution.target_partitions = {PARTITIONS}; {QUERY}");
    let before = received.load(Ordering::Relaxed);
    let start = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_voxelscan"))
        .args(["sql", "--cluster", url, "--format", "csv", "-t"])
        .arg(format!("runs={location}"))
        .arg(&statements)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .output()
        .expect("run voxelscan sql");
    let time = start.elapsed();
    let bytes = received.load(Ordering::Relaxed) - before;
    assert!(
        out.status.success(),
        "voxelscan sql --cluster failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let mut rows: Vec<String> = text.lines().skip(1).map(str::to_string).collect();
    rows.sort();
    Run { time, bytes, rows }
}

struct Measured {
    executors: usize,
    best: Duration,
    median: Duration,
    bytes: u64,
    rows: Vec<String>,
}

/// What every configuration shares.
struct Setup {
    rt: tokio::runtime::Runtime,
    pin: bool,
    work: PathBuf,
    /// The table's location: the objects' prefix.
    location: String,
    executor_env: Vec<(String, String)>,
    client_env: Vec<(String, String)>,
    /// Bytes Garage sent the executors through the counting proxy.
    received: Arc<AtomicU64>,
}

/// A fresh scheduler and `executors` executor processes; a warm-up run, then [`RUNS`] timed runs.
fn measure(setup: &Setup, executors: usize) -> Measured {
    let Setup {
        rt,
        pin,
        work,
        location,
        executor_env,
        client_env,
        received,
    } = setup;
    let scheduler = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind scheduler");
        let addr = listener.local_addr().expect("scheduler address");
        start_scheduler(listener, scheduler_config(&SchedulerSettings::new(addr)))
            .await
            .expect("start scheduler")
    });
    let port = scheduler.addr().port();
    let url = format!("df://127.0.0.1:{port}");
    let work = work.join(format!("{executors}-executors"));
    let procs: Vec<Executor> = (0..executors)
        .map(|n| spawn_executor(n, port, *pin, executor_env, &work))
        .collect();
    rt.block_on(wait_for_executors(&scheduler, executors, &procs));

    let warm = run_query(&url, location, client_env, received);
    let mut times = Vec::with_capacity(RUNS);
    let mut last = warm;
    for _ in 0..RUNS {
        let run = run_query(&url, location, client_env, received);
        assert_eq!(
            run.rows, last.rows,
            "runs on {executors} executor(s) differ"
        );
        times.push(run.time);
        last = run;
    }
    drop(procs);
    scheduler.abort();
    times.sort();
    Measured {
        executors,
        best: times[0],
        median: times[times.len() / 2],
        bytes: last.bytes,
        rows: last.rows,
    }
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let files = env_count("VOXELSCAN_BENCH_FILES", FILES);
    let shape = if env_flag("VOXELSCAN_BENCH_SMALL") {
        SMALL_SHAPE
    } else {
        SHAPE
    };
    let direct = env_flag("VOXELSCAN_BENCH_DIRECT");
    let base = Path::new(env!("CARGO_TARGET_TMPDIR")).join("bench-ballista");
    std::fs::create_dir_all(&base).expect("bench dir");
    let image = image(&base, shape);
    let size = std::fs::metadata(&image).map_or(0, |m| m.len());

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let garage = Garage::shared();
    eprintln!(
        "uploading {} MB and copying it {} times",
        size / 1_000_000,
        files - 1
    );
    replicate(garage, &image, files);
    let location = garage.url_of(&format!("{PREFIX}/"));

    let client_env = garage.env();
    let received = Arc::new(AtomicU64::new(0));
    let executor_env = if direct {
        garage.env()
    } else {
        let garage_port: u16 = garage
            .endpoint()
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("Garage endpoint port");
        let proxy = counting_proxy(&rt, garage_port, Arc::clone(&received));
        let mut env = garage.env();
        for (k, v) in &mut env {
            if k == "AWS_ENDPOINT" {
                *v = format!("http://127.0.0.1:{proxy}");
            }
        }
        env
    };
    let pin = can_pin();
    let work = tempfile::tempdir_in(&base).expect("work dir");

    println!(
        "{files} objects of {shape:?} int16 ({:.0} MB each) in Garage; {QUERY}",
        size as f64 / 1e6
    );
    println!(
        "executors: voxelscan executor --concurrency 1{}; {RUNS} runs after a warm-up, target_partitions = {PARTITIONS}",
        if pin {
            ", pinned with taskset -c 0 / -c 1"
        } else {
            ", not pinned"
        }
    );
    let setup = Setup {
        rt,
        pin,
        work: work.path().to_path_buf(),
        location,
        executor_env,
        client_env,
        received,
    };
    let results: Vec<Measured> = [1, 2].into_iter().map(|n| measure(&setup, n)).collect();
    assert_eq!(
        results[0].rows, results[1].rows,
        "one and two executors gave different answers"
    );
    assert_eq!(results[0].rows.len(), files * shape[3]);

    println!(
        "{:>9} {:>9} {:>9} {:>7} {:>15} {:>9}",
        "executors", "best s", "median s", "rows", "bytes fetched", "speed-up"
    );
    let base_time = results[0].best.as_secs_f64();
    for m in &results {
        println!(
            "{:>9} {:>9.3} {:>9.3} {:>7} {:>15} {:>8.2}x",
            m.executors,
            m.best.as_secs_f64(),
            m.median.as_secs_f64(),
            m.rows.len(),
            if direct {
                "-".to_string()
            } else {
                m.bytes.to_string()
            },
            base_time / m.best.as_secs_f64()
        );
    }
    println!(
        "(wall time of `voxelscan sql --cluster`: client start, table registration and the query; bytes: Garage's \
         responses to the executors, HTTP headers included; identical answers on 1 and 2 executors)"
    );
}
