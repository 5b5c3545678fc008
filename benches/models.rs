//! Step time of a ViT-B/16-sized model (random weights, batch 8, 224 px) on the CPU backend:
//! forward + backward with PEANuT on q,v (r = 7) vs LoRA on q,v (r = 8) vs head-only vs full
//! fine-tuning, and inference with PEANuT merged vs the base model.
//!
//! `cargo bench --bench models` (about 10 minutes on 2 cores). Goals: PEANuT ≤ 1.10× LoRA;
//! merged ≤ 1.02× base.

use std::time::Duration;

use burn::backend::{Autodiff, NdArray};
use burn::tensor::{Tensor, backend::Backend};
use criterion::{Criterion, SamplingMode, criterion_group, criterion_main};
use peanut::{AdapterConfig, LoraConfig, PeanutConfig};
use peanut_models::{AdaptableModel, Targets, Vit, VitConfig};

type Cpu = NdArray<f32>;
type Ad = Autodiff<Cpu>;

const BATCH: usize = 8;
const LABELS: usize = 100;

fn config() -> VitConfig {
    VitConfig::vit_base_patch16_224_in21k(LABELS)
}

fn pixels<B: Backend>(device: &B::Device) -> Tensor<B, 4> {
    Tensor::ones([BATCH, 3, 224, 224], device) * 0.5
}

/// A ViT-B/16 with `adapter` on query and value (if any), head trainable; `full` trains all.
fn model(adapter: Option<AdapterConfig>, full: bool) -> Vit<Ad> {
    let device = Default::default();
    let mut vit: Vit<Ad> = config().init(0, &device).expect("valid config");
    if let Some(adapter) = adapter {
        vit.add_adapters(&Targets::vit_qv(), &adapter, 1)
            .expect("q, v exist");
    }
    let vit = vit.with_trainable_head(true);
    if full {
        vit.with_trainable_base(true)
    } else {
        vit
    }
}

fn training_steps(c: &mut Criterion) {
    let device = Default::default();
    let x = pixels::<Ad>(&device);
    let mut group = c.benchmark_group("vit_b16_train_step_batch8");
    group
        .sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_millis(1))
        .measurement_time(Duration::from_secs(30));
    let cases: [(&str, Option<AdapterConfig>, bool); 4] = [
        ("peanut_qv_r7", Some(PeanutConfig::new(7).into()), false),
        ("lora_qv_r8", Some(LoraConfig::new(8).into()), false),
        ("head_only", None, false),
        ("full_finetune", None, true),
    ];
    for (name, adapter, full) in cases {
        let vit = model(adapter, full);
        group.bench_function(name, |b| {
            b.iter(|| {
                let loss = vit.forward(x.clone()).powi_scalar(2).mean();
                loss.backward()
            })
        });
    }
    group.finish();
}

fn inference(c: &mut Criterion) {
    let device = Default::default();
    let x = pixels::<Cpu>(&device);
    let base: Vit<Cpu> = config().init(0, &device).expect("valid config");
    let mut merged = base.clone();
    let peanut: AdapterConfig = PeanutConfig::new(7)
        .with_b_init(peanut::OutputInit::KaimingUniform)
        .into();
    merged
        .add_adapters(&Targets::vit_qv(), &peanut, 1)
        .expect("q, v exist");
    merged.merge_adapters();
    let mut group = c.benchmark_group("vit_b16_inference_batch8");
    group
        .sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_millis(1))
        .measurement_time(Duration::from_secs(15));
    group.bench_function("base", |b| b.iter(|| base.forward(x.clone()).into_data()));
    group.bench_function("peanut_merged", |b| {
        b.iter(|| merged.forward(x.clone()).into_data())
    });
    group.finish();
}

criterion_group!(benches, training_steps, inference);
criterion_main!(benches);
