//! Parsing of FTP directory listings into [`RawEntry`] values.
//!
//! This module owns the translation of the raw bytes an FTP server sends in
//! reply to `MLSD` or `LIST` into a validated list of directory entries. It
//! does no I/O: callers hand it the lines of a listing (without the trailing
//! CRLF; a stray trailing `\r` is tolerated) and get back the entries plus a
//! record of every line that was skipped and why.
//!
//! # Formats
//!
//! * **MLSD** (RFC 3659): `fact=value;fact=value; name`. Fact names and the
//!   `type` values are case-insensitive. Understood facts: `type` (`file`,
//!   `dir`, `cdir`, `pdir`, `OS.unix=slink:TARGET`, `OS.unix=symlink`, other
//!   `OS.*` types), `size`, `sizd` and `modify` (`YYYYMMDDHHMMSS[.sss]`, UTC).
//!   Every other fact (`perm`, `unique`, `unix.mode`, ...) is ignored.
//!   `cdir`/`pdir` entries and non-symlink `OS.*` types (devices, fifos,
//!   sockets) are skipped silently.
//! * **Unix `ls -l` LIST** as sent by vsftpd, proftpd, pure-ftpd, busybox and
//!   friends, with numeric, named or partly missing owner/group columns,
//!   permission strings with a trailing `+`, `@` or `.`, and dates either as
//!   `Mon DD HH:MM` (year inferred from `now`), `Mon DD  YYYY` or
//!   `YYYY-MM-DD HH:MM[:SS[.frac]] [+zone]`. Only the types `-`, `d` and `l`
//!   produce entries; device, pipe and socket lines are skipped silently.
//! * **DOS/IIS LIST**: `MM-DD-YY  HH:MMAM  <DIR>  name` and
//!   `MM-DD-YYYY  HH:MM  1234 name`, 12- or 24-hour clock, two-digit years
//!   70-99 meaning 19xx and 00-69 meaning 20xx. The name starts after the
//!   single space following the size, but after `<DIR>` IIS pads with a run
//!   of spaces, so leading spaces of DOS *directory* names are lost.
//!
//! A yearless `Mon DD HH:MM` gets the latest year that does not put it more
//! than two days after `now`. Date columns that are well-formed but not a
//! real date (`Feb 30`) leave the entry in place with `mtime: None`; so does a
//! malformed MLSD `modify` fact.
//!
//! All times are taken to be UTC (apart from an explicit `+hhmm` zone in the
//! long ISO form). Date arithmetic is done here (days-from-civil), without
//! external crates.
//!
//! # Byte faithfulness
//!
//! Names and symlink targets are never decoded: they are returned as the exact
//! bytes the server sent, so a latin-1 name comes back as the same bytes. In
//! Unix listings the name is found by locating the date columns and taking
//! everything after the single space that follows them, which keeps leading,
//! trailing and repeated spaces intact.
//!
//! # Invariants
//!
//! The server is untrusted, so every line is validated and nothing here
//! panics on any input.
//!
//! * Every name in [`Listing::entries`] (and every name returned by
//!   [`parse_mlsd_line`] / [`parse_list_line`]) passes [`valid_name`]: it is
//!   non-empty, not `.` or `..`, at most 255 bytes and contains no `/`, NUL,
//!   CR or LF.
//! * Names are unique within one [`Listing`] (the first occurrence wins).
//! * Sizes are at most 2^62.
//! * Symlink targets contain no NUL, CR or LF and are at most 4096 bytes; an
//!   empty target means "unknown" (the server did not say) and must be
//!   resolved by the caller. Targets may be absolute or contain `..`.
//! * Parsing is linear in the size of the listing.

use std::collections::HashSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

// The entry types are the seam's (the merged view uses them without knowing FTP); they keep
// their old paths here so code written against `ftp::listing` still compiles.
pub use crate::backend::{EntryKind, Precision, RawEntry};

// `Precision::same_time` lives here, next to the date arithmetic it shares with the parsers.
impl Precision {
    /// The length of one unit, in seconds.
    pub fn secs(self) -> u64 {
        match self {
            Precision::Second => 1,
            Precision::Minute => 60,
            Precision::Day => SECS_PER_DAY as u64,
        }
    }

    /// Do two listed times name the same moment, compared at the coarser of the two
    /// precisions? Times are truncated to whole units since the epoch (UTC), so `Jan 15  2024`
    /// (midnight) matches any time that day and `Jan 15 03:45` any second of that minute.
    pub fn same_time(a: SystemTime, pa: Precision, b: SystemTime, pb: Precision) -> bool {
        let unit = pa.max(pb).secs() as i64;
        system_time_to_secs(a).div_euclid(unit) == system_time_to_secs(b).div_euclid(unit)
    }
}

/// Which command produced the listing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Machine-readable `MLSD` output (RFC 3659).
    Mlsd,
    /// Human-readable `LIST` output (Unix `ls -l` style or DOS/IIS style).
    List,
}

/// A line that did not produce an entry, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skipped {
    /// The offending line, truncated to 200 bytes.
    pub line: Vec<u8>,
    /// A short, static explanation.
    pub reason: &'static str,
}

/// The result of parsing a whole listing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Listing {
    /// Valid entries, unique by name, in server order.
    pub entries: Vec<RawEntry>,
    /// Lines that were rejected. Lines that are skipped by design (`total`,
    /// `.`, `..`, `cdir`, `pdir`, devices, blank lines) are not recorded.
    pub skipped: Vec<Skipped>,
}

/// Longest accepted name, in bytes.
const MAX_NAME_LEN: usize = 255;
/// Largest accepted size (2^62).
const MAX_SIZE: u64 = 1 << 62;
/// Longest accepted symlink target, in bytes (Linux PATH_MAX).
const MAX_TARGET_LEN: usize = 4096;
/// How much of a skipped line is kept.
const SKIPPED_LINE_MAX: usize = 200;
/// A yearless LIST date may be this far in the future of `now`.
const FUTURE_SLACK_SECS: i64 = 2 * SECS_PER_DAY;
/// Only this many leading whitespace-separated tokens are examined when
/// looking for the date columns of a Unix LIST line.
const MAX_UNIX_TOKENS: usize = 16;
const SECS_PER_DAY: i64 = 86_400;
/// `now` is clamped to about ±31,000 years so date arithmetic cannot overflow.
const NOW_CLAMP_SECS: i64 = 1_000_000_000_000;

/// Parse a whole listing. `now` is used for LIST dates without a year.
///
/// With [`Format::List`] each line is tried as a Unix `ls -l` line first and
/// as a DOS/IIS line second. Lines that are rejected end up in
/// [`Listing::skipped`]; a later entry with the same name as an earlier one is
/// skipped with reason `"duplicate name"`.
pub fn parse_listing<L: AsRef<[u8]>>(lines: &[L], format: Format, now: SystemTime) -> Listing {
    let mut entries: Vec<RawEntry> = Vec::with_capacity(lines.len());
    let mut skipped: Vec<Skipped> = Vec::new();
    let mut seen: HashSet<Vec<u8>> = HashSet::with_capacity(lines.len());
    for line in lines {
        let line = line.as_ref();
        let parsed = match format {
            Format::Mlsd => parse_mlsd_line(line),
            Format::List => parse_list_line(line, now),
        };
        let result = match parsed {
            Ok(None) => continue,
            // Belt and braces: the line parsers already validate the name.
            Ok(Some(entry)) => valid_name(&entry.name).map(|()| entry),
            Err(reason) => Err(reason),
        };
        match result {
            Ok(entry) if seen.contains(entry.name.as_slice()) => {
                skipped.push(make_skipped(line, "duplicate name"));
            }
            Ok(entry) => {
                seen.insert(entry.name.clone());
                entries.push(entry);
            }
            Err(reason) => {
                log::trace!(
                    "skipping listing line {:?}: {reason}",
                    String::from_utf8_lossy(truncate(line))
                );
                skipped.push(make_skipped(line, reason));
            }
        }
    }
    if let Some(first) = skipped.first() {
        log::debug!(
            "{:?} listing: {} entries, {} lines skipped (first: {:?}: {})",
            format,
            entries.len(),
            skipped.len(),
            String::from_utf8_lossy(&first.line),
            first.reason
        );
    }
    Listing { entries, skipped }
}

