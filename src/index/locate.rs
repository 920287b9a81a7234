//! `ftpcircle-fs locate`: search the listing index for paths, like locate(1), without mounting.
//!
//! Owns: turning patterns into matchers (substring, glob over the whole path, regular
//! expression; `-i`), walking every stored listing once, and printing the merged paths (as
//! they appear in the mount: `/dir/name`, each path once, whatever the servers holding it).
//!
//! Invariant: a path is printed only for servers of the current serverlist (when there is
//! one), so entries of a server removed from it are never reported.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

use regex::bytes::{Regex, RegexBuilder};

use super::Reader;
use crate::backend::EntryKind;

/// One compiled pattern.
pub struct Matcher {
    res: Vec<Regex>,
}

/// A glob over the whole path as a regular expression: `*` any bytes (`/` too, as locate
/// does), `?` one, `[...]` a class (`[!...]` negated); everything else literal.
fn glob_regex(glob: &str) -> String {
    let mut out = String::from("^");
    let chars: Vec<char> = glob.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        match chars[i] {
            '*' => out.push_str(".*"),
            '?' => out.push('.'),
            '[' => {
                // A class only when it is closed; else a literal '['.
                let start = i + 1;
                let mut j = start;
                if chars.get(j).is_some_and(|&c| c == '!' || c == '^') {
                    j += 1;
                }
                if chars.get(j) == Some(&']') {
                    j += 1;
                }
                while j < chars.len() && chars[j] != ']' {
                    j += 1;
                }
                if j >= chars.len() {
                    out.push_str(&regex::escape("["));
                } else {
                    out.push('[');
                    let mut k = start;
                    if chars[k] == '!' || chars[k] == '^' {
                        out.push('^');
                        k += 1;
                    }
                    for &c in &chars[k..j] {
                        // Inside a class only these are special to the regex crate.
                        if matches!(c, '\\' | '[' | '&' | '~') {
                            out.push('\\');
                        }
                        out.push(c);
                    }
                    out.push(']');
                    i = j;
                }
            }
            c => out.push_str(&regex::escape(c.encode_utf8(&mut [0; 4]))),
        }
        i += 1;
    }
    out.push('$');
    out
}

impl Matcher {
    pub fn new(patterns: &[String], ignore_case: bool, regex: bool) -> Result<Matcher, String> {
        let mut res = Vec::with_capacity(patterns.len());
        for p in patterns {
            let src = if regex {
                p.clone()
            } else if p.contains(['*', '?', '[']) {
                glob_regex(p)
            } else {
                regex::escape(p)
            };
            let re = RegexBuilder::new(&src)
                .case_insensitive(ignore_case)
                // Paths are bytes: `.` matches any byte, not only valid UTF-8.
                .unicode(false)
                .build()
                .or_else(|_| {
                    RegexBuilder::new(&src)
                        .case_insensitive(ignore_case)
                        .build()
                })
                .map_err(|e| format!("pattern {p:?}: {e}"))?;
            res.push(re);
        }
        Ok(Matcher { res })
    }

    pub fn is_match(&self, path: &[u8]) -> bool {
        self.res.iter().any(|r| r.is_match(path))
    }
}

/// What is known of a matching path on one server.
struct Hit {
    server: usize,
    kind: u8,
    size: u64,
    mtime: Option<SystemTime>,
}

