//! How a 2024a/2024c client cuts its file into packets (PROTOCOL.md §9,
//! §9.1), decided once per session from the file's length and the
//! [`PacketOptions`].
//!
//! Public 2024 clients differ on four things, and each is an option here:
//!
//! * **packet size** ([`PacketOptions::size`]): `None` (the default) sends
//!   the whole file as one packet, 1 of 1. §9.1: every public 2024 server
//!   surveyed accepts that, whatever its own cutting rule (servers that
//!   join the pieces, that decrypt each packet alone, that cut each to
//!   orig_file_size, that require strict order: with one packet all of
//!   them see the same thing). The public sizes (1,024, 4,000, 4,096,
//!   8,192 and 1,048,576 bytes) are all multiples of 16, and so must any
//!   size given here be.
//! * **granularity** ([`PacketOptions::mode`]): split (the whole file
//!   encrypted once, the ciphertext cut into `size`-byte pieces) or each
//!   (`size`-byte plaintext pieces, each encrypted and padded alone with a
//!   zero IV, so each travels as `size + 16` bytes).
//! * **numbering** ([`PacketOptions::base`]): from 1 (every public client)
//!   or 0 (allowed by the text).
//! * **size fields** ([`PacketOptions::fields`]): content_size and
//!   orig_file_size of the whole file, or (each mode only) of the packet.
//!
//! A file that would need more than 65,535 packets (total_packets is a
//! u16) is sent in bigger packets: the smallest multiple of 16 that fits,
//! `ceil(ciphertext / 65,535)` rounded up to 16, as the reference peer
//! does; [`PacketPlan::raised_from`] says so.

use std::fmt;

use crate::consts::{AES_BLOCK_LEN, MAX_CONTENT_SIZE};
use crate::crypto::encrypted_len;
use crate::message::PacketHeader;
pub use crate::packets::Granularity;

/// Most packets one upload can have: total_packets is a u16.
pub const MAX_PACKETS: u64 = u16::MAX as u64;

/// What content_size and orig_file_size describe (§9.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PacketFields {
    /// The whole file: content_size the sum of all packets' content,
    /// orig_file_size the file's length (most public clients).
    #[default]
    Whole,
    /// This packet: content_size its content, orig_file_size its
    /// plaintext (each mode only; some public clients send this).
    Packet,
}

impl fmt::Display for PacketFields {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PacketFields::Whole => "whole",
            PacketFields::Packet => "packet",
        })
    }
}

/// How to cut a file into 2024 packets; ignored by the other revisions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PacketOptions {
    /// Bytes per packet: ciphertext bytes in split mode, plaintext bytes
    /// in each mode. A positive multiple of 16. `None`: the whole file in
    /// one packet (the default, accepted by every public server, §9.1).
    pub size: Option<u32>,
    /// Number of the first packet: 1 (default, every public client) or 0.
    pub base: u16,
    /// Split (default) or each.
    pub mode: Granularity,
    /// What the size fields describe (default: the whole file).
    pub fields: PacketFields,
}

impl Default for PacketOptions {
    fn default() -> Self {
        PacketOptions {
            size: None,
            base: 1,
            mode: Granularity::Split,
            fields: PacketFields::Whole,
        }
    }
}

/// Packet options that cannot work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PacketOptionsError {
    /// A packet size that is zero or not a multiple of 16.
    Size {
        /// The size given.
        size: u32,
    },
    /// A first number other than 0 or 1.
    Base {
        /// The number given.
        base: u16,
    },
    /// Per-packet size fields with split mode: a piece of one ciphertext
    /// has no plaintext size of its own.
    FieldsNeedEach,
}

impl fmt::Display for PacketOptionsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PacketOptionsError::Size { size } => {
                write!(f, "packet size {size} is not a positive multiple of 16")
            }
            PacketOptionsError::Base { base } => {
                write!(f, "packets are numbered from 0 or 1, not {base}")
            }
            PacketOptionsError::FieldsNeedEach => {
                f.write_str("per-packet size fields need each-mode packets (--packet-mode each)")
            }
        }
    }
}

impl std::error::Error for PacketOptionsError {}

impl PacketOptions {
    /// Checks the options on their own (the file's length aside).
    pub fn check(&self) -> Result<(), PacketOptionsError> {
        if let Some(size) = self.size {
            if size == 0 || !size.is_multiple_of(AES_BLOCK_LEN as u32) {
                return Err(PacketOptionsError::Size { size });
            }
        }
        if self.base > 1 {
            return Err(PacketOptionsError::Base { base: self.base });
        }
        if self.fields == PacketFields::Packet && self.mode == Granularity::Split {
            return Err(PacketOptionsError::FieldsNeedEach);
        }
        Ok(())
    }
}

