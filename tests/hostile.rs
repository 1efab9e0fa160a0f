//! Hostile files through the real CLI: headers that claim absurd arrays in every format, dims that multiply past
//! 64 bits, negative and zero dims, offsets past the end, gzip members that end early, gzip bombs, truncated and
//! oversized `.npy` headers, raw specs with absurd shapes. Every file is written by the generator below, and each run
//! of `voxelscan` (`info`, `slice` whole/indexed/`--unscaled`/`--dtype`, `sql` count/sum/selective, `export`,
//! `index`) happens under an address-space limit and a timeout. Every run must end with exit status 2 and one
//! `error:` line on stderr: never a signal (abort, SIGSEGV, SIGBUS), never a panic (101), never a hang.
//!
//! The address-space limit is [`AS_LIMIT`] (1 GiB): a debug build of the binary starts well inside it, which
//! `valid_files_run_under_the_same_limit` checks with the same commands on good files.

mod common;

use std::io::{Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::Run;

/// RLIMIT_AS of every run.
const AS_LIMIT: u64 = 1 << 30;
/// Longest a run may take (a debug build on a loaded 2-core machine).
const TIMEOUT: Duration = Duration::from_secs(60);

// ------------------------------------------------------------------------------------------------- the runner

/// How a run ended, for the report.
fn describe(run: &Run, signal: Option<i32>) -> String {
    match signal {
        Some(s) => format!(
            "killed by signal {s}; stderr: {}",
            common::first_line(&run.stderr)
        ),
        None => format!(
            "exit {:?}; stderr: {}",
            run.code,
            common::first_line(&run.stderr)
        ),
    }
}

/// Run `voxelscan ARGS` in `dir` under [`AS_LIMIT`] and [`TIMEOUT`]; the signal that ended it, if any.
fn run_limited(dir: &Path, args: &[String]) -> (Run, Option<i32>) {
    let mut cmd = Command::new(common::voxelscan_bin());
    cmd.args(args)
        .current_dir(dir)
        .env_remove("VOXELSCAN_MAX_RESULT_BYTES")
        .env("VOXELSCAN_INDEX_CACHE", dir.join("index-cache"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: the closure runs in the forked child before exec and only calls setrlimit, which is async-signal-safe
    // and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            let limit = libc::rlimit {
                rlim_cur: AS_LIMIT,
                rlim_max: AS_LIMIT,
            };
            if libc::setrlimit(libc::RLIMIT_AS, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            let run = Run {
                code: None,
                stdout: String::new(),
                stderr: format!("could not start voxelscan: {e}"),
            };
            return (run, None);
        }
    };
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut s = Vec::new();
            let _ = r.read_to_end(&mut s);
            String::from_utf8_lossy(&s).into_owned()
        })
    };
    let out = child.stdout.take().map(|s| drain(Box::new(s)));
    let err = child.stderr.take().map(|s| drain(Box::new(s)));
    let start = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if start.elapsed() > TIMEOUT => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            Err(_) => break None,
        }
    };
    let text = |h: Option<std::thread::JoinHandle<String>>| {
        h.and_then(|h| h.join().ok()).unwrap_or_default()
    };
    let (stdout, mut stderr) = (text(out), text(err));
    if status.is_none() {
        stderr = format!("timed out after {TIMEOUT:?} (killed); {stderr}");
    }
    let run = Run {
        code: status.and_then(|s| s.code()),
        stdout,
        stderr,
    };
    (run, status.and_then(|s| s.signal()))
}

// ---------------------------------------------------------------------------------------------- file makers

fn put(buf: &mut [u8], at: usize, bytes: &[u8]) {
    buf[at..at + bytes.len()].copy_from_slice(bytes);
}

/// NIfTI-1 data type codes and their bit sizes.
const UINT8: (i16, i16) = (2, 8);
const INT16: (i16, i16) = (4, 16);
const FLOAT32: (i16, i16) = (16, 32);
const FLOAT64: (i16, i16) = (64, 64);

