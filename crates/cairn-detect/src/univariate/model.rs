//! The per-series state and the update step.

use super::weekly::{WeekProfile, WeekSample};
use super::{calibration, severity_of, AnomalyKind, PointScore, UnivariateConfig};

/// Time-of-day slots of the seasonal profile (half hours).
pub(super) const SLOTS: usize = 48;
pub(super) const DAY_MS: i64 = 86_400_000;
const SLOT_MS: i64 = DAY_MS / SLOTS as i64;
/// A series must have been seen this long before its daily profile may be used.
const SEASON_MIN_AGE_MS: i64 = 2 * DAY_MS;
const MINUTE_MS: i64 = 60_000;
/// A slot of the daily profile not seen yet (stored values are clamped to finite `f32`s).
const UNSEEN: f32 = f32::INFINITY;
/// `episode_left` outside an episode.
const NO_EPISODE: u16 = u16::MAX;
/// Mean absolute deviation to standard deviation, for Gaussian noise.
const MAD_TO_SIGMA: f64 = 1.2533;
/// The 99th percentile of |N(0, 1)|, to read a tail quantile as a standard deviation.
const TAIL_TO_SIGMA: f64 = 2.576;
/// How much a remembered hourly spike fades each day its hour comes round without one: six steps of
/// its log scale ([`peak_code`]), a factor 2^(-1/2) ≈ 0.71.
const HOUR_PEAK_DECAY_STEPS: u8 = 6;
/// Consecutive far-off points after which a new level is taken as it is, not clipped.
const ADOPT_AFTER: u16 = 3;
/// Repeated values needed before a flat line is scored at all.
const FLAT_MIN_RUN: u32 = 5;
/// Samples of one unchanged value after which a series that has never moved (`up`, a node
/// condition, a rollout's generation, a build's version) is scored on its first change even before
/// warm-up ends: there is nothing more to learn about a value that never moved, and a fresh pod's
/// `up` (or a series scraped every minute) must not wait `warmup_points` to say it went down.
/// Twenty samples are five minutes at a 15 s scrape and twenty at 60 s.
const STATE_RUN: u32 = 20;
/// The relative step a state series' first change is measured in (a step of 10^-9 of its value is
/// a z of 10); a hundred times coarser than what counts as a repeated value.
const STATE_PRECISION: f64 = 1e-10;
/// The alert memory (`alert_load`) fades by 1/e over this many samples.
const ALERT_MEMORY_POINTS: f32 = 10_000.0;

/// Everything the model keeps about one series. Fixed size, no heap.
#[derive(Clone, Debug, PartialEq)]
pub struct SeriesModel {
    /// Minute of the first sample (floored): only the series' age in days is read from it.
    first_minute: i32,
    last_ts: i64,
    /// Previous raw value (flat-line detection).
    prev: f64,
    /// One-step prediction of the deseasonalised value.
    level: f64,
    /// Fast and slow averages of the deseasonalised value.
    fast: f64,
    slow: f64,
    /// Mean absolute one-step prediction error.
    resid_dev: f32,
    /// Mean absolute distance between the fast and the slow average.
    shift_dev: f32,
    /// Running 99th percentiles of the same two distances: heavy-tailed series get wider scales.
    resid_tail: f32,
    shift_tail: f32,
    /// Fast average of the clipped absolute prediction error, and how far it usually sits from
    /// `resid_dev` (mean absolute distance and tail): the series got noisier.
    noise_fast: f32,
    noise_dev: f32,
    noise_tail: f32,
    /// The quick average and its distance scales from the slow one, as for the fast average.
    quick: f64,
    quick_dev: f32,
    quick_tail: f32,
    /// Mean absolute distance of the value from the profile's mean and from its slot of the profile.
    raw_dev: f32,
    seasonal_dev: f32,
    /// Sum of the visited slots of the profile.
    season_sum: f64,
    /// How much of the daily profile is taken out, 0 to 1.
    gain: f32,
    /// Usual step between samples.
    step_ms: f32,
    /// Mean value per time-of-day slot; [`UNSEEN`] for a slot not seen yet.
    season: [f32; SLOTS],
    /// How many slots have been seen.
    season_seen: u8,
    /// Per hour of the day, the largest spike z seen there lately (decays by a day-visit): spikes
    /// that recur at the same time every day (a nightly job) stop being news. One byte an hour, on a
    /// log scale ([`peak_code`]).
    hour_peak: [u8; 24],
    /// Binary exponent the series' values are divided by before they enter the state (0 for any
    /// series that starts within 1e-30..1e30 of zero): scales are stored as `f32`, so a series of
    /// 1e42s is modelled as 1e42 / 2^e, exactly (a power of two), instead of overflowing them.
    exp2: i16,
    /// How often the series repeats its previous value.
    repeat_rate: f32,
    /// The series' alerts lately: +1 per onset, fading over `ALERT_MEMORY_POINTS` samples. A series
    /// that alerts often needs a stronger deviation for the same reported score.
    alert_load: f32,
    n: u32,
    flat_run: u32,
    /// Large errors in a row (saturating: only runs of up to three are told apart).
    far_run: u16,
    /// Samples left of the open episode's cool-down, or [`NO_EPISODE`].
    episode_left: u16,
    /// Highest score of the open episode.
    episode_peak: f32,
    /// The weekly profile and its evidence.
    week: WeekProfile,
}

