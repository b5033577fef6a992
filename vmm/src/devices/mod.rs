//! The guest-facing devices, and only these (`docs/devices.md`): COM1 16550, the port-0x80
//! boot marker, reset (i8042 0xFE on 0x64, 0xCF9 RST_CPU), the ACPI PM1a blocks ([`pm`]:
//! 0x600 event, 0x604 control, power-off on SLP_EN), pvpanic
//! (0x505), fw_cfg (0x510/0x511/0x514/0x518) with, when the session has it, the
//! vm-launch-update device's `etc/vmlaunchupdate` ([`launch_update`]). Every other port or
//! MMIO access is logged (rate-limited) and ignored: reads return all-ones.
//!
//! The guest is hostile: every handler works on bounded state, never touches host paths,
//! and turns anything malformed into "ignored" or a fw_cfg ERROR bit.

pub mod console;
pub mod fw_cfg;
pub mod launch_update;
pub mod pm;
pub mod serial;

use std::io::Write;
use std::sync::{Arc, Condvar, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use console::Console;
use fw_cfg::{FwCfg, PendingWrite};
use serial::{Serial, COM1, COM1_IRQ};

use crate::log::Spool;
use crate::memory::GuestMemory;

/// Boot-marker port: the first write per launch is timestamped.
pub const PORT_BOOT_MARKER: u16 = 0x80;
/// i8042 command port (0xFE = pulse reset line).
pub const PORT_I8042_CMD: u16 = 0x64;
/// i8042 data port.
pub const PORT_I8042_DATA: u16 = 0x60;
/// ICH9 reset control register (RST_CNT).
pub const PORT_RST_CNT: u16 = 0xCF9;
/// ICH9 PM1a control (PM base 0x600 + 4): SLP_EN (bit 13) powers off ([`pm`]).
pub const PORT_PM1A_CNT: u16 = pm::PORT_PM1A_CNT;
/// pvpanic.
pub const PORT_PVPANIC: u16 = 0x505;

/// i8042 "pulse output line 0" = CPU reset (IBM PC/AT technical reference).
const I8042_RESET: u8 = 0xFE;
/// RST_CNT bit 2: RST_CPU (Intel ICH9 datasheet 13.7.5; QEMU `hw/isa/lpc_ich9.c`).
const RST_CNT_RST_CPU: u8 = 1 << 2;
/// RST_CNT bits kept across writes (SYS_RST bit 1, FULL_RST bit 3).
const RST_CNT_MASK: u8 = 0x0A;
/// pvpanic PANICKED (QEMU `docs/specs/pvpanic.rst`).
const PVPANIC_PANICKED: u8 = 1 << 0;
/// pvpanic CRASH_LOADED.
const PVPANIC_CRASH_LOADED: u8 = 1 << 1;

/// How many unknown accesses a session logs in a burst before the rest are only counted.
pub const UNKNOWN_LOG_LIMIT: u64 = 8;
/// After the burst, one more unknown access may be logged per this interval.
pub const UNKNOWN_LOG_REFILL: Duration = Duration::from_secs(60);

/// Bytes of unknown-access log lines buffered at most while stderr is blocked (≈ 60 lines).
pub const UNKNOWN_LOG_CAP: usize = 4 << 10;
/// How long [`UnknownLog::suppressed`] waits for queued lines to reach stderr.
const UNKNOWN_LOG_FLUSH: Duration = Duration::from_millis(100);

/// The session-wide log of unknown guest accesses.
///
/// Budget: a token bucket of [`UNKNOWN_LOG_LIMIT`] lines refilled one per
/// [`UNKNOWN_LOG_REFILL`]. It outlives launches, so a guest that pokes an unknown port and
/// resets cannot flood stderr.
///
/// Path: lines are logged with the devices mutex held, so they never touch stderr on the
/// vCPU thread: they go, whole, into a buffer of at most [`UNKNOWN_LOG_CAP`] bytes that a
/// writer thread (started at the first line) drains to stderr; a line that does not fit is
/// dropped. Everything not logged, over budget or dropped, is counted
/// ([`UnknownLog::suppressed`]).
pub struct UnknownLog {
    state: Mutex<LogBucket>,
    /// The sink until the writer thread is started.
    sink: Mutex<Option<Box<dyn Write + Send>>>,
    cap: usize,
    /// The writer, once started (`None`: it could not be, lines are dropped).
    spool: OnceLock<Option<Arc<Spool>>>,
}

impl std::fmt::Debug for UnknownLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UnknownLog")
            .field("state", &self.state)
            .field("cap", &self.cap)
            .field("spool", &self.spool)
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
struct LogBucket {
    tokens: u64,
    refilled: Instant,
    /// Over budget.
    suppressed: u64,
    /// Dropped because the writer thread could not be started.
    unspooled: u64,
}

impl Default for UnknownLog {
    fn default() -> Self {
        UnknownLog::new()
    }
}

impl Drop for UnknownLog {
    fn drop(&mut self) {
        // The writer thread writes what is queued, then ends.
        if let Some(Some(spool)) = self.spool.get() {
            spool.close();
        }
    }
}

impl UnknownLog {
    /// A full budget, logging to stderr.
    pub fn new() -> UnknownLog {
        UnknownLog::to_writer(Box::new(std::io::stderr()), UNKNOWN_LOG_CAP)
    }

    /// A full budget, logging to `sink` with at most `cap` bytes buffered.
    pub fn to_writer(sink: Box<dyn Write + Send>, cap: usize) -> UnknownLog {
        UnknownLog {
            state: Mutex::new(LogBucket {
                tokens: UNKNOWN_LOG_LIMIT,
                refilled: Instant::now(),
                suppressed: 0,
                unspooled: 0,
            }),
            sink: Mutex::new(Some(sink)),
            cap,
            spool: OnceLock::new(),
        }
    }

    fn bucket(&self) -> std::sync::MutexGuard<'_, LogBucket> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether one more line may be logged at `now`; counts it as suppressed if not.
    pub fn allow(&self, now: Instant) -> bool {
        let mut b = self.bucket();
        let earned = now.saturating_duration_since(b.refilled).as_secs()
            / UNKNOWN_LOG_REFILL.as_secs().max(1);
        if earned > 0 {
            b.tokens = b.tokens.saturating_add(earned).min(UNKNOWN_LOG_LIMIT);
            b.refilled = now;
        }
        if b.tokens > 0 {
            b.tokens -= 1;
            true
        } else {
            b.suppressed = b.suppressed.saturating_add(1);
            false
        }
    }

    /// Logs `line` if the budget allows at `now` (the last line of a burst says that further
    /// accesses are only counted). Never blocks on stderr (type doc).
    pub fn log(&self, now: Instant, line: std::fmt::Arguments<'_>) {
        if !self.allow(now) {
            return;
        }
        let mut text = format!("{line}\n");
        if self.bucket().tokens == 0 {
            text.push_str(
                "relaunch: further unknown guest accesses are only counted (one logged a minute)\n",
            );
        }
        match self.spool() {
            Some(spool) => {
                // A dropped line is counted by the spool.
                let _ = spool.push(text.as_bytes(), true);
            }
            None => {
                let mut b = self.bucket();
                b.unspooled = b.unspooled.saturating_add(1);
            }
        }
    }

    /// The writer, started on first use.
    fn spool(&self) -> Option<&Arc<Spool>> {
        self.spool
            .get_or_init(|| {
                let sink = self
                    .sink
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .take()?;
                Spool::spawn("unknown-log", sink, self.cap).ok()
            })
            .as_ref()
    }

    /// Unknown accesses not logged so far: over budget, or dropped because stderr did not
    /// keep up (buffer full, stderr failed, no writer thread). Call it when the session ends:
    /// it waits up to 100 ms for queued lines to be written, and counts those still
    /// unwritten then as not logged.
    pub fn suppressed(&self) -> u64 {
        let b = self.bucket();
        let (suppressed, unspooled) = (b.suppressed, b.unspooled);
        drop(b);
        let spooled = match self.spool.get() {
            Some(Some(spool)) => {
                let loss = spool.finish(UNKNOWN_LOG_FLUSH);
                loss.dropped_pushes.saturating_add(loss.unwritten_pushes)
            }
            _ => 0,
        };
        suppressed.saturating_add(unspooled).saturating_add(spooled)
    }
}

/// Where device models drive interrupt lines: the in-kernel irqchip's inputs
/// (`KVM_IRQ_LINE`, [`crate::sys::kvm::IrqLine`]). Only platforms with an in-kernel PIC and
/// IOAPIC connect one (native, SEV, SEV-ES, SNP, emulated SEV-family); TDX's split
/// irqchip has no such inputs (KVM answers `ENOTTY` to `KVM_CREATE_IRQCHIP` for a TD), so
/// there the UART stays polled.
pub trait IrqSink: Send + Sync + std::fmt::Debug {
    /// Sets input `irq` to `level`; false if the kernel refused.
    fn set_level(&self, irq: u32, level: bool) -> bool;
}

impl IrqSink for crate::sys::kvm::IrqLine {
    fn set_level(&self, irq: u32, level: bool) -> bool {
        self.set(irq, level).is_ok()
    }
}

/// Why the guest asked for a reset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResetSource {
    /// 0xFE to port 0x64.
    I8042,
    /// RST_CPU written to port 0xCF9.
    Cf9,
    /// `KVM_EXIT_SHUTDOWN` (triple fault).
    TripleFault,
    /// `KVM_EXIT_SYSTEM_EVENT` RESET.
    SystemEvent,
    /// A `reset` request on the control socket (`--control`).
    Control,
}

