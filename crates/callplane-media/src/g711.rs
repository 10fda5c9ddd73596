//! ITU-T G.711 µ-law and A-law companding: sample encode/decode and direct
//! µ-law <-> A-law transcoding. Decode and transcode are 256-entry tables built at
//! compile time; encode is a few integer ops (cheaper than a 64 KiB table in cache).

/// µ-law bias added before segment search (G.711 / Sun reference implementation).
const ULAW_BIAS: i32 = 0x84;
/// Largest magnitude µ-law can represent after biasing; louder input is clipped.
const ULAW_CLIP: i32 = 32635;

/// Encode one 16-bit linear sample to µ-law.
#[inline]
pub const fn linear_to_ulaw(pcm: i16) -> u8 {
    let mut v = pcm as i32;
    let sign: u8 = if v < 0 {
        // -32768 would overflow on negation in i16 but not in i32; the clip handles it.
        v = -v;
        0x80
    } else {
        0
    };
    if v > ULAW_CLIP {
        v = ULAW_CLIP;
    }
    v += ULAW_BIAS;
    // Exponent = position of the highest set bit above bit 7 (0..=7).
    // v >= ULAW_BIAS so v >> 7 >= 1 and the exponent is 0..=7.
    let exponent = 31 - ((v >> 7) as u32 | 1).leading_zeros() as i32;
    let mantissa = (v >> (exponent + 3)) & 0x0F;
    !(sign | ((exponent as u8) << 4) | mantissa as u8)
}

/// Decode one µ-law byte to 16-bit linear (computed; see [`ulaw_to_linear`] for the table).
const fn ulaw_decode_calc(u: u8) -> i16 {
    let u = !u;
    let t = (((u & 0x0F) as i32) << 3) + ULAW_BIAS;
    let t = t << ((u & 0x70) >> 4);
    if u & 0x80 != 0 {
        (ULAW_BIAS - t) as i16
    } else {
        (t - ULAW_BIAS) as i16
    }
}

/// Encode one 16-bit linear sample to A-law.
#[inline]
pub const fn linear_to_alaw(pcm: i16) -> u8 {
    // A-law works on 13-bit magnitudes; the mask carries the sign and the even-bit inversion.
    let mut v = (pcm as i32) >> 3;
    let mask: u8 = if v >= 0 {
        0xD5
    } else {
        v = -v - 1;
        0x55
    };
    // Segment = number of significant bits above the 5-bit first segment (0..=7, 8 = clip).
    let seg = 32 - ((v >> 5) as u32).leading_zeros() as i32; // v < 2^12 so seg <= 7
    if seg >= 8 {
        return 0x7F ^ mask;
    }
    let aval = if seg < 2 {
        (seg << 4) | ((v >> 1) & 0x0F)
    } else {
        (seg << 4) | ((v >> seg) & 0x0F)
    };
    (aval as u8) ^ mask
}

/// Decode one A-law byte to 16-bit linear (computed; see [`alaw_to_linear`] for the table).
const fn alaw_decode_calc(a: u8) -> i16 {
    let a = a ^ 0x55;
    let mut t = ((a & 0x0F) as i32) << 4;
    let seg = ((a & 0x70) >> 4) as i32;
    match seg {
        0 => t += 8,
        1 => t += 0x108,
        _ => {
            t += 0x108;
            t <<= seg - 1;
        }
    }
    if a & 0x80 != 0 {
        t as i16
    } else {
        -t as i16
    }
}

const fn build_ulaw_table() -> [i16; 256] {
    let mut t = [0i16; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = ulaw_decode_calc(i as u8);
        i += 1;
    }
    t
}

const fn build_alaw_table() -> [i16; 256] {
    let mut t = [0i16; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = alaw_decode_calc(i as u8);
        i += 1;
    }
    t
}

/// µ-law byte -> linear sample.
pub static ULAW_DECODE: [i16; 256] = build_ulaw_table();
/// A-law byte -> linear sample.
pub static ALAW_DECODE: [i16; 256] = build_alaw_table();

