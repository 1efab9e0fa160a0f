//! Scalar functions between millimetres and voxels of a named image, registered in every voxel session:
//!
//! - `voxel_to_mm(image, i, j, k)` → `struct {x, y, z}` (Float64): the voxel centre through the image's affine, the
//!   same arithmetic as the `x, y, z` columns;
//! - `mm_to_voxel(image, x, y, z)` → `struct {i, j, k}` (Int64): the nearest voxel (halves round up, as the `grid`
//!   option and nilearn's nearest resampling), NULL outside the image's grid.
//!
//! `image` is a string literal: a path or URL of one image with an affine (NIfTI, Analyze, MGH). Its header is read
//! when the query is planned, cached by name (a local file is read again once its size or modification time
//! changes; an object's header is kept for the session). The functions are immutable, and at
//! planning a call is rewritten into plain arithmetic on its arguments, so constant arguments fold to a literal:
//! `WHERE i = mm_to_voxel('bold.nii', -42, 18, 30)['i']` is an index equality the scan reads exactly, and a cluster
//! needs nothing of these functions beyond the rewritten plan.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};

use datafusion::arrow::array::{Array, ArrayRef, Float64Array, Int64Array, StructArray};
use datafusion::arrow::buffer::NullBuffer;
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Fields};
use datafusion::common::{DataFusionError, Result as DfResult, ScalarValue};
use datafusion::logical_expr::expr::ScalarFunction;
use datafusion::logical_expr::simplify::{ExprSimplifyResult, SimplifyContext};
use datafusion::logical_expr::{
    ColumnarValue, Expr, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature,
    Volatility, lit, when,
};

use crate::formats::affine::{Affine, IDENTITY, row_apply};
use crate::location::Location;

use super::files::{Fingerprint, FormatKind, TableFiles, TableOptions};
use super::world::{GridMap, has_own_affine};

/// Which way a function converts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Direction {
    VoxelToMm,
    MmToVoxel,
}

/// The affine and grid of an image, as the functions need them.
#[derive(Debug, Clone, Copy)]
struct Geometry {
    affine: Affine,
    /// Millimetres → nearest voxel of the image.
    to_voxel: GridMap,
}

/// `voxel_to_mm` or `mm_to_voxel`.
#[derive(Debug)]
pub struct WorldFunction {
    direction: Direction,
    signature: Signature,
    /// Headers read, by image name, with the local data file's path and version when read (an object's header is
    /// kept for the session: checking its version would cost a request per query).
    cache: Mutex<HashMap<String, Cached>>,
}

impl PartialEq for WorldFunction {
    fn eq(&self, other: &Self) -> bool {
        self.direction == other.direction
    }
}

impl Eq for WorldFunction {}

impl Hash for WorldFunction {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.direction.hash(state);
    }
}

/// The two functions, for a session's registry.
pub fn world_functions() -> Vec<Arc<ScalarUDF>> {
    [Direction::VoxelToMm, Direction::MmToVoxel]
        .into_iter()
        .map(|direction| {
            Arc::new(ScalarUDF::new_from_impl(WorldFunction {
                direction,
                signature: Signature::user_defined(Volatility::Immutable),
                cache: Mutex::new(HashMap::new()),
            }))
        })
        .collect()
}

