//! [`VitLayer`]: one pre-norm encoder block.

use burn::module::Module;
use burn::tensor::{Tensor, backend::Backend};
use peanut::{Activation, AdaptedLinear};

use super::attention::VitAttention;
use super::config::VitConfig;
use crate::error::Result;
use crate::layer_norm::LayerNorm;
use crate::source::{Init, Source};

/// The MLP's first linear, `[hidden_size, intermediate_size]`.
#[derive(Module, Debug)]
pub struct VitIntermediate<B: Backend> {
    /// The linear (with bias).
    pub dense: AdaptedLinear<B>,
}

/// The MLP's second linear, `[intermediate_size, hidden_size]`.
#[derive(Module, Debug)]
pub struct VitOutput<B: Backend> {
    /// The linear (with bias).
    pub dense: AdaptedLinear<B>,
}

/// A pre-norm transformer block:
/// `h = x + attention(layernorm_before(x))`,
/// `y = h + output.dense(σ(intermediate.dense(layernorm_after(h))))`.
#[derive(Module, Debug)]
pub struct VitLayer<B: Backend> {
    /// Self-attention.
    pub attention: VitAttention<B>,
    /// MLP up-projection.
    pub intermediate: VitIntermediate<B>,
    /// MLP down-projection.
    pub output: VitOutput<B>,
    /// Norm before attention.
    pub layernorm_before: LayerNorm<B>,
    /// Norm before the MLP.
    pub layernorm_after: LayerNorm<B>,
    /// The MLP activation `σ`.
    #[module(skip)]
    pub activation: Activation,
}

impl<B: Backend> VitLayer<B> {
    pub(crate) fn build(
        config: &VitConfig,
        prefix: &str,
        source: &mut Source<'_, B>,
    ) -> Result<Self> {
        let d = config.hidden_size;
        let inner = config.intermediate_size;
        Ok(Self {
            attention: VitAttention::build(config, &format!("{prefix}.attention"), source)?,
            intermediate: VitIntermediate {
                dense: source.linear(&format!("{prefix}.intermediate.dense"), d, inner, true)?,
            },
            output: VitOutput {
                dense: source.linear(&format!("{prefix}.output.dense"), inner, d, true)?,
            },
            layernorm_before: layer_norm(config, &format!("{prefix}.layernorm_before"), source)?,
            layernorm_after: layer_norm(config, &format!("{prefix}.layernorm_after"), source)?,
            activation: config.activation()?,
        })
    }

    /// Runs the block.
    ///
    /// # Shapes
    /// - x: `[batch, tokens, hidden_size]`
    /// - output: `[batch, tokens, hidden_size]`
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let h = x.clone() + self.attention.forward(self.layernorm_before.forward(x));
        let inner = self
            .intermediate
            .dense
            .forward(self.layernorm_after.forward(h.clone()));
        h + self.output.dense.forward(self.activation.forward(inner))
    }
}

/// A frozen layer norm `prefix.{weight,bias}`.
pub(crate) fn layer_norm<B: Backend>(
    config: &VitConfig,
    prefix: &str,
    source: &mut Source<'_, B>,
) -> Result<LayerNorm<B>> {
    let d = config.hidden_size;
    Ok(LayerNorm {
        weight: source.param(&format!("{prefix}.weight"), [d], Init::Ones)?,
        bias: source.param(&format!("{prefix}.bias"), [d], Init::Zeros)?,
        epsilon: config.layer_norm_eps,
    })
}
