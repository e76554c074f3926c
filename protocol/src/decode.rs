//! Streaming decoders for requests and responses (PROTOCOL.md §1-§3, §9).
//!
//! A decoder is fed whatever bytes have arrived. It decides from the header
//! alone whether a frame is acceptable (known code, exact payload_size, the
//! file message's size rules), buffers at most one header and one small
//! payload (23 + 415 bytes), and hands the content of a file message out as
//! borrowed slices of the caller's input, so a 4 GiB upload passes through
//! in constant memory. Every revision's layout is read here, from its
//! [`Revision`] table: the 2022c client id inside file and verdict payloads
//! (and the public 2022c client whose 1103 declares a payload that leaves
//! the content out), and the 2024 packet prefix. Errors are sticky: once
//! one is returned, every later call returns it again.

use crate::consts::*;
use crate::error::DecodeError;
use crate::message::{
    PacketHeader, Request, RequestHeader, RequestKind, Response, ResponseKind, Revision,
};
use crate::revision::FileLayout;
use crate::wire::{le_u16, le_u32, ClientId, FixedName};

/// Largest payload a request decoder ever buffers: 1026 (§2).
const MAX_BUFFERED_REQUEST: usize = REQUEST_HEADER_LEN + NAME_LEN + PUBLIC_KEY_LEN;

/// Largest piece of 1028 content handed out in one [`RequestEvent::FileData`],
/// so the work done per event stays bounded whatever the caller's buffer.
pub const MAX_DATA_CHUNK: usize = 1 << 20;

/// One step of a decoded request stream.
#[derive(Debug, PartialEq, Eq)]
pub enum RequestEvent<'a> {
    /// A complete request other than 1028.
    Request(RequestHeader, Request),
    /// A file message's header and fixed prefix (1028, 1103, or one 2024
    /// packet); its content follows as [`RequestEvent::FileData`] and ends
    /// with [`RequestEvent::FileEnd`].
    FileStart {
        /// The request header.
        header: RequestHeader,
        /// The content_size field. In a single-message layout the
        /// encrypted size, a non-zero multiple of 16 (§2); in a 2024
        /// packet, as the client filled it (whole file or this packet).
        content_size: u32,
        /// The file_name field as received.
        file_name: FixedName,
        /// Content bytes this message carries (`content_size` except in
        /// 2024 packets).
        data_len: u32,
        /// The 2024 packet fields, in a packet layout.
        packet: Option<PacketHeader>,
    },
    /// The next piece of encrypted content, borrowed from the input.
    FileData(&'a [u8]),
    /// All content_size bytes of the current 1028 have been handed out.
    FileEnd,
}

/// Which revision a request decoder reads (§9).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RevisionChoice {
    /// Always this one.
    Fixed(Revision),
    /// Decided by the connection's first request: 825-902 is 2024c;
    /// 1025-1031 is `range_1025` (2023c or 2024a, which share their codes);
    /// 1100-1106 is 2022c or 2023a, told apart at the first 1102 (2023a
    /// only), 1103 (by its layout) or verdict (by its payload_size). A first
    /// request that does not decode in the revision its code points to,
    /// or any other code, makes the connection 2023c.
    Auto {
        /// What 1025-1031 means on this connection.
        range_1025: Revision,
    },
}

impl Default for RevisionChoice {
    fn default() -> Self {
        RevisionChoice::Fixed(Revision::R2023c)
    }
}

/// How far revision detection has got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Detect {
    /// The revision is known.
    Decided,
    /// No request yet; decided by the first one's code.
    First { range_1025: Revision },
    /// 2022c or 2023a: same codes, same 1100 and 1101; read as 2023a.
    OldPair,
}

/// Bytes of a 1103's payload that tell 2022c from 2023a: client id and
/// content_size in 2022c.
const PEEK_1103: usize = CLIENT_ID_LEN + 4;

