//! NumPy `.npy` files, versions 1.0, 2.0 and 3.0: the reader (shape, dtype with byte order, `fortran_order`,
//! data offset) and a writer whose output `numpy.load` reads back with the exact dtype.
//!
//! Layout: `\x93NUMPY`, major, minor, header length (u16 LE for v1, u32 LE for v2/v3), then a Python dict
//! literal `{'descr': '<i2', 'fortran_order': False, 'shape': (2, 3), }` padded with spaces to a 64-byte
//! boundary and ended by `\n` (latin-1 for v1/v2, UTF-8 for v3). Like `numpy.load`, headers longer than
//! 10000 bytes are refused. Supported dtypes are this crate's scalars; NIfTI's RGB24/RGBA32 are the structured
//! dtypes `[('R','|u1'),('G','|u1'),('B','|u1')(,('A','|u1'))]` (nibabel's RGB dtypes); any other structured,
//! object, bool, string or datetime dtype is `VoxelError::Unsupported`.

use std::io::{self, Write};
use std::path::Path;

use super::affine::IDENTITY;
use super::source::Source;
use super::{ArrayLayout, Format, Order, Parsed, checked_shape};
use crate::dtype::{ByteOrder, DType, Scalar};
use crate::error::{Result, VoxelError};

pub const MAGIC: &[u8] = b"\x93NUMPY";
/// numpy's `_MAX_HEADER_SIZE` (the default `max_header_size` of `numpy.load`).
pub const MAX_HEADER_LEN: usize = 10_000;
const ARRAY_ALIGN: usize = 64;
/// numpy's `GROWTH_AXIS_MAX_DIGITS`: spare room after the dict for in-place growth of the shape.
const GROWTH_AXIS_MAX_DIGITS: usize = 21;
const RGB_DESCR: &str = "[('R', '|u1'), ('G', '|u1'), ('B', '|u1')]";
const RGBA_DESCR: &str = "[('R', '|u1'), ('G', '|u1'), ('B', '|u1'), ('A', '|u1')]";

/// A parsed header dict.
#[derive(Debug, Clone, PartialEq)]
pub struct NpyHeader {
    pub dtype: DType,
    pub fortran_order: bool,
    pub shape: Vec<usize>,
}

/// Parse an npy file's preamble and header.
pub(crate) fn parse(src: &mut dyn Source) -> Result<Parsed> {
    let path = src.path().to_path_buf();
    let pre = src.read(0, 8)?;
    if pre.len() < 8 || !pre.starts_with(MAGIC) {
        return Err(VoxelError::header(
            &path,
            "not an npy file (no \\x93NUMPY magic)",
        ));
    }
    let (major, minor) = (pre[6], pre[7]);
    let (len_size, utf8) = match (major, minor) {
        (1, 0) => (2, false),
        (2, 0) | (3, 0) => (4, major == 3),
        _ => {
            return Err(VoxelError::header_field(
                &path,
                "version",
                format!("{major}.{minor}"),
                format!("npy format version {major}.{minor} not supported"),
            ));
        }
    };
    let len_bytes = src.read(8, len_size)?;
    if len_bytes.len() < len_size {
        return Err(super::analyze::short_header(
            &path,
            8 + len_size,
            8 + len_bytes.len(),
        ));
    }
    let header_len = len_bytes
        .iter()
        .rev()
        .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
    if header_len > MAX_HEADER_LEN {
        return Err(VoxelError::header_field(
            &path,
            "header_len",
            header_len,
            format!(
                "npy header length {header_len} exceeds numpy's limit of {MAX_HEADER_LEN} bytes"
            ),
        ));
    }
    let start = 8 + len_size;
    let raw = src.read(start as u64, header_len)?;
    if raw.len() < header_len {
        return Err(super::analyze::short_header(
            &path,
            start + header_len,
            start + raw.len(),
        ));
    }
    let text = if utf8 {
        String::from_utf8(raw)
            .map_err(|_| VoxelError::header(&path, "npy v3 header is not UTF-8"))?
    } else {
        raw.iter().map(|&b| char::from(b)).collect()
    };
    let h = parse_header_text(&text, &path)?;
    let offset = (start + header_len) as u64;
    let dims: Vec<i64> = h.shape.iter().map(|&d| d as i64).collect();
    let shape = checked_shape(&path, &dims, h.dtype, offset)?;
    Ok(Parsed {
        format: Format::Npy,
        zooms: vec![1.0; shape.len()],
        layout: ArrayLayout::new(shape, h.dtype)
            .with_offset(offset)
            .with_order(if h.fortran_order { Order::F } else { Order::C }),
        affine: IDENTITY,
        world: super::WorldMeta::default(),
        header_bytes: offset,
    })
}

