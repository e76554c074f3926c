//! What the server-session suites share: the golden vectors and the vector
//! client "alice" in a store.

use sealdrop_protocol::consts::PUBLIC_KEY_LEN;
use sealdrop_protocol::crypto::AesKey;
use sealdrop_protocol::memstore::MemoryStore;
use sealdrop_protocol::store::ClientRecord;
use sealdrop_protocol::ClientId;

/// A file of fixtures/vectors (origin: fixtures/vectors/ORIGIN.md).
pub fn vector(name: &str) -> Vec<u8> {
    let path = format!("{}/../fixtures/vectors/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The vector client's id.
pub fn alice_id() -> ClientId {
    ClientId(vector("client_id.bin").try_into().unwrap())
}

/// `store` holding the vector client "alice" after key exchange, with the
/// vector AES key as her last key.
pub fn with_alice(mut store: MemoryStore) -> MemoryStore {
    let spki: [u8; PUBLIC_KEY_LEN] = vector("rsa1024_public_spki.der").try_into().unwrap();
    store.clients.insert(
        alice_id(),
        ClientRecord {
            id: alice_id(),
            name: "alice".into(),
            public_key: Some(Box::new(spki)),
            last_key: AesKey::from_slice(&vector("aes_key.bin")),
        },
    );
    store
}
