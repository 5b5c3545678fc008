//! [`ImageClassifier`]: a ViT wrapped for burn's Learner — cross-entropy steps, a guard against
//! non-finite losses, separate learning rates for the head and the rest, global-norm clipping.

use std::sync::{Arc, Mutex};

use burn::module::{AutodiffModule, Module, ModuleVisitor, Param, ParamId};
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::{GradientsParams, Optimizer};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{ElementConversion, Tensor};
use burn::train::{ClassificationOutput, InferenceStep, Interrupter, TrainOutput, TrainStep};
use peanut_models::Vit;

use crate::data::ImageBatch;

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

/// How the optimizer treats the wrapped model's parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OptimSettings {
    /// Learning-rate multiplier of everything but the head, relative to the scheduled (head)
    /// learning rate: `adapter_lr / head_lr`.
    pub body_lr_ratio: f64,
    /// Clip the global gradient norm (over all trainable tensors) to this value.
    pub clip_grad_norm: Option<f32>,
}

/// A [`Vit`] ready for burn's Learner.
#[derive(Module, Debug)]
pub struct ImageClassifier<B: Backend> {
    /// The model.
    pub model: Vit<B>,
    #[module(skip)]
    guard: LossGuard,
    #[module(skip)]
    settings: OptimSettings,
}

impl<B: Backend> ImageClassifier<B> {
    /// Wraps `model`; `guard` watches its losses, `settings` shape its updates.
    pub fn new(model: Vit<B>, guard: LossGuard, settings: OptimSettings) -> Self {
        Self {
            model,
            guard,
            settings,
        }
    }

    /// Logits and cross-entropy loss of a batch.
    pub fn forward_classification(&self, batch: ImageBatch<B>) -> ClassificationOutput<B> {
        let logits = self.model.forward(batch.images);
        let loss = CrossEntropyLossConfig::new()
            .init(&logits.device())
            .forward(logits.clone(), batch.targets.clone());
        ClassificationOutput::new(loss, logits, batch.targets)
    }
}

impl<B: AutodiffBackend> TrainStep for ImageClassifier<B> {
    type Input = ImageBatch<B>;
    type Output = ClassificationOutput<B>;

    fn step(&self, batch: ImageBatch<B>) -> TrainOutput<ClassificationOutput<B>> {
        let output = self.forward_classification(batch);
        let loss: f32 = output.loss.clone().into_scalar().elem();
        if !self.guard.check(loss) {
            return TrainOutput {
                grads: GradientsParams::new(),
                item: output,
            };
        }
        let grads = output.loss.backward();
        TrainOutput::new(self, grads, output)
    }

    fn optimize<B2, O>(self, optim: &mut O, lr: f64, mut grads: GradientsParams) -> Self
    where
        B2: AutodiffBackend,
        O: Optimizer<Self, B2>,
        Self: AutodiffModule<B2>,
    {
        if let Some(max_norm) = self.settings.clip_grad_norm {
            clip_global_norm::<B, _>(&self, &mut grads, max_norm);
        }
        let mut head = Collect::<B> {
            from: &mut grads,
            into: GradientsParams::new(),
            ids: Vec::new(),
            _backend: std::marker::PhantomData,
        };
        self.model.classifier.visit(&mut head);
        let head_grads = head.into;
        let ratio = self.settings.body_lr_ratio;
        let model = if head_grads.is_empty() {
            self
        } else {
            optim.step(lr, self, head_grads)
        };
        if grads.is_empty() {
            model
        } else {
            optim.step(lr * ratio, model, grads)
        }
    }
}

impl<B: Backend> InferenceStep for ImageClassifier<B> {
    type Input = ImageBatch<B>;
    type Output = ClassificationOutput<B>;

    fn step(&self, batch: ImageBatch<B>) -> ClassificationOutput<B> {
        self.forward_classification(batch)
    }
}

/// Moves the gradients of the visited parameters from `from` into `into`.
struct Collect<'a, B: AutodiffBackend> {
    from: &'a mut GradientsParams,
    into: GradientsParams,
    ids: Vec<ParamId>,
    _backend: std::marker::PhantomData<B>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Collect<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(grad) = self.from.remove::<B::InnerBackend, D>(param.id) {
            self.into.register::<B::InnerBackend, D>(param.id, grad);
            self.ids.push(param.id);
        }
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
