//! `cairn eval nab`: the univariate detector over a corpus in NAB's layout, scored with NAB's method,
//! results written in NAB's layout; with `--calibrate`, the confidence calibration is fitted on one
//! half of the files, checked on the other, and written out.

use anyhow::{Context, Result};
use cairn_detect::univariate::{PointScore, UnivariateConfig, SCORING_VERSION};
use cairn_offline::nab::{self, NabCorpus};
use clap::Args;
use std::io::{IsTerminal as _, Write as _};
use std::path::PathBuf;
use std::time::Instant;

#[derive(Debug, Args)]
pub struct NabArgs {
    /// Corpus directory: `data/<category>/*.csv` and `labels/combined_windows.json`.
    #[arg(long)]
    pub data: PathBuf,
    /// Where to write `<detector>/<category>/<detector>_<file>.csv` and `final_results.json`.
    #[arg(long)]
    pub results: PathBuf,
    /// Detector name used in the result paths.
    #[arg(long, default_value = "cairn")]
    pub detector: String,
    /// Univariate model settings (TOML with the keys of `[detect.univariate]`); defaults otherwise.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Fit the confidence calibration on half of the files, check it on the other half, and write
    /// `<models-dir>/univariate-calibration.json` and the generated table (`--table-rs`).
    #[arg(long)]
    pub calibrate: bool,
    /// Where the calibration JSON goes.
    #[arg(long, default_value = "models")]
    pub models_dir: PathBuf,
    /// Also print the standard profile's score of every file (the category table is always printed).
    #[arg(long)]
    pub per_file: bool,
    /// Also print, per file, where the standard profile's points go: each window's first detection
    /// and credit (or miss), and each false-positive row with its weight.
    #[arg(long)]
    pub breakdown: bool,
    /// Cross-validate: split the files into this many folds (stratified by category, deterministic),
    /// choose every tunable on the other folds, and report the held-out folds. 0 turns it off.
    #[arg(long, default_value_t = 0)]
    pub folds: usize,
    /// A tunable and its candidate values, chosen inside the folds, e.g. `alert_score=0.5,0.6,0.7`.
    /// Repeat for more; every combination is a candidate (at most 64).
    #[arg(long = "tune")]
    pub tune: Vec<String>,
    /// With `--folds`, also deal the files into folds this many ways (each deterministic, deal 0 the
    /// one by file name) and report the held-out mean over the deals: a difference smaller than their
    /// spread is which file fell in which fold.
    #[arg(long, default_value_t = 1)]
    pub deals: u64,
    /// Also leave each category out in turn: tunables chosen on the others, the category scored.
    #[arg(long)]
    pub leave_one_category_out: bool,
    /// Where the generated Rust table goes.
    #[arg(long, default_value = "crates/cairn-detect/src/univariate/calibration_table.rs")]
    pub table_rs: PathBuf,
}

pub fn run(args: NabArgs) -> Result<()> {
    let cfg: UnivariateConfig = match &args.config {
        Some(p) => {
            let text = std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))?;
            toml::from_str(&text).with_context(|| format!("{}: not a univariate configuration", p.display()))?
        }
        None => UnivariateConfig::default(),
    };
    let corpus = NabCorpus::read(&args.data).context("cannot read the NAB corpus")?;
    eprintln!(
        "NAB corpus {}: {} files, {} rows, {} windows",
        args.data.display(),
        corpus.series.len(),
        corpus.row_count(),
        corpus.window_count()
    );
    let (point_scores, elapsed) = detect_all(&corpus, &cfg);
    let rows = corpus.row_count() as f64;
    eprintln!("scored {rows} rows in {:.3} s ({:.2} M rows/s, one thread)", elapsed, rows / elapsed / 1e6);

    let scores: Vec<Vec<f64>> =
        point_scores.iter().map(|ps| ps.iter().map(PointScore::alert_stream_score).collect()).collect();
    nab::write_results(&args.results, &args.detector, &corpus, &scores)?;
    let results = nab::evaluate(&corpus, &scores);
    nab::write_summary(&args.results, &args.detector, &results)?;
    print_table(&args.detector, &results);
    print_categories(&corpus, &results[0], args.per_file);
    if args.breakdown {
        print_breakdown(&corpus, &scores, &results[0]);
    }
    println!("results: {}", args.results.join(&args.detector).display());

    if args.folds > 0 || args.leave_one_category_out {
        cross_validate(&corpus, &cfg, &args)?;
    }
    if args.calibrate {
        let report = nab::calibrate(&corpus, &scores, SCORING_VERSION);
        print_calibration(&report);
        std::fs::create_dir_all(&args.models_dir)
            .with_context(|| format!("cannot create {}", args.models_dir.display()))?;
        let json = args.models_dir.join("univariate-calibration.json");
        std::fs::write(&json, report.to_json()).with_context(|| format!("cannot write {}", json.display()))?;
        std::fs::write(&args.table_rs, report.to_rust())
            .with_context(|| format!("cannot write {}", args.table_rs.display()))?;
        println!("calibration {} written to {} and {}", report.version, json.display(), args.table_rs.display());
    }
    Ok(())
}