/// A little-endian NIfTI-1 header with its 4 extension-flag bytes (352 bytes); `magic` `n+1` (single file) or `ni1`
/// (pair). Slope 2, intercept 1, so reads scale.
fn nifti1(dims: &[i16], dtype: (i16, i16), vox_offset: f32, magic: &[u8; 4]) -> Vec<u8> {
    let mut h = vec![0u8; 352];
    put(&mut h, 0, &348i32.to_le_bytes());
    put(&mut h, 40, &(dims.len() as i16).to_le_bytes());
    for (k, d) in dims.iter().enumerate() {
        put(&mut h, 42 + 2 * k, &d.to_le_bytes());
    }
    for k in dims.len() + 1..8 {
        put(&mut h, 40 + 2 * k, &1i16.to_le_bytes());
    }
    put(&mut h, 70, &dtype.0.to_le_bytes());
    put(&mut h, 72, &dtype.1.to_le_bytes());
    for k in 0..8 {
        put(&mut h, 76 + 4 * k, &1.0f32.to_le_bytes());
    }
    put(&mut h, 108, &vox_offset.to_le_bytes());
    put(&mut h, 112, &2.0f32.to_le_bytes());
    put(&mut h, 116, &1.0f32.to_le_bytes());
    put(&mut h, 344, magic);
    h
}

/// A little-endian NIfTI-1 single-file header for `dims` with data right after it.
fn nii(dims: &[i16], dtype: (i16, i16)) -> Vec<u8> {
    nifti1(dims, dtype, 352.0, b"n+1\0")
}

/// A little-endian NIfTI-2 single-file header (544 bytes) with data from `vox_offset`.
fn nifti2(dims: &[i64], dtype: (i16, i16), vox_offset: i64) -> Vec<u8> {
    let mut h = vec![0u8; 544];
    put(&mut h, 0, &540i32.to_le_bytes());
    put(&mut h, 4, b"n+2\0");
    put(&mut h, 8, &[0x0d, 0x0a, 0x1a, 0x0a]);
    put(&mut h, 12, &dtype.0.to_le_bytes());
    put(&mut h, 14, &dtype.1.to_le_bytes());
    put(&mut h, 16, &(dims.len() as i64).to_le_bytes());
    for (k, d) in dims.iter().enumerate() {
        put(&mut h, 24 + 8 * k, &d.to_le_bytes());
    }
    for k in dims.len() + 1..8 {
        put(&mut h, 16 + 8 * k, &1i64.to_le_bytes());
    }
    for k in 0..8 {
        put(&mut h, 104 + 8 * k, &1.0f64.to_le_bytes());
    }
    put(&mut h, 168, &vox_offset.to_le_bytes());
    put(&mut h, 176, &1.0f64.to_le_bytes());
    h
}

/// A NIfTI-2 pair header (`ni2` magic, data in the `.img` from byte 0).
fn nifti2_pair(dims: &[i64], dtype: (i16, i16)) -> Vec<u8> {
    let mut h = nifti2(dims, dtype, 0);
    put(&mut h, 4, b"ni2\0");
    h
}

/// A little-endian Analyze 7.5 header (348 bytes, for a `.hdr`).
fn analyze(dims: &[i16], dtype: (i16, i16)) -> Vec<u8> {
    let mut h = nifti1(dims, dtype, 0.0, b"\0\0\0\0");
    h.truncate(348);
    put(&mut h, 112, &1.0f32.to_le_bytes()); // SPM scale factor
    put(&mut h, 116, &0.0f32.to_le_bytes());
    h
}

/// An MGH header (big-endian, 284 bytes): `dims` width, height, depth, frames; type 3 is float32, 4 int16.
fn mgh(dims: [i32; 4], kind: i32) -> Vec<u8> {
    let mut h = vec![0u8; 284];
    put(&mut h, 0, &1i32.to_be_bytes());
    for (k, d) in dims.iter().enumerate() {
        put(&mut h, 4 + 4 * k, &d.to_be_bytes());
    }
    put(&mut h, 20, &kind.to_be_bytes());
    put(&mut h, 28, &1i16.to_be_bytes());
    for k in 0..3 {
        put(&mut h, 30 + 4 * k, &1.0f32.to_be_bytes());
        put(&mut h, 42 + 16 * k, &1.0f32.to_be_bytes());
    }
    h
}

/// A `.npy` header (version 1, 64-byte aligned) for `descr` and `shape` text such as `(3, 4)`.
fn npy(descr: &str, shape: &str) -> Vec<u8> {
    let dict = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    let mut h = b"\x93NUMPY\x01\x00".to_vec();
    let unpadded = h.len() + 2 + dict.len() + 1;
    let total = unpadded.div_ceil(64) * 64;
    let len = (total - h.len() - 2) as u16;
    h.extend_from_slice(&len.to_le_bytes());
    h.extend_from_slice(dict.as_bytes());
    h.resize(total - 1, b' ');
    h.push(b'\n');
    h
}

