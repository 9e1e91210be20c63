//! HTTP connections: the accept loop in front of the router, and what keeps an anonymous
//! client from pinning the gateway's descriptors.
//!
//! Owns every TCP connection's life: a cap on how many are open (below the descriptor limit),
//! the timeouts (request headers, idle), eviction of the longest-idle connection when the cap
//! is reached, the canned 503 when nothing can be evicted, the counters and the rate-limited
//! log line about all of that, and the graceful close at shutdown. Request bodies are timed in
//! `http/mod.rs` (a handler's business); routing and statuses are `http/mod.rs`'s too.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tower::Service;

use crate::config::HttpLimits;
use crate::metrics::Metrics;

/// How long connections get to finish their requests at shutdown before they are dropped.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// At most one log line about closed and refused connections per this interval.
const LOG_INTERVAL: Duration = Duration::from_secs(10);
/// How many connections may be open: the configured cap, else half the soft descriptor limit
/// (the other half is for peers' ring readers, transcoders' pipes and the UDP sockets), at most
/// 4096.
pub fn connection_cap(limits: &HttpLimits, nofile_soft: u64) -> usize {
    let room = (nofile_soft / 2).max(16) as usize;
    match limits.max_connections {
        Some(n) => n.min(room),
        None => room.min(4096),
    }
}

/// Raises the soft limit on open descriptors to the hard limit, and logs both. Returns the
/// soft limit in force.
pub fn raise_descriptor_limit() -> u64 {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let before = getrlimit(Resource::Nofile);
    let soft = before.current.unwrap_or(u64::MAX);
    let hard = before.maximum;
    let raised = match hard {
        Some(h) if h > soft => {
            let new = rustix::process::Rlimit {
                current: Some(h),
                maximum: Some(h),
            };
            match setrlimit(Resource::Nofile, new) {
                Ok(()) => h,
                Err(e) => {
                    tracing::warn!("raising the descriptor limit from {soft} to {h}: {e}");
                    soft
                }
            }
        }
        // No hard limit: keep what we have.
        _ => soft,
    };
    let hard = hard.map_or("unlimited".to_string(), |h| h.to_string());
    tracing::info!("file descriptors: soft limit {raised} (was {soft}), hard limit {hard}");
    raised
}

/// The bookkeeping of one open connection, shared by its task and the accept loop.
#[derive(Debug)]
struct Conn {
    /// Milliseconds since the tracker's epoch of the last byte read or written.
    last_io_ms: AtomicU64,
    /// Requests in their handler (body read, response not produced yet): such a connection is
    /// busy and not evicted. One still sending its body is not counted (see [`InFlight`]).
    in_flight: AtomicUsize,
    /// Responses produced so far.
    served: AtomicU64,
    /// Bytes came in since the last response: a request has begun.
    read_since_response: AtomicBool,
    /// Closes the connection at once: it was the longest idle when the cap was reached.
    evict: CancellationToken,
}

/// A request's connection, as an extension of the request: the body-reading middleware
/// (`http/mod.rs`) marks the connection busy with [`InFlight::begin`] once the body has arrived,
/// so a client that announces a body and sends nothing cannot make its connection unevictable.
#[derive(Debug, Clone)]
pub struct InFlight(Arc<Conn>);

impl InFlight {
    /// The request is in its handler until the guard drops.
    pub fn begin(&self) -> InFlightGuard {
        self.0.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlightGuard(self.0.clone())
    }
}

/// See [`InFlight::begin`].
#[derive(Debug)]
pub struct InFlightGuard(Arc<Conn>);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Every open connection, for the cap and for eviction.
#[derive(Debug)]
struct Tracker {
    /// The zero of the connections' millisecond clocks (an atomic holds a u64, not an Instant).
    epoch: Instant,
    /// By connection number; a connection leaves it when closed, or when chosen for eviction.
    conns: Mutex<HashMap<u64, Arc<Conn>>>,
    next_id: AtomicU64,
}

impl Tracker {
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn len(&self) -> usize {
        self.conns.lock().expect("not poisoned").len()
    }

