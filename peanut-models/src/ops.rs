//! Memory-lean operations for the models' hot paths: [`attention`], [`rms_norm`], [`swiglu`]
//! and [`linear_cross_entropy`] (a language model's output head and loss in one).
//!
//! Composed from ordinary burn operations, each of these keeps for the backward pass every
//! intermediate of its forward: the attention scores, their masked and exponentiated copies and
//! the probabilities (four `[batch, heads, queries, keys]` tensors a layer), the squares and
//! reciprocal roots of a norm, the sigmoid and SiLU of a gate. At a real shape those dominate a
//! training step's memory (a Llama-3.2-1B step on 4 × 512 tokens kept about 10 GiB of attention
//! scores alone). On an autodiff backend registered with [`register_autodiff`], each operation
//! is instead one autodiff node that keeps only its inputs (attention: also its output and one
//! log-sum-exp per query) and recomputes the rest in its backward pass, which is written by
//! hand:
//!
//! - attention: `P = softmax(Q·Kᵀ/√d)` (masked) is recomputed from `Q`, `K` and the saved
//!   log-sum-exp; `dV = Pᵀ·dO`, `dS = P ⊙ (dO·Vᵀ − rowsum(dO ⊙ O))`, `dQ = dS·K/√d`,
//!   `dK = dSᵀ·Q/√d`;
//! - RMS norm `y = x·r·w` with `r = 1/√(mean(x²) + ε)`: `dx = r·(g⊙w − x̂·mean(g⊙w⊙x̂))` with
//!   `x̂ = x·r`, `dw = Σ_rows g⊙x̂`;
//! - SwiGLU `y = silu(a) ⊙ b`: `da = g⊙b⊙σ(a)⊙(1 + a⊙(1 − σ(a)))`, `db = g⊙silu(a)`;
//! - the head and loss `mean(lse(h·wᵀ) − (h·wᵀ)[target])` never hold the `[tokens, vocab]`
//!   logits: they are computed a block of rows at a time ([`LOSS_CHUNK`] values) in the forward
//!   pass, which keeps one log-sum-exp per row, and again in the backward pass, where
//!   `dh = (softmax − onehot)·w·g/n` (and `dw = (softmax − onehot)ᵀ·h·g/n` when `w` trains).
//!   Without autodiff this chunked forward runs too (no logits held at evaluation either).
//!
//! Values and gradients equal the composed operations' within float rounding (this module's
//! tests). Without autodiff (inference) and on an autodiff backend nobody
//! registered, the composed operations run: the same values, and the same memory as before.
//! The recomputation costs one extra `Q·Kᵀ` product per attention backward.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::sync::{OnceLock, RwLock};

use burn::backend::Autodiff;
use burn::backend::autodiff::NodeId;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::tensor::activation::{sigmoid, silu, softmax};
use burn::tensor::backend::Backend;
use burn::tensor::{Bool, IndexingUpdateOp, Int, Tensor, TensorPrimitive};
use peanut::precision::cast_to;

/// `softmax(q·kᵀ/√head_dim, masked)·v`, the positions where `mask` is `true` excluded.
///
/// Every row must keep at least one visible key (the models' masks do).
///
/// # Shapes
/// - q: `[batch, heads, queries, head_dim]`
/// - k, v: `[batch, heads, keys, head_dim]`
/// - mask: broadcastable to `[batch, heads, queries, keys]`
/// - output: `[batch, heads, queries, head_dim]`
pub fn attention<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    mask: Option<Tensor<B, 4, Bool>>,
) -> Tensor<B, 4> {
    if let Some(kernels) = registered::<B>(&q.device()) {
        return (kernels.attention)(q, k, v, mask);
    }
    attention_composed(q, k, v, mask)
}

/// `x / √(mean(x²) + ε) · weight` over the last dimension.
///
/// # Shapes
/// - x: `[..., d]`
/// - weight: `[d]`
/// - output: `[..., d]`
pub fn rms_norm<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    weight: Tensor<B, 1>,
    epsilon: f64,
) -> Tensor<B, D> {
    if let Some(kernels) = registered::<B>(&x.device()) {
        let dims = x.dims();
        let rows = x.shape().num_elements() / dims[D - 1];
        let flat = x.reshape([rows, dims[D - 1]]);
        return (kernels.rms_norm)(flat, weight, epsilon).reshape(dims);
    }
    rms_norm_composed(x, weight, epsilon)
}

