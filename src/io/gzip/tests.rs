use super::index::max_index_len;
use super::sidecar::*;
use super::*;
use flate2::Compression;
use flate2::write::GzEncoder;
use std::io::Write;

fn gz(data: &[u8], level: u32) -> Vec<u8> {
    let mut e = GzEncoder::new(Vec::new(), Compression::new(level));
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn data(n: usize) -> Vec<u8> {
    let mut x = 0x1234_5678_9abc_def0u64;
    (0..n)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if i % 2 == 0 {
                (x % 32) as u8
            } else {
                (i / 1000) as u8
            }
        })
        .collect()
}

fn opts(cache: &Path) -> GzipOptions {
    GzipOptions {
        span: 64 * 1024,
        cache_dir: Some(cache.to_path_buf()),
        ..GzipOptions::default()
    }
}

/// Reads given as (fraction of `total` where they start, length), clipped to the file, sorted, and without those
/// overlapping an earlier one.
pub(super) fn disjoint_reads(reads: &[(f64, u64)], total: u64) -> Vec<Segment> {
    let mut segs: Vec<Segment> = reads
        .iter()
        .map(|&(f, len)| {
            let off = ((f * total as f64) as u64).min(total - 1);
            seg(off, len.min(total - off))
        })
        .collect();
    segs.sort_by_key(|s| s.offset);
    segs.dedup_by(|b, a| b.offset < a.offset + a.len);
    segs
}

fn seg(offset: u64, len: u64) -> Segment {
    Segment { offset, len }
}

fn read(src: &GzipSource, segs: &[Segment]) -> Result<(Vec<u8>, ReadStats)> {
    let mut out = vec![0u8; segs.iter().map(|s| s.len as usize).sum()];
    let stats = src.read_segments(segs, &mut out)?;
    Ok((out, stats))
}

fn expect(d: &[u8], segs: &[Segment]) -> Vec<u8> {
    segs.iter()
        .flat_map(|s| d[s.offset as usize..(s.offset + s.len) as usize].to_vec())
        .collect()
}

fn setup(n: usize) -> (tempfile::TempDir, PathBuf, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let d = data(n);
    let path = dir.path().join("img.nii.gz");
    std::fs::write(&path, gz(&d, 6)).unwrap();
    (dir, path, d)
}

/// Bytes with no redundancy, as random voxel data: nearly every byte a literal.
fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn indexed(path: &Path, dir: &Path, span: u64) -> GzipSource {
    let o = GzipOptions {
        span,
        cache_dir: Some(dir.join("cache")),
        data_cache: DataCache::Off,
        ..GzipOptions::default()
    };
    let src = GzipSource::with_options(path, o).unwrap();
    src.build_index(|_| {}).unwrap();
    src
}

#[test]
fn short_reads_far_from_points_are_probed_from_marks() {
    let dir = tempfile::tempdir().unwrap();
    let d = noise(3 << 20, 11);
    let path = dir.path().join("noise.nii.gz");
    std::fs::write(&path, gz(&d, 6)).unwrap();
    let src = indexed(&path, dir.path(), 1 << 20);
    let marks = src.index().marks().len();
    assert!(marks > 60, "{marks} marks");
    // Two bytes just before the second point: from the first point that is ~1 MiB of compressed input.
    let at = (1 << 20) - 1000;
    let (got, stats) = read(&src, &[seg(at, 2)]).unwrap();
    assert_eq!(got, &d[at as usize..at as usize + 2]);
    assert!(stats.bytes_read < 200_000, "{stats:?}");
    // A time series: one short read per "volume".
    let segs: Vec<Segment> = (0..40).map(|v| seg(v * 70_001 + 12_345, 2)).collect();
    let (got, stats) = read(&src, &segs).unwrap();
    assert_eq!(got, expect(&d, &segs));
    assert!(stats.bytes_read < 40 * 150_000, "{stats:?}");
}

