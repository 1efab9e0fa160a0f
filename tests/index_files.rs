//! Where `voxelscan index` puts gzip index files, and with which permissions: a private image gets a private
//! sidecar; an image named through a symbolic link gets its index in the user's cache directory (created `0700`),
//! never beside the link's target.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use voxelscan::dtype::{ByteOrder, DType, Scalar};
use voxelscan::synth::{random_i16_le, write_nifti1};

fn mode_of(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .expect("stat")
        .permissions()
        .mode()
        & 0o777
}

/// A gzip NIfTI of 1 MiB of voxels (several seek points at a 256 KiB span).
fn image(path: &Path) {
    let shape = [64usize, 64, 32, 4];
    let data = random_i16_le(shape.iter().product(), 5, -2000, 2000);
    let dtype = DType::new(Scalar::I16, ByteOrder::Little);
    write_nifti1(path, &shape, dtype, 1.0, 0.0, &data, true).expect("write image");
}

/// `voxelscan ARGS…` with a private cache and home; returns stdout (the run must succeed).
fn voxelscan(dir: &Path, args: &[&std::ffi::OsStr]) -> String {
    let out = Command::new(common::voxelscan_bin())
        .args(args)
        .env_remove("VOXELSCAN_INDEX_CACHE")
        .env_remove("VOXELSCAN_NO_INDEX")
        .env("XDG_CACHE_HOME", dir.join("xdg"))
        .env("HOME", dir.join("home"))
        .output()
        .expect("run voxelscan");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `voxelscan index --span 262144 PATH`; returns stdout.
fn index(dir: &Path, path: &Path) -> String {
    voxelscan(
        dir,
        &[
            "index".as_ref(),
            "--span".as_ref(),
            "262144".as_ref(),
            path.as_os_str(),
        ],
    )
}

#[test]
fn a_private_image_gets_a_private_sidecar() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("private.nii.gz");
    image(&path);
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let stdout = index(dir.path(), &path);
    let sidecar = dir.path().join(".private.nii.gz.vxidx");
    assert!(stdout.contains(".private.nii.gz.vxidx"), "{stdout}");
    assert_eq!(mode_of(&sidecar), 0o600);
}

#[test]
fn a_symlinked_image_is_indexed_in_the_cache_dir_not_beside_its_target() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data_dir = dir.path().join("theirs");
    std::fs::create_dir(&data_dir).expect("mkdir");
    let target = data_dir.join("img.nii.gz");
    image(&target);
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o640)).expect("chmod");
    let mine = dir.path().join("mine");
    std::fs::create_dir(&mine).expect("mkdir");
    let link = mine.join("link.nii.gz");
    std::os::unix::fs::symlink(target, &link).expect("symlink");
    let stdout = index(dir.path(), &link);
    let cache = dir.path().join("xdg/voxelscan");
    assert!(stdout.contains(&cache.display().to_string()), "{stdout}");
    assert_eq!(mode_of(&cache), 0o700);
    let files: Vec<_> = std::fs::read_dir(&cache)
        .expect("cache dir")
        .map(|e| e.expect("entry").path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    assert_eq!(mode_of(&files[0]) & !0o640, 0, "{:o}", mode_of(&files[0]));
    for d in [&data_dir, &mine] {
        let names: Vec<_> = std::fs::read_dir(d)
            .expect("read dir")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(
            names.len(),
            1,
            "nothing written in {}: {names:?}",
            d.display()
        );
    }
}

/// `voxelscan sql` over `PATH` (as table `g`); returns stdout.
fn sql(dir: &Path, path: &Path, statement: &str) -> String {
    let table = format!("g={}", path.display());
    let args = ["sql", "--format", "csv", "-t", &table, statement];
    voxelscan(dir, &args.map(std::ffi::OsStr::new))
}

/// An indexed `.nii.gz` is scanned in several slabs (each starting from a seek point, on every core), an unindexed
/// one in one forward pass; the answers are the same.
#[test]
fn indexed_gzip_tables_are_cut_into_slabs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("run.nii.gz");
    // 4 MiB of voxels: slabs of 1 MiB at least.
    let shape = [64usize, 64, 32, 16];
    let data = random_i16_le(shape.iter().product(), 8, -2000, 2000);
    let dtype = DType::new(Scalar::I16, ByteOrder::Little);
    write_nifti1(&path, &shape, dtype, 1.0, 0.0, &data, true).expect("write image");
    // The writer leaves an index beside what it writes: start without one.
    let _ = std::fs::remove_file(dir.path().join(".run.nii.gz.vxidx"));
    let query =
        "SELECT t, count(*) AS n, sum(value) AS s, min(value) AS lo FROM g GROUP BY t ORDER BY t";
    let explain = "EXPLAIN SELECT sum(value) FROM g";
    let groups = |plan: &str| plan.matches("run.nii.gz:").count();
    let whole = sql(dir.path(), &path, explain);
    assert!(
        groups(&whole) == 0 && whole.contains("run.nii.gz]"),
        "unindexed: one slab, no byte range: {whole}"
    );
    // Its first read builds the index, in one forward pass, and saves it beside the file.
    let plain = sql(dir.path(), &path, query);
    assert!(dir.path().join(".run.nii.gz.vxidx").is_file());
    let cut = sql(dir.path(), &path, explain);
    assert!(groups(&cut) >= 2, "indexed: slabs of byte ranges: {cut}");
    assert_eq!(sql(dir.path(), &path, query), plain);
    assert_eq!(plain.lines().count(), 17, "{plain}");
}
