//! callplane-media: everything between a call leg's SDP and its RTP packets.
//!
//! Pure building blocks (no I/O): [`g711`] companding, [`codec`] identities, [`rtp`]
//! header parsing, [`dtmf`] (RFC 4733 and in-band Goertzel), [`wav`] loading and
//! recording, [`sdp`] parsing/negotiation/building, [`room`] (who hears whom in a call,
//! and the N−1 mixer). The I/O part is [`session`]: a
//! [`MediaEngine`] that allocates [`MediaLeg`]s, each an RTP endpoint run by its own
//! tokio task (playback, DTMF, recording, bridging, stats).

#![warn(missing_docs)]

pub mod codec;
pub mod dtmf;
pub mod g711;
pub mod room;
pub mod rtp;
pub mod sdp;
pub mod session;
pub mod wav;

pub use codec::Codec;
pub use room::{
    Audience, MemberId, MemberKind, MixOutput, MixedAudio, MixedFrame, Mixer, RoomGraph,
};
pub use sdp::{
    build_sdp, negotiate, Direction, LocalSdp, Negotiated, SdpError, SdpParams, SessionDescription,
};
pub use session::{
    DtmfSource, MediaConfig, MediaEngine, MediaError, MediaEvent, MediaHandle, MediaLeg,
    MediaTotals, RemoteMedia, Room, RoomEvent, StreamStats, TapFrame, Track,
};
pub use wav::{decode_wav_8k, load_wav_8k, WavError, WavWriter};
