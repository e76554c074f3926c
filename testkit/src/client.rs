//! A protocol client's identity and keys, and the steps of PROTOCOL.md §6
//! on a [`Conn`].
//!
//! Each step panics with a message naming the client and the request when
//! the server does not answer as the step expects (tests); its `try_` twin
//! returns an [`Error`] instead (load generators count failures).

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use sealdrop_protocol::cksum::{cksum, Cksum};
use sealdrop_protocol::consts::PUBLIC_KEY_LEN;
use sealdrop_protocol::crypto::{
    cbc_encrypt, encrypted_len, AesKey, CbcEncryptor, RsaPrivateKey, TestEntropy,
};
use sealdrop_protocol::message::encode_file_header;
use sealdrop_protocol::{ClientId, FixedName, Request, Response};

use crate::conn::{Conn, RecvError};
use crate::data::read_full;
use crate::frames::{code_of, file_frame, fixed};
use crate::vectors::{shared_vector_key, vector_spki};
use crate::REV;

/// Why a client step failed.
#[derive(Debug)]
pub enum Error {
    /// Connecting failed.
    Connect(io::Error),
    /// Writing failed.
    Send(io::Error),
    /// No response: closed, timed out, undecodable.
    Recv(RecvError),
    /// The server answered, but not what the step expects.
    Unexpected {
        /// The request code of the step.
        request: u16,
        /// What came back.
        response: Box<Response>,
    },
    /// A name does not fit a 255-byte field.
    Name(String),
    /// The AES key of a 2102/2105 does not decrypt, or a 2103 does not
    /// match what was sent.
    Check(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Connect(e) => write!(f, "connect: {e}"),
            Error::Send(e) => write!(f, "write: {e}"),
            Error::Recv(e) => e.fmt(f),
            Error::Unexpected { request, response } => {
                write!(f, "{request} answered {} ({response:?})", code_of(response))
            }
            Error::Name(e) | Error::Check(e) => f.write_str(e),
        }
    }
}

impl std::error::Error for Error {}

impl From<RecvError> for Error {
    fn from(e: RecvError) -> Self {
        Error::Recv(e)
    }
}