impl Default for SeriesModel {
    fn default() -> Self {
        SeriesModel::new()
    }
}

/// A stored average: `f64` where the value itself is kept (levels), `f32` where a scale or a weight
/// is (their seventh digit never matters, and the bytes pay for the weekly profile).
pub(super) trait Stored: Copy {
    fn get(self) -> f64;
    fn put(&mut self, v: f64);
}

impl Stored for f64 {
    fn get(self) -> f64 {
        self
    }
    fn put(&mut self, v: f64) {
        *self = v;
    }
}

impl Stored for f32 {
    fn get(self) -> f64 {
        f64::from(self)
    }
    fn put(&mut self, v: f64) {
        *self = v as f32;
    }
}

/// Exponential average step; `n` makes early samples count as a plain mean (no start-up bias).
pub(super) fn ew<S: Stored>(avg: &mut S, x: f64, alpha: f64, n: u32) {
    let a = alpha.max(1.0 / n.max(1) as f64);
    let old = avg.get();
    avg.put(old + a * (x - old));
}

impl SeriesModel {
    pub const fn new() -> SeriesModel {
        SeriesModel {
            first_minute: 0,
            last_ts: 0,
            prev: 0.0,
            level: 0.0,
            fast: 0.0,
            slow: 0.0,
            resid_dev: 0.0,
            shift_dev: 0.0,
            resid_tail: 0.0,
            shift_tail: 0.0,
            noise_fast: 0.0,
            noise_dev: 0.0,
            noise_tail: 0.0,
            quick: 0.0,
            quick_dev: 0.0,
            quick_tail: 0.0,
            raw_dev: 0.0,
            seasonal_dev: 0.0,
            season_sum: 0.0,
            season_seen: 0,
            hour_peak: [0; 24],
            exp2: 0,
            gain: 0.0,
            step_ms: 0.0,
            season: [UNSEEN; SLOTS],
            repeat_rate: 0.0,
            alert_load: 0.0,
            n: 0,
            flat_run: 0,
            far_run: 0,
            episode_left: NO_EPISODE,
            episode_peak: 0.0,
            week: WeekProfile::new(),
        }
    }

    /// Samples accepted so far.
    pub fn points(&self) -> u32 {
        self.n
    }

    /// Timestamp of the first accepted sample, to the minute (0 before the first).
    pub fn first_timestamp_ms(&self) -> i64 {
        i64::from(self.first_minute) * MINUTE_MS
    }

    /// Whether every sample so far had the same value (false before the first).
    pub fn always_constant(&self) -> bool {
        self.n > 0 && self.flat_run.saturating_add(1) >= self.n
    }