    fn add(&self) -> (u64, Arc<Conn>) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let conn = Arc::new(Conn {
            last_io_ms: AtomicU64::new(self.now_ms()),
            in_flight: AtomicUsize::new(0),
            served: AtomicU64::new(0),
            read_since_response: AtomicBool::new(false),
            evict: CancellationToken::new(),
        });
        self.conns
            .lock()
            .expect("not poisoned")
            .insert(id, conn.clone());
        (id, conn)
    }

    fn remove(&self, id: u64) {
        self.conns.lock().expect("not poisoned").remove(&id);
    }

    /// Closes the connection that has waited longest without a request in progress; `false`
    /// if every connection is busy with a request.
    fn evict_idlest(&self) -> bool {
        let mut conns = self.conns.lock().expect("not poisoned");
        let victim = conns
            .iter()
            .filter(|(_, c)| c.in_flight.load(Ordering::Relaxed) == 0)
            .min_by_key(|(_, c)| c.last_io_ms.load(Ordering::Relaxed))
            .map(|(id, _)| *id);
        match victim.and_then(|id| conns.remove(&id)) {
            Some(c) => {
                c.evict.cancel();
                true
            }
            None => false,
        }
    }
}

/// Counts of closed and refused connections not logged yet, and when the last line went out.
#[derive(Debug, Default)]
struct Report {
    /// When the last line went out (`None`: never; the first event is logged at once).
    last: Option<Instant>,
    evicted: u64,
    timed_out: u64,
    refused: u64,
}

#[derive(Debug, Clone, Copy)]
enum Outcome {
    Evicted,
    TimedOut,
    Refused,
}

/// Logs closed and refused connections at most once per [`LOG_INTERVAL`] (an attack makes
/// thousands), the first one at once.
#[derive(Debug)]
struct ReportLog {
    report: Mutex<Report>,
    cap: usize,
    /// When an out-of-descriptors accept error was last logged.
    last_accept_error: Mutex<Option<Instant>>,
}

impl ReportLog {
    fn note(&self, outcome: Outcome) {
        let mut r = self.report.lock().expect("not poisoned");
        match outcome {
            Outcome::Evicted => r.evicted += 1,
            Outcome::TimedOut => r.timed_out += 1,
            Outcome::Refused => r.refused += 1,
        }
        if r.last.is_none_or(|t| t.elapsed() >= LOG_INTERVAL) {
            self.emit(&mut r);
        }
    }

    /// Logs what accumulated if the interval has passed (called periodically).
    fn flush(&self) {
        let mut r = self.report.lock().expect("not poisoned");
        if r.evicted + r.timed_out + r.refused > 0
            && r.last.is_none_or(|t| t.elapsed() >= LOG_INTERVAL)
        {
            self.emit(&mut r);
        }
    }

    fn emit(&self, r: &mut Report) {
        tracing::warn!(
            "HTTP connections closed by the gateway: {} evicted (the cap of {} open connections \
             was reached; the longest idle ones make room), {} timed out (no request headers, or \
             no traffic, within their time), {} refused (every open connection was busy)",
            r.evicted,
            self.cap,
            r.timed_out,
            r.refused
        );
        *r = Report {
            last: Some(Instant::now()),
            ..Report::default()
        };
    }
}

/// Serves `router` on `listener` until `shutdown` resolves, then closes connections gracefully
/// (their requests in progress finish, for [`SHUTDOWN_GRACE`] at most) and returns.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: HttpLimits,
    cap: usize,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let tracker = Arc::new(Tracker {
        epoch: Instant::now(),
        conns: Mutex::new(HashMap::new()),
        next_id: AtomicU64::new(0),
    });
    let log = Arc::new(ReportLog {
        report: Mutex::new(Report::default()),
        cap,
        last_accept_error: Mutex::new(None),
    });
    let closing = CancellationToken::new();
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        // Covers a connection that sends nothing, one that sends its headers too slowly, and
        // one idle between requests: hyper's timer runs whenever it waits for a request head.
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(64 * 1024);
    let at = listener
        .local_addr()
        .map_or_else(|e| e.to_string(), |a| a.to_string());
    tracing::info!(
        "HTTP {at}: at most {cap} connections open; request headers within {:?}, bodies \
         within {:?}, no connection idle over {:?}",
        limits.header_timeout,
        limits.body_timeout,
        limits.idle_timeout
    );
    tokio::pin!(shutdown);
    let mut report_tick = tokio::time::interval(LOG_INTERVAL);
    let mut tasks = tokio::task::JoinSet::new();
    let refusing = Arc::new(AtomicUsize::new(0));
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, _peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        on_accept_error(&e, &log).await;
                        continue;
                    }
                };
                if tracker.len() >= cap {
                    if tracker.evict_idlest() {
                        metrics.http_conns_evicted.fetch_add(1, Ordering::Relaxed);
                        log.note(Outcome::Evicted);
                    } else {
                        metrics.http_conns_refused.fetch_add(1, Ordering::Relaxed);
                        log.note(Outcome::Refused);
                        refuse(stream, &refusing);
                        continue;
                    }
                }
                let _ = stream.set_nodelay(true);
                let (id, conn) = tracker.add();
                metrics.http_conns_accepted.fetch_add(1, Ordering::Relaxed);
                // Counted here and uncounted by the task's drop, even one never polled.
                metrics.http_conns_open.fetch_add(1, Ordering::Relaxed);
                let task = ConnTask {
                    id,
                    conn,
                    tracker: tracker.clone(),
                    metrics: metrics.clone(),
                    log: log.clone(),
                    idle_timeout: limits.idle_timeout,
                    closing: closing.clone(),
                };
                tasks.spawn(task.run(stream, builder.clone(), router.clone()));
                while tasks.try_join_next().is_some() {}
            }
            _ = report_tick.tick() => log.flush(),
            _ = &mut shutdown => break,
        }
    }
    drop(listener);
    closing.cancel();
    let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
    while tracker.len() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // What did not finish within the grace is dropped.
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
}

