//! The five published revisions of the protocol (PROTOCOL.md §9), as data.
//!
//! Headers, strings, RSA and the cksum are the same in all of them; what
//! differs is a handful of facts: the request codes, the response base,
//! which responses exist, the AES key size, how the file message is laid
//! out, and whether the client id is repeated inside the file and verdict
//! payloads. Each revision is one [`RevisionSpec`] in a table; the rest of
//! the crate asks the table and never matches on a revision by name.

use std::fmt;
use std::str::FromStr;

use crate::consts::{CLIENT_ID_LEN, NAME_LEN, PUBLIC_KEY_LEN};
use crate::kind::{RequestKind, ResponseKind};

/// A published revision of the protocol (§9).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub enum Revision {
    /// 2022c: requests 1100-1106 without reconnect, responses 2100-2104,
    /// AES-128, client id repeated in file and verdict payloads.
    R2022c,
    /// 2023a: requests 1100-1106, responses 2100-2107, AES-128.
    R2023a,
    /// 2023c, our default: requests 1025-1031, responses 2100-2107, AES-128.
    #[default]
    R2023c,
    /// 2024a: requests 1025-1031, responses 1600-1607, AES-256, packets.
    R2024a,
    /// 2024c: requests 825-828 and 900-902, responses 1600-1607, AES-256,
    /// packets.
    R2024c,
}

/// How a revision lays out its file message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileLayout {
    /// One message per file: content_size u32, `file_name[255]`, then the
    /// whole content (payload_size = prefix + content_size).
    Single,
    /// The 2024 packet: content_size u32, orig_file_size u32, two u16
    /// (packet number and total, in either order, §9.1), `file_name[255]`,
    /// then this packet's part of the content.
    Packets,
}

/// Everything that differs between revisions (§9 table).
#[derive(Debug)]
pub struct RevisionSpec {
    /// The revision's published name, e.g. `"2023c"`.
    pub name: &'static str,
    /// Request codes in [`RequestKind::ALL`] order; `None` where the
    /// revision has no such request (2022c has no reconnect).
    pub request_codes: [Option<u16>; 7],
    /// Code of "registered"; the others follow (§9: base + 0 ... + 7).
    pub response_base: u16,
    /// How many responses the revision has from the base on (2022c: 5).
    pub response_count: u16,
    /// AES key length in bytes: 16 or 32.
    pub aes_key_len: usize,
    /// The file message's layout.
    pub file_layout: FileLayout,
    /// The file and verdict payloads start with the client id again (2022c).
    pub id_in_payload: bool,
    /// The port its servers listen on by default.
    pub default_port: u16,
}

const fn codes(first: u16, reconnect: bool, verdict: u16) -> [Option<u16>; 7] {
    [
        Some(first),
        Some(first + 1),
        if reconnect { Some(first + 2) } else { None },
        Some(first + 3),
        Some(verdict),
        Some(verdict + 1),
        Some(verdict + 2),
    ]
}

static SPECS: [RevisionSpec; 5] = [
    RevisionSpec {
        name: "2022c",
        request_codes: codes(1100, false, 1104),
        response_base: 2100,
        response_count: 5,
        aes_key_len: 16,
        file_layout: FileLayout::Single,
        id_in_payload: true,
        default_port: 1234,
    },
    RevisionSpec {
        name: "2023a",
        request_codes: codes(1100, true, 1104),
        response_base: 2100,
        response_count: 8,
        aes_key_len: 16,
        file_layout: FileLayout::Single,
        id_in_payload: false,
        default_port: 1234,
    },
    RevisionSpec {
        name: "2023c",
        request_codes: codes(1025, true, 1029),
        response_base: 2100,
        response_count: 8,
        aes_key_len: 16,
        file_layout: FileLayout::Single,
        id_in_payload: false,
        default_port: 1357,
    },
    RevisionSpec {
        name: "2024a",
        request_codes: codes(1025, true, 1029),
        response_base: 1600,
        response_count: 8,
        aes_key_len: 32,
        file_layout: FileLayout::Packets,
        id_in_payload: false,
        default_port: 1256,
    },
    RevisionSpec {
        name: "2024c",
        request_codes: codes(825, true, 900),
        response_base: 1600,
        response_count: 8,
        aes_key_len: 32,
        file_layout: FileLayout::Packets,
        id_in_payload: false,
        default_port: 1256,
    },
];

