//! `resample-bench [--seconds 60]`: resamples a test signal to 8 kHz with the resampler the
//! prompt loader uses (`callplane_media::wav::resample_rubato_to_8k`), from 16, 22.05
//! (espeak-ng's rate), 24 (OpenAI's TTS), 44.1 and 48 kHz. (It compared the hand-written
//! Kaiser resampler this replaced; the figures are in docs/performance.md.) The signal: 1 kHz and 3.3 kHz (pass band: must come through at 0 dB) and
//! 5.5 kHz (above 4 kHz: must be removed, else it folds to 2.5 kHz), 0.3 each. Prints one JSON
//! line per rate and resampler: time per second of input (best of 3), and the gains (dB) at 1
//! kHz, 3.3 kHz and of the 2.5 kHz alias, each measured by a Goertzel filter over the output.

use std::time::Instant;

fn goertzel(x: &[f32], freq: f64, rate: f64) -> f64 {
    let w = 2.0 * std::f64::consts::PI * freq / rate;
    let c = 2.0 * w.cos();
    let (mut s1, mut s2) = (0.0f64, 0.0f64);
    for &v in x {
        let s0 = f64::from(v) + c * s1 - s2;
        s2 = s1;
        s1 = s0;
    }
    2.0 * (s1 * s1 + s2 * s2 - c * s1 * s2).max(0.0).sqrt() / x.len() as f64
}

fn db(amplitude: f64) -> f64 {
    20.0 * (amplitude / 0.3).max(1e-12).log10()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let seconds: f64 = args
        .iter()
        .position(|a| a == "--seconds")
        .and_then(|i| args.get(i + 1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(60.0);
    type Resample = fn(&[f32], u32) -> Vec<f32>;
    let impls: [(&str, Resample); 1] = [("rubato", callplane_media::wav::resample_rubato_to_8k)];
    for rate in [16_000u32, 22_050, 24_000, 44_100, 48_000] {
        let n = (seconds * f64::from(rate)) as usize;
        let input: Vec<f32> = (0..n)
            .map(|i| {
                let t = i as f64 / f64::from(rate);
                let tone = |f: f64| 0.3 * (2.0 * std::f64::consts::PI * f * t).sin();
                (tone(1000.0) + tone(3300.0) + tone(5500.0)) as f32
            })
            .collect();
        for (name, f) in impls {
            let mut best = f64::MAX;
            let mut out = Vec::new();
            for _ in 0..3 {
                let t0 = Instant::now();
                out = f(&input, rate);
                best = best.min(t0.elapsed().as_secs_f64());
            }
            // Away from the edges (filter start-up).
            let mid = &out[out.len() / 10..out.len() * 9 / 10];
            println!(
                "{{\"rate\":{rate},\"resampler\":\"{name}\",\"ms_per_input_second\":{:.3},\"out_samples\":{},\"expected_samples\":{},\"gain_1k_db\":{:.3},\"gain_3k3_db\":{:.3},\"alias_2k5_db\":{:.1}}}",
                best * 1000.0 / seconds,
                out.len(),
                (n as u64 * 8000 / u64::from(rate)),
                db(goertzel(mid, 1000.0, 8000.0)),
                db(goertzel(mid, 3300.0, 8000.0)),
                db(goertzel(mid, 2500.0, 8000.0)),
            );
        }
    }
}
