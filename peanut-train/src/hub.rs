//! Hugging Face hub ids where the CLI takes a model or a dataset directory.
//!
//! [`resolve_model`] and [`resolve_dataset`] turn a `--model` / `--data-dir` argument into a
//! directory:
//!
//! 1. an existing path is used as it is;
//! 2. otherwise the argument must be a hub id, `org/name` or `org/name@revision`;
//! 3. the files are taken from the standard Hugging Face cache when they are all there (no
//!    network): `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`, laid out as
//!    `models--org--name/{refs/<revision>, snapshots/<commit>/…}` (`datasets--…` for datasets);
//! 4. else they are downloaded into that cache (cargo feature `hub`, with progress bars), unless
//!    `HF_HUB_OFFLINE=1`. Failures name the repository, the file, the cache and how to supply it.
//!
//! A model needs `config.json` and `model.safetensors` (or `model.safetensors.index.json` and its
//! shards); `tokenizer.json` comes along when the repository has one. A dataset is its parquet
//! files. A dataset id ending in `_train` or `_test` names one half of a split pair — the paper's
//! `Multimodal-Fatima/StanfordCars_train` and `…_test` — and resolves to a directory that holds
//! both halves as `train-*.parquet` and `test-*.parquet` (links into the cache).

use std::path::{Path, PathBuf};

use crate::error::{Result, TrainError};

/// The model id used when none is given: ViT-B/16 pre-trained on ImageNet-21k, the paper's
/// backbone for image classification.
pub const VIT_B16_IN21K: &str = "google/vit-base-patch16-224-in21k";

/// The weights file of a single-file checkpoint.
const WEIGHTS: &str = "model.safetensors";
/// The index of a sharded checkpoint.
const WEIGHTS_INDEX: &str = "model.safetensors.index.json";
/// Files a model directory must hold besides its weights.
const MODEL_REQUIRED: &[&str] = &["config.json"];
/// Files taken along when the repository has them.
#[cfg(feature = "hub")]
const MODEL_OPTIONAL: &[&str] = &["tokenizer.json"];

/// What kind of repository a hub id names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RepoKind {
    /// A model (`models--org--name` in the cache).
    Model,
    /// A dataset (`datasets--org--name` in the cache).
    Dataset,
}

impl RepoKind {
    /// `model` or `dataset`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Model => "model",
            Self::Dataset => "dataset",
        }
    }

    fn folder_prefix(self) -> &'static str {
        match self {
            Self::Model => "models",
            Self::Dataset => "datasets",
        }
    }
}

/// A hub id: `org/name`, optionally `@revision` (a branch, tag or commit; `main` by default).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubId {
    /// `org/name`.
    pub repo: String,
    /// The branch, tag or commit hash.
    pub revision: String,
}

