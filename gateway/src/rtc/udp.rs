//! The one UDP port every WebRTC peer shares: sockets, ICE candidates and demultiplexing.
//!
//! Owns the sockets bound to `--rtc` (one per local address when bound to a wildcard, so that
//! each datagram's destination address is known, as ICE needs), the host candidates written
//! into answers, and the routing of datagrams to peers: a STUN request by the local ICE ufrag in
//! its USERNAME (RFC 8445 §7.2.2), everything else by the remote address the peer's STUN
//! came from. Garbage is dropped and counted. It does not interpret media (peers do).
//!
//! The routing table is shared by the receive tasks and the peers that register in it, behind
//! a mutex held only for a map lookup or update, never across an await.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use str0m::ice::StunMessage;
use str0m::net::DatagramRecv;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use crate::metrics::Metrics;

/// A datagram for a peer, with the local address it arrived on (as a candidate address).
#[derive(Debug)]
pub struct Datagram {
    pub source: SocketAddr,
    pub destination: SocketAddr,
    pub data: Vec<u8>,
    /// When it was read from the socket (µs, `rtp_ring::now_us` clock).
    pub at_us: u64,
}

/// Why the RTC port could not be opened. The operator's to fix.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("binding UDP {addr}: {source} (is another process using the port? see --rtc)")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("listing local addresses for {0}: {1}")]
    Interfaces(SocketAddr, std::io::Error),
    #[error("no usable local address for {0}; give --rtc with a specific address")]
    NoAddress(SocketAddr),
}

/// The bound sockets and what peers need to use them.
#[derive(Debug)]
pub struct RtcPort {
    /// One per local address, read by the port's own receive tasks (publishers send on them).
    sockets: Vec<Arc<UdpSocket>>,
    /// Per fan-out worker, its own sockets on the same addresses and port (`SO_REUSEPORT`:
    /// the kernel spreads arriving datagrams over all of them by their addresses), until the
    /// worker takes them. A worker reads its own and sends on them, segment size and all.
    worker_sockets: Mutex<Vec<Option<Vec<WorkerSocket>>>>,
    /// Per socket: quinn-udp's sender, for segmentation offload (UDP GSO) where the kernel has it.
    senders: Vec<quinn_udp::UdpSocketState>,
    /// `(candidate address, socket index)`: the addresses written into answers.
    candidates: Vec<(SocketAddr, usize)>,
    routes: Mutex<Routes>,
    metrics: Arc<Metrics>,
    /// The sockets' inode numbers, to find their drop counts in /proc/self/net/udp{,6}.
    inodes: Vec<u64>,
    /// The last drop count read and when: /metrics is anonymous by default, and the table is
    /// the whole namespace's, so it is read at most once a second.
    drops: Mutex<Option<(std::time::Instant, u64)>>,
}

/// One of a fan-out worker's sockets, and the candidate address datagrams arriving on it
/// count as arriving at.
#[derive(Debug)]
pub struct WorkerSocket {
    pub socket: std::net::UdpSocket,
    pub destination: SocketAddr,
}

#[derive(Debug, Default)]
struct Routes {
    by_ufrag: HashMap<String, Target>,
    by_addr: HashMap<SocketAddr, Target>,
}

/// Where a peer's datagrams go: a channel, and the peer's key on it (a worker's channel
/// carries the datagrams of all its viewers; a publisher's task has one of its own).
#[derive(Debug, Clone)]
pub struct Target {
    pub tx: mpsc::Sender<(u64, Datagram)>,
    pub key: u64,
}

impl Target {
    fn is(&self, other: &Target) -> bool {
        self.key == other.key && self.tx.same_channel(&other.tx)
    }
}

