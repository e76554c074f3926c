//! Low-level wire pieces: the client id, the 255-byte NUL-terminated name
//! field, and little-endian helpers (PROTOCOL.md §1).

use std::fmt;

use crate::consts::{CLIENT_ID_LEN, NAME_LEN, NAME_MAX_TEXT};
use crate::error::DecodeError;

/// The 16-byte client id issued in 2100. Opaque: compared as bytes (§1).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct ClientId(pub [u8; CLIENT_ID_LEN]);

impl ClientId {
    /// The all-zero id a 1025 carries before the client has one.
    pub const ZERO: ClientId = ClientId([0; CLIENT_ID_LEN]);

    /// The id as 32 lower-case hex digits (the form `me.info` and the
    /// storage folders use, §7, §8).
    pub fn to_hex(&self) -> String {
        let mut s = String::with_capacity(CLIENT_ID_LEN * 2);
        for b in self.0 {
            s.push(char::from_digit((b >> 4) as u32, 16).unwrap_or('0'));
            s.push(char::from_digit((b & 15) as u32, 16).unwrap_or('0'));
        }
        s
    }

    /// Parses 32 hex digits, upper or lower case (§7).
    pub fn from_hex(text: &str) -> Option<ClientId> {
        let t = text.as_bytes();
        if t.len() != CLIENT_ID_LEN * 2 {
            return None;
        }
        let mut id = [0u8; CLIENT_ID_LEN];
        for (i, pair) in t.chunks_exact(2).enumerate() {
            let hi = (pair[0] as char).to_digit(16)?;
            let lo = (pair[1] as char).to_digit(16)?;
            id[i] = (hi << 4 | lo) as u8;
        }
        Some(ClientId(id))
    }
}

impl fmt::Debug for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClientId({})", self.to_hex())
    }
}

impl fmt::Display for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// A 255-byte string field: text, a NUL terminator, then padding (§1).
///
/// The raw 255 bytes are kept as received, because 2103 echoes them
/// exactly (§3); [`FixedName::text`] gives the bytes before the first NUL.
#[derive(Clone, PartialEq, Eq)]
pub struct FixedName {
    raw: [u8; NAME_LEN],
    text_len: u8,
}

impl FixedName {
    /// Builds a field from text: 1 to 254 bytes with no NUL, padded with NULs.
    pub fn new(text: &[u8]) -> Result<FixedName, NameError> {
        if text.is_empty() {
            return Err(NameError::Empty);
        }
        if text.len() > NAME_MAX_TEXT {
            return Err(NameError::TooLong { len: text.len() });
        }
        if text.contains(&0) {
            return Err(NameError::ContainsNul);
        }
        let mut raw = [0u8; NAME_LEN];
        raw[..text.len()].copy_from_slice(text);
        Ok(FixedName {
            raw,
            text_len: text.len() as u8,
        })
    }

    /// Reads a received field. A field with no NUL in its 255 bytes is
    /// invalid (§1); bytes after the first NUL are kept for the echo but
    /// are not part of the text. An empty text is decodable here (the
    /// session refuses it where the protocol says so).
    pub fn from_field(raw: &[u8; NAME_LEN]) -> Result<FixedName, DecodeError> {
        match raw.iter().position(|&b| b == 0) {
            Some(n) => Ok(FixedName {
                raw: *raw,
                text_len: n as u8,
            }),
            None => Err(DecodeError::NameWithoutNul),
        }
    }

    /// The text: the bytes before the first NUL.
    pub fn text(&self) -> &[u8] {
        &self.raw[..self.text_len as usize]
    }

    /// The text if it is printable ASCII (0x20..=0x7e) and not empty: the
    /// rule for client names (§3, 2101).
    pub fn printable(&self) -> Option<&str> {
        let t = self.text();
        if t.is_empty() || !t.iter().all(|b| (0x20..=0x7e).contains(b)) {
            return None;
        }
        std::str::from_utf8(t).ok()
    }

    /// The 255 bytes exactly as they are on the wire.
    pub fn raw(&self) -> &[u8; NAME_LEN] {
        &self.raw
    }
}

