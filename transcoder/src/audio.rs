//! Decoded audio → the selected channels as stereo, 48 kHz, 20 ms frames → Opus.
//!
//! Owns the audio filter graph (channel selection by `pan`, resampling, framing) and the Opus
//! encoder. Which input the audio comes from is the player's business (`player.rs`).

use ff::{
    ChannelLayout, Dictionary, Rational as FfRational, codec, encoder, filter, format, frame,
};
use ffmpeg_next as ff;

use crate::options::ChannelSel;
use crate::rtp::RtpTrack;
use crate::source::{Source, SourceError};

/// Samples per Opus frame: 20 ms at 48 kHz.
pub const FRAME_SAMPLES: usize = 960;

/// Frame properties a graph was built for; a change rebuilds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct InputShape {
    rate: u32,
    format: format::Sample,
    channels: u32,
    layout: u64,
}

impl InputShape {
    fn of(frame: &frame::Audio) -> Self {
        Self {
            rate: frame.rate(),
            format: frame.format(),
            channels: frame.channels() as u32,
            layout: frame.channel_layout().bits(),
        }
    }
}

/// Turns decoded audio of any layout into stereo 48 kHz s16 frames of 960 samples.
pub struct AudioFilter {
    graph: Option<(filter::Graph, InputShape)>,
    channels: ChannelSel,
}

impl std::fmt::Debug for AudioFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AudioFilter({:?})", self.channels)
    }
}

impl AudioFilter {
    pub fn new(channels: ChannelSel) -> Self {
        Self {
            graph: None,
            channels,
        }
    }

    /// Checks a selection against a source of `source_channels` and switches to it.
    pub fn select(&mut self, channels: ChannelSel, source_channels: u32) -> Result<(), String> {
        channels.pan_filter(source_channels)?;
        self.channels = channels;
        self.graph = None;
        Ok(())
    }

    pub fn channels(&self) -> &ChannelSel {
        &self.channels
    }

    /// Drops buffered samples (after a seek or a source switch).
    pub fn reset(&mut self) {
        self.graph = None;
    }

    /// Feeds one decoded frame (pts in µs).
    pub fn push(&mut self, frame: &frame::Audio) -> Result<(), String> {
        let shape = InputShape::of(frame);
        if self.graph.as_ref().is_none_or(|(_, s)| *s != shape) {
            self.graph = Some((self.build(shape)?, shape));
        }
        let (graph, _) = self.graph.as_mut().expect("built above");
        graph
            .get("in")
            .expect("graph has its source")
            .source()
            .add(frame)
            .map_err(|e| e.to_string())
    }

    /// The next 960-sample stereo frame; its pts is in samples at 48 kHz from the media start.
    pub fn pull(&mut self, out: &mut frame::Audio) -> bool {
        let Some((graph, _)) = self.graph.as_mut() else {
            return false;
        };
        graph
            .get("out")
            .expect("graph has its sink")
            .sink()
            .frame(out)
            .is_ok()
    }

    fn build(&self, shape: InputShape) -> Result<filter::Graph, String> {
        let pan = self.channels.pan_filter(shape.channels)?;
        let spec = format!(
            "{pan},aresample=48000,aformat=sample_fmts=s16:sample_rates=48000:channel_layouts=stereo,\
             asetnsamples=n={FRAME_SAMPLES}:p=1"
        );
        filter_graph(shape, "1/1000000", &spec)
    }
}

/// A filter graph from frames of `shape` (timestamps in `time_base`) through `spec`, between
/// an `in` source and an `out` sink.
fn filter_graph(shape: InputShape, time_base: &str, spec: &str) -> Result<filter::Graph, String> {
    let build = || -> Result<filter::Graph, ff::Error> {
        let mut graph = filter::Graph::new();
        let layout = if shape.layout != 0 {
            format!("0x{:x}", shape.layout)
        } else {
            format!("{}c", shape.channels)
        };
        let args = format!(
            "time_base={time_base}:sample_rate={}:sample_fmt={}:channel_layout={layout}",
            shape.rate,
            shape.format.name()
        );
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
        graph.output("in", 0)?.input("out", 0)?.parse(spec)?;
        graph.validate()?;
        Ok(graph)
    };
    build().map_err(|e| format!("audio filter: {e}"))
}

/// A filter graph from frames like `first` (timestamps in 1/48000 s) through `spec`: the
/// egress's conversions of decoded Opus.
pub(crate) fn graph_for(first: &frame::Audio, spec: &str) -> Result<filter::Graph, String> {
    filter_graph(InputShape::of(first), "1/48000", spec)
}

