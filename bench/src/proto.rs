//! The in-bench protocol client: sealdrop-testkit's blocking client (the
//! one the server's tests drive, built on the protocol crate's encoders,
//! decoders and crypto), decrypting session keys without RSA blinding. It
//! registers clients in advance and runs full reconnect sessions
//! (1027 -> 2105, 1028 -> 2103, 1029 -> 2104), with the file either in
//! memory or generated on the fly (the 4 GiB upload needs no file), in
//! 2023c or in any other revision (the 4 GiB upload also goes in 2024c
//! packets).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sealdrop_protocol::client::PacketOptions;
use sealdrop_protocol::crypto::{RsaPrivateKey, TestEntropy};
use sealdrop_protocol::message::Response;
use sealdrop_protocol::Revision;
use sealdrop_testkit::{decrypt_unblinded, unblinded_key, Client, REV};

use crate::procs::Res;

/// Plaintext encrypted and written per step of a large upload: 1 MiB, as
/// the real client (CBC encryption runs faster in 1 MiB calls than in
/// 256 KiB ones, see `cargo bench -p sealdrop-protocol`).
const SEND_CHUNK: usize = 1 << 20;
/// Step of a small upload (under [`LARGE`]), so 1000 concurrent clients
/// keep 256 MiB of buffers rather than 1 GiB.
const SMALL_CHUNK: usize = 256 * 1024;
/// Uploads from this size on use [`SEND_CHUNK`].
const LARGE: u64 = 64 << 20;

/// A client the server knows: its name, its id, and its key pair (shared
/// between clients: the server does not require distinct keys, and key
/// generation would dominate the set-up). It decrypts the AES keys of
/// 2102/2105 without blinding ([`decrypt_unblinded`]): blinding protects
/// a long-lived key from timing attacks but costs 2-3x the CPU, and the
/// CPU these throwaway keys save is the server's (the bench shares the
/// machine's 2 cores with it). The real client blinds.
pub type Registered = Client;

/// Registers `client_name` with `key` (1025 -> 2100, 1026 -> 2102) in
/// 2023c.
pub fn register(addr: SocketAddr, client_name: &str, key: &Arc<RsaPrivateKey>) -> Res<Registered> {
    register_in(addr, client_name, key, REV, PacketOptions::default())
}

/// Registers `client_name` with `key` in revision `rev` (its register
/// and key requests); its uploads go in `rev`, in 2024a/2024c cut into
/// packets as `packets` says.
pub fn register_in(
    addr: SocketAddr,
    client_name: &str,
    key: &Arc<RsaPrivateKey>,
    rev: Revision,
    packets: PacketOptions,
) -> Res<Registered> {
    let mut client = Client::with_key(client_name, Arc::clone(key))
        .with_unblinded_decryption()
        .in_revision(rev)
        .with_packets(packets);
    let mut conn = client
        .open(addr, Duration::from_secs(30))
        .map_err(|e| format!("connect: {e}"))?;
    client.try_register(&mut conn).map_err(|e| e.to_string())?;
    client
        .try_exchange_key(&mut conn)
        .map_err(|e| e.to_string())?;
    Ok(client)
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

/// One full session of a registered client in its revision: reconnect,
/// upload `plain` as `file_name`, check the 2103 (cksum, size, name),
/// confirm.
pub fn session(
    addr: SocketAddr,
    client: &Registered,
    file_name: &str,
    plain: Plain<'_>,
    timeout: Duration,
) -> Res<SessionTimes> {
    let start = Instant::now();
    let mut me = client.clone();
    let mut conn = me
        .open(addr, timeout)
        .map_err(|e| format!("connect: {e}"))?;
    match me.try_reconnect(&mut conn).map_err(|e| e.to_string())? {
        Response::ReconnectAccepted { .. } => {}
        other => return Err(format!("1027 answered {:?}", other.kind())),
    }
    let mut upload = me
        .begin_upload(&mut conn, file_name, plain.len())
        .map_err(|e| e.to_string())?;
    plain.for_each(|piece| upload.write(piece).map_err(|e| format!("write: {e}")))?;
    let want = upload.finish().map_err(|e| format!("write: {e}"))?;
    let sent = Instant::now();
    let reply = conn.try_recv(timeout).map_err(|e| e.to_string())?;
    me.try_check_received(&reply, file_name, plain.len(), want)
        .map_err(|e| e.to_string())?;
    let received = Instant::now();
    me.try_verify(&mut conn, file_name)
        .map_err(|e| e.to_string())?;
    let done = Instant::now();
    Ok(SessionTimes {
        total: done - start,
        wait_2103: received - sent,
        wait_2104: done - received,
    })
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
    let raw = unblinded_key(key);
    let t = Instant::now();
    for _ in 0..rounds {
        decrypt_unblinded(&raw, &ct)?;
    }
    let fast = t.elapsed();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0 / f64::from(rounds.max(1));
    Ok((ms(enc), ms(dec), ms(fast)))
}
