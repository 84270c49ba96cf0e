//! The chain's canonical encoding: what is hashed, and therefore what must
//! never change for format version 1. `docs/FORMAT.md` is the normative
//! description; this module is its implementation.
//!
//! Everything hashed is MessagePack in canonical form:
//! - integers use the shortest encoding (non-negative values always as
//!   positive fixint / uint 8..64, negative values as negative fixint /
//!   int 8..64), which is what `rmp::encode::write_uint` / `write_sint` do;
//! - floats are always float 64;
//! - maps have unique keys, sorted by the bytes of their canonical encoding;
//! - structs are positional arrays (rmp-serde's default), `None` is nil.

pub(crate) mod dbus;

use std::fmt;

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{SerializeMap, SerializeSeq, Serializer};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Format version written in every block body and segment header.
pub const FORMAT_VERSION: u32 = 1;

pub const BLOCK_DOMAIN: &[u8] = b"op-dbus:block:v1\0";
pub const DATA_DOMAIN: &[u8] = b"op-dbus:data:v1\0";
pub const VECTOR_DOMAIN: &[u8] = b"op-dbus:vector:v1\0";

/// Bit 0 of `Footprint::flags`: `data` holds a truncated copy of the event
/// data; `data_hash` is still the hash of the full data.
pub const FLAG_TRUNCATED: u32 = 1;

pub type Hash = [u8; 32];

pub const ZERO_HASH: Hash = [0u8; 32];

pub fn hash_with_domain(domain: &[u8], bytes: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update(domain);
    h.update(bytes);
    h.finalize().into()
}

pub fn data_hash(data: &[u8]) -> Hash {
    hash_with_domain(DATA_DOMAIN, data)
}

pub fn block_hash(body: &[u8]) -> Hash {
    hash_with_domain(BLOCK_DOMAIN, body)
}

/// Hash of a vector as stored: domain, then `bytes`, its components as
/// little-endian f32.
pub fn vector_hash_le(bytes: &[u8]) -> Hash {
    hash_with_domain(VECTOR_DOMAIN, bytes)
}

/// The wall clock as UTC nanoseconds since the Unix epoch.
pub fn now_ns() -> i64 {
    let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    d.as_nanos().min(i64::MAX as u128) as i64
}

pub fn hex(hash: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(hash.len() * 2);
    for b in hash {
        let _ = write!(s, "{b:02x}");
    }
    s
}

pub fn parse_hex_hash(s: &str) -> Option<Hash> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, chunk) in s.as_bytes().chunks(2).enumerate() {
        let hi = (chunk[0] as char).to_digit(16)?;
        let lo = (chunk[1] as char).to_digit(16)?;
        out[i] = (hi * 16 + lo) as u8;
    }
    Some(out)
}

/// Where an event came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// Captured from a D-Bus connection.
    Dbus,
    /// Submitted by another program through the D-Bus service.
    Submit,
    /// Read by `op-dbus import`.
    Import,
    /// Written by op-dbus itself (gap and snapshot records).
    Internal,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Dbus => "dbus",
            Source::Submit => "submit",
            Source::Import => "import",
            Source::Internal => "internal",
        }
    }
}

/// Credentials of the sender, where the bus told us.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credentials {
    pub(crate) uid: Option<u32>,
    pub(crate) pid: Option<u32>,
    pub(crate) unit: Option<String>,
}

/// One recorded event, as stored in a block.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Footprint {
    pub source: Source,
    pub(crate) plugin_id: String,
    pub operation: String,
    pub(crate) path: Option<String>,
    pub(crate) sender: Option<String>,
    pub(crate) creds: Option<Credentials>,
    /// Capture time, UTC nanoseconds since the Unix epoch.
    pub(crate) captured_ns: i64,
    /// D-Bus type signature of `data`; empty for untyped (JSON) data.
    pub(crate) signature: String,
    /// Canonical MessagePack encoding of the event data (see [`Value`]).
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
    #[serde(with = "hash_bytes")]
    pub(crate) data_hash: Hash,
    pub(crate) flags: u32,
}

