//! systemd integration: `Type=notify` state changes and `STATUS=`, the watchdog, and
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

/// Shows `line` as the service's status (`systemctl status` prints it
/// after "Status:").
pub fn status(line: &str) {
    notify(&[NotifyState::Status(line)]);
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

/// The listening sockets systemd passed (`LISTEN_FDS`), with their
/// `FileDescriptorName=` (`LISTEN_FDNAMES`; systemd names them after the
/// socket unit unless told otherwise). Empty outside socket activation.
pub fn passed_listeners() -> std::io::Result<Vec<(TcpListener, String)>> {
    let fds = sd_notify::listen_fds_with_names()?;
    Ok(fds.map(|(fd, name)| (adopt(fd), name)).collect())
}

#[allow(unsafe_code)] // Taking ownership of an inherited descriptor needs FromRawFd.
fn adopt(fd: RawFd) -> TcpListener {
    // SAFETY: sd_listen_fds(3) hands this process descriptors from 3 on,
    // open and owned by nobody else; LISTEN_PID matched our pid.
    unsafe { TcpListener::from_raw_fd(fd) }
}
