//! Hugging Face interop through the command line, against the golden outputs of
//! `tests/fixtures/make_interop_fixtures.py` (real transformers + peft): peft adapters with a
//! saved classifier, image processors from `preprocessor_config.json`, our exports read by peft,
//! labels in merged checkpoints, LLaMA-style convert / merge / info, and NaN weights refused.

use std::collections::HashMap;

use clap::Parser;

use peanut_models::vit::{ImageProcessorConfig, PREPROCESSOR_FILE};
use peanut_train::cli::{self, Cli, Command, PredictCommand};
use peanut_train::data::{Normalization, Transform};

use super::*;

const IMAGES: [&str; 3] = ["square", "wide", "photo"];

fn interop(relative: &str) -> PathBuf {
    common::fixture(&format!("interop/{relative}"))
}

fn golden() -> HashMap<String, common::Fixed> {
    common::read_fixture(&interop("interop_io.safetensors")).0
}

fn image_paths() -> Vec<PathBuf> {
    IMAGES
        .iter()
        .map(|name| interop(&format!("images/{name}.png")))
        .collect()
}

fn text(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// `peanut predict image --model <model> [--adapter <adapter>] <extra> <images>`.
fn predict(
    model: &Path,
    adapter: Option<&Path>,
    extra: &[&str],
) -> peanut_train::Result<Vec<peanut_train::jobs::Prediction>> {
    let images = image_paths();
    let mut args = vec!["peanut", "predict", "image", "--model", text(model)];
    if let Some(adapter) = adapter {
        args.extend(["--adapter", text(adapter)]);
    }
    args.extend_from_slice(extra);
    args.extend(images.iter().map(|p| text(p)));
    let Command::Predict(PredictCommand::Image(args)) = Cli::try_parse_from(args).unwrap().command
    else {
        unreachable!()
    };
    cli::predict_image(args)
}

/// Each image's logits next to the golden `<prefix>.<image>` ones.
fn assert_logits(
    what: &str,
    predictions: &[peanut_train::jobs::Prediction],
    prefix: &str,
    tol: f64,
) {
    let golden = golden();
    assert_eq!(predictions.len(), IMAGES.len());
    for (prediction, name) in predictions.iter().zip(IMAGES) {
        let got: Vec<f64> = prediction.logits.iter().map(|&v| v as f64).collect();
        let want = &golden[&format!("{prefix}.{name}")].values;
        common::assert_close(&format!("{what} on {name}"), &got, want, tol);
    }
}

#[test]
fn a_peft_classifier_adapter_gives_peft_logits_with_only_model_and_adapter() {
    let predictions = predict(&interop("vit_base"), Some(&interop("vit_peft_cls")), &[]).unwrap();
    assert_logits(
        "peft adapter + modules_to_save",
        &predictions,
        "peft_cls",
        1e-4,
    );
    // The class names come from the base checkpoint's id2label.
    assert!(
        ["tabby", "beagle", "heron"].contains(&predictions[0].top_k[0].label.as_str()),
        "{:?}",
        predictions[0].top_k
    );
    // peft's LoRA format, with rsLoRA and a per-module rank.
    let lora = predict(&interop("vit_base"), Some(&interop("vit_lora_cls")), &[]).unwrap();
    assert_logits(
        "peft LoRA adapter + modules_to_save",
        &lora,
        "lora_cls",
        1e-4,
    );
    // The base model alone gives transformers' base logits (so the head above came from the
    // adapter file, not the checkpoint).
    let base = predict(&interop("vit_base"), None, &[]).unwrap();
    assert_logits("base", &base, "base", 1e-4);
}

#[test]
fn imagenet_statistics_and_bicubic_crops_match_transformers_processor() {
    let golden = golden();
    let processor =
        ImageProcessorConfig::from_file(&interop("vit_imagenet").join(PREPROCESSOR_FILE)).unwrap();
    let transform = Transform::processor(&processor);
    let normalization = Normalization::from_processor(&processor);
    for name in IMAGES {
        let image = image::open(interop(&format!("images/{name}.png"))).unwrap();
        let mut rng = peanut_train::data::rng::SplitMix64::new(0);
        let pixels: Vec<f64> = transform
            .apply(&image, 3, &normalization, &mut rng)
            .into_iter()
            .map(f64::from)
            .collect();
        // PIL's resampling reproduced to the last bit: only float rounding is left.
        common::assert_close(
            &format!("pixels of {name}"),
            &pixels,
            &golden[&format!("imagenet.pixels.{name}")].values,
            1e-5,
        );
    }
    let predictions = predict(&interop("vit_imagenet"), None, &[]).unwrap();
    assert_logits(
        "ImageNet-normalised checkpoint",
        &predictions,
        "imagenet",
        1e-4,
    );
    // Overriding the statistics on the command line changes the answer.
    let overridden = predict(
        &interop("vit_imagenet"),
        None,
        &["--image-mean", "0.5", "--image-std", "0.5"],
    )
    .unwrap();
    assert_ne!(overridden[2].logits, predictions[2].logits);
}

#[test]
fn a_missing_processor_file_falls_back_to_the_checkpoint_size() {
    let root = temp_dir("interop-fallback");
    let model = root.join("vit");
    std::fs::create_dir_all(&model).unwrap();
    for file in ["config.json", "model.safetensors"] {
        std::fs::copy(interop("vit_base").join(file), model.join(file)).unwrap();
    }
    // vit_base's processor is the ViT default at its 16 px size: the same logits without it.
    let predictions = predict(&model, None, &[]).unwrap();
    assert_logits("fallback processor", &predictions, "base", 1e-4);
}

#[test]
fn peft_configs_are_checked_against_their_tensors() {
    let root = temp_dir("interop-config");
    let copy = |name: &str, edit: &dyn Fn(&mut serde_json::Value)| {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let source = interop("vit_peft_cls");
        std::fs::copy(
            source.join("adapter_model.safetensors"),
            dir.join("adapter_model.safetensors"),
        )
        .unwrap();
        let mut config: serde_json::Value =
            serde_json::from_slice(&std::fs::read(source.join("adapter_config.json")).unwrap())
                .unwrap();
        edit(&mut config);
        std::fs::write(dir.join("adapter_config.json"), config.to_string()).unwrap();
        dir
    };
    let model = interop("vit_base");
    let failure = |dir: &Path| predict(&model, Some(dir), &[]).unwrap_err().to_string();

    let dir = copy("targets", &|c| {
        c["target_modules"] = serde_json::json!(["q_proj"])
    });
    let err = failure(&dir);
    assert!(
        err.contains("v_proj") && err.contains("target_modules"),
        "{err}"
    );
    let dir = copy("layers", &|c| {
        c["layers_to_transform"] = serde_json::json!([0])
    });
    let err = failure(&dir);
    assert!(
        err.contains("block 1") && err.contains("layers_to_transform"),
        "{err}"
    );
    let dir = copy("no-save", &|c| {
        c["modules_to_save"] = serde_json::Value::Null
    });
    let err = failure(&dir);
    assert!(
        err.contains("classifier") && err.contains("modules_to_save"),
        "{err}"
    );
    // A single target name as a string, and the layers it really has, are fine.
    let dir = copy("fine", &|c| {
        c["layers_to_transform"] = serde_json::json!([0, 1]);
    });
    predict(&model, Some(&dir), &[]).unwrap();

    // Weights without their configuration are an error, not a silently unadapted model.
    let dir = copy("no-config", &|_| {});
    std::fs::remove_file(dir.join("adapter_config.json")).unwrap();
    let err = failure(&dir);
    assert!(err.contains("adapter_config.json"), "{err}");
    let dir = copy("bad-config", &|_| {});
    std::fs::write(dir.join("adapter_config.json"), "{\"peft_type\": ").unwrap();
    let err = failure(&dir);
    assert!(err.contains("adapter_config.json"), "{err}");
}

#[test]
fn nan_adapters_and_heads_are_refused_naming_the_tensor() {
    let root = temp_dir("interop-nan");
    let dir = root.join("peft");
    std::fs::create_dir_all(&dir).unwrap();
    let source = interop("vit_peft_cls");
    std::fs::copy(
        source.join("adapter_config.json"),
        dir.join("adapter_config.json"),
    )
    .unwrap();
    // Rewrite the adapter file with one NaN in a PEANuT tensor.
    let bytes = std::fs::read(source.join("adapter_model.safetensors")).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let poisoned = "base_model.model.vit.layers.1.attention.v_proj.peanut_B.weight";
    let owned: Vec<(String, Vec<usize>, Vec<u8>)> = file
        .tensors()
        .into_iter()
        .map(|(name, view)| {
            let mut data = view.data().to_vec();
            if name == poisoned {
                data[..4].copy_from_slice(&f32::NAN.to_le_bytes());
            }
            (name, view.shape().to_vec(), data)
        })
        .collect();
    let views = owned.iter().map(|(name, shape, data)| {
        let view =
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), data);
        (name.clone(), view.unwrap())
    });
    std::fs::write(
        dir.join("adapter_model.safetensors"),
        safetensors::serialize(views, None).unwrap(),
    )
    .unwrap();
    let err = predict(&interop("vit_base"), Some(&dir), &[])
        .unwrap_err()
        .to_string();
    assert!(err.contains(poisoned) && err.contains("NaN"), "{err}");

    // merge refuses too, and leaves no checkpoint behind.
    let merged = root.join("merged");
    let err = cli::run(
        Cli::try_parse_from([
            "peanut",
            "merge",
            "--model",
            text(&interop("vit_base")),
            "--adapter",
            text(&dir),
            "--output",
            text(&merged),
        ])
        .unwrap(),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains(poisoned), "{err}");
    assert!(!merged.join("model.safetensors").exists());

    // A good merge there first: the refused one leaves it byte for byte, with no stray files.
    let merge = |adapter: &Path| {
        cli::run(
            Cli::try_parse_from([
                "peanut",
                "merge",
                "--model",
                text(&interop("vit_base")),
                "--adapter",
                text(adapter),
                "--output",
                text(&merged),
            ])
            .unwrap(),
        )
    };
    merge(&interop("vit_peft_cls")).unwrap();
    let good = std::fs::read(merged.join("model.safetensors")).unwrap();
    assert!(merge(&dir).is_err());
    assert_eq!(
        std::fs::read(merged.join("model.safetensors")).unwrap(),
        good
    );
    let mut files: Vec<String> = std::fs::read_dir(&merged)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    files.sort();
    assert_eq!(
        files,
        [
            "config.json",
            "model.safetensors",
            "preprocessor_config.json"
        ]
    );

    // Finite adapters whose merged weight overflows: refused at the write, naming the tensor.
    let huge = root.join("huge");
    std::fs::create_dir_all(&huge).unwrap();
    std::fs::copy(
        source.join("adapter_config.json"),
        huge.join("adapter_config.json"),
    )
    .unwrap();
    let owned: Vec<(String, Vec<usize>, Vec<u8>)> = file
        .tensors()
        .into_iter()
        .map(|(name, view)| {
            let mut data = view.data().to_vec();
            if name.contains(".peanut_") {
                // Every adapter value ±1e20: the merged update overflows f32.
                data = data
                    .chunks_exact(4)
                    .flat_map(|b| {
                        let v = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                        (1e20f32.copysign(v)).to_le_bytes()
                    })
                    .collect();
            }
            (name, view.shape().to_vec(), data)
        })
        .collect();
    let views = owned.iter().map(|(name, shape, data)| {
        let view =
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), data);
        (name.clone(), view.unwrap())
    });
    std::fs::write(
        huge.join("adapter_model.safetensors"),
        safetensors::serialize(views, None).unwrap(),
    )
    .unwrap();
    let err = merge(&huge).unwrap_err().to_string();
    assert!(
        err.contains("non-finite") && err.contains("vit.encoder.layer."),
        "{err}"
    );
    assert_eq!(
        std::fs::read(merged.join("model.safetensors")).unwrap(),
        good
    );

    // A NaN in the head file of an export: named too.
    let export = root.join("export");
    std::fs::create_dir_all(&export).unwrap();
    let weight: Vec<u8> = (0..3 * 16)
        .flat_map(|i| if i == 7 { f32::INFINITY } else { 0.1 }.to_le_bytes())
        .collect();
    let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![3, 16], &weight)
        .unwrap();
    std::fs::write(
        export.join("head.safetensors"),
        safetensors::serialize([("classifier.weight", view)], None).unwrap(),
    )
    .unwrap();
    let err = predict(&interop("vit_base"), Some(&export), &[])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("classifier.weight") && err.contains("inf"),
        "{err}"
    );
}

