//! ftpcircle-fs: every FTP/FTPS server in serverlist.txt as one merged, read-only FUSE tree.
//!
//! Layers, from the wire up:
//! - [`serverlist`]: serverlist.txt into server specs (errors name file and line);
//! - [`ftp`]: one server: connections, TLS, pool, MLSD/LIST parsing, ranged RETR;
//! - [`backend`]: the trait the merged view needs from "the servers";
//! - [`circle`]: the merged view: inode table, listing cache, merge rules, reads;
//! - [`fuse`]: the thin fuser adapter;
//! - [`logging`]: the logger, which never lets a password through;
//! - [`workers`]: bounded thread pools for everything that runs in the background.

pub mod backend;
pub mod circle;
pub mod error;
pub mod ftp;
pub mod fuse;
pub mod logging;
pub mod serverlist;
pub mod workers;
