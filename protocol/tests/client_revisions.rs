//! Pair tests of every revision (PROTOCOL.md §9): a real ClientSession
//! speaking the revision against real ServerSessions detecting it, over an
//! in-memory byte link read by the client's own ResponseReader, with the
//! in-memory store. Each revision's whole flow (register, key, file, CRC
//! ok; CRC bad then ok; give up; reconnect, or in 2022c the key sent
//! again), every 2024 packet variant (size, numbering, split or each,
//! whole or per-packet size fields) with its edge cases (empty file, one
//! packet, exactly full last packet), and a server of another revision.

use std::collections::VecDeque;
use std::time::Instant;

use sealdrop_protocol::client::{
    Action, ClientConfig, ClientSession, FileSpec, Granularity, Identity, Outcome, PacketFields,
    PacketOptions, ResponseError, ResponseReader, Violation,
};
use sealdrop_protocol::crypto::{RsaPrivateKey, TestEntropy};
use sealdrop_protocol::decode::RevisionChoice;
use sealdrop_protocol::memstore::MemoryStore;
use sealdrop_protocol::server::{ServerConfig, ServerSession};
use sealdrop_protocol::store::Store;
use sealdrop_protocol::{ClientId, RequestKind, Response, ResponseKind, Revision};

type Server = ServerSession<<MemoryStore as Store>::Upload>;

fn vector_key() -> RsaPrivateKey {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../fixtures/vectors/rsa1024_private_pkcs8.der"
    );
    RsaPrivateKey::from_der(&std::fs::read(path).unwrap()).unwrap()
}

/// What the server side of the link does besides the server session.
#[derive(Default, Clone)]
struct Faults {
    /// The first N file-received answers carry a wrong cksum.
    corrupt_crc: u32,
    /// An ack is injected after every CRC-bad request (§3: some servers
    /// answer it).
    stray_ack_after_crc_bad: bool,
    /// The server closes the connection after every answer.
    close_after_response: bool,
    /// The first upload is cut off after this many bytes of the file
    /// message (the connection drops).
    cut_first_upload_at: Option<usize>,
}

struct Pair {
    rev: Revision,
    server_choice: RevisionChoice,
    store: MemoryStore,
    server: Option<Server>,
    reader: ResponseReader,
    rng: TestEntropy,
    now: Instant,
    faults: Faults,
    /// Answers read but not yet handed to the client.
    responses: VecDeque<Result<Response, ResponseError>>,
    /// The server closed the connection (after its last answer).
    closed: bool,
    connections: u32,
    requests_seen: Vec<u16>,
    /// 2024 packets sent (each a request of its own).
    packets_sent: usize,
}

impl Pair {
    /// A pair whose server detects the revision as a real one does
    /// (2024a's codes are 2023c's: that range is tagged 2024a there).
    fn new(rev: Revision, store: MemoryStore, faults: Faults) -> Self {
        let range_1025 = if rev == Revision::R2024a {
            Revision::R2024a
        } else {
            Revision::R2023c
        };
        Self::with_server(rev, RevisionChoice::Auto { range_1025 }, store, faults)
    }

    fn with_server(
        rev: Revision,
        server_choice: RevisionChoice,
        store: MemoryStore,
        faults: Faults,
    ) -> Self {
        Pair {
            rev,
            server_choice,
            store,
            server: None,
            reader: ResponseReader::new(rev),
            rng: TestEntropy::new(42),
            now: Instant::now(),
            faults,
            responses: VecDeque::new(),
            closed: false,
            connections: 0,
            requests_seen: Vec::new(),
            packets_sent: 0,
        }
    }

    fn connect(&mut self) {
        self.disconnect();
        self.connections += 1;
        let config = ServerConfig {
            revision: self.server_choice,
            ..ServerConfig::default()
        };
        self.server = Some(ServerSession::new(
            config,
            u64::from(self.connections),
            self.now,
        ));
        self.reader = ResponseReader::new(self.rev);
        self.closed = false;
    }