/// `servers`: (ident, label) of the serverlist's servers in order (`None`: every server in
/// the file). Prints the matches on `out`; returns how many paths matched.
pub fn locate(
    reader: &Reader,
    servers: Option<&[(String, String)]>,
    matcher: &Matcher,
    long: bool,
    out: &mut dyn Write,
) -> Result<usize, String> {
    // Database id -> (position, label): the order of the serverlist is the merge priority.
    let mut labels = Vec::new();
    let mut by_id: HashMap<i64, usize> = HashMap::new();
    match servers {
        Some(list) => {
            for (pos, (ident, label)) in list.iter().enumerate() {
                if let Some((id, _, _)) = reader.servers.iter().find(|(_, i, _)| i == ident) {
                    by_id.insert(*id, pos);
                }
                labels.push(label.clone());
            }
        }
        None => {
            for (pos, (id, _, label)) in reader.servers.iter().enumerate() {
                by_id.insert(*id, pos);
                labels.push(label.clone());
            }
        }
    }
    let mut hits: BTreeMap<Vec<u8>, Vec<Hit>> = BTreeMap::new();
    let mut path = Vec::with_capacity(4096);
    reader.for_each(|id, dir, entries| {
        let Some(&server) = by_id.get(&id) else {
            return;
        };
        path.clear();
        path.push(b'/');
        path.extend_from_slice(dir);
        if !dir.is_empty() {
            path.push(b'/');
        }
        let base = path.len();
        for e in entries {
            path.truncate(base);
            path.extend_from_slice(&e.name);
            if matcher.is_match(&path) {
                let kind = match e.kind {
                    EntryKind::File => b'f',
                    EntryKind::Dir => b'd',
                    EntryKind::Symlink(_) => b'l',
                };
                hits.entry(path.clone()).or_default().push(Hit {
                    server,
                    kind,
                    size: e.size,
                    mtime: e.mtime,
                });
            }
        }
    })?;
    let count = hits.len();
    let mut w = std::io::BufWriter::new(out);
    let io = |e: std::io::Error| format!("writing the results: {e}");
    for (p, mut on) in hits {
        if long {
            on.sort_by_key(|h| h.server);
            // The first server in priority order is the copy the mount shows.
            let first = &on[0];
            let names: Vec<&str> = on.iter().map(|h| labels[h.server].as_str()).collect();
            let size = if first.kind == b'f' {
                first.size.to_string()
            } else {
                "-".into()
            };
            write!(
                w,
                "{} {:>12} {} {} ",
                first.kind as char,
                size,
                first.mtime.map_or_else(|| "-".into(), format_time),
                names.join(",")
            )
            .map_err(io)?;
        }
        w.write_all(&p).map_err(io)?;
        w.write_all(b"\n").map_err(io)?;
    }
    w.flush().map_err(io)?;
    Ok(count)
}

/// `YYYY-MM-DDTHH:MM:SSZ` (UTC).
fn format_time(t: SystemTime) -> String {
    let secs = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    };
    let (days, rem) = (secs.div_euclid(86400), secs.rem_euclid(86400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(p: &str, i: bool, re: bool) -> Matcher {
        Matcher::new(&[p.to_string()], i, re).unwrap()
    }

    #[test]
    fn substring_glob_regex_and_case() {
        assert!(!m("read", false, false).is_match(b"/pub/README"));
        assert!(m("read", true, false).is_match(b"/pub/README"));
        assert!(m("b/RE", false, false).is_match(b"/pub/README"));
        // A glob covers the whole path.
        assert!(m("*.iso", false, false).is_match(b"/a/b/debian.iso"));
        assert!(!m("*.iso", false, false).is_match(b"/a/b/debian.iso.sig"));
        assert!(m("/a/?/*", false, false).is_match(b"/a/b/x"));
        assert!(m("*[0-9].txt", false, false).is_match(b"/x/file7.txt"));
        assert!(!m("*[!0-9].txt", false, false).is_match(b"/x/file7.txt"));
        assert!(m("*[", false, false).is_match(b"/odd["));
        assert!(m("*.ISO", true, false).is_match(b"/a.iso"));
        assert!(m(r"deb(ian)?-\d+", false, true).is_match(b"/x/debian-12.iso"));
        assert!(m("a.c", false, false).is_match(b"/a.c"));
        assert!(
            !m("a.c", false, false).is_match(b"/abc"),
            "no regex meaning"
        );
        assert!(Matcher::new(&["(".into()], false, true).is_err());
    }

    #[test]
    fn times_print_as_utc() {
        assert_eq!(format_time(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let t = UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
        assert_eq!(format_time(t), "2023-11-14T22:13:20Z");
    }
}
