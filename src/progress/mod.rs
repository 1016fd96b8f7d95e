//! What kiln reports while it works, as data: the library emits [`Event`]s to a [`Reporter`]
//! and never renders; the CLI turns them into indicatif bars or plain lines.

use std::sync::{Arc, Mutex};
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
    /// How long one phase of the work took (`unpack layer 1 of debian:bookworm-slim`,
    /// `#2 run`, `#2 layer`), to see where a build's time goes; the CLI shows them when
    /// `KILN_TIMINGS` is set.
    Timing {
        phase: String,
        elapsed: Duration,
    },
}

/// Times phases of one piece of work (a build step `#3`, a base image) as [`Event::Timing`]s
/// named `<prefix> <phase>`.
#[derive(Clone, Copy)]
pub struct PhaseTimer<'a> {
    pub reporter: &'a dyn Reporter,
    pub prefix: &'a str,
}

impl PhaseTimer<'_> {
    /// Runs `f`, reports how long it took as `phase`, and returns what it returned.
    pub fn time<T>(&self, phase: &str, f: impl FnOnce() -> T) -> T {
        let start = std::time::Instant::now();
        let out = f();
        self.reporter.report(Event::Timing {
            phase: format!("{} {phase}", self.prefix),
            elapsed: start.elapsed(),
        });
        out
    }
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

/// Passes events on marked with a name (a `kiln bake` target), so that builds reporting to
/// one renderer side by side stay apart: ids become `name|id` (see [`split_tag`]), and
/// messages and transfer labels start with `[name] `.
pub struct Tagged {
    tag: String,
    inner: Arc<dyn Reporter>,
}

impl Tagged {
    pub fn new(tag: impl Into<String>, inner: Arc<dyn Reporter>) -> Tagged {
        Tagged {
            tag: tag.into(),
            inner,
        }
    }

    fn id(&self, id: String) -> String {
        format!("{}|{id}", self.tag)
    }

    fn text(&self, text: String) -> String {
        format!("[{}] {text}", self.tag)
    }
}

/// A tagged id's name and own id (`web|3` → `(Some("web"), "3")`); untagged ids as they are.
pub fn split_tag(id: &str) -> (Option<&str>, &str) {
    match id.split_once('|') {
        Some((tag, rest)) => (Some(tag), rest),
        None => (None, id),
    }
}

impl Reporter for Tagged {
    fn report(&self, event: Event) {
        self.inner.report(match event {
            Event::Status { message } => Event::Status {
                message: self.text(message),
            },
            Event::Warning { message } => Event::Warning {
                message: self.text(message),
            },
            Event::Timing { phase, elapsed } => Event::Timing {
                phase: self.text(phase),
                elapsed,
            },
            Event::StepStarted { id, name } => Event::StepStarted {
                id: self.id(id),
                name,
            },
            Event::StepOutput { id, line } => Event::StepOutput {
                id: self.id(id),
                line,
            },
            Event::StepDone {
                id,
                cached,
                elapsed,
            } => Event::StepDone {
                id: self.id(id),
                cached,
                elapsed,
            },
            Event::CacheMiss { id, reasons } => Event::CacheMiss {
                id: self.id(id),
                reasons,
            },
            Event::TransferStarted {
                id,
                label,
                total,
                offset,
                direction,
            } => Event::TransferStarted {
                id: self.id(id),
                label: self.text(label),
                total,
                offset,
                direction,
            },
            Event::TransferProgress { id, bytes } => Event::TransferProgress {
                id: self.id(id),
                bytes,
            },
            Event::TransferDone {
                id,
                label,
                outcome,
                elapsed,
            } => Event::TransferDone {
                id: self.id(id),
                label: self.text(label),
                outcome,
                elapsed,
            },
        });
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tagged_events_name_their_target() {
        let rec = Arc::new(RecordingReporter::default());
        let web = Tagged::new("web", rec.clone());
        web.report(Event::StepStarted {
            id: "3".into(),
            name: "[1/2] RUN true".into(),
        });
        web.report(Event::Status {
            message: "Resolving busybox".into(),
        });
        let events = rec.events();
        assert_eq!(
            events[0],
            Event::StepStarted {
                id: "web|3".into(),
                name: "[1/2] RUN true".into()
            }
        );
        assert_eq!(
            events[1],
            Event::Status {
                message: "[web] Resolving busybox".into()
            }
        );
        assert_eq!(split_tag("web|3"), (Some("web"), "3"));
        assert_eq!(split_tag("3"), (None, "3"));
    }
}
