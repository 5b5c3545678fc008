//! ViT self-attention with transformers' module names: `attention.attention.{query,key,value}`
//! and `attention.output.dense`.

use burn::module::Module;
use burn::tensor::{Tensor, backend::Backend};
use peanut::AdaptedLinear;

use super::config::VitConfig;
use crate::error::Result;
use crate::ops;
use crate::source::Source;

/// The query, key and value projections (`[hidden_size, hidden_size]` each, with bias).
#[derive(Module, Debug)]
pub struct VitSelfAttention<B: Backend> {
    /// Query projection.
    pub query: AdaptedLinear<B>,
    /// Key projection.
    pub key: AdaptedLinear<B>,
    /// Value projection.
    pub value: AdaptedLinear<B>,
    /// Number of heads.
    #[module(skip)]
    pub num_heads: usize,
}

/// The projection after attention.
#[derive(Module, Debug)]
pub struct VitSelfOutput<B: Backend> {
    /// `[hidden_size, hidden_size]`, with bias.
    pub dense: AdaptedLinear<B>,
}

/// Multi-head self-attention: `softmax(Q·Kᵀ/√d_head)·V`, heads concatenated, then
/// `output.dense`.
#[derive(Module, Debug)]
pub struct VitAttention<B: Backend> {
    /// Query, key and value.
    pub attention: VitSelfAttention<B>,
    /// The output projection.
    pub output: VitSelfOutput<B>,
}

impl<B: Backend> VitAttention<B> {
    pub(crate) fn build(
        config: &VitConfig,
        prefix: &str,
        source: &mut Source<'_, B>,
    ) -> Result<Self> {
        let d = config.hidden_size;
        let qkv = |source: &mut Source<'_, B>, name: &str| {
            source.linear(&format!("{prefix}.attention.{name}"), d, d, config.qkv_bias)
        };
        Ok(Self {
            attention: VitSelfAttention {
                query: qkv(source, "query")?,
                key: qkv(source, "key")?,
                value: qkv(source, "value")?,
                num_heads: config.num_attention_heads,
            },
            output: VitSelfOutput {
                dense: source.linear(&format!("{prefix}.output.dense"), d, d, true)?,
            },
        })
    }

    /// Attends every token to every token.
    ///
    /// # Shapes
    /// - x: `[batch, tokens, hidden_size]`
    /// - output: `[batch, tokens, hidden_size]`
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let [batch, tokens, d] = x.dims();
        let heads = self.attention.num_heads;
        let head_dim = d / heads;
        let split = |t: Tensor<B, 3>| t.reshape([batch, tokens, heads, head_dim]).swap_dims(1, 2);
        let q = split(self.attention.query.forward(x.clone()));
        let k = split(self.attention.key.forward(x.clone()));
        let v = split(self.attention.value.forward(x));
        let context = ops::attention(q, k, v, None);
        let context = context.swap_dims(1, 2).reshape([batch, tokens, d]);
        self.output.dense.forward(context)
    }
}
