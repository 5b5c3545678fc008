//! Training and evaluation on burn's Learner: image classification (methods `peanut`, `lora`,
//! `head`, `full`) and causal-LM instruction tuning (`peanut`, `lora`, `full`), sharing the
//! run plumbing of [`run`].

pub mod causal_lm;
pub mod checkpoint;
pub mod classifier;
pub mod guard;
pub mod image;
pub mod lm;
pub mod metrics;
pub mod run;
pub mod step;

pub use causal_lm::{CausalLm, LmOutput};
pub use classifier::ImageClassifier;
pub use guard::{Divergence, LossGuard};
pub use image::{
    EvalReport, ImageTrainConfig, TrainedImage, evaluate, export, prepare_model, train_image,
};
pub use lm::{
    InstructionData, LmEvalReport, LmTrainConfig, Prediction, TrainedLm, evaluate_lm, export_lm,
    load_instructions, prepare_lm, train_lm,
};
pub use metrics::{ThroughputMetric, TokenAccuracyMetric};
pub use run::{
    AdapterOptions, Method, RunOptions, export_adapters, export_atomically, last_checkpoint,
};
pub use step::{
    GroupLearningRate, LearningRates, Objective, StepSettings, TrainableRecord, Trainee,
};
