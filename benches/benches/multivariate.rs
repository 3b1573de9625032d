//! Multivariate scoring throughput: rows per second through a fitted scaler + PCA + k-means model,
//! at 1 and at 2 rayon threads, for a host-sized row (8 metrics) and an SMD-sized row (38); each
//! as independent rows (`score_rows`) and as one group's series through the smoother
//! (`score_series`, the alerting score).
//!
//! Inputs are generated (`cairn_detect::multivariate::synthetic`), so every run scores the same
//! numbers. Fitting happens once, outside the measured loop.

use cairn_detect::multivariate::synthetic::{host_rows, SplitMix, HOST_FEATURES};
use cairn_detect::multivariate::{Hyperparameters, MultivariateModel};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ndarray::Array2;
use std::hint::black_box;

const ROWS: usize = 200_000;

/// `n` rows of `width` columns: the 8 host metrics, then random mixtures of them plus noise.
fn rows(n: usize, width: usize, seed: u64) -> Array2<f64> {
    let (host, _) = host_rows(n, seed, &[]);
    let mut rng = SplitMix::new(seed ^ 0xC0FFEE);
    let mix: Vec<[f64; 8]> = (0..width).map(|_| std::array::from_fn(|_| rng.uniform())).collect();
    let mut noise = SplitMix::new(seed.wrapping_add(1));
    Array2::from_shape_fn((n, width), |(i, j)| {
        if j < 8 {
            host[i][j]
        } else {
            mix[j].iter().zip(&host[i]).map(|(w, v)| w * v).sum::<f64>() + 0.1 * noise.normal()
        }
    })
}

fn features(width: usize) -> Vec<String> {
    (0..width).map(|j| if j < 8 { HOST_FEATURES[j].to_string() } else { format!("m{j:02}") }).collect()
}

fn scoring(c: &mut Criterion) {
    let mut group = c.benchmark_group("multivariate_score_rows");
    group.throughput(Throughput::Elements(ROWS as u64));
    group.sample_size(20);
    for width in [8usize, 38] {
        let train = rows(20_000, width, 1);
        let model = MultivariateModel::fit(features(width), train.view(), Hyperparameters::default()).expect("fit");
        let data = rows(ROWS, width, 2);
        for threads in [1usize, 2] {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().expect("pool");
            group.bench_with_input(BenchmarkId::new(format!("width{width}"), format!("{threads}threads")), &data, |b, data| {
                b.iter(|| pool.install(|| black_box(model.score_rows(data.view()))))
            });
            // The alerting score: the rows as one group's series, through the smoother.
            group.bench_with_input(BenchmarkId::new(format!("series_width{width}"), format!("{threads}threads")), &data, |b, data| {
                b.iter(|| pool.install(|| black_box(model.score_series(data.view()))))
            });
        }
    }
    group.finish();
}

criterion_group!(benches, scoring);
criterion_main!(benches);
