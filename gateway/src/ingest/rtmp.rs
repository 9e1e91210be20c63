//! The RTMP listener: OBS, FFmpeg and hardware encoders publish live sessions with the settings
//! they already know (`rtmp://HOST:1935/live`, stream key `NAME?token=JWT`).
//!
//! Owns the TCP side of RTMP: accepting (within a cap), the handshake and the chunk stream
//! (rml_rtmp's sans-IO `Handshake` and `ServerSession`, which this drives), the connect and
//! publish commands, refusals the publisher understands (`NetStream.Publish.Unauthorized`,
//! then the connection closed), and the publisher's audio and video messages written as FLV
//! tags into the publish's transcoder (`publish.rs`). A connection that misbehaves (garbage,
//! silence, a message rml_rtmp chokes on) ends alone, logged; nothing else notices.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rml_rtmp::handshake::{Handshake, HandshakeProcessResult, PeerType};
use rml_rtmp::sessions::{
    ServerSession, ServerSessionConfig, ServerSessionEvent, ServerSessionResult,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::ingest::flv::{self, TagKind};
use crate::ingest::key::PublishKey;
use crate::ingest::publish::{IngestContext, IngestError, Publishing, begin};
use crate::session::Ingest;

/// RTMP connections open at once; past it new ones are closed at once.
const MAX_CONNECTIONS: usize = 256;
/// The handshake and the connect and publish commands must be done within this.
const SETUP_TIMEOUT: Duration = Duration::from_secs(10);
/// A publishing connection that sends nothing for this long has gone.
const IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why an RTMP connection ended early. The peer's doing, except `Io` on our side of a write.
#[derive(Debug, thiserror::Error)]
enum RtmpError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("nothing for {} s {why}", .waited.as_secs())]
    Timeout { waited: Duration, why: &'static str },
    #[error("handshake: {0}")]
    Handshake(String),
    #[error("RTMP: {0}")]
    Protocol(String),
    #[error("refused: {0}")]
    Refused(IngestError),
    #[error("the publish ended: {0}")]
    Ended(String),
}

/// Accepts RTMP connections on `listener` until `cancel`.
pub async fn serve(listener: TcpListener, ctx: IngestContext, cancel: CancellationToken) {
    let open = Arc::new(AtomicUsize::new(0));
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::debug!("accepting an RTMP connection: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
            _ = cancel.cancelled() => return,
        };
        if open.fetch_add(1, Ordering::Relaxed) >= MAX_CONNECTIONS {
            open.fetch_sub(1, Ordering::Relaxed);
            tracing::warn!(%peer, "RTMP connection refused: {MAX_CONNECTIONS} are open");
            continue;
        }
        let ctx = ctx.clone();
        let open = open.clone();
        let cancel = cancel.clone();
        let span = tracing::info_span!("rtmp", %peer);
        tokio::spawn(
            async move {
                let _ = stream.set_nodelay(true);
                tokio::select! {
                    r = connection(stream, peer, &ctx) => match r {
                        Ok(()) => tracing::info!("RTMP publisher done"),
                        Err(RtmpError::Refused(e)) => tracing::warn!("RTMP publish refused: {e}"),
                        Err(e) => tracing::info!("RTMP connection ended: {e}"),
                    },
                    _ = cancel.cancelled() => {}
                }
                open.fetch_sub(1, Ordering::Relaxed);
            }
            .instrument(span),
        );
    }
}

/// rml_rtmp has asserts a peer's malformed commands can reach (an empty argument list, say):
/// such a panic ends this connection as a protocol error rather than the task with no word.
fn guarded<T>(what: &str, f: impl FnOnce() -> Result<T, String>) -> Result<T, RtmpError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
        .unwrap_or_else(|_| Err(format!("{what}: a message the RTMP library cannot take")))
        .map_err(RtmpError::Protocol)
}