#[derive(Debug, Clone, Copy)]
enum ReqState {
    /// Awaiting (the rest of) a 23-byte header.
    Header,
    /// A 1103 while 2022c and 2023a are undecided: awaiting the payload's
    /// first bytes.
    Peek { header: RequestHeader },
    /// Header accepted; awaiting `need` payload bytes in the buffer.
    Payload { header: RequestHeader, need: usize },
    /// Inside a 1028's content; `remaining` bytes still to hand out.
    Content { remaining: u32 },
    /// The last content byte was handed out; FileEnd is due.
    ContentDone,
    /// A fatal error was returned; it is returned again.
    Failed(DecodeError),
}

/// Streaming decoder of the request stream a server receives.
#[derive(Debug)]
pub struct RequestDecoder {
    rev: Revision,
    detect: Detect,
    /// No request has been decoded yet.
    first_frame: bool,
    max_content: u64,
    buf: Vec<u8>,
    state: ReqState,
}

impl RequestDecoder {
    /// A decoder accepting 1028 content up to `max_content` encrypted bytes
    /// (capped at the protocol's own limit, [`MAX_CONTENT_SIZE`]).
    pub fn new(rev: Revision, max_content: u64) -> Self {
        Self::with_choice(RevisionChoice::Fixed(rev), max_content)
    }

    /// A decoder whose revision is fixed or detected (see
    /// [`RevisionChoice`]).
    pub fn with_choice(choice: RevisionChoice, max_content: u64) -> Self {
        let (rev, detect) = match choice {
            RevisionChoice::Fixed(rev) => (rev, Detect::Decided),
            RevisionChoice::Auto { range_1025 } => (Revision::R2023c, Detect::First { range_1025 }),
        };
        RequestDecoder {
            rev,
            detect,
            first_frame: true,
            max_content: max_content.min(MAX_CONTENT_SIZE as u64),
            buf: Vec::with_capacity(MAX_BUFFERED_REQUEST),
            state: ReqState::Header,
        }
    }

    /// The revision the stream is read in. While 2022c and 2023a are not
    /// told apart yet it says 2023a (their shared requests are read the
    /// same); [`RequestDecoder::is_decided`] is then false.
    pub fn revision(&self) -> Revision {
        self.rev
    }

    /// Whether the revision is known for sure.
    pub fn is_decided(&self) -> bool {
        self.detect == Detect::Decided
    }

