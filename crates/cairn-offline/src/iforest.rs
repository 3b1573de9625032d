//! IsolationForest (Liu, Ting and Zhou, 2008), as a baseline for `cairn eval multivariate` only:
//! the issue asks our multivariate score to beat it on every machine, so it is measured on the same
//! split beside PCA and k-means. Cairn never alerts on it.
//!
//! Written here rather than taken from a crate: linfa has none, and the Rust crates that exist
//! either fix the dimension at compile time (a const generic) or draw from an unseeded RNG, while
//! an evaluation must take any column count and give the same figures on every run. The seeded
//! generator is the one the project's synthetic data uses.
//!
//! Each tree is grown on a random subsample of the training rows (without replacement), splitting
//! on a random feature at a uniform threshold between that feature's minimum and maximum in the
//! node, down to a depth of ⌈log₂ sample⌉. A row's score is `2^(−E[h]/c(sample))`, where `h` is
//! the depth at which it lands plus `c(size)` for the rows its leaf still holds: near 1 is easy to
//! isolate (anomalous), well below 0.5 is ordinary. Parameters are the paper's defaults.

use cairn_detect::multivariate::synthetic::SplitMix;
use ndarray::ArrayView2;

/// The paper's defaults: 100 trees of 256-row subsamples.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ForestParams {
    pub trees: usize,
    pub sample: usize,
    pub seed: u64,
}

