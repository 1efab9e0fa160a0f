//! Query results back to images: `COPY (query) TO 'out.nii' | 'out.nii.gz' STORED AS NIFTI [OPTIONS (…)]`.
//!
//! ```text
//! COPY … STORED AS NIFTI ─► NiftiFormatFactory (file format "nifti", also "nii") ─► NiftiFormat
//!   create_writer_physical_plan: columns, value type, dtype, grid (`like`, or the one voxel table read) ─► SinkSpec
//!   ─► DataSinkExec(NiftiSink) ─► write_all: rows ─► Volumes (spilled runs) ─► Encoder ─► TempOutput ─► rename/upload
//! ```
//!
//! Input: coordinate columns `i, j, k` (as many as the grid's spatial axes) and optionally `t`, plus one value
//! column (`'value' 'name'`; by default the only other column, or the one called `value`). Rows may come in any
//! order; voxels without a row (or with a NULL value) get `'fill'` (default 0). Options: `like` (template image),
//! `value`, `fill`, `dtype` (numpy name), `scale` (`auto` | `none`), and object-store options (`aws.…`) for the
//! template. Everything is checked when the plan is made, except what only the rows can tell (a voxel outside the
//! grid, a duplicate, a value that does not fit the dtype), which fails the write and leaves nothing behind.

pub mod encode;
mod format;
pub mod grid;
pub mod lineage;
pub mod output;
pub mod volume;

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Float64Type, Int64Type, Schema, UInt64Type};
use datafusion::common::DataFusionError;
use datafusion::datasource::listing::ListingTableUrl;
use datafusion::physical_plan::ExecutionPlan;
use serde::{Deserialize, Serialize};

use crate::dtype::{DType, Scalar};
use crate::error::{Result, VoxelError};
use crate::io::remote::StoreOptions;

use encode::{Encoder, OUTPUT_SCALARS, auto_scaling};
use grid::Grid;
use output::{TempOutput, is_gzip_name};
use volume::{Kind, Volumes};

pub use format::{NiftiCopyOptions, NiftiFormat, NiftiFormatFactory, NiftiSink, format_factories};

/// The file format's name: `STORED AS NIFTI` (DataFusion looks formats up by lowercase name).
pub const FORMAT_NAME: &str = "nifti";
/// Also registered under the extension, so `COPY … TO 'x.nii'` without `STORED AS` works.
pub const EXTENSION_NAME: &str = "nii";
/// Coordinate column names, in axis order (outputs have at most 4 axes: other columns are values).
const COORDS: [&str; 4] = ["i", "j", "k", "t"];
/// NIfTI-1 dims are int16.
const MAX_DIM: i64 = i16::MAX as i64;

fn plan_err(e: impl fmt::Display) -> DataFusionError {
    DataFusionError::Plan(format!("COPY … STORED AS NIFTI: {e}"))
}

fn exec_err(target: &str, e: impl fmt::Display) -> DataFusionError {
    DataFusionError::Execution(format!("COPY … TO '{target}' STORED AS NIFTI: {e}"))
}

/// The options of one NIfTI write, as given (`OPTIONS (…)` keys without their `format.` prefix).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NiftiWriteOptions {
    pub like: Option<String>,
    pub value: Option<String>,
    pub fill: Option<String>,
    pub dtype: Option<String>,
    pub scale_auto: bool,
    pub store: StoreOptions,
}

