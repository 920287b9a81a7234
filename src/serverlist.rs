//! The server list: finding, reading and validating `serverlist.txt`.
//!
//! This module owns everything between "which file?" and a validated
//! `Vec<ServerSpec>`: locating the file, decoding it, parsing each line,
//! resolving password references and refusing anything ambiguous. Every
//! problem becomes a [`ServerListError`] that displays as `FILE:LINE: message`
//! (or `FILE: message`); the program prints it and exits with status 2 before
//! mounting, so the messages are written for the person editing the file.
//!
//! # Format
//!
//! One server per line, four CSV columns: `server,user,pass,tlstoggle`.
//!
//! * `server`: `host`, `host:port`, `[v6addr]` or `[v6addr]:port`, optionally
//!   followed by a base path (`host:2121/pub/mirror`) whose contents become
//!   that server's root in the merged tree. IPv6 literals need brackets, since
//!   otherwise the port could not be told apart. The port defaults to 21, or
//!   990 for implicit TLS. Base paths are normalised (`//` collapsed, trailing
//!   `/` dropped, empty means `/`); `.`/`..` components and control characters
//!   are rejected because they would make the "root" ambiguous.
//! * `user`: empty means anonymous login (`anonymous`, password `anonymous@`
//!   when the password is empty too).
//! * `pass`: used verbatim, untrimmed, because spaces can be part of a
//!   password. `env:NAME` reads environment variable NAME, `file:/path`
//!   reads the first line of a file, and `raw:` escapes a literal password
//!   that starts with one of those prefixes (`raw:` is always stripped).
//! * `tlstoggle`: `0/false/no/off` (plain), `1/true/yes/on/explicit`
//!   (explicit FTPS), `implicit` (implicit FTPS); trimmed, case-insensitive.
//!
//! Blank lines and lines whose first non-blank character is `#` are skipped.
//! Every other field is trimmed. Quoting follows CSV: `"p,a""ss"` is `p,a"ss`.
//! Each line is parsed on its own, so a quoted field cannot run over into the
//! next line and line numbers in messages are always the physical line.
//! Line order is meaningful to the rest of the program (earlier servers win
//! conflicts in the merged tree), so the returned list keeps file order.
//!
//! # Secrets
//!
//! Passwords never appear in error messages or `Debug` output: [`Password`]
//! redacts itself, lines are never echoed, and an echoed field that happens
//! to contain the line's password is replaced by a placeholder.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fmt;
use std::fs;
use std::io::{self, BufRead, BufReader, Read};
use std::net::Ipv6Addr;
use std::path::{Path, PathBuf};

/// File name looked for by [`locate`].
const LIST_NAME: &str = "serverlist.txt";
const COLUMNS: [&str; 4] = ["server", "user", "pass", "tlstoggle"];
const COLUMNS_HINT: &str = "expected server,user,pass,tlstoggle";
const TLS_ACCEPTED: &str =
    "accepted: 0/false/no/off (plain), 1/true/yes/on/explicit (explicit FTPS), implicit";
const DEFAULT_PORT: u16 = 21;
const DEFAULT_IMPLICIT_PORT: u16 = 990;
const ANONYMOUS_USER: &str = "anonymous";
const ANONYMOUS_PASSWORD: &str = "anonymous@";
/// A server list is a few lines; refusing huge inputs keeps a mistaken path
/// (a log file, `/dev/zero`) from eating memory before we can complain.
const MAX_LIST_BYTES: u64 = 8 << 20;
/// Same idea for `file:` password references, which read only one line.
const MAX_SECRET_LINE: u64 = 64 << 10;

/// How the control connection is protected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tls {
    /// Plain FTP.
    Plain,
    /// `AUTH TLS` on the ordinary port (explicit FTPS).
    Explicit,
    /// TLS from the first byte (implicit FTPS, usually port 990).
    Implicit,
}

/// A password. It has no `Display` and its `Debug` is redacted, so it cannot
/// end up in a log line or error message by accident; use [`Password::expose`]
/// at the one place it is sent to the server.
#[derive(Clone)]
pub struct Password(String);

impl Password {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(***)")
    }
}

/// One validated line of the server list.
#[derive(Clone, Debug)]
pub struct ServerSpec {
    /// Host name or IP address, without brackets (`::1`, `ftp.example.org`).
    pub host: String,
    pub port: u16,
    /// Normalised base path: `/` or `/pub/mirror`.
    pub base: String,
    /// `anonymous` when the field was empty.
    pub user: String,
    pub password: Password,
    pub tls: Tls,
    /// 1-based line in the file, for messages that point back at it.
    pub line: usize,
}

impl ServerSpec {
    /// `host:port` plus the base path when it is not `/`; for logs, so it
    /// never includes the user or password.
    pub fn label(&self) -> String {
        let mut label = self.addr_string();
        if self.base != "/" {
            label.push_str(&self.base);
        }
        label
    }

    /// `host:port` or `[v6]:port`, the form socket address parsing expects.
    pub fn addr_string(&self) -> String {
        // Hosts are validated: only IPv6 literals can contain a colon.
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// Why the server list could not be used. `message` never contains a
/// password, so the whole error is safe to print.
#[derive(Debug)]
pub struct ServerListError {
    pub file: PathBuf,
    pub line: Option<usize>,
    pub message: String,
}

impl ServerListError {
    fn at(file: &Path, line: usize, message: impl Into<String>) -> Self {
        Self {
            file: file.to_path_buf(),
            line: Some(line),
            message: message.into(),
        }
    }

    fn whole(file: &Path, message: impl Into<String>) -> Self {
        Self {
            file: file.to_path_buf(),
            line: None,
            message: message.into(),
        }
    }
}

impl fmt::Display for ServerListError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{}: {}", self.file.display(), line, self.message),
            None => write!(f, "{}: {}", self.file.display(), self.message),
        }
    }
}

impl std::error::Error for ServerListError {}

/// Parses the contents of a server list. `file` is used only in messages.
/// `env:` and `file:` password references are resolved here.
///
/// # Errors
///
/// The first problem found, with its line number when one applies.
pub fn parse(file: &Path, content: &[u8]) -> Result<Vec<ServerSpec>, ServerListError> {
    let entries = parse_entries(file, content, &Sources::REAL)?;
    Ok(entries.into_iter().map(|e| e.spec).collect())
}

/// Reads and parses the server list at `file`. Warns (once) when the file is
/// readable by group or others and holds plain-text passwords.
///
/// # Errors
///
/// The file cannot be read, or anything [`parse`] rejects.
pub fn load(file: &Path) -> Result<Vec<ServerSpec>, ServerListError> {
    let (content, mode) = read_list(file)
        .map_err(|e| ServerListError::whole(file, format!("cannot read the server list: {e}")))?;
    let entries = parse_entries(file, &content, &Sources::REAL)?;
    if passwords_exposed(mode, &entries) {
        // Printed on the terminal even when the log goes to a file: the user must see it.
        crate::logging::warn_user(format_args!(
            "{}: readable by group/others (mode {:03o}) but contains passwords; run \
             `chmod 600 {}` or use env:/file: password references",
            file.display(),
            mode & 0o777,
            file.display()
        ));
    }
    Ok(entries.into_iter().map(|e| e.spec).collect())
}

