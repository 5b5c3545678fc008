//! Stanford Cars with the paper's recipe: PEANuT on ViT-B/16 (ImageNet-21k) for 196 classes.
//!
//! ```text
//! cargo run --release --example cars --features wgpu -- --data-dir <stanford_cars>
//! cargo run --release --example cars --features cuda -- --data-dir Multimodal-Fatima/StanfordCars_train
//! ```
//!
//! The run is configured in Rust, not on a command line: [`ImageJob::new`] starts from the
//! paper's recipe ([`ImageTrainConfig::default`]: `google/vit-base-patch16-224-in21k`, taken from
//! the Hugging Face cache or downloaded into it, q,v targets, rank 7, depth 2, ReLU, 10 epochs,
//! lr 1e-2 for head and adapters, weight decay 4e-5, batch 64 × 4 accumulated = 256), and the
//! example only takes where the data is (`--data-dir`), where the run goes (`--output-dir`,
//! default `runs/cars`), `--resume` and `--overwrite`. Edit the config below to change the
//! recipe, or use `peanut train image`, which accepts every option. The backend is the cargo
//! feature: `ndarray` (default), `wgpu` or `cuda`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use peanut_train::TrainError;
use peanut_train::backend;
use peanut_train::data::LAYOUTS_LOOKED_FOR;
use peanut_train::jobs::{self, ImageJob};
use peanut_train::train::ImageTrainConfig;

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

const USAGE: &str =
    "usage: cars --data-dir <dir or hub id> [--output-dir <dir>] [--resume | --overwrite]";

/// The job the command line asks for: the paper's recipe on its data and run directory.
fn job_from_args(mut args: impl Iterator<Item = String>) -> Result<ImageJob, String> {
    let (mut data_dir, mut output_dir) = (None, PathBuf::from("runs/cars"));
    let (mut resume, mut overwrite) = (false, false);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "--data-dir" => data_dir = Some(PathBuf::from(value("--data-dir")?)),
            "--output-dir" => output_dir = PathBuf::from(value("--output-dir")?),
            "--resume" => resume = true,
            "--overwrite" => overwrite = true,
            other => return Err(format!("unknown argument `{other}`")),
        }
    }
    let data_dir = data_dir.ok_or_else(|| {
        format!(
            "pass --data-dir: a directory holding Stanford Cars in one of these layouts: \
             {LAYOUTS_LOOKED_FOR}; or a Hugging Face dataset id.\n\n{WHERE_TO_GET}"
        )
    })?;
    let mut job = ImageJob::new(data_dir, output_dir);
    job.config = ImageTrainConfig::default();
    job.run.resume = resume;
    job.run.overwrite = overwrite;
    Ok(job)
}

fn main() -> ExitCode {
    peanut_train::backend::tune_allocator();
    let job = match job_from_args(std::env::args().skip(1)) {
        Ok(job) => job,
        Err(message) => {
            eprintln!("error: {message}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    println!(
        "Stanford Cars from {}, model {}, backend {}",
        job.data_dir.display(),
        job.model.display(),
        backend::NAME
    );
    let data_dir = job.data_dir.clone();
    match jobs::train_image_job(&job) {
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
