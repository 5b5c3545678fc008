//! The inference-side subcommands — `eval image`, `predict image`, `merge`, `convert` and
//! `info` — and what they share:
//!
//! - the model family a checkpoint holds, chosen by its `config.json` (`model_type`, else
//!   `architectures`): a ViT image classifier or a LLaMA-style decoder ([`ModelFamily`]);
//! - the image processor of a ViT checkpoint: its `preprocessor_config.json` (or the ViT default
//!   at the checkpoint's image size, said on stderr), with the command-line flags as overrides
//!   ([`ProcessorArgs`]);
//! - export directories as `train image` writes them, read through [`crate::export`].

use std::path::{Path, PathBuf};

use burn::module::{AutodiffModule, Module};
use clap::Args;
use peanut::io::{AdapterMap, PeftPaths, SavedModules};
use peanut_models::llama::LlamaPeftPaths;
use peanut_models::vit::{ImageProcessorConfig, PREPROCESSOR_FILE, Resample, VitPeftPaths};
use peanut_models::{AdaptableModel, Llama, Vit, VitConfig};

use super::{AdapterShapeArgs, load_vit, read_dataset, resolve_model_dir};
use crate::backend::{self, Selected, TrainBackend};
use crate::data::{self, ImageBatcher, Normalization, SampleRef, Transform};
use crate::error::{Result, TrainError};
use crate::export::{
    CONVERT_FILES, Export, HEAD_FILE, LABELS_FILE, LM_SIDE_FILES, check_merge_output,
    check_replaceable, read_head, write_head,
};
use crate::train::{self, AdapterOptions, ImageTrainConfig, Method};

const MODEL_HINT: &str = "pass a directory holding transformers' config.json and safetensors \
     weights, or a Hugging Face id";

/// The kinds of model the subcommands handle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelFamily {
    /// transformers' `ViTForImageClassification` / `ViTModel`.
    Vit,
    /// LLaMA-style decoders (`LlamaForCausalLM`, `Qwen2ForCausalLM`).
    Llama,
}

impl ModelFamily {
    /// The family of the checkpoint in `dir`, from `config.json`'s `model_type` (else its
    /// `architectures`).
    ///
    /// # Errors
    /// `config.json` is missing or malformed, or names a model type none of the families load.
    pub fn of_model_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("config.json");
        let bytes = std::fs::read(&path).map_err(|e| TrainError::io("cannot read", &path, e))?;
        let config: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|source| TrainError::Json {
                path: path.clone(),
                source,
            })?;
        let model_type = config["model_type"].as_str().unwrap_or_default();
        let architectures: Vec<&str> = config["architectures"]
            .as_array()
            .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
            .unwrap_or_default();
        match model_type {
            "vit" => return Ok(Self::Vit),
            "llama" | "qwen2" => return Ok(Self::Llama),
            _ => {}
        }
        if architectures.iter().any(|a| a.starts_with("ViT")) {
            Ok(Self::Vit)
        } else if architectures
            .iter()
            .any(|a| a.starts_with("Llama") || a.starts_with("Qwen2"))
        {
            Ok(Self::Llama)
        } else {
            Err(TrainError::malformed(
                path,
                format!(
                    "model_type `{model_type}` (architectures {architectures:?}) is neither a \
                     ViT (`vit`) nor a LLaMA-style decoder (`llama`, `qwen2`)"
                ),
            ))
        }
    }

    /// The family an adapter directory was made for, from its tensor names: LLaMA-style when a
    /// module lies under `model.layers.` or `layers.`, else ViT.
    pub fn of_adapter_dir(dir: &Path) -> Self {
        let names = [
            peanut::io::native::WEIGHTS_FILE,
            peanut::io::peft::WEIGHTS_FILE,
        ]
        .iter()
        .filter_map(|file| std::fs::read(dir.join(file)).ok())
        .filter_map(|bytes| {
            safetensors::SafeTensors::deserialize(&bytes)
                .ok()
                .map(|file| {
                    file.names()
                        .into_iter()
                        .map(str::to_string)
                        .collect::<Vec<_>>()
                })
        })
        .flatten()
        .collect::<Vec<_>>();
        let llama = names.iter().any(|name| {
            let bare = name
                .strip_prefix(peanut::io::peft::KEY_PREFIX)
                .unwrap_or(name);
            bare.starts_with("model.layers.") || bare.starts_with("layers.")
        });
        if llama { Self::Llama } else { Self::Vit }
    }

    /// How this family's module paths map to peft's.
    pub fn peft_paths(self) -> &'static dyn PeftPaths {
        match self {
            Self::Vit => &VitPeftPaths,
            Self::Llama => &LlamaPeftPaths,
        }
    }

    /// The family's name on output lines.
    pub fn name(self) -> &'static str {
        match self {
            Self::Vit => "vit",
            Self::Llama => "llama",
        }
    }
}

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
    #[arg(long, value_parser = super::values::image_size)]
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