/// splitmix64 bytes: incompressible filler.
fn noise(n: usize, mut seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(n + 8);
    while out.len() < n {
        seed = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = seed;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        out.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    out.truncate(n);
    out
}

/// One complete gzip member.
fn gz(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
    e.write_all(data).expect("gzip into memory");
    e.finish().expect("gzip into memory")
}

/// A gzip member of `data` cut after `keep` compressed bytes: the stream ends early, without its trailer.
fn gz_cut(data: &[u8], keep: usize) -> Vec<u8> {
    let mut g = gz(data);
    g.truncate(keep.min(g.len().saturating_sub(9)));
    g
}

/// `header` + `data` as one member, then `zero_members` members of 1 MiB of zeros each (a bomb: ~1 KiB each).
fn bomb(header: &[u8], data: &[u8], zero_members: usize) -> Vec<u8> {
    let mut file = gz(&[header, data].concat());
    let zeros = gz(&vec![0u8; 1 << 20]);
    for _ in 0..zero_members {
        file.extend_from_slice(&zeros);
    }
    file
}

// ------------------------------------------------------------------------------------------------------ cases

/// The commands run on a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cmd {
    Info,
    SliceAll,
    SliceIndexedUnscaled,
    SliceAllAsFloat32,
    SqlCount,
    SqlSum,
    SqlSelective,
    Export,
    ExportNifti,
    View,
    Index,
}

/// What fails: the header's claim (every command), or only reading the data (the header is consistent with the
/// file as far as can be told without reading it).
const CLAIM: &[Cmd] = &[
    Cmd::Info,
    Cmd::SliceAll,
    Cmd::SliceIndexedUnscaled,
    Cmd::SliceAllAsFloat32,
    Cmd::SqlCount,
    Cmd::SqlSum,
    Cmd::SqlSelective,
    Cmd::Export,
    Cmd::ExportNifti,
    Cmd::View,
    Cmd::Index,
];
const DATA: &[Cmd] = &[
    Cmd::SliceAll,
    Cmd::SliceIndexedUnscaled,
    Cmd::SliceAllAsFloat32,
    Cmd::SqlSum,
    Cmd::SqlSelective,
    Cmd::Export,
    Cmd::ExportNifti,
    Cmd::View,
];

struct Case {
    name: &'static str,
    /// Files to write (name, bytes); the first is the one commands open.
    files: Vec<(String, Vec<u8>)>,
    /// A raw spec (`--raw`, and a RAW table in SQL) for headerless files.
    raw: Option<String>,
    cmds: Vec<Cmd>,
    /// Text every run's error line must contain (beyond `error:`), e.g. the file name.
    expect: &'static str,
}

fn case(name: &'static str, file: &str, bytes: Vec<u8>, cmds: &[Cmd]) -> Case {
    Case {
        name,
        files: vec![(file.to_string(), bytes)],
        raw: None,
        cmds: cmds.to_vec(),
        expect: "",
    }
}

impl Case {
    fn expecting(mut self, text: &'static str) -> Case {
        self.expect = text;
        self
    }

    fn with(mut self, file: &str, bytes: Vec<u8>) -> Case {
        self.files.push((file.to_string(), bytes));
        self
    }

    fn raw(mut self, spec: &str) -> Case {
        self.raw = Some(spec.to_string());
        self
    }
}

