//! Bad inputs against the `peanut` binary, table-driven: each case is a command line, the
//! exit code it must end with, words its message must contain, and the files that must come
//! through untouched (a dataset, a user's directory, an earlier run). Every case runs on the
//! repository's tiny models and on small data made here.
//!
//! Exit codes: 2 for what the argument parser refuses, 1 for what a command refuses, 0 where
//! the command goes on with a warning (the warning's words are checked instead).

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

const PEANUT: &str = env!("CARGO_BIN_EXE_peanut");

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/models")
        .join(name)
}

/// An 8×8 image whose colour depends on the class.
fn write_image(path: &Path, class: usize, index: usize) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    image::RgbImage::from_fn(8, 8, |x, y| {
        let noise = ((x * 7 + y * 13 + index as u32 * 31) % 40) as u8;
        let mut pixel = [noise; 3];
        pixel[class % 3] = 200 + noise / 2;
        image::Rgb(pixel)
    })
    .save(path)
    .unwrap();
}

/// An ImageFolder with `classes` (train: 4 images each, test: 2; a class listed in `empty`
/// gets a train folder without images).
fn image_folder(root: &Path, classes: &[&str], empty: &[&str]) -> PathBuf {
    for (split, count) in [("train", 4), ("test", 2)] {
        for (class, name) in classes.iter().enumerate() {
            let dir = root.join(split).join(name);
            std::fs::create_dir_all(&dir).unwrap();
            if split == "train" && empty.contains(name) {
                continue;
            }
            for i in 0..count {
                write_image(&dir.join(format!("{i}.png")), class, i);
            }
        }
    }
    root.to_path_buf()
}

/// A tiny LLaMA with its tokenizer in `dir`.
fn llama_dir(dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    for entry in std::fs::read_dir(fixture("llama")).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.join(path.file_name().unwrap())).unwrap();
    }
    std::fs::copy(fixture("tokenizer.json"), dir.join("tokenizer.json")).unwrap();
    dir.to_path_buf()
}

/// `count` instructions in the tiny tokenizer's words; the first one's instruction repeats
/// `long` words more.
fn instructions(path: &Path, count: usize, long: usize) -> PathBuf {
    let examples: Vec<serde_json::Value> = (0..count)
        .map(|i| {
            let mut instruction = "the cat sat on the mat .".to_string();
            if i == 0 {
                instruction.push_str(&" the cat".repeat(long));
            }
            serde_json::json!({
                "instruction": instruction,
                "output": "a cat sat .",
                "answer": "true",
            })
        })
        .collect();
    std::fs::write(path, serde_json::to_vec(&examples).unwrap()).unwrap();
    path.to_path_buf()
}

/// A copy of the model directory `from` with every float weight negated: another base model
/// of the same shapes.
fn negated_copy(from: &Path, to: &Path) -> PathBuf {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let target = to.join(path.file_name().unwrap());
        if path.extension().is_none_or(|e| e != "safetensors") {
            std::fs::copy(&path, &target).unwrap();
            continue;
        }
        let bytes = std::fs::read(&path).unwrap();
        let tensors = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let owned: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = tensors
            .tensors()
            .into_iter()
            .map(|(name, view)| {
                // The sign bit is the top bit of each little-endian value.
                let width = match view.dtype() {
                    safetensors::Dtype::F32 => 4,
                    safetensors::Dtype::BF16 | safetensors::Dtype::F16 => 2,
                    other => panic!("{name}: {other:?}"),
                };
                let mut data = view.data().to_vec();
                for value in data.chunks_exact_mut(width) {
                    value[width - 1] ^= 0x80;
                }
                (name, view.dtype(), view.shape().to_vec(), data)
            })
            .collect();
        let views: Vec<_> = owned
            .iter()
            .map(|(name, dtype, shape, data)| {
                let view =
                    safetensors::tensor::TensorView::new(*dtype, shape.clone(), data).unwrap();
                (name.clone(), view)
            })
            .collect();
        std::fs::write(&target, safetensors::serialize(views, None).unwrap()).unwrap();
    }
    to.to_path_buf()
}

