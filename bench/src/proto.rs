//! The in-bench protocol client: blocking std::net, built on the protocol
//! crate's encoders, decoders and crypto (PROTOCOL.md §2-§6). It registers
//! clients in advance and runs full reconnect sessions
//! (1027 -> 2105, 1028 -> 2103, 1029 -> 2104), with the file either in
//! memory or generated on the fly (the 4 GiB upload needs no file).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sealdrop_protocol::cksum::Cksum;
use sealdrop_protocol::crypto::{
    encrypted_len, AesKey, CbcEncryptor, Entropy, RsaPrivateKey, TestEntropy,
};
use sealdrop_protocol::message::{encode_file_header, Request, Response, Revision};
use sealdrop_protocol::{ClientId, FixedName, ResponseDecoder};

use crate::procs::Res;

const REV: Revision = Revision::R2023c;
/// Plaintext encrypted and written per step of a large upload: 1 MiB, as
/// the real client (CBC encryption runs faster in 1 MiB calls than in
/// 256 KiB ones, see `cargo bench -p sealdrop-protocol`).
const SEND_CHUNK: usize = 1 << 20;
/// Step of a small upload (under [`LARGE`]), so 1000 concurrent clients
/// keep 256 MiB of buffers rather than 1 GiB.
const SMALL_CHUNK: usize = 256 * 1024;
/// Uploads from this size on use [`SEND_CHUNK`].
const LARGE: u64 = 64 << 20;

/// A client the server knows, with its key pair (shared between clients:
/// the server does not require distinct keys, and key generation would
/// dominate the set-up).
#[derive(Clone)]
pub struct Registered {
    /// Its name.
    pub name: String,
    /// The id from 2100.
    pub id: ClientId,
    /// Its private key (never printed), as [`decrypt_unblinded`] uses it.
    pub unblinded: Arc<rsa::PrivateKey>,
}

/// The load generator's RSA-OAEP decryption of a 2102/2105 key: without
/// blinding, which protects a long-lived key from timing attacks but costs
/// 2-3x the CPU; these throwaway keys only ever talk to a server in a
/// temporary directory, and the CPU they save is the server's (the bench
/// shares the machine's 2 cores with it). The real client blinds.
pub fn decrypt_unblinded(key: &rsa::PrivateKey, encrypted: &[u8]) -> Res<AesKey> {
    let plain = key
        .decrypt(rsa::Oaep::<sha1::Sha1>::new(), encrypted)
        .map_err(|e| format!("cannot decrypt the AES key: {e}"))?;
    AesKey::from_slice(&plain).ok_or_else(|| "the decrypted AES key is not 16 bytes".to_owned())
}

/// `key` as the `rsa` crate's own type, for [`decrypt_unblinded`].
pub fn unblinded_key(key: &RsaPrivateKey) -> Res<rsa::PrivateKey> {
    use rsa::pkcs8::DecodePrivateKey;
    rsa::PrivateKey::from_pkcs8_der(&key.to_pkcs8_der()).map_err(|e| format!("key copy: {e}"))
}

/// A blocking connection to the server.
pub struct Conn {
    stream: TcpStream,
    decoder: ResponseDecoder,
    buf: Vec<u8>,
    pos: usize,
    len: usize,
}

