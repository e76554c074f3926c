//! The 2024 file message: one upload sent as numbered packets (PROTOCOL.md
//! §9, §9.1), and the rules that turn whatever a public client sends into
//! one decision per upload.
//!
//! Public 2024 clients differ on four things, and the server decides each
//! from the first packet, deterministically:
//!
//! * **Numbering**: the first packet's number is 0 or 1 and sets the base.
//! * **Field order**: packet_number then total_packets (most), or total
//!   then number. If the first packet's first field is larger than its
//!   second, the fields are read the other way round for the whole upload
//!   (a first packet is number 0 or 1, so a first field above the second
//!   can only be a total).
//! * **Granularity**: *split* (the whole file encrypted once, the
//!   ciphertext cut into pieces: one decryptor runs across the packets and
//!   the padding is checked at the end) when the upload is one packet, or
//!   when content_size equals the padded size of orig_file_size and the
//!   first packet does not carry all content_size bytes. Otherwise *each*
//!   (every packet encrypted and padded on its own with a zero IV, so every
//!   packet's length is a non-zero multiple of 16 and its padding is
//!   checked on its own).
//! * **Sizes**: content_size and orig_file_size may count the whole file or
//!   the packet; only split mode relies on content_size (the whole
//!   ciphertext, which the packets must add up to exactly).
//!
//! After the first packet, packets must come in order (number = last + 1),
//! with the same total, name and client; a packet carrying the first
//! number starts the upload over. Anything else is a [`PacketError`],
//! answered with the revision's error response, and the partial upload is
//! dropped.
//!
//! **One answer per upload.** A public 2024 client sends every packet and
//! then reads one answer. So once an upload is refused (a bad sequence, or
//! any refusal: quota, unknown client, bad padding, a store error) at a
//! packet that is not its last, the packets still to come of that upload
//! are read and dropped without an answer ([`Remainder`]): the packets
//! from the same client that are not numbered as a first packet, until
//! one whose number reaches the last of its total. A first packet, a
//! packet from another client, or any other request ends the dropping and
//! is handled as usual.

use std::fmt;

use crate::consts::AES_BLOCK_LEN;

/// The fields of a 2024 file packet before its content (§9).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PacketHeader {
    /// content_size: the whole file's ciphertext size, or this packet's
    /// (§9.1: clients differ).
    pub content_size: u32,
    /// orig_file_size: the whole file's plaintext size, or this packet's.
    pub orig_size: u32,
    /// The first u16 as it travels: packet_number in most clients.
    pub first: u16,
    /// The second u16: total_packets in most clients.
    pub second: u16,
}

/// How the packets of one upload were encrypted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Granularity {
    /// One ciphertext of the whole file, cut into pieces.
    Split,
    /// Each packet a separately padded ciphertext (zero IV each time).
    Each,
}

impl fmt::Display for Granularity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Granularity::Split => "split",
            Granularity::Each => "each",
        })
    }
}

/// Why a packet does not fit the upload it belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PacketError {
    /// A first packet (no upload in progress) whose number is neither 0
    /// nor 1, or whose total is 0.
    BadFirst {
        /// The two u16 fields as sent.
        fields: (u16, u16),
    },
    /// A packet whose number is not the next one.
    OutOfOrder {
        /// The number expected.
        expected: u16,
        /// The number received.
        got: u16,
    },
    /// A packet with a total other than the first packet's.
    TotalChanged {
        /// The first packet's total.
        was: u16,
        /// This packet's total.
        now: u16,
    },
    /// A packet whose file name or client differs from the first packet's.
    NameChanged,
    /// In each mode, a packet whose length is not a non-zero multiple of 16.
    NotBlocks {
        /// Its length.
        len: u32,
    },
    /// In split mode, packets adding up to more or less than content_size.
    SizeMismatch {
        /// content_size of the first packet: the whole ciphertext.
        expected: u64,
        /// Bytes received (so far, or at the last packet).
        got: u64,
    },
}

