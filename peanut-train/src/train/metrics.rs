//! Extra dashboard metrics: throughput in examples per second.

use std::sync::Arc;
use std::time::Instant;

use burn::train::metric::state::{FormatOptions, NumericMetricState};
use burn::train::metric::{
    Metric, MetricAttributes, MetricMetadata, MetricName, Numeric, NumericAttributes, NumericEntry,
    SerializedEntry,
};

/// Examples (images, or sequences) processed per second since the start of the epoch.
#[derive(Clone)]
pub struct ThroughputMetric {
    name: MetricName,
    unit: String,
    state: NumericMetricState,
    start: Option<(Instant, usize)>,
}

impl ThroughputMetric {
    /// A throughput metric reporting in `unit` (for example `images/s`).
    pub fn new(unit: &str) -> Self {
        Self {
            name: Arc::new("Throughput".to_string()),
            unit: unit.to_string(),
            state: NumericMetricState::default(),
            start: None,
        }
    }
}

impl Metric for ThroughputMetric {
    type Input = ();

    fn name(&self) -> MetricName {
        self.name.clone()
    }

    fn update(&mut self, _: &(), metadata: &MetricMetadata) -> SerializedEntry {
        let items = metadata.progress.items_processed;
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

impl Numeric for ThroughputMetric {
    fn value(&self) -> NumericEntry {
        self.state.current_value()
    }

    fn running_value(&self) -> NumericEntry {
        self.state.running_value()
    }
}