    /// Timestamp of the last accepted sample (0 before the first).
    pub fn last_timestamp_ms(&self) -> i64 {
        self.last_ts
    }

    /// Scores one sample and learns from it. See the module doc for the contract.
    pub fn update(&mut self, cfg: &UnivariateConfig, timestamp_ms: i64, value: f64) -> PointScore {
        if !value.is_finite() || (self.n > 0 && timestamp_ms <= self.last_ts) {
            return PointScore::refused();
        }
        if self.n == 0 {
            self.start(timestamp_ms, value);
            return self.quiet(value);
        }
        let unit = self.unit();
        let x = value / unit;
        let slot = (timestamp_ms.rem_euclid(DAY_MS) / SLOT_MS) as usize;
        let dt = (timestamp_ms - self.last_ts) as f64;
        let warm = self.n >= cfg.warmup_points;
        // A state series' first change, before warm-up ([`STATE_RUN`]).
        let unmoved = self.n >= STATE_RUN && self.flat_run.saturating_add(1) >= self.n;

        // The prediction, with the part of the daily profile the series has shown it follows.
        let seasonal = f64::from(self.gain) * self.seasonal_offset(slot);
        let y = x - seasonal;
        let expected = (self.level + seasonal) * unit;
        let floor = 1e-3 * self.slow.abs().max(1e-6);

        // Spike: the one-step prediction error.
        let resid = y - self.level;
        let spike_scale = (f64::from(self.resid_dev) * MAD_TO_SIGMA).max(f64::from(self.resid_tail) / TAIL_TO_SIGMA).max(floor);
        let z_raw_spike = resid.abs() / spike_scale;
        let hour = slot / 2;
        let recurring = peak_z((0..3).map(|d| self.hour_peak[(hour + 23 + d) % 24]).fold(0, u8::max));
        let z_spike = z_raw_spike / (f64::from(recurring) / cfg.z_floor).max(1.0);
        let far = z_raw_spike > cfg.clip_z;
        let far_run = if far { self.far_run.saturating_add(1) } else { 0 };
        // Far-off values enter the averages clipped until they have lasted long enough to be a level.
        let y_in = if !warm || !far || far_run >= ADOPT_AFTER {
            y
        } else {
            self.level + resid.clamp(-cfg.clip_z * spike_scale, cfg.clip_z * spike_scale)
        };

        // Shift and drift: the fast average against the slow one.
        let mut fast = self.fast;
        ew(&mut fast, y_in, cfg.alpha_fast, self.n);
        let shift = fast - self.slow;
        let shift_scale = (f64::from(self.shift_dev) * MAD_TO_SIGMA).max(f64::from(self.shift_tail) / TAIL_TO_SIGMA).max(floor);
        // The same against a quicker average; the stronger of the two horizons counts.
        let mut quick = self.quick;
        ew(&mut quick, y_in, cfg.alpha_quick, self.n);
        let quick_shift = quick - self.slow;
        let quick_scale = (f64::from(self.quick_dev) * MAD_TO_SIGMA).max(f64::from(self.quick_tail) / TAIL_TO_SIGMA).max(floor);
        let z_quick = if cfg.alpha_quick > 0.0 { quick_shift.abs() / quick_scale } else { 0.0 };
        let z_shift = (shift.abs() / shift_scale).max(z_quick);

        // Noise: the recent size of the prediction error against its long-run size (one-sided).
        let mut noise_fast = f64::from(self.noise_fast);
        ew(&mut noise_fast, resid.abs().min(cfg.clip_z * spike_scale), cfg.alpha_quick, self.n);
        let noise = noise_fast - f64::from(self.resid_dev);
        let noise_scale = (f64::from(self.noise_dev) * MAD_TO_SIGMA).max(f64::from(self.noise_tail) / TAIL_TO_SIGMA).max(floor);
        let z_noise = noise.max(0.0) / noise_scale;

        // Flat line: how surprising the current run of repeated values is. A series that has never
        // changed value (`up`, `*_build_info`, `probe_success`) is not anomalous for being
        // constant: only a run that follows movement is evidence.
        let repeated = (x - self.prev).abs() <= 1e-12 * x.abs().max(1.0);
        let flat_run = if repeated { self.flat_run + 1 } else { 0 };
        let always_constant = flat_run >= self.n;
        let z_flat = if flat_run >= FLAT_MIN_RUN && !always_constant {
            let surprise = -f64::from(flat_run) * f64::from(self.repeat_rate).max(0.02).ln();
            (2.0 * surprise).sqrt()
        } else {
            0.0
        };

        // Missing data: a step much longer than usual.
        let gap_ratio = if f64::from(self.step_ms) > 0.0 { dt / f64::from(self.step_ms) } else { 1.0 };
        let z_gap = if gap_ratio > cfg.gap_factor {
            cfg.z_floor + 2.0 * (gap_ratio / cfg.gap_factor).ln()
        } else {
            0.0
        };

        // Weekly: the last hours' distance from what this weekday and block usually show.
        let cell = WeekProfile::cell(timestamp_ms, slot);
        let off_daily = x - self.profile_at(slot);
        let week_dev = off_daily - self.week.offset(cell);
        let week_run = self.week.next_run(week_dev, dt);
        let week_scale = (f64::from(self.week.run_dev) * MAD_TO_SIGMA).max(floor);
        let z_week = if self.week.active() { week_run.abs() / week_scale } else { 0.0 };

        // Off the daily profile while still inside the usual range: the profile broke, not the level.
        let seasonal_break = {
            let raw_scale = (f64::from(self.raw_dev) * MAD_TO_SIGMA).max(floor);
            f64::from(self.gain) > 0.5 && (x - self.season_mean()).abs() / raw_scale < cfg.z_floor
        };
        let shift_kind = {
            if seasonal_break {
                AnomalyKind::SeasonalBreak
            } else if far_run >= 2 {
                AnomalyKind::LevelShift
            } else {
                AnomalyKind::Drift
            }
        };
        let spike_kind = if seasonal_break {
            AnomalyKind::SeasonalBreak
        } else if far_run >= ADOPT_AFTER {
            AnomalyKind::LevelShift
        } else {
            AnomalyKind::Spike
        };
        // Large errors in a row are a new level, and one wild point is a spike, even if they also
        // raise the noise: only smaller errors that keep coming are the series getting noisier.
        let noise_kind = match far_run {
            0 => AnomalyKind::Noise,
            1 => spike_kind,
            _ => shift_kind,
        };
        let mut z = z_spike;
        let mut kind = spike_kind;
        for (zc, kc) in [(z_noise, noise_kind), (z_shift, shift_kind), (z_flat, AnomalyKind::FlatLine), (z_gap, AnomalyKind::MissingData), (z_week, AnomalyKind::SeasonalBreak)] {
            if zc > z {
                z = zc;
                kind = kc;
            }
        }
        // The evidence (`raw`) drives the episodes; the score reported is that evidence divided by one
        // plus the series' recent alerts, so scores compare across series: an onset in a series that
        // rarely alerts outranks one in a series that cries wolf every few hundred points.
        // A state series' first change, warm or not. A value that never moved has no scale of its
        // own, and the relative floor would hide a large-valued state's step (a ConfigMap's resource
        // version, +1 in 10^8; a reload's time in seconds since 1970): the step is measured
        // against the precision [`STATE_PRECISION`], so any real change counts.
        let state_change = unmoved && !repeated;
        if state_change {
            z = z.max((x - self.prev).abs() / (STATE_PRECISION * self.prev.abs().max(1.0)));
            // Its new value is a new state, not a one-point spike.
            kind = AnomalyKind::LevelShift;
        }
        let scored = warm || state_change;
        let raw = if scored { score_from_z(z, cfg) } else { 0.0 };
        if raw == 0.0 {
            kind = AnomalyKind::None;
        }
        let score = raw / (1.0 + f64::from(self.alert_load));

        // Learn, with the deviations clipped so one wild point does not widen the scales for long.
        let n = self.n + 1;
        // Anomalous deviations also widen the scale ten times more slowly, so a drift or a burst cannot
        // hide itself by teaching the model that it is normal.
        let learn_scale = |dev: &mut f32, d: f64, scale: f64| {
            let (d, alpha) = match (warm, d / scale) {
                (false, _) => (d, cfg.alpha_scale),
                (true, z) if z <= cfg.z_floor => (d, cfg.alpha_scale),
                (true, _) => (d.min(cfg.clip_z * scale), cfg.alpha_scale / 10.0),
            };
            ew(dev, d, alpha, n);
        };
        learn_scale(&mut self.resid_dev, resid.abs(), spike_scale);
        learn_scale(&mut self.shift_dev, shift.abs(), shift_scale);
        learn_scale(&mut self.noise_dev, noise.abs(), noise_scale);
        learn_scale(&mut self.quick_dev, quick_shift.abs(), quick_scale);
        if warm {
            learn_tail(&mut self.resid_tail, resid.abs(), f64::from(self.resid_dev));
            learn_tail(&mut self.shift_tail, shift.abs(), f64::from(self.shift_dev));
            learn_tail(&mut self.noise_tail, noise.abs(), f64::from(self.noise_dev));
            learn_tail(&mut self.quick_tail, quick_shift.abs(), f64::from(self.quick_dev));
        }
        ew(&mut self.level, y_in, cfg.alpha_level, n);
        self.fast = fast;
        self.noise_fast = noise_fast as f32;
        self.quick = quick;
        ew(&mut self.slow, y_in, cfg.alpha_slow, n);
        let week_sample = WeekSample { cell, off_daily, dev: week_dev, run: week_run, scale: week_scale, dt, age_ms: self.age_ms(timestamp_ms) };
        self.week.learn(cfg, warm, &week_sample, self.seasonal_dev, n);
        self.learn_season(cfg, slot, x, timestamp_ms, n);
        if warm {
            if hour != hour_of(self.last_ts) {
                self.hour_peak[hour] = self.hour_peak[hour].saturating_sub(HOUR_PEAK_DECAY_STEPS);
            }
            // Only isolated, clear spikes are remembered: noise and sustained shifts are not a habit.
            if z_raw_spike > 2.0 * cfg.z_floor && far_run <= 1 {
                self.hour_peak[hour] = self.hour_peak[hour].max(peak_code(z_raw_spike.min(1e6)));
            }
        }
        if f64::from(self.step_ms) == 0.0 {
            self.step_ms = dt as f32;
        } else {
            let step = f64::from(self.step_ms);
            self.step_ms = (step + 0.05 * (dt.min(3.0 * step) - step)) as f32;
        }
        self.repeat_rate += 0.01 * (if repeated { 1.0 } else { 0.0 } - self.repeat_rate);
        self.prev = x;
        self.last_ts = timestamp_ms;
        self.n = n;
        self.flat_run = flat_run;
        self.far_run = far_run;

        // Episodes: open on high evidence, stay open while it is high and for the cool-down.
        if self.in_episode() {
            self.episode_left = self.episode_left.saturating_sub(1);
            if self.episode_left == 0 && raw < cfg.alert_score {
                self.episode_left = NO_EPISODE;
            }
        }
        // Much stronger evidence inside an open episode is raised again: it got worse.
        let escalation = self.in_episode() && raw >= f64::from(self.episode_peak) + cfg.escalate_margin;
        let onset = scored && raw >= cfg.alert_score && (!self.in_episode() || escalation);
        self.alert_load *= 1.0 - 1.0 / ALERT_MEMORY_POINTS;
        if onset {
            self.alert_load += 1.0;
            self.episode_left = cfg.cooldown_points.min(u32::from(NO_EPISODE - 1)) as u16;
        }
        if self.in_episode() {
            self.episode_peak = if onset { raw as f32 } else { self.episode_peak.max(raw as f32) };
        }
        let confidence = if scored { calibration::confidence(score) } else { 0.0 };
        PointScore {
            accepted: true,
            score,
            expected,
            confidence,
            severity: severity_of(score, confidence, cfg),
            kind,
            onset,
            in_episode: self.in_episode(),
        }
    }

