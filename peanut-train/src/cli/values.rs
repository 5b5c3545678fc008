//! Value parsers for numeric options, so an impossible value (`--batch-size 0`,
//! `--weight-decay NaN`, `--image-size 100000`) is refused by clap while parsing, naming the
//! option, before anything is loaded.

use clap::builder::RangedU64ValueParser;

use crate::data::transform::MAX_IMAGE_SIZE;

/// A count of at least 1 (`--batch-size`, `--epochs`, `--limit`, …).
pub fn at_least_one() -> RangedU64ValueParser<usize> {
    RangedU64ValueParser::<usize>::new().range(1..)
}

/// An image side in pixels, `1..=`[`MAX_IMAGE_SIZE`].
pub fn image_size() -> RangedU64ValueParser<u32> {
    RangedU64ValueParser::<u32>::new().range(1..=u64::from(MAX_IMAGE_SIZE))
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
    }
}