impl ProcessorArgs {
    /// The processor of the ViT checkpoint in `dir` with these overrides applied.
    ///
    /// # Errors
    /// A malformed `config.json` or `preprocessor_config.json`, or a bad override.
    pub fn resolve(&self, dir: &Path) -> Result<ImageProcessorConfig> {
        let vit = VitConfig::from_hf_file(&dir.join("config.json"))?;
        let fallback = ImageProcessorConfig::vit(vit.image_size as u32);
        let (mut processor, note) = ImageProcessorConfig::from_model_dir(dir, fallback)?;
        if let Some(note) = note {
            eprintln!("{note}");
        }
        if let Some(side) = self.image_size {
            if side == 0 || side > 4096 {
                return Err(TrainError::InvalidOption {
                    option: "--image-size",
                    reason: format!("must be between 1 and 4096 pixels, got {side}"),
                });
            }
            processor = processor.with_side(side);
        } else if processor.output_side().is_none() {
            eprintln!(
                "`{}` does not give square images of a fixed size; using {}² pixels",
                dir.join(PREPROCESSOR_FILE).display(),
                vit.image_size
            );
            processor = processor.with_side(vit.image_size as u32);
        }
        let channels = |values: &[f32], option: &'static str| -> Result<[f32; 3]> {
            match values {
                [v] => Ok([*v; 3]),
                [r, g, b] => Ok([*r, *g, *b]),
                _ => Err(TrainError::InvalidOption {
                    option,
                    reason: format!("takes 1 or 3 values, got {}", values.len()),
                }),
            }
        };
        if let Some(mean) = &self.image_mean {
            // A mean in 0–1 units applies after a 1/255 rescale.
            processor.image_mean = channels(mean, "--image-mean")?;
            processor.rescale_factor = 1.0 / 255.0;
        }
        if let Some(std) = &self.image_std {
            processor.image_std = channels(std, "--image-std")?;
            processor.rescale_factor = 1.0 / 255.0;
        }
        if processor
            .image_std
            .iter()
            .chain(&processor.image_mean)
            .any(|v| !v.is_finite())
            || processor.image_std.contains(&0.0)
        {
            return Err(TrainError::InvalidOption {
                option: "--image-std",
                reason: format!(
                    "mean and std must be finite and std non-zero, got mean {:?}, std {:?}",
                    processor.image_mean, processor.image_std
                ),
            });
        }
        if let Some(resample) = self.resample {
            processor.resample = resample.into();
        }
        Ok(processor)
    }
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
    #[arg(long, default_value_t = 64, value_parser = super::values::at_least_one)]
    pub batch_size: usize,
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
    #[arg(long, default_value_t = 5, value_parser = super::values::at_least_one)]
    pub top_k: usize,
    /// Image preparation overrides.
    #[command(flatten)]
    pub processor: ProcessorArgs,
    /// Image files (JPEG or PNG).
    #[arg(required = true)]
    pub images: Vec<PathBuf>,
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

