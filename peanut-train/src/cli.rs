//! The `peanut` command line: argument types (clap), the subcommand tree ([`Cli`]) and what
//! each subcommand does ([`run`]). The binary (`src/bin/peanut.rs`) only parses and calls
//! [`run`], so tests can call the same functions.

mod lm;
pub mod values;

use std::path::{Path, PathBuf};

use burn::module::{AutodiffModule, Module, Param};
use burn::tensor::{Tensor, TensorData};
use clap::{Args, Parser, Subcommand};
use peanut_models::vit::VitPeftPaths;
use peanut_models::{AdaptableModel, Vit, VitLoadOptions};

use crate::backend::{self, Selected, TrainBackend};
use crate::data::{self, ImageBatcher, Normalization, SampleRef, Transform};
use crate::error::{Result, TrainError};
use crate::hub::{self, HubOptions};
use crate::schedule::Decay;
use crate::train::{self, AdapterOptions, ImageTrainConfig, Method, RunOptions};

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
        Command::Merge(args) => merge(args),
        Command::Convert(args) => convert(args),
        Command::Info(args) => {
            println!("{}", info(args)?);
            Ok(())
        }
    }
}

/// The adapter options whose defaults every task shares.
#[derive(Args, Debug, Clone)]
pub struct AdapterShapeArgs {
    /// PEANuT depth, counted in linear maps: 2, 4, 6, …
    #[arg(long, default_value_t = 2)]
    pub depth: usize,
    /// PEANuT activation (relu, gelu, gelu_pytorch_tanh, silu, tanh, sigmoid, leaky_relu).
    #[arg(long, default_value = "relu")]
    pub activation: String,
    /// PEANuT scaling s.
    #[arg(long, default_value_t = 1.0)]
    pub scaling: f64,
}

impl AdapterShapeArgs {
    /// The adapter configuration with these options and `rank`, `lora_alpha`.
    pub fn options(&self, rank: usize, lora_alpha: f64) -> AdapterOptions {
        AdapterOptions {
            rank,
            depth: self.depth,
            activation: self.activation.clone(),
            scaling: self.scaling,
            lora_alpha,
        }
    }
}

/// The adapter options shared by `train image` and `info` (defaults: the paper's ViT setting).
#[derive(Args, Debug, Clone)]
pub struct AdapterArgs {
    /// What trains: peanut or lora adapters (plus the head), the head alone, or everything.
    #[arg(long, value_enum, default_value = "peanut")]
    pub method: Method,
    /// Adapter rank (PEANuT's hidden width).
    #[arg(long, default_value_t = 7)]
    pub rank: usize,
    /// Depth, activation and scaling.
    #[command(flatten)]
    pub shape: AdapterShapeArgs,
    /// LoRA alpha (scale alpha / rank).
    #[arg(long, default_value_t = 8.0, value_parser = values::positive_f64)]
    pub lora_alpha: f64,
    /// Linears to adapt, by name or `*` pattern (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "query,value")]
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
    #[arg(long, default_value_t = 10, value_parser = values::at_least_one)]
    pub epochs: usize,
    /// Images per forward/backward pass.
    #[arg(long, default_value_t = 64, value_parser = values::at_least_one)]
    pub batch_size: usize,
    /// Passes accumulated per optimizer step (effective batch = batch-size × this).
    #[arg(long, default_value_t = 4, value_parser = values::at_least_one)]
    pub grad_accumulation: usize,
    /// Peak learning rate of the classifier head.
    #[arg(long, default_value_t = 1e-2, value_parser = values::positive_f64)]
    pub head_lr: f64,
    /// Peak learning rate of the adapters (of the backbone for `--method full`).
    #[arg(long, default_value_t = 1e-2, value_parser = values::positive_f64)]
    pub adapter_lr: f64,
    /// AdamW weight decay.
    #[arg(long, default_value_t = 4e-5, value_parser = values::non_negative_f64)]
    pub weight_decay: f64,
    /// Fraction of steps of linear warmup.
    #[arg(long, default_value_t = 0.0)]
    pub warmup_ratio: f64,
    /// Decay after warmup.
    #[arg(long, value_enum, default_value = "linear")]
    pub decay: Decay,
    /// Clip the global gradient norm to this value (off by default, as in the paper).
    #[arg(long)]
    pub clip_grad_norm: Option<f32>,
    /// Seed of adapters, head, data order and augmentation.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Input side in pixels.
    #[arg(long, default_value_t = 224, value_parser = values::image_size)]
    pub image_size: u32,
    /// Train without RandomResizedCrop + flip (Resize + CenterCrop instead).
    #[arg(long)]
    pub no_augment: bool,
    /// Continue the run in `--output-dir` from its last checkpoint.
    #[arg(long)]
    pub resume: bool,
    /// Also write the merged model (Hugging Face format) to `<output-dir>/merged`.
    #[arg(long)]
    pub merged: bool,
}

