//! `ftpcircle-fs check`: connect to every server of the serverlist, without mounting, and say
//! what works: reachable, TLS verified (and why not), login, listing method, REST, EPSV,
//! round-trip time and entries in its root.
//!
//! Owns: the probe of one server and the report (a table, or JSON with `--json`).
//!
//! Invariants:
//! - every server is probed in parallel (on at most [`CHECK_WORKERS`] threads), each network
//!   step bounded by `--timeout`; a probe still running after [`STEPS`] timeouts is reported
//!   as timed out, so the whole check ends within about `STEPS * --timeout` per
//!   `CHECK_WORKERS` servers;
//! - only read-side commands are sent (login, FEAT, NOOP, one listing of the root);
//! - nothing printed holds a user or a password.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

use rustls::ClientConfig;

use crate::circle::control::{json_str, text_table};
use crate::error::Kind;
use crate::ftp::conn::{Conn, Endpoint};
use crate::ftp::listing;
use crate::serverlist::{ServerSpec, Tls};
use crate::workers::Workers;

/// Probes run on at most this many threads: a silent server holds one for a few timeouts, and
/// 128 of them at once cover any serverlist a person checks by hand in one go.
pub const CHECK_WORKERS: usize = 128;
/// Network steps of one probe, each bounded by the timeout: connect, greeting, TLS, login,
/// FEAT/TYPE, NOOP, listing (its data connection and transfer).
pub const STEPS: u32 = 8;

/// What the probe of one server found.
#[derive(Clone, Debug, Default)]
pub struct Report {
    pub label: String,
    pub reachable: Option<bool>,
    /// `None`: plain FTP. `Some(Ok)`: verified. `Some(Err(why))`: not verified.
    pub tls: Option<Result<(), String>>,
    /// `None`: not tried (an earlier step failed).
    pub login: Option<Result<(), String>>,
    pub listing: Option<&'static str>,
    pub rest: Option<bool>,
    pub epsv: Option<bool>,
    pub rtt: Option<Duration>,
    pub entries: Option<usize>,
    /// What stopped the probe, if anything.
    pub error: Option<String>,
}

impl Report {
    /// Logged in and listed its root: the mount can use it.
    pub fn usable(&self) -> bool {
        self.error.is_none() && self.entries.is_some()
    }
}

/// Probe one server.
pub fn probe(ep: &Endpoint) -> Report {
    let mut r = Report {
        label: ep.label.clone(),
        ..Report::default()
    };
    let tls_used = ep.spec.tls != Tls::Plain;
    let started = Instant::now();
    let mut conn = match Conn::open(ep) {
        Ok(c) => c,
        Err(e) => {
            let msg = e.message.clone();
            let tls_failed = msg.contains("TLS");
            if e.kind == Kind::Auth {
                r.reachable = Some(true);
                r.tls = tls_used.then_some(Ok(()));
                r.login = Some(Err(msg.clone()));
            } else if tls_failed && tls_used {
                r.reachable = Some(true);
                r.tls = Some(Err(msg.clone()));
            } else {
                // Refused, timed out, no greeting: nothing answered as an FTP server.
                r.reachable = Some(false);
            }
            r.error = Some(msg);
            return r;
        }
    };
    r.reachable = Some(true);
    r.tls = tls_used.then_some(Ok(()));
    r.login = Some(Ok(()));
    r.rest = Some(conn.feats.rest_stream);
    r.epsv = Some(conn.feats.epsv);
    let t = Instant::now();
    r.rtt = Some(match conn.noop(&ep.label) {
        Ok(()) => t.elapsed(),
        // No NOOP: the whole login sequence, a coarse upper bound.
        Err(_) => started.elapsed(),
    });
    let root = ep.spec.base.as_bytes();
    match conn.list_dir(&ep.label, root, true, false) {
        Ok((format, lines)) => {
            r.listing = Some(conn.listing_method());
            let parsed = listing::parse_listing(&lines, format, SystemTime::now());
            r.entries = Some(parsed.entries.len());
        }
        Err(e) => r.error = Some(e.message),
    }
    conn.quit();
    r
}

