//! Guards of a training step: [`LossGuard`] stops a run at its first non-finite loss, and
//! [`clip_global_norm`] bounds the global gradient norm.

use std::sync::{Arc, Mutex};

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{ElementConversion, Tensor};
use burn::train::Interrupter;

/// The first non-finite loss a run met: its value and the global step (1-based).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Divergence {
    /// The loss.
    pub loss: f32,
    /// Training iterations done before it, plus one.
    pub step: usize,
}

/// Watches the loss: on the first NaN or infinity it records the step, skips that update and
/// asks the Learner to stop, so the epoch is not checkpointed.
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

/// Scales every gradient by `min(1, max_norm / ‖g‖)`, `‖g‖` the norm over all of them.
pub(crate) fn clip_global_norm<B: AutodiffBackend, M: Module<B>>(
    model: &M,
    grads: &mut GradientsParams,
    max_norm: f32,
) {
    struct SquaredNorm<'a, B: AutodiffBackend> {
        grads: &'a GradientsParams,
        total: f64,
        _backend: std::marker::PhantomData<B>,
    }
    impl<B: AutodiffBackend> ModuleVisitor<B> for SquaredNorm<'_, B> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            if let Some(grad) = self.grads.get::<B::InnerBackend, D>(param.id) {
                let sum: f64 = grad.powi_scalar(2).sum().into_scalar().elem();
                self.total += sum;
            }
        }
    }
    struct Scale<'a, B: AutodiffBackend> {
        grads: &'a mut GradientsParams,
        factor: f32,
        _backend: std::marker::PhantomData<B>,
    }
    impl<B: AutodiffBackend> ModuleVisitor<B> for Scale<'_, B> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            if let Some(grad) = self.grads.remove::<B::InnerBackend, D>(param.id) {
                self.grads
                    .register::<B::InnerBackend, D>(param.id, grad.mul_scalar(self.factor));
            }
        }
    }
    let mut norm = SquaredNorm::<B> {
        grads,
        total: 0.0,
        _backend: std::marker::PhantomData,
    };
    model.visit(&mut norm);
    let total = norm.total.sqrt() as f32;
    if total > max_norm && total.is_finite() {
        let mut scale = Scale::<B> {
            grads,
            factor: max_norm / total,
            _backend: std::marker::PhantomData,
        };
        model.visit(&mut scale);
    }
}
