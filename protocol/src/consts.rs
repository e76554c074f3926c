//! Sizes, codes and limits of the wire protocol (PROTOCOL.md revision 2023c).
//!
//! Every number the rest of the crate checks lives here, with the section of
//! PROTOCOL.md it comes from.

/// Length of a request header: `client_id[16]`, version u8, code u16, payload_size u32 (§1).
pub const REQUEST_HEADER_LEN: usize = 23;
/// Length of a response header: version u8, code u16, payload_size u32 (§1).
pub const RESPONSE_HEADER_LEN: usize = 7;
/// Length of a client id (§1).
pub const CLIENT_ID_LEN: usize = 16;
/// Length of a fixed string field: text, NUL, NUL padding (§1).
pub const NAME_LEN: usize = 255;
/// Longest text a name field can hold: 255 bytes less the NUL terminator (§1).
pub const NAME_MAX_TEXT: usize = NAME_LEN - 1;
/// Length of the SubjectPublicKeyInfo DER of an RSA-1024 key with e = 17 (§4).
pub const PUBLIC_KEY_LEN: usize = 160;
/// RSA modulus size in bits (§4).
pub const RSA_BITS: usize = 1024;
/// RSA public exponent used when generating keys: the Crypto++ default (§4).
pub const RSA_EXPONENT: u64 = 17;
/// Length of an RSA-1024 OAEP ciphertext (§4).
pub const ENCRYPTED_KEY_LEN: usize = 128;
/// AES-128 key length (§4).
pub const AES_KEY_LEN: usize = 16;
/// AES block length; the CBC IV is this many zero bytes (§4).
pub const AES_BLOCK_LEN: usize = 16;
/// Fixed part of a 1028 payload before the content: content_size u32 + `file_name[255]` (§2).
pub const FILE_PREFIX_LEN: usize = 4 + NAME_LEN;
/// Largest legal 1028 content_size: the payload_size field tops out at
/// u32::MAX, less the 259-byte prefix, rounded down to a multiple of 16 (§2).
pub const MAX_CONTENT_SIZE: u32 = ((u32::MAX - FILE_PREFIX_LEN as u32) / 16) * 16;
/// Largest plaintext the protocol can carry: one byte less than the largest
/// content, since PKCS#7 always adds 1 to 16 bytes (§2, §4).
pub const MAX_PLAINTEXT_SIZE: u64 = MAX_CONTENT_SIZE as u64 - 1;
/// Number of times a client sends a file before it gives up with 1031 (§6).
pub const MAX_SENDS: u32 = 4;
/// Number of retries after a 2107 before a client gives up (§6).
pub const MAX_ERROR_RETRIES: u32 = 3;
/// Version byte we send; any received value is accepted (§1).
pub const PROTOCOL_VERSION: u8 = 3;
/// Default TCP port of revision 2023c (§8).
pub const DEFAULT_PORT: u16 = 1357;
/// Longest client name `transfer.info` may give (§7).
pub const CLIENT_NAME_MAX: usize = 100;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_content_size_matches_protocol_text() {
        assert_eq!(MAX_CONTENT_SIZE, 4_294_967_024);
        assert_eq!(MAX_CONTENT_SIZE % 16, 0);
        assert!(MAX_CONTENT_SIZE as u64 + FILE_PREFIX_LEN as u64 <= u32::MAX as u64);
    }
}
