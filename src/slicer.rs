//! numpy *basic* indexing: a slice spec (`"10:20, ::-2, ..., None"`) and its canonical form for one array shape.
//!
//! [`SliceSpec`] is what the user wrote, parsed from Python syntax. [`canonical_slice`] resolves it against a shape
//! exactly as numpy does (not as nibabel's `canonical_slicers` does, see the reference §1.8 and §8 Q1–Q3): negative
//! integers count from the end and must land inside the axis, slice bounds are clamped like CPython's
//! `slice.indices()`, `...` expands to as many full slices as needed, and `None` inserts a length-1 axis.
//! The result, [`CanonicalSlice`], lists for every real axis the first element, the step and the count, which is
//! all the read planner (`plan`) needs.

use std::fmt;
use std::str::FromStr;

use crate::error::{Result, VoxelError};

/// One component of a numpy index tuple.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Index {
    /// An integer; negative counts from the end of the axis.
    Int(i64),
    /// `start:stop:step`, each part optional, with Python's meaning.
    Slice {
        start: Option<i64>,
        stop: Option<i64>,
        step: Option<i64>,
    },
    /// `...`: as many full slices as the real axes not indexed otherwise.
    Ellipsis,
    /// `None` / `np.newaxis`: a new axis of length 1.
    NewAxis,
}

impl Index {
    /// `:`, the full slice.
    pub const FULL: Index = Index::Slice {
        start: None,
        stop: None,
        step: None,
    };

    fn is_real(&self) -> bool {
        matches!(self, Index::Int(_) | Index::Slice { .. })
    }
}

impl fmt::Display for Index {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Index::Int(i) => write!(f, "{i}"),
            Index::Ellipsis => f.write_str("..."),
            Index::NewAxis => f.write_str("None"),
            Index::Slice { start, stop, step } => {
                if let Some(s) = start {
                    write!(f, "{s}")?;
                }
                f.write_str(":")?;
                if let Some(s) = stop {
                    write!(f, "{s}")?;
                }
                if let Some(s) = step {
                    write!(f, ":{s}")?;
                }
                Ok(())
            }
        }
    }
}

/// A numpy basic index: the tuple inside `a[...]`. An empty tuple selects the whole array.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct SliceSpec(pub Vec<Index>);

impl SliceSpec {
    /// Parse Python subscript syntax: `"10:20, ::-2, ..., None"`, `"-1"`, `""`, `"()"`, `"(1, 2)"`, `"np.newaxis"`.
    pub fn parse(text: &str) -> Result<SliceSpec> {
        parse::parse_spec(text)
    }

    /// `""`: the whole array.
    pub fn all() -> SliceSpec {
        SliceSpec(Vec::new())
    }
}

impl FromStr for SliceSpec {
    type Err = VoxelError;

    fn from_str(s: &str) -> Result<SliceSpec> {
        SliceSpec::parse(s)
    }
}

/// Python syntax that parses back to the same spec (`""` for the whole array, `"1"` for a single integer).
impl fmt::Display for SliceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (k, item) in self.0.iter().enumerate() {
            if k > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{item}")?;
        }
        Ok(())
    }
}

/// What one output position of a canonical slice takes from the array.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AxisSel {
    /// A single element of a real axis; the axis disappears from the result.
    Index(usize),
    /// `len` elements of a real axis: `start`, `start + step`, ... `step` is never 0 and may be negative;
    /// when `len` is 0, `start` is 0.
    Range {
        start: usize,
        step: isize,
        len: usize,
    },
    /// A new axis of length 1 (no real axis consumed).
    NewAxis,
}

impl AxisSel {
    /// All `len` elements of an axis, in order.
    pub fn whole(len: usize) -> AxisSel {
        AxisSel::Range {
            start: 0,
            step: 1,
            len,
        }
    }

    fn is_real(&self) -> bool {
        !matches!(self, AxisSel::NewAxis)
    }
}

/// A slice spec resolved against a shape: exactly one non-`NewAxis` item per real axis, in axis order, with
/// `NewAxis` items where the spec had `None`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CanonicalSlice {
    pub items: Vec<AxisSel>,
}

impl CanonicalSlice {
    /// The numpy result shape: integer-indexed axes dropped, `NewAxis` as 1.
    pub fn out_shape(&self) -> Vec<usize> {
        self.items
            .iter()
            .filter_map(|item| match item {
                AxisSel::Index(_) => None,
                AxisSel::Range { len, .. } => Some(*len),
                AxisSel::NewAxis => Some(1),
            })
            .collect()
    }

    /// True when this selects every element of `shape` in forward order and adds no axis, i.e. the result is the
    /// stored array itself (nibabel reads such a request in one go).
    pub fn is_full(&self, shape: &[usize]) -> bool {
        self.items.len() == shape.len()
            && self
                .items
                .iter()
                .zip(shape)
                .all(|(item, &dim)| match *item {
                    AxisSel::Range { start, step, len } => {
                        len == dim && (len <= 1 || step == 1) && (len == 0 || start == 0)
                    }
                    _ => false,
                })
    }

    /// The per-axis selections, without the `NewAxis` items.
    pub fn real_axes(&self) -> impl Iterator<Item = &AxisSel> {
        self.items.iter().filter(|item| item.is_real())
    }

    /// The whole array.
    pub fn full(shape: &[usize]) -> CanonicalSlice {
        CanonicalSlice {
            items: shape.iter().map(|&len| AxisSel::whole(len)).collect(),
        }
    }

    /// A box of step-1 ranges, one per axis (an empty or reversed range selects nothing). Not checked against any
    /// shape here; the read planner checks it.
    pub fn from_ranges(ranges: &[std::ops::Range<usize>]) -> CanonicalSlice {
        let items = ranges
            .iter()
            .map(|r| {
                let len = r.end.saturating_sub(r.start);
                let start = if len == 0 { 0 } else { r.start };
                AxisSel::Range {
                    start,
                    step: 1,
                    len,
                }
            })
            .collect();
        CanonicalSlice { items }
    }
}

