//! Small command-line helpers shared by the subcommands: a flag cursor that accepts
//! `--flag value` and `--flag=value`, and parsers for sizes (`256M`, `1G`) and hex numbers.

use std::fmt;

/// A command-line error: one line, shown as `relaunch <cmd>: <error>`, exit code 2.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArgError {
    /// A flag that needs a value was last on the line.
    MissingValue(String),
    /// A value that does not parse.
    BadValue {
        /// The flag.
        flag: String,
        /// The offending value.
        value: String,
        /// What was expected.
        expected: &'static str,
    },
    /// A flag the command does not know.
    UnknownFlag(String),
    /// A flag that takes no value was given one (`--json=yes`).
    UnexpectedValue(String),
    /// Anything else, already worded.
    Other(String),
}

impl fmt::Display for ArgError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ArgError::MissingValue(flag) => write!(f, "{flag} needs a value"),
            ArgError::BadValue {
                flag,
                value,
                expected,
            } => write!(f, "{flag} {value:?}: expected {expected}"),
            ArgError::UnknownFlag(flag) => write!(f, "unknown flag {flag:?}"),
            ArgError::UnexpectedValue(flag) => write!(f, "{flag} takes no value"),
            ArgError::Other(msg) => f.write_str(msg),
        }
    }
}

impl std::error::Error for ArgError {}

/// One item of a command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Arg<'a> {
    /// `--name` or `--name=value` (`inline` holds the value after `=`). Also `-x`.
    Flag {
        /// The flag with its dashes, without `=value`.
        name: &'a str,
        /// The value after `=`, if any.
        inline: Option<&'a str>,
    },
    /// A positional argument (everything after `--` is positional too).
    Positional(&'a str),
}

/// Walks a command line, one [`Arg`] at a time; a flag's value is taken with
/// [`Args::value`].
#[derive(Debug)]
pub struct Args<'a> {
    args: &'a [String],
    pos: usize,
    only_positional: bool,
    pending_inline: Option<(&'a str, &'a str)>,
}

impl<'a> Args<'a> {
    /// A cursor over `args` (without the program and subcommand names).
    pub fn new(args: &'a [String]) -> Self {
        Args {
            args,
            pos: 0,
            only_positional: false,
            pending_inline: None,
        }
    }

    /// The next item, or `None` at the end. Errors if the previous flag's `=value` was never
    /// consumed (`--json=1` for a switch).
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Result<Option<Arg<'a>>, ArgError> {
        if let Some((flag, _)) = self.pending_inline.take() {
            return Err(ArgError::UnexpectedValue(flag.to_string()));
        }
        let Some(arg) = self.args.get(self.pos) else {
            return Ok(None);
        };
        self.pos += 1;
        let arg = arg.as_str();
        if self.only_positional || arg == "-" || !arg.starts_with('-') {
            return Ok(Some(Arg::Positional(arg)));
        }
        if arg == "--" {
            self.only_positional = true;
            return self.next();
        }
        match arg.split_once('=') {
            Some((name, value)) if name.starts_with("--") => {
                self.pending_inline = Some((name, value));
                Ok(Some(Arg::Flag {
                    name,
                    inline: Some(value),
                }))
            }
            _ => Ok(Some(Arg::Flag {
                name: arg,
                inline: None,
            })),
        }
    }

    /// The value of the flag `name` just returned by [`Args::next`]: its `=value`, or the
    /// next argument.
    pub fn value(&mut self, name: &str) -> Result<&'a str, ArgError> {
        if let Some((_, v)) = self.pending_inline.take() {
            return Ok(v);
        }
        match self.args.get(self.pos) {
            Some(v) => {
                self.pos += 1;
                Ok(v.as_str())
            }
            None => Err(ArgError::MissingValue(name.to_string())),
        }
    }

    /// The value of flag `name` parsed by `parse` (which names what it expects on failure).
    pub fn parsed<T>(
        &mut self,
        name: &str,
        expected: &'static str,
        parse: impl FnOnce(&str) -> Option<T>,
    ) -> Result<T, ArgError> {
        let v = self.value(name)?;
        parse(v).ok_or_else(|| ArgError::BadValue {
            flag: name.to_string(),
            value: v.to_string(),
            expected,
        })
    }
}

/// Parses a size: a decimal number with an optional binary suffix `K`, `M`, `G`, `T`
/// (case-insensitive, optionally followed by `iB` or `B`: `256M`, `1GiB`, `4096`), or a `0x`
/// hex byte count. `None` on overflow or garbage.
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    if let Some(h) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        return parse_hex_digits(h);
    }
    let digits_end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, suffix) = s.split_at(digits_end);
    if num.is_empty() {
        return None;
    }
    let n: u64 = num.parse().ok()?;
    let suffix = suffix.to_ascii_lowercase();
    let shift = match suffix.as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => return None,
    };
    let mult = 1u64 << shift;
    n.checked_mul(mult)
}

/// Parses a hex `u64`, with or without `0x`, with optional `_` separators (`0x800F12`,
/// `fffff000`, `0xffff_ffff`).
pub fn parse_hex_u64(s: &str) -> Option<u64> {
    let s = s.trim();
    let h = s
        .strip_prefix("0x")
        .or_else(|| s.strip_prefix("0X"))
        .unwrap_or(s);
    parse_hex_digits(h)
}

