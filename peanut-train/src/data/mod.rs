//! Datasets: image classification (Stanford Cars layouts, ImageFolder, parquet, the bundled
//! digits) and causal-LM instruction data.
//!
//! Images are decoded lazily, in parallel, inside the [`ImageBatcher`]; the order of examples is
//! fixed by [`EpochOrder`] from a seed and the epoch, so a resumed run sees exactly the batches
//! an uninterrupted one would have seen.

pub mod batch;
pub mod cars;
pub mod digits;
pub mod folder;
pub mod instruct;
pub mod lm_batch;
pub mod mat;
pub mod parquet_images;
pub mod processor;
pub mod rng;
pub mod transform;

use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use batch::{EpochOrder, ImageBatch, ImageBatcher, SampleRef};
pub use lm_batch::{IGNORE_INDEX, LmBatch, LmBatcher};
pub use transform::{Normalization, Transform};

use crate::error::{Result, TrainError};

/// Where an image's bytes come from.
#[derive(Debug, Clone)]
pub enum ImageSource {
    /// An encoded image file (JPEG or PNG) on disk.
    File(PathBuf),
    /// An encoded image held in memory (read from a parquet file).
    Encoded(Arc<[u8]>),
    /// Raw 8-bit grayscale pixels, row-major.
    Gray {
        /// Width in pixels.
        width: u32,
        /// Height in pixels.
        height: u32,
        /// `width · height` values.
        pixels: Arc<[u8]>,
    },
}

/// Most pixels an image may declare (64 Mi, 8192 × 8192): larger ones are skipped as
/// unreadable rather than decoded, so a small file declaring a huge size cannot exhaust memory.
pub const MAX_IMAGE_PIXELS: u64 = 64 * 1024 * 1024;

/// Most bytes one decoded image may take (before its conversion to 8-bit RGB).
pub const MAX_DECODED_BYTES: u64 = 512 * 1024 * 1024;

/// Largest ratio of an image's long side to its short side: beyond it the evaluation
/// transform, which resizes the short side to the model's input size, would allocate an
/// arbitrarily long strip.
pub const MAX_ASPECT_RATIO: u64 = 64;

/// Checks declared dimensions against [`MAX_IMAGE_PIXELS`] and [`MAX_ASPECT_RATIO`].
pub fn check_dimensions(width: u32, height: u32) -> std::result::Result<(), String> {
    let (w, h) = (u64::from(width), u64::from(height));
    if w == 0 || h == 0 {
        return Err(format!("the image is empty ({width}×{height})"));
    }
    if w * h > MAX_IMAGE_PIXELS {
        return Err(format!(
            "the image declares {width}×{height} pixels, more than the {MAX_IMAGE_PIXELS} this \
             reader decodes"
        ));
    }
    if w.max(h) > MAX_ASPECT_RATIO * w.min(h) {
        return Err(format!(
            "the image's {width}×{height} sides differ by more than {MAX_ASPECT_RATIO}×"
        ));
    }
    Ok(())
}

/// The decoder limits this crate decodes under (sides, allocation).
fn decode_limits() -> image::Limits {
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_IMAGE_PIXELS.min(u64::from(u32::MAX)) as u32);
    limits.max_image_height = limits.max_image_width;
    limits.max_alloc = Some(MAX_DECODED_BYTES);
    limits
}

/// Decodes with [`decode_limits`], checking the declared size before any pixel is allocated.
fn decode_limited<R: std::io::BufRead + std::io::Seek>(
    reader: image::ImageReader<R>,
) -> std::result::Result<image::DynamicImage, String> {
    use image::ImageDecoder;
    let mut reader = reader.with_guessed_format().map_err(|e| e.to_string())?;
    // The header is read without limits (no pixel is allocated yet) so that an oversized
    // image is refused with this crate's message; the limits then bind the decoding.
    reader.no_limits();
    let mut decoder = reader.into_decoder().map_err(|e| e.to_string())?;
    let (width, height) = decoder.dimensions();
    check_dimensions(width, height)?;
    if decoder.total_bytes() > MAX_DECODED_BYTES {
        return Err(format!(
            "the image needs {} bytes decoded, more than {MAX_DECODED_BYTES}",
            decoder.total_bytes()
        ));
    }
    decoder
        .set_limits(decode_limits())
        .map_err(|e| e.to_string())?;
    image::DynamicImage::from_decoder(decoder).map_err(|e| e.to_string())
}

