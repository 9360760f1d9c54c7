//! The `cellscope` binary: parse the command line, run it, turn errors into a
//! one-line message and a non-zero exit.

use clap::Parser;

fn main() -> std::process::ExitCode {
    // GEMMs run on one thread each unless the user says otherwise: the trainer and
    // the server parallelise at a coarser grain (batch shards, requests).
    if std::env::var_os("MATMUL_NUM_THREADS").is_none() {
        std::env::set_var("MATMUL_NUM_THREADS", "1");
    }
    let cli = cellscope::cli::Cli::parse();
    match cellscope::cli::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", cellscope::cli::error_message(&e));
            std::process::ExitCode::from(2)
        }
    }
}
