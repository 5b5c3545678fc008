//! Bad input never panics: the file readers (adapter and checkpoint safetensors, peft's
//! `adapter_config.json`, MAT files, instruction JSON / JSON lines) are fed thousands of
//! random and mutated-valid inputs from a seeded generator and must answer each with a value
//! or an error; plus one test per known bad input (NaN weights, shard paths outside the
//! model, flags that cannot work, JSON-lines errors, byte-order marks, examples without
//! `output`).

use std::collections::BTreeMap;
use std::panic::{AssertUnwindSafe, catch_unwind};

use peanut::init::SeededRng;
use peanut::{Adapter, LoraConfig, PeanutConfig};
use peanut_models::checkpoint::{self, TensorMap};
use peanut_models::{Checkpoint, ModelError};
use peanut_train::cli::Cli;
use peanut_train::data::instruct;
use peanut_train::data::mat::{self, MatValue};

use super::*;

type Cpu = burn_ndarray::NdArray<f32>;

// ----------------------------------------------------------------------------------------------
// The generator: random bytes, and valid inputs with a few random edits.

/// Values that often sit on a boundary: zero, one, the extremes of every width.
const INTERESTING: [u64; 10] = [
    0,
    1,
    7,
    8,
    0x7f,
    0xff,
    0xffff,
    0x7fff_ffff,
    0xffff_ffff,
    u64::MAX,
];

/// Random edits of byte strings, driven by a [`SeededRng`].
struct Mutator {
    rng: SeededRng,
}

impl Mutator {
    fn new(seed: u64) -> Self {
        Self {
            rng: SeededRng::new(seed),
        }
    }

    fn below(&mut self, n: usize) -> usize {
        self.rng.below(n)
    }

    /// Up to `max_len` random bytes.
    fn random(&mut self, max_len: usize) -> Vec<u8> {
        let len = self.below(max_len + 1);
        (0..len).map(|_| self.rng.next_u64() as u8).collect()
    }

    /// `valid` with one to four random edits: a byte flipped or set, a boundary integer
    /// written over 1, 2, 4 or 8 bytes, a cut, an insertion, a removal or a duplicated run.
    fn mutate(&mut self, valid: &[u8]) -> Vec<u8> {
        let mut bytes = valid.to_vec();
        for _ in 0..1 + self.below(4) {
            let len = bytes.len();
            let at = self.below(len.max(1));
            match self.below(8) {
                0 if len > 0 => bytes[at] ^= 1 << self.below(8),
                1 if len > 0 => bytes[at] = self.rng.next_u64() as u8,
                2 => {
                    let width = [1, 2, 4, 8][self.below(4)];
                    let value = INTERESTING[self.below(INTERESTING.len())]
                        .wrapping_add(self.below(3) as u64)
                        .wrapping_sub(1);
                    for (i, byte) in value.to_le_bytes().iter().take(width).enumerate() {
                        if let Some(slot) = bytes.get_mut(at + i) {
                            *slot = *byte;
                        }
                    }
                }
                3 => bytes.truncate(at),
                4 => {
                    let extra = self.random(16);
                    bytes.splice(at..at, extra);
                }
                5 if len > 0 => {
                    let end = (at + 1 + self.below(16)).min(len);
                    bytes.drain(at..end);
                }
                6 if len > 0 => {
                    let end = (at + 1 + self.below(64)).min(len);
                    let run = bytes[at..end].to_vec();
                    bytes.splice(at..at, run);
                }
                _ if len > 0 => {
                    // An ASCII digit or quote: keeps JSON and headers nearly valid.
                    bytes[at] = b"0123456789\"-.e{}[],:"[self.below(20)];
                }
                _ => bytes.extend(self.random(8)),
            }
        }
        bytes
    }

    /// A random input (one case in eight) or a mutation of one of `valid`.
    fn case(&mut self, valid: &[Vec<u8>]) -> Vec<u8> {
        if self.below(8) == 0 {
            self.random(256)
        } else {
            let seed = self.below(valid.len());
            self.mutate(&valid[seed])
        }
    }
}

