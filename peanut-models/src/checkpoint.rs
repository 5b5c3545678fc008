//! Hugging Face checkpoints on disk: `config.json` plus `model.safetensors` or a sharded
//! `model.safetensors.index.json`, read into burn tensors and written back.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Path, PathBuf};

use burn::tensor::{Tensor, TensorData, backend::Backend};
use peanut::FileError;
use peanut::io::write_atomic;
use safetensors::SafeTensors;
use serde::Deserialize;

use crate::error::{ModelError, Result};

/// The single-file weights name transformers writes.
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// The shard index transformers writes for large models.
pub const INDEX_FILE: &str = "model.safetensors.index.json";
/// The model configuration file.
pub const CONFIG_FILE: &str = "config.json";

/// One safetensors file held in memory with its parsed header.
struct Shard {
    path: PathBuf,
    bytes: Vec<u8>,
    /// Offset of the data section (8 + header length).
    data_start: usize,
    metadata: safetensors::tensor::Metadata,
}

/// The weights of a Hugging Face checkpoint directory, single-file or sharded.
///
/// Tensors are read by their Hugging Face key in PyTorch's layout and converted from f32, f16,
/// bf16 or f64 to the backend's float type. Every error names the file and the key.
pub struct Checkpoint {
    dir: PathBuf,
    shards: Vec<Shard>,
    /// Key to the index of its shard.
    keys: BTreeMap<String, usize>,
}

impl std::fmt::Debug for Checkpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkpoint")
            .field("dir", &self.dir)
            .field(
                "shards",
                &self.shards.iter().map(|s| &s.path).collect::<Vec<_>>(),
            )
            .field("tensors", &self.keys.len())
            .finish()
    }
}

#[derive(Deserialize)]
struct ShardIndex {
    weight_map: BTreeMap<String, String>,
}

impl Checkpoint {
    /// Opens `dir/model.safetensors.index.json` (and every shard it lists) when present, else
    /// `dir/model.safetensors`.
    pub fn open(dir: &Path) -> Result<Self> {
        let index_path = dir.join(INDEX_FILE);
        let single = dir.join(WEIGHTS_FILE);
        let mut shards = Vec::new();
        let mut keys = BTreeMap::new();
        if index_path.is_file() {
            let index: ShardIndex = peanut::io::read_json(&index_path)?;
            let mut by_file: HashMap<String, usize> = HashMap::new();
            for (key, file) in &index.weight_map {
                let shard = match by_file.get(file) {
                    Some(&i) => i,
                    None => {
                        shards.push(Shard::read(&shard_path(dir, &index_path, file)?)?);
                        by_file.insert(file.clone(), shards.len() - 1);
                        shards.len() - 1
                    }
                };
                if shards[shard].metadata.info(key).is_none() {
                    return Err(ModelError::MissingKey {
                        path: shards[shard].path.clone(),
                        key: format!("{key} (listed for this file in `{INDEX_FILE}`)"),
                    });
                }
                keys.insert(key.clone(), shard);
            }
        } else if single.is_file() {
            let shard = Shard::read(&single)?;
            for key in shard.metadata.tensors().keys() {
                keys.insert(key.clone(), 0);
            }
            shards.push(shard);
        } else {
            return Err(FileError::io(
                "no weights found in",
                dir,
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!("expected `{WEIGHTS_FILE}` or `{INDEX_FILE}`"),
                ),
            )
            .into());
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            shards,
            keys,
        })
    }

    /// The checkpoint directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether the checkpoint holds `key`.
    pub fn contains(&self, key: &str) -> bool {
        self.keys.contains_key(key)
    }

    /// Every key, sorted.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.keys.keys().map(String::as_str)
    }

    /// The shape of `key` as stored, if present.
    pub fn shape(&self, key: &str) -> Option<Vec<usize>> {
        let shard = &self.shards[*self.keys.get(key)?];
        shard.metadata.info(key).map(|info| info.shape.clone())
    }

    /// The file holding `key` (the single weights file or index when absent).
    pub fn file_of(&self, key: &str) -> PathBuf {
        match self.keys.get(key) {
            Some(&i) => self.shards[i].path.clone(),
            None if self.shards.len() == 1 && !self.dir.join(INDEX_FILE).is_file() => {
                self.shards[0].path.clone()
            }
            None => self.dir.join(INDEX_FILE),
        }
    }

    /// Reads `key` as a `D`-dimensional tensor of exactly `shape` (PyTorch layout).
    ///
    /// # Shapes
    /// - output: `shape`
    pub fn tensor<B: Backend, const D: usize>(
        &self,
        key: &str,
        shape: [usize; D],
        device: &B::Device,
    ) -> Result<Tensor<B, D>> {
        let Some(&index) = self.keys.get(key) else {
            return Err(ModelError::MissingKey {
                path: self.file_of(key),
                key: key.to_string(),
            });
        };
        let shard = &self.shards[index];
        let info = shard.metadata.info(key).expect("indexed keys exist");
        if info.shape != shape {
            return Err(ModelError::ShapeMismatch {
                path: shard.path.clone(),
                key: key.to_string(),
                expected: shape.to_vec(),
                found: info.shape.clone(),
            });
        }
        let (start, end) = info.data_offsets;
        let data = &shard.bytes[shard.data_start + start..shard.data_start + end];
        let values = peanut::io::decode_floats(data, info.dtype).ok_or_else(|| {
            ModelError::UnsupportedDtype {
                path: shard.path.clone(),
                key: key.to_string(),
                dtype: format!("{:?}", info.dtype),
            }
        })?;
        if let Some((index, value)) = peanut::io::first_non_finite(&values) {
            return Err(ModelError::NonFiniteTensor {
                path: shard.path.clone(),
                key: key.to_string(),
                value,
                index,
            });
        }
        Ok(Tensor::from_data(TensorData::new(values, shape), device))
    }
}

