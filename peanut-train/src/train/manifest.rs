//! The export manifest (`export.json`): what an export needs to be applied to the right model
//! in the right way, written by `train image` and `train lm` beside the adapters.
//!
//! - `base_model`: where the base model came from (a path or a hub id), for the user.
//! - `base_sample`: a few weights of the frozen base (16 values of each of up to four linears),
//!   so an export applied to another base model of the same shapes is refused instead of
//!   giving silently wrong outputs. The values are compared with a relative tolerance of 1 %,
//!   so the same base stored in f16 or bf16 (`--precision`) still matches.
//! - `image_size`: the side the adapter was trained at (image classification), which `eval`
//!   and `predict` use unless `--image-size` says otherwise.
//!
//! An export without a manifest (written by an earlier version, or by peft) is applied as
//! before, unchecked.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use peanut::AdaptedLinear;
use peanut_models::AdaptableModel;
use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};

/// The manifest's file name inside an export directory.
pub const MANIFEST_FILE: &str = "export.json";

/// Values sampled from each linear's base weight.
const SAMPLES: usize = 16;

/// Most linears sampled.
const LINEARS: usize = 4;

/// Relative tolerance of the base comparison (f16 / bf16 rounding is below 0.4 %).
const TOLERANCE: f32 = 1e-2;

/// The comparison's tolerance where either side is quantized (`--quantize`): the summed
/// difference of a linear's samples against their summed magnitude.
const QUANTIZED_TOLERANCE: f32 = 0.5;

/// What `export.json` holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExportManifest {
    /// Where the base model came from (a path or a hub id), as given to the run.
    pub base_model: String,
    /// Sampled base weights by linear path (evenly spaced flat positions of `weight`).
    pub base_sample: BTreeMap<String, Vec<f32>>,
    /// The image side the adapter was trained at (image classification only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_size: Option<u32>,
    /// The format the base's linear weights were quantized in while training (`--quantize`),
    /// if they were; the samples are then the dequantized values.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_quantization: Option<peanut::Quantization>,
}

/// The linears sampled: those carrying adapters, or (for a head-only run) every linear inside
/// the blocks; at most [`LINEARS`], the first two and the last two.
fn sampled<B: Backend>(
    linears: Vec<(peanut_models::LinearSite, &AdaptedLinear<B>)>,
) -> Vec<(String, &AdaptedLinear<B>)> {
    let adapted: Vec<_> = linears
        .iter()
        .filter(|(_, layer)| !layer.adapters.is_empty())
        .map(|(site, layer)| (site.path.clone(), *layer))
        .collect();
    let mut chosen = if adapted.is_empty() {
        linears
            .iter()
            .filter(|(site, _)| site.layer.is_some())
            .map(|(site, layer)| (site.path.clone(), *layer))
            .collect()
    } else {
        adapted
    };
    if chosen.len() > LINEARS {
        let tail = chosen.split_off(chosen.len() - LINEARS / 2);
        chosen.truncate(LINEARS / 2);
        chosen.extend(tail);
    }
    chosen
}

/// [`SAMPLES`] values of `layer`'s base weight at evenly spaced flat positions, as f32.
fn sample_weight<B: Backend>(layer: &AdaptedLinear<B>) -> Vec<f32> {
    let weight = layer.base_weight();
    let count = weight.shape().num_elements();
    let flat: Tensor<B, 1> = weight.reshape([count]);
    let picks = (0..SAMPLES.min(count))
        .map(|i| {
            let at = i * (count - 1) / (SAMPLES - 1).max(1);
            flat.clone().slice(at..at + 1)
        })
        .collect();
    Tensor::cat(picks, 0)
        .into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .unwrap_or_default()
}

impl ExportManifest {
    /// The manifest of `model` (trained, adapters attached, base frozen), trained from
    /// `base_model`, at `image_size` for an image classifier.
    pub fn of<B: Backend, M: AdaptableModel<B>>(
        model: &M,
        base_model: &str,
        image_size: Option<u32>,
    ) -> Self {
        let sampled = sampled(model.linears());
        let base_quantization = sampled.iter().find_map(|(_, layer)| layer.quantization());
        let base_sample = sampled
            .into_iter()
            .map(|(path, layer)| (path, sample_weight(layer)))
            .collect();
        Self {
            base_model: base_model.to_string(),
            base_sample,
            image_size,
            base_quantization,
        }
    }

    /// Writes the manifest into the export directory `dir` (atomically) and returns its path.
    ///
    /// # Errors
    /// An unwritable directory.
    pub fn write(&self, dir: &Path) -> Result<PathBuf> {
        let path = dir.join(MANIFEST_FILE);
        let json = serde_json::to_vec_pretty(self).expect("manifest serializes");
        peanut::io::write_atomic(&path, &json)?;
        Ok(path)
    }

    /// The manifest of the export around the adapter directory `dir`: `dir/export.json`, or
    /// the export directory's when `dir` is its `peanut/` or `peft/` folder; `None` when there
    /// is none.
    ///
    /// # Errors
    /// A manifest that exists but does not parse.
    pub fn find(dir: &Path) -> Result<Option<Self>> {
        let mut candidates = vec![dir.join(MANIFEST_FILE)];
        if dir
            .file_name()
            .is_some_and(|name| name == "peanut" || name == "peft")
            && let Some(parent) = dir.parent()
        {
            candidates.push(parent.join(MANIFEST_FILE));
        }
        let Some(path) = candidates.into_iter().find(|p| p.is_file()) else {
            return Ok(None);
        };
        Ok(Some(peanut::io::read_json(&path)?))
    }

    /// Checks that `model` (before the export is applied) is the base this export was trained
    /// from; `export` names the export in the error.
    ///
    /// # Errors
    /// [`TrainError::InvalidOption`] for `--adapter`, naming the first linear that differs or
    /// is missing.
    pub fn check_base<B: Backend, M: AdaptableModel<B>>(
        &self,
        model: &M,
        export: &Path,
    ) -> Result<()> {
        let linears = model.linears();
        let refuse = |reason: String| {
            Err(TrainError::InvalidOption {
                option: "--adapter",
                reason: format!(
                    "`{}` was trained from the base model `{}`, and this model is another one \
                     ({reason}); pass the base model the export was trained from",
                    export.display(),
                    self.base_model
                ),
            })
        };
        for (path, expected) in &self.base_sample {
            let Some((_, layer)) = linears.iter().find(|(site, _)| &site.path == path) else {
                return refuse(format!("it has no linear `{path}`"));
            };
            let found = sample_weight(*layer);
            let quantized = self.base_quantization.is_some() || layer.quantization().is_some();
            let same = found.len() == expected.len()
                && if quantized {
                    // Quantized values move by up to a few tenths of their block's largest
                    // magnitude, so compare on the whole sample: the same base differs by far
                    // less than half its mean magnitude, another base by more than all of it.
                    let diff: f32 = found.iter().zip(expected).map(|(a, b)| (a - b).abs()).sum();
                    let size: f32 = expected.iter().map(|b| b.abs()).sum();
                    diff <= QUANTIZED_TOLERANCE * size + 1e-6
                } else {
                    found
                        .iter()
                        .zip(expected)
                        .all(|(a, b)| (a - b).abs() <= TOLERANCE * a.abs().max(b.abs()) + 1e-6)
                };
            if !same {
                return refuse(format!("the weights of `{path}` differ"));
            }
        }
        Ok(())
    }
}
