//! What a table is made of: its options, the files a location names, and each file's array description (read once
//! at registration; the scan opens the files again and checks they have not changed since).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use crate::dtype::{DType, Scalar};
use crate::error::{Result, VoxelError};
use crate::formats::detect::{NameKind, header_path_for, name_kind};
use crate::formats::{self, Affine, Compression, Factor, Format, ImageHeader, Order, WorldMeta};
use crate::io::local::MmapMode;
use crate::io::remote::{self, RemoteImage, RemoteObject, StoreOptions};
use crate::proxy::{ArrayProxy, ArraySpec, DataFile, ProxyOptions};

use super::schema::ValueMode;

/// Which image family a table accepts (`STORED AS …`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FormatKind {
    /// `VOXELS`: any supported format, detected from magic and name; a raw file when the options give a spec.
    Any,
    Nifti,
    Analyze,
    Mgh,
    Npy,
    Raw,
}

impl FormatKind {
    /// The `STORED AS` names, upper case (DataFusion looks factories up by the upper-cased name).
    pub const ALL: [(&'static str, FormatKind); 6] = [
        ("VOXELS", FormatKind::Any),
        ("NIFTI", FormatKind::Nifti),
        ("ANALYZE", FormatKind::Analyze),
        ("MGH", FormatKind::Mgh),
        ("NPY", FormatKind::Npy),
        ("RAW", FormatKind::Raw),
    ];

    pub fn name(self) -> &'static str {
        FormatKind::ALL
            .iter()
            .find(|(_, k)| *k == self)
            .map_or("VOXELS", |(n, _)| n)
    }

    pub fn parse(name: &str) -> Option<FormatKind> {
        FormatKind::ALL
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, k)| *k)
    }

    fn accepts(self, format: Format) -> bool {
        use Format::*;
        match self {
            FormatKind::Any => true,
            FormatKind::Nifti => {
                matches!(format, Nifti1Image | Nifti1Pair | Nifti2Image | Nifti2Pair)
            }
            FormatKind::Analyze => matches!(format, Analyze | Spm99Analyze | Spm2Analyze),
            FormatKind::Mgh => format == Mgh,
            FormatKind::Npy => format == Npy,
            FormatKind::Raw => format == Raw,
        }
    }
}

/// The keys of a raw spec, given as table options.
const RAW_KEYS: [&str; 6] = ["shape", "dtype", "offset", "slope", "inter", "order"];
/// Every option a table understands.
const KEYS: [&str; 12] = [
    "scaling",
    "world",
    "affine",
    "grid",
    "value_type",
    "mmap",
    "shape",
    "dtype",
    "offset",
    "slope",
    "inter",
    "order",
];

/// A table's options, from `OPTIONS (…)`, the table function's arguments or the Rust API. Keys are
/// case-insensitive and may carry DataFusion's `format.` prefix.
#[derive(Debug, Clone, PartialEq)]
pub struct TableOptions {
    pub kind: FormatKind,
    pub mode: ValueMode,
    /// The raw spec (`shape=…;dtype=…;…`) when the table reads headerless files.
    pub raw: Option<String>,
    pub mmap: MmapMode,
    /// Object-store settings (`aws.*`, `gcp.*`, `azure.*`, `http.*`, `remote.*`) for URL locations.
    pub store: StoreOptions,
    /// `world 'true'`: the millimetre columns `x, y, z` (and `world_space`, `tr`); see [`super::world`].
    pub world: bool,
    /// `affine '…'`: the affine of npy/raw files (12 or 16 numbers, row-major); implies `world`.
    pub affine: Option<Affine>,
    /// `grid 'atlas.nii'`: the columns `grid_i, grid_j, grid_k`, each voxel's nearest voxel in that image's grid;
    /// implies `world`.
    pub grid: Option<String>,
}

impl TableOptions {
    pub fn new(kind: FormatKind) -> TableOptions {
        TableOptions {
            kind,
            mode: ValueMode::Scaled,
            raw: None,
            mmap: MmapMode::default(),
            store: StoreOptions::default(),
            world: false,
            affine: None,
            grid: None,
        }
    }

