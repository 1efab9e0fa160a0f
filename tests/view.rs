//! `voxelscan view`: pictures checked pixel by pixel. Orientation against nibabel (a marker voxel in asymmetric
//! images with known affines must land where `nib.as_closest_canonical` puts it, drawn as nilearn's `plot_anat`
//! draws RAS+ sections, neurological and radiological); a golden picture with a tolerance; overlay thresholds,
//! opacity and nearest-voxel resampling; bad input.
//!
//! Needs the project's Python with nibabel (`VOXELSCAN_PYTHON`, else `.venv/bin/python`) for the orientation test;
//! without it that test fails, it does not skip. `VOXELSCAN_BLESS=1` rewrites the golden picture.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{check_error_run, check_ok_run, run_cli, shell_line};
use voxelscan::dtype::{ByteOrder, DType, Scalar};

/// Frame around each section and caption strip (README: "Looking at a slice").
const MARGIN: usize = 12;
const CAPTION: usize = 12;
const WHITE: [u8; 3] = [255, 255, 255];
const MARKER: f32 = 1000.0;

type Affine34 = [[f64; 4]; 3];

/// A float32 NIfTI-1 with `affine` as its sform (values in F order).
fn write_image(path: &Path, shape: &[usize], values: &[f32], affine: Affine34) {
    let dt = DType::new(Scalar::F32, ByteOrder::Little);
    let data: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    voxelscan::synth::write_nifti1(path, shape, dt, 1.0, 0.0, &data, false).unwrap();
    let mut bytes = std::fs::read(path).unwrap();
    for (r, row) in affine.iter().enumerate() {
        for (c, v) in row.iter().enumerate() {
            let off = 280 + 16 * r + 4 * c;
            bytes[off..off + 4].copy_from_slice(&(*v as f32).to_le_bytes());
        }
    }
    std::fs::write(path, bytes).unwrap();
}

/// F-order position of a voxel.
fn at(shape: &[usize], voxel: &[usize]) -> usize {
    let mut pos = 0;
    for a in (0..shape.len()).rev() {
        pos = pos * shape[a] + voxel[a];
    }
    pos
}

/// A low, asymmetric background (1 to 20) with `MARKER` at each of `markers`.
fn marker_values(shape: &[usize], markers: &[Vec<usize>]) -> Vec<f32> {
    let n: usize = shape.iter().product();
    let mut v: Vec<f32> = (0..n)
        .map(|p| {
            let (i, j, k) = (
                p % shape[0],
                p / shape[0] % shape[1],
                p / (shape[0] * shape[1]) % shape[2],
            );
            ((i + 2 * j + 3 * k) % 20 + 1) as f32
        })
        .collect();
    for m in markers {
        v[at(shape, m)] = MARKER;
    }
    v
}

fn diag(z: [f64; 3], offset: [f64; 3]) -> Affine34 {
    [
        [z[0], 0.0, 0.0, offset[0]],
        [0.0, z[1], 0.0, offset[1]],
        [0.0, 0.0, z[2], offset[2]],
    ]
}

struct Png {
    width: usize,
    height: usize,
    rgb: Vec<u8>,
}

impl Png {
    fn read(path: &Path) -> Png {
        let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let decoder = png::Decoder::new(std::io::BufReader::new(file));
        let mut reader = decoder.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buf).unwrap();
        assert_eq!(
            (info.color_type, info.bit_depth),
            (png::ColorType::Rgb, png::BitDepth::Eight)
        );
        buf.truncate(info.buffer_size());
        Png {
            width: info.width as usize,
            height: info.height as usize,
            rgb: buf,
        }
    }

    fn pixel(&self, x: usize, y: usize) -> [u8; 3] {
        let p = 3 * (y * self.width + x);
        [self.rgb[p], self.rgb[p + 1], self.rgb[p + 2]]
    }

    /// White pixels inside the image area of a section (`cols` × `rows` at scale 1, frame starting at `x0`), as
    /// (column, row) within the section.
    fn white_in(&self, x0: usize, cols: usize, rows: usize) -> Vec<(usize, usize)> {
        let mut out = Vec::new();
        for row in 0..rows {
            for col in 0..cols {
                if self.pixel(x0 + MARGIN + col, MARGIN + row) == WHITE {
                    out.push((col, row));
                }
            }
        }
        out
    }
}

