//! The wire format of voxel tables and scans sent through a Ballista cluster.
//!
//! A table travels as its registration facts (name, options, and per file the header facts read at registration),
//! a scan as the facts of the files it reads plus their selections. Both are JSON behind a magic prefix, with a
//! format version: new fields can be added with defaults, and old readers ignore fields they do not know. The
//! scheduler and the executors rebuild tables and scans from these facts without reading any file.
//!
//! Floats (scale factors, affine, zooms) are written so that they read back bit for bit (shortest round-trip
//! decimal, parsed exactly with serde_json's `float_roundtrip`; NaN and infinities as strings).

use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::dtype::Scalar;
use crate::error::{Result, VoxelError};
use crate::formats::{Compression, Format};
use crate::io::local::MmapMode;
use crate::io::remote::StoreOptions;
use crate::layout::{ArrayLayout, Float};
use crate::location::Location;
use crate::table::files::Fingerprint;
use crate::table::layout::Selection;
use crate::table::scan::ScanSpec;
use crate::table::{FormatKind, IndexSet, TableOptions, ValueMode, VoxelFile, VoxelTable};

/// Marks a table provider's bytes. Starts with `v` (0x76): as a protobuf tag that is wire type 6, which no valid
/// protobuf message (Ballista's or DataFusion's own encodings) can start with.
pub const TABLE_MAGIC: &[u8] = b"voxelscan.table:";
/// Marks a scan's bytes (see [`TABLE_MAGIC`]).
pub const SCAN_MAGIC: &[u8] = b"voxelscan.scan:";
/// The version this build writes; it reads this one and older.
pub const VERSION: u32 = 1;

/// Most axes a table can have (the coordinate columns `i` … `w`).
const MAX_AXES: usize = 7;

/// A table's registration facts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TableWire {
    pub version: u32,
    pub name: String,
    /// A multi-file table (with a `file` column).
    pub multi: bool,
    pub options: OptionsWire,
    pub files: Vec<FileWire>,
}

/// A table's options (see [`TableOptions`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OptionsWire {
    /// The `STORED AS` name (`NIFTI`, `VOXELS`, …).
    pub kind: String,
    pub mode: ValueMode,
    #[serde(default)]
    pub raw: Option<String>,
    #[serde(default)]
    pub mmap: MmapMode,
    /// Object-store settings from the table's options (`aws.*`, …). They travel with the plan: credentials are
    /// better left to each executor's environment.
    #[serde(default)]
    pub store: StoreOptions,
    /// The millimetre columns (`world`) and the `affine` option of npy/raw files (row-major 4×4).
    #[serde(default)]
    pub world: bool,
    #[serde(default)]
    pub affine: Option<Vec<Float>>,
    #[serde(default)]
    pub grid: Option<String>,
}

/// One file's header facts, as read at registration (see [`VoxelFile`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileWire {
    pub name: String,
    /// Absolute path of the data file, or its URL: every node reads it there.
    pub data_path: String,
    pub format: Format,
    /// Shape, dtype, offset, order and scale factors (bit for bit).
    pub layout: ArrayLayout,
    pub compression: Compression,
    /// Row-major 4×4.
    pub affine: Vec<Float>,
    pub zooms: Vec<Float>,
    /// The affine's space and time unit (absent from older plans: none).
    #[serde(default)]
    pub world: crate::formats::WorldMeta,
    /// The map to another image's grid (table option `grid`).
    #[serde(default)]
    pub grid: Option<crate::table::world::GridMap>,
    /// Size and modification time or ETag at registration.
    pub fingerprint: Fingerprint,
    /// The settings to reach the object (from the table's options).
    #[serde(default)]
    pub store: StoreOptions,
}

/// What one scan reads: the facts of its files and, per file, the selection (`None`: pruned).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScanWire {
    pub version: u32,
    pub table: String,
    pub mode: ValueMode,
    pub scalar: Scalar,
    #[serde(default)]
    pub mmap: MmapMode,
    pub files: Vec<FileWire>,
    /// Per file, per axis: the selected index ranges `[start, end)`.
    pub selections: Vec<Option<Vec<Vec<[u64; 2]>>>>,
    /// The filter on the value columns evaluated in the scan, as DataFusion's `PhysicalExprNode` protobuf.
    #[serde(default)]
    pub value_filter: Option<Vec<u8>>,
}

