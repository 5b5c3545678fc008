//! Image classification: the paper's ViT recipe on burn's Learner.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use burn::data::dataloader::DataLoaderBuilder;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{ElementConversion, Int, Tensor};
use burn::train::metric::{AccuracyMetric, LossMetric, TopKAccuracyMetric};
use peanut::Precision;
use peanut_models::{AdaptableModel, Vit};
use serde::{Deserialize, Serialize};

use super::checked::Checked;
use super::fit::{Accumulation, Loaders, Recipe, Training, Warmup, fit};
use super::guard::{LossGuard, LossGuardMetric};
use super::metrics::ThroughputMetric;
use super::run::{self, AdapterOptions, Method, RunOptions};
use super::step::{GroupLearningRate, LearningRates};
use crate::data::{
    EpochOrder, ImageBatcher, ImageDataset, ImageSplit, Normalization, SampleRef, Transform,
};
use crate::error::{Result, TrainError};
use crate::schedule::Decay;

/// The linears a ViT run adapts by default (the paper's), comma-separated as `--targets` takes
/// them.
pub const DEFAULT_TARGETS: &str = "query,value";

/// Everything that decides what a training run computes. Saved as `run.json` in the run
/// directory; `--resume` requires the same settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageTrainConfig {
    /// What trains.
    pub method: Method,
    /// Adapter shape (for `peanut` / `lora`).
    pub adapter: AdapterOptions,
    /// Target linears by name or pattern (`query`, `value`, `*.dense`).
    pub targets: Vec<String>,
    /// Block indices to adapt (all when empty).
    pub layers: Vec<usize>,
    /// Passes over the training data.
    pub epochs: usize,
    /// Examples per forward/backward pass.
    pub batch_size: usize,
    /// Passes whose gradients are summed before one optimizer step.
    pub grad_accumulation: usize,
    /// Peak learning rate of the classifier head.
    pub head_lr: f64,
    /// Peak learning rate of the adapters (of every non-head parameter for `full`).
    pub adapter_lr: f64,
    /// AdamW's decoupled weight decay.
    pub weight_decay: f64,
    /// Fraction of the steps spent in linear warmup.
    pub warmup_ratio: f64,
    /// The decay after warmup.
    pub decay: Decay,
    /// Clip the global gradient norm to this value.
    pub clip_grad_norm: Option<f32>,
    /// Seed of adapters, head, data order and augmentation.
    pub seed: u64,
    /// Model input side in pixels.
    pub image_size: u32,
    /// RandomResizedCrop + flip while training (the paper's); otherwise the eval transform.
    pub augment: bool,
    /// Pixel normalization (the checkpoint's mean and std).
    pub normalization: Normalization,
    /// Precision of the frozen base weights (adapters and head train in f32; see
    /// [`peanut::precision`]).
    #[serde(default)]
    pub precision: Precision,
    /// The format the frozen linear weights are quantized in (`--quantize`; see
    /// [`peanut::quant`]), or `None` for float storage in `precision`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantize: Option<peanut::Quantization>,
    /// Recompute each encoder block's activations in the backward pass instead of keeping
    /// them (`train image --checkpointing`; [`peanut_models::Vit::recompute_backward`]): memory
    /// for the activations of one block instead of all, for one more forward pass. It changes
    /// no result beyond float rounding, so `run.json` does not record it and a run may resume
    /// with or without it.
    #[serde(skip)]
    pub recompute_layers: bool,
}

impl Default for ImageTrainConfig {
    /// The paper's Stanford Cars recipe: ViT q,v, PEANuT r = 7 depth 2 ReLU, 10 epochs, batch 64
    /// × accumulation 4 (effective 256), head and adapter lr 1e-2, weight decay 4e-5, linear
    /// decay, 224 px, RandomResizedCrop + flip, ViT normalization.
    fn default() -> Self {
        Self {
            method: Method::Peanut,
            adapter: AdapterOptions::default(),
            targets: DEFAULT_TARGETS.split(',').map(String::from).collect(),
            layers: Vec::new(),
            epochs: 10,
            batch_size: 64,
            grad_accumulation: 4,
            head_lr: 1e-2,
            adapter_lr: 1e-2,
            weight_decay: 4e-5,
            warmup_ratio: 0.0,
            decay: Decay::Linear,
            clip_grad_norm: None,
            seed: 42,
            image_size: 224,
            augment: true,
            normalization: Normalization::VIT,
            precision: Precision::F32,
            quantize: None,
            recompute_layers: false,
        }
    }
}

