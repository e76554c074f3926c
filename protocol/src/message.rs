//! Requests and responses of revision 2023c, their codes, and encoders
//! (PROTOCOL.md §1-§3).
//!
//! Codes go through a [`Revision`] so the other published revisions (§9)
//! can be added as further tables: the rest of the crate talks in
//! [`RequestKind`] and [`ResponseKind`], never in raw numbers.

use crate::consts::*;
use crate::wire::{ClientId, FixedName};

/// What a request asks for, independent of the numeric code (§2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RequestKind {
    /// Register a new client (1025).
    Register,
    /// Send the client's public key (1026).
    PublicKey,
    /// Reconnect as a known client (1027).
    Reconnect,
    /// Send a file (1028).
    SendFile,
    /// The cksum matched (1029).
    CrcOk,
    /// The cksum did not match; the file follows again (1030).
    CrcBad,
    /// The cksum did not match a fourth time; giving up (1031).
    CrcGiveUp,
}

/// What a response says, independent of the numeric code (§3). The
/// discriminant is the offset from the revision's response base (§9).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ResponseKind {
    /// 2100: registered.
    Registered = 0,
    /// 2101: registration failed.
    RegistrationFailed = 1,
    /// 2102: public key accepted, AES key follows.
    KeyAccepted = 2,
    /// 2103: file received, with its cksum.
    FileReceived = 3,
    /// 2104: acknowledged.
    Ack = 4,
    /// 2105: reconnect accepted, AES key follows.
    ReconnectAccepted = 5,
    /// 2106: reconnect denied.
    ReconnectDenied = 6,
    /// 2107: general server error.
    GeneralError = 7,
}

impl ResponseKind {
    const ALL: [ResponseKind; 8] = [
        ResponseKind::Registered,
        ResponseKind::RegistrationFailed,
        ResponseKind::KeyAccepted,
        ResponseKind::FileReceived,
        ResponseKind::Ack,
        ResponseKind::ReconnectAccepted,
        ResponseKind::ReconnectDenied,
        ResponseKind::GeneralError,
    ];

    /// The exact payload_size of this response (§3 table).
    pub fn payload_size(self) -> u32 {
        match self {
            ResponseKind::Registered | ResponseKind::Ack | ResponseKind::ReconnectDenied => {
                CLIENT_ID_LEN as u32
            }
            ResponseKind::RegistrationFailed | ResponseKind::GeneralError => 0,
            ResponseKind::KeyAccepted | ResponseKind::ReconnectAccepted => {
                (CLIENT_ID_LEN + ENCRYPTED_KEY_LEN) as u32
            }
            ResponseKind::FileReceived => (CLIENT_ID_LEN + 4 + NAME_LEN + 4) as u32,
        }
    }
}

impl RequestKind {
    const ALL: [RequestKind; 7] = [
        RequestKind::Register,
        RequestKind::PublicKey,
        RequestKind::Reconnect,
        RequestKind::SendFile,
        RequestKind::CrcOk,
        RequestKind::CrcBad,
        RequestKind::CrcGiveUp,
    ];

    /// The exact payload_size of this request, or `None` for 1028 whose
    /// size is 259 + content_size (§2 table).
    pub fn fixed_payload_size(self) -> Option<u32> {
        match self {
            RequestKind::PublicKey => Some((NAME_LEN + PUBLIC_KEY_LEN) as u32),
            RequestKind::SendFile => None,
            _ => Some(NAME_LEN as u32),
        }
    }
}

/// A published revision of the protocol (§9). Only 2023c is implemented;
/// each further one is a new variant with its own code table and, where
/// its payloads differ, its own branch in the decoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Revision {
    /// Revision 2023c: requests 1025-1031, responses 2100-2107, AES-128.
    #[default]
    R2023c,
}

impl Revision {
    /// The numeric code of a request kind.
    pub fn request_code(self, kind: RequestKind) -> u16 {
        match self {
            Revision::R2023c => {
                1025 + RequestKind::ALL
                    .iter()
                    .position(|k| *k == kind)
                    .unwrap_or(0) as u16
            }
        }
    }

    /// The request kind of a numeric code, if this revision has it.
    pub fn request_kind(self, code: u16) -> Option<RequestKind> {
        match self {
            Revision::R2023c => RequestKind::ALL
                .get(code.checked_sub(1025)? as usize)
                .copied(),
        }
    }

