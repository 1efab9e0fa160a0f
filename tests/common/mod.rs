//! Helpers shared by the integration tests that compare `voxelscan` with nibabel's answers: an independent `.npy`
//! reader and comparer (exact dtype string, shape, and element bytes; any NaN equals any NaN), the comparison of
//! `voxelscan info` JSON with expected fields, and running the CLI.
#![allow(dead_code)] // each test binary uses a different part

// Real nginx and Garage servers for the object-storage tests (object_store comes with the `remote` feature).
#[cfg(feature = "remote")]
pub mod servers;
// Running SQL and measuring its scans.
#[cfg(feature = "sql")]
pub mod sql;
// Certificates for the cluster's TLS tests.
pub mod certs;

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

/// The CLI under test.
pub fn voxelscan_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_voxelscan"))
}

/// The repository root (where Cargo.toml is).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The test venv's Python (numpy, nibabel): `$VOXELSCAN_PYTHON`, else `.venv/bin/python` (`.ci/run` makes it).
pub fn python() -> PathBuf {
    std::env::var_os("VOXELSCAN_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".venv/bin/python"))
}

/// Run `python SCRIPT ARGS` (SCRIPT relative to the repository root) and return its standard output; any failure
/// (no Python, the script failing) panics with what to do, so an oracle test never passes without its oracle.
pub fn run_python(script: &str, args: &[&Path]) -> String {
    let python = python();
    let out = Command::new(&python)
        .arg(repo_root().join(script))
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {} ({e}): run .ci/run once, or make .venv from tests/py/requirements.txt",
                python.display()
            )
        });
    assert!(
        out.status.success(),
        "{script} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// One finished CLI run.
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Run `voxelscan ARGS` in `dir`.
pub fn run_cli(dir: &Path, args: &[String]) -> Run {
    match Command::new(voxelscan_bin())
        .args(args)
        .current_dir(dir)
        .output()
    {
        Ok(out) => Run {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        },
        Err(e) => Run {
            code: None,
            stdout: String::new(),
            stderr: format!("could not start {}: {e}", voxelscan_bin().display()),
        },
    }
}

/// The contract for failures: exit status 2 and exactly one stderr line, starting `error:`.
pub fn check_error_run(run: &Run) -> Result<(), String> {
    let lines: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .collect();
    if run.code != Some(2) {
        return Err(format!(
            "expected exit 2 with `error:`, got exit {:?}; stderr: {}",
            run.code,
            first_line(&run.stderr)
        ));
    }
    match lines.as_slice() {
        [one] if one.starts_with("error:") => Ok(()),
        _ => Err(format!(
            "exit 2 but stderr is not one `error:` line: {:?}",
            run.stderr
        )),
    }
}

/// A successful run: exit 0.
pub fn check_ok_run(run: &Run) -> Result<(), String> {
    if run.code == Some(0) {
        Ok(())
    } else {
        Err(format!("exit {:?}: {}", run.code, first_line(&run.stderr)))
    }
}

pub fn first_line(text: &str) -> String {
    let line = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
    let mut s: String = line.chars().take(300).collect();
    if line.chars().count() > 300 {
        s.push('…');
    }
    s
}

/// A command line as one would type it (for failure reports).
pub fn shell_line(args: &[String]) -> String {
    let quoted: Vec<String> = args
        .iter()
        .map(|a| {
            let plain = !a.is_empty()
                && a.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./=:,".contains(c));
            if plain {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', "'\\''"))
            }
        })
        .collect();
    format!("voxelscan {}", quoted.join(" "))
}

// ------------------------------------------------------------------------------------------------------- npy

/// A `.npy` file, read without trusting any of the crate's own code.
#[derive(Debug)]
pub struct Npy {
    /// The `descr` value as written, whitespace removed (`'<f8'`, `[('R','|u1'),...]`).
    pub descr: String,
    pub fortran: bool,
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
    pub elem: ElemType,
}

/// What is needed to compare elements: size, numpy kind letter, byte order char.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ElemType {
    pub size: usize,
    pub kind: char,
    pub order: char,
}

pub fn read_npy(path: &Path) -> Result<Npy, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    parse_npy(&bytes).map_err(|e| format!("{}: {e}", path.display()))
}