/// What the listener does with a peer's bytes before any I/O of its own, for the fuzz target
/// (`fuzz/fuzz_targets/rtmp.rs`): the handshake, then rml_rtmp's session on what follows,
/// accepting its connect, reading publish keys and writing media as FLV tags, under the same
/// panic guard. Returns the FLV bytes the media made.
pub fn read_as_listener(bytes: &[u8]) -> Vec<u8> {
    let mut hs = Handshake::new(PeerType::Server);
    let step = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| hs.process_bytes(bytes)));
    let rest = match step {
        Ok(Ok(HandshakeProcessResult::Completed {
            remaining_bytes, ..
        })) => remaining_bytes,
        _ => return Vec::new(),
    };
    let Ok((mut session, _)) = ServerSession::new(ServerSessionConfig::new()) else {
        return Vec::new();
    };
    let mut tags = Vec::new();
    let mut pending: Vec<ServerSessionResult> = match guarded("fuzz", || {
        session.handle_input(&rest).map_err(|e| format!("{e:?}"))
    }) {
        Ok(r) => r,
        Err(_) => return tags,
    };
    while let Some(r) = pending.pop() {
        let ServerSessionResult::RaisedEvent(ev) = r else {
            continue;
        };
        match ev {
            ServerSessionEvent::ConnectionRequested { request_id, .. } => {
                if let Ok(more) = guarded("fuzz", || {
                    session
                        .accept_request(request_id)
                        .map_err(|e| format!("{e:?}"))
                }) {
                    pending.extend(more);
                }
            }
            ServerSessionEvent::PublishStreamRequested { stream_key, .. } => {
                let _ = PublishKey::from_rtmp(&stream_key);
            }
            ServerSessionEvent::VideoDataReceived {
                data, timestamp, ..
            } => {
                flv::tag(&mut tags, TagKind::Video, timestamp.value, &data);
            }
            ServerSessionEvent::AudioDataReceived {
                data, timestamp, ..
            } => {
                flv::tag(&mut tags, TagKind::Audio, timestamp.value, &data);
            }
            _ => {}
        }
    }
    tags
}

/// One connection: handshake, session, then the publish.
async fn connection(
    mut stream: TcpStream,
    peer: SocketAddr,
    ctx: &IngestContext,
) -> Result<(), RtmpError> {
    let mut buf = vec![0u8; 64 * 1024];
    let setup_deadline = tokio::time::Instant::now() + SETUP_TIMEOUT;
    let rest = tokio::time::timeout_at(setup_deadline, handshake(&mut stream, &mut buf))
        .await
        .map_err(|_| RtmpError::Timeout {
            waited: SETUP_TIMEOUT,
            why: "to complete the RTMP handshake",
        })??;
    let (mut session, first) = ServerSession::new(ServerSessionConfig::new())
        .map_err(|e| RtmpError::Protocol(e.to_string()))?;
    let mut conn = Conn {
        session: &mut session,
        publishing: None,
        tags: Vec::with_capacity(64 * 1024),
        id: crate::ids::random_id(),
        peer,
        meter: Meter::default(),
        finished: false,
        copy_video: false,
        parameter_sets: None,
        read_at: rtp_ring::now_us(),
    };
    conn.act(&mut stream, first, ctx).await?;
    let mut input = rest;
    loop {
        let results = guarded("reading RTMP", || {
            conn.session
                .handle_input(&input)
                .map_err(|e| format!("{e:?}"))
        })?;
        conn.act(&mut stream, results, ctx).await?;
        if conn.done() {
            return Ok(());
        }
        // Before the publish, the whole setup has one deadline; after it, silence ends it.
        let (deadline, why) = match conn.publishing {
            None => (setup_deadline, "to connect and publish"),
            Some(_) => (
                tokio::time::Instant::now() + IDLE_TIMEOUT,
                "from the publisher",
            ),
        };
        let waited = match conn.publishing {
            None => SETUP_TIMEOUT,
            Some(_) => IDLE_TIMEOUT,
        };
        let n = tokio::select! {
            read = tokio::time::timeout_at(deadline, stream.read(&mut buf)) => match read {
                Ok(r) => r?,
                Err(_) => return Err(RtmpError::Timeout { waited, why }),
            },
            reason = conn.ended() => return Err(RtmpError::Ended(reason)),
        };
        if n == 0 {
            // The publisher closed its connection (OBS's "Stop Streaming" may skip
            // deleteStream): the publish ends.
            return Ok(());
        }
        conn.read_at = rtp_ring::now_us();
        input = buf[..n].to_vec();
    }
}

