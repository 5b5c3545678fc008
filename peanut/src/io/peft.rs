//! Hugging Face peft's PEANuT adapter format (peft ≥ 0.21).
//!
//! A directory with
//! - `adapter_config.json`: `"peft_type": "PEANUT"`, `r`, `depth` (encoder/decoder *pairs*: peft's
//!   0 is the paper's depth 2), `act_fn` (a transformers `ACT2FN` name), `scaling`,
//!   `target_modules`, …;
//! - `adapter_model.safetensors`: `base_model.model.<module>.peanut_A.weight` `[r, out]`,
//!   `…peanut_B.weight` `[out, r]`, `…peanut_encoders.<i>.weight` and
//!   `…peanut_decoders.<i>.weight` `[r, r]`, all in PyTorch's `[out, in]` layout (the transpose
//!   of burn's);
//! - the modules peft saves whole (`modules_to_save`, typically the classifier head of an image
//!   or sequence classifier), keyed `base_model.model.<module>.<param>` as peft writes them, or
//!   `…<module>.modules_to_save.<adapter name>.<param>` as they appear in a live `PeftModel`'s
//!   state dict; both spellings are read ([`load_peft_with_saved`]) and the first is written
//!   ([`add_modules_to_save`]).
//!
//! The configuration is checked against the tensors: every adapted module must match
//! `target_modules` (a list of names, or a single name) and lie in `layers_to_transform` when
//! that is set, and every saved whole module must be named by `modules_to_save`.
//!
//! Module names differ between a transformers model and a burn one; a [`PeftPaths`] maps them.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use burn::tensor::backend::Backend;
use serde::{Deserialize, Serialize};

use super::{AdapterMap, RawTensor, parse_safetensors, read_file, read_json, serialize_tensors};
use super::{SavedModules, SavedTensor, tensor_bytes, write_atomic};
use crate::activation::Activation;
use crate::adapter::Adapter;
use crate::config::PeanutConfig;
use crate::error::{PeanutError, Result};
use crate::lora::Lora;
use crate::peanut::Peanut;

/// Name of peft's configuration file.
pub const CONFIG_FILE: &str = "adapter_config.json";
/// Name of peft's tensor file.
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";
/// The prefix peft puts before every module path of a `PeftModel`.
pub const KEY_PREFIX: &str = "base_model.model.";
const LORA_SUFFIXES: [&str; 2] = [".lora_A.weight", ".lora_B.weight"];
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    depth: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    act_fn: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    scaling: Option<f64>,
    #[serde(default)]
    target_modules: Option<serde_json::Value>,
    #[serde(default)]
    base_model_name_or_path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    init_weights: Option<bool>,
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
    // LoRA (`"peft_type": "LORA"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    lora_alpha: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    use_rslora: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    use_dora: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    fan_in_fan_out: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    bias: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    rank_pattern: Option<BTreeMap<String, usize>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    alpha_pattern: Option<BTreeMap<String, f64>>,
}

fn default_true() -> bool {
    true
}

/// Reads the PEANuT configuration of a peft adapter directory.
pub fn read_peft_config(dir: &Path) -> Result<PeanutConfig> {
    let path = dir.join(CONFIG_FILE);
    let file: PeftConfigFile = read_json(&path)?;
    match method_of(&file, &path)? {
        PeftMethod::Peanut(config) => Ok(config),
        PeftMethod::Lora(_) => Err(PeanutError::Unsupported {
            path,
            reason: "peft_type is `LORA`; this reader takes PEANuT adapters \
                     (`\"peft_type\": \"PEANUT\"`)"
                .into(),
        }),
    }
}

/// What a peft LoRA configuration says about one module's update.
#[derive(Debug, Clone)]
struct LoraFile {
    rank: usize,
    alpha: f64,
    rslora: bool,
    rank_pattern: BTreeMap<String, usize>,
    alpha_pattern: BTreeMap<String, f64>,
}

