//! [`ImageProcessorConfig`]: how a checkpoint wants its images prepared, read from transformers'
//! `preprocessor_config.json`.
//!
//! transformers' image processors for ViT-style models (`ViTImageProcessor`,
//! `BeitImageProcessor`, `BitImageProcessor` as DINOv2 uses it, `DeiTImageProcessor`,
//! `CLIPImageProcessor`) all apply the same steps, each switched by a flag:
//!
//! 1. `do_resize`: resize to `size`, either exactly (`{"height", "width"}`) or so that the
//!    shorter side becomes `{"shortest_edge"}` with the aspect ratio kept (the longer side
//!    truncated to an integer), with the PIL filter `resample`;
//! 2. `do_center_crop`: crop `crop_size` (`{"height", "width"}`) from the center, padding with
//!    zeros where the image is smaller;
//! 3. `do_rescale`: multiply the 0–255 pixel values by `rescale_factor` (1/255);
//! 4. `do_normalize`: subtract `image_mean` and divide by `image_std`, per channel.
//!
//! This type holds those choices; the pixel work lives with the data pipeline.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result};
use peanut::io::read_json;

/// Name of transformers' image processor file in a model directory.
pub const PREPROCESSOR_FILE: &str = "preprocessor_config.json";

/// A resampling filter, numbered as PIL numbers them (the `resample` field).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Resample {
    /// Nearest neighbour (PIL 0).
    Nearest,
    /// Lanczos, 3 lobes (PIL 1).
    Lanczos,
    /// Bilinear / triangle (PIL 2).
    Bilinear,
    /// Bicubic, a = −0.5 (PIL 3).
    Bicubic,
    /// Box (PIL 4).
    Box,
    /// Hamming (PIL 5).
    Hamming,
}

impl Resample {
    /// The filter PIL numbers `code`.
    pub fn from_pil(code: u64) -> Option<Self> {
        Some(match code {
            0 => Self::Nearest,
            1 => Self::Lanczos,
            2 => Self::Bilinear,
            3 => Self::Bicubic,
            4 => Self::Box,
            5 => Self::Hamming,
            _ => return None,
        })
    }
}

/// The resize step's target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResizeTo {
    /// Exactly `height × width` pixels (aspect ratio not kept).
    Exact {
        /// Rows.
        height: u32,
        /// Columns.
        width: u32,
    },
    /// The shorter side becomes this many pixels; the longer keeps the aspect ratio.
    ShortestEdge(u32),
}

impl ResizeTo {
    /// The `(height, width)` an image of `(height, width)` is resized to.
    pub fn output_size(&self, height: u32, width: u32) -> (u32, u32) {
        match *self {
            Self::Exact { height, width } => (height, width),
            Self::ShortestEdge(short) => {
                let (h, w) = (height.max(1) as u64, width.max(1) as u64);
                let short = short as u64;
                if w <= h {
                    (((short * h) / w).max(1) as u32, short as u32)
                } else {
                    (short as u32, ((short * w) / h).max(1) as u32)
                }
            }
        }
    }
}

/// How images are prepared for a model: the fields of transformers' `preprocessor_config.json`
/// that ViT-style processors use (see the module documentation for the order of the steps).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageProcessorConfig {
    /// Whether to resize.
    pub do_resize: bool,
    /// The resize target.
    pub size: ResizeTo,
    /// The resize filter.
    pub resample: Resample,
    /// The center crop `(height, width)`, when one is taken.
    pub crop_size: Option<(u32, u32)>,
    /// The factor 0–255 pixel values are multiplied by (1 when `do_rescale` is off).
    pub rescale_factor: f32,
    /// Per-channel mean subtracted after rescaling (0 when `do_normalize` is off).
    pub image_mean: [f32; 3],
    /// Per-channel divisor after the mean (1 when `do_normalize` is off).
    pub image_std: [f32; 3],
}

impl ImageProcessorConfig {
    /// The default of transformers' `ViTImageProcessor` (the `google/vit-*` checkpoints) at
    /// `image_size`: bilinear resize to `image_size²`, rescale by 1/255, mean = std = 0.5.
    pub fn vit(image_size: u32) -> Self {
        Self {
            do_resize: true,
            size: ResizeTo::Exact {
                height: image_size,
                width: image_size,
            },
            resample: Resample::Bilinear,
            crop_size: None,
            rescale_factor: 1.0 / 255.0,
            image_mean: [0.5; 3],
            image_std: [0.5; 3],
        }
    }

