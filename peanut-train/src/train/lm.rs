//! Causal-LM instruction tuning — the paper's LLM recipe on burn's Learner — and evaluation by
//! greedy generation with answer extraction.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use burn::data::dataloader::DataLoaderBuilder;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::train::metric::LossMetric;
use peanut::Precision;
use peanut_models::llama::{GenerationConfig, Tokenizer};
use peanut_models::{AdaptableModel, Llama};
use serde::{Deserialize, Serialize};

use super::checked::Checked;
use super::fit::{Accumulation, Loaders, Recipe, Training, Warmup, fit};
use super::guard::{LossGuard, LossGuardMetric};
use super::metrics::{ThroughputMetric, TokenAccuracyMetric};
use super::run::{self, AdapterOptions, Method, RunOptions};
use super::step::{GroupLearningRate, LearningRates};
use crate::data::instruct::{self, Instruction, Task, TokenizeOptions, Tokenized};
use crate::data::rng::SplitMix64;
use crate::data::{EpochOrder, LmBatcher, SampleRef};
use crate::error::{Result, TrainError};
use crate::schedule::Decay;

/// The id padding uses (LLM-Adapters pads with 0; any id works, see [`LmBatcher::new`]).
pub const PAD_ID: u32 = 0;

/// Mixed into the seed for the validation split, so it does not follow the epoch order.
const VALIDATION_STREAM: u64 = u64::from_be_bytes(*b"\0\0\0valid");

/// The linears an LM run adapts by default (the paper's), comma-separated as `--targets` takes
/// them.
pub const DEFAULT_TARGETS: &str = "q_proj,k_proj,v_proj,up_proj,down_proj";

/// Everything that decides what a causal-LM run computes. Saved as `run.json` in the run
/// directory; `--resume` requires the same settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LmTrainConfig {
    /// What trains: `peanut`, `lora` or `full` (`head` has no meaning for a language model).
    pub method: Method,
    /// Adapter shape (for `peanut` / `lora`).
    pub adapter: AdapterOptions,
    /// Target linears by name or pattern (`q_proj`, `up_proj`, `*_proj`).
    pub targets: Vec<String>,
    /// Block indices to adapt (all when empty).
    pub layers: Vec<usize>,
    /// Passes over the training data.
    pub epochs: usize,
    /// Sequences per forward/backward pass.
    pub batch_size: usize,
    /// Passes whose gradients are averaged before one optimizer step.
    pub grad_accumulation: usize,
    /// Peak learning rate.
    pub learning_rate: f64,
    /// AdamW's decoupled weight decay.
    pub weight_decay: f64,
    /// Optimizer steps of linear warmup (capped at the run's length).
    pub warmup_steps: usize,
    /// The decay after warmup.
    pub decay: Decay,
    /// Clip the global gradient norm to this value.
    pub clip_grad_norm: Option<f32>,
    /// Seed of adapters, the validation split and data order.
    pub seed: u64,
    /// Most tokens per example (prompt + response + EOS); longer ones are truncated.
    pub cutoff_len: usize,
    /// Put the loss on the prompt too (the paper trains on responses only).
    pub train_on_inputs: bool,
    /// Examples held out for validation (LLM-Adapters' `val_set_size`); 0 for none.
    pub val_size: usize,
    /// Precision of the frozen base weights (adapters train in f32; see
    /// [`peanut::precision`]).
    #[serde(default)]
    pub precision: Precision,
    /// The format the frozen linear weights are quantized in (`--quantize`; see
    /// [`peanut::quant`]), or `None` for float storage in `precision`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantize: Option<peanut::Quantization>,
    /// Recompute each decoder layer's activations in the backward pass instead of keeping
    /// them (`train lm --checkpointing`; [`peanut_models::Llama::recompute_backward`]): memory
    /// for the activations of one layer instead of all, for one more forward pass. It changes
    /// no result beyond float rounding, so `run.json` does not record it and a run may resume
    /// with or without it.
    #[serde(skip)]
    pub recompute_layers: bool,
}

