//! The SIP server: binds UDP/TCP listeners through rsipstack, dispatches incoming transactions
//! (INVITE → `InboundCall` for the engine, REGISTER → registrar, OPTIONS → 200, in-dialog
//! requests → their dialog), and places outbound INVITEs. rsipstack's types stay inside this
//! module; the engine sees only ours.

use crate::digest::{
    self, Algorithm, DigestCredentials, NonceIssuer, NonceStatus, Replay, ReplayGuard,
};
use crate::flood::{self, FailedInvites, Held};
use crate::info_dtmf::parse_info_dtmf;
use crate::listen::{first_message_within, ConnectionCounter, ConnectionLimits, Listener};
use crate::registrar::{Binding, FailureLimiter, Location, LockoutKey};
use crate::screen::ScreenedUdp;
use crate::validate::validate_request;
use crate::{SipError, Transport};
use rsipstack::dialog::authenticate::Credential;
use rsipstack::dialog::dialog::{
    Dialog, DialogState, DialogStateReceiver, TerminatedReason, TransactionHandle,
};
use rsipstack::dialog::dialog_layer::DialogLayer;
use rsipstack::dialog::invitation::{InviteAsyncResult, InviteOption};
use rsipstack::dialog::invite_dialog::InviteDialog;
use rsipstack::sip::headers::make_header;
use rsipstack::sip::prelude::{HeadersExt, ToTypedHeader};
use rsipstack::sip::SipMessage;
use rsipstack::sip::{Header, Method, Request, StatusCode};
use rsipstack::transaction::endpoint::EndpointInnerRef;
use rsipstack::transaction::endpoint::MessageInspector;
use rsipstack::transaction::transaction::Transaction;
use rsipstack::transport::tcp::TcpConnection;
use rsipstack::transport::udp::UdpConnection;
use rsipstack::transport::{SipAddr, SipConnection, TcpListenerConnection, TransportLayer};
use rsipstack::EndpointBuilder;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// How long a nonce we issued stays good (then `stale=true`).
const NONCE_LIFETIME_SECS: u64 = 300;

const ALLOW: &str = "INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, UPDATE, REGISTER, NOTIFY";

/// Listening addresses and policies of the SIP server.
#[derive(Debug, Clone)]
pub struct SipConfig {
    pub udp: Option<SocketAddr>,
    pub tcp: Option<SocketAddr>,
    /// Digest realm presented in challenges.
    pub realm: String,
    /// The `User-Agent`/`Server` banner; `None` sends none.
    pub user_agent: Option<String>,
    /// Digest algorithms offered in challenges, in order (phones often read only the first).
    pub digest_algorithms: Vec<Algorithm>,
    /// Open SIP/TCP connections accepted, in total and per source address.
    pub tcp_limits: ConnectionLimits,
    /// A new TCP connection that has not delivered a complete message within this is closed.
    pub tcp_first_message_timeout: Duration,
    /// A TCP connection with no bytes received for this long is closed (CRLF keep-alives
    /// count); TCP registrations are granted less than this so phones refresh in time.
    pub tcp_idle_timeout: Duration,
    /// Failed authentications from one source address within `auth_failure_window`
    /// before that source is refused for `auth_block_time`.
    pub max_auth_failures: u32,
    pub auth_failure_window: Duration,
    pub auth_block_time: Duration,
    /// Count failures per (source, user) instead of per source: a locked-out address can still
    /// be used by other users who authenticate correctly (an office behind one NAT).
    pub lockout_per_user: bool,
    /// Maximum registration lifetime granted.
    pub max_expires: u32,
    /// Limits on INVITEs that fail (see `flood`).
    pub failed_invites: flood::Limits,
}

impl Default for SipConfig {
    fn default() -> Self {
        SipConfig {
            udp: None,
            tcp: None,
            realm: "callplane".into(),
            user_agent: Some(concat!("Callplane/", env!("CARGO_PKG_VERSION")).into()),
            digest_algorithms: vec![Algorithm::Md5, Algorithm::Sha256],
            tcp_limits: ConnectionLimits {
                max_total: 4096,
                max_per_source: 64,
            },
            tcp_first_message_timeout: Duration::from_secs(10),
            tcp_idle_timeout: Duration::from_secs(300),
            max_auth_failures: 5,
            auth_failure_window: Duration::from_secs(60),
            auth_block_time: Duration::from_secs(300),
            lockout_per_user: false,
            max_expires: 3600,
            failed_invites: flood::Limits {
                per_source: 50,
                held: 500,
            },
        }
    }
}

/// What the SIP layer needs to know about users and trusted peers; implemented by the binary
/// over the store, so the SIP crate never sees routing data.
pub trait SipDirectory: Send + Sync + 'static {
    /// The digest HA1 of a SIP user, `H(username:realm:password)` in lower-case hex, for the
    /// server's realm and `algorithm`, if the user exists. The store keeps HA1 values rather
    /// than passwords, so a copy of the database does not hand out the passwords themselves.
    fn sip_user_ha1(&self, username: &str, algorithm: Algorithm) -> Option<String>;
    /// Whether INVITEs from this address are accepted without digest auth (trunks, trusted
    /// networks).
    fn is_trusted_source(&self, ip: IpAddr) -> bool;
    /// Whether calls to this number can be routed at all. Asked only for INVITEs from a
    /// source over its failed-INVITE limit, to drop those that would fail (unknown numbers).
    fn number_exists(&self, number: &str) -> bool;
}

/// A new call offered to us.
pub struct InboundCall {
    pub sip_call_id: String,
    /// The caller's number/user (From URI user part).
    pub caller: String,
    pub caller_display: Option<String>,
    /// The called number (Request-URI user part, else To user part).
    pub called: String,
    pub source: SocketAddr,
    pub transport: Transport,
    /// The SIP user who authenticated this INVITE, if it came from a phone.
    pub authenticated_user: Option<String>,
    /// The SDP offer, if the INVITE carried one.
    pub offer: Option<String>,
    pub leg: InboundLeg,
}

/// Events on an inbound leg.
#[derive(Debug)]
pub enum InboundEvent {
    /// The ACK for our 2xx arrived.
    Confirmed,
    /// The caller cancelled before answer (487 already sent).
    Cancelled,
    /// The caller sent BYE (200 already sent).
    RemoteBye,
    /// No ACK for our 2xx, or the transport failed.
    Failed(String),
    /// A digit from SIP INFO.
    Dtmf(char),
    /// A re-INVITE (for example hold); answer with `responder`.
    Reinvite {
        sdp: Option<String>,
        responder: ReinviteResponder,
    },
    /// How a REFER we sent is going (its NOTIFY, already answered 200).
    ReferProgress(ReferProgress),
}

/// What a NOTIFY of the `refer` event package says (RFC 3515 §2.4.5): the status line of the
/// `message/sipfrag` body, and whether the subscription is over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReferProgress {
    /// The status code of the referred call's latest response (100 while trying).
    pub status: u16,
    /// `Subscription-State: terminated`, or a final status: no more NOTIFYs will come.
    pub done: bool,
}

impl ReferProgress {
    /// Reads a refer NOTIFY's body and `Subscription-State`; `None` when the body holds no
    /// SIP status line.
    pub fn parse(sipfrag: &str, subscription_state: Option<&str>) -> Option<ReferProgress> {
        let line = sipfrag.lines().find(|l| !l.trim().is_empty())?;
        let mut words = line.split_whitespace();
        if !words.next()?.eq_ignore_ascii_case("SIP/2.0") {
            return None;
        }
        let status: u16 = words.next()?.parse().ok()?;
        if !(100..700).contains(&status) {
            return None;
        }
        let terminated = subscription_state.is_some_and(|s| {
            s.split(';')
                .next()
                .is_some_and(|v| v.trim().eq_ignore_ascii_case("terminated"))
        });
        Some(ReferProgress {
            status,
            done: terminated || status >= 200,
        })
    }
}

/// Answers a re-INVITE with our current SDP.
#[derive(Debug)]
pub struct ReinviteResponder(TransactionHandle);

