//! Crash-safe epoch checkpoints.
//!
//! burn's Learner saves three records after every epoch (model, optimizer, learning-rate
//! scheduler), each on its own thread. [`EpochRecorder`] is the recorder it saves them with: it
//! writes each record into a staging directory `checkpoint/epoch-N.tmp/` (`model.mpk`,
//! `optim.mpk`, `scheduler.mpk`, every file synced to disk), and when the third one is in, a
//! `manifest.json` with each file's size and hash and the base model's fingerprint; then it
//! renames the staging directory to `checkpoint/epoch-N/` in one step. A process killed at any
//! instant therefore leaves either a complete epoch directory or none, never a half-written
//! one, and [`last_checkpoint`] only counts directories whose files match their manifest.
//! The last [`KEEP`] epochs are kept.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use burn::module::{Module, ModuleVisitor, Param};
use burn::record::{
    FileRecorder, FullPrecisionSettings, NamedMpkFileRecorder, Recorder, RecorderError,
};
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::guard::LossGuard;
use super::step::TrainableRecord;

/// The records of one epoch, as burn's Learner names them.
pub const PARTS: [&str; 3] = ["model", "optim", "scheduler"];

/// How many complete epoch checkpoints are kept (older ones are removed).
pub const KEEP: usize = 2;

/// The folder of a run directory that holds its checkpoints.
pub const FOLDER: &str = "checkpoint";

/// The extension of the record files.
const EXTENSION: &str = "mpk";

/// The manifest's file name inside an epoch directory.
const MANIFEST: &str = "manifest.json";

/// What an epoch directory holds, written last: each record file with its size and hash.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// The epoch (1-based).
    pub epoch: usize,
    /// [`fingerprint`] of the base model the run started from.
    pub base_fingerprint: String,
    /// The record files, in [`PARTS`] order.
    pub files: Vec<FileSum>,
}

/// One file of an epoch directory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileSum {
    /// File name inside the epoch directory.
    pub name: String,
    /// Size in bytes.
    pub bytes: u64,
    /// 64-bit FNV-1a hash of its content, hexadecimal.
    pub fnv1a: String,
}

/// 64-bit FNV-1a, fed incrementally.
#[derive(Debug, Clone, Copy)]
pub struct Fnv64(u64);

impl Default for Fnv64 {
    fn default() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv64 {
    /// Mixes `bytes` in.
    pub fn update(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    /// The hash as 16 hexadecimal digits.
    pub fn hex(&self) -> String {
        format!("{:016x}", self.0)
    }
}

/// Values of each tensor that [`fingerprint`] reads: all of a small one, else
/// [`FINGERPRINT_WINDOWS`] runs of this many, spread evenly from its first value to its last.
pub const FINGERPRINT_WINDOW: usize = 1024;
/// Runs of values [`fingerprint`] reads from a large tensor.
pub const FINGERPRINT_WINDOWS: usize = 4;

/// A fingerprint of the parameters of `model` (names in visit order, shapes, types and values),
/// as 16 hexadecimal digits. Taken of the base model before adapters are added, it tells whether
/// a resumed run starts from the same weights as the run it continues.
///
/// Of a tensor with more than `FINGERPRINT_WINDOWS · FINGERPRINT_WINDOW` values, only that many
/// are read, in evenly spread runs sliced on the device: another checkpoint of the same shapes
/// (another seed, another fine-tune, another model) differs in those values too, and a 7 B
/// model's start costs a few megabytes of reads instead of a copy of every weight to the host.
/// Slicing copies values exactly, so every backend gives the same fingerprint.
pub fn fingerprint<B: Backend, M: Module<B>>(model: &M) -> String {
    struct Hasher(Fnv64);
    impl<B: Backend> ModuleVisitor<B> for Hasher {
        fn enter_module(&mut self, name: &str, _container: &str) {
            self.0.update(name.as_bytes());
            self.0.update(b"/");
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            let tensor = param.val();
            let shape = tensor.shape();
            for dim in shape.iter() {
                self.0.update(&(*dim as u64).to_le_bytes());
            }
            let count = shape.num_elements();
            let values = tensor.reshape([count]);
            let sample = if count <= FINGERPRINT_WINDOWS * FINGERPRINT_WINDOW {
                values
            } else {
                let last_start = count - FINGERPRINT_WINDOW;
                let windows = (0..FINGERPRINT_WINDOWS)
                    .map(|i| {
                        let start = i * last_start / (FINGERPRINT_WINDOWS - 1);
                        values.clone().slice(start..start + FINGERPRINT_WINDOW)
                    })
                    .collect();
                Tensor::cat(windows, 0)
            };
            let data = sample.into_data();
            self.0.update(format!("{:?}", data.dtype).as_bytes());
            self.0.update(data.as_bytes());
        }
    }
    let mut hasher = Hasher(Fnv64::default());
    model.visit(&mut hasher);
    hasher.0.hex()
}

/// Syncs a file's content to disk.
pub(crate) fn sync_file(path: &Path) -> std::io::Result<()> {
    File::open(path)?.sync_all()
}

/// Syncs a directory entry list to disk (a no-op where directories cannot be opened).
pub(crate) fn sync_dir(path: &Path) -> std::io::Result<()> {
    match File::open(path) {
        Ok(dir) => dir.sync_all().or(Ok(())),
        Err(_) => Ok(()),
    }
}

/// Writes `bytes` to `path` the crash-safe way ([`peanut::io::write_atomic`]: a temporary file
/// beside it, synced, renamed over `path`, and the directory synced).
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    peanut::io::write_atomic(path, bytes).map_err(|error| match error {
        peanut::FileError::Io { source, .. } => source,
        other => std::io::Error::other(other),
    })
}

/// Syncs every file under `dir`, then the directories themselves.
pub(crate) fn sync_tree(dir: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            sync_tree(&path)?;
        } else {
            sync_file(&path)?;
        }
    }
    sync_dir(dir)
}

