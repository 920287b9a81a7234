//! A bounded pool of worker threads: the daemon's thread count does not grow with the number of
//! servers or of open files, because every kind of background work (listings of one directory
//! across servers, probes of down servers, read-ahead of open files) runs on one of these.
//!
//! Owns: its threads and a FIFO of jobs. Threads start on demand (a job is queued and no thread
//! is idle) and end after [`IDLE_EXIT`] without work, so an idle daemon holds few threads.
//!
//! Invariants:
//! - at most `max` threads of a pool exist at once; queued jobs wait for one;
//! - a job that panics ends only itself: the thread count stays right and the pool goes on;
//! - [`Workers::map`] also works on the caller's thread, so it makes progress even when every
//!   worker is busy (a full pool only costs parallelism, never a deadlock);
//! - dropping the pool lets its threads end once their current job is done.

use std::collections::VecDeque;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// A worker without a job for this long ends: long enough to carry a `find` from one directory
/// to the next without restarting threads, short enough that a quiet mount holds few threads.
pub const IDLE_EXIT: Duration = Duration::from_secs(10);

type Job = Box<dyn FnOnce() + Send>;

struct State {
    queue: VecDeque<Job>,
    threads: usize,
    idle: usize,
    closed: bool,
}

struct Inner {
    name: &'static str,
    max: usize,
    st: Mutex<State>,
    cv: Condvar,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.st.lock().unwrap_or_else(|p| p.into_inner())
    }
}

pub struct Workers {
    inner: Arc<Inner>,
}

impl Workers {
    /// A pool of at most `max` (at least 1) threads named `name`.
    pub fn new(name: &'static str, max: usize) -> Self {
        Workers {
            inner: Arc::new(Inner {
                name,
                max: max.max(1),
                st: Mutex::new(State {
                    queue: VecDeque::new(),
                    threads: 0,
                    idle: 0,
                    closed: false,
                }),
                cv: Condvar::new(),
            }),
        }
    }

    pub fn max(&self) -> usize {
        self.inner.max
    }

    /// Threads alive right now (at most `max`).
    pub fn threads(&self) -> usize {
        self.inner.lock().threads
    }

    /// Queue a job; it runs on a worker as soon as one is free.
    pub fn spawn(&self, job: impl FnOnce() + Send + 'static) {
        let mut st = self.inner.lock();
        st.queue.push_back(Box::new(job));
        if st.idle >= st.queue.len() || st.threads >= self.inner.max {
            drop(st);
            self.inner.cv.notify_one();
            return;
        }
        st.threads += 1;
        drop(st);
        let inner = Arc::clone(&self.inner);
        let started = std::thread::Builder::new()
            .name(self.inner.name.into())
            .spawn(move || run(&inner));
        if let Err(e) = started {
            // The job stays queued for the threads that exist (if none, the next spawn retries).
            log::warn!("cannot start a {} thread: {e}", self.inner.name);
            self.inner.lock().threads -= 1;
        }
    }

    /// `f` on every item, in parallel on this pool and the calling thread; results in item
    /// order (`None` where `f` panicked).
    pub fn map<T, R, F>(&self, items: Vec<T>, f: F) -> Vec<Option<R>>
    where
        T: Send + 'static,
        R: Send + 'static,
        F: Fn(T) -> R + Send + Sync + 'static,
    {
        let n = items.len();
        let batch = Arc::new(Batch {
            f,
            st: Mutex::new(BatchState {
                todo: items.into_iter().enumerate().collect(),
                results: (0..n).map(|_| None).collect(),
                done: 0,
            }),
            cv: Condvar::new(),
        });
        for _ in 0..n.saturating_sub(1).min(self.inner.max) {
            let b = Arc::clone(&batch);
            self.spawn(move || b.work());
        }
        batch.work();
        let mut st = batch.lock();
        // Bounded by the items still running on workers, each bounded by its own timeouts.
        while st.done < n {
            st = batch.cv.wait(st).unwrap_or_else(|p| p.into_inner());
        }
        std::mem::take(&mut st.results)
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.inner.lock().closed = true;
        self.inner.cv.notify_all();
    }
}