impl ReinviteResponder {
    pub async fn accept(self, sdp: String) {
        let headers = vec![Header::ContentType("application/sdp".into())];
        if let Err(e) = self
            .0
            .respond(StatusCode::OK, Some(headers), Some(sdp.into_bytes()))
            .await
        {
            debug!(error = %e, "re-INVITE transaction already gone");
        }
    }

    pub async fn reject(self, status: u16) {
        self.0.reply(StatusCode::from(status)).await.ok();
    }
}

/// Sends re-INVITEs on a leg's dialog from any task (hold and resume from our side), so the
/// task that owns the leg keeps reading its events while the transaction runs.
#[derive(Clone)]
pub struct Reinviter {
    dialog: InviteDialog,
}

/// The peer's final answer to our re-INVITE.
#[derive(Debug, Clone)]
pub struct ReinviteAnswer {
    pub status: u16,
    /// Its SDP answer (a 2xx's body), when it carried one.
    pub sdp: Option<String>,
}

impl Reinviter {
    /// Sends REFER (RFC 3515) with `Refer-To: <target>` and waits for its final response's
    /// status (202 accepted; the outcome then comes as `ReferProgress` events). A `target`
    /// without a URI scheme is a number: `sip:<target>@<the peer's host>`. Waits up to 2 s for
    /// the dialog to be confirmed (a REFER right after our 200 may beat the ACK).
    pub async fn refer(&self, target: &str) -> Result<u16, SipError> {
        let deadline = tokio::time::Instant::now() + BYE_WAITS_FOR_ACK;
        while !matches!(self.dialog.state(), DialogState::Confirmed(..)) {
            if matches!(self.dialog.state(), DialogState::Terminated(..))
                || tokio::time::Instant::now() >= deadline
            {
                return Err(SipError::Stack("the dialog is not confirmed".into()));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let uri = self.refer_uri(target);
        let resp = self
            .dialog
            .refer(format!("<{uri}>"), None, None)
            .await?
            .ok_or_else(|| SipError::Stack("the dialog is not confirmed".into()))?;
        Ok(resp.status_code.code())
    }

    /// `target` as a URI: as it is with a scheme, else a number at the peer's host (the From
    /// host of an inbound call, the Request-URI host of one we placed).
    fn refer_uri(&self, target: &str) -> String {
        let lower = target.to_ascii_lowercase();
        if ["sip:", "sips:", "tel:"]
            .iter()
            .any(|s| lower.starts_with(s))
        {
            return target.to_owned();
        }
        let req = self.dialog.initial_request();
        let host = match self.dialog.role() {
            rsipstack::transaction::key::TransactionRole::Server => req
                .from_header()
                .ok()
                .and_then(|f| f.typed().ok())
                .map(|f| f.uri.host_with_port.to_string()),
            _ => Some(req.uri.host_with_port.to_string()),
        };
        format!(
            "sip:{target}@{}",
            host.unwrap_or_else(|| "localhost".into())
        )
    }

    /// Sends a re-INVITE with our `sdp` offer and waits for its final response (a 491 glare
    /// is retried after RFC 3261's random wait, at most three times). An error when the dialog
    /// is not confirmed (no ACK yet, or over) or the transaction failed.
    pub async fn reinvite(&self, sdp: String) -> Result<ReinviteAnswer, SipError> {
        let headers = vec![Header::ContentType("application/sdp".into())];
        let resp = self
            .dialog
            .reinvite_with_glare_retry(Some(headers), Some(sdp.into_bytes()), 3)
            .await?
            .ok_or_else(|| SipError::Stack("the dialog is not confirmed".into()))?;
        let status = resp.status_code.code();
        let sdp = ((200..300).contains(&status) && !resp.body.is_empty())
            .then(|| String::from_utf8_lossy(&resp.body).into_owned());
        Ok(ReinviteAnswer { status, sdp })
    }
}

/// Waits a moment after answering an in-dialog request whose news may end the call (a digit
/// that ends the last block, a NOTIFY that ends a REFER): rsipstack's `reply` only queues the
/// 200 for the transaction's task, and without this our BYE sometimes overtook it on the wire.
async fn reply_head_start() {
    tokio::time::sleep(Duration::from_millis(2)).await;
}

/// What an in-dialog request means to the leg's owner, once the stack's side is answered.
enum InDialog {
    Dtmf(char),
    Reinvite {
        sdp: Option<String>,
        responder: ReinviteResponder,
    },
    ReferProgress(ReferProgress),
    Done,
}

/// Answers the in-dialog requests both leg kinds treat alike: INFO (DTMF), OPTIONS, UPDATE
/// without an offer, and the methods we do not implement (501). A re-INVITE is handed back
/// for the leg's owner to answer with its SDP. Other states need nothing.
async fn answer_in_dialog(state: DialogState) -> InDialog {
    match state {
        DialogState::Info(_, req, handle) => {
            let digit = parse_info_dtmf(content_type(&req).as_deref(), &req.body);
            handle.reply(StatusCode::OK).await.ok();
            if digit.is_some() {
                reply_head_start().await;
            }
            digit.map_or(InDialog::Done, InDialog::Dtmf)
        }
        DialogState::Updated(_, req, handle) if req.method == Method::Invite => {
            InDialog::Reinvite {
                sdp: body_text(&req),
                responder: ReinviteResponder(handle),
            }
        }
        // UPDATE without an offer (session refresh) and OPTIONS: accept.
        DialogState::Updated(_, _, handle) | DialogState::Options(_, _, handle) => {
            handle.reply(StatusCode::OK).await.ok();
            InDialog::Done
        }
        DialogState::Notify(_, req, handle)
            if header_values(&req, "Event")
                .chain(header_values(&req, "o"))
                .any(|e| {
                    e.split(';')
                        .next()
                        .is_some_and(|p| p.trim().eq_ignore_ascii_case("refer"))
                }) =>
        {
            let state = header_values(&req, "Subscription-State").next();
            let progress = ReferProgress::parse(&String::from_utf8_lossy(&req.body), state);
            handle.reply(StatusCode::OK).await.ok();
            if progress.is_some() {
                reply_head_start().await;
            }
            progress.map_or(InDialog::Done, InDialog::ReferProgress)
        }
        // A NOTIFY of another event package: no subscription of ours.
        DialogState::Notify(_, _, handle) => {
            handle.reply(StatusCode::from(481)).await.ok();
            InDialog::Done
        }
        DialogState::Refer(_, _, handle)
        | DialogState::Message(_, _, handle)
        | DialogState::Publish(_, _, handle) => {
            handle.reply(StatusCode::from(501)).await.ok();
            InDialog::Done
        }
        _ => InDialog::Done,
    }
}

/// The server side of an inbound call's dialog. Its dialog states are read by a forwarding
/// task of its own (see [`forward_inbound`]), so an event is never lost when the owner's
/// `select!` picks another branch: `next_event` only takes from a channel.
pub struct InboundLeg {
    dialog: InviteDialog,
    events: mpsc::UnboundedReceiver<InboundEvent>,
    layer: Arc<DialogLayer>,
    flags: Arc<LegFlags>,
    /// Where a refusal is counted (see `flood`), and the INVITE transaction's slot for the
    /// guard that then counts it as held until the transaction ends.
    failures: FailureReport,
}

/// What a leg and its forwarding task both know: whether the ACK came, and whether we ended
/// the dialog ourselves (then its termination is no news to the owner).
#[derive(Default)]
struct LegFlags {
    confirmed: AtomicBool,
    ended: AtomicBool,
    /// We sent a 2xx (inbound legs): a BYE waits for its ACK.
    answered: AtomicBool,
    /// Signalled when the ACK arrives.
    acked: tokio::sync::Notify,
}

/// How long a BYE right after our 2xx waits for the caller's ACK (RFC 3261 §15: the callee
/// should not send BYE before the ACK; Timer H would give up at 32 s, a phone's ACK takes ms).
const BYE_WAITS_FOR_ACK: Duration = Duration::from_secs(2);

/// Reads an inbound dialog's states until the dialog is gone: answers in-dialog requests
/// (INFO, OPTIONS, UPDATE…) and hands the leg's owner what it must know.
async fn forward_inbound(
    mut states: DialogStateReceiver,
    layer: Arc<DialogLayer>,
    id: rsipstack::dialog::DialogId,
    flags: Arc<LegFlags>,
    events: mpsc::UnboundedSender<InboundEvent>,
) {
    while let Some(state) = states.recv().await {
        let event = match state {
            DialogState::Confirmed(..) => {
                if flags.confirmed.swap(true, Ordering::AcqRel) {
                    continue;
                }
                flags.acked.notify_one();
                InboundEvent::Confirmed
            }
            DialogState::Terminated(_, reason) => {
                layer.remove_dialog(&id);
                if flags.ended.swap(true, Ordering::AcqRel) {
                    continue;
                }
                match reason {
                    TerminatedReason::UacCancel => InboundEvent::Cancelled,
                    TerminatedReason::UacBye => InboundEvent::RemoteBye,
                    other => InboundEvent::Failed(format!("{other:?}")),
                }
            }
            // Boxed: rare, and its state would otherwise make every leg's task ~2 KB.
            other => match Box::pin(answer_in_dialog(other)).await {
                InDialog::Dtmf(d) => InboundEvent::Dtmf(d),
                InDialog::Reinvite { sdp, responder } => InboundEvent::Reinvite { sdp, responder },
                InDialog::ReferProgress(p) => InboundEvent::ReferProgress(p),
                InDialog::Done => continue,
            },
        };
        if events.send(event).is_err() {
            // The leg is gone; its dialog is being torn down.
            return;
        }
    }
}

/// How an inbound leg reports a failed INVITE: counted against its source, and held until its
/// transaction (the task that runs it) is gone.
struct FailureReport {
    server: Arc<Inner>,
    source: IpAddr,
    slot: Arc<Mutex<Option<Held>>>,
}

impl InboundLeg {
    fn new(
        dialog: InviteDialog,
        states: DialogStateReceiver,
        layer: Arc<DialogLayer>,
        failures: FailureReport,
    ) -> Self {
        let flags = Arc::new(LegFlags::default());
        let (tx, events) = mpsc::unbounded_channel();
        tokio::spawn(forward_inbound(
            states,
            layer.clone(),
            dialog.id(),
            flags.clone(),
            tx,
        ));
        InboundLeg {
            dialog,
            events,
            layer,
            flags,
            failures,
        }
    }

    /// 180 Ringing, or 183 Session Progress with early media when `sdp` is given.
    pub fn ringing(&self, sdp: Option<String>) {
        let headers = sdp
            .as_ref()
            .map(|_| vec![Header::ContentType("application/sdp".into())]);
        if let Err(e) = self.dialog.ringing(headers, sdp.map(String::into_bytes)) {
            debug!(error = %e, "ringing on a finished transaction");
        }
    }

    /// 200 OK with our SDP answer.
    pub fn answer(&self, sdp: String) -> Result<(), SipError> {
        self.answerer().answer(sdp)
    }

    /// What sends this leg's 200 OK from another task than the one that owns the leg, so its
    /// owner learns at once whether the answer went out.
    pub fn answerer(&self) -> Answerer {
        Answerer {
            dialog: self.dialog.clone(),
            flags: self.flags.clone(),
        }
    }

    /// What sends re-INVITEs on this leg's dialog from another task.
    pub fn reinviter(&self) -> Reinviter {
        Reinviter {
            dialog: self.dialog.clone(),
        }
    }

    /// Whether our 200 OK went out.
    pub fn is_answered(&self) -> bool {
        self.flags.answered.load(Ordering::Acquire)
    }

    /// A final non-2xx response, with an optional Reason header value (RFC 3326).
    pub fn reject(&mut self, status: u16, reason: Option<String>) {
        let was_ended = self.flags.ended.swap(true, Ordering::AcqRel);
        if !was_ended
            && !self.flags.confirmed.load(Ordering::Acquire)
            && flood::counts_as_failure(status)
        {
            let f = &self.failures;
            let held = lock(&f.server.failed_invites).record_failure(f.source, Instant::now());
            *lock(&f.slot) = Some(held);
        }
        if let Err(e) = self.dialog.reject(Some(StatusCode::from(status)), reason) {
            debug!(error = %e, "reject on a finished transaction");
        }
        self.layer.remove_dialog(&self.dialog.id());
    }

    /// BYE with a Reason header, after answer.
    pub async fn hangup(&mut self, reason: Option<String>) {
        if self.flags.ended.swap(true, Ordering::AcqRel) {
            return;
        }
        if self.flags.answered.load(Ordering::Acquire)
            && !self.flags.confirmed.load(Ordering::Acquire)
        {
            // A BYE sent on the heels of our 200 can overtake it (UDP) and the caller drops
            // the call as unknown: wait for the ACK first.
            let _ = tokio::time::timeout(BYE_WAITS_FOR_ACK, self.flags.acked.notified()).await;
        }
        let r = match reason {
            Some(r) => self.dialog.bye_with_reason(r).await,
            None => self.dialog.bye().await,
        };
        if let Err(e) = r {
            debug!(error = %e, "BYE failed");
        }
        self.layer.remove_dialog(&self.dialog.id());
    }

    /// The next event; None once the dialog is gone. Cancel-safe.
    pub async fn next_event(&mut self) -> Option<InboundEvent> {
        self.events.recv().await
    }
}

/// Sends an inbound leg's 200 OK (see [`InboundLeg::answerer`]).
#[derive(Clone)]
pub struct Answerer {
    dialog: InviteDialog,
    flags: Arc<LegFlags>,
}

impl Answerer {
    /// 200 OK with our SDP answer; an error when the INVITE's transaction is already over
    /// (the caller cancelled first).
    pub fn answer(&self, sdp: String) -> Result<(), SipError> {
        let headers = vec![Header::ContentType("application/sdp".into())];
        self.dialog
            .accept(Some(headers), Some(sdp.into_bytes()))
            .map_err(SipError::from)?;
        self.flags.answered.store(true, Ordering::Release);
        Ok(())
    }
}

impl Drop for InboundLeg {
    fn drop(&mut self) {
        self.layer.remove_dialog(&self.dialog.id());
    }
}

/// A call we place (BRIDGE destinations).
#[derive(Debug, Clone)]
pub struct OutboundCall {
    /// Request-URI, e.g. `sip:alice@192.0.2.1:5062` or `sip:+4922155400300@trunk.example`.
    pub target_uri: String,
    /// Where to send the INVITE (a registration's source address or a trunk's host:port).
    pub destination: SocketAddr,
    pub transport: Transport,
    /// The From user (the number we present).
    pub from_user: String,
    pub from_display: Option<String>,
    pub offer: String,
    /// Digest credentials for a challenging trunk: (username, password).
    pub credential: Option<(String, String)>,
    pub extra_headers: Vec<(String, String)>,
}

/// Events on an outbound leg.
#[derive(Debug)]
pub enum OutboundEvent {
    /// 180/183, with SDP when the callee sent early media.
    Ringing {
        status: u16,
        sdp: Option<String>,
    },
    Answered {
        sdp: Option<String>,
    },
    /// A final non-2xx, a timeout or a transport failure (status 408/503 then).
    Failed {
        status: u16,
    },
    RemoteBye,
    Dtmf(char),
    Reinvite {
        sdp: Option<String>,
        responder: ReinviteResponder,
    },
    /// How a REFER we sent is going (its NOTIFY, already answered 200).
    ReferProgress(ReferProgress),
}

/// The client side of a call we placed. Like [`InboundLeg`], its dialog states and the
/// INVITE's final outcome are read by a forwarding task of its own ([`forward_outbound`]).
pub struct OutboundLeg {
    call_id: String,
    cancel_reasons: CancelReasons,
    dialog: InviteDialog,
    events: mpsc::UnboundedReceiver<OutboundEvent>,
    layer: Arc<DialogLayer>,
    /// The confirmed dialog's id (its remote tag known), set by the forwarding task on 2xx.
    confirmed_id: Arc<Mutex<Option<rsipstack::dialog::DialogId>>>,
    flags: Arc<LegFlags>,
}

/// The event an outbound INVITE's final outcome means.
fn outcome_event(
    result: Result<InviteAsyncResult, tokio::task::JoinError>,
    confirmed_id: &Mutex<Option<rsipstack::dialog::DialogId>>,
) -> OutboundEvent {
    match result {
        Ok(Ok((id, Some(resp)))) => {
            let code = resp.status_code.code();
            if (200..300).contains(&code) {
                *lock(confirmed_id) = Some(id);
                let sdp = (!resp.body.is_empty())
                    .then(|| String::from_utf8_lossy(&resp.body).into_owned());
                return OutboundEvent::Answered { sdp };
            }
            OutboundEvent::Failed { status: code }
        }
        Ok(Ok((_, None))) => OutboundEvent::Failed { status: 408 },
        Ok(Err(e)) => {
            debug!(error = %e, "outbound INVITE failed");
            let status = if e.to_string().to_ascii_lowercase().contains("timeout") {
                408
            } else {
                503
            };
            OutboundEvent::Failed { status }
        }
        Err(_) => OutboundEvent::Failed { status: 500 },
    }
}

/// Reads an outbound dialog's states and its INVITE's outcome until the dialog is gone.
async fn forward_outbound(
    mut states: DialogStateReceiver,
    mut outcome: Option<JoinHandle<InviteAsyncResult>>,
    layer: Arc<DialogLayer>,
    confirmed_id: Arc<Mutex<Option<rsipstack::dialog::DialogId>>>,
    flags: Arc<LegFlags>,
    events: mpsc::UnboundedSender<OutboundEvent>,
) {
    loop {
        let event = tokio::select! {
            result = async { outcome.as_mut().expect("guarded").await }, if outcome.is_some() => {
                outcome = None;
                let ev = outcome_event(result, &confirmed_id);
                if !matches!(ev, OutboundEvent::Answered { .. }) {
                    flags.ended.store(true, Ordering::Release);
                }
                ev
            }
            state = states.recv() => {
                let Some(state) = state else { return };
                match state {
                    DialogState::Early(_, resp) => {
                        let sdp = (!resp.body.is_empty())
                            .then(|| String::from_utf8_lossy(&resp.body).into_owned());
                        OutboundEvent::Ringing { status: resp.status_code.code(), sdp }
                    }
                    DialogState::Terminated(..) => {
                        if outcome.is_some() {
                            // The final response arrives through `outcome`.
                            continue;
                        }
                        if let Some(id) = lock(&confirmed_id).take() {
                            layer.remove_dialog(&id);
                        }
                        if flags.ended.swap(true, Ordering::AcqRel) {
                            continue;
                        }
                        // After answer the only way the dialog ends on its own is the
                        // callee's BYE (or its transport failing, treated alike).
                        OutboundEvent::RemoteBye
                    }
                    // Boxed: rare, and its state would otherwise make every leg's task ~2 KB.
                    other => match Box::pin(answer_in_dialog(other)).await {
                        InDialog::Dtmf(d) => OutboundEvent::Dtmf(d),
                        InDialog::Reinvite { sdp, responder } => OutboundEvent::Reinvite { sdp, responder },
                        InDialog::ReferProgress(p) => OutboundEvent::ReferProgress(p),
                        InDialog::Done => continue,
                    },
                }
            }
        };
        if events.send(event).is_err() {
            return;
        }
    }
}

impl OutboundLeg {
    /// The dialog's SIP Call-ID.
    pub fn call_id(&self) -> &str {
        &self.call_id
    }

    /// What sends re-INVITEs on this leg's dialog (once answered) from another task.
    pub fn reinviter(&self) -> Reinviter {
        Reinviter {
            dialog: self.dialog.clone(),
        }
    }

    /// The next event; None once the dialog is gone. Cancel-safe.
    pub async fn next_event(&mut self) -> Option<OutboundEvent> {
        self.events.recv().await
    }

    /// CANCEL before answer, BYE after; `reason` is a Reason header value.
    pub async fn hangup(&mut self, reason: Option<String>) {
        if self.flags.ended.swap(true, Ordering::AcqRel) {
            return;
        }
        if let Some(r) = &reason {
            if let Ok(mut m) = self.cancel_reasons.0.lock() {
                m.insert(self.call_id.clone(), r.clone());
            }
        }
        let r = match reason {
            Some(r) => self.dialog.hangup_with_reason(r).await,
            None => self.dialog.hangup().await,
        };
        if let Err(e) = r {
            debug!(error = %e, "hangup of outbound leg failed");
        }
        self.remove();
    }

    fn remove(&mut self) {
        if let Some(id) = lock(&self.confirmed_id).take() {
            self.layer.remove_dialog(&id);
        }
    }
}

impl Drop for OutboundLeg {
    fn drop(&mut self) {
        self.remove();
        if let Ok(mut m) = self.cancel_reasons.0.lock() {
            m.remove(&self.call_id);
        }
    }
}

/// Accepts SIP/TCP connections within the listener's limits; each is handed to the stack only
/// once it has sent a complete message, so silent or trickling connections cost no reader and
/// no buffers, and are closed after `first_message_timeout`.
async fn accept_sip_tcp(
    mut listener: Listener,
    endpoint: EndpointInnerRef,
    cancel: CancellationToken,
    first_message_timeout: Duration,
) {
    let Ok(local) = listener.local_addr() else {
        return;
    };
    let local = SipAddr::new(rsipstack::sip::Transport::Tcp, local.into());
    loop {
        let (stream, peer, permit) = tokio::select! {
            _ = cancel.cancelled() => return,
            a = listener.accept() => a,
        };
        let endpoint = endpoint.clone();
        let local = local.clone();
        let token = cancel.child_token();
        tokio::spawn(async move {
            tokio::select! {
                ok = first_message_within(&stream, first_message_timeout) => {
                    if !ok {
                        debug!(%peer, "TCP connection closed: no complete message in time");
                        return;
                    }
                }
                _ = permit.evicted() => {
                    debug!(%peer, "idle TCP connection closed to make room");
                    return;
                }
            }
            permit.activate();
            let conn = match TcpConnection::from_stream(stream, local, Some(token.clone())) {
                Ok(c) => c,
                Err(e) => {
                    debug!(%peer, error = %e, "TCP connection dropped");
                    return;
                }
            };
            endpoint
                .transport_layer
                .add_connection(SipConnection::Tcp(conn));
            // The stack cancels the connection's token when its reader ends (peer closed,
            // idle timeout, shutdown): then its place in the table is free again.
            token.cancelled().await;
            drop(permit);
        });
    }
}

/// Adjusts what we send: Reason on our CANCELs, and no version banner when it is turned off.
struct Outgoing {
    cancel_reasons: CancelReasons,
    banner: bool,
}

impl MessageInspector for Outgoing {
    fn before_send(&self, msg: SipMessage, dest: Option<&SipAddr>) -> SipMessage {
        let mut msg = self.cancel_reasons.before_send(msg, dest);
        if !self.banner {
            let headers = match &mut msg {
                SipMessage::Request(r) => &mut r.headers,
                SipMessage::Response(r) => &mut r.headers,
            };
            headers.retain(|h| !matches!(h, Header::UserAgent(_) | Header::Server(_)));
        }
        msg
    }

    fn after_received(&self, msg: SipMessage, _from: Option<&SipAddr>) -> SipMessage {
        msg
    }
}

/// Reason headers to put on the CANCEL of an outbound INVITE, by Call-ID. rsipstack sends
/// CANCEL itself without extra headers; its message inspector is the seam to add one.
#[derive(Default, Clone)]
struct CancelReasons(Arc<Mutex<HashMap<String, String>>>);

impl MessageInspector for CancelReasons {
    fn before_send(&self, mut msg: SipMessage, _dest: Option<&SipAddr>) -> SipMessage {
        if let SipMessage::Request(req) = &mut msg {
            if req.method == Method::Cancel {
                let call_id = req.call_id_header().map(|c| c.value().to_string()).ok();
                let reason =
                    call_id.and_then(|id| self.0.lock().ok().and_then(|m| m.get(&id).cloned()));
                if let Some(reason) = reason {
                    if !req.headers.iter().any(|h| matches!(h, Header::Reason(_))) {
                        req.headers.push(Header::Reason(reason.into()));
                    }
                }
            }
        }
        msg
    }

    fn after_received(&self, msg: SipMessage, _from: Option<&SipAddr>) -> SipMessage {
        msg
    }
}

struct Inner {
    endpoint: EndpointInnerRef,
    cancel_reasons: CancelReasons,
    layer: Arc<DialogLayer>,
    directory: Arc<dyn SipDirectory>,
    location: Mutex<Location>,
    limiter: Mutex<FailureLimiter<LockoutKey>>,
    failed_invites: Mutex<FailedInvites>,
    nonces: NonceIssuer,
    replays: Mutex<ReplayGuard>,
    cfg: SipConfig,
    cancel: CancellationToken,
    local_udp: Option<SocketAddr>,
    local_tcp: Option<SocketAddr>,
    tcp_connections: Option<ConnectionCounter>,
}

/// The running SIP server; cheap to clone.
#[derive(Clone)]
pub struct SipServer {
    inner: Arc<Inner>,
}

/// A lock that survives a panicked holder (the guarded tables stay consistent per call).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn content_type(req: &Request) -> Option<String> {
    req.headers.iter().find_map(|h| match h {
        Header::ContentType(ct) => Some(ct.value().to_string()),
        _ => None,
    })
}

fn body_text(req: &Request) -> Option<String> {
    (!req.body.is_empty()).then(|| String::from_utf8_lossy(&req.body).into_owned())
}

/// Values of every header with this name (case-insensitive).
fn header_values<'a>(req: &'a Request, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    req.headers
        .iter()
        .filter(move |h| h.name().eq_ignore_ascii_case(name))
        .map(|h| h.value())
}

