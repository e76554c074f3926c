//! The client's reader of the response stream: strict where framing is at
//! stake, tolerant of what public servers are known to send (PROTOCOL.md
//! §3, §9.1), and able to say when a server answers in another
//! revision's numbering.
//!
//! What it accepts beyond the letter of §3:
//!
//! * any version byte (§1; some 2024 servers send 1);
//! * an ack (2104/1604) with an empty payload (2022c servers, some 2024
//!   servers): read as an ack with a zero client id, which no caller
//!   checks;
//! * in 2022c, the codes 2105-2107 that revision lacks, read with their
//!   2023 meanings (a 2107 is retried like anywhere else).
//!
//! A 1604 whose header says 16 bytes and which is followed by 255 more
//! needs nothing here: after the final ack the client reads nothing more
//! (the session is over and the driver closes the connection).
//!
//! A code from the other response range (2100-2107 to a 2024 client,
//! 1600-1607 to any other) is [`ResponseError::ForeignRevision`]; any
//! other unknown code, or a payload_size the kind does not have, is a
//! [`DecodeError`]. Errors are sticky.

use std::fmt;

use crate::consts::*;
use crate::error::DecodeError;
use crate::message::{Response, ResponseKind, Revision};
use crate::wire::{le_u16, le_u32};

/// Largest response: 2103 (§3).
const MAX_RESPONSE: usize = RESPONSE_HEADER_LEN + CLIENT_ID_LEN + 4 + NAME_LEN + 4;

/// Why the response stream cannot be read on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResponseError {
    /// The frame does not decode (unknown code, wrong payload_size, a name
    /// without NUL); framing is lost.
    Decode(DecodeError),
    /// The server answered with a code of another revision's numbering.
    ForeignRevision {
        /// The code received.
        code: u16,
    },
}

impl fmt::Display for ResponseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ResponseError::Decode(e) => write!(f, "undecodable response: {e}"),
            ResponseError::ForeignRevision { code } => {
                write!(f, "response code {code} belongs to another revision")
            }
        }
    }
}

impl std::error::Error for ResponseError {}

impl From<DecodeError> for ResponseError {
    fn from(e: DecodeError) -> Self {
        ResponseError::Decode(e)
    }
}

/// The revisions other than `ours` that have response code `code`, the
/// likeliest first: those that share our request codes (a 2023c client
/// talking to a 2024a server, or the other way round), then the rest,
/// newest first. Empty when no revision has the code.
pub fn revisions_with_response(ours: Revision, code: u16) -> Vec<Revision> {
    let register = crate::kind::RequestKind::Register;
    let shares_requests = |r: Revision| r.request_code(register) == ours.request_code(register);
    let mut found: Vec<Revision> = Revision::ALL
        .iter()
        .rev()
        .copied()
        .filter(|r| *r != ours && r.response_kind(code).is_some())
        .collect();
    found.sort_by_key(|r| !shares_requests(*r));
    found
}

/// The response kind of `code` as a client of `rev` reads it: the eight
/// codes from the revision's base on (2022c included, see the module
/// documentation).
fn kind_of(rev: Revision, code: u16) -> Option<ResponseKind> {
    let offset = code.checked_sub(rev.spec().response_base)?;
    ResponseKind::ALL.get(usize::from(offset)).copied()
}

/// Streaming reader of the responses a client receives. Each response is
/// buffered whole (at most 286 bytes).
#[derive(Debug)]
pub struct ResponseReader {
    rev: Revision,
    buf: Vec<u8>,
    /// The kind and payload length of the frame being read.
    head: Option<(ResponseKind, usize)>,
    failed: Option<ResponseError>,
}

impl ResponseReader {
    /// A reader for a client of revision `rev`.
    pub fn new(rev: Revision) -> Self {
        ResponseReader {
            rev,
            buf: Vec::with_capacity(MAX_RESPONSE),
            head: None,
            failed: None,
        }
    }

    /// Decodes the next response from `input`, advancing it past the
    /// bytes used; `Ok(None)` when more bytes are needed.
    pub fn decode(&mut self, input: &mut &[u8]) -> Result<Option<Response>, ResponseError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let result = self.step(input);
        if let Err(e) = &result {
            self.failed = Some(e.clone());
        }
        result
    }

    /// True when no response is partly received.
    pub fn is_between_frames(&self) -> bool {
        self.buf.is_empty() && self.failed.is_none()
    }

    fn step(&mut self, input: &mut &[u8]) -> Result<Option<Response>, ResponseError> {
        let (kind, len) = match self.head {
            Some(head) => head,
            None => {
                if !fill(&mut self.buf, RESPONSE_HEADER_LEN, input) {
                    return Ok(None);
                }
                let head = self.check_header()?;
                self.head = Some(head);
                head
            }
        };
        if !fill(&mut self.buf, RESPONSE_HEADER_LEN + len, input) {
            return Ok(None);
        }
        let response = crate::decode::parse_response(kind, &self.buf[RESPONSE_HEADER_LEN..])?;
        self.buf.clear();
        self.head = None;
        Ok(Some(response))
    }

    /// The kind and payload length a header announces, if acceptable.
    fn check_header(&self) -> Result<(ResponseKind, usize), ResponseError> {
        let code = le_u16(&self.buf, 1);
        let size = le_u32(&self.buf, 3);
        let Some(kind) = kind_of(self.rev, code) else {
            if !revisions_with_response(self.rev, code).is_empty() {
                return Err(ResponseError::ForeignRevision { code });
            }
            return Err(DecodeError::UnknownCode { code }.into());
        };
        let expected = kind.payload_size();
        if size == expected || (kind == ResponseKind::Ack && size == 0) {
            return Ok((kind, size as usize));
        }
        Err(DecodeError::BadPayloadSize {
            code,
            got: size,
            expected,
        }
        .into())
    }
}

