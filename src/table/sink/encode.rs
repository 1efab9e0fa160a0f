//! Values into the output's storage type: the dtype, the fill value of missing voxels, and (for integer output)
//! exact conversion or nibabel's slope/intercept scaling.

use crate::dtype::Scalar;
use crate::error::{Result, VoxelError};

use super::volume::{Kind, ValueRange, Volume};

/// Storage types a NIfTI-1 output can have.
pub const OUTPUT_SCALARS: [Scalar; 10] = [
    Scalar::U8,
    Scalar::I8,
    Scalar::U16,
    Scalar::I16,
    Scalar::U32,
    Scalar::I32,
    Scalar::U64,
    Scalar::I64,
    Scalar::F32,
    Scalar::F64,
];

/// `stored * slope + inter` gives the value back.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scaling {
    pub slope: f64,
    pub inter: f64,
}

/// Converts assembled volumes into the output's bytes (little-endian, F order).
#[derive(Debug, Clone)]
pub struct Encoder {
    scalar: Scalar,
    kind: Kind,
    scaling: Option<Scaling>,
    fill: Vec<u8>,
}

impl Encoder {
    /// `fill` is what voxels without a row get (a value in the data's units: scaled like the data).
    pub fn new(scalar: Scalar, kind: Kind, fill: f64, scaling: Option<Scaling>) -> Result<Encoder> {
        let mut bytes = Vec::with_capacity(scalar.size());
        encode(scalar, Kind::Float, fill.to_bits(), scaling, &mut bytes).map_err(|why| {
            VoxelError::Invalid(format!(
                "fill value {fill} cannot be stored as {}: {why}",
                scalar.name()
            ))
        })?;
        Ok(Encoder {
            scalar,
            kind,
            scaling,
            fill: bytes,
        })
    }

    pub fn scalar(&self) -> Scalar {
        self.scalar
    }

    /// The header's `scl_slope`, `scl_inter` (1, 0 without scaling, as nibabel writes them).
    pub fn header_scaling(&self) -> (f32, f32) {
        self.scaling
            .map_or((1.0, 0.0), |s| (s.slope as f32, s.inter as f32))
    }

    /// Append the bytes of `vol` to `out`; `name` names a voxel for errors.
    pub fn encode_volume(
        &self,
        vol: &Volume,
        out: &mut Vec<u8>,
        name: impl Fn(u64) -> String,
    ) -> Result<()> {
        out.reserve(vol.values.len() * self.scalar.size());
        for (idx, (&bits, &seen)) in vol.values.iter().zip(&vol.seen).enumerate() {
            if !seen {
                out.extend_from_slice(&self.fill);
                continue;
            }
            encode(self.scalar, self.kind, bits, self.scaling, out).map_err(|why| {
                VoxelError::Invalid(format!(
                    "value {} at voxel {} cannot be stored as {}: {why} (choose another 'dtype', or 'scale' 'auto')",
                    self.kind.show(bits),
                    name(idx as u64),
                    self.scalar.name()
                ))
            })?;
        }
        Ok(())
    }
}

/// One value into `out`; the error says why it does not fit.
fn encode(
    scalar: Scalar,
    kind: Kind,
    bits: u64,
    scaling: Option<Scaling>,
    out: &mut Vec<u8>,
) -> std::result::Result<(), &'static str> {
    match scalar {
        Scalar::F32 => out.extend_from_slice(&(kind.to_f64(bits) as f32).to_le_bytes()),
        Scalar::F64 => out.extend_from_slice(&kind.to_f64(bits).to_le_bytes()),
        _ => {
            let (lo, hi) = int_range(scalar).ok_or("not a NIfTI-1 storage type")?;
            let v = match scaling {
                Some(s) => scaled(kind.to_f64(bits), s, lo, hi),
                None => exact_int(kind, bits)?,
            };
            if v < lo || v > hi {
                return Err("out of the type's range");
            }
            let le = v.to_le_bytes();
            out.extend_from_slice(&le[..scalar.size()]);
        }
    }
    Ok(())
}

/// The value as an integer when it is one exactly.
fn exact_int(kind: Kind, bits: u64) -> std::result::Result<i128, &'static str> {
    match kind {
        Kind::Signed => Ok(i128::from(bits as i64)),
        Kind::Unsigned => Ok(i128::from(bits)),
        Kind::Float => {
            let v = f64::from_bits(bits);
            if !v.is_finite() {
                Err("not finite")
            } else if v.fract() != 0.0 {
                Err("not an integer")
            } else if v.abs() >= 2f64.powi(100) {
                Err("out of the type's range")
            } else {
                Ok(v as i128)
            }
        }
    }
}

/// nibabel's write of a scaled value: `rint((v - inter) / slope)`, clipped to the type; NaN written as the
/// stored value nearest to 0.
fn scaled(v: f64, s: Scaling, lo: i128, hi: i128) -> i128 {
    let q = if v.is_nan() {
        (-s.inter / s.slope).round_ties_even()
    } else {
        ((v - s.inter) / s.slope).round_ties_even()
    };
    (q.clamp(lo as f64, hi as f64) as i128).clamp(lo, hi)
}

