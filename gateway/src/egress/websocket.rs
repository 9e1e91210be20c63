//! The WebSocket egress: the gateway dials a `ws://` or `wss://` URL and sends the session's
//! audio as binary messages of PCM s16le (20 ms each), with the session's events as text
//! messages, the shape LiveKit's track egress uses for transcription services.
//!
//! Owns the connection, which outlives the session's sources: a publisher that leaves and
//! comes back, or a restarted transcoder, is an `{"publisher":"inactive"}` (then `active`)
//! message and a pause in the audio, not a new connection. The audio comes from a
//! `wisp-transcoder egress pcm` process per source run, read from its stdout. A connection
//! that cannot be made or drops is dialled again with the restreams' backoff.
//!
//! Messages: first `{"session":NAME,"format":"s16le","rate":R,"channels":C}`; then binary
//! audio; text `{"publisher":"active"|"inactive"}` and `{"state":"playing"|"paused"|"ended",
//! "position":S}` as they happen.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::AsyncReadExt;
use tokio_tungstenite::tungstenite::Message;

use super::process::EgressProcess;
use super::supervise::{Egress, EgressState, push_backoff};
use super::{EgressContext, PcmFormat};
use crate::session::{Source, ViewerSlot};

/// How long a run must last for the backoff to start over.
const BACKOFF_RESET: Duration = Duration::from_secs(30);

/// How a connection ended.
enum Gone {
    /// DELETE, or the session or gateway stopping: finish in this state.
    Finished(EgressState),
    /// The connection failed or closed: dial again.
    Connection(String),
}

/// Runs a WebSocket egress until it finishes, holding `slot`.
pub(super) async fn run(
    egress: Arc<Egress>,
    slot: ViewerSlot,
    ctx: EgressContext,
    url: String,
    format: PcmFormat,
) {
    let session = slot.session().clone();
    let mut failures = 0u32;
    tracing::info!(%url, "websocket egress created");
    loop {
        egress.update(|i| i.state = EgressState::Waiting);
        let connected = tokio::select! {
            r = tokio_tungstenite::connect_async(url.as_str()) => Some(r),
            _ = egress.stop.cancelled() => None,
            _ = session.cancelled() => None,
            _ = ctx.cancel.cancelled() => None,
        };
        let started = Instant::now();
        let gone = match connected {
            None => Gone::Finished(finished_state(&egress)),
            Some(Err(e)) => Gone::Connection(format!("cannot connect to {url}: {e}")),
            Some(Ok((ws, _))) => {
                tracing::info!(%url, "websocket connected");
                egress.update(|i| i.error = None);
                stream(&egress, &slot, &ctx, ws, &format).await
            }
        };
        match gone {
            Gone::Finished(state) => {
                let reason = match state {
                    EgressState::Stopped => "stopped",
                    EgressState::Failed => "failed",
                    _ => "session_ended",
                };
                egress.finish(state, reason, None);
                break;
            }
            Gone::Connection(error) => {
                if started.elapsed() >= BACKOFF_RESET {
                    failures = 0;
                }
                failures += 1;
                let delay = push_backoff(failures);
                tracing::warn!("{error}; again in {delay:?}");
                egress
                    .wait_to_retry(error, delay, &session, &ctx.cancel)
                    .await;
            }
        }
    }
    drop(slot);
}