/// The handshake (C0-C2/S0-S2, with the FP9 digest when the client asks for it). Returns the
/// bytes that came after it (the first chunks).
async fn handshake(stream: &mut TcpStream, buf: &mut [u8]) -> Result<Vec<u8>, RtmpError> {
    let mut hs = Handshake::new(PeerType::Server);
    loop {
        let n = stream.read(buf).await?;
        if n == 0 {
            return Err(RtmpError::Handshake("closed during the handshake".into()));
        }
        let data = &buf[..n];
        let step =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| hs.process_bytes(data)))
                .map_err(|_| RtmpError::Handshake("malformed".into()))?
                .map_err(|e| RtmpError::Handshake(format!("{e:?}")))?;
        match step {
            HandshakeProcessResult::InProgress { response_bytes } => {
                stream.write_all(&response_bytes).await?;
            }
            HandshakeProcessResult::Completed {
                response_bytes,
                remaining_bytes,
            } => {
                stream.write_all(&response_bytes).await?;
                return Ok(remaining_bytes);
            }
        }
    }
}

/// An RTMP session's state on our side.
struct Conn<'a> {
    session: &'a mut ServerSession,
    publishing: Option<Publishing>,
    /// FLV bytes on their way to the transcoder (reused).
    tags: Vec<u8>,
    /// The publish's resource id (as a WHIP resource's: logs, the session's claim).
    id: String,
    peer: SocketAddr,
    meter: Meter,
    /// The publisher said it is done (deleteStream, FCUnpublish).
    finished: bool,
    /// `video=copy`: keyframes get the sequence header's SPS and PPS in band, which the
    /// transcoder's pass-through needs (FLV keeps them in the header only).
    copy_video: bool,
    parameter_sets: Option<Vec<u8>>,
    /// When the bytes being handled were read from the publisher (`rtp_ring::now_us`): the
    /// arrival of every message they complete, which the tags sent on carry.
    read_at: u64,
}

