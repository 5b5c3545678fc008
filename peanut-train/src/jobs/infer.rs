//! The inference-side jobs — [`EvalImageJob`], [`PredictImageJob`], [`MergeJob`],
//! [`ConvertJob`] and [`InfoJob`] (`peanut eval image`, `predict image`, `merge`, `convert`,
//! `info`) — and what they share:
//!
//! - the model family a checkpoint holds, chosen by its `config.json`
//!   ([`peanut_models::ModelFamily`]);
//! - the image processor of a ViT checkpoint: its `preprocessor_config.json` (or the ViT default
//!   at the checkpoint's image size, said on stderr), with overrides ([`ProcessorOverrides`]);
//! - export directories as `train image` writes them, read through [`crate::export`].

use std::path::{Path, PathBuf};

use burn::module::{AutodiffModule, Module};
use peanut::io::{AdapterMap, SavedModules};
use peanut_models::vit::{ImageProcessorConfig, PREPROCESSOR_FILE, Resample};
use peanut_models::{AdaptableModel, Llama, ModelFamily, Vit, VitConfig};

use super::load::{MODEL_HINT, load_vit, read_dataset, resolve_model_dir};
use crate::backend::{self, Selected, TrainBackend};
use crate::data::{self, ImageBatcher, Normalization, SampleRef, Transform};
use crate::error::{Result, TrainError};
use crate::export::{
    CONVERT_FILES, Export, HEAD_FILE, LABELS_FILE, LM_SIDE_FILES, check_merge_output,
    check_replaceable, read_head, write_head,
};
use crate::train::{self, AdapterOptions, ImageTrainConfig, Method};

/// How images are prepared: the checkpoint's `preprocessor_config.json`, with these overrides
/// (`--image-size`, `--image-mean`, `--image-std`, `--resample` on the command line).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProcessorOverrides {
    /// Input side in pixels (resize and crop scaled to it). Default: the checkpoint's
    /// `preprocessor_config.json`, else its `config.json` `image_size`.
    pub image_size: Option<u32>,
    /// Per-channel mean in 0–1 units (3 values, or one for all channels).
    pub image_mean: Option<Vec<f32>>,
    /// Per-channel standard deviation in 0–1 units (3 values, or one for all channels).
    pub image_std: Option<Vec<f32>>,
    /// Resize filter.
    pub resample: Option<Resample>,
}

impl ProcessorOverrides {
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
            processor.resample = resample;
        }
        Ok(processor)
    }
}

/// `peanut eval image`: accuracy and loss of a ViT (with an export's adapters and head) on a
/// dataset's test split. Run it with [`EvalImageJob::run`].
#[derive(Debug, Clone, PartialEq)]
pub struct EvalImageJob {
    /// Dataset directory or hub id (as for `train image`); its test split is evaluated.
    pub data_dir: PathBuf,
    /// The base ViT: a directory (`config.json` + safetensors) or a Hugging Face id.
    pub model: PathBuf,
    /// An export directory written by `train image` (`peanut/` or `peft/`, `head.safetensors`),
    /// or a peft adapter directory (its `modules_to_save` head included); `None` evaluates the
    /// base model as it is.
    pub adapter: Option<PathBuf>,
    /// Image preparation overrides. Without `image_size`, images are prepared at the size the
    /// export was trained at.
    pub processor: ProcessorOverrides,
    /// Images per batch.
    pub batch_size: usize,
    /// Store the base's frozen linear weights quantized (`--quantize`, `peanut::quant`); `None`:
    /// as the checkpoint has them, in f32. An adapter merges as low-rank factors beside the
    /// quantized weights, never into a float copy.
    pub quantize: Option<peanut::Quantization>,
}

impl EvalImageJob {
    /// Evaluates `model` (with `adapter`, if any) on `data_dir`'s test split, 64 images per
    /// batch, images prepared as the checkpoint and export say.
    pub fn new(data_dir: impl Into<PathBuf>, model: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            model: model.into(),
            adapter: None,
            processor: ProcessorOverrides::default(),
            batch_size: 64,
            quantize: None,
        }
    }
}