    fn start(&mut self, ts: i64, value: f64) {
        *self = SeriesModel::new();
        let magnitude = value.abs();
        if magnitude > 1e30 || (magnitude > 0.0 && magnitude < 1e-30) {
            self.exp2 = magnitude.log2().floor() as i16;
        }
        let x = value / self.unit();
        self.first_minute = ts.div_euclid(MINUTE_MS).clamp(i32::MIN.into(), i32::MAX.into()) as i32;
        self.last_ts = ts;
        self.prev = x;
        self.level = x;
        self.fast = x;
        self.quick = x;
        self.slow = x;
        self.n = 1;
    }

    /// What the series' values are divided by inside the state: `2^exp2`, 1 for almost every series.
    fn unit(&self) -> f64 {
        match self.exp2 {
            0 => 1.0,
            e => f64::from(e).exp2(),
        }
    }

    fn quiet(&self, expected: f64) -> PointScore {
        PointScore { accepted: true, expected, ..PointScore::refused() }
    }

    fn in_episode(&self) -> bool {
        self.episode_left != NO_EPISODE
    }

    /// Time since the first sample, to the minute.
    fn age_ms(&self, ts: i64) -> i64 {
        ts - i64::from(self.first_minute) * MINUTE_MS
    }

    /// Mean of the visited slots of the daily profile.
    fn season_mean(&self) -> f64 {
        match self.season_seen {
            0 => self.slow,
            seen => self.season_sum / f64::from(seen),
        }
    }

