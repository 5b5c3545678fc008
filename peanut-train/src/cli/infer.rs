//! Options of the inference-side subcommands (`eval image`, `predict image`, `merge`,
//! `convert`, `info`) and the jobs they describe ([`crate::jobs`]).

use std::path::PathBuf;

use clap::Args;
use peanut_models::vit::Resample;

use super::{AdapterShapeArgs, values};
use crate::error::Result;
use crate::jobs::{
    AdapterFormat, ConvertJob, ConvertReport, EvalImageJob, InfoJob, InfoReport, MergeJob,
    PredictImageJob, Prediction, ProcessorOverrides,
};
use crate::train::{self, Method};

/// PIL's resampling filters, as `--resample` takes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ResampleArg {
    /// Nearest neighbour.
    Nearest,
    /// Bilinear.
    Bilinear,
    /// Bicubic.
    Bicubic,
    /// Lanczos (3 lobes).
    Lanczos,
    /// Box.
    Box,
    /// Hamming.
    Hamming,
}

impl From<ResampleArg> for Resample {
    fn from(arg: ResampleArg) -> Self {
        match arg {
            ResampleArg::Nearest => Self::Nearest,
            ResampleArg::Bilinear => Self::Bilinear,
            ResampleArg::Bicubic => Self::Bicubic,
            ResampleArg::Lanczos => Self::Lanczos,
            ResampleArg::Box => Self::Box,
            ResampleArg::Hamming => Self::Hamming,
        }
    }
}

/// How images are prepared: the checkpoint's `preprocessor_config.json` unless overridden.
#[derive(Args, Debug, Clone, Default)]
pub struct ProcessorArgs {
    /// Input side in pixels (resize and crop scaled to it). Default: the checkpoint's
    /// `preprocessor_config.json`, else its `config.json` `image_size`.
    #[arg(long, value_parser = values::image_size)]
    pub image_size: Option<u32>,
    /// Per-channel mean in 0–1 units (3 comma-separated values, or one for all channels).
    #[arg(long, value_delimiter = ',')]
    pub image_mean: Option<Vec<f32>>,
    /// Per-channel standard deviation in 0–1 units (3 values, or one for all channels).
    #[arg(long, value_delimiter = ',')]
    pub image_std: Option<Vec<f32>>,
    /// Resize filter.
    #[arg(long, value_enum)]
    pub resample: Option<ResampleArg>,
}

/// Options of `peanut eval image`.
#[derive(Args, Debug, Clone)]
// Negative numbers are values (`--rank -1` gets the range message, not "unexpected argument").
#[command(allow_negative_numbers = true)]
pub struct EvalImageArgs {
    /// Dataset directory or hub id (as for `train image`); its test split is evaluated.
    #[arg(long)]
    pub data_dir: PathBuf,
    /// The base ViT: a directory (`config.json` + safetensors) or a Hugging Face id.
    #[arg(long)]
    pub model: PathBuf,
    /// An export directory written by `train image` (`peanut/` or `peft/`, `head.safetensors`),
    /// or a peft adapter directory (its `modules_to_save` head included).
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// Image preparation overrides.
    #[command(flatten)]
    pub processor: ProcessorArgs,
    /// Images per batch.
    #[arg(long, default_value_t = 64, value_parser = values::at_least_one)]
    pub batch_size: usize,
    /// Store the base's frozen linear weights quantized as they are read: `int8` or `nf4` (as
    /// `train --quantize`). The adapter is applied beside them as low-rank factors.
    #[arg(long, value_parser = values::quantization)]
    pub quantize: Option<peanut::Quantization>,
}

/// Options of `peanut predict image`.
#[derive(Args, Debug, Clone)]
// Negative numbers are values (`--rank -1` gets the range message, not "unexpected argument").
#[command(allow_negative_numbers = true)]
pub struct PredictImageArgs {
    /// The base ViT: a directory or a Hugging Face id.
    #[arg(long)]
    pub model: PathBuf,
    /// An export directory written by `train image`, or a peft adapter directory.
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// How many labels to report per image.
    #[arg(long, default_value_t = 5, value_parser = values::at_least_one)]
    pub top_k: usize,
    /// Image preparation overrides.
    #[command(flatten)]
    pub processor: ProcessorArgs,
    /// Image files (JPEG or PNG).
    #[arg(required = true)]
    pub images: Vec<PathBuf>,
    /// Store the base's frozen linear weights quantized as they are read: `int8` or `nf4` (as
    /// `train --quantize`). The adapter is applied beside them as low-rank factors.
    #[arg(long, value_parser = values::quantization)]
    pub quantize: Option<peanut::Quantization>,
}

/// Options of `peanut merge`.
#[derive(Args, Debug, Clone)]
// Negative numbers are values (`--rank -1` gets the range message, not "unexpected argument").
#[command(allow_negative_numbers = true)]
pub struct MergeArgs {
    /// The base model (ViT or LLaMA-style, by its `config.json`): a directory or a Hugging
    /// Face id.
    #[arg(long)]
    pub model: PathBuf,
    /// An export directory written by `train image` / `train lm`, or an adapter directory.
    #[arg(long)]
    pub adapter: PathBuf,
    /// Where the merged transformers checkpoint goes.
    #[arg(long)]
    pub output: PathBuf,
    /// Image preparation (ViT): `--image-size` is the size the adapters were trained at; the
    /// merged checkpoint and its `preprocessor_config.json` are written for it.
    #[command(flatten)]
    pub processor: ProcessorArgs,
}

