//! The array proxy: a lazy, read-only view of an n-dimensional array stored contiguously in a file, with nibabel's
//! `ArrayProxy` semantics (reference §1). Reading goes header → canonical slice → read plan → byte source → decode →
//! scaling.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use crate::array::VoxelArray;
use crate::dtype::DType;
use crate::error::{Result, VoxelError};
use crate::formats::{self, Compression, ImageHeader};
use crate::io::gzip::stream::GzipStreamSource;
use crate::io::local::{Handle, LocalSource, MmapMode};
use crate::io::mapped::MappedArray;
use crate::io::{ByteSource, ReadStats};
use crate::layout::{ArrayLayout, Factor};
use crate::memory;
use crate::plan::{Order, ReadPlan, SKIP_THRESHOLD, Segment};
use crate::scaling;
use crate::slicer::{AxisSel, CanonicalSlice, Index, SliceSpec, canonical_slice};
use crate::values::Values;

/// Crate-level default of `keep_file_open` (nibabel's `KEEP_FILE_OPEN_DEFAULT`).
pub const KEEP_FILE_OPEN_DEFAULT: bool = false;

/// How a proxy reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxyOptions {
    /// Memory-map uncompressed local files; silently ignored where the source cannot be mapped.
    pub mmap: MmapMode,
    /// Keep one handle for the proxy's lifetime instead of opening the file for every read.
    pub keep_file_open: bool,
    /// Override the spec's storage order (F is the default for tuple specs, NIfTI, Analyze and MGH).
    pub order: Option<Order>,
    /// nibabel's skip threshold in bytes: gaps up to this size are read through rather than skipped.
    pub skip_threshold: u64,
    /// Keep what gzip reads decompress in the process-wide data cache (a repeated read is then a copy). A reader
    /// that passes over its data once (a table scan reading whole slabs) turns it off: it would only fill the cache.
    pub gzip_data_cache: bool,
}

impl Default for ProxyOptions {
    fn default() -> Self {
        ProxyOptions {
            mmap: MmapMode::CopyOnWrite,
            keep_file_open: KEEP_FILE_OPEN_DEFAULT,
            order: None,
            skip_threshold: SKIP_THRESHOLD,
            gzip_data_cache: true,
        }
    }
}

/// nibabel's tuple spec `(shape, dtype, offset=0, slope=1.0, inter=0.0)`, F order; factors are applied literally.
pub type ArraySpec = ArrayLayout;

/// Where the data bytes live.
#[derive(Debug, Clone)]
pub enum DataFile {
    Path(PathBuf),
    /// An already-open handle: read with positional reads, never closed or moved by the proxy.
    Handle {
        file: Arc<File>,
        name: String,
    },
    /// An object in object storage or on an HTTP server, read with ranged GETs.
    #[cfg(feature = "remote")]
    Remote(crate::io::remote::RemoteObject),
}

impl From<&Path> for DataFile {
    fn from(p: &Path) -> Self {
        DataFile::Path(p.to_path_buf())
    }
}

impl From<PathBuf> for DataFile {
    fn from(p: PathBuf) -> Self {
        DataFile::Path(p)
    }
}

impl From<File> for DataFile {
    fn from(f: File) -> Self {
        DataFile::Handle {
            file: Arc::new(f),
            name: "<open file>".into(),
        }
    }
}

impl DataFile {
    fn location(&self) -> String {
        match self {
            DataFile::Path(p) => p.display().to_string(),
            DataFile::Handle { name, .. } => name.clone(),
            #[cfg(feature = "remote")]
            DataFile::Remote(o) => o.url().to_string(),
        }
    }
}

/// A lazy, read-only n-dimensional array in a file.
#[derive(Debug)]
pub struct ArrayProxy {
    file: DataFile,
    compression: Compression,
    /// The layout as given, with `opts.order` applied.
    layout: ArrayLayout,
    opts: ProxyOptions,
    /// Shared by copies over the same open handle (nibabel's RLock); a path-based proxy has its own.
    lock: Arc<Mutex<()>>,
    source: OnceLock<Arc<dyn ByteSource>>,
    stats: Mutex<ReadStats>,
}