pub fn parse_npy(bytes: &[u8]) -> Result<Npy, String> {
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err("not a .npy file (bad magic)".into());
    }
    let major = bytes[6];
    let (hlen, start) = match major {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 => {
            let b = bytes.get(8..12).ok_or("truncated .npy header")?;
            (u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize, 12)
        }
        v => return Err(format!("unknown .npy version {v}")),
    };
    let header = bytes
        .get(start..start + hlen)
        .ok_or("truncated .npy header")?;
    let header = std::str::from_utf8(header).map_err(|_| "non-UTF-8 .npy header")?;
    if !header.ends_with('\n') {
        return Err(format!("header does not end with a newline: {header:?}"));
    }
    let descr = dict_value(header, "descr")?;
    let fortran = match dict_value(header, "fortran_order")?.as_str() {
        "True" => true,
        "False" => false,
        other => return Err(format!("bad fortran_order {other}")),
    };
    let shape = parse_shape(&dict_value(header, "shape")?)?;
    let elem = elem_type(&descr)?;
    let count: usize = shape.iter().product();
    let data = bytes[start + hlen..].to_vec();
    if data.len() != count * elem.size {
        return Err(format!(
            "{} data bytes for shape {:?} of {descr} (want {})",
            data.len(),
            shape,
            count * elem.size
        ));
    }
    Ok(Npy {
        descr,
        fortran,
        shape,
        data,
        elem,
    })
}

/// The raw text of `'key': VALUE` in the header dict (whitespace removed), VALUE ending at the `,` or `}` at depth 0.
fn dict_value(header: &str, key: &str) -> Result<String, String> {
    let pat = format!("'{key}':");
    let at = header
        .find(&pat)
        .ok_or_else(|| format!("header has no '{key}': {header:?}"))?;
    let rest = &header[at + pat.len()..];
    let mut depth = 0i32;
    let mut quote = None;
    let mut end = rest.len();
    for (i, c) in rest.char_indices() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '\'' | '"') => quote = Some(c),
            (None, '(' | '[' | '{') => depth += 1,
            (None, ')' | ']') => depth -= 1,
            (None, '}') if depth == 0 => {
                end = i;
                break;
            }
            (None, '}') => depth -= 1,
            (None, ',') if depth == 0 => {
                end = i;
                break;
            }
            _ => {}
        }
    }
    Ok(rest[..end]
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect::<String>()
        .replace('"', "'"))
}

fn parse_shape(text: &str) -> Result<Vec<usize>, String> {
    let inner = text
        .strip_prefix('(')
        .and_then(|t| t.strip_suffix(')'))
        .ok_or(format!("bad shape {text}"))?;
    inner
        .split(',')
        .filter(|p| !p.is_empty())
        .map(|p| {
            p.trim_end_matches('L')
                .parse::<usize>()
                .map_err(|_| format!("bad shape {text}"))
        })
        .collect()
}

/// Size, kind and byte order of a descr: `'<f8'` or a record list `[('R','|u1'),('G','|u1'),('B','|u1')]`.
fn elem_type(descr: &str) -> Result<ElemType, String> {
    if let Some(simple) = descr.strip_prefix('\'').and_then(|d| d.strip_suffix('\'')) {
        let mut chars = simple.chars();
        let order = chars.next().ok_or("empty descr")?;
        let kind = chars.next().ok_or("short descr")?;
        let size: usize = chars
            .as_str()
            .parse()
            .map_err(|_| format!("bad descr {descr}"))?;
        if !"<>|=".contains(order) {
            return Err(format!("descr without byte order {descr}"));
        }
        return Ok(ElemType { size, kind, order });
    }
    if descr.starts_with('[') {
        // Record: sum of the fields' sizes; compared as plain bytes.
        let mut size = 0;
        for part in descr.split('\'').skip(1).step_by(2) {
            if part.len() >= 3 && "<>|=".contains(&part[..1]) {
                size += part[2..].parse::<usize>().unwrap_or(0);
            }
        }
        if size == 0 {
            return Err(format!("bad record descr {descr}"));
        }
        return Ok(ElemType {
            size,
            kind: 'V',
            order: '|',
        });
    }
    Err(format!("bad descr {descr}"))
}

