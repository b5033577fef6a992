//! The Linux guest of `vmm/tests/linux_guest.rs` and `cargo xtask bench linux`
//! (docs/linux-guests.md): a tiny initramfs (a newc cpio archive) whose init, `init.c` next
//! to this file built with `gcc -static`, prints [`MARKER`] and powers off, or with
//! [`REBOOT_PARAM`] on the kernel command line prints [`REBOOTING`] and reboots; and the
//! console watching both read the guest with: every stdout line of the VMM with the time it
//! arrived.
//!
//! std only, and no part of the relaunch binary: a dev-dependency of relaunch and a
//! dependency of xtask.

#![forbid(unsafe_code)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The init's first line, on every boot.
pub const MARKER: &str = "RELAUNCH-INIT: hello from init";
/// The init's line right before `reboot(RB_AUTOBOOT)` (only with [`REBOOT_PARAM`]).
pub const REBOOTING: &str = "RELAUNCH-INIT: rebooting";
/// On the kernel command line: the init reboots (on every boot) instead of powering off.
pub const REBOOT_PARAM: &str = "relaunch_init=reboot";
/// How the kernel's first console line starts (`init/version.c` `linux_banner`).
pub const BANNER: &str = "Linux version ";

/// The init's source.
pub fn init_source() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("init.c")
}

/// One cpio entry: path (no leading `/`), mode (file type and permissions, as `st_mode`),
/// contents, and for device nodes `rdev` as `major << 8 | minor`.
#[derive(Clone, Copy, Debug)]
pub struct Entry<'a> {
    /// Path inside the archive.
    pub name: &'a str,
    /// `st_mode`.
    pub mode: u32,
    /// File contents (empty for directories and devices).
    pub data: &'a [u8],
    /// `major << 8 | minor` for device nodes, else 0.
    pub rdev: u32,
}

/// Why an archive cannot be written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CpioError {
    /// An empty name, or one with a NUL byte.
    BadName(String),
    /// A name or file larger than the format's 32-bit size fields.
    TooLarge(String),
}

impl std::fmt::Display for CpioError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CpioError::BadName(n) => write!(f, "cpio: bad entry name {n:?}"),
            CpioError::TooLarge(n) => {
                write!(f, "cpio: {n:?} does not fit the newc 32-bit size fields")
            }
        }
    }
}

impl std::error::Error for CpioError {}

