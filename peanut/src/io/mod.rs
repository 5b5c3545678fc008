//! Adapter files: only the adapter parameters and their configuration, never the base model.
//!
//! Two formats:
//! - [`native`]: this crate's own, `peanut_config.json` + `peanut_adapter.safetensors`, tensors in
//!   burn's layout; holds PEANuT and LoRA adapters, each module with its own configuration.
//! - [`peft`]: Hugging Face peft's PEANuT format, `adapter_config.json` (`"peft_type": "PEANUT"`)
//!   + `adapter_model.safetensors`, tensors in PyTorch's `[out, in]` layout.
//!
//! Loading yields an [`AdapterMap`] keyed by module path; [`attach`] puts it onto a model's
//! [`AdaptedLinear`] layers, checking every shape. peft files may also hold whole modules
//! (`modules_to_save`, such as a trained classifier): [`load_any_with_saved`] returns them as
//! [`SavedModules`] and [`attach_saved`] replaces the base weights of those layers.
//! Non-finite values (NaN, ±∞) in any tensor read are an error naming the tensor. Every write is atomic (temporary file, then
//! rename), so a crash never leaves a half-written file behind.

pub mod native;
pub mod peft;

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::Path;

use burn::tensor::{Tensor, TensorData, backend::Backend};
use safetensors::{Dtype, SafeTensors};

use crate::adapted::AdaptedLinear;
use crate::adapter::Adapter;
use crate::error::{FileError, PeanutError, Result};

pub use native::{load, save};
pub use peft::{
    PeftAdapter, PeftPaths, SamePaths, add_modules_to_save, load_peft, load_peft_with_saved,
    save_peft,
};

/// Adapters read from a file, keyed by module path (for example
/// `encoder.layer.0.attention.attention.query`), in the path order of a `BTreeMap`.
pub type AdapterMap<B> = BTreeMap<String, Adapter<B>>;

/// Which format a directory holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// This crate's format ([`native`]).
    Native,
    /// Hugging Face peft's PEANuT format ([`peft`]).
    Peft,
}

/// Tells which format `dir` holds, by its configuration file.
pub fn detect_format(dir: &Path) -> Result<Format> {
    if dir.join(native::CONFIG_FILE).is_file() {
        Ok(Format::Native)
    } else if dir.join(peft::CONFIG_FILE).is_file() {
        Ok(Format::Peft)
    } else {
        Err(FileError::io(
            "no adapter found in",
            dir,
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!(
                    "expected `{}` (peanut format) or `{}` (peft format)",
                    native::CONFIG_FILE,
                    peft::CONFIG_FILE
                ),
            ),
        )
        .into())
    }
}

/// Loads either format, detected by [`detect_format`]. `paths` maps peft's module names onto
/// the model's; it is not used for the native format.
pub fn load_any<B: Backend>(
    dir: &Path,
    paths: &dyn PeftPaths,
    device: &B::Device,
) -> Result<AdapterMap<B>> {
    match detect_format(dir)? {
        Format::Native => native::load(dir, device),
        Format::Peft => peft::load_peft(dir, paths, device),
    }
}

/// A tensor of a module saved whole, in PyTorch's layout (`[d_output, d_input]` for a linear's
/// weight), as f32 values.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SavedTensor {
    /// The shape.
    pub shape: Vec<usize>,
    /// The values, row-major.
    pub values: Vec<f32>,
}

/// A module peft saves whole (`modules_to_save`): its parameters by name (`weight`, `bias`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SavedModule {
    /// Parameter name → tensor.
    pub params: BTreeMap<String, SavedTensor>,
}

impl SavedModule {
    /// A linear layer's `weight` (`[d_output, d_input]`, PyTorch layout) and optional `bias`.
    pub fn linear(weight: SavedTensor, bias: Option<SavedTensor>) -> Self {
        let mut params = BTreeMap::from([("weight".to_string(), weight)]);
        if let Some(bias) = bias {
            params.insert("bias".to_string(), bias);
        }
        Self { params }
    }

    /// The saved module of a model's linear layer (its base weight and bias).
    pub fn from_linear<B: Backend>(layer: &AdaptedLinear<B>) -> Self {
        let read = |shape: Vec<usize>, data: TensorData| SavedTensor {
            shape,
            values: data
                .convert::<f32>()
                .into_vec::<f32>()
                .expect("float tensor converts to f32"),
        };
        let weight = layer.base_weight().transpose();
        let weight = read(weight.dims().to_vec(), weight.into_data());
        let bias = layer.base.bias.as_ref().map(|bias| {
            let bias = bias.val();
            read(bias.dims().to_vec(), bias.into_data())
        });
        Self::linear(weight, bias)
    }
}