/// Check that `name` is acceptable as a single path component.
///
/// Rejects empty names, `.`, `..`, names longer than 255 bytes and names
/// containing `/`, NUL, CR or LF. Any other bytes (including non-UTF-8 ones
/// and spaces anywhere) are fine.
pub fn valid_name(name: &[u8]) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("empty name");
    }
    if name == b"." || name == b".." {
        return Err("name is . or ..");
    }
    if name.len() > MAX_NAME_LEN {
        return Err("name longer than 255 bytes");
    }
    for &b in name {
        match b {
            b'/' => return Err("name contains /"),
            0 => return Err("name contains NUL"),
            b'\r' | b'\n' => return Err("name contains CR or LF"),
            _ => {}
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// MLSD
// ---------------------------------------------------------------------------

/// What an MLSD `type` fact says.
enum MlsdType {
    Entry(EntryKind),
    /// cdir, pdir, devices and other kinds that are skipped by design.
    Ignored,
}

/// Parse one MLSD line (`fact=value;...; name`).
///
/// Returns `Ok(None)` for blank lines, `cdir`/`pdir` entries, `.`/`..` and
/// entry types that are skipped by design (devices, fifos, ...).
pub fn parse_mlsd_line(line: &[u8]) -> Result<Option<RawEntry>, &'static str> {
    let line = trim_eol(line);
    if line.is_empty() {
        return Ok(None);
    }
    let split = mlsd_name_separator(line).ok_or("no space between MLSD facts and name")?;
    let facts = line.get(..split).unwrap_or_default();
    let name = line.get(split + 1..).unwrap_or_default();

    let mut kind: Option<MlsdType> = None;
    let mut size: Option<u64> = None;
    let mut sizd: Option<u64> = None;
    let mut mtime: Option<SystemTime> = None;
    for fact in facts.split(|&b| b == b';') {
        if fact.is_empty() {
            continue;
        }
        let Some(eq) = fact.iter().position(|&b| b == b'=') else {
            return Err("malformed MLSD fact");
        };
        let key = fact.get(..eq).unwrap_or_default();
        let value = fact.get(eq + 1..).unwrap_or_default();
        if key.eq_ignore_ascii_case(b"type") {
            if kind.is_none() {
                kind = Some(mlsd_type(value)?);
            }
        } else if key.eq_ignore_ascii_case(b"size") {
            let parsed = parse_size(value)?;
            size.get_or_insert(parsed);
        } else if key.eq_ignore_ascii_case(b"sizd") {
            let parsed = parse_size(value)?;
            sizd.get_or_insert(parsed);
        } else if key.eq_ignore_ascii_case(b"modify") && mtime.is_none() {
            // A malformed timestamp is not worth dropping the entry for.
            mtime = parse_mlsd_time(value);
        }
    }
    let kind = match kind {
        None => return Err("MLSD line without a type fact"),
        Some(MlsdType::Ignored) => return Ok(None),
        Some(MlsdType::Entry(kind)) => kind,
    };
    if name == b"." || name == b".." {
        return Ok(None);
    }
    valid_name(name)?;
    if let EntryKind::Symlink(target) = &kind {
        valid_target(target)?;
    }
    let size = match kind {
        EntryKind::Dir => sizd.or(size),
        _ => size,
    }
    .unwrap_or(0);
    Ok(Some(RawEntry {
        name: name.to_vec(),
        kind,
        size,
        mtime,
        mtime_precision: Precision::Second,
    }))
}

/// Index of the space separating the facts from the name.
///
/// Per RFC 3659 every fact ends with `;` and a single space precedes the
/// name, so the first space whose prefix ends with `;` is the separator (a
/// line starting with a space has no facts). A pure-ftpd symlink target may
/// itself contain spaces, in which case the first `"; "` is used; as a last
/// resort (servers that omit the final `;`) the first space.
fn mlsd_name_separator(line: &[u8]) -> Option<usize> {
    let first_space = line.iter().position(|&b| b == b' ')?;
    if first_space == 0 || line.get(first_space - 1) == Some(&b';') {
        return Some(first_space);
    }
    line.windows(2)
        .position(|w| w == b"; ")
        .map(|i| i + 1)
        .or(Some(first_space))
}

fn mlsd_type(value: &[u8]) -> Result<MlsdType, &'static str> {
    if value.eq_ignore_ascii_case(b"file") {
        return Ok(MlsdType::Entry(EntryKind::File));
    }
    if value.eq_ignore_ascii_case(b"dir") {
        return Ok(MlsdType::Entry(EntryKind::Dir));
    }
    if value.eq_ignore_ascii_case(b"cdir") || value.eq_ignore_ascii_case(b"pdir") {
        return Ok(MlsdType::Ignored);
    }
    if let Some(unix) = strip_prefix_ci(value, b"os.unix=") {
        // pure-ftpd: `OS.unix=slink:TARGET`; proftpd: `OS.unix=symlink`.
        for prefix in [&b"slink"[..], &b"symlink"[..]] {
            if let Some(rest) = strip_prefix_ci(unix, prefix) {
                if rest.is_empty() {
                    return Ok(MlsdType::Entry(EntryKind::Symlink(Vec::new())));
                }
                if let Some(target) = rest.strip_prefix(b":") {
                    return Ok(MlsdType::Entry(EntryKind::Symlink(target.to_vec())));
                }
            }
        }
        return Ok(MlsdType::Ignored);
    }
    if strip_prefix_ci(value, b"os.").is_some() {
        return Ok(MlsdType::Ignored);
    }
    Err("unknown MLSD entry type")
}

/// `YYYYMMDDHHMMSS[.fraction]`, UTC.
fn parse_mlsd_time(value: &[u8]) -> Option<SystemTime> {
    let (main, frac) = match value.iter().position(|&b| b == b'.') {
        Some(dot) => (value.get(..dot)?, value.get(dot + 1..)),
        None => (value, None),
    };
    if main.len() != 14 {
        return None;
    }
    let year = parse_digits(main.get(0..4)?)?;
    let month = parse_digits(main.get(4..6)?)?;
    let day = parse_digits(main.get(6..8)?)?;
    let hour = parse_digits(main.get(8..10)?)?;
    let minute = parse_digits(main.get(10..12)?)?;
    let second = parse_digits(main.get(12..14)?)?;
    let nanos = match frac {
        None => 0,
        Some(frac) => parse_fraction_nanos(frac)?,
    };
    let secs = civil_to_secs(i64::from(year), month, day, hour, minute, second)?;
    secs_to_system_time(secs)?.checked_add(Duration::from_nanos(u64::from(nanos)))
}

// ---------------------------------------------------------------------------
// LIST
// ---------------------------------------------------------------------------

/// Parse one LIST line, trying the Unix `ls -l` format first and the DOS/IIS
/// format second.
///
/// Returns `Ok(None)` for blank lines, `total N` lines, `.`/`..` entries and
/// entry types that are skipped by design (devices, pipes, sockets).
pub fn parse_list_line(line: &[u8], now: SystemTime) -> Result<Option<RawEntry>, &'static str> {
    let line = trim_eol(line);
    if line.iter().all(|&b| is_blank(b)) {
        return Ok(None);
    }
    if is_total_line(line) {
        return Ok(None);
    }
    if let Some(result) = parse_unix_line(line, now) {
        return result;
    }
    if let Some(result) = parse_dos_line(line) {
        return result;
    }
    Err("unrecognised LIST line")
}

/// `total 1234` (the block count `ls -l` prints first).
fn is_total_line(line: &[u8]) -> bool {
    let Some((start, end)) = next_token(line, 0) else {
        return false;
    };
    if !line
        .get(start..end)
        .is_some_and(|t| t.eq_ignore_ascii_case(b"total"))
    {
        return false;
    }
    match next_token(line, end) {
        None => true,
        Some((s, e)) => next_token(line, e).is_none() && line.get(s..e).is_some_and(is_number),
    }
}

/// What the first character of a Unix permission string says.
enum UnixType {
    Entry(UnixKind),
    Ignored,
}

#[derive(Clone, Copy)]
enum UnixKind {
    File,
    Dir,
    Symlink,
}

/// Classify a permission string such as `drwxr-xr-x`, `-rw-r--r--+` or
/// `lrwxrwxrwx@`. `None` if it does not look like one.
fn unix_type(perm: &[u8]) -> Option<UnixType> {
    let (&type_char, rest) = perm.split_first()?;
    let (mode, suffix) = (rest.get(..9)?, rest.get(9..)?);
    if !mode.iter().all(|b| b"rwxsStTlL-".contains(b)) {
        return None;
    }
    match suffix {
        [] | [b'+' | b'@' | b'.'] => {}
        _ => return None,
    }
    match type_char {
        b'-' => Some(UnixType::Entry(UnixKind::File)),
        b'd' => Some(UnixType::Entry(UnixKind::Dir)),
        b'l' => Some(UnixType::Entry(UnixKind::Symlink)),
        b'c' | b'b' | b'p' | b's' | b'D' | b'n' | b'w' | b'?' => Some(UnixType::Ignored),
        _ => None,
    }
}

/// `None` if the line is not a Unix `ls -l` line at all; otherwise the
/// result for it.
fn parse_unix_line(line: &[u8], now: SystemTime) -> Option<Result<Option<RawEntry>, &'static str>> {
    let mut toks: Vec<(usize, usize)> = Vec::with_capacity(MAX_UNIX_TOKENS);
    let mut pos = 0;
    while toks.len() < MAX_UNIX_TOKENS {
        let Some((start, end)) = next_token(line, pos) else {
            break;
        };
        toks.push((start, end));
        pos = end;
    }
    let &(perm_start, perm_end) = toks.first()?;
    let kind = match unix_type(line.get(perm_start..perm_end)?)? {
        UnixType::Ignored => return Some(Ok(None)),
        UnixType::Entry(kind) => kind,
    };
    let tok = |i: usize| -> &[u8] {
        toks.get(i)
            .and_then(|&(s, e)| line.get(s..e))
            .unwrap_or_default()
    };
    // The date normally starts at token 3 or later (perm, links, owner,
    // [group], size); token 2 is a last resort for lines with neither owner
    // nor group. The token before the date must look like a size.
    let found = (3..toks.len()).chain(2..3).find_map(|i| {
        let size_tok = tok(i - 1);
        let digits = size_tok.strip_prefix(b"-").unwrap_or(size_tok);
        if !is_number(digits) {
            return None;
        }
        match_unix_date(&tok, i, now).map(|(last, mtime)| (i, last, mtime))
    });
    let Some((date_index, last, mtime)) = found else {
        return Some(Err("no date found in Unix LIST line"));
    };
    Some(finish_unix_line(
        line,
        &toks,
        kind,
        tok(date_index - 1),
        last,
        mtime,
    ))
}

fn finish_unix_line(
    line: &[u8],
    toks: &[(usize, usize)],
    kind: UnixKind,
    size_tok: &[u8],
    last: usize,
    mtime: Option<(SystemTime, Precision)>,
) -> Result<Option<RawEntry>, &'static str> {
    let size = parse_size(size_tok)?;
    let after_date = toks
        .get(last)
        .and_then(|&(_, end)| line.get(end..))
        .unwrap_or_default();
    // Exactly one separator after the date; everything else is the name.
    let rest = match after_date.split_first() {
        Some((&sep, rest)) if is_blank(sep) => rest,
        _ => return Err("empty name"),
    };
    let (name, kind) = match kind {
        UnixKind::File => (rest, EntryKind::File),
        UnixKind::Dir => (rest, EntryKind::Dir),
        UnixKind::Symlink => match find_subslice(rest, b" -> ") {
            Some(arrow) => {
                let name = rest.get(..arrow).unwrap_or_default();
                let target = rest.get(arrow + 4..).unwrap_or_default();
                if target.is_empty() {
                    return Err("empty symlink target");
                }
                (name, EntryKind::Symlink(target.to_vec()))
            }
            None => (rest, EntryKind::Symlink(Vec::new())),
        },
    };
    if name == b"." || name == b".." {
        return Ok(None);
    }
    valid_name(name)?;
    if let EntryKind::Symlink(target) = &kind {
        valid_target(target)?;
    }
    Ok(Some(RawEntry {
        name: name.to_vec(),
        kind,
        size,
        mtime: mtime.map(|(t, _)| t),
        mtime_precision: mtime.map_or(Precision::Second, |(_, p)| p),
    }))
}

