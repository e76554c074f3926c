//! Quotas and an administrator's changes, through a [`ServerSession`] and
//! the in-memory store: an upload over a quota is refused with 2107 before
//! its content is stored (at, just under and over each limit, a
//! replacement counted by its difference), and a client forgotten or a file
//! deleted while an upload is in flight ends in a refusal that leaves
//! nothing stored.

use std::time::Instant;

use sealdrop_protocol::consts::*;
use sealdrop_protocol::crypto::{cbc_encrypt, AesKey, TestEntropy};
use sealdrop_protocol::memstore::MemoryStore;
use sealdrop_protocol::server::{ServerConfig, ServerSession};
use sealdrop_protocol::store::{
    ClientRecord, Ctx, Quota, QuotaLimit, QuotaOverride, QuotaSetting, Store, StoreError,
};
use sealdrop_protocol::{ClientId, Response, ResponseDecoder, Revision};

type Session = ServerSession<<MemoryStore as Store>::Upload>;

const ALICE: ClientId = ClientId([0xa1; 16]);
const BOB: ClientId = ClientId([0xb0; 16]);

fn key() -> AesKey {
    AesKey::from_bytes([0x42; 16])
}

fn store_with_alice_and_bob() -> MemoryStore {
    let mut store = MemoryStore::new();
    for (id, name) in [(ALICE, "alice"), (BOB, "bob")] {
        store.clients.insert(
            id,
            ClientRecord {
                id,
                name: name.into(),
                public_key: Some(Box::new([1; PUBLIC_KEY_LEN])),
                last_key: Some(key()),
            },
        );
    }
    store
}

fn header(id: &ClientId, code: u16, size: u32) -> Vec<u8> {
    let mut h = id.0.to_vec();
    h.push(3);
    h.extend_from_slice(&code.to_le_bytes());
    h.extend_from_slice(&size.to_le_bytes());
    h
}

fn name_field(name: &str) -> [u8; NAME_LEN] {
    let mut field = [0u8; NAME_LEN];
    field[..name.len()].copy_from_slice(name.as_bytes());
    field
}

/// A 1028 of `plain` as `name` from `id`, under the stored key.
fn file_frame(id: &ClientId, name: &str, plain: &[u8]) -> Vec<u8> {
    let content = cbc_encrypt(&key(), plain);
    let mut f = header(id, 1028, (259 + content.len()) as u32);
    f.extend_from_slice(&(content.len() as u32).to_le_bytes());
    f.extend_from_slice(&name_field(name));
    f.extend_from_slice(&content);
    f
}

fn verdict_frame(id: &ClientId, code: u16, name: &str) -> Vec<u8> {
    let mut f = header(id, code, NAME_LEN as u32);
    f.extend_from_slice(&name_field(name));
    f
}

struct Harness {
    session: Session,
    store: MemoryStore,
    rng: TestEntropy,
    now: Instant,
}

impl Harness {
    fn new(store: MemoryStore) -> Self {
        let now = Instant::now();
        Harness {
            session: ServerSession::new(ServerConfig::default(), 1, now),
            store,
            rng: TestEntropy::new(7),
            now,
        }
    }

    /// Feeds `bytes`; the response codes the session wrote.
    fn feed(&mut self, bytes: &[u8]) -> Vec<u16> {
        let mut input = bytes;
        while !input.is_empty() && self.session.wants_input() {
            self.session
                .handle_input(&mut input, self.now, &mut self.store, &mut self.rng);
        }
        let out = self.session.pending_output().to_vec();
        self.session.consume_output(out.len(), self.now);
        let mut d = ResponseDecoder::new(Revision::R2023c);
        let mut rest = &out[..];
        let mut codes = Vec::new();
        while let Some(r) = d.decode(&mut rest).expect("server output decodes") {
            codes.push(code_of(&r));
        }
        codes
    }

    /// 1028 then 1029 of `plain` as `name` for alice: the codes answered.
    fn upload(&mut self, name: &str, plain: &[u8]) -> Vec<u16> {
        let mut codes = self.feed(&file_frame(&ALICE, name, plain));
        if codes == [2103] {
            codes.extend(self.feed(&verdict_frame(&ALICE, 1029, name)));
        }
        codes
    }

