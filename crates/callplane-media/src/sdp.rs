//! Minimal SDP (RFC 4566) for audio calls: parsing offers/answers, choosing our codec
//! and telephone-event payload type from them (RFC 3264 offer/answer), hold detection,
//! and building our own offer or answer. Anything we do not use is skipped, not rejected.

use crate::codec::Codec;
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use thiserror::Error;

/// Errors from SDP parsing and negotiation.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SdpError {
    /// Input does not start with `v=0`.
    #[error("not an SDP body (missing v=0)")]
    NotSdp,
    /// A line we need (o=, c=, m=, a=rtpmap, ...) is malformed.
    #[error("invalid SDP line {line}: {reason}")]
    InvalidLine {
        /// 1-based line number.
        line: usize,
        /// What was wrong.
        reason: &'static str,
    },
    /// No active (non-zero port) audio stream.
    #[error("no audio stream in SDP")]
    NoAudio,
    /// Audio streams exist but none uses plain RTP (e.g. only SRTP).
    #[error("unsupported audio transport {0}")]
    UnsupportedTransport(String),
    /// None of the offered formats is PCMU or PCMA at 8 kHz.
    #[error("no common codec")]
    NoCommonCodec,
    /// The chosen stream has no c= line at media or session level.
    #[error("no connection address for audio stream")]
    MissingConnection,
}

/// Media direction attribute (RFC 3264 section 5.1), from the describing party's side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Direction {
    /// Both ways (the default).
    #[default]
    SendRecv,
    /// The describing party only sends.
    SendOnly,
    /// The describing party only receives.
    RecvOnly,
    /// No media either way.
    Inactive,
}

impl Direction {
    /// The attribute name (`sendrecv`, ...).
    pub const fn as_str(self) -> &'static str {
        match self {
            Direction::SendRecv => "sendrecv",
            Direction::SendOnly => "sendonly",
            Direction::RecvOnly => "recvonly",
            Direction::Inactive => "inactive",
        }
    }

    fn from_attr(name: &str) -> Option<Direction> {
        match name {
            "sendrecv" => Some(Direction::SendRecv),
            "sendonly" => Some(Direction::SendOnly),
            "recvonly" => Some(Direction::RecvOnly),
            "inactive" => Some(Direction::Inactive),
            _ => None,
        }
    }

    /// The direction to answer with (RFC 3264 6.1): sendonly <-> recvonly, others kept.
    pub const fn reversed(self) -> Direction {
        match self {
            Direction::SendOnly => Direction::RecvOnly,
            Direction::RecvOnly => Direction::SendOnly,
            d => d,
        }
    }
}

impl std::fmt::Display for Direction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The o= line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// User name (`-` if none).
    pub username: String,
    /// Session id (kept as text: some peers exceed 64 bits).
    pub session_id: String,
    /// Session version (a changed version means a changed session).
    pub session_version: String,
    /// Unicast address of the originator (text: may be a host name).
    pub address: String,
}

/// A c= line's address (any `/ttl/count` suffix dropped).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Connection {
    /// The address; 0.0.0.0 is the RFC 2543 way of saying "hold".
    pub ip: IpAddr,
}

/// An a=rtpmap attribute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RtpMap {
    /// Payload type it describes.
    pub payload_type: u8,
    /// Encoding name as written (case is not significant).
    pub encoding: String,
    /// Clock rate in Hz.
    pub clock_rate: u32,
    /// Channel count if given.
    pub channels: Option<u16>,
}

/// An a=fmtp attribute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fmtp {
    /// Payload type it describes.
    pub payload_type: u8,
    /// Format parameters, verbatim.
    pub params: String,
}

/// One m= section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaDescription {
    /// Media type (`audio`, `video`, ...).
    pub media: String,
    /// Transport port; 0 means the stream is disabled/rejected.
    pub port: u16,
    /// The `/n` port count, if present.
    pub port_count: Option<u16>,
    /// Transport protocol, e.g. `RTP/AVP`.
    pub proto: String,
    /// Format list in preference order (payload type numbers for RTP).
    pub formats: Vec<String>,
    /// Media-level c= (overrides the session-level one).
    pub connection: Option<Connection>,
    /// a=rtpmap lines.
    pub rtpmaps: Vec<RtpMap>,
    /// a=fmtp lines.
    pub fmtps: Vec<Fmtp>,
    /// Media-level direction attribute.
    pub direction: Option<Direction>,
    /// a=ptime in milliseconds.
    pub ptime: Option<u32>,
}

impl MediaDescription {
    /// The rtpmap for payload type `pt`, if any.
    pub fn rtpmap(&self, pt: u8) -> Option<&RtpMap> {
        self.rtpmaps.iter().find(|r| r.payload_type == pt)
    }

    /// The fmtp parameters for payload type `pt`, if any.
    pub fn fmtp(&self, pt: u8) -> Option<&str> {
        self.fmtps
            .iter()
            .find(|f| f.payload_type == pt)
            .map(|f| f.params.as_str())
    }

    /// Numeric formats (RTP payload types) in offer order; non-numeric ones skipped.
    pub fn payload_types(&self) -> impl Iterator<Item = u8> + '_ {
        self.formats.iter().filter_map(|f| f.parse::<u8>().ok())
    }

    fn is_plain_rtp(&self) -> bool {
        self.proto.eq_ignore_ascii_case("RTP/AVP") || self.proto.eq_ignore_ascii_case("RTP/AVPF")
    }
}

