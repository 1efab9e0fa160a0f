//! Slope/intercept scaling and the output-dtype rules of nibabel's `ArrayProxy` under numpy ≥ 2
//! (reference §1.6–1.7):
//!
//! * identity factors (1, 0) return the stored values in the storage dtype, byte order included;
//! * integer storage is scaled in the narrowest float (starting at the slope's own float type) in which
//!   `[min, max] * slope + inter` stays finite, the result type being numpy's promotion of storage and that float;
//! * float and complex storage use plain promotion with the factors' types;
//! * arithmetic is two separately rounded operations (`x * slope`, then `+ inter`), each skipped when it is a no-op.
//!
//! Where nibabel would fall back to `longdouble` this returns [`VoxelError::Overflow`].

use half::f16;
use num_complex::{Complex32, Complex64};

use crate::dtype::{ByteOrder, DType, Kind, Scalar};
use crate::error::{Result, VoxelError};
pub use crate::formats::Factor;
use crate::values::Values;

/// A real float width, ordered by precision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Width {
    F16,
    F32,
    F64,
}

impl Width {
    fn scalar(self) -> Scalar {
        match self {
            Width::F16 => Scalar::F16,
            Width::F32 => Scalar::F32,
            Width::F64 => Scalar::F64,
        }
    }

    fn complex_scalar(self) -> Scalar {
        if self == Width::F64 {
            Scalar::C128
        } else {
            Scalar::C64
        }
    }

    /// Round `x` to this width (numpy's astype between floats).
    fn round(self, x: f64) -> f64 {
        match self {
            Width::F16 => crate::values::f64_to_f16(x).to_f64(),
            Width::F32 => x as f32 as f64,
            Width::F64 => x,
        }
    }

    /// Float width of a real or complex float scalar (the component width for complex).
    fn of(s: Scalar) -> Option<Width> {
        match s {
            Scalar::F16 => Some(Width::F16),
            Scalar::F32 | Scalar::C64 => Some(Width::F32),
            Scalar::F64 | Scalar::C128 => Some(Width::F64),
            _ => None,
        }
    }

    /// numpy's result float width for `int_type op float_width`.
    fn promote_int(int: Scalar, w: Width) -> Width {
        let bytes = int.size();
        let needed = match bytes {
            1 => Width::F16,
            2 => Width::F32,
            _ => Width::F64,
        };
        needed.max(w)
    }
}

/// A factor after numpy's `can_cast` step: its value and the float type it is held in; `complex` marks a factor
/// cast to a requested complex dtype (which changes the default float for integer data to f64).
#[derive(Debug, Clone, Copy)]
struct Held {
    value: f64,
    width: Width,
    complex: bool,
}

fn held(f: Factor) -> Held {
    let (value, width) = match f {
        Factor::F16(v) => (v as f64, Width::F16),
        Factor::F32(v) => (v as f64, Width::F32),
        Factor::F64(v) => (v, Width::F64),
    };
    Held {
        value,
        width,
        complex: false,
    }
}

/// Step 3 of `_get_scaled`: cast a factor to `use_dtype` when numpy's safe-casting rule allows it.
fn cast_if_safe(h: Held, target: Scalar) -> Held {
    match target.kind() {
        Kind::Float | Kind::Complex => {
            let w = Width::of(target).unwrap_or(Width::F64);
            if h.width <= w {
                Held {
                    value: w.round(h.value),
                    width: w,
                    complex: target.kind() == Kind::Complex,
                }
            } else {
                h
            }
        }
        _ => h,
    }
}

/// The arithmetic that reproduces nibabel for one (storage, factors, request) combination.
#[derive(Debug, Clone, Copy)]
struct Recipe {
    /// Width the arithmetic rounds to (numpy's result type of `arr * slope + inter`).
    width: Width,
    /// Output is complex (complex storage).
    complex: bool,
    slope: f64,
    inter: f64,
    /// Width after the multiply, before the add (differs from `width` only for float storage).
    mul_width: Width,
}

/// Factors after step 3, for a request `requested` (None = the proxy's own dtype).
fn factors(slope: Factor, inter: Factor, requested: Option<Scalar>) -> (Held, Held) {
    let (s, i) = (held(slope), held(inter));
    match requested {
        None => {
            let i = if i.width <= s.width {
                cast_if_safe(i, s.width.scalar())
            } else {
                i
            };
            (s, i)
        }
        Some(t) => (cast_if_safe(s, t), cast_if_safe(i, t)),
    }
}

