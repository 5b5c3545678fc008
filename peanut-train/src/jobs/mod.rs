//! Every `peanut` subcommand as a typed job that Rust code builds and runs without the command
//! line: a plain struct of options (with a `new` that takes what has no default) and a `run`
//! method (or function) that does the work and returns what the command prints. [`crate::cli`]
//! parses the command line into these and prints their results.
//!
//! | command | job | result |
//! |---|---|---|
//! | `train image` | [`ImageJob`] ([`train_image_job`]) | [`TrainImageOutcome`] |
//! | `train lm` | [`LmJob`] ([`train_lm_job`]) | the export on disk |
//! | `eval lm` | [`EvalLmJob`] | [`crate::train::lm::LmEvalReport`] |
//! | `generate` | [`GenerateJob`] | the text |
//! | `eval image` | [`EvalImageJob`] | [`crate::train::EvalReport`] |
//! | `predict image` | [`PredictImageJob`] | [`Prediction`]s |
//! | `merge` | [`MergeJob`] | the checkpoint on disk |
//! | `convert` | [`ConvertJob`] | [`ConvertReport`] |
//! | `info` | [`InfoJob`] | [`InfoReport`] |
//!
//! ```no_run
//! use peanut_train::jobs::{EvalImageJob, MergeJob};
//!
//! # fn main() -> peanut_train::Result<()> {
//! let report = EvalImageJob {
//!     adapter: Some("runs/cars/export".into()),
//!     ..EvalImageJob::new("data/stanford_cars", "google/vit-base-patch16-224-in21k")
//! }
//! .run()?;
//! println!("top-1 {:.2}%", 100.0 * report.top1);
//! MergeJob::new("google/vit-base-patch16-224-in21k", "runs/cars/export", "runs/cars/merged")
//!     .run()?;
//! # Ok(())
//! # }
//! ```

mod image;
mod infer;
mod lm;
pub(crate) mod load;

pub use image::{ImageJob, TrainImageOutcome, train_image_job};
pub use infer::{
    AdapterFormat, ConvertJob, ConvertReport, EvalImageJob, InfoJob, InfoReport, MergeJob,
    PredictImageJob, Prediction, ProcessorOverrides, RankedLabel,
};
pub use lm::{EvalLmJob, GenerateJob, LmJob, train_lm_job};
