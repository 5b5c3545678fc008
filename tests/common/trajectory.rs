//! The training-trajectory check against PyTorch + peft
//! (`tests/fixtures/make_trajectory_fixtures.py`), on any autodiff backend: from the same
//! initial PEANuT adapters and head, on the same batches, the training step every pipeline uses
//! (`train::Trainee`: loss, parameter groups with their own rates, gradient accumulation) with
//! the run's optimizer (`train::fit::optimizer`, AdamW) must follow `torch.optim.AdamW` update
//! by update, with one batch per update and with two accumulated batches per update (losses
//! averaged, as transformers' Trainer does).
//!
//! Included by two test targets: `tests/train` (the selected backend, float32) and
//! `tests/trajectory_f64.rs` (ndarray in float64, its own process so that float64 is its
//! device's default).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{Int, Tensor, TensorData};
use burn::train::{Interrupter, Learner};
use peanut::io::{AdapterMap, SavedModules};
use peanut::{Adapter, Precision};
use peanut_models::vit::VitPeftPaths;
use peanut_models::{AdaptableModel, Vit, VitLoadOptions};
use peanut_train::data::ImageBatch;
use peanut_train::train::fit::optimizer;
use peanut_train::train::{LearningRates, LossGuard, StepSettings, Trainee};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// The fixture's tensors as f32 (labels as i64) and its metadata.
pub struct Trajectory {
    tensors: BTreeMap<String, (Vec<usize>, Vec<u8>, safetensors::Dtype)>,
    metadata: BTreeMap<String, String>,
}

impl Trajectory {
    /// The committed fixture.
    pub fn read() -> Self {
        let bytes = std::fs::read(fixtures().join("trajectory/trajectory.safetensors")).unwrap();
        let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
        let metadata = header.metadata().clone().unwrap_or_default();
        let tensors = safetensors::SafeTensors::deserialize(&bytes)
            .unwrap()
            .tensors()
            .into_iter()
            .map(|(name, view)| {
                (
                    name,
                    (view.shape().to_vec(), view.data().to_vec(), view.dtype()),
                )
            })
            .collect();
        Self {
            tensors,
            metadata: metadata.into_iter().collect(),
        }
    }

    /// A setting of the fixture's metadata.
    pub fn setting(&self, name: &str) -> f64 {
        self.metadata[name].parse().unwrap()
    }

    fn floats(&self, name: &str) -> (Vec<usize>, Vec<f32>) {
        let (shape, bytes, dtype) = &self.tensors[name];
        assert_eq!(*dtype, safetensors::Dtype::F32, "{name}");
        let values = bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        (shape.clone(), values)
    }

    fn batch<B: AutodiffBackend>(&self, index: usize) -> ImageBatch<B> {
        let device = Default::default();
        let (shape, pixels) = self.floats(&format!("batch.{index}.pixels"));
        let (_, bytes, dtype) = &self.tensors[&format!("batch.{index}.labels")];
        assert_eq!(*dtype, safetensors::Dtype::I64);
        let labels: Vec<i64> = bytes
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
            .collect();
        let count = labels.len();
        ImageBatch {
            images: Tensor::from_data(
                TensorData::new(pixels, [shape[0], shape[1], shape[2], shape[3]]),
                &device,
            ),
            targets: Tensor::<B, 1, Int>::from_data(TensorData::new(labels, [count]), &device),
        }
    }

    /// The trainable tensors of `run` after update `update`, as a peft adapter directory.
    fn state_dir(&self, run: &str, update: usize, dir: &Path) -> PathBuf {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::copy(
            fixtures().join("trajectory/adapter/adapter_config.json"),
            dir.join("adapter_config.json"),
        )
        .unwrap();
        let prefix = format!("{run}.{update}.");
        let owned: Vec<(String, Vec<usize>, Vec<u8>)> = self
            .tensors
            .iter()
            .filter_map(|(name, (shape, bytes, _))| {
                name.strip_prefix(&prefix)
                    .map(|n| (n.to_string(), shape.clone(), bytes.clone()))
            })
            .collect();
        assert!(!owned.is_empty(), "no tensors for {prefix}");
        let views: Vec<_> = owned
            .iter()
            .map(|(name, shape, bytes)| {
                let view = safetensors::tensor::TensorView::new(
                    safetensors::Dtype::F32,
                    shape.clone(),
                    bytes,
                )
                .unwrap();
                (name.clone(), view)
            })
            .collect();
        std::fs::write(
            dir.join("adapter_model.safetensors"),
            safetensors::serialize(views, None).unwrap(),
        )
        .unwrap();
        dir.to_path_buf()
    }
}