/// Each series once, in order, through a fresh model; progress on stderr.
fn detect_all(corpus: &NabCorpus, cfg: &UnivariateConfig) -> (Vec<Vec<PointScore>>, f64) {
    let mut elapsed = 0.0;
    let n = corpus.series.len();
    let mut all = Vec::with_capacity(n);
    let tty = std::io::stderr().is_terminal();
    for (i, s) in corpus.series.iter().enumerate() {
        let started = Instant::now();
        let ps = nab::run_univariate(s, cfg);
        elapsed += started.elapsed().as_secs_f64();
        let onsets = ps.iter().filter(|p| p.onset).count();
        let line = format!("[{:>3}/{n}] {:<60} {:>6} rows {:>4} onsets", i + 1, s.key(), s.values.len(), onsets);
        // One line rewritten in place on a terminal; a line per file in a log.
        if tty {
            eprint!("\r{line}");
            let _ = std::io::stderr().flush();
        } else {
            eprintln!("{line}");
        }
        all.push(ps);
    }
    if tty {
        eprintln!();
    }
    (all, elapsed.max(1e-9))
}

fn print_table(detector: &str, results: &[nab::ProfileResult]) {
    println!("{:<20} {:>8} {:>10} {:>9} {:>8} {:>8} {:>8}", "profile", "score", "threshold", "raw", "windows", "missed", "FP rows");
    for r in results {
        println!(
            "{:<20} {:>8.2} {:>10.4} {:>9.3} {:>8} {:>8} {:>8}",
            r.profile.name, r.normalized, r.threshold, r.raw, r.windows_detected, r.windows_missed, r.false_positive_rows
        );
    }
    println!("({detector}; null detector 0, perfect 100; one threshold per profile over the whole corpus)");
}

/// One profile's result per category (and per file): raw score, windows detected of all, FP rows.
fn print_categories(corpus: &NabCorpus, r: &nab::ProfileResult, per_file: bool) {
    println!();
    println!("{} profile by category (raw score, windows detected/total, FP rows):", r.profile.name);
    let mut cats: Vec<&str> = corpus.series.iter().map(|s| s.category.as_str()).collect();
    cats.dedup();
    for cat in cats {
        let files: Vec<(&nab::NabSeries, &nab::FileScore)> =
            corpus.series.iter().zip(&r.files).filter(|(s, _)| s.category == cat).collect();
        let raw: f64 = files.iter().map(|(_, f)| f.score).sum();
        let det: usize = files.iter().map(|(_, f)| f.windows_detected).sum();
        let all: usize = files.iter().map(|(_, f)| f.windows_detected + f.windows_missed).sum();
        let fp: usize = files.iter().map(|(_, f)| f.false_positive_rows).sum();
        println!("  {cat:<24} {raw:>8.3} {det:>3}/{all:<3} {fp:>4}");
        if per_file {
            for (s, f) in files {
                let all = f.windows_detected + f.windows_missed;
                println!("    {:<44} {:>8.3} {:>3}/{:<3} {:>4}", s.name, f.score, f.windows_detected, all, f.false_positive_rows);
            }
        }
    }
}

/// Per file: windows (rows, first detection, credit, best score inside) and false positives.
fn print_breakdown(corpus: &NabCorpus, scores: &[Vec<f64>], r: &nab::ProfileResult) {
    println!();
    println!("{} profile breakdown at threshold {:.4}:", r.profile.name, r.threshold);
    for (s, sc) in corpus.series.iter().zip(scores) {
        let b = nab::breakdown::breakdown(s, sc, &r.profile, r.threshold);
        println!("  {} total {:.3} (false positives {} rows, {:.3})", s.key(), b.total(), b.false_positives.len(), b.false_positive_cost());
        for w in &b.windows {
            let width = w.rows.1 - w.rows.0 + 1;
            let first = match w.first_detection {
                Some(row) => format!("first at +{}/{width}", row - w.rows.0),
                None => "missed".to_string(),
            };
            let credit = w.credit.map_or("in probation".to_string(), |c| format!("{c:.3}"));
            let best = w.best.map_or(String::new(), |(row, sc)| format!(" best {sc:.3} at +{}", row - w.rows.0));
            println!("    window {}..{} {first} credit {credit}{best}", w.rows.0, w.rows.1);
        }
        for f in &b.false_positives {
            println!("    FP row {} score {:.3} weight {:.3}", f.row, f.score, f.weight);
        }
    }
}

