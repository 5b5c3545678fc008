//! `peanut`: fine-tune, evaluate and use PEANuT / LoRA adapters from the command line.

use std::process::ExitCode;

use clap::Parser;

use peanut_train::cli::{self, Cli};

fn main() -> ExitCode {
    peanut_train::backend::tune_allocator();
    match cli::run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            let mut source = std::error::Error::source(&error);
            while let Some(cause) = source {
                eprintln!("  caused by: {cause}");
                source = cause.source();
            }
            ExitCode::FAILURE
        }
    }
}