impl TrainImageArgs {
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
        }
    }
}

/// Options of `peanut eval image`.
#[derive(Args, Debug, Clone)]
pub struct EvalImageArgs {
    /// Dataset directory or hub id (as for `train image`); its test split is evaluated.
    #[arg(long)]
    pub data_dir: PathBuf,
    /// The base ViT: a directory (`config.json` + safetensors) or a Hugging Face id.
    #[arg(long)]
    pub model: PathBuf,
    /// An export directory written by `train image` (`peanut/` or `peft/`, `head.safetensors`).
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// Input side in pixels.
    #[arg(long, default_value_t = 224, value_parser = values::image_size)]
    pub image_size: u32,
    /// Images per batch.
    #[arg(long, default_value_t = 64, value_parser = values::at_least_one)]
    pub batch_size: usize,
}

/// Options of `peanut predict image`.
#[derive(Args, Debug, Clone)]
pub struct PredictImageArgs {
    /// The base ViT: a directory or a Hugging Face id.
    #[arg(long)]
    pub model: PathBuf,
    /// An export directory written by `train image`.
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// How many labels to report per image.
    #[arg(long, default_value_t = 5)]
    pub top_k: usize,
    /// Input side in pixels.
    #[arg(long, default_value_t = 224, value_parser = values::image_size)]
    pub image_size: u32,
    /// Image files (JPEG or PNG).
    #[arg(required = true)]
    pub images: Vec<PathBuf>,
}

/// Options of `peanut merge`.
#[derive(Args, Debug, Clone)]
pub struct MergeArgs {
    /// The base ViT: a directory or a Hugging Face id.
    #[arg(long)]
    pub model: PathBuf,
    /// An export directory written by `train image`.
    #[arg(long)]
    pub adapter: PathBuf,
    /// Where the merged transformers checkpoint goes.
    #[arg(long)]
    pub output: PathBuf,
    /// Input side in pixels the adapters were trained at (`train image --image-size`); the
    /// merged checkpoint is written at this size. Default: the base checkpoint's.
    #[arg(long, value_parser = values::image_size)]
    pub image_size: Option<u32>,
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
}

/// Options of `peanut info`.
#[derive(Args, Debug, Clone)]
pub struct InfoArgs {
    /// The ViT: a directory or a Hugging Face id.
    #[arg(long)]
    pub model: PathBuf,
    /// The adapters whose trainable parameters to count.
    #[command(flatten)]
    pub adapter: AdapterArgs,
    /// Number of classes of the head.
    #[arg(long)]
    pub num_labels: Option<usize>,
}

/// A `--model` argument as a directory: a local path, or a Hugging Face id taken from the cache
/// or downloaded ([`hub::resolve_model`]); `hint` says what the directory should hold.
fn resolve_model_dir(model: &Path, hint: &str) -> Result<PathBuf> {
    let dir = hub::resolve_model(model, &HubOptions::from_env())?;
    require_model_dir(&dir, hint)?;
    Ok(dir)
}

/// An error unless `dir` is a directory; `hint` says what it should hold.
fn require_model_dir(dir: &Path, hint: &str) -> Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    Err(TrainError::io(
        "model directory not found",
        dir,
        std::io::Error::new(std::io::ErrorKind::NotFound, hint.to_string()),
    ))
}