    /// Decodes the next event from `input`, advancing it past the bytes
    /// used. `Ok(None)` means every byte of `input` was taken and more are
    /// needed. Call again until it returns `Ok(None)` or an error.
    pub fn decode<'a>(
        &mut self,
        input: &mut &'a [u8],
    ) -> Result<Option<RequestEvent<'a>>, DecodeError> {
        let result = self.step(input);
        match &result {
            Err(e) => {
                if self.first_frame {
                    // An implausible first request: the connection is 2023c.
                    self.rev = Revision::R2023c;
                    self.detect = Detect::Decided;
                }
                self.state = ReqState::Failed(*e);
            }
            Ok(Some(RequestEvent::Request(..) | RequestEvent::FileStart { .. })) => {
                self.first_frame = false;
            }
            Ok(_) => {}
        }
        result
    }

    /// True when no frame is in progress: the stream may end here cleanly.
    pub fn is_between_frames(&self) -> bool {
        matches!(self.state, ReqState::Header) && self.buf.is_empty()
    }

    /// True while a 1028's content is being handed out.
    pub fn in_content(&self) -> bool {
        matches!(self.state, ReqState::Content { .. } | ReqState::ContentDone)
    }

    /// Bytes of the current 1028's content not yet handed out, if inside one.
    pub fn content_remaining(&self) -> Option<u32> {
        match self.state {
            ReqState::Content { remaining } => Some(remaining),
            _ => None,
        }
    }

    /// Call at end of stream: an error if it ends inside a frame.
    pub fn finish(&self) -> Result<(), DecodeError> {
        match self.state {
            ReqState::Failed(e) => Err(e),
            _ if self.is_between_frames() => Ok(()),
            _ => Err(DecodeError::Truncated),
        }
    }

    fn step<'a>(&mut self, input: &mut &'a [u8]) -> Result<Option<RequestEvent<'a>>, DecodeError> {
        loop {
            match self.state {
                ReqState::Failed(e) => return Err(e),
                ReqState::ContentDone => {
                    self.state = ReqState::Header;
                    return Ok(Some(RequestEvent::FileEnd));
                }
                ReqState::Content { remaining } => {
                    if input.is_empty() {
                        return Ok(None);
                    }
                    let n = input.len().min(remaining as usize).min(MAX_DATA_CHUNK);
                    let (data, rest) = input.split_at(n);
                    *input = rest;
                    let left = remaining - n as u32;
                    self.state = if left == 0 {
                        ReqState::ContentDone
                    } else {
                        ReqState::Content { remaining: left }
                    };
                    return Ok(Some(RequestEvent::FileData(data)));
                }
                ReqState::Header => {
                    if !fill(&mut self.buf, REQUEST_HEADER_LEN, input) {
                        return Ok(None);
                    }
                    self.detect_from_header();
                    let header = self.check_header()?;
                    if header.kind == RequestKind::SendFile && self.detect == Detect::OldPair {
                        let shortest = Revision::R2023a.file_prefix_len() as u32;
                        if header.payload_size < shortest {
                            // Too short for either: refused as 2023a.
                            self.decide(Revision::R2023a);
                            self.check_file_size(header.payload_size)?;
                        }
                        self.state = ReqState::Peek { header };
                        continue;
                    }
                    let need = match header.kind {
                        RequestKind::SendFile => self.rev.file_prefix_len(),
                        _ => header.payload_size as usize,
                    };
                    self.state = ReqState::Payload { header, need };
                }
                ReqState::Peek { header } => {
                    if !fill(&mut self.buf, REQUEST_HEADER_LEN + PEEK_1103, input) {
                        return Ok(None);
                    }
                    self.decide_1103(&header);
                    self.check_file_size(header.payload_size)?;
                    let need = self.rev.file_prefix_len();
                    self.state = ReqState::Payload { header, need };
                }
                ReqState::Payload { header, need } => {
                    if !fill(&mut self.buf, REQUEST_HEADER_LEN + need, input) {
                        return Ok(None);
                    }
                    let event = self.parse_payload(header)?;
                    self.buf.clear();
                    return Ok(Some(event));
                }
            }
        }
    }

    /// Revision detection from a header's code and payload_size (see
    /// [`RevisionChoice::Auto`]).
    fn detect_from_header(&mut self) {
        let code = le_u16(&self.buf, 17);
        if let Detect::First { range_1025 } = self.detect {
            let (rev, detect) = match code {
                825..=902 => (Revision::R2024c, Detect::Decided),
                1025..=1031 => (range_1025, Detect::Decided),
                1100..=1106 => (Revision::R2023a, Detect::OldPair),
                _ => (Revision::R2023c, Detect::Decided),
            };
            self.rev = rev;
            self.detect = detect;
        }
        if self.detect != Detect::OldPair {
            return;
        }
        let payload_size = le_u32(&self.buf, 19);
        let id_verdict = (CLIENT_ID_LEN + NAME_LEN) as u32;
        match code {
            1102 => self.decide(Revision::R2023a),
            1104..=1106 if payload_size == id_verdict => self.decide(Revision::R2022c),
            1104..=1106 => self.decide(Revision::R2023a),
            _ => {}
        }
    }

    fn decide(&mut self, rev: Revision) {
        self.rev = rev;
        self.detect = Detect::Decided;
    }

    /// 2022c or 2023a from a 1103's first bytes: 2022c when the payload
    /// starts with the header's client id and payload_size is 275 +
    /// content_size (or exactly 275, §9.1) with content_size a non-zero
    /// multiple of 16.
    fn decide_1103(&mut self, header: &RequestHeader) {
        let p = &self.buf[REQUEST_HEADER_LEN..];
        let content_size = le_u32(p, CLIENT_ID_LEN);
        let prefix = Revision::R2022c.file_prefix_len() as u32;
        let sizes = header.payload_size.checked_sub(prefix) == Some(content_size)
            || (header.payload_size == prefix
                && content_size != 0
                && content_size.is_multiple_of(AES_BLOCK_LEN as u32));
        let rev = if p[..CLIENT_ID_LEN] == header.client_id.0 && sizes {
            Revision::R2022c
        } else {
            Revision::R2023a
        };
        self.decide(rev);
    }

    /// Checks the header alone: known code, exact payload_size, 1028 size
    /// rules and the configured limit (§2).
    fn check_header(&self) -> Result<RequestHeader, DecodeError> {
        let b = &self.buf;
        let mut id = [0u8; CLIENT_ID_LEN];
        id.copy_from_slice(&b[..CLIENT_ID_LEN]);
        let code = le_u16(b, 17);
        let payload_size = le_u32(b, 19);
        let kind = self
            .rev
            .request_kind(code)
            .ok_or(DecodeError::UnknownCode { code })?;
        match self.rev.fixed_payload_size(kind) {
            Some(expected) if expected != payload_size => {
                return Err(DecodeError::BadPayloadSize {
                    code,
                    got: payload_size,
                    expected,
                })
            }
            Some(_) => {}
            // Undecided 2022c/2023a: checked once the 1103 tells which.
            None if self.detect == Detect::OldPair => {}
            None => self.check_file_size(payload_size)?,
        }
        Ok(RequestHeader {
            client_id: ClientId(id),
            version: b[16],
            kind,
            payload_size,
        })
    }

    /// The file message's size rules that the header alone can check.
    fn check_file_size(&self, payload_size: u32) -> Result<(), DecodeError> {
        let bad = DecodeError::BadContentSize {
            content_size: 0,
            payload_size,
        };
        let prefix = self.rev.file_prefix_len() as u32;
        let content = payload_size.checked_sub(prefix).ok_or(bad)?;
        match self.rev.file_layout() {
            // The content's size is checked with the prefix.
            FileLayout::Single if self.rev.id_in_payload() && content == 0 => Ok(()),
            FileLayout::Single => self.check_content_size(content, payload_size),
            FileLayout::Packets if content == 0 => Err(bad),
            FileLayout::Packets => self.check_limit(content),
        }
    }

    /// A whole encrypted content: a non-zero multiple of 16 within the limit.
    fn check_content_size(&self, content: u32, payload_size: u32) -> Result<(), DecodeError> {
        if content == 0 || !content.is_multiple_of(AES_BLOCK_LEN as u32) {
            return Err(DecodeError::BadContentSize {
                content_size: content,
                payload_size,
            });
        }
        self.check_limit(content)
    }

    fn check_limit(&self, content: u32) -> Result<(), DecodeError> {
        if content as u64 > self.max_content {
            return Err(DecodeError::ContentTooLarge {
                content_size: content as u64,
                limit: self.max_content,
            });
        }
        Ok(())
    }

    /// The payload starts with the header's client id again (2022c).
    fn check_id(&self, header: &RequestHeader) -> Result<(), DecodeError> {
        let p = &self.buf[REQUEST_HEADER_LEN..];
        if p[..CLIENT_ID_LEN] != header.client_id.0 {
            return Err(DecodeError::IdMismatch);
        }
        Ok(())
    }

    /// The prefix of a file message: content_size, name, and (2024) the
    /// packet fields. Returns the event and the content bytes that follow.
    fn parse_file_prefix<'a>(
        &self,
        header: RequestHeader,
    ) -> Result<(RequestEvent<'a>, u32), DecodeError> {
        let id = if self.rev.id_in_payload() {
            self.check_id(&header)?;
            CLIENT_ID_LEN
        } else {
            0
        };
        let p = &self.buf[REQUEST_HEADER_LEN + id..];
        let content_size = le_u32(p, 0);
        let prefix = self.rev.file_prefix_len() as u32;
        let declared = header.payload_size - prefix;
        let (name_at, data_len, packet) = match self.rev.file_layout() {
            FileLayout::Single => {
                let data_len = if id > 0 && declared == 0 {
                    // §9.1: a public 2022c client declares 275 and sends
                    // the content after it.
                    self.check_content_size(content_size, header.payload_size)?;
                    content_size
                } else if content_size != declared {
                    return Err(DecodeError::BadContentSize {
                        content_size,
                        payload_size: header.payload_size,
                    });
                } else {
                    declared
                };
                (4, data_len, None)
            }
            FileLayout::Packets => {
                if content_size == 0 {
                    return Err(DecodeError::BadContentSize {
                        content_size,
                        payload_size: header.payload_size,
                    });
                }
                self.check_limit(content_size)?;
                let packet = PacketHeader {
                    content_size,
                    orig_size: le_u32(p, 4),
                    first: le_u16(p, 8),
                    second: le_u16(p, 10),
                };
                (12, declared, Some(packet))
            }
        };
        let raw: &[u8; NAME_LEN] = p[name_at..name_at + NAME_LEN]
            .try_into()
            .expect("prefix buffered");
        let file_name = FixedName::from_field(raw)?;
        let event = RequestEvent::FileStart {
            header,
            content_size,
            file_name,
            data_len,
            packet,
        };
        Ok((event, data_len))
    }

    fn parse_payload<'a>(
        &mut self,
        header: RequestHeader,
    ) -> Result<RequestEvent<'a>, DecodeError> {
        let verdict = matches!(
            header.kind,
            RequestKind::CrcOk | RequestKind::CrcBad | RequestKind::CrcGiveUp
        );
        let skip = if verdict && self.rev.id_in_payload() {
            self.check_id(&header)?;
            CLIENT_ID_LEN
        } else {
            0
        };
        let p = &self.buf[REQUEST_HEADER_LEN..];
        let name = || -> Result<FixedName, DecodeError> {
            FixedName::from_field(
                p[skip..skip + NAME_LEN]
                    .try_into()
                    .expect("buffered 255 bytes"),
            )
        };
        let request = match header.kind {
            RequestKind::SendFile => {
                let (event, data_len) = self.parse_file_prefix(header)?;
                self.state = ReqState::Content {
                    remaining: data_len,
                };
                return Ok(event);
            }
            RequestKind::Register => Request::Register { name: name()? },
            RequestKind::Reconnect => Request::Reconnect { name: name()? },
            RequestKind::PublicKey => {
                let mut key = Box::new([0u8; PUBLIC_KEY_LEN]);
                key.copy_from_slice(&p[NAME_LEN..NAME_LEN + PUBLIC_KEY_LEN]);
                Request::PublicKey {
                    name: name()?,
                    public_key: key,
                }
            }
            RequestKind::CrcOk => Request::CrcOk { file_name: name()? },
            RequestKind::CrcBad => Request::CrcBad { file_name: name()? },
            RequestKind::CrcGiveUp => Request::CrcGiveUp { file_name: name()? },
        };
        self.state = ReqState::Header;
        Ok(RequestEvent::Request(header, request))
    }
}