impl fmt::Debug for FixedName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FixedName({:?})", String::from_utf8_lossy(self.text()))
    }
}

/// Why a text cannot be put in a name field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameError {
    /// The text is empty.
    Empty,
    /// The text is longer than 254 bytes.
    TooLong {
        /// Its length in bytes.
        len: usize,
    },
    /// The text contains a NUL byte.
    ContainsNul,
}

impl fmt::Display for NameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NameError::Empty => f.write_str("name is empty"),
            NameError::TooLong { len } => {
                write!(f, "name is {len} bytes long, at most {NAME_MAX_TEXT} fit")
            }
            NameError::ContainsNul => f.write_str("name contains a NUL byte"),
        }
    }
}

impl std::error::Error for NameError {}

/// Reduces a received file name to the part after the last `/` or `\`
/// (§2: some peers send full paths) and refuses an empty result, `.`,
/// `..`, and names with control or non-ASCII bytes. Returns the base name.
pub fn sanitize_file_name(text: &[u8]) -> Option<&str> {
    let start = text
        .iter()
        .rposition(|&b| b == b'/' || b == b'\\')
        .map_or(0, |i| i + 1);
    let base = &text[start..];
    if base.is_empty() || base == b"." || base == b".." {
        return None;
    }
    if !base.iter().all(|b| (0x20..=0x7e).contains(b)) {
        return None;
    }
    std::str::from_utf8(base).ok()
}

/// Reads a little-endian u16 at `at`.
pub(crate) fn le_u16(buf: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([buf[at], buf[at + 1]])
}

/// Reads a little-endian u32 at `at`.
pub(crate) fn le_u32(buf: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_name_without_nul() {
        assert_eq!(
            FixedName::from_field(&[b'A'; NAME_LEN]),
            Err(DecodeError::NameWithoutNul)
        );
    }

    #[test]
    fn keeps_bytes_after_nul_for_echo() {
        let mut raw = [0u8; NAME_LEN];
        raw[..3].copy_from_slice(b"abc");
        raw[10] = b'x';
        let n = FixedName::from_field(&raw).unwrap();
        assert_eq!(n.text(), b"abc");
        assert_eq!(n.raw()[10], b'x');
    }

    #[test]
    fn new_name_limits() {
        assert_eq!(FixedName::new(b""), Err(NameError::Empty));
        assert!(FixedName::new(&[b'a'; 254]).is_ok());
        assert_eq!(
            FixedName::new(&[b'a'; 255]),
            Err(NameError::TooLong { len: 255 })
        );
        assert_eq!(FixedName::new(b"a\0b"), Err(NameError::ContainsNul));
    }

    #[test]
    fn printable_refuses_control_and_non_ascii() {
        assert_eq!(FixedName::new(b"alice").unwrap().printable(), Some("alice"));
        assert_eq!(FixedName::new(b"al\x07ice").unwrap().printable(), None);
        assert_eq!(FixedName::new("é".as_bytes()).unwrap().printable(), None);
    }

    #[test]
    fn sanitizer_takes_base_name() {
        assert_eq!(sanitize_file_name(b"C:\\Users\\bob\\a.txt"), Some("a.txt"));
        assert_eq!(sanitize_file_name(b"/etc/passwd"), Some("passwd"));
        assert_eq!(sanitize_file_name(b"../../x"), Some("x"));
        assert_eq!(sanitize_file_name(b"dir/.."), None);
        assert_eq!(sanitize_file_name(b"."), None);
        assert_eq!(sanitize_file_name(b"a/"), None);
        assert_eq!(sanitize_file_name(b""), None);
        assert_eq!(sanitize_file_name(b"a\nb"), None);
        assert_eq!(sanitize_file_name("é".as_bytes()), None);
    }

    #[test]
    fn client_id_hex_round_trip() {
        let id = ClientId([0xab; 16]);
        assert_eq!(ClientId::from_hex(&id.to_hex()), Some(id));
        assert_eq!(ClientId::from_hex(&id.to_hex().to_uppercase()), Some(id));
        assert_eq!(ClientId::from_hex("zz"), None);
    }
}