fn source_of(tx: &Transaction) -> Option<(SocketAddr, Transport)> {
    let conn = tx.connection.as_ref()?;
    let transport = match conn.transport() {
        rsipstack::sip::Transport::Tcp => Transport::Tcp,
        _ => Transport::Udp,
    };
    // The top Via carries `received`/`rport` as the transport layer saw the sender.
    let via = tx.original.top_via_header().ok()?;
    let typed = via.typed().ok()?;
    let mut ip: Option<IpAddr> = None;
    let mut port: Option<u16> = None;
    for p in &typed.params {
        match p {
            rsipstack::sip::Param::Received(r) => ip = r.value().parse().ok(),
            rsipstack::sip::Param::Other(k, Some(v)) if k.value().eq_ignore_ascii_case("rport") => {
                port = v.value().parse().ok()
            }
            _ => {}
        }
    }
    let sent_by = typed.uri.host_with_port.clone();
    let ip = ip.or_else(|| sent_by.host.to_string().parse().ok())?;
    let port = port
        .or_else(|| sent_by.port.map(|p| p.value()))
        .unwrap_or(5060);
    Some((SocketAddr::new(ip, port), transport))
}

impl SipServer {
    /// Binds the listeners, starts the endpoint and returns the server and the stream of
    /// inbound calls.
    pub async fn start(
        cfg: SipConfig,
        directory: Arc<dyn SipDirectory>,
    ) -> Result<(SipServer, mpsc::Receiver<InboundCall>), SipError> {
        let cancel = CancellationToken::new();
        let transport_layer = TransportLayer::new(cancel.child_token());
        let mut local_udp = None;
        let mut local_tcp = None;
        if let Some(addr) = cfg.udp {
            let bind_err = |reason: String| SipError::Bind {
                transport: "udp",
                addr,
                reason,
            };
            // The stack reads through our screen (see `screen`), not the bare socket.
            let socket = ScreenedUdp::bind(addr).map_err(|e| bind_err(e.to_string()))?;
            let conn =
                UdpConnection::from_socket(Arc::new(socket), None, Some(cancel.child_token()))
                    .await
                    .map_err(|e| bind_err(e.to_string()))?;
            local_udp = conn.get_addr().get_socketaddr().ok();
            transport_layer.add_transport(conn.into());
        }
        // Our own TCP listener (limits, first-message gate), bound now so that an address in
        // use stops the start; rsipstack's would bind only once the endpoint runs.
        let mut tcp_listener = None;
        let mut tcp_connections = None;
        if let Some(addr) = cfg.tcp {
            let l =
                Listener::bind("sip-tcp", addr, cfg.tcp_limits).map_err(|e| SipError::Bind {
                    transport: "tcp",
                    addr,
                    reason: e.to_string(),
                })?;
            local_tcp = l.local_addr().ok();
            tcp_connections = Some(l.counter());
            tcp_listener = Some(l);
        }
        transport_layer.set_stream_idle_timeout(cfg.tcp_idle_timeout);
        let first_message_timeout = cfg.tcp_first_message_timeout;
        let tcp_cancel = cancel.child_token();
        let cancel_reasons = CancelReasons::default();
        let endpoint = EndpointBuilder::new()
            .with_user_agent(cfg.user_agent.as_deref().unwrap_or(""))
            .with_transport_layer(transport_layer)
            .with_cancel_token(cancel.child_token())
            .with_inspector(Box::new(Outgoing {
                cancel_reasons: cancel_reasons.clone(),
                banner: cfg.user_agent.is_some(),
            }))
            .build();
        let mut incoming = endpoint.incoming_transactions()?;
        let layer = Arc::new(DialogLayer::new(endpoint.inner.clone()));
        let mut secret = [0u8; 32];
        rand::fill(&mut secret);
        let inner = Arc::new(Inner {
            endpoint: endpoint.inner.clone(),
            cancel_reasons,
            layer,
            directory,
            location: Mutex::new(Location::default()),
            limiter: Mutex::new(FailureLimiter::new(
                cfg.max_auth_failures,
                cfg.auth_failure_window,
                cfg.auth_block_time,
            )),
            failed_invites: Mutex::new(FailedInvites::new(cfg.failed_invites)),
            nonces: NonceIssuer::new(secret, NONCE_LIFETIME_SECS),
            replays: Mutex::new(ReplayGuard::new(NONCE_LIFETIME_SECS, 200_000)),
            cfg,
            cancel,
            local_udp,
            local_tcp,
            tcp_connections,
        });
        let ep = endpoint.inner.clone();
        let mut serving = Box::pin(async move {
            if let Err(e) = ep.serve().await {
                warn!(error = %e, "SIP endpoint stopped");
            }
        });
        // The first poll starts the stack's listeners (UDP) and parks on its event queue; only
        // then is our TCP address registered with it, as a listener address for Via/Contact
        // that the stack must not bind itself.
        tokio::select! {
            biased;
            _ = &mut serving => {}
            _ = std::future::ready(()) => {}
        }
        tokio::spawn(serving);
        if let (Some(listener), Some(local)) = (tcp_listener, local_tcp) {
            let entry = TcpListenerConnection::new(local, None).await?;
            endpoint.inner.transport_layer.add_transport(entry.into());
            tokio::spawn(accept_sip_tcp(
                listener,
                endpoint.inner.clone(),
                tcp_cancel,
                first_message_timeout,
            ));
        }
        let (calls_tx, calls_rx) = mpsc::channel(1024);
        let server = SipServer { inner };
        let dispatcher = server.clone();
        tokio::spawn(async move {
            while let Some(tx) = incoming.recv().await {
                dispatcher.dispatch(tx, &calls_tx);
            }
        });
        Ok((server, calls_rx))
    }

