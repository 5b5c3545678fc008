//! Image classification: every method on ImageFolder, resume, divergence, bad layouts and images.

use super::*;

#[test]
fn image_folder_trains_every_method_and_exports_reloadable_adapters() {
    let root = temp_dir("folder");
    image_folder(&root.join("data"), 4);
    let dataset = data::detect(&root.join("data")).unwrap();
    assert_eq!(dataset.layout, Layout::ImageFolder);
    assert_eq!(dataset.classes, ["blue", "green", "red"]);
    assert_eq!(dataset.train.samples.len(), 12);
    let device = Default::default();
    for method in [Method::Peanut, Method::Lora, Method::Head, Method::Full] {
        let dir = root.join(method.name());
        let before = tiny_vit(3);
        let trained = train::train_image(
            before,
            &dataset,
            &checked(&tiny_config(method, 1)),
            &run(&dir, false),
            &device,
        )
        .unwrap();
        let expected = match method {
            // q and v of 2 blocks: PEANuT 2·r·d_out = 2·2·32, LoRA r·(32+32); head 32·3 + 3.
            Method::Peanut | Method::Lora => 4 * 2 * 2 * 32 + 99,
            Method::Head => 99,
            Method::Full => tiny_vit(3).num_params_total(),
        };
        assert_eq!(trained.trainable_params, expected, "{}", method.name());
        assert!(train::last_checkpoint(&dir).is_some());
        let exported = train::export(&trained.model, &dir.join("export"), None).unwrap();
        if matches!(method, Method::Peanut | Method::Lora) {
            // The peft-format adapter (PEANUT or LORA), whose `modules_to_save` holds the
            // trained head, reloads onto a fresh model and gives the same outputs.
            let peft = dir.join("export/peft");
            assert!(exported.contains(&peft));
            let mut fresh = tiny_vit(3).valid();
            fresh.load_adapters(&peft).unwrap();
            let x = burn::tensor::Tensor::<_, 4>::ones([1, 3, 16, 16], &device);
            let a = common::values(trained.model.forward(x.clone()));
            let b = common::values(fresh.forward(x));
            common::assert_close("peft reload", &b, &a, 1e-5);
        }
    }
}

trait TotalParams {
    fn num_params_total(&self) -> usize;
}
impl<B: Backend> TotalParams for Vit<B> {
    fn num_params_total(&self) -> usize {
        burn::module::Module::num_params(self)
    }
}

#[test]
fn resume_after_a_crash_equals_an_uninterrupted_run() {
    let root = temp_dir("resume");
    image_folder(&root.join("data"), 3);
    let dataset = data::detect(&root.join("data")).unwrap();
    let device = Default::default();
    let config = ImageTrainConfig {
        augment: true,
        ..tiny_config(Method::Peanut, 2)
    };
    let full = train::train_image(
        tiny_vit(3),
        &dataset,
        &checked(&config),
        &run(&root.join("full"), false),
        &device,
    )
    .unwrap();

    // Killed during epoch 2: only the epoch-1 checkpoint (and run.json) survive. Resuming from
    // them must reproduce the uninterrupted run exactly: same data order and augmentation,
    // optimizer moments and schedule position.
    let copy = root.join("copy");
    copy_epoch(&root.join("full"), &copy, 1);
    let resumed = train::train_image(
        tiny_vit(3),
        &dataset,
        &checked(&config),
        &run(&copy, true),
        &device,
    )
    .unwrap();
    common::assert_close(
        "resumed",
        &adapter_values(&resumed.model),
        &adapter_values(&full.model),
        1e-6,
    );
    // The resumed epoch is logged as epoch 2 (burn's store numbers it 1), with the losses of the
    // uninterrupted run's epoch 2; the copied run has no epoch-1 logs of its own.
    for split in ["train", "valid"] {
        let log = |run: &str| {
            std::fs::read_to_string(root.join(run).join(split).join("epoch-2/Loss.log"))
                .unwrap_or_else(|e| panic!("{run} {split} epoch-2: {e}"))
        };
        assert_eq!(log("copy"), log("full"), "{split}");
        assert!(!copy.join(split).join("epoch-1").exists(), "{split}");
    }
}

