//! The `--metrics-listen` endpoint: just enough HTTP/1.x to answer
//! `GET /metrics`, served from the event loop's own poll as mio sources
//! (no thread: a scrape is rare and small, and rendering takes
//! microseconds).
//!
//! A scraper can never stall the loop or grow memory: every socket is
//! non-blocking; at most [`MAX_SCRAPERS`] are served at once (more are
//! answered 503 and closed); a request head may hold at most
//! [`MAX_REQUEST_BYTES`] (431 beyond) and must arrive within
//! [`READ_TIMEOUT`] of the connect; the response is rendered once into a
//! buffer when the request is complete and must be taken within
//! [`WRITE_TIMEOUT`]. One request per connection (`Connection: close`).
//!
//! Answers: 200 with the metrics for `GET /metrics` (a query string is
//! ignored), 404 for any other path, 405 for another method on
//! `/metrics`, 400 for a head that is not HTTP/1.x, 431 for an oversized
//! head, 503 while all slots are taken.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mio::event::Event;
use mio::net::{TcpListener, TcpStream};
use mio::{Interest, Registry, Token};
use prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Scrape connections served at once. Prometheus keeps one per target;
/// a pair of them plus someone with curl fit with room to spare.
pub const MAX_SCRAPERS: usize = 8;
/// Largest request head (request line and headers) read. A scraper's is
/// a few hundred bytes.
pub const MAX_REQUEST_BYTES: usize = 8 * 1024;
/// Time from the connect to the end of the request head.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Time the peer has to take the whole response.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// After the response, what the peer still sends is read and dropped for
/// up to this long (and [`LINGER_BYTES`]) before the close, so the close
/// does not reset the connection before the response is read.
const LINGER: Duration = Duration::from_secs(1);
/// Most bytes dropped while lingering.
const LINGER_BYTES: usize = 64 * 1024;
/// Connections accepted per loop pass; the rest wait for the next pass.
const ACCEPT_BUDGET: usize = 32;
/// Pause after a failed accept (out of descriptors, most likely), so the
/// loop does not spin on a listener it cannot serve.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// Bytes asked for per read.
const READ_CHUNK: usize = 2048;

/// The listener's poll token; scrapers take the ones just below. Far
/// from the client connections (slab keys) and the loop's own tokens.
const LISTENER: usize = usize::MAX - 256;

// Below the loop's listener tokens (usize::MAX - 16 and the
// MAX_LISTENERS - 1 below it).
const _: () = assert!(LISTENER < usize::MAX - 16 - crate::event_loop::MAX_LISTENERS);

/// Whether a poll token is the endpoint's.
pub fn owns(token: Token) -> bool {
    token.0 <= LISTENER && token.0 >= LISTENER - MAX_SCRAPERS
}

fn slot_token(slot: usize) -> Token {
    Token(LISTENER - 1 - slot)
}

/// What a request head gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    /// 200 with the metrics.
    Metrics,
    /// 400.
    BadRequest,
    /// 404.
    NotFound,
    /// 405.
    MethodNotAllowed,
    /// 431.
    TooLarge,
    /// 503.
    Busy,
}

/// The reply to what has arrived so far of a request, or `None` while
/// the head is incomplete and within [`MAX_REQUEST_BYTES`].
pub fn classify(head: &[u8]) -> Option<Reply> {
    let end = head
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .or_else(|| head.windows(2).position(|w| w == b"\n\n"));
    let Some(end) = end.filter(|&e| e <= MAX_REQUEST_BYTES) else {
        return (head.len() > MAX_REQUEST_BYTES).then_some(Reply::TooLarge);
    };
    let line = head[..end].split(|&b| b == b'\n').next().unwrap_or(&[]);
    let line = std::str::from_utf8(line)
        .unwrap_or("")
        .trim_end_matches('\r');
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Some(Reply::BadRequest);
    };
    if !matches!(version, "HTTP/1.0" | "HTTP/1.1") || method.is_empty() {
        return Some(Reply::BadRequest);
    }
    let path = target.split('?').next().unwrap_or("");
    Some(match (path, method) {
        ("/metrics", "GET") => Reply::Metrics,
        ("/metrics", _) => Reply::MethodNotAllowed,
        _ => Reply::NotFound,
    })
}

/// The whole response for `reply`; `render` is called only for 200.
pub fn response(reply: Reply, render: &mut dyn FnMut() -> String) -> Vec<u8> {
    let (status, extra, content_type, body) = match reply {
        Reply::Metrics => ("200 OK", "", CONTENT_TYPE, render()),
        Reply::BadRequest => ("400 Bad Request", "", TEXT, "bad request\n".into()),
        Reply::NotFound => ("404 Not Found", "", TEXT, "only /metrics is here\n".into()),
        Reply::MethodNotAllowed => (
            "405 Method Not Allowed",
            "Allow: GET\r\n",
            TEXT,
            "only GET\n".into(),
        ),
        Reply::TooLarge => (
            "431 Request Header Fields Too Large",
            "",
            TEXT,
            "request head too large\n".into(),
        ),
        Reply::Busy => (
            "503 Service Unavailable",
            "",
            TEXT,
            "too many scrapes at once\n".into(),
        ),
    };
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Cache-Control: no-store\r\nConnection: close\r\n{extra}\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body.as_bytes());
    out
}

