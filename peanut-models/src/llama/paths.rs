//! [`LlamaPeftPaths`]: module paths of peft adapter files for LLaMA-style models.

use peanut::io::PeftPaths;

/// Our paths are the checkpoint keys (`model.layers.N.self_attn.q_proj`), which is also what
/// peft saves for a `…ForCausalLM`; adapters made on a bare `LlamaModel` (`layers.N.…`) get the
/// `model.` prefix back.
#[derive(Debug, Clone, Copy, Default)]
pub struct LlamaPeftPaths;

impl PeftPaths for LlamaPeftPaths {
    fn to_peft(&self, path: &str) -> String {
        path.to_string()
    }

    fn from_peft(&self, peft_path: &str) -> Option<String> {
        if peft_path == "lm_head" || peft_path.starts_with("model.layers.") {
            Some(peft_path.to_string())
        } else if peft_path.starts_with("layers.") {
            Some(format!("model.{peft_path}"))
        } else {
            None
        }
    }
}
