#!/usr/bin/env bash
# The ndarray backend in CI. The default build trains on flex, so `cargo test --workspace`
# exercises ndarray only as the reference inside the backend tests. This runs again, with
# ndarray as the selected backend, every test whose backend the features select: the root
# package's targets (tests/train: image and LM training, data-parallel CPU workers, checkpoints
# and resume, bad inputs, interop with the committed peft/transformers fixtures, the trajectory
# against PyTorch's AdamW; the model, peft-parity and float64 trajectory targets; the examples
# build) and peanut-train's own unit tests. `peanut` and `peanut-models` do not depend on the
# selection and are not run twice. Called by `.ci/run`; runs on its own too.
#
# Built without flex: the burn crates below the facade are the default build's, so mostly
# burn's facade and the workspace crates are rebuilt.
set -euo pipefail
cd "$(dirname "$0")/.."

log="$(mktemp)"
trap 'rm -f "$log"' EXIT

echo "== the tests again with ndarray as the selected backend"
cargo test -p peanut-suite -p peanut-train --no-default-features \
    --features peanut-suite/ndarray,peanut-suite/hub -- --nocapture 2>&1 | tee "$log"
# `the_selected_backend_is_the_one_the_features_name` prints the backend: make sure it ran, on
# ndarray.
grep -q '^selected backend: ndarray$' "$log" ||
    { echo "ndarray.sh: the tests did not run on ndarray (see above)." >&2; exit 1; }
