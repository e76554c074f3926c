//! The client's only source of randomness: the operating system's CSPRNG
//! (PROTOCOL.md §4), behind the protocol crate's `Entropy` trait.

use sealdrop_protocol::crypto::Entropy;

/// `Entropy` over `getrandom::fill`.
#[derive(Debug, Default)]
pub struct OsEntropy;

impl Entropy for OsEntropy {
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        if let Err(e) = getrandom::fill(dest) {
            // The trait forbids returning predictable bytes (crypto.rs):
            // without an OS generator no key can be made safely.
            eprintln!("sealdrop-client: the operating system's random generator failed: {e}");
            std::process::abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fills_the_whole_buffer() {
        let mut a = [0u8; 64];
        let mut b = [0u8; 64];
        OsEntropy.fill_bytes(&mut a);
        OsEntropy.fill_bytes(&mut b);
        assert_ne!(a, b);
        assert_ne!(a, [0u8; 64]);
    }
}