impl LoraFile {
    /// The rank and scale of the module at peft path `module` (`rank_pattern` and
    /// `alpha_pattern` keys match the path or its trailing components).
    fn for_module(&self, module: &str) -> (usize, f64) {
        let find = |key: &String| module == key || module.ends_with(&format!(".{key}"));
        let rank = self
            .rank_pattern
            .iter()
            .find(|(key, _)| find(key))
            .map_or(self.rank, |(_, r)| *r);
        let alpha = self
            .alpha_pattern
            .iter()
            .find(|(key, _)| find(key))
            .map_or(self.alpha, |(_, a)| *a);
        let denominator = if self.rslora {
            (rank as f64).sqrt()
        } else {
            rank as f64
        };
        (rank, alpha / denominator)
    }
}

/// The method a peft configuration describes.
#[derive(Debug, Clone)]
enum PeftMethod {
    Peanut(PeanutConfig),
    Lora(LoraFile),
}

/// Checks the method-specific fields of a peft configuration.
fn method_of(file: &PeftConfigFile, path: &Path) -> Result<PeftMethod> {
    let unsupported = |reason: String| PeanutError::Unsupported {
        path: path.to_path_buf(),
        reason,
    };
    match file.peft_type.as_str() {
        "PEANUT" => {
            let act_fn = file.act_fn.clone().unwrap_or_else(|| "relu".into());
            let Some(activation) = Activation::from_peft_name(&act_fn) else {
                return Err(unsupported(format!(
                    "act_fn `{act_fn}` is not implemented by peanut"
                )));
            };
            let config = PeanutConfig::new(file.r)
                .from_peft_depth(file.depth.unwrap_or(0))
                .with_activation(activation)
                .with_scaling(file.scaling.unwrap_or(1.0));
            config.validate()?;
            Ok(PeftMethod::Peanut(config))
        }
        "LORA" => {
            if file.use_dora == Some(true) {
                return Err(unsupported(
                    "use_dora: DoRA adapters are not implemented".into(),
                ));
            }
            if file.fan_in_fan_out == Some(true) {
                return Err(unsupported(
                    "fan_in_fan_out: adapters of transposed (Conv1D) layers are not implemented"
                        .into(),
                ));
            }
            if let Some(bias) = file.bias.as_deref().filter(|b| *b != "none") {
                return Err(unsupported(format!(
                    "bias `{bias}`: LoRA adapters that train biases are not implemented"
                )));
            }
            let lora = LoraFile {
                rank: file.r,
                alpha: file.lora_alpha.unwrap_or(8.0),
                rslora: file.use_rslora.unwrap_or(false),
                rank_pattern: file.rank_pattern.clone().unwrap_or_default(),
                alpha_pattern: file.alpha_pattern.clone().unwrap_or_default(),
            };
            let ranks = std::iter::once(&lora.rank).chain(lora.rank_pattern.values());
            let alphas = std::iter::once(&lora.alpha).chain(lora.alpha_pattern.values());
            if ranks.clone().any(|r| *r == 0) || alphas.clone().any(|a| !a.is_finite()) {
                return Err(PeanutError::InvalidConfig {
                    field: "rank",
                    reason: format!(
                        "LoRA ranks must be at least 1 and alphas finite, got r = {}, \
                         lora_alpha = {} in `{}`",
                        lora.rank,
                        lora.alpha,
                        path.display()
                    ),
                });
            }
            Ok(PeftMethod::Lora(lora))
        }
        other => Err(unsupported(format!(
            "peft_type is `{other}`; this reader takes PEANuT (`\"PEANUT\"`) and LoRA \
             (`\"LORA\"`) adapters"
        ))),
    }
}

/// A peft adapter directory as read: the PEANuT adapters and the modules saved whole.
#[derive(Debug)]
pub struct PeftAdapter<B: Backend> {
    /// The adapters, keyed by our module path.
    pub adapters: AdapterMap<B>,
    /// The modules listed in `modules_to_save`, keyed by our module path.
    pub saved: SavedModules,
}