    fn stored(&self, name: &str) -> Option<Vec<u8>> {
        self.store
            .files
            .get(&(ALICE, name.to_owned()))
            .filter(|f| f.verified)
            .map(|f| f.bytes.clone())
    }

    fn cx(&self) -> Ctx {
        Ctx {
            conn: 0,
            now: self.now,
        }
    }
}

fn code_of(r: &Response) -> u16 {
    match r {
        Response::Registered { .. } => 2100,
        Response::RegistrationFailed => 2101,
        Response::KeyAccepted { .. } => 2102,
        Response::FileReceived { .. } => 2103,
        Response::Ack { .. } => 2104,
        Response::ReconnectAccepted { .. } => 2105,
        Response::ReconnectDenied { .. } => 2106,
        Response::GeneralError => 2107,
    }
}

fn bytes_quota(max: u64) -> MemoryStore {
    let mut store = store_with_alice_and_bob();
    store.quota = Quota {
        max_bytes: Some(max),
        max_files: None,
    };
    store
}

fn files_quota(max: u64) -> MemoryStore {
    let mut store = store_with_alice_and_bob();
    store.quota = Quota {
        max_bytes: None,
        max_files: Some(max),
    };
    store
}

#[test]
fn a_bytes_quota_takes_uploads_up_to_exactly_the_limit_and_refuses_one_byte_more() {
    let mut h = Harness::new(bytes_quota(100));
    assert_eq!(h.upload("a", &[1; 60]), [2103, 2104]);
    // Just under: 99 of 100.
    assert_eq!(h.upload("b", &[2; 39]), [2103, 2104]);
    // One byte more than is left, then exactly what is left.
    assert_eq!(h.upload("c", &[3; 2]), [2107]);
    assert_eq!(h.stored("c"), None);
    assert_eq!(h.upload("c", &[3; 1]), [2103, 2104]);
    assert_eq!(h.store.usage(&ALICE).bytes, 100);
    // Full: nothing more, not even one byte; bob's own quota is untouched.
    assert_eq!(h.upload("d", &[4; 1]), [2107]);
    assert_eq!(h.store.quota_refusals, 2);
    assert_eq!(h.stored("a"), Some(vec![1; 60]));
    assert_eq!(h.stored("b"), Some(vec![2; 39]));
    assert!(h.session.wants_input(), "the connection stays");
}

#[test]
fn a_replacement_counts_only_its_difference_and_one_over_leaves_the_old_file() {
    let mut h = Harness::new(bytes_quota(100));
    assert_eq!(h.upload("a", &[1; 60]), [2103, 2104]);
    assert_eq!(h.upload("b", &[2; 40]), [2103, 2104]);
    // Replacing a's 60 bytes by 60 others: at the limit.
    assert_eq!(h.upload("a", &[5; 60]), [2103, 2104]);
    // By 59: just under.
    assert_eq!(h.upload("a", &[6; 59]), [2103, 2104]);
    // By 61: over by one; the stored 59 bytes stay.
    assert_eq!(h.upload("a", &[7; 61]), [2107]);
    assert_eq!(h.stored("a"), Some(vec![6; 59]));
    assert_eq!(h.store.usage(&ALICE).bytes, 99);
}

#[test]
fn an_upload_over_the_bytes_quota_is_refused_at_its_header_before_any_content_is_stored() {
    let mut h = Harness::new(bytes_quota(100));
    // 160 encrypted bytes decrypt to at least 144: over before any content.
    let frame = file_frame(&ALICE, "big", &[9; 150]);
    assert_eq!(h.feed(&frame[..23 + 259 + 16]), Vec::<u16>::new());
    assert_eq!(h.store.open_uploads, 0, "no upload was begun");
    assert_eq!(h.store.quota_refusals, 1);
    assert_eq!(h.feed(&frame[23 + 259 + 16..]), [2107]);
    assert_eq!(h.store.pending_count(), 0);
    assert_eq!(h.stored("big"), None);
}

