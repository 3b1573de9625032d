//! Prometheus remote_write 1.0: snappy block-compressed protobuf `WriteRequest`s.

use crate::prompb::WriteRequest;
use crate::{IngestError, IngestLimits, check_labels};
use cairn_types::MetricSample;
use prost::Message;

/// Decodes and validates one remote_write request body. All or nothing: any invalid series
/// refuses the whole request, with a message naming it.
pub fn decode_remote_write(
    content_encoding: Option<&str>,
    content_type: Option<&str>,
    body: &[u8],
    limits: &IngestLimits,
) -> Result<Vec<MetricSample>, IngestError> {
    match content_encoding.map(str::trim) {
        Some(e) if e.eq_ignore_ascii_case("snappy") => {}
        other => return Err(IngestError::UnsupportedEncoding(other.unwrap_or("").to_string())),
    }
    if let Some(ct) = content_type {
        let media = ct.split(';').next().unwrap_or("").trim();
        if !media.eq_ignore_ascii_case("application/x-protobuf") {
            return Err(IngestError::UnsupportedContentType(ct.to_string()));
        }
    }
    if body.len() > limits.max_body_bytes {
        return Err(IngestError::BodyTooLarge { limit: limits.max_body_bytes });
    }
    let declared = snap::raw::decompress_len(body).map_err(|e| IngestError::Snappy(e.to_string()))?;
    if declared > limits.max_decompressed_bytes {
        return Err(IngestError::DecompressedTooLarge { declared, limit: limits.max_decompressed_bytes });
    }
    let mut raw = vec![0u8; declared];
    let n = snap::raw::Decoder::new()
        .decompress(body, &mut raw)
        .map_err(|e| IngestError::Snappy(e.to_string()))?;
    raw.truncate(n);
    let req = WriteRequest::decode(raw.as_slice()).map_err(|e| IngestError::Protobuf(e.to_string()))?;

    if req.timeseries.len() > limits.max_series_per_request {
        return Err(IngestError::TooMany {
            what: "series",
            count: req.timeseries.len(),
            limit: limits.max_series_per_request,
        });
    }
    let total: usize = req.timeseries.iter().map(|ts| ts.samples.len()).sum();
    if total > limits.max_samples_per_request {
        return Err(IngestError::TooMany { what: "samples", count: total, limit: limits.max_samples_per_request });
    }
    let mut out = Vec::with_capacity(total);
    for (i, ts) in req.timeseries.iter().enumerate() {
        let labels = check_labels(ts.labels.iter().map(|l| (l.name.as_str(), l.value.as_str())), limits, true)
            .map_err(|problem| {
                let name = ts.labels.iter().find(|l| l.name == "__name__").map(|l| l.value.as_str()).unwrap_or("?");
                IngestError::InvalidSeries { location: format!("series {i} ({name})"), problem }
            })?;
        for s in &ts.samples {
            out.push(MetricSample { labels: labels.clone(), timestamp_ms: s.timestamp, value: s.value });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;
    use crate::prompb::{Label, MetricMetadata, Sample, TimeSeries};
    use proptest::prelude::*;

    fn body(req: &WriteRequest) -> Vec<u8> {
        snap::raw::Encoder::new().compress_vec(&req.encode_to_vec()).expect("compresses")
    }

    fn series(labels: &[(&str, &str)], samples: &[(i64, f64)]) -> TimeSeries {
        TimeSeries {
            labels: labels.iter().map(|(n, v)| Label { name: n.to_string(), value: v.to_string() }).collect(),
            samples: samples.iter().map(|(t, v)| Sample { value: *v, timestamp: *t }).collect(),
            ..Default::default()
        }
    }

    fn decode(b: &[u8]) -> Result<Vec<MetricSample>, IngestError> {
        decode_remote_write(Some("snappy"), Some("application/x-protobuf"), b, &IngestLimits::default())
    }

    #[test]
    fn decodes_exactly_what_was_sent_including_staleness_markers() {
        let stale = f64::from_bits(0x7ff0_0000_0000_0002); // Prometheus's staleness NaN
        let req = WriteRequest {
            timeseries: vec![
                series(&[("__name__", "up"), ("job", "node")], &[(1000, 1.0), (2000, 0.0)]),
                series(&[("__name__", "http_requests_total"), ("code", "500"), ("job", "api")], &[(1500, 42.5), (2500, stale)]),
            ],
            metadata: vec![MetricMetadata { metric_family_name: "up".into(), help: "up".into(), ..Default::default() }],
        };
        let got = decode(&body(&req)).unwrap();
        assert_eq!(got.len(), 4);
        assert_eq!(got[0].labels.to_string(), "up{job=\"node\"}");
        assert_eq!((got[1].timestamp_ms, got[1].value), (2000, 0.0));
        assert_eq!(got[2].labels.get("code"), Some("500"));
        assert_eq!(got[2].value, 42.5);
        assert!(got[3].value.is_nan());
        assert_eq!(got[3].value.to_bits(), stale.to_bits());
    }

    #[test]
    fn wrong_encoding_and_content_type_are_refused() {
        let b = body(&WriteRequest::default());
        let l = IngestLimits::default();
        assert!(matches!(decode_remote_write(Some("gzip"), None, &b, &l), Err(IngestError::UnsupportedEncoding(_))));
        assert!(matches!(decode_remote_write(None, None, &b, &l), Err(IngestError::UnsupportedEncoding(_))));
        assert!(matches!(decode_remote_write(Some("snappy"), Some("application/json"), &b, &l), Err(IngestError::UnsupportedContentType(_))));
        assert!(decode_remote_write(Some("SNAPPY"), Some("application/x-protobuf;proto=prometheus.WriteRequest"), &b, &l).is_ok());
    }

    #[test]
    fn corrupt_snappy_is_rejected() {
        let e = decode(&[0xff, 0xff, 0xff, 0x01, 0x00, 0x00]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::BadRequest);
    }

    #[test]
    fn bad_protobuf_is_rejected() {
        let junk = snap::raw::Encoder::new().compress_vec(&[0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f]).unwrap();
        assert!(matches!(decode(&junk), Err(IngestError::Protobuf(_))));
    }

    #[test]
    fn oversized_body_and_declared_length_are_refused_before_decoding() {
        let b = body(&WriteRequest { timeseries: vec![series(&[("__name__", "up")], &[(1, 1.0)])], ..Default::default() });
        let small = IngestLimits { max_body_bytes: 4, ..Default::default() };
        let e = decode_remote_write(Some("snappy"), None, &b, &small).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::PayloadTooLarge);
        // A tiny body whose header declares 1 GiB: refused without allocating it.
        let mut bomb = Vec::new();
        let mut n: u64 = 1 << 30;
        loop {
            let byte = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                bomb.push(byte);
                break;
            }
            bomb.push(byte | 0x80);
        }
        bomb.extend_from_slice(&[0, 0, 0]);
        let e = decode(&bomb).unwrap_err();
        assert!(matches!(e, IngestError::DecompressedTooLarge { declared: 1073741824, .. }), "{e}");
    }

    #[test]
    fn label_rules_are_enforced_and_named() {
        let cases: Vec<(Vec<(&str, &str)>, &str)> = vec![
            (vec![("job", "x")], "__name__"),
            (vec![("__name__", "up"), ("bad-name", "x")], "bad-name"),
            (vec![("__name__", "up"), ("a", "1"), ("a", "2")], "more than once"),
            (vec![("__name__", "1up")], "metric name"),
        ];
        for (labels, needle) in cases {
            let b = body(&WriteRequest { timeseries: vec![series(&[("__name__", "ok")], &[(1, 1.0)]), series(&labels, &[(1, 1.0)])], ..Default::default() });
            let e = decode(&b).unwrap_err();
            let msg = e.to_string();
            assert!(msg.contains(needle), "{msg} should mention {needle}");
            assert!(msg.contains("series 1"), "{msg} should name the series");
        }
        let many: Vec<(String, String)> = (0..41).map(|i| (format!("l{i}"), "v".to_string())).collect();
        let mut labels: Vec<(&str, &str)> = vec![("__name__", "up")];
        labels.extend(many.iter().map(|(a, b)| (a.as_str(), b.as_str())));
        let b = body(&WriteRequest { timeseries: vec![series(&labels, &[(1, 1.0)])], ..Default::default() });
        assert!(decode(&b).unwrap_err().to_string().contains("more than 40 labels"));
        let long = "x".repeat(3000);
        let b = body(&WriteRequest { timeseries: vec![series(&[("__name__", "up"), ("v", &long)], &[(1, 1.0)])], ..Default::default() });
        assert!(decode(&b).unwrap_err().to_string().contains("longer than 2048"));
    }

    #[test]
    fn series_and_sample_counts_are_limited() {
        let l = IngestLimits { max_series_per_request: 2, max_samples_per_request: 3, ..Default::default() };
        let three = WriteRequest { timeseries: (0..3).map(|_| series(&[("__name__", "a")], &[(1, 1.0)])).collect(), ..Default::default() };
        assert!(matches!(decode_remote_write(Some("snappy"), None, &body(&three), &l), Err(IngestError::TooMany { what: "series", .. })));
        let four = WriteRequest { timeseries: vec![series(&[("__name__", "a")], &[(1, 1.0), (2, 1.0), (3, 1.0), (4, 1.0)])], ..Default::default() };
        assert!(matches!(decode_remote_write(Some("snappy"), None, &body(&four), &l), Err(IngestError::TooMany { what: "samples", .. })));
    }

    proptest! {
        #[test]
        fn valid_label_sets_and_values_round_trip(
            names in proptest::collection::btree_set("[a-z_][a-z0-9_]{0,12}", 0..8),
            value in "[ -~]{0,40}",
            points in proptest::collection::vec((any::<i64>(), any::<f64>()), 1..20),
        ) {
            let mut labels: Vec<(String, String)> = vec![("__name__".into(), "metric_x".into())];
            labels.extend(names.into_iter().filter(|n| n != "__name__").map(|n| (n, value.clone())));
            let ts = TimeSeries {
                labels: labels.iter().map(|(n, v)| Label { name: n.clone(), value: v.clone() }).collect(),
                samples: points.iter().map(|(t, v)| Sample { value: *v, timestamp: *t }).collect(),
                ..Default::default()
            };
            let got = decode(&body(&WriteRequest { timeseries: vec![ts], ..Default::default() })).unwrap();
            prop_assert_eq!(got.len(), points.len());
            for (s, (t, v)) in got.iter().zip(&points) {
                prop_assert_eq!(s.timestamp_ms, *t);
                // proto3 does not distinguish -0.0 from 0.0 on the wire; NaN payloads are kept.
                prop_assert!(s.value == *v || (s.value.is_nan() && v.is_nan()));
                prop_assert_eq!(s.labels.len(), labels.len());
            }
        }
    }
}