impl HubId {
    /// Parses `org/name` or `org/name@revision`; the error says what is wrong.
    ///
    /// Both parts use letters, digits, `-`, `_` and `.`, do not start or end with `-` or `.`,
    /// and hold no `--` or `..`; the whole id is at most 96 characters (the hub's rules).
    pub fn parse(text: &str) -> std::result::Result<Self, String> {
        let (repo, revision) = match text.split_once('@') {
            Some((repo, revision)) => (repo, Some(revision)),
            None => (text, None),
        };
        let parts: Vec<&str> = repo.split('/').collect();
        if parts.len() != 2 {
            return Err(format!(
                "a hub id has exactly one `/` between organisation and name, `{repo}` has {}",
                parts.len() - 1
            ));
        }
        for (what, part) in [("organisation", parts[0]), ("name", parts[1])] {
            check_id_part(what, part)?;
        }
        if repo.len() > 96 {
            return Err(format!("`{repo}` is longer than 96 characters"));
        }
        let revision = match revision {
            None => "main".to_string(),
            Some("") => return Err("the revision after `@` is empty".into()),
            Some(rev) => {
                let ok = rev
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c));
                if !ok || rev.contains("..") || rev.starts_with('/') {
                    return Err(format!(
                        "revision `{rev}` may only hold letters, digits, `-`, `_`, `.` and `/`"
                    ));
                }
                rev.to_string()
            }
        };
        Ok(Self {
            repo: repo.to_string(),
            revision,
        })
    }

    /// The id as written: `org/name`, with `@revision` unless it is `main`.
    pub fn display(&self) -> String {
        if self.revision == "main" {
            self.repo.clone()
        } else {
            format!("{}@{}", self.repo, self.revision)
        }
    }

    /// The repository's folder in the cache: `models--org--name` or `datasets--org--name`.
    pub fn cache_folder(&self, kind: RepoKind) -> String {
        format!("{}--{}", kind.folder_prefix(), self.repo.replace('/', "--"))
    }

    /// The snapshot directory of this revision in `cache`, when the cache knows the revision:
    /// `snapshots/<commit>` where `refs/<revision>` names the commit (or the revision is itself
    /// a commit hash with a snapshot).
    pub fn cached_snapshot(&self, kind: RepoKind, cache: &Path) -> Option<PathBuf> {
        let repo_dir = cache.join(self.cache_folder(kind));
        let commit = match std::fs::read_to_string(repo_dir.join("refs").join(&self.revision)) {
            Ok(commit) => commit.trim().to_string(),
            Err(_) if is_commit_hash(&self.revision) => self.revision.clone(),
            Err(_) => return None,
        };
        let snapshot = repo_dir.join("snapshots").join(commit);
        snapshot.is_dir().then_some(snapshot)
    }

    /// The shell command that downloads this repository with Hugging Face's own CLI.
    pub fn download_command(&self, kind: RepoKind) -> String {
        download_command(&self.display(), kind.name())
    }

    fn with_name(&self, name: String) -> Self {
        let org = self.repo.split('/').next().unwrap_or_default();
        Self {
            repo: format!("{org}/{name}"),
            revision: self.revision.clone(),
        }
    }
}

/// `huggingface-cli download [--repo-type dataset] org/name [--revision rev]` for an id as
/// [`HubId::display`] writes it and a kind as [`RepoKind::name`] does.
pub fn download_command(id: &str, kind: &str) -> String {
    let (repo, revision) = match id.split_once('@') {
        Some((repo, revision)) => (repo, Some(revision)),
        None => (id, None),
    };
    let mut command = String::from("huggingface-cli download ");
    if kind == RepoKind::Dataset.name() {
        command.push_str("--repo-type dataset ");
    }
    command.push_str(repo);
    if let Some(revision) = revision {
        command.push_str(" --revision ");
        command.push_str(revision);
    }
    command
}

fn check_id_part(what: &str, part: &str) -> std::result::Result<(), String> {
    if part.is_empty() {
        return Err(format!("the {what} is empty"));
    }
    if let Some(c) = part
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "-_.".contains(*c)))
    {
        return Err(format!(
            "the {what} `{part}` holds `{c}`; only letters, digits, `-`, `_` and `.` are allowed"
        ));
    }
    if part.starts_with(['-', '.']) || part.ends_with(['-', '.']) {
        return Err(format!(
            "the {what} `{part}` starts or ends with `-` or `.`"
        ));
    }
    if part.contains("--") || part.contains("..") {
        return Err(format!("the {what} `{part}` holds `--` or `..`"));
    }
    Ok(())
}

fn is_commit_hash(revision: &str) -> bool {
    revision.len() == 40 && revision.chars().all(|c| c.is_ascii_hexdigit())
}

/// Where files come from and whether the network may be used.
#[derive(Clone)]
pub struct HubOptions {
    /// The hub cache (`…/huggingface/hub`).
    pub cache_dir: PathBuf,
    /// Never download (`HF_HUB_OFFLINE`).
    pub offline: bool,
    /// Another hub address (`HF_ENDPOINT`); `https://huggingface.co` when `None`.
    pub endpoint: Option<String>,
    /// An access token for gated or private repositories (`HF_TOKEN`, or the token file).
    pub token: Option<String>,
    /// Progress bars while downloading (shown when stderr is a terminal).
    pub progress: bool,
}

