//! Request frames: from the protocol crate's encoders, or built by hand
//! byte by byte (wrong sizes, unknown codes, fields without a NUL).

use sealdrop_protocol::consts::NAME_LEN;
use sealdrop_protocol::message::encode_file_header;
use sealdrop_protocol::{ClientId, FixedName, Request, Response, Revision};

use crate::REV;

/// A fixed name field; panics on an unencodable text (callers pass
/// literals).
pub fn fixed(text: &str) -> FixedName {
    FixedName::new(text.as_bytes()).expect("name fits the field")
}

/// A fixed name field from raw text bytes (any bytes but NUL).
pub fn fixed_bytes(text: &[u8]) -> FixedName {
    FixedName::new(text).expect("name fits the field")
}

/// A raw 23-byte request header.
pub fn header(id: &ClientId, version: u8, code: u16, payload_size: u32) -> Vec<u8> {
    let mut h = Vec::with_capacity(23);
    h.extend_from_slice(&id.0);
    h.push(version);
    h.extend_from_slice(&code.to_le_bytes());
    h.extend_from_slice(&payload_size.to_le_bytes());
    h
}

/// A whole request frame from the protocol crate's encoder.
pub fn request_frame(id: &ClientId, req: &Request) -> Vec<u8> {
    request_frame_in(REV, id, req)
}

/// A whole request frame in revision `rev`.
pub fn request_frame_in(rev: Revision, id: &ClientId, req: &Request) -> Vec<u8> {
    let mut out = Vec::with_capacity(512);
    req.encode(rev, id, &mut out);
    out
}

/// A whole 1028 frame: header, prefix and `content` (already encrypted).
pub fn file_frame(id: &ClientId, name: &FixedName, content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(23 + 259 + content.len());
    encode_file_header(REV, id, content.len() as u32, name, &mut out);
    out.extend_from_slice(content);
    out
}

/// A 255-byte field holding `text` then NULs (no check at all).
pub fn raw_field(text: &[u8]) -> [u8; NAME_LEN] {
    let mut f = [0u8; NAME_LEN];
    f[..text.len()].copy_from_slice(text);
    f
}

/// Response code of a response.
pub fn code_of(r: &Response) -> u16 {
    REV.response_code(r.kind())
        .expect("2023c has every response")
}

/// Response code of a response in revision `rev` (0 for one the
/// revision lacks: 2022c has no 2105-2107).
pub fn code_in(rev: Revision, r: &Response) -> u16 {
    rev.response_code(r.kind()).unwrap_or(0)
}
