//! Input level for the speech detector: a quiet speaker (a telephone line, a microphone across the
//! room) is raised before the detector judges the audio, so whether a window is speech depends on
//! what it sounds like, not on how loud it is.
//!
//! Silero's probability falls with the level: "Hello?" said on a telephone line with its loudest
//! 32 ms at -37 dBFS scores 0.6–0.9 for only 160 ms and never starts a turn, and raised by 12 dB or
//! more it is one turn; white and pink noise, a breath and a cough stay under 0.5 at every gain
//! from 0 to +24 dB (`processors/examples/vad_level.rs` measures both). So the gain only ever
//! raises: speech whose loudest windows reach [`TARGET_DB`] is judged exactly as before.
//!
//! The gain follows the speech's peak level (instant attack, slow release), the way a speech
//! automatic gain control does, rather than normalising each window: the soft end of a word keeps
//! the gain of its loud start, instead of being raised to the same level as the word. Windows
//! under the VAD's `min_volume_db` floor are neither raised nor move the level: they are silence
//! whatever the model says (the floor is checked on the audio as it arrives, so far-away speech
//! stays ignored).
//! Only the detector hears the raised audio; the frames travel on as they came (Whisper heard the
//! quiet recordings no better raised: 8 word errors in the human set either way, 10 raised to
//! -12 dBFS).

/// Level (dBFS RMS of a detector window) the speech's loudest windows are raised to.
pub const TARGET_DB: f32 = -20.0;
/// How fast the tracked peak level falls once the speech gets quieter (dB per second): slow
/// enough that the pauses and soft syllables of one utterance keep its gain.
const RELEASE_DB_PER_S: f32 = 6.0;

/// Automatic gain in front of a speech detector; see the module documentation.
#[derive(Debug, Clone)]
pub struct AutoGain {
    max_gain_db: f32,
    floor_db: f32,
    /// Peak level of the speech so far, falling at [`RELEASE_DB_PER_S`]; -inf before any.
    level_db: f32,
    raised: Vec<i16>,
}

impl AutoGain {
    /// A gain of at most `max_gain_db` that ignores windows under `floor_db` when it tracks the
    /// level.
    pub fn new(max_gain_db: f32, floor_db: f32) -> Self {
        Self { max_gain_db: max_gain_db.max(0.0), floor_db, level_db: f32::NEG_INFINITY, raised: Vec::new() }
    }

    /// The gain (dB) for the next window of `secs` seconds whose level is `rms_db`.
    pub fn gain_db(&mut self, rms_db: f32, secs: f32) -> f32 {
        self.level_db -= RELEASE_DB_PER_S * secs;
        if rms_db < self.floor_db {
            // Silence whatever the detector says: heard as it is, so the detector's memory of
            // the silence before speech is what it was without the gain (raised, it moved the
            // start of some loud recordings by up to 128 ms).
            return 0.0;
        }
        self.level_db = self.level_db.max(rms_db);
        (TARGET_DB - self.level_db).clamp(0.0, self.max_gain_db)
    }

    /// `window` (level `rms_db`, `secs` long) as the detector should hear it: borrowed as it is
    /// when no gain is needed.
    pub fn apply<'a>(&'a mut self, window: &'a [i16], rms_db: f32, secs: f32) -> &'a [i16] {
        let gain = self.gain_db(rms_db, secs);
        if gain <= 0.0 {
            return window;
        }
        let k = 10f32.powf(gain / 20.0);
        self.raised.clear();
        self.raised.extend(window.iter().map(|&s| (f32::from(s) * k).clamp(-32768.0, 32767.0) as i16));
        &self.raised
    }

    /// Forgets the level (after a gap in the audio).
    pub fn reset(&mut self) {
        self.level_db = f32::NEG_INFINITY;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: f32 = 0.032;

    #[test]
    fn loud_speech_is_left_alone() {
        let mut g = AutoGain::new(24.0, -45.0);
        for level in [-15.0, -20.0, -60.0, -18.0] {
            assert_eq!(g.gain_db(level, W), 0.0, "at {level} dBFS");
        }
        let w = [1000i16, -2000, 3000];
        assert!(std::ptr::eq(g.apply(&w, -12.0, W), &w[..]), "no copy when no gain");
    }

    #[test]
    fn quiet_speech_is_raised_to_the_target_and_keeps_its_gain_through_soft_parts() {
        let mut g = AutoGain::new(24.0, -45.0);
        assert!((g.gain_db(-37.0, W) - 17.0).abs() < 0.01);
        // A softer syllable 100 ms on keeps (nearly) the gain of the loud one: not raised to
        // the target itself.
        for _ in 0..2 {
            g.gain_db(-42.0, W);
        }
        let soft = g.gain_db(-42.0, W);
        assert!((17.0..17.7).contains(&soft), "{soft}");
        // Louder speech lowers the gain at once.
        assert!((g.gain_db(-30.0, W) - 10.0).abs() < 0.01);
    }

    #[test]
    fn the_gain_is_bounded_and_silence_is_not_raised() {
        let mut g = AutoGain::new(12.0, -45.0);
        assert_eq!(g.gain_db(-40.0, W), 12.0, "at most max_gain_db");
        let mut g = AutoGain::new(40.0, -45.0);
        assert!((g.gain_db(-40.0, W) - 20.0).abs() < 0.01);
        assert_eq!(g.gain_db(-80.0, W), 0.0, "under the floor");
        assert_eq!(AutoGain::new(0.0, -45.0).gain_db(-40.0, W), 0.0, "0 turns it off");
    }

    #[test]
    fn apply_scales_and_clips() {
        let mut g = AutoGain::new(24.0, -45.0);
        // -40 dBFS → +20 dB: ten times the amplitude; a peak that would overflow is clipped.
        let raised = g.apply(&[100, -100, 5000], -40.0, W).to_vec();
        assert_eq!(raised[..2], [1000, -1000]);
        assert_eq!(raised[2], 32767);
        g.reset();
        assert!((g.gain_db(-30.0, W) - 10.0).abs() < 0.01, "reset forgets the level");
    }
}