impl WorldFunction {
    fn usage(&self) -> &'static str {
        match self.direction {
            Direction::VoxelToMm => "voxel_to_mm('image', i, j, k)",
            Direction::MmToVoxel => "mm_to_voxel('image', x, y, z)",
        }
    }

    fn plan_err(&self, what: impl std::fmt::Display) -> DataFusionError {
        DataFusionError::Plan(format!("{}: {what}", self.usage()))
    }

    /// The names and type of the result's fields.
    fn fields(&self) -> Fields {
        let (names, ty) = match self.direction {
            Direction::VoxelToMm => (["x", "y", "z"], DataType::Float64),
            Direction::MmToVoxel => (["i", "j", "k"], DataType::Int64),
        };
        names
            .iter()
            .map(|n| Field::new(*n, ty.clone(), true))
            .collect()
    }

    /// The image's header facts, read once per name and again when a local file has changed since.
    fn geometry(&self, image: &str) -> DfResult<Geometry> {
        let mut cache = self
            .cache
            .lock()
            .map_err(|_| self.plan_err("the header cache was poisoned by an earlier panic"))?;
        if let Some(c) = cache.get(image).filter(|c| c.is_current()) {
            return Ok(c.geometry);
        }
        let opened = TableFiles::open(&[image.to_string()], &TableOptions::new(FormatKind::Any))
            .map_err(|e| self.plan_err(e))?;
        let file = match opened.files.as_slice() {
            [f] if !opened.multi && has_own_affine(f) => f,
            _ => {
                return Err(self.plan_err(format!(
                    "'{image}' must name one image with an affine (NIfTI, Analyze, MGH)"
                )));
            }
        };
        let to_voxel = GridMap::new(&IDENTITY, &file.affine, &file.layout.shape)
            .ok_or_else(|| self.plan_err(format!("{image}: its affine is singular")))?;
        let g = Geometry {
            affine: file.affine,
            to_voxel,
        };
        let local = match &file.data {
            Location::Path(p) => Some((p.clone(), file.fingerprint.clone())),
            _ => None,
        };
        cache.insert(image.to_string(), Cached { geometry: g, local });
        Ok(g)
    }
}

/// A header read, and for a local file what it was read from.
#[derive(Debug)]
struct Cached {
    geometry: Geometry,
    local: Option<(std::path::PathBuf, Fingerprint)>,
}

impl Cached {
    /// False when the local data file was replaced or rewritten since (or is gone: reading again gives the error).
    fn is_current(&self) -> bool {
        match &self.local {
            Some((path, was)) => Fingerprint::of_path(path).is_ok_and(|now| now == *was),
            None => true,
        }
    }
}

/// The image argument: a non-null string literal.
fn image_literal(v: Option<&ScalarValue>) -> Option<&str> {
    match v? {
        ScalarValue::Utf8(Some(s))
        | ScalarValue::LargeUtf8(Some(s))
        | ScalarValue::Utf8View(Some(s)) => Some(s),
        _ => None,
    }
}

/// `row · (a, b, c, 1)` as an expression, in the order [`row_apply`] computes it (so results agree to the bit).
fn row_expr(row: &[f64; 4], args: &[Expr]) -> Expr {
    let term = |c: usize| lit(row[c]) * args[c].clone();
    term(0) + term(1) + term(2) + lit(row[3])
}

fn named_struct(names: [&str; 3], values: Vec<Expr>) -> Expr {
    let args = names
        .iter()
        .zip(values)
        .flat_map(|(n, v)| [lit(*n), v])
        .collect();
    Expr::ScalarFunction(ScalarFunction::new_udf(
        datafusion::functions::core::named_struct(),
        args,
    ))
}