/// `silu(gate) ⊙ up`, LLaMA's gated feed-forward activation.
///
/// # Shapes
/// - gate, up, output: `[..., d]` (the same shape)
pub fn swiglu<B: Backend, const D: usize>(gate: Tensor<B, D>, up: Tensor<B, D>) -> Tensor<B, D> {
    if let Some(kernels) = registered::<B>(&gate.device()) {
        let dims = gate.dims();
        let count = gate.shape().num_elements();
        let out = (kernels.swiglu)(gate.reshape([count]), up.reshape([count]));
        return out.reshape(dims);
    }
    silu(gate) * up
}

/// Logits computed at once by [`linear_cross_entropy`]'s chunks: rows × vocabulary (a 128 MiB
/// f32 block).
pub const LOSS_CHUNK: usize = 1 << 25;

/// The mean cross-entropy of the logits `h·wᵀ` against `targets`, and each row's most likely
/// class (the argmax of its logits): a language model's tied output head (`w` is the
/// `[vocab, hidden]` embedding, in any float type; the product runs in `w`'s type) and its
/// loss, without keeping the logits (see the [module docs](self)).
///
/// # Shapes
/// - h: `[rows, hidden]`
/// - w: `[vocab, hidden]`
/// - targets: `[rows]`, each `< vocab`
/// - output: the loss `[1]` and the argmax `[rows]`
pub fn linear_cross_entropy<B: Backend>(
    h: Tensor<B, 2>,
    w: Tensor<B, 2>,
    targets: Tensor<B, 1, Int>,
) -> (Tensor<B, 1>, Tensor<B, 1, Int>) {
    let device = h.device();
    if let Some(kernels) = registered::<B>(&device) {
        return (kernels.linear_cross_entropy)(h, w, targets);
    }
    if B::ad_enabled(&device) {
        // Unregistered autodiff: burn's operations (the logits are kept for the backward).
        return cross_entropy(logits_of(h, &w), targets);
    }
    let rows = h.dims()[0];
    let chunks = loss_chunks(h, &w, targets);
    let loss = (chunks.lse - chunks.picked).sum() / rows as f64;
    (loss, chunks.argmax)
}

/// burn's mean cross-entropy of `logits` against `targets`, and each row's argmax.
///
/// # Shapes
/// - logits: `[rows, classes]`
/// - targets: `[rows]`
/// - output: the loss `[1]` and the argmax `[rows]`
pub fn cross_entropy<B: Backend>(
    logits: Tensor<B, 2>,
    targets: Tensor<B, 1, Int>,
) -> LossAndArgmax<B> {
    let argmax = logits.clone().argmax(1).flatten(0, 1);
    let loss = burn::nn::loss::CrossEntropyLossConfig::new()
        .init(&logits.device())
        .forward(logits, targets);
    (loss, argmax)
}

/// `h·wᵀ` in `w`'s type, returned in `h`'s; computed as `(w·hᵀ)ᵀ`, which reads the
/// `[vocab, hidden]` matrix in its stored layout (`h·wᵀ` copies the transposed matrix first on
/// some backends).
pub(crate) fn logits_of<X: Backend>(h: Tensor<X, 2>, w: &Tensor<X, 2>) -> Tensor<X, 2> {
    let dtype = h.dtype();
    let logits = w.clone().matmul(cast_to(h, w.dtype()).transpose());
    cast_to(logits.transpose(), dtype)
}

/// Per-row results of the chunked head: log-sum-exp and target logit `[rows]`, argmax.
struct LossChunks<X: Backend> {
    lse: Tensor<X, 1>,
    picked: Tensor<X, 1>,
    argmax: Tensor<X, 1, Int>,
}

/// Rows per chunk for a vocabulary of `vocab`.
fn chunk_rows(vocab: usize) -> usize {
    // This module's tests use small chunks, so that a few rows span several.
    let chunk = if cfg!(test) { 128 } else { LOSS_CHUNK };
    (chunk / vocab.max(1)).max(1)
}

fn loss_chunks<X: Backend>(
    h: Tensor<X, 2>,
    w: &Tensor<X, 2>,
    targets: Tensor<X, 1, Int>,
) -> LossChunks<X> {
    let [rows, _] = h.dims();
    let step = chunk_rows(w.dims()[0]);
    let (mut lse, mut picked, mut argmax) = (Vec::new(), Vec::new(), Vec::new());
    for start in (0..rows).step_by(step) {
        let count = step.min(rows - start);
        let logits = logits_of(h.clone().narrow(0, start, count), w);
        let max = logits.clone().max_dim(1);
        let sum = (logits.clone() - max.clone()).exp().sum_dim(1);
        lse.push((sum.log() + max).flatten(0, 1));
        let index = targets.clone().narrow(0, start, count).reshape([count, 1]);
        picked.push(logits.clone().gather(1, index).flatten(0, 1));
        argmax.push(logits.argmax(1).flatten(0, 1));
    }
    LossChunks {
        lse: Tensor::cat(lse, 0),
        picked: Tensor::cat(picked, 0),
        argmax: Tensor::cat(argmax, 0),
    }
}

