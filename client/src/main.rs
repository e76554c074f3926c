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

use std::io::Write;
use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;

use crate::cli::Args;
use crate::driver::Ended;
use crate::report::{Failure, Report};

/// Section of the man page: user commands.
const MAN_SECTION: &str = "1";

fn main() -> ExitCode {
    if let Some(code) = packager_output() {
        return code;
    }
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

/// The generators for packagers (what `make install` runs), each alone
/// on the command line:
///
/// * `sealdrop-client --print-completions SHELL` prints the completion
///   script for bash, zsh, fish, elvish or powershell;
/// * `sealdrop-client --print-man` prints the man page (roff, section 1).
///
/// They are read before clap, not declared to it, as the server does:
/// they belong in neither the completions, the man page nor `--help`.
/// `None` when the command line is not one of them.
fn packager_output() -> Option<ExitCode> {
    let argv: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    let argv: Vec<&str> = argv.iter().map(|a| a.to_str()).collect::<Option<_>>()?;
    let written = match argv.as_slice() {
        ["--print-completions", shell] => {
            let Ok(shell) = shell.parse::<clap_complete::Shell>() else {
                eprintln!(
                    "{}: unknown shell {} for --print-completions (bash, zsh, fish, elvish, \
                     powershell)",
                    cli::PROGRAM,
                    report::quoted(shell)
                );
                return Some(ExitCode::from(report::FailKind::Usage.exit_code()));
            };
            let mut out = std::io::stdout().lock();
            clap_complete::generate(shell, &mut cli::public_command(), cli::PROGRAM, &mut out);
            out.flush()
        }
        ["--print-man"] => print_man(&mut std::io::stdout().lock()),
        _ => return None,
    };
    match written {
        // A reader that went away (`--print-man | head`) is no error.
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            eprintln!("{}: cannot write to stdout: {e}", cli::PROGRAM);
            Some(ExitCode::from(report::FailKind::LocalIo.exit_code()))
        }
        _ => Some(ExitCode::SUCCESS),
    }
}

/// `--print-man`: clap_mangen's page of the flags, with the blocks after
/// the help (exit codes, revisions, examples) as sections of their own,
/// their lines kept as they are (clap_mangen would fill them into one
/// paragraph). A block that does not start with a heading ("Exit codes:")
/// continues the section before it.
fn print_man(out: &mut impl Write) -> std::io::Result<()> {
    let mut page = Vec::new();
    clap_mangen::Man::new(cli::public_command())
        .section(MAN_SECTION)
        .render(&mut page)?;
    let page = String::from_utf8_lossy(&page);
    let mut sections = String::new();
    for block in cli::AFTER_HELP.split("\n\n") {
        let (first, rest) = block.split_once('\n').unwrap_or((block, ""));
        let body = match first.strip_suffix(':') {
            Some(heading) => {
                sections += &format!(".SH \"{}\"\n", roff_escape(&heading.to_uppercase()));
                rest
            }
            None => {
                sections += ".sp\n";
                block
            }
        };
        sections += ".nf\n";
        for line in body.lines() {
            sections += &format!("\\&{}\n", roff_escape(line));
        }
        sections += ".fi\n";
    }
    // Before the VERSION section clap_mangen ends with.
    let at = page.find("\n.SH VERSION").map_or(page.len(), |i| i + 1);
    out.write_all(page[..at].as_bytes())?;
    out.write_all(sections.as_bytes())?;
    out.write_all(page[at..].as_bytes())?;
    out.flush()
}

/// Text as roff shows it literally: backslashes, hyphens (a plain `-` may
/// print as a typographic hyphen, which cannot be pasted into a shell)
/// and apostrophes escaped.
fn roff_escape(text: &str) -> String {
    text.replace('\\', "\\e")
        .replace('-', "\\-")
        .replace('\'', "\\(aq")
}
