//! Quantized storage of frozen base weights: [`Quantization`] (8-bit absmax and 4-bit NormalFloat
//! by blocks), [`QuantizedWeight`], and the products with it that adapter training needs.
//!
//! A frozen linear weight `W0: [d_input, d_output]` is cut into blocks of [`BLOCK`] consecutive
//! values (row-major, burn's layout; the last block is padded with zeros when the value count is
//! not a multiple of the block, as an odd vocabulary makes it). Each block keeps its largest magnitude `s` as an f32 scale
//! and each value a code of the scaled value `w / s ∈ [−1, 1]`:
//!
//! - [`Quantization::Int8`]: the nearest of the 255 levels `k/127`, `k ∈ −127..=127`, one byte.
//! - [`Quantization::Nf4`]: the nearest of 16 NormalFloat levels (QLoRA's NF4: quantiles of a
//!   normal distribution with an exact zero, see [`nf4_levels`]), two codes per byte.
//!
//! That is 1.06 (int8) and 0.56 (nf4) bytes per weight with the scales, against 4 for f32 and
//! 2 for bf16. Dequantization is one table lookup per byte and one multiply per value.
//!
//! # Products without a float copy
//! The products with a quantized weight — `x·W0` in the layer's forward, `W0·A` for PEANuT's
//! `H` — dequantize the weight inside the operation; the float weight lives only while one product
//! runs. An ordinary autodiff matmul would keep that float weight for its backward pass (the
//! input gradient `g·W0ᵀ` needs it), which over a whole model is the float copy quantization
//! exists to avoid. So the products are also an autodiff operation of this crate whose backward
//! dequantizes the weight again; it is enabled per autodiff backend by
//! [`register_autodiff`] (one line: `peanut::quant::register_autodiff::<Inner, Strategy>()`).
//! On an autodiff backend nobody registered, the products compose ordinary burn operations:
//! same values and gradients, but the backward keeps each dequantized weight
//! ([`is_registered`] tells which).
//!
//! Inference backends (no autodiff) always compose ordinary operations; nothing is kept.
//!
//! # Backends
//! The codes are a `u8` integer tensor, so the backend must store `u8`
//! ([`Quantization::is_supported`]): burn-flex, ndarray and CUDA do; wgpu's shaders have no
//! 8-bit integers.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::sync::{OnceLock, RwLock};

use burn::backend::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind, unary};
use burn::module::Module;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Int, Tensor, TensorCreationOptions, TensorData, TensorPrimitive};
use serde::{Deserialize, Serialize};

use crate::precision::{cast_to, matmul_as_stored};

/// Values per quantization block (each block has its own f32 scale). QLoRA's NF4 block size.
pub const BLOCK: usize = 64;

/// How a frozen weight is quantized; names as on the command line (`int8`, `nf4`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Quantization {
    /// 8-bit absmax by blocks: `round(127·w/s)`, one byte per value.
    Int8,
    /// 4-bit NormalFloat by blocks (QLoRA's NF4), two values per byte.
    Nf4,
}

impl Quantization {
    /// Both formats, for listings and parsers.
    pub const ALL: [Quantization; 2] = [Quantization::Int8, Quantization::Nf4];