/// Claims no file could back, in every format.
fn claim_cases() -> Vec<Case> {
    let kib = |n: usize| vec![7u8; n << 10];
    let huge3 = [32767i16, 32767, 32767];
    vec![
        // The example: 1 KiB of gzip claiming 32767³ int16 (70 TB).
        case(
            "nifti1-gz-32767^3",
            "big.nii.gz",
            gz(&[nii(&huge3, INT16), kib(1)].concat()),
            CLAIM,
        )
        .expecting("big.nii.gz"),
        case(
            "nifti1-gz-bomb-32767^3",
            "bomb.nii.gz",
            bomb(&nii(&huge3, INT16), &[], 8),
            CLAIM,
        )
        .expecting("bomb.nii.gz"),
        case(
            "nifti2-gz-2^63-bytes",
            "n2.nii.gz",
            gz(&[
                nifti2(&[8, 1 << 20, 1 << 20, 1 << 20], FLOAT64, 544),
                kib(1),
            ]
            .concat()),
            CLAIM,
        ),
        case(
            "nifti2-2^62-past-eof",
            "n2.nii",
            [nifti2(&[1 << 20, 1 << 20, 1 << 20, 4], UINT8, 544), kib(1)].concat(),
            CLAIM,
        ),
        case(
            "nifti2-dims-past-u64",
            "wrap.nii",
            [
                nifti2(&[1 << 30, 1 << 30, 1 << 30, 1 << 30], FLOAT64, 544),
                kib(1),
            ]
            .concat(),
            CLAIM,
        ),
        case(
            "nifti2-gz-dims-past-u64",
            "wrap.nii.gz",
            gz(&[nifti2(&[i64::MAX, i64::MAX, 2], INT16, 544), kib(1)].concat()),
            CLAIM,
        ),
        case(
            "nifti2-negative-dim",
            "neg.nii",
            [nifti2(&[4, -4, 4], INT16, 544), kib(1)].concat(),
            CLAIM,
        ),
        case(
            "nifti2-huge-vox-offset",
            "off.nii",
            [nifti2(&[2, 2, 2], INT16, i64::MAX - 8), kib(1)].concat(),
            CLAIM,
        ),
        case(
            "nifti1-negative-dim",
            "neg.nii",
            [nii(&[4, -3, 4], INT16), kib(1)].concat(),
            CLAIM,
        ),
        case(
            "nifti1-zero-dims-offset-past-eof",
            "zero.nii",
            [nifti1(&[0, 4, 0], INT16, 1e9, b"n+1\0"), kib(1)].concat(),
            CLAIM,
        ),
        case(
            "nifti1-vox-offset-3e38",
            "far.nii",
            [nifti1(&[2, 2, 2], INT16, 3.0e38, b"n+1\0"), kib(1)].concat(),
            CLAIM,
        ),
        case(
            "nifti1-vox-offset-past-eof",
            "past.nii",
            [nifti1(&[4, 4, 4], FLOAT32, 1_048_576.0, b"n+1\0"), kib(1)].concat(),
            CLAIM,
        ),
        case(
            "nifti1-4d-past-eof",
            "four.nii",
            [nii(&[32767, 32767, 32767, 32767], UINT8), kib(1)].concat(),
            CLAIM,
        ),
        case(
            "nifti2-pair-short-img",
            "pair2.hdr",
            nifti2_pair(&[32767, 32767, 32767], INT16),
            CLAIM,
        )
        .with("pair2.img", kib(1)),
        case(
            "pair-short-img",
            "pair.hdr",
            nifti1(&[32767, 32767, 100], INT16, 0.0, b"ni1\0"),
            CLAIM,
        )
        .with("pair.img", kib(4)),
        case(
            "analyze-short-img",
            "an.hdr",
            analyze(&[32767, 32767, 32767, 32767], UINT8),
            CLAIM,
        )
        .with("an.img", kib(1)),
        case(
            "analyze-gz-img",
            "ag.hdr",
            analyze(&[32767, 32767, 32767], FLOAT32),
            CLAIM,
        )
        .with("ag.img.gz", gz(&kib(1))),
        case(
            "mgh-huge-dims",
            "big.mgh",
            [mgh([i32::MAX, i32::MAX, 1, 1], 3), kib(1)].concat(),
            CLAIM,
        ),
        case(
            "mgz-huge-dims",
            "big.mgz",
            gz(&[mgh([65536, 65536, 65536, 1], 4), kib(1)].concat()),
            CLAIM,
        ),
        case(
            "mgh-negative-dims",
            "neg.mgh",
            [mgh([-5, 4, 4, 1], 3), kib(1)].concat(),
            CLAIM,
        ),
        case(
            "npy-header-cut",
            "cut.npy",
            npy("<i2", "(4, 4)")[..30].to_vec(),
            CLAIM,
        ),
        case(
            "npy-header-length-4g",
            "len.npy",
            [b"\x93NUMPY\x02\x00\xf0\xff\xff\xff".to_vec(), kib(1)].concat(),
            CLAIM,
        ),
        case(
            "npy-shape-past-u64",
            "wrap.npy",
            [
                npy("<f8", "(99999999999, 99999999999, 99999999999)"),
                kib(1),
            ]
            .concat(),
            CLAIM,
        ),
        case(
            "npy-gz-huge-shape",
            "big.npy.gz",
            gz(&[npy("<i2", "(1048576, 1048576)"), kib(1)].concat()),
            CLAIM,
        ),
        case(
            "npy-data-short",
            "short.npy",
            [npy("<f8", "(1000, 1000)"), vec![1u8; 10]].concat(),
            CLAIM,
        ),
        case("raw-past-eof", "data.raw", kib(1), &RAW_CLAIM)
            .raw("shape=100000,100000,100000;dtype=<f8"),
        case("raw-dims-past-u64", "data.raw", kib(1), &RAW_CLAIM)
            .raw("shape=4294967296,4294967296,4294967296;dtype=<i2"),
        case("raw-gz-32767^3", "data.raw.gz", gz(&kib(1)), &RAW_CLAIM)
            .raw("shape=32767,32767,32767;dtype=<i2"),
        case("raw-negative-shape", "data.raw", kib(1), &RAW_CLAIM).raw("shape=-1,4;dtype=<i2"),
        case("raw-huge-offset", "data.raw", kib(1), &RAW_CLAIM)
            .raw("shape=4,4;dtype=<i2;offset=18446744073709551615"),
    ]
}