/// `peanut predict image`: the top-k labels and the logits of image files. Run it with
/// [`PredictImageJob::run`].
#[derive(Debug, Clone, PartialEq)]
pub struct PredictImageJob {
    /// The base ViT: a directory or a Hugging Face id.
    pub model: PathBuf,
    /// An export directory written by `train image`, or a peft adapter directory.
    pub adapter: Option<PathBuf>,
    /// How many labels to report per image.
    pub top_k: usize,
    /// Image preparation overrides.
    pub processor: ProcessorOverrides,
    /// Image files (JPEG or PNG).
    pub images: Vec<PathBuf>,
    /// Store the base's frozen linear weights quantized (`--quantize`, `peanut::quant`); `None`:
    /// as the checkpoint has them, in f32. An adapter merges as low-rank factors beside the
    /// quantized weights, never into a float copy.
    pub quantize: Option<peanut::Quantization>,
}

impl PredictImageJob {
    /// The top 5 labels of each of `images` by `model`, with no adapter.
    pub fn new(model: impl Into<PathBuf>, images: Vec<PathBuf>) -> Self {
        Self {
            model: model.into(),
            adapter: None,
            top_k: 5,
            processor: ProcessorOverrides::default(),
            images,
            quantize: None,
        }
    }
}

/// `peanut merge`: a transformers checkpoint of the base model with an export's adapters (and
/// head) merged in. Run it with [`MergeJob::run`].
#[derive(Debug, Clone, PartialEq)]
pub struct MergeJob {
    /// The base model (ViT or LLaMA-style, by its `config.json`): a directory or a Hugging
    /// Face id.
    pub model: PathBuf,
    /// An export directory written by `train image` / `train lm`, or an adapter directory.
    pub adapter: PathBuf,
    /// Where the merged transformers checkpoint goes.
    pub output: PathBuf,
    /// Image preparation (ViT): `image_size` is the size the adapters were trained at; the
    /// merged checkpoint and its `preprocessor_config.json` are written for it. By default the
    /// checkpoint keeps its own size.
    pub processor: ProcessorOverrides,
}

impl MergeJob {
    /// Merges `adapter` into `model`, writing `output`.
    pub fn new(
        model: impl Into<PathBuf>,
        adapter: impl Into<PathBuf>,
        output: impl Into<PathBuf>,
    ) -> Self {
        Self {
            model: model.into(),
            adapter: adapter.into(),
            output: output.into(),
            processor: ProcessorOverrides::default(),
        }
    }
}

/// An adapter format `peanut convert` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AdapterFormat {
    /// This workspace's format (`peanut_config.json`).
    Peanut,
    /// Hugging Face peft's format (`adapter_config.json`).
    Peft,
}

/// `peanut convert`: an adapter directory rewritten in the other format. Run it with
/// [`ConvertJob::run`].
#[derive(Debug, Clone, PartialEq)]
pub struct ConvertJob {
    /// Adapter directory in either format (detected).
    pub input: PathBuf,
    /// Output directory (may be `input`: it is replaced whole).
    pub output: PathBuf,
    /// Format to write.
    pub to: AdapterFormat,
    /// The base model the adapter belongs to, whose `config.json` tells the module naming;
    /// `None`: guessed from the adapter's tensor names ([`ModelFamily::of_adapter_dir`]).
    pub model: Option<PathBuf>,
}

/// What a [`ConvertJob`] wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct ConvertReport {
    /// How many adapters.
    pub adapters: usize,
    /// The model family they belong to.
    pub family: ModelFamily,
    /// Modules saved whole (a classifier head), by path.
    pub saved_modules: Vec<String>,
    /// The output directory.
    pub output: PathBuf,
}

impl std::fmt::Display for ConvertReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "wrote {} {} adapters", self.adapters, self.family.name())?;
        if !self.saved_modules.is_empty() {
            write!(f, " and the saved modules {:?}", self.saved_modules)?;
        }
        write!(f, " to {}", self.output.display())
    }
}

/// `peanut info`: a model's adaptable linears, the ones an adapter setting selects, and
/// parameter counts. Run it with [`InfoJob::run`]. Options left `None` or empty take the
/// model family's training defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct InfoJob {
    /// The model (ViT or LLaMA-style): a directory or a Hugging Face id.
    pub model: PathBuf,
    /// What trains: adapters (plus the head for a ViT), the head alone, or everything.
    pub method: Method,
    /// Adapter rank (default: 7 for a ViT, 32 for a LLaMA-style model, as in the paper).
    pub rank: Option<usize>,
    /// PEANuT depth, counted in linear maps.
    pub depth: usize,
    /// PEANuT activation.
    pub activation: peanut::Activation,
    /// PEANuT scaling `s`.
    pub scaling: f64,
    /// LoRA alpha (default: 8 for a ViT, 64 for a LLaMA-style model).
    pub lora_alpha: Option<f64>,
    /// Linears to adapt, by name or `*` pattern (empty: the family's default targets).
    pub targets: Vec<String>,
    /// Only these block indices (empty: all).
    pub layers: Vec<usize>,
    /// Number of classes of the head (ViT).
    pub num_labels: Option<usize>,
}

