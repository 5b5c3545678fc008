//! Hugging Face hub ids: resolution from a fake standard cache (offline), errors that name the
//! file and the fix, local paths before ids, malformed ids, and the cache location rules.

use std::path::{Path, PathBuf};

use peanut_train::hub::{self, HubId, HubOptions, RepoKind};

use super::*;

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

/// Lays out `files` of repository `id` in `cache` the way the hub tools do: the content in
/// `blobs/`, linked from `snapshots/<commit>/` (copied where links are unavailable), and
/// `refs/<revision>` naming the commit.
fn fake_cache(cache: &Path, kind: RepoKind, id: &str, revision: &str, files: &[(&str, &[u8])]) {
    let id = HubId::parse(id).unwrap();
    let repo = cache.join(id.cache_folder(kind));
    let snapshot = repo.join("snapshots").join(COMMIT);
    for (index, (name, content)) in files.iter().enumerate() {
        let blob = repo.join("blobs").join(format!("blob{index}"));
        std::fs::create_dir_all(blob.parent().unwrap()).unwrap();
        std::fs::write(&blob, content).unwrap();
        let pointer = snapshot.join(name);
        std::fs::create_dir_all(pointer.parent().unwrap()).unwrap();
        #[cfg(unix)]
        std::os::unix::fs::symlink(&blob, &pointer).unwrap();
        #[cfg(not(unix))]
        std::fs::copy(&blob, &pointer).unwrap();
    }
    std::fs::create_dir_all(&snapshot).unwrap();
    let refs = repo.join("refs").join(revision);
    std::fs::create_dir_all(refs.parent().unwrap()).unwrap();
    std::fs::write(refs, COMMIT).unwrap();
}

fn snapshot(cache: &Path, kind: RepoKind, id: &str) -> PathBuf {
    cache
        .join(HubId::parse(id).unwrap().cache_folder(kind))
        .join("snapshots")
        .join(COMMIT)
}

fn unavailable(error: TrainError) -> (String, String) {
    let message = error.to_string();
    match error {
        TrainError::HubUnavailable { file, .. } => (file, message),
        other => panic!("expected HubUnavailable, got {other:?}"),
    }
}

#[test]
fn a_cached_model_resolves_offline_and_loads() {
    let cache = temp_dir("hub-model").join("hub");
    // A real (tiny) checkpoint in the snapshot, written through the blob/symlink layout.
    let written = temp_dir("hub-model-src");
    tiny_vit(3).save_merged(&written).unwrap();
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(&written)
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&p).unwrap())
        })
        .collect();
    files.push(("tokenizer.json".into(), b"{}".to_vec()));
    let borrowed: Vec<(&str, &[u8])> = files
        .iter()
        .map(|(n, c)| (n.as_str(), c.as_slice()))
        .collect();
    fake_cache(&cache, RepoKind::Model, "org/tiny-vit", "main", &borrowed);

    let options = HubOptions::offline(&cache);
    let dir = hub::resolve_model(Path::new("org/tiny-vit"), &options).unwrap();
    assert_eq!(dir, snapshot(&cache, RepoKind::Model, "org/tiny-vit"));
    let (model, _) = Vit::<TrainBackend>::from_pretrained(
        &dir,
        &peanut_models::VitLoadOptions::default(),
        &Default::default(),
    )
    .unwrap();
    assert_eq!(model.config.num_labels, 3);
}

#[test]
fn revisions_and_commit_hashes_select_snapshots() {
    let cache = temp_dir("hub-revision").join("hub");
    let files: &[(&str, &[u8])] = &[("config.json", b"{}"), ("model.safetensors", b"x")];
    fake_cache(&cache, RepoKind::Model, "org/name", "v1.0", files);
    let options = HubOptions::offline(&cache);
    let expected = snapshot(&cache, RepoKind::Model, "org/name");
    assert_eq!(
        hub::resolve_model(Path::new("org/name@v1.0"), &options).unwrap(),
        expected
    );
    let by_commit = format!("org/name@{COMMIT}");
    assert_eq!(
        hub::resolve_model(Path::new(&by_commit), &options).unwrap(),
        expected
    );
    // `main` was never fetched: not in the cache.
    let (file, _) = unavailable(hub::resolve_model(Path::new("org/name"), &options).unwrap_err());
    assert_eq!(file, "config.json");
}