/// Every tensor of an adapter directory (peft's format) by a name of ours: each adapter's
/// matrices, and each saved module's parameters.
fn flatten<B: AutodiffBackend>(dir: &Path) -> BTreeMap<String, Vec<f32>> {
    let (adapters, saved): (AdapterMap<B>, SavedModules) =
        peanut::io::load_any_with_saved(dir, &VitPeftPaths, &Default::default()).unwrap();
    let values = |t: Tensor<B, 2>| t.into_data().convert::<f32>().to_vec().unwrap();
    let mut out = BTreeMap::new();
    for (path, adapter) in adapters {
        let Adapter::Peanut(p) = adapter else {
            panic!("{path}: not a PEANuT adapter");
        };
        out.insert(format!("{path}.A"), values(p.a.val()));
        out.insert(format!("{path}.B"), values(p.b.val()));
        for (i, e) in p.encoders.iter().enumerate() {
            out.insert(format!("{path}.encoder.{i}"), values(e.val()));
        }
        for (i, d) in p.decoders.iter().enumerate() {
            out.insert(format!("{path}.decoder.{i}"), values(d.val()));
        }
    }
    for (module, saved) in saved {
        for (param, tensor) in saved.params {
            out.insert(format!("{module}.{param}"), tensor.values);
        }
    }
    out
}

/// The tiny ViT with the fixture's initial adapters and head, adapters and head trainable.
fn initial_model<B: AutodiffBackend>() -> Vit<B> {
    let device = Default::default();
    let options = VitLoadOptions {
        num_labels: Some(3),
        image_size: Some(8),
        head_seed: 0,
        precision: Precision::F32,
        quantization: None,
    };
    let (mut model, _) =
        Vit::<B>::from_pretrained(&fixtures().join("models/vit"), &options, &device).unwrap();
    let (adapters, saved) = peanut::io::load_any_with_saved::<B>(
        &fixtures().join("trajectory/adapter"),
        &VitPeftPaths,
        &device,
    )
    .unwrap();
    peanut::io::attach(model.linears_mut(), adapters).unwrap();
    peanut::io::attach_saved(model.linears_mut(), &saved).unwrap();
    model.with_trainable_head(true)
}

/// Follows `run` (`plain`: one batch per update; `accumulated`: `accumulate` per update) on
/// backend `B`, working in `dir`, and returns the largest difference from PyTorch's tensors over
/// every update; panics when one is above `bound`.
pub fn follow<B: AutodiffBackend>(
    trajectory: &Trajectory,
    run: &str,
    accumulate: usize,
    bound: f32,
    dir: &Path,
) -> f32 {
    let steps = trajectory.setting("steps") as usize;
    let model = initial_model::<B>();
    // Head 16×3 + 3, and per adapted linear A, B (16×2 each) and one encoder/decoder pair (2×2).
    assert_eq!(
        peanut::count_trainable_params(&model),
        16 * 3 + 3 + 4 * (2 * 16 * 2 + 2 * 2 * 2)
    );
    let settings = StepSettings {
        learning_rates: LearningRates {
            head: trajectory.setting("head_lr"),
            body: trajectory.setting("adapter_lr"),
        },
        clip_grad_norm: None,
        // The Mean recipe: each accumulated pass's loss is divided by their number.
        loss_divisor: accumulate,
        grad_accumulation: accumulate,
        steps_per_epoch: steps * accumulate,
        rescale_partial: true,
        recompute_layers: false,
    };
    let trainee = Trainee::new(model, LossGuard::new(Interrupter::new(), 0), settings);
    let optim = optimizer(trajectory.setting("weight_decay")).init();
    let mut learner = Learner::new(trainee, optim, 1.0);
    let dir = dir.join(run);
    let mut worst = 0.0f32;
    let mut batch = 0;
    for update in 1..=steps {
        for _ in 0..accumulate {
            learner.lr_step();
            let output = learner.train_step(trajectory.batch::<B>(batch));
            learner.optimizer_step(output.grads);
            batch += 1;
        }
        let ours_dir = dir.join(format!("ours-{update}"));
        let model = learner.model().model;
        model.save_adapters_peft(&ours_dir, None).unwrap();
        model.add_head_to_peft(&ours_dir).unwrap();
        let ours = flatten::<B>(&ours_dir);
        let theirs =
            flatten::<B>(&trajectory.state_dir(run, update, &dir.join(format!("theirs-{update}"))));
        assert_eq!(
            ours.keys().collect::<Vec<_>>(),
            theirs.keys().collect::<Vec<_>>(),
            "{run}: tensors"
        );
        for (name, want) in &theirs {
            let got = &ours[name];
            assert_eq!(got.len(), want.len(), "{run} {name}");
            let diff = got
                .iter()
                .zip(want)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            assert!(
                diff <= bound,
                "{run}, update {update}: `{name}` is {diff:e} from PyTorch's (bound {bound:e})"
            );
            worst = worst.max(diff);
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    worst
}