/// A PNG file that declares `side`×`side` pixels (header only).
fn huge_png(path: &Path, side: u32) -> PathBuf {
    fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = 0xffff_ffffu32;
        for &b in bytes {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ 0xedb8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }
    let mut ihdr = b"IHDR".to_vec();
    ihdr.extend(side.to_be_bytes());
    ihdr.extend(side.to_be_bytes());
    ihdr.extend([8, 2, 0, 0, 0]);
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.extend(13u32.to_be_bytes());
    png.extend(&ihdr);
    png.extend(crc32(&ihdr).to_be_bytes());
    // One IDAT chunk (an empty zlib stream): decoders read the header up to it.
    let mut idat = b"IDAT".to_vec();
    idat.extend([0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01]);
    png.extend(8u32.to_be_bytes());
    png.extend(&idat);
    png.extend(crc32(&idat).to_be_bytes());
    let iend = b"IEND";
    png.extend(0u32.to_be_bytes());
    png.extend(iend);
    png.extend(crc32(iend).to_be_bytes());
    std::fs::write(path, png).unwrap();
    path.to_path_buf()
}

/// Every file under `path` (or `path` itself) with its bytes.
fn snapshot(path: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut files = BTreeMap::new();
    if path.is_file() {
        files.insert(path.to_path_buf(), std::fs::read(path).unwrap());
    } else if path.is_dir() {
        for entry in std::fs::read_dir(path).unwrap() {
            files.extend(snapshot(&entry.unwrap().path()));
        }
    }
    files
}

/// `train image` on the tiny ViT, 1 epoch at 8 px, rank 2, with `extra` options.
fn train_image(data: &Path, out: &Path, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = ["train", "image", "--data-dir"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.push(data.display().to_string());
    args.extend(["--model".into(), fixture("vit").display().to_string()]);
    args.extend(["--output-dir".into(), out.display().to_string()]);
    // The defaults, except those `extra` sets (an option may be given once).
    for (option, value) in [
        ("--epochs", "1"),
        ("--batch-size", "4"),
        ("--image-size", "8"),
        ("--rank", "2"),
        ("--devices", "1"),
    ] {
        if !extra.contains(&option) {
            args.extend([option.to_string(), value.to_string()]);
        }
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

fn owned(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

fn path_arg(path: &Path) -> String {
    path.display().to_string()
}

/// One bad input.
struct Case {
    /// What the case is, for failure messages.
    name: &'static str,
    /// The command line after `peanut`.
    args: Vec<String>,
    /// The exit code it must end with.
    code: i32,
    /// Words the output (stderr and stdout) must contain.
    words: Vec<&'static str>,
    /// Files and directories that must come through byte for byte.
    survive: Vec<PathBuf>,
    /// Paths that must not exist afterwards (a run directory a refused option must not create).
    absent: Vec<PathBuf>,
}

impl Case {
    fn new(name: &'static str, args: Vec<String>, code: i32, words: &[&'static str]) -> Self {
        Self {
            name,
            args,
            code,
            words: words.to_vec(),
            survive: Vec::new(),
            absent: Vec::new(),
        }
    }

    fn survive(mut self, paths: &[&Path]) -> Self {
        self.survive = paths.iter().map(|p| p.to_path_buf()).collect();
        self
    }

    fn absent(mut self, paths: &[&Path]) -> Self {
        self.absent = paths.iter().map(|p| p.to_path_buf()).collect();
        self
    }

    /// Runs the case; returns what went wrong, if anything.
    fn check(&self) -> Option<String> {
        let before: Vec<_> = self.survive.iter().map(|p| snapshot(p)).collect();
        let output = Command::new(PEANUT)
            .args(&self.args)
            .env("PEANUT_HUB_OFFLINE", "1")
            .env("HF_HUB_OFFLINE", "1")
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stderr),
            String::from_utf8_lossy(&output.stdout)
        );
        let mut problems = Vec::new();
        if output.status.code() != Some(self.code) {
            problems.push(format!(
                "exit code {:?}, expected {}",
                output.status.code(),
                self.code
            ));
        }
        for word in &self.words {
            if !text.contains(word) {
                problems.push(format!("no `{word}` in the output"));
            }
        }
        if text.contains("panicked") {
            problems.push("a panic".into());
        }
        for (path, was) in self.survive.iter().zip(&before) {
            if snapshot(path) != *was {
                problems.push(format!("`{}` changed", path.display()));
            }
        }
        for path in &self.absent {
            if path.exists() {
                problems.push(format!("`{}` was created", path.display()));
            }
        }
        (!problems.is_empty()).then(|| {
            format!(
                "{}: {}\n  peanut {}\n  output: {}",
                self.name,
                problems.join("; "),
                self.args.join(" "),
                text.trim()
            )
        })
    }
}

/// Runs a command that must succeed (the set-up of the cases).
fn run_ok(args: &[String]) -> String {
    let output = Command::new(PEANUT).args(args).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stderr),
        String::from_utf8_lossy(&output.stdout)
    );
    assert!(output.status.success(), "peanut {}: {text}", args.join(" "));
    text
}