    /// The short name: `int8` or `nf4`.
    pub fn name(self) -> &'static str {
        match self {
            Quantization::Int8 => "int8",
            Quantization::Nf4 => "nf4",
        }
    }

    /// Parses `int8` / `nf4` (also `q8`, `8bit`, `4bit`), case-insensitively.
    pub fn from_name(name: &str) -> Option<Self> {
        match name.to_ascii_lowercase().as_str() {
            "int8" | "q8" | "8bit" | "i8" => Some(Quantization::Int8),
            "nf4" | "4bit" => Some(Quantization::Nf4),
            _ => None,
        }
    }

    /// Codes per stored byte.
    pub fn values_per_byte(self) -> usize {
        match self {
            Quantization::Int8 => 1,
            Quantization::Nf4 => 2,
        }
    }

    /// Stored bytes per weight value, scales included.
    pub fn bytes_per_value(self) -> f64 {
        1.0 / self.values_per_byte() as f64 + 4.0 / BLOCK as f64
    }

    /// The levels a scaled value `w / s ∈ [−1, 1]` is rounded to, ascending.
    pub fn levels(self) -> Vec<f32> {
        match self {
            Quantization::Int8 => (-127..=127).map(|k| k as f32 / 127.0).collect(),
            Quantization::Nf4 => nf4_levels().to_vec(),
        }
    }

    /// The largest rounding error of a scaled value: half the widest gap between levels. A
    /// value `w` of a block with scale `s` comes back within `s` times this.
    pub fn max_error(self) -> f32 {
        let levels = self.levels();
        levels
            .windows(2)
            .map(|pair| (pair[1] - pair[0]) / 2.0)
            .fold(0.0, f32::max)
    }

    /// Whether backend `B` stores the codes (`u8` integer tensors) on `device`.
    pub fn is_supported<B: Backend>(device: &B::Device) -> bool {
        B::supports_dtype(device, DType::U8)
    }

    /// For each byte value, the scaled values it decodes to (`values_per_byte` of them, in
    /// storage order): the lookup table of [`QuantizedWeight::dequantize`].
    fn byte_table(self) -> Vec<f32> {
        match self {
            Quantization::Int8 => (0..=255u8).map(|b| b as i8 as f32 / 127.0).collect(),
            Quantization::Nf4 => {
                let levels = nf4_levels();
                (0..=255usize)
                    .flat_map(|b| [levels[b & 15], levels[b >> 4]])
                    .collect()
            }
        }
    }

    /// The code of a scaled value `v ∈ [−1, 1]`.
    fn code(self, v: f32, levels: &[f32]) -> u8 {
        match self {
            Quantization::Int8 => ((v * 127.0).round().clamp(-127.0, 127.0) as i8) as u8,
            Quantization::Nf4 => {
                // The first level whose upper midpoint is at or above `v` (ties go down).
                let mut code = 0;
                while code + 1 < levels.len() && v > (levels[code] + levels[code + 1]) / 2.0 {
                    code += 1;
                }
                code as u8
            }
        }
    }
}

impl std::fmt::Display for Quantization {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The 16 NF4 levels, ascending, from −1 to 1 with an exact 0 (QLoRA, Dettmers et al. 2023):
/// 8 positive levels at the normal quantiles of `linspace(δ, ½, 9)` without its last point and
/// 7 negative ones at those of `linspace(δ, ½, 8)`, mirrored, with
/// `δ = ½·((1 − 1/30) + (1 − 1/32))`, all divided by the largest.
pub fn nf4_levels() -> [f32; 16] {
    static LEVELS: OnceLock<[f32; 16]> = OnceLock::new();
    *LEVELS.get_or_init(|| {
        let offset = 0.5 * ((1.0 - 1.0 / 30.0) + (1.0 - 1.0 / 32.0));
        let quantiles = |points: usize| -> Vec<f64> {
            (0..points - 1)
                .map(|i| offset + (0.5 - offset) * i as f64 / (points - 1) as f64)
                .map(normal_quantile)
                .collect()
        };
        let mut values: Vec<f64> = quantiles(9);
        values.extend(quantiles(8).into_iter().map(|q| -q));
        values.push(0.0);
        values.sort_by(f64::total_cmp);
        let top = values[15];
        let mut levels = [0f32; 16];
        for (level, value) in levels.iter_mut().zip(values) {
            *level = (value / top) as f32;
        }
        levels
    })
}

/// The standard normal quantile `Φ⁻¹(p)`, `0 < p < 1`: Acklam's rational approximation (relative
/// error below 1.2e-9), plenty for f32 levels.
fn normal_quantile(p: f64) -> f64 {
    const A: [f64; 6] = [
        -3.969683028665376e1,
        2.209460984245205e2,
        -2.759285104469687e2,
        1.383_577_518_672_69e2,
        -3.066479806614716e1,
        2.506628277459239,
    ];
    const B: [f64; 5] = [
        -5.447609879822406e1,
        1.615858368580409e2,
        -1.556989798598866e2,
        6.680131188771972e1,
        -1.328068155288572e1,
    ];
    const C: [f64; 6] = [
        -7.784894002430293e-3,
        -3.223964580411365e-1,
        -2.400758277161838,
        -2.549732539343734,
        4.374664141464968,
        2.938163982698783,
    ];
    const D: [f64; 4] = [
        7.784695709041462e-3,
        3.224671290700398e-1,
        2.445134137142996,
        3.754408661907416,
    ];
    let tail = |q: f64| {
        (((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    };
    if p < 0.02425 {
        tail((-2.0 * p.ln()).sqrt())
    } else if p > 1.0 - 0.02425 {
        -tail((-2.0 * (1.0 - p).ln()).sqrt())
    } else {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    }
}

/// Why a weight cannot be quantized.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum QuantizeError {
    /// The backend cannot store `u8` codes.
    #[error(
        "this backend cannot store 8-bit integer tensors, which quantized weights are made of \
         (burn-flex, ndarray and CUDA can; wgpu cannot)"
    )]
    Unsupported,
    /// A value is infinite or NaN.
    #[error("the weight holds a non-finite value ({0})")]
    NonFinite(f32),
    /// The weight trains (full fine-tuning); only a frozen weight can be stored quantized.
    #[error(
        "a weight that trains cannot be stored quantized (quantization is for the frozen base)"
    )]
    Trainable,
}

