//! DTMF in both forms: RFC 4733 telephone-event payloads (parse/write, receiver-side
//! dedupe, sender packet sequence) and in-band tones (generation and a Goertzel detector
//! with twist checks and per-key-press debounce).

use thiserror::Error;

/// Sample rate every DTMF helper here assumes (G.711 narrowband).
pub const SAMPLE_RATE: u32 = 8000;

/// Errors from telephone-event payload handling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum DtmfError {
    /// Payload shorter than the 4-byte event block.
    #[error("telephone-event payload truncated ({0} bytes)")]
    Truncated(usize),
    /// Output buffer shorter than 4 bytes.
    #[error("buffer too small for telephone-event payload")]
    BufferTooSmall,
}

/// One RFC 4733 telephone-event block (section 2.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TelephoneEvent {
    /// Event code: 0-9, 10 = '*', 11 = '#', 12-15 = 'A'-'D', 16 = flash, ...
    pub event: u8,
    /// E bit: this packet ends the event.
    pub end: bool,
    /// Power level as -dBm0 (0..=63).
    pub volume: u8,
    /// Duration so far in RTP timestamp units (samples at 8 kHz).
    pub duration: u16,
}

impl TelephoneEvent {
    /// Size of one event block on the wire.
    pub const LEN: usize = 4;

    /// Parse the first event block of a telephone-event payload (needs >= 4 bytes;
    /// trailing redundant blocks, RFC 2198 style, are ignored).
    pub fn parse(payload: &[u8]) -> Result<Self, DtmfError> {
        match payload {
            [event, flags, d0, d1, ..] => Ok(TelephoneEvent {
                event: *event,
                end: flags & 0x80 != 0,
                volume: flags & 0x3F,
                duration: u16::from_be_bytes([*d0, *d1]),
            }),
            _ => Err(DtmfError::Truncated(payload.len())),
        }
    }

    /// The 4 wire bytes (reserved bit zero, volume clamped to 6 bits).
    pub fn to_bytes(&self) -> [u8; 4] {
        let d = self.duration.to_be_bytes();
        [
            self.event,
            (if self.end { 0x80 } else { 0 }) | (self.volume & 0x3F),
            d[0],
            d[1],
        ]
    }

    /// Write the event into `buf`; returns the number of bytes written (4).
    pub fn write(&self, buf: &mut [u8]) -> Result<usize, DtmfError> {
        let out = buf.get_mut(..Self::LEN).ok_or(DtmfError::BufferTooSmall)?;
        out.copy_from_slice(&self.to_bytes());
        Ok(Self::LEN)
    }
}

const EVENT_CHARS: [char; 16] = [
    '0', '1', '2', '3', '4', '5', '6', '7', '8', '9', '*', '#', 'A', 'B', 'C', 'D',
];

/// DTMF character for an RFC 4733 event code (0-15); `None` for other events.
pub fn event_to_char(event: u8) -> Option<char> {
    EVENT_CHARS.get(event as usize).copied()
}

/// RFC 4733 event code for a DTMF character (`0-9 * # A-D`, letters case-insensitive).
pub fn char_to_event(c: char) -> Option<u8> {
    let c = c.to_ascii_uppercase();
    EVENT_CHARS.iter().position(|&x| x == c).map(|i| i as u8)
}

// ---------------------------------------------------------------------------
// RFC 4733 receiver

/// How many recent (timestamp, event) pairs are remembered to drop retransmissions
/// that arrive after a newer event has started (reordering, late end packets).
const RECENT_EVENTS: usize = 8;

#[derive(Debug, Clone, Copy)]
struct LastEvent {
    timestamp: u32,
    event: u8,
    ended: bool,
    duration: u16,
}

/// Turns the stream of telephone-event packets into one report per key press.
///
/// An event is identified by its RTP timestamp (all its packets share it): the first
/// packet with a new timestamp reports the digit; updates, retransmitted end packets
/// and late arrivals of already-seen events are ignored. A long event split into
/// segments (RFC 4733 2.5.1.3: duration saturates at 0xFFFF and a new timestamp
/// continues it) is not reported twice.
#[derive(Debug, Clone, Default)]
pub struct Rfc4733Receiver {
    recent: [Option<(u32, u8)>; RECENT_EVENTS],
    next: usize,
    last: Option<LastEvent>,
}