impl NiftiWriteOptions {
    /// Parse `OPTIONS (…)` (keys as DataFusion hands them over: lowercased, `format.` before keys without a dot).
    pub fn parse(map: &HashMap<String, String>) -> Result<NiftiWriteOptions> {
        let mut o = NiftiWriteOptions::default();
        let mut keys: Vec<_> = map.iter().collect();
        keys.sort();
        for (key, value) in keys {
            let k = key
                .strip_prefix("format.")
                .unwrap_or(key)
                .to_ascii_lowercase();
            match k.as_str() {
                "like" => o.like = Some(value.clone()),
                "value" => o.value = Some(value.clone()),
                "fill" => o.fill = Some(value.clone()),
                "dtype" => o.dtype = Some(value.clone()),
                "scale" => {
                    o.scale_auto = match value.to_ascii_lowercase().as_str() {
                        "auto" => true,
                        "none" | "false" | "off" => false,
                        other => {
                            return Err(VoxelError::Invalid(format!(
                                "option 'scale' is 'auto' or 'none', not '{other}'"
                            )));
                        }
                    }
                }
                _ if StoreOptions::is_store_key(&k) => o.store.insert(&k, value)?,
                _ => {
                    return Err(VoxelError::Invalid(format!(
                        "unknown option '{key}' (NIFTI output takes like, value, fill, dtype, scale and object-store options)"
                    )));
                }
            }
        }
        Ok(o)
    }

    fn fill_value(&self) -> Result<f64> {
        match &self.fill {
            None => Ok(0.0),
            Some(text) => text.trim().parse::<f64>().map_err(|_| {
                VoxelError::Invalid(format!("option 'fill' is not a number: '{text}'"))
            }),
        }
    }
}

/// An f64 (de)serialized as its IEEE bits.
mod f64_bits {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(v.to_bits())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        u64::deserialize(d).map(f64::from_bits)
    }
}

/// Everything the sink needs, resolved when the plan was made (and sent to executors as it is).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SinkSpec {
    /// The target as given (for messages) and as resolved: a local path or an object-store URL.
    pub target: String,
    pub local: Option<PathBuf>,
    pub grid: Grid,
    /// Coordinate columns of the spatial axes, then `t` when present.
    pub coords: Vec<String>,
    pub has_t: bool,
    pub value: String,
    pub kind: Kind,
    pub scalar: Scalar,
    /// Sent as its bits: JSON has no NaN.
    #[serde(with = "f64_bits")]
    pub fill: f64,
    pub scale_auto: bool,
}

impl SinkSpec {
    /// Resolve a write of rows of `schema` to `target` with `options`; `input` is the plan that makes the rows
    /// (consulted for the grid when `like` is not given).
    pub fn resolve(
        target: &ListingTableUrl,
        original: &str,
        schema: &Schema,
        options: &NiftiWriteOptions,
        input: Option<&Arc<dyn ExecutionPlan>>,
    ) -> Result<SinkSpec> {
        let name = target.as_str();
        let lower = name.to_ascii_lowercase();
        if !(lower.ends_with(".nii") || lower.ends_with(".nii.gz")) {
            return Err(VoxelError::Invalid(format!(
                "the target '{original}' must be one file named *.nii or *.nii.gz"
            )));
        }
        let local =
            if target.scheme() == "file" {
                let url = url::Url::parse(name).map_err(|e| VoxelError::Invalid(e.to_string()))?;
                Some(url.to_file_path().map_err(|()| {
                    VoxelError::Invalid(format!("'{original}' is not a local path"))
                })?)
            } else {
                None
            };
        let coords_present: Vec<&str> = COORDS
            .iter()
            .copied()
            .filter(|c| schema.field_with_name(c).is_ok())
            .collect();
        for c in &coords_present {
            let dt = schema.field_with_name(c).map(|f| f.data_type().clone());
            if !dt.as_ref().is_ok_and(DataType::is_integer) {
                return Err(VoxelError::Invalid(format!(
                    "coordinate column {c} must be an integer column, not {}",
                    dt.map_or_else(|_| "missing".into(), |d| d.to_string())
                )));
            }
        }
        let value = value_column(schema, options)?;
        let value_type = schema
            .field_with_name(&value)
            .map(|f| f.data_type().clone())
            .map_err(|e| VoxelError::Invalid(e.to_string()))?;
        let (kind, default_scalar) = value_kind(&value, &value_type)?;
        let scalar = match &options.dtype {
            None => default_scalar,
            Some(text) => output_scalar(text)?,
        };
        let fill = options.fill_value()?;
        if options.scale_auto && encode::int_range(scalar).is_none() {
            return Err(VoxelError::Invalid(
                "'scale' 'auto' chooses a slope and intercept for an integer dtype; a float dtype is written exactly \
                 (leave 'scale' out, or give an integer 'dtype')"
                    .into(),
            ));
        }
        if options.scale_auto && encode::int_range(scalar).is_some() && kind != Kind::Float {
            return Err(VoxelError::Invalid(
                "'scale' 'auto' applies to float values written as an integer dtype; these values are integers (written exactly)".into(),
            ));
        }
        if !options.scale_auto {
            Encoder::new(scalar, kind, fill, None)?;
        }
        let grid = grid_for(options, input, &coords_present)?;
        let spatial = grid.spatial().len();
        let has_t = coords_present.contains(&"t");
        let needed = &COORDS[..spatial];
        if let Some(missing) = needed.iter().find(|c| !coords_present.contains(*c)) {
            return Err(VoxelError::Invalid(format!(
                "missing coordinate column {missing} (the grid of {} has {spatial} spatial axes: needs {})",
                grid.source,
                needed.join(", ")
            )));
        }
        if let Some(extra) = coords_present
            .iter()
            .find(|c| !needed.contains(*c) && **c != "t")
        {
            return Err(VoxelError::Invalid(format!(
                "column {extra} is not an axis of the grid of {} ({} spatial axes)",
                grid.source, spatial
            )));
        }
        let mut coords: Vec<String> = needed.iter().map(|c| c.to_string()).collect();
        if has_t {
            coords.push("t".into());
        }
        Ok(SinkSpec {
            target: original.to_string(),
            local,
            grid,
            coords,
            has_t,
            value,
            kind,
            scalar,
            fill,
            scale_auto: options.scale_auto,
        })
    }

