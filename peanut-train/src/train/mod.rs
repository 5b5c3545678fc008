//! Training and evaluation on burn's Learner: image classification (methods `peanut`, `lora`,
//! `head`, `full`) and causal-LM instruction tuning (`peanut`, `lora`, `full`).
//!
//! Both pipelines share one Learner set-up and one step; they differ only in their model, data
//! and metrics:
//!
//! ```text
//! image.rs ──┐                        ┌── step.rs        Trainee: the guarded step, parameter
//!  (ViT,     │                        │                  groups, the trainable-only record
//!  images)   ├── run.rs ──────────────┤── guard.rs       loss guard, gradient clipping
//! lm.rs ─────┘   run.json, resume,    └── checkpoint.rs  crash-safe epoch checkpoints
//!  (LLaMA,       --overwrite, Learner
//!  JSON)         settings, export
//! classifier.rs / causal_lm.rs   each model's Objective (its loss and metric outputs)
//! metrics.rs                     throughput and token-accuracy metrics
//! ```

pub mod causal_lm;
pub mod checkpoint;
pub mod classifier;
pub mod guard;
pub mod image;
pub mod lm;
pub mod metrics;
pub mod parallel;
pub mod run;
pub mod step;

pub use causal_lm::{CausalLm, LmOutput};
pub use classifier::ImageClassifier;
pub use guard::{Divergence, LossGuard};
pub use image::{
    EvalReport, ImageTrainConfig, TrainedImage, evaluate, evaluate_with, export, prepare_model,
    train_image, train_image_on,
};
pub use lm::{
    InstructionData, LmEvalReport, LmTrainConfig, Prediction, TrainedLm, evaluate_lm, export_lm,
    load_instructions, prepare_lm, train_lm, train_lm_on,
};
pub use metrics::{ThroughputMetric, TokenAccuracyMetric};
pub use parallel::{DeviceKind, DeviceSpec};
pub use run::{
    AdapterOptions, Method, RunOptions, check_precision, export_adapters, export_atomically,
    last_checkpoint,
};
pub use step::{
    GroupLearningRate, LearningRates, Objective, StepSettings, TrainableRecord, Trainee,
};