const fn build_ulaw_to_alaw() -> [u8; 256] {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = linear_to_alaw(ulaw_decode_calc(i as u8));
        i += 1;
    }
    t
}

const fn build_alaw_to_ulaw() -> [u8; 256] {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = linear_to_ulaw(alaw_decode_calc(i as u8));
        i += 1;
    }
    t
}

/// µ-law byte -> A-law byte (via linear; one lookup per sample on the bridge path).
pub static ULAW_TO_ALAW: [u8; 256] = build_ulaw_to_alaw();
/// A-law byte -> µ-law byte.
pub static ALAW_TO_ULAW: [u8; 256] = build_alaw_to_ulaw();

/// Decode one µ-law byte.
#[inline]
pub fn ulaw_to_linear(u: u8) -> i16 {
    ULAW_DECODE[u as usize]
}

/// Decode one A-law byte.
#[inline]
pub fn alaw_to_linear(a: u8) -> i16 {
    ALAW_DECODE[a as usize]
}

/// Encode `pcm` to µ-law into `out`; converts `min(pcm.len(), out.len())` samples and returns that count.
pub fn encode_ulaw(pcm: &[i16], out: &mut [u8]) -> usize {
    let n = pcm.len().min(out.len());
    for (o, &s) in out.iter_mut().zip(pcm) {
        *o = linear_to_ulaw(s);
    }
    n
}

/// Encode `pcm` to A-law into `out`; returns the number of samples converted.
pub fn encode_alaw(pcm: &[i16], out: &mut [u8]) -> usize {
    let n = pcm.len().min(out.len());
    for (o, &s) in out.iter_mut().zip(pcm) {
        *o = linear_to_alaw(s);
    }
    n
}

/// Decode µ-law bytes into `out`; returns the number of samples decoded.
pub fn decode_ulaw(data: &[u8], out: &mut [i16]) -> usize {
    let n = data.len().min(out.len());
    for (o, &b) in out.iter_mut().zip(data) {
        *o = ULAW_DECODE[b as usize];
    }
    n
}

/// Decode A-law bytes into `out`; returns the number of samples decoded.
pub fn decode_alaw(data: &[u8], out: &mut [i16]) -> usize {
    let n = data.len().min(out.len());
    for (o, &b) in out.iter_mut().zip(data) {
        *o = ALAW_DECODE[b as usize];
    }
    n
}

/// Transcode µ-law to A-law without allocating; returns the number of bytes written
/// (`min(input.len(), out.len())`).
pub fn transcode_ulaw_to_alaw(input: &[u8], out: &mut [u8]) -> usize {
    let n = input.len().min(out.len());
    for (o, &b) in out.iter_mut().zip(input) {
        *o = ULAW_TO_ALAW[b as usize];
    }
    n
}

