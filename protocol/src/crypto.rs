//! Cryptography of PROTOCOL.md §4: RSA-1024 keys, RSAES-OAEP (SHA-1) key
//! transport, and streaming AES-CBC with a zero IV and PKCS#7 padding:
//! AES-128 in most revisions, AES-256 in 2024a and 2024c (§9). The key's
//! size ([`AesKeySize`]) picks the cipher.
//!
//! The crate is sans-IO and has **no** source of randomness of its own: every
//! operation that needs random bytes (key generation, OAEP encryption, RSA
//! blinding) takes a `&mut dyn` [`Entropy`] from the caller. The server and
//! client binaries implement [`Entropy`] over the operating system's CSPRNG
//! (§4: "16 bytes from the operating system's CSPRNG"); tests and fuzzers
//! use the deterministic, non-cryptographic [`TestEntropy`].
//!
//! Secrets stay out of logs: [`AesKey`] and [`RsaPrivateKey`] print as
//! `<redacted>`, AES keys are wiped on drop, and no [`CryptoError`] carries
//! key bytes.

use core::convert::Infallible;
use core::fmt;

use aes::{Aes128, Aes256};
use cbc::cipher::array::Array;
use cbc::cipher::block_padding::Pkcs7;
use cbc::cipher::consts::U16;
use cbc::cipher::{BlockModeDecrypt, BlockModeEncrypt, KeyIvInit};
use rsa::pkcs1::{DecodeRsaPrivateKey, DecodeRsaPublicKey, RsaPublicKeyRef};
use rsa::pkcs8::der::asn1::{AnyRef, Null};
use rsa::pkcs8::der::Decode;
use rsa::pkcs8::{DecodePrivateKey, EncodePrivateKey, EncodePublicKey, SubjectPublicKeyInfoRef};
use rsa::rand_core::{TryCryptoRng, TryRng};
use rsa::traits::PublicKeyParts;
use rsa::BoxedUint;
use sha1::Sha1;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::consts::*;

// ---------------------------------------------------------------------------
// Randomness
// ---------------------------------------------------------------------------

/// The only source of randomness of this crate (§4).
///
/// Implementations used in production must fill `dest` entirely with bytes
/// from a cryptographically secure generator (the server and client use the
/// operating system's CSPRNG through `getrandom`). The crate calls it for RSA
/// key generation, OAEP encryption padding, RSA decryption blinding and AES
/// key generation, and never falls back to any other source.
///
/// `fill_bytes` cannot fail: an implementation that cannot get entropy must
/// panic or abort rather than return predictable bytes.
pub trait Entropy {
    /// Fills all of `dest` with random bytes.
    fn fill_bytes(&mut self, dest: &mut [u8]);
}

/// Deterministic SplitMix64 byte generator for tests and fuzzing.
///
/// **NOT cryptographic**: its whole state is the 64-bit seed, so anyone who
/// sees a few outputs can predict the rest. Never use it for keys that leave
/// a test. The same seed always gives the same byte stream.
#[derive(Debug, Clone)]
pub struct TestEntropy(u64);

impl TestEntropy {
    /// A generator whose stream is fully determined by `seed`.
    #[must_use]
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// Next 64 bits of the SplitMix64 sequence.
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

impl Entropy for TestEntropy {
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        for chunk in dest.chunks_mut(8) {
            let word = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&word[..chunk.len()]);
        }
    }
}

/// Adapter that lets a caller's [`Entropy`] drive the `rsa` crate, which asks
/// for a `rand_core` 0.10 [`TryCryptoRng`]. The bytes come from the caller
/// unchanged; it can never fail.
struct EntropyRng<'a>(&'a mut dyn Entropy);

impl TryRng for EntropyRng<'_> {
    type Error = Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Infallible> {
        let mut b = [0u8; 4];
        self.0.fill_bytes(&mut b);
        Ok(u32::from_le_bytes(b))
    }

    fn try_next_u64(&mut self) -> Result<u64, Infallible> {
        let mut b = [0u8; 8];
        self.0.fill_bytes(&mut b);
        Ok(u64::from_le_bytes(b))
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Infallible> {
        self.0.fill_bytes(dst);
        Ok(())
    }
}

/// The caller promises a CSPRNG by implementing [`Entropy`] for production use.
impl TryCryptoRng for EntropyRng<'_> {}

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

/// Everything that can go wrong in this module. No variant carries key
/// material, so errors are safe to log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CryptoError {
    /// The bytes are not a valid DER RSA public key (SPKI with rsaEncryption
    /// and NULL parameters, or PKCS#1 where accepted), have trailing bytes,
    /// or the key values are invalid (§4: the server answers 2107).
    BadPublicKey,
    /// The RSA modulus is not 1024 bits (§4).
    WrongKeySize {
        /// Actual modulus size in bits.
        bits: usize,
    },
    /// The public key's SPKI DER is `len` bytes, not the 160 the 1026
    /// `public_key` field holds (§4: e = 65537 gives 162).
    PublicKeyEncoding {
        /// Actual length of the SPKI DER.
        len: usize,
    },
    /// The bytes are not a valid PKCS#8 or PKCS#1 RSA private key.
    BadPrivateKey,
    /// RSA key generation failed.
    KeyGeneration,
    /// RSA-OAEP encryption failed.
    Encrypt,
    /// RSA-OAEP decryption failed, or the plaintext is not a 16- or 32-byte
    /// AES key (§4, §9).
    Decrypt,
    /// AES-CBC ciphertext is not a non-zero multiple of 16 bytes or its
    /// PKCS#7 padding is wrong (§4).
    BadPadding,
}

impl fmt::Display for CryptoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadPublicKey => f.write_str("not a valid DER RSA public key"),
            Self::WrongKeySize { bits } => {
                write!(f, "RSA modulus is {bits} bits, the protocol needs {RSA_BITS}")
            }
            Self::PublicKeyEncoding { len } => write!(
                f,
                "RSA public key encodes to {len} bytes of SPKI DER, the protocol field holds {PUBLIC_KEY_LEN}"
            ),
            Self::BadPrivateKey => f.write_str("not a valid PKCS#8 or PKCS#1 RSA private key"),
            Self::KeyGeneration => f.write_str("RSA key generation failed"),
            Self::Encrypt => f.write_str("RSA-OAEP encryption failed"),
            Self::Decrypt => f.write_str("RSA-OAEP decryption failed or did not give a 16- or 32-byte AES key"),
            Self::BadPadding => f.write_str("AES-CBC ciphertext has a bad length or bad PKCS#7 padding"),
        }
    }
}

impl std::error::Error for CryptoError {}

// ---------------------------------------------------------------------------
// AES key
// ---------------------------------------------------------------------------

/// The two AES key sizes of the published revisions (§4, §9): 128 bits for
/// 2022c, 2023a and 2023c, 256 bits for 2024a and 2024c. Either key travels
/// as one 128-byte RSAES-OAEP-SHA1 block; only the cipher changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AesKeySize {
    /// AES-128: a 16-byte key.
    Aes128,
    /// AES-256: a 32-byte key (2024a, 2024c).
    Aes256,
}

impl AesKeySize {
    /// Key length in bytes: 16 or 32.
    #[must_use]
    #[allow(clippy::len_without_is_empty)] // a key size is never empty
    pub const fn len(self) -> usize {
        match self {
            Self::Aes128 => AES128_KEY_LEN,
            Self::Aes256 => AES256_KEY_LEN,
        }
    }

    /// Key length in bits: 128 or 256.
    #[must_use]
    pub const fn bits(self) -> usize {
        self.len() * 8
    }

    /// The size whose key is `len` bytes long (16 or 32), else `None`.
    #[must_use]
    pub const fn from_len(len: usize) -> Option<Self> {
        match len {
            AES128_KEY_LEN => Some(Self::Aes128),
            AES256_KEY_LEN => Some(Self::Aes256),
            _ => None,
        }
    }
}

/// Length of an AES-128 key in bytes (the `AES_KEY_LEN` of §4).
const AES128_KEY_LEN: usize = AES_KEY_LEN;
/// Length of an AES-256 key in bytes (2024a, 2024c).
const AES256_KEY_LEN: usize = 32;

/// The key bytes, typed by size so each cipher gets its fixed-size array.
#[derive(Clone, PartialEq, Eq)]
enum KeyBytes {
    Aes128([u8; AES128_KEY_LEN]),
    Aes256([u8; AES256_KEY_LEN]),
}

