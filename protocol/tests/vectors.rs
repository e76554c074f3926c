//! Golden vectors of PROTOCOL.md §4 and §5 (fixtures/vectors, copied verbatim
//! from shared/vectors; see fixtures/vectors/ORIGIN.md).

use sealdrop_protocol::cksum::{cksum, Cksum};
use sealdrop_protocol::consts::*;
use sealdrop_protocol::crypto::*;

/// Reads `fixtures/vectors/<name>`.
fn fixture(name: &str) -> Vec<u8> {
    let path = format!(
        "{}/{}",
        concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures/vectors"),
        name
    );
    std::fs::read(&path).unwrap_or_else(|e| panic!("reading {path}: {e}"))
}

/// Plaintext sizes of the plain_N.bin / cipher_N.bin pairs.
const SIZES: [usize; 8] = [0, 1, 15, 16, 17, 1000, 65536, 1_048_577];

/// Chunk sizes for the streaming checks; 1-byte chunks only on small files.
fn chunkings(len: usize) -> Vec<usize> {
    let mut v = vec![7, 16, 17, 4096, 65_537, len.max(1)];
    if len <= 65_552 {
        v.insert(0, 1);
    }
    v
}

fn aes_key() -> AesKey {
    AesKey::from_slice(&fixture("aes_key.bin")).expect("aes_key.bin is 16 bytes")
}

fn private_key() -> RsaPrivateKey {
    RsaPrivateKey::from_pkcs8_der(&fixture("rsa1024_private_pkcs8.der")).expect("pkcs8 fixture")
}

#[test]
fn fixture_aes_key_is_the_documented_one() {
    let hex: String = aes_key()
        .as_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(hex, "c93d7ec7ef13e92f285547fc8d566251");
}

#[test]
fn spki_fixture_parses_with_1024_bits_e17_and_reencodes_identically() {
    let der = fixture("rsa1024_public_spki.der");
    assert_eq!(der.len(), PUBLIC_KEY_LEN);
    assert_eq!(&der[..3], &[0x30, 0x81, 0x9d]);
    let key = RsaPublicKey::from_spki_der(&der).expect("SPKI fixture");
    assert_eq!(key.modulus_bits(), RSA_BITS);
    assert_eq!(key.public_exponent(), Some(RSA_EXPONENT));
    assert_eq!(&key.to_spki_der().expect("160 bytes")[..], &der[..]);
    assert_eq!(RsaPublicKey::from_der_any(&der).expect("any"), key);
}

#[test]
fn pkcs1_public_fixture_is_the_same_key_as_the_spki() {
    let spki = RsaPublicKey::from_spki_der(&fixture("rsa1024_public_spki.der")).expect("spki");
    let pkcs1_der = fixture("rsa1024_public_pkcs1.der");
    assert_eq!(&pkcs1_der[..], &fixture("rsa1024_public_spki.der")[22..]);
    assert_eq!(
        RsaPublicKey::from_pkcs1_der(&pkcs1_der).expect("pkcs1"),
        spki
    );
    assert_eq!(RsaPublicKey::from_der_any(&pkcs1_der).expect("any"), spki);
    // PKCS#1 is not an SPKI.
    assert_eq!(
        RsaPublicKey::from_spki_der(&pkcs1_der),
        Err(CryptoError::BadPublicKey)
    );
}

#[test]
fn pkcs8_and_pkcs1_private_keys_give_the_same_public_key() {
    let spki = RsaPublicKey::from_spki_der(&fixture("rsa1024_public_spki.der")).expect("spki");
    let p8 = fixture("rsa1024_private_pkcs8.der");
    let p1 = fixture("rsa1024_private_pkcs1.der");
    let from8 = RsaPrivateKey::from_pkcs8_der(&p8).expect("pkcs8");
    let from1 = RsaPrivateKey::from_pkcs1_der(&p1).expect("pkcs1");
    assert_eq!(from8.public_key(), spki);
    assert_eq!(from1.public_key(), spki);
    assert_eq!(
        RsaPrivateKey::from_der(&p8).expect("der").public_key(),
        spki
    );
    assert_eq!(
        RsaPrivateKey::from_der(&p1).expect("der").public_key(),
        spki
    );
    // Each strict parser refuses the other form.
    assert!(RsaPrivateKey::from_pkcs8_der(&p1).is_err());
    assert!(RsaPrivateKey::from_pkcs1_der(&p8).is_err());
}

