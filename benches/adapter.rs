//! Forward + backward of one adapted 768×768 linear layer (r = 8) at N = 6304 tokens (a ViT-B
//! batch, 32 × 197) and N = 256, for: the frozen base alone, PEANuT on the factorized path,
//! PEANuT materialized (peft's way), LoRA, and full fine-tuning. Plus the frozen-base matmul rate
//! in GFLOP/s (criterion's "elem/s" with one element per FLOP).
//!
//! ```text
//! cargo bench --bench adapter                      # ndarray (CI's backend)
//! cargo bench --bench adapter --features flex      # burn's flex backend (gemm, AVX-512)
//! cargo bench --bench adapter --features candle    # burn's candle backend
//! OPENBLAS_CORETYPE=SkylakeX cargo bench --bench adapter --features openblas   # libopenblas-dev
//! ```
//!
//! `PEANUT_BENCH_QUICK=1` runs only N = 256 (a smoke run).

use burn::backend::Autodiff;
use burn::module::Param;
use burn::nn::Linear;
use burn::tensor::{Distribution, Tensor, backend::Backend, module::linear};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use peanut::{AdaptedLinear, Adapter, AdapterConfig, LoraConfig, OutputInit, PeanutConfig};

#[cfg(feature = "flex")]
type Inner = burn::backend::Flex;
#[cfg(all(feature = "candle", not(feature = "flex")))]
type Inner = burn::backend::Candle<f32>;
#[cfg(not(any(feature = "flex", feature = "candle")))]
type Inner = burn::backend::NdArray<f32>;
type Ad = Autodiff<Inner>;

const BACKEND: &str = if cfg!(feature = "flex") {
    "flex"
} else if cfg!(feature = "candle") {
    "candle"
} else if cfg!(feature = "openblas") {
    "ndarray+openblas"
} else {
    "ndarray"
};
const D: usize = 768;
const RANK: usize = 8;

fn base<B: Backend>(device: &B::Device) -> Linear<B> {
    Linear {
        weight: Param::from_tensor(Tensor::random([D, D], Distribution::Default, device)),
        bias: Some(Param::from_tensor(Tensor::random(
            [D],
            Distribution::Default,
            device,
        ))),
    }
}

fn adapter(config: impl Into<AdapterConfig>, device: &burn::tensor::Device<Ad>) -> Adapter<Ad> {
    config.into().init(D, D, 7, device).expect("valid config")
}

/// One training step's compute: forward, scalar loss, backward (gradients w.r.t. the input too,
/// as inside a network).
fn step(layer: &AdaptedLinear<Ad>, x: &Tensor<Ad, 2>) {
    let grads = layer.forward(x.clone()).sum().backward();
    std::hint::black_box(grads);
}

fn step_materialized(layer: &AdaptedLinear<Ad>, x: &Tensor<Ad, 2>) {
    let w0 = layer.base.weight.val().detach();
    let bias = layer.base.bias.as_ref().map(|b| b.val().detach());
    let Adapter::Peanut(peanut) = &layer.adapters[0] else {
        unreachable!()
    };
    let y = linear(x.clone(), w0.clone(), bias) + peanut.forward_materialized(x.clone(), w0);
    std::hint::black_box(y.sum().backward());
}

fn layers(device: &burn::tensor::Device<Ad>) -> Vec<(&'static str, AdaptedLinear<Ad>)> {
    // B non-zero so no path can shortcut a zero matrix.
    let peanut = PeanutConfig::new(RANK).with_b_init(OutputInit::KaimingUniform);
    let lora = LoraConfig::new(RANK).with_b_init(OutputInit::KaimingUniform);
    vec![
        ("frozen_base", AdaptedLinear::new(base(device))),
        (
            "peanut_factorized",
            AdaptedLinear::new(base(device)).with_adapter(adapter(peanut.clone(), device)),
        ),
        (
            "peanut_materialized",
            AdaptedLinear::new(base(device)).with_adapter(adapter(peanut, device)),
        ),
        (
            "lora",
            AdaptedLinear::new(base(device)).with_adapter(adapter(lora, device)),
        ),
        (
            "full_finetune",
            AdaptedLinear::new(base(device)).unfreeze_base(true),
        ),
    ]
}

fn token_counts() -> Vec<usize> {
    if std::env::var_os("PEANUT_BENCH_QUICK").is_some() {
        vec![256]
    } else {
        vec![6304, 256]
    }
}

fn adapter_step(c: &mut Criterion) {
    let device = Default::default();
    let layers = layers(&device);
    for tokens in token_counts() {
        let mut group = c.benchmark_group(format!("{BACKEND}/step_768x768_r8/N={tokens}"));
        group.sample_size(10);
        let x = Tensor::<Ad, 2>::random([tokens, D], Distribution::Default, &device).require_grad();
        for (name, layer) in &layers {
            group.bench_function(*name, |b| {
                if *name == "peanut_materialized" {
                    b.iter(|| step_materialized(layer, &x))
                } else {
                    b.iter(|| step(layer, &x))
                }
            });
        }
        group.finish();
    }
}

fn matmul_rate(c: &mut Criterion) {
    let device = Default::default();
    let mut group = c.benchmark_group(format!("{BACKEND}/matmul_768x768"));
    group.sample_size(10);
    let w = Tensor::<Inner, 2>::random([D, D], Distribution::Default, &device);
    for tokens in token_counts() {
        let x = Tensor::<Inner, 2>::random([tokens, D], Distribution::Default, &device);
        group.throughput(Throughput::Elements((2 * tokens * D * D) as u64));
        group.bench_with_input(BenchmarkId::new("gflops", tokens), &x, |b, x| {
            b.iter(|| std::hint::black_box(x.clone().matmul(w.clone())))
        });
    }
    group.finish();
}

criterion_group!(benches, adapter_step, matmul_rate);
criterion_main!(benches);
