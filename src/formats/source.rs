//! Where header parsers get their bytes: a slice (a bounded prefix, or a whole file) or a forward-only stream
//! (a local file, possibly through a gzip decoder). Parsers ask for byte ranges in increasing order and learn
//! either the bytes, fewer bytes (the file ends first), or — from a prefix that cannot tell — a `Truncated`
//! error saying how many bytes are needed.

use std::io::{self, Read};
use std::path::{Path, PathBuf};

use crate::error::{Result, VoxelError};

/// A byte source for header parsing.
pub(crate) trait Source {
    /// Bytes `[offset, offset + len)`, or fewer when the file ends first.
    /// A prefix source returns `VoxelError::Truncated { expected: offset + len, .. }` instead of guessing.
    fn read(&mut self, offset: u64, len: usize) -> Result<Vec<u8>>;

    /// Whether the file holds at least `end` bytes (used to validate skipped regions without copying them).
    fn reaches(&mut self, end: u64) -> Result<bool>;

    /// The file the bytes come from (for error messages).
    fn path(&self) -> &Path;

    /// The file's length, once known (a whole slice, or a stream that has reached its end).
    fn known_len(&self) -> Option<u64>;
}

fn end_of(path: &Path, offset: u64, len: usize) -> Result<u64> {
    offset.checked_add(len as u64).ok_or_else(|| {
        VoxelError::header(
            path,
            format!("header field at byte {offset} is out of range"),
        )
    })
}

/// Bytes already in memory: a prefix of the file (`whole == false`) or all of it.
pub(crate) struct SliceSource<'a> {
    bytes: &'a [u8],
    whole: bool,
    path: &'a Path,
}

impl<'a> SliceSource<'a> {
    pub(crate) fn new(bytes: &'a [u8], whole: bool, path: &'a Path) -> Self {
        SliceSource { bytes, whole, path }
    }

    fn need_more(&self, expected: u64) -> VoxelError {
        VoxelError::Truncated {
            path: self.path.display().to_string(),
            expected,
            actual: self.bytes.len() as u64,
        }
    }
}

impl Source for SliceSource<'_> {
    fn read(&mut self, offset: u64, len: usize) -> Result<Vec<u8>> {
        let end = end_of(self.path, offset, len)?;
        let have = self.bytes.len() as u64;
        if end > have && !self.whole {
            return Err(self.need_more(end));
        }
        let start = offset.min(have) as usize;
        let stop = end.min(have) as usize;
        Ok(self.bytes.get(start..stop).unwrap_or_default().to_vec())
    }

    fn reaches(&mut self, end: u64) -> Result<bool> {
        if end <= self.bytes.len() as u64 {
            Ok(true)
        } else if self.whole {
            Ok(false)
        } else {
            Err(self.need_more(end))
        }
    }

    fn path(&self) -> &Path {
        self.path
    }

    fn known_len(&self) -> Option<u64> {
        self.whole.then_some(self.bytes.len() as u64)
    }
}

/// Bytes before the current read position a stream keeps buffered.
const KEEP_BEHIND: u64 = 1 << 20;

/// A forward-only stream (file or decompressor). Keeps the bytes read since the last skip, so that a parser
/// may re-read the start of the file (sniffing, then parsing) without seeking.
pub(crate) struct StreamSource<R> {
    reader: R,
    /// File offset of `buf[0]`.
    base: u64,
    buf: Vec<u8>,
    eof: bool,
    path: PathBuf,
}

impl<R: Read> StreamSource<R> {
    pub(crate) fn new(reader: R, path: &Path) -> Self {
        StreamSource {
            reader,
            base: 0,
            buf: Vec::new(),
            eof: false,
            path: path.to_path_buf(),
        }
    }

    fn buffered_end(&self) -> u64 {
        self.base + self.buf.len() as u64
    }

    /// Drop the buffer and skip forward to `offset`; false when the stream ends first.
    fn skip_to(&mut self, offset: u64) -> Result<bool> {
        let gap = offset.saturating_sub(self.buffered_end());
        self.base = self.buffered_end();
        self.buf.clear();
        if gap == 0 {
            return Ok(true);
        }
        let copied = io::copy(&mut (&mut self.reader).take(gap), &mut io::sink())
            .map_err(|e| VoxelError::io(&self.path, e))?;
        self.base += copied;
        if copied < gap {
            self.eof = true;
        }
        Ok(copied == gap)
    }

    /// Read until `end` is buffered or the stream ends.
    fn fill_to(&mut self, end: u64) -> Result<()> {
        while self.buffered_end() < end && !self.eof {
            let want = usize::try_from(end - self.buffered_end())
                .unwrap_or(usize::MAX)
                .min(1 << 16);
            let old = self.buf.len();
            self.buf.resize(old + want, 0);
            let got = loop {
                match self.reader.read(&mut self.buf[old..]) {
                    Ok(n) => break n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        self.buf.truncate(old);
                        return Err(VoxelError::io(&self.path, e));
                    }
                }
            };
            self.buf.truncate(old + got);
            if got == 0 {
                self.eof = true;
            }
        }
        Ok(())
    }
}

impl<R: Read> Source for StreamSource<R> {
    fn read(&mut self, offset: u64, len: usize) -> Result<Vec<u8>> {
        let end = end_of(&self.path, offset, len)?;
        if offset < self.base {
            // Parsers only move forward after a skip; reaching here is a bug, reported rather than panicking.
            return Err(VoxelError::header(
                &self.path,
                format!("internal: header re-read at byte {offset}"),
            ));
        }
        if offset > self.buffered_end() && !self.skip_to(offset)? {
            return Ok(Vec::new());
        }
        // Keep the start of the file for re-reads, but not megabytes of extension headers read in sequence.
        let behind = offset - self.base;
        if behind > KEEP_BEHIND {
            let drop = usize::try_from(behind)
                .unwrap_or(usize::MAX)
                .min(self.buf.len());
            self.buf.drain(..drop);
            self.base += drop as u64;
        }
        self.fill_to(end)?;
        let start = (offset - self.base) as usize;
        let stop = (end.min(self.buffered_end()) - self.base) as usize;
        Ok(self.buf.get(start..stop).unwrap_or_default().to_vec())
    }

