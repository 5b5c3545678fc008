//! Golden tests of `peanut-models` against transformers and peft (fixtures from
//! `tests/fixtures/make_model_fixtures.py`): logits of tiny random ViT and Llama/Qwen2
//! checkpoints, with and without a peft PEANuT adapter; merge; merged export; generation;
//! and the errors a user can run into.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::tensor::{Int, Tensor, TensorData};
use common::{Ad, Cpu, Fixed, assert_close, fixture, read_fixture, values};
use peanut::{AdapterConfig, LoraConfig, PeanutConfig, count_trainable_params};
use peanut_models::llama::{GenerationConfig, Sampling, Tokenizer};
use peanut_models::vit::VitLoadOptions;
use peanut_models::{AdaptableModel, Llama, LlamaConfig, ModelError, Targets, Vit, VitConfig};

const TOL: f64 = 1e-4;

fn models(relative: &str) -> PathBuf {
    fixture(&format!("models/{relative}"))
}

fn vit_io() -> HashMap<String, Fixed> {
    read_fixture(&models("vit_io.safetensors")).0
}

fn images(fixed: &Fixed) -> Tensor<Cpu, 4> {
    let values: Vec<f32> = fixed.values.iter().map(|&v| v as f32).collect();
    let shape: [usize; 4] = fixed.shape.clone().try_into().unwrap();
    Tensor::from_data(TensorData::new(values, shape), &Default::default())
}

fn load_vit(dir: &Path) -> Vit<Cpu> {
    Vit::from_pretrained(dir, &VitLoadOptions::default(), &Default::default())
        .unwrap()
        .0
}

/// A fresh, empty directory under the target dir.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("peanut-models-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn vit_logits_match_transformers() {
    let io = vit_io();
    let (model, report) = Vit::<Cpu>::from_pretrained(
        &models("vit"),
        &VitLoadOptions::default(),
        &Default::default(),
    )
    .unwrap();
    assert_eq!(report, Default::default(), "{:?}", report.notes());
    let logits = model.forward(images(&io["pixel_values"]));
    assert_close("vit logits", &values(logits), &io["logits"].values, TOL);
}

#[test]
fn vit_f16_sharded_checkpoint_loads() {
    let io = vit_io();
    let model = load_vit(&models("vit_f16_sharded"));
    let logits = model.forward(images(&io["pixel_values"]));
    assert_close(
        "vit f16 logits",
        &values(logits),
        &io["logits_f16"].values,
        TOL,
    );
}

#[test]
fn vit_position_embeddings_interpolate_like_transformers() {
    let io = vit_io();
    let options = VitLoadOptions {
        image_size: Some(12),
        ..Default::default()
    };
    let (model, report) =
        Vit::<Cpu>::from_pretrained(&models("vit"), &options, &Default::default()).unwrap();
    assert_eq!(report.resized_positions, Some((2, 3)));
    let logits = model.forward(images(&io["pixel_values_large"]));
    assert_close(
        "vit resized logits",
        &values(logits),
        &io["logits_large"].values,
        TOL,
    );
}

#[test]
fn vit_peft_adapter_matches_peft_in_both_naming_schemes() {
    let io = vit_io();
    for dir in ["vit_peanut", "vit_peanut_legacy"] {
        let mut model = load_vit(&models("vit"));
        let adapted = model.load_adapters(&models(dir)).unwrap();
        assert_eq!(adapted.len(), 6, "{dir}: {adapted:?}");
        assert!(adapted.contains(&"vit.encoder.layer.1.output.dense".to_string()));
        let logits = model.forward(images(&io["pixel_values"]));
        assert_close(dir, &values(logits), &io["adapted_logits"].values, TOL);
    }
}

