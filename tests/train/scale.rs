//! Scale: data parallel on burn's multi-device strategy, gradient checkpointing and half
//! precision, on the CPU. ndarray and the selected backend (flex by default) each stand in for
//! a machine with two devices by running two workers on their one CPU device.

use super::*;

use burn::backend::autodiff::checkpoint::strategy::BalancedCheckpointing;
use burn::backend::{Autodiff, NdArray};
use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{DType, Int, Tensor, TensorData};
use peanut::Precision;
use peanut_models::{Llama, LlamaConfig, Targets};
use peanut_train::backend::{CheckpointedTrainBackend, Selected};
use peanut_train::train::DeviceSpec;

type Nd = NdArray<f32>;

fn vit<B: Backend>(device: &B::Device) -> Vit<B> {
    let mut config = VitConfig::tiny();
    config.num_labels = 3;
    config.init::<B>(3, device).unwrap()
}

/// The trained adapters and head, as numbers.
fn trained_values<B: Backend>(model: &Vit<B>) -> Vec<f64> {
    struct Trainable(Vec<f64>);
    impl<B: Backend> ModuleVisitor<B> for Trainable {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            self.0.extend(common::values(param.val()));
        }
    }
    let mut values = Trainable(Vec::new());
    for (_, adapter) in model.adapters() {
        adapter.visit(&mut values);
    }
    model.classifier.visit(&mut values);
    values.0
}

/// Two devices with the same global batch train the same parameters as one device: 12 images,
/// batch 4 (2 per device), gradients accumulated over 2 passes, 2 epochs with augmentation.
/// `two` are the devices of the two-device run (the first is the one-device run's).
fn two_devices_match_one<B: AutodiffBackend>(name: &str, two: [B::Device; 2]) {
    let root = temp_dir(&format!("devices-{name}"));
    image_folder(&root.join("data"), 4);
    let dataset = data::detect(&root.join("data")).unwrap();
    let config = ImageTrainConfig {
        grad_accumulation: 2,
        ..tiny_config(Method::Peanut, 2)
    };
    let device = two[0].clone();
    let before = trained_values(&vit::<B>(&device).valid());
    let mut trained = Vec::new();
    for devices in [1, 2] {
        let dir = root.join(format!("devices-{devices}"));
        let run = run(&dir, false);
        let on = two[..devices].to_vec();
        let model = vit::<B>(&device);
        let result = train::train_image_on(model, &dataset, &checked(&config), &run, &on).unwrap();
        assert_eq!(train::last_checkpoint(&dir), Some(2), "{devices} devices");
        trained.push(trained_values(&result.model));
    }
    // The comparison is not vacuous: training moved the parameters.
    let moved = trained[0]
        .iter()
        .zip(&before)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    assert!(moved > 1e-3, "{name}: parameters did not move ({moved})");
    common::assert_close(
        &format!("{name}: 2 devices vs 1"),
        &trained[1],
        &trained[0],
        1e-5,
    );
}

#[test]
fn two_ndarray_devices_train_what_one_device_trains() {
    two_devices_match_one::<Autodiff<Nd>>("ndarray", Default::default());
}

/// Two workers on the CPU (`--devices 2`), or the devices `PEANUT_TEST_DEVICES` names
/// (`cuda:0,1` on a machine with two GPUs: `benches/device-check.sh` runs this test so). A GPU
/// build needs two GPUs: `.ci/wgpu.sh`, with lavapipe's one, leaves this test out.
#[test]
fn two_devices_of_the_selected_backend_train_what_one_device_trains() {
    let spec: DeviceSpec = std::env::var("PEANUT_TEST_DEVICES")
        .unwrap_or_else(|_| "2".into())
        .parse()
        .unwrap();
    let devices = peanut_train::backend::devices(&spec, 4)
        .unwrap_or_else(|e| panic!("{e} (set PEANUT_TEST_DEVICES to two devices)"));
    let two: [_; 2] = devices
        .try_into()
        .expect("PEANUT_TEST_DEVICES names two devices");
    // Its own directory name: on an ndarray build the backend's name is the other test's.
    two_devices_match_one::<TrainBackend>(
        &format!("selected-{}", peanut_train::backend::NAME),
        two,
    );
}

