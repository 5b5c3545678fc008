//! scikit-learn's 8×8 handwritten digits (1797 images, 10 classes), bundled with this crate
//! (`data/digits.csv.gz`, BSD-3-Clause; see `data/DIGITS-LICENSE.md` for the citation).

use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;

use super::{ImageDataset, ImageSample, ImageSource, ImageSplit, Layout};
use crate::error::{Result, TrainError};

/// The compressed CSV: 64 pixel values in `0..=16` then the label, per line.
pub const DIGITS_CSV_GZ: &[u8] = include_bytes!("../../data/digits.csv.gz");

/// Every digit image: 8×8 pixels scaled from `0..=16` to `0..=255`, and its label `0..=9`.
pub fn load() -> Result<Vec<(Vec<u8>, usize)>> {
    let path = PathBuf::from("peanut-train/data/digits.csv.gz");
    let mut text = String::new();
    flate2::read::GzDecoder::new(DIGITS_CSV_GZ)
        .read_to_string(&mut text)
        .map_err(|e| TrainError::io("cannot decompress", &path, e))?;
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(number, line)| {
            let values: Vec<u32> = line
                .split(',')
                .map(|v| v.trim().parse::<f64>().map(|v| v as u32))
                .collect::<std::result::Result<_, _>>()
                .map_err(|e| TrainError::malformed(&path, format!("line {}: {e}", number + 1)))?;
            if values.len() != 65 || values[64] > 9 {
                return Err(TrainError::malformed(
                    &path,
                    format!("line {}: expected 64 pixels and a label 0..=9", number + 1),
                ));
            }
            let pixels = values[..64]
                .iter()
                .map(|&v| (v.min(16) * 255 / 16) as u8)
                .collect();
            Ok((pixels, values[64] as usize))
        })
        .collect()
}

/// The digits whose label is in `labels`, relabelled `0..labels.len()` in that order, split
/// deterministically: every `test_every`-th image of each class goes to the test split.
pub fn dataset(labels: &[usize], test_every: usize) -> Result<ImageDataset> {
    let mut train = Vec::new();
    let mut test = Vec::new();
    let mut seen = [0usize; 10];
    for (pixels, digit) in load()? {
        let Some(label) = labels.iter().position(|&l| l == digit) else {
            continue;
        };
        seen[digit] += 1;
        let sample = ImageSample {
            source: ImageSource::Gray {
                width: 8,
                height: 8,
                pixels: Arc::from(pixels),
            },
            label,
        };
        if seen[digit] % test_every.max(2) == 0 {
            test.push(sample);
        } else {
            train.push(sample);
        }
    }
    Ok(ImageDataset {
        train: ImageSplit {
            samples: train,
            skipped: 0,
        },
        test: ImageSplit {
            samples: test,
            skipped: 0,
        },
        classes: labels.iter().map(|l| l.to_string()).collect(),
        layout: Layout::Digits,
        root: PathBuf::from("peanut-train/data/digits.csv.gz"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_1797_digits_parse_with_every_class_present() {
        let digits = load().unwrap();
        assert_eq!(digits.len(), 1797);
        for class in 0..10 {
            assert!(digits.iter().filter(|(_, l)| *l == class).count() > 170);
        }
        assert!(digits.iter().all(|(p, _)| p.len() == 64));
    }

    #[test]
    fn subsets_relabel_and_split() {
        let data = dataset(&[5, 6, 7, 8, 9], 4).unwrap();
        let total = data.train.samples.len() + data.test.samples.len();
        assert!((880..920).contains(&total), "{total}");
        assert!(data.train.samples.iter().all(|s| s.label < 5));
        assert_eq!(data.classes, ["5", "6", "7", "8", "9"]);
    }
}
