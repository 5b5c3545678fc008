//! `benches/device-check.sh` without a GPU: the script's logic against stand-ins. A stub
//! `nvidia-smi` (one GPU, per-process memory samples), stub benchmark binaries and a stub
//! PyTorch peer (fixed throughputs), and stubs of `cargo`, `pip`, `curl` and `wget` that record
//! being called. The end-to-end job runs this crate's real `peanut` binary (on the CPU backend
//! of this build) in place of the CUDA one, on the repository's tiny ViT.
//!
//! Checked: every row is measured and written as JSON with the sampled peak memory; the table
//! gives each of our rows its ratio to PyTorch's row of the same workload and precision; the
//! end-to-end job trains, is killed, resumes and exports; failures and time-outs are rows of
//! their own and make the exit status 1 without stopping the check; a spent time budget skips
//! rows instead of running them; nothing is built or downloaded; binaries carried
//! xz-compressed are unpacked and run.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const PEANUT: &str = env!("CARGO_BIN_EXE_peanut");

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn script(path: &Path, body: &str) {
    std::fs::write(path, format!("#!/usr/bin/env bash\n{body}")).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// The stand-ins, under `root`: `stubs/` (put first on PATH), `bin/` (BIN_DIR), and
/// `calls.log`, where every stub writes its command line.
fn stand_ins(root: &Path) {
    let stubs = root.join("stubs");
    let bin = root.join("bin");
    std::fs::create_dir_all(&stubs).unwrap();
    std::fs::create_dir_all(&bin).unwrap();
    let calls = root.join("calls.log");
    let calls = calls.display();
    script(
        &stubs.join("nvidia-smi"),
        &format!(
            r#"echo "nvidia-smi $*" >>{calls}
case "$*" in
*query-gpu*) echo "Stub GPU 80GB, 81559 MiB, 580.00" ;;
*query-compute-apps*) echo 1200; echo 3400; exec sleep 1000 ;;
esac
"#
        ),
    );
    for tool in ["cargo", "pip", "pip3", "curl", "wget", "apt-get"] {
        script(
            &stubs.join(tool),
            &format!("echo \"FORBIDDEN {tool} $*\" >>{calls}\nexit 99\n"),
        );
    }
    let fixture_vit = repo().join("tests/fixtures/models/vit");
    script(
        &bin.join("speed-cuda"),
        &format!(
            r#"echo "speed-cuda $* precision=$PEANUT_SPEED_PRECISION size=$PEANUT_SPEED_SIZE" >>{calls}
if [ "$1" = save-vit ]; then cp -r {vit} "$2"; exit; fi
[ "${{STUB_FAIL:-}}" = "$1" ] && {{ echo "stub failure" >&2; exit 3; }}
[ "${{STUB_SLOW:-}}" = "$1" ] && sleep 5
checkpointing=false
[ -n "${{PEANUT_SPEED_CHECKPOINTING:-}}" ] && checkpointing=true
echo "{{\"stack\": \"peanut-cuda\", \"workload\": \"$1\", \"throughput\": 150.0, \"unit\": \"img/s\", \
\"checkpointing\": $checkpointing, \
\"precision\": \"$PEANUT_SPEED_PRECISION\"}}"
"#,
            vit = fixture_vit.display()
        ),
    );
    std::os::unix::fs::symlink(PEANUT, bin.join("peanut-cuda")).unwrap();
    // The PyTorch peer: answers the import check, prints its rows, and hands anything else
    // (the table's script) to the real python3.
    script(
        &stubs.join("python-with-torch"),
        &format!(
            r#"case "$1" in
-c) exit 0 ;;
benches/speed_peer.py)
    echo "python $* precision=$PEANUT_SPEED_PRECISION device=$PEANUT_SPEED_DEVICE" >>{calls}
    echo "{{\"stack\": \"pytorch+peft\", \"workload\": \"$2\", \"throughput\": 100.0, \"unit\": \"img/s\", \
\"precision\": \"$PEANUT_SPEED_PRECISION\"}}" ;;
*) exec python3 "$@" ;;
esac
"#
        ),
    );
}

