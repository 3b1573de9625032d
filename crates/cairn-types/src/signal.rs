//! What ingestion gives: metric samples and alert events.

use crate::{Labels, SeriesId, TimestampMs, series_id_of_sorted};
use std::ops::Range;
use serde::{Deserialize, Serialize};
use std::fmt;

/// One validated input to the pipeline.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Signal {
    Sample(MetricSample),
    Alert(AlertEvent),
}

/// One sample of one series, as Prometheus's remote_write carries it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MetricSample {
    pub labels: Labels,
    pub timestamp_ms: TimestampMs,
    pub value: f64,
}

/// Many samples grouped by series, the way remote_write carries them: each series' labels and id
/// once, its points as `(timestamp, value)` pairs. This is what ingestion hands to detection.
///
/// All label text lives in one string, so a batch costs a handful of allocations however many
/// series it holds; [`SeriesSamples::to_labels`] builds an owned [`Labels`] only where one is
/// needed (an emitted anomaly). Labels are stored sorted by name, so the id is computed once, here.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SampleBatch {
    text: String,
    /// Byte ranges of a name and its value in `text`.
    labels: Vec<(Range<u32>, Range<u32>)>,
    series: Vec<SeriesEntry>,
    points: Vec<(TimestampMs, f64)>,
}

#[derive(Clone, Debug, PartialEq)]
struct SeriesEntry {
    id: SeriesId,
    labels: Range<u32>,
    points: Range<u32>,
}

impl SampleBatch {
    pub fn new() -> SampleBatch {
        SampleBatch::default()
    }

    /// Room for `series` series, `labels` labels, `text` bytes of label text and `points` points.
    pub fn with_capacity(series: usize, labels: usize, text: usize, points: usize) -> SampleBatch {
        SampleBatch {
            text: String::with_capacity(text),
            labels: Vec::with_capacity(labels),
            series: Vec::with_capacity(series),
            points: Vec::with_capacity(points),
        }
    }

    /// Adds one series with its points. Label names must be distinct (validated by the caller);
    /// they may come in any order. A series may appear more than once in a batch.
    pub fn push_series<'a>(
        &mut self,
        labels: impl IntoIterator<Item = (&'a str, &'a str)>,
        points: impl IntoIterator<Item = (TimestampMs, f64)>,
    ) {
        let first_label = self.labels.len();
        let mut sorted = true;
        for (name, value) in labels {
            let n = self.push_text(name);
            let v = self.push_text(value);
            if let Some((prev, _)) = self.labels[first_label..].last() {
                sorted &= self.text[prev.start as usize..prev.end as usize] < *name;
            }
            self.labels.push((n, v));
        }
        let text = &self.text;
        let own = &mut self.labels[first_label..];
        if !sorted {
            own.sort_by(|(a, _), (b, _)| text[a.start as usize..a.end as usize].cmp(&text[b.start as usize..b.end as usize]));
        }
        let id = series_id_of_sorted(
            own.iter().map(|(n, v)| (&text[n.start as usize..n.end as usize], &text[v.start as usize..v.end as usize])),
        );
        let first_point = self.points.len();
        self.points.extend(points);
        self.series.push(SeriesEntry {
            id,
            labels: index(first_label)..index(self.labels.len()),
            points: index(first_point)..index(self.points.len()),
        });
    }

    /// Adds one sample as a series of one point.
    pub fn push_sample(&mut self, s: &MetricSample) {
        self.push_series(s.labels.iter(), [(s.timestamp_ms, s.value)]);
    }

    fn push_text(&mut self, s: &str) -> Range<u32> {
        let start = index(self.text.len());
        self.text.push_str(s);
        start..index(self.text.len())
    }

    /// Samples in the batch.
    pub fn len(&self) -> usize {
        self.points.len()
    }

    pub fn is_empty(&self) -> bool {
        self.points.is_empty()
    }

    /// Series entries in the batch (a series sent twice counts twice).
    pub fn series_count(&self) -> usize {
        self.series.len()
    }

    /// One series entry by position, `i < series_count()`.
    pub fn series(&self, i: usize) -> SeriesSamples<'_> {
        let e = &self.series[i];
        SeriesSamples {
            id: e.id,
            points: &self.points[e.points.start as usize..e.points.end as usize],
            batch: self,
            labels: e.labels.start as usize..e.labels.end as usize,
        }
    }

    pub fn iter(&self) -> impl ExactSizeIterator<Item = SeriesSamples<'_>> {
        (0..self.series.len()).map(|i| self.series(i))
    }

    /// Every sample as an owned [`MetricSample`], in batch order (for tests and slow paths).
    pub fn to_samples(&self) -> Vec<MetricSample> {
        self.iter()
            .flat_map(|s| {
                let labels = s.to_labels();
                s.points.iter().map(move |&(timestamp_ms, value)| MetricSample { labels: labels.clone(), timestamp_ms, value })
            })
            .collect()
    }
}

/// Label text is indexed with u32: a batch is bounded by the ingest limits, far below 4 GiB.
fn index(n: usize) -> u32 {
    u32::try_from(n).expect("a sample batch holds less than 4 GiB")
}