/// Try to read the date columns starting at token `i`. On success returns
/// the index of the last date token and the time with its precision (`None`
/// when the fields are well-formed but not a real calendar date, such as
/// `Feb 30`).
fn match_unix_date<'a>(
    tok: &impl Fn(usize) -> &'a [u8],
    i: usize,
    now: SystemTime,
) -> Option<(usize, Option<(SystemTime, Precision)>)> {
    if let Some(month) = parse_month_name(tok(i)) {
        // `Mon DD HH:MM` or `Mon DD YYYY`.
        let day = parse_small(tok(i + 1), 1, 2)?;
        if !(1..=31).contains(&day) {
            return None;
        }
        let third = tok(i + 2);
        if let Some((hour, minute)) = parse_hh_mm(third) {
            let secs = resolve_yearless(month, day, hour, minute, now);
            let mtime = secs.and_then(secs_to_system_time);
            return Some((i + 2, mtime.map(|t| (t, Precision::Minute))));
        }
        if third.len() == 4 {
            let year = parse_digits(third)?;
            let secs = civil_to_secs(i64::from(year), month, day, 0, 0, 0);
            let mtime = secs.and_then(secs_to_system_time);
            return Some((i + 2, mtime.map(|t| (t, Precision::Day))));
        }
        return None;
    }
    // `YYYY-MM-DD HH:MM[:SS[.frac]] [+zone]` (long-iso / full-iso).
    let (year, month, day) = parse_iso_date(tok(i))?;
    let time = tok(i + 1);
    let (hour, minute, second, nanos, has_seconds) = parse_iso_time(time)?;
    let mut last = i + 1;
    let mut offset = 0;
    if has_seconds && let Some(zone) = parse_zone(tok(i + 2)) {
        offset = zone;
        last = i + 2;
    }
    let mtime = civil_to_secs(i64::from(year), month, day, hour, minute, second)
        .map(|s| s - offset)
        .and_then(secs_to_system_time)
        .and_then(|t| t.checked_add(Duration::from_nanos(u64::from(nanos))));
    let precision = if has_seconds {
        Precision::Second
    } else {
        Precision::Minute
    };
    Some((last, mtime.map(|t| (t, precision))))
}

/// The latest time with the given month/day/clock that is not later than
/// `now` plus a small slack; `None` if no year in range has that date.
fn resolve_yearless(month: u32, day: u32, hour: u32, minute: u32, now: SystemTime) -> Option<i64> {
    let now_secs = system_time_to_secs(now);
    let (now_year, _, _) = civil_from_days(now_secs.div_euclid(SECS_PER_DAY));
    let limit = now_secs + FUTURE_SLACK_SECS;
    // Leap days can be up to 8 years apart (e.g. 2096 -> 2104).
    ((now_year - 8)..=(now_year + 1))
        .rev()
        .filter_map(|year| civil_to_secs(year, month, day, hour, minute, 0))
        .find(|&secs| secs <= limit)
}

/// `None` if the line is not a DOS/IIS line at all; otherwise the result for
/// it.
fn parse_dos_line(line: &[u8]) -> Option<Result<Option<RawEntry>, &'static str>> {
    let (ds, de) = next_token(line, 0)?;
    let (month, day, year) = parse_dos_date(line.get(ds..de)?)?;
    let (ts, mut te) = next_token(line, de)?;
    let (hour, minute) = parse_dos_time(line.get(ts..te)?, line, &mut te)?;
    let (ks, ke) = match next_token(line, te) {
        Some(t) => t,
        None => return Some(Err("DOS LIST line without size or <DIR>")),
    };
    let kind_tok = line.get(ks..ke).unwrap_or_default();
    let after = line.get(ke..).unwrap_or_default();
    let (kind, size, name) = if kind_tok.eq_ignore_ascii_case(b"<DIR>") {
        // IIS pads `<DIR>` with a run of spaces; a leading space in a
        // directory name cannot be told apart from that padding.
        let start = after
            .iter()
            .position(|&b| !is_blank(b))
            .unwrap_or(after.len());
        (EntryKind::Dir, 0, after.get(start..).unwrap_or_default())
    } else {
        let size = match parse_size(&strip_commas(kind_tok)) {
            Ok(size) => size,
            Err(reason) => return Some(Err(reason)),
        };
        let name = match after.split_first() {
            Some((&sep, rest)) if is_blank(sep) => rest,
            _ => after,
        };
        (EntryKind::File, size, name)
    };
    if name == b"." || name == b".." {
        return Some(Ok(None));
    }
    if let Err(reason) = valid_name(name) {
        return Some(Err(reason));
    }
    let mtime =
        civil_to_secs(i64::from(year), month, day, hour, minute, 0).and_then(secs_to_system_time);
    Some(Ok(Some(RawEntry {
        name: name.to_vec(),
        kind,
        size,
        mtime,
        mtime_precision: Precision::Minute,
    })))
}

/// `MM-DD-YY`, `MM-DD-YYYY` (or with `/`). Returns (month, day, year).
fn parse_dos_date(t: &[u8]) -> Option<(u32, u32, u32)> {
    let sep = *t.get(2)?;
    if (sep != b'-' && sep != b'/') || t.get(5) != Some(&sep) {
        return None;
    }
    let month = parse_digits(t.get(0..2)?)?;
    let day = parse_digits(t.get(3..5)?)?;
    let year_tok = t.get(6..)?;
    let year = match year_tok.len() {
        2 => {
            let yy = parse_digits(year_tok)?;
            if yy >= 70 { 1900 + yy } else { 2000 + yy }
        }
        4 => parse_digits(year_tok)?,
        _ => return None,
    };
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) {
        return None;
    }
    Some((month, day, year))
}

/// `HH:MM`, `HH:MMAM`/`HH:MMPM`, or `HH:MM` followed by a separate `AM`/`PM`
/// token (in which case `end` is advanced past it).
fn parse_dos_time(t: &[u8], line: &[u8], end: &mut usize) -> Option<(u32, u32)> {
    let split = t.len().checked_sub(2)?;
    let (clock, mut meridiem) = match t.get(split..) {
        Some(tail) if tail.iter().all(u8::is_ascii_alphabetic) => (t.get(..split)?, Some(tail)),
        _ => (t, None),
    };
    if meridiem.is_none()
        && let Some((s, e)) = next_token(line, *end)
        && let Some(word) = line.get(s..e)
        && (word.eq_ignore_ascii_case(b"AM") || word.eq_ignore_ascii_case(b"PM"))
    {
        meridiem = Some(word);
        *end = e;
    }
    let (hour, minute) = parse_hh_mm(clock)?;
    let hour = match meridiem {
        None => hour,
        Some(m) => {
            if !(1..=12).contains(&hour) {
                return None;
            }
            let base = hour % 12;
            if m.eq_ignore_ascii_case(b"AM") {
                base
            } else if m.eq_ignore_ascii_case(b"PM") {
                base + 12
            } else {
                return None;
            }
        }
    };
    Some((hour, minute))
}

// ---------------------------------------------------------------------------
// Small field parsers
// ---------------------------------------------------------------------------

/// A decimal size: rejects anything but ASCII digits, negatives and values
/// above 2^62.
fn parse_size(t: &[u8]) -> Result<u64, &'static str> {
    if let Some(rest) = t.strip_prefix(b"-")
        && is_number(rest)
    {
        return Err("negative size");
    }
    if !is_number(t) {
        return Err("invalid size");
    }
    let mut value: u64 = 0;
    for &b in t {
        value = value
            .checked_mul(10)
            .and_then(|v| v.checked_add(u64::from(b - b'0')))
            .filter(|&v| v <= MAX_SIZE)
            .ok_or("absurd size")?;
    }
    Ok(value)
}

fn valid_target(target: &[u8]) -> Result<(), &'static str> {
    if target.iter().any(|&b| b == 0 || b == b'\r' || b == b'\n') {
        return Err("symlink target contains NUL, CR or LF");
    }
    if target.len() > MAX_TARGET_LEN {
        return Err("symlink target too long");
    }
    Ok(())
}

fn strip_commas(t: &[u8]) -> Vec<u8> {
    t.iter().copied().filter(|&b| b != b',').collect()
}

/// Non-empty and all ASCII digits.
fn is_number(t: &[u8]) -> bool {
    !t.is_empty() && t.iter().all(u8::is_ascii_digit)
}

/// Digits only, at most 9 of them (so the value fits in `u32`).
fn parse_digits(t: &[u8]) -> Option<u32> {
    if !is_number(t) || t.len() > 9 {
        return None;
    }
    Some(
        t.iter()
            .fold(0u32, |acc, &b| acc * 10 + u32::from(b - b'0')),
    )
}

/// Between `min_len` and `max_len` digits.
fn parse_small(t: &[u8], min_len: usize, max_len: usize) -> Option<u32> {
    if t.len() < min_len || t.len() > max_len {
        return None;
    }
    parse_digits(t)
}

/// `H:MM` or `HH:MM` with hour < 24 and minute < 60.
fn parse_hh_mm(t: &[u8]) -> Option<(u32, u32)> {
    let colon = t.iter().position(|&b| b == b':')?;
    let hour = parse_small(t.get(..colon)?, 1, 2)?;
    let minute = parse_small(t.get(colon + 1..)?, 2, 2)?;
    (hour < 24 && minute < 60).then_some((hour, minute))
}

