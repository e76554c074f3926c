//! `sealdrop-client`: sends one file to a sealdrop server in any of the
//! five published revisions of PROTOCOL.md (2023c by default, `--revision`),
//! a drop-in for the original C++ clients.
//!
//! The protocol decisions live in `sealdrop_protocol::ClientSession`; this
//! binary is its blocking driver: it reads the configuration and the state
//! files (§7), owns the socket and the file, and reports the result. See
//! `README.md` for the flags and exit codes.

mod cli;
mod config;
mod driver;
mod entropy;
mod identity;
mod net;
mod progress;
mod report;
mod sent_log;
mod upload;

use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;

use crate::cli::Args;
use crate::driver::Ended;
use crate::report::{Failure, Report};

fn main() -> ExitCode {
    let started = Instant::now();
    // Silent unless RUST_LOG asks: the user-facing output is the report.
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("off")).init();
    let args = match Args::try_parse() {
        Ok(args) => args,
        Err(e) => return cli::usage_error(e, started),
    };
    let report = Report::new(args.quiet, args.json, started);
    match run(&args, &report) {
        Ok(Ended::AllVerified) => ExitCode::SUCCESS,
        Ok(Ended::Failed(kind)) => ExitCode::from(kind.exit_code()),
        Err(failure) => report.failure(&failure),
    }
}

/// Loads everything, runs the session (each file's result is printed as
/// it comes), and says how it ended.
fn run(args: &Args, report: &Report) -> Result<Ended, Failure> {
    report.update(|s| s.revision = Some(args.revision));
    let settings = config::Settings::resolve(args)?;
    if let Some(first) = settings.files.first() {
        report.set_file(&first.path);
    }
    let mut job = driver::Job::prepare(&settings, report, args.quiet)?;
    job.run()
}
