//! [`Llama`]: a LLaMA-style causal language model, loadable from transformers checkpoints.

use std::path::Path;

use burn::module::Module;
use burn::nn::Embedding;
use burn::optim::GradientsParams;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{Int, Tensor, backend::Backend};
use peanut::AdaptedLinear;
use peanut::io::PeftPaths;
use peanut::precision::{cast_to, linear_as_stored, set_trainable};
use peanut::{FrozenStorage, Precision};

use super::attention::attention_mask;
use super::cache::KvCache;
use super::config::LlamaConfig;
use super::layer::{LlamaDecoderLayer, rms_norm};
use super::paths::LlamaPeftPaths;
use super::rope::{inverse_frequencies, rotary_tables};
use crate::adaptable::AdaptableModel;
use crate::checkpoint::{CONFIG_FILE, Checkpoint, write_checkpoint};
use crate::error::{ModelError, Result};
use crate::rms_norm::RmsNorm;
use crate::source::{Init, Source};
use crate::targets::LinearSite;

/// The decoder (`model.*` in a `LlamaForCausalLM` checkpoint).
#[derive(Module, Debug)]
pub struct LlamaModel<B: Backend> {
    /// Token embeddings, `[vocab_size, hidden_size]`.
    pub embed_tokens: Embedding<B>,
    /// The blocks.
    pub layers: Vec<LlamaDecoderLayer<B>>,
    /// The final norm.
    pub norm: RmsNorm<B>,
}

/// A LLaMA-style causal LM with the module tree of transformers' `LlamaForCausalLM`: RMSNorm,
/// rotary positions (with llama3 scaling), grouped-query attention, SwiGLU, optionally tied
/// embeddings; Qwen2's q/k/v biases by configuration. Every linear is an [`AdaptedLinear`].
///
/// `logits = lm_head(norm(layers(embed_tokens(ids))))`, with `lm_head = embed_tokensᵀ` when
/// tied. Built or loaded, everything is frozen; see [`AdaptableModel`].
#[derive(Module, Debug)]
pub struct Llama<B: Backend> {
    /// The decoder.
    pub model: LlamaModel<B>,
    /// The output head `[hidden_size, vocab_size]`; `None` when tied to the embeddings.
    pub lm_head: Option<AdaptedLinear<B>>,
    /// The hyper-parameters.
    #[module(skip)]
    pub config: LlamaConfig,
    /// Rotary inverse frequencies.
    #[module(skip)]
    inverse_frequencies: Vec<f64>,
}

impl LlamaConfig {
    /// A model with weights drawn from `seed`.
    pub fn init<B: Backend>(&self, seed: u64, device: &B::Device) -> Result<Llama<B>> {
        self.init_in(seed, device, Precision::F32)
    }

    /// [`LlamaConfig::init`] with the frozen matrices stored as `storage` says (a
    /// [`Precision`] or a [`FrozenStorage`]), each cast or quantized as it is drawn (see
    /// [`Llama::from_pretrained_in`]).
    pub fn init_in<B: Backend>(
        &self,
        seed: u64,
        device: &B::Device,
        storage: impl Into<FrozenStorage>,
    ) -> Result<Llama<B>> {
        self.validate()?;
        Llama::build(
            self.clone(),
            &mut Source::random(seed, device).with_storage(storage),
        )
    }
}

impl<B: Backend> Llama<B> {
    fn build(config: LlamaConfig, source: &mut Source<'_, B>) -> Result<Self> {
        let d = config.hidden_size;
        let embed = source.param(
            "model.embed_tokens.weight",
            [config.vocab_size, d],
            Init::Uniform(0.02 * 3f64.sqrt()),
        )?;
        let layers = (0..config.num_hidden_layers)
            .map(|i| LlamaDecoderLayer::build(&config, &format!("model.layers.{i}"), source))
            .collect::<Result<Vec<_>>>()?;
        let norm = rms_norm(&config, "model.norm", source)?;
        let lm_head = if config.tie_word_embeddings {
            None
        } else {
            Some(source.linear("lm_head", d, config.vocab_size, false)?)
        };
        Ok(Self {
            model: LlamaModel {
                embed_tokens: Embedding { weight: embed },
                layers,
                norm,
            },
            lm_head,
            inverse_frequencies: inverse_frequencies(&config),
            config,
        })
    }

