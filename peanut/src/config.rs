//! Configurations of the adapters: [`PeanutConfig`], [`LoraConfig`] and their union
//! [`AdapterConfig`].

use burn::config::Config;
use burn::tensor::backend::Backend;
use serde::{Deserialize, Serialize};

use crate::activation::Activation;
use crate::adapter::Adapter;
use crate::error::{PeanutError, Result};
use crate::lora::Lora;
use crate::peanut::Peanut;

/// How the last map `B` of an adapter starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputInit {
    /// `B = 0`: the adapted layer starts exactly equal to the base layer (the method's default).
    #[default]
    Zeros,
    /// Kaiming-uniform like `A` (peft's `init_weights=False`); tests use it because a zero `B`
    /// hides bugs in everything before it.
    KaimingUniform,
}

/// Configuration of a PEANuT adapter (docs/METHOD.md §1–§4).
///
/// `ΔW = s · body(σ(W0·A)) · B` with `A: [d_output, rank]`, `rank × rank` encoder/decoder pairs
/// in the body, and `B: [rank, d_output]`.
#[derive(Config, Debug, PartialEq)]
pub struct PeanutConfig {
    /// Hidden width `r` of the adapter network (the paper's "rank"); at least 1.
    pub rank: usize,
    /// Number of linear maps, `A` and `B` included, in the paper's convention: 2 (vanilla), 4,
    /// 6, …; must be even and at least 2. peft counts encoder/decoder *pairs* instead
    /// (`peft_depth = (depth - 2) / 2`); see [`PeanutConfig::from_peft_depth`].
    #[config(default = 2)]
    pub depth: usize,
    /// The nonlinearity `σ`.
    #[config(default = "Activation::Relu")]
    pub activation: Activation,
    /// The multiplier `s` of the update; peft's default is 1.0. Use
    /// [`PeanutConfig::with_alpha`] for the `alpha / rank` spelling.
    #[config(default = 1.0)]
    pub scaling: f64,
    /// How `B` starts.
    #[config(default = "OutputInit::Zeros")]
    pub b_init: OutputInit,
}

impl PeanutConfig {
    /// Sets `scaling = alpha / rank`, the spelling of the authors' LLM code.
    pub fn with_alpha(self, alpha: f64) -> Self {
        let scaling = alpha / self.rank.max(1) as f64;
        self.with_scaling(scaling)
    }

    /// Sets the depth from peft's count of encoder/decoder pairs (`depth = 2 + 2·pairs`).
    pub fn from_peft_depth(self, pairs: usize) -> Self {
        // Saturating: an absurd count from a file gives an odd depth that `validate` refuses.
        self.with_depth(pairs.saturating_mul(2).saturating_add(2))
    }

    /// Number of residual encoder/decoder pairs, `P = (depth − 2) / 2` (peft's `depth`).
    pub fn pairs(&self) -> usize {
        self.depth.saturating_sub(2) / 2
    }

    /// Checks every field; the error names the first bad one.
    pub fn validate(&self) -> Result<()> {
        if self.rank == 0 {
            return Err(invalid("rank", "must be at least 1, got 0".into()));
        }
        if self.depth < 2 || !self.depth.is_multiple_of(2) {
            return Err(invalid(
                "depth",
                format!(
                    "counts linear maps (A and B included) and must be an even number >= 2 \
                     (2, 4, 6, ...), got {}",
                    self.depth
                ),
            ));
        }
        if !self.scaling.is_finite() {
            return Err(invalid(
                "scaling",
                format!("must be finite, got {}", self.scaling),
            ));
        }
        self.activation.validate()
    }

    /// Closed-form count of trainable parameters on a layer with output width `d_output`:
    /// `2·r·d_output + 2·P·r²`.
    pub fn num_params(&self, d_output: usize) -> usize {
        2 * self.rank * d_output + 2 * self.pairs() * self.rank * self.rank
    }

    /// Builds an adapter for a `[d_input, d_output]` weight, drawing `A`, the encoders, the
    /// decoders and `B` (in that order) from `seed` (docs/METHOD.md §3).
    pub fn init<B: Backend>(
        &self,
        d_input: usize,
        d_output: usize,
        seed: u64,
        device: &B::Device,
    ) -> Result<Peanut<B>> {
        self.validate()?;
        check_dims(d_input, d_output)?;
        Ok(Peanut::init(self, d_output, seed, device))
    }
}