    /// Add a batch's rows to `vols`.
    fn ingest(&self, vols: &mut Volumes, batch: &RecordBatch) -> Result<()> {
        let column = |name: &str| {
            batch
                .column_by_name(name)
                .cloned()
                .ok_or_else(|| VoxelError::Invalid(format!("the rows have no column {name}")))
        };
        let arrow = |e: datafusion::arrow::error::ArrowError| VoxelError::Invalid(e.to_string());
        let coords = self
            .coords
            .iter()
            .map(|c| cast(&column(c)?, &DataType::Int64).map_err(arrow))
            .collect::<Result<Vec<_>>>()?;
        let coords: Vec<_> = coords
            .iter()
            .map(|c| c.as_primitive::<Int64Type>())
            .collect();
        let raw = column(&self.value)?;
        let target_type = match self.kind {
            Kind::Float => DataType::Float64,
            Kind::Signed => DataType::Int64,
            Kind::Unsigned => DataType::UInt64,
        };
        let values = cast(&raw, &target_type).map_err(arrow)?;
        let bits: Box<dyn Fn(usize) -> u64 + '_> = match self.kind {
            Kind::Float => {
                let a = values.as_primitive::<Float64Type>();
                Box::new(move |r| a.value(r).to_bits())
            }
            Kind::Signed => {
                let a = values.as_primitive::<Int64Type>();
                Box::new(move |r| a.value(r) as u64)
            }
            Kind::Unsigned => {
                let a = values.as_primitive::<UInt64Type>();
                Box::new(move |r| a.value(r))
            }
        };
        let spatial = self.grid.spatial();
        let mut at = vec![0i64; self.coords.len()];
        for row in 0..batch.num_rows() {
            for (n, c) in coords.iter().enumerate() {
                if c.is_null(row) {
                    return Err(VoxelError::Invalid(format!(
                        "a row has a NULL {} coordinate",
                        self.coords[n]
                    )));
                }
                at[n] = c.value(row);
            }
            let mut idx: u64 = 0;
            let mut stride: u64 = 1;
            for (n, &d) in spatial.iter().enumerate() {
                if !(0..d as i64).contains(&at[n]) {
                    return Err(self.outside(&at));
                }
                idx += at[n] as u64 * stride;
                stride *= d as u64;
            }
            let t = if self.has_t {
                let t = at[spatial.len()];
                if !(0..MAX_DIM).contains(&t) {
                    return Err(VoxelError::Invalid(format!(
                        "{}: t must be in 0..{MAX_DIM} (NIfTI-1 dims are int16)",
                        self.show_row(&at)
                    )));
                }
                t as u32
            } else {
                0
            };
            // A NULL value is a missing voxel (it gets the fill), but its coordinates were checked like any row's.
            if values.is_null(row) {
                continue;
            }
            vols.push(t, idx, bits(row))?;
        }
        Ok(())
    }

    fn show_row(&self, at: &[i64]) -> String {
        let vals: Vec<String> = at.iter().map(i64::to_string).collect();
        format!("voxel ({}) = ({})", self.coords.join(", "), vals.join(", "))
    }

    fn outside(&self, at: &[i64]) -> VoxelError {
        let dims: Vec<String> = self.grid.spatial().iter().map(usize::to_string).collect();
        VoxelError::Invalid(format!(
            "{} is outside the grid {} of {}",
            self.show_row(at),
            dims.join("×"),
            self.grid.source
        ))
    }

    /// Assemble, encode and write the image to a temporary file in `dir`; returns the finished file.
    fn write_file(&self, vols: Volumes, dir: &Path) -> Result<TempOutput> {
        let count = vols.volume_count();
        if count == 0 {
            return Err(VoxelError::Invalid(
                "no rows: the number of volumes (t) is unknown".into(),
            ));
        }
        let scaling = if self.scale_auto {
            let mut range = vols.range();
            if vols.has_missing() && self.fill.is_finite() {
                range.finite = Some(match range.finite {
                    None => (self.fill, self.fill),
                    Some((lo, hi)) => (lo.min(self.fill), hi.max(self.fill)),
                });
            } else if vols.has_missing() && self.fill.is_nan() {
                range.has_nan = true;
            }
            auto_scaling(self.kind, self.scalar, range)?
        } else {
            None
        };
        let encoder = Encoder::new(self.scalar, self.kind, self.fill, scaling)?;
        let mut shape = self.grid.spatial().to_vec();
        if self.has_t {
            shape.push(count as usize);
        }
        let (slope, inter) = encoder.header_scaling();
        let header = self.grid.header(&shape, self.scalar, slope, inter)?;
        let mut out = TempOutput::create(dir, &self.target, is_gzip_name(&self.target))?;
        out.write(&header)?;
        let spatial = self.grid.spatial().to_vec();
        let has_t = self.has_t;
        let mut bytes = Vec::new();
        vols.finish(|vol| {
            bytes.clear();
            encoder.encode_volume(vol, &mut bytes, |idx| {
                volume::voxel_name(&spatial, idx, has_t.then_some(vol.t))
            })?;
            out.write(&bytes)
        })?;
        Ok(out)
    }
}

