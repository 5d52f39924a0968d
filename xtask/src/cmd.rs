//! Running child commands with the bootstrapped environment, loudly.

use std::{
    ffi::OsStr,
    path::Path,
    process::{Command, Output},
};

use anyhow::{Context, Result, bail};

use crate::bootstrap::BuildEnv;

/// `cargo ARGS` in the workspace root with the build environment.
pub fn cargo(root: &Path, env: &BuildEnv, args: &[&str]) -> Result<()> {
    run(root, env, Path::new("cargo"), args)
}

/// Runs `program ARGS`, inheriting stdio; fails on a non-zero exit.
pub fn run<S: AsRef<OsStr>>(root: &Path, env: &BuildEnv, program: &Path, args: &[S]) -> Result<()> {
    let mut command = Command::new(program);
    command.args(args).current_dir(root);
    env.apply(&mut command);
    status(&mut command)
}

/// Runs a prepared command, inheriting stdio; fails on a non-zero exit.
pub fn status(command: &mut Command) -> Result<()> {
    eprintln!("xtask: running {}", describe(command));
    let status = command
        .status()
        .with_context(|| format!("starting {}", describe(command)))?;
    if !status.success() {
        bail!("{} failed: {status}", describe(command));
    }
    Ok(())
}

/// Runs a prepared command and captures its output; fails on a non-zero exit.
pub fn output(command: &mut Command) -> Result<Output> {
    let output = command
        .output()
        .with_context(|| format!("starting {}", describe(command)))?;
    if !output.status.success() {
        bail!(
            "{} failed: {}\n{}",
            describe(command),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(output)
}

fn describe(command: &Command) -> String {
    let mut text = command.get_program().to_string_lossy().into_owned();
    for arg in command.get_args() {
        text.push(' ');
        text.push_str(&arg.to_string_lossy());
    }
    text
}
