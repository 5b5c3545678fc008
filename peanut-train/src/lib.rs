//! # peanut-train
//!
//! Fine-tuning with PEANuT and LoRA adapters on burn's `Learner`: datasets (Stanford Cars in its
//! common layouts, ImageFolder, Hugging Face parquet, the bundled digits, LLM-Adapters
//! instruction JSON), the paper's transforms and optimisation settings, checkpoints with resume,
//! adapter export, Hugging Face hub ids for models and datasets ([`hub`]), and the `peanut`
//! command line.
//!
//! The backend is chosen once, in [`backend`], by cargo feature (`flex`, the default, `ndarray`,
//! `wgpu`, `cuda`, `candle`); everything else is generic over `B: Backend`.
//!
//! # Module map
//!
//! ```text
//! cli (+ cli/lm)  parses the command line into typed jobs and configs, prints results
//!   │
//!   ▼
//! jobs            every subcommand as a typed job callable from Rust (train image, eval,
//!   │             predict, merge, convert, info), and loading of --model / --data-dir
//!   ▼
//! train           the pipelines on burn's Learner (its own map: train/mod.rs)
//!   ├── image, lm        configs, data loading, evaluation, export of each task
//!   ├── fit              the one Learner set-up both pipelines run
//!   ├── run              run.json, --resume / --overwrite, shared Learner settings
//!   ├── parallel         --devices: data parallel on burn's multi-device strategy
//!   ├── step, guard      the one guarded training step, parameter groups
//!   └── checkpoint       crash-safe, trainable-only epoch checkpoints
//! data            datasets (Stanford Cars, ImageFolder, parquet, digits, instruction JSON),
//!                 transforms, batchers, the seeded RNG
//! export          the export directory: layout, labels, head, reader, replaceable outputs
//! hub             Hugging Face ids for models and datasets
//! schedule        warmup + decay learning-rate factor
//! render, backend, error   progress lines, the backend choice, the error type
//! ```
#![warn(missing_docs)]

pub mod backend;
pub mod cli;
pub mod data;
pub mod error;
pub mod export;
pub mod hub;
pub mod jobs;
pub mod render;
pub mod schedule;
pub mod train;

pub use error::{Result, TrainError};