/// Reference from a block to its vector in `@vectors/`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VectorRef {
    /// Model id, e.g. `heuristic-v1`; names the folder under `@vectors/`.
    pub(crate) model: String,
    pub(crate) dims: u32,
    /// Byte offset of the vector in the vector file paired with the block's segment.
    pub(crate) offset: u64,
    #[serde(with = "hash_bytes")]
    pub(crate) hash: Hash,
}

/// Everything a block's hash covers. Encoded as a 6-element array.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BlockBody {
    pub version: u32,
    pub seq: u64,
    #[serde(with = "hash_bytes")]
    pub prev_hash: Hash,
    /// Commit time assigned by ChainWriter, UTC ns, never decreasing along the chain.
    pub timestamp_ns: i64,
    pub footprint: Footprint,
    pub vector: Option<VectorRef>,
}

/// The same encoding as [`BlockBody`], from borrowed parts, so the writer
/// does not copy a footprint to hash it. Field order must match `BlockBody`
/// exactly; `body_ref_encodes_like_body` checks it.
#[derive(Serialize)]
pub struct BlockBodyRef<'a> {
    pub(crate) version: u32,
    pub(crate) seq: u64,
    #[serde(with = "hash_bytes")]
    pub(crate) prev_hash: &'a Hash,
    pub(crate) timestamp_ns: i64,
    pub(crate) footprint: &'a Footprint,
    pub(crate) vector: Option<&'a VectorRef>,
}

impl BlockBodyRef<'_> {
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        rmp_serde::encode::write(out, self).expect("block body encodes");
    }
}

/// A borrowed view of a block body, for `verify`: the same positional
/// layout as [`BlockBody`], decoded without copying strings or data.
/// `view_decodes_like_body` keeps the two in step.
#[derive(Debug, Deserialize)]
pub struct BlockView<'a> {
    pub(crate) version: u32,
    pub(crate) seq: u64,
    #[serde(with = "hash_bytes")]
    pub(crate) prev_hash: Hash,
    pub(crate) timestamp_ns: i64,
    #[serde(borrow)]
    pub(crate) footprint: FootprintView<'a>,
    #[serde(borrow)]
    pub(crate) vector: Option<VectorView<'a>>,
}

#[derive(Debug, Deserialize)]
pub struct FootprintView<'a> {
    pub source: Source,
    pub plugin_id: &'a str,
    pub operation: &'a str,
    #[serde(borrow)]
    pub path: Option<&'a str>,
    #[serde(borrow)]
    pub sender: Option<&'a str>,
    #[serde(borrow)]
    pub creds: Option<CredentialsView<'a>>,
    pub captured_ns: i64,
    pub signature: &'a str,
    pub(crate) data: &'a [u8],
    #[serde(with = "hash_bytes")]
    pub(crate) data_hash: Hash,
    pub(crate) flags: u32,
}

#[derive(Debug, Deserialize)]
pub struct CredentialsView<'a> {
    pub uid: Option<u32>,
    pub pid: Option<u32>,
    #[serde(borrow)]
    pub unit: Option<&'a str>,
}

#[derive(Debug, Deserialize)]
pub struct VectorView<'a> {
    pub(crate) model: &'a str,
    pub(crate) dims: u32,
    pub(crate) offset: u64,
    #[serde(with = "hash_bytes")]
    pub(crate) hash: Hash,
}

impl<'a> BlockView<'a> {
    pub fn decode(bytes: &'a [u8]) -> Result<Self, CodecError> {
        let view: BlockView<'a> = rmp_serde::from_slice(bytes).map_err(|e| CodecError::Body(e.to_string()))?;
        if view.version != FORMAT_VERSION {
            return Err(CodecError::Version(view.version));
        }
        Ok(view)
    }
}

