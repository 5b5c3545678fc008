//! Rotary position embeddings as transformers applies them (`rotate_half` convention).

use burn::tensor::{Tensor, TensorData, backend::Backend};

use super::config::{LlamaConfig, RopeScaling};

/// The inverse frequencies `θ^(−2i/d)` for `i < d/2`, rescaled as `config.rope_scaling` says.
pub fn inverse_frequencies(config: &LlamaConfig) -> Vec<f64> {
    let dim = config.head_dim();
    let base: Vec<f64> = (0..dim / 2)
        .map(|i| 1.0 / config.rope_theta.powf((2 * i) as f64 / dim as f64))
        .collect();
    match config.rope_scaling {
        None => base,
        Some(RopeScaling::Linear { factor }) => base.iter().map(|f| f / factor).collect(),
        Some(RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings,
        }) => {
            let context = original_max_position_embeddings as f64;
            let low_freq_wavelen = context / low_freq_factor;
            let high_freq_wavelen = context / high_freq_factor;
            base.iter()
                .map(|&freq| {
                    let wavelen = 2.0 * std::f64::consts::PI / freq;
                    if wavelen < high_freq_wavelen {
                        freq
                    } else if wavelen > low_freq_wavelen {
                        freq / factor
                    } else {
                        let smooth = (context / wavelen - low_freq_factor)
                            / (high_freq_factor - low_freq_factor);
                        (1.0 - smooth) * freq / factor + smooth * freq
                    }
                })
                .collect()
        }
    }
}

/// `cos` and `sin` of `position · frequency` for the columns `offset..offset + len` of each
/// sequence, each frequency repeated over both halves of the head. A sequence left-padded with
/// `pads[r]` tokens has its first real token at position 0: column `c` is position
/// `c − pads[r]` (0 for the padding itself). No `pads`: one unpadded row.
///
/// # Shapes
/// - output: `([rows, len, head_dim], [rows, len, head_dim])`, `rows = max(1, pads.len())`
pub fn rotary_tables<B: Backend>(
    inverse_frequencies: &[f64],
    offset: usize,
    len: usize,
    pads: &[usize],
    device: &B::Device,
) -> (Tensor<B, 3>, Tensor<B, 3>) {
    let half = inverse_frequencies.len();
    let rows = pads.len().max(1);
    let mut cos = Vec::with_capacity(rows * len * 2 * half);
    let mut sin = Vec::with_capacity(rows * len * 2 * half);
    for row in 0..rows {
        let pad = pads.get(row).copied().unwrap_or(0);
        for column in offset..offset + len {
            let position = column.saturating_sub(pad);
            for _ in 0..2 {
                for &freq in inverse_frequencies {
                    // transformers multiplies in float32.
                    let angle = (position as f32 * freq as f32) as f64;
                    cos.push(angle.cos() as f32);
                    sin.push(angle.sin() as f32);
                }
            }
        }
    }
    let shape = [rows, len, 2 * half];
    (
        Tensor::from_data(TensorData::new(cos, shape), device),
        Tensor::from_data(TensorData::new(sin, shape), device),
    )
}

/// `x·cos + rotate_half(x)·sin`, with `rotate_half([x₁, x₂]) = [−x₂, x₁]`.
///
/// # Shapes
/// - x: `[batch, heads, len, head_dim]`
/// - cos, sin: `[batch or 1, len, head_dim]`
/// - output: `[batch, heads, len, head_dim]`
pub fn apply_rotary<B: Backend>(
    x: Tensor<B, 4>,
    cos: &Tensor<B, 3>,
    sin: &Tensor<B, 3>,
) -> Tensor<B, 4> {
    let [_, _, _, dim] = x.dims();
    let half = dim / 2;
    let first = x.clone().narrow(3, 0, half);
    let second = x.clone().narrow(3, half, half);
    let rotated = Tensor::cat(vec![second.neg(), first], 3);
    x * cos.clone().unsqueeze_dim::<4>(1) + rotated * sin.clone().unsqueeze_dim::<4>(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llama3_scaling_keeps_high_divides_low_and_blends_between() {
        let config = LlamaConfig::new(8, 8, 8, 1, 1, 1)
            .with_head_dim(Some(8))
            .with_rope_scaling(Some(RopeScaling::Llama3 {
                factor: 4.0,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_max_position_embeddings: 16,
            }));
        let plain = inverse_frequencies(&config.clone().with_rope_scaling(None));
        let scaled = inverse_frequencies(&config);
        // Wavelengths 6.3 (blend), 62.8, 628, 6283 (all > 16: divided by 4).
        assert!(scaled[0] < plain[0] && scaled[0] > plain[0] / 4.0);
        for i in 1..4 {
            assert!((scaled[i] - plain[i] / 4.0).abs() < 1e-12);
        }
    }
}
