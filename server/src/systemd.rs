//! systemd integration: `Type=notify` state changes, the watchdog, and
//! socket activation (sd_notify(3), sd_listen_fds(3)). Outside systemd all
//! of it is a no-op.

use std::net::TcpListener;
use std::os::fd::{FromRawFd, RawFd};
use std::time::Duration;

use sd_notify::NotifyState;

/// Tells systemd the server is ready: the database is open and the port
/// is listening.
pub fn ready(status: &str) {
    notify(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// Tells systemd the server is shutting down.
pub fn stopping() {
    notify(&[NotifyState::Stopping, NotifyState::Status("draining")]);
}

/// Pings the watchdog.
pub fn watchdog() {
    notify(&[NotifyState::Watchdog]);
}

/// How often to ping the watchdog: half the `WatchdogSec` systemd set, if any.
pub fn watchdog_interval() -> Option<Duration> {
    sd_notify::watchdog_enabled().map(|d| d / 2)
}

fn notify(state: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(state) {
        log::warn!("cannot notify systemd: {e}");
    }
}

/// The listening socket systemd passed (`LISTEN_FDS`), if any.
pub fn passed_listener() -> std::io::Result<Option<TcpListener>> {
    let mut fds = sd_notify::listen_fds()?;
    let Some(fd) = fds.next() else {
        return Ok(None);
    };
    if fds.len() > 0 {
        log::warn!("systemd passed {} sockets; using the first", fds.len() + 1);
    }
    Ok(Some(adopt(fd)))
}

#[allow(unsafe_code)] // Taking ownership of an inherited descriptor needs FromRawFd.
fn adopt(fd: RawFd) -> TcpListener {
    // SAFETY: sd_listen_fds(3) hands this process descriptors from 3 on,
    // open and owned by nobody else; LISTEN_PID matched our pid.
    unsafe { TcpListener::from_raw_fd(fd) }
}