impl Conn {
    /// Connects with `timeout` for the connect and for every read and write.
    pub fn open(addr: SocketAddr, timeout: Duration) -> Res<Conn> {
        let stream =
            TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("connect: {e}"))?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        stream
            .set_read_timeout(Some(timeout))
            .map_err(|e| e.to_string())?;
        stream
            .set_write_timeout(Some(timeout))
            .map_err(|e| e.to_string())?;
        Ok(Conn {
            stream,
            decoder: ResponseDecoder::new(REV),
            buf: vec![0; 4096],
            pos: 0,
            len: 0,
        })
    }

    /// Writes all of `bytes`.
    pub fn send(&mut self, bytes: &[u8]) -> Res<()> {
        self.stream
            .write_all(bytes)
            .map_err(|e| format!("write: {e}"))
    }

    /// Reads the next response.
    pub fn recv(&mut self) -> Res<Response> {
        loop {
            if self.pos < self.len {
                let mut input = &self.buf[self.pos..self.len];
                let before = input.len();
                let r = self
                    .decoder
                    .decode(&mut input)
                    .map_err(|e| format!("bad response: {e}"))?;
                self.pos += before - input.len();
                if let Some(r) = r {
                    return Ok(r);
                }
            }
            let n = self
                .stream
                .read(&mut self.buf)
                .map_err(|e| format!("read: {e}"))?;
            if n == 0 {
                return Err("server closed the connection".into());
            }
            self.pos = 0;
            self.len = n;
        }
    }

    /// Sends `request` and reads its response.
    pub fn call(&mut self, id: &ClientId, request: &Request) -> Res<Response> {
        let mut out = Vec::with_capacity(512);
        request.encode(REV, id, &mut out);
        self.send(&out)?;
        self.recv()
    }
}

fn name(text: &str) -> Res<FixedName> {
    FixedName::new(text.as_bytes()).map_err(|e| format!("name {text:?}: {e}"))
}

/// Registers `client_name` with `key` (1025 -> 2100, 1026 -> 2102).
pub fn register(addr: SocketAddr, client_name: &str, key: &Arc<RsaPrivateKey>) -> Res<Registered> {
    let mut conn = Conn::open(addr, Duration::from_secs(30))?;
    let fixed = name(client_name)?;
    let id = match conn.call(
        &ClientId([0; 16]),
        &Request::Register {
            name: fixed.clone(),
        },
    )? {
        Response::Registered { client_id } => client_id,
        other => return Err(format!("1025 answered {:?}", other.kind())),
    };
    let spki = key.public_key().to_spki_der().map_err(|e| e.to_string())?;
    let request = Request::PublicKey {
        name: fixed,
        public_key: Box::new(spki),
    };
    match conn.call(&id, &request)? {
        Response::KeyAccepted { .. } => {}
        other => return Err(format!("1026 answered {:?}", other.kind())),
    }
    Ok(Registered {
        name: client_name.to_owned(),
        id,
        unblinded: Arc::new(unblinded_key(key)?),
    })
}

/// The plaintext of an upload.
#[derive(Clone, Copy)]
pub enum Plain<'a> {
    /// These bytes.
    Bytes(&'a [u8]),
    /// `len` bytes made by repeating `block` (the 4 GiB upload).
    Generated {
        /// Total plaintext length.
        len: u64,
        /// Pattern repeated.
        block: &'a [u8],
    },
}

impl Plain<'_> {
    fn len(&self) -> u64 {
        match self {
            Plain::Bytes(b) => b.len() as u64,
            Plain::Generated { len, .. } => *len,
        }
    }

    /// The piece size uploads of this length are sent in.
    fn chunk(&self) -> usize {
        if self.len() >= LARGE {
            SEND_CHUNK
        } else {
            SMALL_CHUNK
        }
    }

    /// Calls `f` on consecutive pieces of at most [`Plain::chunk`] bytes.
    fn for_each(&self, mut f: impl FnMut(&[u8]) -> Res<()>) -> Res<()> {
        let chunk = self.chunk();
        match *self {
            Plain::Bytes(b) => b.chunks(chunk).try_for_each(f),
            Plain::Generated { len, block } => {
                let mut left = len;
                while left > 0 {
                    let n = (block.len() as u64).min(left).min(chunk as u64) as usize;
                    f(&block[..n])?;
                    left -= n as u64;
                }
                Ok(())
            }
        }
    }
}

/// Timings of one full session.
#[derive(Debug, Clone, Copy)]
pub struct SessionTimes {
    /// From connect to 2104.
    pub total: Duration,
    /// From the end of the 1028 to 2103 (server finishing the file).
    pub wait_2103: Duration,
    /// From 1029 to 2104 (fsync, rename, database).
    pub wait_2104: Duration,
}

