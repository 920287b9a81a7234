//! One logged-in FTP control connection to one server (suppaftp underneath).
//!
//! Owns: connecting with a timeout, explicit/implicit FTPS with certificate and host name
//! verification, login, binary type, FEAT probing, passive mode (EPSV where offered, else PASV),
//! listings (MLSD, STAT or LIST, from inside the directory with CWD where a server's `ls`
//! could split or expand the path) and ranged RETR streams.
//!
//! Invariants:
//! - every socket this module opens has connect, read and write timeouts;
//! - a server marked TLS is never sent a command in plaintext (AUTH TLS is the first command
//!   after the greeting, implicit FTPS is TLS from the first byte);
//! - names travel byte-faithfully: after login the connection uses [`ByteEncoding`], which maps
//!   every byte to one `char` and back, so a latin-1 or UTF-8 name is sent exactly as listed;
//! - the password is only ever passed to `login()`; no message built here contains it;
//! - every path sent is absolute (base paths start with `/`), so the working directory a
//!   listing by CWD leaves behind never changes what a later command refers to.

use std::io;
use std::net::{Shutdown, SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use rustls::ClientConfig;
use suppaftp::types::FileType;
use suppaftp::{
    Encoding, FtpError, ImplFtpStream, Mode, RustlsConnector, RustlsFtpStream, Status,
    TlsConnector, TlsStream, TransferStream,
};

use crate::backend::HashAlgo;
use crate::error::{Error, Kind, Result};
use crate::ftp::listing::{self, Format};
use crate::serverlist::{ServerSpec, Tls};

/// Names the TLS stream type suppaftp uses for rustls (it is public but not exported by name).
pub trait StreamOf {
    type Stream: TlsStream;
}
impl<T: TlsStream> StreamOf for ImplFtpStream<T> {
    type Stream = T;
}
pub type TlsStreamT = <RustlsFtpStream as StreamOf>::Stream;
/// A RETR in progress; reading it yields the file's bytes.
pub type Transfer = TransferStream<TlsStreamT>;

/// Maps each byte to the `char` of the same value and back: byte-faithful names through
/// suppaftp's `String` API (a latin-1 `\xe9` stays one byte `\xe9` on the wire).
#[derive(Debug)]
pub struct ByteEncoding;

impl Encoding for ByteEncoding {
    fn decode(&self, bytes: &[u8]) -> String {
        bytes_to_wire(bytes)
    }

    fn encode(&self, text: &str) -> io::Result<Vec<u8>> {
        text.chars()
            .map(|c| {
                u8::try_from(u32::from(c))
                    .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "not a byte"))
            })
            .collect()
    }
}

pub fn bytes_to_wire(bytes: &[u8]) -> String {
    bytes.iter().map(|&b| char::from(b)).collect()
}

/// Features the server announced in FEAT.
#[derive(Clone, Copy, Debug, Default)]
pub struct Feats {
    pub mlsd: bool,
    pub rest_stream: bool,
    pub epsv: bool,
    pub utf8: bool,
    pub size: bool,
    pub mdtm: bool,
    /// Algorithms of the `HASH` command ([`HashAlgo::bit`]s).
    pub hash_cmd: u8,
    /// Algorithms of proftpd mod_digest's `XSHA256`/`XSHA1`/`XMD5`/`XCRC` commands.
    pub x_hash: u8,
}

/// Wraps suppaftp's rustls connector so every TLS socket (control and data) gets our timeouts.
#[derive(Debug)]
struct TimedTls {
    inner: RustlsConnector,
    timeout: Duration,
}

impl TlsConnector for TimedTls {
    type Stream = TlsStreamT;

    fn connect(&self, domain: &str, stream: TcpStream) -> suppaftp::FtpResult<Self::Stream> {
        set_timeouts(&stream, self.timeout).map_err(FtpError::ConnectionError)?;
        self.inner.connect(domain, stream)
    }
}

fn set_timeouts(stream: &TcpStream, timeout: Duration) -> io::Result<()> {
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    stream.set_nodelay(true)
}

/// Everything needed to open connections to one server.
#[derive(Clone)]
pub struct Endpoint {
    pub spec: ServerSpec,
    pub label: String,
    /// Shared verifier settings; each connection gets its own session cache from it.
    pub tls: Option<Arc<ClientConfig>>,
    pub timeout: Duration,
    /// Whether `STAT <dir>` gives listings on this server (learnt on first use).
    stat: Arc<AtomicU8>,
}