/// The directory of epoch `epoch`'s checkpoint in the run directory `run_dir`.
pub fn epoch_dir(run_dir: &Path, epoch: usize) -> PathBuf {
    run_dir.join(FOLDER).join(format!("epoch-{epoch}"))
}

fn hash_file(path: &Path) -> std::io::Result<(u64, String)> {
    let mut file = File::open(path)?;
    let mut hasher = Fnv64::default();
    let mut buffer = vec![0u8; 1 << 16];
    let mut total = 0u64;
    loop {
        let n = file.read(&mut buffer)?;
        if n == 0 {
            break;
        }
        total += n as u64;
        hasher.update(&buffer[..n]);
    }
    Ok((total, hasher.hex()))
}

/// Checks that `dir` (an epoch directory) holds every record file, of the size and hash its
/// manifest states; returns the manifest.
///
/// # Errors
/// What is missing or differs, in words.
pub fn verify(dir: &Path) -> std::result::Result<Manifest, String> {
    let path = dir.join(MANIFEST);
    let bytes =
        std::fs::read(&path).map_err(|e| format!("cannot read `{}`: {e}", path.display()))?;
    let manifest: Manifest = serde_json::from_slice(&bytes)
        .map_err(|e| format!("malformed `{}`: {e}", path.display()))?;
    for part in PARTS {
        let name = format!("{part}.{EXTENSION}");
        let sum = manifest
            .files
            .iter()
            .find(|f| f.name == name)
            .ok_or_else(|| format!("`{}` does not list {name}", path.display()))?;
        let file = dir.join(&name);
        let (size, hash) =
            hash_file(&file).map_err(|e| format!("cannot read `{}`: {e}", file.display()))?;
        if size != sum.bytes || hash != sum.fnv1a {
            return Err(format!(
                "`{}` is damaged: {size} bytes with hash {hash}, the manifest says {} bytes with \
                 hash {}",
                file.display(),
                sum.bytes,
                sum.fnv1a
            ));
        }
    }
    Ok(manifest)
}

/// The epochs with a checkpoint directory in `run_dir` (complete or not), ascending.
fn epoch_dirs(run_dir: &Path) -> Vec<usize> {
    let Ok(entries) = std::fs::read_dir(run_dir.join(FOLDER)) else {
        return Vec::new();
    };
    let mut epochs: Vec<usize> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            e.file_name()
                .to_str()?
                .strip_prefix("epoch-")?
                .parse::<usize>()
                .ok()
        })
        .collect();
    epochs.sort_unstable();
    epochs
}

/// The last epoch with a complete, undamaged checkpoint (model, optimizer and scheduler whose
/// sizes and hashes match the manifest) in the run directory `run_dir`.
pub fn last_checkpoint(run_dir: &Path) -> Option<usize> {
    epoch_dirs(run_dir)
        .into_iter()
        .rev()
        .find(|&epoch| verify(&epoch_dir(run_dir, epoch)).is_ok())
}