/// A frozen `[d_input, d_output]` weight stored quantized by blocks (see the
/// [module docs](self)). Its tensors are constants of the module: they are moved with the model
/// between devices, but they are not parameters, are not saved in records, and take no
/// gradient.
#[derive(Module, Debug)]
pub struct QuantizedWeight<B: Backend> {
    /// The codes, `u8`, `values_per_byte` per byte, the last block padded to [`BLOCK`] values.
    codes: Tensor<B, 1, Int>,
    /// One f32 scale (largest magnitude) per block of [`BLOCK`] values.
    scales: Tensor<B, 1>,
    /// `[d_input, d_output]`.
    #[module(skip)]
    dims: [usize; 2],
    /// The format of the codes.
    #[module(skip)]
    format: Quantization,
}

impl<B: Backend> QuantizedWeight<B> {
    /// Quantizes `weight` (`[d_input, d_output]`, any float type; read to the host once).
    ///
    /// # Errors
    /// When the backend cannot store `u8` tensors, or when a value is not finite.
    pub fn quantize(weight: Tensor<B, 2>, format: Quantization) -> Result<Self, QuantizeError> {
        let device = weight.device();
        let dims = weight.dims();
        let values: Vec<f32> = weight
            .into_data()
            .convert::<f32>()
            .into_vec()
            .expect("a float tensor converts to f32");
        Self::from_values(&values, dims, format, &device)
    }

    /// Quantizes row-major `values` of a `[d_input, d_output]` weight onto `device`.
    ///
    /// # Errors
    /// As [`QuantizedWeight::quantize`].
    pub fn from_values(
        values: &[f32],
        dims: [usize; 2],
        format: Quantization,
        device: &B::Device,
    ) -> Result<Self, QuantizeError> {
        let [rows, cols] = dims;
        assert_eq!(values.len(), rows * cols, "values do not fill {dims:?}");
        if !Quantization::is_supported::<B>(device) {
            return Err(QuantizeError::Unsupported);
        }
        if let Some(bad) = values.iter().find(|v| !v.is_finite()) {
            return Err(QuantizeError::NonFinite(*bad));
        }
        let levels = format.levels();
        let per_byte = format.values_per_byte();
        let blocks = values.len().div_ceil(BLOCK);
        let mut scales = Vec::with_capacity(blocks);
        let mut codes = Vec::with_capacity(blocks * BLOCK / per_byte);
        let mut padded = [0f32; BLOCK];
        for block in values.chunks(BLOCK) {
            // The last block, when short, is padded with zeros (code of 0 in both formats).
            let block = if block.len() < BLOCK {
                padded[..block.len()].copy_from_slice(block);
                &padded[..]
            } else {
                block
            };
            let scale = block.iter().fold(0f32, |top, v| top.max(v.abs()));
            scales.push(scale);
            let inverse = if scale > 0.0 { 1.0 / scale } else { 0.0 };
            for group in block.chunks_exact(per_byte) {
                let byte = group
                    .iter()
                    .enumerate()
                    .map(|(i, v)| format.code(v * inverse, &levels) << (4 * i))
                    .fold(0u8, |byte, code| byte | code);
                codes.push(byte);
            }
        }
        let count = codes.len();
        let codes = Tensor::from_data(
            TensorData::new(codes, [count]),
            TensorCreationOptions::new(device.clone()).with_dtype(DType::U8),
        );
        let blocks = scales.len();
        let scales = Tensor::from_data(TensorData::new(scales, [blocks]), device);
        Ok(Self {
            codes,
            scales,
            dims,
            format,
        })
    }