/// `YYYY-MM-DD`.
fn parse_iso_date(t: &[u8]) -> Option<(u32, u32, u32)> {
    if t.len() != 10 || t.get(4) != Some(&b'-') || t.get(7) != Some(&b'-') {
        return None;
    }
    let year = parse_digits(t.get(0..4)?)?;
    let month = parse_digits(t.get(5..7)?)?;
    let day = parse_digits(t.get(8..10)?)?;
    ((1..=12).contains(&month) && (1..=31).contains(&day)).then_some((year, month, day))
}

/// `HH:MM` or `HH:MM:SS[.frac]`. Returns (hour, minute, second, nanos,
/// whether seconds were present).
fn parse_iso_time(t: &[u8]) -> Option<(u32, u32, u32, u32, bool)> {
    if t.len() == 5 {
        let (hour, minute) = parse_hh_mm(t)?;
        return Some((hour, minute, 0, 0, false));
    }
    if t.len() < 8 || t.get(5) != Some(&b':') {
        return None;
    }
    let (hour, minute) = parse_hh_mm(t.get(..5)?)?;
    let second = parse_digits(t.get(6..8)?)?;
    if second > 60 {
        return None;
    }
    let nanos = match t.get(8..)? {
        [] => 0,
        [b'.', frac @ ..] => parse_fraction_nanos(frac)?,
        _ => return None,
    };
    Some((hour, minute, second, nanos, true))
}

/// `+hhmm` / `-hhmm` → offset east of UTC in seconds.
fn parse_zone(t: &[u8]) -> Option<i64> {
    let (&sign, digits) = t.split_first()?;
    if digits.len() != 4 {
        return None;
    }
    let hours = i64::from(parse_digits(digits.get(..2)?)?);
    let minutes = i64::from(parse_digits(digits.get(2..)?)?);
    if hours > 23 || minutes > 59 {
        return None;
    }
    let offset = hours * 3600 + minutes * 60;
    match sign {
        b'+' => Some(offset),
        b'-' => Some(-offset),
        _ => None,
    }
}

/// Digits after a decimal point, as nanoseconds (extra digits are ignored).
fn parse_fraction_nanos(frac: &[u8]) -> Option<u32> {
    if !is_number(frac) {
        return None;
    }
    let mut nanos: u32 = 0;
    for i in 0..9 {
        let digit = frac.get(i).map_or(0, |&b| u32::from(b - b'0'));
        nanos = nanos * 10 + digit;
    }
    Some(nanos)
}

/// English three-letter month name, any case → 1..=12.
fn parse_month_name(t: &[u8]) -> Option<u32> {
    const MONTHS: [&[u8; 3]; 12] = [
        b"jan", b"feb", b"mar", b"apr", b"may", b"jun", b"jul", b"aug", b"sep", b"oct", b"nov",
        b"dec",
    ];
    if t.len() != 3 {
        return None;
    }
    let index = MONTHS.iter().position(|m| t.eq_ignore_ascii_case(&m[..]))?;
    u32::try_from(index + 1).ok()
}

// ---------------------------------------------------------------------------
// Byte helpers
// ---------------------------------------------------------------------------

fn is_blank(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// Strip one trailing LF and then one trailing CR.
fn trim_eol(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// The next blank-separated token at or after `from`, as (start, end).
fn next_token(line: &[u8], from: usize) -> Option<(usize, usize)> {
    let rest = line.get(from..)?;
    let start = from + rest.iter().position(|&b| !is_blank(b))?;
    let tail = line.get(start..)?;
    let len = tail.iter().position(|&b| is_blank(b)).unwrap_or(tail.len());
    Some((start, start + len))
}

fn find_subslice(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn strip_prefix_ci<'a>(value: &'a [u8], prefix: &[u8]) -> Option<&'a [u8]> {
    let head = value.get(..prefix.len())?;
    if head.eq_ignore_ascii_case(prefix) {
        value.get(prefix.len()..)
    } else {
        None
    }
}

fn truncate(line: &[u8]) -> &[u8] {
    line.get(..SKIPPED_LINE_MAX).unwrap_or(line)
}

fn make_skipped(line: &[u8], reason: &'static str) -> Skipped {
    Skipped {
        line: truncate(line).to_vec(),
        reason,
    }
}

// ---------------------------------------------------------------------------
// Calendar arithmetic (proleptic Gregorian, UTC)
// ---------------------------------------------------------------------------

fn is_leap_year(year: i64) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if is_leap_year(year) => 29,
        2 => 28,
        _ => 0,
    }
}

/// Days since 1970-01-01 of the given civil date (month 1..=12, day valid).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    // Shift the year to start in March so the leap day is the last day.
    let (m, d) = (i64::from(month), i64::from(day));
    let y = if m <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let year_of_era = y.rem_euclid(400); // [0, 399]
    let month_from_march = (m + 9) % 12; // March = 0 ... February = 11
    let day_of_year = (153 * month_from_march + 2) / 5 + d - 1; // [0, 365]
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// Inverse of [`days_from_civil`]: (year, month, day).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097); // [0, 146096]
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153; // [0, 11]
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1; // [1, 31]
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    // Both values are small and positive by construction.
    (
        year,
        u32::try_from(month).unwrap_or(1),
        u32::try_from(day).unwrap_or(1),
    )
}

/// Seconds since the epoch of a civil date and time, or `None` if it is not
/// a real date/time.
fn civil_to_secs(
    year: i64,
    month: u32,
    day: u32,
    hour: u32,
    minute: u32,
    second: u32,
) -> Option<i64> {
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return None;
    }
    if hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let days = days_from_civil(year, month, day);
    Some(days * SECS_PER_DAY + i64::from(hour * 3600 + minute * 60 + second))
}

fn secs_to_system_time(secs: i64) -> Option<SystemTime> {
    if secs >= 0 {
        UNIX_EPOCH.checked_add(Duration::from_secs(secs.unsigned_abs()))
    } else {
        UNIX_EPOCH.checked_sub(Duration::from_secs(secs.unsigned_abs()))
    }
}