    pub fn local_udp(&self) -> Option<SocketAddr> {
        self.inner.local_udp
    }

    pub fn local_tcp(&self) -> Option<SocketAddr> {
        self.inner.local_tcp
    }

    pub fn shutdown(&self) {
        self.inner.cancel.cancel();
    }

    /// Live registrations of a SIP user.
    pub fn lookup_registration(&self, username: &str) -> Vec<Binding> {
        match self.inner.location.lock() {
            Ok(loc) => loc.lookup(username, Instant::now()),
            Err(_) => Vec::new(),
        }
    }

    fn dispatch(&self, mut tx: Transaction, calls: &mpsc::Sender<InboundCall>) {
        if tx.original.method != Method::Ack {
            let reliable = tx.connection.as_ref().is_some_and(|c| c.is_reliable());
            if let Err(refusal) = validate_request(&tx.original, reliable) {
                debug!(status = refusal.status, reason = %refusal.reason, "request refused");
                // A malformed INVITE counts against its source like any failed INVITE (its
                // transaction is not kept: the answer is sent once, the ACK finds none).
                if tx.original.method == Method::Invite {
                    if let Some((source, _)) = source_of(&tx) {
                        let now = Instant::now();
                        let mut f = lock(&self.inner.failed_invites);
                        if f.over_limit(source.ip(), now) {
                            drop(f);
                            self.drop_failing_invite(source.ip());
                            return;
                        }
                        drop(f.record_failure(source.ip(), now));
                    }
                }
                tokio::spawn(async move {
                    // Answer in our own version (a 505 to SIP/7.0 is still SIP/2.0);
                    // `reply_with` copies the request's version and adds the To tag.
                    tx.original.version = rsipstack::sip::Version::V2;
                    let mut headers = vec![Header::Warning(
                        format!("399 callplane \"{}\"", refusal.reason).into(),
                    )];
                    if !refusal.unsupported.is_empty() {
                        headers.push(make_header("Unsupported", refusal.unsupported.join(", ")));
                    }
                    tx.reply_with(StatusCode::from(refusal.status), headers, None)
                        .await
                        .ok();
                });
                return;
            }
        }
        let has_to_tag = tx
            .original
            .to_header()
            .ok()
            .and_then(|t| t.tag().ok().flatten())
            .is_some();
        if has_to_tag {
            let dialog = self.inner.layer.match_dialog(&tx);
            tokio::spawn(async move {
                match dialog {
                    Some(mut d) => {
                        if let Err(e) = d.handle(&mut tx).await {
                            debug!(error = %e, "in-dialog request failed");
                        }
                    }
                    None if tx.original.method == Method::Ack => {}
                    None => {
                        tx.reply(StatusCode::CallTransactionDoesNotExist).await.ok();
                    }
                }
            });
            return;
        }
        match tx.original.method {
            Method::Invite => self.on_invite(tx, calls),
            Method::Register => {
                let server = self.clone();
                tokio::spawn(async move { server.on_register(tx).await });
            }
            Method::Options => {
                tokio::spawn(async move {
                    let headers = vec![
                        make_header("Allow", ALLOW.into()),
                        make_header("Accept", "application/sdp".into()),
                    ];
                    tx.reply_with(StatusCode::OK, headers, None).await.ok();
                });
            }
            Method::Ack => {}
            _ => {
                tokio::spawn(async move {
                    let headers = vec![make_header("Allow", ALLOW.into())];
                    tx.reply_with(StatusCode::MethodNotAllowed, headers, None)
                        .await
                        .ok();
                });
            }
        }
    }

