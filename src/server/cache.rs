//! Recent traces, so the same text is not traced twice: switching layer or kind
//! on the page, ranking cells, the clamp panel's statistics and an intervention's
//! unclamped run all reuse the trace of the text that was just run.
//!
//! Keyed by the SHA-256 of the model's id and the text; bounded by bytes
//! (`--trace-cache-mb`), least recently used out first. A trace larger than the
//! whole budget is not kept. Entries are `Arc`s: an evicted trace lives on until
//! the requests using it finish.
//!
//! A trace being computed is known too ([`TraceCache::get_or_compute`]): a second
//! request for the same text waits for it instead of tracing the text again (a
//! click on a character asks for `/api/explain` and `/api/saliency` at once, and
//! both need the exact trace).

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex};

use crate::model::Trace;

type Key = [u8; 32];

/// A bounded LRU cache of traces.
#[derive(Debug)]
pub struct TraceCache {
    budget: usize,
    inner: Mutex<Inner>,
    /// Traces being computed now, by key.
    flights: Mutex<HashMap<Key, Arc<Flight>>>,
}

/// One trace being computed, which other requests for it wait on.
#[derive(Debug, Default)]
struct Flight {
    state: Mutex<FlightState>,
    ready: Condvar,
}

#[derive(Debug, Default)]
enum FlightState {
    #[default]
    Running,
    Done(Arc<Trace>),
    /// The computation panicked: a waiter computes the trace itself.
    Abandoned,
}

/// Ends a flight however its computation ends: with the trace, or abandoned if
/// the computation unwinds, so that no waiter waits forever.
struct Landing<'a> {
    cache: &'a TraceCache,
    key: Key,
    flight: Arc<Flight>,
    trace: Option<Arc<Trace>>,
}

impl Drop for Landing<'_> {
    fn drop(&mut self) {
        self.cache.flights.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.key);
        let mut state = self.flight.state.lock().unwrap_or_else(|p| p.into_inner());
        *state = match self.trace.take() {
            Some(t) => FlightState::Done(t),
            None => FlightState::Abandoned,
        };
        self.flight.ready.notify_all();
    }
}

#[derive(Debug, Default)]
struct Inner {
    used: usize,
    clock: u64,
    entries: HashMap<Key, Entry>,
}

#[derive(Debug)]
struct Entry {
    trace: Arc<Trace>,
    bytes: usize,
    last_use: u64,
}

/// The cache key of a text traced exactly by the model `model_id`.
pub fn key(model_id: &str, text: &str) -> Key {
    key_at(model_id, text, crate::model::Precision::Exact)
}

/// The cache key of a text traced by the model `model_id` at `precision`. The
/// id's length goes first, so no (id, text) pair collides with another; the
/// int8 trace (the page view's) hashes one more byte, 0xFF, which no UTF-8 text
/// contains, so it never answers for an exact trace.
pub fn key_at(model_id: &str, text: &str, precision: crate::model::Precision) -> Key {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update((model_id.len() as u64).to_le_bytes());
    h.update(model_id.as_bytes());
    h.update(text.as_bytes());
    if precision == crate::model::Precision::Int8 {
        h.update([0xFF]);
    }
    h.finalize().into()
}

/// Bytes a trace holds (its matrices, probabilities and characters).
pub fn trace_bytes(t: &Trace) -> usize {
    let f = std::mem::size_of::<f32>();
    let layers: usize = t.layers.iter().flat_map(|l| l.iter()).map(|(_, m)| m.len() * f).sum();
    layers + t.probs.len() * f + t.chars.len() * (std::mem::size_of::<char>() + std::mem::size_of::<Option<u32>>())
}

impl TraceCache {
    pub fn new(budget_bytes: usize) -> Self {
        Self { budget: budget_bytes, inner: Mutex::new(Inner::default()), flights: Mutex::new(HashMap::new()) }
    }

    /// The trace under `key`: from the cache; else, if another request is
    /// computing it, that one's once it is done; else `compute`'s, kept. Blocks
    /// while waiting: call it inside a model slot, as `compute` runs there too.
    pub fn get_or_compute(&self, key: Key, compute: impl FnOnce() -> Trace) -> Arc<Trace> {
        if let Some(t) = self.get(&key) {
            return t;
        }
        let (flight, mine) = {
            let mut flights = self.flights.lock().unwrap_or_else(|p| p.into_inner());
            match flights.get(&key) {
                Some(f) => (f.clone(), false),
                None => {
                    let f = Arc::new(Flight::default());
                    flights.insert(key, f.clone());
                    (f, true)
                }
            }
        };
        if !mine {
            let mut state = flight.state.lock().unwrap_or_else(|p| p.into_inner());
            loop {
                match &*state {
                    FlightState::Running => state = flight.ready.wait(state).unwrap_or_else(|p| p.into_inner()),
                    FlightState::Done(t) => return t.clone(),
                    FlightState::Abandoned => break,
                }
            }
            drop(state);
            return self.get_or_keep(key, compute);
        }
        let mut landing = Landing { cache: self, key, flight, trace: None };
        // It may have landed between the first look and taking the flight.
        let t = self.get_or_keep(key, compute);
        landing.trace = Some(t.clone());
        t
    }

