//! The CLI contract of issue 2: `info` JSON fields, `slice` outputs for raw specs, and the error form
//! (exit status 2, one line starting `error:`) for every class of bad input.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use voxelscan::dtype::{ByteOrder, DType, Scalar};
use voxelscan::formats::read_header;
use voxelscan::proxy::{ArrayProxy, ProxyOptions};
use voxelscan::synth;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_voxelscan"))
}

fn run(args: &[&str]) -> Output {
    bin().args(args).output().expect("run voxelscan")
}

/// Exit status 2 and exactly one stderr line starting `error:` that mentions `needle`.
fn assert_error(out: &Output, needle: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {err}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "want one line, got: {err}");
    assert!(lines[0].starts_with("error: "), "{err}");
    assert!(
        lines[0].to_lowercase().contains(&needle.to_lowercase()),
        "'{needle}' not in: {err}"
    );
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/nibabel")
        .join(name)
}

fn write_small_nifti(dir: &Path, name: &str, slope: f32, inter: f32) -> PathBuf {
    let path = dir.join(name);
    let data = synth::random_i16_le(2 * 3 * 4, 7, -100, 100);
    synth::write_nifti1(
        &path,
        &[2, 3, 4],
        DType::new(Scalar::I16, ByteOrder::Little),
        slope,
        inter,
        &data,
        false,
    )
    .unwrap();
    path
}

fn read_npy(path: &Path) -> (String, Vec<usize>, Vec<f64>) {
    let h = read_header(path).expect("read npy header");
    let p = ArrayProxy::from_header(&h, ProxyOptions::default()).unwrap();
    let a = p.to_array().unwrap();
    let v = a.to_f64_c_order().unwrap().iter().copied().collect();
    (a.dtype.numpy_str(), a.shape.clone(), v)
}