impl Endpoint {
    pub fn new(spec: ServerSpec, tls: Option<Arc<ClientConfig>>, timeout: Duration) -> Endpoint {
        Endpoint {
            label: spec.label(),
            spec,
            tls,
            timeout,
            stat: Arc::new(AtomicU8::new(STAT_UNKNOWN)),
        }
    }
}

pub struct Conn {
    ftp: RustlsFtpStream,
    pub feats: Feats,
    pub last_used: Instant,
    /// Round trip of the last one-line command timed (`TYPE I`, `NOOP`), for the speed
    /// meter to take.
    pub rtt_sample: Option<Duration>,
    /// Whether this server lists directories with STAT (shared by its connections).
    stat: Arc<AtomicU8>,
}

/// [`Endpoint::stat`] values: not tried yet, works, refused.
const STAT_UNKNOWN: u8 = 0;
const STAT_WORKS: u8 = 1;
const STAT_REFUSED: u8 = 2;

/// A listing larger than this is refused rather than held in memory (a hostile or broken
/// server could send without end). 256 MiB is about 2.5 million LIST lines.
const MAX_LISTING_BYTES: u64 = 256 * 1024 * 1024;

impl Conn {
    /// Connect, secure, log in, probe FEAT and set binary + passive mode.
    pub fn open(ep: &Endpoint) -> Result<Conn> {
        let label = &ep.label;
        let t = ep.timeout;
        let (addr, tcp) = connect_any(ep)?;
        set_timeouts(&tcp, t).map_err(|e| net_err(label, "connect", &e))?;
        let tls = ep.tls.as_ref().map(|base| TimedTls {
            inner: RustlsConnector::from(per_connection(base)),
            timeout: t,
        });
        let domain = ep.spec.host.as_str();
        let mut ftp = match (ep.spec.tls, tls) {
            (Tls::Plain, _) => RustlsFtpStream::connect_with_stream(tcp)
                .map_err(|e| ftp_err(label, "greeting", e))?,
            (Tls::Explicit, Some(tls)) => RustlsFtpStream::connect_with_stream(tcp)
                .map_err(|e| ftp_err(label, "greeting", e))?
                .into_secure(tls, domain)
                .map_err(|e| ftp_err(label, "AUTH TLS", e))?,
            (Tls::Implicit, Some(tls)) => {
                // suppaftp opens the implicit-TLS socket itself, without a connect timeout;
                // our connect above proved the address answers within the timeout, so drop it
                // and let suppaftp reconnect to that same address.
                drop(tcp);
                let mut ftp = RustlsFtpStream::connect_secure_implicit(addr, tls, domain)
                    .map_err(|e| ftp_err(label, "implicit TLS", e))?;
                // Protect data connections too (suppaftp does this only for explicit FTPS).
                for cmd in ["PBSZ 0", "PROT P"] {
                    ftp.custom_command(cmd, &[Status::CommandOk])
                        .map_err(|e| ftp_err(label, cmd, e))?;
                }
                ftp
            }
            (_, None) => {
                return Err(Error::new(
                    Kind::Network,
                    format!("{label}: TLS requested but no TLS configuration"),
                ));
            }
        };
        let timeout = t;
        ftp = ftp.passive_stream_builder(move |addr: SocketAddr| {
            let s =
                TcpStream::connect_timeout(&addr, timeout).map_err(FtpError::ConnectionError)?;
            set_timeouts(&s, timeout).map_err(FtpError::ConnectionError)?;
            Ok(s)
        });
        let user = ep.spec.user.as_str();
        ftp.login(user, ep.spec.password.expose())
            .map_err(|e| ftp_err(label, &format!("login as {user}"), e))?;
        let sent = Instant::now();
        ftp.transfer_type(FileType::Binary)
            .map_err(|e| ftp_err(label, "TYPE I", e))?;
        let rtt_sample = Some(sent.elapsed());
        let feats = match ftp.feat() {
            Ok(map) => {
                let mut f = parse_feats(map.keys().map(String::as_str), map.get("REST"));
                (f.hash_cmd, f.x_hash) =
                    hash_feats(map.iter().map(|(k, v)| (k.as_str(), v.as_deref())));
                f
            }
            Err(_) => Feats::default(),
        };
        if feats.utf8 {
            // Servers that offer UTF8 may need it switched on to send names unmangled.
            let _ = ftp.opts("UTF8", Some("ON"));
        }
        ftp.set_encoding(ByteEncoding);
        if feats.epsv {
            ftp.set_mode(Mode::ExtendedPassive);
        } else {
            ftp.set_mode(Mode::Passive);
            // A PASV reply may carry a private address behind NAT; use the control peer's.
            ftp.set_passive_nat_workaround(true);
        }
        Ok(Conn {
            ftp,
            feats,
            last_used: Instant::now(),
            rtt_sample,
            stat: Arc::clone(&ep.stat),
        })
    }

