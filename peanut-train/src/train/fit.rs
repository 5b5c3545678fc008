//! [`fit`]: the one Learner set-up every pipeline runs. A pipeline (image classification, causal
//! LM) says what differs — its model preparation, its data loaders, its metrics — in a
//! [`Recipe`] and three closures; the run directory, the device checks, seeding, the schedule,
//! AdamW, the loss guard, the guarded step, burn's Learner, checkpoints and the divergence report
//! are the same code for both.

use std::path::Path;

use burn::module::AutodiffModule;
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::{AdamW, AdamWConfig};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::train::{
    Interrupter, Learner, LearningComponentsMarker, SupervisedTraining, TrainLoader, ValidLoader,
};
use peanut::Precision;
use peanut_models::AdaptableModel;
use serde::Serialize;

use super::checkpoint;
use super::guard::LossGuard;
use super::run::{self, RunOptions};
use super::step::{LearningRates, Objective, StepSettings, Trainee};
use crate::data::EpochOrder;
use crate::error::Result;
use crate::schedule::{Decay, WarmupDecay};

/// The Learner components of every pipeline: a [`Trainee`] of model `M` on backend `B`, AdamW,
/// and the warmup-then-decay factor of [`WarmupDecay`].
pub type Components<B, M> = LearningComponentsMarker<
    B,
    WarmupDecay,
    Trainee<B, M>,
    OptimizerAdaptor<AdamW, Trainee<B, M>, B>,
>;

/// burn's training set-up for model `M` on backend `B`, as [`fit`] hands it to a pipeline's
/// metrics.
pub type Training<B, M> = SupervisedTraining<Components<B, M>>;

/// How long the learning rate warms up.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Warmup {
    /// A fraction of all passes (the image recipe's `--warmup-ratio`).
    Fraction(f64),
    /// Optimizer steps, capped at the run's length (the LM recipe's `--warmup-steps`).
    Steps(usize),
}

/// How the losses of the passes of one optimizer step combine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accumulation {
    /// Gradients of accumulated passes add up (the paper's ViT recipe).
    Sum,
    /// They are averaged (transformers' Trainer, the LM recipe).
    Mean,
}

/// Everything [`fit`] needs to know of a run, read from a pipeline's typed configuration.
pub struct Recipe<'a, C: Serialize> {
    /// The run directory and how to open it.
    pub run: &'a RunOptions,
    /// The training data's path (recorded in `run.json`).
    pub data: &'a Path,
    /// The pipeline's configuration (recorded in `run.json`; `--resume` requires the same).
    pub config: &'a C,
    /// Training examples.
    pub examples: usize,
    /// Passes over the data.
    pub epochs: usize,
    /// Examples per step (over all devices).
    pub batch_size: usize,
    /// Passes per optimizer step.
    pub grad_accumulation: usize,
    /// How accumulated passes combine.
    pub accumulation: Accumulation,
    /// Seed of the backend's generator and the data order.
    pub seed: u64,
    /// Precision of the frozen weights (checked against the backend).
    pub precision: Precision,
    /// Peak learning rates.
    pub learning_rates: LearningRates,
    /// AdamW's decoupled weight decay.
    pub weight_decay: f64,
    /// The warmup.
    pub warmup: Warmup,
    /// The decay after warmup.
    pub decay: Decay,
    /// Clip the global gradient norm to this value.
    pub clip_grad_norm: Option<f32>,
    /// Recompute the activations of the model's repeated blocks in the backward pass
    /// ([`StepSettings::recompute_layers`]).
    pub recompute_layers: bool,
}

/// What [`fit`] returns: the trained model on the inference backend, and its trainable
/// parameter count.
pub struct Fitted<M> {
    /// The trained model.
    pub model: M,
    /// Trainable parameters.
    pub trainable_params: usize,
    /// The run directory's lock, held until this is dropped (so that what the caller writes
    /// there afterwards, the export, is covered).
    pub lock: run::RunLock,
}

/// The optimizer every run uses: AdamW as PyTorch's `torch.optim.AdamW` defines it (betas 0.9 /
/// 0.999, epsilon 1e-8 added to the bias-corrected root of the second moment, decoupled weight
/// decay `p ← p·(1 − lr·weight_decay)` before the update), with `weight_decay`.
/// `tests/train/trajectory.rs` checks its steps against PyTorch's.
pub fn optimizer(weight_decay: f64) -> AdamWConfig {
    AdamWConfig::new()
        .with_beta_1(0.9)
        .with_beta_2(0.999)
        .with_weight_decay(weight_decay as f32)
        .with_epsilon(1e-8)
}

/// What `order.json` of [`run::INITIAL_DIR`] holds.
#[derive(Serialize)]
struct InitialOrder {
    /// The run's seed.
    seed: u64,
    /// Examples in the training split.
    examples: usize,
    /// Examples per forward/backward pass, over every device.
    batch_size: usize,
    /// Passes whose gradients make one update.
    grad_accumulation: usize,
    /// Per epoch, the indices into the training split in training order.
    epochs: Vec<Vec<usize>>,
}

/// Writes [`RunOptions::save_initial`]'s files to `dir` the crash-safe way of an export
/// ([`run::export_atomically`]): `model`'s trainable tensors (peft's format) and every epoch's
/// order in `order`.
fn save_initial<B: Backend, M: Objective<B>, C: Serialize>(
    model: &M,
    recipe: &Recipe<'_, C>,
    order: &EpochOrder,
    dir: &Path,
) -> Result<()> {
    run::export_atomically(dir, |dir| {
        model.save_peft(dir)?;
        write_order(recipe, order, dir)?;
        Ok(Vec::new())
    })?;
    Ok(())
}