    /// Parse options; unknown keys, bad values and raw keys on a non-raw table are errors.
    pub fn parse<'a>(
        kind: FormatKind,
        options: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<TableOptions> {
        let mut opts = TableOptions::new(kind);
        let mut scaling = true;
        let mut value_type = None;
        let mut raw: Vec<(String, String)> = Vec::new();
        let mut seen = HashSet::new();
        for (key, value) in options {
            let lower = key.to_ascii_lowercase();
            let key = lower.strip_prefix("format.").unwrap_or(&lower).to_string();
            if StoreOptions::is_store_key(&key) {
                opts.store.insert(&key, value)?;
                continue;
            }
            if !KEYS.contains(&key.as_str()) {
                return Err(VoxelError::Invalid(format!(
                    "unknown option '{key}' (known: {}, and object-store options aws.*, gcp.*, azure.*, http.*, remote.*)",
                    KEYS.join(", ")
                )));
            }
            if !seen.insert(key.clone()) {
                return Err(VoxelError::Invalid(format!("option '{key}' given twice")));
            }
            match key.as_str() {
                "scaling" => scaling = parse_bool(&key, value)?,
                "value_type" => value_type = Some(DType::parse(value)?.scalar),
                "mmap" => opts.mmap = value.parse()?,
                "world" => opts.world = parse_bool(&key, value)?,
                "affine" => opts.affine = Some(super::world::parse_affine(value)?),
                "grid" => opts.grid = Some(value.to_string()),
                _ => raw.push((key, value.to_string())),
            }
        }
        opts.mode = match (scaling, value_type) {
            (true, None) => ValueMode::Scaled,
            (false, None) => ValueMode::Unscaled,
            (true, Some(s)) => ValueMode::As(s),
            (false, Some(_)) => {
                return Err(VoxelError::Invalid(
                    "options 'scaling' 'false' and 'value_type' cannot be combined".into(),
                ));
            }
        };
        opts.raw = raw_spec(kind, &raw)?;
        opts.world |= opts.affine.is_some() || opts.grid.is_some();
        Ok(opts)
    }
}

fn parse_bool(key: &str, value: &str) -> Result<bool> {
    match value.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(VoxelError::Invalid(format!(
            "option '{key}' should be true or false, not '{value}'"
        ))),
    }
}

/// The raw spec string from raw keys: required for RAW, refused for a format with headers.
fn raw_spec(kind: FormatKind, raw: &[(String, String)]) -> Result<Option<String>> {
    if raw.is_empty() {
        return match kind {
            FormatKind::Raw => Err(VoxelError::Invalid(
                "a RAW table needs OPTIONS ('shape' '…', 'dtype' '…') (and optionally offset, slope, inter, order)"
                    .into(),
            )),
            _ => Ok(None),
        };
    }
    if !matches!(kind, FormatKind::Raw | FormatKind::Any) {
        let keys: Vec<&str> = raw.iter().map(|(k, _)| k.as_str()).collect();
        return Err(VoxelError::Invalid(format!(
            "option(s) {} only apply to RAW tables, not {}",
            keys.join(", "),
            kind.name()
        )));
    }
    let mut parts: Vec<String> = Vec::new();
    for key in RAW_KEYS {
        if let Some((_, v)) = raw.iter().find(|(k, _)| k == key) {
            parts.push(format!("{key}={v}"));
        }
    }
    Ok(Some(parts.join(";")))
}

/// One image file of a table: where its array lives and how to read it, as found at registration.
#[derive(Debug, Clone)]
pub struct VoxelFile {
    /// The name shown in the `file` column and in messages (the path as the location named or matched it).
    pub name: String,
    pub data_path: PathBuf,
    pub format: Format,
    pub shape: Vec<usize>,
    pub dtype: DType,
    pub offset: u64,
    pub slope: Factor,
    pub inter: Factor,
    pub order: Order,
    pub compression: Compression,
    pub affine: Affine,
    pub zooms: Vec<f64>,
    /// The affine's space and the time unit.
    pub world: WorldMeta,
    /// The map to another image's grid (table option `grid`), set when the table is made.
    pub grid: Option<super::world::GridMap>,
    /// Size and modification time of the data file at registration, to notice a file replaced since.
    pub size: u64,
    pub modified: Option<SystemTime>,
    /// A proxy registered directly (it may read from an open handle); otherwise the scan opens the path.
    pub proxy: Option<Arc<ArrayProxy>>,
    /// For a file in object storage: the object's ETag at registration (reads are pinned to it), and the store
    /// settings to reach it.
    pub etag: Option<String>,
    pub store: StoreOptions,
}

