//! Guards of a training run: [`LossGuard`] stops a run at its first non-finite loss and keeps
//! a diverged epoch from being checkpointed, and [`clip_global_norm`] bounds the global gradient
//! norm. Neither reads a value back to the host inside the training step: the guard reads each
//! step's loss where burn's metrics read it, on the metrics thread ([`LossGuardMetric`]), and the
//! clipping factor is computed on the device.

use std::sync::{Arc, Mutex};

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{ElementConversion, Tensor};
use burn::train::metric::{
    Adaptor, Metric, MetricAttributes, MetricMetadata, MetricName, SerializedEntry,
};
use burn::train::{ClassificationOutput, Interrupter};

/// The first non-finite loss a run met: its value and the global step (1-based).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Divergence {
    /// The loss.
    pub loss: f32,
    /// Training iterations done before it, plus one.
    pub step: usize,
}

/// Watches the loss: on the first NaN or infinity it records the step and asks the Learner to
/// stop. The loss is read on burn's metrics thread ([`LossGuardMetric`]), so the training loop
/// may have taken a few more steps by then; those steps' parameters are not finite, and the
/// epoch checkpoint is not written ([`LossGuard::check_record`] and the epoch recorder), so the
/// last good checkpoint stays the last complete one.
#[derive(Clone, Default)]
pub struct LossGuard {
    interrupter: Interrupter,
    state: Arc<Mutex<(usize, Option<Divergence>)>>,
}

impl std::fmt::Debug for LossGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LossGuard({:?})", self.divergence())
    }
}

impl LossGuard {
    /// A guard that stops training through `interrupter`, counting steps from `steps_done`.
    pub fn new(interrupter: Interrupter, steps_done: usize) -> Self {
        Self {
            interrupter,
            state: Arc::new(Mutex::new((steps_done, None))),
        }
    }

    /// The divergence seen, if any.
    pub fn divergence(&self) -> Option<Divergence> {
        self.state.lock().map(|s| s.1).unwrap_or(None)
    }

    /// The interrupter the guard stops the Learner with.
    pub fn interrupter(&self) -> Interrupter {
        self.interrupter.clone()
    }

    /// Records a divergence (at the current step, loss NaN) unless one is recorded already,
    /// when the trainable parameters about to be checkpointed are not all finite; `false` then.
    pub(crate) fn check_record(&self, finite: bool) -> bool {
        if finite {
            return true;
        }
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.1.is_none() {
            state.1 = Some(Divergence {
                loss: f32::NAN,
                step: state.0.max(1),
            });
            self.interrupter.stop(Some("non-finite parameters"));
        }
        false
    }

    /// Records one step's loss; `false` when it is not finite.
    pub(crate) fn check(&self, loss: f32) -> bool {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.0 += 1;
        if loss.is_finite() {
            return true;
        }
        if state.1.is_none() {
            state.1 = Some(Divergence {
                loss,
                step: state.0,
            });
            self.interrupter.stop(Some("non-finite loss"));
        }
        false
    }
}

/// Scales every gradient by `min(1, max_norm / ‖g‖)`, `‖g‖` the norm over all of them. The norm
/// and the factor stay on the device (no read-back).
pub(crate) fn clip_global_norm<B: AutodiffBackend, M: Module<B>>(
    model: &M,
    grads: &mut GradientsParams,
    max_norm: f32,
) {
    type Inner<B> = <B as AutodiffBackend>::InnerBackend;
    struct SquaredNorm<'a, B: AutodiffBackend> {
        grads: &'a GradientsParams,
        total: Option<Tensor<Inner<B>, 1>>,
    }
    impl<B: AutodiffBackend> ModuleVisitor<B> for SquaredNorm<'_, B> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            if let Some(grad) = self.grads.get::<Inner<B>, D>(param.id) {
                let sum = grad.powi_scalar(2).sum();
                self.total = Some(match self.total.take() {
                    Some(total) => total + sum,
                    None => sum,
                });
            }
        }
    }
    struct Scale<'a, B: AutodiffBackend> {
        grads: &'a mut GradientsParams,
        factor: Tensor<Inner<B>, 1>,
    }
    impl<B: AutodiffBackend> ModuleVisitor<B> for Scale<'_, B> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            if let Some(grad) = self.grads.remove::<Inner<B>, D>(param.id) {
                let factor = self.factor.clone().reshape([1; D]);
                self.grads
                    .register::<Inner<B>, D>(param.id, grad.mul(factor));
            }
        }
    }
    let mut norm = SquaredNorm::<B> { grads, total: None };
    model.visit(&mut norm);
    let Some(total) = norm.total else { return };
    // min(1, max_norm / ‖g‖): 1 for a zero norm (the division gives infinity).
    let factor = total.sqrt().recip().mul_scalar(max_norm).clamp_max(1.0);
    let mut scale = Scale::<B> { grads, factor };
    model.visit(&mut scale);
}

/// What [`LossGuardMetric`] reads of a step: its (mean) loss, read where the metrics read it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LossValue(pub f32);

impl LossValue {
    /// The mean of `loss`.
    pub fn of<B: Backend>(loss: &Tensor<B, 1>) -> Self {
        Self(loss.clone().mean().into_scalar().elem())
    }
}

impl<B: Backend> Adaptor<LossValue> for ClassificationOutput<B> {
    fn adapt(&self) -> LossValue {
        LossValue::of(&self.loss)
    }
}

/// Feeds every training step's loss to a [`LossGuard`], on burn's metrics thread (where the
/// loss metric reads it too), so the training step itself never waits for a value. Shown as the
/// count of non-finite losses.
#[derive(Clone)]
pub struct LossGuardMetric {
    guard: LossGuard,
    name: MetricName,
    non_finite: usize,
}

impl LossGuardMetric {
    /// A metric that reports to `guard`.
    pub fn new(guard: LossGuard) -> Self {
        Self {
            guard,
            name: Arc::new("Non-finite losses".to_string()),
            non_finite: 0,
        }
    }
}

impl Metric for LossGuardMetric {
    type Input = LossValue;

    fn update(&mut self, item: &LossValue, _metadata: &MetricMetadata) -> SerializedEntry {
        if !self.guard.check(item.0) {
            self.non_finite += 1;
        }
        let text = self.non_finite.to_string();
        SerializedEntry::new(format!("{}: {text}", self.name), text)
    }

    fn clear(&mut self) {}

    fn name(&self) -> MetricName {
        self.name.clone()
    }

    fn attributes(&self) -> MetricAttributes {
        MetricAttributes::None
    }
}
