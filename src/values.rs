//! Typed element buffers with a runtime dtype: decoding stored bytes (with byte swapping), encoding them back in any
//! byte order, and numpy's `astype` casts between element types.

use half::f16;
use num_complex::{Complex32, Complex64};

use crate::dtype::{ByteOrder, DType, Scalar};
use crate::error::{Result, VoxelError};

/// A flat run of elements in this machine's byte order. The variant is the element type.
#[derive(Debug, Clone, PartialEq)]
pub enum Values {
    U8(Vec<u8>),
    I8(Vec<i8>),
    U16(Vec<u16>),
    I16(Vec<i16>),
    U32(Vec<u32>),
    I32(Vec<i32>),
    U64(Vec<u64>),
    I64(Vec<i64>),
    F16(Vec<f16>),
    F32(Vec<f32>),
    F64(Vec<f64>),
    C64(Vec<Complex32>),
    C128(Vec<Complex64>),
    Rgb24(Vec<[u8; 3]>),
    Rgba32(Vec<[u8; 4]>),
}

/// Runs `$body` with `$v` bound to the inner `Vec` of any variant.
macro_rules! each_variant {
    ($values:expr, $v:ident => $body:expr) => {
        match $values {
            Values::U8($v) => $body,
            Values::I8($v) => $body,
            Values::U16($v) => $body,
            Values::I16($v) => $body,
            Values::U32($v) => $body,
            Values::I32($v) => $body,
            Values::U64($v) => $body,
            Values::I64($v) => $body,
            Values::F16($v) => $body,
            Values::F32($v) => $body,
            Values::F64($v) => $body,
            Values::C64($v) => $body,
            Values::C128($v) => $body,
            Values::Rgb24($v) => $body,
            Values::Rgba32($v) => $body,
        }
    };
}

/// Buffers at least this large ask the kernel for transparent huge pages, as numpy does: far fewer page faults when
/// a multi-megabyte result is first written.
const HUGE_PAGE_MIN_BYTES: usize = 4 << 20;

/// An empty Vec with room for `n` elements, its memory advised for huge pages when large.
pub fn vec_for_large<T>(n: usize) -> Vec<T> {
    let v: Vec<T> = Vec::with_capacity(n);
    let bytes = n.saturating_mul(std::mem::size_of::<T>());
    if bytes >= HUGE_PAGE_MIN_BYTES {
        advise_huge_pages(v.as_ptr() as usize, bytes);
    }
    v
}

/// `madvise(MADV_HUGEPAGE)` over the whole pages inside `[addr, addr + len)`. Advice only: failure is harmless.
fn advise_huge_pages(addr: usize, len: usize) {
    const PAGE: usize = 4096;
    let start = addr.div_ceil(PAGE) * PAGE;
    let end = (addr + len) / PAGE * PAGE;
    if end > start {
        // SAFETY: the range lies inside an allocation we own (whole pages only); MADV_HUGEPAGE changes no contents
        // and no mapping permissions, only how the kernel backs the pages.
        unsafe {
            libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE);
        }
    }
}

/// `n` zeroed elements in memory advised for huge pages when large.
fn zeroed_vec<T: bytemuck::Zeroable + Clone>(n: usize) -> Vec<T> {
    let mut v = vec_for_large::<T>(n);
    v.resize(n, T::zeroed());
    v
}

/// `n` zeroed elements like [`zeroed_vec`], or the allocator's refusal (never an abort).
fn try_zeroed_vec<T: bytemuck::Zeroable + Clone>(
    n: usize,
) -> Result<Vec<T>, std::collections::TryReserveError> {
    let mut v = Vec::new();
    v.try_reserve_exact(n)?;
    let bytes = n.saturating_mul(std::mem::size_of::<T>());
    if bytes >= HUGE_PAGE_MIN_BYTES {
        advise_huge_pages(v.as_ptr() as usize, bytes);
    }
    v.resize(n, T::zeroed());
    Ok(v)
}