#[test]
fn content_that_may_fit_is_checked_again_with_its_exact_size() {
    // 112 encrypted bytes may hold 96 plaintext bytes, which fit in 100:
    // the header passes, and the exact 101 bytes are refused at the end.
    let mut h = Harness::new(bytes_quota(100));
    assert_eq!(h.upload("x", &[1; 101]), [2107]);
    assert_eq!(h.store.pending_count(), 0);
    assert_eq!(h.store.open_uploads, 0);
    assert_eq!(h.stored("x"), None);
    assert_eq!(h.upload("x", &[1; 100]), [2103, 2104]);
}

#[test]
fn a_files_quota_takes_files_up_to_the_limit_and_replacements_beyond_it() {
    let mut h = Harness::new(files_quota(2));
    assert_eq!(h.upload("one", b"1"), [2103, 2104]);
    // Just under, then at the limit.
    assert_eq!(h.upload("two", b"2"), [2103, 2104]);
    // Over: a third name.
    assert_eq!(h.upload("three", b"3"), [2107]);
    assert_eq!(h.stored("three"), None);
    // A replacement is not a new file.
    assert_eq!(h.upload("two", b"22"), [2103, 2104]);
    assert_eq!(h.stored("two"), Some(b"22".to_vec()));
    assert_eq!(h.store.usage(&ALICE).files, 2);
    // Bob has a quota of his own.
    let mut bob = h.feed(&file_frame(&BOB, "b", b"b"));
    bob.extend(h.feed(&verdict_frame(&BOB, 1029, "b")));
    assert_eq!(bob, [2103, 2104]);
}

#[test]
fn two_uploads_that_each_fit_cannot_both_be_accepted_past_the_quota() {
    let mut h = Harness::new(files_quota(1));
    assert_eq!(h.feed(&file_frame(&ALICE, "a", b"a")), [2103]);
    assert_eq!(h.feed(&file_frame(&ALICE, "b", b"b")), [2103]);
    assert_eq!(h.feed(&verdict_frame(&ALICE, 1029, "a")), [2104]);
    // b fitted when it arrived; accepting it now would make two files.
    assert_eq!(h.feed(&verdict_frame(&ALICE, 1029, "b")), [2107]);
    assert_eq!(h.stored("b"), None);
    assert_eq!(h.store.pending_count(), 0);
}

#[test]
fn a_clients_own_quota_overrides_the_servers_limit_by_limit() {
    let mut h = Harness::new(files_quota(1));
    assert_eq!(h.upload("a", b"a"), [2103, 2104]);
    assert_eq!(h.upload("b", b"b"), [2107]);
    let cx = h.cx();
    let own = QuotaOverride {
        bytes: QuotaSetting::Max(3),
        files: QuotaSetting::Unlimited,
    };
    h.store.set_quota(cx, &ALICE, own).unwrap();
    assert_eq!(h.upload("b", b"b"), [2103, 2104]);
    assert_eq!(h.upload("c", b"cc"), [2107], "1 + 1 + 2 bytes > 3");
    h.store
        .set_quota(cx, &ALICE, QuotaOverride::default())
        .unwrap();
    assert!(h.store.quotas.is_empty());
    assert_eq!(
        h.store.set_quota(cx, &ClientId([9; 16]), own),
        Err(StoreError::NotFound {
            op: "update client",
            what: "no such client"
        })
    );
}

#[test]
fn a_client_forgotten_while_it_uploads_gets_2107_at_the_end_and_nothing_is_stored() {
    let mut h = Harness::new(store_with_alice_and_bob());
    let frame = file_frame(&ALICE, "f", &[7; 4000]);
    assert_eq!(h.feed(&frame[..1000]), Vec::<u16>::new());
    assert_eq!(h.store.open_uploads, 1);
    let cx = h.cx();
    let done = h.store.forget_client(cx, &ALICE, false).unwrap();
    assert_eq!(done.name.as_deref(), Some("alice"));
    assert_eq!(done.uploads_withdrawn, 1);
    assert_eq!(h.feed(&frame[1000..]), [2107]);
    assert_eq!(h.store.open_uploads, 0);
    assert_eq!(h.store.pending_count(), 0);
    assert!(h.store.files.is_empty());
    // The verdict that would follow finds no client.
    assert_eq!(h.feed(&verdict_frame(&ALICE, 1029, "f")), [2107]);
    assert!(h.session.wants_input());
}