    /// List `path` (a server path): MLSD where offered; else `STAT <path>` where the server
    /// answers it with a listing; else LIST.
    ///
    /// Why STAT: it returns the `ls -l` listing on the control connection, one round trip,
    /// where LIST needs EPSV, a data connection and the transfer (three round trips): a cold
    /// `find` 20 ms away from its servers takes a third of the time. A server that refuses
    /// STAT (5xx) is remembered and listed with LIST from then on.
    /// `allow_stat: false` forces MLSD/LIST (after a STAT reply too large to read).
    ///
    /// Many servers (GNU inetutils and netkit ftpd, wu-ftpd, NAS boxes) hand the argument of
    /// LIST and STAT to `ls` as words and glob patterns: `LIST /pub/sub dir` lists `/pub/sub`
    /// and `dir`. So without MLSD a path that such a server could split or expand
    /// ([`list_from_inside`]), or any path when `from_inside` is set (the caller's retry after
    /// a path listing that failed or gave nothing readable), is listed by `CWD <path>` and
    /// `LIST` without argument. CWD takes its argument whole on every server we know; the
    /// path is absolute, so BSD ftpd's `~` expansion of CWD arguments never applies. Every
    /// other command sends absolute paths too, so the working directory left behind does
    /// not matter.
    pub fn list_dir(
        &mut self,
        label: &str,
        path: &[u8],
        allow_stat: bool,
        from_inside: bool,
    ) -> Result<(Format, Vec<Vec<u8>>)> {
        check_arg(label, path)?;
        let wire = bytes_to_wire(path);
        let what = || format!("listing {}", String::from_utf8_lossy(path));
        let inside = !self.feats.mlsd && (from_inside || list_from_inside(path));
        if allow_stat
            && !self.feats.mlsd
            && !inside
            && self.stat.load(Ordering::Relaxed) != STAT_REFUSED
            && let Some(lines) = self.stat_dir(label, &wire, &what)?
        {
            return Ok((Format::List, lines));
        }
        let (format, cmd) = if self.feats.mlsd {
            (Format::Mlsd, format!("MLSD {wire}"))
        } else if inside {
            self.last_used = Instant::now();
            self.ftp
                .cwd(&wire)
                .map_err(|e| ftp_err(label, &what(), e))?;
            (Format::List, "LIST".to_string())
        } else {
            (Format::List, format!("LIST {wire}"))
        };
        self.last_used = Instant::now();
        let (_, mut stream) = self
            .ftp
            .custom_data_command(cmd, &[Status::AboutToSend, Status::AlreadyOpen])
            .map_err(|e| ftp_err(label, &what(), e))?;
        let mut raw = Vec::new();
        let read = std::io::Read::read_to_end(
            &mut std::io::Read::take(&mut stream, MAX_LISTING_BYTES + 1),
            &mut raw,
        );
        if let Err(e) = read {
            return Err(net_err(label, &what(), &e));
        }
        if raw.len() as u64 > MAX_LISTING_BYTES {
            return Err(Error::new(
                Kind::Protocol,
                format!("{label}: {}: more than {MAX_LISTING_BYTES} bytes", what()),
            ));
        }
        stream.finish().map_err(|e| ftp_err(label, &what(), e))?;
        self.last_used = Instant::now();
        let lines = raw
            .split(|&b| b == b'\n')
            .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
            .filter(|l| !l.is_empty())
            .map(<[u8]>::to_vec)
            .collect();
        Ok((format, lines))
    }

    /// The `ls -l` listing of `path` (STAT where it works, else LIST), even on a server with
    /// MLSD: the one listing that tells where symlinks point on servers whose MLSD does not.
    pub fn list_dir_long(
        &mut self,
        label: &str,
        path: &[u8],
        allow_stat: bool,
    ) -> Result<Vec<Vec<u8>>> {
        let mlsd = std::mem::replace(&mut self.feats.mlsd, false);
        let res = self.list_dir(label, path, allow_stat, false);
        self.feats.mlsd = mlsd;
        res.map(|(_, lines)| lines)
    }

