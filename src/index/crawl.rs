//! `ftpcircle-fs index`: crawl every server fully into the listing index, without mounting.
//!
//! Owns: the crawl (every directory of every server, all servers at once on one bounded pool,
//! each server within its own connection cap), resuming an interrupted crawl, and its progress
//! display (a live display on a terminal, plain log lines otherwise).
//!
//! Resuming: the crawl's start time is kept in the index (`meta.crawl_started`) until the
//! crawl completes; a directory whose stored listing is newer than that (or younger than the
//! TTL) is taken from the index instead of being fetched again, and its subdirectories are
//! walked from there. So a crawl stopped anywhere (Ctrl-C, kill -9, `--max-listings`) goes
//! on where it stopped.
//!
//! Invariant: at most [`CRAWL_WORKERS`] threads whatever the number of servers; the pool's
//! per-server and global connection caps bound what each server sees.

use std::collections::VecDeque;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::{Index, now_secs};
use crate::backend::{Backend, EntryKind, Priority};
use crate::circle::cache::{ListingCache, Origin};
use crate::error::Kind;
use crate::workers::Workers;

/// Threads crawling at once over all servers: enough to keep 16 servers' 4 connections busy;
/// more servers share them (each listing takes one round trip or a few, so a thread is soon
/// free again).
pub const CRAWL_WORKERS: usize = 64;
/// How often plain progress lines are written when stderr is not a terminal.
const LOG_EVERY: Duration = Duration::from_secs(5);
/// The `meta` key holding the start of an unfinished crawl.
const STARTED: &str = "crawl_started";

#[derive(Default)]
pub struct ServerCount {
    pub dirs: AtomicU64,
    pub entries: AtomicU64,
    pub errors: AtomicU64,
    /// Directories taken from the index (done by the interrupted crawl, or fresh).
    pub reused: AtomicU64,
}

pub struct Summary {
    pub per_server: Vec<Arc<ServerCount>>,
    /// Stopped by `--max-listings` before the end.
    pub stopped: bool,
    pub fetched: u64,
}

struct State {
    queue: VecDeque<(usize, Vec<u8>)>,
    running: usize,
}

struct Crawl {
    backend: Arc<dyn Backend>,
    cache: ListingCache,
    index: Arc<Index>,
    since: i64,
    ttl: Duration,
    budget: Option<u64>,
    fetched: AtomicU64,
    stopped: AtomicBool,
    counts: Vec<Arc<ServerCount>>,
    st: Mutex<State>,
    cv: Condvar,
}

impl Crawl {
    /// One directory: from the index when this crawl (or a recent listing) already has it,
    /// else from the server (recorded in the index by the cache). Returns its subdirectories.
    fn one(&self, server: usize, path: &[u8]) -> Vec<Vec<u8>> {
        let count = &self.counts[server];
        let reusable = self
            .index
            .fetched_at(server, path)
            .is_some_and(|at| at >= self.since || now_secs() - at < self.ttl.as_secs() as i64);
        let fetched = if reusable {
            self.cache
                .get(self.backend.as_ref(), server, path, Priority::Foreground)
        } else {
            if let Some(b) = self.budget
                && self.fetched.fetch_add(1, Ordering::Relaxed) >= b
            {
                self.stopped.store(true, Ordering::Relaxed);
                return Vec::new();
            }
            self.cache.get_with(
                self.backend.as_ref(),
                server,
                path,
                Priority::Foreground,
                false,
            )
        };
        let entries = match (&fetched.result, &fetched.origin) {
            (Ok(e), Origin::Network) => e,
            (Ok(e), Origin::Index | Origin::Stale) => {
                count.reused.fetch_add(1, Ordering::Relaxed);
                e
            }
            (Err(e), _) => {
                if e.kind != Kind::NotFound {
                    count.errors.fetch_add(1, Ordering::Relaxed);
                    log::warn!("{e}");
                }
                return Vec::new();
            }
        };
        count.dirs.fetch_add(1, Ordering::Relaxed);
        count
            .entries
            .fetch_add(entries.len() as u64, Ordering::Relaxed);
        entries
            .iter()
            .filter(|e| e.kind == EntryKind::Dir)
            .map(|e| {
                let mut p = path.to_vec();
                if !p.is_empty() {
                    p.push(b'/');
                }
                p.extend_from_slice(&e.name);
                p
            })
            .collect()
    }