fn print_calibration(r: &nab::CalibrationReport) {
    println!();
    println!("calibration {} (fit on {} files, checked on {})", r.version, r.fit_files.len(), r.check_files.len());
    println!(
        "Brier on the check half: calibrated {:.4}, raw score {:.4}, constant base rate {:.4} (base rate {:.3})",
        r.brier_calibrated, r.brier_raw, r.brier_base_rate, r.base_rate
    );
    println!("{:>13} {:>8} {:>10} {:>10}", "confidence", "rows", "predicted", "observed");
    for row in &r.reliability {
        if row.count > 0 {
            println!("{:>5.2} – {:<5.2} {:>8} {:>10.3} {:>10.3}", row.lo, row.hi, row.count, row.mean_predicted, row.observed_rate);
        }
    }
}

/// The candidate configurations: every combination of the `--tune` values over `base`.
fn candidates(base: &UnivariateConfig, tune: &[String]) -> Result<Vec<(String, UnivariateConfig)>> {
    let mut out: Vec<(String, toml::Table)> = vec![(String::from("defaults"), toml::Table::try_from(base)?)];
    for t in tune {
        let (key, values) = t.split_once('=').with_context(|| format!("--tune {t:?}: expected KEY=V1,V2,..."))?;
        let mut next = Vec::new();
        for (name, table) in &out {
            for v in values.split(',') {
                let value: toml::Value = v.trim().parse::<i64>().map(toml::Value::Integer).or_else(|_| v.trim().parse::<f64>().map(toml::Value::Float)).with_context(|| format!("--tune {key}: {v:?} is not a number"))?;
                let mut t = table.clone();
                t.insert(key.to_string(), value);
                let label = if name == "defaults" { format!("{key}={v}") } else { format!("{name} {key}={v}") };
                next.push((label, t));
            }
        }
        out = next;
        anyhow::ensure!(out.len() <= 64, "--tune gives {} candidates; at most 64", out.len());
    }
    out.into_iter()
        .map(|(name, t)| {
            let cfg: UnivariateConfig = t.try_into().with_context(|| format!("candidate {name}: not a univariate configuration"))?;
            Ok((name, cfg))
        })
        .collect()
}

/// `--folds` and `--leave-one-category-out`: the figure to quote.
fn cross_validate(corpus: &NabCorpus, base: &UnivariateConfig, args: &NabArgs) -> Result<()> {
    let cands = candidates(base, &args.tune)?;
    let scores: Vec<Vec<Vec<f64>>> = cands
        .iter()
        .map(|(name, cfg)| {
            eprintln!("candidate {name}");
            let (ps, _) = detect_all(corpus, cfg);
            ps.iter().map(|p| p.iter().map(PointScore::alert_stream_score).collect()).collect()
        })
        .collect();
    if args.folds > 0 {
        let folds = nab::cv::stratified_folds(corpus, args.folds);
        println!();
        println!("cross-validated over {} folds (stratified by category; {} candidate configuration(s), chosen with the threshold on the other folds):", args.folds.max(2), cands.len());
        println!("{:<20} {:>8} {:>7} {:>8}  {:<40} latency median/p90", "profile", "mean", "spread", "pooled", "held-out folds");
        let mut standard = None;
        for p in &nab::PROFILES {
            let r = nab::cv::cross_validate(corpus, &scores, &folds, p);
            let per: Vec<String> = r.folds.iter().map(|f| format!("{:.1}", f.normalized)).collect();
            let lat = |x: Option<f64>| x.map_or("-".to_string(), |v| format!("{v:.2}"));
            println!("{:<20} {:>8.2} {:>7.2} {:>8.2}  {:<40} {}/{}", p.name, r.mean, r.std, r.pooled, per.join(" "), lat(r.latency_median), lat(r.latency_p90));
            if standard.is_none() {
                standard = Some(r);
            }
        }
        if args.deals > 1 {
            print_deals(corpus, &scores, args.folds, args.deals);
            if cands.len() > 1 {
                print_candidates(corpus, &scores, &cands, args.folds, args.deals);
            }
        }
        if let Some(r) = standard {
            let b = &r.brier;
            println!(
                "calibration refit on each fold's training folds; Brier on the held-out onsets ({}): calibrated {:.4}, raw score {:.4}, training base rate {:.4}",
                b.onsets, b.calibrated, b.raw, b.base_rate
            );
            let per: Vec<String> = r.folds.iter().map(|f| format!("{:.4}", f.brier.calibrated)).collect();
            println!("  calibrated Brier per held-out fold: {}", per.join(" "));
            println!("standard profile, held-out files pooled per category (score, windows detected/total, FP rows):");
            for (c, score, det, total, fp) in &r.categories {
                let score = if *total == 0 { "-".to_string() } else { format!("{score:.2}") };
                println!("  {c:<24} {score:>8} {det:>3}/{total:<3} {fp:>4}");
            }
            if cands.len() > 1 {
                for f in &r.folds {
                    println!("  fold {}: chose {} at threshold {:.4} (training {:.2})", f.fold, cands[f.candidate].0, f.threshold, f.train_normalized);
                }
            }
        }
    }
    if args.leave_one_category_out {
        let (folds, cats) = nab::cv::category_folds(corpus);
        println!();
        println!("leave one category out (standard profile; tunables chosen on the other categories):");
        let r = nab::cv::cross_validate(corpus, &scores, &folds, &nab::PROFILES[0]);
        for f in &r.folds {
            if f.windows == 0 {
                println!("  {:<24} {:>8}  (no windows; {} false-positive rows at threshold {:.4})", cats[f.fold], "-", f.false_positive_rows, f.threshold);
            } else {
                println!("  {:<24} {:>8.2}  (threshold {:.4}, {})", cats[f.fold], f.normalized, f.threshold, cands[f.candidate].0);
            }
        }
        println!("  mean {:.2}, spread {:.2} (categories with windows)", r.mean, r.std);
    }
    Ok(())
}