impl ArrayProxy {
    /// A proxy over `file` described by `layout` (a header's, or an [`ArraySpec`]).
    pub fn new(
        file: impl Into<DataFile>,
        layout: &ArrayLayout,
        opts: ProxyOptions,
    ) -> Result<ArrayProxy> {
        Self::with_compression(file.into(), Compression::None, layout, opts)
    }

    pub fn with_compression(
        file: DataFile,
        compression: Compression,
        layout: &ArrayLayout,
        opts: ProxyOptions,
    ) -> Result<ArrayProxy> {
        let proxy = ArrayProxy {
            compression,
            layout: layout
                .clone()
                .with_order(opts.order.unwrap_or(layout.order)),
            opts,
            lock: Arc::default(),
            source: OnceLock::new(),
            stats: Mutex::default(),
            file,
        };
        proxy
            .byte_len()
            .map_err(|e| e.in_file(proxy.file.location()))?;
        Ok(proxy)
    }

    /// Open an image file (any supported format, detected from magic and name; `.gz` handled).
    pub fn open(path: &Path, opts: ProxyOptions) -> Result<ArrayProxy> {
        let header = formats::read_header(path)?;
        Self::from_header(&header, opts)
    }

    /// A proxy over the data file a parsed header points at.
    pub fn from_header(header: &ImageHeader, opts: ProxyOptions) -> Result<ArrayProxy> {
        Self::with_compression(
            DataFile::Path(header.data_path()?.to_path_buf()),
            header.compression,
            &header.layout,
            opts,
        )
    }

    /// Open an image at a path or URL (`s3://`, `gs://`, `az://`, `http(s)://`, `file://`): remote headers are read
    /// with one small ranged GET, data with ranged GETs of the planned segments. `store` configures object stores.
    pub fn open_location(
        location: &str,
        raw: Option<&str>,
        opts: ProxyOptions,
        store: &crate::location::StoreOptions,
    ) -> Result<ArrayProxy> {
        let location = crate::location::Location::parse(location)?;
        crate::location::open_image(&location, raw, store)?.into_proxy(opts)
    }

    /// A headerless raw file described by a spec string (`shape=2,3,4;dtype=<i2;offset=16;order=C`).
    pub fn open_raw(path: &Path, spec: &str, opts: ProxyOptions) -> Result<ArrayProxy> {
        let header = formats::parse_raw_spec(spec, path)?;
        Self::from_header(&header, opts)
    }

    /// Shape, dtype, offset, order and scale factors.
    pub fn layout(&self) -> &ArrayLayout {
        &self.layout
    }
    pub fn shape(&self) -> &[usize] {
        &self.layout.shape
    }
    pub fn ndim(&self) -> usize {
        self.layout.ndim()
    }
    /// Storage dtype, with its byte order.
    pub fn dtype(&self) -> DType {
        self.layout.dtype
    }
    pub fn offset(&self) -> u64 {
        self.layout.offset
    }
    pub fn slope(&self) -> Factor {
        self.layout.slope
    }
    pub fn inter(&self) -> Factor {
        self.layout.inter
    }
    pub fn order(&self) -> Order {
        self.layout.order
    }
    pub fn options(&self) -> ProxyOptions {
        self.opts
    }
    pub fn is_proxy(&self) -> bool {
        true
    }
    pub fn compression(&self) -> Compression {
        self.compression
    }
    pub fn location(&self) -> String {
        self.file.location()
    }
    /// Where the data are read from.
    pub fn data_location(&self) -> Result<crate::location::Location> {
        use crate::location::Location;
        Ok(match &self.file {
            DataFile::Path(p) => Location::Path(p.clone()),
            DataFile::Handle { file, name } => Location::Handle {
                file: Arc::clone(file),
                name: name.clone(),
            },
            #[cfg(feature = "remote")]
            DataFile::Remote(o) => Location::Object(crate::location::ObjectUrl::parse(o.url())?),
        })
    }

    /// The data file's path, when the proxy reads from a path.
    pub fn path(&self) -> Option<&Path> {
        match &self.file {
            DataFile::Path(p) => Some(p),
            _ => None,
        }
    }

    /// The dtype `to_array()` and `slice()` return.
    pub fn scaled_dtype(&self) -> Result<DType> {
        scaling::scaled_dtype(
            self.layout.dtype,
            self.layout.slope,
            self.layout.inter,
            None,
        )
    }

