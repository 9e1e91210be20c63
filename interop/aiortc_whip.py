"""An aiortc WHIP publisher: sends a generated test picture (moving colour bands, 640x360 at
30 fps) and a 440 Hz tone to a WHIP endpoint for some seconds, then DELETEs its resource.

Usage: python aiortc_whip.py URL TOKEN [SECONDS] [--codec h264|vp8] [--size WxH]
       [--bitrate BPS] [--gop-seconds S] [--ignore-pli] [--frame-log PATH] [--noise-rows N]
       [--file PATH]
Prints one JSON line (`{"ok", "status", "location", "delete_status", ...}`) and exits 0 when
the POST got 201 and the publish ran its time (SECONDS, default 10; 0 = until killed).

For benchmarks it can behave like OBS or FFmpeg: a fixed H.264 keyframe interval
(--gop-seconds) and keyframe requests ignored (--ignore-pli); --frame-log writes one JSON line
per encoded video frame (`at_us` on the monotonic clock, `rtp_time`, `keyframe`, `tail`: the
last 16 bytes of its last RTP payload, hex) to match with `whep-client play --frame-log`.
--file sends a file's H.264 video (MPEG-TS or raw Annex B: the packets must carry start codes)
as it is, once, at its own pace, without decoding or encoding it (aiortc's MediaPlayer with
decode=False): a publisher of any bitrate that costs almost no CPU. (Not looped: aiortc stops
pacing the packets after a loop and sends them as fast as it can.)

aiortc's ICE (aioice) leaves out loopback addresses when it gathers host candidates; inside
`unshare -n` loopback is the only interface, so the lookup is patched to return 127.0.0.1.
"""

import argparse
import asyncio
import fractions
import json
import math
import os
import sys
import time
import urllib.error
import urllib.request

import aioice.ice

aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: ["127.0.0.1"]

import array  # noqa: E402

import av  # noqa: E402
from aiortc import (  # noqa: E402
    MediaStreamTrack,
    RTCPeerConnection,
    RTCRtpSender,
    RTCSessionDescription,
)

WIDTH, HEIGHT, FPS = 640, 360, 30
# Rows of random luma at the bottom of every picture (--noise-rows): unpredictable, so frames are
# unique (matched by their bytes) and cost bits like camera noise does.
NOISE_ROWS = 0


def shape_h264(gop_frames, ignore_pli, bitrate, frame_log):
    """Changes aiortc's H.264 sender for benchmarks: libx264's keyframe interval, PLI handling,
    target bitrate, and a log of what was encoded."""
    import types

    from aiortc.codecs import h264

    if gop_frames:
        # A fixed interval: no scene-cut keyframes either (the moving bands would trigger
        # them). aiortc sets the encoder's options itself, so they are merged in as it does.
        params = f"keyint={gop_frames}:min-keyint={gop_frames}:scenecut=0"

        class FixedGop:
            def __init__(self, codec):
                object.__setattr__(self, "_codec", codec)

            def __getattr__(self, name):
                return getattr(self._codec, name)

            def __setattr__(self, name, value):
                if name == "options":
                    value = {**value, "x264-params": params}
                setattr(self._codec, name, value)

        class CodecContext:
            @staticmethod
            def create(*args, **kwargs):
                return FixedGop(av.CodecContext.create(*args, **kwargs))

        shim = types.ModuleType("av_with_gop")
        shim.__getattr__ = lambda name: getattr(av, name)
        shim.CodecContext = CodecContext
        h264.av = shim
    if ignore_pli:
        RTCRtpSender._send_keyframe = lambda self: None
    encode = h264.H264Encoder.encode

    def shaped_encode(self, frame, force_keyframe=False):
        if bitrate and self.target_bitrate != bitrate:
            self.target_bitrate = bitrate
        payloads, timestamp = encode(self, frame, force_keyframe)
        if frame_log and payloads:
            # A keyframe starts with SPS (alone, or first in a STAP-A).
            first = payloads[0]
            key = first[0] & 0x1F == 7 or (first[0] & 0x1F == 24 and first[3] & 0x1F == 7)
            line = {"at_us": time.monotonic_ns() // 1000, "rtp_time": timestamp,
                    "keyframe": bool(key), "tail": payloads[-1][-16:].hex(),
                    "bytes": sum(len(p) for p in payloads)}
            frame_log.write(json.dumps(line) + "\n")
            frame_log.flush()
        return payloads, timestamp

    h264.H264Encoder.encode = shaped_encode


class Paced(MediaStreamTrack):
    """A generated track whose frame `n` is due `n * period` seconds after the first."""

    period = 1.0

    def __init__(self):
        super().__init__()
        self.n = 0
        self.start = None

    async def wait_for_next(self):
        if self.start is None:
            self.start = time.monotonic()
        due = self.start + self.n * self.period
        await asyncio.sleep(max(0.0, due - time.monotonic()))


