//! A store that answers later (several servers on one database): the
//! session parks a request until the store's reads arrive, and holds each
//! answer until the commit of the batch it depends on, never an earlier
//! one's. Driven with MemoryStore in remote mode, whose round trips finish
//! only when the test says so.

use std::time::Instant;

mod common;

use common::{alice_id, vector, with_alice};
use sealdrop_protocol::crypto::TestEntropy;
use sealdrop_protocol::memstore::MemoryStore;
use sealdrop_protocol::message::Request;
use sealdrop_protocol::server::{ServerConfig, ServerSession};
use sealdrop_protocol::store::Store;
use sealdrop_protocol::wire::FixedName;
use sealdrop_protocol::{ClientId, Response, ResponseDecoder, Revision};

type Session = ServerSession<<MemoryStore as Store>::Upload>;

/// A remote store holding the vector client "alice" after key exchange.
fn remote_alice() -> MemoryStore {
    with_alice(MemoryStore::remote())
}

struct Server {
    session: Session,
    store: MemoryStore,
    rng: TestEntropy,
    now: Instant,
    /// Bytes received and not taken yet (a parked session takes none).
    input: Vec<u8>,
    /// Everything released to the socket.
    wire: Vec<u8>,
}

impl Server {
    fn new(store: MemoryStore) -> Server {
        let now = Instant::now();
        Server {
            session: ServerSession::new(ServerConfig::default(), 1, now),
            store,
            rng: TestEntropy::new(3),
            now,
            input: Vec::new(),
            wire: Vec::new(),
        }
    }

    /// One pass of a driver: take input, let ready reads decide parked
    /// requests, start a commit if none is in flight, relay a finished one,
    /// and write what is released.
    fn pass(&mut self) {
        for conn in self.store.take_ready() {
            assert_eq!(conn, self.session.conn());
            self.session
                .handle_store_ready(self.now, &mut self.store, &mut self.rng);
        }
        let mut input = &self.input[..];
        while !input.is_empty() && self.session.wants_input() {
            let before = input.len();
            self.session
                .handle_input(&mut input, self.now, &mut self.store, &mut self.rng);
            if input.len() == before {
                break;
            }
        }
        let taken = self.input.len() - input.len();
        self.input.drain(..taken);
        if let Some(commit) = self.store.poll_commit() {
            self.session.handle_commit_of(&commit, &mut self.store);
        }
        if self.store.uncommitted() && !self.store.commit_in_flight() {
            if let Some(commit) = self.store.begin_commit(self.now) {
                self.session.handle_commit_of(&commit, &mut self.store);
            }
        }
        let out = self.session.pending_output().to_vec();
        self.session.consume_output(out.len(), self.now);
        self.wire.extend_from_slice(&out);
    }

    fn send(&mut self, bytes: &[u8]) {
        self.input.extend_from_slice(bytes);
        self.pass();
    }

    fn take_wire(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.wire)
    }
}

fn responses(bytes: &[u8]) -> Vec<Response> {
    let mut d = ResponseDecoder::new(Revision::R2023c);
    let mut input = bytes;
    let mut out = Vec::new();
    while let Some(r) = d.decode(&mut input).expect("server output decodes") {
        out.push(r);
    }
    assert!(input.is_empty());
    out
}

fn register(name: &str) -> Vec<u8> {
    let mut frame = Vec::new();
    Request::Register {
        name: FixedName::new(name.as_bytes()).unwrap(),
    }
    .encode(Revision::R2023c, &ClientId::ZERO, &mut frame);
    frame
}