#[test]
fn a_sharded_model_needs_every_shard() {
    let cache = temp_dir("hub-shards").join("hub");
    let index = br#"{"metadata": {}, "weight_map": {
        "a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}"#;
    let mut files: Vec<(&str, &[u8])> = vec![
        ("config.json", b"{}"),
        ("model.safetensors.index.json", index),
        ("model-00001-of-00002.safetensors", b"x"),
    ];
    fake_cache(&cache, RepoKind::Model, "org/big", "main", &files);
    let options = HubOptions::offline(&cache);
    let (file, message) =
        unavailable(hub::resolve_model(Path::new("org/big"), &options).unwrap_err());
    assert_eq!(file, "model-00002-of-00002.safetensors");
    assert!(
        message.contains("`model-00002-of-00002.safetensors`"),
        "{message}"
    );

    files.push(("model-00002-of-00002.safetensors", b"y"));
    fake_cache(&cache, RepoKind::Model, "org/big2", "main", &files);
    let dir = hub::resolve_model(Path::new("org/big2"), &options).unwrap();
    assert_eq!(dir, snapshot(&cache, RepoKind::Model, "org/big2"));
}

#[test]
fn offline_errors_name_the_repository_file_cache_and_fix() {
    let cache = temp_dir("hub-offline").join("hub");
    let options = HubOptions::offline(&cache);
    let error =
        hub::resolve_model(Path::new("google/vit-base-patch16-224-in21k"), &options).unwrap_err();
    let (file, message) = unavailable(error);
    assert_eq!(file, "config.json");
    for needle in [
        "`google/vit-base-patch16-224-in21k`",
        "model id",
        "`config.json`",
        &format!("`{}`", cache.display()),
        "HF_HUB_OFFLINE",
        "huggingface-cli download google/vit-base-patch16-224-in21k",
        "HF_HUB_CACHE",
        "--local-dir DIR",
    ] {
        assert!(
            message.contains(needle),
            "`{needle}` missing from: {message}"
        );
    }

    // A dataset names the parquet files, the dataset repo type and the revision.
    let error = hub::resolve_dataset(Path::new("org/cars@v2"), &options).unwrap_err();
    let (file, message) = unavailable(error);
    assert_eq!(file, "*.parquet");
    assert!(
        message.contains("huggingface-cli download --repo-type dataset org/cars --revision v2"),
        "{message}"
    );
}

#[test]
fn dataset_split_pairs_join_into_one_directory() {
    let cache = temp_dir("hub-dataset").join("hub");
    let shard = |i: usize| format!("data/train-0000{i}-of-00002-abc.parquet");
    let (s0, s1) = (shard(0), shard(1));
    fake_cache(
        &cache,
        RepoKind::Dataset,
        "org/Cars_train",
        "main",
        &[
            (s0.as_str(), b"t0"),
            (s1.as_str(), b"t1"),
            ("README.md", b""),
        ],
    );
    let options = HubOptions::offline(&cache);
    // Only the `_train` half is cached.
    let (file, message) =
        unavailable(hub::resolve_dataset(Path::new("org/Cars_train"), &options).unwrap_err());
    assert_eq!(file, "*.parquet");
    assert!(message.contains("`org/Cars_test`"), "{message}");

    // The `_test` half names its files `train-…` too (a single-split upload); the joined
    // directory still tells the splits apart.
    fake_cache(
        &cache,
        RepoKind::Dataset,
        "org/Cars_test",
        "main",
        &[("data/train-00000-of-00001.parquet", b"e0")],
    );
    for arg in ["org/Cars_train", "org/Cars_test"] {
        let dir = hub::resolve_dataset(Path::new(arg), &options).unwrap();
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                "test-00000.parquet",
                "train-00000.parquet",
                "train-00001.parquet"
            ]
        );
        assert_eq!(
            std::fs::read(dir.join("train-00001.parquet")).unwrap(),
            b"t1"
        );
        assert_eq!(
            std::fs::read(dir.join("test-00000.parquet")).unwrap(),
            b"e0"
        );
    }

    // A single repository resolves to its snapshot; a missing shard is named.
    fake_cache(
        &cache,
        RepoKind::Dataset,
        "org/partial",
        "main",
        &[(s1.as_str(), b"t1")],
    );
    let (file, _) =
        unavailable(hub::resolve_dataset(Path::new("org/partial"), &options).unwrap_err());
    assert_eq!(file, "data/train-00000-of-00002*.parquet");
    fake_cache(
        &cache,
        RepoKind::Dataset,
        "org/whole",
        "main",
        &[(s0.as_str(), b"t0"), (s1.as_str(), b"t1")],
    );
    assert_eq!(
        hub::resolve_dataset(Path::new("org/whole"), &options).unwrap(),
        snapshot(&cache, RepoKind::Dataset, "org/whole")
    );
}

