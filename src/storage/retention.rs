//! When to snapshot and which snapshots to keep: the interval grammar and
//! the rotation rule, both pure so they can be tested with a simulated clock.

use std::time::Duration;

/// `snapshot.interval` / `OPDBUS_SNAPSHOT_INTERVAL`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Interval {
    Off,
    /// One snapshot at the first commit boundary after each committed batch.
    PerOp,
    Every(Duration),
}

impl Interval {
    pub const ALLOWED: &'static str = "off, per-op, 1min, 5min, 15min, 30min, 1h, 1d, 1w (also every-minute, \
                                       every-5-minutes, every-15-minutes, every-30-minutes, hourly, daily, weekly)";

    pub fn parse(s: &str) -> Option<Interval> {
        let min = |m: u64| Interval::Every(Duration::from_secs(60 * m));
        Some(match s.trim().to_ascii_lowercase().as_str() {
            "off" | "none" | "never" => Interval::Off,
            "per-op" | "per-operation" | "per-batch" => Interval::PerOp,
            "1min" | "every-minute" | "every-1-minute" | "minutely" => min(1),
            "5min" | "every-5-minutes" => min(5),
            "15min" | "every-15-minutes" => min(15),
            "30min" | "every-30-minutes" => min(30),
            "1h" | "every-hour" | "hourly" => min(60),
            "1d" | "every-day" | "daily" => min(60 * 24),
            "1w" | "every-week" | "weekly" => min(60 * 24 * 7),
            _ => return None,
        })
    }

    pub fn as_str(self) -> String {
        match self {
            Interval::Off => "off".into(),
            Interval::PerOp => "per-op".into(),
            Interval::Every(d) => match d.as_secs() / 60 {
                m if m % (60 * 24 * 7) == 0 => format!("{}w", m / (60 * 24 * 7)),
                m if m % (60 * 24) == 0 => format!("{}d", m / (60 * 24)),
                m if m % 60 == 0 => format!("{}h", m / 60),
                m => format!("{m}min"),
            },
        }
    }
}

/// How many snapshots to keep: the most recent `recent`, plus the newest
/// one of each of the last `hourly` hours, `daily` days and `weekly` weeks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retention {
    pub recent: usize,
    pub hourly: usize,
    pub daily: usize,
    pub weekly: usize,
}

impl Default for Retention {
    fn default() -> Self {
        Retention { recent: 24, hourly: 24, daily: 7, weekly: 4 }
    }
}

/// Which of `taken` (capture times in ns, any order) to keep. `protected`
/// ones (a replica's next parent) are always kept, and so is the newest.
pub fn keep(taken: &[i64], r: &Retention, protected: &[i64]) -> Vec<bool> {
    let mut order: Vec<usize> = (0..taken.len()).collect();
    order.sort_by(|&a, &b| taken[b].cmp(&taken[a])); // newest first
    let mut keep = vec![false; taken.len()];
    for &i in order.iter().take(r.recent.max(1)) {
        keep[i] = true;
    }
    const HOUR: i64 = 3_600_000_000_000;
    for (period, count) in [(HOUR, r.hourly), (24 * HOUR, r.daily), (7 * 24 * HOUR, r.weekly)] {
        let mut seen: Vec<i64> = Vec::new();
        for &i in &order {
            let bucket = taken[i].div_euclid(period);
            if seen.len() >= count {
                break;
            }
            if !seen.contains(&bucket) {
                seen.push(bucket);
                keep[i] = true; // the newest snapshot of its bucket
            }
        }
    }
    for (i, t) in taken.iter().enumerate() {
        if protected.contains(t) {
            keep[i] = true;
        }
    }
    keep
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: i64 = 60_000_000_000;
    const HOUR: i64 = 60 * MIN;

    #[test]
    fn interval_grammar() {
        assert_eq!(Interval::parse("per-op"), Some(Interval::PerOp));
        assert_eq!(Interval::parse("15min"), Interval::parse("every-15-minutes"));
        assert_eq!(Interval::parse("hourly"), Some(Interval::Every(Duration::from_secs(3600))));
        assert_eq!(Interval::parse("1d"), Interval::parse("daily"));
        assert_eq!(Interval::parse("1w").unwrap().as_str(), "1w");
        assert_eq!(Interval::parse("30min").unwrap().as_str(), "30min");
        assert_eq!(Interval::parse("OFF"), Some(Interval::Off));
        assert_eq!(Interval::parse("2min"), None);
        assert_eq!(Interval::parse(""), None);
    }

    #[test]
    fn keeps_recent_and_one_per_tier_bucket() {
        // One snapshot every 15 minutes for three days.
        let now = 10_000 * HOUR;
        let taken: Vec<i64> = (0..(3 * 24 * 4)).map(|i| now - i * 15 * MIN).collect();
        let r = Retention { recent: 4, hourly: 6, daily: 2, weekly: 1 };
        let k = keep(&taken, &r, &[]);
        let kept: Vec<i64> = taken.iter().zip(&k).filter(|(_, k)| **k).map(|(t, _)| *t).collect();
        // 4 recent (the newest is the first of each tier bucket too), then
        // the newest of each of the 6 most recent hours (the first overlaps),
        // of 2 days, of 1 week.
        for t in &taken[..4] {
            assert!(kept.contains(t));
        }
        let hours: std::collections::BTreeSet<i64> = kept.iter().map(|t| t.div_euclid(HOUR)).collect();
        assert!(hours.len() >= 6, "{hours:?}");
        assert!(kept.len() <= 4 + 6 + 2 + 1, "{}", kept.len());
        // The newest of yesterday is kept for the daily tier.
        let yesterday = (now.div_euclid(24 * HOUR) - 1) * 24 * HOUR;
        let newest_yesterday = *taken.iter().filter(|&&t| t < yesterday + 24 * HOUR && t >= yesterday).max().unwrap();
        assert!(kept.contains(&newest_yesterday));
    }

    #[test]
    fn protected_and_newest_are_never_deleted() {
        let taken = vec![3 * HOUR, HOUR, 2 * HOUR];
        let r = Retention { recent: 0, hourly: 0, daily: 0, weekly: 0 };
        assert_eq!(keep(&taken, &r, &[HOUR]), vec![true, true, false]);
    }
}
