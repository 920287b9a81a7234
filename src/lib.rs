//! ftpcircle-fs: every FTP/FTPS server in serverlist.txt as one merged, read-only FUSE tree.
//!
//! Layers, from the wire up:
//! - [`serverlist`]: serverlist.txt into server specs (errors name file and line);
//! - [`ftp`]: one server: connections, TLS, pool, MLSD/LIST parsing, ranged RETR;
//! - [`backend`]: the trait the merged view needs from "the servers";
//! - [`circle`]: the merged view: inode table, listing cache, merge rules, reads;
//! - [`fuse`]: the thin fuser adapter;
//! - [`logging`]: the logger, which never lets a password through;
//! - [`mounts`]: this namespace's mount table (what is mounted where; is our mount still here);
//! - [`preflight`]: the checks before mounting, each failure saying what to do;
//! - [`check`]: `ftpcircle-fs check`, every server probed without mounting;
//! - [`cli`]: the command line, its mount(8)/fstab forms, man page and completions;
//! - [`workers`]: bounded thread pools for everything that runs in the background;
//! - [`index`]: the persistent listing index (instant start, offline servers, `locate`).

pub mod backend;
pub mod check;
pub mod circle;
pub mod cli;
pub mod error;
pub mod ftp;
pub mod fuse;
pub mod index;
pub mod logging;
pub mod mounts;
pub mod page_store;
pub mod preflight;
pub mod serverlist;
pub mod splice;
pub mod workers;

/// Threads the daemon runs at most, whatever the number of servers or open files: the main
/// thread, the signal waiter, the FUSE workers, the prefetch workers, the pool listing one
/// directory across servers, the read-ahead pool, the segmented-read pool, the probe scheduler and its pool, the idle
/// reaper, the kernel invalidator, the index writer, the revalidation pool, the index
/// preload and the page-cache store worker (every pool's threads end after a while without work).
/// Each term is a constant with its reason at its definition.
pub const MAX_THREADS: usize = 1
    + 1
    + 1
    + fuse::FUSE_THREADS
    + circle::prefetch::MAX_WORKERS
    + circle::refresh::LIST_WORKERS
    + circle::handles::READAHEAD_WORKERS
    + circle::segments::SEGMENT_WORKERS
    + 1
    + ftp::pool::PROBE_WORKERS
    + 1
    // the index writer, the revalidation pool and the preload
    + 1
    + circle::refresh::REVALIDATE_WORKERS
    + 1
    // the page-cache store worker
    + 1;
