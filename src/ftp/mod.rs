//! The FTP side: one server at a time. `conn` is one control connection, `pool` the capped set
//! of logged-in connections per server (and the [`crate::backend::Backend`] built on them),
//! `limit` the cap on connections over all servers, `speed` each server's measured speed,
//! `listing` the MLSD/LIST parsers, `tls` the rustls client configuration.

pub mod conn;
pub mod limit;
pub mod listing;
pub mod pool;
pub mod speed;
pub mod tls;