    /// The hash of the whole file `path` with `algo`, as lowercase hex: `OPTS HASH` + `HASH`
    /// where offered (its reply `213 SHA-256 0-49 <hex> <name>`), else proftpd's X-command
    /// (`250 <hex>`), only for names without spaces (its optional range arguments would make
    /// a name with spaces ambiguous).
    pub fn file_hash(&mut self, label: &str, path: &[u8], algo: HashAlgo) -> Result<Vec<u8>> {
        check_arg(label, path)?;
        let wire = bytes_to_wire(path);
        let what = format!("{algo:?} of {}", String::from_utf8_lossy(path));
        self.last_used = Instant::now();
        let (reply, token) = if self.feats.hash_cmd & algo.bit() != 0 {
            let opts = format!("OPTS HASH {}", hash_name(algo));
            self.ftp
                .custom_command(opts, &[Status::CommandOk])
                .map_err(|e| ftp_err(label, &what, e))?;
            let r = self
                .ftp
                .custom_command(format!("HASH {wire}"), &[Status::File])
                .map_err(|e| ftp_err(label, &what, e))?;
            (r.body, 2)
        } else if self.feats.x_hash & algo.bit() != 0 && !path.contains(&b' ') {
            let r = self
                .ftp
                .custom_command(
                    format!("{} {wire}", x_command(algo)),
                    &[Status::RequestedFileActionOk],
                )
                .map_err(|e| ftp_err(label, &what, e))?;
            (r.body, 0)
        } else {
            return Err(Error::new(
                Kind::Protocol,
                format!("{label}: {what}: no hash command for it"),
            ));
        };
        self.last_used = Instant::now();
        parse_hash_reply(&reply, token, algo).ok_or_else(|| {
            Error::new(
                Kind::Protocol,
                format!(
                    "{label}: {what}: unreadable reply {:?}",
                    String::from_utf8_lossy(reply.get(..200.min(reply.len())).unwrap_or(&[]))
                ),
            )
        })
    }

    /// `STAT <dir>`: the listing lines, or None if this server does not list with STAT.
    fn stat_dir(
        &mut self,
        label: &str,
        wire: &str,
        what: &dyn Fn() -> String,
    ) -> Result<Option<Vec<Vec<u8>>>> {
        self.last_used = Instant::now();
        // Not 211 (`System`) in the list: suppaftp would read a FEAT-style reply and stop
        // early. A 211 reply comes back whole as "unexpected" instead.
        let res = self
            .ftp
            .custom_command(format!("STAT {wire}"), &[Status::Directory, Status::File]);
        match res {
            Ok(resp) => {
                self.stat.store(STAT_WORKS, Ordering::Relaxed);
                Ok(Some(stat_lines(&resp.body)))
            }
            // BSD-derived servers (GNU inetutils, netkit, wu-ftpd) answer with 211 and the
            // `ls -lgA` output. 211 is also the code of a general status reply, so the first
            // one decides: if it reads as a listing, STAT lists on this server.
            Err(FtpError::UnexpectedResponse(r))
                if reply_code(r.status.code(), &String::from_utf8_lossy(&r.body)) == 211
                    && (self.stat.load(Ordering::Relaxed) == STAT_WORKS
                        || reads_as_listing(&stat_lines(&r.body))) =>
            {
                self.stat.store(STAT_WORKS, Ordering::Relaxed);
                Ok(Some(stat_lines(&r.body)))
            }
            Err(FtpError::UnexpectedResponse(r)) => {
                // Refused, or a status reply that is no listing: the reply was read whole,
                // so the connection is in step; use LIST from now on.
                log::debug!(
                    "{label}: STAT gives no listing ({}); listing with LIST",
                    String::from_utf8_lossy(r.body.get(..3).unwrap_or(&[]))
                );
                self.stat.store(STAT_REFUSED, Ordering::Relaxed);
                Ok(None)
            }
            Err(FtpError::ConnectionError(e))
                if e.get_ref()
                    .is_some_and(|inner| inner.is::<suppaftp::ReplyTooLarge>()) =>
            {
                Err(Error::new(
                    Kind::TooLarge,
                    format!("{label}: {}: STAT reply too large", what()),
                ))
            }
            Err(e) => Err(ftp_err(label, &what(), e)),
        }
    }