#[test]
fn bad_inputs_end_in_clear_errors_and_lose_nothing() {
    let tmp = tempfile_dir();
    let root = tmp.as_path();
    let data = image_folder(&root.join("data"), &["red", "green", "blue"], &[]);
    // Classes are sorted by name: the export's are blue, green, red; these cyan, green, red.
    let renamed = image_folder(&root.join("renamed"), &["red", "green", "cyan"], &[]);
    let one_class = image_folder(&root.join("one"), &["red"], &[]);
    let with_empty = image_folder(&root.join("empty"), &["red", "green", "blue"], &["green"]);
    let llama = llama_dir(&root.join("llama"));
    let other = negated_copy(&fixture("vit"), &root.join("other_vit"));
    let other_llama = negated_copy(&llama, &root.join("other_llama"));
    let notes = root.join("notes");
    std::fs::create_dir_all(&notes).unwrap();
    std::fs::write(notes.join("thesis.txt"), "years of work").unwrap();
    let long_instructions = instructions(&root.join("long.json"), 4, 60);
    let short_instructions = instructions(&root.join("short.json"), 12, 0);
    let huge = huge_png(&root.join("huge.png"), 100_000);

    // A finished run to evaluate, predict with, merge and convert.
    let run = root.join("run");
    run_ok(&train_image(&data, &run, &[]));
    let export = run.join("export");
    let vit = fixture("vit");

    let lm_run = root.join("lm_run");
    let lm_train = |out: &Path, cutoff: &str| -> Vec<String> {
        let mut args = owned(&["train", "lm", "--data"]);
        args.push(path_arg(&short_instructions));
        args.extend(["--model".into(), path_arg(&llama)]);
        args.extend(["--output-dir".into(), path_arg(out)]);
        args.extend(owned(&[
            "--epochs",
            "1",
            "--batch-size",
            "2",
            "--rank",
            "2",
            "--val-size",
            "2",
            "--devices",
            "1",
            "--cutoff-len",
            cutoff,
        ]));
        args
    };

    // A run directory held by another process (this test holds its lock, as a running
    // `peanut train` would).
    let held = root.join("held");
    run_ok(&train_image(&data, &held, &[]));
    let lock = OpenOptions::new()
        .read(true)
        .write(true)
        .open(held.join(".peanut.lock"))
        .unwrap();
    lock.try_lock().unwrap();
    lock.set_len(0).unwrap();
    write!(&lock, "{}", std::process::id()).unwrap();
    let pid = std::process::id().to_string();
    let pid: &'static str = Box::leak(pid.into_boxed_str());

    let merged = root.join("merged");
    let convert_in_place = root.join("convert_in_place");
    copy_dir(&export.join("peft"), &convert_in_place);

    let eval = |model: &Path, data: &Path, extra: &[&str]| -> Vec<String> {
        let mut args = owned(&["eval", "image", "--data-dir"]);
        args.push(path_arg(data));
        args.extend(["--model".into(), path_arg(model)]);
        args.extend(["--adapter".into(), path_arg(&export)]);
        args.extend(owned(extra));
        args
    };

    let cases = vec![
        // Data loss.
        Case::new(
            "--output-dir is the dataset, with --overwrite",
            train_image(&data, &data, &["--overwrite"]),
            1,
            &["--output-dir", "is the --data-dir path"],
        )
        .survive(&[&data]),
        Case::new(
            "--output-dir inside the dataset",
            train_image(&data, &data.join("runs"), &[]),
            1,
            &["lies inside the --data-dir path"],
        )
        .survive(&[&data])
        .absent(&[&data.join("runs")]),
        Case::new(
            "--output-dir holding the dataset",
            train_image(&data, root, &["--overwrite"]),
            1,
            &["holds the --data-dir path"],
        )
        .survive(&[&data, &notes]),
        Case::new(
            "--overwrite on a directory that is no run directory",
            train_image(&data, &notes, &["--overwrite"]),
            1,
            &["not a run directory", "thesis.txt"],
        )
        .survive(&[&notes]),
        Case::new(
            "--resume on a directory that is no run directory",
            train_image(&data, &notes, &["--resume"]),
            1,
            &["not a run directory"],
        )
        .survive(&[&notes]),
        Case::new(
            "a run directory another process holds",
            train_image(&data, &held, &["--overwrite"]),
            1,
            &["in use by process", pid],
        )
        .survive(&[&held.join("export"), &held.join("run.json")]),
        Case::new(
            "merge into a directory of other files",
            {
                let mut args = owned(&["merge", "--model"]);
                args.push(path_arg(&vit));
                args.extend(["--adapter".into(), path_arg(&export)]);
                args.extend(["--output".into(), path_arg(&notes)]);
                args
            },
            1,
            &["thesis.txt", "does not write"],
        )
        .survive(&[&notes]),
        Case::new(
            "convert into a directory of other files",
            {
                let mut args = owned(&["convert", "--input"]);
                args.push(path_arg(&export.join("peft")));
                args.extend(["--output".into(), path_arg(&notes)]);
                args.extend(owned(&["--to", "peanut"]));
                args
            },
            1,
            &["thesis.txt", "does not write"],
        )
        .survive(&[&notes, &export]),
        // Numbers the parser refuses, with the range in words.
        Case::new(
            "--rank -1",
            train_image(&data, &root.join("r1"), &["--rank", "-1"]),
            2,
            &["--rank", "at least 1"],
        )
        .absent(&[&root.join("r1")]),
        Case::new(
            "--rank 0",
            train_image(&data, &root.join("r0"), &["--rank", "0"]),
            2,
            &["--rank", "at least 1"],
        ),
        Case::new(
            "--adapter-lr -0.01",
            train_image(&data, &root.join("lr"), &["--adapter-lr", "-0.01"]),
            2,
            &["--adapter-lr", "above 0"],
        ),
        Case::new(
            "--scaling 1e30",
            train_image(&data, &root.join("s"), &["--scaling", "1e30"]),
            1,
            &["--scaling", "at most"],
        )
        .absent(&[&root.join("s")]),
        // Options checked before the run directory is touched.
        Case::new(
            "--layers out of range",
            train_image(&data, &root.join("layers"), &["--layers", "99"]),
            1,
            &["--layers"],
        )
        .absent(&[&root.join("layers")]),
        Case::new(
            "--targets matching nothing",
            train_image(&data, &root.join("targets"), &["--targets", "nope"]),
            1,
            &["--targets", "nope"],
        )
        .absent(&[&root.join("targets")]),
        // Datasets that cannot train a classifier.
        Case::new(
            "one class",
            train_image(&one_class, &root.join("one_run"), &[]),
            1,
            &["at least two"],
        )
        .absent(&[&root.join("one_run")]),
        Case::new(
            "an empty class folder",
            train_image(&with_empty, &root.join("empty_run"), &[]),
            1,
            &["green", "no readable training image"],
        )
        .absent(&[&root.join("empty_run")]),
        // An export applied where it does not belong.
        Case::new(
            "eval on reordered classes",
            eval(&vit, &renamed, &[]),
            1,
            &["labels.json", "`blue`", "`cyan`"],
        ),
        Case::new(
            "eval on another base model",
            eval(&other, &data, &[]),
            1,
            &["another one", "--adapter"],
        ),
        Case::new(
            "predict on another base model",
            {
                let mut args = owned(&["predict", "image", "--model"]);
                args.push(path_arg(&other));
                args.extend(["--adapter".into(), path_arg(&export)]);
                args.push(path_arg(&data.join("test/red/0.png")));
                args
            },
            1,
            &["another one"],
        ),
        Case::new(
            "merge onto another base model",
            {
                let mut args = owned(&["merge", "--model"]);
                args.push(path_arg(&other));
                args.extend(["--adapter".into(), path_arg(&export)]);
                args.extend(["--output".into(), path_arg(&merged)]);
                args
            },
            1,
            &["another one"],
        )
        .absent(&[&merged, &root.join("merged.tmp")]),
        Case::new(
            "eval without --image-size takes the training size",
            eval(&vit, &data, &[]),
            0,
            &["8² pixels, the size the export was trained at", "\"top1\""],
        ),
        Case::new(
            "predict an image past the pixel limit",
            {
                let mut args = owned(&["predict", "image", "--model"]);
                args.push(path_arg(&vit));
                args.extend(["--adapter".into(), path_arg(&export)]);
                args.push(path_arg(&huge));
                args
            },
            1,
            &["100000×100000"],
        ),
        // Lengths checked against the model's context (64 tokens for the tiny LLaMA).
        Case::new(
            "generate with a prompt longer than the context",
            {
                let mut args = owned(&["generate", "--model"]);
                args.push(path_arg(&llama));
                args.extend(["--instruction".into(), "the cat ".repeat(60)]);
                args
            },
            1,
            &["--instruction", "context"],
        ),
        Case::new(
            "generate --max-new-tokens past the context",
            {
                let mut args = owned(&["generate", "--model"]);
                args.push(path_arg(&llama));
                args.extend(owned(&[
                    "--prompt",
                    "the cat",
                    "--max-new-tokens",
                    "100000000",
                ]));
                args
            },
            1,
            &["--max-new-tokens", "at most"],
        ),
        Case::new(
            "generate --max-new-tokens -5",
            {
                let mut args = owned(&["generate", "--model"]);
                args.push(path_arg(&llama));
                args.extend(owned(&["--prompt", "the cat", "--max-new-tokens", "-5"]));
                args
            },
            2,
            &["at least 1"],
        ),
        Case::new(
            "eval lm on an example longer than the context",
            {
                let mut args = owned(&["eval", "lm", "--task", "boolq", "--data"]);
                args.push(path_arg(&long_instructions));
                args.extend(["--model".into(), path_arg(&llama)]);
                args
            },
            1,
            &["example 0", "context"],
        ),
        Case::new(
            "train lm --cutoff-len past the context",
            lm_train(&lm_run, "1000000"),
            0,
            &["longer than the model's context", "cut at 64 tokens"],
        )
        .survive(&[&short_instructions, &llama]),
        Case::new(
            "generate with an LM export on another base model",
            {
                let mut args = owned(&["generate", "--model"]);
                args.push(path_arg(&other_llama));
                args.extend(["--adapter".into(), path_arg(&lm_run.join("export"))]);
                args.extend(owned(&["--prompt", "the cat", "--max-new-tokens", "2"]));
                args
            },
            1,
            &["another one", "--adapter"],
        ),
        Case::new(
            "eval lm with an LM export on another base model",
            {
                let mut args = owned(&["eval", "lm", "--task", "boolq", "--data"]);
                args.push(path_arg(&short_instructions));
                args.extend(["--model".into(), path_arg(&other_llama)]);
                args.extend(["--adapter".into(), path_arg(&lm_run.join("export"))]);
                args.extend(owned(&["--max-new-tokens", "2"]));
                args
            },
            1,
            &["another one"],
        ),
        Case::new(
            "train lm with --output-dir the model directory",
            lm_train(&llama, "32"),
            1,
            &["is the --model path"],
        )
        .survive(&[&llama]),
    ];
    let failures: Vec<String> = cases.iter().filter_map(Case::check).collect();
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );

    // Converting in place keeps the base model's name and gives the same adapter back.
    let config = |dir: &Path| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(dir.join("adapter_config.json")).unwrap()).unwrap()
    };
    let base = config(&convert_in_place)["base_model_name_or_path"].clone();
    assert!(base.is_string(), "{base}");
    let mut args = owned(&["convert", "--input"]);
    args.push(path_arg(&convert_in_place));
    args.extend(["--output".into(), path_arg(&convert_in_place)]);
    args.extend(owned(&["--to", "peft"]));
    run_ok(&args);
    assert_eq!(config(&convert_in_place)["base_model_name_or_path"], base);
    assert_eq!(
        tensors(&convert_in_place.join("adapter_model.safetensors")),
        tensors(&export.join("peft/adapter_model.safetensors"))
    );
    assert!(!root.join("convert_in_place.tmp").exists());
    drop(lock);
}

/// The tensors of a safetensors file by name: shape and bytes.
fn tensors(path: &Path) -> BTreeMap<String, (Vec<usize>, Vec<u8>)> {
    let bytes = std::fs::read(path).unwrap();
    safetensors::SafeTensors::deserialize(&bytes)
        .unwrap()
        .tensors()
        .into_iter()
        .map(|(name, view)| (name, (view.shape().to_vec(), view.data().to_vec())))
        .collect()
}

/// Copies the files of `from` into a new directory `to`.
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, to.join(path.file_name().unwrap())).unwrap();
    }
}

/// A fresh directory under the target directory's temporary folder, removed when dropped.
fn tempfile_dir() -> TempDir {
    let base = std::env::temp_dir().join(format!("peanut-bad-inputs-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    std::fs::create_dir_all(&base).unwrap();
    TempDir(base)
}

/// A directory removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn as_path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