impl VoxelFile {
    pub fn from_header(name: String, h: &ImageHeader) -> Result<VoxelFile> {
        let (size, modified) = fingerprint(&h.data_path)?;
        Ok(VoxelFile {
            name,
            data_path: h.data_path.clone(),
            format: h.format,
            shape: h.shape.clone(),
            dtype: h.dtype,
            offset: h.offset,
            slope: h.slope,
            inter: h.inter,
            order: h.order,
            compression: h.compression,
            affine: h.affine,
            zooms: h.zooms.clone(),
            world: h.world,
            grid: None,
            size,
            modified,
            proxy: None,
            etag: None,
            store: StoreOptions::default(),
        })
    }

    /// A table file in object storage (header already read with ranged GETs).
    pub fn from_remote(name: String, image: &RemoteImage) -> Result<VoxelFile> {
        let h = &image.header;
        Ok(VoxelFile {
            name,
            data_path: PathBuf::from(image.data.url()),
            format: h.format,
            shape: h.shape.clone(),
            dtype: h.dtype,
            offset: h.offset,
            slope: h.slope,
            inter: h.inter,
            order: h.order,
            compression: h.compression,
            affine: h.affine,
            zooms: h.zooms.clone(),
            world: h.world,
            grid: None,
            size: image.data.size(),
            modified: None,
            proxy: None,
            etag: image.data.etag().map(str::to_string),
            store: image.data.options().clone(),
        })
    }

    /// Whether the data lives in object storage or on an HTTP server.
    pub fn is_remote(&self) -> bool {
        self.proxy.is_none() && remote::is_url(&self.data_path.to_string_lossy())
    }

    /// A table file over an existing proxy (read through that proxy, so an open handle works too).
    pub fn from_proxy(name: String, proxy: ArrayProxy) -> Result<VoxelFile> {
        let (size, modified) = match proxy.path() {
            Some(p) => fingerprint(p)?,
            None => (proxy.offset() + proxy.byte_len()?, None),
        };
        let ndim = proxy.ndim();
        Ok(VoxelFile {
            name,
            data_path: proxy
                .path()
                .map_or_else(|| PathBuf::from(proxy.location()), Path::to_path_buf),
            format: Format::Raw,
            shape: proxy.shape().to_vec(),
            dtype: proxy.dtype(),
            offset: proxy.offset(),
            slope: proxy.slope(),
            inter: proxy.inter(),
            order: proxy.order(),
            compression: proxy.compression(),
            affine: formats::affine::IDENTITY,
            zooms: vec![1.0; ndim],
            world: WorldMeta::default(),
            grid: None,
            size,
            modified,
            proxy: Some(Arc::new(proxy)),
            etag: None,
            store: StoreOptions::default(),
        })
    }

    pub fn ndim(&self) -> usize {
        self.shape.len()
    }

    /// Bytes of one element.
    pub fn itemsize(&self) -> u64 {
        self.dtype.size() as u64
    }

    /// Fail when the data file is not the one registered (size or modification time changed).
    pub fn check_unchanged(&self) -> Result<()> {
        // Remote reads carry the registered ETag (If-Match) and check sizes themselves.
        if self.proxy.as_ref().is_some_and(|p| p.path().is_none()) || self.is_remote() {
            return Ok(());
        }
        let (size, modified) = fingerprint(&self.data_path)?;
        if size != self.size || (modified.is_some() && modified != self.modified) {
            return Err(VoxelError::Invalid(format!(
                "{}: the file changed since the table was registered (size {} → {size} bytes); register it again",
                self.data_path.display(),
                self.size
            )));
        }
        Ok(())
    }

