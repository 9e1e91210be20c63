//! A worker's outgoing datagrams, gathered while it drains its viewers and sent at the end of
//! the turn in as few system calls as it can: runs of equal-sized datagrams to one destination
//! (the packets of a video frame) are one message each, segmented by the kernel (UDP GSO),
//! and the messages to all destinations go in one `sendmmsg` per segment size. The datagrams
//! are sent from str0m's own buffers (no copy).
//!
//! The segment size is a setting of the worker's own socket (`UDP_SEGMENT`): a message whose
//! datagrams are all that size but the last (which may be shorter) is cut into them, and a
//! message of one datagram no longer than it goes out whole. So messages are grouped by
//! segment size, a lone datagram joining a group whose size it fits.

use std::collections::HashMap;
use std::io::IoSlice;
use std::net::SocketAddr;

use rustix::net::{MMsgHdr, SendAncillaryBuffer, SendFlags, SocketAddrAny};
use str0m::net::Transmit;

/// Most bytes one segmented message carries (the kernel takes up to 64 KiB of UDP payload).
const MAX_RUN_BYTES: usize = 60_000;
/// Most messages one `sendmmsg` takes (`UIO_MAXIOV`).
const MAX_MESSAGES: usize = 1024;

/// One message: datagrams `first..first + count` to one destination, all `segment` bytes
/// but the last.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Run {
    socket: usize,
    destination: SocketAddr,
    first: usize,
    count: usize,
    bytes: usize,
    segment: usize,
    /// A shorter datagram ended the run (only the last segment may be short).
    closed: bool,
}

/// Datagrams waiting to be sent, in runs.
#[derive(Debug, Default)]
pub struct Batch {
    datagrams: Vec<Transmit>,
    runs: Vec<Run>,
}

/// What a flush did, for the metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Sent {
    pub datagrams: u64,
    pub bytes: u64,
    pub failed: u64,
    pub calls: u64,
}

