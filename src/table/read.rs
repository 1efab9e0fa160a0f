//! Reading one slab: its pieces go through the core read planner (`ArrayProxy::read_raw`), are decoded and scaled,
//! and come out as record batches with generated coordinates. Synchronous; the opener runs it on blocking threads.

use std::collections::VecDeque;
use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, Int64Array, RecordBatch, RecordBatchOptions};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::physical_plan::metrics::{Count, Time};

use crate::error::{Result, VoxelError};
use crate::proxy::ArrayProxy;
use crate::slicer::CanonicalSlice;

use super::files::VoxelFile;
use super::layout::{Piece, Selection, coordinates, piece_len, pieces};
use super::schema::{ValueMode, decode_values, value_arrays};
use crate::dtype::Scalar;
use crate::formats::Order;
use crate::io::mapped::MappedArray;
use crate::values::Values;

/// Most elements one read covers: bounds the memory of a partition (raw + decoded + projected coordinates).
pub const PIECE_ELEMENTS: u64 = 1 << 20;

/// Counters the scan reports in `EXPLAIN ANALYZE`.
#[derive(Debug, Clone)]
pub struct ScanMetrics {
    pub bytes_read: Count,
    pub segments_read: Count,
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
        self.columns.iter().any(|&c| c >= self.ndim)
    }
}

/// The remaining pieces of one slab of one file.
pub struct SlabReader {
    file: Arc<VoxelFile>,
    proxy: Option<Arc<ArrayProxy>>,
    /// The stored array memory-mapped (uncompressed local files): pieces are copied from it run by run.
    map: Option<Option<MappedArray>>,
    pieces: VecDeque<Piece>,
    out: Arc<Output>,
    metrics: ScanMetrics,
    mmap: crate::io::local::MmapMode,
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
        mmap: crate::io::local::MmapMode,
    ) -> SlabReader {
        SlabReader {
            pieces: pieces(sel, file.order, budget).into(),
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
        let Some(piece) = self.pieces.pop_front() else {
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

    /// The memory map of the stored array, made on first use; `None` where the proxy cannot map.
    fn mapped(&mut self) -> Result<Option<&MappedArray>> {
        if self.map.is_none() {
            let proxy = self.proxy()?;
            self.map = Some(proxy.map_unscaled()?);
        }
        Ok(self.map.as_ref().and_then(Option::as_ref))
    }

    /// The stored elements of `piece` in storage order, and what reading them cost.
    fn read_stored(&mut self, piece: &Piece) -> Result<Values> {
        let (scalar, order, shape) = (self.file.dtype, self.file.order, self.file.shape.clone());
        let read_time = self.metrics.read_time.clone();
        if let Some(map) = self.mapped()? {
            let timer = read_time.timer();
            let mut values = Values::zeroed(scalar.scalar, piece_len(piece) as usize);
            let runs = gather_box(
                map.bytes(),
                &shape,
                scalar.size(),
                order,
                piece,
                values.bytes_mut(),
            )?;
            if scalar.needs_swap() {
                values.swap_bytes();
            }
            timer.done();
            self.metrics.bytes_read.add(values.bytes().len());
            self.metrics.segments_read.add(runs);
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
