//! Hugging Face datasets stored as parquet files (for example
//! `Multimodal-Fatima/StanfordCars_train` / `_test`, the paper's source): an image column
//! holding `{bytes, path}` structs and an integer label column.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::Field;

use super::{ImageDataset, ImageSample, ImageSource, Layout, drop_unreadable, read_dir_sorted};
use crate::error::{Result, TrainError};

/// Label column names tried, in order.
pub const LABEL_COLUMNS: &[&str] = &["label", "labels", "fine_label", "class"];

/// Reads `*.parquet` files found in `dir` (up to three levels down): names containing `train`
/// form the training split, names containing `test`, `val` or `valid` the test split. `None`
/// when there are no parquet files.
pub fn read_dir(dir: &Path) -> Result<Option<ImageDataset>> {
    let mut files = Vec::new();
    collect_parquet(dir, 3, &mut files)?;
    if files.is_empty() {
        return Ok(None);
    }
    let split_of = |path: &Path| {
        let name = path.to_string_lossy().to_lowercase();
        let file = path
            .file_name()
            .map(|n| n.to_string_lossy().to_lowercase())
            .unwrap_or_default();
        if file.contains("train") {
            Some(true)
        } else if ["test", "val"].iter().any(|k| file.contains(k)) {
            Some(false)
        } else if name.contains("_train") || name.contains("/train") {
            Some(true)
        } else if ["_test", "/test", "_val", "/val"]
            .iter()
            .any(|k| name.contains(k))
        {
            Some(false)
        } else {
            None
        }
    };
    let train_files: Vec<&PathBuf> = files.iter().filter(|f| split_of(f) == Some(true)).collect();
    let test_files: Vec<&PathBuf> = files
        .iter()
        .filter(|f| split_of(f) == Some(false))
        .collect();
    if train_files.is_empty() || test_files.is_empty() {
        return Err(TrainError::Layout {
            path: dir.to_path_buf(),
            looked_for: format!(
                "parquet files for both splits (names containing `train` and `test`/`val`); \
                 found {}",
                files
                    .iter()
                    .map(|f| f.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        });
    }
    let mut names = None;
    let mut train = Vec::new();
    for file in train_files {
        train.extend(read_file(file, &mut names)?);
    }
    let mut test = Vec::new();
    for file in test_files {
        test.extend(read_file(file, &mut names)?);
    }
    let classes = names.unwrap_or_else(|| {
        let max = train
            .iter()
            .chain(&test)
            .map(|s| s.label)
            .max()
            .unwrap_or(0);
        (0..=max).map(|i| i.to_string()).collect()
    });
    if let Some(bad) = train.iter().chain(&test).find(|s| s.label >= classes.len()) {
        return Err(TrainError::malformed(
            dir,
            format!(
                "label {} is outside the {} class names",
                bad.label,
                classes.len()
            ),
        ));
    }
    Ok(Some(ImageDataset {
        train: drop_unreadable(train),
        test: drop_unreadable(test),
        classes,
        layout: Layout::Parquet,
        root: dir.to_path_buf(),
    }))
}

fn collect_parquet(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) -> Result<()> {
    for path in read_dir_sorted(dir)? {
        if path.is_dir() && depth > 0 {
            collect_parquet(&path, depth - 1, out)?;
        } else if path.extension().is_some_and(|e| e == "parquet") {
            out.push(path);
        }
    }
    Ok(())
}

/// Reads one parquet file's examples; fills `names` from the Hugging Face metadata
/// (`ClassLabel` names) when present.
pub fn read_file(path: &Path, names: &mut Option<Vec<String>>) -> Result<Vec<ImageSample>> {
    let parquet_err = |source| TrainError::Parquet {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(|e| TrainError::io("cannot open", path, e))?;
    let reader = SerializedFileReader::new(file).map_err(parquet_err)?;
    if names.is_none() {
        *names = class_names(&reader);
    }
    let mut samples = Vec::new();
    let mut unreadable = 0usize;
    for row in reader.get_row_iter(None).map_err(parquet_err)? {
        let row = row.map_err(parquet_err)?;
        let mut bytes = None;
        let mut label = None;
        for (name, field) in row.get_column_iter() {
            match field {
                Field::Group(group) if bytes.is_none() => {
                    bytes = group.get_column_iter().find_map(|(n, f)| match f {
                        Field::Bytes(b) if n == "bytes" => Some(Arc::<[u8]>::from(b.data())),
                        _ => None,
                    });
                }
                Field::Bytes(b) if bytes.is_none() && name == "image" => {
                    bytes = Some(Arc::<[u8]>::from(b.data()));
                }
                _ if label.is_none() && LABEL_COLUMNS.contains(&name.as_str()) => {
                    label = match field {
                        Field::Long(v) => usize::try_from(*v).ok(),
                        Field::Int(v) => usize::try_from(*v).ok(),
                        Field::Short(v) => usize::try_from(*v).ok(),
                        Field::ULong(v) => Some(*v as usize),
                        Field::UInt(v) => Some(*v as usize),
                        _ => None,
                    };
                }
                _ => {}
            }
        }
        match (bytes, label) {
            (Some(bytes), Some(label)) => samples.push(ImageSample {
                source: ImageSource::Encoded(bytes),
                label,
            }),
            (None, _) if samples.is_empty() && unreadable == 0 => {
                return Err(TrainError::malformed(
                    path,
                    "no image column (a struct with a `bytes` field, as Hugging Face datasets \
                     store images)",
                ));
            }
            (_, None) if samples.is_empty() && unreadable == 0 => {
                return Err(TrainError::malformed(
                    path,
                    format!("no integer label column (looked for {LABEL_COLUMNS:?})"),
                ));
            }
            _ => unreadable += 1,
        }
    }
    if unreadable > 0 {
        eprintln!(
            "{}: {unreadable} rows without an image or label skipped",
            path.display()
        );
    }
    Ok(samples)
}

/// The `ClassLabel` names of the label column, from the `huggingface` key-value metadata.
fn class_names<R: FileReader>(reader: &R) -> Option<Vec<String>> {
    let metadata = reader.metadata().file_metadata().key_value_metadata()?;
    let json = metadata
        .iter()
        .find(|kv| kv.key == "huggingface")?
        .value
        .as_ref()?;
    let value: serde_json::Value = serde_json::from_str(json).ok()?;
    let features = value.get("info")?.get("features")?;
    LABEL_COLUMNS.iter().find_map(|column| {
        let names = features.get(*column)?.get("names")?.as_array()?;
        let names: Vec<String> = names
            .iter()
            .filter_map(|n| n.as_str().map(str::to_string))
            .collect();
        let unique: BTreeSet<&String> = names.iter().collect();
        (unique.len() == names.len() && !names.is_empty()).then_some(names)
    })
}
