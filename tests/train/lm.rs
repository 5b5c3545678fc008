//! Causal-LM instruction tuning, evaluation by generation, and the `train lm` / `eval lm` /
//! `generate` subcommands, on a tiny Llama and instruction files written by the tests.

use burn::module::Param;
use burn::tensor::activation::log_softmax;
use burn::tensor::{Int, Tensor, TensorData};
use clap::Parser;
use peanut::{OutputInit, PeanutConfig};
use peanut_models::llama::{GenerationConfig, Tokenizer};
use peanut_models::{Llama, LlamaConfig, Targets};
use peanut_train::backend::Selected;
use peanut_train::cli::{self, Cli, GenerateArgs};
use peanut_train::data::instruct::{self, Instruction, Task};
use peanut_train::data::lm_batch::{IGNORE_INDEX, collate};
use peanut_train::train::causal_lm::forward_loss;
use peanut_train::train::lm::{self as lm, LmTrainConfig};

use super::*;

/// Words of the prompt template and the answers; `true` is id 0, so a model whose logits are
/// all equal answers `true` (greedy ties go to the lowest id).
const WORDS: &[&str] = &[
    "true",
    "<unk>",
    "</s>",
    "false",
    "Below",
    "is",
    "an",
    "instruction",
    "that",
    "describes",
    "a",
    "task",
    ".",
    "Write",
    "response",
    "appropriately",
    "completes",
    "the",
    "request",
    "###",
    "Instruction",
    ":",
    "Response",
    "Input",
    ",",
    "paired",
    "with",
    "input",
    "provides",
    "further",
    "context",
    "correct",
    "answer",
    "Is",
    "water",
    "wet",
    "?",
    "fire",
    "cold",
    "ice",
    "hot",
    "snow",
    "white",
    "grass",
    "green",
    "solution1",
    "solution2",
];
const EOS: u32 = 2;

fn write_tokenizer(path: &Path) {
    let vocab: serde_json::Map<String, serde_json::Value> = WORDS
        .iter()
        .enumerate()
        .map(|(id, word)| (word.to_string(), id.into()))
        .collect();
    let json = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
        "normalizer": null, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null,
        "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"}
    });
    std::fs::write(path, serde_json::to_vec(&json).unwrap()).unwrap();
}

fn tiny_llama_config() -> LlamaConfig {
    LlamaConfig::new(WORDS.len(), 32, 48, 2, 4, 2)
        .with_max_position_embeddings(256)
        .with_eos_token_id(Some(EOS))
}

/// A random tiny Llama with its tokenizer in `dir` (transformers layout).
fn write_model(dir: &Path, seed: u64) -> PathBuf {
    let model: Llama<Selected> = tiny_llama_config().init(seed, &Default::default()).unwrap();
    save_model(&model, dir)
}

fn save_model(model: &Llama<Selected>, dir: &Path) -> PathBuf {
    model.save_merged(dir).unwrap();
    write_tokenizer(&dir.join("tokenizer.json"));
    dir.to_path_buf()
}

fn load(dir: &Path) -> Llama<Selected> {
    Llama::from_pretrained(dir, &Default::default()).unwrap()
}

fn tokenizer(model_dir: &Path) -> Tokenizer {
    Tokenizer::from_file(&model_dir.join("tokenizer.json")).unwrap()
}

fn example(question: &str, answer: &str) -> Instruction {
    Instruction {
        instruction: format!("Is {question} ?"),
        input: String::new(),
        output: format!("the correct answer is {answer}"),
        answer: Some(answer.into()),
    }
}

fn examples(count: usize) -> Vec<Instruction> {
    let facts = [
        ("water wet", "true"),
        ("fire cold", "false"),
        ("ice hot", "false"),
        ("snow white", "true"),
        ("grass green", "true"),
    ];
    (0..count)
        .map(|i| {
            let (question, answer) = facts[i % facts.len()];
            example(question, answer)
        })
        .collect()
}

fn write_examples(path: &Path, examples: &[Instruction]) -> PathBuf {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, serde_json::to_vec_pretty(examples).unwrap()).unwrap();
    path.to_path_buf()
}

fn tiny_lm_config(epochs: usize) -> LmTrainConfig {
    LmTrainConfig {
        adapter: AdapterOptions {
            rank: 2,
            ..LmTrainConfig::default().adapter
        },
        epochs,
        batch_size: 4,
        grad_accumulation: 1,
        learning_rate: 1e-2,
        warmup_steps: 0,
        decay: Decay::Constant,
        val_size: 0,
        seed: 3,
        ..LmTrainConfig::default()
    }
}

fn loss_of(model: &Llama<Selected>, data: &[peanut_train::data::instruct::Tokenized]) -> f64 {
    let batch = collate(&data.iter().collect::<Vec<_>>(), 0).to_device(&Default::default());
    common::values(forward_loss(model, batch).loss)[0]
}

fn logits(model: &Llama<Selected>) -> Vec<f64> {
    let ids = Tensor::<Selected, 2, Int>::from_data(
        TensorData::new(vec![4i64, 33, 34, 35, 36, 22, 21], [1, 7]),
        &Default::default(),
    );
    common::values(model.forward(ids, None))
}

