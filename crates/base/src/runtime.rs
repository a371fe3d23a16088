//! Which threads are async workers: blocking work (SQLite, files) must never run there.
//!
//! The daemon's runtime marks its worker threads; the store asserts, in debug builds, that
//! it is never entered from one. Every test run on a debug build then checks the rule.

use std::cell::Cell;

thread_local! {
    static ASYNC_WORKER: Cell<bool> = const { Cell::new(false) };
}

/// Marks the current thread as an async worker (tokio's `on_thread_unpark`, which only
/// worker threads call; blocking-pool threads never do).
pub fn mark_async_worker() {
    ASYNC_WORKER.with(|w| w.set(true));
}

/// Whether the current thread is a marked async worker.
pub fn on_async_worker() -> bool {
    ASYNC_WORKER.with(|w| w.get())
}

#[cfg(test)]
mod tests {
    #[test]
    fn workers_are_marked_and_blocking_threads_are_not() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .on_thread_unpark(super::mark_async_worker)
            .enable_time()
            .build()
            .unwrap();
        let (worker, blocking) = rt.block_on(async {
            // Yield until the worker has parked and unparked at least once.
            let w = tokio::spawn(async {
                for _ in 0..100 {
                    tokio::task::yield_now().await;
                    tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                    if super::on_async_worker() {
                        break;
                    }
                }
                super::on_async_worker()
            })
            .await
            .unwrap();
            let b = tokio::task::spawn_blocking(super::on_async_worker)
                .await
                .unwrap();
            (w, b)
        });
        assert!(worker, "a worker thread was not marked");
        assert!(!blocking, "a blocking-pool thread was marked");
    }
}