    /// Start a RETR of `path` at byte `offset` (REST is sent right before RETR when > 0).
    pub fn retr(&mut self, label: &str, path: &[u8], offset: u64) -> Result<Transfer> {
        check_arg(label, path)?;
        let offset = usize::try_from(offset)
            .map_err(|_| Error::new(Kind::Invalid, format!("{label}: offset too large")))?;
        let _ = self.ftp.resume_transfer(offset);
        self.last_used = Instant::now();
        self.ftp.retr_as_stream(bytes_to_wire(path)).map_err(|e| {
            // suppaftp sends REST right before RETR and expects 350; a server without REST
            // answers 500-504 ("not implemented"/"not understood"), RETR itself fails with 4xx/55x.
            let refused_rest = offset > 0
                && matches!(&e, FtpError::UnexpectedResponse(r)
                    if matches!(reply_code(r.status.code(), &String::from_utf8_lossy(&r.body)), 500..=504));
            let err = ftp_err(label, &format!("RETR {}", String::from_utf8_lossy(path)), e);
            if refused_rest {
                Error::new(Kind::NoRest, err.message)
            } else {
                err
            }
        })
    }

    /// Close a transfer that delivered everything and read the server's final reply.
    pub fn finish(&mut self, label: &str, t: Transfer) -> Result<()> {
        self.last_used = Instant::now();
        t.finish().map_err(|e| ftp_err(label, "end of transfer", e))
    }

    /// Stop a transfer in the middle, then check the connection is in step again (NOOP).
    ///
    /// The data connection is closed and the one reply that ends the transfer is read: a
    /// server that was still sending sees its next write fail and answers `426` (or `451`);
    /// one that had already written everything (vsftpd then waits in a lingering close)
    /// answers `226`. No `ABOR` is sent: one the server reads after the transfer ended draws
    /// one reply more (vsftpd's "225 No transfer to ABOR"), which left the connection out of
    /// step and cost a new login each time (every file of a few MB read in part and closed,
    /// every jump in a big file, every piece of a segmented read). A server that does not
    /// answer within the connection's timeout costs the connection, as any hang does.
    pub fn abort(&mut self, label: &str, t: Transfer) -> Result<()> {
        self.last_used = Instant::now();
        let _ = t.get_ref().get_ref().shutdown(Shutdown::Both);
        match t.finish() {
            Ok(()) => {}
            // The transfer was stopped: that is the one reply it gets.
            Err(FtpError::UnexpectedResponse(r))
                if (400..600).contains(&reply_code(
                    r.status.code(),
                    &String::from_utf8_lossy(&r.body),
                )) => {}
            Err(e) => return Err(ftp_err(label, "end of a stopped transfer", e)),
        }
        // The transfer's reply is read, so this NOOP is an ordinary round trip (and counts as one).
        self.noop(label)
    }

    /// How this server's directories are listed: `MLSD`, `STAT` (once a STAT listing worked)
    /// or `LIST`.
    pub fn listing_method(&self) -> &'static str {
        if self.feats.mlsd {
            "MLSD"
        } else if self.stat.load(Ordering::Relaxed) == STAT_WORKS {
            "STAT"
        } else {
            "LIST"
        }
    }

    pub fn noop(&mut self, label: &str) -> Result<()> {
        let sent = Instant::now();
        self.ftp.noop().map_err(|e| ftp_err(label, "NOOP", e))?;
        self.last_used = Instant::now();
        self.rtt_sample = Some(sent.elapsed());
        Ok(())
    }

    pub fn quit(mut self) {
        let _ = self.ftp.quit();
    }
}

/// A fresh session cache per control connection, so its data connections resume *its* TLS
/// session (vsftpd's `require_ssl_reuse=YES` refuses data connections that don't) and no two
/// connections race for single-use TLS 1.3 tickets.
fn per_connection(base: &Arc<ClientConfig>) -> Arc<ClientConfig> {
    let mut cfg = ClientConfig::clone(base);
    cfg.resumption = rustls::client::Resumption::in_memory_sessions(32);
    Arc::new(cfg)
}

/// Resolve the host and connect to the first address that answers within the timeout.
fn connect_any(ep: &Endpoint) -> Result<(SocketAddr, TcpStream)> {
    let label = &ep.label;
    let mut addrs = (ep.spec.host.as_str(), ep.spec.port)
        .to_socket_addrs()
        .map_err(|e| net_err(label, "resolve host", &e))?
        .collect::<Vec<_>>();
    // IPv4 first: "localhost" often resolves to ::1 first while test servers listen on IPv4.
    addrs.sort_by_key(|a| a.is_ipv6());
    let mut last = None;
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, ep.timeout) {
            Ok(s) => return Ok((addr, s)),
            Err(e) => last = Some(e),
        }
    }
    Err(match last {
        Some(e) => net_err(label, "connect", &e),
        None => Error::new(Kind::Network, format!("{label}: host has no address")),
    })
}