/// Configuration of a LoRA adapter, the baseline: `ΔW = (alpha / rank) · A·B` with
/// `A: [d_input, rank]` (Kaiming-uniform) and `B: [rank, d_output]` (zero).
#[derive(Config, Debug, PartialEq)]
pub struct LoraConfig {
    /// Rank `r` of the update; at least 1.
    pub rank: usize,
    /// `alpha` of the scale `alpha / rank` (peft's `lora_alpha`, default 8).
    ///
    /// [`Self::validate`] and the adapter readers accept any finite value, as peft loads it: an
    /// adapter file with a zero or negative `lora_alpha` is unusual but well defined, so it loads
    /// and computes what peft computes. Training is stricter: a new run's `--lora-alpha` (and the
    /// `lora_alpha` of `peanut_train`'s run options) must be positive, because with `alpha = 0`
    /// the update `ΔW` and every adapter gradient are zero for good (the run cannot learn), and a
    /// negative one only flips the sign of `B`, which training would learn anyway.
    #[config(default = 8.0)]
    pub alpha: f64,
    /// How `B` starts.
    #[config(default = "OutputInit::Zeros")]
    pub b_init: OutputInit,
}

impl LoraConfig {
    /// The multiplier `alpha / rank`.
    pub fn scaling(&self) -> f64 {
        self.alpha / self.rank.max(1) as f64
    }

    /// Checks every field; the error names the first bad one.
    pub fn validate(&self) -> Result<()> {
        if self.rank == 0 {
            return Err(invalid("rank", "must be at least 1, got 0".into()));
        }
        if !self.alpha.is_finite() {
            return Err(invalid(
                "alpha",
                format!("must be finite, got {}", self.alpha),
            ));
        }
        Ok(())
    }

    /// Closed-form count of trainable parameters: `r·(d_input + d_output)`.
    pub fn num_params(&self, d_input: usize, d_output: usize) -> usize {
        self.rank * (d_input + d_output)
    }

    /// Builds an adapter for a `[d_input, d_output]` weight, drawing `A` then `B` from `seed`.
    pub fn init<B: Backend>(
        &self,
        d_input: usize,
        d_output: usize,
        seed: u64,
        device: &B::Device,
    ) -> Result<Lora<B>> {
        self.validate()?;
        check_dims(d_input, d_output)?;
        Ok(Lora::init(self, d_input, d_output, seed, device))
    }
}

/// Either adapter's configuration: what a model or a training run is told to attach.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "method", rename_all = "snake_case")]
pub enum AdapterConfig {
    /// PEANuT.
    Peanut(PeanutConfig),
    /// LoRA.
    Lora(LoraConfig),
}

impl AdapterConfig {
    /// Checks the inner configuration.
    pub fn validate(&self) -> Result<()> {
        match self {
            Self::Peanut(config) => config.validate(),
            Self::Lora(config) => config.validate(),
        }
    }

    /// The rank of the adapter.
    pub fn rank(&self) -> usize {
        match self {
            Self::Peanut(config) => config.rank,
            Self::Lora(config) => config.rank,
        }
    }

    /// Closed-form trainable-parameter count on a `[d_input, d_output]` layer.
    pub fn num_params(&self, d_input: usize, d_output: usize) -> usize {
        match self {
            Self::Peanut(config) => config.num_params(d_output),
            Self::Lora(config) => config.num_params(d_input, d_output),
        }
    }

    /// Builds the adapter for a `[d_input, d_output]` weight from `seed`.
    pub fn init<B: Backend>(
        &self,
        d_input: usize,
        d_output: usize,
        seed: u64,
        device: &B::Device,
    ) -> Result<Adapter<B>> {
        Ok(match self {
            Self::Peanut(config) => Adapter::Peanut(config.init(d_input, d_output, seed, device)?),
            Self::Lora(config) => Adapter::Lora(config.init(d_input, d_output, seed, device)?),
        })
    }
}

impl From<PeanutConfig> for AdapterConfig {
    fn from(config: PeanutConfig) -> Self {
        Self::Peanut(config)
    }
}

impl From<LoraConfig> for AdapterConfig {
    fn from(config: LoraConfig) -> Self {
        Self::Lora(config)
    }
}

fn invalid(field: &'static str, reason: String) -> PeanutError {
    PeanutError::InvalidConfig { field, reason }
}

fn check_dims(d_input: usize, d_output: usize) -> Result<()> {
    if d_input == 0 {
        return Err(invalid("d_input", "must be at least 1, got 0".into()));
    }
    if d_output == 0 {
        return Err(invalid("d_output", "must be at least 1, got 0".into()));
    }
    Ok(())
}