/// Writes a fresh `train image` export and its `peanut merge` on `vit_base` into `dir`.
fn write_our_export(dir: &Path) {
    let root = temp_dir("interop-ours");
    let data = root.join("data");
    image_folder(&data, 2);
    let run = root.join("run");
    let model = interop("vit_base");
    crate::train_tiny_image(
        &data,
        &model,
        &run,
        16,
        &["--head-lr", "0.5", "--adapter-lr", "0.5"],
    );
    let export = dir.join("ours_export");
    let _ = std::fs::remove_dir_all(&export);
    for file in [
        "peft/adapter_config.json",
        "peft/adapter_model.safetensors",
        "peanut/peanut_config.json",
        "peanut/peanut_adapter.safetensors",
        "head.safetensors",
        "labels.json",
    ] {
        let to = export.join(file);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(run.join("export").join(file), to).unwrap();
    }
    // A LoRA run: its peft export (`"peft_type": "LORA"`, head in `modules_to_save`).
    let lora_run = root.join("lora");
    crate::train_tiny_image(
        &data,
        &model,
        &lora_run,
        16,
        &[
            "--head-lr",
            "0.5",
            "--adapter-lr",
            "0.5",
            "--method",
            "lora",
        ],
    );
    let lora = dir.join("ours_lora");
    let _ = std::fs::remove_dir_all(&lora);
    std::fs::create_dir_all(&lora).unwrap();
    for file in ["adapter_config.json", "adapter_model.safetensors"] {
        std::fs::copy(lora_run.join("export/peft").join(file), lora.join(file)).unwrap();
    }
    // The committed copies name the base by its path inside the repository.
    for config in [
        export.join("peft/adapter_config.json"),
        lora.join("adapter_config.json"),
    ] {
        let mut json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&config).unwrap()).unwrap();
        json["base_model_name_or_path"] = "tests/fixtures/interop/vit_base".into();
        std::fs::write(&config, serde_json::to_vec_pretty(&json).unwrap()).unwrap();
    }
    let merged = dir.join("ours_merged");
    let _ = std::fs::remove_dir_all(&merged);
    cli::run(
        Cli::try_parse_from([
            "peanut",
            "merge",
            "--model",
            text(&model),
            "--adapter",
            text(&export),
            "--output",
            text(&merged),
        ])
        .unwrap(),
    )
    .unwrap();
}

