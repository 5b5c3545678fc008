//! The `peanut` command line, run in-process: every subcommand parsed by clap and dispatched by
//! `cli::run` (or, where the test reads what it reports, by the subcommand's function), on a tiny
//! ViT checkpoint and an ImageFolder written by the test.

use std::collections::BTreeMap;

use burn::module::Module;
use clap::error::ErrorKind;
use clap::{CommandFactory, Parser};
use peanut_train::cli::{self, Cli, Command, EvalCommand, PredictCommand};

use super::*;

/// `peanut <args>`, parsed; panics with clap's message when parsing fails.
fn parse(args: &[&str]) -> Cli {
    Cli::try_parse_from(std::iter::once("peanut").chain(args.iter().copied()))
        .unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

/// The error of `peanut <args>`: clap's, or the command's.
fn failure(args: &[&str]) -> String {
    match Cli::try_parse_from(std::iter::once("peanut").chain(args.iter().copied())) {
        Err(e) => e.to_string(),
        Ok(cli) => cli::run(cli)
            .err()
            .unwrap_or_else(|| panic!("{args:?} succeeded"))
            .to_string(),
    }
}

fn text(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// A transformers-format tiny ViT (16 px, 3 labels) in `dir`.
fn tiny_checkpoint(dir: &Path) -> PathBuf {
    let model = dir.join("vit");
    tiny_vit(3).save_merged(&model).unwrap();
    model
}

fn predict(
    model: &Path,
    adapter: Option<&Path>,
    images: &[PathBuf],
) -> Vec<peanut_train::jobs::Prediction> {
    let mut args = vec![
        "predict",
        "image",
        "--model",
        text(model),
        "--image-size",
        "16",
    ];
    if let Some(adapter) = adapter {
        args.extend(["--adapter", text(adapter)]);
    }
    args.extend(["--top-k", "2"]);
    args.extend(images.iter().map(|p| text(p)));
    let Command::Predict(PredictCommand::Image(args)) = parse(&args).command else {
        unreachable!()
    };
    cli::predict_image(args).unwrap()
}

fn logits(predictions: &[peanut_train::jobs::Prediction]) -> Vec<f64> {
    predictions
        .iter()
        .flat_map(|p| p.logits.iter().map(|&v| v as f64))
        .collect()
}

#[test]
fn train_eval_predict_merge_and_convert_from_the_command_line() {
    let root = temp_dir("cli");
    let data_dir = root.join("data");
    image_folder(&data_dir, 2);
    let model = tiny_checkpoint(&root);
    let out = root.join("run");

    // train image: one epoch, 2 steps, adapters + head exported, merged model written.
    crate::train_tiny_image(&data_dir, &model, &out, 16, &["--merged"]);
    let export = out.join("export");
    for file in [
        "peanut/peanut_config.json",
        "peft/adapter_config.json",
        "peft/adapter_model.safetensors",
        "head.safetensors",
        "labels.json",
    ] {
        assert!(export.join(file).is_file(), "{file}");
    }
    let labels: Vec<String> =
        serde_json::from_slice(&std::fs::read(export.join("labels.json")).unwrap()).unwrap();
    assert_eq!(labels, ["blue", "green", "red"]);
    assert!(out.join("run.json").is_file());
    assert_eq!(train::last_checkpoint(&out), Some(1));

    // eval image: the test split, as a report (and printed as JSON by `run`).
    let eval = [
        "eval",
        "image",
        "--data-dir",
        text(&data_dir),
        "--model",
        text(&model),
        "--adapter",
        text(&export),
        "--image-size",
        "16",
    ];
    let Command::Eval(EvalCommand::Image(args)) = parse(&eval).command else {
        unreachable!()
    };
    let report = cli::eval_image(args).unwrap();
    assert_eq!((report.count, report.skipped), (6, 0));
    assert!((0.0..=1.0).contains(&report.top1) && report.top5 >= report.top1);
    assert!(report.loss.is_finite());
    // The same job built in Rust, without the command line, gives the same report.
    let job = peanut_train::jobs::EvalImageJob {
        adapter: Some(export.clone()),
        processor: peanut_train::jobs::ProcessorOverrides {
            image_size: Some(16),
            ..Default::default()
        },
        ..peanut_train::jobs::EvalImageJob::new(&data_dir, &model)
    };
    let from_rust = job.run().unwrap();
    assert_eq!(
        (
            from_rust.top1,
            from_rust.top5,
            from_rust.loss,
            from_rust.count
        ),
        (report.top1, report.top5, report.loss, report.count)
    );
    cli::run(parse(&eval)).unwrap();
    // On an int8 base (every backbone linear quantized as it is read) the export evaluates
    // with a loss near the float base's: int8 moves each weight by at most 1/254 of its block's
    // largest.
    if train::check_quantization::<peanut_train::backend::Selected>(
        &Default::default(),
        Some(peanut::Quantization::Int8),
    )
    .is_ok()
    {
        let quantized = peanut_train::jobs::EvalImageJob {
            quantize: Some(peanut::Quantization::Int8),
            ..job.clone()
        }
        .run()
        .unwrap();
        assert_eq!(quantized.count, report.count);
        assert!(
            (quantized.loss - report.loss).abs() <= 0.05 * report.loss.abs().max(1e-3),
            "int8 {} vs f32 {}",
            quantized.loss,
            report.loss
        );
    }

    // predict image: top-2 labels by name, sorted, and all 3 logits, per image.
    let images = [
        data_dir.join("test/red/0.png"),
        data_dir.join("test/blue/1.png"),
    ];
    let adapted = predict(&model, Some(&export), &images);
    assert_eq!(adapted.len(), 2);
    for (prediction, image) in adapted.iter().zip(&images) {
        assert_eq!(&prediction.image, image);
        assert_eq!(prediction.logits.len(), 3);
        assert_eq!(prediction.top_k.len(), 2);
        let best = prediction.logits.iter().copied().fold(f32::MIN, f32::max);
        assert_eq!(prediction.top_k[0].logit, best);
        assert!(prediction.top_k[0].logit >= prediction.top_k[1].logit);
        for ranked in &prediction.top_k {
            assert_eq!(ranked.label, labels[ranked.index]);
            assert_eq!(ranked.logit, prediction.logits[ranked.index]);
        }
    }
    let json = serde_json::to_value(&adapted).unwrap();
    assert!(json[0]["top_k"][0]["label"].is_string() && json[1]["logits"].is_array());
    // Without an adapter the base model's own head answers, labelled by index.
    let base = predict(&model, None, &images);
    assert_eq!(base[0].top_k[0].label, base[0].top_k[0].index.to_string());
    assert_ne!(logits(&base), logits(&adapted));

    // The merged model `train image --merged` wrote and the one `merge` writes are
    // transformers checkpoints that reload and predict what the adapters predict.
    let merged = root.join("merged");
    cli::run(parse(&[
        "merge",
        "--model",
        text(&model),
        "--adapter",
        text(&export),
        "--output",
        text(&merged),
    ]))
    .unwrap();
    for dir in [&merged, &out.join("merged")] {
        assert!(dir.join("config.json").is_file() && dir.join("model.safetensors").is_file());
        let config = VitConfig::from_hf_file(&dir.join("config.json")).unwrap();
        assert_eq!((config.image_size, config.num_labels), (16, 3));
        // The class names of labels.json, not LABEL_<i>.
        assert_eq!(config.id2label.as_deref(), Some(&labels[..]));
        common::assert_close(
            "merged",
            &logits(&predict(dir, None, &images)),
            &logits(&adapted),
            1e-4,
        );
    }

    // convert: peanut → peft → peanut and peft → peanut → peft give the same predictions.
    let convert = |input: &Path, output: &Path, to: &str| {
        cli::run(parse(&[
            "convert",
            "--input",
            text(input),
            "--output",
            text(output),
            "--to",
            to,
        ]))
        .unwrap();
    };
    let trips = root.join("convert");
    convert(&export.join("peanut"), &trips.join("a/peft"), "peft");
    convert(&trips.join("a/peft"), &trips.join("b/peanut"), "peanut");
    convert(&export.join("peft"), &trips.join("c/peanut"), "peanut");
    convert(&trips.join("c/peanut"), &trips.join("d/peft"), "peft");
    for (dir, config) in [
        ("a", "peft/adapter_config.json"),
        ("b", "peanut/peanut_config.json"),
        ("c", "peanut/peanut_config.json"),
        ("d", "peft/adapter_config.json"),
    ] {
        let dir = trips.join(dir);
        assert!(dir.join(config).is_file(), "{}", dir.display());
        std::fs::copy(
            export.join("head.safetensors"),
            dir.join("head.safetensors"),
        )
        .unwrap();
        std::fs::copy(export.join("labels.json"), dir.join("labels.json")).unwrap();
        common::assert_close(
            &dir.display().to_string(),
            &logits(&predict(&model, Some(&dir), &images)),
            &logits(&adapted),
            1e-6,
        );
    }
}

#[test]
fn info_reports_targets_and_parameter_counts() {
    let root = temp_dir("cli-info");
    let model = tiny_checkpoint(&root);
    let info = |extra: &[&str]| {
        let mut args = vec!["info", "--model", text(&model)];
        args.extend_from_slice(extra);
        let Command::Info(args) = parse(&args).command else {
            unreachable!()
        };
        cli::info(args).unwrap()
    };
    let total = tiny_vit(3).num_params();

    // The paper's setting: PEANuT on query and value of every block; rank 2 here.
    let report = info(&["--rank", "2"]);
    assert_eq!(report.method, Method::Peanut);
    assert_eq!(report.total_params, total);
    assert_eq!(report.linears.len(), 2 * 6 + 1);
    assert_eq!(
        report.adapted,
        [
            "vit.encoder.layer.0.attention.attention.query",
            "vit.encoder.layer.0.attention.attention.value",
            "vit.encoder.layer.1.attention.attention.query",
            "vit.encoder.layer.1.attention.attention.value",
        ]
    );
    // 4 adapters of 2·r·d_out (depth 2) plus the 32·3 + 3 head.
    assert_eq!(report.trainable_params, 4 * 2 * 2 * 32 + 99);
    let percent = 100.0 * (4 * 2 * 2 * 32 + 99) as f64 / total as f64;
    assert!((report.trainable_percent() - percent).abs() < 1e-9);
    let shown = report.to_string();
    assert!(
        shown.contains(&format!("{total} total, 611 trainable ({percent:.4}%)"))
            && shown.contains("adapted (4)"),
        "{shown}"
    );

    // LoRA on one layer's query; depth-4 PEANuT adds 2 r×r maps per adapter.
    let report = info(&[
        "--method",
        "lora",
        "--rank",
        "2",
        "--targets",
        "query",
        "--layers",
        "1",
    ]);
    assert_eq!(
        report.adapted,
        ["vit.encoder.layer.1.attention.attention.query"]
    );
    assert_eq!(report.trainable_params, 2 * (32 + 32) + 99);
    let report = info(&["--rank", "2", "--depth", "4", "--num-labels", "5"]);
    assert_eq!(
        report.trainable_params,
        4 * (2 * 2 * 32 + 2 * 2 * 2) + 32 * 5 + 5
    );
    let report = info(&["--method", "head"]);
    assert!(report.adapted.is_empty());
    assert_eq!(report.trainable_params, 99);
    cli::run(parse(&["info", "--model", text(&model)])).unwrap();
}

#[test]
fn every_subcommand_has_help() {
    Cli::command().debug_assert();
    for (args, expected) in [
        (&["--help"][..], "convert"),
        (&["train", "--help"][..], "image"),
        (&["train", "image", "--help"][..], "--data-dir"),
        (&["eval", "image", "--help"][..], "--adapter"),
        (&["predict", "image", "--help"][..], "--top-k"),
        (&["merge", "--help"][..], "--output"),
        (&["convert", "--help"][..], "--to"),
        (&["info", "--help"][..], "--num-labels"),
    ] {
        let err =
            Cli::try_parse_from(std::iter::once("peanut").chain(args.iter().copied())).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::DisplayHelp, "{args:?}");
        let help = err.to_string();
        assert!(help.contains(expected), "{args:?}: {help}");
    }
    let err = Cli::try_parse_from(["peanut", "--version"]).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::DisplayVersion);
}

