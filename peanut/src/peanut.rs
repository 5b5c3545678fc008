//! The PEANuT adapter module (docs/METHOD.md §1–§3).

use burn::module::{Module, Param};
use burn::tensor::{Tensor, backend::Backend, module::linear};

use crate::activation::Activation;
use crate::config::{OutputInit, PeanutConfig};
use crate::init::{SeededRng, kaiming_uniform};
use crate::quant::BaseWeight;

/// A PEANuT adapter: a small network of the frozen weight `W0` that yields the update `ΔW`.
///
/// In burn's `[d_input, d_output]` layout (`y = x·W + b`):
///
/// ```text
/// H0 = σ(W0 · A)                 A: [d_output, rank]
/// H  = body(H0)                  P residual pairs of [rank, rank] encoders/decoders
/// ΔW = s · H · B                 B: [rank, d_output]
/// ```
///
/// with the body `push h; h = σ(h·Encᵢ)` for every encoder, then `h = σ(h·Decᵢ) + pop()` for
/// every decoder (last pushed comes back first). No biases. Create one with
/// [`PeanutConfig::init`]; attach it to a layer through
/// [`AdaptedLinear`](crate::AdaptedLinear).
#[derive(Module, Debug)]
pub struct Peanut<B: Backend> {
    /// `A: [d_output, rank]`, from the output dimension of `W0` to the hidden width.
    pub a: Param<Tensor<B, 2>>,
    /// The `P` encoders, each `[rank, rank]`.
    pub encoders: Vec<Param<Tensor<B, 2>>>,
    /// The `P` decoders, each `[rank, rank]`.
    pub decoders: Vec<Param<Tensor<B, 2>>>,
    /// `B: [rank, d_output]`, the last, purely linear map.
    pub b: Param<Tensor<B, 2>>,
    /// The nonlinearity `σ`.
    #[module(skip)]
    pub activation: Activation,
    /// The multiplier `s`.
    #[module(skip)]
    pub scaling: f64,
    /// How `B` started (kept so that [`Peanut::config`] describes the adapter whole).
    #[module(skip)]
    pub b_init: OutputInit,
}

impl<B: Backend> Peanut<B> {
    /// Draws the parameters in the creation order of docs/METHOD.md §2: A, encoders, decoders, B.
    pub(crate) fn init(
        config: &PeanutConfig,
        d_output: usize,
        seed: u64,
        device: &B::Device,
    ) -> Self {
        let rank = config.rank;
        let mut rng = SeededRng::new(seed);
        let a = kaiming_uniform(&mut rng, [d_output, rank], d_output, device);
        let mut square = || kaiming_uniform(&mut rng, [rank, rank], rank, device);
        let encoders = (0..config.pairs())
            .map(|_| Param::from_tensor(square()))
            .collect();
        let decoders = (0..config.pairs())
            .map(|_| Param::from_tensor(square()))
            .collect();
        let b = match config.b_init {
            OutputInit::Zeros => Tensor::zeros([rank, d_output], device),
            OutputInit::KaimingUniform => kaiming_uniform(&mut rng, [rank, d_output], rank, device),
        };
        Self {
            a: Param::from_tensor(a),
            encoders,
            decoders,
            b: Param::from_tensor(b),
            activation: config.activation,
            scaling: config.scaling,
            b_init: config.b_init,
        }
    }

    /// Builds an adapter from existing tensors (burn layout), for loading and for tests. Its
    /// `b_init` is the default ([`OutputInit::Zeros`]); this workspace's adapter format records
    /// it and its loader sets it, peft's format does not.
    ///
    /// # Panics
    /// When the shapes do not fit together (`a: [d_output, r]`, encoders/decoders `[r, r]` and
    /// equally many, `b: [r, d_output]`). File loaders check shapes first and return errors.
    pub fn from_tensors(
        a: Tensor<B, 2>,
        encoders: Vec<Tensor<B, 2>>,
        decoders: Vec<Tensor<B, 2>>,
        b: Tensor<B, 2>,
        activation: Activation,
        scaling: f64,
    ) -> Self {
        let [d_output, rank] = a.dims();
        assert_eq!(
            encoders.len(),
            decoders.len(),
            "PEANuT needs as many encoders as decoders"
        );
        for square in encoders.iter().chain(&decoders) {
            assert_eq!(square.dims(), [rank, rank], "encoder/decoder shape");
        }
        assert_eq!(b.dims(), [rank, d_output], "B shape");
        Self {
            a: Param::from_tensor(a),
            encoders: encoders.into_iter().map(Param::from_tensor).collect(),
            decoders: decoders.into_iter().map(Param::from_tensor).collect(),
            b: Param::from_tensor(b),
            activation,
            scaling,
            b_init: OutputInit::default(),
        }
    }