/// Removes what a killed process may have left half-written in `run_dir`'s checkpoint folder:
/// staging directories, and epoch directories that fail [`verify`] (each reported through
/// `note`).
pub(crate) fn clean(run_dir: &Path, mut note: impl FnMut(String)) -> std::io::Result<()> {
    let folder = run_dir.join(FOLDER);
    let Ok(entries) = std::fs::read_dir(&folder) else {
        return Ok(());
    };
    for entry in entries {
        let path = entry?.path();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if name.ends_with(".tmp") && path.is_dir() {
            std::fs::remove_dir_all(&path)?;
        } else if name.starts_with("epoch-")
            && path.is_dir()
            && let Err(reason) = verify(&path)
        {
            note(format!("ignoring the damaged checkpoint: {reason}"));
            std::fs::remove_dir_all(&path)?;
        }
    }
    Ok(())
}

/// `model` with the trainable parameters of epoch `epoch`'s checkpoint in the run directory
/// `run_dir` put in place (the frozen base is not in checkpoints: `model` brings it).
///
/// # Errors
/// A missing or unreadable checkpoint.
pub fn load_epoch<B: Backend, M: Module<B>>(
    model: M,
    run_dir: &Path,
    epoch: usize,
    device: &B::Device,
) -> Result<M, RecorderError> {
    let path = run_dir.join(FOLDER).join(format!("model-{epoch}"));
    let record: TrainableRecord<B> = Recorder::<B>::load(&EpochRecorder::default(), path, device)?;
    Ok(record.apply(model))
}

/// Epochs whose parts are written, per run directory.
#[derive(Debug, Default)]
struct Pending {
    parts: BTreeMap<(PathBuf, usize), Vec<String>>,
}

/// The recorder of burn's Learner checkpoints: writes the three records of an epoch as one
/// unit (see the module documentation). `base_fingerprint` goes into each manifest.
#[derive(Debug, Clone, Default)]
pub struct EpochRecorder {
    base_fingerprint: String,
    pending: Arc<Mutex<Pending>>,
    /// A run's loss guard: once it has seen a divergence, no epoch is committed.
    guard: Option<LossGuard>,
}

impl EpochRecorder {
    /// A recorder whose manifests record `base_fingerprint`.
    pub fn new(base_fingerprint: impl Into<String>) -> Self {
        Self {
            base_fingerprint: base_fingerprint.into(),
            pending: Arc::default(),
            guard: None,
        }
    }

    /// Commits no epoch once `guard` has seen a non-finite loss or parameter: the staged files
    /// of that epoch are removed and the last complete checkpoint stays the last good one.
    pub fn with_guard(mut self, guard: LossGuard) -> Self {
        self.guard = Some(guard);
        self
    }

    /// Renames the staging directory of `epoch` into place after writing its manifest, then
    /// removes epochs older than the last [`KEEP`].
    fn commit(&self, folder: &Path, epoch: usize) -> std::io::Result<()> {
        let staging = folder.join(format!("epoch-{epoch}.tmp"));
        if self
            .guard
            .as_ref()
            .is_some_and(|g| g.divergence().is_some())
        {
            return std::fs::remove_dir_all(&staging);
        }
        let mut files = Vec::new();
        for part in PARTS {
            let name = format!("{part}.{EXTENSION}");
            let (bytes, fnv1a) = hash_file(&staging.join(&name))?;
            files.push(FileSum { name, bytes, fnv1a });
        }
        let manifest = Manifest {
            epoch,
            base_fingerprint: self.base_fingerprint.clone(),
            files,
        };
        let json = serde_json::to_vec_pretty(&manifest).expect("manifest serializes");
        write_atomic(&staging.join(MANIFEST), &json)?;
        sync_dir(&staging)?;
        let target = folder.join(format!("epoch-{epoch}"));
        if target.exists() {
            std::fs::remove_dir_all(&target)?;
        }
        std::fs::rename(&staging, &target)?;
        sync_dir(folder)?;
        let run_dir = folder.parent().unwrap_or(folder);
        for old in epoch_dirs(run_dir) {
            if old + KEEP <= epoch {
                std::fs::remove_dir_all(folder.join(format!("epoch-{old}")))?;
            }
        }
        Ok(())
    }
}

/// `folder/part-epoch` (as burn's file checkpointer names a record) split into its parts.
fn parse_record_path(path: &Path) -> Result<(PathBuf, &'static str, usize), RecorderError> {
    let bad = || RecorderError::Unknown(format!("unexpected checkpoint path `{}`", path.display()));
    let name = path.file_name().and_then(|n| n.to_str()).ok_or_else(bad)?;
    let name = name.strip_suffix(&format!(".{EXTENSION}")).unwrap_or(name);
    let (part, epoch) = name.rsplit_once('-').ok_or_else(bad)?;
    let part = PARTS.into_iter().find(|p| *p == part).ok_or_else(bad)?;
    let epoch = epoch.parse().map_err(|_| bad())?;
    let folder = path.parent().ok_or_else(bad)?.to_path_buf();
    Ok((folder, part, epoch))
}