fn attention_composed<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    mask: Option<Tensor<B, 4, Bool>>,
) -> Tensor<B, 4> {
    let scores = scores(q, k);
    let scores = match mask {
        Some(mask) => scores.mask_fill(mask, f32::NEG_INFINITY),
        None => scores,
    };
    softmax(scores, 3).matmul(v)
}

/// `q·kᵀ/√head_dim`.
fn scores<B: Backend>(q: Tensor<B, 4>, k: Tensor<B, 4>) -> Tensor<B, 4> {
    let head_dim = q.dims()[3];
    q.matmul(k.swap_dims(2, 3)) / (head_dim as f64).sqrt()
}

fn rms_norm_composed<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    weight: Tensor<B, 1>,
    epsilon: f64,
) -> Tensor<B, D> {
    let mean_square = x.clone().powi_scalar(2).mean_dim(D - 1);
    let normalized = x * (mean_square + epsilon).sqrt().recip();
    normalized * weight.unsqueeze()
}

/// An attention mask, when there is one.
type Mask<B> = Option<Tensor<B, 4, Bool>>;

/// A loss `[1]` and each row's argmax `[rows]`.
pub type LossAndArgmax<B> = (Tensor<B, 1>, Tensor<B, 1, Int>);

/// [`attention`]'s signature.
type AttentionFn<B> = fn(Tensor<B, 4>, Tensor<B, 4>, Tensor<B, 4>, Mask<B>) -> Tensor<B, 4>;

/// [`linear_cross_entropy`]'s signature.
type LossFn<B> = fn(Tensor<B, 2>, Tensor<B, 2>, Tensor<B, 1, Int>) -> LossAndArgmax<B>;

/// The operations of one autodiff backend.
struct Kernels<B: Backend> {
    attention: AttentionFn<B>,
    rms_norm: fn(Tensor<B, 2>, Tensor<B, 1>, f64) -> Tensor<B, 2>,
    swiglu: fn(Tensor<B, 1>, Tensor<B, 1>) -> Tensor<B, 1>,
    linear_cross_entropy: LossFn<B>,
}

impl<B: Backend> Clone for Kernels<B> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<B: Backend> Copy for Kernels<B> {}

fn registry() -> &'static RwLock<HashMap<TypeId, Box<dyn Any + Send + Sync>>> {
    static REGISTRY: OnceLock<RwLock<HashMap<TypeId, Box<dyn Any + Send + Sync>>>> =
        OnceLock::new();
    REGISTRY.get_or_init(Default::default)
}

/// `B`'s registered operations, when `B` tracks gradients on `device` and is registered.
fn registered<B: Backend>(device: &B::Device) -> Option<Kernels<B>> {
    if !B::ad_enabled(device) {
        return None;
    }
    let registry = registry()
        .read()
        .unwrap_or_else(|poison| poison.into_inner());
    registry
        .get(&TypeId::of::<B>())?
        .downcast_ref::<Kernels<B>>()
        .copied()
}

/// Makes [`attention`], [`rms_norm`] and [`swiglu`] on `Autodiff<I, C>` autodiff operations that
/// keep only their inputs for the backward pass (see the [module docs](self)), and registers
/// `peanut`'s quantized products too ([`peanut::quant::register_autodiff`]). Idempotent; call it
/// once before training, from any thread.
pub fn register_autodiff<I: Backend, C: CheckpointStrategy>() {
    peanut::quant::register_autodiff::<I, C>();
    let mut registry = registry()
        .write()
        .unwrap_or_else(|poison| poison.into_inner());
    registry
        .entry(TypeId::of::<Autodiff<I, C>>())
        .or_insert_with(|| {
            Box::new(Kernels::<Autodiff<I, C>> {
                attention: autodiff_attention::<I, C>,
                rms_norm: autodiff_rms_norm::<I, C>,
                swiglu: autodiff_swiglu::<I, C>,
                linear_cross_entropy: autodiff_linear_cross_entropy::<I, C>,
            })
        });
}

/// Whether [`register_autodiff`] was called for `B`.
pub fn is_registered<B: Backend>() -> bool {
    let registry = registry()
        .read()
        .unwrap_or_else(|poison| poison.into_inner());
    registry
        .get(&TypeId::of::<B>())
        .is_some_and(|kernels| kernels.is::<Kernels<B>>())
}

fn inner<I: Backend, const D: usize>(primitive: I::FloatTensorPrimitive) -> Tensor<I, D> {
    Tensor::from_primitive(TensorPrimitive::Float(primitive))
}

