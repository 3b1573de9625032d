//! The correlator at storm rates: time per sample batch (learn, co-movement check, settle) with
//! 1,024 recorded series in 256 open incidents, co-movement on and off. Each batch carries one
//! point of every recorded series; with `comove_every_ms = 0` every batch runs a check (the worst
//! case: the default checks once a minute of event time), capped at `comove_max_pairs` pairs.
//! Inputs are generated deterministically: independent noise per series, so nothing merges and
//! the state stays the same size however long the bench runs.

use cairn_correlate::{Correlator, CorrelatorConfig};
use cairn_types::{Labels, MetricSample, SampleBatch};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use std::time::{Duration, Instant};

const STEP_MS: i64 = 15_000;
const SERVICES: usize = 256;
const PER_SERVICE: usize = 4;

fn labels(i: usize) -> Labels {
    let (service, metric) = (format!("svc-{}", i / PER_SERVICE), format!("metric_{}", i % PER_SERVICE));
    [("__name__", metric.as_str()), ("service", service.as_str()), ("namespace", "bench")].into_iter().collect()
}

/// Independent noise per series and step (splitmix64 of both): series share no movement.
fn noise(i: usize, k: i64) -> f64 {
    let mut z = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(k as u64).wrapping_add(0x632B_E59B_D9B4_E019);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

/// 256 incidents of four anomalous series each, every series recorded.
fn storm(comove: bool) -> (Correlator, Vec<Labels>) {
    let cfg = CorrelatorConfig { comove, comove_every_ms: 0, ..CorrelatorConfig::default() };
    let mut c = Correlator::new(cfg);
    let all: Vec<Labels> = (0..SERVICES * PER_SERVICE).map(labels).collect();
    for (i, l) in all.iter().enumerate() {
        let a = cairn_types::fixtures::anomaly(l.clone(), 0, noise(i, 0));
        c.note_anomaly(&a, 0);
    }
    c.settle();
    (c, all)
}

fn batch(all: &[Labels], k: i64) -> SampleBatch {
    let samples: Vec<MetricSample> =
        all.iter().enumerate().map(|(i, l)| MetricSample { labels: l.clone(), timestamp_ms: k * STEP_MS, value: noise(i, k) }).collect();
    samples.iter().collect()
}

fn per_batch(c: &mut Criterion) {
    let mut g = c.benchmark_group("correlate");
    g.throughput(Throughput::Elements((SERVICES * PER_SERVICE) as u64));
    for comove in [false, true] {
        let name = if comove { "comove_on" } else { "comove_off" };
        // Built once: criterion calls the closure for each warm-up and measurement round.
        let (mut corr, all) = storm(comove);
        // Fill the rings first, so the measured checks correlate full windows.
        for k in 1..=cairn_correlate::COMOVE_RING as i64 {
            corr.learn(&batch(&all, k));
        }
        if comove {
            let (series, bytes) = corr.comove_size();
            eprintln!("recorded {series} series in {bytes} bytes ({} per series; cap {} bytes)", bytes / series.max(1), corr.comove_max_bytes());
        }
        let mut k = cairn_correlate::COMOVE_RING as i64;
        g.bench_function(BenchmarkId::new("batch_1024_recorded_series", name), |b| {
            b.iter_custom(|iters| {
                let mut spent = Duration::ZERO;
                for _ in 0..iters {
                    k += 1;
                    let samples = batch(&all, k);
                    let t0 = Instant::now();
                    corr.learn(&samples);
                    black_box(corr.co_move(k));
                    black_box(corr.settle());
                    spent += t0.elapsed();
                }
                spent
            })
        });
        assert_eq!(corr.open_count(), SERVICES, "independent noise merges nothing");
    }
    g.finish();
}

criterion_group!(benches, per_batch);
criterion_main!(benches);
