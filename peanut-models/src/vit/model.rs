//! [`Vit`]: the ViT image classifier, loadable from transformers checkpoints.

use std::path::Path;

use burn::module::Module;
use burn::tensor::{Tensor, backend::Backend};
use peanut::AdaptedLinear;
use peanut::io::PeftPaths;
use peanut::{FrozenStorage, Precision, Quantization};

use super::config::VitConfig;
use super::embeddings::VitEmbeddings;
use super::layer::{VitLayer, layer_norm};
use super::paths::VitPeftPaths;
use crate::adaptable::AdaptableModel;
use crate::checkpoint::{CONFIG_FILE, Checkpoint, write_checkpoint};
use crate::error::Result;
use crate::layer_norm::LayerNorm;
use crate::source::Source;
use crate::targets::LinearSite;

/// The stack of encoder blocks (`vit.encoder.layer.N`).
#[derive(Module, Debug)]
pub struct VitEncoder<B: Backend> {
    /// The blocks, in order.
    pub layer: Vec<VitLayer<B>>,
}

/// The ViT backbone (`vit.*` in a `ViTForImageClassification` checkpoint).
#[derive(Module, Debug)]
pub struct VitModel<B: Backend> {
    /// Patch, CLS and position embeddings.
    pub embeddings: VitEmbeddings<B>,
    /// The blocks.
    pub encoder: VitEncoder<B>,
    /// The final norm.
    pub layernorm: LayerNorm<B>,
}

/// A ViT image classifier with the module tree of transformers' `ViTForImageClassification`:
/// every field path equals a checkpoint key, and every linear — attention, MLP and the
/// classifier — is an [`AdaptedLinear`], so the same type trains plain, with PEANuT or with
/// LoRA.
///
/// `logits = classifier(layernorm(encoder(embeddings(pixels)))[:, 0])`.
///
/// Freshly built or loaded, every parameter is frozen; add adapters
/// ([`AdaptableModel::add_adapters`]), train the head ([`Vit::with_trainable_head`]) or
/// everything ([`AdaptableModel::with_trainable_base`]).
#[derive(Module, Debug)]
pub struct Vit<B: Backend> {
    /// The backbone.
    pub vit: VitModel<B>,
    /// The head on the CLS token, `[hidden_size, num_labels]`.
    pub classifier: AdaptedLinear<B>,
    /// The hyper-parameters.
    #[module(skip)]
    pub config: VitConfig,
}

/// Options for [`Vit::from_pretrained`].
#[derive(Debug, Clone, Default)]
pub struct VitLoadOptions {
    /// Number of classes; when it differs from the checkpoint's head (or the checkpoint has
    /// none), the head is drawn fresh from `head_seed`.
    pub num_labels: Option<usize>,
    /// Input image side; when it differs from the checkpoint's, position embeddings are
    /// resized bicubically.
    pub image_size: Option<usize>,
    /// Seed of a fresh head.
    pub head_seed: u64,
    /// The type the backbone's linear weights are stored in, each cast as it is read
    /// (`peanut::precision`). The classifier head is read in f32 (a run trains it); cast it
    /// with `peanut::cast_frozen` where it stays frozen.
    pub precision: Precision,
    /// The format the backbone's linear weights are quantized in as they are read, if any
    /// (`peanut::quant`); the head never is.
    pub quantization: Option<Quantization>,
}

/// What [`Vit::from_pretrained`] did beyond reading tensors.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VitLoadReport {
    /// Why the classifier is new, when it is (missing from the checkpoint, or another number
    /// of labels).
    pub fresh_head: Option<String>,
    /// `(checkpoint grid side, new grid side)` when position embeddings were resized.
    pub resized_positions: Option<(usize, usize)>,
    /// Checkpoint keys the model does not use (e.g. `vit.pooler.*`).
    pub unused_keys: Vec<String>,
}

