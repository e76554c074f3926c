//! Socket activation with several sockets (process-level: it needs
//! systemd's fd passing). `systemd-socket-activate` listens on two ports
//! and starts the real binary on the first connection, passing both
//! sockets with names (`LISTEN_FDNAMES`). A socket named `2024a` reads
//! 1025-1031 as 2024a (answers 1600-1607); the one named after the unit
//! reads them as 2023c. Skipped with a message where the tool is missing.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const SERVER_BIN: &str = env!("CARGO_BIN_EXE_sealdrop-server");

struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Sends a 1025 for `name` and returns the response code.
fn register_code(addr: SocketAddr, name: &str) -> u16 {
    let end = Instant::now() + Duration::from_secs(20);
    let mut sock = loop {
        match TcpStream::connect(addr) {
            Ok(s) => break s,
            Err(e) if Instant::now() < end => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!("connect {addr}: {e}"),
        }
    };
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut frame = vec![0u8; 16];
    frame.push(3);
    frame.extend_from_slice(&1025u16.to_le_bytes());
    frame.extend_from_slice(&255u32.to_le_bytes());
    let mut field = [0u8; 255];
    field[..name.len()].copy_from_slice(name.as_bytes());
    frame.extend_from_slice(&field);
    sock.write_all(&frame).unwrap();
    let mut header = [0u8; 7];
    sock.read_exact(&mut header).unwrap();
    u16::from_le_bytes([header[1], header[2]])
}

#[test]
fn named_sockets_from_systemd_carry_their_listener_tag() {
    let tool = Command::new("systemd-socket-activate")
        .arg("--help")
        .output();
    if !tool.is_ok_and(|o| o.status.success()) {
        println!("skipped: systemd-socket-activate is not installed (package systemd)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (p1, p2) = (free_port(), free_port());
    let child = Command::new("systemd-socket-activate")
        .arg(format!("--listen=127.0.0.1:{p1}"))
        .arg(format!("--listen=127.0.0.1:{p2}"))
        .arg("--fdname=sealdrop-server.socket:2024a")
        .arg(SERVER_BIN)
        .arg("--data-dir")
        .arg(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _guard = Kill(child);
    let untagged: SocketAddr = format!("127.0.0.1:{p1}").parse().unwrap();
    let tagged: SocketAddr = format!("127.0.0.1:{p2}").parse().unwrap();
    assert_eq!(
        register_code(untagged, "one"),
        2100,
        "untagged socket: 2023c"
    );
    assert_eq!(register_code(tagged, "two"), 1600, "socket named 2024a");
}
