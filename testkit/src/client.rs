//! A protocol client's identity and keys, and the steps of PROTOCOL.md §6
//! on a [`Conn`], in any of the five revisions (§9).
//!
//! Each step panics with a message naming the client and the request when
//! the server does not answer as the step expects (tests); its `try_` twin
//! returns an [`Error`] instead (load generators count failures).
//!
//! The file goes through a [`FileEncoder`]: one file message (1028, 1103)
//! or, in 2024a/2024c, a series of packets, encrypted and framed on the way
//! in constant memory. The packet framing here is written apart from the
//! real client's (`sealdrop_protocol::client::FileSender`), so the server's
//! tests and the bench do not check the server against the very code the
//! client ships; only the plan (how many packets, what their fields say,
//! [`PacketPlan`]) is shared.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use sealdrop_protocol::cksum::{cksum, Cksum};
use sealdrop_protocol::client::{Granularity, PacketOptions, PacketPlan};
use sealdrop_protocol::consts::PUBLIC_KEY_LEN;
use sealdrop_protocol::crypto::{encrypted_len, AesKey, CbcEncryptor, RsaPrivateKey, TestEntropy};
use sealdrop_protocol::message::{encode_file_header, encode_packet_header};
use sealdrop_protocol::revision::FileLayout;
use sealdrop_protocol::{ClientId, FixedName, Request, RequestKind, Response, Revision};

use crate::conn::{Conn, RecvError};
use crate::data::read_full;
use crate::frames::fixed;
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
            Error::Unexpected { request, response } => write!(
                f,
                "request {request} answered {:?} ({response:?})",
                response.kind()
            ),
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

/// A protocol client's identity and keys, and the revision it speaks.
/// Cloning is cheap: the RSA keys are shared.
#[derive(Clone)]
pub struct Client {
    /// The revision it speaks ([`REV`] unless [`Client::in_revision`]);
    /// the connections it is given must speak it too ([`Client::connect`]).
    pub rev: Revision,
    /// How a 2024a/2024c file is cut into packets (default: the whole
    /// file as one packet, as `sealdrop-client`); ignored by the others.
    pub packets: PacketOptions,
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
            .field("rev", &self.rev)
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
            rev: REV,
            packets: PacketOptions::default(),
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
            rev: REV,
            packets: PacketOptions::default(),
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

    /// The same client speaking `rev` from now on (its id and keys stay:
    /// one identity across revisions).
    pub fn in_revision(mut self, rev: Revision) -> Client {
        self.rev = rev;
        self
    }

    /// The same client cutting 2024 files into packets as `packets` says.
    pub fn with_packets(mut self, packets: PacketOptions) -> Client {
        self.packets = packets;
        self
    }

    /// A new connection to `addr` in this client's revision (panics if
    /// the connection fails).
    pub fn connect(&self, addr: SocketAddr) -> Conn {
        Conn::connect_in(addr, self.rev)
    }

    /// A new connection to `addr` in this client's revision, with
    /// `timeout` on the connect and on every read and write.
    pub fn open(&self, addr: SocketAddr, timeout: std::time::Duration) -> io::Result<Conn> {
        Conn::open_in(addr, timeout, self.rev)
    }

    /// Refuses a connection that speaks another revision than the client.
    fn check_conn(&self, c: &Conn) -> Result<(), Error> {
        if c.revision() == self.rev {
            return Ok(());
        }
        Err(Error::Check(format!(
            "client {:?} speaks {} on a connection opened for {}",
            self.name,
            self.rev,
            c.revision()
        )))
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
        let key = key.map_err(|e| Error::Check(format!("{what} key: {e}")))?;
        if key.as_bytes().len() != self.rev.aes_key_len() {
            return Err(Error::Check(format!(
                "{what} key of {} bytes; {} uses {}",
                key.as_bytes().len(),
                self.rev,
                self.rev.aes_key_len()
            )));
        }
        self.aes = Some(key);
        Ok(())
    }