/// Runs `check` on `cases` inputs from `make`; a panic fails the test naming the target and
/// the case, with the input saved under the test's temporary directory for replay.
fn fuzz(
    target: &str,
    cases: usize,
    mut make: impl FnMut(&mut Mutator) -> Vec<u8>,
    mut check: impl FnMut(&[u8]),
) {
    let mut mutator = Mutator::new(0x5eed ^ target.len() as u64);
    // burn and the readers print nothing on errors; a panic's message is enough.
    for case in 0..cases {
        let input = make(&mut mutator);
        if catch_unwind(AssertUnwindSafe(|| check(&input))).is_err() {
            let saved = temp_dir(&format!("fuzz-{target}-{case}")).join("input");
            std::fs::write(&saved, &input).unwrap();
            panic!(
                "{target}: case {case} panicked; its input is in `{}`",
                saved.display()
            );
        }
    }
}

// ----------------------------------------------------------------------------------------------
// Adapter files.

fn peanut_adapter(seed: u64) -> Adapter<Cpu> {
    let config = PeanutConfig::new(2).with_depth(4);
    Adapter::Peanut(config.init(3, 4, seed, &Default::default()).unwrap())
}

fn lora_adapter(seed: u64) -> Adapter<Cpu> {
    let config = LoraConfig::new(2);
    Adapter::Lora(config.init(3, 4, seed, &Default::default()).unwrap())
}

/// `(config bytes, weights bytes)` of an adapter directory in either format.
fn adapter_files(dir: &Path, config: &str, weights: &str) -> (Vec<u8>, Vec<u8>) {
    (
        std::fs::read(dir.join(config)).unwrap(),
        std::fs::read(dir.join(weights)).unwrap(),
    )
}

#[test]
fn adapter_readers_survive_random_and_mutated_files() {
    use peanut::io::{native, peft};
    let root = temp_dir("fuzz-adapters");
    let device = Default::default();

    let native_dir = root.join("native-valid");
    let (peanut, lora) = (peanut_adapter(1), lora_adapter(2));
    native::save(
        &native_dir,
        [
            ("layer.0.q".to_string(), &peanut),
            ("layer.1.v".to_string(), &lora),
        ],
    )
    .unwrap();
    let (native_config, native_weights) =
        adapter_files(&native_dir, native::CONFIG_FILE, native::WEIGHTS_FILE);
    let peft_dir = root.join("peft-valid");
    peft::save_peft(
        &peft_dir,
        [
            ("layer.0.q".to_string(), &peanut),
            ("layer.1.q".to_string(), &peanut_adapter(3)),
        ],
        &peft::SamePaths,
        None,
    )
    .unwrap();
    let (peft_config, peft_weights) =
        adapter_files(&peft_dir, peft::CONFIG_FILE, peft::WEIGHTS_FILE);
    // The valid files load.
    assert_eq!(native::load::<Cpu>(&native_dir, &device).unwrap().len(), 2);
    assert_eq!(
        peft::load_peft::<Cpu>(&peft_dir, &peft::SamePaths, &device)
            .unwrap()
            .len(),
        2
    );

    let case_dir = root.join("case");
    std::fs::create_dir_all(&case_dir).unwrap();
    // Native: mutate the tensors (config intact) or the config (tensors intact).
    fuzz(
        "native",
        1500,
        |m| {
            let which = m.below(2) as u8;
            let bytes = if which == 0 {
                m.case(std::slice::from_ref(&native_weights))
            } else if m.below(2) == 0 {
                let mut value: serde_json::Value = serde_json::from_slice(&native_config).unwrap();
                mutate_json(&mut value, &mut m.rng);
                serde_json::to_vec(&value).unwrap()
            } else {
                m.case(std::slice::from_ref(&native_config))
            };
            [vec![which], bytes].concat()
        },
        |input| {
            let (config, weights) = if input[0] == 0 {
                (&native_config[..], &input[1..])
            } else {
                (&input[1..], &native_weights[..])
            };
            std::fs::write(case_dir.join(native::CONFIG_FILE), config).unwrap();
            std::fs::write(case_dir.join(native::WEIGHTS_FILE), weights).unwrap();
            let _ = native::load::<Cpu>(&case_dir, &device);
        },
    );
    std::fs::remove_file(case_dir.join(native::CONFIG_FILE)).unwrap();
    // peft: the same, through its own reader.
    fuzz(
        "peft",
        1500,
        |m| {
            let which = m.below(2) as u8;
            let bytes = if which == 0 {
                m.case(std::slice::from_ref(&peft_weights))
            } else {
                m.case(std::slice::from_ref(&peft_config))
            };
            [vec![which], bytes].concat()
        },
        |input| {
            let (config, weights) = if input[0] == 0 {
                (&peft_config[..], &input[1..])
            } else {
                (&input[1..], &peft_weights[..])
            };
            std::fs::write(case_dir.join(peft::CONFIG_FILE), config).unwrap();
            std::fs::write(case_dir.join(peft::WEIGHTS_FILE), weights).unwrap();
            let _ = peft::load_peft::<Cpu>(&case_dir, &peft::SamePaths, &device);
        },
    );
}