#[test]
fn a_batch_the_devices_cannot_share_is_refused_before_anything_is_written() {
    let root = temp_dir("devices-uneven");
    image_folder(&root.join("data"), 2);
    let dataset = data::detect(&root.join("data")).unwrap();
    let config = ImageTrainConfig {
        batch_size: 3,
        ..tiny_config(Method::Peanut, 1)
    };
    let device = Default::default();
    let dir = root.join("run");
    let err = train::train_image_on(
        tiny_vit(3),
        &dataset,
        &checked(&config),
        &run(&dir, false),
        &twice(&device),
    )
    .err()
    .expect("3 examples cannot be shared by 2 devices");
    assert!(
        matches!(
            err,
            TrainError::InvalidOption {
                option: "--devices",
                ..
            }
        ),
        "{err}"
    );
    assert!(!dir.join("run.json").exists());
}

#[test]
fn device_specs_of_another_backend_are_refused_with_the_feature_to_build() {
    use peanut_train::backend::{self, DeviceKind};
    let devices = |spec: &str| backend::devices(&spec.parse().unwrap(), 8);
    for (spec, kind, feature) in [
        ("cuda:0,1", DeviceKind::Cuda, "cuda"),
        ("wgpu:0,1", DeviceKind::Wgpu, "wgpu"),
        ("cpu:0,1", DeviceKind::Cpu, "flex"),
    ] {
        if kind == backend::KIND {
            continue;
        }
        let err = devices(spec).unwrap_err().to_string();
        assert!(err.contains(&format!("--features {feature}")), "{err}");
    }
    if backend::KIND == DeviceKind::Cpu {
        // Two workers on the one CPU.
        assert_eq!(devices("cpu:2").unwrap().len(), 2);
    }
    // `auto` (the default): one GPU, or on the CPU one worker per core that divides the batch.
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    for batch in [1, 6, 32] {
        let auto = backend::devices(&DeviceSpec::default(), batch)
            .unwrap()
            .len();
        let expected = match backend::KIND {
            DeviceKind::Cpu => peanut_train::train::parallel::cpu_workers(batch, cores),
            _ => 1,
        };
        assert_eq!(auto, expected, "batch {batch}");
        assert!(batch % auto == 0);
    }
    assert_eq!(
        backend::devices(&DeviceSpec::count(1), 32).unwrap().len(),
        1
    );
}

/// Gradients of every adapter and head parameter of a tiny ViT for one batch, on backend `B`.
fn vit_gradients<B: AutodiffBackend>() -> Vec<f64> {
    let device = B::Device::default();
    let mut model = vit::<B>(&device);
    let config = checked(&tiny_config(Method::Peanut, 1));
    train::attach_adapters(&mut model, config.adapter(), &config.targets, &[], 9).unwrap();
    let model = model.with_trainable_head(true);
    let images = Tensor::<B, 4>::from_data(
        TensorData::new(
            (0..4 * 3 * 16 * 16)
                .map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0)
                .collect::<Vec<f32>>(),
            [4, 3, 16, 16],
        ),
        &device,
    );
    let targets =
        Tensor::<B, 1, Int>::from_data(TensorData::new(vec![0i64, 1, 2, 1], [4]), &device);
    let logits = model.forward(images);
    let loss = burn::nn::loss::CrossEntropyLossConfig::new()
        .init(&device)
        .forward(logits, targets);
    let grads = loss.backward();
    struct Grads<'a, B: AutodiffBackend>(&'a B::Gradients, Vec<f64>);
    impl<B: AutodiffBackend> ModuleVisitor<B> for Grads<'_, B> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            if let Some(grad) = param.val().grad(self.0) {
                self.1.extend(common::values(grad));
            }
        }
    }
    let mut collected = Grads::<B>(&grads, Vec::new());
    model.visit(&mut collected);
    collected.1
}

#[test]
fn gradient_checkpointing_changes_no_gradient() {
    let plain = vit_gradients::<Autodiff<Nd>>();
    let checkpointed = vit_gradients::<Autodiff<Nd, BalancedCheckpointing>>();
    assert!(plain.len() > 500 && plain.iter().any(|g| g.abs() > 1e-6));
    common::assert_close("checkpointed gradients", &checkpointed, &plain, 1e-6);
    let selected = vit_gradients::<CheckpointedTrainBackend>();
    common::assert_close("checkpointed, selected backend", &selected, &plain, 1e-4);
}

