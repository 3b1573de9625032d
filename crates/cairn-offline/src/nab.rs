//! The Numenta Anomaly Benchmark (NAB): reading a corpus in NAB's layout, running the univariate
//! detector over it as a stream, scoring the result the way NAB's own scorer does, writing results in
//! NAB's layout, and fitting the confidence calibration.
//!
//! Scoring follows NAB's published method (`nab/sweeper.py`, `nab/runner.py`): the first 15% of each
//! file (at most 750 rows) is a probation period and is not scored; inside a labelled window a
//! detection earns `tp * S(-(right - i + 1) / width) / S(-1)` where `S(x) = 2 / (1 + e^(5x)) - 1`, and
//! only the best (earliest) detection of a window counts; a missed window costs `fn`; a detection
//! outside every window costs `fp * S(distance past the previous window's right edge / (its width -
//! 1))`, or the full `fp` when no window precedes it. A point is a detection when its score is at or
//! above the threshold; ONE threshold per profile is chosen by sweeping every distinct score of the
//! whole corpus. The total is normalised as `100 * (raw - null) / (perfect - null)`, where `null` is
//! the score of a detector that never fires and `perfect` is `tp` times the number of labelled windows.

use cairn_detect::univariate::calibration::{self, ReliabilityRow};
use cairn_detect::univariate::{PointScore, SeriesModel, UnivariateConfig};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Errors reading or writing a corpus. Each names the file, and the line where there is one.
#[derive(Debug, thiserror::Error)]
pub enum NabError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: {source}")]
    Labels { path: PathBuf, source: serde_json::Error },
    #[error("{path}:{line}: {reason}")]
    Row { path: PathBuf, line: usize, reason: String },
    #[error("{file}: no entry in labels/combined_windows.json (every data file needs one, even if empty)")]
    Unlabelled { file: String },
    #[error("{file}: window edge {timestamp} is not a timestamp of the file")]
    WindowEdge { file: String, timestamp: String },
    #[error("{path}: no data files under data/<category>/*.csv")]
    Empty { path: PathBuf },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> NabError + '_ {
    move |source| NabError::Io { path: path.to_path_buf(), source }
}

/// One data file: its rows and its labelled windows as inclusive row ranges.
#[derive(Clone, Debug, PartialEq)]
pub struct NabSeries {
    pub category: String,
    /// File name without `.csv`.
    pub name: String,
    /// Timestamps as written in the file (results repeat them verbatim).
    pub timestamp_text: Vec<String>,
    pub timestamps_ms: Vec<i64>,
    pub values: Vec<f64>,
    /// Inclusive (first row, last row) of each window, in order.
    pub windows: Vec<(usize, usize)>,
}

impl NabSeries {
    /// `category/name.csv`, the key NAB's label files use.
    pub fn key(&self) -> String {
        format!("{}/{}.csv", self.category, self.name)
    }

    /// 1 for rows inside a labelled window, else 0.
    pub fn labels(&self) -> Vec<u8> {
        let mut l = vec![0u8; self.values.len()];
        for &(a, b) in &self.windows {
            l[a..=b].iter_mut().for_each(|x| *x = 1);
        }
        l
    }
}

/// A corpus in NAB's layout, files in a fixed order (category, then file name).
#[derive(Clone, Debug, PartialEq)]
pub struct NabCorpus {
    pub series: Vec<NabSeries>,
}