impl Npy {
    /// The elements in C (row-major) order, each `elem.size` bytes.
    pub fn c_order_bytes(&self) -> Vec<u8> {
        if !self.fortran || self.shape.len() < 2 {
            return self.data.clone();
        }
        let n = self.shape.len();
        let size = self.elem.size;
        let count: usize = self.shape.iter().product();
        let mut fstride = vec![1usize; n];
        for k in 1..n {
            fstride[k] = fstride[k - 1] * self.shape[k - 1];
        }
        let mut out = Vec::with_capacity(self.data.len());
        let mut idx = vec![0usize; n];
        for _ in 0..count {
            let off: usize = idx.iter().zip(&fstride).map(|(i, s)| i * s).sum();
            out.extend_from_slice(&self.data[off * size..(off + 1) * size]);
            // Next C-order index: the last axis runs fastest.
            for k in (0..n).rev() {
                idx[k] += 1;
                if idx[k] < self.shape[k] {
                    break;
                }
                idx[k] = 0;
            }
        }
        out
    }

    /// Element `i` (C order) of `c_bytes` as text, for reports.
    pub fn show(&self, c_bytes: &[u8], i: usize) -> String {
        let b = &c_bytes[i * self.elem.size..(i + 1) * self.elem.size];
        let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
        match decode(self.elem, b) {
            Some(v) => format!("{v} (0x{hex})"),
            None => format!("0x{hex}"),
        }
    }
}

/// Compare an actual `.npy` with the expected one: same descr, same shape, same elements (NaN == NaN).
pub fn compare_npy(expected: &Npy, actual: &Npy) -> Result<(), String> {
    if expected.descr != actual.descr || expected.shape != actual.shape {
        return Err(format!(
            "expected {} {:?}, got {} {:?}",
            expected.descr, expected.shape, actual.descr, actual.shape
        ));
    }
    let e = expected.c_order_bytes();
    let a = actual.c_order_bytes();
    let size = expected.elem.size;
    let count = e.len() / size.max(1);
    let mut bad = Vec::new();
    for i in 0..count {
        let (x, y) = (&e[i * size..(i + 1) * size], &a[i * size..(i + 1) * size]);
        if x != y && !both_nan(expected.elem, x, y) {
            bad.push(i);
        }
    }
    match bad.first() {
        None => Ok(()),
        Some(&i) => Err(format!(
            "{} of {count} elements differ; first at {:?}: expected {}, got {}",
            bad.len(),
            unravel(i, &expected.shape),
            expected.show(&e, i),
            actual.show(&a, i)
        )),
    }
}

fn unravel(mut i: usize, shape: &[usize]) -> Vec<usize> {
    let mut idx = vec![0; shape.len()];
    for k in (0..shape.len()).rev() {
        let n = shape[k].max(1);
        idx[k] = i % n;
        i /= n;
    }
    idx
}

fn both_nan(t: ElemType, x: &[u8], y: &[u8]) -> bool {
    match t.kind {
        'f' => is_nan(t.order, x) && is_nan(t.order, y),
        'c' => {
            let h = t.size / 2;
            let part = |a: &[u8], b: &[u8]| a == b || (is_nan(t.order, a) && is_nan(t.order, b));
            part(&x[..h], &y[..h]) && part(&x[h..], &y[h..])
        }
        _ => false,
    }
}

fn uint_of(order: char, b: &[u8]) -> u64 {
    let mut v = 0u64;
    let big = order == '>';
    for k in 0..b.len() {
        let byte = if big { b[k] } else { b[b.len() - 1 - k] };
        v = (v << 8) | byte as u64;
    }
    v
}

fn is_nan(order: char, b: &[u8]) -> bool {
    let v = uint_of(order, b);
    match b.len() {
        2 => (v & 0x7c00) == 0x7c00 && (v & 0x03ff) != 0,
        4 => (v & 0x7f80_0000) == 0x7f80_0000 && (v & 0x007f_ffff) != 0,
        8 => {
            (v & 0x7ff0_0000_0000_0000) == 0x7ff0_0000_0000_0000 && (v & 0x000f_ffff_ffff_ffff) != 0
        }
        _ => false,
    }
}

/// Decode one numeric element to text (for reports) — f2 shown through f32.
fn decode(t: ElemType, b: &[u8]) -> Option<String> {
    let v = uint_of(t.order, b);
    Some(match (t.kind, t.size) {
        ('u', _) => v.to_string(),
        ('i', n) => {
            let shift = 64 - 8 * n as u32;
            (((v << shift) as i64) >> shift).to_string()
        }
        ('f', 2) => format!("{:?}", half_to_f32(v as u16)),
        ('f', 4) => format!("{:?}", f32::from_bits(v as u32)),
        ('f', 8) => format!("{:?}", f64::from_bits(v)),
        ('c', n) => {
            let h = n / 2;
            let re = decode(
                ElemType {
                    size: h,
                    kind: 'f',
                    order: t.order,
                },
                &b[..h],
            )?;
            let im = decode(
                ElemType {
                    size: h,
                    kind: 'f',
                    order: t.order,
                },
                &b[h..],
            )?;
            format!("{re}+{im}j")
        }
        _ => return None,
    })
}