/// Probe every server in parallel; reports in serverlist order.
pub fn check_all(
    specs: Vec<ServerSpec>,
    tls: Option<Arc<ClientConfig>>,
    timeout: Duration,
) -> Vec<Report> {
    let n = specs.len();
    let workers = Workers::new("ftpc-check", CHECK_WORKERS);
    let (tx, rx) = mpsc::channel();
    let mut reports: Vec<Report> = Vec::with_capacity(n);
    for (i, spec) in specs.into_iter().enumerate() {
        let tls = if spec.tls == Tls::Plain {
            None
        } else {
            tls.clone()
        };
        let ep = Endpoint::new(spec, tls, timeout);
        reports.push(Report {
            label: ep.label.clone(),
            error: Some(format!(
                "{}: no answer within {:?}",
                ep.label,
                timeout * STEPS
            )),
            ..Report::default()
        });
        let tx = tx.clone();
        workers.spawn(move || {
            let _ = tx.send((i, probe(&ep)));
        });
    }
    drop(tx);
    let rounds = n.div_ceil(CHECK_WORKERS).max(1) as u32;
    let deadline = Instant::now() + timeout * STEPS * rounds;
    // Bounded: each turn receives one report or ends at the deadline.
    for _ in 0..n {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok((i, r)) => reports[i] = r,
            Err(_) => break,
        }
    }
    reports
}

fn yes_no(v: Option<bool>) -> String {
    match v {
        Some(true) => "yes".into(),
        Some(false) => "no".into(),
        None => "-".into(),
    }
}

fn cells(r: &Report) -> Vec<String> {
    vec![
        r.label.clone(),
        yes_no(r.reachable),
        match &r.tls {
            None if r.reachable == Some(true) => "no (plain FTP)".into(),
            None => "-".into(),
            Some(Ok(())) => "verified".into(),
            Some(Err(_)) => "FAILED".into(),
        },
        match &r.login {
            None => "-".into(),
            Some(Ok(())) => "ok".into(),
            Some(Err(_)) => "refused".into(),
        },
        r.listing.unwrap_or("-").into(),
        yes_no(r.rest),
        yes_no(r.epsv),
        r.rtt
            .map_or_else(|| "-".into(), |d| format!("{:.1}ms", d.as_secs_f64() * 1e3)),
        r.entries.map_or_else(|| "-".into(), |n| n.to_string()),
        r.error.clone().unwrap_or_else(|| "-".into()),
    ]
}

/// The reports as an aligned table, one row per server.
pub fn table(reports: &[Report]) -> String {
    let header = [
        "LABEL",
        "REACHABLE",
        "TLS",
        "LOGIN",
        "LISTING",
        "REST",
        "EPSV",
        "RTT",
        "ENTRIES",
        "PROBLEM",
    ];
    let mut rows: Vec<Vec<String>> = vec![header.iter().map(|h| h.to_string()).collect()];
    rows.extend(reports.iter().map(cells));
    text_table(&rows)
}

/// The reports as JSON: `{"servers": [{"label", "usable", "reachable", ...}]}`.
pub fn json(reports: &[Report]) -> String {
    let opt_bool = |v: Option<bool>| v.map_or_else(|| "null".into(), |b| b.to_string());
    let opt_err = |v: &Option<Result<(), String>>| match v {
        None => "null".to_string(),
        Some(Ok(())) => "null".to_string(),
        Some(Err(e)) => json_str(e),
    };
    let mut out = String::from("{\"servers\": [");
    for (i, r) in reports.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let _ = write!(
            out,
            "\n  {{\"label\": {}, \"usable\": {}, \"reachable\": {}, \"tls\": {}, \
             \"tls_verified\": {}, \"tls_error\": {}, \"login\": {}, \"login_error\": {}, \
             \"listing\": {}, \"rest\": {}, \"epsv\": {}, \"rtt_ms\": {}, \"entries\": {}, \
             \"error\": {}}}",
            json_str(&r.label),
            r.usable(),
            opt_bool(r.reachable),
            r.tls.is_some(),
            opt_bool(r.tls.as_ref().map(|t| t.is_ok())),
            opt_err(&r.tls),
            opt_bool(r.login.as_ref().map(|l| l.is_ok())),
            opt_err(&r.login),
            r.listing.map_or_else(|| "null".into(), json_str),
            opt_bool(r.rest),
            opt_bool(r.epsv),
            r.rtt.map_or_else(
                || "null".into(),
                |d| format!("{:.3}", d.as_secs_f64() * 1e3)
            ),
            r.entries.map_or_else(|| "null".into(), |n| n.to_string()),
            r.error.as_deref().map_or_else(|| "null".into(), json_str),
        );
    }
    out.push_str("\n]}\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usable_needs_a_listing_and_no_error() {
        let ok = Report {
            label: "h:21".into(),
            reachable: Some(true),
            login: Some(Ok(())),
            entries: Some(3),
            ..Report::default()
        };
        assert!(ok.usable());
        let refused = Report {
            login: Some(Err("h:21: login as u: server replied 530".into())),
            entries: None,
            error: Some("530".into()),
            ..ok.clone()
        };
        assert!(!refused.usable());
        let t = table(&[ok, refused]);
        assert!(t.starts_with("LABEL"), "{t}");
        assert!(t.contains("refused"), "{t}");
        let j = json(&[Report::default()]);
        assert!(j.contains("\"usable\": false"), "{j}");
    }
}