/// Raw files have no `export` (a headerless file cannot be detected).
const RAW_CLAIM: [Cmd; 9] = [
    Cmd::Info,
    Cmd::SliceAll,
    Cmd::SliceIndexedUnscaled,
    Cmd::SliceAllAsFloat32,
    Cmd::SqlCount,
    Cmd::SqlSum,
    Cmd::SqlSelective,
    Cmd::Index,
    Cmd::View,
];

/// Claims a file could back, but whose data is not all there: gzip members ending early, and bombs.
fn data_cases() -> Vec<Case> {
    let shape = [64i16, 64, 64];
    let body = noise(64 * 64 * 64 * 2, 7);
    let with_index = |cmds: &[Cmd]| [cmds, &[Cmd::Index]].concat();
    let cut = with_index(DATA);
    vec![
        case(
            "nifti1-gz-member-ends-early",
            "cut.nii.gz",
            gz_cut(&[nii(&shape, INT16), body.clone()].concat(), 4096),
            &cut,
        )
        .expecting("cut.nii.gz"),
        case(
            "nifti2-gz-member-ends-early",
            "cut2.nii.gz",
            gz_cut(
                &[nifti2(&[64, 64, 64], INT16, 544), body.clone()].concat(),
                4096,
            ),
            &cut,
        )
        .expecting("cut2.nii.gz"),
        case(
            "mgz-member-ends-early",
            "cut.mgz",
            gz_cut(&[mgh([64, 64, 64, 1], 4), body.clone()].concat(), 4096),
            &cut,
        )
        .expecting("cut.mgz"),
        case(
            "npy-gz-member-ends-early",
            "cut.npy.gz",
            gz_cut(&[npy("<i2", "(64, 64, 64)"), body.clone()].concat(), 4096),
            &cut,
        )
        .expecting("cut.npy.gz"),
        // (`index` cannot detect a headerless file: that error would prove nothing here.)
        case(
            "raw-gz-member-ends-early",
            "cut.raw.gz",
            gz_cut(&body, 4096),
            &[&RAW_CLAIM[1..4], &RAW_CLAIM[5..7]].concat(),
        )
        .raw("shape=64,64,64;dtype=<i2")
        .expecting("cut.raw.gz"),
        case(
            "nifti1-pair-img-gz-ends-early",
            "pairz.hdr.gz",
            gz(&nifti1(&shape, INT16, 0.0, b"ni1\0")),
            &cut,
        )
        .with("pairz.img.gz", gz_cut(&body, 4096))
        .expecting("pairz.img.gz"),
        // Complete members, but fewer bytes than the header claims: the stream ends before the data does.
        case(
            "nifti1-gz-stream-short",
            "short.nii.gz",
            gz(&[nii(&shape, INT16), body[..1000].to_vec()].concat()),
            DATA,
        )
        .expecting("short.nii.gz"),
        // A bomb within deflate's reach: 1 MiB of noise and 15 members of 1 MiB zeros (16 MiB of data) behind a
        // 1000³ uint8 claim (1 GB, possible for this file's size). Slicing it all needs more memory than the limit
        // leaves: refused before allocating; SQL reads piece by piece and finds the stream too short.
        case(
            "nifti1-gz-bomb-1000^3",
            "bomb.nii.gz",
            bomb(&nii(&[1000, 1000, 1000], UINT8), &noise(1 << 20, 3), 15),
            DATA,
        )
        .expecting("bomb.nii.gz"),
    ]
}