/// Bytes of a 2024 packet before its content: content_size,
/// orig_file_size, two u16, file_name.
pub const PACKET_PREFIX_LEN: usize = 4 + 4 + 2 + 2 + NAME_LEN;

impl Revision {
    /// Every revision, oldest first.
    pub const ALL: [Revision; 5] = [
        Revision::R2022c,
        Revision::R2023a,
        Revision::R2023c,
        Revision::R2024a,
        Revision::R2024c,
    ];

    /// What this revision is made of.
    pub fn spec(self) -> &'static RevisionSpec {
        &SPECS[self as usize]
    }

    /// The published name, e.g. `"2024c"`.
    pub fn name(self) -> &'static str {
        self.spec().name
    }

    /// The numeric code of a request kind, if this revision has it.
    pub fn request_code(self, kind: RequestKind) -> Option<u16> {
        self.spec().request_codes[kind.index()]
    }

    /// The request kind of a numeric code, if this revision has it.
    pub fn request_kind(self, code: u16) -> Option<RequestKind> {
        let i = self
            .spec()
            .request_codes
            .iter()
            .position(|c| *c == Some(code))?;
        Some(RequestKind::ALL[i])
    }

    /// The numeric code of a response kind, if this revision has it
    /// (base + offset, §9).
    pub fn response_code(self, kind: ResponseKind) -> Option<u16> {
        let spec = self.spec();
        let offset = kind as u16;
        (offset < spec.response_count).then_some(spec.response_base + offset)
    }

    /// The response kind of a numeric code, if this revision has it.
    pub fn response_kind(self, code: u16) -> Option<ResponseKind> {
        let spec = self.spec();
        let offset = code.checked_sub(spec.response_base)?;
        if offset >= spec.response_count {
            return None;
        }
        ResponseKind::ALL.get(offset as usize).copied()
    }

    /// Whether this revision has a response of that kind (2022c has no
    /// 2105-2107).
    pub fn has_response(self, kind: ResponseKind) -> bool {
        self.response_code(kind).is_some()
    }

    /// Length of the AES key this revision uses (§9): 16 or 32.
    pub fn aes_key_len(self) -> usize {
        self.spec().aes_key_len
    }

    /// The file message's layout.
    pub fn file_layout(self) -> FileLayout {
        self.spec().file_layout
    }

    /// Whether file and verdict payloads repeat the client id (2022c).
    pub fn id_in_payload(self) -> bool {
        self.spec().id_in_payload
    }

    /// The exact payload_size of a request kind, or `None` for the file
    /// message, whose size depends on its content (§2, §9).
    pub fn fixed_payload_size(self, kind: RequestKind) -> Option<u32> {
        let id = if self.id_in_payload() {
            CLIENT_ID_LEN
        } else {
            0
        };
        match kind {
            RequestKind::Register | RequestKind::Reconnect => Some(NAME_LEN as u32),
            RequestKind::PublicKey => Some((NAME_LEN + PUBLIC_KEY_LEN) as u32),
            RequestKind::SendFile => None,
            RequestKind::CrcOk | RequestKind::CrcBad | RequestKind::CrcGiveUp => {
                Some((id + NAME_LEN) as u32)
            }
        }
    }

    /// Bytes of the file message before its content.
    pub fn file_prefix_len(self) -> usize {
        match (self.file_layout(), self.id_in_payload()) {
            (FileLayout::Packets, _) => PACKET_PREFIX_LEN,
            (FileLayout::Single, true) => CLIENT_ID_LEN + 4 + NAME_LEN,
            (FileLayout::Single, false) => 4 + NAME_LEN,
        }
    }

    /// The port this revision's servers listen on by default.
    pub fn default_port(self) -> u16 {
        self.spec().default_port
    }
}

impl fmt::Display for Revision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A revision name that is not one of the five.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownRevision(pub String);

impl fmt::Display for UnknownRevision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unknown protocol revision '{}' (one of 2022c, 2023a, 2023c, 2024a, 2024c)",
            self.0
        )
    }
}

