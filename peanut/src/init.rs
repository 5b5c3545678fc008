//! Seeded, backend-independent parameter initialisation.
//!
//! burn's own initialisers draw from the backend's random generator, whose stream differs between
//! ndarray, wgpu and CUDA. Adapters here are drawn on the CPU from a small counter-based generator
//! instead, so the same seed gives bit-identical adapters on every backend.

use burn::tensor::{Tensor, TensorData, backend::Backend};

/// A SplitMix64 stream: tiny, fast, and statistically sound for initialisation.
#[derive(Debug, Clone)]
pub struct SeededRng {
    state: u64,
}

impl SeededRng {
    /// A generator whose stream is fully determined by `seed`.
    pub fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A generator for the tuple of `parts` (for example seed, epoch, example index), whose
    /// stream is unrelated to that of any other tuple: each part is xored into the state and
    /// the result goes through SplitMix64's whole output function, which becomes the next state.
    ///
    /// (Adding the step to the state alone, without the output function, is nearly linear: for
    /// small parts, `(seed 0, epoch 1)` and `(seed 3, epoch 0)` then started the same stream, so
    /// different seeds trained on the same epoch orders.)
    pub fn for_parts(parts: &[u64]) -> Self {
        let mut state = 0x9E37_79B9_7F4A_7C15;
        for &part in parts {
            state = Self::new(state ^ part).next_u64();
        }
        Self::new(state)
    }

    /// A uniform draw from `[0, 1)` (53 random mantissa bits).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// A uniform draw from `[low, high)`.
    pub fn uniform(&mut self, low: f64, high: f64) -> f64 {
        low + (high - low) * self.next_f64()
    }

    /// A uniform integer in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_f64() * n as f64) as usize % n.max(1)
    }

    /// A random permutation of `0..n` (Fisher–Yates).
    pub fn permutation(&mut self, n: usize) -> Vec<usize> {
        let mut order: Vec<usize> = (0..n).collect();
        for i in (1..n).rev() {
            let j = self.below(i + 1);
            order.swap(i, j);
        }
        order
    }
}

/// Mixes a module path (for example `encoder.layer.3.attention.attention.query`) into a base
/// seed, so every adapted layer of a model gets its own reproducible stream.
pub fn layer_seed(base_seed: u64, module_path: &str) -> u64 {
    // FNV-1a over the path, then one SplitMix step to spread the bits.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in module_path.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01B3);
    }
    SeededRng::new(base_seed ^ hash).next_u64()
}

/// A `[rows, cols]` tensor drawn from `U(-1/√fan_in, 1/√fan_in)`, the default initialisation of
/// PyTorch's `nn.Linear` (Kaiming-uniform with `a = √5`).
pub fn kaiming_uniform<B: Backend>(
    rng: &mut SeededRng,
    shape: [usize; 2],
    fan_in: usize,
    device: &B::Device,
) -> Tensor<B, 2> {
    let bound = 1.0 / (fan_in.max(1) as f64).sqrt();
    let values: Vec<f32> = (0..shape[0] * shape[1])
        .map(|_| rng.uniform(-bound, bound) as f32)
        .collect();
    Tensor::from_data(TensorData::new(values, shape), device)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_stream_other_seed_other_stream() {
        let draw = |seed| {
            let mut rng = SeededRng::new(seed);
            (0..8).map(|_| rng.next_u64()).collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
    }

    #[test]
    fn uniform_stays_in_range_and_covers_it() {
        let mut rng = SeededRng::new(1);
        let draws: Vec<f64> = (0..10_000).map(|_| rng.uniform(-0.5, 0.5)).collect();
        assert!(draws.iter().all(|v| (-0.5..0.5).contains(v)));
        let mean = draws.iter().sum::<f64>() / draws.len() as f64;
        assert!(mean.abs() < 0.02, "mean {mean}");
        assert!(draws.iter().any(|&v| v < -0.45) && draws.iter().any(|&v| v > 0.45));
    }

    #[test]
    fn nearby_tuples_start_unrelated_streams() {
        // Every (seed, epoch) of small values its own stream: none of their first draws, nor
        // their first four draws after the state, coincide.
        let mut firsts = std::collections::HashSet::new();
        for seed in 0..64u64 {
            for epoch in 0..64u64 {
                let mut rng = SeededRng::for_parts(&[seed, epoch]);
                assert!(
                    firsts.insert((rng.next_u64(), rng.next_u64())),
                    "({seed}, {epoch})"
                );
            }
        }
        // The pairs the earlier xor-then-step mixing sent to one stream.
        let order = |parts: &[u64]| SeededRng::for_parts(parts).permutation(1000);
        assert_ne!(order(&[0, 1]), order(&[3, 0]));
        assert_ne!(order(&[0, 2]), order(&[1, 1]));
        // Three parts (seed, epoch, example) too: example i of epoch 0 and example i ^ k of
        // epoch 1 must not share a stream.
        let mut triples = std::collections::HashSet::new();
        for epoch in 0..8u64 {
            for example in 0..512u64 {
                assert!(triples.insert(SeededRng::for_parts(&[5, epoch, example]).next_u64()));
            }
        }
    }

    #[test]
    fn layer_seeds_differ_by_path() {
        assert_ne!(
            layer_seed(0, "layer.0.query"),
            layer_seed(0, "layer.0.value")
        );
        assert_eq!(layer_seed(3, "q"), layer_seed(3, "q"));
        assert_ne!(layer_seed(3, "q"), layer_seed(4, "q"));
    }
}
