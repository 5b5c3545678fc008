//! [`CausalLm`]: a [`Llama`] wrapped for burn's Learner — next-token cross-entropy on the
//! response tokens, the guard against non-finite losses, gradient accumulation as a mean,
//! global-norm clipping.

use burn::module::{AutodiffModule, Module};
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::{GradientsParams, Optimizer};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{ElementConversion, Int, Tensor};
use burn::train::ItemLazy;
use burn::train::metric::{Adaptor, LossInput};
use burn::train::{InferenceStep, TrainOutput, TrainStep};
use peanut_models::Llama;

use super::classifier::{LossGuard, clip_global_norm};
use super::metrics::{TokenCount, TokenPredictions};
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

impl<B: Backend> Adaptor<TokenCount> for LmOutput<B> {
    fn adapt(&self) -> TokenCount {
        TokenCount(self.tokens)
    }
}

/// A [`Llama`] ready for burn's Learner.
#[derive(Module, Debug)]
pub struct CausalLm<B: Backend> {
    /// The model.
    pub model: Llama<B>,
    #[module(skip)]
    guard: LossGuard,
    #[module(skip)]
    clip_grad_norm: Option<f32>,
    #[module(skip)]
    grad_accumulation: usize,
}

impl<B: Backend> CausalLm<B> {
    /// Wraps `model`; `guard` watches its losses. Gradients of `grad_accumulation` passes are
    /// averaged (as transformers' Trainer does) and their global norm clipped to
    /// `clip_grad_norm`.
    pub fn new(
        model: Llama<B>,
        guard: LossGuard,
        clip_grad_norm: Option<f32>,
        grad_accumulation: usize,
    ) -> Self {
        Self {
            model,
            guard,
            clip_grad_norm,
            grad_accumulation: grad_accumulation.max(1),
        }
    }

    /// Next-token cross-entropy of a batch, averaged over the tokens that carry loss (the
    /// response; prompt and padding are ignored).
    pub fn forward_loss(&self, batch: LmBatch<B>) -> LmOutput<B> {
        let [rows, len] = batch.input_ids.dims();
        let logits = self.model.forward(batch.input_ids, None);
        let vocab = logits.dims()[2];
        let shifted = logits
            .narrow(1, 0, len - 1)
            .reshape([rows * (len - 1), vocab]);
        let predicted = batch.targets.dims()[0];
        let picked = shifted.select(0, batch.positions);
        let loss = CrossEntropyLossConfig::new()
            .init(&picked.device())
            .forward(picked.clone(), batch.targets.clone());
        let correct = picked
            .argmax(1)
            .reshape([predicted])
            .equal(batch.targets)
            .int()
            .sum();
        LmOutput {
            loss,
            correct,
            predicted,
            tokens: batch.tokens,
        }
    }
}

impl<B: AutodiffBackend> TrainStep for CausalLm<B> {
    type Input = LmBatch<B>;
    type Output = LmOutput<B>;

    fn step(&self, batch: LmBatch<B>) -> TrainOutput<LmOutput<B>> {
        let output = self.forward_loss(batch);
        let loss: f32 = output.loss.clone().into_scalar().elem();
        if !self.guard.check(loss) {
            return TrainOutput {
                grads: GradientsParams::new(),
                item: output,
            };
        }
        let scaled = if self.grad_accumulation > 1 {
            output.loss.clone() / self.grad_accumulation as f32
        } else {
            output.loss.clone()
        };
        let grads = scaled.backward();
        TrainOutput::new(self, grads, output)
    }

    fn optimize<B2, O>(self, optim: &mut O, lr: f64, mut grads: GradientsParams) -> Self
    where
        B2: AutodiffBackend,
        O: Optimizer<Self, B2>,
        Self: AutodiffModule<B2>,
    {
        if let Some(max_norm) = self.clip_grad_norm {
            clip_global_norm::<B, _>(&self, &mut grads, max_norm);
        }
        if grads.is_empty() {
            self
        } else {
            optim.step(lr, self, grads)
        }
    }
}

impl<B: Backend> InferenceStep for CausalLm<B> {
    type Input = LmBatch<B>;
    type Output = LmOutput<B>;

    fn step(&self, batch: LmBatch<B>) -> LmOutput<B> {
        self.forward_loss(batch)
    }
}
