//! [`LlamaDecoderLayer`]: one pre-norm decoder block.

use burn::module::Module;
use burn::tensor::{Bool, Tensor, backend::Backend};

use super::attention::LlamaAttention;
use super::cache::KvCache;
use super::config::LlamaConfig;
use super::mlp::LlamaMlp;
use crate::error::Result;
use crate::rms_norm::RmsNorm;
use crate::source::{Init, Source};

/// `h = x + self_attn(input_layernorm(x))`, `y = h + mlp(post_attention_layernorm(h))`.
#[derive(Module, Debug)]
pub struct LlamaDecoderLayer<B: Backend> {
    /// Causal self-attention.
    pub self_attn: LlamaAttention<B>,
    /// SwiGLU feed-forward.
    pub mlp: LlamaMlp<B>,
    /// Norm before attention.
    pub input_layernorm: RmsNorm<B>,
    /// Norm before the MLP.
    pub post_attention_layernorm: RmsNorm<B>,
}

impl<B: Backend> LlamaDecoderLayer<B> {
    pub(crate) fn build(
        config: &LlamaConfig,
        prefix: &str,
        source: &mut Source<'_, B>,
    ) -> Result<Self> {
        Ok(Self {
            self_attn: LlamaAttention::build(config, &format!("{prefix}.self_attn"), source)?,
            mlp: LlamaMlp::build(config, &format!("{prefix}.mlp"), source)?,
            input_layernorm: rms_norm(config, &format!("{prefix}.input_layernorm"), source)?,
            post_attention_layernorm: rms_norm(
                config,
                &format!("{prefix}.post_attention_layernorm"),
                source,
            )?,
        })
    }

    /// Runs the block (see [`LlamaAttention::forward`] for `cache`).
    ///
    /// # Shapes
    /// - x: `[batch, len, hidden]`
    /// - cos, sin: `[batch or 1, len, head_dim]`
    /// - mask: `[batch or 1, 1, len, past + len]`
    /// - output: `[batch, len, hidden]`
    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        cos: &Tensor<B, 3>,
        sin: &Tensor<B, 3>,
        mask: &Tensor<B, 4, Bool>,
        cache: Option<(&mut KvCache<B>, usize)>,
    ) -> Tensor<B, 3> {
        let normed = self.input_layernorm.forward(x.clone());
        let attended = self.self_attn.forward(normed, cos, sin, mask, cache);
        let h = x + attended;
        h.clone() + self.mlp.forward(self.post_attention_layernorm.forward(h))
    }
}

/// A frozen RMS norm `prefix.weight`.
pub(crate) fn rms_norm<B: Backend>(
    config: &LlamaConfig,
    prefix: &str,
    source: &mut Source<'_, B>,
) -> Result<RmsNorm<B>> {
    Ok(RmsNorm {
        weight: source.param(
            &format!("{prefix}.weight"),
            [config.hidden_size],
            Init::Ones,
        )?,
        epsilon: config.rms_norm_eps,
    })
}