    /// Loads a transformers `LlamaForCausalLM` / `Qwen2ForCausalLM` directory (`config.json`
    /// plus `model.safetensors` or a sharded index; f32, f16 or bf16 on disk).
    ///
    /// # Errors
    /// Missing or malformed files, an unsupported architecture, a missing tensor or one whose
    /// shape disagrees with `config.json` — each naming the file and key.
    pub fn from_pretrained(dir: &Path, device: &B::Device) -> Result<Self> {
        Self::from_pretrained_in(dir, device, Precision::F32)
    }

    /// [`Llama::from_pretrained`] with the linear weights and the token embedding stored in
    /// `storage`'s precision as they are read (one tensor at a time in f32, so a half-precision
    /// model never holds its f32 copy; see `peanut::precision`); when `storage` quantizes, the
    /// linear weights (not the embedding) are quantized as they are read (`peanut::quant`).
    /// The backend must support the types ([`Precision::is_supported`],
    /// `peanut::Quantization::is_supported`).
    ///
    /// # Errors
    /// As [`Llama::from_pretrained`]; also a weight that cannot be quantized
    /// ([`crate::ModelError::Quantize`]).
    pub fn from_pretrained_in(
        dir: &Path,
        device: &B::Device,
        storage: impl Into<FrozenStorage>,
    ) -> Result<Self> {
        let config = LlamaConfig::from_hf_file(&dir.join(CONFIG_FILE))?;
        let checkpoint = Checkpoint::open(dir)?;
        let mut source = Source::checkpoint(&checkpoint, device).with_storage(storage);
        Self::build(config, &mut source)
    }

    /// Makes the output head train (or freezes it). With tied embeddings this is the
    /// embedding matrix.
    pub fn with_trainable_head(mut self, trainable: bool) -> Self {
        match self.lm_head.take() {
            Some(head) => self.lm_head = Some(head.unfreeze_base(trainable)),
            None => {
                let weight = self.model.embed_tokens.weight.clone();
                self.model.embed_tokens.weight = set_trainable(weight, trainable);
            }
        }
        self
    }

    /// Logits of every position; with `cache`, `input_ids` continue the cached sequence.
    ///
    /// # Shapes
    /// - input_ids: `[batch, len]`
    /// - output: `[batch, len, vocab_size]`
    pub fn forward(
        &self,
        input_ids: Tensor<B, 2, Int>,
        cache: Option<&mut KvCache<B>>,
    ) -> Tensor<B, 3> {
        let x = self.hidden_states(input_ids, &[], cache);
        match &self.lm_head {
            Some(head) => head.forward(x),
            None => linear_as_stored(x, self.model.embed_tokens.weight.val().transpose(), None),
        }
    }

    /// The final normalised hidden states of every position (what the output head reads; see
    /// [`Llama::head_loss`]).
    ///
    /// # Shapes
    /// - input_ids: `[batch, len]`
    /// - output: `[batch, len, hidden_size]`
    pub fn hidden(&self, input_ids: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        self.hidden_states(input_ids, &[], None)
    }

    /// The mean cross-entropy of the output head's logits at `hidden` against `targets`, and
    /// each row's most likely token. With tied embeddings this is
    /// [`crate::ops::linear_cross_entropy`], which never holds the `[rows, vocab]` logits; an
    /// untied head computes them with its layer (adapters included) and burn's loss.
    ///
    /// # Shapes
    /// - hidden: `[rows, hidden_size]`
    /// - targets: `[rows]`
    /// - output: the loss `[1]` and the argmax `[rows]`
    pub fn head_loss(
        &self,
        hidden: Tensor<B, 2>,
        targets: Tensor<B, 1, Int>,
    ) -> crate::ops::LossAndArgmax<B> {
        match &self.lm_head {
            Some(head) => crate::ops::cross_entropy(head.forward(hidden), targets),
            None => crate::ops::linear_cross_entropy(
                hidden,
                self.model.embed_tokens.weight.val(),
                targets,
            ),
        }
    }

