//! Connections to the database that never give the password away: over a
//! connection without TLS (`sslmode=disable`, or `prefer` against a server
//! that declined TLS) a server that asks for the password in cleartext
//! (`password` in `pg_hba.conf`) or as MD5 (`md5`, replayable and weak) is
//! refused before anything is sent. SCRAM (`scram-sha-256`, PostgreSQL's
//! default) proves the password without revealing it and is let through.
//!
//! tokio-postgres has no libpq `require_auth`, so [`Guarded`] sits between
//! it and the socket and reads what the server says until authentication
//! ends: the answer to the `SSLRequest` (`S`: TLS follows, nothing more to
//! read) and the `Authentication` messages of the startup (the message
//! formats of PostgreSQL's "Message Formats" chapter).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::config::Host;

/// The 8 bytes of an `SSLRequest`: length 8, code 80877103.
const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];

/// What the server asked that is refused without TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `AuthenticationCleartextPassword` (code 3).
    Cleartext,
    /// `AuthenticationMD5Password` (code 5).
    Md5,
}

impl Refusal {
    fn error(self) -> io::Error {
        let (how, method) = match self {
            Refusal::Cleartext => ("in cleartext", "password"),
            Refusal::Md5 => ("as MD5", "md5"),
        };
        io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "the database asked for the password {how} over a connection without TLS; harbor-relay does not send it: turn TLS on (sslmode=require, store.ca_file) or use scram-sha-256 instead of {method} in pg_hba.conf"
            ),
        )
    }
}

/// Where the watch over a connection's startup is.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Watch {
    /// Nothing sent yet.
    Start,
    /// An `SSLRequest` sent; the server's one-byte answer is next.
    SslAsked,
    /// In the clear: reading the server's messages (`have` bytes of the
    /// current header, then `skip` bytes of its body).
    Plain {
        header: [u8; 9],
        have: usize,
        skip: u32,
    },
    /// TLS, or authentication over: nothing more to watch.
    Off,
}

/// The startup watch, without I/O: fed what the client writes and what
/// the server answers.
#[derive(Debug, Clone)]
pub struct Startup {
    watch: Watch,
}

impl Default for Startup {
    fn default() -> Startup {
        Startup {
            watch: Watch::Start,
        }
    }
}

fn plain() -> Watch {
    Watch::Plain {
        header: [0; 9],
        have: 0,
        skip: 0,
    }
}

impl Startup {
    /// The client's first write says whether TLS is asked for.
    pub fn wrote(&mut self, bytes: &[u8]) {
        if self.watch == Watch::Start && !bytes.is_empty() {
            self.watch = match bytes.starts_with(&SSL_REQUEST) {
                true => Watch::SslAsked,
                false => plain(),
            };
        }
    }

    /// Reads what the server sent; a refusal ends the connection.
    pub fn read(&mut self, mut bytes: &[u8]) -> Result<(), Refusal> {
        while !bytes.is_empty() {
            match &mut self.watch {
                Watch::Start | Watch::Off => return Ok(()),
                Watch::SslAsked => {
                    self.watch = match bytes[0] {
                        b'S' => Watch::Off,
                        _ => plain(),
                    };
                    bytes = &bytes[1..];
                }
                Watch::Plain { header, have, skip } => {
                    if *skip > 0 {
                        let n = (*skip as usize).min(bytes.len());
                        *skip -= n as u32;
                        bytes = &bytes[n..];
                        continue;
                    }
                    // An `R` header holds its code too: 9 bytes, else 5.
                    let want = if *have > 0 && header[0] == b'R' { 9 } else { 5 };
                    let n = (want - *have).min(bytes.len());
                    header[*have..*have + n].copy_from_slice(&bytes[..n]);
                    *have += n;
                    bytes = &bytes[n..];
                    if *have < want || (*have == 5 && header[0] == b'R') {
                        continue;
                    }
                    let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]);
                    let body = len.saturating_sub(4);
                    if header[0] == b'R' {
                        let code = u32::from_be_bytes([header[5], header[6], header[7], header[8]]);
                        match code {
                            0 => {
                                self.watch = Watch::Off;
                                continue;
                            }
                            3 => return Err(Refusal::Cleartext),
                            5 => return Err(Refusal::Md5),
                            _ => *skip = body.saturating_sub(4),
                        }
                    } else {
                        *skip = body;
                    }
                    *have = 0;
                }
            }
        }
        Ok(())
    }
}

/// The socket under a database connection, watched by [`Startup`] (not
/// on a Unix socket, where nothing crosses a network), or the error that
/// opening it gave, returned by the first I/O so that tokio-postgres
/// reports it as its own.
pub struct Guarded {
    inner: Inner,
    startup: Option<Startup>,
}

enum Inner {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
    Failed(Option<io::Error>),
}