fn primitive<I: Backend, const D: usize>(tensor: Tensor<I, D>) -> I::FloatTensorPrimitive {
    tensor.into_primitive().tensor()
}

/// The node of each parent of `ops` that tracks gradients.
fn parent_ids<S, const N: usize>(ops: &Ops<S, N>) -> [Option<NodeId>; N] {
    ops.parents
        .each_ref()
        .map(|parent| parent.as_ref().map(|node| node.id))
}

/// The output of an operation of this module: tracked, with the backward state `state` builds,
/// when a parent tracks gradients; untracked otherwise (and `state` never runs).
fn finish<I, C, O, S, const N: usize, const D: usize>(
    kind: OpsKind<O, I, S, C, N>,
    state: impl FnOnce() -> S,
    output: I::FloatTensorPrimitive,
) -> Tensor<Autodiff<I, C>, D>
where
    I: Backend,
    C: CheckpointStrategy,
    S: Clone + Send + std::fmt::Debug + 'static,
    O: Backward<I, N, State = S>,
{
    let output = match kind {
        OpsKind::Tracked(prep) => prep.finish(state(), output),
        OpsKind::UnTracked(prep) => prep.finish(output),
    };
    Tensor::from_primitive(TensorPrimitive::Float(output))
}

/// Registers `grad` for `parent` when it is tracked.
fn register<I: Backend, const D: usize>(
    grads: &mut Gradients,
    parent: Option<NodeId>,
    grad: impl FnOnce() -> Tensor<I, D>,
) {
    if let Some(id) = parent {
        grads.register::<I>(id, primitive(grad()));
    }
}

#[derive(Debug, Clone)]
struct AttentionState<I: Backend> {
    q: I::FloatTensorPrimitive,
    k: I::FloatTensorPrimitive,
    v: I::FloatTensorPrimitive,
    output: I::FloatTensorPrimitive,
    /// `log Σ_keys exp(score)` per query, `[batch, heads, queries, 1]`.
    lse: I::FloatTensorPrimitive,
    mask: Option<I::BoolTensorPrimitive>,
}

#[derive(Debug)]
struct AttentionBackward;

impl<I: Backend> Backward<I, 3> for AttentionBackward {
    type State = AttentionState<I>;

    fn backward(
        self,
        ops: Ops<Self::State, 3>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let [q_parent, k_parent, v_parent] = parent_ids(&ops);
        let state = ops.state;
        let grad: Tensor<I, 4> = inner(grads.consume::<I>(&ops.node));
        let q: Tensor<I, 4> = inner(state.q);
        let k: Tensor<I, 4> = inner(state.k);
        let v: Tensor<I, 4> = inner(state.v);
        let head_dim = q.dims()[3];
        let mut scores = scores(q.clone(), k.clone());
        if let Some(mask) = state.mask {
            scores = scores.mask_fill(Tensor::from_primitive(mask), f32::NEG_INFINITY);
        }
        let p = (scores - inner::<I, 4>(state.lse)).exp();
        register(grads, v_parent, || {
            p.clone().swap_dims(2, 3).matmul(grad.clone())
        });
        if q_parent.is_none() && k_parent.is_none() {
            return;
        }
        let delta = (grad.clone() * inner::<I, 4>(state.output)).sum_dim(3);
        let dp = grad.matmul(v.swap_dims(2, 3));
        let ds = p * (dp - delta) / (head_dim as f64).sqrt();
        register(grads, q_parent, || ds.clone().matmul(k));
        register(grads, k_parent, || ds.swap_dims(2, 3).matmul(q));
    }
}

fn autodiff_attention<I: Backend, C: CheckpointStrategy>(
    q: Tensor<Autodiff<I, C>, 4>,
    k: Tensor<Autodiff<I, C>, 4>,
    v: Tensor<Autodiff<I, C>, 4>,
    mask: Option<Tensor<Autodiff<I, C>, 4, Bool>>,
) -> Tensor<Autodiff<I, C>, 4> {
    let (q, k, v) = (
        q.into_primitive().tensor(),
        k.into_primitive().tensor(),
        v.into_primitive().tensor(),
    );
    let mask = mask.map(|mask| mask.into_primitive());
    let (qi, ki, vi): (Tensor<I, 4>, Tensor<I, 4>, Tensor<I, 4>) = (
        inner(q.primitive.clone()),
        inner(k.primitive.clone()),
        inner(v.primitive.clone()),
    );
    let mut scores = scores(qi, ki);
    if let Some(mask) = &mask {
        scores = scores.mask_fill(Tensor::from_primitive(mask.clone()), f32::NEG_INFINITY);
    }
    let max = scores.clone().max_dim(3);
    let exp = (scores - max.clone()).exp();
    let sum = exp.clone().sum_dim(3);
    let output = exp.matmul(vi) / sum.clone();
    let output = primitive(output);
    let kind = AttentionBackward
        .prepare::<C>([q.node.clone(), k.node.clone(), v.node.clone()])
        .compute_bound()
        .stateful();
    let saved = output.clone();
    let state = || AttentionState {
        q: q.primitive,
        k: k.primitive,
        v: v.primitive,
        output: saved,
        lse: primitive(max + sum.log()),
        mask,
    };
    finish(kind, state, output)
}

