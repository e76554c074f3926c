//! The server library's in-process handle: a server on a thread, its
//! events observed, stopped by its handle.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use sealdrop_protocol::server::CloseReason;
use sealdrop_protocol::{
    ClientId, FixedName, Request, Response, ResponseDecoder, Revision, ServerEvent,
};
use sealdrop_server::config::Settings;
use sealdrop_server::inprocess::{self, Observed};

const WAIT: Duration = Duration::from_secs(20);

#[test]
fn registers_over_loopback_reports_events_and_stops_on_request() {
    let dir = tempfile::tempdir().unwrap();
    let any_port: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let server = inprocess::spawn(Settings::with_defaults(any_port, dir.path())).unwrap();
    assert_ne!(server.addr().port(), 0);

    let mut sock = TcpStream::connect(server.addr()).unwrap();
    sock.set_read_timeout(Some(WAIT)).unwrap();
    let mut frame = Vec::new();
    Request::Register {
        name: FixedName::new(b"inproc").unwrap(),
    }
    .encode(Revision::R2023c, &ClientId::ZERO, &mut frame);
    sock.write_all(&frame).unwrap();
    let mut decoder = ResponseDecoder::new(Revision::R2023c);
    let mut buf = [0u8; 64];
    let response = loop {
        let n = sock.read(&mut buf).unwrap();
        assert!(n > 0, "server closed before answering");
        let mut input = &buf[..n];
        if let Some(r) = decoder.decode(&mut input).unwrap() {
            break r;
        }
    };
    let Response::Registered { client_id } = response else {
        panic!("expected 2100, got {response:?}");
    };
    let registered = server.wait_for(WAIT, |e| match e {
        Observed::Session {
            event: ServerEvent::Registered {
                client_id, name, ..
            },
            ..
        } => Some((*client_id, name.clone())),
        _ => None,
    });
    assert_eq!(registered, Some((client_id, "inproc".to_owned())));
    drop(sock);
    let closed = server.wait_for(WAIT, |e| match e {
        Observed::Closed { reason, .. } => Some(*reason),
        _ => None,
    });
    assert_eq!(closed, Some(Some(CloseReason::PeerClosed)));
    server.stop().unwrap();
    assert!(dir.path().join("defensive.db").is_file());
}
