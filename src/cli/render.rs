//! Renders progress events: indicatif bars on a terminal, plain lines elsewhere (CI logs).
//! Everything goes to stderr; stdout is kept for data.

use std::collections::HashMap;
use std::io::{IsTerminal as _, Write as _};
use std::sync::Mutex;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::progress::{split_tag, Direction, Event, Reporter, TransferOutcome};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ProgressMode {
    Auto,
    Plain,
    Tty,
}

/// Picks the renderer: `auto` means bars when stderr is a terminal.
pub fn reporter(mode: ProgressMode) -> Box<dyn Reporter> {
    let inner = renderer(mode);
    if timings_wanted() {
        Box::new(Timings { inner: Some(inner) })
    } else {
        inner
    }
}

/// The reporter of `--quiet`: nothing, or only the phase timings when `KILN_TIMINGS` is set.
pub fn quiet_reporter() -> Box<dyn Reporter> {
    if timings_wanted() {
        Box::new(Timings { inner: None })
    } else {
        Box::new(crate::progress::NullReporter)
    }
}

/// The reporter of a command with `--quiet` and `--progress`.
pub fn command_reporter(quiet: bool, mode: ProgressMode) -> std::sync::Arc<dyn Reporter> {
    std::sync::Arc::from(if quiet {
        quiet_reporter()
    } else {
        reporter(mode)
    })
}

fn timings_wanted() -> bool {
    std::env::var_os("KILN_TIMINGS").is_some_and(|v| !v.is_empty() && v != "0")
}

/// Prints [`Event::Timing`] lines (`timing 1.23s unpack layer 1 …`) to stderr and passes every
/// other event on; the renderers themselves ignore timings.
struct Timings {
    inner: Option<Box<dyn Reporter>>,
}

impl Reporter for Timings {
    fn report(&self, event: Event) {
        match event {
            Event::Timing { phase, elapsed } => {
                let _ = writeln!(
                    std::io::stderr().lock(),
                    "timing {:>7.3}s {phase}",
                    elapsed.as_secs_f64()
                );
            }
            other => {
                if let Some(inner) = &self.inner {
                    inner.report(other);
                }
            }
        }
    }
}

fn renderer(mode: ProgressMode) -> Box<dyn Reporter> {
    let tty = match mode {
        ProgressMode::Tty => true,
        ProgressMode::Plain => false,
        ProgressMode::Auto => std::io::stderr().is_terminal(),
    };
    if tty {
        Box::new(TtyRenderer::new())
    } else {
        Box::new(PlainRenderer::default())
    }
}

pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit + 1 < UNITS.len() {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// One line per start and end of a transfer, with sizes, times and speeds.
#[derive(Default)]
pub struct PlainRenderer {
    /// Running transfers: direction and bytes moved so far.
    transfers: Mutex<HashMap<String, (Direction, u64)>>,
}

/// What a finished transfer says after its label (`Pushed`, `Layer already exists`, …);
/// `moved` and `elapsed` only matter for `Transferred`.
fn outcome_text(
    outcome: &TransferOutcome,
    direction: Direction,
    moved: u64,
    elapsed: Duration,
) -> String {
    match outcome {
        TransferOutcome::AlreadyPresent => "already present".into(),
        TransferOutcome::ExistsRemotely => "Layer already exists".into(),
        TransferOutcome::Mounted { from } => format!("Mounted from {from}"),
        TransferOutcome::Failed => "failed".into(),
        TransferOutcome::Transferred => {
            let secs = elapsed.as_secs_f64().max(0.001);
            let verb = match direction {
                Direction::Download => "done",
                Direction::Upload => "Pushed",
            };
            format!(
                "{verb} {} in {:.1}s ({}/s)",
                human_bytes(moved),
                secs,
                human_bytes((moved as f64 / secs) as u64)
            )
        }
    }
}

/// How a plain line names a step: `#3`, or `[web] #3` for a `kiln bake` target's step.
fn step_ref(id: &str) -> String {
    match split_tag(id) {
        (Some(tag), own) => format!("[{tag}] #{own}"),
        (None, own) => format!("#{own}"),
    }
}

impl Reporter for PlainRenderer {
    fn report(&self, event: Event) {
        let mut err = std::io::stderr().lock();
        let mut transfers = self.transfers.lock().unwrap_or_else(|p| p.into_inner());
        let _ = match event {
            Event::Status { message } => writeln!(err, "{message}"),
            Event::Warning { message } => writeln!(err, "warning: {message}"),
            Event::Timing { .. } => Ok(()),
            Event::StepStarted { id, name } => writeln!(err, "{} {name}", step_ref(&id)),
            Event::StepOutput { id, line } => writeln!(err, "{} {line}", step_ref(&id)),
            Event::CacheMiss { id, reasons } => {
                for reason in reasons {
                    let _ = writeln!(err, "{} cache miss: {reason}", step_ref(&id));
                }
                Ok(())
            }
            Event::StepDone {
                id,
                cached,
                elapsed,
            } => {
                if cached {
                    writeln!(err, "{} CACHED", step_ref(&id))
                } else {
                    writeln!(err, "{} DONE {:.1}s", step_ref(&id), elapsed.as_secs_f64())
                }
            }
            Event::TransferStarted {
                id,
                label,
                total,
                offset,
                direction,
            } => {
                let size = total
                    .map(human_bytes)
                    .unwrap_or_else(|| "unknown size".into());
                let resumed = if offset > 0 {
                    format!(", resuming at {}", human_bytes(offset))
                } else {
                    String::new()
                };
                transfers.insert(id, (direction, 0));
                let verb = match direction {
                    Direction::Download => "downloading",
                    Direction::Upload => "Pushing",
                };
                writeln!(err, "{label}: {verb} {size}{resumed}")
            }
            Event::TransferProgress { id, bytes } => {
                if let Some(t) = transfers.get_mut(&id) {
                    t.1 += bytes;
                }
                Ok(())
            }
            Event::TransferDone {
                id,
                label,
                outcome,
                elapsed,
            } => {
                let (direction, moved) = transfers.remove(&id).unwrap_or((Direction::Download, 0));
                let text = outcome_text(&outcome, direction, moved, elapsed);
                writeln!(err, "{label}: {text}")
            }
        };
    }
}

/// A bar per transfer (bytes, speed) under a MultiProgress.
pub struct TtyRenderer {
    multi: MultiProgress,
    bars: Mutex<HashMap<String, ProgressBar>>,
}

impl TtyRenderer {
    fn new() -> TtyRenderer {
        TtyRenderer {
            multi: MultiProgress::with_draw_target(ProgressDrawTarget::stderr()),
            bars: Mutex::new(HashMap::new()),
        }
    }

    fn style(known_total: bool) -> ProgressStyle {
        let template = if known_total {
            "{prefix:.bold} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {msg}"
        } else {
            "{prefix:.bold} {spinner} {bytes} {bytes_per_sec} {msg}"
        };
        // Bold is the only styling; console (under indicatif) honours NO_COLOR for it.
        ProgressStyle::with_template(template)
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ")
    }
}

impl Reporter for TtyRenderer {
    fn report(&self, event: Event) {
        let mut bars = self.bars.lock().unwrap_or_else(|p| p.into_inner());
        match event {
            Event::Status { message } => {
                let _ = self.multi.println(message);
            }
            Event::Warning { message } => {
                let _ = self.multi.println(format!("warning: {message}"));
            }
            Event::Timing { .. } => {}
            Event::StepStarted { id, name } => {
                let bar = self.multi.add(ProgressBar::new_spinner());
                bar.set_style(
                    ProgressStyle::with_template("{spinner} {prefix:.bold} {msg} {elapsed}")
                        .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                );
                bar.set_prefix(match split_tag(&id) {
                    (Some(tag), _) => format!("[{tag}] {name}"),
                    (None, _) => name,
                });
                bar.enable_steady_tick(Duration::from_millis(120));
                bars.insert(format!("step-{id}"), bar);
            }
            Event::CacheMiss { id, reasons } => {
                let prefix = bars
                    .get(&format!("step-{id}"))
                    .map(|b| b.prefix())
                    .unwrap_or_else(|| step_ref(&id));
                for reason in reasons {
                    let _ = self
                        .multi
                        .println(format!("{prefix}: cache miss: {reason}"));
                }
            }
            Event::StepOutput { id, line } => {
                if let Some(bar) = bars.get(&format!("step-{id}")) {
                    let short: String = line.chars().take(100).collect();
                    bar.set_message(short);
                }
            }
            Event::StepDone {
                id,
                cached,
                elapsed,
            } => {
                if let Some(bar) = bars.remove(&format!("step-{id}")) {
                    bar.set_style(
                        ProgressStyle::with_template("  {prefix:.bold} {msg}")
                            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                    );
                    bar.finish_with_message(if cached {
                        "CACHED".to_string()
                    } else {
                        format!("{:.1}s", elapsed.as_secs_f64())
                    });
                }
            }
            Event::TransferStarted {
                id,
                label,
                total,
                offset,
                direction: _,
            } => {
                // A transfer started again (an upload restarted or resumed) keeps its bar.
                if let Some(bar) = bars.get(&id) {
                    bar.set_position(offset);
                    return;
                }
                let bar = self.multi.add(match total {
                    Some(t) => ProgressBar::new(t),
                    None => ProgressBar::no_length(),
                });
                bar.set_style(Self::style(total.is_some()));
                bar.set_prefix(label);
                bar.set_position(offset);
                bar.enable_steady_tick(Duration::from_millis(120));
                bars.insert(id, bar);
            }
            Event::TransferProgress { id, bytes } => {
                if let Some(bar) = bars.get(&id) {
                    bar.inc(bytes);
                }
            }
            Event::TransferDone {
                id,
                label,
                outcome,
                elapsed,
            } => {
                let msg = match &outcome {
                    TransferOutcome::Transferred => {
                        format!("done in {:.1}s", elapsed.as_secs_f64())
                    }
                    other => outcome_text(other, Direction::Upload, 0, elapsed),
                };
                match bars.remove(&id) {
                    Some(bar) => bar.finish_with_message(msg),
                    // Nothing moved, so there was no bar: one line says why.
                    None => {
                        let _ = self.multi.println(format!("{label}: {msg}"));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tagged_steps_start_with_their_target() {
        assert_eq!(step_ref("web|3"), "[web] #3");
        assert_eq!(step_ref("3"), "#3");
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human_bytes(999), "999 B");
        assert_eq!(human_bytes(1_500), "1.5 kB");
        assert_eq!(human_bytes(25_100_000), "25.1 MB");
    }
}