    /// `[d_input, d_output]`.
    pub fn dims(&self) -> [usize; 2] {
        self.dims
    }

    /// The format of the codes.
    pub fn format(&self) -> Quantization {
        self.format
    }

    /// The device the codes are on.
    pub fn device(&self) -> B::Device {
        self.scales.device()
    }

    /// Bytes stored: codes and scales.
    pub fn stored_bytes(&self) -> usize {
        self.codes.shape().num_elements() + 4 * self.scales.shape().num_elements()
    }

    /// The weight in f32, `[d_input, d_output]` (a new tensor; the quantized one is kept).
    pub fn dequantize(&self) -> Tensor<B, 2> {
        dequantize_parts(
            self.codes.clone(),
            self.scales.clone(),
            self.dims,
            self.format,
        )
    }

    /// `x·W` (`x: [rows, d_input]`, output `[rows, d_output]`), in `x`'s float type.
    pub fn left_matmul(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        self.product(x, Side::Left)
    }

    /// `W·a` (`a: [d_output, n]`, output `[d_input, n]`), in `a`'s float type: PEANuT's `W0·A`.
    pub fn right_matmul(&self, a: Tensor<B, 2>) -> Tensor<B, 2> {
        self.product(a, Side::Right)
    }

    fn product(&self, operand: Tensor<B, 2>, side: Side) -> Tensor<B, 2> {
        if B::ad_enabled(&operand.device())
            && let Some(product) = registered::<B>()
        {
            return product(operand, self, side);
        }
        side.apply(operand, self.dequantize())
    }
}

/// Which side of the product the quantized weight is on.
#[derive(Debug, Clone, Copy)]
enum Side {
    /// `operand · W`.
    Left,
    /// `W · operand`.
    Right,
}

impl Side {
    /// The product with the dequantized `w`, in `operand`'s type.
    fn apply<X: Backend>(self, operand: Tensor<X, 2>, w: Tensor<X, 2>) -> Tensor<X, 2> {
        let w = cast_to(w, operand.dtype());
        match self {
            Side::Left => operand.matmul(w),
            Side::Right => w.matmul(operand),
        }
    }

    /// The gradient of the operand from the output's `grad`.
    fn backward<X: Backend>(self, grad: Tensor<X, 2>, w: Tensor<X, 2>) -> Tensor<X, 2> {
        let w = cast_to(w, grad.dtype());
        match self {
            Side::Left => grad.matmul(w.transpose()),
            Side::Right => w.transpose().matmul(grad),
        }
    }
}

/// The dequantized weight from its parts, on any backend: one lookup of each byte in the byte
/// table, each block times its scale.
fn dequantize_parts<X: Backend>(
    codes: Tensor<X, 1, Int>,
    scales: Tensor<X, 1>,
    dims: [usize; 2],
    format: Quantization,
) -> Tensor<X, 2> {
    let device = scales.device();
    let per_byte = format.values_per_byte();
    let table = Tensor::<X, 2>::from_data(
        TensorData::new(format.byte_table(), [256, per_byte]),
        &device,
    );
    let count = dims[0] * dims[1];
    let blocks = count.div_ceil(BLOCK);
    let values = table.select(0, codes).reshape([blocks, BLOCK]);
    let values = (values * scales.reshape([blocks, 1])).reshape([blocks * BLOCK]);
    let values = if count < blocks * BLOCK {
        values.slice(0..count)
    } else {
        values
    };
    values.reshape(dims)
}

/// The product of a quantized weight with an operand on backend `B`.
type Product<B> = fn(Tensor<B, 2>, &QuantizedWeight<B>, Side) -> Tensor<B, 2>;

/// The registered products, by autodiff backend type.
fn registry() -> &'static RwLock<HashMap<TypeId, Box<dyn Any + Send + Sync>>> {
    static REGISTRY: OnceLock<RwLock<HashMap<TypeId, Box<dyn Any + Send + Sync>>>> =
        OnceLock::new();
    REGISTRY.get_or_init(Default::default)
}