/// Element types whose bytes can be reversed for byte-order conversion.
trait Swap: bytemuck::Pod {
    fn swap(self) -> Self;
}

macro_rules! swap_int {
    ($($t:ty),*) => {$(impl Swap for $t { fn swap(self) -> Self { self.swap_bytes() } })*};
}
swap_int!(u8, i8, u16, i16, u32, i32, u64, i64);

impl Swap for f16 {
    fn swap(self) -> Self {
        f16::from_bits(self.to_bits().swap_bytes())
    }
}
impl Swap for f32 {
    fn swap(self) -> Self {
        f32::from_bits(self.to_bits().swap_bytes())
    }
}
impl Swap for f64 {
    fn swap(self) -> Self {
        f64::from_bits(self.to_bits().swap_bytes())
    }
}
impl Swap for Complex32 {
    fn swap(self) -> Self {
        Complex32::new(self.re.swap(), self.im.swap())
    }
}
impl Swap for Complex64 {
    fn swap(self) -> Self {
        Complex64::new(self.re.swap(), self.im.swap())
    }
}
impl Swap for [u8; 3] {
    fn swap(self) -> Self {
        self
    }
}
impl Swap for [u8; 4] {
    fn swap(self) -> Self {
        self
    }
}

fn decode<T: Swap>(raw: &[u8], swap: bool) -> Vec<T> {
    let n = raw.len() / std::mem::size_of::<T>();
    let mut out: Vec<T> = vec![T::zeroed(); n];
    bytemuck::cast_slice_mut::<T, u8>(&mut out)
        .copy_from_slice(&raw[..n * std::mem::size_of::<T>()]);
    if swap {
        out.iter_mut().for_each(|x| *x = x.swap());
    }
    out
}

fn encode<T: Swap>(v: &[T], swap: bool) -> Vec<u8> {
    if swap {
        v.iter()
            .flat_map(|x| bytemuck::bytes_of(&x.swap()).to_vec())
            .collect()
    } else {
        bytemuck::cast_slice(v).to_vec()
    }
}

/// Elements swapped per write when the byte order is not native (64 Ki elements: a few hundred KiB at most).
const SWAP_CHUNK: usize = 1 << 16;

fn write_elements<T: Swap>(
    v: &[T],
    swap: bool,
    w: &mut impl std::io::Write,
) -> std::io::Result<()> {
    if !swap || std::mem::size_of::<T>() == 1 {
        return w.write_all(bytemuck::cast_slice(v));
    }
    let mut buf: Vec<T> = Vec::with_capacity(SWAP_CHUNK.min(v.len()));
    for part in v.chunks(SWAP_CHUNK) {
        buf.clear();
        buf.extend(part.iter().map(|x| x.swap()));
        w.write_all(bytemuck::cast_slice(&buf))?;
    }
    Ok(())
}

fn swap_in_place<T: Swap>(v: &mut [T]) {
    v.iter_mut().for_each(|x| *x = x.swap());
}

impl Values {
    /// Decode stored bytes of `dtype` into native elements. `raw.len()` must be a multiple of the element size.
    pub fn from_bytes(raw: &[u8], dtype: DType) -> Result<Values> {
        if !raw.len().is_multiple_of(dtype.size()) {
            return Err(VoxelError::Invalid(format!(
                "{} bytes is not a whole number of {} elements",
                raw.len(),
                dtype
            )));
        }
        let s = dtype.needs_swap();
        Ok(match dtype.scalar {
            Scalar::U8 => Values::U8(raw.to_vec()),
            Scalar::I8 => Values::I8(decode(raw, s)),
            Scalar::U16 => Values::U16(decode(raw, s)),
            Scalar::I16 => Values::I16(decode(raw, s)),
            Scalar::U32 => Values::U32(decode(raw, s)),
            Scalar::I32 => Values::I32(decode(raw, s)),
            Scalar::U64 => Values::U64(decode(raw, s)),
            Scalar::I64 => Values::I64(decode(raw, s)),
            Scalar::F16 => Values::F16(decode(raw, s)),
            Scalar::F32 => Values::F32(decode(raw, s)),
            Scalar::F64 => Values::F64(decode(raw, s)),
            Scalar::C64 => Values::C64(decode(raw, s)),
            Scalar::C128 => Values::C128(decode(raw, s)),
            Scalar::Rgb24 => Values::Rgb24(decode(raw, false)),
            Scalar::Rgba32 => Values::Rgba32(decode(raw, false)),
        })
    }