/// Options of `peanut convert`.
#[derive(Args, Debug, Clone)]
// Negative numbers are values (`--rank -1` gets the range message, not "unexpected argument").
#[command(allow_negative_numbers = true)]
pub struct ConvertArgs {
    /// Adapter directory in either format (detected).
    #[arg(long)]
    pub input: PathBuf,
    /// Output directory.
    #[arg(long)]
    pub output: PathBuf,
    /// Format to write.
    #[arg(long, value_enum)]
    pub to: AdapterFormat,
    /// The base model the adapter belongs to, whose `config.json` tells the module naming;
    /// default: guessed from the adapter's tensor names.
    #[arg(long)]
    pub model: Option<PathBuf>,
}

/// Options of `peanut info`.
#[derive(Args, Debug, Clone)]
// Negative numbers are values (`--rank -1` gets the range message, not "unexpected argument").
#[command(allow_negative_numbers = true)]
pub struct InfoArgs {
    /// The model (ViT or LLaMA-style): a directory or a Hugging Face id.
    #[arg(long)]
    pub model: PathBuf,
    /// What trains: peanut or lora adapters (plus the head for a ViT), the head alone, or
    /// everything.
    #[arg(long, value_enum, default_value = "peanut")]
    pub method: Method,
    /// Adapter rank (default: 7 for a ViT, 32 for a LLaMA-style model, as in the paper).
    #[arg(long, value_parser = values::at_least_one)]
    pub rank: Option<usize>,
    /// Depth, activation and scaling.
    #[command(flatten)]
    pub shape: AdapterShapeArgs,
    /// LoRA alpha (default: 8 for a ViT, 64 for a LLaMA-style model).
    #[arg(long, value_parser = values::positive_f64)]
    pub lora_alpha: Option<f64>,
    /// Linears to adapt, by name or `*` pattern (comma-separated; default: query,value for a
    /// ViT, q_proj,k_proj,v_proj,up_proj,down_proj for a LLaMA-style model).
    #[arg(long, value_delimiter = ',')]
    pub targets: Vec<String>,
    /// Only these block indices (comma-separated; default all).
    #[arg(long, value_delimiter = ',')]
    pub layers: Vec<usize>,
    /// Number of classes of the head (ViT).
    #[arg(long)]
    pub num_labels: Option<usize>,
}

impl ProcessorArgs {
    /// The overrides these options describe.
    pub fn overrides(&self) -> ProcessorOverrides {
        ProcessorOverrides {
            image_size: self.image_size,
            image_mean: self.image_mean.clone(),
            image_std: self.image_std.clone(),
            resample: self.resample.map(Resample::from),
        }
    }
}

impl EvalImageArgs {
    /// The job these options describe.
    pub fn job(&self) -> EvalImageJob {
        EvalImageJob {
            data_dir: self.data_dir.clone(),
            model: self.model.clone(),
            adapter: self.adapter.clone(),
            processor: self.processor.overrides(),
            batch_size: self.batch_size,
            quantize: self.quantize,
        }
    }
}

impl PredictImageArgs {
    /// The job these options describe.
    pub fn job(&self) -> PredictImageJob {
        PredictImageJob {
            model: self.model.clone(),
            adapter: self.adapter.clone(),
            top_k: self.top_k,
            processor: self.processor.overrides(),
            images: self.images.clone(),
            quantize: self.quantize,
        }
    }
}

impl MergeArgs {
    /// The job these options describe.
    pub fn job(&self) -> MergeJob {
        MergeJob {
            model: self.model.clone(),
            adapter: self.adapter.clone(),
            output: self.output.clone(),
            processor: self.processor.overrides(),
        }
    }
}

impl ConvertArgs {
    /// The job these options describe.
    pub fn job(&self) -> ConvertJob {
        ConvertJob {
            input: self.input.clone(),
            output: self.output.clone(),
            to: self.to,
            model: self.model.clone(),
        }
    }
}

impl InfoArgs {
    /// The job these options describe.
    pub fn job(&self) -> InfoJob {
        InfoJob {
            model: self.model.clone(),
            method: self.method,
            rank: self.rank,
            depth: self.shape.depth,
            activation: self.shape.activation,
            scaling: self.shape.scaling,
            lora_alpha: self.lora_alpha,
            targets: self.targets.clone(),
            layers: self.layers.clone(),
            num_labels: self.num_labels,
        }
    }
}

/// `peanut eval image` ([`EvalImageJob::run`]).
///
/// # Errors
/// As [`EvalImageJob::run`].
pub fn eval_image(args: EvalImageArgs) -> Result<train::EvalReport> {
    args.job().run()
}

/// `peanut predict image` ([`PredictImageJob::run`]).
///
/// # Errors
/// As [`PredictImageJob::run`].
pub fn predict_image(args: PredictImageArgs) -> Result<Vec<Prediction>> {
    args.job().run()
}

/// `peanut merge` ([`MergeJob::run`]).
///
/// # Errors
/// As [`MergeJob::run`].
pub fn merge(args: MergeArgs) -> Result<()> {
    args.job().run()
}

/// `peanut convert` ([`ConvertJob::run`]).
///
/// # Errors
/// As [`ConvertJob::run`].
pub fn convert(args: ConvertArgs) -> Result<ConvertReport> {
    args.job().run()
}

/// `peanut info` ([`InfoJob::run`]).
///
/// # Errors
/// As [`InfoJob::run`].
pub fn info(args: InfoArgs) -> Result<InfoReport> {
    args.job().run()
}
