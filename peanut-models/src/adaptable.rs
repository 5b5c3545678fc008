//! [`AdaptableModel`]: what every model of this crate offers around its adapter seams — adding,
//! loading, saving, merging adapters, choosing what trains, and exporting Hugging Face tensors.

use std::collections::HashMap;
use std::path::Path;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::{Tensor, backend::Backend};
use peanut::io::PeftPaths;
use peanut::{AdaptedLinear, Adapter, AdapterConfig};

use crate::checkpoint::TensorMap;
use crate::error::Result;
use crate::targets::{LinearSite, Targets};

/// A model whose every linear is an [`AdaptedLinear`] at a Hugging Face module path.
///
/// Implementors list their linears; everything else is provided.
pub trait AdaptableModel<B: Backend>: Module<B> + Sized {
    /// Every linear with its site (full path, block index, path inside the block), in model
    /// order.
    fn linears(&self) -> Vec<(LinearSite, &AdaptedLinear<B>)>;

    /// Every linear by full path, mutably.
    fn linears_mut(&mut self) -> Vec<(String, &mut AdaptedLinear<B>)>;

    /// Rebuilds the model with `f` applied to every linear of [`Self::linears_mut`] (by value,
    /// for operations such as [`AdaptedLinear::unfreeze_base`] that consume the layer).
    fn map_linears(
        mut self,
        f: &mut dyn FnMut(&str, AdaptedLinear<B>) -> AdaptedLinear<B>,
    ) -> Self {
        for (path, linear) in self.linears_mut() {
            // The clone shares the tensors; the old layer is dropped when replaced.
            *linear = f(&path, linear.clone());
        }
        self
    }

    /// How module paths translate to and from the names peft uses for this model.
    fn peft_paths(&self) -> Box<dyn PeftPaths>;

    /// The sites of every linear.
    fn linear_sites(&self) -> Vec<LinearSite> {
        self.linears().into_iter().map(|(site, _)| site).collect()
    }

    /// Adds one adapter built from `config` to every linear `targets` selects; each gets its own
    /// seed, `peanut::init::layer_seed(seed, path)`. Returns the adapted paths.
    ///
    /// # Errors
    /// A target that matches nothing, a bad layer index, an invalid adapter configuration.
    fn add_adapters(
        &mut self,
        targets: &Targets,
        config: &AdapterConfig,
        seed: u64,
    ) -> Result<Vec<String>> {
        let chosen = targets.resolve(&self.linear_sites())?;
        // `init` checks the configuration: an invalid one fails at the first chosen layer,
        // before any adapter is added.
        for (path, layer) in self.linears_mut() {
            if chosen.contains(&path) {
                let [d_input, d_output] = layer.dims();
                let device = layer.device();
                let layer_seed = peanut::init::layer_seed(seed, &path);
                layer.push_adapter(config.init(d_input, d_output, layer_seed, &device)?);
            }
        }
        Ok(chosen)
    }

    /// Every adapter with the path of its linear (for `peanut::io::save` / `save_peft`).
    fn adapters(&self) -> Vec<(String, &Adapter<B>)> {
        self.linears()
            .into_iter()
            .flat_map(|(site, layer)| layer.adapters.iter().map(move |a| (site.path.clone(), a)))
            .collect()
    }

    /// Loads an adapter directory — this crate's format or peft's (`adapter_config.json`, with
    /// module names as transformers spells them today or as older versions did) — onto the
    /// model, replacing adapters on the layers it covers. Linear modules a peft file saved
    /// whole (`modules_to_save`, such as the classifier head) replace those layers' base
    /// weights. Returns the adapted paths.
    fn load_adapters(&mut self, dir: &Path) -> Result<Vec<String>> {
        let device = self
            .devices()
            .into_iter()
            .next()
            .expect("a model has parameters");
        let paths = self.peft_paths();
        let (adapters, saved) = peanut::io::load_any_with_saved::<B>(dir, paths.as_ref(), &device)?;
        let names = adapters.keys().cloned().collect();
        peanut::io::attach(self.linears_mut(), adapters)?;
        peanut::io::attach_saved(self.linears_mut(), &saved)?;
        Ok(names)
    }

    /// Saves the adapters in peft's format (loadable by `PeftModel.from_pretrained` on the
    /// transformers model).
    fn save_adapters_peft(&self, dir: &Path, base_model_name_or_path: Option<&str>) -> Result<()> {
        let paths = self.peft_paths();
        peanut::io::save_peft(
            dir,
            self.adapters(),
            paths.as_ref(),
            base_model_name_or_path,
        )?;
        Ok(())
    }

