//! Command-line parsing shared by the subcommands, on top of `lexopt`: each command declares
//! its flags once in a [`Flag`] table, which both the parser (a flag not in the table is an
//! unknown flag) and the help text ([`CommandHelp::render`]) are built from. Values that are
//! paths stay `OsString`/`PathBuf` (any bytes Linux allows); other values must be UTF-8.
//! Also parsers for sizes (`256M`, `1G`) and hex numbers.

use std::ffi::OsString;
use std::fmt;
use std::path::PathBuf;

use relaunch_core::limits::LimitError;

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
    /// A value outside the launch limits (`relaunch_core::limits`).
    Limit {
        /// The flag.
        flag: String,
        /// Why the value is refused (one message for every command).
        error: LimitError,
    },
    /// A non-path value that is not UTF-8.
    NotUtf8 {
        /// The flag (or `argument` for a positional one).
        flag: String,
        /// The value, lossily decoded.
        value: String,
    },
    /// A flag the command does not know.
    UnknownFlag(String),
    /// A flag that takes no value was given one (`--json=yes`).
    UnexpectedValue(String),
    /// `--help` (or `-h`) was given: print the help instead.
    Help,
    /// A flag in the command's table that its parser does not handle (a bug).
    Unhandled(&'static str),
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
            ArgError::Limit { flag, error } => write!(f, "{flag}: {error}"),
            ArgError::NotUtf8 { flag, value } => {
                write!(f, "{flag} {value:?}: not valid UTF-8 (only paths may be)")
            }
            ArgError::UnknownFlag(flag) => write!(f, "unknown flag {flag:?}"),
            ArgError::UnexpectedValue(flag) => write!(f, "{flag} takes no value"),
            ArgError::Help => f.write_str("--help was given"),
            ArgError::Unhandled(flag) => write!(f, "--{flag} is not handled (a bug)"),
            ArgError::Other(msg) => f.write_str(msg),
        }
    }
}

impl std::error::Error for ArgError {}

impl From<lexopt::Error> for ArgError {
    fn from(e: lexopt::Error) -> ArgError {
        match e {
            lexopt::Error::MissingValue { option } => {
                ArgError::MissingValue(option.unwrap_or_else(|| "a flag".into()))
            }
            lexopt::Error::UnexpectedOption(o) => ArgError::UnknownFlag(o),
            lexopt::Error::UnexpectedArgument(v) => {
                ArgError::Other(format!("unexpected argument {:?}", v.to_string_lossy()))
            }
            lexopt::Error::UnexpectedValue { option, .. } => ArgError::UnexpectedValue(option),
            lexopt::Error::NonUnicodeValue(v) => ArgError::NotUtf8 {
                flag: "argument".into(),
                value: v.to_string_lossy().into_owned(),
            },
            other => ArgError::Other(other.to_string()),
        }
    }
}

/// One flag of a command: the single source for its parser and its help.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flag {
    /// The long name without dashes (`mem` for `--mem`).
    pub long: &'static str,
    /// The short form, if any (`q` for `-q`).
    pub short: Option<char>,
    /// The value's placeholder in help (`SIZE`), or `None` for a switch.
    pub value: Option<&'static str>,
    /// One sentence: what it does, and its default.
    pub help: &'static str,
}

impl Flag {
    /// `--long`.
    pub fn name(&self) -> String {
        format!("--{}", self.long)
    }
}

/// `--help`/`-h`: every command's table ends with it.
pub const HELP_FLAG: Flag = Flag {
    long: "help",
    short: Some('h'),
    value: None,
    help: "Print this help and exit 0.",
};

/// The help of one command, rendered by [`CommandHelp::render`].
#[derive(Debug, Clone, Copy)]
pub struct CommandHelp {
    /// The usage line after `usage: `.
    pub usage: &'static str,
    /// What the command does (a paragraph, pre-wrapped).
    pub about: &'static str,
    /// The command's flags.
    pub flags: &'static [Flag],
    /// Further notes (pre-wrapped), e.g. exit codes; may be empty.
    pub notes: &'static str,
    /// Example command lines.
    pub examples: &'static [&'static str],
}

impl CommandHelp {
    /// The full help text: usage, description, every flag with its sentence, notes and
    /// examples.
    pub fn render(&self) -> String {
        let mut s = format!(
            "usage: {}\n\n{}\n\nOptions:\n",
            self.usage,
            self.about.trim_end()
        );
        for f in self.flags {
            let mut left = match f.short {
                Some(c) => format!("  -{c}, --{}", f.long),
                None => format!("      --{}", f.long),
            };
            if let Some(v) = f.value {
                left.push(' ');
                left.push_str(v);
            }
            s.push_str(&left);
            s.push('\n');
            for line in wrap(f.help, 70) {
                s.push_str("          ");
                s.push_str(&line);
                s.push('\n');
            }
        }
        if !self.notes.is_empty() {
            s.push('\n');
            s.push_str(self.notes.trim_end());
            s.push('\n');
        }
        if !self.examples.is_empty() {
            s.push_str("\nExamples:\n");
            for e in self.examples {
                s.push_str("  ");
                s.push_str(e);
                s.push('\n');
            }
        }
        s
    }
}

