//! # peanut-models
//!
//! Hugging Face-compatible models for burn whose every linear is a
//! [`peanut::AdaptedLinear`]: the same [`Vit`] or [`Llama`] type trains plain, with PEANuT or
//! with LoRA.
//!
//! - [`vit`]: transformers' `ViTForImageClassification`.
//! - [`llama`]: LLaMA-style decoders (`LlamaForCausalLM`, `Qwen2ForCausalLM`).
//! - [`AdaptableModel`]: adapters by [`Targets`], peft adapter files, merge, full fine-tuning,
//!   export of the merged model as a transformers checkpoint.
//! - [`Checkpoint`]: `config.json` + safetensors (single or sharded, f32/f16/bf16).
//! - [`ModelFamily`]: the one list of model families, which `config.json` (or adapter
//!   directory) belongs to which.
//!
//! Module paths equal checkpoint keys (`vit.encoder.layer.0.attention.attention.query`,
//! `model.layers.0.self_attn.q_proj`), so loading needs no remapping table.
#![warn(missing_docs)]

pub mod adaptable;
pub mod checkpoint;
pub mod error;
pub mod family;
pub mod layer_norm;
pub mod llama;
pub mod ops;
pub mod recompute;
pub mod rms_norm;
mod source;
pub mod targets;
pub mod vit;

pub use adaptable::AdaptableModel;
pub use checkpoint::Checkpoint;
pub use error::{ModelError, Result};
pub use family::ModelFamily;

pub use llama::{Llama, LlamaConfig};
pub use targets::{LinearSite, Targets};
pub use vit::{Vit, VitConfig, VitLoadOptions};
