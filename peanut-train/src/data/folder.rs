//! ImageFolder: one sub-directory per class, holding that class's images.

use std::path::Path;

use super::{
    ImageDataset, ImageSample, ImageSource, Layout, drop_unreadable, is_image_file, read_dir_sorted,
};
use crate::error::{Result, TrainError};

/// Reads `dir/<class>/*.{jpg,jpeg,png}`; classes are the sub-directory names, sorted. Returns
/// the class names and the (unchecked) samples.
pub fn read_classes(dir: &Path) -> Result<(Vec<String>, Vec<ImageSample>)> {
    let mut classes = Vec::new();
    let mut samples = Vec::new();
    for class_dir in read_dir_sorted(dir)?.into_iter().filter(|p| p.is_dir()) {
        let label = classes.len();
        let name = class_dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        classes.push(name);
        for file in read_dir_sorted(&class_dir)?
            .into_iter()
            .filter(|p| is_image_file(p))
        {
            samples.push(ImageSample {
                source: ImageSource::File(file),
                label,
            });
        }
    }
    Ok((classes, samples))
}

/// Reads an ImageFolder pair `dir/train/<class>/…` and `dir/test/<class>/…` (or `val/`), or
/// `None` when `dir` does not look like one. Both splits must have the same classes.
pub fn read_train_test(dir: &Path) -> Result<Option<ImageDataset>> {
    let train_dir = dir.join("train");
    let Some(test_dir) = ["test", "val", "valid", "validation"]
        .iter()
        .map(|name| dir.join(name))
        .find(|p| p.is_dir())
    else {
        return Ok(None);
    };
    if !train_dir.is_dir() || !has_class_dirs(&train_dir)? {
        return Ok(None);
    }
    let (classes, train) = read_classes(&train_dir)?;
    let (test_classes, test) = read_classes(&test_dir)?;
    if test_classes != classes {
        return Err(TrainError::malformed(
            &test_dir,
            format!(
                "its class folders differ from `{}`: {} vs {} classes (first difference: {:?})",
                train_dir.display(),
                test_classes.len(),
                classes.len(),
                test_classes
                    .iter()
                    .zip(&classes)
                    .find(|(a, b)| a != b)
                    .map(|(a, _)| a.as_str())
                    .or(test_classes.get(classes.len()).map(String::as_str))
                    .unwrap_or("?")
            ),
        ));
    }
    Ok(Some(ImageDataset {
        train: drop_unreadable(train),
        test: drop_unreadable(test),
        classes,
        layout: Layout::ImageFolder,
        root: dir.to_path_buf(),
    }))
}

fn has_class_dirs(dir: &Path) -> Result<bool> {
    Ok(read_dir_sorted(dir)?.iter().any(|p| p.is_dir()))
}
