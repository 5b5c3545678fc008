//! The LoRA baseline adapter.

use burn::module::{Module, Param};
use burn::tensor::{Tensor, backend::Backend, module::linear};

use crate::config::{LoraConfig, OutputInit};
use crate::init::{SeededRng, kaiming_uniform};

/// A LoRA adapter: `ΔW = s·A·B` with `A: [d_input, rank]`, `B: [rank, d_output]` and
/// `s = alpha / rank`. `A` starts Kaiming-uniform (fan-in `d_input`), `B` at zero.
///
/// It shares the seam of [`AdaptedLinear`](crate::AdaptedLinear) with PEANuT so both methods
/// run through the same models, trainers and benchmarks.
#[derive(Module, Debug)]
pub struct Lora<B: Backend> {
    /// `A: [d_input, rank]`.
    pub a: Param<Tensor<B, 2>>,
    /// `B: [rank, d_output]`.
    pub b: Param<Tensor<B, 2>>,
    /// The multiplier `s = alpha / rank`.
    #[module(skip)]
    pub scaling: f64,
    /// How `B` started (kept so that [`crate::Adapter::config`] describes the adapter whole).
    #[module(skip)]
    pub b_init: OutputInit,
}

impl<B: Backend> Lora<B> {
    pub(crate) fn init(
        config: &LoraConfig,
        d_input: usize,
        d_output: usize,
        seed: u64,
        device: &B::Device,
    ) -> Self {
        let mut rng = SeededRng::new(seed);
        let a = kaiming_uniform(&mut rng, [d_input, config.rank], d_input, device);
        let b = match config.b_init {
            OutputInit::Zeros => Tensor::zeros([config.rank, d_output], device),
            OutputInit::KaimingUniform => {
                kaiming_uniform(&mut rng, [config.rank, d_output], config.rank, device)
            }
        };
        Self {
            a: Param::from_tensor(a),
            b: Param::from_tensor(b),
            scaling: config.scaling(),
            b_init: config.b_init,
        }
    }

    /// Builds an adapter from existing tensors (burn layout). Its `b_init` is the default
    /// ([`OutputInit::Zeros`]): files do not record it.
    ///
    /// # Panics
    /// When `a: [d_input, r]` and `b: [r, d_output]` disagree on `r`.
    pub fn from_tensors(a: Tensor<B, 2>, b: Tensor<B, 2>, scaling: f64) -> Self {
        assert_eq!(a.dims()[1], b.dims()[0], "LoRA A and B ranks differ");
        Self {
            a: Param::from_tensor(a),
            b: Param::from_tensor(b),
            scaling,
            b_init: OutputInit::default(),
        }
    }

    /// The rank `r`.
    pub fn rank(&self) -> usize {
        self.a.dims()[1]
    }

    /// The update `ΔW = s·A·B`.
    ///
    /// # Shapes
    /// - output: `[d_input, d_output]`
    pub fn delta_weight(&self) -> Tensor<B, 2> {
        self.a.val().matmul(self.b.val()).mul_scalar(self.scaling)
    }

    /// The contribution `s·(x·A)·B`.
    ///
    /// # Shapes
    /// - x: `[..., d_input]`
    /// - output: `[..., d_output]`
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let xa = linear(x, self.a.val(), None).mul_scalar(self.scaling);
        linear(xa, self.b.val(), None)
    }
}
