//! The one error type of the `peanut` crate.

use std::path::PathBuf;

/// Everything that can go wrong in `peanut` with input that a user supplies: configurations,
/// adapter files and the tensors inside them.
///
/// Shape mismatches between tensors built by the program itself (a bug, not user input) panic in
/// burn's operations as usual; everything read from disk or passed in a config lands here.
#[derive(Debug, thiserror::Error)]
pub enum PeanutError {
    /// A configuration field holds a value the method cannot use.
    #[error("invalid configuration: `{field}` {reason}")]
    InvalidConfig {
        /// The field's name, as spelled in the config struct (`rank`, `depth`, …).
        field: &'static str,
        /// What is wrong with it, including the offending value.
        reason: String,
    },

    /// A file or directory could not be read, written or parsed.
    #[error(transparent)]
    File(#[from] FileError),

    /// A tensor the adapter needs is absent from a file.
    #[error("`{path}` has no tensor `{key}`")]
    MissingKey {
        /// The file that was read.
        path: PathBuf,
        /// The key that was looked for.
        key: String,
    },

    /// A file holds a tensor that no adapter in the target uses.
    #[error("`{path}` holds tensor `{key}`, which matches no adapter module{hint}")]
    UnexpectedKey {
        /// The file that was read.
        path: PathBuf,
        /// The unused key.
        key: String,
        /// Extra context (for example the module paths that were expected).
        hint: String,
    },

    /// Adapters name a module the model has no adapted layer for.
    #[error("no adapted layer `{module}` in the model (its adapted layers include {known:?})")]
    UnknownModule {
        /// The module path the adapters name.
        module: String,
        /// Some of the model's adapted-layer paths, to show the naming.
        known: Vec<String>,
    },

    /// A tensor has a different shape from the one the adapter needs.
    #[error("tensor `{key}` has shape {found:?}, expected {expected:?}")]
    ShapeMismatch {
        /// The key (file tensors) or parameter name (modules) involved.
        key: String,
        /// The shape the adapter needs.
        expected: Vec<usize>,
        /// The shape that was found.
        found: Vec<usize>,
    },

    /// A tensor read from a file holds NaN or an infinity.
    #[error(
        "tensor `{key}` in `{path}` holds a non-finite value ({value} at flat index {index}); \
         the file is corrupt or comes from a diverged run"
    )]
    NonFiniteTensor {
        /// The file that was read.
        path: PathBuf,
        /// The key of the tensor.
        key: String,
        /// The first non-finite value.
        value: f32,
        /// Its index in the flattened tensor.
        index: usize,
    },

    /// A tensor is stored with a dtype `peanut` cannot convert to floats.
    #[error("tensor `{key}` has dtype {dtype}, expected F32, F16, BF16 or F64")]
    UnsupportedDtype {
        /// The key of the tensor.
        key: String,
        /// The dtype as the file spells it.
        dtype: String,
    },

    /// An adapter file describes something this crate does not implement.
    #[error("`{path}`: {reason}")]
    Unsupported {
        /// The file.
        path: PathBuf,
        /// What is not supported.
        reason: String,
    },

    /// An operation needs adapters of one kind but got another (for example a PEANuT file
    /// loaded onto LoRA layers).
    #[error("adapter `{module}`: {reason}")]
    AdapterMismatch {
        /// The module path of the adapter.
        module: String,
        /// What does not fit.
        reason: String,
    },
}

/// A file that could not be read, written or parsed: the failure every crate of the workspace
/// shares. `PeanutError`, `peanut_models::ModelError` and `peanut_train::TrainError` each hold it
/// as their `File` variant, so a caller matches one type whichever layer read the file.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// A file or directory could not be read or written (missing, unreadable, disk full, …).
    #[error("{action} `{path}`: {source}")]
    Io {
        /// What was being done ("cannot read", "cannot write", …).
        action: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },

    /// A JSON file did not parse, or did not have the expected fields.
    #[error("malformed JSON in `{path}`: {source}")]
    Json {
        /// The JSON file.
        path: PathBuf,
        /// The parser's error (line and column included).
        #[source]
        source: serde_json::Error,
    },

    /// A safetensors file did not parse, or could not be serialized.
    #[error("malformed safetensors file `{path}`: {source}")]
    Safetensors {
        /// The safetensors file.
        path: PathBuf,
        /// The library's error.
        #[source]
        source: safetensors::SafeTensorError,
    },
}

impl FileError {
    /// An I/O error: what was being done, on which path.
    pub fn io(action: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            action,
            path: path.into(),
            source,
        }
    }

    /// A JSON parse error in `path`.
    pub fn json(path: impl Into<PathBuf>, source: serde_json::Error) -> Self {
        Self::Json {
            path: path.into(),
            source,
        }
    }

    /// A safetensors parse or serialization error for `path`.
    pub fn safetensors(path: impl Into<PathBuf>, source: safetensors::SafeTensorError) -> Self {
        Self::Safetensors {
            path: path.into(),
            source,
        }
    }

    /// The file or directory the error is about.
    pub fn path(&self) -> &std::path::Path {
        match self {
            Self::Io { path, .. } | Self::Json { path, .. } | Self::Safetensors { path, .. } => {
                path
            }
        }
    }
}

/// `Result` with [`PeanutError`].
pub type Result<T, E = PeanutError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_errors_name_their_file_and_read_the_same_through_peanut_error() {
        let dir = std::env::temp_dir().join(format!("peanut-file-error-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();

        let missing = dir.join("missing.json");
        let err = crate::io::read_json::<serde_json::Value>(&missing).unwrap_err();
        assert!(
            matches!(
                err,
                FileError::Io {
                    action: "cannot read",
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(err.path(), missing);

        let bad = dir.join("bad.json");
        std::fs::write(&bad, b"{ not json").unwrap();
        let err = crate::io::read_json::<serde_json::Value>(&bad).unwrap_err();
        assert!(matches!(err, FileError::Json { .. }), "{err}");
        assert_eq!(err.path(), bad);
        let message = err.to_string();
        assert!(
            message.contains("bad.json") && message.contains("line 1"),
            "{message}"
        );
        assert_eq!(PeanutError::from(err).to_string(), message);

        // A byte-order mark, as some editors write, is not a parse error.
        std::fs::write(&bad, b"\xEF\xBB\xBF{\"a\": 1}").unwrap();
        let value: serde_json::Value = crate::io::read_json(&bad).unwrap();
        assert_eq!(value["a"], 1);

        let err = crate::io::parse_safetensors(&bad, b"short").unwrap_err();
        assert!(matches!(err, FileError::Safetensors { .. }), "{err}");
        assert_eq!(err.path(), bad);
        std::fs::remove_dir_all(&dir).ok();
    }
}