// ---------------------------------------------------------------------------------------------- command lines

/// The command line of `cmd` for the case's first file.
fn args(c: &Case, cmd: Cmd, dir: &Path) -> Vec<String> {
    let file = &c.files[0].0;
    let out = |ext: &str| dir.join(format!("out.{ext}")).display().to_string();
    let mut a: Vec<String> = match cmd {
        Cmd::Info => vec!["info".into(), file.clone()],
        Cmd::SliceAll => vec![
            "slice".into(),
            file.clone(),
            String::new(),
            "-o".into(),
            out("npy"),
        ],
        Cmd::SliceIndexedUnscaled => {
            vec![
                "slice".into(),
                file.clone(),
                "1:, ..., -1".into(),
                "-o".into(),
                out("npy"),
                "--unscaled".into(),
            ]
        }
        Cmd::SliceAllAsFloat32 => vec![
            "slice".into(),
            file.clone(),
            "...".into(),
            "-o".into(),
            out("npy"),
            "--dtype".into(),
            "float32".into(),
        ],
        Cmd::SqlCount | Cmd::SqlSum | Cmd::SqlSelective => return sql_args(c, cmd),
        Cmd::Export => vec!["export".into(), file.clone(), out("parquet")],
        Cmd::ExportNifti => vec!["export".into(), file.clone(), out("nii.gz")],
        Cmd::View => vec!["view".into(), file.clone(), "-o".into(), out("png")],
        Cmd::Index => vec!["index".into(), file.clone()],
    };
    if let (Some(spec), true) = (
        &c.raw,
        matches!(
            cmd,
            Cmd::Info
                | Cmd::SliceAll
                | Cmd::SliceIndexedUnscaled
                | Cmd::SliceAllAsFloat32
                | Cmd::View
        ),
    ) {
        a.push("--raw".into());
        a.push(spec.clone());
    }
    a
}

fn sql_args(c: &Case, cmd: Cmd) -> Vec<String> {
    let file = &c.files[0].0;
    let query = match cmd {
        Cmd::SqlCount => "SELECT count(*) FROM x",
        Cmd::SqlSum => "SELECT count(*), sum(value) FROM x",
        _ => "SELECT sum(value) FROM x WHERE i = 1 AND j = 1",
    };
    match &c.raw {
        None => vec!["sql".into(), "-t".into(), format!("x={file}"), query.into()],
        Some(spec) => {
            let options: Vec<String> = spec
                .split(';')
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| format!("'{k}' '{v}'"))
                .collect();
            let create = format!(
                "CREATE EXTERNAL TABLE x STORED AS RAW LOCATION '{file}' OPTIONS ({}); {query}",
                options.join(", ")
            );
            vec!["sql".into(), create]
        }
    }
}

// ------------------------------------------------------------------------------------------------------ tests

/// Write a case's files into a fresh directory.
fn write_case(c: &Case) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temporary directory");
    for (name, bytes) in &c.files {
        std::fs::write(dir.path().join(name), bytes).expect("write a case file");
    }
    dir
}

/// Every command of every case, on two threads; the failures, one line each.
fn run_cases(
    cases: &[Case],
    check: fn(&Case, Cmd, &Run, Option<i32>) -> Result<(), String>,
) -> (usize, Vec<String>) {
    let dirs: Vec<(tempfile::TempDir, &Case)> = cases.iter().map(|c| (write_case(c), c)).collect();
    let jobs: Vec<(PathBuf, &Case, Cmd)> = dirs
        .iter()
        .flat_map(|(d, c)| {
            c.cmds
                .iter()
                .map(move |&cmd| (d.path().to_path_buf(), *c, cmd))
        })
        .collect();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let failures = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                loop {
                    let k = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some((dir, c, cmd)) = jobs.get(k) else {
                        break;
                    };
                    let a = args(c, *cmd, dir);
                    let (run, signal) = run_limited(dir, &a);
                    if let Err(e) = check(c, *cmd, &run, signal) {
                        let line =
                            format!("{} / {cmd:?}: {e}\n    {}", c.name, common::shell_line(&a));
                        failures
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push(line);
                    }
                }
            });
        }
    });
    let failures = failures.into_inner().unwrap_or_else(|p| p.into_inner());
    (jobs.len(), failures)
}