/// The path of the shard `file` that `index` lists, confined to the checkpoint directory `dir`:
/// a relative path of plain components (no root, no `..`) whose real location, symbolic links
/// resolved, lies inside `dir` — or, for a Hugging Face cache snapshot
/// (`…/snapshots/<commit>/`), inside that repository's `blobs/` directory, where the cache's
/// links point.
fn shard_path(dir: &Path, index: &Path, file: &str) -> Result<PathBuf> {
    use std::path::Component;
    let refuse = |reason: &str| ModelError::ShardOutsideModel {
        index: index.to_path_buf(),
        file: file.to_string(),
        reason: reason.to_string(),
    };
    let relative = Path::new(file);
    if file.is_empty() || relative.components().next().is_none() {
        return Err(refuse("is empty"));
    }
    if !relative
        .components()
        .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err(refuse(
            "is absolute or climbs out of the directory with `..`",
        ));
    }
    let path = dir.join(relative);
    let Ok(real) = path.canonicalize() else {
        // A missing file: reading it reports the path.
        return Ok(path);
    };
    let mut roots: Vec<PathBuf> = dir.canonicalize().into_iter().collect();
    if dir
        .parent()
        .and_then(Path::file_name)
        .is_some_and(|name| name == "snapshots")
        && let Some(repo) = dir.parent().and_then(Path::parent)
        && let Ok(blobs) = repo.join("blobs").canonicalize()
    {
        roots.push(blobs);
    }
    if roots.iter().any(|root| real.starts_with(root)) {
        Ok(path)
    } else {
        Err(refuse(&format!(
            "is a link to `{}`, outside the directory",
            real.display()
        )))
    }
}

impl Shard {
    fn read(path: &Path) -> Result<Self> {
        let bytes = peanut::io::read_file(path)?;
        let (header_len, metadata) = SafeTensors::read_metadata(&bytes)
            .map_err(|source| FileError::safetensors(path, source))?;
        Ok(Self {
            path: path.to_path_buf(),
            bytes,
            data_start: 8 + header_len,
            metadata,
        })
    }
}

/// Tensors on their way into a Hugging Face checkpoint: key → (shape, f32 values), PyTorch
/// layout.
pub type TensorMap = BTreeMap<String, (Vec<usize>, Vec<f32>)>;

/// Writes `dir/model.safetensors` (f32, `{"format": "pt"}` metadata, as transformers expects)
/// and `dir/config.json`.
///
/// Each file is written crash-safely — a temporary file in `dir`, flushed to disk, then
/// renamed over the old one — weights first, so an interrupted write leaves the previous
/// checkpoint intact, never a truncated one.
///
/// # Errors
/// A tensor holding NaN or an infinity (nothing is written; the error names the key), or an
/// I/O error naming the file.
pub fn write_checkpoint(dir: &Path, tensors: &TensorMap, config: &serde_json::Value) -> Result<()> {
    let weights_path = dir.join(WEIGHTS_FILE);
    if let Some((key, value)) = tensors.iter().find_map(|(key, (_, values))| {
        values
            .iter()
            .find(|v| !v.is_finite())
            .map(|v| (key.clone(), *v))
    }) {
        return Err(ModelError::NonFinite {
            path: weights_path,
            key,
            value,
        });
    }
    fs::create_dir_all(dir).map_err(|source| FileError::io("cannot create", dir, source))?;
    let metadata = Some(HashMap::from([("format".to_string(), "pt".to_string())]));
    let entries = tensors
        .iter()
        .map(|(key, (shape, values))| (key.as_str(), shape.as_slice(), values.as_slice()));
    let serialized = peanut::io::f32_safetensors(entries, metadata)
        .map_err(|source| FileError::safetensors(&weights_path, source))?;
    write_atomic(&weights_path, &serialized)?;
    let json = serde_json::to_vec_pretty(config).expect("JSON values serialize");
    Ok(write_atomic(&dir.join(CONFIG_FILE), &json)?)
}
