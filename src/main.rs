//! The `voxelscan` binary: the command-line front lives here, not in the library (see `cli`).

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
