//! [`LlamaConfig`]: hyper-parameters of a LLaMA-style decoder, named as in `config.json`.

use std::path::Path;

use burn::config::Config;
use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result};
use peanut::io::read_json;

/// The `architectures` this model loads (same tensors, different config).
pub const LLAMA_ARCHITECTURES: &[&str] = &["LlamaForCausalLM", "Qwen2ForCausalLM"];

/// How rotary frequencies are rescaled for long contexts (`rope_type` of `rope_parameters`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "rope_type", rename_all = "snake_case")]
pub enum RopeScaling {
    /// Llama 3.x: low frequencies divided by `factor`, high ones kept, a smooth blend between.
    Llama3 {
        /// Divisor of the low frequencies.
        factor: f64,
        /// Wavelengths above `original_max_position_embeddings / low_freq_factor` are scaled.
        low_freq_factor: f64,
        /// Wavelengths below `original_max_position_embeddings / high_freq_factor` are kept.
        high_freq_factor: f64,
        /// The pre-training context length.
        original_max_position_embeddings: usize,
    },
    /// Every frequency divided by `factor` (position interpolation).
    Linear {
        /// The divisor.
        factor: f64,
    },
}

/// Configuration of a [`Llama`](crate::llama::Llama); fields as in transformers' `LlamaConfig`
/// (plus `qkv_bias` for Qwen2, whose q/k/v projections carry biases).
#[derive(Config, Debug, PartialEq)]
pub struct LlamaConfig {
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Width `d_model` of the residual stream.
    pub hidden_size: usize,
    /// Width of the SwiGLU hidden layer.
    pub intermediate_size: usize,
    /// Number of decoder blocks.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads (grouped-query attention); divides `num_attention_heads`.
    pub num_key_value_heads: usize,
    /// Width of one head; `hidden_size / num_attention_heads` when `None`.
    #[config(default = "None")]
    pub head_dim: Option<usize>,
    /// ε of every RMS norm.
    #[config(default = 1e-6)]
    pub rms_norm_eps: f64,
    /// Base θ of the rotary frequencies.
    #[config(default = 10000.0)]
    pub rope_theta: f64,
    /// Frequency rescaling, if any.
    #[config(default = "None")]
    pub rope_scaling: Option<RopeScaling>,
    /// Longest sequence the model is meant for.
    #[config(default = 2048)]
    pub max_position_embeddings: usize,
    /// Whether the output head reuses the token embeddings.
    #[config(default = false)]
    pub tie_word_embeddings: bool,
    /// Biases on q, k, v and o (Llama's `attention_bias`).
    #[config(default = false)]
    pub attention_bias: bool,
    /// Biases on q, k and v only (Qwen2).
    #[config(default = false)]
    pub qkv_bias: bool,
    /// Biases on the MLP's linears.
    #[config(default = false)]
    pub mlp_bias: bool,
    /// Id of the beginning-of-sequence token.
    #[config(default = "None")]
    pub bos_token_id: Option<u32>,
    /// Id of the end-of-sequence token.
    #[config(default = "None")]
    pub eos_token_id: Option<u32>,
    /// The architecture written on export.
    #[config(default = "String::from(\"LlamaForCausalLM\")")]
    pub architecture: String,
}

impl LlamaConfig {
    /// Llama-2-7B.
    pub fn llama2_7b() -> Self {
        Self::new(32000, 4096, 11008, 32, 32, 32)
            .with_rms_norm_eps(1e-5)
            .with_max_position_embeddings(4096)
            .with_bos_token_id(Some(1))
            .with_eos_token_id(Some(2))
    }

    /// Llama-3-8B.
    pub fn llama3_8b() -> Self {
        Self::new(128256, 4096, 14336, 32, 32, 8)
            .with_rms_norm_eps(1e-5)
            .with_rope_theta(500000.0)
            .with_max_position_embeddings(8192)
            .with_bos_token_id(Some(128000))
            .with_eos_token_id(Some(128001))
    }