/// A JSON value a configuration field might wrongly hold: a boundary or random number (of
/// every sign and size), a string a field might expect elsewhere, `null`, an array, an object.
fn random_json(rng: &mut SeededRng) -> serde_json::Value {
    use serde_json::json;
    match rng.below(12) {
        0 => json!(INTERESTING[rng.below(INTERESTING.len())]),
        1 => json!((1u64 << 63) | rng.next_u64()),
        2 => json!(rng.next_u64() >> rng.below(64)),
        3 => json!(-(rng.below(1000) as i64)),
        4 => json!(rng.uniform(-1e300, 1e300)),
        5 => json!([0.0, -0.0, 1e-320, 0.5, 2.0, 1e300][rng.below(6)]),
        6 => serde_json::Value::Null,
        7 => json!(
            [
                "relu",
                "gelu",
                "silu",
                "tanh",
                "PEANUT",
                "LORA",
                "leaky_relu",
                "",
                "linear"
            ][rng.below(9)]
        ),
        8 => json!([1, "q_proj"]),
        9 => json!({"r": 1}),
        10 => json!(rng.below(64)),
        _ => json!(rng.below(2) == 0),
    }
}

/// Replaces one or two fields of a JSON object (or of an object nested in it) with
/// [`random_json`] values, or removes them.
fn mutate_json(value: &mut serde_json::Value, rng: &mut SeededRng) {
    let serde_json::Value::Object(map) = value else {
        return;
    };
    for _ in 0..1 + rng.below(2) {
        let keys: Vec<String> = map.keys().cloned().collect();
        if keys.is_empty() {
            return;
        }
        let key = keys[rng.below(keys.len())].clone();
        if map[&key].is_object() && rng.below(2) == 0 {
            // Into a nested object (native configs keep one per module).
            mutate_json(map.get_mut(&key).unwrap(), rng);
        } else if rng.below(8) == 0 {
            map.remove(&key);
        } else {
            map.insert(key, random_json(rng));
        }
    }
}

