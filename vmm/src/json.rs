//! A tiny, correct JSON writer (RFC 8259) for `--json` output and audit/event lines.
//!
//! Nesting is correct by construction: objects and arrays are written through closures, so a
//! value can never be left open or closed twice, and commas are placed by the writer.
//!
//! ```
//! use relaunch::json;
//! let line = json::object(|o| {
//!     o.str("event", "launch")
//!         .u64("generation", 3)
//!         .hex("digest", &[0xde, 0xad])
//!         .array("vcpus", |a| {
//!             a.u64(0).u64(1);
//!         });
//! });
//! assert_eq!(line, r#"{"event":"launch","generation":3,"digest":"dead","vcpus":[0,1]}"#);
//! ```
//!
//! Numbers: `u64`/`i64` are written as JSON numbers. Consumers that parse numbers as IEEE
//! doubles (JavaScript, `jq`) lose precision above 2^53, so addresses, masks and policies go
//! through [`ObjectWriter::hex_u64`] (`"0x…"` strings) instead.

use std::fmt::Write as _;

/// Appends `s` as a JSON string literal (with the quotes) to `out`.
///
/// Escapes `"` and `\`, writes the short forms `\b \f \n \r \t`, and `\u00XX` for every other
/// control character (U+0000–U+001F) and for U+007F. Everything else, including non-ASCII, is
/// written as UTF-8 (RFC 8259 §7). U+2028/U+2029 are escaped too so that a line stays one line
/// for JavaScript-based consumers.
pub fn write_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 || c == '\u{7f}' || c == '\u{2028}' || c == '\u{2029}' => {
                // Writing to a String cannot fail.
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Appends `bytes` as lowercase hex inside a JSON string (`"00ff"`).
pub fn write_hex(out: &mut String, bytes: &[u8]) {
    out.push('"');
    push_hex(out, bytes);
    out.push('"');
}

/// Appends `bytes` as lowercase hex (no quotes, no prefix).
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

/// Builds one JSON object and returns it as a string (no trailing newline).
pub fn object(f: impl FnOnce(&mut ObjectWriter<'_>)) -> String {
    let mut out = String::new();
    write_object(&mut out, f);
    out
}

/// Builds one JSON array and returns it as a string (no trailing newline).
pub fn array(f: impl FnOnce(&mut ArrayWriter<'_>)) -> String {
    let mut out = String::new();
    write_array(&mut out, f);
    out
}

/// Appends one JSON object to `out`.
pub fn write_object(out: &mut String, f: impl FnOnce(&mut ObjectWriter<'_>)) {
    out.push('{');
    let mut w = ObjectWriter { out, first: true };
    f(&mut w);
    w.out.push('}');
}

/// Appends one JSON array to `out`.
pub fn write_array(out: &mut String, f: impl FnOnce(&mut ArrayWriter<'_>)) {
    out.push('[');
    let mut w = ArrayWriter { out, first: true };
    f(&mut w);
    w.out.push(']');
}

/// Writes the members of an object. Keys are not checked for uniqueness: write each once.
#[derive(Debug)]
pub struct ObjectWriter<'a> {
    out: &'a mut String,
    first: bool,
}

impl ObjectWriter<'_> {
    fn key(&mut self, key: &str) -> &mut String {
        if !self.first {
            self.out.push(',');
        }
        self.first = false;
        write_str(self.out, key);
        self.out.push(':');
        self.out
    }

    /// `"key":"value"` (escaped).
    pub fn str(&mut self, key: &str, value: &str) -> &mut Self {
        let out = self.key(key);
        write_str(out, value);
        self
    }

    /// `"key":"value"` or `"key":null`.
    pub fn opt_str(&mut self, key: &str, value: Option<&str>) -> &mut Self {
        match value {
            Some(v) => self.str(key, v),
            None => self.null(key),
        }
    }

    /// `"key":123`.
    pub fn u64(&mut self, key: &str, value: u64) -> &mut Self {
        let out = self.key(key);
        let _ = write!(out, "{value}");
        self
    }

    /// `"key":-123`.
    pub fn i64(&mut self, key: &str, value: i64) -> &mut Self {
        let out = self.key(key);
        let _ = write!(out, "{value}");
        self
    }

    /// `"key":1.5`; a non-finite value (NaN, ±inf) has no JSON form and is written as `null`.
    pub fn f64(&mut self, key: &str, value: f64) -> &mut Self {
        let out = self.key(key);
        write_f64(out, value);
        self
    }

    /// `"key":true`.
    pub fn bool(&mut self, key: &str, value: bool) -> &mut Self {
        let out = self.key(key);
        out.push_str(if value { "true" } else { "false" });
        self
    }

    /// `"key":null`.
    pub fn null(&mut self, key: &str) -> &mut Self {
        let out = self.key(key);
        out.push_str("null");
        self
    }

    /// `"key":"<lowercase hex of bytes>"`.
    pub fn hex(&mut self, key: &str, bytes: &[u8]) -> &mut Self {
        let out = self.key(key);
        write_hex(out, bytes);
        self
    }

    /// `"key":"0x1f"`: an integer as a `0x`-prefixed lowercase hex string (exact for all u64,
    /// unlike JSON numbers in double-based parsers).
    pub fn hex_u64(&mut self, key: &str, value: u64) -> &mut Self {
        let out = self.key(key);
        let _ = write!(out, "\"{value:#x}\"");
        self
    }

    /// `"key":{...}`.
    pub fn object(&mut self, key: &str, f: impl FnOnce(&mut ObjectWriter<'_>)) -> &mut Self {
        let out = self.key(key);
        write_object(out, f);
        self
    }

    /// `"key":[...]`.
    pub fn array(&mut self, key: &str, f: impl FnOnce(&mut ArrayWriter<'_>)) -> &mut Self {
        let out = self.key(key);
        write_array(out, f);
        self
    }

    /// `"key":<json>` where `json` is already a complete JSON value (e.g. from [`object`]).
    /// The caller vouches for its validity.
    pub fn raw(&mut self, key: &str, json: &str) -> &mut Self {
        let out = self.key(key);
        out.push_str(json);
        self
    }
}

/// Writes the elements of an array.
#[derive(Debug)]
pub struct ArrayWriter<'a> {
    out: &'a mut String,
    first: bool,
}

impl ArrayWriter<'_> {
    fn sep(&mut self) -> &mut String {
        if !self.first {
            self.out.push(',');
        }
        self.first = false;
        self.out
    }

    /// A string element.
    pub fn str(&mut self, value: &str) -> &mut Self {
        let out = self.sep();
        write_str(out, value);
        self
    }

    /// An unsigned number element.
    pub fn u64(&mut self, value: u64) -> &mut Self {
        let out = self.sep();
        let _ = write!(out, "{value}");
        self
    }

    /// A signed number element.
    pub fn i64(&mut self, value: i64) -> &mut Self {
        let out = self.sep();
        let _ = write!(out, "{value}");
        self
    }

    /// A floating-point element (`null` when not finite).
    pub fn f64(&mut self, value: f64) -> &mut Self {
        let out = self.sep();
        write_f64(out, value);
        self
    }

    /// A boolean element.
    pub fn bool(&mut self, value: bool) -> &mut Self {
        let out = self.sep();
        out.push_str(if value { "true" } else { "false" });
        self
    }

    /// A `null` element.
    pub fn null(&mut self) -> &mut Self {
        let out = self.sep();
        out.push_str("null");
        self
    }

    /// A lowercase hex string element.
    pub fn hex(&mut self, bytes: &[u8]) -> &mut Self {
        let out = self.sep();
        write_hex(out, bytes);
        self
    }

    /// A `"0x…"` string element.
    pub fn hex_u64(&mut self, value: u64) -> &mut Self {
        let out = self.sep();
        let _ = write!(out, "\"{value:#x}\"");
        self
    }

    /// An object element.
    pub fn object(&mut self, f: impl FnOnce(&mut ObjectWriter<'_>)) -> &mut Self {
        let out = self.sep();
        write_object(out, f);
        self
    }

    /// An array element.
    pub fn array(&mut self, f: impl FnOnce(&mut ArrayWriter<'_>)) -> &mut Self {
        let out = self.sep();
        write_array(out, f);
        self
    }

    /// An element that is already a complete JSON value. The caller vouches for its validity.
    pub fn raw(&mut self, json: &str) -> &mut Self {
        let out = self.sep();
        out.push_str(json);
        self
    }
}

fn write_f64(out: &mut String, value: f64) {
    if value.is_finite() {
        // Rust's `{}` for f64 never uses exponent notation and always round-trips; integral
        // values print without a fraction ("3"), which is valid JSON.
        let _ = write!(out, "{value}");
    } else {
        out.push_str("null");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> serde_json::Value {
        serde_json::from_str(s).unwrap_or_else(|e| panic!("invalid JSON {s:?}: {e}"))
    }

    #[test]
    fn escapes_every_control_character() {
        let all: String = (0u32..0x80).filter_map(char::from_u32).collect();
        let mut out = String::new();
        write_str(&mut out, &all);
        assert!(
            !out.bytes().any(|b| b < 0x20),
            "raw control byte in {out:?}"
        );
        assert_eq!(parse(&out), serde_json::Value::String(all));
    }

    #[test]
    fn short_escapes_and_unicode() {
        let mut out = String::new();
        write_str(
            &mut out,
            "a\"b\\c\nd\re\tf\u{8}g\u{c}h\u{0}i\u{7f}é😀\u{2028}",
        );
        assert_eq!(out, r#""a\"b\\c\nd\re\tf\bg\fh\u0000i\u007fé😀\u2028""#);
        assert_eq!(
            parse(&out),
            serde_json::Value::String("a\"b\\c\nd\re\tf\u{8}g\u{c}h\u{0}i\u{7f}é😀\u{2028}".into())
        );
    }

    #[test]
    fn nested_objects_and_arrays() {
        let s = object(|o| {
            o.str("k", "v")
                .u64("max", u64::MAX)
                .i64("neg", i64::MIN)
                .bool("t", true)
                .null("n")
                .hex("h", &[0, 0x0f, 0xf0, 0xff])
                .hex_u64("gpa", 0xFFFF_FFFF_F000)
                .f64("ratio", 0.93)
                .f64("nan", f64::NAN)
                .object("empty", |_| {})
                .array("list", |a| {
                    a.u64(1)
                        .str("two")
                        .array(|a| {
                            a.null();
                        })
                        .object(|o| {
                            o.bool("x", false);
                        })
                        .hex_u64(0)
                        .raw("[]");
                })
                .raw("pre", r#"{"a":1}"#);
        });
        assert_eq!(
            s,
            concat!(
                r#"{"k":"v","max":18446744073709551615,"neg":-9223372036854775808,"#,
                r#""t":true,"n":null,"h":"000ff0ff","gpa":"0xfffffffff000","ratio":0.93,"#,
                r#""nan":null,"empty":{},"list":[1,"two",[null],{"x":false},"0x0",[]],"#,
                r#""pre":{"a":1}}"#
            )
        );
        let v = parse(&s);
        assert_eq!(v["max"].as_u64(), Some(u64::MAX));
        assert_eq!(v["list"][3]["x"], serde_json::Value::Bool(false));
    }

    #[test]
    fn empty_containers_and_keys_escaped() {
        assert_eq!(object(|_| {}), "{}");
        assert_eq!(array(|_| {}), "[]");
        let s = object(|o| {
            o.u64("a\"b", 1);
        });
        assert_eq!(s, r#"{"a\"b":1}"#);
        assert_eq!(parse(&s)["a\"b"].as_u64(), Some(1));
    }

    #[test]
    fn hex_helpers() {
        assert_eq!(hex(&[]), "");
        assert_eq!(hex(&[0xab, 0x01]), "ab01");
        let s = array(|a| {
            a.f64(1.0).f64(-2.5).f64(f64::INFINITY).i64(-1);
        });
        assert_eq!(s, "[1,-2.5,null,-1]");
        parse(&s);
    }
}
