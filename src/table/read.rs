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
use crate::formats::Order;
use crate::io::local::MmapMode;
use crate::io::mapped::MappedArray;
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
    /// The slab's bytes memory-mapped (uncompressed files by path): pieces are copied from it run by run. Only the
    /// slab is mapped, and the map goes with the reader, so mapped pages never add up over a scan.
    map: Option<Option<SlabMap>>,
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
            pieces: pieces(sel, file.order, budget),
            file,
            proxy: None,
            map: None,
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

    fn proxy(&mut self) -> Result<Arc<ArrayProxy>> {
        if let Some(p) = &self.proxy {
            return Ok(Arc::clone(p));
        }
        self.file.check_unchanged()?;
        let p = self.file.open_proxy(self.mmap)?;
        self.proxy = Some(Arc::clone(&p));
        Ok(p)
    }

    /// The slab mapped, made on first use; `None` where it cannot or should not be mapped.
    fn mapped(&mut self) -> Result<Option<&SlabMap>> {
        if self.map.is_none() {
            let made = match &self.slow {
                Some(r) if self.mmap != MmapMode::Off => SlabMap::new(&self.file, r)?,
                _ => None,
            };
            self.map = Some(made);
        }
        Ok(self.map.as_ref().and_then(Option::as_ref))
    }

    /// The stored elements of `piece` in storage order, and what reading them cost.
    fn read_stored(&mut self, piece: &Piece) -> Result<Values> {
        let (dtype, order) = (self.file.dtype, self.file.order);
        let read_time = self.metrics.read_time.clone();
        if let Some(m) = self.mapped()? {
            m.check_length()?;
            let timer = read_time.timer();
            let mut local = piece.clone();
            local[m.slow_axis] =
                piece[m.slow_axis].start - m.slow_start..piece[m.slow_axis].end - m.slow_start;
            let mut values = Values::zeroed(dtype.scalar, piece_len(piece) as usize);
            let runs = gather_box(
                m.map.bytes(),
                &m.shape,
                dtype.size(),
                order,
                &local,
                values.bytes_mut(),
            )?;
            if dtype.needs_swap() {
                values.swap_bytes();
            }
            timer.done();
            self.metrics.bytes_read.add(values.bytes().len());
            self.metrics.segments_read.add(runs);
            crate::io::record(crate::io::ReadStats {
                bytes_read: values.bytes().len() as u64,
                bytes_delivered: values.bytes().len() as u64,
                segments: runs as u64,
                requests: 0,
            });
            return Ok(values);
        }
        let proxy = self.proxy()?;
        let ranges = piece
            .iter()
            .map(|r| Ok(usize::try_from(r.start)?..usize::try_from(r.end)?))
            .collect::<std::result::Result<Vec<_>, std::num::TryFromIntError>>()
            .map_err(|_| VoxelError::Invalid("index beyond the address space".into()))?;
        let slice = CanonicalSlice::from_ranges(&ranges);
        let timer = self.metrics.read_time.timer();
        let (raw, stats) = proxy.read_raw(&slice, self.file.order)?;
        timer.done();
        self.metrics.bytes_read.add(stats.bytes_read as usize);
        self.metrics.segments_read.add(stats.segments as usize);
        self.metrics.requests.add(stats.requests as usize);
        Values::from_bytes(&raw, self.file.dtype)
    }

    fn read_values(&mut self, piece: &Piece) -> Result<Vec<ArrayRef>> {
        let stored = self.read_stored(piece)?;
        self.metrics.pieces_read.add(1);
        let f = &self.file;
        let _t = self.metrics.decode_time.timer();
        let values = decode_values(
            stored,
            f.dtype,
            f.slope,
            f.inter,
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
                    self.file.order,
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

/// Copy the elements of box `piece` of an array of `shape` stored in `bytes` (from its first element, `order`) into
/// `out` in storage order, one contiguous run at a time; returns the number of runs. Out-of-range boxes are errors.
pub fn gather_box(
    bytes: &[u8],
    shape: &[usize],
    itemsize: usize,
    order: Order,
    piece: &Piece,
    out: &mut [u8],
) -> Result<usize> {
    let fast: Vec<usize> = match order {
        Order::F => (0..shape.len()).collect(),
        Order::C => (0..shape.len()).rev().collect(),
    };
    // Element strides, fastest axis first.
    let mut strides = Vec::with_capacity(fast.len());
    let mut acc = 1u64;
    for &a in &fast {
        strides.push(acc);
        acc *= shape[a] as u64;
    }
    // A run spans the leading whole axes and the first partial one.
    let (mut run, mut k) = (1u64, 0);
    while let Some(&a) = fast.get(k) {
        let len = piece[a].end - piece[a].start;
        run *= len;
        k += 1;
        if len != shape[a] as u64 {
            break;
        }
    }
    let run_bytes = run as usize * itemsize;
    let start: u64 = fast
        .iter()
        .zip(&strides)
        .map(|(&a, s)| piece[a].start * s)
        .sum();
    let outer = &fast[k..];
    let mut idx: Vec<u64> = outer.iter().map(|&a| piece[a].start).collect();
    let (mut pos, mut runs) = (0usize, 0usize);
    let bad = || {
        VoxelError::Invalid(format!(
            "box {piece:?} lies outside the array of shape {shape:?}"
        ))
    };
    loop {
        let offset: u64 = start
            + outer
                .iter()
                .zip(&idx)
                .zip(&strides[k..])
                .map(|((&a, &i), s)| (i - piece[a].start) * s)
                .sum::<u64>();
        let from = usize::try_from(offset).map_err(|_| bad())? * itemsize;
        let src = bytes.get(from..from + run_bytes).ok_or_else(bad)?;
        out.get_mut(pos..pos + run_bytes)
            .ok_or_else(bad)?
            .copy_from_slice(src);
        pos += run_bytes;
        runs += 1;
        // Odometer over the outer axes, fastest first.
        let mut d = 0;
        loop {
            let Some(&a) = outer.get(d) else {
                return Ok(runs);
            };
            idx[d] += 1;
            if idx[d] < piece[a].end {
                break;
            }
            idx[d] = piece[a].start;
            d += 1;
        }
    }
}

/// One slab of an uncompressed file, memory-mapped: its planes along the slow axis, from `slow_start`.
struct SlabMap {
    map: MappedArray,
    /// The mapped file, to see that it still holds the slab before each piece is copied out of the map.
    file: std::fs::File,
    path: std::path::PathBuf,
    /// The file offset the slab ends at.
    end: u64,
    /// The file's shape with the slow axis cut to the slab.
    shape: Vec<usize>,
    slow_axis: usize,
    slow_start: u64,
}

impl SlabMap {
    /// A file truncated since the slab was mapped would fault (SIGBUS) when a page past its new end is touched: each
    /// piece is copied only after the file is seen to still hold the whole slab. (A truncation during the copy of
    /// one piece, at most `PIECE_ELEMENTS` elements, still faults: `mmap off` reads with `pread` only.)
    fn check_length(&self) -> Result<()> {
        let len = self
            .file
            .metadata()
            .map_err(|e| VoxelError::io(&self.path, e))?
            .len();
        if len < self.end {
            return Err(VoxelError::Truncated {
                path: self.path.display().to_string(),
                expected: self.end,
                actual: len,
            });
        }
        Ok(())
    }

    /// `None` for files the scan does not map itself (compressed, or a registered proxy over an open handle).
    fn new(f: &VoxelFile, slow: &Range<u64>) -> Result<Option<SlabMap>> {
        let Some(slow_axis) = slow_axis(f.ndim(), f.order) else {
            return Ok(None);
        };
        if f.compression != Compression::None
            || f.is_remote()
            || f.proxy.as_ref().is_some_and(|p| p.path().is_none())
        {
            return Ok(None);
        }
        f.check_unchanged()?;
        let span = byte_span(f, Some(slow));
        let file =
            std::fs::File::open(&f.data_path).map_err(|e| VoxelError::io(&f.data_path, e))?;
        let len = file
            .metadata()
            .map_err(|e| VoxelError::io(&f.data_path, e))?
            .len();
        if len < span.end {
            return Err(VoxelError::Truncated {
                path: f.data_path.display().to_string(),
                expected: span.end,
                actual: len,
            });
        }
        let mut shape = f.shape.clone();
        shape[slow_axis] = usize::try_from(slow.end - slow.start)
            .map_err(|_| VoxelError::Invalid("slab beyond the address space".into()))?;
        let elements = vec![shape.iter().product::<usize>()];
        match MappedArray::map(
            &file,
            &f.data_path,
            span.start,
            elements,
            f.dtype,
            f.order,
            MmapMode::ReadOnly,
        ) {
            Ok(map) => Ok(Some(SlabMap {
                map,
                file,
                path: f.data_path.clone(),
                end: span.end,
                shape,
                slow_axis,
                slow_start: slow.start,
            })),
            // Not mappable (special files, some filesystems): positional reads through the proxy instead.
            Err(VoxelError::Io { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }
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
        let sel = Selection::full(&f.shape);
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
