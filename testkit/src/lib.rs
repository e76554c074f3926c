//! sealdrop-testkit: the one blocking protocol client of the tests and the
//! benchmark, built only on the public API of `sealdrop-protocol`.
//!
//! * [`Conn`]: a TCP connection to a server with raw frame I/O, response
//!   decoding, and a timeout on every read and write.
//! * [`Client`]: a client's identity and keys, and the protocol steps
//!   (register, key exchange, reconnect, upload, verdicts). Each step
//!   panics with a clear message when the server does not answer as the
//!   step expects; its `try_` twin returns the failure instead (what a
//!   load generator needs). [`UploadStream`] streams a 1028 of any size,
//!   or in 2024a/2024c the file's packets ([`FileEncoder`]). A client and
//!   its connections speak [`REV`] unless given another revision
//!   ([`Client::in_revision`], [`Conn::connect_in`]).
//! * [`frames`]: raw request frames, well-formed or not.
//! * [`vectors`]: the golden vectors of `fixtures/vectors`.
//! * [`data`]: deterministic test data, files, and comparisons.
//! * [`store`]: a read-only view of a server's data directory (the
//!   database and file layout of PROTOCOL.md §8).
//! * [`util`]: bounded waits, thread joins and child processes.
//! * [`pg`]: a throw-away PostgreSQL cluster (skips where PostgreSQL is
//!   not installed).
//!
//! `use sealdrop_testkit::prelude::*;` brings all of it in.

pub mod client;
pub mod conn;
pub mod data;
pub mod frames;
pub mod pg;
pub mod store;
pub mod util;
pub mod vectors;

pub use client::{decrypt_unblinded, unblinded_key, Client, Error, FileEncoder, UploadStream};
pub use conn::{Conn, RecvError};

use std::time::Duration;

use sealdrop_protocol::Revision;

/// The revision a [`Client`] and a [`Conn`] speak unless told otherwise.
pub const REV: Revision = Revision::R2023c;

/// Default read/write timeout of a [`Conn`]: generous (a debug build
/// decrypts only a few MB/s, and a hundred uploads queue behind each
/// other), only there so that a hung server fails a test instead of
/// hanging it.
pub const IO_TIMEOUT: Duration = Duration::from_secs(90);

/// Everything, for `use sealdrop_testkit::prelude::*;`.
pub mod prelude {
    pub use crate::client::{
        decrypt_unblinded, unblinded_key, Client, Error, FileEncoder, UploadStream,
    };
    pub use crate::conn::{Conn, RecvError};
    pub use crate::data::*;
    pub use crate::frames::*;
    pub use crate::store::*;
    pub use crate::util::*;
    pub use crate::vectors::*;
    pub use crate::{IO_TIMEOUT, REV};
}
