//! Opus → AAC, for outputs whose players want AAC (HLS, FLV for RTMP, MPEG-TS for SRT).
//!
//! Owns the audio path of those outputs: the session's Opus decoded, converted to 48 kHz stereo
//! planar float in frames of the encoder's size (1024), and encoded with FFmpeg's AAC encoder
//! at [`AAC_BITRATE`], with a global header (the AudioSpecificConfig) for the muxers.

use ffmpeg_next::{
    self as ff, ChannelLayout, Dictionary, Packet, Rational, codec, decoder, encoder, filter,
    format, frame,
};

use super::frames::Frame;
use super::probe::Probed;

/// The AAC bitrate.
pub const AAC_BITRATE: usize = 128_000;

fn err(what: &str) -> impl Fn(ff::Error) -> String + '_ {
    move |e| format!("{what}: {e}")
}

/// The audio path: Opus decoded, re-framed to 1024 samples, AAC encoded.
pub struct Aac {
    decoder: decoder::Audio,
    /// Built for the decoder's first frame (its sample format and layout).
    graph: Option<filter::Graph>,
    encoder: encoder::Audio,
}

impl Aac {
    pub fn new(opus: &Probed) -> Result<Self, String> {
        let decoder = codec::context::Context::from_parameters(opus.parameters.clone())
            .and_then(|c| c.decoder().audio())
            .map_err(err("opening the Opus decoder"))?;
        let codec = encoder::find(codec::Id::AAC).ok_or("this FFmpeg has no AAC encoder")?;
        let mut ctx = codec::Context::new_with_codec(codec)
            .encoder()
            .audio()
            .map_err(|e| e.to_string())?;
        ctx.set_rate(48_000);
        ctx.set_channel_layout(ChannelLayout::STEREO);
        ctx.set_format(format::Sample::F32(format::sample::Type::Planar));
        ctx.set_bit_rate(AAC_BITRATE);
        ctx.set_time_base(Rational::new(1, 48_000));
        ctx.set_flags(codec::Flags::GLOBAL_HEADER);
        let encoder = ctx
            .open_with(Dictionary::new())
            .map_err(err("opening the AAC encoder"))?;
        Ok(Self {
            decoder,
            graph: None,
            encoder,
        })
    }

    /// The AAC stream's parameters (with its AudioSpecificConfig), for a muxer.
    pub fn parameters(&self) -> codec::Parameters {
        codec::Parameters::from(&self.encoder)
    }

    /// Takes one Opus frame; appends the AAC packets it completed (times in 1/48000 s).
    pub fn encode(&mut self, frame: &Frame, out: &mut Vec<Packet>) -> Result<(), String> {
        let mut packet = Packet::copy(&frame.data);
        packet.set_pts(Some(frame.pts));
        packet.set_dts(Some(frame.pts));
        if self.decoder.send_packet(&packet).is_err() {
            // A packet the decoder cannot take is a moment of silence, not an error.
            return Ok(());
        }
        let mut decoded = frame::Audio::empty();
        while self.decoder.receive_frame(&mut decoded).is_ok() {
            decoded.set_pts(Some(frame.pts));
            if self.graph.is_none() {
                self.graph = Some(aac_graph(&decoded, self.encoder.frame_size().max(1024))?);
            }
            let graph = self.graph.as_mut().expect("built above");
            graph
                .get("in")
                .expect("graph has its source")
                .source()
                .add(&decoded)
                .map_err(err("audio filter"))?;
            let mut chunk = frame::Audio::empty();
            while graph
                .get("out")
                .expect("graph has its sink")
                .sink()
                .frame(&mut chunk)
                .is_ok()
            {
                self.encoder.send_frame(&chunk).map_err(err("AAC"))?;
                let mut packet = Packet::empty();
                while self.encoder.receive_packet(&mut packet).is_ok() {
                    out.push(packet.clone());
                }
            }
        }
        Ok(())
    }
}

/// Decoded audio like `first` → 48 kHz stereo planar float in frames of `frame_size`.
fn aac_graph(first: &frame::Audio, frame_size: u32) -> Result<filter::Graph, String> {
    let mut graph = filter::Graph::new();
    let layout = match first.channel_layout().bits() {
        0 => format!("{}c", first.channels()),
        bits => format!("0x{bits:x}"),
    };
    let args = format!(
        "time_base=1/48000:sample_rate={}:sample_fmt={}:channel_layout={layout}",
        first.rate(),
        first.format().name()
    );
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
        graph.output("in", 0)?.input("out", 0)?.parse(&format!(
            "aresample=48000,aformat=sample_fmts=fltp:sample_rates=48000:channel_layouts=stereo,\
             asetnsamples=n={frame_size}:p=0"
        ))?;
        graph.validate()
    };
    build(&mut graph).map_err(err("audio filter"))?;
    Ok(graph)
}