    /// Total bytes the array occupies; an error if the shape is absurd.
    pub fn byte_len(&self) -> Result<u64> {
        self.layout.byte_len()
    }

    /// Everything read through this proxy so far.
    pub fn stats(&self) -> ReadStats {
        self.stats.lock().map(|s| *s).unwrap_or_default()
    }

    fn source(&self) -> Result<Arc<dyn ByteSource>> {
        if let Some(s) = self.source.get() {
            return Ok(Arc::clone(s));
        }
        let made = self.make_source()?;
        Ok(Arc::clone(self.source.get_or_init(|| made)))
    }

    fn make_source(&self) -> Result<Arc<dyn ByteSource>> {
        let lock = Arc::clone(&self.lock);
        Ok(match (&self.file, self.compression) {
            (DataFile::Path(p), Compression::None) => {
                let handle = if self.opts.keep_file_open {
                    Handle::Kept(Arc::default())
                } else {
                    Handle::PerRead
                };
                Arc::new(LocalSource::new(p, handle, self.opts.mmap, lock))
            }
            (DataFile::Handle { file, name }, Compression::None) => Arc::new(LocalSource::new(
                Path::new(name),
                Handle::Shared(Arc::clone(file)),
                self.opts.mmap,
                lock,
            )),
            (DataFile::Path(p), Compression::Gzip) => {
                crate::io::gzip_source(p, self.opts.keep_file_open, self.opts.gzip_data_cache)?
            }
            (DataFile::Handle { file, name }, Compression::Gzip) => {
                Arc::new(GzipStreamSource::new(Arc::clone(file), name.clone(), lock))
            }
            #[cfg(feature = "remote")]
            (DataFile::Remote(o), Compression::None) => {
                Arc::new(crate::io::remote::RemoteSource::new(o.clone()))
            }
            #[cfg(feature = "remote")]
            (DataFile::Remote(o), Compression::Gzip) => {
                Arc::new(crate::io::gzip::remote::RemoteIndexedGzip::open(o.clone())?)
            }
        })
    }

    fn read_segments(&self, segments: &[Segment], out: &mut [u8]) -> Result<ReadStats> {
        self.read_through(&*self.source()?, segments, out)
    }

    /// Read through `source`; what the read cost is returned by the read itself (partitions sharing this proxy
    /// each get their own), and also added to the proxy's and the process's totals.
    fn read_through(
        &self,
        source: &dyn ByteSource,
        segments: &[Segment],
        out: &mut [u8],
    ) -> Result<ReadStats> {
        let st = source.read_segments(segments, out)?;
        if let Ok(mut s) = self.stats.lock() {
            s.add(st);
        }
        crate::io::record(st);
        Ok(st)
    }

    /// The stored elements selected by `slice` (storage byte order untouched, no scaling), laid out in `out_order`
    /// over `slice.out_shape()`. This is what the SQL scan decodes.
    pub fn read_raw(
        &self,
        slice: &CanonicalSlice,
        out_order: Order,
    ) -> Result<(Vec<u8>, ReadStats)> {
        self.check_memory(slice_elements(slice), 0)?;
        let plan = self.plan(slice)?;
        let copy = !(slice.is_full(&self.layout.shape) && out_order == self.layout.order);
        self.check_plan_memory(&plan, copy, 0)?;
        let mut buf = self.buffer(plan.read_bytes())?;
        let stats = self.read_segments(plan.segments(), &mut buf)?;
        let out = if copy {
            plan.gather(&buf, out_order)?
        } else {
            buf
        };
        Ok((out, stats))
    }

    /// The stored elements selected by `slice` decoded to native byte order (no scaling), laid out in `out_order`
    /// over `slice.out_shape()`, and what reading them cost. Read through `source` when given (a source over this
    /// proxy's data that the caller keeps, as the SQL scan keeps a slab mapped), else through the proxy's own.
    pub fn read_stored(
        &self,
        source: Option<&dyn ByteSource>,
        slice: &CanonicalSlice,
        out_order: Order,
    ) -> Result<(Values, ReadStats)> {
        self.check_memory(slice_elements(slice), 0)?;
        let plan = self.plan(slice)?;
        self.read_planned(source, &plan, out_order, 0)
    }

