//! [`VitConfig`]: the ViT hyper-parameters, named as in transformers' `config.json`.

use std::collections::BTreeMap;
use std::path::Path;

use burn::config::Config;
use peanut::Activation;
use serde::Deserialize;

use crate::error::{ModelError, Result};
use peanut::io::read_json;

/// The `architectures` this model loads.
pub const VIT_ARCHITECTURES: &[&str] = &["ViTForImageClassification", "ViTModel"];

/// Configuration of a [`Vit`](crate::vit::Vit); field names and meanings are those of
/// transformers' `ViTConfig`.
#[derive(Config, Debug, PartialEq)]
pub struct VitConfig {
    /// Width `d_model` of the token vectors.
    pub hidden_size: usize,
    /// Number of encoder blocks.
    pub num_hidden_layers: usize,
    /// Attention heads per block; divides `hidden_size`.
    pub num_attention_heads: usize,
    /// Width of the MLP's hidden layer.
    pub intermediate_size: usize,
    /// Classes of the classifier head.
    pub num_labels: usize,
    /// MLP activation, as transformers names it (`gelu` is the exact, erf-based GELU).
    #[config(default = "String::from(\"gelu\")")]
    pub hidden_act: String,
    /// ε of every layer norm.
    #[config(default = 1e-12)]
    pub layer_norm_eps: f64,
    /// Side of the (square) input image in pixels.
    #[config(default = 224)]
    pub image_size: usize,
    /// Side of a (square) patch in pixels; divides `image_size`.
    #[config(default = 16)]
    pub patch_size: usize,
    /// Input channels.
    #[config(default = 3)]
    pub num_channels: usize,
    /// Whether query, key and value carry biases.
    #[config(default = true)]
    pub qkv_bias: bool,
    /// Standard deviation of a new classifier head's weights (transformers'
    /// `initializer_range`: a new head is drawn from `N(0, initializer_range²)`, bias 0, as
    /// `ViTForImageClassification` draws it).
    #[config(default = 0.02)]
    pub initializer_range: f64,
    /// Class names by index (`id2label` of `config.json`), when known; `None` writes
    /// transformers' `LABEL_<i>` names.
    #[config(default = "None")]
    pub id2label: Option<Vec<String>>,
}

impl VitConfig {
    /// ViT-B/16 at 224 px (`google/vit-base-patch16-224`, 1000 ImageNet classes).
    pub fn vit_base_patch16_224() -> Self {
        Self::new(768, 12, 12, 3072, 1000)
    }

    /// ViT-B/16 pretrained on ImageNet-21k (`google/vit-base-patch16-224-in21k`, the paper's
    /// backbone); its checkpoint has no classifier, so set `num_labels` for the task.
    pub fn vit_base_patch16_224_in21k(num_labels: usize) -> Self {
        Self::new(768, 12, 12, 3072, num_labels)
    }

    /// ViT-L/16 at 224 px.
    pub fn vit_large_patch16_224() -> Self {
        Self::new(1024, 24, 16, 4096, 1000)
    }

    /// ViT-H/14 at 224 px (`google/vit-huge-patch14-224-in21k`).
    pub fn vit_huge_patch14_224(num_labels: usize) -> Self {
        Self::new(1280, 32, 16, 5120, num_labels).with_patch_size(14)
    }

    /// A tiny ViT for tests: width 32, 2 blocks of 4 heads, 16 px images of 4 px patches.
    pub fn tiny() -> Self {
        Self::new(32, 2, 4, 64, 5)
            .with_image_size(16)
            .with_patch_size(4)
    }

    /// Patches per side.
    pub fn grid_size(&self) -> usize {
        self.image_size / self.patch_size
    }

    /// Width of one attention head.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// The MLP activation.
    pub fn activation(&self) -> Result<Activation> {
        Activation::from_peft_name(&self.hidden_act).ok_or_else(|| ModelError::InvalidConfig {
            path: None,
            field: "hidden_act",
            reason: format!(
                "`{}` is not an activation this crate implements",
                self.hidden_act
            ),
        })
    }