const TEXT: &str = "text/plain; charset=utf-8";

/// Where a scrape connection is.
enum Phase {
    /// Reading the request head.
    Request(Vec<u8>),
    /// Writing the response.
    Response { bytes: Vec<u8>, sent: usize },
    /// Response written and write side shut: dropping what still comes.
    Linger { dropped: usize },
}

struct Scraper {
    stream: TcpStream,
    phase: Phase,
    deadline: Instant,
    readable: bool,
    writable: bool,
}

/// The listening socket and the scrapers being served.
pub struct Endpoint {
    listener: TcpListener,
    addr: SocketAddr,
    slots: Vec<Option<Scraper>>,
    /// Connections may be waiting to be accepted.
    backlog: bool,
    /// Accepting paused until then after an accept failed.
    paused_until: Option<Instant>,
}

impl Endpoint {
    /// Binds `addr` and registers the listener with `poll`.
    pub fn bind(addr: SocketAddr, poll: &Registry) -> io::Result<Endpoint> {
        let std_listener = std::net::TcpListener::bind(addr).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot listen for metrics on {addr}: {e}"),
            )
        })?;
        std_listener.set_nonblocking(true)?;
        let mut listener = TcpListener::from_std(std_listener);
        let addr = listener.local_addr()?;
        poll.register(&mut listener, Token(LISTENER), Interest::READABLE)?;
        Ok(Endpoint {
            listener,
            addr,
            slots: (0..MAX_SCRAPERS).map(|_| None).collect(),
            backlog: true,
            paused_until: None,
        })
    }

    /// The address listened on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Notes a poll event; the work is done in [`Endpoint::serve`].
    pub fn on_event(&mut self, token: Token, event: &Event) {
        if token.0 == LISTENER {
            self.backlog = true;
            return;
        }
        let slot = LISTENER - 1 - token.0;
        if let Some(Some(s)) = self.slots.get_mut(slot) {
            if event.is_readable() || event.is_read_closed() || event.is_error() {
                s.readable = true;
            }
            if event.is_writable() || event.is_write_closed() || event.is_error() {
                s.writable = true;
            }
        }
    }

    /// Accepts waiting scrapers, moves bytes for every one that can, and
    /// closes those done or past their deadline.
    pub fn serve(&mut self, poll: &Registry, now: Instant, render: &mut dyn FnMut() -> String) {
        if self.backlog && self.paused_until.is_none_or(|t| now >= t) {
            self.paused_until = None;
            self.accept(poll, now);
        }
        for slot in 0..self.slots.len() {
            let Some(s) = self.slots[slot].as_mut() else {
                continue;
            };
            let keep = now < s.deadline && step(s, now, render);
            if !keep {
                if let Some(mut s) = self.slots[slot].take() {
                    let _ = poll.deregister(&mut s.stream);
                }
            }
        }
    }

    /// The earliest deadline of a scraper; now if connections wait to be
    /// accepted.
    pub fn next_deadline(&self) -> Option<Instant> {
        let accept = self
            .backlog
            .then(|| self.paused_until.unwrap_or_else(Instant::now));
        let slots = self.slots.iter().flatten().map(|s| s.deadline).min();
        accept.into_iter().chain(slots).min()
    }

    fn accept(&mut self, poll: &Registry, now: Instant) {
        for _ in 0..ACCEPT_BUDGET {
            let (mut stream, peer) = match self.listener.accept() {
                Ok(accepted) => accepted,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.backlog = false;
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::warn!("metrics: accept failed: {e}; pausing for {ACCEPT_BACKOFF:?}");
                    self.paused_until = Some(now + ACCEPT_BACKOFF);
                    return;
                }
            };
            let Some(slot) = self.slots.iter().position(Option::is_none) else {
                // A best-effort 503 into the fresh socket's buffer, then
                // close, after taking what already arrived (a close over
                // unread bytes would reset the connection, 503 and all).
                let _ = stream.write(&response(Reply::Busy, &mut String::new));
                let _ = stream.shutdown(std::net::Shutdown::Write);
                let _ = stream.read(&mut [0u8; READ_CHUNK]);
                log::debug!("metrics: {peer} refused, {MAX_SCRAPERS} scrapes in progress");
                continue;
            };
            if let Err(e) = poll.register(
                &mut stream,
                slot_token(slot),
                Interest::READABLE | Interest::WRITABLE,
            ) {
                log::warn!("metrics: cannot register {peer}: {e}");
                continue;
            }
            self.slots[slot] = Some(Scraper {
                stream,
                phase: Phase::Request(Vec::new()),
                deadline: now + READ_TIMEOUT,
                readable: true,
                writable: true,
            });
        }
    }
}