    fn disconnect(&mut self) {
        if let Some(mut s) = self.server.take() {
            s.close(self.now, &mut self.store);
        }
        self.responses.clear();
    }

    /// A request frame (or the start of a file message).
    fn deliver_request(&mut self, bytes: &[u8]) {
        let code = u16::from_le_bytes([bytes[17], bytes[18]]);
        self.requests_seen.push(code);
        self.deliver(bytes);
        let bad = self.rev.request_code(RequestKind::CrcBad);
        if Some(code) == bad && self.faults.stray_ack_after_crc_bad {
            let ack = self.rev.response_code(ResponseKind::Ack).unwrap();
            let mut frame = vec![3];
            frame.extend_from_slice(&ack.to_le_bytes());
            frame.extend_from_slice(&16u32.to_le_bytes());
            frame.extend_from_slice(&bytes[..16]);
            self.read_answers(&frame);
        }
    }

    /// Bytes to the server; its answers into `responses`.
    fn deliver(&mut self, bytes: &[u8]) {
        let Some(server) = self.server.as_mut() else {
            return;
        };
        let mut input = bytes;
        while !input.is_empty() && server.wants_input() {
            server.handle_input(&mut input, self.now, &mut self.store, &mut self.rng);
        }
        let out = server.pending_output().to_vec();
        server.consume_output(out.len(), self.now);
        let closing = server.close_reason().is_some();
        self.read_answers(&out);
        if closing {
            self.disconnect();
            self.closed = true;
        }
    }

    /// Server bytes through the middlebox into the client's reader.
    fn read_answers(&mut self, bytes: &[u8]) {
        let mut bytes = bytes.to_vec();
        let received = self.rev.response_code(ResponseKind::FileReceived).unwrap();
        let mut at = 0;
        while at + 7 <= bytes.len() {
            let code = u16::from_le_bytes([bytes[at + 1], bytes[at + 2]]);
            let size = u32::from_le_bytes(bytes[at + 3..at + 7].try_into().unwrap()) as usize;
            let end = at + 7 + size;
            if code == received && self.faults.corrupt_crc > 0 && end <= bytes.len() {
                self.faults.corrupt_crc -= 1;
                for b in &mut bytes[end - 4..end] {
                    *b ^= 0xff;
                }
            }
            at = end;
        }
        let mut input = &bytes[..];
        loop {
            match self.reader.decode(&mut input) {
                Ok(Some(r)) => self.responses.push_back(Ok(r)),
                Ok(None) => break,
                Err(e) => {
                    self.responses.push_back(Err(e));
                    break;
                }
            }
        }
    }

    /// Runs a client to its outcome.
    fn run(&mut self, mut client: ClientSession, content: &[u8]) -> (Outcome, Option<Identity>) {
        for _ in 0..10_000 {
            match client.poll_action() {
                Some(Action::Connect { delay }) => {
                    self.now += delay;
                    self.connect();
                    client.handle_connected();
                }
                Some(Action::Send(bytes)) => self.deliver_request(&bytes),
                Some(Action::SendFile(upload)) => {
                    let mut upload = *upload;
                    let mut wire = upload.header.clone();
                    for piece in content.chunks(4000) {
                        upload.sender.push(piece, &mut wire).unwrap();
                    }
                    let cksum = upload.sender.finish(&mut wire).unwrap();
                    if upload.packets.is_some() {
                        self.packets_sent += count_packets(self.rev, &wire);
                    }
                    if let Some(cut) = self.faults.cut_first_upload_at.take() {
                        self.deliver_request(&wire[..cut.min(wire.len())]);
                        self.disconnect();
                        client.handle_connection_lost(self.now);
                        continue;
                    }
                    self.deliver_request(&wire);
                    client.handle_file_sent(cksum);
                }
                Some(Action::GenerateKeyPair) => client.handle_key_pair(vector_key()).unwrap(),
                Some(Action::Done(outcome)) => {
                    self.disconnect();
                    let identity = client.identity().map(|i| Identity {
                        name: i.name.clone(),
                        client_id: i.client_id,
                        key: i.key.clone(),
                    });
                    return (outcome, identity);
                }
                None => match self.responses.pop_front() {
                    Some(Err(e)) => client.handle_response_error(e),
                    Some(Ok(r)) => {
                        client.handle_response(r, &mut self.rng);
                        if self.faults.close_after_response && self.responses.is_empty() {
                            self.disconnect();
                            self.closed = true;
                        }
                    }
                    None if self.closed || self.server.is_none() => {
                        client.handle_connection_lost(self.now)
                    }
                    None => panic!("client waits for an answer the server never sends"),
                },
            }
            while client.poll_event().is_some() {}
        }
        panic!("session did not finish");
    }
}

