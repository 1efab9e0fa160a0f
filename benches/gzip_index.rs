//! Issue 6 benchmark: reads from a 96×96×60×300 int16 `.nii.gz` of random data through the seek-point index, cold
//! (no index), warm (index cached) and repeated (decompressed data cached in memory), against full decompression
//! with each candidate decompressor crate and against nibabel in the same run, without and with indexed_gzip
//! (`benches/nibabel_gzip.py`, through `.venv/bin/python` or `VOXELSCAN_PYTHON`); a full indexed read on 1 vs 2
//! threads (with the CPU time the process actually got); and the time/size trade-off of denser seek points.
//! Prints a summary with ratios at the end.
//!
//! `cargo bench --bench gzip_index` (the image is generated once into `target/bench-data/`).

mod common;

use common::{data_dir, ensure_bold_gz};

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, SamplingMode};

use std::hint::black_box;
use voxelscan::io::ByteSource;
use voxelscan::io::gzip::cache::DEFAULT_BUDGET;
use voxelscan::io::gzip::cursor::GzCursor;
use voxelscan::io::gzip::index::{GzIndex, ReadAt};
use voxelscan::io::gzip::{DataCache, GzipOptions, GzipSource, SpanCache};
use voxelscan::plan::Segment;

const SHAPE: [usize; 4] = [96, 96, 60, 300];
const HEADER: u64 = 352;
const VOLUME: u64 = 96 * 96 * 60 * 2;

/// The cases, in this order, under the names `benches/nibabel_gzip.py` reports them by.
const NIB_NAMES: [&str; 4] = ["time series", "volume 150", "last volume", "full read"];

fn cases() -> Vec<(&'static str, Vec<Segment>)> {
    let voxel = HEADER + 2 * (48 + 96 * 48 + 96 * 96 * 30);
    let series = (0..300)
        .map(|t| Segment {
            offset: voxel + t * VOLUME,
            len: 2,
        })
        .collect();
    vec![
        ("time series [48, 48, 30, :]", series),
        (
            "volume [..., 150]",
            vec![Segment {
                offset: HEADER + 150 * VOLUME,
                len: VOLUME,
            }],
        ),
        (
            "last volume [..., 299]",
            vec![Segment {
                offset: HEADER + 299 * VOLUME,
                len: VOLUME,
            }],
        ),
        (
            "full read",
            vec![Segment {
                offset: HEADER,
                len: 300 * VOLUME,
            }],
        ),
    ]
}

thread_local! {
    /// One output buffer reused by every read (its pages faulted in once), as with the decompressors' `out`: the
    /// cost of a fresh buffer is the caller's and the same whatever reads into it.
    static OUT: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

fn read(src: &GzipSource, segs: &[Segment]) {
    let n: usize = segs.iter().map(|s| s.len as usize).sum();
    OUT.with_borrow_mut(|out| {
        if out.len() < n {
            out.resize(n, 0);
        }
        src.read_segments(segs, &mut out[..n]).expect("read");
        black_box(&out[..n]);
    });
}

struct Bench {
    c: Criterion,
    results: Vec<(String, Duration)>,
}

impl Bench {
    /// Time `f` with criterion (10 samples) and keep the median for the summary.
    fn run(&mut self, group: &str, name: &str, mut f: impl FnMut()) -> Duration {
        let mut samples: Vec<Duration> = Vec::new();
        let mut g = self.c.benchmark_group(group);
        g.sampling_mode(SamplingMode::Flat)
            .sample_size(10)
            .warm_up_time(Duration::from_millis(200));
        g.measurement_time(Duration::from_secs(1));
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let t = Instant::now();
                for _ in 0..iters {
                    f();
                }
                let el = t.elapsed();
                samples.push(el / iters.max(1) as u32);
                el
            })
        });
        g.finish();
        samples.sort();
        let m = samples.get(samples.len() / 2).copied().unwrap_or_default();
        self.results.push((format!("{group} / {name}"), m));
        m
    }
}