#[test]
fn bad_command_lines_name_the_problem() {
    let root = temp_dir("cli-bad");
    let model = tiny_checkpoint(&root);
    let model = text(&model);
    image_folder(&root.join("data"), 1);
    let data_dir = root.join("data");
    let data_dir = text(&data_dir);
    let missing = root.join("no-such-model");
    let missing = text(&missing);
    let train = |data_dir: &str, model: &str, extra: &[&str]| {
        let mut args = vec![
            "train",
            "image",
            "--data-dir",
            data_dir,
            "--model",
            model,
            "--image-size",
            "16",
        ];
        args.extend_from_slice(extra);
        failure(&args)
    };

    let err = failure(&["info", "--model", missing]);
    assert!(
        err.contains("no such file or directory") && err.contains(missing),
        "{err}"
    );
    let err = train(data_dir, missing, &[]);
    assert!(err.contains(missing), "{err}");
    let err = failure(&["info", "--model", model, "--activation", "swishy"]);
    assert!(
        err.contains("--activation") && err.contains("`swishy` is not one of relu"),
        "{err}"
    );
    let err = train(data_dir, model, &["--activation", "swishy"]);
    assert!(err.contains("swishy"), "{err}");
    for method in ["peanut", "lora"] {
        let err = failure(&["info", "--model", model, "--method", method, "--rank", "0"]);
        assert!(err.contains("rank") && err.contains("at least 1"), "{err}");
    }
    let err = train(data_dir, model, &["--rank", "0"]);
    assert!(err.contains("rank"), "{err}");
    let err = failure(&["info", "--model", model, "--depth", "3"]);
    assert!(err.contains("depth") && err.contains("got 3"), "{err}");
    let err = failure(&["info", "--model", model, "--targets", "nothing"]);
    assert!(
        err.contains("--targets") && err.contains("nothing"),
        "{err}"
    );
    let err = train(data_dir, model, &["--epochs", "0"]);
    assert!(
        err.contains("--epochs") && err.contains("at least 1"),
        "{err}"
    );
    let err = train(missing, model, &[]);
    assert!(
        err.contains(missing) && err.contains("ImageFolder"),
        "{err}"
    );

    // clap's own checks: missing, malformed and unknown values.
    let err = failure(&["train", "image", "--model", model]);
    assert!(err.contains("--data-dir"), "{err}");
    let err = failure(&["info", "--model", model, "--rank", "seven"]);
    assert!(err.contains("--rank") && err.contains("seven"), "{err}");
    let err = failure(&["info", "--model", model, "--method", "dora"]);
    assert!(err.contains("dora") && err.contains("peanut"), "{err}");
    let err = failure(&["convert", "--input", "a", "--output", "b", "--to", "onnx"]);
    assert!(err.contains("onnx") && err.contains("peft"), "{err}");
    let err = failure(&["predict", "image", "--model", model]);
    assert!(err.contains("IMAGES"), "{err}");

    // Files that are not there or not what they should be.
    let err = failure(&[
        "predict",
        "image",
        "--model",
        model,
        "--image-size",
        "16",
        "nope.png",
    ]);
    assert!(err.contains("nope.png"), "{err}");
    let not_image = root.join("notes.png");
    std::fs::write(&not_image, "text").unwrap();
    let err = failure(&[
        "predict",
        "image",
        "--model",
        model,
        "--image-size",
        "16",
        text(&not_image),
    ]);
    assert!(
        err.contains("notes.png") && err.contains("not a readable"),
        "{err}"
    );
    let no_adapter = root.join("no-adapter");
    let err = failure(&[
        "eval",
        "image",
        "--data-dir",
        data_dir,
        "--model",
        model,
        "--adapter",
        text(&no_adapter),
    ]);
    assert!(err.contains("no-adapter"), "{err}");
    let err = failure(&[
        "convert", "--input", missing, "--output", "x", "--to", "peft",
    ]);
    assert!(err.contains(missing), "{err}");
}