fn adapter_values_lm(model: &Llama<Selected>) -> Vec<f64> {
    model
        .adapters()
        .into_iter()
        .flat_map(|(_, adapter)| match adapter {
            peanut::Adapter::Peanut(p) => {
                [common::values(p.a.val()), common::values(p.b.val())].concat()
            }
            peanut::Adapter::Lora(l) => {
                [common::values(l.a.val()), common::values(l.b.val())].concat()
            }
        })
        .collect()
}

fn parse(args: &[&str]) -> Cli {
    Cli::try_parse_from(std::iter::once("peanut").chain(args.iter().copied()))
        .unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

fn path_str(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[test]
fn lm_training_moves_only_adapters_and_exports_reload_in_both_formats() {
    let root = temp_dir("lm-smoke");
    let model_dir = write_model(&root.join("model"), 1);
    let data_path = write_examples(&root.join("train.json"), &examples(8));
    let config = tiny_lm_config(1);
    let data =
        lm::load_instructions(&data_path, &tokenizer(&model_dir), Some(EOS), &config).unwrap();
    assert_eq!(
        (data.train.len(), data.valid.len(), data.dropped),
        (8, 0, 0)
    );
    let device = Default::default();
    let trained = lm::train_lm(
        Llama::<TrainBackend>::from_pretrained(&model_dir, &device).unwrap(),
        &data,
        &checked(&config),
        &run(&root.join("run"), false),
        &device,
    )
    .unwrap();
    // PEANuT r = 2 on q (32 out), k, v (16), up (48), down (32) of 2 blocks: 2·2·d_out each.
    assert_eq!(trained.trainable_params, 2 * 4 * (32 + 16 + 16 + 48 + 32));
    assert!(train::last_checkpoint(&root.join("run")) == Some(1));

    // Two steps lower the training loss, and it stays finite.
    let fresh = load(&model_dir);
    let (before, after) = (
        loss_of(&fresh, &data.train),
        loss_of(&trained.model, &data.train),
    );
    assert!(before.is_finite() && after.is_finite(), "{before} {after}");
    assert!(after < before, "loss {before} -> {after}");

    // The base weights are bit-identical; the adapters moved away from B = 0.
    let mut stripped = trained.model.clone();
    stripped.clear_adapters();
    assert!(stripped.merged_tensors() == fresh.merged_tensors());
    assert!(!adapter_values_lm(&trained.model).is_empty());
    assert!(trained.model.adapters().iter().all(|(_, a)| match a {
        peanut::Adapter::Peanut(p) => common::values(p.b.val()).iter().any(|v| *v != 0.0),
        peanut::Adapter::Lora(_) => false,
    }));

    // Both exported formats reload onto the base model and give the trained logits.
    let written = lm::export_lm(&trained.model, &root.join("export"), None).unwrap();
    assert_eq!(
        written,
        [root.join("export/peanut"), root.join("export/peft")]
    );
    let want = logits(&trained.model);
    for dir in &written {
        let mut reloaded = load(&model_dir);
        reloaded.load_adapters(dir).unwrap();
        common::assert_close(&dir.display().to_string(), &logits(&reloaded), &want, 1e-5);
    }
}

#[test]
fn prompt_and_padding_tokens_are_masked_out_of_the_loss() {
    let root = temp_dir("lm-mask");
    let model_dir = write_model(&root.join("model"), 2);
    let tokenizer = tokenizer(&model_dir);
    let set = [
        example("water wet", "true"),
        Instruction {
            input: "snow white , grass green".into(),
            ..example("fire cold", "false")
        },
    ];
    let data_path = write_examples(&root.join("train.json"), &set);
    let data =
        lm::load_instructions(&data_path, &tokenizer, Some(EOS), &tiny_lm_config(1)).unwrap();
    let batch = collate(&data.train.iter().collect::<Vec<_>>(), 0);
    // Sharpen the random head so token likelihoods differ clearly between positions.
    let mut model = load(&model_dir);
    let head = model.lm_head.as_mut().expect("untied head");
    head.base.weight = Param::from_tensor(head.base.weight.val() * 20.0);

    // Expected labels, from the tokenizer alone: the prompt and the padding are ignored.
    let mut masked_loss = Vec::new();
    let mut every_token_loss = Vec::new();
    for (row, example) in set.iter().enumerate() {
        let prompt_len = tokenizer
            .encode(&instruct::prompt(example), true)
            .unwrap()
            .len();
        let mut ids = tokenizer
            .encode(
                &format!("{}{}", instruct::prompt(example), example.output),
                true,
            )
            .unwrap();
        ids.push(EOS);
        let labels = &batch.labels[row * batch.len..(row + 1) * batch.len];
        for (t, &label) in labels.iter().enumerate() {
            let want = if t < prompt_len || t >= ids.len() {
                IGNORE_INDEX
            } else {
                i64::from(ids[t])
            };
            assert_eq!(label, want, "row {row}, position {t}");
        }
        // Next-token log-likelihoods of this example alone (no padding at all).
        let input = Tensor::<Selected, 2, Int>::from_data(
            TensorData::new(ids.iter().map(|&i| i64::from(i)).collect(), [1, ids.len()]),
            &Default::default(),
        );
        let logp = common::values(log_softmax(model.forward(input, None), 2));
        let vocab = WORDS.len();
        for t in 1..ids.len() {
            let nll = -logp[(t - 1) * vocab + ids[t] as usize];
            every_token_loss.push(nll);
            if t >= prompt_len {
                masked_loss.push(nll);
            }
        }
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let loss = loss_of(&model, &data.train);
    let (masked, every) = (mean(&masked_loss), mean(&every_token_loss));
    assert!(
        (loss - masked).abs() < 1e-4 * masked,
        "batch loss {loss} vs response-only {masked}"
    );
    // The check can tell: the loss over every token differs by far more than the tolerance.
    assert!(
        (every - masked).abs() > 1e-2 * masked,
        "{every} vs {masked}"
    );
}

#[test]
fn lm_resume_after_a_crash_equals_an_uninterrupted_run() {
    let root = temp_dir("lm-resume");
    let model_dir = write_model(&root.join("model"), 4);
    let data_path = write_examples(&root.join("train.json"), &examples(6));
    let config = LmTrainConfig {
        decay: Decay::Linear,
        clip_grad_norm: Some(0.5),
        ..tiny_lm_config(2)
    };
    let data =
        lm::load_instructions(&data_path, &tokenizer(&model_dir), Some(EOS), &config).unwrap();
    let device = Default::default();
    let base = || Llama::<TrainBackend>::from_pretrained(&model_dir, &device).unwrap();
    let full = lm::train_lm(
        base(),
        &data,
        &checked(&config),
        &run(&root.join("full"), false),
        &device,
    )
    .unwrap();
    let copy = root.join("copy");
    copy_epoch(&root.join("full"), &copy, 1);
    let resumed =
        lm::train_lm(base(), &data, &checked(&config), &run(&copy, true), &device).unwrap();
    // Equal up to float reordering in the CPU backend's threaded kernels (a wrong data order,
    // optimizer state or schedule position moves the adapters by orders of magnitude more, as
    // stopping after the first epoch shows).
    let want = adapter_values_lm(&full.model);
    common::assert_close("resumed", &adapter_values_lm(&resumed.model), &want, 1e-5);
    assert_second_epoch_moved(&copy, &want);
    // Other settings cannot resume this run.
    let other = LmTrainConfig {
        learning_rate: 1e-3,
        ..config
    };
    let err = lm::train_lm(base(), &data, &checked(&other), &run(&copy, true), &device)
        .err()
        .unwrap();
    assert!(matches!(err, TrainError::Resume { .. }), "{err}");
}

#[test]
fn recomputing_layers_trains_what_a_plain_run_trains_and_resumes_either_way() {
    let root = temp_dir("lm-recompute");
    let model_dir = write_model(&root.join("model"), 4);
    let data_path = write_examples(&root.join("train.json"), &examples(6));
    let plain_config = LmTrainConfig {
        decay: Decay::Linear,
        clip_grad_norm: Some(0.5),
        ..tiny_lm_config(2)
    };
    let recomputing = LmTrainConfig {
        recompute_layers: true,
        ..plain_config.clone()
    };
    let data = lm::load_instructions(&data_path, &tokenizer(&model_dir), Some(EOS), &plain_config)
        .unwrap();
    let device = Default::default();
    let base = || Llama::<TrainBackend>::from_pretrained(&model_dir, &device).unwrap();
    let train = |config: &LmTrainConfig, dir: &Path, resume: bool| {
        lm::train_lm(base(), &data, &checked(config), &run(dir, resume), &device).unwrap()
    };
    let plain = train(&plain_config, &root.join("plain"), false);
    let recomputed = train(&recomputing, &root.join("recomputed"), false);
    let want = adapter_values_lm(&plain.model);
    common::assert_close(
        "recomputed layers",
        &adapter_values_lm(&recomputed.model),
        &want,
        // Two epochs of float reordering (ndarray's reductions sum in another order when a
        // block runs alone); far below what an epoch moves the adapters (checked below).
        1e-4,
    );
    // `run.json` does not record it: the plain run resumes with recomputation.
    let copy = root.join("copy");
    copy_epoch(&root.join("plain"), &copy, 1);
    let resumed = train(&recomputing, &copy, true);
    common::assert_close("resumed", &adapter_values_lm(&resumed.model), &want, 1e-4);
    // The tolerance is far below what one epoch moves the adapters.
    assert_second_epoch_moved(&copy, &want);
}

/// The adapters of the epoch-1 checkpoint in `dir` are more than 1e-3 from the final `want`
/// somewhere: what the resume tests' tolerances must stay far below.
fn assert_second_epoch_moved(dir: &Path, want: &[f64]) {
    let first_epoch = adapter_values_lm(&load_epoch_one(dir));
    let gap = first_epoch
        .iter()
        .zip(want)
        .fold(0f64, |m, (a, b)| m.max((a - b).abs()));
    assert!(
        gap > 1e-3,
        "the second epoch moved the adapters by only {gap}"
    );
}

/// The adapted model of the epoch-1 checkpoint of a run in `dir`.
fn load_epoch_one(dir: &Path) -> Llama<Selected> {
    let model_dir = dir.parent().unwrap().join("model");
    let mut model = load(&model_dir);
    let config = LmTrainConfig {
        decay: Decay::Linear,
        clip_grad_norm: Some(0.5),
        ..tiny_lm_config(2)
    };
    let config = checked(&config);
    train::attach_adapters(
        &mut model,
        config.adapter(),
        &config.targets,
        &[],
        config.seed,
    )
    .unwrap();
    train::checkpoint::load_epoch(model, dir, 1, &Default::default()).unwrap()
}

/// A model whose final norm is zero: every logit is 0, so greedy decoding always picks id 0,
/// `true`.
fn always_true_model(dir: &Path) -> PathBuf {
    let mut model: Llama<Selected> = tiny_llama_config().init(5, &Default::default()).unwrap();
    let weight = model.model.norm.weight.val().zeros_like();
    model.model.norm.weight = Param::from_tensor(weight);
    save_model(&model, dir)
}

#[test]
fn eval_lm_scores_extracted_answers_of_generations() {
    let root = temp_dir("lm-eval");
    let model_dir = always_true_model(&root.join("model"));
    let answers = ["true", "false", "true", "true"];
    let set: Vec<Instruction> = answers
        .iter()
        .map(|answer| example("water wet", answer))
        .collect();
    let test_file = write_examples(&root.join("boolq/test.json"), &set);

    // Library: every response is `true …`, so 3 of 4 are right.
    let model = load(&model_dir);
    let mut seen = Vec::new();
    let report = lm::evaluate_lm(
        &model,
        &tokenizer(&model_dir),
        &set,
        Task::Boolq,
        &GenerationConfig::greedy(3),
        3,
        1,
        &test_file,
        |p| {
            seen.push(p.clone());
            Ok(())
        },
    )
    .unwrap();
    assert_eq!((report.correct, report.total), (3, 4));
    assert!((report.accuracy - 0.75).abs() < 1e-12);
    assert_eq!(seen[0].response, "true true true");
    assert_eq!(seen[1].predicted.as_deref(), Some("true"));
    assert!(!seen[1].correct && seen[2].correct);

    // CLI: the task comes from the directory name; predictions go to a JSONL file.
    let output = root.join("out/predictions.jsonl");
    let cli = parse(&[
        "eval",
        "lm",
        "--data",
        path_str(&test_file),
        "--model",
        path_str(&model_dir),
        "--max-new-tokens",
        "4",
        "--output",
        path_str(&output),
    ]);
    let cli::Command::Eval(cli::EvalCommand::Lm(args)) = cli.command else {
        panic!("parsed {:?}", cli.command)
    };
    let report = cli::eval_lm(args).unwrap();
    assert_eq!(
        (report.task.as_str(), report.correct, report.total),
        ("boolq", 3, 4)
    );
    let lines: Vec<lm::Prediction> = std::fs::read_to_string(&output)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 4);
    assert_eq!(
        lines.iter().map(|p| p.correct).collect::<Vec<_>>(),
        [true, false, true, true]
    );

    // A PIQA file scored by the same generations finds no `solution1/2`: accuracy 0.
    let piqa = write_examples(
        &root.join("piqa.json"),
        &[Instruction {
            answer: Some("solution1".into()),
            ..example("water wet", "solution1")
        }],
    );
    let cli = parse(&[
        "eval",
        "lm",
        "--data",
        path_str(&piqa),
        "--model",
        path_str(&model_dir),
    ]);
    let cli::Command::Eval(cli::EvalCommand::Lm(args)) = cli.command else {
        panic!()
    };
    let report = cli::eval_lm(args).unwrap();
    assert_eq!(
        (report.task.as_str(), report.correct, report.total),
        ("piqa", 0, 1)
    );
}

#[test]
fn generate_is_deterministic_under_greedy_and_applies_the_adapter() {
    let root = temp_dir("lm-generate");
    let model_dir = write_model(&root.join("model"), 6);
    // A PEANuT adapter with a random B (a zero B would change nothing).
    let mut adapted = load(&model_dir);
    let config = PeanutConfig::new(4).with_b_init(OutputInit::KaimingUniform);
    adapted
        .add_adapters(&Targets::llama_qkv_up_down(), &config.into(), 9)
        .unwrap();
    adapted.save_adapters(&root.join("adapter")).unwrap();
    assert!(
        common::values(adapted.forward(
            Tensor::from_data(TensorData::new(vec![4i64, 5], [1, 2]), &Default::default()),
            None
        )) != common::values(load(&model_dir).forward(
            Tensor::from_data(TensorData::new(vec![4i64, 5], [1, 2]), &Default::default()),
            None
        ))
    );

    let args = |extra: &[&str]| -> GenerateArgs {
        let mut all = vec![
            "generate",
            "--model",
            path_str(&model_dir),
            "--instruction",
            "Is water wet ?",
            "--max-new-tokens",
            "6",
        ];
        all.extend_from_slice(extra);
        match parse(&all).command {
            cli::Command::Generate(args) => args,
            other => panic!("parsed {other:?}"),
        }
    };
    let adapter = root.join("adapter");
    let with_adapter = args(&["--adapter", path_str(&adapter)]);
    let first = cli::generate_text(&with_adapter).unwrap();
    assert_eq!(first, cli::generate_text(&with_adapter).unwrap());
    let prompt = instruct::prompt(&example("water wet", ""));
    let mut direct_config = GenerationConfig::greedy(6);
    direct_config.eos_token_id = Some(EOS);
    let want = lm::complete(&adapted, &tokenizer(&model_dir), &prompt, &direct_config).unwrap();
    assert_eq!(first, want);
    assert!(!first.is_empty());
    // Top-p with a seed is reproducible too; `generate` itself prints and succeeds.
    let sampled = args(&["--top-p", "0.9", "--temperature", "1.5", "--seed", "7"]);
    assert_eq!(
        cli::generate_text(&sampled).unwrap(),
        cli::generate_text(&sampled).unwrap()
    );
    cli::run(parse(&[
        "generate",
        "--model",
        path_str(&model_dir),
        "--prompt",
        "the cat",
        "--max-new-tokens",
        "2",
    ]))
    .unwrap();
}

#[test]
fn cli_train_lm_then_eval_and_generate_with_its_export() {
    let root = temp_dir("lm-cli");
    let model_dir = write_model(&root.join("model"), 7);
    let data = write_examples(&root.join("data/train.json"), &examples(10));
    let test = write_examples(&root.join("data/boolq.json"), &examples(3));
    for method in ["lora", "full"] {
        let out = root.join(method);
        cli::run(parse(&[
            "train",
            "lm",
            "--data",
            path_str(&data),
            "--model",
            path_str(&model_dir),
            "--output-dir",
            path_str(&out),
            "--method",
            method,
            "--rank",
            "2",
            "--batch-size",
            "4",
            "--grad-accumulation",
            "2",
            "--warmup-steps",
            "1",
            "--val-size",
            "2",
            "--cutoff-len",
            "64",
        ]))
        .unwrap();
        assert_eq!(train::last_checkpoint(&out), Some(1));
        let (model, adapter) = if method == "lora" {
            assert!(out.join("export/peanut/peanut_config.json").is_file());
            // peft's LoRA format (`"peft_type": "LORA"`) beside ours.
            let peft = std::fs::read(out.join("export/peft/adapter_config.json")).unwrap();
            let peft: serde_json::Value = serde_json::from_slice(&peft).unwrap();
            assert_eq!(peft["peft_type"], "LORA");
            (model_dir.clone(), Some(out.join("export")))
        } else {
            assert!(out.join("export/model/tokenizer.json").is_file());
            (out.join("export/model"), None)
        };
        let mut eval = vec![
            "eval".to_string(),
            "lm".into(),
            "--data".into(),
            path_str(&test).into(),
            "--model".into(),
            path_str(&model).into(),
            "--max-new-tokens".into(),
            "2".into(),
        ];
        let mut generate = vec![
            "generate".to_string(),
            "--model".into(),
            path_str(&model).into(),
            "--prompt".into(),
            "the".into(),
            "--max-new-tokens".into(),
            "2".into(),
        ];
        if let Some(adapter) = &adapter {
            for args in [&mut eval, &mut generate] {
                args.extend(["--adapter".to_string(), path_str(adapter).to_string()]);
            }
        }
        for args in [eval, generate] {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            cli::run(parse(&args)).unwrap_or_else(|e| panic!("{args:?}: {e}"));
        }
    }
}

#[test]
fn cli_lm_defaults_are_the_papers_and_help_explains_them() {
    let cli = parse(&["train", "lm", "--data", "d.json", "--model", "m"]);
    let cli::Command::Train(cli::TrainCommand::Lm(args)) = cli.command else {
        panic!()
    };
    let config = args.config();
    assert_eq!(config, LmTrainConfig::default());
    assert_eq!(config.adapter.rank, 32);
    assert_eq!(
        config.targets,
        ["q_proj", "k_proj", "v_proj", "up_proj", "down_proj"]
    );
    assert_eq!((config.epochs, config.cutoff_len), (1, 256));
    assert!(!config.train_on_inputs && (config.learning_rate - 3e-4).abs() < 1e-12);

    for command in [
        &["train", "lm", "--help"][..],
        &["eval", "lm", "--help"],
        &["generate", "--help"],
    ] {
        let err = Cli::try_parse_from(std::iter::once("peanut").chain(command.iter().copied()))
            .unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::DisplayHelp);
        let help = err.to_string();
        assert!(help.contains("--model"), "{help}");
        if command[0] == "train" {
            assert!(help.contains("--cutoff-len") && help.contains("[default: 256]"));
            assert!(help.contains("responses only"), "{help}");
        }
    }
    // `generate` needs a prompt or an instruction; `--task` takes only the known tasks.
    assert!(Cli::try_parse_from(["peanut", "generate", "--model", "m"]).is_err());
    assert!(
        Cli::try_parse_from([
            "peanut", "eval", "lm", "--data", "d", "--model", "m", "--task", "x"
        ])
        .is_err()
    );
}

#[test]
fn lm_user_errors_name_the_path_or_option() {
    let root = temp_dir("lm-errors");
    let model_dir = write_model(&root.join("model"), 8);
    let good = write_examples(&root.join("train.json"), &examples(4));
    let out = root.join("out");
    let train = |data: &Path, extra: &[&str]| {
        let mut args = vec![
            "train",
            "lm",
            "--data",
            path_str(data),
            "--model",
            path_str(&model_dir),
            "--output-dir",
            path_str(&out),
        ];
        args.extend_from_slice(extra);
        if !extra.contains(&"--val-size") {
            args.extend(["--val-size", "0"]);
        }
        cli::run(parse(&args)).unwrap_err()
    };

    let missing = root.join("missing.json");
    let err = train(&missing, &[]);
    assert!(
        matches!(err, TrainError::File(peanut::FileError::Io { .. }))
            && err.to_string().contains("missing.json")
    );

    let bad = root.join("bad.json");
    std::fs::write(&bad, r#"[{"input": "no instruction here", "output": "x"}]"#).unwrap();
    let err = train(&bad, &[]);
    let message = err.to_string();
    assert!(
        matches!(err, TrainError::File(peanut::FileError::Json { .. })),
        "{message}"
    );
    assert!(
        message.contains("bad.json") && message.contains("`instruction`"),
        "{message}"
    );

    let err = train(&good, &["--cutoff-len", "4"]);
    let message = err.to_string();
    assert!(matches!(
        err,
        TrainError::EmptyAfterCutoff {
            cutoff: 4,
            examples: 4,
            ..
        }
    ));
    assert!(
        message.contains("train.json") && message.contains("--cutoff-len"),
        "{message}"
    );

    let err = train(&good, &["--val-size", "4"]);
    assert!(err.to_string().contains("--val-size"), "{err}");

    let err = train(&good, &["--method", "head"]);
    assert!(
        matches!(
            err,
            TrainError::InvalidOption {
                option: "--method",
                ..
            }
        ),
        "{err}"
    );
    let err = train(&good, &["--targets", "nonexistent_proj"]);
    assert!(err.to_string().contains("nonexistent_proj"), "{err}");

    let nowhere = root.join("no-model");
    let err = cli::run(parse(&[
        "train",
        "lm",
        "--data",
        path_str(&good),
        "--model",
        path_str(&nowhere),
    ]))
    .unwrap_err();
    assert!(err.to_string().contains("no-model"), "{err}");

    let mystery = write_examples(&root.join("mystery.json"), &examples(2));
    let eval = |data: &Path| {
        cli::run(parse(&[
            "eval",
            "lm",
            "--data",
            path_str(data),
            "--model",
            path_str(&model_dir),
        ]))
        .unwrap_err()
    };
    let err = eval(&mystery);
    let message = err.to_string();
    assert!(matches!(err, TrainError::UnknownTask { .. }), "{message}");
    assert!(
        message.contains("mystery") && message.contains("--task"),
        "{message}"
    );

    let unanswered = root.join("boolq/test.json");
    let mut set = examples(2);
    set[1].answer = None;
    write_examples(&unanswered, &set);
    let err = eval(&unanswered);
    assert!(
        err.to_string().contains("test.json") && err.to_string().contains("example 1"),
        "{err}"
    );

    let empty = root.join("empty.json");
    std::fs::write(&empty, "[]").unwrap();
    assert!(train(&empty, &[]).to_string().contains("empty.json"));
}

#[test]
fn cli_train_lm_on_two_workers_with_checkpointing_in_bf16() {
    if !crate::selected_backend_computes_in(peanut::Precision::Bf16) {
        return;
    }
    let root = temp_dir("lm-scale");
    let model_dir = write_model(&root.join("model"), 7);
    let data = write_examples(&root.join("data/train.json"), &examples(8));
    let out = root.join("run");
    cli::run(parse(&[
        "train",
        "lm",
        "--data",
        path_str(&data),
        "--model",
        path_str(&model_dir),
        "--output-dir",
        path_str(&out),
        "--rank",
        "2",
        "--batch-size",
        "4",
        "--grad-accumulation",
        "1",
        "--warmup-steps",
        "0",
        "--val-size",
        "2",
        "--cutoff-len",
        "64",
        "--devices",
        "cpu:2",
        "--checkpointing",
        "--precision",
        "bf16",
    ]))
    .unwrap();
    assert_eq!(train::last_checkpoint(&out), Some(1));
    let run: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("run.json")).unwrap()).unwrap();
    assert_eq!(run["config"]["precision"], "bf16", "{run}");
    // The adapters train in f32 and export as usual; they reload onto the f32 base.
    let mut model = load(&model_dir);
    model.load_adapters(&out.join("export/peft")).unwrap();
    assert!(logits(&model).iter().all(|v| v.is_finite()));
    // Two devices cannot share a batch of 3.
    let err = cli::run(parse(&[
        "train",
        "lm",
        "--data",
        path_str(&data),
        "--model",
        path_str(&model_dir),
        "--output-dir",
        path_str(&root.join("uneven")),
        "--batch-size",
        "3",
        "--devices",
        "2",
    ]))
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("--devices") && err.contains("multiple"),
        "{err}"
    );
}

