//! The nonlinearity `σ` used inside a PEANuT adapter (docs/METHOD.md §4).

use burn::tensor::{Tensor, activation, backend::Backend};
use serde::{Deserialize, Serialize};

use crate::error::{PeanutError, Result};

/// The element-wise nonlinearity applied after `A` and after every encoder and decoder.
///
/// Every variant but [`Activation::Sigmoid`] satisfies `σ(0) = 0`, which is what makes a deeper
/// adapter with zero encoders/decoders reduce exactly to depth 2.
///
/// Serialized as `{"kind": "relu"}`, `{"kind": "leaky_relu", "negative_slope": 0.01}`,
/// `{"kind": "sine", "frequency": 1.0}` and so on.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Activation {
    /// `max(0, x)`, the paper's default.
    #[default]
    Relu,
    /// Exact GELU, `x·Φ(x)` with the Gaussian CDF through `erf` (PyTorch `gelu`).
    ///
    /// Built from `erf` rather than burn's `activation::gelu`: burn 0.21's GELU backward uses
    /// the derivative of the tanh approximation, which puts its gradients ~1e-5 (relative) away
    /// from PyTorch's (caught by the peft golden tests).
    Gelu,
    /// GELU with the tanh approximation (PyTorch `gelu(approximate="tanh")`).
    GeluTanh,
    /// `x·sigmoid(x)` (SiLU / swish).
    Silu,
    /// `tanh(x)`.
    Tanh,
    /// `1 / (1 + e^-x)`. Note `σ(0) = 0.5`.
    Sigmoid,
    /// `x` for `x ≥ 0`, `negative_slope·x` otherwise.
    LeakyRelu {
        /// Slope for negative inputs (PyTorch's default is 0.01).
        negative_slope: f64,
    },
    /// No nonlinearity: the adapter becomes linear in `W0`.
    Identity,
    /// `sin(frequency·x)`, the sinusoid of the paper's expressivity result (Appendix B).
    Sine {
        /// The frequency `ω`; must be finite and positive.
        frequency: f64,
    },
}

/// `x·½·(1 + erf(x/√2))`, differentiated exactly by autodiff through `erf`.
fn exact_gelu<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    let cdf = x
        .clone()
        .mul_scalar(std::f64::consts::FRAC_1_SQRT_2)
        .erf()
        .add_scalar(1.0);
    x.mul(cdf).mul_scalar(0.5)
}

impl Activation {
    /// Leaky ReLU with PyTorch's default negative slope, 0.01.
    pub fn leaky_relu() -> Self {
        Self::LeakyRelu {
            negative_slope: 0.01,
        }
    }

    /// Applies the activation element-wise.
    ///
    /// # Shapes
    /// - input: any
    /// - output: same as the input
    pub fn forward<B: Backend, const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        match *self {
            Self::Relu => activation::relu(x),
            Self::Gelu => exact_gelu(x),
            Self::GeluTanh => activation::gelu_approximate(x),
            Self::Silu => activation::silu(x),
            Self::Tanh => activation::tanh(x),
            Self::Sigmoid => activation::sigmoid(x),
            Self::LeakyRelu { negative_slope } => activation::leaky_relu(x, negative_slope),
            Self::Identity => x,
            Self::Sine { frequency } => (x * frequency).sin(),
        }
    }

    /// `true` when `σ(0) = 0`.
    pub fn maps_zero_to_zero(&self) -> bool {
        !matches!(self, Self::Sigmoid)
    }

    /// Checks the activation's own parameters.
    pub fn validate(&self) -> Result<()> {
        match *self {
            Self::LeakyRelu { negative_slope } if !negative_slope.is_finite() => {
                Err(PeanutError::InvalidConfig {
                    field: "activation.negative_slope",
                    reason: format!("must be finite, got {negative_slope}"),
                })
            }
            Self::Sine { frequency } if !(frequency.is_finite() && frequency > 0.0) => {
                Err(PeanutError::InvalidConfig {
                    field: "activation.frequency",
                    reason: format!("must be finite and > 0, got {frequency}"),
                })
            }
            _ => Ok(()),
        }
    }

    /// The name Hugging Face peft (and transformers' `ACT2FN`) uses for this activation, or
    /// `None` when peft has no equivalent (leaky ReLU with a non-default slope, sine).
    pub fn peft_name(&self) -> Option<&'static str> {
        match *self {
            Self::Relu => Some("relu"),
            Self::Gelu => Some("gelu"),
            Self::GeluTanh => Some("gelu_pytorch_tanh"),
            Self::Silu => Some("silu"),
            Self::Tanh => Some("tanh"),
            Self::Sigmoid => Some("sigmoid"),
            Self::LeakyRelu {
                negative_slope: 0.01,
            } => Some("leaky_relu"),
            Self::Identity => Some("linear"),
            Self::LeakyRelu { .. } | Self::Sine { .. } => None,
        }
    }

    /// Parses a peft / transformers activation name (`relu`, `gelu`, `gelu_new`,
    /// `gelu_pytorch_tanh`, `silu`, `swish`, `tanh`, `sigmoid`, `leaky_relu`, `linear`,
    /// `identity`). Returns `None` for names this crate does not implement.
    pub fn from_peft_name(name: &str) -> Option<Self> {
        Some(match name.to_ascii_lowercase().as_str() {
            "relu" => Self::Relu,
            "gelu" => Self::Gelu,
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" | "gelu_tanh" => Self::GeluTanh,
            "silu" | "swish" => Self::Silu,
            "tanh" => Self::Tanh,
            "sigmoid" => Self::Sigmoid,
            "leaky_relu" => Self::leaky_relu(),
            "linear" | "identity" | "none" => Self::Identity,
            _ => return None,
        })
    }
}
