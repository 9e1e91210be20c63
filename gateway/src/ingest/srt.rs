//! The SRT listener: encoders and FFmpeg publish MPEG-TS over SRT with the stream id
//! `publish:NAME:JWT` (`srt://HOST:8890?streamid=publish:NAME:JWT`).
//!
//! Owns the SRT side: the listener (srt-tokio, live mode), the decision at the handshake, from
//! the stream id alone (a refusal is an SRT rejection with an access-control code the caller's
//! libsrt reports: 1401 unauthorized, 1403 forbidden, 1409 conflict, 1400 bad request), and the
//! accepted connection's MPEG-TS written into the publish's transcoder (`publish.rs`).

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::StreamExt;
use srt_tokio::SrtListener;
use srt_tokio::access::{RejectReason, ServerRejectReason};
use srt_tokio::options::PacketSize;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::auth::AuthError;
use crate::ingest::key::PublishKey;
use crate::ingest::publish::{IngestContext, IngestError, begin};
use crate::session::{Ingest, PublishError};

/// SRT's receive latency (its default): the time it has to repair losses.
const LATENCY: Duration = Duration::from_millis(120);
/// A publisher that sends nothing for this long has gone.
const IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// The payload size announced in the handshake: libsrt callers adopt the listener's, and
/// srt-tokio's default (1316) would split FFmpeg's 1316-byte messages in two.
const MAX_PAYLOAD: u32 = 1456;

/// An SRT listener, bound.
pub struct Bound {
    pub listener: SrtListener,
    pub incoming: srt_tokio::SrtIncoming,
    /// The UDP address it listens on (with the port chosen when 0 was asked).
    pub addr: SocketAddr,
}

impl std::fmt::Debug for Bound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bound").field("addr", &self.addr).finish()
    }
}

/// Binds the SRT listener. Its port is a UDP one.
pub async fn bind(addr: SocketAddr) -> std::io::Result<Bound> {
    let socket = tokio::net::UdpSocket::bind(addr).await?;
    let addr = socket.local_addr()?;
    let (listener, incoming) = SrtListener::builder()
        .latency(LATENCY)
        .set(|o| o.sender.max_payload_size = PacketSize(MAX_PAYLOAD.into()))
        .socket(socket)
        .bind(addr)
        .await?;
    Ok(Bound {
        listener,
        incoming,
        addr,
    })
}

/// Serves SRT publishers until `cancel`.
pub async fn serve(bound: Bound, ctx: IngestContext, cancel: CancellationToken) {
    // The listener is held for as long as it serves.
    let Bound {
        listener: _listener,
        mut incoming,
        ..
    } = bound;
    loop {
        let request = tokio::select! {
            r = incoming.incoming().next() => match r {
                Some(r) => r,
                None => return,
            },
            _ = cancel.cancelled() => return,
        };
        let ctx = ctx.clone();
        let cancel = cancel.clone();
        let peer = request.remote();
        let span = tracing::info_span!("srt", %peer);
        tokio::spawn(
            async move {
                tokio::select! {
                    r = connection(request, &ctx) => match r {
                        Ok(()) => tracing::info!("SRT publisher done"),
                        Err(e) => tracing::info!("SRT connection ended: {e}"),
                    },
                    _ = cancel.cancelled() => {}
                }
            }
            .instrument(span),
        );
    }
}

/// Why an SRT connection ended early.
#[derive(Debug, thiserror::Error)]
enum SrtError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("refused: {0}")]
    Refused(IngestError),
    #[error("nothing for {} s from the publisher", IDLE_TIMEOUT.as_secs())]
    Idle,
    #[error("the publish ended: {0}")]
    Ended(String),
}

/// The rejection code a refusal is sent with (libsrt reports it less 1000: SRT_REJX_*).
fn reject_reason(e: &IngestError) -> RejectReason {
    RejectReason::Server(match e {
        IngestError::Key(_) => ServerRejectReason::BadRequest,
        IngestError::Auth(AuthError::Missing | AuthError::Invalid(_)) => {
            ServerRejectReason::Unauthorized
        }
        IngestError::Auth(AuthError::WrongSession { .. } | AuthError::MissingScope { .. }) => {
            ServerRejectReason::Forbidden
        }
        IngestError::Publish(
            PublishError::Busy(_) | PublishError::NotLive(_) | PublishError::Pulled(_),
        ) => ServerRejectReason::Conflict,
        IngestError::Publish(PublishError::Stopping | PublishError::GatewayFull(_)) => {
            ServerRejectReason::Overload
        }
        IngestError::Spawn(_) | IngestError::Pipe(_) => ServerRejectReason::InternalServerError,
    })
}

async fn connection(
    request: srt_tokio::ConnectionRequest,
    ctx: &IngestContext,
) -> Result<(), SrtError> {
    let stream_id = request
        .stream_id()
        .map(|s| s.to_string())
        .unwrap_or_default();
    let id = crate::ids::random_id();
    let begun = match PublishKey::from_srt(&stream_id) {
        Ok(key) => begin(ctx, &key, Ingest::Srt, "ts", &id).await,
        Err(e) => Err(e.into()),
    };
    let mut publishing = match begun {
        Ok(p) => p,
        Err(e) => {
            let _ = request.reject(reject_reason(&e)).await;
            tracing::warn!("SRT publish refused: {e}");
            return Err(SrtError::Refused(e));
        }
    };
    tracing::info!(session = %publishing.session.name, resource = %id, "SRT publish accepted");
    let mut socket = request.accept(None).await?;
    let mut meter_since = std::time::Instant::now();
    let mut meter_bytes = 0u64;
    loop {
        let mut ended = publishing.ended.clone();
        let item = tokio::select! {
            item = tokio::time::timeout(IDLE_TIMEOUT, socket.next()) => match item {
                Ok(Some(item)) => item?,
                // The caller closed the connection.
                Ok(None) => return Ok(()),
                Err(_) => return Err(SrtError::Idle),
            },
            why = ended.wait_for(|e| e.is_some()) => {
                let why = why.map(|w| w.clone().unwrap_or_default()).unwrap_or_default();
                return Err(SrtError::Ended(why));
            }
        };
        let (_, bytes) = item;
        let arrived_us = rtp_ring::now_us();
        meter_bytes += bytes.len() as u64;
        if meter_since.elapsed() >= Duration::from_secs(1) {
            let bps = meter_bytes * 8 * 1000 / meter_since.elapsed().as_millis().max(1) as u64;
            publishing.session.set_ingest_bitrate(bps);
            meter_since = std::time::Instant::now();
            meter_bytes = 0;
        }
        let mut ended = publishing.ended.clone();
        tokio::select! {
            r = publishing.send(&bytes, arrived_us) => r?,
            why = ended.wait_for(|e| e.is_some()) => {
                let why = why.map(|w| w.clone().unwrap_or_default()).unwrap_or_default();
                return Err(SrtError::Ended(why));
            }
        }
    }
}