impl ImageTrainConfig {
    /// How the run stores the frozen base: `precision`, and `quantize` for the linear weights.
    pub fn storage(&self) -> peanut::FrozenStorage {
        peanut::FrozenStorage::new(self.precision).with_quantization(self.quantize)
    }

    /// Checks the options that could not work (the error names the option) and builds the
    /// adapter configuration: the one validation of a run's configuration ([`Checked`]).
    pub fn check(self) -> Result<Checked<Self>> {
        let bad = |option, reason: String| Err(TrainError::InvalidOption { option, reason });
        if self.epochs == 0 {
            return bad("--epochs", "must be at least 1".into());
        }
        if self.batch_size == 0 {
            return bad("--batch-size", "must be at least 1".into());
        }
        if self.grad_accumulation == 0 {
            return bad("--grad-accumulation", "must be at least 1".into());
        }
        for (option, lr) in [
            ("--head-lr", self.head_lr),
            ("--adapter-lr", self.adapter_lr),
        ] {
            if !(lr.is_finite() && lr > 0.0) {
                return bad(option, format!("must be a positive number, got {lr}"));
            }
        }
        run::check_weight_decay(self.weight_decay)?;
        if !(0.0..1.0).contains(&self.warmup_ratio) {
            return bad(
                "--warmup-ratio",
                format!("must be in [0, 1), got {}", self.warmup_ratio),
            );
        }
        if self.clip_grad_norm.is_some_and(|c| c.is_nan() || c <= 0.0) {
            return bad("--clip-grad-norm", "must be positive".into());
        }
        if self.image_size == 0 {
            return bad("--image-size", "must be at least 1".into());
        }
        run::check_quantize(self.method, self.quantize)?;
        let adapter = self.adapter.config(self.method)?;
        Ok(Checked::new(self, adapter))
    }

    /// The training transform.
    pub fn train_transform(&self) -> Transform {
        if self.augment {
            Transform::train(self.image_size)
        } else {
            Transform::eval(self.image_size)
        }
    }
}

impl Checked<ImageTrainConfig> {
    /// The same configuration with another pixel normalization (which no check constrains), as
    /// `train image` sets from the checkpoint's image processor.
    pub fn with_normalization(mut self, normalization: Normalization) -> Self {
        self.unconstrained_mut().normalization = normalization;
        self
    }
}

/// A finished run.
pub struct TrainedImage<B: Backend> {
    /// The trained model.
    pub model: Vit<B>,
    /// Trainable parameter count.
    pub trainable_params: usize,
    /// The run directory's lock: no other process can start a run there while this is alive
    /// (keep it while writing the export).
    pub lock: run::RunLock,
    /// Training images that could not be read or decoded (left out of the split, or of their
    /// batches; a batch decodes once per epoch, so an image is counted once per epoch).
    pub skipped_images: usize,
    /// Validation images that could not be read or decoded, counted the same way.
    pub skipped_valid_images: usize,
}

/// Applies `config.method` to a model: adapters on the targets and a trainable head, a trainable
/// head only, or everything trainable; then stores the frozen weights in `config.precision`.
/// Returns the model and its trainable parameter count.
pub fn prepare_model<B: AutodiffBackend>(
    model: Vit<B>,
    config: &Checked<ImageTrainConfig>,
) -> Result<(Vit<B>, usize)> {
    let mut model = model;
    run::attach_adapters(
        &mut model,
        config.adapter(),
        &config.targets,
        &config.layers,
        config.seed,
    )?;
    let model = match config.method {
        Method::Full => model.with_trainable_base(true),
        _ => model.with_trainable_head(true),
    };
    let trainable = peanut::count_trainable_params(&model);
    Ok((peanut::cast_frozen(model, config.precision), trainable))
}

