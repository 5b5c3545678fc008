//! The one place that picks the backend, by cargo feature: `cuda`, then `wgpu`, then `flex`,
//! then `candle`, then `ndarray` (the default) — the first one enabled wins. Everything else in
//! the workspace is generic over `B: Backend` and takes [`Selected`] / [`TrainBackend`] from here.

#[cfg(not(any(
    feature = "ndarray",
    feature = "wgpu",
    feature = "cuda",
    feature = "flex",
    feature = "candle"
)))]
compile_error!(
    "peanut-train needs a backend feature: `ndarray`, `wgpu`, `cuda`, `flex` or `candle`"
);

/// The inference backend chosen by cargo features.
#[cfg(feature = "cuda")]
pub type Selected = burn::backend::Cuda;
/// The inference backend chosen by cargo features.
#[cfg(all(feature = "wgpu", not(feature = "cuda")))]
pub type Selected = burn::backend::Wgpu;
/// The inference backend chosen by cargo features.
#[cfg(all(feature = "flex", not(any(feature = "cuda", feature = "wgpu"))))]
pub type Selected = burn::backend::Flex;
/// The inference backend chosen by cargo features.
#[cfg(all(
    feature = "candle",
    not(any(feature = "cuda", feature = "wgpu", feature = "flex"))
))]
pub type Selected = burn::backend::Candle;
/// The inference backend chosen by cargo features.
#[cfg(all(
    feature = "ndarray",
    not(any(
        feature = "wgpu",
        feature = "cuda",
        feature = "flex",
        feature = "candle"
    ))
))]
pub type Selected = burn::backend::NdArray<f32>;

/// The training backend: [`Selected`] with automatic differentiation.
pub type TrainBackend = burn::backend::Autodiff<Selected>;

/// A short name of the selected backend, for logs and `peanut info`.
pub const NAME: &str = if cfg!(feature = "cuda") {
    "cuda"
} else if cfg!(feature = "wgpu") {
    "wgpu"
} else if cfg!(feature = "flex") {
    "flex"
} else if cfg!(feature = "candle") {
    "candle"
} else {
    "ndarray"
};

/// The default device of the selected backend (the first GPU, or the CPU).
pub fn device() -> burn::tensor::Device<Selected> {
    Default::default()
}

/// Makes the C allocator keep freed tensor memory for reuse; call it first thing in `main`.
///
/// On the CPU backends every op allocates its output, often megabytes. glibc's malloc serves
/// such blocks with `mmap` and returns them to the kernel on `free`, so the next op of the same
/// size faults fresh zeroed pages in (measured: about a tenth of a ViT training step spent in
/// the kernel). This sets glibc's mmap threshold to its maximum (32 MiB) and stops heap
/// trimming, which made `examples/speed.rs vit-train` about 15 % faster at the same peak memory.
/// Elsewhere (another C library, another OS) it does nothing. `peanut` and the examples call
/// it; library users may too.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // glibc's <malloc.h>.
        const M_TRIM_THRESHOLD: i32 = -1;
        const M_MMAP_THRESHOLD: i32 = -3;
        unsafe extern "C" {
            fn mallopt(param: i32, value: i32) -> i32;
        }
        // SAFETY: `mallopt` only changes allocator tuning parameters; it is safe to call at
        // any time, and a rejected value leaves the setting unchanged.
        unsafe {
            mallopt(M_MMAP_THRESHOLD, 32 << 20);
            mallopt(M_TRIM_THRESHOLD, i32::MAX);
        }
    }
}