/// Resolve `spec` against `shape` with numpy's rules (numpy's error messages, as [`VoxelError::Slice`]).
pub fn canonical_slice(spec: &SliceSpec, shape: &[usize]) -> Result<CanonicalSlice> {
    let ndim = shape.len();
    let ellipses = spec
        .0
        .iter()
        .filter(|i| matches!(i, Index::Ellipsis))
        .count();
    if ellipses > 1 {
        return Err(VoxelError::Slice(
            "an index can only have a single ellipsis ('...')".into(),
        ));
    }
    let n_real = spec.0.iter().filter(|i| i.is_real()).count();
    if n_real > ndim {
        return Err(VoxelError::Slice(format!(
            "too many indices for array: array is {ndim}-dimensional, but {n_real} were indexed"
        )));
    }
    let mut items = Vec::with_capacity(spec.0.len() + ndim);
    let mut axis = 0;
    for index in &spec.0 {
        match *index {
            Index::NewAxis => items.push(AxisSel::NewAxis),
            Index::Ellipsis => {
                for &dim in &shape[axis..axis + (ndim - n_real)] {
                    items.push(AxisSel::whole(dim));
                }
                axis += ndim - n_real;
            }
            Index::Int(i) => {
                items.push(AxisSel::Index(resolve_int(i, axis, shape[axis])?));
                axis += 1;
            }
            Index::Slice { start, stop, step } => {
                items.push(resolve_slice(start, stop, step, shape[axis])?);
                axis += 1;
            }
        }
    }
    // No Ellipsis: the axes not indexed are taken whole.
    for &dim in &shape[axis..] {
        items.push(AxisSel::whole(dim));
    }
    Ok(CanonicalSlice { items })
}

/// numpy: a negative index counts from the end; anything outside the axis after that is an IndexError.
fn resolve_int(i: i64, axis: usize, dim: usize) -> Result<usize> {
    let dim_i = i128::try_from(dim).unwrap_or(i128::MAX);
    let k = if i < 0 {
        i128::from(i) + dim_i
    } else {
        i128::from(i)
    };
    if k < 0 || k >= dim_i {
        return Err(VoxelError::Slice(format!(
            "index {i} is out of bounds for axis {axis} with size {dim}"
        )));
    }
    usize::try_from(k).map_err(|_| VoxelError::Slice(format!("index {i} does not fit in memory")))
}

/// CPython's `slice.indices(dim)` followed by the element count, as a first/step/len progression.
fn resolve_slice(
    start: Option<i64>,
    stop: Option<i64>,
    step: Option<i64>,
    dim: usize,
) -> Result<AxisSel> {
    let step = step.unwrap_or(1);
    if step == 0 {
        return Err(VoxelError::Slice("slice step cannot be zero".into()));
    }
    let n = i128::try_from(dim).unwrap_or(i128::MAX);
    let (lower, upper) = if step < 0 { (-1, n - 1) } else { (0, n) };
    let clamp = |bound: Option<i64>, default: i128| match bound {
        None => default,
        Some(b) if b < 0 => (i128::from(b) + n).max(lower),
        Some(b) => i128::from(b).min(upper),
    };
    let first = clamp(start, if step < 0 { upper } else { lower });
    let end = clamp(stop, if step < 0 { lower } else { upper });
    let s = i128::from(step);
    let len = if step > 0 && first < end {
        (end - first - 1) / s + 1
    } else if step < 0 && end < first {
        (first - end - 1) / -s + 1
    } else {
        0
    };
    let too_big = || VoxelError::Slice(format!("slice step {step} does not fit in memory"));
    let step = isize::try_from(step).map_err(|_| too_big())?;
    if len == 0 {
        return Ok(AxisSel::Range {
            start: 0,
            step,
            len: 0,
        });
    }
    // Both fit: 0 <= first < dim and 0 < len <= dim.
    let start = usize::try_from(first).map_err(|_| too_big())?;
    let len = usize::try_from(len).map_err(|_| too_big())?;
    Ok(AxisSel::Range { start, step, len })
}

/// The Python subscript parser: a tokenizer and a small recursive-descent parser over the tokens.
mod parse {
    use super::{Index, SliceSpec};
    use crate::error::{Result, VoxelError};

    /// Deeper parentheses than this are refused (keeps the recursion bounded on hostile input).
    const MAX_DEPTH: usize = 32;

    #[derive(Debug, Clone, PartialEq)]
    enum Tok {
        Int(i128),
        Colon,
        Comma,
        LParen,
        RParen,
        Plus,
        Minus,
        NoneKw,
        Ellipsis,
        Bool,
        /// A literal that is a number but not an integer (float, complex).
        NonInt(String),
    }

    struct Token {
        tok: Tok,
        /// Byte position in the text (for messages).
        pos: usize,
    }

    /// What a parenthesised or bare expression evaluates to. Integers stay wide until they become an index, so
    /// that `-9223372036854775808` parses and anything past i64 is reported once.
    #[derive(Debug)]
    enum Value {
        Int(i128),
        None,
        Ellipsis,
        Tuple(Vec<Value>),
    }

    pub(super) fn parse_spec(text: &str) -> Result<SliceSpec> {
        let fail = |msg: String| VoxelError::Slice(format!("cannot parse {text:?}: {msg}"));
        let tokens = tokenize(text).map_err(fail)?;
        let mut p = Parser {
            toks: &tokens,
            at: 0,
        };
        let spec = p.subscript().map_err(fail)?;
        Ok(spec)
    }

    fn tokenize(text: &str) -> Result<Vec<Token>, String> {
        let bytes = text.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while let Some(&b) = bytes.get(i) {
            let pos = i;
            let single = match b {
                b':' => Some(Tok::Colon),
                b',' => Some(Tok::Comma),
                b'(' => Some(Tok::LParen),
                b')' => Some(Tok::RParen),
                b'+' => Some(Tok::Plus),
                b'-' => Some(Tok::Minus),
                _ => None,
            };
            if b == b'[' {
                return Err(format!(
                    "advanced indexing is not supported (a list at position {pos})"
                ));
            }
            if let Some(tok) = single {
                out.push(Token { tok, pos });
                i += 1;
            } else if b.is_ascii_whitespace() {
                i += 1;
            } else if bytes[i..].starts_with(b"...") {
                out.push(Token {
                    tok: Tok::Ellipsis,
                    pos,
                });
                i += 3;
            } else if b.is_ascii_digit()
                || (b == b'.' && bytes.get(i + 1).is_some_and(u8::is_ascii_digit))
            {
                let end = number_end(bytes, i);
                let tok = number(&text[i..end])?;
                out.push(Token { tok, pos });
                i = end;
            } else if b.is_ascii_alphabetic() || b == b'_' {
                let end = i + bytes[i..]
                    .iter()
                    .take_while(|c| c.is_ascii_alphanumeric() || **c == b'_' || **c == b'.')
                    .count();
                out.push(Token {
                    tok: name(&text[i..end])?,
                    pos,
                });
                i = end;
            } else {
                let c = text[i..].chars().next().unwrap_or('?');
                return Err(format!("unexpected character {c:?} at position {pos}"));
            }
        }
        Ok(out)
    }