impl ResetSource {
    /// Name in events and audit records.
    pub fn name(self) -> &'static str {
        match self {
            ResetSource::I8042 => "i8042",
            ResetSource::Cf9 => "cf9",
            ResetSource::TripleFault => "triple-fault",
            ResetSource::SystemEvent => "system-event-reset",
            ResetSource::Control => "control-socket",
        }
    }
}

/// What a device access asks the VMM to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Nothing: keep running.
    None,
    /// Reset the guest (relaunch).
    Reset(ResetSource),
    /// Power off.
    PowerOff,
    /// The guest reported a crash (pvpanic).
    Panic,
}

/// Timestamps of one launch, shared between vCPU threads (and the reaper, which waits for the
/// first exit before tearing the previous VM down).
#[derive(Debug)]
pub struct LaunchClock {
    /// When the vCPU threads were started.
    pub started: Instant,
    /// First `KVM_RUN` return on any vCPU.
    pub first_exit: OnceLock<Instant>,
    /// First write to port 0x80.
    pub boot_marker: OnceLock<Instant>,
    exited: Mutex<bool>,
    exited_cv: Condvar,
}

impl LaunchClock {
    /// A clock started now.
    pub fn start() -> LaunchClock {
        LaunchClock {
            started: Instant::now(),
            first_exit: OnceLock::new(),
            boot_marker: OnceLock::new(),
            exited: Mutex::new(false),
            exited_cv: Condvar::new(),
        }
    }

