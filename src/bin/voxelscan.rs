fn main() -> std::process::ExitCode {
    voxelscan::cli::main()
}
