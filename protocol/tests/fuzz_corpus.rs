//! Replays every committed fuzz input (fuzz/corpus/<target>/ and the
//! crash regressions in fuzz/regressions/<target>/) through the same
//! functions the cargo-fuzz targets call, so CI checks them on stable.

use std::path::Path;

use sealdrop_protocol::fuzzing;

fn replay(target: &str, run: fn(&[u8])) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let mut count = 0;
    for dir in ["corpus", "regressions"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            let data = std::fs::read(&path).unwrap();
            let result = std::panic::catch_unwind(|| run(&data));
            assert!(result.is_ok(), "{target} fails on {}", path.display());
            count += 1;
        }
    }
    assert!(count > 0, "no corpus for {target}: run fuzz/make_seeds.py");
}

#[test]
fn request_decoder_corpus() {
    replay("request_decoder", fuzzing::request_decoder);
}

#[test]
fn response_decoder_corpus() {
    replay("response_decoder", fuzzing::response_decoder);
}

#[test]
fn server_session_corpus() {
    replay("server_session", |data| {
        fuzzing::server_session(data, std::time::Instant::now())
    });
}

#[test]
fn sanitizer_corpus() {
    replay("sanitizer", fuzzing::sanitizer);
}

#[test]
fn request_roundtrip_corpus() {
    replay("request_roundtrip", fuzzing::request_roundtrip);
}

#[test]
fn client_session_corpus() {
    replay("client_session", |data| {
        fuzzing::client_session(data, std::time::Instant::now())
    });
}
