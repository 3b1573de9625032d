//! Prometheus remote_write 1.0: snappy block-compressed protobuf `WriteRequest`s.

use crate::wire::{Caps, WireRequest, decode_write_request};
use crate::{IngestError, IngestLimits, check_label_pairs};
use cairn_types::SampleBatch;

/// Decodes and validates one remote_write request body into samples grouped by series. All or
/// nothing: any invalid series refuses the whole request, with a message naming it.
///
/// The protobuf is read by [`crate::wire`], which borrows label text from the decompressed body;
/// the batch then holds every label of the request in one string.
pub fn decode_remote_write(
    content_encoding: Option<&str>,
    content_type: Option<&str>,
    body: &[u8],
    limits: &IngestLimits,
) -> Result<SampleBatch, IngestError> {
    let raw = decompress(content_encoding, content_type, body, limits)?;
    let caps = Caps {
        series: limits.max_series_per_request,
        points: limits.max_samples_per_request,
        labels: limits.max_series_per_request.saturating_mul(limits.max_labels_per_series),
    };
    let req = decode_write_request(&raw, caps).map_err(|e| match e.over {
        Some((what, limit)) => IngestError::OverLimit { what, limit },
        None => IngestError::Protobuf(e.to_string()),
    })?;
    validate_into_batch(&req, limits)
}

