//! What every training pipeline shares: the method and adapter options, the run directory
//! (`run.json`, crash-safe checkpoints, `--resume`, `--overwrite`, the crash-safe export), the Learner's common settings, the report of a
//! diverging run, and adapter export.

use std::path::{Path, PathBuf};
use std::time::Duration;

use burn::tensor::backend::Backend;
use burn::train::checkpoint::KeepLastNCheckpoints;
use burn::train::logger::{FileMetricLogger, MetricLogger};
use burn::train::metric::store::{EpochSummary, MetricsUpdate, Split};
use burn::train::metric::{MetricDefinition, NumericEntry};
use burn::train::{
    ExecutionStrategy, Interrupter, LearningComponentsTypes, MultiDeviceOptim, SupervisedTraining,
    TrainingStrategy,
};
use peanut::{Activation, AdapterConfig, LoraConfig, PeanutConfig, Precision};
use peanut_models::{AdaptableModel, Targets};
use serde::{Deserialize, Serialize};

use super::checkpoint::{self, EpochRecorder};
use super::guard::LossGuard;
pub use super::lock::RunLock;
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
    /// PEANuT activation (`--activation` takes peft / transformers names: `relu`, `gelu`,
    /// `silu`, …).
    pub activation: Activation,
    /// PEANuT scaling `s`.
    pub scaling: f64,
    /// LoRA `alpha` (scale `alpha / rank`); must be positive. Loading an adapter accepts any
    /// finite alpha, as peft does; training asks for a positive one (see
    /// [`peanut::LoraConfig::alpha`] for why the two rules differ).
    pub lora_alpha: f64,
}

impl Default for AdapterOptions {
    /// The paper's ViT setting: r = 7, depth 2, ReLU, s = 1; LoRA alpha = 8 (peft's default).
    fn default() -> Self {
        Self {
            rank: 7,
            depth: 2,
            activation: Activation::Relu,
            scaling: 1.0,
            lora_alpha: 8.0,
        }
    }
}

/// The largest PEANuT scaling `|s|` a run accepts.
pub const MAX_SCALING: f64 = 1e4;

impl AdapterOptions {
    /// The adapter configuration for `method`, checked, or `None` for `head` and `full`. The
    /// training configurations' `check` calls it once.
    pub fn config(&self, method: Method) -> Result<Option<AdapterConfig>> {
        Ok(match method {
            Method::Peanut => {
                // s multiplies ΔW and B's gradient: 0 trains nothing, and past 1e4 an f32
                // step overflows (B stays exactly 0 while the loss guard sees inf).
                if !(self.scaling.abs() > 0.0 && self.scaling.abs() <= MAX_SCALING) {
                    return Err(TrainError::InvalidOption {
                        option: "--scaling",
                        reason: format!(
                            "must be non-zero and at most {MAX_SCALING:e} in magnitude for \
                             training (larger values overflow f32 updates), got {}",
                            self.scaling
                        ),
                    });
                }
                let config = PeanutConfig::new(self.rank)
                    .with_depth(self.depth)
                    .with_activation(self.activation)
                    .with_scaling(self.scaling);
                config.validate()?;
                Some(config.into())
            }
            Method::Lora => {
                if !(self.lora_alpha.is_finite() && self.lora_alpha > 0.0) {
                    return Err(TrainError::InvalidOption {
                        option: "--lora-alpha",
                        reason: format!("must be a positive number, got {}", self.lora_alpha),
                    });
                }
                let config = LoraConfig::new(self.rank).with_alpha(self.lora_alpha);
                config.validate()?;
                Some(config.into())
            }
            Method::Head | Method::Full => None,
        })
    }
}

/// Adds the adapters `adapter` describes (none for `head` and `full`) to the linears `targets`
/// and `layers` (all blocks when empty) select, seeded from `seed`.
///
/// # Errors
/// A target that matches nothing (as `--targets`), a block index the model lacks (as
/// `--layers`).
pub fn attach_adapters<B: Backend, M: AdaptableModel<B>>(
    model: &mut M,
    adapter: Option<&AdapterConfig>,
    targets: &[String],
    layers: &[usize],
    seed: u64,
) -> Result<()> {
    let Some(adapter) = adapter else {
        return Ok(());
    };
    let mut selection = Targets::new(targets.iter().cloned());
    if !layers.is_empty() {
        selection = selection.with_layers(layers.iter().copied());
    }
    model
        .add_adapters(&selection, adapter, seed)
        .map_err(|e| TrainError::InvalidOption {
            option: match e {
                peanut_models::ModelError::LayerOutOfRange { .. } => "--layers",
                _ => "--targets",
            },
            reason: e.to_string(),
        })?;
    Ok(())
}

