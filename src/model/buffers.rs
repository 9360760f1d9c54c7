//! The big T × H buffers a trace records into, recycled.
//!
//! A 2 × 512 trace records 16 matrices of T × 512 floats (h, c, the four gates and
//! the two memory terms of each layer): 64 MB for 2,000 characters. Memory fresh
//! from the OS is zeroed by the kernel on first touch, and that zeroing took 5–12%
//! of a trace's time (`clear_page_erms` in `perf`). So a dropped trace hands its
//! buffers back here ([`give`], from `LayerTrace`'s `Drop`) and the next trace of
//! a similar length writes into them ([`take`]): the pages are already mapped,
//! nothing is zeroed.
//!
//! The pool holds at most [`DEFAULT_POOL_BYTES`] (256 MiB; [`set_pool_limit`]
//! changes it); buffers under [`MIN_POOLED_BYTES`] are cheap to get fresh and are
//! not kept. A buffer is reused only for a length between 4/5 of its capacity and
//! its capacity, so a kept trace (the server's cache) never holds much more memory
//! than it counts. What the pool holds stays
//! resident: after a burst of work a server holds its baseline, its trace cache and
//! at most the pool's limit.

use std::sync::Mutex;

/// Most bytes the pool keeps unless [`set_pool_limit`] says otherwise: as much as
/// the server's trace cache by default, four 2,000-character views at 2 × 512.
pub const DEFAULT_POOL_BYTES: usize = 256 << 20;

/// Buffers smaller than this are neither kept nor looked for.
const MIN_POOLED_BYTES: usize = 1 << 20;

/// Free buffers, at most `limit` bytes of them.
struct Pool {
    limit: usize,
    bytes: usize,
    /// Oldest given first.
    free: Vec<Vec<f32>>,
}

impl Pool {
    const fn new(limit: usize) -> Self {
        Self { limit, bytes: 0, free: Vec::new() }
    }

    /// The smallest free buffer with room for `len` floats, if one has no more
    /// than 5/4 of that room.
    fn take(&mut self, len: usize) -> Option<Vec<f32>> {
        let fits = |v: &Vec<f32>| v.capacity() >= len && v.capacity() / 5 * 4 <= len;
        let (at, _) = self.free.iter().enumerate().filter(|(_, v)| fits(v)).min_by_key(|(_, v)| v.capacity())?;
        // `remove`, not `swap_remove`: `free` stays oldest first.
        let v = self.free.remove(at);
        self.bytes -= bytes_of(v.capacity());
        Some(v)
    }

    /// A new limit; the buffers beyond it are freed.
    fn set_limit(&mut self, bytes: usize) {
        self.limit = bytes;
        while self.bytes > bytes {
            let v = self.free.remove(0);
            self.bytes -= bytes_of(v.capacity());
        }
    }

    /// Keeps `v`, emptied, unless it is small or larger than the whole limit. A
    /// full pool makes room by freeing its oldest buffers: the lengths traced
    /// last are the likeliest next, and a pool filled once by one long trace
    /// (the server's reference trace at start) must not turn every later,
    /// shorter trace away to fresh memory.
    fn give(&mut self, mut v: Vec<f32>) {
        let bytes = bytes_of(v.capacity());
        if bytes < MIN_POOLED_BYTES || bytes > self.limit {
            return;
        }
        while self.bytes + bytes > self.limit {
            let oldest = self.free.remove(0);
            self.bytes -= bytes_of(oldest.capacity());
        }
        v.clear();
        self.bytes += bytes;
        self.free.push(v);
    }
}

static POOL: Mutex<Pool> = Mutex::new(Pool::new(DEFAULT_POOL_BYTES));

fn bytes_of(capacity: usize) -> usize {
    capacity * std::mem::size_of::<f32>()
}

fn pool() -> std::sync::MutexGuard<'static, Pool> {
    // The pool is consistent between any two statements: a panic elsewhere leaves it usable.
    POOL.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// An empty vector with room for `len` floats: a recycled one when the pool holds
/// one that fits, else fresh memory (see [`fresh`]).
pub(crate) fn take(len: usize) -> Vec<f32> {
    let recycled = if bytes_of(len) >= MIN_POOLED_BYTES { pool().take(len) } else { None };
    recycled.unwrap_or_else(|| fresh(len))
}

/// Hands `v` back for a later [`take`]; small buffers, and those that would take
/// the pool past its limit, are freed.
pub(crate) fn give(v: Vec<f32>) {
    if bytes_of(v.capacity()) >= MIN_POOLED_BYTES {
        pool().give(v);
    }
}

/// Keeps at most `bytes` of free trace buffers from now on (0: none, every trace
/// writes into fresh memory), freeing what the pool holds beyond that. What the
/// pool holds stays resident, so a server's memory after a burst is its baseline,
/// its trace cache and at most this (`serve --buffer-pool-mb`).
pub fn set_pool_limit(bytes: usize) {
    pool().set_limit(bytes);
}

