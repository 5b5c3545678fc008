//! Extra dashboard metrics: throughput (examples or tokens per second) and the accuracy of
//! next-token prediction.

use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Instant;

use burn::train::metric::state::{FormatOptions, NumericMetricState};
use burn::train::metric::{
    Metric, MetricAttributes, MetricMetadata, MetricName, Numeric, NumericAttributes, NumericEntry,
    SerializedEntry,
};

/// What a [`ThroughputMetric`] counts: with `()` the examples the Learner reports, with
/// [`TokenCount`] the tokens of each batch.
pub trait Processed {
    /// Units in this batch, or `None` to count the Learner's examples.
    fn units(&self) -> Option<usize>;
}

impl Processed for () {
    fn units(&self) -> Option<usize> {
        None
    }
}

/// Tokens (padding excluded) in one batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenCount(pub usize);

impl Processed for TokenCount {
    fn units(&self) -> Option<usize> {
        Some(self.0)
    }
}

/// Examples (images, sequences) or tokens processed per second since the start of the epoch.
pub struct ThroughputMetric<I = ()> {
    name: MetricName,
    unit: String,
    state: NumericMetricState,
    start: Option<(Instant, usize)>,
    units: usize,
    _input: PhantomData<fn(&I)>,
}

impl<I> Clone for ThroughputMetric<I> {
    fn clone(&self) -> Self {
        Self {
            name: self.name.clone(),
            unit: self.unit.clone(),
            state: self.state.clone(),
            start: self.start,
            units: self.units,
            _input: PhantomData,
        }
    }
}

impl<I> ThroughputMetric<I> {
    fn with_unit(unit: &str) -> Self {
        Self {
            name: Arc::new("Throughput".to_string()),
            unit: unit.to_string(),
            state: NumericMetricState::default(),
            start: None,
            units: 0,
            _input: PhantomData,
        }
    }
}

impl ThroughputMetric {
    /// Examples per second, reported in `unit` (for example `images/s`).
    pub fn new(unit: &str) -> Self {
        Self::with_unit(unit)
    }
}

impl ThroughputMetric<TokenCount> {
    /// Tokens per second (`tokens/s`).
    pub fn tokens() -> Self {
        Self::with_unit("tokens/s")
    }
}

impl<I: Processed> Metric for ThroughputMetric<I> {
    type Input = I;

    fn name(&self) -> MetricName {
        self.name.clone()
    }

    fn update(&mut self, input: &I, metadata: &MetricMetadata) -> SerializedEntry {
        let items = match input.units() {
            Some(units) => {
                self.units += units;
                self.units
            }
            None => metadata.progress.items_processed,
        };
        let rate = match self.start {
            Some((at, first)) if items > first => {
                (items - first) as f64 / at.elapsed().as_secs_f64().max(1e-9)
            }
            Some(_) => 0.0,
            None => {
                self.start = Some((Instant::now(), items));
                0.0
            }
        };
        self.state.update(
            rate,
            1,
            FormatOptions::new(self.name())
                .unit(&self.unit)
                .precision(1),
        )
    }

    fn clear(&mut self) {
        self.start = None;
        self.units = 0;
        self.state.reset();
    }

    fn attributes(&self) -> MetricAttributes {
        NumericAttributes {
            unit: Some(self.unit.clone()),
            higher_is_better: true,
        }
        .into()
    }
}

impl<I: Processed> Numeric for ThroughputMetric<I> {
    fn value(&self) -> NumericEntry {
        self.state.current_value()
    }

    fn running_value(&self) -> NumericEntry {
        self.state.running_value()
    }
}

/// Response tokens of one batch and how many of them the model predicted (argmax) right.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenPredictions {
    /// Correct predictions.
    pub correct: usize,
    /// Tokens predicted (those that carry loss).
    pub total: usize,
}

/// Next-token accuracy on the tokens that carry loss, in percent, averaged over tokens.
#[derive(Clone)]
pub struct TokenAccuracyMetric {
    name: MetricName,
    state: NumericMetricState,
}

impl TokenAccuracyMetric {
    /// The metric (named `Accuracy`).
    pub fn new() -> Self {
        Self {
            name: Arc::new("Accuracy".to_string()),
            state: NumericMetricState::default(),
        }
    }
}

impl Default for TokenAccuracyMetric {
    fn default() -> Self {
        Self::new()
    }
}

impl Metric for TokenAccuracyMetric {
    type Input = TokenPredictions;

    fn name(&self) -> MetricName {
        self.name.clone()
    }

    fn update(&mut self, input: &TokenPredictions, _: &MetricMetadata) -> SerializedEntry {
        let accuracy = 100.0 * input.correct as f64 / input.total.max(1) as f64;
        self.state.update(
            accuracy,
            input.total.max(1),
            FormatOptions::new(self.name()).unit("%").precision(2),
        )
    }

    fn clear(&mut self) {
        self.state.reset();
    }

    fn attributes(&self) -> MetricAttributes {
        NumericAttributes {
            unit: Some("%".into()),
            higher_is_better: true,
        }
        .into()
    }
}

impl Numeric for TokenAccuracyMetric {
    fn value(&self) -> NumericEntry {
        self.state.current_value()
    }

    fn running_value(&self) -> NumericEntry {
        self.state.running_value()
    }
}
