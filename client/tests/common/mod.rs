//! Helpers shared by the tests that run the real `sealdrop-client` binary.

#![allow(dead_code)] // each test file uses a different subset

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_sealdrop-client");

/// Golden vectors (fixtures/vectors/ORIGIN.md).
pub const VECTORS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures/vectors");

/// Largest frame the fake server accepts; the tests send small files.
const MAX_TEST_FRAME: usize = 64 << 20;

/// How long the fake server waits on a silent client before dropping it.
const FAKE_READ_TIMEOUT: Duration = Duration::from_secs(20);

/// A vector file's path.
pub fn vector_path(name: &str) -> PathBuf {
    Path::new(VECTORS).join(name)
}

/// A vector file's bytes.
pub fn vector(name: &str) -> Vec<u8> {
    std::fs::read(vector_path(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// One request as the fake server received it.
#[derive(Clone, Debug)]
pub struct Frame {
    /// Request code.
    pub code: u16,
    /// The whole frame, header included.
    pub bytes: Vec<u8>,
    /// Which accepted connection (0, 1, ...) carried it.
    pub conn: usize,
}

/// What the fake server does after a request.
pub enum Reply {
    /// Write these bytes.
    Send(Vec<u8>),
    /// Write these bytes, then close the connection.
    SendAndClose(Vec<u8>),
    /// Write nothing (1030).
    Nothing,
    /// Never answer; keep the connection open.
    Hang,
}

/// The standard answers from the vectors: the session transcript of
/// fixtures/vectors/README.md.
pub fn vector_reply(code: u16) -> Reply {
    let name = match code {
        1025 => "response_2100.bin",
        1026 => "response_2102.bin",
        1027 => "response_2105.bin",
        1028 => "response_2103.bin",
        1029 | 1031 => "response_2104.bin",
        _ => return Reply::Nothing,
    };
    Reply::Send(vector(name))
}

/// A file of a revision's vectors folder (fixtures/vectors/<rev>/).
pub fn rev_vector(rev: &str, name: &str) -> Vec<u8> {
    vector(&format!("{rev}/{name}"))
}

/// The standard answers of a revision's vectors: `reply(code)` for its
/// request codes (register, key, reconnect, file, CRC ok/bad/give up are
/// base, base + 1, ..., in §9 order), nothing for CRC bad. A 2024 file
/// message is several packets, numbered from `base`: only the last gets
/// the 1603.
pub fn rev_vector_reply(rev: &str, base: u16, frame: &Frame) -> Reply {
    let r: sealdrop_protocol::Revision = rev.parse().unwrap();
    use sealdrop_protocol::{RequestKind as Q, ResponseKind as A};
    let Some(kind) = r.request_kind(frame.code) else {
        return Reply::Nothing;
    };
    let answer = match kind {
        Q::Register => A::Registered,
        Q::PublicKey => A::KeyAccepted,
        Q::Reconnect => A::ReconnectAccepted,
        Q::SendFile => {
            // Packet number and total: answer after the last.
            if r.file_layout() == sealdrop_protocol::revision::FileLayout::Packets {
                let p = &frame.bytes[23..];
                let (n, total) = (
                    u16::from_le_bytes([p[8], p[9]]),
                    u16::from_le_bytes([p[10], p[11]]),
                );
                if n + 1 - base < total {
                    return Reply::Nothing;
                }
            }
            A::FileReceived
        }
        Q::CrcOk | Q::CrcGiveUp => A::Ack,
        Q::CrcBad => return Reply::Nothing,
    };
    let code = r.response_code(answer).unwrap();
    Reply::Send(rev_vector(rev, &format!("response_{code}.bin")))
}

/// response_2103.bin with a wrong cksum.
pub fn wrong_crc_2103() -> Vec<u8> {
    let mut r = vector("response_2103.bin");
    let n = r.len();
    for b in &mut r[n - 4..] {
        *b ^= 0xff;
    }
    r
}

/// A scripted server on 127.0.0.1:0, one connection at a time.
pub struct FakeServer {
    /// Its port.
    pub port: u16,
    frames: Arc<Mutex<Vec<Frame>>>,
}

type Script = Box<dyn FnMut(&Frame, usize) -> Reply + Send>;

impl FakeServer {
    /// Starts a server answering each request with `script(frame, index)`,
    /// `index` counting requests over all connections.
    pub fn start(script: impl FnMut(&Frame, usize) -> Reply + Send + 'static) -> FakeServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().unwrap().port();
        let frames = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&frames);
        let mut script: Script = Box::new(script);
        thread::spawn(move || {
            for (conn, stream) in listener.incoming().enumerate() {
                let Ok(stream) = stream else { return };
                serve(stream, conn, &seen, &mut script);
            }
        });
        FakeServer { port, frames }
    }

    /// A server answering from the vectors.
    pub fn vectors() -> FakeServer {
        FakeServer::start(|f, _| vector_reply(f.code))
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Every request received so far.
    pub fn frames(&self) -> Vec<Frame> {
        self.frames.lock().unwrap().clone()
    }

    /// The codes received so far.
    pub fn codes(&self) -> Vec<u16> {
        self.frames().iter().map(|f| f.code).collect()
    }
}

fn serve(mut stream: TcpStream, conn: usize, seen: &Mutex<Vec<Frame>>, script: &mut Script) {
    stream.set_read_timeout(Some(FAKE_READ_TIMEOUT)).ok();
    loop {
        let Some(frame) = read_frame(&mut stream, conn) else {
            return;
        };
        let index = {
            let mut all = seen.lock().unwrap();
            all.push(frame.clone());
            all.len() - 1
        };
        match script(&frame, index) {
            Reply::Send(bytes) => {
                if stream.write_all(&bytes).is_err() {
                    return;
                }
            }
            Reply::SendAndClose(bytes) => {
                let _ = stream.write_all(&bytes);
                return;
            }
            Reply::Nothing => {}
            Reply::Hang => {
                thread::sleep(FAKE_READ_TIMEOUT);
                return;
            }
        }
    }
}

fn read_frame(stream: &mut TcpStream, conn: usize) -> Option<Frame> {
    let mut header = [0u8; 23];
    stream.read_exact(&mut header).ok()?;
    let code = u16::from_le_bytes([header[17], header[18]]);
    let size = u32::from_le_bytes(header[19..23].try_into().unwrap()) as usize;
    if size > MAX_TEST_FRAME {
        return None;
    }
    let mut bytes = header.to_vec();
    bytes.resize(23 + size, 0);
    stream.read_exact(&mut bytes[23..]).ok()?;
    Some(Frame { code, bytes, conn })
}

/// A port nothing listens on (bound, then released).
pub fn closed_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// Runs the client in `dir` with `args`.
pub fn run(dir: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .current_dir(dir)
        .args(args)
        .env_remove("RUST_LOG")
        .env_remove("SEALDROP_REVISION")
        .env_remove("SEALDROP_STATE_DIR")
        // The per-user state folder of flag-driven runs: inside the test's
        // scratch folder, never the real home.
        .env("XDG_STATE_HOME", dir.join("xdg-state"))
        .output()
        .expect("run sealdrop-client")
}

/// A scratch directory holding a copy of the vector plaintext `plain_1000.bin`.
pub fn workdir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        vector_path("plain_1000.bin"),
        dir.path().join("plain_1000.bin"),
    )
    .unwrap();
    dir
}

/// stdout as text.
pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// stderr as text.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Writes a me.info holding the vector client (alice, client_id.bin, the
/// vector key as one-line base64 PKCS#8).
pub fn write_vector_me_info(dir: &Path) {
    let id: String = vector("client_id.bin")
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let key = base64(&vector("rsa1024_private_pkcs8.der"));
    std::fs::write(dir.join("me.info"), format!("alice\n{id}\n{key}\n")).unwrap();
}

/// Standard base64 with padding (test-side, independent of the client's).
pub fn base64(data: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in data.chunks(3) {
        let n = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= c.len() {
                out.push(ABC[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Parses the single JSON object the client printed on stdout.
pub fn json(o: &Output) -> serde_json::Value {
    let text = stdout(o);
    assert_eq!(
        text.lines().count(),
        1,
        "exactly one line on stdout: {text:?}"
    );
    let v: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
    let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "attempts",
            "bytes",
            "cksum",
            "client_id",
            "error",
            "file",
            "outcome",
            "packets",
            "revision",
            "seconds"
        ]
    );
    v
}
