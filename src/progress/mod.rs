//! What kiln reports while it works, as data: the library emits [`Event`]s to a [`Reporter`]
//! and never renders; the CLI turns them into indicatif bars or plain lines.

use std::sync::Mutex;
use std::time::Duration;

/// One thing that happened.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A free-form status line (`Resolving docker.io/library/python:3.12-slim`).
    Status {
        message: String,
    },
    /// A blob transfer begins; `id` is stable for its progress and completion events.
    TransferStarted {
        id: String,
        label: String,
        total: Option<u64>,
        /// Bytes already present (a resumed download or upload).
        offset: u64,
        direction: Direction,
    },
    TransferProgress {
        id: String,
        bytes: u64,
    },
    /// A blob transfer ends; also sent without a `TransferStarted` when nothing had to move
    /// (the registry already has the blob, or mounted it).
    TransferDone {
        id: String,
        label: String,
        outcome: TransferOutcome,
        elapsed: Duration,
    },
    /// A build step begins (`[2/5] RUN pip install -r requirements.txt`).
    StepStarted {
        id: String,
        name: String,
    },
    /// A line of a RUN's output.
    StepOutput {
        id: String,
        line: String,
    },
    /// A build step ends; `cached` when its result came from the cache.
    StepDone {
        id: String,
        cached: bool,
        elapsed: Duration,
    },
    /// A step (or a stage's base) did not come from the cache, and why.
    CacheMiss {
        id: String,
        reasons: Vec<String>,
    },
    /// A warning worth the user's attention (a mirror failed and the next is tried, …).
    Warning {
        message: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// From a registry into the store.
    Download,
    /// From the store to a registry.
    Upload,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransferOutcome {
    /// Downloaded (or uploaded) now.
    Transferred,
    /// Already in the local store; nothing moved.
    AlreadyPresent,
    /// The registry already has the blob in the destination repository (a push skips it).
    ExistsRemotely,
    /// The registry linked the blob from another of its repositories (`from`).
    Mounted {
        from: String,
    },
    Failed,
}

/// Receives events; implementations must be cheap and thread-safe.
pub trait Reporter: Send + Sync {
    fn report(&self, event: Event);
}

/// Discards everything.
pub struct NullReporter;

impl Reporter for NullReporter {
    fn report(&self, _event: Event) {}
}

/// Keeps every event, for tests.
#[derive(Default)]
pub struct RecordingReporter {
    events: Mutex<Vec<Event>>,
}

impl RecordingReporter {
    pub fn events(&self) -> Vec<Event> {
        self.events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl Reporter for RecordingReporter {
    fn report(&self, event: Event) {
        self.events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(event);
    }
}
