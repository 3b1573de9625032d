//! A fixed amount of routing work for instruction-count profiling, which the machine's load does
//! not distort: `valgrind --tool=callgrind target/release/examples/route_profile [decisions]`.
//! Loads the default bundle (or the bundle directory given second) once, then routes that many
//! recommendations (200 unless told).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use cairn_policy::{PolicyBundle, Router, RouterConfig, RoutingContext};

#[path = "../benches/common/inputs.rs"]
mod inputs;

fn main() {
    let n: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(200);
    let bundle = match std::env::args().nth(2) {
        Some(dir) => PolicyBundle::load_dir(std::path::Path::new(&dir)).expect("bundle loads"),
        None => PolicyBundle::embedded_default(),
    };
    let router = Router::new(bundle, RouterConfig::default()).expect("bundle loads");
    let ctx = RoutingContext::for_environment("production");
    let mut outcomes = std::collections::BTreeMap::<String, usize>::new();
    for i in 0..n {
        let rec = inputs::rec(i);
        let d = router.route(&rec, &ctx, 0);
        *outcomes.entry(cairn_policy::decision_summary(&d)).or_default() += 1;
    }
    println!("{n} decisions: {outcomes:?}");
}