fn registered<B: Backend>() -> Option<Product<B>> {
    let registry = registry()
        .read()
        .unwrap_or_else(|poison| poison.into_inner());
    registry
        .get(&TypeId::of::<B>())
        .and_then(|product| product.downcast_ref::<Product<B>>())
        .copied()
}

/// Makes the products with quantized weights on `Autodiff<I, C>` one autodiff operation whose
/// backward dequantizes the weight again, so that no float weight is kept between the forward
/// and the backward pass (see the [module docs](self)). Idempotent; call it once before
/// training, from any thread.
pub fn register_autodiff<I: Backend, C: CheckpointStrategy>() {
    let product: Product<Autodiff<I, C>> = autodiff_product::<I, C>;
    registry()
        .write()
        .unwrap_or_else(|poison| poison.into_inner())
        .insert(TypeId::of::<Autodiff<I, C>>(), Box::new(product));
}

/// Whether [`register_autodiff`] was called for `B` (always false for a backend without
/// autodiff, which needs none).
pub fn is_registered<B: Backend>() -> bool {
    registered::<B>().is_some()
}

/// What the backward pass keeps of a product: the quantized weight, not its float values.
#[derive(Debug, Clone)]
struct ProductState<I: Backend> {
    codes: I::IntTensorPrimitive,
    scales: I::FloatTensorPrimitive,
    dims: [usize; 2],
    format: Quantization,
    side: Side,
}

#[derive(Debug)]
struct ProductBackward;

impl<I: Backend> Backward<I, 1> for ProductBackward {
    type State = ProductState<I>;

    fn backward(
        self,
        ops: Ops<Self::State, 1>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let state = ops.state;
        unary::<I, _>(ops.parents, ops.node, grads, |grad| {
            let w = dequantize_parts::<I>(
                Tensor::from_primitive(state.codes),
                Tensor::from_primitive(TensorPrimitive::Float(state.scales)),
                state.dims,
                state.format,
            );
            let grad = Tensor::<I, 2>::from_primitive(TensorPrimitive::Float(grad));
            state.side.backward(grad, w).into_primitive().tensor()
        });
    }
}

fn autodiff_product<I: Backend, C: CheckpointStrategy>(
    operand: Tensor<Autodiff<I, C>, 2>,
    weight: &QuantizedWeight<Autodiff<I, C>>,
    side: Side,
) -> Tensor<Autodiff<I, C>, 2> {
    let operand = operand.into_primitive().tensor();
    let codes = weight.codes.clone().into_primitive();
    let scales = weight.scales.clone().into_primitive().tensor().primitive;
    let w = dequantize_parts::<I>(
        Tensor::from_primitive(codes.clone()),
        Tensor::from_primitive(TensorPrimitive::Float(scales.clone())),
        weight.dims,
        weight.format,
    );
    let inner = Tensor::<I, 2>::from_primitive(TensorPrimitive::Float(operand.primitive.clone()));
    let output = side.apply(inner, w).into_primitive().tensor();
    let output = match ProductBackward
        .prepare::<C>([operand.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish(
            ProductState {
                codes,
                scales,
                dims: weight.dims,
                format: weight.format,
                side,
            },
            output,
        ),
        OpsKind::UnTracked(prep) => prep.finish(output),
    };
    Tensor::from_primitive(TensorPrimitive::Float(output))
}

/// A frozen base weight as the adapters see it: a float matrix, or a quantized one whose
/// products dequantize inside the operation.
#[derive(Debug)]
pub enum BaseWeight<'a, B: Backend> {
    /// A float `W0` (any float type, see `crate::precision`).
    Dense(Tensor<B, 2>),
    /// A quantized `W0`.
    Quantized(&'a QuantizedWeight<B>),
}

impl<B: Backend> BaseWeight<'_, B> {
    /// `W0·a` (`a: [d_output, n]`), in `a`'s float type.
    pub fn times(&self, a: Tensor<B, 2>) -> Tensor<B, 2> {
        match self {
            BaseWeight::Dense(w0) => matmul_as_stored(w0.clone(), a),
            BaseWeight::Quantized(q) => q.right_matmul(a),
        }
    }

    /// `W0` as a float matrix (dequantized when quantized).
    pub fn dense(&self) -> Tensor<B, 2> {
        match self {
            BaseWeight::Dense(w0) => w0.clone(),
            BaseWeight::Quantized(q) => q.dequantize(),
        }
    }
}
