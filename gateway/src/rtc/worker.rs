//! Fan-out workers: `--workers N` threads, each driving its share of the viewers in one loop.
//!
//! A worker owns its viewers' cores (`viewer.rs`) and everything that moves them: datagrams
//! routed to it by the RTC port, the HTTP layer's PATCH and DELETE messages, one watcher per
//! session it serves (the ring's wakeups, source changes, session events and the stop, for all
//! its viewers of that session at once), command replies, and one queue of deadlines. Each
//! turn it takes what arrived, lets every viewer it touched read the ring and drain its output,
//! and sends what they all transmitted together (`batch.rs`). New viewers go to the worker with
//! the fewest; a session's viewers may span workers.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Map, json};
use tokio::sync::{broadcast, mpsc};

use crate::auth::Verifier;
use crate::rtc::batch::{Batch, WorkerSockets};
use crate::rtc::ice::{Inbox, OnEnd, Patched, PeerMsg, PortLink};
use crate::rtc::udp::{Datagram, RtcPort, Target, WorkerSocket};
use crate::rtc::viewer::{Event, Input, Output, Viewer};
use crate::session::{ControlReply, Kind, ReplyTo, Session, Source, ViewerSlot};

/// Datagrams a worker's queue holds; beyond it the port drops them (as UDP may).
const DATAGRAM_QUEUE: usize = 8192;
/// Datagrams taken from the queue per turn.
const DATAGRAMS_PER_TURN: usize = 512;

/// Hashes viewer keys (unique counters) with one multiplication: the default SipHash showed
/// in profiles of the per-packet path.
#[derive(Debug, Default, Clone, Copy)]
struct KeyHasher(u64);

impl std::hash::Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn write_u64(&mut self, n: u64) {
        // Fibonacci hashing: spreads sequential keys over the high bits hashbrown uses.
        self.0 = n.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

type Keyed<V> = HashMap<u64, V, std::hash::BuildHasherDefault<KeyHasher>>;

/// A viewer on its way to a worker.
#[derive(Debug)]
pub struct Joining {
    pub viewer: Viewer,
    /// Its place in the session (dropped when the viewer is).
    pub slot: ViewerSlot,
    /// Run when it ends (removes its resource, keeping why).
    pub on_end: OnEnd,
}

/// Where a new viewer goes: a worker, and the viewer's key there.
#[derive(Debug, Clone, Copy)]
pub struct Placement {
    worker: usize,
    key: u64,
}

enum Command {
    Add(u64, Box<Joining>),
}

struct Handle {
    commands: mpsc::UnboundedSender<Command>,
    messages: mpsc::UnboundedSender<(u64, PeerMsg)>,
    /// Viewers it drives.
    load: Arc<AtomicUsize>,
}

/// The workers (see the module's description).
pub struct Workers {
    handles: Vec<Handle>,
    next_key: AtomicU64,
}

impl std::fmt::Debug for Workers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workers")
            .field("count", &self.handles.len())
            .finish()
    }
}

impl Workers {
    /// Starts `count` worker threads (at least one). They end when this is dropped and their
    /// last viewer has ended.
    pub fn start(
        count: usize,
        port: Arc<RtcPort>,
        verifier: Arc<Verifier>,
    ) -> std::io::Result<Self> {
        let mut handles = Vec::new();
        for index in 0..count.max(1) {
            let (commands, commands_rx) = mpsc::unbounded_channel();
            let (messages, messages_rx) = mpsc::unbounded_channel();
            let load = Arc::new(AtomicUsize::new(0));
            let own = port.take_worker_sockets(index).unwrap_or_default();
            let worker = Worker::new(index, port.clone(), verifier.clone(), load.clone());
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            std::thread::Builder::new()
                .name(format!("wisp-fanout-{index}"))
                .spawn(move || runtime.block_on(worker.run(own, commands_rx, messages_rx)))?;
            handles.push(Handle {
                commands,
                messages,
                load,
            });
        }
        Ok(Self {
            handles,
            next_key: AtomicU64::new(1),
        })
    }

    /// How many workers there are.
    pub fn len(&self) -> usize {
        self.handles.len()
    }

    pub fn is_empty(&self) -> bool {
        self.handles.is_empty()
    }

    /// Viewers per worker.
    pub fn loads(&self) -> Vec<usize> {
        self.handles
            .iter()
            .map(|h| h.load.load(Ordering::Relaxed))
            .collect()
    }