#[test]
fn peft_config_reader_survives_mutated_values_and_bytes() {
    use peanut::io::peft;
    let root = temp_dir("fuzz-peft-config");
    let valid_dir = root.join("valid");
    peft::save_peft(
        &valid_dir,
        [("layer.0.q".to_string(), &peanut_adapter(1))],
        &peft::SamePaths,
        Some("tiny"),
    )
    .unwrap();
    let (config, weights) = adapter_files(&valid_dir, peft::CONFIG_FILE, peft::WEIGHTS_FILE);
    let valid: serde_json::Value = serde_json::from_slice(&config).unwrap();
    let dir = root.join("case");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(peft::WEIGHTS_FILE), &weights).unwrap();
    let device = Default::default();
    let mut accepted = 0;
    fuzz(
        "peft-config",
        2000,
        |m| {
            if m.below(2) == 0 {
                let mut value = valid.clone();
                mutate_json(&mut value, &mut m.rng);
                serde_json::to_vec(&value).unwrap()
            } else {
                m.case(std::slice::from_ref(&config))
            }
        },
        |input| {
            std::fs::write(dir.join(peft::CONFIG_FILE), input).unwrap();
            if let Ok(config) = peft::read_peft_config(&dir) {
                config.validate().unwrap();
                accepted += 1;
                let _ = peft::load_peft::<Cpu>(&dir, &peft::SamePaths, &device);
            }
        },
    );
    // The generator reaches past the parser.
    assert!(accepted > 50, "{accepted}");
}

// ----------------------------------------------------------------------------------------------
// Model checkpoints.

fn tiny_checkpoint_tensors() -> TensorMap {
    let mut rng = SeededRng::new(3);
    let mut draw = |n: usize| (0..n).map(|_| rng.uniform(-1.0, 1.0) as f32).collect();
    BTreeMap::from([
        ("embed.weight".to_string(), (vec![4, 3], draw(12))),
        ("norm.bias".to_string(), (vec![3], draw(3))),
        ("head.weight".to_string(), (vec![2, 3], draw(6))),
    ])
}

/// Writes `dir/model.safetensors` (f32) without any check of the values.
fn write_unchecked(dir: &Path, tensors: &TensorMap) {
    std::fs::create_dir_all(dir).unwrap();
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(key, (shape, values))| {
            let data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            (key.clone(), shape.clone(), data)
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = bytes
        .iter()
        .map(|(key, shape, data)| {
            let view =
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), data)
                    .unwrap();
            (key.clone(), view)
        })
        .collect();
    let file = safetensors::serialize(views, None).unwrap();
    std::fs::write(dir.join(checkpoint::WEIGHTS_FILE), file).unwrap();
}

/// Opens `dir` and reads every tensor at its stored shape.
fn read_all(dir: &Path) -> peanut_models::Result<usize> {
    let checkpoint = Checkpoint::open(dir)?;
    let device = Default::default();
    let keys: Vec<String> = checkpoint.keys().map(str::to_string).collect();
    for key in &keys {
        match checkpoint.shape(key).unwrap_or_default()[..] {
            [a] => drop(checkpoint.tensor::<Cpu, 1>(key, [a], &device)?),
            [a, b] => drop(checkpoint.tensor::<Cpu, 2>(key, [a, b], &device)?),
            [a, b, c] => drop(checkpoint.tensor::<Cpu, 3>(key, [a, b, c], &device)?),
            _ => {}
        }
        // A wrong shape is an error, not a panic.
        assert!(
            checkpoint
                .tensor::<Cpu, 1>(key, [usize::MAX], &device)
                .is_err()
        );
    }
    Ok(keys.len())
}

