//! The causal-LM subcommands: `train lm`, `eval lm` and `generate`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use clap::Args;
use peanut_models::llama::{GenerationConfig, LlamaConfig, Sampling, Tokenizer};
use peanut_models::{AdaptableModel, Llama};

use super::{AdapterShapeArgs, ExecutionArgs, adapter_dir, resolve_model_dir, values};
use burn::tensor::backend::AutodiffBackend;

use crate::backend::{self, CheckpointedTrainBackend, Selected, TrainBackend};
use crate::data::instruct::{self, Instruction, Task};
use crate::error::{Result, TrainError};
use crate::schedule::Decay;
use crate::train::lm::{self as lm_train, LmEvalReport, LmTrainConfig};
use crate::train::{self, Checked, Method, RunOptions};

const MODEL_HINT: &str = "pass a Hugging Face id or a local directory holding transformers' config.json, the \
     safetensors weights and tokenizer.json of a LlamaForCausalLM or Qwen2ForCausalLM model \
     (download it with `huggingface-cli download` on a machine with network access)";

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

/// Everything a `train lm` run needs, built once, from the command line
/// ([`TrainLmArgs::job`]) or from Rust code ([`LmJob::new`]), and only read afterwards.
#[derive(Debug, Clone)]
pub struct LmJob {
    /// The instruction data (LLM-Adapters JSON or JSON lines).
    pub data: PathBuf,
    /// The pretrained causal LM: a directory or a Hugging Face id (as `--model`).
    pub model: PathBuf,
    /// The run directory and how to open it (`--output-dir`, `--resume`, `--overwrite`).
    pub run: RunOptions,
    /// What the run computes.
    pub config: LmTrainConfig,
    /// Also write the merged model to `<run directory>/merged`.
    pub merged: bool,
    /// The devices to train on (`--devices`).
    pub devices: train::DeviceSpec,
    /// Gradient checkpointing (`--checkpointing`).
    pub checkpointing: bool,
}

impl LmJob {
    /// The paper's LLM recipe ([`LmTrainConfig::default`]) of `model` on `data`, in the new run
    /// directory `output_dir`, on one device.
    pub fn new(
        data: impl Into<PathBuf>,
        model: impl Into<PathBuf>,
        output_dir: impl Into<PathBuf>,
    ) -> Self {
        let config = LmTrainConfig::default();
        let model = model.into();
        Self {
            data: data.into(),
            run: RunOptions {
                label: format!("{} lm", config.method.name()),
                model: model.display().to_string(),
                ..RunOptions::new(output_dir)
            },
            model,
            config,
            merged: false,
            devices: train::DeviceSpec::default(),
            checkpointing: false,
        }
    }
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
            },
            config,
            merged: self.run_dir.merged,
            devices: self.execution.devices.clone(),
            checkpointing: self.execution.checkpointing,
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
}

fn load_tokenizer(model: &Path) -> Result<Tokenizer> {
    let path = model.join("tokenizer.json");
    if !path.is_file() {
        return Err(TrainError::io(
            "cannot read",
            &path,
            std::io::Error::new(std::io::ErrorKind::NotFound, MODEL_HINT),
        ));
    }
    Ok(Tokenizer::from_file(&path)?)
}

fn copy_tokenizer(model: &Path, dir: &Path) -> Result<()> {
    let to = dir.join("tokenizer.json");
    std::fs::copy(model.join("tokenizer.json"), &to)
        .map(|_| ())
        .map_err(|e| TrainError::io("cannot write", &to, e))
}

/// The base model with `adapter` (an adapter or export directory) loaded and merged, and its
/// tokenizer.
fn inference_llama(model: &Path, adapter: Option<&Path>) -> Result<(Llama<Selected>, Tokenizer)> {
    let model = &resolve_model_dir(model, MODEL_HINT)?;
    let tokenizer = load_tokenizer(model)?;
    let mut llama = Llama::<Selected>::from_pretrained(model, &backend::device())?;
    if let Some(dir) = adapter {
        if let Some(manifest) = train::ExportManifest::find(dir)? {
            manifest.check_base(&llama, dir)?;
        }
        llama.load_adapters(&adapter_dir(dir))?;
        llama.merge_adapters();
    }
    Ok((llama, tokenizer))
}

/// `peanut train lm`.
pub fn train_lm(args: TrainLmArgs) -> Result<()> {
    train_lm_job(&args.job())
}

