//! Idle connections held open: what each costs the server in resident
//! memory.

use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

use crate::procs::{Res, Server};

/// Longest the server may take to accept a batch of connections.
const ACCEPT_TIMEOUT: Duration = Duration::from_secs(60);
/// Pause after the last accept, so the loop has registered everything.
const SETTLE: Duration = Duration::from_millis(300);

/// One measurement point.
#[derive(Debug, Clone, Copy)]
pub struct Point {
    /// Connections held.
    pub conns: usize,
    /// Server VmRSS with no connection, KiB.
    pub rss_before: u64,
    /// Server VmRSS with `conns` connections, KiB.
    pub rss_after: u64,
}

impl Point {
    /// Resident KiB per connection.
    pub fn kib_per_conn(&self) -> f64 {
        self.rss_after.saturating_sub(self.rss_before) as f64 / self.conns.max(1) as f64
    }
}

/// Opens connections up to each count in `counts` (ascending) and samples
/// the server's VmRSS once it has accepted them all.
pub fn hold(server: &mut Server, counts: &[usize]) -> Res<Vec<Point>> {
    thread::sleep(SETTLE);
    let base_fds = server.fd_count();
    let rss_before = server
        .status_kib("VmRSS")
        .ok_or("cannot read server VmRSS")?;
    let mut conns = Vec::new();
    let mut points = Vec::new();
    for &want in counts {
        while conns.len() < want {
            let c = TcpStream::connect_timeout(&server.addr, Duration::from_secs(10))
                .map_err(|e| format!("connection {}: {e}", conns.len() + 1))?;
            conns.push(c);
        }
        let deadline = Instant::now() + ACCEPT_TIMEOUT;
        while server.fd_count() < base_fds + want {
            server.check_alive()?;
            if Instant::now() > deadline {
                return Err(format!(
                    "server accepted only {} of {want} connections",
                    server.fd_count().saturating_sub(base_fds)
                ));
            }
            thread::sleep(Duration::from_millis(20));
        }
        thread::sleep(SETTLE);
        let rss_after = server
            .status_kib("VmRSS")
            .ok_or("cannot read server VmRSS")?;
        points.push(Point {
            conns: want,
            rss_before,
            rss_after,
        });
    }
    Ok(points)
}
