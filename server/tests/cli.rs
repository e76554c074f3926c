//! The command line of the real `sealdrop-server` binary, as an operator
//! or a script meets it: `--log-level` values, `--check-config` and the
//! port file, exit statuses of bad flags, SIGHUP, the connection numbers
//! and upload lines of the log, the generated completions and man page,
//! and `make install`.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;

/// What a finished command did (a [`Ran`] that failure messages can show).
#[derive(Debug)]
struct Out {
    status: std::process::ExitStatus,
    stdout: String,
    stderr: String,
}

/// Runs `cmd` to completion, bounded to `timeout`.
fn run(cmd: &mut Command, timeout: Duration) -> Out {
    let Ran {
        status,
        stdout,
        stderr,
    } = run_bounded(cmd, timeout);
    Out {
        status,
        stdout,
        stderr,
    }
}

/// `sealdrop-server ARGS` run in `cwd`, outside systemd and without
/// `RUST_LOG`, bounded to 20 s.
fn server_in(cwd: &Path, args: &[&str]) -> Out {
    run(bare(cwd).args(args), Duration::from_secs(20))
}

/// The binary, in `cwd`, with none of the environment that changes what
/// it does (systemd's variables, `RUST_LOG`).
fn bare(cwd: &Path) -> Command {
    let mut cmd = Command::new(SERVER_BIN);
    cmd.current_dir(cwd)
        .env_remove("RUST_LOG")
        .env_remove("LISTEN_FDS")
        .env_remove("LISTEN_PID")
        .env_remove("LISTEN_FDNAMES")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("JOURNAL_STREAM");
    cmd
}

// ---------------------------------------------------------------------------
// 3. Exit status of bad flags
// ---------------------------------------------------------------------------

#[test]
fn bad_flags_exit_1_as_the_help_says() {
    let tmp = tempfile::tempdir().unwrap();
    for bad in [
        vec!["--bogus"],
        vec!["--max-connections", "many"],
        vec!["--sync-mode", "fast"],
        vec!["--listen", "nonsense"],
        vec!["--max-file-size", "1Q"],
        vec!["stray-argument"],
        vec!["--data-dir"],
    ] {
        let ran = server_in(tmp.path(), &bad);
        assert_eq!(ran.status.code(), Some(1), "{bad:?}: {ran:?}");
        assert!(
            ran.stderr.starts_with("error: ")
                && ran.stderr.contains("For more information, try '--help'."),
            "{bad:?}: {}",
            ran.stderr
        );
    }
    let help = server_in(tmp.path(), &["--help"]);
    assert_eq!(help.status.code(), Some(0), "{help:?}");
    assert!(
        help.stdout
            .contains("1 on a start-up error (bad flags or values, bad configuration"),
        "{}",
        help.stdout
    );
    let version = server_in(tmp.path(), &["--version"]);
    assert_eq!(version.status.code(), Some(0), "{version:?}");
    assert!(version.stdout.starts_with("sealdrop-server "));
}