/// A parsed session description.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SessionDescription {
    /// o= line.
    pub origin: Option<Origin>,
    /// s= line.
    pub session_name: Option<String>,
    /// Session-level c=.
    pub connection: Option<Connection>,
    /// Session-level direction attribute.
    pub direction: Option<Direction>,
    /// m= sections in order.
    pub media: Vec<MediaDescription>,
}

fn invalid(line: usize, reason: &'static str) -> SdpError {
    SdpError::InvalidLine { line, reason }
}

fn parse_connection(v: &str, line: usize) -> Result<Connection, SdpError> {
    let mut it = v.split_ascii_whitespace();
    let (Some(net), Some(atype), Some(addr)) = (it.next(), it.next(), it.next()) else {
        return Err(invalid(line, "c= needs <nettype> <addrtype> <address>"));
    };
    if net != "IN" {
        return Err(invalid(line, "c= network type is not IN"));
    }
    // Multicast addresses may carry /ttl and /count suffixes.
    let addr = addr.split('/').next().unwrap_or(addr);
    let ip: IpAddr = addr
        .parse()
        .map_err(|_| invalid(line, "c= address is not an IP literal"))?;
    match (atype, ip) {
        ("IP4", IpAddr::V4(_)) | ("IP6", IpAddr::V6(_)) => Ok(Connection { ip }),
        ("IP4", _) | ("IP6", _) => Err(invalid(line, "c= address does not match its type")),
        _ => Err(invalid(line, "c= address type is not IP4/IP6")),
    }
}

fn parse_origin(v: &str, line: usize) -> Result<Origin, SdpError> {
    let f: Vec<&str> = v.split_ascii_whitespace().collect();
    match f.as_slice() {
        [user, id, version, _net, _atype, addr] => Ok(Origin {
            username: (*user).to_owned(),
            session_id: (*id).to_owned(),
            session_version: (*version).to_owned(),
            address: (*addr).to_owned(),
        }),
        _ => Err(invalid(line, "o= needs 6 fields")),
    }
}

fn parse_media(v: &str, line: usize) -> Result<MediaDescription, SdpError> {
    let mut it = v.split_ascii_whitespace();
    let (Some(media), Some(port), Some(proto)) = (it.next(), it.next(), it.next()) else {
        return Err(invalid(line, "m= needs <media> <port> <proto> <fmt>..."));
    };
    let (port, count) = match port.split_once('/') {
        Some((p, c)) => (p, Some(c)),
        None => (port, None),
    };
    let port: u16 = port
        .parse()
        .map_err(|_| invalid(line, "m= port is not a number"))?;
    let port_count = match count {
        Some(c) => Some(
            c.parse::<u16>()
                .map_err(|_| invalid(line, "m= port count is not a number"))?,
        ),
        None => None,
    };
    Ok(MediaDescription {
        media: media.to_owned(),
        port,
        port_count,
        proto: proto.to_owned(),
        formats: it.map(str::to_owned).collect(),
        connection: None,
        rtpmaps: Vec::new(),
        fmtps: Vec::new(),
        direction: None,
        ptime: None,
    })
}

fn parse_rtpmap(v: &str, line: usize) -> Result<RtpMap, SdpError> {
    let (pt, rest) = v
        .trim()
        .split_once(char::is_whitespace)
        .ok_or(invalid(line, "rtpmap needs <pt> <encoding>/<rate>"))?;
    let payload_type: u8 = pt
        .parse()
        .ok()
        .filter(|p| *p < 128)
        .ok_or(invalid(line, "rtpmap payload type is not 0-127"))?;
    let mut parts = rest.trim().split('/');
    let encoding = parts
        .next()
        .filter(|e| !e.is_empty())
        .ok_or(invalid(line, "rtpmap has no encoding name"))?;
    let clock_rate: u32 = parts
        .next()
        .and_then(|r| r.trim().parse().ok())
        .ok_or(invalid(line, "rtpmap clock rate is not a number"))?;
    let channels = match parts.next() {
        Some(c) => Some(
            c.trim()
                .parse::<u16>()
                .map_err(|_| invalid(line, "rtpmap channel count is not a number"))?,
        ),
        None => None,
    };
    Ok(RtpMap {
        payload_type,
        encoding: encoding.to_owned(),
        clock_rate,
        channels,
    })
}

fn parse_fmtp(v: &str, line: usize) -> Result<Fmtp, SdpError> {
    let v = v.trim();
    let (pt, params) = v.split_once(char::is_whitespace).unwrap_or((v, ""));
    let payload_type: u8 = pt
        .parse()
        .ok()
        .filter(|p| *p < 128)
        .ok_or(invalid(line, "fmtp payload type is not 0-127"))?;
    Ok(Fmtp {
        payload_type,
        params: params.trim().to_owned(),
    })
}

