//! Half-precision storage of the frozen base weights ([`Precision`], [`cast_frozen`]) and the
//! matrix product that computes in a weight's own precision ([`linear_as_stored`]).
//!
//! burn 0.21 has no autocast, so this crate does what adapter fine-tuning needs by hand
//! (docs/METHOD.md §9):
//!
//! - The frozen matrices of a model (linear weights `W0`, token embeddings) are stored in the
//!   chosen precision: they are nearly all of its memory.
//! - Each linear computes `x·W0` in `W0`'s precision (the activation is cast down, the product
//!   cast back up), as PyTorch's autocast does for matrix products.
//! - Adapters, heads, norms, biases and everything that trains are f32 parameters with f32
//!   optimizer state (the master-weights rule of mixed-precision training: AdamW steps at the
//!   paper's learning rates are below the resolution of half-precision numbers).
//! - PEANuT's one product with the frozen weight, `W0·A`, runs in `W0`'s precision like every
//!   other product with it ([`matmul_as_stored`]); the rest of the adapter (`σ`, the body,
//!   `x·H`, `·B`) runs in f32. An f32 copy of each adapted `W0`, kept for the backward pass,
//!   would cost as much memory as the half-precision storage saves.

use burn::module::{Module, ModuleMapper, Param};
use burn::tensor::backend::Backend;
use burn::tensor::module::linear;
use burn::tensor::{DType, FloatDType, Tensor};
use serde::{Deserialize, Serialize};

/// The precision of the frozen base weights; names as in transformers' `torch_dtype` short forms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// 32-bit floats (no conversion).
    #[default]
    F32,
    /// IEEE half precision (5 exponent bits: range ±65504).
    F16,
    /// bfloat16 (f32's exponent range, 8 bits of mantissa).
    Bf16,
}

impl Precision {
    /// All precisions, for listings and parsers.
    pub const ALL: [Precision; 3] = [Precision::F32, Precision::F16, Precision::Bf16];

    /// The short name: `f32`, `f16` or `bf16`.
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::F16 => "f16",
            Precision::Bf16 => "bf16",
        }
    }

    /// Parses a short name (`f32`, `f16`, `bf16`) or transformers' long one (`float32`,
    /// `float16`, `bfloat16`), case-insensitively.
    pub fn from_name(name: &str) -> Option<Self> {
        match name.to_ascii_lowercase().as_str() {
            "f32" | "fp32" | "float32" | "float" => Some(Precision::F32),
            "f16" | "fp16" | "float16" | "half" => Some(Precision::F16),
            "bf16" | "bfloat16" => Some(Precision::Bf16),
            _ => None,
        }
    }

    /// burn's float type of this precision.
    pub fn dtype(self) -> FloatDType {
        match self {
            Precision::F32 => FloatDType::F32,
            Precision::F16 => FloatDType::F16,
            Precision::Bf16 => FloatDType::BF16,
        }
    }

    /// Bytes per stored value.
    pub fn bytes(self) -> usize {
        match self {
            Precision::F32 => 4,
            Precision::F16 | Precision::Bf16 => 2,
        }
    }

    /// Whether backend `B` computes in this precision on `device` (storage and arithmetic).
    pub fn is_supported<B: Backend>(self, device: &B::Device) -> bool {
        self == Precision::F32 || B::supports_dtype(device, DType::from(self.dtype()))
    }
}

/// How a model's frozen matrices are stored: a float [`Precision`] for all of them, and
/// optionally a [`Quantization`](crate::Quantization) for the linear weights (the precision then
/// applies to the rest: token embeddings, a tied output head).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash, Serialize, Deserialize)]
pub struct FrozenStorage {
    /// The float type of the frozen matrices that are not quantized.
    pub precision: Precision,
    /// The format the frozen linear weights are quantized in, if any (crate::quant).
    pub quantization: Option<crate::Quantization>,
}

impl FrozenStorage {
    /// `precision` for every frozen matrix, nothing quantized.
    pub fn new(precision: Precision) -> Self {
        Self {
            precision,
            quantization: None,
        }
    }

    /// The same with the linear weights quantized in `quantization` (or not, for `None`).
    pub fn with_quantization(mut self, quantization: Option<crate::Quantization>) -> Self {
        self.quantization = quantization;
        self
    }
}