/// Where and how a run is kept.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The run directory: checkpoints, `run.json`, logs, exported adapters.
    pub dir: PathBuf,
    /// Continue from the last complete checkpoint in `dir`.
    pub resume: bool,
    /// Start a new run in `dir` even when it holds an earlier run (whose files are removed).
    pub overwrite: bool,
    /// A short name shown on progress lines.
    pub label: String,
    /// Where the base model came from (a path or a hub id), recorded in `run.json`.
    pub model: String,
    /// Also write the starting point of a new run to `dir/initial/` ([`INITIAL_DIR`]): the
    /// trainable tensors before the first update in Hugging Face peft's format (adapters, and
    /// a classifier's head as `modules_to_save`) and the example order of every epoch
    /// (`order.json`), so another implementation can train from the same draws
    /// (`benches/accuracy-peft.sh` does, with PyTorch + peft). Needs adapters of one method;
    /// a resumed run does not write it again.
    pub save_initial: bool,
}

/// The subdirectory of a run directory that [`RunOptions::save_initial`] writes.
pub const INITIAL_DIR: &str = "initial";

/// The file of [`INITIAL_DIR`] that holds the example order of every epoch.
pub const ORDER_FILE: &str = "order.json";

impl RunOptions {
    /// A new run in `dir` (no resume, no overwrite), labelled `run`, base model unnamed.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            resume: false,
            overwrite: false,
            label: "run".into(),
            model: String::new(),
            save_initial: false,
        }
    }
}

pub use super::checkpoint::last_checkpoint;

/// What `run.json` holds: what the run was started with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct RunRecord {
    /// The base model's source ([`RunOptions::model`]).
    model: String,
    /// The training data's path.
    data: String,
    /// [`checkpoint::fingerprint`] of the base model.
    base_fingerprint: String,
    /// The training configuration.
    config: serde_json::Value,
}

/// The entries a run writes into its directory; `--overwrite` removes these and nothing else.
const RUN_ENTRIES: [&str; 14] = [
    "run.json",
    INITIAL_DIR,
    "initial.tmp",
    "initial.old",
    checkpoint::FOLDER,
    "export",
    "export.tmp",
    "export.old",
    "train",
    "valid",
    "merged",
    "merged.tmp",
    "merged.old",
    "experiment.log",
];

/// The leaves of `value` as (`dotted.path`, value) pairs.
fn leaves(prefix: &str, value: &serde_json::Value, out: &mut Vec<(String, serde_json::Value)>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, value) in map {
                let path = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                leaves(&path, value, out);
            }
        }
        other => out.push((prefix.to_string(), other.clone())),
    }
}

/// The first field where `stored` and `current` differ, in words.
fn first_difference(stored: &serde_json::Value, current: &serde_json::Value) -> Option<String> {
    let (mut old, mut new) = (Vec::new(), Vec::new());
    leaves("", stored, &mut old);
    leaves("", current, &mut new);
    let missing = serde_json::Value::String("(absent)".into());
    let mut names: Vec<&String> = old.iter().chain(&new).map(|(name, _)| name).collect();
    names.dedup();
    for name in names {
        let find = |list: &Vec<(String, serde_json::Value)>| {
            list.iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.clone())
                .unwrap_or_else(|| missing.clone())
        };
        let (was, now) = (find(&old), find(&new));
        if was != now {
            return Some(format!(
                "`{name}` differs: the run was started with {was}, this command has {now}"
            ));
        }
    }
    None
}

