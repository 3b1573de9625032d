//! Generated series with known anomalies: each must be found within a stated number of points, and
//! clean series must stay quiet.

use super::calibration::{brier, fit_isotonic, interpolate, reliability};
use super::*;

const MIN: i64 = 60_000;

/// Deterministic noise in [-0.5, 0.5) (no RNG crate needed).
fn noise(i: usize) -> f64 {
    let x = ((i as u64).wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407) >> 33) as f64;
    (x / (1u64 << 31) as f64) - 0.5
}

/// Roughly Gaussian noise with unit standard deviation (sum of four uniforms).
fn gauss(i: usize) -> f64 {
    (noise(4 * i) + noise(4 * i + 1) + noise(4 * i + 2) + noise(4 * i + 3)) * 1.732
}

/// Runs a fresh model over values spaced `step` apart; returns every point's score.
fn run(values: &[f64], step: i64) -> Vec<PointScore> {
    let cfg = UnivariateConfig::default();
    let mut m = SeriesModel::new();
    values.iter().enumerate().map(|(i, &v)| m.update(&cfg, 1_700_000_000_000 + i as i64 * step, v)).collect()
}

fn onsets(scores: &[PointScore]) -> Vec<usize> {
    scores.iter().enumerate().filter(|(_, s)| s.onset).map(|(i, _)| i).collect()
}

/// A daily cycle sampled every 5 minutes, with noise of standard deviation `sd`.
fn daily(i: usize, sd: f64) -> f64 {
    100.0 + 30.0 * (i as f64 * std::f64::consts::TAU / 288.0).sin() + sd * gauss(i)
}

#[test]
fn state_is_at_most_464_bytes_and_owns_no_heap() {
    // Every field is inline (numbers and a fixed array), so size_of is the whole footprint. With its
    // 8-byte id a series' slot is then 472 bytes, which leaves its share of the index and of a partly
    // filled chunk well within 512.
    let size = std::mem::size_of::<SeriesModel>();
    assert!(size <= 464, "SeriesModel is {size} bytes");
    // Feeding a long series does not change that: there is nothing to grow.
    let mut m = SeriesModel::new();
    let cfg = UnivariateConfig::default();
    for i in 0..10_000 {
        m.update(&cfg, i as i64 * MIN, daily(i, 1.0));
    }
    assert_eq!(std::mem::size_of_val(&m), size);
}

#[test]
fn a_spike_is_raised_at_the_spike_itself() {
    let mut v: Vec<f64> = (0..2000).map(|i| 50.0 + gauss(i)).collect();
    v[1500] += 15.0;
    let s = run(&v, MIN);
    assert_eq!(onsets(&s), vec![1500]);
    assert_eq!(s[1500].kind, AnomalyKind::Spike);
    assert!(s[1500].score > 0.9, "{:?}", s[1500]);
    assert!((s[1500].expected - 50.0).abs() < 2.0);
}

#[test]
fn a_level_shift_is_raised_within_3_points_and_once() {
    let v: Vec<f64> = (0..3000).map(|i| if i < 1500 { 20.0 } else { 28.0 } + gauss(i)).collect();
    let s = run(&v, MIN);
    let o = onsets(&s);
    assert_eq!(o.len(), 1, "{o:?}");
    assert!((1500..=1503).contains(&o[0]), "{o:?}");
    // While it lasts, the episode names it a level shift.
    assert!(s[1500..1510].iter().any(|p| p.kind == AnomalyKind::LevelShift), "{:?}", &s[1500..1510]);
    // And the new level becomes the baseline: the last thousand points are quiet.
    assert!(s[2000..].iter().all(|p| p.score < 0.5));
}

#[test]
fn a_slow_drift_is_raised_within_150_points() {
    // 0.05 standard deviations per point: invisible point by point, 7.5 deviations after 150 points.
    let v: Vec<f64> = (0..3000).map(|i| 10.0 + gauss(i) + if i >= 2000 { 0.05 * (i - 2000) as f64 } else { 0.0 }).collect();
    let s = run(&v, MIN);
    let o = onsets(&s);
    assert!(!o.is_empty() && (2000..=2150).contains(&o[0]), "{o:?}");
    assert_eq!(s[o[0]].kind, AnomalyKind::Drift, "{:?}", s[o[0]]);
}