impl Guarded {
    /// Opens the first of the config's hosts that answers, as
    /// tokio-postgres would (with its connect timeout).
    pub async fn open(cfg: &tokio_postgres::Config) -> (Guarded, String) {
        let ports = cfg.get_ports();
        let mut last = io::Error::new(io::ErrorKind::InvalidInput, "the URL names no host");
        let mut first_host = String::new();
        for (i, host) in cfg.get_hosts().iter().enumerate() {
            let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
            let opened = match host {
                Host::Tcp(h) => {
                    if first_host.is_empty() {
                        first_host = h.clone();
                    }
                    let connect = tokio::net::TcpStream::connect((h.as_str(), port));
                    match within(cfg, connect).await {
                        Ok(s) => {
                            let _ = s.set_nodelay(true);
                            Ok((Inner::Tcp(s), h.clone(), true))
                        }
                        Err(e) => Err(e),
                    }
                }
                Host::Unix(dir) => {
                    let path = dir.join(format!(".s.PGSQL.{port}"));
                    within(cfg, tokio::net::UnixStream::connect(path))
                        .await
                        .map(|s| (Inner::Unix(s), String::new(), false))
                }
            };
            match opened {
                Ok((inner, name, watched)) => {
                    let g = Guarded {
                        inner,
                        startup: watched.then(Startup::default),
                    };
                    return (g, name);
                }
                Err(e) => last = e,
            }
        }
        let failed = Guarded {
            inner: Inner::Failed(Some(last)),
            startup: None,
        };
        (failed, first_host)
    }
}

async fn within<T>(
    cfg: &tokio_postgres::Config,
    f: impl std::future::Future<Output = io::Result<T>>,
) -> io::Result<T> {
    match cfg.get_connect_timeout() {
        None => f.await,
        Some(t) => tokio::time::timeout(*t, f)
            .await
            .unwrap_or_else(|_| Err(io::Error::new(io::ErrorKind::TimedOut, "connect timeout"))),
    }
}

fn failed(e: &mut Option<io::Error>) -> io::Error {
    e.take()
        .unwrap_or_else(|| io::Error::new(io::ErrorKind::NotConnected, "not connected"))
}

impl AsyncRead for Guarded {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        let before = buf.filled().len();
        let polled = match &mut me.inner {
            Inner::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Inner::Unix(s) => Pin::new(s).poll_read(cx, buf),
            Inner::Failed(e) => return Poll::Ready(Err(failed(e))),
        };
        if let (Poll::Ready(Ok(())), Some(startup)) = (&polled, &mut me.startup)
            && let Err(refusal) = startup.read(&buf.filled()[before..])
        {
            return Poll::Ready(Err(refusal.error()));
        }
        polled
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let me = self.get_mut();
        if let Some(startup) = &mut me.startup {
            startup.wrote(buf);
        }
        match &mut me.inner {
            Inner::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Inner::Unix(s) => Pin::new(s).poll_write(cx, buf),
            Inner::Failed(e) => Poll::Ready(Err(failed(e))),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().inner {
            Inner::Tcp(s) => Pin::new(s).poll_flush(cx),
            Inner::Unix(s) => Pin::new(s).poll_flush(cx),
            Inner::Failed(e) => Poll::Ready(Err(failed(e))),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().inner {
            Inner::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Inner::Unix(s) => Pin::new(s).poll_shutdown(cx),
            Inner::Failed(_) => Poll::Ready(Ok(())),
        }
    }
}

type TlsStream = <tokio_postgres_rustls::MakeRustlsConnect as tokio_postgres::tls::MakeTlsConnect<Guarded>>::Stream;

/// A database connection over a [`Guarded`] socket, with or without TLS.
pub enum Conn {
    /// `sslmode=disable`.
    Clear(Box<tokio_postgres::Connection<Guarded, tokio_postgres::tls::NoTlsStream>>),
    /// TLS asked for (`prefer`, `require`).
    Tls(Box<tokio_postgres::Connection<Guarded, TlsStream>>),
}

impl Conn {
    /// The connection's next message (notifications, for `LISTEN`).
    pub fn poll_message(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<tokio_postgres::AsyncMessage, tokio_postgres::Error>>> {
        match self {
            Conn::Clear(c) => c.poll_message(cx),
            Conn::Tls(c) => c.poll_message(cx),
        }
    }
}

impl std::future::Future for Conn {
    type Output = Result<(), tokio_postgres::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.get_mut() {
            Conn::Clear(c) => Pin::new(c.as_mut()).poll(cx),
            Conn::Tls(c) => Pin::new(c.as_mut()).poll(cx),
        }
    }
}

/// Connects as `cfg` says over a [`Guarded`] socket.
pub async fn connect(
    cfg: &tokio_postgres::Config,
    tls: &super::DbTls,
) -> Result<(tokio_postgres::Client, Conn), tokio_postgres::Error> {
    use tokio_postgres::tls::MakeTlsConnect;
    let (socket, host) = Guarded::open(cfg).await;
    match tls {
        super::DbTls::Clear => {
            let (client, conn) = cfg.connect_raw(socket, tokio_postgres::NoTls).await?;
            Ok((client, Conn::Clear(Box::new(conn))))
        }
        super::DbTls::Rustls(make) => {
            let mut make = make.clone();
            let connector = match MakeTlsConnect::<Guarded>::make_tls_connect(&mut make, &host) {
                Ok(c) => c,
                Err(never) => match never {},
            };
            let (client, conn) = cfg.connect_raw(socket, connector).await?;
            Ok((client, Conn::Tls(Box::new(conn))))
        }
    }
}

/// deadpool's way of making a connection: [`connect`], with the connection
/// driven by a task of its own.
pub struct GuardedConnect(pub super::DbTls);

impl deadpool_postgres::Connect for GuardedConnect {
    fn connect(
        &self,
        cfg: &tokio_postgres::Config,
    ) -> futures_util::future::BoxFuture<
        '_,
        Result<(tokio_postgres::Client, tokio::task::JoinHandle<()>), tokio_postgres::Error>,
    > {
        let cfg = cfg.clone();
        Box::pin(async move {
            let (client, conn) = connect(&cfg, &self.0).await?;
            let task = tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "a connection to the job store ended");
                }
            });
            Ok((client, task))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An `Authentication` message with `code` and `extra` body bytes.
    fn auth(code: u32, extra: &[u8]) -> Vec<u8> {
        let mut m = vec![b'R'];
        m.extend_from_slice(&(8 + extra.len() as u32).to_be_bytes());
        m.extend_from_slice(&code.to_be_bytes());
        m.extend_from_slice(extra);
        m
    }

