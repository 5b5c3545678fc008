//! The model families this crate implements, in one list: what `config.json` says for each
//! (`model_type`, `architectures`), how its module paths map to peft's, and how an adapter
//! directory shows which family it was made for. Loaders, the CLI and the export code ask
//! [`ModelFamily`] instead of matching names themselves, so a new family is added here.

use std::path::Path;

use peanut::io::PeftPaths;

use crate::error::{ModelError, Result};
use crate::llama::{LLAMA_ARCHITECTURES, LlamaPeftPaths};
use crate::vit::{VIT_ARCHITECTURES, VitPeftPaths};

/// A kind of model this crate loads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ModelFamily {
    /// transformers' `ViTForImageClassification` / `ViTModel` ([`crate::Vit`]).
    Vit,
    /// LLaMA-style decoders, `LlamaForCausalLM` and `Qwen2ForCausalLM` ([`crate::Llama`]).
    Llama,
}

impl ModelFamily {
    /// Every family, in the order they are tried.
    pub const ALL: [Self; 2] = [Self::Vit, Self::Llama];

    /// The family's name on output lines (`vit`, `llama`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Vit => "vit",
            Self::Llama => "llama",
        }
    }

    /// The `config.json` `model_type` values of the family.
    pub fn model_types(self) -> &'static [&'static str] {
        match self {
            Self::Vit => &["vit"],
            Self::Llama => &["llama", "qwen2"],
        }
    }

    /// The `config.json` `architectures` the family's loader accepts.
    pub fn architectures(self) -> &'static [&'static str] {
        match self {
            Self::Vit => VIT_ARCHITECTURES,
            Self::Llama => LLAMA_ARCHITECTURES,
        }
    }

    /// How the family's module paths map to peft's.
    pub fn peft_paths(self) -> &'static dyn PeftPaths {
        match self {
            Self::Vit => &VitPeftPaths,
            Self::Llama => &LlamaPeftPaths,
        }
    }

    /// The family of a parsed `config.json` (`path` names it in errors): its `model_type`, else
    /// its `architectures`.
    ///
    /// # Errors
    /// [`ModelError::InvalidConfig`] when neither names a family of [`ModelFamily::ALL`].
    pub fn of_config(config: &serde_json::Value, path: &Path) -> Result<Self> {
        let model_type = config["model_type"].as_str().unwrap_or_default();
        if let Some(family) = Self::ALL
            .into_iter()
            .find(|f| f.model_types().contains(&model_type))
        {
            return Ok(family);
        }
        let architectures: Vec<&str> = config["architectures"]
            .as_array()
            .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
            .unwrap_or_default();
        if let Some(family) = Self::ALL
            .into_iter()
            .find(|f| architectures.iter().any(|a| f.architectures().contains(a)))
        {
            return Ok(family);
        }
        let known = Self::ALL
            .iter()
            .map(|f| {
                format!(
                    "{} ({})",
                    f.model_types().join(", "),
                    f.architectures().join(", ")
                )
            })
            .collect::<Vec<_>>()
            .join("; ");
        Err(ModelError::InvalidConfig {
            path: Some(path.to_path_buf()),
            field: "model_type",
            reason: format!(
                "is `{model_type}` (architectures {architectures:?}), which no model family of \
                 peanut loads; known: {known}"
            ),
        })
    }

    /// The family of the checkpoint in `dir`, from its `config.json`.
    ///
    /// # Errors
    /// `config.json` is missing or malformed, or names no family ([`Self::of_config`]).
    pub fn of_model_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("config.json");
        let config: serde_json::Value = peanut::io::read_json(&path)?;
        Self::of_config(&config, &path)
    }

    /// The family an adapter directory (native or peft) was made for, from its tensor names:
    /// LLaMA-style when a module lies under `model.layers.` or `layers.`, else ViT (whose modules
    /// lie under `vit.encoder.layer.`). A directory without readable adapter weights reads as ViT.
    pub fn of_adapter_dir(dir: &Path) -> Self {
        let llama = [
            peanut::io::native::WEIGHTS_FILE,
            peanut::io::peft::WEIGHTS_FILE,
        ]
        .iter()
        .filter_map(|file| std::fs::read(dir.join(file)).ok())
        .any(|bytes| {
            safetensors::SafeTensors::deserialize(&bytes).is_ok_and(|file| {
                file.names().into_iter().any(|name| {
                    let bare = name
                        .strip_prefix(peanut::io::peft::KEY_PREFIX)
                        .unwrap_or(name);
                    bare.starts_with("model.layers.") || bare.starts_with("layers.")
                })
            })
        });
        if llama { Self::Llama } else { Self::Vit }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn family(config: serde_json::Value) -> Result<ModelFamily> {
        ModelFamily::of_config(&config, Path::new("config.json"))
    }

    #[test]
    fn model_type_then_architectures_pick_the_family() {
        for (config, expected) in [
            (serde_json::json!({"model_type": "vit"}), ModelFamily::Vit),
            (
                serde_json::json!({"model_type": "qwen2"}),
                ModelFamily::Llama,
            ),
            (
                serde_json::json!({"architectures": ["ViTModel"]}),
                ModelFamily::Vit,
            ),
            (
                serde_json::json!({"model_type": "", "architectures": ["LlamaForCausalLM"]}),
                ModelFamily::Llama,
            ),
        ] {
            assert_eq!(family(config.clone()).unwrap(), expected, "{config}");
        }
    }

    #[test]
    fn an_unknown_model_is_an_error_that_lists_the_families() {
        let error =
            family(serde_json::json!({"model_type": "bert", "architectures": ["BertModel"]}))
                .unwrap_err();
        let message = error.to_string();
        assert!(
            matches!(error, ModelError::InvalidConfig { .. }),
            "{error:?}"
        );
        for expected in ["bert", "BertModel", "vit", "qwen2", "LlamaForCausalLM"] {
            assert!(message.contains(expected), "{message}");
        }
    }

    #[test]
    fn every_family_loads_its_own_config_names() {
        for f in ModelFamily::ALL {
            for model_type in f.model_types() {
                assert_eq!(
                    family(serde_json::json!({"model_type": model_type})).unwrap(),
                    f
                );
            }
            for architecture in f.architectures() {
                let config = serde_json::json!({"architectures": [architecture]});
                assert_eq!(family(config).unwrap(), f);
            }
        }
    }
}