    /// A zeroed buffer of `n` elements, for reading straight into (see [`Values::bytes_mut`]).
    pub fn zeroed(scalar: Scalar, n: usize) -> Values {
        match scalar {
            Scalar::U8 => Values::U8(zeroed_vec(n)),
            Scalar::I8 => Values::I8(zeroed_vec(n)),
            Scalar::U16 => Values::U16(zeroed_vec(n)),
            Scalar::I16 => Values::I16(zeroed_vec(n)),
            Scalar::U32 => Values::U32(zeroed_vec(n)),
            Scalar::I32 => Values::I32(zeroed_vec(n)),
            Scalar::U64 => Values::U64(zeroed_vec(n)),
            Scalar::I64 => Values::I64(zeroed_vec(n)),
            Scalar::F16 => Values::F16(zeroed_vec(n)),
            Scalar::F32 => Values::F32(zeroed_vec(n)),
            Scalar::F64 => Values::F64(zeroed_vec(n)),
            Scalar::C64 => Values::C64(zeroed_vec(n)),
            Scalar::C128 => Values::C128(zeroed_vec(n)),
            Scalar::Rgb24 => Values::Rgb24(zeroed_vec(n)),
            Scalar::Rgba32 => Values::Rgba32(zeroed_vec(n)),
        }
    }

    /// [`Values::zeroed`] for buffers sized from a header: an allocation the system refuses is an error naming
    /// `location`, not an abort.
    pub fn try_zeroed(scalar: Scalar, n: usize, location: &str) -> Result<Values> {
        let fail = |e| {
            let bytes = crate::memory::bytes_of(n as u64, scalar.size() as u64);
            crate::memory::allocation_failed(location, "the result", bytes, e)
        };
        Ok(match scalar {
            Scalar::U8 => Values::U8(try_zeroed_vec(n).map_err(fail)?),
            Scalar::I8 => Values::I8(try_zeroed_vec(n).map_err(fail)?),
            Scalar::U16 => Values::U16(try_zeroed_vec(n).map_err(fail)?),
            Scalar::I16 => Values::I16(try_zeroed_vec(n).map_err(fail)?),
            Scalar::U32 => Values::U32(try_zeroed_vec(n).map_err(fail)?),
            Scalar::I32 => Values::I32(try_zeroed_vec(n).map_err(fail)?),
            Scalar::U64 => Values::U64(try_zeroed_vec(n).map_err(fail)?),
            Scalar::I64 => Values::I64(try_zeroed_vec(n).map_err(fail)?),
            Scalar::F16 => Values::F16(try_zeroed_vec(n).map_err(fail)?),
            Scalar::F32 => Values::F32(try_zeroed_vec(n).map_err(fail)?),
            Scalar::F64 => Values::F64(try_zeroed_vec(n).map_err(fail)?),
            Scalar::C64 => Values::C64(try_zeroed_vec(n).map_err(fail)?),
            Scalar::C128 => Values::C128(try_zeroed_vec(n).map_err(fail)?),
            Scalar::Rgb24 => Values::Rgb24(try_zeroed_vec(n).map_err(fail)?),
            Scalar::Rgba32 => Values::Rgba32(try_zeroed_vec(n).map_err(fail)?),
        })
    }