/// Rust code builds the same job the command line does, without clap.
#[test]
fn an_lm_job_built_in_rust_equals_the_command_lines() {
    let root = temp_dir("lm-job");
    let model_dir = write_model(&root.join("model"), 7);
    let data = write_examples(&root.join("data/train.json"), &examples(8));
    let out = root.join("cli");
    let args = [
        "train",
        "lm",
        "--data",
        path_str(&data),
        "--model",
        path_str(&model_dir),
        "--output-dir",
        path_str(&out),
        "--rank",
        "2",
        "--warmup-steps",
        "0",
        "--val-size",
        "2",
        "--cutoff-len",
        "64",
    ];
    let cli::Command::Train(cli::TrainCommand::Lm(parsed)) = parse(&args).command else {
        unreachable!()
    };
    let mut job = peanut_train::jobs::LmJob::new(&data, &model_dir, root.join("rust"));
    job.config.adapter.rank = 2;
    job.config.warmup_steps = 0;
    job.config.val_size = 2;
    job.config.cutoff_len = 64;
    let from_cli = parsed.job();
    assert_eq!(job.config, from_cli.config);
    assert_eq!(
        (job.data.clone(), job.model.clone()),
        (from_cli.data.clone(), from_cli.model.clone())
    );
    peanut_train::jobs::train_lm_job(&job).unwrap();
    peanut_train::jobs::train_lm_job(&from_cli).unwrap();
    let read =
        |dir: &Path| std::fs::read(dir.join("export/peft/adapter_model.safetensors")).unwrap();
    assert_eq!(read(&root.join("rust")), read(&out), "same run, same bytes");
}

