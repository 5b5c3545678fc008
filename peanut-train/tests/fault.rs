//! Reproducibility and fault injection, on the `peanut` binary with its default settings (the
//! CPU's data-parallel workers, gradient accumulation over 4 steps):
//!
//! - two runs with the same seed export the same bytes (`train image` on a tiny ViT and
//!   ImageFolder, `train lm` on a tiny LLaMA and instruction file);
//! - copies of a `train image` run are killed (SIGKILL) at seeded random instants — while
//!   loading, in the first epoch before any checkpoint, training, writing a checkpoint, or
//!   writing the final export — and continued with `--resume`, sometimes killed again; also with
//!   `--checkpointing --precision bf16`. Every continued run must finish and export exactly the
//!   bytes of an uninterrupted run;
//! - `peanut merge` (and `peanut convert`) killed at random instants over an earlier merge
//!   (conversion) leaves the earlier output or nothing, never a mix, and running it again gives
//!   the uninterrupted output's bytes.
//!
//! `PEANUT_FAULT_KILLS` sets the number of training kills (default 50, e.g.
//! `PEANUT_FAULT_KILLS=200` for a longer run; as many merge kills and conversion kills) and
//! `PEANUT_FAULT_SEED` the seed of the instants (default 1).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use peanut_train::data::rng::SplitMix64;

const PEANUT: &str = env!("CARGO_BIN_EXE_peanut");

const EPOCHS: usize = 4;

/// The extra options of the fault test's second configuration.
const MEMORY_OPTIONS: [&str; 3] = ["--checkpointing", "--precision", "bf16"];

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

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/models")
        .join(name)
}

/// `train image` on the tiny ViT with the default training settings: 24 images in steps of 4
/// (two CPU workers of 2 on a machine with two cores or more), so each epoch is one update of 4
/// accumulated steps and one of the 2 left.
fn train_command(data: &Path, out: &Path, resume: bool, extra: &[&str]) -> Command {
    seeded_train_command(data, out, resume, extra, 11)
}

/// [`train_command`] with another seed.
fn seeded_train_command(
    data: &Path,
    out: &Path,
    resume: bool,
    extra: &[&str],
    seed: u64,
) -> Command {
    let mut command = Command::new(PEANUT);
    command.args(["train", "image", "--data-dir"]).arg(data);
    command.arg("--model").arg(fixture("vit"));
    command.arg("--output-dir").arg(out);
    command.args([
        "--epochs",
        &EPOCHS.to_string(),
        "--batch-size",
        "4",
        "--image-size",
        "8",
        "--rank",
        "2",
        "--seed",
        &seed.to_string(),
    ]);
    command.args(extra);
    if resume {
        command.arg("--resume");
    }
    command
}

/// A tiny LLaMA with its tokenizer (the repository's fixtures) in `dir`.
fn llama_dir(dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    for entry in std::fs::read_dir(fixture("llama")).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.join(path.file_name().unwrap())).unwrap();
    }
    std::fs::copy(fixture("tokenizer.json"), dir.join("tokenizer.json")).unwrap();
    dir.to_path_buf()
}

/// 22 instructions in the tiny tokenizer's words.
fn instructions(path: &Path) -> PathBuf {
    let facts = [
        ("the cat sat on the mat", "a cat"),
        ("the dog sat on a mat", "a dog"),
        ("a cat on the dog", "the cat"),
    ];
    let examples: Vec<serde_json::Value> = (0..22)
        .map(|i| {
            let (question, answer) = facts[i % facts.len()];
            serde_json::json!({
                "instruction": format!("{question} ."),
                "output": format!("{answer} sat ."),
            })
        })
        .collect();
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, serde_json::to_vec(&examples).unwrap()).unwrap();
    path.to_path_buf()
}

/// `train lm` with the default training settings: 20 training examples in steps of 4, so each
/// epoch is one update of 4 accumulated steps and one of the 1 left.
fn train_lm_command(data: &Path, model: &Path, out: &Path) -> Command {
    let mut command = Command::new(PEANUT);
    command.args(["train", "lm", "--data"]).arg(data);
    command.arg("--model").arg(model);
    command.arg("--output-dir").arg(out);
    command.args([
        "--epochs",
        "2",
        "--batch-size",
        "4",
        "--rank",
        "2",
        "--val-size",
        "2",
        "--cutoff-len",
        "32",
        "--seed",
        "5",
    ]);
    command
}