/// Walks a 2024 file message packet by packet: each a whole request of
/// the file code, its payload the 267-byte prefix and its content.
fn count_packets(rev: Revision, mut wire: &[u8]) -> usize {
    let mut n = 0;
    while !wire.is_empty() {
        let code = u16::from_le_bytes([wire[17], wire[18]]);
        assert_eq!(Some(code), rev.request_code(SendFile));
        let payload = u32::from_le_bytes(wire[19..23].try_into().unwrap()) as usize;
        assert!(payload > 267, "a packet carries content");
        wire = &wire[23 + payload..];
        n += 1;
    }
    n
}

fn client(
    rev: Revision,
    name: &str,
    content: &[u8],
    identity: Option<Identity>,
    packets: PacketOptions,
) -> ClientSession {
    ClientSession::new(ClientConfig {
        revision: rev,
        name: name.into(),
        files: vec![FileSpec {
            name: "report.pdf".into(),
            plain_len: content.len() as u64,
        }],
        identity,
        packets,
        retry: Default::default(),
    })
    .unwrap()
}

fn content(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 131 % 251) as u8).collect()
}

fn stored(pair: &Pair, id: ClientId) -> Option<&[u8]> {
    pair.store
        .files
        .get(&(id, "report.pdf".to_string()))
        .filter(|f| f.verified)
        .map(|f| &f.bytes[..])
}

fn codes(rev: Revision, kinds: &[RequestKind]) -> Vec<u16> {
    kinds
        .iter()
        .map(|k| rev.request_code(*k).unwrap())
        .collect()
}

use RequestKind::{CrcBad, CrcGiveUp, CrcOk, PublicKey, Reconnect, Register, SendFile};

#[test]
fn every_revision_registers_uploads_and_verifies() {
    for rev in Revision::ALL {
        for len in [0, 1, 15, 16, 17, 1000, 70_000] {
            let data = content(len);
            let mut pair = Pair::new(rev, MemoryStore::new(), Faults::default());
            let c = client(rev, "alice", &data, None, PacketOptions::default());
            let (outcome, identity) = pair.run(c, &data);
            assert!(
                matches!(outcome, Outcome::Verified { attempts: 1, .. }),
                "{rev} {len}: {outcome:?}"
            );
            let id = identity.expect("identity after key exchange").client_id;
            assert_eq!(stored(&pair, id), Some(&data[..]), "{rev} {len}");
            assert_eq!(
                pair.requests_seen,
                codes(rev, &[Register, PublicKey, SendFile, CrcOk]),
                "{rev}"
            );
            assert_eq!(pair.connections, 1, "{rev}");
        }
    }
}

#[test]
fn every_revision_lets_a_returning_client_in_again() {
    for rev in Revision::ALL {
        let data = content(5000);
        let mut pair = Pair::new(rev, MemoryStore::new(), Faults::default());
        let c = client(rev, "bob", &data, None, PacketOptions::default());
        let (_, identity) = pair.run(c, &data);
        let id = identity.as_ref().unwrap().client_id;
        pair.requests_seen.clear();
        let newer = content(7000);
        let c = client(rev, "bob", &newer, identity, PacketOptions::default());
        let (outcome, identity) = pair.run(c, &newer);
        assert!(outcome.is_success(), "{rev}: {outcome:?}");
        // 2022c has no reconnect: the saved key goes again (1101).
        let hello = if rev == Revision::R2022c {
            PublicKey
        } else {
            Reconnect
        };
        assert_eq!(
            pair.requests_seen,
            codes(rev, &[hello, SendFile, CrcOk]),
            "{rev}"
        );
        assert_eq!(identity.unwrap().client_id, id, "{rev}: same client");
        assert_eq!(stored(&pair, id), Some(&newer[..]), "{rev}");
    }
}