impl Rfc4733Receiver {
    /// New receiver with no history.
    pub fn new() -> Self {
        Self::default()
    }

    /// Forget all history (e.g. when the sender's SSRC changes).
    pub fn reset(&mut self) {
        *self = Self::default();
    }

    /// Feed one telephone-event packet; returns the digit if this packet starts a new
    /// key press. Non-DTMF events (flash etc.) are tracked but never reported.
    pub fn on_event(&mut self, timestamp: u32, ev: &TelephoneEvent) -> Option<char> {
        let key = (timestamp, ev.event);
        if self.recent.contains(&Some(key)) {
            if let Some(last) = self.last.as_mut() {
                if last.timestamp == timestamp && last.event == ev.event {
                    last.ended |= ev.end;
                    last.duration = last.duration.max(ev.duration);
                }
            }
            return None;
        }
        let continuation = self.last.is_some_and(|l| {
            // Next segment of a long event: same code, previous one saturated and not
            // ended, new timestamp exactly one segment later (within a frame).
            let delta = timestamp.wrapping_sub(l.timestamp);
            !l.ended
                && l.event == ev.event
                && l.duration >= 0xFF00
                && delta.abs_diff(l.duration as u32) <= 160
        });
        self.recent[self.next] = Some(key);
        self.next = (self.next + 1) % RECENT_EVENTS;
        self.last = Some(LastEvent {
            timestamp,
            event: ev.event,
            ended: ev.end,
            duration: ev.duration,
        });
        if continuation {
            None
        } else {
            event_to_char(ev.event)
        }
    }
}

// ---------------------------------------------------------------------------
// RFC 4733 sender

/// One packet of an outgoing telephone-event sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DtmfPacket {
    /// The payload to send.
    pub event: TelephoneEvent,
    /// RTP marker bit (set on the first packet of the event).
    pub marker: bool,
}

/// Produces the RFC 4733 packet sequence for one digit at 8 kHz, one packet per
/// 20 ms tick: updates with growing duration (160, 320, ...) while the tone lasts, the
/// first one marked, then the end packet sent three times (2.5.1.4 redundancy). All
/// packets carry the same RTP timestamp, chosen by the caller at the first packet.
#[derive(Debug, Clone)]
pub struct Rfc4733Sender {
    event: u8,
    volume: u8,
    total: u16,
    updates: u16,
    index: u16,
}

impl Rfc4733Sender {
    /// Default tone length.
    pub const DEFAULT_DURATION_MS: u32 = 100;
    /// Default power level (-10 dBm0).
    pub const DEFAULT_VOLUME: u8 = 10;
    /// Samples per packet interval (20 ms).
    pub const SAMPLES_PER_PACKET: u16 = 160;
    /// Times the end packet is sent.
    pub const END_PACKETS: u16 = 3;

    /// Sequence for `digit` with the default 100 ms duration; `None` if not a DTMF digit.
    pub fn new(digit: char) -> Option<Self> {
        Self::with_params(digit, Self::DEFAULT_DURATION_MS, Self::DEFAULT_VOLUME)
    }

    /// Sequence with an explicit duration (clamped to 20 ms..=8 s so it fits one
    /// 16-bit duration field) and volume (-dBm0, clamped to 63).
    pub fn with_params(digit: char, duration_ms: u32, volume: u8) -> Option<Self> {
        let event = char_to_event(digit)?;
        let samples = (duration_ms.clamp(20, 8000) * (SAMPLE_RATE / 1000)) as u16;
        let packets = samples.div_ceil(Self::SAMPLES_PER_PACKET);
        Some(Rfc4733Sender {
            event,
            volume: volume.min(63),
            total: samples,
            updates: packets.saturating_sub(1),
            index: 0,
        })
    }

    /// Total number of packets in the sequence (updates + 3 end packets).
    pub fn total_packets(&self) -> usize {
        (self.updates + Self::END_PACKETS) as usize
    }

    /// Event duration in samples (what the end packets report).
    pub fn duration_samples(&self) -> u16 {
        self.total
    }
}

impl Iterator for Rfc4733Sender {
    type Item = DtmfPacket;