    /// Checks digest credentials in `header` (Authorization or Proxy-Authorization) for
    /// `method`. Ok(username) on success; Err(response to send) otherwise.
    ///
    /// Only a nonce issued to this source address is considered at all (another address gets a
    /// new challenge and nothing is counted), so credentials captured elsewhere are worthless
    /// and nobody can run up another address's failure count; a verified (nonce, nc) pair is
    /// accepted once.
    fn authenticate(
        &self,
        tx: &Transaction,
        header: &str,
        source: IpAddr,
    ) -> Result<String, AuthOutcome> {
        let now = Instant::now();
        let unix = unix_now();
        let cfg = &self.inner.cfg;
        let creds = header_values(&tx.original, header)
            .filter_map(|v| DigestCredentials::parse(v).ok())
            .find(|c| c.realm == cfg.realm && cfg.digest_algorithms.contains(&c.algorithm));
        let lockout_key = |user: Option<&str>| -> LockoutKey {
            (
                source,
                cfg.lockout_per_user.then(|| user.unwrap_or("").to_string()),
            )
        };
        let blocked = |key: &LockoutKey| {
            self.inner
                .limiter
                .lock()
                .map(|l| l.is_blocked(key, now))
                .unwrap_or(true)
        };
        let Some(creds) = creds else {
            // In per-source mode a locked source gets no new challenge either.
            if !cfg.lockout_per_user && blocked(&lockout_key(None)) {
                return Err(AuthOutcome::Forbidden);
            }
            return Err(AuthOutcome::Challenge { stale: false });
        };
        let key = lockout_key(Some(&creds.username));
        if blocked(&key) {
            return Err(AuthOutcome::Forbidden);
        }
        let nonce = self.inner.nonces.check(&creds.nonce, unix, source);
        if nonce == NonceStatus::Invalid {
            return Err(AuthOutcome::Challenge { stale: false });
        }
        let method = tx.original.method.to_string();
        let ok = self
            .inner
            .directory
            .sip_user_ha1(&creds.username, creds.algorithm)
            .is_some_and(|ha1| creds.verify_ha1(&method, &ha1));
        if nonce == NonceStatus::Stale {
            // stale=true tells a client that knew the password to retry with the new nonce
            // without asking its user (RFC 7616 §3.3); a wrong answer just gets a challenge.
            return Err(AuthOutcome::Challenge { stale: ok });
        }
        if ok {
            let replay = self
                .inner
                .replays
                .lock()
                .map(|mut g| g.check_and_record(&creds.nonce, creds.nc.as_deref(), unix))
                .unwrap_or(Replay::Replayed);
            if replay == Replay::Replayed {
                warn!(%source, "SIP credentials replayed: refused");
                return Err(AuthOutcome::Challenge { stale: false });
            }
            if let Ok(mut l) = self.inner.limiter.lock() {
                l.record_success(&key);
            }
            Ok(creds.username)
        } else {
            // Usernames are not logged with the reason, so a scan learns nothing from logs.
            warn!(%source, "SIP authentication failed");
            if let Ok(mut l) = self.inner.limiter.lock() {
                l.record_failure(key, now);
            }
            Err(AuthOutcome::Forbidden)
        }
    }

