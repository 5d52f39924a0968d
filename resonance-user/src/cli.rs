//! Command-line front end: one file per subcommand, each with its `Args`
//! and a `run` that returns an error with context instead of exiting.

mod completions;
mod doctor;
mod explain;
mod gen_trace;
mod history;
mod logging;
mod observe;
mod pairs;
mod record;
mod replay;
mod run;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// resonance: which process talks to which over pipes and sockets.
#[derive(Parser)]
#[command(name = "resonance", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the probes for a while and print who talked to whom.
    Observe(observe::Args),
    /// Run the agent: observe, score, store, serve metrics (until SIGTERM).
    Run(run::Args),
    /// Show the running agent's current pair scores.
    Pairs(pairs::Args),
    /// Explain what the running agent does for one pair, and why.
    Explain(explain::Args),
    /// Write live interaction starts as a trace (JSON Lines).
    Record(record::Args),
    /// Simulate preallocation over a recorded trace and score it.
    Replay(replay::Args),
    /// Write a synthetic interaction trace for a named scenario.
    GenTrace(gen_trace::Args),
    /// Print the stored history of one pair from the agent's store.
    History(history::Args),
    /// Say what this host offers and what the agent will use, and what to
    /// do about anything missing.
    Doctor(doctor::Args),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions(completions::CompletionArgs),
    /// Write the man pages of resonance and each subcommand into a folder.
    Manpages(completions::ManArgs),
}

/// Parses the command line, runs it, and turns errors into one clear
/// message and a non-zero exit status.
pub fn main() -> ExitCode {
    logging::init();
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Run(_)) {
        // Like any Unix filter: a reader that went away (`| head -1`) ends
        // the command quietly. The agent keeps Rust's ignored SIGPIPE, so a
        // client closing its socket mid-answer is an error it handles.
        crate::sys::default_sigpipe();
    }
    let result = match cli.command {
        Command::Observe(args) => observe::run(args),
        Command::Run(args) => run::run(args),
        Command::Pairs(args) => pairs::run(args),
        Command::Explain(args) => explain::run(args),
        Command::Record(args) => record::run(args),
        Command::Replay(args) => replay::run(args),
        Command::GenTrace(args) => gen_trace::run(args),
        Command::History(args) => history::run(args),
        Command::Doctor(args) => doctor::run(args),
        Command::Completions(args) => completions::completions(args),
        Command::Manpages(args) => completions::manpages(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("resonance: {error:#}");
            ExitCode::FAILURE
        }
    }
}
