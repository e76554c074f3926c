//! The TCP connection to the server: connect with a timeout, write
//! requests, read one response at a time within a deadline (with the
//! session's tolerant `ResponseReader`, in the revision's codes).

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use sealdrop_protocol::client::{sniff, ForeignService, ResponseError, ResponseReader, Sniff};
use sealdrop_protocol::{Response, Revision};

use crate::report::quoted;

/// Bytes read from the socket at a time. Responses are at most 286 bytes
/// (2103), so this holds several; what one read brings beyond a response
/// is kept for the next.
const READ_BUF_LEN: usize = 4096;

/// Where to connect, and how long to wait.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// Host name or address.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// Limit for opening the connection (per resolved address).
    pub connect_timeout: Duration,
    /// Limit for one response, and for each write to make progress.
    pub timeout: Duration,
    /// The revision whose responses are read.
    pub revision: Revision,
}

impl Endpoint {
    /// 127.0.0.1:`port` with 5 s timeouts, for tests against a local
    /// scripted server.
    #[cfg(test)]
    pub(crate) fn loopback_for_tests(port: u16) -> Endpoint {
        Endpoint {
            host: "127.0.0.1".into(),
            port,
            connect_timeout: Duration::from_secs(5),
            timeout: Duration::from_secs(5),
            revision: Revision::R2023c,
        }
    }

    /// The host's addresses (a literal address is its own).
    pub fn resolve(&self) -> Result<Vec<SocketAddr>, ResolveError> {
        let failed = |error| ResolveError {
            host: self.host.clone(),
            error,
        };
        let addrs: Vec<SocketAddr> = (self.host.as_str(), self.port)
            .to_socket_addrs()
            .map_err(failed)?
            .collect();
        if addrs.is_empty() {
            return Err(failed(io::Error::new(
                io::ErrorKind::NotFound,
                "no address found",
            )));
        }
        Ok(addrs)
    }

    /// Resolves the host and connects to the first address that answers.
    pub fn connect(&self) -> Result<Link, ConnectError> {
        let mut last = None;
        for addr in self.resolve().map_err(ConnectError::Resolve)? {
            match TcpStream::connect_timeout(&addr, self.connect_timeout) {
                Ok(stream) => {
                    return Link::new(stream, self.timeout, self.revision)
                        .map_err(ConnectError::Connect)
                }
                Err(e) => last = Some(e),
            }
        }
        // resolve() returns at least one address, so `last` is set.
        Err(ConnectError::Connect(last.unwrap_or_else(|| {
            io::Error::new(io::ErrorKind::NotFound, "no address found")
        })))
    }
}

/// The host name did not resolve (DNS, or /etc/hosts): retrying the same
/// name a fraction of a second later will not help, and the port is not
/// the problem.
#[derive(Debug)]
pub struct ResolveError {
    /// The name as given.
    pub host: String,
    /// The resolver's error.
    pub error: io::Error,
}

impl fmt::Display for ResolveError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cannot resolve host {} (DNS): {}",
            quoted(&self.host),
            describe_resolve(&self.error)
        )
    }
}

/// Why no connection could be opened.
#[derive(Debug)]
pub enum ConnectError {
    /// The host name has no address.
    Resolve(ResolveError),
    /// No address accepted the connection (the last address's error).
    Connect(io::Error),
}

/// The resolver's message without std's "failed to lookup address
/// information: " prefix: "name or service not known", "temporary
/// failure in name resolution".
fn describe_resolve(e: &io::Error) -> String {
    let text = e.to_string();
    let text = text
        .strip_prefix("failed to lookup address information: ")
        .unwrap_or(&text);
    strip_os_error(text)
}

/// Why no response could be read.
#[derive(Debug)]
pub enum ReadError {
    /// The connection failed, closed, or timed out.
    Io(io::Error),
    /// The bytes are not a valid response (framing lost), or a response
    /// of another revision.
    Decode(ResponseError),
    /// The first bytes of the connection are not this protocol at all:
    /// another service listens on the port.
    NotSealdrop(ForeignService),
}