    /// Worker loop: take directories until none is queued and none is running.
    fn work(&self) {
        let mut st = self.st.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some((server, path)) = st.queue.pop_front() {
                st.running += 1;
                drop(st);
                let subdirs = self.one(server, &path);
                st = self.st.lock().unwrap_or_else(|p| p.into_inner());
                st.running -= 1;
                st.queue.extend(subdirs.into_iter().map(|p| (server, p)));
                self.cv.notify_all();
                continue;
            }
            if st.running == 0 {
                self.cv.notify_all();
                return;
            }
            // Woken when a directory adds work or the last one ends.
            st = self
                .cv
                .wait_timeout(st, Duration::from_millis(500))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}

/// Crawl every server of `backend` into `index`. `ttl`: listings younger than this are not
/// fetched again; `budget`: fetch at most this many listings in this run.
pub fn crawl(
    backend: Arc<dyn Backend>,
    index: Arc<Index>,
    ttl: Duration,
    budget: Option<u64>,
    max_wait: Duration,
) -> Result<Summary, String> {
    let since = match index.meta(STARTED) {
        Some(t) => {
            log::info!("resuming the crawl started at unix time {t}");
            t
        }
        None => {
            let t = now_secs();
            index.set_meta(STARTED, Some(t))?;
            t
        }
    };
    let n = backend.servers();
    // Every listing fetched must reach the file: a crawl waits for the writer.
    index.wait_when_full();
    let crawl = Arc::new(Crawl {
        cache: ListingCache::new(ttl, 1, max_wait, Some(Arc::clone(&index))),
        backend: Arc::clone(&backend),
        index: Arc::clone(&index),
        since,
        ttl,
        budget,
        fetched: AtomicU64::new(0),
        stopped: AtomicBool::new(false),
        counts: (0..n).map(|_| Arc::default()).collect(),
        st: Mutex::new(State {
            queue: (0..n).map(|s| (s, Vec::new())).collect(),
            running: 0,
        }),
        cv: Condvar::new(),
    });
    let threads = (n * 4).clamp(1, CRAWL_WORKERS);
    let pool = Workers::new("ftpc-crawl", threads);
    for _ in 0..threads {
        let c = Arc::clone(&crawl);
        pool.spawn(move || c.work());
    }
    let progress = Progress::new(&backend, &crawl.counts);
    let started = Instant::now();
    {
        let mut st = crawl.st.lock().unwrap_or_else(|p| p.into_inner());
        // Bounded by the servers' trees; every listing is bounded by the network timeouts.
        while !(st.queue.is_empty() && st.running == 0) {
            st = crawl
                .cv
                .wait_timeout(st, Duration::from_millis(200))
                .unwrap_or_else(|p| p.into_inner())
                .0;
            progress.tick(started);
        }
    }
    progress.finish(started);
    index.flush();
    let stopped = crawl.stopped.load(Ordering::Relaxed);
    let errors: u64 = crawl
        .counts
        .iter()
        .map(|c| c.errors.load(Ordering::Relaxed))
        .sum();
    if !stopped && errors == 0 {
        index.set_meta(STARTED, None)?;
    }
    Ok(Summary {
        per_server: crawl.counts.clone(),
        stopped,
        fetched: crawl.cache.fetches(),
    })
}

/// A live display per server on a terminal; plain lines every [`LOG_EVERY`] otherwise.
struct Progress {
    bars: Option<(indicatif::MultiProgress, Vec<indicatif::ProgressBar>)>,
    labels: Vec<String>,
    counts: Vec<Arc<ServerCount>>,
    last_line: Mutex<Instant>,
}

/// Servers shown one line each on a terminal; beyond, one line for all.
const MAX_BARS: usize = 20;

impl Progress {
    fn new(backend: &Arc<dyn Backend>, counts: &[Arc<ServerCount>]) -> Progress {
        let labels: Vec<String> = (0..backend.servers())
            .map(|s| backend.label(s).to_string())
            .collect();
        let bars = std::io::stderr().is_terminal().then(|| {
            let multi = indicatif::MultiProgress::new();
            let style = indicatif::ProgressStyle::with_template("{spinner} {prefix:.bold} {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner());
            let shown = if labels.len() <= MAX_BARS {
                labels.clone()
            } else {
                vec![format!("{} servers", labels.len())]
            };
            let bars = shown
                .into_iter()
                .map(|l| {
                    let b = multi.add(indicatif::ProgressBar::new_spinner());
                    b.set_style(style.clone());
                    b.set_prefix(l);
                    b
                })
                .collect();
            (multi, bars)
        });
        Progress {
            bars,
            labels,
            counts: counts.to_vec(),
            last_line: Mutex::new(Instant::now()),
        }
    }

    fn line(c: &[&Arc<ServerCount>], secs: f64) -> String {
        let sum = |f: fn(&ServerCount) -> &AtomicU64| -> u64 {
            c.iter().map(|c| f(c).load(Ordering::Relaxed)).sum()
        };
        let dirs = sum(|c| &c.dirs);
        format!(
            "{dirs} dirs, {} entries, {} errors, {:.0} dirs/s{}",
            sum(|c| &c.entries),
            sum(|c| &c.errors),
            dirs as f64 / secs.max(0.001),
            match sum(|c| &c.reused) {
                0 => String::new(),
                r => format!(" ({r} from the index)"),
            }
        )
    }

    fn tick(&self, started: Instant) {
        let secs = started.elapsed().as_secs_f64();
        match &self.bars {
            Some((_, bars)) if bars.len() == self.labels.len() => {
                for (b, c) in bars.iter().zip(&self.counts) {
                    b.set_message(Self::line(&[c], secs));
                    b.tick();
                }
            }
            Some((_, bars)) => {
                let all: Vec<&Arc<ServerCount>> = self.counts.iter().collect();
                if let Some(b) = bars.first() {
                    b.set_message(Self::line(&all, secs));
                    b.tick();
                }
            }
            None => {
                let mut last = self.last_line.lock().unwrap_or_else(|p| p.into_inner());
                if last.elapsed() >= LOG_EVERY {
                    *last = Instant::now();
                    let all: Vec<&Arc<ServerCount>> = self.counts.iter().collect();
                    eprintln!("ftpcircle-fs index: {}", Self::line(&all, secs));
                }
            }
        }
    }

    fn finish(&self, started: Instant) {
        let secs = started.elapsed().as_secs_f64();
        if let Some((_, bars)) = &self.bars {
            self.tick(started);
            for b in bars {
                b.finish();
            }
            // The display leaves the cursor on its last line.
            eprintln!();
            return;
        }
        for (l, c) in self.labels.iter().zip(&self.counts) {
            eprintln!("ftpcircle-fs index: {l}: {}", Self::line(&[c], secs));
        }
    }
}