fn view(dir: &Path, args: &[&str]) -> common::Run {
    let args: Vec<String> = std::iter::once("view")
        .chain(args.iter().copied())
        .map(String::from)
        .collect();
    let run = run_cli(dir, &args);
    if let Err(e) = check_ok_run(&run) {
        panic!("{}: {e}", shell_line(&args));
    }
    run
}

fn python() -> PathBuf {
    let p = std::env::var_os("VOXELSCAN_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| common::repo_root().join(".venv/bin/python"));
    assert!(
        p.exists(),
        "{} is missing: run .ci/run (or make .venv with numpy and nibabel) before this test",
        p.display()
    );
    p
}

/// For each image: where nibabel's closest canonical (RAS+) image has the marker, its shape, and which voxel axis
/// runs along z.
struct Canonical {
    marker: [usize; 3],
    shape: [usize; 3],
    z_axis: usize,
}

const NIBABEL_SCRIPT: &str = r#"
import json, sys
import numpy as np, nibabel as nib
out = {}
for path in sys.argv[1:]:
    img = nib.load(path)
    can = nib.as_closest_canonical(img)
    data = np.asanyarray(can.dataobj)
    found = np.argwhere(data == 1000)
    out[path] = {
        "marker": [int(x) for x in found[0][:3]],
        "shape": [int(x) for x in can.shape[:3]],
        "z_axis": int(np.nonzero(nib.io_orientation(img.affine)[:, 0] == 2)[0][0]),
        "codes": "".join(nib.aff2axcodes(img.affine)),
    }
json.dump(out, sys.stdout)
"#;

fn nibabel_canonical(paths: &[PathBuf]) -> HashMap<PathBuf, Canonical> {
    let out = Command::new(python())
        .arg("-c")
        .arg(NIBABEL_SCRIPT)
        .args(paths)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "nibabel: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let three = |v: &serde_json::Value| -> [usize; 3] {
        std::array::from_fn(|k| v[k].as_u64().unwrap() as usize)
    };
    paths
        .iter()
        .map(|p| {
            let c = &json[p.to_str().unwrap()];
            eprintln!("{}: {}", p.display(), c["codes"]);
            let canonical = Canonical {
                marker: three(&c["marker"]),
                shape: three(&c["shape"]),
                z_axis: c["z_axis"].as_u64().unwrap() as usize,
            };
            (p.clone(), canonical)
        })
        .collect()
}

/// The sections nilearn's `plot_anat` draws through the marker, as (columns, rows, marker column, marker row):
/// sagittal (y across, anterior right; z up), coronal (x across; z up), axial (x across; y up), with x running
/// left→right (neurological) or right→left (radiological).
fn expected_ortho(c: &Canonical, radiological: bool) -> [(usize, usize, usize, usize); 3] {
    let (m, s) = (c.marker, c.shape);
    let x = if radiological { s[0] - 1 - m[0] } else { m[0] };
    [
        (s[1], s[2], m[1], s[2] - 1 - m[2]),
        (s[0], s[2], x, s[2] - 1 - m[2]),
        (s[0], s[1], x, s[1] - 1 - m[1]),
    ]
}

/// The picture has the documented size and the marker (white, the top of the window) exactly once in each
/// section, where expected.
fn check_marker(png: &Png, panels: &[(usize, usize, usize, usize)], what: &str) {
    let width: usize = panels.iter().map(|p| p.0 + 2 * MARGIN).sum();
    let height = panels.iter().map(|p| p.1).max().unwrap() + 2 * MARGIN + CAPTION;
    assert_eq!(
        (png.width, png.height),
        (width, height),
        "{what}: picture size"
    );
    let mut x0 = 0;
    for (n, &(cols, rows, col, row)) in panels.iter().enumerate() {
        assert_eq!(
            png.white_in(x0, cols, rows),
            vec![(col, row)],
            "{what}: section {n} ({cols}x{rows})"
        );
        x0 += cols + 2 * MARGIN;
    }
}

