//! The dashboard choice: burn's `tui` dashboard on a terminal, [`PlainRenderer`] otherwise.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

use burn::train::metric::{MetricDefinition, MetricId, NumericEntry};
use burn::train::renderer::{
    EvaluationName, EvaluationProgress, MetricState, MetricsRenderer, MetricsRendererEvaluation,
    MetricsRendererTraining, ProgressType, TrainingProgress,
};

/// Whether burn's terminal dashboard can run: stdout is a terminal and `PEANUT_PLAIN` is unset.
pub fn use_dashboard() -> bool {
    std::io::stdout().is_terminal() && std::env::var_os("PEANUT_PLAIN").is_none()
}

/// A quiet renderer for logs and CI: one line per split at the end of every epoch, and at most
/// one progress line every `interval` in between. Loss and accuracies are means over the
/// epoch's examples so far (each batch weighted by its size, as burn's metric logs aggregate
/// them, so a short last batch counts for what it holds); learning rate and throughput are the
/// latest values.
pub struct PlainRenderer {
    names: BTreeMap<String, String>,
    train: BTreeMap<String, Running>,
    valid: BTreeMap<String, Running>,
    last: Instant,
    interval: Duration,
    label: String,
}

impl PlainRenderer {
    /// A renderer whose lines start with `label` (the run's name), printing progress at most
    /// every `interval`.
    pub fn new(label: impl Into<String>, interval: Duration) -> Self {
        Self {
            names: BTreeMap::new(),
            train: BTreeMap::new(),
            valid: BTreeMap::new(),
            last: Instant::now(),
            interval,
            label: label.into(),
        }
    }

    fn store(map: &mut BTreeMap<String, Running>, state: MetricState) {
        if let MetricState::Numeric(entry, value) = state {
            let running = map.entry(id_key(&entry.metric_id)).or_default();
            running.add(&value);
        }
    }

    fn line(&self, split: &str, item: &TrainingProgress, values: &BTreeMap<String, Running>) {
        let metrics: Vec<String> = values
            .iter()
            .map(|(id, running)| {
                let name = self.names.get(id).map(String::as_str).unwrap_or(id);
                let latest = name.contains("Learning Rate") || name.contains("Throughput");
                let value = if latest { running.last } else { running.mean() };
                format!("{name} {}", format_value(value))
            })
            .collect();
        let progress = item
            .progress
            .as_ref()
            .map(|p| format!(" {}/{}", p.items_processed, p.items_total))
            .unwrap_or_default();
        println!(
            "[{}] epoch {}/{} {split}{progress}: {}",
            self.label,
            item.global_progress.items_processed,
            item.global_progress.items_total,
            metrics.join(", ")
        );
    }

    fn render(&mut self, split: &str, item: TrainingProgress, valid: bool) {
        let done = item
            .progress
            .as_ref()
            .is_some_and(|p| p.items_processed >= p.items_total);
        if done || self.last.elapsed() >= self.interval {
            self.last = Instant::now();
            let values = if valid { &self.valid } else { &self.train };
            self.line(split, &item, values);
        }
        if done {
            let values = if valid {
                &mut self.valid
            } else {
                &mut self.train
            };
            values.clear();
        }
    }
}

/// A metric's values over the current epoch.
#[derive(Debug, Clone, Copy, Default)]
struct Running {
    /// Sum of value × weight.
    sum: f64,
    /// Sum of the weights: examples for aggregated entries, 1 for plain values.
    count: usize,
    last: f64,
}

impl Running {
    /// Adds one batch's entry, weighted by the number of examples it aggregates.
    fn add(&mut self, entry: &NumericEntry) {
        let (value, weight) = match entry {
            NumericEntry::Value(value) => (*value, 1),
            NumericEntry::Aggregated {
                aggregated_value,
                count,
            } => (*aggregated_value, *count),
        };
        if weight > 0 {
            self.sum += value * weight as f64;
            self.count += weight;
        }
        self.last = value;
    }

    /// The weighted mean so far.
    fn mean(&self) -> f64 {
        self.sum / self.count.max(1) as f64
    }
}

fn id_key(id: &MetricId) -> String {
    format!("{id:?}")
}

fn format_value(value: f64) -> String {
    if value != 0.0 && (value.abs() < 1e-3 || value.abs() >= 1e5) {
        format!("{value:.3e}")
    } else {
        format!("{value:.4}")
    }
}

impl MetricsRendererTraining for PlainRenderer {
    fn update_train(&mut self, state: MetricState) {
        Self::store(&mut self.train, state);
    }

    fn update_valid(&mut self, state: MetricState) {
        Self::store(&mut self.valid, state);
    }

    fn render_train(&mut self, item: TrainingProgress, _: Vec<ProgressType>) {
        self.render("train", item, false);
    }

    fn render_valid(&mut self, item: TrainingProgress, _: Vec<ProgressType>) {
        self.render("valid", item, true);
    }
}

impl MetricsRendererEvaluation for PlainRenderer {
    fn update_test(&mut self, _name: EvaluationName, state: MetricState) {
        Self::store(&mut self.valid, state);
    }

    fn render_test(&mut self, item: EvaluationProgress, _: Vec<ProgressType>) {
        self.render("test", TrainingProgress::from(&item), true);
    }
}

impl MetricsRenderer for PlainRenderer {
    fn manual_close(&mut self) {}

    fn register_metric(&mut self, definition: MetricDefinition) {
        self.names
            .insert(id_key(&definition.metric_id), definition.name.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_means_weight_batches_by_their_size() {
        // Batches of 4 at 25 % and 2 at 100 %: 3 of 6 right is 50 %, not (25 + 100) / 2.
        let mut running = Running::default();
        for (value, count) in [(25.0, 4), (100.0, 2)] {
            running.add(&NumericEntry::Aggregated {
                aggregated_value: value,
                count,
            });
        }
        assert!((running.mean() - 50.0).abs() < 1e-12, "{}", running.mean());
        assert_eq!(running.last, 100.0);
        // Plain values count once each.
        let mut plain = Running::default();
        plain.add(&NumericEntry::Value(1.0));
        plain.add(&NumericEntry::Value(3.0));
        assert_eq!(plain.mean(), 2.0);
    }
}