/// Moves bytes for one scraper until it would block; false once it is
/// to be closed.
fn step(s: &mut Scraper, now: Instant, render: &mut dyn FnMut() -> String) -> bool {
    let mut chunk = [0u8; READ_CHUNK];
    loop {
        match &mut s.phase {
            Phase::Request(head) => {
                if !s.readable {
                    return true;
                }
                // One byte past the limit tells an oversized head apart.
                let room = (MAX_REQUEST_BYTES + 1 - head.len()).min(READ_CHUNK);
                match s.stream.read(&mut chunk[..room]) {
                    Ok(0) => return false,
                    Ok(n) => {
                        head.extend_from_slice(&chunk[..n]);
                        if let Some(reply) = classify(head) {
                            s.phase = Phase::Response {
                                bytes: response(reply, render),
                                sent: 0,
                            };
                            s.deadline = now + WRITE_TIMEOUT;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => s.readable = false,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => return false,
                }
            }
            Phase::Response { bytes, sent } => {
                if !s.writable {
                    return true;
                }
                match s.stream.write(&bytes[*sent..]) {
                    Ok(0) => return false,
                    Ok(n) => {
                        *sent += n;
                        if *sent == bytes.len() {
                            let _ = s.stream.shutdown(std::net::Shutdown::Write);
                            s.phase = Phase::Linger { dropped: 0 };
                            s.deadline = s.deadline.min(now + LINGER);
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => s.writable = false,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => return false,
                }
            }
            Phase::Linger { dropped } => {
                if !s.readable {
                    return true;
                }
                match s.stream.read(&mut chunk) {
                    Ok(0) => return false,
                    Ok(n) => {
                        *dropped += n;
                        if *dropped > LINGER_BYTES {
                            return false;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => s.readable = false,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => return false,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_classified_by_path_then_method() {
        let c = |text: &str| classify(text.as_bytes());
        assert_eq!(
            c("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            Some(Reply::Metrics)
        );
        assert_eq!(c("GET /metrics?x=1 HTTP/1.0\n\n"), Some(Reply::Metrics));
        assert_eq!(
            c("POST /metrics HTTP/1.1\r\n\r\n"),
            Some(Reply::MethodNotAllowed)
        );
        assert_eq!(c("GET / HTTP/1.1\r\n\r\n"), Some(Reply::NotFound));
        assert_eq!(c("DELETE /other HTTP/1.1\r\n\r\n"), Some(Reply::NotFound));
        assert_eq!(c("GET /metrics SPDY/3\r\n\r\n"), Some(Reply::BadRequest));
        assert_eq!(c("GET /metrics\r\n\r\n"), Some(Reply::BadRequest));
        assert_eq!(c("\u{1}\u{2}\r\n\r\n"), Some(Reply::BadRequest));
        assert_eq!(c("GET /metrics HTTP/1.1\r\nHost: x\r\n"), None);
        let long = format!(
            "GET /metrics HTTP/1.1\r\nX: {}",
            "a".repeat(MAX_REQUEST_BYTES)
        );
        assert_eq!(c(&long), Some(Reply::TooLarge));
        let fits = format!(
            "GET /metrics HTTP/1.1\r\nX: {}\r\n\r\n",
            "a".repeat(MAX_REQUEST_BYTES - 40)
        );
        assert_eq!(c(&fits), Some(Reply::Metrics));
    }

    #[test]
    fn responses_carry_length_type_and_close() {
        let mut rendered = 0;
        let ok = response(Reply::Metrics, &mut || {
            rendered += 1;
            "a 1\n".into()
        });
        let text = String::from_utf8(ok).unwrap();
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
        assert!(text.contains("Content-Type: text/plain; version=0.0.4"));
        assert!(text.contains("Content-Length: 4\r\n"));
        assert!(text.contains("Connection: close\r\n"));
        assert!(text.ends_with("\r\n\r\na 1\n"));
        let no = response(Reply::MethodNotAllowed, &mut || unreachable!());
        let no = String::from_utf8(no).unwrap();
        assert!(no.starts_with("HTTP/1.1 405 "));
        assert!(no.contains("Allow: GET\r\n"));
        assert_eq!(rendered, 1);
    }

    #[test]
    fn tokens_stay_clear_of_the_loop_and_connections() {
        assert!(owns(Token(LISTENER)));
        assert!(owns(slot_token(MAX_SCRAPERS - 1)));
        assert!(!owns(Token(LISTENER + 1)));
        assert!(!owns(Token(LISTENER - MAX_SCRAPERS - 1)));
        assert!(!owns(Token(0)));
    }
}
