//! [`VitPeftPaths`]: our (checkpoint-key) module paths ↔ the module names peft saw.

use peanut::io::PeftPaths;

/// Module path translation for peft adapter files of a transformers ViT.
///
/// Our paths are the checkpoint keys (`vit.encoder.layer.N.attention.attention.query`).
/// transformers ≥ 5 names the live modules differently (`vit.layers.N.attention.q_proj`,
/// `…attention.o_proj`, `…mlp.fc1`, `…mlp.fc2`) and peft saves adapters under those names;
/// older versions saved them under the checkpoint names. [`PeftPaths::to_peft`] writes today's
/// names; [`PeftPaths::from_peft`] reads both, with or without the `vit.` prefix (adapters made
/// on a bare `ViTModel`).
#[derive(Debug, Clone, Copy, Default)]
pub struct VitPeftPaths;

/// (our path inside a block, transformers ≥ 5 name inside a block)
const RENAMES: [(&str, &str); 6] = [
    ("attention.attention.query", "attention.q_proj"),
    ("attention.attention.key", "attention.k_proj"),
    ("attention.attention.value", "attention.v_proj"),
    ("attention.output.dense", "attention.o_proj"),
    ("intermediate.dense", "mlp.fc1"),
    ("output.dense", "mlp.fc2"),
];

/// Splits `N.rest` into `(N, rest)`.
fn split_layer(path: &str) -> Option<(&str, &str)> {
    let (index, rest) = path.split_once('.')?;
    index.parse::<usize>().ok()?;
    Some((index, rest))
}

impl PeftPaths for VitPeftPaths {
    fn to_peft(&self, path: &str) -> String {
        let Some((index, local)) = path
            .strip_prefix("vit.encoder.layer.")
            .and_then(split_layer)
        else {
            return path.to_string();
        };
        match RENAMES.iter().find(|(ours, _)| *ours == local) {
            Some((_, theirs)) => format!("vit.layers.{index}.{theirs}"),
            None => path.to_string(),
        }
    }

    fn from_peft(&self, peft_path: &str) -> Option<String> {
        if peft_path == "classifier" {
            return Some(peft_path.to_string());
        }
        let bare = peft_path.strip_prefix("vit.").unwrap_or(peft_path);
        if let Some((index, local)) = bare.strip_prefix("layers.").and_then(split_layer) {
            let (ours, _) = RENAMES.iter().find(|(_, theirs)| *theirs == local)?;
            return Some(format!("vit.encoder.layer.{index}.{ours}"));
        }
        let (index, local) = bare.strip_prefix("encoder.layer.").and_then(split_layer)?;
        RENAMES
            .iter()
            .any(|(ours, _)| *ours == local)
            .then(|| format!("vit.encoder.layer.{index}.{local}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_naming_schemes_map_to_checkpoint_paths() {
        let paths = VitPeftPaths;
        let ours = "vit.encoder.layer.11.attention.attention.value";
        assert_eq!(paths.to_peft(ours), "vit.layers.11.attention.v_proj");
        assert_eq!(
            paths.from_peft("vit.layers.11.attention.v_proj").unwrap(),
            ours
        );
        assert_eq!(paths.from_peft(ours).unwrap(), ours);
        assert_eq!(
            paths
                .from_peft("encoder.layer.11.attention.attention.value")
                .unwrap(),
            ours
        );
        assert_eq!(
            paths.from_peft("vit.layers.0.mlp.fc2").unwrap(),
            "vit.encoder.layer.0.output.dense"
        );
        assert_eq!(
            paths.to_peft("vit.encoder.layer.0.output.dense"),
            "vit.layers.0.mlp.fc2"
        );
        assert_eq!(paths.from_peft("classifier").unwrap(), "classifier");
        assert!(paths.from_peft("vit.layers.0.attention.nope").is_none());
        for (ours, _) in RENAMES {
            let path = format!("vit.encoder.layer.3.{ours}");
            assert_eq!(paths.from_peft(&paths.to_peft(&path)).unwrap(), path);
        }
    }
}
