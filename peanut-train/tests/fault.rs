//! Fault injection: the `peanut` binary trains a tiny ViT on a tiny ImageFolder; copies of the
//! run are killed (SIGKILL) at seeded random instants — while loading, training, writing a
//! checkpoint or exporting — and then continued with `--resume`, sometimes killed again. Every
//! continued run must finish and export exactly the bytes of an uninterrupted run.
//!
//! `PEANUT_FAULT_KILLS` sets the number of kills (default 20, e.g. `PEANUT_FAULT_KILLS=200`
//! for a longer run) and `PEANUT_FAULT_SEED` the seed of the instants (default 1).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use peanut_train::data::rng::SplitMix64;

const PEANUT: &str = env!("CARGO_BIN_EXE_peanut");

const EPOCHS: usize = 4;

fn env_or(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(value) => value
            .parse()
            .unwrap_or_else(|_| panic!("{name} must be a number, got `{value}`")),
        Err(_) => default,
    }
}

/// An 8×8 image whose colour depends on the class, with some per-image noise.
fn write_image(path: &Path, class: usize, index: usize) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    image::RgbImage::from_fn(8, 8, |x, y| {
        let noise = ((x * 7 + y * 13 + index as u32 * 31) % 40) as u8;
        let mut pixel = [noise; 3];
        pixel[class] = 200 + noise / 2;
        image::Rgb(pixel)
    })
    .save(path)
    .unwrap();
}

fn image_folder(root: &Path) {
    for (split, count) in [("train", 8), ("test", 2)] {
        for (class, name) in ["red", "green", "blue"].iter().enumerate() {
            for i in 0..count {
                write_image(
                    &root.join(split).join(name).join(format!("{i}.png")),
                    class,
                    i,
                );
            }
        }
    }
}

fn train_command(data: &Path, out: &Path, resume: bool) -> Command {
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/models/vit");
    let mut command = Command::new(PEANUT);
    command.args(["train", "image", "--data-dir"]).arg(data);
    command.arg("--model").arg(model);
    command.arg("--output-dir").arg(out);
    command.args([
        "--epochs",
        &EPOCHS.to_string(),
        "--batch-size",
        "6",
        "--grad-accumulation",
        "1",
        "--image-size",
        "8",
        "--rank",
        "2",
        "--seed",
        "11",
    ]);
    if resume {
        command.arg("--resume");
    }
    command
}

