//! The weekly profile: how each weekday's four-hour blocks usually sit against the daily profile, and
//! how far the last hours sit from that.
//!
//! A holiday on a weekday looks like an ordinary Sunday to the daily profile, and point by point it
//! stays within the noise. Summed over hours it does not: the running deviation from what this weekday
//! and block usually show, in units of how far that running deviation usually strays, is the evidence.
//! The profile keeps, per weekday and block, the mean offset of the values from the daily profile
//! (learned once per visit, that is per week); it counts only once the series is three weeks old and
//! where it explains a good part of what the daily profile leaves.

use super::model::{ew, from_bf16, to_bf16, DAY_MS, SLOTS};
use super::UnivariateConfig;

/// Blocks per day (four hours each).
const BLOCKS: usize = 6;
const CELLS: usize = 7 * BLOCKS;
const BLOCK_MS: f64 = (DAY_MS / BLOCKS as i64) as f64;
const WEEK_MS: i64 = 7 * DAY_MS;
/// A series must have been seen this long (three visits of every block) before the profile is used.
const MIN_AGE_MS: i64 = 3 * WEEK_MS;
/// Weight of a new visit in a block's offset (after the first visits, which make a plain mean).
const VISIT_ALPHA: f64 = 0.3;
/// The profile is used where the values' distance from it is at most this part of their distance
/// from the daily profile alone.
const EXPLAINS: f32 = 0.8;
/// A block not visited yet.
const UNSEEN: u16 = u16::MAX;

/// One sample as the weekly profile learns it.
#[derive(Clone, Copy)]
pub(super) struct WeekSample {
    /// Weekday-and-block cell of the sample.
    pub(super) cell: usize,
    /// Its offset from the daily profile.
    pub(super) off_daily: f64,
    /// Its distance from the weekly expectation, the running average of that, and the running
    /// average's scale.
    pub(super) dev: f64,
    pub(super) run: f64,
    pub(super) scale: f64,
    /// Time since the previous sample and since the series' first.
    pub(super) dt: f64,
    pub(super) age_ms: i64,
}

/// The weekly part of a series' state (108 bytes).
#[derive(Clone, Debug, PartialEq)]
pub(super) struct WeekProfile {
    /// Mean offset from the daily profile per weekday and block, in bf16; `UNSEEN` before a visit.
    cells: [u16; CELLS],
    /// Sum and count of the offsets seen in the current visit of block `acc_cell`.
    acc_sum: f32,
    acc_n: u16,
    acc_cell: u8,
    /// Running (four-hour) average of the distance from the weekly expectation.
    run: f32,
    /// Its mean absolute size over about a week: the scale of the evidence.
    pub(super) run_dev: f32,
    /// Mean absolute distance of a value from the weekly expectation.
    point_dev: f32,
    /// How much the profile counts, 0 to 1 (it is used above one half).
    gain: f32,
}

impl WeekProfile {
    pub(super) const fn new() -> WeekProfile {
        WeekProfile {
            cells: [UNSEEN; CELLS],
            acc_sum: 0.0,
            acc_n: 0,
            acc_cell: 0,
            run: 0.0,
            run_dev: 0.0,
            point_dev: 0.0,
            gain: 0.0,
        }
    }

    /// The weekday-and-block cell of a timestamp (UTC).
    pub(super) fn cell(ts: i64, slot: usize) -> usize {
        let weekday = ts.div_euclid(DAY_MS).rem_euclid(7) as usize;
        weekday * BLOCKS + slot * BLOCKS / SLOTS
    }

    /// How far this cell usually sits from the daily profile (0 before its first visit).
    pub(super) fn offset(&self, cell: usize) -> f64 {
        match self.cells[cell] {
            UNSEEN => 0.0,
            v => f64::from(from_bf16(v)),
        }
    }

    /// The running deviation once a sample `dt` after the previous one deviates by `dev`.
    pub(super) fn next_run(&self, dev: f64, dt: f64) -> f64 {
        let a = (dt / BLOCK_MS).min(1.0);
        let run = f64::from(self.run);
        run + a * (dev - run)
    }

    /// The profile explains the series well enough to be used.
    pub(super) fn active(&self) -> bool {
        self.gain > 0.5
    }

    /// Learns one sample; `seasonal_dev` is the series' mean distance from the daily profile.
    pub(super) fn learn(&mut self, cfg: &UnivariateConfig, warm: bool, s: &WeekSample, seasonal_dev: f32, n: u32) {
        let WeekSample { cell, off_daily, dev, run, scale, dt, age_ms } = *s;
        // A value beyond the range of the profiles (f32) teaches the weekly profile nothing.
        if !(off_daily as f32).is_finite() || !(run as f32).is_finite() {
            return;
        }
        self.run = run as f32;
        // The scale follows about a week (a plain mean before), not a few days: the running deviation
        // is smooth, and a few quiet or busy days must not set how much a day may deviate. Anomalous
        // deviations enter clipped and ten times more slowly, as for the other scales.
        let mut a = (dt / (age_ms.max(1) as f64).min(WEEK_MS as f64)).min(1.0);
        let mut d = run.abs();
        if warm && d > cfg.z_floor * scale {
            a /= 10.0;
            d = d.min(cfg.clip_z * scale);
        }
        let old = f64::from(self.run_dev);
        self.run_dev = (old + a * (d - old)) as f32;
        ew(&mut self.point_dev, dev.abs(), cfg.alpha_scale, n);
        let target = if age_ms >= MIN_AGE_MS && self.point_dev < EXPLAINS * seasonal_dev { 1.0 } else { 0.0 };
        self.gain += 0.01 * (target - self.gain);
        // A visit ends when the block changes or after a gap longer than a block.
        if self.acc_n > 0 && (cell != usize::from(self.acc_cell) || dt > BLOCK_MS) {
            let mean = f64::from(self.acc_sum) / f64::from(self.acc_n);
            let c = usize::from(self.acc_cell);
            self.cells[c] = if self.cells[c] == UNSEEN {
                to_bf16(mean as f32)
            } else {
                let visits = age_ms / WEEK_MS + 1;
                let a = VISIT_ALPHA.max(1.0 / visits as f64);
                let old = f64::from(from_bf16(self.cells[c]));
                to_bf16((old + a * (mean - old)) as f32)
            };
            self.acc_sum = 0.0;
            self.acc_n = 0;
        }
        self.acc_cell = cell as u8;
        if self.acc_n < u16::MAX {
            self.acc_sum += off_daily as f32;
            self.acc_n += 1;
        }
    }
}