fn is_identity(s: Held, i: Held) -> bool {
    s.value == 1.0 && i.value == 0.0
}

/// Integer storage: nibabel's `int_scinter_ftype` search from the default float upward.
fn int_recipe(storage: Scalar, s: Held, i: Held) -> Result<Recipe> {
    let default = if s.complex { Width::F64 } else { s.width };
    let (lo, hi) = storage.int_range().unwrap_or((0, 0));
    for ftype in [Width::F16, Width::F32, Width::F64]
        .into_iter()
        .filter(|w| *w >= default)
    {
        let (sv, iv) = (ftype.round(s.value), ftype.round(i.value));
        let width = Width::promote_int(storage, ftype);
        let finite = [lo, hi].iter().all(|&x| {
            let y = scale_one(width.round(x as f64), sv, iv, width, width);
            y.is_finite()
        });
        if finite && sv.is_finite() && iv.is_finite() {
            return Ok(Recipe {
                width,
                complex: false,
                slope: sv,
                inter: iv,
                mul_width: width,
            });
        }
    }
    Err(VoxelError::Overflow(format!(
        "scaling {} data by slope {} and intercept {} overflows float64 (nibabel would use longdouble)",
        storage.name(),
        s.value,
        i.value
    )))
}

/// Float or complex storage: plain promotion, multiply then add.
fn float_recipe(storage: Scalar, s: Held, i: Held) -> Recipe {
    let base = Width::of(storage).unwrap_or(Width::F64);
    let mul_width = if s.value != 1.0 {
        base.max(s.width)
    } else {
        base
    };
    let width = if i.value != 0.0 {
        mul_width.max(i.width)
    } else {
        mul_width
    };
    Recipe {
        width,
        complex: storage.kind() == Kind::Complex || s.complex || i.complex,
        slope: s.value,
        inter: i.value,
        mul_width,
    }
}

/// `x * slope` (if slope != 1) in `mul_w`, then `+ inter` (if inter != 0) in `w`. Operands are already
/// representable in the operation's width; each operation rounds once in its own width, except float16, which numpy
/// computes in float32 and rounds to float16.
#[inline]
fn scale_one(x: f64, slope: f64, inter: f64, mul_w: Width, w: Width) -> f64 {
    let m = if slope != 1.0 {
        binop(x, slope, mul_w, |a, b| a * b, |a, b| a * b)
    } else {
        x
    };
    if inter != 0.0 {
        binop(m, inter, w, |a, b| a + b, |a, b| a + b)
    } else {
        m
    }
}

#[inline]
fn binop(a: f64, b: f64, w: Width, f64op: fn(f64, f64) -> f64, f32op: fn(f32, f32) -> f32) -> f64 {
    match w {
        Width::F64 => f64op(a, b),
        Width::F32 => f32op(a as f32, b as f32) as f64,
        Width::F16 => f16::from_f32(f32op(a as f32, b as f32)).to_f64(),
    }
}

/// True when scaling with `slope`/`inter` (toward `requested`, if any) leaves stored values as they are.
pub fn factors_are_identity(slope: Factor, inter: Factor, requested: Option<Scalar>) -> bool {
    let (s, i) = factors(slope, inter, requested);
    is_identity(s, i)
}

/// The dtype `np.asarray(proxy[...])` (or, with `requested`, `np.asarray(proxy, dtype=requested)`) has.
pub fn scaled_dtype(
    storage: DType,
    slope: Factor,
    inter: Factor,
    requested: Option<DType>,
) -> Result<DType> {
    if let Some(r) = requested {
        check_castable(storage.scalar, r.scalar)?;
        let (s, i) = factors(slope, inter, Some(r.scalar));
        if !is_identity(s, i) {
            recipe(storage.scalar, s, i)?;
        }
        return Ok(r);
    }
    let (s, i) = factors(slope, inter, None);
    if is_identity(s, i) {
        return Ok(storage);
    }
    let r = recipe(storage.scalar, s, i)?;
    Ok(DType::native(result_scalar(&r)))
}

