//! The session's Opus decoded and converted to raw audio, for the outputs that need it (AAC
//! for HLS and restreams, PCM for the WebSocket egress).
//!
//! Owns the decoder and the conversion: an FFmpeg filter chain the caller gives (resampling,
//! sample format, layout, frame size), built for the decoder's first frame. What becomes of
//! the converted frames is the caller's.

use ffmpeg_next::{self as ff, Packet, codec, decoder, filter, frame};

use super::frames::Frame;
use super::probe::Probed;

fn err(what: &str) -> impl Fn(ff::Error) -> String + '_ {
    move |e| format!("{what}: {e}")
}

/// Opus in, converted frames out.
pub struct Decoded {
    decoder: decoder::Audio,
    /// The filter chain after the decoder, e.g. `aresample=16000,aformat=…`.
    spec: String,
    /// Built for the decoder's first frame (its sample format and layout).
    graph: Option<filter::Graph>,
}

impl Decoded {
    pub fn new(opus: &Probed, spec: String) -> Result<Self, String> {
        let decoder = codec::context::Context::from_parameters(opus.parameters.clone())
            .and_then(|c| c.decoder().audio())
            .map_err(err("opening the Opus decoder"))?;
        Ok(Self {
            decoder,
            spec,
            graph: None,
        })
    }

    /// Decodes one Opus packet and hands each converted frame it completes to `each`. A packet
    /// the decoder cannot take is a moment of silence, not an error.
    pub fn push(
        &mut self,
        frame: &Frame,
        mut each: impl FnMut(&frame::Audio) -> Result<(), String>,
    ) -> Result<(), String> {
        let mut packet = Packet::copy(&frame.data);
        packet.set_pts(Some(frame.pts));
        packet.set_dts(Some(frame.pts));
        if self.decoder.send_packet(&packet).is_err() {
            return Ok(());
        }
        let mut decoded = frame::Audio::empty();
        while self.decoder.receive_frame(&mut decoded).is_ok() {
            decoded.set_pts(Some(frame.pts));
            if self.graph.is_none() {
                self.graph = Some(crate::audio::graph_for(&decoded, &self.spec)?);
            }
            let graph = self.graph.as_mut().expect("built above");
            graph
                .get("in")
                .expect("graph has its source")
                .source()
                .add(&decoded)
                .map_err(err("audio filter"))?;
            let mut converted = frame::Audio::empty();
            while graph
                .get("out")
                .expect("graph has its sink")
                .sink()
                .frame(&mut converted)
                .is_ok()
            {
                each(&converted)?;
            }
        }
        Ok(())
    }
}
