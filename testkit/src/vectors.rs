//! The golden vectors of `fixtures/vectors` (see its README and
//! ORIGIN.md): frames, keys and files of one recorded session.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use sealdrop_protocol::consts::PUBLIC_KEY_LEN;
use sealdrop_protocol::crypto::RsaPrivateKey;
use sealdrop_protocol::ClientId;

/// The folder holding the vectors.
pub const VECTORS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures/vectors");

/// Path of a golden vector file.
pub fn vector_path(name: &str) -> PathBuf {
    Path::new(VECTORS).join(name)
}

/// Bytes of a golden vector file.
pub fn vector(name: &str) -> Vec<u8> {
    let p = vector_path(name);
    std::fs::read(&p).unwrap_or_else(|e| panic!("cannot read vector {}: {e}", p.display()))
}

/// The vector client's id (`client_id.bin`).
pub fn vector_client_id() -> ClientId {
    let b = vector("client_id.bin");
    ClientId(b.try_into().expect("client_id.bin is 16 bytes"))
}

/// The vector RSA key, parsed once per process and shared: RSA in debug
/// builds is slow enough that every test should reuse it.
pub fn shared_vector_key() -> Arc<RsaPrivateKey> {
    static KEY: OnceLock<Arc<RsaPrivateKey>> = OnceLock::new();
    KEY.get_or_init(|| {
        Arc::new(
            RsaPrivateKey::from_pkcs8_der(&vector("rsa1024_private_pkcs8.der"))
                .expect("vector private key parses"),
        )
    })
    .clone()
}

/// The vector RSA key.
pub fn vector_private_key() -> RsaPrivateKey {
    (*shared_vector_key()).clone()
}

/// The vector public key as the 160-byte SPKI a 1026 carries.
pub fn vector_spki() -> [u8; PUBLIC_KEY_LEN] {
    vector("rsa1024_public_spki.der")
        .try_into()
        .expect("SPKI vector is 160 bytes")
}
