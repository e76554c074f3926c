//! Streaming the file of a 1028 (PROTOCOL.md §2: never held whole): read a
//! chunk, encrypt and cksum it, write it, repeat. Memory stays at a few
//! chunk buffers whatever the file size.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::Path;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::thread;

use sealdrop_protocol::consts::AES_BLOCK_LEN;
use sealdrop_protocol::{FileSender, FileUpload};

use crate::net::Link;
use crate::progress::Progress;

/// Bytes read from the file, and written to the socket, at a time. Large
/// writes keep the per-syscall cost negligible (the client reaches
/// hundreds of MB/s on loopback); 1 MiB keeps memory small.
pub const CHUNK_LEN: usize = 1 << 20;

/// The file being sent, opened once and rewound for every send.
pub struct Source {
    file: File,
    /// Its length when opened: what the 1028 header declares.
    pub len: u64,
}

impl Source {
    /// Opens a regular file and notes its length.
    pub fn open(path: &Path) -> io::Result<Source> {
        let file = File::open(path)?;
        let meta = file.metadata()?;
        if !meta.is_file() {
            return Err(io::Error::other("not a regular file"));
        }
        Ok(Source {
            file,
            len: meta.len(),
        })
    }

    /// Standard input as a source. A redirected regular file is used as
    /// it is; a pipe or terminal is first copied into an unnamed temporary
    /// file in the system's temporary folder (`$TMPDIR`, else /tmp), which
    /// disappears when the run ends, because a send needs the length up
    /// front and a resend reads the bytes again. The copy stops with an
    /// error past `limit` bytes (the most the revision can carry), so a
    /// runaway pipe cannot fill the disk.
    pub fn stdin(limit: u64) -> Result<Source, String> {
        use std::os::fd::AsFd;
        let fd = io::stdin()
            .as_fd()
            .try_clone_to_owned()
            .map_err(|e| format!("cannot read standard input: {}", crate::net::describe(&e)))?;
        let file = File::from(fd);
        if let Ok(meta) = file.metadata() {
            if meta.is_file() {
                return Ok(Source {
                    file,
                    len: meta.len(),
                });
            }
        }
        Source::spool(&file, limit)
    }

    /// Copies `input` to an unnamed temporary file, at most `limit` bytes:
    /// one byte more is an error, and the copy stops there.
    fn spool(mut input: impl Read, limit: u64) -> Result<Source, String> {
        let mut spool = tempfile::tempfile().map_err(|e| {
            format!(
                "cannot create a temporary file in {} to hold standard input: {}",
                std::env::temp_dir().display(),
                crate::net::describe(&e)
            )
        })?;
        let copied = io::copy(&mut (&mut input).take(limit.saturating_add(1)), &mut spool)
            .map_err(|e| format!("cannot spool standard input: {}", crate::net::describe(&e)))?;
        if copied > limit {
            return Err(format!(
                "standard input is longer than {limit} bytes, the most this revision can \
                 carry in one file; nothing was sent (the copy stopped there): split the \
                 stream and send the parts under different --as names"
            ));
        }
        Ok(Source {
            file: spool,
            len: copied,
        })
    }

    /// Rewinds for a new send and checks the length is still `len`.
    fn rewind(&mut self) -> Result<(), SendError> {
        let now = self.file.metadata().map_err(SendError::read)?.len();
        if now != self.len {
            return Err(SendError::Local(format!(
                "it changed size from {} to {now} bytes between two sends",
                self.len
            )));
        }
        self.file
            .seek(SeekFrom::Start(0))
            .map_err(SendError::read)?;
        Ok(())
    }
}

/// Why a send stopped.
#[derive(Debug)]
pub enum SendError {
    /// Writing to the server failed (counts as a lost connection).
    Net(io::Error),
    /// Reading the file failed, or it grew or shrank: a local error.
    Local(String),
}

impl SendError {
    fn read(e: io::Error) -> SendError {
        SendError::Local(format!("read failed: {}", crate::net::describe(&e)))
    }
}

/// Encrypted chunks in flight between the encrypting thread and the
/// socket writer. Two let one chunk be encrypted while another is written,
/// and bound memory at (2 + 2) chunk buffers plus the plaintext buffer.
const PIPELINE_DEPTH: usize = 2;