/// Target format of `peanut convert`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AdapterFormat {
    /// This workspace's format (`peanut_config.json`).
    Peanut,
    /// Hugging Face peft's format (`adapter_config.json`).
    Peft,
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
    #[arg(long, value_parser = super::values::at_least_one)]
    pub rank: Option<usize>,
    /// Depth, activation and scaling.
    #[command(flatten)]
    pub shape: AdapterShapeArgs,
    /// LoRA alpha (default: 8 for a ViT, 64 for a LLaMA-style model).
    #[arg(long, value_parser = super::values::positive_f64)]
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

/// A ViT ready for inference: base checkpoint, export applied, how to prepare its images.
struct Inference {
    model: Vit<Selected>,
    labels: Option<Vec<String>>,
    /// Whether `labels` came from the export's `labels.json` (else the checkpoint's
    /// `id2label`, or none).
    labels_from_export: bool,
    processor: ImageProcessorConfig,
}

impl Inference {
    /// The base `model` with the export `adapter` applied. With `training_size`, images are
    /// prepared at the side the export was trained at (its manifest's `image_size`) unless
    /// `--image-size` is given; without it (merge), at the checkpoint's own.
    fn load(
        model: &Path,
        adapter: Option<&Path>,
        processor: &ProcessorArgs,
        training_size: bool,
    ) -> Result<Self> {
        let dir = resolve_model_dir(model, MODEL_HINT)?;
        let family = ModelFamily::of_model_dir(&dir)?;
        if family != ModelFamily::Vit {
            return Err(TrainError::InvalidOption {
                option: "--model",
                reason: format!(
                    "`{}` holds a {} model; image commands need a ViT",
                    dir.display(),
                    family.name()
                ),
            });
        }
        let export = adapter
            .map(|dir| Export::read(dir, &VitPeftPaths))
            .transpose()?;
        let trained_at = export
            .as_ref()
            .and_then(|e| e.manifest.as_ref())
            .and_then(|m| m.image_size);
        let processor = match trained_at {
            Some(side) if training_size && processor.image_size.is_none() => {
                eprintln!(
                    "preparing images at {side}² pixels, the size the export was trained at \
                     (pass --image-size to choose another)"
                );
                ProcessorArgs {
                    image_size: Some(side),
                    ..processor.clone()
                }
                .resolve(&dir)?
            }
            _ => processor.resolve(&dir)?,
        };
        let num_labels = export.as_ref().and_then(Export::num_labels);
        let mut vit = load_vit::<TrainBackend>(
            &dir,
            num_labels,
            processor.output_side(),
            0,
            Default::default(),
        )?
        .valid();
        let mut labels = None;
        if let Some(export) = export {
            labels = export.labels.clone();
            export.apply(&mut vit)?;
        }
        if let Some(names) = &labels {
            vit.config.id2label = Some(names.clone());
        }
        let labels_from_export = labels.is_some();
        let labels = labels.or_else(|| vit.config.id2label.clone());
        Ok(Self {
            model: vit,
            labels,
            labels_from_export,
            processor,
        })
    }

    fn batcher(&self, samples: Vec<data::ImageSample>) -> ImageBatcher {
        ImageBatcher::new(
            samples.into(),
            Transform::processor(&self.processor),
            Normalization::from_processor(&self.processor),
            self.model.config.num_channels,
            0,
        )
    }
}