#[test]
fn checkpoint_reader_survives_random_and_mutated_files() {
    let root = temp_dir("fuzz-checkpoint");
    let valid_dir = root.join("valid");
    checkpoint::write_checkpoint(
        &valid_dir,
        &tiny_checkpoint_tensors(),
        &serde_json::json!({}),
    )
    .unwrap();
    assert_eq!(read_all(&valid_dir).unwrap(), 3);
    let weights = std::fs::read(valid_dir.join(checkpoint::WEIGHTS_FILE)).unwrap();
    let index = serde_json::to_vec(&serde_json::json!({
        "metadata": {"total_size": 84},
        "weight_map": {
            "embed.weight": "model-1.safetensors",
            "norm.bias": "model-1.safetensors",
            "head.weight": "model-1.safetensors",
        }
    }))
    .unwrap();

    let single = root.join("single");
    std::fs::create_dir_all(&single).unwrap();
    fuzz(
        "checkpoint",
        2000,
        |m| m.case(std::slice::from_ref(&weights)),
        |input| {
            std::fs::write(single.join(checkpoint::WEIGHTS_FILE), input).unwrap();
            let _ = read_all(&single);
        },
    );
    let sharded = root.join("sharded");
    std::fs::create_dir_all(&sharded).unwrap();
    std::fs::write(sharded.join("model-1.safetensors"), &weights).unwrap();
    std::fs::write(sharded.join(checkpoint::INDEX_FILE), &index).unwrap();
    assert_eq!(read_all(&sharded).unwrap(), 3);
    fuzz(
        "shard-index",
        1000,
        |m| m.case(std::slice::from_ref(&index)),
        |input| {
            std::fs::write(sharded.join(checkpoint::INDEX_FILE), input).unwrap();
            let _ = read_all(&sharded);
        },
    );
}

#[test]
fn shard_paths_must_stay_inside_the_model_directory() {
    let root = temp_dir("shard-paths");
    let weights = {
        let dir = root.join("valid");
        checkpoint::write_checkpoint(&dir, &tiny_checkpoint_tensors(), &serde_json::json!({}))
            .unwrap();
        std::fs::read(dir.join(checkpoint::WEIGHTS_FILE)).unwrap()
    };
    let model = root.join("model");
    std::fs::create_dir_all(&model).unwrap();
    std::fs::write(root.join("outside.safetensors"), &weights).unwrap();
    std::os::unix::fs::symlink(
        root.join("outside.safetensors"),
        model.join("link.safetensors"),
    )
    .unwrap();
    std::fs::write(model.join("inside.safetensors"), &weights).unwrap();
    let index = |file: &str| {
        let json = serde_json::json!({"weight_map": {
            "embed.weight": file, "norm.bias": file, "head.weight": file,
        }});
        std::fs::write(model.join(checkpoint::INDEX_FILE), json.to_string()).unwrap();
    };
    for (file, reason) in [
        ("../outside.safetensors", "climbs out"),
        ("/etc/passwd", "absolute"),
        ("../../../../../../etc/passwd", "climbs out"),
        ("link.safetensors", "is a link to"),
        ("", "is empty"),
    ] {
        index(file);
        let err = Checkpoint::open(&model).unwrap_err();
        assert!(
            matches!(err, ModelError::ShardOutsideModel { .. }),
            "{file}: {err}"
        );
        let message = err.to_string();
        assert!(message.contains(reason), "{file}: {message}");
        assert!(message.contains(checkpoint::INDEX_FILE), "{message}");
    }
    index("inside.safetensors");
    assert_eq!(read_all(&model).unwrap(), 3);
    index("./inside.safetensors");
    assert_eq!(read_all(&model).unwrap(), 3);

    // The Hugging Face cache links snapshot files into the repository's `blobs/`: allowed.
    let repo = root.join("models--org--tiny");
    let snapshot = repo.join("snapshots/abc123");
    std::fs::create_dir_all(&snapshot).unwrap();
    std::fs::create_dir_all(repo.join("blobs")).unwrap();
    std::fs::write(repo.join("blobs/0f1e"), &weights).unwrap();
    std::os::unix::fs::symlink("../../blobs/0f1e", snapshot.join("model-1.safetensors")).unwrap();
    let json = serde_json::json!({"weight_map": {
        "embed.weight": "model-1.safetensors",
        "norm.bias": "model-1.safetensors",
        "head.weight": "model-1.safetensors",
    }});
    std::fs::write(snapshot.join(checkpoint::INDEX_FILE), json.to_string()).unwrap();
    assert_eq!(read_all(&snapshot).unwrap(), 3);
}