fn check(root: &Path, out: &str, env: &[(&str, &str)]) -> Output {
    let path = format!(
        "{}:{}",
        root.join("stubs").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut command = Command::new("bash");
    command
        .arg(repo().join("benches/device-check.sh"))
        .env("PATH", path)
        .env("BIN_DIR", root.join("bin"))
        .env("OUT", root.join(out))
        .env("PYTHON", root.join("stubs/python-with-torch"))
        .env("E2E_IMAGE_SIZE", "16");
    for (key, value) in env {
        command.env(key, value);
    }
    command.output().unwrap()
}

fn rows(root: &Path, out: &str) -> Vec<serde_json::Value> {
    std::fs::read_to_string(root.join(out).join("device-check.jsonl"))
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{line}: {e}")))
        .collect()
}

fn calls(root: &Path) -> String {
    std::fs::read_to_string(root.join("calls.log")).unwrap_or_default()
}

#[test]
fn device_check_runs_every_row_and_the_end_to_end_job_without_building() {
    let root = std::env::temp_dir().join(format!("peanut-device-check-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    stand_ins(&root);

    // Everything succeeds.
    let output = check(&root, "all", &[]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let log = std::fs::read_to_string(root.join("all/device-check.log")).unwrap_or_default();
    assert!(output.status.success(), "{stderr}\n{log}");
    let all = rows(&root, "all");
    let measured: Vec<_> = all.iter().filter(|r| r["throughput"].is_number()).collect();
    // 4 workloads × f32, bf16 × ours, PyTorch's, and 2 training workloads × 2 precisions with
    // checkpointing.
    assert_eq!(measured.len(), 20, "{all:?}");
    for precision in ["f32", "bf16"] {
        for workload in ["vit-train", "lm-train", "generate", "vit-infer"] {
            for stack in ["peanut-cuda", "pytorch+peft"] {
                assert!(
                    measured.iter().any(|r| r["stack"] == stack
                        && r["workload"] == workload
                        && r["precision"] == precision
                        && r["checkpointing"] != true),
                    "no {stack} {workload} {precision} row: {all:?}"
                );
            }
        }
    }
    let checkpointed = measured
        .iter()
        .filter(|r| r["checkpointing"] == true)
        .count();
    assert_eq!(checkpointed, 4, "{all:?}");
    assert!(
        measured.iter().all(|r| r["peak_gpu_mib"] == 3400),
        "{all:?}"
    );
    let e2e = all
        .iter()
        .find(|r| r["workload"] == "train-image-e2e")
        .unwrap_or_else(|| panic!("no end-to-end row: {all:?}\n{log}"));
    assert_eq!(e2e["exported"], true, "{e2e}");
    let table = std::fs::read_to_string(root.join("all/device-check.md")).unwrap();
    assert!(table.contains("GPU: Stub GPU 80GB"), "{table}");
    assert!(
        table.contains(
            "| vit-train | bf16 | peanut-cuda | false | 150.00 img/s | 3400 | 1.50x, memory 1.00x |"
        ),
        "{table}"
    );
    assert!(table.contains("End to end on CUDA"), "{table}");
    let called = calls(&root);
    assert!(!called.contains("FORBIDDEN"), "{called}");
    assert!(
        called.contains("speed-cuda vit-train 10 precision=bf16 size=large"),
        "{called}"
    );
    assert!(called.contains("device=cuda"), "{called}");
    assert!(log.contains("== end to end: resume"), "{log}");

    // A failing run and one past its limit: rows of their own, the check goes on, exit 1.
    let output = check(
        &root,
        "failing",
        &[
            ("STUB_FAIL", "generate"),
            ("STUB_SLOW", "lm-train"),
            ("PER_RUN_SECONDS", "2"),
            ("E2E", "0"),
        ],
    );
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let failing = rows(&root, "failing");
    let failed = |workload: &str| {
        failing
            .iter()
            .filter(|r| r["workload"] == workload && r["stack"] == "peanut-cuda")
            .map(|r| r["failed"].as_str().unwrap_or("").to_string())
            .collect::<Vec<_>>()
    };
    assert!(
        failed("generate").iter().all(|f| f.starts_with("exit 3")),
        "{failing:?}"
    );
    assert!(
        failed("lm-train")
            .iter()
            .all(|f| f.contains("over the 2 s limit")),
        "{failing:?}"
    );
    assert!(
        failing
            .iter()
            .any(|r| r["workload"] == "vit-infer" && r["throughput"].is_number()),
        "the check stopped at a failure: {failing:?}"
    );
    let table = std::fs::read_to_string(root.join("failing/device-check.md")).unwrap();
    assert!(table.contains("failed: exit 3"), "{table}");

    // No time left: nothing runs, every row says it was skipped.
    std::fs::remove_file(root.join("calls.log")).unwrap();
    let output = check(&root, "spent", &[("BUDGET_SECONDS", "0"), ("E2E", "0")]);
    assert!(output.status.success(), "{output:?}");
    let spent = rows(&root, "spent");
    assert_eq!(spent.len(), 20, "{spent:?}");
    assert!(spent.iter().all(|r| r["skipped"].is_string()), "{spent:?}");
    assert!(!calls(&root).contains("speed-cuda vit"), "{}", calls(&root));

    // Binaries carried xz-compressed (as device-build.sh leaves them) are unpacked and run.
    let packed = root.join("packed");
    std::fs::create_dir_all(&packed).unwrap();
    let status = Command::new("python3")
        .args([
            "-c",
            "import lzma, sys; open(sys.argv[2], 'wb').write(lzma.compress(open(sys.argv[1], 'rb').read()))",
        ])
        .arg(root.join("bin/speed-cuda"))
        .arg(packed.join("speed-cuda.xz"))
        .status()
        .unwrap();
    assert!(status.success());
    let packed_bin = packed.display().to_string();
    let output = check(
        &root,
        "packed-run",
        &[
            ("BIN_DIR", packed_bin.as_str()),
            ("WORKLOADS", "vit-train"),
            ("E2E", "0"),
        ],
    );
    assert!(output.status.success(), "{output:?}");
    let unpacked = rows(&root, "packed-run");
    assert!(
        unpacked.iter().any(|r| r["stack"] == "peanut-cuda"
            && r["workload"] == "vit-train"
            && r["throughput"].is_number()),
        "{unpacked:?}"
    );
    assert!(root.join("packed-run/bin/speed-cuda").is_file());

    std::fs::remove_dir_all(&root).unwrap();
}
