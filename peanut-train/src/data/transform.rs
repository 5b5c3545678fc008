//! The paper's image transforms: `RandomResizedCrop` + horizontal flip for training,
//! `Resize` + `CenterCrop` for evaluation, then per-channel mean/std normalization.

use image::imageops::{self, FilterType};
use image::{DynamicImage, RgbImage};
use serde::{Deserialize, Serialize};

use super::rng::SplitMix64;

/// Largest input side the command line accepts (`--image-size`): a ViT at 1024 pixels already
/// has 4096 patches of 16 pixels, and every pixel of a batch is held as f32 several times over.
pub const MAX_IMAGE_SIZE: u32 = 1024;

/// Per-channel normalization `(x / 255 − mean) / std`. Hugging Face ViT checkpoints use
/// mean = std = 0.5 ([`Normalization::VIT`]).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Normalization {
    /// Channel means, in `[0, 1]` pixel units.
    pub mean: [f32; 3],
    /// Channel standard deviations.
    pub std: [f32; 3],
}

impl Normalization {
    /// `google/vit-*` image processors: mean = std = 0.5.
    pub const VIT: Self = Self {
        mean: [0.5; 3],
        std: [0.5; 3],
    };
}

/// How an image becomes a `[channels, size, size]` tensor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Transform {
    /// torchvision's `RandomResizedCrop(size, scale, ratio)` then a horizontal flip with
    /// probability ½ when `flip`.
    Train {
        /// Output side in pixels.
        size: u32,
        /// Range of the crop's area as a fraction of the image (torchvision: 0.08..1).
        scale: (f64, f64),
        /// Range of the crop's aspect ratio (torchvision: 3/4..4/3).
        ratio: (f64, f64),
        /// Whether to flip horizontally at random.
        flip: bool,
    },
    /// `Resize(resize)` of the shorter side, then `CenterCrop(size)`.
    Eval {
        /// Length the shorter side is resized to.
        resize: u32,
        /// Output side in pixels.
        size: u32,
    },
    /// A transformers image processor's resize (PIL's filters) and center crop
    /// ([`Transform::processor`]).
    Processor {
        /// The resize target, when the processor resizes.
        resize: Option<peanut_models::vit::ResizeTo>,
        /// The resize filter.
        resample: peanut_models::vit::Resample,
        /// The center crop `(height, width)`, when one is taken.
        crop: Option<(u32, u32)>,
    },
}

impl Transform {
    /// The paper's training transform at `size` (torchvision defaults for scale and ratio).
    pub fn train(size: u32) -> Self {
        Self::Train {
            size,
            scale: (0.08, 1.0),
            ratio: (3.0 / 4.0, 4.0 / 3.0),
            flip: true,
        }
    }

    /// The paper's evaluation transform at `size`: resize to `size`, center-crop `size`.
    pub fn eval(size: u32) -> Self {
        Self::Eval { resize: size, size }
    }

    /// Output side in pixels.
    pub fn size(&self) -> u32 {
        match self {
            Self::Train { size, .. } | Self::Eval { size, .. } => *size,
            Self::Processor { resize, crop, .. } => match (crop, resize) {
                (Some((height, _)), _) => *height,
                (None, Some(peanut_models::vit::ResizeTo::Exact { height, .. })) => *height,
                (None, Some(peanut_models::vit::ResizeTo::ShortestEdge(side))) => *side,
                (None, None) => 0,
            },
        }
    }

    /// Applies the transform and normalization; returns `channels · size · size` values in
    /// channel-major order. `channels` is 1 (luma) or 3 (RGB); `rng` drives the random parts.
    pub fn apply(
        &self,
        image: &DynamicImage,
        channels: usize,
        normalization: &Normalization,
        rng: &mut SplitMix64,
    ) -> Vec<f32> {
        let rgb = image.to_rgb8();
        let out = match self {
            Self::Train {
                size,
                scale,
                ratio,
                flip,
            } => {
                let (x, y, w, h) = random_crop_box(rgb.width(), rgb.height(), *scale, *ratio, rng);
                let crop = imageops::crop_imm(&rgb, x, y, w, h).to_image();
                let mut out = resize_exact(&crop, *size, *size);
                if *flip && rng.next_f64() < 0.5 {
                    imageops::flip_horizontal_in_place(&mut out);
                }
                out
            }
            Self::Eval { resize, size } => {
                let (w, h) = (rgb.width(), rgb.height());
                let (rw, rh) = if w <= h {
                    (
                        *resize,
                        ((*resize as u64 * h as u64) / w.max(1) as u64).max(1) as u32,
                    )
                } else {
                    (
                        ((*resize as u64 * w as u64) / h.max(1) as u64).max(1) as u32,
                        *resize,
                    )
                };
                let resized = resize_exact(&rgb, rw, rh);
                center_crop(&resized, *size)
            }
            Self::Processor {
                resize,
                resample,
                crop,
            } => super::processor::apply_processor(&rgb, *resize, *resample, *crop),
        };
        to_tensor_values(&out, channels, normalization)
    }
}

