#!/usr/bin/env bash
# `peanut train image` on one training thread (`--devices 1`) and on the default CPU workers
# (`--devices auto`), the same run otherwise, one after the other:
#
#     bash benches/cli-workers.sh
#
# The model is a random-initialised ViT-S/14 (DINOv2-S's shape in transformers' ViT layout,
# written by `examples/speed.rs save-vit`); the data 320 training and 64 test images of 128 px in
# 10 classes, generated with Pillow into an ImageFolder; 112 px, batch 32, 2 epochs, evaluation
# on the test images. Prints each run's wall time, its last training throughput (images/s, as
# the progress lines show it) and its validation line, which should be the same for both.
# Pillow comes from the benchmark venv (`PEANUT_BENCH_VENV`, default `target/bench-venv`), which
# this script creates or completes from PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."

venv="${PEANUT_BENCH_VENV:-target/bench-venv}"
work="${PEANUT_BENCH_DIR:-target/cli-workers}"
target="${CARGO_TARGET_DIR:-target}/release"

if ! "$venv/bin/python" -c 'import PIL' 2>/dev/null; then
    echo "== installing Pillow into $venv" >&2
    [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
    "$venv/bin/pip" install -q pillow
fi
echo "== building peanut and examples/speed.rs (release) $*" >&2
cargo build --release --bin peanut --example speed "$@" >&2

mkdir -p "$work"
"$target/examples/speed" save-vit "$work/vit"
"$venv/bin/python" - "$work/images" <<'PY'
import os, random, sys
from PIL import Image
root, rng = sys.argv[1], random.Random(0)
for split, count in (("train", 320), ("test", 64)):
    for i in range(count):
        label = i % 10
        folder = os.path.join(root, split, f"class{label}")
        os.makedirs(folder, exist_ok=True)
        image = Image.new("RGB", (128, 128), (25 * label, rng.randint(0, 255), 128))
        pixels = image.load()
        for _ in range(500):
            pixels[rng.randint(0, 127), rng.randint(0, 127)] = (rng.randint(0, 255),) * 3
        image.save(os.path.join(folder, f"{i}.png"))
PY

for devices in 1 auto; do
    log="$work/run-$devices.log"
    start=$(date +%s.%N)
    PEANUT_PLAIN=1 "$target/peanut" train image --data-dir "$work/images" --model "$work/vit" \
        --output-dir "$work/run-$devices" --overwrite --epochs 2 --batch-size 32 \
        --image-size 112 --devices "$devices" >"$log" 2>&1
    end=$(date +%s.%N)
    echo "--devices $devices: $(grep -m1 '^training on' "$log")"
    echo "  wall $(echo "$end - $start" | bc) s; last train $(grep ' train ' "$log" | tail -n 1 | grep -o 'Throughput [0-9.]*')"
    echo "  $(grep ' valid ' "$log" | tail -n 1)"
done