impl std::fmt::Debug for HubOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubOptions")
            .field("cache_dir", &self.cache_dir)
            .field("offline", &self.offline)
            .field("endpoint", &self.endpoint)
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .field("progress", &self.progress)
            .finish()
    }
}

impl HubOptions {
    /// The options Hugging Face's own tools would use in this process's environment.
    pub fn from_env() -> Self {
        let options = Self::from_vars(|name| std::env::var(name).ok(), std::env::home_dir());
        let token_file = std::env::var_os("HF_TOKEN_PATH")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                hf_home(|name| std::env::var(name).ok(), std::env::home_dir()).join("token")
            });
        let token = options.token.clone().or_else(|| {
            std::fs::read_to_string(token_file)
                .ok()
                .map(|t| t.trim().to_string())
                .filter(|t| !t.is_empty())
        });
        Self { token, ..options }
    }

    /// The options given the environment variables `var` and the home directory `home`
    /// (a pure function of its inputs; [`HubOptions::from_env`] passes the process's):
    ///
    /// - cache: `HF_HUB_CACHE`, else `HUGGINGFACE_HUB_CACHE`, else `HF_HOME/hub`, else
    ///   `XDG_CACHE_HOME/huggingface/hub`, else `home/.cache/huggingface/hub`;
    /// - offline: `HF_HUB_OFFLINE` is `1`, `true`, `yes` or `on` (any case);
    /// - endpoint: `HF_ENDPOINT`; token: `HF_TOKEN` (the token file is read by `from_env`).
    pub fn from_vars(var: impl Fn(&str) -> Option<String>, home: Option<PathBuf>) -> Self {
        let set = |name: &str| var(name).filter(|v| !v.is_empty());
        let cache_dir = set("HF_HUB_CACHE")
            .or_else(|| set("HUGGINGFACE_HUB_CACHE"))
            .map(PathBuf::from)
            .unwrap_or_else(|| hf_home(&var, home).join("hub"));
        let offline = set("HF_HUB_OFFLINE").is_some_and(|v| {
            matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on")
        });
        Self {
            cache_dir,
            offline,
            endpoint: set("HF_ENDPOINT"),
            token: set("HF_TOKEN"),
            progress: true,
        }
    }

    /// Options that only read `cache_dir` and never use the network.
    pub fn offline(cache_dir: impl Into<PathBuf>) -> Self {
        Self {
            cache_dir: cache_dir.into(),
            offline: true,
            endpoint: None,
            token: None,
            progress: false,
        }
    }
}

/// `HF_HOME`, else `XDG_CACHE_HOME/huggingface`, else `home/.cache/huggingface`.
fn hf_home(var: impl Fn(&str) -> Option<String>, home: Option<PathBuf>) -> PathBuf {
    let set = |name: &str| var(name).filter(|v| !v.is_empty());
    if let Some(dir) = set("HF_HOME") {
        return PathBuf::from(dir);
    }
    if let Some(dir) = set("XDG_CACHE_HOME") {
        return PathBuf::from(dir).join("huggingface");
    }
    home.unwrap_or_else(|| PathBuf::from("."))
        .join(".cache")
        .join("huggingface")
}

/// Parses `arg` as a hub id, after it turned out not to be an existing path.
pub fn parse_arg(arg: &Path) -> Result<HubId> {
    let text = arg.to_string_lossy();
    let error = |reason: String| TrainError::HubId {
        arg: text.to_string(),
        reason,
    };
    if arg.is_absolute() || text.starts_with('.') || text.contains('\\') {
        return Err(error("no such file or directory".into()));
    }
    if !text.contains('/') {
        return Err(error(
            "no such file or directory, and a hub id has the form `org/name`".into(),
        ));
    }
    HubId::parse(&text).map_err(|reason| error(format!("no such file or directory, and {reason}")))
}