#[test]
fn to_pkcs8_der_round_trips_byte_for_byte_to_the_fixture() {
    let p8 = fixture("rsa1024_private_pkcs8.der");
    assert_eq!(private_key().to_pkcs8_der(), p8);
    let from1 =
        RsaPrivateKey::from_pkcs1_der(&fixture("rsa1024_private_pkcs1.der")).expect("pkcs1");
    assert_eq!(from1.to_pkcs8_der(), p8);
}

#[test]
fn oaep_ciphertext_decrypts_to_aes_key() {
    let ct = fixture("oaep_ciphertext.bin");
    assert_eq!(ct.len(), ENCRYPTED_KEY_LEN);
    let key = private_key()
        .decrypt_aes_key(&ct, &mut TestEntropy::new(1))
        .expect("decrypt");
    assert_eq!(key, aes_key());
}

#[test]
fn oaep_round_trip_under_the_fixture_key() {
    let private = private_key();
    let mut rng = TestEntropy::new(0xC0FFEE);
    let ct = private
        .public_key()
        .encrypt_aes_key(&aes_key(), &mut rng)
        .expect("encrypt");
    assert_ne!(&ct[..], &fixture("oaep_ciphertext.bin")[..]);
    assert_eq!(
        private.decrypt_aes_key(&ct, &mut rng).expect("decrypt"),
        aes_key()
    );
}

#[test]
fn decrypting_a_corrupted_oaep_ciphertext_is_an_error() {
    let private = private_key();
    let mut rng = TestEntropy::new(9);
    let good = fixture("oaep_ciphertext.bin");
    for i in [0usize, 1, 64, 127] {
        let mut ct = good.clone();
        ct[i] ^= 0x40;
        assert_eq!(
            private.decrypt_aes_key(&ct, &mut rng),
            Err(CryptoError::Decrypt),
            "byte {i}"
        );
    }
}

#[test]
fn session_frames_carry_the_fixture_key_and_ciphertext() {
    // request_1026: 23-byte header + name[255] + public_key[160].
    let req = fixture("request_1026.bin");
    let field = &req[REQUEST_HEADER_LEN + NAME_LEN..];
    assert_eq!(field, &fixture("rsa1024_public_spki.der")[..]);
    RsaPublicKey::from_spki_der(field).expect("1026 key parses");

    // response_2102 / 2105: 7-byte header + client_id[16] + encrypted key[128].
    for name in ["response_2102.bin", "response_2105.bin"] {
        let resp = fixture(name);
        let ct = &resp[RESPONSE_HEADER_LEN + CLIENT_ID_LEN..];
        let key = private_key()
            .decrypt_aes_key(ct, &mut TestEntropy::new(2))
            .expect(name);
        assert_eq!(key, aes_key(), "{name}");
    }

    // request_1028 content = cipher_1000.bin.
    let req = fixture("request_1028.bin");
    let content = &req[REQUEST_HEADER_LEN + FILE_PREFIX_LEN..];
    assert_eq!(content, &fixture("cipher_1000.bin")[..]);
}

#[test]
fn spki_with_e65537_parses_but_cannot_be_sent() {
    // bad_1026_spki_e65537: the 162-byte SPKI after header and name.
    let frame = fixture("bad_1026_spki_e65537.bin");
    let spki = &frame[REQUEST_HEADER_LEN + NAME_LEN..];
    assert_eq!(spki.len(), 162);
    let key = RsaPublicKey::from_spki_der(spki).expect("a valid 1024-bit key");
    assert_eq!(key.public_exponent(), Some(65537));
    assert_eq!(
        key.to_spki_der(),
        Err(CryptoError::PublicKeyEncoding { len: 162 })
    );
    // Only the first 160 bytes, as a fixed-size field would give: refused.
    assert_eq!(
        RsaPublicKey::from_spki_der(&spki[..PUBLIC_KEY_LEN]),
        Err(CryptoError::BadPublicKey)
    );
}

#[test]
fn not_a_key_frame_carries_160_zero_bytes_which_are_refused() {
    let frame = fixture("bad_1026_not_a_key.bin");
    let field = &frame[REQUEST_HEADER_LEN + NAME_LEN..];
    assert_eq!(field, &[0u8; PUBLIC_KEY_LEN][..]);
    assert_eq!(
        RsaPublicKey::from_spki_der(field),
        Err(CryptoError::BadPublicKey)
    );
    assert_eq!(
        RsaPublicKey::from_der_any(field),
        Err(CryptoError::BadPublicKey)
    );
}