/// A protocol client's identity and keys. Cloning is cheap: the RSA keys
/// are shared.
#[derive(Clone)]
pub struct Client {
    /// The name it registers under.
    pub name: String,
    /// Its id (zero until a 2100).
    pub id: ClientId,
    /// Its RSA key pair.
    pub rsa: Arc<RsaPrivateKey>,
    /// Its public key as the 1026 carries it.
    pub spki: [u8; PUBLIC_KEY_LEN],
    /// The AES key of its last 2102/2105.
    pub aes: Option<AesKey>,
    rng: TestEntropy,
    /// The same private key for [`decrypt_unblinded`], if chosen.
    unblinded: Option<Arc<rsa::PrivateKey>>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("name", &self.name)
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A new client with the vector RSA key (RSA key generation is slow in
    /// debug builds; the server does not care that keys repeat).
    pub fn new(name: &str) -> Client {
        Client {
            name: name.to_string(),
            id: ClientId::ZERO,
            rsa: shared_vector_key(),
            spki: vector_spki(),
            aes: None,
            rng: TestEntropy::new(0x1234_5678 ^ name.len() as u64),
            unblinded: None,
        }
    }

    /// A new client with a freshly generated RSA-1024 key (e = 17).
    pub fn with_generated_key(name: &str, seed: u64) -> Client {
        let mut rng = TestEntropy::new(seed);
        let rsa = RsaPrivateKey::generate(&mut rng).expect("generate RSA key");
        let mut c = Client::with_key(name, Arc::new(rsa));
        c.rng = rng;
        c
    }

    /// A new client with `key` (shared with other clients).
    pub fn with_key(name: &str, key: Arc<RsaPrivateKey>) -> Client {
        let spki = key.public_key().to_spki_der().expect("160-byte SPKI");
        Client {
            name: name.to_string(),
            id: ClientId::ZERO,
            rsa: key,
            spki,
            aes: None,
            rng: TestEntropy::new(0x1234_5678 ^ name.len() as u64),
            unblinded: None,
        }
    }

    /// Decrypts the keys of 2102/2105 without RSA blinding from now on
    /// (see [`decrypt_unblinded`]): for load generators, which must leave
    /// the CPU to the server they measure. The real client blinds.
    pub fn with_unblinded_decryption(mut self) -> Client {
        self.unblinded = Some(Arc::new(unblinded_key(&self.rsa)));
        self
    }

    /// The name as a 255-byte field.
    pub fn name_field(&self) -> FixedName {
        fixed(&self.name)
    }

    fn try_name_field(&self) -> Result<FixedName, Error> {
        FixedName::new(self.name.as_bytes())
            .map_err(|e| Error::Name(format!("{:?}: {e}", self.name)))
    }

    /// Decrypts the AES key of a 2102/2105 and keeps it.
    fn take_key(&mut self, encrypted: &[u8], what: u16) -> Result<(), Error> {
        let key = match &self.unblinded {
            Some(k) => decrypt_unblinded(k, encrypted),
            None => self
                .rsa
                .decrypt_aes_key(encrypted, &mut self.rng)
                .map_err(|e| e.to_string()),
        };
        self.aes = Some(key.map_err(|e| Error::Check(format!("{what} key: {e}")))?);
        Ok(())
    }

    fn send_register(&mut self, c: &mut Conn) -> Result<Response, Error> {
        let name = self.try_name_field()?;
        let r = c.call(&ClientId::ZERO, &Request::Register { name })?;
        if let Response::Registered { client_id } = r {
            self.id = client_id;
        }
        Ok(r)
    }

    /// 1025; the response, whatever it is (2100 sets the id). Panics only
    /// if none comes.
    pub fn register_reply(&mut self, c: &mut Conn) -> Response {
        self.send_register(c)
            .unwrap_or_else(|e| panic!("1025 of {:?}: {e}", self.name))
    }

    /// 1025, which must give 2100; the new id.
    pub fn try_register(&mut self, c: &mut Conn) -> Result<ClientId, Error> {
        match self.send_register(c)? {
            Response::Registered { client_id } => Ok(client_id),
            response => Err(Error::Unexpected {
                request: 1025,
                response: Box::new(response),
            }),
        }
    }

    /// 1025, which must give 2100.
    pub fn register(&mut self, c: &mut Conn) -> ClientId {
        self.try_register(c)
            .unwrap_or_else(|e| panic!("register {:?}: {e}", self.name))
    }

    /// 1026, which must give 2102 with our id; decrypts the AES key.
    pub fn try_exchange_key(&mut self, c: &mut Conn) -> Result<(), Error> {
        let req = Request::PublicKey {
            name: self.try_name_field()?,
            public_key: Box::new(self.spki),
        };
        match c.call(&self.id, &req)? {
            Response::KeyAccepted {
                client_id,
                encrypted_key,
            } if client_id == self.id => self.take_key(&encrypted_key[..], 2102),
            response => Err(Error::Unexpected {
                request: 1026,
                response: Box::new(response),
            }),
        }
    }

    /// As [`Client::try_exchange_key`], panicking.
    pub fn exchange_key(&mut self, c: &mut Conn) {
        self.try_exchange_key(c)
            .unwrap_or_else(|e| panic!("1026 of {:?}: {e}", self.name))
    }

    /// 1027; the response, whatever it is. On 2105 (which must echo our
    /// id) the AES key is decrypted and kept.
    pub fn try_reconnect(&mut self, c: &mut Conn) -> Result<Response, Error> {
        let req = Request::Reconnect {
            name: self.try_name_field()?,
        };
        let r = c.call(&self.id, &req)?;
        if let Response::ReconnectAccepted {
            client_id,
            encrypted_key,
        } = &r
        {
            if *client_id != self.id {
                return Err(Error::Unexpected {
                    request: 1027,
                    response: Box::new(r),
                });
            }
            self.take_key(&encrypted_key[..], 2105)?;
        }
        Ok(r)
    }

    /// As [`Client::try_reconnect`], panicking.
    pub fn reconnect(&mut self, c: &mut Conn) -> Response {
        self.try_reconnect(c)
            .unwrap_or_else(|e| panic!("1027 of {:?}: {e}", self.name))
    }

    /// Connects, registers and exchanges keys.
    pub fn setup(addr: SocketAddr, name: &str) -> (Client, Conn) {
        let mut c = Conn::connect(addr);
        let mut client = Client::new(name);
        client.register(&mut c);
        client.exchange_key(&mut c);
        (client, c)
    }

    /// The AES key of the last 2102/2105; panics without one.
    pub fn key(&self) -> &AesKey {
        self.aes.as_ref().expect("client holds an AES key")
    }

    /// The 1028 frame for `data` under `name`, encrypted with our key.
    pub fn file_frame(&self, name: &str, data: &[u8]) -> Vec<u8> {
        file_frame(&self.id, &fixed(name), &cbc_encrypt(self.key(), data))
    }

    /// Sends a 1028 of `data` (does not read the reply).
    pub fn send_file(&self, c: &mut Conn, name: &str, data: &[u8]) {
        let f = self.file_frame(name, data);
        c.send(&f);
    }

    /// Starts a 1028 of `plain_len` plaintext bytes named `name`, to be
    /// given piece by piece to the [`UploadStream`] (encrypted on the
    /// way: nothing the size of the file is held).
    pub fn begin_upload<'c>(
        &self,
        c: &'c mut Conn,
        name: &str,
        plain_len: u64,
    ) -> Result<UploadStream<'c>, Error> {
        let key = self
            .aes
            .as_ref()
            .ok_or_else(|| Error::Check("no AES key exchanged".into()))?;
        let file_name =
            FixedName::new(name.as_bytes()).map_err(|e| Error::Name(format!("{name:?}: {e}")))?;
        let content = u32::try_from(encrypted_len(plain_len))
            .map_err(|_| Error::Check(format!("{plain_len} bytes is too large for a 1028")))?;
        // The header waits in `out` and leaves with the first piece.
        let mut out = Vec::with_capacity(512);
        encode_file_header(REV, &self.id, content, &file_name, &mut out);
        Ok(UploadStream {
            conn: c,
            enc: CbcEncryptor::new(key),
            ck: Cksum::new(),
            out,
            sent: 0,
        })
    }

    /// Streams the file at `path` as a 1028 named `name` (encrypting on
    /// the way, 1 MiB at a time); returns the plaintext cksum.
    pub fn send_file_path(&self, c: &mut Conn, name: &str, path: &Path) -> u32 {
        self.send_file_path_paced(c, name, path, |_| {})
    }

    /// As [`Client::send_file_path`], calling `pace(bytes_sent_so_far)`
    /// after each piece (to throttle or interrupt).
    pub fn send_file_path_paced(
        &self,
        c: &mut Conn,
        name: &str,
        path: &Path,
        mut pace: impl FnMut(u64),
    ) -> u32 {
        let len = std::fs::metadata(path).expect("file to send").len();
        let mut f = std::fs::File::open(path).unwrap();
        let mut up = self
            .begin_upload(c, name, len)
            .unwrap_or_else(|e| panic!("1028 {name:?}: {e}"));
        let mut plain = vec![0u8; 1 << 20];
        let fail = |e: io::Error| -> ! { panic!("send 1028 {name:?}: {e}") };
        loop {
            let n = read_full(&mut f, &mut plain);
            if n == 0 {
                break;
            }
            up.write(&plain[..n]).unwrap_or_else(|e| fail(e));
            pace(up.sent());
        }
        up.finish().unwrap_or_else(|e| fail(e))
    }

    /// Checks a 2103 against what was sent.
    pub fn try_check_received(
        &self,
        r: &Response,
        name: &str,
        plain_len: u64,
        want: u32,
    ) -> Result<(), Error> {
        let Response::FileReceived {
            client_id,
            content_size,
            file_name,
            cksum: got,
        } = r
        else {
            return Err(Error::Unexpected {
                request: 1028,
                response: Box::new(r.clone()),
            });
        };
        let mismatch = if *client_id != self.id {
            "client id"
        } else if u64::from(*content_size) != encrypted_len(plain_len) {
            "content_size"
        } else if file_name.raw() != fixed(name).raw() {
            "name field"
        } else if *got != want {
            "cksum"
        } else {
            return Ok(());
        };
        Err(Error::Check(format!(
            "2103 for {name:?}: {mismatch} differs (cksum server {got}, ours {want}; {r:?})"
        )))
    }

    /// Checks a 2103 against what was sent; panics with what differs.
    pub fn check_received(&self, r: &Response, name: &str, plain_len: u64, cksum: u32) {
        match r {
            Response::FileReceived {
                client_id,
                content_size,
                file_name,
                cksum: got,
            } => {
                assert_eq!(*client_id, self.id, "2103 client id");
                assert_eq!(
                    u64::from(*content_size),
                    encrypted_len(plain_len),
                    "2103 content_size"
                );
                assert_eq!(
                    file_name.raw(),
                    fixed(name).raw(),
                    "2103 echoes the name field"
                );
                assert_eq!(*got, cksum, "2103 cksum");
            }
            other => panic!("expected 2103 for {name:?}, got {other:?}"),
        }
    }

    fn verdict_request(code: u16, name: &str) -> Result<Request, Error> {
        let file_name =
            FixedName::new(name.as_bytes()).map_err(|e| Error::Name(format!("{name:?}: {e}")))?;
        Ok(match code {
            1029 => Request::CrcOk { file_name },
            1030 => Request::CrcBad { file_name },
            1031 => Request::CrcGiveUp { file_name },
            _ => panic!("not a verdict code: {code}"),
        })
    }

    /// A verdict request (1029/1030/1031) for `name` (does not read the
    /// reply).
    pub fn send_verdict(&self, c: &mut Conn, code: u16, name: &str) {
        let req = Client::verdict_request(code, name).unwrap_or_else(|e| panic!("{e}"));
        c.request(&self.id, &req);
    }

    /// 1029 for `name`, which must give 2104 with our id.
    pub fn try_verify(&self, c: &mut Conn, name: &str) -> Result<(), Error> {
        match c.call(&self.id, &Client::verdict_request(1029, name)?)? {
            Response::Ack { client_id } if client_id == self.id => Ok(()),
            response => Err(Error::Unexpected {
                request: 1029,
                response: Box::new(response),
            }),
        }
    }

    /// As [`Client::try_verify`], panicking.
    pub fn verify(&self, c: &mut Conn, name: &str) {
        self.try_verify(c, name)
            .unwrap_or_else(|e| panic!("1029 {name:?}: {e}"))
    }

    /// 1028 of `data`, checks the 2103, then 1029 -> 2104.
    pub fn upload_verified(&self, c: &mut Conn, name: &str, data: &[u8]) {
        self.send_file(c, name, data);
        let r = c.recv();
        self.check_received(&r, name, data.len() as u64, cksum(data));
        self.verify(c, name);
    }

    /// Streams the file at `path`, checks the 2103, then 1029 -> 2104.
    pub fn upload_path_verified(&self, c: &mut Conn, name: &str, path: &Path) {
        let ck = self.send_file_path(c, name, path);
        let r = c.recv();
        self.check_received(&r, name, std::fs::metadata(path).unwrap().len(), ck);
        self.verify(c, name);
    }
}

