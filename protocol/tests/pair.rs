//! Pair tests: a real ClientSession against real ServerSessions over an
//! in-memory link, with a fake clock and the in-memory store. A middlebox
//! in the link injects the faults other peers produce (wrong cksums, 2107,
//! stray 2104, closing after every response), covering every flow of
//! PROTOCOL.md §6.

use std::collections::VecDeque;
use std::time::Instant;

use sealdrop_protocol::client::{Action, ClientConfig, ClientSession, FileSpec, Identity, Outcome};
use sealdrop_protocol::crypto::{RsaPrivateKey, TestEntropy};
use sealdrop_protocol::memstore::MemoryStore;
use sealdrop_protocol::server::{ServerConfig, ServerSession};
use sealdrop_protocol::store::Store;
use sealdrop_protocol::{ClientId, Response, ResponseDecoder, Revision};

type Server = ServerSession<<MemoryStore as Store>::Upload>;

fn vector_key() -> RsaPrivateKey {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../fixtures/vectors/rsa1024_private_pkcs8.der"
    );
    RsaPrivateKey::from_der(&std::fs::read(path).unwrap()).unwrap()
}

/// Faults the link injects.
#[derive(Default, Clone)]
struct Faults {
    /// The first N 2103s carry a wrong cksum.
    corrupt_crc: u32,
    /// The first N requests are answered 2107 without reaching the server.
    error_first: u32,
    /// The server closes the connection after every response.
    close_after_response: bool,
    /// A 2104 is injected after every 1030.
    stray_ack_after_1030: bool,
}

struct Pair {
    store: MemoryStore,
    server: Option<Server>,
    rng: TestEntropy,
    now: Instant,
    faults: Faults,
    responses: VecDeque<Response>,
    connections: u32,
    requests_seen: Vec<u16>,
}

impl Pair {
    fn new(store: MemoryStore, faults: Faults) -> Self {
        Pair {
            store,
            server: None,
            rng: TestEntropy::new(42),
            now: Instant::now(),
            faults,
            responses: VecDeque::new(),
            connections: 0,
            requests_seen: Vec::new(),
        }
    }

    fn connect(&mut self) {
        self.disconnect();
        self.connections += 1;
        self.server = Some(ServerSession::new(
            ServerConfig::default(),
            self.connections as u64,
            self.now,
        ));
    }

    fn disconnect(&mut self) {
        if let Some(mut s) = self.server.take() {
            s.close(self.now, &mut self.store);
        }
        self.responses.clear();
    }

    /// Delivers request bytes to the server (through the middlebox).
    fn deliver(&mut self, bytes: &[u8]) {
        self.deliver_part(bytes, false)
    }

    /// Delivers bytes; `content` marks file content, which is no request.
    fn deliver_part(&mut self, bytes: &[u8], content: bool) {
        if bytes.len() >= 23 && !content {
            let code = u16::from_le_bytes([bytes[17], bytes[18]]);
            self.requests_seen.push(code);
            if self.faults.error_first > 0 {
                self.faults.error_first -= 1;
                self.responses.push_back(Response::GeneralError);
                return;
            }
            if code == 1030 && self.faults.stray_ack_after_1030 {
                let id = ClientId(bytes[..16].try_into().unwrap());
                self.responses.push_back(Response::Ack { client_id: id });
            }
        }
        let Some(server) = self.server.as_mut() else {
            return;
        };
        let mut input = bytes;
        while !input.is_empty() && server.wants_input() {
            server.handle_input(&mut input, self.now, &mut self.store, &mut self.rng);
        }
        let out = server.pending_output().to_vec();
        server.consume_output(out.len(), self.now);
        let mut d = ResponseDecoder::new(Revision::R2023c);
        let mut rest = &out[..];
        while let Some(mut r) = d.decode(&mut rest).expect("server output decodes") {
            if let Response::FileReceived { cksum, .. } = &mut r {
                if self.faults.corrupt_crc > 0 {
                    self.faults.corrupt_crc -= 1;
                    *cksum ^= 0xFFFF_FFFF;
                }
            }
            self.responses.push_back(r);
        }
    }

    /// Runs a client to its outcome.
    fn run(&mut self, mut client: ClientSession, content: &[u8]) -> (Outcome, Option<Identity>) {
        let mut closed = false;
        for _ in 0..10_000 {
            match client.poll_action() {
                Some(Action::Connect { delay }) => {
                    self.now += delay;
                    self.connect();
                    closed = false;
                    client.handle_connected();
                }
                Some(Action::Send(bytes)) => self.deliver(&bytes),
                Some(Action::SendFile(upload)) => {
                    let mut upload = *upload;
                    self.deliver(&upload.header);
                    let mut out = Vec::new();
                    for piece in content.chunks(4096) {
                        out.clear();
                        upload.sender.push(piece, &mut out).unwrap();
                        self.deliver_part(&out, true);
                    }
                    out.clear();
                    let cksum = upload.sender.finish(&mut out).unwrap();
                    self.deliver_part(&out, true);
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
                    Some(r) => {
                        client.handle_response(r, &mut self.rng);
                        if self.faults.close_after_response && self.responses.is_empty() {
                            self.disconnect();
                            closed = true;
                        }
                    }
                    None if closed || self.server.is_none() => {
                        client.handle_connection_lost(self.now)
                    }
                    None => panic!("client waits for a response the server never sends"),
                },
            }
            while client.poll_event().is_some() {}
        }
        panic!("session did not finish");
    }
}