    /// Logits of the last position only, what generation needs: the output head (a
    /// `hidden_size × vocab_size` product per position, the largest single matrix of small
    /// models) runs on one row per sequence instead of all of them.
    ///
    /// # Shapes
    /// - input_ids: `[batch, len]`
    /// - output: `[batch, vocab_size]`
    pub fn forward_last(
        &self,
        input_ids: Tensor<B, 2, Int>,
        cache: Option<&mut KvCache<B>>,
    ) -> Tensor<B, 2> {
        self.forward_last_padded(input_ids, &[], cache)
    }

    /// [`Llama::forward_last`] for a batch of sequences of different lengths, left-padded to
    /// one length: sequence `r` starts with `pads[r]` padding tokens (any id), which no other
    /// position attends to and which do not count as positions (its first real token is
    /// position 0, as transformers' `generate` places it with an attention mask). With `cache`,
    /// `pads` stay those of the prompt. No `pads` (or all 0): plain [`Llama::forward_last`].
    ///
    /// # Shapes
    /// - input_ids: `[batch, len]`
    /// - pads: `batch` values, or none
    /// - output: `[batch, vocab_size]`
    pub fn forward_last_padded(
        &self,
        input_ids: Tensor<B, 2, Int>,
        pads: &[usize],
        cache: Option<&mut KvCache<B>>,
    ) -> Tensor<B, 2> {
        let x = self.hidden_states(input_ids, pads, cache);
        let [batch, len, d] = x.dims();
        let last = x.narrow(1, len - 1, 1).reshape([batch, d]);
        match &self.lm_head {
            Some(head) => head.forward(last),
            // `E·hᵀ`, in the embedding's stored layout and type (see `ops::logits_of`).
            None => crate::ops::logits_of(last, &self.model.embed_tokens.weight.val()),
        }
    }

    /// The final normalised hidden states (before the output head).
    ///
    /// # Shapes
    /// - input_ids: `[batch, len]`
    /// - output: `[batch, len, hidden_size]`
    fn hidden_states(
        &self,
        input_ids: Tensor<B, 2, Int>,
        pads: &[usize],
        mut cache: Option<&mut KvCache<B>>,
    ) -> Tensor<B, 3> {
        let [_, len] = input_ids.dims();
        let offset = cache.as_ref().map_or(0, |cache| cache.len());
        let device = input_ids.device();
        // Unpadded batches share one table and one mask row.
        let pads = if pads.iter().all(|&p| p == 0) {
            &[][..]
        } else {
            pads
        };
        let (cos, sin) = rotary_tables::<B>(&self.inverse_frequencies, offset, len, pads, &device);
        let mask = attention_mask::<B>(len, offset + len, pads, &device);
        let mut x = self.embed(input_ids);
        for (i, layer) in self.model.layers.iter().enumerate() {
            let layer_cache = cache.as_deref_mut().map(|cache| (cache, i));
            x = layer.forward(x, &cos, &sin, &mask, layer_cache);
        }
        self.model.norm.forward(x)
    }

    /// The token embeddings of `input_ids`, in the norms' type (rows of a half-precision
    /// embedding are widened to f32).
    fn embed(&self, input_ids: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        let embedded = self.model.embed_tokens.forward(input_ids);
        cast_to(embedded, self.model.norm.weight.val().dtype())
    }

    /// An empty cache for this model.
    pub fn new_cache(&self) -> KvCache<B> {
        KvCache::new(self.config.num_hidden_layers)
    }

    /// Writes the model, adapters merged, as a transformers checkpoint (`config.json` +
    /// `model.safetensors`, f32, the import's keys).
    pub fn save_merged(&self, dir: &Path) -> Result<()> {
        write_checkpoint(dir, &self.merged_tensors(), &self.config.to_hf_json())
    }

    /// Checks that every id is in the vocabulary.
    pub(crate) fn check_ids(&self, ids: &[u32]) -> Result<()> {
        match ids
            .iter()
            .find(|&&id| id as usize >= self.config.vocab_size)
        {
            Some(id) => Err(ModelError::Generation(format!(
                "token id {id} is outside the vocabulary of {}",
                self.config.vocab_size
            ))),
            None => Ok(()),
        }
    }
}