/// A cpio archive in the "newc" format (Linux `Documentation/driver-api/early-userspace/
/// buffer-format.rst`): each entry a 110-byte ASCII header (magic `070701`, 13 fields of 8
/// hex digits), its NUL-terminated name and its data, each padded to 4 bytes; then the
/// `TRAILER!!!` entry. Inode numbers count from 1; owner root, one link, mtime 0.
pub fn newc(entries: &[Entry<'_>]) -> Result<Vec<u8>, CpioError> {
    fn pad(v: &mut Vec<u8>) {
        while !v.len().is_multiple_of(4) {
            v.push(0);
        }
    }
    let trailer = Entry {
        name: "TRAILER!!!",
        mode: 0,
        data: &[],
        rdev: 0,
    };
    let mut out = Vec::new();
    for (i, e) in entries.iter().chain([&trailer]).enumerate() {
        if e.name.is_empty() || e.name.contains('\0') {
            return Err(CpioError::BadName(e.name.into()));
        }
        let too_large = || CpioError::TooLarge(e.name.into());
        let namesize = u32::try_from(e.name.len() + 1).map_err(|_| too_large())?;
        let filesize = u32::try_from(e.data.len()).map_err(|_| too_large())?;
        let ino = u32::try_from(i + 1).map_err(|_| too_large())?;
        // ino, mode, uid, gid, nlink, mtime, filesize, devmajor, devminor, rdevmajor,
        // rdevminor, namesize, check.
        let fields = [
            ino,
            e.mode,
            0,
            0,
            1,
            0,
            filesize,
            0,
            0,
            e.rdev >> 8,
            e.rdev & 0xFF,
            namesize,
            0,
        ];
        out.extend_from_slice(b"070701");
        for f in fields {
            out.extend_from_slice(format!("{f:08X}").as_bytes());
        }
        out.extend_from_slice(e.name.as_bytes());
        out.push(0);
        pad(&mut out);
        out.extend_from_slice(e.data);
        pad(&mut out);
    }
    Ok(out)
}

/// The initramfs around `init`: `/dev` with `/dev/console` (char 5:1, where the kernel opens
/// init's stdio), `/proc`, `/sys` (the init mounts them) and `/init`.
pub fn initramfs(init: &[u8]) -> Result<Vec<u8>, CpioError> {
    let dir = |name| Entry {
        name,
        mode: 0o40755,
        data: &[],
        rdev: 0,
    };
    newc(&[
        dir("dev"),
        Entry {
            name: "dev/console",
            mode: 0o20600,
            data: &[],
            rdev: (5 << 8) | 1,
        },
        dir("proc"),
        dir("sys"),
        Entry {
            name: "init",
            mode: 0o100755,
            data: init,
            rdev: 0,
        },
    ])
}

/// Why the initramfs could not be built.
#[derive(Debug)]
pub enum BuildError {
    /// `gcc` could not be started.
    NoGcc(std::io::Error),
    /// `gcc -static` failed (typically no static C library: libc6-dev); its stderr.
    Gcc(String),
    /// Reading or writing a file.
    Io(PathBuf, std::io::Error),
    /// The archive.
    Cpio(CpioError),
}

impl std::fmt::Display for BuildError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BuildError::NoGcc(e) => write!(f, "no gcc to build the initramfs init ({e})"),
            BuildError::Gcc(err) => write!(f, "gcc -static failed: {}", err.trim()),
            BuildError::Io(p, e) => write!(f, "{}: {e}", p.display()),
            BuildError::Cpio(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for BuildError {}

/// A built initramfs: the archive's path and bytes.
pub struct Initramfs {
    /// `dir/initrd.cpio`.
    pub path: PathBuf,
    /// Its contents.
    pub bytes: Vec<u8>,
}

/// Compiles the init (`gcc -static -Os`) into `dir/init` and writes `dir/initrd.cpio`.
pub fn build(dir: &Path) -> Result<Initramfs, BuildError> {
    std::fs::create_dir_all(dir).map_err(|e| BuildError::Io(dir.into(), e))?;
    let init = dir.join("init");
    let gcc = Command::new("gcc")
        .args(["-static", "-Os", "-o"])
        .arg(&init)
        .arg(init_source())
        .output()
        .map_err(BuildError::NoGcc)?;
    if !gcc.status.success() {
        return Err(BuildError::Gcc(
            String::from_utf8_lossy(&gcc.stderr).into_owned(),
        ));
    }
    let binary = std::fs::read(&init).map_err(|e| BuildError::Io(init.clone(), e))?;
    let bytes = initramfs(&binary).map_err(BuildError::Cpio)?;
    let path = dir.join("initrd.cpio");
    std::fs::write(&path, &bytes).map_err(|e| BuildError::Io(path.clone(), e))?;
    Ok(Initramfs { path, bytes })
}

/// One console line and when it arrived (from the child's start).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Line {
    /// Arrival of the read that completed the line.
    pub at: Duration,
    /// The line without its `\n` (and `\r`).
    pub text: String,
}

/// Splits arriving stdout chunks into timestamped [`Line`]s.
#[derive(Default)]
pub struct LineSplitter {
    partial: Vec<u8>,
    lines: Vec<Line>,
}

impl LineSplitter {
    /// Adds `bytes` that arrived at `at`.
    pub fn push(&mut self, at: Duration, bytes: &[u8]) {
        for &b in bytes {
            if b == b'\n' {
                self.end_line(at);
            } else {
                self.partial.push(b);
            }
        }
    }

    fn end_line(&mut self, at: Duration) {
        let mut text = String::from_utf8_lossy(&self.partial).into_owned();
        while text.ends_with('\r') {
            text.pop();
        }
        self.lines.push(Line { at, text });
        self.partial.clear();
    }

    /// The complete lines so far.
    pub fn lines(&self) -> &[Line] {
        &self.lines
    }

    /// All lines, an unterminated last one included (stamped `at`).
    pub fn finish(mut self, at: Duration) -> Vec<Line> {
        if !self.partial.is_empty() {
            self.end_line(at);
        }
        self.lines
    }
}

/// What [`watch`] saw.
#[derive(Debug)]
pub struct Watched {
    /// stdout, by line.
    pub lines: Vec<Line>,
    /// All of stderr.
    pub stderr: String,
    /// The exit status if the child ended by itself (`None`: killed).
    pub status: Option<ExitStatus>,
    /// From the start to the end of the watch.
    pub elapsed: Duration,
    /// The stop condition held (the child was then killed).
    pub stopped: bool,
}

impl Watched {
    /// When the first line containing `needle` arrived.
    pub fn first(&self, needle: &str) -> Option<Duration> {
        first_at(&self.lines, needle)
    }

    /// stdout as text.
    pub fn stdout(&self) -> String {
        let mut s = String::new();
        for l in &self.lines {
            s.push_str(&l.text);
            s.push('\n');
        }
        s
    }

    /// The last line of stderr that is not blank.
    pub fn last_stderr_line(&self) -> &str {
        self.stderr
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("")
    }
}

/// When the first line containing `needle` arrived.
pub fn first_at(lines: &[Line], needle: &str) -> Option<Duration> {
    lines.iter().find(|l| l.text.contains(needle)).map(|l| l.at)
}

/// A reader thread over `r`: every `read`, stamped the moment it returned and mapped by `f`,
/// until end of file, an error, or the receiver is dropped.
pub fn timed_reads<R, T>(
    mut r: R,
    mut f: impl FnMut(&[u8]) -> T + Send + 'static,
) -> mpsc::Receiver<(Instant, T)>
where
    R: Read + Send + 'static,
    T: Send + 'static,
{
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        loop {
            match r.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let now = Instant::now();
                    if tx.send((now, f(&buf[..n]))).is_err() {
                        break;
                    }
                }
            }
        }
    });
    rx
}

