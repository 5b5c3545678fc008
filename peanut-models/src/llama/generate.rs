//! Text generation: greedy and top-p (nucleus) sampling, with or without the KV cache.

use burn::tensor::{Int, Tensor, TensorData, backend::Backend};
use peanut::init::SeededRng;

use super::model::Llama;
use crate::error::{ModelError, Result};

/// How the next token is chosen.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sampling {
    /// The most likely token (ties go to the lowest id, as `argmax` in PyTorch).
    Greedy,
    /// A draw from the smallest set of most likely tokens whose probability reaches `top_p`,
    /// after dividing the logits by `temperature`.
    TopP {
        /// Probability mass kept, in `(0, 1]`.
        top_p: f64,
        /// Logit divisor, `> 0`.
        temperature: f64,
        /// Seed of the draws.
        seed: u64,
    },
}

/// Options of [`Llama::generate`].
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationConfig {
    /// Most tokens to add.
    pub max_new_tokens: usize,
    /// How tokens are chosen.
    pub sampling: Sampling,
    /// Stop after this token (it is included in the output).
    pub eos_token_id: Option<u32>,
    /// Reuse past keys and values (one position per step) instead of re-running the sequence.
    pub use_cache: bool,
}

impl GenerationConfig {
    /// Greedy decoding of up to `max_new_tokens` with the cache and no stop token.
    pub fn greedy(max_new_tokens: usize) -> Self {
        Self {
            max_new_tokens,
            sampling: Sampling::Greedy,
            eos_token_id: None,
            use_cache: true,
        }
    }
}

impl<B: Backend> Llama<B> {
    /// Continues `prompt` and returns the new tokens only.
    ///
    /// # Errors
    /// An empty prompt, an id outside the vocabulary, sampling parameters out of range.
    pub fn generate(&self, prompt: &[u32], config: &GenerationConfig) -> Result<Vec<u32>> {
        if prompt.is_empty() {
            return Err(ModelError::Generation("the prompt is empty".into()));
        }
        self.check_ids(prompt)?;
        if let Sampling::TopP {
            top_p, temperature, ..
        } = config.sampling
            && !(top_p > 0.0 && top_p <= 1.0 && temperature > 0.0)
        {
            return Err(ModelError::Generation(format!(
                "top_p must be in (0, 1] and temperature > 0, got {top_p} and {temperature}"
            )));
        }
        let mut rng = match config.sampling {
            Sampling::TopP { seed, .. } => SeededRng::new(seed),
            Sampling::Greedy => SeededRng::new(0),
        };
        let device = self.model.embed_tokens.weight.device();
        let ids_tensor = |ids: &[u32]| {
            let ids: Vec<i64> = ids.iter().map(|&id| i64::from(id)).collect();
            let len = ids.len();
            Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [1, len]), &device)
        };
        let mut sequence = prompt.to_vec();
        let mut cache = config.use_cache.then(|| self.new_cache());
        let mut generated = Vec::new();
        while generated.len() < config.max_new_tokens {
            let input = match &cache {
                Some(cache) if !cache.is_empty() => ids_tensor(&sequence[sequence.len() - 1..]),
                _ => ids_tensor(&sequence),
            };
            let logits = self.forward_last(input, cache.as_mut());
            let [_, vocab] = logits.dims();
            let last: Vec<f32> = logits
                .reshape([vocab])
                .into_data()
                .convert::<f32>()
                .into_vec()
                .expect("float logits");
            let next = match config.sampling {
                Sampling::Greedy => argmax(&last),
                Sampling::TopP {
                    top_p, temperature, ..
                } => sample_top_p(&last, top_p, temperature, &mut rng),
            };
            sequence.push(next);
            generated.push(next);
            if config.eos_token_id == Some(next) {
                break;
            }
        }
        Ok(generated)
    }
}

fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &value) in logits.iter().enumerate() {
        if value > logits[best] {
            best = i;
        }
    }
    best as u32
}

/// Draws from the nucleus of `softmax(logits / temperature)`.
fn sample_top_p(logits: &[f32], top_p: f64, temperature: f64, rng: &mut SeededRng) -> u32 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let mut probs: Vec<(usize, f64)> = logits
        .iter()
        .enumerate()
        .map(|(i, &l)| (i, ((l as f64 - max) / temperature).exp()))
        .collect();
    let total: f64 = probs.iter().map(|(_, p)| p).sum();
    probs.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    let mut kept = Vec::new();
    let mut mass = 0.0;
    for (i, p) in probs {
        let p = p / total;
        kept.push((i, p));
        mass += p;
        if mass >= top_p {
            break;
        }
    }
    let mut target = rng.uniform(0.0, mass);
    for &(i, p) in &kept {
        if target < p {
            return i as u32;
        }
        target -= p;
    }
    kept.last().expect("at least one token").0 as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_p_keeps_only_the_nucleus() {
        // Probabilities ≈ [0.64, 0.24, 0.09, 0.03]: top_p 0.5 leaves only token 0.
        let logits = [3.0, 2.0, 1.0, 0.0];
        let mut rng = SeededRng::new(1);
        for _ in 0..50 {
            assert_eq!(sample_top_p(&logits, 0.5, 1.0, &mut rng), 0);
        }
        let mut seen = [false; 4];
        for _ in 0..500 {
            seen[sample_top_p(&logits, 0.85, 1.0, &mut rng) as usize] = true;
        }
        assert_eq!(seen, [true, true, false, false]);
        assert_eq!(argmax(&[0.0, 2.0, 2.0]), 1);
    }
}
