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

impl GenerationConfig {
    /// An error unless the sampling parameters are in range.
    fn check(&self) -> Result<()> {
        if let Sampling::TopP {
            top_p, temperature, ..
        } = self.sampling
            && !(top_p > 0.0 && top_p <= 1.0 && temperature > 0.0)
        {
            return Err(ModelError::Generation(format!(
                "top_p must be in (0, 1] and temperature > 0, got {top_p} and {temperature}"
            )));
        }
        Ok(())
    }

    /// The generator of one sequence's draws.
    fn rng(&self) -> SeededRng {
        match self.sampling {
            Sampling::TopP { seed, .. } => SeededRng::new(seed),
            Sampling::Greedy => SeededRng::new(0),
        }
    }

    /// The next token from one sequence's last logits.
    fn pick(&self, logits: &[f32], rng: &mut SeededRng) -> u32 {
        match self.sampling {
            Sampling::Greedy => argmax(logits),
            Sampling::TopP {
                top_p, temperature, ..
            } => sample_top_p(logits, top_p, temperature, rng),
        }
    }
}

impl<B: Backend> Llama<B> {
    /// Continues every prompt of `prompts` in one batch and returns each one's new tokens, as
    /// [`Llama::generate`] returns them for that prompt alone (each sequence draws from its own
    /// generator seeded as `generate`'s).
    ///
    /// The prompts are left-padded to the longest one and run together
    /// ([`Llama::forward_last_padded`]): each step is one forward pass for the whole batch,
    /// which on a CPU costs little more than one sequence's (its weights are read once). A
    /// sequence that reaches `eos_token_id` stops; the batch runs until all have stopped or
    /// produced `max_new_tokens`. Without `use_cache`, the prompts run one by one.
    ///
    /// # Errors
    /// An empty prompt, an id outside the vocabulary, sampling parameters out of range.
    pub fn generate_batch(
        &self,
        prompts: &[Vec<u32>],
        config: &GenerationConfig,
    ) -> Result<Vec<Vec<u32>>> {
        config.check()?;
        for prompt in prompts {
            if prompt.is_empty() {
                return Err(ModelError::Generation("a prompt is empty".into()));
            }
            self.check_ids(prompt)?;
        }
        if !config.use_cache || prompts.len() <= 1 {
            return prompts.iter().map(|p| self.generate(p, config)).collect();
        }
        let device = self.model.embed_tokens.weight.device();
        let batch = prompts.len();
        let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
        let pads: Vec<usize> = prompts.iter().map(|p| longest - p.len()).collect();
        // Padding ids are never attended to; 0 is in every vocabulary.
        let ids: Vec<i64> = prompts
            .iter()
            .flat_map(|p| {
                std::iter::repeat_n(0, longest - p.len()).chain(p.iter().map(|&id| i64::from(id)))
            })
            .collect();
        let mut input =
            Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [batch, longest]), &device);
        let mut cache = self.new_cache();
        let mut rngs: Vec<SeededRng> = (0..batch).map(|_| config.rng()).collect();
        let mut generated: Vec<Vec<u32>> = vec![Vec::new(); batch];
        let mut done = vec![config.max_new_tokens == 0; batch];
        while done.iter().any(|d| !d) {
            let logits = self.forward_last_padded(input, &pads, Some(&mut cache));
            let [_, vocab] = logits.dims();
            let values: Vec<f32> = logits
                .into_data()
                .convert::<f32>()
                .into_vec()
                .expect("float logits");
            let mut next_ids = Vec::with_capacity(batch);
            for (row, logits) in values.chunks(vocab).enumerate() {
                if done[row] {
                    // A finished sequence keeps its place in the batch; its tokens are unused.
                    next_ids.push(0i64);
                    continue;
                }
                let next = config.pick(logits, &mut rngs[row]);
                generated[row].push(next);
                done[row] = config.eos_token_id == Some(next)
                    || generated[row].len() >= config.max_new_tokens;
                next_ids.push(i64::from(next));
            }
            input = Tensor::from_data(TensorData::new(next_ids, [batch, 1]), &device);
        }
        Ok(generated)
    }

    /// Continues `prompt` and returns the new tokens only.
    ///
    /// # Errors
    /// An empty prompt, an id outside the vocabulary, sampling parameters out of range.
    pub fn generate(&self, prompt: &[u32], config: &GenerationConfig) -> Result<Vec<u32>> {
        if prompt.is_empty() {
            return Err(ModelError::Generation("the prompt is empty".into()));
        }
        self.check_ids(prompt)?;
        config.check()?;
        let mut rng = config.rng();
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
            let next = config.pick(&last, &mut rng);
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
