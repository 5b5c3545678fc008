#!/usr/bin/env bash
# The wgpu code path on a GPU-less CI machine: Mesa's software Vulkan driver (lavapipe) runs
# burn-wgpu on the CPU. Installs it when no Vulkan driver is present, then runs the backend
# tests (tests/train/backend.rs: a PEANuT layer's forward and gradients, two training steps of a
# tiny ViT, each against ndarray) with `--features wgpu`. Called by `.ci/run`; runs on its own
# too. Fails, saying why, when it cannot get a Vulkan driver.
set -euo pipefail
cd "$(dirname "$0")/.."

fail() {
    echo "wgpu.sh: $*" >&2
    exit 1
}

have_vulkan() {
    # Not `grep -q`: it would close the pipe early, and `pipefail` would report ldconfig's SIGPIPE.
    ldconfig -p 2>/dev/null | grep 'libvulkan\.so\.1' >/dev/null || return 1
    local dir
    for dir in /usr/share/vulkan/icd.d /etc/vulkan/icd.d /usr/local/share/vulkan/icd.d; do
        compgen -G "$dir/*.json" >/dev/null && return 0
    done
    return 1
}

if ! have_vulkan; then
    echo "== installing Mesa's software Vulkan driver (lavapipe)"
    if [ "$(id -u)" -eq 0 ]; then
        as_root=()
    elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
        as_root=(sudo -n)
    else
        fail "no Vulkan driver, and cannot install one: not root and no password-less sudo." \
            "Install mesa-vulkan-drivers and libvulkan1 (Debian/Ubuntu), then rerun."
    fi
    command -v apt-get >/dev/null ||
        fail "no Vulkan driver, and no apt-get to install mesa-vulkan-drivers with."
    apt=("${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -q -y)
    "${apt[@]}" update || echo "wgpu.sh: apt-get update failed; trying the cached lists" >&2
    "${apt[@]}" install --no-install-recommends mesa-vulkan-drivers libvulkan1 ||
        fail "apt-get install mesa-vulkan-drivers libvulkan1 failed (see above)."
    have_vulkan ||
        fail "mesa-vulkan-drivers is installed but no Vulkan ICD (icd.d/*.json) or libvulkan.so.1 was found."
fi

# Without it, the Vulkan loader and Mesa warn on every start.
XDG_RUNTIME_DIR="$(mktemp -d)"
export XDG_RUNTIME_DIR
trap 'rm -rf "$XDG_RUNTIME_DIR"' EXIT

echo "== wgpu backend tests (lavapipe unless a GPU driver is installed)"
log="$XDG_RUNTIME_DIR/test.log"
# One test target of the root package only: the workspace's other crates and test binaries are
# not rebuilt for wgpu.
# The `backend` module, and the scale tests of device and precision refusals (the two-device
# comparison needs two GPUs; lavapipe is one device).
cargo test -p peanut-suite --features wgpu --test train -- --nocapture backend:: \
    scale::a_backend_without scale::device_specs 2>&1 | tee "$log"
# The filters select by name: make sure the tests ran, and on wgpu.
grep -q '^wgpu vs ndarray' "$log" || fail "the wgpu backend tests did not run (see above)."