/// The declared dimensions, within the limits of [`check_dimensions`].
fn header_dimensions<R: std::io::BufRead + std::io::Seek>(
    reader: image::ImageReader<R>,
) -> Option<(u32, u32)> {
    let mut reader = reader.with_guessed_format().ok()?;
    reader.no_limits();
    let (width, height) = reader.into_dimensions().ok()?;
    check_dimensions(width, height).ok()?;
    Some((width, height))
}

impl ImageSource {
    /// Decodes the image, refusing images beyond [`MAX_IMAGE_PIXELS`], [`MAX_DECODED_BYTES`]
    /// or [`MAX_ASPECT_RATIO`] before allocating their pixels.
    pub fn decode(&self) -> std::result::Result<image::DynamicImage, String> {
        match self {
            Self::File(path) => {
                decode_limited(image::ImageReader::open(path).map_err(|e| e.to_string())?)
            }
            Self::Encoded(bytes) => {
                decode_limited(image::ImageReader::new(std::io::Cursor::new(&bytes[..])))
            }
            Self::Gray {
                width,
                height,
                pixels,
            } => {
                check_dimensions(*width, *height)?;
                image::GrayImage::from_raw(*width, *height, pixels.to_vec())
                    .map(image::DynamicImage::ImageLuma8)
                    .ok_or_else(|| "pixel count does not match the size".to_string())
            }
        }
    }

    /// Whether the image's header can be read and declares a size within the limits of
    /// [`ImageSource::decode`] (cheap; used to skip unreadable files up front).
    pub fn header_ok(&self) -> bool {
        match self {
            Self::File(path) => image::ImageReader::open(path)
                .ok()
                .and_then(header_dimensions)
                .is_some(),
            Self::Encoded(bytes) => {
                header_dimensions(image::ImageReader::new(std::io::Cursor::new(&bytes[..])))
                    .is_some()
            }
            Self::Gray {
                width,
                height,
                pixels,
            } => {
                check_dimensions(*width, *height).is_ok()
                    && pixels.len() as u64 == u64::from(*width) * u64::from(*height)
            }
        }
    }
}

/// One labelled image.
#[derive(Debug, Clone)]
pub struct ImageSample {
    /// Where the pixels come from.
    pub source: ImageSource,
    /// Class index in `0..num_classes`.
    pub label: usize,
}

/// One split (train or test) of an image-classification dataset.
#[derive(Debug, Clone, Default)]
pub struct ImageSplit {
    /// The usable examples.
    pub samples: Vec<ImageSample>,
    /// Entries skipped because their image could not be read.
    pub skipped: usize,
}

/// Which on-disk layout a dataset was read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Stanford Cars as torchvision / the original devkit ship it (`cars_train/`, `cars_test/`,
    /// `devkit/*.mat`).
    CarsDevkit,
    /// Stanford Cars from Kaggle: class folders plus `anno_*.csv` / `names.csv`.
    CarsKaggle,
    /// Hugging Face parquet files (`Multimodal-Fatima/StanfordCars_*` and similar).
    Parquet,
    /// A plain ImageFolder: `train/<class>/*.jpg` and `test/<class>/*.jpg` (or `val/`).
    ImageFolder,
    /// The 8×8 digits bundled with this crate.
    Digits,
}

/// An image-classification dataset: both splits and the class names.
#[derive(Debug, Clone)]
pub struct ImageDataset {
    /// Training examples.
    pub train: ImageSplit,
    /// Evaluation examples.
    pub test: ImageSplit,
    /// Class names; labels index into it.
    pub classes: Vec<String>,
    /// The layout it was read from.
    pub layout: Layout,
    /// The directory it was read from.
    pub root: PathBuf,
}

