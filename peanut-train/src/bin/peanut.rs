//! `peanut`: fine-tune, evaluate and use PEANuT / LoRA adapters from the command line.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use peanut_train::cli;

/// PEANuT (weight-aware neural tweakers) and LoRA adapters on burn.
///
/// Every option defaults to the paper's setting for its task (Stanford Cars on ViT-B/16
/// in21k: q,v targets, rank 7, depth 2, ReLU, 10 epochs, lr 1e-2 for head and adapters,
/// weight decay 4e-5, batch 64 × accumulation 4).
#[derive(Parser, Debug)]
#[command(name = "peanut", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Fine-tune a model.
    #[command(subcommand)]
    Train(TrainCommand),
    /// Evaluate a (fine-tuned) model.
    #[command(subcommand)]
    Eval(EvalCommand),
    /// Predict with a fine-tuned model.
    #[command(subcommand)]
    Predict(PredictCommand),
    /// Write a model with its adapters merged as a Hugging Face checkpoint.
    Merge(cli::MergeArgs),
    /// Convert an adapter between this workspace's format and Hugging Face peft's.
    Convert(cli::ConvertArgs),
    /// Show a model's adaptable linears, the targets a setting selects and parameter counts.
    Info(cli::InfoArgs),
}

#[derive(Subcommand, Debug)]
enum TrainCommand {
    /// Image classification (Stanford Cars layouts, ImageFolder, parquet) with a ViT.
    Image(cli::TrainImageArgs),
}

#[derive(Subcommand, Debug)]
enum EvalCommand {
    /// Top-1 / top-5 accuracy on an image dataset's test split.
    Image(cli::EvalImageArgs),
}

#[derive(Subcommand, Debug)]
enum PredictCommand {
    /// Top-k labels and logits for image files, as JSON.
    Image(cli::PredictImageArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Train(TrainCommand::Image(args)) => cli::train_image(args),
        Command::Eval(EvalCommand::Image(args)) => cli::eval_image(args),
        Command::Predict(PredictCommand::Image(args)) => cli::predict_image(args),
        Command::Merge(args) => cli::merge(args),
        Command::Convert(args) => cli::convert(args),
        Command::Info(args) => cli::info(args),
    };
    match result {
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
