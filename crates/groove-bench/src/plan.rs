//! How long and how much each scenario runs, for `--quick` and the full mode, and which scenarios to run.

use std::time::Duration;

use groove_destination::proto::ResultDetail;

use crate::fail::{BenchError, BenchResult};
use crate::records::StreamTarget;

/// Concurrency levels of the per-record scenario (destination `delivery.concurrency`).
pub const PER_RECORD_LEVELS: [u32; 3] = [1, 8, 32];

/// A scenario that can be picked with `--only`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scenario {
    /// Per-record calls at one concurrency level, against the raw baseline.
    PerRecord(u32),
    Batched,
    RateLimited,
    Memory,
    Latency,
    LatencyBound,
    /// The batched path into a bare counting sink: the service's own cost.
    BatchedSink,
}

impl Scenario {
    pub fn all() -> Vec<Scenario> {
        let mut all: Vec<Scenario> = PER_RECORD_LEVELS
            .iter()
            .map(|&level| Scenario::PerRecord(level))
            .collect();
        all.extend([
            Scenario::Batched,
            Scenario::RateLimited,
            Scenario::Memory,
            Scenario::Latency,
            Scenario::LatencyBound,
            Scenario::BatchedSink,
        ]);
        all
    }

    /// Parses a comma-separated `--only` list: `per-record` (all levels), `per-record-c8`, `batched`,
    /// `rate-limited`, `memory`, `latency`, `latency-bound`, `batched-sink`.
    pub fn parse_list(text: &str) -> BenchResult<Vec<Scenario>> {
        let mut picked = Vec::new();
        for name in text
            .split(',')
            .map(str::trim)
            .filter(|name| !name.is_empty())
        {
            match name {
                "per-record" => picked.extend(PER_RECORD_LEVELS.map(Scenario::PerRecord)),
                "batched" => picked.push(Scenario::Batched),
                "rate-limited" => picked.push(Scenario::RateLimited),
                "memory" => picked.push(Scenario::Memory),
                "latency" => picked.push(Scenario::Latency),
                "latency-bound" => picked.push(Scenario::LatencyBound),
                "batched-sink" => picked.push(Scenario::BatchedSink),
                other => {
                    let level = other
                        .strip_prefix("per-record-c")
                        .and_then(|level| level.parse::<u32>().ok())
                        .filter(|level| PER_RECORD_LEVELS.contains(level))
                        .ok_or_else(|| {
                            BenchError::new(format!(
                                "unknown scenario {other:?}; use per-record, per-record-c1, per-record-c8, \
                                 per-record-c32, batched, rate-limited, memory, latency, latency-bound, \
                                 batched-sink"
                            ))
                        })?;
                    picked.push(Scenario::PerRecord(level));
                }
            }
        }
        if picked.is_empty() {
            return Err(BenchError::new("--only names no scenario"));
        }
        Ok(picked)
    }
}

/// Sizes and durations of one bench mode.
#[derive(Clone, Debug)]
pub struct Plan {
    pub quick: bool,
    /// What every stream asks back per result (`StreamStart.result_detail`).
    pub result_detail: ResultDetail,
    /// Alternating raw / service rounds per concurrency level.
    pub per_record_rounds: usize,
    pub per_record_run: Duration,
    /// Unmeasured run of each path before the rounds: connections, allocator, sandbox store at its cap.
    pub warm_up: Duration,
    /// Upper bound on records of any time-bounded run, so a run stops by count even if time misbehaves.
    pub max_records_per_run: u64,
    pub batched_runs: usize,
    pub batched_run: Duration,
    /// The sandbox's limit: `rate_limit_calls` per `rate_limit_window`.
    pub rate_limit_calls: u32,
    pub rate_limit_window: Duration,
    pub rate_warm_up: Duration,
    pub rate_measure: Duration,
    pub memory_records: u64,
    /// Upper bound on the memory run's time.
    pub memory_time_limit: Duration,
    /// Alternating raw / service latency rounds, each of `latency_calls` calls (or `latency_round_limit`).
    pub latency_rounds: usize,
    pub latency_calls: u64,
    pub latency_round_limit: Duration,
    /// Records of each latency-bound run (create, ordered over 64 and over 10,000 tickets).
    pub latency_bound_records: u64,
    /// Records of the latency-bound hot-key run, half of them to one ticket: its chain alone takes
    /// half of them × the latency.
    pub latency_bound_hot_records: u64,
    /// Records of the batched-sink run, and the most time it may take.
    pub sink_records: u64,
    pub sink_time_limit: Duration,
    /// After a stream's producer stops, how long its last results and summary may take.
    pub drain_limit: Duration,
    /// The same for batched streams, whose summary waits until every outcome is persisted: that can lag the
    /// results by seconds, and the lag belongs in the figure.
    pub batched_drain_limit: Duration,
}

impl Plan {
    pub fn new(quick: bool, result_detail: ResultDetail) -> Plan {
        let seconds = Duration::from_secs_f64;
        if quick {
            Plan {
                quick,
                result_detail,
                per_record_rounds: 2,
                per_record_run: seconds(2.5),
                warm_up: seconds(1.0),
                max_records_per_run: 5_000_000,
                batched_runs: 2,
                batched_run: seconds(3.0),
                rate_limit_calls: 50,
                rate_limit_window: seconds(1.0),
                rate_warm_up: seconds(5.0),
                rate_measure: seconds(10.0),
                memory_records: 200_000,
                memory_time_limit: seconds(60.0),
                latency_rounds: 2,
                latency_calls: 1_000,
                latency_round_limit: seconds(5.0),
                latency_bound_records: 1_920,
                latency_bound_hot_records: 160,
                sink_records: 200_000,
                sink_time_limit: seconds(60.0),
                drain_limit: seconds(5.0),
                batched_drain_limit: seconds(30.0),
            }
        } else {
            Plan {
                quick,
                result_detail,
                per_record_rounds: 3,
                per_record_run: seconds(6.0),
                warm_up: seconds(2.0),
                max_records_per_run: 20_000_000,
                batched_runs: 3,
                batched_run: seconds(8.0),
                rate_limit_calls: 50,
                rate_limit_window: seconds(1.0),
                rate_warm_up: seconds(10.0),
                rate_measure: seconds(30.0),
                memory_records: 1_000_000,
                memory_time_limit: seconds(180.0),
                latency_rounds: 3,
                latency_calls: 3_000,
                latency_round_limit: seconds(10.0),
                latency_bound_records: 6_400,
                latency_bound_hot_records: 400,
                sink_records: 1_000_000,
                sink_time_limit: seconds(180.0),
                drain_limit: seconds(10.0),
                batched_drain_limit: seconds(60.0),
            }
        }
    }

    /// Opens streams to `destination` with this plan's result detail.
    pub fn target(&self, destination: &str) -> StreamTarget {
        StreamTarget {
            destination: destination.to_string(),
            detail: self.result_detail,
        }
    }

    /// Calls per second the sandbox allows.
    pub fn allowed_rate(&self) -> f64 {
        f64::from(self.rate_limit_calls) / self.rate_limit_window.as_secs_f64()
    }

    /// The sandbox's `--rate-limit` value.
    pub fn rate_limit_flag(&self) -> String {
        format!(
            "{}/{}ms",
            self.rate_limit_calls,
            self.rate_limit_window.as_millis()
        )
    }
}