impl NabCorpus {
    /// Reads `dir/data/<category>/*.csv` and `dir/labels/combined_windows.json`.
    pub fn read(dir: &Path) -> Result<NabCorpus, NabError> {
        let labels_path = dir.join("labels").join("combined_windows.json");
        let text = std::fs::read_to_string(&labels_path).map_err(io(&labels_path))?;
        let windows: BTreeMap<String, Vec<[String; 2]>> =
            serde_json::from_str(&text).map_err(|source| NabError::Labels { path: labels_path.clone(), source })?;
        let data = dir.join("data");
        let mut series = Vec::new();
        for category in sorted_entries(&data)? {
            if !category.is_dir() {
                continue;
            }
            for file in sorted_entries(&category)? {
                if file.extension().and_then(|e| e.to_str()) != Some("csv") {
                    continue;
                }
                let category_name = file_name(&category);
                let name = file_name(&file).trim_end_matches(".csv").to_string();
                let mut s = read_series(&file, category_name, name)?;
                let key = s.key();
                let spans = windows.get(&key).ok_or(NabError::Unlabelled { file: key.clone() })?;
                s.windows = spans
                    .iter()
                    .map(|[a, b]| Ok((row_of(&s, &key, a)?, row_of(&s, &key, b)?)))
                    .collect::<Result<_, NabError>>()?;
                s.windows.sort_unstable();
                series.push(s);
            }
        }
        if series.is_empty() {
            return Err(NabError::Empty { path: data });
        }
        Ok(NabCorpus { series })
    }

    pub fn window_count(&self) -> usize {
        self.series.iter().map(|s| s.windows.len()).sum()
    }

    pub fn row_count(&self) -> usize {
        self.series.iter().map(|s| s.values.len()).sum()
    }
}

fn file_name(p: &Path) -> String {
    p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>, NabError> {
    let mut v = std::fs::read_dir(dir)
        .map_err(io(dir))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(io(dir))?;
    v.sort();
    Ok(v)
}

fn row_of(s: &NabSeries, key: &str, edge: &str) -> Result<usize, NabError> {
    let missing = || NabError::WindowEdge { file: key.to_string(), timestamp: edge.to_string() };
    let t = parse_timestamp_ms(edge).ok_or_else(missing)?;
    s.timestamps_ms.iter().position(|&x| x == t).ok_or_else(missing)
}

fn read_series(path: &Path, category: String, name: String) -> Result<NabSeries, NabError> {
    let text = std::fs::read_to_string(path).map_err(io(path))?;
    let bad = |line: usize, reason: String| NabError::Row { path: path.to_path_buf(), line, reason };
    let mut s = NabSeries {
        category,
        name,
        timestamp_text: Vec::new(),
        timestamps_ms: Vec::new(),
        values: Vec::new(),
        windows: Vec::new(),
    };
    for (i, line) in text.lines().enumerate() {
        let line = line.trim_end_matches('\r');
        if i == 0 {
            if !line.starts_with("timestamp,value") {
                return Err(bad(1, format!("expected the header `timestamp,value`, found `{line}`")));
            }
            continue;
        }
        if line.is_empty() {
            continue;
        }
        let (ts, value) = line.split_once(',').ok_or_else(|| bad(i + 1, "expected `timestamp,value`".into()))?;
        let value = value.split(',').next().unwrap_or(value);
        let t = parse_timestamp_ms(ts).ok_or_else(|| bad(i + 1, format!("bad timestamp `{ts}`")))?;
        let v: f64 = value.trim().parse().map_err(|_| bad(i + 1, format!("bad value `{value}`")))?;
        s.timestamp_text.push(ts.to_string());
        s.timestamps_ms.push(t);
        s.values.push(v);
    }
    Ok(s)
}

/// `YYYY-MM-DD HH:MM:SS[.ffffff]` (NAB's format, read as UTC) to milliseconds since the epoch.
pub fn parse_timestamp_ms(s: &str) -> Option<i64> {
    let s = s.trim();
    let (date, time) = s.split_once([' ', 'T'])?;
    let mut d = date.splitn(3, '-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let (hms, frac) = time.split_once('.').unwrap_or((time, ""));
    let mut t = hms.splitn(3, ':').map(|p| p.parse::<i64>().ok());
    let (hh, mm, ss) = (t.next()??, t.next()??, t.next()??);
    if !(1..=12).contains(&m) || !(1..=31).contains(&day) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    let ms = if frac.is_empty() {
        0
    } else {
        let digits: String = frac.chars().chain("000".chars()).take(3).collect();
        digits.parse::<i64>().ok()?
    };
    Some((days_from_civil(y, m, day) * 86_400 + hh * 3600 + mm * 60 + ss) * 1000 + ms)
}

/// Days since 1970-01-01 of a proleptic Gregorian date.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// A NAB application profile: the weights of true positives, false positives and false negatives.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Profile {
    pub name: &'static str,
    pub tp: f64,
    pub fp: f64,
    pub fn_: f64,
}

/// NAB's three profiles (the true-negative weight plays no part in the score).
pub const PROFILES: [Profile; 3] = [
    Profile { name: "standard", tp: 1.0, fp: 0.11, fn_: 1.0 },
    Profile { name: "reward_low_FP_rate", tp: 1.0, fp: 0.22, fn_: 1.0 },
    Profile { name: "reward_low_FN_rate", tp: 1.0, fp: 0.11, fn_: 2.0 },
];

/// The share of each file that is never scored, and its cap in rows (15% of 5000).
pub const PROBATION_PERCENT: f64 = 0.15;

/// Rows at the start of a file of `rows` rows that are not scored.
pub fn probation_rows(rows: usize) -> usize {
    let p = (PROBATION_PERCENT * rows as f64).floor().min(PROBATION_PERCENT * 5000.0);
    // Row i is scored when i >= p; p may be fractional only through the cap, which is whole.
    p.ceil() as usize
}

/// NAB's scaled sigmoid: about 0.987 at -1 (a window's left edge), 0 at 0, -1 from 3 on.
pub fn scaled_sigmoid(x: f64) -> f64 {
    if x >= 3.0 {
        -1.0
    } else {
        2.0 / (1.0 + (5.0 * x).exp()) - 1.0
    }
}

/// One scorable row: its score, what it earns if detected, and its window (corpus-wide id), if any.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SweepPoint {
    pub score: f64,
    pub weight: f64,
    pub window: Option<u32>,
}