/// The listing lines of a STAT reply: the first and last lines are the reply's own
/// ("213-Status follows:", "213 End"); continuation lines may be indented by one space
/// (RFC 959).
fn stat_lines(body: &[u8]) -> Vec<Vec<u8>> {
    let lines: Vec<&[u8]> = body.split(|&b| b == b'\n').collect();
    let inner = lines.get(1..lines.len().saturating_sub(2)).unwrap_or(&[]);
    inner
        .iter()
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .map(|l| l.strip_prefix(b" ").unwrap_or(l))
        .filter(|l| !l.is_empty())
        .map(<[u8]>::to_vec)
        .collect()
}

/// Lines that are a directory listing: at least one, and not all of them unreadable.
fn reads_as_listing(lines: &[Vec<u8>]) -> bool {
    let parsed = listing::parse_listing(lines, Format::List, std::time::SystemTime::now());
    !lines.is_empty() && (!parsed.entries.is_empty() || parsed.skipped.is_empty())
}

/// Whether a LIST/STAT argument could be split or expanded by a server that passes it to
/// `ls` (as words, options or glob patterns): anything but letters, digits, non-ASCII bytes
/// and `/ . _ + , = @ % :` makes it so, and so does a `-` starting a component. Such a
/// directory is listed from inside (CWD, then LIST without argument).
pub fn list_from_inside(path: &[u8]) -> bool {
    let odd_byte = |b: &u8| {
        !(b.is_ascii_alphanumeric()
            || *b >= 0x80
            || matches!(
                b,
                b'/' | b'.' | b'_' | b'-' | b'+' | b',' | b'=' | b'@' | b'%' | b':'
            ))
    };
    path.iter().any(odd_byte) || path.split(|&b| b == b'/').any(|c| c.starts_with(b"-"))
}

/// CR, LF and NUL in an argument would end the command early and inject another one.
fn check_arg(label: &str, arg: &[u8]) -> Result<()> {
    if arg.iter().any(|b| matches!(b, b'\r' | b'\n' | 0)) {
        return Err(Error::new(
            Kind::Invalid,
            format!("{label}: refusing to send a name containing CR, LF or NUL"),
        ));
    }
    Ok(())
}

pub fn parse_feats<'a>(
    keys: impl Iterator<Item = &'a str>,
    rest: Option<&Option<String>>,
) -> Feats {
    let mut f = Feats::default();
    for key in keys {
        match key.trim().to_ascii_uppercase().as_str() {
            "MLST" | "MLSD" => f.mlsd = true,
            "EPSV" => f.epsv = true,
            "UTF8" => f.utf8 = true,
            "SIZE" => f.size = true,
            "MDTM" => f.mdtm = true,
            _ => {}
        }
    }
    if let Some(Some(v)) = rest {
        f.rest_stream = v.to_ascii_uppercase().contains("STREAM");
    }
    f
}

/// The algorithms of the hash commands in FEAT, as (`HASH` algorithms, X-command algorithms):
/// `HASH SHA-256*;SHA-1;MD5;CRC32` (draft-bryan-ftpext-hash; `*` marks the current one) and
/// proftpd mod_digest's `XSHA256`, `XSHA1`, `XMD5`, `XCRC`.
pub fn hash_feats<'a>(feats: impl Iterator<Item = (&'a str, Option<&'a str>)>) -> (u8, u8) {
    let (mut hash, mut x) = (0, 0);
    for (key, value) in feats {
        let key = key.trim().to_ascii_uppercase();
        if key == "HASH" {
            for name in value.unwrap_or("").split(';') {
                let name = name.trim().trim_end_matches('*').to_ascii_uppercase();
                if let Some(a) = HashAlgo::ALL.into_iter().find(|&a| hash_name(a) == name) {
                    hash |= a.bit();
                }
            }
        } else if let Some(a) = HashAlgo::ALL.into_iter().find(|&a| x_command(a) == key) {
            x |= a.bit();
        }
    }
    (hash, x)
}

/// The algorithm's name in `HASH` and `OPTS HASH`.
fn hash_name(algo: HashAlgo) -> &'static str {
    match algo {
        HashAlgo::Sha256 => "SHA-256",
        HashAlgo::Sha1 => "SHA-1",
        HashAlgo::Md5 => "MD5",
        HashAlgo::Crc32 => "CRC32",
    }
}

/// proftpd mod_digest's command for the algorithm.
fn x_command(algo: HashAlgo) -> &'static str {
    match algo {
        HashAlgo::Sha256 => "XSHA256",
        HashAlgo::Sha1 => "XSHA1",
        HashAlgo::Md5 => "XMD5",
        HashAlgo::Crc32 => "XCRC",
    }
}