impl BlockBody {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256 + self.footprint.data.len());
        self.encode_into(&mut out);
        out
    }

    pub fn encode_into(&self, out: &mut Vec<u8>) {
        // Writing to a Vec cannot fail and every field is representable.
        rmp_serde::encode::write(out, self).expect("block body encodes");
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, CodecError> {
        let body: BlockBody = rmp_serde::from_slice(bytes).map_err(|e| CodecError::Body(e.to_string()))?;
        if body.version != FORMAT_VERSION {
            return Err(CodecError::Version(body.version));
        }
        Ok(body)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("block body does not decode: {0}")]
    Body(String),
    #[error("unknown block format version {0}")]
    Version(u32),
    #[error("event data does not decode: {0}")]
    Data(String),
}

impl Value {
    /// Size of a value's canonical encoding, without encoding it.
    pub fn encoded_len(&self) -> usize {
        fn len_header(n: usize, fix_max: usize) -> usize {
            if n <= fix_max {
                1
            } else if n <= u16::MAX as usize {
                3
            } else {
                5
            }
        }
        match self {
            Value::Nil | Value::Bool(_) => 1,
            Value::UInt(u) => match *u {
                0..=127 => 1,
                128..=255 => 2,
                256..=65_535 => 3,
                65_536..=4_294_967_295 => 5,
                _ => 9,
            },
            Value::Int(i) => match *i {
                -32..=-1 => 1,
                -128..=-33 => 2,
                -32_768..=-129 => 3,
                -2_147_483_648..=-32_769 => 5,
                _ => 9,
            },
            Value::Float(_) => 9,
            Value::Str(s) => {
                let n = s.len();
                (if n <= 31 {
                    1
                } else if n <= 255 {
                    2
                } else {
                    len_header(n, 0)
                }) + n
            }
            Value::Bin(b) => {
                let n = b.len();
                (if n <= 255 { 2 } else { len_header(n, 0) }) + n
            }
            Value::Array(a) => len_header(a.len(), 15) + a.iter().map(Value::encoded_len).sum::<usize>(),
            Value::Map(m) => {
                len_header(m.len(), 15) + m.iter().map(|(k, v)| k.encoded_len() + v.encoded_len()).sum::<usize>()
            }
        }
    }
}

/// Longest plugin id, operation, path, sender or signature stored. Sources
/// validate their own input (`import` rejects names over 255 bytes and
/// paths over this); this is the last line that keeps every frame far
/// below the format's 64 MiB frame limit.
pub const MAX_FIELD_BYTES: usize = 4096;

mod hash_bytes {
    use super::Hash;
    use serde::de::{self, Deserializer, Visitor};
    use serde::Serializer;
    use std::fmt;

    pub fn serialize<S: Serializer>(h: &impl AsRef<[u8]>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(h.as_ref())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Hash, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Hash;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("32 bytes")
            }
            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Hash, E> {
                v.try_into().map_err(|_| E::invalid_length(v.len(), &self))
            }
        }
        d.deserialize_bytes(V)
    }
}

/// Event data in canonical form. Maps keep their entries sorted by the
/// canonical encoding of the key, without duplicates; non-negative integers
/// are always `UInt`, negative ones `Int`.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Nil,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    Str(String),
    Bin(Vec<u8>),
    Array(Vec<Value>),
    Map(Vec<(Value, Value)>),
}