fn half_to_f32(h: u16) -> f32 {
    let sign = if h & 0x8000 != 0 { -1.0 } else { 1.0 };
    let exp = (h >> 10) & 0x1f;
    let mant = (h & 0x3ff) as f32;
    match exp {
        0 => sign * mant * 2f32.powi(-24),
        31 if mant == 0.0 => sign * f32::INFINITY,
        31 => f32::NAN,
        e => sign * (1.0 + mant / 1024.0) * 2f32.powi(e as i32 - 15),
    }
}

/// Every element as f64 (for sums); None for records.
pub fn to_f64(npy: &Npy) -> Option<Vec<f64>> {
    let bytes = npy.c_order_bytes();
    let t = npy.elem;
    bytes
        .chunks(t.size.max(1))
        .map(|b| {
            let v = uint_of(t.order, b);
            Some(match (t.kind, t.size) {
                ('u', _) => v as f64,
                ('i', n) => {
                    let shift = 64 - 8 * n as u32;
                    (((v << shift) as i64) >> shift) as f64
                }
                ('f', 2) => half_to_f32(v as u16) as f64,
                ('f', 4) => f32::from_bits(v as u32) as f64,
                ('f', 8) => f64::from_bits(v),
                _ => return None,
            })
        })
        .collect()
}

// ------------------------------------------------------------------------------------------------------ info

