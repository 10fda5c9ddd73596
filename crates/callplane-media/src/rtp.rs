//! RTP (RFC 3550) fixed-header parsing and writing, zero-copy over the datagram
//! buffer, plus a cheap test to tell RTCP apart when it shares the port (RFC 5761).
//! Everything here runs once per packet: no allocation, and every length is checked.

use thiserror::Error;

/// Size of the fixed RTP header without CSRCs or extension.
pub const RTP_HEADER_LEN: usize = 12;

/// Why a datagram is not a usable RTP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum RtpError {
    /// Shorter than the header (including CSRC list / extension) claims.
    #[error("RTP packet truncated")]
    Truncated,
    /// Version field is not 2.
    #[error("unsupported RTP version {0}")]
    BadVersion(u8),
    /// Padding count is zero or larger than the payload.
    #[error("invalid RTP padding")]
    BadPadding,
}

/// A parsed RTP packet borrowing its payload from the receive buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtpPacket<'a> {
    /// Always 2 for packets that parsed.
    pub version: u8,
    /// The P bit (padding has already been stripped from `payload`).
    pub padding: bool,
    /// The M bit: start of a talkspurt for audio, start of an event for RFC 4733.
    pub marker: bool,
    /// 7-bit payload type.
    pub payload_type: u8,
    /// 16-bit sequence number.
    pub sequence: u16,
    /// Media timestamp in clock-rate units.
    pub timestamp: u32,
    /// Synchronisation source identifier.
    pub ssrc: u32,
    /// Payload after CSRCs and header extension, without padding.
    pub payload: &'a [u8],
}

#[inline]
fn be16(b: &[u8], at: usize) -> Option<u16> {
    let s = b.get(at..at + 2)?;
    Some(u16::from_be_bytes([s[0], s[1]]))
}

#[inline]
fn be32(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at + 4)?;
    Some(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
}

impl<'a> RtpPacket<'a> {
    /// Parse a datagram. Rejects anything but version 2 and any length inconsistency.
    pub fn parse(buf: &'a [u8]) -> Result<Self, RtpError> {
        if buf.len() < RTP_HEADER_LEN {
            return Err(RtpError::Truncated);
        }
        let b0 = buf[0];
        let b1 = buf[1];
        let version = b0 >> 6;
        if version != 2 {
            return Err(RtpError::BadVersion(version));
        }
        let padding = b0 & 0x20 != 0;
        let extension = b0 & 0x10 != 0;
        let csrc_count = (b0 & 0x0F) as usize;
        let sequence = be16(buf, 2).ok_or(RtpError::Truncated)?;
        let timestamp = be32(buf, 4).ok_or(RtpError::Truncated)?;
        let ssrc = be32(buf, 8).ok_or(RtpError::Truncated)?;

        let mut offset = RTP_HEADER_LEN + 4 * csrc_count;
        if offset > buf.len() {
            return Err(RtpError::Truncated);
        }
        if extension {
            // 16-bit profile id, then the extension length in 32-bit words (RFC 3550 5.3.1).
            let words = be16(buf, offset + 2).ok_or(RtpError::Truncated)? as usize;
            offset += 4 + 4 * words;
            if offset > buf.len() {
                return Err(RtpError::Truncated);
            }
        }
        let mut end = buf.len();
        if padding {
            // The last octet counts the padding octets, itself included.
            let pad = buf[end - 1] as usize;
            if pad == 0 || pad > end - offset {
                return Err(RtpError::BadPadding);
            }
            end -= pad;
        }
        Ok(RtpPacket {
            version,
            padding,
            marker: b1 & 0x80 != 0,
            payload_type: b1 & 0x7F,
            sequence,
            timestamp,
            ssrc,
            payload: &buf[offset..end],
        })
    }
}

/// Write a 12-byte RTP header (version 2, no padding/extension/CSRC) at the start of
/// `buf` and return 12. Returns 0 and writes nothing if `buf` is shorter than 12 bytes.
pub fn write_rtp_header(
    buf: &mut [u8],
    marker: bool,
    pt: u8,
    seq: u16,
    ts: u32,
    ssrc: u32,
) -> usize {
    let Some(h) = buf.get_mut(..RTP_HEADER_LEN) else {
        return 0;
    };
    h[0] = 0x80;
    h[1] = (pt & 0x7F) | if marker { 0x80 } else { 0 };
    h[2..4].copy_from_slice(&seq.to_be_bytes());
    h[4..8].copy_from_slice(&ts.to_be_bytes());
    h[8..12].copy_from_slice(&ssrc.to_be_bytes());
    RTP_HEADER_LEN
}

/// True if the datagram looks like RTCP multiplexed on the RTP port: version 2 and a
/// second byte in the RTCP packet-type range. RFC 5761 reserves 192..=223 (SR=200,
/// RR=201, SDES=202, BYE=203, APP=204, feedback 205/206, XR 207), which is why RTP
/// payload types 64..=95 must not be used on a muxed port.
#[inline]
pub fn is_rtcp(buf: &[u8]) -> bool {
    match buf {
        [b0, b1, ..] => b0 >> 6 == 2 && (192..=223).contains(b1),
        _ => false,
    }
}