#[derive(Debug, Clone)]
struct RmsNormState<I: Backend> {
    x: I::FloatTensorPrimitive,
    weight: I::FloatTensorPrimitive,
    /// `1/√(mean(x²) + ε)` per row, `[rows, 1]`.
    reciprocal: I::FloatTensorPrimitive,
}

#[derive(Debug)]
struct RmsNormBackward;

impl<I: Backend> Backward<I, 2> for RmsNormBackward {
    type State = RmsNormState<I>;

    fn backward(
        self,
        ops: Ops<Self::State, 2>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let [x_parent, weight_parent] = parent_ids(&ops);
        let state = ops.state;
        let grad: Tensor<I, 2> = inner(grads.consume::<I>(&ops.node));
        let reciprocal: Tensor<I, 2> = inner(state.reciprocal);
        let normalized = inner::<I, 2>(state.x) * reciprocal.clone();
        register(grads, weight_parent, || {
            (grad.clone() * normalized.clone())
                .sum_dim(0)
                .reshape([normalized.dims()[1]])
        });
        register(grads, x_parent, || {
            let weighted = grad * inner::<I, 1>(state.weight).unsqueeze();
            let projection = (weighted.clone() * normalized.clone()).mean_dim(1);
            (weighted - normalized * projection) * reciprocal
        });
    }
}

fn autodiff_rms_norm<I: Backend, C: CheckpointStrategy>(
    x: Tensor<Autodiff<I, C>, 2>,
    weight: Tensor<Autodiff<I, C>, 1>,
    epsilon: f64,
) -> Tensor<Autodiff<I, C>, 2> {
    let (x, weight) = (
        x.into_primitive().tensor(),
        weight.into_primitive().tensor(),
    );
    let xi: Tensor<I, 2> = inner(x.primitive.clone());
    let wi: Tensor<I, 1> = inner(weight.primitive.clone());
    let mean_square = xi.clone().powi_scalar(2).mean_dim(1);
    let reciprocal = (mean_square + epsilon).sqrt().recip();
    let output = primitive(xi * reciprocal.clone() * wi.unsqueeze());
    let kind = RmsNormBackward
        .prepare::<C>([x.node.clone(), weight.node.clone()])
        .compute_bound()
        .stateful();
    let state = || RmsNormState {
        x: x.primitive,
        weight: weight.primitive,
        reciprocal: primitive(reciprocal),
    };
    finish(kind, state, output)
}

#[derive(Debug, Clone)]
struct SwigluState<I: Backend> {
    gate: I::FloatTensorPrimitive,
    up: I::FloatTensorPrimitive,
}

#[derive(Debug)]
struct SwigluBackward;

impl<I: Backend> Backward<I, 2> for SwigluBackward {
    type State = SwigluState<I>;

    fn backward(
        self,
        ops: Ops<Self::State, 2>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let [gate_parent, up_parent] = parent_ids(&ops);
        let state = ops.state;
        let grad: Tensor<I, 1> = inner(grads.consume::<I>(&ops.node));
        let gate: Tensor<I, 1> = inner(state.gate);
        let sig = sigmoid(gate.clone());
        register(grads, up_parent, || {
            grad.clone() * gate.clone() * sig.clone()
        });
        register(grads, gate_parent, || {
            let slope = (gate * (sig.clone().neg() + 1.0) + 1.0) * sig;
            grad * inner::<I, 1>(state.up) * slope
        });
    }
}

fn autodiff_swiglu<I: Backend, C: CheckpointStrategy>(
    gate: Tensor<Autodiff<I, C>, 1>,
    up: Tensor<Autodiff<I, C>, 1>,
) -> Tensor<Autodiff<I, C>, 1> {
    let (gate, up) = (gate.into_primitive().tensor(), up.into_primitive().tensor());
    let output = silu(inner::<I, 1>(gate.primitive.clone())) * inner::<I, 1>(up.primitive.clone());
    let output = primitive(output);
    let kind = SwigluBackward
        .prepare::<C>([gate.node.clone(), up.node.clone()])
        .compute_bound()
        .stateful();
    let state = || SwigluState {
        gate: gate.primitive,
        up: up.primitive,
    };
    finish(kind, state, output)
}