/// `peanut eval image`: accuracy and loss on the dataset's test split (the caller prints it
/// as JSON).
///
/// # Errors
/// Unreadable inputs, a model whose classes differ from the dataset's, or a non-finite loss
/// (NaN or infinite weights).
pub fn eval_image(args: EvalImageArgs) -> Result<train::EvalReport> {
    let data = read_dataset(&args.data_dir)?;
    let inference = Inference::load(&args.model, args.adapter.as_deref(), &args.processor, true)?;
    let model = &inference.model;
    let source = if inference.labels_from_export {
        format!("the export's {LABELS_FILE} lists")
    } else {
        "the model has".into()
    };
    if model.config.num_labels != data.classes.len() {
        return Err(TrainError::InvalidOption {
            option: "--adapter",
            reason: format!(
                "{source} {} classes, the dataset {}; pass the export directory of a run on \
                 this dataset",
                model.config.num_labels,
                data.classes.len()
            ),
        });
    }
    if inference.labels_from_export
        && let Some(labels) = &inference.labels
        && let Some((index, (ours, theirs))) = labels
            .iter()
            .zip(&data.classes)
            .enumerate()
            .find(|(_, (a, b))| a != b)
    {
        return Err(TrainError::InvalidOption {
            option: "--adapter",
            reason: format!(
                "class {index} is `{ours}` in the export's {LABELS_FILE} but `{theirs}` in the \
                 dataset: the classes are renamed or in another order, so accuracy would count \
                 the wrong answers; evaluate on the dataset the export was trained on"
            ),
        });
    }
    let report = train::evaluate_with(
        model,
        &data.test,
        Transform::processor(&inference.processor),
        Normalization::from_processor(&inference.processor),
        args.batch_size,
        &backend::device(),
    );
    if !report.loss.is_finite() {
        return Err(TrainError::malformed(
            args.adapter.as_deref().unwrap_or(&args.model),
            format!(
                "the evaluation loss is {}: the model or adapter weights hold NaN or infinite \
                 values",
                report.loss
            ),
        ));
    }
    Ok(report)
}

/// One image's prediction: the top-k classes and every logit.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Prediction {
    /// The image file.
    pub image: PathBuf,
    /// The `--top-k` best classes, best first.
    pub top_k: Vec<RankedLabel>,
    /// One logit per class.
    pub logits: Vec<f32>,
}

/// A class of a [`Prediction`].
#[derive(Debug, Clone, serde::Serialize)]
pub struct RankedLabel {
    /// Class index.
    pub index: usize,
    /// Class name from the export's `labels.json` (else the checkpoint's `id2label`), or the
    /// index.
    pub label: String,
    /// Its logit.
    pub logit: f32,
}

/// `peanut predict image`: per image, the top-k labels and the logits (the caller prints them
/// as one JSON array).
///
/// # Errors
/// Unreadable inputs, or logits that are not finite (the error names the image).
pub fn predict_image(args: PredictImageArgs) -> Result<Vec<Prediction>> {
    let inference = Inference::load(&args.model, args.adapter.as_deref(), &args.processor, true)?;
    let samples: Vec<data::ImageSample> = args
        .images
        .iter()
        .map(|path| {
            if path.is_file() {
                Ok(data::ImageSample {
                    source: data::ImageSource::File(path.clone()),
                    label: 0,
                })
            } else {
                Err(TrainError::io(
                    "cannot read",
                    path,
                    std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
                ))
            }
        })
        .collect::<Result<_>>()?;
    let batcher = inference.batcher(samples);
    let device = backend::device();
    let mut results = Vec::new();
    for (index, path) in args.images.iter().enumerate() {
        let loaded = batcher.load_all(&[SampleRef { index, pass: 0 }]);
        if loaded.is_empty() {
            // Decoded once more for the reason (an oversized image, a bad header, …).
            let reason = data::ImageSource::File(path.clone())
                .decode()
                .err()
                .unwrap_or_else(|| "it did not decode".into());
            return Err(TrainError::malformed(
                path,
                format!("is not a readable JPEG or PNG image: {reason}"),
            ));
        }
        let batch = batcher.stack::<Selected>(loaded, &device);
        let logits: Vec<f32> = inference
            .model
            .forward(batch.images)
            .into_data()
            .convert::<f32>()
            .into_vec()
            .unwrap_or_default();
        if let Some(bad) = logits.iter().position(|v| !v.is_finite()) {
            return Err(TrainError::malformed(
                path,
                format!(
                    "logit {bad} is {}: the model or adapter weights hold NaN or infinite values",
                    logits[bad]
                ),
            ));
        }
        let mut order: Vec<usize> = (0..logits.len()).collect();
        order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
        let labels = inference.labels.as_ref();
        let top_k = order
            .iter()
            .take(args.top_k)
            .map(|&index| RankedLabel {
                index,
                label: labels
                    .and_then(|l| l.get(index).cloned())
                    .unwrap_or(index.to_string()),
                logit: logits[index],
            })
            .collect();
        results.push(Prediction {
            image: path.clone(),
            top_k,
            logits,
        });
    }
    Ok(results)
}

