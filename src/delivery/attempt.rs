//! One unit's calls, each paced and retried by the rules in `retry`, until they end or the stream stops.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::delivery::keys::{Evidence, KeyEntry, KeyState};
use crate::delivery::report::{DeliveryReport, DeliveryUnit, PlannedCall};
use crate::delivery::retry::{decide, Attempts, Decision};
use crate::domain::destination::DeliveryOptions;
use crate::domain::outcome::Outcome;
use crate::groove::pacer::Pacer;
use crate::groove::{CallError, GrooveAnswer, GrooveClient, GrooveConnection};
use crate::metrics::{CallClass, DestinationMetrics};

/// Everything needed to call Groove for one destination.
#[derive(Clone)]
pub struct CallContext {
    pub client: GrooveClient,
    /// The credential's key, read at each attempt: a key replaced meanwhile is used from the next one.
    pub key: Arc<KeyEntry>,
    pub pacer: Arc<Pacer>,
    pub options: DeliveryOptions,
    /// `destinations/{id}`, for what a refusal says.
    pub destination_name: String,
    /// The destination's series, fetched once for the stream.
    pub metrics: DestinationMetrics,
}

/// How a unit's delivery ended.
pub enum UnitEnd {
    /// It has an outcome.
    Reported(Box<DeliveryReport>),
    /// The stream stopped before anything of it could have reached Groove (or before a repeatable unit was
    /// done): it was not delivered, and sending it again later is safe.
    Released(DeliveryUnit),
}

/// The end of one call after its retries.
enum CallEnd {
    /// The call's report, with no records yet.
    Finished(DeliveryReport),
    /// Groove refuses the credential's key: the call was not sent (again). Earlier attempts of it, if any, were
    /// ones that are safe to repeat.
    KeyRefused(DeliveryReport),
    /// The stream stopped while the call waited (for the pacer, or before a retry); no attempt of it that could
    /// have reached Groove was made.
    Stopped,
}

/// Sends a unit's calls in order over the worker's connection; the first that does not succeed decides the
/// unit's outcome, and the calls after it are not sent. `stop` ends the waiting: a call already sent finishes,
/// but no new attempt starts.
pub async fn deliver(
    context: &CallContext,
    connection: &mut GrooveConnection,
    unit: DeliveryUnit,
    stop: &CancellationToken,
) -> UnitEnd {
    let started = Instant::now();
    let mut attempts = 0;
    let mut last: Option<(DeliveryReport, usize)> = None;
    let mut last_sent = true;
    for (index, call) in unit.calls.iter().enumerate() {
        let span = tracing::info_span!(
            target: crate::telemetry::EXPORTED_ONLY_TARGET,
            "groove call",
            otel.name = call.method.as_str(),
            otel.kind = "client",
            url.path = call.url.path()
        );
        let report = match send_with_retries(context, connection, call, stop)
            .instrument(span)
            .await
        {
            CallEnd::Finished(report) => report,
            CallEnd::KeyRefused(report) => {
                last_sent = report.attempts > 0;
                report
            }
            CallEnd::Stopped if index == 0 || unit.repeatable => return UnitEnd::Released(unit),
            // Earlier calls of a create were delivered: sending the unit again would repeat them.
            CallEnd::Stopped => DeliveryReport::call_ended(
                Outcome::Failed,
                None,
                0,
                format!(
                    "stopped after {index} of {} calls, which were delivered; not sent again on its own",
                    unit.calls.len()
                ),
                true,
            ),
        };
        attempts += report.attempts;
        let delivered = report.outcome == Outcome::Delivered;
        last = Some((report, index));
        if !delivered {
            break;
        }
    }
    let Some((mut report, index)) = last else {
        return UnitEnd::Reported(Box::new(DeliveryReport::invalid_records(
            unit.record_ids,
            unit.records,
            "record",
            "record renders to no call",
        )));
    };
    if report.outcome != Outcome::Delivered && index > 0 && !unit.repeatable {
        report.maybe_delivered = true;
        report.error = format!(
            "{} (after {index} of {} calls were delivered, so it is not sent again on its own)",
            report.error,
            unit.calls.len()
        );
    }
    let DeliveryUnit {
        record_ids,
        records,
        mut calls,
        ..
    } = unit;
    report.record_ids = record_ids;
    report.records = records;
    report.attempts = attempts;
    report.latency = started.elapsed();
    // A call never sent is not shown as the request sent.
    report.call = last_sent.then(|| calls.swap_remove(index));
    UnitEnd::Reported(Box::new(report))
}