#[derive(Debug, Clone)]
struct LossState<I: Backend> {
    h: I::FloatTensorPrimitive,
    w: I::FloatTensorPrimitive,
    targets: I::IntTensorPrimitive,
    lse: I::FloatTensorPrimitive,
}

#[derive(Debug)]
struct LossBackward;

impl<I: Backend> Backward<I, 2> for LossBackward {
    type State = LossState<I>;

    fn backward(
        self,
        ops: Ops<Self::State, 2>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let [h_parent, w_parent] = parent_ids(&ops);
        let state = ops.state;
        let grad: Tensor<I, 1> = inner(grads.consume::<I>(&ops.node));
        let h: Tensor<I, 2> = inner(state.h);
        let w: Tensor<I, 2> = inner(state.w);
        let targets: Tensor<I, 1, Int> = Tensor::from_primitive(state.targets);
        let lse: Tensor<I, 1> = inner(state.lse);
        let [rows, _] = h.dims();
        let scale = (grad / rows as f64).reshape([1, 1]);
        let step = chunk_rows(w.dims()[0]);
        let (mut dh, mut dw) = (Vec::new(), None::<Tensor<I, 2>>);
        for start in (0..rows).step_by(step) {
            let count = step.min(rows - start);
            let hc = h.clone().narrow(0, start, count);
            let logits = logits_of(hc.clone(), &w);
            let shift = lse.clone().narrow(0, start, count).reshape([count, 1]);
            let index = targets.clone().narrow(0, start, count).reshape([count, 1]);
            let minus_one = Tensor::<I, 2>::full([count, 1], -1.0, &logits.device());
            let dlogits =
                (logits - shift)
                    .exp()
                    .scatter(1, index, minus_one, IndexingUpdateOp::Add)
                    * scale.clone();
            if w_parent.is_some() {
                let part = cast_to(dlogits.clone(), w.dtype())
                    .transpose()
                    .matmul(cast_to(hc, w.dtype()));
                dw = Some(match dw {
                    Some(sum) => sum + part,
                    None => part,
                });
            }
            if h_parent.is_some() {
                let part = cast_to(dlogits, w.dtype()).matmul(w.clone());
                dh.push(cast_to(part, h.dtype()));
            }
        }
        register(grads, h_parent, || Tensor::cat(dh, 0));
        if let Some(dw) = dw {
            register(grads, w_parent, || dw);
        }
    }
}