/// One open connection.
pub struct Link {
    stream: TcpStream,
    decoder: ResponseReader,
    buf: Box<[u8; READ_BUF_LEN]>,
    start: usize,
    end: usize,
    timeout: Duration,
    /// Bytes received on this connection so far.
    received: u64,
    /// True once the first bytes were found to be this protocol's.
    sniffed: bool,
}

impl Link {
    fn new(stream: TcpStream, timeout: Duration, revision: Revision) -> io::Result<Link> {
        // Requests are small and followed by a wait for the answer: send
        // each at once rather than let Nagle hold it back.
        stream.set_nodelay(true)?;
        stream.set_write_timeout(Some(timeout))?;
        Ok(Link {
            stream,
            decoder: ResponseReader::new(revision),
            buf: Box::new([0; READ_BUF_LEN]),
            start: 0,
            end: 0,
            timeout,
            received: 0,
            sniffed: false,
        })
    }

    /// Writes all of `bytes`. Each write must make progress within the
    /// timeout.
    pub fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// Reads the next response, waiting at most the timeout in total. The
    /// first bytes of the connection are checked to be this protocol's
    /// ([`sniff`]) before they are decoded.
    pub fn read_response(&mut self) -> Result<Response, ReadError> {
        let deadline = Instant::now() + self.timeout;
        while !self.sniffed {
            // Nothing of this connection decoded yet: its first bytes
            // are all in the buffer.
            match sniff(&self.buf[self.start..self.end]) {
                Sniff::NeedMore => self.fill(deadline).map_err(ReadError::Io)?,
                Sniff::Sealdrop => self.sniffed = true,
                Sniff::Foreign(service) => return Err(ReadError::NotSealdrop(service)),
            }
        }
        loop {
            let mut input = &self.buf[self.start..self.end];
            let decoded = self.decoder.decode(&mut input);
            self.start = self.end - input.len();
            if let Some(response) = decoded.map_err(ReadError::Decode)? {
                return Ok(response);
            }
            self.fill(deadline).map_err(ReadError::Io)?;
        }
    }

    /// Bytes received on this connection so far.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Reads more bytes after those not yet decoded (only the first
    /// two bytes of a connection ever wait for more: the
    /// decoder takes everything it is given).
    fn fill(&mut self, deadline: Instant) -> io::Result<()> {
        if self.start == self.end {
            (self.start, self.end) = (0, 0);
        } else if self.end == self.buf.len() {
            // Not reached (see above), but never read into an empty slice.
            self.buf.copy_within(self.start..self.end, 0);
            (self.start, self.end) = (0, self.end - self.start);
        }
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::ErrorKind::TimedOut.into());
            }
            self.stream.set_read_timeout(Some(left))?;
            match self.stream.read(&mut self.buf[self.end..]) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => {
                    self.end += n;
                    self.received += n as u64;
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Closes the connection (both directions; errors are moot by then).
    pub fn close(self) {
        let _ = self.stream.shutdown(Shutdown::Both);
    }
}

/// A short lower-case description of a network or file error for the
/// one-line failure messages, without "(os error N)" noise.
pub fn describe(e: &io::Error) -> String {
    use io::ErrorKind::*;
    let text = match e.kind() {
        ConnectionRefused => "connection refused",
        ConnectionReset => "connection reset by the server",
        ConnectionAborted => "connection aborted",
        BrokenPipe | UnexpectedEof => "connection closed by the server",
        TimedOut | WouldBlock => "timed out",
        NotFound => "not found",
        PermissionDenied => "permission denied",
        AddrNotAvailable => "address not available",
        HostUnreachable => "host unreachable",
        NetworkUnreachable => "network unreachable",
        IsADirectory => "is a directory",
        _ => return strip_os_error(&e.to_string()),
    };
    text.to_string()
}