/// Picks the server list to use: `explicit` if given (even if missing, so
/// that [`load`] reports the real problem), else `./serverlist.txt`, else
/// `$XDG_CONFIG_HOME/ftpcircle/serverlist.txt` (`$HOME/.config` by default).
///
/// # Errors
///
/// No explicit path and no file in any of those places; the message lists
/// the places searched.
pub fn locate(explicit: Option<&Path>) -> Result<PathBuf, String> {
    // Without a current directory only the relative form can be tried.
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
    locate_in(
        explicit,
        &cwd,
        std::env::var_os("XDG_CONFIG_HOME"),
        std::env::var_os("HOME"),
    )
}

/// [`locate`] with its environment passed in, so tests need not mutate the
/// process environment (which is `unsafe` and races other tests).
fn locate_in(
    explicit: Option<&Path>,
    cwd: &Path,
    xdg_config_home: Option<OsString>,
    home: Option<OsString>,
) -> Result<PathBuf, String> {
    if let Some(path) = explicit {
        return Ok(path.to_path_buf());
    }
    let mut candidates = vec![cwd.join(LIST_NAME)];
    let config = config_dir(xdg_config_home, home);
    if let Some(dir) = &config {
        candidates.push(dir.join("ftpcircle").join(LIST_NAME));
    }
    // symlink_metadata: a dangling symlink is still "the file the user
    // meant", and load() will explain what is wrong with it.
    if let Some(found) = candidates.iter().find(|c| fs::symlink_metadata(c).is_ok()) {
        return Ok(found.clone());
    }
    let searched: Vec<String> = candidates.iter().map(|c| c.display().to_string()).collect();
    let mut message = format!(
        "no server list found; looked for {}",
        searched.join(" and ")
    );
    if config.is_none() {
        message.push_str(" ($XDG_CONFIG_HOME and $HOME are unset)");
    }
    message.push_str(&format!(
        ". To start: cp {} serverlist.txt, uncomment or add one line per server (server,user,\
         pass,tlstoggle), and run again from that directory; or give a list with --servers FILE",
        sample_path()
    ));
    Err(message)
}

/// Where the sample list is: the source tree this binary was built from, if it is still there.
fn sample_path() -> String {
    let built = Path::new(env!("CARGO_MANIFEST_DIR")).join("serverlist.txt.sample");
    if built.is_file() {
        built.display().to_string()
    } else {
        "serverlist.txt.sample (in the ftpcircle-fs source tree)".to_string()
    }
}

/// The XDG base directory spec says a relative or empty `XDG_CONFIG_HOME` is
/// invalid and must be ignored.
fn config_dir(xdg_config_home: Option<OsString>, home: Option<OsString>) -> Option<PathBuf> {
    if let Some(dir) = xdg_config_home
        .map(PathBuf::from)
        .filter(|d| d.is_absolute())
    {
        return Some(dir);
    }
    home.map(PathBuf::from)
        .filter(|h| !h.as_os_str().is_empty())
        .map(|h| h.join(".config"))
}

/// Reads the list and reports its permission bits (from the same open file,
/// so the check is about what was actually read).
fn read_list(file: &Path) -> io::Result<(Vec<u8>, u32)> {
    let f = fs::File::open(file)?;
    let meta = f.metadata()?;
    // Opening a directory succeeds on Linux; say so instead of "EISDIR" later.
    if meta.is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::IsADirectory,
            "it is a directory, not a file",
        ));
    }
    let mut content = Vec::new();
    f.take(MAX_LIST_BYTES + 1).read_to_end(&mut content)?;
    if content.len() as u64 > MAX_LIST_BYTES {
        return Err(io::Error::other(format!(
            "larger than {} MiB, which is not a server list",
            MAX_LIST_BYTES >> 20
        )));
    }
    Ok((content, mode_of(&meta)))
}

#[cfg(unix)]
fn mode_of(meta: &fs::Metadata) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    meta.permissions().mode()
}

#[cfg(not(unix))]
fn mode_of(_meta: &fs::Metadata) -> u32 {
    0
}

/// Whether to warn about the file's permissions: only when someone else can
/// read it and it holds a password worth protecting (not a reference, not
/// the throwaway password of an anonymous login).
fn passwords_exposed(mode: u32, entries: &[Entry]) -> bool {
    mode & 0o044 != 0 && entries.iter().any(|e| e.literal_secret)
}

/// The outside world that password references read, injectable for tests.
struct Sources<'a> {
    env: &'a dyn Fn(&str) -> Option<OsString>,
    /// Returns the first line of a file, including its `\n` if there is one.
    first_line: &'a dyn Fn(&Path) -> io::Result<Vec<u8>>,
}

impl Sources<'static> {
    const REAL: Sources<'static> = Sources {
        env: &real_env,
        first_line: &read_first_line,
    };
}

fn real_env(name: &str) -> Option<OsString> {
    std::env::var_os(name)
}

fn read_first_line(path: &Path) -> io::Result<Vec<u8>> {
    let f = fs::File::open(path)?;
    if f.metadata()?.is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::IsADirectory,
            "it is a directory, not a file",
        ));
    }
    let mut line = Vec::new();
    BufReader::new(f.take(MAX_SECRET_LINE)).read_until(b'\n', &mut line)?;
    if line.last() != Some(&b'\n') && line.len() as u64 >= MAX_SECRET_LINE {
        return Err(io::Error::other(format!(
            "first line is longer than {} KiB",
            MAX_SECRET_LINE >> 10
        )));
    }
    Ok(line)
}

/// A parsed server plus what `load` needs for its permission warning.
struct Entry {
    spec: ServerSpec,
    /// A real password was written literally in the file.
    literal_secret: bool,
}

/// Where a line's password comes from, before references are resolved.
enum PassSource {
    Literal(Password),
    Env(String),
    File(PathBuf),
}

/// One syntactically valid line, before password references are resolved
/// (so duplicates are reported without first touching files or variables).
struct Row {
    host: String,
    /// What duplicates are compared on: DNS names are case-insensitive and
    /// IPv6 literals have many spellings.
    host_key: String,
    port: u16,
    base: String,
    user: String,
    tls: Tls,
    pass: PassSource,
}