/// Some entries of `dir`, comma-separated, or `None` when it is empty or missing. A temporary
/// `run.json` that a killed process left behind is removed, not counted.
fn entries_of(dir: &Path) -> Option<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok())
        .filter(|e| !super::lock::is_lock_file(&e.file_name()))
        .filter(|e| {
            let stale = e
                .file_name()
                .to_string_lossy()
                .starts_with(".run.json.tmp-");
            !(stale && std::fs::remove_file(e.path()).is_ok())
        })
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    if names.is_empty() {
        return None;
    }
    names.sort();
    let more = names.len().saturating_sub(5);
    names.truncate(5);
    let mut list = names.join(", ");
    if more > 0 {
        list.push_str(&format!(" and {more} more"));
    }
    Some(list)
}

/// `path` made absolute with its symbolic links resolved, for the part of it that exists (a
/// run directory may not exist yet).
fn resolved(path: &Path) -> PathBuf {
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let mut existing = absolute.as_path();
    let mut rest = Vec::new();
    loop {
        if let Ok(canonical) = existing.canonicalize() {
            return rest.iter().rev().fold(canonical, |p, part| p.join(part));
        }
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_owned());
                existing = parent;
            }
            _ => return absolute,
        }
    }
}

/// Refuses a run directory that is, holds, or lies inside the training data or the base model:
/// a run writes and (with `--overwrite`) removes entries of its directory, and a user's files
/// must never be among them.
///
/// # Errors
/// [`TrainError::InvalidOption`] for `--output-dir`, naming the other path.
pub fn check_run_dir(dir: &Path, data: &Path, model: &str) -> Result<()> {
    let run = resolved(dir);
    let model = Path::new(model);
    let others = [("--data-dir", data), ("--model", model)];
    for (option, other) in others {
        if other.as_os_str().is_empty() || !other.exists() {
            continue;
        }
        let other = resolved(other);
        let relation = if run == other {
            "is"
        } else if other.starts_with(&run) {
            "holds"
        } else if run.starts_with(&other) {
            "lies inside"
        } else {
            continue;
        };
        return Err(TrainError::InvalidOption {
            option: "--output-dir",
            reason: format!(
                "`{}` {relation} the {option} path `{}`; a run writes (and --overwrite removes) \
                 entries of its directory, so choose a directory apart from the data and the \
                 model",
                dir.display(),
                other.display()
            ),
        });
    }
    Ok(())
}

/// Opens `run.dir` for a run of `epochs` epochs with `config` on the data at `data`, starting
/// from a base model with fingerprint `base_fingerprint`. Returns the epoch of the checkpoint to
/// load (`Some(epochs)` when the run already trained all its epochs: the Learner only loads it),
/// or `None` to train from the start.
///
/// A new run needs an empty (or missing) directory, or `run.overwrite`, and writes `run.json`
/// (crash-safe). `run.resume` requires `run.json` to match what this run is started with
/// (naming the first field that differs), removes what a killed process left half-written and
/// continues after the last complete checkpoint; with no `run.json` in an empty directory (a
/// run killed before it wrote one) it starts afresh.
///
/// The directory is locked for this process first ([`RunLock`]; the lock is returned, and
/// held until it is dropped), and it must lie apart from the data and the model
/// ([`check_run_dir`]). A directory that holds files but no `run.json` is never a run
/// directory, whatever `run.overwrite` says.
///
/// # Errors
/// A non-empty directory for a new run, a directory that is not a run directory, one another
/// process holds, one overlapping the data or the model, other settings, or an unwritable
/// directory.
pub(crate) fn begin<C: Serialize>(
    run: &RunOptions,
    data: &Path,
    config: &C,
    epochs: usize,
    base_fingerprint: &str,
) -> Result<(Option<usize>, RunLock)> {
    let dir = &run.dir;
    let path = dir.join("run.json");
    check_run_dir(dir, data, &run.model)?;
    let not_a_run = |entries| TrainError::NotARunDirectory {
        path: dir.clone(),
        entries,
    };
    // Checked before the lock, which creates its file in the directory: a user's directory
    // that is no run directory is left exactly as it was.
    if !path.is_file()
        && let Some(entries) = entries_of(dir)
    {
        return Err(not_a_run(entries));
    }
    let lock = RunLock::acquire(dir)?;
    let record = RunRecord {
        model: run.model.clone(),
        data: data.display().to_string(),
        base_fingerprint: base_fingerprint.to_string(),
        config: serde_json::to_value(config).expect("config serializes"),
    };
    let resume_error = |reason: String| TrainError::Resume {
        path: dir.clone(),
        reason,
    };
    if run.resume {
        if path.is_file() {
            let stored: RunRecord = peanut::io::read_json(&path)?;
            let stored = serde_json::to_value(&stored).expect("record serializes");
            let current = serde_json::to_value(&record).expect("record serializes");
            if let Some(difference) = first_difference(&stored, &current) {
                return Err(resume_error(format!(
                    "{difference} (see `{}`); resume with the same options, or start a new run \
                     with --overwrite",
                    path.display()
                )));
            }
            checkpoint::clean(dir, |note| eprintln!("{}: {note}", dir.display()))
                .map_err(|e| TrainError::io("cannot clean up", dir.join(checkpoint::FOLDER), e))?;
            let last = last_checkpoint(dir);
            if last == Some(epochs) {
                eprintln!(
                    "{}: the run already trained its {epochs} epochs; exporting it from its last \
                     checkpoint",
                    dir.display()
                );
            }
            return Ok((last.filter(|&epoch| epoch <= epochs), lock));
        }
        if let Some(entries) = entries_of(dir) {
            return Err(not_a_run(entries));
        }
        eprintln!(
            "{}: nothing to resume (no run started there yet); starting a new run",
            dir.display()
        );
    } else if let Some(entries) = entries_of(dir) {
        if !path.is_file() {
            return Err(not_a_run(entries));
        }
        if !run.overwrite {
            return Err(TrainError::RunDirectoryInUse {
                path: dir.clone(),
                entries,
            });
        }
        for name in RUN_ENTRIES {
            let entry = dir.join(name);
            let removed = if entry.is_dir() {
                std::fs::remove_dir_all(&entry)
            } else if entry.exists() {
                std::fs::remove_file(&entry)
            } else {
                Ok(())
            };
            removed.map_err(|e| TrainError::io("cannot remove", &entry, e))?;
        }
    }
    std::fs::create_dir_all(dir).map_err(|e| TrainError::io("cannot create", dir, e))?;
    let json = serde_json::to_vec_pretty(&record).expect("record serializes");
    peanut::io::write_atomic(&path, &json)?;
    Ok((None, lock))
}