/// Modules saved whole, keyed by our module path.
pub type SavedModules = BTreeMap<String, SavedModule>;

/// Loads either format with the modules a peft file saved whole (none for this crate's own
/// format).
pub fn load_any_with_saved<B: Backend>(
    dir: &Path,
    paths: &dyn PeftPaths,
    device: &B::Device,
) -> Result<(AdapterMap<B>, SavedModules)> {
    match detect_format(dir)? {
        Format::Native => Ok((native::load(dir, device)?, SavedModules::new())),
        Format::Peft => {
            let loaded = peft::load_peft_with_saved(dir, paths, device)?;
            Ok((loaded.adapters, loaded.saved))
        }
    }
}

/// Replaces the base weight and bias of the layers named in `saved` (a head trained alongside
/// the adapters and saved by peft's `modules_to_save`).
///
/// Every module must be one of `layers`, hold only `weight` (`[d_output, d_input]`) and `bias`
/// (`[d_output]`, only where the layer has one) of the layer's shapes; otherwise nothing is
/// changed and the error names the module or tensor.
pub fn attach_saved<'a, B: Backend>(
    layers: impl IntoIterator<Item = (String, &'a mut AdaptedLinear<B>)>,
    saved: &SavedModules,
) -> Result<()> {
    let mut layers: BTreeMap<String, &'a mut AdaptedLinear<B>> = layers.into_iter().collect();
    for (path, module) in saved {
        let Some(layer) = layers.get(path) else {
            return Err(PeanutError::UnknownModule {
                module: path.clone(),
                known: layers.keys().take(8).cloned().collect(),
            });
        };
        let [d_input, d_output] = layer.dims();
        for (param, tensor) in &module.params {
            let expected = match param.as_str() {
                "weight" => vec![d_output, d_input],
                "bias" if layer.base.bias.is_some() => vec![d_output],
                _ => {
                    return Err(PeanutError::AdapterMismatch {
                        module: path.clone(),
                        reason: format!(
                            "the saved module holds `{param}`, which the model's linear layer \
                             does not have"
                        ),
                    });
                }
            };
            if tensor.shape != expected || tensor.values.len() != expected.iter().product::<usize>()
            {
                return Err(PeanutError::ShapeMismatch {
                    key: format!("{path}.{param}"),
                    expected,
                    found: tensor.shape.clone(),
                });
            }
        }
        if !module.params.contains_key("weight") {
            return Err(PeanutError::AdapterMismatch {
                module: path.clone(),
                reason: "the saved module has no `weight`".into(),
            });
        }
    }
    for (path, module) in saved {
        let layer = layers.get_mut(path).expect("checked above");
        let device = layer.device();
        let was_merged = layer.is_merged();
        layer.unmerge();
        for (param, tensor) in &module.params {
            let data = TensorData::new(tensor.values.clone(), tensor.shape.clone());
            if param == "weight" {
                let weight = Tensor::<B, 2>::from_data(data, &device).transpose();
                layer.set_base_weight(weight);
            } else if let Some(bias) = layer.base.bias.take() {
                let values = Tensor::<B, 1>::from_data(data, &device);
                layer.base.bias = Some(bias.map(|_| values));
            }
        }
        if was_merged {
            layer.merge_in_place();
        }
    }
    Ok(())
}

/// Puts loaded adapters onto a model's layers: each layer named in `adapters` gets that adapter
/// in place of whatever adapters it had.
///
/// Every module path must name one of `layers`, and every adapter must fit its layer; otherwise
/// nothing is changed and the error names the module or tensor and both shapes. Layers not named
/// in `adapters` are left as they are.
pub fn attach<'a, B: Backend>(
    layers: impl IntoIterator<Item = (String, &'a mut AdaptedLinear<B>)>,
    adapters: AdapterMap<B>,
) -> Result<()> {
    let mut layers: BTreeMap<String, &'a mut AdaptedLinear<B>> = layers.into_iter().collect();
    // Check everything before touching anything.
    for (path, adapter) in &adapters {
        let Some(layer) = layers.get(path) else {
            return Err(PeanutError::UnknownModule {
                module: path.clone(),
                known: layers.keys().take(8).cloned().collect(),
            });
        };
        check_fits(path, adapter, layer.dims())?;
    }
    for (path, adapter) in adapters {
        let layer = layers.get_mut(&path).expect("checked above");
        layer.adapters.clear();
        layer.push_adapter(adapter);
    }
    Ok(())
}

