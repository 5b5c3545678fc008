//! [`Trainee`]: a model with an [`Objective`] wrapped for burn's Learner — the one guarded
//! training step every pipeline shares (loss guard, gradient accumulation, global-norm
//! clipping, parameter groups with their own learning rates) — and [`TrainableRecord`], the
//! checkpoint record of its trainable parameters only.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

use burn::module::{AutodiffModule, Devices, Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::optim::{GradientsParams, Optimizer};
use burn::record::{PrecisionSettings, Record};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Tensor, TensorData};
use burn::train::metric::state::{FormatOptions, NumericMetricState};
use burn::train::metric::{
    Metric, MetricAttributes, MetricMetadata, MetricName, Numeric, NumericAttributes, NumericEntry,
    SerializedEntry,
};
use burn::train::{InferenceStep, ItemLazy, TrainOutput, TrainStep};
use peanut_models::AdaptableModel;
use serde::{Deserialize, Serialize};

use super::guard::{LossGuard, clip_global_norm};
use crate::error::Result;

/// What a model computes in one step of a pipeline: the loss to minimise, and what the metrics
/// read. Implemented for [`peanut_models::Vit`] (classification) and [`peanut_models::Llama`]
/// (next-token prediction on responses).
pub trait Objective<B: Backend>: Module<B> {
    /// A batch of examples.
    type Batch: Send + 'static;
    /// What the metrics read.
    type Output: ItemLazy + 'static;

    /// The mean loss of `batch` (shape `[1]`) and the metrics' view of the step.
    fn objective(&self, batch: Self::Batch) -> (Tensor<B, 1>, Self::Output);

    /// The gradients of [`Objective::objective`]'s loss divided by `divisor`, and the metrics'
    /// view, with the activations of the model's repeated blocks recomputed in the backward
    /// pass instead of kept ([`StepSettings::recompute_layers`]). The default, for a model
    /// without such a path, keeps them: the loss's own backward.
    fn recompute_grads(&self, batch: Self::Batch, divisor: usize) -> (GradientsParams, Self::Output)
    where
        B: AutodiffBackend,
        Self: AutodiffModule<B>,
    {
        plain_grads(self, batch, divisor)
    }

    /// Visits the parameters of the head (the group trained at [`LearningRates::head`]); the
    /// default, no head, puts every parameter in the other group.
    fn visit_head<V: ModuleVisitor<B>>(&self, _visitor: &mut V) {}

    /// Writes the trainable tensors to `dir` in Hugging Face peft's format: the adapters, and
    /// a head as `modules_to_save` (what [`super::RunOptions::save_initial`] writes).
    ///
    /// # Errors
    /// What [`check_peft_adapters`] refuses, or a failed write.
    fn save_peft(&self, dir: &Path) -> Result<()>;
}

/// The gradients of `model`'s loss on `batch` divided by `divisor`, from the loss's own
/// backward pass, and the metrics' view.
fn plain_grads<B, M>(model: &M, batch: M::Batch, divisor: usize) -> (GradientsParams, M::Output)
where
    B: AutodiffBackend,
    M: Objective<B> + AutodiffModule<B>,
{
    let (loss, output) = model.objective(batch);
    let grads = GradientsParams::from_grads(divided(loss, divisor).backward(), model);
    (grads, output)
}

/// `loss / divisor` (the loss itself for 1).
pub(crate) fn divided<B: Backend>(loss: Tensor<B, 1>, divisor: usize) -> Tensor<B, 1> {
    if divisor > 1 {
        loss / divisor as f32
    } else {
        loss
    }
}

/// Refuses a model [`Objective::save_peft`] cannot write: one without adapters, or with
/// adapters of two methods (peft holds one). [`super::fit::fit`] asks before a run opens its
/// directory.
///
/// # Errors
/// [`crate::TrainError::InvalidOption`] naming `--save-initial`.
pub(crate) fn check_peft_adapters<B: Backend, M: AdaptableModel<B>>(model: &M) -> Result<()> {
    let adapters = model.adapters();
    let reason = match adapters.first() {
        None => "the run trains no adapters (use --method peanut or lora)".to_string(),
        Some((_, first)) if adapters.iter().any(|(_, a)| a.method() != first.method()) => {
            "peft's format holds adapters of one method, and this model has two".to_string()
        }
        Some(_) => return Ok(()),
    };
    Err(crate::TrainError::InvalidOption {
        option: "--save-initial",
        reason,
    })
}