/// An AES key (§4, §9): 16 bytes (AES-128) or 32 bytes (AES-256, revisions
/// 2024a and 2024c), fresh for every 2102/2105 (1602/1605). The key's size
/// picks the cipher of [`CbcEncryptor`], [`CbcDecryptor`], [`cbc_encrypt`]
/// and [`cbc_decrypt`].
///
/// Prints as `AesKey(<redacted>)` and overwrites its bytes with zeros when
/// dropped. Equality is a plain (not constant-time) comparison; keys of
/// different sizes are never equal. No heap allocation.
#[derive(Clone, PartialEq, Eq)]
pub struct AesKey(KeyBytes);

impl AesKey {
    /// Wraps 16 key bytes (AES-128).
    #[must_use]
    pub fn from_bytes(bytes: [u8; AES_KEY_LEN]) -> Self {
        Self(KeyBytes::Aes128(bytes))
    }

    /// Wraps `bytes` if it is exactly 16 (AES-128) or 32 (AES-256) bytes
    /// long, else `None`.
    #[must_use]
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        match AesKeySize::from_len(bytes.len())? {
            AesKeySize::Aes128 => Some(Self(KeyBytes::Aes128(bytes.try_into().ok()?))),
            AesKeySize::Aes256 => Some(Self(KeyBytes::Aes256(bytes.try_into().ok()?))),
        }
    }

    /// A fresh 16-byte (AES-128) key from `rng` (§4). Same as
    /// [`generate_sized`](Self::generate_sized)`(rng, AesKeySize::Aes128)`.
    #[must_use]
    pub fn generate(rng: &mut dyn Entropy) -> Self {
        Self::generate_sized(rng, AesKeySize::Aes128)
    }

    /// A fresh key of `size` from `rng` (§4, §9: 256 bits for 2024a/c).
    #[must_use]
    pub fn generate_sized(rng: &mut dyn Entropy, size: AesKeySize) -> Self {
        let mut k = Self(match size {
            AesKeySize::Aes128 => KeyBytes::Aes128([0u8; AES128_KEY_LEN]),
            AesKeySize::Aes256 => KeyBytes::Aes256([0u8; AES256_KEY_LEN]),
        });
        match &mut k.0 {
            KeyBytes::Aes128(b) => rng.fill_bytes(b),
            KeyBytes::Aes256(b) => rng.fill_bytes(b),
        }
        k
    }

    /// The key's size: AES-128 or AES-256.
    #[must_use]
    pub fn size(&self) -> AesKeySize {
        match self.0 {
            KeyBytes::Aes128(_) => AesKeySize::Aes128,
            KeyBytes::Aes256(_) => AesKeySize::Aes256,
        }
    }

    /// The raw key bytes: 16 or 32 of them ([`size`](Self::size)`.len()`).
    #[must_use]
    pub fn as_bytes(&self) -> &[u8] {
        match &self.0 {
            KeyBytes::Aes128(b) => b,
            KeyBytes::Aes256(b) => b,
        }
    }
}

impl fmt::Debug for AesKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AesKey(<redacted>)")
    }
}

impl Drop for AesKey {
    fn drop(&mut self) {
        match &mut self.0 {
            KeyBytes::Aes128(b) => b.zeroize(),
            KeyBytes::Aes256(b) => b.zeroize(),
        }
    }
}

impl ZeroizeOnDrop for AesKey {}

// ---------------------------------------------------------------------------
// RSA keys
// ---------------------------------------------------------------------------

/// Modulus size in bits of any key the `rsa` crate parsed.
fn modulus_bits<K: PublicKeyParts>(key: &K) -> usize {
    key.n().bit_width_vartime() as usize
}

/// `Ok` if the modulus is exactly [`RSA_BITS`] (§4).
fn check_modulus<K: PublicKeyParts>(key: &K) -> Result<(), CryptoError> {
    match modulus_bits(key) {
        RSA_BITS => Ok(()),
        bits => Err(CryptoError::WrongKeySize { bits }),
    }
}

/// An RSA-1024 private key (§4): the client's key pair, as stored in
/// `me.info`/`priv.key` (PKCS#8 DER, base64, §7).
///
/// Always has a 1024-bit modulus. Prints as `RsaPrivateKey(<redacted>)`; the
/// `rsa` crate wipes the secret values on drop.
#[derive(Clone)]
pub struct RsaPrivateKey(rsa::PrivateKey);

impl fmt::Debug for RsaPrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RsaPrivateKey(<redacted>)")
    }
}

impl RsaPrivateKey {
    /// Generates a new 1024-bit key pair with public exponent 17, the
    /// Crypto++ default (§4), so its SPKI is exactly 160 bytes.
    ///
    /// Slow in unoptimised builds (crypto-bigint prime search).
    ///
    /// # Errors
    /// [`CryptoError::KeyGeneration`] if the `rsa` crate fails, or if the
    /// result would not encode to a 160-byte SPKI (never expected).
    pub fn generate(rng: &mut dyn Entropy) -> Result<Self, CryptoError> {
        let mut adapter = EntropyRng(rng);
        let key =
            rsa::PrivateKey::new_with_exp(&mut adapter, RSA_BITS, BoxedUint::from(RSA_EXPONENT))
                .map_err(|_| CryptoError::KeyGeneration)?;
        let key = Self(key);
        check_modulus(&key.0).map_err(|_| CryptoError::KeyGeneration)?;
        key.public_key()
            .to_spki_der()
            .map_err(|_| CryptoError::KeyGeneration)?;
        Ok(key)
    }

    /// Parses a PKCS#8 `PrivateKeyInfo` DER holding an RSA key (§7). The
    /// whole slice must be the DER: trailing bytes are refused.
    ///
    /// # Errors
    /// [`CryptoError::BadPrivateKey`] for anything that is not a valid RSA
    /// PKCS#8 key, [`CryptoError::WrongKeySize`] for a modulus other than
    /// 1024 bits.
    pub fn from_pkcs8_der(der: &[u8]) -> Result<Self, CryptoError> {
        let key = <rsa::PrivateKey as DecodePrivateKey>::from_pkcs8_der(der)
            .map_err(|_| CryptoError::BadPrivateKey)?;
        check_modulus(&key)?;
        Ok(Self(key))
    }

    /// Parses a PKCS#1 `RSAPrivateKey` DER (two-prime). The whole slice must
    /// be the DER.
    ///
    /// # Errors
    /// As [`from_pkcs8_der`](Self::from_pkcs8_der).
    pub fn from_pkcs1_der(der: &[u8]) -> Result<Self, CryptoError> {
        let key = <rsa::PrivateKey as DecodeRsaPrivateKey>::from_pkcs1_der(der)
            .map_err(|_| CryptoError::BadPrivateKey)?;
        check_modulus(&key)?;
        Ok(Self(key))
    }

    /// Parses a private key in either DER form: PKCS#8 first, then PKCS#1
    /// (peers differ in what they store, §7).
    ///
    /// # Errors
    /// [`CryptoError::WrongKeySize`] if a valid key of the wrong size was
    /// found, else [`CryptoError::BadPrivateKey`].
    pub fn from_der(der: &[u8]) -> Result<Self, CryptoError> {
        match Self::from_pkcs8_der(der) {
            Err(CryptoError::BadPrivateKey) => Self::from_pkcs1_der(der),
            other => other,
        }
    }

    /// The key as PKCS#8 `PrivateKeyInfo` DER (version 0, rsaEncryption with
    /// NULL parameters), the form PyCryptodome's `export_key('DER',
    /// pkcs=8)` writes and `me.info`/`priv.key` hold base64-encoded (§7).
    ///
    /// The returned buffer holds the secret key; the caller should wipe it
    /// when done.
    ///
    /// # Panics
    /// Never for keys of this type (always two-prime with CRT values).
    #[must_use]
    pub fn to_pkcs8_der(&self) -> Vec<u8> {
        let doc = EncodePrivateKey::to_pkcs8_der(&self.0)
            .expect("a two-prime RSA key always encodes as PKCS#8");
        doc.as_bytes().to_vec()
    }

    /// The public half of the pair.
    #[must_use]
    pub fn public_key(&self) -> RsaPublicKey {
        RsaPublicKey(self.0.to_public_key())
    }

