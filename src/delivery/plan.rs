//! The one path from a record to the calls that deliver it: render, then batch when the destination batches.
//! Streams deliver what it plans; PreviewRequests shows it.

use std::sync::Arc;

use tokio::time::Instant;

use crate::domain::batching::{Batch, Batcher};
use crate::domain::call::PlannedCall;
use crate::domain::destination::Batching;
use crate::domain::render::{Rendered, Renderer};
use crate::domain::validation::Violations;

/// What records become on their way to Groove.
pub(crate) enum Planned<T> {
    /// A record's own calls, sent one after the other.
    Record {
        item: T,
        calls: Vec<PlannedCall>,
        ordering_key: Option<String>,
    },
    /// A batch that closed: one call for several records.
    Batch(Batch<T>),
}

/// Renders records and, for a batching destination, groups them; `T` is what comes back with each record.
/// A batch's wait is measured on tokio's clock, the one the session sleeps on, so paused time in tests moves both.
pub(crate) struct Planner<T> {
    renderer: Arc<Renderer>,
    batcher: Option<Batcher<T>>,
}

impl<T: Clone> Planner<T> {
    pub fn new(renderer: Arc<Renderer>, batching: &Batching) -> Self {
        Planner {
            renderer,
            batcher: batching.enabled.then(|| Batcher::new(batching)),
        }
    }

    /// What one record's JSON renders to, or the fields at fault.
    pub fn render(&self, json: &[u8]) -> Result<Rendered, Violations> {
        self.renderer.render(json)
    }

    /// Places a rendered record: its own calls, or into the batcher, adding to `planned` what is ready.
    pub fn place(&mut self, item: T, rendered: Rendered, planned: &mut Vec<Planned<T>>) {
        match self.batcher.as_mut() {
            Some(batcher) => {
                let now = Instant::now().into_std();
                // Batching is for manual endpoints, which render one call per record.
                for call in rendered.calls {
                    let closed = batcher.push(now, call, rendered.group_key.clone(), item.clone());
                    planned.extend(closed.into_iter().map(Planned::Batch));
                }
            }
            None => planned.push(Planned::Record {
                item,
                calls: rendered.calls,
                ordering_key: rendered.ordering_key,
            }),
        }
    }

    /// When the oldest partial batch is due; `None` when nothing waits.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.batcher
            .as_ref()
            .and_then(Batcher::next_deadline)
            .map(Instant::from_std)
    }

    /// The partial batches due by now.
    pub fn take_due(&mut self) -> Vec<Batch<T>> {
        let now = Instant::now().into_std();
        self.batcher
            .as_mut()
            .map(|batcher| batcher.take_due(now))
            .unwrap_or_default()
    }

    /// Every partial batch (end of input).
    pub fn flush(&mut self) -> Vec<Batch<T>> {
        self.batcher
            .as_mut()
            .map(Batcher::flush)
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use url::Url;

    use super::*;
    use crate::domain::destination::{
        ContentFormat, DestinationConfig, Endpoint, GroupingAlgorithm, HttpMethod, ManualEndpoint,
    };

    fn batching_planner(max_wait_ms: u64) -> Planner<u32> {
        let config = DestinationConfig {
            endpoint: Endpoint::Manual(ManualEndpoint {
                method: HttpMethod::Post,
                url: "tickets/{number}/messages".to_string(),
                content_format: ContentFormat::Json,
                headers: Vec::new(),
            }),
            batching: Batching {
                enabled: true,
                batch_size: 10,
                max_wait_ms,
                grouping: GroupingAlgorithm::RenderedRequest,
                ..Batching::default()
            },
            ..DestinationConfig::default()
        };
        let base = Url::parse("https://api.groovehq.com/v1/").unwrap();
        let renderer = Renderer::new(&config, &base).unwrap();
        Planner::new(Arc::new(renderer), &config.batching)
    }

    fn place(planner: &mut Planner<u32>, item: u32, number: u32) -> Vec<Planned<u32>> {
        let json = format!(r#"{{"number":{number},"body":"note {item}"}}"#);
        let rendered = planner.render(json.as_bytes()).unwrap();
        let mut planned = Vec::new();
        planner.place(item, rendered, &mut planned);
        planned
    }

    /// A partial batch leaves once its first record has waited `max_wait` on tokio's clock, and not before;
    /// each rendered URL's batch keeps its own wait.
    #[tokio::test(start_paused = true)]
    async fn a_partial_batch_is_due_after_max_wait_on_the_session_clock() {
        let mut planner = batching_planner(200);
        assert!(planner.next_deadline().is_none(), "nothing waits yet");
        let opened = Instant::now();
        assert!(
            place(&mut planner, 1, 1).is_empty(),
            "a partial batch waits"
        );
        tokio::time::advance(Duration::from_millis(50)).await;
        assert!(place(&mut planner, 2, 2).is_empty());
        assert!(place(&mut planner, 3, 1).is_empty());
        assert_eq!(
            planner.next_deadline(),
            Some(opened + Duration::from_millis(200))
        );

        tokio::time::advance(Duration::from_millis(149)).await;
        assert!(planner.take_due().is_empty(), "1 ms early");
        tokio::time::sleep_until(planner.next_deadline().unwrap()).await;
        let due = planner.take_due();
        assert_eq!(due.len(), 1, "only the first URL's batch is due");
        assert_eq!(due[0].items, [1, 3]);
        assert_eq!(
            planner.next_deadline(),
            Some(opened + Duration::from_millis(250)),
            "the second URL's batch waits from its own first record"
        );
        tokio::time::advance(Duration::from_millis(50)).await;
        let due = planner.take_due();
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].items, [2]);
        assert!(planner.next_deadline().is_none());
    }
}