impl VitLoadReport {
    /// One human-readable line per thing worth saying.
    pub fn notes(&self) -> Vec<String> {
        let mut notes = Vec::new();
        if let Some(reason) = &self.fresh_head {
            notes.push(format!("new classifier head: {reason}"));
        }
        if let Some((from, to)) = self.resized_positions {
            notes.push(format!(
                "position embeddings resized from a {from}×{from} to a {to}×{to} grid"
            ));
        }
        if !self.unused_keys.is_empty() {
            notes.push(format!("unused checkpoint tensors: {:?}", self.unused_keys));
        }
        notes
    }
}

impl VitConfig {
    /// A ViT with weights drawn from `seed` (benchmarks, tests, training from scratch).
    pub fn init<B: Backend>(&self, seed: u64, device: &B::Device) -> Result<Vit<B>> {
        self.init_in(seed, device, Precision::F32)
    }

    /// [`VitConfig::init`] with the backbone's linear weights stored as `storage` says (a
    /// [`Precision`] or a [`FrozenStorage`]: cast or quantized as each is drawn, see
    /// `peanut::precision` and `peanut::quant`); the head in `storage`'s precision.
    pub fn init_in<B: Backend>(
        &self,
        seed: u64,
        device: &B::Device,
        storage: impl Into<FrozenStorage>,
    ) -> Result<Vit<B>> {
        self.validate()?;
        let storage = storage.into();
        let mut source = Source::random(seed, device).with_storage(storage);
        Ok(Vit::build(
            self.clone(),
            "",
            &mut source,
            &mut Source::random(seed ^ 1, device).with_precision(storage.precision),
        )?
        .0)
    }
}

impl<B: Backend> Vit<B> {
    fn build(
        config: VitConfig,
        backbone: &str,
        source: &mut Source<'_, B>,
        head_source: &mut Source<'_, B>,
    ) -> Result<(Self, Option<usize>)> {
        let (embeddings, resized) =
            VitEmbeddings::build(&config, &format!("{backbone}embeddings"), source)?;
        let layer = (0..config.num_hidden_layers)
            .map(|i| VitLayer::build(&config, &format!("{backbone}encoder.layer.{i}"), source))
            .collect::<Result<Vec<_>>>()?;
        let layernorm = layer_norm(&config, &format!("{backbone}layernorm"), source)?;
        let classifier = head_source.head(
            "classifier",
            config.hidden_size,
            config.num_labels,
            config.initializer_range,
        )?;
        let vit = VitModel {
            embeddings,
            encoder: VitEncoder { layer },
            layernorm,
        };
        Ok((
            Self {
                vit,
                classifier,
                config,
            },
            resized,
        ))
    }