/// Loads a peft PEANuT adapter directory, mapping module names through `paths`; modules saved
/// whole (`modules_to_save`) are checked but not returned — [`load_peft_with_saved`] returns
/// them too.
///
/// Every tensor must belong to a PEANuT module and have the shape the configuration implies;
/// otherwise the error names the key and both shapes.
pub fn load_peft<B: Backend>(
    dir: &Path,
    paths: &dyn PeftPaths,
    device: &B::Device,
) -> Result<AdapterMap<B>> {
    load_peft_with_saved(dir, paths, device).map(|loaded| loaded.adapters)
}

/// The parameter names a saved module may hold (those of a linear, a norm or an embedding).
const SAVED_PARAMS: [&str; 2] = ["weight", "bias"];

/// Splits a key of a module saved whole into (module path without peft's prefix, parameter),
/// accepting `<module>.<param>` and `<module>.modules_to_save.<adapter>.<param>`.
fn saved_module_key(key: &str) -> Option<(String, String)> {
    let bare = key.strip_prefix(KEY_PREFIX).unwrap_or(key);
    let (module, param) = bare.rsplit_once('.')?;
    if !SAVED_PARAMS.contains(&param) || module.contains(".original_module") {
        return None;
    }
    let module = match module.split_once(".modules_to_save") {
        Some((owner, _adapter)) => owner,
        None => module,
    };
    Some((module.to_string(), param.to_string()))
}

/// Whether `module` (a peft module path) is one `names` selects: peft matches a listed name
/// against the whole path or its trailing components.
fn selected_by(names: &[String], module: &str) -> bool {
    names
        .iter()
        .any(|name| module == name || module.ends_with(&format!(".{name}")))
}

/// The names of a `target_modules` / `modules_to_save` value: a list, or one name. A string
/// that is a regular expression (peft full-matches it against module paths) yields `None`, as
/// does `all-linear`: those cannot be checked name by name.
fn name_list(value: &Option<serde_json::Value>) -> Option<Vec<String>> {
    match value.as_ref()? {
        serde_json::Value::Array(items) => Some(
            items
                .iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect(),
        ),
        serde_json::Value::String(name)
            if name != "all-linear"
                && name
                    .chars()
                    .all(|c| c.is_alphanumeric() || c == '_' || c == '.') =>
        {
            Some(vec![name.clone()])
        }
        _ => None,
    }
}

/// The block index in a peft module path: the number after one of `patterns` (peft's default
/// `layers`, `h`, `block`, `blocks`, `layer`).
fn layer_index(module: &str, patterns: &[String]) -> Option<usize> {
    let parts: Vec<&str> = module.split('.').collect();
    parts.windows(2).find_map(|pair| {
        patterns
            .iter()
            .any(|p| p == pair[0])
            .then(|| pair[1].parse().ok())
            .flatten()
    })
}

/// Checks an adapted module (peft's path, prefix removed) against `target_modules`,
/// `layers_to_transform` and `layers_pattern`.
fn check_target(file: &PeftConfigFile, module: &str, config_path: &Path) -> Result<()> {
    let mismatch = |reason: String| PeanutError::Unsupported {
        path: config_path.to_path_buf(),
        reason,
    };
    if let Some(targets) = name_list(&file.target_modules)
        && !selected_by(&targets, module)
    {
        return Err(mismatch(format!(
            "the adapter file adapts `{module}`, which `target_modules` {targets:?} does not name"
        )));
    }
    let layers: Option<Vec<usize>> = match &file.layers_to_transform {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::Number(n)) => n.as_u64().map(|n| vec![n as usize]),
        Some(serde_json::Value::Array(items)) => Some(
            items
                .iter()
                .filter_map(|v| v.as_u64().map(|n| n as usize))
                .collect(),
        ),
        Some(other) => {
            return Err(mismatch(format!(
                "`layers_to_transform` must be an index or a list of indices, got {other}"
            )));
        }
    };
    if let Some(layers) = layers {
        let patterns = name_list(&file.layers_pattern).unwrap_or_else(|| {
            ["layers", "h", "block", "blocks", "layer"]
                .map(str::to_string)
                .to_vec()
        });
        match layer_index(module, &patterns) {
            Some(index) if layers.contains(&index) => {}
            Some(index) => {
                return Err(mismatch(format!(
                    "the adapter file adapts `{module}` in block {index}, outside \
                     `layers_to_transform` {layers:?}"
                )));
            }
            None => {
                return Err(mismatch(format!(
                    "`layers_to_transform` is set but `{module}` has no block index after any \
                     of {patterns:?}"
                )));
            }
        }
    }
    Ok(())
}

