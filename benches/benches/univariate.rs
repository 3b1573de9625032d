//! Univariate scoring speed: points per second on one core, for one hot series and for many series
//! updated round-robin (each update then touches a model that is not in cache), plus the bytes each
//! series costs. Inputs are generated deterministically: a daily cycle with noise and rare spikes.

use cairn_detect::univariate::{SeriesModel, UnivariateConfig};
use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use std::hint::black_box;

const STEP_MS: i64 = 60_000;

/// The allocator `cairn serve` runs with: the detector's chunks are sized for its size classes.
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn value(i: usize) -> f64 {
    let noise = ((i as u64).wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407) >> 33) as f64
        / (1u64 << 31) as f64;
    let spike = if i.is_multiple_of(997) { 40.0 } else { 0.0 };
    100.0 + 20.0 * (i as f64 * std::f64::consts::TAU / 1440.0).sin() + 4.0 * noise + spike
}

fn one_series(c: &mut Criterion) {
    let cfg = UnivariateConfig::default();
    let points: Vec<(i64, f64)> = (0..100_000).map(|i| (i as i64 * STEP_MS, value(i))).collect();
    let mut g = c.benchmark_group("univariate");
    g.throughput(Throughput::Elements(points.len() as u64));
    g.bench_function("one_series_100k_points", |b| {
        b.iter(|| {
            let mut m = SeriesModel::new();
            let mut sum = 0.0;
            for &(t, v) in &points {
                sum += m.update(&cfg, t, v).score;
            }
            black_box(sum)
        })
    });
    g.finish();
}

fn many_series(c: &mut Criterion) {
    let cfg = UnivariateConfig::default();
    let mut g = c.benchmark_group("univariate");
    for series in [1_000usize, 100_000] {
        let rounds = 1_000_000 / series;
        g.throughput(Throughput::Elements((series * rounds) as u64));
        g.bench_with_input(BenchmarkId::new("round_robin_points", series), &series, |b, &series| {
            // Warm the models once so the measured rounds score (not warm up).
            let mut models: Vec<SeriesModel> = vec![SeriesModel::new(); series];
            for r in 0..80 {
                for (s, m) in models.iter_mut().enumerate() {
                    m.update(&cfg, r as i64 * STEP_MS, value(r + s));
                }
            }
            let mut round = 80usize;
            b.iter(|| {
                let mut sum = 0.0;
                for _ in 0..rounds {
                    for (s, m) in models.iter_mut().enumerate() {
                        sum += m.update(&cfg, round as i64 * STEP_MS, value(round + s)).score;
                    }
                    round += 1;
                }
                black_box(sum)
            })
        });
    }
    g.finish();
}

/// The whole detector (series table, admission, shards) on one rayon thread: batches of 100k series
/// with 10 points each, every series already tracked, as remote_write delivers them.
fn detector(c: &mut Criterion) {
    let series = 100_000usize;
    let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().expect("a rayon pool");
    let names: Vec<String> = (0..series).map(|s| format!("pod-{s}")).collect();
    let batch = |round: usize| {
        let mut b = cairn_types::SampleBatch::new();
        for (s, name) in names.iter().enumerate() {
            let points = (0..10).map(|k| ((round * 10 + k) as i64 * STEP_MS, value(round * 10 + k + s)));
            b.push_series([("__name__", "container_memory_working_set_bytes"), ("pod", name.as_str())], points);
        }
        b
    };
    let mut g = c.benchmark_group("detector");
    g.throughput(Throughput::Elements((series * 10) as u64));
    g.sample_size(10);
    g.bench_function("observe_100k_series_10_points", |b| {
        let mut d = cairn_detect::Detector::new(Default::default());
        // Warm every model past its warm-up first, so the measured batches score.
        pool.install(|| (0..8).for_each(|r| drop(d.observe(&batch(r)))));
        let mut round = 8usize;
        // The same timestamps again would be refused as out of order: each iteration gets new ones,
        // built outside the timing.
        let next = || {
            round += 1;
            batch(round)
        };
        b.iter_batched(next, |shifted| pool.install(|| black_box(d.observe(&shifted).len())), BatchSize::LargeInput)
    });
    g.finish();
}

fn report_state_size(_: &mut Criterion) {
    // Not a timing: the per-series footprint, printed with the results. The model owns no heap.
    println!("univariate/bytes_per_series: {} (size_of::<SeriesModel>, no heap)", std::mem::size_of::<SeriesModel>());
}

criterion_group!(benches, report_state_size, one_series, many_series, detector);
criterion_main!(benches);