    /// Decrypts the `encrypted_aes_key` of a 2102/2105 or 1602/1605 (§3, §4,
    /// §9): RSAES-OAEP with SHA-1, MGF1-SHA-1 and an empty label, blinded
    /// with bytes from `rng`. `ciphertext` must be 128 bytes.
    ///
    /// The key comes back at the size the OAEP block held: 16 bytes gives
    /// an AES-128 key, 32 bytes an AES-256 key, so the caller needs no
    /// revision here. A caller that wants to insist on its revision's size
    /// compares [`AesKey::size`] afterwards.
    ///
    /// # Errors
    /// [`CryptoError::Decrypt`] if the ciphertext has the wrong length, does
    /// not decrypt, or holds neither 16 nor 32 bytes.
    pub fn decrypt_aes_key(
        &self,
        ciphertext: &[u8],
        rng: &mut dyn Entropy,
    ) -> Result<AesKey, CryptoError> {
        if ciphertext.len() != ENCRYPTED_KEY_LEN {
            return Err(CryptoError::Decrypt);
        }
        let mut adapter = EntropyRng(rng);
        let plain = Zeroizing::new(
            self.0
                .oaep_decrypt_with_rng::<Sha1, _>(&mut adapter, ciphertext)
                .map_err(|_| CryptoError::Decrypt)?,
        );
        AesKey::from_slice(&plain).ok_or(CryptoError::Decrypt)
    }
}

/// An RSA public key with a 1024-bit modulus (§4): the 1026 `public_key`
/// field, or the public half of an [`RsaPrivateKey`].
///
/// Any exponent the `rsa` crate accepts (odd, 3 ..= 2^33 - 1) is allowed on
/// input; only exponents of one byte (such as 17) give the 160-byte SPKI the
/// protocol can carry, which [`to_spki_der`](Self::to_spki_der) checks.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct RsaPublicKey(rsa::PublicKey);

impl RsaPublicKey {
    /// Parses an X.509 `SubjectPublicKeyInfo` DER (§4: the 1026 field).
    ///
    /// Strict: the whole slice must be one DER SPKI (no trailing bytes or
    /// padding), the algorithm must be rsaEncryption with NULL parameters,
    /// the key a valid PKCS#1 `RSAPublicKey` and the modulus exactly 1024
    /// bits. The server refuses anything else with 2107 (§4).
    ///
    /// # Errors
    /// [`CryptoError::WrongKeySize`] for a well-formed RSA key of another
    /// size, [`CryptoError::BadPublicKey`] for everything else.
    pub fn from_spki_der(der: &[u8]) -> Result<Self, CryptoError> {
        let spki = SubjectPublicKeyInfoRef::from_der(der).map_err(|_| CryptoError::BadPublicKey)?;
        if spki.algorithm.oid != rsa::pkcs1::ALGORITHM_OID
            || spki.algorithm.parameters != Some(AnyRef::from(Null))
        {
            return Err(CryptoError::BadPublicKey);
        }
        let pkcs1 = spki
            .subject_public_key
            .as_bytes()
            .ok_or(CryptoError::BadPublicKey)?;
        Self::from_pkcs1_der(pkcs1)
    }

    /// Parses a PKCS#1 `RSAPublicKey` DER (`SEQUENCE { n, e }`), with the same
    /// strictness and size rule as [`from_spki_der`](Self::from_spki_der).
    ///
    /// # Errors
    /// As [`from_spki_der`](Self::from_spki_der).
    pub fn from_pkcs1_der(der: &[u8]) -> Result<Self, CryptoError> {
        let raw = RsaPublicKeyRef::from_der(der).map_err(|_| CryptoError::BadPublicKey)?;
        // Report the size before the rsa crate's own limits (1024 ..= 8192)
        // turn a small or huge key into a generic error.
        let n = raw.modulus.as_bytes(); // big-endian, leading zeros stripped
        let bits = match n.first() {
            Some(&top) => n.len() * 8 - top.leading_zeros() as usize,
            None => 0,
        };
        if bits != RSA_BITS {
            return Err(CryptoError::WrongKeySize { bits });
        }
        let key = <rsa::PublicKey as DecodeRsaPublicKey>::from_pkcs1_der(der)
            .map_err(|_| CryptoError::BadPublicKey)?;
        check_modulus(&key)?;
        Ok(Self(key))
    }

    /// Parses either DER form of a public key: SPKI first, then PKCS#1.
    ///
    /// # Errors
    /// As [`from_spki_der`](Self::from_spki_der); a wrong size found by
    /// either parser is reported as [`CryptoError::WrongKeySize`].
    pub fn from_der_any(der: &[u8]) -> Result<Self, CryptoError> {
        match Self::from_spki_der(der) {
            Err(CryptoError::BadPublicKey) => Self::from_pkcs1_der(der),
            other => other,
        }
    }

    /// The key as the 160-byte SPKI DER the 1026 `public_key` field carries
    /// (§4): `30 81 9d 30 0d 06 09 2a864886f70d010101 05 00 03 81 8b 00 ...`,
    /// byte-identical to PyCryptodome `export_key('DER')` and Crypto++ `Save`.
    ///
    /// # Errors
    /// [`CryptoError::PublicKeyEncoding`] if the encoding is not exactly 160
    /// bytes (e.g. 162 for e = 65537), [`CryptoError::BadPublicKey`] if it
    /// cannot be encoded at all.
    pub fn to_spki_der(&self) -> Result<[u8; PUBLIC_KEY_LEN], CryptoError> {
        let doc =
            EncodePublicKey::to_public_key_der(&self.0).map_err(|_| CryptoError::BadPublicKey)?;
        let bytes = doc.as_bytes();
        bytes
            .try_into()
            .map_err(|_| CryptoError::PublicKeyEncoding { len: bytes.len() })
    }

    /// Modulus size in bits; always 1024 for a value of this type (§4).
    #[must_use]
    pub fn modulus_bits(&self) -> usize {
        modulus_bits(&self.0)
    }

    /// The public exponent if it fits in a `u64` (it always does for keys the
    /// `rsa` crate accepts; 17 for protocol keys, §4).
    #[must_use]
    pub fn public_exponent(&self) -> Option<u64> {
        let be = self.0.e().to_be_bytes();
        let start = be.iter().position(|&b| b != 0).unwrap_or(be.len());
        let digits = &be[start..];
        if digits.len() > 8 {
            return None;
        }
        Some(
            digits
                .iter()
                .fold(0u64, |acc, &b| (acc << 8) | u64::from(b)),
        )
    }

    /// Encrypts `key` (16 or 32 bytes, whichever it is) for the 2102/2105 or
    /// 1602/1605 `encrypted_aes_key` field (§3, §4, §9): RSAES-OAEP with
    /// SHA-1, MGF1-SHA-1 and an empty label, padding seed from `rng`, always
    /// 128 bytes. The output is randomized; it decrypts with the matching
    /// [`RsaPrivateKey::decrypt_aes_key`] to a key of the same size.
    ///
    /// # Errors
    /// [`CryptoError::Encrypt`] if the `rsa` crate fails (never expected for
    /// a 1024-bit key and a 16- or 32-byte message; OAEP-SHA1 takes up to 86).
    pub fn encrypt_aes_key(
        &self,
        key: &AesKey,
        rng: &mut dyn Entropy,
    ) -> Result<[u8; ENCRYPTED_KEY_LEN], CryptoError> {
        let mut adapter = EntropyRng(rng);
        let ct = self
            .0
            .oaep_encrypt_with_rng::<Sha1, _>(&mut adapter, key.as_bytes())
            .map_err(|_| CryptoError::Encrypt)?;
        ct.as_slice().try_into().map_err(|_| CryptoError::Encrypt)
    }
}

// ---------------------------------------------------------------------------
// AES-128/256-CBC, zero IV, PKCS#7
// ---------------------------------------------------------------------------

type Aes128CbcEnc = cbc::Encryptor<Aes128>;
type Aes128CbcDec = cbc::Decryptor<Aes128>;
type Aes256CbcEnc = cbc::Encryptor<Aes256>;
type Aes256CbcDec = cbc::Decryptor<Aes256>;
type AesBlock = Array<u8, U16>;

/// CBC encryption state for either key size (zero IV, §4).
///
/// The size is matched once per call, never per block: each method hands
/// the whole run of blocks to the `cbc` crate, which keeps its own
/// AES-NI/parallel fast paths for both sizes. Held inline, no heap.
enum CbcEnc {
    Aes128(Aes128CbcEnc),
    Aes256(Aes256CbcEnc),
}

impl CbcEnc {
    fn new(key: &AesKey) -> Self {
        match &key.0 {
            KeyBytes::Aes128(k) => Self::Aes128(Aes128CbcEnc::new(k.into(), (&ZERO_IV).into())),
            KeyBytes::Aes256(k) => Self::Aes256(Aes256CbcEnc::new(k.into(), (&ZERO_IV).into())),
        }
    }