/// Peak learning rates of the two parameter groups, as absolute values; the Learner's scheduler
/// yields the factor (peak 1) both are multiplied by at each step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LearningRates {
    /// The head's ([`Objective::visit_head`]).
    pub head: f64,
    /// Every other trainable parameter's (adapters, or the backbone for full fine-tuning).
    pub body: f64,
}

impl LearningRates {
    /// One rate for every parameter.
    pub fn uniform(lr: f64) -> Self {
        Self { head: lr, body: lr }
    }
}

/// How the step treats losses and gradients.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepSettings {
    /// Peak learning rates of the parameter groups.
    pub learning_rates: LearningRates,
    /// Clip the global gradient norm (over all trainable tensors) to this value.
    pub clip_grad_norm: Option<f32>,
    /// Each pass's loss is divided by this before the backward pass: the number of accumulated
    /// passes to average them (transformers' Trainer), 1 to sum them.
    pub loss_divisor: usize,
    /// Steps whose gradients add up before each optimizer update (gradient accumulation; 1
    /// updates every step). The sum is taken here, in step order, so that it is the same bits
    /// on every run (see [`Trainee::optimize`](TrainStep::optimize)).
    pub grad_accumulation: usize,
    /// Steps in one epoch. An epoch whose step count is not a multiple of
    /// [`grad_accumulation`](Self::grad_accumulation) ends with one update from the shorter
    /// last group, so no step's gradient is thrown away and no group spans two epochs (a
    /// checkpoint, written at the end of an epoch, never holds a partial sum).
    pub steps_per_epoch: usize,
    /// Scale that shorter last group's sum to the mean of a full group (set when the
    /// accumulated passes are averaged, as transformers' Trainer averages over the passes it
    /// actually ran).
    pub rescale_partial: bool,
    /// Compute the gradients with [`Objective::recompute_grads`]: the activations of the
    /// model's repeated blocks are recomputed in the backward pass instead of kept.
    pub recompute_layers: bool,
}

/// The gradient sum of the steps since the last update, shared by every copy of a [`Trainee`]
/// (burn clones the model for each worker and each step).
#[derive(Default)]
struct Pending {
    /// The sum so far, absent right after an update.
    grads: Option<GradientsParams>,
    /// Steps in `grads`.
    steps: usize,
    /// Steps taken in the current epoch.
    in_epoch: usize,
}

/// A model ready for burn's Learner: its [`Objective`] as the training and validation step,
/// guarded by a [`LossGuard`]; its checkpoint record is a [`TrainableRecord`].
pub struct Trainee<B: Backend, M> {
    /// The model.
    pub model: M,
    guard: LossGuard,
    settings: StepSettings,
    pending: Arc<Mutex<Pending>>,
    _backend: PhantomData<fn() -> B>,
}

impl<B: Backend, M: Clone> Clone for Trainee<B, M> {
    fn clone(&self) -> Self {
        Self {
            model: self.model.clone(),
            guard: self.guard.clone(),
            settings: self.settings,
            pending: self.pending.clone(),
            _backend: PhantomData,
        }
    }
}

impl<B: Backend, M: std::fmt::Debug> std::fmt::Debug for Trainee<B, M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trainee")
            .field("model", &self.model)
            .field("settings", &self.settings)
            .finish()
    }
}

impl<B: Backend, M: std::fmt::Display> std::fmt::Display for Trainee<B, M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.model.fmt(f)
    }
}

impl<B: Backend, M> Trainee<B, M> {
    /// Wraps `model`; `guard` watches its losses, `settings` shape its updates.
    pub fn new(model: M, guard: LossGuard, settings: StepSettings) -> Self {
        Self {
            model,
            guard,
            settings,
            pending: Arc::default(),
            _backend: PhantomData,
        }
    }

    fn with_model<N, C: Backend>(&self, model: N) -> Trainee<C, N> {
        Trainee {
            model,
            guard: self.guard.clone(),
            settings: self.settings,
            pending: self.pending.clone(),
            _backend: PhantomData,
        }
    }
}