#[test]
fn vit_merge_and_merged_export_reload() {
    let io = vit_io();
    let pixels = images(&io["pixel_values"]);
    let mut model = load_vit(&models("vit"));
    model.load_adapters(&models("vit_peanut")).unwrap();
    let unmerged = values(model.forward(pixels.clone()));
    model.merge_adapters();
    let merged = values(model.forward(pixels.clone()));
    assert_close("merged vs unmerged", &merged, &unmerged, 1e-5);
    model.unmerge_adapters();
    assert_close(
        "unmerged again",
        &values(model.forward(pixels.clone())),
        &unmerged,
        0.0,
    );

    let dir = scratch("vit-merged");
    model.save_merged(&dir).unwrap();
    let reloaded = load_vit(&dir);
    assert_eq!(reloaded.num_adapter_params(), 0);
    let logits = values(reloaded.forward(pixels));
    assert_close(
        "reloaded merged export",
        &logits,
        &io["adapted_logits"].values,
        TOL,
    );
}

#[test]
fn vit_adapter_round_trips_through_peft_format() {
    let io = vit_io();
    let mut model = load_vit(&models("vit"));
    model.load_adapters(&models("vit_peanut")).unwrap();
    let dir = scratch("vit-peft-out");
    model.save_adapters_peft(&dir, None).unwrap();
    let tensors = read_fixture(&dir.join("adapter_model.safetensors")).0;
    assert!(
        tensors.contains_key("base_model.model.vit.layers.0.attention.q_proj.peanut_A.weight"),
        "{:?}",
        tensors.keys().collect::<Vec<_>>()
    );
    let mut again = load_vit(&models("vit"));
    again.load_adapters(&dir).unwrap();
    let logits = values(again.forward(images(&io["pixel_values"])));
    assert_close(
        "peft round trip",
        &logits,
        &io["adapted_logits"].values,
        TOL,
    );
}

#[test]
fn vit_fresh_head_when_labels_differ_or_head_is_missing() {
    let options = VitLoadOptions {
        num_labels: Some(7),
        ..Default::default()
    };
    let (model, report) =
        Vit::<Cpu>::from_pretrained(&models("vit"), &options, &Default::default()).unwrap();
    assert_eq!(model.classifier.dims(), [16, 7]);
    assert!(report.fresh_head.unwrap().contains("[3, 16]"));

    // A backbone-only checkpoint: drop the classifier from the export.
    let dir = scratch("vit-headless");
    let mut tensors = load_vit(&models("vit")).merged_tensors();
    tensors.retain(|key, _| !key.starts_with("classifier"));
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(models("vit/config.json")).unwrap()).unwrap();
    peanut_models::checkpoint::write_checkpoint(&dir, &tensors, &config).unwrap();
    let (model, report) =
        Vit::<Cpu>::from_pretrained(&dir, &VitLoadOptions::default(), &Default::default()).unwrap();
    assert_eq!(model.classifier.dims(), [16, 3]);
    assert!(
        report
            .fresh_head
            .unwrap()
            .contains("no `classifier.weight`")
    );
}