fn client(name: &str, content: &[u8], identity: Option<Identity>) -> ClientSession {
    ClientSession::new(ClientConfig {
        revision: Revision::R2023c,
        name: name.into(),
        files: vec![FileSpec {
            name: "report.pdf".into(),
            plain_len: content.len() as u64,
        }],
        identity,
        packets: Default::default(),
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

#[test]
fn new_client_registers_and_uploads() {
    for len in [0, 1, 15, 16, 17, 1000, 70_000] {
        let data = content(len);
        let mut pair = Pair::new(MemoryStore::new(), Faults::default());
        let (outcome, identity) = pair.run(client("alice", &data, None), &data);
        assert!(
            matches!(outcome, Outcome::Verified { attempts: 1, .. }),
            "{len}: {outcome:?}"
        );
        let id = identity.expect("identity after key exchange").client_id;
        assert_eq!(stored(&pair, id), Some(&data[..]), "len {len}");
        assert_eq!(pair.requests_seen, [1025, 1026, 1028, 1029]);
        assert_eq!(pair.connections, 1);
    }
}

#[test]
fn returning_client_reconnects() {
    let data = content(5000);
    let mut pair = Pair::new(MemoryStore::new(), Faults::default());
    let (_, identity) = pair.run(client("bob", &data, None), &data);
    let id = identity.as_ref().unwrap().client_id;
    pair.requests_seen.clear();
    let newer = content(7000);
    let (outcome, _) = pair.run(client("bob", &newer, identity), &newer);
    assert!(outcome.is_success(), "{outcome:?}");
    assert_eq!(pair.requests_seen, [1027, 1028, 1029]);
    assert_eq!(stored(&pair, id), Some(&newer[..]));
}

#[test]
fn denied_reconnect_registers_again() {
    let data = content(100);
    let mut first = Pair::new(MemoryStore::new(), Faults::default());
    let (_, identity) = first.run(client("carol", &data, None), &data);
    // A server that never saw carol (a fresh database).
    let mut pair = Pair::new(MemoryStore::new(), Faults::default());
    let (outcome, identity) = pair.run(client("carol", &data, identity), &data);
    assert!(outcome.is_success(), "{outcome:?}");
    assert_eq!(pair.requests_seen, [1027, 1025, 1026, 1028, 1029]);
    assert_eq!(stored(&pair, identity.unwrap().client_id), Some(&data[..]));
}

#[test]
fn one_crc_mismatch_resends_once() {
    let data = content(3000);
    let faults = Faults {
        corrupt_crc: 1,
        ..Faults::default()
    };
    let mut pair = Pair::new(MemoryStore::new(), faults);
    let (outcome, identity) = pair.run(client("dave", &data, None), &data);
    assert!(
        matches!(outcome, Outcome::Verified { attempts: 2, .. }),
        "{outcome:?}"
    );
    assert_eq!(pair.requests_seen, [1025, 1026, 1028, 1030, 1028, 1029]);
    assert_eq!(stored(&pair, identity.unwrap().client_id), Some(&data[..]));
    assert_eq!(pair.store.pending_count(), 0);
}

#[test]
fn four_mismatches_give_up_with_1031_and_store_nothing() {
    let data = content(3000);
    let faults = Faults {
        corrupt_crc: 4,
        ..Faults::default()
    };
    let mut pair = Pair::new(MemoryStore::new(), faults);
    let (outcome, identity) = pair.run(client("erin", &data, None), &data);
    assert!(
        matches!(outcome, Outcome::CrcFailed { attempts: 4, .. }),
        "{outcome:?}"
    );
    assert_eq!(
        pair.requests_seen,
        [1025, 1026, 1028, 1030, 1028, 1030, 1028, 1030, 1028, 1031]
    );
    assert_eq!(stored(&pair, identity.unwrap().client_id), None);
    assert_eq!(pair.store.pending_count(), 0);
}

#[test]
fn three_server_errors_are_retried_four_are_not() {
    let data = content(10);
    let faults = Faults {
        error_first: 3,
        ..Faults::default()
    };
    let mut pair = Pair::new(MemoryStore::new(), faults);
    let (outcome, _) = pair.run(client("fred", &data, None), &data);
    assert!(outcome.is_success(), "{outcome:?}");
    assert_eq!(pair.requests_seen[..4], [1025, 1025, 1025, 1025]);

    let faults = Faults {
        error_first: 4,
        ..Faults::default()
    };
    let mut pair = Pair::new(MemoryStore::new(), faults);
    let (outcome, _) = pair.run(client("fred", &data, None), &data);
    assert!(
        matches!(outcome, Outcome::ServerError { .. }),
        "{outcome:?}"
    );
    assert_eq!(pair.requests_seen, [1025, 1025, 1025, 1025]);
}

#[test]
fn taken_name_fails_registration() {
    let data = content(10);
    let mut pair = Pair::new(MemoryStore::new(), Faults::default());
    pair.run(client("gina", &data, None), &data);
    let (outcome, _) = pair.run(client("gina", &data, None), &data);
    assert!(
        matches!(outcome, Outcome::RegistrationFailed { .. }),
        "{outcome:?}"
    );
}

#[test]
fn server_closing_after_every_response_still_verifies() {
    // Each step then runs on its own connection: the 1028 must find the
    // client's last key in the store (§6 "keys").
    let data = content(2000);
    let faults = Faults {
        close_after_response: true,
        corrupt_crc: 1,
        ..Faults::default()
    };
    let mut pair = Pair::new(MemoryStore::new(), faults);
    let (outcome, identity) = pair.run(client("hank", &data, None), &data);
    assert!(outcome.is_success(), "{outcome:?}");
    assert!(pair.connections >= 4, "{} connections", pair.connections);
    assert_eq!(stored(&pair, identity.unwrap().client_id), Some(&data[..]));
}

#[test]
fn stray_2104_after_1030_is_skipped() {
    let data = content(2000);
    let faults = Faults {
        corrupt_crc: 2,
        stray_ack_after_1030: true,
        ..Faults::default()
    };
    let mut pair = Pair::new(MemoryStore::new(), faults);
    let (outcome, _) = pair.run(client("iris", &data, None), &data);
    assert!(
        matches!(outcome, Outcome::Verified { attempts: 3, .. }),
        "{outcome:?}"
    );
}

#[test]
fn two_sessions_of_one_client_do_not_disturb_each_other() {
    // Two connections of the same client interleave their uploads of one
    // name; each is verified with its own key, and the stored file is one
    // of the two contents, whole.
    let first = content(4000);
    let mut pair = Pair::new(MemoryStore::new(), Faults::default());
    let (_, identity) = pair.run(client("jack", &first, None), &first);
    let identity = identity.unwrap();
    let id = identity.client_id;
    let clone = |i: &Identity| Identity {
        name: i.name.clone(),
        client_id: i.client_id,
        key: i.key.clone(),
    };
    let a = content(3000);
    let b: Vec<u8> = content(3500).iter().map(|x| x ^ 0x5a).collect();
    let mut ca = client("jack", &a, Some(clone(&identity)));
    let mut cb = client("jack", &b, Some(clone(&identity)));
    let now = Instant::now();
    let mut sa: Server = ServerSession::new(ServerConfig::default(), 1, now);
    let mut sb: Server = ServerSession::new(ServerConfig::default(), 2, now);
    let mut rng = TestEntropy::new(9);
    let mut done = [None, None];
    for _ in 0..200 {
        for (i, (c, s, data)) in [(&mut ca, &mut sa, &a), (&mut cb, &mut sb, &b)]
            .into_iter()
            .enumerate()
        {
            if done[i].is_some() {
                continue;
            }
            step_one(c, s, data, &mut pair.store, &mut rng, &mut done[i]);
        }
        if done.iter().all(Option::is_some) {
            break;
        }
    }
    assert!(
        done.iter()
            .all(|o| o.as_ref().is_some_and(Outcome::is_success)),
        "{done:?}"
    );
    let got = stored(&pair, id).unwrap();
    assert!(got == &a[..] || got == &b[..], "stored file is a mix");
}

/// One action of a client against its own server session.
fn step_one(
    c: &mut ClientSession,
    s: &mut Server,
    data: &[u8],
    store: &mut MemoryStore,
    rng: &mut TestEntropy,
    done: &mut Option<Outcome>,
) {
    let now = Instant::now();
    let feed = |s: &mut Server, bytes: &[u8], store: &mut MemoryStore, rng: &mut TestEntropy| {
        let mut input = bytes;
        s.handle_input(&mut input, now, store, rng);
        assert!(input.is_empty());
    };
    match c.poll_action() {
        Some(Action::Connect { .. }) => c.handle_connected(),
        Some(Action::Send(bytes)) => feed(s, &bytes, store, rng),
        Some(Action::SendFile(upload)) => {
            let mut upload = *upload;
            feed(s, &upload.header, store, rng);
            let mut out = Vec::new();
            upload.sender.push(data, &mut out).unwrap();
            let cksum = upload.sender.finish(&mut out).unwrap();
            feed(s, &out, store, rng);
            c.handle_file_sent(cksum);
        }
        Some(Action::GenerateKeyPair) => c.handle_key_pair(vector_key()).unwrap(),
        Some(Action::Done(o)) => *done = Some(o),
        None => {
            let out = s.pending_output().to_vec();
            s.consume_output(out.len(), now);
            let mut d = ResponseDecoder::new(Revision::R2023c);
            let mut rest = &out[..];
            while let Some(r) = d.decode(&mut rest).unwrap() {
                c.handle_response(r, rng);
            }
        }
    }
    while c.poll_event().is_some() {}
}