    /// A `KVM_RUN` returned now: see [`LaunchClock::note_exit_at`].
    pub fn note_exit(&self) {
        self.note_exit_at(Instant::now());
    }

    /// A `KVM_RUN` returned at `t`: the first call records `t` and wakes
    /// [`LaunchClock::wait_first_exit`].
    pub fn note_exit_at(&self, t: Instant) {
        if self.first_exit.get().is_some() {
            return;
        }
        let _ = self.first_exit.set(t);
        *self.exited.lock().unwrap_or_else(PoisonError::into_inner) = true;
        self.exited_cv.notify_all();
    }

    /// Waits until the first exit was noted or `timeout` passed; returns whether it was.
    pub fn wait_first_exit(&self, timeout: Duration) -> bool {
        let g = self.exited.lock().unwrap_or_else(PoisonError::into_inner);
        let (g, _) = self
            .exited_cv
            .wait_timeout_while(g, timeout, |done| !*done)
            .unwrap_or_else(PoisonError::into_inner);
        *g
    }
}

/// The devices of one launch.
#[derive(Debug)]
pub struct Devices {
    console: Arc<Console>,
    memory: Arc<GuestMemory>,
    clock: Arc<LaunchClock>,
    serial: Serial,
    /// Where IRQ 4 goes, if this platform has an in-kernel irqchip ([`IrqSink`]).
    irq: Option<Arc<dyn IrqSink>>,
    /// The level IRQ 4 was last set to.
    serial_level: bool,
    /// `KVM_IRQ_LINE` calls the kernel refused.
    pub irq_errors: u64,
    fw_cfg: FwCfg,
    rst_cnt: u8,
    pm: pm::Pm1,
    log: Arc<UnknownLog>,
    /// fw_cfg writes to complete once the devices lock is released ([`Devices::take_deferred`]).
    deferred: Vec<PendingWrite>,
    /// Unknown port/MMIO accesses seen.
    pub unknown: u64,
}

