//! Is the peer a sealdrop server at all? A client that dialled the wrong
//! port (a web server, an SSH daemon, a TLS endpoint) reads that
//! service's first bytes where it expects a response header. This module
//! tells the two apart on the first bytes a connection brings, so the
//! client can say "not a sealdrop server" at once instead of treating the
//! bytes as a broken response, retrying, or waiting for a timeout.
//!
//! The rule is narrow and certain: every response of every revision
//! (PROTOCOL.md §3, §9) starts with a version byte and a code in 2100-2107
//! or 1600-1607, so bytes 1-2 of the first response settle it. A code of
//! the other range is still a sealdrop server (of another revision, which
//! [`ResponseReader`](super::ResponseReader) names); anything else is not.
//! The well-known banners and replies are then named, for the message.

use crate::message::{ResponseKind, Revision};

/// Bytes needed to decide: the version byte and the response code.
pub const SNIFF_LEN: usize = 3;

/// Longest excerpt of a foreign answer shown in a message, in characters.
pub const MAX_SHOWN_CHARS: usize = 60;

/// Most bytes of a binary (non-text) answer shown, in hex.
pub const MAX_SHOWN_HEX_BYTES: usize = 8;

/// What the first bytes of a connection say about the peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sniff {
    /// Fewer than [`SNIFF_LEN`] bytes: read on.
    NeedMore,
    /// A response code of some revision: a sealdrop server (perhaps of
    /// another revision).
    Sealdrop,
    /// Not this protocol.
    Foreign(ForeignService),
}

/// A peer that answered in another protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForeignService {
    /// The protocol its bytes look like ("HTTP", "SSH", "TLS", ...), if
    /// recognised.
    pub protocol: Option<&'static str>,
    /// What it sent, printable: the first line of a text answer (at most
    /// `MAX_SHOWN_CHARS` characters, "..." when cut), else the first
    /// `MAX_SHOWN_HEX_BYTES` bytes in hex ("15 03 01 00 02 02 28").
    pub shown: String,
}

/// Judges the first bytes received on a connection (all of them so far;
/// more than [`SNIFF_LEN`] only sharpen the excerpt and the protocol's
/// name).
pub fn sniff(first: &[u8]) -> Sniff {
    if first.len() < SNIFF_LEN {
        return Sniff::NeedMore;
    }
    let code = u16::from_le_bytes([first[1], first[2]]);
    if is_response_code(code) {
        return Sniff::Sealdrop;
    }
    Sniff::Foreign(ForeignService {
        protocol: protocol_of(first),
        shown: shown(first),
    })
}

/// True if some revision has a response numbered `code` (2022c clients
/// also read 2105-2107, so each range is taken whole).
fn is_response_code(code: u16) -> bool {
    let kinds = ResponseKind::ALL.len() as u16;
    Revision::ALL.iter().any(|r| {
        let base = r.spec().response_base;
        (base..base + kinds).contains(&code)
    })
}

/// The well-known first bytes of other services.
fn protocol_of(b: &[u8]) -> Option<&'static str> {
    const TEXT: [(&[u8], &str); 11] = [
        (b"HTTP/", "HTTP"),
        (b"SSH-", "SSH"),
        (b"220 ", "SMTP or FTP"),
        (b"220-", "SMTP or FTP"),
        (b"+OK", "POP3"),
        (b"* OK", "IMAP"),
        (b"* PREAUTH", "IMAP"),
        (b"RFB ", "VNC"),
        (b"-ERR", "Redis"),
        (b"-DENIED", "Redis"),
        (b"<", "HTML or XML"),
    ];
    if let Some((_, name)) = TEXT.iter().find(|(prefix, _)| b.starts_with(prefix)) {
        return Some(name);
    }
    // A TLS record: content type 20-24, then version 3.x.
    if (0x14..=0x18).contains(&b[0]) && b[1] == 0x03 && b[2] <= 0x04 {
        return Some(if b[0] == 0x15 { "TLS alert" } else { "TLS" });
    }
    // MySQL's greeting: a 3-byte length, sequence 0, protocol 10.
    if b.len() >= 5 && b[3] == 0 && b[4] == 0x0a {
        return Some("MySQL");
    }
    None
}