    fn next(&mut self) -> Option<DtmfPacket> {
        if self.index >= self.updates + Self::END_PACKETS {
            return None;
        }
        let i = self.index;
        self.index += 1;
        let end = i >= self.updates;
        let duration = if end {
            self.total
        } else {
            (i + 1) * Self::SAMPLES_PER_PACKET
        };
        Some(DtmfPacket {
            event: TelephoneEvent {
                event: self.event,
                end,
                volume: self.volume,
                duration,
            },
            marker: i == 0,
        })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = (self.updates + Self::END_PACKETS).saturating_sub(self.index) as usize;
        (left, Some(left))
    }
}

// ---------------------------------------------------------------------------
// In-band tones

/// Low-group (row) frequencies in Hz.
pub const ROW_FREQS: [f32; 4] = [697.0, 770.0, 852.0, 941.0];
/// High-group (column) frequencies in Hz.
pub const COL_FREQS: [f32; 4] = [1209.0, 1336.0, 1477.0, 1633.0];
/// Keypad layout: `KEYPAD[row][col]`.
const KEYPAD: [[char; 4]; 4] = [
    ['1', '2', '3', 'A'],
    ['4', '5', '6', 'B'],
    ['7', '8', '9', 'C'],
    ['*', '0', '#', 'D'],
];

/// (low, high) tone frequencies for a DTMF key.
pub fn dtmf_frequencies(digit: char) -> Option<(f32, f32)> {
    let d = digit.to_ascii_uppercase();
    for (r, row) in KEYPAD.iter().enumerate() {
        if let Some(c) = row.iter().position(|&k| k == d) {
            return Some((ROW_FREQS[r], COL_FREQS[c]));
        }
    }
    None
}

/// Peak amplitude of a -10 dBm0 sine in 16-bit linear (0 dBm0 is about 22706 for
/// G.711, whose full-scale sine is +3.17 dBm0).
pub const TONE_AMPLITUDE_MINUS_10_DBM0: i16 = 7180;

/// Generate `samples` samples of the DTMF tone pair for `digit` at 8 kHz, each tone
/// with peak `amplitude`. `None` if the character is not a DTMF key.
pub fn generate_dtmf(digit: char, samples: usize, amplitude: i16) -> Option<Vec<i16>> {
    let (lo, hi) = dtmf_frequencies(digit)?;
    let a = amplitude as f32;
    let w1 = std::f32::consts::TAU * lo / SAMPLE_RATE as f32;
    let w2 = std::f32::consts::TAU * hi / SAMPLE_RATE as f32;
    Some(
        (0..samples)
            .map(|n| {
                let n = n as f32;
                (a * ((w1 * n).sin() + (w2 * n).sin())).clamp(-32768.0, 32767.0) as i16
            })
            .collect(),
    )
}

// ---------------------------------------------------------------------------
// Goertzel detector

/// Analysis window: 160 samples = 20 ms at 8 kHz (one G.711 RTP frame). Chosen over the
/// classic 205 because, analysed with a hop of half a window, a 40 ms tone (ITU-T Q.24
/// minimum) always covers at least two whole windows, which the two-window
/// confirmation needs, and a 40-50 ms inter-digit pause always contains whole silent
/// windows, which release needs. Its 50 Hz resolution still puts the nearest other
/// DTMF frequency (73 Hz away) about 13 dB down, enough for the relative-peak test.
pub const GOERTZEL_BLOCK: usize = 160;
/// Hop between analysed windows (50% overlap).
const HOP: usize = GOERTZEL_BLOCK / 2;
/// Consecutive windows that must agree before a digit is reported (~30 ms of tone).
const CONFIRM_WINDOWS: u8 = 2;
/// Consecutive windows without the digit before it can be reported again (~30 ms).
const RELEASE_WINDOWS: u8 = 3;
/// Minimum energy per tone in a window: a -36 dBm0 sine (peak ~360) over the window.
const MIN_TONE_ENERGY: f32 = 360.0 * 360.0 / 2.0 * GOERTZEL_BLOCK as f32;
/// Normal twist limit (high group weaker than low group): 8 dB.
const NORMAL_TWIST: f32 = 6.31;
/// Reverse twist limit (high group stronger than low group): 4 dB.
const REVERSE_TWIST: f32 = 2.51;
/// The strongest tone of a group must beat the others of its group by 8 dB.
const RELATIVE_PEAK: f32 = 6.31;
/// The two tones must carry this share of the window's total energy (the value
/// long-standing detectors such as Asterisk's use). Speech and music spread energy
/// over many harmonics and fail it; clean DTMF passes down to about 8 dB SNR.
const TONE_TO_TOTAL: f32 = 0.82;
/// Accepted frequency deviation (ITU-T Q.24: accept 1.5%, reject 3.5%).
const FREQ_TOLERANCE: f32 = 0.015;