#[test]
fn vit_targets_presets_and_trainable_parameters() {
    let device = Default::default();
    let config = VitConfig::tiny();
    let [d, inner, labels] = [
        config.hidden_size,
        config.intermediate_size,
        config.num_labels,
    ];
    let peanut = AdapterConfig::from(PeanutConfig::new(3));

    let mut model: Vit<Ad> = config.init(0, &device).unwrap();
    assert_eq!(count_trainable_params(&model), 0, "a fresh model is frozen");
    let paths = model.add_adapters(&Targets::vit_qv(), &peanut, 1).unwrap();
    assert_eq!(paths.len(), 2 * 2);
    assert_eq!(count_trainable_params(&model), 2 * 2 * (2 * 3 * d));
    let model = model.with_trainable_head(true);
    assert_eq!(
        count_trainable_params(&model),
        2 * 2 * (2 * 3 * d) + d * labels + labels
    );

    let mut model: Vit<Ad> = config.init(0, &device).unwrap();
    model
        .add_adapters(&Targets::vit_qv_mlp().with_layers([1]), &peanut, 1)
        .unwrap();
    let want = 2 * (2 * 3 * d) + 2 * 3 * inner + 2 * 3 * d;
    assert_eq!(count_trainable_params(&model), want);

    let mut model: Vit<Ad> = config.init(0, &device).unwrap();
    let lora = AdapterConfig::from(LoraConfig::new(2));
    model.add_adapters(&Targets::vit_qv(), &lora, 1).unwrap();
    assert_eq!(count_trainable_params(&model), 2 * 2 * 2 * (d + d));
    let full = model.with_trainable_base(true);
    assert_eq!(count_trainable_params(&full), full.num_params());
    let frozen = full.with_trainable_base(false);
    assert_eq!(count_trainable_params(&frozen), 2 * 2 * 2 * (d + d));

    let mut model: Vit<Ad> = config.init(0, &device).unwrap();
    let err = model
        .add_adapters(&Targets::new(["query", "q_proj"]), &peanut, 1)
        .unwrap_err();
    assert!(matches!(&err, ModelError::UnmatchedTarget { target, .. } if target == "q_proj"));
    assert!(err.to_string().contains("`q_proj`"), "{err}");
}

#[test]
fn vit_gradients_reach_adapters_only() {
    let device = Default::default();
    let mut model: Vit<Ad> = VitConfig::tiny().init(0, &device).unwrap();
    let config =
        AdapterConfig::from(PeanutConfig::new(2).with_b_init(peanut::OutputInit::KaimingUniform));
    model.add_adapters(&Targets::vit_qv(), &config, 3).unwrap();
    let pixels = Tensor::<Ad, 4>::ones([1, 3, 16, 16], &device);
    let grads = model.forward(pixels).sum().backward();
    let query = &model.vit.encoder.layer[0].attention.attention.query;
    let peanut::Adapter::Peanut(adapter) = &query.adapters[0] else {
        panic!("PEANuT expected")
    };
    assert!(adapter.a.grad(&grads).is_some() && adapter.b.grad(&grads).is_some());
    assert!(query.base.weight.grad(&grads).is_none());
    assert!(model.classifier.base.weight.grad(&grads).is_none());
    assert!(model.vit.layernorm.weight.grad(&grads).is_none());
}

// ---------------------------------------------------------------- errors

fn expect_err(
    result: Result<(Vit<Cpu>, peanut_models::vit::VitLoadReport), ModelError>,
) -> ModelError {
    match result {
        Ok(_) => panic!("expected an error"),
        Err(err) => err,
    }
}

/// Copies a fixture directory so a test can break it.
fn copy_dir(from: &Path, name: &str) -> PathBuf {
    let dir = scratch(name);
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.join(entry.file_name())).unwrap();
    }
    dir
}

fn load_vit_dir(dir: &Path) -> ModelError {
    expect_err(Vit::<Cpu>::from_pretrained(
        dir,
        &VitLoadOptions::default(),
        &Default::default(),
    ))
}

