//! Kicking a vCPU thread out of `KVM_RUN`: a real-time signal whose handler sets
//! `kvm_run.immediate_exit` of the vCPU bound to the receiving thread.
//!
//! Why the handler writes `immediate_exit` (Firecracker does the same): a signal that lands
//! between the thread's last check of its stop flag and its next `KVM_RUN` would otherwise be
//! lost and the vCPU would keep running; with `immediate_exit = 1` that `KVM_RUN` returns
//! `EINTR` at once (`Documentation/virt/kvm/api.rst`, "immediate_exit").

use std::cell::{Cell, OnceCell};
use std::os::unix::thread::JoinHandleExt;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
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

/// Sends the kick signal to `thread` (installing the handler first if needed).
///
/// # Errors
/// The `pthread_kill` or `sigaction` error number.
pub fn kick<T>(thread: &JoinHandle<T>) -> Result<(), Errno> {
    install_kick_handler()?;
    // std's `RawPthread` is an integer; libc's `pthread_t` is an integer on glibc and a
    // pointer on musl: the cast is the identity on the first and int-to-pointer on the second.
    #[allow(clippy::unnecessary_cast, trivial_numeric_casts)]
    let pt = thread.as_pthread_t() as libc::pthread_t;
    // SAFETY: pthread_kill needs a pthread_t of a thread that has not been joined/detached:
    // `thread` is a live JoinHandle (borrowed, so not joined yet), which keeps the pthread_t
    // valid even if the thread has already finished. The signal is SIGRTMIN with our handler
    // installed just above (its default action would end the process).
    let rc = unsafe { libc::pthread_kill(pt, kick_signal()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(Errno::new(rc))
    }
}

/// A `pthread_t`, moved between threads only as an opaque id.
#[derive(Debug)]
struct PthreadId(libc::pthread_t);

// SAFETY: a `pthread_t` is an opaque thread id (an integer on glibc, a pointer on musl that we
// never dereference); POSIX lets any thread of the process pass it to pthread_kill, so moving
// the id to another thread is sound. It is only read under `Liveness::thread`'s lock.
unsafe impl Send for PthreadId {}

/// Whether a thread is still alive: `Some(id)` until the thread's exit clears it.
#[derive(Debug)]
struct Liveness {
    thread: Mutex<Option<PthreadId>>,
}

/// Owned by the thread it names (a thread-local): dropping it, which happens on that very
/// thread when it exits (thread-local destructors run before the thread ends), clears the
/// id under the lock, so no kick can start afterwards and none is in flight while it runs.
struct Registration(Arc<Liveness>);

impl Drop for Registration {
    fn drop(&mut self) {
        *self.0.thread.lock().unwrap_or_else(PoisonError::into_inner) = None;
    }
}

thread_local! {
    /// This thread's liveness token, created by the first [`ThreadHandle::current`].
    static ME: OnceCell<Registration> = const { OnceCell::new() };
}

/// A handle that can kick a thread (the session thread, which runs vCPU 0) out of
/// `KVM_RUN` from any other thread, for as long as the handle exists: it holds the thread's
/// liveness token, which the thread clears under a lock when it exits. A kick after that is
/// an `ESRCH` error, never a signal to a stale `pthread_t`.
#[derive(Clone, Debug)]
pub struct ThreadHandle(Arc<Liveness>);

impl ThreadHandle {
    /// The calling thread. (Called while the thread is already exiting, the handle is one of
    /// a dead thread: kicks fail with `ESRCH`.)
    pub fn current() -> ThreadHandle {
        ME.try_with(|me| {
            let reg = me.get_or_init(|| {
                // SAFETY: pthread_self has no preconditions and cannot fail.
                let id = unsafe { libc::pthread_self() };
                Registration(Arc::new(Liveness {
                    thread: Mutex::new(Some(PthreadId(id))),
                }))
            });
            ThreadHandle(Arc::clone(&reg.0))
        })
        .unwrap_or_else(|_| {
            ThreadHandle(Arc::new(Liveness {
                thread: Mutex::new(None),
            }))
        })
    }

    /// Whether this is the calling thread.
    pub fn is_current(&self) -> bool {
        ME.try_with(|me| me.get().is_some_and(|reg| Arc::ptr_eq(&reg.0, &self.0)))
            .unwrap_or(false)
    }

    /// Sends the kick signal to the thread.
    ///
    /// # Errors
    /// `ESRCH` if the thread has exited; the `pthread_kill` or `sigaction` error number.
    pub fn kick(&self) -> Result<(), Errno> {
        install_kick_handler()?;
        let thread = self.0.thread.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(id) = thread.as_ref() else {
            return Err(Errno::new(libc::ESRCH));
        };
        // SAFETY: pthread_kill needs the pthread_t of a thread that has not ended (POSIX: the
        // id of a terminated thread is undefined behaviour): the id is `Some` only until the
        // thread's `Registration` is dropped in its thread-local destructors, which takes
        // this same lock, held here across the call, so the thread is still running. The
        // signal is SIGRTMIN with our handler installed just above (its default action would
        // end the process).
        let rc = unsafe { libc::pthread_kill(id.0, kick_signal()) };
        if rc == 0 {
            Ok(())
        } else {
            Err(Errno::new(rc))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_handle_outliving_its_thread_cannot_kick() {
        let (tx, rx) = std::sync::mpsc::channel();
        let t = std::thread::spawn(move || {
            let h = ThreadHandle::current();
            assert!(h.is_current());
            assert!(ThreadHandle::current().is_current());
            tx.send(h).unwrap();
        });
        let h = rx.recv().unwrap();
        assert!(!h.is_current());
        t.join().unwrap();
        // The thread is gone (and joined): no signal is sent.
        assert_eq!(h.kick().unwrap_err().errno(), libc::ESRCH);
    }

    #[test]
    fn a_live_thread_is_kicked() {
        let (tx, rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let t = std::thread::spawn(move || {
            tx.send(ThreadHandle::current()).unwrap();
            // Interrupted by the kick (no SA_RESTART) or woken by `done`: either is fine.
            let _ = done_rx.recv();
        });
        let h = rx.recv().unwrap();
        assert!(h.kick().is_ok());
        done_tx.send(()).unwrap();
        t.join().unwrap();
        assert!(h.kick().is_err());
    }
}
