//! Training and evaluation on burn's Learner: one pipeline for the methods `peanut`, `lora`,
//! `head` and `full`.

pub mod classifier;
pub mod image;
pub mod metrics;

pub use classifier::{Divergence, ImageClassifier, LossGuard, OptimSettings};
pub use image::{
    AdapterOptions, EvalReport, ImageTrainConfig, Method, RunOptions, TrainedImage, evaluate,
    export, last_checkpoint, prepare_model, train_image,
};
pub use metrics::ThroughputMetric;