/// `peanut merge` of the export in `run` onto the tiny ViT, into `out`.
fn merge_command(run: &Path, out: &Path) -> Command {
    let mut command = Command::new(PEANUT);
    command.arg("merge").arg("--model").arg(fixture("vit"));
    command.arg("--adapter").arg(run.join("export"));
    command.arg("--output").arg(out);
    command.args(["--image-size", "8"]);
    command
}

/// Runs `command` to completion and returns its standard output; panics with its output when
/// it fails.
fn finish(mut command: Command, what: &str) -> String {
    let output = command.output().unwrap();
    assert!(
        output.status.success(),
        "{what} failed ({}):\n{}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Whether this machine runs the default two CPU workers (one per core, at most 2).
fn two_workers() -> bool {
    std::thread::available_parallelism().map_or(1, usize::from) >= 2
}

/// Checks that a run's log says it trained on the default workers.
fn assert_default_workers(stdout: &str) {
    if two_workers() {
        assert!(
            stdout.contains("2 CPU workers"),
            "expected the default two CPU workers:\n{stdout}"
        );
    }
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

/// When a kill comes.
#[derive(Debug, Clone, Copy)]
enum Kill {
    /// This long after the start.
    After(Duration),
    /// This long after the run first shows `stage`.
    AfterStage(Stage, Duration),
}

/// Starts `command` (a run into `out`) and kills it (SIGKILL) at `kill`, or lets it end first.
fn kill_at(mut command: Command, out: &Path, kill: Kill) {
    let mut child = command
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let mut deadline = match kill {
        Kill::After(delay) => Some(start + delay),
        Kill::AfterStage(..) => None,
    };
    loop {
        if child.try_wait().unwrap().is_some() {
            return;
        }
        let now = Instant::now();
        match (deadline, kill) {
            (Some(at), _) if now >= at => break,
            (None, Kill::AfterStage(wanted, delay)) if stage(out, EPOCHS) >= wanted => {
                deadline = Some(now + delay);
            }
            _ => {}
        }
        std::thread::sleep(Duration::from_millis(1));
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

/// Every file of the export of the run in `out`, by relative path, with its bytes.
fn export_of(out: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    files(&out.join("export"))
}

fn assert_same_files(got: &[(PathBuf, Vec<u8>)], want: &[(PathBuf, Vec<u8>)], what: &str) {
    let names = |f: &[(PathBuf, Vec<u8>)]| f.iter().map(|(p, _)| p.clone()).collect::<Vec<_>>();
    assert_eq!(names(got), names(want), "{what}: files");
    for ((name, got), (_, want)) in got.iter().zip(want) {
        assert!(got == want, "{what}: {} differs", name.display());
    }
}

fn temp_root(name: &str) -> PathBuf {
    let root = std::env::temp_dir().join(format!("peanut-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    root
}

#[test]
fn two_default_image_runs_with_one_seed_export_the_same_bytes() {
    let root = temp_root("repro-image");
    let data = root.join("data");
    image_folder(&data);
    let first = finish(train_command(&data, &root.join("a"), false, &[]), "run a");
    assert_default_workers(&first);
    finish(train_command(&data, &root.join("b"), false, &[]), "run b");
    let a = export_of(&root.join("a"));
    assert!(a.iter().any(|(p, _)| p.starts_with("peanut")), "{a:?}");
    assert_same_files(
        &export_of(&root.join("b")),
        &a,
        "two image runs with one seed",
    );
    // A different seed does give a different export: the comparison can fail.
    finish(
        seeded_train_command(&data, &root.join("c"), false, &[], 12),
        "run c",
    );
    assert!(export_of(&root.join("c")) != a, "the seed changed nothing");
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn two_default_lm_runs_with_one_seed_export_the_same_bytes() {
    let root = temp_root("repro-lm");
    let model = llama_dir(&root.join("model"));
    let data = instructions(&root.join("data/train.json"));
    let first = finish(train_lm_command(&data, &model, &root.join("a")), "run a");
    assert_default_workers(&first);
    finish(train_lm_command(&data, &model, &root.join("b")), "run b");
    let a = export_of(&root.join("a"));
    assert!(a.iter().any(|(p, _)| p.starts_with("peft")), "{a:?}");
    assert_same_files(&export_of(&root.join("b")), &a, "two LM runs with one seed");
    let _ = std::fs::remove_dir_all(&root);
}

/// Tallies stages: `(stage, count)` in order.
fn tally(stages: &mut [Stage]) -> Vec<(Stage, usize)> {
    stages.sort();
    let mut counts: Vec<(Stage, usize)> = Vec::new();
    for s in stages.iter() {
        match counts.last_mut() {
            Some((last, n)) if last == s => *n += 1,
            _ => counts.push((*s, 1)),
        }
    }
    counts
}

#[test]
fn runs_killed_at_random_instants_resume_to_the_same_export() {
    let kills = env_or("PEANUT_FAULT_KILLS", 50) as usize;
    let seed = env_or("PEANUT_FAULT_SEED", 1);
    let root = temp_root("fault");
    let data = root.join("data");
    image_folder(&data);

    // The uninterrupted runs of both configurations; the first also warms the caches.
    let configs: [&[&str]; 2] = [&[], &MEMORY_OPTIONS];
    let mut expected = Vec::new();
    let mut span = Duration::ZERO;
    for (c, extra) in configs.iter().enumerate() {
        let out = root.join(format!("whole-{c}"));
        let start = Instant::now();
        let stdout = finish(
            train_command(&data, &out, false, extra),
            "the uninterrupted run",
        );
        span = span.max(start.elapsed());
        assert_default_workers(&stdout);
        let export = export_of(&out);
        let names: Vec<_> = export.iter().map(|(p, _)| p.clone()).collect();
        for wanted in ["head.safetensors", "labels.json", "peanut", "peft"] {
            assert!(
                names.iter().any(|n| n.starts_with(wanted)),
                "{wanted} missing from {names:?}"
            );
        }
        expected.push(export);
    }
    assert!(expected[0] != expected[1], "bf16 changed nothing");

    // Each trial takes one or two kills before its final resume; one trial in four runs the
    // second configuration. Three kills in ten are aimed: one at a random instant of the first
    // epoch once `run.json` is written, two just as the final export starts.
    let mut rng = SplitMix64::new(seed);
    let mut trials: Vec<(usize, Vec<Kill>)> = Vec::new();
    let mut planned = 0;
    while planned < kills {
        let count = (1 + rng.below(2)).min(kills - planned);
        let config = usize::from(rng.below(4) == 0);
        let plan = (0..count)
            .map(|k| match rng.below(10) {
                0 => Kill::AfterStage(
                    Stage::Started,
                    span.mul_f64(rng.uniform(0.0, 1.0) / EPOCHS as f64),
                ),
                // The export after the last checkpoint takes a few milliseconds on the tiny
                // model: a kill is aimed within 3 ms of its start to land inside it.
                1 | 2 => Kill::AfterStage(
                    Stage::Exporting,
                    Duration::from_micros(rng.below(3_000) as u64),
                ),
                // A resumed run has less left to do: its kill comes earlier.
                _ => Kill::After(span.mul_f64(rng.uniform(0.0, 1.0) / (k + 1) as f64)),
            })
            .collect();
        trials.push((config, plan));
        planned += count;
    }
    let trials: Vec<(usize, (usize, Vec<Kill>))> = trials.into_iter().enumerate().collect();
    let stages = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for half in trials.chunks(trials.len().div_ceil(2)) {
            let (root, data, expected, stages, configs) =
                (&root, &data, &expected, &stages, &configs);
            scope.spawn(move || {
                for (trial, (config, plan)) in half {
                    let extra = configs[*config];
                    let out = root.join(format!("trial-{trial}"));
                    for (k, kill) in plan.iter().enumerate() {
                        kill_at(train_command(data, &out, k > 0, extra), &out, *kill);
                        stages.lock().unwrap().push(stage(&out, EPOCHS));
                    }
                    finish(
                        train_command(data, &out, true, extra),
                        &format!("the resume of trial {trial} (killed at {plan:?})"),
                    );
                    assert_same_files(
                        &export_of(&out),
                        &expected[*config],
                        &format!(
                            "trial {trial} ({extra:?}, killed at {plan:?}) against the \
                             uninterrupted run"
                        ),
                    );
                    let _ = std::fs::remove_dir_all(&out);
                }
            });
        }
    });
    let mut stages = stages.into_inner().unwrap();
    let counts = tally(&mut stages);
    eprintln!(
        "{} kills over an uninterrupted run of {span:?}, leaving runs at {counts:?}",
        stages.len()
    );
    // The instants span the run: some kills land before any checkpoint, some between them,
    // some after the last.
    assert!(stages.len() >= kills);
    for wanted in [Stage::Started, Stage::Training, Stage::Exporting] {
        let near = |s: &Stage| match wanted {
            Stage::Started => *s <= Stage::Started,
            _ => *s == wanted,
        };
        assert!(
            stages.iter().any(near),
            "no kill left a run at {wanted:?}: {counts:?}"
        );
    }
    let _ = std::fs::remove_dir_all(&root);
}

/// `peanut convert` of the PEANuT adapter exported in `run` to this workspace's format, into
/// `out`.
fn convert_command(run: &Path, out: &Path) -> Command {
    let mut command = Command::new(PEANUT);
    command
        .arg("convert")
        .arg("--input")
        .arg(run.join("export/peft"));
    command.arg("--output").arg(out);
    command.args(["--to", "peanut"]);
    command
}

/// Kills `command(new_run, out)` at random instants while it replaces `command(old_run, out)`'s
/// output (`what` names it): each kill must leave the old output, the new one or nothing,
/// never a mix, and running it again must give the uninterrupted output.
fn kills_leave_the_old_or_the_new(
    what: &str,
    command: impl Fn(&Path, &Path) -> Command,
    (old_run, new_run): (&Path, &Path),
    root: &Path,
) {
    let kills = env_or("PEANUT_FAULT_KILLS", 50) as usize;
    let seed = env_or("PEANUT_FAULT_SEED", 1);
    let (old_out, new_out) = (
        root.join(format!("old-{what}")),
        root.join(format!("new-{what}")),
    );
    finish(command(old_run, &old_out), &format!("the first {what}"));
    let start = Instant::now();
    finish(command(new_run, &new_out), &format!("the second {what}"));
    let span = start.elapsed();
    let (old, new) = (files(&old_out), files(&new_out));
    assert!(old != new, "the two {what} outputs are alike");

    let mut rng = SplitMix64::new(seed);
    let mut seen = [0usize; 3];
    for trial in 0..kills {
        let out = root.join(format!("{what}-{trial}"));
        let _ = std::fs::remove_dir_all(&out);
        finish(command(old_run, &out), &format!("a {what} to replace"));
        let delay = span.mul_f64(rng.uniform(0.0, 2.0));
        kill_at(command(new_run, &out), &out, Kill::After(delay));
        let left = if out.exists() {
            files(&out)
        } else {
            Vec::new()
        };
        let state = if left.is_empty() {
            0
        } else if left == old {
            1
        } else if left == new {
            2
        } else {
            panic!(
                "{what} {trial} killed after {delay:?} left a mix of two outputs: {:?}",
                left.iter().map(|(p, _)| p).collect::<Vec<_>>()
            )
        };
        seen[state] += 1;
        finish(
            command(new_run, &out),
            &format!("the {what} after the kill"),
        );
        assert_same_files(
            &files(&out),
            &new,
            &format!("{what} {trial} after its kill"),
        );
        let _ = std::fs::remove_dir_all(&out);
    }
    eprintln!(
        "{kills} {what} kills over a {what} of {span:?}: left nothing {}, the old {}, the new {} \
         times",
        seen[0], seen[1], seen[2]
    );
    assert!(
        seen[1] > 0,
        "no kill came before the {what} was done: {seen:?}"
    );
}

#[test]
fn merges_and_conversions_killed_at_random_instants_leave_the_old_or_the_new_output() {
    let root = temp_root("fault-merge");
    let data = root.join("data");
    image_folder(&data);
    // Two exports: the merge (conversion) under test replaces the first's by the second's.
    let (old_run, new_run) = (root.join("old"), root.join("new"));
    finish(train_command(&data, &old_run, false, &[]), "the first run");
    finish(
        seeded_train_command(&data, &new_run, false, &[], 12),
        "the second run",
    );
    let runs = (old_run.as_path(), new_run.as_path());
    kills_leave_the_old_or_the_new("merge", merge_command, runs, &root);
    kills_leave_the_old_or_the_new("convert", convert_command, runs, &root);
    let _ = std::fs::remove_dir_all(&root);
}
