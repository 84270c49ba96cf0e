//! Decodes a D-Bus message body, given its signature and byte order, into
//! the chain's canonical [`Value`]. The mapping is part of the data
//! contract (docs/FORMAT.md, "D-Bus data"):
//!
//! | D-Bus | Value |
//! |---|---|
//! | `y` `q` `u` `t` | `UInt` |
//! | `n` `i` `x` | `Int` (canonical: non-negative values are `UInt`) |
//! | `b` | `Bool` |
//! | `d` | `Float` |
//! | `s` `o` `g` | `Str` |
//! | `h` | map `{"unix_fd": index}`: a marker, monitors never receive the fd itself |
//! | `ay` | `Bin` |
//! | `a{KV}` | `Map` (canonical order; a repeated key keeps its last value) |
//! | other `aT` | `Array` |
//! | `(…)` | `Array` of the fields |
//! | `v` | `Array` of two: the inner signature (`Str`) and the inner value |
//! | whole body | `Array` of the arguments (empty body: empty array) |
//!
//! The decoder is our own rather than zbus's dynamic `Value` because it
//! builds the chain's form directly (no second tree), reads byte arrays as
//! one slice, caches parsed signatures, and bounds nesting and element
//! counts itself: a message that the bus accepted but that is malformed
//! anyway becomes an error the caller records, never a panic.

use std::collections::HashMap;
use std::sync::Arc;

use crate::codec::Value;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    #[error("invalid signature {0:?}")]
    Signature(String),
    #[error("body ends at byte {0} in the middle of a value")]
    Short(usize),
    #[error("nesting deeper than {0} levels")]
    TooDeep(usize),
    #[error("invalid {what} at byte {at}")]
    Invalid { what: &'static str, at: usize },
    #[error("{0} bytes left over after the last argument")]
    Trailing(usize),
    #[error("decoding would take more than {0} bytes of memory")]
    TooLarge(usize),
}

/// A parsed single complete type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ty {
    Byte,
    Bool,
    I16,
    U16,
    I32,
    U32,
    I64,
    U64,
    Double,
    Str,
    Path,
    Sig,
    Fd,
    Variant,
    Array(Box<Ty>),
    Dict(Box<Ty>, Box<Ty>),
    Struct(Vec<Ty>),
}

impl Ty {
    fn align(&self) -> usize {
        match self {
            Ty::Byte | Ty::Sig | Ty::Variant => 1,
            Ty::I16 | Ty::U16 => 2,
            Ty::Bool | Ty::I32 | Ty::U32 | Ty::Str | Ty::Path | Ty::Fd | Ty::Array(_) | Ty::Dict(..) => 4,
            Ty::I64 | Ty::U64 | Ty::Double | Ty::Struct(_) => 8,
        }
    }
}

/// The D-Bus limits: a signature is at most 255 bytes, arrays and structs
/// each nest at most 32 deep.
const MAX_SIGNATURE: usize = 255;
const MAX_TYPE_NESTING: usize = 32;

/// Parses a signature into its complete types.
pub fn parse_signature(sig: &str) -> Result<Vec<Ty>, WireError> {
    if sig.len() > MAX_SIGNATURE {
        return Err(WireError::Signature(sig.to_string()));
    }
    let bytes = sig.as_bytes();
    let mut pos = 0;
    let mut out = Vec::new();
    while pos < bytes.len() {
        out.push(parse_one(bytes, &mut pos, 0, 0).map_err(|()| WireError::Signature(sig.to_string()))?);
    }
    Ok(out)
}