/// The packets of one file: how many, how big, what their fields say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PacketPlan {
    /// Split or each.
    pub mode: Granularity,
    /// What the size fields describe.
    pub fields: PacketFields,
    /// Number of the first packet.
    pub base: u16,
    /// Packets in the upload, 1 to 65,535.
    pub total: u16,
    /// Bytes per packet but the last: ciphertext (split) or plaintext
    /// (each). For a one-packet plan, the whole file's ciphertext length.
    pub piece: u64,
    /// The packet size asked for, when a file too big for 65,535 packets
    /// of it made the plan use `piece` instead.
    pub raised_from: Option<u32>,
    /// The file's plaintext length.
    pub plain_len: u64,
    /// The whole content: the sum of every packet's content bytes
    /// (split: the file's ciphertext; each: every padded piece).
    pub content_len: u64,
}

/// The padded ciphertext size of `plain` bytes (§4).
fn padded(plain: u64) -> u64 {
    encrypted_len(plain)
}

impl PacketPlan {
    /// The plan for a file of `plain_len` bytes. Refuses bad options, and
    /// a file whose content would not fit the u32 content_size field
    /// within [`MAX_CONTENT_SIZE`] (`Err(None)` then).
    pub fn new(
        plain_len: u64,
        options: &PacketOptions,
    ) -> Result<Self, Option<PacketOptionsError>> {
        options.check().map_err(Some)?;
        let cipher = padded(plain_len);
        let mut piece = options.size.map_or(cipher, u64::from);
        let mut raised_from = None;
        let total = loop {
            let total = match options.mode {
                Granularity::Split => cipher.div_ceil(piece),
                Granularity::Each => plain_len.div_ceil(piece).max(1),
            };
            if total <= MAX_PACKETS {
                break total as u16;
            }
            raised_from = options.size;
            piece = cipher
                .div_ceil(MAX_PACKETS)
                .next_multiple_of(AES_BLOCK_LEN as u64);
        };
        let mut plan = PacketPlan {
            mode: options.mode,
            fields: options.fields,
            base: options.base,
            total,
            piece,
            raised_from,
            plain_len,
            content_len: 0,
        };
        plan.content_len = match plan.mode {
            Granularity::Split => cipher,
            Granularity::Each => {
                u64::from(total - 1) * padded(piece) + padded(plan.plain_of(total - 1))
            }
        };
        if plan.content_len > u64::from(MAX_CONTENT_SIZE) {
            return Err(None);
        }
        Ok(plan)
    }

    /// Plaintext bytes of packet `index` (0-based) in each mode.
    pub fn plain_of(&self, index: u16) -> u64 {
        if index + 1 < self.total {
            self.piece
        } else {
            self.plain_len - self.piece * u64::from(self.total - 1)
        }
    }

    /// Content bytes packet `index` (0-based) carries.
    pub fn data_len(&self, index: u16) -> u32 {
        let len = match self.mode {
            Granularity::Split if index + 1 < self.total => self.piece,
            Granularity::Split => self.content_len - self.piece * u64::from(self.total - 1),
            Granularity::Each => padded(self.plain_of(index)),
        };
        // At most content_len, which fits (checked in `new`).
        len as u32
    }

    /// The packet fields of packet `index` (0-based): number then total.
    pub fn header(&self, index: u16) -> PacketHeader {
        let (content_size, orig_size) = match self.fields {
            PacketFields::Whole => (self.content_len, self.plain_len),
            PacketFields::Packet => (u64::from(self.data_len(index)), self.plain_of(index)),
        };
        PacketHeader {
            // Both fit: content_len is checked in `new`, plain_len < it.
            content_size: content_size as u32,
            orig_size: orig_size as u32,
            first: self.base + index,
            second: self.total,
        }
    }

