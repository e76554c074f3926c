//! sealdrop-server as a library: the event loop ([`event_loop::Server`])
//! and its settings ([`config`]), the storage layer (the SQLite records
//! and the received files of PROTOCOL.md §8, behind the
//! [`sealdrop_protocol::store::Store`] trait), and the glue to systemd and
//! the log. The binary (`main.rs`) only parses flags and calls in here;
//! tests and the benchmark run the same loop in-process
//! ([`inprocess::spawn`]).
pub mod admin;
pub mod config;
pub mod control;
pub mod db;
pub mod direct;
pub mod event_loop;
pub mod files;
pub mod inprocess;
pub mod logging;
pub mod metrics;
pub mod metrics_http;
pub mod pg;
pub mod records;
pub mod store;
pub mod systemd;