/// Orders map keys by their canonical encoding. Strings, the usual keys,
/// are compared without encoding them: header bytes (which carry the
/// length class) first, then the UTF-8 bytes.
fn key_cmp(a: &Value, b: &Value) -> std::cmp::Ordering {
    fn str_header(len: usize) -> ([u8; 5], usize) {
        let mut h = [0u8; 5];
        if len < 32 {
            h[0] = 0xa0 | len as u8;
            (h, 1)
        } else if len < 256 {
            h[0] = 0xd9;
            h[1] = len as u8;
            (h, 2)
        } else if len < 65_536 {
            h[0] = 0xda;
            h[1..3].copy_from_slice(&(len as u16).to_be_bytes());
            (h, 3)
        } else {
            h[0] = 0xdb;
            h[1..5].copy_from_slice(&(len as u32).to_be_bytes());
            (h, 5)
        }
    }
    match (a, b) {
        (Value::Str(x), Value::Str(y)) => {
            let (hx, nx) = str_header(x.len());
            let (hy, ny) = str_header(y.len());
            hx[..nx].cmp(&hy[..ny]).then_with(|| x.as_bytes().cmp(y.as_bytes()))
        }
        _ => a.encode().cmp(&b.encode()),
    }
}

/// Why a JSON document cannot become event data.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum DataError {
    #[error("data nests deeper than {max} levels")]
    TooDeep { max: usize },
    #[error("data encodes to {size} bytes, above the cap of {max} bytes")]
    TooLarge { size: usize, max: usize },
}

impl Value {
    pub fn int(v: i64) -> Value {
        if v >= 0 {
            Value::UInt(v as u64)
        } else {
            Value::Int(v)
        }
    }

    /// Builds a canonical map: entries sorted by encoded key, last duplicate wins.
    pub fn map(mut entries: Vec<(Value, Value)>) -> Value {
        if entries.windows(2).all(|w| key_cmp(&w[0].0, &w[1].0) == std::cmp::Ordering::Less) {
            return Value::Map(entries); // already canonical (e.g. read back from the chain)
        }
        // Stable, so among equal keys the last one given stays last.
        entries.sort_by(|a, b| key_cmp(&a.0, &b.0));
        let mut out: Vec<(Value, Value)> = Vec::with_capacity(entries.len());
        for (k, v) in entries {
            match out.last_mut() {
                Some(last) if key_cmp(&last.0, &k) == std::cmp::Ordering::Equal => last.1 = v,
                _ => out.push((k, v)),
            }
        }
        Value::Map(out)
    }

    /// Nesting depth: scalars 0, `[1]` 1, `{"a":[1]}` 2.
    pub fn depth(&self) -> usize {
        match self {
            Value::Array(a) => 1 + a.iter().map(Value::depth).max().unwrap_or(0),
            Value::Map(m) => 1 + m.iter().map(|(k, v)| k.depth().max(v.depth())).max().unwrap_or(0),
            _ => 0,
        }
    }

