//! The CPUID instruction; the calling thread's scheduling policy.

/// Executes CPUID with `leaf` (subleaf 0) and returns (EAX, EBX, ECX, EDX).
pub fn cpuid(leaf: u32) -> (u32, u32, u32, u32) {
    #[allow(unused_unsafe)]
    // SAFETY: `__cpuid_count` has no preconditions on x86_64 (every x86_64 CPU implements
    // CPUID); it only reads processor identification.
    let r = unsafe { std::arch::x86_64::__cpuid_count(leaf, 0) };
    (r.eax, r.ebx, r.ecx, r.edx)
}

/// Moves the calling thread to `SCHED_BATCH` (nice value unchanged): a batch thread gets its
/// fair share of CPU but does not preempt a running thread when it wakes up (`sched(7)`).
///
/// # Errors
/// The `sched_setscheduler` errno.
pub fn set_current_thread_batch() -> Result<(), super::Errno> {
    // The kernel's `struct sched_param` is one `int sched_priority`
    // (`include/uapi/linux/sched/types.h`); SCHED_BATCH takes priority 0. (libc's type is
    // larger on musl, and musl's `sched_setscheduler` wrapper always fails with ENOSYS — the
    // POSIX call is per process, Linux's per thread — hence the raw system call.)
    let priority: libc::c_int = 0;
    // SAFETY: sched_setscheduler(2) takes (pid, policy, const struct sched_param *): pid 0 is
    // the calling thread, the policy is SCHED_BATCH, and the pointer is to a live, initialised
    // `int`, which is the whole kernel `struct sched_param`, only read by the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_sched_setscheduler,
            0,
            libc::SCHED_BATCH,
            std::ptr::from_ref(&priority),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(super::Errno::last())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_policy_applies_to_the_calling_thread_only() {
        // Field 41 of /proc/thread-self/stat is the scheduling policy (proc(5)); SCHED_BATCH = 3.
        fn policy() -> String {
            let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
            // The command name (field 2) may hold spaces: count fields after its ')'.
            let rest = &stat[stat.rfind(')').unwrap() + 2..];
            rest.split_whitespace().nth(41 - 3).unwrap().to_string()
        }
        let before = policy();
        let inner = std::thread::spawn(|| {
            set_current_thread_batch().unwrap();
            policy()
        })
        .join()
        .unwrap();
        assert_eq!(inner, libc::SCHED_BATCH.to_string());
        assert_eq!(policy(), before);
    }
}
