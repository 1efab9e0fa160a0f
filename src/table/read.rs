//! Reading one slab: its pieces go through the core read planner (`ArrayProxy::read_raw`), are decoded and scaled,
//! and come out as record batches with generated coordinates. Synchronous; the opener runs it on blocking threads.

use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, BooleanArray, Int64Array, RecordBatch, RecordBatchOptions, UInt32Array,
};
use datafusion::arrow::compute::take;
use datafusion::arrow::datatypes::{Schema, SchemaRef};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::metrics::{Count, Time};

use crate::error::{Result, VoxelError};
use crate::proxy::ArrayProxy;
use crate::slicer::CanonicalSlice;

use super::files::VoxelFile;
use super::layout::{
    Piece, Pieces, Selection, byte_span, coordinates, coordinates_at, piece_len, pieces, slow_axis,
};
use super::schema::{ValueMode, decode_values, value_arrays};
use crate::dtype::Scalar;
use crate::formats::{Compression, Order};
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
    /// A filter on the value columns alone (over a batch of them): rows it drops get no coordinates and leave no
    /// batch (the filter above the scan still decides; see `VoxelSource`). Applied to rows (`next_piece`), not to
    /// the stored values the in-scan aggregates read (`next_values`): those are planned with no filter between.
    pub value_filter: Option<Arc<dyn PhysicalExpr>>,
}

impl Output {
    fn wants_values(&self) -> bool {
        let values = self.ndim..self.ndim + self.value_columns();
        self.columns.iter().any(|c| values.contains(c))
    }