/// In-band DTMF detector for 8 kHz linear audio.
///
/// Feed it audio of any chunk size with [`GoertzelDetector::process`]; it runs the
/// Goertzel algorithm at the 8 DTMF frequencies over 160-sample windows every 80
/// samples, validates each window (per-tone level, normal/reverse twist, relative
/// peak within each group, share of total energy) and reports a digit once it has
/// been seen in 2 consecutive windows. The same digit is reported again only after
/// it has been absent for 3 consecutive windows, so one key press gives one report.
#[derive(Debug, Clone)]
pub struct GoertzelDetector {
    window: [f32; GOERTZEL_BLOCK],
    filled: usize,
    row_coeff: [[f32; 3]; 4],
    col_coeff: [[f32; 3]; 4],
    candidate: Option<u8>,
    candidate_count: u8,
    latched: Option<u8>,
    miss_count: u8,
}

impl Default for GoertzelDetector {
    fn default() -> Self {
        Self::new()
    }
}

fn goertzel_coeff(freq: f32) -> f32 {
    2.0 * (std::f32::consts::TAU * freq / SAMPLE_RATE as f32).cos()
}

/// Each DTMF frequency is measured at its nominal value and +/-1.5% (the deviation
/// Q.24 says must be accepted) and the largest is kept: a single 50 Hz-wide bin would
/// lose up to 3 dB of a legitimately detuned high-group tone and fail the energy-share
/// test, while tones off by 3.5% (which must be rejected) still fall well outside.
fn bin_coeffs(freq: f32) -> [f32; 3] {
    [
        goertzel_coeff(freq * (1.0 - FREQ_TOLERANCE)),
        goertzel_coeff(freq),
        goertzel_coeff(freq * (1.0 + FREQ_TOLERANCE)),
    ]
}

/// Tone energy: the best of the three bins around a DTMF frequency.
fn tone_energy(x: &[f32], coeffs: &[f32; 3]) -> f32 {
    coeffs
        .iter()
        .map(|&c| goertzel_energy(x, c))
        .fold(0.0, f32::max)
}

/// Goertzel energy at one frequency, scaled so a sine of peak A over the whole window
/// gives about A^2/2 * N, i.e. the same units as the window's sum of squares.
#[inline]
fn goertzel_energy(x: &[f32], coeff: f32) -> f32 {
    let (mut s1, mut s2) = (0.0f32, 0.0f32);
    for &v in x {
        let s = v + coeff * s1 - s2;
        s2 = s1;
        s1 = s;
    }
    let power = s1 * s1 + s2 * s2 - coeff * s1 * s2;
    2.0 * power / x.len() as f32
}

impl GoertzelDetector {
    /// A detector in the idle state.
    pub fn new() -> Self {
        GoertzelDetector {
            window: [0.0; GOERTZEL_BLOCK],
            filled: 0,
            row_coeff: ROW_FREQS.map(bin_coeffs),
            col_coeff: COL_FREQS.map(bin_coeffs),
            candidate: None,
            candidate_count: 0,
            latched: None,
            miss_count: 0,
        }
    }

    /// Drop buffered audio and debounce state.
    pub fn reset(&mut self) {
        *self = Self::new();
    }

    /// Analyse more audio; calls `on_digit` for each newly detected key press.
    pub fn process(&mut self, samples: &[i16], mut on_digit: impl FnMut(char)) {
        for &s in samples {
            if let Some(slot) = self.window.get_mut(self.filled) {
                *slot = s as f32;
            }
            self.filled += 1;
            if self.filled >= GOERTZEL_BLOCK {
                let hit = self.analyze();
                if let Some(c) = self.debounce(hit) {
                    on_digit(c);
                }
                self.window.copy_within(HOP.., 0);
                self.filled = GOERTZEL_BLOCK - HOP;
            }
        }
    }

