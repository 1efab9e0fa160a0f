//! Local, uncompressed files: positional reads (`pread`) or a memory map. Reads never move a caller's file cursor.

use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use memmap2::{Mmap, MmapOptions};

use super::ranges::{Coalesce, merge_ranges};
use super::{ByteSource, ReadStats};
use crate::error::{Result, VoxelError};
use crate::plan::Segment;

/// nibabel's `mmap` option. For owned results both mapping modes read the same bytes; they differ only for the
/// zero-copy views of [`crate::proxy::ArrayProxy::map_unscaled`] (`ReadOnly` views cannot be written,
/// `CopyOnWrite` ones can, privately).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum MmapMode {
    Off,
    /// numpy mode `'c'`, also what `mmap=True` means.
    #[default]
    CopyOnWrite,
    /// numpy mode `'r'`.
    ReadOnly,
}

impl std::str::FromStr for MmapMode {
    type Err = VoxelError;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "c" | "true" | "1" | "on" | "yes" => Ok(MmapMode::CopyOnWrite),
            "r" => Ok(MmapMode::ReadOnly),
            "off" | "false" | "0" | "no" | "none" => Ok(MmapMode::Off),
            _ => Err(VoxelError::Invalid(format!(
                "mmap should be one of c, r, off (got '{s}')"
            ))),
        }
    }
}

/// Where the file handle comes from.
#[derive(Debug, Clone)]
pub enum Handle {
    /// Open the path afresh for every read (nibabel's `keep_file_open=False`).
    PerRead,
    /// Open once, on first use, and keep it for the source's lifetime (`keep_file_open=True`).
    Kept(Arc<OnceLock<Arc<File>>>),
    /// A handle the caller opened; never closed by us, its cursor never moved.
    Shared(Arc<File>),
}

/// A local file read by positional reads or through a memory map.
#[derive(Debug)]
pub struct LocalSource {
    path: PathBuf,
    location: String,
    handle: Handle,
    mmap: MmapMode,
    /// Serialises reads on a shared handle, like nibabel's per-proxy RLock (shared by copies over the same handle).
    lock: Arc<Mutex<()>>,
    /// A span of the file mapped once and kept: reads inside it are copies out of the map.
    kept: Option<KeptMap>,
}

/// The bytes `[start, start + map.len())` of the file, mapped read-only.
#[derive(Debug)]
struct KeptMap {
    map: Mmap,
    start: u64,
}

impl KeptMap {
    /// Copy `segments` out of the map into `out` (concatenated); `false`, with nothing copied, when one of them
    /// lies outside the mapped span.
    fn copy(&self, segments: &[Segment], out: &mut [u8]) -> bool {
        let end = self.start + self.map.len() as u64;
        if segments
            .iter()
            .any(|s| s.offset < self.start || s.offset.saturating_add(s.len) > end)
        {
            return false;
        }
        let mut pos = 0usize;
        for s in segments {
            // Inside the map (checked above), so both fit in usize.
            let (from, n) = ((s.offset - self.start) as usize, s.len as usize);
            out[pos..pos + n].copy_from_slice(&self.map[from..from + n]);
            pos += n;
        }
        true
    }
}

impl LocalSource {
    pub fn new(path: &Path, handle: Handle, mmap: MmapMode, lock: Arc<Mutex<()>>) -> LocalSource {
        LocalSource {
            path: path.to_path_buf(),
            location: path.display().to_string(),
            handle,
            mmap,
            lock,
            kept: None,
        }
    }