    /// A proxy for reading: the registered one, or a new one over the path that keeps its file open.
    pub fn open_proxy(&self, mmap: MmapMode) -> Result<Arc<ArrayProxy>> {
        if let Some(p) = &self.proxy {
            return Ok(Arc::clone(p));
        }
        let spec = ArraySpec::new(self.shape.clone(), self.dtype)
            .with_offset(self.offset)
            .with_scaling(self.slope, self.inter);
        // A skip threshold of 0: the scan reads only the bytes a query needs (memory-mapped copies make the gaps
        // nibabel reads through to save seeks unnecessary).
        let opts = ProxyOptions {
            mmap,
            keep_file_open: true,
            order: Some(self.order),
            skip_threshold: 0,
        };
        let file = if self.is_remote() {
            DataFile::Remote(RemoteObject::known(
                &self.data_path.to_string_lossy(),
                &self.store,
                self.size,
                self.etag.clone(),
            )?)
        } else {
            DataFile::Path(self.data_path.clone())
        };
        let proxy = ArrayProxy::with_compression(file, self.compression, &spec, opts)?;
        Ok(Arc::new(proxy))
    }

    /// Header facts for export metadata.
    pub fn header_json(&self) -> serde_json::Value {
        serde_json::json!({
            "file": self.name,
            "format": self.format.name(),
            "shape": self.shape,
            "dtype": self.dtype.numpy_str(),
            "offset": self.offset,
            "slope": self.slope.value(),
            "inter": self.inter.value(),
            "order": self.order.to_string(),
            "affine": self.affine,
            "zooms": self.zooms,
        })
    }
}

fn fingerprint(path: &Path) -> Result<(u64, Option<SystemTime>)> {
    let meta = std::fs::metadata(path).map_err(|e| VoxelError::io(path, e))?;
    Ok((meta.len(), meta.modified().ok()))
}

/// The files a table reads, and whether it is a multi-file table (with a `file` column).
#[derive(Debug, Clone)]
pub struct TableFiles {
    pub files: Vec<VoxelFile>,
    pub multi: bool,
}

impl TableFiles {
    /// Resolve `locations` (a file, a directory, a glob, or several of these) and read every header.
    pub fn open(locations: &[String], opts: &TableOptions) -> Result<TableFiles> {
        let (paths, multi) = resolve_locations_with(locations, opts.kind, &opts.store)?;
        let mut files = Vec::with_capacity(paths.len());
        for path in paths {
            let name = path.display().to_string();
            if remote::is_url(&name) {
                let image = read_remote_header(&name, opts)?;
                files.push(VoxelFile::from_remote(name, &image)?);
                continue;
            }
            let header = read_header(&path, opts)?;
            files.push(VoxelFile::from_header(name, &header)?);
        }
        check_same_ndim(&files)?;
        Ok(TableFiles { files, multi })
    }
}

fn read_remote_header(url: &str, opts: &TableOptions) -> Result<RemoteImage> {
    let image = match &opts.raw {
        Some(spec) => remote::open_raw(url, spec, &opts.store)?,
        None => remote::open_image(url, &opts.store)?,
    };
    check_kind(url, image.header.format, opts.kind)?;
    Ok(image)
}

fn check_kind(name: &str, format: Format, kind: FormatKind) -> Result<()> {
    if !kind.accepts(format) {
        return Err(VoxelError::Invalid(format!(
            "{name}: is {format}, not {} (use STORED AS VOXELS to detect the format)",
            kind.name()
        )));
    }
    Ok(())
}

fn read_header(path: &Path, opts: &TableOptions) -> Result<ImageHeader> {
    if let Some(spec) = &opts.raw {
        return formats::parse_raw_spec(spec, path);
    }
    let header = formats::read_header(path)?;
    check_kind(&path.display().to_string(), header.format, opts.kind)?;
    Ok(header)
}

