//! `ring-dump PATH [--json] [--follow]`: prints every record still in a ring, then a summary.
//!
//! What tcpdump is to a socket: point it at a ring file or a live process's memfd
//! (`/proc/<pid>/fd/<n>`) to see the RTP a transcoder produced. It only reads.

use std::collections::BTreeMap;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use rtp_ring::{Flags, RecordMeta, Ring, RtpHeaderView};
use serde::Serialize;

/// Print the records of a Wisp RTP ring (a file, or /proc/<pid>/fd/<n> of a live memfd).
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Ring to read: a ring file (e.g. /dev/shm/x) or /proc/<pid>/fd/<n>.
    path: PathBuf,
    /// One JSON object per record on stdout (summary on stderr).
    #[arg(long)]
    json: bool,
    /// After the records already there, keep printing new ones until the writer exits.
    #[arg(long)]
    follow: bool,
}

/// One record as `--json` prints it.
#[derive(Serialize)]
struct JsonRecord {
    index: u64,
    track: u8,
    keyframe: bool,
    end_of_frame: bool,
    seq: Option<u16>,
    timestamp: Option<u32>,
    marker: Option<bool>,
    payload_type: Option<u8>,
    ssrc: Option<u32>,
    len: usize,
    capture_us: u64,
}

/// Per-track totals for the summary.
#[derive(Default, Serialize)]
struct TrackSummary {
    records: u64,
    bytes: u64,
    /// Packets with the RTP marker bit (for video: complete frames).
    markers: u64,
    end_of_frame: u64,
    keyframes: u64,
    payload_types: Vec<u8>,
    first_timestamp: Option<u32>,
    last_timestamp: Option<u32>,
    /// Sequence numbers that did not follow the previous one (+1, wrapping).
    seq_gaps: u64,
    #[serde(skip)]
    last_seq: Option<u16>,
}

#[derive(Default, Serialize)]
struct Summary {
    records: u64,
    overruns: u64,
    lost: u64,
    not_rtp: u64,
    tracks: BTreeMap<u8, TrackSummary>,
}

impl Summary {
    fn add(&mut self, meta: &RecordMeta, packet: &[u8], rtp: Option<RtpHeaderView>) {
        self.records += 1;
        let t = self.tracks.entry(meta.track).or_default();
        t.records += 1;
        t.bytes += packet.len() as u64;
        t.end_of_frame += meta.flags.contains(Flags::END_OF_FRAME) as u64;
        t.keyframes += meta.flags.contains(Flags::KEYFRAME) as u64;
        let Some(rtp) = rtp else {
            self.not_rtp += 1;
            return;
        };
        t.markers += rtp.marker as u64;
        if !t.payload_types.contains(&rtp.payload_type) {
            t.payload_types.push(rtp.payload_type);
        }
        t.first_timestamp.get_or_insert(rtp.timestamp);
        t.last_timestamp = Some(rtp.timestamp);
        if let Some(last) = t.last_seq {
            t.seq_gaps += (rtp.seq != last.wrapping_add(1)) as u64;
        }
        t.last_seq = Some(rtp.seq);
    }

    fn print_text(&self, out: &mut impl Write) -> std::io::Result<()> {
        writeln!(
            out,
            "summary: {} records, {} overruns ({} records lost), {} not RTP",
            self.records, self.overruns, self.lost, self.not_rtp
        )?;
        for (track, t) in &self.tracks {
            writeln!(
                out,
                "  track {track}: {} records, {} bytes, {} marker bits, {} end-of-frame, \
                 {} keyframe starts, pt {:?}, ts {:?}..{:?}, {} seq gaps",
                t.records,
                t.bytes,
                t.markers,
                t.end_of_frame,
                t.keyframes,
                t.payload_types,
                t.first_timestamp,
                t.last_timestamp,
                t.seq_gaps
            )?;
        }
        Ok(())
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let ring = match Ring::open(&args.path) {
        Ok(ring) => ring,
        Err(e) => {
            eprintln!("ring-dump: {e}");
            return ExitCode::from(2);
        }
    };
    match dump(&args, &ring) {
        Ok(()) => ExitCode::SUCCESS,
        // A closed pipe (`ring-dump ... | head`) is the reader's choice, not a failure.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ring-dump: {e}");
            ExitCode::FAILURE
        }
    }
}