    /// The numeric code of a response kind: base + offset (§9).
    pub fn response_code(self, kind: ResponseKind) -> u16 {
        match self {
            Revision::R2023c => 2100 + kind as u16,
        }
    }

    /// The response kind of a numeric code, if this revision has it.
    pub fn response_kind(self, code: u16) -> Option<ResponseKind> {
        match self {
            Revision::R2023c => ResponseKind::ALL
                .get(code.checked_sub(2100)? as usize)
                .copied(),
        }
    }

    /// Length of the AES key this revision uses (§9).
    pub fn aes_key_len(self) -> usize {
        AES_KEY_LEN
    }
}

/// The fields of a request header (§1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestHeader {
    /// The sender's client id (ignored in 1025).
    pub client_id: ClientId,
    /// The version byte, accepted whatever it is.
    pub version: u8,
    /// What the request asks for.
    pub kind: RequestKind,
    /// Bytes after the header.
    pub payload_size: u32,
}

/// A complete request other than the content of a 1028 (§2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// 1025.
    Register {
        /// The client's name.
        name: FixedName,
    },
    /// 1026.
    PublicKey {
        /// The client's name.
        name: FixedName,
        /// SubjectPublicKeyInfo DER, 160 bytes (§4).
        public_key: Box<[u8; PUBLIC_KEY_LEN]>,
    },
    /// 1027.
    Reconnect {
        /// The client's name.
        name: FixedName,
    },
    /// 1029.
    CrcOk {
        /// The file the verdict is about.
        file_name: FixedName,
    },
    /// 1030.
    CrcBad {
        /// The file the verdict is about.
        file_name: FixedName,
    },
    /// 1031.
    CrcGiveUp {
        /// The file the verdict is about.
        file_name: FixedName,
    },
}

impl Request {
    /// The kind of this request.
    pub fn kind(&self) -> RequestKind {
        match self {
            Request::Register { .. } => RequestKind::Register,
            Request::PublicKey { .. } => RequestKind::PublicKey,
            Request::Reconnect { .. } => RequestKind::Reconnect,
            Request::CrcOk { .. } => RequestKind::CrcOk,
            Request::CrcBad { .. } => RequestKind::CrcBad,
            Request::CrcGiveUp { .. } => RequestKind::CrcGiveUp,
        }
    }

    /// Appends the whole frame, header included, to `out`.
    pub fn encode(&self, rev: Revision, client_id: &ClientId, out: &mut Vec<u8>) {
        let kind = self.kind();
        let size = kind.fixed_payload_size().unwrap_or(0);
        encode_request_header(rev, client_id, kind, size, out);
        match self {
            Request::Register { name } | Request::Reconnect { name } => {
                out.extend_from_slice(name.raw())
            }
            Request::PublicKey { name, public_key } => {
                out.extend_from_slice(name.raw());
                out.extend_from_slice(&public_key[..]);
            }
            Request::CrcOk { file_name }
            | Request::CrcBad { file_name }
            | Request::CrcGiveUp { file_name } => out.extend_from_slice(file_name.raw()),
        }
    }
}

/// Appends a request header to `out`.
pub fn encode_request_header(
    rev: Revision,
    client_id: &ClientId,
    kind: RequestKind,
    payload_size: u32,
    out: &mut Vec<u8>,
) {
    out.extend_from_slice(&client_id.0);
    out.push(PROTOCOL_VERSION);
    out.extend_from_slice(&rev.request_code(kind).to_le_bytes());
    out.extend_from_slice(&payload_size.to_le_bytes());
}

/// Appends the header and fixed prefix of a 1028 (everything before the
/// content) to `out`. `content_size` must be a non-zero multiple of 16 no
/// larger than [`MAX_CONTENT_SIZE`]; the caller streams the content after.
pub fn encode_file_header(
    rev: Revision,
    client_id: &ClientId,
    content_size: u32,
    file_name: &FixedName,
    out: &mut Vec<u8>,
) {
    debug_assert!(content_size <= MAX_CONTENT_SIZE);
    let payload = content_size.saturating_add(FILE_PREFIX_LEN as u32);
    encode_request_header(rev, client_id, RequestKind::SendFile, payload, out);
    out.extend_from_slice(&content_size.to_le_bytes());
    out.extend_from_slice(file_name.raw());
}