    fn reaches(&mut self, end: u64) -> Result<bool> {
        if end <= self.buffered_end() {
            return Ok(true);
        }
        if self.eof {
            return Ok(false);
        }
        self.skip_to(end)
    }

    fn path(&self) -> &Path {
        &self.path
    }

    fn known_len(&self) -> Option<u64> {
        self.eof.then(|| self.buffered_end())
    }
}

/// Content known in parts, as fetched by ranged requests: the start of the file and optionally a stretch further
/// on (an MGH footer after its data), with the file's length when known. A read past the known length is short;
/// a read of bytes not fetched is a `Truncated` asking for them.
pub(crate) struct PartsSource<'a> {
    head: &'a [u8],
    tail: Option<(u64, &'a [u8])>,
    len: Option<u64>,
    path: &'a Path,
}

impl<'a> PartsSource<'a> {
    pub(crate) fn new(
        head: &'a [u8],
        tail: Option<(u64, &'a [u8])>,
        len: Option<u64>,
        path: &'a Path,
    ) -> Self {
        PartsSource {
            head,
            tail,
            len,
            path,
        }
    }

    fn need_more(&self, expected: u64) -> VoxelError {
        VoxelError::Truncated {
            path: self.path.display().to_string(),
            expected,
            actual: self.head.len() as u64,
        }
    }
}

impl Source for PartsSource<'_> {
    fn read(&mut self, offset: u64, len: usize) -> Result<Vec<u8>> {
        let end = end_of(self.path, offset, len)?;
        let stop = self.len.map_or(end, |n| end.min(n));
        if offset >= stop {
            return Ok(Vec::new());
        }
        if stop <= self.head.len() as u64 {
            return Ok(self.head[offset as usize..stop as usize].to_vec());
        }
        if let Some((at, t)) = self.tail
            && offset >= at
            && stop - at <= t.len() as u64
        {
            return Ok(t[(offset - at) as usize..(stop - at) as usize].to_vec());
        }
        Err(self.need_more(end))
    }

    fn reaches(&mut self, end: u64) -> Result<bool> {
        if end <= self.head.len() as u64 {
            return Ok(true);
        }
        match self.len {
            Some(n) => Ok(end <= n),
            None => Err(self.need_more(end)),
        }
    }

    fn path(&self) -> &Path {
        self.path
    }

    fn known_len(&self) -> Option<u64> {
        self.len
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_asks_for_more_and_whole_gives_short_reads() {
        let data: Vec<u8> = (0..10).collect();
        let p = Path::new("x.nii");
        let mut prefix = SliceSource::new(&data, false, p);
        assert_eq!(prefix.read(2, 3).unwrap(), vec![2, 3, 4]);
        match prefix.read(8, 4) {
            Err(VoxelError::Truncated {
                expected, actual, ..
            }) => assert_eq!((expected, actual), (12, 10)),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            prefix.reaches(11),
            Err(VoxelError::Truncated { expected: 11, .. })
        ));
        let mut whole = SliceSource::new(&data, true, p);
        assert_eq!(whole.read(8, 4).unwrap(), vec![8, 9]);
        assert_eq!(whole.read(20, 4).unwrap(), Vec::<u8>::new());
        assert!(whole.reaches(10).unwrap());
        assert!(!whole.reaches(11).unwrap());
        assert!(whole.read(u64::MAX, 2).is_err());
    }

    #[test]
    fn stream_rereads_the_start_then_skips_forward() {
        let data: Vec<u8> = (0..=255).collect();
        let mut s = StreamSource::new(&data[..], Path::new("x"));
        assert_eq!(s.read(0, 4).unwrap(), vec![0, 1, 2, 3]);
        assert_eq!(s.read(0, 6).unwrap(), vec![0, 1, 2, 3, 4, 5]);
        assert!(s.reaches(100).unwrap());
        assert_eq!(s.read(100, 2).unwrap(), vec![100, 101]);
        assert!(
            s.read(50, 1).is_err(),
            "going backwards after a skip is refused, not a panic"
        );
        assert_eq!(s.read(250, 10).unwrap(), vec![250, 251, 252, 253, 254, 255]);
        assert_eq!(s.read(300, 10).unwrap(), Vec::<u8>::new());
        assert!(!s.reaches(1000).unwrap());
    }

    #[test]
    fn parts_serve_head_and_tail_and_ask_for_gaps() {
        let head: Vec<u8> = (0..10).collect();
        let tail = [7u8, 8, 9];
        let p = Path::new("x.mgh");
        let mut s = PartsSource::new(&head, Some((100, &tail)), Some(102), p);
        assert_eq!(s.read(2, 3).unwrap(), vec![2, 3, 4]);
        assert_eq!(
            s.read(100, 20).unwrap(),
            vec![7, 8],
            "clipped at the known length"
        );
        assert_eq!(s.read(150, 4).unwrap(), Vec::<u8>::new());
        assert!(matches!(
            s.read(50, 4),
            Err(VoxelError::Truncated { expected: 54, .. })
        ));
        assert!(s.reaches(102).unwrap() && !s.reaches(103).unwrap());
        let mut open = PartsSource::new(&head, None, None, p);
        assert!(matches!(
            open.reaches(11),
            Err(VoxelError::Truncated { expected: 11, .. })
        ));
    }
}