/// Smallest and largest value of an integer storage type.
pub fn int_range(scalar: Scalar) -> Option<(i128, i128)> {
    Some(match scalar {
        Scalar::U8 => (0, u8::MAX.into()),
        Scalar::I8 => (i8::MIN.into(), i8::MAX.into()),
        Scalar::U16 => (0, u16::MAX.into()),
        Scalar::I16 => (i16::MIN.into(), i16::MAX.into()),
        Scalar::U32 => (0, u32::MAX.into()),
        Scalar::I32 => (i32::MIN.into(), i32::MAX.into()),
        Scalar::U64 => (0, u64::MAX.into()),
        Scalar::I64 => (i64::MIN.into(), i64::MAX.into()),
        _ => return None,
    })
}

/// nibabel's `SlopeInterArrayWriter` choice for float data written as an integer type (`scale 'auto'`): `None`
/// when the data needs no scaling. Supported: float values to (u)int8/16/32 (the scaler type is float32, as
/// nibabel's; int64/uint64 outputs and integer inputs are refused).
pub fn auto_scaling(kind: Kind, scalar: Scalar, range: ValueRange) -> Result<Option<Scaling>> {
    let Some((lo, hi)) = int_range(scalar) else {
        return Ok(None); // float output: never scaled
    };
    if kind != Kind::Float {
        return Err(VoxelError::Invalid(
            "'scale' 'auto' is supported for float values only (integer values are written exactly)".into(),
        ));
    }
    if matches!(scalar, Scalar::U64 | Scalar::I64) {
        return Err(VoxelError::Invalid(
            "'scale' 'auto' is supported for 8-, 16- and 32-bit integer outputs".into(),
        ));
    }
    let (mut mn, mut mx) = range.finite.unwrap_or((0.0, 0.0));
    if mn == 0.0 && mx == 0.0 && !range.has_nan {
        return Ok(None); // all zero: nibabel does not scale
    }
    if range.has_nan {
        mn = mn.min(0.0);
        mx = mx.max(0.0);
    }
    if mx == mn {
        return Ok(Some(Scaling {
            slope: 1.0,
            inter: f64::from(mn as f32),
        }));
    }
    // shared_range(float32, out): the type's limits, pulled in to values float32 holds exactly.
    let (out_min, out_max) = (f64::from(lo as f32).max(lo as f64), shared_max(hi));
    let mut slope = (mx - mn) / (out_max - out_min);
    let inter;
    if out_min == 0.0 && mx.abs() < mn.abs() {
        inter = mx + out_min * slope;
        slope = -slope;
    } else {
        inter = mn - out_min * slope;
    }
    let (slope, inter) = (f64::from(slope as f32), f64::from(inter as f32));
    if !(slope.is_finite() && inter.is_finite()) || slope == 0.0 {
        return Err(VoxelError::Invalid(format!(
            "no finite slope/intercept maps [{mn}, {mx}] onto {}",
            scalar.name()
        )));
    }
    Ok(Some(Scaling { slope, inter }))
}

/// The largest value ≤ `hi` that float32 holds exactly (nibabel's `shared_range` upper end).
fn shared_max(hi: i128) -> f64 {
    let f = hi as f32;
    if f as f64 > hi as f64 {
        f64::from(f32::from_bits(f.to_bits() - 1))
    } else {
        f64::from(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vol(vals: &[u64], seen: &[bool]) -> Volume {
        Volume {
            t: 0,
            values: vals.to_vec(),
            seen: seen.to_vec(),
        }
    }

    #[test]
    fn exact_integers_fill_and_range_errors() {
        let e = Encoder::new(Scalar::I16, Kind::Float, -1.0, None).unwrap();
        let mut out = Vec::new();
        e.encode_volume(
            &vol(&[3.0f64.to_bits(), 0], &[true, false]),
            &mut out,
            |i| i.to_string(),
        )
        .unwrap();
        assert_eq!(out, [3, 0, 0xff, 0xff]);
        let err = e
            .encode_volume(&vol(&[2.5f64.to_bits()], &[true]), &mut out, |i| {
                format!("#{i}")
            })
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("2.5") && err.contains("#0") && err.contains("not an integer"),
            "{err}"
        );
        let big = Encoder::new(Scalar::U8, Kind::Signed, 0.0, None).unwrap();
        assert!(
            big.encode_volume(&vol(&[256], &[true]), &mut out, |i| i.to_string())
                .is_err()
        );
        assert!(Encoder::new(Scalar::I16, Kind::Float, f64::NAN, None).is_err());
        assert!(Encoder::new(Scalar::F32, Kind::Float, f64::NAN, None).is_ok());
    }

    #[test]
    fn auto_scaling_matches_nibabel_for_simple_ranges() {
        // Values recorded from nibabel 5.4.2: np.linspace(-3.3, 1000.7, 8) saved as int16 gives
        // scl_slope 0.015320057980716228, scl_inter 498.7076721191406; np.linspace(3.3, 1000.7, 8) as uint8
        // gives 3.911372661590576, 3.299999952316284.
        let r = ValueRange {
            finite: Some((-3.3, 1000.7)),
            has_nan: false,
        };
        let s = auto_scaling(Kind::Float, Scalar::I16, r).unwrap().unwrap();
        assert_eq!(
            (s.slope as f32, s.inter as f32),
            (0.015_320_058, 498.707_67)
        );
        let r = ValueRange {
            finite: Some((3.3, 1000.7)),
            has_nan: false,
        };
        let s = auto_scaling(Kind::Float, Scalar::U8, r).unwrap().unwrap();
        assert_eq!((s.slope as f32, s.inter as f32), (3.911_372_7, 3.3));
        assert!(auto_scaling(Kind::Signed, Scalar::I16, r).is_err());
        assert_eq!(auto_scaling(Kind::Float, Scalar::F32, r).unwrap(), None);
    }
}
