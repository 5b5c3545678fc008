#!/usr/bin/env bash
# Side-by-side speed of peanut and PyTorch + peft on this machine, in one run:
#
#     bash benches/compare-pytorch.sh                    # every workload, flex (the default)
#     bash benches/compare-pytorch.sh --no-default-features --features ndarray  # another backend
#     WORKLOADS="generate" bash benches/compare-pytorch.sh
#
# Each workload runs in its own process on each stack (`examples/speed.rs` and
# `benches/speed_peer.py`: the same random-initialised real-shape models, batches, adapters and
# step counts), alternating stacks, so that peak memory is per workload. Prints a table of
# throughputs, their ratio (peanut / PyTorch, higher is better for peanut), cores busy and peak
# RSS. The Python side lives in a venv (`PEANUT_BENCH_VENV`, default `target/bench-venv`) that
# this script creates with torch, transformers and peft from PyPI on first use. Threads: both
# stacks use every core (PyTorch's default; set OMP_NUM_THREADS / RAYON_NUM_THREADS to change);
# peanut's training workloads run the data-parallel CPU workers `peanut train` runs by default
# (`--devices auto`; PEANUT_SPEED_WORKERS=1 for one training thread).
set -euo pipefail
cd "$(dirname "$0")/.."

venv="${PEANUT_BENCH_VENV:-target/bench-venv}"
workloads="${WORKLOADS:-vit-train lm-train generate generate-batch vit-infer}"
python="${PYTHON:-python3}"

if ! "$venv/bin/python" -c 'import torch, transformers, peft' 2>/dev/null; then
    echo "== creating $venv (torch, transformers, peft from PyPI)" >&2
    "$python" -m venv "$venv"
    "$venv/bin/pip" install -q "torch==2.15.0" "transformers>=5" "peft==0.21.2"
fi

echo "== building examples/speed.rs (release) $*" >&2
cargo build --release --example speed "$@" >&2

results="$(mktemp)"
trap 'rm -f "$results"' EXIT
for workload in $workloads; do
    echo "== $workload: peanut" >&2
    "${CARGO_TARGET_DIR:-target}/release/examples/speed" "$workload" | tail -n 1 | tee -a "$results" >&2
    echo "== $workload: PyTorch + peft" >&2
    "$venv/bin/python" benches/speed_peer.py "$workload" | tail -n 1 | tee -a "$results" >&2
done

"$venv/bin/python" - "$results" <<'EOF'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
by = {}
for row in rows:
    by.setdefault(row["workload"], {})["torch" if row["stack"] == "pytorch+peft" else "ours"] = row
print()
print("| workload | peanut | PyTorch + peft | ratio (peanut / PyTorch) | cores (peanut / PyTorch) | peak RSS MiB (peanut / PyTorch) |")
print("|---|---|---|---|---|---|")
for workload, pair in by.items():
    ours, torch = pair.get("ours"), pair.get("torch")
    if not ours or not torch:
        continue
    unit = ours["unit"]
    cells = [
        workload + f" ({ours['stack']})",
        f"{ours['throughput']:.2f} {unit}",
        f"{torch['throughput']:.2f} {unit}",
        f"**{ours['throughput'] / torch['throughput']:.2f}×**",
        f"{ours['cores']:.2f} / {torch['cores']:.2f}",
        f"{ours['peak_rss_mib']:.0f} / {torch['peak_rss_mib']:.0f}",
    ]
    print("| " + " | ".join(cells) + " |")
    if workload == "generate":
        print(f"| generate: prompt (prefill) | {ours['prefill_tokens_per_s']:.1f} tok/s | "
              f"{torch['prefill_tokens_per_s']:.1f} tok/s | "
              f"**{ours['prefill_tokens_per_s'] / torch['prefill_tokens_per_s']:.2f}×** | | |")
EOF