/// Moves bytes from `input` into `buf` until it holds `want`; true once it does.
fn fill(buf: &mut Vec<u8>, want: usize, input: &mut &[u8]) -> bool {
    let take = want.saturating_sub(buf.len()).min(input.len());
    buf.extend_from_slice(&input[..take]);
    *input = &input[take..];
    buf.len() >= want
}

/// Largest response: 2103 (§3).
const MAX_RESPONSE: usize = RESPONSE_HEADER_LEN + CLIENT_ID_LEN + 4 + NAME_LEN + 4;

/// Streaming decoder of the response stream a client receives. Responses
/// are small, so each is buffered whole (at most 286 bytes).
#[derive(Debug)]
pub struct ResponseDecoder {
    rev: Revision,
    buf: Vec<u8>,
    kind: Option<ResponseKind>,
    failed: Option<DecodeError>,
}

impl ResponseDecoder {
    /// A new decoder for revision `rev`.
    pub fn new(rev: Revision) -> Self {
        ResponseDecoder {
            rev,
            buf: Vec::with_capacity(MAX_RESPONSE),
            kind: None,
            failed: None,
        }
    }

    /// Decodes the next response from `input`, advancing it past the bytes
    /// used; `Ok(None)` when more bytes are needed.
    pub fn decode(&mut self, input: &mut &[u8]) -> Result<Option<Response>, DecodeError> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        let result = self.step(input);
        if let Err(e) = result {
            self.failed = Some(e);
        }
        result
    }

    /// True when no response is partly received.
    pub fn is_between_frames(&self) -> bool {
        self.buf.is_empty() && self.failed.is_none()
    }

    fn step(&mut self, input: &mut &[u8]) -> Result<Option<Response>, DecodeError> {
        let kind = match self.kind {
            Some(k) => k,
            None => {
                if !fill(&mut self.buf, RESPONSE_HEADER_LEN, input) {
                    return Ok(None);
                }
                let code = le_u16(&self.buf, 1);
                let got = le_u32(&self.buf, 3);
                let kind = self
                    .rev
                    .response_kind(code)
                    .ok_or(DecodeError::UnknownCode { code })?;
                if got != kind.payload_size() {
                    return Err(DecodeError::BadPayloadSize {
                        code,
                        got,
                        expected: kind.payload_size(),
                    });
                }
                self.kind = Some(kind);
                kind
            }
        };
        let want = RESPONSE_HEADER_LEN + kind.payload_size() as usize;
        if !fill(&mut self.buf, want, input) {
            return Ok(None);
        }
        let response = parse_response(kind, &self.buf[RESPONSE_HEADER_LEN..])?;
        self.buf.clear();
        self.kind = None;
        Ok(Some(response))
    }
}