impl SessionDescription {
    /// Parse an SDP body. Accepts `\r\n` or `\n` line ends, skips blank and unknown
    /// lines and attributes; rejects malformed lines that carry what negotiation needs.
    pub fn parse(text: &str) -> Result<Self, SdpError> {
        let mut sd = SessionDescription::default();
        let mut seen_version = false;
        for (idx, raw) in text.split('\n').enumerate() {
            let line_no = idx + 1;
            let line = raw.trim_end_matches('\r').trim_end();
            if line.is_empty() {
                continue;
            }
            let Some((kind, value)) = line.split_once('=') else {
                if !seen_version {
                    return Err(SdpError::NotSdp);
                }
                continue;
            };
            if !seen_version {
                if kind.trim_start_matches('\u{feff}') != "v" || value.trim() != "0" {
                    return Err(SdpError::NotSdp);
                }
                seen_version = true;
                continue;
            }
            match kind {
                "o" => sd.origin = Some(parse_origin(value, line_no)?),
                "s" => sd.session_name = Some(value.to_owned()),
                "c" => {
                    let c = parse_connection(value, line_no)?;
                    match sd.media.last_mut() {
                        Some(m) => m.connection = Some(c),
                        None => sd.connection = Some(c),
                    }
                }
                "m" => sd.media.push(parse_media(value, line_no)?),
                "a" => {
                    let (name, val) = match value.split_once(':') {
                        Some((n, v)) => (n, Some(v)),
                        None => (value, None),
                    };
                    if let Some(d) = Direction::from_attr(name.trim()) {
                        match sd.media.last_mut() {
                            Some(m) => m.direction = Some(d),
                            None => sd.direction = Some(d),
                        }
                        continue;
                    }
                    let (Some(m), Some(val)) = (sd.media.last_mut(), val) else {
                        continue;
                    };
                    match name {
                        "rtpmap" => m.rtpmaps.push(parse_rtpmap(val, line_no)?),
                        "fmtp" => m.fmtps.push(parse_fmtp(val, line_no)?),
                        "ptime" => {
                            // Some stacks write "20.0"; round fractional values.
                            let p: f64 = val
                                .trim()
                                .parse()
                                .map_err(|_| invalid(line_no, "ptime is not a number"))?;
                            if !(p > 0.0 && p <= 10_000.0) {
                                return Err(invalid(line_no, "ptime out of range"));
                            }
                            m.ptime = Some(p.round() as u32);
                        }
                        _ => {}
                    }
                }
                // Other line types (b=, t=, k=, ...) are not needed for audio negotiation.
                _ => {}
            }
        }
        if !seen_version {
            return Err(SdpError::NotSdp);
        }
        Ok(sd)
    }
}

/// Result of negotiating a remote offer (or answer) against what we support.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    /// Where to send RTP (before symmetric-RTP latching).
    pub remote: SocketAddr,
    /// The codec chosen: the first of the peer's formats that we support.
    pub codec: Codec,
    /// The payload type the peer uses for it.
    pub pt: u8,
    /// The peer's telephone-event/8000 payload type, if offered.
    pub telephone_event_pt: Option<u8>,
    /// The peer's direction attribute (media level over session level).
    pub direction: Direction,
    /// Every format of the chosen m= line as (payload type, "NAME/rate[/ch]"), for logs
    /// and CDRs; unknown dynamic types without rtpmap get an empty name.
    pub offered: Vec<(u8, String)>,
    /// The peer's a=ptime, if given.
    pub ptime: Option<u32>,
}

impl Negotiated {
    /// True if the peer put us on hold: it only sends (sendonly), sends nothing
    /// (inactive), or used the RFC 2543 `c=0.0.0.0` convention.
    pub fn is_hold(&self) -> bool {
        matches!(self.direction, Direction::SendOnly | Direction::Inactive)
            || self.remote.ip().is_unspecified()
    }
}

fn static_name(pt: u8) -> Option<&'static str> {
    // RFC 3551 table 4 (audio).
    Some(match pt {
        0 => "PCMU/8000",
        3 => "GSM/8000",
        4 => "G723/8000",
        5 => "DVI4/8000",
        6 => "DVI4/16000",
        7 => "LPC/8000",
        8 => "PCMA/8000",
        9 => "G722/8000",
        10 => "L16/44100/2",
        11 => "L16/44100",
        12 => "QCELP/8000",
        13 => "CN/8000",
        14 => "MPA/90000",
        15 => "G728/8000",
        16 => "DVI4/11025",
        17 => "DVI4/22050",
        18 => "G729/8000",
        _ => return None,
    })
}

/// Choose codec, telephone-event PT, remote address and direction from a peer's SDP.
///
/// Uses the first audio m= line with a non-zero port and plain RTP (RTP/AVP or
/// RTP/AVPF). The codec is the first of its formats that is PCMU or PCMA, identified
/// by rtpmap name at 8000 Hz (mono) or, without rtpmap, by static PT 0/8.
pub fn negotiate(sd: &SessionDescription) -> Result<Negotiated, SdpError> {
    let mut audio = sd
        .media
        .iter()
        .filter(|m| m.media == "audio" && m.port != 0);
    let Some(first_audio) = audio.clone().next() else {
        return Err(SdpError::NoAudio);
    };
    let Some(m) = audio.find(|m| m.is_plain_rtp()) else {
        return Err(SdpError::UnsupportedTransport(first_audio.proto.clone()));
    };

    let mut chosen: Option<(Codec, u8)> = None;
    let mut te: Option<u8> = None;
    let mut offered = Vec::with_capacity(m.formats.len());
    for pt in m.payload_types() {
        let map = m.rtpmap(pt);
        let name = match map {
            Some(r) => match r.channels {
                Some(ch) => format!("{}/{}/{}", r.encoding, r.clock_rate, ch),
                None => format!("{}/{}", r.encoding, r.clock_rate),
            },
            None => static_name(pt).unwrap_or("").to_owned(),
        };
        offered.push((pt, name));
        let codec = match map {
            Some(r) if r.channels.unwrap_or(1) == 1 => Codec::from_name(&r.encoding, r.clock_rate),
            Some(_) => None,
            // Without rtpmap only static (< 96) types have a meaning.
            None => Codec::from_payload_type(pt),
        };
        if let (None, Some(c)) = (chosen, codec) {
            chosen = Some((c, pt));
        }
        if te.is_none() {
            if let Some(r) = map {
                if r.encoding.eq_ignore_ascii_case("telephone-event") && r.clock_rate == 8000 {
                    te = Some(pt);
                }
            }
        }
    }
    let (codec, pt) = chosen.ok_or(SdpError::NoCommonCodec)?;
    let conn = m
        .connection
        .or(sd.connection)
        .ok_or(SdpError::MissingConnection)?;
    Ok(Negotiated {
        remote: SocketAddr::new(conn.ip, m.port),
        codec,
        pt,
        telephone_event_pt: te,
        direction: m.direction.or(sd.direction).unwrap_or_default(),
        offered,
        ptime: m.ptime,
    })
}