fn check_castable(from: Scalar, to: Scalar) -> Result<()> {
    let rec = |s: Scalar| s.kind() == Kind::Record;
    if (rec(from) || rec(to)) && from != to {
        return Err(VoxelError::DType(format!(
            "cannot cast {} to {}",
            from.name(),
            to.name()
        )));
    }
    Ok(())
}

fn recipe(storage: Scalar, s: Held, i: Held) -> Result<Recipe> {
    match storage.kind() {
        Kind::Int | Kind::UInt => int_recipe(storage, s, i),
        Kind::Float | Kind::Complex => Ok(float_recipe(storage, s, i)),
        Kind::Record => Err(VoxelError::DType(format!(
            "{} data cannot be scaled (slope {}, intercept {})",
            storage.name(),
            s.value,
            i.value
        ))),
    }
}

fn result_scalar(r: &Recipe) -> Scalar {
    if r.complex {
        r.width.complex_scalar()
    } else {
        r.width.scalar()
    }
}

/// Apply the factors to stored values (already decoded to native order), nibabel-exactly. With `requested`, the
/// result is then cast to exactly that type, as `np.asarray(proxy, dtype=requested)` does. Returns the values and
/// the dtype they stand for (its byte order is what an `.npy` of the result must carry).
pub fn scale_values(
    values: Values,
    storage: DType,
    slope: Factor,
    inter: Factor,
    requested: Option<DType>,
) -> Result<(Values, DType)> {
    let target = requested.map(|r| r.scalar);
    if let Some(t) = target {
        check_castable(storage.scalar, t)?;
    }
    let (s, i) = factors(slope, inter, target);
    if is_identity(s, i) {
        return match requested {
            None => Ok((values, storage)),
            Some(r) => Ok((values.cast_via_promotion(r.scalar)?, r)),
        };
    }
    let rec = recipe(storage.scalar, s, i)?;
    let scaled = apply(values, &rec);
    match requested {
        None => {
            let dt = DType::native(scaled.scalar());
            Ok((scaled, dt))
        }
        Some(r) => Ok((scaled.cast(r.scalar)?, r)),
    }
}

/// Decode raw stored bytes and scale them; the result in native byte order as bytes. (Convenience for callers that
/// move bytes; [`scale_values`] avoids the final copy.)
pub fn scale_to_native(
    raw: &[u8],
    storage: DType,
    slope: Factor,
    inter: Factor,
    requested: Option<DType>,
) -> Result<(DType, Vec<u8>)> {
    let values = Values::from_bytes(raw, storage)?;
    let (v, dt) = scale_values(values, storage, slope, inter, requested)?;
    Ok((
        dt.with_order(ByteOrder::NATIVE),
        v.to_bytes(ByteOrder::NATIVE),
    ))
}

fn apply(values: Values, r: &Recipe) -> Values {
    match values {
        Values::C64(v) => complex_out(v.into_iter().map(|c| (c.re as f64, c.im as f64)), r),
        Values::C128(v) => complex_out(v.into_iter().map(|c| (c.re, c.im)), r),
        Values::U8(v) => real_out(&v, |x| x as f64, r),
        Values::I8(v) => real_out(&v, |x| x as f64, r),
        Values::U16(v) => real_out(&v, |x| x as f64, r),
        Values::I16(v) => real_out(&v, |x| x as f64, r),
        Values::U32(v) => real_out(&v, |x| x as f64, r),
        Values::I32(v) => real_out(&v, |x| x as f64, r),
        Values::U64(v) => real_out(&v, |x| x as f64, r),
        Values::I64(v) => real_out(&v, |x| x as f64, r),
        Values::F16(v) => real_out(&v, |x| x.to_f64(), r),
        Values::F32(v) => real_out(&v, |x| x as f64, r),
        Values::F64(v) => real_out(&v, |x| x, r),
        // Records never get a recipe (`recipe` refuses them).
        other => other,
    }
}

/// Below this many elements one thread is faster than several.
const PAR_MIN: usize = 1 << 20;