impl ScalarUDFImpl for WorldFunction {
    fn name(&self) -> &str {
        match self.direction {
            Direction::VoxelToMm => "voxel_to_mm",
            Direction::MmToVoxel => "mm_to_voxel",
        }
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> DfResult<Vec<DataType>> {
        let [image, rest @ ..] = arg_types else {
            return Err(self.plan_err("takes 4 arguments, got none"));
        };
        if rest.len() != 3 {
            return Err(self.plan_err(format!("takes 4 arguments, got {}", arg_types.len())));
        }
        if !matches!(
            image,
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
        ) {
            return Err(self.plan_err(format!(
                "the image must be a string (a path or URL), not {image}"
            )));
        }
        let mut out = vec![image.clone()];
        for t in rest {
            if !(t.is_numeric() || *t == DataType::Null) {
                return Err(self.plan_err(format!("coordinates must be numbers, not {t}")));
            }
            out.push(DataType::Float64);
        }
        Ok(out)
    }

    fn return_type(&self, _arg_types: &[DataType]) -> DfResult<DataType> {
        Ok(DataType::Struct(self.fields()))
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> DfResult<FieldRef> {
        if image_literal(args.scalar_arguments.first().copied().flatten()).is_none() {
            return Err(self.plan_err(
                "the image must be a string literal (a path or URL), the same for every row",
            ));
        }
        Ok(Arc::new(Field::new(
            self.name(),
            DataType::Struct(self.fields()),
            true,
        )))
    }

    /// At planning: the call as arithmetic on its arguments through the image's affine.
    fn simplify(&self, args: Vec<Expr>, _info: &SimplifyContext) -> DfResult<ExprSimplifyResult> {
        let image = match args.first() {
            Some(Expr::Literal(v, _)) => image_literal(Some(v)).map(str::to_string),
            _ => None,
        };
        let (Some(image), [_, coords @ ..]) = (image, args.as_slice()) else {
            return Ok(ExprSimplifyResult::Original(args));
        };
        if coords.len() != 3 {
            return Ok(ExprSimplifyResult::Original(args));
        }
        let g = self.geometry(&image)?;
        let expr = match self.direction {
            Direction::VoxelToMm => named_struct(
                ["x", "y", "z"],
                (0..3).map(|r| row_expr(&g.affine[r], coords)).collect(),
            ),
            Direction::MmToVoxel => {
                let nearest: Vec<Expr> = (0..3)
                    .map(|r| {
                        datafusion::functions::math::expr_fn::floor(
                            row_expr(&g.to_voxel.matrix[r], coords) + lit(0.5),
                        )
                    })
                    .collect();
                let inside = nearest
                    .iter()
                    .zip(g.to_voxel.shape)
                    .map(|(v, n)| v.clone().gt_eq(lit(0.0)).and(v.clone().lt(lit(n as f64))))
                    .reduce(Expr::and)
                    .unwrap_or(lit(true));
                let ints = nearest
                    .into_iter()
                    .map(|v| datafusion::prelude::cast(v, DataType::Int64))
                    .collect();
                when(inside, named_struct(["i", "j", "k"], ints)).end()?
            }
        };
        Ok(ExprSimplifyResult::Simplified(expr))
    }

    /// When a call was not rewritten at planning: the same arithmetic over the batch.
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let image = match args.args.first() {
            Some(ColumnarValue::Scalar(v)) => image_literal(Some(v)).map(str::to_string),
            _ => None,
        }
        .ok_or_else(|| self.plan_err("the image must be a string literal"))?;
        let g = self.geometry(&image)?;
        let arrays = ColumnarValue::values_to_arrays(&args.args[1..])?;
        let coords = arrays
            .iter()
            .map(|a| cast(a, &DataType::Float64))
            .collect::<Result<Vec<ArrayRef>, _>>()?;
        let coords: Vec<&Float64Array> = coords
            .iter()
            .filter_map(|a| a.as_any().downcast_ref::<Float64Array>())
            .collect();
        let [a, b, c] = coords.as_slice() else {
            return Err(self.plan_err("takes three coordinates"));
        };
        let n = args.number_rows;
        let point = |r: usize| {
            let valid = a.is_valid(r) && b.is_valid(r) && c.is_valid(r);
            valid.then(|| [a.value(r), b.value(r), c.value(r)])
        };
        let (columns, nulls): (Vec<ArrayRef>, Option<NullBuffer>) = match self.direction {
            Direction::VoxelToMm => {
                let column = |axis: usize| -> ArrayRef {
                    Arc::new(Float64Array::from_iter(
                        (0..n).map(|r| point(r).map(|p| row_apply(&g.affine[axis], p))),
                    ))
                };
                ((0..3).map(column).collect(), None)
            }
            Direction::MmToVoxel => {
                let nearest: Vec<Option<[i64; 3]>> = (0..n)
                    .map(|r| point(r).and_then(|p| g.to_voxel.nearest(p)))
                    .collect();
                let column = |axis: usize| -> ArrayRef {
                    Arc::new(Int64Array::from_iter(
                        nearest.iter().map(|v| v.map(|v| v[axis])),
                    ))
                };
                let nulls = NullBuffer::from_iter(nearest.iter().map(Option::is_some));
                ((0..3).map(column).collect(), Some(nulls))
            }
        };
        let s = StructArray::try_new(self.fields(), columns, nulls)?;
        Ok(ColumnarValue::Array(Arc::new(s)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::session_context;
    use datafusion::arrow::array::AsArray;
    use datafusion::arrow::datatypes::Int64Type;
    use datafusion::prelude::SessionConfig;

    /// A 2 mm image with a flip on x, 10×8×6 (sform rows written over the synthetic header's identity).
    fn image(dir: &std::path::Path) -> String {
        let path = dir.join("a.nii");
        let dtype = crate::dtype::DType::native(crate::dtype::Scalar::U8);
        let mut h = crate::synth::nifti1_header(&[10, 8, 6], dtype, 0.0, 0.0).unwrap();
        let rows = [
            [-2.0f32, 0.0, 0.0, 90.0],
            [0.0, 2.0, 0.0, -126.0],
            [0.0, 0.0, 2.0, -72.0],
        ];
        for (r, row) in rows.iter().enumerate() {
            for (c, v) in row.iter().enumerate() {
                let off = 280 + 16 * r + 4 * c;
                h[off..off + 4].copy_from_slice(&v.to_le_bytes());
            }
        }
        h.extend(vec![0u8; 480]);
        std::fs::write(&path, h).unwrap();
        path.display().to_string()
    }

    async fn one_struct(ctx: &datafusion::prelude::SessionContext, sql: &str) -> ArrayRef {
        let batches = ctx.sql(sql).await.unwrap().collect().await.unwrap();
        batches[0].column(0).clone()
    }

    #[tokio::test]
    async fn round_trip_nearest_and_nulls_outside() {
        let dir = tempfile::tempdir().unwrap();
        let img = image(dir.path());
        let ctx = session_context(SessionConfig::new());
        let mm = one_struct(&ctx, &format!("SELECT voxel_to_mm('{img}', 3, 4, 5)")).await;
        let mm = mm.as_struct();
        let x = mm
            .column(0)
            .as_primitive::<datafusion::arrow::datatypes::Float64Type>();
        assert_eq!(x.value(0), 84.0);
        let v = one_struct(
            &ctx,
            &format!("SELECT mm_to_voxel('{img}', 84.9, -119, -63)"),
        )
        .await;
        let v = v.as_struct();
        let ijk: Vec<i64> = (0..3)
            .map(|a| v.column(a).as_primitive::<Int64Type>().value(0))
            .collect();
        // x: (90 - 84.9) / 2 = 2.55 → 3; y: (-119 + 126) / 2 = 3.5 → 4 (halves up); z: 4.5 → 5.
        assert_eq!(ijk, [3, 4, 5]);
        let out = one_struct(&ctx, &format!("SELECT mm_to_voxel('{img}', 0, 500, 0)")).await;
        assert!(out.is_null(0));
        // Constant arguments fold at planning: the filter is a plain index equality, pushed down exactly.
        ctx.sql(&format!(
            "CREATE EXTERNAL TABLE a STORED AS NIFTI LOCATION '{img}'"
        ))
        .await
        .unwrap();
        let plan = ctx
            .sql(&format!(
                "EXPLAIN SELECT count(*) FROM a WHERE i = mm_to_voxel('{img}', 84.9, -119, -63)['i']"
            ))
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let text = datafusion::arrow::util::pretty::pretty_format_batches(&plan)
            .unwrap()
            .to_string();
        assert!(!text.contains("mm_to_voxel"), "{text}");
        assert!(text.contains("i = Int64(3)"), "{text}");
    }

    /// A file rewritten during the session (another affine) is read again: the cache keeps a local file's version.
    #[tokio::test]
    async fn a_rewritten_image_is_read_again() {
        let dir = tempfile::tempdir().unwrap();
        let img = image(dir.path());
        let ctx = session_context(SessionConfig::new());
        let x = |a: ArrayRef| {
            a.as_struct()
                .column(0)
                .as_primitive::<datafusion::arrow::datatypes::Float64Type>()
                .value(0)
        };
        let sql = format!("SELECT voxel_to_mm('{img}', 3, 4, 5)");
        assert_eq!(x(one_struct(&ctx, &sql).await), 84.0);
        // The same header with x no longer flipped (+2 mm, origin -90), and a later modification time.
        let mut bytes = std::fs::read(&img).unwrap();
        bytes[280..284].copy_from_slice(&2.0f32.to_le_bytes());
        bytes[292..296].copy_from_slice(&(-90.0f32).to_le_bytes());
        std::fs::write(&img, &bytes).unwrap();
        let later = std::time::SystemTime::now() + std::time::Duration::from_secs(5);
        std::fs::File::options()
            .write(true)
            .open(&img)
            .unwrap()
            .set_modified(later)
            .unwrap();
        assert_eq!(x(one_struct(&ctx, &sql).await), -84.0);
    }

    #[tokio::test]
    async fn bad_calls_are_plan_errors() {
        let dir = tempfile::tempdir().unwrap();
        let img = image(dir.path());
        let ctx = session_context(SessionConfig::new());
        ctx.sql(&format!(
            "CREATE EXTERNAL TABLE a STORED AS NIFTI LOCATION '{img}'"
        ))
        .await
        .unwrap();
        for (sql, says) in [
            (
                format!("SELECT voxel_to_mm('{img}', 1, 2)"),
                "takes 4 arguments",
            ),
            (
                format!("SELECT voxel_to_mm('{img}', 1, 2, 'x')"),
                "must be numbers",
            ),
            (
                "SELECT voxel_to_mm(1, 1, 2, 3)".to_string(),
                "must be a string",
            ),
            (
                "SELECT mm_to_voxel(CAST(i AS VARCHAR), 1, 2, 3) FROM a".to_string(),
                "string literal",
            ),
            (
                format!(
                    "SELECT mm_to_voxel('{}/missing.nii', 1, 2, 3)",
                    dir.path().display()
                ),
                "missing.nii",
            ),
        ] {
            let err = match ctx.sql(&sql).await {
                Ok(df) => df.collect().await.map(|_| ()).unwrap_err(),
                Err(e) => e,
            };
            assert!(err.to_string().contains(says), "{sql}: {err}");
        }
    }

    #[test]
    fn batches_not_rewritten_are_computed_the_same_way() {
        let dir = tempfile::tempdir().unwrap();
        let img = image(dir.path());
        let f = &world_functions()[1];
        let xs: ArrayRef = Arc::new(Float64Array::from(vec![Some(84.9), Some(0.0), None]));
        let ys: ArrayRef = Arc::new(Float64Array::from(vec![-119.0, 500.0, 0.0]));
        let zs: ArrayRef = Arc::new(Float64Array::from(vec![-63.0, 0.0, 0.0]));
        let field = |n: &str| Arc::new(Field::new(n, DataType::Float64, true));
        let out = f
            .invoke_with_args(ScalarFunctionArgs {
                args: vec![
                    ColumnarValue::Scalar(ScalarValue::Utf8(Some(img))),
                    ColumnarValue::Array(xs),
                    ColumnarValue::Array(ys),
                    ColumnarValue::Array(zs),
                ],
                arg_fields: vec![field("image"), field("x"), field("y"), field("z")],
                number_rows: 3,
                return_field: Arc::new(Field::new("v", f.return_type(&[]).unwrap(), true)),
                config_options: Arc::new(Default::default()),
            })
            .unwrap();
        let ColumnarValue::Array(a) = out else {
            panic!("an array")
        };
        let s = a.as_struct();
        assert_eq!(s.column(1).as_primitive::<Int64Type>().value(0), 4);
        assert!(!s.is_null(0) && s.is_null(1) && s.is_null(2));
    }
}