/// Trains `model` (fresh from a checkpoint, no adapters yet) on `data` with `config`, on
/// burn's Learner: the terminal dashboard when stdout is a terminal, plain progress lines
/// otherwise. Checkpoints every epoch in `run.dir/checkpoint`; with `run.resume`, continues
/// after the last one.
///
/// This trains on one device, on one thread of work. On a CPU backend, [`train_image_on`] with
/// `backend::devices(&DeviceSpec::auto(), batch_size)` trains as the CLI does by default, with
/// data-parallel workers that keep more cores busy (see [`super::parallel`]).
///
/// # Errors
/// Bad options, an unusable dataset, nothing to resume, or a non-finite loss (the last good
/// checkpoint is left in place).
pub fn train_image<B: AutodiffBackend>(
    model: Vit<B>,
    data: &ImageDataset,
    config: &Checked<ImageTrainConfig>,
    run: &RunOptions,
    device: &B::Device,
) -> Result<TrainedImage<B::InnerBackend>> {
    train_image_on(model, data, config, run, std::slice::from_ref(device))
}

/// [`train_image`] data-parallel on `devices` (burn's multi-device strategy, see
/// [`super::parallel`]): each device takes `batch_size / devices` examples of every step, and
/// the result is that of one device. `model` is on the first device.
///
/// # Errors
/// As [`train_image`]; also a batch the devices cannot share evenly, no device, or a precision
/// the backend lacks.
pub fn train_image_on<B: AutodiffBackend>(
    model: Vit<B>,
    data: &ImageDataset,
    config: &Checked<ImageTrainConfig>,
    run: &RunOptions,
    devices: &[B::Device],
) -> Result<TrainedImage<B::InnerBackend>> {
    data.check_trainable()?;
    let channels = model.config.num_channels;
    let train_samples: Arc<[_]> = data.train.samples.clone().into();
    let test_samples: Arc<[_]> = data.test.samples.clone().into();
    let train_batcher = ImageBatcher::new(
        train_samples.clone(),
        config.train_transform(),
        config.normalization,
        channels,
        config.seed,
    );
    let test_batcher = ImageBatcher::new(
        test_samples.clone(),
        Transform::eval(config.image_size),
        config.normalization,
        channels,
        config.seed,
    );
    let recipe = Recipe {
        run,
        data: &data.root,
        config: &**config,
        examples: train_samples.len(),
        epochs: config.epochs,
        batch_size: config.batch_size,
        grad_accumulation: config.grad_accumulation,
        accumulation: Accumulation::Sum,
        seed: config.seed,
        precision: config.precision,
        learning_rates: LearningRates {
            head: config.head_lr,
            body: config.adapter_lr,
        },
        weight_decay: config.weight_decay,
        warmup: Warmup::Fraction(config.warmup_ratio),
        decay: config.decay,
        clip_grad_norm: config.clip_grad_norm,
        recompute_layers: config.recompute_layers,
    };
    let loaders = |order, per_device| -> Loaders<B, Vit<B>> {
        let train = DataLoaderBuilder::<B, SampleRef, _>::new(train_batcher.clone())
            .batch_size(per_device)
            .build(order);
        let test = DataLoaderBuilder::<B::InnerBackend, SampleRef, _>::new(test_batcher.clone())
            .batch_size(config.batch_size)
            .build(EpochOrder::new(test_samples.len(), None));
        (train, test)
    };
    let top_k = data.classes.len().clamp(1, 5);
    let metrics =
        |training: Training<B, Vit<B>>, guard: &LossGuard| {
            let training = training
                .metrics((
                    LossMetric::new(),
                    AccuracyMetric::new(),
                    TopKAccuracyMetric::new(top_k),
                ))
                .metric_train_numeric(GroupLearningRate::new("head", config.head_lr))
                .metric_train_numeric(ThroughputMetric::new("images/s"))
                .metric_train(LossGuardMetric::new(guard.clone()));
            match config.method {
                Method::Head => training,
                Method::Full => training
                    .metric_train_numeric(GroupLearningRate::new("backbone", config.adapter_lr)),
                Method::Peanut | Method::Lora => training
                    .metric_train_numeric(GroupLearningRate::new("adapters", config.adapter_lr)),
            }
        };
    let prepare = |model| prepare_model(model, config);
    let fitted = fit(model, recipe, devices, prepare, loaders, metrics)?;
    Ok(TrainedImage {
        model: fitted.model,
        trainable_params: fitted.trainable_params,
        lock: fitted.lock,
        skipped_images: train_batcher.skipped() + data.train.skipped,
        skipped_valid_images: test_batcher.skipped() + data.test.skipped,
    })
}