    /// JSON view for display: binary becomes an array of numbers, map keys
    /// that are not strings become their JSON text.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as J;
        match self {
            Value::Nil => J::Null,
            Value::Bool(b) => J::Bool(*b),
            Value::Int(i) => J::from(*i),
            Value::UInt(u) => J::from(*u),
            Value::Float(f) => serde_json::Number::from_f64(*f).map(J::Number).unwrap_or(J::Null),
            Value::Str(s) => J::String(s.clone()),
            Value::Bin(b) => J::Array(b.iter().map(|x| J::from(*x)).collect()),
            Value::Array(a) => J::Array(a.iter().map(Value::to_json).collect()),
            Value::Map(m) => {
                let mut o = serde_json::Map::new();
                for (k, v) in m {
                    let key = match k {
                        Value::Str(s) => s.clone(),
                        other => other.to_json().to_string(),
                    };
                    o.insert(key, v.to_json());
                }
                J::Object(o)
            }
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        rmp_serde::encode::write(&mut out, self).expect("value encodes");
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Value, CodecError> {
        rmp_serde::from_slice(bytes).map_err(|e| CodecError::Data(e.to_string()))
    }
}

impl Serialize for Value {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Value::Nil => s.serialize_unit(),
            Value::Bool(b) => s.serialize_bool(*b),
            Value::Int(i) => s.serialize_i64(*i),
            Value::UInt(u) => s.serialize_u64(*u),
            Value::Float(f) => s.serialize_f64(*f),
            Value::Str(v) => s.serialize_str(v),
            Value::Bin(b) => s.serialize_bytes(b),
            Value::Array(a) => {
                let mut seq = s.serialize_seq(Some(a.len()))?;
                for v in a {
                    seq.serialize_element(v)?;
                }
                seq.end()
            }
            Value::Map(m) => {
                let mut map = s.serialize_map(Some(m.len()))?;
                for (k, v) in m {
                    map.serialize_entry(k, v)?;
                }
                map.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Value, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Value;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a MessagePack value")
            }
            fn visit_unit<E>(self) -> Result<Value, E> {
                Ok(Value::Nil)
            }
            fn visit_none<E>(self) -> Result<Value, E> {
                Ok(Value::Nil)
            }
            fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
                Ok(Value::Bool(v))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
                Ok(Value::int(v))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
                Ok(Value::UInt(v))
            }
            fn visit_f32<E>(self, v: f32) -> Result<Value, E> {
                Ok(Value::Float(v as f64))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
                Ok(Value::Float(v))
            }
            fn visit_str<E>(self, v: &str) -> Result<Value, E> {
                Ok(Value::Str(v.to_owned()))
            }
            fn visit_bytes<E>(self, v: &[u8]) -> Result<Value, E> {
                Ok(Value::Bin(v.to_vec()))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
                let mut out = Vec::new();
                while let Some(v) = seq.next_element()? {
                    out.push(v);
                }
                Ok(Value::Array(out))
            }
            fn visit_string<E>(self, v: String) -> Result<Value, E> {
                Ok(Value::Str(v))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
                let mut out = Vec::with_capacity(map.size_hint().unwrap_or(0));
                while let Some((k, v)) = map.next_entry()? {
                    out.push((k, v));
                }
                // Canonical whatever the input order (JSON objects are unordered).
                Ok(Value::map(out))
            }
            fn visit_enum<A: de::EnumAccess<'de>>(self, _: A) -> Result<Value, A::Error> {
                Err(de::Error::custom("msgpack ext types are not used by op-dbus"))
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The footprint of the FORMAT.md worked example.
    fn sample_footprint() -> Footprint {
        super::format_example::block().footprint
    }

    #[test]
    fn encoded_len_matches_encoding() {
        let v: Value = serde_json::from_str(
            r#"{"a":[1,-1,-40,-200,-70000,-5000000000,300,70000,5000000000,1.5,"s",null,true],"bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb":{"x":"y"}}"#,
        )
        .unwrap();
        assert_eq!(v.encoded_len(), v.encode().len());
        let long = Value::Array((0..20).map(|i| Value::Str("z".repeat(i * 20))).collect());
        assert_eq!(long.encoded_len(), long.encode().len());
        let bin = Value::Bin(vec![0; 300]);
        assert_eq!(bin.encoded_len(), bin.encode().len());
    }