#[test]
fn non_finite_weights_are_an_error_naming_the_tensor() {
    use peanut::io::{native, peft};
    let root = temp_dir("non-finite");
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        // A model checkpoint.
        let mut tensors = tiny_checkpoint_tensors();
        tensors.get_mut("norm.bias").unwrap().1[2] = bad;
        let dir = root.join("model");
        // `write_checkpoint` refuses non-finite values itself: write the file as a foreign
        // tool would.
        write_unchecked(&dir, &tensors);
        let err = read_all(&dir).unwrap_err();
        assert!(
            matches!(&err, ModelError::NonFiniteTensor { key, index: 2, .. } if key == "norm.bias"),
            "{err}"
        );
        assert!(err.to_string().contains("`norm.bias`"), "{err}");

        // Adapters in both formats: a NaN in B.
        let peanut = peanut_adapter(4);
        let Adapter::Peanut(mut poisoned) = peanut else {
            unreachable!()
        };
        let [rank, d_output] = poisoned.b.dims();
        let mut values = vec![0.5f32; rank * d_output];
        values[1] = bad;
        poisoned.b = burn::module::Param::from_tensor(burn::tensor::Tensor::from_data(
            burn::tensor::TensorData::new(values, [rank, d_output]),
            &Default::default(),
        ));
        let poisoned = Adapter::Peanut(poisoned);
        let native_dir = root.join("native");
        native::save(&native_dir, [("layer.0.q".to_string(), &poisoned)]).unwrap();
        let err = native::load::<Cpu>(&native_dir, &Default::default()).unwrap_err();
        assert!(
            err.to_string().contains("`layer.0.q.peanut.b`")
                && err.to_string().contains("non-finite"),
            "{err}"
        );
        let peft_dir = root.join("peft");
        peft::save_peft(
            &peft_dir,
            [("layer.0.q".to_string(), &poisoned)],
            &peft::SamePaths,
            None,
        )
        .unwrap();
        let err =
            peft::load_peft::<Cpu>(&peft_dir, &peft::SamePaths, &Default::default()).unwrap_err();
        assert!(
            err.to_string()
                .contains("`base_model.model.layer.0.q.peanut_B.weight`"),
            "{err}"
        );
    }
}

// ----------------------------------------------------------------------------------------------
// MAT files.

fn mat_samples() -> Vec<Vec<u8>> {
    let number = |v: f64| MatValue::Numeric {
        dims: vec![1, 1],
        values: vec![v],
    };
    let annotations = MatValue::Struct {
        dims: vec![1, 2],
        fields: vec!["fname".into(), "class".into()],
        elements: vec![
            vec![MatValue::Char("00001.jpg".into()), number(2.0)],
            vec![MatValue::Char("00002.jpg".into()), number(1.0)],
        ],
    };
    let names = MatValue::Cell {
        dims: vec![1, 2],
        items: vec![
            MatValue::Char("Škoda".into()),
            MatValue::Cell {
                dims: vec![1, 1],
                items: vec![number(3.5)],
            },
        ],
    };
    let plain = mat::write(&[("annotations", annotations), ("class_names", names)]);
    // The same variables, each as a zlib-compressed element.
    let mut compressed = plain[..128].to_vec();
    let mut at = 128;
    while at + 8 <= plain.len() {
        let size = u32::from_le_bytes(plain[at + 4..at + 8].try_into().unwrap()) as usize;
        let element = &plain[at..at + 8 + size];
        let mut deflated = Vec::new();
        {
            use std::io::Write;
            let mut encoder =
                flate2::write::ZlibEncoder::new(&mut deflated, flate2::Compression::default());
            encoder.write_all(element).unwrap();
            encoder.finish().unwrap();
        }
        compressed.extend_from_slice(&15u32.to_le_bytes());
        compressed.extend_from_slice(&(deflated.len() as u32).to_le_bytes());
        compressed.extend_from_slice(&deflated);
        at += 8 + size;
    }
    vec![plain, compressed]
}