#[test]
fn every_cipher_vector_decrypts_to_its_plaintext() {
    let key = aes_key();
    for n in SIZES {
        let plain = fixture(&format!("plain_{n}.bin"));
        let cipher = fixture(&format!("cipher_{n}.bin"));
        assert_eq!(plain.len(), n);
        assert_eq!(cipher.len() as u64, encrypted_len(n as u64), "cipher_{n}");

        assert_eq!(
            cbc_decrypt(&key, &cipher).expect("one-shot"),
            plain,
            "cipher_{n}"
        );
        for chunk in chunkings(cipher.len()) {
            let mut dec = CbcDecryptor::new(&key);
            let mut out = Vec::new();
            for c in cipher.chunks(chunk) {
                dec.update(c, &mut out);
            }
            dec.finish(&mut out).expect("valid padding");
            assert!(out == plain, "cipher_{n} in chunks of {chunk}");
        }
    }
}

#[test]
fn every_plain_vector_encrypts_to_its_ciphertext() {
    let key = aes_key();
    for n in SIZES {
        let plain = fixture(&format!("plain_{n}.bin"));
        let cipher = fixture(&format!("cipher_{n}.bin"));
        assert!(cbc_encrypt(&key, &plain) == cipher, "plain_{n} one-shot");
        for chunk in chunkings(plain.len()) {
            let mut enc = CbcEncryptor::new(&key);
            let mut out = Vec::new();
            for c in plain.chunks(chunk) {
                enc.update(c, &mut out);
            }
            enc.finish(&mut out);
            assert!(out == cipher, "plain_{n} in chunks of {chunk}");
        }
    }
}

#[test]
fn flipping_the_last_ciphertext_byte_gives_bad_padding() {
    let key = aes_key();
    for n in SIZES {
        let mut cipher = fixture(&format!("cipher_{n}.bin"));
        *cipher.last_mut().expect("non-empty") ^= 0x01;
        assert_eq!(
            cbc_decrypt(&key, &cipher),
            Err(CryptoError::BadPadding),
            "{n}"
        );
        let mut dec = CbcDecryptor::new(&key);
        let mut out = Vec::new();
        dec.update(&cipher, &mut out);
        assert_eq!(dec.finish(&mut out), Err(CryptoError::BadPadding), "{n}");
    }
}

#[test]
fn truncated_ciphertext_is_an_error() {
    let key = aes_key();
    let cipher = fixture("cipher_1000.bin");
    for len in [0usize, 1, 15, 500, 1007] {
        assert_eq!(
            cbc_decrypt(&key, &cipher[..len]),
            Err(CryptoError::BadPadding),
            "len {len}"
        );
        let mut dec = CbcDecryptor::new(&key);
        let mut out = Vec::new();
        dec.update(&cipher[..len], &mut out);
        assert_eq!(
            dec.finish(&mut out),
            Err(CryptoError::BadPadding),
            "len {len}"
        );
    }
}

#[test]
fn every_line_of_cksum_vectors_matches() {
    let text = String::from_utf8(fixture("cksum_vectors.txt")).expect("ascii");
    let mut lines = 0;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let mut parts = line.split_whitespace();
        let name = parts.next().expect("name");
        let len: u64 = parts
            .next()
            .expect("length")
            .parse()
            .expect("decimal length");
        let want: u32 = parts.next().expect("cksum").parse().expect("decimal cksum");
        assert!(parts.next().is_none(), "extra fields in {line:?}");

        let data = fixture(name);
        assert_eq!(data.len() as u64, len, "{name}");
        assert_eq!(cksum(&data), want, "{name} one-shot");
        for chunk in chunkings(data.len()) {
            let mut c = Cksum::new();
            for part in data.chunks(chunk) {
                c.update(part);
            }
            assert_eq!(c.len(), len);
            assert_eq!(c.finish(), want, "{name} in chunks of {chunk}");
        }
        lines += 1;
    }
    assert_eq!(lines, SIZES.len());
}

#[test]
fn response_2103_carries_the_cksum_of_plain_1000() {
    // 7-byte header + client_id[16] + content_size u32 + file_name[255] + cksum u32 (LE).
    let resp = fixture("response_2103.bin");
    let at = RESPONSE_HEADER_LEN + CLIENT_ID_LEN + 4 + NAME_LEN;
    let wire = u32::from_le_bytes(resp[at..at + 4].try_into().expect("4 bytes"));
    assert_eq!(wire, 493_196_554);
    assert_eq!(cksum(&fixture("plain_1000.bin")), wire);
}