/// burn's file metric logger (`<run>/train/epoch-N/`, `<run>/valid/epoch-N/`) with the epochs
/// of a resumed run numbered as they are: burn's event store numbers the first epoch it sees 1
/// whatever epoch the run resumes at, so the first epoch after a resume was written into
/// `epoch-1/` (beside the interrupted run's own epoch 1) and was missing as itself.
struct ResumedEpochs {
    inner: FileMetricLogger,
    /// Epochs complete before this process started.
    done: usize,
}

impl ResumedEpochs {
    fn new(dir: &Path, done: usize) -> Self {
        Self {
            inner: FileMetricLogger::new(dir),
            done,
        }
    }

    /// The real epoch of the event store's `epoch` when it logs: only its first epoch is
    /// misnumbered (the end-of-epoch summaries carry real numbers, and it continues from them).
    fn real(&self, epoch: usize) -> usize {
        if epoch == 1 { self.done + 1 } else { epoch }
    }
}

impl MetricLogger for ResumedEpochs {
    fn log(&mut self, update: MetricsUpdate, epoch: usize, split: &Split) {
        let epoch = self.real(epoch);
        self.inner.log(update, epoch, split)
    }

    fn read_numeric(
        &mut self,
        name: &str,
        epoch: usize,
        split: &Split,
    ) -> std::result::Result<Vec<NumericEntry>, String> {
        // Readers (early stopping, the summary) ask for real epochs already.
        self.inner.read_numeric(name, epoch, split)
    }

    fn log_metric_definition(&mut self, definition: MetricDefinition) {
        self.inner.log_metric_definition(definition)
    }

    fn log_epoch_summary(&mut self, summary: EpochSummary) {
        self.inner.log_epoch_summary(summary)
    }
}

/// An error naming `--weight-decay` unless `weight_decay` is a finite number ≥ 0.
pub(crate) fn check_weight_decay(weight_decay: f64) -> Result<()> {
    if weight_decay.is_finite() && weight_decay >= 0.0 {
        return Ok(());
    }
    Err(TrainError::InvalidOption {
        option: "--weight-decay",
        reason: format!("must be a number ≥ 0, got {weight_decay}"),
    })
}

