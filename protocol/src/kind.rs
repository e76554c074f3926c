//! What requests and responses mean, independent of any revision's
//! numbers (PROTOCOL.md §2, §3, §9).

use crate::consts::*;

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
    /// Every kind, by offset from the response base (§9).
    pub const ALL: [ResponseKind; 8] = [
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
    /// Every kind, in the order of the codes (§2).
    pub const ALL: [RequestKind; 7] = [
        RequestKind::Register,
        RequestKind::PublicKey,
        RequestKind::Reconnect,
        RequestKind::SendFile,
        RequestKind::CrcOk,
        RequestKind::CrcBad,
        RequestKind::CrcGiveUp,
    ];

    /// Position in [`RequestKind::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}