fn dump(args: &Args, ring: &Ring) -> std::io::Result<()> {
    let g = ring.geometry();
    eprintln!(
        "ring-dump: {} slots of {} bytes, {} records written, writer pid {}{}",
        g.slot_count,
        g.slot_size,
        ring.write_index(),
        ring.writer_pid().map_or("none".into(), |p| p.to_string()),
        if args.follow && !ring.has_wakeup() {
            " (no access to the writer's eventfd: polling)"
        } else {
            ""
        }
    );
    let mut out = BufWriter::new(std::io::stdout().lock());
    let mut reader = ring.reader_from_oldest();
    let mut summary = Summary::default();
    let mut packet = Vec::new();
    loop {
        match reader.try_next_into(&mut packet) {
            Ok(Some(meta)) => {
                let rtp = RtpHeaderView::parse(&packet);
                print_record(&mut out, args.json, &meta, &packet, rtp)?;
                summary.add(&meta, &packet, rtp);
            }
            Err(overrun) => {
                summary.overruns += 1;
                summary.lost += overrun.lost;
                if !args.json {
                    writeln!(out, "-- overrun: {} records lost --", overrun.lost)?;
                }
            }
            Ok(None) if args.follow && writer_alive(ring) => {
                out.flush()?;
                reader.wait(Duration::from_millis(200))?;
            }
            Ok(None) => break,
        }
    }
    out.flush()?;
    if args.json {
        let text = serde_json::to_string(&summary).map_err(std::io::Error::other)?;
        eprintln!("{text}");
    } else {
        summary.print_text(&mut out)?;
        out.flush()?;
    }
    Ok(())
}

fn print_record(
    out: &mut impl Write,
    json: bool,
    meta: &RecordMeta,
    packet: &[u8],
    rtp: Option<RtpHeaderView>,
) -> std::io::Result<()> {
    let keyframe = meta.flags.contains(Flags::KEYFRAME);
    let end_of_frame = meta.flags.contains(Flags::END_OF_FRAME);
    if json {
        let rec = JsonRecord {
            index: meta.index,
            track: meta.track,
            keyframe,
            end_of_frame,
            seq: rtp.map(|r| r.seq),
            timestamp: rtp.map(|r| r.timestamp),
            marker: rtp.map(|r| r.marker),
            payload_type: rtp.map(|r| r.payload_type),
            ssrc: rtp.map(|r| r.ssrc),
            len: packet.len(),
            capture_us: meta.capture_us,
        };
        let line = serde_json::to_string(&rec).map_err(std::io::Error::other)?;
        return writeln!(out, "{line}");
    }
    let flags = match (keyframe, end_of_frame) {
        (true, true) => "KEY,EOF",
        (true, false) => "KEY    ",
        (false, true) => "    EOF",
        (false, false) => "       ",
    };
    match rtp {
        Some(r) => writeln!(
            out,
            "#{:<8} track {} {flags} pt {:>3} seq {:>5} ts {:>10} {} ssrc {:08x} len {:>4} cap {}",
            meta.index,
            meta.track,
            r.payload_type,
            r.seq,
            r.timestamp,
            if r.marker { "M" } else { "-" },
            r.ssrc,
            packet.len(),
            meta.capture_us
        ),
        None => writeln!(
            out,
            "#{:<8} track {} {flags} (not RTP) len {:>4} cap {}",
            meta.index,
            meta.track,
            packet.len(),
            meta.capture_us
        ),
    }
}

/// Whether the ring's writer process still runs (follow mode ends when it is gone).
fn writer_alive(ring: &Ring) -> bool {
    ring.writer_pid()
        .and_then(|pid| rustix::process::Pid::from_raw(pid as i32))
        .is_some_and(|pid| rustix::process::test_kill_process(pid).is_ok())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn every_argument_says_what_it_is_for_in_help() {
        let cmd = super::Args::command();
        let missing: Vec<_> = cmd
            .get_arguments()
            .filter(|a| !a.is_hide_set())
            .filter(|a| a.get_help().is_none_or(|h| h.to_string().trim().is_empty()))
            .map(|a| a.get_id().to_string())
            .collect();
        assert!(missing.is_empty(), "no --help text: {missing:?}");
    }
}
