//! The `peanut` command line: argument types (clap), the subcommand tree ([`Cli`]), how each
//! subcommand's options become a job of [`crate::jobs`], and what it prints ([`run`]). The
//! binary (`src/bin/peanut.rs`) only parses and calls [`run`], so tests can call the same
//! functions.

mod infer;
mod lm;
pub mod values;

use std::path::PathBuf;
use std::sync::LazyLock;

use clap::{Args, Parser, Subcommand};
use peanut::Activation;

use crate::data::Normalization;
use crate::error::Result;
use crate::hub;
use crate::schedule::Decay;
use crate::train::{self, AdapterOptions, ImageTrainConfig, Method, RunOptions};

pub use crate::jobs::{ImageJob, LmJob, TrainImageOutcome, train_image_job, train_lm_job};
pub use infer::{
    ConvertArgs, EvalImageArgs, InfoArgs, MergeArgs, PredictImageArgs, ProcessorArgs, ResampleArg,
    convert, eval_image, info, merge, predict_image,
};
pub use lm::{
    EvalLmArgs, GenerateArgs, LmAdapterArgs, TrainLmArgs, eval_lm, generate, generate_text,
    train_lm,
};

/// PEANuT (weight-aware neural tweakers) and LoRA adapters on burn.
///
/// Every option defaults to the paper's setting for its task: Stanford Cars on ViT-B/16
/// in21k for images (q,v targets, rank 7, depth 2, ReLU, 10 epochs, lr 1e-2 for head and
/// adapters, weight decay 4e-5, batch 64 × accumulation 4); commonsense_170k / MetaMathQA on
/// LLaMA for language models (q,k,v,up,down targets, rank 32, 1 epoch, lr 3e-4, cutoff 256,
/// loss on responses only).
#[derive(Parser, Debug)]
#[command(name = "peanut", version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands of `peanut`.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Fine-tune a model.
    #[command(subcommand)]
    Train(TrainCommand),
    /// Evaluate a (fine-tuned) model.
    #[command(subcommand)]
    Eval(EvalCommand),
    /// Predict with a fine-tuned model.
    #[command(subcommand)]
    Predict(PredictCommand),
    /// Generate text with a causal LM, optionally with a trained adapter.
    Generate(GenerateArgs),
    /// Write a model with its adapters merged as a Hugging Face checkpoint.
    Merge(MergeArgs),
    /// Convert an adapter between this workspace's format and Hugging Face peft's.
    Convert(ConvertArgs),
    /// Show a model's adaptable linears, the targets a setting selects and parameter counts.
    Info(InfoArgs),
}

/// `peanut train …`.
#[derive(Subcommand, Debug)]
pub enum TrainCommand {
    /// Image classification (Stanford Cars layouts, ImageFolder, parquet) with a ViT.
    Image(TrainImageArgs),
    /// Causal-LM instruction tuning on LLM-Adapters JSON (commonsense_170k, MetaMathQA).
    Lm(TrainLmArgs),
}

/// `peanut eval …`.
#[derive(Subcommand, Debug)]
pub enum EvalCommand {
    /// Top-1 / top-5 accuracy on an image dataset's test split.
    Image(EvalImageArgs),
    /// Accuracy of generated answers on an LLM-Adapters test file (BoolQ, PIQA, SIQA,
    /// HellaSwag, WinoGrande, ARC-e/c, OBQA).
    Lm(EvalLmArgs),
}

/// `peanut predict …`.
#[derive(Subcommand, Debug)]
pub enum PredictCommand {
    /// Top-k labels and logits for image files, as JSON.
    Image(PredictImageArgs),
}

