//! Learning-rate schedule: linear warmup, then linear or cosine decay (or none).

use burn::optim::LearningRate;
use burn::optim::lr_scheduler::LrScheduler;
use burn::tensor::backend::Backend;
use serde::{Deserialize, Serialize};

/// How the learning rate falls after warmup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Decay {
    /// Linearly to zero at the last step (the paper's ViT setting).
    #[default]
    Linear,
    /// Half a cosine, to zero at the last step.
    Cosine,
    /// Stays at the peak.
    Constant,
}

/// Warmup then decay, stepped once per training iteration (burn's Learner calls
/// [`LrScheduler::step`] before every batch).
///
/// At step `s` (1-based), with `w` warmup steps and `T` total steps:
/// `lr = peak · s / w` for `s ≤ w`; afterwards, with `p = (s − w) / (T − w)`,
/// linear: `peak · (1 − p)`, cosine: `peak · (1 + cos(π·p)) / 2`, constant: `peak`.
/// The step count is the scheduler's record, so a resumed run continues the same curve.
#[derive(Debug, Clone, PartialEq)]
pub struct WarmupDecay {
    /// The learning rate reached at the end of warmup.
    pub peak: LearningRate,
    /// Number of warmup steps (0 for none).
    pub warmup_steps: usize,
    /// Total number of steps of the run.
    pub total_steps: usize,
    /// The decay after warmup.
    pub decay: Decay,
    step: usize,
}

impl WarmupDecay {
    /// A schedule at step 0.
    pub fn new(peak: LearningRate, warmup_steps: usize, total_steps: usize, decay: Decay) -> Self {
        Self {
            peak,
            warmup_steps,
            total_steps: total_steps.max(1),
            decay,
            step: 0,
        }
    }

    /// The learning rate at 1-based step `step`.
    pub fn at(&self, step: usize) -> LearningRate {
        if step <= self.warmup_steps {
            return self.peak * step as f64 / self.warmup_steps.max(1) as f64;
        }
        let span = self.total_steps.saturating_sub(self.warmup_steps).max(1) as f64;
        let progress = ((step - self.warmup_steps) as f64 / span).min(1.0);
        match self.decay {
            Decay::Linear => self.peak * (1.0 - progress),
            Decay::Cosine => self.peak * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()),
            Decay::Constant => self.peak,
        }
    }
}

impl LrScheduler for WarmupDecay {
    type Record<B: Backend> = usize;

    fn step(&mut self) -> LearningRate {
        self.step += 1;
        self.at(self.step)
    }

    fn to_record<B: Backend>(&self) -> Self::Record<B> {
        self.step
    }

    fn load_record<B: Backend>(mut self, record: Self::Record<B>) -> Self {
        self.step = record;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_linear_reaches_zero() {
        let mut s = WarmupDecay::new(1.0, 2, 6, Decay::Linear);
        let lrs: Vec<f64> = (0..6).map(|_| s.step()).collect();
        assert_eq!(lrs, vec![0.5, 1.0, 0.75, 0.5, 0.25, 0.0]);
    }

    #[test]
    fn cosine_is_half_at_midpoint_and_record_resumes() {
        let s = WarmupDecay::new(2.0, 0, 10, Decay::Cosine);
        assert!((s.at(5) - 1.0).abs() < 1e-12);
        assert!(s.at(10).abs() < 1e-12);
        let mut a = WarmupDecay::new(2.0, 3, 10, Decay::Cosine);
        for _ in 0..4 {
            a.step();
        }
        let record = a.to_record::<crate::backend::Selected>();
        let mut b = WarmupDecay::new(2.0, 3, 10, Decay::Cosine)
            .load_record::<crate::backend::Selected>(record);
        assert_eq!(a.step(), b.step());
    }
}