/// The value column: the option, else the only non-coordinate column, else the column called `value`.
fn value_column(schema: &Schema, options: &NiftiWriteOptions) -> Result<String> {
    let names: Vec<&String> = schema.fields().iter().map(|f| f.name()).collect();
    if let Some(v) = &options.value {
        return match names.iter().find(|n| n.as_str() == v.as_str()) {
            Some(n) => Ok(n.to_string()),
            None => Err(VoxelError::Invalid(format!(
                "option 'value' names column {v}, which the query does not have (it has {})",
                join(&names)
            ))),
        };
    }
    // The millimetre and grid columns a voxel table carries are coordinates too, never the value.
    let others: Vec<&&String> = names
        .iter()
        .filter(|n| !COORDS.contains(&n.as_str()) && !crate::table::world::is_world_column(n))
        .collect();
    match others.as_slice() {
        [one] => Ok(one.to_string()),
        [] => Err(VoxelError::Invalid(format!(
            "no value column: the query has only coordinate columns ({})",
            join(&names)
        ))),
        _ if names.iter().any(|n| n.as_str() == "value") => Ok("value".into()),
        more => Err(VoxelError::Invalid(format!(
            "several value columns ({}): name one with OPTIONS ('value' 'column')",
            more.iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

fn join(names: &[&String]) -> String {
    names
        .iter()
        .map(|s| s.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// How the value column's values are held, and the output dtype it gives by default.
fn value_kind(name: &str, dt: &DataType) -> Result<(Kind, Scalar)> {
    Ok(match dt {
        DataType::Float16 | DataType::Float32 => (Kind::Float, Scalar::F32),
        DataType::Float64 | DataType::Decimal128(..) | DataType::Decimal256(..) => {
            (Kind::Float, Scalar::F64)
        }
        DataType::Int8 => (Kind::Signed, Scalar::I8),
        DataType::Int16 => (Kind::Signed, Scalar::I16),
        DataType::Int32 => (Kind::Signed, Scalar::I32),
        DataType::Int64 => (Kind::Signed, Scalar::I64),
        DataType::UInt8 | DataType::Boolean => (Kind::Unsigned, Scalar::U8),
        DataType::UInt16 => (Kind::Unsigned, Scalar::U16),
        DataType::UInt32 => (Kind::Unsigned, Scalar::U32),
        DataType::UInt64 => (Kind::Unsigned, Scalar::U64),
        other => {
            return Err(VoxelError::Invalid(format!(
                "value column {name} has type {other}: not numeric"
            )));
        }
    })
}

/// The `dtype` option: a numpy name of a NIfTI-1 storage type.
fn output_scalar(text: &str) -> Result<Scalar> {
    let dtype = DType::parse(text)?;
    if text.trim().starts_with('>') {
        return Err(VoxelError::DType(format!(
            "'{text}': output is written little-endian; give the dtype without '>'"
        )));
    }
    if !OUTPUT_SCALARS.contains(&dtype.scalar) {
        return Err(VoxelError::DType(format!(
            "'{text}' cannot be written (NIfTI output dtypes: uint8, int8, uint16, int16, uint32, int32, uint64, int64, float32, float64)"
        )));
    }
    Ok(dtype.scalar)
}

/// The grid: from `like`, else from the one voxel table the input reads with its coordinates unchanged.
fn grid_for(
    options: &NiftiWriteOptions,
    input: Option<&Arc<dyn ExecutionPlan>>,
    coords: &[&str],
) -> Result<Grid> {
    if let Some(like) = &options.like {
        return Grid::from_location(like, &options.store)
            .map_err(|e| VoxelError::Invalid(format!("option 'like': {e}")));
    }
    let Some(input) = input else {
        return Err(VoxelError::Invalid(
            "no grid: give OPTIONS ('like' 'image.nii')".into(),
        ));
    };
    let names: Vec<String> = coords
        .iter()
        .filter(|c| **c != "t")
        .map(|c| c.to_string())
        .collect();
    let (location, store) = lineage::grid_source(input, &names).map_err(|why| {
        VoxelError::Invalid(format!(
            "cannot take the grid from the query ({why}): give OPTIONS ('like' 'image.nii')"
        ))
    })?;
    Grid::from_location(&location, &store)
}

#[cfg(test)]
mod tests {
    use datafusion::common::Result as DfResult;
    use datafusion::prelude::SessionConfig;

    use super::*;
    use crate::dtype::{ByteOrder, DType};
    use crate::io::ByteSource;
    use crate::io::gzip::GzipSource;
    use crate::plan::Segment;
    use crate::proxy::{ArrayProxy, ProxyOptions};
    use crate::slicer::SliceSpec;
    use crate::table::session_context;

    /// A random int16 image (no scaling); returns its data bytes.
    fn image(path: &Path, shape: &[usize], seed: u64) -> Vec<u8> {
        let n = shape.iter().product();
        let data = crate::synth::random_i16_le(n, seed, -500, 4000);
        let dtype = DType::new(Scalar::I16, ByteOrder::Little);
        crate::synth::write_nifti1(path, shape, dtype, 1.0, 0.0, &data, false).unwrap();
        data
    }

    async fn run(sql: &str, dir: &Path) -> DfResult<u64> {
        let ctx = session_context(
            SessionConfig::new()
                .with_target_partitions(3)
                .with_batch_size(1000),
        );
        let src = dir.join("src.nii");
        ctx.sql(&format!(
            "CREATE EXTERNAL TABLE t STORED AS NIFTI LOCATION '{}'",
            src.display()
        ))
        .await?
        .collect()
        .await?;
        let batches = ctx.sql(sql).await?.collect().await?;
        Ok(batches[0].column(0).as_primitive::<UInt64Type>().value(0))
    }

    fn values(path: &Path) -> Vec<f64> {
        let proxy = ArrayProxy::open(path, ProxyOptions::default()).unwrap();
        let arr = proxy.slice(&SliceSpec::parse("").unwrap()).unwrap();
        // F order: the C-order array's transpose, walked logically.
        arr.to_f64_c_order().unwrap().t().iter().copied().collect()
    }

    #[tokio::test]
    async fn a_4d_copy_round_trips_and_its_gzip_index_is_used_at_once() {
        let dir = tempfile::tempdir().unwrap();
        // 2.6 MB of data: two seek points at the default 1 MiB span; rows in value order: 10 spilled runs.
        let shape = [64, 64, 32, 10];
        let data = image(&dir.path().join("src.nii"), &shape, 3);
        let out = dir.path().join("x.nii.gz");
        let sql = format!(
            "COPY (SELECT * FROM t ORDER BY value) TO '{}' STORED AS NIFTI",
            out.display()
        );
        assert_eq!(run(&sql, dir.path()).await.unwrap(), 1_310_720);
        let proxy = ArrayProxy::open(&out, ProxyOptions::default()).unwrap();
        assert_eq!(proxy.shape(), &shape);
        assert_eq!(proxy.dtype().numpy_str(), "<i2");
        // The index was written with the file: complete before any read, and a read deep in the file starts
        // from a seek point (compressed bytes read ≪ the file).
        let gz = GzipSource::open(&out).unwrap();
        assert!(gz.index().is_complete());
        assert!(!gz.index().points().is_empty());
        let deep = 352 + 2 * 1_200_000;
        let mut got = vec![0u8; 2000];
        let stats = gz
            .read_segments(
                &[Segment {
                    offset: deep,
                    len: 2000,
                }],
                &mut got,
            )
            .unwrap();
        assert_eq!(
            &got[..],
            &data[deep as usize - 352..deep as usize - 352 + 2000]
        );
        let size = std::fs::metadata(&out).unwrap().len();
        assert!(
            stats.bytes_read < size / 2,
            "read {} of {size} compressed bytes",
            stats.bytes_read
        );
    }

    #[tokio::test]
    async fn sparse_maps_get_the_fill_and_the_grid_of_the_table() {
        let dir = tempfile::tempdir().unwrap();
        let data = image(&dir.path().join("src.nii"), &[4, 3, 2, 5], 9);
        let out = dir.path().join("m.nii");
        let sql = format!(
            "COPY (SELECT i, j, k, max(value) AS m FROM t WHERE i < 2 GROUP BY i, j, k) TO '{}' STORED AS NIFTI OPTIONS ('fill' '-7', 'dtype' 'float32')",
            out.display()
        );
        assert_eq!(run(&sql, dir.path()).await.unwrap(), 2 * 3 * 2);
        let got = values(&out);
        assert_eq!(got.len(), 24);
        for (v, x) in got.iter().enumerate() {
            let i = v % 4;
            let want = if i < 2 {
                (0..5)
                    .map(|t| {
                        let at = 2 * (v + 24 * t);
                        i16::from_le_bytes([data[at], data[at + 1]]) as f64
                    })
                    .fold(f64::MIN, f64::max)
            } else {
                -7.0
            };
            assert_eq!(*x, want, "voxel {v}");
        }
    }

    #[tokio::test]
    async fn bad_input_is_refused_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        image(&dir.path().join("src.nii"), &[4, 3, 2, 2], 1);
        let out = dir.path().join("bad.nii.gz");
        std::fs::write(&out, b"old").unwrap();
        let o = out.display();
        let cases = [
            (
                format!("COPY (SELECT i, j, value FROM t) TO '{o}' STORED AS NIFTI"),
                "missing coordinate column k",
            ),
            (
                format!("COPY (SELECT i, j, k, value FROM t) TO '{o}' STORED AS NIFTI"),
                "two rows for voxel",
            ),
            (
                format!(
                    "COPY (SELECT i + 1 AS i, j, k, value FROM t WHERE t = 0) TO '{o}' STORED AS NIFTI"
                ),
                "give OPTIONS ('like'",
            ),
            (
                format!(
                    "COPY (SELECT i + 1 AS i, j, k, value FROM t WHERE t = 0) TO '{o}' STORED AS NIFTI OPTIONS ('like' '{}')",
                    dir.path().join("src.nii").display()
                ),
                "outside the grid",
            ),
            (
                format!(
                    "COPY (SELECT i, j, k, 'x' AS v FROM t WHERE t = 0) TO '{o}' STORED AS NIFTI"
                ),
                "not numeric",
            ),
            (
                format!(
                    "COPY (SELECT * FROM t) TO '{o}' STORED AS NIFTI OPTIONS ('like' '/nonexistent/like.nii')"
                ),
                "/nonexistent/like.nii",
            ),
            (
                format!("COPY (SELECT * FROM t) TO '{o}' STORED AS NIFTI OPTIONS ('colour' 'red')"),
                "unknown option",
            ),
            (
                format!("COPY (SELECT * FROM t) TO '{o}' STORED AS NIFTI OPTIONS ('dtype' 'int8')"),
                "cannot be stored as int8",
            ),
            (
                format!(
                    "COPY (SELECT * FROM t) TO '{o}' STORED AS NIFTI OPTIONS ('dtype' 'int16', 'fill' 'nan')"
                ),
                "fill value NaN",
            ),
            (
                format!(
                    "COPY (SELECT i, j, k, value, value AS w2 FROM t) TO '{o}' STORED AS NIFTI"
                ),
                "two rows",
            ),
            (
                format!(
                    "COPY (SELECT i, j, k, t, value AS a, value AS b FROM t) TO '{o}' STORED AS NIFTI"
                ),
                "several value columns",
            ),
        ];
        for (sql, want) in cases {
            let err = run(&sql, dir.path()).await.unwrap_err().to_string();
            assert!(
                err.contains(want),
                "{sql}\n  gave: {err}\n  expected: {want}"
            );
            assert_eq!(std::fs::read(&out).unwrap(), b"old", "{sql}");
            let left: Vec<_> = std::fs::read_dir(dir.path())
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| n.contains(".tmp"))
                .collect();
            assert!(left.is_empty(), "{sql}: left {left:?}");
        }
    }

    #[tokio::test]
    async fn a_target_named_nii_needs_no_stored_as() {
        let dir = tempfile::tempdir().unwrap();
        image(&dir.path().join("src.nii"), &[3, 2, 2, 2], 4);
        let out = dir.path().join("plain.nii");
        let sql = format!("COPY (SELECT * FROM t) TO '{}'", out.display());
        assert_eq!(run(&sql, dir.path()).await.unwrap(), 24);
        let proxy = ArrayProxy::open(&out, ProxyOptions::default()).unwrap();
        assert_eq!(proxy.shape(), &[3, 2, 2, 2]);
    }

    #[test]
    fn options_parse_with_and_without_the_format_prefix() {
        let map: HashMap<String, String> = [
            ("format.like", "a.nii"),
            ("value", "m"),
            ("format.scale", "AUTO"),
            ("aws.region", "x"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let o = NiftiWriteOptions::parse(&map).unwrap();
        assert_eq!(o.like.as_deref(), Some("a.nii"));
        assert_eq!(o.value.as_deref(), Some("m"));
        assert!(o.scale_auto);
        assert!(!o.store.is_empty());
        let bad: HashMap<String, String> = [("format.scale".to_string(), "max".to_string())].into();
        assert!(NiftiWriteOptions::parse(&bad).is_err());
    }
}