/// In the frame of each section (scale 1), ticks point at the marker's column (above and below) and row (left and
/// right).
fn check_ticks(png: &Png, panels: &[(usize, usize, usize, usize)], what: &str) {
    const TICK: [u8; 3] = [255, 64, 64];
    let mut x0 = 0;
    for (n, &(cols, rows, col, row)) in panels.iter().enumerate() {
        let (x, y) = (x0 + MARGIN + col, MARGIN + row);
        let spots = [
            (x, MARGIN - 1),
            (x, MARGIN + rows),
            (x0 + MARGIN - 1, y),
            (x0 + MARGIN + cols, y),
        ];
        for (px, py) in spots {
            assert_eq!(
                png.pixel(px, py),
                TICK,
                "{what}: section {n}, tick at ({px}, {py})"
            );
        }
        x0 += cols + 2 * MARGIN;
    }
}

/// Affines of every kind the orientation code must handle.
fn affines() -> Vec<(&'static str, Affine34)> {
    let (s, c) = (20f64.to_radians().sin(), 20f64.to_radians().cos());
    let (s2, c2) = (10f64.to_radians().sin(), 10f64.to_radians().cos());
    // Rz(20°) · Rx(10°) · diag(2, 3, 2.5)
    let r = [[c, -s * c2, s * s2], [s, c * c2, -c * s2], [0.0, s2, c2]];
    let z = [2.0, 3.0, 2.5];
    let oblique: Affine34 = std::array::from_fn(|i| {
        [
            r[i][0] * z[0],
            r[i][1] * z[1],
            r[i][2] * z[2],
            [5.0, -7.0, 3.0][i],
        ]
    });
    vec![
        ("ras", diag([2.0, 3.0, 4.0], [-6.0, -12.0, -20.0])),
        // FSL's usual storage: x runs right to left.
        ("las", diag([-2.0, 3.0, 4.0], [6.0, -12.0, -20.0])),
        // i → anterior, j → inferior, k → left.
        (
            "permuted",
            [
                [0.0, 0.0, -2.0, 10.0],
                [3.0, 0.0, 0.0, -9.0],
                [0.0, -4.0, 0.0, 16.0],
            ],
        ),
        ("oblique", oblique),
    ]
}

#[test]
fn marker_lands_where_nibabel_puts_it() {
    let dir = tempfile::tempdir().unwrap();
    let shape = [7, 9, 11];
    let marker = [2, 6, 3];
    let mut paths = Vec::new();
    for (name, affine) in affines() {
        let path = dir.path().join(format!("{name}.nii"));
        write_image(
            &path,
            &shape,
            &marker_values(&shape, &[marker.to_vec()]),
            affine,
        );
        paths.push(path);
    }
    // 4-D: the marker in volume 1 only.
    let shape4 = [7, 9, 11, 2];
    let path4 = dir.path().join("las4d.nii");
    write_image(
        &path4,
        &shape4,
        &marker_values(&shape4, &[vec![2, 6, 3, 1]]),
        diag([-2.0, 3.0, 4.0], [0.0; 3]),
    );
    paths.push(path4.clone());
    let canonical = nibabel_canonical(&paths);
    let out = dir.path().join("out.png");
    let o = out.to_str().unwrap();
    for path in &paths {
        let c = &canonical[path];
        let p = path.to_str().unwrap();
        let at = if *path == path4 { "2,6,3,1" } else { "2,6,3" };
        for radiological in [false, true] {
            let mut args = vec![p, "--at", at, "--scale", "1", "--window", "0,1000", "-o", o];
            if radiological {
                args.push("--radiological");
            }
            view(dir.path(), &args);
            let what = format!("{p} --at {at} radiological={radiological}");
            let png = Png::read(&out);
            check_marker(&png, &expected_ortho(c, radiological), &what);
            check_ticks(&png, &expected_ortho(c, radiological), &what);
            // The axial section alone, by a spec that fixes the voxel axis along z.
            let spec: Vec<String> = (0..3)
                .map(|a| {
                    if a == c.z_axis {
                        marker[a].to_string()
                    } else {
                        ":".into()
                    }
                })
                .chain((*path == path4).then(|| "1".to_string()))
                .collect();
            let spec = spec.join(", ");
            args[1] = &spec;
            args.remove(2);
            view(dir.path(), &args);
            let axial = expected_ortho(c, radiological)[2];
            check_marker(&Png::read(&out), &[axial], &format!("{p} {spec:?}"));
        }
    }
}

