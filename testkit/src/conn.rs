//! One blocking TCP connection to a server: raw bytes out, raw bytes or
//! decoded responses in, every read and write bounded by a timeout.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use sealdrop_protocol::{ClientId, Request, Response, ResponseDecoder, Revision};

use crate::frames::{code_in, request_frame_in};
use crate::{IO_TIMEOUT, REV};

/// Bytes asked for per read: responses are at most 286 bytes.
const READ_SIZE: usize = 4096;

/// What ended a read attempt.
#[derive(Debug)]
pub enum RecvError {
    /// The server closed (EOF) or reset the connection.
    Closed,
    /// Nothing arrived in time.
    Timeout,
    /// Another I/O error.
    Io(io::Error),
    /// The bytes were not a valid response.
    Decode(String),
}

impl fmt::Display for RecvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecvError::Closed => f.write_str("the server closed the connection"),
            RecvError::Timeout => f.write_str("no response in time"),
            RecvError::Io(e) => write!(f, "read: {e}"),
            RecvError::Decode(e) => write!(f, "bad response: {e}"),
        }
    }
}

impl std::error::Error for RecvError {}

/// One blocking TCP connection to the server, with response decoding.
/// It speaks one revision ([`REV`] unless opened with another): requests
/// are encoded and responses decoded in it.
pub struct Conn {
    /// The socket, for tests that write from another thread
    /// (`try_clone`) or set socket options.
    pub stream: TcpStream,
    rev: Revision,
    dec: ResponseDecoder,
    /// Received bytes are `rbuf[rpos..rend]` (the rest is room for the
    /// next read).
    rbuf: Vec<u8>,
    rpos: usize,
    rend: usize,
    /// The timeout of every read and write unless a call names another.
    timeout: Duration,
    /// What the socket's read timeout is set to now.
    read_timeout: Duration,
}

impl Conn {
    /// Connects (within 10 s) with [`IO_TIMEOUT`] on reads and writes;
    /// panics if the connection fails.
    pub fn connect(addr: SocketAddr) -> Conn {
        TcpStream::connect_timeout(&addr, Duration::from_secs(10))
            .and_then(|s| Conn::with_timeout(s, IO_TIMEOUT))
            .unwrap_or_else(|e| panic!("connect {addr}: {e}"))
    }

    /// As [`Conn::connect`], speaking `rev`.
    pub fn connect_in(addr: SocketAddr, rev: Revision) -> Conn {
        let mut c = Conn::connect(addr);
        c.set_revision(rev);
        c
    }

    /// Connects with `timeout` for the connect itself and for every read
    /// and write.
    pub fn open(addr: SocketAddr, timeout: Duration) -> io::Result<Conn> {
        let stream = TcpStream::connect_timeout(&addr, timeout)?;
        Conn::with_timeout(stream, timeout)
    }

    /// As [`Conn::open`], speaking `rev`.
    pub fn open_in(addr: SocketAddr, timeout: Duration, rev: Revision) -> io::Result<Conn> {
        let mut c = Conn::open(addr, timeout)?;
        c.set_revision(rev);
        Ok(c)
    }

    /// Wraps a connected socket, with [`IO_TIMEOUT`] on reads and writes.
    pub fn from_stream(stream: TcpStream) -> Conn {
        Conn::with_timeout(stream, IO_TIMEOUT).expect("set socket timeouts")
    }

    /// Wraps a connected socket, with `timeout` on reads and writes.
    pub fn with_timeout(stream: TcpStream, timeout: Duration) -> io::Result<Conn> {
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        let _ = stream.set_nodelay(true);
        Ok(Conn {
            stream,
            rev: REV,
            dec: ResponseDecoder::new(REV),
            rbuf: vec![0; READ_SIZE],
            rpos: 0,
            rend: 0,
            timeout,
            read_timeout: timeout,
        })
    }

    /// The timeout of reads and writes that name none.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The revision requests are encoded and responses decoded in.
    pub fn revision(&self) -> Revision {
        self.rev
    }

    /// Speaks `rev` from now on. Call it before the first request: a
    /// response half received is decoded afresh in `rev`.
    pub fn set_revision(&mut self, rev: Revision) {
        self.rev = rev;
        self.dec = ResponseDecoder::new(rev);
    }

    /// Writes all of `bytes`; panics on an error.
    pub fn send(&mut self, bytes: &[u8]) {
        self.stream
            .write_all(bytes)
            .unwrap_or_else(|e| panic!("send {} bytes: {e}", bytes.len()));
    }

    /// Writes all of `bytes`, returning the error instead of panicking
    /// (for hostile peers the server may have cut off, and load
    /// generators).
    pub fn try_send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// Sends one request; panics on an error.
    pub fn request(&mut self, id: &ClientId, req: &Request) {
        let f = request_frame_in(self.rev, id, req);
        self.send(&f);
    }

    /// Sends one request and reads the next response (within the
    /// connection's timeout).
    pub fn call(&mut self, id: &ClientId, req: &Request) -> Result<Response, crate::Error> {
        self.try_send(&request_frame_in(self.rev, id, req))
            .map_err(crate::Error::Send)?;
        self.try_recv(self.timeout).map_err(crate::Error::Recv)
    }