/// `peanut merge`: the base model with the export's adapters (and head) merged, written as a
/// transformers checkpoint — a ViT with its `preprocessor_config.json` and `id2label` from
/// `labels.json`; a LLaMA-style model with its tokenizer files. The checkpoint is written
/// beside `--output` first and then takes its place
/// ([`export_atomically`](crate::train::export_atomically)): a merge killed at any
/// instant leaves the earlier `--output` (or none), never a mix of two merges.
///
/// # Errors
/// Unreadable inputs, `--output` equal to the base model directory, an `--output` holding files
/// a merge does not write, or a non-finite merged weight (nothing is written; the error names
/// the tensor).
pub fn merge(args: MergeArgs) -> Result<()> {
    let dir = resolve_model_dir(&args.model, MODEL_HINT)?;
    if args.output.canonicalize().ok() == dir.canonicalize().ok() {
        return Err(TrainError::InvalidOption {
            option: "--output",
            reason: format!(
                "`{}` is the base model's directory; write the merged model elsewhere",
                args.output.display()
            ),
        });
    }
    check_merge_output(&args.output)?;
    let family = ModelFamily::of_model_dir(&dir)?;
    crate::train::export_atomically(&args.output, |staging| {
        match family {
            ModelFamily::Vit => {
                let mut inference =
                    Inference::load(&dir, Some(&args.adapter), &args.processor, false)?;
                inference.model.merge_adapters();
                inference.model.save_merged(staging)?;
                let json = serde_json::to_vec_pretty(&inference.processor.to_hf_json())
                    .expect("processor config serializes");
                peanut_models::checkpoint::write_atomic(&staging.join(PREPROCESSOR_FILE), &json)?;
            }
            ModelFamily::Llama => {
                let device = backend::device();
                let mut llama = Llama::<Selected>::from_pretrained(&dir, &device)?;
                let export = Export::read(&args.adapter, &LlamaPeftPaths)?;
                export.apply(&mut llama)?;
                llama.merge_adapters();
                llama.save_merged(staging)?;
                for name in LM_SIDE_FILES {
                    let from = dir.join(name);
                    if from.is_file() {
                        let bytes = std::fs::read(&from)
                            .map_err(|e| TrainError::io("cannot read", &from, e))?;
                        peanut_models::checkpoint::write_atomic(&staging.join(name), &bytes)?;
                    }
                }
            }
        }
        Ok(Vec::new())
    })?;
    println!("wrote {}", args.output.display());
    Ok(())
}