#[test]
fn a_seasonal_break_is_raised_within_36_points() {
    // Seven clean days, then the daily cycle stops at its mean (where it crosses it, so there is no
    // jump): the values stay in their usual range, only the shape of the day is gone.
    let start = 288 * 7;
    let v: Vec<f64> = (0..288 * 9).map(|i| if i >= start { 100.0 + 0.5 * gauss(i) } else { daily(i, 0.5) }).collect();
    let s = run(&v, 5 * MIN);
    let o = onsets(&s);
    assert!(!o.is_empty(), "nothing raised");
    assert!((start..=start + 36).contains(&o[0]), "{o:?}");
    assert_eq!(s[o[0]].kind, AnomalyKind::SeasonalBreak, "{:?}", s[o[0]]);
}

#[test]
fn a_flat_line_in_a_noisy_series_is_raised_within_10_points() {
    let v: Vec<f64> = (0..2000).map(|i| if (1500..1560).contains(&i) { 7.0 } else { 7.0 + gauss(i) }).collect();
    let s = run(&v, MIN);
    let o = onsets(&s);
    assert!(!o.is_empty() && (1500..=1510).contains(&o[0]), "{o:?}");
    assert_eq!(s[o[0]].kind, AnomalyKind::FlatLine);
}

#[test]
fn a_series_that_was_always_constant_raises_nothing_past_warm_up() {
    // A freshly started `up` (1) and a `*_build_info` (1) at a 15 s scrape, and a series pinned at 0,
    // for six hours: far past the warm-up of 150 points.
    for value in [1.0, 0.0, 42.0] {
        let s = run(&vec![value; 1440], 15_000);
        assert!(onsets(&s).is_empty(), "constant {value}: {:?}", onsets(&s));
        assert!(s.iter().all(|p| p.score < 0.5), "constant {value} scores");
    }
}

#[test]
fn a_state_series_that_never_moved_is_raised_on_its_first_change_even_before_warm_up() {
    // A fresh `up` scraped every minute goes to 0 after 70 points (warm-up is 150); a rollout's
    // generation steps from 3 to 4; both are new states.
    for (before, after) in [(1.0, 0.0), (3.0, 4.0), (0.0, 1.0)] {
        let v: Vec<f64> = (0..100).map(|i| if i < 70 { before } else { after }).collect();
        let s = run(&v, MIN);
        assert_eq!(onsets(&s), [70], "{before} -> {after}");
        assert_eq!(s[70].kind, AnomalyKind::LevelShift);
        assert!(s[70].confidence > 0.0 && s[70].score >= 0.5, "{:?}", s[70]);
    }
    // Too short a run to be a state (a pod's readiness settling as it starts), and a series that
    // moves, stay unscored until warm-up as before.
    let settling: Vec<f64> = (0..100).map(|i| if i < 10 { 0.0 } else { 1.0 }).collect();
    assert!(onsets(&run(&settling, MIN)).is_empty());
    let moving: Vec<f64> = (0..140).map(|i| if i < 70 { 5.0 + gauss(i) } else { 50.0 + gauss(i) }).collect();
    assert!(onsets(&run(&moving, MIN)).is_empty());
}

#[test]
fn a_large_valued_state_series_is_raised_on_its_first_change_after_warm_up_too() {
    // Past warm-up, at a 15 s scrape: a ConfigMap's resource version stepping by one, and a
    // reloader's last-reload time in seconds since 1970 moving to now. Neither has a scale of its
    // own, and a step relative to the value is tiny; both are new states.
    for (before, after) in [(86_945_345.0, 86_945_346.0), (1_796_400_000.0, 1_796_663_775.0)] {
        let v: Vec<f64> = (0..400).map(|i| if i < 300 { before } else { after }).collect();
        let s = run(&v, 15_000);
        assert_eq!(onsets(&s), [300], "{before} -> {after}");
        assert_eq!(s[300].kind, AnomalyKind::LevelShift);
    }
    // A series that moves a little, however large its value, still has a scale to be judged by.
    let moving: Vec<f64> = (0..400).map(|i| 1_796_400_000.0 + 1e3 * gauss(i) + if i >= 300 { 500.0 } else { 0.0 }).collect();
    assert!(onsets(&run(&moving, 15_000)).is_empty());
}