    /// The side of the square image the model receives, or `None` when the steps do not give
    /// a fixed square (a shortest-edge resize without a square crop, or no resize at all).
    pub fn output_side(&self) -> Option<u32> {
        let (height, width) = match (self.crop_size, self.do_resize, self.size) {
            (Some(crop), _, _) => crop,
            (None, true, ResizeTo::Exact { height, width }) => (height, width),
            _ => return None,
        };
        (height == width).then_some(height)
    }

    /// Makes the model see `side × side` images: the resize target (and the crop, keeping the
    /// resize's margin around it) scaled to `side` — the `--image-size` override.
    pub fn with_side(mut self, side: u32) -> Self {
        let old = self.output_side().unwrap_or(side).max(1);
        let scale = |v: u32| ((v as u64 * side as u64) / old as u64).max(1) as u32;
        self.do_resize = true;
        self.size = match (self.crop_size, self.size) {
            (Some(_), ResizeTo::Exact { height, width }) => ResizeTo::Exact {
                height: scale(height),
                width: scale(width),
            },
            (Some(_), ResizeTo::ShortestEdge(short)) => ResizeTo::ShortestEdge(scale(short)),
            (None, _) => ResizeTo::Exact {
                height: side,
                width: side,
            },
        };
        if self.crop_size.is_some() {
            self.crop_size = Some((side, side));
        }
        self
    }

