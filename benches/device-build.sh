#!/usr/bin/env bash
# Builds, on a machine with cargo, what benches/device-check.sh runs on a GPU machine that has
# no Rust toolchain and no network:
#
#     bash benches/device-build.sh      # then carry target/device-bin to the GPU machine
#
# Into target/device-bin (BIN_DIR): `speed-cuda` and `peanut-cuda` (examples/speed.rs and the
# CLI, `--features cuda`: burn's CUDA backend with kernel fusion and autotune; CUDA is loaded at
# run time, so no CUDA toolkit is needed here), `speed-wgpu` (`--features wgpu`), all release
# builds, stripped and compressed with xz (`speed-cuda.xz`, …; device-check.sh unpacks them);
# and `vulkan/libvulkan.so.1`, Debian's Vulkan loader (`apt-get download
# libvulkan1`, unpacked with dpkg; NO_VULKAN_LOADER=1 skips it), which a machine with an NVIDIA
# driver but no loader needs for the wgpu rows. Each backend builds in its own target folder
# (target/device-cuda, target/device-wgpu): a cold build takes about 15 minutes per backend on
# 2 cores. Fails when the folder would pass 56 MiB (the device machine takes 64 MiB with the
# working tree). BACKENDS="cuda" builds one backend only.
set -euo pipefail
cd "$(dirname "$0")/.."

dest="${BIN_DIR:-target/device-bin}"
backends="${BACKENDS:-cuda wgpu}"
mkdir -p "$dest"

for backend in $backends; do
    target="target/device-$backend"
    echo "== $backend: examples/speed.rs" >&2
    CARGO_TARGET_DIR="$target" cargo build --release -p peanut-suite --no-default-features \
        --features "$backend" --example speed
    strip -o "$dest/speed-$backend" "$target/release/examples/speed"
    if [ "$backend" = cuda ]; then
        echo "== $backend: the peanut CLI" >&2
        CARGO_TARGET_DIR="$target" cargo build --release -p peanut-train --no-default-features \
            --features "$backend" --bin peanut
        strip -o "$dest/peanut-$backend" "$target/release/peanut"
    fi
done

if [[ " $backends " == *" wgpu "* ]] && [ -z "${NO_VULKAN_LOADER:-}" ]; then
    echo "== Debian's Vulkan loader (libvulkan1)" >&2
    work="$(mktemp -d)"
    (cd "$work" && apt-get download libvulkan1 >&2)
    dpkg -x "$work"/libvulkan1_*.deb "$work/root"
    mkdir -p "$dest/vulkan"
    cp -L "$(find "$work/root" -name 'libvulkan.so.1' | head -n 1)" "$dest/vulkan/libvulkan.so.1"
    rm -rf "$work"
fi

# Stripped, the three binaries are about 140 MiB (cubecl's kernels for every op and element
# type); xz brings them under the limit, and device-check.sh unpacks them there.
for binary in "$dest"/speed-* "$dest"/peanut-*; do
    case "$binary" in *.xz) continue ;; esac
    [ -f "$binary" ] || continue
    echo "== xz $binary" >&2
    xz -T0 -9 -f "$binary"
done

du -ab "$dest" | sort -n >&2
total_mib=$(($(du -sb "$dest" | cut -f1) / 1048576))
echo "$dest: $total_mib MiB" >&2
if [ "$total_mib" -gt 56 ]; then
    echo "device-build.sh: $dest is $total_mib MiB, over the 56 MiB that fit beside the tree" >&2
    exit 1
fi
