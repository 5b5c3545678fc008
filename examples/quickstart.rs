//! The offline quickstart: PEANuT vs LoRA vs head-only on real data shipped in the repository.
//!
//! scikit-learn's 8×8 handwritten digits (bundled, BSD-3): a small ViT is pre-trained on digits
//! 0–4 (cached on disk), then fine-tuned on the unseen digits 5–9 with PEANuT, LoRA (same
//! trainable budget) and the head alone, and the three test accuracies are printed side by side.
//!
//! ```text
//! cargo run --example quickstart                 # the CPU (flex), two training workers
//! cargo run --example quickstart --features wgpu # GPU
//! ```
//!
//! Set `PEANUT_QUICKSTART_DIR` to choose where the pre-trained model and runs go (default:
//! `<system temp>/peanut-quickstart`).

use std::path::PathBuf;
use std::time::Instant;

use burn::module::Module;
use burn::nn::LinearConfig;
use burn::record::{FullPrecisionSettings, NamedMpkFileRecorder};
use burn::tensor::backend::Backend;
use peanut::{AdaptedLinear, Precision};
use peanut_models::{Vit, VitConfig};
use peanut_train::backend::{self, DeviceSpec, Selected, TrainBackend};
use peanut_train::data::{ImageDataset, Normalization, digits};
use peanut_train::schedule::Decay;
use peanut_train::train::{self, AdapterOptions, ImageTrainConfig, Method, RunOptions};

/// The small ViT: 8×8 one-channel images in 2×2 patches (16 tokens + CLS), width 64, 4 blocks.
fn vit_config() -> VitConfig {
    VitConfig::new(64, 4, 4, 128, 5)
        .with_image_size(8)
        .with_patch_size(2)
        .with_num_channels(1)
}

/// Pixels are in [0, 1]; centre them like the ViT processors do.
const NORMALIZATION: Normalization = Normalization::VIT;

fn base_config(method: Method) -> ImageTrainConfig {
    ImageTrainConfig {
        method,
        adapter: AdapterOptions {
            rank: 4,
            ..AdapterOptions::default()
        },
        targets: vec!["query".into(), "value".into()],
        layers: Vec::new(),
        epochs: 8,
        batch_size: 32,
        grad_accumulation: 1,
        head_lr: 1e-2,
        adapter_lr: 1e-2,
        weight_decay: 4e-5,
        warmup_ratio: 0.0,
        decay: Decay::Linear,
        clip_grad_norm: Some(1.0),
        seed: 7,
        image_size: 8,
        augment: false,
        normalization: NORMALIZATION,
        precision: Precision::F32,
        quantize: None,
        recompute_layers: false,
    }
}

/// Where a run trains: as `peanut train` does by default (`--devices auto`), which on the CPU is
/// one data-parallel worker per core (see `peanut_train::train::parallel`).
fn workers(
    config: &ImageTrainConfig,
) -> Result<Vec<burn::tensor::Device<Selected>>, Box<dyn std::error::Error>> {
    Ok(backend::training_devices(
        &DeviceSpec::auto(),
        config.batch_size,
    )?)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    peanut_train::backend::tune_allocator();
    let started = Instant::now();
    let dir = std::env::var_os("PEANUT_QUICKSTART_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("peanut-quickstart"));
    let device = backend::device();
    let recorder = NamedMpkFileRecorder::<FullPrecisionSettings>::new();
    println!(
        "peanut quickstart on {} — working directory {}",
        backend::NAME,
        dir.display()
    );

    // 1. Pre-train on digits 0–4, or reuse the cached model.
    let pretrained = dir.join("pretrained-digits-0-4");
    let cached = pretrained.with_extension("mpk");
    if cached.is_file() {
        println!("reusing the pre-trained ViT in {}", cached.display());
    } else {
        let data = digits::dataset(&[0, 1, 2, 3, 4], 4)?;
        let config = ImageTrainConfig {
            head_lr: 2e-3,
            adapter_lr: 2e-3,
            epochs: 12,
            warmup_ratio: 0.05,
            ..base_config(Method::Full)
        }
        .check()?;
        println!(
            "pre-training a {}-block ViT on digits 0-4 ({} train / {} test images)",
            vit_config().num_hidden_layers,
            data.train.samples.len(),
            data.test.samples.len()
        );
        let model = vit_config().init::<TrainBackend>(1, &device)?;
        let run = RunOptions {
            label: "pretrain 0-4".into(),
            ..RunOptions::new(dir.join("pretrain"))
        };
        let _ = std::fs::remove_dir_all(&run.dir);
        let trained = train::train_image_on(model, &data, &config, &run, &workers(&config)?)?;
        let report = train::evaluate(&trained.model, &data.test, 8, NORMALIZATION, 256, &device);
        println!(
            "pre-trained: {:.1}% on held-out digits 0-4",
            100.0 * report.top1
        );
        trained.model.save_file(&pretrained, &recorder)?;
    }

    // 2. Fine-tune on digits 5–9 with each method.
    let data = digits::dataset(&[5, 6, 7, 8, 9], 4)?;
    let mut rows = Vec::new();
    for method in [Method::Peanut, Method::Lora, Method::Head] {
        let model = load_with_fresh_head(&cached, &recorder, &device)?;
        let config = base_config(method).check()?;
        let run = RunOptions {
            label: format!("{} 5-9", method.name()),
            ..RunOptions::new(dir.join(format!("finetune-{}", method.name())))
        };
        let _ = std::fs::remove_dir_all(&run.dir);
        let trained = train::train_image_on(model, &data, &config, &run, &workers(&config)?)?;
        let report = train::evaluate(&trained.model, &data.test, 8, NORMALIZATION, 256, &device);
        train::export(&trained.model, &run.dir.join("export"), None)?;
        rows.push((method, trained.trainable_params, report));
    }
    print_table(&data, &rows);
    println!("total time {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// The cached pre-trained ViT with a new 5-class head (digits 5–9 are new classes).
fn load_with_fresh_head(
    cached: &std::path::Path,
    recorder: &NamedMpkFileRecorder<FullPrecisionSettings>,
    device: &burn::tensor::Device<TrainBackend>,
) -> Result<Vit<TrainBackend>, Box<dyn std::error::Error>> {
    let mut model = vit_config().init::<TrainBackend>(1, device)?.load_file(
        cached.with_extension(""),
        recorder,
        device,
    )?;
    TrainBackend::seed(device, 99);
    let head = LinearConfig::new(64, 5).init(device);
    model.classifier = AdaptedLinear::new(head);
    Ok(model)
}

fn print_table(data: &ImageDataset, rows: &[(Method, usize, train::EvalReport)]) {
    println!();
    println!(
        "fine-tuned on digits 5-9 ({} train / {} test images), backend {}:",
        data.train.samples.len(),
        data.test.samples.len(),
        std::any::type_name::<Selected>()
            .rsplit("::")
            .next()
            .unwrap_or("?")
    );
    println!(
        "{:<8} {:>18} {:>10}",
        "method", "trainable params", "accuracy"
    );
    for (method, params, report) in rows {
        println!(
            "{:<8} {:>18} {:>9.1}%",
            method.name(),
            params,
            100.0 * report.top1
        );
    }
}