fn autodiff_linear_cross_entropy<I: Backend, C: CheckpointStrategy>(
    h: Tensor<Autodiff<I, C>, 2>,
    w: Tensor<Autodiff<I, C>, 2>,
    targets: Tensor<Autodiff<I, C>, 1, Int>,
) -> LossAndArgmax<Autodiff<I, C>> {
    let (h, w) = (h.into_primitive().tensor(), w.into_primitive().tensor());
    let targets: Tensor<I, 1, Int> = Tensor::from_primitive(targets.into_primitive());
    let (hi, wi): (Tensor<I, 2>, Tensor<I, 2>) =
        (inner(h.primitive.clone()), inner(w.primitive.clone()));
    let rows = hi.dims()[0];
    let chunks = loss_chunks(hi, &wi, targets.clone());
    let loss = primitive((chunks.lse.clone() - chunks.picked).sum() / rows as f64);
    let kind = LossBackward
        .prepare::<C>([h.node.clone(), w.node.clone()])
        .compute_bound()
        .stateful();
    let state = || LossState {
        h: h.primitive,
        w: w.primitive,
        targets: targets.into_primitive(),
        lse: primitive(chunks.lse),
    };
    let argmax = Tensor::from_primitive(chunks.argmax.into_primitive());
    (finish(kind, state, loss), argmax)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::NdArray;
    use burn::backend::autodiff::checkpoint::strategy::{BalancedCheckpointing, NoCheckpointing};
    use burn::tensor::TensorData;
    use burn::tensor::backend::AutodiffBackend;
    use peanut::init::SeededRng;

    type Cpu = NdArray<f32>;

    fn random<B: Backend, const D: usize>(shape: [usize; D], seed: u64) -> Tensor<B, D> {
        let mut rng = SeededRng::new(seed);
        let count = shape.iter().product();
        let values: Vec<f32> = (0..count).map(|_| rng.uniform(-2.0, 2.0) as f32).collect();
        Tensor::from_data(TensorData::new(values, shape), &Default::default())
    }

    fn values<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
        t.into_data().convert::<f32>().into_vec::<f32>().unwrap()
    }

    fn assert_close(a: &[f32], b: &[f32], what: &str) {
        assert_eq!(a.len(), b.len(), "{what}: lengths");
        let scale = b.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!((x - y).abs() <= 2e-5 * scale, "{what}[{i}]: {x} vs {y}");
        }
    }

    /// The output and the gradient of every tracked input of `op(inputs)`, the output weighted
    /// by a fixed random cotangent.
    fn output_and_grads<B: AutodiffBackend, const D: usize, const N: usize, const O: usize>(
        inputs: [Tensor<B, D>; N],
        tracked: [bool; N],
        op: impl FnOnce([Tensor<B, D>; N]) -> Tensor<B, O>,
    ) -> Vec<Vec<f32>> {
        let mut tracked_inputs = Vec::new();
        let inputs: Vec<Tensor<B, D>> = inputs
            .into_iter()
            .zip(tracked)
            .map(|(t, tracked)| {
                let t = if tracked { t.require_grad() } else { t };
                tracked_inputs.push(t.clone());
                t
            })
            .collect();
        let output = op(inputs.try_into().unwrap());
        let cotangent = random::<B, O>(output.dims(), 99);
        let grads = (output.clone() * cotangent).sum().backward();
        let mut all = vec![values(output)];
        for (t, tracked) in tracked_inputs.into_iter().zip(tracked) {
            if tracked {
                all.push(values(t.grad(&grads).expect("a gradient")));
            }
        }
        all
    }

    fn compare(fused: Vec<Vec<f32>>, composed: Vec<Vec<f32>>, what: &str) {
        assert_eq!(fused.len(), composed.len(), "{what}");
        for (i, (a, b)) in fused.iter().zip(&composed).enumerate() {
            assert_close(a, b, &format!("{what} #{i}"));
        }
    }

    /// A causal mask with one left-padded row, as `attention_mask` builds it.
    fn mask<B: Backend>(len: usize, total: usize) -> Tensor<B, 4, Bool> {
        crate::llama::attention::attention_mask(len, total, &[0, 2], &Default::default())
    }

    fn attention_cases<B: AutodiffBackend>() {
        assert!(is_registered::<B>());
        // Grouped-query shapes with a KV past (queries < keys), a mask, and each subset of
        // tracked inputs the models produce.
        for tracked in [
            [true, true, true],
            [true, false, true],
            [false, false, true],
        ] {
            let q = random::<B, 4>([2, 2, 6, 4], 1);
            let k = random::<B, 4>([2, 2, 5, 4], 2);
            let v = random::<B, 4>([2, 2, 5, 4], 3);
            // Two query heads per key head, stacked along the query axis (as LlamaAttention).
            let m = || Some(mask::<B>(3, 5).repeat_dim(2, 2));
            let fused =
                output_and_grads([q.clone(), k.clone(), v.clone()], tracked, |[q, k, v]| {
                    attention(q, k, v, m())
                });
            let composed = output_and_grads([q, k, v], tracked, |[q, k, v]| {
                attention_composed(q, k, v, m())
            });
            compare(fused, composed, &format!("masked attention {tracked:?}"));
        }
        let [q, k, v] = [4, 5, 6].map(|seed| random::<B, 4>([1, 3, 7, 8], seed));
        let fused = output_and_grads([q.clone(), k.clone(), v.clone()], [true; 3], |[q, k, v]| {
            attention(q, k, v, None)
        });
        let composed = output_and_grads([q, k, v], [true; 3], |[q, k, v]| {
            attention_composed(q, k, v, None)
        });
        compare(fused, composed, "attention");
    }

    fn norm_and_gate_cases<B: AutodiffBackend>() {
        for tracked in [[true, true], [true, false], [false, true]] {
            let x = random::<B, 3>([2, 3, 8], 7);
            let w = random::<B, 1>([8], 8);
            let fused = output_and_grads([x.clone()], [tracked[0]], |[x]| {
                let w = if tracked[1] {
                    w.clone().require_grad()
                } else {
                    w.clone()
                };
                rms_norm(x, w, 1e-5)
            });
            let composed = output_and_grads([x], [tracked[0]], |[x]| {
                let w = if tracked[1] {
                    w.clone().require_grad()
                } else {
                    w.clone()
                };
                rms_norm_composed(x, w, 1e-5)
            });
            compare(fused, composed, &format!("rms norm {tracked:?}"));
            let [gate, up] = [9, 10].map(|seed| random::<B, 3>([2, 3, 8], seed));
            let fused =
                output_and_grads([gate.clone(), up.clone()], tracked, |[g, u]| swiglu(g, u));
            let composed = output_and_grads([gate, up], tracked, |[g, u]| silu(g) * u);
            compare(fused, composed, &format!("swiglu {tracked:?}"));
        }
    }

    #[test]
    fn registered_operations_equal_the_composed_ones_with_gradients() {
        register_autodiff::<Cpu, NoCheckpointing>();
        register_autodiff::<Cpu, BalancedCheckpointing>();
        assert!(peanut::quant::is_registered::<Autodiff<Cpu>>());
        attention_cases::<Autodiff<Cpu>>();
        attention_cases::<Autodiff<Cpu, BalancedCheckpointing>>();
        norm_and_gate_cases::<Autodiff<Cpu>>();
        norm_and_gate_cases::<Autodiff<Cpu, BalancedCheckpointing>>();
    }

    /// `linear_cross_entropy` against burn's loss on the full logits: loss, argmax, and the
    /// gradients of `h` and (when it trains) `w`, over several chunks with a short last one.
    fn loss_cases<B: AutodiffBackend>() {
        let (rows, vocab, width) = (chunk_rows(40) * 2 + 3, 40, 6);
        for w_trains in [false, true] {
            let h = random::<B, 2>([rows, width], 21).require_grad();
            let w = random::<B, 2>([vocab, width], 22);
            let w = if w_trains { w.require_grad() } else { w };
            let ids: Vec<i64> = (0..rows as i64)
                .map(|i| (i * 7 + 3) % vocab as i64)
                .collect();
            let targets =
                Tensor::<B, 1, Int>::from_data(TensorData::new(ids, [rows]), &Default::default());
            let (loss, argmax) = linear_cross_entropy(h.clone(), w.clone(), targets.clone());
            let logits = h.clone().matmul(w.clone().transpose());
            let want_argmax = logits.clone().argmax(1).flatten::<1>(0, 1);
            let want = burn::nn::loss::CrossEntropyLossConfig::new()
                .init(&Default::default())
                .forward(logits, targets);
            assert_eq!(
                argmax.into_data().convert::<i64>(),
                want_argmax.into_data().convert::<i64>()
            );
            let grads = (loss.clone() * 3.0).backward();
            let grads_want = (want.clone() * 3.0).backward();
            assert_close(&values(loss), &values(want), "loss");
            assert_close(
                &values(h.grad(&grads).unwrap()),
                &values(h.grad(&grads_want).unwrap()),
                "dh",
            );
            if w_trains {
                assert_close(
                    &values(w.grad(&grads).unwrap()),
                    &values(w.grad(&grads_want).unwrap()),
                    "dw",
                );
            }
        }
    }

    #[test]
    fn the_chunked_head_loss_equals_burns_loss_on_the_full_logits() {
        register_autodiff::<Cpu, NoCheckpointing>();
        loss_cases::<Autodiff<Cpu>>();
        // Unregistered: burn's operations, the same results.
        loss_cases::<Autodiff<NdArray<f64>>>();
        // Without autodiff the chunked forward runs.
        let h = random::<Cpu, 2>([5, 4], 31);
        let w = random::<Cpu, 2>([9, 4], 32);
        let targets = Tensor::<Cpu, 1, Int>::from_data(
            TensorData::new(vec![0i64, 8, 3, 3, 1], [5]),
            &Default::default(),
        );
        let (loss, _) = linear_cross_entropy(h.clone(), w.clone(), targets.clone());
        let want = burn::nn::loss::CrossEntropyLossConfig::new()
            .init(&Default::default())
            .forward(h.matmul(w.transpose()), targets);
        assert_close(&values(loss), &values(want), "inference loss");
    }

    #[test]
    fn a_norm_weight_gradient_reaches_the_parameter() {
        register_autodiff::<Cpu, NoCheckpointing>();
        type B = Autodiff<Cpu>;
        let x = random::<B, 2>([4, 8], 11);
        let grads_of = |fused: bool| {
            let w = random::<B, 1>([8], 12).require_grad();
            let y = if fused {
                rms_norm(x.clone(), w.clone(), 1e-6)
            } else {
                rms_norm_composed(x.clone(), w.clone(), 1e-6)
            };
            let grads = (y * random::<B, 2>([4, 8], 13)).sum().backward();
            values(w.grad(&grads).unwrap())
        };
        assert_close(&grads_of(true), &grads_of(false), "weight gradient");
    }

    #[test]
    fn without_autodiff_the_composed_operations_run() {
        let [q, k, v] = [1, 2, 3].map(|seed| random::<Cpu, 4>([1, 2, 4, 4], seed));
        assert!(!is_registered::<Cpu>());
        let a = values(attention(q.clone(), k.clone(), v.clone(), None));
        assert_eq!(a, values(attention_composed(q, k, v, None)));
    }
}