/// Every `--model` argument goes through here: a directory, or a hub id (cache or download).
fn load_vit(
    model: &Path,
    num_labels: Option<usize>,
    image_size: Option<u32>,
    seed: u64,
) -> Result<Vit<TrainBackend>> {
    let dir = &hub::resolve_model(model, &HubOptions::from_env())?;
    if !dir.is_dir() {
        return Err(TrainError::io(
            "not a model directory",
            dir,
            std::io::Error::new(
                std::io::ErrorKind::NotADirectory,
                "pass a directory holding transformers' config.json and model.safetensors, or a \
                 Hugging Face id such as google/vit-base-patch16-224-in21k",
            ),
        ));
    }
    let options = VitLoadOptions {
        num_labels,
        image_size: image_size.map(|s| s as usize),
        head_seed: seed,
    };
    let (model, report) = Vit::from_pretrained(dir, &options, &backend::device())?;
    for note in report.notes() {
        eprintln!("{}: {note}", dir.display());
    }
    Ok(model)
}

/// Every `--data-dir` argument goes through here: a directory, or a hub id (cache or download).
fn read_dataset(data_dir: &Path) -> Result<data::ImageDataset> {
    if !data_dir.exists() && hub::parse_arg(data_dir).is_err() {
        // Neither a path nor a hub id: detection's error names the path and every layout.
        return data::detect(data_dir);
    }
    data::detect(&hub::resolve_dataset(data_dir, &HubOptions::from_env())?)
}

/// `peanut train image`.
pub fn train_image(args: TrainImageArgs) -> Result<()> {
    train_image_run(args).map(|_| ())
}

/// What a finished `train image` run reports.
#[derive(Debug, Clone)]
pub struct TrainImageOutcome {
    /// Accuracy and loss on the test split.
    pub test: train::EvalReport,
    /// Trainable parameter count.
    pub trainable_params: usize,
    /// The export directory (adapters, head, labels).
    pub export_dir: PathBuf,
}

/// `peanut train image`, returning the test accuracies and the export directory (for callers
/// such as `examples/cars.rs`).
pub fn train_image_run(args: TrainImageArgs) -> Result<TrainImageOutcome> {
    let config = args.config();
    config.validate()?;
    let data = read_dataset(&args.data_dir)?;
    println!(
        "{:?} dataset at {}: {} classes, {} train / {} test images ({} + {} unreadable, skipped)",
        data.layout,
        data.root.display(),
        data.classes.len(),
        data.train.samples.len(),
        data.test.samples.len(),
        data.train.skipped,
        data.test.skipped
    );
    let model = load_vit(
        &args.model,
        Some(data.classes.len()),
        Some(args.image_size),
        args.seed,
    )?;
    let run = RunOptions {
        dir: args.output_dir.clone(),
        resume: args.resume,
        label: args.adapter.method.name().into(),
    };
    let device = backend::device();
    let trained = train::train_image(model, &data, &config, &run, &device)?;
    let report = train::evaluate(
        &trained.model,
        &data.test,
        config.image_size,
        config.normalization,
        config.batch_size,
        &device,
    );
    println!(
        "test: top-1 {:.2}%, top-5 {:.2}% on {} images; {} trainable parameters",
        100.0 * report.top1,
        100.0 * report.top5,
        report.count,
        trained.trainable_params
    );
    let export_dir = args.output_dir.join("export");
    let written = train::export(&trained.model, &export_dir, args.model.to_str())?;
    write_labels(&export_dir, &data.classes)?;
    for path in written {
        println!("wrote {}", path.display());
    }
    if args.merged {
        let mut model = trained.model;
        model.merge_adapters();
        let merged = args.output_dir.join("merged");
        model.save_merged(&merged)?;
        println!("wrote {}", merged.display());
    }
    Ok(TrainImageOutcome {
        test: report,
        trainable_params: trained.trainable_params,
        export_dir,
    })
}

fn write_labels(dir: &Path, classes: &[String]) -> Result<()> {
    let path = dir.join("labels.json");
    let json = serde_json::to_vec_pretty(classes).expect("labels serialize");
    std::fs::write(&path, json).map_err(|e| TrainError::io("cannot write", &path, e))
}