#[test]
fn every_revision_registers_anew_on_a_server_that_does_not_know_us() {
    for rev in Revision::ALL {
        let data = content(100);
        let mut first = Pair::new(rev, MemoryStore::new(), Faults::default());
        let c = client(rev, "carol", &data, None, PacketOptions::default());
        let (_, identity) = first.run(c, &data);
        // A server that never saw carol (a fresh database).
        let mut pair = Pair::new(rev, MemoryStore::new(), Faults::default());
        let c = client(rev, "carol", &data, identity, PacketOptions::default());
        let (outcome, identity) = pair.run(c, &data);
        assert!(outcome.is_success(), "{rev}: {outcome:?}");
        let expected = if rev == Revision::R2022c {
            // A 2022c server closes without a word on the unknown id: the
            // first try and 3 retries, then a new registration.
            codes(
                rev,
                &[
                    PublicKey, PublicKey, PublicKey, PublicKey, Register, PublicKey, SendFile,
                    CrcOk,
                ],
            )
        } else {
            codes(rev, &[Reconnect, Register, PublicKey, SendFile, CrcOk])
        };
        assert_eq!(pair.requests_seen, expected, "{rev}");
        assert_eq!(
            stored(&pair, identity.unwrap().client_id),
            Some(&data[..]),
            "{rev}"
        );
    }
}

#[test]
fn every_revision_resends_once_after_a_crc_mismatch() {
    for rev in Revision::ALL {
        let data = content(3000);
        let faults = Faults {
            corrupt_crc: 1,
            ..Faults::default()
        };
        let mut pair = Pair::new(rev, MemoryStore::new(), faults);
        let c = client(rev, "dave", &data, None, PacketOptions::default());
        let (outcome, identity) = pair.run(c, &data);
        assert!(
            matches!(outcome, Outcome::Verified { attempts: 2, .. }),
            "{rev}: {outcome:?}"
        );
        assert_eq!(
            pair.requests_seen,
            codes(
                rev,
                &[Register, PublicKey, SendFile, CrcBad, SendFile, CrcOk]
            ),
            "{rev}"
        );
        assert_eq!(stored(&pair, identity.unwrap().client_id), Some(&data[..]));
        assert_eq!(pair.store.pending_count(), 0, "{rev}");
    }
}

#[test]
fn every_revision_gives_up_after_four_mismatches_and_stores_nothing() {
    for rev in Revision::ALL {
        let data = content(3000);
        let faults = Faults {
            corrupt_crc: 4,
            ..Faults::default()
        };
        let mut pair = Pair::new(rev, MemoryStore::new(), faults);
        let c = client(rev, "erin", &data, None, PacketOptions::default());
        let (outcome, identity) = pair.run(c, &data);
        assert!(
            matches!(outcome, Outcome::CrcFailed { attempts: 4, .. }),
            "{rev}: {outcome:?}"
        );
        let mut expected = vec![Register, PublicKey];
        for _ in 0..3 {
            expected.extend([SendFile, CrcBad]);
        }
        expected.extend([SendFile, CrcGiveUp]);
        assert_eq!(pair.requests_seen, codes(rev, &expected), "{rev}");
        assert_eq!(stored(&pair, identity.unwrap().client_id), None, "{rev}");
        assert_eq!(pair.store.pending_count(), 0, "{rev}");
    }
}