/// Parse the header dict text (numpy's `safe_eval` of a literal with exactly the keys `descr`,
/// `fortran_order` and `shape`).
pub fn parse_header_text(text: &str, path: &Path) -> Result<NpyHeader> {
    let bad = |msg: String| VoxelError::header(path, format!("npy header: {msg}"));
    let mut p = Lit {
        s: text.as_bytes(),
        i: 0,
    };
    let value = p.value(0).map_err(bad)?;
    p.skip_ws();
    if p.i != p.s.len() {
        return Err(bad(format!(
            "unexpected text after the dict at byte {}",
            p.i
        )));
    }
    let Value::Dict(items) = value else {
        return Err(bad("not a dict".into()));
    };
    let mut keys: Vec<&str> = items.iter().map(|(k, _)| k.as_str()).collect();
    keys.sort_unstable();
    if keys != ["descr", "fortran_order", "shape"] {
        return Err(bad(format!(
            "keys {keys:?} are not exactly descr, fortran_order, shape"
        )));
    }
    let get = |k: &str| items.iter().find(|(key, _)| key == k).map(|(_, v)| v);
    let dtype = match get("descr") {
        Some(v) => descr_dtype(v, path)?,
        None => return Err(bad("no descr".into())),
    };
    let fortran_order = match get("fortran_order") {
        Some(Value::Bool(b)) => *b,
        other => return Err(bad(format!("fortran_order is not a bool: {other:?}"))),
    };
    let shape = match get("shape") {
        Some(Value::Tuple(items)) => items
            .iter()
            .map(|v| match v {
                Value::Int(n) if *n >= 0 => {
                    usize::try_from(*n).map_err(|_| bad(format!("dimension {n} too large")))
                }
                other => Err(bad(format!(
                    "shape entry {other:?} is not a non-negative int"
                ))),
            })
            .collect::<Result<Vec<usize>>>()?,
        other => return Err(bad(format!("shape is not a tuple: {other:?}"))),
    };
    Ok(NpyHeader {
        dtype,
        fortran_order,
        shape,
    })
}

/// A numpy type string (`'<i2'`, `'|u1'`, `'>c16'`) or nibabel's RGB/RGBA record list.
fn descr_dtype(v: &Value, path: &Path) -> Result<DType> {
    let unsupported = |what: String| VoxelError::Unsupported {
        path: path.display().to_string(),
        what,
    };
    let s = match v {
        Value::Str(s) => s,
        Value::List(fields) => {
            return record_dtype(fields)
                .ok_or_else(|| unsupported(format!("npy structured dtype {v:?}")));
        }
        other => {
            return Err(VoxelError::header_field(
                path,
                "descr",
                format!("{other:?}"),
                format!("npy descr {other:?} is not a dtype"),
            ));
        }
    };
    let (order, body) = match s.as_bytes().first() {
        Some(b'<') => (Some(ByteOrder::Little), &s[1..]),
        Some(b'>') => (Some(ByteOrder::Big), &s[1..]),
        Some(b'|') | Some(b'=') => (None, &s[1..]),
        _ => (None, s.as_str()),
    };
    let scalar = match body {
        "u1" => Scalar::U8,
        "i1" => Scalar::I8,
        "u2" => Scalar::U16,
        "i2" => Scalar::I16,
        "u4" => Scalar::U32,
        "i4" => Scalar::I32,
        "u8" => Scalar::U64,
        "i8" => Scalar::I64,
        "f2" => Scalar::F16,
        "f4" => Scalar::F32,
        "f8" => Scalar::F64,
        "c8" => Scalar::C64,
        "c16" => Scalar::C128,
        _ => {
            return Err(unsupported(format!(
                "npy dtype '{s}' (object, bool, string, datetime and 128-bit types are not read)"
            )));
        }
    };
    Ok(DType::new(scalar, order.unwrap_or(ByteOrder::NATIVE)))
}