fn parse_one(b: &[u8], pos: &mut usize, arrays: usize, structs: usize) -> Result<Ty, ()> {
    let c = *b.get(*pos).ok_or(())?;
    *pos += 1;
    Ok(match c {
        b'y' => Ty::Byte,
        b'b' => Ty::Bool,
        b'n' => Ty::I16,
        b'q' => Ty::U16,
        b'i' => Ty::I32,
        b'u' => Ty::U32,
        b'x' => Ty::I64,
        b't' => Ty::U64,
        b'd' => Ty::Double,
        b's' => Ty::Str,
        b'o' => Ty::Path,
        b'g' => Ty::Sig,
        b'h' => Ty::Fd,
        b'v' => Ty::Variant,
        b'a' => {
            if arrays >= MAX_TYPE_NESTING {
                return Err(());
            }
            if b.get(*pos) == Some(&b'{') {
                *pos += 1;
                if structs >= MAX_TYPE_NESTING {
                    return Err(());
                }
                let k = parse_one(b, pos, arrays + 1, structs + 1)?;
                if !matches!(
                    k,
                    Ty::Byte
                        | Ty::Bool
                        | Ty::I16
                        | Ty::U16
                        | Ty::I32
                        | Ty::U32
                        | Ty::I64
                        | Ty::U64
                        | Ty::Double
                        | Ty::Str
                        | Ty::Path
                        | Ty::Sig
                        | Ty::Fd
                ) {
                    return Err(());
                }
                let v = parse_one(b, pos, arrays + 1, structs + 1)?;
                if b.get(*pos) != Some(&b'}') {
                    return Err(());
                }
                *pos += 1;
                Ty::Dict(Box::new(k), Box::new(v))
            } else {
                Ty::Array(Box::new(parse_one(b, pos, arrays + 1, structs)?))
            }
        }
        b'(' => {
            if structs >= MAX_TYPE_NESTING {
                return Err(());
            }
            let mut fields = Vec::new();
            while b.get(*pos) != Some(&b')') {
                fields.push(parse_one(b, pos, arrays, structs + 1)?);
            }
            *pos += 1;
            if fields.is_empty() {
                return Err(());
            }
            Ty::Struct(fields)
        }
        _ => return Err(()),
    })
}

/// Decodes bodies, caching parsed signatures (a bus repeats a few hundred
/// signatures forever). The cache is bounded: past `MAX_CACHED` entries it
/// starts over.
#[derive(Default)]
pub struct BodyDecoder {
    cache: HashMap<String, Arc<Vec<Ty>>>,
}

const MAX_CACHED: usize = 4096;

impl BodyDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Decodes `body` (which starts 8-aligned in its message, so alignment
    /// is relative to its first byte) as the arguments of `signature`.
    pub fn decode(
        &mut self,
        body: &[u8],
        signature: &str,
        big_endian: bool,
        max_depth: usize,
    ) -> Result<Value, WireError> {
        self.decode_bounded(body, signature, big_endian, max_depth, usize::MAX)
    }

    /// As [`decode`](Self::decode), refusing to build more than `budget`
    /// bytes of values: a body of small containers (`av` of bytes) takes
    /// ~40 times its size once decoded, so the size of a body alone does not
    /// bound the memory its decoding takes.
    pub fn decode_bounded(
        &mut self,
        body: &[u8],
        signature: &str,
        big_endian: bool,
        max_depth: usize,
        budget: usize,
    ) -> Result<Value, WireError> {
        let types = match self.cache.get(signature) {
            Some(t) => t.clone(),
            None => {
                let t = Arc::new(parse_signature(signature)?);
                if self.cache.len() >= MAX_CACHED {
                    self.cache.clear();
                }
                self.cache.insert(signature.to_string(), t.clone());
                t
            }
        };
        let mut r = Reader { b: body, pos: 0, big_endian, max_depth, budget, limit: budget };
        let mut args = Vec::with_capacity(types.len());
        for t in types.iter() {
            args.push(r.value(t, 1)?);
        }
        // Padding after the last argument is not allowed by the spec, but
        // nothing is lost by tolerating zero bytes; anything else is an error.
        if body[r.pos..].iter().any(|&x| x != 0) {
            return Err(WireError::Trailing(body.len() - r.pos));
        }
        Ok(Value::Array(args))
    }
}

struct Reader<'a> {
    b: &'a [u8],
    pos: usize,
    big_endian: bool,
    max_depth: usize,
    /// Bytes of values still allowed (each node costs its size plus what it owns).
    budget: usize,
    limit: usize,
}

/// What one decoded node is charged, besides the bytes it owns.
const NODE_COST: usize = std::mem::size_of::<Value>() + 16;

impl<'a> Reader<'a> {
    fn charge(&mut self, bytes: usize) -> Result<(), WireError> {
        self.budget = self.budget.checked_sub(NODE_COST + bytes).ok_or(WireError::TooLarge(self.limit))?;
        Ok(())
    }