/// `evaluate_lm` with batches generated side by side on threads makes the predictions of one
/// prompt at a time, in file order, whatever the batch and worker counts.
#[test]
fn eval_lm_workers_predict_what_one_prompt_at_a_time_predicts() {
    let root = temp_dir("lm-eval-workers");
    let model_dir = write_model(&root.join("model"), 11);
    let (model, tokenizer) = (load(&model_dir), tokenizer(&model_dir));
    // Questions of different lengths, so that batches are padded.
    let set: Vec<Instruction> = (0..7)
        .map(|i| {
            let question = [
                "water wet",
                "fire cold",
                "ice hot",
                "snow white grass green",
            ][i % 4];
            example(question, if i % 2 == 0 { "true" } else { "false" })
        })
        .collect();
    let path = root.join("boolq/test.json");
    let run = |batch: usize, workers: usize| {
        let mut seen = Vec::new();
        let report = lm::evaluate_lm(
            &model,
            &tokenizer,
            &set,
            Task::Boolq,
            &GenerationConfig::greedy(4),
            batch,
            workers,
            &path,
            |p| {
                seen.push((p.index, p.response.clone(), p.correct));
                Ok(())
            },
        )
        .unwrap();
        (report.correct, seen)
    };
    let alone = run(1, 1);
    assert_eq!(
        alone.1.iter().map(|p| p.0).collect::<Vec<_>>(),
        (0..7).collect::<Vec<_>>()
    );
    // A random model answers differently to different prompts: the comparison can fail.
    assert!(alone.1.iter().any(|p| p.1 != alone.1[0].1), "{alone:?}");
    for (batch, workers) in [(1, 2), (2, 2), (3, 2), (2, 3), (8, 2)] {
        assert_eq!(
            run(batch, workers),
            alone,
            "batch {batch}, {workers} workers"
        );
    }
}

