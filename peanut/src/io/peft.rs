//! Hugging Face peft's PEANuT adapter format (peft ≥ 0.21).
//!
//! A directory with
//! - `adapter_config.json`: `"peft_type": "PEANUT"`, `r`, `depth` (encoder/decoder *pairs*: peft's
//!   0 is the paper's depth 2), `act_fn` (a transformers `ACT2FN` name), `scaling`,
//!   `target_modules`, …;
//! - `adapter_model.safetensors`: `base_model.model.<module>.peanut_A.weight` `[r, out]`,
//!   `…peanut_B.weight` `[out, r]`, `…peanut_encoders.<i>.weight` and
//!   `…peanut_decoders.<i>.weight` `[r, r]`, all in PyTorch's `[out, in]` layout (the transpose
//!   of burn's).
//!
//! Module names differ between a transformers model and a burn one; a [`PeftPaths`] maps them.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use burn::tensor::backend::Backend;
use serde::{Deserialize, Serialize};

use super::{AdapterMap, RawTensor, parse_safetensors, read_file, read_json, serialize_tensors};
use super::{tensor_bytes, write_atomic};
use crate::activation::Activation;
use crate::adapter::Adapter;
use crate::config::PeanutConfig;
use crate::error::{PeanutError, Result};
use crate::peanut::Peanut;

/// Name of peft's configuration file.
pub const CONFIG_FILE: &str = "adapter_config.json";
/// Name of peft's tensor file.
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";
/// The prefix peft puts before every module path of a `PeftModel`.
pub const KEY_PREFIX: &str = "base_model.model.";
const SUFFIXES: [&str; 4] = [
    ".peanut_A.weight",
    ".peanut_B.weight",
    ".peanut_encoders.",
    ".peanut_decoders.",
];

/// Maps module paths between a burn model and the transformers model peft adapted.
///
/// Both directions work on paths without peft's `base_model.model.` prefix. The model crates
/// implement it for their architectures; [`SamePaths`] is the identity.
pub trait PeftPaths {
    /// The transformers module path of one of our module paths.
    fn to_peft(&self, path: &str) -> String;
    /// Our module path for a transformers module path, or `None` if the model has no such
    /// module (loading then fails naming the key).
    #[allow(clippy::wrong_self_convention)] // a mapping direction, not a constructor
    fn from_peft(&self, peft_path: &str) -> Option<String>;
}

/// The identity mapping: module paths are spelled the same on both sides.
#[derive(Debug, Clone, Copy, Default)]
pub struct SamePaths;

impl PeftPaths for SamePaths {
    fn to_peft(&self, path: &str) -> String {
        path.to_string()
    }
    fn from_peft(&self, peft_path: &str) -> Option<String> {
        Some(peft_path.to_string())
    }
}

/// The fields of peft's `adapter_config.json` that this crate reads and writes. Unknown fields
/// are ignored on read.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct PeftConfigFile {
    peft_type: String,
    r: usize,
    #[serde(default)]
    depth: usize,
    #[serde(default = "default_act_fn")]
    act_fn: String,
    #[serde(default = "default_scaling")]
    scaling: f64,
    #[serde(default)]
    target_modules: Option<serde_json::Value>,
    #[serde(default)]
    base_model_name_or_path: Option<String>,
    #[serde(default = "default_true")]
    init_weights: bool,
    #[serde(default = "default_true")]
    inference_mode: bool,
    #[serde(default)]
    task_type: Option<String>,
    #[serde(default)]
    layers_to_transform: Option<serde_json::Value>,
    #[serde(default)]
    layers_pattern: Option<serde_json::Value>,
    #[serde(default)]
    modules_to_save: Option<serde_json::Value>,
    #[serde(default)]
    exclude_modules: Option<serde_json::Value>,
    #[serde(default)]
    revision: Option<String>,
}

