//! [`LlamaMlp`]: the SwiGLU feed-forward block.

use burn::module::Module;
use burn::tensor::{Tensor, backend::Backend};
use peanut::AdaptedLinear;

use super::config::LlamaConfig;
use crate::error::Result;
use crate::ops;
use crate::source::Source;

/// `down_proj(silu(gate_proj(x)) ⊙ up_proj(x))`, with `gate_proj`, `up_proj:
/// [hidden, intermediate]` and `down_proj: [intermediate, hidden]`.
#[derive(Module, Debug)]
pub struct LlamaMlp<B: Backend> {
    /// Gate projection.
    pub gate_proj: AdaptedLinear<B>,
    /// Up projection.
    pub up_proj: AdaptedLinear<B>,
    /// Down projection.
    pub down_proj: AdaptedLinear<B>,
}

impl<B: Backend> LlamaMlp<B> {
    pub(crate) fn build(
        config: &LlamaConfig,
        prefix: &str,
        source: &mut Source<'_, B>,
    ) -> Result<Self> {
        let d = config.hidden_size;
        let inner = config.intermediate_size;
        let bias = config.mlp_bias;
        Ok(Self {
            gate_proj: source.linear(&format!("{prefix}.gate_proj"), d, inner, bias)?,
            up_proj: source.linear(&format!("{prefix}.up_proj"), d, inner, bias)?,
            down_proj: source.linear(&format!("{prefix}.down_proj"), inner, d, bias)?,
        })
    }

    /// Applies the block.
    ///
    /// # Shapes
    /// - x: `[..., hidden]`
    /// - output: `[..., hidden]`
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let gate = self.gate_proj.forward(x.clone());
        self.down_proj
            .forward(ops::swiglu(gate, self.up_proj.forward(x)))
    }
}
