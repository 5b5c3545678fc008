//! The pixel side of a transformers image processor ([`ImageProcessorConfig`]): resizing with
//! PIL's filters, computed the way PIL computes them (separable passes, horizontal first, with
//! 8-bit fixed-point weights and rounding to 8 bits between the passes), and transformers'
//! center crop. With these, an image prepared here equals — up to float rounding of the
//! normalization — what transformers' PIL image processor produces from the same file.

use image::RgbImage;
use peanut_models::vit::{ImageProcessorConfig, Resample, ResizeTo};

use super::transform::{Normalization, Transform};

impl Normalization {
    /// The rescale and normalize steps of `config` as one affine map per channel: transformers
    /// computes `(p · rescale_factor − mean) / std` from 0–255 values `p`, which equals
    /// `(p / 255 − mean') / std'` with `mean' = mean / (255 · rescale_factor)` and
    /// `std' = std / (255 · rescale_factor)`.
    pub fn from_processor(config: &ImageProcessorConfig) -> Self {
        let unit = 255.0 * config.rescale_factor;
        Self {
            mean: config.image_mean.map(|m| m / unit),
            std: config.image_std.map(|s| s / unit),
        }
    }
}

impl Transform {
    /// The resize and center crop of a transformers image processor (no randomness).
    pub fn processor(config: &ImageProcessorConfig) -> Self {
        Self::Processor {
            resize: config.do_resize.then_some(config.size),
            resample: config.resample,
            crop: config.crop_size,
        }
    }
}

/// Resizes to the processor's target and center-crops, as transformers does.
pub(crate) fn apply_processor(
    image: &RgbImage,
    resize: Option<ResizeTo>,
    resample: Resample,
    crop: Option<(u32, u32)>,
) -> RgbImage {
    let resized = match resize {
        Some(target) => {
            let (height, width) = target.output_size(image.height(), image.width());
            resize_pil(image, width, height, resample)
        }
        None => image.clone(),
    };
    match crop {
        Some((height, width)) => center_crop_hf(&resized, height, width),
        None => resized,
    }
}

/// Bits of the fixed-point weights of PIL's 8-bit resampling.
const PRECISION_BITS: u32 = 32 - 8 - 2;

fn filter_support(filter: Resample) -> f64 {
    match filter {
        Resample::Nearest | Resample::Box => 0.5,
        Resample::Bilinear | Resample::Hamming => 1.0,
        Resample::Bicubic => 2.0,
        Resample::Lanczos => 3.0,
    }
}

fn sinc(x: f64) -> f64 {
    if x == 0.0 {
        1.0
    } else {
        let x = x * std::f64::consts::PI;
        x.sin() / x
    }
}

fn filter_weight(filter: Resample, x: f64) -> f64 {
    match filter {
        Resample::Nearest | Resample::Box => {
            if x > -0.5 && x <= 0.5 {
                1.0
            } else {
                0.0
            }
        }
        Resample::Bilinear => {
            let x = x.abs();
            if x < 1.0 { 1.0 - x } else { 0.0 }
        }
        Resample::Hamming => {
            let x = x.abs();
            if x == 0.0 {
                1.0
            } else if x >= 1.0 {
                0.0
            } else {
                let x = x * std::f64::consts::PI;
                x.sin() / x * (0.54f32 as f64 + 0.46f32 as f64 * x.cos())
            }
        }
        Resample::Bicubic => {
            let a = -0.5;
            let x = x.abs();
            if x < 1.0 {
                ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
            } else if x < 2.0 {
                (((x - 5.0) * x + 8.0) * x - 4.0) * a
            } else {
                0.0
            }
        }
        Resample::Lanczos => {
            if (-3.0..3.0).contains(&x) {
                sinc(x) * sinc(x / 3.0)
            } else {
                0.0
            }
        }
    }
}

/// Per output pixel: the first input pixel and the fixed-point weights of the inputs from it.
fn coefficients(in_size: u32, out_size: u32, filter: Resample) -> Vec<(usize, Vec<i64>)> {
    let scale = in_size as f64 / out_size as f64;
    let filter_scale = scale.max(1.0);
    let support = filter_support(filter) * filter_scale;
    (0..out_size)
        .map(|out| {
            let center = (out as f64 + 0.5) * scale;
            let min = ((center - support + 0.5) as i64).max(0) as usize;
            let max = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
            let weights: Vec<f64> = (min..max.max(min))
                .map(|x| filter_weight(filter, (x as f64 - center + 0.5) / filter_scale))
                .collect();
            let total: f64 = weights.iter().sum();
            let one = (1i64 << PRECISION_BITS) as f64;
            let fixed = weights
                .iter()
                .map(|w| {
                    let w = if total != 0.0 { w / total } else { *w };
                    if w < 0.0 {
                        (-0.5 + w * one) as i64
                    } else {
                        (0.5 + w * one) as i64
                    }
                })
                .collect();
            (min, fixed)
        })
        .collect()
}

fn clip8(value: i64) -> u8 {
    (value >> PRECISION_BITS).clamp(0, 255) as u8
}