/// Runs `cmd` (stdin null, stdout and stderr piped) until it exits, `stop` holds for the
/// lines so far, or `limit` passes; the child is then killed, and always reaped.
pub fn watch(
    mut cmd: Command,
    limit: Duration,
    mut stop: impl FnMut(&[Line]) -> bool,
) -> std::io::Result<Watched> {
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let (Some(out), Some(mut err)) = (child.stdout.take(), child.stderr.take()) else {
        let _ = child.kill();
        let _ = child.wait();
        return Err(std::io::Error::other("child without piped stdout/stderr"));
    };
    let err_reader = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = err.read_to_end(&mut s);
        String::from_utf8_lossy(&s).into_owned()
    });
    let rx = timed_reads(out, <[u8]>::to_vec);
    let mut split = LineSplitter::default();
    let mut stopped = false;
    let mut eof = false;
    let status = loop {
        if !eof {
            match rx.recv_timeout(Duration::from_millis(20)) {
                Ok((t, bytes)) => {
                    split.push(t.duration_since(start), &bytes);
                    if stop(split.lines()) {
                        stopped = true;
                        break None;
                    }
                    continue;
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => eof = true,
            }
        } else {
            std::thread::sleep(Duration::from_millis(5));
        }
        let late = start.elapsed() > limit;
        match child.try_wait() {
            // Exited: first take what is still in the pipe.
            Ok(Some(s)) if eof || late => break Some(s),
            Ok(None) if late => break None,
            Ok(_) => {}
            Err(_) => break None,
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    let elapsed = start.elapsed();
    // Whatever had arrived before the end (not what a killed child left unread).
    while let Ok((t, bytes)) = rx.try_recv() {
        split.push(t.duration_since(start), &bytes);
    }
    Ok(Watched {
        lines: split.finish(elapsed),
        stderr: err_reader.join().unwrap_or_default(),
        status,
        elapsed,
        stopped,
    })
}

/// The phases of one boot-then-reboot run with [`REBOOT_PARAM`] (times from the VMM's
/// start): the first [`MARKER`]; the first [`REBOOTING`] after it; the next [`MARKER`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Phases {
    /// Start → the first boot's init marker.
    pub boot_to_init: Option<Duration>,
    /// The init's reboot line → the next boot's init marker.
    pub reboot_to_init: Option<Duration>,
}

/// Reads [`Phases`] off a console transcript.
pub fn phases(lines: &[Line]) -> Phases {
    let mut it = lines.iter();
    let Some(first) = it.find(|l| l.text.contains(MARKER)) else {
        return Phases::default();
    };
    let reboot = it
        .find(|l| l.text.contains(REBOOTING))
        .and_then(|r| Some((r.at, it.find(|l| l.text.contains(MARKER))?.at)))
        .map(|(r, m)| m.saturating_sub(r));
    Phases {
        boot_to_init: Some(first.at),
        reboot_to_init: reboot,
    }
}

/// How many init markers `lines` hold (one per boot that reached init).
pub fn boots(lines: &[Line]) -> usize {
    lines.iter().filter(|l| l.text.contains(MARKER)).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn line(at: u64, text: &str) -> Line {
        Line {
            at: ms(at),
            text: text.into(),
        }
    }

    fn field(header: &[u8], i: usize) -> u32 {
        let s = std::str::from_utf8(&header[6 + 8 * i..14 + 8 * i]).unwrap();
        u32::from_str_radix(s, 16).unwrap()
    }

    #[test]
    fn newc_layout() {
        let a = newc(&[Entry {
            name: "init",
            mode: 0o100755,
            data: b"hello",
            rdev: 0,
        }])
        .unwrap();
        // header 110 + "init\0" 5 = 115, padded to 116; data 5, padded to 8.
        assert_eq!(&a[..6], b"070701");
        assert_eq!(field(&a, 0), 1); // ino
        assert_eq!(field(&a, 1), 0o100755);
        assert_eq!(field(&a, 4), 1); // nlink
        assert_eq!(field(&a, 6), 5); // filesize
        assert_eq!(field(&a, 11), 5); // namesize with NUL
        assert_eq!(&a[110..115], b"init\0");
        assert_eq!(a[115], 0);
        assert_eq!(&a[116..121], b"hello");
        assert_eq!(&a[121..124], &[0, 0, 0]);
        // The trailer: ino 2, no data, "TRAILER!!!\0" (11) after 110 → 121, padded to 124.
        let t = &a[124..];
        assert_eq!(&t[..6], b"070701");
        assert_eq!(field(t, 0), 2);
        assert_eq!(field(t, 6), 0);
        assert_eq!(field(t, 11), 11);
        assert_eq!(&t[110..121], b"TRAILER!!!\0");
        assert_eq!(t.len(), 124);
        assert_eq!(a.len() % 4, 0);
    }

    #[test]
    fn newc_device_and_errors() {
        let img = initramfs(b"\x7fELF").unwrap();
        // The second entry is /dev/console, char 5:1.
        // 110-byte header + "dev\0" = 114, padded to 116; a directory has no data.
        let second = 116;
        assert_eq!(&img[second + 110..second + 122], b"dev/console\0");
        assert_eq!(field(&img[second..], 1), 0o20600);
        assert_eq!(field(&img[second..], 9), 5);
        assert_eq!(field(&img[second..], 10), 1);
        let text = String::from_utf8_lossy(&img);
        assert!(text.contains("init\0"));
        assert!(text.ends_with("TRAILER!!!\0\0\0\0"));
        let bad = |name| Entry {
            name,
            mode: 0,
            data: &[],
            rdev: 0,
        };
        assert_eq!(newc(&[bad("")]), Err(CpioError::BadName(String::new())));
        assert_eq!(newc(&[bad("a\0b")]), Err(CpioError::BadName("a\0b".into())));
    }

    #[test]
    fn lines_are_split_and_stamped_at_their_end() {
        let mut s = LineSplitter::default();
        s.push(ms(1), b"Linux ver");
        s.push(ms(2), b"sion 6.1\r\nsecond\n");
        s.push(ms(3), b"par");
        assert_eq!(
            s.lines(),
            &[line(2, "Linux version 6.1"), line(2, "second")]
        );
        let all = s.finish(ms(9));
        assert_eq!(all.last(), Some(&line(9, "par")));
        assert_eq!(first_at(&all, "second"), Some(ms(2)));
        assert_eq!(first_at(&all, "absent"), None);
    }

    #[test]
    fn phases_of_a_transcript() {
        let t = [
            line(10, "[    0.000000] Linux version 6.1"),
            line(900, MARKER),
            line(
                901,
                "RELAUNCH-INIT: cmdline console=ttyS0 relaunch_init=reboot",
            ),
            line(902, REBOOTING),
            line(950, "[    1.0] reboot: Restarting system"),
            line(1700, "[    0.000000] Linux version 6.1"),
            line(2302, MARKER),
            line(2303, REBOOTING),
        ];
        let p = phases(&t);
        assert_eq!(p.boot_to_init, Some(ms(900)));
        assert_eq!(p.reboot_to_init, Some(ms(1400)));
        assert_eq!(boots(&t), 2);
        // Only one boot: no reboot phase.
        let p = phases(&t[..5]);
        assert_eq!(p.boot_to_init, Some(ms(900)));
        assert_eq!(p.reboot_to_init, None);
        // A marker before any reboot line does not count as the second boot.
        assert_eq!(phases(&t[..2]).reboot_to_init, None);
        assert_eq!(phases(&t[..1]), Phases::default());
    }

    #[test]
    fn watch_stops_at_the_condition_and_reports_the_exit() {
        let mut sh = Command::new("sh");
        sh.args(["-c", "echo one; echo two; echo err >&2; exec sleep 30"]);
        let w = watch(sh, Duration::from_secs(20), |l| l.len() >= 2).unwrap();
        assert!(w.stopped);
        assert!(w.status.is_none());
        assert_eq!(w.lines.len(), 2);
        assert!(w.elapsed < Duration::from_secs(20));
        let mut sh = Command::new("sh");
        sh.args(["-c", "printf 'a\\nb'; echo bad >&2; exit 3"]);
        let w = watch(sh, Duration::from_secs(20), |_| false).unwrap();
        assert!(!w.stopped);
        assert_eq!(w.status.and_then(|s| s.code()), Some(3));
        assert_eq!(w.stdout(), "a\nb\n");
        assert_eq!(w.last_stderr_line(), "bad");
        let mut sh = Command::new("sh");
        sh.args(["-c", "echo x; exec sleep 30"]);
        let w = watch(sh, Duration::from_millis(300), |_| false).unwrap();
        assert!(w.status.is_none() && !w.stopped);
        assert!(w.elapsed >= Duration::from_millis(300));
        assert_eq!(w.first("x"), w.lines.first().map(|l| l.at));
    }
}
