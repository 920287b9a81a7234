//! The subcommands that work on the listing index without mounting: `locate` and `index`.
//! (Part of the binary, next to `main.rs`: they only parse, call [`ftpcircle_fs::index`] and
//! print.)

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use ftpcircle_fs::cli::{CrawlArgs, IndexFile, LocateArgs};
use ftpcircle_fs::index::{self, Index, Reader, crawl, locate};
use ftpcircle_fs::serverlist::{self, ServerSpec, Tls};
use ftpcircle_fs::{ftp, logging};

/// The serverlist (when there is one) and the index file of `f`.
fn where_is(f: &IndexFile) -> Result<(Option<Vec<ServerSpec>>, std::path::PathBuf), String> {
    let specs = match serverlist::locate(f.servers.as_deref()) {
        Ok(list) => Some((serverlist::load(&list).map_err(|e| e.to_string())?, list)),
        // `locate --index FILE` works without a serverlist (every server in the file).
        Err(_) if f.index.is_some() && f.servers.is_none() => None,
        Err(e) => return Err(e),
    };
    let path = match (&f.index, &specs) {
        (Some(p), _) => p.clone(),
        (None, Some((_, list))) => index::default_path(list)?,
        (None, None) => unreachable!("no serverlist is only accepted with --index"),
    };
    Ok((specs.map(|(s, _)| s), path))
}

pub fn locate(a: &LocateArgs) -> ExitCode {
    let run = || -> Result<usize, String> {
        let (specs, path) = where_is(&a.file)?;
        let matcher = locate::Matcher::new(&a.patterns, a.ignore_case, a.regex)?;
        let reader = Reader::open(&path)?;
        let servers: Option<Vec<(String, String)>> = specs.map(|s| {
            s.iter()
                .map(|spec| (index::ident(spec), spec.label()))
                .collect()
        });
        let mut out = std::io::stdout().lock();
        locate::locate(&reader, servers.as_deref(), &matcher, a.long, &mut out)
    };
    match run() {
        Ok(0) => ExitCode::from(1),
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ftpcircle-fs locate: {e}");
            ExitCode::from(2)
        }
    }
}

pub fn crawl(a: &CrawlArgs) -> ExitCode {
    if let Err(e) = logging::init(a.verbose as i8, None) {
        eprintln!("ftpcircle-fs: {e}");
        return ExitCode::from(2);
    }
    let run = || -> Result<bool, String> {
        if !(a.timeout > 0.0 && a.timeout <= 3600.0) {
            return Err("--timeout must be between 0 and 3600 seconds".into());
        }
        if a.max_connections == 0 || a.max_connections > 64 {
            return Err("--max-connections must be between 1 and 64".into());
        }
        if !(a.cache_ttl >= 0.0 && a.cache_ttl <= 365.0 * 86400.0) {
            return Err("--cache-ttl must be between 0 and one year".into());
        }
        let (specs, path) = where_is(&IndexFile {
            servers: a.file.servers.clone(),
            index: None,
        })
        .map(|(s, p)| (s, a.file.index.clone().unwrap_or(p)))?;
        let specs = specs.ok_or("no serverlist")?;
        let (ix, warnings) = Index::open(&path, &specs)?;
        for w in warnings {
            eprintln!("ftpcircle-fs index: warning: {w}");
        }
        let ix = Arc::new(ix);
        let tls = if specs.iter().any(|s| s.tls != Tls::Plain) {
            Some(ftp::tls::client_config(a.ca_file.as_deref())?)
        } else {
            None
        };
        let timeout = Duration::from_secs_f64(a.timeout);
        let labels: Vec<String> = specs.iter().map(|s| s.label()).collect();
        let backend = crate::backend_of(specs, tls, timeout, a.max_connections, 512);
        let summary = crawl::crawl(
            backend,
            Arc::clone(&ix),
            Duration::from_secs_f64(a.cache_ttl),
            a.max_listings,
            timeout * 6,
        )?;
        ix.close();
        let errors: u64 = summary
            .per_server
            .iter()
            .map(|c| c.errors.load(std::sync::atomic::Ordering::Relaxed))
            .sum();
        eprintln!(
            "ftpcircle-fs index: {} listing(s) fetched from {} server(s) into {}",
            summary.fetched,
            labels.len(),
            path.display()
        );
        if summary.stopped {
            eprintln!(
                "ftpcircle-fs index: stopped after --max-listings; run it again to go on where it stopped"
            );
        } else if errors > 0 {
            eprintln!(
                "ftpcircle-fs index: {errors} directory listing(s) failed; run it again to retry them"
            );
        }
        Ok(!summary.stopped && errors == 0)
    };
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("ftpcircle-fs index: {e}");
            ExitCode::from(2)
        }
    }
}
