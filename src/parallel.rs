//! Work shared out between threads:
//! - [`in_parts`]: independent parts (gradients of different positions, cell
//!   rankings of different layer × kind matrices);
//! - [`Pair`]: one job on two threads in lock step, which meet as often as the
//!   job needs (a layer's units split between two cores, step by step).

use std::cell::Cell;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

/// Cuts `items` into at most `threads` contiguous parts, runs `work` on each
/// (the first on this thread) and returns the results in the parts' order, so a
/// caller that concatenates them gets what one thread would have. A panic in any
/// part is raised again here.
pub(crate) fn in_parts<T: Send, R: Send>(
    items: &mut [T],
    threads: usize,
    work: impl Fn(&mut [T]) -> R + Sync,
) -> Vec<R> {
    let per = items.len().div_ceil(threads.max(1)).max(1);
    if per >= items.len() {
        return vec![work(items)];
    }
    std::thread::scope(|scope| {
        let work = &work;
        let mut parts = items.chunks_mut(per);
        let first = parts.next().expect("more than one part");
        let others: Vec<_> = parts.map(|part| scope.spawn(move || work(part))).collect();
        let mut results = vec![work(first)];
        results.extend(others.into_iter().map(|w| w.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))));
        results
    })
}

/// This thread and a helper, working on one job at a time ([`Pair::both`]) and
/// meeting inside it ([`Meet::wait`]). The helper spins between jobs and at a
/// meeting, so a meeting costs well under a microsecond (220–310 ns, an empty
/// job 440 ns, on the 2-core AMD EPYC here, 200,000 in a row) where a thread
/// would take tens to wake: made for jobs that meet every few tens of microseconds. If
/// either side panics, the other stops waiting and the panic reaches the caller.
pub(crate) struct Pair {
    /// Bumped by the caller for each job; the helper answers in `done`.
    posted: AtomicUsize,
    done: AtomicUsize,
    /// Arrivals at this job's meetings, both sides counted.
    arrived: AtomicUsize,
    /// Set when the caller's work ends, to release the helper.
    stop: AtomicBool,
    /// Set when either side's part panics: the other stops waiting (and panics).
    failed: AtomicBool,
    job: Mutex<Option<JobRef>>,
}

/// Something both sides of a [`Pair`] job reach, typically raw pointers into
/// buffers that each side writes its own part of: `Sync` whatever it holds,
/// which only its (unsafe) maker can vouch for.
pub(crate) struct Both<T>(T);

impl<T> Both<T> {
    /// # Safety
    /// While a job uses it, the two sides never write the same memory through
    /// it, and each reads what the other writes only after a meeting (or after
    /// `both` returns).
    pub(crate) unsafe fn new(value: T) -> Self {
        Both(value)
    }

    pub(crate) fn get(&self) -> &T {
        &self.0
    }
}

// SAFETY: the contract of `Both::new`.
unsafe impl<T> Sync for Both<T> {}

/// The job both sides run, with its lifetime erased: it stays valid until the
/// helper has answered in `done`, which [`Pair::both`] waits for, even on a panic.
#[derive(Clone, Copy)]
struct JobRef(*const (dyn Fn(&Meet) + Sync + 'static));

// SAFETY: the job is `Sync`, and only used while `both` keeps it alive (above).
unsafe impl Send for JobRef {}

/// One side's view of a running job: which side it is, and its meetings.
pub(crate) struct Meet<'p> {
    pair: &'p Pair,
    side: usize,
    rounds: Cell<usize>,
}

impl Meet<'_> {
    /// 0 on the calling thread, 1 on the helper.
    pub(crate) fn side(&self) -> usize {
        self.side
    }

    /// Waits until the other side has come to the same meeting (both sides must
    /// call this equally often in a job). Writes made before it are seen after it.
    pub(crate) fn wait(&self) {
        let round = self.rounds.get() + 1;
        self.rounds.set(round);
        self.pair.arrived.fetch_add(1, Ordering::AcqRel);
        spin_until(|| {
            assert!(!self.pair.failed.load(Ordering::Acquire), "the other thread of a shared job panicked");
            self.pair.arrived.load(Ordering::Acquire) >= 2 * round
        });
    }
}

/// Spins until `ready`; after a while yields between tries, so that a waiter
/// whose partner lost its core gives the core back, and after longer (a helper
/// between jobs while its caller blocks, e.g. on a slow reader of a streamed
/// answer) sleeps between tries, so that it stops taking a core at all.
fn spin_until(mut ready: impl FnMut() -> bool) {
    const SPINS: u32 = 1 << 14;
    const YIELDS: u32 = 1 << 10;
    let mut tries = 0u32;
    while !ready() {
        tries = tries.saturating_add(1);
        if tries < SPINS {
            std::hint::spin_loop();
        } else if tries < SPINS + YIELDS {
            std::thread::yield_now();
        } else {
            std::thread::sleep(std::time::Duration::from_micros(50));
        }
    }
}

