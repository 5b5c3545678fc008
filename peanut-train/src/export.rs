//! The export directory a training run writes and every other command reads: its layout, its
//! writer's pieces and its reader.
//!
//! ```text
//! export/peanut/            the adapters in this workspace's format (peanut_config.json, …)
//! export/peft/              the same adapters in Hugging Face peft's format, when they are all
//!                           of one method, with the head as `modules_to_save`
//! export/head.safetensors   the trained classifier head (`classifier.weight`, `classifier.bias`,
//!                           f32, PyTorch layout): image runs
//! export/labels.json        class names by index: image runs
//! export/export.json        which base model it was trained on (a weight sample) and, for
//!                           images, the training size (`crate::train::ExportManifest`)
//! ```
//!
//! [`Export::read`] takes such a directory (or a bare adapter directory, peanut or peft format,
//! or a peft directory with the head saved whole) before the model is built: the head fixes
//! the number of classes. `peanut merge`, `train image --merged` and `train lm --merged` write
//! merged checkpoints from it through one function (`crate::cli::merge`).

use std::path::{Path, PathBuf};

use peanut::io::{AdapterMap, PeftPaths, SavedModules};
use peanut_models::AdaptableModel;
use peanut_models::vit::PREPROCESSOR_FILE;

use crate::backend::{self, Selected};
use crate::error::{Result, TrainError};
use crate::train;

/// The file an export keeps class names in.
pub const LABELS_FILE: &str = "labels.json";
/// The file an export keeps the trained classifier head in.
pub const HEAD_FILE: &str = "head.safetensors";

/// Writes `labels.json` (class names by index) into `dir`, atomically.
pub fn write_labels(dir: &Path, classes: &[String]) -> Result<PathBuf> {
    let path = dir.join(LABELS_FILE);
    let json = serde_json::to_vec_pretty(classes).expect("labels serialize");
    peanut::io::write_atomic(&path, &json)?;
    Ok(path)
}

/// `dir/labels.json`, when present.
pub fn read_labels(dir: &Path) -> Result<Option<Vec<String>>> {
    let path = dir.join(LABELS_FILE);
    if !path.is_file() {
        return Ok(None);
    }
    Ok(Some(peanut::io::read_json(&path)?))
}

/// The adapter directory of an export directory (`peanut/`, else `peft/`), or `dir` itself.
pub fn adapter_dir(dir: &Path) -> PathBuf {
    ["peanut", "peft"]
        .iter()
        .map(|d| dir.join(d))
        .find(|d| d.is_dir())
        .unwrap_or_else(|| dir.to_path_buf())
}

/// The adapter directory inside an export directory, or `None` when it holds no adapter.
///
/// # Errors
/// A `peanut/` or `peft/` directory, or adapter weights, without the configuration file beside
/// them: the adapter would otherwise be skipped without a word.
pub fn find_adapter(dir: &Path) -> Result<Option<PathBuf>> {
    let configs = [
        peanut::io::native::CONFIG_FILE,
        peanut::io::peft::CONFIG_FILE,
    ];
    let weights = [
        peanut::io::native::WEIGHTS_FILE,
        peanut::io::peft::WEIGHTS_FILE,
    ];
    for candidate in [dir.join("peanut"), dir.join("peft"), dir.to_path_buf()] {
        if configs.iter().any(|c| candidate.join(c).exists()) {
            return Ok(Some(candidate));
        }
        let stray = weights.iter().find(|w| candidate.join(w).exists());
        let named_dir = candidate != dir && candidate.is_dir();
        if stray.is_some() || named_dir {
            return Err(TrainError::io(
                "no adapter configuration in",
                &candidate,
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!(
                        "expected `{}` (peanut format) or `{}` (peft format){}",
                        configs[0],
                        configs[1],
                        stray.map(|w| format!(" beside `{w}`")).unwrap_or_default()
                    ),
                ),
            ));
        }
    }
    Ok(None)
}

/// Reads a head file: `<module>.<param>` tensors (`classifier.weight` `[num_labels, hidden]`,
/// `classifier.bias`) in PyTorch's layout, any float dtype.
pub fn read_head(path: &Path) -> Result<SavedModules> {
    let mut modules = SavedModules::new();
    for (key, tensor) in peanut::io::read_f32_tensors(path)? {
        let Some((module, param)) = key.rsplit_once('.') else {
            return Err(TrainError::malformed(
                path,
                format!("tensor `{key}` is not `<module>.<weight|bias>`"),
            ));
        };
        modules
            .entry(module.to_string())
            .or_default()
            .params
            .insert(param.to_string(), tensor);
    }
    if !modules.contains_key("classifier") {
        return Err(TrainError::malformed(path, "no tensor `classifier.weight`"));
    }
    Ok(modules)
}

/// What an export directory holds, read before the model is built (the head fixes the number
/// of classes).
pub struct Export {
    /// The directory read (named in errors).
    pub dir: PathBuf,
    /// `export.json`, when the export has one.
    pub manifest: Option<train::ExportManifest>,
    /// The adapters, by the path of the linear each belongs to.
    pub adapters: AdapterMap<Selected>,
    /// Whole modules: peft's `modules_to_save`, then `head.safetensors` over them.
    pub saved: SavedModules,
    /// The class names of `labels.json`, when present.
    pub labels: Option<Vec<String>>,
}