/// Checks that `adapter` fits a `[d_input, d_output]` layer; the error names the tensor.
pub fn check_fits<B: Backend>(
    module: &str,
    adapter: &Adapter<B>,
    [d_input, d_output]: [usize; 2],
) -> Result<()> {
    let (key, expected, found) = match adapter {
        Adapter::Peanut(peanut) => {
            let [rows, rank] = peanut.a.dims();
            (format!("{module}.peanut.a"), [d_output, rank], [rows, rank])
        }
        Adapter::Lora(lora) => {
            let a = lora.a.dims();
            let b = lora.b.dims();
            if a[0] != d_input {
                (format!("{module}.lora.a"), [d_input, a[1]], a)
            } else {
                (format!("{module}.lora.b"), [b[0], d_output], b)
            }
        }
    };
    if expected == found {
        Ok(())
    } else {
        Err(PeanutError::ShapeMismatch {
            key,
            expected: expected.to_vec(),
            found: found.to_vec(),
        })
    }
}

/// Writes `bytes` to `path` crash-safely: a temporary file in the same directory, flushed to
/// disk, renamed over the target, then the directory flushed so the rename itself survives a
/// power cut. Parent directories are created. Every file this workspace writes goes through here.
///
/// # Errors
/// [`FileError::Io`] naming `path` (the temporary file is removed).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), FileError> {
    let io_err = |action, source| FileError::io(action, path, source);
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(|e| io_err("cannot create the directory of", e))?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let written = (|| {
        let mut file = fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, path)?;
        if let Ok(dir) = fs::File::open(dir) {
            // Not every platform can sync a directory; the rename is done either way.
            let _ = dir.sync_all();
        }
        Ok(())
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(io_err("cannot write", e));
    }
    Ok(())
}

/// The bytes of the file at `path`.
///
/// # Errors
/// [`FileError::Io`] naming `path`.
pub fn read_file(path: &Path) -> Result<Vec<u8>, FileError> {
    fs::read(path).map_err(|source| FileError::io("cannot read", path, source))
}

/// Reads and parses the JSON file at `path` (a UTF-8 byte-order mark, as some Windows editors
/// write, is skipped): the one JSON reader of the workspace, for adapter configs, checkpoint
/// configs, run records and export manifests alike.
///
/// # Errors
/// [`FileError::Io`] when the file cannot be read, [`FileError::Json`] (with line and column)
/// when it does not parse into `T`.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, FileError> {
    let bytes = read_file(path)?;
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(&bytes);
    serde_json::from_slice(bytes).map_err(|source| FileError::json(path, source))
}

pub(crate) fn parse_safetensors<'a>(
    path: &Path,
    bytes: &'a [u8],
) -> Result<SafeTensors<'a>, FileError> {
    SafeTensors::deserialize(bytes).map_err(|source| FileError::safetensors(path, source))
}

/// Little-endian safetensors bytes of a float dtype (F32, F16, BF16, F64) as f32 values; `None`
/// for any other dtype.
pub fn decode_floats(data: &[u8], dtype: Dtype) -> Option<Vec<f32>> {
    Some(match dtype {
        Dtype::F32 => data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        Dtype::F16 => data
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        Dtype::BF16 => data
            .chunks_exact(2)
            .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        Dtype::F64 => data
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes")) as f32)
            .collect(),
        _ => return None,
    })
}

/// The first NaN or infinity of `values` and its index, if any: weights read from a file are
/// checked with it, so a corrupt or diverged file is refused naming the tensor instead of
/// turning every output into NaN.
pub fn first_non_finite(values: &[f32]) -> Option<(usize, f32)> {
    values
        .iter()
        .position(|v| !v.is_finite())
        .map(|index| (index, values[index]))
}

/// Every tensor of the safetensors file at `path` as f32 values (F16, BF16 and F64 converted),
/// by key.
///
/// # Errors
/// An unreadable or malformed file, a tensor that is not a float, or a NaN or infinite value
/// (the error names the key and the index).
pub fn read_f32_tensors(path: &Path) -> Result<BTreeMap<String, SavedTensor>> {
    let bytes = read_file(path)?;
    let file = parse_safetensors(path, &bytes)?;
    file.names()
        .into_iter()
        .map(|key| {
            let RawTensor { shape, values } = RawTensor::read(&file, path, key)?;
            Ok((key.to_string(), SavedTensor { shape, values }))
        })
        .collect()
}

/// A float tensor read from a safetensors file as `f32` values and its shape.
pub(crate) struct RawTensor {
    pub shape: Vec<usize>,
    pub values: Vec<f32>,
}