    /// Reads a `preprocessor_config.json`. Missing fields take the defaults of transformers'
    /// `ViTImageProcessor` (224², bilinear, 1/255, mean = std = 0.5, no crop).
    ///
    /// # Errors
    /// The file does not read or parse, or a field holds a value no processor accepts (an
    /// unknown filter, a zero size, a zero standard deviation, a `size` without
    /// `height`/`width` or `shortest_edge`); the error names the file and field.
    pub fn from_file(path: &Path) -> Result<Self> {
        let file: ProcessorFile = read_json(path)?;
        let invalid = |field: &'static str, reason: String| ModelError::InvalidConfig {
            path: Some(path.to_path_buf()),
            field,
            reason,
        };
        let size = match &file.size {
            None => ResizeTo::Exact {
                height: 224,
                width: 224,
            },
            Some(size) => parse_size(size).ok_or_else(|| {
                invalid(
                    "size",
                    format!("must be a number, {{\"height\", \"width\"}} or {{\"shortest_edge\"}}, got {size}"),
                )
            })?,
        };
        let resample = match file.resample {
            None => Resample::Bilinear,
            Some(code) => Resample::from_pil(code).ok_or_else(|| {
                invalid("resample", format!("must be a PIL filter 0–5, got {code}"))
            })?,
        };
        let crop_size = match (file.do_center_crop.unwrap_or(false), &file.crop_size) {
            (false, _) => None,
            (true, None) => Some((224, 224)),
            (true, Some(crop)) => match parse_size(crop) {
                Some(ResizeTo::Exact { height, width }) => Some((height, width)),
                _ => {
                    return Err(invalid(
                        "crop_size",
                        format!("must be a number or {{\"height\", \"width\"}}, got {crop}"),
                    ));
                }
            },
        };
        let channels = |value: &Option<serde_json::Value>, field, default: f32| match value {
            None => Ok([default; 3]),
            Some(serde_json::Value::Number(n)) => Ok([n.as_f64().unwrap_or(0.0) as f32; 3]),
            Some(serde_json::Value::Array(items))
                if items.len() == 3 && items.iter().all(serde_json::Value::is_number) =>
            {
                let mut out = [0f32; 3];
                for (slot, item) in out.iter_mut().zip(items) {
                    *slot = item.as_f64().unwrap_or(0.0) as f32;
                }
                Ok(out)
            }
            Some(other) => Err(invalid(field, format!("must be 3 numbers, got {other}"))),
        };
        let do_normalize = file.do_normalize.unwrap_or(true);
        let (image_mean, image_std) = if do_normalize {
            (
                channels(&file.image_mean, "image_mean", 0.5)?,
                channels(&file.image_std, "image_std", 0.5)?,
            )
        } else {
            ([0.0; 3], [1.0; 3])
        };
        if image_std.iter().any(|s| *s == 0.0 || !s.is_finite())
            || image_mean.iter().any(|m| !m.is_finite())
        {
            return Err(invalid(
                "image_std",
                format!("must be finite and non-zero (mean {image_mean:?}, std {image_std:?})"),
            ));
        }
        let rescale_factor = if file.do_rescale.unwrap_or(true) {
            file.rescale_factor.unwrap_or(1.0 / 255.0) as f32
        } else {
            1.0
        };
        if !rescale_factor.is_finite() || rescale_factor <= 0.0 {
            return Err(invalid(
                "rescale_factor",
                format!("must be positive, got {rescale_factor}"),
            ));
        }
        let config = Self {
            do_resize: file.do_resize.unwrap_or(true),
            size,
            resample,
            crop_size,
            rescale_factor,
            image_mean,
            image_std,
        };
        let zero = match (config.size, config.crop_size) {
            (ResizeTo::Exact { height, width }, _) if height == 0 || width == 0 => true,
            (ResizeTo::ShortestEdge(0), _) => true,
            (_, Some((h, w))) => h == 0 || w == 0,
            _ => false,
        };
        if zero {
            return Err(invalid("size", "sizes must be positive".into()));
        }
        Ok(config)
    }

    /// The processor of the model directory `dir`: its `preprocessor_config.json`, or — when
    /// the file is absent — `fallback`, with a note saying so for the caller to show.
    ///
    /// # Errors
    /// The file exists but does not read or parse ([`ImageProcessorConfig::from_file`]).
    pub fn from_model_dir(dir: &Path, fallback: Self) -> Result<(Self, Option<String>)> {
        let path = dir.join(PREPROCESSOR_FILE);
        if path.is_file() {
            return Ok((Self::from_file(&path)?, None));
        }
        let note = format!(
            "no `{PREPROCESSOR_FILE}` in `{}`: using the ViT default (resize to {:?}, mean {:?}, \
             std {:?})",
            dir.display(),
            fallback.size,
            fallback.image_mean,
            fallback.image_std
        );
        Ok((fallback, Some(note)))
    }

    /// The processor as transformers writes it (`ViTImageProcessor` fields), for a merged
    /// checkpoint's `preprocessor_config.json`.
    pub fn to_hf_json(&self) -> serde_json::Value {
        let code = match self.resample {
            Resample::Nearest => 0,
            Resample::Lanczos => 1,
            Resample::Bilinear => 2,
            Resample::Bicubic => 3,
            Resample::Box => 4,
            Resample::Hamming => 5,
        };
        let size = match self.size {
            ResizeTo::Exact { height, width } => {
                serde_json::json!({"height": height, "width": width})
            }
            ResizeTo::ShortestEdge(short) => serde_json::json!({"shortest_edge": short}),
        };
        let mut json = serde_json::json!({
            "image_processor_type": if self.crop_size.is_some() { "BitImageProcessor" } else { "ViTImageProcessor" },
            "do_resize": self.do_resize,
            "size": size,
            "resample": code,
            "do_rescale": true,
            "rescale_factor": self.rescale_factor,
            "do_normalize": true,
            "image_mean": self.image_mean,
            "image_std": self.image_std,
        });
        if let Some((height, width)) = self.crop_size {
            json["do_center_crop"] = true.into();
            json["crop_size"] = serde_json::json!({"height": height, "width": width});
        }
        json
    }
}

/// A transformers `size` / `crop_size` value: a number (square), `{"height", "width"}` or
/// `{"shortest_edge"}`.
fn parse_size(value: &serde_json::Value) -> Option<ResizeTo> {
    let get = |key: &str| value.get(key).and_then(serde_json::Value::as_u64);
    if let Some(side) = value.as_u64() {
        let side = u32::try_from(side).ok()?;
        return Some(ResizeTo::Exact {
            height: side,
            width: side,
        });
    }
    if let (Some(height), Some(width)) = (get("height"), get("width")) {
        return Some(ResizeTo::Exact {
            height: u32::try_from(height).ok()?,
            width: u32::try_from(width).ok()?,
        });
    }
    if value.get("longest_edge").is_some() {
        // `shortest_edge` capped by `longest_edge` is not a ViT-style resize.
        return None;
    }
    get("shortest_edge")
        .and_then(|s| u32::try_from(s).ok())
        .map(ResizeTo::ShortestEdge)
}