fn parse_entries(
    file: &Path,
    content: &[u8],
    sources: &Sources<'_>,
) -> Result<Vec<Entry>, ServerListError> {
    let text = std::str::from_utf8(content).map_err(|e| {
        let line = 1 + content
            .iter()
            .take(e.valid_up_to())
            .filter(|&&b| b == b'\n')
            .count();
        ServerListError::at(file, line, "not valid UTF-8 (save the file as UTF-8 text)")
    })?;
    // Editors on some systems start UTF-8 files with a byte-order mark; it is
    // not whitespace, so without this the first host would look invalid.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);

    let mut entries = Vec::new();
    let mut first_seen: HashMap<(String, u16, String, String), usize> = HashMap::new();
    for (index, raw) in text.split('\n').enumerate() {
        let line_no = index + 1;
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        let content = line.trim();
        if content.is_empty() || content.starts_with('#') {
            continue;
        }
        let row = parse_row(line).map_err(|m| ServerListError::at(file, line_no, m))?;

        let key = (
            row.host_key.clone(),
            row.port,
            row.user.clone(),
            row.base.clone(),
        );
        if let Some(first) = first_seen.get(&key) {
            let guard = Guard::for_source(&row.pass);
            let label = addr_label(&row.host, row.port, &row.base);
            return Err(ServerListError::at(
                file,
                line_no,
                format!(
                    "duplicate server {} (user {}) — first listed on line {first}",
                    guard.plain(&label),
                    guard.plain(&row.user)
                ),
            ));
        }
        first_seen.insert(key, line_no);

        if let PassSource::Literal(p) = &row.pass
            && p.expose() != p.expose().trim()
        {
            log::warn!(
                "{}:{}: the password has leading or trailing spaces, which are kept as part \
                 of it; remove the spaces next to the commas if they are not intended",
                file.display(),
                line_no
            );
        }

        let anonymous = row.user.eq_ignore_ascii_case(ANONYMOUS_USER);
        let (password, literal) =
            resolve(row.pass, sources).map_err(|m| ServerListError::at(file, line_no, m))?;
        let password = if anonymous && password.expose().is_empty() {
            Password::new(ANONYMOUS_PASSWORD)
        } else {
            password
        };
        let literal_secret = literal && !anonymous && !password.expose().is_empty();
        entries.push(Entry {
            spec: ServerSpec {
                host: row.host,
                port: row.port,
                base: row.base,
                user: row.user,
                password,
                tls: row.tls,
                line: line_no,
            },
            literal_secret,
        });
    }
    if entries.is_empty() {
        return Err(ServerListError::whole(
            file,
            format!(
                "no servers listed: every line is blank or a comment; add one server per line \
                 ({COLUMNS_HINT}), e.g. ftp.example.org,,,0 for anonymous plain FTP"
            ),
        ));
    }
    Ok(entries)
}

/// Parses one non-blank, non-comment line (without its line terminator).
fn parse_row(line: &str) -> Result<Row, String> {
    if has_unterminated_quote(line) {
        return Err(
            "unterminated quoted field: a field that starts with \" must end with \" \
                    (write a \" inside a quoted field as \"\")"
                .into(),
        );
    }
    // Only '\n' ends a record: the caller already split lines, and a stray
    // '\r' must not silently start a second record.
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .comment(None)
        .terminator(csv::Terminator::Any(b'\n'))
        .from_reader(line.as_bytes());
    let mut record = csv::StringRecord::new();
    // The csv error could quote the field; describe it without content.
    reader
        .read_record(&mut record)
        .map_err(|_| String::from("could not parse the line as CSV"))?;
    let fields: Vec<&str> = record.iter().collect();
    let [server, user, pass, tls] = fields.as_slice() else {
        return Err(match COLUMNS.get(fields.len()) {
            Some(missing) => format!("missing column {missing} ({COLUMNS_HINT})"),
            None => format!(
                "extra column(s): expected 4 (server,user,pass,tlstoggle), found {} \
                 (put a password containing a comma in double quotes)",
                fields.len()
            ),
        });
    };

    let pass = parse_pass_source(pass)?;
    let guard = Guard::for_source(&pass);
    let server = parse_server(server.trim(), &guard)?;
    let user = parse_user(user.trim())?;
    let tls = parse_tls(tls.trim(), &guard)?;
    let port = server.port.unwrap_or(match tls {
        Tls::Implicit => DEFAULT_IMPLICIT_PORT,
        Tls::Plain | Tls::Explicit => DEFAULT_PORT,
    });
    Ok(Row {
        host: server.host,
        host_key: server.host_key,
        port,
        base: server.base,
        user,
        tls,
        pass,
    })
}

/// csv accepts an unterminated quote by running to the end of input, which
/// would hide the mistake; this mirrors its quoting rules to catch it.
fn has_unterminated_quote(line: &str) -> bool {
    let mut at_field_start = true;
    let mut in_quotes = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if in_quotes {
            if c == '"' {
                if chars.peek() == Some(&'"') {
                    chars.next();
                } else {
                    in_quotes = false;
                }
            }
        } else if c == ',' {
            at_field_start = true;
            continue;
        } else if c == '"' && at_field_start {
            in_quotes = true;
        }
        at_field_start = false;
    }
    in_quotes
}

/// Keeps a line's literal password out of its error message: other fields
/// are echoed to help find the mistake, unless they contain the password
/// (e.g. when columns were shifted).
struct Guard<'a> {
    secret: &'a str,
}

impl<'a> Guard<'a> {
    fn for_source(pass: &'a PassSource) -> Self {
        let secret = match pass {
            // Trimmed: a password of spaces would otherwise "occur" everywhere.
            PassSource::Literal(p) => p.expose().trim(),
            // References are names, not secrets, and are meant to be named.
            PassSource::Env(_) | PassSource::File(_) => "",
        };
        Self { secret }
    }

    fn reveals(&self, value: &str) -> bool {
        !self.secret.is_empty() && value.contains(self.secret)
    }

    /// The value in quotes (escaped, so control characters show), or a
    /// placeholder.
    fn quote(&self, value: &str) -> String {
        if self.reveals(value) {
            "(value hidden: it contains the password)".into()
        } else {
            format!("{value:?}")
        }
    }

    fn plain(&self, value: &str) -> String {
        if self.reveals(value) {
            "(hidden: contains the password)".into()
        } else {
            value.to_string()
        }
    }
}

fn addr_label(host: &str, port: u16, base: &str) -> String {
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    };
    if base == "/" {
        format!("{host}:{port}")
    } else {
        format!("{host}:{port}{base}")
    }
}

struct ServerField {
    host: String,
    host_key: String,
    port: Option<u16>,
    base: String,
}

fn parse_server(field: &str, guard: &Guard<'_>) -> Result<ServerField, String> {
    if field.contains("://") {
        return Err(format!(
            "server {} looks like a URL: write host[:port][/base] without a scheme \
             (the tlstoggle column chooses FTPS)",
            guard.quote(field)
        ));
    }
    let (host, host_key, port_text, rest) = if let Some(after) = field.strip_prefix('[') {
        let Some((inner, rest)) = after.split_once(']') else {
            return Err(format!(
                "missing ']' in server {}: write IPv6 addresses as [addr] or [addr]:port",
                guard.quote(field)
            ));
        };
        if inner.is_empty() {
            return Err("empty host between [ and ]".into());
        }
        let addr: Ipv6Addr = inner.parse().map_err(|_| {
            format!(
                "bad IPv6 address {} in server {} (brackets are only for IPv6 addresses)",
                guard.quote(inner),
                guard.quote(field)
            )
        })?;
        let (port_text, rest) = if let Some(after_colon) = rest.strip_prefix(':') {
            match after_colon.find('/') {
                Some(i) => (Some(&after_colon[..i]), &after_colon[i..]),
                None => (Some(after_colon), ""),
            }
        } else if rest.is_empty() || rest.starts_with('/') {
            (None, rest)
        } else {
            return Err(format!(
                "unexpected text after ']' in server {}: expected :port or /base",
                guard.quote(field)
            ));
        };
        (inner.to_string(), addr.to_string(), port_text, rest)
    } else {
        let (host_port, rest) = match field.find('/') {
            Some(i) => (&field[..i], &field[i..]),
            None => (field, ""),
        };
        let (host, port_text) = match host_port.split_once(':') {
            None => (host_port, None),
            Some((host, port)) if !port.contains(':') => (host, Some(port)),
            Some(_) => {
                return Err(format!(
                    "IPv6 address {} must be written in brackets, e.g. [2001:db8::1] or \
                     [2001:db8::1]:21",
                    guard.quote(host_port)
                ));
            }
        };
        if field.is_empty() {
            return Err(
                "empty host: the server column is empty (expected host[:port][/base])".into(),
            );
        }
        if host.is_empty() {
            return Err(format!(
                "empty host in server {} (expected host[:port][/base])",
                guard.quote(field)
            ));
        }
        // Restricting the alphabet keeps typos like "user@host" or a stray
        // space from turning into a confusing DNS failure at mount time.
        if !host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
        {
            return Err(format!(
                "bad host {}: only letters, digits, '-', '.' and '_' are allowed \
                 (IPv6 addresses go in brackets; internationalised names in punycode)",
                guard.quote(host)
            ));
        }
        (host.to_string(), host.to_ascii_lowercase(), port_text, rest)
    };
    let port = port_text.map(|p| parse_port(p, field, guard)).transpose()?;
    let base = normalize_base(rest, field, guard)?;
    Ok(ServerField {
        host,
        host_key,
        port,
        base,
    })
}

