//! What every job does first: a `--model` or `--data-dir` argument (a directory or a Hugging
//! Face id) resolved and loaded.

use std::path::{Path, PathBuf};

use peanut_models::{Vit, VitLoadOptions};

use crate::backend::{self, Selected};
use crate::data;
use crate::error::{Result, TrainError};
use crate::hub::{self, HubOptions};
use crate::train;

/// What a `--model` directory should hold, for error messages.
pub(crate) const MODEL_HINT: &str = "pass a directory holding transformers' config.json and \
     safetensors weights, or a Hugging Face id";

/// A `--model` argument as a directory: a local path, or a Hugging Face id taken from the cache
/// or downloaded ([`hub::resolve_model`]); `hint` says what the directory should hold.
pub(crate) fn resolve_model_dir(model: &Path, hint: &str) -> Result<PathBuf> {
    let dir = hub::resolve_model(model, &HubOptions::from_env())?;
    require_model_dir(&dir, hint)?;
    Ok(dir)
}

/// An error unless `dir` is a directory; `hint` says what it should hold.
pub(crate) fn require_model_dir(dir: &Path, hint: &str) -> Result<()> {
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
pub(crate) fn load_vit<
    B: burn::tensor::backend::Backend<Device = burn::tensor::Device<Selected>>,
>(
    model: &Path,
    num_labels: Option<usize>,
    image_size: Option<u32>,
    seed: u64,
    storage: impl Into<peanut::FrozenStorage>,
) -> Result<Vit<B>> {
    let storage = storage.into();
    train::check_precision::<B>(&backend::device(), storage.precision)?;
    train::check_quantization::<B>(&backend::device(), storage.quantization)?;
    backend::register_autodiff_ops();
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
        precision: storage.precision,
        quantization: storage.quantization,
    };
    let (model, report) = Vit::from_pretrained(dir, &options, &backend::device())?;
    for note in report.notes() {
        eprintln!("{}: {note}", dir.display());
    }
    Ok(model)
}

/// Every `--data-dir` argument goes through here: a directory, or a hub id (cache or download).
pub(crate) fn read_dataset(data_dir: &Path) -> Result<data::ImageDataset> {
    if !data_dir.exists() && hub::parse_arg(data_dir).is_err() {
        // Neither a path nor a hub id: detection's error names the path and every layout.
        return data::detect(data_dir);
    }
    data::detect(&hub::resolve_dataset(data_dir, &HubOptions::from_env())?)
}
