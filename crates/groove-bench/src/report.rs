//! What a bench run found: a table of every measured run (absolute figures and each process's CPU) and the
//! headline numbers as one JSON object with a fixed set of keys.

use std::fmt::Write as _;

use serde_json::{json, Value};

use crate::cpu::CpuUse;

/// One line of the table.
#[derive(Clone, Debug)]
pub struct Row {
    pub scenario: String,
    pub variant: String,
    /// The figure with its unit, e.g. `12,345 rec/s`.
    pub figure: String,
    /// Wall time measured, seconds.
    pub wall_s: f64,
    pub cpu: Option<CpuUse>,
    pub note: String,
}

/// The headline numbers; `None` for a scenario that was not run (`--only`), written as JSON `null`.
#[derive(Clone, Debug, Default)]
pub struct Headline {
    pub per_record_ratio_c1: Option<f64>,
    pub per_record_ratio_c8: Option<f64>,
    pub per_record_ratio_c32: Option<f64>,
    /// The service's own CPU (user + system) per record delivered, µs: steadier than records/s on a busy
    /// machine, since it does not count time spent waiting for a core.
    pub per_record_c1_service_cpu_us_per_record: Option<f64>,
    pub per_record_c8_service_cpu_us_per_record: Option<f64>,
    pub per_record_c32_service_cpu_us_per_record: Option<f64>,
    pub batched_records_per_s: Option<f64>,
    pub rate_limited_utilization: Option<f64>,
    pub rate_limited_429_share: Option<f64>,
    pub peak_rss_mib: Option<f64>,
    pub p50_added_ms: Option<f64>,
    pub p99_added_ms: Option<f64>,
    pub latency_bound_ratio_create: Option<f64>,
    pub latency_bound_ratio_ordered_64: Option<f64>,
    pub latency_bound_ratio_ordered_256: Option<f64>,
    pub latency_bound_ratio_ordered_10k: Option<f64>,
    pub latency_bound_ratio_hot_key: Option<f64>,
    pub batched_sink_records_per_s: Option<f64>,
    pub batched_sink_service_cpu_us_per_record: Option<f64>,
    pub batched_sink_peak_rss_mib: Option<f64>,
}

impl Headline {
    pub fn set_per_record_ratio(&mut self, concurrency: u32, ratio: f64) {
        let slot = match concurrency {
            1 => &mut self.per_record_ratio_c1,
            8 => &mut self.per_record_ratio_c8,
            32 => &mut self.per_record_ratio_c32,
            _ => return,
        };
        *slot = Some(ratio);
    }

    pub fn set_per_record_service_cpu(&mut self, concurrency: u32, us_per_record: f64) {
        let slot = match concurrency {
            1 => &mut self.per_record_c1_service_cpu_us_per_record,
            8 => &mut self.per_record_c8_service_cpu_us_per_record,
            32 => &mut self.per_record_c32_service_cpu_us_per_record,
            _ => return,
        };
        *slot = Some(us_per_record);
    }
}

#[derive(Debug, Default)]
pub struct Report {
    pub rows: Vec<Row>,
    pub headline: Headline,
    /// Definitions and caveats printed under the table.
    pub notes: Vec<String>,
}

impl Report {
    pub fn row(
        &mut self,
        scenario: impl Into<String>,
        variant: impl Into<String>,
        figure: impl Into<String>,
        wall_s: f64,
        cpu: Option<CpuUse>,
        note: impl Into<String>,
    ) {
        let row = Row {
            scenario: scenario.into(),
            variant: variant.into(),
            figure: figure.into(),
            wall_s,
            cpu,
            note: note.into(),
        };
        // Printed as it comes too, so a long run shows progress and a later failure loses nothing.
        eprintln!("  {}", render_row(&row));
        self.rows.push(row);
    }

