//! Helpers shared by the benchmarks: measuring a child process, the Python interpreter, the generated BOLD image.
#![allow(dead_code)] // each bench uses a different part

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use voxelscan::synth;

/// Wall time and peak RSS (bytes) of one child process; its stdout.
pub struct Measured {
    pub wall: Duration,
    pub peak_rss: u64,
    pub stdout: String,
}

// The child is reaped by wait4 (which also gives its rusage), not Child::wait.
#[allow(clippy::zombie_processes)]
pub fn measure(cmd: &mut Command) -> Measured {
    let start = Instant::now();
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    let pid = child.id() as libc::pid_t;
    let mut stdout = child.stdout.expect("piped stdout");
    let mut text = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut text).expect("child stdout");
    let mut status = 0;
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: `status` and `usage` are valid, writable out-parameters; wait4 reaps our own child `pid`.
    let got = unsafe { libc::wait4(pid, &mut status, 0, usage.as_mut_ptr()) };
    let wall = start.elapsed();
    assert_eq!(got, pid, "wait4 failed");
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "{cmd:?} failed (status {status})"
    );
    // SAFETY: zero-initialised and filled by a successful wait4: every field is an integer.
    let usage = unsafe { usage.assume_init() };
    Measured {
        wall,
        // Linux reports ru_maxrss in KiB.
        peak_rss: usage.ru_maxrss as u64 * 1024,
        stdout: text,
    }
}

pub fn python() -> PathBuf {
    std::env::var_os("VOXELSCAN_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python"))
}

/// `target/bench-data`, created when missing.
pub fn data_dir() -> PathBuf {
    synth::bench_data_dir().expect("create target/bench-data")
}

/// The gzip BOLD image of `shape` that `gzip_index` and `view` share (generated once).
pub fn ensure_bold_gz(dir: &Path, shape: &[usize]) -> PathBuf {
    let path = dir.join("bold.nii.gz");
    synth::bench_image(&path, shape, 1.0, 0.0, true).expect("write bench image");
    path
}

/// The slicing bench's images, generated once in `dir`: "t1" (256×256×176 int16, slope 0.5, intercept 10) and
/// "bold" (96×96×60×300 int16), each as `.nii` and `.nii.gz`; named `t1`, `t1.gz`, `bold`, `bold.gz`.
pub fn slicing_images(dir: &Path) -> Vec<(String, PathBuf)> {
    let specs: [(&str, &[usize], f32, f32); 2] = [
        ("t1", &[256, 256, 176], 0.5, 10.0),
        ("bold", &[96, 96, 60, 300], 1.0, 0.0),
    ];
    let mut out = Vec::new();
    for (name, shape, slope, inter) in specs {
        for gz in [false, true] {
            let (file, key) = if gz {
                (format!("{name}.nii.gz"), format!("{name}.gz"))
            } else {
                (format!("{name}.nii"), name.to_string())
            };
            let path = dir.join(file);
            synth::bench_image(&path, shape, slope, inter, gz).expect("write bench image");
            out.push((key, path));
        }
    }
    out
}