/// Serial-number comparison for 16-bit RTP sequence numbers (RFC 1982): true if `a`
/// comes after `b`, handling wrap-around.
#[inline]
pub fn seq_newer(a: u16, b: u16) -> bool {
    (a.wrapping_sub(b) as i16) > 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(marker: bool, pt: u8, payload: &[u8]) -> Vec<u8> {
        let mut v = vec![0u8; 12];
        write_rtp_header(&mut v, marker, pt, 0x1234, 0xDEADBEEF, 0x01020304);
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn write_then_parse() {
        let v = packet(true, 8, &[1, 2, 3]);
        assert_eq!(v[0], 0x80);
        assert_eq!(v[1], 0x88);
        let p = RtpPacket::parse(&v).unwrap();
        assert_eq!(p.version, 2);
        assert!(p.marker);
        assert!(!p.padding);
        assert_eq!(p.payload_type, 8);
        assert_eq!(p.sequence, 0x1234);
        assert_eq!(p.timestamp, 0xDEADBEEF);
        assert_eq!(p.ssrc, 0x01020304);
        assert_eq!(p.payload, &[1, 2, 3]);
    }

    #[test]
    fn short_buffer_header_write() {
        let mut b = [0u8; 11];
        assert_eq!(write_rtp_header(&mut b, false, 0, 0, 0, 0), 0);
    }

    #[test]
    fn csrc_extension_and_padding() {
        let mut v = vec![0u8; 12];
        write_rtp_header(&mut v, false, 0, 1, 2, 3);
        v[0] |= 0x20 | 0x10 | 2; // padding, extension, 2 CSRCs
        v.extend_from_slice(&[0xAA; 8]); // CSRCs
        v.extend_from_slice(&[0xBE, 0xDE, 0x00, 0x01]); // extension header, 1 word
        v.extend_from_slice(&[0x11; 4]); // extension body
        v.extend_from_slice(&[9, 8, 7]); // payload
        v.extend_from_slice(&[0, 0, 3]); // 3 octets of padding
        let p = RtpPacket::parse(&v).unwrap();
        assert!(p.padding);
        assert_eq!(p.payload, &[9, 8, 7]);
    }

    #[test]
    fn rejects_bad_input() {
        assert_eq!(RtpPacket::parse(&[]), Err(RtpError::Truncated));
        assert_eq!(RtpPacket::parse(&[0x80; 11]), Err(RtpError::Truncated));
        let mut v = packet(false, 0, &[1, 2]);
        v[0] = 0x40;
        assert_eq!(RtpPacket::parse(&v), Err(RtpError::BadVersion(1)));
        // CSRC count larger than the packet.
        let mut v = packet(false, 0, &[1, 2]);
        v[0] |= 0x0F;
        assert_eq!(RtpPacket::parse(&v), Err(RtpError::Truncated));
        // Extension flag with no room for its header.
        let mut v = packet(false, 0, &[1, 2]);
        v[0] |= 0x10;
        assert_eq!(RtpPacket::parse(&v), Err(RtpError::Truncated));
        // Extension length beyond the end.
        let mut v = packet(false, 0, &[0, 0, 0, 9]);
        v[0] |= 0x10;
        assert_eq!(RtpPacket::parse(&v), Err(RtpError::Truncated));
        // Padding count zero or too large.
        let mut v = packet(false, 0, &[1, 0]);
        v[0] |= 0x20;
        assert_eq!(RtpPacket::parse(&v), Err(RtpError::BadPadding));
        let mut v = packet(false, 0, &[1, 200]);
        v[0] |= 0x20;
        assert_eq!(RtpPacket::parse(&v), Err(RtpError::BadPadding));
        // Padding may consume the whole payload.
        let mut v = packet(false, 0, &[0, 2]);
        v[0] |= 0x20;
        assert_eq!(RtpPacket::parse(&v).unwrap().payload, &[] as &[u8]);
    }

    #[test]
    fn parse_never_panics_on_garbage() {
        // Cheap deterministic fuzz: every prefix of a few patterns.
        let mut seed = 0x1234_5678u32;
        for len in 0..200 {
            let buf: Vec<u8> = (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 17;
                    seed ^= seed << 5;
                    (seed >> 3) as u8
                })
                .collect();
            let _ = RtpPacket::parse(&buf);
            let mut b = buf.clone();
            if let Some(x) = b.first_mut() {
                *x = 0x80 | (*x & 0x3F);
            }
            let _ = RtpPacket::parse(&b);
            let _ = is_rtcp(&b);
        }
    }

    #[test]
    fn rtcp_detection() {
        assert!(is_rtcp(&[0x80, 200, 0, 6]));
        assert!(is_rtcp(&[0x81, 201, 0, 7]));
        assert!(is_rtcp(&[0x80, 204]));
        assert!(!is_rtcp(&[0x80, 0x00]));
        assert!(!is_rtcp(&[0x80, 0x80])); // PCMU with marker
        assert!(!is_rtcp(&[0x80, 0xE5])); // PT 101 with marker (229)
        assert!(!is_rtcp(&[0x00, 200]));
        assert!(!is_rtcp(&[0x80]));
    }

    #[test]
    fn sequence_comparison() {
        assert!(seq_newer(1, 0));
        assert!(seq_newer(0, 65535));
        assert!(!seq_newer(65535, 0));
        assert!(!seq_newer(5, 5));
    }
}