    #[test]
    fn integers_use_shortest_form() {
        assert_eq!(Value::UInt(5).encode(), vec![0x05]);
        assert_eq!(Value::UInt(200).encode(), vec![0xcc, 200]);
        assert_eq!(Value::Int(-1).encode(), vec![0xff]);
        assert_eq!(Value::Int(-200).encode(), vec![0xd1, 0xff, 0x38]);
        assert_eq!(Value::Float(1.0).encode(), vec![0xcb, 0x3f, 0xf0, 0, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn map_keys_are_sorted_and_unique() {
        let m = Value::map(vec![
            (Value::Str("b".into()), Value::UInt(1)),
            (Value::Str("a".into()), Value::UInt(2)),
            (Value::Str("b".into()), Value::UInt(3)),
        ]);
        assert_eq!(
            m,
            Value::Map(vec![(Value::Str("a".into()), Value::UInt(2)), (Value::Str("b".into()), Value::UInt(3))])
        );
    }

    #[test]
    fn json_objects_become_canonical_maps() {
        let v: Value = serde_json::from_str(r#"{"bb":1,"a":[true,null],"bb":2,"cc":{"z":-1.5,"y":"s"}}"#).unwrap();
        assert_eq!(v.depth(), 2);
        let Value::Map(m) = &v else { panic!("map") };
        let keys: Vec<_> = m.iter().map(|(k, _)| k.clone()).collect();
        assert_eq!(keys, vec![Value::Str("a".into()), Value::Str("bb".into()), Value::Str("cc".into())]);
        assert_eq!(m[1].1, Value::UInt(2), "last duplicate wins");
    }

    #[test]
    fn string_key_order_matches_encoded_order() {
        let keys: Vec<Value> = ["", "b", "ab", &"x".repeat(31), &"a".repeat(32), &"a".repeat(300), &"z".repeat(70_000)]
            .iter()
            .map(|s| Value::Str(s.to_string()))
            .collect();
        for a in &keys {
            for b in &keys {
                assert_eq!(key_cmp(a, b), a.encode().cmp(&b.encode()), "{a:?} vs {b:?}");
            }
        }
    }

    #[test]
    fn body_ref_encodes_like_body() {
        let body = BlockBody {
            version: FORMAT_VERSION,
            seq: 9,
            prev_hash: [7; 32],
            timestamp_ns: 5,
            footprint: sample_footprint(),
            vector: Some(VectorRef { model: "heuristic-v1".into(), dims: 64, offset: 24, hash: [1; 32] }),
        };
        let mut by_ref = Vec::new();
        BlockBodyRef {
            version: body.version,
            seq: body.seq,
            prev_hash: &body.prev_hash,
            timestamp_ns: body.timestamp_ns,
            footprint: &body.footprint,
            vector: body.vector.as_ref(),
        }
        .encode_into(&mut by_ref);
        assert_eq!(by_ref, body.encode());
    }

    #[test]
    fn block_body_is_a_six_element_array() {
        let body = BlockBody {
            version: FORMAT_VERSION,
            seq: 0,
            prev_hash: ZERO_HASH,
            timestamp_ns: 1,
            footprint: sample_footprint(),
            vector: None,
        };
        let bytes = body.encode();
        assert_eq!(bytes[0], 0x96, "fixarray of 6");
        assert_eq!(BlockBody::decode(&bytes).unwrap(), body);
    }

    fn arb_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Nil),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::int),
            any::<u64>().prop_map(Value::UInt),
            any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(Value::Float),
            ".{0,12}".prop_map(Value::Str),
            proptest::collection::vec(any::<u8>(), 0..12).prop_map(Value::Bin),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                proptest::collection::vec((inner.clone(), inner), 0..6).prop_map(Value::map),
            ]
        })
    }

    proptest! {
        #[test]
        fn value_round_trips_byte_for_byte(v in arb_value()) {
            let bytes = v.encode();
            let back = Value::decode(&bytes).unwrap();
            prop_assert_eq!(back.encode(), bytes);
        }

        #[test]
        fn block_round_trips_and_hash_is_stable(
            seq in any::<u64>(), ts in any::<i64>(), captured in any::<i64>(),
            prev in any::<[u8; 32]>(), v in arb_value(), plugin in "[a-z.]{1,20}",
            with_vec in any::<bool>(), off in any::<u64>(), flags in any::<u32>(),
        ) {
            let data = v.encode();
            let body = BlockBody {
                version: FORMAT_VERSION, seq, prev_hash: prev, timestamp_ns: ts,
                footprint: Footprint {
                    source: Source::Dbus, plugin_id: plugin.clone(), operation: format!("{plugin}.Op"),
                    path: None, sender: Some(":1.2".into()),
                    creds: Some(Credentials { uid: Some(0), pid: None, unit: Some("x.service".into()) }),
                    captured_ns: captured, signature: "a{sv}".into(), data_hash: data_hash(&data), data, flags,
                },
                vector: with_vec.then(|| VectorRef { model: "heuristic-v1".into(), dims: 64, offset: off, hash: prev }),
            };
            let bytes = body.encode();
            let back = BlockBody::decode(&bytes).unwrap();
            prop_assert_eq!(&back, &body);
            // view_decodes_like_body
            let view = BlockView::decode(&bytes).unwrap();
            prop_assert_eq!((view.seq, view.prev_hash, view.timestamp_ns), (body.seq, body.prev_hash, body.timestamp_ns));
            let (f, g) = (&view.footprint, &body.footprint);
            prop_assert_eq!((f.source, f.plugin_id, f.operation, f.path, f.sender), (g.source, &g.plugin_id[..], &g.operation[..], g.path.as_deref(), g.sender.as_deref()));
            prop_assert_eq!(f.creds.as_ref().map(|c| (c.uid, c.pid, c.unit)), g.creds.as_ref().map(|c| (c.uid, c.pid, c.unit.as_deref())));
            prop_assert_eq!((f.captured_ns, f.signature, f.data, f.data_hash, f.flags), (g.captured_ns, &g.signature[..], &g.data[..], g.data_hash, g.flags));
            prop_assert_eq!(view.vector.map(|v| (v.model.to_string(), v.dims, v.offset, v.hash)), body.vector.as_ref().map(|v| (v.model.clone(), v.dims, v.offset, v.hash)));
            prop_assert_eq!(back.encode(), bytes.clone());
            prop_assert_eq!(block_hash(&back.encode()), block_hash(&bytes));
        }
    }
}