    /// The daily profile's value for a slot (the mean of the profile for a slot not seen yet).
    fn profile_at(&self, slot: usize) -> f64 {
        if self.season[slot] == UNSEEN {
            self.season_mean()
        } else {
            f64::from(self.season[slot])
        }
    }

    /// How far a slot's usual value sits from the day's mean (0 for a slot not seen yet).
    fn seasonal_offset(&self, slot: usize) -> f64 {
        if self.season[slot] == UNSEEN {
            0.0
        } else {
            f64::from(self.season[slot]) - self.season_mean()
        }
    }

    /// Updates the daily profile and how much of it to trust.
    fn learn_season(&mut self, cfg: &UnivariateConfig, slot: usize, x: f64, ts: i64, n: u32) {
        let seen = self.season[slot] != UNSEEN;
        let old = if seen { f64::from(self.season[slot]) } else { 0.0 };
        let profile = if seen { old } else { self.season_mean() };
        let mean = self.season_mean();
        ew(&mut self.raw_dev, (x - mean).abs(), cfg.alpha_scale, n);
        ew(&mut self.seasonal_dev, (x - profile).abs(), cfg.alpha_scale, n);
        // Kept finite, so that no value reads as `UNSEEN`.
        let new = (if seen { profile + cfg.alpha_season * (x - profile) } else { x }).clamp(f32::MIN.into(), f32::MAX.into()) as f32;
        self.season_seen += u8::from(!seen);
        self.season_sum += f64::from(new) - old;
        self.season[slot] = new;
        // Take the profile out only where it explains a good part of the spread, and only after two days.
        let old_enough = self.age_ms(ts) >= SEASON_MIN_AGE_MS;
        let target = if old_enough && self.seasonal_dev < 0.6 * self.raw_dev { 1.0 } else { 0.0 };
        self.gain += 0.01 * (target - self.gain);
    }
}