    /// Some projected column is derived from the coordinates (millimetres), made per batch range.
    fn derives_columns(&self) -> bool {
        self.columns
            .iter()
            .any(|&c| c >= self.ndim + self.value_columns())
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
    /// The slab's bytes mapped for zero-copy value arrays (made on first use; `Some(None)` where values cannot
    /// alias the file: scaled, swapped, compressed, remote or unmapped).
    zero_copy: Option<Option<SlabMap>>,
    out: Arc<Output>,
    metrics: ScanMetrics,
    mmap: MmapMode,
    /// The selection is every element of the slab: its zero-copy map is populated up front.
    whole_slab: bool,
    /// The selection is most of its byte span (a slab, or a whole file): a pass through the file, whose decompressed
    /// gzip data would only fill the process-wide data cache (a scan reads each byte once; a repeat of the same
    /// scan would not fit). Smaller reads (a box, a time series) keep what they read there for repeats.
    one_pass: bool,
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
        let selected = sel.rows().saturating_mul(file.itemsize());
        let span = byte_span(&file, slow.as_ref());
        let span_len = span.end - span.start;
        let one_pass = selected.saturating_mul(2) >= span_len;
        SlabReader {
            whole_slab: selected == span_len && slow.is_some(),
            one_pass,
            slow,
            pieces: pieces(sel, file.layout.order, budget),
            file,
            proxy: None,
            slab_source: None,
            zero_copy: None,
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
        if let (Some(filter), Some(v)) = (&self.out.value_filter, &values)
            && !self.out.derives_columns()
            && let Some(rows) = self.selected(filter, v)?
        {
            return Ok(Some(self.selected_batches(&piece, v, &rows)?));
        }
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
        let p = self.file.open_proxy(self.mmap, !self.one_pass)?;
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
        if let Some(values) = self.mapped_values(piece)? {
            self.metrics.pieces_read.add(1);
            return Ok(vec![values]);
        }
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

    /// The value array of `piece` as the mapped file bytes themselves (no copy), when the stored bytes are the
    /// values (native byte order, no scaling, the table's type), the slab is mapped and the piece is one contiguous,
    /// aligned run of it; `None` otherwise (the copying read path then runs).
    fn mapped_values(&mut self, piece: &Piece) -> Result<Option<ArrayRef>> {
        if self.zero_copy.is_none() {
            let made = if self.values_are_stored_bytes() {
                match &self.slow {
                    Some(r) if self.mmap != MmapMode::Off => {
                        SlabMap::new(&self.file, r, self.whole_slab)?
                    }
                    _ => None,
                }
            } else {
                None
            };
            self.zero_copy = Some(made);
        }
        let Some(Some(map)) = &self.zero_copy else {
            return Ok(None);
        };
        let f = &self.file;
        let Some(start) = contiguous_start(piece, &f.layout.shape, f.layout.order) else {
            return Ok(None);
        };
        let n = piece_len(piece);
        let item = f.itemsize();
        let from = f.layout.offset.saturating_add(start.saturating_mul(item));
        let bytes = n.saturating_mul(item);
        let timer = self.metrics.read_time.timer();
        // The file may have been cut since it was mapped: touching pages past its end would fault, so the read is
        // refused as the copying path refuses it.
        let len = std::fs::metadata(&map.path)
            .map_err(|e| VoxelError::io(&map.path, e))?
            .len();
        if from.saturating_add(bytes) > len {
            return Err(VoxelError::Invalid(format!(
                "{}: file truncated: {} bytes, the data needs {}",
                map.path.display(),
                len,
                from.saturating_add(bytes)
            )));
        }
        let array = map.array(f.layout.dtype.scalar, from, n);
        timer.done();
        if array.is_some() {
            self.metrics.bytes_read.add(bytes as usize);
            self.metrics.segments_read.add(1);
        }
        Ok(array)
    }

    /// The decoded values are the stored bytes: native order, no scaling under this mode, the table's type.
    fn values_are_stored_bytes(&self) -> bool {
        let f = &self.file;
        let storage = f.layout.dtype;
        storage == crate::dtype::DType::native(storage.scalar)
            && self.out.scalar == storage.scalar
            && super::schema::value_scalar(storage, f.layout.slope, f.layout.inter, self.out.mode)
                .is_ok_and(|s| s == storage.scalar)
            && match self.out.mode {
                ValueMode::Unscaled => true,
                ValueMode::Scaled => {
                    crate::scaling::factors_are_identity(f.layout.slope, f.layout.inter, None)
                }
                ValueMode::As(s) => {
                    crate::scaling::factors_are_identity(f.layout.slope, f.layout.inter, Some(s))
                }
            }
    }

    /// The piece's elements the value filter keeps, `None` when it keeps them all.
    fn selected(
        &self,
        filter: &Arc<dyn PhysicalExpr>,
        values: &[ArrayRef],
    ) -> Result<Option<Vec<u32>>> {
        let n = values.first().map_or(0, |v| v.len());
        let fields = super::schema::value_fields(self.out.scalar);
        let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), values.to_vec())
            .map_err(|e| VoxelError::Invalid(format!("value filter batch: {e}")))?;
        let mask = filter
            .evaluate(&batch)
            .and_then(|v| v.into_array(n))
            .map_err(|e| VoxelError::Invalid(format!("evaluating the value filter: {e}")))?;
        let Some(mask) = mask.as_any().downcast_ref::<BooleanArray>() else {
            return Err(VoxelError::Invalid(format!(
                "the value filter {filter} is not a boolean"
            )));
        };
        // NULL is not true: the filter above drops it too.
        let kept = mask.values().set_indices();
        let rows: Vec<u32> = match mask.nulls() {
            Some(nulls) => kept
                .filter(|&r| nulls.is_valid(r))
                .map(|r| r as u32)
                .collect(),
            None => kept.map(|r| r as u32).collect(),
        };
        Ok((rows.len() < n).then_some(rows))
    }

