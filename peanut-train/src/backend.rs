//! The one place that picks the backend, by cargo feature: `cuda`, then `wgpu`, then `flex`,
//! then `candle`, then `ndarray` (the default) — the first one enabled wins. Everything else in
//! the workspace is generic over `B: Backend` and takes [`Selected`] / [`TrainBackend`] from here.
//!
//! The GPU features come in two builds: `cuda` / `wgpu` (the default) turn on burn's kernel
//! fusion and autotune, `cuda-unfused` / `wgpu-unfused` autotune only. `cuda` and `wgpu` imply
//! their `-unfused` feature, so the checks below test `cuda-unfused` / `wgpu-unfused`, which both
//! builds of a GPU backend have; burn's `Cuda` / `Wgpu` types are the fused backends when its
//! `fusion` feature is on. [`FUSED`] says which build this is.

#[cfg(not(any(
    feature = "ndarray",
    feature = "wgpu-unfused",
    feature = "cuda-unfused",
    feature = "flex",
    feature = "candle"
)))]
compile_error!(
    "peanut-train needs a backend feature: `ndarray`, `wgpu`, `cuda`, `flex` or `candle` \
     (or `wgpu-unfused`, `cuda-unfused`)"
);

pub use crate::train::parallel::{DeviceKind, DeviceSpec};

/// The inference backend chosen by cargo features.
#[cfg(feature = "cuda-unfused")]
pub type Selected = burn::backend::Cuda;
/// The inference backend chosen by cargo features.
#[cfg(all(feature = "wgpu-unfused", not(feature = "cuda-unfused")))]
pub type Selected = burn::backend::Wgpu;
/// The inference backend chosen by cargo features.
#[cfg(all(
    feature = "flex",
    not(any(feature = "cuda-unfused", feature = "wgpu-unfused"))
))]
pub type Selected = burn::backend::Flex;
/// The inference backend chosen by cargo features.
#[cfg(all(
    feature = "candle",
    not(any(feature = "cuda-unfused", feature = "wgpu-unfused", feature = "flex"))
))]
pub type Selected = burn::backend::Candle;
/// The inference backend chosen by cargo features.
#[cfg(all(
    feature = "ndarray",
    not(any(
        feature = "wgpu-unfused",
        feature = "cuda-unfused",
        feature = "flex",
        feature = "candle"
    ))
))]
pub type Selected = burn::backend::NdArray<f32>;

/// The training backend: [`Selected`] with automatic differentiation.
pub type TrainBackend = burn::backend::Autodiff<Selected>;

/// The training backend with gradient checkpointing (`--checkpointing`): burn's balanced
/// strategy keeps the outputs of compute-bound operations (matrix products) for the backward
/// pass and recomputes those of memory-bound ones (element-wise operations, activations) from
/// them, trading some recomputation for activation memory. Gradients are those of
/// [`TrainBackend`].
pub type CheckpointedTrainBackend = burn::backend::Autodiff<
    Selected,
    burn::backend::autodiff::checkpoint::strategy::BalancedCheckpointing,
>;

/// Registers this build's training backends ([`TrainBackend`], [`CheckpointedTrainBackend`])
/// with [`peanut_models::ops::register_autodiff`] (which also calls
/// [`peanut::quant::register_autodiff`]): attention, RMS norm and SwiGLU keep only their inputs
/// for the backward pass, and training on quantized base weights (`--quantize`) keeps no float
/// copy of them. Idempotent; every training job calls it before loading.
pub fn register_autodiff_ops() {
    peanut_models::ops::register_autodiff::<
        Selected,
        burn::backend::autodiff::checkpoint::strategy::NoCheckpointing,
    >();
    peanut_models::ops::register_autodiff::<
        Selected,
        burn::backend::autodiff::checkpoint::strategy::BalancedCheckpointing,
    >();
}

/// A short name of the selected backend, for logs and `peanut info`.
pub const NAME: &str = if cfg!(feature = "cuda-unfused") {
    "cuda"
} else if cfg!(feature = "wgpu-unfused") {
    "wgpu"
} else if cfg!(feature = "flex") {
    "flex"
} else if cfg!(feature = "candle") {
    "candle"
} else {
    "ndarray"
};

/// Whether the selected backend runs through burn's kernel fusion (the `cuda` and `wgpu` builds;
/// not `cuda-unfused`, `wgpu-unfused` or the CPU backends).
pub const FUSED: bool = cfg!(any(feature = "cuda", feature = "wgpu"));

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
///
/// It also puts every thread on glibc's one main heap (`M_ARENA_MAX` 1). Otherwise each
/// training worker thread (see [`crate::train::parallel`]) gets its own arena, made of 64 MiB
/// heaps that are mapped fresh as a step's activations grow and unmapped when they are freed,
/// so every step faulted its memory in again: a fifth of the CPU time of a two-worker ViT-S
/// step was the kernel zeroing pages, and one heap made the step about 20 % faster at the same
/// peak memory. Tensor allocations are few and large, so the shared heap's lock costs nothing
/// measurable.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // glibc's <malloc.h>.
        const M_TRIM_THRESHOLD: i32 = -1;
        const M_MMAP_THRESHOLD: i32 = -3;
        const M_ARENA_MAX: i32 = -8;
        unsafe extern "C" {
            fn mallopt(param: i32, value: i32) -> i32;
        }
        // SAFETY: `mallopt` only changes allocator tuning parameters; it is safe to call at
        // any time, and a rejected value leaves the setting unchanged.
        unsafe {
            mallopt(M_MMAP_THRESHOLD, 32 << 20);
            mallopt(M_TRIM_THRESHOLD, i32::MAX);
            mallopt(M_ARENA_MAX, 1);
        }
    }
}