/// One full session of a registered client: reconnect, upload `plain` as
/// `file_name`, check the cksum, confirm.
pub fn session(
    addr: SocketAddr,
    client: &Registered,
    file_name: &str,
    plain: Plain<'_>,
    timeout: Duration,
) -> Res<SessionTimes> {
    let start = Instant::now();
    let mut conn = Conn::open(addr, timeout)?;
    let fixed = name(&client.name)?;
    let encrypted = match conn.call(&client.id, &Request::Reconnect { name: fixed })? {
        Response::ReconnectAccepted { encrypted_key, .. } => encrypted_key,
        other => return Err(format!("1027 answered {:?}", other.kind())),
    };
    let aes = decrypt_unblinded(&client.unblinded, &encrypted[..])?;
    let file = name(file_name)?;
    let content = encrypted_len(plain.len());
    let content =
        u32::try_from(content).map_err(|_| "file too large for the protocol".to_owned())?;
    let mut out = Vec::with_capacity(plain.chunk() + 512);
    encode_file_header(REV, &client.id, content, &file, &mut out);
    let mut enc = CbcEncryptor::new(&aes);
    let mut ck = Cksum::new();
    plain.for_each(|piece| {
        ck.update(piece);
        enc.update(piece, &mut out);
        conn.send(&out)?;
        out.clear();
        Ok(())
    })?;
    enc.finish(&mut out);
    conn.send(&out)?;
    let sent = Instant::now();
    let want = ck.finish();
    match conn.recv()? {
        Response::FileReceived {
            cksum,
            content_size,
            ..
        } if cksum == want && content_size == content => {}
        Response::FileReceived { cksum, .. } => {
            return Err(format!("cksum mismatch: server {cksum}, ours {want}"))
        }
        other => return Err(format!("1028 answered {:?}", other.kind())),
    }
    let received = Instant::now();
    match conn.call(&client.id, &Request::CrcOk { file_name: file })? {
        Response::Ack { .. } => {}
        other => return Err(format!("1029 answered {:?}", other.kind())),
    }
    let done = Instant::now();
    Ok(SessionTimes {
        total: done - start,
        wait_2103: received - sent,
        wait_2104: done - received,
    })
}

/// Deterministic pseudo-random bytes (the bench's files; not secret).
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; len];
    TestEntropy::new(seed).fill_bytes(&mut v);
    v
}

/// `count` RSA-1024 key pairs, made in advance. Deterministic seeds: these
/// keys only ever talk to a server in a temporary directory.
pub fn key_pool(count: usize) -> Res<Vec<Arc<RsaPrivateKey>>> {
    (0..count)
        .map(|i| {
            RsaPrivateKey::generate(&mut TestEntropy::new(0x5ea1_d00d + i as u64))
                .map(Arc::new)
                .map_err(|e| format!("key generation: {e}"))
        })
        .collect()
}

/// Mean milliseconds of one RSA-OAEP encryption of an AES key (the
/// server's side of 2102/2105), one blinded decryption (the real client's
/// side) and one unblinded decryption (the load generator's), over
/// `rounds` of each with `key`.
pub fn rsa_costs(key: &RsaPrivateKey, rounds: u32) -> Res<(f64, f64, f64)> {
    let mut rng = TestEntropy::new(3);
    let public = key.public_key();
    let aes = sealdrop_protocol::crypto::AesKey::from_bytes([7; 16]);
    let t = Instant::now();
    let mut ct = [0u8; 128];
    for _ in 0..rounds {
        ct = public
            .encrypt_aes_key(&aes, &mut rng)
            .map_err(|e| e.to_string())?;
    }
    let enc = t.elapsed();
    let t = Instant::now();
    for _ in 0..rounds {
        key.decrypt_aes_key(&ct, &mut rng)
            .map_err(|e| e.to_string())?;
    }
    let dec = t.elapsed();
    let raw = unblinded_key(key)?;
    let t = Instant::now();
    for _ in 0..rounds {
        decrypt_unblinded(&raw, &ct)?;
    }
    let fast = t.elapsed();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0 / f64::from(rounds.max(1));
    Ok((ms(enc), ms(dec), ms(fast)))
}