/// A response of `kind` from its payload `p`. The strict decoder hands
/// over exactly the payload the kind requires; the client's tolerant
/// reader may hand over an ack with an empty payload (a server quirk,
/// §9.1), which gives the zero client id.
pub(crate) fn parse_response(kind: ResponseKind, p: &[u8]) -> Result<Response, DecodeError> {
    let id = || {
        let mut id = [0u8; CLIENT_ID_LEN];
        if p.len() >= CLIENT_ID_LEN {
            id.copy_from_slice(&p[..CLIENT_ID_LEN]);
        }
        ClientId(id)
    };
    let key = || {
        let mut k = Box::new([0u8; ENCRYPTED_KEY_LEN]);
        k.copy_from_slice(&p[CLIENT_ID_LEN..CLIENT_ID_LEN + ENCRYPTED_KEY_LEN]);
        k
    };
    Ok(match kind {
        ResponseKind::Registered => Response::Registered { client_id: id() },
        ResponseKind::RegistrationFailed => Response::RegistrationFailed,
        ResponseKind::KeyAccepted => Response::KeyAccepted {
            client_id: id(),
            encrypted_key: key(),
        },
        ResponseKind::FileReceived => {
            let raw: &[u8; NAME_LEN] = p[20..20 + NAME_LEN].try_into().expect("buffered");
            Response::FileReceived {
                client_id: id(),
                content_size: le_u32(p, 16),
                file_name: FixedName::from_field(raw)?,
                cksum: le_u32(p, 20 + NAME_LEN),
            }
        }
        ResponseKind::Ack => Response::Ack { client_id: id() },
        ResponseKind::ReconnectAccepted => Response::ReconnectAccepted {
            client_id: id(),
            encrypted_key: key(),
        },
        ResponseKind::ReconnectDenied => Response::ReconnectDenied { client_id: id() },
        ResponseKind::GeneralError => Response::GeneralError,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(code: u16, size: u32) -> Vec<u8> {
        let mut h = vec![7u8; 16];
        h.push(3);
        h.extend_from_slice(&code.to_le_bytes());
        h.extend_from_slice(&size.to_le_bytes());
        h
    }

    fn decode_all(d: &mut RequestDecoder, mut input: &[u8]) -> Result<Vec<String>, DecodeError> {
        let mut out = Vec::new();
        while let Some(ev) = d.decode(&mut input)? {
            out.push(format!("{ev:?}"));
        }
        Ok(out)
    }

    #[test]
    fn rejects_unknown_code_from_header_alone() {
        let mut d = RequestDecoder::new(Revision::R2023c, u64::MAX);
        assert_eq!(
            decode_all(&mut d, &header(1032, 255)),
            Err(DecodeError::UnknownCode { code: 1032 })
        );
        // sticky
        assert_eq!(
            d.decode(&mut &b""[..]),
            Err(DecodeError::UnknownCode { code: 1032 })
        );
    }

    #[test]
    fn rejects_huge_payload_before_payload() {
        let mut d = RequestDecoder::new(Revision::R2023c, u64::MAX);
        assert!(matches!(
            decode_all(&mut d, &header(1025, u32::MAX)),
            Err(DecodeError::BadPayloadSize { .. })
        ));
        let mut d = RequestDecoder::new(Revision::R2023c, u64::MAX);
        assert!(matches!(
            decode_all(&mut d, &header(1028, u32::MAX)),
            Err(DecodeError::BadContentSize { .. })
        ));
    }

    #[test]
    fn rejects_file_over_limit_from_header() {
        let mut d = RequestDecoder::new(Revision::R2023c, 1024);
        assert_eq!(
            decode_all(&mut d, &header(1028, 259 + 1040)),
            Err(DecodeError::ContentTooLarge {
                content_size: 1040,
                limit: 1024
            })
        );
    }

    #[test]
    fn rejects_content_not_multiple_of_16() {
        for size in [259, 259 + 15, 259 + 17, 100] {
            let mut d = RequestDecoder::new(Revision::R2023c, u64::MAX);
            assert!(matches!(
                decode_all(&mut d, &header(1028, size)),
                Err(DecodeError::BadContentSize { .. })
            ));
        }
    }

    #[test]
    fn streams_content_as_borrowed_slices() {
        let mut frame = header(1028, 259 + 32);
        frame.extend_from_slice(&32u32.to_le_bytes());
        let mut name = [0u8; 255];
        name[0] = b'f';
        frame.extend_from_slice(&name);
        frame.extend_from_slice(&[9u8; 32]);
        let mut d = RequestDecoder::new(Revision::R2023c, u64::MAX);
        let mut input = &frame[..frame.len() - 10];
        assert!(matches!(
            d.decode(&mut input),
            Ok(Some(RequestEvent::FileStart {
                content_size: 32,
                ..
            }))
        ));
        assert_eq!(
            d.decode(&mut input),
            Ok(Some(RequestEvent::FileData(&[9u8; 22])))
        );
        assert_eq!(d.decode(&mut input), Ok(None));
        assert!(!d.is_between_frames());
        assert_eq!(d.finish(), Err(DecodeError::Truncated));
        let mut input = &frame[frame.len() - 10..];
        assert_eq!(
            d.decode(&mut input),
            Ok(Some(RequestEvent::FileData(&[9u8; 10])))
        );
        assert_eq!(d.decode(&mut input), Ok(Some(RequestEvent::FileEnd)));
        assert_eq!(d.decode(&mut input), Ok(None));
        assert!(d.is_between_frames());
    }

    #[test]
    fn response_decoder_rejects_wrong_size() {
        let mut d = ResponseDecoder::new(Revision::R2023c);
        let frame = [3u8, 0x34, 0x08, 0, 0, 0, 0];
        assert!(matches!(
            d.decode(&mut &frame[..]),
            Err(DecodeError::BadPayloadSize { code: 2100, .. })
        ));
    }
}