    /// Llama-3.2-1B (tied embeddings, llama3 rope scaling).
    pub fn llama3_2_1b() -> Self {
        Self::new(128256, 2048, 8192, 16, 32, 8)
            .with_head_dim(Some(64))
            .with_rms_norm_eps(1e-5)
            .with_rope_theta(500000.0)
            .with_rope_scaling(Some(RopeScaling::Llama3 {
                factor: 32.0,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_max_position_embeddings: 8192,
            }))
            .with_max_position_embeddings(131072)
            .with_tie_word_embeddings(true)
            .with_bos_token_id(Some(128000))
            .with_eos_token_id(Some(128001))
    }

    /// TinyLlama-1.1B.
    pub fn tinyllama_1_1b() -> Self {
        Self::new(32000, 2048, 5632, 22, 32, 4)
            .with_rms_norm_eps(1e-5)
            .with_bos_token_id(Some(1))
            .with_eos_token_id(Some(2))
    }

    /// A tiny decoder for tests: vocabulary 64, width 32, 2 blocks, 4 query and 2 key/value heads.
    pub fn tiny() -> Self {
        Self::new(64, 32, 48, 2, 4, 2).with_max_position_embeddings(64)
    }

    /// Width of one head.
    pub fn head_dim(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }

    /// Checks that the sizes fit together.
    pub fn validate(&self) -> Result<()> {
        let invalid = |field, reason| {
            Err(ModelError::InvalidConfig {
                path: None,
                field,
                reason,
            })
        };
        if self.num_attention_heads == 0 || self.num_key_value_heads == 0 {
            return invalid(
                "num_attention_heads",
                "and num_key_value_heads must be positive".into(),
            );
        }
        if !self
            .num_attention_heads
            .is_multiple_of(self.num_key_value_heads)
        {
            return invalid(
                "num_key_value_heads",
                format!(
                    "({}) must divide num_attention_heads ({})",
                    self.num_key_value_heads, self.num_attention_heads
                ),
            );
        }
        if !self.head_dim().is_multiple_of(2) || self.head_dim() == 0 {
            return invalid(
                "head_dim",
                format!("must be even and positive, got {}", self.head_dim()),
            );
        }
        if self.vocab_size == 0 || self.hidden_size == 0 {
            return invalid("vocab_size", "and hidden_size must be positive".into());
        }
        Ok(())
    }

    /// Reads a transformers `config.json` (`LlamaForCausalLM` or `Qwen2ForCausalLM`), in both
    /// the current (`rope_parameters`) and the older (`rope_theta` + `rope_scaling`) spelling.
    pub fn from_hf_file(path: &Path) -> Result<Self> {
        // The architecture first: a config of another model fails on it, not on a field.
        let raw: serde_json::Value = read_json(path)?;
        let architectures: Vec<String> = raw
            .get("architectures")
            .and_then(|a| serde_json::from_value(a.clone()).ok())
            .unwrap_or_default();
        let Some(architecture) = architectures
            .iter()
            .find(|a| LLAMA_ARCHITECTURES.contains(&a.as_str()))
        else {
            return Err(ModelError::UnsupportedArchitecture {
                path: path.to_path_buf(),
                found: architectures,
                supported: LLAMA_ARCHITECTURES,
            });
        };
        let file: HfLlamaConfig =
            serde_json::from_value(raw).map_err(|source| peanut::FileError::json(path, source))?;
        let is_qwen2 = architecture == "Qwen2ForCausalLM";
        let invalid = |field, reason: String| ModelError::InvalidConfig {
            path: Some(path.to_path_buf()),
            field,
            reason,
        };
        let rope = file
            .rope_parameters
            .clone()
            .or(file.rope_scaling.clone())
            .unwrap_or_default();
        let rope_theta = rope.rope_theta.or(file.rope_theta).unwrap_or(10000.0);
        let rope_type = rope
            .rope_type
            .or(rope.kind)
            .unwrap_or_else(|| "default".into());
        let rope_scaling = match rope_type.as_str() {
            "default" => None,
            "linear" => Some(RopeScaling::Linear {
                factor: rope.factor.ok_or_else(|| {
                    invalid("rope_parameters", "linear scaling needs `factor`".into())
                })?,
            }),
            "llama3" => Some(RopeScaling::Llama3 {
                factor: rope.factor.ok_or_else(|| {
                    invalid("rope_parameters", "llama3 scaling needs `factor`".into())
                })?,
                low_freq_factor: rope.low_freq_factor.unwrap_or(1.0),
                high_freq_factor: rope.high_freq_factor.unwrap_or(4.0),
                original_max_position_embeddings: rope
                    .original_max_position_embeddings
                    .unwrap_or(8192),
            }),
            other => {
                return Err(invalid(
                    "rope_type",
                    format!("`{other}` is not implemented (default, linear, llama3 are)"),
                ));
            }
        };
        if file.hidden_act.as_deref().is_some_and(|act| act != "silu") {
            return Err(invalid(
                "hidden_act",
                format!(
                    "`{}`: only SwiGLU with silu is implemented",
                    file.hidden_act.unwrap_or_default()
                ),
            ));
        }
        let config = Self::new(
            file.vocab_size,
            file.hidden_size,
            file.intermediate_size,
            file.num_hidden_layers,
            file.num_attention_heads,
            file.num_key_value_heads.unwrap_or(file.num_attention_heads),
        )
        .with_head_dim(file.head_dim)
        .with_rms_norm_eps(file.rms_norm_eps.unwrap_or(1e-6))
        .with_rope_theta(rope_theta)
        .with_rope_scaling(rope_scaling)
        .with_max_position_embeddings(file.max_position_embeddings.unwrap_or(2048))
        .with_tie_word_embeddings(file.tie_word_embeddings.unwrap_or(false))
        .with_attention_bias(file.attention_bias.unwrap_or(false))
        .with_qkv_bias(is_qwen2)
        .with_mlp_bias(file.mlp_bias.unwrap_or(false))
        .with_bos_token_id(file.bos_token_id.as_ref().and_then(first_id))
        .with_eos_token_id(file.eos_token_id.as_ref().and_then(first_id))
        .with_architecture(architecture.clone());
        config.validate().map_err(|err| match err {
            ModelError::InvalidConfig { field, reason, .. } => invalid(field, reason),
            other => other,
        })?;
        Ok(config)
    }