    fn align(&mut self, n: usize) -> Result<(), WireError> {
        let p = self.pos.div_ceil(n) * n;
        if p > self.b.len() {
            return Err(WireError::Short(self.b.len()));
        }
        self.pos = p;
        Ok(())
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.b.len()).ok_or(WireError::Short(self.b.len()))?;
        let s = &self.b[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn fixed<const N: usize>(&mut self) -> Result<[u8; N], WireError> {
        self.align(N)?;
        let mut a: [u8; N] = self.take(N)?.try_into().expect("N bytes");
        if self.big_endian != cfg!(target_endian = "big") {
            a.reverse();
        }
        Ok(a)
    }

    fn u32(&mut self) -> Result<u32, WireError> {
        Ok(u32::from_ne_bytes(self.fixed::<4>()?))
    }

    fn string(&mut self, len: usize, what: &'static str) -> Result<String, WireError> {
        let at = self.pos;
        let s = self.take(len)?;
        if self.take(1)? != [0] {
            return Err(WireError::Invalid { what, at });
        }
        std::str::from_utf8(s).map(str::to_owned).map_err(|_| WireError::Invalid { what, at })
    }

    fn value(&mut self, t: &Ty, depth: usize) -> Result<Value, WireError> {
        if depth > self.max_depth {
            return Err(WireError::TooDeep(self.max_depth));
        }
        self.charge(0)?;
        Ok(match t {
            Ty::Byte => Value::UInt(self.take(1)?[0] as u64),
            Ty::Bool => {
                let at = self.pos;
                match self.u32()? {
                    0 => Value::Bool(false),
                    1 => Value::Bool(true),
                    _ => return Err(WireError::Invalid { what: "boolean", at }),
                }
            }
            Ty::I16 => Value::int(i16::from_ne_bytes(self.fixed::<2>()?) as i64),
            Ty::U16 => Value::UInt(u16::from_ne_bytes(self.fixed::<2>()?) as u64),
            Ty::I32 => Value::int(i32::from_ne_bytes(self.fixed::<4>()?) as i64),
            Ty::U32 => Value::UInt(self.u32()? as u64),
            Ty::I64 => Value::int(i64::from_ne_bytes(self.fixed::<8>()?)),
            Ty::U64 => Value::UInt(u64::from_ne_bytes(self.fixed::<8>()?)),
            Ty::Double => Value::Float(f64::from_ne_bytes(self.fixed::<8>()?)),
            Ty::Str | Ty::Path => {
                let len = self.u32()? as usize;
                self.charge(len)?;
                Value::Str(self.string(len, if *t == Ty::Str { "string" } else { "object path" })?)
            }
            Ty::Sig => {
                let len = self.take(1)?[0] as usize;
                Value::Str(self.string(len, "signature")?)
            }
            Ty::Fd => Value::Map(vec![(Value::Str("unix_fd".into()), Value::UInt(self.u32()? as u64))]),
            Ty::Variant => {
                let len = self.take(1)?[0] as usize;
                let at = self.pos;
                let sig = self.string(len, "signature")?;
                let mut types = parse_signature(&sig)?;
                if types.len() != 1 {
                    return Err(WireError::Invalid { what: "variant signature", at });
                }
                let inner = types.pop().expect("one type");
                let v = self.value(&inner, depth + 1)?;
                Value::Array(vec![Value::Str(sig), v])
            }
            Ty::Array(elem) => {
                let len = self.u32()? as usize;
                self.align(elem.align())?;
                let end =
                    self.pos.checked_add(len).filter(|&e| e <= self.b.len()).ok_or(WireError::Short(self.b.len()))?;
                if **elem == Ty::Byte {
                    self.charge(len)?;
                    return Ok(Value::Bin(self.take(len)?.to_vec()));
                }
                let mut items = Vec::new();
                while self.pos < end {
                    items.push(self.value(elem, depth + 1)?);
                }
                if self.pos != end {
                    return Err(WireError::Invalid { what: "array length", at: end });
                }
                Value::Array(items)
            }
            Ty::Dict(k, v) => {
                let len = self.u32()? as usize;
                self.align(8)?;
                let end =
                    self.pos.checked_add(len).filter(|&e| e <= self.b.len()).ok_or(WireError::Short(self.b.len()))?;
                let mut entries = Vec::new();
                while self.pos < end {
                    self.align(8)?;
                    let key = self.value(k, depth + 1)?;
                    let val = self.value(v, depth + 1)?;
                    entries.push((key, val));
                }
                if self.pos != end {
                    return Err(WireError::Invalid { what: "dict length", at: end });
                }
                Value::map(entries)
            }
            Ty::Struct(fields) => {
                self.align(8)?;
                let mut out = Vec::with_capacity(fields.len());
                for f in fields {
                    out.push(self.value(f, depth + 1)?);
                }
                Value::Array(out)
            }
        })
    }
}

/// The byte order and body signature of a whole serialized message, read
/// straight from its header. (zbus parses the signature into a form in
/// which one struct argument `(us)` and two arguments `us` look the same;
/// the chain must keep the difference.) `None` if the header is malformed.
pub fn header_signature(msg: &[u8]) -> Option<(bool, &str)> {
    let big = match *msg.first()? {
        b'l' => false,
        b'B' => true,
        _ => return None,
    };
    let u32_at = |p: usize| -> Option<u32> {
        let b: [u8; 4] = msg.get(p..p + 4)?.try_into().ok()?;
        Some(if big { u32::from_be_bytes(b) } else { u32::from_le_bytes(b) })
    };
    let fields_len = u32_at(12)? as usize;
    let end = 16usize.checked_add(fields_len)?;
    let mut p = 16;
    while p < end {
        p = p.div_ceil(8) * 8;
        let code = *msg.get(p)?;
        let sig_len = *msg.get(p + 1)? as usize;
        let vsig = msg.get(p + 2..p + 2 + sig_len)?;
        p += 3 + sig_len;
        match vsig {
            b"g" => {
                let len = *msg.get(p)? as usize;
                let text = msg.get(p + 1..p + 1 + len)?;
                if code == 8 {
                    return Some((big, std::str::from_utf8(text).ok()?));
                }
                p += len + 2;
            }
            b"s" | b"o" => {
                p = p.div_ceil(4) * 4;
                p += u32_at(p)? as usize + 5;
            }
            b"u" => p = p.div_ceil(4) * 4 + 4,
            _ => return None,
        }
    }
    // No signature field: an empty body.
    Some((big, ""))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(x: &str) -> Value {
        Value::Str(x.into())
    }

    #[test]
    fn decodes_little_and_big_endian_basics() {
        // "u" 7, "s" "hi", "y" 3
        let le = [7, 0, 0, 0, 2, 0, 0, 0, b'h', b'i', 0, 3];
        let be = [0, 0, 0, 7, 0, 0, 0, 2, b'h', b'i', 0, 3];
        let want = Value::Array(vec![Value::UInt(7), s("hi"), Value::UInt(3)]);
        let mut d = BodyDecoder::new();
        assert_eq!(d.decode(&le, "usy", false, 64).unwrap(), want);
        assert_eq!(d.decode(&be, "usy", true, 64).unwrap(), want);
    }

    #[test]
    fn variant_keeps_its_signature_and_negative_ints_stay_signed() {
        // v = <i -2>
        let body = [1, b'i', 0, 0, 0xfe, 0xff, 0xff, 0xff];
        let got = BodyDecoder::new().decode(&body, "v", false, 64).unwrap();
        assert_eq!(got, Value::Array(vec![Value::Array(vec![s("i"), Value::Int(-2)])]));
    }

    #[test]
    fn malformed_bodies_are_errors() {
        let mut d = BodyDecoder::new();
        assert_eq!(d.decode(&[1, 0], "u", false, 64), Err(WireError::Short(2)));
        assert!(matches!(d.decode(&[2, 0, 0, 0], "b", false, 64), Err(WireError::Invalid { .. })));
        assert!(matches!(d.decode(&[0xff, 0xff, 0xff, 0xff], "s", false, 64), Err(WireError::Short(_))));
        assert!(matches!(d.decode(&[], "a{vs}", false, 64), Err(WireError::Signature(_))));
        assert!(matches!(d.decode(&[], "(", false, 64), Err(WireError::Signature(_))));
        assert!(matches!(d.decode(&[1, 0, 0, 0, 9], "u", false, 64), Err(WireError::Trailing(1))));
        // bad UTF-8
        assert!(matches!(d.decode(&[1, 0, 0, 0, 0xff, 0], "s", false, 64), Err(WireError::Invalid { .. })));
    }

    #[test]
    fn decoding_is_bounded_in_memory_not_only_in_body_size() {
        // 100k variants holding a byte: 400 KB on the wire.
        let mut body = (400_000u32).to_le_bytes().to_vec();
        for _ in 0..100_000 {
            body.extend_from_slice(&[1, b'y', 0, 7]);
        }
        let mut d = BodyDecoder::new();
        assert!(d.decode_bounded(&body, "av", false, 64, 64 << 20).is_ok());
        assert_eq!(d.decode_bounded(&body, "av", false, 64, 1 << 20), Err(WireError::TooLarge(1 << 20)));
    }

    #[test]
    fn signature_nesting_limits_follow_the_spec() {
        assert!(parse_signature(&format!("{}i", "a".repeat(32))).is_ok());
        assert!(parse_signature(&format!("{}i", "a".repeat(33))).is_err());
        assert!(parse_signature(&format!("{}i{}", "(".repeat(32), ")".repeat(32))).is_ok());
        assert!(parse_signature(&format!("{}i{}", "(".repeat(33), ")".repeat(33))).is_err());
    }

    mod against_zbus {
        //! Random values of several shapes, encoded by zbus (both byte
        //! orders) and decoded here: the decoder reads what a real D-Bus
        //! implementation writes.
        use super::super::*;
        use proptest::prelude::*;
        use std::collections::HashMap;
        use zbus::wire::serialized::Context;
        use zbus::wire::{BE, LE};

        fn s(x: &str) -> Value {
            Value::Str(x.into())
        }

        fn check<T: serde::Serialize + zbus::wire::DynamicType>(v: &T, sig: &str, want: &Value) {
            for (ctxt, big) in [(Context::new(LE, 0), false), (Context::new(BE, 0), true)] {
                let data = zbus::wire::to_bytes(ctxt, v).unwrap();
                let got = BodyDecoder::new().decode(&data, sig, big, 64).unwrap();
                assert_eq!(&got, want, "{sig} big-endian: {big}");
            }
        }

        proptest! {
            #[test]
            fn basic_types(y: u8, b: bool, n: i16, q: u16, i: i32, u: u32, x: i64, t: u64, d in -1e300f64..1e300, st in "\\PC{0,20}") {
                let v = (y, b, n, q, i, u, x, t, d, st.clone());
                let want = Value::Array(vec![
                    Value::UInt(y as u64), Value::Bool(b), Value::int(n as i64), Value::UInt(q as u64),
                    Value::int(i as i64), Value::UInt(u as u64), Value::int(x), Value::UInt(t), Value::Float(d), s(&st),
                ]);
                check(&v, "ybnqiuxtds", &want);
            }

            #[test]
            fn containers(
                aau in proptest::collection::vec(proptest::collection::vec(any::<u32>(), 0..4), 0..4),
                ay in proptest::collection::vec(any::<u8>(), 0..9),
                dict in proptest::collection::hash_map("[a-z]{1,4}", any::<i64>(), 0..4),
                structs in proptest::collection::vec((any::<u8>(), "[a-z]{0,3}", any::<f64>().prop_filter("finite", |f| f.is_finite())), 0..3),
            ) {
                let v = (aau.clone(), ay.clone(), dict.clone(), structs.clone());
                let want = Value::Array(vec![
                    Value::Array(aau.iter().map(|a| Value::Array(a.iter().map(|&x| Value::UInt(x as u64)).collect())).collect()),
                    Value::Bin(ay),
                    Value::map(dict.iter().map(|(k, v)| (s(k), Value::int(*v))).collect()),
                    Value::Array(structs.iter().map(|(a, b, c)| Value::Array(vec![Value::UInt(*a as u64), s(b), Value::Float(*c)])).collect()),
                ]);
                check(&v, "aauaya{sx}a(ysd)", &want);
            }

            /// Hostile bytes: any outcome but a panic (or a runaway allocation).
            #[test]
            fn garbage_never_panics(
                bytes in proptest::collection::vec(any::<u8>(), 0..256),
                sig in prop::sample::select(vec!["v", "av", "a{sv}", "aay", "(yv)", "as", "g", "h", "a(ta{sv})", "aaaav"]),
                big: bool,
            ) {
                let _ = BodyDecoder::new().decode(&bytes, sig, big, 64);
                let _ = header_signature(&bytes);
            }

            #[test]
            fn variants(u: u32, st in "[a-z]{0,5}", list in proptest::collection::vec(any::<i16>(), 0..4)) {
                let mut m: HashMap<&str, zbus::Variant<'_>> = HashMap::new();
                m.insert("u", zbus::Variant::from(u));
                m.insert("s", zbus::Variant::from(st.as_str()));
                m.insert("l", zbus::Variant::from(list.clone()));
                let want = Value::Array(vec![Value::map(vec![
                    (s("u"), Value::Array(vec![s("u"), Value::UInt(u as u64)])),
                    (s("s"), Value::Array(vec![s("s"), s(&st)])),
                    (s("l"), Value::Array(vec![s("an"), Value::Array(list.iter().map(|&x| Value::int(x as i64)).collect())])),
                ])]);
                check(&(m,), "a{sv}", &want);
            }
        }
    }
}
