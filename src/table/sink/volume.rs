//! Rows (a voxel's coordinates and its value, in any order) into dense volumes, one volume at a time.
//!
//! Rows are buffered as records (volume, voxel, value bits). While they fit in a budget of one volume's worth of
//! records, nothing touches the disk; past it, the buffer is sorted by volume and appended to an unlinked spill
//! file as one run (with a directory of where each volume's records are), and buffering starts again. At the end,
//! each volume is assembled from its records in every run (or from the buffer), checked for duplicates, and handed
//! over; memory stays at the record buffer plus one volume, whatever the number of volumes or the row order.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::error::{Result, VoxelError};

/// How a value's 64 bits are read: the Arrow value column decides (floats, signed or unsigned integers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Kind {
    Float,
    Signed,
    Unsigned,
}

impl Kind {
    /// The value as f64 (for ranges and float output).
    pub fn to_f64(self, bits: u64) -> f64 {
        match self {
            Kind::Float => f64::from_bits(bits),
            Kind::Signed => bits as i64 as f64,
            Kind::Unsigned => bits as f64,
        }
    }

    /// The value shown in messages.
    pub fn show(self, bits: u64) -> String {
        match self {
            Kind::Float => f64::from_bits(bits).to_string(),
            Kind::Signed => (bits as i64).to_string(),
            Kind::Unsigned => bits.to_string(),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Rec {
    t: u32,
    idx: u64,
    bits: u64,
}

const REC_LEN: usize = 16;
/// Records read back from a run at a time.
const READ_CHUNK: usize = 1 << 16;
/// The record buffer holds at least this many records (small volumes), else one volume's worth.
const MIN_BUDGET: usize = 1 << 16;

/// One run in the spill file: per volume, where its records are.
#[derive(Debug, Default)]
struct Run {
    /// (volume, byte offset, record count), by volume.
    parts: Vec<(u32, u64, u64)>,
}

/// The range of the values seen (for `scale 'auto'`).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ValueRange {
    /// Smallest and largest finite value, if any.
    pub finite: Option<(f64, f64)>,
    pub has_nan: bool,
}

impl ValueRange {
    fn add(&mut self, v: f64) {
        if v.is_nan() {
            self.has_nan = true;
        } else if v.is_finite() {
            self.finite = Some(match self.finite {
                None => (v, v),
                Some((lo, hi)) => (lo.min(v), hi.max(v)),
            });
        }
    }
}

/// The assembled volume handed to the writer: values (bits) and which voxels had a row.
#[derive(Debug)]
pub struct Volume {
    pub t: u32,
    pub values: Vec<u64>,
    pub seen: Vec<bool>,
}

/// Bytes of one voxel of an assembled volume: its value bits and its seen flag.
const VOXEL_BYTES: u64 = 9;

/// The accumulator of one output image.
#[derive(Debug)]
pub struct Volumes {
    spatial: Vec<usize>,
    nvox: u64,
    has_t: bool,
    kind: Kind,
    buf: Vec<Rec>,
    budget: usize,
    spill_dir: PathBuf,
    spill: Option<(File, u64)>,
    runs: Vec<Run>,
    max_t: Option<u32>,
    rows: u64,
    range: ValueRange,
}

impl Volumes {
    /// An accumulator for volumes of shape `spatial` (with a volume axis when `has_t`), the grid of `grid_source`
    /// (named in errors); spill files, if any, go to `spill_dir`.
    pub fn new(
        spatial: &[usize],
        has_t: bool,
        kind: Kind,
        spill_dir: &Path,
        grid_source: &str,
    ) -> Result<Volumes> {
        let nvox = spatial
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64));
        let nvox = nvox
            .filter(|&n| usize::try_from(n).is_ok())
            .ok_or_else(|| VoxelError::Invalid(format!("grid {spatial:?} is too large")))?;
        // One assembled volume (value bits and a seen flag per voxel) is the sink's fixed cost: refuse a grid whose
        // volume cannot fit before the query runs, whatever the template or table header claims.
        let volume_bytes = crate::memory::bytes_of(nvox, VOXEL_BYTES);
        crate::memory::check(grid_source, "one output volume", volume_bytes)?;
        let budget = usize::try_from(nvox).unwrap_or(usize::MAX).max(MIN_BUDGET);
        Ok(Volumes {
            spatial: spatial.to_vec(),
            nvox,
            has_t,
            kind,
            buf: Vec::new(),
            budget,
            spill_dir: spill_dir.to_path_buf(),
            spill: None,
            runs: Vec::new(),
            max_t: None,
            rows: 0,
            range: ValueRange::default(),
        })
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    pub fn rows(&self) -> u64 {
        self.rows
    }

    pub fn range(&self) -> ValueRange {
        self.range
    }

    /// Volumes present: `max(t) + 1` with a volume axis, else 1.
    pub fn volume_count(&self) -> u32 {
        match (self.has_t, self.max_t) {
            (false, _) => 1,
            (true, Some(t)) => t + 1,
            (true, None) => 0,
        }
    }

    /// Whether some voxel of the output gets the fill value.
    pub fn has_missing(&self) -> bool {
        self.nvox
            .checked_mul(u64::from(self.volume_count()))
            .is_none_or(|all| self.rows < all)
    }

    /// Add one row: volume `t` (0 without a volume axis), F-order voxel index `idx`, value bits.
    pub fn push(&mut self, t: u32, idx: u64, bits: u64) -> Result<()> {
        self.range.add(self.kind.to_f64(bits));
        self.max_t = Some(self.max_t.map_or(t, |m| m.max(t)));
        self.rows += 1;
        self.buf.push(Rec { t, idx, bits });
        if self.buf.len() >= self.budget {
            self.spill_buffer()?;
        }
        Ok(())
    }

    fn spill_buffer(&mut self) -> Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        if self.spill.is_none() {
            self.spill = Some((spill_file(&self.spill_dir)?, 0));
        }
        let Some((file, end)) = self.spill.as_mut() else {
            return Ok(());
        };
        self.buf.sort_unstable_by_key(|r| r.t);
        let mut run = Run::default();
        let mut bytes = Vec::with_capacity(self.buf.len() * REC_LEN);
        for group in self.buf.chunk_by(|a, b| a.t == b.t) {
            run.parts
                .push((group[0].t, *end + bytes.len() as u64, group.len() as u64));
            for r in group {
                bytes.extend_from_slice(&r.idx.to_le_bytes());
                bytes.extend_from_slice(&r.bits.to_le_bytes());
            }
        }
        file.write_all_at(&bytes, *end)
            .map_err(|e| VoxelError::io(&self.spill_dir, e))?;
        *end += bytes.len() as u64;
        self.runs.push(run);
        self.buf.clear();
        Ok(())
    }

