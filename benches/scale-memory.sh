#!/usr/bin/env bash
# Peak memory of one ViT-B/16 training step (224 px, PEANuT r = 7 on query and value, AdamW)
# with and without gradient checkpointing, with the frozen weights in f32 and in bf16, and with
# the frozen linear weights quantized as `--quantize int8` / `nf4` does ("nf4 bf16": the other
# frozen matrices, such as a LLaMA's embedding, in bf16) (and, with LM=1, of a LLaMA step at
# Llama-3.2-1B's shape, PEANuT r = 8 on q, k, v, up, down):
#
#     bash benches/scale-memory.sh                          # batch 8 on the default backend
#     PEANUT_SPEED_BATCH=32 bash benches/scale-memory.sh    # another batch
#     bash benches/scale-memory.sh --features cuda          # cargo flags pass through
#     LM=1 bash benches/scale-memory.sh                     # also a Llama-3.2-1B-shaped LM step
#
# "f32 composed": attention, norms, SwiGLU and the loss composed from burn operations, as before
# `peanut_models::ops` (PEANUT_SPEED_COMPOSED=1), to show what those save.
#
# Each setting runs `examples/speed.rs vit-train` in its own process (one warm-up step and one
# timed step, the same seeded random images) and reports the process's peak resident memory
# (on a GPU backend this is host memory; `benches/device-check.sh` reads the GPU's) and the
# loss of its last step, which must agree across settings.
set -euo pipefail
cd "$(dirname "$0")/.."

export PEANUT_SPEED_SIZE=large
export PEANUT_SPEED_BATCH="${PEANUT_SPEED_BATCH:-8}"

echo "== building examples/speed.rs (release) $*" >&2
cargo build --release --example speed "$@" >&2
bin="${CARGO_TARGET_DIR:-target}/release/examples/speed"

workloads="vit-train"
[ -n "${LM:-}" ] && workloads="vit-train lm-train"

printf '| step | setting | throughput | peak RSS MiB | last loss |\n|---|---|---|---|---|\n'
for workload in $workloads; do
    for setting in "f32 composed" "f32" "f32 checkpointing" "bf16" "bf16 checkpointing" "int8" "nf4" \
        "nf4 bf16"; do
        precision=f32
        quantize=""
        case "$setting" in
            int8*) quantize=int8 ;;
            nf4*) quantize=nf4 ;;
        esac
        [[ "$setting" == bf16* || "$setting" == *" bf16" ]] && precision=bf16
        checkpointing=0
        [[ "$setting" == *checkpointing ]] && checkpointing=1
        composed=0
        [[ "$setting" == *composed ]] && composed=1
        line="$(PEANUT_SPEED_PRECISION="$precision" PEANUT_SPEED_CHECKPOINTING="$checkpointing" \
            PEANUT_SPEED_COMPOSED="$composed" \
            PEANUT_SPEED_QUANTIZE="$quantize" "$bin" "$workload" 1 | tail -n 1)"
        echo "$line" >&2
        python3 - "$setting" "$line" <<'PY'
import json, sys
row = json.loads(sys.argv[2])
step = "ViT-B/16, batch %d" % row["batch"] if row["workload"] == "vit-train" else "LLaMA 1B, 4 × 512"
loss = f"{row['last_loss']:.6f}" if "last_loss" in row else ""
print(f"| {step} | {sys.argv[1]} | {row['throughput']:.3f} {row['unit']} | {row['peak_rss_mib']:.0f} | {loss} |")
PY
    done
done