/// One separable pass along the rows (`horizontal`) or the columns.
fn resample_pass(image: &RgbImage, out_size: u32, filter: Resample, horizontal: bool) -> RgbImage {
    let (width, height) = image.dimensions();
    let in_size = if horizontal { width } else { height };
    let coefficients = coefficients(in_size, out_size, filter);
    let (out_width, out_height) = if horizontal {
        (out_size, height)
    } else {
        (width, out_size)
    };
    let mut out = RgbImage::new(out_width, out_height);
    for y in 0..out_height {
        for x in 0..out_width {
            let (along, (min, weights)) = if horizontal {
                (y, &coefficients[x as usize])
            } else {
                (x, &coefficients[y as usize])
            };
            let mut sums = [1i64 << (PRECISION_BITS - 1); 3];
            for (offset, weight) in weights.iter().enumerate() {
                let source = (min + offset) as u32;
                let pixel = if horizontal {
                    image.get_pixel(source, along)
                } else {
                    image.get_pixel(along, source)
                };
                for (sum, channel) in sums.iter_mut().zip(pixel.0) {
                    *sum += channel as i64 * weight;
                }
            }
            out.put_pixel(x, y, image::Rgb(sums.map(clip8)));
        }
    }
    out
}

/// PIL's nearest-neighbour resize: each output pixel takes the input pixel under its center.
fn resize_nearest(image: &RgbImage, width: u32, height: u32) -> RgbImage {
    let (in_width, in_height) = image.dimensions();
    let source = |out: u32, out_size: u32, in_size: u32| {
        let scale = in_size as f64 / out_size as f64;
        (((out as f64 + 0.5) * scale) as u32).min(in_size - 1)
    };
    RgbImage::from_fn(width, height, |x, y| {
        *image.get_pixel(source(x, width, in_width), source(y, height, in_height))
    })
}

/// `image.resize((width, height), resample)` as PIL computes it for 8-bit RGB images.
pub fn resize_pil(image: &RgbImage, width: u32, height: u32, filter: Resample) -> RgbImage {
    let (width, height) = (width.max(1), height.max(1));
    if image.width() == 0 || image.height() == 0 {
        return RgbImage::new(width, height);
    }
    if filter == Resample::Nearest {
        return resize_nearest(image, width, height);
    }
    let mut out = image.clone();
    if out.width() != width {
        out = resample_pass(&out, width, filter, true);
    }
    if out.height() != height {
        out = resample_pass(&out, height, filter, false);
    }
    out
}

/// transformers' `center_crop`: the central `height × width` window (offsets rounded down);
/// a smaller image is first padded with zeros, placed at offsets rounded up.
fn center_crop_hf(image: &RgbImage, height: u32, width: u32) -> RgbImage {
    let (in_width, in_height) = image.dimensions();
    let pad_top = height.saturating_sub(in_height).div_ceil(2) as i64;
    let pad_left = width.saturating_sub(in_width).div_ceil(2) as i64;
    let (padded_height, padded_width) = (in_height.max(height) as i64, in_width.max(width) as i64);
    let top = (padded_height - height as i64).div_euclid(2);
    let left = (padded_width - width as i64).div_euclid(2);
    RgbImage::from_fn(width, height, |x, y| {
        let source_x = left + x as i64 - pad_left;
        let source_y = top + y as i64 - pad_top;
        if (0..in_width as i64).contains(&source_x) && (0..in_height as i64).contains(&source_y) {
            *image.get_pixel(source_x as u32, source_y as u32)
        } else {
            image::Rgb([0, 0, 0])
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_sum_to_one_and_identity_sizes_are_kept() {
        for filter in [
            Resample::Bilinear,
            Resample::Bicubic,
            Resample::Lanczos,
            Resample::Box,
            Resample::Hamming,
        ] {
            for (from, to) in [(500u32, 224u32), (7, 19), (375, 256)] {
                for (_, weights) in coefficients(from, to, filter) {
                    let total: i64 = weights.iter().sum();
                    assert!((total - (1 << PRECISION_BITS)).abs() <= weights.len() as i64);
                }
            }
        }
        let image = RgbImage::from_fn(9, 5, |x, y| image::Rgb([x as u8 * 20, y as u8 * 40, 7]));
        assert_eq!(resize_pil(&image, 9, 5, Resample::Bicubic), image);
        // A constant image stays constant under every filter.
        let flat = RgbImage::from_pixel(31, 17, image::Rgb([200, 10, 99]));
        let out = resize_pil(&flat, 12, 40, Resample::Bicubic);
        assert!(out.pixels().all(|p| p.0 == [200, 10, 99]));
    }

    #[test]
    fn center_crop_pads_like_transformers() {
        let image = RgbImage::from_fn(4, 3, |x, y| image::Rgb([1 + x as u8, 1 + y as u8, 0]));
        let crop = center_crop_hf(&image, 2, 2);
        assert_eq!(crop.get_pixel(0, 0).0, [2, 1, 0]);
        // 3 rows into 6: one padding row above rounded up to 2, then the image.
        let padded = center_crop_hf(&image, 6, 4);
        assert_eq!(padded.get_pixel(0, 1).0, [0, 0, 0]);
        assert_eq!(padded.get_pixel(0, 2).0, [1, 1, 0]);
        assert_eq!(padded.get_pixel(0, 5).0, [0, 0, 0]);
    }
}