/// `[('R','|u1'),('G','|u1'),('B','|u1')]` → RGB24, with `('A','|u1')` → RGBA32.
fn record_dtype(fields: &[Value]) -> Option<DType> {
    let names: Vec<&str> = fields
        .iter()
        .map(|f| match f {
            Value::Tuple(t) => match t.as_slice() {
                [Value::Str(name), Value::Str(ty)]
                    if ty == "|u1" || ty == "u1" || ty == "<u1" || ty == ">u1" =>
                {
                    Some(name.as_str())
                }
                _ => None,
            },
            _ => None,
        })
        .collect::<Option<_>>()?;
    match names.as_slice() {
        ["R", "G", "B"] => Some(DType::native(Scalar::Rgb24)),
        ["R", "G", "B", "A"] => Some(DType::native(Scalar::Rgba32)),
        _ => None,
    }
}

/// Python literal values that can appear in an npy header.
#[derive(Debug, Clone, PartialEq)]
enum Value {
    Str(String),
    Int(i128),
    Bool(bool),
    None,
    Tuple(Vec<Value>),
    List(Vec<Value>),
    Dict(Vec<(String, Value)>),
}

/// A small recursive-descent reader for those literals.
struct Lit<'a> {
    s: &'a [u8],
    i: usize,
}

const MAX_DEPTH: usize = 16;

impl Lit<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn skip_ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }

    fn eat(&mut self, c: u8) -> bool {
        self.skip_ws();
        if self.peek() == Some(c) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    fn value(&mut self, depth: usize) -> Result<Value, String> {
        if depth > MAX_DEPTH {
            return Err("nested too deeply".into());
        }
        self.skip_ws();
        match self.peek() {
            Some(b'{') => self.dict(depth),
            Some(b'(') => self.seq(b')', depth).map(Value::Tuple),
            Some(b'[') => self.seq(b']', depth).map(Value::List),
            Some(b'\'' | b'"') => self.string().map(Value::Str),
            Some(b'-' | b'+' | b'0'..=b'9') => self.int(),
            Some(c) if c.is_ascii_alphabetic() => self.word(),
            Some(c) => Err(format!("unexpected '{}' at byte {}", char::from(c), self.i)),
            None => Err("unexpected end".into()),
        }
    }

    /// Items up to `close`, with an optional trailing comma.
    fn seq(&mut self, close: u8, depth: usize) -> Result<Vec<Value>, String> {
        self.i += 1;
        let mut items = Vec::new();
        loop {
            if self.eat(close) {
                return Ok(items);
            }
            items.push(self.value(depth + 1)?);
            if !self.eat(b',') {
                return if self.eat(close) {
                    Ok(items)
                } else {
                    Err(format!("expected ',' at byte {}", self.i))
                };
            }
        }
    }

    fn dict(&mut self, depth: usize) -> Result<Value, String> {
        self.i += 1;
        let mut items = Vec::new();
        loop {
            if self.eat(b'}') {
                return Ok(Value::Dict(items));
            }
            self.skip_ws();
            let key = match self.value(depth + 1)? {
                Value::Str(k) => k,
                other => return Err(format!("dict key {other:?} is not a string")),
            };
            if !self.eat(b':') {
                return Err(format!("expected ':' at byte {}", self.i));
            }
            let v = self.value(depth + 1)?;
            if items.iter().any(|(k, _): &(String, Value)| *k == key) {
                return Err(format!("duplicate key '{key}'"));
            }
            items.push((key, v));
            if !self.eat(b',') {
                return if self.eat(b'}') {
                    Ok(Value::Dict(items))
                } else {
                    Err(format!("expected ',' at byte {}", self.i))
                };
            }
        }
    }

    fn string(&mut self) -> Result<String, String> {
        let quote = self.peek();
        self.i += 1;
        let start = self.i;
        while let Some(c) = self.peek() {
            if Some(c) == quote {
                let s = String::from_utf8_lossy(self.s.get(start..self.i).unwrap_or_default())
                    .into_owned();
                self.i += 1;
                return Ok(s);
            }
            if c == b'\\' {
                return Err("escapes in strings are not supported".into());
            }
            self.i += 1;
        }
        Err("unterminated string".into())
    }

    fn int(&mut self) -> Result<Value, String> {
        let start = self.i;
        if matches!(self.peek(), Some(b'-' | b'+')) {
            self.i += 1;
        }
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.i += 1;
        }
        let text = std::str::from_utf8(self.s.get(start..self.i).unwrap_or_default()).unwrap_or("");
        // Python 2 era files write long ints as `3L` (numpy filters the suffix).
        if matches!(self.peek(), Some(b'L' | b'l')) {
            self.i += 1;
        }
        text.parse::<i128>()
            .map(Value::Int)
            .map_err(|_| format!("bad integer '{text}'"))
    }

    fn word(&mut self) -> Result<Value, String> {
        let start = self.i;
        while matches!(self.peek(), Some(c) if c.is_ascii_alphanumeric() || c == b'_') {
            self.i += 1;
        }
        match self.s.get(start..self.i).unwrap_or_default() {
            b"True" => Ok(Value::Bool(true)),
            b"False" => Ok(Value::Bool(false)),
            b"None" => Ok(Value::None),
            w => Err(format!("unexpected name '{}'", String::from_utf8_lossy(w))),
        }
    }
}

