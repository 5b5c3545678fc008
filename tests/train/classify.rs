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
            &tiny_config(method, 1),
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
        &config,
        &run(&root.join("full"), false),
        &device,
    )
    .unwrap();

    // Killed during epoch 2: only the epoch-1 checkpoint (and run.json) survive. Resuming from
    // them must reproduce the uninterrupted run exactly: same data order and augmentation,
    // optimizer moments and schedule position.
    let copy = root.join("copy");
    std::fs::create_dir_all(copy.join("checkpoint")).unwrap();
    std::fs::copy(root.join("full/run.json"), copy.join("run.json")).unwrap();
    for part in ["model", "optim", "scheduler"] {
        let from = root.join(format!("full/checkpoint/{part}-1.mpk"));
        std::fs::copy(&from, copy.join(format!("checkpoint/{part}-1.mpk"))).unwrap();
    }
    let resumed =
        train::train_image(tiny_vit(3), &dataset, &config, &run(&copy, true), &device).unwrap();
    common::assert_close(
        "resumed",
        &adapter_values(&resumed.model),
        &adapter_values(&full.model),
        1e-6,
    );
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
    let err = train::train_image(
        tiny_vit(3),
        &dataset,
        &config,
        &run(&root.join("run"), false),
        &Default::default(),
    )
    .err()
    .expect("must diverge");
    assert!(matches!(err, TrainError::NonFiniteLoss { .. }), "{err}");
    assert!(err.to_string().contains("non-finite"), "{err}");
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
