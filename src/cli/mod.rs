//! Command line: clap definitions, rendering, exit codes.
pub fn main() -> std::process::ExitCode {
    std::process::ExitCode::SUCCESS
}