/// User + system CPU time of this process so far (all threads).
fn cpu_time() -> Duration {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: `usage` is a valid, writable rusage; getrusage fills it and only reads RUSAGE_SELF.
    let ok = unsafe { libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) } == 0;
    if !ok {
        return Duration::ZERO;
    }
    // SAFETY: zero-initialised and, on success, filled by getrusage: every field is an integer.
    let u = unsafe { usage.assume_init() };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(u.ru_utime) + tv(u.ru_stime)
}

/// Run `f`, returning its value and the CPU cores the process got meanwhile (CPU time / wall time).
fn with_cores<T>(f: impl FnOnce() -> T) -> (T, f64) {
    let (c0, t0) = (cpu_time(), Instant::now());
    let v = f();
    let cores = (cpu_time() - c0).as_secs_f64() / t0.elapsed().as_secs_f64().max(1e-9);
    (v, cores)
}

/// nibabel's times for the four cases (seconds), without and with indexed_gzip, and the versions used.
struct Nibabel {
    plain: [f64; 4],
    igz: Option<[f64; 4]>,
    versions: String,
}

fn nibabel_times(path: &Path) -> Option<Nibabel> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let py = std::env::var_os("VOXELSCAN_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join(".venv/bin/python"));
    if !py.exists() {
        eprintln!("(no {}: nibabel columns skipped)", py.display());
        return None;
    }
    eprintln!("timing nibabel with {}", py.display());
    let out = Command::new(&py)
        .arg(root.join("benches/nibabel_gzip.py"))
        .arg(path)
        .output()
        .ok()?;
    if !out.status.success() {
        eprintln!(
            "nibabel timing failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    let four = |key: &str| -> Option<[f64; 4]> {
        let m = v.get(key)?;
        let mut r = [0.0; 4];
        for (slot, name) in r.iter_mut().zip(NIB_NAMES) {
            *slot = m.get(name)?.as_f64()?;
        }
        Some(r)
    };
    Some(Nibabel {
        plain: four("nibabel")?,
        igz: four("nibabel+indexed_gzip"),
        versions: v.get("versions").map(|x| x.to_string()).unwrap_or_default(),
    })
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn main() {
    // `cargo bench` passes --bench; under `cargo test --all-targets` only check that it builds and starts (the
    // benchmark generates a 280 MB image and runs for minutes).
    if !std::env::args().any(|a| a == "--bench") {
        println!("gzip index benchmark: run with `cargo bench --bench gzip_index`");
        return;
    }
    let dir = data_dir();
    let path = ensure_bold_gz(&dir, &SHAPE);
    let compressed = std::fs::read(&path).expect("read image");
    let total = HEADER + 300 * VOLUME;
    println!(
        "image {} : {} bytes compressed, {total} decompressed; load {}",
        path.display(),
        compressed.len(),
        loadavg()
    );
    let nib = nibabel_times(&path);
    let mut b = Bench {
        c: Criterion::default().configure_from_args(),
        results: Vec::new(),
    };
    let decomp = decompressors(&mut b, &compressed, &compressed, total);

    // Cold: a fresh source with an empty cache directory each time (the pass builds and writes the index).
    let cold_root = tempfile::tempdir_in(&dir).expect("temp dir");
    let mut k = 0;
    let mut fresh_dir = move || {
        k += 1;
        cold_root.path().join(k.to_string())
    };
    let mut cold = Vec::new();
    for (name, segs) in cases() {
        cold.push(b.run("cold (no index)", name, || {
            let o = GzipOptions {
                cache_dir: Some(fresh_dir()),
                ..GzipOptions::default()
            };
            read(&GzipSource::with_options(&path, o).expect("open"), &segs);
        }));
    }
    let full = cases().pop().map(|c| c.1).unwrap_or_default();
    let plain = b.run("cold (no index)", "full read, VOXELSCAN_NO_INDEX=1", || {
        let o = GzipOptions {
            use_index: false,
            ..GzipOptions::default()
        };
        read(&GzipSource::with_options(&path, o).expect("open"), &full);
    });
    let cold_cached = b.run(
        "cold (no index)",
        "full read, into an empty data cache",
        || {
            let o = GzipOptions {
                cache_dir: Some(fresh_dir()),
                data_cache: DataCache::Own(Arc::new(SpanCache::new(DEFAULT_BUDGET))),
                ..GzipOptions::default()
            };
            read(&GzipSource::with_options(&path, o).expect("open"), &full);
        },
    );

    // Warm: the index built once into its cache; in memory (source kept), and open + load + read; no data cache.
    let warm_dir = tempfile::tempdir_in(&dir).expect("temp dir");
    let warm_opts = GzipOptions {
        cache_dir: Some(warm_dir.path().to_path_buf()),
        ..GzipOptions::default()
    };
    let (index, written) = GzipSource::with_options(&path, warm_opts.clone())
        .and_then(|s| s.build_index(|_| {}))
        .expect("index");
    let index_size = file_size(written.as_deref());
    let kept = GzipSource::with_options(&path, warm_opts.clone()).expect("open");
    let mut warm = Vec::new();
    let mut warm_open = Vec::new();
    for (name, segs) in cases() {
        warm.push(b.run("warm (index in memory)", name, || read(&kept, &segs)));
        warm_open.push(b.run("warm (open + load index + read)", name, || {
            read(
                &GzipSource::with_options(&path, warm_opts.clone()).expect("open"),
                &segs,
            );
        }));
    }
    // With the default 256 MiB data cache (what the CLI and SQL use): a first read into the empty cache (emptied
    // before each iteration: what keeping the data costs), then repeated reads in one process (the full read,
    // 332 MB, does not fit and is served partly from memory).
    let data_cache = Arc::new(SpanCache::new(DEFAULT_BUDGET));
    let cached_src = GzipSource::with_options(
        &path,
        GzipOptions {
            data_cache: DataCache::Own(Arc::clone(&data_cache)),
            ..warm_opts.clone()
        },
    )
    .expect("open");
    let mut first = Vec::new();
    let mut repeat = Vec::new();
    for (name, segs) in cases() {
        first.push(b.run("first read into an empty data cache", name, || {
            data_cache.clear();
            read(&cached_src, &segs)
        }));
        data_cache.clear();
        repeat.push(b.run("repeated (data cache)", name, || read(&cached_src, &segs)));
    }

    // One core vs two, with the CPU the process actually got (the machine is shared).
    let two = GzipSource::with_options(
        &path,
        GzipOptions {
            threads: 2,
            ..warm_opts.clone()
        },
    )
    .expect("open");
    let (one_full, one_cores) =
        with_cores(|| b.run("threads", "full read, 1 thread", || read(&kept, &full)));
    let (two_full, two_cores) =
        with_cores(|| b.run("threads", "full read, 2 threads", || read(&two, &full)));
    let series = cases().remove(0).1;
    let series2 = b.run("threads", "time series, 2 threads", || read(&two, &series));

    let spacing = denser_spacing(&mut b, &path, &dir);

    println!(
        "\n===== issue 6 summary (medians; load {}) =====",
        loadavg()
    );
    println!(
        "index: {} points, {} bytes on disk ({:.2}% of the gz file)",
        index.points().len(),
        index_size,
        100.0 * index_size as f64 / compressed.len() as f64
    );
    let mb = total as f64 / 1e6;
    for (name, d) in &decomp {
        println!(
            "decompress {name:<40} {:>9.1} ms  {:>7.1} MB/s out",
            ms(*d),
            mb / d.as_secs_f64()
        );
    }
    let fastest = decomp
        .iter()
        .filter(|(n, _)| !n.contains("index build"))
        .map(|d| d.1)
        .min()
        .unwrap_or_default();
    print_cases(&cold, &warm, &warm_open, &repeat, nib.as_ref());
    println!(
        "cold full read / fastest single-core decompressor: {:.2} (target <= 1.2)",
        ratio(cold[3], fastest)
    );
    println!(
        "cold full read / same with VOXELSCAN_NO_INDEX=1: {:.2}",
        ratio(cold[3], plain)
    );
    println!(
        "first read into an empty data cache / without the cache: cold full read {:.2}; warm: time series {:.2}, \
         volume 150 {:.2}, last volume {:.2}, full read {:.2}",
        ratio(cold_cached, cold[3]),
        ratio(first[0], warm[0]),
        ratio(first[1], warm[1]),
        ratio(first[2], warm[2]),
        ratio(first[3], warm[3])
    );
    println!(
        "full indexed read 1 thread / 2 threads: {:.2}x (target >= 1.6); CPU cores the process got: {:.2} with 1 \
         thread, {:.2} with 2",
        ratio(one_full, two_full),
        one_cores,
        two_cores
    );
    println!(
        "time series 1 thread / 2 threads: {:.2}x",
        ratio(warm[0], series2)
    );
    println!("seek-point spacing (warm, index in memory, no data cache):");
    println!(
        "{:>9} {:>7} {:>10} {:>8} {:>10} {:>12} {:>12} {:>10} {:>10}",
        "span",
        "points",
        "index MB",
        "% of gz",
        "build ms",
        "series ms",
        "series 2thr",
        "vol150 ms",
        "nib/series"
    );
    let default_row = Spacing {
        span: 1 << 20,
        points: index.points().len(),
        index_bytes: index_size,
        build: cold[3],
        series: warm[0],
        series2,
        volume: warm[1],
    };
    for s in std::iter::once(&default_row).chain(spacing.iter()) {
        println!(
            "{:>6} KiB {:>7} {:>10.1} {:>7.1}% {:>10.0} {:>12.1} {:>12.1} {:>10.2} {:>9.1}x",
            s.span >> 10,
            s.points,
            s.index_bytes as f64 / 1e6,
            100.0 * s.index_bytes as f64 / compressed.len() as f64,
            ms(s.build),
            ms(s.series),
            ms(s.series2),
            ms(s.volume),
            nib.as_ref()
                .map_or(f64::NAN, |n| n.plain[0] / s.series.as_secs_f64())
        );
    }
    match &nib {
        Some(n) => println!("nibabel measured in this run: {}", n.versions),
        None => println!("(nibabel not measured: no Python with nibabel)"),
    }
}

/// Full decompression throughput per core with each candidate (compressed bytes already in memory).
/// `src` is `compressed` seen through the index's positional-read trait.
fn decompressors(
    b: &mut Bench,
    compressed: &[u8],
    src: &dyn ReadAt,
    total: u64,
) -> Vec<(&'static str, Duration)> {
    let mut out = vec![0u8; total as usize];
    vec![
        (
            "zlib-rs (flate2 MultiGzDecoder)",
            b.run("decompress", "zlib-rs flate2", || {
                flate2::read::MultiGzDecoder::new(compressed)
                    .read_exact(&mut out)
                    .expect("flate2");
            }),
        ),
        (
            "zlib-rs (libz-rs-sys, GzCursor)",
            b.run("decompress", "zlib-rs cursor", || {
                GzCursor::from_start(src, "bold")
                    .and_then(|mut c| c.read_exact(&mut out))
                    .expect("cursor");
            }),
        ),
        (
            "zlib-rs + index build (GzIndex::build)",
            b.run("decompress", "zlib-rs cursor + index", || {
                black_box(GzIndex::build(src, "bold", 1 << 20, |_| {}).expect("build"));
            }),
        ),
        (
            "libdeflate (libdeflater)",
            b.run("decompress", "libdeflater", || {
                let n = libdeflater::Decompressor::new()
                    .gzip_decompress(compressed, &mut out)
                    .expect("libdeflate");
                assert_eq!(n as u64, total);
            }),
        ),
        (
            "miniz_oxide",
            b.run("decompress", "miniz_oxide", || {
                use miniz_oxide::inflate::core::{DecompressorOxide, decompress, inflate_flags};
                let mut d = DecompressorOxide::new();
                let flags = inflate_flags::TINFL_FLAG_USING_NON_WRAPPING_OUTPUT_BUF;
                let (status, _, n) = decompress(&mut d, &compressed[10..], &mut out, 0, flags);
                assert_eq!((n as u64, status as i32), (total, 0));
            }),
        ),
        (
            "zune-inflate",
            b.run("decompress", "zune-inflate", || {
                let opts = zune_inflate::DeflateOptions::default().set_size_hint(total as usize);
                let v = zune_inflate::DeflateDecoder::new_with_options(compressed, opts)
                    .decode_gzip()
                    .expect("zune");
                assert_eq!(v.len() as u64, total);
            }),
        ),
    ]
}

/// One row of the seek-point spacing trade-off.
struct Spacing {
    span: u64,
    points: usize,
    index_bytes: u64,
    /// The forward pass that builds the index (`voxelscan index --span`), once.
    build: Duration,
    series: Duration,
    series2: Duration,
    volume: Duration,
}

/// Indexes with seek points closer than the default 1 MiB: what they cost (build, size) and what the warm time
/// series gains.
fn denser_spacing(b: &mut Bench, path: &Path, dir: &Path) -> Vec<Spacing> {
    let mut rows = Vec::new();
    let series = cases().remove(0).1;
    let volume = cases().remove(1).1;
    for span in [256u64 << 10, 128 << 10, 64 << 10] {
        let idx_dir = tempfile::tempdir_in(dir).expect("temp dir");
        let o = GzipOptions {
            span,
            cache_dir: Some(idx_dir.path().to_path_buf()),
            ..GzipOptions::default()
        };
        let t = Instant::now();
        let (index, written) = GzipSource::with_options(path, o.clone())
            .and_then(|s| s.build_index(|_| {}))
            .expect("index");
        let build = t.elapsed();
        let one = GzipSource::with_options(path, o.clone()).expect("open");
        let two = GzipSource::with_options(path, GzipOptions { threads: 2, ..o }).expect("open");
        let group = format!("span {} KiB", span >> 10);
        rows.push(Spacing {
            span,
            points: index.points().len(),
            index_bytes: file_size(written.as_deref()),
            build,
            series: b.run(&group, "time series", || read(&one, &series)),
            series2: b.run(&group, "time series, 2 threads", || read(&two, &series)),
            volume: b.run(&group, "volume [..., 150]", || read(&one, &volume)),
        });
    }
    rows
}

fn print_cases(
    cold: &[Duration],
    warm: &[Duration],
    warm_open: &[Duration],
    repeat: &[Duration],
    nib: Option<&Nibabel>,
) {
    println!(
        "{:<28} {:>9} {:>9} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}",
        "case (ms)",
        "cold",
        "warm",
        "open+warm",
        "repeated",
        "nibabel",
        "nib+igz",
        "nib/warm",
        "igz/warm",
        "igz/rep"
    );
    for (i, (name, _)) in cases().iter().enumerate() {
        let nib_s = nib.map(|n| n.plain[i]);
        let igz_s = nib.and_then(|n| n.igz.map(|g| g[i]));
        let cell = |v: Option<f64>| v.map_or("-".to_string(), |x| format!("{x:.1}"));
        let times = |v: Option<f64>, d: Duration| {
            v.map_or("-".to_string(), |x| format!("{:.2}x", x / d.as_secs_f64()))
        };
        println!(
            "{name:<28} {:>9.1} {:>9.2} {:>10.2} {:>10.3} {:>10} {:>10} {:>10} {:>10} {:>10}",
            ms(cold[i]),
            ms(warm[i]),
            ms(warm_open[i]),
            ms(repeat[i]),
            cell(nib_s.map(|s| s * 1e3)),
            cell(igz_s.map(|s| s * 1e3)),
            times(nib_s, warm[i]),
            times(igz_s, warm[i]),
            times(igz_s, repeat[i]),
        );
    }
}

fn file_size(path: Option<&Path>) -> u64 {
    path.and_then(|p| std::fs::metadata(p).ok())
        .map_or(0, |m| m.len())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn ratio(a: Duration, b: Duration) -> f64 {
    a.as_secs_f64() / b.as_secs_f64().max(1e-12)
}
