//! Scenario 1: one record per Groove call (Create Ticket template), sandbox answering at once, at several
//! destination concurrency levels — the service's records/s against the raw baseline's calls/s in the same
//! run, raw and service rounds alternating so that drift hits both alike.

use crate::cpu::CpuUse;
use crate::fail::BenchResult;
use crate::raw::{self, RawPlan, RawTarget};
use crate::report::{thousands, Report};
use crate::sandbox::{SandboxFlags, API_KEY};
use crate::service::create_ticket_config;
use crate::stack::Stack;
use crate::stats::Samples;
use crate::stream::{self, StreamPlan};

use super::Env;

/// Totals of one variant over its rounds.
#[derive(Default)]
struct Tally {
    /// Per Groove call: client-side for raw, the results' `latency` field for the service.
    call_latencies: Samples,
    records: u64,
    seconds: f64,
    rates: Vec<f64>,
    cpu: Vec<(CpuUse, f64)>,
    problems: Vec<String>,
}

impl Tally {
    fn add(&mut self, records: u64, seconds: f64, cpu: CpuUse, problem: String) {
        self.records += records;
        self.seconds += seconds;
        self.rates.push(records as f64 / seconds.max(1e-9));
        self.cpu.push((cpu, seconds));
        if !problem.is_empty() {
            self.problems.push(problem);
        }
    }

    /// Records over total measured time: longer rounds weigh more, as they should.
    fn rate(&self) -> f64 {
        self.records as f64 / self.seconds.max(1e-9)
    }

    fn spread(&self) -> String {
        let min = self.rates.iter().copied().fold(f64::INFINITY, f64::min);
        let max = self.rates.iter().copied().fold(0.0, f64::max);
        let mut note = format!(
            "{} rounds, {}–{}/s",
            self.rates.len(),
            thousands(min),
            thousands(max)
        );
        if let (Some(p50), Some(p99)) = (
            self.call_latencies.quantile_ms(0.5),
            self.call_latencies.quantile_ms(0.99),
        ) {
            note.push_str(&format!(", per call p50 {p50:.3} p99 {p99:.3} ms"));
        }
        if !self.problems.is_empty() {
            note.push_str(&format!("; PROBLEMS: {}", self.problems.join("; ")));
        }
        note
    }
}

pub async fn run(env: &Env<'_>, levels: &[u32], report: &mut Report) -> BenchResult<()> {
    let mut stack = Stack::start(env.binaries, "per-record", &SandboxFlags::default()).await?;
    let http = raw::client()?;
    let plan = env.plan;
    // Raw bodies are numbered apart from the service's record ids; only their content has to match.
    let mut raw_seq = 1_000_000_000u64;
    for &level in levels {
        let destination = stack
            .service
            .active_destination(&format!("per-record-c{level}"), create_ticket_config(level))
            .await?;
        let preview = stack
            .service
            .preview(&destination, stack.tickets.record("preview", 0))
            .await?;
        let target = RawTarget::from_preview(&preview, API_KEY, &stack.tickets, 0)?;
        if level == levels[0] {
            report.note(format!(
                "per-record raw baseline sends what the service previews for the same record: {}",
                target.describe()
            ));
            report.note(
                "per-record `per call` latency: client-side POST time for raw; the results' `latency` field \
                 (first attempt → Groove's answer, inside the service) for the service. Per-call time well \
                 above raw's at the same concurrency means the calls themselves got slower (CPU or scheduling); \
                 close to raw's with a lower rate means the workers wait between calls",
            );
        }
        let raw_plan = |duration, first_seq| RawPlan {
            concurrency: level as usize,
            duration,
            max_calls: plan.max_records_per_run,
            first_seq,
        };
        let stream_plan = |run: String, duration| StreamPlan {
            target: plan.target(&destination),
            run,
            max_records: plan.max_records_per_run,
            duration,
            drain_limit: plan.drain_limit,
        };

        // Warm both paths: connection pools, allocators, and the sandbox's ticket store filling to its cap.
        raw::run(
            &http,
            &target,
            &stack.tickets,
            raw_plan(plan.warm_up, raw_seq),
        )
        .await;
        raw_seq += plan.max_records_per_run;
        stream::throughput(
            stack.service.delivery(),
            &stack.tickets,
            &stream_plan(format!("c{level}-warm"), plan.warm_up),
        )
        .await?;

        let mut raw_tally = Tally::default();
        let mut service_tally = Tally::default();
        for round in 0..plan.per_record_rounds {
            let before = stack.cpu_mark();
            let raw_run = raw::run(
                &http,
                &target,
                &stack.tickets,
                raw_plan(plan.per_record_run, raw_seq),
            )
            .await;
            let usage = before.until(&stack.cpu_mark());
            raw_seq += plan.max_records_per_run;
            raw_tally.call_latencies.extend(raw_run.latencies);
            raw_tally.add(
                raw_run.ok,
                raw_run.elapsed.as_secs_f64(),
                usage,
                match (&raw_run.first_error, raw_run.errors) {
                    (_, 0) => String::new(),
                    (first, errors) => format!("{errors} errors, first: {first:?}"),
                },
            );

            let before = stack.cpu_mark();
            let outcome = stream::throughput(
                stack.service.delivery(),
                &stack.tickets,
                &stream_plan(format!("c{level}-r{round}"), plan.per_record_run),
            )
            .await?;
            let usage = before.until(&stack.cpu_mark());
            service_tally
                .call_latencies
                .extend(outcome.call_latencies.clone());
            eprintln!(
                "    c{level} service round {round}: {} records, {}; raw {} calls",
                outcome.delivered,
                outcome.timeline(),
                raw_run.ok
            );
            service_tally.add(
                outcome.delivered,
                outcome.elapsed.as_secs_f64(),
                usage,
                outcome.problems(),
            );
            stack.ensure_running()?;
        }

        let scenario = format!("1 per-record c{level}");
        let raw_cpu = CpuUse::weighted(&raw_tally.cpu);
        let service_cpu = CpuUse::weighted(&service_tally.cpu);
        report.row(
            &scenario,
            "raw reqwest",
            format!("{} calls/s", thousands(raw_tally.rate())),
            raw_tally.seconds,
            Some(raw_cpu),
            raw_tally.spread(),
        );
        report.row(
            &scenario,
            "service SendRecords",
            format!("{} rec/s", thousands(service_tally.rate())),
            service_tally.seconds,
            Some(service_cpu),
            service_tally.spread(),
        );
        let ratio = service_tally.rate() / raw_tally.rate().max(1e-9);
        report.row(
            &scenario,
            "ratio service / raw",
            format!("{ratio:.3}"),
            0.0,
            None,
            "",
        );
        let budget = CpuBudget::new(
            (&raw_cpu, raw_tally.rate()),
            (&service_cpu, service_tally.rate()),
        );
        report.row(
            &scenario,
            "CPU µs per record",
            format!("{:.1} / {:.1}", budget.raw_total(), budget.service_total()),
            0.0,
            None,
            budget.explain(),
        );
        report.headline.set_per_record_ratio(level, ratio);
        report
            .headline
            .set_per_record_service_cpu(level, budget.service);
    }
    Ok(())
}

