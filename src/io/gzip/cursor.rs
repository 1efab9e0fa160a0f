//! A forward decompression pass over a gzip stream, from the start of the file, a seek point or a mark, across
//! member boundaries; optionally recording seek points and marks as it goes.

use std::ffi::c_int;

use libz_rs_sys as z;

use super::index::*;
use super::inflate::{Inflater, Output};
use crate::error::{Result, VoxelError};

/// A forward pass over a gzip stream, from the start of the file or from a seek point, producing decompressed bytes
/// in order across member boundaries; optionally recording seek points as it goes.
pub struct GzCursor<'a> {
    src: &'a dyn ReadAt,
    location: &'a str,
    inf: Inflater,
    /// Inside a member entered at a seek point: raw deflate, its trailer is skipped by hand.
    raw: bool,
    buf: Vec<u8>,
    buf_pos: usize,
    buf_len: usize,
    /// File offset just after `buf[..buf_len]`.
    next_read: u64,
    input_ended: bool,
    out_pos: u64,
    finished: bool,
    compressed_read: u64,
    builder: Option<GzIndexBuilder>,
}

impl<'a> GzCursor<'a> {
    /// A pass from the start of the gzip file.
    pub fn from_start(src: &'a dyn ReadAt, location: &'a str) -> Result<GzCursor<'a>> {
        let inf = Inflater::new(GZIP_BITS).map_err(|m| corrupt(location, 0, &m))?;
        Ok(GzCursor::with(src, location, inf, false, 0, 0))
    }

    /// A pass restarting at `point`.
    pub fn from_point(
        src: &'a dyn ReadAt,
        location: &'a str,
        point: &SeekPoint,
    ) -> Result<GzCursor<'a>> {
        let at = Mark {
            out: point.out,
            input: point.input,
            bits: point.bits,
        };
        let window = point
            .window()
            .map_err(|e| corrupt(location, point.input, &format!("its index: {e}")))?;
        GzCursor::raw_at(src, location, at, window)
    }

    /// A pass restarting at `mark` as if the 32 KiB before it were all `fill` bytes: the bytes it makes are exact
    /// only where they do not copy from before the mark (see the module docs).
    pub fn from_mark(
        src: &'a dyn ReadAt,
        location: &'a str,
        mark: Mark,
        fill: u8,
    ) -> Result<GzCursor<'a>> {
        GzCursor::raw_at(src, location, mark, &[fill; WINDOW_SIZE])
    }

    fn raw_at(
        src: &'a dyn ReadAt,
        location: &'a str,
        at: Mark,
        window: &[u8],
    ) -> Result<GzCursor<'a>> {
        let bad = |m: String| corrupt(location, at.input, &m);
        let mut inf = Inflater::new(RAW_BITS).map_err(bad)?;
        if at.bits > 0 {
            let mut byte = [0u8; 1];
            let before = at.input.saturating_sub(1);
            let got =
                read_full_at(src, &mut byte, before).map_err(|e| VoxelError::io(location, e))?;
            if got == 0 {
                return Err(truncated_input(location, at.out));
            }
            inf.prime(at.bits, byte[0]).map_err(bad)?;
        }
        inf.set_dictionary(window).map_err(bad)?;
        Ok(GzCursor::with(src, location, inf, true, at.input, at.out))
    }

    fn with(
        src: &'a dyn ReadAt,
        location: &'a str,
        inf: Inflater,
        raw: bool,
        input: u64,
        out: u64,
    ) -> GzCursor<'a> {
        GzCursor {
            src,
            location,
            inf,
            raw,
            buf: vec![0u8; INPUT_CHUNK],
            buf_pos: 0,
            buf_len: 0,
            next_read: input,
            input_ended: false,
            out_pos: out,
            finished: false,
            compressed_read: 0,
            builder: None,
        }
    }

    /// Read compressed input `n` bytes at a time (default 128 KiB): short passes read less past their end.
    pub fn input_chunk(mut self, n: usize) -> GzCursor<'a> {
        self.buf.truncate(n.max(1));
        self
    }

    /// Record seek points during this pass.
    pub fn recording(mut self, builder: GzIndexBuilder) -> GzCursor<'a> {
        self.builder = Some(builder);
        self
    }

    /// Decompressed offset of the next byte.
    pub fn out_pos(&self) -> u64 {
        self.out_pos
    }

    /// Offset in the gz file of the next compressed byte to be consumed.
    pub fn compressed_pos(&self) -> u64 {
        self.next_read - (self.buf_len - self.buf_pos) as u64
    }

    /// Compressed bytes read from the source so far.
    pub fn compressed_read(&self) -> u64 {
        self.compressed_read
    }

    /// Whether the pass has reached the end of the last member.
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// The points recorded (if recording), how far the pass got and, if it reached the end, the total size.
    pub fn into_record(self) -> Option<PassRecord> {
        let total_out = self.finished.then_some(self.out_pos);
        let reached_out = self.out_pos;
        self.builder.map(|b| PassRecord {
            points: b.points,
            marks: b.marks,
            reached_out,
            total_out,
        })
    }

    /// Decompress into `out`, returning how many bytes were produced: `out.len()`, or fewer only at the end of the
    /// stream (0 once finished). A stream that stops mid-member or holds bad data is an error naming the file.
    /// Decompress to the end of the stream, discarding the output (to record index points), telling `progress` the
    /// compressed bytes consumed every 16 MiB of output and once at the end.
    pub fn drain(&mut self, progress: &mut impl FnMut(u64)) -> Result<()> {
        let mut scratch = vec![0u8; 1 << 20];
        let mut since = 0usize;
        loop {
            let n = self.fill(&mut scratch)?;
            if n == 0 {
                break;
            }
            since += n;
            if since >= 16 << 20 {
                progress(self.compressed_pos());
                since = 0;
            }
        }
        progress(self.compressed_pos());
        Ok(())
    }

    pub fn fill(&mut self, out: &mut [u8]) -> Result<usize> {
        let len = out.len();
        self.fill_output(&mut Output::Slice(out), len)
    }

    /// Decompress exactly `n` more bytes onto the end of `v`, straight into its spare capacity (not zeroed first,
    /// which matters for large buffers kept by the data cache); a stream that ends first is `Truncated`.
    pub fn read_exact_into(&mut self, v: &mut Vec<u8>, n: usize) -> Result<()> {
        let start = self.out_pos;
        v.reserve(n);
        let made = self.fill_output(&mut Output::Spare(v), n)?;
        if made < n {
            return Err(VoxelError::Truncated {
                path: format!("{} (decompressed)", self.location),
                expected: start + n as u64,
                actual: self.out_pos,
            });
        }
        Ok(())
    }

    /// Decompress `len` bytes into `out`; how many were made (fewer only at the end of the stream).
    fn fill_output(&mut self, out: &mut Output<'_>, len: usize) -> Result<usize> {
        let mut made = 0;
        while made < len && !self.finished {
            if self.buf_pos == self.buf_len {
                self.refill()?;
            }
            let (flush, room) = self.flush_and_room(len - made);
            let input = &self.buf[self.buf_pos..self.buf_len];
            let (used, n, ret) = self.inf.inflate_into(input, out, made, room, flush);
            self.buf_pos += used;
            made += n;
            self.out_pos += n as u64;
            match ret {
                z::Z_OK => self.maybe_record(),
                z::Z_STREAM_END => self.next_member()?,
                z::Z_BUF_ERROR if self.input_ended && self.buf_pos == self.buf_len => {
                    return Err(VoxelError::Truncated {
                        path: format!("{} (gzip stream ends early)", self.location),
                        expected: self.out_pos + (len - made) as u64,
                        actual: self.out_pos,
                    });
                }
                z::Z_BUF_ERROR => {}
                _ => {
                    return Err(corrupt(
                        self.location,
                        self.compressed_pos(),
                        &self.inf.message(),
                    ));
                }
            }
        }
        Ok(made)
    }

    /// How to call inflate for `room` bytes of output space. Recording stops at every block boundary (`Z_BLOCK`)
    /// only once a point is due; before that, plain inflate runs up to the offset where it becomes due, so a
    /// recording pass costs no more than a plain one (`Z_BLOCK` returns, and copies the window, once per block).
    fn flush_and_room(&self, room: usize) -> (c_int, usize) {
        match self.builder.as_ref().map(GzIndexBuilder::due_at) {
            None => (z::Z_NO_FLUSH, room),
            Some(Some(at)) if at > self.out_pos => {
                let until = usize::try_from(at - self.out_pos).unwrap_or(usize::MAX);
                (z::Z_NO_FLUSH, room.min(until))
            }
            Some(_) => (z::Z_BLOCK, room),
        }
    }

    /// Fill all of `out`; a stream that ends first is `VoxelError::Truncated`.
    pub fn read_exact(&mut self, out: &mut [u8]) -> Result<()> {
        let start = self.out_pos;
        let n = self.fill(out)?;
        if n < out.len() {
            return Err(VoxelError::Truncated {
                path: format!("{} (decompressed)", self.location),
                expected: start + out.len() as u64,
                actual: self.out_pos,
            });
        }
        Ok(())
    }

    /// Decompress and drop `n` bytes, using `scratch` as the landing area.
    pub fn skip(&mut self, mut n: u64, scratch: &mut [u8]) -> Result<()> {
        let target = self.out_pos + n;
        while n > 0 {
            let k = n.min(scratch.len() as u64) as usize;
            let got = self.fill(&mut scratch[..k])?;
            if got < k {
                return Err(VoxelError::Truncated {
                    path: format!("{} (decompressed)", self.location),
                    expected: target,
                    actual: self.out_pos,
                });
            }
            n -= k as u64;
        }
        Ok(())
    }

    /// Decompress to the end of the stream, discarding the data (to complete an index).
    pub fn skip_to_end(&mut self, scratch: &mut [u8]) -> Result<()> {
        while self.fill(scratch)? > 0 {}
        Ok(())
    }

    /// Take the next compressed bytes, as many as the source gives in one read (a store's reader gives what a run
    /// needs and no more, so asking to fill the whole buffer would cost a request for bytes never used).
    fn refill(&mut self) -> Result<()> {
        let n = loop {
            match self.src.read_at(&mut self.buf, self.next_read) {
                Ok(n) => break n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(VoxelError::io(self.location, e)),
            }
        };
        self.buf_pos = 0;
        self.buf_len = n;
        self.next_read += n as u64;
        self.compressed_read += n as u64;
        self.input_ended = n == 0;
        Ok(())
    }

    fn maybe_record(&mut self) {
        let Some(builder) = self.builder.as_mut() else {
            return;
        };
        // At the end of a gzip header or of a block that is not the member's last (zran's test).
        let at_boundary = self.inf.data_type() & 0xc0 == 0x80;
        if !at_boundary {
            return;
        }
        let input = self.next_read - (self.buf_len - self.buf_pos) as u64;
        let bits = (self.inf.data_type() & 7) as u8;
        if builder.mark_due(self.out_pos) {
            builder.marks.push(Mark {
                out: self.out_pos,
                input,
                bits,
            });
            builder.last_mark = Some(self.out_pos);
        }
        if !builder.due(self.out_pos) {
            return;
        }
        builder
            .points
            .push(SeekPoint::new(self.out_pos, input, bits, self.inf.window()));
        builder.last_out = Some(self.out_pos);
    }

    /// After a member's end: skip its trailer if zlib did not read it, skip zero padding, start the next member.
    fn next_member(&mut self) -> Result<()> {
        if self.raw {
            self.consume(8)?;
        }
        loop {
            if self.buf_pos == self.buf_len {
                self.refill()?;
                if self.buf_len == 0 {
                    self.finished = true;
                    return Ok(());
                }
            }
            let zeros = self.buf[self.buf_pos..self.buf_len]
                .iter()
                .take_while(|&&b| b == 0)
                .count();
            self.buf_pos += zeros;
            if self.buf_pos < self.buf_len {
                break;
            }
        }
        // Not-gzip bytes after a member are reported by inflate as a bad header, as Python's gzip does.
        self.raw = false;
        self.inf
            .reset(GZIP_BITS)
            .map_err(|m| corrupt(self.location, self.compressed_pos(), &m))
    }

    /// Drop `n` compressed bytes (a member trailer).
    fn consume(&mut self, mut n: usize) -> Result<()> {
        while n > 0 {
            if self.buf_pos == self.buf_len {
                self.refill()?;
                if self.buf_len == 0 {
                    return Err(truncated_input(self.location, self.out_pos));
                }
            }
            let k = n.min(self.buf_len - self.buf_pos);
            self.buf_pos += k;
            n -= k;
        }
        Ok(())
    }
}