impl InfoJob {
    /// `model` with the defaults of its family's training job (PEANuT, depth 2, ReLU, s = 1).
    pub fn new(model: impl Into<PathBuf>) -> Self {
        let shape = AdapterOptions::default();
        Self {
            model: model.into(),
            method: Method::Peanut,
            rank: None,
            depth: shape.depth,
            activation: shape.activation,
            scaling: shape.scaling,
            lora_alpha: None,
            targets: Vec::new(),
            layers: Vec::new(),
            num_labels: None,
        }
    }
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
        processor: &ProcessorOverrides,
        training_size: bool,
        quantize: Option<peanut::Quantization>,
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
            .map(|dir| Export::read(dir, ModelFamily::Vit.peft_paths()))
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
                ProcessorOverrides {
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
            peanut::FrozenStorage::default().with_quantization(quantize),
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

impl EvalImageJob {
    /// `peanut eval image`: accuracy and loss on the dataset's test split (the caller prints it
    /// as JSON).
    ///
    /// # Errors
    /// Unreadable inputs, a model whose classes differ from the dataset's, or a non-finite loss
    /// (NaN or infinite weights).
    pub fn run(&self) -> Result<train::EvalReport> {
        let data = read_dataset(&self.data_dir)?;
        let inference = Inference::load(
            &self.model,
            self.adapter.as_deref(),
            &self.processor,
            true,
            self.quantize,
        )?;
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
            self.batch_size,
            &backend::device(),
        );
        if !report.loss.is_finite() {
            return Err(TrainError::malformed(
                self.adapter.as_deref().unwrap_or(&self.model),
                format!(
                    "the evaluation loss is {}: the model or adapter weights hold NaN or infinite \
                     values",
                    report.loss
                ),
            ));
        }
        Ok(report)
    }
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

impl PredictImageJob {
    /// `peanut predict image`: per image, the top-k labels and the logits (the caller prints them
    /// as one JSON array).
    ///
    /// # Errors
    /// Unreadable inputs, or logits that are not finite (the error names the image).
    pub fn run(&self) -> Result<Vec<Prediction>> {
        let inference = Inference::load(
            &self.model,
            self.adapter.as_deref(),
            &self.processor,
            true,
            self.quantize,
        )?;
        let samples: Vec<data::ImageSample> = self
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
        for (index, path) in self.images.iter().enumerate() {
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
                .take(self.top_k)
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
}

impl MergeJob {
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
    pub fn run(&self) -> Result<()> {
        let dir = resolve_model_dir(&self.model, MODEL_HINT)?;
        if self.output.canonicalize().ok() == dir.canonicalize().ok() {
            return Err(TrainError::InvalidOption {
                option: "--output",
                reason: format!(
                    "`{}` is the base model's directory; write the merged model elsewhere",
                    self.output.display()
                ),
            });
        }
        check_merge_output(&self.output)?;
        let family = ModelFamily::of_model_dir(&dir)?;
        crate::train::export_atomically(&self.output, |staging| {
            match family {
                ModelFamily::Vit => {
                    let mut inference =
                        Inference::load(&dir, Some(&self.adapter), &self.processor, false, None)?;
                    inference.model.merge_adapters();
                    inference.model.save_merged(staging)?;
                    let json = serde_json::to_vec_pretty(&inference.processor.to_hf_json())
                        .expect("processor config serializes");
                    peanut::io::write_atomic(&staging.join(PREPROCESSOR_FILE), &json)?;
                }
                ModelFamily::Llama => {
                    let device = backend::device();
                    let mut llama = Llama::<Selected>::from_pretrained(&dir, &device)?;
                    let export = Export::read(&self.adapter, ModelFamily::Llama.peft_paths())?;
                    export.apply(&mut llama)?;
                    llama.merge_adapters();
                    llama.save_merged(staging)?;
                    for name in LM_SIDE_FILES {
                        let from = dir.join(name);
                        if from.is_file() {
                            let bytes = std::fs::read(&from)
                                .map_err(|e| TrainError::io("cannot read", &from, e))?;
                            peanut::io::write_atomic(&staging.join(name), &bytes)?;
                        }
                    }
                }
            }
            Ok(Vec::new())
        })?;
        Ok(())
    }
}

impl ConvertJob {
    /// `peanut convert`: an adapter directory in the other format. Modules peft saved whole (the
    /// classifier head) become `head.safetensors` beside the peanut-format files; converting to
    /// peft, a `head.safetensors` in the input directory (or in the export directory around a
    /// `peanut/` input) goes in as `modules_to_save`.
    ///
    /// # Errors
    /// Unreadable input, or an adapter the target format cannot hold (peft's PEANuT format holds
    /// PEANuT adapters with one shared configuration).
    pub fn run(&self) -> Result<ConvertReport> {
        check_replaceable(&self.output, &CONVERT_FILES, "a conversion")?;
        let family = match &self.model {
            Some(model) => ModelFamily::of_model_dir(&resolve_model_dir(model, MODEL_HINT)?)?,
            None => ModelFamily::of_adapter_dir(&self.input),
        };
        let paths = family.peft_paths();
        let device = backend::device();
        let (adapters, mut saved) =
            peanut::io::load_any_with_saved::<Selected>(&self.input, paths, &device)?;
        // The base model a peft input names is kept (also converting in place); else `--model`.
        let base_model = recorded_base_model(&self.input)
            .or_else(|| self.model.as_ref().map(|m| m.display().to_string()));
        // Everything is read: the output is written beside `--output` and then swapped in whole
        // (so `--output` may be `--input`, and a kill leaves the old directory or the new one).
        crate::train::export_atomically(&self.output, |staging| {
            convert_into(
                staging,
                self,
                paths,
                &adapters,
                &mut saved,
                base_model.as_deref(),
            )?;
            Ok(Vec::new())
        })?;
        Ok(ConvertReport {
            adapters: adapters.len(),
            family,
            saved_modules: saved.keys().cloned().collect(),
            output: self.output.clone(),
        })
    }
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
    args: &ConvertJob,
    paths: &dyn peanut::io::PeftPaths,
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

impl InfoJob {
    /// `peanut info`: the model's linears, the ones the adapter options select, and parameter
    /// counts (the caller prints them), for a ViT or a LLaMA-style model.
    ///
    /// # Errors
    /// An unreadable model, a bad option, or targets that match nothing.
    pub fn run(&self) -> Result<InfoReport> {
        let dir = resolve_model_dir(&self.model, MODEL_HINT)?;
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
        let options = AdapterOptions {
            rank: self.rank.unwrap_or(rank),
            depth: self.depth,
            activation: self.activation,
            scaling: self.scaling,
            lora_alpha: self.lora_alpha.unwrap_or(alpha),
        };
        let targets = if self.targets.is_empty() {
            targets
        } else {
            self.targets.clone()
        };
        let (linears, adapted, total, trainable, processor) = match family {
            ModelFamily::Vit => {
                let processor = ProcessorOverrides::default().resolve(&dir)?;
                let model = load_vit::<TrainBackend>(
                    &dir,
                    self.num_labels,
                    processor.output_side(),
                    0,
                    peanut::Precision::F32,
                )?;
                let total = model.num_params();
                let config = ImageTrainConfig {
                    method: self.method,
                    adapter: options,
                    targets,
                    layers: self.layers.clone(),
                    ..ImageTrainConfig::default()
                }
                .check()?;
                let linears: Vec<String> =
                    model.linear_sites().into_iter().map(|s| s.path).collect();
                let (prepared, trainable) = train::prepare_model(model, &config)?;
                let adapted: Vec<String> =
                    prepared.adapters().into_iter().map(|(p, _)| p).collect();
                (linears, adapted, total, trainable, Some(processor))
            }
            ModelFamily::Llama => {
                let mut model = Llama::<TrainBackend>::from_pretrained(&dir, &backend::device())?;
                let total = model.num_params();
                let linears: Vec<String> =
                    model.linear_sites().into_iter().map(|s| s.path).collect();
                let adapter = options.config(self.method)?;
                train::attach_adapters(&mut model, adapter.as_ref(), &targets, &self.layers, 0)?;
                let model = match self.method {
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
            method: self.method,
            processor,
        })
    }
}