/// One piece of the 1028 on its way to the socket.
struct Chunk {
    /// Bytes to write: header and/or ciphertext.
    bytes: Vec<u8>,
    /// Plaintext bytes it carries, for the progress bar.
    plain: u64,
    /// Set on the last chunk: the plaintext cksum.
    cksum: Option<u32>,
}

/// Sends one 1028: the header, then the file encrypted chunk by chunk.
/// Returns the plaintext cksum.
///
/// Reading, cksum and AES-CBC run on a helper thread while this thread
/// writes the previous chunk, so CPU work and socket transfer overlap.
pub fn send_file(
    link: &mut Link,
    source: &mut Source,
    upload: Box<FileUpload>,
    progress: &mut Progress,
) -> Result<u32, SendError> {
    let FileUpload {
        attempt,
        header,
        sender,
        ..
    } = *upload;
    source.rewind()?;
    progress.start(attempt, sealdrop_protocol::consts::MAX_SENDS, source.len);
    let (full_tx, full_rx) = sync_channel(PIPELINE_DEPTH);
    let (empty_tx, empty_rx) = sync_channel(PIPELINE_DEPTH);
    let file = &mut source.file;
    let result = thread::scope(|scope| {
        // Owned by this closure, so dropped when it returns and before the
        // scope joins the helper: a helper blocked on a full channel then
        // sees the writer gone and stops.
        let full_rx = full_rx;
        scope.spawn(move || encrypt_file(file, header, sender, &full_tx, &empty_rx));
        write_chunks(link, &full_rx, &empty_tx, progress)
    });
    progress.clear();
    result
}

/// Helper thread: sends the header, then reads the file a chunk at a time
/// and encrypts each chunk in place (whole 1 MiB chunks; a short last one
/// goes through the copying path), computing the cksum on the way.
fn encrypt_file(
    file: &mut File,
    header: Vec<u8>,
    mut sender: FileSender,
    full: &SyncSender<Result<Chunk, SendError>>,
    empty: &Receiver<Vec<u8>>,
) {
    let head = Chunk {
        bytes: header,
        plain: 0,
        cksum: None,
    };
    if full.send(Ok(head)).is_err() {
        return;
    }
    loop {
        let mut buf = empty.try_recv().unwrap_or_default();
        // Recycled buffers keep their length, so this rarely writes zeros.
        buf.resize(CHUNK_LEN, 0);
        let step = read_full(file, &mut buf)
            .map_err(SendError::read)
            .and_then(|n| encrypt_buffer(&mut sender, &mut buf, n).map(|()| n));
        let chunk = match step {
            Ok(0) => break,
            Ok(n) => Chunk {
                bytes: buf,
                plain: n as u64,
                cksum: None,
            },
            Err(e) => {
                let _ = full.send(Err(e));
                return;
            }
        };
        if full.send(Ok(chunk)).is_err() {
            return; // the writer failed and left
        }
    }
    let mut bytes = Vec::with_capacity(AES_BLOCK_LEN);
    let last = match sender.finish(&mut bytes) {
        Ok(cksum) => Ok(Chunk {
            bytes,
            plain: 0,
            cksum: Some(cksum),
        }),
        Err(e) => Err(SendError::Local(e.to_string())),
    };
    let _ = full.send(last);
}

/// Turns the `n` plaintext bytes at the start of `buf` into the ciphertext
/// to send, leaving exactly those bytes in `buf`.
fn encrypt_buffer(sender: &mut FileSender, buf: &mut Vec<u8>, n: usize) -> Result<(), SendError> {
    let local = |e: sealdrop_protocol::client::FileSizeChanged| SendError::Local(e.to_string());
    if sender.push_in_place(&mut buf[..n]).map_err(local)? {
        buf.truncate(n);
        return Ok(());
    }
    let mut out = Vec::with_capacity(n + AES_BLOCK_LEN);
    sender.push(&buf[..n], &mut out).map_err(local)?;
    *buf = out;
    Ok(())
}

