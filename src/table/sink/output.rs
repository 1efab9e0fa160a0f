//! Where a written image goes: a temporary file next to a local target (renamed into place only when complete),
//! or a local temporary file uploaded to an object store. `.gz` targets are compressed as they are written, with a
//! sync flush every `span` bytes of image data, so each flush point is a seek point of the crate's gzip index
//! (byte-aligned, its window the last 32 KiB written); the index is saved next to the new file (or in the cache
//! directory, as readers look for it) at once, so the image is randomly accessible without a first pass.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Result, VoxelError};
use crate::io::gzip::GzipOptions;
use crate::io::gzip::index::{FileIdentity, GzIndex, SeekPoint, WINDOW_SIZE};
use crate::io::gzip::sidecar::{index_locations, save_index};

/// The gzip level: zlib-rs's fastest with dynamic Huffman trees. Its level 1 ("quick", static trees only) grows
/// noise-like voxel data by ~3 % (a 44 MB random int16 image became 45.4 MB); level 2 gives 37.9 MB in the same time,
/// about what CPython's zlib level 1 — nibabel's `Opener.default_compresslevel` — gives (38.3 MB).
pub const GZIP_LEVEL: u32 = 2;

/// Whether a target name asks for gzip (`.gz`, any case).
pub fn is_gzip_name(name: &str) -> bool {
    name.to_ascii_lowercase().ends_with(".gz")
}

/// Counts the bytes that pass through to the file (the compressed offset of each seek point).
struct Counting {
    inner: BufWriter<File>,
    count: u64,
}

impl Write for Counting {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

enum Stream {
    Plain(BufWriter<File>),
    Gz {
        enc: Box<flate2::write::GzEncoder<Counting>>,
        span: u64,
        next_point: u64,
        window: Vec<u8>,
        points: Vec<SeekPoint>,
    },
}

/// A temporary file being written, removed on drop unless it was committed.
pub struct TempOutput {
    path: PathBuf,
    label: String,
    stream: Option<Stream>,
    out_pos: u64,
    gz_options: GzipOptions,
}

impl std::fmt::Debug for TempOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TempOutput")
            .field("path", &self.path)
            .finish()
    }
}