#[test]
fn reversed_steps_and_gzip_draw_the_same_picture() {
    let dir = tempfile::tempdir().unwrap();
    let shape = [7, 9, 11];
    let values = marker_values(&shape, &[vec![2, 6, 3]]);
    let plain = dir.path().join("a.nii");
    write_image(&plain, &shape, &values, diag([2.0, 3.0, 4.0], [0.0; 3]));
    let gz = dir.path().join("a.nii.gz");
    {
        use std::io::Write;
        let mut enc = flate2::write::GzEncoder::new(
            std::fs::File::create(&gz).unwrap(),
            flate2::Compression::default(),
        );
        enc.write_all(&std::fs::read(&plain).unwrap()).unwrap();
        enc.finish().unwrap();
    }
    let d = dir.path();
    view(d, &["a.nii", ":, :, 3", "--scale", "2", "-o", "plain.png"]);
    view(
        d,
        &[
            "a.nii",
            "::-1, ::-1, 3",
            "--scale",
            "2",
            "-o",
            "reversed.png",
        ],
    );
    view(d, &["a.nii.gz", ":, :, 3", "--scale", "2", "-o", "gz.png"]);
    let first = Png::read(&d.join("plain.png"));
    for other in ["reversed.png", "gz.png"] {
        let png = Png::read(&d.join(other));
        assert_eq!(
            (png.width, png.height),
            (first.width, first.height),
            "{other}"
        );
        assert!(png.rgb == first.rgb, "{other} differs from plain.png");
    }
}

#[test]
fn default_is_the_middle_axial_section_of_the_first_volume() {
    let dir = tempfile::tempdir().unwrap();
    let shape = [7, 9, 11, 2];
    // k = 11 / 2 = 5: one marker in volume 0, one in volume 1.
    let values = marker_values(&shape, &[vec![2, 6, 5, 0], vec![4, 1, 5, 1]]);
    write_image(
        &dir.path().join("b.nii"),
        &shape,
        &values,
        diag([1.0; 3], [0.0; 3]),
    );
    let run = view(
        dir.path(),
        &["b.nii", "--scale", "1", "--window", "0,1000", "-o", "b.png"],
    );
    let png = Png::read(&dir.path().join("b.png"));
    check_marker(&png, &[(7, 9, 2, 9 - 1 - 6)], "default section");
    assert!(
        run.stderr.contains("axial [:, :, 5, 0]") && run.stderr.contains("z = 5.00 mm"),
        "{}",
        run.stderr
    );
    // Voxels × time is not a spatial section: drawn as imshow draws an array (j down, t across), no letters.
    let run = view(
        dir.path(),
        &[
            "b.nii",
            "2, :, 5, :",
            "--scale",
            "1",
            "--window",
            "0,1000",
            "-o",
            "jt.png",
        ],
    );
    let png = Png::read(&dir.path().join("jt.png"));
    check_marker(&png, &[(2, 9, 0, 6)], "j x t section");
    assert!(
        run.stderr.contains("section [2, :, 5, :] (i=2 k=5)"),
        "{}",
        run.stderr
    );
}

/// A picture close to `tests/data/view/NAME`: same size, every channel within `tol`.
fn check_golden(png_path: &Path, name: &str, tol: u8) {
    let golden = common::repo_root().join("tests/data/view").join(name);
    if std::env::var_os("VOXELSCAN_BLESS").is_some() {
        std::fs::create_dir_all(golden.parent().unwrap()).unwrap();
        std::fs::copy(png_path, &golden).unwrap();
    }
    let (got, want) = (Png::read(png_path), Png::read(&golden));
    assert_eq!(
        (got.width, got.height),
        (want.width, want.height),
        "{name}: size"
    );
    let worst = got
        .rgb
        .iter()
        .zip(&want.rgb)
        .map(|(a, b)| a.abs_diff(*b))
        .max()
        .unwrap_or(0);
    assert!(
        worst <= tol,
        "{name}: a channel differs by {worst} (> {tol})"
    );
}

/// 10×12×8, x flipped, a smooth blob with a signed overlay: three sections, viridis, overlay at 70 %.
fn golden_images(dir: &Path) {
    let shape = [10, 12, 8];
    let n: usize = shape.iter().product();
    let mut base = vec![0f32; n];
    let mut stat = vec![0f32; n];
    for k in 0..8 {
        for j in 0..12 {
            for i in 0..10 {
                let (x, y, z) = (i as f32 - 4.5, j as f32 - 6.0, k as f32 - 3.5);
                let r2 = x * x / 16.0 + y * y / 30.0 + z * z / 9.0;
                let p = at(&shape, &[i, j, k]);
                base[p] = if r2 < 1.0 {
                    100.0 * (1.5 - r2) + i as f32
                } else {
                    0.0
                };
                stat[p] = if i < 4 && j > 6 {
                    4.0
                } else if i > 6 && k < 3 {
                    -3.0
                } else {
                    0.5
                };
            }
        }
    }
    let affine = diag([-2.0, 2.0, 3.0], [9.0, -11.0, -10.0]);
    write_image(&dir.join("base.nii"), &shape, &base, affine);
    write_image(&dir.join("stat.nii"), &shape, &stat, affine);
}