/// The excerpt shown to the user.
fn shown(b: &[u8]) -> String {
    let line = b
        .split(|&c| c == b'\r' || c == b'\n')
        .next()
        .unwrap_or_default();
    let text = !line.is_empty() && line.iter().all(|c| (0x20..0x7f).contains(c));
    if text {
        let mut out: String = line
            .iter()
            .take(MAX_SHOWN_CHARS)
            .map(|&c| char::from(c))
            .collect();
        if line.len() > MAX_SHOWN_CHARS {
            out.push_str("...");
        }
        return out;
    }
    let mut out: Vec<String> = b
        .iter()
        .take(MAX_SHOWN_HEX_BYTES)
        .map(|c| format!("{c:02x}"))
        .collect();
    if b.len() > MAX_SHOWN_HEX_BYTES {
        out.push("...".into());
    }
    out.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn foreign(bytes: &[u8]) -> ForeignService {
        match sniff(bytes) {
            Sniff::Foreign(f) => f,
            other => panic!("{bytes:?}: {other:?}"),
        }
    }

    #[test]
    fn every_response_of_every_revision_is_sealdrop() {
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
                for n in SNIFF_LEN..=bytes.len() {
                    assert_eq!(sniff(&bytes[..n]), Sniff::Sealdrop, "{path} {n}");
                }
            }
        }
        // Any version byte; 2022c's readers take 2105-2107 too.
        assert_eq!(sniff(&[1, 0x3b, 0x08]), Sniff::Sealdrop);
        assert_eq!(sniff(&[0, 0x47, 0x06]), Sniff::Sealdrop);
    }

    #[test]
    fn short_input_needs_more() {
        assert_eq!(sniff(b""), Sniff::NeedMore);
        assert_eq!(sniff(b"HT"), Sniff::NeedMore);
    }

    #[test]
    fn codes_next_to_the_ranges_are_foreign() {
        for code in [2099u16, 2108, 1599, 1608, 0, 0xffff] {
            let [lo, hi] = code.to_le_bytes();
            assert!(matches!(sniff(&[3, lo, hi]), Sniff::Foreign(_)), "{code}");
        }
    }

    #[test]
    fn well_known_services_are_named_and_shown() {
        let http = foreign(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(http.protocol, Some("HTTP"));
        assert_eq!(http.shown, "HTTP/1.1 400 Bad Request");

        let ssh = foreign(b"SSH-2.0-OpenSSH_9.6p1 Ubuntu-3ubuntu13\r\n");
        assert_eq!(ssh.protocol, Some("SSH"));
        assert_eq!(ssh.shown, "SSH-2.0-OpenSSH_9.6p1 Ubuntu-3ubuntu13");

        let alert = foreign(&[0x15, 0x03, 0x01, 0x00, 0x02, 0x02, 0x32]);
        assert_eq!(alert.protocol, Some("TLS alert"));
        assert_eq!(alert.shown, "15 03 01 00 02 02 32");

        let hello = foreign(&[0x16, 0x03, 0x03, 0x00, 0x7a, 0x02, 0, 0, 0x76, 0x03]);
        assert_eq!(hello.protocol, Some("TLS"));
        assert_eq!(hello.shown, "16 03 03 00 7a 02 00 00 ...");

        assert_eq!(foreign(b"220 mail ESMTP\r\n").protocol, Some("SMTP or FTP"));
        assert_eq!(foreign(b"+OK ready\r\n").protocol, Some("POP3"));
        assert_eq!(foreign(b"* OK IMAP4rev1\r\n").protocol, Some("IMAP"));
        assert_eq!(foreign(b"RFB 003.008\n").protocol, Some("VNC"));
        assert_eq!(foreign(b"-ERR unknown command\r\n").protocol, Some("Redis"));
        assert_eq!(foreign(b"<html><body>").protocol, Some("HTML or XML"));
        let mysql = foreign(b"\x4a\x00\x00\x00\x0a8.0.36\x00");
        assert_eq!(mysql.protocol, Some("MySQL"));
    }

    #[test]
    fn unknown_answers_are_shown_without_a_name() {
        let f = foreign(b"hello there\n");
        assert_eq!(f.protocol, None);
        assert_eq!(f.shown, "hello there");
        let long = [b'x'; 200];
        let f = foreign(&long);
        assert_eq!(f.shown.len(), MAX_SHOWN_CHARS + 3);
        assert!(f.shown.ends_with("..."));
        // Control characters never reach the excerpt.
        let f = foreign(b"ab\x1b[31mc");
        assert_eq!(f.shown, "61 62 1b 5b 33 31 6d 63");
    }
}