impl Default for ForestParams {
    fn default() -> Self {
        ForestParams { trees: 100, sample: 256, seed: 42 }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Node {
    Leaf { size: usize },
    Split { feature: usize, threshold: f64, left: usize, right: usize },
}

/// A fitted forest: every tree's nodes in one arena, each tree's root index.
#[derive(Debug, Clone)]
pub struct IsolationForest {
    nodes: Vec<Node>,
    roots: Vec<usize>,
    /// `c(sample)`: the average path length the scores are normalised by.
    norm: f64,
}

/// Average path length of an unsuccessful search in a binary search tree of `n` rows (the
/// paper's `c(n)`): how much deeper a leaf still holding `n` rows would have gone.
fn c(n: usize) -> f64 {
    match n {
        0 | 1 => 0.0,
        2 => 1.0,
        _ => {
            let n = n as f64;
            2.0 * ((n - 1.0).ln() + 0.577_215_664_901_532_9) - 2.0 * (n - 1.0) / n
        }
    }
}

impl IsolationForest {
    /// Grows the forest on `rows` (one row per step). Deterministic for a given seed.
    pub fn fit(rows: ArrayView2<'_, f64>, params: ForestParams) -> IsolationForest {
        let n = rows.nrows();
        let sample = params.sample.clamp(1, n.max(1));
        let max_depth = (sample as f64).log2().ceil() as usize;
        let mut rng = SplitMix::new(params.seed);
        let mut forest = IsolationForest { nodes: Vec::new(), roots: Vec::new(), norm: c(sample).max(f64::MIN_POSITIVE) };
        let mut all: Vec<usize> = (0..n).collect();
        for _ in 0..params.trees {
            // A partial Fisher–Yates shuffle draws the subsample without replacement.
            for i in 0..sample.min(n) {
                let j = i + (rng.next_u64() % (n - i) as u64) as usize;
                all.swap(i, j);
            }
            let mut idx = all[..sample.min(n)].to_vec();
            let root = forest.grow(rows, &mut idx, 0, max_depth, &mut rng);
            forest.roots.push(root);
        }
        forest
    }

    fn grow(&mut self, rows: ArrayView2<'_, f64>, idx: &mut [usize], depth: usize, max_depth: usize, rng: &mut SplitMix) -> usize {
        let leaf = |me: &mut IsolationForest, size| {
            me.nodes.push(Node::Leaf { size });
            me.nodes.len() - 1
        };
        if idx.len() <= 1 || depth >= max_depth {
            return leaf(self, idx.len());
        }
        // A random feature that still varies in this node; a node where none varies is a leaf.
        let d = rows.ncols();
        let first = (rng.next_u64() % d as u64) as usize;
        let Some((feature, lo, hi)) = (0..d).map(|k| (first + k) % d).find_map(|f| {
            let (lo, hi) = idx.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &i| {
                let v = rows[[i, f]];
                (lo.min(v), hi.max(v))
            });
            (hi > lo).then_some((f, lo, hi))
        }) else {
            return leaf(self, idx.len());
        };
        let threshold = lo + rng.uniform() * (hi - lo);
        let mut cut = 0;
        for k in 0..idx.len() {
            if rows[[idx[k], feature]] < threshold {
                idx.swap(k, cut);
                cut += 1;
            }
        }
        let me = self.nodes.len();
        self.nodes.push(Node::Leaf { size: 0 }); // replaced once both children exist
        let (l, r) = idx.split_at_mut(cut);
        let left = self.grow(rows, l, depth + 1, max_depth, rng);
        let right = self.grow(rows, r, depth + 1, max_depth, rng);
        self.nodes[me] = Node::Split { feature, threshold, left, right };
        me
    }

    /// The anomaly score of one row, in (0, 1].
    pub fn score(&self, row: &[f64]) -> f64 {
        let total: f64 = self
            .roots
            .iter()
            .map(|&root| {
                let (mut node, mut depth) = (root, 0.0);
                loop {
                    match self.nodes[node] {
                        Node::Leaf { size } => break depth + c(size),
                        Node::Split { feature, threshold, left, right } => {
                            node = if row[feature] < threshold { left } else { right };
                            depth += 1.0;
                        }
                    }
                }
            })
            .sum();
        let mean = total / self.roots.len().max(1) as f64;
        2f64.powf(-mean / self.norm)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array2;

    fn cloud(n: usize, seed: u64) -> Array2<f64> {
        let mut rng = SplitMix::new(seed);
        Array2::from_shape_fn((n, 3), |_| rng.normal())
    }

    #[test]
    fn an_outlier_scores_high_and_the_bulk_low() {
        let forest = IsolationForest::fit(cloud(2000, 1).view(), ForestParams::default());
        let centre = forest.score(&[0.0, 0.0, 0.0]);
        let far = forest.score(&[8.0, -8.0, 8.0]);
        assert!(far > 0.65, "outlier {far}");
        assert!(centre < 0.5, "centre {centre}");
        // The bulk of fresh rows from the same cloud is ordinary.
        let fresh = cloud(500, 2);
        let high = fresh.outer_iter().filter(|r| forest.score(&r.to_vec()) > 0.6).count();
        assert!(high < 25, "{high} of 500 ordinary rows scored above 0.6");
    }

    #[test]
    fn the_same_seed_gives_the_same_scores_and_another_seed_does_not() {
        let rows = cloud(600, 3);
        let a = IsolationForest::fit(rows.view(), ForestParams::default());
        let b = IsolationForest::fit(rows.view(), ForestParams::default());
        let other = IsolationForest::fit(rows.view(), ForestParams { seed: 7, ..ForestParams::default() });
        let probe = [1.5, -0.5, 2.0];
        assert_eq!(a.score(&probe), b.score(&probe));
        assert_ne!(a.score(&probe), other.score(&probe));
    }

    #[test]
    fn constant_data_and_tiny_samples_do_not_break_it() {
        let flat = Array2::from_elem((50, 4), 1.0);
        let forest = IsolationForest::fit(flat.view(), ForestParams::default());
        let s = forest.score(&[1.0; 4]);
        assert!(s.is_finite() && s > 0.0 && s <= 1.0, "{s}");
        let one = Array2::from_elem((1, 2), 0.0);
        assert!(IsolationForest::fit(one.view(), ForestParams::default()).score(&[5.0, 5.0]).is_finite());
    }

    #[test]
    fn c_matches_the_papers_values() {
        assert_eq!(c(1), 0.0);
        assert_eq!(c(2), 1.0);
        // c(256) ≈ 10.24 (2·(ln 255 + γ) − 2·255/256).
        assert!((c(256) - 10.244_770_920_116_851).abs() < 1e-9, "{}", c(256));
    }
}