/// Our committed export (regenerate with `PEANUT_WRITE_FIXTURES=1` on this test, then rerun the
/// fixture script) as peft and transformers read it: `PeftModel.from_pretrained(base,
/// ours_export/peft)` and `ViTForImageClassification.from_pretrained(ours_merged)` gave the
/// golden `ours.*` / `ours_merged.*` logits; ours must be the same.
#[test]
fn our_exports_load_in_peft_and_transformers_with_nothing_copied() {
    if std::env::var_os("PEANUT_WRITE_FIXTURES").is_some() {
        write_our_export(&interop(""));
    }
    let model = interop("vit_base");
    let export = interop("ours_export");
    // Our head went into the peft export as `modules_to_save`.
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(export.join("peft/adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(config["modules_to_save"], serde_json::json!(["classifier"]));
    let ours = predict(&model, Some(&export), &[]).unwrap();
    assert_logits("our export vs peft on it", &ours, "ours", 1e-4);
    // The peft directory alone carries everything (labels aside).
    let peft_only = predict(&model, Some(&export.join("peft")), &[]).unwrap();
    assert_logits("our peft export alone", &peft_only, "ours", 1e-4);
    let lora = predict(&model, Some(&interop("ours_lora")), &[]).unwrap();
    assert_logits(
        "our LoRA peft export vs peft on it",
        &lora,
        "ours_lora",
        1e-4,
    );
    // The merged checkpoint: transformers' logits, our labels in its config.json.
    let merged = interop("ours_merged");
    let predictions = predict(&merged, None, &[]).unwrap();
    assert_logits("our merged checkpoint", &predictions, "ours_merged", 1e-4);
    assert_logits(
        "our merged checkpoint vs adapters",
        &predictions,
        "ours",
        1e-4,
    );
    let config = VitConfig::from_hf_file(&merged.join("config.json")).unwrap();
    assert_eq!(
        config.id2label.unwrap(),
        ["blue", "green", "red"].map(String::from)
    );
    assert!(merged.join(PREPROCESSOR_FILE).is_file());
}

#[test]
fn a_fresh_export_carries_head_and_labels_into_peft_and_the_merged_config() {
    let root = temp_dir("interop-fresh");
    write_our_export(&root);
    let export = root.join("ours_export");
    let with_head = predict(&interop("vit_base"), Some(&export), &[]).unwrap();
    let peft_only = predict(&interop("vit_base"), Some(&export.join("peft")), &[]).unwrap();
    // The same tensors, read from either format; peft's are stored transposed, so a backend may
    // sum the products in another order (CPU flex: ~1e-7).
    for (a, b) in with_head.iter().zip(&peft_only) {
        for (x, y) in a.logits.iter().zip(&b.logits) {
            assert!((x - y).abs() <= 1e-5 * x.abs().max(1.0), "{a:?} vs {b:?}");
        }
    }
    // labels.json names the classes of the export; the merged config carries them.
    assert_eq!(
        with_head[0].top_k[0].label,
        ["blue", "green", "red"][with_head[0].top_k[0].index]
    );
    let merged = VitConfig::from_hf_file(&root.join("ours_merged/config.json")).unwrap();
    assert_eq!(
        merged.id2label.unwrap(),
        ["blue", "green", "red"].map(String::from)
    );
    // peft → peanut keeps the head as head.safetensors; back to peft restores modules_to_save.
    let convert = |input: &Path, output: &Path, to: &str| {
        cli::run(
            Cli::try_parse_from([
                "peanut",
                "convert",
                "--input",
                text(input),
                "--output",
                text(output),
                "--to",
                to,
            ])
            .unwrap(),
        )
        .unwrap();
    };
    convert(&export.join("peft"), &root.join("native"), "peanut");
    assert!(root.join("native/head.safetensors").is_file());
    convert(&root.join("native"), &root.join("back"), "peft");
    let back = predict(&interop("vit_base"), Some(&root.join("back")), &[]).unwrap();
    for (a, b) in back.iter().zip(&peft_only) {
        common::assert_close(
            "peft → peanut → peft",
            &a.logits.iter().map(|&v| v as f64).collect::<Vec<_>>(),
            &b.logits.iter().map(|&v| v as f64).collect::<Vec<_>>(),
            1e-6,
        );
    }
}

#[test]
fn llama_adapters_convert_merge_and_info_by_model_type() {
    let root = temp_dir("interop-llama");
    let model = common::fixture("models/llama");
    let adapter = common::fixture("models/llama_peanut");
    let run = |args: &[&str]| {
        cli::run(
            Cli::try_parse_from(std::iter::once("peanut").chain(args.iter().copied())).unwrap(),
        )
    };
    // peft → peanut → peft round trip, naming chosen from the tensors (no --model) and from
    // config.json (--model).
    let native = root.join("native");
    let back = root.join("back");
    run(&[
        "convert",
        "--input",
        text(&adapter),
        "--output",
        text(&native),
        "--to",
        "peanut",
    ])
    .unwrap();
    run(&[
        "convert",
        "--input",
        text(&native),
        "--output",
        text(&back),
        "--to",
        "peft",
        "--model",
        text(&model),
    ])
    .unwrap();
    let device = Default::default();
    let load = |dir: &Path| {
        peanut::io::load_any::<common::Cpu>(dir, &peanut_models::llama::LlamaPeftPaths, &device)
            .unwrap()
    };
    let (original, reread) = (load(&adapter), load(&back));
    assert_eq!(original.len(), 10);
    assert_eq!(
        original.keys().collect::<Vec<_>>(),
        reread.keys().collect::<Vec<_>>()
    );
    let tensors = |adapter: &peanut::Adapter<common::Cpu>| -> Vec<f64> {
        let peanut::Adapter::Peanut(p) = adapter else {
            panic!("a PEANuT adapter")
        };
        let mut out = common::values(p.a.val());
        for m in p.encoders.iter().chain(&p.decoders) {
            out.extend(common::values(m.val()));
        }
        out.extend(common::values(p.b.val()));
        out
    };
    for (path, adapter) in &original {
        assert_eq!(tensors(&reread[path]), tensors(adapter), "{path}");
    }

    // merge: a LLaMA checkpoint whose plain forward equals the adapted one (transformers' logits).
    let merged = root.join("merged");
    run(&[
        "merge",
        "--model",
        text(&model),
        "--adapter",
        text(&adapter),
        "--output",
        text(&merged),
    ])
    .unwrap();
    assert!(merged.join("config.json").is_file());
    let llama = peanut_models::Llama::<common::Cpu>::from_pretrained(&merged, &device).unwrap();
    let (io, _) = common::read_fixture(&common::fixture("models/llama_io.safetensors"));
    let ids: Vec<i64> = io["input_ids"].values.iter().map(|&v| v as i64).collect();
    let ids = burn::tensor::Tensor::<common::Cpu, 2, burn::tensor::Int>::from_data(
        burn::tensor::TensorData::new(ids, [2, 7]),
        &device,
    );
    let logits = llama.forward(ids, None);
    common::assert_close(
        "merged llama",
        &common::values(logits),
        &io["llama_adapted_logits"].values,
        1e-3,
    );

    // info: LLaMA defaults (q,k,v,up,down at rank 32).
    let Command::Info(args) = Cli::try_parse_from(["peanut", "info", "--model", text(&model)])
        .unwrap()
        .command
    else {
        unreachable!()
    };
    let report = cli::info(args).unwrap();
    assert_eq!(report.family, peanut_models::ModelFamily::Llama);
    assert_eq!(report.adapted.len(), 2 * 5);
    assert!(
        report
            .adapted
            .iter()
            .all(|p| p.starts_with("model.layers."))
    );
    assert!(report.processor.is_none());

    // info on a ViT shows how its images are prepared.
    let Command::Info(args) =
        Cli::try_parse_from(["peanut", "info", "--model", text(&interop("vit_imagenet"))])
            .unwrap()
            .command
    else {
        unreachable!()
    };
    let report = cli::info(args).unwrap();
    assert_eq!(report.family, peanut_models::ModelFamily::Vit);
    let processor = report.processor.clone().unwrap();
    assert_eq!(processor.crop_size, Some((24, 24)));
    assert!(report.to_string().contains("0.485"), "{report}");
}
