//! Fixed-offset fields of a binary header block in one byte order, and nibabel's byte-order guess.

use crate::dtype::ByteOrder;

/// A header block read in one byte order. Callers check the block length first; a field outside the block
/// reads as zeros instead of panicking.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Fields<'a> {
    bytes: &'a [u8],
    order: ByteOrder,
}

macro_rules! field {
    ($name:ident, $t:ty, $n:literal) => {
        pub(crate) fn $name(&self, off: usize) -> $t {
            let b = self.array::<$n>(off);
            match self.order {
                ByteOrder::Little => <$t>::from_le_bytes(b),
                ByteOrder::Big => <$t>::from_be_bytes(b),
            }
        }
    };
}

impl<'a> Fields<'a> {
    pub(crate) fn new(bytes: &'a [u8], order: ByteOrder) -> Self {
        Fields { bytes, order }
    }

    pub(crate) fn order(&self) -> ByteOrder {
        self.order
    }

    fn array<const N: usize>(&self, off: usize) -> [u8; N] {
        let mut out = [0u8; N];
        if let Some(s) = off.checked_add(N).and_then(|end| self.bytes.get(off..end)) {
            out.copy_from_slice(s);
        }
        out
    }

    /// `len` raw bytes at `off` (empty when out of range).
    pub(crate) fn raw(&self, off: usize, len: usize) -> &'a [u8] {
        off.checked_add(len)
            .and_then(|end| self.bytes.get(off..end))
            .unwrap_or_default()
    }

    field!(i16, i16, 2);
    field!(i32, i32, 4);
    field!(i64, i64, 8);
    field!(f32, f32, 4);
    field!(f64, f64, 8);
}

/// nibabel's `AnalyzeHeader.guessed_endian`, shared by Analyze, SPM and NIfTI-1/2: read `dim[0]` in the
/// machine's byte order; 1..=7 means native; 0 is decided by whether the byte-swapped `sizeof_hdr` equals the
/// format's size (then swapped, else native); anything else means swapped. `dim0_width` is 2 (int16 dims) or
/// 8 (NIfTI-2's int64 dims).
pub(crate) fn guess_byte_order(
    block: &[u8],
    dim0_at: usize,
    dim0_width: usize,
    sizeof_hdr: i32,
) -> ByteOrder {
    let native = Fields::new(block, ByteOrder::NATIVE);
    let swapped = ByteOrder::NATIVE.swapped();
    let dim0 = if dim0_width == 8 {
        native.i64(dim0_at)
    } else {
        i64::from(native.i16(dim0_at))
    };
    match dim0 {
        0 if Fields::new(block, swapped).i32(0) == sizeof_hdr => swapped,
        0..=7 => ByteOrder::NATIVE,
        _ => swapped,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_both_orders_and_never_panics_out_of_range() {
        let b = [0x01, 0x02, 0x03, 0x04, 0, 0, 0x80, 0x3f];
        let le = Fields::new(&b, ByteOrder::Little);
        let be = Fields::new(&b, ByteOrder::Big);
        assert_eq!(le.i16(0), 0x0201);
        assert_eq!(be.i16(0), 0x0102);
        assert_eq!(le.i32(0), 0x04030201);
        assert_eq!(le.f32(4), 1.0);
        assert_eq!(be.i64(0), 0x010203040000803f);
        assert_eq!(le.i32(6), 0, "past the end reads zeros");
        assert_eq!(le.raw(6, 4), &[] as &[u8]);
        assert_eq!(le.raw(usize::MAX, 4), &[] as &[u8]);
    }

    fn block(dim0: i16, sizeof: i32, order: ByteOrder) -> Vec<u8> {
        let mut b = vec![0u8; 348];
        let (s, d) = match order {
            ByteOrder::Little => (sizeof.to_le_bytes(), dim0.to_le_bytes()),
            ByteOrder::Big => (sizeof.to_be_bytes(), dim0.to_be_bytes()),
        };
        b[0..4].copy_from_slice(&s);
        b[40..42].copy_from_slice(&d);
        b
    }

    #[test]
    fn byte_order_guess_follows_nibabel() {
        for order in [ByteOrder::Little, ByteOrder::Big] {
            for dim0 in 1..=7 {
                assert_eq!(
                    guess_byte_order(&block(dim0, 348, order), 40, 2, 348),
                    order
                );
            }
            // dim[0] == 0: the sizeof_hdr tie-break.
            assert_eq!(guess_byte_order(&block(0, 348, order), 40, 2, 348), order);
        }
        // dim[0] == 0 and a sizeof_hdr that is 348 in neither order: native.
        assert_eq!(
            guess_byte_order(&block(0, -1, ByteOrder::Big), 40, 2, 348),
            ByteOrder::NATIVE
        );
        // Negative or > 7 in native order: swapped, even if nonsense after swapping.
        let mut b = block(0, 348, ByteOrder::NATIVE);
        b[40..42].copy_from_slice(&(-1i16).to_ne_bytes());
        assert_eq!(
            guess_byte_order(&b, 40, 2, 348),
            ByteOrder::NATIVE.swapped()
        );
    }
}