/// Inputs for [`build_sdp`].
#[derive(Debug, Clone, Copy)]
pub struct SdpParams<'a> {
    /// o= session id (keep it for the dialog).
    pub session_id: u64,
    /// o= session version (increment on every changed re-offer).
    pub session_version: u64,
    /// Address to receive media on (MediaLeg::local_addr's IP).
    pub ip: IpAddr,
    /// RTP port.
    pub port: u16,
    /// Codecs in preference order, sent with their static payload types.
    pub codecs: &'a [Codec],
    /// Payload type for telephone-event/8000 (conventionally 101), if we do RFC 4733.
    pub telephone_event_pt: Option<u8>,
    /// Our direction attribute (for an answer, usually the offer's `reversed()`).
    pub direction: Direction,
}

/// Build an SDP offer/answer for one audio stream, with CRLF line ends:
/// `v=0`, `o=callplane ...`, `s=Callplane`, `c=`, `t=0 0`, `m=audio` with the codecs'
/// static PTs and the telephone-event PT, their rtpmaps, `a=fmtp:<te> 0-16`,
/// `a=ptime:20` and the direction.
pub fn build_sdp(p: SdpParams<'_>) -> String {
    let atype = if p.ip.is_ipv6() { "IP6" } else { "IP4" };
    let mut codecs: Vec<Codec> = Vec::with_capacity(p.codecs.len());
    for c in p.codecs {
        if !codecs.contains(c) {
            codecs.push(*c);
        }
    }
    // A telephone-event PT that collides with a codec's would be ambiguous: drop it.
    let te = p
        .telephone_event_pt
        .filter(|t| *t < 128 && !codecs.iter().any(|c| c.payload_type() == *t));
    let mut s = String::with_capacity(256);
    // Writing to a String cannot fail.
    let _ = write!(
        s,
        "v=0\r\no=callplane {} {} IN {atype} {}\r\ns=Callplane\r\nc=IN {atype} {}\r\nt=0 0\r\nm=audio {} RTP/AVP",
        p.session_id, p.session_version, p.ip, p.ip, p.port
    );
    for c in &codecs {
        let _ = write!(s, " {}", c.payload_type());
    }
    if let Some(t) = te {
        let _ = write!(s, " {t}");
    }
    s.push_str("\r\n");
    for c in &codecs {
        let _ = write!(
            s,
            "a=rtpmap:{} {}/{}\r\n",
            c.payload_type(),
            c.name(),
            c.clock_rate()
        );
    }
    if let Some(t) = te {
        let _ = write!(
            s,
            "a=rtpmap:{t} telephone-event/8000\r\na=fmtp:{t} 0-16\r\n"
        );
    }
    let _ = write!(s, "a=ptime:20\r\na={}\r\n", p.direction);
    s
}

/// Our side of one leg's session description for the whole dialog (RFC 3264 §5, §8): one
/// `o=` session id, a version that grows by one whenever what we describe changes (and only
/// then), and the codec and telephone-event payload type agreed with the peer, so every answer
/// and re-offer on the leg is consistent with the last.
#[derive(Debug, Clone)]
pub struct LocalSdp {
    session_id: u64,
    version: u64,
    addr: SocketAddr,
    codecs: Vec<Codec>,
    telephone_event_pt: Option<u8>,
    direction: Direction,
    /// What the last description said (codecs, telephone-event, direction); `None` before
    /// the first, which gets version 1 whatever it holds.
    sent: Option<(Vec<Codec>, Option<u8>, Direction)>,
}

/// The payload type we offer for RFC 4733 telephone-event when the peer has not chosen one.
pub const DEFAULT_TELEPHONE_EVENT_PT: u8 = 101;

impl LocalSdp {
    /// A leg receiving media on `addr`; `session_id` should be random (RFC 4566 §5.2).
    pub fn new(session_id: u64, addr: SocketAddr) -> Self {
        LocalSdp {
            session_id,
            version: 1,
            addr,
            codecs: Codec::ALL.to_vec(),
            telephone_event_pt: Some(DEFAULT_TELEPHONE_EVENT_PT),
            direction: Direction::SendRecv,
            sent: None,
        }
    }

    /// An offer with every codec we support and our telephone-event type.
    pub fn offer(&mut self, direction: Direction) -> String {
        self.describe(
            Codec::ALL.to_vec(),
            Some(DEFAULT_TELEPHONE_EVENT_PT),
            direction,
        )
    }

