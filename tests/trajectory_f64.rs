//! The training step against PyTorch + peft in float64 (`tests/common/trajectory.rs`): burn's
//! ndarray backend in float64 must follow PyTorch's float64 run to 1e-6 (the fixture stores
//! float32, which alone accounts for up to 3e-7 here), so the algebra of the step — loss, gradients,
//! parameter groups, accumulation, AdamW — is checked with no float32 rounding in the way. Its
//! own test target: the float type a backend's tensors default to is set per device, once per
//! process, so the float32 suite (`tests/train`) must not share the process.

#[path = "common/trajectory.rs"]
mod harness;

use burn::backend::{Autodiff, NdArray};
use burn::tensor::{DType, Tensor};
use harness::{Trajectory, follow};

type Exact = Autodiff<NdArray<f64>>;

#[test]
fn adamw_steps_follow_pytorch_and_peft_in_float64() {
    // The tensors this process makes are float64 (else the bound below would be met by luck
    // or fail for rounding).
    let probe = Tensor::<Exact, 1>::from_floats([1.0], &Default::default());
    assert_eq!(probe.dtype(), DType::F64);
    let trajectory = Trajectory::read();
    let dir = std::env::temp_dir().join(format!("peanut-trajectory-f64-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let plain = follow::<Exact>(&trajectory, "plain", 1, 1e-6, &dir);
    let accumulated = follow::<Exact>(
        &trajectory,
        "accumulated",
        trajectory.setting("accumulate") as usize,
        1e-6,
        &dir,
    );
    let _ = std::fs::remove_dir_all(&dir);
    eprintln!(
        "largest difference from PyTorch (float64), ndarray in float64: {plain:e} per batch, \
         {accumulated:e} accumulated"
    );
}