impl fmt::Display for PacketError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PacketError::BadFirst { fields } => write!(
                f,
                "first packet numbered {}/{}: a first packet is number 0 or 1 of a non-zero total",
                fields.0, fields.1
            ),
            PacketError::OutOfOrder { expected, got } => {
                write!(f, "packet {got} where packet {expected} was due")
            }
            PacketError::TotalChanged { was, now } => {
                write!(f, "total_packets changed from {was} to {now}")
            }
            PacketError::NameChanged => {
                f.write_str("a packet for another file or client in the middle of an upload")
            }
            PacketError::NotBlocks { len } => write!(
                f,
                "separately encrypted packet of {len} bytes: not a non-zero multiple of 16"
            ),
            PacketError::SizeMismatch { expected, got } => write!(
                f,
                "packets carry {got} bytes of a {expected}-byte ciphertext"
            ),
        }
    }
}

impl std::error::Error for PacketError {}

/// What a packet means for the upload in progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PacketStep {
    /// The next packet of the upload; `last` when it completes it.
    Next {
        /// This is the final packet.
        last: bool,
    },
    /// A packet with the first number: the upload starts over.
    Restart,
}

/// The decisions and progress of one packetised upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PacketRun {
    /// Number of the first packet: 0 or 1.
    pub base: u16,
    /// total_packets travels first.
    pub swapped: bool,
    /// Packets in the upload.
    pub total: u16,
    /// How the content is encrypted.
    pub granularity: Granularity,
    /// content_size of the first packet.
    pub first_content_size: u32,
    /// The number of the last packet received.
    pub last: u16,
    /// Content bytes received so far.
    pub received: u64,
}

/// The padded ciphertext size of `plain` bytes (§4).
fn padded(plain: u32) -> u64 {
    (u64::from(plain) / AES_BLOCK_LEN as u64 + 1) * AES_BLOCK_LEN as u64
}

/// A packet's number, total and field order, read as a first packet is
/// read: the larger field is the total.
fn read_first(p: &PacketHeader) -> (u16, u16, bool) {
    if p.first > p.second {
        (p.second, p.first, true)
    } else {
        (p.first, p.second, false)
    }
}

/// Whether number and total, read as [`read_first`] reads them, make a
/// first packet: number 0 or 1 of a non-zero total.
fn is_first(number: u16, total: u16) -> bool {
    number <= 1 && total != 0
}

impl PacketRun {
    /// Starts an upload with its first packet, carrying `data_len` bytes.
    pub fn start(p: &PacketHeader, data_len: u32) -> Result<PacketRun, PacketError> {
        let (number, total, swapped) = read_first(p);
        if !is_first(number, total) {
            return Err(PacketError::BadFirst {
                fields: (p.first, p.second),
            });
        }
        // Numbered from 0, a total of N ends at N - 1.
        let granularity = if total == 1
            || (u64::from(p.content_size) == padded(p.orig_size) && data_len < p.content_size)
        {
            Granularity::Split
        } else {
            Granularity::Each
        };
        let mut run = PacketRun {
            base: number,
            swapped,
            total,
            granularity,
            first_content_size: p.content_size,
            last: number,
            received: 0,
        };
        run.take(data_len)?;
        Ok(run)
    }

    /// The number of the final packet.
    pub fn last_number(&self) -> u16 {
        // total >= 1; numbered from 0 the last is total - 1.
        self.total - 1 + self.base
    }

    /// Whether the packet received last completed the upload.
    pub fn is_complete(&self) -> bool {
        self.last == self.last_number()
    }

    /// A further packet of the upload (`same_file`: its name and client
    /// are the first packet's).
    pub fn next(
        &mut self,
        p: &PacketHeader,
        data_len: u32,
        same_file: bool,
    ) -> Result<PacketStep, PacketError> {
        let (number, total) = if self.swapped {
            (p.second, p.first)
        } else {
            (p.first, p.second)
        };
        if number == self.base {
            return Ok(PacketStep::Restart);
        }
        if !same_file {
            return Err(PacketError::NameChanged);
        }
        if total != self.total {
            return Err(PacketError::TotalChanged {
                was: self.total,
                now: total,
            });
        }
        let expected = self.last.wrapping_add(1);
        if self.is_complete() || number != expected {
            return Err(PacketError::OutOfOrder {
                expected,
                got: number,
            });
        }
        self.last = number;
        self.take(data_len)?;
        Ok(PacketStep::Next {
            last: self.is_complete(),
        })
    }

