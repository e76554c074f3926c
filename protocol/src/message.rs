//! Requests and responses, and their encoders (PROTOCOL.md §1-§3, §9).
//!
//! Codes and payload layouts go through a [`Revision`] (a table, see
//! [`crate::revision`]): the rest of the crate talks in [`RequestKind`]
//! and [`ResponseKind`], never in raw numbers.

use crate::consts::*;
use crate::wire::{ClientId, FixedName};

pub use crate::kind::{RequestKind, ResponseKind};
pub use crate::packets::PacketHeader;
pub use crate::revision::Revision;

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

    /// Appends the whole frame, header included, to `out`. In 2022c the
    /// verdicts repeat the client id first (§9).
    pub fn encode(&self, rev: Revision, client_id: &ClientId, out: &mut Vec<u8>) {
        let kind = self.kind();
        let size = rev.fixed_payload_size(kind).unwrap_or(0);
        encode_request_header(rev, client_id, kind, size, out);
        let verdict = matches!(
            kind,
            RequestKind::CrcOk | RequestKind::CrcBad | RequestKind::CrcGiveUp
        );
        if verdict && rev.id_in_payload() {
            out.extend_from_slice(&client_id.0);
        }
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

/// Appends a request header to `out`. The revision must have `kind`
/// (2022c has no reconnect); a caller asking for one it lacks gets code 0,
/// which every server refuses.
pub fn encode_request_header(
    rev: Revision,
    client_id: &ClientId,
    kind: RequestKind,
    payload_size: u32,
    out: &mut Vec<u8>,
) {
    let code = rev.request_code(kind);
    debug_assert!(code.is_some(), "{rev} has no {kind:?}");
    out.extend_from_slice(&client_id.0);
    out.push(PROTOCOL_VERSION);
    out.extend_from_slice(&code.unwrap_or(0).to_le_bytes());
    out.extend_from_slice(&payload_size.to_le_bytes());
}

/// Appends the header and fixed prefix of a single-message file request
/// (1028, 1103: everything before the content) to `out`, for a revision
/// whose layout is [`FileLayout::Single`]. `content_size` must be a
/// non-zero multiple of 16 no larger than [`MAX_CONTENT_SIZE`]; the caller
/// streams the content after.
///
/// [`FileLayout::Single`]: crate::revision::FileLayout::Single
pub fn encode_file_header(
    rev: Revision,
    client_id: &ClientId,
    content_size: u32,
    file_name: &FixedName,
    out: &mut Vec<u8>,
) {
    debug_assert!(content_size <= MAX_CONTENT_SIZE);
    debug_assert_eq!(rev.file_layout(), crate::revision::FileLayout::Single);
    let payload = content_size.saturating_add(rev.file_prefix_len() as u32);
    encode_request_header(rev, client_id, RequestKind::SendFile, payload, out);
    if rev.id_in_payload() {
        out.extend_from_slice(&client_id.0);
    }
    out.extend_from_slice(&content_size.to_le_bytes());
    out.extend_from_slice(file_name.raw());
}

/// Appends the header and fixed prefix of a 2024 file packet carrying
/// `data_len` content bytes to `out`; the caller appends the bytes.
pub fn encode_packet_header(
    rev: Revision,
    client_id: &ClientId,
    packet: &PacketHeader,
    file_name: &FixedName,
    data_len: u32,
    out: &mut Vec<u8>,
) {
    debug_assert_eq!(rev.file_layout(), crate::revision::FileLayout::Packets);
    let payload = data_len.saturating_add(rev.file_prefix_len() as u32);
    encode_request_header(rev, client_id, RequestKind::SendFile, payload, out);
    out.extend_from_slice(&packet.content_size.to_le_bytes());
    out.extend_from_slice(&packet.orig_size.to_le_bytes());
    out.extend_from_slice(&packet.first.to_le_bytes());
    out.extend_from_slice(&packet.second.to_le_bytes());
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

    /// Appends the whole frame, header included, to `out`. The revision
    /// must have the response (2022c has no 2105-2107).
    pub fn encode(&self, rev: Revision, out: &mut Vec<u8>) {
        let kind = self.kind();
        let code = rev.response_code(kind);
        debug_assert!(code.is_some(), "{rev} has no {kind:?}");
        out.push(PROTOCOL_VERSION);
        out.extend_from_slice(&code.unwrap_or(0).to_le_bytes());
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
            assert_eq!(rev.request_code(*k), Some(1025 + i as u16));
            assert_eq!(rev.request_kind(1025 + i as u16), Some(*k));
        }
        for (i, k) in ResponseKind::ALL.iter().enumerate() {
            assert_eq!(rev.response_code(*k), Some(2100 + i as u16));
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
