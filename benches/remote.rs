//! Object-storage benchmark of issue 4: reads of the 96×96×60×300 int16 benchmark image served by a real nginx
//! (Range support) behind a small TCP proxy that holds every client request for `VOXELSCAN_BENCH_RTT_MS` (default
//! 20 ms) to model a remote store's round trip. For a one-volume read, a voxel time series and an ROI box: GET
//! requests, bytes fetched and wall time through voxelscan's ranged reads, against downloading the whole object
//! first (one GET) and slicing the local copy. Requests and bytes are counted by nginx itself.
//!
//! `cargo bench --bench remote` (only measures under `cargo bench`; needs nginx, as the tests do).

#[path = "../tests/common/servers.rs"]
#[allow(dead_code)]
mod servers;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use servers::{Nginx, latency_proxy};
use voxelscan::io::remote::StoreOptions;
use voxelscan::proxy::{ArrayProxy, ProxyOptions};
use voxelscan::slicer::SliceSpec;
use voxelscan::synth;

const SHAPE: [usize; 4] = [96, 96, 60, 300];

const CASES: [(&str, &str); 3] = [
    ("volume 150", "..., 150"),
    ("voxel time series", "48, 48, 30, :"),
    ("ROI box 16x16x10 at t=150", "40:56, 40:56, 25:35, 150"),
];

fn image(dir: &Path) -> PathBuf {
    let path = dir.join("bold.nii");
    synth::bench_image(&path, &SHAPE, 1.0, 0.0, false).expect("write bench image");
    path
}

struct Cost {
    time: Duration,
    gets: usize,
    bytes: u64,
}

fn measure(nginx: &Nginx, uri: &str, f: impl FnOnce()) -> Cost {
    let before = nginx.log_of(uri);
    let t0 = Instant::now();
    f();
    let time = t0.elapsed();
    let log = nginx.log_of(uri);
    let new = &log[before.len()..];
    Cost {
        time,
        gets: new.len(),
        bytes: new.iter().map(|r| r.bytes).sum(),
    }
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let rtt_ms: u64 = std::env::var("VOXELSCAN_BENCH_RTT_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-data/remote");
    std::fs::create_dir_all(&data).expect("bench dir");
    let path = image(&data);
    let nginx = Nginx::start(&data);
    let port = latency_proxy(nginx.port(), Duration::from_millis(rtt_ms));
    let url = format!("http://127.0.0.1:{port}/bold.nii");
    let uri = "/bold.nii";
    let store = StoreOptions::default();
    let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    println!(
        "image {SHAPE:?} int16, {:.0} MB, served by nginx behind a proxy adding {rtt_ms} ms per request",
        size as f64 / 1e6
    );
    println!(
        "{:<28} {:>6} {:>12} {:>10} | {:>6} {:>12} {:>10} | {:>8}",
        "read", "GETs", "bytes", "time", "GETs", "bytes", "time", "speed-up"
    );
    for (name, spec) in CASES {
        let spec = SliceSpec::parse(spec).expect("spec");
        let ranged = measure(&nginx, uri, || {
            let p = ArrayProxy::open_location(&url, None, ProxyOptions::default(), &store)
                .expect("open");
            p.slice(&spec).expect("slice");
        });
        let local = data.join("download.nii");
        let whole = measure(&nginx, uri, || {
            let mut resp = Vec::new();
            let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
            use std::io::{Read, Write};
            write!(s, "GET {uri} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").expect("request");
            s.read_to_end(&mut resp).expect("download");
            let body = resp
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .map_or(&resp[..], |p| &resp[p + 4..]);
            std::fs::write(&local, body).expect("write copy");
            let p = ArrayProxy::open(&local, ProxyOptions::default()).expect("open copy");
            p.slice(&spec).expect("slice");
        });
        println!(
            "{:<28} {:>6} {:>12} {:>9.3}s | {:>6} {:>12} {:>9.3}s | {:>7.1}x",
            name,
            ranged.gets,
            ranged.bytes,
            ranged.time.as_secs_f64(),
            whole.gets,
            whole.bytes,
            whole.time.as_secs_f64(),
            whole.time.as_secs_f64() / ranged.time.as_secs_f64()
        );
        let _ = std::fs::remove_file(&local);
    }
    println!(
        "(left: voxelscan's ranged GETs, header included; right: download the whole object, then slice it)"
    );
}