/// `order.json` of [`save_initial`], into `dir`.
fn write_order<C: Serialize>(recipe: &Recipe<'_, C>, order: &EpochOrder, dir: &Path) -> Result<()> {
    let order = InitialOrder {
        seed: recipe.seed,
        examples: recipe.examples,
        batch_size: recipe.batch_size,
        grad_accumulation: recipe.grad_accumulation,
        epochs: (0..recipe.epochs).map(|e| order.pass_order(e)).collect(),
    };
    let path = dir.join(run::ORDER_FILE);
    let bytes = serde_json::to_vec(&order).map_err(|e| peanut::FileError::json(&path, e))?;
    peanut::io::write_atomic(&path, &bytes)?;
    Ok(())
}

/// The loaders of one run: the training loader takes the epoch order [`fit`] lays out and the
/// per-device batch.
pub type Loaders<B, M> = (TrainLoader<Components<B, M>>, ValidLoader<Components<B, M>>);

/// Trains `model` on burn's Learner as `recipe` says, on `devices` (burn's multi-device
/// strategy when there are several, see [`super::parallel`]):
///
/// 1. checks the devices, the batch and the precision, seeds the backend and calls `prepare`
///    (adapters, trainable parameters, precision);
/// 2. locks and opens the run directory (`run.json`, `--resume`, `--overwrite`; see
///    [`run::begin`]);
/// 3. builds the loaders with `loaders(order, per-device batch)`, the schedule, AdamW and the
///    guarded step ([`Trainee`]), registers the pipeline's `metrics` (given the loss guard, for
///    [`super::guard::LossGuardMetric`]) and the shared settings ([`run::configure`]);
/// 4. launches, and turns a divergence or an interruption into an error.
///
/// # Errors
/// A refused device, batch, precision or run directory, a failed `prepare`, or a diverged or
/// interrupted run.
pub fn fit<B, M, C>(
    model: M,
    recipe: Recipe<'_, C>,
    devices: &[B::Device],
    prepare: impl FnOnce(M) -> Result<(M, usize)>,
    loaders: impl FnOnce(EpochOrder, usize) -> Loaders<B, M>,
    metrics: impl FnOnce(Training<B, M>, &LossGuard) -> Training<B, M>,
) -> Result<Fitted<M::InnerModule>>
where
    B: AutodiffBackend,
    C: Serialize,
    M: Objective<B> + AdaptableModel<B> + AutodiffModule<B> + std::fmt::Display + 'static,
    M::InnerModule: Objective<B::InnerBackend>,
{
    let (device, per_device) =
        run::check_execution::<B>(devices, recipe.batch_size, recipe.precision)?;
    let base_fingerprint = checkpoint::fingerprint(&model);
    let run = recipe.run;
    // `prepare` checks the targets and layers against the model: it runs before the run
    // directory is opened, so a refused option leaves the directory untouched.
    B::seed(device, recipe.seed);
    let (model, trainable_params) = prepare(model)?;
    if run.save_initial {
        super::step::check_peft_adapters(&model)?;
    }
    let (start_epoch, lock) = run::begin(
        run,
        recipe.data,
        recipe.config,
        recipe.epochs,
        &base_fingerprint,
    )?;

    let order = EpochOrder::new(recipe.examples, Some(recipe.seed))
        .starting_at_pass(start_epoch.unwrap_or(0))
        .for_devices(per_device, devices.len());
    if run.save_initial && start_epoch.is_none() {
        save_initial(&model, &recipe, &order, &run.dir.join(run::INITIAL_DIR))?;
    }
    let (loader_train, loader_valid) = loaders(order, per_device);

    let per_epoch = recipe.examples.div_ceil(recipe.batch_size);
    let total = per_epoch * recipe.epochs;
    let warmup = match recipe.warmup {
        Warmup::Fraction(fraction) => (fraction * total as f64).round() as usize,
        Warmup::Steps(steps) => (steps * recipe.grad_accumulation).min(total),
    };
    // The schedule is a factor (peak 1) of each parameter group's own peak learning rate.
    let scheduler = WarmupDecay::new(1.0, warmup, total, recipe.decay);
    let optimizer = optimizer(recipe.weight_decay);

    // The guard counts passes: one per device and step.
    let passes = per_epoch * devices.len();
    let guard = LossGuard::new(Interrupter::new(), start_epoch.unwrap_or(0) * passes);
    let accumulated = match recipe.accumulation {
        Accumulation::Sum => 1,
        Accumulation::Mean => recipe.grad_accumulation,
    };
    let settings = StepSettings {
        learning_rates: recipe.learning_rates,
        clip_grad_norm: recipe.clip_grad_norm,
        // Devices share one batch: each device's mean is divided by their count.
        loss_divisor: accumulated * devices.len(),
        grad_accumulation: recipe.grad_accumulation,
        steps_per_epoch: per_epoch,
        rescale_partial: recipe.accumulation == Accumulation::Mean,
        recompute_layers: recipe.recompute_layers,
    };
    let trainee = Trainee::new(model, guard.clone(), settings);
    let learner = Learner::new(trainee, optimizer.init(), scheduler);
    let training = metrics(
        SupervisedTraining::new(&run.dir, loader_train, loader_valid),
        &guard,
    );
    let training = run::configure(
        training,
        run,
        recipe.epochs,
        start_epoch,
        &guard,
        &base_fingerprint,
        devices,
    );
    let result = training.launch(learner);
    drop(result.renderer);
    run::check_divergence(&guard, &guard.interrupter(), run, passes)?;
    Ok(Fitted {
        model: result.model.model,
        trainable_params,
        lock,
    })
}