#[test]
fn mat_reader_survives_random_and_mutated_files() {
    let samples = mat_samples();
    for sample in &samples {
        assert_eq!(mat::parse(sample).unwrap().len(), 2);
    }
    let mut parsed = 0;
    fuzz(
        "mat",
        6000,
        |m| {
            if m.below(16) == 0 {
                // A random body behind a valid header.
                [&samples[0][..128], &m.random(512)[..]].concat()
            } else {
                m.case(&samples)
            }
        },
        |input| {
            if let Ok(variables) = mat::parse(input) {
                parsed += 1;
                for value in variables.values() {
                    let _ = (value.scalar(), value.text());
                }
            }
        },
    );
    assert!(parsed > 100, "{parsed}");
}

#[test]
fn deeply_nested_or_inflating_mat_files_are_errors() {
    // A cell holding a cell holding … 10 000 levels deep: an error, not a stack overflow.
    let mut value = MatValue::Numeric {
        dims: vec![1, 1],
        values: vec![1.0],
    };
    for _ in 0..10_000 {
        value = MatValue::Cell {
            dims: vec![1, 1],
            items: vec![value],
        };
    }
    let bytes = std::thread::Builder::new()
        .stack_size(256 << 20)
        .spawn(move || mat::write(&[("deep", value)]))
        .unwrap()
        .join()
        .unwrap();
    let err = mat::parse(&bytes).unwrap_err();
    assert!(err.contains("nested deeper"), "{err}");
}

// ----------------------------------------------------------------------------------------------
// Instruction files.

fn instruction_samples() -> Vec<Vec<u8>> {
    let examples = serde_json::json!([
        {"instruction": "Is water wet?", "input": "", "output": "the answer is true",
         "answer": "true"},
        {"instruction": "2 + 2", "input": "ctx", "output": "4", "answer": 4},
        {"instruction": "Pick", "output": "solution1", "answer": null},
    ]);
    let array = serde_json::to_vec_pretty(&examples).unwrap();
    let lines: Vec<u8> = examples
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|e| [serde_json::to_vec(e).unwrap(), b"\n".to_vec()].concat())
        .collect();
    let with_bom = [b"\xEF\xBB\xBF".as_slice(), &lines].concat();
    vec![array, lines, with_bom]
}

#[test]
fn instruction_reader_survives_random_and_mutated_files() {
    let samples = instruction_samples();
    let path = Path::new("examples.json");
    for sample in &samples {
        assert_eq!(instruct::parse(sample, path, true).unwrap().len(), 3);
    }
    let mut parsed = 0;
    fuzz(
        "instructions",
        6000,
        |m| m.case(&samples),
        |input| {
            for require_output in [false, true] {
                if let Ok(examples) = instruct::parse(input, path, require_output) {
                    parsed += 1;
                    for example in &examples {
                        let _ = instruct::prompt(example);
                    }
                }
            }
        },
    );
    assert!(parsed > 100, "{parsed}");
}

#[test]
fn instruction_errors_name_the_line_and_the_example() {
    let path = Path::new("train.jsonl");
    let good = r#"{"instruction": "a", "output": "b"}"#;
    let text = format!("{good}\n{good}\n\n{{\"instruction\": 3}}\n");
    let err = instruct::parse(text.as_bytes(), path, false).unwrap_err();
    assert!(matches!(err, TrainError::JsonLine { line: 4, .. }), "{err}");
    assert!(err.to_string().contains("line 4 of `train.jsonl`"), "{err}");

    // A byte-order mark before a JSON array or JSON lines.
    for text in [format!("\u{feff}[{good}]"), format!("\u{feff}{good}\n")] {
        let examples = instruct::parse(text.as_bytes(), path, true).unwrap();
        assert_eq!(examples[0].instruction, "a");
    }

    // Training needs `output`; evaluation files may lack it.
    let text = format!("{good}\n{{\"instruction\": \"no response\", \"answer\": \"true\"}}\n");
    let err = instruct::parse(text.as_bytes(), path, true).unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains("line 2") && message.contains("no `output`"),
        "{message}"
    );
    let examples = instruct::parse(text.as_bytes(), path, false).unwrap();
    assert_eq!(examples[1].answer.as_deref(), Some("true"));
    let text = format!("[{good}, {{\"instruction\": \"x\"}}]");
    let message = instruct::parse(text.as_bytes(), path, true)
        .unwrap_err()
        .to_string();
    assert!(message.contains("example 1 (0-based)"), "{message}");
    // On disk, through the training reader.
    let dir = temp_dir("instructions-output");
    std::fs::write(dir.join("train.json"), &text).unwrap();
    assert!(instruct::read_training(&dir.join("train.json")).is_err());
    assert_eq!(instruct::read(&dir.join("train.json")).unwrap().len(), 2);
}

