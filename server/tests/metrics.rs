//! `--metrics-listen`: the counters move by exactly what clients did
//! (step by step, and in the middle of an upload), an administrator's
//! withdrawal is not a server error, a repair moves the files figure,
//! hostile scrapers (silent, endless, oversized, too many) neither delay
//! an upload nor stay connected past their timeout, the dashboard only
//! names exported metrics and totals the size gauges per store, and
//! `STATUS=` reaches systemd.
//!
//! In-process servers (`inprocess::spawn`) with a tiny HTTP GET; the
//! STATUS= check runs the binary with a fake NOTIFY_SOCKET.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use common::*;
use sealdrop_protocol::{ClientId, Request, Response};
use sealdrop_server::config::Settings;
use sealdrop_server::inprocess::{self, Running};
use sealdrop_server::metrics::{parse_samples, RefusalReason, UploadOutcome};
use sealdrop_server::metrics_http::{MAX_REQUEST_BYTES, MAX_SCRAPERS, READ_TIMEOUT};

const WAIT: Duration = Duration::from_secs(20);

/// An in-process server with the endpoint on an ephemeral port.
fn start(dir: &std::path::Path) -> (Running, SocketAddr) {
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let mut settings = Settings::with_defaults(any, dir);
    settings.metrics_listen = Some(any);
    let running = inprocess::spawn(settings).expect("server starts");
    let metrics = running.metrics_addr().expect("the endpoint is on");
    (running, metrics)
}

/// Sends `request` as is and reads the whole response (the server
/// closes after it): (status line, body).
fn http(addr: SocketAddr, request: &[u8]) -> (String, String) {
    let mut s = TcpStream::connect_timeout(&addr, WAIT).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.set_write_timeout(Some(WAIT)).unwrap();
    s.write_all(request).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("response, then close");
    let text = String::from_utf8(raw).expect("text response");
    let (head, body) = text.split_once("\r\n\r\n").expect("head and body");
    let status = head.lines().next().unwrap_or("").to_owned();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .and_then(|v| v.parse().ok())
        .expect("Content-Length");
    assert_eq!(
        body.len(),
        length,
        "body length differs from Content-Length"
    );
    (status, body.to_owned())
}

/// `GET /metrics`: every sample by name (labels included).
fn scrape(addr: SocketAddr) -> HashMap<String, f64> {
    let (status, body) = http(addr, b"GET /metrics HTTP/1.1\r\nHost: sealdrop\r\n\r\n");
    assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
    parse_samples(&body)
}

fn value(samples: &HashMap<String, f64>, key: &str) -> f64 {
    samples.get(key).copied().unwrap_or(0.0)
}

/// A size gauge (`sealdrop_files_size_bytes`, `sealdrop_database_size_bytes`):
/// its one series, labelled with the server's store.
fn size(samples: &HashMap<String, f64>, name: &str) -> f64 {
    let series: Vec<(&String, &f64)> = samples
        .iter()
        .filter(|(k, _)| k.starts_with(&format!("{name}{{store=\"")))
        .collect();
    assert_eq!(series.len(), 1, "{name}: {series:?}");
    *series[0].1
}

/// Every counter-like sample's change from `before` to `after` (those
/// that did not change left out).
fn moved(before: &HashMap<String, f64>, after: &HashMap<String, f64>) -> HashMap<String, f64> {
    after
        .iter()
        .filter(|(k, _)| {
            let name = k.split('{').next().unwrap_or(k);
            ["_total", "_count", "_sum", "_bucket"]
                .iter()
                .any(|suffix| name.ends_with(suffix))
        })
        .map(|(k, v)| (k.clone(), v - value(before, k)))
        .filter(|(_, d)| *d != 0.0)
        .collect()
}

/// One request line to the running server's control socket, as the
/// administration commands send it; the answer line.
fn control(data_dir: &std::path::Path, request: &str) -> String {
    use std::io::BufRead;
    let mut sock = std::os::unix::net::UnixStream::connect(data_dir.join("control.sock")).unwrap();
    sock.set_read_timeout(Some(WAIT)).unwrap();
    sock.write_all(format!("{request}\n").as_bytes()).unwrap();
    let mut answer = String::new();
    std::io::BufReader::new(&sock)
        .read_line(&mut answer)
        .unwrap();
    answer
}

fn len_of(req: &Request) -> u64 {
    request_frame(&ClientId::ZERO, req).len() as u64
}

