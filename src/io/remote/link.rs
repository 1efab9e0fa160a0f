//! What reads learn about the link to a store: its round-trip time (from sending a GET to its first byte) and the
//! bandwidth of a response stream (a lower bound on what a read with several in flight gets), averaged over the responses seen so far in this process, for the cost model
//! of later reads ([`crate::io::ranges::CostModel`]). Options that set either value fix it instead.

use std::sync::Mutex;
use std::time::Duration;

use super::{DEFAULT_BANDWIDTH, DEFAULT_RTT};

/// A response body shorter than this says little about bandwidth (its time is mostly scheduling): not a sample.
const MIN_BANDWIDTH_SAMPLE: u64 = 256 * 1024;
/// Weight of a new sample once the average has settled: later responses move it, no single one dominates.
const SETTLED_WEIGHT: f64 = 0.2;

/// The running estimates for one store. Starts at the defaults, which count as one sample.
#[derive(Debug)]
pub struct Link {
    state: Mutex<Estimate>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Estimate {
    /// Seconds to the first byte of a response.
    pub rtt: f64,
    /// Bytes per second a read receives.
    pub bandwidth: f64,
    rtt_samples: u32,
    bandwidth_samples: u32,
}

impl Default for Link {
    fn default() -> Link {
        Link {
            state: Mutex::new(Estimate {
                rtt: DEFAULT_RTT,
                bandwidth: DEFAULT_BANDWIDTH,
                rtt_samples: 0,
                bandwidth_samples: 0,
            }),
        }
    }
}

impl Link {
    /// The current estimates.
    pub fn estimate(&self) -> Estimate {
        *self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One response: `latency` from sending it to its first byte, then `bytes` of body in `transfer`.
    pub fn observe(&self, latency: Duration, bytes: u64, transfer: Duration) {
        let mut e = self.state.lock().unwrap_or_else(|p| p.into_inner());
        // A retried request's latency includes its backoff: bounded, so that one bad response is soon forgotten.
        let rtt = latency.as_secs_f64().clamp(1e-5, 10.0);
        e.rtt = blend(e.rtt, rtt, &mut e.rtt_samples);
        let secs = transfer.as_secs_f64();
        if bytes >= MIN_BANDWIDTH_SAMPLE && secs > 0.0 {
            let rate = (bytes as f64 / secs).clamp(1e5, 1e11);
            e.bandwidth = blend(e.bandwidth, rate, &mut e.bandwidth_samples);
        }
    }
}

/// A running mean (the prior counts as one sample) that becomes an exponential moving average.
fn blend(average: f64, sample: f64, samples: &mut u32) -> f64 {
    *samples = samples.saturating_add(1);
    let weight = (1.0 / (f64::from(*samples) + 1.0)).max(SETTLED_WEIGHT);
    average + (sample - average) * weight
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn estimates_move_from_the_defaults_towards_what_is_seen() {
        let link = Link::default();
        assert_eq!(link.estimate().rtt, DEFAULT_RTT);
        // The first response weighs as much as the prior.
        link.observe(Duration::from_millis(5), 10, Duration::from_millis(1));
        let e = link.estimate();
        assert!((e.rtt - (DEFAULT_RTT + 0.005) / 2.0).abs() < 1e-9, "{e:?}");
        // Too short a body for a bandwidth sample.
        assert_eq!(e.bandwidth, DEFAULT_BANDWIDTH);
        for _ in 0..40 {
            link.observe(Duration::from_millis(5), 4 << 20, Duration::from_millis(4));
        }
        let e = link.estimate();
        assert!((e.rtt - 0.005).abs() < 1e-4, "{e:?}");
        let rate = (4 << 20) as f64 / 0.004;
        assert!((e.bandwidth - rate).abs() < rate * 1e-3, "{e:?}");
        // A retried request's long wait is bounded and fades.
        link.observe(Duration::from_secs(3600), 0, Duration::ZERO);
        assert!(link.estimate().rtt <= 2.01, "{:?}", link.estimate());
        for _ in 0..40 {
            link.observe(Duration::from_millis(5), 0, Duration::ZERO);
        }
        assert!(link.estimate().rtt < 0.006);
    }
}
