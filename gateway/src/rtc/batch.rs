//! A worker's outgoing datagrams, gathered while it drains its viewers and sent at the end of
//! the turn: runs of equal-sized datagrams to one destination (the packets of a video frame)
//! leave as one segmented send (UDP GSO) where the kernel has it.

use std::net::SocketAddr;

use crate::udp::RtcPort;

/// Most bytes one segmented send carries (the kernel takes up to 64 KiB).
const MAX_RUN_BYTES: usize = 60_000;

/// One run: datagrams to one destination, all `segment` bytes but the last.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Run {
    source: SocketAddr,
    destination: SocketAddr,
    start: usize,
    len: usize,
    segment: usize,
    count: usize,
    /// A shorter datagram ended the run (only the last segment may be short).
    closed: bool,
}

/// Datagrams waiting to be sent, in runs.
#[derive(Debug, Default)]
pub struct Batch {
    buf: Vec<u8>,
    runs: Vec<Run>,
}

impl Batch {
    /// Adds a datagram; it joins the last run if it can.
    pub fn push(
        &mut self,
        source: SocketAddr,
        destination: SocketAddr,
        data: &[u8],
        max_segments: usize,
    ) {
        let start = self.buf.len();
        self.buf.extend_from_slice(data);
        if let Some(run) = self.runs.last_mut()
            && run.source == source
            && run.destination == destination
            && !run.closed
            && run.count < max_segments
            && data.len() <= run.segment
            && run.len + data.len() <= MAX_RUN_BYTES
        {
            run.len += data.len();
            run.count += 1;
            run.closed = data.len() < run.segment;
            return;
        }
        self.runs.push(Run {
            source,
            destination,
            start,
            len: data.len(),
            segment: data.len(),
            count: 1,
            closed: false,
        });
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.runs.is_empty()
    }

    /// Hands every run to `send` (source, destination, bytes, segment size), and empties the
    /// batch (keeping its capacity).
    pub fn flush(&mut self, send: &mut impl FnMut(SocketAddr, SocketAddr, &[u8], usize)) {
        for r in &self.runs {
            send(
                r.source,
                r.destination,
                &self.buf[r.start..r.start + r.len],
                r.segment,
            );
        }
        self.runs.clear();
        self.buf.clear();
        // A burst (a keyframe to every viewer) is not kept allocated for the idle times.
        if self.buf.capacity() > 4 * MAX_RUN_BYTES {
            self.buf.shrink_to(4 * MAX_RUN_BYTES);
        }
    }

    /// Sends everything through `port`.
    pub fn send(&mut self, port: &RtcPort) {
        self.flush(&mut |src, dst, data, seg| port.send_segments(src, dst, data, seg));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_datagrams_to_one_destination_leave_together() {
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:2".parse().unwrap();
        let c: SocketAddr = "127.0.0.1:3".parse().unwrap();
        let mut batch = Batch::default();
        // A frame to b: three full packets and a short last one; audio; the frame to c.
        for len in [1200, 1200, 1200, 700] {
            batch.push(a, b, &vec![1; len], 64);
        }
        batch.push(a, b, &[2; 100], 64);
        batch.push(a, b, &[2; 100], 64);
        for len in [1200, 1200, 700] {
            batch.push(a, c, &vec![3; len], 64);
        }
        batch.push(a, c, &[4; 300], 64);
        let mut sent: Vec<(SocketAddr, usize, usize, u8)> = Vec::new();
        batch.flush(&mut |_, dst, data, seg| sent.push((dst, data.len(), seg, data[0])));
        assert_eq!(
            sent,
            [
                (b, 4300, 1200, 1),
                (b, 200, 100, 2),
                (c, 3100, 1200, 3),
                (c, 300, 300, 4)
            ],
            "a datagram after a short one, or longer than the run's, starts a new run"
        );
        assert!(batch.is_empty());
        for _ in 0..5 {
            batch.push(a, b, &[0; 10], 2);
        }
        sent.clear();
        batch.flush(&mut |_, dst, data, seg| sent.push((dst, data.len(), seg, data[0])));
        assert_eq!(
            sent,
            [(b, 20, 10, 0), (b, 20, 10, 0), (b, 10, 10, 0)],
            "at most the kernel's segment count per send"
        );
    }
}