fn check_same_ndim(files: &[VoxelFile]) -> Result<()> {
    let Some(first) = files.first() else {
        return Ok(());
    };
    for f in files {
        if f.ndim() != first.ndim() {
            return Err(VoxelError::Invalid(format!(
                "{}: has {} axes (shape {:?}) but {} has {} (shape {:?}); the files of one table must have the same number of axes",
                f.name,
                f.ndim(),
                f.shape,
                first.name,
                first.ndim(),
                first.shape
            )));
        }
    }
    Ok(())
}

/// Expand locations into image paths (sorted within each location, duplicates dropped). A single location naming
/// one file gives a single-file table; a directory, a glob or several locations give a multi-file table.
pub fn resolve_locations(locations: &[String], kind: FormatKind) -> Result<(Vec<PathBuf>, bool)> {
    resolve_locations_with(locations, kind, &StoreOptions::default())
}

/// [`resolve_locations`] where locations may be object-store URLs (listed with `store`'s settings). URLs are
/// returned as they are, in a `PathBuf`.
pub fn resolve_locations_with(
    locations: &[String],
    kind: FormatKind,
    store: &StoreOptions,
) -> Result<(Vec<PathBuf>, bool)> {
    if locations.is_empty() {
        return Err(VoxelError::Invalid("no LOCATION given".into()));
    }
    let mut multi = locations.len() > 1;
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    for loc in locations {
        if remote::is_url(loc) {
            let listed = loc.ends_with('/') || loc.contains(['*', '?', '[']);
            multi |= listed;
            let found = if listed {
                keep_remote_images(remote::list_matching(loc, store)?, kind)
            } else {
                vec![loc.clone()]
            };
            if found.is_empty() {
                return Err(VoxelError::Invalid(format!(
                    "location '{loc}' matches no image file"
                )));
            }
            for url in found {
                if seen.insert(PathBuf::from(&url)) {
                    out.push(PathBuf::from(url));
                }
            }
            continue;
        }
        let path_buf = crate::proxy::local_path(loc);
        let path = path_buf.to_str().unwrap_or(loc);
        if path.contains("://") {
            return Err(VoxelError::Invalid(format!(
                "location '{loc}': unsupported URL scheme (s3, gs, az, abfss, http, https and file are read)"
            )));
        }
        let found = if Path::new(path).is_dir() {
            multi = true;
            list_dir(Path::new(path), kind)?
        } else if path.contains(['*', '?', '[']) {
            multi = true;
            expand_glob(path, kind)?
        } else {
            std::fs::metadata(path).map_err(|e| VoxelError::io(path, e))?;
            vec![PathBuf::from(path)]
        };
        if found.is_empty() {
            return Err(VoxelError::Invalid(format!(
                "location '{loc}' matches no image file"
            )));
        }
        for p in found {
            let key = std::fs::canonicalize(&p).unwrap_or_else(|_| p.clone());
            if seen.insert(key) {
                out.push(p);
            }
        }
    }
    Ok((out, multi))
}

/// Is `path` an image this table would read from a directory or glob? Pairs count once (by their `.hdr`).
fn is_image(path: &Path, kind: FormatKind, all: &HashSet<PathBuf>) -> bool {
    if !path.is_file() {
        return false;
    }
    match name_kind(path) {
        NameKind::Img => !all.contains(&header_path_for(path)) || header_path_for(path) == path,
        NameKind::Other => kind == FormatKind::Raw,
        _ => true,
    }
}

/// Listed objects a table reads: images by name (pairs once, by their `.hdr`; anything for RAW).
fn keep_remote_images(urls: Vec<String>, kind: FormatKind) -> Vec<String> {
    let all: HashSet<PathBuf> = urls.iter().map(PathBuf::from).collect();
    urls.into_iter()
        .filter(|u| {
            let p = Path::new(u);
            match name_kind(p) {
                NameKind::Img => !all.contains(&header_path_for(p)),
                NameKind::Other => kind == FormatKind::Raw,
                _ => true,
            }
        })
        .collect()
}

