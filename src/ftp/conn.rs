//! One logged-in FTP control connection to one server (suppaftp underneath).
//!
//! Owns: connecting with a timeout, explicit/implicit FTPS with certificate and host name
//! verification, login, binary type, FEAT probing, passive mode (EPSV where offered, else PASV),
//! listings (MLSD or LIST) and ranged RETR streams.
//!
//! Invariants:
//! - every socket this module opens has connect, read and write timeouts;
//! - a server marked TLS is never sent a command in plaintext (AUTH TLS is the first command
//!   after the greeting, implicit FTPS is TLS from the first byte);
//! - names travel byte-faithfully: after login the connection uses [`ByteEncoding`], which maps
//!   every byte to one `char` and back, so a latin-1 or UTF-8 name is sent exactly as listed;
//! - the password is only ever passed to `login()`; no message built here contains it.

use std::io;
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::ClientConfig;
use suppaftp::types::FileType;
use suppaftp::{
    Encoding, FtpError, ImplFtpStream, Mode, RustlsConnector, RustlsFtpStream, Status,
    TlsConnector, TlsStream, TransferStream,
};

use crate::error::{Error, Kind, Result};
use crate::ftp::listing::Format;
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

/// Inverse of [`bytes_to_wire`] for text decoded by [`ByteEncoding`] (every char is <= U+00FF).
pub fn wire_to_bytes(text: &str) -> Vec<u8> {
    text.chars().map(|c| u32::from(c) as u8).collect()
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

/// Start connecting a data socket and return it at once, still connecting.
///
/// suppaftp sends the transfer command (LIST, RETR) only after the passive stream builder
/// returns. A blocking connect would cost one round trip before that command goes out; here
/// the TCP handshake and the command travel at the same time, saving a round trip on every
/// listing and file. The socket is back in blocking mode before it is returned: Linux makes a
/// read or write on a socket that is still connecting wait until it is connected (or fails
/// with the connect error), and the read/write timeouts set by the caller bound that wait.
fn connect_early(addr: SocketAddr) -> io::Result<TcpStream> {
    use std::os::fd::FromRawFd;
    let family = if addr.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: plain socket(2) call; the fd is owned by the TcpStream below (closed on drop)
    // or closed here on every error path.
    let fd = unsafe {
        libc::socket(
            family,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh, valid socket that nothing else owns.
    let stream = unsafe { TcpStream::from_raw_fd(fd) };
    let (storage, len) = sockaddr_of(addr);
    // SAFETY: storage holds a valid sockaddr_in/sockaddr_in6 of `len` bytes for `fd`'s family.
    let rc = unsafe { libc::connect(fd, (&raw const storage).cast(), len) };
    if rc != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINPROGRESS) {
            return Err(e);
        }
    }
    stream.set_nonblocking(false)?;
    Ok(stream)
}

fn sockaddr_of(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain data, valid when zeroed.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is large and aligned enough for any sockaddr.
            unsafe { (&raw mut storage).cast::<libc::sockaddr_in>().write(sin) };
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: as above.
            unsafe { (&raw mut storage).cast::<libc::sockaddr_in6>().write(sin6) };
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
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
}

pub struct Conn {
    ftp: RustlsFtpStream,
    pub feats: Feats,
    pub last_used: Instant,
}

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
            let s = connect_early(addr).map_err(FtpError::ConnectionError)?;
            set_timeouts(&s, timeout).map_err(FtpError::ConnectionError)?;
            Ok(s)
        });
        let user = ep.spec.user.as_str();
        ftp.login(user, ep.spec.password.expose())
            .map_err(|e| ftp_err(label, &format!("login as {user}"), e))?;
        ftp.transfer_type(FileType::Binary)
            .map_err(|e| ftp_err(label, "TYPE I", e))?;
        let feats = match ftp.feat() {
            Ok(map) => parse_feats(map.keys().map(String::as_str), map.get("REST")),
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
        })
    }

    /// List `path` (a server path). MLSD where offered, else LIST.
    pub fn list_dir(&mut self, label: &str, path: &[u8]) -> Result<(Format, Vec<Vec<u8>>)> {
        check_arg(label, path)?;
        let wire = bytes_to_wire(path);
        let res = if self.feats.mlsd {
            self.ftp.mlsd(Some(&wire)).map(|l| (Format::Mlsd, l))
        } else if path
            .iter()
            .any(|b| matches!(b, b'*' | b'?' | b'[' | b'{' | b'~'))
        {
            // LIST arguments are globbed by many servers; CWD into such a directory instead.
            self.ftp
                .cwd(&wire)
                .and_then(|_| self.ftp.list(None))
                .map(|l| (Format::List, l))
        } else {
            self.ftp.list(Some(&wire)).map(|l| (Format::List, l))
        };
        self.last_used = Instant::now();
        let (format, lines) = res.map_err(|e| {
            ftp_err(
                label,
                &format!("listing {}", String::from_utf8_lossy(path)),
                e,
            )
        })?;
        Ok((format, lines.iter().map(|l| wire_to_bytes(l)).collect()))
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

    /// Stop a transfer in the middle (ABOR), then check the connection is in step again.
    /// A server that had already finished answers ABOR with an extra reply (vsftpd: "225 No
    /// transfer to ABOR") after the 226 suppaftp takes as the answer; the NOOP then reads that
    /// stray reply instead of its 200 and fails, so the caller drops the connection.
    pub fn abort(&mut self, label: &str, t: Transfer) -> Result<()> {
        self.last_used = Instant::now();
        self.ftp.abort(t).map_err(|e| ftp_err(label, "ABOR", e))?;
        self.noop(label)
    }

    pub fn noop(&mut self, label: &str) -> Result<()> {
        self.last_used = Instant::now();
        self.ftp.noop().map_err(|e| ftp_err(label, "NOOP", e))
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
        assert_eq!(wire_to_bytes(&bytes_to_wire(b"caf\xe9")), b"caf\xe9");
        assert!(ByteEncoding.encode("\u{263a}").is_err());
    }

    #[test]
    fn feats_are_read_case_insensitively() {
        let rest = Some("STREAM".to_string());
        let f = parse_feats(["mlst", "EPSV", " UTF8", "SIZE"].into_iter(), Some(&rest));
        assert!(f.mlsd && f.epsv && f.utf8 && f.size && f.rest_stream && !f.mdtm);
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
    fn early_connect_reaches_a_listener_and_reports_refusal() {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let mut s = connect_early(addr).unwrap();
        set_timeouts(&s, Duration::from_secs(5)).unwrap();
        // Writing while the handshake may still be going on waits for it.
        s.write_all(b"ping").unwrap();
        let (mut peer, _) = listener.accept().unwrap();
        let mut buf = [0u8; 4];
        peer.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"ping");
        peer.write_all(b"pong").unwrap();
        s.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"pong");
        drop(listener);
        // Nothing listens there any more: the first read reports the refusal.
        let mut s = connect_early(addr).unwrap();
        set_timeouts(&s, Duration::from_secs(5)).unwrap();
        assert!(s.read(&mut buf).is_err());
        let v6 = std::net::TcpListener::bind("[::1]:0");
        if let Ok(l6) = v6 {
            let mut s = connect_early(l6.local_addr().unwrap()).unwrap();
            s.write_all(b"x").unwrap();
            assert!(l6.accept().is_ok());
        }
    }

    #[test]
    fn reply_codes_choose_kinds() {
        let c = reply_code(0, "421 Too many users");
        assert_eq!(c, 421);
        assert_eq!(reply_code(550, "whatever"), 550);
    }
}