/// This thread: writes chunks as they come; returns the cksum after the
/// last one.
fn write_chunks(
    link: &mut Link,
    full: &Receiver<Result<Chunk, SendError>>,
    empty: &SyncSender<Vec<u8>>,
    progress: &Progress,
) -> Result<u32, SendError> {
    loop {
        let chunk = full
            .recv()
            .map_err(|_| SendError::Local("the encrypting thread stopped".into()))??;
        link.write_all(&chunk.bytes).map_err(SendError::Net)?;
        progress.advance(chunk.plain);
        if let Some(cksum) = chunk.cksum {
            return Ok(cksum);
        }
        let _ = empty.try_send(chunk.bytes); // recycle; dropped if the pool is full
    }
}

/// Reads until `buf` is full or the file ends; returns the bytes read.
fn read_full(file: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_spooled_stream_stops_one_byte_past_the_limit() {
        let data = [7u8; 100];
        let source = super::Source::spool(&data[..], 100).unwrap();
        assert_eq!(source.len, 100);
        let err = super::Source::spool(&data[..], 99).err().unwrap();
        assert!(
            err.starts_with("standard input is longer than 99 bytes")
                && err.contains("nothing was sent")
                && err.contains("--as"),
            "{err}"
        );
        // A runaway stream is not read to its end.
        let endless = std::io::repeat(1);
        let err = super::Source::spool(endless, 10).err().unwrap();
        assert!(err.contains("longer than 10 bytes"), "{err}");
    }

    use super::*;
    use std::io::Read;
    use std::net::TcpListener;

    use sealdrop_protocol::client::{Action, ClientConfig};
    use sealdrop_protocol::client::{Granularity, PacketOptions};
    use sealdrop_protocol::crypto::{cbc_decrypt, AesKey};
    use sealdrop_protocol::crypto::{RsaPrivateKey, TestEntropy};
    use sealdrop_protocol::{
        ClientId, ClientSession, Identity, Response, ResponseDecoder, ResponseKind, Revision,
    };

    use crate::net::Endpoint;

    const VECTORS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures/vectors/");

    fn vector(name: &str) -> Vec<u8> {
        std::fs::read(format!("{VECTORS}{name}")).unwrap()
    }

    /// A session that got the vector AES key (2105) and wants to send
    /// `plain_len` bytes named `name`.
    fn upload_for(name: &str, plain_len: u64) -> Box<FileUpload> {
        upload_in(Revision::R2023c, name, plain_len, PacketOptions::default())
    }

    /// The same in `rev` (its vector key, from its 2105/1605), with
    /// `packets` for 2024a/2024c.
    fn upload_in(
        rev: Revision,
        name: &str,
        plain_len: u64,
        packets: PacketOptions,
    ) -> Box<FileUpload> {
        let identity = Identity {
            name: "alice".into(),
            client_id: ClientId(vector("client_id.bin").try_into().unwrap()),
            key: RsaPrivateKey::from_der(&vector("rsa1024_private_pkcs8.der")).unwrap(),
        };
        let mut s = ClientSession::new(ClientConfig {
            revision: rev,
            name: "alice".into(),
            files: vec![sealdrop_protocol::client::FileSpec {
                name: name.into(),
                plain_len,
            }],
            identity: Some(identity),
            packets,
            retry: Default::default(),
        })
        .unwrap();
        let code = rev.response_code(ResponseKind::ReconnectAccepted).unwrap();
        let frame = vector(&format!("{}/response_{code}.bin", rev.name()));
        let r: Response = ResponseDecoder::new(rev)
            .decode(&mut &frame[..])
            .unwrap()
            .unwrap();
        s.handle_connected();
        s.handle_response(r, &mut TestEntropy::new(1));
        loop {
            match s.poll_action() {
                Some(Action::SendFile(up)) => return up,
                Some(_) => continue,
                None => panic!("no file action"),
            }
        }
    }

    #[test]
    fn multi_chunk_file_streams_byte_exact() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let reader = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut all = Vec::new();
            s.read_to_end(&mut all).unwrap();
            all
        });
        let ep = Endpoint::loopback_for_tests(port);
        let mut link = ep.connect().unwrap();
        let path = format!("{VECTORS}plain_1048577.bin");
        let mut source = Source::open(Path::new(&path)).unwrap();
        let up = upload_for("plain_1048577.bin", source.len);
        let header_len = up.header.len();
        let mut progress = Progress::new(true);
        let cksum = send_file(&mut link, &mut source, up, &mut progress).unwrap();
        assert_eq!(cksum, 3_383_893_772, "cksum_vectors.txt");
        link.close();
        let wire = reader.join().unwrap();
        assert_eq!(header_len, 23 + 259);
        assert_eq!(wire[header_len..], vector("cipher_1048577.bin")[..]);
    }

    /// Sends `plain_1048577.bin` in 2024c packets through the real
    /// pipeline (1 MiB chunks, in place where no packet starts or ends
    /// inside one) and returns what went on the wire.
    fn send_packets(packets: PacketOptions) -> (Vec<u8>, Box<[u8]>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let reader = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut all = Vec::new();
            s.read_to_end(&mut all).unwrap();
            all
        });
        let mut link = Endpoint::loopback_for_tests(port).connect().unwrap();
        let path = format!("{VECTORS}plain_1048577.bin");
        let mut source = Source::open(Path::new(&path)).unwrap();
        let up = upload_in(Revision::R2024c, "p.bin", source.len, packets);
        let cksum = send_file(&mut link, &mut source, up, &mut Progress::new(true)).unwrap();
        assert_eq!(cksum, 3_383_893_772, "cksum_vectors.txt");
        link.close();
        (reader.join().unwrap(), vector("plain_1048577.bin").into())
    }

    /// The content of each 2024c packet on the wire, checking the
    /// numbering and the total.
    fn packet_contents(mut wire: &[u8]) -> Vec<&[u8]> {
        let mut out = Vec::new();
        while !wire.is_empty() {
            assert_eq!(wire[17..19], 828u16.to_le_bytes());
            let payload = u32::from_le_bytes(wire[19..23].try_into().unwrap()) as usize;
            let number = u16::from_le_bytes([wire[31], wire[32]]);
            assert_eq!(usize::from(number), out.len() + 1);
            out.push(&wire[23 + 267..23 + payload]);
            wire = &wire[23 + payload..];
        }
        out
    }

    #[test]
    fn packets_stream_byte_exact_across_chunks() {
        let key = AesKey::from_slice(&vector("2024c/aes_key.bin")).unwrap();
        // Split, 8 KiB: the 1 MiB chunks end inside packets and packets
        // end inside chunks; joined, the packets are one ciphertext.
        let split = PacketOptions {
            size: Some(8192),
            ..PacketOptions::default()
        };
        let (wire, plain) = send_packets(split);
        let pieces = packet_contents(&wire);
        assert_eq!(pieces.len(), 129); // 1,048,592 bytes in 8 KiB pieces
        assert!(pieces[..128].iter().all(|p| p.len() == 8192));
        assert_eq!(cbc_decrypt(&key, &pieces.concat()).unwrap(), &plain[..]);
        // Each, 4,000-byte pieces, each its own ciphertext.
        let each = PacketOptions {
            size: Some(4000),
            mode: Granularity::Each,
            ..PacketOptions::default()
        };
        let (wire, plain) = send_packets(each);
        let pieces = packet_contents(&wire);
        assert_eq!(pieces.len(), 263);
        let mut back = Vec::new();
        for p in pieces {
            back.extend(cbc_decrypt(&key, p).unwrap());
        }
        assert_eq!(back, &plain[..]);
        // The default: one packet, the whole ciphertext.
        let (wire, plain) = send_packets(PacketOptions::default());
        let pieces = packet_contents(&wire);
        assert_eq!(pieces.len(), 1);
        assert_eq!(cbc_decrypt(&key, pieces[0]).unwrap(), &plain[..]);
    }

    #[test]
    fn a_file_that_changed_size_is_a_local_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.bin");
        std::fs::write(&path, [7u8; 100]).unwrap();
        let mut source = Source::open(&path).unwrap();
        std::fs::write(&path, [7u8; 50]).unwrap();
        assert!(matches!(source.rewind(), Err(SendError::Local(_))));
    }

    #[test]
    fn directories_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        assert!(Source::open(dir.path()).is_err());
    }
}
