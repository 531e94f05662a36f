//! The one path from a record to the calls that deliver it: render, then batch when the destination batches.
//! Streams deliver what it plans; PreviewRequests shows it.

use std::sync::Arc;
use std::time::Instant;

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
                let now = Instant::now();
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
        self.batcher.as_ref().and_then(Batcher::next_deadline)
    }

    /// The partial batches due by `now`.
    pub fn take_due(&mut self, now: Instant) -> Vec<Batch<T>> {
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