/// Runs a `train lm` job: checks it, loads the model and the data, trains (or resumes) and
/// exports the adapters (or, for `full`, the model with its tokenizer) to
/// `<run directory>/export`.
///
/// # Errors
/// Invalid options, unusable data or model, a refused run directory, or a diverging run.
pub fn train_lm_job(job: &LmJob) -> Result<()> {
    let mut config = job.config.clone().check()?;
    let devices = backend::training_devices(&job.devices, config.batch_size)?;
    let model_dir = resolve_model_dir(&job.model, MODEL_HINT)?;
    // An example never outgrows the model's context: the cutoff is lowered to it.
    let context =
        LlamaConfig::from_hf_file(&model_dir.join("config.json"))?.max_position_embeddings;
    if config.cutoff_len > context {
        eprintln!(
            "--cutoff-len {} is longer than the model's context ({context} tokens, \
             `max_position_embeddings`); examples are cut at {context} tokens",
            config.cutoff_len
        );
        let mut lowered = (*config).clone();
        lowered.cutoff_len = context;
        config = lowered.check()?;
    }
    let config = &config;
    train::check_run_dir(&job.run.dir, &job.data, &job.run.model)?;
    let tokenizer = load_tokenizer(&model_dir)?;
    // The training backend is a type: gradient checkpointing picks the other one.
    let trained = if job.checkpointing {
        train_lm_on::<CheckpointedTrainBackend>(job, config, &model_dir, &tokenizer, &devices)?
    } else {
        train_lm_on::<TrainBackend>(job, config, &model_dir, &tokenizer, &devices)?
    };
    println!("{} trainable parameters", trained.trainable_params);
    let export_dir = job.run.dir.join("export");
    let written = train::export_atomically(&export_dir, |staging| {
        let mut written = lm_train::export_lm(&trained.model, staging, job.model.to_str())?;
        if config.method == Method::Full {
            for path in &written {
                copy_tokenizer(&model_dir, path)?;
            }
        } else {
            let manifest = train::ExportManifest::of(&trained.model, &job.run.model, None);
            written.push(manifest.write(staging)?);
        }
        Ok(written)
    })?;
    for path in written {
        println!("wrote {}", path.display());
    }
    if job.merged {
        let merged = job.run.dir.join("merged");
        if config.method == Method::Full {
            let model = trained.model;
            train::export_atomically(&merged, |staging| {
                model.save_merged(staging)?;
                copy_tokenizer(&model_dir, staging)?;
                Ok(vec![])
            })?;
            println!("wrote {}", merged.display());
        } else {
            // What `peanut merge` writes from this export: the base's own f32 weights with the
            // adapters merged, whatever `--precision` the run had.
            drop(trained.model);
            super::merge(super::MergeArgs {
                model: model_dir.clone(),
                adapter: export_dir.clone(),
                output: merged,
                processor: super::ProcessorArgs::default(),
            })?;
        }
    }
    Ok(())
}

/// Loads the model and data of `train lm` on training backend `B` and trains.
fn train_lm_on<
    B: AutodiffBackend<InnerBackend = Selected, Device = burn::tensor::Device<Selected>>,
>(
    job: &LmJob,
    config: &Checked<LmTrainConfig>,
    model_dir: &Path,
    tokenizer: &Tokenizer,
    devices: &[burn::tensor::Device<Selected>],
) -> Result<lm_train::TrainedLm<Selected>> {
    train::check_precision::<B>(&devices[0], config.precision)?;
    let model = Llama::<B>::from_pretrained_in(model_dir, &devices[0], config.precision)?;
    let data =
        lm_train::load_instructions(&job.data, tokenizer, model.config.eos_token_id, config)?;
    println!(
        "{}: {} examples, {} train / {} validation ({} dropped: no response token within {} \
         tokens)",
        data.path.display(),
        data.examples,
        data.train.len(),
        data.valid.len(),
        data.dropped,
        config.cutoff_len
    );
    lm_train::train_lm_on(model, &data, config, &job.run, devices)
}