/// Where a flush sends: a worker's sockets (one per local address), and the segment size
/// each is set to.
pub trait Sockets {
    /// How many sockets there are.
    fn count(&self) -> usize;
    /// Sets socket `socket`'s segment size (0: none).
    fn set_segment(&mut self, socket: usize, segment: u16) -> std::io::Result<()>;
    /// The segment size socket `socket` is set to.
    fn segment(&self, socket: usize) -> u16;
    /// Sends `messages` on socket `socket`; how many went.
    fn send(&mut self, socket: usize, messages: &mut [MMsgHdr<'_>]) -> std::io::Result<usize>;
}

impl Batch {
    /// Adds a datagram to go from the worker's socket `socket`; it joins the last run if it
    /// can (`max_segments`: 1 where the kernel cannot segment).
    pub fn push(&mut self, socket: usize, t: Transmit, max_segments: usize) {
        let len = t.contents.len();
        let destination = t.destination;
        self.datagrams.push(t);
        let index = self.datagrams.len() - 1;
        if let Some(run) = self.runs.last_mut()
            && run.socket == socket
            && run.destination == destination
            && !run.closed
            && run.count < max_segments
            && len <= run.segment
            && run.bytes + len <= MAX_RUN_BYTES
        {
            run.count += 1;
            run.bytes += len;
            run.closed = len < run.segment;
            return;
        }
        self.runs.push(Run {
            socket,
            destination,
            first: index,
            count: 1,
            bytes: len,
            segment: len,
            closed: false,
        });
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.runs.is_empty()
    }

    /// Sends everything and empties the batch.
    pub fn flush(&mut self, sockets: &mut impl Sockets) -> Sent {
        let mut sent = Sent::default();
        let mut order = self.plan(sockets);
        // Consecutive messages of one socket and segment size go in one call.
        let mut i = 0;
        while i < order.len() {
            let (socket, segment) = (order[i].0, order[i].1);
            let mut j = i;
            while j < order.len() && order[j].0 == socket && order[j].1 == segment {
                j += 1;
            }
            let runs: Vec<Run> = order[i..j].iter().map(|o| self.runs[o.2]).collect();
            self.send_group(sockets, socket, segment, &runs, &mut sent);
            i = j;
        }
        order.clear();
        self.runs.clear();
        self.datagrams.clear();
        if self.datagrams.capacity() > 4096 {
            self.datagrams.shrink_to(4096);
        }
        sent
    }

    /// Each run's (socket, segment size it is sent with, run index), in sending order.
    ///
    /// A destination's runs are sent in the order they were pushed: a run's phase is how many
    /// runs to its destination came before it (from any socket), and the phases go out one
    /// after the other (one run per destination in each). Within a phase, by socket, the size the socket is
    /// set to first (no setting needed), then by size; a lone datagram goes with the largest
    /// size of its socket that it fits (0: unsegmented).
    fn plan(&self, sockets: &impl Sockets) -> Vec<(usize, u16, usize)> {
        let current = |socket: usize| match socket < sockets.count() {
            true => sockets.segment(socket),
            false => 0,
        };
        // By destination alone: a viewer sent to from two local sockets in one turn (its ICE
        // pair moved) keeps its order too.
        let mut seen: HashMap<SocketAddr, usize> = HashMap::new();
        let phases: Vec<usize> = self
            .runs
            .iter()
            .map(|r| {
                let n = seen.entry(r.destination).or_default();
                *n += 1;
                *n - 1
            })
            .collect();
        let mut largest: Vec<u16> = Vec::new();
        for r in self.runs.iter().filter(|r| r.count > 1) {
            if largest.len() <= r.socket {
                largest.resize(r.socket + 1, 0);
            }
            largest[r.socket] = largest[r.socket].max(r.segment as u16);
        }
        let mut order: Vec<(usize, usize, u16, usize)> = self
            .runs
            .iter()
            .zip(&phases)
            .enumerate()
            .map(|(i, (r, &phase))| {
                let segment = if r.count > 1 {
                    r.segment as u16
                } else {
                    let now = current(r.socket);
                    let big = largest.get(r.socket).copied().unwrap_or(0);
                    if now as usize >= r.bytes {
                        now
                    } else if big as usize >= r.bytes {
                        big
                    } else {
                        0
                    }
                };
                (phase, r.socket, segment, i)
            })
            .collect();
        order.sort_by_key(|&(phase, socket, segment, i)| {
            (phase, socket, segment != current(socket), segment, i)
        });
        order
            .into_iter()
            .map(|(_, socket, segment, i)| (socket, segment, i))
            .collect()
    }

    fn send_group(
        &self,
        sockets: &mut impl Sockets,
        socket: usize,
        segment: u16,
        runs: &[Run],
        sent: &mut Sent,
    ) {
        let count = |runs: &[Run]| runs.iter().map(|r| r.count as u64).sum::<u64>();
        if socket >= sockets.count() {
            sent.failed += count(runs);
            return;
        }
        if sockets.segment(socket) != segment
            && let Err(e) = sockets.set_segment(socket, segment)
        {
            tracing::warn!(segment, "setting the UDP segment size: {e}");
            sent.failed += count(runs);
            return;
        }
        for chunk in runs.chunks(MAX_MESSAGES) {
            let addrs: Vec<SocketAddrAny> = chunk
                .iter()
                .map(|r| SocketAddrAny::from(r.destination))
                .collect();
            let iovs: Vec<Vec<IoSlice<'_>>> = chunk
                .iter()
                .map(|r| {
                    self.datagrams[r.first..r.first + r.count]
                        .iter()
                        .map(|t| IoSlice::new(&t.contents))
                        .collect()
                })
                .collect();
            let mut controls: Vec<SendAncillaryBuffer<'_, '_, '_>> = chunk
                .iter()
                .map(|_| SendAncillaryBuffer::default())
                .collect();
            let mut messages: Vec<MMsgHdr<'_>> = addrs
                .iter()
                .zip(&iovs)
                .zip(controls.iter_mut())
                .map(|((a, iov), c)| MMsgHdr::new_with_addr(a, iov, c))
                .collect();
            let mut at = 0;
            while at < messages.len() {
                sent.calls += 1;
                match sockets.send(socket, &mut messages[at..]) {
                    Ok(0) => {
                        sent.failed += count(&chunk[at..]);
                        break;
                    }
                    Ok(n) => {
                        for r in &chunk[at..at + n] {
                            sent.datagrams += r.count as u64;
                            sent.bytes += r.bytes as u64;
                        }
                        at += n;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        // The socket's send buffer is full: UDP may drop.
                        sent.failed += count(&chunk[at..]);
                        break;
                    }
                    Err(e) => {
                        // The first message was refused (an unreachable destination, say):
                        // it alone is lost.
                        tracing::trace!(destination = %chunk[at].destination, "udp send: {e}");
                        sent.failed += chunk[at].count as u64;
                        at += 1;
                    }
                }
            }
        }
    }
}

/// A worker's sockets: tokio's, read by the worker's runtime; sent on directly.
#[derive(Debug)]
pub struct WorkerSockets {
    pub sockets: Vec<tokio::net::UdpSocket>,
    segments: Vec<u16>,
}

impl WorkerSockets {
    pub fn new(sockets: Vec<tokio::net::UdpSocket>) -> Self {
        let segments = vec![0; sockets.len()];
        Self { sockets, segments }
    }
}

impl Sockets for WorkerSockets {
    fn count(&self) -> usize {
        self.sockets.len()
    }

    fn set_segment(&mut self, socket: usize, segment: u16) -> std::io::Result<()> {
        nix::sys::socket::setsockopt(
            &self.sockets[socket],
            nix::sys::socket::sockopt::UdpGsoSegment,
            &i32::from(segment),
        )?;
        self.segments[socket] = segment;
        Ok(())
    }

    fn segment(&self, socket: usize) -> u16 {
        self.segments[socket]
    }

    fn send(&mut self, socket: usize, messages: &mut [MMsgHdr<'_>]) -> std::io::Result<usize> {
        Ok(rustix::net::sendmmsg(
            &self.sockets[socket],
            messages,
            SendFlags::DONTWAIT,
        )?)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use str0m::net::Protocol;

    use super::*;

    fn transmit(to: SocketAddr, len: usize, fill: u8) -> Transmit {
        Transmit {
            proto: Protocol::Udp,
            source: "127.0.0.1:1".parse().unwrap(),
            destination: to,
            contents: vec![fill; len].into(),
        }
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .unwrap()
    }

    /// One worker socket on 127.0.0.1 (inside a runtime).
    fn loopback_sockets() -> WorkerSockets {
        let sender = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        sender.set_nonblocking(true).unwrap();
        WorkerSockets::new(vec![tokio::net::UdpSocket::from_std(sender).unwrap()])
    }

    /// Real sockets on loopback: what the receivers get is what was pushed, datagram for
    /// datagram, in as few calls as the plan says.
    #[test]
    fn runs_to_many_destinations_arrive_whole_in_few_calls() {
        let rt = runtime();
        let _g = rt.enter();
        let mut sockets = loopback_sockets();
        let receivers: Vec<std::net::UdpSocket> = (0..3)
            .map(|_| {
                let r = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
                r.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                r
            })
            .collect();
        let to: Vec<SocketAddr> = receivers.iter().map(|r| r.local_addr().unwrap()).collect();
        let mut batch = Batch::default();
        let mut want: Vec<Vec<(usize, u8)>> = vec![Vec::new(); 3];
        let mut push = |b: &mut Batch, i: usize, len: usize, fill: u8| {
            b.push(0, transmit(to[i], len, fill), 64);
            want[i].push((len, fill));
        };
        for (i, d) in to.iter().enumerate() {
            let _ = d;
            // A frame: full packets and a short last one; then an audio packet.
            for k in 0..4 {
                push(&mut batch, i, 1200, 10 * i as u8 + k);
            }
            push(&mut batch, i, 700, 10 * i as u8 + 4);
            push(&mut batch, i, 150, 10 * i as u8 + 5);
        }
        // A lone datagram longer than every segment size: unsegmented.
        push(&mut batch, 2, 1300, 99);
        let sent = batch.flush(&mut sockets);
        assert_eq!(sent.datagrams, 19);
        assert_eq!(sent.failed, 0);
        assert!(
            sent.calls <= 2,
            "one call for the 1200-byte group with the audio, one unsegmented: {sent:?}"
        );
        for (i, r) in receivers.iter().enumerate() {
            let mut got = Vec::new();
            let mut buf = [0u8; 2048];
            while got.len() < want[i].len() {
                let n = r.recv(&mut buf).expect("every datagram arrives");
                assert!(buf[..n].iter().all(|b| *b == buf[0]), "a datagram is whole");
                got.push((n, buf[0]));
            }
            got.sort_by_key(|g| g.1);
            let mut w = want[i].clone();
            w.sort_by_key(|g| g.1);
            assert_eq!(got, w, "receiver {i}");
        }
        assert!(batch.is_empty());
    }

    /// A frame split into packets of two sizes (1276 then 1275 bytes, as aiortc and others
    /// packetize) makes two runs per destination; however the runs are grouped into calls,
    /// each receiver gets its datagrams in the order they were pushed (a reordered packet is
    /// reported lost, and may be NACKed and resent for nothing).
    #[test]
    fn each_destination_gets_its_datagrams_in_order() {
        let rt = runtime();
        let _g = rt.enter();
        let mut sockets = loopback_sockets();
        let receivers: Vec<std::net::UdpSocket> = (0..3)
            .map(|_| {
                let r = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
                r.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                r
            })
            .collect();
        let to: Vec<SocketAddr> = receivers.iter().map(|r| r.local_addr().unwrap()).collect();
        let mut batch = Batch::default();
        let mut want: Vec<Vec<(usize, u8)>> = vec![Vec::new(); 3];
        for frame in 0..2u8 {
            for (i, d) in to.iter().enumerate() {
                let sizes = [25, 1276, 1276, 1276, 1275, 1275, 160];
                for (k, len) in sizes.into_iter().enumerate() {
                    let fill = 100 * frame + 10 * i as u8 + k as u8;
                    batch.push(0, transmit(*d, len, fill), 64);
                    want[i].push((len, fill));
                }
            }
        }
        let sent = batch.flush(&mut sockets);
        assert_eq!((sent.datagrams, sent.failed), (42, 0), "{sent:?}");
        for (i, r) in receivers.iter().enumerate() {
            let mut got = Vec::new();
            let mut buf = [0u8; 2048];
            while got.len() < want[i].len() {
                let n = r.recv(&mut buf).expect("every datagram arrives");
                got.push((n, buf[0]));
            }
            assert_eq!(got, want[i], "receiver {i}: in the order pushed");
        }
    }

    #[test]
    fn an_unreachable_destination_loses_only_its_own_datagrams() {
        let rt = runtime();
        let _g = rt.enter();
        let mut sockets = loopback_sockets();
        let ok = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        ok.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut batch = Batch::default();
        // An IPv6 destination from an IPv4 socket is refused by the kernel.
        let bad: SocketAddr = "[::1]:9".parse().unwrap();
        batch.push(0, transmit(bad, 100, 1), 64);
        batch.push(0, transmit(ok.local_addr().unwrap(), 100, 2), 64);
        let sent = batch.flush(&mut sockets);
        assert_eq!((sent.datagrams, sent.failed), (1, 1), "{sent:?}");
        let mut buf = [0u8; 256];
        assert_eq!(ok.recv(&mut buf).unwrap(), 100);
    }
}
