//! [`Adapter`]: the closed set of adapter kinds a layer can carry.

use burn::module::Module;
use burn::tensor::{Tensor, backend::Backend};

use crate::config::{AdapterConfig, LoraConfig};
use crate::lora::Lora;
use crate::peanut::Peanut;
use crate::quant::BaseWeight;

/// One adapter on a linear layer. An enum rather than a trait object, because burn modules
/// cannot be trait objects; models, trainers and checkpoints therefore never branch on the method.
#[derive(Module, Debug)]
pub enum Adapter<B: Backend> {
    /// A PEANuT adapter (weight-aware).
    Peanut(Peanut<B>),
    /// A LoRA adapter (the baseline).
    Lora(Lora<B>),
}

impl<B: Backend> Adapter<B> {
    /// The update `ΔW` this adapter adds to the frozen weight `w0`.
    ///
    /// # Shapes
    /// - w0: `[d_input, d_output]`
    /// - output: `[d_input, d_output]`
    pub fn delta_weight(&self, w0: Tensor<B, 2>) -> Tensor<B, 2> {
        match self {
            Self::Peanut(adapter) => adapter.delta_weight(w0),
            Self::Lora(adapter) => adapter.delta_weight(),
        }
    }

    /// The adapter's contribution to the layer output, on the factorized path.
    ///
    /// # Shapes
    /// - x: `[..., d_input]`
    /// - w0: `[d_input, d_output]`
    /// - output: `[..., d_output]`
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>, w0: Tensor<B, 2>) -> Tensor<B, D> {
        self.forward_on(x, &BaseWeight::Dense(w0))
    }

    /// [`Adapter::forward`] on a base weight that may be quantized (crate::quant).
    ///
    /// # Shapes
    /// - x: `[..., d_input]`
    /// - output: `[..., d_output]`
    pub fn forward_on<const D: usize>(
        &self,
        x: Tensor<B, D>,
        w0: &BaseWeight<'_, B>,
    ) -> Tensor<B, D> {
        match self {
            Self::Peanut(adapter) => adapter.forward_on(x, w0),
            Self::Lora(adapter) => adapter.forward(x),
        }
    }

    /// `(P, Q)` with `ΔW = P·Q`, the scaling folded into `P`: for PEANuT `(s·H, B)`, for LoRA
    /// `(s·A, B)`. What a merged layer on a quantized base keeps instead of `W0 + ΔW`
    /// ([`crate::AdaptedLinear::merge_in_place`]).
    ///
    /// # Shapes
    /// - output: `([d_input, rank], [rank, d_output])`
    pub fn factors(&self, w0: &BaseWeight<'_, B>) -> (Tensor<B, 2>, Tensor<B, 2>) {
        match self {
            Self::Peanut(adapter) => (
                adapter.hidden_on(w0).mul_scalar(adapter.scaling),
                adapter.b.val(),
            ),
            Self::Lora(adapter) => (adapter.a.val().mul_scalar(adapter.scaling), adapter.b.val()),
        }
    }

    /// The rank of the adapter.
    pub fn rank(&self) -> usize {
        match self {
            Self::Peanut(adapter) => adapter.rank(),
            Self::Lora(adapter) => adapter.rank(),
        }
    }

    /// A short name of the method: `"peanut"` or `"lora"`.
    pub fn method(&self) -> &'static str {
        match self {
            Self::Peanut(_) => "peanut",
            Self::Lora(_) => "lora",
        }
    }

    /// The configuration describing this adapter. For LoRA, `alpha` is recovered as
    /// `scaling · rank`.
    pub fn config(&self) -> AdapterConfig {
        match self {
            Self::Peanut(adapter) => AdapterConfig::Peanut(adapter.config()),
            Self::Lora(adapter) => AdapterConfig::Lora(
                LoraConfig::new(adapter.rank())
                    .with_alpha(adapter.scaling * adapter.rank() as f64)
                    .with_b_init(adapter.b_init),
            ),
        }
    }
}