fn parse_hex_digits(h: &str) -> Option<u64> {
    let digits: String = h.chars().filter(|&c| c != '_').collect();
    if digits.is_empty() || h.starts_with('_') || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(&digits, 16).ok()
}

/// Parses a decimal `u64`, or hex with a `0x` prefix.
pub fn parse_u64(s: &str) -> Option<u64> {
    let s = s.trim();
    if s.starts_with("0x") || s.starts_with("0X") {
        parse_hex_u64(s)
    } else if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        s.parse().ok()
    } else {
        None
    }
}

/// Parses an exact-length hex byte string (e.g. a 32-byte HOST_DATA, a 16-byte TIK), with
/// an optional `0x` prefix.
pub fn parse_hex_bytes<const N: usize>(s: &str) -> Option<[u8; N]> {
    let s = s.trim();
    let h = s
        .strip_prefix("0x")
        .or_else(|| s.strip_prefix("0X"))
        .unwrap_or(s);
    if h.len() != N.checked_mul(2)? || !h.is_ascii() {
        return None;
    }
    let mut out = [0u8; N];
    for (i, byte) in out.iter_mut().enumerate() {
        let pair = h.get(i * 2..i * 2 + 2)?;
        if !pair.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        *byte = u8::from_str_radix(pair, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("256M"), Some(256 << 20));
        assert_eq!(parse_size("256m"), Some(256 << 20));
        assert_eq!(parse_size("1G"), Some(1 << 30));
        assert_eq!(parse_size("1GiB"), Some(1 << 30));
        assert_eq!(parse_size("2k"), Some(2048));
        assert_eq!(parse_size("3T"), Some(3 << 40));
        assert_eq!(parse_size("0x1000"), Some(4096));
        assert_eq!(parse_size("16777216T"), None); // 2^24 * 2^40 overflows
        assert_eq!(parse_size("M"), None);
        assert_eq!(parse_size("12X"), None);
        assert_eq!(parse_size(""), None);
        assert_eq!(parse_size("-1"), None);
        assert_eq!(parse_size("99999999999999999999"), None);
    }

    #[test]
    fn hex_numbers() {
        assert_eq!(parse_hex_u64("0x800F12"), Some(0x800F12));
        assert_eq!(parse_hex_u64("800f12"), Some(0x800F12));
        assert_eq!(parse_hex_u64("0xffff_ffff"), Some(0xffff_ffff));
        assert_eq!(parse_hex_u64("0xffffffffffffffff"), Some(u64::MAX));
        assert_eq!(parse_hex_u64("0x1ffffffffffffffff"), None);
        assert_eq!(parse_hex_u64("0x"), None);
        assert_eq!(parse_hex_u64("0x_1"), None);
        assert_eq!(parse_hex_u64("xyz"), None);
        assert_eq!(parse_hex_u64("+1"), None);
        assert_eq!(parse_u64("17"), Some(17));
        assert_eq!(parse_u64("0x11"), Some(17));
        assert_eq!(parse_u64("+17"), None);
        assert_eq!(parse_hex_bytes::<2>("0xabCD"), Some([0xab, 0xcd]));
        assert_eq!(parse_hex_bytes::<2>("abc"), None);
        assert_eq!(parse_hex_bytes::<2>("abcdef"), None);
        assert_eq!(parse_hex_bytes::<2>("zzzz"), None);
        assert_eq!(parse_hex_bytes::<2>("aé"), None);
    }

    #[test]
    fn flags_both_forms() {
        let a = v(&["file", "--vcpus", "4", "--mem=1G", "--json", "--", "--x"]);
        let mut args = Args::new(&a);
        assert_eq!(args.next(), Ok(Some(Arg::Positional("file"))));
        assert_eq!(
            args.next(),
            Ok(Some(Arg::Flag {
                name: "--vcpus",
                inline: None
            }))
        );
        assert_eq!(args.parsed("--vcpus", "a number", parse_u64), Ok(4));
        assert_eq!(
            args.next(),
            Ok(Some(Arg::Flag {
                name: "--mem",
                inline: Some("1G")
            }))
        );
        assert_eq!(args.parsed("--mem", "a size", parse_size), Ok(1 << 30));
        assert_eq!(
            args.next(),
            Ok(Some(Arg::Flag {
                name: "--json",
                inline: None
            }))
        );
        assert_eq!(args.next(), Ok(Some(Arg::Positional("--x"))));
        assert_eq!(args.next(), Ok(None));
    }

    #[test]
    fn flag_errors() {
        let a = v(&["--vcpus"]);
        let mut args = Args::new(&a);
        assert!(matches!(args.next(), Ok(Some(Arg::Flag { .. }))));
        assert_eq!(
            args.value("--vcpus"),
            Err(ArgError::MissingValue("--vcpus".into()))
        );

        let a = v(&["--json=1", "x"]);
        let mut args = Args::new(&a);
        assert!(matches!(args.next(), Ok(Some(Arg::Flag { .. }))));
        // A switch does not take its value: the next call reports it.
        assert_eq!(args.next(), Err(ArgError::UnexpectedValue("--json".into())));

        let a = v(&["--vcpus", "many"]);
        let mut args = Args::new(&a);
        args.next().unwrap();
        let e = args.parsed("--vcpus", "a number", parse_u64).unwrap_err();
        assert_eq!(e.to_string(), "--vcpus \"many\": expected a number");
    }
}