    /// The element bytes, for filling a buffer made by [`Values::zeroed`] without an extra copy.
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        each_variant!(self, v => bytemuck::cast_slice_mut(v.as_mut_slice()))
    }

    /// The element bytes in native order.
    pub fn bytes(&self) -> &[u8] {
        each_variant!(self, v => bytemuck::cast_slice(v.as_slice()))
    }

    /// Reverse the bytes of every element in place (after reading data of the other byte order).
    pub fn swap_bytes(&mut self) {
        each_variant!(self, v => swap_in_place(v.as_mut_slice()))
    }

    /// Write the elements' bytes in `order` to `w` without a copy of the whole buffer: the buffer itself when the
    /// order is native, else through a small reused buffer of swapped elements.
    pub fn write_bytes(
        &self,
        order: ByteOrder,
        w: &mut impl std::io::Write,
    ) -> std::io::Result<()> {
        let swap = order != ByteOrder::NATIVE;
        each_variant!(self, v => write_elements(v, swap, w))
    }

    /// The bytes of the elements written in `order`.
    pub fn to_bytes(&self, order: ByteOrder) -> Vec<u8> {
        let s = order != ByteOrder::NATIVE;
        each_variant!(self, v => encode(v, s))
    }

    pub fn scalar(&self) -> Scalar {
        match self {
            Values::U8(_) => Scalar::U8,
            Values::I8(_) => Scalar::I8,
            Values::U16(_) => Scalar::U16,
            Values::I16(_) => Scalar::I16,
            Values::U32(_) => Scalar::U32,
            Values::I32(_) => Scalar::I32,
            Values::U64(_) => Scalar::U64,
            Values::I64(_) => Scalar::I64,
            Values::F16(_) => Scalar::F16,
            Values::F32(_) => Scalar::F32,
            Values::F64(_) => Scalar::F64,
            Values::C64(_) => Scalar::C64,
            Values::C128(_) => Scalar::C128,
            Values::Rgb24(_) => Scalar::Rgb24,
            Values::Rgba32(_) => Scalar::Rgba32,
        }
    }

    /// A new buffer with `out[n] = self[idx[n]]`. Indices must be in range (callers compute them from the shape).
    pub fn permuted(&self, idx: &[usize]) -> Values {
        macro_rules! pick {
            ($($var:ident),*) => {
                match self {
                    $(Values::$var(v) => Values::$var(idx.iter().map(|&i| v[i]).collect()),)*
                }
            };
        }
        pick!(
            U8, I8, U16, I16, U32, I32, U64, I64, F16, F32, F64, C64, C128, Rgb24, Rgba32
        )
    }

    pub fn len(&self) -> usize {
        each_variant!(self, v => v.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// numpy's `astype(promote_types(self, target)).astype(target)`, which is what `np.asarray(prox, dtype=target)`
    /// does: a 64-bit unsigned/signed pair promotes to float64, so such casts go through float64.
    pub fn cast_via_promotion(self, target: Scalar) -> Result<Values> {
        let (from, to) = (self.scalar(), target);
        let signed = |s: Scalar| matches!(s, Scalar::I8 | Scalar::I16 | Scalar::I32 | Scalar::I64);
        if (from == Scalar::U64 && signed(to)) || (signed(from) && to == Scalar::U64) {
            return self.cast(Scalar::F64)?.cast(target);
        }
        self.cast(target)
    }

    /// numpy's `astype(target)` with C casting rules as numpy applies them on x86-64: int→int wraps, float→int
    /// truncates toward zero (out of range and NaN give what the hardware conversion gives), complex→real keeps the
    /// real part. Records cast only to themselves.
    pub fn cast(self, target: Scalar) -> Result<Values> {
        if self.scalar() == target {
            return Ok(self);
        }
        if matches!(target, Scalar::Rgb24 | Scalar::Rgba32)
            || matches!(self, Values::Rgb24(_) | Values::Rgba32(_))
        {
            return Err(VoxelError::DType(format!(
                "cannot cast {} to {}",
                self.scalar().name(),
                target.name()
            )));
        }
        Ok(match self {
            Values::C64(v) => {
                cast_complex(v.into_iter().map(|c| (c.re as f64, c.im as f64)), target)
            }
            Values::C128(v) => cast_complex(v.into_iter().map(|c| (c.re, c.im)), target),
            other => cast_real(&other, target),
        })
    }
}

/// A real element as numpy sees it for casting: an exact integer or a float.
#[derive(Clone, Copy)]
enum Real {
    Int(i128),
    Float(f64),
    /// f32 data keeps its own precision for float→int conversion (cvttss2si semantics match f64's for ints anyway).
    F32(f32),
}

fn reals(values: &Values) -> Box<dyn Iterator<Item = Real> + '_> {
    match values {
        Values::U8(v) => Box::new(v.iter().map(|&x| Real::Int(x as i128))),
        Values::I8(v) => Box::new(v.iter().map(|&x| Real::Int(x as i128))),
        Values::U16(v) => Box::new(v.iter().map(|&x| Real::Int(x as i128))),
        Values::I16(v) => Box::new(v.iter().map(|&x| Real::Int(x as i128))),
        Values::U32(v) => Box::new(v.iter().map(|&x| Real::Int(x as i128))),
        Values::I32(v) => Box::new(v.iter().map(|&x| Real::Int(x as i128))),
        Values::U64(v) => Box::new(v.iter().map(|&x| Real::Int(x as i128))),
        Values::I64(v) => Box::new(v.iter().map(|&x| Real::Int(x as i128))),
        Values::F16(v) => Box::new(v.iter().map(|&x| Real::F32(x.to_f32()))),
        Values::F32(v) => Box::new(v.iter().map(|&x| Real::F32(x))),
        Values::F64(v) => Box::new(v.iter().map(|&x| Real::Float(x))),
        _ => Box::new(std::iter::empty()),
    }
}

