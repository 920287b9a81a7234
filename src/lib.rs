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
//! - [`preflight`]: the checks before mounting, each failure saying what to do.

pub mod backend;
pub mod circle;
pub mod error;
pub mod ftp;
pub mod fuse;
pub mod logging;
pub mod mounts;
pub mod preflight;
pub mod serverlist;
