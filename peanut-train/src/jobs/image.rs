//! The `train image` job: a ViT fine-tuned on an image dataset, evaluated on its test split
//! and exported.

use std::path::PathBuf;

use peanut_models::vit::ImageProcessorConfig;

use super::infer::MergeJob;
use super::load::{load_vit, read_dataset};
use crate::backend::{self, TrainBackend};
use crate::data::Normalization;
use crate::error::Result;
use crate::export::write_labels;
use crate::hub::{self, HubOptions};
use crate::train::{self, ImageTrainConfig, Method, RunOptions};

/// Everything a `train image` run needs, built once, from the command line
/// (`TrainImageArgs::job` in [`crate::cli`]) or from Rust code (`examples/cars.rs`), and only read afterwards.
#[derive(Debug, Clone)]
pub struct ImageJob {
    /// Dataset directory or Hugging Face dataset id (as `--data-dir`).
    pub data_dir: PathBuf,
    /// Pretrained ViT directory or Hugging Face id (as `--model`).
    pub model: PathBuf,
    /// The run directory and how to open it (`--output-dir`, `--resume`, `--overwrite`).
    pub run: RunOptions,
    /// What the run computes.
    pub config: ImageTrainConfig,
    /// Also write the merged model to `<run directory>/merged`.
    pub merged: bool,
    /// The devices to train on (`--devices`). Gradient checkpointing (`--checkpointing`) is
    /// [`train::ImageTrainConfig::recompute_layers`].
    pub devices: train::DeviceSpec,
}

impl ImageJob {
    /// The paper's recipe ([`ImageTrainConfig::default`], ViT-B/16 in21k) on `data_dir`, in
    /// the new run directory `output_dir`.
    pub fn new(data_dir: impl Into<PathBuf>, output_dir: impl Into<PathBuf>) -> Self {
        let config = ImageTrainConfig::default();
        Self {
            data_dir: data_dir.into(),
            model: PathBuf::from(hub::VIT_B16_IN21K),
            run: RunOptions {
                label: config.method.name().into(),
                model: hub::VIT_B16_IN21K.into(),
                ..RunOptions::new(output_dir)
            },
            config,
            merged: false,
            devices: train::DeviceSpec::default(),
        }
    }
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

/// Runs a `train image` job: reads the data, loads the model, trains (or resumes), evaluates on
/// the test split and exports the adapters, head and labels to `<run directory>/export`.
///
/// # Errors
/// Invalid options, unusable data or model, a refused run directory, or a diverging run.
pub fn train_image_job(job: &ImageJob) -> Result<TrainImageOutcome> {
    let mut config = job.config.clone().check()?;
    let devices = backend::training_devices(&job.devices, config.batch_size)?;
    let data = read_dataset(&job.data_dir)?;
    data.check_trainable()?;
    train::check_run_dir(&job.run.dir, &data.root, &job.run.model)?;
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
    // Resolved once (a hub id may download); `load_vit` takes the directory as it is.
    let model_dir = hub::resolve_model(&job.model, &HubOptions::from_env())?;
    // Pixels are normalised as the checkpoint's `preprocessor_config.json` says (ImageNet
    // statistics for DINOv2, DeiT, BEiT …); without one, the ViT default (0.5, 0.5) is used
    // and stderr says so. The size stays `--image-size` (augmentation crops to it).
    if model_dir.is_dir() {
        let fallback = ImageProcessorConfig::vit(config.image_size);
        let (processor, note) = ImageProcessorConfig::from_model_dir(&model_dir, fallback)?;
        if let Some(note) = note {
            eprintln!("{note}");
        }
        config = config.with_normalization(Normalization::from_processor(&processor));
    }
    let config = &config;
    let model = load_vit::<TrainBackend>(
        &model_dir,
        Some(data.classes.len()),
        Some(config.image_size),
        config.seed,
        config.storage(),
    )?;
    let trained = train::train_image_on(model, &data, config, &job.run, &devices)?;
    if trained.skipped_images + trained.skipped_valid_images > 0 {
        println!(
            "unreadable images left out during the run: {} in training, {} in validation \
             (counted once per epoch)",
            trained.skipped_images, trained.skipped_valid_images
        );
    }
    let report = train::evaluate(
        &trained.model,
        &data.test,
        config.image_size,
        config.normalization,
        config.batch_size,
        &devices[0],
    );
    println!(
        "test: top-1 {:.2}%, top-5 {:.2}% on {} images; {} trainable parameters",
        100.0 * report.top1,
        100.0 * report.top5,
        report.count,
        trained.trainable_params
    );
    let export_dir = job.run.dir.join("export");
    let written = train::export_atomically(&export_dir, |staging| {
        let mut written = train::export(&trained.model, staging, job.model.to_str())?;
        written.push(write_labels(staging, &data.classes)?);
        if config.method != Method::Full {
            let manifest =
                train::ExportManifest::of(&trained.model, &job.run.model, Some(config.image_size));
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
            // Every weight was trained (at the training size): the model is the checkpoint.
            let mut model = trained.model;
            model.config.id2label = Some(data.classes.clone());
            train::export_atomically(&merged, |staging| {
                model.save_merged(staging)?;
                Ok(vec![])
            })?;
            println!("wrote {}", merged.display());
        } else {
            // What `peanut merge` writes from this export: the base as its checkpoint has it
            // (its own image size and position embeddings, f32 weights, whatever `--image-size`
            // and `--precision` the run had) with the adapters merged.
            drop(trained.model);
            MergeJob::new(model_dir.clone(), export_dir.clone(), &merged).run()?;
            println!("wrote {}", merged.display());
        }
    }
    Ok(TrainImageOutcome {
        test: report,
        trainable_params: trained.trainable_params,
        export_dir,
    })
}
