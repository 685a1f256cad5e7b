mod speech_in_util;
use std::time::Instant;
use speech_in_util::*;
use whisper_rs::*;
#[test]
fn probe() {
    install_logging_hooks();
    let ctx = WhisperContext::new_with_params(&model("ggml-tiny.en.bin"), WhisperContextParameters::default()).unwrap();
    let mut st = ctx.create_state().unwrap();
    let a = to_f32(&espeak("Please turn off the lights in the kitchen.", "en-us"));
    for threads in [1i32, 2] {
        for max_tokens in [1, 0] {
            for _ in 0..2 {
                let mut p = FullParams::new(SamplingStrategy::Greedy { best_of: 1 });
                p.set_n_threads(threads);
                p.set_audio_ctx(157);
                p.set_temperature_inc(0.0);
                p.set_single_segment(true);
                p.set_max_tokens(max_tokens);
                p.set_print_progress(false);
                let t = Instant::now();
                st.full(p, &a).unwrap();
                let full = t.elapsed();
                let seg = st.get_segment(0).map(|s| (s.n_tokens(), s.to_str_lossy().unwrap().to_string()));
                println!("threads {threads} max_tokens {max_tokens}: {full:?} {seg:?}");
            }
        }
    }
}