    /// Picks the worker with the fewest viewers for a new one.
    pub fn place(&self) -> Placement {
        let worker = self
            .handles
            .iter()
            .enumerate()
            .min_by_key(|(_, h)| h.load.load(Ordering::Relaxed))
            .map(|(i, _)| i)
            .unwrap_or(0);
        Placement {
            worker,
            key: self.next_key.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// Where the HTTP layer sends a placed viewer's PATCH and DELETE.
    pub fn inbox(&self, at: Placement) -> Inbox {
        Inbox::Worker {
            tx: self.handles[at.worker].messages.clone(),
            key: at.key,
        }
    }

    /// Hands a viewer to its worker. Messages sent to its inbox after this reach it.
    pub fn add(&self, at: Placement, joining: Joining) {
        let h = &self.handles[at.worker];
        h.load.fetch_add(1, Ordering::Relaxed);
        if let Err(mpsc::error::SendError(Command::Add(_, mut j))) =
            h.commands.send(Command::Add(at.key, Box::new(joining)))
        {
            h.load.fetch_sub(1, Ordering::Relaxed);
            j.on_end.run("the gateway is shutting down");
        }
    }
}

/// Which of `sockets` has datagrams waiting.
async fn readable(sockets: &[tokio::net::UdpSocket]) -> usize {
    std::future::poll_fn(|cx| {
        for (i, s) in sockets.iter().enumerate() {
            if s.poll_recv_ready(cx).is_ready() {
                return std::task::Poll::Ready(i);
            }
        }
        std::task::Poll::Pending
    })
    .await
}

/// News of a session, from its watcher to the worker.
enum News {
    Ring(u64),
    Source(u64, Source),
    Event(u64, Arc<str>),
    Stopped(u64),
    Gone(u64),
}

/// One viewer in a worker.
struct Entry {
    viewer: Viewer,
    slot: ViewerSlot,
    on_end: OnEnd,
    link: PortLink,
    span: tracing::Span,
    session: u64,
    /// Its deadline in the queue.
    due: Option<Instant>,
    touched: bool,
}

/// A session some of the worker's viewers watch.
struct Watched {
    viewers: Vec<u64>,
    watcher: tokio::task::JoinHandle<()>,
}

struct Worker {
    index: usize,
    port: Arc<RtcPort>,
    /// What draining a viewer needs besides the viewer (made once, shared by every drain).
    ctx: Arc<EventContext>,
    load: Arc<AtomicUsize>,
    /// Boxed: a viewer is ~11 KB, and the map keeps its capacity after a crowd has left.
    viewers: Keyed<Box<Entry>>,
    sessions: Keyed<Watched>,
    /// Viewers' deadlines, one per viewer (its `due`).
    timers: BTreeSet<(Instant, u64)>,
    touched: Vec<u64>,
    batch: Batch,
    datagrams: mpsc::Sender<(u64, Datagram)>,
    datagrams_rx: Option<mpsc::Receiver<(u64, Datagram)>>,
    replies_rx: Option<mpsc::UnboundedReceiver<(u64, ControlReply)>>,
    news: mpsc::UnboundedSender<News>,
    news_rx: Option<mpsc::UnboundedReceiver<News>>,
}

impl Worker {
    fn new(
        index: usize,
        port: Arc<RtcPort>,
        verifier: Arc<Verifier>,
        load: Arc<AtomicUsize>,
    ) -> Self {
        let (datagrams, datagrams_rx) = mpsc::channel(DATAGRAM_QUEUE);
        let (replies, replies_rx) = mpsc::unbounded_channel();
        let (news, news_rx) = mpsc::unbounded_channel();
        Self {
            index,
            ctx: Arc::new(EventContext {
                port: port.clone(),
                replies,
                verifier,
            }),
            port,
            load,
            viewers: Keyed::default(),
            sessions: Keyed::default(),
            timers: BTreeSet::new(),
            touched: Vec::new(),
            batch: Batch::default(),
            datagrams,
            datagrams_rx: Some(datagrams_rx),
            replies_rx: Some(replies_rx),
            news,
            news_rx: Some(news_rx),
        }
    }

    async fn run(
        mut self,
        own: Vec<WorkerSocket>,
        mut commands: mpsc::UnboundedReceiver<Command>,
        mut messages: mpsc::UnboundedReceiver<(u64, PeerMsg)>,
    ) {
        // The worker's own sockets, registered with its runtime: it reads them and sends on
        // them.
        let destinations: Vec<SocketAddr> = own.iter().map(|w| w.destination).collect();
        let mut sockets = WorkerSockets::new(
            own.into_iter()
                .filter_map(|w| match tokio::net::UdpSocket::from_std(w.socket) {
                    Ok(s) => Some(s),
                    Err(e) => {
                        tracing::error!(worker = self.index, "registering a worker socket: {e}");
                        None
                    }
                })
                .collect(),
        );
        let mut buf = vec![0u8; 2048];
        let mut datagrams = self.datagrams_rx.take().expect("taken once");
        let mut replies = self.replies_rx.take().expect("taken once");
        let mut news = self.news_rx.take().expect("taken once");
        let mut taken = Vec::with_capacity(DATAGRAMS_PER_TURN);
        let sleep = tokio::time::sleep_until(tokio::time::Instant::now());
        tokio::pin!(sleep);
        let mut open = true;
        tracing::debug!(worker = self.index, "fan-out worker started");
        loop {
            if !open && self.viewers.is_empty() {
                break;
            }
            let next = self.next_deadline();
            let wake = next.map_or_else(
                || tokio::time::Instant::now() + Duration::from_secs(3600),
                tokio::time::Instant::from_std,
            );
            if sleep.deadline() != wake {
                sleep.as_mut().reset(wake);
            }
            // Commands first: a viewer is added before any message for it is read.
            tokio::select! {
                biased;
                c = commands.recv(), if open => match c {
                    Some(c) => self.on_command(c),
                    None => open = false,
                },
                Some((key, msg)) = messages.recv() => self.on_message(key, msg),
                n = datagrams.recv_many(&mut taken, DATAGRAMS_PER_TURN) => {
                    if n > 0 {
                        let now = Instant::now();
                        for (key, dg) in taken.drain(..) {
                            self.input(key, Input::Datagram(&dg), now);
                        }
                    }
                }
                i = readable(&sockets.sockets), if !sockets.sockets.is_empty() => {
                    self.receive(&sockets.sockets[i], destinations[i], &mut buf);
                }
                Some(n) = news.recv() => self.on_news(n),
                Some((key, reply)) = replies.recv() => self.input(key, Input::Reply(reply), Instant::now()),
                _ = &mut sleep, if next.is_some() => {}
            }
            // Whatever else already waits joins this turn (one send for all of it).
            while let Ok(n) = news.try_recv() {
                self.on_news(n);
            }
            if let Ok(n) = datagrams.try_recv() {
                let now = Instant::now();
                self.input(n.0, Input::Datagram(&n.1), now);
                while let Ok((key, dg)) = datagrams.try_recv() {
                    self.input(key, Input::Datagram(&dg), now);
                }
            }
            let now = Instant::now();
            self.run_timers(now);
            self.drain_touched(now);
            if !self.batch.is_empty() {
                let sent = self.batch.flush(&mut sockets);
                self.port
                    .count_sent(sent.datagrams, sent.bytes, sent.failed);
            }
        }
        for (_, w) in self.sessions.drain() {
            w.watcher.abort();
        }
        tracing::debug!(worker = self.index, "fan-out worker ended");
    }

    /// Reads what waits on one of the worker's sockets (up to a turn's worth): its own
    /// viewers' datagrams are handled here, others go to their worker or task.
    fn receive(&mut self, socket: &tokio::net::UdpSocket, destination: SocketAddr, buf: &mut [u8]) {
        let now = Instant::now();
        for _ in 0..DATAGRAMS_PER_TURN {
            let (n, source) = match socket.try_recv_from(buf) {
                Ok(v) => v,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    // ICMP errors from a peer that went away surface here; they are not ours.
                    tracing::debug!(worker = self.index, "udp receive: {e}");
                    continue;
                }
            };
            let data = &buf[..n];
            let Some(peer) = self.port.accept(source, data) else {
                continue;
            };
            let dg = Datagram {
                source,
                destination,
                data: data.to_vec(),
                at_us: rtp_ring::now_us(),
            };
            if peer.tx.same_channel(&self.datagrams) {
                self.input(peer.key, Input::Datagram(&dg), now);
            } else if peer.tx.try_send((peer.key, dg)).is_err() {
                self.port.count_dropped(1);
            }
        }
    }

    /// The earliest deadline in the queue.
    fn next_deadline(&self) -> Option<Instant> {
        self.timers.first().map(|(t, _)| *t)
    }

    /// Moves viewer `key`'s deadline in the queue.
    fn schedule(&mut self, key: u64, due: Option<Instant>) {
        let Some(e) = self.viewers.get_mut(&key) else {
            return;
        };
        if e.due == due {
            return;
        }
        if let Some(old) = e.due {
            self.timers.remove(&(old, key));
        }
        e.due = due;
        if let Some(t) = due {
            self.timers.insert((t, key));
        }
    }

    fn run_timers(&mut self, now: Instant) {
        while let Some(&(t, key)) = self.timers.first() {
            if t > now {
                break;
            }
            self.schedule(key, None);
            self.input(key, Input::Timeout, now);
        }
    }

    fn touch(&mut self, key: u64) {
        if let Some(e) = self.viewers.get_mut(&key)
            && !e.touched
        {
            e.touched = true;
            self.touched.push(key);
        }
    }

    fn input(&mut self, key: u64, input: Input<'_>, now: Instant) {
        if self.with(key, |e| e.viewer.handle(input, now)).is_some() {
            self.touch(key);
        }
    }

    /// Runs `f` on viewer `key` inside its span. A panic in it (a bug, ours or str0m's) ends
    /// that viewer alone: the worker's other viewers go on.
    fn with<R>(&mut self, key: u64, f: impl FnOnce(&mut Entry) -> R) -> Option<R> {
        let e = self.viewers.get_mut(&key)?;
        let r = {
            let _entered = e.span.clone().entered();
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&mut *e)))
        };
        match r {
            Ok(r) => Some(r),
            Err(panic) => {
                let what = panic
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| panic.downcast_ref::<&str>().copied())
                    .unwrap_or("a panic");
                if let Some(mut e) = self.forget(key) {
                    let _entered = e.span.enter();
                    tracing::error!("the viewer panicked and was ended (a bug to report): {what}");
                    e.slot.session().set_viewer_layer(e.viewer.id(), None);
                    e.on_end.run(&format!("internal error: {what}"));
                }
                None
            }
        }
    }

    fn on_command(&mut self, c: Command) {
        match c {
            Command::Add(key, j) => self.add(key, *j),
        }
    }

    fn add(&mut self, key: u64, j: Joining) {
        let Joining {
            viewer,
            slot,
            on_end,
        } = j;
        let session = slot.session().clone();
        let sid = session.id();
        let span = tracing::info_span!(
            "viewer",
            session = %session.name,
            resource = %viewer.id()
        );
        let target = Target {
            tx: self.datagrams.clone(),
            key,
        };
        let link = PortLink::new(self.port.clone(), viewer.ufrag(), target);
        self.viewers.insert(
            key,
            Box::new(Entry {
                viewer,
                slot,
                on_end,
                link,
                span,
                session: sid,
                due: None,
                touched: false,
            }),
        );
        let news = self.news.clone();
        self.sessions
            .entry(sid)
            .or_insert_with(|| Watched {
                viewers: Vec::new(),
                watcher: tokio::spawn(watch(session.clone(), news)),
            })
            .viewers
            .push(key);
        // The source as of the join: a change since then is news for this viewer.
        let mut source = self.viewers[&key].slot.source();
        let news = source.has_changed().unwrap_or(false);
        let current = source.borrow_and_update().clone();
        self.input(
            key,
            Input::Source {
                source: &current,
                news,
            },
            Instant::now(),
        );
    }

    /// A message from the HTTP layer. For a viewer that is gone, a PATCH's reply is dropped,
    /// which its handler answers with 404.
    fn on_message(&mut self, key: u64, msg: PeerMsg) {
        match msg {
            PeerMsg::Layer { wish, reply } => {
                let now = Instant::now();
                if let Some(result) = self.with(key, |e| e.viewer.select_layer(wish, now)) {
                    let _ = reply.send(result);
                    self.touch(key);
                }
            }
            PeerMsg::Close(why) => self.input(key, Input::Close(why), Instant::now()),
            PeerMsg::Patch {
                fragment,
                if_match,
                reply,
            } => {
                let result = self.with(key, |e| {
                    let result = e.viewer.patch(fragment, if_match.as_deref());
                    if let Ok(Patched::Restarted { .. }) = &result {
                        e.link.add(e.viewer.ufrag());
                    }
                    result
                });
                if let Some(result) = result {
                    let _ = reply.send(result);
                    self.touch(key);
                }
            }
        }
    }

    fn on_news(&mut self, news: News) {
        let now = Instant::now();
        let sid = match &news {
            News::Ring(s)
            | News::Source(s, _)
            | News::Event(s, _)
            | News::Stopped(s)
            | News::Gone(s) => *s,
        };
        if let News::Ring(_) = news {
            // The hot path (every frame): a flag per viewer, read when it is drained.
            let Some(w) = self.sessions.get(&sid) else {
                return;
            };
            for key in &w.viewers {
                if let Some(e) = self.viewers.get_mut(key)
                    && e.viewer.wants_records()
                {
                    e.viewer.ring_written();
                    if !e.touched {
                        e.touched = true;
                        self.touched.push(*key);
                    }
                }
            }
            return;
        }
        let Some(keys) = self.sessions.get(&sid).map(|w| w.viewers.clone()) else {
            return;
        };
        for &key in &keys {
            let Some(e) = self.viewers.get(&key) else {
                continue;
            };
            match &news {
                News::Event(_, text) if e.viewer.has_control() => {
                    self.input(key, Input::SessionEvent(text), now)
                }
                News::Ring(_) | News::Event(..) => {}
                News::Source(_, source) => {
                    self.input(key, Input::Source { source, news: true }, now)
                }
                News::Stopped(_) => self.input(key, Input::SessionStopped, now),
                News::Gone(_) => self.input(key, Input::SessionGone, now),
            }
        }
    }

    /// Lets every touched viewer read the ring and drain its output into the batch; removes
    /// viewers that are done.
    fn drain_touched(&mut self, now: Instant) {
        let mut i = 0;
        while i < self.touched.len() {
            let key = self.touched[i];
            i += 1;
            self.drain(key, now);
        }
        self.touched.clear();
    }

    /// Drains viewer `key`'s output: datagrams into the batch, events acted on, its next
    /// deadline queued; a viewer that is done is removed.
    fn drain(&mut self, key: u64, now: Instant) {
        let max_segments = self.port.max_segments();
        let ctx = self.ctx.clone();
        let mut batch = std::mem::take(&mut self.batch);
        let due = self.with(key, |e| {
            e.touched = false;
            loop {
                match e.viewer.poll_output(now) {
                    Output::Transmit(t) => {
                        let socket = ctx.port.address_index(t.source);
                        batch.push(socket, t, max_segments)
                    }
                    Output::Event(ev) => ctx.act(key, e, ev, now),
                    Output::Timeout(t) => break (!e.viewer.is_done()).then_some(t),
                }
            }
        });
        self.batch = batch;
        match due {
            Some(Some(t)) => self.schedule(key, Some(t)),
            Some(None) => {
                self.forget(key);
            }
            None => {}
        }
    }

    /// Takes viewer `key` out of the worker; its routes and its place in the session go
    /// when the entry is dropped.
    fn forget(&mut self, key: u64) -> Option<Box<Entry>> {
        self.schedule(key, None);
        let e = self.viewers.remove(&key)?;
        // A crowd that left does not keep its table.
        if self.viewers.capacity() > 64 && self.viewers.len() < self.viewers.capacity() / 8 {
            self.viewers.shrink_to(self.viewers.len() * 2);
            self.touched.shrink_to(self.viewers.len() * 2);
        }
        self.load.fetch_sub(1, Ordering::Relaxed);
        if let Some(w) = self.sessions.get_mut(&e.session) {
            w.viewers.retain(|k| *k != key);
            if w.viewers.is_empty() {
                w.watcher.abort();
                self.sessions.remove(&e.session);
            }
        }
        Some(e)
    }
}

