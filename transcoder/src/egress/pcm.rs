//! Raw audio: the session's Opus decoded to PCM s16le at the rate and channel count asked, in
//! 20 ms pieces on stdout, for the gateway to send on over a WebSocket (a transcription
//! service, say).
//!
//! Owns decoding and converting; the gateway owns the connection and its events. Audio that
//! does not come (a paused session, a publisher gone) is not filled with silence: the stream
//! carries what was heard.

use std::io::Write;

use ffmpeg_next::{self as ff, Packet, codec, decoder, filter, frame};

use super::frames::Frame;
use super::probe::Probed;

/// An open PCM output.
pub struct Pcm {
    decoder: decoder::Audio,
    graph: Option<filter::Graph>,
    rate: u32,
    channels: u32,
    out: std::io::Stdout,
    seconds: f64,
}

impl std::fmt::Debug for Pcm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pcm")
            .field("rate", &self.rate)
            .field("channels", &self.channels)
            .finish_non_exhaustive()
    }
}

fn err(what: &str) -> impl Fn(ff::Error) -> String + '_ {
    move |e| format!("{what}: {e}")
}

impl Pcm {
    pub fn new(opus: &Probed, rate: u32, channels: u32) -> Result<Self, String> {
        let decoder = codec::context::Context::from_parameters(opus.parameters.clone())
            .and_then(|c| c.decoder().audio())
            .map_err(err("opening the Opus decoder"))?;
        Ok(Self {
            decoder,
            graph: None,
            rate,
            channels,
            out: std::io::stdout(),
            seconds: 0.0,
        })
    }

    pub fn write(&mut self, frame: &Frame) -> Result<(), String> {
        let mut packet = Packet::copy(&frame.data);
        packet.set_pts(Some(frame.pts));
        if self.decoder.send_packet(&packet).is_err() {
            return Ok(());
        }
        self.seconds = self.seconds.max(frame.pts as f64 / 48_000.0);
        let mut decoded = frame::Audio::empty();
        while self.decoder.receive_frame(&mut decoded).is_ok() {
            decoded.set_pts(Some(frame.pts));
            if self.graph.is_none() {
                self.graph = Some(self.build(&decoded)?);
            }
            let graph = self.graph.as_mut().expect("built above");
            graph
                .get("in")
                .expect("graph has its source")
                .source()
                .add(&decoded)
                .map_err(err("audio filter"))?;
            let mut piece = frame::Audio::empty();
            while graph
                .get("out")
                .expect("graph has its sink")
                .sink()
                .frame(&mut piece)
                .is_ok()
            {
                // Packed s16: the samples of every channel, interleaved, in plane 0.
                let len = piece.samples() * self.channels as usize * 2;
                let data = &piece.data(0)[..len];
                let mut out = self.out.lock();
                out.write_all(data)
                    .and_then(|()| out.flush())
                    .map_err(|e| format!("writing PCM: {e}"))?;
            }
        }
        Ok(())
    }

    fn build(&self, first: &frame::Audio) -> Result<filter::Graph, String> {
        let layout = match first.channel_layout().bits() {
            0 => format!("{}c", first.channels()),
            bits => format!("0x{bits:x}"),
        };
        let args = format!(
            "time_base=1/48000:sample_rate={}:sample_fmt={}:channel_layout={layout}",
            first.rate(),
            first.format().name()
        );
        let out_layout = if self.channels == 1 { "mono" } else { "stereo" };
        let spec = format!(
            "aresample={rate},aformat=sample_fmts=s16:sample_rates={rate}:channel_layouts={out_layout},\
             asetnsamples=n={n}:p=0",
            rate = self.rate,
            n = self.rate / 50
        );
        let mut graph = filter::Graph::new();
        let build = |graph: &mut filter::Graph| -> Result<(), ff::Error> {
            graph.add(
                &filter::find("abuffer").ok_or(ff::Error::FilterNotFound)?,
                "in",
                &args,
            )?;
            graph.add(
                &filter::find("abuffersink").ok_or(ff::Error::FilterNotFound)?,
                "out",
                "",
            )?;
            graph.output("in", 0)?.input("out", 0)?.parse(&spec)?;
            graph.validate()
        };
        build(&mut graph).map_err(err("audio filter"))?;
        Ok(graph)
    }

    pub fn seconds(&self) -> f64 {
        self.seconds
    }
}
