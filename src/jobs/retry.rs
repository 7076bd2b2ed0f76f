//! The backoff schedule for transient failures, computed by the `backoff` crate.

use std::time::Duration;

use backoff::ExponentialBackoff;
use backoff::backoff::Backoff;

use crate::config::RetrySettings;

/// A fresh schedule: exponential delays with jitter, ending (None) once
/// `max_elapsed_ms` has passed since it was made.
pub fn schedule(settings: &RetrySettings) -> ExponentialBackoff {
    backoff::ExponentialBackoffBuilder::new()
        .with_initial_interval(Duration::from_millis(settings.initial_interval_ms))
        .with_max_interval(Duration::from_millis(settings.max_interval_ms))
        .with_multiplier(settings.multiplier)
        .with_randomization_factor(settings.randomization_factor)
        .with_max_elapsed_time(Some(Duration::from_millis(settings.max_elapsed_ms)))
        .build()
}

/// The delay before the next try, or None when the budget is spent.
pub fn next_delay(schedule: &mut ExponentialBackoff) -> Option<Duration> {
    schedule.next_backoff()
}

/// The delay before the next try of something that must not give up (a
/// record of what already happened): the schedule's, then its longest
/// once the schedule is spent.
pub fn persistent_delay(schedule: &mut ExponentialBackoff, settings: &RetrySettings) -> Duration {
    next_delay(schedule).unwrap_or(Duration::from_millis(settings.max_interval_ms.max(1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(randomization_factor: f64) -> RetrySettings {
        RetrySettings {
            initial_interval_ms: 100,
            max_interval_ms: 1000,
            multiplier: 2.0,
            randomization_factor,
            max_elapsed_ms: 60_000,
        }
    }

    #[test]
    fn delays_double_until_the_cap_without_jitter() {
        let mut s = schedule(&settings(0.0));
        let delays: Vec<u128> = (0..6)
            .filter_map(|_| next_delay(&mut s))
            .map(|d| d.as_millis())
            .collect();
        assert_eq!(delays, vec![100, 200, 400, 800, 1000, 1000]);
    }

    #[test]
    fn jitter_stays_within_the_randomization_band() {
        let mut s = schedule(&settings(0.5));
        for expected in [100.0, 200.0, 400.0, 800.0] {
            let d = next_delay(&mut s).expect("within budget").as_secs_f64() * 1000.0;
            assert!(
                d >= expected * 0.5 - 1.0 && d <= expected * 1.5 + 1.0,
                "{d} outside band of {expected}"
            );
        }
    }

    #[test]
    fn schedule_ends_when_the_time_budget_is_spent() {
        let mut s = schedule(&RetrySettings {
            max_elapsed_ms: 0,
            ..settings(0.0)
        });
        std::thread::sleep(Duration::from_millis(2));
        assert_eq!(next_delay(&mut s), None);
    }
}