/// The worked example of docs/FORMAT.md; the test below keeps the document honest.
#[cfg(test)]
pub(crate) mod format_example {
    use super::*;

    pub(crate) fn block() -> BlockBody {
        let data = Value::map(vec![
            (Value::Str("unit".into()), Value::Str("nginx.service".into())),
            (Value::Str("result".into()), Value::Str("done".into())),
        ])
        .encode();
        BlockBody {
            version: FORMAT_VERSION,
            seq: 0,
            prev_hash: ZERO_HASH,
            timestamp_ns: 1_700_000_000_123_456_789,
            footprint: Footprint {
                source: Source::Import,
                plugin_id: "org.freedesktop.systemd1".into(),
                operation: "org.freedesktop.systemd1.Manager.JobRemoved".into(),
                path: Some("/org/freedesktop/systemd1".into()),
                sender: None,
                creds: None,
                captured_ns: 1_700_000_000_000_000_000,
                signature: String::new(),
                data_hash: data_hash(&data),
                data,
                flags: 0,
            },
            vector: None,
        }
    }

    #[test]
    fn matches_the_document() {
        let b = block();
        let body = b.encode();
        let hash = block_hash(&body);
        assert_eq!(hex(&b.footprint.data_hash), "4b4e8c0c70818f40c90b72e699da76c9e2ea9473d4a59f727f07521fd39a4fb9");
        assert_eq!(
            hex(&body),
            "960100c4200000000000000000000000000000000000000000000000000000000000000000cf17979cfe3d85cd15\
             9ba6696d706f7274b86f72672e667265656465736b746f702e73797374656d6431d92b6f72672e6672656564\
             65736b746f702e73797374656d64312e4d616e616765722e4a6f6252656d6f766564b92f6f72672f66726565\
             6465736b746f702f73797374656d6431c0c0cf17979cfe362a0000a0c42082a4756e6974ad6e67696e782e73\
             657276696365a6726573756c74a4646f6e65c4204b4e8c0c70818f40c90b72e699da76c9e2ea9473d4a59f72\
             7f07521fd39a4fb900c0"
        );
        assert_eq!(hex(&hash), "f177d823138c42e8ae1d5a95685ef5033338f56e977410d4b261311f755f9c7a");
        assert_eq!(crc32fast::hash(&[&body[..], &hash[..]].concat()), 0xd6b0ed37);
        assert_eq!(body.len() + 32, 264);
    }
}
