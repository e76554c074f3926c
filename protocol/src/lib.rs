//! sealdrop-protocol: the sans-IO core of sealdrop.
pub mod cksum;
pub mod client;
pub mod consts;
pub mod crypto;
pub mod decode;
pub mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod kind;
pub mod memstore;
pub mod message;
pub mod packets;
pub mod revision;
pub mod server;
pub mod store;
pub mod wire;

pub use client::{
    Action as ClientAction, ClientConfig, ClientSession, Event as ClientEvent, FileSender,
    FileUpload, Identity, Outcome as ClientOutcome,
};
pub use decode::{RequestDecoder, RequestEvent, ResponseDecoder};
pub use error::DecodeError;
pub use message::{Request, RequestHeader, RequestKind, Response, ResponseKind, Revision};
pub use server::{ServerConfig, ServerEvent, ServerSession};
pub use store::Store;
pub use wire::{sanitize_file_name, ClientId, FixedName, NameError};
