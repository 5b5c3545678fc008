//! Training and evaluation on burn's Learner: one pipeline for the methods `peanut`, `lora`,
//! `head` and `full`, with the run plumbing in [`run`].

pub mod classifier;
pub mod image;
pub mod metrics;
pub mod run;

pub use classifier::{Divergence, ImageClassifier, LossGuard, OptimSettings};
pub use image::{
    EvalReport, ImageTrainConfig, TrainedImage, evaluate, export, prepare_model, train_image,
};
pub use metrics::ThroughputMetric;
pub use run::{AdapterOptions, Method, RunOptions, export_adapters, last_checkpoint};