    /// The `config.json` transformers needs to load this model.
    pub fn to_hf_json(&self) -> serde_json::Value {
        let mut rope = serde_json::json!({ "rope_theta": self.rope_theta, "rope_type": "default" });
        match self.rope_scaling {
            None => {}
            Some(RopeScaling::Linear { factor }) => {
                rope["rope_type"] = "linear".into();
                rope["factor"] = factor.into();
            }
            Some(RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            }) => {
                rope["rope_type"] = "llama3".into();
                rope["factor"] = factor.into();
                rope["low_freq_factor"] = low_freq_factor.into();
                rope["high_freq_factor"] = high_freq_factor.into();
                rope["original_max_position_embeddings"] = original_max_position_embeddings.into();
            }
        }
        let model_type = if self.architecture == "Qwen2ForCausalLM" {
            "qwen2"
        } else {
            "llama"
        };
        serde_json::json!({
            "architectures": [self.architecture],
            "model_type": model_type,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim(),
            "hidden_act": "silu",
            "rms_norm_eps": self.rms_norm_eps,
            "rope_parameters": rope,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "attention_bias": self.attention_bias,
            "mlp_bias": self.mlp_bias,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
            "dtype": "float32",
        })
    }
}

fn first_id(value: &serde_json::Value) -> Option<u32> {
    match value {
        serde_json::Value::Number(n) => n.as_u64().map(|n| n as u32),
        serde_json::Value::Array(items) => items.first().and_then(first_id),
        _ => None,
    }
}

#[derive(Deserialize, Default, Clone)]
struct HfRope {
    rope_type: Option<String>,
    /// Older spelling of `rope_type` inside `rope_scaling`.
    #[serde(rename = "type")]
    kind: Option<String>,
    rope_theta: Option<f64>,
    factor: Option<f64>,
    low_freq_factor: Option<f64>,
    high_freq_factor: Option<f64>,
    original_max_position_embeddings: Option<usize>,
}

#[derive(Deserialize)]
struct HfLlamaConfig {
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    hidden_act: Option<String>,
    rms_norm_eps: Option<f64>,
    rope_theta: Option<f64>,
    rope_scaling: Option<HfRope>,
    rope_parameters: Option<HfRope>,
    max_position_embeddings: Option<usize>,
    tie_word_embeddings: Option<bool>,
    attention_bias: Option<bool>,
    mlp_bias: Option<bool>,
    bos_token_id: Option<serde_json::Value>,
    eos_token_id: Option<serde_json::Value>,
}
