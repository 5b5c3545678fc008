//! Where a model's weights come from while it is built: a Hugging Face checkpoint, or seeded
//! random numbers (presets, benchmarks, tests). One build function per module serves both.

use burn::module::Param;
use burn::nn::Linear;
use burn::tensor::{Tensor, TensorData, backend::Backend};
use peanut::AdaptedLinear;
use peanut::init::SeededRng;
use peanut::{FrozenStorage, Precision, Quantization, QuantizedWeight};

use crate::checkpoint::Checkpoint;
use crate::error::Result;

/// How a tensor starts when it is drawn rather than read.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Init {
    Zeros,
    Ones,
    /// `U(−bound, bound)`.
    Uniform(f64),
    /// `N(0, std²)` truncated to `[−2, 2]` (PyTorch's `trunc_normal_` with its default
    /// bounds, which transformers uses for new heads).
    TruncatedNormal(f64),
}

enum Weights<'a> {
    Random(SeededRng),
    Checkpoint(&'a Checkpoint),
}

/// Weights keyed by their Hugging Face name, in PyTorch's layout.
pub(crate) struct Source<'a, B: Backend> {
    weights: Weights<'a>,
    device: B::Device,
    /// The type linear weights and 2-D parameters are stored in.
    precision: Precision,
    /// The format linear weights are quantized in, when they are (heads never are).
    quantization: Option<Quantization>,
}

impl<'a, B: Backend> Source<'a, B> {
    /// Draws every tensor from `seed`.
    pub fn random(seed: u64, device: &B::Device) -> Self {
        Self {
            weights: Weights::Random(SeededRng::new(seed)),
            device: device.clone(),
            precision: Precision::F32,
            quantization: None,
        }
    }

    /// Reads every tensor from `checkpoint`.
    pub fn checkpoint(checkpoint: &'a Checkpoint, device: &B::Device) -> Self {
        Self {
            weights: Weights::Checkpoint(checkpoint),
            device: device.clone(),
            precision: Precision::F32,
            quantization: None,
        }
    }

    /// Stores linear weights and 2-D parameters (embeddings) in `precision`, each cast as it is
    /// read.
    pub fn with_precision(mut self, precision: Precision) -> Self {
        self.precision = precision;
        self
    }

    /// Stores frozen matrices as `storage` says: linear weights quantized as they are read
    /// (one layer at a time in f32) when it quantizes, other matrices in its precision.
    pub fn with_storage(mut self, storage: impl Into<FrozenStorage>) -> Self {
        let storage = storage.into();
        self.precision = storage.precision;
        self.quantization = storage.quantization;
        self
    }

    /// `tensor` in the source's precision when it is a matrix.
    fn stored<const D: usize>(&self, tensor: Tensor<B, D>) -> Tensor<B, D> {
        if D == 2 && self.precision != Precision::F32 {
            tensor.cast(self.precision.dtype())
        } else {
            tensor
        }
    }

