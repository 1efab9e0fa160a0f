//! Test helpers: header blocks built field by field in either byte order.

use crate::dtype::ByteOrder;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Analyze,
    Nifti1,
    Nifti2,
}

/// A 348-byte Analyze/NIfTI-1 or 540-byte NIfTI-2 header under construction.
#[derive(Debug, Clone)]
pub struct HeaderBuilder {
    bytes: Vec<u8>,
    order: ByteOrder,
    kind: Kind,
}

impl HeaderBuilder {
    fn put(mut self, off: usize, b: &[u8]) -> Self {
        if self.bytes.len() < off + b.len() {
            self.bytes.resize(off + b.len(), 0);
        }
        self.bytes[off..off + b.len()].copy_from_slice(b);
        self
    }

    pub fn bytes_at(self, off: usize, b: &[u8]) -> Self {
        self.put(off, b)
    }

    pub fn i16_at(self, off: usize, v: i16) -> Self {
        let b = match self.order {
            ByteOrder::Little => v.to_le_bytes(),
            ByteOrder::Big => v.to_be_bytes(),
        };
        self.put(off, &b)
    }

    pub fn i32_at(self, off: usize, v: i32) -> Self {
        let b = match self.order {
            ByteOrder::Little => v.to_le_bytes(),
            ByteOrder::Big => v.to_be_bytes(),
        };
        self.put(off, &b)
    }

    pub fn i64_at(self, off: usize, v: i64) -> Self {
        let b = match self.order {
            ByteOrder::Little => v.to_le_bytes(),
            ByteOrder::Big => v.to_be_bytes(),
        };
        self.put(off, &b)
    }

    pub fn f32_at(self, off: usize, v: f32) -> Self {
        let b = match self.order {
            ByteOrder::Little => v.to_le_bytes(),
            ByteOrder::Big => v.to_be_bytes(),
        };
        self.put(off, &b)
    }

    pub fn f64_at(self, off: usize, v: f64) -> Self {
        let b = match self.order {
            ByteOrder::Little => v.to_le_bytes(),
            ByteOrder::Big => v.to_be_bytes(),
        };
        self.put(off, &b)
    }

    /// An Analyze 7.5 header: sizeof_hdr, dims (`dim[0]` = len), datatype, bitpix, unit pixdims.
    pub fn analyze(order: ByteOrder, shape: &[i64], datatype: i16) -> Self {
        HeaderBuilder {
            bytes: vec![0; 348],
            order,
            kind: Kind::Analyze,
        }
        .short_layout(shape, datatype)
    }

    /// A NIfTI-1 header with magic `n+1` (single) or `ni1` (pair), unit pixdims and qfac 1.
    pub fn nifti1(order: ByteOrder, shape: &[i64], datatype: i16, single: bool) -> Self {
        let magic: &[u8] = if single { b"n+1\0" } else { b"ni1\0" };
        let b = HeaderBuilder {
            bytes: vec![0; 348],
            order,
            kind: Kind::Nifti1,
        }
        .short_layout(shape, datatype)
        .bytes_at(344, magic)
        .scaling(1.0, 0.0)
        .f32_at(76, 1.0);
        if single { b.vox_offset(352.0) } else { b }
    }

    fn short_layout(self, shape: &[i64], datatype: i16) -> Self {
        let mut b = self.i32_at(0, 348).i16_at(40, shape.len() as i16);
        for k in 0..7 {
            b = b.i16_at(42 + 2 * k, shape.get(k).map_or(1, |&d| d as i16));
            b = b.f32_at(80 + 4 * k, 1.0);
        }
        b.i16_at(70, datatype).i16_at(72, 16)
    }

    /// A NIfTI-2 header with magic `n+2`/`ni2`, the eol_check bytes, unit pixdims and qfac 1.
    pub fn nifti2(order: ByteOrder, shape: &[i64], datatype: i16, single: bool) -> Self {
        let magic: &[u8] = if single { b"n+2\0" } else { b"ni2\0" };
        let mut b = HeaderBuilder {
            bytes: vec![0; 540],
            order,
            kind: Kind::Nifti2,
        }
        .i32_at(0, 540)
        .bytes_at(4, magic)
        .bytes_at(8, &[13, 10, 26, 10])
        .i16_at(12, datatype)
        .i64_at(16, shape.len() as i64)
        .f64_at(104, 1.0);
        for k in 0..7 {
            b = b.i64_at(24 + 8 * k, shape.get(k).copied().unwrap_or(1));
            b = b.f64_at(112 + 8 * k, 1.0);
        }
        let b = b.scaling(1.0, 0.0);
        if single { b.vox_offset(544.0) } else { b }
    }

    pub fn zooms(mut self, zooms: &[f64]) -> Self {
        for (k, &z) in zooms.iter().enumerate() {
            self = match self.kind {
                Kind::Nifti2 => self.f64_at(112 + 8 * k, z),
                _ => self.f32_at(80 + 4 * k, z as f32),
            };
        }
        self
    }

    /// `pixdim[0]`.
    pub fn qfac(self, q: f64) -> Self {
        match self.kind {
            Kind::Nifti2 => self.f64_at(104, q),
            _ => self.f32_at(76, q as f32),
        }
    }

