#![no_main]
//! Fuzz target: see sealdrop_protocol::fuzzing::client_session for the invariants.
//! The clock starts here: the protocol crate reads none.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    sealdrop_protocol::fuzzing::client_session(data, std::time::Instant::now());
});