/// A box's rows (short reads close together, like the rows of an ROI in every plane) are read in one pass from the
/// seek point, not probed stretch by stretch from every mark; a few short reads between two marks are probed
/// together, in one pass per fill.
#[test]
fn dense_short_reads_are_one_pass_and_sparse_ones_share_a_probe() {
    let dir = tempfile::tempdir().unwrap();
    let d = noise(3 << 20, 21);
    let path = dir.path().join("box.nii.gz");
    std::fs::write(&path, gz(&d, 6)).unwrap();
    let src = indexed(&path, dir.path(), 1 << 20);
    // 64-byte rows every 192 bytes across the second span (~5 400 rows, many per mark).
    let rows: Vec<Segment> = (0..5_400u64)
        .map(|r| seg((1 << 20) + 500 + r * 192, 64))
        .collect();
    let (got, stats) = read(&src, &rows).unwrap();
    assert_eq!(got, expect(&d, &rows));
    // Noise does not compress: one pass through the rows' megabyte reads about that much (each row probed from its
    // mark would read ~5 400 × 2 × 8 KiB).
    assert!(
        stats.bytes_read < 1_300_000,
        "one pass for the box rows: {stats:?}"
    );
    assert!(
        stats.requests <= 3,
        "passes between seek points only: {stats:?}"
    );
    // Three short reads close together far from the seek point: both fills decompress once for all three.
    let near: Vec<Segment> = (0..3u64)
        .map(|r| seg((1 << 20) + 900_000 + r * 200, 4))
        .collect();
    let (got, stats) = read(&src, &near).unwrap();
    assert_eq!(got, expect(&d, &near));
    assert!(
        stats.requests <= 2,
        "one probe per fill for the three: {stats:?}"
    );
    assert!(stats.bytes_read < 200_000, "{stats:?}");
}

#[test]
fn probes_that_meet_copies_from_before_their_mark_fall_back_exactly() {
    // Noise, then noise whose every 64 bytes start with 16 bytes copied from 20,000 bytes before: a probe for
    // those bytes from a mark less than 20,000 bytes before them depends on the unknown window.
    let dir = tempfile::tempdir().unwrap();
    let mut d = noise(1 << 20, 5);
    let fresh = noise(1 << 20, 9);
    for (k, chunk) in fresh.chunks(64).enumerate() {
        let at = d.len();
        if k % 2 == 0 {
            d.extend_from_within(at - 20_000..at - 20_000 + 16);
            d.extend_from_slice(&chunk[16..]);
        } else {
            d.extend_from_slice(chunk);
        }
    }
    d.extend(noise(300_000, 13));
    let path = dir.path().join("rep.nii.gz");
    std::fs::write(&path, gz(&d, 6)).unwrap();
    let src = indexed(&path, dir.path(), 1 << 20);
    let segs: Vec<Segment> = (0..30)
        .map(|k| seg((1 << 20) + 100_096 + k * 30_080, 3))
        .chain((0..10).map(|k| seg(700_000 + k * 30_011, 1)))
        .collect();
    let (mut retried, mut from_earlier) = (0, 0);
    for s in &segs {
        let (got, stats) = read(&src, std::slice::from_ref(s)).unwrap();
        assert_eq!(got, expect(&d, std::slice::from_ref(s)), "at {s:?}");
        // Two probe passes from the nearest mark; when they disagree, two from a mark a window (32 KiB) earlier,
        // which the copies from 20,000 bytes back cannot reach past; an odd count ends with the seek point's pass.
        retried += usize::from(stats.requests > 2);
        from_earlier += usize::from(stats.requests == 4);
    }
    assert!(
        retried >= 10,
        "{retried} reads needed more than the nearest mark"
    );
    assert!(
        from_earlier >= 10,
        "{from_earlier} reads served from an earlier mark"
    );
    let mut sorted = segs.clone();
    sorted.sort_by_key(|s| s.offset);
    assert_eq!(read(&src, &sorted).unwrap().0, expect(&d, &sorted));
}

#[test]
fn cold_full_read_builds_and_writes_the_index_then_warm_reads_use_it() {
    let (dir, path, d) = setup(1_500_000);
    let cache = dir.path().join("cache");
    let src = GzipSource::with_options(&path, opts(&cache)).unwrap();
    let all = [seg(0, d.len() as u64)];
    let (got, stats) = read(&src, &all).unwrap();
    assert_eq!(got, d);
    assert_eq!(stats.requests, 1);
    assert!(src.index().is_complete());
    let written = src.index_path().expect("index written");
    assert!(written.starts_with(&cache), "{written:?}");

    let warm = GzipSource::with_options(&path, opts(&cache)).unwrap();
    assert_eq!(warm.uncompressed_size(), Some(d.len() as u64));
    let segs = [seg(1_400_000, 10), seg(1_400_100, 5)];
    let (got, stats) = read(&warm, &segs).unwrap();
    assert_eq!(got, expect(&d, &segs));
    assert!(
        stats.bytes_read < 200_000,
        "read from a nearby point: {stats:?}"
    );
}

#[test]
fn many_tiny_segments_are_one_pass_per_span() {
    let (dir, path, d) = setup(600_000);
    let src = GzipSource::with_options(&path, opts(dir.path())).unwrap();
    let segs: Vec<Segment> = (0..5000).map(|k| seg(k * 113 + 7, 2)).collect();
    let (got, stats) = read(&src, &segs).unwrap();
    assert_eq!(got, expect(&d, &segs));
    assert_eq!(stats.requests, 1, "cold: one forward pass");
    let (got, stats) = read(&src, &segs).unwrap();
    assert_eq!(got, expect(&d, &segs));
    assert!(
        stats.requests <= 10,
        "warm: one run per point at most: {stats:?}"
    );
}