#[test]
fn a_checkpointed_run_trains_what_a_plain_run_trains() {
    let root = temp_dir("checkpointing-run");
    image_folder(&root.join("data"), 2);
    let dataset = data::detect(&root.join("data")).unwrap();
    let config = tiny_config(Method::Peanut, 1);
    let device = Default::default();
    let plain = train::train_image(
        vit::<TrainBackend>(&device),
        &dataset,
        &checked(&config),
        &run(&root.join("plain"), false),
        &device,
    )
    .unwrap();
    let checkpointed = train::train_image(
        vit::<CheckpointedTrainBackend>(&device),
        &dataset,
        &checked(&config),
        &run(&root.join("checkpointed"), false),
        &device,
    )
    .unwrap();
    common::assert_close(
        "checkpointed run",
        &trained_values(&checkpointed.model),
        &trained_values(&plain.model),
        1e-5,
    );
    // What `train image --checkpointing` runs: each encoder block recomputed.
    let recomputing = ImageTrainConfig {
        recompute_layers: true,
        ..config.clone()
    };
    let recomputed = train::train_image(
        vit::<TrainBackend>(&device),
        &dataset,
        &checked(&recomputing),
        &run(&root.join("recomputed"), false),
        &device,
    )
    .unwrap();
    common::assert_close(
        "recomputed blocks",
        &trained_values(&recomputed.model),
        &trained_values(&plain.model),
        1e-5,
    );
}

/// The dtypes of a model's 2-D parameters, and whether any 1-D one left f32.
fn matrix_dtypes<B: Backend, M: Module<B>>(model: &M) -> (Vec<DType>, bool) {
    struct Types(Vec<DType>, bool);
    impl<B: Backend> ModuleVisitor<B> for Types {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            let dtype = param.val().dtype();
            if D == 2 {
                self.0.push(dtype);
            } else if dtype != DType::F32 {
                self.1 = true;
            }
        }
    }
    let mut types = Types(Vec::new(), false);
    model.visit(&mut types);
    (types.0, types.1)
}

#[test]
fn half_precision_stores_the_frozen_matrices_in_half_and_computes_close_to_f32() {
    if !crate::selected_backend_computes_in(peanut::Precision::F16) {
        return;
    }
    let device = Default::default();
    let images = Tensor::<Selected, 4>::from_data(
        TensorData::new(
            (0..2 * 3 * 16 * 16)
                .map(|i| ((i * 17 % 61) as f32 / 30.0) - 1.0)
                .collect::<Vec<f32>>(),
            [2, 3, 16, 16],
        ),
        &device,
    );
    let mut reference = vit::<TrainBackend>(&device);
    let config = checked(&tiny_config(Method::Peanut, 1));
    train::attach_adapters(&mut reference, config.adapter(), &config.targets, &[], 4).unwrap();
    let reference = reference.with_trainable_head(true);
    let f32_logits = common::values(reference.valid().forward(images.clone()));
    let f32_bytes = peanut::precision::stored_bytes(&reference);
    for (precision, dtype, tol) in [
        (Precision::F16, DType::F16, 2e-2),
        (Precision::Bf16, DType::BF16, 1e-1),
    ] {
        let half = peanut::cast_frozen(reference.clone(), precision);
        let (matrices, vectors_changed) = matrix_dtypes(&half);
        assert!(!vectors_changed, "{precision}: biases and norms stay f32");
        // The frozen q, k, v, o, intermediate and output matrices of both blocks are half; the
        // adapters and the trainable head are not.
        let halved = matrices.iter().filter(|&&d| d == dtype).count();
        assert_eq!(halved, 12, "{precision}: {matrices:?}");
        assert_eq!(
            peanut::count_trainable_params(&half),
            peanut::count_trainable_params(&reference)
        );
        assert!(peanut::precision::stored_bytes(&half) < f32_bytes * 3 / 4);
        let logits = common::values(half.valid().forward(images.clone()));
        common::assert_close(&format!("{precision} logits"), &logits, &f32_logits, tol);
    }
}