#[test]
fn golden_three_sections_with_overlay() {
    let dir = tempfile::tempdir().unwrap();
    golden_images(dir.path());
    view(
        dir.path(),
        &[
            "base.nii",
            "--at",
            "4,8,2",
            "--cmap",
            "viridis",
            "--overlay",
            "stat.nii",
            "--threshold",
            "1",
            "--alpha",
            "0.7",
            "--scale",
            "4",
            "-o",
            "golden.png",
        ],
    );
    check_golden(&dir.path().join("golden.png"), "ortho_overlay.png", 2);
}

/// A 6×6×3 image of 100 everywhere (grey 128 in the window 0,200) under an overlay.
fn flat_base(dir: &Path) {
    let shape = [6, 6, 3];
    write_image(
        &dir.join("flat.nii"),
        &shape,
        &[100.0; 108],
        diag([1.0; 3], [0.0; 3]),
    );
}

#[test]
fn overlay_threshold_alpha_and_colours() {
    let dir = tempfile::tempdir().unwrap();
    flat_base(dir.path());
    let shape = [6, 6, 3];
    let mut stat = [0f32; 108];
    // Row j = 0 of section k = 1: i = 0..6.
    let row = [-3.0, -1.0, 0.0, 0.5, 3.0, 5.0];
    for (i, v) in row.iter().enumerate() {
        stat[at(&shape, &[i, 0, 1])] = *v;
    }
    stat[at(&shape, &[0, 1, 1])] = f32::NAN;
    write_image(
        &dir.path().join("stat.nii"),
        &shape,
        &stat,
        diag([1.0; 3], [0.0; 3]),
    );
    let d = dir.path();
    let common_args = [
        "flat.nii",
        ":, :, 1",
        "--window",
        "0,200",
        "--scale",
        "1",
        "--overlay",
        "stat.nii",
        "--overlay-cmap",
        "gray",
        "--threshold",
        "1",
    ];
    let mut args = common_args.to_vec();
    args.extend(["--alpha", "1", "-o", "a1.png"]);
    view(d, &args);
    let png = Png::read(&d.join("a1.png"));
    // j = 0 is the bottom row (anterior up); gray over -5..5: v ↦ round(255 (v/5 + 1) / 2).
    let bottom = MARGIN + 5;
    let got: Vec<[u8; 3]> = (0..6).map(|i| png.pixel(MARGIN + i, bottom)).collect();
    let grey = |g: u8| [g, g, g];
    // |v| <= 1 (−1, 0, 0.5) transparent: the base's 128.
    let want = [
        grey(51),
        grey(128),
        grey(128),
        grey(128),
        grey(204),
        grey(255),
    ];
    assert_eq!(got, want);
    // NaN is transparent too; and an untouched voxel (0) shows the base.
    assert_eq!(png.pixel(MARGIN, bottom - 1), grey(128));
    assert_eq!(png.pixel(MARGIN + 3, MARGIN), grey(128));
    // Half opacity: halfway between the base and the overlay colour.
    let mut args = common_args.to_vec();
    args.extend(["--alpha", "0.5", "-o", "a05.png"]);
    view(d, &args);
    let png = Png::read(&d.join("a05.png"));
    assert_eq!(png.pixel(MARGIN + 5, bottom), grey(192)); // (128 + 255) / 2 = 191.5
    assert_eq!(png.pixel(MARGIN, bottom), grey(90)); // (128 + 51) / 2 = 89.5
    assert_eq!(png.pixel(MARGIN + 1, bottom), grey(128));
}

