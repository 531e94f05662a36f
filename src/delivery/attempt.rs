//! One unit's calls, each paced and retried by the rules in `retry`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::delivery::report::{DeliveryReport, DeliveryUnit, PlannedCall};
use crate::delivery::retry::{decide, Attempts, Decision};
use crate::domain::credential::ApiKey;
use crate::domain::destination::{DeliveryOptions, HttpMethod};
use crate::domain::outcome::Outcome;
use crate::groove::pacer::Pacer;
use crate::groove::{CallError, GrooveAnswer, GrooveClient, GrooveConnection, OutgoingRequest};

/// Everything needed to call Groove for one destination.
#[derive(Clone)]
pub struct CallContext {
    pub client: GrooveClient,
    pub key: ApiKey,
    pub pacer: Arc<Pacer>,
    pub options: DeliveryOptions,
}

/// The end of one call after its retries.
struct CallResult {
    outcome: Outcome,
    answer: Option<GrooveAnswer>,
    attempts: u32,
    error: String,
}

/// Sends a unit's calls in order over the worker's connection; the first that does not succeed decides the
/// unit's outcome, and the calls after it are not sent.
pub async fn deliver(
    context: &CallContext,
    connection: &mut GrooveConnection,
    unit: DeliveryUnit,
) -> DeliveryReport {
    let started = Instant::now();
    let mut attempts = 0;
    let mut last: Option<(CallResult, PlannedCall)> = None;
    for call in unit.calls {
        let result = send_with_retries(context, connection, &call).await;
        attempts += result.attempts;
        let delivered = result.outcome == Outcome::Delivered;
        last = Some((result, call));
        if !delivered {
            break;
        }
    }
    let Some((result, call)) = last else {
        return DeliveryReport {
            record_ids: unit.record_ids,
            outcome: Outcome::Invalid,
            answer: None,
            attempts: 0,
            latency: started.elapsed(),
            error: "record renders to no call".to_string(),
            field: "record".to_string(),
            call: None,
            records: unit.records,
        };
    };
    DeliveryReport {
        record_ids: unit.record_ids,
        outcome: result.outcome,
        answer: result.answer,
        attempts,
        latency: started.elapsed(),
        error: result.error,
        field: String::new(),
        call: Some(call),
        records: unit.records,
    }
}

async fn send_with_retries(
    context: &CallContext,
    connection: &mut GrooveConnection,
    call: &PlannedCall,
) -> CallResult {
    let request = OutgoingRequest {
        method: call.method,
        url: call.url.clone(),
        headers: call.headers.clone(),
        body: has_body(call.method).then(|| call.body.clone()),
        timeout: Duration::from_millis(context.options.request_timeout_ms),
    };
    let mut attempts = Attempts::default();
    loop {
        let permit = context.pacer.acquire().await;
        let result = connection.send(&context.key, &request).await;
        match &result {
            Ok(answer) => permit.observe(answer.status, &answer.pacing_headers()),
            Err(_) => drop(permit),
        }
        attempts.record(&result);
        let decision = decide(
            call.method,
            context.options.retry_unsafe_requests,
            &result,
            attempts,
            context.options.max_attempts,
            &mut rand::rng(),
        );
        match decision {
            Decision::Retry { after } => tokio::time::sleep(after).await,
            Decision::Done => return finished(result, attempts.total),
            Decision::GiveUp { reason } => {
                return CallResult {
                    outcome: Outcome::Failed,
                    answer: result.ok(),
                    attempts: attempts.total,
                    error: reason,
                }
            }
        }
    }
}

fn finished(result: Result<GrooveAnswer, CallError>, attempts: u32) -> CallResult {
    match result {
        Ok(answer) if (200..300).contains(&answer.status) => CallResult {
            outcome: Outcome::Delivered,
            answer: Some(answer),
            attempts,
            error: String::new(),
        },
        Ok(answer) => CallResult {
            outcome: Outcome::Rejected,
            error: format!("groove answered {}", answer.status),
            answer: Some(answer),
            attempts,
        },
        Err(error) => CallResult {
            outcome: Outcome::Failed,
            answer: None,
            attempts,
            error: error.to_string(),
        },
    }
}

/// GET and DELETE carry no body: Groove reads their parameters from the URL.
fn has_body(method: HttpMethod) -> bool {
    !matches!(method, HttpMethod::Get | HttpMethod::Delete)
}