/// The directory a `--model` argument stands for: the path itself when it exists, else the
/// snapshot of the hub id in the cache, downloaded first when files are missing (see the
/// [module docs](self)).
///
/// # Errors
/// [`TrainError::HubId`] when `arg` is neither a path nor an id; [`TrainError::HubUnavailable`]
/// when a file is neither cached nor downloadable.
pub fn resolve_model(arg: &Path, options: &HubOptions) -> Result<PathBuf> {
    if arg.exists() {
        return Ok(arg.to_path_buf());
    }
    let id = parse_arg(arg)?;
    let kind = RepoKind::Model;
    let cached = id.cached_snapshot(kind, &options.cache_dir);
    let missing = match &cached {
        Some(snapshot) => missing_model_file(snapshot),
        None => Some(MODEL_REQUIRED[0].to_string()),
    };
    match (cached, missing) {
        (Some(snapshot), None) => Ok(snapshot),
        (_, Some(file)) => download_model(&id, &file, options),
        (None, None) => unreachable!("no snapshot means a missing file"),
    }
}

/// The first file a model snapshot lacks: `config.json`, the weights, or a shard the index
/// names.
pub fn missing_model_file(dir: &Path) -> Option<String> {
    if let Some(file) = MODEL_REQUIRED.iter().find(|f| !dir.join(f).is_file()) {
        return Some(file.to_string());
    }
    if dir.join(WEIGHTS).is_file() {
        return None;
    }
    if !dir.join(WEIGHTS_INDEX).is_file() {
        return Some(WEIGHTS.into());
    }
    // An index that does not parse is left for the checkpoint loader to report.
    shard_names(&dir.join(WEIGHTS_INDEX))
        .unwrap_or_default()
        .into_iter()
        .find(|shard| !dir.join(shard).is_file())
}

/// The shard files a `model.safetensors.index.json` names, sorted and without repeats.
fn shard_names(index: &Path) -> Option<Vec<String>> {
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(index).ok()?).ok()?;
    let mut shards: Vec<String> = json
        .get("weight_map")?
        .as_object()?
        .values()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect();
    shards.sort();
    shards.dedup();
    Some(shards)
}

/// The directory a `--data-dir` argument stands for: the path itself when it exists, else the
/// parquet files of the hub dataset in the cache, downloaded first when missing. An id ending
/// in `_train` or `_test` brings both halves (see the [module docs](self)).
///
/// # Errors
/// As [`resolve_model`]; also when the links joining a split pair cannot be made.
pub fn resolve_dataset(arg: &Path, options: &HubOptions) -> Result<PathBuf> {
    if arg.exists() {
        return Ok(arg.to_path_buf());
    }
    let id = parse_arg(arg)?;
    let name = id.repo.rsplit('/').next().unwrap_or_default();
    let base = name
        .strip_suffix("_train")
        .or_else(|| name.strip_suffix("_test"));
    let Some(base) = base else {
        return dataset_snapshot(&id, options);
    };
    let train_id = id.with_name(format!("{base}_train"));
    let test_id = id.with_name(format!("{base}_test"));
    let train = dataset_snapshot(&train_id, options)?;
    let test = dataset_snapshot(&test_id, options)?;
    join_splits(&id.with_name(base.to_string()), &train, &test)
}

/// The snapshot of a dataset repository with all its parquet files, downloading when needed.
fn dataset_snapshot(id: &HubId, options: &HubOptions) -> Result<PathBuf> {
    let kind = RepoKind::Dataset;
    let cached = id.cached_snapshot(kind, &options.cache_dir);
    let missing = match &cached {
        Some(snapshot) => missing_parquet(snapshot),
        None => Some("*.parquet".to_string()),
    };
    match (cached, missing) {
        (Some(snapshot), None) => Ok(snapshot),
        (_, Some(file)) => download_dataset(id, &file, options),
        (None, None) => unreachable!("no snapshot means a missing file"),
    }
}

