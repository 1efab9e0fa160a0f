//! Reading one slab: its pieces go through the core read planner (`ArrayProxy::read_raw`), are decoded and scaled,
//! and come out as record batches with generated coordinates. Synchronous; the opener runs it on blocking threads.

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, Int64Array, RecordBatch, RecordBatchOptions};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::physical_plan::metrics::{Count, Time};

use crate::error::{Result, VoxelError};
use crate::proxy::ArrayProxy;
use crate::slicer::CanonicalSlice;

use super::files::VoxelFile;
use super::layout::{
    Piece, Pieces, Selection, byte_span, coordinates, piece_len, pieces, slow_axis,
};
use super::schema::{ValueMode, decode_values, value_arrays};
use crate::dtype::Scalar;
use crate::formats::Compression;
use crate::io::ByteSource;
use crate::io::local::{LocalSource, MmapMode};
use crate::values::Values;
use std::ops::Range;

/// Most elements one read covers: bounds the memory of a partition (raw + decoded + projected coordinates).
pub const PIECE_ELEMENTS: u64 = 1 << 20;

/// Counters the scan reports in `EXPLAIN ANALYZE`.
#[derive(Debug, Clone)]
pub struct ScanMetrics {
    pub bytes_read: Count,
    pub segments_read: Count,
    /// Physical requests: GETs for object storage, reads or decompression passes locally (0 for mapped reads).
    pub requests: Count,
    pub pieces_read: Count,
    pub read_time: Time,
    pub decode_time: Time,
}

/// What to produce from a file: the columns (indices into the file schema) and their schema.
#[derive(Debug, Clone)]
pub struct Output {
    pub schema: SchemaRef,
    /// Projected file columns: coordinates are `0..ndim`, value columns follow.
    pub columns: Vec<usize>,
    pub ndim: usize,
    pub mode: ValueMode,
    pub scalar: Scalar,
    pub batch_size: usize,
}

impl Output {
    fn wants_values(&self) -> bool {
        let values = self.ndim..self.ndim + self.value_columns();
        self.columns.iter().any(|c| values.contains(c))
    }

    /// Value columns in the file schema (the millimetre columns `x, y, z`, when present, follow them).
    fn value_columns(&self) -> usize {
        super::schema::value_fields(self.scalar).len()
    }
}

/// The remaining pieces of one slab of one file.
pub struct SlabReader {
    file: Arc<VoxelFile>,
    proxy: Option<Arc<ArrayProxy>>,
    /// A source over the file that keeps the slab's bytes memory-mapped (uncompressed files by path): pieces are
    /// read through it. Only the slab is mapped, and the map goes with the reader, so mapped pages never add up over
    /// a scan. Made on first use; `Some(None)` where the slab is not mapped.
    slab_source: Option<Option<Arc<LocalSource>>>,
    /// The slab's run of slow-axis indices (`None`: the whole selection, e.g. a gzip file).
    slow: Option<Range<u64>>,
    /// Made one at a time (a header's claim may be huge).
    pieces: Pieces,
    out: Arc<Output>,
    metrics: ScanMetrics,
    mmap: MmapMode,
}

impl SlabReader {
    /// `budget`: the most elements per piece (smaller under a `LIMIT`). Pieces follow the file order (per box of the
    /// selection), so a gzip file is decompressed forward, the core's gzip source resuming at its seek points.
    pub fn new(
        file: Arc<VoxelFile>,
        sel: &Selection,
        out: Arc<Output>,
        metrics: ScanMetrics,
        budget: u64,
        mmap: MmapMode,
        slow: Option<Range<u64>>,
    ) -> SlabReader {
        SlabReader {
            slow,
            pieces: pieces(sel, file.layout.order, budget),
            file,
            proxy: None,
            slab_source: None,
            out,
            metrics,
            mmap,
        }
    }

    /// The batches of the next piece, or `None` when the slab is done.
    pub fn next_piece(&mut self) -> Result<Option<Vec<RecordBatch>>> {
        let Some(piece) = self.pieces.next() else {
            return Ok(None);
        };
        let values = if self.out.wants_values() {
            Some(self.read_values(&piece)?)
        } else {
            None
        };
        let batches = self.batches(&piece, values.as_deref())?;
        Ok(Some(batches))
    }

    /// The next piece's box and its value columns only (no batches, no coordinates), or `None` when the slab is
    /// done.
    pub fn next_values(&mut self) -> Result<Option<(Piece, Vec<ArrayRef>)>> {
        let Some(piece) = self.pieces.next() else {
            return Ok(None);
        };
        let values = self.read_values(&piece)?;
        Ok(Some((piece, values)))
    }

    /// The file this slab belongs to.
    pub fn file(&self) -> &Arc<VoxelFile> {
        &self.file
    }