    /// Reads more bytes into the buffer, waiting at most `timeout`.
    fn fill(&mut self, timeout: Duration) -> Result<usize, RecvError> {
        let timeout = timeout.max(Duration::from_millis(1));
        if timeout != self.read_timeout {
            self.stream
                .set_read_timeout(Some(timeout))
                .map_err(RecvError::Io)?;
            self.read_timeout = timeout;
        }
        if self.rpos == self.rend {
            (self.rpos, self.rend) = (0, 0);
        }
        if self.rbuf.len() - self.rend < READ_SIZE {
            // Move what is unread to the front; grow if that is not enough.
            self.rbuf.copy_within(self.rpos..self.rend, 0);
            (self.rpos, self.rend) = (0, self.rend - self.rpos);
            if self.rbuf.len() - self.rend < READ_SIZE {
                self.rbuf.resize(self.rend + READ_SIZE, 0);
            }
        }
        match self.stream.read(&mut self.rbuf[self.rend..]) {
            Ok(0) => Err(RecvError::Closed),
            Ok(n) => {
                self.rend += n;
                Ok(n)
            }
            Err(e)
                if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::TimedOut =>
            {
                Err(RecvError::Timeout)
            }
            Err(e)
                if e.kind() == io::ErrorKind::ConnectionReset
                    || e.kind() == io::ErrorKind::ConnectionAborted
                    || e.kind() == io::ErrorKind::BrokenPipe =>
            {
                Err(RecvError::Closed)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(0),
            Err(e) => Err(RecvError::Io(e)),
        }
    }

    /// Received bytes not consumed yet, taken out of the buffer.
    fn take_unread(&mut self) -> Vec<u8> {
        let rest = self.unread().to_vec();
        (self.rpos, self.rend) = (0, 0);
        rest
    }

    /// Received bytes not consumed yet.
    fn unread(&self) -> &[u8] {
        &self.rbuf[self.rpos..self.rend]
    }

    /// The next response, or why there is none within `timeout`.
    pub fn try_recv(&mut self, timeout: Duration) -> Result<Response, RecvError> {
        let deadline = Instant::now() + timeout;
        let mut wait = timeout;
        loop {
            let mut input = &self.rbuf[self.rpos..self.rend];
            let before = input.len();
            let r = self.dec.decode(&mut input);
            self.rpos += before - input.len();
            match r {
                Ok(Some(resp)) => return Ok(resp),
                Ok(None) => {}
                Err(e) => return Err(RecvError::Decode(format!("{e:?}"))),
            }
            self.fill(wait)?;
            wait = deadline
                .checked_duration_since(Instant::now())
                .ok_or(RecvError::Timeout)?;
        }
    }

    /// The next response; panics if none arrives within the connection's
    /// timeout.
    pub fn recv(&mut self) -> Response {
        match self.try_recv(self.timeout) {
            Ok(r) => r,
            Err(e) => panic!("expected a response, got {e:?}"),
        }
    }

    /// The next response, which must have this code (in the
    /// connection's revision).
    pub fn expect(&mut self, code: u16) -> Response {
        let r = self.recv();
        assert_eq!(code_in(self.rev, &r), code, "unexpected response {r:?}");
        r
    }

    /// Exactly `n` raw bytes (no decoding).
    pub fn recv_raw(&mut self, n: usize) -> Vec<u8> {
        let deadline = Instant::now() + self.timeout;
        while self.unread().len() < n {
            let now = Instant::now();
            assert!(now < deadline, "timed out waiting for {n} raw bytes");
            if let Err(e) = self.fill(deadline - now) {
                panic!(
                    "waiting for {n} raw bytes (have {}): {e:?}",
                    self.unread().len()
                );
            }
        }
        let out = self.unread()[..n].to_vec();
        self.rpos += n;
        out
    }

    /// Waits up to `timeout` for the server to close the connection;
    /// returns the bytes that arrived before the close. Panics if it
    /// stays open.
    pub fn expect_closed(&mut self, timeout: Duration) -> Vec<u8> {
        match self.wait_closed(timeout) {
            Ok(bytes) => bytes,
            Err(bytes) => panic!(
                "connection still open after {timeout:?} ({} bytes received)",
                bytes.len()
            ),
        }
    }

    /// `Ok(bytes before close)` if closed within `timeout`, else
    /// `Err(bytes so far)`.
    pub fn wait_closed(&mut self, timeout: Duration) -> Result<Vec<u8>, Vec<u8>> {
        let deadline = Instant::now() + timeout;
        loop {
            let now = Instant::now();
            if now >= deadline {
                return Err(self.take_unread());
            }
            match self.fill(deadline - now) {
                Ok(_) => {}
                Err(RecvError::Closed) => return Ok(self.take_unread()),
                Err(RecvError::Timeout) => return Err(self.take_unread()),
                Err(e) => panic!("while waiting for close: {e:?}"),
            }
        }
    }

    /// Panics unless nothing arrives and the connection stays open for `dur`.
    pub fn expect_silence(&mut self, dur: Duration) {
        match self.fill(dur) {
            Err(RecvError::Timeout) => {}
            other => panic!(
                "expected silence for {dur:?}, got {other:?} ({:?})",
                self.unread()
            ),
        }
    }

    /// 2107 (1607 in 2024) and then the server closes the connection (a
    /// frame it cannot decode). Panics otherwise.
    pub fn expect_error_then_close(&mut self) {
        let r = self.try_recv(Duration::from_secs(10));
        match r {
            Ok(Response::GeneralError) => {}
            other => panic!("expected 2107 before close, got {other:?}"),
        }
        let extra = self.expect_closed(Duration::from_secs(10));
        assert!(extra.is_empty(), "bytes after 2107: {extra:?}");
    }

    /// Half-closes our sending side.
    pub fn shutdown_write(&self) {
        let _ = self.stream.shutdown(Shutdown::Write);
    }
}
