#!/usr/bin/env bash
# The ndarray backend in CI. The default build trains on flex, so the workspace test command
# exercises ndarray only as the reference inside the backend tests. This runs the training
# pipeline tests (tests/train: image and LM training, data-parallel CPU workers, checkpoints and
# resume, bad inputs, interop with the committed peft/transformers fixtures, the trajectory
# against PyTorch's AdamW) with ndarray as the selected backend. Called by `.ci/run`; runs on its
# own too. Not yet part of `.ci/run`: on ndarray the AdamW trajectory test
# (`trajectory::adamw_steps_follow_pytorch_and_peft`) drifts from PyTorch's float64 run by 3.1e-6
# after the second update and 1.1e-5 after the third (flex stays within its 1e-6 bound); that
# growth is open (issue 17), and every other training test passes on ndarray.
#
# One test target of the root package, built without flex: the burn crates below the facade are
# the default build's, so only burn's facade and the workspace crates are rebuilt.
set -euo pipefail
cd "$(dirname "$0")/.."

log="$(mktemp)"
trap 'rm -f "$log"' EXIT

echo "== ndarray backend tests (tests/train)"
cargo test -p peanut-suite --no-default-features --features ndarray,hub --test train \
    -- --nocapture 2>&1 | tee "$log"
# `the_selected_backend_is_the_one_the_features_name` prints the backend: make sure it ran, on
# ndarray.
grep -q '^selected backend: ndarray$' "$log" ||
    { echo "ndarray.sh: the tests did not run on ndarray (see above)." >&2; exit 1; }
