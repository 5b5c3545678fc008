//! Hugging Face datasets stored as parquet files (for example
//! `Multimodal-Fatima/StanfordCars_train` / `_test`, the paper's source): an image column
//! holding `{bytes, path}` structs and an integer label column.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parquet::basic::Type as PhysicalType;
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::Field;
use parquet::schema::types::SchemaDescriptor;

use super::{ImageDataset, ImageSample, ImageSource, Layout, drop_unreadable, read_dir_sorted};
use crate::error::{Result, TrainError};

/// Most classes a dataset without class names in its metadata may have (labels `0..` this).
pub const MAX_UNNAMED_CLASSES: usize = 1 << 20;

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
    let (mut train, mut train_skipped) = (Vec::new(), 0);
    for file in train_files {
        let (samples, skipped) = read_file(file, &mut names)?;
        train.extend(samples);
        train_skipped += skipped;
    }
    let (mut test, mut test_skipped) = (Vec::new(), 0);
    for file in test_files {
        let (samples, skipped) = read_file(file, &mut names)?;
        test.extend(samples);
        test_skipped += skipped;
    }
    let classes = match names {
        Some(names) => names,
        None => {
            // Without `ClassLabel` names the classes are 0..=the largest label; a label beyond
            // any real dataset's class count would size that list.
            let max = train
                .iter()
                .chain(&test)
                .map(|s| s.label)
                .max()
                .unwrap_or(0);
            if max >= MAX_UNNAMED_CLASSES {
                return Err(TrainError::malformed(
                    dir,
                    format!(
                        "label {max} without class names in the files' metadata: more than \
                         {MAX_UNNAMED_CLASSES} classes is not a classification dataset"
                    ),
                ));
            }
            (0..=max).map(|i| i.to_string()).collect()
        }
    };
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
    let mut train = drop_unreadable(train);
    train.skipped += train_skipped;
    let mut test = drop_unreadable(test);
    test.skipped += test_skipped;
    Ok(Some(ImageDataset {
        train,
        test,
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

/// Reads one parquet file's examples and the number of rows skipped for a missing image or
/// label (a null cell, or a negative label such as Hugging Face's `-1` for "unlabelled"); fills
/// `names` from the Hugging Face metadata (`ClassLabel` names) when present.
///
/// # Errors
/// The file does not parse, or its schema has no image column (a struct with a binary `bytes`
/// field, as Hugging Face datasets store images, or a binary `image` column) or no integer label
/// column (one of [`LABEL_COLUMNS`]); the message lists the columns it has.
pub fn read_file(
    path: &Path,
    names: &mut Option<Vec<String>>,
) -> Result<(Vec<ImageSample>, usize)> {
    let parquet_err = |source| TrainError::Parquet {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(|e| TrainError::io("cannot open", path, e))?;
    let reader = SerializedFileReader::new(file).map_err(parquet_err)?;
    let (image_column, label_column) =
        find_columns(path, reader.metadata().file_metadata().schema_descr())?;
    if names.is_none() {
        *names = class_names(&reader);
    }
    let mut samples = Vec::new();
    let mut skipped = 0usize;
    for row in reader.get_row_iter(None).map_err(parquet_err)? {
        let row = row.map_err(parquet_err)?;
        let mut bytes = None;
        let mut label = None;
        for (name, field) in row.get_column_iter() {
            if *name == image_column {
                bytes = match field {
                    Field::Group(group) => group.get_column_iter().find_map(|(n, f)| match f {
                        Field::Bytes(b) if n == "bytes" => Some(Arc::<[u8]>::from(b.data())),
                        _ => None,
                    }),
                    Field::Bytes(b) => Some(Arc::<[u8]>::from(b.data())),
                    _ => None,
                };
            } else if *name == label_column {
                label = match field {
                    Field::Long(v) => usize::try_from(*v).ok(),
                    Field::Int(v) => usize::try_from(*v).ok(),
                    Field::Short(v) => usize::try_from(*v).ok(),
                    Field::Byte(v) => usize::try_from(*v).ok(),
                    Field::ULong(v) => usize::try_from(*v).ok(),
                    Field::UInt(v) => usize::try_from(*v).ok(),
                    Field::UShort(v) => Some(usize::from(*v)),
                    Field::UByte(v) => Some(usize::from(*v)),
                    _ => None,
                };
            }
        }
        match (bytes, label) {
            (Some(bytes), Some(label)) => samples.push(ImageSample {
                source: ImageSource::Encoded(bytes),
                label,
            }),
            _ => skipped += 1,
        }
    }
    Ok((samples, skipped))
}

/// The image column and the label column of a file's schema.
fn find_columns(path: &Path, schema: &SchemaDescriptor) -> Result<(String, String)> {
    let leaves: Vec<(&[String], PhysicalType)> = schema
        .columns()
        .iter()
        .map(|column| (column.path().parts(), column.physical_type()))
        .collect();
    let image = leaves.iter().find_map(|(parts, kind)| match parts {
        [column, field] if field == "bytes" && *kind == PhysicalType::BYTE_ARRAY => {
            Some(column.clone())
        }
        [column] if column == "image" && *kind == PhysicalType::BYTE_ARRAY => Some(column.clone()),
        _ => None,
    });
    let label = LABEL_COLUMNS.iter().find(|name| {
        leaves.iter().any(|(parts, kind)| {
            parts.len() == 1
                && parts[0] == **name
                && matches!(kind, PhysicalType::INT32 | PhysicalType::INT64)
        })
    });
    let columns = || {
        leaves
            .iter()
            .map(|(parts, kind)| format!("{} ({kind:?})", parts.join(".")))
            .collect::<Vec<_>>()
            .join(", ")
    };
    match (image, label) {
        (Some(image), Some(label)) => Ok((image, label.to_string())),
        (None, _) => Err(TrainError::malformed(
            path,
            format!(
                "no image column (a struct with a binary `bytes` field, as Hugging Face datasets \
                 store images, or a binary `image` column); the file has columns {}",
                columns()
            ),
        )),
        (_, None) => Err(TrainError::malformed(
            path,
            format!(
                "no integer label column (looked for {LABEL_COLUMNS:?}); the file has columns {}",
                columns()
            ),
        )),
    }
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
