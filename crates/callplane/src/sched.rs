//! What the calls' threads ask of the kernel's scheduler.

/// The slice the calls' runtime threads ask for: about what handling one SIP message or one
/// command takes. The kernel keeps it within 0.1–100 ms; its own default is 0.75 ms times a
/// factor of the CPU count (1.4 ms on 2 cores).
const CALL_SLICE: std::time::Duration = std::time::Duration::from_micros(300);

/// Asks for a short scheduler slice ([`CALL_SLICE`]) for the calling thread. Under EEVDF
/// (Linux 6.12 and later) a thread with a shorter slice gets the core, when it wakes, from a
/// running thread with a longer one, instead of waiting for that thread's slice to end: a SIP
/// request is not kept waiting behind the events fan-out, the database writer or anything else
/// on the machine. Measured on 2 cores with 1,000 events subscribers of 100 calls/s
/// (`bench/events_fanout.py`, docs/performance.md): INVITE→200 p50 1.0 → 0.6 ms without the
/// subscribers, p99 3.4–3.8 → 2.4–3.2 ms with them.
///
/// Any user may ask for it. The thread's nice value is part of the request, so the thread's
/// own is passed on; a thread an operator started under another policy (`chrt --batch`,
/// `--idle`, a real-time one) is left as it is. Older kernels take the request and ignore the
/// slice; where the call fails, the thread runs as it was.
pub fn short_slice() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: gettid/getpriority read the calling thread; sched_setattr is given a fully
        // initialised sched_attr and its size.
        unsafe {
            if libc::sched_getscheduler(0) != libc::SCHED_OTHER {
                return;
            }
            let tid = libc::gettid();
            *libc::__errno_location() = 0;
            let nice = libc::getpriority(libc::PRIO_PROCESS, tid as libc::id_t);
            if nice == -1 && *libc::__errno_location() != 0 {
                return;
            }
            let attr = libc::sched_attr {
                size: std::mem::size_of::<libc::sched_attr>() as u32,
                sched_policy: libc::SCHED_OTHER as u32,
                sched_flags: 0,
                sched_nice: nice,
                sched_priority: 0,
                sched_runtime: CALL_SLICE.as_nanos() as u64,
                sched_deadline: 0,
                sched_period: 0,
            };
            if libc::syscall(libc::SYS_sched_setattr, tid, &attr, 0) != 0 {
                tracing::debug!(error = %std::io::Error::last_os_error(), "cannot ask for a short scheduler slice");
            }
        }
    }
}