fn invalid(what: impl fmt::Display) -> VoxelError {
    VoxelError::Invalid(what.to_string())
}

impl FileWire {
    /// The facts of a table file. A file read through an open handle (a proxy registered without a path) has no
    /// path another node could open: an error.
    pub fn from_file(table: &str, f: &VoxelFile) -> Result<FileWire> {
        let data_path = match &f.data {
            Location::Handle { .. } => {
                return Err(invalid(format!(
                    "table {table}: {} is read through an open file handle (a proxy registered without a path); \
                     such a table cannot run on a cluster: register the file by its path",
                    f.name
                )));
            }
            Location::Object(url) => url.as_str().to_string(),
            // Relative paths are resolved here, on the registering node: the others have other working
            // directories.
            Location::Path(p) => {
                let abs = std::path::absolute(p).map_err(|e| VoxelError::io(p, e))?;
                abs.to_str()
                    .ok_or_else(|| {
                        invalid(format!(
                            "table {table}: {}: a path that is not UTF-8 cannot be sent to a cluster",
                            abs.display()
                        ))
                    })?
                    .to_string()
            }
        };
        Ok(FileWire {
            name: f.name.clone(),
            data_path,
            format: f.format,
            layout: f.layout.clone(),
            compression: f.compression,
            affine: f.affine.iter().flatten().map(|&v| Float(v)).collect(),
            zooms: f.zooms.iter().map(|&v| Float(v)).collect(),
            world: f.world,
            grid: f.grid,
            fingerprint: f.fingerprint.clone(),
            store: f.store.clone(),
        })
    }

    /// The table file again (opened by path or URL when read). The facts are checked as far as the scan relies
    /// on them.
    pub fn into_file(self) -> Result<VoxelFile> {
        let bad = |what: &str| invalid(format!("{}: {what}", self.name));
        if self.layout.ndim() > MAX_AXES {
            return Err(bad("more than 7 axes"));
        }
        if self.layout.checked_end().is_none() {
            return Err(bad("array size overflows 64 bits"));
        }
        let affine = affine_from_wire(&self.affine).map_err(bad)?;
        let data = match Location::parse(&self.data_path)? {
            Location::Handle { .. } => return Err(bad("an open handle cannot be sent")),
            other => other,
        };
        Ok(VoxelFile {
            data,
            format: self.format,
            layout: self.layout,
            compression: self.compression,
            affine,
            zooms: self.zooms.iter().map(|v| v.0).collect(),
            world: self.world,
            grid: self.grid,
            fingerprint: self.fingerprint,
            proxy: None,
            store: self.store,
            name: self.name,
        })
    }
}

/// A row-major 4×4 affine from its 16 cells.
fn affine_from_wire(cells: &[Float]) -> std::result::Result<crate::formats::Affine, &'static str> {
    let cells: &[Float; 16] = cells
        .try_into()
        .map_err(|_| "affine must have 16 entries")?;
    let mut affine = [[0.0; 4]; 4];
    for (k, v) in cells.iter().enumerate() {
        affine[k / 4][k % 4] = v.0;
    }
    Ok(affine)
}

impl TableWire {
    pub fn from_table(table: &VoxelTable) -> Result<TableWire> {
        let opts = table.options();
        let files = table
            .files()
            .iter()
            .map(|f| FileWire::from_file(table.name(), f))
            .collect::<Result<Vec<_>>>()?;
        Ok(TableWire {
            version: VERSION,
            name: table.name().to_string(),
            multi: table.is_multi_file(),
            options: OptionsWire {
                kind: opts.kind.name().to_string(),
                mode: opts.mode,
                raw: opts.raw.clone(),
                mmap: opts.mmap,
                store: opts.store.clone(),
                world: opts.world.unwrap_or(false),
                affine: opts
                    .affine
                    .map(|a| a.iter().flatten().map(|&v| Float(v)).collect()),
                grid: opts.grid.clone(),
            },
            files,
        })
    }