    /// Encrypts whole blocks in place, chaining from the previous call.
    #[inline]
    fn encrypt_blocks(&mut self, blocks: &mut [AesBlock]) {
        match self {
            Self::Aes128(c) => c.encrypt_blocks(blocks),
            Self::Aes256(c) => c.encrypt_blocks(blocks),
        }
    }

    /// One-shot PKCS#7 encryption with the `cbc` crate's own padding code.
    fn encrypt_padded_vec(self, plain: &[u8]) -> Vec<u8> {
        match self {
            Self::Aes128(c) => c.encrypt_padded_vec::<Pkcs7>(plain),
            Self::Aes256(c) => c.encrypt_padded_vec::<Pkcs7>(plain),
        }
    }

    fn size(&self) -> AesKeySize {
        match self {
            Self::Aes128(_) => AesKeySize::Aes128,
            Self::Aes256(_) => AesKeySize::Aes256,
        }
    }
}

/// CBC decryption state for either key size; as [`CbcEnc`].
enum CbcDec {
    Aes128(Aes128CbcDec),
    Aes256(Aes256CbcDec),
}

impl CbcDec {
    fn new(key: &AesKey) -> Self {
        match &key.0 {
            KeyBytes::Aes128(k) => Self::Aes128(Aes128CbcDec::new(k.into(), (&ZERO_IV).into())),
            KeyBytes::Aes256(k) => Self::Aes256(Aes256CbcDec::new(k.into(), (&ZERO_IV).into())),
        }
    }

    /// Decrypts whole blocks in place, chaining from the previous call.
    #[inline]
    fn decrypt_blocks(&mut self, blocks: &mut [AesBlock]) {
        match self {
            Self::Aes128(c) => c.decrypt_blocks(blocks),
            Self::Aes256(c) => c.decrypt_blocks(blocks),
        }
    }

    /// One-shot PKCS#7 decryption with the `cbc` crate's own unpadding code.
    fn decrypt_padded_vec(self, ciphertext: &[u8]) -> Result<Vec<u8>, CryptoError> {
        match self {
            Self::Aes128(c) => c.decrypt_padded_vec::<Pkcs7>(ciphertext),
            Self::Aes256(c) => c.decrypt_padded_vec::<Pkcs7>(ciphertext),
        }
        .map_err(|_| CryptoError::BadPadding)
    }

    fn size(&self) -> AesKeySize {
        match self {
            Self::Aes128(_) => AesKeySize::Aes128,
            Self::Aes256(_) => AesKeySize::Aes256,
        }
    }
}

/// The IV of §4: 16 zero bytes.
const ZERO_IV: [u8; AES_BLOCK_LEN] = [0u8; AES_BLOCK_LEN];

/// Views a buffer whose length is a multiple of 16 as AES blocks (no copy).
fn as_blocks_mut(buf: &mut [u8]) -> &mut [AesBlock] {
    let (blocks, tail) = AesBlock::slice_as_chunks_mut(buf);
    debug_assert!(tail.is_empty(), "caller passes whole blocks");
    blocks
}

/// Length of the content for a file of `plain_len` bytes (§2, §4):
/// `16 * (floor(plain_len / 16) + 1)`, since PKCS#7 always adds 1 to 16 bytes.
///
/// Saturates at `u64::MAX` for `plain_len > u64::MAX - 16` (far beyond
/// [`MAX_PLAINTEXT_SIZE`]); use [`checked_encrypted_len`] to detect that.
#[must_use]
pub fn encrypted_len(plain_len: u64) -> u64 {
    checked_encrypted_len(plain_len).unwrap_or(u64::MAX)
}

/// As [`encrypted_len`], but `None` when the result does not fit in a `u64`.
#[must_use]
pub fn checked_encrypted_len(plain_len: u64) -> Option<u64> {
    (plain_len / AES_BLOCK_LEN as u64 + 1).checked_mul(AES_BLOCK_LEN as u64)
}

/// Streaming AES-CBC encryptor with a zero IV and PKCS#7 padding (§4):
/// AES-128 or AES-256, as the key given to [`new`](Self::new) is.
///
/// Feed the file in chunks of any size with [`update`](Self::update), then
/// call [`finish`](Self::finish). The total output is exactly
/// [`encrypted_len`]`(n)` bytes for `n` input bytes, and identical to the
/// one-shot [`cbc_encrypt`] whatever the chunking.
///
/// Every call encrypts all the whole blocks it can in one pass of the cipher
/// (AES-NI where available); at most 15 bytes are held between calls. No
/// allocation beyond growing `out`.
pub struct CbcEncryptor {
    cipher: CbcEnc,
    buf: [u8; AES_BLOCK_LEN],
    buf_len: usize,
}

impl CbcEncryptor {
    /// An encryptor for `key` with the zero IV of §4.
    #[must_use]
    pub fn new(key: &AesKey) -> Self {
        Self {
            cipher: CbcEnc::new(key),
            buf: [0u8; AES_BLOCK_LEN],
            buf_len: 0,
        }
    }

    /// Encrypts `input`, appending every complete ciphertext block now
    /// available to `out`; fewer than 16 bytes stay buffered.
    pub fn update(&mut self, mut input: &[u8], out: &mut Vec<u8>) {
        let start = out.len();
        if self.buf_len > 0 {
            let take = (AES_BLOCK_LEN - self.buf_len).min(input.len());
            self.buf[self.buf_len..self.buf_len + take].copy_from_slice(&input[..take]);
            self.buf_len += take;
            input = &input[take..];
            if self.buf_len < AES_BLOCK_LEN {
                return;
            }
            out.extend_from_slice(&self.buf);
            self.buf_len = 0;
        }
        let whole = input.len() - input.len() % AES_BLOCK_LEN;
        out.extend_from_slice(&input[..whole]);
        let rest = &input[whole..];
        self.buf[..rest.len()].copy_from_slice(rest);
        self.buf_len = rest.len();
        if out.len() > start {
            self.cipher.encrypt_blocks(as_blocks_mut(&mut out[start..]));
        }
    }

    /// True when [`CbcEncryptor::update_in_place`] can take `len` bytes:
    /// whole blocks, and no bytes carried over from earlier input.
    pub fn can_update_in_place(&self, len: usize) -> bool {
        self.buf_len == 0 && len.is_multiple_of(AES_BLOCK_LEN)
    }

    /// Encrypts `buf` in place, saving the copy [`CbcEncryptor::update`]
    /// makes. Returns false, leaving `buf` untouched, unless
    /// [`CbcEncryptor::can_update_in_place`] holds.
    pub fn update_in_place(&mut self, buf: &mut [u8]) -> bool {
        if !self.can_update_in_place(buf.len()) {
            return false;
        }
        if !buf.is_empty() {
            self.cipher.encrypt_blocks(as_blocks_mut(buf));
        }
        true
    }

    /// Pads the buffered tail with PKCS#7 (1 to 16 bytes, §4), encrypts it
    /// and appends the final block to `out`.
    pub fn finish(mut self, out: &mut Vec<u8>) {
        let pad = AES_BLOCK_LEN - self.buf_len; // 1 ..= 16
        self.buf[self.buf_len..].fill(pad as u8);
        let start = out.len();
        out.extend_from_slice(&self.buf);
        self.cipher.encrypt_blocks(as_blocks_mut(&mut out[start..]));
    }
}

impl fmt::Debug for CbcEncryptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CbcEncryptor")
            .field("key_size", &self.cipher.size())
            .field("buffered", &self.buf_len)
            .finish_non_exhaustive()
    }
}

/// Streaming AES-CBC decryptor with a zero IV and PKCS#7 padding (§4):
/// AES-128 or AES-256, as the key given to [`new`](Self::new) is.
///
/// Feed the 1028 content in chunks of any size with
/// [`update`](Self::update); it appends plaintext but always holds back the
/// last complete block (it may be the padding block) and any partial block.
/// [`finish`](Self::finish) checks and strips the padding and appends the
/// rest. The result equals the one-shot [`cbc_decrypt`] whatever the
/// chunking.
///
/// Whole runs of blocks go to the cipher in one call, which decrypts several
/// blocks in parallel (CBC decryption is parallelisable). No allocation
/// beyond growing `out`.
pub struct CbcDecryptor {
    cipher: CbcDec,
    /// Partial ciphertext block.
    buf: [u8; AES_BLOCK_LEN],
    buf_len: usize,
    /// Last decrypted block, held back until more ciphertext or `finish`.
    held: [u8; AES_BLOCK_LEN],
    has_held: bool,
}

