//! Scenario 6: a far-away Groove. The sandbox answers every call after 50 ms, the destination allows 32 calls
//! in flight, so by Little's law no client can make more than 32 ÷ 0.05 s = 640 calls/s. Each run's ratio is
//! the calls/s it made ÷ the most its records allow:
//! - `create`: independent creates; the limit is concurrency ÷ latency.
//! - `ordered_64`, `ordered_256`, `ordered_10k`: state updates spread round-robin over 64, 256 and 10,000
//!   tickets. Updates to one ticket go one after another, so the limit is min(concurrency, tickets) ÷ latency.
//! - `hot_key`: half of the updates go to one ticket, the rest to as many others. The busy ticket's updates
//!   are a chain of calls that cannot overlap, so the run takes at least (its updates × latency), or
//!   (records ÷ concurrency × latency) if that is longer; the limit is records ÷ that time. The other tickets
//!   cannot run further ahead than the queues let the stream be read past the busy ticket's waiting updates
//!   (the queues are bounded so that memory stays flat), which this ratio includes.
//!
//! The tickets are created first, with no latency; then the latency is switched on.

use std::time::Duration;

use groove_destination::proto::{self, destination_config::Endpoint, record};

use crate::fail::{BenchError, BenchResult};
use crate::report::Report;
use crate::sandbox::{self, SandboxFlags};
use crate::service::create_ticket_config;
use crate::stack::Stack;
use crate::stream::{self, StreamOutcome};

use super::Env;

const LATENCY: Duration = Duration::from_millis(50);
const CONCURRENCY: u32 = 32;
/// Tickets the ordered runs update: the most distinct keys of a run.
const TICKETS: u64 = 10_000;

pub async fn run(env: &Env<'_>, report: &mut Report) -> BenchResult<()> {
    let plan = env.plan;
    let flags = SandboxFlags {
        // Every seeded ticket stays, with room for the create run's.
        max_stored_tickets: Some(TICKETS + plan.latency_bound_records + 1_000),
        ..SandboxFlags::default()
    };
    let mut stack = Stack::start(env.binaries, "latency-bound", &flags).await?;

    // Tickets 1..=TICKETS, numbered by the sandbox in creation order.
    let seed = stack
        .service
        .active_destination("seed", create_ticket_config(CONCURRENCY))
        .await?;
    let records = (0..TICKETS)
        .map(|seq| stack.tickets.record("seed", seq))
        .collect();
    let seeded = stream::send_all(
        stack.service.delivery(),
        &plan.target(&seed),
        records,
        Duration::from_secs(120),
    )
    .await?;
    if seeded.delivered != TICKETS {
        return Err(BenchError::new(format!(
            "seeding created {} of {TICKETS} tickets: {}",
            seeded.delivered,
            seeded.problems()
        )));
    }
    sandbox::set_faults(
        &stack.control,
        &stack.sandbox.control_url,
        &serde_json::json!({ "latency_ms": LATENCY.as_millis() as u64 }),
    )
    .await?;

    let count = plan.latency_bound_records;
    let limit_per_s = |keys: u64| keys.min(u64::from(CONCURRENCY)) as f64 / LATENCY.as_secs_f64();

    let create = stack
        .service
        .active_destination("lb-create", create_ticket_config(CONCURRENCY))
        .await?;
    let records = (0..count)
        .map(|seq| stack.tickets.record("lb-create", seq))
        .collect();
    let outcome = measure(&stack, records, plan.target(&create)).await?;
    let ratio = calls_per_s(&outcome) / limit_per_s(count);
    row(report, "create", ratio, &outcome, limit_per_s(count));
    report.headline.latency_bound_ratio_create = Some(ratio);

    for (variant, tickets) in [
        ("ordered_64", 64),
        ("ordered_256", 256),
        ("ordered_10k", TICKETS),
    ] {
        let name = stack
            .service
            .active_destination(
                &format!("lb-{}", variant.replace('_', "-")),
                update_config(),
            )
            .await?;
        let records = (0..count)
            .map(|seq| update(variant, seq, 1 + seq % tickets))
            .collect();
        let outcome = measure(&stack, records, plan.target(&name)).await?;
        let limit = limit_per_s(tickets.min(count));
        let ratio = calls_per_s(&outcome) / limit;
        row(report, variant, ratio, &outcome, limit);
        match variant {
            "ordered_64" => report.headline.latency_bound_ratio_ordered_64 = Some(ratio),
            "ordered_256" => report.headline.latency_bound_ratio_ordered_256 = Some(ratio),
            _ => report.headline.latency_bound_ratio_ordered_10k = Some(ratio),
        }
    }

    let hot_count = plan.latency_bound_hot_records;
    let name = stack
        .service
        .active_destination("lb-hot", update_config())
        .await?;
    // Even records to ticket 1, odd ones each to a ticket of their own.
    let records = (0..hot_count)
        .map(|seq| {
            let ticket = if seq % 2 == 0 { 1 } else { 2 + seq / 2 };
            update("hot", seq, ticket)
        })
        .collect();
    let outcome = measure(&stack, records, plan.target(&name)).await?;
    let hot_chain = hot_count.div_ceil(2) as f64 * LATENCY.as_secs_f64();
    let spread = hot_count as f64 / f64::from(CONCURRENCY) * LATENCY.as_secs_f64();
    let limit = hot_count as f64 / hot_chain.max(spread);
    let ratio = calls_per_s(&outcome) / limit;
    row(report, "hot_key", ratio, &outcome, limit);
    report.headline.latency_bound_ratio_hot_key = Some(ratio);

    stack.ensure_running()?;
    report.note(format!(
        "latency-bound: sandbox answers after {} ms, destination concurrency {CONCURRENCY}; ratio = calls/s \
         ÷ the most the records allow (Little's law; the hot key's chain of calls bounds its run)",
        LATENCY.as_millis()
    ));
    Ok(())
}