#[test]
fn info_has_every_contract_field() {
    let out = run(&["info", fixture("functional.nii").to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    for key in [
        "format",
        "shape",
        "dtype",
        "scaled_dtype",
        "offset",
        "slope",
        "inter",
        "order",
        "affine",
        "zooms",
    ] {
        assert!(v.get(key).is_some(), "missing {key} in {v}");
    }
    assert_eq!(v["format"], "Nifti1Image");
    assert_eq!(v["dtype"], "<i2");
    assert_eq!(v["scaled_dtype"], "<f8");
    assert_eq!(v["order"], "F");
    assert_eq!(v["shape"], serde_json::json!([17, 21, 3, 20]));
    assert_eq!(v["affine"].as_array().unwrap().len(), 4);
}

/// JSON has no NaN or infinity: `info` spells non-finite factors as the strings "nan", "inf" and "-inf" (the spelling
/// `--raw` takes), so that their sign and NaN-ness survive; finite factors stay numbers.
#[test]
fn info_spells_non_finite_factors_with_their_sign() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("f.raw");
    std::fs::write(&raw, vec![0u8; 2 * 3 * 4]).unwrap();
    let r = raw.to_str().unwrap();
    let cases = [
        (
            "slope=nan",
            serde_json::json!("nan"),
            serde_json::json!(0.0),
        ),
        (
            "slope=inf;inter=-inf",
            serde_json::json!("inf"),
            serde_json::json!("-inf"),
        ),
        (
            "slope=-inf;inter=nan",
            serde_json::json!("-inf"),
            serde_json::json!("nan"),
        ),
        (
            "slope=f4:-inf;inter=f4:inf",
            serde_json::json!("-inf"),
            serde_json::json!("inf"),
        ),
        (
            "slope=2.5;inter=-1.0",
            serde_json::json!(2.5),
            serde_json::json!(-1.0),
        ),
    ];
    for (factors, slope, inter) in cases {
        let spec = format!("shape=2,3;dtype=<f4;{factors}");
        let out = run(&["info", r, "--raw", &spec]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{spec}: {stderr}");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
        assert_eq!((&v["slope"], &v["inter"]), (&slope, &inter), "{spec}: {v}");
    }
}

#[test]
fn raw_spec_slices_with_scaling_and_c_order() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("a.raw");
    let vals: Vec<i16> = (0..24).map(|x| x * 3 - 20).collect();
    let mut bytes = vec![0xAAu8; 16];
    bytes.extend(vals.iter().flat_map(|v| v.to_le_bytes()));
    std::fs::write(&raw, &bytes).unwrap();
    let out_path = dir.path().join("o.npy");
    let out = run(&[
        "slice",
        raw.to_str().unwrap(),
        "1, ::-1",
        "-o",
        out_path.to_str().unwrap(),
        "--raw",
        "shape=2,3,4;dtype=<i2;offset=16;slope=2.0;inter=1.0;order=C",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (dt, shape, got) = read_npy(&out_path);
    assert_eq!(dt, "<f8");
    assert_eq!(shape, vec![3, 4]);
    // C order: element [1, r, c] = vals[12 + 4r + c]; rows reversed.
    let want: Vec<f64> = [2, 1, 0]
        .iter()
        .flat_map(|&r| (0..4).map(move |c| (r, c)))
        .map(|(r, c)| vals[12 + 4 * r + c] as f64 * 2.0 + 1.0)
        .collect();
    assert_eq!(got, want);

    // A float32 factor gives float32 output for int16 storage.
    let out = run(&[
        "slice",
        raw.to_str().unwrap(),
        "0, 0",
        "-o",
        out_path.to_str().unwrap(),
        "--raw",
        "shape=2,3,4;dtype=<i2;offset=16;slope=f4:2.5;order=F",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (dt, shape, got) = read_npy(&out_path);
    assert_eq!((dt.as_str(), shape), ("<f4", vec![4]));
    // F order: element [0, 0, k] = vals[6k].
    let want: Vec<f64> = (0..4)
        .map(|k| (vals[6 * k] as f32 * 2.5f32) as f64)
        .collect();
    assert_eq!(got, want);
}

#[test]
fn unscaled_and_dtype_options() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_small_nifti(dir.path(), "s.nii", 2.0, 10.0);
    let out_path = dir.path().join("o.npy");
    let p = path.to_str().unwrap();
    let o = out_path.to_str().unwrap();
    assert!(
        run(&["slice", p, "...", "-o", o, "--unscaled"])
            .status
            .success()
    );
    assert_eq!(read_npy(&out_path).0, "<i2");
    assert!(
        run(&["slice", p, "-1", "-o", o, "--dtype", ">f4"])
            .status
            .success()
    );
    let (dt, shape, _) = read_npy(&out_path);
    assert_eq!((dt.as_str(), shape), (">f4", vec![3, 4]));
    for mmap in ["c", "r", "off"] {
        assert!(
            run(&[
                "slice",
                p,
                ":, 1",
                "-o",
                o,
                "--mmap",
                mmap,
                "--keep-file-open"
            ])
            .status
            .success()
        );
    }
}

#[test]
fn errors_are_one_line_with_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let good = write_small_nifti(dir.path(), "g.nii", 1.0, 0.0);
    let g = good.to_str().unwrap();
    let o = dir.path().join("o.npy");
    let o = o.to_str().unwrap();

    assert_error(&run(&["info", "/no/such/file.nii"]), "/no/such/file.nii");
    assert_error(
        &run(&["slice", "/no/such/file.nii", "0", "-o", o]),
        "/no/such/file.nii",
    );

    let junk = dir.path().join("junk.nii");
    std::fs::write(&junk, vec![0x5Au8; 400]).unwrap();
    assert_error(&run(&["info", junk.to_str().unwrap()]), "junk.nii");

    let bytes = std::fs::read(&good).unwrap();
    let short = dir.path().join("short.nii");
    std::fs::write(&short, &bytes[..bytes.len() - 10]).unwrap();
    assert_error(
        &run(&["slice", short.to_str().unwrap(), "...", "-o", o]),
        "short.nii",
    );

    assert_error(&run(&["slice", g, "1,,2", "-o", o]), "");
    assert_error(&run(&["slice", g, "..., 1, ...", "-o", o]), "ellipsis");
    assert_error(&run(&["slice", g, "5", "-o", o]), "out of bounds");
    assert_error(&run(&["slice", g, "-3", "-o", o]), "out of bounds");
    assert_error(&run(&["slice", g, "::0", "-o", o]), "step");
    assert_error(
        &run(&["slice", g, "0, 0, 0, 0", "-o", o]),
        "too many indices",
    );
    assert_error(&run(&["slice", g, "[0, 1]", "-o", o]), "");
    assert_error(&run(&["slice", g, "0", "-o", o, "--dtype", "<x9"]), "x9");
    assert_error(&run(&["slice", g, "0", "-o", o, "--mmap", "rw"]), "rw");
    assert_error(
        &run(&["slice", g, "0", "-o", "/no/such/dir/o.npy"]),
        "/no/such/dir/o.npy",
    );
    assert_error(&run(&["frobnicate"]), "frobnicate");

    let raw = dir.path().join("r.raw");
    std::fs::write(&raw, vec![0u8; 10]).unwrap();
    let r = raw.to_str().unwrap();
    assert_error(
        &run(&["slice", r, "0", "-o", o, "--raw", "shape=2,3,4;dtype=<i2"]),
        "r.raw",
    );
    assert_error(
        &run(&[
            "slice",
            r,
            "0",
            "-o",
            o,
            "--raw",
            "shape=2,3;dtype=<i2;bogus=1",
        ]),
        "bogus",
    );
    assert_error(&run(&["info", r, "--raw", "dtype=<i2"]), "shape");
}

#[test]
fn input_files_are_never_written() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_small_nifti(dir.path(), "w.nii", 2.0, 1.0);
    let before = std::fs::read(&path).unwrap();
    let o = dir.path().join("o.npy");
    for mmap in ["c", "r", "off"] {
        assert!(
            run(&[
                "slice",
                path.to_str().unwrap(),
                "::-1",
                "-o",
                o.to_str().unwrap(),
                "--mmap",
                mmap
            ])
            .status
            .success()
        );
    }
    assert_eq!(std::fs::read(&path).unwrap(), before);
}
