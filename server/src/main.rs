//! sealdrop-server: the binary. Parses flags, opens storage, binds (or
//! adopts) the listening socket, tells systemd it is ready, and runs the
//! event loop until SIGTERM or SIGINT.

mod config;
mod event_loop;
mod logging;
mod systemd;

use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Parser;

use sealdrop_server::store::DiskStore;

use crate::config::{Args, Settings};
use crate::event_loop::Server;

fn main() -> ExitCode {
    let args = Args::parse();
    logging::init(&args.log_level);
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<()> {
    let settings = args.settings().map_err(anyhow::Error::msg)?;
    raise_descriptor_limit(settings.max_connections);
    let store = DiskStore::open(&settings.data_dir, settings.store.clone())
        .with_context(|| format!("cannot use data directory {}", settings.data_dir.display()))?;
    if args.check_config {
        check_listen(&settings)?;
        println!(
            "configuration ok: listen {}, data directory {}",
            settings.listen,
            settings.data_dir.display()
        );
        return Ok(());
    }
    let listener = listener(&settings)?;
    let mut server =
        Server::new(listener, store, settings.clone()).context("cannot set up the event loop")?;
    let addr = server.local_addr();
    log::info!(
        "listening on {addr}, data in {}, up to {} connections",
        settings.data_dir.display(),
        settings.max_connections
    );
    systemd::ready(&format!("listening on {addr}"));
    server.run().context("event loop failed")?;
    log::info!("shut down cleanly");
    Ok(())
}

/// The socket systemd passed, or a new one bound to `--listen`.
fn listener(settings: &Settings) -> Result<std::net::TcpListener> {
    if let Some(l) = systemd::passed_listener().context("cannot adopt the socket systemd passed")? {
        log::info!("using the listening socket passed by systemd");
        return Ok(l);
    }
    bind(settings)
}

fn bind(settings: &Settings) -> Result<std::net::TcpListener> {
    // std sets SO_REUSEADDR on Unix, so a restart right after a crash binds at once.
    std::net::TcpListener::bind(settings.listen)
        .with_context(|| format!("cannot listen on {}", settings.listen))
}

fn check_listen(settings: &Settings) -> Result<()> {
    if std::env::var_os("LISTEN_FDS").is_some() {
        return Ok(());
    }
    bind(settings).map(drop)
}

/// Raises the soft open-file limit towards the hard one so the connection
/// cap can be reached; warns if it cannot.
fn raise_descriptor_limit(max_connections: usize) {
    let want = max_connections as u64 + DESCRIPTORS_RESERVED;
    match rlimit::increase_nofile_limit(want) {
        Ok(got) if got >= want => log::debug!("open-file limit is {got}"),
        Ok(got) => log::warn!(
            "open-file limit {got} is below --max-connections {max_connections} + {DESCRIPTORS_RESERVED}; \
             accepts pause while descriptors run out"
        ),
        Err(e) => log::warn!("cannot raise the open-file limit: {e}"),
    }
}

/// Descriptors kept for the database, files being written, the listener
/// and the poll instance, beyond one per connection.
const DESCRIPTORS_RESERVED: u64 = 64;
