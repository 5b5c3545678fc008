//! What every training pipeline shares: the method and adapter options, the run directory
//! (`run.json`, checkpoints, `--resume`), the Learner's common settings, the report of a
//! diverging run, and adapter export.

use std::path::{Path, PathBuf};
use std::time::Duration;

use burn::record::{FullPrecisionSettings, NamedMpkFileRecorder};
use burn::tensor::backend::Backend;
use burn::train::checkpoint::KeepLastNCheckpoints;
use burn::train::{Interrupter, LearningComponentsTypes, SupervisedTraining};
use peanut::{Activation, AdapterConfig, LoraConfig, PeanutConfig};
use peanut_models::{AdaptableModel, Targets};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::classifier::LossGuard;
use crate::error::{Result, TrainError};
use crate::render::{PlainRenderer, use_dashboard};

/// What trains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// PEANuT adapters on the target linears (plus the classifier head of a classifier).
    Peanut,
    /// LoRA adapters on the target linears (plus the classifier head of a classifier).
    Lora,
    /// The classifier head only (linear probe); image classification only.
    Head,
    /// Every parameter (full fine-tuning).
    Full,
}

impl Method {
    /// The lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            Method::Peanut => "peanut",
            Method::Lora => "lora",
            Method::Head => "head",
            Method::Full => "full",
        }
    }
}

/// The adapter's shape (for `peanut` and `lora`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdapterOptions {
    /// Rank `r` (PEANuT's hidden width).
    pub rank: usize,
    /// PEANuT depth in linear maps (2, 4, 6, …).
    pub depth: usize,
    /// PEANuT activation, by peft / transformers name (`relu`, `gelu`, `silu`, …).
    pub activation: String,
    /// PEANuT scaling `s`.
    pub scaling: f64,
    /// LoRA `alpha` (scale `alpha / rank`).
    pub lora_alpha: f64,
}

impl Default for AdapterOptions {
    /// The paper's ViT setting: r = 7, depth 2, ReLU, s = 1; LoRA alpha = 8 (peft's default).
    fn default() -> Self {
        Self {
            rank: 7,
            depth: 2,
            activation: "relu".into(),
            scaling: 1.0,
            lora_alpha: 8.0,
        }
    }
}

impl AdapterOptions {
    /// The adapter configuration for `method`, or `None` for `head` and `full`.
    pub fn config(&self, method: Method) -> Result<Option<AdapterConfig>> {
        Ok(match method {
            Method::Peanut => {
                let activation = Activation::from_peft_name(&self.activation).ok_or_else(|| {
                    TrainError::InvalidOption {
                        option: "--activation",
                        reason: format!(
                            "`{}` is not one of relu, gelu, gelu_pytorch_tanh, silu, tanh, \
                             sigmoid, leaky_relu, linear",
                            self.activation
                        ),
                    }
                })?;
                let config = PeanutConfig::new(self.rank)
                    .with_depth(self.depth)
                    .with_activation(activation)
                    .with_scaling(self.scaling);
                config.validate()?;
                Some(config.into())
            }
            Method::Lora => {
                let config = LoraConfig::new(self.rank).with_alpha(self.lora_alpha);
                config.validate()?;
                Some(config.into())
            }
            Method::Head | Method::Full => None,
        })
    }

    /// Adds `method`'s adapters (none for `head` and `full`) to the linears `targets` and
    /// `layers` (all blocks when empty) select, seeded from `seed`.
    ///
    /// # Errors
    /// An invalid adapter option, or a target that matches nothing (as `--targets`).
    pub fn attach<B: Backend, M: AdaptableModel<B>>(
        &self,
        model: &mut M,
        method: Method,
        targets: &[String],
        layers: &[usize],
        seed: u64,
    ) -> Result<()> {
        let Some(adapter) = self.config(method)? else {
            return Ok(());
        };
        let mut selection = Targets::new(targets.iter().cloned());
        if !layers.is_empty() {
            selection = selection.with_layers(layers.iter().copied());
        }
        model
            .add_adapters(&selection, &adapter, seed)
            .map_err(|e| TrainError::InvalidOption {
                option: "--targets",
                reason: e.to_string(),
            })?;
        Ok(())
    }
}

/// Where and how a run is kept.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The run directory: checkpoints, `run.json`, logs, exported adapters.
    pub dir: PathBuf,
    /// Continue from the last checkpoint in `dir`.
    pub resume: bool,
    /// A short name shown on progress lines.
    pub label: String,
}

/// The last epoch with a complete checkpoint (model, optimizer and scheduler) in `dir`.
pub fn last_checkpoint(dir: &Path) -> Option<usize> {
    let entries = std::fs::read_dir(dir.join("checkpoint")).ok()?;
    let names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    let epoch_of = |prefix: &str, name: &str| {
        name.strip_prefix(prefix)?
            .split('.')
            .next()?
            .parse::<usize>()
            .ok()
    };
    names
        .iter()
        .filter_map(|n| epoch_of("model-", n))
        .filter(|epoch| {
            ["optim-", "scheduler-"]
                .iter()
                .all(|p| names.iter().any(|n| epoch_of(p, n) == Some(*epoch)))
        })
        .max()
}

