//! Which linears get adapters: [`Targets`] resolved against a model's [`LinearSite`]s.

use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result};

/// One linear layer of a model, as target selection sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinearSite {
    /// The full module path, equal to the checkpoint key without `.weight`
    /// (`vit.encoder.layer.3.attention.attention.query`, `model.layers.0.self_attn.q_proj`).
    pub path: String,
    /// The index of the block the linear sits in; `None` for heads outside the blocks.
    pub layer: Option<usize>,
    /// The path inside its block (`attention.attention.query`, `self_attn.q_proj`); the full
    /// path for heads.
    pub local: String,
}

/// A selection of linears to adapt.
///
/// Each entry of `modules` is either
/// - a **name**: it matches a linear whose path inside its block equals it
///   (`attention.output.dense`, `output.dense`) or whose last component equals it (`query`,
///   `q_proj`, `dense`); or
/// - a **pattern** containing `*` (any run of characters), matched against the full path
///   (`vit.encoder.layer.*.attention.attention.query`, `*_proj`).
///
/// `layers`, when set, keeps only linears in those blocks. Every entry must match at least one
/// linear, or resolution fails naming it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Targets {
    /// Names or patterns (see the type's documentation).
    pub modules: Vec<String>,
    /// Block indices to adapt; `None` means all.
    #[serde(default)]
    pub layers: Option<Vec<usize>>,
}

impl Targets {
    /// Targets the given names or patterns in every block.
    pub fn new<S: Into<String>>(modules: impl IntoIterator<Item = S>) -> Self {
        Self {
            modules: modules.into_iter().map(Into::into).collect(),
            layers: None,
        }
    }

    /// Restricts the targets to the given block indices.
    pub fn with_layers(mut self, layers: impl IntoIterator<Item = usize>) -> Self {
        self.layers = Some(layers.into_iter().collect());
        self
    }

    /// The paper's ViT setting: query and value of every block.
    pub fn vit_qv() -> Self {
        Self::new(["query", "value"])
    }

    /// The paper's ViT "QV+MLP" setting: query, value and both MLP linears.
    pub fn vit_qv_mlp() -> Self {
        Self::new(["query", "value", "intermediate.dense", "output.dense"])
    }

    /// The paper's LLM setting: q, k, v, up and down projections.
    pub fn llama_qkv_up_down() -> Self {
        Self::new(["q_proj", "k_proj", "v_proj", "up_proj", "down_proj"])
    }

    /// Every linear inside the blocks (`*` would also take heads).
    pub fn all_in_blocks(sites: &[LinearSite]) -> Self {
        let mut names: Vec<String> = sites
            .iter()
            .filter(|site| site.layer.is_some())
            .map(|site| site.local.clone())
            .collect();
        names.sort();
        names.dedup();
        Self::new(names)
    }

    /// The paths of `sites` these targets select, in the order of `sites`.
    ///
    /// # Errors
    /// [`ModelError::UnmatchedTarget`] for the first entry that matches nothing,
    /// [`ModelError::LayerOutOfRange`] for a block index the model does not have.
    pub fn resolve(&self, sites: &[LinearSite]) -> Result<Vec<String>> {
        let num_layers = sites
            .iter()
            .filter_map(|site| site.layer)
            .max()
            .map_or(0, |max| max + 1);
        if let Some(layers) = &self.layers
            && let Some(&index) = layers.iter().find(|&&index| index >= num_layers)
        {
            return Err(ModelError::LayerOutOfRange { index, num_layers });
        }
        let in_layers = |site: &LinearSite| match (&self.layers, site.layer) {
            (None, _) => true,
            (Some(layers), Some(layer)) => layers.contains(&layer),
            (Some(_), None) => false,
        };
        let mut selected = vec![false; sites.len()];
        for target in &self.modules {
            let mut any = false;
            for (i, site) in sites.iter().enumerate() {
                if in_layers(site) && matches(target, site) {
                    selected[i] = true;
                    any = true;
                }
            }
            if !any {
                return Err(ModelError::UnmatchedTarget {
                    target: target.clone(),
                    known: known_names(sites),
                });
            }
        }
        Ok(sites
            .iter()
            .zip(selected)
            .filter(|(_, chosen)| *chosen)
            .map(|(site, _)| site.path.clone())
            .collect())
    }
}

fn matches(target: &str, site: &LinearSite) -> bool {
    if target.contains('*') {
        return glob(target.as_bytes(), site.path.as_bytes());
    }
    site.local == target || site.path == target || site.local.rsplit('.').next() == Some(target)
}

/// `*` matches any run of bytes; everything else matches itself.
fn glob(pattern: &[u8], text: &[u8]) -> bool {
    match pattern.split_first() {
        None => text.is_empty(),
        Some((b'*', rest)) => (0..=text.len()).any(|skip| glob(rest, &text[skip..])),
        Some((head, rest)) => text
            .split_first()
            .is_some_and(|(t, tail)| t == head && glob(rest, tail)),
    }
}

fn known_names(sites: &[LinearSite]) -> Vec<String> {
    let mut names: Vec<String> = sites.iter().map(|site| site.local.clone()).collect();
    names.sort();
    names.dedup();
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sites() -> Vec<LinearSite> {
        let mut sites = Vec::new();
        for layer in 0..3 {
            for local in [
                "attention.attention.query",
                "attention.attention.value",
                "attention.output.dense",
                "intermediate.dense",
                "output.dense",
            ] {
                sites.push(LinearSite {
                    path: format!("vit.encoder.layer.{layer}.{local}"),
                    layer: Some(layer),
                    local: local.into(),
                });
            }
        }
        sites.push(LinearSite {
            path: "classifier".into(),
            layer: None,
            local: "classifier".into(),
        });
        sites
    }

    #[test]
    fn names_match_last_component_or_block_path() {
        let paths = Targets::vit_qv_mlp().resolve(&sites()).unwrap();
        assert_eq!(paths.len(), 12);
        assert!(!paths.iter().any(|p| p.ends_with("attention.output.dense")));
        let dense = Targets::new(["dense"]).resolve(&sites()).unwrap();
        assert_eq!(dense.len(), 9);
    }

    #[test]
    fn layers_and_patterns_filter() {
        let paths = Targets::vit_qv()
            .with_layers([1])
            .resolve(&sites())
            .unwrap();
        assert_eq!(
            paths,
            [
                "vit.encoder.layer.1.attention.attention.query",
                "vit.encoder.layer.1.attention.attention.value"
            ]
        );
        let paths = Targets::new(["vit.encoder.layer.*.attention.*"])
            .resolve(&sites())
            .unwrap();
        assert_eq!(paths.len(), 9);
        assert_eq!(
            Targets::new(["classifier"]).resolve(&sites()).unwrap(),
            ["classifier"]
        );
    }

    #[test]
    fn unmatched_target_and_bad_layer_are_errors() {
        let err = Targets::new(["query", "q_proj"])
            .resolve(&sites())
            .unwrap_err();
        assert!(matches!(&err, ModelError::UnmatchedTarget { target, .. } if target == "q_proj"));
        assert!(err.to_string().contains("q_proj"));
        let err = Targets::vit_qv()
            .with_layers([5])
            .resolve(&sites())
            .unwrap_err();
        assert!(matches!(
            err,
            ModelError::LayerOutOfRange {
                index: 5,
                num_layers: 3
            }
        ));
    }
}
