fn main() -> std::process::ExitCode {
    kos_node::cli::main()
}