#[test]
fn partial_index_is_extended_by_later_reads() {
    let (dir, path, d) = setup(2_000_000);
    let src = GzipSource::with_options(&path, opts(dir.path())).unwrap();
    let (got, _) = read(&src, &[seg(300_000, 100)]).unwrap();
    assert_eq!(got, &d[300_000..300_100]);
    let idx = src.index();
    assert!(!idx.is_complete() && idx.covered_out() >= 300_100 && idx.covered_out() < 1_000_000);
    let (got, _) = read(&src, &[seg(100_000, 10), seg(1_990_000, 10_000)]).unwrap();
    assert_eq!(got, expect(&d, &[seg(100_000, 10), seg(1_990_000, 10_000)]));
    assert!(src.index().is_complete());
}

#[test]
fn a_segment_reaching_past_the_covered_part_starts_at_its_own_point() {
    let (dir, path, d) = setup(3_000_000);
    let src = GzipSource::with_options(&path, opts(dir.path())).unwrap();
    read(&src, &[seg(600_000, 10)]).unwrap();
    let covered = src.index().covered_out();
    let segs = [seg(100_000, 5), seg(200_000, covered + 300_000 - 200_000)];
    let (got, _) = read(&src, &segs).unwrap();
    assert_eq!(got, expect(&d, &segs));
    let outs: Vec<u64> = src.index().points().iter().map(|p| p.out).collect();
    assert!(outs.windows(2).all(|w| w[0] < w[1]), "{outs:?}");
    assert!(src.index().covered_out() >= covered + 300_000);
}

#[test]
fn truncated_and_corrupt_gzip_files_name_the_file() {
    let (dir, path, d) = setup(500_000);
    let bytes = std::fs::read(&path).unwrap();
    let cut = dir.path().join("cut.nii.gz");
    std::fs::write(&cut, &bytes[..bytes.len() * 2 / 3]).unwrap();
    let bad = dir.path().join("bad.nii.gz");
    let mut b = bytes.clone();
    for x in &mut b[1000..1100] {
        *x = !*x;
    }
    std::fs::write(&bad, &b).unwrap();
    let all = [seg(0, d.len() as u64)];
    let err = read(
        &GzipSource::with_options(&cut, opts(dir.path())).unwrap(),
        &all,
    )
    .unwrap_err();
    assert!(
        matches!(err, VoxelError::Truncated { .. }) && err.to_string().contains("cut.nii.gz"),
        "{err}"
    );
    let err = read(
        &GzipSource::with_options(&bad, opts(dir.path())).unwrap(),
        &all,
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("bad.nii.gz") && err.to_string().contains("corrupt"),
        "{err}"
    );
    assert!(read_prefix(&cut, 100).is_ok());
}

#[test]
fn threads_split_runs_at_points() {
    let (dir, path, d) = setup(1_000_000);
    let src = GzipSource::with_options(
        &path,
        GzipOptions {
            threads: 3,
            ..opts(dir.path())
        },
    )
    .unwrap();
    src.build_index(|_| {}).unwrap();
    let segs = [seg(5, 700_000), seg(800_000, 3), seg(900_000, 100_000)];
    let (got, stats) = read(&src, &segs).unwrap();
    assert_eq!(got, expect(&d, &segs));
    assert!(stats.requests > 3, "{stats:?}");
}

#[test]
fn past_the_end_is_truncated_cold_and_warm() {
    let (dir, path, d) = setup(200_000);
    let n = d.len() as u64;
    for _ in 0..2 {
        let src = GzipSource::with_options(&path, opts(dir.path())).unwrap();
        let err = read(&src, &[seg(n - 5, 10)]).unwrap_err();
        assert!(matches!(err, VoxelError::Truncated { .. }), "{err}");
        assert!(err.to_string().contains("img.nii.gz"), "{err}");
        src.build_index(|_| {}).unwrap();
    }
}

#[test]
fn stale_index_is_ignored_and_rebuilt() {
    let (dir, path, d) = setup(400_000);
    let o = opts(&dir.path().join("c"));
    GzipSource::with_options(&path, o.clone())
        .unwrap()
        .build_index(|_| {})
        .unwrap();
    // Same size, different content and mtime: the old index must not be used.
    let mut d2 = d.clone();
    d2.reverse();
    std::fs::write(&path, gz(&d2, 6)).unwrap();
    let src = GzipSource::with_options(&path, o).unwrap();
    assert_eq!(src.index().points().len(), 0);
    let (got, _) = read(&src, &[seg(350_000, 1000)]).unwrap();
    assert_eq!(got, &d2[350_000..351_000]);
}