    /// The cached trace, or `compute`'s, kept.
    fn get_or_keep(&self, key: Key, compute: impl FnOnce() -> Trace) -> Arc<Trace> {
        self.get(&key).unwrap_or_else(|| {
            let t = Arc::new(compute());
            self.insert(key, t.clone());
            t
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves a consistent map (every update is
        // a single insert or remove), so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn get(&self, key: &Key) -> Option<Arc<Trace>> {
        let mut inner = self.lock();
        inner.clock += 1;
        let now = inner.clock;
        let e = inner.entries.get_mut(key)?;
        e.last_use = now;
        Some(e.trace.clone())
    }

    /// Keeps `trace` unless it is larger than the whole budget, evicting the least
    /// recently used entries until it fits.
    pub fn insert(&self, key: Key, trace: Arc<Trace>) {
        let bytes = trace_bytes(&trace);
        if bytes > self.budget {
            return;
        }
        let mut inner = self.lock();
        if let Some(old) = inner.entries.remove(&key) {
            inner.used -= old.bytes;
        }
        while inner.used + bytes > self.budget {
            let Some((&oldest, _)) = inner.entries.iter().min_by_key(|(_, e)| e.last_use) else { break };
            let e = inner.entries.remove(&oldest).expect("listed");
            inner.used -= e.bytes;
        }
        inner.clock += 1;
        let last_use = inner.clock;
        inner.used += bytes;
        inner.entries.insert(key, Entry { trace, bytes, last_use });
    }

    /// Bytes held now.
    pub fn used(&self) -> usize {
        self.lock().used
    }

    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Model, Vocab, Weights};

    #[test]
    fn a_trace_in_flight_is_waited_for_not_computed_twice() {
        let vocab = Vocab::from_text("ab").unwrap();
        let model = Model::new("t".into(), vocab, Weights::random(2, None, 4, 1, 1), Default::default()).unwrap();
        for budget in [1 << 20, 0] {
            // Budget 0: nothing is kept, yet the waiter still gets the flight's trace.
            let cache = TraceCache::new(budget);
            let computed = std::sync::atomic::AtomicUsize::new(0);
            let compute = || {
                computed.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                std::thread::sleep(std::time::Duration::from_millis(150));
                model.trace("abba")
            };
            let k = key("t", "abba");
            let (a, b) = std::thread::scope(|s| {
                let first = s.spawn(|| cache.get_or_compute(k, compute));
                std::thread::sleep(std::time::Duration::from_millis(30));
                let second = s.spawn(|| cache.get_or_compute(k, compute));
                (first.join().unwrap(), second.join().unwrap())
            });
            assert_eq!(computed.load(std::sync::atomic::Ordering::SeqCst), 1, "budget {budget}: traced once");
            assert!(Arc::ptr_eq(&a, &b), "budget {budget}: both get the one trace");
            assert!(cache.flights.lock().unwrap().is_empty(), "the flight has landed");
        }
        // A computation that panics leaves no one waiting: the waiter computes it.
        let cache = TraceCache::new(1 << 20);
        let k = key("t", "ab");
        let got = std::thread::scope(|s| {
            let failing = s.spawn(|| {
                cache.get_or_compute(k, || {
                    std::thread::sleep(std::time::Duration::from_millis(150));
                    panic!("the trace fails")
                })
            });
            std::thread::sleep(std::time::Duration::from_millis(30));
            let waiter = s.spawn(|| cache.get_or_compute(k, || model.trace("ab")));
            assert!(failing.join().is_err());
            waiter.join().unwrap()
        });
        assert_eq!(got.len(), 2);
    }

    fn model() -> Model {
        let vocab = Vocab::from_text("abc ").unwrap();
        Model::new("t".into(), vocab.clone(), Weights::random(vocab.len(), None, 8, 1, 1), Default::default()).unwrap()
    }

    #[test]
    fn keeps_recent_traces_within_the_budget() {
        let m = model();
        let one = trace_bytes(&m.trace("abcabcabca"));
        let cache = TraceCache::new(2 * one + one / 2);
        for text in ["abcabcabca", "bcabcabcab", "cabcabcabc"] {
            cache.insert(key("t", text), Arc::new(m.trace(text)));
        }
        assert_eq!(cache.len(), 2, "the budget holds two traces");
        assert!(cache.get(&key("t", "abcabcabca")).is_none(), "the oldest went first");
        // Using an entry makes it recent: the other one goes next.
        assert!(cache.get(&key("t", "bcabcabcab")).is_some());
        cache.insert(key("t", "aaaaaaaaaa"), Arc::new(m.trace("aaaaaaaaaa")));
        assert!(cache.get(&key("t", "bcabcabcab")).is_some());
        assert!(cache.get(&key("t", "cabcabcabc")).is_none());
        assert!(cache.used() <= 2 * one + one / 2);
        // Larger than the whole budget: not kept.
        let long: String = "abc ".repeat(50);
        cache.insert(key("t", &long), Arc::new(m.trace(&long)));
        assert!(cache.get(&key("t", &long)).is_none());
    }

    #[test]
    fn the_same_text_by_two_models_has_two_keys() {
        assert_ne!(key("lstm", "abc"), key("gru", "abc"));
        assert_ne!(key("ab", "c"), key("a", "bc"));
        assert_eq!(key("lstm", "abc"), key("lstm", "abc"));
    }
}