#[test]
fn a_series_that_moved_and_then_froze_is_still_a_flat_line() {
    let v: Vec<f64> = (0..2000).map(|i| if i >= 1500 { 7.0 } else { 7.0 + gauss(i) }).collect();
    let o = onsets(&run(&v, MIN));
    assert!(!o.is_empty() && (1500..=1510).contains(&o[0]), "{o:?}");
}

#[test]
fn a_gap_is_raised_on_the_first_point_after_it() {
    let cfg = UnivariateConfig::default();
    let mut m = SeriesModel::new();
    let mut t = 0;
    let mut found = None;
    for i in 0..1200 {
        t += if i == 1000 { 120 * MIN } else { MIN };
        let p = m.update(&cfg, t, 5.0 + gauss(i));
        if p.onset {
            found = Some((i, p.kind));
        }
    }
    assert_eq!(found, Some((1000, AnomalyKind::MissingData)));
}

#[test]
fn clean_seasonal_series_stay_below_the_alert_score() {
    for sd in [0.2, 1.0, 3.0] {
        let v: Vec<f64> = (0..288 * 14).map(|i| daily(i, sd)).collect();
        let s = run(&v, 5 * MIN);
        let worst = s.iter().map(|p| p.score).fold(0.0, f64::max);
        assert!(onsets(&s).is_empty(), "sd {sd}: onsets {:?}, worst score {worst}", onsets(&s));
    }
}

#[test]
fn warm_up_scores_nothing() {
    let v: Vec<f64> = (0..64).map(|i| if i % 7 == 0 { 1e6 } else { 1.0 }).collect();
    let s = run(&v, MIN);
    assert!(s.iter().all(|p| p.accepted && p.score == 0.0 && !p.onset && p.confidence == 0.0));
}

#[test]
fn refused_samples_leave_the_state_untouched() {
    let cfg = UnivariateConfig::default();
    let mut m = SeriesModel::new();
    for i in 0..100 {
        m.update(&cfg, i * MIN, gauss(i as usize));
    }
    let before = m.clone();
    assert!(!m.update(&cfg, 99 * MIN, 3.0).accepted, "same timestamp");
    assert!(!m.update(&cfg, 50 * MIN, 3.0).accepted, "older timestamp");
    assert!(!m.update(&cfg, 100 * MIN, f64::NAN).accepted);
    assert!(!m.update(&cfg, 100 * MIN, f64::INFINITY).accepted);
    assert_eq!(m, before);
}

#[test]
fn scoring_is_deterministic_and_bounded() {
    let v: Vec<f64> = (0..5000)
        .map(|i| {
            let base = daily(i, 2.0);
            match i {
                1000 => base * 3.0,
                2000..=2300 => base + 40.0,
                4000..=4100 => 0.0,
                _ => base,
            }
        })
        .collect();
    let a = run(&v, 5 * MIN);
    let b = run(&v, 5 * MIN);
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x.score.to_bits(), y.score.to_bits());
        assert_eq!(x.confidence.to_bits(), y.confidence.to_bits());
        assert_eq!((x.kind, x.onset), (y.kind, y.onset));
    }
    for p in &a {
        assert!((0.0..=1.0).contains(&p.score) && (0.0..=1.0).contains(&p.confidence), "{p:?}");
    }
    // A model cloned mid-stream continues exactly as the original.
    let cfg = UnivariateConfig::default();
    let mut m = SeriesModel::new();
    for (i, &x) in v[..2500].iter().enumerate() {
        m.update(&cfg, 1_700_000_000_000 + i as i64 * 5 * MIN, x);
    }
    let mut c = m.clone();
    for (i, &x) in v.iter().enumerate().skip(2500) {
        let t = 1_700_000_000_000 + i as i64 * 5 * MIN;
        assert_eq!(m.update(&cfg, t, x), c.update(&cfg, t, x));
    }
}