    /// The answer to `offer` (initial or re-INVITE): its chosen codec, its telephone-event
    /// payload type (none when it offered none at 8000 Hz), and the direction that mirrors its
    /// own (sendonly → recvonly, inactive → inactive).
    pub fn answer(&mut self, offer: &Negotiated) -> String {
        self.describe(
            vec![offer.codec],
            offer.telephone_event_pt,
            offer.direction.reversed(),
        )
    }

    /// The answer to `offer` while we hold the peer (music on hold goes to it): we only send,
    /// or nothing at all when the peer does not receive.
    pub fn answer_holding(&mut self, offer: &Negotiated) -> String {
        let direction = match offer.direction {
            Direction::SendRecv | Direction::RecvOnly => Direction::SendOnly,
            Direction::SendOnly | Direction::Inactive => Direction::Inactive,
        };
        self.describe(vec![offer.codec], offer.telephone_event_pt, direction)
    }

    /// Takes note of the peer's answer to our offer: later descriptions carry only what was
    /// agreed (the codec it chose, its telephone-event type or none).
    pub fn agreed(&mut self, answer: &Negotiated) {
        self.codecs = vec![answer.codec];
        self.telephone_event_pt = answer.telephone_event_pt;
    }

    /// What we last described, again (a re-INVITE without an offer asks for our offer): the
    /// same version, since nothing changed.
    pub fn current(&mut self) -> String {
        self.describe(self.codecs.clone(), self.telephone_event_pt, self.direction)
    }

    /// The same description with a new direction (we hold or resume the peer).
    pub fn with_direction(&mut self, direction: Direction) -> String {
        self.describe(self.codecs.clone(), self.telephone_event_pt, direction)
    }

    /// The `o=` session id, fixed for the dialog.
    pub fn session_id(&self) -> u64 {
        self.session_id
    }

    /// The `o=` version of the last description.
    pub fn version(&self) -> u64 {
        self.version
    }

