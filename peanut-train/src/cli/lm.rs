//! The causal-LM subcommands: `train lm`, `eval lm` and `generate`.

use std::path::PathBuf;
use std::sync::LazyLock;

use clap::Args;

use super::{AdapterShapeArgs, ExecutionArgs, values};
use crate::data::instruct::Task;
use crate::error::Result;
use crate::jobs::{EvalLmJob, GenerateJob, LmJob, train_lm_job};
use crate::schedule::Decay;
use crate::train::lm::{self as lm_train, LmEvalReport, LmTrainConfig};
use crate::train::{Method, RunOptions};

/// The defaults of `train lm`: the library's [`LmTrainConfig::default`], so that a value is
/// written once.
static LM: LazyLock<LmTrainConfig> = LazyLock::new(LmTrainConfig::default);

/// The adapter options of `train lm` (defaults: the paper's LLM setting).
#[derive(Args, Debug, Clone)]
pub struct LmAdapterArgs {
    /// What trains: peanut or lora adapters, or every parameter (full). `head` is for image
    /// classifiers only.
    #[arg(long, value_enum, default_value = "peanut")]
    pub method: Method,
    /// Adapter rank (PEANuT's hidden width).
    #[arg(long, default_value_t = LM.adapter.rank, value_parser = values::at_least_one)]
    pub rank: usize,
    /// Depth, activation and scaling.
    #[command(flatten)]
    pub shape: AdapterShapeArgs,
    /// LoRA alpha (scale alpha / rank; LLM-Adapters uses 64 at rank 32).
    #[arg(long, default_value_t = LM.adapter.lora_alpha, value_parser = values::positive_f64)]
    pub lora_alpha: f64,
    /// Linears to adapt, by name or `*` pattern (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = lm_train::DEFAULT_TARGETS)]
    pub targets: Vec<String>,
    /// Only these block indices (comma-separated; default all).
    #[arg(long, value_delimiter = ',')]
    pub layers: Vec<usize>,
}

/// Options of `peanut train lm`.
#[derive(Args, Debug, Clone)]
// Negative numbers are values (`--rank -1` gets the range message, not "unexpected argument").
#[command(allow_negative_numbers = true)]
pub struct TrainLmArgs {
    /// Instruction data in LLM-Adapters' format: a JSON array (or JSON lines) of objects with
    /// `instruction`, optional `input` and `output` (commonsense_170k.json, MetaMathQA).
    #[arg(long)]
    pub data: PathBuf,
    /// Pretrained causal LM: a local directory with transformers' `config.json`, safetensors
    /// weights and `tokenizer.json` (LlamaForCausalLM or Qwen2ForCausalLM).
    #[arg(long)]
    pub model: PathBuf,
    /// Run directory: checkpoints, `run.json`, metrics, and the exported adapter in `export/`.
    #[arg(long, default_value = "runs/peanut-lm")]
    pub output_dir: PathBuf,
    /// Which adapters, where.
    #[command(flatten)]
    pub adapter: LmAdapterArgs,
    /// Epochs.
    #[arg(long, default_value_t = LM.epochs, value_parser = values::at_least_one)]
    pub epochs: usize,
    /// Sequences per forward/backward pass.
    #[arg(long, default_value_t = LM.batch_size, value_parser = values::at_least_one)]
    pub batch_size: usize,
    /// Passes averaged per optimizer step (effective batch = batch-size × this).
    #[arg(long, default_value_t = LM.grad_accumulation, value_parser = values::at_least_one)]
    pub grad_accumulation: usize,
    /// Peak learning rate.
    #[arg(long, default_value_t = LM.learning_rate, value_parser = values::positive_f64)]
    pub lr: f64,
    /// AdamW weight decay.
    #[arg(long, default_value_t = LM.weight_decay, value_parser = values::non_negative_f64)]
    pub weight_decay: f64,
    /// Optimizer steps of linear warmup (LLM-Adapters: 100).
    #[arg(long, default_value_t = LM.warmup_steps)]
    pub warmup_steps: usize,
    /// Decay after warmup.
    #[arg(long, value_enum, default_value = "linear")]
    pub decay: Decay,
    /// Clip the global gradient norm to this value (transformers' default 1); 0 turns it off.
    #[arg(long, default_value_t = LM.clip_grad_norm.unwrap_or(0.0))]
    pub clip_grad_norm: f32,
    /// Seed of adapters, validation split and data order.
    #[arg(long, default_value_t = LM.seed)]
    pub seed: u64,
    /// Most tokens per example (prompt + response + EOS); longer examples are truncated and
    /// those left without a response token dropped.
    #[arg(long, default_value_t = LM.cutoff_len)]
    pub cutoff_len: usize,
    /// Also put the loss on the prompt (the paper trains on responses only).
    #[arg(long)]
    pub train_on_inputs: bool,
    /// Examples held out for validation (LLM-Adapters' val_set_size); 0 for none.
    #[arg(long, default_value_t = LM.val_size)]
    pub val_size: usize,
    /// How the run directory is opened, and what else goes in it.
    #[command(flatten)]
    pub run_dir: super::RunDirArgs,
    /// How the run executes: devices, gradient checkpointing, precision.
    #[command(flatten)]
    pub execution: ExecutionArgs,
}