    /// The checkpoint, when reading one.
    pub fn as_checkpoint(&self) -> Option<&'a Checkpoint> {
        match self.weights {
            Weights::Checkpoint(checkpoint) => Some(checkpoint),
            Weights::Random(_) => None,
        }
    }

    /// `key` as a tensor of `shape` (checkpoint layout).
    pub fn tensor<const D: usize>(
        &mut self,
        key: &str,
        shape: [usize; D],
        init: Init,
    ) -> Result<Tensor<B, D>> {
        match &mut self.weights {
            Weights::Checkpoint(checkpoint) => checkpoint.tensor(key, shape, &self.device),
            Weights::Random(rng) => Ok(draw(rng, shape, init, &self.device)),
        }
    }

    /// `key` as a frozen parameter.
    pub fn param<const D: usize>(
        &mut self,
        key: &str,
        shape: [usize; D],
        init: Init,
    ) -> Result<Param<Tensor<B, D>>> {
        let tensor = self.tensor(key, shape, init)?;
        let tensor = self.stored(tensor);
        Ok(Param::from_tensor(tensor).set_require_grad(false))
    }

    /// A classifier head `prefix` (weight and bias) as [`Source::linear`] reads it from a
    /// checkpoint; drawn fresh, as transformers draws a new head: weight `N(0, std²)`
    /// (truncated, see [`Init::TruncatedNormal`]), bias 0.
    pub fn head(
        &mut self,
        prefix: &str,
        d_input: usize,
        d_output: usize,
        std: f64,
    ) -> Result<AdaptedLinear<B>> {
        let Weights::Random(rng) = &mut self.weights else {
            // A head trains: it is read as it is stored, never quantized.
            let quantization = self.quantization.take();
            let head = self.linear(prefix, d_input, d_output, true);
            self.quantization = quantization;
            return head;
        };
        let weight = draw(
            rng,
            [d_input, d_output],
            Init::TruncatedNormal(std),
            &self.device,
        );
        let bias = draw(rng, [d_output], Init::Zeros, &self.device);
        let base = Linear {
            weight: Param::from_tensor(self.stored(weight)),
            bias: Some(Param::from_tensor(bias)),
        };
        Ok(AdaptedLinear::new(base))
    }

    /// The linear `prefix.weight` (`[d_output, d_input]` on disk, transposed to burn's
    /// `[d_input, d_output]`) and `prefix.bias` when `bias`, frozen in an [`AdaptedLinear`].
    pub fn linear(
        &mut self,
        prefix: &str,
        d_input: usize,
        d_output: usize,
        bias: bool,
    ) -> Result<AdaptedLinear<B>> {
        let bound = 1.0 / (d_input.max(1) as f64).sqrt();
        let weight = match &mut self.weights {
            Weights::Checkpoint(checkpoint) => {
                let key = format!("{prefix}.weight");
                let stored: Tensor<B, 2> =
                    checkpoint.tensor(&key, [d_output, d_input], &self.device)?;
                transpose_contiguous(stored)
            }
            Weights::Random(rng) => {
                draw(rng, [d_input, d_output], Init::Uniform(bound), &self.device)
            }
        };
        let bias = if bias {
            let key = format!("{prefix}.bias");
            Some(Param::from_tensor(self.tensor(
                &key,
                [d_output],
                Init::Uniform(bound),
            )?))
        } else {
            None
        };
        if let Some(format) = self.quantization {
            let quantized = QuantizedWeight::quantize(weight, format).map_err(|source| {
                crate::error::ModelError::Quantize {
                    key: format!("{prefix}.weight"),
                    source,
                }
            })?;
            return Ok(AdaptedLinear::from_quantized(quantized, bias));
        }
        let base = Linear {
            weight: Param::from_tensor(self.stored(weight)),
            bias,
        };
        Ok(AdaptedLinear::new(base))
    }
}

/// `tensorᵀ` laid out contiguously (burn's `transpose` is a strided view; matmuls on it are
/// slower on some backends).
pub(crate) fn transpose_contiguous<B: Backend>(tensor: Tensor<B, 2>) -> Tensor<B, 2> {
    let device = tensor.device();
    let [rows, cols] = tensor.dims();
    let values: Vec<f32> = tensor
        .into_data()
        .convert::<f32>()
        .into_vec()
        .expect("float tensor");
    let mut out = vec![0f32; rows * cols];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = values[r * cols + c];
        }
    }
    Tensor::from_data(TensorData::new(out, [cols, rows]), &device)
}

fn draw<B: Backend, const D: usize>(
    rng: &mut SeededRng,
    shape: [usize; D],
    init: Init,
    device: &B::Device,
) -> Tensor<B, D> {
    let count = shape.iter().product();
    let values: Vec<f32> = match init {
        Init::Zeros => vec![0.0; count],
        Init::Ones => vec![1.0; count],
        Init::Uniform(bound) => (0..count)
            .map(|_| rng.uniform(-bound, bound) as f32)
            .collect(),
        Init::TruncatedNormal(std) => (0..count)
            .map(|_| {
                loop {
                    // Box–Muller, redrawn outside [−2, 2].
                    let u1 = rng.next_f64().max(f64::MIN_POSITIVE);
                    let u2 = rng.next_f64();
                    let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos() * std;
                    if (-2.0..=2.0).contains(&z) {
                        break z as f32;
                    }
                }
            })
            .collect(),
    };
    Tensor::from_data(TensorData::new(values, shape), device)
}