/// Moves bytes from `input` into `buf` until it holds `want`; true once it does.
fn fill(buf: &mut Vec<u8>, want: usize, input: &mut &[u8]) -> bool {
    let take = want.saturating_sub(buf.len()).min(input.len());
    buf.extend_from_slice(&input[..take]);
    *input = &input[take..];
    buf.len() >= want
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::ClientId;

    fn header(version: u8, code: u16, size: u32) -> Vec<u8> {
        let mut h = vec![version];
        h.extend_from_slice(&code.to_le_bytes());
        h.extend_from_slice(&size.to_le_bytes());
        h
    }

    fn read_all(rev: Revision, bytes: &[u8]) -> Result<Vec<Response>, ResponseError> {
        let mut r = ResponseReader::new(rev);
        let mut input = bytes;
        let mut out = Vec::new();
        while let Some(resp) = r.decode(&mut input)? {
            out.push(resp);
        }
        Ok(out)
    }

    #[test]
    fn agrees_with_the_strict_decoder_on_every_vector_response() {
        for rev in Revision::ALL {
            let base = rev.spec().response_base;
            for offset in 0..rev.spec().response_count {
                let code = base + offset;
                let path = format!(
                    "{}/../fixtures/vectors/{}/response_{code}.bin",
                    env!("CARGO_MANIFEST_DIR"),
                    rev.name()
                );
                let bytes = std::fs::read(&path).unwrap();
                let strict = crate::decode::ResponseDecoder::new(rev)
                    .decode(&mut &bytes[..])
                    .unwrap()
                    .unwrap();
                assert_eq!(read_all(rev, &bytes).unwrap(), vec![strict], "{path}");
            }
        }
    }

    #[test]
    fn version_byte_and_empty_ack_are_tolerated() {
        let mut bytes = header(1, 1604, 16);
        bytes.extend_from_slice(&[7; 16]);
        bytes.extend(header(1, 1604, 0));
        assert_eq!(
            read_all(Revision::R2024c, &bytes).unwrap(),
            vec![
                Response::Ack {
                    client_id: ClientId([7; 16])
                },
                Response::Ack {
                    client_id: ClientId::ZERO
                }
            ]
        );
        assert_eq!(
            read_all(Revision::R2022c, &header(3, 2104, 0)).unwrap(),
            vec![Response::Ack {
                client_id: ClientId::ZERO
            }]
        );
    }

    #[test]
    fn wrong_sizes_stay_errors() {
        for (code, size) in [(1604, 15), (1604, 271), (1600, 0), (1607, 16)] {
            assert!(
                matches!(
                    read_all(Revision::R2024a, &header(3, code, size)),
                    Err(ResponseError::Decode(DecodeError::BadPayloadSize { .. }))
                ),
                "{code} {size}"
            );
        }
    }

    #[test]
    fn codes_of_the_other_range_name_a_foreign_revision() {
        for (rev, code) in [
            (Revision::R2023c, 1600),
            (Revision::R2022c, 1603),
            (Revision::R2024a, 2100),
            (Revision::R2024c, 2107),
        ] {
            assert_eq!(
                read_all(rev, &header(3, code, 16)),
                Err(ResponseError::ForeignRevision { code }),
                "{rev}"
            );
        }
        assert_eq!(
            read_all(Revision::R2023c, &header(3, 9, 0)),
            Err(ResponseError::Decode(DecodeError::UnknownCode { code: 9 }))
        );
        // 2022c lacks 2105-2107 but reads them as 2023 does.
        assert_eq!(
            read_all(Revision::R2022c, &header(3, 2107, 0)).unwrap(),
            vec![Response::GeneralError]
        );
    }

    #[test]
    fn likeliest_foreign_revision_shares_our_request_codes() {
        use Revision::*;
        assert_eq!(revisions_with_response(R2023c, 1600)[0], R2024a);
        assert_eq!(revisions_with_response(R2024a, 2100)[0], R2023c);
        assert_eq!(revisions_with_response(R2024c, 1600), vec![R2024a]);
        assert_eq!(
            revisions_with_response(R2024c, 2100),
            vec![R2023c, R2023a, R2022c]
        );
        assert_eq!(revisions_with_response(R2023a, 1600), vec![R2024c, R2024a]);
        assert!(revisions_with_response(R2023c, 9).is_empty());
    }

    #[test]
    fn split_input_gives_the_same_responses() {
        let mut bytes = header(3, 1600, 16);
        bytes.extend_from_slice(&[1; 16]);
        bytes.extend(header(3, 1607, 0));
        for cut in 0..bytes.len() {
            let mut r = ResponseReader::new(Revision::R2024c);
            let mut got = Vec::new();
            for part in [&bytes[..cut], &bytes[cut..]] {
                let mut input = part;
                while let Some(resp) = r.decode(&mut input).unwrap() {
                    got.push(resp);
                }
            }
            assert_eq!(got.len(), 2, "cut at {cut}");
            assert!(r.is_between_frames());
        }
    }
}