/// Runs `command` to completion; panics with its output when it fails.
fn finish(mut command: Command, what: &str) {
    let output = command.output().unwrap();
    assert!(
        output.status.success(),
        "{what} failed ({}):\n{}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Where a killed run stood.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Stage {
    /// No `run.json` yet.
    Starting,
    /// `run.json`, no complete checkpoint.
    Started,
    /// Some epochs checkpointed.
    Training,
    /// Every epoch checkpointed, the export not (or not completely) written.
    Exporting,
    /// Done before the kill.
    Finished,
}

fn stage(out: &Path, epochs: usize) -> Stage {
    if out.join("export/labels.json").is_file() {
        Stage::Finished
    } else if peanut_train::train::last_checkpoint(out) == Some(epochs) {
        Stage::Exporting
    } else if peanut_train::train::last_checkpoint(out).is_some() {
        Stage::Training
    } else if out.join("run.json").is_file() {
        Stage::Started
    } else {
        Stage::Starting
    }
}

/// Starts `command` and kills it (SIGKILL) after `delay`, or lets it end first.
fn kill_after(mut command: Command, delay: Duration) {
    let mut child = command
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while start.elapsed() < delay {
        if child.try_wait().unwrap().is_some() {
            return;
        }
        std::thread::sleep(Duration::from_millis(2).min(delay));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Every file under `dir`, by relative path, with its bytes.
fn files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<(PathBuf, Vec<u8>)>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                let bytes = std::fs::read(&path).unwrap();
                out.push((path.strip_prefix(root).unwrap().to_path_buf(), bytes));
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

#[test]
fn runs_killed_at_random_instants_resume_to_the_same_export() {
    let kills = env_or("PEANUT_FAULT_KILLS", 20) as usize;
    let seed = env_or("PEANUT_FAULT_SEED", 1);
    let root = std::env::temp_dir().join(format!("peanut-fault-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let data = root.join("data");
    image_folder(&data);

    // Two uninterrupted runs: the first warms the caches, the second times the run; both
    // export the same bytes (training is deterministic).
    finish(
        train_command(&data, &root.join("warm"), false),
        "the uninterrupted run",
    );
    let start = Instant::now();
    finish(
        train_command(&data, &root.join("whole"), false),
        "the uninterrupted run",
    );
    let span = start.elapsed();
    let expected = files(&root.join("whole/export"));
    assert!(
        files(&root.join("warm/export")) == expected,
        "two uninterrupted runs exported different bytes"
    );
    let names: Vec<_> = expected.iter().map(|(p, _)| p.clone()).collect();
    for wanted in ["head.safetensors", "labels.json", "peanut", "peft"] {
        assert!(
            names.iter().any(|n| n.starts_with(wanted)),
            "{wanted} missing from {names:?}"
        );
    }

    // Trials run two at a time; each takes one or two kills before its final resume.
    let mut rng = SplitMix64::new(seed);
    let mut plans: Vec<Vec<Duration>> = Vec::new();
    let mut planned = 0;
    while planned < kills {
        let count = (1 + rng.below(2)).min(kills - planned);
        // A resumed run has less left to do: its kill comes earlier.
        let delays = (0..count)
            .map(|k| span.mul_f64(rng.uniform(0.0, 1.0) / (k + 1) as f64))
            .collect();
        plans.push(delays);
        planned += count;
    }
    let trials: Vec<(usize, Vec<Duration>)> = plans.into_iter().enumerate().collect();
    let stages = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for half in trials.chunks(trials.len().div_ceil(2)) {
            let (root, data, expected, stages) = (&root, &data, &expected, &stages);
            scope.spawn(move || {
                for (trial, delays) in half {
                    let out = root.join(format!("trial-{trial}"));
                    for (k, delay) in delays.iter().enumerate() {
                        kill_after(train_command(data, &out, k > 0), *delay);
                        stages.lock().unwrap().push(stage(&out, EPOCHS));
                    }
                    finish(
                        train_command(data, &out, true),
                        &format!("the resume of trial {trial} (killed after {delays:?})"),
                    );
                    let got = files(&out.join("export"));
                    let got_names: Vec<_> = got.iter().map(|(p, _)| p.clone()).collect();
                    let want_names: Vec<_> = expected.iter().map(|(p, _)| p.clone()).collect();
                    assert_eq!(got_names, want_names, "trial {trial}: exported files");
                    for ((name, got), (_, want)) in got.iter().zip(expected) {
                        assert!(
                            got == want,
                            "trial {trial} (killed after {delays:?}): {} differs from the \
                             uninterrupted run's",
                            name.display()
                        );
                    }
                    let _ = std::fs::remove_dir_all(&out);
                }
            });
        }
    });
    let mut stages = stages.into_inner().unwrap();
    stages.sort();
    let mut counts: Vec<(Stage, usize)> = Vec::new();
    for s in &stages {
        match counts.last_mut() {
            Some((last, n)) if last == s => *n += 1,
            _ => counts.push((*s, 1)),
        }
    }
    eprintln!(
        "{} kills over an uninterrupted run of {span:?}, leaving runs at {counts:?}",
        stages.len()
    );
    // The instants span the run: some kills land before any checkpoint, some between them.
    assert!(stages.len() >= kills);
    assert!(stages.iter().any(|s| *s <= Stage::Started), "{stages:?}");
    assert!(
        stages
            .iter()
            .any(|s| matches!(s, Stage::Training | Stage::Exporting)),
        "{stages:?}"
    );
    let _ = std::fs::remove_dir_all(&root);
}
