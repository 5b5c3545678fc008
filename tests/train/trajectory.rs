//! Training-trajectory parity with PyTorch + peft on the selected backend, in float32
//! (`tests/common/trajectory.rs` has the check; `tests/trajectory_f64.rs` runs it in float64).

#[path = "../common/trajectory.rs"]
mod harness;

use harness::{Trajectory, follow};
use peanut_train::backend::TrainBackend;

use super::temp_dir;

/// How far the selected backend's float32 run may be from PyTorch's float64 one.
///
/// AdamW's update hardly depends on the gradient's scale (twice the gradient moves these
/// tensors by only 1e-5), so the step's algebra is checked in float64, where rounding is out of
/// the way (`tests/trajectory_f64.rs`, bound 1e-6). This run bounds what a backend's float32
/// rounding adds, which AdamW magnifies where a gradient is near zero: PyTorch's own float32 run
/// is 1.6e-7 from its float64 one and flex's 3.3e-7 (bound 1e-6); ndarray's products and sums
/// round differently, and its run is 1.2e-5 away, in a 2×2 decoder of the query adapter after
/// the third update (bound 3e-5), while its float64 run is within 3e-7.
fn float32_bound() -> f32 {
    if peanut_train::backend::NAME == "ndarray" {
        3e-5
    } else {
        1e-6
    }
}

#[test]
fn adamw_steps_follow_pytorch_and_peft() {
    let trajectory = Trajectory::read();
    let drift = trajectory.setting("float32_drift") as f32;
    let dir = temp_dir("trajectory");
    let bound = float32_bound();
    let plain = follow::<TrainBackend>(&trajectory, "plain", 1, bound, &dir);
    let accumulated = follow::<TrainBackend>(
        &trajectory,
        "accumulated",
        trajectory.setting("accumulate") as usize,
        bound,
        &dir,
    );
    eprintln!(
        "largest difference from PyTorch (float64): {plain:e} per batch, {accumulated:e} \
         accumulated (bound {bound:e}); PyTorch's own float32 run: {drift:e}"
    );
}