/// Checks the headers and sizes, then undoes snappy, refusing an oversized declared length before
/// allocating it.
fn decompress(
    content_encoding: Option<&str>,
    content_type: Option<&str>,
    body: &[u8],
    limits: &IngestLimits,
) -> Result<Vec<u8>, IngestError> {
    match content_encoding.map(str::trim) {
        Some(e) if e.eq_ignore_ascii_case("snappy") => {}
        other => return Err(IngestError::UnsupportedEncoding(other.unwrap_or("").to_string())),
    }
    if let Some(ct) = content_type {
        let mut parts = ct.split(';');
        let media = parts.next().unwrap_or("").trim();
        if !media.eq_ignore_ascii_case("application/x-protobuf") {
            return Err(IngestError::UnsupportedContentType(ct.to_string()));
        }
        // remote_write 2.0 names its message in `proto=`; 1.0 senders send none or
        // `prometheus.WriteRequest`. Anything else is refused (415) rather than decoded as 1.0,
        // which would accept the request and keep nothing.
        for param in parts {
            let Some((key, value)) = param.split_once('=') else { continue };
            if key.trim().eq_ignore_ascii_case("proto") {
                let proto = value.trim().trim_matches('"');
                if proto != "prometheus.WriteRequest" {
                    return Err(IngestError::UnsupportedProtoMessage(proto.to_string()));
                }
            }
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
    Ok(raw)
}

/// The request's limits, then each series' labels, in order; the first problem refuses it all.
fn validate_into_batch(req: &WireRequest<'_>, limits: &IngestLimits) -> Result<SampleBatch, IngestError> {
    if req.series.len() > limits.max_series_per_request {
        return Err(IngestError::TooMany { what: "series", count: req.series.len(), limit: limits.max_series_per_request });
    }
    let total = req.points.len();
    if total > limits.max_samples_per_request {
        return Err(IngestError::TooMany { what: "samples", count: total, limit: limits.max_samples_per_request });
    }
    let text: usize = req.labels.iter().map(|(n, v)| n.len() + v.len()).sum();
    let mut batch = SampleBatch::with_capacity(req.series.len(), req.labels.len(), text, total);
    for (i, (labels, points)) in req.series.iter().enumerate() {
        let labels = &req.labels[labels.clone()];
        check_label_pairs(labels, limits, true).map_err(|problem| {
            let name = labels.iter().find(|l| l.0 == "__name__").map(|l| l.1).unwrap_or("?");
            IngestError::InvalidSeries { location: format!("series {i} ({name})"), problem }
        })?;
        batch.push_series(labels.iter().copied(), req.points[points.clone()].iter().copied());
    }
    Ok(batch)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;
    use crate::prompb::{BucketSpan, Exemplar, Histogram, Label, MetricMetadata, Sample, TimeSeries, WriteRequest, histogram};
    use cairn_types::MetricSample;
    use prost::Message;
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
        decode_remote_write(Some("snappy"), Some("application/x-protobuf"), b, &IngestLimits::default()).map(|b| b.to_samples())
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
    fn a_remote_write_2_request_is_refused_as_unsupported_not_decoded_as_1_0() {
        let b = body(&WriteRequest::default());
        let l = IngestLimits::default();
        for ct in [
            "application/x-protobuf;proto=io.prometheus.write.v2.Request",
            "application/x-protobuf; proto=\"io.prometheus.write.v2.Request\"",
        ] {
            let e = decode_remote_write(Some("snappy"), Some(ct), &b, &l).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::UnsupportedMessage, "{ct}");
            assert!(e.to_string().contains("io.prometheus.write.v2.Request"), "{e}");
        }
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
        assert!(matches!(decode_remote_write(Some("snappy"), None, &body(&three), &l), Err(IngestError::OverLimit { what: "series", limit: 2 })));
        let four = WriteRequest { timeseries: vec![series(&[("__name__", "a")], &[(1, 1.0), (2, 1.0), (3, 1.0), (4, 1.0)])], ..Default::default() };
        assert!(matches!(decode_remote_write(Some("snappy"), None, &body(&four), &l), Err(IngestError::OverLimit { what: "samples", limit: 3 })));
        let wide = WriteRequest { timeseries: vec![series(&[("__name__", "a"), ("b", "1"), ("c", "2")], &[(1, 1.0)])], ..Default::default() };
        let narrow = IngestLimits { max_series_per_request: 1, max_labels_per_series: 2, ..Default::default() };
        assert!(matches!(decode_remote_write(Some("snappy"), None, &body(&wide), &narrow), Err(IngestError::OverLimit { what: "labels", limit: 2 })));
    }

    #[test]
    fn a_small_body_that_expands_into_many_series_is_refused_while_decoding() {
        // 200,000 identical tiny series compress to a few hundred kilobytes and expand to megabytes; the
        // reader stops at the series limit instead of decoding them all into vectors first.
        let one = series(&[("__name__", "a")], &[(1, 1.0)]);
        let bomb = WriteRequest { timeseries: vec![one; 200_000], ..Default::default() };
        let b = body(&bomb);
        let expanded = snap::raw::decompress_len(&b).unwrap();
        assert!(expanded > 10 * b.len(), "a bomb: {} bytes expand to {expanded}", b.len());
        let e = decode_remote_write(Some("snappy"), None, &b, &IngestLimits::default()).unwrap_err();
        assert!(matches!(e, IngestError::OverLimit { what: "series", limit: 10_000 }), "{e}");
        assert!(e.to_string().contains("more than 10000 series"), "{e}");
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

    /// The decoder this crate had before `crate::wire`: prost's generated types, then the same
    /// validation. The fast path is held to it.
    fn decode_with_prost(raw: &[u8], limits: &IngestLimits) -> Result<Vec<MetricSample>, IngestError> {
        let req = WriteRequest::decode(raw).map_err(|e| IngestError::Protobuf(e.to_string()))?;
        if req.timeseries.len() > limits.max_series_per_request {
            return Err(IngestError::TooMany { what: "series", count: req.timeseries.len(), limit: limits.max_series_per_request });
        }
        let total: usize = req.timeseries.iter().map(|ts| ts.samples.len()).sum();
        if total > limits.max_samples_per_request {
            return Err(IngestError::TooMany { what: "samples", count: total, limit: limits.max_samples_per_request });
        }
        let mut out = Vec::new();
        for (i, ts) in req.timeseries.iter().enumerate() {
            let labels = crate::check_labels(ts.labels.iter().map(|l| (l.name.as_str(), l.value.as_str())), limits, true)
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

    fn agree(raw: &[u8], limits: &IngestLimits) -> Result<(), TestCaseError> {
        let want = decode_with_prost(raw, limits);
        let got = decode_write_request(raw, Caps::NONE)
            .map_err(|e| IngestError::Protobuf(e.to_string()))
            .and_then(|r| validate_into_batch(&r, limits))
            .map(|b| b.to_samples());
        let bits = |v: Vec<MetricSample>| v.into_iter().map(|s| (s.labels, s.timestamp_ms, s.value.to_bits())).collect::<Vec<_>>();
        match (want, got) {
            (Ok(a), Ok(b)) => prop_assert_eq!(bits(a), bits(b)),
            (Err(IngestError::Protobuf(_)), Err(IngestError::Protobuf(_))) => {}
            (Err(a), Err(b)) => prop_assert_eq!(a.to_string(), b.to_string()),
            (a, b) => prop_assert!(false, "prost: {:?}\nfast: {:?}", a.map(|v| v.len()), b.map(|v| v.len())),
        }
        Ok(())
    }

    fn key(tag: u32, wire: u32) -> Vec<u8> {
        let mut b = Vec::new();
        prost::encoding::encode_varint(u64::from(tag << 3 | wire), &mut b);
        b
    }

    /// An unknown field of any wire type, groups included.
    fn unknown_field() -> impl Strategy<Value = Vec<u8>> {
        (5u32..40, 0u32..6, any::<u64>(), proptest::collection::vec(any::<u8>(), 0..12)).prop_map(|(tag, wire, n, bytes)| {
            let mut b = key(tag, if wire == 4 { 3 } else { wire });
            match wire {
                0 => prost::encoding::encode_varint(n, &mut b),
                1 => b.extend_from_slice(&n.to_le_bytes()),
                5 => b.extend_from_slice(&(n as u32).to_le_bytes()),
                3 | 4 => {
                    b.extend(key(tag + 1, 0));
                    prost::encoding::encode_varint(n, &mut b);
                    b.extend(key(tag, 4));
                }
                _ => {
                    prost::encoding::encode_varint(bytes.len() as u64, &mut b);
                    b.extend(bytes);
                }
            }
            b
        })
    }

    fn label_strategy() -> impl Strategy<Value = Label> {
        (prop_oneof![Just("__name__".to_string()), Just("job".to_string()), "[a-z_]{1,4}", "[ -~]{0,4}", ".{0,3}"], prop_oneof!["[a-z_:]{0,8}", ".{0,6}"])
            .prop_map(|(name, value)| Label { name, value })
    }

    fn histogram_strategy() -> impl Strategy<Value = Histogram> {
        (any::<u64>(), any::<f64>(), any::<i32>(), proptest::collection::vec(any::<i64>(), 0..4), proptest::collection::vec(any::<f64>(), 0..4), any::<i64>())
            .prop_map(|(count, sum, schema, deltas, counts, timestamp)| Histogram {
                count: Some(histogram::Count::CountInt(count)),
                sum,
                schema,
                negative_spans: vec![BucketSpan { offset: schema, length: 2 }],
                negative_deltas: deltas.clone(),
                positive_counts: counts,
                positive_deltas: deltas,
                timestamp,
                ..Default::default()
            })
    }

    /// A series encoded by prost, with unknown fields appended to it and to one of its labels.
    fn series_bytes() -> impl Strategy<Value = Vec<u8>> {
        (
            proptest::collection::vec(label_strategy(), 0..6),
            proptest::collection::vec((any::<i64>(), any::<f64>()), 0..5),
            proptest::option::of(histogram_strategy()),
            proptest::option::of((label_strategy(), any::<f64>())),
            proptest::collection::vec(unknown_field(), 0..2),
            proptest::option::of(unknown_field()),
        )
            .prop_map(|(labels, points, histogram, exemplar, unknown, in_label)| {
                let mut ts = TimeSeries {
                    labels,
                    samples: points.into_iter().map(|(timestamp, value)| Sample { value, timestamp }).collect(),
                    histograms: histogram.into_iter().collect(),
                    exemplars: exemplar.into_iter().map(|(l, value)| Exemplar { labels: vec![l], value, timestamp: 1 }).collect(),
                };
                let mut out = Vec::new();
                if let (Some(extra), Some(first)) = (in_label, ts.labels.first()) {
                    let mut l = first.encode_to_vec();
                    l.extend(extra);
                    out.extend(key(1, 2));
                    prost::encoding::encode_varint(l.len() as u64, &mut out);
                    out.extend(l);
                    ts.labels.remove(0);
                }
                out.extend(ts.encode_to_vec());
                for u in unknown {
                    out.extend(u);
                }
                out
            })
    }

    /// Whole requests: series, metadata and unknown fields in any order, then a few byte-level
    /// mutations (flip, insert, delete, truncate) so that malformed input is compared too.
    fn request_bytes() -> impl Strategy<Value = Vec<u8>> {
        let part = prop_oneof![
            6 => series_bytes().prop_map(|b| (1u32, b)),
            1 => ("[ -~]{0,6}", ".{0,4}").prop_map(|(name, help)| (3u32, MetricMetadata { r#type: 1, metric_family_name: name, help, unit: String::new() }.encode_to_vec())),
            1 => unknown_field().prop_map(|b| (0u32, b)),
        ];
        (proptest::collection::vec(part, 0..6), proptest::collection::vec((0u8..4, any::<prop::sample::Index>(), any::<u8>()), 0..3)).prop_map(|(parts, mutations)| {
            let mut out = Vec::new();
            for (tag, b) in parts {
                if tag == 0 {
                    out.extend(b);
                } else {
                    out.extend(key(tag, 2));
                    prost::encoding::encode_varint(b.len() as u64, &mut out);
                    out.extend(b);
                }
            }
            for (kind, at, byte) in mutations {
                if out.is_empty() {
                    break;
                }
                let i = at.index(out.len());
                match kind {
                    0 => out[i] ^= byte | 1,
                    1 => out.insert(i, byte),
                    2 => drop(out.remove(i)),
                    _ => out.truncate(i),
                }
            }
            out
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        #[test]
        fn the_fast_decoder_agrees_with_prost(raw in request_bytes(), small in any::<bool>()) {
            let limits = if small {
                IngestLimits { max_series_per_request: 3, max_samples_per_request: 6, max_labels_per_series: 4, max_label_value_bytes: 5, ..Default::default() }
            } else {
                IngestLimits::default()
            };
            agree(&raw, &limits)?;
        }

        #[test]
        fn the_fast_decoder_agrees_with_prost_on_arbitrary_bytes(raw in proptest::collection::vec(any::<u8>(), 0..64)) {
            agree(&raw, &IngestLimits::default())?;
        }
    }

    #[test]
    fn deep_group_nesting_is_refused_like_prost() {
        for depth in [50usize, 99, 100, 101, 150] {
            let mut raw = Vec::new();
            for _ in 0..depth {
                raw.extend(key(9, 3));
            }
            for _ in 0..depth {
                raw.extend(key(9, 4));
            }
            agree(&raw, &IngestLimits::default()).unwrap();
        }
    }

    /// Wraps `body` as field `tag` (length-delimited) of a message.
    fn nested(tag: u32, body: &[u8]) -> Vec<u8> {
        let mut b = key(tag, 2);
        prost::encoding::encode_varint(body.len() as u64, &mut b);
        b.extend_from_slice(body);
        b
    }

    #[test]
    fn hand_made_edge_cases_agree_with_prost() {
        let label = nested(1, &[nested(1, b"__name__"), nested(2, b"up")].concat());
        let histogram = |h: &[u8]| nested(1, &[label.clone(), nested(4, h)].concat());
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("packed doubles, 16 bytes", histogram(&nested(13, &[0u8; 16]))),
            ("packed doubles, 5 bytes", histogram(&nested(13, &[0u8; 5]))),
            ("packed sint64s", histogram(&nested(12, &[0x01, 0x80, 0x01]))),
            ("packed sint64s, cut varint", histogram(&nested(12, &[0x01, 0x80]))),
            ("unpacked double", histogram(&[key(13, 1), vec![0; 8]].concat())),
            ("double as varint", histogram(&[key(13, 0), vec![1]].concat())),
            ("10-byte varint, top bit", [label.clone(), key(7, 0), vec![0xff; 9], vec![0x01]].concat()),
            ("10-byte varint, overflow", [label.clone(), key(7, 0), vec![0xff; 9], vec![0x02]].concat()),
            ("11-byte varint", [label.clone(), key(7, 0), vec![0xff; 10], vec![0x00]].concat()),
            ("field number 0", vec![0x02, 0x00]),
            ("wire type 6", vec![0x0e]),
            ("wire type 7", vec![0x0f]),
            ("end group alone", key(9, 4)),
            ("group with the wrong end", [key(9, 3), key(10, 4)].concat()),
            ("key over u32", [vec![0xff; 4], vec![0x7f]].concat()),
            ("metadata help not UTF-8", nested(3, &nested(4, &[0xc3, 0x28]))),
            ("label value not UTF-8", nested(1, &nested(1, &[nested(1, b"__name__"), nested(2, &[0xff])].concat()))),
            ("label as a varint", nested(1, &[key(1, 0), vec![1]].concat())),
            ("sample value twice, last wins", nested(1, &[label.clone(), nested(2, &[key(1, 1), 1f64.to_le_bytes().to_vec(), key(1, 1), 2f64.to_le_bytes().to_vec()].concat())].concat())),
            ("reserved field 2", [label.clone(), nested(2, b"x")].concat()),
            ("series runs past the end", [key(1, 2), vec![0x10], vec![0; 4]].concat()),
            ("empty", vec![]),
        ];
        for (what, raw) in cases {
            agree(&raw, &IngestLimits::default()).unwrap_or_else(|e| panic!("{what}: {e}"));
        }
    }
}
