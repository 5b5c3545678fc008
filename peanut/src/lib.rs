//! # peanut
//!
//! PEANuT — *Parameter-Efficient Adaptation with Weight-aware Neural Tweakers* (Zhong et al.,
//! KDD'26) — for the [burn](https://burn.dev) deep-learning framework, with a LoRA baseline in
//! the same seam.
//!
//! LoRA learns a weight update `ΔW = A·B` that ignores the pretrained weight. PEANuT learns
//! `ΔW = s·f(W0; θ)`, a small network *of the frozen weight itself*: `σ(W0·A)`, optional residual
//! encoder/decoder pairs, then `B`. At the same trainable budget it fits updates LoRA cannot.
//!
//! ```
//! use burn::backend::NdArray;
//! use burn::nn::LinearConfig;
//! use peanut::{AdaptedLinear, Adapter, PeanutConfig};
//!
//! type B = NdArray<f32>;
//! let device = Default::default();
//! let base = LinearConfig::new(768, 768).init::<B>(&device);
//! let adapter = PeanutConfig::new(7).init::<B>(768, 768, 42, &device)?;
//! let layer = AdaptedLinear::new(base).with_adapter(Adapter::Peanut(adapter));
//! let y = layer.forward(burn::tensor::Tensor::<B, 2>::ones([4, 768], &device));
//! assert_eq!(y.dims(), [4, 768]);
//! assert_eq!(layer.num_adapter_params(), 2 * 7 * 768);
//! # Ok::<(), peanut::PeanutError>(())
//! ```
//!
//! - [`PeanutConfig`] / [`Peanut`]: the method (documented in `docs/METHOD.md`).
//! - [`LoraConfig`] / [`Lora`]: the baseline.
//! - [`AdaptedLinear`]: a frozen `Linear` plus adapters; merge / unmerge.
//! - [`io`]: adapter files, in this crate's format and in Hugging Face peft's.
#![warn(missing_docs)]

pub mod activation;
pub mod adapted;
pub mod adapter;
pub mod config;
pub mod error;
pub mod init;
pub mod io;
pub mod lora;
pub mod params;
pub mod peanut;
pub mod precision;
pub mod quant;

pub use activation::Activation;
pub use adapted::{AdaptedLinear, merge_weight};
pub use adapter::Adapter;
pub use config::{AdapterConfig, LoraConfig, OutputInit, PeanutConfig};
pub use error::{FileError, PeanutError, Result};
pub use lora::Lora;
pub use params::count_trainable_params;
pub use peanut::Peanut;
pub use precision::{FrozenStorage, Precision, cast_frozen};
pub use quant::{Quantization, QuantizedWeight};