    /// Counts a packet's bytes against the mode's rules.
    fn take(&mut self, data_len: u32) -> Result<(), PacketError> {
        if self.granularity == Granularity::Each
            && (data_len == 0 || !data_len.is_multiple_of(AES_BLOCK_LEN as u32))
        {
            return Err(PacketError::NotBlocks { len: data_len });
        }
        self.received += u64::from(data_len);
        if self.granularity == Granularity::Split {
            let expected = u64::from(self.first_content_size);
            let short = self.is_complete() && self.received != expected;
            if self.received > expected || short {
                return Err(PacketError::SizeMismatch {
                    expected,
                    got: self.received,
                });
            }
        }
        Ok(())
    }
}

/// The rest of a refused upload: its packets still to come, which are read
/// and dropped without an answer, so that the upload gets one answer, the
/// refusal's (see the module docs). Holds only how the upload numbers its
/// packets: dropping stores nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Remainder {
    /// The upload's first packet was numbered as one (0 or 1): its later
    /// packets are read in its field order, and one numbered `base` starts
    /// a new upload.
    Numbered {
        /// The first packet's number.
        base: u16,
        /// total_packets travels first.
        swapped: bool,
    },
    /// The upload's first packet was refused as one ([`PacketError::BadFirst`]):
    /// every packet is read as a first packet is (the larger field is the
    /// total), any valid first packet starts a new upload, and the last
    /// packet is the one numbered as its total (numbering from 1, as every
    /// public client does).
    Unnumbered,
}

impl Remainder {
    /// The numbering of an upload that begins with `p`, whether `p` was
    /// accepted or refused.
    pub fn of_first(p: &PacketHeader) -> Remainder {
        let (number, total, swapped) = read_first(p);
        if is_first(number, total) {
            Remainder::Numbered {
                base: number,
                swapped,
            }
        } else {
            Remainder::Unnumbered
        }
    }

    /// The numbering of the upload `run`.
    pub fn of_run(run: &PacketRun) -> Remainder {
        Remainder::Numbered {
            base: run.base,
            swapped: run.swapped,
        }
    }

    /// What is left to drop when the upload is refused at its packet `p`:
    /// nothing if `p` is its last.
    pub fn after(self, p: &PacketHeader) -> Option<Remainder> {
        (!self.is_last(p)).then_some(self)
    }

    /// Whether `p`, from the refused upload's client, continues it:
    /// `Some(last)` when it is to be dropped (`last`: the dropping ends
    /// with it), `None` when it is numbered as a first packet and starts a
    /// new upload.
    pub fn continues(&self, p: &PacketHeader) -> Option<bool> {
        let starts = match *self {
            Remainder::Numbered { base, swapped } => {
                let number = if swapped { p.second } else { p.first };
                number == base
            }
            Remainder::Unnumbered => {
                let (number, total, _) = read_first(p);
                is_first(number, total)
            }
        };
        (!starts).then(|| self.is_last(p))
    }