/// `input.map(f)` into a new Vec, split across the machine's cores for large inputs. The output is written in place,
/// chunk by chunk, so its pages are first touched by the thread that fills them.
fn par_map<I: Copy + Sync, O: Copy + Send>(input: &[I], f: impl Fn(I) -> O + Sync) -> Vec<O> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let n = input.len();
    let mut out = crate::values::vec_for_large::<O>(n);
    if n < PAR_MIN || threads < 2 {
        out.extend(input.iter().map(|&x| f(x)));
        return out;
    }
    let chunk = n.div_ceil(threads);
    std::thread::scope(|scope| {
        for (src, dst) in input
            .chunks(chunk)
            .zip(out.spare_capacity_mut()[..n].chunks_mut(chunk))
        {
            let f = &f;
            scope.spawn(move || {
                for (o, &x) in dst.iter_mut().zip(src) {
                    o.write(f(x));
                }
            });
        }
    });
    // SAFETY: the chunks of `spare_capacity_mut()[..n]` and of `input` pair up one to one and cover all `n` slots,
    // and every thread wrote every slot of its chunk before the scope ended.
    unsafe { out.set_len(n) };
    out
}

fn real_out<T: Copy + Sync>(v: &[T], to_f64: impl Fn(T) -> f64 + Sync, r: &Recipe) -> Values {
    if r.complex {
        return complex_out(v.iter().map(|&x| (to_f64(x), 0.0)), r);
    }
    let (s, i) = (r.slope, r.inter);
    // One branch-free loop per case, the factors captured by value: the compiler then vectorises the conversion and
    // the arithmetic (with the flags tested inside, it reloaded them for every element and stayed scalar).
    match (r.width, r.mul_width) {
        // f64: every operand is exact in f64, and each operation rounds once, as numpy's float64 loops do.
        (Width::F64, Width::F64) => Values::F64(match (s != 1.0, i != 0.0) {
            (true, true) => par_map(v, move |x| to_f64(x) * s + i),
            (true, false) => par_map(v, move |x| to_f64(x) * s),
            (false, true) => par_map(v, move |x| to_f64(x) + i),
            (false, false) => par_map(v, to_f64),
        }),
        (Width::F32, Width::F32) => {
            let (mul, add) = (s != 1.0, i != 0.0);
            let (s, i) = (s as f32, i as f32);
            let f32_of = move |x| to_f64(x) as f32;
            Values::F32(match (mul, add) {
                (true, true) => par_map(v, move |x| f32_of(x) * s + i),
                (true, false) => par_map(v, move |x| f32_of(x) * s),
                (false, true) => par_map(v, move |x| f32_of(x) + i),
                (false, false) => par_map(v, f32_of),
            })
        }
        (Width::F64, mw) => Values::F64(par_map(v, |x| scale_one(to_f64(x), s, i, mw, Width::F64))),
        (Width::F32, mw) => Values::F32(par_map(v, |x| {
            scale_one(to_f64(x), s, i, mw, Width::F32) as f32
        })),
        (Width::F16, mw) => Values::F16(par_map(v, |x| {
            crate::values::f64_to_f16(scale_one(to_f64(x), s, i, mw, Width::F16))
        })),
    }
}