/// Prompts of different lengths generated in one left-padded batch give exactly what each gets
/// alone: greedy and top-p, with and without a stop token.
#[test]
fn batched_generation_equals_one_prompt_at_a_time() {
    let config = LlamaConfig::tiny().with_max_position_embeddings(64);
    let model: Llama<Selected> = config.init(11, &Default::default()).unwrap();
    let prompts: Vec<Vec<u32>> = vec![
        vec![1, 5, 9, 33, 2, 60, 7],
        vec![4],
        vec![8, 8, 8, 40],
        vec![63, 1, 17, 22, 9, 10, 11, 12, 13, 30],
    ];
    // A stop token the greedy runs produce, so some sequences stop early.
    let alone = model
        .generate(&prompts[1], &GenerationConfig::greedy(6))
        .unwrap();
    let eos = alone[2];
    let configs = [
        GenerationConfig::greedy(6),
        GenerationConfig {
            eos_token_id: Some(eos),
            ..GenerationConfig::greedy(6)
        },
        GenerationConfig {
            sampling: peanut_models::llama::Sampling::TopP {
                top_p: 0.9,
                temperature: 1.5,
                seed: 3,
            },
            ..GenerationConfig::greedy(5)
        },
    ];
    for config in configs {
        let batched = model.generate_batch(&prompts, &config).unwrap();
        for (prompt, got) in prompts.iter().zip(&batched) {
            let want = model.generate(prompt, &config).unwrap();
            assert_eq!(got, &want, "{config:?}, prompt {prompt:?}");
        }
    }
    let stopped = model.generate_batch(&prompts, &configs_eos(eos)).unwrap();
    assert!(
        stopped
            .iter()
            .any(|g| g.len() < 6 && g.last() == Some(&eos))
    );
    // Logits of the padded forward match the unpadded ones, position by position.
    let device = Default::default();
    let padded = Tensor::<Selected, 2, Int>::from_data(
        TensorData::new(vec![0i64, 0, 0, 8, 8, 8, 40], [1, 7]),
        &device,
    );
    let plain = Tensor::<Selected, 2, Int>::from_data(
        TensorData::new(vec![8i64, 8, 8, 40], [1, 4]),
        &device,
    );
    common::assert_close(
        "padded last logits",
        &common::values(model.forward_last_padded(padded, &[3], None)),
        &common::values(model.forward_last(plain, None)),
        1e-5,
    );
}