fn default_act_fn() -> String {
    "relu".into()
}
fn default_scaling() -> f64 {
    1.0
}
fn default_true() -> bool {
    true
}

/// Reads the PEANuT configuration of a peft adapter directory.
pub fn read_peft_config(dir: &Path) -> Result<PeanutConfig> {
    let path = dir.join(CONFIG_FILE);
    let file: PeftConfigFile = read_json(&path)?;
    if file.peft_type != "PEANUT" {
        return Err(PeanutError::Unsupported {
            path,
            reason: format!(
                "peft_type is `{}`; this reader takes PEANuT adapters (`\"peft_type\": \"PEANUT\"`)",
                file.peft_type
            ),
        });
    }
    let Some(activation) = Activation::from_peft_name(&file.act_fn) else {
        return Err(PeanutError::Unsupported {
            path,
            reason: format!("act_fn `{}` is not implemented by peanut", file.act_fn),
        });
    };
    let config = PeanutConfig::new(file.r)
        .from_peft_depth(file.depth)
        .with_activation(activation)
        .with_scaling(file.scaling);
    config.validate()?;
    Ok(config)
}

/// Loads a peft PEANuT adapter directory, mapping module names through `paths`.
///
/// Every tensor must belong to a PEANuT module and have the shape the configuration implies;
/// otherwise the error names the key and both shapes.
pub fn load_peft<B: Backend>(
    dir: &Path,
    paths: &dyn PeftPaths,
    device: &B::Device,
) -> Result<AdapterMap<B>> {
    let config = read_peft_config(dir)?;
    let weights_path = dir.join(WEIGHTS_FILE);
    let bytes = read_file(&weights_path)?;
    let file = parse_safetensors(&weights_path, &bytes)?;

    // Group keys by module: everything before the first PEANuT suffix.
    let mut modules = BTreeSet::new();
    for name in file.names() {
        let Some(cut) = SUFFIXES.iter().filter_map(|s| name.find(s)).min() else {
            return Err(PeanutError::UnexpectedKey {
                path: weights_path,
                key: name.to_string(),
                hint: " (not a PEANuT tensor)".into(),
            });
        };
        modules.insert(name[..cut].to_string());
    }

    let rank = config.rank;
    let mut used = BTreeSet::new();
    let mut adapters = AdapterMap::new();
    for module in modules {
        let bare = module.strip_prefix(KEY_PREFIX).unwrap_or(&module);
        let Some(ours) = paths.from_peft(bare) else {
            return Err(PeanutError::UnexpectedKey {
                path: weights_path,
                key: format!("{module}.peanut_A.weight"),
                hint: format!(" (module `{bare}` has no counterpart in the model)"),
            });
        };
        let mut read = |key: String, expected: [Option<usize>; 2]| {
            let tensor = RawTensor::read(&file, &weights_path, &key)?;
            let matrix = tensor.matrix::<B>(&key, expected, device)?.transpose();
            used.insert(key);
            Ok::<_, PeanutError>(matrix)
        };
        let a = read(format!("{module}.peanut_A.weight"), [Some(rank), None])?;
        let d_output = a.dims()[0];
        let square = [Some(rank), Some(rank)];
        let encoders = (0..config.pairs())
            .map(|i| read(format!("{module}.peanut_encoders.{i}.weight"), square))
            .collect::<Result<Vec<_>>>()?;
        let decoders = (0..config.pairs())
            .map(|i| read(format!("{module}.peanut_decoders.{i}.weight"), square))
            .collect::<Result<Vec<_>>>()?;
        let b = read(
            format!("{module}.peanut_B.weight"),
            [Some(d_output), Some(rank)],
        )?;
        let peanut =
            Peanut::from_tensors(a, encoders, decoders, b, config.activation, config.scaling);
        adapters.insert(ours, Adapter::Peanut(peanut));
    }
    let mut names = file.names();
    names.sort_unstable();
    if let Some(extra) = names.into_iter().find(|name| !used.contains(*name)) {
        return Err(PeanutError::UnexpectedKey {
            path: weights_path,
            key: extra.to_string(),
            hint: format!(
                " beyond the {} encoder/decoder pairs of `{CONFIG_FILE}`",
                config.pairs()
            ),
        });
    }
    Ok(adapters)
}