fn read_labels(dir: &Path) -> Result<Option<Vec<String>>> {
    let path = dir.join("labels.json");
    if !path.is_file() {
        return Ok(None);
    }
    let bytes = std::fs::read(&path).map_err(|e| TrainError::io("cannot read", &path, e))?;
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|source| TrainError::Json { path, source })
}

/// The adapter directory of an export directory (`peanut/`, else `peft/`), or `dir` itself.
fn adapter_dir(dir: &Path) -> PathBuf {
    ["peanut", "peft"]
        .iter()
        .map(|d| dir.join(d))
        .find(|d| d.is_dir())
        .unwrap_or_else(|| dir.to_path_buf())
}

/// Loads an export directory (adapter in either format + `head.safetensors`) onto `model`.
///
/// # Errors
/// `dir` holds neither an adapter nor a head (a wrong path must not quietly evaluate the base
/// model), or what it holds does not load.
fn apply_export(mut model: Vit<Selected>, dir: &Path) -> Result<Vit<Selected>> {
    let adapter_dir = adapter_dir(dir);
    let has_adapter = peanut::io::detect_format(&adapter_dir).is_ok();
    if has_adapter {
        model.load_adapters(&adapter_dir)?;
    }
    let head = dir.join("head.safetensors");
    if head.is_file() {
        model = load_head(model, &head)?;
    } else if !has_adapter {
        return Err(TrainError::io(
            "no adapter found in",
            dir,
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "pass the `export` directory of a `train image` run (`peanut/` or `peft/`, \
                 `head.safetensors`) or an adapter directory",
            ),
        ));
    }
    Ok(model)
}

fn load_head(mut model: Vit<Selected>, path: &Path) -> Result<Vit<Selected>> {
    let bytes = std::fs::read(path).map_err(|e| TrainError::io("cannot read", path, e))?;
    let file = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| TrainError::malformed(path, e.to_string()))?;
    let device = backend::device();
    let read = |key: &str| -> Result<(Vec<usize>, Vec<f32>)> {
        let view = file
            .tensor(key)
            .map_err(|_| TrainError::malformed(path, format!("no tensor `{key}`")))?;
        let values = view
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        Ok((view.shape().to_vec(), values))
    };
    let (shape, weight) = read("classifier.weight")?;
    let expected = [model.config.num_labels, model.config.hidden_size];
    if shape != expected {
        return Err(TrainError::malformed(
            path,
            format!("`classifier.weight` has shape {shape:?}, the model needs {expected:?}"),
        ));
    }
    let weight =
        Tensor::<Selected, 2>::from_data(TensorData::new(weight, [shape[0], shape[1]]), &device);
    model.classifier.base.weight = Param::from_tensor(weight.transpose());
    if let Ok((bias_shape, bias)) = read("classifier.bias") {
        let bias =
            Tensor::<Selected, 1>::from_data(TensorData::new(bias, [bias_shape[0]]), &device);
        model.classifier.base.bias = Some(Param::from_tensor(bias));
    }
    Ok(model)
}

/// The base model with an export applied; `image_size` `None` keeps the checkpoint's.
fn inference_model(
    model: &Path,
    adapter: Option<&Path>,
    image_size: Option<u32>,
) -> Result<(Vit<Selected>, Option<Vec<String>>)> {
    let labels = match adapter {
        Some(dir) => read_labels(dir)?,
        None => None,
    };
    let vit = load_vit(model, labels.as_ref().map(Vec::len), image_size, 0)?.valid();
    let vit = match adapter {
        Some(dir) => apply_export(vit, dir)?,
        None => vit,
    };
    Ok((vit, labels))
}

/// `peanut eval image`: accuracy and loss on the dataset's test split ([`run`] prints it as
/// JSON).
pub fn eval_image(args: EvalImageArgs) -> Result<train::EvalReport> {
    let data = read_dataset(&args.data_dir)?;
    let (model, _) = inference_model(&args.model, args.adapter.as_deref(), Some(args.image_size))?;
    if model.config.num_labels != data.classes.len() {
        return Err(TrainError::InvalidOption {
            option: "--adapter",
            reason: format!(
                "the model has {} classes, the dataset {}; pass the export directory of a run on \
                 this dataset",
                model.config.num_labels,
                data.classes.len()
            ),
        });
    }
    Ok(train::evaluate(
        &model,
        &data.test,
        args.image_size,
        Normalization::VIT,
        args.batch_size,
        &backend::device(),
    ))
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
    /// Class name from the export's `labels.json`, or the index.
    pub label: String,
    /// Its logit.
    pub logit: f32,
}