/// numpy's complex arithmetic with a real factor promoted to complex: `(a+bi)(s+0i) = (as − b·0) + (a·0 + bs)i`,
/// then `+ (inter + 0i)`. Written out so signed zeros and NaNs come out as numpy's.
fn complex_out(it: impl Iterator<Item = (f64, f64)>, r: &Recipe) -> Values {
    let (s, i) = (r.slope, r.inter);
    let mul_w = r.mul_width;
    let w = r.width;
    let one = |(a, b): (f64, f64)| {
        let (mut re, mut im) = (a, b);
        if s != 1.0 {
            re = mul_w.round(a * s - b * 0.0);
            im = mul_w.round(a * 0.0 + b * s);
        }
        if i != 0.0 {
            re = w.round(re + i);
            im = w.round(im + 0.0);
        }
        (re, im)
    };
    if w == Width::F64 {
        Values::C128(it.map(one).map(|(re, im)| Complex64::new(re, im)).collect())
    } else {
        Values::C64(
            it.map(one)
                .map(|(re, im)| Complex32::new(re as f32, im as f32))
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(s: Scalar) -> DType {
        DType::native(s)
    }

    fn out(s: Scalar, slope: Factor, inter: Factor) -> &'static str {
        scaled_dtype(st(s), slope, inter, None)
            .unwrap()
            .scalar
            .code()
    }

    use Factor::{F16 as H, F32 as S, F64 as D};

    /// The full grid of reference §1.7 (numpy 2.4.6), one row per factor pair.
    #[test]
    fn reference_grid() {
        let cols = [
            Scalar::U8,
            Scalar::I8,
            Scalar::I16,
            Scalar::U16,
            Scalar::I32,
            Scalar::U32,
            Scalar::I64,
            Scalar::U64,
            Scalar::F16,
            Scalar::F32,
            Scalar::F64,
            Scalar::C64,
            Scalar::C128,
        ];
        let rows: &[(Factor, Factor, &str)] = &[
            (D(1.0), D(0.0), "u1 i1 i2 u2 i4 u4 i8 u8 f2 f4 f8 c8 c16"),
            (D(1.0), D(10.0), "f8 f8 f8 f8 f8 f8 f8 f8 f8 f8 f8 c16 c16"),
            (D(1.0), S(10.0), "f8 f8 f8 f8 f8 f8 f8 f8 f8 f8 f8 c16 c16"),
            (D(1.0), S(0.0), "u1 i1 i2 u2 i4 u4 i8 u8 f2 f4 f8 c8 c16"),
            (D(2.0), D(0.0), "f8 f8 f8 f8 f8 f8 f8 f8 f8 f8 f8 c16 c16"),
            (D(2.0), S(10.0), "f8 f8 f8 f8 f8 f8 f8 f8 f8 f8 f8 c16 c16"),
            (S(2.0), D(0.0), "f4 f4 f4 f4 f8 f8 f8 f8 f4 f4 f8 c8 c16"),
            (S(2.0), D(10.0), "f4 f4 f4 f4 f8 f8 f8 f8 f8 f8 f8 c16 c16"),
            (S(2.0), S(10.0), "f4 f4 f4 f4 f8 f8 f8 f8 f4 f4 f8 c8 c16"),
            (S(2.0), S(0.0), "f4 f4 f4 f4 f8 f8 f8 f8 f4 f4 f8 c8 c16"),
            (S(1.0), D(0.0), "u1 i1 i2 u2 i4 u4 i8 u8 f2 f4 f8 c8 c16"),
            (S(1.0), D(10.0), "f4 f4 f4 f4 f8 f8 f8 f8 f8 f8 f8 c16 c16"),
            (S(1.0), S(10.0), "f4 f4 f4 f4 f8 f8 f8 f8 f4 f4 f8 c8 c16"),
            (H(2.0), D(0.0), "f2 f2 f4 f4 f8 f8 f8 f8 f2 f4 f8 c8 c16"),
            (H(2.0), D(10.0), "f2 f2 f4 f4 f8 f8 f8 f8 f8 f8 f8 c16 c16"),
            (H(2.0), S(10.0), "f2 f2 f4 f4 f8 f8 f8 f8 f4 f4 f8 c8 c16"),
            (H(2.0), S(0.0), "f2 f2 f4 f4 f8 f8 f8 f8 f2 f4 f8 c8 c16"),
        ];
        for (slope, inter, expect) in rows {
            let got: Vec<&str> = cols.iter().map(|&c| out(c, *slope, *inter)).collect();
            assert_eq!(got.join(" "), *expect, "slope {slope:?} inter {inter:?}");
        }
    }

    #[test]
    fn identity_keeps_byte_order() {
        let be = DType::new(Scalar::I16, ByteOrder::Big);
        assert_eq!(scaled_dtype(be, D(1.0), D(0.0), None).unwrap(), be);
        let (v, dt) = scale_values(Values::I16(vec![1, 2]), be, D(1.0), D(0.0), None).unwrap();
        assert_eq!(dt, be);
        assert_eq!(v, Values::I16(vec![1, 2]));
    }

    #[test]
    fn nibabel_apply_read_scaling_vectors() {
        // int8 with float32(-1.0) -> float32; Python -1.0 -> float64; float32(1e38) -> float64 (overflow).
        assert_eq!(out(Scalar::I8, S(-1.0), D(0.0)), "f4");
        assert_eq!(out(Scalar::I8, D(-1.0), D(0.0)), "f8");
        assert_eq!(out(Scalar::I8, S(1e38), D(0.0)), "f8");
        assert_eq!(out(Scalar::I8, S(-1e38), D(0.0)), "f8");
        assert_eq!(out(Scalar::I16, S(f32::MAX), D(0.0)), "f8");
        assert_eq!(out(Scalar::I32, D(1.0), D(1.0)), "f8");
        // u1 with an f16 slope that overflows float16 moves to float32.
        assert_eq!(out(Scalar::U8, H(1000.0), D(0.0)), "f4");
    }

    #[test]
    fn overflow_is_an_error() {
        assert!(scaled_dtype(st(Scalar::I32), D(1e300), D(0.0), None).is_err());
        assert!(scaled_dtype(st(Scalar::I16), D(f64::NAN), D(0.0), None).is_err());
        assert!(scaled_dtype(st(Scalar::I16), D(2.0), D(f64::INFINITY), None).is_err());
        // Float storage never checks: NaN propagates.
        let (v, _) = scale_values(
            Values::F32(vec![1.0]),
            st(Scalar::F32),
            D(f64::NAN),
            D(0.0),
            None,
        )
        .unwrap();
        assert!(matches!(v, Values::F64(ref x) if x[0].is_nan()));
    }

    #[test]
    fn values_are_two_rounded_steps() {
        let (v, dt) = scale_values(
            Values::I16(vec![3, -7]),
            st(Scalar::I16),
            D(0.5),
            D(10.0),
            None,
        )
        .unwrap();
        assert_eq!(dt.scalar, Scalar::F64);
        assert_eq!(v, Values::F64(vec![11.5, 6.5]));
        // f32 factors on int16 compute in f32.
        let (v, _) =
            scale_values(Values::I16(vec![3]), st(Scalar::I16), S(0.1), S(0.2), None).unwrap();
        assert_eq!(v, Values::F32(vec![3.0f32 * 0.1f32 + 0.2f32]));
        // f32 factors on int32 compute in f64 with the f32 factor values.
        let (v, _) =
            scale_values(Values::I32(vec![3]), st(Scalar::I32), S(0.1), D(0.0), None).unwrap();
        assert_eq!(v, Values::F64(vec![3.0 * (0.1f32 as f64)]));
        // slope 0 in a spec is applied literally.
        let (v, _) =
            scale_values(Values::U8(vec![9]), st(Scalar::U8), D(0.0), D(4.0), None).unwrap();
        assert_eq!(v, Values::F64(vec![4.0]));
    }

    #[test]
    fn requested_dtype_is_exact() {
        let want = DType::new(Scalar::F32, ByteOrder::Big);
        let (v, dt) = scale_values(
            Values::I16(vec![3]),
            st(Scalar::I16),
            D(0.1),
            D(0.0),
            Some(want),
        )
        .unwrap();
        assert_eq!(dt, want);
        // computed in f64 (a Python-float slope cannot be safely cast to f32), then rounded to f32.
        assert_eq!(v, Values::F32(vec![(3.0f64 * 0.1) as f32]));
        let (v, _) = scale_values(
            Values::I16(vec![3]),
            st(Scalar::I16),
            S(0.1),
            D(0.0),
            Some(st(Scalar::F64)),
        )
        .unwrap();
        assert_eq!(v, Values::F64(vec![3.0 * (0.1f32 as f64)]));
        assert_eq!(
            scaled_dtype(st(Scalar::I16), D(2.0), D(1.0), Some(st(Scalar::U8))).unwrap(),
            st(Scalar::U8)
        );
    }

    #[test]
    fn complex_scaling() {
        let (v, dt) = scale_values(
            Values::C64(vec![Complex32::new(1.0, -2.0)]),
            st(Scalar::C64),
            D(2.0),
            D(1.0),
            None,
        )
        .unwrap();
        assert_eq!(dt.scalar, Scalar::C128);
        assert_eq!(v, Values::C128(vec![Complex64::new(3.0, -4.0)]));
    }

    #[test]
    fn records_refuse_scaling() {
        assert!(scaled_dtype(st(Scalar::Rgb24), D(2.0), D(0.0), None).is_err());
        assert_eq!(
            scaled_dtype(st(Scalar::Rgb24), D(1.0), D(0.0), None).unwrap(),
            st(Scalar::Rgb24)
        );
    }
}