impl Default for LmTrainConfig {
    /// The paper's LLM recipe: PEANuT r = 32 on q, k, v, up and down, 1 epoch, lr 3e-4,
    /// cutoff 256, loss on responses only; and LLM-Adapters' Trainer settings around it:
    /// effective batch 16 (4 × accumulation 4), 100 warmup steps then linear decay, AdamW
    /// without weight decay, gradient norm clipped to 1 (transformers' default), 120 held-out
    /// examples. LoRA alpha 64 (LLM-Adapters' `lora_alpha` for r = 32).
    fn default() -> Self {
        Self {
            method: Method::Peanut,
            adapter: AdapterOptions {
                rank: 32,
                lora_alpha: 64.0,
                ..AdapterOptions::default()
            },
            targets: DEFAULT_TARGETS.split(',').map(String::from).collect(),
            layers: Vec::new(),
            epochs: 1,
            batch_size: 4,
            grad_accumulation: 4,
            learning_rate: 3e-4,
            weight_decay: 0.0,
            warmup_steps: 100,
            decay: Decay::Linear,
            clip_grad_norm: Some(1.0),
            seed: 42,
            cutoff_len: 256,
            train_on_inputs: false,
            val_size: 120,
            precision: Precision::F32,
            quantize: None,
            recompute_layers: false,
        }
    }
}

impl LmTrainConfig {
    /// How the run stores the frozen base: `precision`, and `quantize` for the linear weights.
    pub fn storage(&self) -> peanut::FrozenStorage {
        peanut::FrozenStorage::new(self.precision).with_quantization(self.quantize)
    }

    /// Checks the options that could not work (the error names the option) and builds the
    /// adapter configuration: the one validation of a run's configuration ([`Checked`]).
    pub fn check(self) -> Result<Checked<Self>> {
        let bad = |option, reason: String| Err(TrainError::InvalidOption { option, reason });
        if self.method == Method::Head {
            return bad(
                "--method",
                "`head` trains a classifier head, which a causal language model does not have; \
                 use peanut, lora or full"
                    .into(),
            );
        }
        for (option, value) in [
            ("--epochs", self.epochs),
            ("--batch-size", self.batch_size),
            ("--grad-accumulation", self.grad_accumulation),
        ] {
            if value == 0 {
                return bad(option, "must be at least 1".into());
            }
        }
        if self.cutoff_len < 2 {
            return bad(
                "--cutoff-len",
                format!("must be at least 2 tokens, got {}", self.cutoff_len),
            );
        }
        if !(self.learning_rate.is_finite() && self.learning_rate > 0.0) {
            return bad(
                "--lr",
                format!("must be a positive number, got {}", self.learning_rate),
            );
        }
        run::check_weight_decay(self.weight_decay)?;
        if self.clip_grad_norm.is_some_and(|c| c.is_nan() || c <= 0.0) {
            return bad("--clip-grad-norm", "must be positive".into());
        }
        run::check_quantize(self.method, self.quantize)?;
        let adapter = self.adapter.config(self.method)?;
        Ok(Checked::new(self, adapter))
    }
}

/// Tokenized instruction data, split into training and validation examples.
#[derive(Debug, Clone)]
pub struct InstructionData {
    /// The file it was read from.
    pub path: PathBuf,
    /// Training examples, in file order.
    pub train: Vec<Tokenized>,
    /// Held-out examples.
    pub valid: Vec<Tokenized>,
    /// Examples in the file.
    pub examples: usize,
    /// Examples dropped because the cutoff left them no response token.
    pub dropped: usize,
}

/// Tokens of `text` with the tokenizer's special tokens (BOS for LLaMA), as LLM-Adapters
/// tokenizes.
pub fn encode(tokenizer: &Tokenizer, text: &str) -> Result<Vec<u32>> {
    Ok(tokenizer.encode(text, true)?)
}