impl<'a> FromIterator<&'a MetricSample> for SampleBatch {
    fn from_iter<I: IntoIterator<Item = &'a MetricSample>>(iter: I) -> Self {
        let mut b = SampleBatch::new();
        for s in iter {
            b.push_sample(s);
        }
        b
    }
}

/// One series entry of a [`SampleBatch`]: its id, its labels (sorted by name) and its points.
#[derive(Clone, Debug)]
pub struct SeriesSamples<'a> {
    pub id: SeriesId,
    pub points: &'a [(TimestampMs, f64)],
    batch: &'a SampleBatch,
    labels: Range<usize>,
}

impl<'a> SeriesSamples<'a> {
    /// The labels, sorted by name.
    pub fn labels(&self) -> impl Iterator<Item = (&'a str, &'a str)> + use<'a> {
        let text = &self.batch.text;
        self.batch.labels[self.labels.clone()]
            .iter()
            .map(move |(n, v)| (&text[n.start as usize..n.end as usize], &text[v.start as usize..v.end as usize]))
    }

    /// The value of one label, if present.
    pub fn label(&self, name: &str) -> Option<&'a str> {
        self.labels().find(|(n, _)| *n == name).map(|(_, v)| v)
    }

    /// An owned copy of the labels.
    pub fn to_labels(&self) -> Labels {
        self.labels().collect()
    }
}

/// One alert in one state, as Alertmanager's webhook carries it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AlertEvent {
    /// Alertmanager's fingerprint of the label set; stable across firing and resolved.
    pub fingerprint: String,
    pub status: AlertStatus,
    pub labels: Labels,
    pub annotations: Labels,
    pub starts_at_ms: TimestampMs,
    /// `None` while firing (Alertmanager sends `0001-01-01T00:00:00Z`).
    pub ends_at_ms: Option<TimestampMs>,
    pub generator_url: String,
    /// Where it came from: the Alertmanager receiver name, or the gRPC producer.
    pub source: String,
}

impl AlertEvent {
    pub fn alertname(&self) -> &str {
        self.labels.get("alertname").unwrap_or("")
    }

    /// Severity from the conventional `severity` label.
    pub fn severity(&self) -> Severity {
        self.labels
            .get("severity")
            .map(Severity::from_label)
            .unwrap_or(Severity::Medium)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertStatus {
    Firing,
    Resolved,
}

impl AlertStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertStatus::Firing => "firing",
            AlertStatus::Resolved => "resolved",
        }
    }
}

/// How bad something is, for anomalies, incidents and recommendations alike. Ordered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Low,
    Medium,
    High,
    Critical,
}

impl Severity {
    pub const ALL: [Severity; 4] = [Severity::Low, Severity::Medium, Severity::High, Severity::Critical];

    /// Maps the severity labels people put on Prometheus alert rules.
    pub fn from_label(s: &str) -> Severity {
        match s.to_ascii_lowercase().as_str() {
            "info" | "none" | "low" => Severity::Low,
            "warning" | "warn" | "medium" => Severity::Medium,
            "error" | "major" | "high" => Severity::High,
            "critical" | "page" | "fatal" | "emergency" => Severity::Critical,
            _ => Severity::Medium,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }

    pub fn parse(s: &str) -> Option<Severity> {
        Severity::ALL.into_iter().find(|v| v.as_str() == s)
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(labels: &[(&str, &str)], t: i64, v: f64) -> MetricSample {
        MetricSample { labels: labels.iter().copied().collect(), timestamp_ms: t, value: v }
    }

    #[test]
    fn a_batch_gives_back_what_was_pushed_with_the_labels_own_series_id() {
        let a = sample(&[("__name__", "up"), ("job", "node")], 1, 1.0);
        let b = sample(&[("__name__", "errors"), ("code", "500")], 2, f64::NAN);
        let batch: SampleBatch = [&a, &b].into_iter().collect();
        assert_eq!(batch.len(), 2);
        assert_eq!(batch.series_count(), 2);
        assert_eq!(batch.series(0).id, a.labels.series_id());
        assert_eq!(batch.series(1).id, b.labels.series_id());
        let back = batch.to_samples();
        assert_eq!(back[0], a);
        assert_eq!(back[1].labels, b.labels);
        assert!(back[1].value.is_nan());
    }

    #[test]
    fn label_order_does_not_change_the_id_or_the_stored_order() {
        let mut batch = SampleBatch::new();
        batch.push_series([("job", "node"), ("__name__", "up"), ("a", "1")], [(1, 1.0), (2, 2.0)]);
        batch.push_series([("__name__", "up"), ("a", "1"), ("job", "node")], [(3, 3.0)]);
        let (x, y) = (batch.series(0), batch.series(1));
        assert_eq!(x.id, y.id);
        assert_eq!(x.labels().collect::<Vec<_>>(), vec![("__name__", "up"), ("a", "1"), ("job", "node")]);
        assert_eq!(x.labels().collect::<Vec<_>>(), y.labels().collect::<Vec<_>>());
        assert_eq!(x.to_labels().series_id(), x.id);
        assert_eq!(x.points, &[(1, 1.0), (2, 2.0)]);
        assert_eq!(batch.len(), 3);
    }
}
