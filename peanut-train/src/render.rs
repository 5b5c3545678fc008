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
/// epoch's examples (each batch weighted by its size, as burn's metric logs aggregate them, so
/// a short last batch counts for what it holds); learning rate and throughput are the latest
/// values.
///
/// With several devices, burn reports the last step of an epoch once per device, each report
/// saying the epoch is complete. The epoch's line waits until the next report of another split
/// or epoch (or the end of the run) so that it counts every device's last batch and is printed
/// once.
pub struct PlainRenderer {
    names: BTreeMap<String, String>,
    train: BTreeMap<String, Running>,
    valid: BTreeMap<String, Running>,
    /// A finished epoch whose line is not printed yet.
    pending: Option<Finished>,
    last: Instant,
    interval: Duration,
    label: String,
    print: fn(&str),
}

/// An epoch of one split that reported completion: where it stands and its values.
struct Finished {
    split: &'static str,
    /// Epoch (1-based) and epoch count.
    epoch: (usize, usize),
    /// Items processed of the epoch's total, as burn counts them.
    progress: Option<(usize, usize)>,
    values: BTreeMap<String, Running>,
}

fn print_line(line: &str) {
    println!("{line}");
}

impl PlainRenderer {
    /// A renderer whose lines start with `label` (the run's name), printing progress at most
    /// every `interval`.
    pub fn new(label: impl Into<String>, interval: Duration) -> Self {
        Self {
            names: BTreeMap::new(),
            train: BTreeMap::new(),
            valid: BTreeMap::new(),
            pending: None,
            last: Instant::now(),
            interval,
            label: label.into(),
            print: print_line,
        }
    }

    fn store(map: &mut BTreeMap<String, Running>, state: MetricState) {
        if let MetricState::Numeric(entry, value) = state {
            let running = map.entry(id_key(&entry.metric_id)).or_default();
            running.add(&value);
        }
    }

    fn line(
        &self,
        split: &str,
        epoch: (usize, usize),
        progress: Option<(usize, usize)>,
        values: &BTreeMap<String, Running>,
    ) -> String {
        let metrics: Vec<String> = values
            .iter()
            .map(|(id, running)| {
                let name = self.names.get(id).map(String::as_str).unwrap_or(id);
                let latest = name.contains("Learning Rate") || name.contains("Throughput");
                let value = if latest { running.last } else { running.mean() };
                format!("{name} {}", format_value(value))
            })
            .collect();
        let progress = progress
            .map(|(done, total)| format!(" {done}/{total}"))
            .unwrap_or_default();
        format!(
            "[{}] epoch {}/{} {split}{progress}: {}",
            self.label,
            epoch.0,
            epoch.1,
            metrics.join(", ")
        )
    }

    /// Prints the finished epoch's line, if one waits.
    fn flush(&mut self) {
        if let Some(finished) = self.pending.take() {
            let line = self.line(
                finished.split,
                finished.epoch,
                finished.progress,
                &finished.values,
            );
            (self.print)(&line);
        }
    }

    fn render(&mut self, split: &'static str, item: TrainingProgress, valid: bool) {
        let progress = item
            .progress
            .as_ref()
            .map(|p| (p.items_processed, p.items_total));
        let done = progress.is_some_and(|(processed, total)| processed >= total);
        let epoch = (
            item.global_progress.items_processed,
            item.global_progress.items_total,
        );
        let values = if valid {
            &mut self.valid
        } else {
            &mut self.train
        };
        // Another device's report of the epoch that already finished: its last batch joins
        // the epoch's values.
        if let Some(finished) = &mut self.pending
            && done
            && finished.split == split
            && finished.epoch == epoch
        {
            for (id, running) in std::mem::take(values) {
                finished.values.entry(id).or_default().merge(&running);
            }
            return;
        }
        if done {
            let values = std::mem::take(values);
            self.flush();
            self.pending = Some(Finished {
                split,
                epoch,
                progress,
                values,
            });
            self.last = Instant::now();
            return;
        }
        self.flush();
        if self.last.elapsed() >= self.interval {
            self.last = Instant::now();
            let values = if valid { &self.valid } else { &self.train };
            let line = self.line(split, epoch, progress, values);
            (self.print)(&line);
        }
    }
}