/// What a dataset snapshot lacks: `*.parquet` when it has none, or the first absent shard of a
/// `…-00001-of-00004…` series.
pub fn missing_parquet(dir: &Path) -> Option<String> {
    let mut files = Vec::new();
    collect_parquet(dir, dir, 4, &mut files);
    if files.is_empty() {
        return Some("*.parquet".into());
    }
    let shards: Vec<(&str, usize, usize)> =
        files.iter().filter_map(|f| shard_position(f)).collect();
    for &(prefix, _, total) in &shards {
        let present: std::collections::BTreeSet<usize> = shards
            .iter()
            .filter(|s| s.0 == prefix && s.2 == total)
            .map(|s| s.1)
            .collect();
        if present.len() < total {
            let absent = (0..).find(|i| !present.contains(i)).unwrap_or(0);
            return Some(format!("{prefix}-{absent:05}-of-{total:05}*.parquet"));
        }
    }
    None
}

/// `(prefix, index, total)` of a shard named `prefix-00001-of-00004[-hash].parquet`.
fn shard_position(file: &str) -> Option<(&str, usize, usize)> {
    let at = file.rfind("-of-")?;
    let (head, tail) = (&file[..at], &file[at + 4..]);
    let dash = head.rfind('-')?;
    let index = head[dash + 1..].parse().ok()?;
    let total_digits: String = tail.chars().take_while(char::is_ascii_digit).collect();
    let total = total_digits.parse().ok()?;
    Some((&head[..dash], index, total))
}

/// Paths of `*.parquet` files under `dir`, relative to `root`, with `/` separators.
fn collect_parquet(root: &Path, dir: &Path, depth: usize, out: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    for path in paths {
        if path.is_dir() && depth > 0 {
            collect_parquet(root, &path, depth - 1, out);
        } else if path.extension().is_some_and(|e| e == "parquet") && path.is_file() {
            let relative = path.strip_prefix(root).unwrap_or(&path);
            out.push(relative.to_string_lossy().replace('\\', "/"));
        }
    }
}

/// A directory holding `train-NNNNN.parquet` and `test-NNNNN.parquet` links to the parquet
/// files of two snapshots, so the parquet reader sees one dataset with both splits whatever the
/// halves call their files.
fn join_splits(id: &HubId, train: &Path, test: &Path) -> Result<PathBuf> {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    (train, test).hash(&mut hasher);
    let dir = std::env::temp_dir().join("peanut-hub").join(format!(
        "{}-{:016x}",
        id.cache_folder(RepoKind::Dataset),
        hasher.finish()
    ));
    std::fs::create_dir_all(&dir).map_err(|e| TrainError::io("cannot create", &dir, e))?;
    let mut links = Vec::new();
    for (split, snapshot) in [("train", train), ("test", test)] {
        let mut files = Vec::new();
        collect_parquet(snapshot, snapshot, 4, &mut files);
        for (index, file) in files.iter().enumerate() {
            let target = snapshot.join(file);
            let link = dir.join(format!("{split}-{index:05}.parquet"));
            links.push(link.clone());
            if std::fs::read_link(&link).is_ok_and(|t| t == target) {
                continue;
            }
            let _ = std::fs::remove_file(&link);
            link_file(&target, &link).map_err(|e| TrainError::io("cannot link", &link, e))?;
        }
    }
    // Links left from an earlier, larger snapshot would add stale files.
    for entry in std::fs::read_dir(&dir).map_err(|e| TrainError::io("cannot list", &dir, e))? {
        let path = entry
            .map_err(|e| TrainError::io("cannot list", &dir, e))?
            .path();
        if !links.contains(&path) {
            let _ = std::fs::remove_file(&path);
        }
    }
    Ok(dir)
}

#[cfg(unix)]
fn link_file(target: &Path, link: &Path) -> std::io::Result<()> {
    std::os::unix::fs::symlink(target, link)
}

