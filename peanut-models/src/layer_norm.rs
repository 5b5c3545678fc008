//! [`LayerNorm`] with Hugging Face's parameter names (`weight`, `bias`).

use burn::config::Config;
use burn::module::{Module, Param};
use burn::tensor::{Tensor, backend::Backend};

/// Configuration of a [`LayerNorm`].
#[derive(Config, Debug)]
pub struct LayerNormConfig {
    /// Width of the normalized (last) dimension.
    pub d_model: usize,
    /// Added to the variance before the square root (`layer_norm_eps` in `config.json`).
    #[config(default = 1e-12)]
    pub epsilon: f64,
}

impl LayerNormConfig {
    /// A layer norm with `weight = 1`, `bias = 0`.
    pub fn init<B: Backend>(&self, device: &B::Device) -> LayerNorm<B> {
        LayerNorm {
            weight: Param::from_tensor(Tensor::ones([self.d_model], device)),
            bias: Param::from_tensor(Tensor::zeros([self.d_model], device)),
            epsilon: self.epsilon,
        }
    }
}

/// Layer normalization over the last dimension:
/// `y = (x − mean(x)) / √(var(x) + ε) · weight + bias` (biased variance, as PyTorch).
///
/// Unlike burn's `LayerNorm` (`gamma`, `beta`) the fields carry the checkpoint names.
#[derive(Module, Debug)]
pub struct LayerNorm<B: Backend> {
    /// Scale, `[d_model]`.
    pub weight: Param<Tensor<B, 1>>,
    /// Shift, `[d_model]`.
    pub bias: Param<Tensor<B, 1>>,
    /// The ε of the denominator.
    #[module(skip)]
    pub epsilon: f64,
}

impl<B: Backend> LayerNorm<B> {
    /// Normalizes the last dimension.
    ///
    /// # Shapes
    /// - x: `[..., d_model]`
    /// - output: `[..., d_model]`
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let (var, mean) = x.clone().var_mean_bias(D - 1);
        let normalized = (x - mean).div((var + self.epsilon).sqrt());
        normalized * self.weight.val().unsqueeze() + self.bias.val().unsqueeze()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::NdArray;

    type TestBackend = NdArray<f32>;

    #[test]
    fn normalizes_to_zero_mean_unit_variance() {
        let device = Default::default();
        let norm = LayerNormConfig::new(4)
            .with_epsilon(0.0)
            .init::<TestBackend>(&device);
        let x = Tensor::<TestBackend, 2>::from_floats([[1.0, 2.0, 3.0, 4.0]], &device);
        let y: Vec<f32> = norm.forward(x).into_data().to_vec().unwrap();
        // mean 2.5, biased variance 1.25.
        let want = [-1.5, -0.5, 0.5, 1.5].map(|v: f32| v / 1.25f32.sqrt());
        for (got, want) in y.iter().zip(want) {
            assert!((got - want).abs() < 1e-6, "{got} vs {want}");
        }
    }
}