fn parse_port(text: &str, field: &str, guard: &Guard<'_>) -> Result<u16, String> {
    if text.is_empty() {
        return Err(format!(
            "bad port in server {}: nothing after ':' (expected a number from 1 to 65535)",
            guard.quote(field)
        ));
    }
    // Digits only: u16's parser would also take a leading '+'.
    let port = if text.bytes().all(|b| b.is_ascii_digit()) {
        text.parse::<u16>().ok().filter(|&p| p != 0)
    } else {
        None
    };
    port.ok_or_else(|| {
        format!(
            "bad port {} in server {}: expected a number from 1 to 65535",
            guard.quote(text),
            guard.quote(field)
        )
    })
}

/// `rest` is empty or starts with '/'.
fn normalize_base(rest: &str, field: &str, guard: &Guard<'_>) -> Result<String, String> {
    if rest.chars().any(char::is_control) {
        return Err(format!(
            "bad base path {} in server {}: control characters are not allowed",
            guard.quote(rest),
            guard.quote(field)
        ));
    }
    let mut base = String::new();
    for component in rest.split('/') {
        match component {
            "" => {}
            "." | ".." => {
                return Err(format!(
                    "bad base path {} in server {}: '.' and '..' components are not allowed",
                    guard.quote(rest),
                    guard.quote(field)
                ));
            }
            name => {
                base.push('/');
                base.push_str(name);
            }
        }
    }
    if base.is_empty() {
        base.push('/');
    }
    Ok(base)
}

fn parse_user(field: &str) -> Result<String, String> {
    if field.is_empty() {
        return Ok(ANONYMOUS_USER.into());
    }
    // A CR or LF would let the user name inject FTP commands.
    if field.chars().any(char::is_control) {
        return Err("the user name contains a control character".into());
    }
    Ok(field.to_string())
}

fn parse_tls(field: &str, guard: &Guard<'_>) -> Result<Tls, String> {
    match field.to_ascii_lowercase().as_str() {
        "" => Err(format!("empty tlstoggle ({TLS_ACCEPTED})")),
        "0" | "false" | "no" | "off" => Ok(Tls::Plain),
        "1" | "true" | "yes" | "on" | "explicit" => Ok(Tls::Explicit),
        "implicit" => Ok(Tls::Implicit),
        _ => Err(format!(
            "unknown tlstoggle {} ({TLS_ACCEPTED})",
            guard.quote(field)
        )),
    }
}

/// Classifies the verbatim pass field. Reference syntax is checked here so
/// that mistakes are reported even on lines that later turn out duplicate.
fn parse_pass_source(field: &str) -> Result<PassSource, String> {
    let unindented = field.trim_start();
    if unindented.len() != field.len()
        && ["env:", "file:", "raw:"]
            .iter()
            .any(|p| unindented.starts_with(p))
    {
        // The field is not trimmed, so " env:X" would silently be a literal
        // password; nobody means that.
        return Err("the password reference has spaces before it; remove them \
                    (the pass column is used exactly as written)"
            .into());
    }
    if let Some(name) = field.strip_prefix("env:") {
        // std::env::var_os cannot look up names with '=' or NUL.
        if name.is_empty()
            || name
                .chars()
                .any(|c| c == '=' || c.is_whitespace() || c.is_control())
        {
            return Err(format!(
                "bad environment variable name {name:?} in env: password reference"
            ));
        }
        return Ok(PassSource::Env(name.to_string()));
    }
    if let Some(path) = field.strip_prefix("file:") {
        if path.is_empty() {
            return Err("empty path in file: password reference".into());
        }
        // Relative to what would be ambiguous (the cwd or this file's
        // directory?), so demand an absolute path.
        if !Path::new(path).is_absolute() {
            return Err(format!(
                "password file {path:?} must be an absolute path (file:/path/to/file)"
            ));
        }
        return Ok(PassSource::File(PathBuf::from(path)));
    }
    let literal = field.strip_prefix("raw:").unwrap_or(field);
    check_sendable(literal, "the password")?;
    Ok(PassSource::Literal(Password::new(literal)))
}

/// FTP sends the password in a CRLF-terminated command line.
fn check_sendable(password: &str, what: &str) -> Result<(), String> {
    if password.contains(['\0', '\r', '\n']) {
        return Err(format!(
            "{what} contains a NUL, CR or LF character, which cannot be sent over FTP"
        ));
    }
    Ok(())
}