/// The Learner settings every pipeline shares: crash-safe per-epoch checkpoints in
/// `run.dir/checkpoint` (see [`checkpoint`]; the last two kept), the loss guard's
/// `interrupter`, the resume point, and burn's dashboard on a terminal
/// or [`PlainRenderer`] lines otherwise; with several `devices`, burn's multi-device strategy
/// (the optimizer on the first; see [`super::parallel`]).
#[allow(clippy::too_many_arguments)]
pub(crate) fn configure<LC: LearningComponentsTypes>(
    training: SupervisedTraining<LC>,
    run: &RunOptions,
    epochs: usize,
    start_epoch: Option<usize>,
    guard: &LossGuard,
    base_fingerprint: &str,
    devices: &[burn::tensor::Device<LC::Backend>],
) -> SupervisedTraining<LC> {
    let mut training = training;
    if devices.len() > 1 {
        let strategy =
            ExecutionStrategy::MultiDevice(devices.to_vec(), MultiDeviceOptim::OptimMainDevice);
        training = training.with_training_strategy(TrainingStrategy::Default(strategy));
    }
    let mut training = training
        .with_metric_logger(ResumedEpochs::new(&run.dir, start_epoch.unwrap_or(0)))
        .with_file_checkpointer(EpochRecorder::new(base_fingerprint).with_guard(guard.clone()))
        .with_checkpointing_strategy(KeepLastNCheckpoints::new(checkpoint::KEEP))
        .with_interrupter(guard.interrupter())
        .with_application_logger(None)
        .num_epochs(epochs);
    if let Some(epoch) = start_epoch {
        training = training.checkpoint(epoch);
    }
    if !use_dashboard() {
        training = training.renderer(PlainRenderer::new(&run.label, Duration::from_secs(10)));
    }
    training
}

/// Checks where and how a run computes before anything is written: at least one device, a
/// batch the devices share evenly, a precision the backend computes in. Returns the first
/// device and the per-device batch.
pub(crate) fn check_execution<B: Backend>(
    devices: &[B::Device],
    batch_size: usize,
    precision: Precision,
) -> Result<(&B::Device, usize)> {
    let Some(device) = devices.first() else {
        return Err(TrainError::InvalidOption {
            option: "--devices",
            reason: "no device to train on".into(),
        });
    };
    let per_device = super::parallel::per_device_batch(batch_size, devices.len())?;
    check_precision::<B>(device, precision)?;
    Ok((device, per_device))
}

/// An error naming `--quantize` when `method` trains the base weights, which quantized storage
/// cannot hold (adapters, head-only and LoRA runs keep the base frozen).
pub fn check_quantize(method: Method, quantize: Option<peanut::Quantization>) -> Result<()> {
    match quantize {
        Some(format) if method == Method::Full => Err(TrainError::InvalidOption {
            option: "--quantize",
            reason: format!(
                "`--method full` trains the base weights, and {format} storage is for a frozen \
                 base; use peanut or lora with --quantize, or full without it"
            ),
        }),
        _ => Ok(()),
    }
}

/// An error naming `--quantize` unless backend `B` can store quantized weights on `device`.
/// Quantized training also needs the backend's autodiff registered with
/// [`peanut::quant::register_autodiff`]; [`crate::backend::register_autodiff_ops`] does that for
/// this build's training backends.
pub fn check_quantization<B: Backend>(
    device: &B::Device,
    quantize: Option<peanut::Quantization>,
) -> Result<()> {
    match quantize {
        Some(format) if !peanut::Quantization::is_supported::<B>(device) => {
            Err(TrainError::InvalidOption {
                option: "--quantize",
                reason: format!(
                    "the {} backend cannot store {format} weights on {device:?} (they are 8-bit \
                     integer tensors, which wgpu's shaders lack); use the CPU build or CUDA, or \
                     drop --quantize",
                    crate::backend::NAME
                ),
            })
        }
        _ => Ok(()),
    }
}