    pub fn note(&mut self, note: impl Into<String>) {
        self.notes.push(note.into());
    }

    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "{}", header());
        let _ = writeln!(out, "{}", "-".repeat(header().len()));
        for row in &self.rows {
            let _ = writeln!(out, "{}", render_row(row));
        }
        let _ = writeln!(
            out,
            "\nCPU columns: cores used during the run (CPU seconds / wall seconds) by the bench process itself \
             (client side: the raw reqwest loop or the gRPC producer), groove-sandbox and groove-destination; \
             `other` is the rest of the machine's busy time (other processes, interrupt work not charged to a \
             process): high values mean the run was disturbed."
        );
        for note in &self.notes {
            let _ = writeln!(out, "- {note}");
        }
        out
    }

    pub fn json(&self, machine: &str) -> Value {
        let h = &self.headline;
        json!({
            "per_record_ratio_c1": round(h.per_record_ratio_c1, 3),
            "per_record_ratio_c8": round(h.per_record_ratio_c8, 3),
            "per_record_ratio_c32": round(h.per_record_ratio_c32, 3),
            "per_record_c1_service_cpu_us_per_record": round(h.per_record_c1_service_cpu_us_per_record, 1),
            "per_record_c8_service_cpu_us_per_record": round(h.per_record_c8_service_cpu_us_per_record, 1),
            "per_record_c32_service_cpu_us_per_record": round(h.per_record_c32_service_cpu_us_per_record, 1),
            "batched_records_per_s": round(h.batched_records_per_s, 0),
            "rate_limited_utilization": round(h.rate_limited_utilization, 3),
            "rate_limited_429_share": round(h.rate_limited_429_share, 4),
            "peak_rss_mib": round(h.peak_rss_mib, 1),
            "p50_added_ms": round(h.p50_added_ms, 3),
            "p99_added_ms": round(h.p99_added_ms, 3),
            "latency_bound_ratio_create": round(h.latency_bound_ratio_create, 3),
            "latency_bound_ratio_ordered_64": round(h.latency_bound_ratio_ordered_64, 3),
            "latency_bound_ratio_ordered_256": round(h.latency_bound_ratio_ordered_256, 3),
            "latency_bound_ratio_ordered_10k": round(h.latency_bound_ratio_ordered_10k, 3),
            "latency_bound_ratio_hot_key": round(h.latency_bound_ratio_hot_key, 3),
            "batched_sink_records_per_s": round(h.batched_sink_records_per_s, 0),
            "batched_sink_service_cpu_us_per_record": round(h.batched_sink_service_cpu_us_per_record, 2),
            "batched_sink_peak_rss_mib": round(h.batched_sink_peak_rss_mib, 1),
            "machine": machine,
        })
    }
}

fn header() -> String {
    format!(
        "{:<22} {:<22} {:>24} {:>7} {:>6} {:>8} {:>8} {:>6}  note",
        "scenario", "variant", "result", "wall s", "bench", "sandbox", "service", "other"
    )
}

fn render_row(row: &Row) -> String {
    let cpu = |value: Option<f64>| value.map_or_else(|| "-".to_string(), |v| format!("{v:.2}"));
    format!(
        "{:<22} {:<22} {:>24} {:>7.1} {:>6} {:>8} {:>8} {:>6}  {}",
        row.scenario,
        row.variant,
        row.figure,
        row.wall_s,
        cpu(row.cpu.map(|c| c.bench)),
        cpu(row.cpu.map(|c| c.sandbox)),
        cpu(row.cpu.map(|c| c.service)),
        cpu(row.cpu.map(|c| c.other)),
        row.note
    )
}

fn round(value: Option<f64>, decimals: i32) -> Value {
    match value {
        Some(value) if value.is_finite() => {
            let scale = 10f64.powi(decimals);
            json!((value * scale).round() / scale)
        }
        _ => Value::Null,
    }
}

/// `1234567.8` → `1,234,568`.
pub fn thousands(value: f64) -> String {
    let whole = value.round().max(0.0) as u64;
    let digits = whole.to_string();
    let mut out = String::new();
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_groups_digits() {
        assert_eq!(thousands(0.0), "0");
        assert_eq!(thousands(999.4), "999");
        assert_eq!(thousands(1234567.8), "1,234,568");
    }

    #[test]
    fn json_has_exactly_the_agreed_keys() {
        let report = Report::default();
        let json = report.json("2 cores, test");
        let mut keys: Vec<&str> = json
            .as_object()
            .expect("object")
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "batched_records_per_s",
                "batched_sink_peak_rss_mib",
                "batched_sink_records_per_s",
                "batched_sink_service_cpu_us_per_record",
                "latency_bound_ratio_create",
                "latency_bound_ratio_hot_key",
                "latency_bound_ratio_ordered_10k",
                "latency_bound_ratio_ordered_256",
                "latency_bound_ratio_ordered_64",
                "machine",
                "p50_added_ms",
                "p99_added_ms",
                "peak_rss_mib",
                "per_record_c1_service_cpu_us_per_record",
                "per_record_c32_service_cpu_us_per_record",
                "per_record_c8_service_cpu_us_per_record",
                "per_record_ratio_c1",
                "per_record_ratio_c32",
                "per_record_ratio_c8",
                "rate_limited_429_share",
                "rate_limited_utilization",
            ]
        );
    }
}
