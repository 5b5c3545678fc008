//! [`AdaptedLinear`]: the seam where adapters plug into a model.

use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::tensor::{DType, Tensor, backend::Backend};

use crate::adapter::Adapter;
use crate::precision::{cast_to, linear_as_stored, set_trainable};
use crate::quant::{BaseWeight, Quantization, QuantizeError, QuantizedWeight};

/// A linear layer with a frozen base and any number of adapters (usually zero or one).
///
/// `y = x·W0 + b + Σᵢ adapterᵢ(x, W0)`, with `W0: [d_input, d_output]`. While training, each
/// adapter contributes on its factorized path (for PEANuT `s·((x·H)·B)`), so `ΔW` is never built.
///
/// The base weight and bias never receive gradients: they are marked `no_grad` and detached in
/// [`forward`](AdaptedLinear::forward). [`AdaptedLinear::unfreeze_base`] turns that off for full
/// fine-tuning through the same model type.
///
/// Merging follows docs/METHOD.md §6: every `ΔW` is computed from the ORIGINAL `W0`, which this
/// layer keeps, so unmerging is exact and the order of adapters does not matter.
#[derive(Module, Debug)]
pub struct AdaptedLinear<B: Backend> {
    /// The pretrained layer: `W0: [d_input, d_output]` and its bias. Always the original weight,
    /// also while merged. While `W0` is stored quantized (see [`AdaptedLinear::quantize`]),
    /// `base.weight` is an empty `[0, 0]` placeholder and the weight lives in `quantized`; read
    /// it with [`AdaptedLinear::base_weight`], which serves both.
    pub base: Linear<B>,
    /// `W0` stored quantized (crate::quant), in place of `base.weight`.
    pub quantized: Option<QuantizedWeight<B>>,
    /// The adapters; their contributions add up.
    pub adapters: Vec<Adapter<B>>,
    /// `W0 + ΣΔW`, cached while the layer is merged for inference (not saved in records).
    merged_weight: Option<Tensor<B, 2>>,
    /// Each adapter's `(P, Q)` with `ΔW = P·Q` ([`Adapter::factors`]), cached instead of
    /// `merged_weight` while a layer with a quantized base is merged: a float `W0 + ΣΔW` would
    /// undo the quantization's saving, and re-quantizing it would round most of `ΔW` away.
    merged_factors: Vec<(Tensor<B, 2>, Tensor<B, 2>)>,
    /// Whether the base takes gradients (full fine-tuning).
    #[module(skip)]
    base_trainable: bool,
}

impl<B: Backend> AdaptedLinear<B> {
    /// Wraps a pretrained layer, freezing it. Attach adapters with [`AdaptedLinear::with_adapter`].
    pub fn new(base: Linear<B>) -> Self {
        Self {
            base: base.no_grad(),
            quantized: None,
            adapters: Vec::new(),
            merged_weight: None,
            merged_factors: Vec::new(),
            base_trainable: false,
        }
    }

    /// A frozen layer whose weight is stored quantized, with an optional bias.
    pub fn from_quantized(weight: QuantizedWeight<B>, bias: Option<Param<Tensor<B, 1>>>) -> Self {
        let placeholder = Tensor::<B, 2>::zeros([0, 0], &weight.device());
        let mut layer = Self::new(Linear {
            weight: Param::from_tensor(placeholder),
            bias,
        });
        layer.quantized = Some(weight);
        layer
    }

    /// Stores `W0` quantized in `format` (a no-op when it already is in that format; another
    /// format is quantized from the current values). The bias stays as it is.
    ///
    /// # Errors
    /// When the base trains, or as [`QuantizedWeight::quantize`].
    pub fn quantize(self, format: Quantization) -> Result<Self, QuantizeError> {
        if self.base_trainable {
            return Err(QuantizeError::Trainable);
        }
        if self.quantization() == Some(format) {
            return Ok(self);
        }
        let weight = QuantizedWeight::quantize(self.base_weight(), format)?;
        Ok(Self {
            adapters: self.adapters,
            ..Self::from_quantized(weight, self.base.bias)
        })
    }

    /// The format `W0` is stored in, when quantized.
    pub fn quantization(&self) -> Option<Quantization> {
        self.quantized.as_ref().map(QuantizedWeight::format)
    }

    /// `W0` as a float matrix, detached: the stored weight, or the dequantized one.
    pub fn base_weight(&self) -> Tensor<B, 2> {
        match &self.quantized {
            Some(quantized) => quantized.dequantize(),
            None => self.base.weight.val().detach(),
        }
    }