#[test]
fn an_upload_waits_for_its_read_and_its_verdict_for_its_commit() {
    let mut s = Server::new(remote_alice());
    let file = vector("request_1028.bin");
    s.send(&file);
    // The header is taken, the content is not: the request is parked.
    assert!(s.session.is_parked());
    assert!(!s.session.wants_input());
    assert!(s.input.len() < file.len() && !s.input.is_empty());
    assert!(s.take_wire().is_empty());
    assert!(s.store.reads_awaited());

    s.store.deliver_reads();
    s.pass();
    assert!(!s.session.is_parked());
    // LastSeen was updated: the 2103 waits for that commit.
    assert!(s.take_wire().is_empty());
    s.store.finish_commit(s.now);
    s.pass();
    assert_eq!(s.take_wire(), vector("response_2103.bin"));

    // 1029: the record is fresh for this connection, no second read; the
    // 2104 waits for the commit that stores the file.
    s.send(&vector("request_1029.bin"));
    assert_eq!(s.store.read_trips, 1);
    assert!(s.store.commit_in_flight());
    assert!(s.session.holds_output());
    s.pass();
    assert!(s.take_wire().is_empty(), "not before its commit");
    s.store.finish_commit(s.now);
    s.pass();
    assert_eq!(s.take_wire(), vector("response_2104.bin"));
    let key = (alice_id(), "plain_1000.bin".to_string());
    assert!(s.store.files[&key].verified);
    assert_eq!(s.store.files[&key].bytes, vector("plain_1000.bin"));
}

#[test]
fn an_answer_waits_for_its_own_batch_not_an_earlier_one() {
    let mut s = Server::new(remote_alice());
    // bob registers: his 2100 joins batch 1, which goes in flight.
    s.send(&register("bob"));
    s.store.deliver_reads();
    s.pass();
    assert!(s.store.commit_in_flight());
    assert!(s.take_wire().is_empty());
    // alice's upload and verdict on the same connection meanwhile: they
    // change records too, so they join batch 2.
    s.send(&vector("request_1028.bin"));
    s.store.deliver_reads();
    s.pass();
    s.send(&vector("request_1029.bin"));
    assert!(s.take_wire().is_empty());

    // Batch 1 durable: bob's 2100 goes, alice's answers (batch 2) do not.
    s.store.finish_commit(s.now);
    s.pass();
    let out = responses(&s.take_wire());
    assert!(matches!(out[..], [Response::Registered { .. }]), "{out:?}");
    assert!(s.session.holds_output());
    assert!(
        s.store.commit_in_flight(),
        "batch 2 started once batch 1 was back"
    );

    s.store.finish_commit(s.now);
    s.pass();
    assert_eq!(
        s.take_wire(),
        [vector("response_2103.bin"), vector("response_2104.bin")].concat()
    );
    assert!(!s.session.holds_output());
}

#[test]
fn a_failed_commit_in_flight_withdraws_its_answers_and_fails_the_batch_built_on_it() {
    let mut s = Server::new(remote_alice());
    s.send(&register("bob"));
    s.store.deliver_reads();
    s.pass();
    assert!(s.store.commit_in_flight());
    s.store.fail_commit = true;
    s.store.finish_commit(s.now);
    s.store.fail_commit = false;
    s.pass();
    let out = responses(&s.take_wire());
    assert_eq!(out, [Response::GeneralError]);
    assert!(s.session.close_reason().is_some());
    assert!(
        !s.store.clients.values().any(|c| c.name == "bob"),
        "the failed batch left nothing"
    );
}

#[test]
fn a_parked_request_of_a_closed_connection_is_dropped() {
    let mut s = Server::new(remote_alice());
    s.send(&register("carol"));
    assert!(s.session.is_parked());
    s.session.handle_eof(&mut s.store);
    assert!(!s.session.is_parked());
    s.store.deliver_reads();
    s.pass();
    assert!(s.take_wire().is_empty());
    assert!(!s.store.clients.values().any(|c| c.name == "carol"));
    s.session.close(s.now, &mut s.store);
}

#[test]
fn a_store_that_answers_at_once_never_parks() {
    let mut store = MemoryStore::new();
    store.group_commit = true;
    let mut s = Server::new(store);
    s.send(&register("dave"));
    assert!(!s.session.is_parked());
    assert_eq!(responses(&s.take_wire()).len(), 1);
}
