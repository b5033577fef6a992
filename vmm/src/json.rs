//! JSON output with `serde`: every `--json` report, event line and audit record is a
//! `#[derive(Serialize)]` struct, written by `serde_json` on one line ([`to_line`]).
//!
//! Numbers: integers are JSON numbers, except addresses, masks, policies and register values:
//! consumers that parse numbers as IEEE doubles (JavaScript, `jq`) lose precision above
//! 2^53, so those are `"0x…"` strings (`#[serde(serialize_with = "json::hex_num")]`), and
//! byte strings (digests, keys) are lowercase hex without prefix ([`hex_bytes`]).
//!
//! ```
//! use relaunch::json;
//! #[derive(serde::Serialize)]
//! struct Launch {
//!     event: &'static str,
//!     generation: u64,
//!     #[serde(serialize_with = "json::hex_bytes")]
//!     digest: [u8; 2],
//!     #[serde(serialize_with = "json::hex_num")]
//!     gpa: u64,
//! }
//! let line = json::to_line(&Launch { event: "launch", generation: 3, digest: [0xde, 0xad], gpa: 0x1000 });
//! assert_eq!(line, r#"{"event":"launch","generation":3,"digest":"dead","gpa":"0x1000"}"#);
//! ```

use serde::Serializer;

/// Lowercase hex digits of `bytes` (no quotes, no prefix).
pub fn push_hex(out: &mut String, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    out.reserve(bytes.len().saturating_mul(2));
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
}

/// `bytes` as a lowercase hex string.
pub fn hex(bytes: &[u8]) -> String {
    let mut s = String::new();
    push_hex(&mut s, bytes);
    s
}

/// `v` as one line of JSON (no newline). Our records cannot fail to serialize (no maps with
/// non-string keys, no fallible `Serialize` impls); if one ever did, the line says so as
/// JSON rather than panicking.
pub fn to_line<T: serde::Serialize + ?Sized>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|e| {
        let msg = serde_json::to_string(&e.to_string()).unwrap_or_default();
        format!("{{\"error\":{msg}}}")
    })
}

/// An integer that serializes as a `"0x…"` lowercase hex string (for view structs with many
/// such fields, instead of a `serialize_with` on each).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hex(pub u64);

impl serde::Serialize for Hex {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        hex_num(&self.0, s)
    }
}

/// `serialize_with` for an unsigned integer: a `"0x…"` lowercase hex string.
///
/// # Errors
/// The serializer's.
pub fn hex_num<T, S>(v: &T, s: S) -> Result<S::Ok, S::Error>
where
    T: Copy + Into<u64>,
    S: Serializer,
{
    s.collect_str(&format_args!("{:#x}", (*v).into()))
}

/// `serialize_with` for an optional unsigned integer: `"0x…"` or `null`.
///
/// # Errors
/// The serializer's.
pub fn opt_hex_num<T, S>(v: &Option<T>, s: S) -> Result<S::Ok, S::Error>
where
    T: Copy + Into<u64>,
    S: Serializer,
{
    match v {
        Some(v) => hex_num(v, s),
        None => s.serialize_none(),
    }
}

/// `serialize_with` for bytes: a lowercase hex string (no prefix).
///
/// # Errors
/// The serializer's.
pub fn hex_bytes<T, S>(v: &T, s: S) -> Result<S::Ok, S::Error>
where
    T: AsRef<[u8]> + ?Sized,
    S: Serializer,
{
    s.serialize_str(&hex(v.as_ref()))
}

/// `serialize_with` for optional bytes: a lowercase hex string or `null`.
///
/// # Errors
/// The serializer's.
pub fn opt_hex_bytes<T, S>(v: &Option<T>, s: S) -> Result<S::Ok, S::Error>
where
    T: AsRef<[u8]>,
    S: Serializer,
{
    match v {
        Some(v) => hex_bytes(v, s),
        None => s.serialize_none(),
    }
}

/// `serialize_with` for a list of byte strings: an array of lowercase hex strings.
///
/// # Errors
/// The serializer's.
pub fn hex_list<T, S>(v: &[T], s: S) -> Result<S::Ok, S::Error>
where
    T: AsRef<[u8]>,
    S: Serializer,
{
    s.collect_seq(v.iter().map(|b| hex(b.as_ref())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Serialize)]
    struct All<'a> {
        text: &'a str,
        max: u64,
        #[serde(serialize_with = "hex_num")]
        gpa: u64,
        #[serde(serialize_with = "hex_num")]
        small: u8,
        #[serde(serialize_with = "opt_hex_num")]
        none: Option<u32>,
        #[serde(serialize_with = "hex_bytes")]
        h: [u8; 4],
        #[serde(serialize_with = "hex_list")]
        pages: Vec<[u8; 2]>,
        nothing: Option<u64>,
    }

    #[test]
    fn fields_and_escaping() {
        let s = to_line(&All {
            text: "a\"b\\c\nd\u{0}é",
            max: u64::MAX,
            gpa: 0xFFFF_FFFF_F000,
            small: 0,
            none: None,
            h: [0, 0x0f, 0xf0, 0xff],
            pages: vec![[1, 2], [0xab, 0xcd]],
            nothing: None,
        });
        assert_eq!(
            s,
            concat!(
                r#"{"text":"a\"b\\c\nd\u0000é","max":18446744073709551615,"#,
                r#""gpa":"0xfffffffff000","small":"0x0","none":null,"h":"000ff0ff","#,
                r#""pages":["0102","abcd"],"nothing":null}"#
            )
        );
        let v: serde_json::Value = serde_json::from_str(&s).unwrap();
        assert_eq!(v["max"].as_u64(), Some(u64::MAX));
    }

    #[test]
    fn every_control_character_is_escaped() {
        let all: String = (0u32..0x80).filter_map(char::from_u32).collect();
        let out = to_line(&all);
        assert!(
            !out.bytes().any(|b| b < 0x20),
            "raw control byte in {out:?}"
        );
        assert_eq!(serde_json::from_str::<String>(&out).unwrap(), all);
    }

    #[test]
    fn hex_helpers() {
        assert_eq!(hex(&[]), "");
        assert_eq!(hex(&[0xab, 0x01]), "ab01");
    }
}