    /// Read `plan` through `source` (the proxy's own when `None`) into typed values in native byte order, laid out
    /// in `out_order`. `out_item`: bytes per element of what the caller makes of the values, for the memory check.
    fn read_planned(
        &self,
        source: Option<&dyn ByteSource>,
        plan: &ReadPlan,
        out_order: Order,
        out_item: usize,
    ) -> Result<(Values, ReadStats)> {
        let own;
        let source = match source {
            Some(s) => s,
            None => {
                own = self.source()?;
                &*own
            }
        };
        if plan.is_identity(out_order) {
            // One copy only: the bytes land straight in the typed result.
            self.check_plan_memory(plan, false, out_item)?;
            let n = plan.out_shape().iter().product();
            let mut values = Values::try_zeroed(self.layout.dtype.scalar, n, &self.location())?;
            let stats = self.read_through(source, plan.segments(), values.bytes_mut())?;
            if self.layout.dtype.needs_swap() {
                values.swap_bytes();
            }
            return Ok((values, stats));
        }
        self.check_plan_memory(plan, true, out_item)?;
        let mut buf = self.buffer(plan.read_bytes())?;
        let stats = self.read_through(source, plan.segments(), &mut buf)?;
        let out = plan.gather(&buf, out_order)?;
        Ok((Values::from_bytes(&out, self.layout.dtype)?, stats))
    }

    /// Stored elements of `slice` decoded to native order, with their shape and layout.
    /// `out_item`: bytes per element of what the caller makes of the values (a scaled or cast copy), for the memory
    /// check.
    fn read_values(&self, slice: &CanonicalSlice, out_item: usize) -> Result<(Values, Vec<usize>)> {
        // Checked before planning: a plan for a huge slice holds many segments.
        self.check_memory(slice_elements(slice), out_item)?;
        if slice.is_full(&self.layout.shape) {
            return Ok((self.read_full()?, self.layout.shape.clone()));
        }
        let plan = self.plan(slice)?;
        let (values, _) = self.read_planned(None, &plan, self.layout.order, out_item)?;
        Ok((values, plan.out_shape().to_vec()))
    }

    /// The whole array in one read straight into a typed buffer (nibabel's `array_from_file` path).
    fn read_full(&self) -> Result<Values> {
        let n: usize = self.layout.shape.iter().product();
        let mut values = Values::try_zeroed(self.layout.dtype.scalar, n, &self.location())?;
        if n > 0 {
            let seg = [Segment {
                offset: self.layout.offset,
                len: self.byte_len()?,
            }];
            self.read_segments(&seg, values.bytes_mut())?;
            if self.layout.dtype.needs_swap() {
                values.swap_bytes();
            }
        }
        Ok(values)
    }

    fn plan(&self, slice: &CanonicalSlice) -> Result<ReadPlan> {
        ReadPlan::new(
            slice,
            &self.layout.shape,
            self.layout.dtype.size(),
            self.layout.offset,
            self.layout.order,
            self.opts.skip_threshold,
        )
    }

    /// Refuse a read of `elements` whose stored values plus a converted copy (`out_item` bytes per element, 0 for
    /// none) would not fit the memory budget, before anything is allocated.
    fn check_memory(&self, elements: u64, out_item: usize) -> Result<()> {
        let per_element = (self.layout.dtype.size() + out_item) as u64;
        memory::check(
            &self.location(),
            "the result",
            memory::bytes_of(elements, per_element),
        )
    }