/// The weighted rows of one file after its probation period. `first_window` numbers its windows
/// corpus-wide.
pub fn sweep_points(s: &NabSeries, scores: &[f64], p: &Profile, first_window: u32) -> Vec<SweepPoint> {
    let max_tp = scaled_sigmoid(-1.0);
    let probation = probation_rows(s.values.len());
    let mut out = Vec::with_capacity(s.values.len().saturating_sub(probation));
    let mut next = 0usize; // next window to enter
    let mut prev: Option<(usize, f64)> = None; // right edge and width of the last window left
    for (i, &score) in scores.iter().enumerate().take(s.values.len()) {
        let inside = s.windows.get(next).filter(|w| w.0 <= i && i <= w.1).copied();
        let (weight, window) = match inside {
            Some((left, right)) => {
                let width = (right - left + 1) as f64;
                let pos = -((right as f64) - (i as f64) + 1.0) / width;
                (scaled_sigmoid(pos) * p.tp / max_tp, Some(first_window + next as u32))
            }
            None => {
                let pos = match prev {
                    // NAB divides by width - 1; a one-row window would divide by zero there too, and
                    // its result (inf, so the full penalty) is what this gives.
                    Some((right, width)) => (i as f64 - right as f64).abs() / (width - 1.0),
                    None => 3.0,
                };
                (scaled_sigmoid(pos) * p.fp, None)
            }
        };
        if i >= probation {
            out.push(SweepPoint { score, weight, window });
        }
        if let Some((left, right)) = inside.filter(|w| w.1 == i) {
            prev = Some((right, (right - left + 1) as f64));
            next += 1;
        }
    }
    out
}

/// The corpus score at one threshold (detections are scores at or above it).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ThresholdScore {
    pub threshold: f64,
    pub score: f64,
    /// Rows, as NAB counts them.
    pub tp: usize,
    pub fp: usize,
    pub fn_: usize,
    pub tn: usize,
}