    /// A source over `path` that maps the bytes `span` once and serves the reads inside it from the map, for as long
    /// as it lives (the SQL scan's slabs: only the slab is mapped, and the map goes with the slab's reader, so mapped
    /// pages never add up over a scan). Reads elsewhere are positional. `None` where the file cannot be mapped.
    pub fn with_kept_map(path: &Path, span: Range<u64>) -> Result<Option<LocalSource>> {
        let file = File::open(path).map_err(|e| VoxelError::io(path, e))?;
        let len = file.metadata().map_err(|e| VoxelError::io(path, e))?.len();
        if len < span.end {
            return Err(VoxelError::Truncated {
                path: path.display().to_string(),
                expected: span.end,
                actual: len,
            });
        }
        let Ok(n) = usize::try_from(span.end.saturating_sub(span.start)) else {
            return Ok(None);
        };
        // SAFETY: a private read-only mapping of bytes the file was just seen to hold, never written. Each read checks
        // the file's length first ([`LocalSource::read_segments`]), so a truncation between reads is an error; one
        // during a copy would fault, the documented hazard of memory-mapped reads (`MmapMode::Off` avoids it).
        let map = match unsafe { MmapOptions::new().offset(span.start).len(n).map(&file) } {
            Ok(m) => m,
            // Not mappable (special files, some filesystems, an empty span): positional reads instead.
            Err(_) => return Ok(None),
        };
        let mut source = LocalSource::new(
            path,
            Handle::Kept(Arc::new(OnceLock::from(Arc::new(file)))),
            MmapMode::ReadOnly,
            Arc::default(),
        );
        source.kept = Some(KeptMap {
            map,
            start: span.start,
        });
        Ok(Some(source))
    }

    fn file(&self) -> Result<Arc<File>> {
        let open = || {
            File::open(&self.path)
                .map(Arc::new)
                .map_err(|e| VoxelError::io(&self.path, e))
        };
        match &self.handle {
            Handle::PerRead => open(),
            Handle::Shared(f) => Ok(Arc::clone(f)),
            Handle::Kept(cell) => {
                if let Some(f) = cell.get() {
                    return Ok(Arc::clone(f));
                }
                let f = open()?;
                Ok(Arc::clone(cell.get_or_init(|| f)))
            }
        }
    }

    fn file_len(&self, file: &File) -> Result<u64> {
        Ok(file
            .metadata()
            .map_err(|e| VoxelError::io(&self.path, e))?
            .len())
    }

    fn check_bounds(&self, segments: &[Segment], len: u64) -> Result<()> {
        let end = segments
            .iter()
            .map(|s| s.offset.saturating_add(s.len))
            .max()
            .unwrap_or(0);
        if end > len {
            return Err(VoxelError::Truncated {
                path: self.location.clone(),
                expected: end,
                actual: len,
            });
        }
        Ok(())
    }

    fn read_mapped(&self, file: &File, segments: &[Segment], out: &mut [u8]) -> Result<bool> {
        // SAFETY: the map is read-only and private to this call; the length was checked against the file's size just
        // before mapping. A file truncated by another process during the copy would fault: that is the documented
        // hazard of memory-mapped reads (nibabel/numpy share it), and `MmapMode::Off` avoids it.
        let map: Mmap = match unsafe { MmapOptions::new().map(file) } {
            Ok(m) => m,
            // Not mappable (special files, some filesystems): fall back to positional reads, as numpy's memmap
            // failure makes nibabel do.
            Err(_) => return Ok(false),
        };
        let mut pos = 0usize;
        for s in segments {
            let (start, n) = (usize::try_from(s.offset), usize::try_from(s.len));
            let (Ok(start), Ok(n)) = (start, n) else {
                return Err(VoxelError::Invalid(format!(
                    "{}: segment beyond address space",
                    self.location
                )));
            };
            let src = map
                .get(start..start + n)
                .ok_or_else(|| VoxelError::Truncated {
                    path: self.location.clone(),
                    expected: s.offset + s.len,
                    actual: map.len() as u64,
                })?;
            out[pos..pos + n].copy_from_slice(src);
            pos += n;
        }
        Ok(true)
    }

    /// The segments by `pread`, neighbours closer than [`POSITIONAL_GAP`] read as one call (the gap read through into
    /// a scratch buffer): a box's rows within a plane cost one call, not one each. Returns the calls made.
    fn read_positional(&self, file: &File, segments: &[Segment], out: &mut [u8]) -> Result<u64> {
        let ranges: Vec<Range<u64>> = segments
            .iter()
            .map(|s| s.offset..s.offset.saturating_add(s.len))
            .collect();
        // Where each segment goes in `out` (segments are concatenated in their order).
        let mut at = Vec::with_capacity(segments.len());
        let mut pos = 0usize;
        for s in segments {
            at.push(pos);
            pos += s.len as usize;
        }
        let merged = merge_ranges(&ranges, POSITIONAL_COALESCE);
        let mut scratch = Vec::new();
        for m in &merged {
            if let [only] = m.parts[..]
                && ranges[only] == m.range
            {
                let n = segments[only].len as usize;
                self.read_at(file, &mut out[at[only]..at[only] + n], m.range.start)?;
                continue;
            }
            scratch.resize((m.range.end - m.range.start) as usize, 0);
            self.read_at(file, &mut scratch, m.range.start)?;
            for &p in &m.parts {
                let from = (ranges[p].start - m.range.start) as usize;
                let n = segments[p].len as usize;
                out[at[p]..at[p] + n].copy_from_slice(&scratch[from..from + n]);
            }
        }
        Ok(merged.len() as u64)
    }