#[test]
fn overlay_on_a_coarser_grid_is_resampled_to_the_nearest_voxel() {
    let dir = tempfile::tempdir().unwrap();
    flat_base(dir.path());
    // 3×3×2 voxels of 2 mm whose centres sit at 2o − 0.5 mm: base voxel i (at i mm) takes overlay voxel
    // round((i + 0.5) / 2) = 0, 1, 1, 2, 2, 3 for i = 0..6 — and 3 is outside.
    let shape = [3, 3, 2];
    let values: Vec<f32> = (0..18)
        .map(|p| (1 + p % 3 + 10 * (p / 3 % 3)) as f32)
        .collect();
    write_image(
        &dir.path().join("coarse.nii"),
        &shape,
        &values,
        diag([2.0; 3], [-0.5; 3]),
    );
    view(
        dir.path(),
        &[
            "flat.nii",
            ":, :, 1",
            "--window",
            "0,200",
            "--scale",
            "1",
            "--overlay",
            "coarse.nii",
            "--overlay-cmap",
            "gray",
            "-o",
            "c.png",
        ],
    );
    let png = Png::read(&dir.path().join("c.png"));
    let max = 23.0; // largest value drawn: o = (2, 2)
    let cell = [0, 1, 1, 2, 2, 3];
    for (j, &cj) in cell.iter().enumerate() {
        for (i, &ci) in cell.iter().enumerate() {
            let got = png.pixel(MARGIN + i, MARGIN + 5 - j);
            let want = if ci > 2 || cj > 2 {
                128
            } else {
                let v = (1 + ci + 10 * cj) as f64;
                ((v / max + 1.0) / 2.0 * 255.0).round() as u8
            };
            assert_eq!(got, [want; 3], "voxel ({i}, {j})");
        }
    }
}

#[test]
fn bad_input_gives_one_error_line_and_no_picture() {
    let dir = tempfile::tempdir().unwrap();
    flat_base(dir.path());
    let d = dir.path();
    let four = [6, 6, 3, 3];
    write_image(
        &d.join("four.nii"),
        &four,
        &[1.0; 324],
        diag([1.0; 3], [0.0; 3]),
    );
    write_image(
        &d.join("far.nii"),
        &[6, 6, 3],
        &[1.0; 108],
        diag([1.0; 3], [500.0; 3]),
    );
    let rgb = DType::native(Scalar::Rgb24);
    voxelscan::synth::write_nifti1(
        &d.join("rgb.nii"),
        &[2, 2, 2],
        rgb,
        1.0,
        0.0,
        &[7; 24],
        false,
    )
    .unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["flat.nii", ":, :"], "leaves 3 axes"),
        (vec!["flat.nii", "2, 3"], "leaves 1 axis"),
        (vec!["flat.nii", "::0, :, 1"], "slice"),
        (vec!["flat.nii", "a, b"], "slice"),
        (vec!["flat.nii", "None, :, 1"], "np.newaxis"),
        (vec!["flat.nii", "9, :, :"], "out of bounds"),
        (vec!["flat.nii", "0:0, :, 1"], "empty section"),
        (vec!["flat.nii", "--at", "1,2"], "3 to 3 indices"),
        (vec!["flat.nii", "--at", "1,2,9"], "out of range"),
        (vec!["flat.nii", "--at", "x,y,z"], "--at"),
        (vec!["flat.nii", "--window", "5,1"], "window"),
        (vec!["flat.nii", "--cmap", "jet"], "colour map"),
        (vec!["flat.nii", "--scale", "0"], "scale"),
        (vec!["flat.nii", "--threshold", "1"], "overlay"),
        (
            vec!["flat.nii", "--overlay", "flat.nii", "--alpha", "2"],
            "alpha",
        ),
        (
            vec!["flat.nii", "--overlay", "four.nii"],
            "mismatched overlay",
        ),
        (vec!["flat.nii", "--overlay", "far.nii"], "does not cover"),
        (vec!["flat.nii", "--overlay", "missing.nii"], "missing.nii"),
        (vec!["missing.nii"], "missing.nii"),
        (vec!["rgb.nii"], "RGB"),
        (vec!["flat.nii", "--overlay", "rgb.nii"], "RGB"),
        (
            vec!["flat.nii", "-o", "no/such/dir/out.png"],
            "no/such/dir/out.png",
        ),
        (vec!["flat.nii", "-o", "slice.jpg"], "name the output .png"),
    ];
    for (args, needle) in cases {
        let mut full: Vec<String> = std::iter::once("view")
            .chain(args.iter().copied())
            .map(String::from)
            .collect();
        if !args.contains(&"-o") {
            full.extend(["-o".into(), "bad.png".into()]);
        }
        let run = run_cli(d, &full);
        let line = shell_line(&full);
        if let Err(e) = check_error_run(&run) {
            panic!("{line}: {e}");
        }
        assert!(
            run.stderr.contains(needle),
            "{line}: expected {needle:?} in {:?}",
            run.stderr
        );
        assert!(!d.join("bad.png").exists(), "{line} left a picture");
    }
}

