#!/usr/bin/env bash
# "How do we compare on this GPU?" in one run, on a machine with an NVIDIA GPU (no downloads):
#
#     bash benches/device-check.sh            # builds first (release, cuda then wgpu)
#
# Random-initialised real shapes (`PEANUT_SPEED_SIZE=large`): ViT-B/16 at 224 px, batch 32,
# PEANuT r = 7 on q, v (training and merged inference), and a LLaMA with Llama-3.2-1B's shape,
# PEANuT r = 8 on q, k, v, up, down (training on 4 × 128 tokens, greedy generation). Each
# workload runs on burn's CUDA backend, on its wgpu backend (Vulkan), and on PyTorch + peft
# (`PEANUT_SPEED_DEVICE=cuda`, venv as in benches/compare-pytorch.sh), each in its own
# process, with a time limit per run so the whole check stays within about 10 minutes once
# built. Peak GPU memory is sampled from nvidia-smi for every stack alike (the device's used
# memory, so run it on an otherwise idle GPU). Then the scale paths: ViT and LM training with
# bf16 frozen weights and with gradient checkpointing on CUDA, and, with two or more GPUs, the
# data-parallel test of tests/train/scale.rs on cuda:0,1. Prints one JSON line per run, then a
# table.
set -uo pipefail
cd "$(dirname "$0")/.."

venv="${PEANUT_BENCH_VENV:-target/bench-venv}"
workloads="${WORKLOADS:-vit-train vit-infer lm-train generate}"
limit="${PER_RUN_SECONDS:-40}"
export PEANUT_SPEED_SIZE=large

command -v nvidia-smi >/dev/null || { echo "device-check.sh: no nvidia-smi: not a GPU machine" >&2; exit 1; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader

if ! "$venv/bin/python" -c 'import torch, transformers, peft' 2>/dev/null; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q "torch==2.15.0" "transformers>=5" "peft==0.21.2"
fi

stacks=()
for backend in cuda wgpu; do
    if [ -z "${SKIP_BUILD:-}" ]; then
        echo "== building examples/speed.rs with --features $backend" >&2
        CARGO_TARGET_DIR="target/device-$backend" cargo build --release --example speed \
            --no-default-features --features "$backend" >&2 || { echo "build for $backend failed" >&2; continue; }
    fi
    [ -x "target/device-$backend/release/examples/speed" ] && stacks+=("$backend")
done

results="$(mktemp)"
# Runs "$@" with a time limit while sampling the GPU's used memory; appends its JSON line
# with "peak_gpu_used_mib" added.
measure() {
    local samples
    samples="$(mktemp)"
    nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 100 >"$samples" &
    local sampler=$!
    local line
    line="$(timeout "$limit" "$@" 2>/dev/null | tail -n 1)"
    kill "$sampler" 2>/dev/null
    wait "$sampler" 2>/dev/null
    local peak
    peak="$(sort -n "$samples" | tail -n 1)"
    rm -f "$samples"
    if [ -n "$line" ]; then
        echo "${line%\}}, \"peak_gpu_used_mib\": ${peak:-0}}" | tee -a "$results"
    else
        echo "{\"failed\": \"$*\"}" >&2
    fi
}

for workload in $workloads; do
    for backend in "${stacks[@]}"; do
        measure "target/device-$backend/release/examples/speed" "$workload"
    done
    PEANUT_SPEED_DEVICE=cuda measure "$venv/bin/python" benches/speed_peer.py "$workload"
done

# The scale paths on CUDA: bf16 frozen weights, and gradient checkpointing (rows marked in the
# table by their "precision" and "checkpointing" fields).
if [[ " ${stacks[*]} " == *" cuda "* ]]; then
    for workload in vit-train lm-train; do
        PEANUT_SPEED_PRECISION=bf16 measure "target/device-cuda/release/examples/speed" "$workload"
        PEANUT_SPEED_CHECKPOINTING=1 measure "target/device-cuda/release/examples/speed" "$workload"
    done
fi

# Data parallel on two GPUs: the CPU test that two devices train what one does, on cuda:0,1.
gpus="$(nvidia-smi --query-gpu=index --format=csv,noheader | wc -l)"
if [ "$gpus" -ge 2 ] && [ -z "${SKIP_MULTI_GPU:-}" ]; then
    echo "== two GPUs: tests/train/scale.rs on cuda:0,1" >&2
    PEANUT_TEST_DEVICES=cuda:0,1 CARGO_TARGET_DIR=target/device-cuda timeout 600 \
        cargo test --release --no-default-features --features cuda --test train \
        scale::two_devices_of_the_selected_backend >&2 \
        && echo "two-GPU data parallel: matches one GPU" \
        || echo "two-GPU data parallel: FAILED (see above)"
else
    echo "one GPU: the two-GPU data-parallel check is skipped"
fi

"$venv/bin/python" - "$results" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
print("\n| workload | stack | throughput | peak GPU MiB |")
print("|---|---|---|---|")
for r in rows:
    extra = []
    if r.get("precision", "f32") != "f32":
        extra.append(r["precision"])
    if r.get("checkpointing"):
        extra.append("checkpointing")
    label = r["workload"] + (f" ({', '.join(extra)})" if extra else "")
    print(f"| {label} | {r['stack']} | {r['throughput']:.2f} {r['unit']} | {r['peak_gpu_used_mib']} |")
PY
rm -f "$results"