    fn describe(
        &mut self,
        codecs: Vec<Codec>,
        telephone_event_pt: Option<u8>,
        direction: Direction,
    ) -> String {
        if let Some((c, te, d)) = &self.sent {
            if *c != codecs || *te != telephone_event_pt || *d != direction {
                self.version += 1;
            }
        }
        self.sent = Some((codecs.clone(), telephone_event_pt, direction));
        self.codecs = codecs;
        self.telephone_event_pt = telephone_event_pt;
        self.direction = direction;
        build_sdp(SdpParams {
            session_id: self.session_id,
            session_version: self.version,
            ip: self.addr.ip(),
            port: self.addr.port(),
            codecs: &self.codecs,
            telephone_event_pt: self.telephone_event_pt,
            direction: self.direction,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    const SIPP: &str = "v=0\r\n\
o=user1 53655765 2353687637 IN IP4 127.0.1.1\r\n\
s=-\r\n\
c=IN IP4 127.0.1.1\r\n\
t=0 0\r\n\
m=audio 6000 RTP/AVP 0\r\n\
a=rtpmap:0 PCMU/8000\r\n";

    const BARESIP: &str = "v=0\r\n\
o=- 1437309003 1437309003 IN IP4 192.168.1.10\r\n\
s=-\r\n\
c=IN IP4 192.168.1.10\r\n\
t=0 0\r\n\
a=tool:baresip 3.10.1\r\n\
m=audio 10000 RTP/AVP 96 97 9 8 0 101\r\n\
b=AS:128\r\n\
a=rtpmap:96 opus/48000/2\r\n\
a=fmtp:96 stereo=1;sprop-stereo=1;maxaveragebitrate=28000\r\n\
a=rtpmap:97 L16/48000/2\r\n\
a=rtpmap:9 G722/8000\r\n\
a=rtpmap:8 PCMA/8000\r\n\
a=rtpmap:0 PCMU/8000\r\n\
a=rtpmap:101 telephone-event/8000\r\n\
a=fmtp:101 0-15\r\n\
a=rtcp-rsize\r\n\
a=ptime:20\r\n\
a=sendrecv\r\n\
a=label:1\r\n\
a=ssrc:2384032732 cname:e7b1c0a0-5a1f\r\n\
m=video 0 RTP/AVP 100\r\n";

    // Linphone style: \n only, session-level attributes, several telephone-event
    // rates, media-level c=, extra attributes.
    const LINPHONE: &str = "v=0\n\
o=bob 3402 1234 IN IP4 10.0.0.5\n\
s=Talk\n\
c=IN IP4 10.0.0.5\n\
t=0 0\n\
a=rtcp-xr:rcvr-rtt=all:10000 stat-summary=loss,dup,jitt,TTL voip-metrics\n\
m=audio 7078 RTP/AVP 96 97 98 0 8 18 101 99 100\n\
c=IN IP4 203.0.113.7\n\
a=rtpmap:96 opus/48000/2\n\
a=fmtp:96 useinbandfec=1\n\
a=rtpmap:97 speex/16000\n\
a=fmtp:97 vbr=on\n\
a=rtpmap:98 speex/8000\n\
a=fmtp:98 vbr=on\n\
a=fmtp:18 annexb=yes\n\
a=rtpmap:101 telephone-event/8000\n\
a=rtpmap:99 telephone-event/16000\n\
a=rtpmap:100 telephone-event/48000\n\
a=rtcp-fb:* trr-int 1000\n\
a=rtcp-fb:* ccm tmmbr\n";

    const IPV6: &str = "v=0\r\n\
o=- 42 42 IN IP6 2001:db8::10\r\n\
s=call\r\n\
c=IN IP6 2001:db8::10\r\n\
t=0 0\r\n\
m=audio 40002 RTP/AVP 8 101\r\n\
a=rtpmap:8 PCMA/8000\r\n\
a=rtpmap:101 telephone-event/8000\r\n\
a=fmtp:101 0-16\r\n\
a=ptime:30\r\n";

    #[test]
    fn sipp_default_offer() {
        let sd = SessionDescription::parse(SIPP).unwrap();
        let o = sd.origin.as_ref().unwrap();
        assert_eq!(o.username, "user1");
        assert_eq!(o.session_version, "2353687637");
        assert_eq!(sd.session_name.as_deref(), Some("-"));
        let n = negotiate(&sd).unwrap();
        assert_eq!(n.remote, "127.0.1.1:6000".parse().unwrap());
        assert_eq!(n.codec, Codec::Pcmu);
        assert_eq!(n.pt, 0);
        assert_eq!(n.telephone_event_pt, None);
        assert_eq!(n.direction, Direction::SendRecv);
        assert_eq!(n.offered, vec![(0, "PCMU/8000".to_owned())]);
        assert!(!n.is_hold());
    }

    #[test]
    fn baresip_many_codecs() {
        let sd = SessionDescription::parse(BARESIP).unwrap();
        assert_eq!(sd.media.len(), 2);
        let m = &sd.media[0];
        assert_eq!(m.fmtp(101), Some("0-15"));
        assert_eq!(m.rtpmap(96).unwrap().channels, Some(2));
        assert_eq!(m.ptime, Some(20));
        let n = negotiate(&sd).unwrap();
        assert_eq!(n.codec, Codec::Pcma); // PCMA is listed before PCMU
        assert_eq!(n.pt, 8);
        assert_eq!(n.telephone_event_pt, Some(101));
        assert_eq!(n.remote, "192.168.1.10:10000".parse().unwrap());
        assert_eq!(n.ptime, Some(20));
        let names: Vec<&str> = n.offered.iter().map(|(_, s)| s.as_str()).collect();
        assert_eq!(
            names,
            [
                "opus/48000/2",
                "L16/48000/2",
                "G722/8000",
                "PCMA/8000",
                "PCMU/8000",
                "telephone-event/8000"
            ]
        );
    }

    #[test]
    fn linphone_media_level_connection_and_te() {
        let sd = SessionDescription::parse(LINPHONE).unwrap();
        let n = negotiate(&sd).unwrap();
        assert_eq!(n.codec, Codec::Pcmu);
        assert_eq!(n.pt, 0);
        assert_eq!(n.telephone_event_pt, Some(101));
        assert_eq!(n.remote, "203.0.113.7:7078".parse().unwrap());
        assert_eq!(n.offered.len(), 9);
        assert_eq!(n.offered[5], (18, "G729/8000".to_owned()));
    }

    #[test]
    fn ipv6_offer() {
        let sd = SessionDescription::parse(IPV6).unwrap();
        let n = negotiate(&sd).unwrap();
        assert_eq!(
            n.remote,
            SocketAddr::new(IpAddr::V6("2001:db8::10".parse().unwrap()), 40002)
        );
        assert_eq!(n.codec, Codec::Pcma);
        assert_eq!(n.telephone_event_pt, Some(101));
        assert_eq!(n.ptime, Some(30));
    }

    #[test]
    fn dynamic_pt_by_name_and_no_rtpmap_static() {
        let sdp = "v=0\nc=IN IP4 1.2.3.4\nm=audio 5000 RTP/AVP 96 8\na=rtpmap:96 pcmu/8000\n";
        let n = negotiate(&SessionDescription::parse(sdp).unwrap()).unwrap();
        assert_eq!((n.codec, n.pt), (Codec::Pcmu, 96));
        // No rtpmaps at all: static types work.
        let sdp = "v=0\nc=IN IP4 1.2.3.4\nm=audio 5000 RTP/AVP 18 8 0\n";
        let n = negotiate(&SessionDescription::parse(sdp).unwrap()).unwrap();
        assert_eq!((n.codec, n.pt), (Codec::Pcma, 8));
        // A dynamic type without rtpmap means nothing; PCMU at 16 kHz is not ours.
        let sdp = "v=0\nc=IN IP4 1.2.3.4\nm=audio 5000 RTP/AVP 96 97\na=rtpmap:97 PCMU/16000\n";
        assert_eq!(
            negotiate(&SessionDescription::parse(sdp).unwrap()),
            Err(SdpError::NoCommonCodec)
        );
        assert_eq!(SdpError::NoCommonCodec.to_string(), "no common codec");
    }

    #[test]
    fn hold_detection() {
        let base = "v=0\r\nc=IN IP4 10.1.1.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n";
        let n = negotiate(&SessionDescription::parse(&format!("{base}a=sendonly\r\n")).unwrap())
            .unwrap();
        assert_eq!(n.direction, Direction::SendOnly);
        assert!(n.is_hold());
        let n = negotiate(&SessionDescription::parse(&format!("{base}a=inactive\r\n")).unwrap())
            .unwrap();
        assert!(n.is_hold());
        let n = negotiate(&SessionDescription::parse(&format!("{base}a=recvonly\r\n")).unwrap())
            .unwrap();
        assert!(!n.is_hold());
        assert_eq!(n.direction.reversed(), Direction::SendOnly);
        // Session-level direction, overridden at media level.
        let s = "v=0\r\na=sendonly\r\nc=IN IP4 10.1.1.1\r\nm=audio 4000 RTP/AVP 0\r\n";
        let n = negotiate(&SessionDescription::parse(s).unwrap()).unwrap();
        assert_eq!(n.direction, Direction::SendOnly);
        let s =
            "v=0\r\na=sendonly\r\nc=IN IP4 10.1.1.1\r\nm=audio 4000 RTP/AVP 0\r\na=sendrecv\r\n";
        let n = negotiate(&SessionDescription::parse(s).unwrap()).unwrap();
        assert_eq!(n.direction, Direction::SendRecv);
        // RFC 2543 hold.
        let s = "v=0\r\nc=IN IP4 0.0.0.0\r\nm=audio 4000 RTP/AVP 0\r\n";
        let n = negotiate(&SessionDescription::parse(s).unwrap()).unwrap();
        assert!(n.is_hold());
    }

    #[test]
    fn stream_selection_and_errors() {
        assert_eq!(SessionDescription::parse(""), Err(SdpError::NotSdp));
        assert_eq!(
            SessionDescription::parse("hello\r\n"),
            Err(SdpError::NotSdp)
        );
        assert_eq!(SessionDescription::parse("v=1\r\n"), Err(SdpError::NotSdp));
        let sd = SessionDescription::parse("v=0\r\ns=x\r\n").unwrap();
        assert_eq!(negotiate(&sd), Err(SdpError::NoAudio));
        // Disabled audio stream, then a usable one.
        let s = "v=0\nc=IN IP4 1.1.1.1\nm=audio 0 RTP/AVP 0\nm=audio 3000 RTP/AVP 8\n";
        let n = negotiate(&SessionDescription::parse(s).unwrap()).unwrap();
        assert_eq!(n.remote.port(), 3000);
        // SRTP only.
        let s = "v=0\nc=IN IP4 1.1.1.1\nm=audio 3000 RTP/SAVP 0\n";
        assert_eq!(
            negotiate(&SessionDescription::parse(s).unwrap()),
            Err(SdpError::UnsupportedTransport("RTP/SAVP".into()))
        );
        // No c= anywhere.
        let s = "v=0\nm=audio 3000 RTP/AVP 0\n";
        assert_eq!(
            negotiate(&SessionDescription::parse(s).unwrap()),
            Err(SdpError::MissingConnection)
        );
        // Malformed essential lines.
        for bad in [
            "v=0\nc=IN IP4\n",
            "v=0\nc=IN IP4 not-an-ip\n",
            "v=0\nc=IN IP4 ::1\n",
            "v=0\nc=XX IP4 1.2.3.4\n",
            "v=0\nc=IN IPX 1.2.3.4\n",
            "v=0\no=only three fields\n",
            "v=0\nm=audio\n",
            "v=0\nm=audio x RTP/AVP 0\n",
            "v=0\nm=audio 70000 RTP/AVP 0\n",
            "v=0\nm=audio 1/x RTP/AVP 0\n",
            "v=0\nm=audio 1 RTP/AVP 0\na=rtpmap:0\n",
            "v=0\nm=audio 1 RTP/AVP 0\na=rtpmap:300 PCMU/8000\n",
            "v=0\nm=audio 1 RTP/AVP 0\na=rtpmap:0 PCMU\n",
            "v=0\nm=audio 1 RTP/AVP 0\na=rtpmap:0 PCMU/8000/x\n",
            "v=0\nm=audio 1 RTP/AVP 0\na=rtpmap:0 /8000\n",
            "v=0\nm=audio 1 RTP/AVP 0\na=fmtp:abc x\n",
            "v=0\nm=audio 1 RTP/AVP 0\na=ptime:abc\n",
            "v=0\nm=audio 1 RTP/AVP 0\na=ptime:-5\n",
        ] {
            assert!(
                matches!(
                    SessionDescription::parse(bad),
                    Err(SdpError::InvalidLine { .. })
                ),
                "{bad:?}"
            );
        }
        // Tolerated: unknown lines, junk without '=', multicast ttl, ptime decimals.
        let s = "v=0\nx=whatever\njunk line\nc=IN IP4 224.2.1.1/127/2\nm=audio 5004/2 RTP/AVP 0\na=ptime:20.0\na=foo\n";
        let sd = SessionDescription::parse(s).unwrap();
        assert_eq!(sd.media[0].port_count, Some(2));
        assert_eq!(sd.media[0].ptime, Some(20));
        assert_eq!(
            sd.connection.unwrap().ip,
            IpAddr::V4(Ipv4Addr::new(224, 2, 1, 1))
        );
    }

    #[test]
    fn build_and_reparse() {
        let s = build_sdp(SdpParams {
            session_id: 123,
            session_version: 2,
            ip: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 5)),
            port: 20000,
            codecs: &[Codec::Pcmu, Codec::Pcma, Codec::Pcmu],
            telephone_event_pt: Some(101),
            direction: Direction::SendRecv,
        });
        assert_eq!(
            s,
            "v=0\r\n\
o=callplane 123 2 IN IP4 192.0.2.5\r\n\
s=Callplane\r\n\
c=IN IP4 192.0.2.5\r\n\
t=0 0\r\n\
m=audio 20000 RTP/AVP 0 8 101\r\n\
a=rtpmap:0 PCMU/8000\r\n\
a=rtpmap:8 PCMA/8000\r\n\
a=rtpmap:101 telephone-event/8000\r\n\
a=fmtp:101 0-16\r\n\
a=ptime:20\r\n\
a=sendrecv\r\n"
        );
        let n = negotiate(&SessionDescription::parse(&s).unwrap()).unwrap();
        assert_eq!(n.codec, Codec::Pcmu);
        assert_eq!(n.telephone_event_pt, Some(101));
        assert_eq!(n.remote, "192.0.2.5:20000".parse().unwrap());

        let s6 = build_sdp(SdpParams {
            session_id: 1,
            session_version: 1,
            ip: IpAddr::V6(Ipv6Addr::LOCALHOST),
            port: 30000,
            codecs: &[Codec::Pcma],
            telephone_event_pt: None,
            direction: Direction::RecvOnly,
        });
        assert!(s6.contains("c=IN IP6 ::1\r\n"));
        assert!(s6.contains("m=audio 30000 RTP/AVP 8\r\n"));
        assert!(s6.contains("a=recvonly\r\n"));
        assert!(!s6.contains("telephone-event"));
        let n = negotiate(&SessionDescription::parse(&s6).unwrap()).unwrap();
        assert_eq!(n.direction, Direction::RecvOnly);
        assert_eq!(n.remote.ip(), IpAddr::V6(Ipv6Addr::LOCALHOST));
    }

    #[test]
    fn parse_never_panics() {
        let mut seed = 77u32;
        let alphabet = b"v=0\r\nmac:/ 0123456789IPN4RTP/AVrtpmap";
        for _ in 0..3000 {
            let mut s = String::from("v=0\n");
            for _ in 0..(seed % 80) {
                seed ^= seed << 13;
                seed ^= seed >> 17;
                seed ^= seed << 5;
                s.push(alphabet[seed as usize % alphabet.len()] as char);
            }
            if let Ok(sd) = SessionDescription::parse(&s) {
                let _ = negotiate(&sd);
            }
            let _ = SessionDescription::parse(&format!("{BARESIP}{s}"));
        }
        // Multibyte characters around '=' and ':'.
        let _ = SessionDescription::parse("v=0\né=ü\na=rtpmap:ü\nm=é 1 x\n");
    }

    fn negotiated(text: &str) -> Negotiated {
        negotiate(&SessionDescription::parse(text).unwrap()).unwrap()
    }

    fn origin(text: &str) -> (String, String) {
        let o = SessionDescription::parse(text).unwrap().origin.unwrap();
        (o.session_id, o.session_version)
    }

    const PHONE_TE_16K: &str = "v=0\r\n\
o=- 7 7 IN IP4 127.0.0.1\r\n\
s=-\r\n\
c=IN IP4 127.0.0.1\r\n\
t=0 0\r\n\
m=audio 4000 RTP/AVP 8 0 101 100\r\n\
a=rtpmap:101 telephone-event/16000\r\n\
a=rtpmap:100 telephone-event/8000\r\n\
a=sendrecv\r\n";

    #[test]
    fn local_sdp_keeps_session_id_and_grows_version_on_change_only() {
        let addr: SocketAddr = "127.0.0.1:20000".parse().unwrap();
        let mut l = LocalSdp::new(4242, addr);
        let offer = negotiated(PHONE_TE_16K);
        let a1 = l.answer(&offer);
        assert_eq!(origin(&a1), ("4242".into(), "1".into()));
        // The offer's 8000 Hz telephone-event type, not 101 (which it mapped to 16 kHz).
        assert!(a1.contains("m=audio 20000 RTP/AVP 8 100\r\n"), "{a1}");
        assert!(a1.contains("a=rtpmap:100 telephone-event/8000"), "{a1}");
        assert!(!a1.contains("101"), "{a1}");
        // Same offer again (session refresh): same version.
        let a2 = l.answer(&offer);
        assert_eq!(origin(&a2), ("4242".into(), "1".into()));
        // Hold: sendonly → recvonly, version + 1, same session id.
        let hold = negotiated(&PHONE_TE_16K.replace("a=sendrecv", "a=sendonly"));
        let a3 = l.answer(&hold);
        assert!(a3.contains("a=recvonly"), "{a3}");
        assert_eq!(origin(&a3), ("4242".into(), "2".into()));
        // An offerless re-INVITE gets what we said last, unchanged.
        assert_eq!(l.current(), a3);
        let resume = l.answer(&offer);
        assert!(resume.contains("a=sendrecv"));
        assert_eq!(origin(&resume), ("4242".into(), "3".into()));
    }

    #[test]
    fn local_sdp_offer_then_agreed_answer() {
        let addr: SocketAddr = "127.0.0.1:20002".parse().unwrap();
        let mut l = LocalSdp::new(9, addr);
        let offer = l.offer(Direction::SendRecv);
        assert!(offer.contains("RTP/AVP 0 8 101"), "{offer}");
        let answer = negotiated(&SIPP.replace("6000", "6002"));
        l.agreed(&answer);
        // The callee's answer had no telephone-event: later descriptions carry none.
        let again = l.with_direction(Direction::SendOnly);
        assert!(
            again.contains("RTP/AVP 0\r\n") && again.contains("a=sendonly"),
            "{again}"
        );
        assert_eq!(origin(&again), ("9".into(), "2".into()));
    }
}