impl TempOutput {
    /// A new temporary file in `dir` for the target `label` (its file name is used in the temporary's name).
    pub fn create(dir: &Path, label: &str, gzip: bool) -> Result<TempOutput> {
        use std::os::unix::fs::OpenOptionsExt;
        static TEMPS: AtomicU64 = AtomicU64::new(0);
        let n = TEMPS.fetch_add(1, Ordering::Relaxed);
        let base = label.rsplit('/').next().unwrap_or("out");
        let path = dir.join(format!(".{base}.{}-{n}.tmp", std::process::id()));
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&path)
            .map_err(|e| VoxelError::io(&path, e))?;
        let writer = BufWriter::with_capacity(1 << 20, file);
        let gz_options = GzipOptions::from_env();
        let stream = if gzip {
            let span = gz_options.span.max(1);
            Stream::Gz {
                enc: Box::new(flate2::write::GzEncoder::new(
                    Counting {
                        inner: writer,
                        count: 0,
                    },
                    flate2::Compression::new(GZIP_LEVEL),
                )),
                span,
                next_point: span,
                window: Vec::with_capacity(2 * WINDOW_SIZE),
                points: Vec::new(),
            }
        } else {
            Stream::Plain(writer)
        };
        Ok(TempOutput {
            path,
            label: label.to_string(),
            stream: Some(stream),
            out_pos: 0,
            gz_options,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn io(&self, e: std::io::Error) -> VoxelError {
        VoxelError::io(&self.label, e)
    }

    /// Append image bytes.
    pub fn write(&mut self, bytes: &[u8]) -> Result<()> {
        let pos = &mut self.out_pos;
        let result = match self.stream.as_mut() {
            None => Ok(()),
            Some(Stream::Plain(w)) => {
                *pos += bytes.len() as u64;
                w.write_all(bytes)
            }
            Some(Stream::Gz {
                enc,
                span,
                next_point,
                window,
                points,
            }) => write_gz(
                enc,
                GzState {
                    span: *span,
                    next_point,
                    window,
                    points,
                },
                pos,
                bytes,
            ),
        };
        result.map_err(|e| self.io(e))
    }

    /// Finish the file and move it to `target` (a local path); write its gzip index.
    pub fn commit_local(mut self, target: &Path) -> Result<()> {
        let index = self.finish()?;
        std::fs::rename(&self.path, target).map_err(|e| VoxelError::io(target, e))?;
        if let Some((index, options)) = index {
            save_local_index(target, &index, &options);
        }
        Ok(())
    }

    /// Finish the file; returns its gzip index (for `.gz`, unless indexes are disabled).
    pub fn finish(&mut self) -> Result<Option<(GzIndex, GzipOptions)>> {
        let total = self.out_pos;
        let index = match self.stream.take() {
            None => None,
            Some(Stream::Plain(mut w)) => {
                w.flush().map_err(|e| self.io(e))?;
                w.get_ref().sync_all().map_err(|e| self.io(e))?;
                None
            }
            Some(Stream::Gz {
                enc, span, points, ..
            }) => {
                let mut counting = enc.finish().map_err(|e| self.io(e))?;
                counting.flush().map_err(|e| self.io(e))?;
                counting
                    .inner
                    .get_ref()
                    .sync_all()
                    .map_err(|e| self.io(e))?;
                self.gz_options.use_index.then(|| {
                    (
                        GzIndex::complete(span, points, total),
                        self.gz_options.clone(),
                    )
                })
            }
        };
        Ok(index)
    }
}

impl Drop for TempOutput {
    fn drop(&mut self) {
        // Committed files were renamed away; anything else is a failed write: leave nothing behind.
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The seek-point bookkeeping of a gzip output.
struct GzState<'a> {
    span: u64,
    next_point: &'a mut u64,
    window: &'a mut Vec<u8>,
    points: &'a mut Vec<SeekPoint>,
}

/// Compress `bytes`, flushing and recording a seek point at every span boundary that more data follows.
fn write_gz(
    enc: &mut flate2::write::GzEncoder<Counting>,
    st: GzState<'_>,
    pos: &mut u64,
    mut bytes: &[u8],
) -> std::io::Result<()> {
    while !bytes.is_empty() {
        if *pos == *st.next_point {
            // A sync flush ends the deflate output at a byte boundary: decompression can restart here with the
            // last 32 KiB as its dictionary.
            enc.flush()?;
            let input = enc.get_ref().count;
            st.points
                .push(SeekPoint::new(*pos, input, 0, st.window.clone()));
            *st.next_point += st.span;
        }
        let room = usize::try_from(*st.next_point - *pos).unwrap_or(usize::MAX);
        let (now, rest) = bytes.split_at(room.min(bytes.len()));
        enc.write_all(now)?;
        keep_tail(st.window, now);
        *pos += now.len() as u64;
        bytes = rest;
    }
    Ok(())
}

/// Keep the last `WINDOW_SIZE` bytes written.
fn keep_tail(window: &mut Vec<u8>, bytes: &[u8]) {
    if bytes.len() >= WINDOW_SIZE {
        window.clear();
        window.extend_from_slice(&bytes[bytes.len() - WINDOW_SIZE..]);
        return;
    }
    let excess = (window.len() + bytes.len()).saturating_sub(WINDOW_SIZE);
    window.drain(..excess);
    window.extend_from_slice(bytes);
}

/// Save the index of the new gz file where readers look first; an index that cannot be saved only costs the
/// first reader a pass, so failures are not errors.
fn save_local_index(target: &Path, index: &GzIndex, options: &GzipOptions) {
    let Ok(file) = File::open(target) else {
        return;
    };
    let location = target.display().to_string();
    let Ok(identity) = FileIdentity::of(&file, &location) else {
        return;
    };
    // The new file's own permission bits (execute dropped), as for any index of it.
    let mode = file.metadata().map_or(0o600, |m| {
        use std::os::unix::fs::MetadataExt;
        crate::io::gzip::sidecar::index_mode(m.mode(), m.gid())
    });
    let _ = save_index(index, &index_locations(target, options), &identity, mode);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_written_index_reads_back_and_matches_the_data() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("x.nii.gz");
        let mut out = TempOutput::create(dir.path(), "x.nii.gz", true).unwrap();
        out.gz_options.span = 100_000;
        out.gz_options.cache_dir = None;
        out.gz_options.use_index = true;
        if let Some(Stream::Gz {
            span, next_point, ..
        }) = out.stream.as_mut()
        {
            *span = 100_000;
            *next_point = 100_000;
        }
        let data = crate::synth::random_i16_le(300_000, 7, 0, 4000);
        for chunk in data.chunks(77_777) {
            out.write(chunk).unwrap();
        }
        let tmp = out.path().to_path_buf();
        out.commit_local(&target).unwrap();
        assert!(!tmp.exists());
        let file = File::open(&target).unwrap();
        let id = FileIdentity::of(&file, "x").unwrap();
        let sidecar = dir.path().join(".x.nii.gz.vxidx");
        let index = GzIndex::load(&sidecar, &id, u64::MAX).unwrap();
        assert_eq!(index.total_out(), Some(data.len() as u64));
        assert_eq!(index.points().len(), 5);
        // Decompressing from the third point gives the data from there.
        let p = &index.points()[2];
        let mut cursor = crate::io::gzip::cursor::GzCursor::from_point(&file, "x", p).unwrap();
        let mut got = vec![0u8; 1000];
        cursor.read_exact(&mut got).unwrap();
        assert_eq!(&got[..], &data[p.out as usize..p.out as usize + 1000]);
    }

    #[test]
    fn a_dropped_output_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut out = TempOutput::create(dir.path(), "y.nii", false).unwrap();
        out.write(b"partial").unwrap();
        drop(out);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
