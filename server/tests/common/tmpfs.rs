//! tmpfs mounts as data directories (faults.rs): a full disk, a read-only
//! filesystem. The tests run as root (chmod would not stop root); where
//! mounting is not permitted, [`tmpfs_mount_works`] says why.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::{run_bounded, InProcess, Server, ServerOpts};
use sealdrop_server::config::Settings;

/// Runs `mount ARGS...` (bounded); `Err` carries its stderr.
pub fn run_mount(args: &[&str]) -> Result<(), String> {
    let ran = run_bounded(Command::new("mount").args(args), Duration::from_secs(20));
    if ran.status.success() {
        Ok(())
    } else {
        Err(format!(
            "mount {}: {} {}",
            args.join(" "),
            ran.status,
            ran.stderr.trim()
        ))
    }
}

/// A tmpfs mounted on a folder, unmounted when dropped (lazily if a
/// process still uses it).
pub struct TmpfsMount {
    path: PathBuf,
    mounted: bool,
}

impl TmpfsMount {
    /// Mounts a tmpfs with `options` (e.g. `size=2m`) on `path`, which
    /// must exist.
    pub fn mount(path: &Path, options: &str) -> Result<TmpfsMount, String> {
        let p = path.to_str().expect("UTF-8 mount point");
        run_mount(&["-t", "tmpfs", "-o", options, "tmpfs", p])?;
        Ok(TmpfsMount {
            path: path.to_path_buf(),
            mounted: true,
        })
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Remounts read-only (`ro`) or read-write (`rw`).
    pub fn remount(&self, mode: &str) {
        let p = self.path.to_str().unwrap();
        run_mount(&["-o", &format!("remount,{mode}"), p])
            .unwrap_or_else(|e| panic!("remount {mode}: {e}"));
    }

    /// Unmounts now (lazily if busy); idempotent.
    pub fn unmount(&mut self) {
        if !self.mounted {
            return;
        }
        self.mounted = false;
        let p = self.path.to_str().unwrap().to_string();
        for args in [vec![p.clone()], vec!["-l".to_string(), p.clone()]] {
            let ran = run_bounded(Command::new("umount").args(&args), Duration::from_secs(20));
            if ran.status.success() {
                return;
            }
            eprintln!("umount {args:?}: {}", ran.stderr.trim());
        }
    }
}

impl Drop for TmpfsMount {
    fn drop(&mut self) {
        self.unmount();
    }
}

/// Whether a tmpfs can be mounted here (a sandbox may forbid it): mounts
/// and unmounts one on a scratch folder. `Err` carries the reason.
pub fn tmpfs_mount_works() -> Result<(), String> {
    let dir = tempfile::Builder::new()
        .prefix("sealdrop-mount-probe-")
        .tempdir()
        .map_err(|e| e.to_string())?;
    let mut m = TmpfsMount::mount(dir.path(), "size=64k")?;
    m.unmount();
    Ok(())
}

/// A [`Server`] process whose data directory is a tmpfs: on drop the
/// server is killed first, then the tmpfs unmounted, then the temporary
/// folder removed (in that order, so nothing stays mounted or behind).
pub struct MountedServer {
    pub server: Server,
    pub mount: TmpfsMount,
}

impl MountedServer {
    /// Mounts a tmpfs with `options` on the new server's data directory,
    /// runs `prepare` on it, then spawns the server (without waiting).
    pub fn spawn(
        opts: ServerOpts,
        options: &str,
        prepare: impl FnOnce(&TmpfsMount),
    ) -> Result<MountedServer, String> {
        let mut mount: Option<Result<TmpfsMount, String>> = None;
        let server = Server::spawn_with(opts, |data| {
            let m = TmpfsMount::mount(data, options);
            if let Ok(m) = &m {
                prepare(m);
            }
            mount = Some(m);
        });
        match mount.expect("prepare ran") {
            Ok(mount) => Ok(MountedServer { server, mount }),
            Err(e) => {
                drop(server);
                Err(e)
            }
        }
    }

    /// As [`MountedServer::spawn`], then waits for `listening on`.
    pub fn start(opts: ServerOpts, options: &str) -> Result<MountedServer, String> {
        let mut m = MountedServer::spawn(opts, options, |_| {})?;
        m.server.wait_listening();
        Ok(m)
    }
}

impl Drop for MountedServer {
    fn drop(&mut self) {
        self.server.kill9();
        self.mount.unmount();
    }
}

/// An [`InProcess`] server whose data directory is a tmpfs: on drop the
/// server is stopped first, then the tmpfs unmounted, then the temporary
/// folder removed.
pub struct MountedInProcess {
    pub server: InProcess,
    pub mount: TmpfsMount,
}

impl MountedInProcess {
    /// Mounts a tmpfs with `options` on the new server's data directory,
    /// then starts the server with `configure`d settings.
    pub fn start(
        configure: impl FnOnce(&mut Settings),
        options: &str,
    ) -> Result<MountedInProcess, String> {
        let mut mount = None;
        let server = InProcess::start_prepared(configure, |data| {
            mount = Some(TmpfsMount::mount(data, options));
        });
        let mount = mount.expect("prepare ran")?;
        Ok(MountedInProcess { server, mount })
    }
}

impl Drop for MountedInProcess {
    fn drop(&mut self) {
        let stopped = self.server.try_stop();
        self.mount.unmount();
        if let Err(e) = stopped {
            if !std::thread::panicking() {
                panic!("the event loop failed: {e}");
            }
        }
    }
}