#[derive(Deserialize)]
struct ProcessorFile {
    do_resize: Option<bool>,
    size: Option<serde_json::Value>,
    resample: Option<u64>,
    do_center_crop: Option<bool>,
    crop_size: Option<serde_json::Value>,
    do_rescale: Option<bool>,
    rescale_factor: Option<f64>,
    do_normalize: Option<bool>,
    image_mean: Option<serde_json::Value>,
    image_std: Option<serde_json::Value>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(name: &str, json: &str) -> std::path::PathBuf {
        let dir =
            std::env::temp_dir().join(format!("peanut-preprocess-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(PREPROCESSOR_FILE);
        std::fs::write(&path, json).unwrap();
        path
    }

    #[test]
    fn reads_dinov2_style_processors() {
        let path = write(
            "dino",
            r#"{"do_resize": true, "size": {"shortest_edge": 256}, "resample": 3,
                "do_center_crop": true, "crop_size": {"height": 224, "width": 224},
                "do_rescale": true, "rescale_factor": 0.00392156862745098,
                "do_normalize": true, "image_mean": [0.485, 0.456, 0.406],
                "image_std": [0.229, 0.224, 0.225]}"#,
        );
        let config = ImageProcessorConfig::from_file(&path).unwrap();
        assert_eq!(config.size, ResizeTo::ShortestEdge(256));
        assert_eq!(config.resample, Resample::Bicubic);
        assert_eq!(config.crop_size, Some((224, 224)));
        assert_eq!(config.image_mean, [0.485, 0.456, 0.406]);
        assert_eq!(config.output_side(), Some(224));
        // 500×375 (w×h): the shorter side (height) becomes 256, the width int(256·500/375).
        assert_eq!(config.size.output_size(375, 500), (256, 341));
        // --image-size 112 halves the resize and the crop.
        let small = config.with_side(112);
        assert_eq!(
            (small.size, small.crop_size),
            (ResizeTo::ShortestEdge(128), Some((112, 112)))
        );
    }

    #[test]
    fn defaults_flags_and_errors() {
        let path = write("empty", "{}");
        assert_eq!(
            ImageProcessorConfig::from_file(&path).unwrap(),
            ImageProcessorConfig::vit(224)
        );
        let path = write(
            "off",
            r#"{"do_normalize": false, "do_rescale": false, "size": 32}"#,
        );
        let config = ImageProcessorConfig::from_file(&path).unwrap();
        assert_eq!(
            (config.image_mean, config.image_std, config.rescale_factor),
            ([0.0; 3], [1.0; 3], 1.0)
        );
        assert_eq!(config.output_side(), Some(32));
        for (name, json, field) in [
            ("resample", r#"{"resample": 9}"#, "resample"),
            ("std", r#"{"image_std": [0.5, 0, 0.5]}"#, "image_std"),
            ("size", r#"{"size": {"longest_edge": 3}}"#, "size"),
            ("zero", r#"{"size": 0}"#, "size"),
        ] {
            let err = ImageProcessorConfig::from_file(&write(name, json)).unwrap_err();
            assert!(
                matches!(&err, ModelError::InvalidConfig { field: f, .. } if *f == field),
                "{name}: {err}"
            );
        }
        let err = ImageProcessorConfig::from_file(&write("json", "{")).unwrap_err();
        assert!(
            matches!(err, ModelError::File(peanut::FileError::Json { .. })),
            "{err}"
        );
        let (fallback, note) = ImageProcessorConfig::from_model_dir(
            Path::new("/nonexistent"),
            ImageProcessorConfig::vit(16),
        )
        .unwrap();
        assert_eq!(fallback, ImageProcessorConfig::vit(16));
        assert!(note.unwrap().contains(PREPROCESSOR_FILE));
    }
}
