//! Univariate scoring speed: points per second on one core, for one hot series and for many series
//! updated round-robin (each update then touches a model that is not in cache), plus the bytes each
//! series costs. Inputs are generated deterministically: a daily cycle with noise and rare spikes.

use cairn_detect::univariate::{SeriesModel, UnivariateConfig};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::hint::black_box;

const STEP_MS: i64 = 60_000;

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

fn report_state_size(_: &mut Criterion) {
    // Not a timing: the per-series footprint, printed with the results. The model owns no heap.
    println!("univariate/bytes_per_series: {} (size_of::<SeriesModel>, no heap)", std::mem::size_of::<SeriesModel>());
}

criterion_group!(benches, report_state_size, one_series, many_series);
criterion_main!(benches);
