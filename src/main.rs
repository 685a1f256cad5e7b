//! The `slowcat` binary: parses the command line and hands over to the library.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = slowcat::cli::Cli::parse();
    slowcat::cli::main(cli)
}