    /// Replaces `W0` with `weight` (`[d_input, d_output]`, stored as given, not quantized),
    /// unmerging first.
    pub fn set_base_weight(&mut self, weight: Tensor<B, 2>) {
        self.unmerge();
        self.quantized = None;
        self.base.weight = self.base.weight.clone().map(|_| weight);
    }

    /// The device of the layer's weight.
    pub fn device(&self) -> B::Device {
        match &self.quantized {
            Some(quantized) => quantized.device(),
            None => self.base.weight.device(),
        }
    }

    /// Adds an adapter.
    ///
    /// # Panics
    /// When the adapter was built for another output width (a programming error; loaders check
    /// shapes and return errors).
    pub fn with_adapter(mut self, adapter: Adapter<B>) -> Self {
        self.push_adapter(adapter);
        self
    }

    /// Adds an adapter in place, unmerging first if needed.
    ///
    /// # Panics
    /// As [`AdaptedLinear::with_adapter`].
    pub fn push_adapter(&mut self, adapter: Adapter<B>) {
        if let Err(mismatch) = crate::io::check_fits("adapter", &adapter, self.dims()) {
            panic!("adapter does not fit this linear layer: {mismatch}");
        }
        self.unmerge();
        self.adapters.push(adapter);
    }

    /// Lets the base weight and bias train too (full fine-tuning), or freezes them again. A
    /// half-precision weight (crate::precision) that starts to train is widened to f32.
    /// A quantized weight that starts to train is dequantized into an f32 parameter.
    pub fn unfreeze_base(mut self, trainable: bool) -> Self {
        if trainable && let Some(quantized) = self.quantized.take() {
            self.base.weight = self.base.weight.map(|_| quantized.dequantize());
        }
        self.base_trainable = trainable;
        self.base.weight = set_trainable(self.base.weight, trainable);
        self.base.bias = self.base.bias.map(|bias| set_trainable(bias, trainable));
        self
    }

    /// Whether the base weight and bias take gradients.
    pub fn is_base_trainable(&self) -> bool {
        self.base_trainable
    }

    /// `[d_input, d_output]` of the layer.
    pub fn dims(&self) -> [usize; 2] {
        match &self.quantized {
            Some(quantized) => quantized.dims(),
            None => self.base.weight.dims(),
        }
    }