    /// End of a numeric literal starting at `i`: digits, letters, `_`, `.`, and a sign right after an exponent `e`.
    fn number_end(bytes: &[u8], mut i: usize) -> usize {
        let hex = bytes[i..].len() > 1 && bytes[i] == b'0' && matches!(bytes[i + 1], b'x' | b'X');
        while let Some(&c) = bytes.get(i) {
            let after_exp = !hex && i > 0 && matches!(bytes[i - 1], b'e' | b'E');
            if c.is_ascii_alphanumeric()
                || c == b'_'
                || c == b'.'
                || (after_exp && (c == b'+' || c == b'-'))
            {
                i += 1;
            } else {
                break;
            }
        }
        i
    }

    /// An integer literal the way Python writes them (`12`, `1_000`, `0x1f`, `0o17`, `0b101`), or the reason it is not.
    fn number(lit: &str) -> Result<Tok, String> {
        let lower = lit.to_ascii_lowercase();
        let (digits, radix) = match lower.get(..2) {
            Some("0x") => (&lower[2..], 16),
            Some("0o") => (&lower[2..], 8),
            Some("0b") => (&lower[2..], 2),
            _ => (lower.as_str(), 10),
        };
        let digits = digits
            .strip_prefix('_')
            .filter(|_| radix != 10)
            .unwrap_or(digits);
        let underscores_ok =
            !digits.starts_with('_') && !digits.ends_with('_') && !digits.contains("__");
        let all_digits =
            !digits.is_empty() && digits.chars().all(|c| c == '_' || c.is_digit(radix));
        if all_digits && underscores_ok {
            let clean: String = digits.chars().filter(|&c| c != '_').collect();
            if radix == 10
                && clean.len() > 1
                && clean.starts_with('0')
                && clean.chars().any(|c| c != '0')
            {
                return Err(format!(
                    "leading zeros in integer {lit:?} are not permitted (Python syntax)"
                ));
            }
            return i128::from_str_radix(&clean, radix)
                .map(Tok::Int)
                .map_err(|_| format!("integer {lit} does not fit in 64 bits"));
        }
        let clean: String = lower.chars().filter(|&c| c != '_').collect();
        let marked =
            lower.contains(['.', 'e', 'j']) && !lower.contains("__") && !lower.ends_with('_');
        let float_like = marked && clean.trim_end_matches('j').parse::<f64>().is_ok();
        if float_like && radix == 10 {
            Ok(Tok::NonInt(lit.to_string()))
        } else {
            Err(format!("invalid number {lit:?}"))
        }
    }

    fn name(word: &str) -> Result<Tok, String> {
        match word {
            "None" | "newaxis" | "np.newaxis" | "numpy.newaxis" => Ok(Tok::NoneKw),
            "Ellipsis" => Ok(Tok::Ellipsis),
            "True" | "False" | "np.True_" | "np.False_" => Ok(Tok::Bool),
            _ => Err(format!("unknown name {word:?}")),
        }
    }

