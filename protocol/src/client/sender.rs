//! The file's bytes on their way out: AES-CBC (zero IV, PKCS#7, §4), the
//! cksum (§5), and, in 2024a/2024c, the packet headers between the pieces
//! (§9), all in one streaming pass that holds no more than the caller's
//! chunk.

use std::fmt;

use crate::cksum::Cksum;
use crate::crypto::{AesKey, CbcEncryptor};
use crate::message::{encode_packet_header, Revision};
use crate::wire::{ClientId, FixedName};

use super::plan::{Granularity, PacketPlan};

/// The file did not hold the number of bytes announced in the file
/// message's header: it grew or shrank while being sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileSizeChanged {
    /// The length the header declared.
    pub declared: u64,
    /// The length seen so far (for growth: at least declared + 1).
    pub seen: u64,
}

impl fmt::Display for FileSizeChanged {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "file changed size while being sent: {} bytes announced, {} read",
            self.declared, self.seen
        )
    }
}

impl std::error::Error for FileSizeChanged {}

/// Writes the header of packet `index` of a plan.
#[derive(Debug)]
struct Framer {
    rev: Revision,
    client_id: ClientId,
    file_name: FixedName,
    plan: PacketPlan,
}

impl Framer {
    fn write(&self, index: u16, out: &mut Vec<u8>) {
        encode_packet_header(
            self.rev,
            &self.client_id,
            &self.plan.header(index),
            &self.file_name,
            self.plan.data_len(index),
            out,
        );
    }
}

/// How the ciphertext is laid out after the first header.
enum Cut {
    /// One message (1028, 1103): the ciphertext, nothing else.
    Single { encryptor: CbcEncryptor },
    /// 2024 split: one ciphertext, a packet header every `plan.piece`
    /// bytes. `pos` counts the ciphertext bytes written.
    Split {
        encryptor: CbcEncryptor,
        pos: u64,
        framer: Box<Framer>,
    },
    /// 2024 each: every `plan.piece` plaintext bytes encrypted and padded
    /// alone. `index` is the packet being filled, `filled` its plaintext
    /// so far, `open` whether its header is out.
    Each {
        key: AesKey,
        encryptor: CbcEncryptor,
        index: u16,
        filled: u64,
        open: bool,
        framer: Box<Framer>,
    },
}

/// Encrypts a file's plaintext and computes its cksum in one pass,
/// checking that exactly the declared number of bytes goes through. In
/// 2024a/2024c it also writes the header of every packet after the first
/// (whose header is [`FileUpload::header`](super::FileUpload::header)).
pub struct FileSender {
    cksum: Cksum,
    declared: u64,
    cut: Cut,
    /// Split mode: ciphertext waiting to be cut into packets.
    scratch: Vec<u8>,
}

impl FileSender {
    /// A sender of one single-message file (1028, 1103) of `declared`
    /// plaintext bytes.
    pub(crate) fn new(key: &AesKey, declared: u64) -> Self {
        FileSender {
            cksum: Cksum::new(),
            declared,
            cut: Cut::Single {
                encryptor: CbcEncryptor::new(key),
            },
            scratch: Vec::new(),
        }
    }

    /// A sender of a 2024 file in packets.
    pub(crate) fn packets(
        key: &AesKey,
        rev: Revision,
        client_id: ClientId,
        file_name: FixedName,
        plan: PacketPlan,
    ) -> Self {
        let declared = plan.plain_len;
        let mode = plan.mode;
        let framer = Box::new(Framer {
            rev,
            client_id,
            file_name,
            plan,
        });
        let encryptor = CbcEncryptor::new(key);
        let cut = match mode {
            Granularity::Split => Cut::Split {
                encryptor,
                pos: 0,
                framer,
            },
            Granularity::Each => Cut::Each {
                key: key.clone(),
                encryptor,
                index: 0,
                filled: 0,
                open: true,
                framer,
            },
        };
        FileSender {
            cksum: Cksum::new(),
            declared,
            cut,
            scratch: Vec::new(),
        }
    }

    fn check_growth(&self, more: usize) -> Result<(), FileSizeChanged> {
        let seen = self.cksum.len() + more as u64;
        if seen > self.declared {
            return Err(FileSizeChanged {
                declared: self.declared,
                seen,
            });
        }
        Ok(())
    }