    fn read_at(&self, file: &File, buf: &mut [u8], offset: u64) -> Result<()> {
        read_exact_at(file, buf, offset).map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                VoxelError::Truncated {
                    path: self.location.clone(),
                    expected: offset + buf.len() as u64,
                    actual: self.file_len(file).unwrap_or(0),
                }
            } else {
                VoxelError::io(&self.path, e)
            }
        })
    }
}

/// Positional reads merge across gaps below a page or so: a `pread` costs about a microsecond of system call and
/// page-cache lookup, in which the kernel copies a few kilobytes. Requests stay small enough for a scratch buffer.
const POSITIONAL_GAP: u64 = 4096;
const POSITIONAL_COALESCE: Coalesce = Coalesce {
    max_gap: POSITIONAL_GAP,
    max_overread: f64::INFINITY,
    max_request: 4 << 20,
    cost: None,
};

/// `read_exact_at` that retries interrupted reads (std's does too) and reports a short file as `UnexpectedEof`.
fn read_exact_at(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    file.read_exact_at(buf, offset)
}

/// Below this many bytes a map costs more than it saves.
const MIN_MAP_BYTES: u64 = 64 * 1024;

impl ByteSource for LocalSource {
    fn location(&self) -> &str {
        &self.location
    }

    fn size(&self) -> Result<Option<u64>> {
        let f = self.file()?;
        Ok(Some(self.file_len(&f)?))
    }