/// A registration refused (2101: the name is taken) and a reconnect
/// refused (2106: the client is unknown) count once each under their
/// reasons, beside their requests, and no other counter moves but the
/// connection's and its bytes.
#[test]
fn refused_registrations_and_reconnects_count_under_their_reasons() {
    let dir = tempfile::tempdir().unwrap();
    let (server, metrics) = start(dir.path());
    let name = unique_name("taken");
    let (_holder, _held) = Client::setup(server.addr(), &name);
    let before = scrape(metrics);

    let mut conn = Conn::connect(server.addr());
    let mut second = Client::new(&name);
    let r = second.register_reply(&mut conn);
    assert!(matches!(r, Response::RegistrationFailed), "{r:?}");
    let mut stranger = Client::new(&unique_name("stranger"));
    let r = stranger.reconnect(&mut conn);
    assert!(matches!(r, Response::ReconnectDenied { .. }), "{r:?}");
    let sent = len_of(&Request::Register {
        name: second.name_field(),
    }) + len_of(&Request::Reconnect {
        name: stranger.name_field(),
    });

    let mut d = moved(&before, &scrape(metrics));
    d.retain(|k, _| !k.starts_with("sealdrop_commit_duration_seconds"));
    let expected: HashMap<String, f64> = [
        ("sealdrop_connections_accepted_total", 1.0),
        ("sealdrop_requests_total{code=\"1025\"}", 1.0),
        ("sealdrop_requests_total{code=\"1027\"}", 1.0),
        ("sealdrop_refusals_total{reason=\"registration\"}", 1.0),
        ("sealdrop_refusals_total{reason=\"reconnect\"}", 1.0),
        ("sealdrop_received_bytes_total", sent as f64),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    assert_eq!(d, expected);
    server.stop().unwrap();
}

#[test]
fn counters_move_by_exactly_what_the_clients_did() {
    let dir = tempfile::tempdir().unwrap();
    let (server, metrics) = start(dir.path());
    let before = scrape(metrics);
    assert_eq!(value(&before, "sealdrop_connections_open"), 0.0);

    // One client: register, key, a verified upload of 1000 bytes, then
    // "a.bin" of 3000 bytes sent twice (a 1030 in between), verified.
    let mut conn = Conn::connect(server.addr());
    let mut client = Client::new(&unique_name("metrics"));
    client.register(&mut conn);
    client.exchange_key(&mut conn);
    let first = random_bytes(1, 1000);
    client.upload_verified(&mut conn, "first.bin", &first);
    let second = random_bytes(2, 3000);
    client.send_file(&mut conn, "a.bin", &second);
    let _ = conn.expect(2103);
    client.send_verdict(&mut conn, 1030, "a.bin");
    client.upload_verified(&mut conn, "a.bin", &second);
    let mut sent = len_of(&Request::Register {
        name: client.name_field(),
    }) + len_of(&Request::PublicKey {
        name: client.name_field(),
        public_key: Box::new([0; sealdrop_protocol::consts::PUBLIC_KEY_LEN]),
    });
    let verdict = len_of(&Request::CrcOk {
        file_name: fixed("x"),
    });
    sent += client.file_frame("first.bin", &first).len() as u64 + verdict;
    sent += 2 * client.file_frame("a.bin", &second).len() as u64 + 2 * verdict;

    // A frame that does not decode: 2107 and close.
    let mut bad = Conn::connect(server.addr());
    let bad_frame = header(&ClientId::ZERO, 3, 1111, 0);
    bad.send(&bad_frame);
    bad.expect_error_then_close();
    sent += bad_frame.len() as u64;

    // The bad connection's close is seen by the loop after its 2107.
    let mut after = scrape(metrics);
    let end = Instant::now() + WAIT;
    while value(&after, "sealdrop_connections_open") != 1.0 && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(20));
        after = scrape(metrics);
    }
    assert_eq!(value(&after, "sealdrop_connections_open"), 1.0);

    let mut d = moved(&before, &after);
    let commits = d.remove("sealdrop_commit_duration_seconds_count");
    assert!(commits.is_some_and(|n| n >= 3.0), "commits: {commits:?}");
    d.retain(|k, _| !k.starts_with("sealdrop_commit_duration_seconds"));
    d.retain(|k, _| !k.starts_with("sealdrop_upload_duration_seconds_bucket"));
    let expected: HashMap<String, f64> = [
        ("sealdrop_connections_accepted_total", 2.0),
        ("sealdrop_requests_total{code=\"1025\"}", 1.0),
        ("sealdrop_requests_total{code=\"1026\"}", 1.0),
        ("sealdrop_requests_total{code=\"1028\"}", 3.0),
        ("sealdrop_requests_total{code=\"1029\"}", 2.0),
        ("sealdrop_requests_total{code=\"1030\"}", 1.0),
        ("sealdrop_uploads_total{outcome=\"verified\"}", 2.0),
        ("sealdrop_resends_total", 1.0),
        ("sealdrop_refusals_total{reason=\"bad_frame\"}", 1.0),
        ("sealdrop_received_bytes_total", sent as f64),
        ("sealdrop_stored_bytes_total", 4000.0),
        ("sealdrop_upload_duration_seconds_count", 2.0),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    // The duration sum moved by something positive; compared apart.
    let sum = d.remove("sealdrop_upload_duration_seconds_sum");
    assert!(sum.is_some_and(|s| s > 0.0), "upload duration sum: {sum:?}");
    assert_eq!(d, expected);

    assert_eq!(size(&after, "sealdrop_files_size_bytes"), 4000.0);
    assert_eq!(value(&after, "sealdrop_uploads_in_flight"), 0.0);
    assert_eq!(value(&after, "sealdrop_uploads_awaiting_verdict"), 0.0);
    assert!(size(&after, "sealdrop_database_size_bytes") > 0.0);
    for outcome in UploadOutcome::ALL {
        let key = format!("sealdrop_uploads_total{{outcome=\"{}\"}}", outcome.as_str());
        assert!(after.contains_key(&key), "{key} missing");
    }
    for reason in RefusalReason::ALL {
        let key = format!("sealdrop_refusals_total{{reason=\"{}\"}}", reason.as_str());
        assert!(after.contains_key(&key), "{key} missing");
    }
    drop(conn);
    server.stop().unwrap();
}

/// Bytes of a client's 1025 and 1026 (what `Client::setup` sends).
fn setup_len(client: &Client) -> u64 {
    len_of(&Request::Register {
        name: client.name_field(),
    }) + len_of(&Request::PublicKey {
        name: client.name_field(),
        public_key: Box::new([0; sealdrop_protocol::consts::PUBLIC_KEY_LEN]),
    })
}

/// Bytes of a verdict (1029, 1030 and 1031 have one layout).
fn verdict_len() -> u64 {
    len_of(&Request::CrcOk {
        file_name: fixed("x"),
    })
}