/// Accuracy of a model on a split.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EvalReport {
    /// Top-1 accuracy in `[0, 1]`.
    pub top1: f64,
    /// Top-5 accuracy (top-k with k = min(5, classes)).
    pub top5: f64,
    /// Mean cross-entropy.
    pub loss: f64,
    /// Images evaluated.
    pub count: usize,
    /// Images that could not be decoded.
    pub skipped: usize,
}

/// Evaluates `model` on `split` with the evaluation transform at `image_size`.
pub fn evaluate<B: Backend>(
    model: &Vit<B>,
    split: &ImageSplit,
    image_size: u32,
    normalization: Normalization,
    batch_size: usize,
    device: &B::Device,
) -> EvalReport {
    let transform = Transform::eval(image_size);
    evaluate_with(model, split, transform, normalization, batch_size, device)
}

/// Evaluates `model` on `split`, preparing images with `transform` and `normalization` (for
/// example a checkpoint's image processor, `Transform::processor`).
pub fn evaluate_with<B: Backend>(
    model: &Vit<B>,
    split: &ImageSplit,
    transform: Transform,
    normalization: Normalization,
    batch_size: usize,
    device: &B::Device,
) -> EvalReport {
    let samples: Arc<[_]> = split.samples.clone().into();
    let batcher = ImageBatcher::new(
        samples.clone(),
        transform,
        normalization,
        model.config.num_channels,
        0,
    );
    let (mut top1, mut top5, mut loss_sum, mut count) = (0usize, 0usize, 0f64, 0usize);
    let k = model.config.num_labels.clamp(1, 5);
    let refs: Vec<SampleRef> = (0..samples.len())
        .map(|index| SampleRef { index, pass: 0 })
        .collect();
    for chunk in refs.chunks(batch_size.max(1)) {
        let loaded = batcher.load_all(chunk);
        if loaded.is_empty() {
            continue;
        }
        let batch = batcher.stack::<B>(loaded, device);
        let n = batch.targets.dims()[0];
        let logits = model.forward(batch.images);
        let loss = burn::nn::loss::CrossEntropyLossConfig::new()
            .init(device)
            .forward(logits.clone(), batch.targets.clone());
        let loss: f64 = loss.into_scalar().elem();
        loss_sum += loss * n as f64;
        let targets: Tensor<B, 2, Int> = batch.targets.reshape([n, 1]);
        let best: Tensor<B, 2, Int> = logits.clone().argmax(1);
        top1 += best
            .equal(targets.clone())
            .int()
            .sum()
            .into_scalar()
            .elem::<i64>() as usize;
        let topk = logits.topk_with_indices(k, 1).1;
        top5 += topk
            .equal(targets.repeat_dim(1, k))
            .int()
            .sum()
            .into_scalar()
            .elem::<i64>() as usize;
        count += n;
    }
    let denom = count.max(1) as f64;
    EvalReport {
        top1: top1 as f64 / denom,
        top5: top5 as f64 / denom,
        loss: loss_sum / denom,
        count,
        skipped: batcher.skipped() + split.skipped,
    }
}

/// Writes a trained model's adapters to `dir/peanut/` (this workspace's format) and, when they
/// are all PEANuT adapters, to `dir/peft/` (Hugging Face peft's format); and the classifier head
/// to `dir/head.safetensors` (`classifier.weight` `[labels, hidden]`, `classifier.bias`, PyTorch
/// layout). Returns the directories written.
pub fn export<B: Backend>(
    model: &Vit<B>,
    dir: &Path,
    base_model: Option<&str>,
) -> Result<Vec<PathBuf>> {
    let mut written = run::export_adapters(model, dir, base_model)?;
    let head = dir.join(crate::export::HEAD_FILE);
    std::fs::create_dir_all(dir).map_err(|e| TrainError::io("cannot create", dir, e))?;
    let saved = peanut::io::SavedModules::from([(
        "classifier".to_string(),
        peanut::io::SavedModule::from_linear(&model.classifier),
    )]);
    crate::export::write_head(&head, &saved)?;
    written.push(head);
    // The peft export carries the head too (`modules_to_save`), for `PeftModel.from_pretrained`.
    let peft = dir.join("peft");
    if written.contains(&peft) {
        model.add_head_to_peft(&peft)?;
    }
    Ok(written)
}