/// Whole seconds since the epoch (floored), clamped to a range in which
/// calendar arithmetic cannot overflow.
fn system_time_to_secs(t: SystemTime) -> i64 {
    let secs = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => {
            let d = e.duration();
            let whole = i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
            if d.subsec_nanos() > 0 {
                whole.saturating_neg().saturating_sub(1)
            } else {
                whole.saturating_neg()
            }
        }
    };
    secs.clamp(-NOW_CLAMP_SECS, NOW_CLAMP_SECS)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2025-01-03 12:00:00 UTC.
    const NOW_SECS: u64 = 1_735_905_600;
    /// 2024-01-15 03:45:00 UTC.
    const T_2024_01_15_0345: u64 = 1_705_290_300;
    /// 2024-01-15 00:00:00 UTC.
    const T_2024_01_15_0000: u64 = 1_705_276_800;

    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(NOW_SECS)
    }

    fn at(secs: u64) -> Option<SystemTime> {
        Some(UNIX_EPOCH + Duration::from_secs(secs))
    }

    fn list(line: &[u8]) -> RawEntry {
        match parse_list_line(line, now()) {
            Ok(Some(entry)) => entry,
            other => panic!("{:?}: {other:?}", String::from_utf8_lossy(line)),
        }
    }

    fn mlsd(line: &[u8]) -> RawEntry {
        match parse_mlsd_line(line) {
            Ok(Some(entry)) => entry,
            other => panic!("{:?}: {other:?}", String::from_utf8_lossy(line)),
        }
    }

    fn file(name: &[u8], size: u64, mtime: Option<SystemTime>) -> RawEntry {
        RawEntry {
            name: name.to_vec(),
            kind: EntryKind::File,
            size,
            mtime,
            mtime_precision: Precision::Minute,
        }
    }

    fn file_p(p: Precision, name: &[u8], size: u64, mtime: Option<SystemTime>) -> RawEntry {
        RawEntry {
            mtime_precision: p,
            ..file(name, size, mtime)
        }
    }

    /// Real-world sample lines, used by the format tests and the no-panic
    /// prefix test.
    const LIST_SAMPLES: &[&[u8]] = &[
        // vsftpd 3.0.3
        b"-rw-r--r--    1 0        0            1234 Jan 15 03:45 name",
        b"drwxr-xr-x    2 0        0            4096 Jan 15 03:45 pub",
        b"lrwxrwxrwx    1 0        0              19 Jan 15  2024 link -> target",
        b"-rw-r--r--    1 1000     1000         1234 Jan 15  2024 name with spaces",
        // proftpd
        b"-rw-r--r--   1 ftp      ftp          1234 Jan 15  2024 name",
        b"drwxr-xr-x   2 ftp      ftp          4096 Jan 15 03:45 dir",
        b"lrwxrwxrwx   1 ftp      ftp            19 Jan 15  2024 latest -> releases/1.2.3",
        // pure-ftpd
        b"-rw-r--r--    1 1000       1000             1234 Jan 15 03:45 name",
        b"drwxr-xr-x    2 1000       1000             4096 Jan 15  2024 dir",
        // GNU ls style with named owner/group and single-digit day
        b"-rw-r--r--   1 user  group  1234 Jan  5 12:00 x",
        // missing group
        b"-rw-r--r-- 1 ftp 1234 Jan 15 2024 x",
        // ACL / xattr / SELinux markers
        b"-rw-r--r--+ 1 ftp ftp 1234 Jan 15  2024 acl",
        b"-rw-r--r--@ 1 ftp ftp 1234 Jan 15  2024 xattr",
        b"drwxr-xr-x. 2 root root 4096 Jan 15 03:45 selinux",
        // long-iso (busybox / ls --time-style=long-iso)
        b"-rw-r--r--    1 root     root          1234 2024-01-15 03:45 iso",
        b"-rw-r--r-- 1 root root 1234 2024-01-15 03:45:00.000000000 +0000 fulliso",
        b"total 12",
        b"crw-rw-rw-    1 0        0          1,   3 Jan 15 03:45 null",
        // IIS
        b"01-15-24  03:45PM       <DIR>          aspnet_client",
        b"01-15-2024  11:05AM              1234 name with spaces.txt",
        b"01-15-24  15:45                  1234 twentyfour.txt",
        b"02-28-13  09:22AM                  689 iisstart.htm",
    ];

    const MLSD_SAMPLES: &[&[u8]] = &[
        // proftpd
        b"modify=20240115034500;perm=adfr;size=1234;type=file;unique=FD00U1234;UNIX.group=0;UNIX.mode=0644;UNIX.owner=0; name",
        b"modify=20240115034500;perm=flcdmpe;type=dir;unique=FD00U1235;UNIX.group=0;UNIX.mode=0755;UNIX.owner=0; dir",
        b"modify=20240115034500;perm=flcdmpe;type=cdir;unique=FD00U1;UNIX.group=0;UNIX.mode=0755;UNIX.owner=0; .",
        b"modify=20240115034500;perm=flcdmpe;type=pdir;unique=FD00U2;UNIX.group=0;UNIX.mode=0755;UNIX.owner=0; ..",
        b"modify=20240115034500;perm=adfr;size=19;type=OS.unix=symlink;unique=FD00U3;UNIX.group=0;UNIX.mode=0777;UNIX.owner=0; link",
        // pure-ftpd
        b"type=file;size=1234;modify=20240115034500;UNIX.mode=0644;UNIX.uid=1000;UNIX.gid=1000;unique=803g1234; name",
        b"type=OS.unix=slink:/target;size=7;modify=20240115034500;UNIX.mode=0777;UNIX.uid=1000;UNIX.gid=1000;unique=803g1235; link",
        b"type=dir;sizd=4096;modify=20240115034500;UNIX.mode=0755;UNIX.uid=1000;UNIX.gid=1000;unique=803g1236; dir",
        // pyftpdlib
        b"type=file;size=1234;modify=20240115034500.123;unix.mode=0644;perm=r; name",
        b"type=dir;modify=20240115034500.123;unix.mode=0755;perm=el; sub dir",
    ];

    // ----- Unix LIST -------------------------------------------------------

    #[test]
    fn vsftpd_list() {
        assert_eq!(
            list(LIST_SAMPLES[0]),
            file(b"name", 1234, at(T_2024_01_15_0345))
        );
        let dir = list(LIST_SAMPLES[1]);
        assert_eq!(dir.kind, EntryKind::Dir);
        assert_eq!(dir.size, 4096);
        assert_eq!(dir.name, b"pub");
        let link = list(LIST_SAMPLES[2]);
        assert_eq!(link.name, b"link");
        assert_eq!(link.kind, EntryKind::Symlink(b"target".to_vec()));
        assert_eq!(link.size, 19);
        assert_eq!(link.mtime, at(T_2024_01_15_0000));
        assert_eq!(list(LIST_SAMPLES[3]).name, b"name with spaces");
    }

    #[test]
    fn proftpd_list() {
        assert_eq!(
            list(LIST_SAMPLES[4]),
            file_p(Precision::Day, b"name", 1234, at(T_2024_01_15_0000))
        );
        let dir = list(LIST_SAMPLES[5]);
        assert_eq!(
            (dir.name.as_slice(), &dir.kind),
            (&b"dir"[..], &EntryKind::Dir)
        );
        assert_eq!(dir.mtime, at(T_2024_01_15_0345));
        assert_eq!(
            list(LIST_SAMPLES[6]).kind,
            EntryKind::Symlink(b"releases/1.2.3".to_vec())
        );
    }

    #[test]
    fn pure_ftpd_list() {
        assert_eq!(
            list(LIST_SAMPLES[7]),
            file(b"name", 1234, at(T_2024_01_15_0345))
        );
        assert_eq!(list(LIST_SAMPLES[8]).kind, EntryKind::Dir);
    }

    #[test]
    fn owner_group_variants() {
        // Named owner and group, single-digit day padded with a space.
        let e = list(b"-rw-r--r--   1 user  group  1234 Jan  5 12:00 x");
        assert_eq!(e.name, b"x");
        assert_eq!(e.size, 1234);
        // 2025-01-05 12:00 is exactly now + 2 days: still this year.
        assert_eq!(e.mtime, at(1_736_078_400));
        // Only one of owner/group.
        assert_eq!(
            list(b"-rw-r--r-- 1 ftp 1234 Jan 15 2024 x"),
            file_p(Precision::Day, b"x", 1234, at(T_2024_01_15_0000))
        );
        // Neither owner nor group.
        assert_eq!(
            list(b"-rw-r--r-- 1 1234 Jan 15 2024 x"),
            file_p(Precision::Day, b"x", 1234, at(T_2024_01_15_0000))
        );
        // An owner called like a month and a numeric group.
        assert_eq!(
            list(b"-rw-r--r-- 1 jan 15 1234 Jan 15 2024 x"),
            file_p(Precision::Day, b"x", 1234, at(T_2024_01_15_0000))
        );
        // A group name with a space (Windows servers faking ls).
        assert_eq!(
            list(b"-rw-r--r-- 1 owner Domain Users 1234 Jan 15 2024 x"),
            file_p(Precision::Day, b"x", 1234, at(T_2024_01_15_0000))
        );
        // Tabs between columns.
        assert_eq!(
            list(b"-rw-r--r--\t1\tftp\tftp\t1234\tJan\t15\t2024\tx").name,
            b"x"
        );
    }

    #[test]
    fn permission_suffixes_and_case() {
        for line in &LIST_SAMPLES[11..14] {
            list(line);
        }
        assert_eq!(
            list(b"-rw-r--r-- 1 a b 1 JAN 15 2024 x").mtime,
            at(T_2024_01_15_0000)
        );
        assert_eq!(
            list(b"-rw-r--r-- 1 a b 1 jan 15 2024 x").mtime,
            at(T_2024_01_15_0000)
        );
        assert_eq!(
            list(b"-rwsr-sr-t 1 a b 1 Jan 15 2024 x").kind,
            EntryKind::File
        );
        assert!(parse_list_line(b"-rw-r--r--x 1 a b 1 Jan 15 2024 x", now()).is_err());
        assert!(parse_list_line(b"-rw-r--r--++ 1 a b 1 Jan 15 2024 x", now()).is_err());
    }

    #[test]
    fn names_with_spaces_are_preserved() {
        let cases: &[(&[u8], &[u8])] = &[
            (
                b"-rw-r--r--    1 0        0               5 Jan 15 03:45  leading",
                b" leading",
            ),
            (
                b"-rw-r--r--    1 0        0               5 Jan 15 03:45 trailing  ",
                b"trailing  ",
            ),
            (
                b"-rw-r--r--    1 0        0               5 Jan 15 03:45 double  space",
                b"double  space",
            ),
            (
                b"-rw-r--r--    1 0        0               5 Jan 15  2024   three",
                b"  three",
            ),
            (
                b"-rw-r--r--    1 0        0               5 Jan 15 03:45  ",
                b" ",
            ),
            (
                b"-rw-r--r--    1 0        0               5 Jan 15 03:45 Jan 15 2024",
                b"Jan 15 2024",
            ),
            (
                b"-rw-r--r--    1 0        0               5 Jan 15 03:45 a;b -> c",
                b"a;b -> c",
            ),
            (
                b"-rw-r--r-- 1 root root 5 2024-01-15 03:45  iso spaced ",
                b" iso spaced ",
            ),
        ];
        for &(line, name) in cases {
            assert_eq!(list(line).name, name, "{:?}", String::from_utf8_lossy(line));
        }
    }

    #[test]
    fn symlinks() {
        let e = list(b"lrwxrwxrwx 1 ftp ftp 19 Jan 15  2024 my link -> ../other dir/x");
        assert_eq!(e.name, b"my link");
        assert_eq!(e.kind, EntryKind::Symlink(b"../other dir/x".to_vec()));
        let e = list(b"lrwxrwxrwx 1 ftp ftp 19 Jan 15  2024 abs -> /etc/passwd");
        assert_eq!(e.kind, EntryKind::Symlink(b"/etc/passwd".to_vec()));
        // No arrow at all: target unknown.
        let e = list(b"lrwxrwxrwx 1 ftp ftp 19 Jan 15  2024 bare");
        assert_eq!(e.kind, EntryKind::Symlink(Vec::new()));
        // Empty target is rejected.
        assert_eq!(
            parse_list_line(b"lrwxrwxrwx 1 ftp ftp 19 Jan 15  2024 name -> ", now()),
            Err("empty symlink target")
        );
        // Target with NUL.
        assert_eq!(
            parse_list_line(b"lrwxrwxrwx 1 ftp ftp 19 Jan 15  2024 name -> a\0b", now()),
            Err("symlink target contains NUL, CR or LF")
        );
        // Link name that is invalid.
        assert_eq!(
            parse_list_line(b"lrwxrwxrwx 1 ftp ftp 19 Jan 15  2024 a/b -> c", now()),
            Err("name contains /")
        );
    }

    #[test]
    fn total_dot_and_skipped_types() {
        for line in [
            &b"total 12"[..],
            b"total 0",
            b"TOTAL 5",
            b"total",
            b"",
            b"   ",
            b"\r",
            b"drwxr-xr-x    2 0        0            4096 Jan 15 03:45 .",
            b"drwxr-xr-x    2 0        0            4096 Jan 15 03:45 ..",
            b"crw-rw-rw-    1 0        0          1,   3 Jan 15 03:45 null",
            b"brw-rw----    1 0        6          8,   0 Jan 15 03:45 sda",
            b"prw-r--r--    1 0        0               0 Jan 15 03:45 fifo",
            b"srwxrwxrwx    1 0        0               0 Jan 15 03:45 sock",
            b"01-15-24  03:45PM       <DIR>          .",
            b"01-15-24  03:45PM       <DIR>          ..",
        ] {
            assert_eq!(
                parse_list_line(line, now()),
                Ok(None),
                "{:?}",
                String::from_utf8_lossy(line)
            );
        }
        // A file really called "total 12x" is not a total line... but it is
        // not a listing line either.
        assert!(parse_list_line(b"total 12 x", now()).is_err());
    }

    #[test]
    fn year_resolution_around_new_year() {
        // now = 2025-01-03 12:00 UTC
        assert_eq!(
            list(b"-rw-r--r--    1 0        0               1 Dec 30 10:00 a").mtime,
            at(1_735_552_800) // 2024-12-30 10:00
        );
        assert_eq!(
            list(b"-rw-r--r--    1 0        0               1 Jan 02 10:00 a").mtime,
            at(1_735_812_000) // 2025-01-02 10:00
        );
        assert_eq!(
            list(b"-rw-r--r--    1 0        0               1 Jan  5 10:00 a").mtime,
            at(1_736_071_200) // 2025-01-05 10:00, within the 2-day slack
        );
        assert_eq!(
            list(b"-rw-r--r--    1 0        0               1 Jan  6 10:00 a").mtime,
            at(1_704_535_200) // 2024-01-06 10:00
        );
        // Dec 31 seen on Dec 30: still this year.
        let dec30 = UNIX_EPOCH + Duration::from_secs(1_735_552_800);
        let e = parse_list_line(b"-rw-r--r-- 1 0 0 1 Dec 31 23:59 a", dec30);
        assert_eq!(e.map(|e| e.and_then(|e| e.mtime)), Ok(at(1_735_689_540)));
        // Jan 1 seen on Dec 31 (within slack): next year.
        let dec31 = UNIX_EPOCH + Duration::from_secs(1_735_639_200); // 2024-12-31 10:00
        let e = parse_list_line(b"-rw-r--r-- 1 0 0 1 Jan  1 00:30 a", dec31);
        assert_eq!(e.map(|e| e.and_then(|e| e.mtime)), Ok(at(1_735_691_400)));
        // Feb 29 resolves to the most recent leap year.
        assert_eq!(
            list(b"-rw-r--r-- 1 0 0 1 Feb 29 12:00 a").mtime,
            at(1_709_208_000) // 2024-02-29 12:00
        );
        // Explicit years are taken as is, at midnight UTC.
        assert_eq!(
            list(b"-rw-r--r-- 1 0 0 1 Dec 30  1999 a").mtime,
            at(946_512_000)
        );
        // A well-formed but impossible date keeps the entry without mtime.
        let e = list(b"-rw-r--r-- 1 0 0 1 Feb 30  2024 a");
        assert_eq!((e.name.as_slice(), e.mtime), (&b"a"[..], None));
    }

    #[test]
    fn iso_dates() {
        assert_eq!(
            list(LIST_SAMPLES[14]),
            file(b"iso", 1234, at(T_2024_01_15_0345))
        );
        assert_eq!(
            list(LIST_SAMPLES[15]),
            file_p(Precision::Second, b"fulliso", 1234, at(T_2024_01_15_0345))
        );
        let e = list(b"-rw-r--r-- 1 root root 1 2024-01-15 05:45:00.5 +0200 zoned");
        assert_eq!(e.name, b"zoned");
        assert_eq!(
            e.mtime,
            at(T_2024_01_15_0345).map(|t| t + Duration::from_millis(500))
        );
    }

    #[test]
    fn now_extremes_do_not_panic() {
        for now in [
            UNIX_EPOCH,
            UNIX_EPOCH - Duration::from_secs(1),
            UNIX_EPOCH - Duration::from_nanos(1),
            UNIX_EPOCH + Duration::from_secs(u64::from(u32::MAX) * 1000),
            UNIX_EPOCH + Duration::from_secs(i64::MAX.unsigned_abs()),
        ] {
            let _ = parse_list_line(b"-rw-r--r-- 1 0 0 1 Feb 29 12:00 a", now);
        }
        let before = UNIX_EPOCH - Duration::from_secs(1);
        let e = parse_list_line(b"-rw-r--r-- 1 0 0 1 Dec 31 23:00 a", before);
        assert_eq!(
            e.map(|e| e.and_then(|e| e.mtime)),
            Ok(Some(UNIX_EPOCH - Duration::from_secs(3600)))
        );
    }

    // ----- DOS / IIS LIST -------------------------------------------------

    /// proftpd 1.3.8 as captured: MLSD names symlinks without target, its STAT
    /// listing (what the symlink resolution asks for) gives `name -> target`.
    #[test]
    fn proftpd_138_symlink_targets_come_from_its_ls_listing() {
        let mlsd_lines: &[&[u8]] = &[
            b"modify=20261201054550;perm=adfrw;size=6;type=file;unique=FE00U9906C2;UNIX.group=0;UNIX.groupname=root;UNIX.mode=0644;UNIX.owner=0;UNIX.ownername=u; f.txt",
            b"modify=20261201054550;perm=adfrw;size=3;type=OS.unix=symlink;unique=FE00U9906A3;UNIX.group=0;UNIX.groupname=root;UNIX.mode=0777;UNIX.owner=0;UNIX.ownername=u; dirlink",
            b"modify=20261201054551;perm=flcdmpe;type=cdir;unique=FE00U990682;UNIX.group=0;UNIX.groupname=root;UNIX.mode=0755;UNIX.owner=0;UNIX.ownername=u; .",
            b"modify=20261201054550;perm=adfrw;size=10;type=OS.unix=symlink;unique=FE00U9906C2;UNIX.group=0;UNIX.groupname=root;UNIX.mode=0777;UNIX.owner=0;UNIX.ownername=u; abs",
        ];
        let mlsd = parse_listing(mlsd_lines, Format::Mlsd, now());
        let kinds: Vec<(&[u8], &EntryKind)> = mlsd
            .entries
            .iter()
            .map(|e| (e.name.as_slice(), &e.kind))
            .collect();
        assert_eq!(
            kinds,
            [
                (&b"f.txt"[..], &EntryKind::File),
                (b"dirlink", &EntryKind::Symlink(Vec::new())),
                (b"abs", &EntryKind::Symlink(Vec::new())),
            ]
        );
        let stat_lines: &[&[u8]] = &[
            b"drwxr-xr-x   3 u        root         4096 Dec  1 05:45 .",
            b"lrwxrwxrwx   1 u        root           10 Dec  1 05:45 abs -> /pub/f.txt",
            b"lrwxrwxrwx   1 u        root            7 Dec  1 05:45 dangling -> nowhere",
            b"lrwxrwxrwx   1 u        root            3 Dec  1 05:45 dirlink -> sub",
            b"lrwxrwxrwx   1 u        root           28 Dec  1 05:45 evil -> ../../../../../../etc/passwd",
            b"-rw-r--r--   1 u        root            6 Dec  1 05:45 f.txt",
        ];
        let ls = parse_listing(stat_lines, Format::List, now());
        let targets: Vec<(&[u8], &[u8])> = ls
            .entries
            .iter()
            .filter_map(|e| match &e.kind {
                EntryKind::Symlink(t) => Some((e.name.as_slice(), t.as_slice())),
                _ => None,
            })
            .collect();
        assert_eq!(
            targets,
            [
                (&b"abs"[..], &b"/pub/f.txt"[..]),
                (b"dangling", b"nowhere"),
                (b"dirlink", b"sub"),
                (b"evil", b"../../../../../../etc/passwd"),
            ]
        );
        assert!(ls.skipped.is_empty(), "{:?}", ls.skipped);
    }

    #[test]
    fn mtime_precision_follows_the_format() {
        let p = |line: &[u8]| {
            let e = list(line);
            (e.mtime.is_some(), e.mtime_precision)
        };
        use Precision::*;
        assert_eq!(p(b"-rw-r--r-- 1 0 0 1 Jan 15 03:45 a"), (true, Minute));
        assert_eq!(p(b"-rw-r--r-- 1 0 0 1 Jan 15  2024 a"), (true, Day));
        assert_eq!(p(b"lrwxrwxrwx 1 0 0 1 Jan 15  2024 a -> b"), (true, Day));
        assert_eq!(p(b"drwxr-xr-x 1 0 0 1 Jan 15 03:45 a"), (true, Minute));
        assert_eq!(p(b"-rw-r--r-- 1 0 0 1 2024-01-15 03:45 a"), (true, Minute));
        assert_eq!(
            p(b"-rw-r--r-- 1 0 0 1 2024-01-15 03:45:07 a"),
            (true, Second)
        );
        assert_eq!(
            p(b"-rw-r--r-- 1 0 0 1 2024-01-15 03:45:07.25 +0100 a"),
            (true, Second)
        );
        assert_eq!(p(b"01-15-24  03:45AM  1 a"), (true, Minute));
        assert_eq!(p(b"01-15-2024  15:45  <DIR>  a"), (true, Minute));
        let e = mlsd(b"type=file;size=1;modify=20240115034507.5; a");
        assert_eq!(e.mtime_precision, Second);
        // Compared at the coarser one, truncating to whole units.
        let t = |s: u64| UNIX_EPOCH + Duration::from_secs(s);
        let minute = T_2024_01_15_0345;
        assert!(Precision::same_time(
            t(minute + 59),
            Second,
            t(minute),
            Minute
        ));
        assert!(!Precision::same_time(
            t(minute + 60),
            Second,
            t(minute),
            Minute
        ));
        assert!(Precision::same_time(
            t(minute),
            Minute,
            t(T_2024_01_15_0000),
            Day
        ));
        assert!(!Precision::same_time(
            t(minute),
            Second,
            t(minute + 1),
            Second
        ));
        assert!(Precision::same_time(t(minute), Day, t(minute + 1), Second));
        // Before the epoch, truncation still goes towards the earlier unit.
        assert!(!Precision::same_time(
            t(0),
            Day,
            UNIX_EPOCH - Duration::from_secs(1),
            Second
        ));
    }

    #[test]
    fn iis_list() {
        let dir = list(LIST_SAMPLES[18]);
        assert_eq!(dir.name, b"aspnet_client");
        assert_eq!(dir.kind, EntryKind::Dir);
        assert_eq!(dir.mtime, at(T_2024_01_15_0345 + 12 * 3600));
        assert_eq!(
            list(LIST_SAMPLES[19]),
            file(b"name with spaces.txt", 1234, at(1_705_316_700))
        );
        assert_eq!(
            list(LIST_SAMPLES[20]),
            file(b"twentyfour.txt", 1234, at(1_705_333_500))
        );
        assert_eq!(list(LIST_SAMPLES[21]).size, 689);
        // 12 AM / 12 PM, separate meridiem token, two-digit 19xx year.
        assert_eq!(
            list(b"01-15-99  12:00AM  1 a").mtime,
            at(916_358_400) // 1999-01-15 00:00
        );
        assert_eq!(
            list(b"01-15-24  12:30PM  1 a").mtime,
            at(T_2024_01_15_0000 + 12 * 3600 + 1800)
        );
        assert_eq!(
            list(b"01-15-24  03:45 PM  1 a").mtime,
            at(T_2024_01_15_0345 + 12 * 3600)
        );
        assert_eq!(list(b"01-15-69  03:45PM  1 a").mtime, at(3_125_490_300));
        assert_eq!(list(b"01-15-70  03:45PM  1 a").mtime, at(1_266_300));
        // Leading and trailing spaces of file names survive.
        assert_eq!(list(b"01-15-24  03:45PM   1234  two  ").name, b" two  ");
        // Thousands separators.
        assert_eq!(list(b"01-15-24  03:45PM   1,234,567 big").size, 1_234_567);
        assert_eq!(
            parse_list_line(b"01-15-24  13:45PM  1 a", now()),
            Err("unrecognised LIST line")
        );
        assert_eq!(
            parse_list_line(b"01-15-24  03:45PM  -1 a", now()),
            Err("negative size")
        );
        assert_eq!(
            parse_list_line(b"01-15-24  03:45PM       <DIR>          ", now()),
            Err("empty name")
        );
    }

    // ----- MLSD ----------------------------------------------------------

    #[test]
    fn proftpd_mlsd() {
        assert_eq!(
            mlsd(MLSD_SAMPLES[0]),
            file_p(Precision::Second, b"name", 1234, at(T_2024_01_15_0345))
        );
        let dir = mlsd(MLSD_SAMPLES[1]);
        assert_eq!(
            (dir.name.as_slice(), dir.kind, dir.size),
            (&b"dir"[..], EntryKind::Dir, 0)
        );
        assert_eq!(parse_mlsd_line(MLSD_SAMPLES[2]), Ok(None));
        assert_eq!(parse_mlsd_line(MLSD_SAMPLES[3]), Ok(None));
        let link = mlsd(MLSD_SAMPLES[4]);
        assert_eq!(link.kind, EntryKind::Symlink(Vec::new()));
        assert_eq!(link.size, 19);
    }

    #[test]
    fn pure_ftpd_mlsd() {
        assert_eq!(
            mlsd(MLSD_SAMPLES[5]),
            file_p(Precision::Second, b"name", 1234, at(T_2024_01_15_0345))
        );
        let link = mlsd(MLSD_SAMPLES[6]);
        assert_eq!(link.name, b"link");
        assert_eq!(link.kind, EntryKind::Symlink(b"/target".to_vec()));
        let dir = mlsd(MLSD_SAMPLES[7]);
        assert_eq!((dir.kind, dir.size), (EntryKind::Dir, 4096));
        // Symlink target with spaces and a name with "; ".
        let link = mlsd(b"type=OS.unix=slink:../a b;size=3; my; link");
        assert_eq!(link.name, b"my; link");
        assert_eq!(link.kind, EntryKind::Symlink(b"../a b".to_vec()));
    }

    #[test]
    fn pyftpdlib_mlsd() {
        assert_eq!(
            mlsd(MLSD_SAMPLES[8]),
            file_p(
                Precision::Second,
                b"name",
                1234,
                at(T_2024_01_15_0345).map(|t| t + Duration::from_millis(123))
            )
        );
        assert_eq!(mlsd(MLSD_SAMPLES[9]).name, b"sub dir");
    }

    #[test]
    fn mlsd_details() {
        // Case-insensitive facts and types, name with leading/trailing
        // spaces and semicolons.
        let e = mlsd(b"TYPE=FILE;SIZE=5;MODIFY=20240115034500;  a;b=c; ");
        assert_eq!(
            e,
            file_p(Precision::Second, b" a;b=c; ", 5, at(T_2024_01_15_0345))
        );
        // No facts at all is not enough: the type is required.
        assert_eq!(
            parse_mlsd_line(b" name"),
            Err("MLSD line without a type fact")
        );
        // Missing final ';' before the name.
        assert_eq!(mlsd(b"type=file;size=5 name").name, b"name");
        // Stray CR.
        assert_eq!(mlsd(b"type=file;size=5; name\r").name, b"name");
        // Bad modify keeps the entry without a time.
        assert_eq!(mlsd(b"type=file;size=5;modify=2024; name").mtime, None);
        assert_eq!(
            mlsd(b"type=file;size=5;modify=20240230000000; name").mtime,
            None
        );
        // Devices and other OS types are skipped silently.
        assert_eq!(
            parse_mlsd_line(b"type=OS.unix=blkdev;size=0; sda"),
            Ok(None)
        );
        assert_eq!(parse_mlsd_line(b"type=OS.unix=chr-13/29; tty"), Ok(None));
        assert_eq!(parse_mlsd_line(b"type=OS.vms=foo; x"), Ok(None));
        assert_eq!(
            parse_mlsd_line(b"type=weird; x"),
            Err("unknown MLSD entry type")
        );
        assert_eq!(
            parse_mlsd_line(b"type=file;size; x"),
            Err("malformed MLSD fact")
        );
        assert_eq!(
            parse_mlsd_line(b"type=file;size=1;name"),
            Err("no space between MLSD facts and name")
        );
        assert_eq!(parse_mlsd_line(b"type=file; ."), Ok(None));
        assert_eq!(parse_mlsd_line(b""), Ok(None));
        // Unknown-target symlink spelled as pure-ftpd would without target.
        assert_eq!(
            mlsd(b"type=OS.unix=slink;size=1; l").kind,
            EntryKind::Symlink(Vec::new())
        );
        assert_eq!(
            parse_mlsd_line(b"type=OS.unix=slink:a\rb; l"),
            Err("symlink target contains NUL, CR or LF")
        );
    }

    // ----- Validation -----------------------------------------------------

    #[test]
    fn valid_name_rules() {
        assert_eq!(valid_name(b"ok name"), Ok(()));
        assert_eq!(valid_name(&[0xe9, b'x']), Ok(()));
        assert_eq!(valid_name(&[b'a'; 255]), Ok(()));
        assert_eq!(valid_name(b""), Err("empty name"));
        assert_eq!(valid_name(b"."), Err("name is . or .."));
        assert_eq!(valid_name(b".."), Err("name is . or .."));
        assert_eq!(valid_name(b"../x"), Err("name contains /"));
        assert_eq!(valid_name(b"a/b"), Err("name contains /"));
        assert_eq!(valid_name(b"a\0b"), Err("name contains NUL"));
        assert_eq!(valid_name(b"a\rb"), Err("name contains CR or LF"));
        assert_eq!(valid_name(b"a\nb"), Err("name contains CR or LF"));
        assert_eq!(valid_name(&[b'a'; 256]), Err("name longer than 255 bytes"));
        assert_eq!(valid_name(b"..."), Ok(()));
    }

    fn vsftpd_line(name: &[u8]) -> Vec<u8> {
        let mut line = b"-rw-r--r--    1 0        0            1234 Jan 15 03:45 ".to_vec();
        line.extend_from_slice(name);
        line
    }

    fn mlsd_line(name: &[u8]) -> Vec<u8> {
        let mut line = b"type=file;size=1234;modify=20240115034500; ".to_vec();
        line.extend_from_slice(name);
        line
    }

    #[test]
    fn rejections() {
        let bad_names: &[(&[u8], &str)] = &[
            (b"../x", "name contains /"),
            (b"a/b", "name contains /"),
            (b"a\0b", "name contains NUL"),
            (b"a\rb", "name contains CR or LF"),
            (b"a\nb", "name contains CR or LF"),
            (&[b'n'; 256], "name longer than 255 bytes"),
        ];
        for &(name, reason) in bad_names {
            assert_eq!(parse_list_line(&vsftpd_line(name), now()), Err(reason));
            assert_eq!(parse_mlsd_line(&mlsd_line(name)), Err(reason));
            let mut dos = b"01-15-24  03:45PM  1 ".to_vec();
            dos.extend_from_slice(name);
            assert_eq!(parse_list_line(&dos, now()), Err(reason));
        }
        assert_eq!(list(&vsftpd_line(&[b'n'; 255])).name.len(), 255);
        // `.` and `..` are not errors but are never entries.
        assert_eq!(parse_list_line(&vsftpd_line(b"."), now()), Ok(None));
        assert_eq!(parse_list_line(&vsftpd_line(b".."), now()), Ok(None));
        assert_eq!(parse_mlsd_line(&mlsd_line(b"..")), Ok(None));
        // Empty names.
        assert_eq!(
            parse_list_line(
                b"-rw-r--r--    1 0        0            1234 Jan 15 03:45",
                now()
            ),
            Err("empty name")
        );
        assert_eq!(parse_mlsd_line(b"type=file;size=1; "), Err("empty name"));
        // Sizes.
        let sizes: &[(&[u8], &str)] = &[
            (b"-1234", "negative size"),
            (b"4611686018427387905", "absurd size"),
            (b"99999999999999999999999", "absurd size"),
            (b"12a", "invalid size"),
            (b"", "invalid size"),
            (b"+5", "invalid size"),
        ];
        for &(size, reason) in sizes {
            let mut line = b"type=file;size=".to_vec();
            line.extend_from_slice(size);
            line.extend_from_slice(b"; x");
            assert_eq!(parse_mlsd_line(&line), Err(reason), "{size:?}");
        }
        assert_eq!(
            parse_list_line(b"-rw-r--r-- 1 0 0 -1234 Jan 15 03:45 x", now()),
            Err("negative size")
        );
        assert_eq!(
            parse_list_line(
                b"-rw-r--r-- 1 0 0 4611686018427387905 Jan 15 03:45 x",
                now()
            ),
            Err("absurd size")
        );
        assert_eq!(
            list(b"-rw-r--r-- 1 0 0 4611686018427387904 Jan 15 03:45 x").size,
            1 << 62
        );
        assert_eq!(
            parse_list_line(b"01-15-24  03:45PM  99999999999999999999 x", now()),
            Err("absurd size")
        );
        // Garbage.
        for garbage in [
            &b"hello world"[..],
            b"550 No such file or directory",
            b"-rw-r--r-- 1 0 0 1234 Foo 15 03:45 x",
            b"-rw-r--r-- 1 0 0 1234 Jan 32 03:45 x",
            b"-rw-r--r-- 1 0 0 1234 Jan 15 25:00 x",
            b"-rw-r--r--",
            b"drwxr-xr-x",
            b"13-45-24  03:45PM  1 x",
            b"\xff\xfe\x00\x01",
            b"-rw-r--r-- 1 0 0 1234 Jan 15",
        ] {
            assert!(
                parse_list_line(garbage, now()).is_err(),
                "{:?}",
                String::from_utf8_lossy(garbage)
            );
        }
        for garbage in [&b"hello world"[..], b"type", b"=;=; x", b";;; x"] {
            assert!(parse_mlsd_line(garbage).is_err(), "{garbage:?}");
        }
    }

    #[test]
    fn latin1_names_round_trip() {
        // "café ü" in latin-1: not valid UTF-8.
        let name: &[u8] = b"caf\xe9 \xfc";
        assert_eq!(list(&vsftpd_line(name)).name, name);
        assert_eq!(mlsd(&mlsd_line(name)).name, name);
        let mut dos = b"01-15-24  03:45PM  1 ".to_vec();
        dos.extend_from_slice(name);
        assert_eq!(list(&dos).name, name);
        let link = list(b"lrwxrwxrwx 1 0 0 1 Jan 15 03:45 \xe9 -> \xfc\xff");
        assert_eq!(link.name, b"\xe9");
        assert_eq!(link.kind, EntryKind::Symlink(b"\xfc\xff".to_vec()));
    }

    // ----- Whole listings -------------------------------------------------

    #[test]
    fn parse_listing_list() {
        let lines: Vec<&[u8]> = vec![
            b"total 24",
            b"drwxr-xr-x    2 0        0            4096 Jan 15 03:45 .",
            b"drwxr-xr-x    2 0        0            4096 Jan 15 03:45 ..",
            LIST_SAMPLES[0],
            LIST_SAMPLES[1],
            LIST_SAMPLES[2],
            b"-rw-r--r--    1 0        0               9 Jan 15 03:45 name",
            b"garbage line",
            b"-rw-r--r--    1 0        0               9 Jan 15 03:45 a/b",
            LIST_SAMPLES[18],
            b"crw-rw-rw-    1 0        0          1,   3 Jan 15 03:45 null",
        ];
        let listing = parse_listing(&lines, Format::List, now());
        let names: Vec<&[u8]> = listing.entries.iter().map(|e| e.name.as_slice()).collect();
        assert_eq!(names, [&b"name"[..], b"pub", b"link", b"aspnet_client"]);
        // The first "name" wins.
        assert_eq!(listing.entries[0].size, 1234);
        let reasons: Vec<&str> = listing.skipped.iter().map(|s| s.reason).collect();
        assert_eq!(
            reasons,
            [
                "duplicate name",
                "unrecognised LIST line",
                "name contains /"
            ]
        );
        assert_eq!(listing.skipped[1].line, b"garbage line");
    }

    #[test]
    fn parse_listing_mlsd_and_owned_lines() {
        let lines: Vec<Vec<u8>> = MLSD_SAMPLES.iter().map(|l| l.to_vec()).collect();
        let listing = parse_listing(&lines, Format::Mlsd, now());
        let names: Vec<&[u8]> = listing.entries.iter().map(|e| e.name.as_slice()).collect();
        assert_eq!(names, [&b"name"[..], b"dir", b"link", b"sub dir"]);
        assert_eq!(listing.skipped.len(), 4);
        assert!(listing.skipped.iter().all(|s| s.reason == "duplicate name"));
        // The proftpd entries came first.
        assert_eq!(listing.entries[2].kind, EntryKind::Symlink(Vec::new()));
    }

    #[test]
    fn skipped_lines_are_truncated() {
        let long = vec![b'x'; 1000];
        let listing = parse_listing(&[long], Format::Mlsd, now());
        assert_eq!(listing.skipped.len(), 1);
        assert_eq!(listing.skipped[0].line.len(), 200);
    }

    #[test]
    fn hundred_thousand_entries() {
        let list_lines: Vec<Vec<u8>> = (0..100_000)
            .map(|i| vsftpd_line(format!("file number {i}.dat").as_bytes()))
            .collect();
        let mlsd_lines: Vec<Vec<u8>> = (0..100_000)
            .map(|i| mlsd_line(format!("file number {i}.dat").as_bytes()))
            .collect();
        for (lines, format) in [(&list_lines, Format::List), (&mlsd_lines, Format::Mlsd)] {
            // No timing asserted here (speed belongs to scripts/, not to tests): a quadratic
            // parser would still finish, only slowly; the fuzz targets' per-input timeout
            // catches that.
            let listing = parse_listing(lines, format, now());
            assert_eq!(listing.entries.len(), 100_000, "{format:?}");
            assert!(listing.skipped.is_empty(), "{format:?}");
        }
        // All duplicates: the first is kept, every other one skipped with its reason.
        let dups = vec![vsftpd_line(b"same"); 100_000];
        let listing = parse_listing(&dups, Format::List, now());
        assert_eq!(listing.entries.len(), 1);
        assert_eq!(listing.skipped.len(), 99_999);
    }

    #[test]
    fn long_hostile_lines_are_rejected() {
        // One huge line of tokens that almost look like a date.
        let mut line = b"-rw-r--r-- 1 0 0".to_vec();
        for _ in 0..200_000 {
            line.extend_from_slice(b" 1 Jan 15");
        }
        assert!(parse_list_line(&line, now()).is_err());
        let mut semis = b"type=file".to_vec();
        semis.extend(std::iter::repeat_n(b';', 1_000_000));
        semis.extend_from_slice(b"x");
        assert!(parse_mlsd_line(&semis).is_err());
    }

    /// Every prefix of every sample line (and of a few mangled variants)
    /// must parse without panicking, with both parsers.
    #[test]
    fn prefixes_never_panic() {
        let mut lines: Vec<Vec<u8>> = Vec::new();
        for sample in LIST_SAMPLES.iter().chain(MLSD_SAMPLES) {
            lines.push(sample.to_vec());
            let mut with_cr = sample.to_vec();
            with_cr.push(b'\r');
            lines.push(with_cr);
            lines.push(
                sample
                    .iter()
                    .map(|&b| if b == b' ' { b'\t' } else { b })
                    .collect(),
            );
            lines.push(sample.iter().map(|&b| b ^ 0x80).collect());
        }
        let nows = [
            now(),
            UNIX_EPOCH,
            UNIX_EPOCH - Duration::from_secs(86_400 * 365),
        ];
        for line in &lines {
            for end in 0..=line.len() {
                let prefix = &line[..end];
                let suffix = &line[end..];
                for piece in [prefix, suffix] {
                    for now in nows {
                        check_entry(parse_list_line(piece, now));
                    }
                    check_entry(parse_mlsd_line(piece));
                }
            }
        }
        // And the whole thing as listings, split at every byte.
        let blob: Vec<u8> = lines.join(&b'\n');
        let pieces: Vec<&[u8]> = blob.split(|&b| b == b'\n').collect();
        for format in [Format::List, Format::Mlsd] {
            let listing = parse_listing(&pieces, format, now());
            for entry in &listing.entries {
                assert_eq!(valid_name(&entry.name), Ok(()));
            }
        }
    }

    fn check_entry(result: Result<Option<RawEntry>, &'static str>) {
        if let Ok(Some(entry)) = result {
            assert_eq!(valid_name(&entry.name), Ok(()));
            assert!(entry.size <= MAX_SIZE);
            if let EntryKind::Symlink(target) = &entry.kind {
                assert_eq!(valid_target(target), Ok(()));
            }
        }
    }

    /// Same body as fuzz/fuzz_targets/listing.rs, run over a few inputs so
    /// the fuzz target is known to compile and hold.
    fn fuzz_body(data: &[u8]) {
        let lines: Vec<&[u8]> = data.split(|&b| b == b'\n').collect();
        let nows = [UNIX_EPOCH + Duration::from_secs(1_735_905_600), UNIX_EPOCH];
        for now in nows {
            for format in [Format::Mlsd, Format::List] {
                let listing = parse_listing(&lines, format, now);
                let mut names = HashSet::new();
                for entry in &listing.entries {
                    assert_eq!(valid_name(&entry.name), Ok(()), "{entry:?}");
                    assert!(names.insert(entry.name.as_slice()), "duplicate {entry:?}");
                }
                for skipped in &listing.skipped {
                    assert!(skipped.line.len() <= 200);
                }
            }
        }
    }

    #[test]
    fn fuzz_body_on_samples() {
        let mut all: Vec<u8> = Vec::new();
        for sample in LIST_SAMPLES.iter().chain(MLSD_SAMPLES) {
            all.extend_from_slice(sample);
            all.push(b'\n');
            fuzz_body(sample);
        }
        fuzz_body(&all);
        fuzz_body(b"");
        fuzz_body(b"\n\n\r\n");
        // A tiny deterministic pseudo-random byte soup.
        let mut state: u32 = 0x1234_5678;
        let alphabet: &[u8] = b" \n;=-:0123456789drwxlJanDec<DIR>PM\xe9/.";
        let mut soup = Vec::with_capacity(1 << 16);
        for _ in 0..(1 << 16) {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            let index = usize::try_from(state).unwrap_or(0) % alphabet.len();
            soup.push(alphabet[index]);
        }
        fuzz_body(&soup);
    }
}
