//! Keeps the runtime's timer driver from waking its own thread for every decision's deadline.
//!
//! Each script call runs under a deadline of a few milliseconds (`tokio::time::timeout`). Tokio's
//! timer driver writes to an eventfd, a system call that also makes the runtime poll its I/O
//! driver once more, whenever a timer is armed to fire earlier than every timer that was pending
//! when the runtime last parked. On a proxy a decision's deadline is usually the earliest timer
//! there is (the others are seconds away), so under load a good share of the calls paid that
//! write: 3,400 a second at 40,000 decisions a second in the benchmark (`perf record -e
//! syscalls:sys_enter_write` on the proxy showed them all coming from `Timeout::poll`).
//!
//! The pacer is one task that, while calls are being made, keeps a timer of its own armed
//! half a deadline ahead. Every call's deadline is later than that timer, so arming it wakes
//! nothing. After a period without calls the pacer stops, so an idle proxy has no timer at all;
//! the next call starts it again (one wake-up).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::Notify;

/// Shared by the calls (which [`DeadlinePacer::touch`] it) and the pacer task.
#[derive(Debug, Default)]
struct Shared {
    /// A call was made since the pacer's last tick.
    called: AtomicBool,
    /// The pacer task is ticking (not waiting for a call).
    ticking: AtomicBool,
    /// Wakes the pacer task when a call finds it idle.
    start: Notify,
}

/// Handle to the pacer; dropping it stops the task.
#[derive(Debug)]
pub(crate) struct DeadlinePacer {
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl DeadlinePacer {
    /// Starts the pacer for calls with deadlines of `timeout` on `runtime`.
    pub(crate) fn start(runtime: &tokio::runtime::Handle, timeout: Duration) -> Self {
        let shared = Arc::new(Shared::default());
        // Half the deadline: a call armed just after a tick is due after the next tick.
        // At least a millisecond, the timer wheel's resolution.
        let period = (timeout / 2).max(Duration::from_millis(1));
        let task = runtime.spawn(run(shared.clone(), period));
        Self { shared, task }
    }

    /// Called before a call arms its deadline.
    pub(crate) fn touch(&self) {
        let shared = &*self.shared;
        // A plain store on the hot path; the swap below only when the pacer was idle. The
        // orderings are relaxed: a start missed in a race with the pacer stopping costs only
        // the wake-ups the pacer saves, until the next call, and never a deadline.
        shared.called.store(true, Ordering::Relaxed);
        if !shared.ticking.load(Ordering::Relaxed) && !shared.ticking.swap(true, Ordering::AcqRel) {
            shared.start.notify_one();
        }
    }
}

impl Drop for DeadlinePacer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn run(shared: Arc<Shared>, period: Duration) {
    loop {
        // `notify_one` stores a permit when the task is not waiting yet, so a call that
        // flipped `ticking` between the checks below and this wait is not lost.
        shared.start.notified().await;
        let mut next = tokio::time::Instant::now() + period;
        loop {
            tokio::time::sleep_until(next).await;
            next += period;
            if !shared.called.swap(false, Ordering::Relaxed) {
                break;
            }
        }
        shared.ticking.store(false, Ordering::Release);
        // A call between the last swap and the store above saw `ticking` still true and did
        // not notify: look once more.
        if shared.called.load(Ordering::Relaxed) && !shared.ticking.swap(true, Ordering::AcqRel) {
            shared.start.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn ticks_while_calls_are_made_and_stops_after_an_idle_period() {
        let runtime = tokio::runtime::Handle::current();
        let pacer = DeadlinePacer::start(&runtime, Duration::from_millis(10));
        tokio::task::yield_now().await;
        assert!(
            !pacer.shared.ticking.load(Ordering::Relaxed),
            "idle at start"
        );

        pacer.touch();
        assert!(pacer.shared.ticking.load(Ordering::Relaxed));
        // Calls every 3 ms for 30 ms: the pacer keeps ticking (period 5 ms).
        for _ in 0..10 {
            tokio::time::sleep(Duration::from_millis(3)).await;
            pacer.touch();
            assert!(pacer.shared.ticking.load(Ordering::Relaxed));
        }
        // Two idle periods later it has stopped.
        tokio::time::sleep(Duration::from_millis(11)).await;
        assert!(
            !pacer.shared.ticking.load(Ordering::Relaxed),
            "stopped when idle"
        );

        // And the next call starts it again.
        pacer.touch();
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert!(pacer.shared.ticking.load(Ordering::Relaxed));
    }
}