/// A complete response (§3).
// One response is decoded at a time, so the 2103 variant's inline 255-byte
// name costs nothing; boxing it would add an allocation per response.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    /// 2100.
    Registered {
        /// The id issued to the client.
        client_id: ClientId,
    },
    /// 2101.
    RegistrationFailed,
    /// 2102.
    KeyAccepted {
        /// The client's id.
        client_id: ClientId,
        /// The AES key under RSA-OAEP (§4).
        encrypted_key: Box<[u8; ENCRYPTED_KEY_LEN]>,
    },
    /// 2103.
    FileReceived {
        /// The client's id.
        client_id: ClientId,
        /// The content_size of the 1028, echoed.
        content_size: u32,
        /// The file_name field of the 1028, echoed byte for byte.
        file_name: FixedName,
        /// POSIX cksum of the decrypted plaintext (§5).
        cksum: u32,
    },
    /// 2104.
    Ack {
        /// The client's id.
        client_id: ClientId,
    },
    /// 2105.
    ReconnectAccepted {
        /// The client's id.
        client_id: ClientId,
        /// The AES key under RSA-OAEP (§4).
        encrypted_key: Box<[u8; ENCRYPTED_KEY_LEN]>,
    },
    /// 2106.
    ReconnectDenied {
        /// The client id of the refused 1027, echoed.
        client_id: ClientId,
    },
    /// 2107.
    GeneralError,
}

impl Response {
    /// The kind of this response.
    pub fn kind(&self) -> ResponseKind {
        match self {
            Response::Registered { .. } => ResponseKind::Registered,
            Response::RegistrationFailed => ResponseKind::RegistrationFailed,
            Response::KeyAccepted { .. } => ResponseKind::KeyAccepted,
            Response::FileReceived { .. } => ResponseKind::FileReceived,
            Response::Ack { .. } => ResponseKind::Ack,
            Response::ReconnectAccepted { .. } => ResponseKind::ReconnectAccepted,
            Response::ReconnectDenied { .. } => ResponseKind::ReconnectDenied,
            Response::GeneralError => ResponseKind::GeneralError,
        }
    }

    /// Appends the whole frame, header included, to `out`.
    pub fn encode(&self, rev: Revision, out: &mut Vec<u8>) {
        let kind = self.kind();
        out.push(PROTOCOL_VERSION);
        out.extend_from_slice(&rev.response_code(kind).to_le_bytes());
        out.extend_from_slice(&kind.payload_size().to_le_bytes());
        match self {
            Response::Registered { client_id }
            | Response::Ack { client_id }
            | Response::ReconnectDenied { client_id } => out.extend_from_slice(&client_id.0),
            Response::KeyAccepted {
                client_id,
                encrypted_key,
            }
            | Response::ReconnectAccepted {
                client_id,
                encrypted_key,
            } => {
                out.extend_from_slice(&client_id.0);
                out.extend_from_slice(&encrypted_key[..]);
            }
            Response::FileReceived {
                client_id,
                content_size,
                file_name,
                cksum,
            } => {
                out.extend_from_slice(&client_id.0);
                out.extend_from_slice(&content_size.to_le_bytes());
                out.extend_from_slice(file_name.raw());
                out.extend_from_slice(&cksum.to_le_bytes());
            }
            Response::RegistrationFailed | Response::GeneralError => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_tables_round_trip() {
        let rev = Revision::R2023c;
        for (i, k) in RequestKind::ALL.iter().enumerate() {
            assert_eq!(rev.request_code(*k), 1025 + i as u16);
            assert_eq!(rev.request_kind(1025 + i as u16), Some(*k));
        }
        for (i, k) in ResponseKind::ALL.iter().enumerate() {
            assert_eq!(rev.response_code(*k), 2100 + i as u16);
            assert_eq!(rev.response_kind(2100 + i as u16), Some(*k));
        }
        assert_eq!(rev.request_kind(1024), None);
        assert_eq!(rev.request_kind(1032), None);
        assert_eq!(rev.response_kind(2108), None);
        assert_eq!(rev.response_kind(0), None);
    }

    #[test]
    fn response_header_bytes() {
        let mut out = Vec::new();
        Response::GeneralError.encode(Revision::R2023c, &mut out);
        assert_eq!(out, [3, 0x3b, 0x08, 0, 0, 0, 0]);
    }
}