impl<B: AutodiffBackend> Llama<B> {
    /// The gradients of a loss of the final hidden states, with each decoder layer's
    /// activations recomputed in the backward pass instead of kept: gradient checkpointing at
    /// the layer boundary, as transformers' `gradient_checkpointing_enable` does
    /// ([`crate::recompute`]). Memory holds every layer's input and one layer's activations
    /// instead of all layers' activations, for one more forward pass of the layers; the
    /// gradients are those of the backward of `loss(self.hidden(input_ids))` up to float
    /// rounding.
    ///
    /// `loss` gets what [`Llama::hidden`] returns and gives back the scalar to differentiate
    /// and whatever the caller wants returned with the gradients.
    ///
    /// # Shapes
    /// - input_ids: `[batch, len]`
    pub fn recompute_backward<O>(
        &self,
        input_ids: Tensor<B, 2, Int>,
        loss: impl FnOnce(Tensor<B, 3>) -> (Tensor<B, 1>, O),
    ) -> (O, GradientsParams) {
        let [_, len] = input_ids.dims();
        let device = input_ids.device();
        let (cos, sin) = rotary_tables::<B>(&self.inverse_frequencies, 0, len, &[], &device);
        let mask = attention_mask::<B>(len, len, &[], &device);
        let (cos_inner, sin_inner) = (cos.clone().inner(), sin.clone().inner());
        let mask_inner = mask.clone().inner();
        crate::recompute::recompute_blocks(
            self,
            &self.model.layers,
            self.embed(input_ids),
            |layer, x| layer.forward(x, &cos_inner, &sin_inner, &mask_inner, None),
            |layer, x| layer.forward(x, &cos, &sin, &mask, None),
            |x| loss(self.model.norm.forward(x)),
        )
    }
}

const LLAMA_LINEARS: [&str; 7] = [
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
];

impl<B: Backend> LlamaDecoderLayer<B> {
    fn linears(&self) -> [&AdaptedLinear<B>; 7] {
        [
            &self.self_attn.q_proj,
            &self.self_attn.k_proj,
            &self.self_attn.v_proj,
            &self.self_attn.o_proj,
            &self.mlp.gate_proj,
            &self.mlp.up_proj,
            &self.mlp.down_proj,
        ]
    }

    fn linears_mut(&mut self) -> [&mut AdaptedLinear<B>; 7] {
        [
            &mut self.self_attn.q_proj,
            &mut self.self_attn.k_proj,
            &mut self.self_attn.v_proj,
            &mut self.self_attn.o_proj,
            &mut self.mlp.gate_proj,
            &mut self.mlp.up_proj,
            &mut self.mlp.down_proj,
        ]
    }
}

impl<B: Backend> AdaptableModel<B> for Llama<B> {
    fn linears(&self) -> Vec<(LinearSite, &AdaptedLinear<B>)> {
        let mut out = Vec::new();
        for (i, layer) in self.model.layers.iter().enumerate() {
            for (local, linear) in LLAMA_LINEARS.iter().zip(layer.linears()) {
                let site = LinearSite {
                    path: format!("model.layers.{i}.{local}"),
                    layer: Some(i),
                    local: local.to_string(),
                };
                out.push((site, linear));
            }
        }
        if let Some(head) = &self.lm_head {
            let site = LinearSite {
                path: "lm_head".into(),
                layer: None,
                local: "lm_head".into(),
            };
            out.push((site, head));
        }
        out
    }

    fn linears_mut(&mut self) -> Vec<(String, &mut AdaptedLinear<B>)> {
        let mut out = Vec::new();
        for (i, layer) in self.model.layers.iter_mut().enumerate() {
            for (local, linear) in LLAMA_LINEARS.iter().zip(layer.linears_mut()) {
                out.push((format!("model.layers.{i}.{local}"), linear));
            }
        }
        if let Some(head) = &mut self.lm_head {
            out.push(("lm_head".into(), head));
        }
        out
    }

    fn peft_paths(&self) -> Box<dyn PeftPaths> {
        Box::new(LlamaPeftPaths)
    }
}