#[test]
fn vit_errors_name_file_and_key() {
    // Missing directory / config.
    let err = load_vit_dir(&scratch("vit-empty"));
    assert!(
        matches!(err, ModelError::File(peanut::FileError::Io { .. })),
        "{err}"
    );
    assert!(err.to_string().contains("config.json"), "{err}");

    // Weights missing.
    let dir = scratch("vit-no-weights");
    std::fs::copy(models("vit/config.json"), dir.join("config.json")).unwrap();
    let err = load_vit_dir(&dir);
    assert!(err.to_string().contains("model.safetensors"), "{err}");

    // Unsupported architecture.
    let dir = copy_dir(&models("vit"), "vit-arch");
    let config = std::fs::read_to_string(dir.join("config.json")).unwrap();
    std::fs::write(
        dir.join("config.json"),
        config.replace("ViTForImageClassification", "BertForMaskedLM"),
    )
    .unwrap();
    let err = load_vit_dir(&dir);
    assert!(
        matches!(err, ModelError::UnsupportedArchitecture { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("BertForMaskedLM") && err.to_string().contains("config.json"));

    // Malformed JSON.
    std::fs::write(dir.join("config.json"), "{ not json").unwrap();
    let err = load_vit_dir(&dir);
    assert!(
        matches!(err, ModelError::File(peanut::FileError::Json { .. })),
        "{err}"
    );

    // Shape mismatch: config says wider MLP than the tensors.
    std::fs::write(
        dir.join("config.json"),
        config.replace("\"intermediate_size\": 32", "\"intermediate_size\": 40"),
    )
    .unwrap();
    let err = load_vit_dir(&dir);
    match &err {
        ModelError::ShapeMismatch {
            key,
            path,
            expected,
            found,
        } => {
            assert_eq!(key, "vit.encoder.layer.0.intermediate.dense.weight");
            assert!(path.ends_with("model.safetensors"));
            assert_eq!(
                (expected.as_slice(), found.as_slice()),
                (&[40, 16][..], &[32, 16][..])
            );
        }
        other => panic!("expected a shape mismatch, got {other}"),
    }

    // A key missing from the checkpoint.
    let dir = scratch("vit-missing-key");
    let mut tensors = load_vit(&models("vit")).merged_tensors();
    tensors.remove("vit.encoder.layer.1.attention.attention.key.bias");
    let config_json: serde_json::Value = serde_json::from_str(&config).unwrap();
    peanut_models::checkpoint::write_checkpoint(&dir, &tensors, &config_json).unwrap();
    let err = load_vit_dir(&dir);
    assert!(
        matches!(&err, ModelError::MissingKey { key, .. } if key == "vit.encoder.layer.1.attention.attention.key.bias"),
        "{err}"
    );
    assert!(err.to_string().contains("model.safetensors"), "{err}");

    // A truncated safetensors file.
    let dir = copy_dir(&models("vit"), "vit-truncated");
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    std::fs::write(dir.join("model.safetensors"), &bytes[..bytes.len() / 2]).unwrap();
    let err = load_vit_dir(&dir);
    assert!(
        matches!(err, ModelError::File(peanut::FileError::Safetensors { .. })),
        "{err}"
    );

    // A shard listed in the index but absent.
    let dir = copy_dir(&models("vit_f16_sharded"), "vit-missing-shard");
    std::fs::remove_file(dir.join("model-00002-of-00002.safetensors")).unwrap();
    let err = load_vit_dir(&dir);
    assert!(
        err.to_string().contains("model-00002-of-00002.safetensors"),
        "{err}"
    );
}

#[test]
fn adapter_errors_name_the_problem() {
    // A LLaMA adapter onto the ViT: module names have no counterpart.
    let mut model = load_vit(&models("vit"));
    let err = model.load_adapters(&models("llama_peanut")).unwrap_err();
    assert!(err.to_string().contains("model.layers.0"), "{err}");
    // Not an adapter directory.
    let err = model.load_adapters(&models("vit")).unwrap_err();
    assert!(err.to_string().contains("adapter_config.json"), "{err}");
}

// ---------------------------------------------------------------- LLaMA-style

fn llama_io() -> HashMap<String, Fixed> {
    read_fixture(&models("llama_io.safetensors")).0
}

fn ids_of(fixed: &Fixed) -> Vec<u32> {
    fixed.values.iter().map(|&v| v as u32).collect()
}

fn id_tensor(fixed: &Fixed) -> Tensor<Cpu, 2, Int> {
    let ids: Vec<i64> = fixed.values.iter().map(|&v| v as i64).collect();
    let shape: [usize; 2] = fixed.shape.clone().try_into().unwrap();
    Tensor::from_data(TensorData::new(ids, shape), &Default::default())
}

fn load_llama(dir: &str) -> Llama<Cpu> {
    Llama::from_pretrained(&models(dir), &Default::default()).unwrap()
}

#[test]
fn llama_bf16_sharded_logits_match_transformers() {
    let io = llama_io();
    let model = load_llama("llama");
    assert!(model.lm_head.is_none(), "tied embeddings");
    let logits = model.forward(id_tensor(&io["input_ids"]), None);
    assert_close(
        "llama logits",
        &values(logits),
        &io["llama_logits"].values,
        TOL,
    );
}

#[test]
fn qwen2_with_qkv_bias_matches_transformers() {
    let io = llama_io();
    let model = load_llama("qwen2");
    assert!(model.model.layers[0].self_attn.q_proj.base.bias.is_some());
    assert!(model.model.layers[0].self_attn.o_proj.base.bias.is_none());
    let logits = model.forward(id_tensor(&io["input_ids"]), None);
    assert_close(
        "qwen2 logits",
        &values(logits),
        &io["qwen2_logits"].values,
        TOL,
    );
}

#[test]
fn llama_peft_adapter_merge_and_export() {
    let io = llama_io();
    let ids = id_tensor(&io["input_ids"]);
    let mut model = load_llama("llama");
    let adapted = model.load_adapters(&models("llama_peanut")).unwrap();
    assert_eq!(adapted.len(), 2 * 5);
    let unmerged = values(model.forward(ids.clone(), None));
    assert_close(
        "llama adapted",
        &unmerged,
        &io["llama_adapted_logits"].values,
        TOL,
    );
    model.merge_adapters();
    let merged = values(model.forward(ids.clone(), None));
    assert_close("llama merged vs unmerged", &merged, &unmerged, 1e-5);

    let dir = scratch("llama-merged");
    model.save_merged(&dir).unwrap();
    let reloaded = Llama::<Cpu>::from_pretrained(&dir, &Default::default()).unwrap();
    let logits = values(reloaded.forward(ids, None));
    assert_close(
        "llama merged export",
        &logits,
        &io["llama_adapted_logits"].values,
        TOL,
    );
}

#[test]
fn kv_cache_forward_equals_full_forward() {
    let io = llama_io();
    for dir in ["llama", "qwen2"] {
        let model = load_llama(dir);
        let ids = id_tensor(&io["input_ids"]);
        let full = model.forward(ids.clone(), None);
        let mut cache = model.new_cache();
        let first = model.forward(ids.clone().narrow(1, 0, 4), Some(&mut cache));
        let second = model.forward(ids.clone().narrow(1, 4, 2), Some(&mut cache));
        let third = model.forward(ids.narrow(1, 6, 1), Some(&mut cache));
        assert_eq!(cache.len(), 7);
        let chunked = Tensor::cat(vec![first, second, third], 1);
        assert_close(dir, &values(chunked), &values(full), 1e-5);
    }
}

#[test]
fn greedy_generation_matches_transformers_with_and_without_cache() {
    let io = llama_io();
    let prompt = &ids_of(&io["input_ids"])[..7];
    for (dir, key) in [("llama", "llama_greedy"), ("qwen2", "qwen2_greedy")] {
        let model = load_llama(dir);
        let mut config = GenerationConfig::greedy(6);
        let cached = model.generate(prompt, &config).unwrap();
        config.use_cache = false;
        let uncached = model.generate(prompt, &config).unwrap();
        assert_eq!(cached, uncached, "{dir}");
        assert_eq!(
            cached,
            ids_of(&io[key]),
            "{dir}: transformers' greedy tokens"
        );
    }
}

#[test]
fn top_p_generation_is_seeded_and_cache_independent() {
    let io = llama_io();
    let prompt = &ids_of(&io["input_ids"])[..7];
    let model = load_llama("qwen2");
    let mut config = GenerationConfig {
        max_new_tokens: 8,
        sampling: Sampling::TopP {
            top_p: 0.9,
            temperature: 1.5,
            seed: 11,
        },
        eos_token_id: None,
        use_cache: true,
    };
    let cached = model.generate(prompt, &config).unwrap();
    config.use_cache = false;
    assert_eq!(model.generate(prompt, &config).unwrap(), cached);
    config.sampling = Sampling::TopP {
        top_p: 0.9,
        temperature: 1.5,
        seed: 12,
    };
    assert_ne!(
        model.generate(prompt, &config).unwrap(),
        cached,
        "another seed, other draws"
    );
    // Stops at the end-of-sequence token.
    config.eos_token_id = Some(cached[2]);
    config.sampling = Sampling::TopP {
        top_p: 0.9,
        temperature: 1.5,
        seed: 11,
    };
    let stopped = model.generate(prompt, &config).unwrap();
    assert_eq!(stopped.last(), Some(&cached[2]));
    assert!(stopped.len() <= 3);
}

#[test]
fn generation_rejects_bad_input() {
    let model = load_llama("llama");
    let config = GenerationConfig::greedy(2);
    assert!(matches!(
        model.generate(&[], &config),
        Err(ModelError::Generation(_))
    ));
    let err = model.generate(&[3, 64], &config).unwrap_err();
    assert!(err.to_string().contains("64"), "{err}");
    let bad = GenerationConfig {
        sampling: Sampling::TopP {
            top_p: 0.0,
            temperature: 1.0,
            seed: 0,
        },
        ..config
    };
    assert!(model.generate(&[3], &bad).is_err());
}

#[test]
fn llama_targets_presets_and_errors() {
    let device = Default::default();
    let config = LlamaConfig::tiny();
    let [d, inner] = [config.hidden_size, config.intermediate_size];
    let kv = config.num_key_value_heads * config.head_dim();
    let mut model: Llama<Ad> = config.init(0, &device).unwrap();
    assert_eq!(count_trainable_params(&model), 0);
    let peanut = AdapterConfig::from(PeanutConfig::new(4));
    let paths = model
        .add_adapters(&Targets::llama_qkv_up_down(), &peanut, 0)
        .unwrap();
    assert_eq!(paths.len(), 2 * 5);
    let per_layer = 2 * 4 * (d + kv + kv + inner + d);
    assert_eq!(count_trainable_params(&model), 2 * per_layer);

    let err = model
        .add_adapters(&Targets::new(["q_proj", "query"]), &peanut, 0)
        .unwrap_err();
    assert!(err.to_string().contains("`query`"), "{err}");

    // Architecture check.
    let dir = copy_dir(&models("qwen2"), "llama-arch");
    let config = std::fs::read_to_string(dir.join("config.json")).unwrap();
    std::fs::write(
        dir.join("config.json"),
        config.replace("Qwen2ForCausalLM", "MistralForCausalLM"),
    )
    .unwrap();
    let err = Llama::<Cpu>::from_pretrained(&dir, &device).unwrap_err();
    assert!(
        matches!(err, ModelError::UnsupportedArchitecture { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("MistralForCausalLM"), "{err}");

    // A ViT checkpoint is not a Llama.
    let err = Llama::<Cpu>::from_pretrained(&models("vit"), &device).unwrap_err();
    assert!(
        err.to_string().contains("ViTForImageClassification"),
        "{err}"
    );
}

#[test]
fn tokenizer_matches_python_and_reports_missing_file() {
    let path = models("tokenizer.json");
    let tokenizer = Tokenizer::from_file(&path).unwrap();
    let expected: serde_json::Value =
        serde_json::from_slice(&std::fs::read(models("tokenizer_io.json")).unwrap()).unwrap();
    let text = expected["text"].as_str().unwrap();
    let ids: Vec<u32> = expected["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    assert_eq!(tokenizer.encode(text, false).unwrap(), ids);
    assert_eq!(tokenizer.decode(&ids, false).unwrap(), text);
    let err = Tokenizer::from_file(&models("no-such-tokenizer.json")).unwrap_err();
    assert!(err.to_string().contains("no-such-tokenizer.json"), "{err}");
}