/// Device work an access left for after the devices lock is released: fw_cfg DMA writes to
/// `etc/vmlaunchupdate` ([`fw_cfg::PendingWrite`]), in the order they were made.
#[derive(Debug)]
pub struct Deferred {
    writes: Vec<PendingWrite>,
    memory: Arc<GuestMemory>,
}

impl Deferred {
    /// Whether there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.writes.is_empty()
    }

    /// Does it (on the vCPU thread that made the access, before it re-enters the guest).
    pub fn run(self) {
        for w in self.writes {
            w.complete(&self.memory);
        }
    }
}

impl Devices {
    /// Test devices over `memory`: a 64-byte captured console, a fresh clock, fw_cfg for one
    /// vCPU with no files, a fresh unknown-access budget.
    #[cfg(test)]
    pub(crate) fn for_test(memory: &Arc<GuestMemory>) -> Arc<Mutex<Devices>> {
        Arc::new(Mutex::new(Devices::new(
            Arc::new(Console::capture(64)),
            Arc::clone(memory),
            Arc::new(LaunchClock::start()),
            FwCfg::new(1, 1, &[]),
            Arc::new(UnknownLog::new()),
        )))
    }

    /// Devices for one launch; `log` is the session's budget for logging unknown accesses.
    pub fn new(
        console: Arc<Console>,
        memory: Arc<GuestMemory>,
        clock: Arc<LaunchClock>,
        fw_cfg: FwCfg,
        log: Arc<UnknownLog>,
    ) -> Devices {
        Devices {
            console,
            memory,
            clock,
            serial: Serial::new(),
            irq: None,
            serial_level: false,
            irq_errors: 0,
            fw_cfg,
            rst_cnt: 0,
            pm: pm::Pm1::new(),
            log,
            deferred: Vec::new(),
            unknown: 0,
        }
    }

    /// Connects the UART's interrupt output to `sink` (IRQ 4). Without it the UART is polled.
    pub fn connect_irq(&mut self, sink: Arc<dyn IrqSink>) {
        self.irq = Some(sink);
        self.serial_level = false;
        self.update_serial_irq();
    }

    /// Drives IRQ 4 from the UART's interrupt output when it changed (level changes only):
    /// after every UART access, and when input arrives ([`Console::set_input_waker`]).
    pub fn update_serial_irq(&mut self) {
        let Some(sink) = &self.irq else { return };
        let level = self.serial.interrupt(&self.console);
        if level != self.serial_level {
            if !sink.set_level(COM1_IRQ, level) {
                self.irq_errors = self.irq_errors.saturating_add(1);
            }
            self.serial_level = level;
        }
    }