    fn proxy(&mut self) -> Result<Arc<ArrayProxy>> {
        if let Some(p) = &self.proxy {
            return Ok(Arc::clone(p));
        }
        self.file.check_unchanged()?;
        let p = self.file.open_proxy(self.mmap)?;
        self.proxy = Some(Arc::clone(&p));
        Ok(p)
    }

    /// The slab's mapped source, made on first use; `None` where it cannot or should not be mapped.
    fn slab_source(&mut self) -> Result<Option<Arc<LocalSource>>> {
        if self.slab_source.is_none() {
            let made = match &self.slow {
                Some(r) if self.mmap != MmapMode::Off => map_slab(&self.file, r)?.map(Arc::new),
                _ => None,
            };
            self.slab_source = Some(made);
        }
        Ok(self.slab_source.clone().flatten())
    }

    /// The stored elements of `piece` in storage order: proxy → read plan → byte source (the slab's mapped source
    /// or the proxy's own), with what that read cost.
    fn read_stored(&mut self, piece: &Piece) -> Result<Values> {
        let proxy = self.proxy()?;
        let source = self.slab_source()?;
        let ranges = piece
            .iter()
            .map(|r| Ok(usize::try_from(r.start)?..usize::try_from(r.end)?))
            .collect::<std::result::Result<Vec<_>, std::num::TryFromIntError>>()
            .map_err(|_| VoxelError::Invalid("index beyond the address space".into()))?;
        let slice = CanonicalSlice::from_ranges(&ranges);
        let timer = self.metrics.read_time.timer();
        let source = source.as_deref().map(|s| s as &dyn ByteSource);
        let (values, stats) = proxy.read_stored(source, &slice, self.file.layout.order)?;
        timer.done();
        self.metrics.bytes_read.add(stats.bytes_read as usize);
        self.metrics.segments_read.add(stats.segments as usize);
        self.metrics.requests.add(stats.requests as usize);
        Ok(values)
    }

    fn read_values(&mut self, piece: &Piece) -> Result<Vec<ArrayRef>> {
        let stored = self.read_stored(piece)?;
        self.metrics.pieces_read.add(1);
        let f = &self.file;
        let _t = self.metrics.decode_time.timer();
        let values = decode_values(
            stored,
            f.layout.dtype,
            f.layout.slope,
            f.layout.inter,
            self.out.mode,
            self.out.scalar,
        )?;
        if values.len() as u64 != piece_len(piece) {
            return Err(VoxelError::Invalid(format!(
                "read {} elements for a box of {}",
                values.len(),
                piece_len(piece)
            )));
        }
        Ok(value_arrays(values))
    }

    fn batches(&self, piece: &Piece, values: Option<&[ArrayRef]>) -> Result<Vec<RecordBatch>> {
        let n = piece_len(piece);
        let step = self.out.batch_size.max(1) as u64;
        let mut out = Vec::with_capacity(n.div_ceil(step) as usize);
        let mut from = 0;
        while from < n {
            let len = step.min(n - from) as usize;
            out.push(self.batch(piece, values, from, len)?);
            from += len as u64;
        }
        Ok(out)
    }

    fn batch(
        &self,
        piece: &Piece,
        values: Option<&[ArrayRef]>,
        from: u64,
        len: usize,
    ) -> Result<RecordBatch> {
        let o = &self.out;
        let mut cols: Vec<ArrayRef> = Vec::with_capacity(o.columns.len());
        for &c in &o.columns {
            if c < o.ndim {
                cols.push(Arc::new(Int64Array::from(coordinates(
                    piece,
                    self.file.layout.order,
                    c,
                    from,
                    len,
                ))));
            } else if let Some(row) = c.checked_sub(o.ndim + o.value_columns()) {
                cols.push(super::world::derived_array(
                    &self.file, row, piece, from, len,
                )?);
            } else {
                let v = values
                    .and_then(|v| v.get(c - o.ndim))
                    .ok_or_else(|| VoxelError::Invalid(format!("no value column {c}")))?;
                cols.push(v.slice(from as usize, len));
            }
        }
        let opts = RecordBatchOptions::new().with_row_count(Some(len));
        RecordBatch::try_new_with_options(Arc::clone(&o.schema), cols, &opts)
            .map_err(|e| VoxelError::Invalid(format!("building a batch: {e}")))
    }
}

impl SlabReader {
    /// The file this slab belongs to, for messages.
    pub fn file_name(&self) -> &str {
        &self.file.name
    }
}

