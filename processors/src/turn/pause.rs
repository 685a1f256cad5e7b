//! Work started when the user pauses and confirmed when the VAD reports the stop.
//!
//! The VAD's `UserSpeechPaused { at }` comes at the first silence after speech, its
//! `UserStoppedSpeaking { at }` once the silence has lasted its `stop_ms`. End-of-turn work
//! (Smart Turn's verdict, Whisper's early transcript) that starts at the pause is ready sooner, and
//! is still right at the stop when no speech came in between: when the stop names the same end of
//! speech as the pause. Speech in between makes it stale; it is abandoned so it stops using the CPU.

use std::time::Duration;

/// Work that can be told it is no longer wanted.
pub trait Abandon {
    /// Stops the work, or has it skipped, as soon as it can; its result will not be used.
    fn abandon(self);
}

/// The work started at the latest pause, with the end of speech it was started for.
#[derive(Debug)]
pub struct PauseWork<W: Abandon> {
    started: Option<(Duration, W)>,
}

impl<W: Abandon> Default for PauseWork<W> {
    fn default() -> Self {
        Self { started: None }
    }
}

impl<W: Abandon> PauseWork<W> {
    /// Abandons the work of an earlier pause (the user spoke on since): call it before starting
    /// the work of a new pause, so the stale work stops before the new one needs the CPU or the
    /// model.
    pub fn abandon(&mut self) {
        if let Some((_, stale)) = self.started.take() {
            stale.abandon();
        }
    }

    /// Keeps `work`, started at a pause after speech that ended `at` (none: it could not start).
    pub fn started(&mut self, at: Duration, work: Option<W>) {
        self.abandon();
        self.started = work.map(|w| (at, w));
    }

    /// Where the speech ended for the work kept, if any.
    pub fn at(&self) -> Option<Duration> {
        self.started.as_ref().map(|(at, _)| *at)
    }

    /// The VAD reported the stop of speech that ended `at`: the work started at the pause this stop
    /// confirms (the same end of speech: none came since), or `None` after abandoning any other.
    pub fn confirm(&mut self, at: Duration) -> Option<W> {
        match self.started.take() {
            Some((paused, work)) if paused == at => Some(work),
            other => {
                if let Some((_, stale)) = other {
                    stale.abandon();
                }
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::rc::Rc;

    /// Records which work was abandoned.
    struct Work(u32, Rc<RefCell<Vec<u32>>>);

    impl Abandon for Work {
        fn abandon(self) {
            self.1.borrow_mut().push(self.0);
        }
    }

    #[test]
    fn the_stop_keeps_the_work_of_its_own_pause_and_abandons_any_other() {
        let abandoned = Rc::new(RefCell::new(Vec::new()));
        let work = |n| Some(Work(n, abandoned.clone()));
        let ms = Duration::from_millis;
        let mut p = PauseWork::default();
        // Paused at 1.0 s, the user spoke on and paused again at 1.5 s: the first is stale.
        p.started(ms(1000), work(1));
        p.started(ms(1500), work(2));
        assert_eq!(*abandoned.borrow(), [1]);
        assert_eq!(p.at(), Some(ms(1500)));
        // The stop confirms the second pause.
        assert_eq!(p.confirm(ms(1500)).map(|w| w.0), Some(2));
        assert_eq!(p.at(), None);
        // A stop after more speech than the pause heard: the pause's work is of too few words.
        p.started(ms(2000), work(3));
        assert!(p.confirm(ms(2400)).is_none());
        assert_eq!(*abandoned.borrow(), [1, 3]);
        // Speech resumed: abandoned at once.
        p.started(ms(3000), work(4));
        p.abandon();
        assert!(p.confirm(ms(3000)).is_none());
        assert_eq!(*abandoned.borrow(), [1, 3, 4]);
    }
}
