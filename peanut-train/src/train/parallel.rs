//! Data-parallel training on burn's own multi-device strategy: which devices (`--devices`), and
//! how a run's batch is divided among them so that it computes what one device would.
//!
//! burn's `ExecutionStrategy::MultiDevice` (with the optimizer on the first device) runs one
//! worker per device. Each step every worker takes the next batch of its slice of the data,
//! computes its gradients, and the first device sums them and takes one optimizer step. This
//! module keeps the run the user asked for whatever the device count:
//!
//! - each device takes `batch_size / devices` examples per step, so a step still sees
//!   `batch_size` examples ([`per_device_batch`]);
//! - the data order is laid out so that the examples of step `k` are those of the single-device
//!   step `k` ([`crate::data::EpochOrder::for_devices`]);
//! - each device's mean loss is divided by the device count before its backward pass, so the
//!   summed gradient is the gradient of the mean over the whole batch (for `train lm`, whose
//!   loss is a mean over each pass's response tokens, the devices' shares weigh equally, as
//!   gradient accumulation already weighs its passes);
//! - the learning-rate schedule counts steps, which are unchanged.
//!
//! **On the CPU the workers are the default** ([`DeviceSpec::auto`]): the CPU backends run their
//! matrix products on every core but most element-wise operations (activations, copies,
//! additions, the optimizer) on the calling thread, so one training thread keeps about 1.2 of 2
//! cores busy. Workers, one per core (at most [`MAX_CPU_WORKERS`], and a count that divides the
//! batch: [`cpu_workers`]), run those parts side by side: on 2 cores a ViT-S training step went
//! from 12.8 to 20.8 images/s (`peanut train image`, 1.1 to 1.6 cores busy), with the same
//! validation results.
//!
//! Checkpoints and `--resume` are those of one device: the record is the model's, and the
//! device count is not part of `run.json`, so a run may resume on another number of devices.

use std::str::FromStr;

use crate::error::{Result, TrainError};

/// The kinds of device `--devices` may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceKind {
    /// The CPU (ndarray, flex, candle). Its "devices" are workers sharing the one CPU.
    Cpu,
    /// A GPU through wgpu (Vulkan, Metal, DX12).
    Wgpu,
    /// An NVIDIA GPU through CUDA.
    Cuda,
}

impl DeviceKind {
    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            DeviceKind::Cpu => "cpu",
            DeviceKind::Wgpu => "wgpu",
            DeviceKind::Cuda => "cuda",
        }
    }
}

/// Most data-parallel workers [`DeviceSpec::auto`] starts on the CPU, however many cores there
/// are. Each worker's matrix products already use every core; the workers are there to keep the
/// cores busy during the single-threaded parts of a step. Two keeps runs bit-reproducible: burn
/// sums the workers' gradients in the order they finish, and a sum of two does not depend on
/// it (of three or more it may, in the last bits). `--devices cpu:N` asks for more.
pub const MAX_CPU_WORKERS: usize = 2;

/// How many data-parallel CPU workers [`DeviceSpec::auto`] runs for a batch of `batch_size` on
/// `cores` cores: the largest count, at most `cores` and [`MAX_CPU_WORKERS`], that divides the
/// batch (so each worker takes the same number of examples); 1 when none above 1 does.
pub fn cpu_workers(batch_size: usize, cores: usize) -> usize {
    let most = cores.min(MAX_CPU_WORKERS).min(batch_size).max(1);
    (1..=most)
        .rev()
        .find(|&n| batch_size.is_multiple_of(n))
        .unwrap_or(1)
}

/// The devices a run trains on: `--devices auto` (the default: [`DeviceSpec::auto`]),
/// `--devices 2` (the first two devices of the built backend), `--devices cuda:0,1`,
/// `--devices wgpu:1,2`, `--devices cpu:2` (two workers on the CPU).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceSpec {
    /// The kind named, if any (a bare count means the built backend's).
    pub kind: Option<DeviceKind>,
    /// Device indices (for the CPU: worker numbers).
    pub indices: Vec<usize>,
}

impl Default for DeviceSpec {
    /// [`DeviceSpec::auto`].
    fn default() -> Self {
        Self::auto()
    }
}

impl DeviceSpec {
    /// Let the backend choose (`--devices auto`): on a GPU backend its default device; on a
    /// CPU backend [`cpu_workers`] data-parallel workers, one per core (see the module docs).
    /// `crate::backend::devices` resolves it against the run's batch.
    pub fn auto() -> Self {
        Self {
            kind: None,
            indices: Vec::new(),
        }
    }

    /// Whether this is [`DeviceSpec::auto`].
    pub fn is_auto(&self) -> bool {
        self.kind.is_none() && self.indices.is_empty()
    }

    /// The first `n` devices of the built backend.
    pub fn count(n: usize) -> Self {
        Self {
            kind: None,
            indices: (0..n).collect(),
        }
    }

    /// How many devices (0 for [`DeviceSpec::auto`], which is resolved later).
    pub fn len(&self) -> usize {
        self.indices.len()
    }

    /// Whether no device is named: [`DeviceSpec::auto`].
    pub fn is_empty(&self) -> bool {
        self.indices.is_empty()
    }
}

impl FromStr for DeviceSpec {
    type Err = String;