/// Runs a parsed command line.
///
/// # Errors
/// Whatever the subcommand fails with.
pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Train(TrainCommand::Image(args)) => train_image(args),
        Command::Train(TrainCommand::Lm(args)) => train_lm(args),
        Command::Eval(EvalCommand::Lm(args)) => eval_lm(args).map(|_| ()),
        Command::Generate(args) => generate(args),
        Command::Eval(EvalCommand::Image(args)) => {
            let report = eval_image(args)?;
            let json = serde_json::json!({
                "top1": report.top1, "top5": report.top5, "loss": report.loss,
                "images": report.count, "unreadable": report.skipped,
            });
            println!("{json}");
            Ok(())
        }
        Command::Predict(PredictCommand::Image(args)) => {
            let predictions = predict_image(args)?;
            println!(
                "{}",
                serde_json::to_string(&predictions).expect("predictions serialize")
            );
            Ok(())
        }
        Command::Merge(args) => {
            merge(args.clone())?;
            println!("wrote {}", args.output.display());
            Ok(())
        }
        Command::Convert(args) => {
            println!("{}", convert(args)?);
            Ok(())
        }
        Command::Info(args) => {
            println!("{}", info(args)?);
            Ok(())
        }
    }
}

/// The defaults of `train image` (and of the adapter shape every task shares): the library's
/// [`ImageTrainConfig::default`], so that a value is written once.
static IMAGE: LazyLock<ImageTrainConfig> = LazyLock::new(ImageTrainConfig::default);

/// The adapter options whose defaults every task shares.
#[derive(Args, Debug, Clone)]
pub struct AdapterShapeArgs {
    /// PEANuT depth, counted in linear maps: 2, 4, 6, …
    #[arg(long, default_value_t = IMAGE.adapter.depth)]
    pub depth: usize,
    /// PEANuT activation (relu, gelu, gelu_pytorch_tanh, silu, tanh, sigmoid, leaky_relu).
    #[arg(long, default_value = "relu", value_parser = parse_activation)]
    pub activation: Activation,
    /// PEANuT scaling s.
    #[arg(long, default_value_t = IMAGE.adapter.scaling)]
    pub scaling: f64,
}

impl AdapterShapeArgs {
    /// The adapter configuration with these options and `rank`, `lora_alpha`.
    pub fn options(&self, rank: usize, lora_alpha: f64) -> AdapterOptions {
        AdapterOptions {
            rank,
            depth: self.depth,
            activation: self.activation,
            scaling: self.scaling,
            lora_alpha,
        }
    }
}

/// An `--activation` value: a peft / transformers activation name.
fn parse_activation(name: &str) -> std::result::Result<Activation, String> {
    Activation::from_peft_name(name).ok_or_else(|| {
        format!(
            "`{name}` is not one of relu, gelu, gelu_pytorch_tanh, silu, tanh, sigmoid, \
             leaky_relu, linear"
        )
    })
}

/// The adapter options shared by `train image` and `info` (defaults: the paper's ViT setting).
#[derive(Args, Debug, Clone)]
pub struct AdapterArgs {
    /// What trains: peanut or lora adapters (plus the head), the head alone, or everything.
    #[arg(long, value_enum, default_value = "peanut")]
    pub method: Method,
    /// Adapter rank (PEANuT's hidden width).
    #[arg(long, default_value_t = IMAGE.adapter.rank, value_parser = values::at_least_one)]
    pub rank: usize,
    /// Depth, activation and scaling.
    #[command(flatten)]
    pub shape: AdapterShapeArgs,
    /// LoRA alpha (scale alpha / rank).
    #[arg(long, default_value_t = IMAGE.adapter.lora_alpha, value_parser = values::positive_f64)]
    pub lora_alpha: f64,
    /// Linears to adapt, by name or `*` pattern (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = train::image::DEFAULT_TARGETS)]
    pub targets: Vec<String>,
    /// Only these block indices (comma-separated; default all).
    #[arg(long, value_delimiter = ',')]
    pub layers: Vec<usize>,
}

impl AdapterArgs {
    /// The adapter configuration these options describe.
    pub fn options(&self) -> AdapterOptions {
        self.shape.options(self.rank, self.lora_alpha)
    }
}