impl RawTensor {
    /// Reads `key` from `file` (converting F16, BF16 and F64 to f32); a NaN or infinite value
    /// is an error naming the key.
    pub fn read(file: &SafeTensors<'_>, path: &Path, key: &str) -> Result<Self> {
        let view = file.tensor(key).map_err(|_| PeanutError::MissingKey {
            path: path.to_path_buf(),
            key: key.to_string(),
        })?;
        let Some(values) = decode_floats(view.data(), view.dtype()) else {
            return Err(PeanutError::UnsupportedDtype {
                key: key.to_string(),
                dtype: format!("{:?}", view.dtype()),
            });
        };
        if let Some((index, value)) = first_non_finite(&values) {
            return Err(PeanutError::NonFiniteTensor {
                path: path.to_path_buf(),
                key: key.to_string(),
                value,
                index,
            });
        }
        Ok(Self {
            shape: view.shape().to_vec(),
            values,
        })
    }

    /// The tensor as a matrix, or a shape error naming `key` when it is not `expected`
    /// (`None` in `expected` accepts any size on that axis).
    pub fn matrix<B: Backend>(
        self,
        key: &str,
        expected: [Option<usize>; 2],
        device: &B::Device,
    ) -> Result<Tensor<B, 2>> {
        let fits = self.shape.len() == 2
            && expected
                .iter()
                .zip(&self.shape)
                .all(|(want, &got)| want.is_none_or(|w| w == got));
        if !fits {
            return Err(PeanutError::ShapeMismatch {
                key: key.to_string(),
                expected: expected
                    .iter()
                    .zip(self.shape.iter().chain(std::iter::repeat(&0)))
                    .map(|(want, &got)| want.unwrap_or(got))
                    .collect(),
                found: self.shape,
            });
        }
        let shape = [self.shape[0], self.shape[1]];
        Ok(Tensor::from_data(
            TensorData::new(self.values, shape),
            device,
        ))
    }
}

/// A tensor's values as little-endian f32 bytes, with its shape, ready for safetensors.
pub(crate) fn tensor_bytes<B: Backend, const D: usize>(
    tensor: Tensor<B, D>,
) -> (Vec<usize>, Vec<u8>) {
    let shape = tensor.dims().to_vec();
    let values = tensor
        .into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .expect("float tensor converts to f32");
    let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    (shape, bytes)
}

/// Serializes named f32 tensors (shape, bytes) with optional metadata.
pub(crate) fn serialize_tensors(
    tensors: &BTreeMap<String, (Vec<usize>, Vec<u8>)>,
    metadata: Option<std::collections::HashMap<String, String>>,
    path: &Path,
) -> Result<Vec<u8>> {
    let entries = tensors
        .iter()
        .map(|(key, (shape, bytes))| (key.as_str(), shape.as_slice(), bytes.as_slice()));
    f32_safetensors_from_bytes(entries, metadata)
        .map_err(|source| FileError::safetensors(path, source).into())
}

/// The bytes of a safetensors file holding f32 tensors `(key, shape, values)` and `metadata`:
/// the one f32 writer of the workspace (adapters, checkpoints, classifier heads). Callers name
/// the file in their own error type.
///
/// # Errors
/// A shape that does not match its values' length.
pub fn f32_safetensors<'a>(
    tensors: impl IntoIterator<Item = (&'a str, &'a [usize], &'a [f32])>,
    metadata: Option<std::collections::HashMap<String, String>>,
) -> std::result::Result<Vec<u8>, safetensors::SafeTensorError> {
    let owned: Vec<(&str, &[usize], Vec<u8>)> = tensors
        .into_iter()
        .map(|(key, shape, values)| {
            let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            (key, shape, bytes)
        })
        .collect();
    f32_safetensors_from_bytes(
        owned
            .iter()
            .map(|(key, shape, bytes)| (*key, *shape, bytes.as_slice())),
        metadata,
    )
}

/// [`f32_safetensors`] of values already as little-endian f32 bytes.
fn f32_safetensors_from_bytes<'a>(
    tensors: impl IntoIterator<Item = (&'a str, &'a [usize], &'a [u8])>,
    metadata: Option<std::collections::HashMap<String, String>>,
) -> std::result::Result<Vec<u8>, safetensors::SafeTensorError> {
    let views = tensors
        .into_iter()
        .map(|(key, shape, bytes)| {
            safetensors::tensor::TensorView::new(Dtype::F32, shape.to_vec(), bytes)
                .map(|view| (key.to_string(), view))
        })
        .collect::<std::result::Result<Vec<_>, _>>()?;
    safetensors::serialize(views, metadata)
}