    /// Encrypts the next piece of plaintext, appending what goes on the
    /// wire (ciphertext, and packet headers where packets start) to `out`.
    /// Refuses bytes beyond the declared length (the file grew).
    pub fn push(&mut self, plain: &[u8], out: &mut Vec<u8>) -> Result<(), FileSizeChanged> {
        self.check_growth(plain.len())?;
        self.cksum.update(plain);
        match &mut self.cut {
            Cut::Single { encryptor } => encryptor.update(plain, out),
            Cut::Split {
                encryptor,
                pos,
                framer,
            } => {
                self.scratch.clear();
                encryptor.update(plain, &mut self.scratch);
                cut_split(&self.scratch, pos, framer, out);
            }
            Cut::Each {
                key,
                encryptor,
                index,
                filled,
                open,
                framer,
            } => {
                let mut rest = plain;
                while !rest.is_empty() && *index < framer.plan.total {
                    if !*open {
                        framer.write(*index, out);
                        *open = true;
                    }
                    let len = framer.plan.plain_of(*index);
                    let take = (len - *filled).min(rest.len() as u64) as usize;
                    encryptor.update(&rest[..take], out);
                    rest = &rest[take..];
                    *filled += take as u64;
                    if *filled == len {
                        let done = std::mem::replace(encryptor, CbcEncryptor::new(key));
                        done.finish(out);
                        *index += 1;
                        *filled = 0;
                        *open = false;
                    }
                }
            }
        }
        Ok(())
    }

    /// Like [`FileSender::push`], but encrypts `buf` in place (no copy)
    /// and returns `Ok(true)` when it holds whole blocks, nothing is
    /// carried over from earlier input, and no packet starts or ends
    /// inside it; otherwise returns `Ok(false)` and leaves `buf` alone, so
    /// the caller uses `push`.
    pub fn push_in_place(&mut self, buf: &mut [u8]) -> Result<bool, FileSizeChanged> {
        self.check_growth(buf.len())?;
        let len = buf.len() as u64;
        let fits = match &self.cut {
            Cut::Single { encryptor } => encryptor.can_update_in_place(buf.len()),
            Cut::Split {
                encryptor,
                pos,
                framer,
            } => {
                let at = *pos % framer.plan.piece;
                let header_due = at == 0 && *pos > 0;
                encryptor.can_update_in_place(buf.len())
                    && !header_due
                    && at + len <= framer.plan.piece
            }
            Cut::Each {
                encryptor,
                index,
                filled,
                open,
                framer,
                ..
            } => {
                *open
                    && *index < framer.plan.total
                    && *filled + len < framer.plan.plain_of(*index)
                    && encryptor.can_update_in_place(buf.len())
            }
        };
        if !fits {
            return Ok(false);
        }
        self.cksum.update(buf);
        match &mut self.cut {
            Cut::Single { encryptor } => encryptor.update_in_place(buf),
            Cut::Split { encryptor, pos, .. } => {
                *pos += len;
                encryptor.update_in_place(buf)
            }
            Cut::Each {
                encryptor, filled, ..
            } => {
                *filled += len;
                encryptor.update_in_place(buf)
            }
        };
        Ok(true)
    }

    /// Plaintext bytes still expected.
    pub fn remaining(&self) -> u64 {
        self.declared - self.cksum.len()
    }

    /// Appends the last (padded) block, and any packet header it starts,
    /// to `out` and returns the cksum of the plaintext. Refuses a short
    /// file (it shrank).
    pub fn finish(mut self, out: &mut Vec<u8>) -> Result<u32, FileSizeChanged> {
        if self.cksum.len() != self.declared {
            return Err(FileSizeChanged {
                declared: self.declared,
                seen: self.cksum.len(),
            });
        }
        match self.cut {
            Cut::Single { encryptor } => encryptor.finish(out),
            Cut::Split {
                encryptor,
                mut pos,
                framer,
            } => {
                self.scratch.clear();
                encryptor.finish(&mut self.scratch);
                cut_split(&self.scratch, &mut pos, &framer, out);
            }
            Cut::Each {
                encryptor,
                index,
                open,
                framer,
                ..
            } => {
                // Only an empty file's one packet is still open here:
                // every other packet closed when its last byte came.
                if index < framer.plan.total {
                    if !open {
                        framer.write(index, out);
                    }
                    encryptor.finish(out);
                }
            }
        }
        Ok(self.cksum.finish())
    }
}

/// Appends split-mode ciphertext to `out`, a packet header before every
/// packet's first byte but the first packet's.
fn cut_split(mut cipher: &[u8], pos: &mut u64, framer: &Framer, out: &mut Vec<u8>) {
    let piece = framer.plan.piece;
    while !cipher.is_empty() {
        let at = *pos % piece;
        if at == 0 && *pos > 0 {
            framer.write((*pos / piece) as u16, out);
        }
        let n = (piece - at).min(cipher.len() as u64) as usize;
        out.extend_from_slice(&cipher[..n]);
        cipher = &cipher[n..];
        *pos += n as u64;
    }
}

impl fmt::Debug for FileSender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let packets = match &self.cut {
            Cut::Single { .. } => None,
            Cut::Split { framer, .. } | Cut::Each { framer, .. } => Some(framer.plan.total),
        };
        f.debug_struct("FileSender")
            .field("declared", &self.declared)
            .field("done", &self.cksum.len())
            .field("packets", &packets)
            .finish_non_exhaustive()
    }
}