/// Returns the password and whether it was written literally in the file.
fn resolve(source: PassSource, sources: &Sources<'_>) -> Result<(Password, bool), String> {
    match source {
        PassSource::Literal(p) => Ok((p, true)),
        PassSource::Env(name) => {
            let value = (sources.env)(&name).ok_or_else(|| {
                format!("password reference env:{name}: environment variable {name} is not set")
            })?;
            let value = value.into_string().map_err(|_| {
                format!("password reference env:{name}: the variable's value is not valid UTF-8")
            })?;
            if value.is_empty() {
                return Err(format!(
                    "password reference env:{name}: environment variable {name} is empty"
                ));
            }
            check_sendable(&value, &format!("environment variable {name}"))?;
            Ok((Password::new(value), false))
        }
        PassSource::File(path) => {
            let shown = path.display();
            let mut bytes = (sources.first_line)(&path)
                .map_err(|e| format!("cannot read password file {shown}: {e}"))?;
            if bytes.last() == Some(&b'\n') {
                bytes.pop();
            }
            if bytes.last() == Some(&b'\r') {
                bytes.pop();
            }
            let value = String::from_utf8(bytes)
                .map_err(|_| format!("password file {shown}: first line is not valid UTF-8"))?;
            if value.is_empty() {
                return Err(format!("password file {shown}: first line is empty"));
            }
            check_sendable(&value, &format!("the first line of password file {shown}"))?;
            Ok((Password::new(value), false))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    const SAMPLE: &str = include_str!("../serverlist.txt.sample");
    const SECRET: &str = "hunter2-s3cret";

    /// A scratch directory removed on drop; unique per test and process.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> Self {
            static COUNTER: AtomicUsize = AtomicUsize::new(0);
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let dir = std::env::temp_dir().join(format!(
                "ftpcircle-serverlist-test-{}-{tag}-{n}",
                std::process::id()
            ));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).expect("create temp dir");
            Self(dir)
        }

        fn path(&self) -> &Path {
            &self.0
        }

        fn write(&self, name: &str, content: &[u8]) -> PathBuf {
            let p = self.0.join(name);
            fs::write(&p, content).expect("write temp file");
            p
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn fake_env(name: &str) -> Option<OsString> {
        match name {
            "FTP_PASS" => Some(OsString::from("from-env")),
            "EMPTY_PASS" => Some(OsString::new()),
            _ => None,
        }
    }

    fn fake_sources() -> Sources<'static> {
        Sources {
            env: &fake_env,
            first_line: &read_first_line,
        }
    }

    fn file() -> &'static Path {
        Path::new("serverlist.txt")
    }

    fn parse_text(text: &str) -> Result<Vec<ServerSpec>, ServerListError> {
        parse_entries(file(), text.as_bytes(), &fake_sources())
            .map(|v| v.into_iter().map(|e| e.spec).collect())
    }

    fn servers(text: &str) -> Vec<ServerSpec> {
        match parse_text(text) {
            Ok(v) => v,
            Err(e) => panic!("expected {text:?} to parse, got: {e}"),
        }
    }

    fn one(text: &str) -> ServerSpec {
        let mut v = servers(text);
        assert_eq!(v.len(), 1, "{text:?}");
        v.remove(0)
    }

    /// Parses `text`, expects an error on `line` whose message contains
    /// every one of `needles`, and checks that no error leaks [`SECRET`].
    fn error_at(text: &str, line: usize, needles: &[&str]) -> ServerListError {
        let err = match parse_text(text) {
            Ok(v) => panic!("expected {text:?} to fail, got {v:?}"),
            Err(e) => e,
        };
        assert_eq!(err.line, Some(line), "line of error for {text:?}: {err}");
        for needle in needles {
            assert!(
                err.message.contains(needle),
                "message for {text:?} should contain {needle:?}: {err}"
            );
        }
        assert!(!err.to_string().contains(SECRET), "leak: {err}");
        assert!(!format!("{err:?}").contains(SECRET), "leak: {err:?}");
        err
    }

    // ---- error cases ----

    #[test]
    fn missing_columns() {
        let e = error_at(&format!("# c\nftp.example.org,user,{SECRET}\n"), 2, &[]);
        assert_eq!(
            e.message,
            "missing column tlstoggle (expected server,user,pass,tlstoggle)"
        );
        error_at("ftp.example.org,user\n", 1, &["missing column pass"]);
        error_at("ftp.example.org\n", 1, &["missing column user"]);
    }

    #[test]
    fn extra_columns() {
        // The classic: an unquoted comma in the password.
        error_at(
            &format!("\nftp.example.org,user,{SECRET},x,1\n"),
            2,
            &["extra column(s): expected 4 (server,user,pass,tlstoggle), found 5"],
        );
        error_at("h,u,p,1,,\n", 1, &["found 6"]);
    }

    #[test]
    fn bad_ports() {
        for server in [
            "ftp.example.org:",
            "ftp.example.org:abc",
            "ftp.example.org:0",
            "ftp.example.org:70000",
            "ftp.example.org:+21",
            "ftp.example.org:-1",
            "ftp.example.org:99999999999999999999999",
            "ftp.example.org: 21",
            "ftp.example.org:/pub",
            "[::1]:",
            "[::1]:65536",
            "[::1]:x/pub",
        ] {
            error_at(
                &format!("# comment\n\n{server},u,{SECRET},0\n"),
                3,
                &["bad port"],
            );
        }
        let e = error_at("h:abc,u,p,0", 1, &["bad port \"abc\""]);
        assert!(e.message.contains("1 to 65535"), "{e}");
    }

    #[test]
    fn unknown_tlstoggle() {
        let e = error_at(
            &format!("h,u,{SECRET},maybe\n"),
            1,
            &["unknown tlstoggle \"maybe\"", "implicit", "explicit", "off"],
        );
        assert!(e.message.contains("0/false/no/off"), "{e}");
        error_at("h,u,p,2", 1, &["unknown tlstoggle \"2\""]);
        error_at("h,u,p,tls", 1, &["unknown tlstoggle \"tls\""]);
    }

    #[test]
    fn empty_tlstoggle() {
        error_at(
            &format!("\n\nh,u,{SECRET},\n"),
            3,
            &["empty tlstoggle", "implicit"],
        );
        error_at("h,u,p,   ", 1, &["empty tlstoggle"]);
    }

    #[test]
    fn empty_host() {
        for server in ["", "   ", ":21", "/pub", ":21/pub", "[]", "[]:21"] {
            error_at(&format!("#\n{server},u,{SECRET},0\n"), 2, &["empty host"]);
        }
    }

    #[test]
    fn bad_base_paths() {
        for server in [
            "h/pub/../etc",
            "h/..",
            "h/./pub",
            "h/pub/.",
            "h:21/..",
            "[::1]/a/../b",
            "[::1]:21/.",
        ] {
            let e = error_at(
                &format!("h0,u,p,0\n{server},u,{SECRET},0\n"),
                2,
                &["bad base path", "'.' and '..'"],
            );
            assert!(e.message.contains(server), "should name the field: {e}");
        }
        error_at("h/pu\tb,u,p,0", 1, &["bad base path", "control"]);
        error_at("h/a\u{1b}[31m,u,p,0", 1, &["bad base path", "control"]);
    }

    #[test]
    fn ipv6_without_brackets() {
        for server in ["::1", "2001:db8::1", "2001:db8::1:21", "fe80::1/pub"] {
            error_at(
                &format!("\n{server},u,{SECRET},0"),
                2,
                &["must be written in brackets", "[2001:db8::1]"],
            );
        }
    }

    #[test]
    fn bad_brackets_and_hosts() {
        error_at(
            "[ftp.example.org],u,p,0",
            1,
            &["bad IPv6 address", "brackets"],
        );
        error_at("[::1,u,p,0", 1, &["missing ']'"]);
        error_at("[::1]x,u,p,0", 1, &["unexpected text after ']'"]);
        error_at(
            "ftp example.org,u,pw1,0",
            1,
            &["bad host \"ftp example.org\""],
        );
        error_at("alice@ftp.example.org,u,p,0", 1, &["bad host"]);
        error_at("ftp://ftp.example.org,u,p,0", 1, &["looks like a URL"]);
        error_at("ftps://h:990/pub,u,p,1", 1, &["looks like a URL"]);
    }

    #[test]
    fn duplicate_servers() {
        let e = error_at(
            &format!("ftp.example.org,alice,a,0\n# c\nftp.example.org,alice,{SECRET},1\n"),
            3,
            &[],
        );
        assert_eq!(
            e.message,
            "duplicate server ftp.example.org:21 (user alice) — first listed on line 1"
        );
        // Same server spelled differently is still the same server.
        error_at(
            "FTP.Example.ORG:21/pub/,bob,x,0\nftp.example.org//pub,bob,y,0\n",
            2,
            &[
                "duplicate server ftp.example.org:21/pub (user bob)",
                "line 1",
            ],
        );
        error_at(
            "h/pub,,,0\nh:21/pub/,anonymous,,0",
            2,
            &["duplicate server h:21/pub (user anonymous)", "line 1"],
        );
        error_at(
            "[::1]/x,u,p,0\n[0:0::1]:21/x/,u,p,0",
            2,
            &["duplicate server [0:0::1]:21/x (user u)", "line 1"],
        );
        error_at("h:990,u,p,0\nh,u,p,implicit", 2, &["duplicate", "line 1"]);
    }

    #[test]
    fn not_duplicates() {
        let v = servers(
            "h,alice,p,0\nh/pub,alice,p,0\nh,bob,p,0\nh:2121,alice,p,0\nh,Alice,p,0\nh2,alice,p,0\n",
        );
        assert_eq!(v.len(), 6);
        let lines: Vec<usize> = v.iter().map(|s| s.line).collect();
        assert_eq!(lines, [1, 2, 3, 4, 5, 6]);
    }

    #[test]
    fn empty_files() {
        for text in ["", "\n", "  \n\t\n\r\n", "\u{feff}"] {
            let e = parse_text(text).expect_err("empty list");
            assert_eq!(e.line, None);
            assert!(e.message.starts_with("no servers listed"), "{e}");
            assert_eq!(
                e.to_string(),
                format!("serverlist.txt: {}", e.message),
                "no line number when none applies"
            );
        }
    }

    #[test]
    fn comments_only_file() {
        let e = parse_text("# a\n   # b, c, d, 0\n\n#h,u,p,0\n").expect_err("no servers");
        assert_eq!(e.line, None);
        assert!(e.message.contains("no servers listed"), "{e}");
    }

    #[test]
    fn not_utf8() {
        let content = b"# ok\nh,u,p,0\nh2,u,p\xff\xfe,0\nh3,u,p,0\n";
        let e = parse_entries(file(), content, &fake_sources())
            .err()
            .expect("invalid UTF-8");
        assert_eq!(e.line, Some(3));
        assert!(e.message.contains("not valid UTF-8"), "{e}");
        assert!(e.to_string().starts_with("serverlist.txt:3: "), "{e}");
        // Invalid byte right at the start of a line.
        let e = parse_entries(file(), b"\n\n\xc3", &fake_sources())
            .err()
            .expect("invalid UTF-8");
        assert_eq!(e.line, Some(3));
    }

    #[test]
    fn unreadable_files() {
        let dir = TempDir::new("unreadable");
        let missing = dir.path().join("nope.txt");
        let e = load(&missing).expect_err("missing file");
        assert_eq!(e.line, None);
        assert_eq!(e.file, missing);
        assert!(e.message.contains("cannot read the server list"), "{e}");
        assert!(e.message.contains("No such file"), "OS error named: {e}");
        assert!(e.to_string().starts_with(&missing.display().to_string()));

        let e = load(dir.path()).expect_err("directory");
        assert_eq!(e.line, None);
        assert!(e.message.contains("directory"), "{e}");
    }

    #[test]
    fn env_reference_unset() {
        let e = error_at(
            "# x\nh,u,env:FTPCIRCLE_NOT_SET,0\n",
            2,
            &["environment variable FTPCIRCLE_NOT_SET is not set"],
        );
        assert!(!e.message.contains("from-env"));
        // The real environment too (nobody sets this name).
        let e = parse(file(), b"h,u,env:FTPCIRCLE_TEST_SURELY_UNSET_7f3a9,1\n")
            .expect_err("unset variable");
        assert_eq!(e.line, Some(1));
        assert!(
            e.message
                .contains("FTPCIRCLE_TEST_SURELY_UNSET_7f3a9 is not set")
        );
    }

    #[test]
    fn bad_references() {
        error_at("h,u,env:,0", 1, &["bad environment variable name"]);
        error_at("h,u,env:A=B,0", 1, &["bad environment variable name"]);
        error_at("h,u,env:EMPTY_PASS,0", 1, &["EMPTY_PASS is empty"]);
        error_at("h,u,file:,0", 1, &["empty path in file:"]);
        error_at("h,u,file:secret.txt,0", 1, &["absolute path"]);
        error_at("h,u, env:FTP_PASS,0", 1, &["spaces before it"]);
        let dir = TempDir::new("badref");
        let missing = dir.path().join("missing.pass");
        error_at(
            &format!("\nh,u,file:{},0", missing.display()),
            2,
            &["cannot read password file", &missing.display().to_string()],
        );
        error_at(
            &format!("h,u,file:{},0", dir.path().display()),
            1,
            &["cannot read password file", "directory"],
        );
        let empty = dir.write("empty.pass", b"\nsecond line\n");
        error_at(
            &format!("h,u,file:{},0", empty.display()),
            1,
            &["first line is empty"],
        );
    }

    #[test]
    fn unsendable_fields() {
        error_at("h,u,p\0q,0", 1, &["NUL, CR or LF"]);
        error_at("h,u,\"p\rq\",0", 1, &["NUL, CR or LF"]);
        error_at("h,u\rx,p,0", 1, &["user name contains a control character"]);
    }

    #[test]
    fn unterminated_quote() {
        // Must not swallow the following line into the password.
        error_at(
            &format!("h,u,\"{SECRET},0\nh2,u,p,0\n"),
            1,
            &["unterminated quoted field"],
        );
        assert!(!has_unterminated_quote("a,\"b\"\"c\",d"));
        assert!(!has_unterminated_quote("a,b\"c,d"));
        assert!(has_unterminated_quote("a,\"b\"\",d"));
    }

    #[test]
    fn errors_never_show_the_password() {
        // Columns shifted so that other fields contain the password.
        for text in [
            format!("{SECRET}.example.org:0,u,{SECRET},0"),
            format!("h,u,{SECRET},{SECRET}"),
            format!("h/../{SECRET},u,{SECRET},0"),
            format!("h:{SECRET},u,raw:{SECRET},0"),
            format!("h,u,\"{SECRET}\",x"),
        ] {
            let e = parse_text(&text).expect_err("bad line");
            assert!(!e.to_string().contains(SECRET), "leak: {e}");
            assert!(!format!("{e:?}").contains(SECRET), "leak: {e:?}");
        }
        let e = error_at(
            &format!("h,u,{SECRET},{SECRET}"),
            1,
            &["unknown tlstoggle", "hidden"],
        );
        assert!(e.message.contains("hidden"));
        // A duplicate whose user name is the password.
        error_at(
            &format!("h,{SECRET},{SECRET},0\nh,{SECRET},{SECRET},1"),
            2,
            &["duplicate server h:21", "hidden"],
        );
    }

    #[test]
    fn debug_redacts_passwords() {
        let s = one(&format!("h,u,{SECRET},0"));
        assert_eq!(s.password.expose(), SECRET);
        let debug = format!("{s:?}");
        assert!(!debug.contains(SECRET), "{debug}");
        assert!(debug.contains("Password(***)"), "{debug}");
        assert_eq!(format!("{:?}", Password::new("x")), "Password(***)");
    }

    #[test]
    fn error_display_format() {
        let e = ServerListError::at(Path::new("/etc/list.txt"), 7, "boom");
        assert_eq!(e.to_string(), "/etc/list.txt:7: boom");
        let e = ServerListError::whole(Path::new("/etc/list.txt"), "boom");
        assert_eq!(e.to_string(), "/etc/list.txt: boom");
    }

    // ---- positive cases ----

    #[test]
    fn tlstoggle_spellings() {
        let cases = [
            ("0", Tls::Plain),
            ("false", Tls::Plain),
            ("no", Tls::Plain),
            ("off", Tls::Plain),
            (" OFF ", Tls::Plain),
            ("False", Tls::Plain),
            ("1", Tls::Explicit),
            ("true", Tls::Explicit),
            ("yes", Tls::Explicit),
            ("on", Tls::Explicit),
            ("explicit", Tls::Explicit),
            ("  Explicit\t", Tls::Explicit),
            ("YES", Tls::Explicit),
            ("implicit", Tls::Implicit),
            ("IMPLICIT ", Tls::Implicit),
        ];
        for (toggle, want) in cases {
            let s = one(&format!("h,u,p,{toggle}"));
            assert_eq!(s.tls, want, "{toggle:?}");
        }
    }

    #[test]
    fn quoted_passwords() {
        assert_eq!(one("h,u,\"p,a\"\"ss\",1").password.expose(), "p,a\"ss");
        assert_eq!(one("h,u,\" sp ace \",1").password.expose(), " sp ace ");
        assert_eq!(one("h,u,\"\",1").password.expose(), "");
        // Quotes elsewhere in an unquoted field are literal, as in csv.
        assert_eq!(one("h,u,pa\"ss,1").password.expose(), "pa\"ss");
        // Other fields may be quoted too, and are still trimmed.
        let s = one("\" h \",\" u \",p,\" 0 \"");
        assert_eq!((s.host.as_str(), s.user.as_str()), ("h", "u"));
        // '#' inside a line is data, not a comment.
        assert_eq!(
            one("h,u,#not-a-comment,0").password.expose(),
            "#not-a-comment"
        );
    }

    #[test]
    fn password_whitespace_kept() {
        let s = one("  h  ,  u  ,  p w  ,  0  ");
        assert_eq!(s.host, "h");
        assert_eq!(s.user, "u");
        assert_eq!(s.password.expose(), "  p w  ");
        assert_eq!(one("h,u,\tx\t,0").password.expose(), "\tx\t");
    }

    #[test]
    fn ipv6_hosts() {
        let s = one("[::1],u,p,0");
        assert_eq!((s.host.as_str(), s.port, s.base.as_str()), ("::1", 21, "/"));
        let s = one("[2001:db8::1]:2121,u,p,0");
        assert_eq!((s.host.as_str(), s.port), ("2001:db8::1", 2121));
        let s = one("[::1]:2121/x,u,p,0");
        assert_eq!(
            (s.host.as_str(), s.port, s.base.as_str()),
            ("::1", 2121, "/x")
        );
        let s = one("[fe80::1]/pub//,u,p,implicit");
        assert_eq!(
            (s.host.as_str(), s.port, s.base.as_str()),
            ("fe80::1", 990, "/pub")
        );
    }

    #[test]
    fn hosts_and_ports() {
        let s = one("ftp.example.org,u,p,0");
        assert_eq!(
            (s.host.as_str(), s.port, s.base.as_str()),
            ("ftp.example.org", 21, "/")
        );
        let s = one("192.0.2.1:65535,u,p,1");
        assert_eq!((s.host.as_str(), s.port), ("192.0.2.1", 65535));
        assert_eq!(one("h:1,u,p,1").port, 1);
        assert_eq!(one("h:0021,u,p,1").port, 21);
        assert_eq!(one("my_host-1,u,p,1").host, "my_host-1");
    }

    #[test]
    fn base_paths_normalized() {
        for (server, base) in [
            ("h", "/"),
            ("h/", "/"),
            ("h//", "/"),
            ("h/pub", "/pub"),
            ("h/pub/", "/pub"),
            ("h//pub//mirror///", "/pub/mirror"),
            ("h:2121/pub/mirror", "/pub/mirror"),
            ("h/a b/ç/...", "/a b/ç/..."),
            ("h/.hidden/x..y", "/.hidden/x..y"),
        ] {
            assert_eq!(one(&format!("{server},u,p,0")).base, base, "{server}");
        }
    }

    #[test]
    fn default_ports() {
        assert_eq!(one("h,u,p,implicit").port, 990);
        assert_eq!(one("h:21,u,p,implicit").port, 21);
        assert_eq!(one("h,u,p,explicit").port, 21);
        assert_eq!(one("h,u,p,0").port, 21);
        assert_eq!(one("h:990,u,p,0").port, 990);
    }

    #[test]
    fn anonymous_defaults() {
        let s = one("h,,,0");
        assert_eq!(
            (s.user.as_str(), s.password.expose()),
            ("anonymous", "anonymous@")
        );
        let s = one("h, ,me@example.org,0");
        assert_eq!(
            (s.user.as_str(), s.password.expose()),
            ("anonymous", "me@example.org")
        );
        let s = one("h,Anonymous,,0");
        assert_eq!(
            (s.user.as_str(), s.password.expose()),
            ("Anonymous", "anonymous@")
        );
        // A named user with an empty password really means an empty password.
        let s = one("h,alice,,0");
        assert_eq!((s.user.as_str(), s.password.expose()), ("alice", ""));
    }

    #[test]
    fn line_numbers_after_comments_and_blanks() {
        let text =
            "# header\n\n   \n  # indented comment\nh1,u,p,0\n\t\n# x,y,z,0\nh2,u,p,0\r\nh3,u,p,1";
        let v = servers(text);
        let got: Vec<(&str, usize)> = v.iter().map(|s| (s.host.as_str(), s.line)).collect();
        assert_eq!(got, [("h1", 5), ("h2", 8), ("h3", 9)]);
        // Errors after comments point at the right line too.
        error_at("# a\n\n# b\nh,u,p,bogus\n", 4, &["unknown tlstoggle"]);
    }

    #[test]
    fn crlf_and_bom() {
        let v = servers("\u{feff}h1,u,p,0\r\n#c\r\nh2,u,p,implicit\r\n");
        assert_eq!(v.len(), 2);
        assert_eq!((v[0].host.as_str(), v[0].line), ("h1", 1));
        assert_eq!((v[1].tls, v[1].line), (Tls::Implicit, 3));
    }

    #[test]
    fn password_references() {
        let dir = TempDir::new("refs");
        let pass_file = dir.write("a.pass", b"from-file\r\nsecond line\n");
        let no_newline = dir.write("b.pass", b"  spaced  ");
        let text = format!(
            "h1,u,env:FTP_PASS,0\nh2,u,file:{},0\nh3,u,file:{},0\nh4,u,raw:env:x,0\n\
             h5,u,raw:file:/y,0\nh6,u,raw:raw:z,0\nh7,u,raw:,0\nh8,u,envy:x,0\n",
            pass_file.display(),
            no_newline.display()
        );
        let got: Vec<String> = servers(&text)
            .iter()
            .map(|s| s.password.expose().to_string())
            .collect();
        assert_eq!(
            got,
            [
                "from-env",
                "from-file",
                "  spaced  ",
                "env:x",
                "file:/y",
                "raw:z",
                "",
                "envy:x"
            ]
        );
    }

    #[test]
    fn permission_warning_decision() {
        let flags = |text: &str| -> Vec<bool> {
            parse_entries(file(), text.as_bytes(), &fake_sources())
                .expect("parses")
                .iter()
                .map(|e| e.literal_secret)
                .collect()
        };
        assert_eq!(
            flags("a,u,secret,0\nb,u,env:FTP_PASS,0\nc,,,0\nd,,me@x,0\ne,u,,0\nf,u,raw:x,0"),
            [true, false, false, false, false, true]
        );
        let entries = parse_entries(file(), b"a,u,secret,0", &fake_sources()).expect("parses");
        assert!(passwords_exposed(0o644, &entries));
        assert!(passwords_exposed(0o640, &entries));
        assert!(passwords_exposed(0o604, &entries));
        assert!(!passwords_exposed(0o600, &entries));
        let entries =
            parse_entries(file(), b"a,,,0\nb,u,env:FTP_PASS,0", &fake_sources()).expect("parses");
        assert!(!passwords_exposed(0o644, &entries));
    }

    #[test]
    fn load_reads_a_file() {
        let dir = TempDir::new("load");
        let path = dir.write("serverlist.txt", b"# mine\nftp.example.org/pub,,,on\n");
        let v = load(&path).expect("loads");
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].label(), "ftp.example.org:21/pub");
        assert_eq!(v[0].line, 2);
        let bad = dir.write("bad.txt", b"h,u,p,0\nh,u,p,0\n");
        let e = load(&bad).expect_err("duplicate");
        assert_eq!(e.file, bad);
        assert!(
            e.to_string()
                .starts_with(&format!("{}:2: duplicate", bad.display()))
        );
    }

    #[test]
    fn labels_and_addresses() {
        let s = one("ftp.example.org,u,p,0");
        assert_eq!(s.label(), "ftp.example.org:21");
        assert_eq!(s.addr_string(), "ftp.example.org:21");
        let s = one("ftp.example.org:2121/pub/mirror/,u,p,0");
        assert_eq!(s.label(), "ftp.example.org:2121/pub/mirror");
        assert_eq!(s.addr_string(), "ftp.example.org:2121");
        let s = one("[::1]:2121/x,u,p,0");
        assert_eq!(s.label(), "[::1]:2121/x");
        assert_eq!(s.addr_string(), "[::1]:2121");
        let s = one("[2001:db8::1],u,p,implicit");
        assert_eq!(s.label(), "[2001:db8::1]:990");
        assert_eq!(s.addr_string(), "[2001:db8::1]:990");
        assert!(
            s.addr_string().parse::<std::net::SocketAddr>().is_ok(),
            "addr_string is a valid socket address for IP literals"
        );
    }

    // ---- locate ----

    #[test]
    fn locate_explicit_path_even_if_missing() {
        let dir = TempDir::new("locate-explicit");
        let p = dir.path().join("missing.txt");
        assert_eq!(locate_in(Some(&p), dir.path(), None, None), Ok(p.clone()));
    }

    #[test]
    fn locate_search_order() {
        let dir = TempDir::new("locate-order");
        let cwd = dir.path().join("cwd");
        let xdg = dir.path().join("xdg");
        let home = dir.path().join("home");
        for d in [
            &cwd,
            &xdg.join("ftpcircle"),
            &home.join(".config/ftpcircle"),
        ] {
            fs::create_dir_all(d).expect("mkdir");
        }
        let xdg_os = || Some(xdg.clone().into_os_string());
        let home_os = || Some(home.clone().into_os_string());

        // Nothing anywhere: an error listing both places.
        let e = locate_in(None, &cwd, xdg_os(), home_os()).expect_err("none");
        assert!(
            e.contains(&cwd.join("serverlist.txt").display().to_string()),
            "{e}"
        );
        assert!(
            e.contains(&xdg.join("ftpcircle/serverlist.txt").display().to_string()),
            "{e}"
        );
        // ... and how to start: copy the sample (this tree's) and edit it.
        let sample = concat!(env!("CARGO_MANIFEST_DIR"), "/serverlist.txt.sample");
        assert!(e.contains(&format!("cp {sample} serverlist.txt")), "{e}");

        // $HOME/.config is the fallback when XDG_CONFIG_HOME is unset,
        // empty or relative.
        let in_home = home.join(".config/ftpcircle/serverlist.txt");
        fs::write(&in_home, "").expect("write");
        for bad_xdg in [None, Some(OsString::new()), Some(OsString::from("rel/dir"))] {
            assert_eq!(
                locate_in(None, &cwd, bad_xdg, home_os()),
                Ok(in_home.clone())
            );
        }
        // XDG_CONFIG_HOME, when valid, replaces $HOME/.config.
        assert!(locate_in(None, &cwd, xdg_os(), home_os()).is_err());
        let in_xdg = xdg.join("ftpcircle/serverlist.txt");
        fs::write(&in_xdg, "").expect("write");
        assert_eq!(locate_in(None, &cwd, xdg_os(), home_os()), Ok(in_xdg));

        // The current directory wins over both.
        let in_cwd = cwd.join("serverlist.txt");
        fs::write(&in_cwd, "").expect("write");
        assert_eq!(locate_in(None, &cwd, xdg_os(), home_os()), Ok(in_cwd));
    }

    #[test]
    fn locate_without_home() {
        let dir = TempDir::new("locate-nohome");
        let e = locate_in(None, dir.path(), None, None).expect_err("nothing");
        assert!(e.contains("$HOME are unset"), "{e}");
        assert!(e.contains("serverlist.txt"), "{e}");
    }

    // ---- the shipped sample ----

    /// Example lines in the sample are `#` directly followed by the line;
    /// prose comments are `#` followed by a space, or a bare `#`.
    fn uncomment_examples(sample: &str) -> (String, usize) {
        let mut count = 0;
        let text = sample
            .lines()
            .map(|line| match line.strip_prefix('#') {
                Some(rest) if !rest.is_empty() && !rest.starts_with([' ', '#']) => {
                    count += 1;
                    rest
                }
                _ => line,
            })
            .collect::<Vec<_>>()
            .join("\n");
        (text, count)
    }

    #[test]
    fn sample_has_no_active_servers() {
        // Users copy it and enable what they need; an unedited copy must
        // fail loudly instead of mounting example.org hosts.
        let e = parse_text(SAMPLE).expect_err("sample has no active lines");
        assert!(e.message.contains("no servers listed"), "{e}");
    }

    #[test]
    fn sample_examples_parse() {
        let (text, count) = uncomment_examples(SAMPLE);
        let sources = Sources {
            env: &|name: &str| (name == "CAROL_FTP_PASSWORD").then(|| OsString::from("c-pass")),
            first_line: &|_: &Path| Ok(b"d-pass\n".to_vec()),
        };
        let specs: Vec<ServerSpec> = parse_entries(Path::new("sample"), text.as_bytes(), &sources)
            .unwrap_or_else(|e| panic!("sample examples must parse: {e}"))
            .into_iter()
            .map(|e| e.spec)
            .collect();
        assert!(count >= 6, "sample should show several examples");
        assert_eq!(specs.len(), count);
        let find = |label: &str| {
            specs
                .iter()
                .find(|s| s.label() == label)
                .unwrap_or_else(|| panic!("sample should contain {label}"))
        };
        let anon = find("ftp.example.org:21");
        assert_eq!((anon.user.as_str(), anon.tls), ("anonymous", Tls::Plain));
        assert_eq!(find("mirror.example.net:21/pub/linux").tls, Tls::Explicit);
        assert_eq!(
            find("secure.example.com:990").password.expose(),
            "pa,ss\"word"
        );
        assert_eq!(find("secure.example.com:990").tls, Tls::Implicit);
        assert_eq!(find("[2001:db8::1]:2121/data").password.expose(), "c-pass");
        assert_eq!(find("backup.example.org:21").password.expose(), "d-pass");
        assert_eq!(
            find("legacy.example.org:21").password.expose(),
            "env:not-a-reference"
        );
    }
}