#[test]
fn half_precision_llama_runs_its_embedding_and_tied_head_in_half() {
    if !crate::selected_backend_computes_in(peanut::Precision::F16) {
        return;
    }
    let device = Default::default();
    let config = LlamaConfig::tiny();
    let mut model = config.init::<Selected>(7, &device).unwrap();
    model
        .add_adapters(
            &Targets::new(["q_proj", "v_proj"]),
            &peanut::AdapterConfig::Peanut(peanut::PeanutConfig::new(2)),
            3,
        )
        .unwrap();
    let ids = Tensor::<Selected, 2, Int>::from_data(
        TensorData::new(vec![1i64, 5, 9, 33, 2, 60], [1, 6]),
        &device,
    );
    let reference = common::values(model.forward(ids.clone(), None));
    let last = common::values(model.forward_last(ids.clone(), None));
    // On the inference backend nothing takes gradients: every matrix but the adapters' is cast.
    let half: Llama<Selected> = peanut::cast_frozen(model, Precision::F16);
    assert_eq!(half.model.embed_tokens.weight.val().dtype(), DType::F16);
    let logits = common::values(half.forward(ids.clone(), None));
    common::assert_close("f16 llama logits", &logits, &reference, 5e-2);
    let half_last = common::values(half.forward_last(ids, None));
    common::assert_close("f16 llama last logits", &half_last, &last, 5e-2);
}

#[test]
fn a_bf16_run_trains_f32_adapters_and_exports_them() {
    if !crate::selected_backend_computes_in(peanut::Precision::Bf16) {
        return;
    }
    let root = temp_dir("precision-run");
    image_folder(&root.join("data"), 2);
    let dataset = data::detect(&root.join("data")).unwrap();
    let device = Default::default();
    let config = ImageTrainConfig {
        precision: Precision::Bf16,
        ..tiny_config(Method::Peanut, 2)
    };
    let dir = root.join("bf16");
    let trained = train::train_image(
        tiny_vit(3),
        &dataset,
        &checked(&config),
        &run(&dir, false),
        &device,
    )
    .unwrap();
    for (_, adapter) in trained.model.adapters() {
        let (_, changed) = matrix_dtypes(adapter);
        assert!(!changed);
        struct AllF32(bool);
        impl<B: Backend> ModuleVisitor<B> for AllF32 {
            fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
                self.0 &= param.val().dtype() == DType::F32;
            }
        }
        let mut all = AllF32(true);
        adapter.visit(&mut all);
        assert!(all.0, "adapters train in f32");
    }
    let report = train::evaluate(
        &trained.model,
        &dataset.test,
        16,
        config.normalization,
        4,
        &device,
    );
    assert!(report.loss.is_finite());
    let exported = train::export(&trained.model, &dir.join("export"), None).unwrap();
    assert!(exported.contains(&dir.join("export/peft")));
    // The run resumes with its precision recorded; another precision is refused.
    let f32 = ImageTrainConfig {
        precision: Precision::F32,
        ..config.clone()
    };
    let err = train::train_image(
        tiny_vit(3),
        &dataset,
        &checked(&f32),
        &run(&dir, true),
        &device,
    )
    .err()
    .expect("a resumed run keeps its precision");
    assert!(err.to_string().contains("precision"), "{err}");
}

#[test]
fn a_backend_without_half_precision_is_a_clear_error() {
    let root = temp_dir("precision-ndarray");
    image_folder(&root.join("data"), 2);
    let dataset = data::detect(&root.join("data")).unwrap();
    let config = ImageTrainConfig {
        precision: Precision::F16,
        ..tiny_config(Method::Peanut, 1)
    };
    let device = Default::default();
    let err = train::train_image(
        vit::<Autodiff<Nd>>(&device),
        &dataset,
        &checked(&config),
        &run(&root.join("run"), false),
        &device,
    )
    .err()
    .expect("ndarray has no f16");
    let message = err.to_string();
    assert!(
        matches!(
            err,
            TrainError::InvalidOption {
                option: "--precision",
                ..
            }
        ),
        "{message}"
    );
    assert!(
        message.contains("f16") && message.contains("use f32"),
        "{message}"
    );
}

#[test]
fn a_half_precision_weight_that_starts_to_train_is_widened_to_f32() {
    if !crate::selected_backend_computes_in(peanut::Precision::Bf16) {
        return;
    }
    let device = Default::default();
    let mut config = VitConfig::tiny();
    config.num_labels = 3;
    let model: Vit<TrainBackend> = config.init_in(3, &device, Precision::Bf16).unwrap();
    assert_eq!(model.classifier.base.weight.val().dtype(), DType::BF16);
    let head = model.with_trainable_head(true);
    assert_eq!(head.classifier.base.weight.val().dtype(), DType::F32);
    assert!(head.classifier.base.weight.val().is_require_grad());
    let full = head.with_trainable_base(true);
    let (matrices, _) = matrix_dtypes(&full);
    assert!(matrices.iter().all(|&d| d == DType::F32), "{matrices:?}");
}