/// `peanut predict image`: per image, the top-k labels and the logits ([`run`] prints them as
/// one JSON array).
pub fn predict_image(args: PredictImageArgs) -> Result<Vec<Prediction>> {
    let (model, labels) =
        inference_model(&args.model, args.adapter.as_deref(), Some(args.image_size))?;
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
    let batcher = ImageBatcher::new(
        samples.into(),
        Transform::eval(args.image_size),
        Normalization::VIT,
        model.config.num_channels,
        0,
    );
    let device = backend::device();
    let mut results = Vec::new();
    for (index, path) in args.images.iter().enumerate() {
        let loaded = batcher.load_all(&[SampleRef { index, pass: 0 }]);
        if loaded.is_empty() {
            return Err(TrainError::malformed(
                path,
                "is not a readable JPEG or PNG image",
            ));
        }
        let batch = batcher.stack::<Selected>(loaded, &device);
        let logits: Vec<f32> = model
            .forward(batch.images)
            .into_data()
            .convert::<f32>()
            .into_vec()
            .unwrap_or_default();
        let mut order: Vec<usize> = (0..logits.len()).collect();
        order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
        let top_k = order
            .iter()
            .take(args.top_k)
            .map(|&index| RankedLabel {
                index,
                label: labels
                    .as_ref()
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

/// `peanut merge`.
pub fn merge(args: MergeArgs) -> Result<()> {
    let (mut model, _) = inference_model(&args.model, Some(&args.adapter), args.image_size)?;
    model.merge_adapters();
    model.save_merged(&args.output)?;
    println!("wrote {}", args.output.display());
    Ok(())
}

/// `peanut convert`.
pub fn convert(args: ConvertArgs) -> Result<()> {
    let device = backend::device();
    let adapters = peanut::io::load_any::<Selected>(&args.input, &VitPeftPaths, &device)?;
    match args.to {
        AdapterFormat::Peanut => {
            peanut::io::save(&args.output, adapters.iter().map(|(k, v)| (k.clone(), v)))?
        }
        AdapterFormat::Peft => peanut::io::save_peft(
            &args.output,
            adapters.iter().map(|(k, v)| (k.clone(), v)),
            &VitPeftPaths,
            None,
        )?,
    }
    println!(
        "wrote {} adapters to {}",
        adapters.len(),
        args.output.display()
    );
    Ok(())
}

/// What `peanut info` reports.
#[derive(Debug, Clone, PartialEq)]
pub struct InfoReport {
    /// The backend the binary was built with.
    pub backend: &'static str,
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
}

impl InfoReport {
    /// Trainable parameters as a percentage of the total.
    pub fn trainable_percent(&self) -> f64 {
        100.0 * self.trainable_params as f64 / self.total_params.max(1) as f64
    }
}

impl std::fmt::Display for InfoReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "backend: {}", self.backend)?;
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
/// counts ([`run`] prints them).
pub fn info(args: InfoArgs) -> Result<InfoReport> {
    let model = load_vit(&args.model, args.num_labels, None, 0)?;
    let total = model.num_params();
    let config = ImageTrainConfig {
        method: args.adapter.method,
        adapter: args.adapter.options(),
        targets: args.adapter.targets.clone(),
        layers: args.adapter.layers.clone(),
        ..ImageTrainConfig::default()
    };
    let linears: Vec<String> = model.linear_sites().into_iter().map(|s| s.path).collect();
    let (prepared, trainable) = train::prepare_model(model, &config)?;
    let adapted: Vec<String> = prepared.adapters().into_iter().map(|(p, _)| p).collect();
    Ok(InfoReport {
        backend: backend::NAME,
        linears,
        adapted,
        total_params: total,
        trainable_params: trainable,
        method: args.adapter.method,
    })
}