/// The hex hash in the last line of a hash reply (`213 SHA-256 0-49 <hex> <name>`: token 2
/// after the code; `250 <hex>`: token 0), lowercased, checked to have the algorithm's length (a CRC may come
/// without its leading zeros).
fn parse_hash_reply(body: &[u8], token: usize, algo: HashAlgo) -> Option<Vec<u8>> {
    // The answer is on the last line: proftpd sends `250-Computing SHA256 digest` first.
    let line = body
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .rfind(|l| !l.is_empty())?;
    if line.get(3) != Some(&b' ') {
        return None;
    }
    let text = line.get(4..)?;
    let hex = text
        .split(|&b| b == b' ')
        .filter(|t| !t.is_empty())
        .nth(token)?;
    let hex = hex.strip_suffix(b"\r").unwrap_or(hex);
    if hex.is_empty() || hex.len() > algo.hex_len() || !hex.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    if hex.len() != algo.hex_len() && algo != HashAlgo::Crc32 {
        return None;
    }
    let mut out = vec![b'0'; algo.hex_len() - hex.len()];
    out.extend(hex.iter().map(u8::to_ascii_lowercase));
    Some(out)
}

pub fn net_err(label: &str, what: &str, e: &io::Error) -> Error {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
            Error::new(Kind::Timeout, format!("{label}: {what}: timed out"))
        }
        _ => Error::new(Kind::Network, format!("{label}: {what}: {e}")),
    }
}

/// Reply code of an unexpected response (suppaftp maps unknown codes to 0; read the text then).
fn reply_code(status_code: u32, body: &str) -> u32 {
    if status_code != 0 {
        return status_code;
    }
    body.get(..3).and_then(|c| c.parse().ok()).unwrap_or(0)
}