/// The kind of device the selected backend runs on.
pub const KIND: DeviceKind = if cfg!(feature = "cuda-unfused") {
    DeviceKind::Cuda
} else if cfg!(feature = "wgpu-unfused") {
    DeviceKind::Wgpu
} else {
    DeviceKind::Cpu
};

/// The devices a `--devices` spec names, on the selected backend, for a run whose steps take
/// `batch_size` examples.
///
/// [`DeviceSpec::auto`] (the default) is the backend's default device on a GPU backend, and on
/// a CPU backend [`crate::train::parallel::cpu_workers`] data-parallel workers (one per core
/// this process may use, dividing the batch), which compute the same result as one and keep
/// the cores busier (see [`crate::train::parallel`]). One device is the backend's default
/// device. On a GPU backend, `cuda:0,1` / `wgpu:0,1` (or a count, `2`) name GPUs by index (for
/// wgpu, the discrete GPUs in the order wgpu lists them). On a CPU backend there is one device;
/// `cpu:2` (or `2`) runs two workers on it.
///
/// # Errors
/// A kind the binary was not built for (naming the cargo feature that would be), or a GPU index
/// beyond the devices present.
pub fn devices(
    spec: &DeviceSpec,
    batch_size: usize,
) -> crate::Result<Vec<burn::tensor::Device<Selected>>> {
    use burn::tensor::backend::{Backend, Device as _};
    if spec.is_auto() {
        // `workers()` is 1 on a GPU backend, and `cpu_workers` never exceeds it.
        let count = crate::train::parallel::cpu_workers(batch_size, workers());
        return devices(&DeviceSpec::count(count), batch_size);
    }
    if let Some(kind) = spec.kind
        && kind != KIND
    {
        let feature = match kind {
            DeviceKind::Cpu => "flex",
            DeviceKind::Wgpu => "wgpu",
            DeviceKind::Cuda => "cuda",
        };
        return Err(crate::TrainError::InvalidOption {
            option: "--devices",
            reason: format!(
                "this peanut was built for the {NAME} backend ({} devices); `{spec}` needs a \
                 build with `--features {feature}`",
                KIND.name()
            ),
        });
    }
    if spec.len() <= 1 && spec.indices.first().is_none_or(|&i| i == 0) {
        return Ok(vec![device()]);
    }
    let made: Vec<burn::tensor::Device<Selected>> =
        spec.indices.iter().map(|&index| device_at(index)).collect();
    if KIND != DeviceKind::Cpu {
        let type_id = made[0].to_id().type_id;
        let present = <Selected as Backend>::device_count(type_id);
        if let Some(missing) = spec.indices.iter().find(|&&i| i >= present) {
            return Err(crate::TrainError::InvalidOption {
                option: "--devices",
                reason: format!(
                    "{} device {missing} does not exist: {present} found",
                    KIND.name()
                ),
            });
        }
    }
    Ok(made)
}

/// How many threads of work inference runs side by side (`eval lm`'s batches): on a CPU backend
/// one per core this process may use, at most
/// [`MAX_CPU_WORKERS`](crate::train::parallel::MAX_CPU_WORKERS); 1 on a GPU backend.
pub fn workers() -> usize {
    if KIND == DeviceKind::Cpu {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        cores.min(crate::train::parallel::MAX_CPU_WORKERS)
    } else {
        1
    }
}

/// The devices a training job runs on: `spec` resolved for steps of `batch_size` examples
/// ([`devices`]), checked to share the batch evenly
/// ([`crate::train::parallel::per_device_batch`]), and said on stdout
/// ([`describe_devices`]).
///
/// # Errors
/// As [`devices`], or a batch the devices cannot share.
pub fn training_devices(
    spec: &DeviceSpec,
    batch_size: usize,
) -> crate::Result<Vec<burn::tensor::Device<Selected>>> {
    let devices = devices(spec, batch_size)?;
    crate::train::parallel::per_device_batch(batch_size, devices.len())?;
    println!("{}", describe_devices(devices.len(), batch_size));
    Ok(devices)
}

/// One line saying where a run of `batch_size`-example steps trains on `devices` devices of the
/// selected backend, for the job's log: `training on 2 CPU workers, 16 examples each per step`.
pub fn describe_devices(devices: usize, batch_size: usize) -> String {
    let what = match (KIND, devices) {
        (DeviceKind::Cpu, 1) => return format!("training on the CPU ({NAME}), one worker"),
        (DeviceKind::Cpu, n) => format!("{n} CPU workers ({NAME})"),
        (_, 1) => return format!("training on one {} device", KIND.name()),
        (kind, n) => format!("{n} {} devices", kind.name()),
    };
    format!(
        "training on {what}, {} examples each per step",
        batch_size / devices.max(1)
    )
}

/// Device `index` of the selected backend (the CPU for every index on CPU backends).
#[allow(unused_variables)]
fn device_at(index: usize) -> burn::tensor::Device<Selected> {
    #[cfg(feature = "cuda-unfused")]
    return burn::backend::cuda::CudaDevice::new(index);
    #[cfg(all(feature = "wgpu-unfused", not(feature = "cuda-unfused")))]
    return burn::backend::wgpu::WgpuDevice::DiscreteGpu(index);
    #[cfg(not(any(feature = "wgpu-unfused", feature = "cuda-unfused")))]
    device()
}