/// numpy's `dtype_to_descr` text for a dtype.
fn descr_text(dtype: DType) -> String {
    match dtype.scalar {
        Scalar::Rgb24 => RGB_DESCR.to_string(),
        Scalar::Rgba32 => RGBA_DESCR.to_string(),
        _ => format!("'{}'", dtype.numpy_str()),
    }
}

/// Python's `repr` of a shape tuple.
fn shape_repr(shape: &[usize]) -> String {
    match shape {
        [] => "()".into(),
        [d] => format!("({d},)"),
        _ => format!(
            "({})",
            shape
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// The complete preamble + header numpy's `write_array` produces (version 1.0 when it fits, else 2.0).
/// Like numpy, an array that is both C- and F-contiguous (zero-size, or at most one axis longer than 1) is
/// written with `fortran_order: False`; its bytes are the same in either order.
pub fn header_bytes(dtype: DType, shape: &[usize], fortran_order: bool) -> Vec<u8> {
    let both = shape.contains(&0) || shape.iter().filter(|&&d| d > 1).count() <= 1;
    let fortran_order = fortran_order && !both;
    let order = if fortran_order { "True" } else { "False" };
    let mut dict = format!(
        "{{'descr': {}, 'fortran_order': {order}, 'shape': {}, }}",
        descr_text(dtype),
        shape_repr(shape)
    );
    let growth = if fortran_order {
        shape.last()
    } else {
        shape.first()
    };
    if let Some(d) = growth {
        dict.push_str(&" ".repeat(GROWTH_AXIS_MAX_DIGITS.saturating_sub(d.to_string().len())));
    }
    let hlen = dict.len() + 1;
    let wrap = |len_size: usize| {
        let padlen = ARRAY_ALIGN - ((MAGIC.len() + 2 + len_size + hlen) % ARRAY_ALIGN);
        (padlen, hlen + padlen)
    };
    let (padlen, total) = wrap(2);
    let mut out = MAGIC.to_vec();
    if let Ok(total16) = u16::try_from(total) {
        out.extend_from_slice(&[1, 0]);
        out.extend_from_slice(&total16.to_le_bytes());
        out.extend_from_slice(dict.as_bytes());
        out.extend(std::iter::repeat_n(b' ', padlen));
    } else {
        let (padlen, total) = wrap(4);
        out.extend_from_slice(&[2, 0]);
        out.extend_from_slice(&(total as u32).to_le_bytes());
        out.extend_from_slice(dict.as_bytes());
        out.extend(std::iter::repeat_n(b' ', padlen));
    }
    out.push(b'\n');
    out
}

/// Write an `.npy` file: `data` holds the elements in `dtype`'s byte order, laid out in F order when
/// `fortran_order` (else C). `numpy.load` reads back the same shape, dtype (byte order included) and values.
pub fn write_npy(
    w: &mut impl Write,
    dtype: DType,
    shape: &[usize],
    fortran_order: bool,
    data: &[u8],
) -> io::Result<()> {
    let expected = ArrayLayout::new(shape.to_vec(), dtype).checked_byte_len();
    if expected != Some(data.len() as u64) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "npy data of {} bytes does not match shape {shape:?} of {dtype}",
                data.len()
            ),
        ));
    }
    w.write_all(&header_bytes(dtype, shape, fortran_order))?;
    w.write_all(data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::source::SliceSource;

    fn parse_bytes(bytes: &[u8], whole: bool) -> Result<Parsed> {
        let mut src = SliceSource::new(bytes, whole, Path::new("t.npy"));
        parse(&mut src)
    }

    fn file(version: u8, header: &str) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&[version, 0]);
        if version == 1 {
            out.extend_from_slice(&(header.len() as u16).to_le_bytes());
        } else {
            out.extend_from_slice(&(header.len() as u32).to_le_bytes());
        }
        out.extend_from_slice(header.as_bytes());
        out
    }

    #[test]
    fn versions_orders_and_dtypes() {
        let h = "{'descr': '>i2', 'fortran_order': True, 'shape': (2, 3, 4), }   \n";
        for v in [1, 2, 3] {
            let p = parse_bytes(&file(v, h), false).unwrap();
            assert_eq!(p.format, Format::Npy);
            assert_eq!(p.layout.shape, vec![2, 3, 4]);
            assert_eq!(p.layout.dtype.numpy_str(), ">i2");
            assert_eq!(p.layout.order, Order::F);
            let start = if v == 1 { 10 } else { 12 };
            assert_eq!(
                (p.layout.offset, p.header_bytes),
                (start + h.len() as u64, start + h.len() as u64)
            );
            assert_eq!(p.zooms, vec![1.0; 3]);
            assert_eq!(p.affine, IDENTITY);
        }
        let c = parse_bytes(
            &file(
                1,
                "{'shape': (), 'fortran_order': False, 'descr': '<c16'}\n",
            ),
            false,
        )
        .unwrap();
        assert_eq!(
            (
                c.layout.shape.len(),
                c.layout.order,
                c.layout.dtype.numpy_str()
            ),
            (0, Order::C, "<c16".to_string())
        );
        for (descr, want) in [
            ("|u1", "|u1"),
            ("|i1", "|i1"),
            ("<f2", "<f2"),
            (">u8", ">u8"),
            ("<c8", "<c8"),
        ] {
            let h = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': (5,), }}\n");
            assert_eq!(
                parse_bytes(&file(1, &h), false)
                    .unwrap()
                    .layout
                    .dtype
                    .numpy_str(),
                want
            );
        }
        let rgb = "{'descr': [('R', '|u1'), ('G', '|u1'), ('B', '|u1')], 'fortran_order': False, 'shape': (2,), }";
        assert_eq!(
            parse_bytes(&file(1, rgb), false)
                .unwrap()
                .layout
                .dtype
                .scalar,
            Scalar::Rgb24
        );
        let py2 = "{'descr': '<i4', 'fortran_order': False, 'shape': (2L, 3L), }";
        assert_eq!(
            parse_bytes(&file(1, py2), false).unwrap().layout.shape,
            vec![2, 3]
        );
    }

    #[test]
    fn unsupported_dtypes_are_clear() {
        for descr in [
            "'|O'",
            "'|b1'",
            "'<U3'",
            "'<M8[ns]'",
            "'<f16'",
            "[('a', '<i4'), ('b', '<f8')]",
            "[('R', '|u1')]",
        ] {
            let h = format!("{{'descr': {descr}, 'fortran_order': False, 'shape': (5,), }}");
            match parse_bytes(&file(1, &h), false) {
                Err(VoxelError::Unsupported { path, .. }) => assert_eq!(path, "t.npy"),
                other => panic!("{descr}: {other:?}"),
            }
        }
    }

    #[test]
    fn malformed_headers() {
        let bad = [
            "{'descr': '<i2', 'fortran_order': False}",
            "{'descr': '<i2', 'fortran_order': False, 'shape': (2,), 'x': 1}",
            "{'descr': '<i2', 'fortran_order': 0, 'shape': (2,)}",
            "{'descr': '<i2', 'fortran_order': False, 'shape': (-2,)}",
            "{'descr': '<i2', 'fortran_order': False, 'shape': [2]}",
            "{'descr': '<i2', 'fortran_order': False, 'shape': (2,), 'shape': (3,)}",
            "{'descr': '<i2', 'fortran_order': False, 'shape': (2,)} trailing",
            "{'descr': '<i2' 'fortran_order': False, 'shape': (2,)}",
            "{'descr': '<i2', 'fortran_order': False, 'shape': (99999999999999999999999999999999999999999,)}",
            "{'descr': 5, 'fortran_order': False, 'shape': (2,)}",
            "['descr']",
            "{'descr': '<i\\x32', 'fortran_order': False, 'shape': (2,)}",
            "",
            "{",
            &"(".repeat(100),
        ];
        for h in bad {
            let e = parse_bytes(&file(1, h), true).unwrap_err().to_string();
            assert!(e.contains("t.npy"), "{h}: {e}");
        }
        // Absurd shape: size overflow.
        let h = "{'descr': '<f8', 'fortran_order': False, 'shape': (4294967296, 4294967296, 4294967296), }";
        assert!(
            parse_bytes(&file(1, h), true)
                .unwrap_err()
                .to_string()
                .contains("too large")
        );
        // Version and length checks.
        let mut v4 = file(1, "{}");
        v4[6] = 4;
        assert!(
            parse_bytes(&v4, true)
                .unwrap_err()
                .to_string()
                .contains("version 4.0")
        );
        let mut long = MAGIC.to_vec();
        long.extend_from_slice(&[2, 0]);
        long.extend_from_slice(&20_000u32.to_le_bytes());
        assert!(
            parse_bytes(&long, false)
                .unwrap_err()
                .to_string()
                .contains("limit")
        );
        // Truncated header: whole → Truncated error; prefix → asks for the header end.
        let f = file(
            1,
            "{'descr': '<i2', 'fortran_order': False, 'shape': (2,), }",
        );
        assert!(matches!(
            parse_bytes(&f[..30], true),
            Err(VoxelError::Truncated { .. })
        ));
        assert!(matches!(
            parse_bytes(&f[..30], false),
            Err(VoxelError::Truncated { expected, .. }) if expected == f.len() as u64
        ));
        let mut v3 = file(
            3,
            "{'descr': '<i2', 'fortran_order': False, 'shape': (2,), }",
        );
        v3.push(0xff);
        let n = v3.len() - 12;
        v3[8..12].copy_from_slice(&(n as u32).to_le_bytes());
        assert!(
            parse_bytes(&v3, true)
                .unwrap_err()
                .to_string()
                .contains("UTF-8")
        );
    }

    #[test]
    fn writer_matches_numpy_layout_and_reads_back() {
        let cases: [(DType, &[usize], bool); 6] = [
            (DType::new(Scalar::I16, ByteOrder::Big), &[2, 3, 4], false),
            (DType::new(Scalar::F64, ByteOrder::Little), &[3, 2], true),
            (DType::native(Scalar::U8), &[], false),
            (DType::native(Scalar::Rgb24), &[2, 2], false),
            (DType::native(Scalar::Rgba32), &[1], true),
            (DType::new(Scalar::C64, ByteOrder::Big), &[0, 5], false),
        ];
        for (dtype, shape, fortran) in cases {
            let n = ArrayLayout::new(shape.to_vec(), dtype)
                .checked_byte_len()
                .unwrap() as usize;
            let data: Vec<u8> = (0..n).map(|i| i as u8).collect();
            let mut out = Vec::new();
            write_npy(&mut out, dtype, shape, fortran, &data).unwrap();
            let header_len = out.len() - n;
            assert_eq!(header_len % 64, 0, "numpy aligns the data to 64 bytes");
            assert_eq!(out[header_len - 1], b'\n');
            let p = parse_bytes(&out, true).unwrap();
            assert_eq!(
                (p.layout.dtype, p.layout.shape.as_slice(), p.layout.offset),
                (dtype, shape, header_len as u64)
            );
            let trivially_both =
                shape.contains(&0) || shape.iter().filter(|&&d| d > 1).count() <= 1;
            assert_eq!(
                p.layout.order,
                if fortran && !trivially_both {
                    Order::F
                } else {
                    Order::C
                }
            );
            assert_eq!(&out[header_len..], &data[..]);
        }
        // Exactly numpy 2's bytes for np.save(f, np.zeros((2, 3), '>i2')).
        let want = "{'descr': '>i2', 'fortran_order': False, 'shape': (2, 3), }";
        let h = header_bytes(DType::new(Scalar::I16, ByteOrder::Big), &[2, 3], false);
        assert_eq!(&h[..10], b"\x93NUMPY\x01\x00\x76\x00");
        assert!(h[10..].starts_with(want.as_bytes()));
        assert_eq!(h.len(), 128);
        assert!(
            write_npy(
                &mut Vec::new(),
                DType::native(Scalar::I16),
                &[2],
                false,
                &[0; 3]
            )
            .is_err()
        );
    }

    #[test]
    fn large_headers_switch_to_version_2() {
        let shape = vec![1usize; 30_000];
        let h = header_bytes(DType::native(Scalar::U8), &shape, false);
        assert_eq!(&h[6..8], &[2, 0]);
        assert_eq!(h.len() % 64, 0);
    }
}