    /// `N`, `kind`, `kind:N` for the CPU, or `kind:i,j,…` with kind `cpu`, `wgpu` or `cuda`.
    fn from_str(text: &str) -> std::result::Result<Self, String> {
        let text = text.trim();
        if text.eq_ignore_ascii_case("auto") {
            return Ok(Self::auto());
        }
        let parse_count = |n: &str| match n.parse::<usize>() {
            Ok(0) => Err("a device count must be at least 1".to_string()),
            Ok(n) => Ok(n),
            Err(_) => Err(format!(
                "`{text}` is not a device count (2), auto, nor a list such as cuda:0,1, wgpu:0,1 or \
                 cpu:2"
            )),
        };
        let Some((kind, list)) = text
            .split_once(':')
            .or_else(|| matches!(text, "cpu" | "wgpu" | "cuda").then_some((text, "0")))
        else {
            return Ok(Self::count(parse_count(text)?));
        };
        let kind = match kind.to_ascii_lowercase().as_str() {
            "cpu" => DeviceKind::Cpu,
            "wgpu" => DeviceKind::Wgpu,
            "cuda" => DeviceKind::Cuda,
            other => {
                return Err(format!(
                    "unknown device kind `{other}`: use cpu, wgpu or cuda"
                ));
            }
        };
        if kind == DeviceKind::Cpu && !list.contains(',') {
            // `cpu:2`: two workers.
            return Ok(Self {
                kind: Some(kind),
                indices: (0..parse_count(list)?).collect(),
            });
        }
        let mut indices = Vec::new();
        for item in list.split(',') {
            let index: usize = item
                .trim()
                .parse()
                .map_err(|_| format!("`{item}` in `{text}` is not a device index"))?;
            if indices.contains(&index) {
                return Err(format!("device {index} is named twice in `{text}`"));
            }
            indices.push(index);
        }
        Ok(Self {
            kind: Some(kind),
            indices,
        })
    }
}

impl std::fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.is_auto() {
            return write!(f, "auto");
        }
        let list: Vec<String> = self.indices.iter().map(usize::to_string).collect();
        match self.kind {
            Some(kind) => write!(f, "{}:{}", kind.name(), list.join(",")),
            None => write!(f, "{}", self.indices.len()),
        }
    }
}

/// The examples each of `devices` takes per step for a step of `batch_size` examples.
///
/// # Errors
/// When `batch_size` does not divide evenly among the devices (the step would then not be the
/// one asked for).
pub fn per_device_batch(batch_size: usize, devices: usize) -> Result<usize> {
    if devices == 0 || !batch_size.is_multiple_of(devices) {
        return Err(TrainError::InvalidOption {
            option: "--devices",
            reason: format!(
                "the batch of {batch_size} cannot be shared evenly by {devices} devices; pick a \
                 --batch-size that is a multiple of the device count"
            ),
        });
    }
    Ok(batch_size / devices)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_counts_and_lists() {
        assert_eq!("2".parse::<DeviceSpec>().unwrap(), DeviceSpec::count(2));
        let cuda: DeviceSpec = "cuda:0,1".parse().unwrap();
        assert_eq!(cuda.kind, Some(DeviceKind::Cuda));
        assert_eq!(cuda.indices, vec![0, 1]);
        assert_eq!(cuda.to_string(), "cuda:0,1");
        let cpu: DeviceSpec = "cpu:3".parse().unwrap();
        assert_eq!((cpu.kind, cpu.len()), (Some(DeviceKind::Cpu), 3));
        let wgpu: DeviceSpec = "wgpu".parse().unwrap();
        assert_eq!(wgpu.indices, vec![0]);
        let auto: DeviceSpec = " Auto ".parse().unwrap();
        assert!(auto.is_auto());
        assert_eq!(auto, DeviceSpec::default());
        assert_eq!(auto.to_string(), "auto");
        assert!(!DeviceSpec::count(1).is_auto());
        for bad in ["0", "x", "tpu:0", "cuda:0,0", "cuda:a", "", "cpu:0"] {
            assert!(bad.parse::<DeviceSpec>().is_err(), "{bad}");
        }
    }

    #[test]
    fn cpu_workers_divide_the_batch_and_stay_within_cores() {
        assert_eq!(cpu_workers(32, 2), 2);
        assert_eq!(cpu_workers(32, 1), 1);
        assert_eq!(cpu_workers(7, 2), 1);
        assert_eq!(cpu_workers(6, 4), MAX_CPU_WORKERS.min(3));
        assert_eq!(cpu_workers(2, 16), 2);
        assert_eq!(cpu_workers(1, 16), 1);
        assert_eq!(cpu_workers(64, 64), MAX_CPU_WORKERS);
        assert_eq!(cpu_workers(0, 2), 1);
        for batch in 1..40 {
            for cores in 1..20 {
                let n = cpu_workers(batch, cores);
                assert!(n >= 1 && n <= cores.min(MAX_CPU_WORKERS));
                assert!(batch.is_multiple_of(n), "{batch} {cores} {n}");
            }
        }
    }

    #[test]
    fn batch_must_divide() {
        assert_eq!(per_device_batch(32, 2).unwrap(), 16);
        assert_eq!(per_device_batch(7, 1).unwrap(), 7);
        assert!(per_device_batch(7, 2).is_err());
    }
}
