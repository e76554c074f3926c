//! sealdrop-server's storage layer: the SQLite records and the received
//! files of PROTOCOL.md §8, behind the [`sealdrop_protocol::store::Store`] trait.
pub mod db;
pub mod direct;
pub mod files;
pub mod store;