#[test]
fn a_diverging_run_stops_with_a_clear_message() {
    let root = temp_dir("nan");
    image_folder(&root.join("data"), 3);
    let dataset = data::detect(&root.join("data")).unwrap();
    let config = ImageTrainConfig {
        head_lr: 1e30,
        adapter_lr: 1e30,
        ..tiny_config(Method::Full, 3)
    };
    let dir = root.join("run");
    let err = train::train_image(
        tiny_vit(3),
        &dataset,
        &checked(&config),
        &run(&dir, false),
        &Default::default(),
    )
    .err()
    .expect("must diverge");
    assert!(matches!(err, TrainError::NonFiniteLoss { .. }), "{err}");
    assert!(err.to_string().contains("non-finite"), "{err}");
    // The guard reads losses off the training thread, but no diverged epoch is committed: the
    // first step's update already overflows, so no epoch is good, and nothing is left staged.
    assert_eq!(train::last_checkpoint(&dir), None);
    let staged: Vec<_> = std::fs::read_dir(dir.join("checkpoint"))
        .map(|entries| entries.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(staged.is_empty(), "{staged:?}");
}

#[test]
fn wrong_layouts_name_the_path_and_the_layouts() {
    let root = temp_dir("bad");
    std::fs::create_dir_all(root.join("empty")).unwrap();
    let err = data::detect(&root.join("empty")).unwrap_err().to_string();
    assert!(
        err.contains("empty") && err.contains("ImageFolder") && err.contains("devkit"),
        "{err}"
    );
    let err = data::detect(&root.join("missing")).unwrap_err().to_string();
    assert!(err.contains("missing"), "{err}");
    // A devkit layout without its annotations names the missing file.
    std::fs::create_dir_all(root.join("cars/devkit")).unwrap();
    std::fs::create_dir_all(root.join("cars/cars_train")).unwrap();
    let err = data::detect(&root.join("cars")).unwrap_err().to_string();
    assert!(err.contains("cars_meta.mat"), "{err}");
}

#[test]
fn unreadable_images_are_skipped_and_counted() {
    let root = temp_dir("corrupt");
    image_folder(&root.join("data"), 2);
    std::fs::write(root.join("data/train/red/broken.png"), b"not an image").unwrap();
    let dataset = data::detect(&root.join("data")).unwrap();
    assert_eq!(dataset.train.skipped, 1);
    assert_eq!(dataset.train.samples.len(), 6);
}

#[test]
fn a_new_run_refuses_a_used_directory_unless_told_to_overwrite() {
    let root = temp_dir("overwrite");
    image_folder(&root.join("data"), 2);
    let dataset = data::detect(&root.join("data")).unwrap();
    let config = tiny_config(Method::Head, 1);
    let dir = root.join("run");
    let train = |run: RunOptions| {
        train::train_image(
            tiny_vit(3),
            &dataset,
            &checked(&config),
            &run,
            &Default::default(),
        )
    };
    train(run(&dir, false)).unwrap();
    let err = train(run(&dir, false)).err().expect("a used directory");
    assert!(matches!(err, TrainError::RunDirectoryInUse { .. }), "{err}");
    assert!(err.to_string().contains("--overwrite"), "{err}");
    // A file of the user's survives --overwrite; the old run's files do not.
    std::fs::write(dir.join("notes.txt"), "mine").unwrap();
    std::fs::create_dir_all(dir.join("checkpoint/epoch-7")).unwrap();
    train(RunOptions {
        overwrite: true,
        ..run(&dir, false)
    })
    .unwrap();
    assert!(dir.join("notes.txt").is_file());
    assert!(!dir.join("checkpoint/epoch-7").exists());
    assert_eq!(train::last_checkpoint(&dir), Some(1));
    // A directory that is not a run cannot be resumed; an empty one starts a new run.
    let other = root.join("other");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(other.join("notes.txt"), "mine").unwrap();
    let err = train(run(&other, true)).err().expect("not a run");
    assert!(err.to_string().contains("run.json"), "{err}");
    let empty = root.join("empty");
    train(run(&empty, true)).unwrap();
    assert_eq!(train::last_checkpoint(&empty), Some(1));
}

#[test]
fn a_resume_with_other_settings_names_the_field_and_both_values() {
    let root = temp_dir("mismatch");
    image_folder(&root.join("data"), 2);
    image_folder(&root.join("data2"), 2);
    let dataset = data::detect(&root.join("data")).unwrap();
    let device = Default::default();
    let config = tiny_config(Method::Peanut, 2);
    let dir = root.join("run");
    let started = RunOptions {
        model: "models/vit".into(),
        ..run(&dir, false)
    };
    train::train_image(tiny_vit(3), &dataset, &checked(&config), &started, &device).unwrap();
    let resume = RunOptions {
        resume: true,
        ..started.clone()
    };
    let error = |model: Vit<TrainBackend>,
                 dataset: &data::ImageDataset,
                 config: ImageTrainConfig,
                 run: RunOptions| {
        train::train_image(model, dataset, &checked(&config), &run, &device)
            .err()
            .expect("a mismatch")
            .to_string()
    };
    let rank = ImageTrainConfig {
        adapter: AdapterOptions {
            rank: 3,
            ..config.adapter.clone()
        },
        ..config.clone()
    };
    let err = error(tiny_vit(3), &dataset, rank, resume.clone());
    assert!(
        err.contains(
            "`config.adapter.rank` differs: the run was started with 2, this command has 3"
        ),
        "{err}"
    );
    let other_data = data::detect(&root.join("data2")).unwrap();
    let err = error(tiny_vit(3), &other_data, config.clone(), resume.clone());
    assert!(err.contains("`data`") && err.contains("data2"), "{err}");
    let moved = RunOptions {
        model: "elsewhere/vit".into(),
        ..resume.clone()
    };
    let err = error(tiny_vit(3), &dataset, config.clone(), moved);
    assert!(
        err.contains("`model`") && err.contains("elsewhere/vit"),
        "{err}"
    );
    // Other base weights (same shapes) change the fingerprint.
    let mut vit_config = peanut_models::VitConfig::tiny();
    vit_config.num_labels = 3;
    let other_base = vit_config.init::<TrainBackend>(99, &device).unwrap();
    let err = error(other_base, &dataset, config.clone(), resume.clone());
    assert!(err.contains("base_fingerprint"), "{err}");
}

#[test]
fn resume_skips_damaged_and_half_written_checkpoints() {
    let root = temp_dir("damaged");
    image_folder(&root.join("data"), 3);
    let dataset = data::detect(&root.join("data")).unwrap();
    let device = Default::default();
    let config = tiny_config(Method::Peanut, 3);
    let full = train::train_image(
        tiny_vit(3),
        &dataset,
        &checked(&config),
        &run(&root.join("full"), false),
        &device,
    )
    .unwrap();
    // Only the last two epochs are kept, each a directory with a manifest.
    let folder = root.join("full/checkpoint");
    let mut kept: Vec<String> = std::fs::read_dir(&folder)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    kept.sort();
    assert_eq!(kept, ["epoch-2", "epoch-3"]);

    // A run killed while writing epoch 3's checkpoint a second time over a disk fault: epoch 3
    // truncated, epoch 2 intact, a staging directory half full.
    let copy = root.join("copy");
    copy_epoch(&root.join("full"), &copy, 2);
    copy_epoch(&root.join("full"), &copy, 3);
    assert_eq!(train::last_checkpoint(&copy), Some(3));
    let model = train::checkpoint::epoch_dir(&copy, 3).join("model.mpk");
    let bytes = std::fs::read(&model).unwrap();
    std::fs::write(&model, &bytes[..bytes.len() / 2]).unwrap();
    assert_eq!(train::last_checkpoint(&copy), Some(2));
    std::fs::create_dir_all(copy.join("checkpoint/epoch-4.tmp")).unwrap();
    std::fs::write(copy.join("checkpoint/epoch-4.tmp/optim.mpk"), b"partial").unwrap();
    // Resuming falls back to epoch 2 and ends where the uninterrupted run ended, with the
    // damaged and staging directories gone.
    let resumed = train::train_image(
        tiny_vit(3),
        &dataset,
        &checked(&config),
        &run(&copy, true),
        &device,
    )
    .unwrap();
    assert!(!copy.join("checkpoint/epoch-4.tmp").exists());
    assert_eq!(train::last_checkpoint(&copy), Some(3));
    assert_eq!(
        adapter_values(&resumed.model),
        adapter_values(&full.model),
        "a resumed run must be bit-identical"
    );
}
#[test]
fn epoch_checkpoints_hold_the_trainable_parameters_only() {
    let root = temp_dir("slim");
    image_folder(&root.join("data"), 2);
    let dataset = data::detect(&root.join("data")).unwrap();
    let config = tiny_config(Method::Peanut, 1);
    let dir = root.join("run");
    let trained = train::train_image(
        tiny_vit(3),
        &dataset,
        &checked(&config),
        &run(&dir, false),
        &Default::default(),
    )
    .unwrap();
    let epoch = train::checkpoint::epoch_dir(&dir, 1);
    let size = |name: &str| std::fs::metadata(epoch.join(name)).unwrap().len() as usize;
    let total = burn::module::Module::num_params(&tiny_vit(3));
    let trainable = trained.trainable_params;
    // f32 values plus names and ids: within a small overhead of 4 bytes per trainable value,
    // far below the whole model.
    let model = size("model.mpk");
    assert!(
        model >= 4 * trainable,
        "{model} bytes for {trainable} values"
    );
    assert!(
        model < 4 * trainable + 8 * 1024,
        "{model} bytes for {trainable} values"
    );
    assert!(
        model * 4 < 4 * total,
        "{model} bytes vs {total} parameters in the model"
    );
    // AdamW keeps two moments per trainable value.
    let optim = size("optim.mpk");
    assert!(
        optim >= 8 * trainable && optim < 8 * trainable + 16 * 1024,
        "{optim}"
    );
    eprintln!(
        "checkpoint of {trainable} trainable / {total} parameters: model {model} B, optimizer \
         {optim} B"
    );
}

#[test]
fn library_callers_get_the_command_lines_checks() {
    // The pipelines take only a checked configuration (`train::Checked`), so `check` is where
    // a library caller meets the command line's checks.
    for (config, option) in [
        (
            ImageTrainConfig {
                weight_decay: f64::NAN,
                ..tiny_config(Method::Peanut, 1)
            },
            "--weight-decay",
        ),
        (
            ImageTrainConfig {
                adapter: AdapterOptions {
                    lora_alpha: 0.0,
                    ..AdapterOptions::default()
                },
                ..tiny_config(Method::Lora, 1)
            },
            "--lora-alpha",
        ),
    ] {
        let err = config.check().expect_err("refused");
        assert!(
            matches!(&err, TrainError::InvalidOption { option: o, .. } if *o == option),
            "{option}: {err}"
        );
    }
}

/// `--save-initial` writes where a run starts and the order it trains in: replaying the run
/// from those files alone (the adapters and head it wrote, batches taken in the written order,
/// the same step and optimizer) ends where the run ended.
#[test]
fn save_initial_writes_the_start_and_the_order_a_replay_follows() {
    use burn::tensor::{Int, Tensor, TensorData};
    use burn::train::{Interrupter, Learner};
    use peanut_models::vit::VitPeftPaths;
    use peanut_train::data::{ImageBatch, ImageBatcher, SampleRef, Transform};
    use peanut_train::train::fit::optimizer;
    use peanut_train::train::{LearningRates, LossGuard, StepSettings, Trainee};

    let root = temp_dir("save-initial");
    image_folder(&root.join("data"), 4);
    let dataset = data::detect(&root.join("data")).unwrap();
    let device = Default::default();
    let config = ImageTrainConfig {
        augment: false,
        decay: Decay::Constant,
        ..tiny_config(Method::Peanut, 2)
    };
    let dir = root.join("run");
    let trained = train::train_image(
        tiny_vit(3),
        &dataset,
        &checked(&config),
        &RunOptions {
            save_initial: true,
            ..run(&dir, false)
        },
        &device,
    )
    .unwrap();

    let initial = dir.join(train::run::INITIAL_DIR);
    let order: serde_json::Value =
        serde_json::from_slice(&std::fs::read(initial.join(train::run::ORDER_FILE)).unwrap())
            .unwrap();
    assert_eq!(order["seed"], 5);
    assert_eq!(order["examples"], 12);
    let epochs: Vec<Vec<usize>> = serde_json::from_value(order["epochs"].clone()).unwrap();
    assert_eq!(epochs.len(), 2);
    for epoch in &epochs {
        let mut sorted = epoch.clone();
        sorted.sort();
        assert_eq!(
            sorted,
            (0..12).collect::<Vec<_>>(),
            "a permutation of the split"
        );
    }
    assert_ne!(epochs[0], epochs[1], "reshuffled every epoch");

    // The replay: a fresh model with the written adapters and head, the run's step.
    let mut model = tiny_vit(3);
    let (adapters, saved) =
        peanut::io::load_any_with_saved::<TrainBackend>(&initial, &VitPeftPaths, &device).unwrap();
    assert!(
        adapters.values().all(|a| match a {
            peanut::Adapter::Peanut(p) => common::values(p.b.val()).iter().all(|v| *v == 0.0),
            _ => false,
        }),
        "the start is before the first update (B = 0)"
    );
    peanut::io::attach(model.linears_mut(), adapters).unwrap();
    peanut::io::attach_saved(model.linears_mut(), &saved).unwrap();
    let model = model.with_trainable_head(true);
    let settings = StepSettings {
        learning_rates: LearningRates {
            head: config.head_lr,
            body: config.adapter_lr,
        },
        clip_grad_norm: None,
        loss_divisor: 1,
        grad_accumulation: 1,
        steps_per_epoch: 3,
        rescale_partial: false,
        recompute_layers: false,
    };
    let trainee = Trainee::new(model, LossGuard::new(Interrupter::new(), 0), settings);
    let mut learner = Learner::new(trainee, optimizer(config.weight_decay).init(), 1.0);
    let batcher = ImageBatcher::new(
        dataset.train.samples.clone().into(),
        Transform::eval(config.image_size),
        config.normalization,
        3,
        config.seed,
    );
    for (pass, epoch) in epochs.iter().enumerate() {
        for step in epoch.chunks(config.batch_size) {
            let (mut pixels, mut labels) = (Vec::new(), Vec::new());
            for &index in step {
                let (values, label) = batcher.load(SampleRef { index, pass }).unwrap();
                pixels.extend(values);
                labels.push(label as i64);
            }
            let n = step.len();
            let batch = ImageBatch {
                images: Tensor::from_data(TensorData::new(pixels, [n, 3, 16, 16]), &device),
                targets: Tensor::<TrainBackend, 1, Int>::from_data(
                    TensorData::new(labels, [n]),
                    &device,
                ),
            };
            learner.lr_step();
            let output = learner.train_step(batch);
            learner.optimizer_step(output.grads);
        }
    }
    // The replay makes its batches and steps by another path than burn's Learner loop, so the
    // last bits of a sum may differ (6.6e-7 of 0.22 seen); a wrong start or order moves the
    // tensors by 1e-3 and more.
    let replayed = learner.model().model.valid();
    common::assert_close(
        "replay from initial/",
        &adapter_values(&replayed),
        &adapter_values(&trained.model),
        1e-5,
    );
}

/// `--save-initial` needs adapters (peft's format is an adapter format): asked of a linear
/// probe, the run is refused before its directory is made.
#[test]
fn save_initial_without_adapters_is_refused_before_the_run_starts() {
    let root = temp_dir("save-initial-head");
    image_folder(&root.join("data"), 2);
    let dataset = data::detect(&root.join("data")).unwrap();
    let dir = root.join("run");
    let err = train::train_image(
        tiny_vit(3),
        &dataset,
        &checked(&tiny_config(Method::Head, 1)),
        &RunOptions {
            save_initial: true,
            ..run(&dir, false)
        },
        &Default::default(),
    )
    .err()
    .expect("refused");
    assert!(
        matches!(&err, TrainError::InvalidOption { option: "--save-initial", reason } if reason.contains("no adapters")),
        "{err}"
    );
    assert!(!dir.exists(), "the run directory is not made");
}