impl<B: Backend, M: Module<B>> Module<B> for Trainee<B, M> {
    type Record = TrainableRecord<B>;

    fn collect_devices(&self, devices: Devices<B>) -> Devices<B> {
        self.model.collect_devices(devices)
    }

    fn fork(self, device: &B::Device) -> Self {
        let model = self.model.clone().fork(device);
        self.with_model(model)
    }

    fn to_device(self, device: &B::Device) -> Self {
        let model = self.model.clone().to_device(device);
        self.with_model(model)
    }

    fn visit<V: ModuleVisitor<B>>(&self, visitor: &mut V) {
        self.model.visit(visitor)
    }

    fn map<Mapper: ModuleMapper<B>>(self, mapper: &mut Mapper) -> Self {
        let model = self.model.clone().map(mapper);
        self.with_model(model)
    }

    fn load_record(self, record: Self::Record) -> Self {
        let model = record.apply(self.model.clone());
        self.with_model(model)
    }

    /// The trainable parameters. When they are not all finite (a diverged run whose loss the
    /// guard has not read yet), the guard records the divergence, and the epoch recorder then
    /// writes no checkpoint.
    fn into_record(self) -> Self::Record {
        let record = TrainableRecord::of(&self.model);
        self.guard.check_record(record.is_finite());
        record
    }
}

impl<B: AutodiffBackend, M: AutodiffModule<B>> AutodiffModule<B> for Trainee<B, M> {
    type InnerModule = Trainee<B::InnerBackend, M::InnerModule>;

    fn valid(&self) -> Self::InnerModule {
        self.with_model(self.model.valid())
    }

    fn from_inner(module: Self::InnerModule) -> Self {
        let model = M::from_inner(module.model.clone());
        module.with_model(model)
    }
}

impl<B, M> TrainStep for Trainee<B, M>
where
    B: AutodiffBackend,
    M: Objective<B> + AutodiffModule<B>,
{
    type Input = M::Batch;
    type Output = M::Output;

    /// The loss, its gradients and the metrics' view, with no read-back to the host: the
    /// loss guard reads the loss on the metrics thread (see [`super::guard`]).
    fn step(&self, batch: M::Batch) -> TrainOutput<M::Output> {
        let divisor = self.settings.loss_divisor;
        let (grads, item) = if self.settings.recompute_layers {
            self.model.recompute_grads(batch, divisor)
        } else {
            plain_grads(&self.model, batch, divisor)
        };
        TrainOutput { grads, item }
    }

    /// Adds this step's gradients (on several devices, burn has summed the devices' shares)
    /// to those of the steps since the last update, and updates every
    /// [`StepSettings::grad_accumulation`] steps and at the end of each epoch: clips the global
    /// norm, then steps the head at its rate and the rest at theirs.
    ///
    /// burn's own accumulation adds each device's gradients as the devices finish, so with
    /// several devices and several accumulated steps the order of the sum (and its last bits)
    /// changed from run to run; here each step's gradients join the sum in step order. burn's
    /// sum of one step's shares does not depend on their order for two devices (a + b = b + a).
    fn optimize<B2, O>(self, optim: &mut O, factor: f64, grads: GradientsParams) -> Self
    where
        B2: AutodiffBackend,
        O: Optimizer<Self, B2>,
        Self: AutodiffModule<B2>,
    {
        let settings = self.settings;
        let (mut grads, steps) = {
            let shared = self.pending.clone();
            let mut pending = shared.lock().unwrap_or_else(PoisonError::into_inner);
            let grads = match pending.grads.take() {
                Some(mut sum) => {
                    peanut_models::recompute::add_into::<B, M>(&mut sum, grads, &self.model);
                    sum
                }
                None => grads,
            };
            pending.steps += 1;
            pending.in_epoch += 1;
            let epoch_ends = pending.in_epoch >= settings.steps_per_epoch;
            if epoch_ends {
                pending.in_epoch = 0;
            }
            if pending.steps < settings.grad_accumulation.max(1) && !epoch_ends {
                pending.grads = Some(grads);
                return self;
            }
            (grads, std::mem::take(&mut pending.steps))
        };
        if settings.rescale_partial && steps < settings.grad_accumulation {
            let scale = settings.grad_accumulation as f32 / steps as f32;
            let mut scale = ScaleGrads::<B> {
                grads: &mut grads,
                factor: scale,
                _backend: PhantomData,
            };
            self.model.visit(&mut scale);
        }
        if let Some(max_norm) = settings.clip_grad_norm {
            clip_global_norm::<B, _>(&self.model, &mut grads, max_norm);
        }
        let mut head = TakeGrads::<B> {
            from: &mut grads,
            into: GradientsParams::new(),
            _backend: PhantomData,
        };
        self.model.visit_head(&mut head);
        let head_grads = head.into;
        let rates = settings.learning_rates;
        let mut trainee = self;
        if !head_grads.is_empty() {
            trainee = optim.step(factor * rates.head, trainee, head_grads);
        }
        if !grads.is_empty() {
            trainee = optim.step(factor * rates.body, trainee, grads);
        }
        trainee
    }
}