#[cfg(not(unix))]
fn link_file(target: &Path, link: &Path) -> std::io::Result<()> {
    // Hard links need no privilege on Windows; the cache's own entries may be links, so link
    // their target.
    std::fs::hard_link(std::fs::canonicalize(target)?, link)
}

fn unavailable(
    id: &HubId,
    kind: RepoKind,
    file: &str,
    options: &HubOptions,
    reason: impl Into<String>,
) -> TrainError {
    TrainError::HubUnavailable {
        repo: id.display(),
        kind: kind.name(),
        file: file.to_string(),
        cache: options.cache_dir.clone(),
        reason: reason.into(),
    }
}

#[cfg(not(feature = "hub"))]
fn download_model(id: &HubId, missing: &str, options: &HubOptions) -> Result<PathBuf> {
    Err(unavailable(
        id,
        RepoKind::Model,
        missing,
        options,
        no_download_reason(options),
    ))
}

#[cfg(not(feature = "hub"))]
fn download_dataset(id: &HubId, missing: &str, options: &HubOptions) -> Result<PathBuf> {
    Err(unavailable(
        id,
        RepoKind::Dataset,
        missing,
        options,
        no_download_reason(options),
    ))
}

#[cfg(not(feature = "hub"))]
fn no_download_reason(options: &HubOptions) -> &'static str {
    if options.offline {
        "HF_HUB_OFFLINE is set"
    } else {
        "this build has no `hub` feature, so it cannot download"
    }
}

#[cfg(feature = "hub")]
fn download_model(id: &HubId, missing: &str, options: &HubOptions) -> Result<PathBuf> {
    let kind = RepoKind::Model;
    if options.offline {
        return Err(unavailable(
            id,
            kind,
            missing,
            options,
            "HF_HUB_OFFLINE is set",
        ));
    }
    let fetch = download::Fetch::new(id, kind, options)
        .map_err(|reason| unavailable(id, kind, missing, options, reason))?;
    let listed = |file: &str| fetch.files.iter().any(|f| f == file);
    let weights = if listed(WEIGHTS) {
        WEIGHTS
    } else if listed(WEIGHTS_INDEX) {
        WEIGHTS_INDEX
    } else {
        return Err(unavailable(
            id,
            kind,
            WEIGHTS,
            options,
            format!(
                "the repository has no safetensors weights; it holds {}",
                fetch.files.join(", ")
            ),
        ));
    };
    let mut wanted: Vec<String> = MODEL_REQUIRED.iter().map(|f| f.to_string()).collect();
    wanted.push(weights.into());
    wanted.extend(
        MODEL_OPTIONAL
            .iter()
            .filter(|f| listed(f))
            .map(|f| f.to_string()),
    );
    for file in &wanted {
        fetch
            .file(file)
            .map_err(|reason| unavailable(id, kind, file, options, reason))?;
    }
    if weights == WEIGHTS_INDEX {
        for shard in shard_names(&fetch.snapshot.join(WEIGHTS_INDEX)).unwrap_or_default() {
            fetch
                .file(&shard)
                .map_err(|reason| unavailable(id, kind, &shard, options, reason))?;
        }
    }
    Ok(fetch.snapshot)
}

#[cfg(feature = "hub")]
fn download_dataset(id: &HubId, missing: &str, options: &HubOptions) -> Result<PathBuf> {
    let kind = RepoKind::Dataset;
    if options.offline {
        return Err(unavailable(
            id,
            kind,
            missing,
            options,
            "HF_HUB_OFFLINE is set",
        ));
    }
    let fetch = download::Fetch::new(id, kind, options)
        .map_err(|reason| unavailable(id, kind, missing, options, reason))?;
    let parquet: Vec<&String> = fetch
        .files
        .iter()
        .filter(|f| f.ends_with(".parquet"))
        .collect();
    if parquet.is_empty() {
        return Err(unavailable(
            id,
            kind,
            "*.parquet",
            options,
            format!(
                "the repository has no parquet files; it holds {}",
                fetch.files.join(", ")
            ),
        ));
    }
    for file in parquet {
        fetch
            .file(file)
            .map_err(|reason| unavailable(id, kind, file, options, reason))?;
    }
    Ok(fetch.snapshot)
}