    struct Parser<'a> {
        toks: &'a [Token],
        at: usize,
    }

    impl Parser<'_> {
        fn peek(&self) -> Option<&Tok> {
            self.toks.get(self.at).map(|t| &t.tok)
        }

        fn pos(&self) -> String {
            match self.toks.get(self.at) {
                Some(t) => format!("at position {}", t.pos),
                None => "at the end".to_string(),
            }
        }

        fn eat(&mut self, tok: &Tok) -> bool {
            let hit = self.peek() == Some(tok);
            if hit {
                self.at += 1;
            }
            hit
        }

        /// The whole subscript: nothing, one item, or items separated by commas (a trailing comma allowed).
        fn subscript(&mut self) -> Result<SliceSpec, String> {
            if self.peek().is_none() {
                return Ok(SliceSpec::all());
            }
            let mut items = Vec::new();
            let mut tuple = false;
            loop {
                items.push(self.item()?);
                if !self.eat(&Tok::Comma) {
                    break;
                }
                tuple = true;
                if self.peek().is_none() {
                    break;
                }
            }
            if self.peek().is_some() {
                return Err(format!("unexpected {} {}", self.describe(), self.pos()));
            }
            // `a[(1, 2)]` is `a[1, 2]`; a tuple inside a tuple would be an index array.
            if !tuple && let [Item::Value(Value::Tuple(inner))] = items.as_mut_slice() {
                let inner = std::mem::take(inner);
                return inner
                    .into_iter()
                    .map(value_index)
                    .collect::<Result<_, _>>()
                    .map(SliceSpec);
            }
            items
                .into_iter()
                .map(|item| match item {
                    Item::Slice(ix) => Ok(ix),
                    Item::Value(v) => value_index(v),
                })
                .collect::<Result<_, _>>()
                .map(SliceSpec)
        }

        fn describe(&self) -> String {
            match self.peek() {
                Some(Tok::Int(_)) => "integer".into(),
                Some(Tok::Colon) => "':'".into(),
                Some(Tok::Comma) => "','".into(),
                Some(Tok::LParen) => "'('".into(),
                Some(Tok::RParen) => "')'".into(),
                Some(Tok::Plus) => "'+'".into(),
                Some(Tok::Minus) => "'-'".into(),
                Some(Tok::NoneKw) => "None".into(),
                Some(Tok::Ellipsis) => "'...'".into(),
                Some(Tok::Bool) => "boolean".into(),
                Some(Tok::NonInt(s)) => format!("{s:?}"),
                None => "end".into(),
            }
        }

        /// One comma-separated component: a slice `a:b:c` or an expression.
        fn item(&mut self) -> Result<Item, String> {
            if matches!(self.peek(), Some(Tok::Comma) | None) {
                return Err(format!("empty index {}", self.pos()));
            }
            let first = if self.peek() == Some(&Tok::Colon) {
                None
            } else {
                Some(self.expr(0)?)
            };
            if !self.eat(&Tok::Colon) {
                // `first` is Some: an empty item was refused above.
                return first
                    .map(Item::Value)
                    .ok_or_else(|| format!("empty index {}", self.pos()));
            }
            let start = bound(first)?;
            let stop = self.slice_part()?;
            let step = if self.eat(&Tok::Colon) {
                self.slice_part()?
            } else {
                None
            };
            if self.peek() == Some(&Tok::Colon) {
                return Err(format!("too many ':' in a slice {}", self.pos()));
            }
            Ok(Item::Slice(Index::Slice { start, stop, step }))
        }

        fn slice_part(&mut self) -> Result<Option<i64>, String> {
            match self.peek() {
                None | Some(Tok::Colon) | Some(Tok::Comma) => Ok(None),
                _ => bound(Some(self.expr(0)?)),
            }
        }

        /// An expression: unary signs, then an atom.
        fn expr(&mut self, depth: usize) -> Result<Value, String> {
            let mut negative = false;
            let mut signed = false;
            loop {
                if self.eat(&Tok::Minus) {
                    negative = !negative;
                } else if !self.eat(&Tok::Plus) {
                    break;
                }
                signed = true;
            }
            match self.atom(depth)? {
                // Literals are non-negative i128 values, so negation cannot overflow.
                Value::Int(i) if negative => Ok(Value::Int(-i)),
                value @ Value::Int(_) => Ok(value),
                _ if signed => Err("a sign can only apply to an integer".into()),
                value => Ok(value),
            }
        }

        fn atom(&mut self, depth: usize) -> Result<Value, String> {
            let pos = self.pos();
            let Some(tok) = self.peek().cloned() else {
                return Err("expected an index at the end".into());
            };
            self.at += 1;
            match tok {
                Tok::Int(v) => Ok(Value::Int(v)),
                Tok::NoneKw => Ok(Value::None),
                Tok::Ellipsis => Ok(Value::Ellipsis),
                Tok::LParen => self.parenthesised(depth + 1),
                Tok::Bool => Err(format!("boolean indices are not supported ({pos})")),
                Tok::NonInt(s) => Err(format!(
                    "{s} is not an integer: only integers, slices (':'), ellipsis ('...') and None are valid indices"
                )),
                Tok::Colon | Tok::Comma | Tok::RParen | Tok::Plus | Tok::Minus => {
                    self.at -= 1;
                    Err(format!("unexpected {} {pos}", self.describe()))
                }
            }
        }

        /// After `(`: `()`, `(expr)` or a tuple `(a, b, ...)`.
        fn parenthesised(&mut self, depth: usize) -> Result<Value, String> {
            if depth > MAX_DEPTH {
                return Err(format!("parentheses nested deeper than {MAX_DEPTH}"));
            }
            if self.eat(&Tok::RParen) {
                return Ok(Value::Tuple(Vec::new()));
            }
            let mut elems = vec![self.expr(depth)?];
            let mut tuple = false;
            while self.eat(&Tok::Comma) {
                tuple = true;
                if self.peek() == Some(&Tok::RParen) {
                    break;
                }
                elems.push(self.expr(depth)?);
            }
            if !self.eat(&Tok::RParen) {
                let what = if self.peek() == Some(&Tok::Colon) {
                    "a slice inside parentheses"
                } else {
                    "expected ')'"
                };
                return Err(format!("{what} {}", self.pos()));
            }
            match (tuple, elems.pop()) {
                (false, Some(only)) => Ok(only),
                (_, last) => {
                    elems.extend(last);
                    Ok(Value::Tuple(elems))
                }
            }
        }
    }

    enum Item {
        Slice(Index),
        Value(Value),
    }

    /// A slice bound: an integer or None.
    fn bound(v: Option<Value>) -> Result<Option<i64>, String> {
        match v {
            None | Some(Value::None) => Ok(None),
            Some(Value::Int(i)) => int64(i).map(Some),
            Some(_) => Err("slice indices must be integers or None".into()),
        }
    }

    /// A tuple component that is not a slice.
    fn value_index(v: Value) -> Result<Index, String> {
        match v {
            Value::Int(i) => int64(i).map(Index::Int),
            Value::None => Ok(Index::NewAxis),
            Value::Ellipsis => Ok(Index::Ellipsis),
            Value::Tuple(_) => {
                Err("advanced indexing is not supported (a tuple inside the index)".into())
            }
        }
    }

    fn int64(v: i128) -> Result<i64, String> {
        i64::try_from(v).map_err(|_| format!("integer {v} does not fit in 64 bits"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn int(i: i64) -> Index {
        Index::Int(i)
    }

    fn sl(start: Option<i64>, stop: Option<i64>, step: Option<i64>) -> Index {
        Index::Slice { start, stop, step }
    }

    fn range(start: usize, step: isize, len: usize) -> AxisSel {
        AxisSel::Range { start, step, len }
    }

    fn full(len: usize) -> AxisSel {
        range(0, 1, len)
    }

    fn parse(text: &str) -> Vec<Index> {
        match SliceSpec::parse(text) {
            Ok(spec) => spec.0,
            Err(e) => panic!("{text:?} should parse: {e}"),
        }
    }

    fn parse_err(text: &str) -> String {
        match SliceSpec::parse(text) {
            Ok(spec) => panic!("{text:?} should not parse, got {spec:?}"),
            Err(e) => e.to_string(),
        }
    }

    fn canon(text: &str, shape: &[usize]) -> Vec<AxisSel> {
        canonical_slice(&SliceSpec::parse(text).unwrap(), shape)
            .unwrap()
            .items
    }

    fn canon_err(text: &str, shape: &[usize]) -> String {
        match canonical_slice(&SliceSpec::parse(text).unwrap(), shape) {
            Ok(c) => panic!("{text:?} on {shape:?} should fail, got {c:?}"),
            Err(e) => e.to_string(),
        }
    }

    /// The elements an `AxisSel` visits, in order.
    fn visited(sel: AxisSel) -> Vec<usize> {
        match sel {
            AxisSel::Index(i) => vec![i],
            AxisSel::Range { start, step, len } => (0..len)
                .map(|k| (start as isize + k as isize * step) as usize)
                .collect(),
            AxisSel::NewAxis => vec![0],
        }
    }

    #[test]
    fn parses_the_documented_examples() {
        use Index::{Ellipsis, NewAxis};
        assert_eq!(
            parse("10:20, ::-2, ..., None"),
            vec![
                sl(Some(10), Some(20), None),
                sl(None, None, Some(-2)),
                Ellipsis,
                NewAxis
            ]
        );
        assert_eq!(parse("-1"), vec![int(-1)]);
        assert_eq!(parse(""), vec![]);
        assert_eq!(parse("   \t\n"), vec![]);
        assert_eq!(parse("()"), vec![]);
        assert_eq!(parse(" ( ) "), vec![]);
        assert_eq!(parse("(1, 2)"), vec![int(1), int(2)]);
        assert_eq!(parse("((1, 2))"), vec![int(1), int(2)]);
        assert_eq!(parse("(1,)"), vec![int(1)]);
        assert_eq!(parse("(1)"), vec![int(1)]);
        assert_eq!(
            parse("np.newaxis, newaxis, numpy.newaxis, None"),
            vec![NewAxis; 4]
        );
        assert_eq!(parse("Ellipsis"), vec![Ellipsis]);
        assert_eq!(parse("..."), vec![Ellipsis]);
        assert_eq!(parse("(...)"), vec![Ellipsis]);
        assert_eq!(parse("1,"), vec![int(1)]);
        assert_eq!(parse("1, 2 ,"), vec![int(1), int(2)]);
        assert_eq!(parse("+3"), vec![int(3)]);
        assert_eq!(parse("-0"), vec![int(0)]);
        assert_eq!(parse("- -3"), vec![int(3)]);
        assert_eq!(parse("-(2)"), vec![int(-2)]);
        assert_eq!(parse(" 1 : 2 : 3 "), vec![sl(Some(1), Some(2), Some(3))]);
    }

    #[test]
    fn parses_every_slice_form() {
        assert_eq!(parse(":"), vec![Index::FULL]);
        assert_eq!(parse("::"), vec![Index::FULL]);
        assert_eq!(parse(": :"), vec![Index::FULL]);
        assert_eq!(parse("1:"), vec![sl(Some(1), None, None)]);
        assert_eq!(parse(":5"), vec![sl(None, Some(5), None)]);
        assert_eq!(parse("::2"), vec![sl(None, None, Some(2))]);
        assert_eq!(parse("1:5:"), vec![sl(Some(1), Some(5), None)]);
        assert_eq!(parse("-3:-1:-1"), vec![sl(Some(-3), Some(-1), Some(-1))]);
        assert_eq!(parse("None:5:None"), vec![sl(None, Some(5), None)]);
        assert_eq!(parse("(1):(-2)"), vec![sl(Some(1), Some(-2), None)]);
        assert_eq!(parse(":, 0"), vec![Index::FULL, int(0)]);
        assert_eq!(parse(":,"), vec![Index::FULL]);
    }

    #[test]
    fn parses_python_integer_literals() {
        assert_eq!(parse("1_000"), vec![int(1000)]);
        assert_eq!(
            parse("0x1F, 0o17, 0b101, 0X_ff"),
            vec![int(31), int(15), int(5), int(255)]
        );
        assert_eq!(parse("0, 00"), vec![int(0), int(0)]);
        assert_eq!(parse("9223372036854775807"), vec![int(i64::MAX)]);
        assert_eq!(parse("-9223372036854775808"), vec![int(i64::MIN)]);
        assert_eq!(
            parse("-9223372036854775808:"),
            vec![sl(Some(i64::MIN), None, None)]
        );
    }

    #[test]
    fn rejects_bad_specs_with_clear_errors() {
        let cases = [
            ("[1,2]", "advanced indexing is not supported"),
            ("0, [1]", "advanced indexing is not supported"),
            ("(1, 2), 3", "advanced indexing is not supported"),
            ("(1, 2),", "advanced indexing is not supported"),
            ("(),", "advanced indexing is not supported"),
            ("True", "boolean indices are not supported"),
            ("1, False", "boolean indices are not supported"),
            ("1.5", "1.5 is not an integer"),
            ("1e3", "1e3 is not an integer"),
            ("2.", "2. is not an integer"),
            (".5:", ".5 is not an integer"),
            ("1j", "1j is not an integer"),
            ("1:2.0", "2.0 is not an integer"),
            ("1,,2", "empty index at position 2"),
            (",", "empty index at position 0"),
            ("1,,", "empty index"),
            ("(,)", "unexpected ','"),
            (
                "9223372036854775808",
                "integer 9223372036854775808 does not fit in 64 bits",
            ),
            ("-9223372036854775809", "does not fit in 64 bits"),
            (
                "99999999999999999999999999999999999999999",
                "does not fit in 64 bits",
            ),
            ("--9223372036854775808", "does not fit in 64 bits"),
            ("1:2:3:4", "too many ':'"),
            ("1 2", "unexpected integer at position 2"),
            ("abc", "unknown name \"abc\""),
            ("np.int64(3)", "unknown name \"np.int64\""),
            ("1)", "unexpected ')'"),
            ("(1", "expected ')' at the end"),
            ("(1:2)", "a slice inside parentheses"),
            ("...:", "slice indices must be integers or None"),
            ("(1,2):", "slice indices must be integers or None"),
            ("-None", "a sign can only apply to an integer"),
            ("+...", "a sign can only apply to an integer"),
            ("-", "expected an index at the end"),
            ("1:-", "expected an index at the end"),
            ("007", "leading zeros"),
            ("1__0", "invalid number"),
            ("1_", "invalid number"),
            ("0x", "invalid number"),
            ("0b102", "invalid number"),
            ("12abc", "invalid number"),
            ("..", "unexpected character '.'"),
            ("a[1]", "unknown name"),
            ("1; 2", "unexpected character ';'"),
            ("é", "unexpected character 'é'"),
            ("\"1\"", "unexpected character '\"'"),
        ];
        for (text, want) in cases {
            let err = parse_err(text);
            assert!(
                err.contains(want),
                "{text:?}: {err:?} should contain {want:?}"
            );
            assert!(err.starts_with("invalid slice: cannot parse"), "{err}");
        }
        let deep = format!("{}1{}", "(".repeat(100), ")".repeat(100));
        assert!(parse_err(&deep).contains("nested deeper than"));
        assert_eq!(
            parse(&format!("{}1{}", "(".repeat(20), ")".repeat(20))),
            vec![int(1)]
        );
        let many_signs = "-".repeat(100_001) + "1";
        assert_eq!(parse(&many_signs), vec![int(-1)]);
    }

    #[test]
    fn display_prints_python_syntax() {
        let spec = SliceSpec(vec![
            int(-1),
            Index::FULL,
            sl(Some(1), None, None),
            sl(None, Some(-5), None),
            sl(None, None, Some(-2)),
            sl(Some(10), Some(20), Some(1)),
            Index::Ellipsis,
            Index::NewAxis,
        ]);
        assert_eq!(spec.to_string(), "-1, :, 1:, :-5, ::-2, 10:20:1, ..., None");
        assert_eq!(spec.to_string().parse::<SliceSpec>().unwrap(), spec);
        assert_eq!(SliceSpec::all().to_string(), "");
        assert_eq!(SliceSpec(vec![int(3)]).to_string(), "3");
        assert_eq!("1,".parse::<SliceSpec>().unwrap().to_string(), "1");
    }

    #[test]
    fn int_indices_follow_numpy() {
        assert_eq!(canon("3", &[10]), vec![AxisSel::Index(3)]);
        assert_eq!(canon("-1", &[10]), vec![AxisSel::Index(9)]);
        assert_eq!(canon("-10", &[10]), vec![AxisSel::Index(0)]);
        // nibabel wraps these twice (reference §1.8, Q1); numpy raises.
        assert_eq!(
            canon_err("-11", &[10]),
            "invalid slice: index -11 is out of bounds for axis 0 with size 10"
        );
        assert_eq!(
            canon_err("-21", &[10]),
            "invalid slice: index -21 is out of bounds for axis 0 with size 10"
        );
        assert_eq!(
            canon_err("10", &[10]),
            "invalid slice: index 10 is out of bounds for axis 0 with size 10"
        );
        assert_eq!(
            canon_err("0, 6", &[10, 6]),
            "invalid slice: index 6 is out of bounds for axis 1 with size 6"
        );
        assert_eq!(
            canon_err("0", &[0]),
            "invalid slice: index 0 is out of bounds for axis 0 with size 0"
        );
        assert!(
            canon_err("-9223372036854775808", &[10])
                .contains("index -9223372036854775808 is out of bounds")
        );
        assert!(canon_err("9223372036854775807", &[10]).contains("out of bounds"));
    }

    #[test]
    fn slices_follow_cpython_slice_indices() {
        // Expected element lists printed by CPython: list(range(n))[start:stop:step].
        #[rustfmt::skip]
        type Case = (usize, Option<i64>, Option<i64>, Option<i64>, &'static [usize]);
        let table: &[Case] = &[
            (10, Some(-15), None, None, &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9]),
            (10, Some(-25), None, None, &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9]),
            (
                10,
                None,
                Some(-15),
                Some(-1),
                &[9, 8, 7, 6, 5, 4, 3, 2, 1, 0],
            ),
            (10, Some(-20), None, Some(-1), &[]),
            (10, Some(-12), None, Some(-1), &[]),
            (10, Some(1), None, Some(-2), &[1]),
            (10, Some(1), Some(3), Some(-1), &[]),
            (10, Some(0), None, Some(-2), &[0]),
            (10, Some(2), Some(8), Some(-3), &[]),
            (10, None, None, Some(-3), &[9, 6, 3, 0]),
            (10, None, Some(0), Some(-3), &[9, 6, 3]),
            (10, None, Some(1), Some(-1), &[9, 8, 7, 6, 5, 4, 3, 2]),
            (10, None, Some(-4), Some(-1), &[9, 8, 7]),
            (10, Some(1), Some(11), Some(3), &[1, 4, 7]),
            (10, Some(0), Some(11), Some(3), &[0, 3, 6, 9]),
            (10, Some(-4), Some(-2), None, &[6, 7]),
            (10, Some(3), Some(2), None, &[]),
            (10, Some(2), Some(3), Some(-1), &[]),
            (
                10,
                Some(11),
                None,
                Some(-1),
                &[9, 8, 7, 6, 5, 4, 3, 2, 1, 0],
            ),
            (10, Some(9), None, Some(-1), &[9, 8, 7, 6, 5, 4, 3, 2, 1, 0]),
            (10, Some(100), Some(-100), Some(-7), &[9, 2]),
            (10, Some(-100), Some(100), Some(7), &[0, 7]),
            (10, Some(5), Some(5), None, &[]),
            (10, None, None, Some(100), &[0]),
            (10, None, None, Some(-100), &[9]),
            (
                10,
                Some(-1),
                None,
                Some(-1),
                &[9, 8, 7, 6, 5, 4, 3, 2, 1, 0],
            ),
            (
                10,
                Some(-1),
                Some(-11),
                Some(-1),
                &[9, 8, 7, 6, 5, 4, 3, 2, 1, 0],
            ),
            (10, Some(-11), Some(-1), None, &[0, 1, 2, 3, 4, 5, 6, 7, 8]),
            (0, None, None, None, &[]),
            (0, None, None, Some(-1), &[]),
            (0, Some(0), Some(1), Some(5), &[]),
            (0, Some(-1), None, None, &[]),
            (0, Some(5), Some(-5), Some(-1), &[]),
            (0, Some(0), Some(0), None, &[]),
            (1, None, None, None, &[0]),
            (1, None, None, Some(-1), &[0]),
            (1, Some(0), Some(1), Some(5), &[0]),
            (1, Some(-1), None, None, &[0]),
            (1, Some(5), Some(-5), Some(-1), &[0]),
            (1, Some(0), Some(0), None, &[]),
            (10, Some(i64::MIN), Some(i64::MAX), Some(i64::MAX), &[0]),
            (10, Some(i64::MAX), Some(i64::MIN), Some(i64::MIN), &[9]),
        ];
        for &(n, start, stop, step, want) in table {
            let spec = SliceSpec(vec![sl(start, stop, step)]);
            let items = canonical_slice(&spec, &[n]).unwrap().items;
            assert_eq!(items.len(), 1);
            assert_eq!(visited(items[0]), want, "{spec} on length {n}");
            if want.is_empty() {
                assert!(
                    matches!(
                        items[0],
                        AxisSel::Range {
                            start: 0,
                            len: 0,
                            ..
                        }
                    ),
                    "{items:?}"
                );
            }
        }
    }

    #[test]
    fn slice_lengths_match_the_reference() {
        // §3.3 slice2len (n = 10), all numpy-consistent.
        for (text, len) in [
            ("1:11:3", 3),
            ("0:11:3", 4),
            ("::-3", 4),
            (":0:-3", 3),
            (":1:-1", 8),
            (":-4:-1", 3),
        ] {
            assert_eq!(
                canonical_slice(&SliceSpec::parse(text).unwrap(), &[10])
                    .unwrap()
                    .out_shape(),
                vec![len]
            );
        }
        // §3.3 fill_slicer examples, as first/step/len.
        assert_eq!(canon("11", &[12]), vec![AxisSel::Index(11)]);
        assert_eq!(canon(":11", &[10]), vec![full(10)]);
        assert_eq!(canon("1:11:2", &[10]), vec![range(1, 2, 5)]);
        assert_eq!(canon("::-1", &[10]), vec![range(9, -1, 10)]);
        assert_eq!(canon("11::-1", &[10]), vec![range(9, -1, 10)]);
        assert_eq!(canon(":-4:-1", &[10]), vec![range(9, -1, 3)]);
        assert_eq!(canon("-4:-2", &[10]), vec![range(6, 1, 2)]);
        assert_eq!(canon("3:2:1", &[10]), vec![range(0, 1, 0)]);
        assert_eq!(canon("2:3:-1", &[10]), vec![range(0, -1, 0)]);
    }

    #[test]
    fn canonical_slicers_vectors() {
        // §3.2, shape (10, 10).
        let s = [10, 10];
        assert_eq!(canon(":9", &s), vec![range(0, 1, 9), full(10)]);
        assert_eq!(canon("1", &s), vec![AxisSel::Index(1), full(10)]);
        assert_eq!(canon("-1", &s), vec![AxisSel::Index(9), full(10)]);
        assert_eq!(canon(":, -1", &s), vec![full(10), AxisSel::Index(9)]);
        for text in [":10, 1", "0:10, 1", "0:10:1, 1"] {
            assert_eq!(canon(text, &s), vec![full(10), AxisSel::Index(1)], "{text}");
        }
        assert_eq!(canon("...", &s), vec![full(10), full(10)]);
        assert_eq!(
            canon("..., None", &s),
            vec![full(10), full(10), AxisSel::NewAxis]
        );
        assert_eq!(
            canon("1, 1, ...", &s),
            vec![AxisSel::Index(1), AxisSel::Index(1)]
        );
        assert_eq!(
            canon("1, ..., 2", &[10, 10, 10, 10, 10]),
            vec![
                AxisSel::Index(1),
                full(10),
                full(10),
                full(10),
                AxisSel::Index(2)
            ]
        );
        assert_eq!(
            canon_err("10", &s),
            "invalid slice: index 10 is out of bounds for axis 0 with size 10"
        );
        // Pairs of the reference's samples pass through (as first/step/len) and are padded on 5-D.
        assert_eq!(
            canon("1:10:2, 2", &[10, 10, 10, 10, 10]),
            vec![
                range(1, 2, 5),
                AxisSel::Index(2),
                full(10),
                full(10),
                full(10)
            ]
        );
        assert_eq!(
            canon("None, 1:10, None, :, None", &s),
            vec![
                AxisSel::NewAxis,
                range(1, 1, 9),
                AxisSel::NewAxis,
                full(10),
                AxisSel::NewAxis
            ]
        );
    }

    #[test]
    fn ellipsis_and_newaxis() {
        let s = [2, 3, 4];
        assert_eq!(
            canon("..., 1", &s),
            vec![full(2), full(3), AxisSel::Index(1)]
        );
        assert_eq!(
            canon("1, ...", &s),
            vec![AxisSel::Index(1), full(3), full(4)]
        );
        assert_eq!(
            canon("0, 1, 2, ...", &s),
            vec![AxisSel::Index(0), AxisSel::Index(1), AxisSel::Index(2)]
        );
        assert_eq!(
            canon("None, ..., None, 0", &s),
            vec![
                AxisSel::NewAxis,
                full(2),
                full(3),
                AxisSel::NewAxis,
                AxisSel::Index(0)
            ]
        );
        assert_eq!(
            canon("None, None", &[]),
            vec![AxisSel::NewAxis, AxisSel::NewAxis]
        );
        assert_eq!(canon("...", &[]), vec![]);
        assert_eq!(canon("", &[]), vec![]);
        assert_eq!(
            canon_err("..., ...", &s),
            "invalid slice: an index can only have a single ellipsis ('...')"
        );
        assert_eq!(
            canon_err("0, 0, 0, 0", &s),
            "invalid slice: too many indices for array: array is 3-dimensional, but 4 were indexed"
        );
        assert_eq!(
            canon_err("0, ..., 0, 0, None, 0", &s),
            "invalid slice: too many indices for array: array is 3-dimensional, but 4 were indexed"
        );
        assert!(canon_err("0", &[]).contains("array is 0-dimensional, but 1 were indexed"));
        assert_eq!(
            canon_err("::0", &s),
            "invalid slice: slice step cannot be zero"
        );
        assert_eq!(
            canon_err("0, 5:1:0", &s),
            "invalid slice: slice step cannot be zero"
        );
    }

    #[test]
    fn predict_shape_vectors() {
        // §3.3 predict_shape on (2, 3).
        let out = |text: &str| {
            canonical_slice(&SliceSpec::parse(text).unwrap(), &[2, 3])
                .unwrap()
                .out_shape()
        };
        assert_eq!(out("None"), vec![1, 2, 3]);
        assert_eq!(out("1, None, :"), vec![1, 3]);
        assert_eq!(out("1, :, None"), vec![3, 1]);
        assert_eq!(out("0, 0"), Vec::<usize>::new());
        assert_eq!(out("5:, ::-1"), vec![0, 3]);
    }

    #[test]
    fn is_full_real_axes_full_and_from_ranges() {
        let shape = [3, 1, 4];
        let c = |t: &str| canonical_slice(&SliceSpec::parse(t).unwrap(), &shape).unwrap();
        for t in ["", "...", ":", ":, :, :", "0:3, ::-1, -100:100", ":, 0:1:7"] {
            assert!(c(t).is_full(&shape), "{t}");
        }
        for t in ["0", "::-1", ":, 0", "None", "..., None", ":2", "::2"] {
            assert!(!c(t).is_full(&shape), "{t}");
        }
        assert!(!c("").is_full(&[3, 1]));
        assert!(c("").is_full(&shape));
        assert_eq!(CanonicalSlice::full(&shape), c(""));
        assert!(CanonicalSlice::full(&[0, 2]).is_full(&[0, 2]));
        assert!(CanonicalSlice::full(&[]).is_full(&[]));
        assert_eq!(
            c("None, 1, None, ::-1")
                .real_axes()
                .copied()
                .collect::<Vec<_>>(),
            vec![AxisSel::Index(1), range(0, -1, 1), full(4)]
        );
        assert_eq!(c("None, 1, None, ::-1").out_shape(), vec![1, 1, 1, 4]);
        assert_eq!(
            CanonicalSlice::from_ranges(&[2..5, 0..1, 3..3]).items,
            vec![range(2, 1, 3), range(0, 1, 1), range(0, 1, 0)]
        );
        #[allow(clippy::reversed_empty_ranges)]
        let reversed = CanonicalSlice::from_ranges(&[5..2, 0..0]);
        assert_eq!(reversed.items, vec![range(0, 1, 0), range(0, 1, 0)]);
        assert_eq!(CanonicalSlice::from_ranges(&[0..3, 0..1, 0..4]), c(""));
    }

    /// numpy, written as plainly as possible: the elements `a[start:stop:step]` visits on a length-`n` axis.
    fn naive_slice(
        n: usize,
        start: Option<i64>,
        stop: Option<i64>,
        step: Option<i64>,
    ) -> Vec<usize> {
        let n = n as i128;
        let step = i128::from(step.unwrap_or(1));
        let norm = |v: i64| {
            if v < 0 {
                i128::from(v) + n
            } else {
                i128::from(v)
            }
        };
        let mut out = Vec::new();
        if step > 0 {
            let mut i = start.map_or(0, norm).max(0);
            let stop = stop.map_or(n, norm).min(n);
            while i < stop {
                out.push(i as usize);
                i += step;
            }
        } else {
            let mut i = start.map_or(n - 1, norm).min(n - 1);
            let stop = stop.map_or(-1, norm).max(-1);
            while i > stop {
                out.push(i as usize);
                i += step;
            }
        }
        out
    }

    /// Per real axis the visited elements (None for an integer index) and the result shape, read naively.
    type Naive = (Vec<Option<Vec<usize>>>, Vec<usize>);

    fn naive(spec: &SliceSpec, shape: &[usize]) -> Option<Naive> {
        let n_real = spec.0.iter().filter(|i| i.is_real()).count();
        if n_real > shape.len() || spec.0.iter().filter(|i| **i == Index::Ellipsis).count() > 1 {
            return None;
        }
        let mut expanded = Vec::new();
        for item in &spec.0 {
            if *item == Index::Ellipsis {
                expanded.extend(std::iter::repeat_n(Index::FULL, shape.len() - n_real));
            } else {
                expanded.push(*item);
            }
        }
        if !spec.0.contains(&Index::Ellipsis) {
            expanded.extend(std::iter::repeat_n(Index::FULL, shape.len() - n_real));
        }
        let (mut axes, mut out_shape) = (Vec::new(), Vec::new());
        for item in expanded {
            let n = shape.get(axes.len()).copied().unwrap_or(0);
            match item {
                Index::NewAxis => out_shape.push(1),
                Index::Int(i) => {
                    let k = if i < 0 {
                        i128::from(i) + n as i128
                    } else {
                        i128::from(i)
                    };
                    if !(0..n as i128).contains(&k) {
                        return None;
                    }
                    axes.push(None);
                }
                Index::Slice { start, stop, step } => {
                    if step == Some(0) {
                        return None;
                    }
                    let v = naive_slice(n, start, stop, step);
                    out_shape.push(v.len());
                    axes.push(Some(v));
                }
                Index::Ellipsis => unreachable!(),
            }
        }
        Some((axes, out_shape))
    }

    fn index_strategy() -> impl Strategy<Value = Index> {
        let bound = prop_oneof![Just(None), (-9i64..9).prop_map(Some)];
        let step = prop_oneof![Just(None), (-4i64..5).prop_map(Some)];
        prop_oneof![
            3 => (-8i64..8).prop_map(Index::Int),
            6 => (bound.clone(), bound, step).prop_map(|(start, stop, step)| Index::Slice { start, stop, step }),
            1 => Just(Index::Ellipsis),
            1 => Just(Index::NewAxis),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn canonical_matches_naive_numpy(
            shape in prop::collection::vec(0usize..7, 0..5),
            items in prop::collection::vec(index_strategy(), 0..6),
        ) {
            let spec = SliceSpec(items);
            match (canonical_slice(&spec, &shape), naive(&spec, &shape)) {
                (Ok(c), Some((axes, out_shape))) => {
                    prop_assert_eq!(c.out_shape(), out_shape);
                    let real: Vec<AxisSel> = c.real_axes().copied().collect();
                    prop_assert_eq!(real.len(), shape.len());
                    for (sel, want) in real.iter().zip(&axes) {
                        match want {
                            None => prop_assert!(matches!(sel, AxisSel::Index(_))),
                            Some(v) => {
                                let is_range = matches!(sel, AxisSel::Range { .. });
                                prop_assert!(is_range);
                                prop_assert_eq!(&visited(*sel), v);
                            }
                        }
                    }
                    let new_axes = c.items.iter().filter(|i| **i == AxisSel::NewAxis).count();
                    prop_assert_eq!(new_axes, spec.0.iter().filter(|i| **i == Index::NewAxis).count());
                }
                (Err(_), None) => {}
                (got, want) => prop_assert!(false, "{spec} on {shape:?}: {got:?} vs {want:?}"),
            }
        }

        #[test]
        fn display_round_trips(items in prop::collection::vec(
            prop_oneof![
                any::<i64>().prop_map(Index::Int),
                (any::<Option<i64>>(), any::<Option<i64>>(), any::<Option<i64>>())
                    .prop_map(|(start, stop, step)| Index::Slice { start, stop, step }),
                Just(Index::Ellipsis),
                Just(Index::NewAxis),
            ],
            0..6,
        )) {
            let spec = SliceSpec(items);
            prop_assert_eq!(SliceSpec::parse(&spec.to_string()).unwrap(), spec);
        }

        #[test]
        fn never_panics_on_arbitrary_text(text in any::<String>()) {
            if let Ok(spec) = SliceSpec::parse(&text) {
                prop_assert_eq!(SliceSpec::parse(&spec.to_string()).unwrap(), spec);
            }
        }

        #[test]
        fn never_panics_on_token_soup(text in "[0-9:,.()\\[\\]+\\- _xobeNonelipsTrufaw]{0,40}") {
            if let Ok(spec) = SliceSpec::parse(&text) {
                prop_assert_eq!(SliceSpec::parse(&spec.to_string()).unwrap(), spec.clone());
                let _ = canonical_slice(&spec, &[3, 4, 5]);
            }
        }

        #[test]
        fn any_spec_on_any_shape_never_panics(
            shape in prop::collection::vec(any::<usize>(), 0..4),
            items in prop::collection::vec(
                prop_oneof![
                    any::<i64>().prop_map(Index::Int),
                    (any::<Option<i64>>(), any::<Option<i64>>(), any::<Option<i64>>())
                        .prop_map(|(start, stop, step)| Index::Slice { start, stop, step }),
                    Just(Index::Ellipsis),
                    Just(Index::NewAxis),
                ],
                0..5,
            ),
        ) {
            if let Ok(c) = canonical_slice(&SliceSpec(items), &shape) {
                for (sel, &dim) in c.real_axes().zip(&shape) {
                    match *sel {
                        AxisSel::Index(i) => prop_assert!(i < dim),
                        AxisSel::Range { start, step, len } => {
                            prop_assert!(step != 0 && len <= dim);
                            if len > 0 {
                                let last = start as i128 + (len as i128 - 1) * step as i128;
                                prop_assert!(start < dim && last >= 0 && last < dim as i128);
                            }
                        }
                        AxisSel::NewAxis => prop_assert!(false),
                    }
                }
            }
        }
    }
}