fn run(inner: &Inner) {
    let mut st = inner.lock();
    loop {
        if let Some(job) = st.queue.pop_front() {
            drop(st);
            if catch_unwind(AssertUnwindSafe(job)).is_err() {
                log::error!("a {} job panicked", inner.name);
            }
            st = inner.lock();
            continue;
        }
        if st.closed {
            break;
        }
        st.idle += 1;
        let (next, timeout) = inner
            .cv
            .wait_timeout(st, IDLE_EXIT)
            .unwrap_or_else(|p| p.into_inner());
        st = next;
        st.idle -= 1;
        if timeout.timed_out() && st.queue.is_empty() {
            break;
        }
    }
    st.threads -= 1;
}

struct BatchState<T, R> {
    todo: VecDeque<(usize, T)>,
    results: Vec<Option<R>>,
    done: usize,
}

struct Batch<T, R, F> {
    f: F,
    st: Mutex<BatchState<T, R>>,
    cv: Condvar,
}

impl<T, R, F: Fn(T) -> R> Batch<T, R, F> {
    fn lock(&self) -> MutexGuard<'_, BatchState<T, R>> {
        self.st.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Take items until none are left (bounded by the item count).
    fn work(&self) {
        loop {
            let Some((i, item)) = self.lock().todo.pop_front() else {
                return;
            };
            let r = catch_unwind(AssertUnwindSafe(|| (self.f)(item))).ok();
            let mut st = self.lock();
            if let Some(slot) = st.results.get_mut(i) {
                *slot = r;
            }
            st.done += 1;
            drop(st);
            self.cv.notify_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Instant;

    /// Records how many jobs run at once.
    #[derive(Default)]
    struct Gauge {
        now: AtomicUsize,
        peak: AtomicUsize,
    }

    impl Gauge {
        fn run(&self, d: Duration) {
            let n = self.now.fetch_add(1, Ordering::SeqCst) + 1;
            self.peak.fetch_max(n, Ordering::SeqCst);
            std::thread::sleep(d);
            self.now.fetch_sub(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn spawn_never_exceeds_max_threads_and_runs_every_job() {
        let pool = Workers::new("test-pool", 3);
        let gauge = Arc::new(Gauge::default());
        let done = Arc::new(AtomicUsize::new(0));
        for _ in 0..40 {
            let (g, d) = (Arc::clone(&gauge), Arc::clone(&done));
            pool.spawn(move || {
                g.run(Duration::from_millis(5));
                d.fetch_add(1, Ordering::SeqCst);
            });
            assert!(pool.threads() <= 3);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while done.load(Ordering::SeqCst) < 40 && Instant::now() < deadline {
            assert!(pool.threads() <= 3);
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(done.load(Ordering::SeqCst), 40);
        assert!(gauge.peak.load(Ordering::SeqCst) <= 3);
    }

    #[test]
    fn map_keeps_order_bounds_parallelism_and_survives_panics() {
        let pool = Workers::new("test-map", 4);
        let gauge = Arc::new(Gauge::default());
        let g = Arc::clone(&gauge);
        let out = pool.map((0..50).collect(), move |i: usize| {
            g.run(Duration::from_millis(2));
            if i == 7 {
                panic!("job 7 fails");
            }
            i * 2
        });
        assert_eq!(out.len(), 50);
        assert_eq!(out[7], None);
        assert_eq!(out[8], Some(16));
        assert_eq!(out[49], Some(98));
        // Four workers and the caller.
        assert!(gauge.peak.load(Ordering::SeqCst) <= 5);
        assert!(pool.threads() <= 4);
    }

    #[test]
    fn map_progresses_when_every_worker_is_busy() {
        let pool = Arc::new(Workers::new("test-busy", 1));
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        // Occupy the only worker until the map below has finished.
        pool.spawn(move || {
            let _ = rx.recv_timeout(Duration::from_secs(30));
        });
        let out = pool.map(vec![1, 2, 3], |i: i32| i + 1);
        assert_eq!(out, [Some(2), Some(3), Some(4)]);
        drop(tx);
    }
}
