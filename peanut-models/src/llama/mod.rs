//! LLaMA-style decoders: transformers' `LlamaForCausalLM` and `Qwen2ForCausalLM`.

pub mod attention;
pub mod cache;
pub mod config;
pub mod generate;
pub mod layer;
pub mod mlp;
pub mod model;
pub mod paths;
pub mod rope;
pub mod tokenizer;

pub use cache::KvCache;
pub use config::{LLAMA_ARCHITECTURES, LlamaConfig, RopeScaling};
pub use generate::{GenerationConfig, Sampling};
pub use model::{Llama, LlamaModel};
pub use paths::LlamaPeftPaths;
pub use tokenizer::Tokenizer;