/// Options of `peanut train image`.
#[derive(Args, Debug, Clone)]
// Negative numbers are values (`--rank -1` gets the range message, not "unexpected argument").
#[command(allow_negative_numbers = true)]
pub struct TrainImageArgs {
    /// Dataset directory: Stanford Cars (devkit/torchvision or Kaggle layout), Hugging Face
    /// parquet files, or an ImageFolder with `train/` and `test/` (or `val/`); detected. Or a
    /// Hugging Face dataset id (`Multimodal-Fatima/StanfordCars_train` brings `_test` along),
    /// read from the Hugging Face cache or downloaded into it.
    #[arg(long)]
    pub data_dir: PathBuf,
    /// Pretrained ViT: a directory with transformers' `config.json` and `model.safetensors`, or
    /// a Hugging Face id (`org/name[@revision]`), read from the cache or downloaded into it.
    #[arg(long, default_value = hub::VIT_B16_IN21K)]
    pub model: PathBuf,
    /// Run directory: checkpoints, `run.json`, metrics, and the exported adapter in `export/`.
    #[arg(long, default_value = "runs/peanut")]
    pub output_dir: PathBuf,
    /// Which adapters, where.
    #[command(flatten)]
    pub adapter: AdapterArgs,
    /// Epochs.
    #[arg(long, default_value_t = IMAGE.epochs, value_parser = values::at_least_one)]
    pub epochs: usize,
    /// Images per forward/backward pass.
    #[arg(long, default_value_t = IMAGE.batch_size, value_parser = values::at_least_one)]
    pub batch_size: usize,
    /// Passes accumulated per optimizer step (effective batch = batch-size × this).
    #[arg(long, default_value_t = IMAGE.grad_accumulation, value_parser = values::at_least_one)]
    pub grad_accumulation: usize,
    /// Peak learning rate of the classifier head.
    #[arg(long, default_value_t = IMAGE.head_lr, value_parser = values::positive_f64)]
    pub head_lr: f64,
    /// Peak learning rate of the adapters (of the backbone for `--method full`).
    #[arg(long, default_value_t = IMAGE.adapter_lr, value_parser = values::positive_f64)]
    pub adapter_lr: f64,
    /// AdamW weight decay.
    #[arg(long, default_value_t = IMAGE.weight_decay, value_parser = values::non_negative_f64)]
    pub weight_decay: f64,
    /// Fraction of steps of linear warmup.
    #[arg(long, default_value_t = IMAGE.warmup_ratio)]
    pub warmup_ratio: f64,
    /// Decay after warmup.
    #[arg(long, value_enum, default_value = "linear")]
    pub decay: Decay,
    /// Clip the global gradient norm to this value (off by default, as in the paper).
    #[arg(long)]
    pub clip_grad_norm: Option<f32>,
    /// Seed of adapters, head, data order and augmentation.
    #[arg(long, default_value_t = IMAGE.seed)]
    pub seed: u64,
    /// Input side in pixels.
    #[arg(long, default_value_t = IMAGE.image_size, value_parser = values::image_size)]
    pub image_size: u32,
    /// Train without RandomResizedCrop + flip (Resize + CenterCrop instead).
    #[arg(long)]
    pub no_augment: bool,
    /// How the run directory is opened, and what else goes in it.
    #[command(flatten)]
    pub run_dir: RunDirArgs,
    /// How the run executes: devices, gradient checkpointing, precision.
    #[command(flatten)]
    pub execution: ExecutionArgs,
}

/// How a training run opens its `--output-dir`, and whether it also writes a merged model
/// (`train image` and `train lm`).
#[derive(Args, Debug, Clone, Default)]
pub struct RunDirArgs {
    /// Continue the run in `--output-dir` from its last complete checkpoint (or finish its
    /// export); refused when the run was started with other options.
    #[arg(long, conflicts_with = "overwrite")]
    pub resume: bool,
    /// Start a new run in a `--output-dir` that holds an earlier one, replacing it.
    #[arg(long)]
    pub overwrite: bool,
    /// Also write the merged model (transformers format; a language model with its tokenizer)
    /// to `<output-dir>/merged`: what `peanut merge` writes from the run's export.
    #[arg(long)]
    pub merged: bool,
    /// Also write the run's starting point to `<output-dir>/initial/`: the adapters (and head)
    /// before the first update in peft's format, and every epoch's example order
    /// (`order.json`), to train another implementation from the same draws.
    #[arg(long, conflicts_with = "resume")]
    pub save_initial: bool,
}