async fn send_with_retries(
    context: &CallContext,
    connection: &mut GrooveConnection,
    call: &PlannedCall,
    stop: &CancellationToken,
) -> CallEnd {
    let timeout = Duration::from_millis(context.options.request_timeout_ms);
    let mut attempts = Attempts::default();
    loop {
        // A refused key is looked for before waiting for the pacer, and again after: nothing is sent with it.
        if context.key.is_refused() {
            if let Some(refused) = key_refused(context, &context.key.current(), attempts) {
                return refused;
            }
        }
        // Waiting for the pacer or for a retry is not being on the wire: a stopped stream ends it. A retry is
        // only ever waited for when the attempts so far are safe to repeat, so nothing is lost by stopping.
        let permit = tokio::select! {
            biased;
            () = stop.cancelled() => return CallEnd::Stopped,
            permit = context.pacer.acquire() => permit,
        };
        let key = context.key.current();
        if let Some(refused) = key_refused(context, &key, attempts) {
            return refused;
        }
        let sent_at = Instant::now();
        let result = connection.send(&key.key, call, timeout).await;
        record_call(&context.metrics, &result, sent_at.elapsed());
        match &result {
            Ok(answer) => permit.observe(answer.status, &answer.pacing_headers()),
            Err(_) => drop(permit),
        }
        context
            .key
            .observe(
                key.version,
                Evidence::of(&result),
                &context.destination_name,
            )
            .await;
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
            Decision::Retry { after } => {
                context.metrics.retry();
                tokio::select! {
                    biased;
                    () = stop.cancelled() => return CallEnd::Stopped,
                    () = tokio::time::sleep(after) => {}
                }
            }
            Decision::Done => return CallEnd::Finished(finished(result, attempts.total)),
            Decision::GiveUp { reason } => {
                return CallEnd::Finished(failed(result, attempts.total, reason, false))
            }
            Decision::Ambiguous { reason } => {
                return CallEnd::Finished(failed(result, attempts.total, reason, true))
            }
        }
    }
}

/// Counts a call that reached for Groove; one refused here before any connection is no call.
fn record_call(
    metrics: &DestinationMetrics,
    result: &Result<GrooveAnswer, CallError>,
    took: Duration,
) {
    match result {
        Ok(answer) => metrics.call(CallClass::of(Some(answer.status)), took),
        Err(error) if error.is_local() => {}
        Err(_) => metrics.call(CallClass::of(None), took),
    }
}

/// The end of a call whose credential's key Groove refuses, when it does.
fn key_refused(context: &CallContext, key: &KeyState, attempts: Attempts) -> Option<CallEnd> {
    let refusal = key.refusal.as_ref()?;
    Some(CallEnd::KeyRefused(DeliveryReport::call_ended(
        Outcome::Failed,
        None,
        attempts.total,
        refusal.record_error(context.key.credential_id()),
        false,
    )))
}

fn finished(result: Result<GrooveAnswer, CallError>, attempts: u32) -> DeliveryReport {
    match result {
        Ok(answer) if (200..300).contains(&answer.status) => {
            DeliveryReport::call_ended(Outcome::Delivered, Some(answer), attempts, "", false)
        }
        Ok(answer) => {
            let error = format!("groove answered {}", answer.status);
            DeliveryReport::call_ended(Outcome::Rejected, Some(answer), attempts, error, false)
        }
        Err(error) => {
            DeliveryReport::call_ended(Outcome::Failed, None, attempts, error.to_string(), false)
        }
    }
}

fn failed(
    result: Result<GrooveAnswer, CallError>,
    attempts: u32,
    reason: String,
    maybe_delivered: bool,
) -> DeliveryReport {
    DeliveryReport::call_ended(
        Outcome::Failed,
        result.ok(),
        attempts,
        reason,
        maybe_delivered,
    )
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use bytes::Bytes;
    use url::Url;

    use super::*;
    use crate::delivery::report::RecordJson;
    use crate::domain::destination::HttpMethod;
    use crate::domain::record::RecordEncoding;

    /// A unit whose only call carries a header value HTTP cannot carry: it fails at once, says why, and
    /// counts no attempt, however many attempts the destination allows.
    #[tokio::test]
    async fn a_call_that_cannot_be_built_fails_at_once_without_an_attempt() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = Url::parse(&format!("http://{}/v1/", listener.local_addr().unwrap())).unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        let server = tokio::spawn(async move {
            while listener.accept().await.is_ok() {
                counter.fetch_add(1, Ordering::SeqCst);
            }
        });
        let client = GrooveClient::new(&base).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (_store, _keys, key) = crate::delivery::keys::test_entry(dir.path()).await;
        let context = CallContext {
            client: client.clone(),
            key,
            destination_name: "destinations/d".into(),
            pacer: Arc::new(Pacer::new(None)),
            options: DeliveryOptions {
                max_attempts: 10,
                ..DeliveryOptions::default()
            },
            metrics: DestinationMetrics::default(),
        };
        let unit = DeliveryUnit {
            record_ids: vec!["r1".to_string()],
            records: vec![RecordJson {
                bytes: Arc::from(&b"{}"[..]),
                encoding: RecordEncoding::RawJson,
            }],
            calls: vec![PlannedCall {
                method: HttpMethod::Put,
                url: base.join("tickets/1/state").unwrap(),
                headers: Arc::from([("X-Note".to_string(), "tab\tand\u{1}".to_string())]),
                body: Bytes::from_static(b"{}"),
            }],
            ordering_key: None,
            repeatable: true,
        };
        // Paused: a backoff wait, had there been one, would move the clock; nothing here does real I/O any more.
        tokio::time::pause();
        let started = tokio::time::Instant::now();
        let UnitEnd::Reported(report) = deliver(
            &context,
            &mut client.connection(),
            unit,
            &CancellationToken::new(),
        )
        .await
        else {
            panic!("a unit that cannot be sent is reported, not released");
        };
        assert_eq!(report.outcome, Outcome::Failed);
        assert_eq!(report.attempts, 0);
        assert!(!report.maybe_delivered);
        assert!(
            report
                .error
                .starts_with("request could not be built, so it was not sent: "),
            "{}",
            report.error
        );
        assert!(report.error.contains("X-Note"), "{}", report.error);
        // No backoff was waited for: nothing was retried.
        assert_eq!(started.elapsed(), Duration::ZERO);
        assert_eq!(accepted.load(Ordering::SeqCst), 0);
        server.abort();
    }
}