    /// The work the last accesses left for after the lock is released ([`Deferred`]).
    pub fn take_deferred(&mut self) -> Deferred {
        Deferred {
            writes: std::mem::take(&mut self.deferred),
            memory: Arc::clone(&self.memory),
        }
    }

    /// fw_cfg DMA requests that failed.
    pub fn fw_cfg_errors(&self) -> u64 {
        self.fw_cfg.dma_errors
    }

    fn unknown(&mut self, what: &str, addr: u64, len: usize) {
        self.unknown = self.unknown.saturating_add(1);
        self.log.log(
            Instant::now(),
            format_args!("relaunch: guest {what} {addr:#x} ({len} bytes) ignored"),
        );
    }

    /// Guest `in` from `port` into `data`: one or more accesses of `size` bytes (several for
    /// `rep ins`). An access covers consecutive ports: byte `i` of it is read from
    /// `port + i` by the device at `port` (for the UART, register by register).
    pub fn io_in(&mut self, port: u16, size: usize, data: &mut [u8]) -> Action {
        if let COM1..=0x3FF = port {
            self.serial.read(port - COM1, size, data, &self.console);
            self.update_serial_irq();
            return Action::None;
        }
        let mut known = true;
        for access in data.chunks_mut(size.max(1)) {
            known = self.in_one(port, access);
            if !known {
                break;
            }
        }
        if !known {
            data.fill(0xFF);
            self.unknown("port read", u64::from(port), data.len());
        }
        Action::None
    }

    /// One `in` access at `port`; false if no device claims the port.
    fn in_one(&mut self, port: u16, data: &mut [u8]) -> bool {
        match port {
            fw_cfg::PORT_SELECTOR..=fw_cfg::PORT_DATA | fw_cfg::PORT_DMA_HIGH..=0x51B => {
                self.fw_cfg.io_in(port, data)
            }
            // i8042 status: output and input buffers empty; data: nothing.
            PORT_I8042_CMD | PORT_I8042_DATA => data.fill(0),
            PORT_RST_CNT => {
                data.fill(0);
                if let Some(b) = data.first_mut() {
                    *b = self.rst_cnt;
                }
            }
            PORT_PVPANIC => {
                data.fill(0);
                if let Some(b) = data.first_mut() {
                    *b = PVPANIC_PANICKED | PVPANIC_CRASH_LOADED;
                }
            }
            pm::PORT_PM1A_EVT..=pm::PORT_PM1A_CNT_END => self.pm.read(port, data),
            PORT_BOOT_MARKER => data.fill(0),
            _ => return false,
        }
        true
    }

    /// Guest `out` of `data` to `port`: one or more accesses of `size` bytes (several for
    /// `rep outs`), handled in order until one ends the launch. An access covers consecutive
    /// ports: byte `i` of it goes to `port + i` by way of the device at `port` (for the
    /// UART, register by register).
    pub fn io_out(&mut self, port: u16, size: usize, data: &[u8]) -> Action {
        if let COM1..=0x3FF = port {
            self.serial.write(port - COM1, size, data, &self.console);
            self.update_serial_irq();
            return Action::None;
        }
        for access in data.chunks(size.max(1)) {
            match self.out_one(port, access) {
                Some(Action::None) => {}
                Some(action) => return action,
                None => {
                    self.unknown("port write", u64::from(port), data.len());
                    break;
                }
            }
        }
        Action::None
    }

