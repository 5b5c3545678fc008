//! Stanford Cars (196 classes) in the layouts people have on disk: the original devkit as
//! torchvision reads it, and the Kaggle class-folder copy with its CSVs.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::mat::{self, MatValue};
use super::{
    ImageDataset, ImageSample, ImageSource, Layout, drop_unreadable, is_image_file, read_dir_sorted,
};
use crate::error::{Result, TrainError};

/// Reads the devkit / torchvision layout from `dir`, or `None` when `dir` has no `devkit/`
/// directory next to `cars_train/`:
///
/// ```text
/// dir/cars_train/*.jpg            dir/devkit/cars_meta.mat
/// dir/cars_test/*.jpg             dir/devkit/cars_train_annos.mat
/// dir/cars_test_annos_withlabels.mat   (or dir/devkit/cars_test_annos_withlabels.mat)
/// ```
///
/// Images may also sit one level deeper (`cars_train/cars_train/*.jpg`, as some archives unpack).
pub fn read_devkit(dir: &Path) -> Result<Option<ImageDataset>> {
    let devkit = dir.join("devkit");
    if !devkit.is_dir() || !dir.join("cars_train").is_dir() {
        return Ok(None);
    }
    let require = |path: PathBuf| -> Result<PathBuf> {
        if path.is_file() {
            Ok(path)
        } else {
            Err(TrainError::Layout {
                path: dir.to_path_buf(),
                looked_for: format!(
                    "the Stanford Cars devkit layout, but `{}` is missing",
                    path.display()
                ),
            })
        }
    };
    let meta = require(devkit.join("cars_meta.mat"))?;
    let train_annos = require(devkit.join("cars_train_annos.mat"))?;
    let test_annos = [
        dir.join("cars_test_annos_withlabels.mat"),
        devkit.join("cars_test_annos_withlabels.mat"),
    ]
    .into_iter()
    .find(|p| p.is_file());
    let Some(test_annos) = test_annos else {
        return Err(TrainError::Layout {
            path: dir.to_path_buf(),
            looked_for: format!(
                "the Stanford Cars devkit layout, but `cars_test_annos_withlabels.mat` (the test \
                 labels, a separate download from the devkit) is in neither `{}` nor `{}`",
                dir.display(),
                devkit.display()
            ),
        });
    };

    let classes = read_class_names(&meta)?;
    let train = read_annotations(&train_annos, &image_dir(dir, "cars_train"), classes.len())?;
    let test = read_annotations(&test_annos, &image_dir(dir, "cars_test"), classes.len())?;
    Ok(Some(ImageDataset {
        train: drop_unreadable(train),
        test: drop_unreadable(test),
        classes,
        layout: Layout::CarsDevkit,
        root: dir.to_path_buf(),
    }))
}

fn image_dir(dir: &Path, name: &str) -> PathBuf {
    let nested = dir.join(name).join(name);
    if nested.is_dir() {
        nested
    } else {
        dir.join(name)
    }
}

fn read_class_names(path: &Path) -> Result<Vec<String>> {
    let variables = mat::read(path)?;
    match variables.get("class_names") {
        Some(MatValue::Cell { items, .. }) => items
            .iter()
            .map(|item| {
                item.text().map(str::to_string).ok_or_else(|| {
                    TrainError::malformed(path, "`class_names` holds a non-text cell")
                })
            })
            .collect(),
        _ => Err(TrainError::malformed(
            path,
            "expected a cell array `class_names` (the devkit's cars_meta.mat)",
        )),
    }
}

fn read_annotations(path: &Path, images: &Path, num_classes: usize) -> Result<Vec<ImageSample>> {
    let variables = mat::read(path)?;
    let Some(MatValue::Struct {
        fields, elements, ..
    }) = variables.get("annotations")
    else {
        return Err(TrainError::malformed(
            path,
            "expected a struct array `annotations` with fields `fname` and `class`",
        ));
    };
    let field = |name: &str| fields.iter().position(|f| f == name);
    let (Some(fname), Some(class)) = (field("fname"), field("class")) else {
        return Err(TrainError::malformed(
            path,
            format!(
                "`annotations` has fields {fields:?}; it needs `fname` and `class` (for the test \
                 split use cars_test_annos_withlabels.mat, which has labels)"
            ),
        ));
    };
    elements
        .iter()
        .map(|element| {
            let name = element[fname].text().unwrap_or_default();
            let label = element[class].scalar().unwrap_or(0.0) as usize;
            if label == 0 || label > num_classes {
                return Err(TrainError::malformed(
                    path,
                    format!("`{name}` has class {label}, outside 1..={num_classes}"),
                ));
            }
            Ok(ImageSample {
                source: ImageSource::File(images.join(name)),
                label: label - 1,
            })
        })
        .collect()
}