/// Over HTTP (nginx, ranged GETs): the same picture as from the local file, plain and gzip-compressed.
#[cfg(feature = "remote")]
#[test]
fn a_url_draws_the_same_picture_as_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let shape = [7, 9, 11, 3];
    let values = marker_values(&shape, &[vec![2, 6, 3, 2]]);
    write_image(
        &d.join("u.nii"),
        &shape,
        &values,
        diag([-2.0, 3.0, 4.0], [0.0; 3]),
    );
    let bytes = std::fs::read(d.join("u.nii")).unwrap();
    let gz = {
        use std::io::Write;
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(&bytes).unwrap();
        enc.finish().unwrap()
    };
    let nginx = common::servers::Nginx::shared();
    nginx.put("view/u.nii", &bytes);
    nginx.put("view/u.nii.gz", &gz);
    view(
        d,
        &[
            "u.nii",
            "--at",
            "2,6,3,2",
            "--scale",
            "2",
            "-o",
            "local.png",
        ],
    );
    let local = Png::read(&d.join("local.png"));
    for name in ["view/u.nii", "view/u.nii.gz"] {
        let url = nginx.url_of(name);
        let run = view(
            d,
            &[
                &url, "--at", "2,6,3,2", "--scale", "2", "--stats", "-o", "url.png",
            ],
        );
        let png = Png::read(&d.join("url.png"));
        assert!(
            png.rgb == local.rgb && png.width == local.width,
            "{url}: picture differs"
        );
        assert!(
            run.stderr.contains("stats: requests="),
            "{url}: {}",
            run.stderr
        );
    }
}

/// `--aspect mm`: 2×3×4 mm voxels drawn 1, 1.5 and 2 pixels long (at scale 1), nearest neighbour.
#[test]
fn aspect_mm_draws_voxels_in_millimetres() {
    let dir = tempfile::tempdir().unwrap();
    let shape = [7, 9, 11];
    let values = marker_values(&shape, &[vec![2, 6, 3]]);
    write_image(
        &dir.path().join("a.nii"),
        &shape,
        &values,
        diag([2.0, 3.0, 4.0], [0.0; 3]),
    );
    let args = [
        "a.nii", "--at", "2,6,3", "--aspect", "mm", "--scale", "1", "--window", "0,1000", "-o",
        "mm.png",
    ];
    view(dir.path(), &args);
    let png = Png::read(&dir.path().join("mm.png"));
    // Per section: (elements across, pixels each, elements down, pixels each, marker column, marker row).
    let panels = [
        (9, 1.5, 11, 2.0, 6, 7), // sagittal: y across, z up
        (7, 1.0, 11, 2.0, 2, 7), // coronal: x across, z up
        (7, 1.0, 9, 1.5, 2, 2),  // axial: x across, y up
    ];
    let span = |n: usize, px: f64| (n as f64 * px).round() as usize;
    let width: usize = panels.iter().map(|p| span(p.0, p.1) + 2 * MARGIN).sum();
    let height = panels.iter().map(|p| span(p.2, p.3)).max().unwrap() + 2 * MARGIN + CAPTION;
    assert_eq!((png.width, png.height), (width, height));
    let mut x0 = 0;
    for (n, &(cols, px_c, rows, px_r, col, row)) in panels.iter().enumerate() {
        let (w, h) = (span(cols, px_c), span(rows, px_r));
        let element =
            |pixel: usize, px: f64, count: usize| ((pixel as f64 / px) as usize).min(count - 1);
        let want: Vec<(usize, usize)> = (0..h)
            .flat_map(|y| (0..w).map(move |x| (x, y)))
            .filter(|&(x, y)| element(x, px_c, cols) == col && element(y, px_r, rows) == row)
            .collect();
        assert_eq!(png.white_in(x0, w, h), want, "section {n}");
        x0 += w + 2 * MARGIN;
    }
}