    pub fn vox_offset(self, v: f64) -> Self {
        match self.kind {
            Kind::Nifti2 => self.i64_at(168, v as i64),
            _ => self.f32_at(108, v as f32),
        }
    }

    pub fn scaling(self, slope: f64, inter: f64) -> Self {
        match self.kind {
            Kind::Nifti2 => self.f64_at(176, slope).f64_at(184, inter),
            _ => self.f32_at(112, slope as f32).f32_at(116, inter as f32),
        }
    }

    pub fn qform(self, code: i32, bcd: [f64; 3], offset: [f64; 3]) -> Self {
        match self.kind {
            Kind::Nifti2 => {
                let mut b = self.i32_at(344, code);
                for k in 0..3 {
                    b = b.f64_at(352 + 8 * k, bcd[k]).f64_at(376 + 8 * k, offset[k]);
                }
                b
            }
            _ => {
                let mut b = self.i16_at(252, code as i16);
                for k in 0..3 {
                    b = b
                        .f32_at(256 + 4 * k, bcd[k] as f32)
                        .f32_at(268 + 4 * k, offset[k] as f32);
                }
                b
            }
        }
    }

    pub fn sform(self, code: i32, rows: [[f64; 4]; 3]) -> Self {
        match self.kind {
            Kind::Nifti2 => {
                let mut b = self.i32_at(348, code);
                for (r, row) in rows.iter().enumerate() {
                    for (c, &v) in row.iter().enumerate() {
                        b = b.f64_at(400 + 32 * r + 8 * c, v);
                    }
                }
                b
            }
            _ => {
                let mut b = self.i16_at(254, code as i16);
                for (r, row) in rows.iter().enumerate() {
                    for (c, &v) in row.iter().enumerate() {
                        b = b.f32_at(280 + 16 * r + 4 * c, v as f32);
                    }
                }
                b
            }
        }
    }

    pub fn build(self) -> Vec<u8> {
        self.bytes
    }

    /// A single file: header, the 4-byte extension flag (`[1,0,0,0]` when `extensions` is non-empty), the
    /// extensions (each `(ecode, payload)`, padded to a multiple of 16), padding up to `vox_offset` (or none
    /// when the header's vox_offset is smaller) and `data`.
    pub fn single_file(self, extensions: &[(i32, &[u8])], data: &[u8]) -> Vec<u8> {
        let order = self.order;
        let kind = self.kind;
        let mut out = self.bytes;
        out.extend_from_slice(if extensions.is_empty() {
            &[0, 0, 0, 0]
        } else {
            &[1, 0, 0, 0]
        });
        out.extend(extension_bytes(order, extensions));
        let vox = match kind {
            Kind::Nifti2 => read_i64(&out[168..176], order) as usize,
            _ => read_f32(&out[108..112], order) as usize,
        };
        if out.len() < vox {
            out.resize(vox, 0);
        }
        out.extend_from_slice(data);
        out
    }
}

/// NIfTI extensions: esize (multiple of 16, including the 8-byte head), ecode, payload, zero padding.
pub fn extension_bytes(order: ByteOrder, extensions: &[(i32, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for &(code, payload) in extensions {
        let esize = (8 + payload.len()).div_ceil(16) * 16;
        let (s, c) = match order {
            ByteOrder::Little => ((esize as i32).to_le_bytes(), code.to_le_bytes()),
            ByteOrder::Big => ((esize as i32).to_be_bytes(), code.to_be_bytes()),
        };
        out.extend_from_slice(&s);
        out.extend_from_slice(&c);
        out.extend_from_slice(payload);
        out.resize(out.len() + esize - 8 - payload.len(), 0);
    }
    out
}

fn read_i64(b: &[u8], order: ByteOrder) -> i64 {
    let a: [u8; 8] = b.try_into().unwrap();
    match order {
        ByteOrder::Little => i64::from_le_bytes(a),
        ByteOrder::Big => i64::from_be_bytes(a),
    }
}

fn read_f32(b: &[u8], order: ByteOrder) -> f32 {
    let a: [u8; 4] = b.try_into().unwrap();
    match order {
        ByteOrder::Little => f32::from_le_bytes(a),
        ByteOrder::Big => f32::from_be_bytes(a),
    }
}

/// An MGH file: 284-byte header block, data, optional footer.
pub fn mgh_file(
    dims: [i32; 4],
    type_code: i32,
    good_ras: i16,
    delta: [f32; 3],
    mdc: [[f32; 3]; 3],
    pxyz: [f32; 3],
) -> Vec<u8> {
    let mut h = Vec::with_capacity(284);
    h.extend_from_slice(&1i32.to_be_bytes());
    for d in dims {
        h.extend_from_slice(&d.to_be_bytes());
    }
    h.extend_from_slice(&type_code.to_be_bytes());
    h.extend_from_slice(&0i32.to_be_bytes());
    h.extend_from_slice(&good_ras.to_be_bytes());
    for v in delta.iter().chain(mdc.iter().flatten()).chain(pxyz.iter()) {
        h.extend_from_slice(&v.to_be_bytes());
    }
    h.resize(284, 0);
    h
}