#[test]
fn every_revision_skips_a_stray_ack_after_crc_bad() {
    for rev in Revision::ALL {
        let data = content(2000);
        let faults = Faults {
            corrupt_crc: 2,
            stray_ack_after_crc_bad: true,
            ..Faults::default()
        };
        let mut pair = Pair::new(rev, MemoryStore::new(), faults);
        let c = client(rev, "iris", &data, None, PacketOptions::default());
        let (outcome, identity) = pair.run(c, &data);
        assert!(
            matches!(outcome, Outcome::Verified { attempts: 3, .. }),
            "{rev}: {outcome:?}"
        );
        assert_eq!(stored(&pair, identity.unwrap().client_id), Some(&data[..]));
    }
}

#[test]
fn every_revision_survives_a_server_closing_after_every_answer() {
    // Each step then runs on its own connection: the file must find the
    // client's last key in the store (§6 "keys").
    for rev in Revision::ALL {
        let data = content(2000);
        let faults = Faults {
            close_after_response: true,
            corrupt_crc: 1,
            ..Faults::default()
        };
        let mut pair = Pair::new(rev, MemoryStore::new(), faults);
        let c = client(rev, "hank", &data, None, PacketOptions::default());
        let (outcome, identity) = pair.run(c, &data);
        assert!(outcome.is_success(), "{rev}: {outcome:?}");
        assert!(pair.connections >= 4, "{rev}: {}", pair.connections);
        assert_eq!(stored(&pair, identity.unwrap().client_id), Some(&data[..]));
    }
}

#[test]
fn an_upload_cut_off_is_sent_again_whole_in_every_revision() {
    for rev in Revision::ALL {
        for packets in [
            PacketOptions::default(),
            PacketOptions {
                size: Some(1024),
                ..PacketOptions::default()
            },
        ] {
            let data = content(10_000);
            // Cut inside the third 1024-byte packet (or the one packet).
            let faults = Faults {
                cut_first_upload_at: Some(2 * (290 + 1024) + 500),
                ..Faults::default()
            };
            let mut pair = Pair::new(rev, MemoryStore::new(), faults);
            let c = client(rev, "jack", &data, None, packets);
            let (outcome, identity) = pair.run(c, &data);
            assert!(
                matches!(outcome, Outcome::Verified { attempts: 1, .. }),
                "{rev}: {outcome:?}"
            );
            assert_eq!(
                stored(&pair, identity.unwrap().client_id),
                Some(&data[..]),
                "{rev}"
            );
            assert_eq!(pair.store.pending_count(), 0, "{rev}");
            assert_eq!(pair.connections, 2, "{rev}");
        }
    }
}

/// Every packet variant the client offers, for one 2024 revision: sizes
/// (none, 16, 512, 1024, 4000, 4096), numbering from 0 and 1, split and
/// each, whole and (each) per-packet size fields, on files that give an
/// empty upload, one packet, an exactly full last packet and a short one.
fn every_packet_variant(rev: Revision) {
    let mut variants = Vec::new();
    for size in [
        None,
        Some(16),
        Some(512),
        Some(1024),
        Some(4000),
        Some(4096),
    ] {
        for base in [0, 1] {
            for (mode, fields) in [
                (Granularity::Split, PacketFields::Whole),
                (Granularity::Each, PacketFields::Whole),
                (Granularity::Each, PacketFields::Packet),
            ] {
                variants.push(PacketOptions {
                    size,
                    base,
                    mode,
                    fields,
                });
            }
        }
    }
    // 1023 and 2047: split into 1024-byte packets, the last one full;
    // 4096 and 8192: each in 4096-byte pieces, the last one full; 4000
    // and 8000 the same for 4000.
    let lens = [
        0, 1, 15, 16, 1000, 1023, 2047, 4000, 4096, 8000, 8192, 10_000,
    ];
    for packets in variants {
        for len in lens {
            let data = content(len);
            let mut pair = Pair::new(rev, MemoryStore::new(), Faults::default());
            let c = client(rev, "kate", &data, None, packets);
            let total = c.packet_plan().expect("2024 plan").total;
            let (outcome, identity) = pair.run(c, &data);
            assert!(
                matches!(outcome, Outcome::Verified { attempts: 1, .. }),
                "{rev} {packets:?} {len}: {outcome:?}"
            );
            assert_eq!(
                stored(&pair, identity.unwrap().client_id),
                Some(&data[..]),
                "{rev} {packets:?} {len}"
            );
            assert_eq!(
                pair.packets_sent,
                usize::from(total),
                "{rev} {packets:?} {len}"
            );
        }
    }
}