/// Compare `voxelscan info` output with expected fields. Strings, shape and offset exactly; slope/inter exactly
/// (non-finite ones are the strings "nan", "inf", "-inf": sign and NaN-ness checked); affine and zooms within `tol`
/// (relative to max(1, |expected|)); a null expected affine/zooms is not checked.
pub fn compare_info(expected: &Value, stdout: &str, tol: f64) -> Result<(), String> {
    let actual: Value = serde_json::from_str(stdout.trim()).map_err(|e| {
        format!(
            "stdout is not one JSON object ({e}): {}",
            first_line(stdout)
        )
    })?;
    let exp = expected
        .as_object()
        .ok_or("expected info is not an object")?;
    let mut problems = Vec::new();
    for (key, want) in exp {
        let Some(got) = actual.get(key) else {
            if !want.is_null() {
                problems.push(format!("{key} missing"));
            }
            continue;
        };
        let ok = match key.as_str() {
            "slope" | "inter" => same_factor(want, got),
            "affine" | "zooms" => want.is_null() || close(want, got, tol),
            _ => want == got || same_number(want, got),
        };
        if !ok {
            problems.push(format!("{key}: expected {want}, got {got}"));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

fn same_number(a: &Value, b: &Value) -> bool {
    matches!((a.as_f64(), b.as_f64()), (Some(x), Some(y)) if x == y)
}

/// Finite factors as equal numbers; non-finite ones as the same string, `nan`, `inf` or `-inf` (never `null`).
fn same_factor(want: &Value, got: &Value) -> bool {
    match want {
        Value::String(s) => matches!(got, Value::String(g) if g == s),
        _ => same_number(want, got),
    }
}

fn close(want: &Value, got: &Value, tol: f64) -> bool {
    match (want, got) {
        (Value::Array(w), Value::Array(g)) => {
            w.len() == g.len() && w.iter().zip(g).all(|(a, b)| close(a, b, tol))
        }
        _ => match (want.as_f64(), got.as_f64()) {
            (Some(a), Some(b)) => (a - b).abs() <= tol * a.abs().max(1.0),
            _ => false,
        },
    }
}

/// An int16 NIfTI scaled by 0.5 and +10 whose stored voxel (i, j, k, t) is (7i + 3j + 5k + 11t + seed) mod 101: the
/// images of `queries/` (seed 0) and of the cluster tests.
pub fn pattern_image(path: &Path, shape: [usize; 4], seed: usize) {
    use voxelscan::dtype::{DType, Scalar};
    let mut data = Vec::with_capacity(shape.iter().product::<usize>() * 2);
    for t in 0..shape[3] {
        for k in 0..shape[2] {
            for j in 0..shape[1] {
                for i in 0..shape[0] {
                    let v = ((7 * i + 3 * j + 5 * k + 11 * t + seed) % 101) as i16;
                    data.extend_from_slice(&v.to_le_bytes());
                }
            }
        }
    }
    voxelscan::synth::write_nifti1(
        path,
        &shape,
        DType::native(Scalar::I16),
        0.5,
        10.0,
        &data,
        false,
    )
    .unwrap();
}

/// The `bids/` of `queries/` (tests/queries.rs, tests/ballista.rs): three subjects' `func/sub-0N_task-faces_bold.nii` (the pattern with seeds 0, 1, 2; TR 2000 ms), their
/// `participants.tsv` (one age `n/a`) and sub-01's `events.tsv`.
pub fn bids_fixture(root: &Path) {
    for (n, shape) in [[8, 8, 4, 10], [8, 8, 4, 10], [6, 6, 4, 10]]
        .iter()
        .enumerate()
    {
        let func = root.join(format!("bids/sub-0{}/func", n + 1));
        std::fs::create_dir_all(&func).unwrap();
        let path = func.join(format!("sub-0{}_task-faces_bold.nii", n + 1));
        pattern_image(&path, *shape, n);
        // pixdim[4] = 2000 with xyzt_units = mm + msec: a TR of 2 s.
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[92..96].copy_from_slice(&2000f32.to_le_bytes());
        bytes[123] = 2 | 16;
        std::fs::write(&path, bytes).unwrap();
    }
    std::fs::write(
        root.join("bids/participants.tsv"),
        "participant_id\tage\tsex\nsub-01\t34\tF\nsub-02\tn/a\tM\nsub-03\t27\tn/a\n",
    )
    .unwrap();
    std::fs::write(
        root.join("bids/sub-01/func/sub-01_task-faces_events.tsv"),
        "onset\tduration\ttrial_type\n0.0\t4.0\tface\n5.0\t2.0\thouse\n10.5\t4.0\tface\n",
    )
    .unwrap();
}

/// An int16 NIfTI of `shape` whose voxel (i, j, k) is `label(i, j, k)`: atlases and masks.
pub fn label_image(path: &Path, shape: [usize; 3], label: impl Fn(usize, usize, usize) -> i16) {
    use voxelscan::dtype::{DType, Scalar};
    let mut data = Vec::with_capacity(shape.iter().product::<usize>() * 2);
    for k in 0..shape[2] {
        for j in 0..shape[1] {
            for i in 0..shape[0] {
                data.extend_from_slice(&label(i, j, k).to_le_bytes());
            }
        }
    }
    let dtype = DType::native(Scalar::I16);
    voxelscan::synth::write_nifti1(path, &shape, dtype, 1.0, 0.0, &data, false).unwrap();
}

/// The join fixtures of `queries/`, on the 8×8×4 grid of its `bold.nii`: `atlas.nii` (labels `i / 3 + 3 (j / 4)`,
/// 0 the background), `mask.nii` (1 where `(i + 2j + k) % 3 == 0`) and `peaks.csv` (three named coordinates).
pub fn atlas_fixtures(dir: &Path) {
    label_image(&dir.join("atlas.nii"), [8, 8, 4], |i, j, _| {
        (i / 3 + 3 * (j / 4)) as i16
    });
    label_image(&dir.join("mask.nii"), [8, 8, 4], |i, j, k| {
        i16::from((i + 2 * j + k) % 3 == 0)
    });
    std::fs::write(
        dir.join("peaks.csv"),
        "name,i,j,k\nmotor,6,2,1\nvisual,1,7,3\nprecuneus,4,4,2\n",
    )
    .unwrap();
}

/// `queries/*.sql`, sorted.
pub fn query_files() -> Vec<PathBuf> {
    let queries = Path::new(env!("CARGO_MANIFEST_DIR")).join("queries");
    let mut names: Vec<_> = std::fs::read_dir(&queries)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "sql"))
        .collect();
    names.sort();
    assert!(names.len() >= 6, "queries/ should hold the example queries");
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    fn npy_bytes(descr: &str, fortran: bool, shape: &str, data: &[u8]) -> Vec<u8> {
        let mut header =
            format!("{{'descr': {descr}, 'fortran_order': {fortran}, 'shape': {shape}, }}");
        header = header.replace("true", "True").replace("false", "False");
        while (10 + header.len() + 1) % 64 != 0 {
            header.push(' ');
        }
        header.push('\n');
        let mut out = b"\x93NUMPY\x01\x00".to_vec();
        out.extend_from_slice(&(header.len() as u16).to_le_bytes());
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(data);
        out
    }

    #[test]
    fn fortran_and_c_layouts_compare_equal() {
        // [[1, 2, 3], [4, 5, 6]] as <i2, C and F.
        let c: Vec<u8> = [1i16, 2, 3, 4, 5, 6]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let f: Vec<u8> = [1i16, 4, 2, 5, 3, 6]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let a = parse_npy(&npy_bytes("'<i2'", false, "(2, 3)", &c)).unwrap();
        let b = parse_npy(&npy_bytes("'<i2'", true, "(2, 3)", &f)).unwrap();
        assert!(compare_npy(&a, &b).is_ok());
        let g: Vec<u8> = [1i16, 4, 2, 5, 3, 7]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let d = parse_npy(&npy_bytes("'<i2'", true, "(2, 3)", &g)).unwrap();
        let err = compare_npy(&a, &d).unwrap_err();
        assert!(
            err.contains("[1, 2]") && err.contains("expected 6") && err.contains("got 7"),
            "{err}"
        );
    }

    #[test]
    fn nan_payloads_equal_but_dtype_and_sign_matter() {
        let nan1 = f64::from_bits(0x7ff8_0000_0000_0001).to_be_bytes();
        let nan2 = f64::NAN.to_be_bytes();
        let a = parse_npy(&npy_bytes("'>f8'", false, "(1,)", &nan1)).unwrap();
        let b = parse_npy(&npy_bytes("'>f8'", false, "(1,)", &nan2)).unwrap();
        assert!(compare_npy(&a, &b).is_ok());
        let c = parse_npy(&npy_bytes("'<f8'", false, "(1,)", &f64::NAN.to_le_bytes())).unwrap();
        assert!(
            compare_npy(&a, &c).is_err(),
            "byte order is part of the dtype"
        );
        let z = parse_npy(&npy_bytes("'<f8'", false, "(1,)", &0.0f64.to_le_bytes())).unwrap();
        let nz = parse_npy(&npy_bytes("'<f8'", false, "(1,)", &(-0.0f64).to_le_bytes())).unwrap();
        assert!(compare_npy(&z, &nz).is_err(), "-0.0 and 0.0 differ bitwise");
    }

    #[test]
    fn records_and_scalars_parse() {
        let r = parse_npy(&npy_bytes(
            "[('R', '|u1'), ('G', '|u1'), ('B', '|u1')]",
            false,
            "(2,)",
            &[1, 2, 3, 4, 5, 6],
        ))
        .unwrap();
        assert_eq!(r.elem.size, 3);
        let s = parse_npy(&npy_bytes("'<u4'", false, "()", &7u32.to_le_bytes())).unwrap();
        assert_eq!(s.shape, Vec::<usize>::new());
        assert!(parse_npy(&npy_bytes("'<u4'", false, "(2,)", &7u32.to_le_bytes())).is_err());
    }

    #[test]
    fn info_comparison() {
        let want: Value = serde_json::json!({"format": "raw", "slope": "nan", "inter": 0.0, "shape": [2, 3],
            "affine": null, "zooms": [1.0, 2.0]});
        assert!(compare_info(&want, r#"{"format":"raw","slope":"nan","inter":0.0,"shape":[2,3],"zooms":[1.0,2.0000001]}"#, 1e-6).is_ok());
        // null, the other infinity or a number for a non-finite factor: wrong.
        for slope in ["null", r#""inf""#, r#""-inf""#, "1.0"] {
            let got = format!(
                r#"{{"format":"raw","slope":{slope},"inter":0.0,"shape":[2,3],"zooms":[1.0,2.0]}}"#
            );
            assert!(compare_info(&want, &got, 1e-6).is_err(), "{got}");
        }
        let minus: Value = serde_json::json!({"slope": "-inf"});
        assert!(compare_info(&minus, r#"{"slope":"-inf"}"#, 1e-6).is_ok());
        assert!(compare_info(&minus, r#"{"slope":"inf"}"#, 1e-6).is_err());
        let err = compare_info(
            &want,
            r#"{"format":"npy","slope":1.0,"inter":0.0,"shape":[2,3],"zooms":[1.0,2.0]}"#,
            1e-6,
        )
        .unwrap_err();
        assert!(err.contains("format") && err.contains("slope"), "{err}");
    }
}
