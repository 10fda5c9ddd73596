//! The audio codecs Callplane speaks on the wire (G.711 only) and their RTP/SDP
//! identity: static payload type, rtpmap name, clock rate, plus frame encode/decode.

use crate::g711;

/// A narrowband audio codec negotiated in SDP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Codec {
    /// G.711 µ-law (RTP static payload type 0).
    Pcmu,
    /// G.711 A-law (RTP static payload type 8).
    Pcma,
}

impl Codec {
    /// Every supported codec, in our default preference order.
    pub const ALL: [Codec; 2] = [Codec::Pcmu, Codec::Pcma];

    /// Static RTP payload type (RFC 3551).
    pub const fn payload_type(self) -> u8 {
        match self {
            Codec::Pcmu => 0,
            Codec::Pcma => 8,
        }
    }

    /// Encoding name as used in `a=rtpmap`.
    pub const fn name(self) -> &'static str {
        match self {
            Codec::Pcmu => "PCMU",
            Codec::Pcma => "PCMA",
        }
    }

    /// RTP clock rate in Hz.
    pub const fn clock_rate(self) -> u32 {
        8000
    }

    /// Codec for a static payload type, if it is one we support.
    pub const fn from_payload_type(pt: u8) -> Option<Codec> {
        match pt {
            0 => Some(Codec::Pcmu),
            8 => Some(Codec::Pcma),
            _ => None,
        }
    }

    /// Codec for an rtpmap encoding name (case-insensitive, as RFC 4855 says) and clock rate.
    pub fn from_name(name: &str, clock_rate: u32) -> Option<Codec> {
        if clock_rate != 8000 {
            return None;
        }
        if name.eq_ignore_ascii_case("PCMU") {
            Some(Codec::Pcmu)
        } else if name.eq_ignore_ascii_case("PCMA") {
            Some(Codec::Pcma)
        } else {
            None
        }
    }

    /// Encode linear samples; one byte per sample. Returns the number of bytes written
    /// (`min(pcm.len(), out.len())`).
    pub fn encode(self, pcm: &[i16], out: &mut [u8]) -> usize {
        match self {
            Codec::Pcmu => g711::encode_ulaw(pcm, out),
            Codec::Pcma => g711::encode_alaw(pcm, out),
        }
    }

    /// Decode bytes to linear samples. Returns the number of samples written.
    pub fn decode(self, data: &[u8], out: &mut [i16]) -> usize {
        match self {
            Codec::Pcmu => g711::decode_ulaw(data, out),
            Codec::Pcma => g711::decode_alaw(data, out),
        }
    }

    /// Convert an encoded payload from `self` to `to` (a copy when they are equal).
    /// Returns the number of bytes written.
    pub fn transcode(self, to: Codec, data: &[u8], out: &mut [u8]) -> usize {
        match (self, to) {
            (Codec::Pcmu, Codec::Pcma) => g711::transcode_ulaw_to_alaw(data, out),
            (Codec::Pcma, Codec::Pcmu) => g711::transcode_alaw_to_ulaw(data, out),
            _ => {
                let n = data.len().min(out.len());
                out[..n].copy_from_slice(&data[..n]);
                n
            }
        }
    }
}

impl std::fmt::Display for Codec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity() {
        assert_eq!(Codec::Pcmu.payload_type(), 0);
        assert_eq!(Codec::Pcma.payload_type(), 8);
        assert_eq!(Codec::Pcmu.name(), "PCMU");
        assert_eq!(Codec::Pcma.to_string(), "PCMA");
        assert_eq!(Codec::Pcma.clock_rate(), 8000);
        assert_eq!(Codec::from_payload_type(8), Some(Codec::Pcma));
        assert_eq!(Codec::from_payload_type(9), None);
        assert_eq!(Codec::from_name("pcmu", 8000), Some(Codec::Pcmu));
        assert_eq!(Codec::from_name("PCMA", 16000), None);
        assert_eq!(Codec::from_name("G722", 8000), None);
    }

    #[test]
    fn encode_decode_round_trip() {
        let pcm: Vec<i16> = (0..160)
            .map(|i| ((i as f64 * 0.3).sin() * 10000.0) as i16)
            .collect();
        for c in Codec::ALL {
            let mut enc = [0u8; 160];
            let mut dec = [0i16; 160];
            assert_eq!(c.encode(&pcm, &mut enc), 160);
            assert_eq!(c.decode(&enc, &mut dec), 160);
            for (a, b) in pcm.iter().zip(dec.iter()) {
                assert!((*a as i32 - *b as i32).abs() <= 400, "{c}: {a} vs {b}");
            }
        }
    }

    #[test]
    fn transcode_between_codecs() {
        let pcm: Vec<i16> = (0..160).map(|i| (i * 150 - 12000) as i16).collect();
        let mut u = [0u8; 160];
        Codec::Pcmu.encode(&pcm, &mut u);
        let mut a = [0u8; 160];
        assert_eq!(Codec::Pcmu.transcode(Codec::Pcma, &u, &mut a), 160);
        let mut same = [0u8; 160];
        assert_eq!(Codec::Pcmu.transcode(Codec::Pcmu, &u, &mut same), 160);
        assert_eq!(same, u);
        let mut dec = [0i16; 160];
        Codec::Pcma.decode(&a, &mut dec);
        for (x, y) in pcm.iter().zip(dec.iter()) {
            assert!((*x as i32 - *y as i32).abs() <= 800);
        }
    }
}
