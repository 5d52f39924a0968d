//! The `resonance` command: parse, then run.

fn main() -> std::process::ExitCode {
    resonance::cli::main()
}