/// Loads a peft PEANuT adapter directory with the modules it saved whole.
///
/// The configuration must exist and parse; every tensor must be either a PEANuT tensor of a
/// module `target_modules` names (within `layers_to_transform`) with the shape the
/// configuration implies, or a parameter of a module `modules_to_save` names. Errors name the
/// key or module and, for shapes, both shapes.
pub fn load_peft_with_saved<B: Backend>(
    dir: &Path,
    paths: &dyn PeftPaths,
    device: &B::Device,
) -> Result<PeftAdapter<B>> {
    let config_path = dir.join(CONFIG_FILE);
    let file_config: PeftConfigFile = read_json(&config_path)?;
    let method = method_of(&file_config, &config_path)?;
    let suffixes: &[&str] = match method {
        PeftMethod::Peanut(_) => &SUFFIXES,
        PeftMethod::Lora(_) => &LORA_SUFFIXES,
    };
    let weights_path = dir.join(WEIGHTS_FILE);
    let bytes = read_file(&weights_path)?;
    let file = parse_safetensors(&weights_path, &bytes)?;
    let to_save = name_list(&file_config.modules_to_save).unwrap_or_default();

    // Group keys by module: everything before the first PEANuT suffix; other keys must be
    // parameters of a module saved whole.
    let mut modules = BTreeSet::new();
    let mut saved = SavedModules::new();
    let mut used = BTreeSet::new();
    for name in file.names() {
        if let Some(cut) = suffixes.iter().filter_map(|s| name.find(s)).min() {
            modules.insert(name[..cut].to_string());
            continue;
        }
        let saved_key = saved_module_key(name).filter(|(module, _)| selected_by(&to_save, module));
        let Some((module, param)) = saved_key else {
            return Err(PeanutError::UnexpectedKey {
                path: weights_path,
                key: name.to_string(),
                hint: format!(
                    " (not a {} tensor, nor a parameter of a module `modules_to_save` in \
                     `{CONFIG_FILE}` names: {to_save:?})",
                    file_config.peft_type
                ),
            });
        };
        let Some(ours) = paths.from_peft(&module) else {
            return Err(PeanutError::UnexpectedKey {
                path: weights_path,
                key: name.to_string(),
                hint: format!(" (saved module `{module}` has no counterpart in the model)"),
            });
        };
        let tensor = RawTensor::read(&file, &weights_path, name)?;
        let entry = saved.entry(ours).or_default();
        if entry.params.contains_key(&param) {
            return Err(PeanutError::UnexpectedKey {
                path: weights_path,
                key: name.to_string(),
                hint: format!(" (a second copy of `{module}.{param}`)"),
            });
        }
        entry.params.insert(
            param,
            SavedTensor {
                shape: tensor.shape,
                values: tensor.values,
            },
        );
        used.insert(name.to_string());
    }

    let mut adapters = AdapterMap::new();
    for module in modules {
        let bare = module.strip_prefix(KEY_PREFIX).unwrap_or(&module);
        check_target(&file_config, bare, &config_path)?;
        let Some(ours) = paths.from_peft(bare) else {
            return Err(PeanutError::UnexpectedKey {
                path: weights_path,
                key: format!("{module}{}", suffixes[0]),
                hint: format!(" (module `{bare}` has no counterpart in the model)"),
            });
        };
        let mut read = |key: String, expected: [Option<usize>; 2]| {
            let tensor = RawTensor::read(&file, &weights_path, &key)?;
            let matrix = tensor.matrix::<B>(&key, expected, device)?.transpose();
            used.insert(key);
            Ok::<_, PeanutError>(matrix)
        };
        let adapter = match &method {
            PeftMethod::Peanut(config) => {
                let rank = config.rank;
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
                Adapter::Peanut(Peanut::from_tensors(
                    a,
                    encoders,
                    decoders,
                    b,
                    config.activation,
                    config.scaling,
                ))
            }
            PeftMethod::Lora(lora) => {
                let (rank, scaling) = lora.for_module(bare);
                // peft: lora_A [r, in], lora_B [out, r]; ours: a [in, r], b [r, out].
                let a = read(format!("{module}.lora_A.weight"), [Some(rank), None])?;
                let b = read(format!("{module}.lora_B.weight"), [None, Some(rank)])?;
                Adapter::Lora(Lora::from_tensors(a, b, scaling))
            }
        };
        adapters.insert(ours, adapter);
    }
    let mut names = file.names();
    names.sort_unstable();
    if let Some(extra) = names.into_iter().find(|name| !used.contains(*name)) {
        let hint = match &method {
            PeftMethod::Peanut(config) => format!(
                " beyond the {} encoder/decoder pairs of `{CONFIG_FILE}`",
                config.pairs()
            ),
            PeftMethod::Lora(_) => format!(" unused by the LoRA modules of `{CONFIG_FILE}`"),
        };
        return Err(PeanutError::UnexpectedKey {
            path: weights_path,
            key: extra.to_string(),
            hint,
        });
    }
    Ok(PeftAdapter { adapters, saved })
}