    /// Checks that the sizes fit together.
    pub fn validate(&self) -> Result<()> {
        let invalid = |field, reason| {
            Err(ModelError::InvalidConfig {
                path: None,
                field,
                reason,
            })
        };
        if self.hidden_size == 0 || self.num_attention_heads == 0 {
            return invalid(
                "hidden_size",
                "and num_attention_heads must be positive".into(),
            );
        }
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return invalid(
                "num_attention_heads",
                format!(
                    "({}) must divide hidden_size ({})",
                    self.num_attention_heads, self.hidden_size
                ),
            );
        }
        if self.patch_size == 0 || !self.image_size.is_multiple_of(self.patch_size) {
            return invalid(
                "patch_size",
                format!(
                    "({}) must divide image_size ({})",
                    self.patch_size, self.image_size
                ),
            );
        }
        if self.num_labels == 0 {
            return invalid("num_labels", "must be at least 1".into());
        }
        self.activation().map(|_| ())
    }

    /// Reads a transformers `config.json` for a ViT, checking `architectures`.
    ///
    /// `num_labels` comes from `id2label` (or `num_labels`); a config without either (a bare
    /// `ViTModel`) gets 2, transformers' default.
    pub fn from_hf_file(path: &Path) -> Result<Self> {
        let file: HfVitConfig = read_json(path)?;
        if let Some(found) = &file.architectures
            && !found
                .iter()
                .any(|a| VIT_ARCHITECTURES.contains(&a.as_str()))
        {
            return Err(ModelError::UnsupportedArchitecture {
                path: path.to_path_buf(),
                found: found.clone(),
                supported: VIT_ARCHITECTURES,
            });
        }
        if file
            .model_type
            .as_deref()
            .is_some_and(|t| !crate::ModelFamily::Vit.model_types().contains(&t))
        {
            return Err(ModelError::UnsupportedArchitecture {
                path: path.to_path_buf(),
                found: vec![format!(
                    "model_type {}",
                    file.model_type.unwrap_or_default()
                )],
                supported: VIT_ARCHITECTURES,
            });
        }
        let num_labels = file
            .id2label
            .as_ref()
            .map(BTreeMap::len)
            .or(file.num_labels)
            .unwrap_or(2);
        let id2label = file
            .id2label
            .as_ref()
            .and_then(|map| label_names(map, num_labels));
        let config = Self::new(
            file.hidden_size,
            file.num_hidden_layers,
            file.num_attention_heads,
            file.intermediate_size,
            num_labels,
        )
        .with_hidden_act(file.hidden_act)
        .with_layer_norm_eps(file.layer_norm_eps)
        .with_image_size(file.image_size)
        .with_patch_size(file.patch_size)
        .with_num_channels(file.num_channels)
        .with_qkv_bias(file.qkv_bias)
        .with_initializer_range(file.initializer_range)
        .with_id2label(id2label);
        config.validate().map_err(|err| match err {
            ModelError::InvalidConfig { field, reason, .. } => ModelError::InvalidConfig {
                path: Some(path.to_path_buf()),
                field,
                reason,
            },
            other => other,
        })?;
        Ok(config)
    }

    /// The `config.json` transformers needs to load this model as a
    /// `ViTForImageClassification`.
    pub fn to_hf_json(&self) -> serde_json::Value {
        let name = |i: usize| {
            self.id2label
                .as_ref()
                .filter(|names| names.len() == self.num_labels)
                .map_or_else(|| format!("LABEL_{i}"), |names| names[i].clone())
        };
        let id2label: BTreeMap<String, String> = (0..self.num_labels)
            .map(|i| (i.to_string(), name(i)))
            .collect();
        let label2id: BTreeMap<String, usize> =
            (0..self.num_labels).map(|i| (name(i), i)).collect();
        serde_json::json!({
            "architectures": ["ViTForImageClassification"],
            "model_type": "vit",
            "hidden_size": self.hidden_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "intermediate_size": self.intermediate_size,
            "hidden_act": self.hidden_act,
            "hidden_dropout_prob": 0.0,
            "attention_probs_dropout_prob": 0.0,
            "layer_norm_eps": self.layer_norm_eps,
            "image_size": self.image_size,
            "patch_size": self.patch_size,
            "num_channels": self.num_channels,
            "qkv_bias": self.qkv_bias,
            "initializer_range": self.initializer_range,
            "id2label": id2label,
            "label2id": label2id,
            "dtype": "float32",
        })
    }
}

/// The names of `id2label` in index order, when its keys are exactly `0..num_labels` and the
/// names are not transformers' placeholders (`LABEL_<i>`).
fn label_names(map: &BTreeMap<String, String>, num_labels: usize) -> Option<Vec<String>> {
    let names: Vec<String> = (0..num_labels)
        .map(|i| map.get(&i.to_string()).cloned())
        .collect::<Option<_>>()?;
    let placeholders = names
        .iter()
        .enumerate()
        .all(|(i, name)| *name == format!("LABEL_{i}"));
    (!placeholders).then_some(names)
}

#[derive(Deserialize)]
struct HfVitConfig {
    architectures: Option<Vec<String>>,
    model_type: Option<String>,
    hidden_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    intermediate_size: usize,
    #[serde(default = "gelu")]
    hidden_act: String,
    #[serde(default = "layer_norm_eps")]
    layer_norm_eps: f64,
    #[serde(default = "image_size")]
    image_size: usize,
    #[serde(default = "patch_size")]
    patch_size: usize,
    #[serde(default = "num_channels")]
    num_channels: usize,
    #[serde(default = "yes")]
    qkv_bias: bool,
    #[serde(default = "initializer_range")]
    initializer_range: f64,
    id2label: Option<BTreeMap<String, String>>,
    num_labels: Option<usize>,
}

fn gelu() -> String {
    "gelu".into()
}
fn layer_norm_eps() -> f64 {
    1e-12
}
fn image_size() -> usize {
    224
}
fn patch_size() -> usize {
    16
}
fn num_channels() -> usize {
    3
}
fn initializer_range() -> f64 {
    0.02
}
fn yes() -> bool {
    true
}
