use std::process::ExitCode;

fn main() -> ExitCode {
    loadtest::cli::main()
}