#[test]
fn corrupt_index_file_is_ignored() {
    let (dir, path, d) = setup(400_000);
    let o = opts(&dir.path().join("c"));
    let (_, written) = GzipSource::with_options(&path, o.clone())
        .unwrap()
        .build_index(|_| {})
        .unwrap();
    let written = written.unwrap();
    let mut bytes = std::fs::read(&written).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 1;
    std::fs::write(&written, &bytes).unwrap();
    let src = GzipSource::with_options(&path, o.clone()).unwrap();
    assert_eq!(src.index().points().len(), 0);
    std::fs::write(&written, &bytes[..mid]).unwrap();
    let src = GzipSource::with_options(&path, o).unwrap();
    assert_eq!(src.index().points().len(), 0);
    let (got, _) = read(&src, &[seg(399_000, 1000)]).unwrap();
    assert_eq!(got, &d[399_000..]);
}

#[test]
fn sidecar_is_preferred_and_no_index_disables_it() {
    let (dir, path, d) = setup(300_000);
    let o = GzipOptions {
        span: 64 * 1024,
        ..GzipOptions::default()
    };
    let (_, written) = GzipSource::with_options(&path, o.clone())
        .unwrap()
        .build_index(|_| {})
        .unwrap();
    assert_eq!(
        written.unwrap(),
        dir.path().canonicalize().unwrap().join(".img.nii.gz.vxidx")
    );
    let off = GzipSource::with_options(
        &path,
        GzipOptions {
            use_index: false,
            ..o
        },
    )
    .unwrap();
    assert_eq!(off.index().points().len(), 0);
    let (got, stats) = read(&off, &[seg(10, 10), seg(250_000, 10)]).unwrap();
    assert_eq!(got, expect(&d, &[seg(10, 10), seg(250_000, 10)]));
    assert_eq!(stats.requests, 1);
}

fn mode_of(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::symlink_metadata(path)
        .unwrap()
        .permissions()
        .mode()
        & 0o777
}

fn sidecar_of(dir: &Path) -> PathBuf {
    dir.canonicalize().unwrap().join(".img.nii.gz.vxidx")
}

fn span_64k() -> GzipOptions {
    GzipOptions {
        span: 64 * 1024,
        ..GzipOptions::default()
    }
}

#[test]
fn a_private_file_gets_a_private_sidecar() {
    use std::os::unix::fs::PermissionsExt;
    let (dir, path, _) = setup(300_000);
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (_, written) = GzipSource::with_options(&path, span_64k())
        .unwrap()
        .build_index(|_| {})
        .unwrap();
    assert_eq!(written.as_deref(), Some(sidecar_of(dir.path()).as_path()));
    assert_eq!(mode_of(&sidecar_of(dir.path())), 0o600);
    // A cache directory is created private too.
    let cache = dir.path().join("new/cache");
    let (_, written) = GzipSource::with_options(&path, opts(&cache))
        .unwrap()
        .build_index(|_| {})
        .unwrap();
    assert!(written.unwrap().starts_with(&cache));
    assert_eq!(mode_of(&cache), 0o700);
}

#[test]
fn a_symlinked_file_gets_its_index_in_the_cache_dir_not_beside_the_target() {
    let (dir, path, d) = setup(300_000);
    let links = tempfile::tempdir().unwrap();
    let link = links.path().join("link.nii.gz");
    std::os::unix::fs::symlink(&path, &link).unwrap();
    let places = index_locations(&link, &GzipOptions::default());
    assert!(places.iter().all(|p| p.in_cache_dir), "{places:?}");
    let cache = links.path().join("cache");
    let src = GzipSource::with_options(&link, opts(&cache)).unwrap();
    let (_, written) = src.build_index(|_| {}).unwrap();
    assert!(written.unwrap().starts_with(&cache));
    assert_eq!(read(&src, &[seg(1000, 10)]).unwrap().0, &d[1000..1010]);
    let beside: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(beside, vec![std::ffi::OsString::from("img.nii.gz")]);
    // A link higher up (to the file's directory) is a link target's directory too.
    let ldir = links.path().join("ldir");
    std::os::unix::fs::symlink(dir.path(), &ldir).unwrap();
    let places = index_locations(&ldir.join("img.nii.gz"), &GzipOptions::default());
    assert!(places.iter().all(|p| p.in_cache_dir), "{places:?}");
    // The file itself, not a link: its sidecar comes first.
    assert!(!index_locations(&path, &GzipOptions::default())[0].in_cache_dir);
}

