//! [`LlamaAttention`]: grouped-query causal self-attention with rotary positions.

use burn::module::Module;
use burn::tensor::{Bool, Tensor, TensorData, backend::Backend};
use peanut::AdaptedLinear;

use super::cache::KvCache;
use super::config::LlamaConfig;
use super::rope::apply_rotary;
use crate::error::Result;
use crate::ops;
use crate::source::Source;

/// Self-attention with `num_attention_heads` query heads sharing `num_key_value_heads`
/// key/value heads (each key/value head serves a consecutive group of query heads).
///
/// `q_proj: [hidden, heads·head_dim]`, `k_proj`/`v_proj: [hidden, kv_heads·head_dim]`,
/// `o_proj: [heads·head_dim, hidden]`.
#[derive(Module, Debug)]
pub struct LlamaAttention<B: Backend> {
    /// Query projection.
    pub q_proj: AdaptedLinear<B>,
    /// Key projection.
    pub k_proj: AdaptedLinear<B>,
    /// Value projection.
    pub v_proj: AdaptedLinear<B>,
    /// Output projection.
    pub o_proj: AdaptedLinear<B>,
    /// Query heads.
    #[module(skip)]
    pub num_heads: usize,
    /// Key/value heads.
    #[module(skip)]
    pub num_key_value_heads: usize,
    /// Width of one head.
    #[module(skip)]
    pub head_dim: usize,
}

impl<B: Backend> LlamaAttention<B> {
    pub(crate) fn build(
        config: &LlamaConfig,
        prefix: &str,
        source: &mut Source<'_, B>,
    ) -> Result<Self> {
        let d = config.hidden_size;
        let head_dim = config.head_dim();
        let q = config.num_attention_heads * head_dim;
        let kv = config.num_key_value_heads * head_dim;
        let qkv_bias = config.attention_bias || config.qkv_bias;
        let mut linear = |name: &str, d_in, d_out, bias| {
            source.linear(&format!("{prefix}.{name}"), d_in, d_out, bias)
        };
        Ok(Self {
            q_proj: linear("q_proj", d, q, qkv_bias)?,
            k_proj: linear("k_proj", d, kv, qkv_bias)?,
            v_proj: linear("v_proj", d, kv, qkv_bias)?,
            o_proj: linear("o_proj", q, d, config.attention_bias)?,
            num_heads: config.num_attention_heads,
            num_key_value_heads: config.num_key_value_heads,
            head_dim,
        })
    }

    /// Attends each new position to the earlier ones `mask` leaves visible ([`attention_mask`]:
    /// every earlier one and itself, padding excepted).
    ///
    /// `cache`, when given, holds block `layer`'s past keys/values and receives the new ones;
    /// the new positions then start at `cache.len()`, which `cos`/`sin` must match.
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
        let [batch, len, _] = x.dims();
        let head_dim = self.head_dim;
        let split = |t: Tensor<B, 3>, heads: usize| {
            t.reshape([batch, len, heads, head_dim]).swap_dims(1, 2)
        };
        let q = split(self.q_proj.forward(x.clone()), self.num_heads);
        let k = split(self.k_proj.forward(x.clone()), self.num_key_value_heads);
        let v = split(self.v_proj.forward(x), self.num_key_value_heads);
        let q = apply_rotary(q, cos, sin);
        let k = apply_rotary(k, cos, sin);
        let (k, v) = match cache {
            Some((cache, layer)) => cache.append(layer, k, v),
            None => (k, v),
        };
        // Grouped-query attention without copying keys and values for every query head: the
        // `groups` query heads that share a key/value head (consecutive heads) are stacked
        // along the position axis, `[batch, kv_heads, groups·len, head_dim]`, and attend to
        // their shared keys in one product. (Repeating the cached keys and values per query
        // head copied the whole cache every decoding step.)
        let kv_heads = self.num_key_value_heads;
        let groups = self.num_heads / kv_heads;
        let total = k.dims()[2];
        let q = q.reshape([batch, kv_heads, groups * len, head_dim]);
        let mask = if groups > 1 {
            mask.clone().repeat_dim(2, groups)
        } else {
            mask.clone()
        };
        debug_assert_eq!(mask.dims()[3], total);
        let context =
            ops::attention(q, k, v, Some(mask)).reshape([batch, self.num_heads, len, head_dim]);
        let context = context
            .swap_dims(1, 2)
            .reshape([batch, len, self.num_heads * head_dim]);
        self.o_proj.forward(context)
    }
}

/// `true` where a query (one of the last `len` of `total` columns) must not see a key: a later
/// column, or, in a sequence left-padded with `pads[r]` tokens, a padding column. A padding
/// query sees itself only, so that no row of the softmax is empty (its output is never used).
/// No `pads`: one unpadded row.
///
/// # Shapes
/// - output: `[rows, 1, len, total]`, `rows = max(1, pads.len())`
pub fn attention_mask<B: Backend>(
    len: usize,
    total: usize,
    pads: &[usize],
    device: &B::Device,
) -> Tensor<B, 4, Bool> {
    let offset = total - len;
    let rows = pads.len().max(1);
    let values: Vec<bool> = (0..rows)
        .flat_map(|r| {
            let pad = pads.get(r).copied().unwrap_or(0);
            (0..len).flat_map(move |i| {
                let query = offset + i;
                (0..total).map(move |key| key > query || (key < pad && key != query))
            })
        })
        .collect();
    Tensor::from_data(TensorData::new(values, [rows, 1, len, total]), device)
}