pub fn ftp_err(label: &str, what: &str, e: FtpError) -> Error {
    match e {
        FtpError::ConnectionError(io) => net_err(label, what, &io),
        FtpError::SecureError(s) => Error::new(Kind::Network, format!("{label}: {what}: TLS: {s}")),
        FtpError::UnexpectedResponse(resp) => {
            let body = String::from_utf8_lossy(&resp.body);
            let body: String = body.trim().chars().take(200).collect();
            let code = reply_code(resp.status.code(), &body);
            let lower = body.to_ascii_lowercase();
            let kind = match code {
                421 => Kind::Busy,
                530 if lower.contains("too many") || lower.contains("connections") => Kind::Busy,
                530 => Kind::Auth,
                550 => Kind::NotFound,
                _ => Kind::Protocol,
            };
            Error::new(kind, format!("{label}: {what}: server replied {body}"))
        }
        other => Error::new(Kind::Protocol, format!("{label}: {what}: {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_encoding_round_trips_every_byte() {
        let all: Vec<u8> = (0..=255).collect();
        let wire = ByteEncoding.decode(&all);
        assert_eq!(ByteEncoding.encode(&wire).unwrap(), all);
        assert_eq!(
            ByteEncoding.encode(&bytes_to_wire(b"caf\xe9")).unwrap(),
            b"caf\xe9"
        );
        assert!(ByteEncoding.encode("\u{263a}").is_err());
    }

    #[test]
    fn feats_are_read_case_insensitively() {
        let rest = Some("STREAM".to_string());
        let f = parse_feats(["mlst", "EPSV", " UTF8", "SIZE"].into_iter(), Some(&rest));
        assert!(f.mlsd && f.epsv && f.utf8 && f.size && f.rest_stream && !f.mdtm);
    }

    #[test]
    fn hash_commands_are_read_from_feat() {
        let feats = [
            ("HASH", Some("SHA-256*;SHA-512;sha-1;MD5")),
            ("XCRC", None),
            ("XMD5", None),
            ("MLST", Some("type*;size*;modify*;")),
        ];
        let (hash, x) = hash_feats(feats.into_iter());
        use HashAlgo::*;
        assert_eq!(hash, Sha256.bit() | Sha1.bit() | Md5.bit());
        assert_eq!(x, Crc32.bit() | Md5.bit());
        assert_eq!(
            hash_feats([("XSHA256", None)].into_iter()),
            (0, Sha256.bit())
        );
        assert_eq!(hash_feats([("HASH", None)].into_iter()), (0, 0));
    }

    #[test]
    fn hash_replies_are_parsed_and_checked() {
        let sha = "a".repeat(64);
        let reply = format!("213 SHA-256 0-49 {} some name.bin\r\n", sha.to_uppercase());
        assert_eq!(
            parse_hash_reply(reply.as_bytes(), 2, HashAlgo::Sha256),
            Some(sha.clone().into_bytes())
        );
        let reply = format!("250 {sha}\r\n");
        assert_eq!(
            parse_hash_reply(reply.as_bytes(), 0, HashAlgo::Sha256),
            Some(sha.into_bytes())
        );
        assert_eq!(
            parse_hash_reply(b"250 1a2b\r\n", 0, HashAlgo::Crc32),
            Some(b"00001a2b".to_vec())
        );
        // proftpd 1.3.8 says what it does first.
        let reply = format!("250-Computing SHA256 digest\r\n250 {}\r\n", "0A".repeat(32));
        assert_eq!(
            parse_hash_reply(reply.as_bytes(), 0, HashAlgo::Sha256),
            Some("0a".repeat(32).into_bytes())
        );
        let reply = b"213-Computing SHA-1 digest\r\n213 SHA-1 0-6 f572d396fae9206628714fb2ce00f72e94f2258f /pub/f.txt\r\n";
        assert_eq!(
            parse_hash_reply(reply, 2, HashAlgo::Sha1),
            Some(b"f572d396fae9206628714fb2ce00f72e94f2258f".to_vec())
        );
        // Wrong length, not hex, nothing there.
        assert_eq!(parse_hash_reply(b"250 abcd\r\n", 0, HashAlgo::Md5), None);
        assert_eq!(parse_hash_reply(b"250 xyz\r\n", 0, HashAlgo::Crc32), None);
        assert_eq!(
            parse_hash_reply(b"213 SHA-1 0-1\r\n", 2, HashAlgo::Sha1),
            None
        );
        assert_eq!(parse_hash_reply(b"", 0, HashAlgo::Sha1), None);
    }

    #[test]
    fn arguments_with_line_breaks_are_refused() {
        assert_eq!(
            check_arg("s", b"a\r\nDELE b").unwrap_err().kind,
            Kind::Invalid
        );
        assert!(check_arg("s", b"/pub/ok name").is_ok());
    }

    #[test]
    fn stat_211_replies_are_listings_only_if_they_read_as_one() {
        let bsd = b"211- status of /pub:\r\ntotal 8\r\n\
            drwxr-xr-x  3 root  root  4096 Dec  1 05:33 sub dir\r\n\
            -rw-r--r--  1 root  root     3 Dec  1 05:33 a file.txt\r\n211 End of Status\r\n";
        let lines = stat_lines(bsd);
        assert_eq!(lines.len(), 3);
        assert!(lines[1].ends_with(b"sub dir"));
        assert!(reads_as_listing(&lines));
        let empty = stat_lines(b"211- status of /e:\r\ntotal 0\r\n211 End of Status\r\n");
        assert!(reads_as_listing(&empty));
        let status = stat_lines(
            b"211-FTP server status:\r\n Connected to 127.0.0.1\r\n Logged in as ftp\r\n\
              211 End of status\r\n",
        );
        assert_eq!(status.len(), 2);
        assert!(!reads_as_listing(&status));
        assert!(!reads_as_listing(&stat_lines(b"211-Status\r\n211 End\r\n")));
    }

    #[test]
    fn paths_an_ls_could_split_or_expand_are_listed_from_inside() {
        for odd in [
            &b"/pub/sub dir"[..],
            b"/pub/-dash",
            b"/-x/y",
            b"/pub/st*r",
            b"/pub/q?",
            b"/pub/a[b]c",
            b"/pub/a]b",
            b"/pub/h#sh",
            b"/pub/back\\sl",
            b"/pub/{a,b}",
            b"/pub/~user",
            b"/pub/it's",
            b"/pub/a;b",
            b"/pub/$HOME",
        ] {
            assert!(list_from_inside(odd), "{}", String::from_utf8_lossy(odd));
        }
        for plain in [
            &b"/"[..],
            b"/pub/mirror",
            b"/pub/a-b_c.d+e,f=g@h%i:j",
            b"/pub/caf\xc3\xa9",
            b"/pub/x-",
        ] {
            assert!(
                !list_from_inside(plain),
                "{}",
                String::from_utf8_lossy(plain)
            );
        }
    }

    #[test]
    fn reply_codes_choose_kinds() {
        let c = reply_code(0, "421 Too many users");
        assert_eq!(c, 421);
        assert_eq!(reply_code(550, "whatever"), 550);
    }
}