    /// A short description for logs and the success line:
    /// `3 packets from 1, split`.
    pub fn summary(&self) -> String {
        let packets = if self.total == 1 { "packet" } else { "packets" };
        format!("{} {packets} from {}, {}", self.total, self.base, self.mode)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(size: Option<u32>, mode: Granularity, fields: PacketFields) -> PacketOptions {
        PacketOptions {
            size,
            base: 1,
            mode,
            fields,
        }
    }

    fn plan(plain: u64, size: Option<u32>, mode: Granularity) -> PacketPlan {
        PacketPlan::new(plain, &opts(size, mode, PacketFields::Whole)).unwrap()
    }

    #[test]
    fn default_is_one_packet_of_the_whole_ciphertext() {
        for len in [0, 1, 15, 16, 1000, 1 << 20] {
            let p = PacketPlan::new(len, &PacketOptions::default()).unwrap();
            assert_eq!(p.total, 1, "{len}");
            assert_eq!(u64::from(p.data_len(0)), encrypted_len(len));
            let h = p.header(0);
            assert_eq!((h.first, h.second), (1, 1));
            assert_eq!(u64::from(h.content_size), encrypted_len(len));
            assert_eq!(u64::from(h.orig_size), len);
        }
    }

    #[test]
    fn split_cuts_the_ciphertext() {
        // The vectors: 1000 bytes -> 1008, packets of 512: 512 + 496.
        let p = plan(1000, Some(512), Granularity::Split);
        assert_eq!((p.total, p.data_len(0), p.data_len(1)), (2, 512, 496));
        assert_eq!(p.header(1).content_size, 1008);
        // Exactly full last packet: 1008 in 16-byte packets.
        let p = plan(1000, Some(16), Granularity::Split);
        assert_eq!((p.total, p.data_len(62)), (63, 16));
        // A larger packet than the file: one packet.
        assert_eq!(plan(1000, Some(4096), Granularity::Split).total, 1);
        // Empty file: one 16-byte packet.
        let p = plan(0, Some(1024), Granularity::Split);
        assert_eq!((p.total, p.data_len(0)), (1, 16));
    }

    #[test]
    fn each_pads_every_piece() {
        // 10,000 bytes in 4,096-byte pieces: 4112 + 4112 + 1824.
        let p = plan(10_000, Some(4096), Granularity::Each);
        assert_eq!(p.total, 3);
        assert_eq!(
            (p.data_len(0), p.data_len(1), p.data_len(2)),
            (4112, 4112, 1824)
        );
        assert_eq!(p.content_len, 4112 + 4112 + 1824);
        // Exactly full last piece: 8192 = 2 x 4096, each 4112 on the wire.
        let p = plan(8192, Some(4096), Granularity::Each);
        assert_eq!((p.total, p.data_len(1), p.plain_of(1)), (2, 4112, 4096));
        // Empty file: one packet of one padding block.
        let p = plan(0, Some(4096), Granularity::Each);
        assert_eq!((p.total, p.data_len(0), p.plain_of(0)), (1, 16, 0));
        // Per-packet fields describe the packet.
        let o = opts(Some(4000), Granularity::Each, PacketFields::Packet);
        let p = PacketPlan::new(10_000, &o).unwrap();
        let h = p.header(2);
        assert_eq!(
            (h.content_size, h.orig_size, h.first, h.second),
            (2016, 2000, 3, 3)
        );
    }

    #[test]
    fn more_than_65535_packets_raise_the_size_to_the_smallest_fitting_multiple_of_16() {
        let len = 100 << 20; // 100 MiB in 1 KiB packets would be 102,401
        let p = plan(len, Some(1024), Granularity::Split);
        assert_eq!(p.raised_from, Some(1024));
        let cipher = encrypted_len(len);
        assert_eq!(p.piece, cipher.div_ceil(65_535).next_multiple_of(16));
        assert_eq!(p.piece, 1616);
        assert!(u64::from(p.total) <= MAX_PACKETS);
        // 16 bytes less would not fit.
        assert!(cipher.div_ceil(p.piece - 16) > MAX_PACKETS);
        let p = plan(len, Some(1024), Granularity::Each);
        assert_eq!((p.raised_from, p.piece), (Some(1024), 1616));
        // Exactly 65,535 packets is fine.
        let p = plan(65_535 * 16 - 1, Some(16), Granularity::Split);
        assert_eq!((p.total, p.raised_from), (65_535, None));
    }

    #[test]
    fn options_are_checked() {
        let bad = |o: PacketOptions| PacketPlan::new(10, &o).unwrap_err();
        let d = PacketOptions::default();
        assert_eq!(
            bad(PacketOptions {
                size: Some(1000),
                ..d
            }),
            Some(PacketOptionsError::Size { size: 1000 })
        );
        assert_eq!(
            bad(PacketOptions { size: Some(0), ..d }),
            Some(PacketOptionsError::Size { size: 0 })
        );
        assert_eq!(
            bad(PacketOptions { base: 2, ..d }),
            Some(PacketOptionsError::Base { base: 2 })
        );
        assert_eq!(
            bad(PacketOptions {
                fields: PacketFields::Packet,
                ..d
            }),
            Some(PacketOptionsError::FieldsNeedEach)
        );
    }

    #[test]
    fn content_that_does_not_fit_the_field_is_refused() {
        let max = u64::from(MAX_CONTENT_SIZE) - 1;
        assert!(PacketPlan::new(max, &PacketOptions::default()).is_ok());
        // Each mode adds 16 bytes per packet: the largest file then does
        // not fit.
        let each = opts(Some(1 << 20), Granularity::Each, PacketFields::Whole);
        assert_eq!(PacketPlan::new(max, &each), Err(None));
    }

    #[test]
    fn summary_names_count_base_and_mode() {
        assert_eq!(
            plan(1000, Some(512), Granularity::Split).summary(),
            "2 packets from 1, split"
        );
        let o = PacketOptions {
            base: 0,
            mode: Granularity::Each,
            ..PacketOptions::default()
        };
        assert_eq!(
            PacketPlan::new(5, &o).unwrap().summary(),
            "1 packet from 0, each"
        );
    }
}
