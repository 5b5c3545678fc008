//! The one error type of `peanut-train`.

use std::path::PathBuf;

/// Everything that can go wrong with what a user supplies to training, evaluation or the CLI:
/// datasets, files, options, checkpoints, and a run that diverges.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// A file or directory could not be read, written or parsed (I/O, JSON, safetensors).
    #[error(transparent)]
    File(#[from] peanut::FileError),

    /// No supported dataset layout was found.
    #[error("no dataset found at `{path}`: looked for {looked_for}")]
    Layout {
        /// The directory that was searched.
        path: PathBuf,
        /// The layouts that were tried, in words.
        looked_for: String,
    },

    /// A dataset file has content this crate cannot use.
    #[error("`{path}`: {reason}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What is wrong, with the offending value.
        reason: String,
    },

    /// A MATLAB `.mat` file did not parse.
    #[error("malformed MAT file `{path}`: {reason}")]
    Mat {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },

    /// A parquet file did not parse.
    #[error("cannot read parquet file `{path}`: {source}")]
    Parquet {
        /// The file.
        path: PathBuf,
        /// The reader's error.
        #[source]
        source: parquet::errors::ParquetError,
    },

    /// A line of a JSON-lines file did not parse or lacks fields.
    #[error("malformed JSON on line {line} of `{path}`: {source}")]
    JsonLine {
        /// The file.
        path: PathBuf,
        /// The line (1-based).
        line: usize,
        /// The parser's error (its line is within this line).
        #[source]
        source: serde_json::Error,
    },

    /// A split of a dataset has no usable example.
    #[error("the {split} split at `{path}` has no usable example ({skipped} unreadable)")]
    EmptySplit {
        /// `train` or `test`.
        split: &'static str,
        /// Where it was read from.
        path: PathBuf,
        /// How many entries were skipped as unreadable.
        skipped: usize,
    },

    /// No example of an instruction file keeps a response token within the cutoff length.
    #[error(
        "`{path}`: none of its {examples} examples keeps a response token within the cutoff of \
         {cutoff} tokens (the prompt alone fills it); raise --cutoff-len"
    )]
    EmptyAfterCutoff {
        /// The instruction file.
        path: PathBuf,
        /// The cutoff length in tokens.
        cutoff: usize,
        /// How many examples the file holds.
        examples: usize,
    },

    /// The task of an evaluation file could not be told from its name.
    #[error(
        "cannot tell which task `{path}` holds from the name `{name}`; pass --task (one of {known})"
    )]
    UnknownTask {
        /// The evaluation file.
        path: PathBuf,
        /// The name that was tried (file stem or directory).
        name: String,
        /// The tasks there are, comma-separated.
        known: String,
    },

    /// An option has a value that cannot work.
    #[error("invalid option `{option}`: {reason}")]
    InvalidOption {
        /// The option, as spelled on the command line.
        option: &'static str,
        /// Why, with the value.
        reason: String,
    },

    /// The loss became NaN or infinite; the run stopped.
    #[error(
        "the training loss became non-finite ({loss}) at epoch {epoch}, iteration {iteration}; \
         training stopped. {checkpoint}. Lower the learning rate or enable gradient clipping \
         (--clip-grad-norm)"
    )]
    NonFiniteLoss {
        /// The loss value seen.
        loss: f32,
        /// The epoch (1-based).
        epoch: usize,
        /// The iteration inside the epoch (1-based).
        iteration: usize,
        /// Where the last good checkpoint is, in words.
        checkpoint: String,
    },

    /// `--resume` found nothing to resume.
    #[error("cannot resume from `{path}`: {reason}")]
    Resume {
        /// The run directory.
        path: PathBuf,
        /// What is missing.
        reason: String,
    },

    /// A new run was asked for in a directory that already holds files.
    #[error(
        "the run directory `{path}` is not empty (it holds {entries}); pass --resume to \
         continue the run there, --overwrite to replace it, or another --output-dir"
    )]
    RunDirectoryInUse {
        /// The run directory.
        path: PathBuf,
        /// Some of its entries, comma-separated.
        entries: String,
    },

    /// A run directory another process is training in (it holds the directory's lock).
    #[error(
        "the run directory `{path}` is in use by {holder}: wait for that run to finish (or stop \
         it), or choose another --output-dir"
    )]
    RunDirectoryLocked {
        /// The run directory.
        path: PathBuf,
        /// Who holds the lock, in words (`process 1234`).
        holder: String,
    },

    /// A directory that holds files but no run of ours (no `run.json`) was given as the run
    /// directory: `--overwrite` and `--resume` touch only run directories.
    #[error(
        "`{path}` is not a run directory (it has no `run.json` and holds {entries}); a run \
         never deletes files it did not write, even with --overwrite: choose a new or empty \
         --output-dir"
    )]
    NotARunDirectory {
        /// The directory.
        path: PathBuf,
        /// Some of its entries, comma-separated.
        entries: String,
    },

    /// A run stopped because its checkpoint could not be written.
    #[error("training stopped: {reason} (in `{path}`)")]
    Interrupted {
        /// The run directory.
        path: PathBuf,
        /// Why, as burn's Learner reported it.
        reason: String,
    },

    /// A `--model` / `--data-dir` argument is neither an existing path nor a hub id.
    #[error(
        "`{arg}`: {reason}; pass an existing directory or a Hugging Face id (`org/name` or \
         `org/name@revision`)"
    )]
    HubId {
        /// The argument as given.
        arg: String,
        /// What is wrong with it as a path and as an id.
        reason: String,
    },

    /// A file of a hub repository is neither in the cache nor downloadable.
    #[error(
        "`{repo}` is no local path, so it was taken as a Hugging Face {kind} id, but `{file}` is \
         not in the cache `{cache}` and could not be downloaded: {reason}. To supply it: on a \
         machine with network access run `{command}` and copy the cache it fills (by default \
         ~/.cache/huggingface/hub) into `{cache}` or point HF_HUB_CACHE at it; or download the \
         files anywhere (`{command} --local-dir DIR`) and pass DIR instead of the id",
        command = crate::hub::download_command(.repo, .kind)
    )]
    HubUnavailable {
        /// The hub id (`org/name`, with `@revision` unless `main`).
        repo: String,
        /// `model` or `dataset`.
        kind: &'static str,
        /// The file inside the repository (a pattern such as `*.parquet` for dataset files).
        file: String,
        /// The cache that was searched and downloaded into.
        cache: PathBuf,
        /// Why it could not be downloaded.
        reason: String,
    },

    /// An adapter error (configuration, adapter files).
    #[error(transparent)]
    Adapter(#[from] peanut::PeanutError),

    /// A model error (checkpoint files, configuration, targets).
    #[error(transparent)]
    Model(#[from] peanut_models::ModelError),

    /// A burn record (checkpoint, cached model) could not be saved or loaded.
    #[error("checkpoint `{path}`: {source}")]
    Record {
        /// The file.
        path: PathBuf,
        /// The recorder's error.
        #[source]
        source: burn::record::RecorderError,
    },
}

/// `Result` with [`TrainError`].
pub type Result<T, E = TrainError> = std::result::Result<T, E>;

impl TrainError {
    /// An I/O error with its action and path.
    pub fn io(action: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::File(peanut::FileError::io(action, path, source))
    }

    /// A malformed-content error.
    pub fn malformed(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Self::Malformed {
            path: path.into(),
            reason: reason.into(),
        }
    }
}