impl std::error::Error for UnknownRevision {}

impl FromStr for Revision {
    type Err = UnknownRevision;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        Revision::ALL
            .into_iter()
            .find(|r| r.name().eq_ignore_ascii_case(t))
            .ok_or_else(|| UnknownRevision(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// §9's table, written out by hand, against the data.
    #[test]
    fn codes_match_the_table_of_section_9() {
        use RequestKind::*;
        let kinds = [
            Register, PublicKey, Reconnect, SendFile, CrcOk, CrcBad, CrcGiveUp,
        ];
        let table: [(Revision, [Option<u16>; 7], u16); 5] = [
            (
                Revision::R2022c,
                [
                    Some(1100),
                    Some(1101),
                    None,
                    Some(1103),
                    Some(1104),
                    Some(1105),
                    Some(1106),
                ],
                2100,
            ),
            (
                Revision::R2023a,
                [
                    Some(1100),
                    Some(1101),
                    Some(1102),
                    Some(1103),
                    Some(1104),
                    Some(1105),
                    Some(1106),
                ],
                2100,
            ),
            (
                Revision::R2023c,
                [
                    Some(1025),
                    Some(1026),
                    Some(1027),
                    Some(1028),
                    Some(1029),
                    Some(1030),
                    Some(1031),
                ],
                2100,
            ),
            (
                Revision::R2024a,
                [
                    Some(1025),
                    Some(1026),
                    Some(1027),
                    Some(1028),
                    Some(1029),
                    Some(1030),
                    Some(1031),
                ],
                1600,
            ),
            (
                Revision::R2024c,
                [
                    Some(825),
                    Some(826),
                    Some(827),
                    Some(828),
                    Some(900),
                    Some(901),
                    Some(902),
                ],
                1600,
            ),
        ];
        for (rev, codes, base) in table {
            for (kind, code) in kinds.iter().zip(codes) {
                assert_eq!(rev.request_code(*kind), code, "{rev} {kind:?}");
                if let Some(c) = code {
                    assert_eq!(rev.request_kind(c), Some(*kind), "{rev} {c}");
                }
            }
            for (i, kind) in ResponseKind::ALL.iter().enumerate() {
                let code = base + i as u16;
                let exists = rev != Revision::R2022c || i <= 4;
                assert_eq!(rev.response_code(*kind), exists.then_some(code), "{rev}");
                assert_eq!(rev.response_kind(code), exists.then_some(*kind), "{rev}");
            }
            assert_eq!(rev.response_kind(base + 8), None);
            assert_eq!(rev.response_kind(base.wrapping_sub(1)), None);
        }
        assert_eq!(Revision::R2022c.request_kind(1102), None);
    }

    #[test]
    fn key_sizes_layouts_and_ports() {
        let facts: Vec<(usize, FileLayout, bool, u16)> = Revision::ALL
            .iter()
            .map(|r| {
                (
                    r.aes_key_len(),
                    r.file_layout(),
                    r.id_in_payload(),
                    r.default_port(),
                )
            })
            .collect();
        use FileLayout::*;
        assert_eq!(
            facts,
            [
                (16, Single, true, 1234),
                (16, Single, false, 1234),
                (16, Single, false, 1357),
                (32, Packets, false, 1256),
                (32, Packets, false, 1256),
            ]
        );
        assert_eq!(Revision::R2022c.file_prefix_len(), 275);
        assert_eq!(Revision::R2023c.file_prefix_len(), 259);
        assert_eq!(Revision::R2024c.file_prefix_len(), 267);
        assert_eq!(
            Revision::R2022c.fixed_payload_size(RequestKind::CrcOk),
            Some(271)
        );
        assert_eq!(
            Revision::R2023a.fixed_payload_size(RequestKind::CrcOk),
            Some(255)
        );
    }

    #[test]
    fn names_parse_and_print() {
        for rev in Revision::ALL {
            assert_eq!(rev.to_string().parse::<Revision>(), Ok(rev));
        }
        assert_eq!(" 2024C ".parse::<Revision>(), Ok(Revision::R2024c));
        assert!("2025a".parse::<Revision>().is_err());
        assert_eq!(Revision::default(), Revision::R2023c);
    }
}
