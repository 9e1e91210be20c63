//! What the transcoder was asked to do, checked once: inputs, encode settings, ring, pacing,
//! and the log filter.
//!
//! Owns value types that reject bad input at parse time (`Rational`, `InputSpec`, `ChannelSel`).
//! The clap definitions stay in `main.rs`. The environment is read here and nowhere else: only
//! the log filter ([`log_filter`]) comes from it.

use std::fmt;
use std::str::FromStr;

/// The log filter when the environment sets none.
pub const DEFAULT_LOG_FILTER: &str = "info";

/// The log filter: `WISP_LOG`, else `RUST_LOG`, else [`DEFAULT_LOG_FILTER`] (as the gateway's,
/// whose environment a transcoder inherits).
pub fn log_filter() -> String {
    std::env::var("WISP_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| DEFAULT_LOG_FILTER.into())
}

/// A positive fraction such as a frame rate `30000/1001` or an aspect ratio `1:1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rational {
    pub num: i32,
    pub den: i32,
}

impl Rational {
    pub fn as_f64(self) -> f64 {
        self.num as f64 / self.den as f64
    }
}

impl fmt::Display for Rational {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.num, self.den)
    }
}

impl FromStr for Rational {
    type Err = String;
    /// `30`, `30000/1001`, `16:9`, `29.97` (decimals become /1000).
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("'{s}' is not a positive ratio (examples: 30, 30000/1001, 4:3)");
        let (num, den) = match s.split_once(['/', ':']) {
            Some((n, d)) => (
                n.trim().parse::<i32>().map_err(|_| bad())?,
                d.trim().parse::<i32>().map_err(|_| bad())?,
            ),
            None => match s.trim().parse::<i32>() {
                Ok(n) => (n, 1),
                Err(_) => {
                    let v: f64 = s.trim().parse().map_err(|_| bad())?;
                    ((v * 1000.0).round() as i32, 1000)
                }
            },
        };
        if num <= 0 || den <= 0 {
            return Err(bad());
        }
        Ok(Rational { num, den })
    }
}

/// One `-i URL [channel_count=N] [id=NAME]` group of the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputSpec {
    /// Anything libavformat opens, or `demo` for the built-in test pattern and tone.
    pub url: String,
    /// Channel count for inputs that do not state one (raw PCM).
    pub channel_count: Option<u32>,
    /// Name used by `select_audio`; defaults to the input's position ("0", "1", ...).
    pub id: String,
}

impl InputSpec {
    pub fn is_demo(&self) -> bool {
        self.url == "demo"
    }
}

/// Splits `-i URL [key=value ...]` groups out of an argument list, returning the inputs and the
/// remaining arguments for clap. clap cannot express options that own trailing `key=value`
/// words, and this is the form review-player backends use.
pub fn split_inputs(args: Vec<String>) -> Result<(Vec<InputSpec>, Vec<String>), String> {
    let mut inputs = Vec::new();
    let mut rest = Vec::new();
    let mut it = args.into_iter().peekable();
    while let Some(arg) = it.next() {
        if arg != "-i" && arg != "--input" {
            rest.push(arg);
            continue;
        }
        let url = it.next().ok_or("-i needs a URL, a file or 'demo'")?;
        let mut spec = InputSpec {
            url,
            channel_count: None,
            id: inputs.len().to_string(),
        };
        while let Some(word) = it.peek() {
            let Some((key, value)) = word.split_once('=') else {
                break;
            };
            match key {
                "channel_count" => {
                    let n = value.parse::<u32>().ok().filter(|n| (1..=64).contains(n));
                    spec.channel_count =
                        Some(n.ok_or(format!("channel_count={value}: need 1 to 64"))?);
                }
                "id" if !value.is_empty() => spec.id = value.to_string(),
                _ => {
                    return Err(format!(
                        "unknown input option '{word}' (known: channel_count=N, id=NAME)"
                    ));
                }
            }
            it.next();
        }
        if inputs.iter().any(|i: &InputSpec| i.id == spec.id) {
            return Err(format!("two inputs are named '{}'", spec.id));
        }
        inputs.push(spec);
    }
    Ok((inputs, rest))
}

/// Which source channels become the stereo output (`--channels N --cho OFFSET`, or
/// `select_audio`'s `channels`).
///
/// One channel plays in both ears; two are left and right; with more, the first, third, ...
/// are mixed into the left and the second, fourth, ... into the right.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelSel(pub Vec<u32>);

impl ChannelSel {
    pub fn range(count: u32, offset: u32) -> Self {
        ChannelSel((offset..offset + count).collect())
    }

