//! Causal-LM instruction tuning as an [`Objective`]: a [`Llama`]'s next-token cross-entropy on
//! the response tokens, and what the metrics read of it ([`LmOutput`]).

use burn::module::AutodiffModule;
use burn::optim::GradientsParams;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{ElementConversion, Int, Tensor};
use burn::train::ItemLazy;
use burn::train::metric::{Adaptor, LossInput};
use peanut_models::Llama;

use super::guard::LossValue;
use super::metrics::{TokenCount, TokenPredictions};
use super::step::{Objective, Trainee, divided};
use crate::data::LmBatch;

/// What one causal-LM step reports to the metrics.
#[derive(Debug)]
pub struct LmOutput<B: Backend> {
    /// Mean cross-entropy over the tokens that carry loss. Shape: `[1]`.
    pub loss: Tensor<B, 1>,
    /// How many of those tokens the model predicts (argmax) right. Shape: `[1]`.
    pub correct: Tensor<B, 1, Int>,
    /// Tokens that carry loss.
    pub predicted: usize,
    /// Tokens in the batch, padding excluded.
    pub tokens: usize,
}

impl<B: Backend> ItemLazy for LmOutput<B> {
    type ItemSync = Self;

    fn sync(self) -> Self {
        self
    }
}

impl<B: Backend> Adaptor<LossInput<B>> for LmOutput<B> {
    fn adapt(&self) -> LossInput<B> {
        LossInput::new(self.loss.clone())
    }
}

impl<B: Backend> Adaptor<TokenPredictions> for LmOutput<B> {
    fn adapt(&self) -> TokenPredictions {
        TokenPredictions {
            correct: self.correct.clone().into_scalar().elem::<i64>() as usize,
            total: self.predicted,
        }
    }
}

impl<B: Backend> Adaptor<LossValue> for LmOutput<B> {
    fn adapt(&self) -> LossValue {
        LossValue::of(&self.loss)
    }
}

impl<B: Backend> Adaptor<TokenCount> for LmOutput<B> {
    fn adapt(&self) -> TokenCount {
        TokenCount(self.tokens)
    }
}

/// A [`Llama`] ready for burn's Learner.
pub type CausalLm<B> = Trainee<B, Llama<B>>;

/// Next-token cross-entropy of a batch, averaged over the tokens that carry loss (the
/// response; prompt and padding are ignored).
pub fn forward_loss<B: Backend>(model: &Llama<B>, batch: LmBatch<B>) -> LmOutput<B> {
    let hidden = model.hidden(batch.input_ids.clone());
    loss_of_hidden(model, hidden, batch)
}

/// [`forward_loss`] from the final hidden states of `batch.input_ids` ([`Llama::hidden`]).
fn loss_of_hidden<B: Backend>(
    model: &Llama<B>,
    hidden: Tensor<B, 3>,
    batch: LmBatch<B>,
) -> LmOutput<B> {
    let [rows, len, width] = hidden.dims();
    // The head runs on the rows that carry loss only, and its logits are never held whole
    // (`Llama::head_loss`).
    let shifted = hidden
        .narrow(1, 0, len - 1)
        .reshape([rows * (len - 1), width]);
    let predicted = batch.targets.dims()[0];
    let picked = shifted.select(0, batch.positions);
    let (loss, argmax) = model.head_loss(picked, batch.targets.clone());
    let correct = argmax.equal(batch.targets).int().sum();
    LmOutput {
        loss,
        correct,
        predicted,
        tokens: batch.tokens,
    }
}

impl<B: Backend> Objective<B> for Llama<B> {
    type Batch = LmBatch<B>;
    type Output = LmOutput<B>;

    fn objective(&self, batch: LmBatch<B>) -> (Tensor<B, 1>, LmOutput<B>) {
        let output = forward_loss(self, batch);
        (output.loss.clone(), output)
    }

    /// [`Llama::recompute_backward`]: every decoder layer is recomputed in the backward pass.
    fn recompute_grads(&self, batch: LmBatch<B>, divisor: usize) -> (GradientsParams, LmOutput<B>)
    where
        B: AutodiffBackend,
        Self: AutodiffModule<B>,
    {
        let ids = batch.input_ids.clone();
        let (output, grads) = self.recompute_backward(ids, |hidden| {
            let output = loss_of_hidden(self, hidden, batch);
            (divided(output.loss.clone(), divisor), output)
        });
        (grads, output)
    }

    fn save_peft(&self, dir: &std::path::Path) -> crate::error::Result<()> {
        super::step::check_peft_adapters(self)?;
        peanut_models::AdaptableModel::save_adapters_peft(self, dir, None)?;
        Ok(())
    }
}
