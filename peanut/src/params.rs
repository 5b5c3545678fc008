//! Counting what trains.

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::{Tensor, backend::AutodiffBackend};

/// Number of float parameters of `module` that require gradients, i.e. what an optimizer will
/// update. Only meaningful on an autodiff backend (elsewhere nothing requires gradients), hence
/// the bound.
///
/// For an [`AdaptedLinear`](crate::AdaptedLinear) with a frozen base this equals
/// [`AdaptedLinear::num_adapter_params`](crate::AdaptedLinear::num_adapter_params) and the
/// closed forms of [`PeanutConfig::num_params`](crate::PeanutConfig::num_params) /
/// [`LoraConfig::num_params`](crate::LoraConfig::num_params).
pub fn count_trainable_params<B: AutodiffBackend, M: Module<B>>(module: &M) -> usize {
    struct Counter(usize);
    impl<B: AutodiffBackend> ModuleVisitor<B> for Counter {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            let tensor = param.val();
            if tensor.is_require_grad() {
                self.0 += tensor.shape().num_elements();
            }
        }
    }
    let mut counter = Counter(0);
    module.visit(&mut counter);
    counter.0
}