impl Pair {
    /// Runs `work` with a pair of this thread and a helper, which ends with it.
    pub(crate) fn with<R>(work: impl FnOnce(&Pair) -> R) -> R {
        let pair = Pair {
            posted: AtomicUsize::new(0),
            done: AtomicUsize::new(0),
            arrived: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
            failed: AtomicBool::new(false),
            job: Mutex::new(None),
        };
        /// Releases the helper however `work` ends, a panic included.
        struct Stop<'a>(&'a AtomicBool);
        impl Drop for Stop<'_> {
            fn drop(&mut self) {
                self.0.store(true, Ordering::Release);
            }
        }
        std::thread::scope(|scope| {
            scope.spawn(|| pair.serve());
            let _stop = Stop(&pair.stop);
            work(&pair)
        })
    }

    /// Runs `job` on both threads, this one as side 0, and returns when both are
    /// done. A panic on either side is raised here once both have stopped.
    pub(crate) fn both(&self, job: &(dyn Fn(&Meet) + Sync)) {
        assert!(!self.failed.load(Ordering::Acquire), "a pair whose job panicked is not used again");
        // The helper is idle (it answered the last job), so no one reads these now.
        self.arrived.store(0, Ordering::Relaxed);
        // SAFETY: only the lifetime is erased; this function does not return
        // before the helper has answered for this job, so `job` outlives its use.
        let erased = unsafe {
            std::mem::transmute::<*const (dyn Fn(&Meet) + Sync + '_), *const (dyn Fn(&Meet) + Sync + 'static)>(job)
        };
        *self.job.lock().unwrap_or_else(|e| e.into_inner()) = Some(JobRef(erased));
        let number = self.posted.fetch_add(1, Ordering::Release) + 1;
        let mine = catch_unwind(AssertUnwindSafe(|| job(&Meet { pair: self, side: 0, rounds: Cell::new(0) })));
        if mine.is_err() {
            self.failed.store(true, Ordering::Release);
        }
        // Whatever happened here, the helper may still be reading what `job` borrows.
        spin_until(|| self.done.load(Ordering::Acquire) == number);
        if let Err(panic) = mine {
            resume_unwind(panic);
        }
        assert!(!self.failed.load(Ordering::Acquire), "the helper thread of a shared job panicked");
    }

    /// The helper's loop: each posted job as side 1, until `stop`.
    fn serve(&self) {
        let mut seen = 0;
        loop {
            spin_until(|| self.stop.load(Ordering::Acquire) || self.posted.load(Ordering::Acquire) != seen);
            let posted = self.posted.load(Ordering::Acquire);
            if posted == seen {
                return;
            }
            seen = posted;
            let job = self.job.lock().unwrap_or_else(|e| e.into_inner()).take().expect("a posted job");
            // SAFETY: `both` keeps the job alive until `done` says this thread is through.
            let job = unsafe { &*job.0 };
            if catch_unwind(AssertUnwindSafe(|| job(&Meet { pair: self, side: 1, rounds: Cell::new(0) }))).is_err() {
                self.failed.store(true, Ordering::Release);
            }
            self.done.store(seen, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pair_meets_in_lock_step() {
        // Each round, each side writes its half, meets, then reads the other's:
        // without the meetings the reads would see stale halves.
        let halves = [AtomicUsize::new(0), AtomicUsize::new(0)];
        let seen = [AtomicUsize::new(0), AtomicUsize::new(0)];
        Pair::with(|pair| {
            for job in 0..50 {
                pair.both(&|meet: &Meet| {
                    let me = meet.side();
                    for round in 1..=20 {
                        let value = job * 100 + round;
                        halves[me].store(value, Ordering::Relaxed);
                        meet.wait();
                        assert_eq!(
                            halves[1 - me].load(Ordering::Relaxed),
                            value,
                            "side {me}, job {job}, round {round}"
                        );
                        meet.wait();
                    }
                    seen[me].fetch_add(1, Ordering::Relaxed);
                });
            }
        });
        assert_eq!(seen.map(|s| s.load(Ordering::Relaxed)), [50, 50], "both sides ran every job");
    }

    #[test]
    fn a_panic_on_either_side_reaches_the_caller_instead_of_hanging() {
        for failing in [0, 1] {
            let caught = catch_unwind(|| {
                Pair::with(|pair| {
                    pair.both(&|meet: &Meet| {
                        meet.wait();
                        if meet.side() == failing {
                            panic!("side {failing} fails");
                        }
                        // The other side waits here for a partner that never comes.
                        meet.wait();
                    })
                })
            });
            assert!(caught.is_err(), "side {failing}'s panic is raised");
        }
    }

    #[test]
    fn parts_come_back_in_order_on_any_number_of_threads() {
        for threads in [0, 1, 2, 3, 7, 20] {
            for len in [0, 1, 5, 12] {
                let mut items: Vec<usize> = (0..len).collect();
                let parts = in_parts(&mut items, threads, |part| part.to_vec());
                assert!(parts.len() <= threads.max(1), "{threads} threads, {len} items: {parts:?}");
                assert_eq!(parts.concat(), (0..len).collect::<Vec<_>>(), "{threads} threads, {len} items");
            }
        }
    }
}
