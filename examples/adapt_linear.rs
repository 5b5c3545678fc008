//! The `peanut` library on one linear layer, end to end, in a few seconds on a CPU:
//!
//! 1. a frozen "pretrained" 256→32 layer (a down-projection, `d_in ≫ d_out`) and a teacher
//!    whose weight moved by a rank-8 update that depends on the frozen weight,
//!    `ΔW* = relu(W0·C)·D`;
//! 2. PEANuT and LoRA students with the same trainable budget (576 parameters) fit the teacher
//!    with AdamW, the base frozen. PEANuT's `A` reads the OUTPUT side of `W0`, so it costs
//!    `2·r·d_out` and affords r = 9 where LoRA's `r·(d_in + d_out)` affords r = 2;
//! 3. the PEANuT student is merged into a plain `Linear`, saved in peanut's and in peft's
//!    format, reloaded, and checked to give the same outputs.
//!
//! ```text
//! cargo run --example adapt_linear
//! ```

use burn::backend::{Autodiff, NdArray};
use burn::module::{AutodiffModule, Param};
use burn::nn::Linear;
use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
use burn::tensor::{Distribution, Tensor, activation::relu, backend::Backend};
use peanut::io::{self, SamePaths};
use peanut::{AdaptedLinear, AdapterConfig, LoraConfig, PeanutConfig, count_trainable_params};

type Cpu = NdArray<f32>;
type Ad = Autodiff<Cpu>;

const D_IN: usize = 256;
const D_OUT: usize = 32;
const STEPS: usize = 300;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let device = Default::default();
    Cpu::seed(&device, 7);

    let w0 = Tensor::<Ad, 2>::random([D_IN, D_OUT], Distribution::Normal(0.0, 0.3), &device);
    let bias = Tensor::<Ad, 1>::zeros([D_OUT], &device);
    let c = Tensor::<Ad, 2>::random([D_OUT, 8], Distribution::Normal(0.0, 0.5), &device);
    let d = Tensor::<Ad, 2>::random([8, D_OUT], Distribution::Normal(0.0, 0.5), &device);
    let teacher_weight = w0.clone() + relu(w0.clone().matmul(c)).matmul(d);
    let base = || Linear {
        weight: Param::from_tensor(w0.clone()),
        bias: Some(Param::from_tensor(bias.clone())),
    };

    println!(
        "fitting a rank-8, weight-dependent update of a frozen {D_IN}->{D_OUT} layer, {STEPS} AdamW steps"
    );
    let mut results = Vec::new();
    for (name, config) in [
        ("PEANuT r=9", AdapterConfig::from(PeanutConfig::new(9))),
        (
            "LoRA r=2",
            AdapterConfig::from(LoraConfig::new(2).with_alpha(2.0)),
        ),
    ] {
        let adapter = config.init::<Ad>(D_IN, D_OUT, 42, &device)?;
        let mut layer = AdaptedLinear::new(base()).with_adapter(adapter);
        let trainable = count_trainable_params(&layer);
        let mut optim = AdamWConfig::new().with_weight_decay(0.0).init();
        let mut loss_value = f32::NAN;
        for step in 0..=STEPS {
            let x = Tensor::<Ad, 2>::random([128, D_IN], Distribution::Normal(0.0, 1.0), &device);
            let target = x.clone().matmul(teacher_weight.clone()).detach();
            let loss = (layer.forward(x) - target).powi_scalar(2).mean();
            loss_value = loss.clone().into_scalar();
            if step % 100 == 0 {
                println!("  {name:<11} step {step:>3}  mse {loss_value:.5}");
            }
            if step < STEPS {
                let grads = GradientsParams::from_grads(loss.backward(), &layer);
                layer = optim.step(1e-2, layer, grads);
            }
        }
        results.push((name, trainable, loss_value));
        if name.starts_with("PEANuT") {
            check_merge_and_files(layer.valid(), &device)?;
        }
    }
    println!("\n  method       trainable  final mse");
    for (name, trainable, loss) in results {
        println!("  {name:<11}  {trainable:>9}  {loss:.5}");
    }
    Ok(())
}

/// Merges, saves in both formats, reloads, and compares outputs.
fn check_merge_and_files(
    layer: AdaptedLinear<Cpu>,
    device: &burn::tensor::Device<Cpu>,
) -> Result<(), Box<dyn std::error::Error>> {
    let x = Tensor::<Cpu, 2>::random([16, D_IN], Distribution::Default, device);
    let y = layer.forward(x.clone());
    let merged = layer.merge();
    let merge_error = (merged.forward(x.clone()) - y.clone())
        .abs()
        .max()
        .into_scalar();

    let dir = std::env::temp_dir().join("peanut-adapt-linear-example");
    let entries = || [("layer".to_string(), &layer.adapters[0])];
    io::save(&dir.join("peanut"), entries())?;
    io::save_peft(&dir.join("peft"), entries(), &SamePaths, None)?;
    let mut worst = 0f32;
    for format in ["peanut", "peft"] {
        let mut reloaded = AdaptedLinear::new(layer.base.clone());
        let adapters = io::load_any::<Cpu>(&dir.join(format), &SamePaths, device)?;
        io::attach([("layer".to_string(), &mut reloaded)], adapters)?;
        let error = (reloaded.forward(x.clone()) - y.clone())
            .abs()
            .max()
            .into_scalar();
        worst = worst.max(error);
    }
    println!(
        "  merged vs unmerged max |Δy| = {merge_error:.2e}; reloaded (peanut, peft formats) max |Δy| = {worst:.2e}; files in {}",
        dir.display()
    );
    Ok(())
}
