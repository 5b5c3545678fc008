//! This crate's adapter format.
//!
//! A directory with
//! - `peanut_config.json`: `{"format": "peanut-adapter", "version": 1, "modules": {path: config}}`
//!   where each config is an [`AdapterConfig`] (`{"method": "peanut", "rank": 7, ...}`);
//! - `peanut_adapter.safetensors`: f32 tensors in burn's `[d_input, d_output]` layout, keyed
//!   `<path>.peanut.a`, `<path>.peanut.encoders.<i>`, `<path>.peanut.decoders.<i>`,
//!   `<path>.peanut.b`, or `<path>.lora.a`, `<path>.lora.b`.
//!
//! The tensors are written first and the configuration last, each atomically: a directory
//! whose configuration exists always has complete tensors beside it.

use std::collections::BTreeMap;
use std::path::Path;

use burn::tensor::backend::Backend;
use serde::{Deserialize, Serialize};

use super::{AdapterMap, RawTensor, parse_safetensors, read_file, read_json, serialize_tensors};
use super::{tensor_bytes, write_atomic};
use crate::adapter::Adapter;
use crate::config::AdapterConfig;
use crate::error::{PeanutError, Result};
use crate::lora::Lora;
use crate::peanut::Peanut;

/// Name of the configuration file.
pub const CONFIG_FILE: &str = "peanut_config.json";
/// Name of the tensor file.
pub const WEIGHTS_FILE: &str = "peanut_adapter.safetensors";
const FORMAT_NAME: &str = "peanut-adapter";
const FORMAT_VERSION: u32 = 1;

#[derive(Serialize, Deserialize)]
struct ConfigFile {
    format: String,
    version: u32,
    modules: BTreeMap<String, AdapterConfig>,
}

/// Saves adapters under `dir` (created if needed), keyed by module path.
pub fn save<'a, B: Backend>(
    dir: &Path,
    adapters: impl IntoIterator<Item = (String, &'a Adapter<B>)>,
) -> Result<()> {
    let mut tensors = BTreeMap::new();
    let mut modules = BTreeMap::new();
    for (path, adapter) in adapters {
        match adapter {
            Adapter::Peanut(peanut) => {
                tensors.insert(format!("{path}.peanut.a"), tensor_bytes(peanut.a.val()));
                for (i, encoder) in peanut.encoders.iter().enumerate() {
                    let key = format!("{path}.peanut.encoders.{i}");
                    tensors.insert(key, tensor_bytes(encoder.val()));
                }
                for (i, decoder) in peanut.decoders.iter().enumerate() {
                    let key = format!("{path}.peanut.decoders.{i}");
                    tensors.insert(key, tensor_bytes(decoder.val()));
                }
                tensors.insert(format!("{path}.peanut.b"), tensor_bytes(peanut.b.val()));
            }
            Adapter::Lora(lora) => {
                tensors.insert(format!("{path}.lora.a"), tensor_bytes(lora.a.val()));
                tensors.insert(format!("{path}.lora.b"), tensor_bytes(lora.b.val()));
            }
        }
        modules.insert(path, adapter.config());
    }
    let weights_path = dir.join(WEIGHTS_FILE);
    let bytes = serialize_tensors(&tensors, None, &weights_path)?;
    write_atomic(&weights_path, &bytes)?;
    let config = ConfigFile {
        format: FORMAT_NAME.into(),
        version: FORMAT_VERSION,
        modules,
    };
    let json = serde_json::to_vec_pretty(&config).expect("config serializes");
    Ok(write_atomic(&dir.join(CONFIG_FILE), &json)?)
}

/// Loads the adapters saved by [`save`] from `dir`, checking every key and shape.
pub fn load<B: Backend>(dir: &Path, device: &B::Device) -> Result<AdapterMap<B>> {
    let config_path = dir.join(CONFIG_FILE);
    let config: ConfigFile = read_json(&config_path)?;
    if config.format != FORMAT_NAME || config.version != FORMAT_VERSION {
        return Err(PeanutError::Unsupported {
            path: config_path,
            reason: format!(
                "format `{}` version {} (this build reads `{FORMAT_NAME}` version {FORMAT_VERSION})",
                config.format, config.version
            ),
        });
    }
    for module_config in config.modules.values() {
        module_config.validate()?;
    }
    let weights_path = dir.join(WEIGHTS_FILE);
    let bytes = read_file(&weights_path)?;
    let file = parse_safetensors(&weights_path, &bytes)?;
    let mut used = std::collections::HashSet::new();
    let mut adapters = AdapterMap::new();
    for (path, module_config) in config.modules {
        let mut read = |key: String, expected: [Option<usize>; 2]| {
            let tensor = RawTensor::read(&file, &weights_path, &key)?;
            let matrix = tensor.matrix::<B>(&key, expected, device);
            used.insert(key);
            matrix
        };
        let adapter = match &module_config {
            AdapterConfig::Peanut(peanut) => {
                let rank = peanut.rank;
                let a = read(format!("{path}.peanut.a"), [None, Some(rank)])?;
                let d_output = a.dims()[0];
                let square = [Some(rank), Some(rank)];
                let encoders = (0..peanut.pairs())
                    .map(|i| read(format!("{path}.peanut.encoders.{i}"), square))
                    .collect::<Result<Vec<_>>>()?;
                let decoders = (0..peanut.pairs())
                    .map(|i| read(format!("{path}.peanut.decoders.{i}"), square))
                    .collect::<Result<Vec<_>>>()?;
                let b = read(format!("{path}.peanut.b"), [Some(rank), Some(d_output)])?;
                Adapter::Peanut(Peanut {
                    b_init: peanut.b_init,
                    ..Peanut::from_tensors(
                        a,
                        encoders,
                        decoders,
                        b,
                        peanut.activation,
                        peanut.scaling,
                    )
                })
            }
            AdapterConfig::Lora(lora) => {
                let a = read(format!("{path}.lora.a"), [None, Some(lora.rank)])?;
                let b = read(format!("{path}.lora.b"), [Some(lora.rank), None])?;
                Adapter::Lora(Lora {
                    b_init: lora.b_init,
                    ..Lora::from_tensors(a, b, lora.scaling())
                })
            }
        };
        adapters.insert(path, adapter);
    }
    let mut names = file.names();
    names.sort_unstable();
    if let Some(extra) = names.into_iter().find(|name| !used.contains(*name)) {
        return Err(PeanutError::UnexpectedKey {
            path: weights_path,
            key: extra.to_string(),
            hint: format!(" listed in `{CONFIG_FILE}`"),
        });
    }
    Ok(adapters)
}