fn cast_real(values: &Values, target: Scalar) -> Values {
    let it = reals(values);
    match target {
        Scalar::U8 => Values::U8(it.map(|r| to_i64_trunc32(r) as u8).collect()),
        Scalar::I8 => Values::I8(it.map(|r| to_i64_trunc32(r) as i8).collect()),
        Scalar::U16 => Values::U16(it.map(|r| to_i64_trunc32(r) as u16).collect()),
        Scalar::I16 => Values::I16(it.map(|r| to_i64_trunc32(r) as i16).collect()),
        Scalar::U32 => Values::U32(it.map(|r| to_i64_trunc64(r) as u32).collect()),
        Scalar::I32 => Values::I32(it.map(|r| to_i64_trunc32(r) as i32).collect()),
        Scalar::U64 => Values::U64(it.map(to_u64).collect()),
        Scalar::I64 => Values::I64(it.map(to_i64_trunc64).collect()),
        Scalar::F16 => Values::F16(it.map(f16_of).collect()),
        Scalar::F32 => Values::F32(it.map(f32_of).collect()),
        Scalar::F64 => Values::F64(it.map(f64_of).collect()),
        Scalar::C64 => Values::C64(it.map(|r| Complex32::new(f32_of(r), 0.0)).collect()),
        Scalar::C128 => Values::C128(it.map(|r| Complex64::new(f64_of(r), 0.0)).collect()),
        Scalar::Rgb24 | Scalar::Rgba32 => unreachable_records(),
    }
}

fn unreachable_records() -> Values {
    // `cast` rejects records before dispatching here.
    Values::U8(Vec::new())
}