#[test]
fn a_cache_dir_of_someone_else_or_open_to_all_is_not_used() {
    use std::os::unix::fs::PermissionsExt;
    let (dir, path, _) = setup(300_000);
    let open = dir.path().join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let (_, written) = GzipSource::with_options(&path, opts(&open))
        .unwrap()
        .build_index(|_| {})
        .unwrap();
    assert_eq!(written, None);
    assert_eq!(std::fs::read_dir(&open).unwrap().count(), 0);
}

/// Open `path` on another thread; the index it loaded, or a panic if opening takes over 10 s (a hang).
fn open_within_timeout(path: &Path, o: GzipOptions) -> Arc<GzIndex> {
    let (tx, rx) = std::sync::mpsc::channel();
    let p = path.to_path_buf();
    std::thread::spawn(move || {
        let _ = tx.send(GzipSource::with_options(&p, o).map(|s| s.index()));
    });
    rx.recv_timeout(std::time::Duration::from_secs(10))
        .expect("opening hung on the sidecar")
        .unwrap()
}

#[test]
fn fifo_device_and_oversized_sidecars_are_ignored() {
    let (dir, path, d) = setup(300_000);
    let sidecar = sidecar_of(dir.path());
    // A FIFO nobody writes to: ignored without blocking.
    let c = std::ffi::CString::new(sidecar.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: `c` is a valid NUL-terminated path for the duration of the call.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    assert_eq!(open_within_timeout(&path, span_64k()).points().len(), 0);
    std::fs::remove_file(&sidecar).unwrap();
    // A link to /dev/zero: ignored, then replaced by a real index (the device is not written).
    std::os::unix::fs::symlink("/dev/zero", &sidecar).unwrap();
    let src = GzipSource::with_options(&path, span_64k()).unwrap();
    assert_eq!(src.index().points().len(), 0);
    let (_, written) = src.build_index(|_| {}).unwrap();
    assert_eq!(written.as_deref(), Some(sidecar.as_path()));
    assert!(std::fs::symlink_metadata(&sidecar).unwrap().is_file());
    let good = std::fs::read(&sidecar).unwrap();
    assert!(open_within_timeout(&path, span_64k()).points().len() >= 2);
    // Longer than any index of this file can be (a sparse 1 TiB file): ignored without being read.
    std::fs::File::options()
        .write(true)
        .open(&sidecar)
        .unwrap()
        .set_len(1 << 40)
        .unwrap();
    assert_eq!(open_within_timeout(&path, span_64k()).points().len(), 0);
    // Just over the cap, with a valid index at its start: still ignored.
    let id = FileIdentity::of(&File::open(&path).unwrap(), "img").unwrap();
    let cap = max_index_len(id.size, 64 * 1024);
    std::fs::write(&sidecar, &good).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&sidecar)
        .unwrap()
        .set_len(cap + 1)
        .unwrap();
    assert_eq!(open_within_timeout(&path, span_64k()).points().len(), 0);
    std::fs::write(&sidecar, good).unwrap();
    let src = GzipSource::with_options(&path, span_64k()).unwrap();
    assert!(src.index().points().len() >= 2);
    assert_eq!(
        read(&src, &[seg(250_000, 10)]).unwrap().0,
        &d[250_000..250_010]
    );
}

#[test]
fn reopened_handles_notice_a_replaced_file() {
    let (dir, path, d) = setup(300_000);
    let src = GzipSource::with_options(
        &path,
        GzipOptions {
            keep_open: false,
            ..opts(dir.path())
        },
    )
    .unwrap();
    src.build_index(|_| {}).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    let d2: Vec<u8> = d.iter().map(|b| b.wrapping_add(1)).collect();
    std::fs::write(&path, gz(&d2, 1)).unwrap();
    let (got, _) = read(&src, &[seg(200_000, 100)]).unwrap();
    assert_eq!(got, &d2[200_000..200_100]);
}

#[test]
fn read_prefix_and_bad_segments() {
    let (_dir, path, d) = setup(100_000);
    assert_eq!(read_prefix(&path, 348).unwrap(), &d[..348]);
    assert_eq!(read_prefix(&path, 200_000).unwrap(), d);
    let src = GzipSource::with_options(&path, GzipOptions::default()).unwrap();
    let mut out = vec![0u8; 4];
    assert!(
        src.read_segments(&[seg(10, 2), seg(5, 2)], &mut out)
            .is_err()
    );
    assert!(src.read_segments(&[seg(10, 2)], &mut out).is_err());
}

