#!/usr/bin/env bash
# "How do we compare on this GPU?" in one call, on a machine with an NVIDIA GPU that has no
# network and no Rust toolchain. Two steps:
#
#     bash benches/device-build.sh     # here, on a machine with cargo: release binaries for
#                                      # CUDA and wgpu, stripped, into target/device-bin
#     bash benches/device-check.sh     # there, in the repository root, with target/device-bin
#
# It builds nothing and downloads nothing. The PyTorch + peft rows use `$PYTHON` (default:
# `python3`) when it imports torch, transformers and peft; without them only our rows run.
#
# Workloads at GPU shapes, random weights (`PEANUT_SPEED_SIZE=large`, examples/speed.rs and
# benches/speed_peer.py): ViT-B/16 at 224 px, batch 32, PEANuT r = 7 on q, v with the head
# trained, AdamW (`vit-train`) and merged inference (`vit-infer`); a LLaMA with Llama-3.2-1B's
# shape, PEANuT r = 8 on q, k, v, up, down, trained on 4 × 512 tokens (`lm-train`) and greedy
# decoding (`generate`). Each in f32 and bf16 (PyTorch: bf16 weights under torch.autocast),
# ours also with gradient checkpointing for the training rows; the wgpu build in f32 when a
# Vulkan driver is found (a loader carried in target/device-bin/vulkan is used). Then
# `peanut train image` end to end on CUDA: a generated Stanford-Cars-layout folder (Kaggle class
# folders), killed after its first epoch checkpoint, `--resume`d to its export, evaluated.
#
# Every run has a time limit (PER_RUN_SECONDS, default 60), no measured run starts once it
# could end past BUDGET_SECONDS (default 380) less 90 s kept for the end-to-end job, and that
# job's steps have limits of their own (60 + 90 + 45 s), so the check ends within 8 minutes;
# rows left out are listed as skipped. The two-GPU data-parallel test (tests/train/scale.rs)
# needs cargo and is not part of it. Peak GPU memory is the running process's own (nvidia-smi's per-process
# used memory, sampled every 100 ms), for every stack alike.
#
# Writes under OUT (default target/device-check): device-check.jsonl (one JSON line per row:
# ours, PyTorch's, failed or skipped), device-check.md (the table, with the ratio of each of our
# rows to PyTorch + peft's row of the same workload and precision) and device-check.log (the
# runs' stderr). Exit status 0 when every run that started succeeded, 1 otherwise.
#
# Knobs: BIN_DIR, OUT, PYTHON, WORKLOADS (default "vit-train lm-train generate vit-infer"),
# PER_RUN_SECONDS, BUDGET_SECONDS, E2E=0 (skip the end-to-end job), E2E_IMAGE_SIZE (112).
set -uo pipefail
cd "$(dirname "$0")/.."

bin="${BIN_DIR:-target/device-bin}"
out="${OUT:-target/device-check}"
python="${PYTHON:-python3}"
workloads="${WORKLOADS:-vit-train lm-train generate vit-infer}"
limit="${PER_RUN_SECONDS:-60}"
budget="${BUDGET_SECONDS:-380}"
# Seconds of the budget kept for the end-to-end job.
reserve=90
[ "${E2E:-1}" = 0 ] && reserve=0
export PEANUT_SPEED_SIZE=large PEANUT_SPEED_DEVICE=cuda PYTHONUNBUFFERED=1

mkdir -p "$out"
rows="$out/device-check.jsonl"
log="$out/device-check.log"
: >"$rows"
: >"$log"
failures=0

say() { echo "device-check: $*" | tee -a "$log" >&2; }