async fn measure(
    stack: &Stack,
    records: Vec<proto::Record>,
    target: crate::records::StreamTarget,
) -> BenchResult<StreamOutcome> {
    let outcome = stream::send_all(
        stack.service.delivery(),
        &target,
        records,
        Duration::from_secs(300),
    )
    .await?;
    let problems = outcome.problems();
    if !problems.is_empty() {
        return Err(BenchError::new(format!(
            "latency-bound run to {} did not deliver everything: {problems}",
            target.destination
        )));
    }
    Ok(outcome)
}

fn calls_per_s(outcome: &StreamOutcome) -> f64 {
    outcome.calls as f64 / outcome.elapsed.as_secs_f64().max(1e-9)
}

fn row(report: &mut Report, variant: &str, ratio: f64, outcome: &StreamOutcome, limit: f64) {
    report.row(
        "6 latency-bound 50ms",
        variant,
        format!("{ratio:.3}"),
        outcome.elapsed.as_secs_f64(),
        None,
        format!(
            "{} calls in {:.2} s = {:.0} calls/s of at most {limit:.0}",
            outcome.calls,
            outcome.elapsed.as_secs_f64(),
            calls_per_s(outcome)
        ),
    );
}

/// `update_ticket_state` with the ticket number taken from each record: the ordering key is the ticket.
fn update_config() -> proto::DestinationConfig {
    proto::DestinationConfig {
        endpoint: Some(Endpoint::Template(proto::TemplateEndpoint {
            template_id: "update_ticket_state".to_string(),
            parameters: [("ticket_number".to_string(), "{number}".to_string())].into(),
        })),
        delivery: Some(proto::DeliveryOptions {
            concurrency: CONCURRENCY,
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn update(run: &str, seq: u64, ticket: u64) -> proto::Record {
    let state = ["opened", "pending", "closed"][(seq % 3) as usize];
    proto::Record {
        id: format!("{run}-{seq}"),
        data: Some(record::Data::RawJson(
            format!(r#"{{"number":{ticket},"state":"{state}"}}"#).into_bytes(),
        )),
    }
}