/// A gzip member written by zlib-rs with `level` and `strategy`, sync-flushed at `cuts` (empty stored blocks).
fn member(data: &[u8], level: i32, strategy: i32, cuts: &[usize]) -> Vec<u8> {
    use zlib_rs::{DeflateConfig, DeflateFlush, Method, Strategy};
    let config = DeflateConfig {
        level,
        method: Method::Deflated,
        window_bits: 31,
        mem_level: 8,
        strategy: Strategy::try_from(strategy).unwrap(),
    };
    let mut d = zlib_rs::Deflate::new_with_config(config);
    let mut out = vec![0u8; zlib_rs::compress_bound(data.len()) + 1024 + 16 * cuts.len()];
    let mut ends: Vec<usize> = cuts.iter().map(|&c| c.min(data.len())).collect();
    ends.sort();
    ends.push(data.len());
    for (k, &end) in ends.iter().enumerate() {
        let flush = if k + 1 == ends.len() {
            DeflateFlush::Finish
        } else {
            DeflateFlush::SyncFlush
        };
        let (i, o) = (d.total_in() as usize, d.total_out() as usize);
        let status = d.compress(&data[i..end], &mut out[o..], flush).unwrap();
        assert!(d.total_in() as usize == end, "deflate took all input");
        if flush == DeflateFlush::Finish {
            assert_eq!(status, zlib_rs::Status::StreamEnd);
        }
    }
    out.truncate(d.total_out() as usize);
    out
}

/// Reproducible test data mixing incompressible noise (stored blocks), runs and low-entropy bytes.
fn mixed(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let kind = next() % 3;
        let len = (next() % 40_000) as usize + 1;
        for _ in 0..len.min(n - out.len()) {
            let r = next();
            out.push(match kind {
                0 => r as u8,
                1 => (out.len() / 97) as u8,
                _ => (r % 7) as u8,
            });
        }
    }
    out
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(24))]

    /// Random reads through the index (cold, warm in memory, loaded from disk, and on 2 threads) equal the same
    /// slices of the full decompression, including offsets on block and member boundaries and the last byte.
    #[test]
    fn indexed_reads_equal_full_decompression(
        seed in proptest::prelude::any::<u64>(),
        members in proptest::collection::vec((0usize..400_000, 0i32..=9, 0i32..=4, 0usize..4), 1..4),
        span in proptest::sample::select(vec![1_000u64, 20_000, 65_536, 1 << 20]),
        reads in proptest::collection::vec((0.0f64..1.0, 0u64..70_000), 1..12),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.nii.gz");
        let (mut file, mut whole, mut boundaries) = (Vec::new(), Vec::new(), Vec::new());
        for (k, &(n, level, strategy, flushes)) in members.iter().enumerate() {
            let data = mixed(seed ^ k as u64, n);
            let cuts: Vec<usize> = (1..=flushes).map(|f| n * f / (flushes + 1)).collect();
            file.extend(member(&data, level, strategy, &cuts));
            boundaries.push(whole.len() as u64);
            whole.extend(data);
        }
        std::fs::write(&path, &file).unwrap();
        let total = whole.len() as u64;
        let o = GzipOptions { span, cache_dir: Some(dir.path().join("c")), ..GzipOptions::default() };
        let index = GzIndex::build(&file, "p.nii.gz", span, |_| {}).unwrap();
        proptest::prop_assert_eq!(index.total_out(), Some(total));

        let mut offsets: Vec<(u64, u64)> = reads.iter().map(|&(f, len)| ((f * total as f64) as u64, len)).collect();
        offsets.extend(index.points().iter().map(|p| (p.out, 300)));
        offsets.extend(index.marks().iter().step_by(7).map(|m| (m.out, 300)));
        offsets.extend(index.marks().iter().step_by(5).map(|m| (m.out.saturating_sub(1), 2)));
        offsets.extend(boundaries.iter().map(|&b| (b, 5000)));
        offsets.extend(boundaries.iter().filter(|&&b| b > 0).map(|&b| (b - 1, 2)));
        offsets.push((total.saturating_sub(1), 1));
        let segs: Vec<Segment> = offsets
            .iter()
            .filter(|&&(off, _)| off < total)
            .map(|&(off, len)| seg(off, len.max(1).min(total - off)))
            .collect();

        let cold = GzipSource::with_options(&path, o.clone()).unwrap();
        let two = GzipSource::with_options(&path, GzipOptions { threads: 2, ..o.clone() }).unwrap();
        for s in &segs {
            let want = expect(&whole, std::slice::from_ref(s));
            proptest::prop_assert_eq!(&read(&cold, std::slice::from_ref(s)).unwrap().0, &want, "at {:?}", s);
        }
        cold.build_index(|_| {}).unwrap();
        let warm = GzipSource::with_options(&path, o).unwrap();
        // Every segment alone, then all of them sorted and merged into one call.
        for s in &segs {
            let want = expect(&whole, std::slice::from_ref(s));
            proptest::prop_assert_eq!(&read(&warm, std::slice::from_ref(s)).unwrap().0, &want, "at {:?}", s);
        }
        let mut sorted = segs.clone();
        sorted.sort_by_key(|s| s.offset);
        let mut disjoint: Vec<Segment> = Vec::new();
        for s in sorted {
            if disjoint.last().is_none_or(|l| s.offset >= l.offset + l.len) {
                disjoint.push(s);
            }
        }
        let want = expect(&whole, &disjoint);
        proptest::prop_assert_eq!(&read(&warm, &disjoint).unwrap().0, &want);
        proptest::prop_assert_eq!(&read(&two, &disjoint).unwrap().0, &want);
        proptest::prop_assert_eq!(&read(&two, &[seg(0, total)]).unwrap().0, &whole);
    }
}