/// Downloads through the `hf-hub` crate (blocking, `ureq` with rustls).
#[cfg(feature = "hub")]
mod download {
    use std::path::PathBuf;

    use hf_hub::api::sync::{ApiBuilder, ApiRepo};
    use hf_hub::{Cache, Repo, RepoType};

    use super::{HubId, HubOptions, RepoKind};

    /// One repository at the commit its revision points to now.
    pub(super) struct Fetch {
        repo: ApiRepo,
        label: String,
        /// The files the repository lists.
        pub files: Vec<String>,
        /// `snapshots/<commit>` of the current commit: where every fetched file ends up.
        pub snapshot: PathBuf,
    }

    impl Fetch {
        /// Lists the repository (one request); the error is in words.
        pub fn new(
            id: &HubId,
            kind: RepoKind,
            options: &HubOptions,
        ) -> std::result::Result<Self, String> {
            let mut builder = ApiBuilder::from_cache(Cache::new(options.cache_dir.clone()))
                .with_progress(options.progress)
                .with_retries(2)
                .with_user_agent("peanut", env!("CARGO_PKG_VERSION"));
            if let Some(endpoint) = &options.endpoint {
                builder = builder.with_endpoint(endpoint.clone());
            }
            if options.token.is_some() {
                builder = builder.with_token(options.token.clone());
            }
            let api = builder.build().map_err(|e| e.to_string())?;
            let repo_type = match kind {
                RepoKind::Model => RepoType::Model,
                RepoKind::Dataset => RepoType::Dataset,
            };
            let repo = api.repo(Repo::with_revision(
                id.repo.clone(),
                repo_type,
                id.revision.clone(),
            ));
            let info = repo
                .info()
                .map_err(|e| format!("cannot list the repository: {e}"))?;
            let snapshot = options
                .cache_dir
                .join(id.cache_folder(kind))
                .join("snapshots")
                .join(&info.sha);
            Ok(Self {
                repo,
                label: id.display(),
                files: info.siblings.into_iter().map(|s| s.rfilename).collect(),
                snapshot,
            })
        }

        /// `file` in [`Fetch::snapshot`]: taken from the cache when it is there, else
        /// downloaded (also when the cache holds it only under an older commit).
        pub fn file(&self, file: &str) -> std::result::Result<PathBuf, String> {
            let local = self.snapshot.join(file);
            if local.is_file() {
                return Ok(local);
            }
            eprintln!("downloading {file} of {}", self.label);
            let path = self.repo.download(file).map_err(|e| e.to_string())?;
            if path.starts_with(&self.snapshot) {
                Ok(path)
            } else {
                Err(format!(
                    "the repository moved to a new commit while downloading (got `{}`); run \
                     again",
                    path.display()
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_parse_with_and_without_revision() {
        let id = HubId::parse("google/vit-base-patch16-224-in21k").unwrap();
        assert_eq!(id.repo, "google/vit-base-patch16-224-in21k");
        assert_eq!(id.revision, "main");
        let id = HubId::parse("org/name.v2@refs/pr/1").unwrap();
        assert_eq!(
            (id.repo.as_str(), id.revision.as_str()),
            ("org/name.v2", "refs/pr/1")
        );
        assert_eq!(id.display(), "org/name.v2@refs/pr/1");
        assert_eq!(id.cache_folder(RepoKind::Dataset), "datasets--org--name.v2");
    }

    #[test]
    fn shard_positions() {
        assert_eq!(
            shard_position("data/train-00001-of-00004-abc.parquet"),
            Some(("data/train", 1, 4))
        );
        assert_eq!(
            shard_position("model-00002-of-00002.safetensors"),
            Some(("model", 2, 2))
        );
        assert_eq!(shard_position("data/train.parquet"), None);
    }
}