    fn send_register(&mut self, c: &mut Conn) -> Result<Response, Error> {
        self.check_conn(c)?;
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

    /// 1026, which must give 2102 with our id; decrypts the AES key (of
    /// the revision's size). In 2022c this is also how a known client
    /// comes back (it has no reconnect).
    pub fn try_exchange_key(&mut self, c: &mut Conn) -> Result<(), Error> {
        self.check_conn(c)?;
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
    /// id) the AES key is decrypted and kept. 2022c has no reconnect (an
    /// error here; send the key again with [`Client::try_exchange_key`]).
    pub fn try_reconnect(&mut self, c: &mut Conn) -> Result<Response, Error> {
        self.check_conn(c)?;
        if self.rev.request_code(RequestKind::Reconnect).is_none() {
            return Err(Error::Check(format!("{} has no reconnect", self.rev)));
        }
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

    /// The file message for `data` under `name`, encrypted with our key:
    /// one 1028 frame, or in 2024a/2024c every packet one after the other.
    pub fn file_frame(&self, name: &str, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(data.len() + 512);
        let mut enc = self
            .file_encoder(name, data.len() as u64)
            .unwrap_or_else(|e| panic!("file message {name:?}: {e}"));
        enc.push(data, &mut out)
            .and_then(|()| enc.finish(&mut out))
            .unwrap_or_else(|e| panic!("file message {name:?}: {e}"));
        out
    }

    /// Sends the file message of `data` (does not read the reply).
    pub fn send_file(&self, c: &mut Conn, name: &str, data: &[u8]) {
        self.check_conn(c).unwrap_or_else(|e| panic!("{e}"));
        let f = self.file_frame(name, data);
        c.send(&f);
    }

    /// The encoder of a file message of `plain_len` bytes named `name` in
    /// this client's revision, with its AES key and packet options.
    pub fn file_encoder(&self, name: &str, plain_len: u64) -> Result<FileEncoder, Error> {
        let key = self
            .aes
            .as_ref()
            .ok_or_else(|| Error::Check("no AES key exchanged".into()))?;
        let file_name =
            FixedName::new(name.as_bytes()).map_err(|e| Error::Name(format!("{name:?}: {e}")))?;
        FileEncoder::new(self.rev, &self.id, key, file_name, plain_len, &self.packets)
            .map_err(Error::Check)
    }

    /// The content_size a 2103 for a file of `plain_len` bytes echoes:
    /// the encrypted length, or in 2024a/2024c the last packet's
    /// content_size field.
    pub fn expected_content_size(&self, plain_len: u64) -> u64 {
        match self.rev.file_layout() {
            FileLayout::Single => encrypted_len(plain_len),
            FileLayout::Packets => PacketPlan::new(plain_len, &self.packets)
                .map(|p| u64::from(p.header(p.total - 1).content_size))
                .unwrap_or(u64::MAX),
        }
    }

    /// Starts the file message of `plain_len` plaintext bytes named
    /// `name`, to be given piece by piece to the [`UploadStream`]
    /// (encrypted and framed on the way: nothing the size of the file is
    /// held).
    pub fn begin_upload<'c>(
        &self,
        c: &'c mut Conn,
        name: &str,
        plain_len: u64,
    ) -> Result<UploadStream<'c>, Error> {
        self.check_conn(c)?;
        let enc = self.file_encoder(name, plain_len)?;
        Ok(UploadStream {
            conn: c,
            enc,
            out: Vec::with_capacity(512),
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
        } else if u64::from(*content_size) != self.expected_content_size(plain_len) {
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
                    self.expected_content_size(plain_len),
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
    /// The codes are 2023c's; the request goes in the connection's
    /// revision (1104-1106 in 2022c/2023a, 900-902 in 2024c).
    pub fn send_verdict(&self, c: &mut Conn, code: u16, name: &str) {
        let req = Client::verdict_request(code, name).unwrap_or_else(|e| panic!("{e}"));
        c.request(&self.id, &req);
    }

    /// 1029 for `name`, which must give 2104 with our id.
    pub fn try_verify(&self, c: &mut Conn, name: &str) -> Result<(), Error> {
        self.check_conn(c)?;
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

/// A file message being sent: [`UploadStream::write`] encrypts, frames
/// and sends each piece of plaintext, [`UploadStream::finish`] the last
/// block. Nothing is read; the caller reads the 2103.
pub struct UploadStream<'c> {
    conn: &'c mut Conn,
    enc: FileEncoder,
    /// The bytes of the next write: the header (before the first piece),
    /// then each piece's ciphertext and the packet headers inside it.
    out: Vec<u8>,
    sent: u64,
}

impl UploadStream<'_> {
    /// Encrypts `plain` and sends it (with the header, the first time).
    /// More bytes than announced is an `InvalidInput` error.
    pub fn write(&mut self, plain: &[u8]) -> io::Result<()> {
        self.enc.push(plain, &mut self.out)?;
        self.flush()
    }

    fn flush(&mut self) -> io::Result<()> {
        self.conn.try_send(&self.out)?;
        self.sent += self.out.len() as u64;
        self.out.clear();
        Ok(())
    }

    /// Bytes on the wire so far, headers included.
    pub fn sent(&self) -> u64 {
        self.sent
    }

    /// Sends the last block; the plaintext's cksum. Fewer bytes than
    /// announced is an `InvalidInput` error.
    pub fn finish(self) -> io::Result<u32> {
        let UploadStream {
            conn, enc, mut out, ..
        } = self;
        let ck = enc.finish(&mut out)?;
        conn.try_send(&out)?;
        Ok(ck)
    }
}

/// Turns a file's plaintext into the bytes of its file message in one
/// revision, in one streaming pass: the header, then AES-CBC ciphertext
/// (zero IV, PKCS#7, §4); in 2024a/2024c a packet header before each
/// packet's bytes (§9), split (one ciphertext cut into pieces) or each
/// (every piece encrypted and padded alone), as the [`PacketPlan`] says.
/// Holds at most 15 bytes of plaintext between calls; also computes the
/// plaintext's cksum.
pub struct FileEncoder {
    ck: Cksum,
    plain_len: u64,
    /// Plaintext bytes taken so far.
    pos: u64,
    /// The encryptor of the message, or of the packet being filled.
    enc: CbcEncryptor,
    cut: Cut,
}

enum Cut {
    /// One message: its header goes out before the first byte.
    Single { header: Option<Vec<u8>> },
    /// 2024 packets.
    Packets(Box<Packets>),
}

/// The packet state of a 2024 upload. Packet `i` holds the plaintext from
/// `i * piece` on (split: its ciphertext, the same offsets since a piece
/// is a multiple of 16; each: encrypted alone); the last packet holds the
/// rest and the padding.
struct Packets {
    rev: Revision,
    client_id: ClientId,
    file_name: FixedName,
    key: AesKey,
    plan: PacketPlan,
    /// The packet being filled.
    index: u16,
    /// Its header is out.
    open: bool,
}

impl Packets {
    /// Where packet `index`'s plaintext ends.
    fn end(&self, plain_len: u64) -> u64 {
        if self.index + 1 < self.plan.total {
            u64::from(self.index + 1) * self.plan.piece
        } else {
            plain_len
        }
    }

    fn open(&mut self, out: &mut Vec<u8>) {
        if !self.open {
            let i = self.index;
            encode_packet_header(
                self.rev,
                &self.client_id,
                &self.plan.header(i),
                &self.file_name,
                self.plan.data_len(i),
                out,
            );
            self.open = true;
        }
    }
}

impl FileEncoder {
    /// The encoder of one upload of `plain_len` bytes; the packet options
    /// only matter in 2024a/2024c.
    pub fn new(
        rev: Revision,
        client_id: &ClientId,
        key: &AesKey,
        file_name: FixedName,
        plain_len: u64,
        packets: &PacketOptions,
    ) -> Result<FileEncoder, String> {
        let cut = match rev.file_layout() {
            FileLayout::Single => {
                let content = u32::try_from(encrypted_len(plain_len))
                    .map_err(|_| format!("{plain_len} bytes is too large for one file message"))?;
                let mut header = Vec::with_capacity(512);
                encode_file_header(rev, client_id, content, &file_name, &mut header);
                Cut::Single {
                    header: Some(header),
                }
            }
            FileLayout::Packets => {
                let plan = PacketPlan::new(plain_len, packets).map_err(|e| match e {
                    Some(e) => e.to_string(),
                    None => format!("{plain_len} bytes do not fit the packets' content_size"),
                })?;
                Cut::Packets(Box::new(Packets {
                    rev,
                    client_id: *client_id,
                    file_name,
                    key: key.clone(),
                    plan,
                    index: 0,
                    open: false,
                }))
            }
        };
        Ok(FileEncoder {
            ck: Cksum::new(),
            plain_len,
            pos: 0,
            enc: CbcEncryptor::new(key),
            cut,
        })
    }

    /// The packet plan, in 2024a/2024c.
    pub fn plan(&self) -> Option<&PacketPlan> {
        match &self.cut {
            Cut::Single { .. } => None,
            Cut::Packets(p) => Some(&p.plan),
        }
    }

    /// Encrypts the next piece of plaintext and appends what goes on the
    /// wire to `out`. Refuses bytes beyond the announced length.
    pub fn push(&mut self, plain: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
        if self.pos + plain.len() as u64 > self.plain_len {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{} bytes past the {} announced",
                    self.pos + plain.len() as u64 - self.plain_len,
                    self.plain_len
                ),
            ));
        }
        self.ck.update(plain);
        match &mut self.cut {
            Cut::Single { header } => {
                if let Some(h) = header.take() {
                    out.extend_from_slice(&h);
                }
                self.enc.update(plain, out);
                self.pos += plain.len() as u64;
            }
            Cut::Packets(p) => {
                let mut rest = plain;
                while !rest.is_empty() {
                    p.open(out);
                    let end = p.end(self.plain_len);
                    let n = (end - self.pos).min(rest.len() as u64) as usize;
                    self.enc.update(&rest[..n], out);
                    rest = &rest[n..];
                    self.pos += n as u64;
                    if self.pos == end && p.index + 1 < p.plan.total {
                        if p.plan.mode == Granularity::Each {
                            let done = std::mem::replace(&mut self.enc, CbcEncryptor::new(&p.key));
                            done.finish(out);
                        }
                        p.index += 1;
                        p.open = false;
                    }
                }
            }
        }
        Ok(())
    }

    /// Appends the last (padded) block, with the header of the packet it
    /// opens if any, and returns the plaintext's cksum. Refuses a short
    /// file.
    pub fn finish(self, out: &mut Vec<u8>) -> io::Result<u32> {
        if self.pos != self.plain_len {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} of {} bytes given", self.pos, self.plain_len),
            ));
        }
        match self.cut {
            Cut::Single { header } => {
                if let Some(h) = header {
                    out.extend_from_slice(&h);
                }
            }
            Cut::Packets(mut p) => p.open(out),
        }
        self.enc.finish(out);
        Ok(self.ck.finish())
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
    AesKey::from_slice(&plain)
        .ok_or_else(|| "the decrypted AES key is neither 16 nor 32 bytes".to_owned())
}