/// Reads the Kaggle layout ("Stanford Car Dataset by classes folder") from `dir`, or `None`
/// when `dir` does not hold it:
///
/// ```text
/// dir/car_data/car_data/train/<class name>/*.jpg   (or dir/car_data/train/…)
/// dir/car_data/car_data/test/<class name>/*.jpg
/// dir/anno_train.csv, dir/anno_test.csv   fname,x1,y1,x2,y2,class (1-based), no header
/// dir/names.csv                            one class name per line
/// ```
///
/// Without the CSVs the class folders alone give the labels (sorted folder names). Images the
/// CSVs name but no folder holds are counted as skipped.
pub fn read_kaggle(dir: &Path) -> Result<Option<ImageDataset>> {
    let Some(images) = [dir.join("car_data").join("car_data"), dir.join("car_data")]
        .into_iter()
        .find(|p| p.join("train").is_dir() && p.join("test").is_dir())
    else {
        return Ok(None);
    };
    let names_csv = dir.join("names.csv");
    let classes: Vec<String> = if names_csv.is_file() {
        read_text(&names_csv)?
            .lines()
            .map(|l| l.trim().trim_matches('"').to_string())
            .filter(|l| !l.is_empty())
            .collect()
    } else {
        read_dir_sorted(&images.join("train"))?
            .into_iter()
            .filter(|p| p.is_dir())
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect()
    };
    let train = read_kaggle_split(&images.join("train"), &dir.join("anno_train.csv"), &classes)?;
    let test = read_kaggle_split(&images.join("test"), &dir.join("anno_test.csv"), &classes)?;
    Ok(Some(ImageDataset {
        train,
        test,
        classes,
        layout: Layout::CarsKaggle,
        root: dir.to_path_buf(),
    }))
}

fn read_text(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).map_err(|e| TrainError::io("cannot read", path, e))?;
    // Spreadsheet programs save CSV with a UTF-8 byte-order mark.
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(&bytes);
    Ok(String::from_utf8_lossy(bytes).into_owned())
}

/// `fname → 0-based class` from an `anno_*.csv`.
fn read_csv_labels(path: &Path, num_classes: usize) -> Result<HashMap<String, usize>> {
    let mut labels = HashMap::new();
    for (number, line) in read_text(path)?.lines().enumerate() {
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        if fields.len() < 2 || fields.iter().all(|f| f.is_empty()) {
            continue;
        }
        let class = fields[fields.len() - 1];
        match class.parse::<usize>() {
            Ok(class) if (1..=num_classes).contains(&class) => {
                labels.insert(fields[0].trim_matches('"').to_string(), class - 1);
            }
            // A header line such as `Image,x1,…,class`.
            Err(_) if number == 0 => {}
            _ => {
                return Err(TrainError::malformed(
                    path,
                    format!(
                        "line {}: class `{class}` is not in 1..={num_classes}",
                        number + 1
                    ),
                ));
            }
        }
    }
    Ok(labels)
}

fn read_kaggle_split(images: &Path, csv: &Path, classes: &[String]) -> Result<super::ImageSplit> {
    let csv_labels = if csv.is_file() {
        Some(read_csv_labels(csv, classes.len())?)
    } else {
        None
    };
    let folder_label = |folder: &str| {
        classes
            .iter()
            .position(|c| c == folder || c.replace('/', "-") == folder)
    };
    let mut samples = Vec::new();
    let mut unlabelled = 0;
    let mut found = std::collections::HashSet::new();
    for class_dir in read_dir_sorted(images)?.into_iter().filter(|p| p.is_dir()) {
        let folder = class_dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        for file in read_dir_sorted(&class_dir)?
            .into_iter()
            .filter(|p| is_image_file(p))
        {
            let name = file
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let label = csv_labels
                .as_ref()
                .and_then(|labels| labels.get(&name).copied())
                .or_else(|| folder_label(&folder));
            found.insert(name);
            match label {
                Some(label) => samples.push(ImageSample {
                    source: ImageSource::File(file),
                    label,
                }),
                None => unlabelled += 1,
            }
        }
    }
    // Images the CSV names but no class folder holds (an incomplete download) count as
    // unreadable, as a devkit annotation naming a missing file does.
    let missing = csv_labels.map_or(0, |labels| {
        labels.keys().filter(|name| !found.contains(*name)).count()
    });
    let mut split = drop_unreadable(samples);
    split.skipped += unlabelled + missing;
    Ok(split)
}