fn configs_eos(eos: u32) -> GenerationConfig {
    GenerationConfig {
        eos_token_id: Some(eos),
        ..GenerationConfig::greedy(6)
    }
}

#[test]
fn cli_train_lm_on_a_quantized_base_learns_and_its_export_applies_to_both_bases() {
    use peanut::{FrozenStorage, Quantization};
    let device = Default::default();
    if train::check_quantization::<Selected>(&device, Some(Quantization::Nf4)).is_err() {
        return; // wgpu: refused, see the error test below.
    }
    let root = temp_dir("lm-quantized");
    let model_dir = write_model(&root.join("model"), 5);
    let data_path = write_examples(&root.join("data/train.json"), &examples(8));
    let out = root.join("run");
    let train_args = |quantize: &'static str, out: &Path, resume: bool| {
        let mut args = vec![
            "train".to_string(),
            "lm".into(),
            "--data".into(),
            path_str(&data_path).into(),
            "--model".into(),
            path_str(&model_dir).into(),
            "--output-dir".into(),
            path_str(out).into(),
            "--rank".into(),
            "2".into(),
            "--epochs".into(),
            "4".into(),
            "--batch-size".into(),
            "4".into(),
            "--grad-accumulation".into(),
            "1".into(),
            "--lr".into(),
            "1e-2".into(),
            "--warmup-steps".into(),
            "0".into(),
            "--val-size".into(),
            "0".into(),
            "--cutoff-len".into(),
            "64".into(),
            "--quantize".into(),
            quantize.into(),
        ];
        if resume {
            args.push("--resume".into());
        }
        args
    };
    let parse_owned = |args: Vec<String>| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        parse(&args)
    };
    cli::run(parse_owned(train_args("nf4", &out, false))).unwrap();
    let run: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("run.json")).unwrap()).unwrap();
    assert_eq!(run["config"]["quantize"], "nf4", "{run}");

    let nf4 = FrozenStorage::default().with_quantization(Some(Quantization::Nf4));
    let quantized = || Llama::<Selected>::from_pretrained_in(&model_dir, &device, nf4).unwrap();
    let mut linears = 0;
    for (_, layer) in quantized().linears() {
        assert_eq!(layer.quantization(), Some(Quantization::Nf4));
        linears += 1;
    }
    assert_eq!(
        linears,
        2 * 7 + 1,
        "every linear of both blocks and the head"
    );
    let data = lm::load_instructions(
        &data_path,
        &tokenizer(&model_dir),
        Some(EOS),
        &tiny_lm_config(1),
    )
    .unwrap();
    let before = loss_of(&quantized(), &data.train);
    let mut trained = quantized();
    trained.load_adapters(&out.join("export/peft")).unwrap();
    let after = loss_of(&trained, &data.train);
    // The same recipe on the float base: the quantized run learns about as much.
    let float_out = root.join("float-run");
    let mut float_args = train_args("nf4", &float_out, false);
    float_args.truncate(float_args.len() - 2);
    cli::run(parse_owned(float_args)).unwrap();
    let mut float_trained = load(&model_dir);
    let float_start = loss_of(&float_trained, &data.train);
    float_trained
        .load_adapters(&float_out.join("export/peft"))
        .unwrap();
    let float_after = loss_of(&float_trained, &data.train);
    assert!(
        before - after > 0.7 * (float_start - float_after) && before - after > 0.05,
        "nf4 base: {before} → {after}; float base: {float_start} → {float_after}"
    );
    // Merged for inference, the quantized base keeps its codes and computes the same logits;
    // `generate --quantize` runs on it.
    let unmerged = logits(&trained);
    trained.merge_adapters();
    common::assert_close("merged on nf4", &logits(&trained), &unmerged, 1e-4);
    let generated = peanut_train::jobs::GenerateJob {
        adapter: Some(out.join("export")),
        quantize: Some(Quantization::Nf4),
        max_new_tokens: Some(4),
        ..peanut_train::jobs::GenerateJob::new(&model_dir, "Is water wet ?")
    }
    .run()
    .unwrap();
    let again = cli::run(parse(&[
        "generate",
        "--model",
        path_str(&model_dir),
        "--adapter",
        path_str(&out.join("export")),
        "--quantize",
        "nf4",
        "--max-new-tokens",
        "4",
        "--prompt",
        "Is water wet ?",
    ]));
    assert!(again.is_ok(), "{again:?}");
    assert!(!generated.is_empty());
    // On the float base the adapter still helps (it learned around nf4's rounding).
    let mut float = load(&model_dir);
    let float_before = loss_of(&float, &data.train);
    float.load_adapters(&out.join("export/peft")).unwrap();
    let float_after = loss_of(&float, &data.train);
    assert!(float_after < float_before, "{float_before} → {float_after}");

    // Another --quantize cannot resume the run; it names the setting.
    let err = cli::run(parse_owned(train_args("int8", &out, true)))
        .unwrap_err()
        .to_string();
    assert!(err.contains("quantize"), "{err}");
}

#[test]
fn quantize_errors_name_the_option_or_the_weight() {
    use peanut::Quantization;
    // Full fine-tuning trains the base, which quantized storage cannot hold.
    let config = LmTrainConfig {
        method: Method::Full,
        quantize: Some(Quantization::Int8),
        ..tiny_lm_config(1)
    };
    match config.check() {
        Err(TrainError::InvalidOption { option, reason }) => {
            assert_eq!(option, "--quantize");
            assert!(reason.contains("full"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    let device = Default::default();
    // A bad name is refused by the parser, listing the formats.
    let err = Cli::try_parse_from(["peanut", "train", "lm", "--quantize", "fp4"])
        .unwrap_err()
        .to_string();
    assert!(err.contains("int8 or nf4"), "{err}");
    // A backend that cannot store 8-bit integers refuses before loading anything.
    match train::check_quantization::<Selected>(&device, Some(Quantization::Nf4)) {
        Ok(()) => assert!(Quantization::is_supported::<Selected>(&device)),
        Err(err) => assert!(err.to_string().contains("--quantize"), "{err}"),
    }
}