/// Greedy word wrap at `width` columns.
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        if !line.is_empty() && line.len() + 1 + word.len() > width {
            lines.push(std::mem::take(&mut line));
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    if !line.is_empty() {
        lines.push(line);
    }
    lines
}

/// Whether `args` ask for help (`--help` or `-h` before any `--`): help wins over every
/// other error on the line.
pub fn wants_help(args: &[OsString]) -> bool {
    args.iter()
        .take_while(|a| *a != "--")
        .any(|a| a == "--help" || a == "-h")
}

/// One item of a command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    /// A flag of the command's table (its value, if any, is taken with [`Cursor::value`] and
    /// friends).
    Flag(&'static Flag),
    /// A positional argument (everything after `--` is positional too).
    Positional(OsString),
}

/// Walks a command line against a command's flag table.
#[derive(Debug)]
pub struct Cursor {
    parser: lexopt::Parser,
    flags: &'static [Flag],
}

impl Cursor {
    /// A cursor over `args` (without the program and subcommand names).
    pub fn new<I>(args: I, flags: &'static [Flag]) -> Cursor
    where
        I: IntoIterator,
        I::Item: Into<OsString>,
    {
        Cursor {
            parser: lexopt::Parser::from_args(args),
            flags,
        }
    }

    /// The next item, or `None` at the end. A flag outside the table is
    /// [`ArgError::UnknownFlag`]; `--help` is [`ArgError::Help`].
    ///
    /// # Errors
    /// [`ArgError`] for an unknown flag, or a switch given a value (`--json=1`).
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Result<Option<Item>, ArgError> {
        let flags = self.flags;
        let found = match self.parser.next()? {
            None => return Ok(None),
            Some(lexopt::Arg::Value(v)) => return Ok(Some(Item::Positional(v))),
            Some(lexopt::Arg::Long(name)) => flags
                .iter()
                .find(|f| f.long == name)
                .ok_or_else(|| ArgError::UnknownFlag(format!("--{name}")))?,
            Some(lexopt::Arg::Short(c)) => flags
                .iter()
                .find(|f| f.short == Some(c))
                .ok_or_else(|| ArgError::UnknownFlag(format!("-{c}")))?,
        };
        if found.long == HELP_FLAG.long {
            return Err(ArgError::Help);
        }
        Ok(Some(Item::Flag(found)))
    }

    /// The raw value of `flag` (its `=value` or the next argument): for paths.
    ///
    /// # Errors
    /// [`ArgError::MissingValue`].
    pub fn value(&mut self, flag: &Flag) -> Result<OsString, ArgError> {
        self.parser
            .value()
            .map_err(|_| ArgError::MissingValue(flag.name()))
    }

    /// The value of `flag` as a path.
    ///
    /// # Errors
    /// [`ArgError::MissingValue`].
    pub fn path(&mut self, flag: &Flag) -> Result<PathBuf, ArgError> {
        self.value(flag).map(PathBuf::from)
    }

    /// The value of `flag` as UTF-8 text.
    ///
    /// # Errors
    /// [`ArgError::MissingValue`], [`ArgError::NotUtf8`].
    pub fn string(&mut self, flag: &Flag) -> Result<String, ArgError> {
        utf8(&flag.name(), self.value(flag)?)
    }

    /// The value of `flag` parsed by `parse` (which names what it expects on failure).
    ///
    /// # Errors
    /// [`ArgError::MissingValue`], [`ArgError::NotUtf8`], [`ArgError::BadValue`].
    pub fn parsed<T>(
        &mut self,
        flag: &Flag,
        expected: &'static str,
        parse: impl FnOnce(&str) -> Option<T>,
    ) -> Result<T, ArgError> {
        let v = self.string(flag)?;
        parse(&v).ok_or_else(|| ArgError::BadValue {
            flag: flag.name(),
            value: v,
            expected,
        })
    }

    /// `--vcpus N` checked against `relaunch_core::limits::check_vcpus`.
    ///
    /// # Errors
    /// As [`Cursor::parsed`], and [`ArgError::Limit`].
    pub fn vcpus(&mut self, flag: &Flag) -> Result<u32, ArgError> {
        let n = self.parsed(flag, "a vCPU count", parse_u64)?;
        relaunch_core::limits::check_vcpus(n).map_err(|error| ArgError::Limit {
            flag: flag.name(),
            error,
        })
    }

    /// `--mem SIZE` checked against `relaunch_core::limits::check_mem`.
    ///
    /// # Errors
    /// As [`Cursor::parsed`], and [`ArgError::Limit`].
    pub fn mem(&mut self, flag: &Flag) -> Result<u64, ArgError> {
        let n = self.parsed(flag, "a size such as 256M or 1G", parse_size)?;
        relaunch_core::limits::check_mem(n).map_err(|error| ArgError::Limit {
            flag: flag.name(),
            error,
        })
    }

    /// `flag`'s value as a confidential platform (`snp`, `sev`, `sev-es`, `tdx`).
    ///
    /// # Errors
    /// As [`Cursor::parsed`].
    pub fn confidential_platform(
        &mut self,
        flag: &Flag,
    ) -> Result<relaunch_core::plan::Platform, ArgError> {
        self.parsed(flag, "snp, sev, sev-es or tdx", |v| {
            relaunch_core::plan::Platform::from_name(v).filter(|p| p.is_confidential())
        })
    }
}

/// Takes the one positional argument (the bundle path) into `slot`.
///
/// # Errors
/// [`ArgError::Other`] for a second one.
pub fn one_positional(slot: &mut Option<PathBuf>, p: OsString) -> Result<(), ArgError> {
    if slot.is_some() {
        return Err(ArgError::Other(format!(
            "unexpected argument {:?}",
            p.to_string_lossy()
        )));
    }
    *slot = Some(PathBuf::from(p));
    Ok(())
}

/// `v` as UTF-8, or [`ArgError::NotUtf8`] naming `flag`.
///
/// # Errors
/// [`ArgError::NotUtf8`].
pub fn utf8(flag: &str, v: OsString) -> Result<String, ArgError> {
    v.into_string().map_err(|v| ArgError::NotUtf8 {
        flag: flag.to_string(),
        value: v.to_string_lossy().into_owned(),
    })
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

    const FLAGS: &[Flag] = &[
        Flag {
            long: "vcpus",
            short: None,
            value: Some("N"),
            help: "vCPUs.",
        },
        Flag {
            long: "mem",
            short: None,
            value: Some("SIZE"),
            help: "RAM.",
        },
        Flag {
            long: "json",
            short: Some('j'),
            value: None,
            help: "JSON.",
        },
        HELP_FLAG,
    ];

    fn flag(c: &mut Cursor) -> &'static str {
        match c.next() {
            Ok(Some(Item::Flag(f))) => f.long,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn flags_both_forms() {
        let a = v(&["file", "--vcpus", "4", "--mem=1G", "-j", "--", "--x"]);
        let mut c = Cursor::new(a, FLAGS);
        assert_eq!(c.next(), Ok(Some(Item::Positional("file".into()))));
        assert_eq!(flag(&mut c), "vcpus");
        assert_eq!(c.vcpus(&FLAGS[0]), Ok(4));
        assert_eq!(flag(&mut c), "mem");
        assert_eq!(c.mem(&FLAGS[1]), Ok(1 << 30));
        assert_eq!(flag(&mut c), "json");
        assert_eq!(c.next(), Ok(Some(Item::Positional("--x".into()))));
        assert_eq!(c.next(), Ok(None));
    }

    #[test]
    fn flag_errors() {
        let mut c = Cursor::new(v(&["--vcpus"]), FLAGS);
        flag(&mut c);
        assert_eq!(
            c.vcpus(&FLAGS[0]),
            Err(ArgError::MissingValue("--vcpus".into()))
        );

        let mut c = Cursor::new(v(&["--json=1", "x"]), FLAGS);
        flag(&mut c);
        // A switch does not take its value: the next call reports it.
        assert_eq!(c.next(), Err(ArgError::UnexpectedValue("--json".into())));

        let mut c = Cursor::new(v(&["--vcpus", "many"]), FLAGS);
        flag(&mut c);
        let e = c.vcpus(&FLAGS[0]).unwrap_err();
        assert_eq!(e.to_string(), "--vcpus \"many\": expected a vCPU count");

        let mut c = Cursor::new(v(&["--vcpus", "0"]), FLAGS);
        flag(&mut c);
        let e = c.vcpus(&FLAGS[0]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "--vcpus: 0 vCPUs: a launch has 1 to 255 vCPUs"
        );

        let mut c = Cursor::new(v(&["--frob"]), FLAGS);
        assert_eq!(c.next(), Err(ArgError::UnknownFlag("--frob".into())));
        let mut c = Cursor::new(v(&["-h"]), FLAGS);
        assert_eq!(c.next(), Err(ArgError::Help));
        assert!(wants_help(&[OsString::from("x"), OsString::from("--help")]));
        assert!(!wants_help(&[OsString::from("--"), OsString::from("-h")]));
    }

    #[test]
    fn non_utf8_values() {
        use std::os::unix::ffi::OsStringExt;
        let bad = OsString::from_vec(b"\xff.igvm".to_vec());
        let mut c = Cursor::new([OsString::from("--mem"), bad.clone()], FLAGS);
        flag(&mut c);
        let e = c.mem(&FLAGS[1]).unwrap_err();
        assert!(matches!(e, ArgError::NotUtf8 { .. }), "{e}");
        let mut c = Cursor::new([bad.clone()], FLAGS);
        assert_eq!(c.next(), Ok(Some(Item::Positional(bad))));
    }

    #[test]
    fn help_lists_every_flag() {
        let h = CommandHelp {
            usage: "relaunch x",
            about: "Does x.",
            flags: FLAGS,
            notes: "",
            examples: &["relaunch x --json"],
        }
        .render();
        for f in FLAGS {
            assert!(h.contains(&f.name()), "{h}");
        }
        assert!(h.contains("  -j, --json\n"), "{h}");
    }
}