#[test]
fn extreme_values_do_not_break_the_model() {
    let v: Vec<f64> = (0..3000).map(|i| match i % 500 { 0 => 1e300, 1 => -1e300, _ => gauss(i) * 1e-300 }).collect();
    for p in run(&v, MIN) {
        assert!(p.score.is_finite() && (0.0..=1.0).contains(&p.score), "{p:?}");
    }
}

#[test]
fn alert_stream_score_is_the_onset_score_and_zero_elsewhere() {
    let v: Vec<f64> = (0..2000).map(|i| if i < 1500 { 20.0 } else { 40.0 } + gauss(i)).collect();
    let s = run(&v, MIN);
    let o = onsets(&s)[0];
    assert!(s[o].alert_stream_score() >= 0.5);
    assert_eq!(s[o].alert_stream_score(), s[o].score);
    assert!(s[o + 1..o + 30].iter().all(|p| p.in_episode && p.alert_stream_score() == 0.0));
    // Outside episodes too, a point that raised nothing shows nothing, however high its score.
    assert!(s.iter().filter(|p| !p.onset).all(|p| p.alert_stream_score() == 0.0));
    assert!(s.iter().any(|p| !p.onset && !p.in_episode && p.score > 0.0), "some sub-alert scores exist to hide");
}

/// A quiet series with a spike of `size` noise units every `every` points from point 300 on.
fn spiky(every: usize, size: f64) -> Vec<f64> {
    (0..6000).map(|i| 50.0 + gauss(i) + if i >= 300 && i % every == 0 { size } else { 0.0 }).collect()
}

#[test]
fn a_series_that_keeps_alerting_reports_the_same_spike_lower_but_still_raises_it() {
    // The same 12-sigma spike: once in a quiet series, and at the end of a series that has already
    // raised one every 250 points (every 21 hours at 5-minute steps, so not a daily habit).
    let mut quiet: Vec<f64> = (0..6000).map(|i| 50.0 + gauss(i)).collect();
    quiet[5750] += 12.0;
    let busy = spiky(250, 12.0);
    let (q, b) = (run(&quiet, 5 * MIN), run(&busy, 5 * MIN));
    assert!(q[5750].onset && b[5750].onset, "the evidence still opens an episode in both");
    assert!(onsets(&b).len() >= 20, "the busy series alerted all along: {}", onsets(&b).len());
    assert!(q[5750].score > 0.9, "{:?}", q[5750]);
    assert!(b[5750].score < q[5750].score - 0.3, "busy {} vs quiet {}", b[5750].score, q[5750].score);
    // The reported score only ever lowers the evidence, and every onset is still raised once.
    let first = onsets(&b)[0];
    assert!((b[first].score - q[5750].score).abs() < 0.1, "the first alert is not discounted: {}", b[first].score);
    assert!(b.windows(2).all(|w| !(w[0].onset && w[1].onset)));
}

#[test]
fn the_alert_memory_fades() {
    // Alerts every 250 points up to 3000, then a long quiet stretch, then the same spike again.
    let mut v = spiky(250, 12.0);
    v.extend((6000..40_000).map(|i| 50.0 + gauss(i)));
    for x in &mut v[3000..39_990] {
        *x = 50.0 + (*x - 50.0).clamp(-3.0, 3.0);
    }
    v[39_990] += 12.0;
    let s = run(&v, 5 * MIN);
    let last_busy = *onsets(&s[..3000]).last().expect("the busy stretch alerted");
    let late = &s[39_990];
    assert_eq!(onsets(&s[3000..]), vec![39_990 - 3000]);
    assert!(s[last_busy].score < late.score - 0.3, "busy {} vs late {}", s[last_busy].score, late.score);
    // Ten alerts fade by e^-3.7 over 37,000 points: the spike is reported at about 1 / 1.25 of its evidence.
    assert!(late.score > 0.7, "37,000 quiet points later the spike scores almost as in a quiet series: {}", late.score);
}

