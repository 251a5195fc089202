//! A circuit breaker per upstream: after `breaker_failures` consecutive failures (UNAVAILABLE, or
//! no answer before the deadline) calls fail fast with 503 for `breaker_open_for`; then one trial
//! call is let through (half-open) — its success closes the circuit, its failure opens it again.
//! Answers that prove the upstream alive (any other status, errors included) count as success.

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

/// The metric value of each state (`gateway_circuit_breaker_state`).
const CLOSED: f64 = 0.0;
const HALF_OPEN: f64 = 1.0;
const OPEN: f64 = 2.0;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen { trial_in_flight: bool },
}

/// One upstream's breaker.
#[derive(Debug)]
pub(crate) struct Breaker {
    upstream: &'static str,
    threshold: u32,
    open_for: Duration,
    state: Mutex<State>,
}

/// Whether a call may go ahead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admission {
    /// Go ahead; report the outcome.
    Allowed,
    /// Fail fast; the circuit stays open this much longer.
    Refused(Duration),
}

impl Breaker {
    pub(crate) fn new(upstream: &'static str, threshold: u32, open_for: Duration) -> Self {
        metrics::gauge!("gateway_circuit_breaker_state", "upstream" => upstream).set(CLOSED);
        Self {
            upstream,
            threshold: threshold.max(1),
            open_for,
            state: Mutex::new(State::Closed { failures: 0 }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Asks to make one call.
    pub(crate) fn admit(&self) -> Admission {
        let mut state = self.lock();
        match *state {
            State::Closed { .. } => Admission::Allowed,
            State::Open { until } => {
                let now = Instant::now();
                if now < until {
                    Admission::Refused(until - now)
                } else {
                    *state = State::HalfOpen { trial_in_flight: true };
                    self.transition("half_open", HALF_OPEN);
                    Admission::Allowed
                }
            }
            State::HalfOpen { trial_in_flight: true } => Admission::Refused(Duration::from_secs(1)),
            State::HalfOpen { trial_in_flight: false } => {
                *state = State::HalfOpen { trial_in_flight: true };
                Admission::Allowed
            }
        }
    }

    /// The upstream answered (whatever the status, short of UNAVAILABLE).
    pub(crate) fn success(&self) {
        let mut state = self.lock();
        match *state {
            State::Closed { failures: 0 } => {}
            State::Closed { .. } => *state = State::Closed { failures: 0 },
            State::HalfOpen { .. } | State::Open { .. } => {
                *state = State::Closed { failures: 0 };
                self.transition("closed", CLOSED);
                tracing::info!(upstream = self.upstream, "circuit closed: the upstream answers again");
            }
        }
    }

    /// The upstream could not be reached or did not answer in time.
    pub(crate) fn failure(&self) {
        let mut state = self.lock();
        let open = match *state {
            State::Closed { failures } => {
                let failures = failures + 1;
                *state = State::Closed { failures };
                failures >= self.threshold
            }
            State::HalfOpen { .. } => true,
            State::Open { .. } => false,
        };
        if open {
            *state = State::Open { until: Instant::now() + self.open_for };
            self.transition("open", OPEN);
            tracing::warn!(upstream = self.upstream, open_for = ?self.open_for, "circuit open: failing fast");
        }
    }

    /// A call that was admitted but never made (the client went away): free the trial slot.
    pub(crate) fn abandoned(&self) {
        let mut state = self.lock();
        if *state == (State::HalfOpen { trial_in_flight: true }) {
            *state = State::HalfOpen { trial_in_flight: false };
        }
    }

    fn transition(&self, to: &'static str, value: f64) {
        metrics::gauge!("gateway_circuit_breaker_state", "upstream" => self.upstream).set(value);
        metrics::counter!("gateway_circuit_breaker_transitions_total", "upstream" => self.upstream, "to" => to)
            .increment(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_consecutive_failures_and_closes_after_a_good_trial() {
        let breaker = Breaker::new("t", 3, Duration::from_millis(30));
        breaker.failure();
        breaker.failure();
        breaker.success(); // resets the count
        breaker.failure();
        breaker.failure();
        assert_eq!(breaker.admit(), Admission::Allowed);
        breaker.failure();
        assert!(matches!(breaker.admit(), Admission::Refused(_)));
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(breaker.admit(), Admission::Allowed, "one trial after the open period");
        assert!(matches!(breaker.admit(), Admission::Refused(_)), "only one trial at a time");
        breaker.success();
        assert_eq!(breaker.admit(), Admission::Allowed);
    }

    #[test]
    fn a_failed_trial_opens_again() {
        let breaker = Breaker::new("t", 1, Duration::from_millis(20));
        breaker.failure();
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(breaker.admit(), Admission::Allowed);
        breaker.failure();
        assert!(matches!(breaker.admit(), Admission::Refused(_)));
    }
}