/// An accept that failed. Out of descriptors: the listener is ready again at once, so back off
/// a little instead of spinning (the connection waits in the kernel's backlog).
async fn on_accept_error(e: &io::Error, report: &ReportLog) {
    use rustix::io::Errno;
    let errno = e.raw_os_error().map(Errno::from_raw_os_error);
    if errno == Some(Errno::MFILE) || errno == Some(Errno::NFILE) {
        let log = {
            let mut last = report.last_accept_error.lock().expect("not poisoned");
            let due = last.is_none_or(|t| t.elapsed() >= LOG_INTERVAL);
            if due {
                *last = Some(Instant::now());
            }
            due
        };
        if log {
            tracing::error!(
                "accepting an HTTP connection: {e} (out of file descriptors: lower \
                 limits.max_http_connections or limits.max_viewers, or raise the hard limit)"
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    } else {
        tracing::debug!("accepting an HTTP connection: {e}");
    }
}

/// Refusals being delivered at most: past it a refused connection is just closed.
const MAX_REFUSING: usize = 64;

/// Tells a connection there is no room for it, and closes it. Its request bytes are drained
/// first (for half a second at most), or the close would reset the connection and the client
/// might not read the 503.
fn refuse(stream: TcpStream, refusing: &Arc<AtomicUsize>) {
    if refusing.fetch_add(1, Ordering::Relaxed) >= MAX_REFUSING {
        refusing.fetch_sub(1, Ordering::Relaxed);
        return;
    }
    let refusing = refusing.clone();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = stream;
        let deliver = async {
            stream.write_all(refusal().as_bytes()).await?;
            stream.shutdown().await?;
            let mut sink = [0u8; 1024];
            while stream.read(&mut sink).await? > 0 {}
            Ok::<(), io::Error>(())
        };
        let _ = tokio::time::timeout(Duration::from_millis(500), deliver).await;
        refusing.fetch_sub(1, Ordering::Relaxed);
    });
}