    /// The table again; no file is read.
    pub fn into_table(self) -> Result<VoxelTable> {
        check_version(self.version, "table")?;
        let name = self.name;
        let in_table = |e: VoxelError| invalid(format!("table {name}: {e}"));
        let kind = FormatKind::parse(&self.options.kind).ok_or_else(|| {
            in_table(invalid(format!(
                "unknown table kind '{}'",
                self.options.kind
            )))
        })?;
        let mut opts = TableOptions::new(kind);
        opts.mode = self.options.mode;
        opts.raw = self.options.raw;
        opts.mmap = self.options.mmap;
        opts.store = self.options.store;
        opts.world = Some(self.options.world);
        opts.grid = self.options.grid;
        opts.affine = match self.options.affine {
            Some(cells) => {
                Some(affine_from_wire(&cells).map_err(|e| invalid(format!("table options: {e}")))?)
            }
            None => None,
        };
        let files = self
            .files
            .into_iter()
            .map(FileWire::into_file)
            .collect::<Result<Vec<_>>>()
            .map_err(in_table)?;
        crate::table::files::check_same_ndim(&files).map_err(in_table)?;
        VoxelTable::from_files(&name, files, self.multi, opts)
    }

    pub fn encode(&self, buf: &mut Vec<u8>) -> Result<()> {
        buf.extend_from_slice(TABLE_MAGIC);
        serde_json::to_writer(buf, self).map_err(|e| invalid(format!("encoding table: {e}")))
    }

    /// `None` when `bytes` are not a table of ours (no magic prefix).
    pub fn decode(bytes: &[u8]) -> Option<Result<TableWire>> {
        let json = bytes.strip_prefix(TABLE_MAGIC)?;
        Some(
            serde_json::from_slice(json)
                .map_err(|e| invalid(format!("decoding a voxel table: {e}"))),
        )
    }
}

fn check_version(version: u32, what: &str) -> Result<()> {
    if version > VERSION {
        return Err(invalid(format!(
            "this {what} was encoded by a newer voxelscan (format {version}; this one reads up to {VERSION}): \
             run the same voxelscan version on the client, the scheduler and the executors"
        )));
    }
    Ok(())
}

fn selection_to_wire(sel: &Selection) -> Vec<Vec<[u64; 2]>> {
    sel.axes
        .iter()
        .map(|s| s.ranges().iter().map(|r| [r.start, r.end]).collect())
        .collect()
}

fn selection_from_wire(f: &VoxelFile, axes: Vec<Vec<[u64; 2]>>) -> Result<Selection> {
    if axes.len() != f.ndim() {
        return Err(invalid(format!(
            "{}: a selection of {} axes for an array of {}",
            f.name,
            axes.len(),
            f.ndim()
        )));
    }
    let mut out = Vec::with_capacity(axes.len());
    for (a, ranges) in axes.into_iter().enumerate() {
        let n = f.layout.shape[a] as u64;
        if let Some([s, e]) = ranges.iter().find(|[s, e]| s > e || *e > n) {
            return Err(invalid(format!(
                "{}: selected range {s}..{e} is outside axis {a} of length {n}",
                f.name
            )));
        }
        let ranges: Vec<Range<u64>> = ranges.into_iter().map(|[s, e]| s..e).collect();
        out.push(IndexSet::from_ranges(ranges));
    }
    Ok(Selection { axes: out })
}

impl ScanWire {
    /// The facts of a scan, keeping only the files `keep` accepts (those a task's partitions read).
    pub fn from_spec(spec: &ScanSpec, keep: impl Fn(&VoxelFile) -> bool) -> Result<ScanWire> {
        let mut files = Vec::new();
        let mut selections = Vec::new();
        for (f, sel) in spec.files.iter().zip(&spec.selections) {
            if keep(f) {
                files.push(FileWire::from_file(&spec.table, f)?);
                selections.push(sel.as_ref().map(selection_to_wire));
            }
        }
        Ok(ScanWire {
            version: VERSION,
            table: spec.table.clone(),
            mode: spec.mode,
            scalar: spec.scalar,
            mmap: spec.mmap,
            files,
            selections,
            value_filter: None,
        })
    }

