//! Stages built side by side: each stage runs on its own thread as soon as a slot is free
//! (as many slots as cores), and waits for another stage only at the instruction that needs
//! it (`FROM <stage>`, `COPY --from=<stage>`, `RUN --mount=from=<stage>`), as BuildKit does.
//! Stages start in dependency order, so a waiting stage only ever waits for one that has
//! already started: there is no deadlock however few the slots.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Condvar, Mutex, MutexGuard};

use super::error::BuildError;

/// What stage threads share: the finished stages and the free slots.
pub struct StageBoard<T> {
    state: Mutex<State<T>>,
    changed: Condvar,
}

struct State<T> {
    /// The stages this build runs; waiting for any other would never end.
    planned: BTreeSet<usize>,
    done: BTreeMap<usize, Option<T>>,
    /// Stages that failed only because a stage they waited for failed.
    failed_waiting: BTreeSet<usize>,
    free_slots: usize,
}

impl<T: Clone> StageBoard<T> {
    pub fn new(slots: usize, planned: &[usize]) -> StageBoard<T> {
        StageBoard {
            state: Mutex::new(State {
                planned: planned.iter().copied().collect(),
                done: BTreeMap::new(),
                failed_waiting: BTreeSet::new(),
                free_slots: slots.max(1),
            }),
            changed: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Blocks until a slot is free and takes it.
    pub fn take_slot(&self) {
        let mut state = self.lock();
        while state.free_slots == 0 {
            state = self.changed.wait(state).unwrap_or_else(|p| p.into_inner());
        }
        state.free_slots -= 1;
    }

    /// Records how stage `index` ended (`None`: it failed) and frees its slot.
    pub fn finish(&self, index: usize, result: Option<T>) {
        let mut state = self.lock();
        state.done.insert(index, result);
        state.free_slots += 1;
        self.changed.notify_all();
    }

    /// Stage `waiter` needs stage `index`: blocks until it is built. Its slot is given back
    /// while it waits, so the stage it waits for can start.
    pub fn wait(&self, waiter: usize, index: usize, name: &str) -> Result<T, BuildError> {
        let mut state = self.lock();
        if !state.planned.contains(&index) {
            // e.g. named only after expansion, or by an ONBUILD trigger of a base image.
            return Err(BuildError::StageNotPlanned(name.to_string()));
        }
        if !state.done.contains_key(&index) {
            state.free_slots += 1;
            self.changed.notify_all();
            while !state.done.contains_key(&index) {
                state = self.changed.wait(state).unwrap_or_else(|p| p.into_inner());
            }
            while state.free_slots == 0 {
                state = self.changed.wait(state).unwrap_or_else(|p| p.into_inner());
            }
            state.free_slots -= 1;
        }
        match state.done.get(&index) {
            Some(Some(result)) => Ok(result.clone()),
            _ => {
                state.failed_waiting.insert(waiter);
                Err(BuildError::StageFailed(name.to_string()))
            }
        }
    }

    /// Whether some stage has failed (no new stage should start).
    pub fn any_failed(&self) -> bool {
        self.lock().done.values().any(Option::is_none)
    }

    /// Whether stage `index` should stop before its next step because another stage failed
    /// (then it counts as failed because of that one).
    pub fn cancelled(&self, index: usize) -> bool {
        let mut state = self.lock();
        let failed = state.done.values().any(Option::is_none);
        if failed {
            state.failed_waiting.insert(index);
        }
        failed
    }

    /// Whether `index` failed only because a stage it needed did.
    pub fn failed_waiting(&self, index: usize) -> bool {
        self.lock().failed_waiting.contains(&index)
    }

    pub fn take(&self, index: usize) -> Option<T> {
        self.lock().done.remove(&index).flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_stage_waits_for_the_one_it_needs_and_gives_its_slot_back_meanwhile() {
        // One slot: stage 1 starts, waits for stage 0, which can only run on the slot stage 1
        // gave back.
        let board: StageBoard<u32> = StageBoard::new(1, &[0, 1]);
        std::thread::scope(|s| {
            board.take_slot();
            let waiter = s.spawn(|| {
                let got = board.wait(1, 0, "zero");
                board.finish(1, got.as_ref().ok().map(|v| v + 1));
                got.map_err(|e| e.to_string())
            });
            std::thread::sleep(Duration::from_millis(50));
            board.take_slot();
            board.finish(0, Some(41));
            assert_eq!(waiter.join().unwrap(), Ok(41));
        });
        assert_eq!(board.take(1), Some(42));
    }

    #[test]
    fn a_failed_stage_fails_the_ones_waiting_for_it() {
        let board: StageBoard<u32> = StageBoard::new(2, &[0, 1]);
        assert!(
            board.wait(1, 5, "five").is_err(),
            "an unplanned stage is an error"
        );
        board.take_slot();
        board.finish(0, None);
        assert!(board.any_failed());
        let err = board.wait(1, 0, "zero").unwrap_err();
        assert!(err.to_string().contains("stage zero failed"), "{err}");
        assert!(board.failed_waiting(1));
        assert!(!board.failed_waiting(0));
        // A stage still running stops before its next step.
        assert!(board.cancelled(2));
        assert!(board.failed_waiting(2));
    }
}
