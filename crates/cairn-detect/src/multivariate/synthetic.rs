//! Generated host metrics: the data the project's own tests, benchmarks and default model use, so
//! that they run (and `models/` can be rebuilt byte for byte) without any outside corpus.
//!
//! One host, one row per minute. Two hidden drivers — user traffic (a daily cycle with slow
//! wander) and batch work (bursts) — move eight metrics together, each with its own noise. A
//! *break* decouples one metric from the drivers for a stretch of rows: its value stays in its
//! ordinary range, but no longer agrees with the others (CPU busy while traffic is flat), which a
//! per-series detector cannot see and a multivariate model must.

/// Metric names of a generated row, in column order.
pub const HOST_FEATURES: [&str; 8] = [
    "cpu_busy_ratio",
    "load1",
    "memory_used_ratio",
    "network_receive_mbps",
    "network_transmit_mbps",
    "http_requests_per_second",
    "http_latency_ms",
    "disk_io_mbps",
];

/// A deterministic generator (SplitMix64), so the data does not depend on an RNG crate's version.
#[derive(Debug, Clone)]
pub struct SplitMix(u64);

impl SplitMix {
    pub fn new(seed: u64) -> SplitMix {
        SplitMix(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Roughly normal (sum of four uniforms), mean 0, standard deviation 1.
    pub fn normal(&mut self) -> f64 {
        let s: f64 = (0..4).map(|_| self.uniform()).sum();
        (s - 2.0) * (3.0f64).sqrt()
    }
}

/// A stretch of rows in which one metric stops following the drivers.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Break {
    pub start: usize,
    pub len: usize,
    /// Column of [`HOST_FEATURES`] that breaks away.
    pub feature: usize,
}

/// `rows` generated rows (values in [`HOST_FEATURES`] order) and a label per row (true inside a
/// break). The same `seed` and `breaks` give the same numbers on every machine.
pub fn host_rows(rows: usize, seed: u64, breaks: &[Break]) -> (Vec<[f64; 8]>, Vec<bool>) {
    let mut rng = SplitMix::new(seed);
    let mut wander = 0.0f64;
    let mut batch = 0.0f64;
    let mut out = Vec::with_capacity(rows);
    let mut labels = Vec::with_capacity(rows);
    for t in 0..rows {
        let day = (t as f64 * std::f64::consts::TAU / 1440.0).sin();
        wander = 0.98 * wander + 0.02 * rng.normal();
        let traffic = (0.5 + 0.35 * day + 0.3 * wander).clamp(0.02, 1.2);
        // Batch work: occasional bursts that decay.
        if rng.uniform() < 0.01 {
            batch = 0.6 + 0.4 * rng.uniform();
        }
        batch *= 0.95;
        let n = |rng: &mut SplitMix, sd: f64| sd * rng.normal();
        let mut row = [
            (0.05 + 0.55 * traffic + 0.3 * batch + n(&mut rng, 0.015)).clamp(0.0, 1.0),
            0.2 + 3.5 * traffic + 2.5 * batch + n(&mut rng, 0.12),
            (0.45 + 0.1 * traffic + 0.15 * batch + n(&mut rng, 0.01)).clamp(0.0, 1.0),
            (40.0 * traffic + 5.0 * batch + n(&mut rng, 1.5)).max(0.0),
            (70.0 * traffic + n(&mut rng, 2.5)).max(0.0),
            (300.0 * traffic + n(&mut rng, 8.0)).max(0.0),
            18.0 + 25.0 * traffic * traffic + 10.0 * batch + n(&mut rng, 0.8),
            (5.0 + 60.0 * batch + 4.0 * traffic + n(&mut rng, 1.0)).max(0.0),
        ];
        let mut anomalous = false;
        for b in breaks.iter().filter(|b| t >= b.start && t < b.start + b.len) {
            anomalous = true;
            // Replace the metric by the value it would have at a traffic level 0.6 (half the range)
            // away: ordinary on its own, wrong next to the others.
            let flipped = if traffic < 0.6 { traffic + 0.6 } else { traffic - 0.6 };
            row[b.feature] = match b.feature {
                0 => (0.05 + 0.55 * flipped + n(&mut rng, 0.015)).clamp(0.0, 1.0),
                1 => 0.2 + 3.5 * flipped + n(&mut rng, 0.12),
                2 => (0.45 + 0.1 * flipped + n(&mut rng, 0.01)).clamp(0.0, 1.0),
                3 => 40.0 * flipped + n(&mut rng, 1.5),
                4 => 70.0 * flipped + n(&mut rng, 2.5),
                5 => 300.0 * flipped + n(&mut rng, 8.0),
                6 => 18.0 + 25.0 * flipped * flipped + n(&mut rng, 0.8),
                _ => 5.0 + 60.0 * (1.0 - batch) * 0.5 + n(&mut rng, 1.0),
            };
        }
        out.push(row);
        labels.push(anomalous);
    }
    (out, labels)
}