/// Reads an instruction file (LLM-Adapters JSON or JSON lines), tokenizes it with
/// `config.cutoff_len` and response-only labels, drops examples left without a response
/// token, and holds out `config.val_size` examples chosen by `config.seed`.
///
/// # Errors
/// A missing or malformed file (naming the field), a tokenizer error, no usable example, or
/// a validation split as large as the data.
pub fn load_instructions(
    path: &Path,
    tokenizer: &Tokenizer,
    eos: Option<u32>,
    config: &LmTrainConfig,
) -> Result<InstructionData> {
    let examples = instruct::read_training(path)?;
    let options = TokenizeOptions {
        cutoff: config.cutoff_len,
        eos,
        train_on_inputs: config.train_on_inputs,
    };
    let (kept, dropped) =
        instruct::tokenize_all(&examples, |text| encode(tokenizer, text), options)?;
    if kept.is_empty() {
        return Err(TrainError::EmptyAfterCutoff {
            path: path.to_path_buf(),
            cutoff: config.cutoff_len,
            examples: examples.len(),
        });
    }
    if config.val_size >= kept.len() {
        return Err(TrainError::InvalidOption {
            option: "--val-size",
            reason: format!(
                "{} leaves no training example: `{}` has {} usable examples",
                config.val_size,
                path.display(),
                kept.len()
            ),
        });
    }
    let mut held_out = vec![false; kept.len()];
    for index in SplitMix64::for_parts(&[config.seed, VALIDATION_STREAM])
        .permutation(kept.len())
        .into_iter()
        .take(config.val_size)
    {
        held_out[index] = true;
    }
    let (valid, train): (Vec<_>, Vec<_>) = kept
        .into_iter()
        .zip(held_out)
        .partition(|(_, valid)| *valid);
    Ok(InstructionData {
        path: path.to_path_buf(),
        train: train.into_iter().map(|(t, _)| t).collect(),
        valid: valid.into_iter().map(|(t, _)| t).collect(),
        examples: examples.len(),
        dropped,
    })
}

/// A finished causal-LM run.
pub struct TrainedLm<B: Backend> {
    /// The trained model.
    pub model: Llama<B>,
    /// Trainable parameter count.
    pub trainable_params: usize,
    /// The run directory's lock: no other process can start a run there while this is alive
    /// (keep it while writing the export).
    pub lock: run::RunLock,
}

/// Applies `config.method` to a model: adapters on the targets, or everything trainable; then
/// stores the frozen weights in `config.precision`. Returns the model and its trainable
/// parameter count.
pub fn prepare_lm<B: AutodiffBackend>(
    model: Llama<B>,
    config: &Checked<LmTrainConfig>,
) -> Result<(Llama<B>, usize)> {
    let mut model = model;
    run::attach_adapters(
        &mut model,
        config.adapter(),
        &config.targets,
        &config.layers,
        config.seed,
    )?;
    if config.method == Method::Full {
        model = model.with_trainable_base(true);
    }
    let trainable = peanut::count_trainable_params(&model);
    Ok((peanut::cast_frozen(model, config.precision), trainable))
}

/// Fine-tunes `model` (fresh from a checkpoint, no adapters yet) on `data` with `config`, on
/// burn's Learner: the terminal dashboard when stdout is a terminal, plain progress lines
/// otherwise; loss, next-token accuracy on responses, learning rate and tokens/s. Checkpoints
/// every epoch in `run.dir/checkpoint`; with `run.resume`, continues after the last one.
///
/// This trains on one device, on one thread of work. On a CPU backend, [`train_lm_on`] with
/// `backend::devices(&DeviceSpec::auto(), batch_size)` trains as the CLI does by default, with
/// data-parallel workers that keep more cores busy (see [`super::parallel`]).
///
/// # Errors
/// Bad options, nothing to resume, or a non-finite loss (the last good checkpoint is left in
/// place).
pub fn train_lm<B: AutodiffBackend>(
    model: Llama<B>,
    data: &InstructionData,
    config: &Checked<LmTrainConfig>,
    run: &RunOptions,
    device: &B::Device,
) -> Result<TrainedLm<B::InnerBackend>> {
    train_lm_on(model, data, config, run, std::slice::from_ref(device))
}