/// Transcode A-law to µ-law without allocating; returns the number of bytes written.
pub fn transcode_alaw_to_ulaw(input: &[u8], out: &mut [u8]) -> usize {
    let n = input.len().min(out.len());
    for (o, &b) in out.iter_mut().zip(input) {
        *o = ALAW_TO_ULAW[b as usize];
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_ulaw_values() {
        assert_eq!(ulaw_to_linear(0xFF), 0);
        assert_eq!(ulaw_to_linear(0x7F), 0);
        assert_eq!(ulaw_to_linear(0x00), -32124);
        assert_eq!(ulaw_to_linear(0x80), 32124);
        assert_eq!(linear_to_ulaw(0), 0xFF);
        assert_eq!(linear_to_ulaw(i16::MAX), 0x80);
        assert_eq!(linear_to_ulaw(i16::MIN), 0x00);
        assert_eq!(linear_to_ulaw(-1), 0x7F);
    }

    #[test]
    fn known_alaw_values() {
        assert_eq!(alaw_to_linear(0xD5), 8);
        assert_eq!(alaw_to_linear(0x55), -8);
        assert_eq!(alaw_to_linear(0xAA), 32256);
        assert_eq!(alaw_to_linear(0x2A), -32256);
        assert_eq!(linear_to_alaw(0), 0xD5);
        assert_eq!(linear_to_alaw(-1), 0x55);
        assert_eq!(linear_to_alaw(i16::MAX), 0xAA);
        assert_eq!(linear_to_alaw(i16::MIN), 0x2A);
    }

    #[test]
    fn codeword_round_trip_is_identity() {
        // Every codeword decodes to a value that encodes back to the same codeword
        // (except µ-law's negative zero 0x7F, which re-encodes as positive zero 0xFF).
        for b in 0..=255u8 {
            let u = linear_to_ulaw(ulaw_to_linear(b));
            if b == 0x7F {
                assert_eq!(u, 0xFF);
            } else {
                assert_eq!(u, b, "ulaw {b:#x}");
            }
            assert_eq!(linear_to_alaw(alaw_to_linear(b)), b, "alaw {b:#x}");
        }
    }

    #[test]
    fn linear_round_trip_error_is_bounded() {
        // Quantisation error of a log companded sample is at most half a step; steps
        // grow with magnitude, so check relative error for large values and absolute for small.
        for v in (i16::MIN..=i16::MAX).step_by(7) {
            let u = ulaw_to_linear(linear_to_ulaw(v)) as i32;
            let a = alaw_to_linear(linear_to_alaw(v)) as i32;
            let v = (v as i32).clamp(-32124, 32124);
            let tol = (v.abs() / 16).max(16);
            assert!((u - v).abs() <= tol, "ulaw {v} -> {u}");
            let va = v.clamp(-32256, 32256);
            assert!((a - va).abs() <= tol.max(32), "alaw {v} -> {a}");
        }
    }

    #[test]
    fn encoding_is_monotonic() {
        let mut prev_u = i16::MIN;
        let mut prev_a = i16::MIN;
        for v in i16::MIN..=i16::MAX {
            let u = ulaw_to_linear(linear_to_ulaw(v));
            let a = alaw_to_linear(linear_to_alaw(v));
            assert!(u >= prev_u && a >= prev_a, "at {v}");
            prev_u = u;
            prev_a = a;
        }
    }

    #[test]
    fn transcode_tables_match_linear_path() {
        let input: Vec<u8> = (0..=255).collect();
        let mut a = [0u8; 256];
        let mut u = [0u8; 256];
        assert_eq!(transcode_ulaw_to_alaw(&input, &mut a), 256);
        assert_eq!(transcode_alaw_to_ulaw(&input, &mut u), 256);
        for i in 0..256 {
            assert_eq!(a[i], linear_to_alaw(ulaw_to_linear(i as u8)));
            assert_eq!(u[i], linear_to_ulaw(alaw_to_linear(i as u8)));
        }
        // A-law -> µ-law -> A-law keeps the value within one A-law step.
        for b in 0..=255u8 {
            let back = ULAW_TO_ALAW[ALAW_TO_ULAW[b as usize] as usize];
            let d = (alaw_to_linear(back) as i32 - alaw_to_linear(b) as i32).abs();
            assert!(d <= (alaw_to_linear(b) as i32).abs() / 8 + 16, "{b:#x}");
        }
    }

    #[test]
    fn slice_helpers_respect_shorter_buffer() {
        let pcm = [0i16, 1000, -1000, 20000];
        let mut out = [0u8; 2];
        assert_eq!(encode_ulaw(&pcm, &mut out), 2);
        assert_eq!(out, [0xFF, linear_to_ulaw(1000)]);
        let mut back = [0i16; 8];
        assert_eq!(decode_alaw(&[0xD5, 0x55], &mut back), 2);
        assert_eq!(&back[..2], &[8, -8]);
        let mut e = [0u8; 4];
        assert_eq!(encode_alaw(&pcm, &mut e), 4);
        assert_eq!(decode_ulaw(&[0xFF; 3], &mut back[..1]), 1);
    }
}
