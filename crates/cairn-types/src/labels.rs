//! Label sets and series identity.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use xxhash_rust::xxh3::{Xxh3Default, xxh3_64};

/// The label that carries a metric's name in Prometheus's data model.
pub const METRIC_NAME_LABEL: &str = "__name__";

/// A label set, kept sorted by name so that equal sets compare, hash and serialise identically.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Labels(pub BTreeMap<String, String>);

impl Labels {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    pub fn insert(&mut self, name: impl Into<String>, value: impl Into<String>) {
        self.0.insert(name.into(), value.into());
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// The metric name (`__name__`), if any.
    pub fn metric_name(&self) -> Option<&str> {
        self.get(METRIC_NAME_LABEL)
    }

    /// A stable identity for the series these labels name (see [`series_id_of_sorted`]).
    pub fn series_id(&self) -> SeriesId {
        series_id_of_sorted(self.0.iter().map(|(k, v)| (k.as_str(), v.as_str())))
    }
}

/// The series id of a label set given as `(name, value)` pairs sorted by name, with distinct
/// names: xxh3-64 (seed 0, fixed forever) over `name 0xff value 0xfe` for each pair. The bytes
/// 0xff and 0xfe never occur in UTF-8, so no two different sets share an encoding.
///
/// It is persisted with anomalies, so it must not change between runs, machines or versions; the
/// test `series_id_is_pinned` holds it to known values.
pub fn series_id_of_sorted<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)> + Clone) -> SeriesId {
    // Typical label sets fit a stack buffer and are hashed in one call, which is several times
    // cheaper than feeding a streaming state four small pieces per label; the digest is the same.
    let mut buf = [0u8; 512];
    let mut len = 0;
    for (k, v) in pairs.clone() {
        let end = len + k.len() + v.len() + 2;
        if end > buf.len() {
            return streamed_series_id(pairs);
        }
        buf[len..len + k.len()].copy_from_slice(k.as_bytes());
        buf[len + k.len()] = 0xff;
        buf[len + k.len() + 1..end - 1].copy_from_slice(v.as_bytes());
        buf[end - 1] = 0xfe;
        len = end;
    }
    SeriesId(xxh3_64(&buf[..len]))
}

fn streamed_series_id<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> SeriesId {
    let mut h = Xxh3Default::new();
    for (k, v) in pairs {
        h.update(k.as_bytes());
        h.update(&[0xff]);
        h.update(v.as_bytes());
        h.update(&[0xfe]);
    }
    SeriesId(h.digest())
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for Labels {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        Labels(iter.into_iter().map(|(k, v)| (k.into(), v.into())).collect())
    }
}

impl fmt::Display for Labels {
    /// Prometheus's selector notation: `name{a="1",b="2"}`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(name) = self.metric_name() {
            f.write_str(name)?;
        }
        f.write_str("{")?;
        let mut first = true;
        for (k, v) in self.iter().filter(|(k, _)| *k != METRIC_NAME_LABEL) {
            if !first {
                f.write_str(",")?;
            }
            first = false;
            write!(f, "{k}={v:?}")?;
        }
        f.write_str("}")
    }
}

/// Identity of one metric series (see [`Labels::series_id`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SeriesId(pub u64);

impl fmt::Display for SeriesId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_id_ignores_insertion_order() {
        let a: Labels = [("a", "1"), ("b", "2")].into_iter().collect();
        let b: Labels = [("b", "2"), ("a", "1")].into_iter().collect();
        assert_eq!(a.series_id(), b.series_id());
    }

    #[test]
    fn series_id_does_not_collide_by_concatenation() {
        let a: Labels = [("a", "bc")].into_iter().collect();
        let b: Labels = [("ab", "c")].into_iter().collect();
        assert_ne!(a.series_id(), b.series_id());
    }

    #[test]
    fn series_id_is_pinned() {
        // Persisted ids must never change: these are xxh3-64 of the separated encoding.
        let l: Labels = [("__name__", "up"), ("job", "node")].into_iter().collect();
        let want = xxhash_rust::xxh3::xxh3_64(b"__name__\xffup\xfejob\xffnode\xfe");
        assert_eq!(l.series_id(), SeriesId(want));
        assert_eq!(Labels::new().series_id(), SeriesId(xxhash_rust::xxh3::xxh3_64(b"")));
        assert_eq!(Labels::new().series_id().to_string(), "2d06800538d394c2");
    }

    #[test]
    fn long_label_sets_hash_the_same_way() {
        let long = "v".repeat(600);
        let l: Labels = [("__name__", "up"), ("big", long.as_str())].into_iter().collect();
        let mut bytes = b"__name__\xffup\xfebig\xff".to_vec();
        bytes.extend_from_slice(long.as_bytes());
        bytes.push(0xfe);
        assert_eq!(l.series_id(), SeriesId(xxh3_64(&bytes)));
        assert_eq!(l.series_id(), streamed_series_id(l.iter()));
        let short: Labels = [("__name__", "up")].into_iter().collect();
        assert_eq!(short.series_id(), streamed_series_id(short.iter()));
    }

    #[test]
    fn display_uses_selector_notation() {
        let l: Labels = [("__name__", "up"), ("job", "node")].into_iter().collect();
        assert_eq!(l.to_string(), "up{job=\"node\"}");
    }
}