/// Adds modules saved whole to a peft adapter directory written by [`save_peft`]: their
/// parameters go into `adapter_model.safetensors` as `base_model.model.<module>.<param>`
/// (PyTorch layout, f32) and their names into `modules_to_save` of `adapter_config.json`, so
/// `PeftModel.from_pretrained` restores them (for example a trained classifier head) along with
/// the adapters. `modules` is keyed by our module path, mapped through `paths`.
///
/// Both files are rewritten atomically, tensors first.
pub fn add_modules_to_save(
    dir: &Path,
    modules: &SavedModules,
    paths: &dyn PeftPaths,
) -> Result<()> {
    let config_path = dir.join(CONFIG_FILE);
    let weights_path = dir.join(WEIGHTS_FILE);
    let mut config: serde_json::Value = read_json(&config_path)?;
    let bytes = read_file(&weights_path)?;
    let file = parse_safetensors(&weights_path, &bytes)?;
    let mut tensors = BTreeMap::new();
    for name in file.names() {
        let tensor = RawTensor::read(&file, &weights_path, name)?;
        let raw = tensor.values.iter().flat_map(|v| v.to_le_bytes()).collect();
        tensors.insert(name.to_string(), (tensor.shape, raw));
    }
    let mut names: BTreeSet<String> = name_list(&config.get("modules_to_save").cloned())
        .unwrap_or_default()
        .into_iter()
        .collect();
    for (path, module) in modules {
        let peft_path = paths.to_peft(path);
        for (param, tensor) in &module.params {
            let expected: usize = tensor.shape.iter().product();
            if expected != tensor.values.len() {
                return Err(PeanutError::ShapeMismatch {
                    key: format!("{path}.{param}"),
                    expected: tensor.shape.clone(),
                    found: vec![tensor.values.len()],
                });
            }
            let raw = tensor.values.iter().flat_map(|v| v.to_le_bytes()).collect();
            tensors.insert(
                format!("{KEY_PREFIX}{peft_path}.{param}"),
                (tensor.shape.clone(), raw),
            );
        }
        names.insert(peft_path);
    }
    let metadata = [("format".to_string(), "pt".to_string())].into();
    let serialized = serialize_tensors(&tensors, Some(metadata), &weights_path)?;
    write_atomic(&weights_path, &serialized)?;
    config["modules_to_save"] = serde_json::json!(names);
    let json = serde_json::to_vec_pretty(&config).expect("config serializes");
    Ok(write_atomic(&config_path, &json)?)
}