/// Where the CPU of one record goes, in µs, for both variants; it tells what limits each rate.
struct CpuBudget {
    raw_client: f64,
    raw_sandbox: f64,
    producer: f64,
    service_sandbox: f64,
    service: f64,
    raw_machine_cores: f64,
}

impl CpuBudget {
    /// From each variant's CPU use (cores) and rate (records or calls per second).
    fn new(
        (raw_cpu, raw_rate): (&CpuUse, f64),
        (service_cpu, service_rate): (&CpuUse, f64),
    ) -> CpuBudget {
        let per_record = |cores: f64, rate: f64| cores / rate.max(1e-9) * 1e6;
        CpuBudget {
            raw_client: per_record(raw_cpu.bench, raw_rate),
            raw_sandbox: per_record(raw_cpu.sandbox, raw_rate),
            producer: per_record(service_cpu.bench, service_rate),
            service_sandbox: per_record(service_cpu.sandbox, service_rate),
            service: per_record(service_cpu.service, service_rate),
            raw_machine_cores: raw_cpu.bench + raw_cpu.sandbox + raw_cpu.service + raw_cpu.other,
        }
    }

    fn raw_total(&self) -> f64 {
        self.raw_client + self.raw_sandbox
    }

    fn service_total(&self) -> f64 {
        self.producer + self.service_sandbox + self.service
    }

    /// What the service may spend per record in all for the ratio `target` when the CPU is the only limit.
    /// Optimistic: it assumes the sandbox costs per call what it did in the raw run (in the service run it
    /// costs more: three busy processes share the cores, and each wake-up finds fewer requests).
    fn service_allowance(&self, target: f64) -> f64 {
        self.raw_total() / target - self.producer - self.raw_sandbox
    }

    /// The ratio a service spending per record what the raw loop spends per call could reach, on the same
    /// assumption.
    fn ceiling(&self) -> f64 {
        self.raw_total() / (self.producer + self.raw_sandbox + self.raw_client).max(1e-9)
    }

    fn explain(&self) -> String {
        let cores = std::thread::available_parallelism().map_or(1, usize::from) as f64;
        let caveat = if self.raw_machine_cores < 0.9 * cores {
            "; the raw run left cores idle, so its rate is bound by latency, not CPU, and these bounds are loose"
        } else {
            ""
        };
        format!(
            "raw: client {:.1} + sandbox {:.1} (machine busy {:.2} cores); service run: producer {:.1} + sandbox \
             {:.1} + service {:.1}. A ratio of 0.90 allows the service {:.1} per record in all ({:+.1} against \
             the raw loop's call); a service spending what the raw loop spends per call could reach {:.2} (both \
             with the sandbox as cheap per call as in the raw run){caveat}",
            self.raw_client,
            self.raw_sandbox,
            self.raw_machine_cores,
            self.producer,
            self.service_sandbox,
            self.service,
            self.service_allowance(0.90),
            self.service_allowance(0.90) - self.raw_client,
            self.ceiling()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget() -> CpuBudget {
        CpuBudget {
            raw_client: 13.0,
            raw_sandbox: 13.0,
            producer: 2.0,
            service_sandbox: 15.0,
            service: 20.0,
            raw_machine_cores: 2.0,
        }
    }

    #[test]
    fn the_allowance_is_what_the_target_leaves_after_producer_and_sandbox() {
        // 26 / 0.8 = 32.5 in all; minus producer 2 and sandbox 13.
        assert!((budget().service_allowance(0.8) - 17.5).abs() < 1e-9);
    }

    #[test]
    fn the_ceiling_prices_the_service_at_the_raw_loops_call() {
        assert!((budget().ceiling() - 26.0 / 28.0).abs() < 1e-9);
    }
}
