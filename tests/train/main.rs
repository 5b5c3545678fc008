//! Training pipeline tests on tiny models and tiny datasets generated on disk: one test target
//! (one link of the burn-heavy binary) with a module per area.

mod backend;
mod bad_input;
mod classify;
mod cli;
#[path = "../common/mod.rs"]
mod common;
#[path = "data.rs"]
mod datasets;
mod hub;
mod interop;
mod lm;
mod scale;
mod trajectory;

use std::path::{Path, PathBuf};

use burn::module::AutodiffModule;
use burn::tensor::backend::Backend;
use peanut_models::{AdaptableModel, Vit, VitConfig};
use peanut_train::TrainError;
use peanut_train::backend::TrainBackend;
use peanut_train::data::{self, Layout};
use peanut_train::schedule::Decay;
use peanut_train::train::{
    self, AdapterOptions, Checked, ImageTrainConfig, LmTrainConfig, Method, RunOptions,
};

/// Whether the selected backend computes in `precision` (flex, cuda and wgpu have 16-bit floats;
/// ndarray has not). When it has not, checks that asking for it is the `--precision` error a run
/// gives before it starts, and says on stderr that the calling test checks only that: the
/// half-precision tests then test the refusal on that backend (`.ci/ndarray.sh`).
pub fn selected_backend_computes_in(precision: peanut::Precision) -> bool {
    match train::check_precision::<TrainBackend>(&peanut_train::backend::device(), precision) {
        Ok(()) => true,
        Err(err) => {
            assert!(
                matches!(
                    err,
                    TrainError::InvalidOption {
                        option: "--precision",
                        ..
                    }
                ),
                "{err}"
            );
            eprintln!(
                "{} has no {precision}: checked that asking for it is refused ({err})",
                peanut_train::backend::NAME
            );
            false
        }
    }
}

pub fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("peanut-train-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A 16×16 image whose colour depends on the class, with some per-image noise, saved in the
/// format the extension names (`.png`, `.jpg`).
pub fn write_png(path: &Path, class: usize, index: usize) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    test_image(class, index).save(path).unwrap();
}

/// The image [`write_png`] writes.
pub fn test_image(class: usize, index: usize) -> image::RgbImage {
    image::RgbImage::from_fn(16, 16, |x, y| {
        let noise = ((x * 7 + y * 13 + index as u32 * 31) % 40) as u8;
        match class {
            0 => image::Rgb([200 + noise / 2, noise, noise]),
            1 => image::Rgb([noise, 200 + noise / 2, noise]),
            _ => image::Rgb([noise, noise, 200 + noise / 2]),
        }
    })
}

pub fn image_folder(root: &Path, per_class: usize) {
    for split in ["train", "test"] {
        for (class, name) in ["red", "green", "blue"].iter().enumerate() {
            for i in 0..per_class {
                write_png(
                    &root.join(split).join(name).join(format!("{i}.png")),
                    class,
                    i,
                );
            }
        }
    }
}

/// A training configuration the pipelines take: [`Check::check`] is its one validation.
pub trait Check: Clone {
    /// The configuration, checked.
    fn check(self) -> peanut_train::Result<Checked<Self>>;
}

impl Check for ImageTrainConfig {
    fn check(self) -> peanut_train::Result<Checked<Self>> {
        ImageTrainConfig::check(self)
    }
}

impl Check for LmTrainConfig {
    fn check(self) -> peanut_train::Result<Checked<Self>> {
        LmTrainConfig::check(self)
    }
}

/// `config` checked; tests pass valid configurations.
pub fn checked<C: Check>(config: &C) -> Checked<C> {
    config.clone().check().unwrap()
}

pub fn tiny_vit(num_labels: usize) -> Vit<TrainBackend> {
    let mut config = VitConfig::tiny();
    config.num_labels = num_labels;
    config.init::<TrainBackend>(3, &Default::default()).unwrap()
}

pub fn tiny_config(method: Method, epochs: usize) -> ImageTrainConfig {
    ImageTrainConfig {
        method,
        adapter: AdapterOptions {
            rank: 2,
            ..AdapterOptions::default()
        },
        epochs,
        batch_size: 4,
        grad_accumulation: 1,
        head_lr: 1e-2,
        adapter_lr: 1e-2,
        decay: Decay::Linear,
        image_size: 16,
        seed: 5,
        ..ImageTrainConfig::default()
    }
}

/// Runs `peanut train image` as the command-line tests do: a tiny run from `data` into `out`
/// on `model`, one epoch of batches of 4 without accumulation, rank 2, at `image_size` pixels,
/// then the options `extra`.
///
/// # Panics
/// When the options do not parse or the run fails (the message names `extra`).
pub fn train_tiny_image(data: &Path, model: &Path, out: &Path, image_size: u32, extra: &[&str]) {
    use clap::Parser;
    let size = image_size.to_string();
    let path = |p: &Path| p.to_str().unwrap().to_string();
    let args = [
        "peanut".to_string(),
        "train".into(),
        "image".into(),
        "--data-dir".into(),
        path(data),
        "--model".into(),
        path(model),
        "--output-dir".into(),
        path(out),
        "--epochs".into(),
        "1".into(),
        "--batch-size".into(),
        "4".into(),
        "--grad-accumulation".into(),
        "1".into(),
        "--image-size".into(),
        size,
        "--rank".into(),
        "2".into(),
    ]
    .into_iter()
    .chain(extra.iter().map(|e| e.to_string()));
    let cli = peanut_train::cli::Cli::try_parse_from(args).unwrap_or_else(|e| panic!("{e}"));
    peanut_train::cli::run(cli).unwrap_or_else(|e| panic!("train image {extra:?}: {e}"));
}

pub fn run(dir: &Path, resume: bool) -> RunOptions {
    RunOptions {
        resume,
        label: "test".into(),
        ..RunOptions::new(dir)
    }
}

/// A run directory `to` as a run killed during epoch `epoch + 1` leaves it: `run.json` and the
/// complete checkpoint of `epoch` copied from the run in `from`.
pub fn copy_epoch(from: &Path, to: &Path, epoch: usize) {
    let source = train::checkpoint::epoch_dir(from, epoch);
    let target = train::checkpoint::epoch_dir(to, epoch);
    std::fs::create_dir_all(&target).unwrap();
    std::fs::copy(from.join("run.json"), to.join("run.json")).unwrap();
    for entry in std::fs::read_dir(&source).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), target.join(entry.file_name())).unwrap();
    }
}

pub fn adapter_values(
    model: &Vit<<TrainBackend as burn::tensor::backend::AutodiffBackend>::InnerBackend>,
) -> Vec<f64> {
    model
        .adapters()
        .into_iter()
        .flat_map(|(_, adapter)| match adapter {
            peanut::Adapter::Peanut(p) => {
                [common::values(p.a.val()), common::values(p.b.val())].concat()
            }
            peanut::Adapter::Lora(l) => {
                [common::values(l.a.val()), common::values(l.b.val())].concat()
            }
        })
        .chain(common::values(model.classifier.base.weight.val()))
        .collect()
}