/// NAB's sweep: every distinct score as a threshold, from above the highest down to the lowest.
/// `window_count` bounds the window ids in `points`; `fn_weight` is the profile's miss cost.
pub fn scores_by_threshold(points: &[SweepPoint], window_count: usize, fn_weight: f64) -> Vec<ThresholdScore> {
    let mut order: Vec<&SweepPoint> = points.iter().collect();
    // Stable, highest first; ties keep their order, which cannot change a total.
    order.sort_by(|a, b| b.score.total_cmp(&a.score));
    // Each window with scorable rows starts as a miss; windows wholly inside probation count for
    // nothing, as in NAB.
    let mut best: Vec<Option<f64>> = vec![None; window_count];
    let (mut tn, mut fn_) = (0usize, 0usize);
    for pt in points {
        match pt.window {
            Some(w) => {
                fn_ += 1;
                best[w as usize] = Some(-fn_weight);
            }
            None => tn += 1,
        }
    }
    let (mut tp, mut fp) = (0usize, 0usize);
    let mut fp_sum = 0.0;
    let mut threshold = 1.1;
    let mut result = Vec::new();
    let total = |best: &[Option<f64>], fp_sum: f64| fp_sum + best.iter().flatten().sum::<f64>();
    for pt in order {
        if pt.score != threshold {
            result.push(ThresholdScore { threshold, score: total(&best, fp_sum), tp, fp, fn_, tn });
            threshold = pt.score;
        }
        match pt.window {
            Some(w) => {
                tp += 1;
                fn_ -= 1;
                if let Some(b) = best[w as usize].as_mut() {
                    *b = b.max(pt.weight);
                }
            }
            None => {
                fp += 1;
                tn -= 1;
                fp_sum += pt.weight;
            }
        }
    }
    result.push(ThresholdScore { threshold, score: total(&best, fp_sum), tp, fp, fn_, tn });
    result
}

/// The threshold with the best corpus score (the highest such threshold on a tie, as NAB's stable
/// sort picks).
pub fn best_threshold(sweep: &[ThresholdScore]) -> ThresholdScore {
    let mut best = sweep[0];
    for t in &sweep[1..] {
        if t.score > best.score {
            best = *t;
        }
    }
    best
}

/// A file's score at a fixed threshold: windows detected and missed, false-positive rows, and the
/// weighted total.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct FileScore {
    pub score: f64,
    pub windows_detected: usize,
    pub windows_missed: usize,
    pub false_positive_rows: usize,
}

/// Scores one file's sweep points at `threshold` (detections are scores at or above it).
pub fn score_at(points: &[SweepPoint], threshold: f64, fn_weight: f64) -> FileScore {
    let mut windows: BTreeMap<u32, f64> = BTreeMap::new();
    let mut out = FileScore::default();
    let mut fp_sum = 0.0;
    for pt in points {
        let detected = pt.score >= threshold;
        match pt.window {
            Some(w) => {
                let b = windows.entry(w).or_insert(-fn_weight);
                if detected {
                    *b = b.max(pt.weight);
                }
            }
            None if detected => {
                out.false_positive_rows += 1;
                fp_sum += pt.weight;
            }
            None => {}
        }
    }
    for &b in windows.values() {
        if b == -fn_weight {
            out.windows_missed += 1;
        } else {
            out.windows_detected += 1;
        }
    }
    out.score = fp_sum + windows.values().sum::<f64>();
    out
}

/// One profile's result over a corpus.
#[derive(Clone, Debug, PartialEq)]
pub struct ProfileResult {
    pub profile: Profile,
    pub threshold: f64,
    pub raw: f64,
    pub null: f64,
    pub perfect: f64,
    /// 0 for the null detector, 100 for the perfect one.
    pub normalized: f64,
    pub windows_detected: usize,
    pub windows_missed: usize,
    pub false_positive_rows: usize,
    /// Per file, in corpus order.
    pub files: Vec<FileScore>,
}

