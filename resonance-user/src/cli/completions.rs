//! `resonance completions SHELL` and `resonance manpages DIR`: what a
//! package installs so the command completes and documents itself, made
//! from the same definitions the parser uses, so they cannot drift.

use std::{io::Write, path::PathBuf};

use anyhow::{Context, Result};
use clap::{Command, CommandFactory};
use clap_complete::Shell;

use super::Cli;

/// Arguments of `resonance completions`.
#[derive(clap::Args)]
pub struct CompletionArgs {
    /// The shell to complete for.
    pub shell: Shell,
}

/// Arguments of `resonance manpages`.
#[derive(clap::Args)]
pub struct ManArgs {
    /// Folder to write `resonance.1` and one `resonance-SUBCOMMAND.1` per
    /// subcommand into (created if missing).
    pub output: PathBuf,
}

/// Writes the completion script for `args.shell` to stdout.
pub fn completions(args: CompletionArgs) -> Result<()> {
    let mut command = Cli::command();
    let mut out = std::io::stdout().lock();
    clap_complete::generate(args.shell, &mut command, "resonance", &mut out);
    out.flush().context("writing the completion script")
}

/// Writes the man pages into `args.output`, naming each file written.
pub fn manpages(args: ManArgs) -> Result<()> {
    std::fs::create_dir_all(&args.output)
        .with_context(|| format!("creating {}", args.output.display()))?;
    let command = Cli::command();
    let mut written = vec![write_page(&args.output, command.clone(), "resonance")?];
    for sub in command.get_subcommands().filter(|sub| !sub.is_hide_set()) {
        let name = format!("resonance-{}", sub.get_name());
        // A subcommand's page is named as `man resonance-pairs` finds it,
        // and its synopsis shows the command as typed.
        let typed = format!("resonance {}", sub.get_name());
        let sub = sub.clone().name(name.clone()).bin_name(typed);
        written.push(write_page(&args.output, sub, &name)?);
    }
    for path in written {
        println!("{}", path.display());
    }
    Ok(())
}

fn write_page(dir: &std::path::Path, command: Command, name: &str) -> Result<PathBuf> {
    let path = dir.join(format!("{name}.1"));
    let mut page = Vec::new();
    clap_mangen::Man::new(command)
        .render(&mut page)
        .with_context(|| format!("rendering the man page of {name}"))?;
    std::fs::write(&path, page).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}