/// A source over `f` keeping the bytes of its slab `slow` (a run of slow-axis indices) mapped; `None` for files the
/// scan does not map itself (compressed, remote, or a registered proxy over an open handle) or that cannot be mapped.
fn map_slab(f: &VoxelFile, slow: &Range<u64>) -> Result<Option<LocalSource>> {
    if slow_axis(f.ndim(), f.layout.order).is_none()
        || f.compression != Compression::None
        || f.is_remote()
        || f.proxy.as_ref().is_some_and(|p| p.path().is_none())
    {
        return Ok(None);
    }
    let Some(path) = f.local_path() else {
        return Ok(None);
    };
    f.check_unchanged()?;
    LocalSource::with_kept_map(path, byte_span(f, Some(slow)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dtype::ByteOrder;
    use crate::formats::test_util::HeaderBuilder;
    use crate::table::schema::file_schema;

    /// A mapped slab whose file is cut between two pieces: the next piece is a "truncated" error naming the file,
    /// not a SIGBUS from touching mapped pages past the new end.
    #[test]
    fn a_file_truncated_between_pieces_is_an_error_not_a_fault() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cut.nii");
        let data = vec![1u8; 64 * 64 * 64 * 2];
        let bytes = HeaderBuilder::nifti1(ByteOrder::Little, &[64, 64, 64], 4, true)
            .single_file(&[], &data);
        std::fs::write(&path, &bytes).unwrap();
        let h = crate::formats::read_header(&path).unwrap();
        let f = Arc::new(VoxelFile::from_header("cut.nii".into(), &h).unwrap());
        let out = Arc::new(Output {
            schema: file_schema(3, Scalar::I16).unwrap(),
            columns: vec![0, 1, 2, 3],
            ndim: 3,
            mode: ValueMode::Unscaled,
            scalar: Scalar::I16,
            batch_size: 8192,
        });
        let metrics = ScanMetrics {
            bytes_read: Count::new(),
            segments_read: Count::new(),
            requests: Count::new(),
            pieces_read: Count::new(),
            read_time: Time::new(),
            decode_time: Time::new(),
        };
        let sel = Selection::full(&f.layout.shape);
        // One plane (64 x 64 elements) per piece.
        let mut r = SlabReader::new(
            f,
            &sel,
            out,
            metrics,
            64 * 64,
            MmapMode::ReadOnly,
            Some(0..64),
        );
        assert!(r.next_piece().unwrap().is_some());
        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        file.set_len(352 + 64 * 64 * 2).unwrap();
        let mut seen = None;
        for _ in 0..64 {
            match r.next_piece() {
                Ok(Some(_)) => continue,
                Ok(None) => break,
                Err(e) => {
                    seen = Some(e);
                    break;
                }
            }
        }
        let e = seen.expect("an error after the cut").to_string();
        assert!(e.contains("cut.nii") && e.contains("truncated"), "{e}");
    }
}

#[cfg(test)]
mod shared_proxy_tests {
    use std::sync::Barrier;

    use super::*;
    use crate::dtype::{ByteOrder, DType};
    use crate::io::ReadStats;
    use crate::plan::{Order, Segment};
    use crate::proxy::{ArraySpec, DataFile, ProxyOptions};

    /// A source that holds every read until two are in flight at once.
    #[derive(Debug)]
    struct Rendezvous {
        inner: LocalSource,
        both_in: Barrier,
    }

    impl ByteSource for Rendezvous {
        fn location(&self) -> &str {
            self.inner.location()
        }

        fn size(&self) -> Result<Option<u64>> {
            self.inner.size()
        }

        fn read_segments(&self, segments: &[Segment], out: &mut [u8]) -> Result<ReadStats> {
            self.both_in.wait();
            self.inner.read_segments(segments, out)
        }
    }

    /// Two partitions reading through one proxy at the same time: each read reports its own cost, not the change in
    /// the proxy's shared totals (which includes the other partition's read).
    #[test]
    fn two_reads_in_flight_on_one_proxy_each_report_their_own_cost() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shared.raw");
        std::fs::write(&path, vec![7u8; 8 * 8 * 2]).unwrap();
        let spec = ArraySpec::new(vec![8, 8], DType::new(Scalar::I16, ByteOrder::Little));
        let proxy = ArrayProxy::with_compression(
            DataFile::Path(path.clone()),
            Compression::None,
            &spec,
            ProxyOptions {
                skip_threshold: 0,
                ..ProxyOptions::default()
            },
        )
        .unwrap();
        let source = Rendezvous {
            inner: LocalSource::new(
                &path,
                crate::io::local::Handle::PerRead,
                MmapMode::Off,
                Arc::default(),
            ),
            both_in: Barrier::new(2),
        };
        let read = |rows: std::ops::Range<usize>| {
            let slice = CanonicalSlice::from_ranges(&[0..8, rows]);
            proxy
                .read_stored(Some(&source), &slice, Order::F)
                .unwrap()
                .1
        };
        let (a, b) = std::thread::scope(|s| {
            let a = s.spawn(|| read(0..2));
            let b = s.spawn(|| read(2..8));
            (a.join().unwrap(), b.join().unwrap())
        });
        let mut got = [a.bytes_read, b.bytes_read];
        got.sort_unstable();
        assert_eq!(got, [2 * 8 * 2, 6 * 8 * 2]);
        assert_eq!(proxy.stats().bytes_read, 8 * 8 * 2);
    }
}