/// Scores a detector's output (`scores[i]` for `corpus.series[i]`, one per row) under every profile.
pub fn evaluate(corpus: &NabCorpus, scores: &[Vec<f64>]) -> Vec<ProfileResult> {
    PROFILES.iter().map(|p| evaluate_profile(corpus, scores, p)).collect()
}

fn corpus_points(corpus: &NabCorpus, scores: &[Vec<f64>], p: &Profile) -> Vec<Vec<SweepPoint>> {
    let mut first = 0u32;
    corpus
        .series
        .iter()
        .zip(scores)
        .map(|(s, sc)| {
            let pts = sweep_points(s, sc, p, first);
            first += s.windows.len() as u32;
            pts
        })
        .collect()
}

/// One profile: the corpus-wide threshold, then each file at that threshold, then normalisation.
pub fn evaluate_profile(corpus: &NabCorpus, scores: &[Vec<f64>], p: &Profile) -> ProfileResult {
    let windows = corpus.window_count();
    let optimise = |scores: &[Vec<f64>]| {
        let per_file = corpus_points(corpus, scores, p);
        let all: Vec<SweepPoint> = per_file.iter().flatten().copied().collect();
        (best_threshold(&scores_by_threshold(&all, windows, p.fn_)), per_file)
    };
    let (best, per_file) = optimise(scores);
    // The null detector never fires: a constant score, optimised the same way.
    let zeros: Vec<Vec<f64>> = corpus.series.iter().map(|s| vec![0.0; s.values.len()]).collect();
    let null = optimise(&zeros).0.score;
    let perfect = windows as f64 * p.tp;
    let files: Vec<FileScore> = per_file.iter().map(|pts| score_at(pts, best.threshold, p.fn_)).collect();
    let raw: f64 = files.iter().map(|f| f.score).sum();
    let normalized = if perfect > null { 100.0 * (raw - null) / (perfect - null) } else { 0.0 };
    ProfileResult {
        profile: *p,
        threshold: best.threshold,
        raw,
        null,
        perfect,
        normalized,
        windows_detected: files.iter().map(|f| f.windows_detected).sum(),
        windows_missed: files.iter().map(|f| f.windows_missed).sum(),
        false_positive_rows: files.iter().map(|f| f.false_positive_rows).sum(),
        files,
    }
}

/// Runs the univariate detector over one series: a fresh model, every row once, in order.
pub fn run_univariate(s: &NabSeries, cfg: &UnivariateConfig) -> Vec<PointScore> {
    let mut m = SeriesModel::new();
    s.timestamps_ms.iter().zip(&s.values).map(|(&t, &v)| m.update(cfg, t, v)).collect()
}

/// Writes results in NAB's layout: `<results>/<detector>/<category>/<detector>_<file>.csv` with
/// `timestamp,value,anomaly_score,label`, so NAB's own scorer can re-check them.
pub fn write_results(results: &Path, detector: &str, corpus: &NabCorpus, scores: &[Vec<f64>]) -> Result<(), NabError> {
    for (s, sc) in corpus.series.iter().zip(scores) {
        let dir = results.join(detector).join(&s.category);
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let path = dir.join(format!("{detector}_{}.csv", s.name));
        let mut out = String::with_capacity(s.values.len() * 48);
        out.push_str("timestamp,value,anomaly_score,label\n");
        for (((ts, v), a), l) in s.timestamp_text.iter().zip(&s.values).zip(sc).zip(s.labels()) {
            let _ = writeln!(out, "{ts},{v},{a},{l}");
        }
        std::fs::write(&path, out).map_err(io(&path))?;
    }
    Ok(())
}