/// Saves adapters in peft's format, so `PeftModel.from_pretrained` loads them onto the
/// transformers model: PEANuT adapters as `"peft_type": "PEANUT"`, LoRA adapters as
/// `"peft_type": "LORA"` (`lora_A` `[r, in]`, `lora_B` `[out, r]`, `lora_alpha = scaling · r`).
/// peft stores one configuration per file, so all adapters must be of one method with one
/// configuration, and PEANuT activations must be ones peft knows.
pub fn save_peft<'a, B: Backend>(
    dir: &Path,
    adapters: impl IntoIterator<Item = (String, &'a Adapter<B>)>,
    paths: &dyn PeftPaths,
    base_model_name_or_path: Option<&str>,
) -> Result<()> {
    let mut tensors = BTreeMap::new();
    let mut shared: Option<crate::config::AdapterConfig> = None;
    let mut targets = BTreeSet::new();
    for (path, adapter) in adapters {
        let config = adapter.config();
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
        match adapter {
            Adapter::Peanut(peanut) => {
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
            Adapter::Lora(lora) => {
                tensors.insert(key("lora_A.weight"), tensor_bytes(lora.a.val().transpose()));
                tensors.insert(key("lora_B.weight"), tensor_bytes(lora.b.val().transpose()));
            }
        }
    }
    let config =
        shared.unwrap_or_else(|| crate::config::AdapterConfig::Peanut(PeanutConfig::new(1)));
    let mut file = PeftConfigFile {
        peft_type: "PEANUT".into(),
        r: 1,
        depth: None,
        act_fn: None,
        scaling: None,
        target_modules: Some(serde_json::json!(targets)),
        base_model_name_or_path: base_model_name_or_path.map(str::to_string),
        init_weights: None,
        inference_mode: true,
        task_type: None,
        layers_to_transform: None,
        layers_pattern: None,
        modules_to_save: None,
        exclude_modules: None,
        revision: None,
        lora_alpha: None,
        use_rslora: None,
        use_dora: None,
        fan_in_fan_out: None,
        bias: None,
        rank_pattern: None,
        alpha_pattern: None,
    };
    match config {
        crate::config::AdapterConfig::Peanut(config) => {
            let Some(act_fn) = config.activation.peft_name() else {
                return Err(PeanutError::Unsupported {
                    path: dir.join(CONFIG_FILE),
                    reason: format!(
                        "activation {:?} has no peft equivalent; save in peanut's own format \
                         instead",
                        config.activation
                    ),
                });
            };
            file.r = config.rank;
            file.depth = Some(config.pairs());
            file.act_fn = Some(act_fn.into());
            file.scaling = Some(config.scaling);
            file.init_weights = Some(true);
        }
        crate::config::AdapterConfig::Lora(config) => {
            file.peft_type = "LORA".into();
            file.r = config.rank;
            file.lora_alpha = Some(config.alpha);
            file.use_rslora = Some(false);
            file.use_dora = Some(false);
            file.fan_in_fan_out = Some(false);
            file.bias = Some("none".into());
        }
    }
    let weights_path = dir.join(WEIGHTS_FILE);
    let metadata = [("format".to_string(), "pt".to_string())].into();
    let bytes = serialize_tensors(&tensors, Some(metadata), &weights_path)?;
    write_atomic(&weights_path, &bytes)?;
    let json = serde_json::to_vec_pretty(&file).expect("config serializes");
    Ok(write_atomic(&dir.join(CONFIG_FILE), &json)?)
}
