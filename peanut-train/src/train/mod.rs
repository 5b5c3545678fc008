//! Training and evaluation on burn's Learner: image classification (methods `peanut`, `lora`,
//! `head`, `full`) and causal-LM instruction tuning (`peanut`, `lora`, `full`).
//!
//! Both pipelines share one Learner set-up ([`fit`]) and one step; they differ only in their
//! model, data and metrics:
//!
//! ```text
//! image.rs ──┐                ┌── run.rs         run.json, --resume / --overwrite, Learner
//!  (ViT,     │                │                  settings, device and precision checks, export
//!  images)   ├── fit.rs ──────┤── parallel.rs    --devices: per-device batch, burn's strategy
//! lm.rs ─────┘   the one      ├── step.rs        Trainee: the guarded step, parameter groups,
//!  (LLaMA,       Learner      │                  the trainable-only record
//!  JSON)         set-up       ├── guard.rs       loss guard (off the training thread), clipping
//!                             ├── checkpoint.rs  crash-safe epoch checkpoints
//!                             └── lock.rs        one process per run directory
//! checked.rs                     Checked: a configuration validated once, with its adapter config
//! classifier.rs / causal_lm.rs   each model's Objective (its loss and metric outputs)
//! metrics.rs                     throughput and token-accuracy metrics
//! ```

pub mod causal_lm;
pub mod checked;
pub mod checkpoint;
pub mod classifier;
pub mod fit;
pub mod guard;
pub mod image;
pub mod lm;
pub mod lock;
pub mod manifest;
pub mod metrics;
pub mod parallel;
pub mod run;
pub mod step;

pub use causal_lm::{CausalLm, LmOutput};
pub use checked::Checked;
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
pub use manifest::ExportManifest;
pub use metrics::{ThroughputMetric, TokenAccuracyMetric};
pub use parallel::{DeviceKind, DeviceSpec};
pub use run::{
    AdapterOptions, Method, RunLock, RunOptions, attach_adapters, check_precision,
    check_quantization, check_quantize, check_run_dir, export_adapters, export_atomically,
    last_checkpoint,
};
pub use step::{
    GroupLearningRate, LearningRates, Objective, StepSettings, TrainableRecord, Trainee,
};