    /// Classify the current window: the keypad digit whose tone pair it holds, if any.
    fn analyze(&self) -> Option<char> {
        let x = &self.window;
        let total: f32 = x.iter().map(|v| v * v).sum();
        if total < 2.0 * MIN_TONE_ENERGY {
            return None;
        }
        let rows = self.row_coeff.map(|c| tone_energy(x, &c));
        let cols = self.col_coeff.map(|c| tone_energy(x, &c));
        let (r, pr) = argmax(&rows);
        let (c, pc) = argmax(&cols);
        if pr < MIN_TONE_ENERGY || pc < MIN_TONE_ENERGY {
            return None;
        }
        if pr > pc * NORMAL_TWIST || pc > pr * REVERSE_TWIST {
            return None;
        }
        let peak_ok = |v: &[f32; 4], best: usize, p: f32| {
            v.iter()
                .enumerate()
                .all(|(i, &e)| i == best || e * RELATIVE_PEAK <= p)
        };
        if !peak_ok(&rows, r, pr) || !peak_ok(&cols, c, pc) {
            return None;
        }
        if pr + pc < TONE_TO_TOTAL * total {
            return None;
        }
        KEYPAD.get(r).and_then(|row| row.get(c)).copied()
    }

    fn debounce(&mut self, hit: Option<char>) -> Option<char> {
        let hit = hit.and_then(char_to_event);
        if hit.is_some() && hit == self.candidate {
            self.candidate_count = self.candidate_count.saturating_add(1);
        } else {
            self.candidate = hit;
            self.candidate_count = u8::from(hit.is_some());
        }
        if let Some(d) = self.latched {
            if hit == Some(d) {
                self.miss_count = 0;
            } else {
                self.miss_count += 1;
                if self.miss_count >= RELEASE_WINDOWS {
                    self.latched = None;
                    self.miss_count = 0;
                }
            }
        }
        if self.latched.is_none() && self.candidate_count >= CONFIRM_WINDOWS {
            self.latched = self.candidate;
            self.miss_count = 0;
            return self.candidate.and_then(event_to_char);
        }
        None
    }
}

