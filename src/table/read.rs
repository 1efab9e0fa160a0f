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

    fn read_values(&mut self, piece: &Piece) -> Result<Vec<ArrayRef>> {
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
        self.metrics.pieces_read.add(1);
        let f = &self.file;
        let _t = self.metrics.decode_time.timer();
        let values = decode_values(
            &raw,
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
