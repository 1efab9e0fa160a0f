//! Sequential gzip streams without an index: every read is one forward decompression pass that skips to each segment
//! in turn and stops after the last one. Used for gzip data behind an already-open handle (the path-based gzip source
//! with a seek-point index lives in `gzip/mod.rs`).

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex};

use flate2::read::MultiGzDecoder;

use crate::error::{Result, VoxelError};
use crate::io::{ByteSource, ReadStats};
use crate::plan::Segment;

/// Reads a shared file from byte 0 with positional reads, so the owner's cursor never moves.
struct PositionalReader {
    file: Arc<File>,
    pos: u64,
    consumed: Arc<Mutex<u64>>,
}

impl Read for PositionalReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.file.read_at(buf, self.pos)?;
        self.pos += n as u64;
        if let Ok(mut c) = self.consumed.lock() {
            *c += n as u64;
        }
        Ok(n)
    }
}

/// A gzip stream over an open handle.
#[derive(Debug)]
pub struct GzipStreamSource {
    file: Arc<File>,
    location: String,
    lock: Arc<Mutex<()>>,
}

impl GzipStreamSource {
    pub fn new(file: Arc<File>, location: String, lock: Arc<Mutex<()>>) -> GzipStreamSource {
        GzipStreamSource {
            file,
            location,
            lock,
        }
    }
}

/// Decompress `reader` once, copying the bytes of `segments` (sorted, non-overlapping) into `out`.
pub fn read_segments_forward(
    reader: impl Read,
    segments: &[Segment],
    out: &mut [u8],
    location: &str,
) -> Result<()> {
    let mut dec = std::io::BufReader::with_capacity(1 << 16, reader);
    let mut pos: u64 = 0;
    let mut written = 0usize;
    let mut scratch = vec![0u8; 1 << 16];
    let map_err = |e: std::io::Error, pos: u64| -> VoxelError {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            VoxelError::Truncated {
                path: location.to_string(),
                expected: pos,
                actual: pos,
            }
        } else {
            VoxelError::header(location, format!("gzip data is corrupt: {e}"))
        }
    };
    for s in segments {
        let mut skip = s.offset.checked_sub(pos).ok_or_else(|| {
            VoxelError::Invalid(format!(
                "{location}: segments out of order at offset {}",
                s.offset
            ))
        })?;
        while skip > 0 {
            let n = skip.min(scratch.len() as u64) as usize;
            let got = read_full(&mut dec, &mut scratch[..n]).map_err(|e| map_err(e, pos))?;
            if got < n {
                return Err(truncated(location, s.offset + s.len, pos + got as u64));
            }
            skip -= n as u64;
            pos += n as u64;
        }
        let n = s.len as usize;
        let got =
            read_full(&mut dec, &mut out[written..written + n]).map_err(|e| map_err(e, pos))?;
        if got < n {
            return Err(truncated(location, s.offset + s.len, pos + got as u64));
        }
        written += n;
        pos += n as u64;
    }
    Ok(())
}

fn truncated(location: &str, expected: u64, actual: u64) -> VoxelError {
    VoxelError::Truncated {
        path: format!("{location} (decompressed)"),
        expected,
        actual,
    }
}

/// Like `read_exact`, but returns how much was read when the stream ends early instead of failing.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

impl ByteSource for GzipStreamSource {
    fn location(&self) -> &str {
        &self.location
    }

    fn size(&self) -> Result<Option<u64>> {
        Ok(None)
    }

    fn read_segments(&self, segments: &[Segment], out: &mut [u8]) -> Result<ReadStats> {
        let total: u64 = segments.iter().map(|s| s.len).sum();
        if total != out.len() as u64 {
            return Err(VoxelError::Invalid(format!(
                "{}: read buffer of {} bytes for {total} planned bytes",
                self.location,
                out.len()
            )));
        }
        if segments.is_empty() {
            return Ok(ReadStats::default());
        }
        let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let consumed = Arc::new(Mutex::new(0u64));
        let reader = PositionalReader {
            file: Arc::clone(&self.file),
            pos: 0,
            consumed: Arc::clone(&consumed),
        };
        read_segments_forward(MultiGzDecoder::new(reader), segments, out, &self.location)?;
        let bytes_read = consumed.lock().map(|c| *c).unwrap_or(0);
        Ok(ReadStats {
            bytes_read,
            bytes_delivered: total,
            segments: segments.len() as u64,
            requests: 1,
        })
    }
}

/// A gzip file by path, opened afresh for each read (one forward pass per read).
#[derive(Debug)]
pub struct GzipPathSource {
    path: std::path::PathBuf,
    location: String,
}

impl GzipPathSource {
    pub fn new(path: &std::path::Path) -> GzipPathSource {
        GzipPathSource {
            path: path.to_path_buf(),
            location: path.display().to_string(),
        }
    }
}

impl ByteSource for GzipPathSource {
    fn location(&self) -> &str {
        &self.location
    }

    fn size(&self) -> Result<Option<u64>> {
        Ok(None)
    }

    fn read_segments(&self, segments: &[Segment], out: &mut [u8]) -> Result<ReadStats> {
        let file = File::open(&self.path).map_err(|e| VoxelError::io(&self.path, e))?;
        GzipStreamSource::new(Arc::new(file), self.location.clone(), Arc::default())
            .read_segments(segments, out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::{Compression, write::GzEncoder};
    use std::io::Write;

    fn gz(data: &[u8]) -> Vec<u8> {
        let mut e = GzEncoder::new(Vec::new(), Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn forward_pass_serves_all_segments() {
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(&gz(&data)).unwrap();
        let src = GzipStreamSource::new(Arc::new(f), "x.gz".into(), Arc::default());
        let segs = [
            Segment { offset: 10, len: 5 },
            Segment {
                offset: 200_000,
                len: 70_000,
            },
        ];
        let mut out = vec![0; 70_005];
        let st = src.read_segments(&segs, &mut out).unwrap();
        assert_eq!(&out[..5], &data[10..15]);
        assert_eq!(&out[5..], &data[200_000..270_000]);
        assert_eq!(st.requests, 1);
    }

    #[test]
    fn truncated_stream_is_an_error() {
        let data = vec![7u8; 1000];
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(&gz(&data)).unwrap();
        let src = GzipStreamSource::new(Arc::new(f), "x.gz".into(), Arc::default());
        let mut out = vec![0; 10];
        let err = src
            .read_segments(
                &[Segment {
                    offset: 995,
                    len: 10,
                }],
                &mut out,
            )
            .unwrap_err();
        assert!(err.to_string().contains("x.gz"), "{err}");
    }
}