impl TrainLmArgs {
    /// The job these options describe.
    pub fn job(&self) -> LmJob {
        let config = self.config();
        LmJob {
            data: self.data.clone(),
            model: self.model.clone(),
            run: RunOptions {
                dir: self.output_dir.clone(),
                resume: self.run_dir.resume,
                overwrite: self.run_dir.overwrite,
                label: format!("{} lm", config.method.name()),
                model: self.model.display().to_string(),
                save_initial: self.run_dir.save_initial,
            },
            config,
            merged: self.run_dir.merged,
            devices: self.execution.devices.clone(),
        }
    }

    /// The training configuration these options describe.
    pub fn config(&self) -> LmTrainConfig {
        let adapter = &self.adapter;
        LmTrainConfig {
            method: adapter.method,
            adapter: adapter.shape.options(adapter.rank, adapter.lora_alpha),
            targets: adapter.targets.clone(),
            layers: adapter.layers.clone(),
            epochs: self.epochs,
            batch_size: self.batch_size,
            grad_accumulation: self.grad_accumulation,
            learning_rate: self.lr,
            weight_decay: self.weight_decay,
            warmup_steps: self.warmup_steps,
            decay: self.decay,
            clip_grad_norm: (self.clip_grad_norm != 0.0).then_some(self.clip_grad_norm),
            seed: self.seed,
            cutoff_len: self.cutoff_len,
            train_on_inputs: self.train_on_inputs,
            val_size: self.val_size,
            precision: self.execution.precision,
            quantize: self.execution.quantize,
            recompute_layers: self.execution.checkpointing,
        }
    }
}

/// Options of `peanut eval lm`.
#[derive(Args, Debug, Clone)]
// Negative numbers are values (`--rank -1` gets the range message, not "unexpected argument").
#[command(allow_negative_numbers = true)]
pub struct EvalLmArgs {
    /// Test file in LLM-Adapters' format (`instruction`, `answer`), e.g.
    /// `dataset/boolq/test.json`.
    #[arg(long)]
    pub data: PathBuf,
    /// The base model directory (`config.json`, safetensors, `tokenizer.json`).
    #[arg(long)]
    pub model: PathBuf,
    /// An adapter directory (either format) or an export directory written by `train lm`.
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// The answer format; by default told from the file name or its directory's (`boolq`,
    /// `piqa`, `social_i_qa`, `hellaswag`, `winogrande`, `ARC-Easy`, `ARC-Challenge`,
    /// `openbookqa`).
    #[arg(long, value_enum)]
    pub task: Option<Task>,
    /// Most tokens generated per answer (LLM-Adapters: 32).
    #[arg(long, default_value_t = 32, value_parser = values::at_least_one)]
    pub max_new_tokens: usize,
    /// Evaluate only the first this many examples.
    #[arg(long, value_parser = values::at_least_one)]
    pub limit: Option<usize>,
    /// Prompts generated together (left-padded, with an attention mask; each answer is the one
    /// the prompt gets alone). On a CPU, 8 answer about 4× as many prompts per second as 1.
    #[arg(long, default_value_t = 8, value_parser = values::at_least_one)]
    pub batch_size: usize,
    /// Batches generated side by side, each on its own thread. By default one per core (at
    /// most 2) on the CPU, where a batch's matrix-vector products run on one core, and 1 on a
    /// GPU.
    #[arg(long, value_parser = values::at_least_one)]
    pub workers: Option<usize>,
    /// Write every prediction (question, answer, response, extracted answer, correct) as
    /// JSON lines to this file.
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// Store the base's frozen linear weights quantized as they are read: `int8` or `nf4` (as
    /// `train --quantize`). The adapter is applied beside them as low-rank factors.
    #[arg(long, value_parser = values::quantization)]
    pub quantize: Option<peanut::Quantization>,
}