/// Opens `run.dir` for a run of `epochs` epochs with `config`: a fresh run writes `run.json`;
/// `run.resume` checks it holds the same settings and returns the epoch of the last complete
/// checkpoint, to continue after.
///
/// # Errors
/// Nothing to resume, other settings, a finished run, or an unwritable directory.
pub(crate) fn begin<C>(run: &RunOptions, config: &C, epochs: usize) -> Result<Option<usize>>
where
    C: Serialize + DeserializeOwned + PartialEq,
{
    let dir = &run.dir;
    let path = dir.join("run.json");
    if !run.resume {
        std::fs::create_dir_all(dir).map_err(|e| TrainError::io("cannot create", dir, e))?;
        let json = serde_json::to_vec_pretty(config).expect("config serializes");
        std::fs::write(&path, json).map_err(|e| TrainError::io("cannot write", &path, e))?;
        return Ok(None);
    }
    let resume_error = |reason: String| TrainError::Resume {
        path: dir.clone(),
        reason,
    };
    let epoch = last_checkpoint(dir)
        .ok_or_else(|| resume_error("no complete checkpoint in its `checkpoint/` folder".into()))?;
    let bytes = std::fs::read(&path)
        .map_err(|e| resume_error(format!("cannot read `{}`: {e}", path.display())))?;
    let stored: C = serde_json::from_slice(&bytes).map_err(|source| TrainError::Json {
        path: path.clone(),
        source,
    })?;
    if &stored != config {
        return Err(resume_error(format!(
            "the run was started with other settings (see `{}`); resume with the same options",
            path.display()
        )));
    }
    if epoch >= epochs {
        return Err(resume_error(format!(
            "the run already finished its {epochs} epochs"
        )));
    }
    Ok(Some(epoch))
}

/// The Learner settings every pipeline shares: per-epoch checkpoints in `run.dir/checkpoint`
/// (the last two kept), the loss guard's `interrupter`, gradient accumulation, the resume
/// point, and burn's dashboard on a terminal or [`PlainRenderer`] lines otherwise.
pub(crate) fn configure<LC: LearningComponentsTypes>(
    training: SupervisedTraining<LC>,
    run: &RunOptions,
    epochs: usize,
    grad_accumulation: usize,
    start_epoch: Option<usize>,
    interrupter: Interrupter,
) -> SupervisedTraining<LC> {
    let mut training = training
        .with_file_checkpointer(NamedMpkFileRecorder::<FullPrecisionSettings>::new())
        .with_checkpointing_strategy(KeepLastNCheckpoints::new(2))
        .with_interrupter(interrupter)
        .with_application_logger(None)
        .num_epochs(epochs);
    if grad_accumulation > 1 {
        training = training.grads_accumulation(grad_accumulation);
    }
    if let Some(epoch) = start_epoch {
        training = training.checkpoint(epoch);
    }
    if !use_dashboard() {
        training = training.renderer(PlainRenderer::new(&run.label, Duration::from_secs(10)));
    }
    training
}

/// [`TrainError::NonFiniteLoss`] when `guard` saw a non-finite loss (`per_epoch` iterations
/// an epoch), pointing at the last good checkpoint in `run.dir`.
pub(crate) fn check_divergence(
    guard: &LossGuard,
    run: &RunOptions,
    per_epoch: usize,
) -> Result<()> {
    let Some(divergence) = guard.divergence() else {
        return Ok(());
    };
    let per_epoch = per_epoch.max(1);
    let checkpoint = match last_checkpoint(&run.dir) {
        Some(epoch) => format!(
            "The last good checkpoint (epoch {epoch}) is in `{}`; `--resume` continues from it",
            run.dir.join("checkpoint").display()
        ),
        None => "No epoch finished, so there is no checkpoint".to_string(),
    };
    Err(TrainError::NonFiniteLoss {
        loss: divergence.loss,
        epoch: (divergence.step - 1) / per_epoch + 1,
        iteration: (divergence.step - 1) % per_epoch + 1,
        checkpoint,
    })
}

/// Writes a model's adapters to `dir/peanut/` (this workspace's format) and, when they are all
/// of one method (PEANuT or LoRA), to `dir/peft/` (Hugging Face peft's format, with
/// `base_model` recorded).
/// Returns the directories written; none when the model has no adapters.
pub fn export_adapters<B: Backend, M: AdaptableModel<B>>(
    model: &M,
    dir: &Path,
    base_model: Option<&str>,
) -> Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    let adapters = model.adapters();
    if adapters.is_empty() {
        return Ok(written);
    }
    let native = dir.join("peanut");
    model
        .save_adapters(&native)
        .map_err(|e| TrainError::malformed(&native, e.to_string()))?;
    written.push(native);
    // peft holds one method per file: PEANuT (`PEANUT`) or LoRA (`LORA`).
    if adapters
        .iter()
        .all(|(_, a)| a.method() == adapters[0].1.method())
    {
        let peft = dir.join("peft");
        model
            .save_adapters_peft(&peft, base_model)
            .map_err(|e| TrainError::malformed(&peft, e.to_string()))?;
        written.push(peft);
    }
    Ok(written)
}