#[test]
fn the_spike_memory_keeps_a_z_within_3_percent_in_one_byte() {
    use super::model::{peak_code, peak_z, PEAK_STEP_BOUNDS, PEAK_STEP_VALUES};
    // The literal tables are 2^(j/12) and 2^((j + 1/2)/12).
    for j in 0..12 {
        let (v, b) = (2f64.powf(j as f64 / 12.0), 2f64.powf((j as f64 + 0.5) / 12.0));
        assert_eq!(PEAK_STEP_VALUES[j], v as f32, "step {j}");
        assert!((PEAK_STEP_BOUNDS[j] - b).abs() < 1e-15, "bound {j}");
    }
    // Every code decodes to a z that codes back to it, and codes are ordered as their z.
    for c in 0..=255u8 {
        assert_eq!(peak_code(f64::from(peak_z(c))), c, "code {c}");
    }
    assert!((1..=255u8).all(|c| peak_z(c) > peak_z(c - 1)));
    // Any z from 1 to a million comes back within 3% (half a step of 2^(1/12)), and coding is monotone.
    let mut prev = 0;
    let mut z = 1.0f64;
    while z <= 1e6 {
        let c = peak_code(z);
        let back = f64::from(peak_z(c));
        assert!((back / z - 1.0).abs() < 0.0299, "{z} -> {c} -> {back}");
        assert!(c >= prev, "{z}");
        prev = c;
        z *= 1.0007;
    }
    // Nothing, and z too small for any floor to read, is 0; beyond the top it saturates.
    for z in [0.0, -4.0, f64::NAN, 0.5, 0.97] {
        assert_eq!(peak_code(z), 0, "{z}");
    }
    assert_eq!(peak_z(0), 0.0);
    assert_eq!(peak_code(1.0), 1);
    assert_eq!((peak_code(3e6), peak_code(f64::INFINITY)), (255, 255));
    assert!(peak_z(255) > 2e6);
}

#[test]
fn a_spike_that_comes_every_day_at_the_same_hour_is_discounted() {
    // A nightly job: a 15-sigma spike at 02:00 every day for nine days (5-minute steps), against the
    // same spikes at an hour that moves by five each day. Both series alert about as often, so the
    // alert memory discounts them alike; only the hourly spike memory tells them apart.
    let per_day = 288;
    let start = 1_700_006_400_000; // a midnight, UTC
    let series = |hour_of_day: &dyn Fn(usize) -> usize| -> Vec<PointScore> {
        let mut v: Vec<f64> = (0..10 * per_day).map(|i| 50.0 + gauss(i)).collect();
        for day in 1..10 {
            v[day * per_day + hour_of_day(day) * 12] += 15.0;
        }
        let cfg = UnivariateConfig::default();
        let mut m = SeriesModel::new();
        v.iter().enumerate().map(|(i, &x)| m.update(&cfg, start + i as i64 * 5 * MIN, x)).collect()
    };
    let nightly = series(&|_| 2);
    let moving = series(&|day| (2 + 5 * day) % 24);
    let at = |day: usize, hour: usize| day * per_day + hour * 12;
    assert!(nightly[at(1, 2)].score > 0.9 && moving[at(1, 7)].score > 0.9, "the first spike is news in both");
    for day in 3..10 {
        let (n, m) = (nightly[at(day, 2)].score, moving[at(day, (2 + 5 * day) % 24)].score);
        // Without the memory the nightly spike scores 83-100% of the moving one; with it, 65-70%.
        assert!(n < 0.75 * m, "day {day}: nightly {n:.3} against moving {m:.3}");
    }
}

#[test]
fn isotonic_fit_is_monotone_and_matches_rates() {
    // Low scores are 10% positive, high scores 90%, with a violation in the middle to pool.
    let mut pairs = Vec::new();
    for i in 0..1000 {
        pairs.push((0.05, i % 10 == 0));
        pairs.push((0.45, i % 10 < 3));
        pairs.push((0.55, i % 10 < 2));
        pairs.push((0.95, i % 10 != 0));
    }
    let knots = fit_isotonic(pairs.iter().copied(), 20);
    assert!(knots.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1), "{knots:?}");
    assert!((knots[0].1 - 0.1).abs() < 1e-9);
    assert!((knots[1].1 - 0.25).abs() < 1e-9, "the 0.3 and 0.2 bins pool to 0.25: {knots:?}");
    assert!((knots.last().map(|k| k.1).unwrap_or(0.0) - 0.9).abs() < 1e-9);
    assert!((interpolate(&knots, 0.0) - 0.1).abs() < 1e-9);
    assert!((interpolate(&knots, 1.0) - 0.9).abs() < 1e-9);
    // The fitted map beats a constant guess on its own data.
    let fitted = brier(pairs.iter().map(|&(s, y)| (interpolate(&knots, s), y)));
    let constant = brier(pairs.iter().map(|&(_, y)| (0.5, y)));
    assert!(fitted < constant - 0.05, "{fitted} vs {constant}");
    let table = reliability(pairs.iter().map(|&(s, y)| (interpolate(&knots, s), y)), &[0.0, 0.5, 1.0]);
    assert_eq!(table.iter().map(|r| r.count).sum::<usize>(), pairs.len());
}

