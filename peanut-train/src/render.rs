//! The dashboard choice: burn's `tui` dashboard on a terminal, [`PlainRenderer`] otherwise.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

use burn::train::metric::{MetricDefinition, MetricId};
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
/// epoch's batches so far; learning rate and throughput are the latest values.
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
            running.sum += value.current();
            running.count += 1;
            running.last = value.current();
        }
    }

    fn line(&self, split: &str, item: &TrainingProgress, values: &BTreeMap<String, Running>) {
        let metrics: Vec<String> = values
            .iter()
            .map(|(id, running)| {
                let name = self.names.get(id).map(String::as_str).unwrap_or(id);
                let latest = name.contains("Learning Rate") || name.contains("Throughput");
                let value = if latest {
                    running.last
                } else {
                    running.sum / running.count.max(1) as f64
                };
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
    sum: f64,
    count: usize,
    last: f64,
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