pub(super) fn corrupt(location: &str, at: u64, msg: &str) -> VoxelError {
    VoxelError::header(
        location,
        format!("gzip data is corrupt near compressed byte {at}: {msg}"),
    )
}

pub(super) fn truncated_input(location: &str, out_pos: u64) -> VoxelError {
    VoxelError::header(
        location,
        format!(
            "gzip stream is truncated: the compressed data ends mid-stream after {out_pos} decompressed bytes"
        ),
    )
}

/// Records seek points at block boundaries during a forward pass: the first boundary of the pass when it starts at
/// the beginning of the file, then the first boundary at least `span` bytes after the previous point.
#[derive(Debug)]
pub struct GzIndexBuilder {
    span: u64,
    last_out: Option<u64>,
    points: Vec<SeekPoint>,
    last_mark: Option<u64>,
    marks: Vec<Mark>,
}

impl GzIndexBuilder {
    /// A builder continuing after the point at decompressed offset `last_out` (`None`: from the start of the file).
    pub fn after(last_out: Option<u64>, span: u64) -> GzIndexBuilder {
        GzIndexBuilder {
            span: span.max(1),
            last_out,
            points: Vec::new(),
            last_mark: last_out,
            marks: Vec::new(),
        }
    }

    fn due(&self, out: u64) -> bool {
        self.point_due_at().is_none_or(|at| out >= at)
    }

    fn mark_due(&self, out: u64) -> bool {
        self.mark_due_at().is_none_or(|at| out >= at)
    }

    /// Output offset from which the next point is wanted (`None`: at the first boundary).
    fn point_due_at(&self) -> Option<u64> {
        self.last_out.map(|l| l.saturating_add(self.span))
    }

    fn mark_due_at(&self) -> Option<u64> {
        self.last_mark.map(|l| l.saturating_add(MARK_SPAN))
    }

    /// Output offset from which the next point or mark is wanted (`None`: at the first boundary).
    fn due_at(&self) -> Option<u64> {
        match (self.point_due_at(), self.mark_due_at()) {
            (Some(p), Some(m)) => Some(p.min(m)),
            _ => None,
        }
    }
}