    /// The scan's description again; no file is read.
    pub fn into_spec(self) -> Result<ScanSpec> {
        check_version(self.version, "scan")?;
        let table = self.table;
        let in_table = |e: VoxelError| invalid(format!("table {table}: {e}"));
        if self.files.len() != self.selections.len() {
            return Err(in_table(invalid(format!(
                "{} files but {} selections",
                self.files.len(),
                self.selections.len()
            ))));
        }
        let mut files = Vec::with_capacity(self.files.len());
        let mut selections = Vec::with_capacity(self.files.len());
        for (fw, sel) in self.files.into_iter().zip(self.selections) {
            let f = fw.into_file().map_err(in_table)?;
            let sel = sel
                .map(|axes| selection_from_wire(&f, axes))
                .transpose()
                .map_err(in_table)?;
            files.push(Arc::new(f));
            selections.push(sel);
        }
        Ok(ScanSpec::new(
            table,
            files,
            selections,
            self.mode,
            self.scalar,
            self.mmap,
        ))
    }

    /// `MAGIC`, the JSON's length (u32, little-endian), the JSON, then `rest` (the scan's `FileScanExecConf`).
    pub fn encode(&self, rest: &[u8], buf: &mut Vec<u8>) -> Result<()> {
        let json = serde_json::to_vec(self).map_err(|e| invalid(format!("encoding scan: {e}")))?;
        let len = u32::try_from(json.len())
            .map_err(|_| invalid("a scan description over 4 GiB cannot be sent"))?;
        buf.extend_from_slice(SCAN_MAGIC);
        buf.extend_from_slice(&len.to_le_bytes());
        buf.extend_from_slice(&json);
        buf.extend_from_slice(rest);
        Ok(())
    }