/// "No such device (os error 19)" -> "no such device".
fn strip_os_error(text: &str) -> String {
    let text = match text.find(" (os error") {
        Some(i) => &text[..i],
        None => text,
    };
    let mut chars = text.chars();
    match chars.next() {
        Some(c) => c.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// True for errors that mean "no answer in time".
pub fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptions_are_short() {
        let refused = io::Error::from(io::ErrorKind::ConnectionRefused);
        assert_eq!(describe(&refused), "connection refused");
        let other = io::Error::from_raw_os_error(19);
        assert!(
            !describe(&other).contains("os error"),
            "{}",
            describe(&other)
        );
    }

    /// A server on 127.0.0.1 that reads the request, then writes `answer`
    /// in pieces `cuts` apart, then keeps the connection open a moment.
    fn answering(answer: &'static [u8], cuts: &'static [usize]) -> u16 {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut from = 0;
            for &to in cuts.iter().chain([&answer.len()]) {
                s.write_all(&answer[from..to]).unwrap();
                std::thread::sleep(Duration::from_millis(20));
                from = to;
            }
            std::thread::sleep(Duration::from_millis(200));
        });
        port
    }

    #[test]
    fn another_protocol_is_named_on_its_first_bytes() {
        let port = answering(b"HTTP/1.1 400 Bad Request\r\n\r\n", &[1, 2]);
        let mut link = Endpoint::loopback_for_tests(port).connect().unwrap();
        let started = Instant::now();
        match link.read_response() {
            Err(ReadError::NotSealdrop(f)) => {
                assert_eq!(f.protocol, Some("HTTP"));
                assert!(f.shown.starts_with("HTTP/"), "{f:?}");
            }
            other => panic!("{other:?}"),
        }
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn a_response_split_in_its_first_bytes_is_read() {
        let ack: &[u8] = &[3, 0x3b, 0x08, 0, 0, 0, 0];
        let port = answering(ack, &[1, 2]);
        let mut link = Endpoint::loopback_for_tests(port).connect().unwrap();
        assert!(matches!(link.read_response(), Ok(Response::GeneralError)));
        assert_eq!(link.received(), 7);
    }

    #[test]
    fn an_unresolvable_host_is_a_resolve_error() {
        let ep = Endpoint {
            host: "nosuch.invalid".into(),
            ..Endpoint::loopback_for_tests(1)
        };
        match ep.connect() {
            Err(ConnectError::Resolve(e)) => {
                let text = e.to_string();
                assert!(
                    text.starts_with("cannot resolve host 'nosuch.invalid' (DNS): "),
                    "{text}"
                );
                assert!(
                    !text.contains("os error") && !text.contains("lookup"),
                    "{text}"
                );
            }
            Err(ConnectError::Connect(e)) => panic!("{e}"),
            Ok(_) => panic!("nosuch.invalid resolved"),
        }
        // A literal address needs no resolver.
        let ep = Endpoint::loopback_for_tests(1);
        assert_eq!(ep.resolve().unwrap().len(), 1);
    }

    #[test]
    fn reads_responses_split_and_joined() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let ack = [3u8, 0x38, 0x08, 16, 0, 0, 0];
            s.write_all(&ack[..3]).unwrap();
            std::thread::sleep(Duration::from_millis(20));
            let mut rest = ack[3..].to_vec();
            rest.extend_from_slice(&[1; 16]);
            rest.extend_from_slice(&[3, 0x3b, 0x08, 0, 0, 0, 0]);
            s.write_all(&rest).unwrap();
        });
        let ep = Endpoint::loopback_for_tests(port);
        let mut link = ep.connect().unwrap();
        assert!(matches!(link.read_response(), Ok(Response::Ack { .. })));
        assert!(matches!(link.read_response(), Ok(Response::GeneralError)));
        assert!(
            matches!(link.read_response(), Err(ReadError::Io(e)) if e.kind() == io::ErrorKind::UnexpectedEof)
        );
        server.join().unwrap();
    }
}