/// `key` as the `rsa` crate's own type, for [`decrypt_unblinded`].
pub fn unblinded_key(key: &RsaPrivateKey) -> rsa::PrivateKey {
    use rsa::pkcs8::DecodePrivateKey;
    rsa::PrivateKey::from_pkcs8_der(&key.to_pkcs8_der()).expect("a key re-reads its own PKCS#8")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vectors::{vector, vector_client_id};
    use sealdrop_protocol::client::PacketFields;
    use sealdrop_protocol::crypto::cbc_decrypt;
    use sealdrop_protocol::revision::PACKET_PREFIX_LEN;

    fn vector_client(rev: Revision, key_file: &str, packets: PacketOptions) -> Client {
        let mut c = Client::new("alice").in_revision(rev).with_packets(packets);
        c.id = vector_client_id();
        c.aes = Some(AesKey::from_slice(&vector(key_file)).unwrap());
        c
    }

    fn opts(
        size: Option<u32>,
        base: u16,
        mode: Granularity,
        fields: PacketFields,
    ) -> PacketOptions {
        PacketOptions {
            size,
            base,
            mode,
            fields,
        }
    }

    #[test]
    fn file_messages_match_the_golden_frames_of_every_revision() {
        let plain = vector("plain_1000.bin");
        let split512 = opts(Some(512), 1, Granularity::Split, PacketFields::Whole);
        let cases = [
            (
                Revision::R2022c,
                "aes_key.bin",
                "2022c/request_1103.bin".to_owned(),
            ),
            (
                Revision::R2023a,
                "aes_key.bin",
                "2023a/request_1103.bin".to_owned(),
            ),
            (
                Revision::R2023c,
                "aes_key.bin",
                "request_1028.bin".to_owned(),
            ),
        ];
        for (rev, key, frame) in cases {
            let c = vector_client(rev, key, PacketOptions::default());
            assert_eq!(
                c.file_frame("plain_1000.bin", &plain),
                vector(&frame),
                "{rev}"
            );
        }
        for rev in ["2024a", "2024c"] {
            let r: Revision = rev.parse().unwrap();
            let c = vector_client(r, &format!("{rev}/aes_key.bin"), split512);
            let code = r.request_code(RequestKind::SendFile).unwrap();
            let mut want = vector(&format!("{rev}/request_{code}_packet1.bin"));
            want.extend(vector(&format!("{rev}/request_{code}_packet2.bin")));
            assert_eq!(c.file_frame("plain_1000.bin", &plain), want, "{rev}");
            assert_eq!(c.expected_content_size(1000), 1008);
        }
    }

    /// The packets of a 2024c stream: (fields, content) each.
    fn packets(mut wire: &[u8]) -> Vec<(PacketHeaderFields, &[u8])> {
        let mut out = Vec::new();
        while !wire.is_empty() {
            let code = u16::from_le_bytes([wire[17], wire[18]]);
            assert_eq!(code, 828);
            let payload = u32::from_le_bytes(wire[19..23].try_into().unwrap()) as usize;
            let p = &wire[23..23 + payload];
            let u32_at = |i: usize| u32::from_le_bytes(p[i..i + 4].try_into().unwrap());
            let u16_at = |i: usize| u16::from_le_bytes([p[i], p[i + 1]]);
            let fields = (u32_at(0), u32_at(4), u16_at(8), u16_at(10));
            out.push((fields, &p[PACKET_PREFIX_LEN..]));
            wire = &wire[23 + payload..];
        }
        out
    }

    type PacketHeaderFields = (u32, u32, u16, u16);

    /// Encodes `plain` fed in `chunk`-byte pieces.
    fn encode_in_chunks(c: &Client, plain: &[u8], chunk: usize) -> (Vec<u8>, u32) {
        let mut enc = c.file_encoder("f", plain.len() as u64).unwrap();
        let mut out = Vec::new();
        for piece in plain.chunks(chunk.max(1)) {
            enc.push(piece, &mut out).unwrap();
        }
        let ck = enc.finish(&mut out).unwrap();
        (out, ck)
    }

    #[test]
    fn packets_decrypt_to_the_file_in_every_variant_and_chunking() {
        let key = "2024c/aes_key.bin";
        let variants = [
            opts(None, 1, Granularity::Split, PacketFields::Whole),
            opts(Some(64), 1, Granularity::Split, PacketFields::Whole),
            opts(Some(64), 0, Granularity::Split, PacketFields::Whole),
            opts(Some(64), 1, Granularity::Each, PacketFields::Whole),
            opts(Some(48), 0, Granularity::Each, PacketFields::Packet),
        ];
        // Empty, one short block, exactly full packets, a ragged end.
        for len in [0usize, 5, 128, 192, 200] {
            let plain: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
            for v in variants {
                let c = vector_client(Revision::R2024c, key, v);
                let plan = PacketPlan::new(len as u64, &v).unwrap();
                let (wire, ck) = encode_in_chunks(&c, &plain, 1 << 20);
                assert_eq!(ck, cksum(&plain));
                for chunk in [1, 15, 16, 17, 64, 100] {
                    assert_eq!(encode_in_chunks(&c, &plain, chunk).0, wire, "{len} {v:?}");
                }
                let got = packets(&wire);
                assert_eq!(got.len(), usize::from(plan.total), "{len} {v:?}");
                let mut joined = Vec::new();
                for (i, (fields, data)) in got.iter().enumerate() {
                    let h = plan.header(i as u16);
                    assert_eq!(*fields, (h.content_size, h.orig_size, h.first, h.second));
                    assert_eq!(data.len(), plan.data_len(i as u16) as usize);
                    match v.mode {
                        Granularity::Split => joined.extend_from_slice(data),
                        Granularity::Each => joined.extend(cbc_decrypt(c.key(), data).unwrap()),
                    }
                }
                if v.mode == Granularity::Split {
                    joined = cbc_decrypt(c.key(), &joined).unwrap();
                }
                assert_eq!(joined, plain, "{len} {v:?}");
            }
        }
    }

    #[test]
    fn the_encoder_refuses_a_file_that_grew_or_shrank() {
        for rev in [Revision::R2023c, Revision::R2024c] {
            let key = if rev == Revision::R2024c {
                "2024c/aes_key.bin"
            } else {
                "aes_key.bin"
            };
            let c = vector_client(rev, key, PacketOptions::default());
            let mut out = Vec::new();
            let mut enc = c.file_encoder("f", 10).unwrap();
            assert!(enc.push(&[0; 11], &mut out).is_err());
            enc.push(&[0; 9], &mut out).unwrap();
            assert!(enc.finish(&mut out).is_err());
        }
    }

    #[test]
    fn a_connection_of_another_revision_is_refused() {
        let mut c = Client::new("x").in_revision(Revision::R2022c);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut conn = Conn::connect(listener.local_addr().unwrap());
        assert!(matches!(c.try_register(&mut conn), Err(Error::Check(_))));
        conn.set_revision(Revision::R2022c);
        assert!(matches!(c.try_reconnect(&mut conn), Err(Error::Check(_))));
    }
}