    /// Batches of the piece's elements `rows` only: their coordinates and values.
    fn selected_batches(
        &self,
        piece: &Piece,
        values: &[ArrayRef],
        rows: &[u32],
    ) -> Result<Vec<RecordBatch>> {
        let o = &self.out;
        let mut out = Vec::new();
        for chunk in rows.chunks(o.batch_size.max(1)) {
            let take_rows = UInt32Array::from(chunk.to_vec());
            let mut cols: Vec<ArrayRef> = Vec::with_capacity(o.columns.len());
            for &c in &o.columns {
                if c < o.ndim {
                    let order = self.file.layout.order;
                    cols.push(Arc::new(Int64Array::from(coordinates_at(
                        piece, order, c, chunk,
                    ))));
                } else {
                    let v = values
                        .get(c - o.ndim)
                        .ok_or_else(|| VoxelError::Invalid(format!("no value column {c}")))?;
                    let taken = take(v.as_ref(), &take_rows, None)
                        .map_err(|e| VoxelError::Invalid(format!("selecting values: {e}")))?;
                    cols.push(taken);
                }
            }
            let opts = RecordBatchOptions::new().with_row_count(Some(chunk.len()));
            let batch = RecordBatch::try_new_with_options(Arc::clone(&o.schema), cols, &opts)
                .map_err(|e| VoxelError::Invalid(format!("building a batch: {e}")))?;
            out.push(batch);
        }
        Ok(out)
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
    let Some(path) = mappable_path(f)? else {
        return Ok(None);
    };
    LocalSource::with_kept_map(path, byte_span(f, Some(slow)))
}

/// The local path of a file the scan maps itself (still as registered), or `None` for a compressed or remote file,
/// a registered proxy over an open handle, or a layout without a slow axis.
fn mappable_path(f: &VoxelFile) -> Result<Option<&std::path::Path>> {
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
    Ok(Some(path))
}

/// A slab's bytes mapped read-only, shared by the value arrays made from it (they keep it alive).
struct SlabMap {
    path: std::path::PathBuf,
    map: Arc<memmap2::Mmap>,
    /// File offset of the map's first byte.
    start: u64,
}

impl SlabMap {
    /// `f`'s slab `slow` mapped, or `None` where the scan does not map it (see [`mappable_path`]).
    fn new(f: &VoxelFile, slow: &Range<u64>, populate: bool) -> Result<Option<SlabMap>> {
        let Some(path) = mappable_path(f)? else {
            return Ok(None);
        };
        let span = byte_span(f, Some(slow));
        let file = std::fs::File::open(path).map_err(|e| VoxelError::io(path, e))?;
        let len = file.metadata().map_err(|e| VoxelError::io(path, e))?.len();
        let Ok(n) = usize::try_from(span.end.saturating_sub(span.start)) else {
            return Ok(None);
        };
        if span.end > len || n == 0 {
            // Short files are reported by the copying path, which checks every read.
            return Ok(None);
        }
        // SAFETY: a private read-only mapping of bytes the file was just seen to hold, never written through.
        // Every array made from it is checked against the file's length first; a file cut while an array is in
        // use faults like any memory-mapped read (the documented hazard; `mmap 'off'` avoids it).
        // A slab read whole is populated (MAP_POPULATE): its pages are mapped in one call instead of a fault per
        // few pages as the values are first touched (the page cache's pages; nothing is copied). A partial read
        // maps lazily, so it touches only the pages it needs.
        let mut options = memmap2::MmapOptions::new();
        options.offset(span.start).len(n);
        if populate {
            options.populate();
        }
        let map = match unsafe { options.map(&file) } {
            Ok(m) => m,
            Err(_) => return Ok(None),
        };
        Ok(Some(SlabMap {
            path: path.to_path_buf(),
            map: Arc::new(map),
            start: span.start,
        }))
    }