#[test]
fn forgetting_keeps_the_stored_files_unless_told_to_delete_them() {
    let mut h = Harness::new(store_with_alice_and_bob());
    assert_eq!(h.upload("kept", b"k"), [2103, 2104]);
    let cx = h.cx();
    let done = h.store.forget_client(cx, &ALICE, false).unwrap();
    assert_eq!(done.files_kept, ["kept"]);
    assert!(!h.store.clients.contains_key(&ALICE));
    assert_eq!(h.stored("kept"), Some(b"k".to_vec()));
    // The files remain under the id; forgetting again deletes them.
    let again = h.store.forget_client(cx, &ALICE, true).unwrap();
    assert_eq!(
        (again.name, again.files_deleted),
        (None, vec!["kept".into()])
    );
    assert_eq!(h.stored("kept"), None);
    assert!(matches!(
        h.store.forget_client(cx, &ALICE, true),
        Err(StoreError::NotFound { .. })
    ));
}

#[test]
fn a_file_deleted_while_its_replacement_awaits_1029_ends_with_2107_and_nothing_stored() {
    let mut h = Harness::new(store_with_alice_and_bob());
    assert_eq!(h.upload("report", b"old"), [2103, 2104]);
    assert_eq!(h.feed(&file_frame(&ALICE, "report", b"new")), [2103]);
    let cx = h.cx();
    let done = h.store.delete_file(cx, &ALICE, "report").unwrap();
    assert!(done.had_record);
    assert_eq!(done.uploads_withdrawn, 1);
    assert_eq!(h.feed(&verdict_frame(&ALICE, 1029, "report")), [2107]);
    assert!(!h.store.files.contains_key(&(ALICE, "report".into())));
    assert_eq!(h.store.pending_count(), 0);
    assert!(matches!(
        h.store.delete_file(cx, &ALICE, "report"),
        Err(StoreError::NotFound { .. })
    ));
}

#[test]
fn deleting_one_file_leaves_the_clients_other_uploads_alone() {
    let mut h = Harness::new(store_with_alice_and_bob());
    let frame = file_frame(&ALICE, "other", &[3; 3000]);
    assert_eq!(h.feed(&frame[..500]), Vec::<u16>::new());
    assert_eq!(h.upload_from_second_connection("gone"), [2103, 2104]);
    let cx = h.cx();
    h.store.delete_file(cx, &ALICE, "gone").unwrap();
    assert_eq!(h.feed(&frame[500..]), [2103]);
    assert_eq!(h.feed(&verdict_frame(&ALICE, 1029, "other")), [2104]);
    assert_eq!(h.stored("other"), Some(vec![3; 3000]));
}

impl Harness {
    /// A whole upload of `name` for alice on a second connection.
    fn upload_from_second_connection(&mut self, name: &str) -> Vec<u16> {
        let mut other = Harness {
            session: ServerSession::new(ServerConfig::default(), 2, self.now),
            store: std::mem::take(&mut self.store),
            rng: TestEntropy::new(8),
            now: self.now,
        };
        let codes = other.upload(name, b"x");
        self.store = other.store;
        codes
    }
}

#[test]
fn quota_refusals_name_the_limit() {
    let mut store = files_quota(0);
    let err = store.check_quota(&ALICE, "x", 1).unwrap_err();
    let StoreError::OverQuota(q) = err else {
        panic!("{err:?}");
    };
    assert_eq!((q.limit, q.max, q.would_be), (QuotaLimit::Files, 0, 1));
    assert!(StoreError::OverQuota(q).to_string().contains("over quota"));
}