fn cast_complex(it: impl Iterator<Item = (f64, f64)>, target: Scalar) -> Values {
    match target {
        Scalar::C64 => Values::C64(
            it.map(|(re, im)| Complex32::new(re as f32, im as f32))
                .collect(),
        ),
        Scalar::C128 => Values::C128(it.map(|(re, im)| Complex64::new(re, im)).collect()),
        _ => cast_real(&Values::F64(it.map(|(re, _)| re).collect()), target),
    }
}

fn f64_of(r: Real) -> f64 {
    match r {
        Real::Int(i) => i as f64,
        Real::Float(f) => f,
        Real::F32(f) => f as f64,
    }
}

fn f32_of(r: Real) -> f32 {
    match r {
        // Integers round once, straight to f32, as numpy's int→float32 cast does.
        Real::Int(i) => i as f32,
        Real::Float(f) => f as f32,
        Real::F32(f) => f,
    }
}

fn f16_of(r: Real) -> f16 {
    match r {
        Real::Int(i) => f64_to_f16(i as f64),
        Real::Float(f) => f64_to_f16(f),
        Real::F32(f) => f16::from_f32(f),
    }
}

/// float64 → float16 rounded once, to nearest even, as numpy does (`half`'s conversions go through float32 and can
/// round twice). Rounding to float32 *to odd* first keeps enough information for the final rounding to be exact.
pub fn f64_to_f16(x: f64) -> f16 {
    let f = x as f32;
    if !x.is_finite() || f.is_infinite() || f as f64 == x {
        return f16::from_f32(f);
    }
    let mut bits = f.to_bits();
    if (f as f64).abs() > x.abs() {
        bits -= 1; // truncate toward zero (same sign: the bit patterns are ordered by magnitude)
    }
    f16::from_f32(f32::from_bits(bits | 1))
}

/// x86-64 `cvttsd2si` with a 32-bit destination: truncation, and 0x8000_0000 for NaN / out of range. numpy's casts
/// to 8-, 16- and 32-bit integers go through it and then keep the low bits.
fn to_i64_trunc32(r: Real) -> i64 {
    match r {
        Real::Int(i) => i as i64,
        _ => {
            let f = f64_of(r);
            if !(-2147483648.0..2147483648.0).contains(&f) {
                i32::MIN as i64
            } else {
                f.trunc() as i64
            }
        }
    }
}

/// 2^63 as f64.
const TWO_63: f64 = 9_223_372_036_854_775_808.0;

/// x86-64 `cvttsd2si` with a 64-bit destination.
fn to_i64_trunc64(r: Real) -> i64 {
    match r {
        Real::Int(i) => i as i64,
        _ => {
            let f = f64_of(r);
            if !(-TWO_63..TWO_63).contains(&f) {
                i64::MIN
            } else {
                f.trunc() as i64
            }
        }
    }
}

