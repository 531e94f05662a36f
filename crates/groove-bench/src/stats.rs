//! Latency percentiles. Samples are a few thousand durations, so sorting a vector is exact and cheap; a
//! histogram crate would add a dependency for nothing.

use std::time::Duration;

/// Collected durations.
#[derive(Clone, Debug, Default)]
pub struct Samples {
    values: Vec<Duration>,
}

impl Samples {
    pub fn push(&mut self, value: Duration) {
        self.values.push(value);
    }

    pub fn extend(&mut self, other: Samples) {
        self.values.extend(other.values);
    }

    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// The `q`-quantile (0.5 = median, 0.99 = p99) in milliseconds, nearest-rank; `None` without samples.
    pub fn quantile_ms(&self, q: f64) -> Option<f64> {
        if self.values.is_empty() {
            return None;
        }
        let mut sorted = self.values.clone();
        sorted.sort_unstable();
        let rank = (q * sorted.len() as f64).ceil() as usize;
        let index = rank.clamp(1, sorted.len()) - 1;
        Some(sorted[index].as_secs_f64() * 1000.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_quantiles() {
        let mut samples = Samples::default();
        for ms in 1..=100 {
            samples.push(Duration::from_millis(ms));
        }
        assert_eq!(samples.quantile_ms(0.5), Some(50.0));
        assert_eq!(samples.quantile_ms(0.99), Some(99.0));
        assert_eq!(samples.quantile_ms(1.0), Some(100.0));
        assert_eq!(Samples::default().quantile_ms(0.5), None);
    }
}
