//! A WHIP or WHEP resource's ICE session: trickle and ICE-restart PATCHes (RFC 9725 §4.3,
//! draft-ietf-wish-whep §4.5) with the resource's entity-tag, and the messages the HTTP layer
//! sends a resource (its worker, or its task). Viewers (`rtc/viewer.rs`) and publishers
//! (`publisher.rs`) share it, so PATCH behaves the same on both.

use std::sync::Arc;

use str0m::net::{Protocol, Receive, Transmit};
use str0m::{Candidate, Input, Output, Rtc};
use tokio::sync::{mpsc, oneshot};

use crate::rtc::offer::{Fragment, Offer, valid_ice_credentials};
use crate::rtc::udp::{Datagram, RtcPort, Target};

/// A resource's place on the shared RTC port: datagrams for each of its ICE sessions' ufrags
/// go to its target. Dropping it stops the routing.
#[derive(Debug)]
pub struct PortLink {
    port: Arc<RtcPort>,
    target: Target,
    ufrags: Vec<String>,
}

impl PortLink {
    /// Routes `ufrag` to `target`.
    pub fn new(port: Arc<RtcPort>, ufrag: &str, target: Target) -> Self {
        let mut link = Self {
            port,
            target,
            ufrags: Vec::new(),
        };
        link.add(ufrag);
        link
    }

    /// A link with a channel of its own (a publisher's task): the link, and where its
    /// datagrams come out.
    pub fn with_channel(
        port: Arc<RtcPort>,
        ufrag: &str,
    ) -> (Self, mpsc::Receiver<(u64, Datagram)>) {
        let (tx, rx) = mpsc::channel(256);
        (Self::new(port, ufrag, Target { tx, key: 0 }), rx)
    }

    /// Routes an ICE restart's new ufrag here too (late datagrams of the old one still come).
    pub fn add(&mut self, ufrag: &str) {
        self.port.register(ufrag, self.target.clone());
        self.ufrags.push(ufrag.to_string());
    }
}

impl Drop for PortLink {
    fn drop(&mut self) {
        self.port
            .unregister(self.ufrags.iter().map(String::as_str), &self.target);
    }
}

/// Ends a connection so the remote learns it at once (RFC 7675 §5.2, immediate revocation of
/// consent): str0m queues an RTCP BYE and a DTLS close_notify, which the caller's next poll
/// sends. A connection that cannot close that way (DTLS never started) is just dropped.
pub fn close(rtc: &mut Rtc) {
    if let Err(e) = rtc.close() {
        tracing::debug!("no graceful close ({e}): dropping the connection");
        rtc.disconnect();
    }
}

/// Hands a datagram from the port to `rtc`, received at `now`; one str0m refuses is logged
/// and dropped (the viewer's and the publisher's cores share this).
pub fn receive(rtc: &mut Rtc, dg: &Datagram, now: std::time::Instant) {
    let input = match Receive::new(Protocol::Udp, dg.source, dg.destination, &dg.data) {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!("datagram refused: {e}");
            return;
        }
    };
    if let Err(e) = rtc.handle_input(Input::Receive(now, input)) {
        tracing::debug!("datagram refused: {e}");
    }
}

/// After [`close`]: the next of str0m's closing datagrams (RTCP BYE, DTLS close_notify), or
/// `None` once there are no more.
pub fn closing_datagram(rtc: &mut Rtc) -> Option<Transmit> {
    loop {
        match rtc.poll_output() {
            Ok(Output::Transmit(t)) => return Some(t),
            Ok(Output::Event(_)) => continue,
            Ok(Output::Timeout(_)) | Err(_) => return None,
        }
    }
}

/// Where the HTTP layer's messages to a resource go: its own task (a publisher), or the
/// worker that drives it (a viewer), addressed by its key there.
#[derive(Debug, Clone)]
pub enum Inbox {
    Task(mpsc::Sender<PeerMsg>),
    Worker {
        tx: mpsc::UnboundedSender<(u64, PeerMsg)>,
        key: u64,
    },
}

impl Inbox {
    /// Hands `msg` over without waiting; false if the resource is gone (or its task is too
    /// far behind to take it).
    pub fn try_send(&self, msg: PeerMsg) -> bool {
        match self {
            Inbox::Task(tx) => tx.try_send(msg).is_ok(),
            Inbox::Worker { tx, key } => tx.send((*key, msg)).is_ok(),
        }
    }

    /// Hands `msg` over; false if the resource is gone.
    pub async fn send(&self, msg: PeerMsg) -> bool {
        match self {
            Inbox::Task(tx) => tx.send(msg).await.is_ok(),
            Inbox::Worker { tx, key } => tx.send((*key, msg)).is_ok(),
        }
    }
}

/// A callback run once when a resource ends, with why.
pub struct OnEnd(pub Box<dyn FnOnce(&str) + Send>);

impl OnEnd {
    /// Runs the callback; later calls do nothing.
    pub fn run(&mut self, reason: &str) {
        let f = std::mem::replace(&mut self.0, Box::new(|_| {}));
        f(reason);
    }
}

impl std::fmt::Debug for OnEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OnEnd")
    }
}

/// Messages to a resource's task (viewer or publisher) from the HTTP layer.
#[derive(Debug)]
pub enum PeerMsg {
    Patch {
        fragment: Fragment,
        if_match: Option<String>,
        reply: oneshot::Sender<Result<Patched, PatchError>>,
    },
    /// Revoke consent and end (RFC 9725 §4.2, RFC 7675 §5.2), for this reason.
    Close(Closed),
    /// A viewer's layer wish (the WHEP layer extension); the reply has the layers.
    Layer {
        wish: crate::rtc::layering::Wish,
        reply: oneshot::Sender<
            Result<serde_json::Map<String, serde_json::Value>, crate::rtc::viewer::LayerError>,
        >,
    },
}