fn io_error(path: &Path, error: std::io::Error) -> RecorderError {
    RecorderError::Unknown(format!("`{}`: {error}", path.display()))
}

impl<B: Backend> Recorder<B> for EpochRecorder {
    type Settings = FullPrecisionSettings;
    type RecordArgs = PathBuf;
    type RecordOutput = ();
    type LoadArgs = PathBuf;

    fn save_item<I: Serialize>(&self, item: I, path: PathBuf) -> Result<(), RecorderError> {
        let (folder, part, epoch) = parse_record_path(&path)?;
        let staging = folder.join(format!("epoch-{epoch}.tmp"));
        std::fs::create_dir_all(&staging).map_err(|e| io_error(&staging, e))?;
        let file = staging.join(part);
        Recorder::<B>::save_item(
            &NamedMpkFileRecorder::<FullPrecisionSettings>::new(),
            item,
            file.clone(),
        )?;
        let written = file.with_extension(EXTENSION);
        sync_file(&written).map_err(|e| io_error(&written, e))?;
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let parts = pending.parts.entry((folder.clone(), epoch)).or_default();
        if !parts.iter().any(|p| p == part) {
            parts.push(part.to_string());
        }
        if parts.len() == PARTS.len() {
            pending.parts.remove(&(folder.clone(), epoch));
            self.commit(&folder, epoch)
                .map_err(|e| io_error(&staging, e))?;
        }
        Ok(())
    }

    fn load_item<I: DeserializeOwned>(&self, path: &mut PathBuf) -> Result<I, RecorderError> {
        let (folder, part, epoch) = parse_record_path(path)?;
        let mut file = folder.join(format!("epoch-{epoch}")).join(part);
        Recorder::<B>::load_item(
            &NamedMpkFileRecorder::<FullPrecisionSettings>::new(),
            &mut file,
        )
    }
}

impl<B: Backend> FileRecorder<B> for EpochRecorder {
    fn file_extension() -> &'static str {
        EXTENSION
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_paths_parse() {
        let (folder, part, epoch) = parse_record_path(Path::new("/r/checkpoint/optim-12")).unwrap();
        assert_eq!(
            (folder.as_path(), part, epoch),
            (Path::new("/r/checkpoint"), "optim", 12)
        );
        assert!(parse_record_path(Path::new("/r/checkpoint/weights-1")).is_err());
        assert!(parse_record_path(Path::new("/r/checkpoint/model-x")).is_err());
    }

    /// A module of one parameter of `values`.
    fn param(values: Vec<f32>) -> Param<Tensor<crate::backend::Selected, 1>> {
        let len = values.len();
        Param::from_tensor(Tensor::from_data(
            burn::tensor::TensorData::new(values, [len]),
            &Default::default(),
        ))
    }

    #[test]
    fn fingerprints_see_a_change_in_any_sampled_run_and_in_the_shape() {
        let len = FINGERPRINT_WINDOWS * FINGERPRINT_WINDOW * 8 + 13;
        let base: Vec<f32> = (0..len).map(|i| (i as f32 * 0.37).sin()).collect();
        let reference = fingerprint(&param(base.clone()));
        assert_eq!(fingerprint(&param(base.clone())), reference);
        // The first value, one inside each run, and the last value.
        let last_start = len - FINGERPRINT_WINDOW;
        let mut inside: Vec<usize> = (0..FINGERPRINT_WINDOWS)
            .map(|i| i * last_start / (FINGERPRINT_WINDOWS - 1) + FINGERPRINT_WINDOW / 2)
            .collect();
        inside.extend([0, len - 1]);
        for index in inside {
            let mut changed = base.clone();
            changed[index] += 1.0;
            assert_ne!(fingerprint(&param(changed)), reference, "value {index}");
        }
        assert_ne!(fingerprint(&param(base[..len - 1].to_vec())), reference);
        // A small tensor is read whole.
        let small: Vec<f32> = base[..100].to_vec();
        let mut changed = small.clone();
        changed[57] = -changed[57];
        assert_ne!(fingerprint(&param(changed)), fingerprint(&param(small)));
    }

    #[test]
    fn fnv_matches_the_reference_values() {
        let mut h = Fnv64::default();
        assert_eq!(h.hex(), "cbf29ce484222325");
        h.update(b"a");
        assert_eq!(h.hex(), "af63dc4c8601ec8c");
    }
}