/// Writes `<results>/final_results.json` as NAB does: `{detector: {profile: score}}`.
pub fn write_summary(results: &Path, detector: &str, profiles: &[ProfileResult]) -> Result<(), NabError> {
    let scores: BTreeMap<&str, f64> = profiles.iter().map(|r| (r.profile.name, r.normalized)).collect();
    let summary = BTreeMap::from([(detector, scores)]);
    let path = results.join("final_results.json");
    std::fs::create_dir_all(results).map_err(io(results))?;
    let text = serde_json::to_string_pretty(&summary).unwrap_or_default();
    std::fs::write(&path, text + "\n").map_err(io(&path))
}

/// Calibration: which files fit the map and which check it, and how well it does on each.
#[derive(Clone, Debug, PartialEq)]
pub struct CalibrationReport {
    pub knots: Vec<(f64, f64)>,
    pub version: String,
    pub fit_files: Vec<String>,
    pub check_files: Vec<String>,
    /// Brier score on the check half: calibrated, the raw score read as a probability, and the
    /// constant base rate of the fit half.
    pub brier_calibrated: f64,
    pub brier_raw: f64,
    pub brier_base_rate: f64,
    pub base_rate: f64,
    pub reliability: Vec<ReliabilityRow>,
}

/// The fixed split: within each category, files in name order alternate fit, check, fit, ….
pub fn calibration_split(corpus: &NabCorpus) -> Vec<bool> {
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    corpus
        .series
        .iter()
        .map(|s| {
            let n = seen.entry(s.category.as_str()).or_insert(0);
            *n += 1;
            *n % 2 == 1
        })
        .collect()
}

/// The onsets of `files` (rows with a non-zero alert-stream score: what the detector emitted) as
/// (score, lies in a labelled window) pairs. Rows in a file's probation period are left out, as NAB
/// leaves them out.
pub(crate) fn onsets(corpus: &NabCorpus, scores: &[Vec<f64>], files: &[usize]) -> Vec<(f64, bool)> {
    let mut out = Vec::new();
    for &i in files {
        let s = &corpus.series[i];
        let start = probation_rows(s.values.len());
        out.extend(scores[i].iter().zip(s.labels()).skip(start).filter(|(sc, _)| **sc > 0.0).map(|(&sc, l)| (sc, l == 1)));
    }
    out
}

/// Fits the score → P(anomalous) map on one half of the files and checks it on the other
/// (`scores` is the alert stream, [`PointScore::alert_stream_score`]). The rows used are the onsets, the points the pipeline turns into anomalies and attaches a confidence to;
/// an onset is a true anomaly when it lies in a labelled window. Rows in a file's probation period
/// are left out, as NAB leaves them out. (Fitting on every row instead measured no better than the
/// constant base rate on the check half: most rows in NAB's wide windows look normal.)
pub fn calibrate(corpus: &NabCorpus, scores: &[Vec<f64>], scoring_version: &str) -> CalibrationReport {
    let split = calibration_split(corpus);
    let (fit_idx, check_idx): (Vec<usize>, Vec<usize>) = (0..corpus.series.len()).partition(|&i| split[i]);
    let fit = onsets(corpus, scores, &fit_idx);
    let check = onsets(corpus, scores, &check_idx);
    let keys = |idx: &[usize]| idx.iter().map(|&i| corpus.series[i].key()).collect::<Vec<_>>();
    let (fit_files, check_files) = (keys(&fit_idx), keys(&check_idx));
    let fitted = fit_and_check(&fit, &check);
    let knots = fitted.knots;
    let calibrated: Vec<(f64, bool)> = check.iter().map(|&(s, y)| (calibration::interpolate(&knots, s), y)).collect();
    let edges = [0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0];
    CalibrationReport {
        version: format!("{scoring_version}+cal-{:08x}", fnv1a(&format!("{knots:?}"))),
        brier_calibrated: fitted.brier.calibrated,
        brier_raw: fitted.brier.raw,
        brier_base_rate: fitted.brier.base_rate,
        reliability: calibration::reliability(calibrated.iter().copied(), &edges),
        base_rate: fitted.base_rate,
        knots,
        fit_files,
        check_files,
    }
}