    /// Saves the adapters in this workspace's own format (any method, any activation).
    fn save_adapters(&self, dir: &Path) -> Result<()> {
        peanut::io::save(dir, self.adapters())?;
        Ok(())
    }

    /// Caches `W0 + ΣΔW` in every adapted linear: inference then costs what the base costs.
    fn merge_adapters(&mut self) {
        for (_, layer) in self.linears_mut() {
            layer.merge_in_place();
        }
    }

    /// Undoes [`merge_adapters`](AdaptableModel::merge_adapters) (exact: `W0` is kept).
    fn unmerge_adapters(&mut self) {
        for (_, layer) in self.linears_mut() {
            layer.unmerge();
        }
    }

    /// Removes every adapter.
    fn clear_adapters(&mut self) {
        for (_, layer) in self.linears_mut() {
            layer.unmerge();
            layer.adapters.clear();
        }
    }

    /// Number of adapter parameters.
    fn num_adapter_params(&self) -> usize {
        self.linears()
            .into_iter()
            .map(|(_, layer)| layer.num_adapter_params())
            .sum()
    }

    /// Full fine-tuning switch: `true` makes every parameter train (base weights, norms,
    /// embeddings, adapters); `false` freezes everything but the adapters.
    fn with_trainable_base(self, trainable: bool) -> Self {
        let model = self.map(&mut RequireGrad(trainable));
        model.map_linears(&mut |_, layer| {
            let mut layer = layer.unfreeze_base(trainable);
            layer.adapters = std::mem::take(&mut layer.adapters)
                .into_iter()
                .map(|adapter| adapter.map(&mut RequireGrad(true)))
                .collect();
            layer
        })
    }

    /// The model's tensors under their Hugging Face keys, in PyTorch's layout, with every
    /// linear merged (`W0 + ΣΔW`, transposed back to `[d_output, d_input]`). Adapter tensors
    /// are not included: the result is a plain checkpoint.
    fn merged_tensors(&self) -> TensorMap {
        let merged: HashMap<String, Tensor<B, 2>> = self
            .linears()
            .into_iter()
            .filter(|(_, layer)| !layer.adapters.is_empty())
            .map(|(site, layer)| (site.path, layer.merged_weight()))
            .collect();
        let mut exporter = Exporter {
            stack: Vec::new(),
            merged,
            out: TensorMap::new(),
        };
        self.visit(&mut exporter);
        exporter.out
    }
}

/// Sets `require_grad` on every float parameter (widening half-precision ones that start to
/// train to f32, see `peanut::precision`).
#[derive(Debug, Clone, Copy)]
pub struct RequireGrad(pub bool);

impl<B: Backend> ModuleMapper<B> for RequireGrad {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        peanut::precision::set_trainable(param, self.0)
    }
}

/// Walks a model's parameters with their paths and collects Hugging Face tensors.
struct Exporter<B: Backend> {
    /// `(field name, type of the struct that owns the field)` down to the current module.
    stack: Vec<(String, String)>,
    merged: HashMap<String, Tensor<B, 2>>,
    out: TensorMap,
}

impl<B: Backend> ModuleVisitor<B> for Exporter<B> {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.stack
            .push((name.to_string(), container_type.to_string()));
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.stack.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let names: Vec<&str> = self.stack.iter().map(|(name, _)| name.as_str()).collect();
        let owner = self
            .stack
            .iter()
            .position(|(_, container)| container == "Struct:AdaptedLinear");
        let (key, tensor) = match owner {
            None => (names.join("."), param.val().into_data()),
            Some(i) if names[i] != "base" => return, // adapters are merged, not exported
            Some(i) => {
                let linear = names[..i].join(".");
                let field = names.last().copied().unwrap_or("weight");
                let key = format!("{linear}.{field}");
                let data = if D == 2 {
                    let weight = match self.merged.get(&linear) {
                        Some(merged) => merged.clone(),
                        None => Tensor::<B, 2>::from_data(param.val().into_data(), &param.device()),
                    };
                    weight.transpose().into_data()
                } else {
                    param.val().into_data()
                };
                (key, data)
            }
        };
        let shape = tensor.shape.to_vec();
        let values = tensor
            .convert::<f32>()
            .into_vec::<f32>()
            .expect("float tensor");
        self.out.insert(key, (shape, values));
    }
}