/// What a viewer's events need from its worker.
struct EventContext {
    port: Arc<RtcPort>,
    replies: mpsc::UnboundedSender<(u64, ControlReply)>,
    verifier: Arc<Verifier>,
}

impl EventContext {
    /// Acts on one of viewer `e`'s events.
    fn act(&self, key: u64, e: &mut Entry, ev: Event, now: Instant) {
        let session = e.slot.session();
        match ev {
            Event::Connected { .. } => {}
            Event::KeyframeWanted(track) => session.request_keyframe(track),
            Event::Layer(layer) => session.set_viewer_layer(e.viewer.id(), layer),
            Event::ControlOpen => {
                let state = session.playback().state_event();
                let viewers = session.viewer_count();
                e.viewer.handle(Input::Greeting { state, viewers }, now);
            }
            Event::Command { id, command } => {
                let reply = ReplyTo {
                    tx: self.replies.clone(),
                    viewer: key,
                };
                session.control(id, command, reply);
            }
            // A relayed session's chat goes to its node, which sends it to every viewer
            // there, this node's relay included (and so this node's viewers).
            Event::Chat(text) => match session.relay() {
                Some(link) => {
                    let _ = link.chats.send(text);
                }
                None => session.publish(text),
            },
            Event::Status { id } => {
                let fields = status_fields(session);
                e.viewer.handle(Input::Status { id, fields }, now);
            }
            Event::Auth { id, token } => {
                let result = self
                    .verifier
                    .verify(token.trim())
                    .map_err(|e| e.to_string());
                e.viewer.handle(Input::Verified { id, result }, now);
            }
            Event::Ended(reason) => {
                tracing::info!(packets = e.viewer.sent(), "viewer ended: {reason}");
                session.set_viewer_layer(e.viewer.id(), None);
                e.on_end.run(&reason);
            }
        }
    }
}

