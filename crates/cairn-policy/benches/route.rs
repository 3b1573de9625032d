//! Routing cost with the default bundle: one decision, and a shadow run of a candidate bundle over
//! 1,000 recorded recommendations (what `cairn policy shadow` does). Deterministic inputs.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use cairn_policy::{PolicyBundle, Router, RouterConfig, RoutingContext};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;

#[path = "common/inputs.rs"]
mod inputs;
use inputs::rec;


fn bench(c: &mut Criterion) {
    let active = Router::new(PolicyBundle::embedded_default(), RouterConfig::default()).unwrap();
    let ctx = RoutingContext::for_environment("production");
    let one = rec(1);
    let mut g = c.benchmark_group("policy");
    g.throughput(Throughput::Elements(1));
    g.bench_function("route_default_bundle", |b| b.iter(|| black_box(active.route(black_box(&one), &ctx, 0))));

    let recorded: Vec<_> = (0..1000).map(|i| {
        let r = rec(i);
        let d = active.route(&r, &ctx, 0);
        (r, d)
    }).collect();
    let mut files = PolicyBundle::embedded_default().files();
    let data = files.last_mut().unwrap();
    data.text = data.text.replace("\"auto_min\": 0.8", "\"auto_min\": 0.9");
    let candidate = Router::new(PolicyBundle::from_all_files(files).unwrap(), RouterConfig::default()).unwrap();
    g.throughput(Throughput::Elements(recorded.len() as u64));
    g.sample_size(10);
    g.bench_function("shadow_1000_recommendations", |b| b.iter(|| black_box(cairn_policy::shadow(&candidate, &recorded, 0))));
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