/// Where and how a training run computes (`train image` and `train lm`).
#[derive(Args, Debug, Clone)]
pub struct ExecutionArgs {
    /// Train data-parallel on several devices: `auto` (one GPU; on the CPU one worker per core,
    /// up to 2, dividing the batch), a count (`2`), or `cuda:0,1`, `wgpu:0,1` (GPUs by index),
    /// `cpu:2` (workers sharing the CPU). Each device takes batch-size / devices examples per
    /// step, so the run computes what one device would.
    #[arg(long, default_value = "auto", value_parser = values::devices)]
    pub devices: train::DeviceSpec,
    /// Gradient checkpointing: keep only each transformer block's input and recompute the
    /// block's activations in the backward pass (memory for one block's activations instead
    /// of all of them, for one more forward pass; the same gradients up to float rounding).
    #[arg(long)]
    pub checkpointing: bool,
    /// Precision of the frozen base weights: f32, f16 or bf16. Their matrix products run in
    /// it; adapters, head, norms and the loss stay f32.
    #[arg(long, default_value = "f32", value_parser = values::precision)]
    pub precision: peanut::Precision,
    /// Store the frozen linear weights quantized by blocks of 64: `int8` (absmax, 1.06 bytes a
    /// weight) or `nf4` (4-bit NormalFloat as QLoRA, 0.56 bytes), quantized as they are read.
    /// Their products dequantize inside the operation; the embeddings follow --precision.
    /// Adapter runs only (not --method full); CPU and CUDA builds.
    #[arg(long, value_parser = values::quantization)]
    pub quantize: Option<peanut::Quantization>,
}

impl Default for ExecutionArgs {
    /// `--devices auto`, no checkpointing, f32.
    fn default() -> Self {
        Self {
            devices: train::DeviceSpec::default(),
            checkpointing: false,
            precision: peanut::Precision::F32,
            quantize: None,
        }
    }
}

impl TrainImageArgs {
    /// The job these options describe.
    pub fn job(&self) -> ImageJob {
        ImageJob {
            data_dir: self.data_dir.clone(),
            model: self.model.clone(),
            run: RunOptions {
                dir: self.output_dir.clone(),
                resume: self.run_dir.resume,
                overwrite: self.run_dir.overwrite,
                label: self.adapter.method.name().into(),
                model: self.model.display().to_string(),
                save_initial: self.run_dir.save_initial,
            },
            config: self.config(),
            merged: self.run_dir.merged,
            devices: self.execution.devices.clone(),
        }
    }

    /// The training configuration these options describe.
    pub fn config(&self) -> ImageTrainConfig {
        ImageTrainConfig {
            method: self.adapter.method,
            adapter: self.adapter.options(),
            targets: self.adapter.targets.clone(),
            layers: self.adapter.layers.clone(),
            epochs: self.epochs,
            batch_size: self.batch_size,
            grad_accumulation: self.grad_accumulation,
            head_lr: self.head_lr,
            adapter_lr: self.adapter_lr,
            weight_decay: self.weight_decay,
            warmup_ratio: self.warmup_ratio,
            decay: self.decay,
            clip_grad_norm: self.clip_grad_norm,
            seed: self.seed,
            image_size: self.image_size,
            augment: !self.no_augment,
            normalization: Normalization::VIT,
            precision: self.execution.precision,
            quantize: self.execution.quantize,
            recompute_layers: self.execution.checkpointing,
        }
    }
}

/// `peanut train image`.
pub fn train_image(args: TrainImageArgs) -> Result<()> {
    train_image_run(args).map(|_| ())
}

/// `peanut train image`, returning the test accuracies and the export directory.
pub fn train_image_run(args: TrainImageArgs) -> Result<TrainImageOutcome> {
    train_image_job(&args.job())
}