fn finished_state(egress: &Egress) -> EgressState {
    match egress.stop.is_cancelled() {
        true => EgressState::Stopped,
        false => EgressState::Ended,
    }
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Sends the session's audio and events on `ws` until it finishes or the connection goes.
async fn stream(
    egress: &Egress,
    slot: &ViewerSlot,
    ctx: &EgressContext,
    mut ws: Socket,
    format: &PcmFormat,
) -> Gone {
    let session = slot.session().clone();
    let mut source = slot.source();
    let mut events = session.events();
    let hello = json!({"session": session.name, "format": "s16le", "rate": format.rate,
        "channels": format.channels});
    if let Err(e) = ws.send(Message::text(hello.to_string())).await {
        return Gone::Connection(format!(
            "sending to {}: {e}",
            egress.info().url.unwrap_or_default()
        ));
    }
    let piece = (format.rate / 50 * format.channels * 2) as usize;
    let mut sent = 0u64;
    loop {
        // Wait for a source, telling the listener what happens meanwhile.
        let ready = loop {
            if let Source::Ready(r) = source.borrow_and_update().clone() {
                break r;
            }
            egress.update(|i| i.state = EgressState::Waiting);
            tokio::select! {
                changed = source.changed() => if changed.is_err() {
                    return close(ws, EgressState::Ended).await;
                },
                event = events.recv() => if let Some(text) = event.ok().and_then(|e| listener_event(&e)) {
                    if let Err(e) = ws.send(Message::text(text)).await {
                        return Gone::Connection(format!("sending: {e}"));
                    }
                },
                message = ws.next() => if let Some(gone) = closed(message) { return gone },
                _ = egress.stop.cancelled() => return close(ws, EgressState::Stopped).await,
                _ = session.cancelled() => return close(ws, EgressState::Ended).await,
                _ = ctx.cancel.cancelled() => return close(ws, EgressState::Ended).await,
            }
        };
        let Some(audio) = ready.audio_track else {
            egress.update(|i| i.error = Some("this session's source has no audio".into()));
            return close(ws, EgressState::Failed).await;
        };
        let mut args = vec!["--audio".to_string(), format!("{audio}:opus")];
        args.extend([
            "pcm".to_string(),
            "--rate".into(),
            format.rate.to_string(),
            "--channels".into(),
            format.channels.to_string(),
        ]);
        let (process, mut stdout) = match EgressProcess::spawn_raw(&ctx.program, &ready.ring, &args)
        {
            Ok(p) => p,
            Err(e) => {
                let e = format!("starting {}: {e}", ctx.program.display());
                tracing::error!("{e}");
                egress.update(|i| i.error = Some(e));
                return close(ws, EgressState::Failed).await;
            }
        };
        ctx.metrics
            .egresses
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let pid = process.pid;
        egress.update(|i| {
            i.pid = Some(pid);
            i.state = EgressState::Running;
        });
        let generation = ready.generation;
        let mut buf = vec![0u8; piece * 4];
        let mut pending: Vec<u8> = Vec::with_capacity(piece * 2);
        let outcome: Option<Gone> = 'pump: loop {
            tokio::select! {
                n = stdout.read(&mut buf) => match n {
                    Ok(0) | Err(_) => break None,
                    Ok(n) => {
                        pending.extend_from_slice(&buf[..n]);
                        while pending.len() >= piece {
                            let chunk: Vec<u8> = pending.drain(..piece).collect();
                            if let Err(e) = ws.send(Message::binary(chunk)).await {
                                break 'pump Some(Gone::Connection(format!("sending: {e}")));
                            }
                            sent += piece as u64;
                        }
                        let per_second = (format.rate * format.channels * 2) as f64;
                        egress.progress(sent, sent as f64 / per_second);
                    }
                },
                event = events.recv() => if let Some(text) = event.ok().and_then(|e| listener_event(&e))
                    && let Err(e) = ws.send(Message::text(text)).await
                {
                    break Some(Gone::Connection(format!("sending: {e}")));
                },
                message = ws.next() => if let Some(gone) = closed(message) { break Some(gone) },
                changed = source.changed() => {
                    let same = changed.is_ok() && matches!(&*source.borrow(),
                        Source::Ready(r) if r.generation == generation);
                    if !same {
                        break None;
                    }
                }
                _ = egress.stop.cancelled() => break Some(Gone::Finished(EgressState::Stopped)),
                _ = session.cancelled() => break Some(Gone::Finished(EgressState::Ended)),
                _ = ctx.cancel.cancelled() => break Some(Gone::Finished(EgressState::Ended)),
            }
        };
        let _ = process.finish(Duration::from_secs(5)).await;
        ctx.metrics
            .egresses
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        egress.update(|i| i.pid = None);
        match outcome {
            // The source changed or the process ended: the next run, same connection.
            None => {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            Some(Gone::Finished(state)) => return close(ws, state).await,
            Some(gone) => return gone,
        }
    }
}

/// Closes the connection properly and says the egress is finished in `state`.
async fn close(mut ws: Socket, state: EgressState) -> Gone {
    let _ = ws.close(None).await;
    Gone::Finished(state)
}

/// A message from the listener: `Some` if the connection is gone.
fn closed(message: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>) -> Option<Gone> {
    match message {
        None => Some(Gone::Connection(
            "the listener closed the connection".into(),
        )),
        Some(Err(e)) => Some(Gone::Connection(format!("the connection failed: {e}"))),
        Some(Ok(Message::Close(frame))) => Some(Gone::Connection(format!(
            "the listener closed the connection{}",
            frame
                .map(|f| format!(" ({}: {})", f.code, f.reason))
                .unwrap_or_default()
        ))),
        // Pings are answered by tungstenite; anything else the listener sends is ignored.
        Some(Ok(_)) => None,
    }
}

/// A session event as the listener gets it, if it is one the listener wants.
fn listener_event(event: &str) -> Option<String> {
    let v: Value = serde_json::from_str(event).ok()?;
    match v.get("event")?.as_str()? {
        "publisher" => Some(json!({"publisher": v.get("state")?}).to_string()),
        "state" => {
            Some(json!({"state": v.get("state")?, "position": v.get("position")}).to_string())
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_events_reach_the_listener_in_its_shape() {
        assert_eq!(
            listener_event(r#"{"event":"publisher","state":"inactive"}"#).as_deref(),
            Some(r#"{"publisher":"inactive"}"#)
        );
        assert_eq!(
            listener_event(r#"{"event":"state","state":"paused","position":3.5,"fps":30}"#)
                .as_deref(),
            Some(r#"{"state":"paused","position":3.5}"#)
        );
        assert_eq!(listener_event(r#"{"event":"viewers","count":2}"#), None);
        assert_eq!(listener_event("not json"), None);
    }
}