/// [`train_lm`] data-parallel on `devices` (burn's multi-device strategy, see
/// [`super::parallel`]): each device takes `batch_size / devices` sequences of every step.
/// `model` is on the first device. Each device averages its loss over its own response tokens,
/// so with unequal token counts the step differs slightly from one device's (as it does across
/// accumulated passes in transformers' Trainer).
///
/// # Errors
/// As [`train_lm`]; also a batch the devices cannot share evenly, no device, or a precision the
/// backend lacks.
pub fn train_lm_on<B: AutodiffBackend>(
    model: Llama<B>,
    data: &InstructionData,
    config: &Checked<LmTrainConfig>,
    run: &RunOptions,
    devices: &[B::Device],
) -> Result<TrainedLm<B::InnerBackend>> {
    let train: Arc<[Tokenized]> = data.train.clone().into();
    let valid: Arc<[Tokenized]> = data.valid.clone().into();
    let recipe = Recipe {
        run,
        data: &data.path,
        config: &**config,
        examples: train.len(),
        epochs: config.epochs,
        batch_size: config.batch_size,
        grad_accumulation: config.grad_accumulation,
        accumulation: Accumulation::Mean,
        seed: config.seed,
        precision: config.precision,
        learning_rates: LearningRates::uniform(config.learning_rate),
        weight_decay: config.weight_decay,
        warmup: Warmup::Steps(config.warmup_steps),
        decay: config.decay,
        clip_grad_norm: config.clip_grad_norm,
        recompute_layers: config.recompute_layers,
    };
    let loaders = |order, per_device| -> Loaders<B, Llama<B>> {
        let train = DataLoaderBuilder::<B, SampleRef, _>::new(LmBatcher::new(train, PAD_ID))
            .batch_size(per_device)
            .build(order);
        let valid_len = valid.len();
        let valid =
            DataLoaderBuilder::<B::InnerBackend, SampleRef, _>::new(LmBatcher::new(valid, PAD_ID))
                .batch_size(config.batch_size)
                .build(EpochOrder::new(valid_len, None));
        (train, valid)
    };
    let metrics = |training: Training<B, Llama<B>>, guard: &LossGuard| {
        training
            .metric_train_numeric(LossMetric::<B>::new())
            .metric_valid_numeric(LossMetric::<B::InnerBackend>::new())
            .metrics((TokenAccuracyMetric::new(),))
            .metric_train_numeric(GroupLearningRate::new("", config.learning_rate))
            .metric_train_numeric(ThroughputMetric::tokens())
            .metric_train(LossGuardMetric::new(guard.clone()))
    };
    let prepare = |model| prepare_lm(model, config);
    let fitted = fit(model, recipe, devices, prepare, loaders, metrics)?;
    Ok(TrainedLm {
        model: fitted.model,
        trainable_params: fitted.trainable_params,
        lock: fitted.lock,
    })
}

/// Writes what a run trained: the adapters to `dir/peanut/` and (PEANuT) `dir/peft/`, or, for
/// full fine-tuning, the whole model as a transformers checkpoint in `dir/model/`. Returns the
/// directories written.
pub fn export_lm<B: Backend>(
    model: &Llama<B>,
    dir: &Path,
    base_model: Option<&str>,
) -> Result<Vec<PathBuf>> {
    if model.adapters().is_empty() {
        let full = dir.join("model");
        model.save_merged(&full)?;
        return Ok(vec![full]);
    }
    run::export_adapters(model, dir, base_model)
}

/// The continuation of `prompt` (special tokens added as in training), decoded without
/// special tokens.
///
/// # Errors
/// Tokenizer errors, or a prompt the model cannot take (empty, ids out of its vocabulary).
pub fn complete<B: Backend>(
    model: &Llama<B>,
    tokenizer: &Tokenizer,
    prompt: &str,
    generation: &GenerationConfig,
) -> Result<String> {
    let ids = encode(tokenizer, prompt)?;
    let generated = model.generate(&ids, generation)?;
    Ok(tokenizer.decode(&generated, true)?)
}

/// One evaluated example.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Prediction {
    /// Position in the evaluation file.
    pub index: usize,
    /// The question.
    pub instruction: String,
    /// The reference answer (`answer` of the file).
    pub answer: String,
    /// The generated response.
    pub response: String,
    /// The answer extracted from the response, if any.
    pub predicted: Option<String>,
    /// Whether `predicted` equals `answer`.
    pub correct: bool,
}

/// Accuracy of generated answers on one task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LmEvalReport {
    /// The task (LLM-Adapters' dataset name).
    pub task: String,
    /// Examples answered right.
    pub correct: usize,
    /// Examples evaluated.
    pub total: usize,
    /// `correct / total`.
    pub accuracy: f64,
}