impl Conn<'_> {
    /// Writes rml_rtmp's outbound packets, and acts on its events.
    async fn act(
        &mut self,
        stream: &mut TcpStream,
        results: Vec<ServerSessionResult>,
        ctx: &IngestContext,
    ) -> Result<(), RtmpError> {
        let mut pending = std::collections::VecDeque::from(results);
        while let Some(r) = pending.pop_front() {
            match r {
                ServerSessionResult::OutboundResponse(p) => stream.write_all(&p.bytes).await?,
                ServerSessionResult::RaisedEvent(ev) => {
                    let more = self.on_event(stream, ev, ctx).await?;
                    pending.extend(more);
                }
                ServerSessionResult::UnhandleableMessageReceived(_) => {}
            }
        }
        self.flush().await
    }

    async fn on_event(
        &mut self,
        stream: &mut TcpStream,
        ev: ServerSessionEvent,
        ctx: &IngestContext,
    ) -> Result<Vec<ServerSessionResult>, RtmpError> {
        match ev {
            // Any application name: the stream key names the session.
            ServerSessionEvent::ConnectionRequested { request_id, .. } => {
                guarded("accepting connect", || {
                    self.session
                        .accept_request(request_id)
                        .map_err(|e| format!("{e:?}"))
                })
            }
            ServerSessionEvent::PublishStreamRequested {
                request_id,
                stream_key,
                ..
            } => {
                if self.publishing.is_some() {
                    return Err(RtmpError::Protocol(
                        "a second publish on one connection".into(),
                    ));
                }
                let begun = match PublishKey::from_rtmp(&stream_key).map_err(IngestError::from) {
                    Ok(key) => {
                        self.copy_video = key.copy_video;
                        begin(ctx, &key, Ingest::Rtmp, "flv", &self.id).await
                    }
                    Err(e) => Err(e),
                };
                match begun {
                    Ok(p) => {
                        tracing::info!(
                            session = %p.session.name,
                            resource = %self.id,
                            peer = %self.peer,
                            "RTMP publish accepted"
                        );
                        self.tags.extend_from_slice(&flv::header());
                        self.publishing = Some(p);
                        guarded("accepting publish", || {
                            self.session
                                .accept_request(request_id)
                                .map_err(|e| format!("{e:?}"))
                        })
                    }
                    Err(e) => {
                        let code = match &e {
                            IngestError::Publish(_) => "NetStream.Publish.BadName",
                            _ => "NetStream.Publish.Unauthorized",
                        };
                        let refusal = guarded("refusing publish", || {
                            self.session
                                .reject_request(request_id, code, &e.to_string())
                                .map_err(|e| format!("{e:?}"))
                        })?;
                        for r in refusal {
                            if let ServerSessionResult::OutboundResponse(p) = r {
                                stream.write_all(&p.bytes).await?;
                            }
                        }
                        let _ = stream.shutdown().await;
                        Err(RtmpError::Refused(e))
                    }
                }
            }
            ServerSessionEvent::VideoDataReceived {
                data, timestamp, ..
            } => {
                self.tag(TagKind::Video, timestamp.value, &data);
                Ok(Vec::new())
            }
            ServerSessionEvent::AudioDataReceived {
                data, timestamp, ..
            } => {
                self.tag(TagKind::Audio, timestamp.value, &data);
                Ok(Vec::new())
            }
            ServerSessionEvent::PublishStreamFinished { .. } => {
                self.finished = true;
                Ok(Vec::new())
            }
            _ => Ok(Vec::new()),
        }
    }

    fn tag(&mut self, kind: TagKind, timestamp_ms: u32, body: &[u8]) {
        if self.publishing.is_none() {
            return;
        }
        self.meter.add(body.len());
        let with_sets;
        let body = match (&self.parameter_sets, kind) {
            (_, TagKind::Video) if self.copy_video && flv::is_video_sequence_header(body) => {
                self.parameter_sets = flv::avc_parameter_sets(body);
                body
            }
            (Some(sets), TagKind::Video) => match flv::with_parameter_sets(body, sets) {
                Some(b) => {
                    with_sets = b;
                    &with_sets[..]
                }
                None => body,
            },
            _ => body,
        };
        if !flv::tag(&mut self.tags, kind, timestamp_ms, body) {
            tracing::debug!(
                bytes = body.len(),
                "an RTMP message too large for one FLV tag"
            );
        }
    }

    /// Sends the FLV gathered so far to the transcoder, unless the publish ended meanwhile.
    async fn flush(&mut self) -> Result<(), RtmpError> {
        let Some(p) = self.publishing.as_mut() else {
            self.tags.clear();
            return Ok(());
        };
        if let Some(bps) = self.meter.tick() {
            p.session.set_ingest_bitrate(bps);
        }
        if self.tags.is_empty() {
            return Ok(());
        }
        let mut ended = p.ended.clone();
        tokio::select! {
            r = p.send(&self.tags, self.read_at) => r?,
            why = ended.wait_for(|e| e.is_some()) => {
                let why = why.map(|w| w.clone().unwrap_or_default()).unwrap_or_default();
                return Err(RtmpError::Ended(why));
            }
        }
        self.tags.clear();
        Ok(())
    }

    /// Whether the publisher said it is done.
    fn done(&self) -> bool {
        self.finished
    }

    /// Resolves when the publish ended from the gateway's side (never without one).
    async fn ended(&self) -> String {
        match &self.publishing {
            Some(p) => {
                let mut e = p.ended.clone();
                let why = e.wait_for(|x| x.is_some()).await;
                why.map(|w| w.clone().unwrap_or_default())
                    .unwrap_or_default()
            }
            None => std::future::pending().await,
        }
    }
}

/// The publisher's bits per second, over a second.
#[derive(Debug, Default)]
struct Meter {
    since: Option<Instant>,
    bytes: u64,
}

impl Meter {
    fn add(&mut self, n: usize) {
        self.since.get_or_insert_with(Instant::now);
        self.bytes += n as u64;
    }

    /// The rate once a second has passed since the last, else `None`.
    fn tick(&mut self) -> Option<u64> {
        let since = self.since?;
        let secs = since.elapsed().as_secs_f64();
        if secs < 1.0 {
            return None;
        }
        let bps = (self.bytes as f64 * 8.0 / secs) as u64;
        *self = Meter::default();
        Some(bps)
    }
}