    /// The hidden width `r`.
    pub fn rank(&self) -> usize {
        self.a.dims()[1]
    }

    /// The output width `d_output` of the layer this adapter fits.
    pub fn d_output(&self) -> usize {
        self.a.dims()[0]
    }

    /// The depth in the paper's convention (linear maps, `A` and `B` included).
    pub fn depth(&self) -> usize {
        2 + 2 * self.encoders.len()
    }

    /// The configuration that describes this adapter: the one it was built from (its rank and
    /// depth are the shapes of its parameters).
    pub fn config(&self) -> PeanutConfig {
        PeanutConfig::new(self.rank())
            .with_depth(self.depth())
            .with_activation(self.activation)
            .with_scaling(self.scaling)
            .with_b_init(self.b_init)
    }

    /// `H = body(σ(W0·A))`, the hidden representation of the weight, before `B`. A
    /// half-precision `W0` (crate::precision) computes `W0·A` in its type and `H` in `A`'s.
    ///
    /// # Shapes
    /// - w0: `[d_input, d_output]`
    /// - output: `[d_input, rank]`
    pub fn hidden(&self, w0: Tensor<B, 2>) -> Tensor<B, 2> {
        self.hidden_on(&BaseWeight::Dense(w0))
    }

    /// [`Peanut::hidden`] of a base weight that may be quantized (crate::quant): `W0·A` is then
    /// computed without a float copy of `W0` kept.
    ///
    /// # Shapes
    /// - output: `[d_input, rank]`
    pub fn hidden_on(&self, w0: &BaseWeight<'_, B>) -> Tensor<B, 2> {
        let sigma = |t| self.activation.forward(t);
        let mut h = sigma(w0.times(self.a.val()));
        let mut residuals = Vec::with_capacity(self.encoders.len());
        for encoder in &self.encoders {
            residuals.push(h.clone());
            h = sigma(h.matmul(encoder.val()));
        }
        for decoder in &self.decoders {
            let residual = residuals.pop().expect("one residual per encoder");
            h = sigma(h.matmul(decoder.val())) + residual;
        }
        h
    }

    /// The update `ΔW = s·H·B`, materialized. Used for merging; training never needs it.
    ///
    /// # Shapes
    /// - w0: `[d_input, d_output]`
    /// - output: `[d_input, d_output]`
    pub fn delta_weight(&self, w0: Tensor<B, 2>) -> Tensor<B, 2> {
        self.hidden(w0)
            .matmul(self.b.val())
            .mul_scalar(self.scaling)
    }

    /// The adapter's contribution `s·((x·H)·B)` on the factorized path: `ΔW` is never built.
    ///
    /// # Shapes
    /// - x: `[..., d_input]`
    /// - w0: `[d_input, d_output]`
    /// - output: `[..., d_output]`
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>, w0: Tensor<B, 2>) -> Tensor<B, D> {
        self.forward_on(x, &BaseWeight::Dense(w0))
    }

    /// [`Peanut::forward`] on a base weight that may be quantized (crate::quant).
    ///
    /// # Shapes
    /// - x: `[..., d_input]`
    /// - output: `[..., d_output]`
    pub fn forward_on<const D: usize>(
        &self,
        x: Tensor<B, D>,
        w0: &BaseWeight<'_, B>,
    ) -> Tensor<B, D> {
        let h = self.hidden_on(w0);
        let xh = linear(x, h, None).mul_scalar(self.scaling);
        linear(xh, self.b.val(), None)
    }

    /// The adapter's contribution computed peft's way, `x·ΔW` with `ΔW` materialized. Kept for
    /// comparisons and benchmarks; [`Peanut::forward`] is the path to train on.
    ///
    /// # Shapes
    /// - x: `[..., d_input]`
    /// - w0: `[d_input, d_output]`
    /// - output: `[..., d_output]`
    pub fn forward_materialized<const D: usize>(
        &self,
        x: Tensor<B, D>,
        w0: Tensor<B, 2>,
    ) -> Tensor<B, D> {
        linear(x, self.delta_weight(w0), None)
    }
}
