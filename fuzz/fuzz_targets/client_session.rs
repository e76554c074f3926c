#![no_main]
//! Fuzz target: see sealdrop_protocol::fuzzing::client_session for the invariants.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    sealdrop_protocol::fuzzing::client_session(data);
});