/// Saves PEANuT adapters in peft's format, so `PeftModel.from_pretrained` loads them onto the
/// transformers model. All adapters must share one configuration (peft stores one per file) and
/// use an activation peft knows.
pub fn save_peft<'a, B: Backend>(
    dir: &Path,
    adapters: impl IntoIterator<Item = (String, &'a Adapter<B>)>,
    paths: &dyn PeftPaths,
    base_model_name_or_path: Option<&str>,
) -> Result<()> {
    let mut tensors = BTreeMap::new();
    let mut shared: Option<PeanutConfig> = None;
    let mut targets = BTreeSet::new();
    for (path, adapter) in adapters {
        let Adapter::Peanut(peanut) = adapter else {
            return Err(PeanutError::AdapterMismatch {
                module: path,
                reason: format!(
                    "peft's PEANuT format holds PEANuT adapters only, this one is {}",
                    adapter.method()
                ),
            });
        };
        let config = peanut.config();
        match &shared {
            None => shared = Some(config.clone()),
            Some(first) if *first != config => {
                return Err(PeanutError::AdapterMismatch {
                    module: path,
                    reason: format!(
                        "peft stores one configuration per adapter file; this module has \
                         {config:?}, an earlier one {first:?}"
                    ),
                });
            }
            Some(_) => {}
        }
        let peft_path = paths.to_peft(&path);
        targets.insert(
            peft_path
                .rsplit('.')
                .next()
                .unwrap_or(&peft_path)
                .to_string(),
        );
        let key = |name: &str| format!("{KEY_PREFIX}{peft_path}.{name}");
        tensors.insert(
            key("peanut_A.weight"),
            tensor_bytes(peanut.a.val().transpose()),
        );
        for (i, encoder) in peanut.encoders.iter().enumerate() {
            let name = format!("peanut_encoders.{i}.weight");
            tensors.insert(key(&name), tensor_bytes(encoder.val().transpose()));
        }
        for (i, decoder) in peanut.decoders.iter().enumerate() {
            let name = format!("peanut_decoders.{i}.weight");
            tensors.insert(key(&name), tensor_bytes(decoder.val().transpose()));
        }
        tensors.insert(
            key("peanut_B.weight"),
            tensor_bytes(peanut.b.val().transpose()),
        );
    }
    let config = shared.unwrap_or_else(|| PeanutConfig::new(1));
    let Some(act_fn) = config.activation.peft_name() else {
        return Err(PeanutError::Unsupported {
            path: dir.join(CONFIG_FILE),
            reason: format!(
                "activation {:?} has no peft equivalent; save in peanut's own format instead",
                config.activation
            ),
        });
    };
    let weights_path = dir.join(WEIGHTS_FILE);
    let metadata = [("format".to_string(), "pt".to_string())].into();
    let bytes = serialize_tensors(&tensors, Some(metadata), &weights_path)?;
    write_atomic(&weights_path, &bytes)?;
    let file = PeftConfigFile {
        peft_type: "PEANUT".into(),
        r: config.rank,
        depth: config.pairs(),
        act_fn: act_fn.into(),
        scaling: config.scaling,
        target_modules: Some(serde_json::json!(targets)),
        base_model_name_or_path: base_model_name_or_path.map(str::to_string),
        init_weights: true,
        inference_mode: true,
        task_type: None,
        layers_to_transform: None,
        layers_pattern: None,
        modules_to_save: None,
        exclude_modules: None,
        revision: None,
    };
    let json = serde_json::to_vec_pretty(&file).expect("config serializes");
    write_atomic(&dir.join(CONFIG_FILE), &json)
}