impl RtcPort {
    /// Binds `addr`. A wildcard address binds each local address of the machine on the port
    /// (the port of the first socket when 0). `public_ips`, when given, replace the bound
    /// addresses in candidates (1:1 NAT, containers).
    /// Each of `workers` fan-out workers gets sockets of its own on the same addresses.
    pub async fn bind(
        addr: SocketAddr,
        public_ips: &[IpAddr],
        recv_buffer: usize,
        workers: usize,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<Self>, BindError> {
        let locals: Vec<IpAddr> = if addr.ip().is_unspecified() {
            let want_v4 = addr.is_ipv4();
            let mut ips: Vec<IpAddr> = if_addrs::get_if_addrs()
                .map_err(|e| BindError::Interfaces(addr, e))?
                .into_iter()
                .map(|i| i.ip())
                .filter(|ip| ip.is_ipv4() == want_v4 && !is_link_local(ip))
                .collect();
            ips.sort_by_key(|ip| ip.is_loopback());
            ips.dedup();
            ips
        } else {
            vec![addr.ip()]
        };
        if locals.is_empty() {
            return Err(BindError::NoAddress(addr));
        }
        let mut port = addr.port();
        let mut sockets = Vec::new();
        let mut senders = Vec::new();
        let mut per_worker: Vec<Vec<std::net::UdpSocket>> =
            (0..workers).map(|_| Vec::new()).collect();
        let mut inodes = Vec::new();
        for ip in &locals {
            let at = SocketAddr::new(*ip, port);
            let bind_error = |source| BindError::Bind { addr: at, source };
            let socket = bind_shared(at, true).map_err(bind_error)?;
            let at = socket.local_addr().map_err(bind_error)?;
            port = at.port();
            set_recv_buffer(&socket, recv_buffer, at);
            for w in per_worker.iter_mut() {
                let s = bind_shared(at, false)
                    .map_err(|source| BindError::Bind { addr: at, source })?;
                set_recv_buffer_quietly(&s, recv_buffer);
                w.push(s);
            }
            let socket = UdpSocket::from_std(socket)
                .map_err(|source| BindError::Bind { addr: at, source })?;
            senders.push(
                quinn_udp::UdpSocketState::new((&socket).into())
                    .map_err(|source| BindError::Bind { addr: at, source })?,
            );
            sockets.push(Arc::new(socket));
        }
        for s in &sockets {
            inodes.extend(rustix::fs::fstat(s.as_ref()).ok().map(|st| st.st_ino));
        }
        for s in per_worker.iter().flatten() {
            inodes.extend(rustix::fs::fstat(s).ok().map(|st| st.st_ino));
        }
        let candidates: Vec<(SocketAddr, usize)> = if public_ips.is_empty() {
            locals
                .iter()
                .enumerate()
                .map(|(i, ip)| (SocketAddr::new(*ip, port), i))
                .collect()
        } else {
            public_ips
                .iter()
                .map(|ip| (SocketAddr::new(*ip, port), 0))
                .collect()
        };
        // A worker's socket i is on local address i: it counts datagrams as arriving at that
        // address's candidate.
        let destination_of = |i: usize| {
            candidates
                .iter()
                .find(|(_, s)| *s == i)
                .or(candidates.first())
                .map(|(a, _)| *a)
                .expect("at least one candidate")
        };
        let worker_sockets = per_worker
            .into_iter()
            .map(|socks| {
                Some(
                    socks
                        .into_iter()
                        .enumerate()
                        .map(|(i, socket)| WorkerSocket {
                            socket,
                            destination: destination_of(i),
                        })
                        .collect(),
                )
            })
            .collect();
        Ok(Arc::new(Self {
            sockets,
            worker_sockets: Mutex::new(worker_sockets),
            senders,
            candidates,
            routes: Mutex::new(Routes::default()),
            metrics,
            inodes,
            drops: Mutex::new(None),
        }))
    }

    /// Datagrams the kernel dropped for these sockets because their receive queues were full
    /// (the `drops` column of /proc/self/net/udp and udp6), 0 where /proc cannot be read.
    pub fn kernel_drops(&self) -> u64 {
        let mut last = self.drops.lock().expect("not poisoned");
        if let Some((at, n)) = *last
            && at.elapsed() < std::time::Duration::from_secs(1)
        {
            return n;
        }
        let n = ["/proc/self/net/udp", "/proc/self/net/udp6"]
            .iter()
            .filter_map(|p| std::fs::read_to_string(p).ok())
            .map(|table| drops_of(&table, &self.inodes))
            .sum();
        *last = Some((std::time::Instant::now(), n));
        n
    }

    /// Fan-out worker `index`'s sockets, one per local address in candidate order (once).
    pub fn take_worker_sockets(&self, index: usize) -> Option<Vec<WorkerSocket>> {
        self.worker_sockets
            .lock()
            .expect("not poisoned")
            .get_mut(index)
            .and_then(Option::take)
    }

    /// The index of the local address a candidate address stands for (a worker's socket
    /// index for sending from it).
    pub fn address_index(&self, source: SocketAddr) -> usize {
        self.socket_for(source)
    }

    /// Counts a datagram read from a socket and finds whom it is for: `None` for garbage
    /// and for datagrams no peer is known by (both counted).
    pub fn accept(&self, source: SocketAddr, data: &[u8]) -> Option<Target> {
        self.metrics.udp_in.fetch_add(1, Ordering::Relaxed);
        if !demultiplexable(data) {
            self.metrics.udp_garbage.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let peer = self.route(source, data);
        if peer.is_none() {
            self.metrics.udp_unrouted.fetch_add(1, Ordering::Relaxed);
        }
        peer
    }

    /// Counts datagrams a peer's queue had no room for.
    pub fn count_dropped(&self, n: u64) {
        self.metrics.udp_dropped.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts datagrams sent (and their bytes) and datagrams that could not be sent.
    pub fn count_sent(&self, datagrams: u64, bytes: u64, failed: u64) {
        self.metrics.udp_out.fetch_add(datagrams, Ordering::Relaxed);
        self.metrics.bytes_out.fetch_add(bytes, Ordering::Relaxed);
        if failed > 0 {
            self.metrics
                .udp_send_errors
                .fetch_add(failed, Ordering::Relaxed);
        }
    }

    /// The addresses to write into answers as host candidates.
    pub fn candidates(&self) -> Vec<SocketAddr> {
        self.candidates.iter().map(|(a, _)| *a).collect()
    }

    /// The port every socket is bound to.
    pub fn port(&self) -> u16 {
        self.candidates[0].0.port()
    }

    /// Starts one receive task per socket.
    pub fn spawn_receivers(self: &Arc<Self>, cancel: tokio_util::sync::CancellationToken) {
        for index in 0..self.sockets.len() {
            let port = self.clone();
            let cancel = cancel.clone();
            tokio::spawn(async move {
                tokio::select! {
                    _ = port.receive_loop(index) => {}
                    _ = cancel.cancelled() => {}
                }
            });
        }
    }

    async fn receive_loop(&self, index: usize) {
        let socket = &self.sockets[index];
        let local = socket.local_addr().expect("a bound socket has an address");
        // The candidate address datagrams on this socket count as arriving at.
        let destination = self
            .candidates
            .iter()
            .find(|(_, i)| *i == index)
            .or(self.candidates.first())
            .map(|(a, _)| *a)
            .unwrap_or(local);
        let mut buf = vec![0u8; 2048];
        loop {
            let (n, source) = match socket.recv_from(&mut buf).await {
                Ok(v) => v,
                Err(e) => {
                    // ICMP errors from a peer that went away surface here; they are not ours.
                    tracing::debug!(%local, "udp receive: {e}");
                    continue;
                }
            };
            let data = &buf[..n];
            let Some(peer) = self.accept(source, data) else {
                continue;
            };
            let dg = Datagram {
                source,
                destination,
                data: data.to_vec(),
                at_us: rtp_ring::now_us(),
            };
            if peer.tx.try_send((peer.key, dg)).is_err() {
                // The peer is gone or too far behind to keep up; UDP may drop.
                self.metrics.udp_dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn route(&self, source: SocketAddr, data: &[u8]) -> Option<Target> {
        let stun_ufrag = stun_ufrag(data);
        let mut routes = self.routes.lock().expect("routes lock is never poisoned");
        if let Some(ufrag) = stun_ufrag {
            let peer = routes.by_ufrag.get(&ufrag)?.clone();
            if peer.tx.is_closed() {
                routes.by_ufrag.remove(&ufrag);
                return None;
            }
            // Remember where this peer talks from, for its DTLS and SRTP.
            routes.by_addr.insert(source, peer.clone());
            return Some(peer);
        }
        let peer = routes.by_addr.get(&source)?;
        if peer.tx.is_closed() {
            routes.by_addr.remove(&source);
            return None;
        }
        Some(peer.clone())
    }

    /// Routes STUN for `ufrag` (a peer's local ICE ufrag) to `peer`.
    pub fn register(&self, ufrag: &str, peer: Target) {
        let mut routes = self.routes.lock().expect("routes lock is never poisoned");
        routes.by_ufrag.insert(ufrag.to_string(), peer);
    }

    /// Forgets a peer's ufrags and every address routed to it.
    pub fn unregister<'a>(&self, ufrags: impl IntoIterator<Item = &'a str>, peer: &Target) {
        let mut routes = self.routes.lock().expect("routes lock is never poisoned");
        for u in ufrags {
            if routes.by_ufrag.get(u).is_some_and(|p| p.is(peer)) {
                routes.by_ufrag.remove(u);
            }
        }
        routes.by_addr.retain(|_, p| !p.is(peer));
    }

    /// The socket that the candidate address `source` stands for.
    fn socket_for(&self, source: SocketAddr) -> usize {
        self.candidates
            .iter()
            .find(|(a, _)| *a == source)
            .map(|(_, i)| *i)
            .unwrap_or(0)
    }

    /// Datagrams one [`RtcPort::send_segments`] call may carry.
    pub fn max_segments(&self) -> usize {
        self.senders
            .iter()
            .map(|s| s.max_gso_segments())
            .min()
            .unwrap_or(1)
            .clamp(1, 64)
    }

    /// Sends `contents` as datagrams of `segment` bytes (the last may be shorter) to one
    /// destination in one system call (UDP GSO; quinn-udp falls back to one datagram per call
    /// where the kernel lacks it).
    pub fn send_segments(
        &self,
        source: SocketAddr,
        destination: SocketAddr,
        contents: &[u8],
        segment: usize,
    ) {
        let index = self.socket_for(source);
        let count = contents.len().div_ceil(segment.max(1)) as u64;
        let transmit = quinn_udp::Transmit {
            destination,
            ecn: None,
            contents,
            segment_size: (contents.len() > segment).then_some(segment),
            src_ip: None,
        };
        match self.senders[index].send((&*self.sockets[index]).into(), &transmit) {
            Ok(()) => {
                self.metrics.udp_out.fetch_add(count, Ordering::Relaxed);
                self.metrics
                    .bytes_out
                    .fetch_add(contents.len() as u64, Ordering::Relaxed);
            }
            Err(e) => {
                self.metrics
                    .udp_send_errors
                    .fetch_add(count, Ordering::Relaxed);
                tracing::trace!(%destination, "udp send: {e}");
            }
        }
    }
}

/// Whether a datagram is one the RTC port takes at all (STUN, DTLS, RTP or RTCP: RFC 7983).
pub fn demultiplexable(data: &[u8]) -> bool {
    DatagramRecv::try_from(data).is_ok()
}

/// The local ICE ufrag named by a STUN binding request (its USERNAME is `local:remote`,
/// RFC 8445 §7.2.2), which routes it to a peer; `None` for anything else.
pub fn stun_ufrag(data: &[u8]) -> Option<String> {
    // RFC 7983 §7: only a first byte of 0-3 can be STUN; SRTP and DTLS skip the parse.
    data.first()
        .is_some_and(|b| *b < 4)
        .then(|| StunMessage::parse(data).ok())
        .flatten()
        .filter(|m| m.is_binding_request())
        .and_then(|m| m.split_username().map(|(local, _)| local.to_string()))
}

/// A nonblocking UDP socket bound to `at` with `SO_REUSEPORT`, so that the fan-out workers'
/// sockets can share the address. `first`: the address must be free (a plain bind is tried
/// first), so that another program on the port is an error as it was without the sharing.
fn bind_shared(at: SocketAddr, first: bool) -> std::io::Result<std::net::UdpSocket> {
    use rustix::net::{AddressFamily, SocketFlags, SocketType};
    if first && at.port() != 0 {
        drop(std::net::UdpSocket::bind(at)?);
    }
    let family = match at {
        SocketAddr::V4(_) => AddressFamily::INET,
        SocketAddr::V6(_) => AddressFamily::INET6,
    };
    let fd = rustix::net::socket_with(
        family,
        SocketType::DGRAM,
        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        None,
    )?;
    rustix::net::sockopt::set_socket_reuseport(&fd, true)?;
    rustix::net::bind(&fd, &at)?;
    Ok(std::net::UdpSocket::from(fd))
}

/// [`set_recv_buffer`] for a worker's socket: what the kernel granted was logged for the
/// address's first socket.
fn set_recv_buffer_quietly(socket: &std::net::UdpSocket, bytes: usize) {
    use rustix::net::sockopt;
    if sockopt::set_socket_recv_buffer_size_force(socket, bytes / 2).is_err() {
        let _ = sockopt::set_socket_recv_buffer_size(socket, bytes / 2);
    }
}

/// Asks for a receive buffer of `bytes` (forcing past `net.core.rmem_max` where the process
/// may), and logs what the kernel granted: bursts that overflow it are dropped by the kernel.
fn set_recv_buffer(socket: &impl std::os::fd::AsFd, bytes: usize, at: SocketAddr) {
    use rustix::net::sockopt;
    // The kernel doubles what it is asked for (for its bookkeeping) and reports the double.
    let half = bytes / 2;
    if sockopt::set_socket_recv_buffer_size_force(socket, half).is_err()
        && let Err(e) = sockopt::set_socket_recv_buffer_size(socket, half)
    {
        tracing::warn!(%at, "setting the UDP receive buffer: {e}");
    }
    match sockopt::socket_recv_buffer_size(socket) {
        Ok(granted) if granted < bytes => tracing::warn!(
            %at,
            "UDP receive buffer: asked for {bytes} bytes, the kernel granted {granted} (raise \
             the sysctl net.core.rmem_max, or run with CAP_NET_ADMIN, for more)"
        ),
        Ok(granted) => {
            tracing::info!(%at, "UDP receive buffer: asked for {bytes} bytes, granted {granted}")
        }
        Err(e) => tracing::warn!(%at, "reading the UDP receive buffer size: {e}"),
    }
}

/// The sum of the `drops` column of a /proc/net/udp table over the sockets with these inodes.
fn drops_of(table: &str, inodes: &[u64]) -> u64 {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let inode: u64 = f.get(9)?.parse().ok()?;
            let drops: u64 = f.get(12)?.parse().ok()?;
            inodes.contains(&inode).then_some(drops)
        })
        .sum()
}

fn is_link_local(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => v6.is_unicast_link_local(),
    }
}

/// A peer's outgoing datagrams, gathered while str0m is polled so that runs of equal-sized
/// datagrams to one destination (the packets of a video frame) leave in one GSO send.
#[derive(Debug, Default)]
pub struct Outbox {
    route: Option<(SocketAddr, SocketAddr)>,
    buf: Vec<u8>,
    segment: usize,
    count: usize,
    /// A shorter datagram ended the run (GSO allows only the last segment to be short).
    closed: bool,
}

/// Most bytes one GSO send carries. The kernel takes up to 64 KiB, but each peer keeps its
/// buffer's capacity, so a keyframe's 60 KB would stay allocated per viewer; 16 KB (about 13
/// video packets) keeps most of the saving in system calls.
const MAX_GSO_BYTES: usize = 16_000;

impl Outbox {
    /// Adds a datagram; sends what was gathered first if this one cannot join it.
    pub fn push(
        &mut self,
        source: SocketAddr,
        destination: SocketAddr,
        data: &[u8],
        max_segments: usize,
        send: &mut impl FnMut(SocketAddr, SocketAddr, &[u8], usize),
    ) {
        let joins = self.count > 0
            && self.route == Some((source, destination))
            && !self.closed
            && self.count < max_segments
            && data.len() <= self.segment
            && self.buf.len() + data.len() <= MAX_GSO_BYTES;
        if !joins {
            self.flush(send);
            self.route = Some((source, destination));
            self.segment = data.len();
        }
        self.buf.extend_from_slice(data);
        self.count += 1;
        if data.len() < self.segment {
            self.closed = true;
        }
    }

    /// Gathers one of str0m's transmits for `port`.
    pub fn transmit(&mut self, port: &RtcPort, t: &str0m::net::Transmit) {
        self.push(
            t.source,
            t.destination,
            &t.contents,
            port.max_segments(),
            &mut |src, dst, data, seg| port.send_segments(src, dst, data, seg),
        );
    }

    /// Sends what was gathered through `port`.
    pub fn flush_to(&mut self, port: &RtcPort) {
        self.flush(&mut |src, dst, data, seg| port.send_segments(src, dst, data, seg));
    }

    /// Sends what was gathered.
    pub fn flush(&mut self, send: &mut impl FnMut(SocketAddr, SocketAddr, &[u8], usize)) {
        if let (Some((src, dst)), true) = (self.route, self.count > 0) {
            send(src, dst, &self.buf, self.segment);
        }
        self.buf.clear();
        self.count = 0;
        self.closed = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_drops_are_read_from_the_sockets_lines_of_the_udp_table() {
        let table = "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops\n\
            \x20 1: 0100007F:20FB 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 4242 2 0000000000000000 17\n\
            \x20 2: 0100007F:20FC 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 4343 2 0000000000000000 5\n\
            \x20 3: 0100007F:20FD 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 4444 2 0000000000000000 100\n";
        assert_eq!(drops_of(table, &[4242, 4343]), 22);
        assert_eq!(drops_of(table, &[]), 0);
        assert_eq!(drops_of("garbage\n1 2 3\n", &[1]), 0);
    }

    #[test]
    fn equal_datagrams_to_one_peer_leave_together() {
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:2".parse().unwrap();
        let c: SocketAddr = "127.0.0.1:3".parse().unwrap();
        let mut sent: Vec<(SocketAddr, usize, usize)> = Vec::new();
        let mut send = |_: SocketAddr, dst: SocketAddr, data: &[u8], seg: usize| {
            sent.push((dst, data.len(), seg));
        };
        let mut o = Outbox::default();
        // A frame: three full packets and a short last one, then audio, then another peer.
        for len in [1200, 1200, 1200, 700] {
            o.push(a, b, &vec![0; len], 64, &mut send);
        }
        o.push(a, b, &[0; 100], 64, &mut send);
        o.push(a, b, &[0; 100], 64, &mut send);
        o.push(a, c, &[0; 100], 64, &mut send);
        o.push(a, c, &[0; 300], 64, &mut send);
        o.flush(&mut send);
        assert_eq!(
            sent,
            [(b, 4300, 1200), (b, 200, 100), (c, 100, 100), (c, 300, 300)],
            "a longer datagram never joins a run of shorter segments"
        );
        sent.clear();
        let mut send = |_: SocketAddr, dst: SocketAddr, data: &[u8], seg: usize| {
            sent.push((dst, data.len(), seg));
        };
        for _ in 0..5 {
            o.push(a, b, &[0; 10], 2, &mut send);
        }
        o.flush(&mut send);
        assert_eq!(
            sent,
            [(b, 20, 10), (b, 20, 10), (b, 10, 10)],
            "segment limit"
        );
    }
}