/// Removes a directory when dropped (also when the test fails).
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn existing_local_paths_win_over_ids() {
    let cache = temp_dir("hub-local").join("hub");
    // A relative path that is also a valid id, present both on disk and in the cache.
    let org = format!("peanut-hub-test-{}", std::process::id());
    let _cleanup = RemoveOnDrop(PathBuf::from(&org));
    let local = PathBuf::from(&org).join("model");
    std::fs::create_dir_all(&local).unwrap();
    let id = format!("{org}/model");
    let files: &[(&str, &[u8])] = &[("config.json", b"{}"), ("model.safetensors", b"x")];
    fake_cache(&cache, RepoKind::Model, &id, "main", files);
    let options = HubOptions::offline(&cache);
    assert_eq!(hub::resolve_model(Path::new(&id), &options).unwrap(), local);
    assert_eq!(
        hub::resolve_dataset(Path::new(&id), &options).unwrap(),
        local
    );
    // Without the local directory the cache answers.
    std::fs::remove_dir_all(&local).unwrap();
    assert_eq!(
        hub::resolve_model(Path::new(&id), &options).unwrap(),
        snapshot(&cache, RepoKind::Model, &id)
    );
}

#[test]
fn malformed_ids_say_what_is_wrong() {
    let options = HubOptions::offline(temp_dir("hub-malformed"));
    for (arg, expected) in [
        ("vit-base", "a hub id has the form `org/name`"),
        ("a/b/c", "exactly one `/`"),
        ("org/na me", "holds ` `"),
        ("org/", "the name is empty"),
        ("-org/name", "starts or ends with `-` or `.`"),
        ("org/na--me", "holds `--` or `..`"),
        ("org/name@", "the revision after `@` is empty"),
        ("org/name@v 1", "revision `v 1`"),
        ("/no/such/dir", "no such file or directory"),
        ("./no-such-dir", "no such file or directory"),
    ] {
        let error = hub::resolve_model(Path::new(arg), &options).unwrap_err();
        let message = error.to_string();
        assert!(
            matches!(error, TrainError::HubId { .. }),
            "{arg}: expected HubId, got {message}"
        );
        assert!(
            message.contains(expected),
            "{arg}: `{expected}` missing from: {message}"
        );
        assert!(message.contains("`org/name@revision`"), "{message}");
    }
}

#[test]
fn cache_location_and_offline_mode_follow_the_hub_variables() {
    let home = Some(PathBuf::from("/home/u"));
    let options = |vars: &[(&str, &str)]| {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        HubOptions::from_vars(
            |name| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()),
            home.clone(),
        )
    };
    let cache = |vars: &[(&str, &str)]| options(vars).cache_dir;
    assert_eq!(cache(&[]), PathBuf::from("/home/u/.cache/huggingface/hub"));
    assert_eq!(
        cache(&[("XDG_CACHE_HOME", "/xdg")]),
        PathBuf::from("/xdg/huggingface/hub")
    );
    assert_eq!(
        cache(&[("XDG_CACHE_HOME", "/xdg"), ("HF_HOME", "/hf")]),
        PathBuf::from("/hf/hub")
    );
    assert_eq!(
        cache(&[("HF_HOME", "/hf"), ("HF_HUB_CACHE", "/cache")]),
        PathBuf::from("/cache")
    );
    assert_eq!(
        cache(&[("HUGGINGFACE_HUB_CACHE", "/legacy"), ("HF_HOME", "/hf")]),
        PathBuf::from("/legacy")
    );
    assert_eq!(
        cache(&[("HF_HOME", "")]),
        PathBuf::from("/home/u/.cache/huggingface/hub")
    );

    assert!(!options(&[]).offline);
    for value in ["1", "true", "YES", "On"] {
        assert!(options(&[("HF_HUB_OFFLINE", value)]).offline, "{value}");
    }
    for value in ["0", "false", ""] {
        assert!(!options(&[("HF_HUB_OFFLINE", value)]).offline, "{value}");
    }
    let options = options(&[("HF_ENDPOINT", "https://mirror"), ("HF_TOKEN", "hf_secret")]);
    assert_eq!(options.endpoint.as_deref(), Some("https://mirror"));
    assert_eq!(options.token.as_deref(), Some("hf_secret"));
    assert!(!format!("{options:?}").contains("hf_secret"));
}