fn must_fail_cleanly(c: &Case, _: Cmd, run: &Run, signal: Option<i32>) -> Result<(), String> {
    if signal.is_some() {
        return Err(describe(run, signal));
    }
    common::check_error_run(run)?;
    if !run.stderr.contains(c.expect) {
        return Err(format!(
            "the error does not mention {:?}: {}",
            c.expect,
            common::first_line(&run.stderr)
        ));
    }
    // Data that ends early is "truncated" (a bomb may instead be refused for memory, before reading).
    if c.expect.ends_with(".gz") || c.expect.ends_with(".mgz") {
        let text = run.stderr.to_lowercase();
        if !text.contains("truncated") && !text.contains("would need") {
            return Err(format!(
                "neither truncated nor a memory refusal: {}",
                common::first_line(&run.stderr)
            ));
        }
    }
    Ok(())
}

#[test]
fn hostile_files_end_in_one_error_line_under_a_memory_limit() {
    let cases: Vec<Case> = claim_cases().into_iter().chain(data_cases()).collect();
    let started = Instant::now();
    let (runs, failures) = run_cases(&cases, must_fail_cleanly);
    eprintln!("{runs} hostile runs in {:.1?}", started.elapsed());
    assert!(runs >= 200, "only {runs} runs: the generator lost cases");
    assert!(
        failures.is_empty(),
        "{} of {runs} runs failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// The bomb's whole-array slice is refused for memory, before allocating, with the bytes it would need.
#[test]
fn a_result_larger_than_memory_is_refused_before_allocating() {
    let bomb_case = data_cases()
        .into_iter()
        .find(|c| c.name == "nifti1-gz-bomb-1000^3")
        .expect("the bomb case");
    let dir = write_case(&bomb_case);
    let a = args(&bomb_case, Cmd::SliceAll, dir.path());
    let (run, signal) = run_limited(dir.path(), &a);
    assert_eq!(signal, None, "{}", describe(&run, signal));
    // 10⁹ uint8 values and their scaled copy.
    let needed: u64 = run
        .stderr
        .strip_prefix("error: bomb.nii.gz: the result would need ")
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("not a memory refusal: {}", run.stderr));
    assert!(needed >= 2_000_000_000, "{needed}");
    // With a budget set explicitly the same refusal names it.
    let mut cmd = Command::new(common::voxelscan_bin());
    let out = cmd
        .args(&a)
        .current_dir(dir.path())
        .env("VOXELSCAN_MAX_RESULT_BYTES", "1M")
        .output()
        .expect("run voxelscan");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("more than the 1048576 bytes allowed"),
        "{stderr}"
    );
}

/// An output grid taken from a template claiming 2000³ voxels (a sparse 8 GB file, so the claim is backed): the NIfTI
/// writer refuses its volume before allocating it, and so does a picture of an 8000 × 8000 section.
#[test]
fn output_grids_and_pictures_larger_than_memory_are_refused_before_allocating() {
    let dir = tempfile::tempdir().expect("temp dir");
    let small = [nii(&[4, 4, 4], INT16), noise(4 * 4 * 4 * 2, 3)].concat();
    std::fs::write(dir.path().join("small.nii"), small).expect("write");
    let big = dir.path().join("big.nii");
    std::fs::write(&big, nii(&[2000, 2000, 2000], UINT8)).expect("write");
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&big)
        .expect("open");
    file.set_len(352 + 8_000_000_000).expect("sparse file");
    let square = dir.path().join("square.raw");
    std::fs::File::create(&square)
        .and_then(|f| f.set_len(64_000_000))
        .expect("sparse file");
    let runs: [&[&str]; 3] = [
        &["export", "small.nii", "out.nii", "--like", "big.nii"],
        &[
            "export",
            "big.nii",
            "out.nii",
            "--sql",
            "SELECT * FROM t WHERE i = 0 AND j = 0 AND k = 0",
        ],
        &[
            "view",
            "square.raw",
            "--raw",
            "shape=8000,8000;dtype=|u1",
            "--scale",
            "1",
            "-o",
            "x.png",
        ],
    ];
    for a in runs {
        let a: Vec<String> = a.iter().map(|s| s.to_string()).collect();
        let (run, signal) = run_limited(dir.path(), &a);
        assert_eq!(signal, None, "{a:?}: {}", describe(&run, signal));
        assert_eq!(run.code, Some(2), "{a:?}: {}", describe(&run, signal));
        assert!(run.stderr.contains("would need"), "{a:?}: {}", run.stderr);
        assert_eq!(run.stderr.trim_end().lines().count(), 1, "{}", run.stderr);
    }
    assert!(!dir.path().join("out.nii").exists());
}

