//! [`KvCache`]: keys and values of past positions, so each generated token costs one position.

use burn::tensor::{Tensor, backend::Backend};

/// Per-block keys and values (after the rotary embedding) of every position seen so far.
#[derive(Debug, Clone)]
pub struct KvCache<B: Backend> {
    /// `(keys, values)` per block, each `[batch, num_key_value_heads, positions, head_dim]`.
    layers: Vec<Option<(Tensor<B, 4>, Tensor<B, 4>)>>,
}

impl<B: Backend> KvCache<B> {
    /// An empty cache for a model with `num_layers` blocks.
    pub fn new(num_layers: usize) -> Self {
        Self {
            layers: vec![None; num_layers],
        }
    }

    /// Number of cached positions.
    pub fn len(&self) -> usize {
        self.layers
            .first()
            .and_then(Option::as_ref)
            .map_or(0, |(keys, _)| keys.dims()[2])
    }

    /// Whether nothing is cached yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends the new positions of block `layer` and returns all keys and values so far.
    ///
    /// # Shapes
    /// - keys, values: `[batch, kv_heads, new, head_dim]`
    /// - output: `[batch, kv_heads, cached + new, head_dim]` each
    pub fn append(
        &mut self,
        layer: usize,
        keys: Tensor<B, 4>,
        values: Tensor<B, 4>,
    ) -> (Tensor<B, 4>, Tensor<B, 4>) {
        let all = match self.layers[layer].take() {
            None => (keys, values),
            Some((past_keys, past_values)) => (
                Tensor::cat(vec![past_keys, keys], 2),
                Tensor::cat(vec![past_values, values], 2),
            ),
        };
        self.layers[layer] = Some(all.clone());
        all
    }
}