    fn read_segments(&self, segments: &[Segment], out: &mut [u8]) -> Result<ReadStats> {
        let total: u64 = segments.iter().map(|s| s.len).sum();
        if total != out.len() as u64 {
            return Err(VoxelError::Invalid(format!(
                "{}: read buffer of {} bytes for {} planned bytes",
                self.location,
                out.len(),
                total
            )));
        }
        let stats = ReadStats {
            bytes_read: total,
            bytes_delivered: total,
            segments: segments.len() as u64,
            requests: segments.len() as u64,
        };
        if segments.is_empty() {
            return Ok(stats);
        }
        let file = self.file()?;
        let len = self.file_len(&file)?;
        self.check_bounds(segments, len)?;
        if self.kept.as_ref().is_some_and(|k| k.copy(segments, out)) {
            // Copies out of a map kept for the source's lifetime: no request at all.
            return Ok(ReadStats {
                requests: 0,
                ..stats
            });
        }
        let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        if self.mmap != MmapMode::Off
            && total >= MIN_MAP_BYTES
            && segments.len() > 1
            && self.read_mapped(&file, segments, out)?
        {
            return Ok(ReadStats {
                requests: 1,
                ..stats
            });
        }
        let requests = self.read_positional(&file, segments, out)?;
        Ok(ReadStats { requests, ..stats })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn source(bytes: &[u8], mmap: MmapMode) -> (tempfile::NamedTempFile, LocalSource) {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(bytes).unwrap();
        let s = LocalSource::new(f.path(), Handle::PerRead, mmap, Arc::default());
        (f, s)
    }

    #[test]
    fn reads_segments_both_ways() {
        let data: Vec<u8> = (0..=255u8).cycle().take(200_000).collect();
        for mode in [MmapMode::Off, MmapMode::CopyOnWrite, MmapMode::ReadOnly] {
            let (_f, s) = source(&data, mode);
            let segs = [
                Segment {
                    offset: 3,
                    len: 70_000,
                },
                Segment {
                    offset: 100_000,
                    len: 5,
                },
            ];
            let mut out = vec![0; 70_005];
            s.read_segments(&segs, &mut out).unwrap();
            assert_eq!(&out[..70_000], &data[3..70_003]);
            assert_eq!(&out[70_000..], &data[100_000..100_005]);
        }
    }

    #[test]
    fn a_kept_map_serves_reads_inside_its_span_and_only_those() {
        let data: Vec<u8> = (0..=255u8).cycle().take(100_000).collect();
        let (f, _) = source(&data, MmapMode::Off);
        let s = LocalSource::with_kept_map(f.path(), 1000..60_000)
            .unwrap()
            .unwrap();
        let seg = |offset, len| Segment { offset, len };
        // Inside the span: copies out of the map, no request.
        let mut out = vec![0; 30];
        let st = s
            .read_segments(&[seg(1000, 10), seg(59_980, 20)], &mut out)
            .unwrap();
        assert_eq!(&out[..10], &data[1000..1010]);
        assert_eq!(&out[10..], &data[59_980..60_000]);
        assert_eq!((st.bytes_read, st.segments, st.requests), (30, 2, 0));
        // Reaching outside it: positional reads, one request per segment.
        let st = s
            .read_segments(&[seg(990, 20), seg(70_000, 10)], &mut out)
            .unwrap();
        assert_eq!(&out[..20], &data[990..1010]);
        assert_eq!(&out[20..], &data[70_000..70_010]);
        assert_eq!(st.requests, 2);
        // A span past the end of the file is refused; the file cut below a read is an error naming it.
        assert!(LocalSource::with_kept_map(f.path(), 0..200_000).is_err());
        std::fs::OpenOptions::new()
            .write(true)
            .open(f.path())
            .unwrap()
            .set_len(2000)
            .unwrap();
        let err = s.read_segments(&[seg(5000, 30)], &mut out).unwrap_err();
        assert!(matches!(err, VoxelError::Truncated { .. }), "{err}");
    }

    /// Positional reads merge segments less than a page apart into one call (read through a scratch buffer), keep
    /// farther ones apart, and put every segment where its order says, overlaps and all.
    #[test]
    fn positional_reads_merge_near_segments() {
        let data: Vec<u8> = (0..=255u8).cycle().take(300_000).collect();
        let (_f, s) = source(&data, MmapMode::Off);
        let seg = |offset, len| Segment { offset, len };
        // Rows of a box: 58 bytes every 192, three planes 18 KB apart; then one segment out of order, overlapping.
        let mut segs = Vec::new();
        for plane in 0..3u64 {
            for row in 0..20u64 {
                segs.push(seg(1000 + plane * 18_432 + row * 192, 58));
            }
        }
        segs.push(seg(1010, 100));
        let total: u64 = segs.iter().map(|s| s.len).sum();
        let mut out = vec![0; total as usize];
        let st = s.read_segments(&segs, &mut out).unwrap();
        let mut want = Vec::new();
        for s in &segs {
            want.extend_from_slice(&data[s.offset as usize..(s.offset + s.len) as usize]);
        }
        assert_eq!(out, want);
        assert_eq!((st.bytes_read, st.segments, st.requests), (total, 61, 3));
    }

    #[test]
    fn short_file_is_truncated_error() {
        let (_f, s) = source(&[1, 2, 3], MmapMode::Off);
        let mut out = vec![0; 4];
        let err = s
            .read_segments(&[Segment { offset: 0, len: 4 }], &mut out)
            .unwrap_err();
        assert!(
            matches!(
                err,
                VoxelError::Truncated {
                    expected: 4,
                    actual: 3,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn missing_file_names_path() {
        let s = LocalSource::new(
            Path::new("/no/such/file.nii"),
            Handle::PerRead,
            MmapMode::Off,
            Arc::default(),
        );
        let mut out = vec![0; 1];
        let err = s
            .read_segments(&[Segment { offset: 0, len: 1 }], &mut out)
            .unwrap_err();
        assert!(err.to_string().contains("/no/such/file.nii"));
    }

    #[test]
    fn parses_mmap_modes() {
        assert_eq!("c".parse::<MmapMode>().unwrap(), MmapMode::CopyOnWrite);
        assert_eq!("r".parse::<MmapMode>().unwrap(), MmapMode::ReadOnly);
        assert_eq!("off".parse::<MmapMode>().unwrap(), MmapMode::Off);
        assert!("rw".parse::<MmapMode>().is_err());
    }
}