    /// One `out` access at `port`; `None` if no device claims the port.
    fn out_one(&mut self, port: u16, data: &[u8]) -> Option<Action> {
        let first = data.first().copied().unwrap_or(0);
        match port {
            PORT_BOOT_MARKER => {
                let _ = self.clock.boot_marker.set(Instant::now());
            }
            fw_cfg::PORT_SELECTOR..=fw_cfg::PORT_DATA | fw_cfg::PORT_DMA_HIGH..=0x51B => {
                if let Some(w) = self.fw_cfg.io_out(port, data, &self.memory) {
                    self.deferred.push(w);
                }
            }
            PORT_I8042_CMD if first == I8042_RESET => {
                return Some(Action::Reset(ResetSource::I8042))
            }
            PORT_I8042_CMD | PORT_I8042_DATA => {}
            PORT_RST_CNT => {
                if data.len() == 1 && first & RST_CNT_RST_CPU != 0 {
                    return Some(Action::Reset(ResetSource::Cf9));
                }
                self.rst_cnt = first & RST_CNT_MASK;
            }
            pm::PORT_PM1A_EVT..=pm::PORT_PM1A_CNT_END => {
                if self.pm.write(port, data) {
                    return Some(Action::PowerOff);
                }
            }
            PORT_PVPANIC => {
                if first & PVPANIC_PANICKED != 0 {
                    return Some(Action::Panic);
                }
            }
            _ => return None,
        }
        Some(Action::None)
    }

    /// Guest MMIO read (nothing is mapped: all-ones).
    pub fn mmio_read(&mut self, addr: u64, data: &mut [u8]) {
        data.fill(0xFF);
        self.unknown("MMIO read", addr, data.len());
    }

