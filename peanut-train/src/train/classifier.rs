//! Image classification as an [`Objective`]: a [`Vit`]'s cross-entropy on a batch of images,
//! with the classifier head as its own parameter group.

use burn::module::{AutodiffModule, Module, ModuleVisitor};
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::GradientsParams;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Int, Tensor};
use burn::train::ClassificationOutput;
use peanut_models::Vit;

use std::path::Path;

use peanut_models::AdaptableModel;

use super::step::{Objective, Trainee, check_peft_adapters, divided};
use crate::data::ImageBatch;
use crate::error::Result;

/// A [`Vit`] ready for burn's Learner.
pub type ImageClassifier<B> = Trainee<B, Vit<B>>;

/// Logits and cross-entropy loss of a batch.
pub fn classify<B: Backend>(model: &Vit<B>, batch: ImageBatch<B>) -> ClassificationOutput<B> {
    scored(model.forward(batch.images), batch.targets)
}

/// The cross-entropy of `logits` against `targets`, with both.
fn scored<B: Backend>(logits: Tensor<B, 2>, targets: Tensor<B, 1, Int>) -> ClassificationOutput<B> {
    let loss = CrossEntropyLossConfig::new()
        .init(&logits.device())
        .forward(logits.clone(), targets.clone());
    ClassificationOutput::new(loss, logits, targets)
}

impl<B: Backend> Objective<B> for Vit<B> {
    type Batch = ImageBatch<B>;
    type Output = ClassificationOutput<B>;

    fn objective(&self, batch: ImageBatch<B>) -> (Tensor<B, 1>, ClassificationOutput<B>) {
        let output = classify(self, batch);
        (output.loss.clone(), output)
    }

    /// [`Vit::recompute_backward`]: every encoder block is recomputed in the backward pass.
    fn recompute_grads(
        &self,
        batch: ImageBatch<B>,
        divisor: usize,
    ) -> (GradientsParams, ClassificationOutput<B>)
    where
        B: AutodiffBackend,
        Self: AutodiffModule<B>,
    {
        let targets = batch.targets;
        let (output, grads) = self.recompute_backward(batch.images, |logits| {
            let output = scored(logits, targets);
            (divided(output.loss.clone(), divisor), output)
        });
        (grads, output)
    }

    fn visit_head<V: ModuleVisitor<B>>(&self, visitor: &mut V) {
        self.classifier.visit(visitor);
    }

    fn save_peft(&self, dir: &Path) -> Result<()> {
        check_peft_adapters(self)?;
        self.save_adapters_peft(dir, None)?;
        self.add_head_to_peft(dir)?;
        Ok(())
    }
}