fn resize_exact(image: &RgbImage, width: u32, height: u32) -> RgbImage {
    if image.width() == width && image.height() == height {
        image.clone()
    } else {
        imageops::resize(image, width, height, FilterType::Triangle)
    }
}

/// A `size × size` crop from the center, padding with black when the image is smaller.
fn center_crop(image: &RgbImage, size: u32) -> RgbImage {
    let (w, h) = (image.width(), image.height());
    if w >= size && h >= size {
        return imageops::crop_imm(image, (w - size) / 2, (h - size) / 2, size, size).to_image();
    }
    let mut out = RgbImage::new(size, size);
    let (dx, dy) = (size.saturating_sub(w) / 2, size.saturating_sub(h) / 2);
    let (sx, sy) = (w.saturating_sub(size) / 2, h.saturating_sub(size) / 2);
    let view = imageops::crop_imm(image, sx, sy, w.min(size), h.min(size)).to_image();
    imageops::overlay(&mut out, &view, dx as i64, dy as i64);
    out
}

/// torchvision's `RandomResizedCrop.get_params`: ten tries at a random area and aspect ratio,
/// then a central crop with the ratio clamped.
fn random_crop_box(
    width: u32,
    height: u32,
    scale: (f64, f64),
    ratio: (f64, f64),
    rng: &mut SplitMix64,
) -> (u32, u32, u32, u32) {
    let area = width as f64 * height as f64;
    let (log_lo, log_hi) = (ratio.0.ln(), ratio.1.ln());
    for _ in 0..10 {
        let target = area * rng.uniform(scale.0, scale.1);
        let aspect = rng.uniform(log_lo, log_hi).exp();
        let w = (target * aspect).sqrt().round() as u32;
        let h = (target / aspect).sqrt().round() as u32;
        if w > 0 && h > 0 && w <= width && h <= height {
            let x = rng.below((width - w + 1) as usize) as u32;
            let y = rng.below((height - h + 1) as usize) as u32;
            return (x, y, w, h);
        }
    }
    let in_ratio = width as f64 / height as f64;
    let (w, h) = if in_ratio < ratio.0 {
        (width, (width as f64 / ratio.0).round() as u32)
    } else if in_ratio > ratio.1 {
        ((height as f64 * ratio.1).round() as u32, height)
    } else {
        (width, height)
    };
    let (w, h) = (w.clamp(1, width), h.clamp(1, height));
    ((width - w) / 2, (height - h) / 2, w, h)
}

fn to_tensor_values(image: &RgbImage, channels: usize, norm: &Normalization) -> Vec<f32> {
    let plane = (image.width() * image.height()) as usize;
    let mut out = vec![0f32; channels * plane];
    for (i, pixel) in image.pixels().enumerate() {
        let [r, g, b] = pixel.0.map(|v| v as f32 / 255.0);
        if channels == 1 {
            let luma = 0.299 * r + 0.587 * g + 0.114 * b;
            out[i] = (luma - norm.mean[0]) / norm.std[0];
        } else {
            for (c, v) in [r, g, b].into_iter().enumerate().take(channels) {
                out[c * plane + i] = (v - norm.mean[c]) / norm.std[c];
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eval_resizes_shorter_side_then_center_crops() {
        // A 40×20 image whose left half is black and right half white.
        let image = RgbImage::from_fn(40, 20, |x, _| {
            if x < 20 {
                image::Rgb([0, 0, 0])
            } else {
                image::Rgb([255, 255, 255])
            }
        });
        let values = Transform::eval(10).apply(
            &DynamicImage::ImageRgb8(image),
            3,
            &Normalization::VIT,
            &mut SplitMix64::new(0),
        );
        assert_eq!(values.len(), 3 * 10 * 10);
        // Resized to 20×10, cropped to the central 10×10: left half −1, right half +1.
        assert!((values[0] + 1.0).abs() < 1e-6, "{}", values[0]);
        assert!((values[9] - 1.0).abs() < 1e-6, "{}", values[9]);
    }

    #[test]
    fn random_crop_stays_inside_and_depends_on_the_rng() {
        let mut rng = SplitMix64::new(7);
        let boxes: Vec<_> = (0..50)
            .map(|_| random_crop_box(64, 48, (0.08, 1.0), (0.75, 4.0 / 3.0), &mut rng))
            .collect();
        for &(x, y, w, h) in &boxes {
            assert!(x + w <= 64 && y + h <= 48 && w > 0 && h > 0);
        }
        assert!(boxes.iter().any(|b| *b != boxes[0]));
    }
}