    fn challenge_headers(&self, name: &str, stale: bool, client: IpAddr) -> Vec<Header> {
        let nonce = self.inner.nonces.issue(unix_now(), client);
        // RFC 8760 lets a client pick the first challenge it supports; many deployed phones
        // (and SIPp) only read the first one, so the configured order matters (MD5 first by
        // default; some phones give up on a list of several).
        self.inner
            .cfg
            .digest_algorithms
            .iter()
            .map(|alg| {
                make_header(
                    name,
                    digest::challenge(&self.inner.cfg.realm, &nonce, *alg, stale),
                )
            })
            .collect()
    }

    async fn on_register(&self, mut tx: Transaction) {
        let Some((source, transport)) = source_of(&tx) else {
            tx.reply(StatusCode::BadRequest).await.ok();
            return;
        };
        let username = match self.authenticate(&tx, "Authorization", source.ip()) {
            Ok(u) => u,
            Err(AuthOutcome::Challenge { stale }) => {
                let headers = self.challenge_headers("WWW-Authenticate", stale, source.ip());
                tx.reply_with(StatusCode::Unauthorized, headers, None)
                    .await
                    .ok();
                return;
            }
            Err(AuthOutcome::Forbidden) => {
                tx.reply(StatusCode::Forbidden).await.ok();
                return;
            }
        };
        // The AOR's user must be the authenticated user: nobody registers for someone else.
        let aor_user = tx
            .original
            .to_header()
            .ok()
            .and_then(|t| t.uri().ok())
            .and_then(|u| u.user().map(str::to_string));
        if aor_user.as_deref() != Some(username.as_str()) {
            tx.reply(StatusCode::Forbidden).await.ok();
            return;
        }
        let default_expires = header_values(&tx.original, "Expires")
            .next()
            .and_then(|v| v.trim().parse::<u32>().ok())
            .unwrap_or(3600);
        let contacts: Vec<String> = header_values(&tx.original, "Contact")
            .flat_map(split_contacts)
            .collect();
        // Over TCP the binding is only as good as the connection, which is closed after
        // `tcp_idle_timeout` without traffic: grant less, so the phone's refresh keeps it open.
        let mut max_expires = self.inner.cfg.max_expires;
        if transport == Transport::Tcp && !self.inner.cfg.tcp_idle_timeout.is_zero() {
            let idle = self.inner.cfg.tcp_idle_timeout.as_secs();
            let cap = idle.saturating_sub(30).max(idle / 2).max(1);
            max_expires = max_expires.min(u32::try_from(cap).unwrap_or(u32::MAX));
        }
        let now = Instant::now();
        let mut reply_contacts = Vec::new();
        {
            let Ok(mut loc) = self.inner.location.lock() else {
                tx.reply(StatusCode::ServerInternalError).await.ok();
                return;
            };
            for c in &contacts {
                if c.trim() == "*" {
                    loc.remove_all(&username);
                    continue;
                }
                let expires = contact_param(c, "expires")
                    .and_then(|v| v.parse::<u32>().ok())
                    .unwrap_or(default_expires)
                    .min(max_expires);
                let Some(uri) = contact_uri(c) else { continue };
                loc.update(
                    &username,
                    Binding {
                        contact: uri,
                        source,
                        transport,
                        expires_at: now,
                    },
                    Duration::from_secs(expires.into()),
                    now,
                );
            }
            loc.purge_expired(now);
            for b in loc.lookup(&username, now) {
                let left = b.expires_at.saturating_duration_since(now).as_secs();
                reply_contacts.push(make_header(
                    "Contact",
                    format!("<{}>;expires={}", b.contact, left),
                ));
            }
        }
        info!(user = %username, %source, bindings = reply_contacts.len(), "registered");
        reply_contacts.push(make_header("Date", httpdate_now()));
        tx.reply_with(StatusCode::OK, reply_contacts, None)
            .await
            .ok();
    }