    /// Guest MMIO write (ignored).
    pub fn mmio_write(&mut self, addr: u64, data: &[u8]) {
        self.unknown("MMIO write", addr, data.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn devices() -> (Devices, Arc<Console>, Arc<LaunchClock>) {
        let console = Arc::new(Console::capture(1024));
        let clock = Arc::new(LaunchClock::start());
        let d = Devices::new(
            Arc::clone(&console),
            Arc::new(GuestMemory::default()),
            Arc::clone(&clock),
            FwCfg::new(1, 1, &[]),
            Arc::new(UnknownLog::new()),
        );
        (d, console, clock)
    }

    #[test]
    fn reset_poweroff_panic_ports() {
        let (mut d, _, _) = devices();
        assert_eq!(
            d.io_out(0x64, 1, &[0xFE]),
            Action::Reset(ResetSource::I8042)
        );
        assert_eq!(d.io_out(0x64, 1, &[0xFF]), Action::None);
        assert_eq!(d.io_out(0xCF9, 1, &[0x02]), Action::None);
        let mut b = [0u8];
        d.io_in(0xCF9, 1, &mut b);
        assert_eq!(b[0], 0x02);
        assert_eq!(d.io_out(0xCF9, 1, &[0x06]), Action::Reset(ResetSource::Cf9));
        assert_eq!(d.io_out(0xCF9, 1, &[0x0E]), Action::Reset(ResetSource::Cf9));
        assert_eq!(
            d.io_out(0x604, 2, &0x2000u16.to_le_bytes()),
            Action::PowerOff
        );
        assert_eq!(
            d.io_out(0x604, 2, &0x3400u16.to_le_bytes()),
            Action::PowerOff
        );
        assert_eq!(d.io_out(0x604, 2, &0x1C00u16.to_le_bytes()), Action::None);
        assert_eq!(d.io_out(0x605, 1, &[0x20]), Action::PowerOff);
        assert_eq!(d.io_out(0x604, 1, &[0x20]), Action::None);
        // ACPI mode always (SCI_EN), SLP_TYP reads back; the event block is a device too.
        let mut w = [0u8; 2];
        d.io_out(0x604, 2, &0x1C00u16.to_le_bytes());
        d.io_in(0x604, 2, &mut w);
        assert_eq!(u16::from_le_bytes(w), (7 << 10) | 1);
        let before = d.unknown;
        d.io_out(0x600, 2, &[0xFF, 0xFF]);
        d.io_in(0x600, 4, &mut [0u8; 4]);
        assert_eq!(d.unknown, before);
        assert_eq!(d.io_out(0x505, 1, &[1]), Action::Panic);
        assert_eq!(d.io_out(0x505, 1, &[2]), Action::None);
    }

    /// Records every level change it is asked for.
    #[derive(Debug, Default)]
    struct Lines(Mutex<Vec<(u32, bool)>>);

    impl IrqSink for Lines {
        fn set_level(&self, irq: u32, level: bool) -> bool {
            self.0.lock().unwrap().push((irq, level));
            true
        }
    }

    #[test]
    fn uart_drives_irq4_on_level_changes_only() {
        let (mut d, console, _) = devices();
        // Not connected: the UART is polled, nothing is driven.
        d.io_out(0x3F9, 1, &[0x02]);
        let lines = Arc::new(Lines::default());
        d.connect_irq(Arc::clone(&lines) as Arc<dyn IrqSink>);
        // Connecting samples the output: THRE is pending (ETBEI was raised).
        assert_eq!(*lines.0.lock().unwrap(), [(4, true)]);
        // Reading IIR (THRE) lowers it; a second read changes nothing.
        let mut b = [0u8];
        d.io_in(0x3FA, 1, &mut b);
        d.io_in(0x3FA, 1, &mut b);
        // Three bytes: high after the first THR write; still high (no call) after the rest.
        d.io_out(0x3F8, 1, b"abc");
        d.io_out(0x3F8, 1, b"d");
        // Input while the guest waits: the waker path raises RDA.
        d.io_out(0x3F9, 1, &[0x01]);
        console.push_input(b"k");
        d.update_serial_irq();
        d.io_in(0x3F8, 1, &mut b);
        assert_eq!(b[0], b'k');
        assert_eq!(
            *lines.0.lock().unwrap(),
            [
                (4, true),
                (4, false),
                (4, true),
                (4, false),
                (4, true),
                (4, false)
            ]
        );
        assert_eq!(d.irq_errors, 0);
    }

    #[test]
    fn wide_and_repeated_port_accesses() {
        let (mut d, console, _) = devices();
        // outw to THR writes THR and IER (not two console bytes); inw reads RBR and IER.
        assert_eq!(d.io_out(0x3F8, 2, &[b'A', 0x02]), Action::None);
        assert_eq!(console.captured(), b"A");
        let mut w = [0u8; 2];
        d.io_in(0x3F8, 2, &mut w);
        assert_eq!(w, [0, 0x02]);
        // rep outsb to THR: every byte is a THR write.
        d.io_out(0x3F8, 1, b"hi");
        assert_eq!(console.captured(), b"Ahi");
        // rep outsb to the i8042: the second byte resets.
        assert_eq!(
            d.io_out(0x64, 1, &[0x00, 0xFE]),
            Action::Reset(ResetSource::I8042)
        );
        // rep outsw to PM1a_CNT: the second access powers off.
        assert_eq!(d.io_out(0x604, 2, &[0, 0, 0x00, 0x20]), Action::PowerOff);
        // rep insb from an unknown port: all-ones, one unknown access.
        let before = d.unknown;
        let mut b = [0u8; 5];
        d.io_in(0x1234, 1, &mut b);
        assert_eq!(b, [0xFF; 5]);
        assert_eq!(d.unknown, before + 1);
    }

    #[test]
    fn boot_marker_keeps_first_write() {
        let (mut d, _, clock) = devices();
        assert!(clock.boot_marker.get().is_none());
        d.io_out(0x80, 1, &[1]);
        let t = *clock.boot_marker.get().unwrap();
        d.io_out(0x80, 1, &[2]);
        assert_eq!(*clock.boot_marker.get().unwrap(), t);
    }

    #[test]
    fn unknown_log_budget_is_per_session() {
        let log = Arc::new(UnknownLog::new());
        let t0 = Instant::now();
        // Two launches share the budget: the second gets nothing left.
        for launch in 0..2 {
            let mut d = Devices::new(
                Arc::new(Console::capture(16)),
                Arc::new(GuestMemory::default()),
                Arc::new(LaunchClock::start()),
                FwCfg::new(launch + 1, 1, &[]),
                Arc::clone(&log),
            );
            for _ in 0..100 {
                d.io_out(0x1234, 1, &[0]);
            }
            assert_eq!(d.unknown, 100);
        }
        assert_eq!(log.suppressed(), 200 - UNKNOWN_LOG_LIMIT);
        // Refill: one line per interval, never more than the burst.
        assert!(!log.allow(t0));
        let t1 = t0 + UNKNOWN_LOG_REFILL + Duration::from_secs(1);
        assert!(log.allow(t1));
        assert!(!log.allow(t1));
        let later = t0 + UNKNOWN_LOG_REFILL * 1000;
        for _ in 0..UNKNOWN_LOG_LIMIT {
            assert!(log.allow(later));
        }
        assert!(!log.allow(later));
        assert_eq!(log.suppressed(), 200 - UNKNOWN_LOG_LIMIT + 3);
    }

    /// A stderr stand-in that blocks every write until `gate` opens, recording what it got.
    struct Gated {
        gate: Arc<(Mutex<bool>, Condvar)>,
        got: Arc<Mutex<Vec<u8>>>,
    }

    impl Write for Gated {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            let (m, cv) = &*self.gate;
            let mut open = m.lock().unwrap();
            while !*open {
                open = cv.wait(open).unwrap();
            }
            self.got.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn blocked_stderr_never_blocks_unknown_accesses() {
        let gate = Arc::new((Mutex::new(false), Condvar::new()));
        let got = Arc::new(Mutex::new(Vec::new()));
        let sink = Gated {
            gate: Arc::clone(&gate),
            got: Arc::clone(&got),
        };
        let line = b"relaunch: guest port write 0x1234 (1 bytes) ignored\n";
        // Room for one line besides the one the writer is stuck on.
        let log = Arc::new(UnknownLog::to_writer(Box::new(sink), line.len() + 10));
        let mut d = Devices::new(
            Arc::new(Console::capture(16)),
            Arc::new(GuestMemory::default()),
            Arc::new(LaunchClock::start()),
            FwCfg::new(1, 1, &[]),
            Arc::clone(&log),
        );
        let t = Instant::now();
        d.io_out(0x1234, 1, &[0]);
        // The writer takes the first line and blocks in write.
        while !log.spool().is_some_and(|s| s.writing()) {
            std::thread::yield_now();
        }
        for _ in 1..100 {
            assert_eq!(d.io_out(0x1234, 1, &[0]), Action::None);
        }
        assert!(t.elapsed() < Duration::from_secs(5));
        assert_eq!(d.unknown, 100);
        // 92 over budget, 6 lines dropped (the buffer holds line 2 only), 2 unwritten.
        assert_eq!(log.suppressed(), 100);
        let (m, cv) = &*gate;
        *m.lock().unwrap() = true;
        cv.notify_all();
        assert_eq!(log.suppressed(), 98);
        let want = [&line[..], &line[..]].concat();
        assert_eq!(*got.lock().unwrap(), want);
    }

    #[test]
    fn unknown_accesses_are_counted_and_ignored() {
        let (mut d, console, _) = devices();
        for p in 0..=u16::MAX {
            let mut b = [0u8; 4];
            if !matches!(p, 0x64 | 0x505 | 0x600..=0x605 | 0xCF9 | 0x510..=0x51B) {
                d.io_out(p, 4, &[0xFE, 0xFF, 0xFF, 0xFF]);
            }
            d.io_in(p, 4, &mut b);
        }
        d.mmio_read(0xFEE0_0000, &mut [0; 8]);
        d.mmio_write(0xFFFF_FFFF_FFFF_FFF0, &[1; 8]);
        assert!(d.unknown > 60000);
        // The 0xFE etc. bytes written to COM1 THR reached the console, bounded.
        assert!(console.captured().len() <= 1024);
    }
}