    /// The same check once the plan is known: the read buffer (gaps read through included), the gathered copy
    /// when there is one, and the converted copy.
    fn check_plan_memory(&self, plan: &ReadPlan, gathered: bool, out_item: usize) -> Result<()> {
        let elements = plan
            .out_shape()
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64))
            .unwrap_or(u64::MAX);
        let copies = u64::from(gathered) * self.layout.dtype.size() as u64 + out_item as u64;
        let needed = plan
            .read_bytes()
            .saturating_add(memory::bytes_of(elements, copies));
        memory::check(&self.location(), "the result", needed)
    }

    /// A zeroed read buffer of `n` bytes, or an error if it cannot be had.
    fn buffer(&self, n: u64) -> Result<Vec<u8>> {
        memory::zeroed_bytes(&self.location(), "the result", to_usize(n)?)
    }

    /// Bytes per element of the array a read returns when that is a new copy (scaled or cast), else 0.
    fn converted_itemsize(&self, requested: Option<DType>, scale: bool) -> Result<usize> {
        // Factors 1 and 0 hand the stored values back as they are.
        let identity = self.layout.is_unscaled();
        let out = match (scale, requested) {
            (true, None) if identity => return Ok(0),
            (true, _) => scaling::scaled_dtype(
                self.layout.dtype,
                self.layout.slope,
                self.layout.inter,
                requested,
            )?,
            (false, Some(r)) => r,
            (false, None) => return Ok(0),
        };
        Ok(out.size())
    }

    fn canonical(&self, spec: &SliceSpec) -> Result<CanonicalSlice> {
        canonical_slice(spec, &self.layout.shape)
    }

    fn finish(
        &self,
        values: Values,
        shape: Vec<usize>,
        requested: Option<DType>,
        scale: bool,
    ) -> Result<VoxelArray> {
        let (values, dtype) = if scale {
            scaling::scale_values(
                values,
                self.layout.dtype,
                self.layout.slope,
                self.layout.inter,
                requested,
            )?
        } else {
            match requested {
                None => (values, self.layout.dtype),
                Some(r) => (values.cast_via_promotion(r.scalar)?, r),
            }
        };
        VoxelArray::new(dtype, shape, self.layout.order, values)
    }

    fn read(&self, spec: &SliceSpec, requested: Option<DType>, scale: bool) -> Result<VoxelArray> {
        let slice = self.canonical(spec)?;
        let (values, shape) = self
            .converted_itemsize(requested, scale)
            .and_then(|out_item| self.read_values(&slice, out_item))
            .map_err(|e| e.in_file(self.location()))?;
        let mut array = self
            .finish(values, shape, requested, scale)
            .map_err(|e| e.in_file(self.location()))?;
        // `proxy[spec]` is nibabel's slicer, which canonicalises `...` away; the other reads are numpy indexing of a
        // whole array.
        let nibabel_slicer = scale && requested.is_none();
        if is_scalar_index(spec, &slice, nibabel_slicer) {
            array.dtype = array.dtype.to_native();
        }
        Ok(array)
    }

    /// `np.asarray(proxy)`: the whole array, scaled.
    pub fn to_array(&self) -> Result<VoxelArray> {
        self.read(&SliceSpec::all(), None, true)
    }

    /// `np.asarray(proxy, dtype=dtype)`: the whole array, scaled, then cast to exactly `dtype`.
    pub fn to_array_as(&self, dtype: DType) -> Result<VoxelArray> {
        self.read(&SliceSpec::all(), Some(dtype), true)
    }

    /// `proxy[spec]`: numpy basic indexing, scaled.
    pub fn slice(&self, spec: &SliceSpec) -> Result<VoxelArray> {
        self.read(spec, None, true)
    }

    /// `np.asarray(proxy, dtype=dtype)[spec]`.
    pub fn slice_as(&self, spec: &SliceSpec, dtype: DType) -> Result<VoxelArray> {
        self.read(spec, Some(dtype), true)
    }

    /// `proxy.get_unscaled()`: stored values, storage dtype (byte order included).
    pub fn get_unscaled(&self) -> Result<VoxelArray> {
        self.read(&SliceSpec::all(), None, false)
    }

    /// `proxy.get_unscaled()[spec]`.
    pub fn get_unscaled_slice(&self, spec: &SliceSpec) -> Result<VoxelArray> {
        self.read(spec, None, false)
    }

    /// `get_unscaled()` without reading: a memory map of the stored array (nibabel returns an `np.memmap` here).
    /// `None` where nibabel would not map either: mmap off, compressed data, zero-size arrays, or a file that cannot
    /// be mapped. A file shorter than the array is an error.
    pub fn map_unscaled(&self) -> Result<Option<MappedArray>> {
        if self.opts.mmap == MmapMode::Off
            || self.compression != Compression::None
            || self.byte_len()? == 0
        {
            return Ok(None);
        }
        let (file, path) = match &self.file {
            DataFile::Path(p) => (
                Arc::new(File::open(p).map_err(|e| VoxelError::io(p, e))?),
                p.clone(),
            ),
            DataFile::Handle { file, name } => (Arc::clone(file), PathBuf::from(name)),
            #[cfg(feature = "remote")]
            DataFile::Remote(_) => return Ok(None),
        };
        let len = file.metadata().map_err(|e| VoxelError::io(&path, e))?.len();
        let need = self.layout.offset + self.byte_len()?;
        if len < need {
            return Err(VoxelError::Truncated {
                path: path.display().to_string(),
                expected: need,
                actual: len,
            });
        }
        match MappedArray::map(
            &file,
            &path,
            self.layout.offset,
            self.layout.shape.clone(),
            self.layout.dtype,
            self.layout.order,
            self.opts.mmap,
        ) {
            Ok(m) => Ok(Some(m)),
            Err(VoxelError::Io { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn respec(&self, shape: Vec<usize>, lock: Arc<Mutex<()>>) -> ArrayProxy {
        ArrayProxy {
            file: self.file.clone(),
            compression: self.compression,
            layout: ArrayLayout {
                shape,
                ..self.layout.clone()
            },
            opts: ProxyOptions {
                order: Some(self.layout.order),
                ..self.opts
            },
            lock,
            source: OnceLock::new(),
            stats: Mutex::default(),
        }
    }

    fn lock_for_copy(&self) -> Arc<Mutex<()>> {
        match self.file {
            DataFile::Handle { .. } => Arc::clone(&self.lock),
            _ => Arc::default(),
        }
    }

    /// A new proxy over the same bytes with the same options (order included, unlike nibabel's Q5 bug). Over an open
    /// handle the copy shares the original's lock; over a path it has its own.
    pub fn copy(&self) -> ArrayProxy {
        self.respec(self.layout.shape.clone(), self.lock_for_copy())
    }

    /// The same bytes seen with another shape (at most one `-1`, inferred). Keeps order and `keep_file_open`.
    pub fn reshape(&self, shape: &[i64]) -> Result<ArrayProxy> {
        let size: usize = self.layout.shape.iter().product();
        let new_shape = resolve_shape(size, shape)?;
        Ok(self.respec(new_shape, self.lock_for_copy()))
    }
}

/// Whether the result is a numpy scalar, which is always native-endian. numpy gives a scalar when every axis is
/// indexed by an integer and the index has no `...` (with an Ellipsis, or for an empty index, it is a 0-d array that
/// keeps the stored byte order); nibabel's slicer gives one for every all-integer index once `...` is expanded.
fn is_scalar_index(spec: &SliceSpec, slice: &CanonicalSlice, nibabel_slicer: bool) -> bool {
    let all_ints = slice.items.iter().all(|a| matches!(a, AxisSel::Index(_)));
    let has_ellipsis = spec.0.iter().any(|i| matches!(i, Index::Ellipsis));
    // numpy: `a[()]` of a 0-d array is a scalar too; nibabel's slicer returns the 0-d array for a full read.
    let indexed = !slice.items.is_empty();
    all_ints
        && if nibabel_slicer {
            indexed
        } else {
            !has_ellipsis
        }
}

/// Elements a canonical slice selects (saturating: an overflowing count is over any budget).
fn slice_elements(slice: &CanonicalSlice) -> u64 {
    slice
        .out_shape()
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64))
        .unwrap_or(u64::MAX)
}

fn to_usize(n: u64) -> Result<usize> {
    usize::try_from(n).map_err(|_| VoxelError::Invalid(format!("{n} bytes do not fit in memory")))
}

/// numpy's reshape rule: at most one `-1`, sizes must match.
pub fn resolve_shape(size: usize, shape: &[i64]) -> Result<Vec<usize>> {
    let unknown = shape.iter().filter(|&&d| d == -1).count();
    if unknown > 1 {
        return Err(VoxelError::Invalid(
            "can only specify one unknown dimension".into(),
        ));
    }
    if shape.iter().any(|&d| d < -1) {
        return Err(VoxelError::Invalid(format!(
            "negative dimensions not allowed in {shape:?}"
        )));
    }
    let known: usize = shape
        .iter()
        .filter(|&&d| d != -1)
        .try_fold(1usize, |acc, &d| acc.checked_mul(d as usize))
        .ok_or_else(|| VoxelError::Invalid(format!("shape {shape:?} is too large")))?;
    let fill = if unknown == 1 && known != 0 {
        size / known
    } else {
        0
    };
    let out: Vec<usize> = shape
        .iter()
        .map(|&d| if d == -1 { fill } else { d as usize })
        .collect();
    if out.iter().product::<usize>() != size || (unknown == 1 && known == 0) {
        return Err(VoxelError::Invalid(format!(
            "cannot reshape array of size {size} into shape {shape:?}"
        )));
    }
    Ok(out)
}

/// Anything that can stand for image data: a proxy or an in-memory array (nibabel's `dataobj`).
pub trait DataObj {
    fn is_proxy(&self) -> bool {
        false
    }
    /// The dtype of the values the object yields (scaled, for a proxy).
    fn obj_dtype(&self) -> Result<DType>;
}

impl DataObj for ArrayProxy {
    fn is_proxy(&self) -> bool {
        true
    }
    fn obj_dtype(&self) -> Result<DType> {
        self.scaled_dtype()
    }
}

impl DataObj for VoxelArray {
    fn obj_dtype(&self) -> Result<DType> {
        Ok(self.dtype)
    }
}

/// nibabel's `is_proxy(obj)`.
pub fn is_proxy(obj: &dyn DataObj) -> bool {
    obj.is_proxy()
}

/// nibabel's `get_obj_dtype(obj)`: the dtype of the values `np.asarray(obj)` gives.
pub fn get_obj_dtype(obj: &dyn DataObj) -> Result<DType> {
    obj.obj_dtype()
}

/// Objects that can be reshaped without reading (a proxy) or by relabelling (an array).
pub trait Reshape: Sized {
    fn reshape_to(&self, shape: &[i64]) -> Result<Self>;
}

impl Reshape for ArrayProxy {
    fn reshape_to(&self, shape: &[i64]) -> Result<Self> {
        self.reshape(shape)
    }
}

impl Reshape for VoxelArray {
    fn reshape_to(&self, shape: &[i64]) -> Result<Self> {
        let new_shape = resolve_shape(self.len(), shape)?;
        let c = self.to_c_layout();
        VoxelArray::new(c.dtype, new_shape, Order::C, c.values)
    }
}

/// nibabel's `reshape_dataobj(obj, shape)`: leaves `obj` unchanged.
pub fn reshape_dataobj<T: Reshape>(obj: &T, shape: &[i64]) -> Result<T> {
    obj.reshape_to(shape)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A claim larger than any machine's memory (over an endless handle, so no file check stops it first) is
    /// refused before a byte is allocated, for whole and sliced reads, scaled or not.
    #[test]
    fn results_beyond_the_budget_are_refused_before_allocating() {
        let zero = File::open("/dev/zero").unwrap();
        let spec = ArraySpec::new(
            vec![1 << 30, 1 << 30],
            DType::native(crate::dtype::Scalar::I16),
        )
        .with_scaling(Factor::F64(2.0), Factor::F64(0.0));
        let opts = ProxyOptions {
            mmap: MmapMode::Off,
            ..Default::default()
        };
        let p = ArrayProxy::new(zero, &spec, opts).unwrap();
        for (what, r) in [
            ("all", p.to_array()),
            ("unscaled", p.get_unscaled()),
            ("slice", p.slice(&SliceSpec::parse("::2, :").unwrap())),
        ] {
            let e = r.unwrap_err().to_string();
            assert!(
                e.starts_with("<open file>: the result would need "),
                "{what}: {e}"
            );
        }
        // 2^60 int16 elements and their float64 scaled copy.
        let e = p.to_array().unwrap_err().to_string();
        assert!(
            e.contains(&format!("would need {} bytes", (1u64 << 60) * 10)),
            "{e}"
        );
    }

    #[test]
    fn reshape_rules() {
        assert_eq!(resolve_shape(24, &[2, 3, 4]).unwrap(), vec![2, 3, 4]);
        assert_eq!(resolve_shape(24, &[2, -1, 4]).unwrap(), vec![2, 3, 4]);
        assert!(resolve_shape(24, &[-1, -1, 4]).is_err());
        assert!(resolve_shape(24, &[2, 3, 5]).is_err());
        assert!(resolve_shape(24, &[2, -1, 5]).is_err());
        assert_eq!(resolve_shape(0, &[0, 3]).unwrap(), vec![0, 3]);
        assert!(resolve_shape(0, &[0, -1]).is_err());
    }
}