    /// The `pan` filter that renders this selection as stereo, checked against the source.
    pub fn pan_filter(&self, source_channels: u32) -> Result<String, String> {
        if self.0.is_empty() {
            return Err("select at least one channel".into());
        }
        if let Some(bad) = self.0.iter().find(|&&c| c >= source_channels) {
            return Err(format!(
                "channel {bad} does not exist: the input has {source_channels} channels (0..{})",
                source_channels.saturating_sub(1)
            ));
        }
        let side = |chans: Vec<u32>| {
            let gain = 1.0 / chans.len() as f64;
            chans
                .iter()
                .map(|c| format!("{gain:.6}*c{c}"))
                .collect::<Vec<_>>()
                .join("+")
        };
        let (left, right): (Vec<u32>, Vec<u32>) = match self.0.len() {
            1 => (self.0.clone(), self.0.clone()),
            _ => {
                let l = self.0.iter().step_by(2).copied().collect();
                let r = self.0.iter().skip(1).step_by(2).copied().collect();
                (l, r)
            }
        };
        Ok(format!("pan=stereo|c0={}|c1={}", side(left), side(right)))
    }
}

/// Output video codec.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum VideoCodec {
    /// H.264 constrained baseline (libx264), packetization-mode 1.
    H264,
    /// VP8 (libvpx, realtime).
    Vp8,
}

/// How fast packets go into the ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Pace {
    /// As the media plays: by presentation time, never more than ~100 ms ahead.
    Realtime,
    /// As fast as decoding and encoding go (benchmarks, batch).
    Max,
}

/// Where control commands come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ControlSource {
    /// JSON lines on stdin; when stdin is a pipe or socket, its end ends the process.
    Stdin,
    /// No commands: play from the start to the end.
    None,
}

/// What to do when the media ends (and `--loop` is off).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OnEnd {
    /// Emit `state ended` and exit 0.
    Exit,
    /// Emit `state ended` and wait for commands (seek, play, stop), as the gateway wants.
    Wait,
}

/// Everything the pipeline needs, validated.
#[derive(Debug, Clone)]
pub struct Options {
    pub inputs: Vec<InputSpec>,
    pub width: Option<u32>,
    pub height: Option<u32>,
    /// Pictures taller than this are scaled down to it (aspect kept); smaller ones stay.
    pub max_height: Option<u32>,
    pub fps: Option<Rational>,
    pub video_bitrate: u64,
    /// Lower renditions encoded besides the main one (`--layer`), each a ring track.
    pub layers: Vec<LayerOpt>,
    pub audio_bitrate: u64,
    pub codec: VideoCodec,
    /// The main picture also in these codecs (`--alt-codec`), each a ring track after the
    /// lower renditions.
    pub alt_codecs: Vec<VideoCodec>,
    pub gop_seconds: f64,
    pub threads: u32,
    /// Video encoder threads (slices per frame); 0: see [`encoder_threads`].
    pub encoder_threads: u32,
    pub lowres: u8,
    /// A live stream: probe briefly, read without buffering.
    pub live: bool,
    /// When each byte of the first input reached the gateway (`--timed-input`).
    pub arrivals: Option<crate::arrival::Arrivals>,
    pub sar: Option<Rational>,
    pub colorspace: Colorspace,
    pub tone_mapping: Option<String>,
    pub start: f64,
    pub duration_frames: Option<u64>,
    pub looping: bool,
    pub channels: ChannelSel,
    pub pace: Pace,
    pub control: ControlSource,
    pub on_end: OnEnd,
    pub paused: bool,
}

/// A lower rendition: its height (the width follows the aspect) and bits/s (default: the
/// main bitrate scaled by the pixel ratio to the power 0.75).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerOpt {
    pub height: u32,
    pub bitrate: Option<u64>,
}

impl FromStr for LayerOpt {
    type Err = String;
    /// `360` or `360:600000`.
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("'{s}' is not HEIGHT or HEIGHT:BITRATE (e.g. 360 or 360:600000)");
        let (h, b) = match s.split_once(':') {
            Some((h, b)) => (h, Some(b.trim().parse::<u64>().map_err(|_| bad())?)),
            None => (s, None),
        };
        let height: u32 = h.trim().parse().map_err(|_| bad())?;
        if !(16..=4320).contains(&height) || b.is_some_and(|b| !(50_000..=50_000_000).contains(&b))
        {
            return Err(format!(
                "'{s}': a layer's height is 16 to 4320, its bitrate 50000 to 50000000"
            ));
        }
        Ok(Self { height, bitrate: b })
    }
}

impl LayerOpt {
    /// The rendition of a `width`x`height` main picture at `main_bitrate`: (width, height,
    /// bitrate), sizes even.
    pub fn size(&self, width: u32, height: u32, main_bitrate: u64) -> (u32, u32, u64) {
        let h = self.height.min(height) & !1;
        let w = ((u64::from(width) * u64::from(h) / u64::from(height.max(1))) as u32 & !1).max(2);
        let ratio = (f64::from(w) * f64::from(h)) / (f64::from(width) * f64::from(height)).max(1.0);
        let bitrate = self
            .bitrate
            .unwrap_or_else(|| ((main_bitrate as f64 * ratio.powf(0.75)) as u64).max(50_000));
        (w, h.max(2), bitrate)
    }
}