#[cfg(test)]
mod tests {
    use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
    use burn::backend::{Autodiff, NdArray};
    use burn::optim::{GradientsParams, Optimizer, SgdConfig};
    use burn::tensor::{Int, Tensor, TensorData};
    use peanut::{FrozenStorage, PeanutConfig, Quantization};

    use crate::adaptable::AdaptableModel;
    use crate::llama::{Llama, LlamaConfig};
    use crate::recompute::tests::{assert_same_gradients, gradient_values};
    use crate::targets::Targets;

    type B = Autodiff<NdArray>;

    fn ids(rows: usize, len: usize, vocab: usize) -> Tensor<B, 2, Int> {
        let ids: Vec<i64> = (0..rows * len)
            .map(|i| ((i * 7 + 3) % vocab) as i64)
            .collect();
        Tensor::from_data(TensorData::new(ids, [rows, len]), &Default::default())
    }

    /// A loss of `forward_loss`'s shape: the head's cross-entropy on every position but the
    /// last.
    fn loss(model: &Llama<B>, hidden: Tensor<B, 3>) -> Tensor<B, 1> {
        let [rows, len, width] = hidden.dims();
        let n = rows * (len - 1);
        let flat = hidden.narrow(1, 0, len - 1).reshape([n, width]);
        let targets = ids(1, n, model.config.vocab_size).reshape([n]);
        model.head_loss(flat, targets).0
    }

    /// Recomputing every layer in the backward gives the gradients of the plain backward:
    /// adapters of every layer (after one update, so that no factor is zero), and with `whole`
    /// every weight, the tied embedding among them (the first layer's and the head's graphs
    /// both reach it).
    fn check(config: LlamaConfig, storage: FrozenStorage, whole: bool) {
        crate::ops::register_autodiff::<NdArray, NoCheckpointing>();
        let device = Default::default();
        let mut model: Llama<B> = config.init_in(3, &device, storage).unwrap();
        model
            .add_adapters(
                &Targets::llama_qkv_up_down(),
                &PeanutConfig::new(4).into(),
                5,
            )
            .unwrap();
        // Trained whole: the tied embedding takes gradients from the first layer and the head.
        let model = model.with_trainable_base(whole);
        let input = ids(2, 9, config.vocab_size);
        let grads = GradientsParams::from_grads(
            loss(&model, model.hidden(input.clone())).backward(),
            &model,
        );
        let model = SgdConfig::new().init().step(0.5, model, grads);

        let plain_loss = loss(&model, model.hidden(input.clone()));
        let plain = gradient_values(
            &model,
            &GradientsParams::from_grads(plain_loss.backward(), &model),
        );
        let (recomputed_loss, grads) = model.recompute_backward(input, |hidden| {
            let value = loss(&model, hidden);
            (value.clone(), value)
        });
        let (a, b) = (plain_loss.into_scalar(), recomputed_loss.into_scalar());
        assert!((a - b).abs() <= 1e-6 * a.abs(), "loss {a} vs {b}");
        // Each PEANuT adapter has at least two tensors; 5 sites per layer; trained whole, also
        // the 7 weights and 2 norms of each layer, the final norm, the embedding and an untied
        // head.
        let per_layer = if whole { 2 * 5 + 9 } else { 2 * 5 };
        let heads = usize::from(whole) * (2 + usize::from(!config.tie_word_embeddings));
        let least = per_layer * config.num_hidden_layers + heads;
        assert_same_gradients(&plain, &gradient_values(&model, &grads), least);
    }

    #[test]
    fn recompute_backward_equals_the_plain_backward() {
        check(LlamaConfig::tiny(), FrozenStorage::default(), false);
        check(LlamaConfig::tiny(), FrozenStorage::default(), true);
        let tied = LlamaConfig::tiny().with_tie_word_embeddings(true);
        check(tied, FrozenStorage::default(), true);
    }

    #[test]
    fn recompute_backward_on_a_quantized_base() {
        let config = LlamaConfig::new(64, 64, 128, 3, 4, 2).with_max_position_embeddings(64);
        check(
            config,
            FrozenStorage::default().with_quantization(Some(Quantization::Nf4)),
            false,
        );
    }
}