class Picture(Paced):
    """Colour bands that move one step per frame."""

    kind = "video"
    period = 1 / FPS

    async def recv(self):
        await self.wait_for_next()
        frame = av.VideoFrame(WIDTH, HEIGHT, "yuv420p")
        shift = 8 * self.n
        luma = bytes(((x + shift) % WIDTH) * 220 // WIDTH + 16 for x in range(WIDTH))
        noise = os.urandom(WIDTH * NOISE_ROWS)
        frame.planes[0].update(luma * (HEIGHT - NOISE_ROWS) + noise)
        for plane, value in ((1, (self.n * 3) % 256), (2, 128)):
            frame.planes[plane].update(bytes([value]) * (WIDTH // 2) * (HEIGHT // 2))
        frame.pts = self.n * 3000
        frame.time_base = fractions.Fraction(1, 90000)
        self.n += 1
        return frame


class Tone(Paced):
    """A 440 Hz tone in 20 ms frames."""

    kind = "audio"
    period = 0.02

    async def recv(self):
        await self.wait_for_next()
        first = self.n * 960
        samples = array.array(
            "h", (int(math.sin(2 * math.pi * 440 * (first + i) / 48000) * 8000) for i in range(960))
        )
        frame = av.AudioFrame(format="s16", layout="mono", samples=960)
        frame.planes[0].update(samples.tobytes())
        frame.sample_rate = 48000
        frame.pts = self.n * 960
        frame.time_base = fractions.Fraction(1, 48000)
        self.n += 1
        return frame


def request(method, url, token, body=None):
    headers = {"Authorization": f"Bearer {token}"}
    if body is not None:
        headers["Content-Type"] = "application/sdp"
    req = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.headers.get("Location"), resp.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, None, e.read().decode()


def ffmpeg_like(sdp):
    """The offer as FFmpeg's WHIP muxer writes one: audio first (the caller's order), a=ssrc
    lines but no MID or RID header extension, a=setup:passive, no candidates."""
    out = []
    for line in sdp.splitlines():
        if line.startswith("a=extmap:") and ("sdes:mid" in line or "rtp-stream-id" in line):
            continue
        if line.startswith("a=candidate:") or line.startswith("a=end-of-candidates"):
            continue
        if line.startswith("a=setup:"):
            line = "a=setup:passive"
        out.append(line)
    return "\r\n".join(out) + "\r\n"


async def main(url, token, seconds, codec, path=None, ffmpeg=False):
    pc = RTCPeerConnection()
    if ffmpeg:
        pc.addTransceiver(Tone(), direction="sendonly")
    if path:
        from aiortc.contrib.media import MediaPlayer

        player = MediaPlayer(path, decode=False)
        video = pc.addTransceiver(player.video, direction="sendonly")
        codec = "h264"
    else:
        video = pc.addTransceiver(Picture(), direction="sendonly")
    if not ffmpeg:
        pc.addTransceiver(Tone(), direction="sendonly")
    if codec:
        prefs = [c for c in RTCRtpSender.getCapabilities("video").codecs if c.mimeType.lower() == f"video/{codec}"]
        video.setCodecPreferences(prefs)
    await pc.setLocalDescription(await pc.createOffer())
    loop = asyncio.get_running_loop()
    offer = pc.localDescription.sdp
    if ffmpeg:
        offer = ffmpeg_like(offer)
    status, location, body = await loop.run_in_executor(None, request, "POST", url, token, offer.encode())
    result = {"ok": False, "status": status, "location": location}
    if status != 201:
        result["body"] = body[:300]
        print(json.dumps(result), flush=True)
        await pc.close()
        return 1
    await pc.setRemoteDescription(RTCSessionDescription(sdp=body, type="answer"))
    print(json.dumps({"published": True, "location": location}), flush=True)
    if seconds > 0:
        await asyncio.sleep(seconds)
    else:
        await asyncio.Event().wait()
    result["connection"] = pc.connectionState
    result["delete_status"], _, _ = await loop.run_in_executor(None, request, "DELETE", location, token)
    result["ok"] = result["connection"] == "connected" and result["delete_status"] == 200
    await pc.close()
    print(json.dumps(result), flush=True)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="aiortc WHIP publisher of a test picture and tone")
    parser.add_argument("url")
    parser.add_argument("token")
    parser.add_argument("seconds", nargs="?", type=float, default=10.0)
    parser.add_argument("--codec", choices=["h264", "vp8"])
    parser.add_argument("--size", default=f"{WIDTH}x{HEIGHT}", help="picture size, WxH")
    parser.add_argument("--bitrate", type=int, help="H.264 target bitrate, b/s")
    parser.add_argument("--gop-seconds", type=float, help="H.264 keyframe interval")
    parser.add_argument("--ignore-pli", action="store_true", help="never answer keyframe requests")
    parser.add_argument("--frame-log", help="write a JSON line per encoded H.264 frame here")
    parser.add_argument("--noise-rows", type=int, default=0, help="rows of random luma at the bottom")
    parser.add_argument("--file", help="send this file's H.264 video as it is")
    parser.add_argument(
        "--ffmpeg-like",
        action="store_true",
        help="offer as FFmpeg's WHIP muxer does (audio first, no MID extension, setup:passive, no candidates)",
    )
    a = parser.parse_args()
    WIDTH, HEIGHT = (int(v) for v in a.size.split("x"))
    NOISE_ROWS = min(a.noise_rows, HEIGHT)
    log = open(a.frame_log, "w") if a.frame_log else None
    if a.gop_seconds or a.ignore_pli or a.bitrate or log:
        shape_h264(int(a.gop_seconds * FPS) if a.gop_seconds else None, a.ignore_pli, a.bitrate, log)
    sys.exit(asyncio.run(main(a.url, a.token, a.seconds, a.codec, a.file, a.ffmpeg_like)))
