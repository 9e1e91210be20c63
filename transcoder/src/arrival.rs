//! When each byte of a live input reached the gateway (`--timed-input`).
//!
//! The gateway writes what an RTMP or SRT publisher sends into the FIFO this process reads as
//! records: a 12-byte header (the payload's length, u32 LE, then the monotonic µs at which the
//! gateway read it from the publisher's socket, u64 LE) and the payload. A thread here strips
//! the headers, notes where each payload ends in the bare stream and when it arrived, and
//! passes the bare stream on through a pipe that libavformat reads as `pipe:N`. A demuxed
//! packet's position in that stream (`AVPacket.pos`, carried by the decoder and the filters as
//! the frame's `pkt_pos`) then says when its bytes reached the gateway: the capture time its
//! RTP records get, which the gateway's ingest latency is measured from.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::os::fd::IntoRawFd;
use std::sync::{Arc, Mutex};

/// Records of the header.
const HEADER: usize = 12;
/// A record larger than this is not the gateway's: the input is refused as malformed.
const MAX_RECORD: usize = 64 << 20;
/// Arrivals kept: far more than the packets between a packet's demuxing and its output (one
/// record holds at least one FLV tag or SRT message; a few seconds of a stream).
const KEPT: usize = 8192;

/// Where payloads end in the bare stream, and when they arrived (monotonic µs), oldest first.
#[derive(Debug, Clone, Default)]
pub struct Arrivals(Arc<Mutex<Log>>);

#[derive(Debug, Default)]
struct Log {
    /// `(end, arrived_us)` of each kept payload.
    kept: VecDeque<(u64, u64)>,
    /// Where the oldest kept payload starts (the end of the last one forgotten).
    forgotten_end: u64,
}

impl Arrivals {
    fn note(&self, end: u64, arrived_us: u64) {
        let mut log = self.0.lock().expect("never poisoned");
        if log.kept.len() == KEPT
            && let Some((end, _)) = log.kept.pop_front()
        {
            log.forgotten_end = end;
        }
        log.kept.push_back((end, arrived_us));
    }

    /// When the last byte of a packet demuxed at `pos` with `size` bytes of payload arrived:
    /// that of byte `pos + size - 1`, which is inside the packet's last record (exact for FLV,
    /// whose tags come whole in one record; for MPEG-TS, whose headers the payload size does
    /// not count, a record or two before the last of a large frame).
    pub fn of_packet(&self, pos: i64, size: usize) -> Option<u64> {
        if pos < 0 {
            return None;
        }
        self.of(pos.checked_add(size.saturating_sub(1) as i64)?)
    }

    /// When the byte at `pos` of the bare stream arrived: `None` when `pos` is unknown (< 0),
    /// forgotten, or not read yet.
    pub fn of(&self, pos: i64) -> Option<u64> {
        let pos = u64::try_from(pos).ok()?;
        let log = self.0.lock().expect("never poisoned");
        if pos < log.forgotten_end {
            return None;
        }
        // The payload that holds `pos` is the first to end after it.
        let i = log.kept.partition_point(|(end, _)| *end <= pos);
        log.kept.get(i).map(|(_, at)| *at)
    }
}

/// Reads timed records from `path` on a thread of its own, and returns the URL libavformat
/// opens for the bare stream, and the arrivals it notes. The bare stream ends (EOF) when the
/// records do; a malformed record ends it too, after a log line.
pub fn unframe(path: &str) -> std::io::Result<(String, Arrivals)> {
    let input = std::fs::File::open(path)?;
    let (reader, writer) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
    let writer = std::fs::File::from(writer);
    let arrivals = Arrivals::default();
    let noted = arrivals.clone();
    std::thread::Builder::new()
        .name("timed-input".into())
        .spawn(move || {
            if let Err(e) = pass_on(input, writer, &noted) {
                tracing::warn!("timed input: {e}; the stream ends here");
            }
        })?;
    // Owned by libavformat's pipe protocol from here on (it does not close it; the process
    // holds one input for its life).
    let fd = reader.into_raw_fd();
    Ok((format!("pipe:{fd}"), arrivals))
}

/// Strips the headers of `input`'s records into `out`, noting each payload's end and arrival.
fn pass_on(mut input: impl Read, mut out: impl Write, arrivals: &Arrivals) -> std::io::Result<()> {
    let mut header = [0u8; HEADER];
    let mut payload = Vec::new();
    let mut end = 0u64;
    loop {
        match input.read_exact(&mut header) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        }
        let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as usize;
        let arrived_us = u64::from_le_bytes(header[4..].try_into().expect("8 bytes"));
        if len > MAX_RECORD {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("a record of {len} bytes (at most {MAX_RECORD})"),
            ));
        }
        payload.resize(len, 0);
        input.read_exact(&mut payload)?;
        end += len as u64;
        // Noted before the demuxer can see the bytes.
        arrivals.note(end, arrived_us);
        out.write_all(&payload)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(payload: &[u8], at: u64) -> Vec<u8> {
        let mut r = (payload.len() as u32).to_le_bytes().to_vec();
        r.extend_from_slice(&at.to_le_bytes());
        r.extend_from_slice(payload);
        r
    }

    #[test]
    fn strips_headers_and_says_when_each_byte_arrived() {
        let mut input = record(b"FLV", 100);
        input.extend(record(b"", 150));
        input.extend(record(b"tag-one", 200));
        input.extend(record(b"two", 300));
        let arrivals = Arrivals::default();
        let mut out = Vec::new();
        pass_on(&input[..], &mut out, &arrivals).unwrap();
        assert_eq!(out, b"FLVtag-onetwo");
        assert_eq!(arrivals.of(0), Some(100));
        assert_eq!(arrivals.of(2), Some(100));
        assert_eq!(arrivals.of(3), Some(200));
        assert_eq!(arrivals.of(9), Some(200));
        assert_eq!(arrivals.of(10), Some(300));
        assert_eq!(arrivals.of(13), None, "past the end");
        assert_eq!(arrivals.of(-1), None, "unknown position");
        // A packet is timed by its last byte: one starting in the first record and ending in
        // the third arrived with the third.
        assert_eq!(arrivals.of_packet(2, 9), Some(300));
        assert_eq!(arrivals.of_packet(3, 7), Some(200));
        assert_eq!(arrivals.of_packet(3, 0), Some(200));
        assert_eq!(arrivals.of_packet(-1, 10), None);
    }

    #[test]
    fn a_cut_or_oversized_record_ends_the_stream() {
        let mut input = record(b"whole", 1);
        input.extend(&record(b"cut short", 2)[..15]);
        let mut out = Vec::new();
        let err = pass_on(&input[..], &mut out, &Arrivals::default()).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof);
        assert_eq!(out, b"whole");

        let huge = [0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0];
        let err = pass_on(&huge[..], Vec::new(), &Arrivals::default()).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
    }

    #[test]
    fn forgets_the_oldest_beyond_what_it_keeps() {
        let arrivals = Arrivals::default();
        for i in 0..(KEPT as u64 + 10) {
            arrivals.note((i + 1) * 10, i);
        }
        assert_eq!(arrivals.of(5), None, "dropped");
        assert_eq!(
            arrivals.of(10 * (KEPT as i64 + 9) + 5),
            Some(KEPT as u64 + 9)
        );
    }
}