    /// Assemble the volumes in order and hand each to `each`; duplicates are errors naming the voxel.
    pub fn finish(mut self, mut each: impl FnMut(&Volume) -> Result<()>) -> Result<()> {
        let count = self.volume_count();
        let nvox = usize::try_from(self.nvox)
            .map_err(|_| VoxelError::Invalid("volume too large".into()))?;
        let where_ = self.spill_dir.display().to_string();
        let failed = |e| {
            let needed = crate::memory::bytes_of(nvox as u64, VOXEL_BYTES);
            crate::memory::allocation_failed(&where_, "one output volume", needed, e)
        };
        let mut values = Vec::new();
        values.try_reserve_exact(nvox).map_err(failed)?;
        values.resize(nvox, 0);
        let mut seen = Vec::new();
        seen.try_reserve_exact(nvox).map_err(failed)?;
        seen.resize(nvox, false);
        let mut vol = Volume { t: 0, values, seen };
        if self.spill.is_some() {
            self.spill_buffer()?;
        } else {
            self.buf.sort_unstable_by_key(|r| r.t);
        }
        let mut next = 0usize;
        for t in 0..count {
            vol.t = t;
            vol.seen.fill(false);
            if self.spill.is_some() {
                self.place_spilled(t, &mut vol)?;
            } else {
                while let Some(r) = self.buf.get(next).filter(|r| r.t == t) {
                    self.place(&mut vol, r.idx, r.bits)?;
                    next += 1;
                }
            }
            each(&vol)?;
        }
        Ok(())
    }

    fn place_spilled(&self, t: u32, vol: &mut Volume) -> Result<()> {
        let Some((file, _)) = &self.spill else {
            return Ok(());
        };
        let mut chunk = vec![0u8; READ_CHUNK * REC_LEN];
        for run in &self.runs {
            let Ok(at) = run.parts.binary_search_by_key(&t, |p| p.0) else {
                continue;
            };
            let (_, offset, mut left) = run.parts[at];
            let mut pos = offset;
            while left > 0 {
                let n = left.min(READ_CHUNK as u64) as usize;
                let bytes = &mut chunk[..n * REC_LEN];
                file.read_exact_at(bytes, pos)
                    .map_err(|e| VoxelError::io(&self.spill_dir, e))?;
                for rec in bytes.chunks_exact(REC_LEN) {
                    let idx = u64::from_le_bytes(rec[..8].try_into().unwrap_or_default());
                    let bits = u64::from_le_bytes(rec[8..].try_into().unwrap_or_default());
                    self.place(vol, idx, bits)?;
                }
                pos += (n * REC_LEN) as u64;
                left -= n as u64;
            }
        }
        Ok(())
    }

