//! What a table is made of: its options, the files a location names, and each file's array description (read once
//! at registration; the scan opens the files again and checks they have not changed since).

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use crate::dtype::{DType, Scalar};
use crate::error::{Result, VoxelError};
use crate::formats::{self, Affine, Compression, Format, ImageHeader, WorldMeta};
use crate::io::local::MmapMode;
use crate::io::remote::{RemoteImage, RemoteObject, StoreOptions};
use crate::layout::{ArrayLayout, first_other_ndim};
use crate::location::{self, Expanded, Location, ObjectUrl, OpenImage, open_image};
use crate::proxy::{ArrayProxy, DataFile, ProxyOptions};

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
    /// The millimetre columns `x, y, z` (and `world_space`, `tr`); see [`super::world`]. `None` (the default): present
    /// when every file has an affine (its own, or the `affine` option); `Some(true)` (`world 'true'`): required, an
    /// error for a file without one; `Some(false)`: absent. A table keeps the answer it resolved (`Some`).
    pub world: Option<bool>,
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
            world: None,
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
                "world" => opts.world = Some(parse_bool(&key, value)?),
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
        if opts.world == Some(false) && (opts.affine.is_some() || opts.grid.is_some()) {
            return Err(VoxelError::Invalid(
                "option 'world' 'false' removes the millimetre columns that 'affine' and 'grid' need".into(),
            ));
        }
        if opts.affine.is_some() || opts.grid.is_some() {
            opts.world = Some(true);
        }
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

/// What tells one version of a data file from another: size and modification time for a local file, the ETag
/// (and size) for an object. Taken at registration; a scan checks the file still matches.
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct Fingerprint {
    pub size: u64,
    #[serde(default)]
    pub modified: Option<SystemTime>,
    /// An object's ETag at registration (reads are pinned to it with If-Match).
    #[serde(default)]
    pub etag: Option<String>,
}

impl Fingerprint {
    /// A local file's size and modification time now.
    pub fn of_path(path: &Path) -> Result<Fingerprint> {
        let meta = std::fs::metadata(path).map_err(|e| VoxelError::io(path, e))?;
        Ok(Fingerprint {
            size: meta.len(),
            modified: meta.modified().ok(),
            etag: None,
        })
    }
}

/// One image file of a table: where its array lives and how to read it, as found at registration.
#[derive(Debug, Clone)]
pub struct VoxelFile {
    /// The name shown in the `file` column and in messages (the path as the location named or matched it).
    pub name: String,
    /// Where the data are: a local path, or an object URL (an open handle only behind `proxy`).
    pub data: Location,
    pub format: Format,
    pub layout: ArrayLayout,
    pub compression: Compression,
    pub affine: Affine,
    pub zooms: Vec<f64>,
    /// The affine's space and the time unit.
    pub world: WorldMeta,
    /// The map to another image's grid (table option `grid`), set when the table is made.
    pub grid: Option<super::world::GridMap>,
    /// The data file's version at registration, to notice a file replaced since.
    pub fingerprint: Fingerprint,
    /// A proxy registered directly (it may read from an open handle); otherwise the scan opens the location.
    pub proxy: Option<Arc<ArrayProxy>>,
    /// For a file in object storage: the store settings to reach it.
    pub store: StoreOptions,
}

impl VoxelFile {
    /// A table file from its header, found at `data` with `fingerprint` (the one constructor the others share).
    pub fn new(
        name: String,
        h: &ImageHeader,
        data: Location,
        fingerprint: Fingerprint,
    ) -> VoxelFile {
        VoxelFile {
            name,
            data,
            format: h.format,
            layout: h.layout.clone(),
            compression: h.compression,
            affine: h.affine,
            zooms: h.zooms.clone(),
            world: h.world,
            grid: None,
            fingerprint,
            proxy: None,
            store: StoreOptions::default(),
        }
    }

    /// A local table file (its header read already).
    pub fn from_header(name: String, h: &ImageHeader) -> Result<VoxelFile> {
        let fingerprint = Fingerprint::of_path(h.data_path()?)?;
        Ok(Self::new(name, h, h.data_file.clone(), fingerprint))
    }

    /// A table file from an image whose header was read (a local file, an object or a handle), named `name`.
    pub fn from_image(name: String, image: OpenImage) -> Result<VoxelFile> {
        Ok(match image.data {
            DataFile::Path(_) => Self::from_header(name, &image.header)?,
            DataFile::Remote(object) => Self::from_remote(
                name,
                &RemoteImage {
                    header: image.header,
                    data: object,
                },
            )?,
            DataFile::Handle { file, name: handle } => {
                let size = file
                    .metadata()
                    .map_err(|e| VoxelError::io(&handle, e))?
                    .len();
                let fingerprint = Fingerprint {
                    size,
                    ..Fingerprint::default()
                };
                Self::new(
                    name,
                    &image.header,
                    Location::Handle { file, name: handle },
                    fingerprint,
                )
            }
        })
    }

    /// A table file in object storage (header already read with ranged GETs).
    pub fn from_remote(name: String, image: &RemoteImage) -> Result<VoxelFile> {
        let data = Location::Object(ObjectUrl::parse(image.data.url())?);
        let fingerprint = Fingerprint {
            size: image.data.size(),
            modified: None,
            etag: image.data.etag().map(str::to_string),
        };
        Ok(VoxelFile {
            store: image.data.options().clone(),
            ..Self::new(name, &image.header, data, fingerprint)
        })
    }

    /// Whether the data live in object storage or on an HTTP server.
    pub fn is_remote(&self) -> bool {
        self.proxy.is_none() && self.data.is_remote()
    }