impl From<Precision> for FrozenStorage {
    fn from(precision: Precision) -> Self {
        Self::new(precision)
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Casts every frozen matrix of `module` (a 2-D float parameter that takes no gradient and is
/// not part of an adapter: linear weights, token embeddings) to `precision`. Adapters (any
/// parameter under a field named `adapters`, as in [`crate::AdaptedLinear`]), trainable
/// parameters (heads, a model being fully fine-tuned) and vectors (biases, norms) keep their
/// type. A no-op for [`Precision::F32`].
///
/// Call it after the trainable parameters are chosen (adapters attached, head unfrozen). The
/// model's layers then compute as described in the [module docs](self); check
/// [`Precision::is_supported`] first, as a backend without the type panics in its kernels.
pub fn cast_frozen<B: Backend, M: Module<B>>(module: M, precision: Precision) -> M {
    if precision == Precision::F32 {
        return module;
    }
    /// The target type and the path being mapped.
    struct CastFrozen(FloatDType, Vec<String>);
    impl<B: Backend> ModuleMapper<B> for CastFrozen {
        fn enter_module(&mut self, name: &str, _container_type: &str) {
            self.1.push(name.to_string());
        }
        fn exit_module(&mut self, _name: &str, _container_type: &str) {
            self.1.pop();
        }
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
            // Adapters stay f32 also where nothing takes gradients (an inference backend).
            let in_adapter = self.1.iter().any(|name| name == "adapters");
            if D != 2 || in_adapter || param.val().is_require_grad() {
                return param;
            }
            let dtype = self.0;
            param.map(|tensor| tensor.cast(dtype))
        }
    }
    module.map(&mut CastFrozen(precision.dtype(), Vec::new()))
}

/// `tensor` in f32 when it is stored in a half type; unchanged otherwise.
pub fn widen<B: Backend, const D: usize>(tensor: Tensor<B, D>) -> Tensor<B, D> {
    match tensor.dtype() {
        DType::F16 | DType::BF16 => tensor.cast(FloatDType::F32),
        _ => tensor,
    }
}

/// `param` made trainable or frozen; one made trainable is widened to f32 first (a half-precision
/// frozen weight that starts to train gets f32 master values, see the module docs).
pub fn set_trainable<B: Backend, const D: usize>(
    param: Param<Tensor<B, D>>,
    trainable: bool,
) -> Param<Tensor<B, D>> {
    let half = matches!(param.val().dtype(), DType::F16 | DType::BF16);
    let param = if trainable && half {
        param.map(widen)
    } else {
        param
    };
    param.set_require_grad(trainable)
}

/// Bytes of the float parameters of `module` as stored (each in its own precision). Quantized
/// weights (crate::quant) are module constants, not parameters, so they are not counted here;
/// [`crate::QuantizedWeight::stored_bytes`] gives theirs.
pub fn stored_bytes<B: Backend, M: Module<B>>(module: &M) -> usize {
    struct Bytes(usize);
    impl<B: Backend> burn::module::ModuleVisitor<B> for Bytes {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            let tensor = param.val();
            self.0 += tensor.shape().num_elements() * tensor.dtype().size();
        }
    }
    let mut bytes = Bytes(0);
    module.visit(&mut bytes);
    bytes.0
}

/// `x·w + b` computed in `w`'s precision: `x` is cast to it for the product and the result cast
/// back to `x`'s type before the bias (kept in `x`'s type) is added. The plain `linear` when the
/// types agree.
///
/// # Shapes
/// - x: `[..., d_input]`
/// - w: `[d_input, d_output]`
/// - b: `[d_output]`
pub fn linear_as_stored<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    w: Tensor<B, 2>,
    b: Option<Tensor<B, 1>>,
) -> Tensor<B, D> {
    let (compute, out) = (w.dtype(), x.dtype());
    if compute == out {
        return linear(x, w, b);
    }
    let y = linear(x.cast(compute), w, None).cast(out);
    match b {
        Some(b) => y + b.unsqueeze(),
        None => y,
    }
}

/// `w·a` computed in `w`'s precision (`a` cast to it), returned in `a`'s: the product of a
/// half-precision frozen weight with an f32 adapter matrix. The plain `matmul` when the types
/// agree.
///
/// # Shapes
/// - w: `[m, k]`
/// - a: `[k, n]`
/// - output: `[m, n]`
pub fn matmul_as_stored<B: Backend>(w: Tensor<B, 2>, a: Tensor<B, 2>) -> Tensor<B, 2> {
    let (compute, out) = (w.dtype(), a.dtype());
    if compute == out {
        return w.matmul(a);
    }
    w.matmul(a.cast(compute)).cast(out)
}

/// `tensor` as `dtype` (a no-op when it already is).
pub fn cast_to<B: Backend, const D: usize>(tensor: Tensor<B, D>, dtype: DType) -> Tensor<B, D> {
    if tensor.dtype() == dtype {
        tensor
    } else {
        tensor.cast(dtype)
    }
}