fn list_dir(dir: &Path, kind: FormatKind) -> Result<Vec<PathBuf>> {
    let entries = std::fs::read_dir(dir).map_err(|e| VoxelError::io(dir, e))?;
    let mut paths = Vec::new();
    for e in entries {
        paths.push(e.map_err(|e| VoxelError::io(dir, e))?.path());
    }
    Ok(keep_images(paths, kind))
}

fn expand_glob(pattern: &str, kind: FormatKind) -> Result<Vec<PathBuf>> {
    let matches = glob::glob(pattern).map_err(|e| {
        VoxelError::Invalid(format!("location '{pattern}' is not a valid glob: {e}"))
    })?;
    let mut paths = Vec::new();
    for m in matches {
        paths.push(m.map_err(|e| VoxelError::io(e.path(), std::io::Error::other(e.to_string())))?);
    }
    Ok(keep_images(paths, kind))
}

fn keep_images(mut paths: Vec<PathBuf>, kind: FormatKind) -> Vec<PathBuf> {
    paths.sort();
    let all: HashSet<PathBuf> = paths.iter().cloned().collect();
    paths
        .into_iter()
        .filter(|p| is_image(p, kind, &all))
        .collect()
}

/// Options given as a map (e.g. DataFusion's `CreateExternalTable::options`).
pub fn options_from_map(kind: FormatKind, map: &HashMap<String, String>) -> Result<TableOptions> {
    let mut pairs: Vec<(&str, &str)> = map.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    pairs.sort_unstable();
    TableOptions::parse(kind, pairs)
}

/// The element type the table's value column would have for one file.
pub fn file_value_scalar(f: &VoxelFile, mode: ValueMode) -> Result<Scalar> {
    super::schema::value_scalar(f.dtype, f.slope, f.inter, mode).map_err(|e| e.in_file(&f.name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_are_case_insensitive_and_checked() {
        let o = TableOptions::parse(FormatKind::Nifti, [("format.Scaling", "false")]).unwrap();
        assert_eq!(o.mode, ValueMode::Unscaled);
        let o = TableOptions::parse(FormatKind::Any, [("value_type", "float32")]).unwrap();
        assert_eq!(o.mode, ValueMode::As(Scalar::F32));
        let e = TableOptions::parse(FormatKind::Nifti, [("format.colour", "red")]).unwrap_err();
        assert!(e.to_string().contains("unknown option 'colour'"), "{e}");
        let e = TableOptions::parse(FormatKind::Nifti, [("shape", "2,3")]).unwrap_err();
        assert!(e.to_string().contains("only apply to RAW"), "{e}");
        assert!(TableOptions::parse(FormatKind::Raw, []).is_err());
        let o = TableOptions::parse(
            FormatKind::Raw,
            [("format.dtype", "<i2"), ("format.shape", "2,3")],
        )
        .unwrap();
        assert_eq!(o.raw.as_deref(), Some("shape=2,3;dtype=<i2"));
        assert!(TableOptions::parse(FormatKind::Any, [("scaling", "maybe")]).is_err());
    }

    #[test]
    fn locations_expand_to_sorted_images() {
        let dir = tempfile::tempdir().unwrap();
        for n in ["b.nii", "a.nii", "c.hdr", "c.img", "notes.txt"] {
            std::fs::write(dir.path().join(n), b"x").unwrap();
        }
        let d = dir.path().display().to_string();
        let (paths, multi) = resolve_locations(std::slice::from_ref(&d), FormatKind::Any).unwrap();
        let names: Vec<String> = paths
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["a.nii", "b.nii", "c.hdr"]);
        assert!(multi);
        let (paths, _) = resolve_locations(&[format!("{d}/*.nii")], FormatKind::Any).unwrap();
        assert_eq!(paths.len(), 2);
        let (paths, multi) = resolve_locations(&[format!("{d}/a.nii")], FormatKind::Any).unwrap();
        assert_eq!((paths.len(), multi), (1, false));
        let e = resolve_locations(&[format!("{d}/*.mgz")], FormatKind::Any).unwrap_err();
        assert!(e.to_string().contains("matches no image file"), "{e}");
        assert!(resolve_locations(&[format!("{d}/missing.nii")], FormatKind::Any).is_err());
    }
}