    /// The local data file, when the data are in one.
    pub fn local_path(&self) -> Option<&Path> {
        self.data.as_path()
    }

    /// A table file over an existing proxy (read through that proxy, so an open handle works too).
    pub fn from_proxy(name: String, proxy: ArrayProxy) -> Result<VoxelFile> {
        let fingerprint = match proxy.path() {
            Some(p) => Fingerprint::of_path(p)?,
            None => Fingerprint {
                size: proxy.layout().end(),
                ..Fingerprint::default()
            },
        };
        Ok(VoxelFile {
            name,
            data: proxy.data_location()?,
            format: Format::Raw,
            layout: proxy.layout().clone(),
            compression: proxy.compression(),
            affine: formats::affine::IDENTITY,
            zooms: vec![1.0; proxy.ndim()],
            world: WorldMeta::default(),
            grid: None,
            fingerprint,
            proxy: Some(Arc::new(proxy)),
            store: StoreOptions::default(),
        })
    }

    pub fn ndim(&self) -> usize {
        self.layout.ndim()
    }

    /// Bytes of one element.
    pub fn itemsize(&self) -> u64 {
        self.layout.itemsize()
    }

    /// Fail when the data file is not the one registered (size or modification time changed).
    pub fn check_unchanged(&self) -> Result<()> {
        // Remote reads carry the registered ETag (If-Match) and check sizes themselves.
        let Some(path) = self.local_path() else {
            return Ok(());
        };
        let now = Fingerprint::of_path(path)?;
        let was = &self.fingerprint;
        if now.size != was.size || (now.modified.is_some() && now.modified != was.modified) {
            return Err(VoxelError::Invalid(format!(
                "{}: the file changed since the table was registered (size {} → {} bytes); register it again",
                path.display(),
                was.size,
                now.size
            )));
        }
        Ok(())
    }

    /// A proxy for reading: the registered one, or a new one over the location that keeps its file open (with the
    /// gzip data cache when `gzip_data_cache`).
    pub fn open_proxy(&self, mmap: MmapMode, gzip_data_cache: bool) -> Result<Arc<ArrayProxy>> {
        if let Some(p) = &self.proxy {
            return Ok(Arc::clone(p));
        }
        // A skip threshold of 0: the scan reads only the bytes a query needs (memory-mapped copies make the gaps
        // nibabel reads through to save seeks unnecessary).
        let opts = ProxyOptions {
            mmap,
            keep_file_open: true,
            order: Some(self.layout.order),
            skip_threshold: 0,
            gzip_data_cache,
        };
        let file = match &self.data {
            Location::Object(url) => DataFile::Remote(RemoteObject::known(
                url.as_str(),
                &self.store,
                self.fingerprint.size,
                self.fingerprint.etag.clone(),
            )?),
            Location::Path(p) => DataFile::Path(p.clone()),
            Location::Handle { file, name } => DataFile::Handle {
                file: Arc::clone(file),
                name: name.clone(),
            },
        };
        let proxy = ArrayProxy::with_compression(file, self.compression, &self.layout, opts)?;
        Ok(Arc::new(proxy))
    }

    /// Header facts for export metadata.
    pub fn header_json(&self) -> serde_json::Value {
        let l = &self.layout;
        serde_json::json!({
            "file": self.name,
            "format": self.format.name(),
            "shape": l.shape,
            "dtype": l.dtype.numpy_str(),
            "offset": l.offset,
            "slope": l.slope.value(),
            "inter": l.inter.value(),
            "order": l.order.to_string(),
            "affine": self.affine,
            "zooms": self.zooms,
        })
    }
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
        let found = resolve_locations(locations, opts)?;
        let mut files = Vec::with_capacity(found.images.len());
        for location in found.images {
            let image = open_image(&location, opts.raw.as_deref(), &opts.store)?;
            check_kind(&location.display(), image.header.format, opts.kind)?;
            files.push(VoxelFile::from_image(location.display(), image)?);
        }
        check_same_ndim(&files)?;
        Ok(TableFiles {
            files,
            multi: found.multi,
        })
    }
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

/// The files of one table must agree on their number of axes (the scan and the schema rely on it).
pub(crate) fn check_same_ndim(files: &[VoxelFile]) -> Result<()> {
    let Some((k, ndim, first_ndim)) = first_other_ndim(files.iter().map(|f| &f.layout)) else {
        return Ok(());
    };
    let (f, first) = (&files[k], &files[0]);
    Err(VoxelError::Invalid(format!(
        "{}: has {ndim} axes (shape {:?}) but {} has {first_ndim} (shape {:?}); the files of one table must have \
         the same number of axes",
        f.name, f.layout.shape, first.name, first.layout.shape
    )))
}

/// Expand a table's locations into the images it reads (sorted within each location, duplicates dropped). A
/// single location naming one file gives a single-file table; a directory, a glob or several locations give a
/// multi-file table.
pub fn resolve_locations(locations: &[String], opts: &TableOptions) -> Result<Expanded> {
    location::expand(locations, opts.kind == FormatKind::Raw, &opts.store)
}

/// Options given as a map (e.g. DataFusion's `CreateExternalTable::options`).
pub fn options_from_map(kind: FormatKind, map: &HashMap<String, String>) -> Result<TableOptions> {
    let mut pairs: Vec<(&str, &str)> = map.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    pairs.sort_unstable();
    TableOptions::parse(kind, pairs)
}

/// The element type the table's value column would have for one file.
pub fn file_value_scalar(f: &VoxelFile, mode: ValueMode) -> Result<Scalar> {
    super::schema::value_scalar(f.layout.dtype, f.layout.slope, f.layout.inter, mode)
        .map_err(|e| e.in_file(&f.name))
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
}