/// Mean and population standard deviation.
fn mean_sd(xs: &[f64]) -> (f64, f64) {
    let n = xs.len().max(1) as f64;
    let mean = xs.iter().sum::<f64>() / n;
    (mean, (xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n).sqrt())
}

/// Each candidate configuration held fixed (only the threshold chosen on the training folds), over
/// the same deals, beside the first candidate deal by deal: a candidate is better than the first
/// only when it is higher on most deals by more than the deals' spread.
fn print_candidates(corpus: &NabCorpus, scores: &[Vec<Vec<f64>>], cands: &[(String, UnivariateConfig)], k: usize, deals: u64) {
    let folds: Vec<Vec<usize>> = (0..deals).map(|d| nab::cv::redealt_folds(corpus, k, d)).collect();
    for p in &nab::PROFILES {
        println!("{} profile, each candidate alone over the {deals} deals (mean, sd of the deals; difference from the first, deal by deal):", p.name);
        let mut first: Option<Vec<f64>> = None;
        for (c, (name, _)) in cands.iter().enumerate() {
            let means: Vec<f64> = folds.iter().map(|f| nab::cv::cross_validate(corpus, &scores[c..=c], f, p).mean).collect();
            let (mean, sd) = mean_sd(&means);
            match &first {
                None => {
                    println!("  {name:<48} {mean:>7.2} {sd:>5.2}");
                    first = Some(means);
                }
                Some(base) => {
                    let diff: Vec<f64> = means.iter().zip(base).map(|(m, b)| m - b).collect();
                    let (d, dsd) = mean_sd(&diff);
                    let higher = diff.iter().filter(|&&x| x > 0.0).count();
                    println!("  {name:<48} {mean:>7.2} {sd:>5.2}  {d:>+6.2} ± {dsd:.2}, higher on {higher} of {deals}");
                }
            }
        }
    }
}

/// The held-out mean per profile over `deals` deals of the files into folds: the mean of the deals'
/// means, their spread, and the lowest held-out fold of any deal.
fn print_deals(corpus: &NabCorpus, scores: &[Vec<Vec<f64>>], k: usize, deals: u64) {
    println!("over {deals} deals of the files into {k} folds (deal 0 is the one above):");
    println!("{:<20} {:>8} {:>7} {:>12}  deal means", "profile", "mean", "spread", "lowest fold");
    for p in &nab::PROFILES {
        let results: Vec<nab::cv::CvResult> =
            (0..deals).map(|d| nab::cv::cross_validate(corpus, scores, &nab::cv::redealt_folds(corpus, k, d), p)).collect();
        let means: Vec<f64> = results.iter().map(|r| r.mean).collect();
        let (mean, spread) = mean_sd(&means);
        let lowest = results.iter().flat_map(|r| r.folds.iter().filter(|f| f.windows > 0).map(|f| f.normalized)).fold(f64::INFINITY, f64::min);
        let per: Vec<String> = means.iter().map(|m| format!("{m:.1}")).collect();
        println!("{:<20} {mean:>8.2} {spread:>7.2} {lowest:>12.1}  {}", p.name, per.join(" "));
    }
}