    fn on_invite(&self, mut tx: Transaction, calls: &mpsc::Sender<InboundCall>) {
        let Some((source, transport)) = source_of(&tx) else {
            tokio::spawn(async move { tx.reply(StatusCode::BadRequest).await.ok() });
            return;
        };
        let now = Instant::now();
        let over_limit = lock(&self.inner.failed_invites).over_limit(source.ip(), now);
        let authenticated_user = if self.inner.directory.is_trusted_source(source.ip()) {
            None
        } else {
            match self.authenticate(&tx, "Proxy-Authorization", source.ip()) {
                Ok(u) => {
                    lock(&self.inner.failed_invites).record_success(source.ip(), now);
                    Some(u)
                }
                Err(_) if over_limit => {
                    self.drop_failing_invite(source.ip());
                    return;
                }
                Err(outcome) => {
                    let held = lock(&self.inner.failed_invites).record_failure(source.ip(), now);
                    let headers = match outcome {
                        AuthOutcome::Challenge { stale } => {
                            Some(self.challenge_headers("Proxy-Authenticate", stale, source.ip()))
                        }
                        AuthOutcome::Forbidden => None,
                    };
                    tokio::spawn(async move {
                        let r = match headers {
                            Some(h) => {
                                tx.reply_with(StatusCode::ProxyAuthenticationRequired, h, None)
                                    .await
                            }
                            None => tx.reply(StatusCode::Forbidden).await,
                        };
                        let mut held = Some(held);
                        if r.is_ok() {
                            // Keep the transaction alive to absorb the ACK and retransmissions.
                            // A caller that ACKs is no scanner: its transaction only waits
                            // out Timer I (5 s) and no longer counts as held.
                            while let Some(m) = tx.receive().await {
                                if matches!(&m, SipMessage::Request(r) if r.method == Method::Ack) {
                                    held = None;
                                }
                            }
                        }
                        drop(held);
                    });
                    return;
                }
            }
        };
        let req = &tx.original;
        let sip_call_id = req
            .call_id_header()
            .map(|c| c.value().to_string())
            .unwrap_or_default();
        let from = req.from_header().ok().and_then(|f| f.typed().ok());
        let caller = from
            .as_ref()
            .and_then(|f| f.uri.user().map(str::to_string))
            .unwrap_or_else(|| "anonymous".into());
        let caller_display = from.and_then(|f| f.display_name);
        let called = req
            .uri
            .user()
            .map(str::to_string)
            .or_else(|| {
                req.to_header()
                    .ok()
                    .and_then(|t| t.uri().ok())
                    .and_then(|u| u.user().map(str::to_string))
            })
            .unwrap_or_default();
        if over_limit && !self.inner.directory.number_exists(&called) {
            self.drop_failing_invite(source.ip());
            return;
        }
        let offer = body_text(req);
        let (state_tx, state_rx) = self.inner.layer.new_dialog_state_channel();
        // The stack's default Contact is its first (UDP) address: a phone that reached us over
        // TCP must be told to send its ACK and BYE over TCP too.
        let contact = self.local_contact(None, transport);
        let dialog = match self
            .inner
            .layer
            .get_or_create_server_invite(&tx, state_tx, None, contact)
        {
            Ok(d) => d,
            Err(e) => {
                debug!(error = %e, "cannot create dialog");
                tokio::spawn(async move { tx.reply(StatusCode::BadRequest).await.ok() });
                return;
            }
        };
        // Filled by `InboundLeg::reject` if the call is refused; lives as long as the transaction.
        let held_slot = Arc::new(Mutex::new(None));
        let call = InboundCall {
            sip_call_id,
            caller,
            caller_display,
            called,
            source,
            transport,
            authenticated_user,
            offer,
            leg: InboundLeg::new(
                dialog.clone(),
                state_rx,
                self.inner.layer.clone(),
                FailureReport {
                    server: self.inner.clone(),
                    source: source.ip(),
                    slot: held_slot.clone(),
                },
            ),
        };
        if let Err(e) = calls.try_send(call) {
            warn!("engine not accepting calls: {e}");
            tokio::spawn(async move {
                tx.reply(StatusCode::ServiceUnavailable).await.ok();
            });
            return;
        }
        let mut dialog = Dialog::Invite(dialog);
        tokio::spawn(async move {
            if let Err(e) = dialog.handle(&mut tx).await {
                debug!(error = %e, "INVITE transaction ended with error");
            }
            drop(held_slot);
        });
    }

    /// Drops an INVITE that would fail from a source over its failed-INVITE limit: no answer,
    /// no dialog, no call (see `flood`); logged once per interval with the count.
    fn drop_failing_invite(&self, source: IpAddr) {
        let (to_log, held) = {
            let mut f = lock(&self.inner.failed_invites);
            (f.record_drop(source, Instant::now()), f.held())
        };
        if let Some(n) = to_log {
            warn!(%source, dropped = n, held, "INVITEs that would fail dropped (failed-INVITE limit)");
        }
    }

    /// INVITEs that would fail dropped since start, and failed INVITE transactions held now.
    pub fn failed_invites(&self) -> (u64, usize) {
        let f = lock(&self.inner.failed_invites);
        (f.dropped(), f.held())
    }

    /// Our Contact URI for a dialog over `transport`: its listener's address, with
    /// `;transport=tcp` for TCP (RFC 3261 §8.1.1.8: the peer sends in-dialog requests there).
    fn local_contact(
        &self,
        user: Option<&str>,
        transport: Transport,
    ) -> Option<rsipstack::sip::Uri> {
        let (addr, param) = match transport {
            Transport::Tcp => (self.inner.local_tcp?, ";transport=tcp"),
            Transport::Udp => (self.inner.local_udp?, ""),
        };
        let user = user
            .filter(|u| !u.is_empty())
            .map(|u| format!("{u}@"))
            .unwrap_or_default();
        format!("sip:{user}{addr}{param}").as_str().try_into().ok()
    }