/// An encoder of 48 kHz stereo in `sample` format, time base 1/48000, not opened yet: Opus
/// for viewers, AAC for HLS and restreams, and the Opus whose header probing needs.
pub(crate) fn stereo_48k_encoder(
    codec: ff::Codec,
    sample: format::Sample,
) -> Result<ff::codec::encoder::audio::Audio, String> {
    let mut ctx = codec::Context::new_with_codec(codec)
        .encoder()
        .audio()
        .map_err(|e| e.to_string())?;
    ctx.set_rate(48_000);
    ctx.set_channel_layout(ChannelLayout::STEREO);
    ctx.set_format(sample);
    ctx.set_time_base(FfRational::new(1, 48_000));
    Ok(ctx)
}

/// The audio path of a session: which input, filter, encoder and RTP track, with lookahead.
pub struct AudioChain {
    pub filter: AudioFilter,
    pub encoder: OpusEncoder,
    pub rtp: RtpTrack,
    /// Which input the audio comes from.
    pub input: usize,
    pub source_done: bool,
    pub drop_before_t: i64,
    pub ahead: Option<(frame::Audio, i64)>,
    pub scratch: frame::Audio,
    /// Next allowed 48 kHz output timestamp (no overlap after a segment change).
    pub next_ts: i64,
}

impl std::fmt::Debug for AudioChain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "AudioChain(input {}, {:?})",
            self.input,
            self.filter.channels()
        )
    }
}

impl AudioChain {
    /// Media time (ticks, see timeline.rs) of the next 20 ms frame (decoding and filtering from `source`, which must
    /// be input `self.input`), or `None` at the end or at `end_t`. The frame waits in `ahead`.
    pub fn peek(
        &mut self,
        source: &mut Source,
        end_t: Option<i64>,
    ) -> Result<Option<i64>, SourceError> {
        loop {
            if let Some((_, t)) = &self.ahead {
                return Ok(if end_t.is_some_and(|e| *t >= e) {
                    None
                } else {
                    Some(*t)
                });
            }
            let mut out = frame::Audio::empty();
            if self.filter.pull(&mut out) {
                // Sink timestamps count 48 kHz samples; 30 ticks each.
                let t = out.pts().unwrap_or(0) * crate::timeline::TICKS_PER_SAMPLE;
                if t >= self.drop_before_t && out.samples() == FRAME_SAMPLES {
                    self.ahead = Some((out, t));
                }
                continue;
            }
            if self.source_done {
                return Ok(None);
            }
            if source.next_audio(&mut self.scratch)? {
                if let Err(e) = self.filter.push(&self.scratch) {
                    tracing::warn!("audio frame dropped: {e}");
                }
            } else {
                self.source_done = true;
            }
        }
    }

    /// Starts over after the source was repositioned: frames before `from_t` (ticks) are dropped.
    pub fn restart_at(&mut self, from_t: i64) {
        self.filter.reset();
        self.source_done = false;
        self.drop_before_t = from_t;
        self.ahead = None;
    }
}

/// Opus at 48 kHz stereo, 20 ms frames.
pub struct OpusEncoder {
    encoder: encoder::Audio,
}

impl std::fmt::Debug for OpusEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OpusEncoder")
    }
}

/// One Opus packet with its 48 kHz output timestamp.
#[derive(Debug)]
pub struct OpusPacket {
    pub data: Vec<u8>,
    pub ts: i64,
}

impl OpusEncoder {
    pub fn new(bitrate: u64) -> Result<Self, String> {
        let codec = encoder::find_by_name("libopus").ok_or("this FFmpeg has no libopus encoder")?;
        let mut ctx = stereo_48k_encoder(codec, format::Sample::I16(format::sample::Type::Packed))?;
        ctx.set_bit_rate(bitrate as usize);
        let mut o = Dictionary::new();
        o.set("frame_duration", "20");
        o.set("application", "audio");
        let encoder = ctx
            .open_with(o)
            .map_err(|e| format!("opening libopus: {e}"))?;
        Ok(Self { encoder })
    }

    /// Encodes one 960-sample frame at output timestamp `ts` (48 kHz).
    pub fn encode(
        &mut self,
        frame: &mut frame::Audio,
        ts: i64,
        out: &mut Vec<OpusPacket>,
    ) -> Result<(), ff::Error> {
        frame.set_pts(Some(ts));
        self.encoder.send_frame(frame)?;
        let mut packet = ff::Packet::empty();
        loop {
            match self.encoder.receive_packet(&mut packet) {
                Ok(()) => out.push(OpusPacket {
                    data: packet.data().unwrap_or_default().to_vec(),
                    ts: packet.pts().unwrap_or(ts),
                }),
                Err(ff::Error::Other { errno }) if errno == ff::util::error::EAGAIN => {
                    return Ok(());
                }
                Err(ff::Error::Eof) => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    }
}