/// What a `status` reply says of the session (the viewer adds its token's fields).
fn status_fields(session: &Session) -> Map<String, serde_json::Value> {
    // A relayed session's playback is its node's, as that node last said it.
    if let Some(link) = session.relay()
        && !link.status.is_empty()
    {
        let mut f = link.status;
        // The token fields are this viewer's, added by the viewer.
        for k in ["id", "ok", "scope", "exp", "sub"] {
            f.remove(k);
        }
        f.insert("viewers".into(), json!(session.viewer_count()));
        return f;
    }
    let mut f = match serde_json::to_value(session.playback()) {
        Ok(serde_json::Value::Object(m)) => m,
        _ => Map::new(),
    };
    f.insert("viewers".into(), json!(session.viewer_count()));
    // What a player shows: live controls or VOD ones, and whether to say the publisher is
    // away.
    f.insert("kind".into(), json!(session.kind));
    if session.kind == Kind::Live {
        let on = if session.has_media() {
            "active"
        } else {
            "inactive"
        };
        f.insert("publisher".into(), json!(on));
    }
    f
}

/// Watches one session for a worker: the ring of its current source (one wakeup registration
/// for all the worker's viewers of it), source changes, events and the stop.
async fn watch(session: Arc<Session>, news: mpsc::UnboundedSender<News>) {
    let sid = session.id();
    let mut source = session.source();
    let mut ring = waiter(&source.borrow_and_update(), None);
    let mut events = Some(session.events());
    let stopped = session.cancelled();
    tokio::pin!(stopped);
    loop {
        let sent = tokio::select! {
            w = written(&mut ring) => match w {
                Ok(()) => news.send(News::Ring(sid)),
                Err(e) => {
                    tracing::warn!(session = %session.name, "cannot wait on the session ring: {e}");
                    ring = None;
                    Ok(())
                }
            },
            changed = source.changed() => {
                if changed.is_err() {
                    let _ = news.send(News::Gone(sid));
                    return;
                }
                let now = source.borrow_and_update().clone();
                ring = waiter(&now, ring);
                news.send(News::Source(sid, now))
            }
            ev = recv_event(&mut events) => match ev {
                Ok(text) => news.send(News::Event(sid, text)),
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::debug!(n, session = %session.name, "viewers skipped session events");
                    Ok(())
                }
                Err(broadcast::error::RecvError::Closed) => {
                    events = None;
                    Ok(())
                }
            },
            _ = &mut stopped => {
                let _ = news.send(News::Stopped(sid));
                return;
            }
            _ = news.closed() => return,
        };
        if sent.is_err() {
            return;
        }
    }
}

/// The waiter on `source`'s ring: the one given if it is for the same source.
fn waiter(
    source: &Source,
    current: Option<(u64, rtp_ring::AsyncReader)>,
) -> Option<(u64, rtp_ring::AsyncReader)> {
    let Source::Ready(ready) = source else {
        return current;
    };
    if current
        .as_ref()
        .is_some_and(|(g, _)| *g == ready.generation)
    {
        return current;
    }
    match ready.ring.reader().into_async() {
        Ok(r) => Some((ready.generation, r)),
        Err(e) => {
            tracing::error!("cannot wait on the session ring: {e}");
            None
        }
    }
}

async fn written(ring: &mut Option<(u64, rtp_ring::AsyncReader)>) -> std::io::Result<()> {
    match ring {
        Some((_, r)) => r.written().await.map(|_| ()),
        None => std::future::pending().await,
    }
}

async fn recv_event(
    events: &mut Option<broadcast::Receiver<Arc<str>>>,
) -> Result<Arc<str>, broadcast::error::RecvError> {
    match events {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}