fn cached(cache: &Path, data_cache: &Arc<SpanCache>) -> GzipOptions {
    GzipOptions {
        data_cache: DataCache::Own(Arc::clone(data_cache)),
        ..opts(cache)
    }
}

#[test]
fn repeated_and_overlapping_reads_come_from_the_data_cache() {
    let (dir, path, d) = setup(1_000_000);
    let c = Arc::new(SpanCache::new(64 << 20));
    let src = GzipSource::with_options(&path, cached(dir.path(), &c)).unwrap();
    src.build_index(|_| {}).unwrap();
    let vol = [seg(300_000, 200_000)];
    let (got, first) = read(&src, &vol).unwrap();
    assert_eq!(got, expect(&d, &vol));
    assert!(first.bytes_read > 0 && first.requests > 0, "{first:?}");
    let (got, again) = read(&src, &vol).unwrap();
    assert_eq!(got, expect(&d, &vol));
    assert_eq!((again.bytes_read, again.requests), (0, 0), "{again:?}");
    assert_eq!(again.bytes_delivered, 200_000);
    // Another source over the same file shares the cache; a read overlapping the cached part decompresses
    // only from the point before its uncached end.
    let other = GzipSource::with_options(&path, cached(dir.path(), &c)).unwrap();
    let overlap = [seg(250_000, 10), seg(450_000, 100_000)];
    let (got, stats) = read(&other, &overlap).unwrap();
    assert_eq!(got, expect(&d, &overlap));
    assert_eq!(
        stats.requests, 2,
        "two runs: before and after the cached part"
    );
    assert!(c.stats().hit_bytes >= 250_000, "{:?}", c.stats());
    // A source without the cache still decompresses.
    let plain = GzipSource::with_options(&path, opts(dir.path())).unwrap();
    assert!(read(&plain, &vol).unwrap().1.bytes_read > 0);
}

#[test]
fn the_data_cache_serves_cold_and_unindexed_reads_too() {
    let (dir, path, d) = setup(700_000);
    let c = Arc::new(SpanCache::new(64 << 20));
    for use_index in [true, false] {
        c.clear();
        let o = GzipOptions {
            use_index,
            ..cached(&dir.path().join(format!("c{use_index}")), &c)
        };
        let src = GzipSource::with_options(&path, o).unwrap();
        let segs = [seg(10, 5), seg(500_000, 100)];
        let (got, stats) = read(&src, &segs).unwrap();
        assert_eq!((got, stats.requests), (expect(&d, &segs), 1));
        // What was asked for is kept; what the pass went through between the segments is not.
        let inside = [seg(12, 2), seg(500_050, 50)];
        let (got, stats) = read(&src, &inside).unwrap();
        assert_eq!((got, stats.requests), (expect(&d, &inside), 0));
        let between = [seg(200_000, 1000)];
        let (got, stats) = read(&src, &between).unwrap();
        assert_eq!((got, stats.requests), (expect(&d, &between), 1));
    }
}

#[test]
fn a_replaced_file_never_hits_the_old_files_data() {
    let (dir, path, d) = setup(300_000);
    let c = Arc::new(SpanCache::new(64 << 20));
    let o = GzipOptions {
        keep_open: false,
        ..cached(dir.path(), &c)
    };
    let src = GzipSource::with_options(&path, o.clone()).unwrap();
    assert_eq!(read(&src, &[seg(1000, 100)]).unwrap().0, &d[1000..1100]);
    std::thread::sleep(std::time::Duration::from_millis(20));
    let d2: Vec<u8> = d.iter().map(|b| b.wrapping_add(3)).collect();
    std::fs::write(&path, gz(&d2, 4)).unwrap();
    assert_eq!(read(&src, &[seg(1000, 100)]).unwrap().0, &d2[1000..1100]);
    let fresh = GzipSource::with_options(&path, o).unwrap();
    assert_eq!(read(&fresh, &[seg(1000, 100)]).unwrap().0, &d2[1000..1100]);
}