/// The tensors of a safetensors file, by name: dtype, shape and raw bytes.
fn tensors(path: &Path) -> BTreeMap<String, (String, Vec<usize>, Vec<u8>)> {
    let bytes = std::fs::read(path).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    file.tensors()
        .into_iter()
        .map(|(name, view)| {
            let dtype = format!("{:?}", view.dtype());
            (name, (dtype, view.shape().to_vec(), view.data().to_vec()))
        })
        .collect()
}

#[test]
fn train_merged_is_what_merge_writes_whatever_the_training_size() {
    let root = temp_dir("merged-size");
    let data_dir = root.join("data");
    image_folder(&data_dir, 2);
    // The checkpoint is 16 px; the run trains at 32 px (position embeddings interpolated).
    let model = tiny_checkpoint(&root);
    let out = root.join("run");
    crate::train_tiny_image(&data_dir, &model, &out, 32, &["--merged"]);
    let merged = root.join("merged");
    cli::run(parse(&[
        "merge",
        "--model",
        text(&model),
        "--adapter",
        text(&out.join("export")),
        "--output",
        text(&merged),
    ]))
    .unwrap();

    // The same files, byte for byte.
    let files = |dir: &Path| -> BTreeMap<String, Vec<u8>> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .map(|p| {
                let name = p.file_name().unwrap().to_string_lossy().into_owned();
                (name, std::fs::read(&p).unwrap())
            })
            .collect()
    };
    let from_train = files(&out.join("merged"));
    let from_merge = files(&merged);
    assert_eq!(
        from_train.keys().collect::<Vec<_>>(),
        from_merge.keys().collect::<Vec<_>>()
    );
    for (name, bytes) in &from_train {
        assert!(bytes == &from_merge[name], "{name} differs");
    }
    assert!(from_train.contains_key("preprocessor_config.json"));

    // The checkpoint's own size, and every tensor of the base but the merged projections and
    // the trained head bit for bit (the position embeddings included).
    let config = VitConfig::from_hf_file(&out.join("merged/config.json")).unwrap();
    assert_eq!(config.image_size, 16);
    let base = tensors(&model.join("model.safetensors"));
    let after = tensors(&out.join("merged/model.safetensors"));
    assert_eq!(
        base.keys().collect::<Vec<_>>(),
        after.keys().collect::<Vec<_>>()
    );
    let mut changed = Vec::new();
    for (name, tensor) in &base {
        if &after[name] != tensor {
            changed.push(name.clone());
        }
    }
    assert!(
        !changed.is_empty()
            && changed.iter().all(|n| n.contains("query")
                || n.contains("value")
                || n.contains("q_proj")
                || n.contains("v_proj")
                || n.starts_with("classifier")),
        "changed: {changed:?}"
    );
    assert!(base.keys().any(|n| n.contains("position_embeddings")));
}