impl ImageDataset {
    /// Checks that the dataset can train a classifier: at least two classes, each with at least
    /// one readable training image. (A class with no example would get a head row that never
    /// trains; one class trains to loss 0 and says nothing.)
    ///
    /// # Errors
    /// [`TrainError::malformed`] on the dataset's root, naming the empty classes.
    pub fn check_trainable(&self) -> Result<()> {
        if self.classes.len() < 2 {
            return Err(TrainError::malformed(
                &self.root,
                format!(
                    "it has {} class{} ({}); a classifier needs at least two",
                    self.classes.len(),
                    if self.classes.len() == 1 { "" } else { "es" },
                    self.classes.join(", ")
                ),
            ));
        }
        let mut counts = vec![0usize; self.classes.len()];
        for sample in &self.train.samples {
            if let Some(count) = counts.get_mut(sample.label) {
                *count += 1;
            }
        }
        let empty: Vec<&str> = counts
            .iter()
            .zip(&self.classes)
            .filter(|(count, _)| **count == 0)
            .map(|(_, name)| name.as_str())
            .collect();
        if !empty.is_empty() {
            let shown = empty
                .iter()
                .take(10)
                .copied()
                .collect::<Vec<_>>()
                .join(", ");
            return Err(TrainError::malformed(
                &self.root,
                format!(
                    "{} of its {} classes ha{} no readable training image: {shown}{}; add images \
                     or remove the class",
                    empty.len(),
                    self.classes.len(),
                    if empty.len() == 1 { "s" } else { "ve" },
                    if empty.len() > 10 { ", …" } else { "" }
                ),
            ));
        }
        Ok(())
    }
}

/// The layouts [`detect`] tries, in words (for error messages).
pub const LAYOUTS_LOOKED_FOR: &str = "Stanford Cars devkit/torchvision layout (`cars_train/`, \
`cars_test/`, `devkit/cars_train_annos.mat`, `devkit/cars_meta.mat`, \
`cars_test_annos_withlabels.mat`), Stanford Cars Kaggle layout (`car_data/car_data/train|test/<class>/`, \
`anno_train.csv`, `anno_test.csv`, `names.csv`), Hugging Face parquet files (`*train*.parquet` and \
`*test*.parquet` with `image` and `label` columns), ImageFolder (`train/<class>/*.jpg` and \
`test/<class>/*.jpg` or `val/<class>/*.jpg`)";

/// Reads an image dataset from `root`, detecting its layout: Stanford Cars (devkit, Kaggle),
/// parquet files, or an ImageFolder — also one directory down (for example
/// `root/stanford_cars/`). Unreadable images are skipped and counted.
pub fn detect(root: &Path) -> Result<ImageDataset> {
    if !root.is_dir() {
        return Err(TrainError::Layout {
            path: root.to_path_buf(),
            looked_for: format!("a directory holding one of: {LAYOUTS_LOOKED_FOR}"),
        });
    }
    let mut candidates = vec![root.to_path_buf()];
    if let Ok(entries) = std::fs::read_dir(root) {
        let mut subdirs: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_dir())
            .collect();
        subdirs.sort();
        candidates.extend(subdirs);
    }
    for dir in &candidates {
        if let Some(found) = cars::read_devkit(dir)? {
            return finish(found);
        }
        if let Some(found) = cars::read_kaggle(dir)? {
            return finish(found);
        }
        if let Some(found) = parquet_images::read_dir(dir)? {
            return finish(found);
        }
        if let Some(found) = folder::read_train_test(dir)? {
            return finish(found);
        }
    }
    Err(TrainError::Layout {
        path: root.to_path_buf(),
        looked_for: LAYOUTS_LOOKED_FOR.to_string(),
    })
}

fn finish(dataset: ImageDataset) -> Result<ImageDataset> {
    for (split, data) in [("train", &dataset.train), ("test", &dataset.test)] {
        if data.samples.is_empty() {
            return Err(TrainError::EmptySplit {
                split,
                path: dataset.root.clone(),
                skipped: data.skipped,
            });
        }
    }
    Ok(dataset)
}

/// Keeps the samples whose image header reads, checking in parallel; returns them and the
/// number skipped.
pub fn drop_unreadable(samples: Vec<ImageSample>) -> ImageSplit {
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let chunk = samples.len().div_ceil(threads).max(1);
    let keep: Vec<bool> = std::thread::scope(|scope| {
        let handles: Vec<_> = samples
            .chunks(chunk)
            .map(|part| {
                scope.spawn(move || {
                    part.iter()
                        .map(|s| s.source.header_ok())
                        .collect::<Vec<bool>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_default())
            .collect::<Vec<bool>>()
    });
    let total = samples.len();
    let samples: Vec<ImageSample> = samples
        .into_iter()
        .zip(keep)
        .filter_map(|(s, ok)| ok.then_some(s))
        .collect();
    ImageSplit {
        skipped: total - samples.len(),
        samples,
    }
}

/// Whether `path` has an image file extension this crate decodes.
pub fn is_image_file(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| matches!(e.to_ascii_lowercase().as_str(), "jpg" | "jpeg" | "png"))
}

pub(crate) fn read_dir_sorted(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| TrainError::io("cannot list directory", dir, e))?;
    let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    Ok(paths)
}