    fn place(&self, vol: &mut Volume, idx: u64, bits: u64) -> Result<()> {
        let at = idx as usize;
        if vol.seen[at] {
            let first = vol.values[at];
            let same = if first == bits {
                "the same value twice"
            } else {
                "different values"
            };
            return Err(VoxelError::Invalid(format!(
                "two rows for voxel {} ({same}: {} and {}); every voxel may appear once (exact duplicates are errors too)",
                self.voxel_name(idx, vol.t),
                self.kind.show(first),
                self.kind.show(bits)
            )));
        }
        vol.seen[at] = true;
        vol.values[at] = bits;
        Ok(())
    }

    /// `(i, j, k[, t]) = (…)` for messages.
    pub fn voxel_name(&self, idx: u64, t: u32) -> String {
        voxel_name(&self.spatial, idx, self.has_t.then_some(t))
    }
}

/// `(i, j, k[, t]) = (…)` of the F-order index `idx` in `spatial`.
pub fn voxel_name(spatial: &[usize], mut idx: u64, t: Option<u32>) -> String {
    let names = ["i", "j", "k"];
    let mut keys = Vec::new();
    let mut vals = Vec::new();
    for (n, &d) in spatial.iter().enumerate() {
        keys.push(names[n.min(2)].to_string());
        vals.push((idx % d.max(1) as u64).to_string());
        idx /= d.max(1) as u64;
    }
    if let Some(t) = t {
        keys.push("t".into());
        vals.push(t.to_string());
    }
    format!("({}) = ({})", keys.join(", "), vals.join(", "))
}

/// A new spill file in `dir`, unlinked at once (the open handle keeps it; nothing is left behind on a crash).
fn spill_file(dir: &Path) -> Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    static SPILLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = SPILLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = dir.join(format!(".voxelscan-spill-{}-{n}.tmp", std::process::id()));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| VoxelError::io(&path, e))?;
    std::fs::remove_file(&path).map_err(|e| VoxelError::io(&path, e))?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(v: Volumes) -> Result<Vec<(u32, Vec<Option<u64>>)>> {
        let mut out = Vec::new();
        v.finish(|vol| {
            let vals = vol
                .values
                .iter()
                .zip(&vol.seen)
                .map(|(&b, &s)| s.then_some(b))
                .collect();
            out.push((vol.t, vals));
            Ok(())
        })?;
        Ok(out)
    }

    #[test]
    fn assembles_volumes_from_rows_in_any_order_with_and_without_spilling() {
        let dir = tempfile::tempdir().unwrap();
        // 2x2x1 volumes, 3 of them, rows in reverse order; a tiny budget forces several runs.
        for budget in [2, 1 << 20] {
            let mut v = Volumes::new(&[2, 2, 1], true, Kind::Signed, dir.path(), "test").unwrap();
            v.budget = budget;
            for t in (0..3u32).rev() {
                for idx in (0..4u64).rev() {
                    if (t, idx) != (1, 2) {
                        v.push(t, idx, (t as u64) * 10 + idx).unwrap();
                    }
                }
            }
            assert!(v.has_missing());
            let vols = collect(v).unwrap();
            assert_eq!(vols.len(), 3);
            assert_eq!(vols[1].1, vec![Some(10), Some(11), None, Some(13)]);
            assert_eq!(vols[2].1[3], Some(23));
        }
        // Nothing is left in the spill directory.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn duplicates_name_the_voxel_even_across_runs() {
        let dir = tempfile::tempdir().unwrap();
        let mut v = Volumes::new(&[3, 2, 2], true, Kind::Float, dir.path(), "test").unwrap();
        v.budget = 1;
        v.push(1, 5, 1.5f64.to_bits()).unwrap();
        v.push(1, 5, 1.5f64.to_bits()).unwrap();
        let err = collect(v).unwrap_err().to_string();
        assert!(err.contains("(i, j, k, t) = (2, 1, 0, 1)"), "{err}");
        assert!(err.contains("the same value twice"), "{err}");
    }

    #[test]
    fn ranges_skip_nan_and_infinities() {
        let dir = tempfile::tempdir().unwrap();
        let mut v = Volumes::new(&[4], false, Kind::Float, dir.path(), "test").unwrap();
        for x in [f64::NAN, -2.0, f64::INFINITY, 7.0] {
            v.push(0, 0, x.to_bits()).unwrap();
        }
        assert_eq!(v.range().finite, Some((-2.0, 7.0)));
        assert!(v.range().has_nan);
    }
}