#[test]
fn a_small_data_cache_evicts_and_stays_exact() {
    let (dir, path, d) = setup(400_000);
    let c = Arc::new(SpanCache::new(100_000));
    let o = GzipOptions {
        span: 20_000,
        ..cached(dir.path(), &c)
    };
    let src = GzipSource::with_options(&path, o).unwrap();
    let all = [seg(0, d.len() as u64)];
    assert_eq!(read(&src, &all).unwrap().0, d);
    let s = c.stats();
    assert!(s.evictions > 0 && s.used <= 100_000, "{s:?}");
    // The tail is still cached, the start is not: a read across both is exact.
    let (got, stats) = read(&src, &[seg(390_000, 10_000)]).unwrap();
    assert!(got == d[390_000..] && stats.requests == 0, "{stats:?}");
    let across = [seg(5, 10), seg(150_000, 240_000)];
    let (got, stats) = read(&src, &across).unwrap();
    assert!(
        got == expect(&d, &across) && stats.requests == 2,
        "{stats:?}"
    );
    // What that read decompressed last is what is cached now.
    let (got, stats) = read(&src, &[seg(280_000, 10_000)]).unwrap();
    assert!(
        got == d[280_000..290_000] && stats.requests == 0,
        "{stats:?}"
    );
    assert!(c.stats().used <= 100_000);
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(16))]

    /// Reads through a small shared data cache equal the full decompression: repeated, overlapping, partly
    /// cached and partly not, after evictions, cold (no index yet) and warm, on one and two threads, and from
    /// two threads at once.
    #[test]
    fn cached_reads_equal_full_decompression(
        seed in proptest::prelude::any::<u64>(),
        members in proptest::collection::vec((1usize..300_000, 0i32..=9), 1..3),
        span in proptest::sample::select(vec![5_000u64, 40_000, 1 << 20]),
        budget in proptest::sample::select(vec![30_000u64, 200_000, 64 << 20]),
        batches in proptest::collection::vec(
            proptest::collection::vec((0.0f64..1.0, 1u64..90_000), 1..6), 2..8),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.nii.gz");
        let (mut file, mut whole) = (Vec::new(), Vec::new());
        for (k, &(n, level)) in members.iter().enumerate() {
            let data = mixed(seed ^ k as u64, n);
            file.extend(member(&data, level, 0, &[n / 3]));
            whole.extend(data);
        }
        std::fs::write(&path, &file).unwrap();
        let total = whole.len() as u64;
        let c = Arc::new(SpanCache::new(budget));
        let o = GzipOptions { span, ..cached(&dir.path().join("i"), &c) };
        let one = GzipSource::with_options(&path, o.clone()).unwrap();
        let two = GzipSource::with_options(&path, GzipOptions { threads: 2, ..o }).unwrap();
        let all: Vec<Vec<Segment>> = batches.iter().map(|b| disjoint_reads(b, total)).collect();
        // In turn, each batch twice (the repeat is served at least partly from memory) through alternating
        // sources.
        for (k, segs) in all.iter().enumerate() {
            let src = if k % 2 == 0 { &one } else { &two };
            for _ in 0..2 {
                proptest::prop_assert_eq!(&read(src, segs).unwrap().0, &expect(&whole, segs));
                proptest::prop_assert!(c.stats().used <= budget);
            }
        }
        // Two threads at once, each over all batches in opposite orders.
        let results: Vec<bool> = std::thread::scope(|s| {
            let handles: Vec<_> = [(&one, false), (&two, true)]
                .into_iter()
                .map(|(src, rev)| {
                    let (all, whole) = (&all, &whole);
                    s.spawn(move || {
                        let mut order: Vec<&Vec<Segment>> = all.iter().collect();
                        if rev {
                            order.reverse();
                        }
                        order.into_iter().all(|segs| read(src, segs).unwrap().0 == expect(whole, segs))
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        proptest::prop_assert_eq!(results, vec![true, true]);
        proptest::prop_assert!(c.stats().used <= budget);
        proptest::prop_assert_eq!(&read(&two, &[seg(0, total)]).unwrap().0, &whole);
        if budget > 1 << 20 {
            proptest::prop_assert!(c.stats().hit_bytes > 0, "{:?}", c.stats());
        }
    }
}

#[test]
fn source_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<GzipSource>();
}