    /// The original weight `W0`, detached unless the base is trainable.
    fn w0(&self) -> BaseWeight<'_, B> {
        if let Some(quantized) = &self.quantized {
            return BaseWeight::Quantized(quantized);
        }
        let w0 = self.base.weight.val();
        BaseWeight::Dense(if self.base_trainable { w0 } else { w0.detach() })
    }

    fn bias(&self) -> Option<Tensor<B, 1>> {
        let bias = self.base.bias.as_ref().map(|bias| bias.val());
        if self.base_trainable {
            bias
        } else {
            bias.map(Tensor::detach)
        }
    }

    /// The layer output.
    ///
    /// Unmerged: `x·W0 + b + Σ adapter(x, W0)` on the factorized path. Merged: one matmul with
    /// the cached `W0 + ΣΔW` (inference; adapters get no gradient then).
    ///
    /// # Shapes
    /// - x: `[..., d_input]`
    /// - output: `[..., d_output]`
    ///
    /// Leading dimensions are folded into rows first, so that `[batch, tokens, d_input]` is one
    /// `[batch·tokens, d_input]` matrix product rather than `batch` small ones (burn's `linear`
    /// broadcasts the weight over the batch, and its weight gradient would then be a
    /// `[batch, d_input, d_output]` tensor summed afterwards).
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let mut dims = x.dims();
        let d_input = dims[D - 1];
        let rows = dims[..D - 1].iter().product::<usize>();
        let y = self.forward_rows(x.reshape([rows, d_input]));
        dims[D - 1] = y.dims()[1];
        y.reshape(dims)
    }

    /// [`forward`](Self::forward) on a matrix of rows.
    ///
    /// # Shapes
    /// - x: `[rows, d_input]`
    /// - output: `[rows, d_output]`
    fn forward_rows(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        if let Some(merged) = &self.merged_weight {
            return linear_as_stored(x, merged.clone(), self.bias());
        }
        if let (Some(quantized), false) = (&self.quantized, self.merged_factors.is_empty()) {
            let mut y = self.quantized_product(quantized, x.clone());
            for (p, q) in &self.merged_factors {
                y = y + x.clone().matmul(p.clone()).matmul(q.clone());
            }
            return y;
        }
        // A half-precision `W0` (crate::precision) computes its products in half precision; a
        // quantized one (crate::quant) dequantizes inside each product.
        let w0 = self.w0();
        let mut y = match &w0 {
            BaseWeight::Dense(w0) => linear_as_stored(x.clone(), w0.clone(), self.bias()),
            BaseWeight::Quantized(quantized) => self.quantized_product(quantized, x.clone()),
        };
        for adapter in &self.adapters {
            y = y + adapter.forward_on(x.clone(), &w0);
        }
        y
    }

    /// `x·W0 + b` with a quantized `W0`.
    fn quantized_product(&self, quantized: &QuantizedWeight<B>, x: Tensor<B, 2>) -> Tensor<B, 2> {
        let y = quantized.left_matmul(x);
        match self.bias() {
            Some(bias) => {
                let dtype = y.dtype();
                y + cast_to(bias, dtype).unsqueeze()
            }
            None => y,
        }
    }

    /// `W0 + ΣᵢΔWᵢ(W0)`: every update from the original weight (docs/METHOD.md §6).
    ///
    /// # Shapes
    /// - output: `[d_input, d_output]`
    pub fn merged_weight(&self) -> Tensor<B, 2> {
        merge_weight(self.w0().dense(), &self.adapters)
    }

    /// A plain `Linear` with the merged weight `W0 + ΣΔW` and the base bias; `self` keeps the
    /// original `W0`, so nothing is lost.
    pub fn merge(&self) -> Linear<B> {
        Linear {
            weight: Param::from_tensor(self.merged_weight().detach()),
            bias: self
                .base
                .bias
                .as_ref()
                .map(|bias| Param::from_tensor(bias.val().detach())),
        }
    }

    /// Consumes the layer into its merged `Linear`.
    pub fn into_merged(self) -> Linear<B> {
        self.merge()
    }

    /// Caches the merged weight so [`forward`](AdaptedLinear::forward) costs one plain matmul.
    /// On a quantized base it caches each adapter's low-rank factors instead (the base stays
    /// quantized; the forward is the quantized product plus `(x·P)·Q` per adapter, with PEANuT's
    /// `H` computed once here). A no-op when there are no adapters or the layer is already
    /// merged.
    pub fn merge_in_place(&mut self) {
        if self.is_merged() || self.adapters.is_empty() {
            return;
        }
        if let Some(quantized) = &self.quantized {
            let w0 = BaseWeight::Quantized(quantized);
            self.merged_factors = self
                .adapters
                .iter()
                .map(|adapter| {
                    let (p, q) = adapter.factors(&w0);
                    (p.detach(), q.detach())
                })
                .collect();
        } else {
            self.merged_weight = Some(self.merged_weight().detach());
        }
    }

    /// Drops the merged weight; the original `W0` was never touched, so this is exact.
    pub fn unmerge(&mut self) {
        self.merged_weight = None;
        self.merged_factors.clear();
    }

    /// Whether [`merge_in_place`](AdaptedLinear::merge_in_place) is in effect.
    pub fn is_merged(&self) -> bool {
        self.merged_weight.is_some() || !self.merged_factors.is_empty()
    }

    /// Number of adapter parameters on this layer (what trains when the base is frozen).
    pub fn num_adapter_params(&self) -> usize {
        self.adapters.iter().map(Module::num_params).sum()
    }

    /// Number of parameters that train: the adapters', plus the base's when it is unfrozen.
    pub fn num_trainable_params(&self) -> usize {
        let base = if self.base_trainable {
            self.base.num_params()
        } else {
            0
        };
        base + self.num_adapter_params()
    }
}

/// `W0 + Σ ΔWᵢ(W0)`, each update computed from the same original `w0`, so the result does not
/// depend on the order of `adapters`.
///
/// # Shapes
/// - w0: `[d_input, d_output]`
/// - output: `[d_input, d_output]`
///
/// A half-precision `w0` (see [`crate::precision`]) gets its updates computed as in training
/// and added in f32; the result is stored back in `w0`'s precision.
pub fn merge_weight<B: Backend>(w0: Tensor<B, 2>, adapters: &[Adapter<B>]) -> Tensor<B, 2> {
    if adapters.is_empty() {
        return w0;
    }
    let stored = w0.dtype();
    let base = cast_to(w0.clone(), wide(stored));
    let merged = adapters.iter().fold(base, |merged, adapter| {
        merged + adapter.delta_weight(w0.clone())
    });
    cast_to(merged, stored)
}

/// f32 for the half types, `dtype` otherwise.
fn wide(dtype: DType) -> DType {
    match dtype {
        DType::F16 | DType::BF16 => DType::F32,
        other => other,
    }
}