    /// The `n` elements of `scalar` at file offset `from` as an array over the map; `None` when they lie outside
    /// it, are misaligned for the type, or the type has no plain Arrow array.
    fn array(&self, scalar: crate::dtype::Scalar, from: u64, n: u64) -> Option<ArrayRef> {
        use crate::dtype::Scalar as S;
        use datafusion::arrow::array::PrimitiveArray;
        use datafusion::arrow::buffer::{Buffer, ScalarBuffer};
        use datafusion::arrow::datatypes as t;
        let item = scalar.size() as u64;
        let at = usize::try_from(from.checked_sub(self.start)?).ok()?;
        let bytes = usize::try_from(n.checked_mul(item)?).ok()?;
        let end = at.checked_add(bytes)?;
        if end > self.map.len() {
            return None;
        }
        let ptr = self.map[at..end].as_ptr();
        if !(ptr as usize).is_multiple_of(scalar.size().max(1)) {
            return None;
        }
        let ptr = std::ptr::NonNull::new(ptr.cast_mut())?;
        let owner: Arc<memmap2::Mmap> = Arc::clone(&self.map);
        // SAFETY: `ptr..ptr + bytes` lies inside the mapping (checked above), which `owner` keeps alive for as long
        // as the buffer lives; the mapping is read-only and never written.
        let buffer = unsafe { Buffer::from_custom_allocation(ptr, bytes, owner) };
        let n = usize::try_from(n).ok()?;
        fn wrap<T: t::ArrowPrimitiveType>(b: Buffer, n: usize) -> ArrayRef {
            Arc::new(PrimitiveArray::<T>::new(ScalarBuffer::new(b, 0, n), None))
        }
        Some(match scalar {
            S::U8 => wrap::<t::UInt8Type>(buffer, n),
            S::I8 => wrap::<t::Int8Type>(buffer, n),
            S::U16 => wrap::<t::UInt16Type>(buffer, n),
            S::I16 => wrap::<t::Int16Type>(buffer, n),
            S::U32 => wrap::<t::UInt32Type>(buffer, n),
            S::I32 => wrap::<t::Int32Type>(buffer, n),
            S::U64 => wrap::<t::UInt64Type>(buffer, n),
            S::I64 => wrap::<t::Int64Type>(buffer, n),
            S::F32 => wrap::<t::Float32Type>(buffer, n),
            S::F64 => wrap::<t::Float64Type>(buffer, n),
            _ => return None,
        })
    }
}

/// The linear index (in `order`) of `piece`'s first element when the piece is one contiguous run of the array of
/// `shape`: whole along every axis faster than its first partial one, a single index along every slower one but
/// that.
fn contiguous_start(piece: &[Range<u64>], shape: &[usize], order: Order) -> Option<u64> {
    let fast_to_slow: Vec<usize> = match order {
        Order::F => (0..piece.len()).collect(),
        Order::C => (0..piece.len()).rev().collect(),
    };
    let mut partial_seen = false;
    let mut start = 0u64;
    let mut stride = 1u64;
    for &a in &fast_to_slow {
        let (r, n) = (&piece[a], *shape.get(a)? as u64);
        let whole = r.start == 0 && r.end == n;
        if partial_seen && r.end - r.start > 1 {
            return None;
        }
        if !whole {
            partial_seen = true;
        }
        start = start.checked_add(r.start.checked_mul(stride)?)?;
        stride = stride.checked_mul(n)?;
    }
    Some(start)
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
            value_filter: None,
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
mod zero_copy_tests {
    use super::*;
    use crate::dtype::ByteOrder;
    use crate::formats::test_util::HeaderBuilder;
    use crate::table::schema::file_schema;

    fn metrics() -> ScanMetrics {
        ScanMetrics {
            bytes_read: Count::new(),
            segments_read: Count::new(),
            requests: Count::new(),
            pieces_read: Count::new(),
            read_time: Time::new(),
            decode_time: Time::new(),
        }
    }

    /// The values of every piece of a full slab read with the map (`zero_copy`) or through the copying path.
    fn read_all(
        path: &std::path::Path,
        mode: ValueMode,
        mmap: MmapMode,
        sel: Option<Selection>,
    ) -> (Vec<ArrayRef>, Option<Arc<memmap2::Mmap>>) {
        let h = crate::formats::read_header(path).unwrap();
        let f = Arc::new(VoxelFile::from_header("z.nii".into(), &h).unwrap());
        let scalar = crate::table::files::file_value_scalar(&f, mode).unwrap();
        let out = Arc::new(Output {
            schema: file_schema(3, scalar).unwrap(),
            columns: vec![3],
            ndim: 3,
            mode,
            scalar,
            batch_size: 8192,
            value_filter: None,
        });
        let sel = sel.unwrap_or_else(|| Selection::full(&f.layout.shape));
        let mut r = SlabReader::new(f, &sel, out, metrics(), 8 * 6, mmap, Some(0..5));
        let mut got = Vec::new();
        while let Some((_, v)) = r.next_values().unwrap() {
            got.extend(v);
        }
        let map = r.zero_copy.flatten().map(|m| Arc::clone(&m.map));
        (got, map)
    }

    fn write(path: &std::path::Path, order: ByteOrder, slope: f32) {
        let data: Vec<u8> = (0..8 * 6 * 5)
            .flat_map(|v: i16| match order {
                ByteOrder::Big => (v - 100).to_be_bytes(),
                _ => (v - 100).to_le_bytes(),
            })
            .collect();
        let mut b = HeaderBuilder::nifti1(order, &[8, 6, 5], 4, true);
        if slope != 1.0 {
            b = b.f32_at(112, slope).f32_at(116, 0.5);
        }
        std::fs::write(path, b.single_file(&[], &data)).unwrap();
    }

    #[test]
    fn native_unscaled_values_alias_the_mapped_slab() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("z.nii");
        write(&path, ByteOrder::NATIVE, 1.0);
        let (mapped, map) = read_all(&path, ValueMode::Scaled, MmapMode::ReadOnly, None);
        let map = map.expect("the slab is mapped");
        let range = map.as_ptr() as usize..map.as_ptr() as usize + map.len();
        assert_eq!(mapped.len(), 5, "one piece per plane");
        for a in &mapped {
            let p = a.to_data().buffers()[0].as_ptr() as usize;
            assert!(
                range.contains(&p),
                "value buffer {p:#x} outside the map {range:x?}"
            );
        }
        let (copied, none) = read_all(&path, ValueMode::Scaled, MmapMode::Off, None);
        assert!(none.is_none());
        assert_eq!(mapped, copied);
        // A box that is not one run of the file: copied, same answers as DataFusion would get.
        let sel = Selection {
            axes: vec![
                super::super::index_set::IndexSet::range(1..7),
                super::super::index_set::IndexSet::range(0..6),
                super::super::index_set::IndexSet::range(0..5),
            ],
        };
        let (boxed, _) = read_all(&path, ValueMode::Unscaled, MmapMode::ReadOnly, Some(sel));
        let first = boxed[0]
            .as_any()
            .downcast_ref::<datafusion::arrow::array::Int16Array>();
        assert_eq!(first.unwrap().value(0), 1 - 100);
        let p = boxed[0].to_data().buffers()[0].as_ptr() as usize;
        assert!(!range.contains(&p));
    }

    #[test]
    fn scaled_and_swapped_values_are_copied() {
        let dir = tempfile::tempdir().unwrap();
        for (name, order, slope) in [
            ("be.nii", ByteOrder::Big, 1.0),
            ("scaled.nii", ByteOrder::NATIVE, 2.0),
        ] {
            let path = dir.path().join(name);
            write(&path, order, slope);
            let (values, map) = read_all(&path, ValueMode::Scaled, MmapMode::ReadOnly, None);
            assert!(map.is_none(), "{name}");
            assert_eq!(values.len(), 5);
        }
        // The stored values of a scaled file are its bytes again.
        let (_, map) = read_all(
            &dir.path().join("scaled.nii"),
            ValueMode::Unscaled,
            MmapMode::ReadOnly,
            None,
        );
        assert!(map.is_some());
    }

    /// A gzip slab read whole or mostly (a pass through the file) leaves the process-wide data cache alone; a small
    /// box keeps what it reads there for a repeat.
    #[test]
    fn one_pass_reads_skip_the_gzip_data_cache() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("z.nii.gz");
        let data = crate::synth::random_i16_le(8 * 6 * 5, 3, 0, 100);
        let dtype = crate::dtype::DType::new(crate::dtype::Scalar::I16, ByteOrder::Little);
        crate::synth::write_nifti1(&path, &[8, 6, 5], dtype, 1.0, 0.0, &data, true).unwrap();
        let h = crate::formats::read_header(&path).unwrap();
        let f = Arc::new(VoxelFile::from_header("z.nii.gz".into(), &h).unwrap());
        let out = Arc::new(Output {
            schema: file_schema(3, crate::dtype::Scalar::I16).unwrap(),
            columns: vec![3],
            ndim: 3,
            mode: ValueMode::Scaled,
            scalar: crate::dtype::Scalar::I16,
            batch_size: 8192,
            value_filter: None,
        });
        let cached = |sel: Selection| {
            let mut r = SlabReader::new(
                Arc::clone(&f),
                &sel,
                Arc::clone(&out),
                metrics(),
                1 << 20,
                MmapMode::ReadOnly,
                None,
            );
            r.proxy().unwrap().options().gzip_data_cache
        };
        assert!(!cached(Selection::full(&f.layout.shape)));
        let mut most = Selection::full(&f.layout.shape);
        most.axes[2] = crate::table::index_set::IndexSet::range(1..5);
        assert!(!cached(most));
        let mut part = Selection::full(&f.layout.shape);
        part.axes[0] = crate::table::index_set::IndexSet::range(2..4);
        assert!(cached(part));
    }

    #[test]
    fn contiguous_pieces_are_found_in_both_orders() {
        let shape = [4, 3, 5];
        assert_eq!(
            contiguous_start(&[0..4, 0..3, 2..4], &shape, Order::F),
            Some(24)
        );
        assert_eq!(
            contiguous_start(&[1..3, 2..3, 4..5], &shape, Order::F),
            Some(1 + 8 + 48)
        );
        assert_eq!(
            contiguous_start(&[1..3, 1..3, 4..5], &shape, Order::F),
            None
        );
        assert_eq!(
            contiguous_start(&[2..3, 0..3, 0..5], &shape, Order::C),
            Some(30)
        );
        assert_eq!(
            contiguous_start(&[0..4, 0..2, 0..5], &shape, Order::C),
            None
        );
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
