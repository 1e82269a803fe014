//! A small, checked MessagePack reader for the header list of Freezer's rsync engine: every
//! length is checked against a memory budget before anything is read, nothing is allocated from
//! a length field, nesting is bounded, and extension types (which Freezer never writes) are
//! refused.

use super::tar::{Reader, TarError};

/// A decoded value. Strings and binary strings are both bytes: Python 2's msgpack wrote `str`
/// as raw strings, Python 3's writes text as `str` and bytes as `bin`.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// `nil`.
    Nil,
    /// `true` or `false`.
    Bool(bool),
    /// Any integer (every MessagePack integer fits).
    Int(i128),
    /// A float (32-bit ones widened).
    Float(f64),
    /// A string or binary string.
    Bytes(Vec<u8>),
    /// An array.
    Array(Vec<Value>),
    /// A map, in stream order.
    Map(Vec<(Value, Value)>),
}

/// Deepest nesting read (Freezer's headers nest three deep).
const MAX_DEPTH: usize = 16;
/// Estimated bytes of one value besides its bytes.
const VALUE_BYTES: u64 = 48;

/// Memory a parse may take, charged as it goes (never refunded: it bounds the work too).
pub struct Budget {
    /// Bytes charged so far.
    pub used: u64,
    /// Most bytes allowed.
    pub max: u64,
}

impl Budget {
    /// Charges `bytes`; fails at `at` once the bound is passed.
    pub fn charge(&mut self, bytes: u64, at: u64) -> Result<(), TarError> {
        self.used = self.used.saturating_add(bytes);
        if self.used > self.max {
            return Err(TarError {
                offset: at,
                msg: format!(
                    "the level's header list needs more than {} bytes of memory: too many or too \
                     long entries (raise --cache-size if the backup is genuine)",
                    self.max
                ),
                over_bound: true,
            });
        }
        Ok(())
    }
}

/// Reads exactly `N` bytes.
fn fixed<const N: usize>(r: &mut Reader<'_>, at: u64) -> Result<[u8; N], TarError> {
    let mut b = [0u8; N];
    if r.fill(&mut b)? != N {
        return Err(TarError::at(
            at,
            "the stream ends inside the header list: truncated",
        ));
    }
    Ok(b)
}

/// The length that follows a marker, in `n` big-endian bytes.
fn length(r: &mut Reader<'_>, n: usize, at: u64) -> Result<u64, TarError> {
    Ok(match n {
        1 => u64::from(fixed::<1>(r, at)?[0]),
        2 => u64::from(u16::from_be_bytes(fixed(r, at)?)),
        _ => u64::from(u32::from_be_bytes(fixed(r, at)?)),
    })
}

/// The length of the array whose marker byte `m`, at `at`, was just read (the header list).
pub fn array_len(r: &mut Reader<'_>, m: u8, at: u64) -> Result<u64, TarError> {
    match m {
        0x90..=0x9f => Ok(u64::from(m & 0x0f)),
        0xdc => length(r, 2, at),
        0xdd => length(r, 4, at),
        _ => Err(TarError::at(
            at,
            format!("the stream does not start with a MessagePack list (byte {m:#04x})"),
        )),
    }
}

/// Reads one value.
pub fn read(r: &mut Reader<'_>, budget: &mut Budget) -> Result<Value, TarError> {
    value(r, budget, 0)
}

fn value(r: &mut Reader<'_>, budget: &mut Budget, depth: usize) -> Result<Value, TarError> {
    let at = r.pos;
    if depth > MAX_DEPTH {
        return Err(TarError::at(
            at,
            format!("values nested more than {MAX_DEPTH} deep"),
        ));
    }
    budget.charge(VALUE_BYTES, at)?;
    let [m] = fixed::<1>(r, at)?;
    // Strings, arrays and maps: their length is in the marker or in 1, 2 or 4 bytes after it.
    let sized = match m {
        0x80..=0x8f => Some((Sized::Map, u64::from(m & 0x0f))),
        0x90..=0x9f => Some((Sized::Array, u64::from(m & 0x0f))),
        0xa0..=0xbf => Some((Sized::Bytes, u64::from(m & 0x1f))),
        0xc4 | 0xd9 => Some((Sized::Bytes, length(r, 1, at)?)),
        0xc5 | 0xda => Some((Sized::Bytes, length(r, 2, at)?)),
        0xc6 | 0xdb => Some((Sized::Bytes, length(r, 4, at)?)),
        0xdc => Some((Sized::Array, length(r, 2, at)?)),
        0xdd => Some((Sized::Array, length(r, 4, at)?)),
        0xde => Some((Sized::Map, length(r, 2, at)?)),
        0xdf => Some((Sized::Map, length(r, 4, at)?)),
        _ => None,
    };
    match sized {
        Some((Sized::Bytes, n)) => bytes(r, budget, n),
        Some((Sized::Array, n)) => array(r, budget, depth, n),
        Some((Sized::Map, n)) => map(r, budget, depth, n),
        None => scalar(r, m, at),
    }
}

/// What a marker with a length holds.
enum Sized {
    Bytes,
    Array,
    Map,
}