fn argmax(v: &[f32; 4]) -> (usize, f32) {
    let mut best = (0, v[0]);
    for (i, &e) in v.iter().enumerate().skip(1) {
        if e > best.1 {
            best = (i, e);
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic xorshift noise so tests are reproducible without a rand crate.
    struct Noise(u64);
    impl Noise {
        fn uniform(&mut self) -> f32 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
        }
        /// Roughly Gaussian, unit variance (Irwin-Hall with 12 terms).
        fn gauss(&mut self) -> f32 {
            (0..12).map(|_| self.uniform() * 0.5).sum::<f32>()
        }
    }

    fn detect(samples: &[i16]) -> Vec<char> {
        let mut d = GoertzelDetector::new();
        let mut out = Vec::new();
        d.process(samples, |c| out.push(c));
        out
    }

    /// Tone pair with independent levels, frequency offset (relative) and phase.
    fn tone(digit: char, n: usize, amp_lo: f32, amp_hi: f32, detune: f32) -> Vec<f32> {
        let (lo, hi) = dtmf_frequencies(digit).unwrap();
        let (lo, hi) = (lo * (1.0 + detune), hi * (1.0 - detune));
        (0..n)
            .map(|i| {
                let t = i as f32 / 8000.0;
                amp_lo * (std::f32::consts::TAU * lo * t + 0.3).sin()
                    + amp_hi * (std::f32::consts::TAU * hi * t + 1.1).sin()
            })
            .collect()
    }

    fn to_i16(v: &[f32]) -> Vec<i16> {
        v.iter()
            .map(|x| x.round().clamp(-32768.0, 32767.0) as i16)
            .collect()
    }

    fn dbm0(level: f32) -> f32 {
        22706.0 * 10f32.powf(level / 20.0)
    }

    #[test]
    fn telephone_event_parse_write() {
        let ev = TelephoneEvent::parse(&[11, 0x8A, 0x03, 0x20]).unwrap();
        assert_eq!(
            ev,
            TelephoneEvent {
                event: 11,
                end: true,
                volume: 10,
                duration: 800
            }
        );
        let mut buf = [0u8; 6];
        assert_eq!(ev.write(&mut buf), Ok(4));
        assert_eq!(&buf[..4], &[11, 0x8A, 0x03, 0x20]);
        assert_eq!(ev.write(&mut buf[..3]), Err(DtmfError::BufferTooSmall));
        assert_eq!(
            TelephoneEvent::parse(&[1, 2, 3]),
            Err(DtmfError::Truncated(3))
        );
        // The reserved bit is ignored on parse and cleared on write.
        let ev = TelephoneEvent::parse(&[5, 0x7F, 0, 160, 9, 9]).unwrap();
        assert_eq!(ev.volume, 63);
        assert!(!ev.end);
        assert_eq!(ev.to_bytes()[1], 0x3F);
    }

    #[test]
    fn event_char_mapping() {
        let all = "0123456789*#ABCD";
        for (i, c) in all.chars().enumerate() {
            assert_eq!(event_to_char(i as u8), Some(c));
            assert_eq!(char_to_event(c), Some(i as u8));
        }
        assert_eq!(char_to_event('b'), Some(13));
        assert_eq!(char_to_event('x'), None);
        assert_eq!(event_to_char(16), None);
    }

    #[test]
    fn sender_sequence() {
        let pkts: Vec<DtmfPacket> = Rfc4733Sender::new('5').unwrap().collect();
        assert_eq!(pkts.len(), 7);
        let durations: Vec<u16> = pkts.iter().map(|p| p.event.duration).collect();
        assert_eq!(durations, [160, 320, 480, 640, 800, 800, 800]);
        let ends: Vec<bool> = pkts.iter().map(|p| p.event.end).collect();
        assert_eq!(ends, [false, false, false, false, true, true, true]);
        assert!(pkts[0].marker);
        assert!(pkts[1..].iter().all(|p| !p.marker));
        assert!(pkts
            .iter()
            .all(|p| p.event.event == 5 && p.event.volume == 10));
        assert_eq!(Rfc4733Sender::new('5').unwrap().total_packets(), 7);

        // A 20 ms event is just the marked end packet and its two repeats.
        let short: Vec<DtmfPacket> = Rfc4733Sender::with_params('#', 5, 70).unwrap().collect();
        assert_eq!(short.len(), 3);
        assert!(short[0].marker && short[0].event.end && short[0].event.duration == 160);
        assert_eq!(short[0].event.volume, 63);
        assert!(Rfc4733Sender::new('x').is_none());
    }

    #[test]
    fn receiver_reports_each_press_once() {
        let mut rx = Rfc4733Receiver::new();
        let mut got = Vec::new();
        for (n, digit) in "1123#".chars().enumerate() {
            let ts = 1000 + n as u32 * 2000;
            for p in Rfc4733Sender::new(digit).unwrap() {
                if let Some(c) = rx.on_event(ts, &p.event) {
                    got.push(c);
                }
            }
        }
        assert_eq!(got, ['1', '1', '2', '3', '#']);
        // A late end packet of an earlier event does not re-trigger.
        let late = TelephoneEvent {
            event: 2,
            end: true,
            volume: 10,
            duration: 800,
        };
        assert_eq!(rx.on_event(1000 + 2 * 2000, &late), None);
        // First packet seen may be an end packet (start lost): still reported.
        let ev = TelephoneEvent {
            event: 9,
            end: true,
            volume: 10,
            duration: 800,
        };
        assert_eq!(rx.on_event(99_999, &ev), Some('9'));
        // Flash (16) is consumed silently.
        let flash = TelephoneEvent {
            event: 16,
            end: false,
            volume: 10,
            duration: 160,
        };
        assert_eq!(rx.on_event(200_000, &flash), None);
    }

    #[test]
    fn receiver_long_event_segments_report_once() {
        let mut rx = Rfc4733Receiver::new();
        let seg1 = TelephoneEvent {
            event: 0,
            end: false,
            volume: 10,
            duration: 0xFFFF,
        };
        assert_eq!(rx.on_event(5000, &seg1), Some('0'));
        let seg2 = TelephoneEvent {
            duration: 160,
            ..seg1
        };
        assert_eq!(rx.on_event(5000u32.wrapping_add(0xFFFF), &seg2), None);
        // After the event ends, a new press of the same digit is reported.
        let end = TelephoneEvent {
            end: true,
            duration: 800,
            ..seg1
        };
        assert_eq!(rx.on_event(5000u32.wrapping_add(0xFFFF), &end), None);
        assert_eq!(rx.on_event(200_000, &seg2), Some('0'));
    }

    #[test]
    fn generated_tone_frequencies() {
        assert_eq!(dtmf_frequencies('5'), Some((770.0, 1336.0)));
        assert_eq!(dtmf_frequencies('d'), Some((941.0, 1633.0)));
        assert_eq!(dtmf_frequencies('x'), None);
        let t = generate_dtmf('1', 800, TONE_AMPLITUDE_MINUS_10_DBM0).unwrap();
        assert_eq!(t.len(), 800);
        assert_eq!(detect(&t), ['1']);
    }

    #[test]
    fn detects_all_keys_with_noise() {
        let keys = "123A456B789C*0#D";
        let mut noise = Noise(0x9E37_79B9_7F4A_7C15);
        // (tone level dBm0 per tone, twist dB = high - low, detune, duration ms)
        let cases = [
            (-8.0, 0.0, 0.0, 100usize),
            (-20.0, 2.0, 0.005, 60),
            (-4.0, -4.0, -0.01, 45),
            (-25.0, 3.0, 0.01, 80),
        ];
        for &(level, twist, detune, ms) in &cases {
            let mut signal = Vec::new();
            let mut expected = Vec::new();
            for k in keys.chars() {
                signal.extend(std::iter::repeat_n(0.0, 8 * 60));
                let lo = dbm0(level);
                let hi = dbm0(level + twist);
                signal.extend(tone(k, 8 * ms, lo, hi, detune));
                expected.push(k);
            }
            signal.extend(std::iter::repeat_n(0.0, 8 * 60));
            // White noise about 20 dB below each tone (a realistic line noise floor).
            let sigma = dbm0(level - 20.0) / std::f32::consts::SQRT_2;
            for s in signal.iter_mut() {
                *s += noise.gauss() * sigma;
            }
            let got = detect(&to_i16(&signal));
            assert_eq!(
                got.iter().collect::<String>(),
                expected.iter().collect::<String>(),
                "level {level} twist {twist} detune {detune} {ms} ms"
            );
        }
    }

    #[test]
    fn detection_survives_g711_and_chunking() {
        let mut d = GoertzelDetector::new();
        let mut got = Vec::new();
        let tone = generate_dtmf('7', 800, 5000).unwrap();
        let mut enc = [0u8; 800];
        crate::g711::encode_alaw(&tone, &mut enc);
        let mut dec = [0i16; 800];
        crate::g711::decode_alaw(&enc, &mut dec);
        for chunk in dec.chunks(37) {
            d.process(chunk, |c| got.push(c));
        }
        assert_eq!(got, ['7']);
    }

    #[test]
    fn same_key_twice_with_50ms_gap() {
        for offset in [0usize, 17, 40, 80, 123] {
            let mut s = vec![0i16; offset];
            s.extend(generate_dtmf('5', 8 * 70, 6000).unwrap());
            s.extend(std::iter::repeat_n(0i16, 8 * 50));
            s.extend(generate_dtmf('5', 8 * 70, 6000).unwrap());
            s.extend(std::iter::repeat_n(0i16, 8 * 50));
            assert_eq!(detect(&s), ['5', '5'], "offset {offset}");
        }
        // A long press is one digit.
        let long = generate_dtmf('#', 8000, 6000).unwrap();
        assert_eq!(detect(&long), ['#']);
    }

    #[test]
    fn rejects_silence_noise_and_single_tones() {
        assert!(detect(&vec![0i16; 16000]).is_empty());
        let mut noise = Noise(42);
        let white: Vec<f32> = (0..16000).map(|_| noise.gauss() * 3000.0).collect();
        assert!(detect(&to_i16(&white)).is_empty());
        for f in ROW_FREQS
            .iter()
            .chain(COL_FREQS.iter())
            .chain(&[1000.0, 440.0])
        {
            let s: Vec<f32> = (0..8000)
                .map(|i| 8000.0 * (std::f32::consts::TAU * f * i as f32 / 8000.0).sin())
                .collect();
            assert!(detect(&to_i16(&s)).is_empty(), "{f} Hz");
        }
        // Too much twist either way.
        let s = tone('5', 1600, dbm0(-5.0), dbm0(-15.0), 0.0);
        assert!(detect(&to_i16(&s)).is_empty());
        let s = tone('5', 1600, dbm0(-15.0), dbm0(-9.0), 0.0);
        assert!(detect(&to_i16(&s)).is_empty());
        // Too short (15 ms).
        let s = generate_dtmf('9', 120, 8000).unwrap();
        assert!(detect(&s).is_empty());
        // Off frequency by 6%.
        let s = tone('1', 1600, dbm0(-10.0), dbm0(-10.0), 0.06);
        assert!(detect(&to_i16(&s)).is_empty());
    }

    /// Voiced-speech model: a harmonic series with a wandering pitch, shaped by three
    /// two-pole formant resonances (magnitude falling as 1/offset) that jump between
    /// vowels, a -6 dB/octave net source tilt, a syllabic envelope and a little noise.
    fn speech(secs: usize, pitch: (f32, f32, f32, f32), bw_scale: f32) -> Vec<i16> {
        let (rate1, rate2, lo, span) = pitch;
        let vowels = [
            (730.0f32, 1090.0f32, 2440.0f32),
            (270.0, 2290.0, 3010.0),
            (530.0, 1840.0, 2480.0),
            (660.0, 1720.0, 2410.0),
            (300.0, 870.0, 2240.0),
            (640.0, 1190.0, 2390.0),
            (440.0, 1020.0, 2240.0),
            (860.0, 1300.0, 2500.0),
            (570.0, 840.0, 2410.0),
            (400.0, 1920.0, 2560.0),
        ];
        let mut noise = Noise(7);
        let mut phase = [0f32; 60];
        let mut out = Vec::with_capacity(8000 * secs);
        for n in 0..8000 * secs {
            let t = n as f32 / 8000.0;
            let f0 = lo + span * (0.5 + 0.5 * (t * rate1).sin() * (t * rate2).cos());
            let (f1, f2, f3) = vowels[(t * 5.3) as usize % vowels.len()];
            let mut v = 0.0;
            for (h, ph) in phase.iter_mut().enumerate() {
                let fh = f0 * (h + 1) as f32;
                if fh > 3800.0 {
                    break;
                }
                *ph += std::f32::consts::TAU * fh / 8000.0;
                let res = |fc: f32, bw: f32| {
                    let x = 2.0 * (fh - fc) / (bw * bw_scale);
                    1.0 / (1.0 + x * x).sqrt()
                };
                let tilt = (100.0 / fh).min(1.0);
                let amp = (res(f1, 80.0) + 0.5 * res(f2, 100.0) + 0.25 * res(f3, 150.0)) * tilt;
                v += amp * ph.sin();
            }
            let env = 0.2 + 0.8 * (t * 3.0 * std::f32::consts::PI).sin().abs();
            out.push(v * 5000.0 * env + noise.gauss() * 100.0);
        }
        to_i16(&out)
    }

    #[test]
    fn rejects_speech_like_signals() {
        // Pitch trajectories (rates, floor, span in Hz) and formant bandwidth scales
        // (0.5 = very sharp formants, few dominant harmonics: the hard case).
        let cases = [
            ((1.7, 0.37, 85.0, 175.0), 1.0),
            ((0.9, 0.23, 90.0, 120.0), 0.7),
            ((2.3, 0.5, 150.0, 150.0), 0.5),
            ((0.5, 1.3, 100.0, 200.0), 0.8),
        ];
        for (pitch, bw) in cases {
            let got = detect(&speech(20, pitch, bw));
            assert!(got.is_empty(), "talk-off {pitch:?} {bw}: {got:?}");
        }
    }

    #[test]
    fn frequency_tolerance_and_noise_margin() {
        // Q.24: accept +/-1.5% deviation, reject +/-3.5%.
        for detune in [0.015f32, -0.015] {
            for k in "159D*#".chars() {
                let s = tone(k, 800, dbm0(-12.0), dbm0(-12.0), detune);
                assert_eq!(detect(&to_i16(&s)), [k], "{k} at {detune}");
            }
        }
        for detune in [0.035f32, -0.035] {
            for k in "159D*#".chars() {
                let s = tone(k, 800, dbm0(-12.0), dbm0(-12.0), detune);
                assert!(detect(&to_i16(&s)).is_empty(), "{k} at {detune}");
            }
        }
        // 12 dB signal-to-noise (noise power vs the tone pair) still detects.
        let mut noise = Noise(99);
        let a = dbm0(-15.0);
        let sigma = (a * a * 10f32.powf(-1.2)).sqrt(); // pair power is a^2 (two tones of a^2/2)
        let s: Vec<f32> = tone('6', 800, a, a, 0.0)
            .into_iter()
            .map(|v| v + noise.gauss() * sigma)
            .collect();
        assert_eq!(detect(&to_i16(&s)), ['6']);
    }
}
