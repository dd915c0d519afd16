fn main() -> std::process::ExitCode {
    // Both aws-lc-rs and ring are in the tree: pick one before any TLS use.
    kos_node::daemon::install_crypto_provider();
    kos_node::cli::main()
}
