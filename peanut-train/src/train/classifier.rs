//! Image classification as an [`Objective`]: a [`Vit`]'s cross-entropy on a batch of images,
//! with the classifier head as its own parameter group.

use burn::module::{Module, ModuleVisitor};
use burn::nn::loss::CrossEntropyLossConfig;
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use burn::train::ClassificationOutput;
use peanut_models::Vit;

use std::path::Path;

use peanut_models::AdaptableModel;

use super::step::{Objective, Trainee, check_peft_adapters};
use crate::data::ImageBatch;
use crate::error::Result;

/// A [`Vit`] ready for burn's Learner.
pub type ImageClassifier<B> = Trainee<B, Vit<B>>;

/// Logits and cross-entropy loss of a batch.
pub fn classify<B: Backend>(model: &Vit<B>, batch: ImageBatch<B>) -> ClassificationOutput<B> {
    let logits = model.forward(batch.images);
    let loss = CrossEntropyLossConfig::new()
        .init(&logits.device())
        .forward(logits.clone(), batch.targets.clone());
    ClassificationOutput::new(loss, logits, batch.targets)
}

impl<B: Backend> Objective<B> for Vit<B> {
    type Batch = ImageBatch<B>;
    type Output = ClassificationOutput<B>;

    fn objective(&self, batch: ImageBatch<B>) -> (Tensor<B, 1>, ClassificationOutput<B>) {
        let output = classify(self, batch);
        (output.loss.clone(), output)
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