impl<B: Backend, M: Objective<B>> InferenceStep for Trainee<B, M> {
    type Input = M::Batch;
    type Output = M::Output;

    fn step(&self, batch: M::Batch) -> M::Output {
        self.model.objective(batch).1
    }
}

/// Moves the gradients of the visited parameters from `from` into `into`.
struct TakeGrads<'a, B: AutodiffBackend> {
    from: &'a mut GradientsParams,
    into: GradientsParams,
    _backend: PhantomData<B>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for TakeGrads<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(grad) = self.from.remove::<B::InnerBackend, D>(param.id) {
            self.into.register::<B::InnerBackend, D>(param.id, grad);
        }
    }
}

/// Multiplies every gradient in `grads` by `factor`.
struct ScaleGrads<'a, B: AutodiffBackend> {
    grads: &'a mut GradientsParams,
    factor: f32,
    _backend: PhantomData<B>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for ScaleGrads<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(grad) = self.grads.remove::<B::InnerBackend, D>(param.id) {
            self.grads
                .register::<B::InnerBackend, D>(param.id, grad.mul_scalar(self.factor));
        }
    }
}

/// One saved parameter: its path in the model (`encoder.layer.0.attention.query.adapter.a`),
/// its id (the optimizer's state is keyed by it) and its value.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SavedParam {
    /// Field names from the model's root, dot-separated.
    pub path: String,
    /// The parameter id.
    pub id: u64,
    /// The value.
    pub value: TensorData,
}

/// The checkpoint record of a [`Trainee`]: its trainable parameters (those that require a
/// gradient), not the frozen base, which the run reloads from the base checkpoint (and checks
/// by its fingerprint, see [`super::checkpoint::fingerprint`]). An epoch checkpoint of a model
/// with adapters is therefore the size of the adapters (and head), not of the model.
#[derive(Debug, Clone)]
pub struct TrainableRecord<B: Backend> {
    /// The saved parameters, in visit order.
    pub params: Vec<SavedParam>,
    _backend: PhantomData<fn() -> B>,
}

/// Tracks the path of the parameter being visited or mapped.
#[derive(Default)]
struct PathStack(Vec<String>);

impl PathStack {
    fn enter(&mut self, name: &str) {
        self.0.push(name.to_string());
    }
    fn exit(&mut self) {
        self.0.pop();
    }
    fn path(&self) -> String {
        self.0.join(".")
    }
}