/// The 503 a connection that cannot be served gets before it is closed.
fn refusal() -> String {
    let body = "{\"type\":\"about:blank\",\"title\":\"Service Unavailable\",\"status\":503,\
                \"detail\":\"too many open HTTP connections, all busy; try again shortly\"}";
    format!(
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/problem+json\r\n\
         Retry-After: 5\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// One connection's task.
struct ConnTask {
    id: u64,
    conn: Arc<Conn>,
    tracker: Arc<Tracker>,
    metrics: Arc<Metrics>,
    log: Arc<ReportLog>,
    idle_timeout: Duration,
    closing: CancellationToken,
}

impl ConnTask {
    async fn run(self, stream: TcpStream, builder: http1::Builder, router: Router) {
        let io = TokioIo::new(Tracked {
            inner: stream,
            conn: self.conn.clone(),
            epoch: self.tracker.epoch,
        });
        let conn = self.conn.clone();
        let epoch = self.tracker.epoch;
        let service =
            hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let mut router = router.clone();
                let conn = conn.clone();
                let mut req = req.map(axum::body::Body::new);
                req.extensions_mut().insert(InFlight(conn.clone()));
                async move {
                    let resp = router.call(req).await;
                    conn.served.fetch_add(1, Ordering::Relaxed);
                    conn.read_since_response.store(false, Ordering::Relaxed);
                    conn.last_io_ms
                        .store(epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
                    resp
                }
            });
        let http = builder.serve_connection(io, service);
        tokio::pin!(http);
        let mut graceful = false;
        loop {
            let idle_at = self.idle_deadline();
            tokio::select! {
                result = http.as_mut() => {
                    if let Err(e) = result {
                        if e.is_timeout() && self.between_requests() {
                            // A kept-alive connection nobody reused: an ordinary close.
                            self.metrics.http_conns_idle_closed.fetch_add(1, Ordering::Relaxed);
                        } else if e.is_timeout() {
                            self.timed_out();
                        } else {
                            tracing::debug!("HTTP connection: {e}");
                        }
                    }
                    break;
                }
                _ = tokio::time::sleep_until(idle_at) => {
                    if self.idle_deadline() <= tokio::time::Instant::now() {
                        if self.between_requests() {
                            self.metrics.http_conns_idle_closed.fetch_add(1, Ordering::Relaxed);
                        } else {
                            self.timed_out();
                        }
                        break;
                    }
                }
                _ = self.conn.evict.cancelled() => break,
                _ = self.closing.cancelled(), if !graceful => {
                    graceful = true;
                    http.as_mut().graceful_shutdown();
                }
            }
        }
        self.tracker.remove(self.id);
    }

    /// When the connection has been without traffic for the idle timeout. A request in its
    /// handler is not idle, however quiet: looked at again an idle timeout later.
    fn idle_deadline(&self) -> tokio::time::Instant {
        if self.conn.in_flight.load(Ordering::Relaxed) > 0 {
            return tokio::time::Instant::now() + self.idle_timeout;
        }
        let last = self.conn.last_io_ms.load(Ordering::Relaxed);
        let idle_for = Duration::from_millis(self.tracker.now_ms().saturating_sub(last));
        tokio::time::Instant::now() + self.idle_timeout.saturating_sub(idle_for)
    }

    /// Whether the connection served a request and has been quiet since.
    fn between_requests(&self) -> bool {
        self.conn.served.load(Ordering::Relaxed) > 0
            && !self.conn.read_since_response.load(Ordering::Relaxed)
    }

    fn timed_out(&self) {
        self.metrics
            .http_conns_timed_out
            .fetch_add(1, Ordering::Relaxed);
        self.log.note(Outcome::TimedOut);
    }
}

impl Drop for ConnTask {
    fn drop(&mut self) {
        self.metrics.http_conns_open.fetch_sub(1, Ordering::Relaxed);
        self.tracker.remove(self.id);
    }
}

/// A connection's stream that notes when bytes last moved.
struct Tracked {
    inner: TcpStream,
    conn: Arc<Conn>,
    epoch: Instant,
}

impl Tracked {
    fn touch(&self) {
        self.conn
            .last_io_ms
            .store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.touch();
            self.conn.read_since_response.store(true, Ordering::Relaxed);
        }
        r
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_stays_below_the_descriptor_limit() {
        let mut limits = HttpLimits::default();
        assert_eq!(connection_cap(&limits, 1024), 512);
        assert_eq!(connection_cap(&limits, 1 << 20), 4096);
        limits.max_connections = Some(10_000);
        assert_eq!(
            connection_cap(&limits, 1024),
            512,
            "never above half the limit"
        );
        limits.max_connections = Some(100);
        assert_eq!(connection_cap(&limits, 1 << 20), 100);
    }

    #[test]
    fn the_refusal_is_a_complete_response() {
        let text = refusal();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("Content-Length: "))
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(body.len(), len);
        assert!(serde_json::from_str::<serde_json::Value>(body).is_ok());
    }

    #[test]
    fn eviction_takes_the_longest_idle_connection_without_a_request() {
        let t = Tracker {
            epoch: Instant::now(),
            conns: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
        };
        let (_, busy) = t.add();
        let (_, old) = t.add();
        let (_, new) = t.add();
        busy.last_io_ms.store(0, Ordering::Relaxed);
        busy.in_flight.store(1, Ordering::Relaxed);
        old.last_io_ms.store(5, Ordering::Relaxed);
        new.last_io_ms.store(9, Ordering::Relaxed);
        assert!(t.evict_idlest());
        assert!(old.evict.is_cancelled() && !busy.evict.is_cancelled());
        assert!(t.evict_idlest());
        assert!(new.evict.is_cancelled());
        assert!(
            !t.evict_idlest(),
            "a connection with a request in progress stays"
        );
        assert_eq!(t.len(), 1);
    }
}