/// Evaluates `model` on `examples` of `task` as LLM-Adapters' `commonsense_evaluate.py`
/// does: the instruction prompt, generation, the first answer of the task's format in the
/// response (see [`Task::extract_answer`]) compared with the example's `answer`. Prompts are
/// generated `batch_size` at a time ([`Llama::generate_batch`]: left-padded, each answer the
/// one it gets alone), and `workers` such batches side by side on as many threads (on a CPU
/// backend, [`crate::backend::workers`]: its matrix-vector products run on one thread each, and
/// one core does not use the memory bandwidth up; 1 on a GPU). Each prediction goes to
/// `on_prediction` in file order.
///
/// # Errors
/// An example without `answer` (naming `path` and its index), one whose prompt and
/// `generation.max_new_tokens` pass the model's context, generation or tokenizer errors, or an
/// error of `on_prediction`.
#[allow(clippy::too_many_arguments)]
pub fn evaluate_lm<B: Backend>(
    model: &Llama<B>,
    tokenizer: &Tokenizer,
    examples: &[Instruction],
    task: Task,
    generation: &GenerationConfig,
    batch_size: usize,
    workers: usize,
    path: &Path,
    mut on_prediction: impl FnMut(&Prediction) -> Result<()>,
) -> Result<LmEvalReport> {
    // Every prompt and its answer must fit the model's context, checked before any work.
    let context = model.config.max_position_embeddings;
    for (index, example) in examples.iter().enumerate() {
        let prompt_len = encode(tokenizer, &instruct::prompt(example))?.len();
        if prompt_len + generation.max_new_tokens > context {
            return Err(TrainError::malformed(
                path,
                format!(
                    "example {index}'s prompt is {prompt_len} tokens: with {} new tokens it \
                     passes the model's context of {context} tokens (`max_position_embeddings`); \
                     shorten it, or lower --max-new-tokens{}",
                    generation.max_new_tokens,
                    if prompt_len < context {
                        format!(" to {}", context - prompt_len)
                    } else {
                        String::new()
                    }
                ),
            ));
        }
    }
    let mut correct = 0;
    let batch_size = batch_size.max(1);
    let group = batch_size * workers.max(1);
    for (chunk_index, chunk) in examples.chunks(group).enumerate() {
        let first = chunk_index * group;
        let mut answers = Vec::with_capacity(chunk.len());
        let mut prompts = Vec::with_capacity(chunk.len());
        for (offset, example) in chunk.iter().enumerate() {
            let answer = example.answer.as_deref().map(str::trim).ok_or_else(|| {
                TrainError::malformed(
                    path,
                    format!(
                        "example {} has no `answer` field to compare with",
                        first + offset
                    ),
                )
            })?;
            answers.push(answer);
            prompts.push(encode(tokenizer, &instruct::prompt(example))?);
        }
        let outputs = if prompts.len() <= batch_size {
            model.generate_batch(&prompts, generation)?
        } else {
            let batches: Vec<Vec<Vec<u32>>> = std::thread::scope(|scope| {
                let handles: Vec<_> = prompts
                    .chunks(batch_size)
                    .map(|batch| scope.spawn(move || model.generate_batch(batch, generation)))
                    .collect();
                handles
                    .into_iter()
                    .map(|handle| handle.join().expect("a generation thread panicked"))
                    .collect::<std::result::Result<_, _>>()
            })?;
            batches.into_iter().flatten().collect()
        };
        for (offset, (example, generated)) in chunk.iter().zip(outputs).enumerate() {
            let response = tokenizer.decode(&generated, true)?;
            let answer = answers[offset];
            let predicted = task.extract_answer(&response);
            let prediction = Prediction {
                index: first + offset,
                instruction: example.instruction.clone(),
                answer: answer.to_string(),
                correct: predicted == Some(answer),
                predicted: predicted.map(String::from),
                response,
            };
            correct += usize::from(prediction.correct);
            on_prediction(&prediction)?;
        }
    }
    Ok(LmEvalReport {
        task: task.name().to_string(),
        correct,
        total: examples.len(),
        accuracy: correct as f64 / examples.len().max(1) as f64,
    })
}