/// `peanut convert`: an adapter directory in the other format. Modules peft saved whole (the
/// classifier head) become `head.safetensors` beside the peanut-format files; converting to
/// peft, a `head.safetensors` in the input directory (or in the export directory around a
/// `peanut/` input) goes in as `modules_to_save`.
///
/// # Errors
/// Unreadable input, or an adapter the target format cannot hold (peft's PEANuT format holds
/// PEANuT adapters with one shared configuration).
pub fn convert(args: ConvertArgs) -> Result<()> {
    check_replaceable(&args.output, &CONVERT_FILES, "a conversion")?;
    let family = match &args.model {
        Some(model) => ModelFamily::of_model_dir(&resolve_model_dir(model, MODEL_HINT)?)?,
        None => ModelFamily::of_adapter_dir(&args.input),
    };
    let paths = family.peft_paths();
    let device = backend::device();
    let (adapters, mut saved) =
        peanut::io::load_any_with_saved::<Selected>(&args.input, paths, &device)?;
    // The base model a peft input names is kept (also converting in place); else `--model`.
    let base_model = recorded_base_model(&args.input)
        .or_else(|| args.model.as_ref().map(|m| m.display().to_string()));
    // Everything is read: the output is written beside `--output` and then swapped in whole
    // (so `--output` may be `--input`, and a kill leaves the old directory or the new one).
    crate::train::export_atomically(&args.output, |staging| {
        convert_into(
            staging,
            &args,
            paths,
            &adapters,
            &mut saved,
            base_model.as_deref(),
        )?;
        Ok(Vec::new())
    })?;
    println!(
        "wrote {} {} adapters{} to {}",
        adapters.len(),
        family.name(),
        if saved.is_empty() {
            String::new()
        } else {
            format!(
                " and the saved modules {:?}",
                saved.keys().collect::<Vec<_>>()
            )
        },
        args.output.display()
    );
    Ok(())
}

/// `base_model_name_or_path` of a peft adapter directory's `adapter_config.json`, when set.
fn recorded_base_model(dir: &Path) -> Option<String> {
    let bytes = std::fs::read(dir.join(peanut::io::peft::CONFIG_FILE)).ok()?;
    let config: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    config
        .get("base_model_name_or_path")?
        .as_str()
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

/// Writes the converted adapter (`entries`, and the saved modules `saved`) into `output`.
fn convert_into(
    output: &Path,
    args: &ConvertArgs,
    paths: &dyn PeftPaths,
    adapters: &AdapterMap<Selected>,
    saved: &mut SavedModules,
    base_model: Option<&str>,
) -> Result<()> {
    let entries = || adapters.iter().map(|(k, v)| (k.clone(), v));
    match args.to {
        AdapterFormat::Peanut => {
            peanut::io::save(output, entries())?;
            if !saved.is_empty() {
                write_head(&output.join(HEAD_FILE), saved)?;
            }
        }
        AdapterFormat::Peft => {
            let head = [args.input.join(HEAD_FILE)]
                .into_iter()
                .chain(
                    args.input
                        .file_name()
                        .is_some_and(|n| n == "peanut" || n == "peft")
                        .then(|| args.input.parent().map(|p| p.join(HEAD_FILE)))
                        .flatten(),
                )
                .find(|p| p.is_file());
            if let Some(head) = head {
                saved.extend(read_head(&head)?);
            }
            peanut::io::save_peft(output, entries(), paths, base_model)?;
            if !saved.is_empty() {
                peanut::io::add_modules_to_save(output, saved, paths)?;
            }
        }
    }
    Ok(())
}

/// What `peanut info` reports.
#[derive(Debug, Clone, PartialEq)]
pub struct InfoReport {
    /// The backend the binary was built with.
    pub backend: &'static str,
    /// The model family, from `config.json`.
    pub family: ModelFamily,
    /// Every adaptable linear of the model, by path.
    pub linears: Vec<String>,
    /// The linears the options put adapters on.
    pub adapted: Vec<String>,
    /// Parameters of the model before adapters are added.
    pub total_params: usize,
    /// Of those, the ones `--method` trains.
    pub trainable_params: usize,
    /// The method counted.
    pub method: Method,
    /// How images are prepared (ViT only).
    pub processor: Option<ImageProcessorConfig>,
}

impl InfoReport {
    /// Trainable parameters as a percentage of the total.
    pub fn trainable_percent(&self) -> f64 {
        100.0 * self.trainable_params as f64 / self.total_params.max(1) as f64
    }
}

impl std::fmt::Display for InfoReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "backend: {}{}",
            self.backend,
            if backend::FUSED {
                " (burn's kernel fusion on)"
            } else {
                ""
            }
        )?;
        writeln!(f, "model: {}", self.family.name())?;
        if let Some(p) = &self.processor {
            writeln!(
                f,
                "images: resize {:?} ({:?}), crop {:?}, mean {:?}, std {:?}, rescale {}",
                p.size, p.resample, p.crop_size, p.image_mean, p.image_std, p.rescale_factor
            )?;
        }
        writeln!(f, "linears: {}", self.linears.len())?;
        writeln!(
            f,
            "adapted ({}): {}",
            self.adapted.len(),
            self.adapted.join(", ")
        )?;
        write!(
            f,
            "parameters: {} total, {} trainable ({:.4}%) with --method {}",
            self.total_params,
            self.trainable_params,
            self.trainable_percent(),
            self.method.name()
        )
    }
}