/// The float→u64 sequence compilers emit on x86-64 (values ≥ 2^63 are shifted into range first).
fn to_u64(r: Real) -> u64 {
    match r {
        Real::Int(i) => i as u64,
        _ => {
            let f = f64_of(r);
            if f >= TWO_63 {
                (to_i64_trunc64(Real::Float(f - TWO_63)) as u64) ^ (1 << 63)
            } else {
                to_i64_trunc64(Real::Float(f)) as u64
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streamed_bytes_equal_the_copied_ones_in_both_orders() {
        // More elements than one swap chunk, so the chunked path is exercised across a boundary.
        let n = SWAP_CHUNK + 123;
        let cases = [
            Values::I16((0..n).map(|i| i as i16).collect()),
            Values::F64((0..n).map(|i| i as f64 * 0.5).collect()),
            Values::C64(
                (0..n)
                    .map(|i| Complex32::new(i as f32, -(i as f32)))
                    .collect(),
            ),
            Values::U8((0..n).map(|i| i as u8).collect()),
            Values::Rgb24((0..n).map(|i| [i as u8, 1, 2]).collect()),
        ];
        for v in cases {
            for order in [ByteOrder::Little, ByteOrder::Big] {
                let mut out = Vec::new();
                v.write_bytes(order, &mut out).unwrap();
                assert_eq!(out, v.to_bytes(order), "{:?} {order:?}", v.scalar());
            }
        }
    }

    #[test]
    fn decode_swaps_big_endian() {
        let v = Values::from_bytes(
            &[0x01, 0x02, 0xff, 0xfe],
            DType::new(Scalar::I16, ByteOrder::Big),
        )
        .unwrap();
        assert_eq!(v, Values::I16(vec![0x0102, -2]));
        assert_eq!(v.to_bytes(ByteOrder::Big), vec![0x01, 0x02, 0xff, 0xfe]);
        assert_eq!(v.to_bytes(ByteOrder::Little), vec![0x02, 0x01, 0xfe, 0xff]);
    }

    #[test]
    fn decode_rejects_partial_elements() {
        assert!(Values::from_bytes(&[1, 2, 3], DType::native(Scalar::I16)).is_err());
    }

    #[test]
    fn complex_swaps_each_half() {
        let c = Complex32::new(1.5, -2.0);
        let mut be = c.re.to_be_bytes().to_vec();
        be.extend(c.im.to_be_bytes());
        let v = Values::from_bytes(&be, DType::new(Scalar::C64, ByteOrder::Big)).unwrap();
        assert_eq!(v, Values::C64(vec![c]));
    }

    #[test]
    fn casts_follow_numpy() {
        let v = Values::F64(vec![1.9, -1.9, 70000.0, f64::NAN, 3e10]);
        assert_eq!(
            v.clone().cast(Scalar::I16).unwrap(),
            Values::I16(vec![1, -1, 4464, 0, 0])
        );
        assert_eq!(
            v.clone().cast(Scalar::I32).unwrap(),
            Values::I32(vec![1, -1, 70000, i32::MIN, i32::MIN])
        );
        assert_eq!(
            Values::I16(vec![-1, 300]).cast(Scalar::U8).unwrap(),
            Values::U8(vec![255, 44])
        );
        assert_eq!(
            Values::C64(vec![Complex32::new(2.5, 1.0)])
                .cast(Scalar::F64)
                .unwrap(),
            Values::F64(vec![2.5])
        );
        assert!(Values::Rgb24(vec![[1, 2, 3]]).cast(Scalar::F32).is_err());
        assert_eq!(
            Values::F64(vec![-1.0]).cast(Scalar::U64).unwrap(),
            Values::U64(vec![u64::MAX])
        );
    }

    #[test]
    fn float16_casts_round_once() {
        let v = Values::F64(vec![-1545.4999928314382, 2049.0000001])
            .cast(Scalar::F16)
            .unwrap();
        assert_eq!(
            v,
            Values::F16(vec![f16::from_f32(-1545.0), f16::from_f32(2050.0)])
        );
    }

    #[test]
    fn sign_changing_64_bit_casts_go_through_float64() {
        let v = Values::U64(vec![6484113101942789355])
            .cast_via_promotion(Scalar::I64)
            .unwrap();
        assert_eq!(v, Values::I64(vec![6484113101942789120]));
        let v = Values::I64(vec![i64::MAX])
            .cast_via_promotion(Scalar::U64)
            .unwrap();
        assert_eq!(v, Values::U64(vec![1 << 63]));
        let v = Values::I16(vec![-1])
            .cast_via_promotion(Scalar::U8)
            .unwrap();
        assert_eq!(v, Values::U8(vec![255]));
    }

    #[test]
    fn zeroed_buffers_fill_through_bytes() {
        let mut v = Values::zeroed(Scalar::U16, 2);
        v.bytes_mut().copy_from_slice(&[1, 0, 2, 0]);
        if ByteOrder::NATIVE == ByteOrder::Little {
            assert_eq!(v, Values::U16(vec![1, 2]));
        }
        assert_eq!(v.len(), 2);
    }
}
