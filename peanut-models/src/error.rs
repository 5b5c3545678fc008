//! The one error type of the `peanut-models` crate.

use std::path::PathBuf;

/// Everything that can go wrong with what a user hands to a model: checkpoint directories,
/// `config.json`, safetensors files, adapter targets, tokenizers.
///
/// Errors about files name the file and, where there is one, the tensor key; the source error is
/// kept.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A file or directory could not be read, written or parsed (I/O, JSON, safetensors).
    #[error(transparent)]
    File(#[from] peanut::FileError),

    /// A tensor holds NaN or an infinity.
    #[error("tensor `{key}` of `{path}` holds a non-finite value ({value})")]
    NonFinite {
        /// The file read or about to be written.
        path: PathBuf,
        /// The tensor's key.
        key: String,
        /// The first non-finite value found.
        value: f32,
    },

    /// A tensor the model needs is absent from the checkpoint.
    #[error("checkpoint `{path}` has no tensor `{key}`")]
    MissingKey {
        /// The checkpoint file (or the shard index that should have listed the key).
        path: PathBuf,
        /// The key that was looked for.
        key: String,
    },

    /// A checkpoint tensor has a different shape from the one `config.json` implies.
    #[error(
        "tensor `{key}` in `{path}` has shape {found:?}, expected {expected:?} (from config.json)"
    )]
    ShapeMismatch {
        /// The checkpoint file.
        path: PathBuf,
        /// The tensor key.
        key: String,
        /// The shape the model needs, in the checkpoint's (PyTorch) layout.
        expected: Vec<usize>,
        /// The shape in the file.
        found: Vec<usize>,
    },

    /// A shard index names a file outside the checkpoint directory.
    #[error(
        "`{index}` lists the shard `{file}`, which {reason}; shards must be plain file names \
         inside the checkpoint directory"
    )]
    ShardOutsideModel {
        /// The shard index (`model.safetensors.index.json`).
        index: PathBuf,
        /// The shard file name as the index spells it.
        file: String,
        /// Why it is refused.
        reason: String,
    },

    /// A checkpoint tensor holds NaN or an infinity.
    #[error(
        "tensor `{key}` in `{path}` holds a non-finite value ({value} at flat index {index}); \
         the checkpoint is corrupt or comes from a diverged run"
    )]
    NonFiniteTensor {
        /// The checkpoint file.
        path: PathBuf,
        /// The tensor key.
        key: String,
        /// The first non-finite value.
        value: f32,
        /// Its index in the flattened tensor.
        index: usize,
    },

    /// A linear weight cannot be stored quantized (`peanut::quant`).
    #[error("weight `{key}` cannot be quantized: {source}")]
    Quantize {
        /// The weight's key.
        key: String,
        /// Why.
        source: peanut::quant::QuantizeError,
    },

    /// A checkpoint tensor is stored with a dtype that is not a float.
    #[error("tensor `{key}` in `{path}` has dtype {dtype}; expected F32, F16, BF16 or F64")]
    UnsupportedDtype {
        /// The checkpoint file.
        path: PathBuf,
        /// The tensor key.
        key: String,
        /// The dtype as the file spells it.
        dtype: String,
    },

    /// `config.json` names an architecture this crate does not implement.
    #[error("`{path}`: architectures {found:?} are not supported; this model loads {supported:?}")]
    UnsupportedArchitecture {
        /// The `config.json`.
        path: PathBuf,
        /// The `architectures` field as found.
        found: Vec<String>,
        /// The architectures the model type accepts.
        supported: &'static [&'static str],
    },

    /// A configuration field holds a value the model cannot use.
    #[error("invalid configuration{}: `{field}` {reason}", path.as_ref().map(|p| format!(" in `{}`", p.display())).unwrap_or_default())]
    InvalidConfig {
        /// The `config.json`, when the configuration came from one.
        path: Option<PathBuf>,
        /// The field (Hugging Face spelling).
        field: &'static str,
        /// What is wrong, including the value.
        reason: String,
    },

    /// An adapter target matched no linear layer of the model.
    #[error(
        "adapter target `{target}` matches no linear layer; the model's linears include {known:?}"
    )]
    UnmatchedTarget {
        /// The target as given.
        target: String,
        /// A few of the model's linear paths, to help spell the target.
        known: Vec<String>,
    },

    /// Layer indices that the model does not have.
    #[error("adapter layer index {index} is out of range: the model has {num_layers} layers")]
    LayerOutOfRange {
        /// The bad index.
        index: usize,
        /// How many layers the model has.
        num_layers: usize,
    },

    /// An error from the adapter crate (adapter files, adapter configurations).
    #[error(transparent)]
    Adapter(#[from] peanut::PeanutError),

    /// The tokenizer file did not load, or a text did not encode or decode.
    #[error("tokenizer `{path}`: {source}")]
    Tokenizer {
        /// The `tokenizer.json`.
        path: PathBuf,
        /// The `tokenizers` crate's error.
        #[source]
        source: tokenizers::Error,
    },

    /// Generation was asked for something impossible (an empty prompt, a token id beyond the
    /// vocabulary, a sampling parameter out of range).
    #[error("generation: {0}")]
    Generation(String),
}

/// `Result` with [`ModelError`].
pub type Result<T, E = ModelError> = std::result::Result<T, E>;