#[test]
fn shipped_calibration_is_monotone_and_bounded() {
    let knots = super::calibration_table::KNOTS;
    assert!(!knots.is_empty());
    assert_eq!(calibration::confidence(0.0), 0.0, "nothing stands out, nothing is claimed");
    assert!(knots.windows(2).all(|w| w[0].0 <= w[1].0 && w[0].1 <= w[1].1));
    assert!(knots.iter().all(|k| (0.0..=1.0).contains(&k.0) && (0.0..=1.0).contains(&k.1)));
    let mut last = 0.0;
    for i in 0..=100 {
        let c = calibration::confidence(i as f64 / 100.0);
        assert!(c >= last && (0.0..=1.0).contains(&c));
        last = c;
    }
}

#[test]
fn an_episode_that_gets_much_worse_is_raised_again() {
    // A modest bump opens an episode (the smallest bump that does); a huge spike two points later is
    // raised again; a second modest bump inside the episode is not.
    let base: Vec<f64> = (0..2000).map(|i| 20.0 + gauss(i)).collect();
    let modest = (16..40)
        .map(|k| f64::from(k) * 0.25)
        .find(|&bump| {
            let mut v = base.clone();
            v[1500] += bump;
            onsets(&run(&v, MIN)) == vec![1500]
        })
        .expect("some bump opens an episode");
    let mut v = base.clone();
    v[1500] += modest;
    v[1502] += 200.0;
    v[1510] += modest;
    let s = run(&v, MIN);
    assert!(s[1500].score < 0.7, "{:?}", s[1500]);
    assert_eq!(onsets(&s), vec![1500, 1502]);
}

#[test]
fn noise_growing_around_the_same_level_is_raised_within_20_points() {
    // Standard deviation 1 for 2000 points, then 4 around the same mean: no single point needs to be
    // far off, but the error keeps being four times its usual size.
    let v: Vec<f64> = (0..3000).map(|i| 50.0 + if i < 2000 { 1.0 } else { 4.0 } * gauss(i)).collect();
    let s = run(&v, MIN);
    let o = onsets(&s);
    assert!(!o.is_empty() && (2000..=2020).contains(&o[0]), "{o:?}");
    assert!(o.iter().all(|&i| i >= 2000), "quiet before the change: {o:?}");
    // Some point of the opening stretch is named noise (a single wild one may still be a spike first).
    assert!(s[o[0]..o[0] + 30].iter().any(|p| p.kind == AnomalyKind::Noise), "{:?}", &s[o[0]..o[0] + 30]);
}

/// Midnight UTC of a Monday (2023-11-13).
const MONDAY_MS: i64 = 19_674 * 86_400_000;
/// Samples per day of the weekly series (every 15 minutes).
const WEEKLY_PER_DAY: usize = 96;

/// Six weeks of a busy-weekday, quiet-weekend series with a daily cycle, sampled every 15 minutes
/// from a Monday midnight; `holiday` names a day (from 0) whose values are all at 60% of its usual.
fn weekly_series(holiday: Option<usize>) -> Vec<PointScore> {
    let cfg = UnivariateConfig::default();
    let mut m = SeriesModel::new();
    (0..42 * WEEKLY_PER_DAY)
        .map(|i| {
            let day = i / WEEKLY_PER_DAY;
            let phase = (i % WEEKLY_PER_DAY) as f64 / WEEKLY_PER_DAY as f64;
            let level = if day % 7 >= 5 { 60.0 } else { 100.0 };
            let usual = level * (1.0 - 0.5 * (phase * std::f64::consts::TAU).cos()) + 3.0 * gauss(i);
            let v = if holiday == Some(day) { 0.6 * usual } else { usual };
            m.update(&cfg, MONDAY_MS + i as i64 * 15 * MIN, v)
        })
        .collect()
}

