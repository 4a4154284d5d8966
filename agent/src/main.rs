//! The `sluice` binary: parse the command line, run the subcommand, map errors to exit codes.
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    sluice::cli::main()
}