/// A 1028 being sent: [`UploadStream::write`] encrypts and sends each
/// piece of plaintext, [`UploadStream::finish`] the last block. Nothing
/// is read; the caller reads the 2103.
pub struct UploadStream<'c> {
    conn: &'c mut Conn,
    enc: CbcEncryptor,
    ck: Cksum,
    /// The bytes of the next write: the header (before the first piece),
    /// then each piece's ciphertext.
    out: Vec<u8>,
    sent: u64,
}

impl UploadStream<'_> {
    /// Encrypts `plain` and sends it (with the header, the first time).
    pub fn write(&mut self, plain: &[u8]) -> io::Result<()> {
        self.ck.update(plain);
        self.enc.update(plain, &mut self.out);
        self.flush()
    }

    fn flush(&mut self) -> io::Result<()> {
        self.conn.try_send(&self.out)?;
        self.sent += self.out.len() as u64;
        self.out.clear();
        Ok(())
    }

    /// Bytes on the wire so far, header included.
    pub fn sent(&self) -> u64 {
        self.sent
    }

    /// Sends the last block; the plaintext's cksum.
    pub fn finish(self) -> io::Result<u32> {
        let UploadStream {
            conn,
            enc,
            ck,
            mut out,
            sent: _,
        } = self;
        enc.finish(&mut out);
        conn.try_send(&out)?;
        Ok(ck.finish())
    }
}

/// RSA-OAEP decryption of a 2102/2105 key without blinding. Blinding
/// protects a long-lived key from timing attacks but costs 2-3x the CPU;
/// load generators use throwaway keys against a server in a temporary
/// directory, and the CPU they save is the server's. The real client
/// blinds.
pub fn decrypt_unblinded(key: &rsa::PrivateKey, encrypted: &[u8]) -> Result<AesKey, String> {
    let plain = key
        .decrypt(rsa::Oaep::<sha1::Sha1>::new(), encrypted)
        .map_err(|e| format!("cannot decrypt the AES key: {e}"))?;
    AesKey::from_slice(&plain).ok_or_else(|| "the decrypted AES key is not 16 bytes".to_owned())
}

/// `key` as the `rsa` crate's own type, for [`decrypt_unblinded`].
pub fn unblinded_key(key: &RsaPrivateKey) -> rsa::PrivateKey {
    use rsa::pkcs8::DecodePrivateKey;
    rsa::PrivateKey::from_pkcs8_der(&key.to_pkcs8_der()).expect("a key re-reads its own PKCS#8")
}
