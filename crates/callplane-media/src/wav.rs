//! WAV files: loading prompts of any common format/rate/channel count as 8 kHz mono
//! 16-bit (our chunk walker and sample decoder, downmix, then rubato's windowed-sinc
//! resampler), and `WavWriter`, the incremental 8 kHz 16-bit writer for call recording (on
//! hound). Why the reader is ours and the rest is not: docs/decisions.md ("Audio files").

use std::path::Path;
use thiserror::Error;

/// Output sample rate of every loader here.
pub const TARGET_RATE: u32 = 8000;

/// Errors from reading or writing WAV files.
#[derive(Debug, Error)]
pub enum WavError {
    /// File system error.
    #[error("WAV I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// Does not start with a RIFF/WAVE header.
    #[error("not a RIFF/WAVE file")]
    NotWav,
    /// A header, chunk or the sample data ends early.
    #[error("truncated WAV file: {0}")]
    Truncated(&'static str),
    /// A required chunk is absent.
    #[error("WAV file has no {0} chunk")]
    MissingChunk(&'static str),
    /// Format code / bit depth combination we cannot decode.
    #[error("unsupported WAV format: {0}")]
    Unsupported(String),
    /// Header fields that contradict each other (zero channels, zero rate, ...).
    #[error("invalid WAV header: {0}")]
    Invalid(&'static str),
    /// Recording would exceed the 4 GiB RIFF limit.
    #[error("WAV file would exceed 4 GiB")]
    TooLarge,
}

/// Lowest and highest input sample rates accepted.
const MIN_RATE: u32 = 1000;
const MAX_RATE: u32 = 384_000;

const FORMAT_PCM: u16 = 1;
const FORMAT_FLOAT: u16 = 3;
const FORMAT_ALAW: u16 = 6;
const FORMAT_ULAW: u16 = 7;
const FORMAT_EXTENSIBLE: u16 = 0xFFFE;

/// Sample encodings the loader decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SampleFormat {
    U8,
    I16,
    I24,
    I32,
    F32,
    F64,
    Alaw,
    Ulaw,
}

impl SampleFormat {
    fn bytes(self) -> usize {
        match self {
            SampleFormat::U8 | SampleFormat::Alaw | SampleFormat::Ulaw => 1,
            SampleFormat::I16 => 2,
            SampleFormat::I24 => 3,
            SampleFormat::I32 | SampleFormat::F32 => 4,
            SampleFormat::F64 => 8,
        }
    }

    /// Decode one sample from exactly `bytes()` bytes to [-1.0, 1.0].
    fn decode(self, b: &[u8]) -> f32 {
        match (self, b) {
            (SampleFormat::U8, [x, ..]) => (*x as f32 - 128.0) / 128.0,
            (SampleFormat::I16, [a, b, ..]) => i16::from_le_bytes([*a, *b]) as f32 / 32768.0,
            (SampleFormat::I24, [a, b, c, ..]) => {
                // Place the 24 bits high in an i32 so the sign extends.
                i32::from_le_bytes([0, *a, *b, *c]) as f32 / 2_147_483_648.0
            }
            (SampleFormat::I32, [a, b, c, d, ..]) => {
                i32::from_le_bytes([*a, *b, *c, *d]) as f32 / 2_147_483_648.0
            }
            (SampleFormat::F32, [a, b, c, d, ..]) => {
                let v = f32::from_le_bytes([*a, *b, *c, *d]);
                if v.is_finite() {
                    v
                } else {
                    0.0
                }
            }
            (SampleFormat::F64, [a, b, c, d, e, f, g, h, ..]) => {
                let v = f64::from_le_bytes([*a, *b, *c, *d, *e, *f, *g, *h]);
                if v.is_finite() {
                    v as f32
                } else {
                    0.0
                }
            }
            (SampleFormat::Alaw, [x, ..]) => crate::g711::alaw_to_linear(*x) as f32 / 32768.0,
            (SampleFormat::Ulaw, [x, ..]) => crate::g711::ulaw_to_linear(*x) as f32 / 32768.0,
            _ => 0.0,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct FmtInfo {
    format: SampleFormat,
    channels: usize,
    sample_rate: u32,
    block_align: usize,
}

fn le16(b: &[u8], at: usize) -> Option<u16> {
    let s = b.get(at..at.checked_add(2)?)?;
    Some(u16::from_le_bytes([s[0], s[1]]))
}

fn le32(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

fn parse_fmt(c: &[u8]) -> Result<FmtInfo, WavError> {
    let tag = le16(c, 0).ok_or(WavError::Truncated("fmt chunk"))?;
    let channels = le16(c, 2).ok_or(WavError::Truncated("fmt chunk"))? as usize;
    let sample_rate = le32(c, 4).ok_or(WavError::Truncated("fmt chunk"))?;
    let block_align = le16(c, 12).ok_or(WavError::Truncated("fmt chunk"))? as usize;
    let bits = le16(c, 14).ok_or(WavError::Truncated("fmt chunk"))?;
    if channels == 0 {
        return Err(WavError::Invalid("zero channels"));
    }
    if sample_rate == 0 {
        return Err(WavError::Invalid("zero sample rate"));
    }
    // Bounds keep the resampler's kernel and output sizes sane for hostile headers.
    if !(MIN_RATE..=MAX_RATE).contains(&sample_rate) {
        return Err(WavError::Unsupported(format!(
            "sample rate {sample_rate} Hz"
        )));
    }
    let tag = if tag == FORMAT_EXTENSIBLE {
        // cbSize (2) + valid bits (2) + channel mask (4) + SubFormat GUID whose first two
        // bytes are the real format code.
        let cb = le16(c, 16).ok_or(WavError::Truncated("WAVE_FORMAT_EXTENSIBLE"))?;
        if cb < 22 {
            return Err(WavError::Truncated("WAVE_FORMAT_EXTENSIBLE"));
        }
        le16(c, 24).ok_or(WavError::Truncated("WAVE_FORMAT_EXTENSIBLE"))?
    } else {
        tag
    };
    if block_align == 0 || block_align % channels != 0 {
        return Err(WavError::Invalid(
            "block align does not match channel count",
        ));
    }
    // The container size per sample comes from block_align; `bits` may be smaller
    // (e.g. 20 valid bits in a 24-bit container), which decoding the container handles.
    let container = block_align / channels;
    let format = match (tag, container, bits) {
        (FORMAT_PCM, 1, 1..=8) => SampleFormat::U8,
        (FORMAT_PCM, 2, 9..=16) => SampleFormat::I16,
        (FORMAT_PCM, 3, 17..=24) => SampleFormat::I24,
        (FORMAT_PCM, 4, 25..=32) => SampleFormat::I32,
        (FORMAT_FLOAT, 4, 32) => SampleFormat::F32,
        (FORMAT_FLOAT, 8, 64) => SampleFormat::F64,
        (FORMAT_ALAW, 1, 8) => SampleFormat::Alaw,
        (FORMAT_ULAW, 1, 8) => SampleFormat::Ulaw,
        _ => {
            return Err(WavError::Unsupported(format!(
                "format tag {tag:#06x}, {bits} bits in {container}-byte samples"
            )))
        }
    };
    Ok(FmtInfo {
        format,
        channels,
        sample_rate,
        block_align,
    })
}

/// Decode an in-memory WAV file to 8 kHz mono 16-bit samples.
///
/// Accepts PCM 8/16/24/32-bit, IEEE float 32/64, A-law, µ-law, and
/// WAVE_FORMAT_EXTENSIBLE wrapping any of those; chunks in any order (unknown ones
/// such as LIST/fact are skipped, odd sizes padded); any channel count (averaged to
/// mono) and any sample rate (resampled with a windowed-sinc low-pass). A data chunk
/// size of 0xFFFFFFFF (streaming writers) means "to the end of the file".
pub fn decode_wav_8k(bytes: &[u8]) -> Result<Vec<i16>, WavError> {
    if bytes.len() < 12 {
        return if bytes.starts_with(b"RIFF") || b"RIFF".starts_with(bytes) {
            Err(WavError::Truncated("RIFF header"))
        } else {
            Err(WavError::NotWav)
        };
    }
    if &bytes[0..4] != b"RIFF" || &bytes[8..12] != b"WAVE" {
        return Err(WavError::NotWav);
    }
    // The RIFF size is often wrong (streamed or crashed writers): walk the real bytes.
    let mut pos = 12usize;
    let mut fmt: Option<FmtInfo> = None;
    let mut data: Option<&[u8]> = None;
    while pos < bytes.len() {
        let Some(header) = bytes.get(pos..pos + 8) else {
            // A few stray bytes after complete fmt and data chunks (sloppy padding)
            // are harmless; without them the file is cut short.
            if fmt.is_some() && data.is_some() {
                break;
            }
            return Err(WavError::Truncated("chunk header"));
        };
        let id = &header[0..4];
        let size = le32(header, 4).ok_or(WavError::Truncated("chunk header"))?;
        let body_start = pos + 8;
        let remaining = bytes.len() - body_start;
        let body_len = if id == b"data" && size == u32::MAX {
            remaining
        } else {
            size as usize
        };
        if body_len > remaining {
            return Err(WavError::Truncated(if id == b"data" {
                "data chunk"
            } else {
                "chunk body"
            }));
        }
        let body = &bytes[body_start..body_start + body_len];
        match id {
            b"fmt " => fmt = Some(parse_fmt(body)?),
            b"data" => data = Some(body),
            _ => {}
        }
        // Chunks are word aligned: an odd-sized body is followed by a pad byte (which a
        // sloppy writer may omit at the very end of the file).
        pos = body_start + body_len + (body_len & 1);
    }
    let fmt = fmt.ok_or(WavError::MissingChunk("fmt "))?;
    let data = data.ok_or(WavError::MissingChunk("data"))?;
    let mono = downmix(data, &fmt);
    let out = resample_rubato_to_8k(&mono, fmt.sample_rate);
    Ok(out
        .into_iter()
        .map(|v| (v * 32768.0).round().clamp(-32768.0, 32767.0) as i16)
        .collect())
}

/// Read a WAV file from disk and convert it to 8 kHz mono 16-bit; see [`decode_wav_8k`].
pub fn load_wav_8k(path: impl AsRef<Path>) -> Result<Vec<i16>, WavError> {
    let bytes = std::fs::read(path)?;
    decode_wav_8k(&bytes)
}

/// Average all channels of each frame; a trailing partial frame is ignored.
fn downmix(data: &[u8], fmt: &FmtInfo) -> Vec<f32> {
    let sb = fmt.format.bytes();
    let container = fmt.block_align / fmt.channels;
    let scale = 1.0 / fmt.channels as f32;
    data.chunks_exact(fmt.block_align)
        .map(|frame| {
            frame
                .chunks_exact(container)
                .map(|s| fmt.format.decode(s.get(..sb).unwrap_or(&[])))
                .sum::<f32>()
                * scale
        })
        .collect()
}

/// Resample mono audio from `rate` to 8 kHz with rubato's windowed-sinc resampler
/// (`SincFixedIn`: 64 zero crossings and at least 256 taps, Blackman-Harris², cut-off at
/// 92.5 % of the lower Nyquist frequency, cubic interpolation between 256 precomputed phases).
/// The output is aligned with the input within one 8 kHz sample and has `len * 8000 / rate`
/// samples.
pub fn resample_rubato_to_8k(input: &[f32], rate: u32) -> Vec<f32> {
    resample_rubato(input, rate, TARGET_RATE)
}

/// Resample mono audio from `from` to `to` Hz, as [`resample_rubato_to_8k`] does (the speech
/// recognizer also goes up, 8 → 16 kHz). The output has `len * to / from` samples.
pub fn resample_rubato(input: &[f32], from: u32, to: u32) -> Vec<f32> {
    use rubato::{
        Resampler, SincFixedIn, SincInterpolationParameters, SincInterpolationType, WindowFunction,
    };
    if from == to || input.is_empty() || from == 0 || to == 0 {
        return input.to_vec();
    }
    const CHUNK: usize = 4096;
    let ratio = f64::from(to) / f64::from(from);
    // The filter spans 64 zero crossings of its sinc whatever the rate ratio (256 taps at
    // least), so the transition band (3.7 → 4 kHz at 8 kHz) stays as narrow from 48 kHz as
    // from 16.
    let lower = from.min(to);
    let zero_crossing = f64::from(from) / (2.0 * CUTOFF_FRACTION * f64::from(lower / 2));
    let sinc_len = ((64.0 * zero_crossing).ceil() as usize).max(256);
    let params = SincInterpolationParameters {
        sinc_len,
        f_cutoff: CUTOFF_FRACTION as f32,
        oversampling_factor: 256,
        interpolation: SincInterpolationType::Cubic,
        window: WindowFunction::BlackmanHarris2,
    };
    let Ok(mut r) = SincFixedIn::<f32>::new(ratio, 1.0, params, CHUNK, 1) else {
        // Only for a rate the loader already refuses (see MIN_RATE/MAX_RATE).
        return Vec::new();
    };
    let want = (input.len() as u64 * u64::from(to) / u64::from(from)) as usize;
    // SincFixedIn's output leads its input by one input sample (its even-length filter's
    // centre): one sample of silence in front puts every output sample where it belongs.
    let delayed: Vec<f32> = std::iter::once(0.0).chain(input.iter().copied()).collect();
    let input = &delayed[..];
    let mut out: Vec<f32> = Vec::with_capacity(want + CHUNK);
    let mut pos = 0;
    while pos + r.input_frames_next() <= input.len() {
        let n = r.input_frames_next();
        match r.process(&[&input[pos..pos + n]], None) {
            Ok(mut o) => out.append(&mut o[0]),
            Err(_) => return Vec::new(),
        }
        pos += n;
    }
    // The rest, then zeros until the filter's tail has come out. (SincFixedIn has no start-up
    // delay to cut: its first index starts half a filter early.)
    let mut tail: Option<&[f32]> = Some(&input[pos..]);
    while out.len() < want {
        let chunk = tail.take();
        match r.process_partial(chunk.map(|c| [c]).as_ref().map(|c| &c[..]), None) {
            Ok(mut o) if !o[0].is_empty() => out.append(&mut o[0]),
            _ => break,
        }
    }
    out.resize(want, 0.0);
    out
}

/// Cut-off as a fraction of the lower Nyquist frequency: 3700 Hz when going to 8 kHz, so the
/// pass band is flat to 3.4 kHz and the stop band starts by 4 kHz.
const CUTOFF_FRACTION: f64 = 0.925;

// ---------------------------------------------------------------------------
// Writer

/// Incremental writer of 8 kHz 16-bit PCM WAV files, mono or stereo (call recording), on
/// `hound`'s writer (buffered; the header's sizes are fixed up by [`WavWriter::finalize`] or,
/// logged if it fails, on drop).
pub struct WavWriter {
    writer: Option<hound::WavWriter<std::io::BufWriter<std::fs::File>>>,
    data_bytes: u64,
    channels: u16,
}

impl std::fmt::Debug for WavWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WavWriter")
            .field("open", &self.writer.is_some())
            .field("data_bytes", &self.data_bytes)
            .field("channels", &self.channels)
            .finish()
    }
}

impl From<hound::Error> for WavError {
    fn from(e: hound::Error) -> Self {
        match e {
            hound::Error::IoError(e) => WavError::Io(e),
            other => WavError::Unsupported(other.to_string()),
        }
    }
}

impl WavWriter {
    /// Create (truncate) `path` and write the header of a mono file.
    pub fn create(path: impl AsRef<Path>) -> Result<Self, WavError> {
        Self::create_with_channels(path, 1)
    }

    /// Create (truncate) `path` for a stereo file: samples are written interleaved, left
    /// first ([`WavWriter::write_samples`] with pairs).
    pub fn create_stereo(path: impl AsRef<Path>) -> Result<Self, WavError> {
        Self::create_with_channels(path, 2)
    }

    fn create_with_channels(path: impl AsRef<Path>, channels: u16) -> Result<Self, WavError> {
        let spec = hound::WavSpec {
            channels,
            sample_rate: TARGET_RATE,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        Ok(WavWriter {
            writer: Some(hound::WavWriter::create(path, spec)?),
            data_bytes: 0,
            channels,
        })
    }

    /// Append samples. Fails with [`WavError::TooLarge`] instead of overflowing 4 GiB.
    pub fn write_samples(&mut self, samples: &[i16]) -> Result<(), WavError> {
        let Some(w) = self.writer.as_mut() else {
            return Ok(());
        };
        let bytes = samples.len() as u64 * 2;
        if self.data_bytes + bytes > MAX_DATA_BYTES {
            return Err(WavError::TooLarge);
        }
        let mut batch = w.get_i16_writer(samples.len() as u32);
        for &s in samples {
            batch.write_sample(s);
        }
        batch.flush()?;
        self.data_bytes += bytes;
        Ok(())
    }

    /// Append `n` samples of silence.
    pub fn write_silence(&mut self, n: usize) -> Result<(), WavError> {
        const ZEROS: [i16; 256] = [0; 256];
        let mut left = n;
        while left > 0 {
            let k = left.min(ZEROS.len());
            self.write_samples(&ZEROS[..k])?;
            left -= k;
        }
        Ok(())
    }

    /// Samples written so far (per channel: the file's length in 8 kHz samples).
    pub fn samples_written(&self) -> u64 {
        self.data_bytes / 2 / u64::from(self.channels)
    }

    /// Flush, fix the RIFF and data sizes and close the file.
    pub fn finalize(mut self) -> Result<(), WavError> {
        self.finish()
    }

    fn finish(&mut self) -> Result<(), WavError> {
        match self.writer.take() {
            Some(w) => Ok(w.finalize()?),
            None => Ok(()),
        }
    }
}

impl Drop for WavWriter {
    fn drop(&mut self) {
        if let Err(e) = self.finish() {
            tracing::warn!(error = %e, "failed to finalize WAV recording");
        }
    }
}

/// Largest data chunk that keeps the RIFF size in 32 bits (a 44-byte header).
const MAX_DATA_BYTES: u64 = u32::MAX as u64 - 36;

#[cfg(test)]
mod tests {
    use super::*;

    /// Build a WAV in memory. `fmt_extra` is appended to the 16-byte fmt body.
    #[allow(clippy::too_many_arguments)] // a test helper mirroring the fmt fields
    fn build_wav(
        tag: u16,
        channels: u16,
        rate: u32,
        bits: u16,
        block_align: u16,
        fmt_extra: &[u8],
        data: &[u8],
        data_first: bool,
        extra_chunks: bool,
    ) -> Vec<u8> {
        let mut fmt = Vec::new();
        fmt.extend_from_slice(&tag.to_le_bytes());
        fmt.extend_from_slice(&channels.to_le_bytes());
        fmt.extend_from_slice(&rate.to_le_bytes());
        fmt.extend_from_slice(&rate.wrapping_mul(block_align as u32).to_le_bytes());
        fmt.extend_from_slice(&block_align.to_le_bytes());
        fmt.extend_from_slice(&bits.to_le_bytes());
        fmt.extend_from_slice(fmt_extra);
        let chunk = |id: &[u8], body: &[u8]| {
            let mut c = id.to_vec();
            c.extend_from_slice(&(body.len() as u32).to_le_bytes());
            c.extend_from_slice(body);
            if body.len() % 2 == 1 {
                c.push(0);
            }
            c
        };
        let mut body = b"WAVE".to_vec();
        if extra_chunks {
            body.extend(chunk(b"LIST", b"INFOISFT\x05\x00\x00\x00test\x00"));
        }
        if data_first {
            body.extend(chunk(b"data", data));
            body.extend(chunk(b"fact", &[1, 2, 3, 4]));
            body.extend(chunk(b"fmt ", &fmt));
        } else {
            body.extend(chunk(b"fmt ", &fmt));
            if extra_chunks {
                body.extend(chunk(b"odd!", &[1, 2, 3]));
            }
            body.extend(chunk(b"data", data));
        }
        let mut out = b"RIFF".to_vec();
        out.extend_from_slice(&(body.len() as u32).to_le_bytes());
        out.extend(body);
        out
    }

    fn sine(rate: u32, freq: f64, secs: f64, amp: f64) -> Vec<f64> {
        let n = (rate as f64 * secs) as usize;
        (0..n)
            .map(|i| amp * (std::f64::consts::TAU * freq * i as f64 / rate as f64).sin())
            .collect()
    }

    /// RMS of the middle of a signal (edges hold the filter's start-up transient).
    fn rms_mid(s: &[i16]) -> f64 {
        let m = &s[s.len() / 5..s.len() * 4 / 5];
        (m.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / m.len() as f64).sqrt()
    }

    /// Amplitude of frequency `f` in an 8 kHz signal (single DFT bin over the middle).
    fn amplitude_at(s: &[i16], f: f64) -> f64 {
        let m = &s[s.len() / 5..s.len() * 4 / 5];
        let (mut re, mut im) = (0.0, 0.0);
        for (i, &v) in m.iter().enumerate() {
            let w = std::f64::consts::TAU * f * i as f64 / 8000.0;
            re += v as f64 * w.cos();
            im += v as f64 * w.sin();
        }
        2.0 * (re * re + im * im).sqrt() / m.len() as f64
    }

    fn pcm16(v: &[f64]) -> Vec<u8> {
        v.iter()
            .flat_map(|x| ((x * 32767.0).round() as i16).to_le_bytes())
            .collect()
    }

    #[test]
    fn writer_round_trip() {
        let dir = std::env::temp_dir().join(format!("cp-wav-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("rec.wav");
        let mut w = WavWriter::create(&path).unwrap();
        let samples: Vec<i16> = (0..1000).map(|i| (i * 13 - 6000) as i16).collect();
        w.write_samples(&samples[..600]).unwrap();
        w.write_samples(&samples[600..]).unwrap();
        w.write_silence(300).unwrap();
        assert_eq!(w.samples_written(), 1300);
        w.finalize().unwrap();
        let back = load_wav_8k(&path).unwrap();
        assert_eq!(back.len(), 1300);
        assert_eq!(&back[..1000], &samples[..]);
        assert!(back[1000..].iter().all(|&v| v == 0));
        let raw = std::fs::read(&path).unwrap();
        assert_eq!(raw.len(), 44 + 2600);
        assert_eq!(le32(&raw, 4), Some(36 + 2600));
        assert_eq!(le32(&raw, 40), Some(2600));

        // Dropping without finalize still fixes the sizes.
        let path2 = dir.join("dropped.wav");
        {
            let mut w = WavWriter::create(&path2).unwrap();
            w.write_samples(&samples).unwrap();
        }
        assert_eq!(load_wav_8k(&path2).unwrap(), samples);
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn pcm16_8k_passthrough_with_odd_chunks_and_any_order() {
        let s = sine(8000, 440.0, 0.1, 0.5);
        let data = pcm16(&s);
        for (data_first, extra) in [(false, false), (true, true), (false, true)] {
            let wav = build_wav(1, 1, 8000, 16, 2, &[], &data, data_first, extra);
            let out = decode_wav_8k(&wav).unwrap();
            assert_eq!(out.len(), 800);
            for (a, b) in out.iter().zip(&s) {
                assert!((*a as f64 - b * 32767.0).abs() <= 1.0);
            }
        }
    }

    #[test]
    fn all_sample_formats_decode() {
        let s = sine(8000, 300.0, 0.05, 0.6);
        let expect: Vec<f64> = s.iter().map(|x| x * 32767.0).collect();
        let u8d: Vec<u8> = s
            .iter()
            .map(|x| (x * 127.0 + 128.0).round() as u8)
            .collect();
        let i24: Vec<u8> = s
            .iter()
            .flat_map(|x| {
                let v = (x * 8_388_607.0).round() as i32;
                let b = v.to_le_bytes();
                [b[0], b[1], b[2]]
            })
            .collect();
        let i32d: Vec<u8> = s
            .iter()
            .flat_map(|x| ((x * 2_147_483_647.0).round() as i32).to_le_bytes())
            .collect();
        let f32d: Vec<u8> = s.iter().flat_map(|x| (*x as f32).to_le_bytes()).collect();
        let f64d: Vec<u8> = s.iter().flat_map(|x| x.to_le_bytes()).collect();
        let pcm: Vec<i16> = expect.iter().map(|x| x.round() as i16).collect();
        let mut alaw = vec![0u8; pcm.len()];
        crate::g711::encode_alaw(&pcm, &mut alaw);
        let mut ulaw = vec![0u8; pcm.len()];
        crate::g711::encode_ulaw(&pcm, &mut ulaw);

        // WAVE_FORMAT_EXTENSIBLE fmt tail: cbSize=22, valid bits, mask, GUID.
        let ext = |valid: u16, sub: u16| {
            let mut v = Vec::new();
            v.extend_from_slice(&22u16.to_le_bytes());
            v.extend_from_slice(&valid.to_le_bytes());
            v.extend_from_slice(&4u32.to_le_bytes());
            v.extend_from_slice(&sub.to_le_bytes());
            v.extend_from_slice(&[
                0x00, 0x00, 0x00, 0x00, 0x10, 0x00, 0x80, 0x00, 0x00, 0xAA, 0x00, 0x38, 0x9B, 0x71,
            ]);
            v
        };
        let cases: Vec<(&str, Vec<u8>, f64)> = vec![
            (
                "u8",
                build_wav(1, 1, 8000, 8, 1, &[], &u8d, false, false),
                300.0,
            ),
            (
                "s24",
                build_wav(1, 1, 8000, 24, 3, &[], &i24, false, false),
                2.0,
            ),
            (
                "s32",
                build_wav(1, 1, 8000, 32, 4, &[], &i32d, false, false),
                2.0,
            ),
            (
                "f32",
                build_wav(3, 1, 8000, 32, 4, &[0, 0], &f32d, true, true),
                2.0,
            ),
            (
                "f64",
                build_wav(3, 1, 8000, 64, 8, &[], &f64d, false, true),
                2.0,
            ),
            (
                "alaw",
                build_wav(6, 1, 8000, 8, 1, &[0, 0], &alaw, false, true),
                700.0,
            ),
            (
                "ulaw",
                build_wav(7, 1, 8000, 8, 1, &[0, 0], &ulaw, false, false),
                700.0,
            ),
            (
                "ext-s24",
                build_wav(0xFFFE, 1, 8000, 24, 3, &ext(24, 1), &i24, false, true),
                2.0,
            ),
            (
                "ext-f32",
                build_wav(0xFFFE, 1, 8000, 32, 4, &ext(32, 3), &f32d, false, false),
                2.0,
            ),
            (
                "ext-ulaw",
                build_wav(0xFFFE, 1, 8000, 8, 1, &ext(8, 7), &ulaw, true, false),
                700.0,
            ),
        ];
        for (name, wav, tol) in cases {
            let out = decode_wav_8k(&wav).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(out.len(), s.len(), "{name}");
            for (i, (a, b)) in out.iter().zip(&expect).enumerate() {
                assert!(
                    (*a as f64 - b).abs() <= tol,
                    "{name} sample {i}: {a} vs {b}"
                );
            }
        }
    }

    #[test]
    fn stereo_is_averaged() {
        // Left = +0.5 DC, right = -0.25 DC -> 0.125.
        let mut data = Vec::new();
        for _ in 0..100 {
            data.extend_from_slice(&16384i16.to_le_bytes());
            data.extend_from_slice(&(-8192i16).to_le_bytes());
        }
        let wav = build_wav(1, 2, 8000, 16, 4, &[], &data, false, false);
        let out = decode_wav_8k(&wav).unwrap();
        assert_eq!(out.len(), 100);
        assert!(out.iter().all(|&v| v == 4096));
        // Six channels of float.
        let mut data = Vec::new();
        for _ in 0..10 {
            for c in 0..6 {
                data.extend_from_slice(&(c as f32 * 0.1).to_le_bytes());
            }
        }
        let wav = build_wav(3, 6, 8000, 32, 24, &[], &data, false, false);
        let out = decode_wav_8k(&wav).unwrap();
        assert_eq!(out.len(), 10);
        assert!(out.iter().all(|&v| (v - 8192).abs() <= 1), "{out:?}");
    }

    #[test]
    fn resampling_keeps_passband_and_rejects_alias() {
        for rate in [16000u32, 44100, 48000, 22050, 11025, 32000, 6000] {
            // In band: 1 kHz at 0.5 should come out at ~0.5 and the right length.
            let s = sine(rate, 1000.0, 0.5, 0.5);
            let wav = build_wav(1, 1, rate, 16, 2, &[], &pcm16(&s), false, false);
            let out = decode_wav_8k(&wav).unwrap();
            assert!(out.len().abs_diff(4000) <= 1, "{rate}: {}", out.len());
            let a = amplitude_at(&out, 1000.0) / 32767.0;
            assert!((a - 0.5).abs() < 0.01, "{rate}: 1 kHz amplitude {a}");
            if rate > 8000 {
                // Out of band: 5 kHz (and 7 kHz) would alias to 3 kHz (1 kHz) without a
                // low-pass; require > 60 dB rejection.
                for f in [5000.0, 7000.0] {
                    if f >= rate as f64 / 2.0 {
                        continue;
                    }
                    let s = sine(rate, f, 0.5, 0.5);
                    let wav = build_wav(1, 1, rate, 16, 2, &[], &pcm16(&s), false, false);
                    let out = decode_wav_8k(&wav).unwrap();
                    let r = rms_mid(&out) / 32767.0;
                    assert!(r < 0.5 * 0.001, "{rate}: {f} Hz leaks at {r}");
                }
                // 3.4 kHz still passes (within 1 dB).
                let s = sine(rate, 3400.0, 0.5, 0.5);
                let wav = build_wav(1, 1, rate, 16, 2, &[], &pcm16(&s), false, false);
                let out = decode_wav_8k(&wav).unwrap();
                let a = amplitude_at(&out, 3400.0) / 32767.0;
                assert!(a > 0.5 * 0.89, "{rate}: 3.4 kHz amplitude {a}");
            }
        }
    }

    #[test]
    fn trailing_junk_after_chunks_is_ignored() {
        let data = pcm16(&sine(8000, 440.0, 0.01, 0.3));
        let mut wav = build_wav(1, 1, 8000, 16, 2, &[], &data, false, false);
        wav.extend_from_slice(&[0, 0, 0]);
        assert_eq!(decode_wav_8k(&wav).unwrap().len(), 80);
    }

    #[test]
    fn streaming_data_size() {
        let data = pcm16(&sine(8000, 440.0, 0.01, 0.3));
        let mut wav = build_wav(1, 1, 8000, 16, 2, &[], &data, false, false);
        let at = wav.len() - data.len() - 4;
        wav[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(decode_wav_8k(&wav).unwrap().len(), 80);
    }

    #[test]
    fn clear_errors() {
        assert!(matches!(decode_wav_8k(b""), Err(WavError::Truncated(_))));
        assert!(matches!(decode_wav_8k(b"RIF"), Err(WavError::Truncated(_))));
        assert!(matches!(
            decode_wav_8k(b"hello world, this is not audio"),
            Err(WavError::NotWav)
        ));
        assert!(matches!(
            decode_wav_8k(b"RIFF\0\0\0\0AVI LIST"),
            Err(WavError::NotWav)
        ));
        let data = pcm16(&sine(8000, 440.0, 0.01, 0.3));
        let wav = build_wav(1, 1, 8000, 16, 2, &[], &data, false, false);
        // Truncated inside the data chunk and inside a chunk header.
        assert!(matches!(
            decode_wav_8k(&wav[..wav.len() - 10]),
            Err(WavError::Truncated("data chunk"))
        ));
        assert!(matches!(
            decode_wav_8k(&wav[..16]),
            Err(WavError::Truncated(_))
        ));
        // fmt only.
        assert!(matches!(
            decode_wav_8k(&wav[..36]),
            Err(WavError::MissingChunk("data"))
        ));
        // data only.
        let mut no_fmt = b"RIFF\0\0\0\0WAVEdata\x02\0\0\0\0\0".to_vec();
        assert!(matches!(
            decode_wav_8k(&no_fmt),
            Err(WavError::MissingChunk("fmt "))
        ));
        no_fmt.truncate(12);
        assert!(matches!(
            decode_wav_8k(&no_fmt),
            Err(WavError::MissingChunk(_))
        ));
        // Unsupported: ADPCM (2), 12-bit in 1-byte container, float 16.
        for (tag, bits, align) in [(2u16, 4u16, 1u16), (1, 12, 1), (3, 16, 2), (0x55, 0, 1)] {
            let w = build_wav(tag, 1, 8000, bits, align, &[], &[0; 8], false, false);
            assert!(
                matches!(decode_wav_8k(&w), Err(WavError::Unsupported(_))),
                "{tag} {bits}"
            );
        }
        // Zero channels / rate / bad block align.
        let w = build_wav(1, 0, 8000, 16, 2, &[], &[0; 8], false, false);
        assert!(matches!(decode_wav_8k(&w), Err(WavError::Invalid(_))));
        let w = build_wav(1, 1, 0, 16, 2, &[], &[0; 8], false, false);
        assert!(matches!(decode_wav_8k(&w), Err(WavError::Invalid(_))));
        let w = build_wav(1, 1, 4_000_000_000, 16, 2, &[], &[0; 8], false, false);
        assert!(matches!(decode_wav_8k(&w), Err(WavError::Unsupported(_))));
        let w = build_wav(1, 2, 8000, 16, 3, &[], &[0; 8], false, false);
        assert!(matches!(decode_wav_8k(&w), Err(WavError::Invalid(_))));
        // Extensible with a short extension.
        let w = build_wav(
            0xFFFE,
            1,
            8000,
            16,
            2,
            &[4, 0, 0, 0, 0, 0],
            &[0; 8],
            false,
            false,
        );
        assert!(matches!(decode_wav_8k(&w), Err(WavError::Truncated(_))));
        // Missing file.
        assert!(matches!(
            load_wav_8k("/nonexistent/callplane.wav"),
            Err(WavError::Io(_))
        ));
    }

    #[test]
    fn garbage_never_panics() {
        let data = pcm16(&sine(44100, 440.0, 0.01, 0.3));
        let wav = build_wav(1, 2, 44100, 16, 4, &[], &data, false, true);
        let mut seed = 0xABCDEFu32;
        for cut in 0..wav.len() {
            let _ = decode_wav_8k(&wav[..cut]);
        }
        for _ in 0..300 {
            let mut w = wav.clone();
            for _ in 0..4 {
                seed ^= seed << 13;
                seed ^= seed >> 17;
                seed ^= seed << 5;
                let i = seed as usize % w.len();
                w[i] = (seed >> 24) as u8;
            }
            let _ = decode_wav_8k(&w);
        }
    }

    #[test]
    fn resampling_keeps_time_alignment() {
        for rate in [16_000u32, 22_050, 24_000, 44_100, 48_000] {
            let mut input = vec![0f32; rate as usize * 2];
            input[rate as usize] = 1.0;
            let out = resample_rubato_to_8k(&input, rate);
            assert_eq!(out.len(), 16_000);
            let peak = out
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .map(|(i, _)| i);
            // Within one 8 kHz sample of its instant (a parabola through the peak and its
            // neighbours): rubato leads by a fraction of a sample that grows with the rate.
            let p = peak.unwrap_or(0);
            let (a, b, c) = (out[p - 1], out[p], out[p + 1]);
            let at = p as f32 + 0.5 * (a - c) / (a - 2.0 * b + c);
            assert!(
                (at - 8000.0).abs() < 1.0,
                "{rate}: an impulse at 1 s comes out at {at:.2}"
            );
        }
    }
}