/// `peanut eval lm`: prints the accuracy as one JSON object and returns it.
pub fn eval_lm(args: EvalLmArgs) -> Result<LmEvalReport> {
    let task = match args.task {
        Some(task) => task,
        None => Task::from_path(&args.data)?,
    };
    let mut examples = instruct::read(&args.data)?;
    if let Some(limit) = args.limit {
        examples.truncate(limit);
    }
    let (model, tokenizer) = inference_llama(&args.model, args.adapter.as_deref())?;
    let generation = GenerationConfig {
        eos_token_id: model.config.eos_token_id,
        ..GenerationConfig::greedy(args.max_new_tokens)
    };
    let mut output = match &args.output {
        Some(path) => {
            if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent)
                    .map_err(|e| TrainError::io("cannot create", parent, e))?;
            }
            let file =
                std::fs::File::create(path).map_err(|e| TrainError::io("cannot write", path, e))?;
            Some((path, std::io::BufWriter::new(file)))
        }
        None => None,
    };
    let total = examples.len();
    let mut correct = 0;
    let report = lm_train::evaluate_lm(
        &model,
        &tokenizer,
        &examples,
        task,
        &generation,
        args.batch_size,
        args.workers.unwrap_or_else(backend::workers),
        &args.data,
        |prediction| {
            correct += usize::from(prediction.correct);
            let done = prediction.index + 1;
            if done % 100 == 0 || done == total {
                eprintln!(
                    "[{}] {done}/{total}: accuracy {:.2}%",
                    task.name(),
                    100.0 * correct as f64 / done as f64
                );
            }
            if let Some((path, writer)) = output.as_mut() {
                let line = serde_json::to_string(prediction).expect("prediction serializes");
                writeln!(writer, "{line}").map_err(|e| TrainError::io("cannot write", *path, e))?;
            }
            Ok(())
        },
    )?;
    if let Some((path, mut writer)) = output {
        writer
            .flush()
            .map_err(|e| TrainError::io("cannot write", path, e))?;
    }
    println!(
        "{}",
        serde_json::to_string(&report).expect("report serializes")
    );
    Ok(report)
}

/// The text `peanut generate` prints: the continuation of the prompt (or of the instruction
/// in the training template).
pub fn generate_text(args: &GenerateArgs) -> Result<String> {
    let prompt = match (&args.prompt, &args.instruction) {
        (Some(prompt), _) => prompt.clone(),
        (None, Some(instruction)) => instruct::prompt(&Instruction {
            instruction: instruction.clone(),
            input: args.input.clone().unwrap_or_default(),
            output: String::new(),
            answer: None,
        }),
        (None, None) => {
            return Err(TrainError::InvalidOption {
                option: "--prompt",
                reason: "pass --prompt or --instruction".into(),
            });
        }
    };
    let (model, tokenizer) = inference_llama(&args.model, args.adapter.as_deref())?;
    let sampling = match args.top_p {
        None => Sampling::Greedy,
        Some(top_p) => Sampling::TopP {
            top_p,
            temperature: args.temperature,
            seed: args.seed,
        },
    };
    let prompt_len = lm_train::encode(&tokenizer, &prompt)?.len();
    let max_new_tokens = new_tokens_within_context(
        if args.prompt.is_some() {
            "--prompt"
        } else {
            "--instruction"
        },
        prompt_len,
        args.max_new_tokens,
        model.config.max_position_embeddings,
    )?;
    let generation = GenerationConfig {
        sampling,
        eos_token_id: model.config.eos_token_id,
        ..GenerationConfig::greedy(max_new_tokens)
    };
    lm_train::complete(&model, &tokenizer, &prompt, &generation)
}

/// What `peanut generate` generates by default, at most.
const DEFAULT_NEW_TOKENS: usize = 128;

/// How many tokens `generate` may add to a prompt of `prompt_len` tokens (given as
/// `prompt_option`) in a context of `context`: `requested` when it fits, else (by default) what
/// is left.
///
/// # Errors
/// A prompt that fills the context, or a requested count past it.
fn new_tokens_within_context(
    prompt_option: &'static str,
    prompt_len: usize,
    requested: Option<usize>,
    context: usize,
) -> Result<usize> {
    let room = context.saturating_sub(prompt_len);
    if room == 0 {
        return Err(TrainError::InvalidOption {
            option: prompt_option,
            reason: format!(
                "the prompt is {prompt_len} tokens, and the model's context \
                 (`max_position_embeddings`) is {context}: nothing is left to generate; \
                 shorten it"
            ),
        });
    }
    match requested {
        Some(count) if count > room => Err(TrainError::InvalidOption {
            option: "--max-new-tokens",
            reason: format!(
                "{count} new tokens after a {prompt_len}-token prompt pass the model's context \
                 of {context} tokens; at most {room} fit"
            ),
        }),
        Some(count) => Ok(count),
        None => Ok(DEFAULT_NEW_TOKENS.min(room)),
    }
}

/// `peanut generate`.
pub fn generate(args: GenerateArgs) -> Result<()> {
    println!("{}", generate_text(&args)?);
    Ok(())
}