#[test]
fn a_weekday_at_60_percent_of_its_usual_level_is_raised_within_that_day() {
    // A Wednesday in the fifth week. Point by point it looks like a quiet weekend day to the daily
    // profile; summed over hours it is far from what a Wednesday's blocks usually are.
    let day = 4 * 7 + 2;
    let s = weekly_series(Some(day));
    let o = onsets(&s);
    let (from, to) = (day * WEEKLY_PER_DAY, (day + 1) * WEEKLY_PER_DAY);
    // Nothing from the fourth week (the weekly profile is used after three) up to the holiday,
    let quiet_from = 21 * WEEKLY_PER_DAY;
    assert!(o.iter().all(|&i| i < quiet_from || i >= from), "onsets before the holiday: {o:?}");
    // an onset within the holiday itself, named a seasonal break,
    let first = o.iter().copied().find(|&i| i >= from).expect("holiday not raised");
    assert!(first < to, "holiday raised only at {first}, day is {from}..{to}: {o:?}");
    assert_eq!(s[first].kind, AnomalyKind::SeasonalBreak, "{:?}", s[first]);
    // and the following week, which the holiday must not have taught to look wrong, stays quiet.
    assert!(o.iter().all(|&i| i < to + WEEKLY_PER_DAY || i >= to + 7 * WEEKLY_PER_DAY), "after the holiday: {o:?}");
}

#[test]
fn a_weekly_series_without_a_holiday_stays_quiet_once_its_weekly_profile_is_used() {
    // The weekends are 40% lower than the weekdays: the weekly profile must take that as normal, not
    // as two anomalous days a week.
    let s = weekly_series(None);
    let quiet_from = 21 * WEEKLY_PER_DAY;
    let o = onsets(&s);
    assert!(o.iter().all(|&i| i < quiet_from), "onsets after three weeks: {o:?}");
    let worst = s[quiet_from..].iter().map(|p| p.score).fold(0.0, f64::max);
    assert!(worst < 0.5, "worst score {worst}");
    // Quiet because it knows the week, not because it is blind: the same Wednesday at the weekend's
    // level is raised, while the weekend days at that level are not.
    let day = 4 * 7 + 2;
    let with_holiday = onsets(&weekly_series(Some(day)));
    let holiday = day * WEEKLY_PER_DAY..(day + 1) * WEEKLY_PER_DAY;
    assert!(with_holiday.iter().any(|i| holiday.contains(i)), "{with_holiday:?}");
    let weekend = (day + 3) * WEEKLY_PER_DAY..(day + 5) * WEEKLY_PER_DAY;
    assert!(!with_holiday.iter().any(|i| weekend.contains(i)), "{with_holiday:?}");
}

#[test]
fn a_series_beyond_f32_range_still_scores_a_level_shift() {
    // Scales and weights are stored as f32: a series whose values (and so whose deviations) lie past
    // f32's range, either way, must still give finite scores and still raise a shift, not go blind on
    // infinities or zeros. 1e42 and 1e-42 are finite f64 samples that remote_write may carry.
    for unit in [1e40, 1e-44] {
        let v: Vec<f64> = (0..2000).map(|i| unit * (if i < 1500 { 100.0 } else { 200.0 } + gauss(i))).collect();
        let s = run(&v, MIN);
        assert!(s.iter().all(|p| p.score.is_finite() && (0.0..=1.0).contains(&p.score)));
        let o = onsets(&s);
        assert!(o.iter().any(|&i| (1500..1510).contains(&i)), "unit {unit}: onsets {o:?}");
        // What the model expects is in the series' own units.
        assert!((s[1400].expected / unit - 100.0).abs() < 5.0, "unit {unit}: expected {}", s[1400].expected);
    }
}