/// An empty vector with room for `len` floats, fresh from the allocator.
///
/// With 4 KiB pages, faulting a trace's buffers in took a fifth of its time; so
/// on Linux, buffers of 4 MiB or more are advised to use transparent huge pages,
/// one fault per 2 MiB (what remains is the OS zeroing them, which [`take`]
/// avoids). Where THP is off, the advice is ignored.
fn fresh(len: usize) -> Vec<f32> {
    let v = Vec::with_capacity(len);
    #[cfg(target_os = "linux")]
    advise_huge_pages(v.as_ptr() as usize, bytes_of(len));
    v
}

#[cfg(target_os = "linux")]
fn advise_huge_pages(start: usize, bytes: usize) {
    const HUGE: usize = 2 << 20;
    const MADV_HUGEPAGE: i32 = 14;
    extern "C" {
        // From the C library std already links; declared here rather than adding
        // the `libc` crate for one call.
        fn madvise(addr: *mut std::ffi::c_void, len: usize, advice: i32) -> i32;
    }
    if bytes < 2 * HUGE {
        return;
    }
    // Only whole huge pages inside the buffer: the advice applies to the pages it
    // covers, and the rest of the allocation may share pages with other data.
    let first = start.next_multiple_of(HUGE);
    let end = (start + bytes) / HUGE * HUGE;
    if end > first {
        // SAFETY: the range lies inside an allocation we own; MADV_HUGEPAGE changes
        // how future faults are served, never the contents. Failure is harmless.
        unsafe {
            madvise(first as *mut std::ffi::c_void, end - first, MADV_HUGEPAGE);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_given_buffer_comes_back_for_a_length_that_fits_and_only_then() {
        let mut pool = Pool::new(8 * MIN_POOLED_BYTES);
        let len = MIN_POOLED_BYTES / 4 * 3;
        let mut v = fresh(len);
        v.extend(std::iter::repeat_n(1.5f32, len));
        let (ptr, cap) = (v.as_ptr(), v.capacity());
        pool.give(v);
        assert_eq!(pool.bytes, bytes_of(cap), "the pool holds the buffer it was given");
        assert!(pool.take(len / 2).is_none(), "a buffer is not reused for a much shorter length");
        assert!(pool.take(len + 1).is_none(), "nor for a longer one");
        let again = pool.take(len - 5).expect("a length the buffer fits");
        assert_eq!(again.as_ptr(), ptr, "the given buffer is reused");
        assert!(again.is_empty() && again.capacity() == cap, "empty, with its room");
        assert_eq!(pool.bytes, 0);

        pool.give(Vec::with_capacity(16));
        assert!(pool.free.is_empty(), "small buffers are freed, not pooled");
        let given: Vec<*const f32> = (0..3)
            .map(|_| {
                let v = fresh(MIN_POOLED_BYTES);
                let p = v.as_ptr();
                pool.give(v);
                p
            })
            .collect();
        assert_eq!(pool.free.len(), 2, "the pool stops at its limit");
        assert!(pool.bytes <= pool.limit);
        let kept: Vec<*const f32> = pool.free.iter().map(|v| v.as_ptr()).collect();
        assert_eq!(kept, given[1..], "a full pool frees its oldest buffer for the newest");
        pool.set_limit(4 * MIN_POOLED_BYTES + 1);
        assert_eq!((pool.free.len(), pool.bytes), (1, MIN_POOLED_BYTES * 4), "a lower limit frees what is over it");
        pool.set_limit(0);
        assert!(pool.free.is_empty() && pool.bytes == 0, "0 keeps nothing");
        pool.give(fresh(MIN_POOLED_BYTES));
        assert!(pool.free.is_empty(), "nor takes anything");
    }

    #[test]
    fn one_long_trace_does_not_keep_shorter_ones_out_of_a_full_pool() {
        // The server's start: a long reference trace fills the pool with buffers
        // no 2,000-character view can use; the views' own buffers must still be
        // kept, so that the next view reuses them.
        let mut pool = Pool::new(6 * MIN_POOLED_BYTES);
        let (long, short) = (MIN_POOLED_BYTES / 4 * 3, MIN_POOLED_BYTES / 4);
        for _ in 0..2 {
            pool.give(fresh(long));
        }
        assert!(pool.take(short).is_none(), "the long buffers do not fit a short trace");
        let v = fresh(short);
        let p = v.as_ptr();
        pool.give(v);
        assert_eq!(pool.take(short).map(|v| v.as_ptr()), Some(p), "the short trace's buffer is kept and reused");
        assert!(pool.bytes <= pool.limit);
    }
}
