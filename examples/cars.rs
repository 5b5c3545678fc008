//! Stanford Cars with the paper's recipe: PEANuT on ViT-B/16 (ImageNet-21k) for 196 classes.
//!
//! ```text
//! cargo run --release --example cars --features wgpu -- --data-dir <stanford_cars>
//! cargo run --release --example cars --features cuda -- --data-dir Multimodal-Fatima/StanfordCars_train
//! ```
//!
//! Defaults are the paper's: `google/vit-base-patch16-224-in21k` (taken from the Hugging Face
//! cache or downloaded into it), q,v targets, rank 7, depth 2, ReLU, 10 epochs, lr 1e-2 for head
//! and adapters, weight decay 4e-5, batch 64 × 4 accumulated = 256. Every option of
//! `peanut train image` is accepted (`--help`); this example only runs that same pipeline and
//! prints the final accuracies. The backend is the cargo feature: `ndarray` (default), `wgpu` or
//! `cuda`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Command, FromArgMatches};
use peanut_train::TrainError;
use peanut_train::backend;
use peanut_train::cli::{self, TrainImageArgs};
use peanut_train::data::LAYOUTS_LOOKED_FOR;

/// Where Stanford Cars can be had, for the error messages.
const WHERE_TO_GET: &str = "\
Stanford Cars (196 classes, 8,144 train / 8,041 test images) can be had as:
  - the paper's Hugging Face parquet copy: pass `--data-dir Multimodal-Fatima/StanfordCars_train`,
    which fetches it and `Multimodal-Fatima/StanfordCars_test` into the Hugging Face cache (or
    run `huggingface-cli download --repo-type dataset` for both on a machine with network access
    and copy its cache here);
  - a Kaggle copy in class folders (car_data/car_data/train|test/<class>/ with anno_train.csv,
    anno_test.csv and names.csv): pass the unpacked directory;
  - the original devkit layout that torchvision reads (cars_train/, cars_test/, devkit/,
    cars_test_annos_withlabels.mat): pass the directory holding them.";

fn main() -> ExitCode {
    let command = TrainImageArgs::augment_args(Command::new("cars"))
        .about("Fine-tune ViT-B/16 on Stanford Cars with PEANuT (the paper's recipe)")
        .mut_arg("data_dir", |arg| arg.required(false))
        .mut_arg("output_dir", |arg| arg.default_value("runs/cars"));
    let matches = command.get_matches();
    if !matches.contains_id("data_dir") {
        eprintln!(
            "error: pass --data-dir: a directory holding Stanford Cars in one of these layouts: \
             {LAYOUTS_LOOKED_FOR}; or a Hugging Face dataset id.\n\n{WHERE_TO_GET}"
        );
        return ExitCode::from(2);
    }
    let args = match TrainImageArgs::from_arg_matches(&matches) {
        Ok(args) => args,
        Err(error) => error.exit(),
    };
    let data_dir: PathBuf = args.data_dir.clone();
    println!(
        "Stanford Cars from {}, model {}, backend {}",
        data_dir.display(),
        args.model.display(),
        backend::NAME
    );
    match cli::train_image_run(args) {
        Ok(outcome) => {
            println!(
                "final: top-1 {:.2}%, top-5 {:.2}% on {} test images",
                100.0 * outcome.test.top1,
                100.0 * outcome.test.top5,
                outcome.test.count
            );
            println!("adapter exported to {}", outcome.export_dir.display());
            ExitCode::SUCCESS
        }
        Err(error @ TrainError::Layout { .. }) => {
            eprintln!("error: {error}\n\n{WHERE_TO_GET}");
            ExitCode::FAILURE
        }
        Err(TrainError::HubId { arg, reason }) if Path::new(&arg) == data_dir.as_path() => {
            eprintln!("error: --data-dir `{arg}`: {reason}.\n\n{WHERE_TO_GET}");
            ExitCode::FAILURE
        }
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