    fn fed_one_byte_at_a_time(s: &mut Startup, bytes: &[u8]) -> Result<(), Refusal> {
        for b in bytes {
            s.read(std::slice::from_ref(b))?;
        }
        Ok(())
    }

    #[test]
    fn cleartext_and_md5_are_refused_in_the_clear() {
        for (code, extra, refusal) in [
            (3, &[][..], Refusal::Cleartext),
            (5, &[1, 2, 3, 4][..], Refusal::Md5),
        ] {
            let mut s = Startup::default();
            s.wrote(b"\0\0\0\x29startup...");
            assert_eq!(s.read(&auth(code, extra)), Err(refusal));
            let mut s = Startup::default();
            s.wrote(b"\0\0\0\x29startup...");
            assert_eq!(
                fed_one_byte_at_a_time(&mut s, &auth(code, extra)),
                Err(refusal)
            );
        }
    }

    #[test]
    fn scram_and_trust_pass_and_nothing_after_authentication_is_read() {
        let mut s = Startup::default();
        s.wrote(b"\0\0\0\x29startup...");
        let mut server = auth(10, b"SCRAM-SHA-256\0\0");
        server.extend(auth(11, b"r=abc,s=def,i=4096"));
        server.extend(auth(12, b"v=xyz"));
        server.extend(auth(0, b""));
        // After AuthenticationOk anything goes, even bytes that look like R 3.
        server.extend(auth(3, b""));
        assert_eq!(fed_one_byte_at_a_time(&mut s, &server), Ok(()));
        let mut s = Startup::default();
        s.wrote(b"\0\0\0\x29startup...");
        assert_eq!(s.read(&server), Ok(()));
    }

    #[test]
    fn other_messages_before_authentication_are_skipped_whole() {
        let mut s = Startup::default();
        s.wrote(b"\0\0\0\x29startup...");
        // A NoticeResponse whose body holds an R and a code 3.
        let mut server = vec![b'N', 0, 0, 0, 13];
        server.extend_from_slice(b"R\0\0\0\x08\0\0\0\x03");
        server.extend(auth(3, b""));
        assert_eq!(
            s.read(&server[..14]),
            Ok(()),
            "the notice's body is not a message"
        );
        assert_eq!(s.read(&server[14..]), Err(Refusal::Cleartext));
    }

    #[test]
    fn tls_accepted_ends_the_watch_and_tls_declined_starts_it() {
        let mut s = Startup::default();
        s.wrote(&SSL_REQUEST);
        assert_eq!(s.read(b"S\x16\x03\x03R\0\0\0\x08\0\0\0\x03"), Ok(()));
        let mut s = Startup::default();
        s.wrote(&SSL_REQUEST);
        assert_eq!(s.read(b"N"), Ok(()));
        s.wrote(b"\0\0\0\x29startup...");
        assert_eq!(s.read(&auth(3, b"")), Err(Refusal::Cleartext));
    }
}