impl CbcDecryptor {
    /// A decryptor for `key` with the zero IV of §4.
    #[must_use]
    pub fn new(key: &AesKey) -> Self {
        Self {
            cipher: CbcDec::new(key),
            buf: [0u8; AES_BLOCK_LEN],
            buf_len: 0,
            held: [0u8; AES_BLOCK_LEN],
            has_held: false,
        }
    }

    /// Decrypts `input`, appending to `out` all plaintext except the last
    /// complete block seen so far and any partial block.
    pub fn update(&mut self, mut input: &[u8], out: &mut Vec<u8>) {
        if self.buf_len + input.len() < AES_BLOCK_LEN {
            self.buf[self.buf_len..self.buf_len + input.len()].copy_from_slice(input);
            self.buf_len += input.len();
            return;
        }
        // At least one new complete block: the held one can go out.
        if self.has_held {
            out.extend_from_slice(&self.held);
            self.has_held = false;
        }
        let start = out.len();
        if self.buf_len > 0 {
            let take = AES_BLOCK_LEN - self.buf_len;
            self.buf[self.buf_len..].copy_from_slice(&input[..take]);
            input = &input[take..];
            out.extend_from_slice(&self.buf);
            self.buf_len = 0;
        }
        let whole = input.len() - input.len() % AES_BLOCK_LEN;
        out.extend_from_slice(&input[..whole]);
        let rest = &input[whole..];
        self.buf[..rest.len()].copy_from_slice(rest);
        self.buf_len = rest.len();

        self.cipher.decrypt_blocks(as_blocks_mut(&mut out[start..]));
        let last = out.len() - AES_BLOCK_LEN;
        self.held.copy_from_slice(&out[last..]);
        self.has_held = true;
        out.truncate(last);
    }

    /// Checks and strips the PKCS#7 padding of the last block (§4) and
    /// appends the remaining plaintext to `out`.
    ///
    /// # Errors
    /// [`CryptoError::BadPadding`] if the total ciphertext was empty or not a
    /// multiple of 16 bytes, or the last block's padding is not `n` bytes of
    /// value `n` with `1 <= n <= 16`. Nothing is appended on error.
    pub fn finish(self, out: &mut Vec<u8>) -> Result<(), CryptoError> {
        if self.buf_len != 0 || !self.has_held {
            return Err(CryptoError::BadPadding);
        }
        let pad = self.held[AES_BLOCK_LEN - 1];
        let pad_len = usize::from(pad);
        // Branch-free over the block contents.
        let mut bad = u8::from(pad == 0) | u8::from(pad_len > AES_BLOCK_LEN);
        for (i, &b) in self.held.iter().enumerate() {
            bad |= u8::from(i + pad_len >= AES_BLOCK_LEN) & u8::from(b != pad);
        }
        if bad != 0 {
            return Err(CryptoError::BadPadding);
        }
        out.extend_from_slice(&self.held[..AES_BLOCK_LEN - pad_len]);
        Ok(())
    }
}

impl fmt::Debug for CbcDecryptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CbcDecryptor")
            .field("key_size", &self.cipher.size())
            .field(
                "buffered",
                &(self.buf_len + usize::from(self.has_held) * AES_BLOCK_LEN),
            )
            .finish_non_exhaustive()
    }
}

/// One-shot AES-CBC encryption (AES-128 or AES-256, as `key` is) with the
/// zero IV and PKCS#7 (§4); the result is [`encrypted_len`]`(plain.len())`
/// bytes. Uses the `cbc` crate's own padding code, independent of
/// [`CbcEncryptor`].
#[must_use]
pub fn cbc_encrypt(key: &AesKey, plain: &[u8]) -> Vec<u8> {
    CbcEnc::new(key).encrypt_padded_vec(plain)
}