/// `train image` from the command line with every scale option: two CPU workers, gradient
/// checkpointing and bf16 train what one plain bf16 device trains.
#[test]
fn cli_scale_options_train_what_one_plain_device_trains() {
    let root = temp_dir("scale-cli");
    let data_dir = root.join("data");
    image_folder(&data_dir, 4);
    let model = root.join("vit");
    tiny_vit(3).save_merged(&model).unwrap();
    let mut exported = Vec::new();
    // bf16 where the backend has it (the scaled run's cast is part of what is compared).
    let precision = if crate::selected_backend_computes_in(peanut::Precision::Bf16) {
        "bf16"
    } else {
        "f32"
    };
    for (name, extra) in [
        ("plain", &[][..]),
        ("scaled", &["--devices", "cpu:2", "--checkpointing"][..]),
    ] {
        let out = root.join(name);
        let options = [&["--no-augment", "--precision", precision][..], extra].concat();
        crate::train_tiny_image(&data_dir, &model, &out, 16, &options);
        let mut reloaded = tiny_vit(3).valid();
        reloaded.load_adapters(&out.join("export/peft")).unwrap();
        exported.push(trained_values(&reloaded));
    }
    common::assert_close("scaled CLI run", &exported[1], &exported[0], 1e-4);
    let err = peanut_train::cli::run(
        <peanut_train::cli::Cli as clap::Parser>::try_parse_from([
            "peanut",
            "train",
            "image",
            "--data-dir",
            data_dir.to_str().unwrap(),
            "--model",
            model.to_str().unwrap(),
            "--devices",
            "cuda:0,1",
        ])
        .unwrap(),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("--features cuda"), "{err}");
}

/// A two-device run killed after its first epoch resumes on one device (the device count is not
/// part of `run.json`) and ends where the uninterrupted two-device run ends.
#[test]
fn a_two_device_run_resumes_on_one_device() {
    let root = temp_dir("devices-resume");
    image_folder(&root.join("data"), 4);
    let dataset = data::detect(&root.join("data")).unwrap();
    let config = tiny_config(Method::Peanut, 2);
    let device = Default::default();
    let full = root.join("full");
    let two = twice(&device);
    let uninterrupted = train::train_image_on(
        tiny_vit(3),
        &dataset,
        &checked(&config),
        &run(&full, false),
        &two,
    )
    .unwrap();
    let resumed_dir = root.join("resumed");
    copy_epoch(&full, &resumed_dir, 1);
    let resumed = train::train_image(
        tiny_vit(3),
        &dataset,
        &checked(&config),
        &run(&resumed_dir, true),
        &device,
    )
    .unwrap();
    common::assert_close(
        "resumed on one device",
        &trained_values(&resumed.model),
        &trained_values(&uninterrupted.model),
        1e-5,
    );
}

/// Two of `device` (a device of the selected backend need not be `Copy`: wgpu's is not).
fn twice<D: Clone>(device: &D) -> [D; 2] {
    [device.clone(), device.clone()]
}

#[test]
fn a_checkpoints_head_loaded_for_a_bf16_run_keeps_its_f32_values() {
    if !crate::selected_backend_computes_in(peanut::Precision::Bf16) {
        return;
    }
    // The head trains: it is read in f32, not cast to bf16 at load and widened back.
    let root = temp_dir("bf16-head");
    let dir = root.join("vit");
    let model = tiny_vit(3);
    let head = common::values(model.classifier.base.weight.val());
    model.save_merged(&dir).unwrap();
    let options = peanut_models::VitLoadOptions {
        num_labels: Some(3),
        precision: Precision::Bf16,
        ..Default::default()
    };
    let (loaded, report) =
        Vit::<TrainBackend>::from_pretrained(&dir, &options, &Default::default()).unwrap();
    assert_eq!(report.fresh_head, None);
    let (matrices, _) = matrix_dtypes(&loaded);
    assert!(matrices.contains(&DType::BF16), "{matrices:?}");
    let trained = loaded.with_trainable_head(true);
    assert_eq!(common::values(trained.classifier.base.weight.val()), head);
}