/// Output colour matrix, tagged in the bitstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Colorspace {
    Bt709,
    Bt601,
    Bt2020,
}

impl Colorspace {
    /// The name the `scale` filter's `out_color_matrix` takes.
    pub fn scale_name(self) -> &'static str {
        match self {
            Colorspace::Bt709 => "bt709",
            Colorspace::Bt601 => "bt601",
            Colorspace::Bt2020 => "bt2020",
        }
    }
}

#[cfg(test)]
impl Options {
    /// Defaults as the command line's, with no input.
    pub fn for_tests() -> Self {
        Self {
            inputs: Vec::new(),
            width: None,
            height: None,
            max_height: None,
            fps: None,
            video_bitrate: 2_000_000,
            layers: Vec::new(),
            audio_bitrate: 96_000,
            codec: VideoCodec::H264,
            alt_codecs: Vec::new(),
            gop_seconds: 2.0,
            threads: 0,
            encoder_threads: 0,
            lowres: 0,
            live: false,
            arrivals: None,
            sar: None,
            colorspace: Colorspace::Bt709,
            tone_mapping: None,
            start: 0.0,
            duration_frames: None,
            looping: false,
            channels: ChannelSel(Vec::new()),
            pace: Pace::Realtime,
            control: ControlSource::None,
            on_end: OnEnd::Exit,
            paused: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn inputs_take_their_trailing_options() {
        let (inputs, rest) = split_inputs(args(
            "-i a.mp4 id=main --width 640 -i b.wav channel_count=6 -i demo --loop",
        ))
        .expect("parses");
        assert_eq!(rest, args("--width 640 --loop"));
        assert_eq!(
            inputs[0],
            InputSpec {
                url: "a.mp4".into(),
                channel_count: None,
                id: "main".into()
            }
        );
        assert_eq!(
            inputs[1],
            InputSpec {
                url: "b.wav".into(),
                channel_count: Some(6),
                id: "1".into()
            }
        );
        assert!(inputs[2].is_demo());
        assert!(
            split_inputs(args("-i a.mp4 speed=2"))
                .expect_err("unknown")
                .contains("speed=2")
        );
        assert!(split_inputs(args("-i")).is_err());
        assert!(
            split_inputs(args("-i a id=x -i b id=x"))
                .expect_err("dup")
                .contains("'x'")
        );
    }

    #[test]
    fn rationals_parse_in_the_usual_spellings() {
        assert_eq!("30".parse::<Rational>(), Ok(Rational { num: 30, den: 1 }));
        assert_eq!(
            "30000/1001".parse::<Rational>(),
            Ok(Rational {
                num: 30000,
                den: 1001
            })
        );
        assert_eq!("4:3".parse::<Rational>(), Ok(Rational { num: 4, den: 3 }));
        assert_eq!(
            "29.97".parse::<Rational>(),
            Ok(Rational {
                num: 29970,
                den: 1000
            })
        );
        assert!("0/1".parse::<Rational>().is_err());
        assert!("fast".parse::<Rational>().is_err());
    }

    #[test]
    fn layers_parse_and_keep_the_aspect() {
        assert_eq!(
            "360".parse::<LayerOpt>(),
            Ok(LayerOpt {
                height: 360,
                bitrate: None
            })
        );
        let l: LayerOpt = "180:200000".parse().unwrap();
        assert_eq!(l.size(1280, 720, 2_000_000), (320, 180, 200_000));
        let (w, h, b) = "360"
            .parse::<LayerOpt>()
            .unwrap()
            .size(1280, 720, 2_000_000);
        assert_eq!((w, h), (640, 360));
        assert_eq!(b, 707_106, "a quarter of the pixels: 2 Mb/s × 0.25^0.75");
        assert!("0".parse::<LayerOpt>().is_err());
        assert!("360:10".parse::<LayerOpt>().is_err());
        assert!("tall".parse::<LayerOpt>().is_err());
    }

    #[test]
    fn channel_selection_renders_stereo() {
        assert_eq!(
            ChannelSel(vec![2]).pan_filter(6),
            Ok("pan=stereo|c0=1.000000*c2|c1=1.000000*c2".into())
        );
        assert_eq!(
            ChannelSel::range(2, 4).pan_filter(6),
            Ok("pan=stereo|c0=1.000000*c4|c1=1.000000*c5".into())
        );
        assert_eq!(
            ChannelSel(vec![0, 1, 2]).pan_filter(6),
            Ok("pan=stereo|c0=0.500000*c0+0.500000*c2|c1=1.000000*c1".into())
        );
        assert!(
            ChannelSel(vec![6])
                .pan_filter(6)
                .expect_err("out of range")
                .contains("6 channels")
        );
        assert!(ChannelSel(vec![]).pan_filter(2).is_err());
    }
}