#[test]
fn every_packet_variant_reaches_a_2024a_server_intact() {
    every_packet_variant(Revision::R2024a);
}

#[test]
fn every_packet_variant_reaches_a_2024c_server_intact() {
    every_packet_variant(Revision::R2024c);
}

#[test]
fn packet_variants_survive_crc_mismatches_and_give_up() {
    for mode in [Granularity::Split, Granularity::Each] {
        let packets = PacketOptions {
            size: Some(1024),
            base: 0,
            mode,
            ..PacketOptions::default()
        };
        let data = content(5000);
        for (corrupt, verified) in [(1, true), (4, false)] {
            let faults = Faults {
                corrupt_crc: corrupt,
                ..Faults::default()
            };
            let mut pair = Pair::new(Revision::R2024c, MemoryStore::new(), faults);
            let c = client(Revision::R2024c, "lena", &data, None, packets);
            let (outcome, identity) = pair.run(c, &data);
            assert_eq!(outcome.is_success(), verified, "{mode}: {outcome:?}");
            let id = identity.unwrap().client_id;
            assert_eq!(stored(&pair, id).is_some(), verified, "{mode}");
            assert_eq!(pair.store.pending_count(), 0);
        }
    }
}

#[test]
fn a_server_of_another_revision_is_named_not_misread() {
    // (client, what the server is fixed to, the revision named)
    for (ours, theirs) in [
        (Revision::R2023c, Revision::R2024a),
        (Revision::R2024a, Revision::R2023c),
    ] {
        let data = content(10);
        let mut pair = Pair::with_server(
            ours,
            RevisionChoice::Fixed(theirs),
            MemoryStore::new(),
            Faults::default(),
        );
        let c = client(ours, "mike", &data, None, PacketOptions::default());
        let (outcome, _) = pair.run(c, &data);
        let Outcome::ProtocolViolation(v) = &outcome else {
            panic!("{ours} against {theirs}: {outcome:?}");
        };
        assert!(
            matches!(v, Violation::ForeignRevision { theirs: t, .. } if t.first() == Some(&theirs)),
            "{v:?}"
        );
        assert!(
            v.to_string().contains(&format!("seems to speak {theirs}")),
            "{v}"
        );
        assert_eq!(pair.requests_seen, [1025], "nothing after the first answer");
    }
}

#[test]
fn clients_of_every_revision_share_one_store() {
    // One database for all revisions: a client registered over 2023c is
    // the same client over 2024a (same request codes, a 2024a listener),
    // 2024c and 2023a.
    let mut store = MemoryStore::new();
    let data = content(3000);
    let mut pair = Pair::new(Revision::R2023c, store, Faults::default());
    let c = client(
        Revision::R2023c,
        "nina",
        &data,
        None,
        PacketOptions::default(),
    );
    let (_, mut identity) = pair.run(c, &data);
    let id = identity.as_ref().unwrap().client_id;
    store = pair.store;
    for rev in [
        Revision::R2024a,
        Revision::R2024c,
        Revision::R2023a,
        Revision::R2022c,
    ] {
        let newer = content(3000 + rev as usize);
        let mut pair = Pair::new(rev, store, Faults::default());
        let c = client(rev, "nina", &newer, identity, PacketOptions::default());
        let (outcome, back) = pair.run(c, &newer);
        assert!(outcome.is_success(), "{rev}: {outcome:?}");
        assert_eq!(back.as_ref().unwrap().client_id, id, "{rev}");
        assert_eq!(stored(&pair, id), Some(&newer[..]), "{rev}");
        identity = back;
        store = pair.store;
    }
}