/// One-shot AES-CBC decryption (AES-128 or AES-256, as `key` is) with the
/// zero IV and PKCS#7 (§4). Uses the `cbc` crate's own unpadding code,
/// independent of [`CbcDecryptor`].
///
/// # Errors
/// [`CryptoError::BadPadding`] under the same conditions as
/// [`CbcDecryptor::finish`].
pub fn cbc_decrypt(key: &AesKey, ciphertext: &[u8]) -> Result<Vec<u8>, CryptoError> {
    if ciphertext.is_empty() || !ciphertext.len().is_multiple_of(AES_BLOCK_LEN) {
        return Err(CryptoError::BadPadding);
    }
    CbcDec::new(key).decrypt_padded_vec(ciphertext)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const PKCS8: &[u8] = include_bytes!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../fixtures/vectors/rsa1024_private_pkcs8.der"
    ));
    const SPKI: &[u8] = include_bytes!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../fixtures/vectors/rsa1024_public_spki.der"
    ));
    const PLAIN_1000: &[u8] = include_bytes!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../fixtures/vectors/plain_1000.bin"
    ));
    /// The 32-byte AES key of revisions 2024a/c (PyCryptodome vectors).
    const KEY_2024C: &[u8] = include_bytes!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../fixtures/vectors/2024c/aes_key.bin"
    ));
    /// `plain_1000.bin` under `KEY_2024C`: AES-256-CBC, zero IV, PKCS#7.
    const CIPHER_1000_2024C: &[u8] = include_bytes!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../fixtures/vectors/2024c/cipher_1000.bin"
    ));
    /// `KEY_2024C` under the vector RSA key, RSAES-OAEP-SHA1.
    const OAEP_2024C: &[u8] = include_bytes!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../fixtures/vectors/2024c/oaep_ciphertext.bin"
    ));

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn test_key() -> AesKey {
        AesKey::from_bytes(*b"0123456789abcdef")
    }

    fn test_key_256() -> AesKey {
        AesKey::from_slice(b"0123456789abcdef0123456789ABCDEF").expect("32 bytes")
    }

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
            .collect()
    }

    /// Encrypts whole blocks with no padding (zero IV), for hand-built last blocks.
    fn encrypt_raw_blocks(key: &AesKey, buf: &mut [u8]) {
        CbcEnc::new(key).encrypt_blocks(as_blocks_mut(buf));
    }

    fn stream_encrypt(key: &AesKey, data: &[u8], chunk: usize) -> Vec<u8> {
        let mut enc = CbcEncryptor::new(key);
        let mut out = Vec::new();
        for c in data.chunks(chunk.max(1)) {
            enc.update(c, &mut out);
        }
        enc.finish(&mut out);
        out
    }

    fn stream_decrypt(key: &AesKey, data: &[u8], chunk: usize) -> Result<Vec<u8>, CryptoError> {
        let mut dec = CbcDecryptor::new(key);
        let mut out = Vec::new();
        for c in data.chunks(chunk.max(1)) {
            dec.update(c, &mut out);
        }
        dec.finish(&mut out)?;
        Ok(out)
    }

    #[test]
    fn test_entropy_is_deterministic_and_seed_dependent() {
        let mut a = [0u8; 37];
        let mut b = [0u8; 37];
        let mut c = [0u8; 37];
        TestEntropy::new(7).fill_bytes(&mut a);
        TestEntropy::new(7).fill_bytes(&mut b);
        TestEntropy::new(8).fill_bytes(&mut c);
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_ne!(a, [0u8; 37]);
    }

    #[test]
    fn aes_key_generate_uses_caller_entropy() {
        let k1 = AesKey::generate(&mut TestEntropy::new(1));
        let k2 = AesKey::generate(&mut TestEntropy::new(1));
        let k3 = AesKey::generate(&mut TestEntropy::new(2));
        assert_eq!(k1, k2);
        assert_ne!(k1, k3);
    }

    #[test]
    fn aes_key_from_slice_takes_16_or_32_bytes_only() {
        for len in [0, 1, 15, 17, 24, 31, 33, 48, 64] {
            assert!(AesKey::from_slice(&vec![0u8; len]).is_none(), "{len}");
            assert_eq!(AesKeySize::from_len(len), None, "{len}");
        }
        let k = AesKey::from_slice(&[9u8; 16]).expect("16 bytes");
        assert_eq!(k.as_bytes(), &[9u8; 16]);
        assert_eq!(k.size(), AesKeySize::Aes128);
        assert_eq!(k, AesKey::from_bytes([9u8; 16]));
        let k = AesKey::from_slice(&[9u8; 32]).expect("32 bytes");
        assert_eq!(k.as_bytes(), &[9u8; 32]);
        assert_eq!(k.size(), AesKeySize::Aes256);
        // Same leading bytes, different size: different keys.
        assert_ne!(k, AesKey::from_bytes([9u8; 16]));
    }

    #[test]
    fn aes_key_sizes() {
        assert_eq!(AesKeySize::Aes128.len(), 16);
        assert_eq!(AesKeySize::Aes256.len(), 32);
        assert_eq!(AesKeySize::Aes128.bits(), 128);
        assert_eq!(AesKeySize::Aes256.bits(), 256);
        for size in [AesKeySize::Aes128, AesKeySize::Aes256] {
            assert_eq!(AesKeySize::from_len(size.len()), Some(size));
            let k = AesKey::generate_sized(&mut TestEntropy::new(4), size);
            assert_eq!(k.size(), size);
            assert_eq!(k.as_bytes().len(), size.len());
            assert_ne!(k.as_bytes(), &vec![0u8; size.len()][..]);
            assert_eq!(k, AesKey::generate_sized(&mut TestEntropy::new(4), size));
            assert_ne!(k, AesKey::generate_sized(&mut TestEntropy::new(5), size));
        }
        // generate() stays AES-128, byte-identical to generate_sized(Aes128).
        let k = AesKey::generate(&mut TestEntropy::new(4));
        assert_eq!(k.size(), AesKeySize::Aes128);
        assert_eq!(
            k,
            AesKey::generate_sized(&mut TestEntropy::new(4), AesKeySize::Aes128)
        );
    }

    #[test]
    fn aes256_cbc_matches_the_2024c_vector() {
        let key = AesKey::from_slice(KEY_2024C).expect("aes_key.bin is 32 bytes");
        assert_eq!(key.size(), AesKeySize::Aes256);
        assert_eq!(PLAIN_1000.len(), 1000);
        assert_eq!(CIPHER_1000_2024C.len() as u64, encrypted_len(1000));
        assert_eq!(cbc_encrypt(&key, PLAIN_1000), CIPHER_1000_2024C);
        assert_eq!(
            cbc_decrypt(&key, CIPHER_1000_2024C).expect("valid"),
            PLAIN_1000
        );
        // Streaming, in odd-sized pieces, gives the same bytes both ways.
        for chunk in [1, 3, 7, 15, 16, 17, 33, 100, 999, 1000, 4096] {
            assert_eq!(
                stream_encrypt(&key, PLAIN_1000, chunk),
                CIPHER_1000_2024C,
                "chunk {chunk}"
            );
            assert_eq!(
                stream_decrypt(&key, CIPHER_1000_2024C, chunk).expect("valid"),
                PLAIN_1000,
                "chunk {chunk}"
            );
        }
        // The 128-bit key is not a prefix shortcut: the first 16 bytes of the
        // 256-bit key encrypt differently.
        let short = AesKey::from_slice(&KEY_2024C[..16]).expect("16 bytes");
        assert_ne!(cbc_encrypt(&short, PLAIN_1000), CIPHER_1000_2024C);
    }

    /// NIST SP 800-38A F.2.1 (CBC-AES128) and F.2.5 (CBC-AES256). Their IV
    /// is 000102..0f; with the zero IV of §4 the same chain comes out when
    /// the first plaintext block is XORed with that IV beforehand.
    #[test]
    fn cbc_matches_nist_sp800_38a() {
        let plain = unhex(concat!(
            "6bc1bee22e409f96e93d7e117393172a",
            "ae2d8a571e03ac9c9eb76fac45af8e51",
            "30c81c46a35ce411e5fbc1191a0a52ef",
            "f69f2445df4f9b17ad2b417be66c3710",
        ));
        for (key, want) in [
            (
                "2b7e151628aed2a6abf7158809cf4f3c",
                concat!(
                    "7649abac8119b246cee98e9b12e9197d",
                    "5086cb9b507219ee95db113a917678b2",
                    "73bed6b8e3c1743b7116e69e22229516",
                    "3ff1caa1681fac09120eca307586e1a7",
                ),
            ),
            (
                "603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4",
                concat!(
                    "f58c4c04d6e5f1ba779eabfb5f7bfbd6",
                    "9cfc4e967edb808d679f777bc6702c7d",
                    "39f23369a9d9bacfa530e26304231461",
                    "b2eb05e2c39be9fcda6c19078c6a9d1b",
                ),
            ),
        ] {
            let key = AesKey::from_slice(&unhex(key)).expect("key");
            let mut input = plain.clone();
            for (i, b) in input[..16].iter_mut().enumerate() {
                *b ^= i as u8;
            }
            let want = unhex(want);
            let ct = cbc_encrypt(&key, &input);
            assert_eq!(ct.len(), 80, "{:?}", key.size());
            assert_eq!(&ct[..64], &want[..], "{:?}", key.size());
            let mut streamed = input.clone();
            let mut enc = CbcEncryptor::new(&key);
            assert!(enc.update_in_place(&mut streamed));
            assert_eq!(streamed, want, "{:?}", key.size());
            assert_eq!(cbc_decrypt(&key, &ct).expect("valid"), input);
        }
    }

    #[test]
    fn oaep_vector_decrypts_to_the_2024c_key() {
        let private = RsaPrivateKey::from_pkcs8_der(PKCS8).expect("fixture key");
        let key = private
            .decrypt_aes_key(OAEP_2024C, &mut TestEntropy::new(11))
            .expect("decrypt");
        assert_eq!(key.size(), AesKeySize::Aes256);
        assert_eq!(key.as_bytes(), KEY_2024C);
    }

    #[test]
    fn oaep_round_trip_of_a_256_bit_key() {
        let private = RsaPrivateKey::from_pkcs8_der(PKCS8).expect("fixture key");
        let public = private.public_key();
        let mut rng = TestEntropy::new(43);
        let key = AesKey::generate_sized(&mut rng, AesKeySize::Aes256);
        let ct = public.encrypt_aes_key(&key, &mut rng).expect("encrypt");
        assert_eq!(ct.len(), ENCRYPTED_KEY_LEN);
        let back = private.decrypt_aes_key(&ct, &mut rng).expect("decrypt");
        assert_eq!(back.size(), AesKeySize::Aes256);
        assert_eq!(back, key);
    }

    #[test]
    fn aes256_in_place_update_equals_copying_update() {
        let key = test_key_256();
        let data: Vec<u8> = (0..4096u32).map(|i| (i * 13) as u8).collect();
        let mut a = CbcEncryptor::new(&key);
        let mut b = CbcEncryptor::new(&key);
        let mut copied = Vec::new();
        a.update(&data, &mut copied);
        let mut in_place = data.clone();
        assert!(b.update_in_place(&mut in_place));
        assert_eq!(in_place, copied);
        let (mut end_a, mut end_b) = (Vec::new(), Vec::new());
        a.finish(&mut end_a);
        b.finish(&mut end_b);
        assert_eq!(end_a, end_b);
        copied.extend_from_slice(&end_a);
        assert_eq!(copied, cbc_encrypt(&key, &data));
        assert_eq!(cbc_decrypt(&key, &copied).expect("valid"), data);
    }

    #[test]
    fn debug_output_never_contains_key_bytes() {
        let key = AesKey::from_bytes([0xAB; 16]);
        let s = format!("{key:?} {key:#?}");
        assert_eq!(format!("{key:?}"), "AesKey(<redacted>)");
        assert!(!s.to_lowercase().contains("ab"), "{s}");
        assert!(!s.contains("171"), "{s}");

        let private = RsaPrivateKey::from_pkcs8_der(PKCS8).expect("fixture key");
        assert_eq!(format!("{private:?}"), "RsaPrivateKey(<redacted>)");
        assert_eq!(format!("{private:#?}"), "RsaPrivateKey(<redacted>)");

        let enc = CbcEncryptor::new(&key);
        let dec = CbcDecryptor::new(&key);
        let s = format!("{enc:?} {dec:?}");
        assert!(!s.to_lowercase().contains("abab"), "{s}");
        assert!(!s.contains("171"), "{s}");

        let key = AesKey::from_slice(&[0xAB; 32]).expect("32 bytes");
        assert_eq!(format!("{key:?}"), "AesKey(<redacted>)");
        assert_eq!(format!("{key:#?}"), "AesKey(<redacted>)");
        let s = format!(
            "{:?} {:?}",
            CbcEncryptor::new(&key),
            CbcDecryptor::new(&key)
        );
        assert!(s.contains("Aes256"), "{s}");
        assert!(!s.to_lowercase().contains("abab"), "{s}");
        assert!(!s.contains("171"), "{s}");

        for e in [
            CryptoError::BadPublicKey,
            CryptoError::WrongKeySize { bits: 2048 },
            CryptoError::PublicKeyEncoding { len: 162 },
            CryptoError::BadPrivateKey,
            CryptoError::KeyGeneration,
            CryptoError::Encrypt,
            CryptoError::Decrypt,
            CryptoError::BadPadding,
        ] {
            assert!(!e.to_string().is_empty());
            assert!(!format!("{e:?}").is_empty());
        }
    }

    #[test]
    fn spki_fixture_parses_and_reencodes_identically() {
        let key = RsaPublicKey::from_spki_der(SPKI).expect("fixture SPKI");
        assert_eq!(key.modulus_bits(), 1024);
        assert_eq!(key.public_exponent(), Some(RSA_EXPONENT));
        assert_eq!(&key.to_spki_der().expect("160 bytes")[..], SPKI);
    }

    #[test]
    fn spki_with_trailing_bytes_or_zero_padding_is_rejected() {
        let mut long = SPKI.to_vec();
        long.push(0);
        assert_eq!(
            RsaPublicKey::from_spki_der(&long),
            Err(CryptoError::BadPublicKey)
        );
        assert_eq!(
            RsaPublicKey::from_spki_der(&SPKI[..159]),
            Err(CryptoError::BadPublicKey)
        );
        assert_eq!(
            RsaPublicKey::from_spki_der(&[0u8; PUBLIC_KEY_LEN]),
            Err(CryptoError::BadPublicKey)
        );
        assert_eq!(
            RsaPublicKey::from_spki_der(&[]),
            Err(CryptoError::BadPublicKey)
        );
    }

    #[test]
    fn spki_with_other_algorithm_oid_is_rejected() {
        // rsaEncryption 1.2.840.113549.1.1.1 -> 1.2.840.113549.1.1.2 (md2WithRSA).
        let mut der = SPKI.to_vec();
        assert_eq!(der[15], 0x01);
        der[15] = 0x02;
        assert_eq!(
            RsaPublicKey::from_spki_der(&der),
            Err(CryptoError::BadPublicKey)
        );
    }

    #[test]
    fn private_key_garbage_is_rejected() {
        assert_eq!(
            RsaPrivateKey::from_der(&[0u8; 64]).map(|_| ()),
            Err(CryptoError::BadPrivateKey)
        );
        let mut long = PKCS8.to_vec();
        long.push(0);
        assert_eq!(
            RsaPrivateKey::from_pkcs8_der(&long).map(|_| ()),
            Err(CryptoError::BadPrivateKey)
        );
    }

    #[test]
    fn oaep_round_trip_with_test_entropy() {
        let private = RsaPrivateKey::from_pkcs8_der(PKCS8).expect("fixture key");
        let public = private.public_key();
        let mut rng = TestEntropy::new(42);
        let key = AesKey::generate(&mut rng);
        let ct1 = public.encrypt_aes_key(&key, &mut rng).expect("encrypt");
        let ct2 = public.encrypt_aes_key(&key, &mut rng).expect("encrypt");
        assert_ne!(ct1, ct2, "OAEP is randomized");
        for ct in [ct1, ct2] {
            let back = private.decrypt_aes_key(&ct, &mut rng).expect("decrypt");
            assert_eq!(back, key);
        }
    }

    #[test]
    fn decrypting_garbage_is_an_error_not_a_panic() {
        let private = RsaPrivateKey::from_pkcs8_der(PKCS8).expect("fixture key");
        let mut rng = TestEntropy::new(3);
        for ct in [
            vec![],
            vec![0u8; 127],
            vec![0u8; 128],
            vec![0xFFu8; 128],
            vec![0x5Au8; 128],
            vec![1u8; 129],
        ] {
            assert_eq!(
                private.decrypt_aes_key(&ct, &mut rng),
                Err(CryptoError::Decrypt),
                "{}",
                hex(&ct)
            );
        }
    }

    #[test]
    fn oaep_of_a_message_neither_16_nor_32_bytes_is_refused() {
        let private = RsaPrivateKey::from_pkcs8_der(PKCS8).expect("fixture key");
        let mut rng = TestEntropy::new(5);
        for len in [0usize, 1, 15, 17, 24, 31, 33, 64, 86] {
            let mut adapter = EntropyRng(&mut rng);
            let ct = private
                .0
                .to_public_key()
                .oaep_encrypt_with_rng::<Sha1, _>(&mut adapter, &vec![1u8; len])
                .expect("encrypt");
            assert_eq!(
                private.decrypt_aes_key(&ct, &mut rng),
                Err(CryptoError::Decrypt),
                "{len} bytes"
            );
        }
    }

    #[test]
    fn encrypted_len_follows_pkcs7_rule() {
        for (n, want) in [(0, 16), (1, 16), (15, 16), (16, 32), (17, 32), (1000, 1008)] {
            assert_eq!(encrypted_len(n), want);
        }
        assert_eq!(
            encrypted_len(MAX_PLAINTEXT_SIZE),
            u64::from(MAX_CONTENT_SIZE)
        );
        assert_eq!(checked_encrypted_len(u64::MAX), None);
        assert_eq!(encrypted_len(u64::MAX), u64::MAX);
    }

    #[test]
    fn streaming_output_length_is_encrypted_len() {
        let key = test_key();
        for n in [0usize, 1, 15, 16, 17, 31, 32, 33, 100] {
            let data = vec![0x11u8; n];
            assert_eq!(
                stream_encrypt(&key, &data, 7).len() as u64,
                encrypted_len(n as u64)
            );
        }
    }

    #[test]
    fn in_place_update_equals_copying_update() {
        let key = AesKey::from_bytes([9; 16]);
        let data: Vec<u8> = (0..4096u32).map(|i| (i * 7) as u8).collect();
        let mut a = CbcEncryptor::new(&key);
        let mut b = CbcEncryptor::new(&key);
        let mut copied = Vec::new();
        a.update(&data, &mut copied);
        let mut in_place = data.clone();
        assert!(b.update_in_place(&mut in_place));
        assert_eq!(in_place, copied);
        // A carried partial block or a partial length refuses.
        let mut c = CbcEncryptor::new(&key);
        c.update(&data[..5], &mut Vec::new());
        assert!(!c.update_in_place(&mut data.clone()));
        assert!(!CbcEncryptor::new(&key).update_in_place(&mut data[..17].to_vec()));
        let (mut end_a, mut end_b) = (Vec::new(), Vec::new());
        a.finish(&mut end_a);
        b.finish(&mut end_b);
        assert_eq!(end_a, end_b);
    }

    #[test]
    fn encryptor_update_emits_only_whole_blocks() {
        let key = test_key();
        let mut enc = CbcEncryptor::new(&key);
        let mut out = Vec::new();
        enc.update(&[0u8; 15], &mut out);
        assert!(out.is_empty());
        enc.update(&[0u8; 2], &mut out);
        assert_eq!(out.len(), 16);
        enc.update(&[0u8; 40], &mut out);
        assert_eq!(out.len(), 48);
        enc.finish(&mut out);
        assert_eq!(out.len(), 64);
    }

    #[test]
    fn decryptor_holds_back_last_block_until_finish() {
        let key = test_key();
        let ct = cbc_encrypt(&key, &[7u8; 40]); // 48 bytes
        let mut dec = CbcDecryptor::new(&key);
        let mut out = Vec::new();
        dec.update(&ct[..16], &mut out);
        assert!(out.is_empty());
        dec.update(&ct[16..40], &mut out);
        assert_eq!(out.len(), 16);
        dec.update(&ct[40..], &mut out);
        assert_eq!(out.len(), 32);
        dec.finish(&mut out).expect("valid padding");
        assert_eq!(out, vec![7u8; 40]);
    }

    #[test]
    fn bad_padding_is_detected() {
        let key = test_key();
        let ct = cbc_encrypt(&key, b"hello, sealdrop");
        let mut bad = ct.clone();
        *bad.last_mut().expect("non-empty") ^= 1;
        assert_eq!(stream_decrypt(&key, &bad, 5), Err(CryptoError::BadPadding));
        assert_eq!(cbc_decrypt(&key, &bad), Err(CryptoError::BadPadding));
    }

    #[test]
    fn every_invalid_pad_value_is_rejected() {
        for key in [test_key(), test_key_256()] {
            // Build last blocks directly: encrypt raw blocks without padding.
            for pad in [0u8, 17, 0x80, 0xFF] {
                let mut ct = [pad; 16].to_vec();
                encrypt_raw_blocks(&key, &mut ct);
                assert_eq!(
                    stream_decrypt(&key, &ct, 16),
                    Err(CryptoError::BadPadding),
                    "pad {pad}"
                );
                assert_eq!(
                    cbc_decrypt(&key, &ct),
                    Err(CryptoError::BadPadding),
                    "pad {pad}"
                );
            }
            // Pad 3 with one wrong padding byte.
            let mut ct = [1u8, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 9, 3, 3].to_vec();
            encrypt_raw_blocks(&key, &mut ct);
            assert_eq!(stream_decrypt(&key, &ct, 3), Err(CryptoError::BadPadding));
            assert_eq!(cbc_decrypt(&key, &ct), Err(CryptoError::BadPadding));
            // The same block with the right padding decrypts.
            let mut ct = [1u8, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 3, 3, 3].to_vec();
            encrypt_raw_blocks(&key, &mut ct);
            let want = [1u8, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13];
            assert_eq!(stream_decrypt(&key, &ct, 3).as_deref(), Ok(&want[..]));
            assert_eq!(cbc_decrypt(&key, &ct).as_deref(), Ok(&want[..]));
        }
    }

    #[test]
    fn full_padding_block_decrypts_to_nothing() {
        let key = test_key();
        let ct = cbc_encrypt(&key, b"");
        assert_eq!(ct.len(), 16);
        assert_eq!(stream_decrypt(&key, &ct, 1), Ok(Vec::new()));
    }

    #[test]
    fn truncated_or_empty_ciphertext_is_an_error() {
        for key in [test_key(), test_key_256()] {
            let ct = cbc_encrypt(&key, &[3u8; 100]);
            for len in [0, 1, 15, 17, ct.len() - 1] {
                assert_eq!(
                    stream_decrypt(&key, &ct[..len], 4),
                    Err(CryptoError::BadPadding),
                    "len {len}"
                );
                assert_eq!(cbc_decrypt(&key, &ct[..len]), Err(CryptoError::BadPadding));
            }
        }
    }

    /// A PKCS#1 `RSAPublicKey` with an odd modulus of `bytes` bytes (top bit
    /// set) and e = 17, built by hand.
    fn pkcs1_public_of_size(bytes: usize) -> Vec<u8> {
        fn len(n: usize) -> Vec<u8> {
            match n {
                0..=0x7F => vec![n as u8],
                0x80..=0xFF => vec![0x81, n as u8],
                _ => vec![0x82, (n >> 8) as u8, n as u8],
            }
        }
        let mut modulus = vec![0x5Du8; bytes];
        modulus[0] = 0xC1;
        modulus[bytes - 1] = 0x35;
        let mut int = vec![0x02];
        int.extend(len(bytes + 1));
        int.push(0x00);
        int.extend(&modulus);
        int.extend([0x02, 0x01, 0x11]);
        let mut der = vec![0x30];
        der.extend(len(int.len()));
        der.extend(int);
        der
    }

    #[test]
    fn public_keys_of_other_sizes_report_their_size() {
        for (bytes, bits) in [(64, 512), (127, 1016), (129, 1032), (256, 2048)] {
            let der = pkcs1_public_of_size(bytes);
            assert_eq!(
                RsaPublicKey::from_pkcs1_der(&der),
                Err(CryptoError::WrongKeySize { bits }),
                "{bytes} bytes"
            );
            assert_eq!(
                RsaPublicKey::from_der_any(&der),
                Err(CryptoError::WrongKeySize { bits })
            );
        }
        // The same construction at 128 bytes is a valid 1024-bit key.
        let ok = RsaPublicKey::from_pkcs1_der(&pkcs1_public_of_size(128)).expect("1024 bits");
        assert_eq!(ok.to_spki_der().expect("160 bytes").len(), PUBLIC_KEY_LEN);
    }

    #[test]
    fn spki_with_another_one_byte_exponent_is_accepted() {
        // e = 17 -> e = 3: still a valid 1024-bit key, still 160 bytes.
        let mut der = SPKI.to_vec();
        assert_eq!(der[PUBLIC_KEY_LEN - 1], 0x11);
        der[PUBLIC_KEY_LEN - 1] = 0x03;
        let key = RsaPublicKey::from_spki_der(&der).expect("e = 3");
        assert_eq!(key.public_exponent(), Some(3));
        assert_eq!(&key.to_spki_der().expect("160 bytes")[..], &der[..]);
        // e = 16 (even) is not a valid RSA exponent.
        der[PUBLIC_KEY_LEN - 1] = 0x10;
        assert_eq!(
            RsaPublicKey::from_spki_der(&der),
            Err(CryptoError::BadPublicKey)
        );
    }

    /// The only RSA key generation of the test run (slow in debug builds).
    #[test]
    fn generated_key_has_160_byte_spki_and_works() {
        let mut rng = TestEntropy::new(0x5EA1_D809);
        let private = RsaPrivateKey::generate(&mut rng).expect("keygen");
        let public = private.public_key();
        assert_eq!(public.modulus_bits(), RSA_BITS);
        assert_eq!(public.public_exponent(), Some(RSA_EXPONENT));
        let spki = public.to_spki_der().expect("160 bytes");
        assert_eq!(&spki[..3], &[0x30, 0x81, 0x9d]);
        assert_eq!(RsaPublicKey::from_spki_der(&spki).expect("reparse"), public);

        let pkcs8 = private.to_pkcs8_der();
        let again = RsaPrivateKey::from_pkcs8_der(&pkcs8).expect("reparse pkcs8");
        assert_eq!(again.to_pkcs8_der(), pkcs8);
        assert_eq!(again.public_key(), public);

        let key = AesKey::generate(&mut rng);
        let ct = public.encrypt_aes_key(&key, &mut rng).expect("encrypt");
        assert_eq!(again.decrypt_aes_key(&ct, &mut rng).expect("decrypt"), key);
    }

    proptest! {
        #[test]
        fn streaming_cbc_equals_one_shot_for_any_chunking(
            data in proptest::collection::vec(any::<u8>(), 0..2048),
            cuts in proptest::collection::vec(0usize..2048, 0..10),
            key in any::<[u8; 32]>(),
            wide in any::<bool>(),
        ) {
            let key = if wide {
                AesKey::from_slice(&key).expect("32 bytes")
            } else {
                AesKey::from_slice(&key[..16]).expect("16 bytes")
            };
            let one_shot = cbc_encrypt(&key, &data);
            prop_assert_eq!(one_shot.len() as u64, encrypted_len(data.len() as u64));

            let mut enc = CbcEncryptor::new(&key);
            let mut ct = Vec::new();
            let mut pts: Vec<usize> = cuts.iter().map(|c| c % (data.len() + 1)).collect();
            pts.sort_unstable();
            let mut start = 0;
            for &p in &pts {
                enc.update(&data[start..p], &mut ct);
                start = p;
            }
            enc.update(&data[start..], &mut ct);
            enc.finish(&mut ct);
            prop_assert_eq!(&ct, &one_shot);

            let mut dec = CbcDecryptor::new(&key);
            let mut pt = Vec::new();
            let mut qts: Vec<usize> = cuts.iter().map(|c| c % (ct.len() + 1)).collect();
            qts.sort_unstable();
            let mut start = 0;
            for &q in &qts {
                dec.update(&ct[start..q], &mut pt);
                start = q;
            }
            dec.update(&ct[start..], &mut pt);
            dec.finish(&mut pt).expect("valid");
            prop_assert_eq!(&pt, &data);
            prop_assert_eq!(cbc_decrypt(&key, &ct).expect("valid"), data);
        }

        #[test]
        fn decrypting_random_bytes_never_panics(
            data in proptest::collection::vec(any::<u8>(), 0..200),
            chunk in 1usize..40,
            wide in any::<bool>(),
        ) {
            let key = if wide { test_key_256() } else { test_key() };
            let streamed = stream_decrypt(&key, &data, chunk);
            let one_shot = cbc_decrypt(&key, &data);
            prop_assert_eq!(streamed, one_shot);
        }

        #[test]
        fn spki_parser_never_panics_on_mutations(pos in 0usize..PUBLIC_KEY_LEN, val in any::<u8>()) {
            let mut der = SPKI.to_vec();
            der[pos] = val;
            let _ = RsaPublicKey::from_spki_der(&der);
            let _ = RsaPublicKey::from_der_any(&der);
        }
    }
}
