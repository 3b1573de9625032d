//! The scrape interval the samples show, for the onset slack: an effect may appear to begin up to
//! two scrape intervals before its cause, since each is seen only when its series is next scraped.
//! Read from the first series seen (a bounded few), as the median of their sample spacings, so a
//! cluster scraping every minute gets two minutes of slack where one scraping every 15 s gets 30 s.
//! It never goes below [`MIN_ONSET_SLACK_MS`]: alerts begin on a rule evaluation, not a scrape.

use cairn_types::{SampleBatch, SeriesId};
use std::collections::{HashMap, VecDeque};

/// The least slack, whatever the scrape: two intervals of a 15 s scrape, and about one rule
/// evaluation interval, which is what an alert's start is counted in.
pub const MIN_ONSET_SLACK_MS: i64 = 30_000;
/// Series whose spacing is followed.
const TRACKED: usize = 64;
/// Recent spacings the median is taken over: four rounds of the followed series (odd, so the
/// median is one of them), so one round with a lost scrape on every series does not move it.
const SPACINGS: usize = 4 * TRACKED - 1;

/// Follows the spacing of the first [`TRACKED`] series seen. About 3 KB, whatever the load.
#[derive(Debug, Default)]
pub struct ScrapeStep {
    last: HashMap<SeriesId, i64>,
    spacings: VecDeque<i64>,
    /// The median spacing, once there is one.
    step_ms: Option<i64>,
}

impl ScrapeStep {
    pub fn observe(&mut self, batch: &SampleBatch) {
        let mut pushed = 0;
        for s in batch.iter() {
            let Some(&(first, _)) = s.points.first() else { continue };
            let room = self.last.len() < TRACKED;
            let last = match self.last.entry(s.id) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) if room => e.insert(first),
                std::collections::hash_map::Entry::Vacant(_) => continue,
            };
            for &(t, _) in s.points {
                if t > *last {
                    if self.spacings.len() == SPACINGS {
                        self.spacings.pop_front();
                    }
                    self.spacings.push_back(t - *last);
                    pushed += 1;
                    *last = t;
                }
            }
        }
        if pushed > 0 {
            let mut sorted: Vec<i64> = self.spacings.iter().copied().collect();
            sorted.sort_unstable();
            self.step_ms = sorted.get(sorted.len() / 2).copied();
        }
    }

    /// How much earlier than its cause an effect may appear to begin: two scrape intervals, at
    /// least [`MIN_ONSET_SLACK_MS`].
    pub fn onset_slack_ms(&self) -> i64 {
        self.step_ms.map_or(MIN_ONSET_SLACK_MS, |s| (2 * s).max(MIN_ONSET_SLACK_MS))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_types::MetricSample;

    fn batch(series: usize, t: i64) -> SampleBatch {
        let samples: Vec<MetricSample> = (0..series)
            .map(|i| MetricSample { labels: [("__name__", "up"), ("instance", &*format!("n{i}"))].into_iter().collect(), timestamp_ms: t, value: 1.0 })
            .collect();
        samples.iter().collect()
    }

    #[test]
    fn the_slack_is_two_scrape_intervals_and_never_below_the_floor() {
        let mut s = ScrapeStep::default();
        assert_eq!(s.onset_slack_ms(), MIN_ONSET_SLACK_MS, "nothing seen yet");
        for k in 0..5 {
            s.observe(&batch(3, k * 60_000));
        }
        assert_eq!(s.step_ms, Some(60_000));
        assert_eq!(s.onset_slack_ms(), 120_000);
        let mut fast = ScrapeStep::default();
        for k in 0..5 {
            fast.observe(&batch(3, k * 5_000));
        }
        assert_eq!(fast.onset_slack_ms(), MIN_ONSET_SLACK_MS);
    }

    #[test]
    fn a_gap_or_a_few_odd_series_do_not_move_the_median_and_what_is_kept_is_bounded() {
        let mut s = ScrapeStep::default();
        for k in 0..40 {
            // 200 series: only the first 64 are followed.
            s.observe(&batch(200, k * 15_000));
        }
        // One scrape lost (a 30 s gap) on every followed series: the median holds.
        s.observe(&batch(200, 41 * 15_000));
        assert_eq!(s.step_ms, Some(15_000));
        assert_eq!(s.last.len(), TRACKED);
        assert_eq!(s.spacings.len(), SPACINGS);
    }
}