command -v nvidia-smi >/dev/null || { say "no nvidia-smi: not an NVIDIA GPU machine"; exit 1; }
gpu="$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | head -n 1)"
say "GPU: $gpu"
# device-build.sh carries the binaries xz-compressed (they would not fit the 64 MiB otherwise):
# unpack them once, with xz or else the python3 standard library.
if compgen -G "$bin/*.xz" >/dev/null; then
    unpacked="$out/bin"
    mkdir -p "$unpacked"
    for packed in "$bin"/*.xz; do
        name="$(basename "$packed" .xz)"
        if [ ! -x "$unpacked/$name" ] || [ "$packed" -nt "$unpacked/$name" ]; then
            if command -v xz >/dev/null; then
                xz -dc "$packed" >"$unpacked/$name.part"
            else
                "$python" -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), sys.stdout.buffer)' \
                    "$packed" >"$unpacked/$name.part"
            fi && chmod +x "$unpacked/$name.part" && mv "$unpacked/$name.part" "$unpacked/$name" \
                || say "could not unpack $packed"
        fi
    done
    [ -d "$bin/vulkan" ] && cp -r "$bin/vulkan" "$unpacked/"
    bin="$unpacked"
fi
[ -x "$bin/speed-cuda" ] || say "no $bin/speed-cuda: run benches/device-build.sh first (CUDA rows left out)"

torch=0
if "$python" -c 'import torch, transformers, peft' 2>>"$log"; then
    torch=1
else
    say "$python does not import torch, transformers and peft: PyTorch rows left out"
fi

# wgpu on the NVIDIA Vulkan driver: a loader carried beside the binaries, and the driver's ICD.
wgpu=0
if [ -x "$bin/speed-wgpu" ]; then
    [ -d "$bin/vulkan" ] && export LD_LIBRARY_PATH="$(cd "$bin/vulkan" && pwd)${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    for icd in /usr/share/vulkan/icd.d/nvidia_icd.json /etc/vulkan/icd.d/nvidia_icd.json \
        /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json; do
        if [ -f "$icd" ]; then
            export VK_DRIVER_FILES="${VK_DRIVER_FILES:-$icd}"
            break
        fi
    done
    if [ -n "${VK_DRIVER_FILES:-}" ] || ldconfig -p 2>/dev/null | grep 'libvulkan\.so\.1' >/dev/null \
        || [ -d "$bin/vulkan" ]; then
        wgpu=1
    else
        say "no Vulkan loader or NVIDIA ICD found: wgpu rows left out"
    fi
fi

# The most any process used on the GPU in a sample file of nvidia-smi's per-process memory.
peak_of() { sort -n "$1" 2>/dev/null | tail -n 1; }

# row LABEL JSON: appends a JSON line of its own (failed, skipped) for LABEL ("stack workload
# precision checkpointing").
row() {
    local stack workload precision checkpointing
    read -r stack workload precision checkpointing <<<"$1"
    echo "{\"stack\": \"$stack\", \"workload\": \"$workload\", \"precision\": \"$precision\", \
\"checkpointing\": $checkpointing, $2}" >>"$rows"
}

# measure LABEL STEPS ENV... -- COMMAND...: runs COMMAND with ENV under the time limit while
# sampling the GPU, and appends its last output line (a JSON object) with the peak added.
measure() {
    local label="$1"
    shift
    local envs=()
    while [ "$1" != "--" ]; do
        envs+=("$1")
        shift
    done
    shift
    if ((SECONDS + limit > budget - reserve)); then
        row "$label" "\"skipped\": \"the check's time budget ($budget s) is spent\""
        return
    fi
    local samples line started=$SECONDS
    samples="$(mktemp)"
    nvidia-smi --query-compute-apps=used_memory --format=csv,noheader,nounits -lms 100 \
        >"$samples" 2>/dev/null &
    local sampler=$!
    echo "== $label: $*" >>"$log"
    line="$(env "${envs[@]}" timeout "$limit" "$@" 2>>"$log" | tail -n 1)"
    local status=$?
    kill "$sampler" 2>/dev/null
    wait "$sampler" 2>/dev/null
    local peak
    peak="$(peak_of "$samples")"
    rm -f "$samples"
    case "$line" in
    \{*\})
        echo "${line%\}}, \"peak_gpu_mib\": ${peak:-0}, \"seconds\": $((SECONDS - started))}" \
            | tee -a "$rows"
        ;;
    *)
        failures=$((failures + 1))
        local why="exit $status"
        [ "$status" -eq 124 ] && why="over the ${limit} s limit"
        row "$label" "\"failed\": \"$why (see device-check.log)\""
        say "$label failed: $why"
        ;;
    esac
}

steps_of() {
    case "$1" in
    vit-train | vit-infer) echo 10 ;;
    lm-train) echo 5 ;;
    generate) echo 2 ;;
    esac
}

# Most wanted first: every workload in f32 on both stacks, then bf16, then checkpointing, then
# wgpu; the budget cuts from the end.
for precision in f32 bf16; do
    for workload in $workloads; do
        steps="$(steps_of "$workload")"
        [ -x "$bin/speed-cuda" ] && measure "peanut-cuda $workload $precision false" \
            PEANUT_SPEED_PRECISION="$precision" -- "$bin/speed-cuda" "$workload" "$steps"
        [ "$torch" = 1 ] && measure "pytorch+peft $workload $precision false" \
            PEANUT_SPEED_PRECISION="$precision" -- "$python" benches/speed_peer.py "$workload" "$steps"
    done
done
if [ -x "$bin/speed-cuda" ]; then
    for precision in f32 bf16; do
        for workload in $workloads; do
            case "$workload" in *-train) ;; *) continue ;; esac
            measure "peanut-cuda $workload $precision true" PEANUT_SPEED_PRECISION="$precision" \
                PEANUT_SPEED_CHECKPOINTING=1 -- "$bin/speed-cuda" "$workload" "$(steps_of "$workload")"
        done
    done
fi
if [ "$wgpu" = 1 ]; then
    for workload in $workloads; do
        measure "peanut-wgpu $workload f32 false" PEANUT_SPEED_PRECISION=f32 -- \
            "$bin/speed-wgpu" "$workload" "$(steps_of "$workload")"
    done
fi

# The card's job on CUDA, end to end: train, kill -9 after the first epoch's checkpoint,
# --resume to the export, evaluate the export.
e2e() {
    local peanut="$bin/peanut-cuda" work
    work="$(mktemp -d)"
    local size="${E2E_IMAGE_SIZE:-112}"
    say "end to end: peanut train image on CUDA in $work"
    PEANUT_SPEED_SIZE=small "$bin/speed-cuda" save-vit "$work/vit" >>"$log" 2>&1 \
        || { say "end to end: cannot write the ViT"; return 1; }
    # Stanford Cars in the Kaggle layout: car_data/car_data/{train,test}/<class>/*.png, here
    # 4 classes of flat colours with noise (Python's standard library writes the PNGs).
    python3 - "$work/cars/car_data/car_data" <<'PY' >>"$log" 2>&1 || { say "end to end: cannot write the images"; return 1; }
import os, random, struct, sys, zlib
root = sys.argv[1]
classes = ["AM General Hummer SUV 2000", "Acura RL Sedan 2012", "Audi R8 Coupe 2012", "BMW M3 Coupe 2012"]
colours = [(200, 40, 40), (40, 200, 40), (40, 40, 200), (200, 200, 40)]
rng = random.Random(0)
def png(path, rgb, side=48):
    rows = b"".join(
        b"\x00" + bytes(max(0, min(255, c + rng.randint(-30, 30))) for _ in range(side) for c in rgb)
        for _ in range(side)
    )
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))
for split, count in (("train", 12), ("test", 4)):
    for name, rgb in zip(classes, colours):
        folder = os.path.join(root, split, name)
        os.makedirs(folder, exist_ok=True)
        for i in range(count):
            png(os.path.join(folder, f"{i:05d}.png"), rgb)
PY
    local train=("$peanut" train image --model "$work/vit" --data-dir "$work/cars" \
        --output-dir "$work/run" --epochs 3 --batch-size 8 --grad-accumulation 1 --image-size "$size")
    echo "== end to end: ${train[*]}" >>"$log"
    "${train[@]}" >>"$log" 2>&1 &
    local job=$! waited=0
    until [ -d "$work/run/checkpoint/epoch-1" ] || ! kill -0 "$job" 2>/dev/null || ((waited > 1200)); do
        sleep 0.05
        waited=$((waited + 1))
    done
    local killed=false
    if kill -9 "$job" 2>/dev/null; then killed=true; fi
    wait "$job" 2>/dev/null
    echo "== end to end: resume (killed: $killed)" >>"$log"
    timeout 90 "${train[@]}" --resume >>"$log" 2>&1 || { say "end to end: --resume failed"; return 1; }
    [ -f "$work/run/export/peft/adapter_config.json" ] && [ -f "$work/run/export/head.safetensors" ] \
        || { say "end to end: no export"; return 1; }
    local eval_line
    eval_line="$(timeout 45 "$peanut" eval image --model "$work/vit" --adapter "$work/run/export" \
        --data-dir "$work/cars" 2>>"$log" | tail -n 1)" \
        || { say "end to end: eval image failed"; return 1; }
    # A run that finished before its first checkpoint was seen was not killed; the row says so.
    say "end to end: trained, killed after epoch 1: $killed, resumed, exported; eval: $eval_line"
    echo "{\"stack\": \"peanut-cuda\", \"workload\": \"train-image-e2e\", \"killed_after_epoch_1\": $killed, \
\"resumed\": true, \"exported\": true}" >>"$rows"
    rm -rf "$work"
}
if [ "${E2E:-1}" != 0 ] && [ -x "$bin/peanut-cuda" ] && [ -x "$bin/speed-cuda" ]; then
    if ! e2e; then
        failures=$((failures + 1))
        row "peanut-cuda train-image-e2e f32 false" "\"failed\": \"see device-check.log\""
    fi
fi

python3 - "$rows" "$gpu" >"$out/device-check.md" <<'PY'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
key = lambda r: (r.get("workload"), r.get("precision", "f32"))
theirs = {key(r): r for r in rows if r.get("stack") == "pytorch+peft" and "throughput" in r}
print(f"GPU: {sys.argv[2]}\n")
print("| workload | precision | stack | checkpointing | throughput | peak GPU MiB | vs PyTorch + peft |")
print("|---|---|---|---|---|---|---|")
for r in rows:
    if r.get("workload") == "train-image-e2e" and "failed" not in r and "skipped" not in r:
        continue
    if "throughput" not in r:
        what = r.get("failed") and f"failed: {r['failed']}" or f"skipped: {r.get('skipped')}"
        print(f"| {r['workload']} | {r.get('precision', '')} | {r['stack']} | {str(r.get('checkpointing', '')).lower()} | {what} | | |")
        continue
    ratio = ""
    peer = theirs.get(key(r))
    if r["stack"] != "pytorch+peft" and peer:
        ratio = f"{r['throughput'] / peer['throughput']:.2f}x"
        if peer.get("peak_gpu_mib"):
            ratio += f", memory {r['peak_gpu_mib'] / peer['peak_gpu_mib']:.2f}x"
    print(f"| {r['workload']} | {r.get('precision', 'f32')} | {r['stack']} | "
          f"{str(r.get('checkpointing', False)).lower()} | {r['throughput']:.2f} {r['unit']} | "
          f"{r['peak_gpu_mib']} | {ratio} |")
e2e = [r for r in rows if r.get("workload") == "train-image-e2e" and "failed" not in r and "skipped" not in r]
if e2e:
    killed = "killed after epoch 1" if e2e[0].get("killed_after_epoch_1") else "finished before a kill"
    print(f"\nEnd to end on CUDA: `peanut train image`, {killed}, resumed, exported, evaluated.")
PY
cat "$out/device-check.md"
[ "$failures" -eq 0 ]