impl Export {
    /// Reads the export (or adapter) directory `dir`; `paths` maps peft's module names to the
    /// model's linears.
    ///
    /// # Errors
    /// No adapter and no head in `dir`, or a file of it unreadable or malformed.
    pub fn read(dir: &Path, paths: &dyn PeftPaths) -> Result<Self> {
        let adapter = find_adapter(dir)?;
        let head_path = dir.join(HEAD_FILE);
        let head = head_path.is_file();
        let Some(adapter) = adapter else {
            if !head {
                return Err(TrainError::io(
                    "no adapter found in",
                    dir,
                    std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        "pass the `export` directory of a `train image` run (`peanut/` or \
                         `peft/`, `head.safetensors`) or an adapter directory",
                    ),
                ));
            }
            return Ok(Self {
                dir: dir.to_path_buf(),
                manifest: train::ExportManifest::find(dir)?,
                adapters: AdapterMap::new(),
                saved: read_head(&head_path)?,
                labels: read_labels(dir)?,
            });
        };
        let (adapters, mut saved) =
            peanut::io::load_any_with_saved::<Selected>(&adapter, paths, &backend::device())?;
        if head {
            saved.extend(read_head(&head_path)?);
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            manifest: train::ExportManifest::find(dir)?,
            adapters,
            saved,
            labels: read_labels(dir)?,
        })
    }

    /// The number of classes: `labels.json`, else the saved classifier's rows.
    pub fn num_labels(&self) -> Option<usize> {
        self.labels.as_ref().map(Vec::len).or_else(|| {
            self.saved
                .get("classifier")
                .and_then(|head| head.params.get("weight"))
                .and_then(|weight| weight.shape.first().copied())
        })
    }

    /// Attaches the export to `model`, after checking (when the export has a manifest) that
    /// `model` is the base it was trained from.
    ///
    /// # Errors
    /// Another base model (by the manifest's weight sample), or adapters and modules that do
    /// not fit the model's linears.
    pub fn apply<M: AdaptableModel<Selected>>(self, model: &mut M) -> Result<()> {
        if let Some(manifest) = &self.manifest {
            manifest.check_base(model, &self.dir)?;
        }
        peanut::io::attach(model.linears_mut(), self.adapters)?;
        peanut::io::attach_saved(model.linears_mut(), &self.saved)?;
        Ok(())
    }
}

/// Tokenizer and generation files a merged LLaMA-style checkpoint takes from its base.
pub const LM_SIDE_FILES: [&str; 4] = [
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "generation_config.json",
];

/// The files `peanut merge` writes into its `--output`.
pub const MERGE_FILES: [&str; 7] = [
    peanut_models::checkpoint::WEIGHTS_FILE,
    "config.json",
    PREPROCESSOR_FILE,
    LM_SIDE_FILES[0],
    LM_SIDE_FILES[1],
    LM_SIDE_FILES[2],
    LM_SIDE_FILES[3],
];

/// The files `peanut convert` writes into its `--output` (either format, with a head).
pub const CONVERT_FILES: [&str; 5] = [
    peanut::io::native::CONFIG_FILE,
    peanut::io::native::WEIGHTS_FILE,
    peanut::io::peft::CONFIG_FILE,
    peanut::io::peft::WEIGHTS_FILE,
    HEAD_FILE,
];

/// Refuses an existing `--output` that holds anything a merge does not write (a dataset, a run
/// directory, another model's shards): replacing it would delete those files.
pub fn check_merge_output(output: &Path) -> Result<()> {
    check_replaceable(output, &MERGE_FILES, "a merge")
}

/// Refuses an existing `output` that holds anything but the files `known` (which `what`
/// writes): it is replaced whole, so anything else in it would be deleted.
pub fn check_replaceable(output: &Path, known: &[&str], what: &str) -> Result<()> {
    let Ok(entries) = std::fs::read_dir(output) else {
        if output.exists() && !output.is_dir() {
            return Err(TrainError::InvalidOption {
                option: "--output",
                reason: format!("`{}` is a file, not a directory", output.display()),
            });
        }
        return Ok(());
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let known = name
            .to_str()
            .is_some_and(|n| known.contains(&n) && entry.path().is_file());
        if !known {
            return Err(TrainError::InvalidOption {
                option: "--output",
                reason: format!(
                    "`{}` holds `{}`, which {what} does not write: {what} replaces the whole \
                     directory, so name a new or empty directory (or one an earlier {} wrote)",
                    output.display(),
                    name.to_string_lossy(),
                    what.trim_start_matches("a ")
                ),
            });
        }
    }
    Ok(())
}

/// Writes saved modules as a head file (`<module>.<param>`, f32, PyTorch layout), atomically.
pub fn write_head(path: &Path, saved: &SavedModules) -> Result<()> {
    let keys: Vec<(String, &peanut::io::SavedTensor)> = saved
        .iter()
        .flat_map(|(module, saved)| {
            saved
                .params
                .iter()
                .map(move |(param, tensor)| (format!("{module}.{param}"), tensor))
        })
        .collect();
    let entries = keys.iter().map(|(key, tensor)| {
        (
            key.as_str(),
            tensor.shape.as_slice(),
            tensor.values.as_slice(),
        )
    });
    let views = peanut::io::f32_safetensors(entries, None)
        .map_err(|source| peanut::FileError::safetensors(path, source))?;
    peanut::io::write_atomic(path, &views)?;
    Ok(())
}