/// `peanut info`: the model's linears, the ones the adapter options select, and parameter
/// counts (the caller prints them), for a ViT or a LLaMA-style model.
///
/// # Errors
/// An unreadable model, a bad option, or targets that match nothing.
pub fn info(args: InfoArgs) -> Result<InfoReport> {
    let dir = resolve_model_dir(&args.model, MODEL_HINT)?;
    let family = ModelFamily::of_model_dir(&dir)?;
    // The defaults of the family's training job.
    let (defaults, targets) = match family {
        ModelFamily::Vit => {
            let config = ImageTrainConfig::default();
            (config.adapter, config.targets)
        }
        ModelFamily::Llama => {
            let config = train::LmTrainConfig::default();
            (config.adapter, config.targets)
        }
    };
    let (rank, alpha) = (defaults.rank, defaults.lora_alpha);
    let options: AdapterOptions = args
        .shape
        .options(args.rank.unwrap_or(rank), args.lora_alpha.unwrap_or(alpha));
    let targets = if args.targets.is_empty() {
        targets
    } else {
        args.targets.clone()
    };
    let (linears, adapted, total, trainable, processor) = match family {
        ModelFamily::Vit => {
            let processor = ProcessorArgs::default().resolve(&dir)?;
            let model = load_vit::<TrainBackend>(
                &dir,
                args.num_labels,
                processor.output_side(),
                0,
                Default::default(),
            )?;
            let total = model.num_params();
            let config = ImageTrainConfig {
                method: args.method,
                adapter: options,
                targets,
                layers: args.layers.clone(),
                ..ImageTrainConfig::default()
            }
            .check()?;
            let linears: Vec<String> = model.linear_sites().into_iter().map(|s| s.path).collect();
            let (prepared, trainable) = train::prepare_model(model, &config)?;
            let adapted: Vec<String> = prepared.adapters().into_iter().map(|(p, _)| p).collect();
            (linears, adapted, total, trainable, Some(processor))
        }
        ModelFamily::Llama => {
            let mut model = Llama::<TrainBackend>::from_pretrained(&dir, &backend::device())?;
            let total = model.num_params();
            let linears: Vec<String> = model.linear_sites().into_iter().map(|s| s.path).collect();
            let adapter = options.config(args.method)?;
            train::attach_adapters(&mut model, adapter.as_ref(), &targets, &args.layers, 0)?;
            let model = match args.method {
                Method::Full => model.with_trainable_base(true),
                Method::Head => model.with_trainable_head(true),
                Method::Peanut | Method::Lora => model,
            };
            let adapted: Vec<String> = model.adapters().into_iter().map(|(p, _)| p).collect();
            let trainable = peanut::count_trainable_params(&model);
            (linears, adapted, total, trainable, None)
        }
    };
    Ok(InfoReport {
        backend: backend::NAME,
        family,
        linears,
        adapted,
        total_params: total,
        trainable_params: trainable,
        method: args.method,
        processor,
    })
}
