//! Kicking a vCPU thread out of `KVM_RUN`: a real-time signal whose handler sets
//! `kvm_run.immediate_exit` of the vCPU bound to the receiving thread.
//!
//! Why the handler writes `immediate_exit` (Firecracker does the same): a signal that lands
//! between the thread's last check of its stop flag and its next `KVM_RUN` would otherwise be
//! lost and the vCPU would keep running; with `immediate_exit = 1` that `KVM_RUN` returns
//! `EINTR` at once (`Documentation/virt/kvm/api.rst`, "immediate_exit").

use std::cell::Cell;
use std::os::unix::thread::JoinHandleExt;
use std::sync::OnceLock;
use std::thread::JoinHandle;

use kvm_bindings::kvm_run;

use super::kvm::Vcpu;
use super::Errno;

thread_local! {
    /// The `kvm_run` of the vCPU this thread is running, or null.
    static KICK_TARGET: Cell<*mut kvm_run> = const { Cell::new(std::ptr::null_mut()) };
}

/// The kick signal: the first real-time signal the C library leaves to applications.
pub fn kick_signal() -> libc::c_int {
    libc::SIGRTMIN()
}

extern "C" fn on_kick(_sig: libc::c_int) {
    // `try_with` on a const-initialised thread-local neither allocates nor panics: safe to
    // call in a signal handler.
    let target = KICK_TARGET
        .try_with(Cell::get)
        .unwrap_or(std::ptr::null_mut());
    if !target.is_null() {
        let flag = target
            .cast::<u8>()
            .wrapping_add(std::mem::offset_of!(kvm_run, immediate_exit));
        // SAFETY: write_volatile needs a valid, aligned pointer: `target` is the `kvm_run`
        // mapping of the vCPU this very thread is running inside `with_kick_target`, which
        // resets the pointer to null before that vCPU (and its mapping) can be dropped or
        // leave this thread; this handler runs on the same thread, so the mapping is alive.
        // `flag` is byte `offset_of!(kvm_run, immediate_exit)` (1, asserted in `sys::kvm`)
        // of it: in bounds, and a u8 needs no alignment.
        // Known exception (documented, not hidden): kvm-ioctls only hands out `&mut kvm_run`
        // (re-derived after every KVM_RUN), so under Stacked Borrows this store through an
        // earlier raw pointer aliases that reference. The byte lives in a MAP_SHARED kernel
        // page the kernel itself writes concurrently, the store is volatile and one byte, and
        // kvm-ioctls touches `immediate_exit` only in `set_kvm_immediate_exit` on this same
        // thread (never interleaved with the handler's store within one statement). A second
        // private mapping of the page removes the aliasing but costs an mmap + fault per
        // vCPU per launch (≈ +0.1 ms relaunch p50 here, measured: docs/benchmarks.md).
        unsafe { std::ptr::write_volatile(flag, 1) };
    }
}

/// Installs the kick handler (once per process; later calls return the first result).
///
/// # Errors
/// The `sigaction` errno.
pub fn install_kick_handler() -> Result<(), Errno> {
    static INSTALLED: OnceLock<Result<(), i32>> = OnceLock::new();
    let r = INSTALLED.get_or_init(|| {
        // SAFETY: an all-zero `sigaction` is a valid value of this plain C struct (empty mask,
        // no flags); we fill the handler next.
        let mut act: libc::sigaction = unsafe { std::mem::zeroed() };
        act.sa_sigaction = on_kick as extern "C" fn(libc::c_int) as usize;
        // No SA_RESTART: a kicked blocking call returns EINTR. No SA_SIGINFO: one-argument
        // handler.
        act.sa_flags = 0;
        // SAFETY: sigaction(2) needs a valid signal number and a valid `act`: the signal is
        // SIGRTMIN (reserved for applications), `act` is initialised above and its handler is
        // async-signal-safe (it only touches a const thread-local and a volatile byte); a
        // null `oldact` is allowed.
        let rc = unsafe { libc::sigaction(kick_signal(), &act, std::ptr::null_mut()) };
        if rc == 0 {
            Ok(())
        } else {
            Err(Errno::last().errno())
        }
    });
    r.map_err(Errno::new)
}

/// Runs `f` with `vcpu` as this thread's kick target: a kick signal delivered to this thread
/// while `f` runs makes the vCPU's next (or current) `KVM_RUN` return `EINTR`.
pub fn with_kick_target<R>(vcpu: &mut Vcpu, f: impl FnOnce(&mut Vcpu) -> R) -> R {
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            let _ = KICK_TARGET.try_with(|c| c.set(std::ptr::null_mut()));
        }
    }
    let ptr = vcpu.kvm_run_ptr();
    KICK_TARGET.with(|c| c.set(ptr));
    let _reset = Reset;
    f(vcpu)
}

/// Sends the kick signal to `thread` (a no-op error `ESRCH` if it already ended).
///
/// # Errors
/// The `pthread_kill` error number.
pub fn kick<T>(thread: &JoinHandle<T>) -> Result<(), Errno> {
    // std's `RawPthread` is an integer; libc's `pthread_t` is an integer on glibc and a
    // pointer on musl: the cast is the identity on the first and int-to-pointer on the second.
    #[allow(clippy::unnecessary_cast, trivial_numeric_casts)]
    let pt = thread.as_pthread_t() as libc::pthread_t;
    // SAFETY: pthread_kill needs a pthread_t of a thread that has not been joined/detached:
    // `thread` is a live JoinHandle (borrowed, so not joined yet), which keeps the pthread_t
    // valid even if the thread has already finished.
    let rc = unsafe { libc::pthread_kill(pt, kick_signal()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(Errno::new(rc))
    }
}

/// A handle of a thread that stays alive while others may kick it (the session thread, which
/// runs vCPU 0 and outlives every AP thread of its launch).
#[derive(Clone, Copy, Debug)]
pub struct ThreadHandle(libc::pthread_t);

// SAFETY: a `pthread_t` is an opaque thread id (an integer on glibc, a pointer on musl that is
// never dereferenced by us); POSIX lets any thread of the process pass it to pthread_kill and
// pthread_equal, so moving or sharing the id between threads is sound.
unsafe impl Send for ThreadHandle {}
// SAFETY: see `Send`: the handle is immutable and only ever passed by value to libc.
unsafe impl Sync for ThreadHandle {}

impl ThreadHandle {
    /// The calling thread.
    pub fn current() -> ThreadHandle {
        // SAFETY: pthread_self has no preconditions and cannot fail.
        ThreadHandle(unsafe { libc::pthread_self() })
    }

    /// Whether this is the calling thread.
    pub fn is_current(&self) -> bool {
        let me = ThreadHandle::current();
        // SAFETY: pthread_equal compares two pthread_t values and has no preconditions.
        unsafe { libc::pthread_equal(self.0, me.0) != 0 }
    }

    /// Sends the kick signal to the thread.
    ///
    /// The caller must only use a handle while its thread is alive (see the type doc): the
    /// session holds this invariant by joining every AP thread before it leaves a launch.
    ///
    /// # Errors
    /// The `pthread_kill` error number.
    pub fn kick(&self) -> Result<(), Errno> {
        // SAFETY: pthread_kill needs the pthread_t of a live thread: by this type's contract
        // the handle is only used while its thread runs (the session thread, alive until it
        // has joined every thread that holds the handle); the signal has our handler.
        let rc = unsafe { libc::pthread_kill(self.0, kick_signal()) };
        if rc == 0 {
            Ok(())
        } else {
            Err(Errno::new(rc))
        }
    }
}
