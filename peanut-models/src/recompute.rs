//! Gradient checkpointing at the block boundary: the backward pass of a stack of blocks that
//! keeps only each block's input and recomputes the block's activations when its gradients are
//! needed ([`recompute_blocks`], behind [`crate::Llama::recompute_backward`] and
//! [`crate::Vit::recompute_backward`]), and [`add_into`], the gradient sum it and the training
//! step's accumulation share.
//!
//! A training step's memory is mostly activations: every product keeps its input for the
//! backward pass, and a transformer block has a dozen of them. Recomputing the blocks holds the
//! inputs of all blocks and the activations of one, for the price of one more forward pass of
//! the blocks. The gradients are those of the plain backward pass up to float rounding (the
//! same operations on the same values; a few sums add in another order).

use std::marker::PhantomData;

use burn::module::{AutodiffModule, Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::Tensor;
use burn::tensor::backend::AutodiffBackend;

/// The inner (non-autodiff) backend of `B`.
type Inner<B> = <B as AutodiffBackend>::InnerBackend;

/// The gradients of `head(blocks(first))` with respect to every parameter of `model` (which
/// owns `blocks`), each block recomputed in the backward pass.
///
/// 1. The blocks run on the inner backend, without autodiff (`inner_forward` on each block's
///    [`AutodiffModule::valid`] copy), and each block's input is kept.
/// 2. `head` runs with autodiff on the last block's output and is differentiated.
/// 3. From the last block down, each block runs again with autodiff (`forward`) on its kept
///    input and is differentiated alone, starting from the gradient of its output that the
///    block above (or the head) gave its input.
///
/// The first block's backward runs on `first` itself, so that it reaches a trainable
/// embedding. `head` returns the scalar to differentiate and what
/// the caller wants returned with the gradients. The blocks must be deterministic (no
/// dropout): they run twice.
pub fn recompute_blocks<B, M, L, O>(
    model: &M,
    blocks: &[L],
    first: Tensor<B, 3>,
    inner_forward: impl Fn(&L::InnerModule, Tensor<Inner<B>, 3>) -> Tensor<Inner<B>, 3>,
    forward: impl Fn(&L, Tensor<B, 3>) -> Tensor<B, 3>,
    head: impl FnOnce(Tensor<B, 3>) -> (Tensor<B, 1>, O),
) -> (O, GradientsParams)
where
    B: AutodiffBackend,
    M: AutodiffModule<B>,
    L: AutodiffModule<B>,
{
    // The first block runs on `first` itself in the backward pass, so that a trainable
    // embedding's (small) graph gets its gradient; nothing is carried below it.
    let first_graph = first.clone();
    let mut inputs = Vec::with_capacity(blocks.len());
    let mut x = first.inner();
    for block in blocks {
        inputs.push(x.clone());
        x = inner_forward(&block.valid(), x);
    }

    let last = Tensor::<B, 3>::from_inner(x).require_grad();
    let (value, output) = head(last.clone());
    let mut grads = value.backward();
    let mut carried = last.grad_remove(&mut grads);
    let mut total = GradientsParams::from_grads(grads, model);

    for (i, block) in blocks.iter().enumerate().rev() {
        let kept = inputs.pop().expect("one kept input per block");
        // Nothing below gets a gradient when the head did not read the blocks' output.
        let Some(gradient) = carried.take() else {
            break;
        };
        let input = if i == 0 {
            first_graph.clone()
        } else {
            Tensor::from_inner(kept).require_grad()
        };
        let out = forward(block, input.clone());
        // d(Σ out ⊙ g)/d out = g: the block's backward starts from the carried gradient.
        let mut grads = (out * Tensor::from_inner(gradient)).sum().backward();
        carried = input.grad_remove(&mut grads);
        let part = if i == 0 {
            GradientsParams::from_grads(grads, model)
        } else {
            GradientsParams::from_module(&mut grads, block)
        };
        add_into(&mut total, part, model);
    }
    (output, total)
}

/// Adds the gradients of `from` to those of `into`, parameter by parameter of `module`
/// (`into`'s value first: `into + from`); a parameter only `from` has is moved over. Gradients
/// of parameters `module` does not have are dropped.
pub fn add_into<B: AutodiffBackend, M: Module<B>>(
    into: &mut GradientsParams,
    from: GradientsParams,
    module: &M,
) {
    struct Add<'a, B> {
        from: GradientsParams,
        into: &'a mut GradientsParams,
        _backend: PhantomData<B>,
    }
    impl<B: AutodiffBackend> ModuleVisitor<B> for Add<'_, B> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            if let Some(grad) = self.from.remove::<B::InnerBackend, D>(param.id) {
                let sum = match self.into.remove::<B::InnerBackend, D>(param.id) {
                    Some(sum) => sum + grad,
                    None => grad,
                };
                self.into.register::<B::InnerBackend, D>(param.id, sum);
            }
        }
    }
    if from.is_empty() {
        return;
    }
    module.visit(&mut Add::<B> {
        from,
        into,
        _backend: PhantomData,
    });
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::HashMap;

    use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
    use burn::backend::{Autodiff, NdArray};
    use burn::module::{Module, ModuleVisitor, Param, ParamId};
    use burn::nn::loss::CrossEntropyLossConfig;
    use burn::optim::{GradientsParams, Optimizer, SgdConfig};
    use burn::tensor::{Distribution, Int, Tensor, TensorData};
    use peanut::PeanutConfig;

    use crate::adaptable::AdaptableModel;
    use crate::targets::Targets;
    use crate::vit::{Vit, VitConfig};

    type B = Autodiff<NdArray>;

    /// Every gradient in `grads` of a parameter of `model`, by id.
    pub(crate) fn gradient_values<M: Module<B>>(
        model: &M,
        grads: &GradientsParams,
    ) -> HashMap<ParamId, Vec<f32>> {
        struct Collect<'a>(&'a GradientsParams, HashMap<ParamId, Vec<f32>>);
        impl ModuleVisitor<B> for Collect<'_> {
            fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
                if let Some(g) = self.0.get::<NdArray, D>(param.id) {
                    self.1.insert(param.id, g.into_data().to_vec().unwrap());
                }
            }
        }
        let mut collect = Collect(grads, HashMap::new());
        model.visit(&mut collect);
        collect.1
    }

    /// `plain` and `recomputed` hold gradients of the same parameters (at least `least`), none
    /// all zero, equal within float rounding.
    pub(crate) fn assert_same_gradients(
        plain: &HashMap<ParamId, Vec<f32>>,
        recomputed: &HashMap<ParamId, Vec<f32>>,
        least: usize,
    ) {
        assert!(plain.len() >= least, "{} gradients", plain.len());
        let keys = |m: &HashMap<ParamId, Vec<f32>>| m.keys().map(|k| k.val()).collect::<Vec<_>>();
        let (mut a, mut b) = (keys(plain), keys(recomputed));
        a.sort_unstable();
        b.sort_unstable();
        assert_eq!(a, b, "the same parameters get gradients");
        for (id, a) in plain {
            let b = &recomputed[id];
            assert!(a.iter().any(|v| *v != 0.0), "a gradient that is not zero");
            for (x, y) in a.iter().zip(b) {
                assert!(
                    (x - y).abs() <= 1e-5 * (1.0 + x.abs()),
                    "parameter {id}: plain {x}, recomputed {y}"
                );
            }
        }
    }

    fn vit_loss(logits: Tensor<B, 2>, labels: Tensor<B, 1, Int>) -> Tensor<B, 1> {
        CrossEntropyLossConfig::new()
            .init(&logits.device())
            .forward(logits, labels)
    }

    /// A ViT with adapters on every block and a trainable head, or trained whole (so that the
    /// embeddings' graph joins the first block's backward).
    fn check_vit(full: bool) {
        crate::ops::register_autodiff::<NdArray, NoCheckpointing>();
        let device = Default::default();
        let config = VitConfig::tiny();
        let mut model: Vit<B> = config.init(2, &device).unwrap();
        if full {
            model = model.with_trainable_base(true);
        } else {
            model
                .add_adapters(&Targets::vit_qv_mlp(), &PeanutConfig::new(4).into(), 5)
                .unwrap();
            model = model.with_trainable_head(true);
        }
        let images =
            Tensor::<B, 4>::random([3, 3, 16, 16], Distribution::Normal(0.0, 1.0), &device);
        let labels =
            Tensor::<B, 1, Int>::from_data(TensorData::new(vec![0i64, 3, 1], [3]), &device);
        let loss = |model: &Vit<B>| vit_loss(model.forward(images.clone()), labels.clone());
        // One step first, so that no adapter factor is zero.
        let grads = GradientsParams::from_grads(loss(&model).backward(), &model);
        let model = SgdConfig::new().init().step(0.5, model, grads);

        let plain = gradient_values(
            &model,
            &GradientsParams::from_grads(loss(&model).backward(), &model),
        );
        let (value, grads) = model.recompute_backward(images.clone(), |logits| {
            let value = vit_loss(logits, labels.clone());
            (value.clone(), value)
        });
        let recomputed = gradient_values(&model, &grads);
        let want = loss(&model).into_scalar();
        assert!((value.into_scalar() - want).abs() <= 1e-6, "same loss");
        assert_same_gradients(&plain, &recomputed, 2 * config.num_hidden_layers);
    }

    #[test]
    fn vit_recompute_backward_equals_the_plain_backward() {
        check_vit(false);
        check_vit(true);
    }
}