/// An error naming `--precision` unless backend `B` computes in `precision` on `device`.
pub fn check_precision<B: Backend>(device: &B::Device, precision: Precision) -> Result<()> {
    if precision.is_supported::<B>(device) {
        return Ok(());
    }
    Err(TrainError::InvalidOption {
        option: "--precision",
        reason: format!(
            "the {} backend cannot compute in {precision} on {device:?}; use f32, or a backend \
             that has it (flex on the CPU, cuda, wgpu on a GPU with 16-bit floats)",
            B::name(device)
        ),
    })
}

/// [`TrainError::NonFiniteLoss`] when `guard` saw a non-finite loss (`per_epoch` iterations
/// an epoch), pointing at the last good checkpoint in `run.dir`; [`TrainError::Interrupted`]
/// when the Learner stopped for another reason (a checkpoint it could not write).
pub(crate) fn check_divergence(
    guard: &LossGuard,
    interrupter: &Interrupter,
    run: &RunOptions,
    per_epoch: usize,
) -> Result<()> {
    let Some(divergence) = guard.divergence() else {
        if interrupter.should_stop() {
            return Err(TrainError::Interrupted {
                path: run.dir.clone(),
                reason: interrupter
                    .get_message()
                    .unwrap_or_else(|| "the Learner was interrupted".into()),
            });
        }
        return Ok(());
    };
    let per_epoch = per_epoch.max(1);
    let checkpoint = match last_checkpoint(&run.dir) {
        Some(epoch) => format!(
            "The last good checkpoint (epoch {epoch}) is in `{}`; `--resume` continues from it",
            checkpoint::epoch_dir(&run.dir, epoch).display()
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

/// Writes a directory of a run (its export, `--save-initial`'s start) `dir` the crash-safe way: `write` fills a fresh staging
/// directory beside it (`dir` with `.tmp` appended), whose files are then synced and which
/// replaces `dir` by renames. A process killed meanwhile leaves the previous `dir` (or none)
/// and a staging directory the next export removes. Returns what `write` returned, with paths
/// moved from the staging directory to `dir`.
///
/// # Errors
/// Whatever `write` fails with, or an I/O error naming the path.
pub fn export_atomically(
    dir: &Path,
    write: impl FnOnce(&Path) -> Result<Vec<PathBuf>>,
) -> Result<Vec<PathBuf>> {
    let suffixed = |suffix: &str| {
        let mut name = dir.as_os_str().to_owned();
        name.push(suffix);
        PathBuf::from(name)
    };
    let (staging, old) = (suffixed(".tmp"), suffixed(".old"));
    for stale in [&staging, &old] {
        if stale.exists() {
            std::fs::remove_dir_all(stale)
                .map_err(|e| TrainError::io("cannot remove", stale, e))?;
        }
    }
    std::fs::create_dir_all(&staging).map_err(|e| TrainError::io("cannot create", &staging, e))?;
    let written = match write(&staging) {
        Ok(written) => written,
        Err(e) => {
            // Nothing of a failed write is left behind (the previous `dir` stays as it was).
            let _ = std::fs::remove_dir_all(&staging);
            return Err(e);
        }
    };
    checkpoint::sync_tree(&staging).map_err(|e| TrainError::io("cannot sync", &staging, e))?;
    if dir.exists() {
        std::fs::rename(dir, &old).map_err(|e| TrainError::io("cannot move", dir, e))?;
    }
    std::fs::rename(&staging, dir).map_err(|e| TrainError::io("cannot move", &staging, e))?;
    if let Some(parent) = dir.parent() {
        checkpoint::sync_dir(parent).map_err(|e| TrainError::io("cannot sync", parent, e))?;
    }
    if old.exists() {
        std::fs::remove_dir_all(&old).map_err(|e| TrainError::io("cannot remove", &old, e))?;
    }
    Ok(written
        .into_iter()
        .map(|path| match path.strip_prefix(&staging) {
            Ok(rest) => dir.join(rest),
            Err(_) => path,
        })
        .collect())
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
    // The model's own error: a full disk or a refused write reads as that, not as a
    // malformed file.
    model.save_adapters(&native)?;
    written.push(native);
    // peft holds one method per file: PEANuT (`PEANUT`) or LoRA (`LORA`).
    if adapters
        .iter()
        .all(|(_, a)| a.method() == adapters[0].1.method())
    {
        let peft = dir.join("peft");
        model.save_adapters_peft(&peft, base_model)?;
        written.push(peft);
    }
    Ok(written)
}