    /// Loads a transformers ViT directory: `config.json` plus `model.safetensors` or
    /// `model.safetensors.index.json` (`ViTForImageClassification`, or a bare `ViTModel` such
    /// as `google/vit-base-patch16-224-in21k`, whose keys lack the `vit.` prefix).
    ///
    /// # Errors
    /// Missing or malformed files, an unsupported architecture, a missing tensor or one whose
    /// shape disagrees with `config.json` — each naming the file and key.
    pub fn from_pretrained(
        dir: &Path,
        options: &VitLoadOptions,
        device: &B::Device,
    ) -> Result<(Self, VitLoadReport)> {
        let mut config = VitConfig::from_hf_file(&dir.join(CONFIG_FILE))?;
        let checkpoint = Checkpoint::open(dir)?;
        let backbone = if checkpoint.contains("vit.embeddings.cls_token")
            || !checkpoint.contains("embeddings.cls_token")
        {
            "vit."
        } else {
            ""
        };
        let mut report = VitLoadReport::default();
        let stored_labels = checkpoint.shape("classifier.weight");
        if let Some(size) = options.image_size {
            config.image_size = size;
        }
        if let Some(labels) = options.num_labels {
            config.num_labels = labels;
        }
        if config
            .id2label
            .as_ref()
            .is_some_and(|names| names.len() != config.num_labels)
        {
            config.id2label = None;
        }
        config.validate()?;
        let head_fits =
            stored_labels.as_deref() == Some(&[config.num_labels, config.hidden_size][..]);
        if !head_fits {
            report.fresh_head = Some(match stored_labels {
                None => format!(
                    "`{}` has no `classifier.weight`",
                    checkpoint.file_of("classifier.weight").display()
                ),
                Some(shape) => format!(
                    "the checkpoint's head has shape {shape:?}, {} labels were asked for",
                    config.num_labels
                ),
            });
        }
        let storage = FrozenStorage::new(options.precision).with_quantization(options.quantization);
        let mut source = Source::checkpoint(&checkpoint, device).with_storage(storage);
        // The head is read (or drawn) in f32 whatever `precision` says: it is the one matrix
        // a run trains besides the adapters, and casting it down to widen it back when it
        // starts to train would lose its low mantissa bits. `peanut::cast_frozen` casts it
        // later where it stays frozen.
        let mut head_source = if head_fits {
            Source::checkpoint(&checkpoint, device)
        } else {
            Source::random(options.head_seed, device)
        };
        let (model, resized) = Self::build(config, backbone, &mut source, &mut head_source)?;
        report.resized_positions = resized.map(|from| (from, model.config.grid_size()));
        let used: std::collections::HashSet<String> = model
            .merged_tensors()
            .into_keys()
            .map(|key| {
                key.strip_prefix("vit.")
                    .map_or(key.clone(), |rest| format!("{backbone}{rest}"))
            })
            .collect();
        report.unused_keys = checkpoint
            .keys()
            .filter(|key| !used.contains(*key))
            .map(str::to_string)
            .collect();
        Ok((model, report))
    }

    /// Makes the classifier head train (or freezes it again), as the paper does alongside the
    /// adapters.
    pub fn with_trainable_head(mut self, trainable: bool) -> Self {
        self.classifier = self.classifier.unfreeze_base(trainable);
        self
    }

    /// The final, normalized token vectors.
    ///
    /// # Shapes
    /// - pixel_values: `[batch, num_channels, image_size, image_size]`
    /// - output: `[batch, 1 + grid², hidden_size]`
    pub fn features(&self, pixel_values: Tensor<B, 4>) -> Tensor<B, 3> {
        let mut x = self.vit.embeddings.forward(pixel_values);
        for layer in &self.vit.encoder.layer {
            x = layer.forward(x);
        }
        self.vit.layernorm.forward(x)
    }

    /// The gradients of a loss of the class logits, with each encoder block's activations
    /// recomputed in the backward pass instead of kept: gradient checkpointing at the block
    /// boundary ([`crate::recompute`]), as [`crate::Llama::recompute_backward`]. The gradients
    /// are those of the backward of `loss(self.forward(pixel_values))` up to float rounding.
    ///
    /// # Shapes
    /// - pixel_values: `[batch, num_channels, image_size, image_size]`
    pub fn recompute_backward<O>(
        &self,
        pixel_values: Tensor<B, 4>,
        loss: impl FnOnce(Tensor<B, 2>) -> (Tensor<B, 1>, O),
    ) -> (O, burn::optim::GradientsParams)
    where
        B: burn::tensor::backend::AutodiffBackend,
    {
        let first = self.vit.embeddings.forward(pixel_values);
        crate::recompute::recompute_blocks(
            self,
            &self.vit.encoder.layer,
            first,
            |layer, x| layer.forward(x),
            |layer, x| layer.forward(x),
            |x| loss(self.logits_of_features(self.vit.layernorm.forward(x))),
        )
    }

    /// Class logits from the CLS token.
    ///
    /// # Shapes
    /// - pixel_values: `[batch, num_channels, image_size, image_size]`
    /// - output: `[batch, num_labels]`
    pub fn forward(&self, pixel_values: Tensor<B, 4>) -> Tensor<B, 2> {
        self.logits_of_features(self.features(pixel_values))
    }