    /// Whether `p`'s number reaches the last of its own total.
    fn is_last(&self, p: &PacketHeader) -> bool {
        let (number, total, base) = match *self {
            Remainder::Numbered { base, swapped } => {
                let (number, total) = if swapped {
                    (p.second, p.first)
                } else {
                    (p.first, p.second)
                };
                (number, total, base)
            }
            Remainder::Unnumbered => {
                let (number, total, _) = read_first(p);
                (number, total, 1)
            }
        };
        // number >= total - 1 + base, without underflow at total 0.
        u32::from(number) + 1 >= u32::from(total) + u32::from(base)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pk(content_size: u32, orig_size: u32, first: u16, second: u16) -> PacketHeader {
        PacketHeader {
            content_size,
            orig_size,
            first,
            second,
        }
    }

    #[test]
    fn whole_file_sizes_with_cut_ciphertext_is_split() {
        // 1000 bytes -> 1008 ciphertext, cut in 512 + 496 (the vectors).
        let mut run = PacketRun::start(&pk(1008, 1000, 1, 2), 512).unwrap();
        assert_eq!(run.granularity, Granularity::Split);
        assert!(!run.is_complete());
        assert_eq!(
            run.next(&pk(1008, 1000, 2, 2), 496, true),
            Ok(PacketStep::Next { last: true })
        );
    }

    #[test]
    fn per_packet_sizes_with_padded_pieces_is_each() {
        // 4096-byte plaintext pieces of a 10000-byte file: 4112 on the wire.
        let run = PacketRun::start(&pk(4112, 4096, 1, 3), 4112).unwrap();
        assert_eq!(run.granularity, Granularity::Each);
        // Whole-file sizes but padded pieces: content_size > padded(orig).
        let run = PacketRun::start(&pk(10_048, 10_000, 1, 3), 4112).unwrap();
        assert_eq!(run.granularity, Granularity::Each);
    }

    #[test]
    fn one_packet_is_split_whatever_the_fields_say() {
        let run = PacketRun::start(&pk(1008, 1000, 1, 1), 1008).unwrap();
        assert_eq!(run.granularity, Granularity::Split);
        assert!(run.is_complete());
        let run = PacketRun::start(&pk(1008, 1000, 0, 1), 1008).unwrap();
        assert!(run.is_complete());
    }

    #[test]
    fn numbering_from_zero_and_swapped_fields() {
        let mut run = PacketRun::start(&pk(48, 40, 0, 3), 16).unwrap();
        assert_eq!((run.base, run.swapped), (0, false));
        run.next(&pk(48, 40, 1, 3), 16, true).unwrap();
        assert_eq!(
            run.next(&pk(48, 40, 2, 3), 16, true),
            Ok(PacketStep::Next { last: true })
        );
        // total first: (3, 1) is packet 1 of 3.
        let mut run = PacketRun::start(&pk(48, 40, 3, 1), 16).unwrap();
        assert_eq!((run.base, run.swapped, run.total), (1, true, 3));
        run.next(&pk(48, 40, 3, 2), 16, true).unwrap();
        assert_eq!(
            run.next(&pk(48, 40, 3, 3), 16, true),
            Ok(PacketStep::Next { last: true })
        );
    }

    #[test]
    fn bad_sequences_are_refused() {
        assert!(matches!(
            PacketRun::start(&pk(48, 40, 2, 3), 16),
            Err(PacketError::BadFirst { .. })
        ));
        assert!(matches!(
            PacketRun::start(&pk(48, 40, 0, 0), 16),
            Err(PacketError::BadFirst { .. })
        ));
        let first = || PacketRun::start(&pk(48, 40, 1, 3), 16).unwrap();
        assert_eq!(
            first().next(&pk(48, 40, 3, 3), 16, true),
            Err(PacketError::OutOfOrder {
                expected: 2,
                got: 3
            })
        );
        assert_eq!(
            first().next(&pk(48, 40, 2, 4), 16, true),
            Err(PacketError::TotalChanged { was: 3, now: 4 })
        );
        assert_eq!(
            first().next(&pk(48, 40, 2, 3), 16, false),
            Err(PacketError::NameChanged)
        );
        // Duplicate of the current number.
        let mut run = first();
        run.next(&pk(48, 40, 2, 3), 16, true).unwrap();
        assert!(run.next(&pk(48, 40, 2, 3), 16, true).is_err());
        // Past the total.
        run.next(&pk(48, 40, 3, 3), 16, true).unwrap();
        assert!(run.next(&pk(48, 40, 4, 3), 16, true).is_err());
        // The first number again starts over.
        assert_eq!(
            first().next(&pk(48, 40, 1, 3), 16, true),
            Ok(PacketStep::Restart)
        );
    }

    #[test]
    fn split_packets_must_add_up_to_content_size() {
        let mut run = PacketRun::start(&pk(1008, 1000, 1, 2), 512).unwrap();
        assert_eq!(
            run.next(&pk(1008, 1000, 2, 2), 480, true),
            Err(PacketError::SizeMismatch {
                expected: 1008,
                got: 992
            })
        );
        let mut run = PacketRun::start(&pk(1008, 1000, 1, 3), 512).unwrap();
        assert!(run.next(&pk(1008, 1000, 2, 3), 512, true).is_err());
    }

    #[test]
    fn the_rest_of_a_refused_upload_is_dropped_until_its_last_packet() {
        // Numbered from 1, refused at packet 1 of 3: 2 is dropped, 3 is
        // dropped and ends it, 1 starts a new upload.
        let rest = Remainder::of_first(&pk(48, 40, 1, 3))
            .after(&pk(48, 40, 1, 3))
            .unwrap();
        assert_eq!(rest.continues(&pk(48, 40, 2, 3)), Some(false));
        assert_eq!(rest.continues(&pk(48, 40, 3, 3)), Some(true));
        assert_eq!(rest.continues(&pk(48, 40, 4, 3)), Some(true));
        assert_eq!(rest.continues(&pk(48, 40, 1, 3)), None);
        assert_eq!(rest.continues(&pk(16, 1, 1, 1)), None);
        // Refused at its last packet: nothing to drop.
        assert_eq!(rest.after(&pk(48, 40, 3, 3)), None);
        assert_eq!(rest.after(&pk(48, 40, 5, 3)), None);
        assert_eq!(
            Remainder::of_first(&pk(16, 1, 1, 1)).after(&pk(16, 1, 1, 1)),
            None
        );
        // Numbered from 0: 2 of 3 is the last, 1 continues.
        let rest = Remainder::of_first(&pk(48, 40, 0, 3));
        assert_eq!(rest.continues(&pk(48, 40, 1, 3)), Some(false));
        assert_eq!(rest.continues(&pk(48, 40, 2, 3)), Some(true));
        assert_eq!(rest.continues(&pk(48, 40, 0, 3)), None);
        // Total first: (3, 2) is packet 2 of 3.
        let rest = Remainder::of_first(&pk(48, 40, 3, 1));
        assert_eq!(
            rest,
            Remainder::Numbered {
                base: 1,
                swapped: true
            }
        );
        assert_eq!(rest.continues(&pk(48, 40, 3, 2)), Some(false));
        assert_eq!(rest.continues(&pk(48, 40, 3, 3)), Some(true));
        assert_eq!(rest.continues(&pk(48, 40, 2, 1)), None);
        // A first packet refused as one: any valid first starts anew.
        let rest = Remainder::of_first(&pk(48, 40, 2, 3));
        assert_eq!(rest, Remainder::Unnumbered);
        assert_eq!(rest.after(&pk(48, 40, 2, 3)), Some(rest));
        assert_eq!(rest.continues(&pk(48, 40, 3, 3)), Some(true));
        assert_eq!(rest.continues(&pk(48, 40, 3, 4)), Some(false));
        assert_eq!(rest.continues(&pk(48, 40, 0, 3)), None);
        assert_eq!(rest.continues(&pk(48, 40, 1, 3)), None);
        assert_eq!(rest.continues(&pk(48, 40, 5, 1)), None);
        assert_eq!(rest.after(&pk(0, 0, 0, 0)), None);
        assert_eq!(rest.continues(&pk(0, 0, 0, 0)), Some(true));
        assert_eq!(rest.continues(&pk(0, 0, u16::MAX, u16::MAX)), Some(true));
        let rest = Remainder::Numbered {
            base: 0,
            swapped: false,
        };
        assert_eq!(rest.continues(&pk(0, 0, 1, 0)), Some(true));
    }

    #[test]
    fn each_mode_packets_must_be_whole_blocks() {
        assert_eq!(
            PacketRun::start(&pk(1000, 1000, 1, 2), 1000),
            Err(PacketError::NotBlocks { len: 1000 })
        );
    }
}