    /// `None` when `bytes` are not a scan of ours; otherwise the description and the bytes after it.
    pub fn decode(bytes: &[u8]) -> Option<Result<(ScanWire, &[u8])>> {
        let body = bytes.strip_prefix(SCAN_MAGIC)?;
        let truncated = || invalid("decoding a voxel scan: truncated bytes");
        let split = || -> Result<(ScanWire, &[u8])> {
            let (len, rest) = body.split_first_chunk::<4>().ok_or_else(truncated)?;
            let len = u32::from_le_bytes(*len) as usize;
            let json = rest.get(..len).ok_or_else(truncated)?;
            let tail = rest.get(len..).ok_or_else(truncated)?;
            let wire = serde_json::from_slice(json)
                .map_err(|e| invalid(format!("decoding a voxel scan: {e}")))?;
            Ok((wire, tail))
        };
        Some(split())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dtype::ByteOrder;
    use crate::dtype::DType;
    use crate::layout::Factor;
    use std::path::PathBuf;
    use std::time::SystemTime;

    fn file(name: &str, shape: Vec<usize>) -> VoxelFile {
        let mut affine = crate::formats::affine::IDENTITY;
        affine[0][0] = 0.1 + 0.2;
        affine[1][3] = f64::NAN;
        affine[2][3] = -0.0;
        affine[0][3] = f64::NEG_INFINITY;
        VoxelFile {
            name: name.to_string(),
            data: Location::Path(PathBuf::from(format!("/data/{name}"))),
            format: Format::Nifti1Image,
            zooms: vec![1e-300, 2.5, f64::MIN_POSITIVE / 2.0][..shape.len().min(3)].to_vec(),
            layout: ArrayLayout::new(shape, DType::new(Scalar::I16, ByteOrder::Big))
                .with_offset(352)
                .with_scaling(Factor::F32(0.1), Factor::F16(-1.5)),
            compression: Compression::None,
            affine,
            world: crate::formats::WorldMeta::nifti(4, 1, 2 | 16),
            grid: None,
            fingerprint: Fingerprint {
                size: 1000,
                modified: Some(
                    SystemTime::UNIX_EPOCH + std::time::Duration::new(1_700_000_000, 123),
                ),
                etag: None,
            },
            proxy: None,
            store: StoreOptions::default(),
        }
    }

    #[test]
    fn file_facts_round_trip_bit_for_bit() {
        let f = file("a.nii", vec![4, 5, 6]);
        let wire = FileWire::from_file("t", &f).unwrap();
        let json = serde_json::to_string(&wire).unwrap();
        let back: FileWire = serde_json::from_str(&json).unwrap();
        assert_eq!(back, wire);
        let g = back.into_file().unwrap();
        assert_eq!(g.layout.slope, Factor::F32(0.1));
        assert_eq!(g.layout.inter, Factor::F16(-1.5));
        assert_eq!((g.affine[0][0]).to_bits(), (0.1f64 + 0.2).to_bits());
        assert!(g.affine[1][3].is_nan());
        assert_eq!(g.affine[2][3].to_bits(), (-0.0f64).to_bits());
        assert_eq!(g.affine[0][3], f64::NEG_INFINITY);
        assert_eq!(g.zooms, f.zooms);
        assert_eq!(
            (
                g.layout.shape,
                g.layout.dtype,
                g.layout.offset,
                g.fingerprint.modified
            ),
            (
                f.layout.shape,
                f.layout.dtype,
                f.layout.offset,
                f.fingerprint.modified
            )
        );
    }

    #[test]
    fn remote_files_keep_their_url_etag_and_store_options() {
        let mut f = file("a.nii", vec![2, 3]);
        f.data = Location::parse("s3://bucket/sub/a.nii").unwrap();
        f.fingerprint.modified = None;
        f.fingerprint.etag = Some("\"abc\"".into());
        f.store
            .insert("aws.endpoint", "http://127.0.0.1:9000")
            .unwrap();
        let w = FileWire::from_file("t", &f).unwrap();
        assert_eq!(w.data_path, "s3://bucket/sub/a.nii");
        let json = serde_json::to_string(&w).unwrap();
        let g = serde_json::from_str::<FileWire>(&json)
            .unwrap()
            .into_file()
            .unwrap();
        assert!(g.is_remote());
        assert_eq!((g.fingerprint.etag, g.store), (f.fingerprint.etag, f.store));
    }

    #[test]
    fn bad_facts_are_errors() {
        let mut w = FileWire::from_file("t", &file("a.nii", vec![4, 5])).unwrap();
        w.affine.pop();
        assert!(
            w.clone()
                .into_file()
                .unwrap_err()
                .to_string()
                .contains("16 entries")
        );
        w.affine.push(Float(1.0));
        w.layout.shape = vec![usize::MAX, 4];
        assert!(w.into_file().unwrap_err().to_string().contains("overflows"));
        let f = file("a.nii", vec![4, 5]);
        let e = selection_from_wire(&f, vec![vec![[0, 4]], vec![[2, 6]]]).unwrap_err();
        assert!(e.to_string().contains("outside axis 1"), "{e}");
        assert!(selection_from_wire(&f, vec![vec![[0, 4]]]).is_err());
        assert!(TableWire::decode(b"not ours").is_none());
        let e = TableWire::decode(b"voxelscan.table:{")
            .unwrap()
            .unwrap_err();
        assert!(e.to_string().contains("decoding a voxel table"), "{e}");
        let e = ScanWire::decode(b"voxelscan.scan:\x09\0\0\0{}")
            .unwrap()
            .unwrap_err();
        assert!(e.to_string().contains("truncated"), "{e}");
    }

    #[test]
    fn newer_versions_are_refused() {
        let t = VoxelTable::from_files(
            "t",
            vec![file("a.nii", vec![2, 3])],
            false,
            TableOptions::new(FormatKind::Nifti),
        )
        .unwrap();
        let mut w = TableWire::from_table(&t).unwrap();
        w.version = VERSION + 1;
        let e = w.into_table().unwrap_err();
        assert!(e.to_string().contains("newer voxelscan"), "{e}");
    }

    #[test]
    fn mixed_axis_counts_are_refused() {
        let t = VoxelTable::from_files(
            "t",
            vec![file("a.nii", vec![2, 3]), file("b.nii", vec![2, 3])],
            true,
            TableOptions::new(FormatKind::Nifti),
        )
        .unwrap();
        let mut w = TableWire::from_table(&t).unwrap();
        w.files[1].layout.shape.push(4);
        let e = w.into_table().unwrap_err();
        assert!(e.to_string().contains("b.nii: has 3 axes"), "{e}");
    }
}
