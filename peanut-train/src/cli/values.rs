//! Value parsers for numeric options, so an impossible value (`--batch-size 0`,
//! `--weight-decay NaN`, `--image-size 100000`) is refused by clap while parsing, naming the
//! option, before anything is loaded.

use crate::data::transform::MAX_IMAGE_SIZE;

/// A count of at least 1 (`--batch-size`, `--epochs`, `--limit`, …).
pub fn at_least_one(text: &str) -> Result<usize, String> {
    let value: i128 = text
        .trim()
        .parse()
        .map_err(|_| format!("`{text}` is not a whole number"))?;
    if value < 1 {
        return Err(format!("must be at least 1, got {value}"));
    }
    usize::try_from(value).map_err(|_| format!("{value} is too large"))
}

/// An image side in pixels, `1..=`[`MAX_IMAGE_SIZE`].
pub fn image_size(text: &str) -> Result<u32, String> {
    let value: u64 = text
        .trim()
        .parse()
        .map_err(|_| format!("`{text}` is not a whole number of pixels"))?;
    if (1..=u64::from(MAX_IMAGE_SIZE)).contains(&value) {
        Ok(value as u32)
    } else {
        Err(format!(
            "must be between 1 and {MAX_IMAGE_SIZE} pixels, got {value}"
        ))
    }
}

fn finite(text: &str) -> Result<f64, String> {
    let value: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("`{text}` is not a number"))?;
    if value.is_finite() {
        Ok(value)
    } else {
        Err(format!("`{text}` is not a finite number"))
    }
}

/// A finite number above 0 (learning rates, `--lora-alpha`).
pub fn positive_f64(text: &str) -> Result<f64, String> {
    let value = finite(text)?;
    if value > 0.0 {
        Ok(value)
    } else {
        Err(format!("must be above 0, got {value}"))
    }
}

/// A finite number of at least 0 (`--weight-decay`).
pub fn non_negative_f64(text: &str) -> Result<f64, String> {
    let value = finite(text)?;
    if value >= 0.0 {
        Ok(value)
    } else {
        Err(format!("must be 0 or more, got {value}"))
    }
}

/// A `--quantize` value: `int8` or `nf4`.
pub fn quantization(text: &str) -> Result<peanut::Quantization, String> {
    peanut::Quantization::from_name(text.trim())
        .ok_or_else(|| format!("`{text}` is not a quantization: use int8 or nf4"))
}

/// A `--precision` value: `f32`, `f16` or `bf16` (or transformers' `float32`, `float16`,
/// `bfloat16`).
pub fn precision(text: &str) -> Result<peanut::Precision, String> {
    peanut::Precision::from_name(text.trim())
        .ok_or_else(|| format!("`{text}` is not a precision: use f32, f16 or bf16"))
}

/// A `--devices` value: `auto`, a count (`2`) or a list (`cuda:0,1`, `wgpu:0,1`, `cpu:2`).
pub fn devices(text: &str) -> Result<crate::train::DeviceSpec, String> {
    text.parse()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_must_be_finite_and_in_range() {
        assert_eq!(positive_f64("0.5"), Ok(0.5));
        assert_eq!(non_negative_f64("0"), Ok(0.0));
        for bad in ["NaN", "nan", "inf", "-inf", "x", "", "0", "-1e-3"] {
            assert!(positive_f64(bad).is_err(), "{bad}");
        }
        for bad in ["NaN", "inf", "-0.1", "1e400"] {
            assert!(non_negative_f64(bad).is_err(), "{bad}");
        }
        assert_eq!(at_least_one("3"), Ok(3));
        assert!(at_least_one("0").unwrap_err().contains("at least 1"));
        assert!(at_least_one("-1").unwrap_err().contains("at least 1"));
        assert!(at_least_one("x").is_err());
        assert_eq!(image_size("1024"), Ok(1024));
        for bad in ["0", "1025", "100000", "99999999999999999999"] {
            assert!(image_size(bad).is_err(), "{bad}");
        }
    }
}