/// Options of `peanut generate`.
#[derive(Args, Debug, Clone)]
// Negative numbers are values (`--rank -1` gets the range message, not "unexpected argument").
#[command(allow_negative_numbers = true)]
#[command(group(clap::ArgGroup::new("text").required(true).args(["prompt", "instruction"])))]
pub struct GenerateArgs {
    /// The base model directory (`config.json`, safetensors, `tokenizer.json`).
    #[arg(long)]
    pub model: PathBuf,
    /// An adapter directory (either format) or an export directory written by `train lm`,
    /// loaded on top of the base model.
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// Raw text to continue.
    #[arg(long)]
    pub prompt: Option<String>,
    /// An instruction, wrapped in the training prompt template.
    #[arg(long)]
    pub instruction: Option<String>,
    /// Context for `--instruction` (the template's `### Input:` section).
    #[arg(long, requires = "instruction")]
    pub input: Option<String>,
    /// Most tokens to generate (default 128, or what is left of the model's context after the
    /// prompt when that is less; a larger explicit value than fits is refused).
    #[arg(long, value_parser = values::at_least_one)]
    pub max_new_tokens: Option<usize>,
    /// Sample from the smallest set of tokens whose probability reaches this (top-p);
    /// greedy decoding when absent.
    #[arg(long)]
    pub top_p: Option<f64>,
    /// Logit divisor for top-p sampling.
    #[arg(long, default_value_t = 1.0)]
    pub temperature: f64,
    /// Seed of top-p sampling.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Store the base's frozen linear weights quantized as they are read: `int8` or `nf4` (as
    /// `train --quantize`). The adapter is applied beside them as low-rank factors.
    #[arg(long, value_parser = values::quantization)]
    pub quantize: Option<peanut::Quantization>,
}

impl EvalLmArgs {
    /// The job these options describe.
    pub fn job(&self) -> EvalLmJob {
        EvalLmJob {
            data: self.data.clone(),
            model: self.model.clone(),
            adapter: self.adapter.clone(),
            task: self.task,
            max_new_tokens: self.max_new_tokens,
            limit: self.limit,
            batch_size: self.batch_size,
            workers: self.workers,
            output: self.output.clone(),
            quantize: self.quantize,
        }
    }
}

impl GenerateArgs {
    /// The job these options describe.
    pub fn job(&self) -> GenerateJob {
        GenerateJob {
            model: self.model.clone(),
            adapter: self.adapter.clone(),
            prompt: self.prompt.clone(),
            instruction: self.instruction.clone(),
            input: self.input.clone(),
            max_new_tokens: self.max_new_tokens,
            top_p: self.top_p,
            temperature: self.temperature,
            seed: self.seed,
            quantize: self.quantize,
        }
    }
}

/// `peanut train lm` ([`train_lm_job`]).
///
/// # Errors
/// As [`train_lm_job`].
pub fn train_lm(args: TrainLmArgs) -> Result<()> {
    train_lm_job(&args.job())
}

/// `peanut eval lm` ([`EvalLmJob::run`]): prints the accuracy as one JSON object and returns
/// it.
///
/// # Errors
/// As [`EvalLmJob::run`].
pub fn eval_lm(args: EvalLmArgs) -> Result<LmEvalReport> {
    let report = args.job().run()?;
    println!(
        "{}",
        serde_json::to_string(&report).expect("report serializes")
    );
    Ok(report)
}

/// The text `peanut generate` prints ([`GenerateJob::run`]).
///
/// # Errors
/// As [`GenerateJob::run`].
pub fn generate_text(args: &GenerateArgs) -> Result<String> {
    args.job().run()
}

/// `peanut generate`: prints [`generate_text`].
///
/// # Errors
/// As [`GenerateJob::run`].
pub fn generate(args: GenerateArgs) -> Result<()> {
    println!("{}", generate_text(&args)?);
    Ok(())
}