    /// Places an outbound call. Events come from the returned leg.
    pub fn invite(&self, call: OutboundCall) -> Result<OutboundLeg, SipError> {
        let callee: rsipstack::sip::Uri = call
            .target_uri
            .as_str()
            .try_into()
            .map_err(|_| SipError::BadUri(call.target_uri.clone()))?;
        let local = match call.transport {
            Transport::Tcp => self.inner.local_tcp.or(self.inner.local_udp),
            Transport::Udp => self.inner.local_udp.or(self.inner.local_tcp),
        }
        .ok_or_else(|| SipError::Stack("no local SIP transport".into()))?;
        let call_id = format!("{:032x}@callplane", {
            let mut b = [0u8; 16];
            rand::fill(&mut b);
            u128::from_be_bytes(b)
        });
        let caller_str = format!("sip:{}@{}", call.from_user, local);
        let caller: rsipstack::sip::Uri = caller_str
            .as_str()
            .try_into()
            .map_err(|_| SipError::BadUri(caller_str.clone()))?;
        let contact = self
            .local_contact(Some(&call.from_user), call.transport)
            .unwrap_or_else(|| caller.clone());
        let sip_transport = match call.transport {
            Transport::Udp => rsipstack::sip::Transport::Udp,
            Transport::Tcp => rsipstack::sip::Transport::Tcp,
        };
        let destination = SipAddr::new(sip_transport, call.destination.into());
        let headers: Vec<Header> = call
            .extra_headers
            .iter()
            .map(|(k, v)| make_header(k, v.clone()))
            .collect();
        let opt = InviteOption {
            caller_display_name: call.from_display.clone(),
            caller,
            callee,
            destination: Some(destination),
            content_type: Some("application/sdp".into()),
            offer: Some(call.offer.into_bytes()),
            contact,
            credential: call.credential.map(|(username, password)| Credential {
                username,
                password,
                realm: None,
                auth_username: None,
            }),
            headers: (!headers.is_empty()).then_some(headers),
            call_id: Some(call_id.clone()),
            ..Default::default()
        };
        let (state_tx, state_rx) = self.inner.layer.new_dialog_state_channel();
        let (dialog, outcome) = self.inner.layer.do_invite_async(opt, state_tx)?;
        let confirmed_id = Arc::new(Mutex::new(None));
        let flags = Arc::new(LegFlags::default());
        let (tx, events) = mpsc::unbounded_channel();
        tokio::spawn(forward_outbound(
            state_rx,
            Some(outcome),
            self.inner.layer.clone(),
            confirmed_id.clone(),
            flags.clone(),
            tx,
        ));
        Ok(OutboundLeg {
            call_id,
            cancel_reasons: self.inner.cancel_reasons.clone(),
            dialog,
            events,
            layer: self.inner.layer.clone(),
            confirmed_id,
            flags,
        })
    }

    /// Number of live dialogs (for metrics and leak checks).
    pub fn dialog_count(&self) -> usize {
        self.inner.layer.len()
    }

    /// Open SIP/TCP connections (admitted by the listener), for metrics.
    pub fn tcp_connections(&self) -> usize {
        self.inner.tcp_connections.as_ref().map_or(0, |c| c.open())
    }

    /// The endpoint's running transaction count (for metrics).
    pub fn running_transactions(&self) -> usize {
        self.inner.endpoint.get_stats().running_transactions
    }
}

enum AuthOutcome {
    Challenge { stale: bool },
    Forbidden,
}

/// Splits a Contact header value on commas outside `<...>` and quotes.
pub(crate) fn split_contacts(v: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut depth = 0i32;
    let mut quoted = false;
    let mut cur = String::new();
    for c in v.chars() {
        match c {
            '"' => quoted = !quoted,
            '<' if !quoted => depth += 1,
            '>' if !quoted => depth -= 1,
            ',' if !quoted && depth <= 0 => {
                out.push(std::mem::take(&mut cur));
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    if !cur.trim().is_empty() {
        out.push(cur);
    }
    out
}

/// The URI inside a Contact value (`"Name" <sip:x@y>;expires=60` or `sip:x@y;expires=60`).
pub(crate) fn contact_uri(c: &str) -> Option<String> {
    let c = c.trim();
    if let Some(start) = c.find('<') {
        let end = c[start..].find('>')? + start;
        return Some(c.get(start + 1..end)?.trim().to_string());
    }
    let uri = c.split(';').next()?.trim();
    (!uri.is_empty()).then(|| uri.to_string())
}

/// A header parameter of a Contact value (after the `>` when the URI is bracketed).
pub(crate) fn contact_param(c: &str, name: &str) -> Option<String> {
    let params = match c.rfind('>') {
        Some(i) => &c[i + 1..],
        None => c.split_once(';').map(|(_, p)| p).unwrap_or(""),
    };
    params.split(';').find_map(|p| {
        let (k, v) = p.split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_string())
    })
}

fn httpdate_now() -> String {
    // RFC 1123 date for the Date header of REGISTER responses (some phones set their clock).
    let secs = unix_now();
    let days = secs / 86400;
    let rem = secs % 86400;
    let (h, m, s) = (rem / 3600, (rem % 3600) / 60, rem % 60);
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days as i64 + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let mo = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if mo <= 2 { y + 1 } else { y };
    const WD: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MO: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    format!(
        "{}, {:02} {} {} {:02}:{:02}:{:02} GMT",
        WD[(days % 7) as usize],
        d,
        MO[(mo - 1).clamp(0, 11) as usize],
        y,
        h,
        m,
        s
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refer_notify_bodies() {
        let p = |body: &str, state: Option<&str>| ReferProgress::parse(body, state);
        assert_eq!(
            p("SIP/2.0 100 Trying\r\n", Some("active;expires=60")),
            Some(ReferProgress {
                status: 100,
                done: false
            })
        );
        assert_eq!(
            p("SIP/2.0 200 OK", Some("terminated;reason=noresource")),
            Some(ReferProgress {
                status: 200,
                done: true
            })
        );
        // A final status ends it even when the subscription still says active.
        assert_eq!(
            p("\r\nsip/2.0 486 Busy Here\r\n", None).map(|p| p.done),
            Some(true)
        );
        // Terminated without a final status (the transferee gave up).
        assert_eq!(
            p("SIP/2.0 180 Ringing", Some(" Terminated ")),
            Some(ReferProgress {
                status: 180,
                done: true
            })
        );
        for bad in [
            "",
            "HTTP/1.1 200 OK",
            "SIP/2.0 abc",
            "SIP/2.0 99 Odd",
            "SIP/2.0",
        ] {
            assert_eq!(p(bad, None), None, "{bad:?}");
        }
    }

    #[test]
    fn contact_parsing() {
        let v = r#""Alice, A." <sip:alice@10.0.0.1:5062;transport=tcp>;expires=60, <sip:alice@10.0.0.2>"#;
        let cs = split_contacts(v);
        assert_eq!(cs.len(), 2);
        assert_eq!(
            contact_uri(&cs[0]).as_deref(),
            Some("sip:alice@10.0.0.1:5062;transport=tcp")
        );
        assert_eq!(contact_param(&cs[0], "expires").as_deref(), Some("60"));
        assert_eq!(contact_param(&cs[1], "expires"), None);
        assert_eq!(
            contact_uri("sip:bob@h;expires=30").as_deref(),
            Some("sip:bob@h")
        );
        assert_eq!(
            contact_param("sip:bob@h;expires=30", "expires").as_deref(),
            Some("30")
        );
        assert_eq!(contact_uri("<sip:broken"), None);
    }

    #[test]
    fn http_date_format() {
        let d = httpdate_now();
        assert!(d.ends_with(" GMT"), "{d}");
        assert_eq!(d.len(), 29, "{d}");
    }
}