/// A scrape once `sealdrop_connections_open` is `open` (a connection the
/// server closed, or the client dropped, is seen by the loop a moment
/// after the client saw it).
fn settled(metrics: SocketAddr, open: f64) -> HashMap<String, f64> {
    let end = Instant::now() + WAIT;
    loop {
        let s = scrape(metrics);
        if value(&s, "sealdrop_connections_open") == open || Instant::now() >= end {
            assert_eq!(value(&s, "sealdrop_connections_open"), open);
            return s;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Asserts that from `before` to `after` the counters moved by exactly
/// `expected` and nothing else, leaving out the commit histogram (see
/// below) and the upload-duration buckets and sum (times).
fn assert_moved(
    what: &str,
    before: &HashMap<String, f64>,
    after: &HashMap<String, f64>,
    expected: &[(&str, f64)],
) {
    let mut d = moved(before, after);
    d.retain(|k, _| {
        !k.starts_with("sealdrop_commit_duration_seconds")
            && !k.starts_with("sealdrop_upload_duration_seconds_bucket")
            && k != "sealdrop_upload_duration_seconds_sum"
    });
    let expected: HashMap<String, f64> = expected
        .iter()
        .map(|(k, v)| ((*k).to_owned(), *v))
        .collect();
    assert_eq!(d, expected, "{what}");
    assert_eq!(
        value(after, "sealdrop_commit_failures_total"),
        value(before, "sealdrop_commit_failures_total"),
        "{what}: a commit failed"
    );
}

/// Every outcome and refusal reason a real server (SQLite) can be driven
/// to deterministically, one step at a time, with a scrape before and
/// after each, and one in the middle of an upload: each counter moves by
/// exactly what the step did.
///
/// Commit passes are not counted exactly: how many loop passes change
/// something depends on how the kernel hands a frame to the server (a
/// 1028's header and its end in one read or in two), so only failures
/// are checked (none).
#[test]
fn counters_move_by_exactly_each_step_including_mid_upload() {
    let dir = tempfile::tempdir().unwrap();
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let mut settings = Settings::with_defaults(any, dir.path());
    settings.metrics_listen = Some(any);
    // --max-file-size 20000, --quota-files 2, --quota-bytes 10000, and a
    // short header timeout for the timeout step.
    settings.session.max_content = sealdrop_protocol::crypto::encrypted_len(20_000);
    settings.store.quota.max_files = Some(2);
    settings.store.quota.max_bytes = Some(10_000);
    settings.session.header_timeout = Duration::from_secs(1);
    let server = inprocess::spawn(settings).expect("server starts");
    let metrics = server.metrics_addr().unwrap();
    let v = verdict_len();
    let mut last = settled(metrics, 0.0);

    // 1. A client registers, sends its key, and uploads 1000 bytes.
    let mut main = Client::new(&unique_name("main"));
    let mut conn = Conn::connect(server.addr());
    main.register(&mut conn);
    main.exchange_key(&mut conn);
    let first = random_bytes(11, 1000);
    main.upload_verified(&mut conn, "first.bin", &first);
    let now = settled(metrics, 1.0);
    let sent = setup_len(&main) + main.file_frame("first.bin", &first).len() as u64 + v;
    assert_moved(
        "registered, one upload",
        &last,
        &now,
        &[
            ("sealdrop_connections_accepted_total", 1.0),
            ("sealdrop_requests_total{code=\"1025\"}", 1.0),
            ("sealdrop_requests_total{code=\"1026\"}", 1.0),
            ("sealdrop_requests_total{code=\"1028\"}", 1.0),
            ("sealdrop_requests_total{code=\"1029\"}", 1.0),
            ("sealdrop_uploads_total{outcome=\"verified\"}", 1.0),
            ("sealdrop_received_bytes_total", sent as f64),
            ("sealdrop_stored_bytes_total", 1000.0),
            ("sealdrop_upload_duration_seconds_count", 1.0),
        ],
    );
    last = now;

    // 2. Part of a 1028, held: the connection and the bytes show, the
    // upload is in flight, no request or upload is counted yet.
    let held = random_bytes(12, 3000);
    let frame = main.file_frame("held.bin", &held);
    let half = frame.len() / 2;
    conn.send(&frame[..half]);
    let mid = {
        let want = value(&last, "sealdrop_received_bytes_total") + half as f64;
        let mut s = scrape(metrics);
        let end = Instant::now() + WAIT;
        while (value(&s, "sealdrop_uploads_in_flight") != 1.0
            || value(&s, "sealdrop_received_bytes_total") != want)
            && Instant::now() < end
        {
            std::thread::sleep(Duration::from_millis(20));
            s = scrape(metrics);
        }
        s
    };
    assert_eq!(value(&mid, "sealdrop_connections_open"), 1.0);
    assert_eq!(value(&mid, "sealdrop_uploads_in_flight"), 1.0);
    assert_eq!(value(&mid, "sealdrop_uploads_awaiting_verdict"), 0.0);
    assert_moved(
        "mid-upload",
        &last,
        &mid,
        &[("sealdrop_received_bytes_total", half as f64)],
    );
    last = mid;

    // 3. The rest; a cksum mismatch (1030) and a resend, then 1029.
    conn.send(&frame[half..]);
    let _ = conn.expect(2103);
    main.send_verdict(&mut conn, 1030, "held.bin");
    main.upload_verified(&mut conn, "held.bin", &held);
    let now = settled(metrics, 1.0);
    assert_eq!(value(&now, "sealdrop_uploads_in_flight"), 0.0);
    let sent = (frame.len() - half) as u64 + v + frame.len() as u64 + v;
    assert_moved(
        "resent once, verified",
        &last,
        &now,
        &[
            ("sealdrop_requests_total{code=\"1028\"}", 2.0),
            ("sealdrop_requests_total{code=\"1030\"}", 1.0),
            ("sealdrop_requests_total{code=\"1029\"}", 1.0),
            ("sealdrop_resends_total", 1.0),
            ("sealdrop_uploads_total{outcome=\"verified\"}", 1.0),
            ("sealdrop_received_bytes_total", sent as f64),
            ("sealdrop_stored_bytes_total", 3000.0),
            ("sealdrop_upload_duration_seconds_count", 1.0),
        ],
    );
    assert_eq!(size(&now, "sealdrop_files_size_bytes"), 4000.0);
    last = now;

    // 4. Another client gives up after four mismatches: three 1030s and
    // resends, then 1031 (answered 2104). Then it hangs up.
    let (quitter, mut qc) = Client::setup(server.addr(), &unique_name("quits"));
    let data = random_bytes(13, 2000);
    let gframe = quitter.file_frame("g.bin", &data);
    for attempt in 1..=4 {
        qc.send(&gframe);
        let _ = qc.expect(2103);
        let code = if attempt < 4 { 1030 } else { 1031 };
        quitter.send_verdict(&mut qc, code, "g.bin");
    }
    let _ = qc.expect(2104);
    drop(qc);
    let now = settled(metrics, 1.0);
    let sent = setup_len(&quitter) + 4 * (gframe.len() as u64 + v);
    assert_moved(
        "gave up after four mismatches",
        &last,
        &now,
        &[
            ("sealdrop_connections_accepted_total", 1.0),
            ("sealdrop_requests_total{code=\"1025\"}", 1.0),
            ("sealdrop_requests_total{code=\"1026\"}", 1.0),
            ("sealdrop_requests_total{code=\"1028\"}", 4.0),
            ("sealdrop_requests_total{code=\"1030\"}", 3.0),
            ("sealdrop_requests_total{code=\"1031\"}", 1.0),
            ("sealdrop_resends_total", 3.0),
            ("sealdrop_uploads_total{outcome=\"crc_failed\"}", 1.0),
            ("sealdrop_received_bytes_total", sent as f64),
        ],
    );
    last = now;

    // 5. A file over --max-file-size: its header alone is refused (2107,
    // close).
    let big = main.file_frame("big.bin", &random_bytes(14, 30_000));
    let head = big.len() as u64 - main.expected_content_size(30_000);
    let mut lc = Conn::connect(server.addr());
    lc.send(&big[..head as usize]);
    lc.expect_error_then_close();
    let now = settled(metrics, 1.0);
    assert_moved(
        "over the file size limit",
        &last,
        &now,
        &[
            ("sealdrop_connections_accepted_total", 1.0),
            ("sealdrop_refusals_total{reason=\"limit\"}", 1.0),
            ("sealdrop_received_bytes_total", head as f64),
        ],
    );
    last = now;

    // 6. Quota, files: the client keeps 2, a third is refused at its
    // header (its content read and dropped, then 2107).
    let third = main.file_frame("third.bin", &random_bytes(15, 500));
    conn.send(&third);
    let _ = conn.expect(2107);
    let now = settled(metrics, 1.0);
    assert_moved(
        "over the files quota",
        &last,
        &now,
        &[
            ("sealdrop_requests_total{code=\"1028\"}", 1.0),
            ("sealdrop_refusals_total{reason=\"quota\"}", 1.0),
            ("sealdrop_uploads_total{outcome=\"refused\"}", 1.0),
            ("sealdrop_received_bytes_total", third.len() as f64),
        ],
    );
    last = now;

    // 7. Quota, bytes: 9000 kept; 1001 more fit by the header's bound
    // (1008 encrypted, at least 992 plain) but not by their exact size:
    // refused at the end, before 2103.
    let (rich, mut rc) = Client::setup(server.addr(), &unique_name("bytes"));
    let nine = random_bytes(16, 9000);
    rich.upload_verified(&mut rc, "nine.bin", &nine);
    let over = rich.file_frame("over.bin", &random_bytes(17, 1001));
    assert_eq!(rich.expected_content_size(1001), 1008);
    rc.send(&over);
    let _ = rc.expect(2107);
    let now = settled(metrics, 2.0);
    let sent =
        setup_len(&rich) + rich.file_frame("nine.bin", &nine).len() as u64 + v + over.len() as u64;
    assert_moved(
        "over the bytes quota by its exact size",
        &last,
        &now,
        &[
            ("sealdrop_connections_accepted_total", 1.0),
            ("sealdrop_requests_total{code=\"1025\"}", 1.0),
            ("sealdrop_requests_total{code=\"1026\"}", 1.0),
            ("sealdrop_requests_total{code=\"1028\"}", 2.0),
            ("sealdrop_requests_total{code=\"1029\"}", 1.0),
            ("sealdrop_uploads_total{outcome=\"verified\"}", 1.0),
            ("sealdrop_uploads_total{outcome=\"refused\"}", 1.0),
            ("sealdrop_refusals_total{reason=\"quota\"}", 1.0),
            ("sealdrop_received_bytes_total", sent as f64),
            ("sealdrop_stored_bytes_total", 9000.0),
            ("sealdrop_upload_duration_seconds_count", 1.0),
        ],
    );
    last = now;

    // 8. Quota at the 1029: two uploads that each fit (1 file kept, so 2
    // with either) await their verdicts; the second 1029 would make 3.
    let x = rich.file_frame("x.bin", &random_bytes(18, 200));
    let y = rich.file_frame("y.bin", &random_bytes(19, 300));
    rc.send(&x);
    let _ = rc.expect(2103);
    rc.send(&y);
    let _ = rc.expect(2103);
    assert_eq!(
        value(&scrape(metrics), "sealdrop_uploads_awaiting_verdict"),
        2.0
    );
    rich.verify(&mut rc, "x.bin");
    rich.send_verdict(&mut rc, 1029, "y.bin");
    let _ = rc.expect(2107);
    let now = settled(metrics, 2.0);
    assert_eq!(value(&now, "sealdrop_uploads_awaiting_verdict"), 0.0);
    let sent = x.len() as u64 + y.len() as u64 + 2 * v;
    // x's 1029 came after y's upload on the connection: x is timed all
    // the same.
    assert_moved(
        "over the files quota at the 1029",
        &last,
        &now,
        &[
            ("sealdrop_requests_total{code=\"1028\"}", 2.0),
            ("sealdrop_requests_total{code=\"1029\"}", 2.0),
            ("sealdrop_uploads_total{outcome=\"verified\"}", 1.0),
            ("sealdrop_uploads_total{outcome=\"refused\"}", 1.0),
            ("sealdrop_refusals_total{reason=\"quota\"}", 1.0),
            ("sealdrop_received_bytes_total", sent as f64),
            ("sealdrop_stored_bytes_total", 200.0),
            ("sealdrop_upload_duration_seconds_count", 1.0),
        ],
    );
    drop(rc);
    last = settled(metrics, 1.0);

    // 9. A frame that does not decode: 2107, close.
    let mut bad = Conn::connect(server.addr());
    let bad_frame = header(&ClientId::ZERO, 3, 1111, 0);
    bad.send(&bad_frame);
    bad.expect_error_then_close();
    let now = settled(metrics, 1.0);
    assert_moved(
        "a bad frame",
        &last,
        &now,
        &[
            ("sealdrop_connections_accepted_total", 1.0),
            ("sealdrop_refusals_total{reason=\"bad_frame\"}", 1.0),
            ("sealdrop_received_bytes_total", bad_frame.len() as f64),
        ],
    );
    last = now;

    // 10. A header that stops after 3 bytes: closed at the header timeout.
    let mut slow = Conn::connect(server.addr());
    slow.send(&bad_frame[..3]);
    let _ = slow.expect_closed(WAIT);
    let now = settled(metrics, 1.0);
    assert_moved(
        "a header timeout",
        &last,
        &now,
        &[
            ("sealdrop_connections_accepted_total", 1.0),
            ("sealdrop_refusals_total{reason=\"timeout\"}", 1.0),
            ("sealdrop_received_bytes_total", 3.0),
        ],
    );
    last = now;

    // 11. Half an upload on a second connection, then the client is gone.
    let mut cut = Conn::connect(server.addr());
    let part = main.file_frame("cut.bin", &random_bytes(20, 3000));
    cut.send(&part[..part.len() / 2]);
    assert!(wait_until(WAIT, || value(
        &scrape(metrics),
        "sealdrop_uploads_in_flight"
    ) == 1.0));
    drop(cut);
    let now = settled(metrics, 1.0);
    assert_eq!(value(&now, "sealdrop_uploads_in_flight"), 0.0);
    assert_moved(
        "an abandoned upload",
        &last,
        &now,
        &[
            ("sealdrop_connections_accepted_total", 1.0),
            ("sealdrop_uploads_total{outcome=\"abandoned\"}", 1.0),
            ("sealdrop_received_bytes_total", (part.len() / 2) as f64),
        ],
    );
    assert_eq!(
        size(&now, "sealdrop_files_size_bytes"),
        4000.0 + 9000.0 + 200.0
    );
    drop(conn);
    server.stop().unwrap();
}

#[test]
fn a_restart_counts_the_stored_files_once_and_an_abandoned_upload() {
    let dir = tempfile::tempdir().unwrap();
    let (server, metrics) = start(dir.path());
    let (client, mut conn) = Client::setup(server.addr(), &unique_name("tree"));
    client.upload_verified(&mut conn, "kept.bin", &random_bytes(3, 5000));
    // A 1028 cut off in the middle of its content.
    let frame = client.file_frame("cut.bin", &random_bytes(4, 4000));
    conn.send(&frame[..frame.len() / 2]);
    let in_flight = || value(&scrape(metrics), "sealdrop_uploads_in_flight");
    assert!(wait_until(WAIT, || in_flight() == 1.0));
    drop(conn);
    let abandoned = || {
        value(
            &scrape(metrics),
            "sealdrop_uploads_total{outcome=\"abandoned\"}",
        )
    };
    assert!(wait_until(WAIT, || abandoned() == 1.0));
    assert_eq!(in_flight(), 0.0);

    let store = |s: &HashMap<String, f64>| {
        s.keys()
            .find_map(|k| k.strip_prefix("sealdrop_files_size_bytes{store=\""))
            .expect("a store label")
            .to_owned()
    };
    let first = store(&scrape(metrics));
    server.stop().unwrap();

    // The figure starts from the records; the store is the same one.
    let (server, metrics) = start(dir.path());
    let s = scrape(metrics);
    assert_eq!(store(&s), first);
    assert_eq!(size(&s, "sealdrop_files_size_bytes"), 5000.0);
    assert_eq!(
        value(&s, "sealdrop_uploads_total{outcome=\"abandoned\"}"),
        0.0
    );
    server.stop().unwrap();
}

#[test]
fn an_administrators_deletion_takes_the_file_out_of_the_files_figure() {
    let dir = tempfile::tempdir().unwrap();
    let (server, metrics) = start(dir.path());
    let (client, mut conn) = Client::setup(server.addr(), &unique_name("del"));
    client.upload_verified(&mut conn, "kept.bin", &random_bytes(5, 5000));
    client.upload_verified(&mut conn, "gone.bin", &random_bytes(6, 3000));
    let files = || size(&scrape(metrics), "sealdrop_files_size_bytes");
    assert!(wait_until(WAIT, || files() == 8000.0), "{}", files());
    // `files delete` as the command sends it to the running server.
    let answer = control(
        dir.path(),
        &format!(
            "{{\"op\":\"delete\",\"client\":\"{}\",\"file\":\"gone.bin\"}}",
            client.id.to_hex()
        ),
    );
    assert!(answer.contains("\"ok\":true"), "{answer}");
    assert!(wait_until(WAIT, || files() == 5000.0), "{}", files());
    server.stop().unwrap();
}

#[test]
fn a_repair_by_verify_moves_the_files_figure_while_the_server_runs() {
    let dir = tempfile::tempdir().unwrap();
    let (server, metrics) = start(dir.path());
    let (client, mut conn) = Client::setup(server.addr(), &unique_name("repair"));
    client.upload_verified(&mut conn, "kept.bin", &random_bytes(8, 5000));
    client.upload_verified(&mut conn, "gone.bin", &random_bytes(9, 3000));
    let files = || size(&scrape(metrics), "sealdrop_files_size_bytes");
    assert!(wait_until(WAIT, || files() == 8000.0), "{}", files());
    // By hand: a stored file removed, another put beside them.
    let folder = dir.path().join("files").join(client.id.to_hex());
    std::fs::remove_file(folder.join("gone.bin")).unwrap();
    std::fs::write(folder.join("stray.bin"), random_bytes(10, 700)).unwrap();
    let out = std::process::Command::new(SERVER_BIN)
        .args(["verify", "--repair", "rows,adopt", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(text.contains("missing-file") && text.contains("unrecorded-file"));
    // Each repair's commit asks for a measurement of the records, which
    // now say 5000 + 700 (without it the figure stays at 8000 until a
    // restart).
    assert!(wait_until(WAIT, || files() == 5700.0), "{}", files());
    server.stop().unwrap();
}

#[test]
fn an_upload_withdrawn_by_an_administrator_counts_as_withdrawn_not_server_error() {
    let dir = tempfile::tempdir().unwrap();
    let (server, metrics) = start(dir.path());
    let (client, mut conn) = Client::setup(server.addr(), &unique_name("withdrawn"));
    // Half of a 1028, then `clients forget` while the rest is awaited.
    let frame = client.file_frame("cut.bin", &random_bytes(7, 4000));
    conn.send(&frame[..frame.len() / 2]);
    let in_flight = || value(&scrape(metrics), "sealdrop_uploads_in_flight");
    assert!(wait_until(WAIT, || in_flight() == 1.0));
    let before = scrape(metrics);
    let answer = control(
        dir.path(),
        &format!(
            "{{\"op\":\"forget\",\"client\":\"{}\"}}",
            client.id.to_hex()
        ),
    );
    assert!(answer.contains("\"uploads_withdrawn\":1"), "{answer}");
    // The rest is read and dropped; the upload is answered 2107.
    conn.send(&frame[frame.len() / 2..]);
    let _ = conn.expect(2107);
    let after = scrape(metrics);
    let d = moved(&before, &after);
    assert_eq!(
        d.get("sealdrop_refusals_total{reason=\"withdrawn\"}"),
        Some(&1.0),
        "{d:?}"
    );
    assert_eq!(
        d.get("sealdrop_refusals_total{reason=\"server_error\"}"),
        None,
        "{d:?}"
    );
    // The upload ended withdrawn, not refused.
    assert_eq!(
        d.get("sealdrop_uploads_total{outcome=\"withdrawn\"}"),
        Some(&1.0),
        "{d:?}"
    );
    assert_eq!(
        d.get("sealdrop_uploads_total{outcome=\"refused\"}"),
        None,
        "{d:?}"
    );
    assert_eq!(value(&after, "sealdrop_commit_failures_total"), 0.0);
    server.stop().unwrap();
}

/// Whether a scrape connection is still open with nothing received: a
/// read that would block (a close reads 0 bytes, an answer reads bytes).
fn open_and_unanswered(stream: &TcpStream) -> bool {
    stream.set_nonblocking(true).unwrap();
    let got = (&*stream).read(&mut [0u8; 64]);
    stream.set_nonblocking(false).unwrap();
    matches!(got, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

/// Scrapers that connect and say nothing, one in every slot, and a check
/// that one more is refused at once with 503 rather than queued behind
/// them. They are accepted in the order they connected, each taking a slot
/// before the next connection is looked at.
fn silent_scrapers_in_every_slot(metrics: SocketAddr) -> Vec<TcpStream> {
    let silent: Vec<TcpStream> = (0..MAX_SCRAPERS)
        .map(|_| TcpStream::connect(metrics).unwrap())
        .collect();
    // The refusal is written at once; this one reads before it sends, so
    // the close cannot reset the connection over unread bytes.
    let mut extra = TcpStream::connect(metrics).unwrap();
    extra.set_read_timeout(Some(WAIT)).unwrap();
    let mut refusal = String::new();
    extra.read_to_string(&mut refusal).unwrap();
    assert!(
        refusal.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
        "{refusal:?}"
    );
    silent
}

#[test]
fn silent_scrapers_holding_every_slot_neither_delay_an_upload_nor_queue_another() {
    let dir = tempfile::tempdir().unwrap();
    let (server, metrics) = start(dir.path());
    // One more than the slots is refused with 503 while they are all
    // still open: not queued behind them.
    let silent = silent_scrapers_in_every_slot(metrics);
    for (i, s) in silent.iter().enumerate() {
        assert!(open_and_unanswered(s), "silent scraper {i} after the 503");
    }

    // A whole upload, from connect to 2104, while they hold the slots.
    let (client, mut conn) = Client::setup(server.addr(), &unique_name("beside"));
    client.upload_verified(&mut conn, "beside.bin", &random_bytes(5, 100_000));
    // Had the loop waited for them (their timeout is READ_TIMEOUT), they
    // would be closed by now: they are still open and unanswered.
    for (i, s) in silent.iter().enumerate() {
        assert!(open_and_unanswered(s), "silent scraper {i} after the 2104");
    }
    drop(silent);
    // The slots come back, and the upload was counted.
    assert!(wait_until(WAIT, || {
        http(metrics, b"GET /metrics HTTP/1.1\r\n\r\n").0 == "HTTP/1.1 200 OK"
    }));
    let s = scrape(metrics);
    assert_eq!(
        value(&s, "sealdrop_uploads_total{outcome=\"verified\"}"),
        1.0
    );
    server.stop().unwrap();
}

#[test]
fn silent_and_endless_scrapers_are_closed_at_their_timeout_not_before() {
    let dir = tempfile::tempdir().unwrap();
    let (server, metrics) = start(dir.path());
    let connected = Instant::now();
    // One says nothing; one sends a header that never ends, a byte at a
    // time (it stays under the size limit until the timeout).
    let mut silent = TcpStream::connect(metrics).unwrap();
    let endless = TcpStream::connect(metrics).unwrap();
    let mut writer = endless.try_clone().unwrap();
    let trickle = std::thread::spawn(move || {
        let _ = writer.write_all(b"GET /metrics HTTP/1.1\r\nX-Endless: ");
        while writer.write_all(b"a").is_ok() {
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    // Both are closed without an answer, once READ_TIMEOUT has passed
    // since their connect.
    for (what, mut stream) in [
        ("silent", silent.try_clone().unwrap()),
        ("endless", endless),
    ] {
        stream.set_read_timeout(Some(WAIT)).unwrap();
        let mut buf = [0u8; 256];
        let got = stream.read(&mut buf);
        assert!(
            matches!(got, Ok(0) | Err(_)),
            "{what}: expected a close, got {got:?}"
        );
        let at = connected.elapsed();
        assert!(
            at >= READ_TIMEOUT - Duration::from_millis(100),
            "{what} scraper closed after {at:?}, before its timeout {READ_TIMEOUT:?}"
        );
    }
    trickle.join().unwrap();
    let _ = silent.write_all(b"GET /metrics HTTP/1.1\r\n\r\n");
    // The endpoint still serves.
    scrape(metrics);
    server.stop().unwrap();
}

#[test]
fn oversized_unknown_and_wrong_method_requests_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (server, metrics) = start(dir.path());
    let mut huge = b"GET /metrics HTTP/1.1\r\nX-Big: ".to_vec();
    huge.resize(MAX_REQUEST_BYTES + 512, b'a');
    let (status, _) = http(metrics, &huge);
    assert_eq!(status, "HTTP/1.1 431 Request Header Fields Too Large");
    let (status, _) = http(metrics, b"GET / HTTP/1.1\r\n\r\n");
    assert_eq!(status, "HTTP/1.1 404 Not Found");
    let (status, _) = http(
        metrics,
        b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
    );
    assert_eq!(status, "HTTP/1.1 405 Method Not Allowed");
    let (status, _) = http(metrics, b"hello\r\n\r\n");
    assert_eq!(status, "HTTP/1.1 400 Bad Request");
    scrape(metrics);
    server.stop().unwrap();
}

#[test]
fn scrapers_beyond_the_cap_get_503_and_the_slots_come_back() {
    let dir = tempfile::tempdir().unwrap();
    let (server, metrics) = start(dir.path());
    let idle = silent_scrapers_in_every_slot(metrics);
    drop(idle);
    assert!(wait_until(WAIT, || {
        http(metrics, b"GET /metrics HTTP/1.1\r\n\r\n").0 == "HTTP/1.1 200 OK"
    }));
    server.stop().unwrap();
}

#[test]
fn every_metric_the_dashboard_and_the_alert_rules_use_is_exported() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/contrib/grafana/sealdrop.json");
    let text = std::fs::read_to_string(path).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
    let mut exprs = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            exprs.push(target["expr"].as_str().expect("expr").to_owned());
        }
    }
    assert!(exprs.len() >= 10, "{exprs:?}");
    // The size gauges: servers sharing a database each report the shared
    // figure, so a total takes one per store, never a plain sum.
    let sizes: Vec<&String> = exprs.iter().filter(|e| e.contains("_size_bytes")).collect();
    assert!(sizes.len() >= 2, "{exprs:?}");
    for e in sizes {
        assert!(
            e.starts_with("sum(max by (store) (sealdrop_") && e.ends_with("))"),
            "{e}: sum over stores of the largest per store"
        );
    }
    // The alert rules (not JSON: their expressions are the lines that
    // name a metric).
    let rules = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/contrib/prometheus/sealdrop-alerts.yml"
    );
    let rules = std::fs::read_to_string(rules).unwrap();
    let in_rules: Vec<String> = rules
        .lines()
        .filter(|l| !l.trim_start().starts_with('#') && l.contains("sealdrop_"))
        .map(str::to_owned)
        .collect();
    assert!(in_rules.len() >= 6, "{in_rules:?}");
    let mut names: Vec<String> = exprs
        .iter()
        .chain(&in_rules)
        .flat_map(|e| {
            e.match_indices("sealdrop_").map(|(i, _)| {
                e[i..]
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                    .collect::<String>()
            })
        })
        .collect();
    names.sort();
    names.dedup();

    let dir = tempfile::tempdir().unwrap();
    let (server, metrics) = start(dir.path());
    // One request so that the by-code family has a series.
    let (_client, _conn) = Client::setup(server.addr(), &unique_name("dash"));
    let page = http(metrics, b"GET /metrics HTTP/1.1\r\n\r\n").1;
    let exported: Vec<&str> = page
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect();
    for name in &names {
        assert!(
            exported.contains(&name.as_str()),
            "the dashboard or the alert rules use {name}, which is not exported"
        );
    }
    server.stop().unwrap();
}

fn recv_datagram(sock: &UnixDatagram, timeout: Duration) -> Option<String> {
    sock.set_read_timeout(Some(timeout)).unwrap();
    let mut buf = [0u8; 4096];
    let n = sock.recv(&mut buf).ok()?;
    Some(String::from_utf8_lossy(&buf[..n]).into_owned())
}

#[test]
fn status_reaches_systemd_with_connections_and_verified_uploads() {
    let tmp = tempfile::tempdir().unwrap();
    let sock_path = tmp.path().join("notify.sock");
    let notify = UnixDatagram::bind(&sock_path).unwrap();
    let opts = ServerOpts::default().env("NOTIFY_SOCKET", sock_path.to_str().unwrap());
    let mut server = Server::start_with(opts);
    let addr = server.wait_listening();
    let (client, mut conn) = Client::setup(addr, &unique_name("status"));
    client.upload_verified(&mut conn, "s.bin", &random_bytes(6, 2000));
    let want = "1 connection open, 0 uploads in flight, 1 verified since start";
    let end = Instant::now() + WAIT;
    let mut seen = Vec::new();
    while Instant::now() < end {
        let Some(d) = recv_datagram(&notify, Duration::from_secs(3)) else {
            continue;
        };
        let found = d.lines().any(|l| l == format!("STATUS={want}"));
        seen.push(d);
        if found {
            drop(conn);
            server.assert_alive();
            return;
        }
    }
    panic!("no STATUS={want:?} within {WAIT:?}; got {seen:?}");
}

#[test]
fn check_config_refuses_a_metrics_address_it_cannot_bind() {
    let tmp = tempfile::tempdir().unwrap();
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = holder.local_addr().unwrap();
    let run = |metrics: &str| {
        std::process::Command::new(SERVER_BIN)
            .args(["--check-config", "--listen", "127.0.0.1:0"])
            .args(["--metrics-listen", metrics, "--data-dir"])
            .arg(tmp.path().join("data"))
            .env_remove("LISTEN_FDS")
            .output()
            .unwrap()
    };
    let bad = run(&taken.to_string());
    assert_eq!(bad.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(stderr.contains("cannot listen for metrics"), "{stderr}");
    let good = run("127.0.0.1:0");
    assert!(
        good.status.success(),
        "{}",
        String::from_utf8_lossy(&good.stderr)
    );
}

/// The running server's uploads since start by `stats` outcome, asked
/// over the control socket as `stats` does.
fn stats_since_start(data_dir: &std::path::Path) -> serde_json::Value {
    let answer = control(data_dir, "{\"op\":\"stats\"}");
    let v: serde_json::Value = serde_json::from_str(&answer).expect("JSON answer");
    v["result"]["uploads"].clone()
}

#[test]
fn every_verified_upload_is_timed_when_several_await_their_verdicts_on_one_connection() {
    let dir = tempfile::tempdir().unwrap();
    let (server, metrics) = start(dir.path());
    let (client, mut conn) = Client::setup(server.addr(), &unique_name("two"));
    let before = scrape(metrics);
    // A and B received, both awaiting their verdicts; then 1029 for A
    // (the older one), then for B.
    client.send_file(&mut conn, "a.bin", &random_bytes(11, 1500));
    let _ = conn.expect(2103);
    client.send_file(&mut conn, "b.bin", &random_bytes(12, 2500));
    let _ = conn.expect(2103);
    client.send_verdict(&mut conn, 1029, "a.bin");
    let _ = conn.expect(2104);
    client.send_verdict(&mut conn, 1029, "b.bin");
    let _ = conn.expect(2104);
    let after = scrape(metrics);
    let d = moved(&before, &after);
    assert_eq!(
        d.get("sealdrop_uploads_total{outcome=\"verified\"}"),
        Some(&2.0),
        "{d:?}"
    );
    assert_eq!(
        d.get("sealdrop_upload_duration_seconds_count"),
        Some(&2.0),
        "every verified upload timed: {d:?}"
    );
    server.stop().unwrap();
}

#[test]
fn a_verified_upload_is_timed_when_its_1029_comes_on_another_connection() {
    let dir = tempfile::tempdir().unwrap();
    let (server, metrics) = start(dir.path());
    let (mut client, mut first) = Client::setup(server.addr(), &unique_name("moved"));
    client.send_file(&mut first, "m.bin", &random_bytes(13, 1200));
    let _ = first.expect(2103);
    let before = scrape(metrics);
    // The 1029 on a second connection (a client that reconnected).
    let mut second = Conn::connect(server.addr());
    client.reconnect(&mut second);
    client.send_verdict(&mut second, 1029, "m.bin");
    let _ = second.expect(2104);
    let d = moved(&before, &scrape(metrics));
    assert_eq!(
        d.get("sealdrop_uploads_total{outcome=\"verified\"}"),
        Some(&1.0),
        "{d:?}"
    );
    assert_eq!(
        d.get("sealdrop_upload_duration_seconds_count"),
        Some(&1.0),
        "timed from its header on the first connection: {d:?}"
    );
    drop(first);
    server.stop().unwrap();
}

#[test]
fn an_upload_put_out_for_room_among_those_awaiting_a_verdict_counts_as_expired() {
    let dir = tempfile::tempdir().unwrap();
    let (server, metrics) = start(dir.path());
    let (client, mut conn) = Client::setup(server.addr(), &unique_name("room"));
    let cap = sealdrop_protocol::store::DEFAULT_MAX_PENDING_PER_CONN;
    for i in 0..cap {
        client.send_file(
            &mut conn,
            &format!("f{i}.bin"),
            &random_bytes(i as u64, 100),
        );
        let _ = conn.expect(2103);
    }
    let before = scrape(metrics);
    assert_eq!(
        value(&before, "sealdrop_uploads_awaiting_verdict"),
        cap as f64
    );
    // One more on the same connection: its oldest (f0.bin) is put out.
    client.send_file(&mut conn, "one-more.bin", &random_bytes(99, 100));
    let _ = conn.expect(2103);
    let after = scrape(metrics);
    assert_eq!(
        value(&after, "sealdrop_uploads_awaiting_verdict"),
        cap as f64
    );
    assert_moved(
        "an upload put out for room",
        &before,
        &after,
        &[
            ("sealdrop_requests_total{code=\"1028\"}", 1.0),
            (
                "sealdrop_received_bytes_total",
                client
                    .file_frame("one-more.bin", &random_bytes(99, 100))
                    .len() as f64,
            ),
            ("sealdrop_uploads_total{outcome=\"expired\"}", 1.0),
        ],
    );
    // `stats` counts it the same way.
    assert_eq!(stats_since_start(dir.path())["expired"], 1);
    // Its 1029 finds nothing.
    client.send_verdict(&mut conn, 1029, "f0.bin");
    let _ = conn.expect(2107);
    server.stop().unwrap();
}

#[test]
fn an_upload_withdrawn_while_it_awaits_its_verdict_counts_as_withdrawn() {
    let dir = tempfile::tempdir().unwrap();
    let (server, metrics) = start(dir.path());
    let (client, mut conn) = Client::setup(server.addr(), &unique_name("awaiting"));
    client.send_file(&mut conn, "kept.bin", &random_bytes(21, 900));
    let _ = conn.expect(2103);
    let before = scrape(metrics);
    assert_eq!(value(&before, "sealdrop_uploads_awaiting_verdict"), 1.0);
    let answer = control(
        dir.path(),
        &format!(
            "{{\"op\":\"delete\",\"client\":\"{}\",\"file\":\"kept.bin\"}}",
            client.id.to_hex()
        ),
    );
    assert!(answer.contains("\"uploads_withdrawn\":1"), "{answer}");
    let after = scrape(metrics);
    assert_eq!(value(&after, "sealdrop_uploads_awaiting_verdict"), 0.0);
    // No answer was refused (the client is told at its 1029).
    assert_moved(
        "an upload withdrawn while it awaited its verdict",
        &before,
        &after,
        &[("sealdrop_uploads_total{outcome=\"withdrawn\"}", 1.0)],
    );
    assert_eq!(stats_since_start(dir.path())["withdrawn"], 1);
    server.stop().unwrap();
}
