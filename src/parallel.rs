//! Independent work shared out between threads, for the model runs whose parts
//! do not depend on each other (gradients of different positions, cell rankings
//! of different layer × kind matrices).

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

#[cfg(test)]
mod tests {
    use super::*;

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