/// The limit leaves room for real work: the same commands on good files succeed under it.
#[test]
fn valid_files_run_under_the_same_limit() {
    let shape = [16i16, 16, 8];
    let body = noise(16 * 16 * 8 * 2, 11);
    let cases = vec![
        case(
            "nifti1",
            "ok.nii",
            [nii(&shape, INT16), body.clone()].concat(),
            CLAIM,
        ),
        case(
            "nifti1-gz",
            "ok.nii.gz",
            gz(&[nii(&shape, INT16), body.clone()].concat()),
            CLAIM,
        ),
        case(
            "mgz",
            "ok.mgz",
            gz(&[mgh([16, 16, 8, 1], 4), body.clone()].concat()),
            CLAIM,
        ),
        // A headerless file has nothing `index` could detect.
        case("raw", "ok.raw", body.clone(), &RAW_CLAIM[..7]).raw("shape=16,16,8;dtype=<i2"),
    ];
    let ok = |_: &Case, _: Cmd, run: &Run, signal: Option<i32>| -> Result<(), String> {
        if signal.is_some() {
            return Err(describe(run, signal));
        }
        common::check_ok_run(run)
    };
    let (runs, failures) = run_cases(&cases, ok);
    assert!(
        failures.is_empty(),
        "{} of {runs} runs failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// More rows than an Int64 count holds (a proxy over an endless handle claiming 2^63 bytes): refused when the scan
/// is planned, never answered with a wrapped, negative `count(*)`. Half as many rows plan in bounded memory (the
/// slabs grow instead of multiplying) and count exactly, from statistics.
#[cfg(feature = "sql")]
#[tokio::test]
async fn a_scan_beyond_i64_rows_is_refused() {
    use datafusion::arrow::array::Int64Array;
    use voxelscan::dtype::{DType, Scalar};
    use voxelscan::io::local::MmapMode;
    use voxelscan::proxy::{ArrayProxy, ArraySpec, ProxyOptions};

    let ctx = voxelscan::table::session_context(datafusion::prelude::SessionConfig::new());
    let register = |name: &str, shape: Vec<usize>| {
        let zero = std::fs::File::open("/dev/zero").expect("/dev/zero");
        let spec = ArraySpec::new(shape, DType::native(Scalar::U8));
        let opts = ProxyOptions {
            mmap: MmapMode::Off,
            ..Default::default()
        };
        let proxy = ArrayProxy::new(zero, &spec, opts).expect("a proxy");
        voxelscan::table::register_proxy(&ctx, name, proxy, &Default::default())
    };
    register("t", vec![2, 1 << 62]).expect("registered");
    register("half", vec![1 << 62]).expect("registered");
    // One axis longer than the coordinate sets reach is refused outright, not cut short.
    let long = register("long", vec![1 << 63]).expect_err("refused");
    assert!(
        long.to_string().contains("longer than a table can index"),
        "{long}"
    );
    let err = match ctx.sql("SELECT count(*) FROM t").await {
        Ok(df) => df.collect().await.err(),
        Err(e) => Some(e),
    };
    let text = err.map(|e| e.to_string()).unwrap_or_default();
    assert!(
        text.contains("9223372036854775808 rows, more than a 64-bit count can hold"),
        "{text}"
    );
    let batches = ctx
        .sql("SELECT count(*) AS n FROM half")
        .await
        .expect("planned")
        .collect()
        .await
        .expect("counted");
    let n = batches[0]
        .column(0)
        .as_any()
        .downcast_ref::<Int64Array>()
        .map(|a| a.value(0));
    assert_eq!(n, Some(1 << 62));
}