impl Drop for PlainRenderer {
    fn drop(&mut self) {
        self.flush();
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

    /// Adds the entries another batch's `Running` holds.
    fn merge(&mut self, other: &Running) {
        self.sum += other.sum;
        self.count += other.count;
        self.last = other.last;
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

    fn on_train_end(
        &mut self,
        summary: Option<burn::train::LearnerSummary>,
    ) -> Result<(), Box<dyn core::error::Error>> {
        self.flush();
        // What burn's default does: the summary, when the learner made one.
        if let Some(summary) = summary {
            println!("{summary}");
        }
        Ok(())
    }
}

impl MetricsRendererEvaluation for PlainRenderer {
    fn update_test(&mut self, _name: EvaluationName, state: MetricState) {
        Self::store(&mut self.valid, state);
    }

    fn render_test(&mut self, item: EvaluationProgress, _: Vec<ProgressType>) {
        self.render("test", TrainingProgress::from(&item), true);
    }

    fn on_test_end(
        &mut self,
        summary: Option<burn::train::LearnerSummary>,
    ) -> Result<(), Box<dyn core::error::Error>> {
        self.flush();
        if let Some(summary) = summary {
            println!("{summary}");
        }
        Ok(())
    }
}

impl MetricsRenderer for PlainRenderer {
    fn manual_close(&mut self) {
        self.flush();
    }

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

    thread_local! {
        static LINES: std::cell::RefCell<Vec<String>> = const { std::cell::RefCell::new(Vec::new()) };
    }

    fn collect(line: &str) {
        LINES.with(|lines| lines.borrow_mut().push(line.to_string()));
    }

    fn accuracy(value: f64, count: usize) -> MetricState {
        let id = MetricId::new(std::sync::Arc::new("Accuracy".to_string()));
        let entry = burn::train::metric::MetricEntry::new(
            id,
            burn::train::metric::SerializedEntry {
                formatted: String::new(),
                serialized: String::new(),
            },
        );
        MetricState::Numeric(
            entry,
            NumericEntry::Aggregated {
                aggregated_value: value,
                count,
            },
        )
    }

    fn at(step: usize, steps: usize, epoch: usize) -> TrainingProgress {
        use burn::data::dataloader::Progress;
        TrainingProgress {
            progress: Some(Progress {
                items_processed: step,
                items_total: steps,
            }),
            global_progress: Progress {
                items_processed: epoch,
                items_total: 2,
            },
            iteration: None,
        }
    }

    #[test]
    fn an_epoch_reported_complete_by_two_devices_prints_one_line_with_both() {
        let mut renderer = PlainRenderer::new("run", Duration::from_secs(3600));
        renderer.print = collect;
        renderer.register_metric(MetricDefinition {
            metric_id: MetricId::new(std::sync::Arc::new("Accuracy".to_string())),
            name: "Accuracy".to_string(),
            description: None,
            attributes: burn::train::metric::MetricAttributes::None,
        });
        // Two steps of 4 examples at 50 %, then each device's last batch of 2: 100 % and 0 %.
        for (step, value, count) in [(1, 50.0, 4), (2, 50.0, 4), (3, 100.0, 2), (3, 0.0, 2)] {
            renderer.update_train(accuracy(value, count));
            renderer.render_train(at(step, 3, 1), Vec::new());
        }
        renderer.update_valid(accuracy(75.0, 4));
        renderer.render_valid(at(1, 1, 1), Vec::new());
        // The next epoch's first batch does not join the finished validation line.
        renderer.update_train(accuracy(10.0, 4));
        renderer.render_train(at(1, 3, 2), Vec::new());
        drop(renderer);
        let lines = LINES.with(|lines| lines.borrow().clone());
        assert_eq!(
            lines,
            [
                "[run] epoch 1/2 train 3/3: Accuracy 50.0000",
                "[run] epoch 1/2 valid 1/1: Accuracy 75.0000",
            ]
        );
    }
}
