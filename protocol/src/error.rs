//! Errors of the decoders and sessions, and how each maps to the wire.

use std::fmt;

use crate::message::ResponseKind;

/// A frame that cannot be decoded. Framing is lost after any of these, so
/// the server answers 2107 and closes (§3), except for [`Truncated`]
/// where the peer is already gone.
///
/// [`Truncated`]: DecodeError::Truncated
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeError {
    /// The header carries a code this revision does not have.
    UnknownCode {
        /// The code received.
        code: u16,
    },
    /// payload_size is not the one the code requires (§2 table).
    BadPayloadSize {
        /// The code received.
        code: u16,
        /// The payload_size received.
        got: u32,
        /// The payload_size that code requires.
        expected: u32,
    },
    /// A 1028 whose content_size is zero, not a multiple of 16, or not
    /// payload_size - 259 (§2).
    BadContentSize {
        /// content_size as received (0 if the payload is too short to hold it).
        content_size: u32,
        /// payload_size as received.
        payload_size: u32,
    },
    /// A 1028 larger than the receiver is configured to accept.
    ContentTooLarge {
        /// content_size as declared by the header.
        content_size: u64,
        /// The configured limit.
        limit: u64,
    },
    /// A 255-byte string field with no NUL (§1).
    NameWithoutNul,
    /// The stream ended in the middle of a frame.
    Truncated,
}

impl DecodeError {
    /// The response a server sends for this error before closing, if any.
    pub fn response(&self) -> Option<ResponseKind> {
        match self {
            DecodeError::Truncated => None,
            _ => Some(ResponseKind::GeneralError),
        }
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::UnknownCode { code } => write!(f, "unknown code {code}"),
            DecodeError::BadPayloadSize {
                code,
                got,
                expected,
            } => write!(
                f,
                "code {code} with payload_size {got}, the protocol requires {expected}"
            ),
            DecodeError::BadContentSize {
                content_size,
                payload_size,
            } => write!(
                f,
                "file with content_size {content_size} and payload_size {payload_size}: \
                 content_size must be a non-zero multiple of 16 equal to payload_size - 259"
            ),
            DecodeError::ContentTooLarge {
                content_size,
                limit,
            } => write!(
                f,
                "file of {content_size} encrypted bytes exceeds the limit of {limit}"
            ),
            DecodeError::NameWithoutNul => f.write_str("name field without a NUL terminator"),
            DecodeError::Truncated => f.write_str("stream ended inside a frame"),
        }
    }
}

impl std::error::Error for DecodeError {}