/// Tracks the 99th percentile of a non-negative quantity by multiplicative steps: up 5% on an
/// exceedance, down 0.05% otherwise, which balances at 1% exceedances. One wild value moves it by 5%
/// only. Starts from the mean absolute deviation's Gaussian equivalent.
fn learn_tail(tail: &mut f32, d: f64, mean_abs: f64) {
    let mut t = f64::from(*tail);
    if t <= 0.0 {
        t = mean_abs * MAD_TO_SIGMA * TAIL_TO_SIGMA;
        if t <= 0.0 {
            return;
        }
    }
    if d > t {
        t *= 1.0 + 0.05 * 0.99;
    } else {
        t *= 1.0 - 0.05 * 0.01;
    }
    *tail = t as f32;
}

/// The hour of the day a timestamp falls in (by the profile's slots).
fn hour_of(ts: i64) -> usize {
    (ts.rem_euclid(DAY_MS) / SLOT_MS) as usize / 2
}

/// Steps of the spike memory's log scale per doubling.
const PEAK_STEPS: i32 = 12;
/// 2^(j/12) for j in 0..12, and the boundaries between steps, 2^((j + 1/2)/12): with them a z is
/// coded and decoded by comparisons and exact powers of two, the same on every platform (no libm).
pub(super) const PEAK_STEP_VALUES: [f32; 12] =
    [1.0, 1.059_463_1, 1.122_462, 1.189_207_1, 1.259_921_1, 1.334_839_8, std::f32::consts::SQRT_2, 1.498_307_1, 1.587_401, 1.681_792_9, 1.781_797_4, 1.887_748_6];