    /// The classifier on the CLS token of [`Vit::features`].
    fn logits_of_features(&self, features: Tensor<B, 3>) -> Tensor<B, 2> {
        let [batch, _, d] = features.dims();
        let cls = features.narrow(1, 0, 1).reshape([batch, d]);
        self.classifier.forward(cls)
    }

    /// Writes the model, adapters merged, as a transformers `ViTForImageClassification`
    /// checkpoint (`config.json` + `model.safetensors`, f32, the import's keys), each file
    /// replaced atomically; `config.json` names the classes by `config.id2label` when set.
    ///
    /// # Errors
    /// A non-finite merged weight (nothing is written), or an I/O error.
    pub fn save_merged(&self, dir: &Path) -> Result<()> {
        write_checkpoint(dir, &self.merged_tensors(), &self.config.to_hf_json())
    }

    /// Adds the classifier head to a peft adapter directory written by
    /// [`AdaptableModel::save_adapters_peft`], as peft's `modules_to_save` (`classifier`), so
    /// `PeftModel.from_pretrained` on the base checkpoint restores the trained head too.
    pub fn add_head_to_peft(&self, peft_dir: &Path) -> Result<()> {
        let head = peanut::io::SavedModule::from_linear(&self.classifier);
        let modules = std::collections::BTreeMap::from([("classifier".to_string(), head)]);
        peanut::io::add_modules_to_save(peft_dir, &modules, &VitPeftPaths)?;
        Ok(())
    }
}

const VIT_LINEARS: [&str; 6] = [
    "attention.attention.query",
    "attention.attention.key",
    "attention.attention.value",
    "attention.output.dense",
    "intermediate.dense",
    "output.dense",
];

impl<B: Backend> VitLayer<B> {
    fn linears(&self) -> [&AdaptedLinear<B>; 6] {
        [
            &self.attention.attention.query,
            &self.attention.attention.key,
            &self.attention.attention.value,
            &self.attention.output.dense,
            &self.intermediate.dense,
            &self.output.dense,
        ]
    }

    fn linears_mut(&mut self) -> [&mut AdaptedLinear<B>; 6] {
        [
            &mut self.attention.attention.query,
            &mut self.attention.attention.key,
            &mut self.attention.attention.value,
            &mut self.attention.output.dense,
            &mut self.intermediate.dense,
            &mut self.output.dense,
        ]
    }
}

impl<B: Backend> AdaptableModel<B> for Vit<B> {
    fn linears(&self) -> Vec<(LinearSite, &AdaptedLinear<B>)> {
        let mut out = Vec::new();
        for (i, layer) in self.vit.encoder.layer.iter().enumerate() {
            for (local, linear) in VIT_LINEARS.iter().zip(layer.linears()) {
                let site = LinearSite {
                    path: format!("vit.encoder.layer.{i}.{local}"),
                    layer: Some(i),
                    local: local.to_string(),
                };
                out.push((site, linear));
            }
        }
        let head = LinearSite {
            path: "classifier".into(),
            layer: None,
            local: "classifier".into(),
        };
        out.push((head, &self.classifier));
        out
    }

    fn linears_mut(&mut self) -> Vec<(String, &mut AdaptedLinear<B>)> {
        let mut out = Vec::new();
        for (i, layer) in self.vit.encoder.layer.iter_mut().enumerate() {
            for (local, linear) in VIT_LINEARS.iter().zip(layer.linears_mut()) {
                out.push((format!("vit.encoder.layer.{i}.{local}"), linear));
            }
        }
        out.push(("classifier".into(), &mut self.classifier));
        out
    }

    fn peft_paths(&self) -> Box<dyn PeftPaths> {
        Box::new(VitPeftPaths)
    }
}