impl<B: Backend> TrainableRecord<B> {
    /// The trainable parameters of `model`.
    pub fn of<M: Module<B>>(model: &M) -> Self {
        struct Collect(PathStack, Vec<SavedParam>);
        impl<B: Backend> ModuleVisitor<B> for Collect {
            fn enter_module(&mut self, name: &str, _container: &str) {
                self.0.enter(name);
            }
            fn exit_module(&mut self, _name: &str, _container: &str) {
                self.0.exit();
            }
            fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
                let value = param.val();
                if value.is_require_grad() {
                    self.1.push(SavedParam {
                        path: self.0.path(),
                        id: param.id.val(),
                        value: value.into_data(),
                    });
                }
            }
        }
        let mut collect = Collect(PathStack::default(), Vec::new());
        model.visit(&mut collect);
        Self {
            params: collect.1,
            _backend: PhantomData,
        }
    }

    /// Whether every saved value is finite.
    pub fn is_finite(&self) -> bool {
        self.params.iter().all(|param| {
            param
                .value
                .iter::<f64>()
                .all(|value: f64| value.is_finite())
        })
    }

    /// `model` with the saved parameters put in place (by path; values and ids). Parameters
    /// the record does not hold keep their values.
    ///
    /// # Panics
    /// When the record holds a parameter `model` does not have, or of another shape: the
    /// run directory's `run.json` check rules this out for a resumed run.
    pub fn apply<M: Module<B>>(self, model: M) -> M {
        struct Load(PathStack, HashMap<String, SavedParam>);
        impl<B: Backend> ModuleMapper<B> for Load {
            fn enter_module(&mut self, name: &str, _container: &str) {
                self.0.enter(name);
            }
            fn exit_module(&mut self, _name: &str, _container: &str) {
                self.0.exit();
            }
            fn map_float<const D: usize>(
                &mut self,
                param: Param<Tensor<B, D>>,
            ) -> Param<Tensor<B, D>> {
                let Some(saved) = self.1.remove(&self.0.path()) else {
                    return param;
                };
                let device = param.lazy_device();
                let expected = param.val().shape();
                assert!(
                    saved.value.shape.iter().eq(expected.iter()),
                    "checkpoint parameter `{}` has shape {:?}, the model's has {:?}",
                    saved.path,
                    saved.value.shape,
                    expected
                );
                let tensor = Tensor::<B, D>::from_data(saved.value, &device);
                param.transform_for_load(tensor, ParamId::from(saved.id))
            }
        }
        let saved = self
            .params
            .into_iter()
            .map(|p| (p.path.clone(), p))
            .collect();
        let mut load = Load(PathStack::default(), saved);
        let model = model.map(&mut load);
        if let Some(path) = load.1.keys().next() {
            panic!("the checkpoint holds `{path}`, which the model does not have");
        }
        model
    }
}

impl<B: Backend> Record<B> for TrainableRecord<B> {
    type Item<S: PrecisionSettings> = Vec<SavedParam>;

    fn into_item<S: PrecisionSettings>(self) -> Self::Item<S> {
        self.params
            .into_iter()
            .map(|p| SavedParam {
                value: p.value.convert::<S::FloatElem>(),
                ..p
            })
            .collect()
    }

    fn from_item<S: PrecisionSettings>(item: Self::Item<S>, _device: &B::Device) -> Self {
        Self {
            params: item,
            _backend: PhantomData,
        }
    }
}

/// The learning rate of one parameter group on the dashboard: the scheduler's factor times the
/// group's peak rate.
#[derive(Clone)]
pub struct GroupLearningRate {
    name: MetricName,
    peak: f64,
    state: NumericMetricState,
}

impl GroupLearningRate {
    /// The rate of a group called `group` (shown as `Learning Rate (group)`, or `Learning
    /// Rate` when empty) with peak rate `peak`.
    pub fn new(group: &str, peak: f64) -> Self {
        let name = if group.is_empty() {
            "Learning Rate".to_string()
        } else {
            format!("Learning Rate ({group})")
        };
        Self {
            name: Arc::new(name),
            peak,
            state: NumericMetricState::new(),
        }
    }
}

impl Metric for GroupLearningRate {
    type Input = ();

    fn update(&mut self, _item: &(), metadata: &MetricMetadata) -> SerializedEntry {
        let lr = metadata.lr.unwrap_or(0.0) * self.peak;
        self.state
            .update(lr, 1, FormatOptions::new(self.name()).precision(2))
    }

    fn clear(&mut self) {
        self.state.reset()
    }

    fn name(&self) -> MetricName {
        self.name.clone()
    }

    fn attributes(&self) -> MetricAttributes {
        NumericAttributes {
            unit: None,
            higher_is_better: false,
        }
        .into()
    }
}

impl Numeric for GroupLearningRate {
    fn value(&self) -> NumericEntry {
        self.state.current_value()
    }

    fn running_value(&self) -> NumericEntry {
        self.state.running_value()
    }
}