pub(super) const PEAK_STEP_BOUNDS: [f64; 12] = [
    1.029_302_236_643_492,
    1.090_507_732_665_257_7,
    1.155_352_696_872_273,
    1.224_053_543_304_655_3,
    1.296_839_554_651_009_6,
    1.373_953_647_458_089,
    1.455_653_182_842_187_3,
    1.542_210_825_407_940_7,
    1.633_915_453_241_1,
    1.731_073_122_012_286,
    1.834_008_086_409_342_4,
    1.943_063_882_307_211_7,
];

/// A spike's z in one byte, on a log scale: `1 + round(12 * log2 z)`, so 1 is z = 1, each step 6% more
/// and 255 about 2.4 million (larger z saturate there); 0 is no spike, and any z below 2^(-1/24), which
/// no z floor reads. Decoded ([`peak_z`]) within 3% of the z coded; monotone, so the largest of several
/// z is the largest code.
pub(super) fn peak_code(z: f64) -> u8 {
    // Below a half (and NaN) codes to 0 anyway; this keeps subnormals out of the bit reading.
    if z.is_nan() || z < 0.5 {
        return 0;
    }
    // z = m * 2^e with m in [1, 2), read from the bits (z is normal here).
    let bits = z.to_bits();
    let e = ((bits >> 52) & 0x7ff) as i32 - 1023;
    let m = f64::from_bits((bits & ((1u64 << 52) - 1)) | (1023u64 << 52));
    let j = PEAK_STEP_BOUNDS.iter().filter(|&&b| m >= b).count() as i32;
    (1 + PEAK_STEPS * e + j).clamp(0, 255) as u8
}

/// The z a [`peak_code`] stands for (0 for 0).
pub(super) fn peak_z(code: u8) -> f32 {
    match i32::from(code) - 1 {
        -1 => 0.0,
        k => PEAK_STEP_VALUES[(k % PEAK_STEPS) as usize] * (1u32 << (k / PEAK_STEPS)) as f32,
    }
}

/// A finite `f32` in 16 bits (the upper half of its bits, rounded to nearest): three
/// significant digits, the full range. For values whose size matters and whose last digits do not.
pub(super) fn to_bf16(x: f32) -> u16 {
    let bits = x.to_bits();
    ((bits + 0x7fff + ((bits >> 16) & 1)) >> 16) as u16
}

pub(super) fn from_bf16(h: u16) -> f32 {
    f32::from_bits(u32::from(h) << 16)
}

/// Equivalent z to a score in [0, 1]: 0 up to `z_floor`, then rising towards 1.
pub fn score_from_z(z: f64, cfg: &UnivariateConfig) -> f64 {
    if z <= cfg.z_floor || z.is_nan() {
        0.0
    } else {
        (1.0 - (-(z - cfg.z_floor) / cfg.z_span).exp()).clamp(0.0, 1.0)
    }
}

