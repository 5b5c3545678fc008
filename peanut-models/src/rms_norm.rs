//! [`RmsNorm`], the LLaMA normalization, with the checkpoint's parameter name (`weight`).

use burn::config::Config;
use burn::module::{Module, Param};
use burn::tensor::{Tensor, backend::Backend};

/// Configuration of an [`RmsNorm`].
#[derive(Config, Debug)]
pub struct RmsNormConfig {
    /// Width of the normalized (last) dimension.
    pub d_model: usize,
    /// Added to the mean square (`rms_norm_eps` in `config.json`).
    #[config(default = 1e-6)]
    pub epsilon: f64,
}

impl RmsNormConfig {
    /// An RMS norm with `weight = 1`.
    pub fn init<B: Backend>(&self, device: &B::Device) -> RmsNorm<B> {
        RmsNorm {
            weight: Param::from_tensor(Tensor::ones([self.d_model], device)),
            epsilon: self.epsilon,
        }
    }
}

/// Root-mean-square normalization: `y = x / √(mean(x²) + ε) · weight`.
#[derive(Module, Debug)]
pub struct RmsNorm<B: Backend> {
    /// Scale, `[d_model]`.
    pub weight: Param<Tensor<B, 1>>,
    /// The ε under the root.
    #[module(skip)]
    pub epsilon: f64,
}

impl<B: Backend> RmsNorm<B> {
    /// Normalizes the last dimension.
    ///
    /// # Shapes
    /// - x: `[..., d_model]`
    /// - output: `[..., d_model]`
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        crate::ops::rms_norm(x, self.weight.val(), self.epsilon)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::NdArray;

    type TestBackend = NdArray<f32>;

    #[test]
    fn divides_by_the_root_mean_square() {
        let device = Default::default();
        let norm = RmsNormConfig::new(2)
            .with_epsilon(0.0)
            .init::<TestBackend>(&device);
        let x = Tensor::<TestBackend, 2>::from_floats([[3.0, 4.0]], &device);
        let y: Vec<f32> = norm.forward(x).into_data().to_vec().unwrap();
        let rms = 12.5f32.sqrt();
        assert!((y[0] - 3.0 / rms).abs() < 1e-6 && (y[1] - 4.0 / rms).abs() < 1e-6);
    }
}
