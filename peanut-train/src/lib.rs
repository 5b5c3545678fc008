//! # peanut-train
//!
//! Fine-tuning with PEANuT and LoRA adapters on burn's `Learner`: datasets (Stanford Cars in its
//! common layouts, ImageFolder, Hugging Face parquet, the bundled digits, LLM-Adapters
//! instruction JSON), the paper's transforms and optimisation settings, checkpoints with resume,
//! adapter export, Hugging Face hub ids for models and datasets ([`hub`]), and the `peanut`
//! command line.
//!
//! The backend is chosen once, in [`backend`], by cargo feature (`ndarray`, `wgpu`, `cuda`);
//! everything else is generic over `B: Backend`.
#![warn(missing_docs)]

pub mod backend;
pub mod cli;
pub mod data;
pub mod error;
pub mod hub;
pub mod render;
pub mod schedule;
pub mod train;

pub use error::{Result, TrainError};