/// Brier scores of (score, is a true anomaly) onsets: the calibrated probability, the raw score read
/// as one, and a constant base rate.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Brier {
    pub onsets: usize,
    pub calibrated: f64,
    pub raw: f64,
    pub base_rate: f64,
}

/// A calibration fitted on some onsets and checked on others.
#[derive(Clone, Debug, PartialEq)]
pub struct Fitted {
    pub knots: Vec<(f64, f64)>,
    /// The fit onsets' share of true anomalies.
    pub base_rate: f64,
    /// On the check onsets; `base_rate` predicts the fit onsets' base rate.
    pub brier: Brier,
}

/// Fits the isotonic map on `fit` and takes the Brier scores on `check`.
pub fn fit_and_check(fit: &[(f64, bool)], check: &[(f64, bool)]) -> Fitted {
    let knots = calibration::fit_isotonic(fit.iter().copied(), CALIBRATION_BINS);
    let base_rate = fit.iter().filter(|r| r.1).count() as f64 / fit.len().max(1) as f64;
    let brier = Brier {
        onsets: check.len(),
        calibrated: calibration::brier(check.iter().map(|&(s, y)| (calibration::interpolate(&knots, s), y))),
        raw: calibration::brier(check.iter().copied()),
        base_rate: calibration::brier(check.iter().map(|&(_, y)| (base_rate, y))),
    };
    Fitted { knots, base_rate, brier }
}

/// Score bins pooled before the isotonic fit: few, so the table does not learn single files.
pub const CALIBRATION_BINS: usize = 10;

pub(crate) fn fnv1a(s: &str) -> u32 {
    s.bytes().fold(0x811c_9dc5u32, |h, b| (h ^ u32::from(b)).wrapping_mul(0x0100_0193))
}

impl CalibrationReport {
    /// The JSON kept under `models/`: version, knots, the split and the check figures.
    pub fn to_json(&self) -> String {
        let v = serde_json::json!({
            "version": self.version,
            "method": "isotonic regression (PAV) of in-window on score over episode onsets (the points emitted as anomalies), 10 bins, fit half of nab-dev",
            "knots": self.knots,
            "fit_files": self.fit_files,
            "check_files": self.check_files,
            "check": {
                "brier_calibrated": self.brier_calibrated,
                "brier_raw_score": self.brier_raw,
                "brier_base_rate": self.brier_base_rate,
                "base_rate": self.base_rate,
                "reliability": self.reliability.iter().map(|r| serde_json::json!({
                    "lo": r.lo, "hi": r.hi, "count": r.count,
                    "mean_predicted": r.mean_predicted, "observed_rate": r.observed_rate,
                })).collect::<Vec<_>>(),
            },
        });
        serde_json::to_string_pretty(&v).unwrap_or_default() + "\n"
    }

    /// The generated `calibration_table.rs` of `cairn-detect`.
    pub fn to_rust(&self) -> String {
        let mut out = String::from(
            "//! Generated by `cairn eval nab --calibrate` (see `calibration`); do not edit by hand.\n\n\
             /// Names the scoring and this table; recorded as the anomaly's model version.\n",
        );
        let _ = writeln!(out, "pub const VERSION: &str = {:?};\n", self.version);
        out.push_str("/// (score, probability) knots, score ascending, probability non-decreasing.\n");
        out.push_str("pub const KNOTS: &[(f64, f64)] = &[\n");
        for (s, p) in &self.knots {
            let _ = writeln!(out, "    ({s:?}, {p:?}),");
        }
        out.push_str("];\n");
        out
    }
}

pub mod breakdown;
pub mod cv;

#[cfg(test)]
mod tests;