/// Why the HTTP layer ends a resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closed {
    /// Its client's DELETE.
    Deleted,
    /// The gateway drains (SIGTERM, SIGINT).
    Shutdown,
    /// The registry dropped it without a word (it is gone from the HTTP layer).
    Dropped,
}

impl std::fmt::Display for Closed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Closed::Deleted => "closed by DELETE",
            Closed::Shutdown => "the gateway is shutting down",
            Closed::Dropped => "the resource was removed",
        })
    }
}

#[derive(Debug)]
pub enum Patched {
    /// Candidates added: 204.
    Trickled,
    /// ICE restarted: 200 with this fragment and new ETag.
    Restarted { fragment: String, etag: String },
}

/// Why a PATCH was refused. The client's.
#[derive(Debug, thiserror::Error)]
pub enum PatchError {
    #[error("If-Match {0} does not match the current ICE session's entity-tag")]
    PreconditionFailed(String),
    #[error("the new ICE credentials are invalid (ufrag 4-256, pwd 22-256 ice-chars)")]
    BadCredentials,
    #[error("ICE restart failed: {0}")]
    RestartFailed(String),
    #[error("the session is gone")]
    Gone,
}

/// The ICE side of a resource: the offer it was answered from (rewritten by restarts), our
/// current ufrag, and the entity-tag of the ICE session.
#[derive(Debug)]
pub struct IceSession {
    pub offer: Offer,
    pub ufrag: String,
    pub etag: String,
}

impl IceSession {
    /// A trickle-ICE or ICE-restart PATCH (RFC 9725 §4.3).
    pub fn patch(
        &mut self,
        rtc: &mut Rtc,
        frag: Fragment,
        if_match: Option<&str>,
    ) -> Result<Patched, PatchError> {
        if let Some(tag) = if_match
            && tag != "*"
            && tag != self.etag
        {
            return Err(PatchError::PreconditionFailed(tag.to_string()));
        }
        // RFC 9725 §4.3.3: a changed ufrag (or pwd) is an ICE restart.
        let remote = self.remote_ufrag();
        let restart = frag.ufrag.as_ref().is_some_and(|u| *u != remote);
        if !restart {
            for c in &frag.candidates {
                // Unsupported transports and unresolvable names are skipped (RFC 9725 §4.3.2).
                if let Ok(c) = Candidate::from_sdp_string(c) {
                    rtc.add_remote_candidate(c);
                }
            }
            return Ok(Patched::Trickled);
        }
        let (Some(ufrag), Some(pwd)) = (frag.ufrag.as_deref(), frag.pwd.as_deref()) else {
            return Err(PatchError::BadCredentials);
        };
        if !valid_ice_credentials(ufrag, pwd) {
            return Err(PatchError::BadCredentials);
        }
        let text = self.offer.with_ice_credentials(ufrag, pwd);
        let answer =
            crate::rtc::answer::accept_offer(rtc, &text).map_err(PatchError::RestartFailed)?;
        self.offer.text = text;
        for c in &frag.candidates {
            if let Ok(c) = Candidate::from_sdp_string(c) {
                rtc.add_remote_candidate(c);
            }
        }
        let creds = rtc.direct_api().local_ice_credentials();
        self.ufrag = creds.ufrag.clone();
        self.etag = new_etag();
        tracing::info!("ICE restart");
        Ok(Patched::Restarted {
            fragment: restart_fragment(&answer),
            etag: self.etag.clone(),
        })
    }

    fn remote_ufrag(&self) -> String {
        self.offer
            .text
            .lines()
            .find_map(|l| l.strip_prefix("a=ice-ufrag:"))
            .unwrap_or("")
            .trim()
            .to_string()
    }
}

/// The 200 body of an ICE restart (RFC 9725 §4.3.3): the answer's ICE lines (`ice-lite`,
/// `ice-options`, bundle group, the first media section with its new ufrag, pwd and
/// candidates).
fn restart_fragment(answer: &str) -> String {
    let mut out = String::new();
    let mut in_first_media = false;
    let mut seen_media = false;
    for line in answer.lines() {
        if line.starts_with("m=") {
            if seen_media {
                break;
            }
            seen_media = true;
            in_first_media = true;
            out.push_str(line);
            out.push_str("\r\n");
            continue;
        }
        let keep = if in_first_media {
            line.starts_with("a=mid:")
                || line.starts_with("a=ice-options:")
                || line.starts_with("a=ice-lite")
                || line.starts_with("a=ice-ufrag:")
                || line.starts_with("a=ice-pwd:")
                || line.starts_with("a=candidate:")
                || line.starts_with("a=end-of-candidates")
        } else {
            line.starts_with("a=ice-lite")
                || line.starts_with("a=ice-options:")
                || line.starts_with("a=group:BUNDLE")
                || line.starts_with("a=ice-ufrag:")
                || line.starts_with("a=ice-pwd:")
        };
        if keep {
            out.push_str(line);
            out.push_str("\r\n");
        }
    }
    out
}

/// A new strong entity-tag for an ICE session (RFC 9725 §4.3.1).
pub fn new_etag() -> String {
    format!("\"{}\"", crate::ids::random_id())
}