// ----------------------------------------------------------------------------------------------
// Flags.

#[test]
fn impossible_flag_values_are_refused_while_parsing() {
    use clap::Parser;
    let parse = |args: &[&str]| {
        Cli::try_parse_from(std::iter::once("peanut").chain(args.iter().copied()))
            .map(|_| ())
            .map_err(|e| e.to_string())
    };
    let image = ["train", "image", "--data-dir", "d", "--model", "m"];
    let lm = ["train", "lm", "--data", "d", "--model", "m"];
    let eval_image = ["eval", "image", "--data-dir", "d", "--model", "m"];
    let eval_lm = ["eval", "lm", "--data", "d", "--model", "m"];
    for (base, flag, value) in [
        (&image[..], "--image-size", "100000"),
        (&image[..], "--image-size", "0"),
        (&image[..], "--weight-decay", "NaN"),
        (&image[..], "--weight-decay", "-1"),
        (&image[..], "--lora-alpha", "0"),
        (&image[..], "--head-lr", "inf"),
        (&image[..], "--adapter-lr", "0"),
        (&image[..], "--batch-size", "0"),
        (&image[..], "--epochs", "0"),
        (&lm[..], "--weight-decay", "NaN"),
        (&lm[..], "--lora-alpha", "0"),
        (&lm[..], "--lr", "-3e-4"),
        (&lm[..], "--batch-size", "0"),
        (&eval_image[..], "--batch-size", "0"),
        (&eval_image[..], "--image-size", "100000"),
        (&eval_lm[..], "--limit", "0"),
        (
            &["merge", "--model", "m", "--adapter", "a", "--output", "o"][..],
            "--image-size",
            "5000",
        ),
    ] {
        let pair = format!("{flag}={value}");
        let args = [base, &[pair.as_str()]].concat();
        let err = parse(&args).unwrap_err();
        assert!(err.contains(flag) && err.contains(value), "{args:?}: {err}");
    }
    // The defaults and sane values still parse.
    for args in [
        &image[..],
        &lm[..],
        &eval_image[..],
        &eval_lm[..],
        &[&image[..], &["--image-size", "1024", "--weight-decay", "0"]].concat(),
        &[&eval_lm[..], &["--limit", "1"]].concat(),
    ] {
        parse(args).unwrap();
    }
}

#[test]
fn an_export_that_cannot_be_written_says_so_not_malformed() {
    // The export's parent is a file: every write fails as the OS refuses it.
    let root = temp_dir("unwritable-export");
    let blocker = root.join("a-file");
    std::fs::write(&blocker, b"not a directory").unwrap();
    let mut model = tiny_vit(3);
    model
        .add_adapters(
            &peanut_models::Targets::vit_qv(),
            &PeanutConfig::new(2).into(),
            1,
        )
        .unwrap();
    let err = train::export_adapters(&model, &blocker.join("export"), None).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, TrainError::Model(_)), "{text}");
    assert!(!text.contains("malformed"), "{text}");
    assert!(text.contains("a-file"), "{text}");
}