/// A value without a length: an integer, a float, nil or a boolean.
fn scalar(r: &mut Reader<'_>, m: u8, at: u64) -> Result<Value, TarError> {
    Ok(match m {
        0x00..=0x7f => Value::Int(i128::from(m)),
        0xe0..=0xff => Value::Int(i128::from(m as i8)),
        0xc0 => Value::Nil,
        0xc2 => Value::Bool(false),
        0xc3 => Value::Bool(true),
        0xca => Value::Float(f64::from(f32::from_be_bytes(fixed(r, at)?))),
        0xcb => Value::Float(f64::from_be_bytes(fixed(r, at)?)),
        0xcc => Value::Int(i128::from(fixed::<1>(r, at)?[0])),
        0xcd => Value::Int(i128::from(u16::from_be_bytes(fixed(r, at)?))),
        0xce => Value::Int(i128::from(u32::from_be_bytes(fixed(r, at)?))),
        0xcf => Value::Int(i128::from(u64::from_be_bytes(fixed(r, at)?))),
        0xd0 => Value::Int(i128::from(i8::from_be_bytes(fixed(r, at)?))),
        0xd1 => Value::Int(i128::from(i16::from_be_bytes(fixed(r, at)?))),
        0xd2 => Value::Int(i128::from(i32::from_be_bytes(fixed(r, at)?))),
        0xd3 => Value::Int(i128::from(i64::from_be_bytes(fixed(r, at)?))),
        _ => {
            return Err(TarError::at(
                at,
                format!("MessagePack type {m:#04x} (an extension or unused type) is not expected"),
            ));
        }
    })
}

/// `n` bytes, read in pieces so that a false length cannot allocate more than the stream has.
fn bytes(r: &mut Reader<'_>, budget: &mut Budget, n: u64) -> Result<Value, TarError> {
    let at = r.pos;
    budget.charge(n, at)?;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let mut left = n;
    while left > 0 {
        let k = left.min(buf.len() as u64) as usize;
        let piece = buf.get_mut(..k).unwrap_or_default();
        if r.fill(piece)? != k {
            return Err(TarError::at(
                at,
                format!("a {n}-byte string runs past the end of the stream: truncated"),
            ));
        }
        out.extend_from_slice(piece);
        left -= k as u64;
    }
    Ok(Value::Bytes(out))
}

fn array(r: &mut Reader<'_>, budget: &mut Budget, depth: usize, n: u64) -> Result<Value, TarError> {
    // Each element charges the budget as it is read: no allocation from the length.
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(value(r, budget, depth + 1)?);
    }
    Ok(Value::Array(out))
}

fn map(r: &mut Reader<'_>, budget: &mut Budget, depth: usize, n: u64) -> Result<Value, TarError> {
    let mut out = Vec::new();
    for _ in 0..n {
        let k = value(r, budget, depth + 1)?;
        let v = value(r, budget, depth + 1)?;
        out.push((k, v));
    }
    Ok(Value::Map(out))
}

impl Value {
    /// The integer, if this is one.
    pub fn int(&self) -> Option<i128> {
        match self {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }

    /// A time in whole seconds (Python's `st_mtime` is a float), if this is a finite number.
    pub fn seconds(&self) -> Option<i64> {
        match self {
            Value::Int(i) => i64::try_from(*i).ok(),
            Value::Float(f) if f.is_finite() && f.abs() < 1e17 => Some(f.floor() as i64),
            _ => None,
        }
    }

    /// The bytes of a string, if this is one.
    pub fn text(&self) -> Option<&[u8]> {
        match self {
            Value::Bytes(b) => Some(b),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(bytes: &[u8]) -> Result<Value, TarError> {
        let mut input = bytes;
        let mut sink = Vec::new();
        let mut r = Reader {
            input: &mut input,
            sink: &mut sink,
            pos: 0,
            bound: u64::MAX,
        };
        read(
            &mut r,
            &mut Budget {
                used: 0,
                max: 1 << 20,
            },
        )
    }

    #[test]
    fn reads_what_python_msgpack_writes() {
        // msgpack.dumps({'a': [1, -1, 300, 1.5, None, True], 'b': b'xy'}, use_bin_type=True)
        let b = b"\x82\xa1a\x96\x01\xff\xcd\x01,\xcb?\xf8\x00\x00\x00\x00\x00\x00\xc0\xc3\xa1b\xc4\x02xy";
        let v = parse(b).unwrap();
        let Value::Map(m) = v else { panic!() };
        assert_eq!(m[0].0, Value::Bytes(b"a".to_vec()));
        assert_eq!(
            m[0].1,
            Value::Array(vec![
                Value::Int(1),
                Value::Int(-1),
                Value::Int(300),
                Value::Float(1.5),
                Value::Nil,
                Value::Bool(true)
            ])
        );
        assert_eq!(m[1].1, Value::Bytes(b"xy".to_vec()));
    }

    #[test]
    fn false_lengths_and_deep_nesting_fail_without_allocating() {
        // A 4 GiB string and a 4-billion-element array in a few bytes.
        assert!(parse(b"\xdb\xff\xff\xff\xffab").is_err());
        assert!(parse(b"\xdd\xff\xff\xff\xff\x01").is_err());
        assert!(parse(&[0x91; 100]).unwrap_err().msg.contains("nested"));
        assert!(
            parse(b"\xc7\x01\x01x")
                .unwrap_err()
                .msg
                .contains("extension")
        );
    }
}
