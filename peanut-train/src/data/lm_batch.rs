//! Causal-LM batches: tokenized examples padded on the right, with labels that ignore the
//! prompt and the padding (`-100`, as PyTorch's `ignore_index`).

use std::sync::Arc;

use burn::data::dataloader::batcher::Batcher;
use burn::tensor::{Int, Tensor, TensorData, backend::Backend};

use super::SampleRef;
use super::instruct::Tokenized;

/// The label of a position that carries no loss (prompt or padding), as in transformers.
pub const IGNORE_INDEX: i64 = -100;

/// Padded token ids and labels of a batch, on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Collated {
    /// Examples in the batch.
    pub batch: usize,
    /// The longest example's length; shorter ones are padded on the right.
    pub len: usize,
    /// `[batch, len]` row-major token ids.
    pub input_ids: Vec<i64>,
    /// `[batch, len]` row-major labels: the token id where the loss applies,
    /// [`IGNORE_INDEX`] on the prompt and the padding. Label `t` is predicted from positions
    /// `..t` (the shift happens in the loss).
    pub labels: Vec<i64>,
    /// Indices into the `[batch · (len − 1)]` flattened shifted logits whose next token carries
    /// loss, in order.
    pub positions: Vec<i64>,
    /// The token each of `positions` must predict.
    pub targets: Vec<i64>,
    /// Tokens in the batch, padding excluded.
    pub tokens: usize,
}

/// Pads `examples` to the longest with `pad_id` and builds the labels.
pub fn collate(examples: &[&Tokenized], pad_id: u32) -> Collated {
    let batch = examples.len();
    let len = examples
        .iter()
        .map(|e| e.input_ids.len())
        .max()
        .unwrap_or(0);
    let mut input_ids = vec![i64::from(pad_id); batch * len];
    let mut labels = vec![IGNORE_INDEX; batch * len];
    for (row, example) in examples.iter().enumerate() {
        for (t, (&id, &loss)) in example.input_ids.iter().zip(&example.loss_mask).enumerate() {
            input_ids[row * len + t] = i64::from(id);
            if loss {
                labels[row * len + t] = i64::from(id);
            }
        }
    }
    let shifted = len.saturating_sub(1);
    let (positions, targets) = (0..batch)
        .flat_map(|row| (0..shifted).map(move |t| (row, t)))
        .filter_map(|(row, t)| {
            let label = labels[row * len + t + 1];
            (label != IGNORE_INDEX).then_some(((row * shifted + t) as i64, label))
        })
        .unzip();
    Collated {
        batch,
        len,
        input_ids,
        labels,
        positions,
        targets,
        tokens: examples.iter().map(|e| e.input_ids.len()).sum(),
    }
}

/// A causal-LM batch on a device.
#[derive(Debug, Clone)]
pub struct LmBatch<B: Backend> {
    /// Token ids, padded on the right. Shape: `[batch, len]`.
    pub input_ids: Tensor<B, 2, Int>,
    /// Labels aligned with `input_ids`, [`IGNORE_INDEX`] where no loss applies.
    /// Shape: `[batch, len]`.
    pub labels: Tensor<B, 2, Int>,
    /// Rows of the flattened shifted logits `[batch · (len − 1), vocab]` that carry loss.
    /// Shape: `[targets]`.
    pub positions: Tensor<B, 1, Int>,
    /// The next token at each of `positions`. Shape: `[targets]`.
    pub targets: Tensor<B, 1, Int>,
    /// Tokens in the batch, padding excluded.
    pub tokens: usize,
}

impl Collated {
    /// The batch on `device`.
    pub fn to_device<B: Backend>(self, device: &B::Device) -> LmBatch<B> {
        let shape = [self.batch, self.len];
        let count = self.targets.len();
        LmBatch {
            input_ids: Tensor::from_data(TensorData::new(self.input_ids, shape), device),
            labels: Tensor::from_data(TensorData::new(self.labels, shape), device),
            positions: Tensor::from_data(TensorData::new(self.positions, [count]), device),
            targets: Tensor::from_data(TensorData::new(self.targets, [count]), device),
            tokens: self.tokens,
        }
    }
}

/// Batches tokenized examples for burn's data loader (items are [`SampleRef`]s from an
/// [`EpochOrder`](super::EpochOrder), so the order is seeded and resumable).
#[derive(Debug, Clone)]
pub struct LmBatcher {
    examples: Arc<[Tokenized]>,
    pad_id: u32,
}

impl LmBatcher {
    /// A batcher over `examples`, padding with `pad_id` (any id: padding sits after the last
    /// real token, where causal attention never looks back at it, and carries no loss).
    pub fn new(examples: Arc<[Tokenized]>, pad_id: u32) -> Self {
        Self { examples, pad_id }
    }
}

impl<B: Backend> Batcher<B, SampleRef, LmBatch<B>> for LmBatcher {
    fn batch(&self, items: Vec<SampleRef>, device: &B::Device) -> LmBatch<B> {
        let examples: Vec<&Tokenized> = items.iter().map(|i| &self.examples[i.index]).collect();
        collate(&examples, self.pad_id).to_device(device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pads_right_and_ignores_prompt_and_padding() {
        let a = Tokenized {
            input_ids: vec![5, 6, 7, 8],
            loss_mask: vec![false, false, true, true],
        };
        let b = Tokenized {
            input_ids: vec![9, 10, 11],
            loss_mask: vec![false, true, true],
        };
        let c = collate(&[&a, &b], 0);
        assert_eq!((c.batch, c.len, c.tokens), (2, 4, 7));
        assert_eq!(c.input_ids, [5, 6, 7, 8, 9, 10, 11, 0]);
        assert_eq!(c.labels, [-100, -100, 7, 8, -100, 10, 11, -100]);
        // Shifted rows of 3: row 0 predicts 7 at t=1 and 8 at t=2; row 1 predicts 10, 11.
        assert_eq!(c.positions, [1, 2, 3, 4]);
        assert_eq!(c.targets, [7, 8, 10, 11]);
    }
}
