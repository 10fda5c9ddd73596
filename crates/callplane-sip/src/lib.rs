//! Callplane's SIP layer: transports (UDP, TCP), transactions and dialogs via `rsipstack`
//! (pinned), wrapped behind our own types; the registrar with digest auth; outbound legs.
//! It knows nothing about routing plans or HTTP: the engine receives `InboundCall`s and
//! places `OutboundCall`s.

pub mod digest;
pub mod flood;
pub mod info_dtmf;
pub mod listen;
mod network;
pub mod parse;
pub mod registrar;
pub mod screen;
mod server;
mod validate;

pub use network::Network;
pub use server::{
    Answerer, InboundCall, InboundEvent, InboundLeg, OutboundCall, OutboundEvent, OutboundLeg,
    ReferProgress, ReinviteAnswer, ReinviteResponder, Reinviter, SipConfig, SipDirectory,
    SipServer,
};

/// The transport a SIP peer uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SipError {
    #[error("cannot bind SIP {transport} on {addr}: {reason}")]
    Bind {
        transport: &'static str,
        addr: std::net::SocketAddr,
        reason: String,
    },
    #[error("SIP stack: {0}")]
    Stack(String),
    #[error("invalid SIP URI {0:?}")]
    BadUri(String),
}

impl From<rsipstack::Error> for SipError {
    fn from(e: rsipstack::Error) -> Self {
        SipError::Stack(e.to_string())
    }
}
