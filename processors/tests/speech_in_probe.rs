mod speech_in_util;
use slowcat_processors::stt::{AudioCtx, WhisperEngine};
use speech_in_util::*;
#[test]
fn probe() {
    let mut e = WhisperEngine::load(&model("ggml-tiny.en.bin"), 1, "en", AudioCtx::Auto).unwrap();
    let sents = [
        "Please turn off the lights in the kitchen.",
        "What is the weather like tomorrow in Paris?",
        "Can you remind me to call my mother at six o'clock?",
        "The train to London leaves from platform nine.",
        "My favorite color is blue and I like to swim.",
        "How far is it from here to the airport?",
    ];
    let clips: Vec<Vec<f32>> = sents.iter().map(|s| to_f32(&padded(&espeak(s, "en-us"), 0.3, 0.3))).collect();
    for margin in [32u32, 64, 128, 256, 10_000] {
        let mut tot = 0.0;
        let mut ms = 0;
        for (s, a) in sents.iter().zip(&clips) {
            let n = (a.len() as f64 / 16000.0 * 50.0).ceil() as u32 + margin;
            let ctx = if n >= 1500 { AudioCtx::Fixed(0) } else { AudioCtx::Fixed(n) };
            let r = e.transcribe_with(a, ctx).unwrap();
            tot += wer(s, &r.text);
            ms += r.elapsed.as_millis();
            println!("margin {margin} {:?} -> {:?}", s, r.text);
        }
        println!("== margin {margin}: mean WER {:.3}, total {ms} ms", tot / 6.0);
    }
}
